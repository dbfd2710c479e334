//! Choosing among the endpoints that may take an attempt (`balance`), and the load each endpoint
//! carries.
//!
//! [`Pool::pick`](crate::upstream::Pool::pick) decides which endpoints may take an attempt at all
//! (healthy, breaker admitting, primaries before backups, none the request has tried yet while
//! another may); a [`Balancer`] chooses one of them:
//!
//! - `p2c-ewma` (the default), as linkerd2-proxy and Finagle do: two endpoints drawn at random,
//!   the one of lower cost wins. The cost is a peak-EWMA of the endpoint's response latency times
//!   its requests in flight plus one. The estimate jumps at once to a slower sample and decays
//!   toward faster ones with a 10 s time constant, so an endpoint that turns slow is avoided at
//!   its first slow answer and trusted again only gradually; while no answer comes, it decays
//!   toward zero, so an endpoint that was avoided is tried again after a while and its estimate
//!   refreshed. A new endpoint starts at 30 ms. Two random candidates instead of the best of all:
//!   many proxies sharing the same view would otherwise all rush to the one best endpoint.
//! - `least-request`: the fewest requests in flight, ties broken at random (each endpoint of the
//!   tie equally likely).
//! - `random`: uniform.
//! - `round-robin`: in turn; a retry continues after the endpoint the request tried last without
//!   moving the turn, which would otherwise send every first attempt to the same endpoint when
//!   each request takes two picks.
//!
//! Every random draw comes from the injected [`Rng`]. The load is kept in atomics: counting a
//! request in and out and recording its latency take no lock.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rampart_config::Balance;
use rampart_policy::Outcome;
use rampart_policy::rng::Rng;
use tokio::time::Instant;

use crate::turn;

/// The latency a new endpoint is assumed to have until it answers (linkerd2-proxy's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The time constant of the latency estimate's decay toward faster samples, and toward zero while
/// no sample comes (linkerd2-proxy's and Finagle's default).
const DECAY: Duration = Duration::from_secs(10);

/// How one upstream chooses among its endpoints.
#[derive(Debug)]
pub(crate) struct Balancer {
    kind: Balance,
    rng: Rng,
    /// The round-robin turn.
    next: AtomicUsize,
    /// The start of the timeline the latency estimates are stamped on.
    origin: Instant,
}

/// One endpoint's load: its requests in flight, and the estimate of its latency.
#[derive(Debug)]
pub(crate) struct Load {
    in_flight: AtomicU32,
    /// The peak-EWMA estimate (nanoseconds, as `f32` bits) in the high half, and when it was last
    /// updated (milliseconds since `origin`, wrapping) in the low half: one word, so that an
    /// update replaces both at once with a compare-and-swap.
    rtt: AtomicU64,
    origin: Instant,
}

/// One attempt counted in its endpoint's load, until dropped. [`InFlight::finish`] also feeds
/// the attempt's latency to the estimate.
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    load: &'a Load,
    /// When the attempt started; only `p2c-ewma` reads latencies, so only it reads the clock.
    started: Option<Instant>,
}

// === impl Balancer ===

impl Balancer {
    pub(crate) fn new(kind: Balance, rng: Rng) -> Balancer {
        Balancer {
            kind,
            rng,
            next: AtomicUsize::new(0),
            origin: turn::now(),
        }
    }

    /// A fresh load for one endpoint of this upstream.
    pub(crate) fn load(&self) -> Load {
        Load {
            in_flight: AtomicU32::new(0),
            rtt: AtomicU64::new(pack(nanos(DEFAULT_RTT), 0)),
            origin: self.origin,
        }
    }

    /// Counts an attempt on `load` until the returned guard is dropped.
    pub(crate) fn start<'a>(&self, load: &'a Load) -> InFlight<'a> {
        // Relaxed: the count only weighs choices; no other memory depends on it.
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load,
            started: (self.kind == Balance::P2cEwma).then(turn::now),
        }
    }

    /// The endpoint of `tier` to ask first, among those `candidate` gives a load for; `None` when
    /// it gives none. `after`, the endpoint the request tried last (never a candidate), only
    /// places round-robin's turn.
    pub(crate) fn choose<'a>(
        &self,
        tier: Range<usize>,
        after: Option<usize>,
        candidate: impl Fn(usize) -> Option<&'a Load>,
    ) -> Option<usize> {
        if tier.is_empty() {
            return None;
        }
        match self.kind {
            Balance::RoundRobin => self.round_robin(tier, after, candidate),
            Balance::Random => {
                let count = tier.clone().filter(|&i| candidate(i).is_some()).count();
                let n = self.below(count)?;
                nth(tier, &candidate, n).map(|(index, _)| index)
            }
            Balance::LeastRequest => self.least_request(tier, candidate),
            Balance::P2cEwma => self.p2c(tier, candidate),
        }
    }

    fn round_robin<'a>(
        &self,
        tier: Range<usize>,
        after: Option<usize>,
        candidate: impl Fn(usize) -> Option<&'a Load>,
    ) -> Option<usize> {
        let Some(tried) = after else {
            // The turn goes round the endpoints that may take the attempt, not round all of
            // them: one out (ejected, unhealthy) would hand every turn of its own to the one
            // after it, which would take twice its share.
            let count = tier.clone().filter(|&i| candidate(i).is_some()).count();
            if count == 0 {
                return None;
            }
            // Relaxed: the turn only spreads requests; no other memory depends on it.
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            return nth(tier, &candidate, turn % count).map(|(index, _)| index);
        };
        let len = tier.len();
        (0..len)
            .map(|i| tier.start + (tried + 1 + i) % len)
            .find(|&index| candidate(index).is_some())
    }

    fn least_request<'a>(
        &self,
        tier: Range<usize>,
        candidate: impl Fn(usize) -> Option<&'a Load>,
    ) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        let mut ties = 0u32;
        for index in tier {
            let Some(load) = candidate(index) else {
                continue;
            };
            let in_flight = load.in_flight();
            match best {
                Some((_, least)) if in_flight > least => {}
                Some((_, least)) if in_flight == least => {
                    // Reservoir sampling: the k-th of a tie replaces the choice with
                    // probability 1/k, which leaves each of the tie equally likely.
                    ties += 1;
                    if self.rng.next_f64() * f64::from(ties) < 1.0 {
                        best = Some((index, in_flight));
                    }
                }
                _ => {
                    best = Some((index, in_flight));
                    ties = 1;
                }
            }
        }
        best.map(|(index, _)| index)
    }

    fn p2c<'a>(
        &self,
        tier: Range<usize>,
        candidate: impl Fn(usize) -> Option<&'a Load>,
    ) -> Option<usize> {
        let count = tier.clone().filter(|&i| candidate(i).is_some()).count();
        if count < 2 {
            return nth(tier, &candidate, 0).map(|(index, _)| index);
        }
        // Two distinct draws: the second among the others.
        let a = self.below(count)?;
        let mut b = self.below(count - 1)?;
        if b >= a {
            b += 1;
        }
        let mut drawn = tier
            .filter_map(|index| candidate(index).map(|load| (index, load)))
            .enumerate()
            .filter(|&(n, _)| n == a || n == b);
        let (Some(first), Some(second)) = (drawn.next(), drawn.next()) else {
            // A candidate changed its mind between the two looks: let the caller ask in turn.
            return None;
        };
        // A tie goes to the first drawn, which is as likely to be either.
        let ((_, a), (_, b)) = if first.0 == a {
            (first, second)
        } else {
            (second, first)
        };
        let now = turn::now();
        Some(if a.1.cost(now) <= b.1.cost(now) {
            a.0
        } else {
            b.0
        })
    }

    /// A uniform draw in `0..n`, none when `n` is 0.
    fn below(&self, n: usize) -> Option<usize> {
        // The product is below `n`; `min` guards against rounding up at the very top.
        (n > 0).then(|| ((self.rng.next_f64() * n as f64) as usize).min(n - 1))
    }
}

/// The `n`th candidate of `tier` (from 0), with its load.
fn nth<'a>(
    tier: Range<usize>,
    candidate: &impl Fn(usize) -> Option<&'a Load>,
    n: usize,
) -> Option<(usize, &'a Load)> {
    tier.filter_map(|index| candidate(index).map(|load| (index, load)))
        .nth(n)
}

// === impl Load ===

impl Load {
    /// The requests in flight.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`, in nanoseconds: decayed toward zero since the last sample.
    fn rtt(&self, now: Instant) -> f64 {
        let (rtt, at) = unpack(self.rtt.load(Ordering::Relaxed));
        rtt * decay(self.millis(now).wrapping_sub(at))
    }

    /// What choosing this endpoint is expected to cost: its latency, as many times over as it
    /// has requests in flight plus one.
    fn cost(&self, now: Instant) -> f64 {
        self.rtt(now) * f64::from(self.in_flight().saturating_add(1))
    }

    /// Feeds one latency sample to the estimate: a slower one replaces it at once, a faster one
    /// pulls it down by the weight of the time since the last sample. A failure's latency can
    /// only raise it: a refused connection or an instant 503 is fast, and must not pull a failing
    /// endpoint's estimate down to the best one's. (Its estimate still decays while it fails, so
    /// it keeps being tried: its breaker, not the balancer, takes it out, and a breaker needs
    /// the attempts to decide.)
    fn observe(&self, latency: Duration, failed: bool, now: Instant) {
        let sample = nanos(latency);
        let stamp = self.millis(now);
        // Lock-free: a concurrent update makes the exchange fail, and the sample is mixed into
        // that update's estimate instead.
        let _ = self
            .rtt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (rtt, at) = unpack(word);
                if sample > rtt {
                    return Some(pack(sample, stamp));
                }
                if failed {
                    return None;
                }
                let weight = decay(stamp.wrapping_sub(at));
                Some(pack(rtt * weight + sample * (1.0 - weight), stamp))
            });
    }

    /// Replaces the estimate with one sample: what a probe that found the endpoint back says of
    /// it, over what it took before its breaker tripped.
    fn renew(&self, latency: Duration, now: Instant) {
        self.rtt
            .store(pack(nanos(latency), self.millis(now)), Ordering::Relaxed);
    }

    /// `at` in milliseconds since `origin`, wrapping every 49 days: the estimate's stamp only
    /// ever measures the time since the previous one, and an estimate left alone for weeks has
    /// decayed to nothing long before the stamp wraps.
    fn millis(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.origin).as_millis() as u32
    }
}

// === impl InFlight ===

impl InFlight<'_> {
    /// Ends the attempt, which ended as `outcome`: its latency feeds the estimate. That of a
    /// successful `probe` of its endpoint's breaker replaces it: the estimate still holds the
    /// attempts that tripped the breaker (a timeout counts as the whole time it waited, 15 s
    /// say), and would keep p2c from an endpoint that is back for a minute or more as it decays.
    pub(crate) fn finish(mut self, outcome: Outcome, probe: bool) {
        if probe
            && outcome == Outcome::Success
            && let Some(started) = self.started.take()
        {
            let now = turn::now();
            self.load.renew(now.saturating_duration_since(started), now);
        }
        self.observe(outcome == Outcome::Failure);
        // Dropping `self` takes the attempt out of the count.
    }

    // Feeds the time since the attempt started to the estimate, once.
    fn observe(&mut self, failed: bool) {
        if let Some(started) = self.started.take() {
            let now = turn::now();
            self.load
                .observe(now.saturating_duration_since(started), failed, now);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // An attempt let go unfinished (its client went away, a hedge won elsewhere, a timeout
        // passed) took at least this long: a sample that can only raise the estimate, as tower's
        // PeakEwma counts a dropped handle. Otherwise an endpoint that never answers would
        // never be measured, its estimate would decay below every answering one's, and p2c
        // would send it more and more.
        self.observe(true);
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How much of an estimate is left after `elapsed_ms` milliseconds.
fn decay(elapsed_ms: u32) -> f64 {
    (-f64::from(elapsed_ms) / DECAY.as_millis() as f64).exp()
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

fn pack(rtt_nanos: f64, at_ms: u32) -> u64 {
    (u64::from((rtt_nanos as f32).to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(word: u64) -> (f64, u32) {
    (f64::from(f32::from_bits((word >> 32) as u32)), word as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rtt_ms(load: &Load) -> f64 {
        load.rtt(Instant::now()) / 1e6
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_starts_at_the_default_guess() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        assert!((rtt_ms(&load) - 30.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_jumps_to_a_slower_sample_and_decays_toward_faster_ones() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        load.observe(200 * MS, false, Instant::now());
        assert!((rtt_ms(&load) - 200.0).abs() < 0.01, "{}", rtt_ms(&load));

        // A fast answer a second later moves it by 1 - e^(-1/10) of the way only.
        tokio::time::advance(Duration::from_secs(1)).await;
        load.observe(MS, false, Instant::now());
        let expected = 200.0 * (-0.1f64).exp() + (1.0 - (-0.1f64).exp());
        assert!((rtt_ms(&load) - expected).abs() < 0.01, "{}", rtt_ms(&load));

        // Left alone for one time constant, it reads as e^-1 of itself.
        tokio::time::advance(DECAY).await;
        assert!((rtt_ms(&load) - expected / std::f64::consts::E).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_does_not_make_an_endpoint_look_faster() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        tokio::time::advance(Duration::from_secs(5)).await;
        let before = rtt_ms(&load);
        load.observe(MS, true, Instant::now());
        assert_eq!(rtt_ms(&load), before);
        load.observe(500 * MS, true, Instant::now());
        assert!((rtt_ms(&load) - 500.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_counts_until_finished_or_dropped() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        let a = balancer.start(&load);
        let b = balancer.start(&load);
        assert_eq!(load.in_flight(), 2);
        tokio::time::advance(100 * MS).await;
        a.finish(Outcome::Success, false);
        assert_eq!(load.in_flight(), 1);
        assert!(
            (rtt_ms(&load) - 100.0).abs() < 0.01,
            "the latency was recorded"
        );
        drop(b);
        assert_eq!(load.in_flight(), 0);
        assert!(
            (rtt_ms(&load) - 100.0).abs() < 0.01,
            "a dropped attempt no slower than the estimate leaves it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_let_go_unanswered_raises_the_estimate_and_only_raises_it() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        balancer.start(&load).finish(Outcome::Success, false);
        let hung = balancer.start(&load);
        tokio::time::advance(500 * MS).await;
        // Its client gave up: the endpoint never answered in 500 ms.
        drop(hung);
        assert!((rtt_ms(&load) - 500.0).abs() < 0.01, "{}", rtt_ms(&load));

        let quick = balancer.start(&load);
        tokio::time::advance(MS).await;
        drop(quick);
        assert!(rtt_ms(&load) > 400.0, "a quick drop does not pull it down");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cost_grows_with_the_requests_in_flight() {
        let balancer = Balancer::new(Balance::P2cEwma, Rng::fixed(0.0));
        let load = balancer.load();
        let now = Instant::now();
        let idle = load.cost(now);
        let _guards: Vec<_> = (0..3).map(|_| balancer.start(&load)).collect();
        assert!((load.cost(now) - 4.0 * idle).abs() < 1.0);
    }

    #[test]
    fn packing_round_trips() {
        let (rtt, at) = unpack(pack(123_456_789.0, 4_000_000_000));
        assert!((rtt - 123_456_789.0).abs() / 123_456_789.0 < 1e-6);
        assert_eq!(at, 4_000_000_000);
    }
}
