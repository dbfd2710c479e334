//! What a route, an endpoint or an upstream's limits did lately, over the last ten seconds: for
//! the admin API's stats and its Hystrix stream.
//!
//! Counts go into a [`Ring`] of one slot per second, ten of them: totals cover the current second
//! and the nine before it (less while the proxy is younger than that). Latencies go into a
//! [`LatencyRecorder`] over a 10 s window, whose percentiles describe at least the last five
//! seconds and nothing older than ten. Recording takes a few relaxed atomic adds; a count landing
//! at the very moment its slot turns over to a new second may be lost: statistics, not a ledger.
//!
//! - [`Recent`], an endpoint's: its attempts, the failed ones, their latencies.
//! - [`RouteRecent`], a route's: its answers by [`Kind`], those a fallback gave, their
//!   latencies (all of them, and those of the answers that reached the upstream), and the most
//!   requests it had in flight at once.
//! - [`LimitsRecent`], an upstream's limits': attempts that went out with a slot and came back,
//!   attempts refused, and the most slots held at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rampart_policy::latency::LatencyRecorder;
use tokio::time::Instant;

use crate::turn;

/// How many seconds the rates cover.
const SECONDS: usize = 10;

/// The window of the latency percentiles.
const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// Counts over the last ten seconds, `N` counters to a slot, one slot per second.
#[derive(Debug)]
pub(crate) struct Ring<const N: usize> {
    origin: Instant,
    slots: [Slot<N>; SECONDS],
}

#[derive(Debug)]
struct Slot<const N: usize> {
    /// The second (since `origin`) plus one that the counts are for; 0 when never used.
    second: AtomicU64,
    counts: [AtomicU64; N],
}

/// The counters of a ring, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals<const N: usize> {
    /// Each counter summed over the slots in the window.
    sums: [u64; N],
    /// Each counter's largest value in one slot of the window.
    peaks: [u64; N],
    /// How much time the window covers: the current second so far and the whole ones before it,
    /// as far as the ring reaches.
    covered: Duration,
}

/// What an endpoint did in the last ten seconds or so, read at one moment: rates over the current
/// second and the nine before it, percentiles over a window of 5 to 10 s. For a route, the same
/// of its answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Requests per second.
    pub requests_per_second: f64,
    /// The share of requests that were errors, from 0 to 1 (0 with no request).
    pub error_rate: f64,
    /// The median latency; `None` with no request in the window.
    pub p50: Option<Duration>,
    /// The 99th percentile latency; `None` with no request in the window.
    pub p99: Option<Duration>,
}

/// What became of a request a route answered, finer than its `rampart_requests_total` outcome:
/// the kinds of the Hystrix stream (docs/admin.md maps each `x-rampart-error` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Answered by the upstream, without a failure status.
    Success = 0,
    /// A failing upstream answer, or the exchange failed (`upstream-connect`, `upstream-reset`,
    /// `upstream-invalid`, `retry-budget-exhausted`, `fault-injected`).
    Failure = 1,
    /// `timeout` or `deadline-exceeded`.
    Timeout = 2,
    /// No endpoint's breaker admitted the request (`breaker-open`, `no-healthy-endpoint`).
    ShortCircuited = 3,
    /// The upstream's limits refused it (`overloaded`, `rate-limited`; `outbox-full`).
    Rejected = 4,
    /// The client's request was at fault (`bad-request`, `body-too-large`,
    /// `headers-too-large`).
    BadRequest = 5,
}

impl Kind {
    /// Whether the request reached the upstream, as far as the kind tells: what Hystrix times as
    /// an execution.
    fn executed(self) -> bool {
        matches!(self, Kind::Success | Kind::Failure | Kind::Timeout)
    }
}

/// The counters of a route's ring: the kinds, then these.
const FALLBACK: usize = 6;
/// Errors passed on to the client as they were: neither a success nor a fallback's answer.
const PASSED_ON: usize = 7;
/// Like `PASSED_ON`, bad requests left out: the failures no fallback covered.
const UNCOVERED: usize = 8;
const TOTAL_NANOS: usize = 9;
const EXECUTED_NANOS: usize = 10;
/// The most requests in flight at once (a peak, not a sum).
const ROUTE_PEAK: usize = 11;
const ROUTE_COUNTERS: usize = 12;

/// The counters of an endpoint's ring.
const REQUESTS: usize = 0;
const ERRORS: usize = 1;

/// The counters of an upstream's limits' ring.
const EXECUTED: usize = 0;
const REFUSED: usize = 1;
/// The most slots held at once (a peak, not a sum).
const LIMITS_PEAK: usize = 2;

/// The recent attempts of one endpoint.
#[derive(Debug)]
pub(crate) struct Recent {
    ring: Ring<2>,
    latency: LatencyRecorder,
}

/// The recent answers of one route.
#[derive(Debug)]
pub(crate) struct RouteRecent {
    ring: Ring<ROUTE_COUNTERS>,
    /// Every answer's latency.
    total: LatencyRecorder,
    /// The latency of the answers that reached the upstream ([`Kind::executed`]).
    executed: LatencyRecorder,
}

/// A route's answers over the last ten seconds or so (a window of 5 to 10 s for the
/// percentiles), by what became of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Answers {
    /// Answered by the upstream, without a failure status.
    pub success: u64,
    /// A failing upstream answer, or a failed exchange.
    pub failure: u64,
    /// The route's timeout or the request's deadline passed.
    pub timeout: u64,
    /// No endpoint's breaker admitted the request.
    pub short_circuited: u64,
    /// The upstream's limits refused it.
    pub rejected: u64,
    /// The client's request was at fault.
    pub bad_request: u64,
    /// Answered by the route's fallback (each also counted above, by what it stood in for).
    pub fallback: u64,
    /// Errors passed on to the client as they were: neither a success nor a fallback's answer.
    pub errors_passed_on: u64,
    /// Failures, timeouts, short-circuits and rejections no fallback covered.
    pub failures_uncovered: u64,
    /// The most requests the route had in flight at once (from arrival to answer).
    pub peak_in_flight: u64,
    /// Every answer's latency, to the response head; `None` with no answer in the window.
    pub latency: Option<Latencies>,
    /// The latency of the answers that reached the upstream (success, failure, timeout).
    pub executed_latency: Option<Latencies>,
}

/// A latency distribution: the mean over the ten one-second slots, the percentiles over the
/// latency window, each within 3.2%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    /// The mean.
    pub mean: Duration,
    /// The shortest.
    pub p0: Duration,
    /// The 25th percentile.
    pub p25: Duration,
    /// The median.
    pub p50: Duration,
    /// The 75th percentile.
    pub p75: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The 99.5th percentile.
    pub p99_5: Duration,
    /// The longest.
    pub p100: Duration,
}

/// The recent admissions of an upstream's limits.
#[derive(Debug)]
pub(crate) struct LimitsRecent {
    ring: Ring<3>,
}

/// An upstream's limits over the last ten seconds or so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admissions {
    /// Attempts that held a slot to their outcome: first tries, retries and hedges that went
    /// out and were answered, failed or timed out (not those cancelled, nor those no endpoint
    /// took).
    pub executed: u64,
    /// First tries and retries refused (`overloaded`, `rate-limited`); a hedge declined for
    /// want of a slot is no refusal.
    pub refused: u64,
    /// The most slots held at once.
    pub peak_in_flight: u64,
}

// === impl Ring ===

impl<const N: usize> Ring<N> {
    fn new() -> Ring<N> {
        Ring {
            origin: turn::now(),
            slots: std::array::from_fn(|_| Slot {
                second: AtomicU64::new(0),
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    /// The counters of the second `now` falls in, emptied first if they held an older second.
    fn at(&self, now: Instant) -> &[AtomicU64; N] {
        let second = now.saturating_duration_since(self.origin).as_secs() + 1;
        let slot = &self.slots[(second % SECONDS as u64) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            for count in &slot.counts {
                count.store(0, Relaxed);
            }
        }
        &slot.counts
    }

    /// The counters now.
    fn read(&self) -> Totals<N> {
        let age = self.origin.elapsed();
        let second = age.as_secs() + 1;
        let mut totals = Totals {
            sums: [0; N],
            peaks: [0; N],
            covered: age.min(Duration::from_secs(SECONDS as u64 - 1) + subsec(age)),
        };
        for slot in &self.slots {
            let stamp = slot.second.load(Relaxed);
            if stamp != 0 && stamp + (SECONDS as u64) > second {
                for (i, count) in slot.counts.iter().enumerate() {
                    let count = count.load(Relaxed);
                    totals.sums[i] += count;
                    totals.peaks[i] = totals.peaks[i].max(count);
                }
            }
        }
        totals
    }
}

fn subsec(age: Duration) -> Duration {
    Duration::from_nanos(u64::from(age.subsec_nanos()))
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn recorder() -> LatencyRecorder {
    LatencyRecorder::new(LATENCY_WINDOW, Arc::new(turn::TurnClock))
        .expect("the latency window is not zero")
}

// The window's rates and percentiles, from `requests` and `errors` over `covered`.
fn window(requests: u64, errors: u64, covered: Duration, latency: &LatencyRecorder) -> Window {
    Window {
        requests_per_second: if covered.is_zero() {
            0.0
        } else {
            requests as f64 / covered.as_secs_f64()
        },
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        p50: latency.percentile(50.0),
        p99: latency.percentile(99.0),
    }
}

// === impl Recent ===

impl Recent {
    pub(crate) fn new() -> Recent {
        Recent {
            ring: Ring::new(),
            latency: recorder(),
        }
    }

    /// Counts an attempt that took `elapsed`, failed or not, ending `now` (the caller read the
    /// clock for `elapsed` already).
    pub(crate) fn record(&self, error: bool, elapsed: Duration, now: Instant) {
        let counts = self.ring.at(now);
        counts[REQUESTS].fetch_add(1, Relaxed);
        if error {
            counts[ERRORS].fetch_add(1, Relaxed);
        }
        self.latency.record(elapsed);
    }

    /// The rates and percentiles now.
    pub(crate) fn read(&self) -> Window {
        let totals = self.ring.read();
        window(
            totals.sums[REQUESTS],
            totals.sums[ERRORS],
            totals.covered,
            &self.latency,
        )
    }
}

// === impl RouteRecent ===

impl RouteRecent {
    pub(crate) fn new() -> RouteRecent {
        RouteRecent {
            ring: Ring::new(),
            total: recorder(),
            executed: recorder(),
        }
    }

    /// Counts an answer of `kind`, given by the fallback or not, that took `elapsed`, ending
    /// `now`.
    pub(crate) fn record(&self, kind: Kind, fallback: bool, elapsed: Duration, now: Instant) {
        let counts = self.ring.at(now);
        counts[kind as usize].fetch_add(1, Relaxed);
        if fallback {
            counts[FALLBACK].fetch_add(1, Relaxed);
        } else if kind != Kind::Success {
            counts[PASSED_ON].fetch_add(1, Relaxed);
            if kind != Kind::BadRequest {
                counts[UNCOVERED].fetch_add(1, Relaxed);
            }
        }
        counts[TOTAL_NANOS].fetch_add(nanos(elapsed), Relaxed);
        self.total.record(elapsed);
        if kind.executed() {
            counts[EXECUTED_NANOS].fetch_add(nanos(elapsed), Relaxed);
            self.executed.record(elapsed);
        }
    }

    /// The route has `in_flight` requests in flight now, one having just arrived.
    pub(crate) fn in_flight(&self, in_flight: u64, now: Instant) {
        self.ring.at(now)[ROUTE_PEAK].fetch_max(in_flight, Relaxed);
    }

    /// The rates and percentiles now; an error is any answer but a success.
    pub(crate) fn read(&self) -> Window {
        let totals = self.ring.read();
        let requests = totals.sums[..=Kind::BadRequest as usize].iter().sum();
        let errors = requests - totals.sums[Kind::Success as usize];
        window(requests, errors, totals.covered, &self.total)
    }

    /// The answers now, by what became of them.
    pub(crate) fn answers(&self) -> Answers {
        let Totals { sums, peaks, .. } = self.ring.read();
        let kind = |kind: Kind| sums[kind as usize];
        let answered = sums[..=Kind::BadRequest as usize].iter().sum();
        let executed = [Kind::Success, Kind::Failure, Kind::Timeout]
            .into_iter()
            .map(kind)
            .sum();
        Answers {
            success: kind(Kind::Success),
            failure: kind(Kind::Failure),
            timeout: kind(Kind::Timeout),
            short_circuited: kind(Kind::ShortCircuited),
            rejected: kind(Kind::Rejected),
            bad_request: kind(Kind::BadRequest),
            fallback: sums[FALLBACK],
            errors_passed_on: sums[PASSED_ON],
            failures_uncovered: sums[UNCOVERED],
            peak_in_flight: peaks[ROUTE_PEAK],
            latency: latencies(&self.total, sums[TOTAL_NANOS], answered),
            executed_latency: latencies(&self.executed, sums[EXECUTED_NANOS], executed),
        }
    }
}

// The distribution in `recorder`, its mean from the `sum` of `count` latencies.
fn latencies(recorder: &LatencyRecorder, sum: u64, count: u64) -> Option<Latencies> {
    let p = |p: f64| recorder.percentile(p);
    let mean = Duration::from_nanos(sum.checked_div(count)?);
    Some(Latencies {
        mean,
        p0: p(0.0)?,
        p25: p(25.0)?,
        p50: p(50.0)?,
        p75: p(75.0)?,
        p90: p(90.0)?,
        p95: p(95.0)?,
        p99: p(99.0)?,
        p99_5: p(99.5)?,
        p100: p(100.0)?,
    })
}

// === impl LimitsRecent ===

impl LimitsRecent {
    pub(crate) fn new() -> LimitsRecent {
        LimitsRecent { ring: Ring::new() }
    }

    /// An attempt took a slot, `in_flight` being held now with it.
    pub(crate) fn admitted(&self, in_flight: u64) {
        self.ring.at(turn::now())[LIMITS_PEAK].fetch_max(in_flight, Relaxed);
    }

    /// An attempt holding a slot came to its outcome.
    pub(crate) fn executed(&self) {
        self.ring.at(turn::now())[EXECUTED].fetch_add(1, Relaxed);
    }

    /// A first try or a retry was refused.
    pub(crate) fn refused(&self) {
        self.ring.at(turn::now())[REFUSED].fetch_add(1, Relaxed);
    }

    /// The admissions now.
    pub(crate) fn read(&self) -> Admissions {
        let Totals { sums, peaks, .. } = self.ring.read();
        Admissions {
            executed: sums[EXECUTED],
            refused: sums[REFUSED],
            peak_in_flight: peaks[LIMITS_PEAK],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn rates_cover_the_last_ten_seconds() {
        let recent = Recent::new();
        tokio::time::advance(ms(500)).await;
        for _ in 0..3 {
            recent.record(false, ms(10), Instant::now());
        }
        recent.record(true, ms(100), Instant::now());
        let window = recent.read();
        // Four requests in half a second.
        assert_eq!(window.requests_per_second, 8.0);
        assert_eq!(window.error_rate, 0.25);
        assert!(window.p50.unwrap().abs_diff(ms(10)) < ms(1));
        assert!(window.p99.unwrap().abs_diff(ms(100)) < ms(4));

        tokio::time::advance(Duration::from_secs(12)).await;
        let window = recent.read();
        assert_eq!(window.requests_per_second, 0.0);
        assert_eq!(window.error_rate, 0.0);
        assert_eq!(window.p50, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_counts_its_answers_by_kind_and_forgets_them_after_ten_seconds() {
        let recent = RouteRecent::new();
        let answer =
            |kind, fallback, latency| recent.record(kind, fallback, latency, Instant::now());
        answer(Kind::Success, false, ms(10));
        answer(Kind::Success, false, ms(30));
        answer(Kind::Failure, false, ms(20));
        answer(Kind::Timeout, true, ms(200));
        answer(Kind::ShortCircuited, false, ms(1));
        answer(Kind::Rejected, false, ms(1));
        answer(Kind::BadRequest, false, ms(1));
        recent.in_flight(3, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        recent.in_flight(2, Instant::now());

        let answers = recent.answers();
        assert_eq!(
            (answers.success, answers.failure, answers.timeout),
            (2, 1, 1)
        );
        assert_eq!(
            (
                answers.short_circuited,
                answers.rejected,
                answers.bad_request
            ),
            (1, 1, 1)
        );
        assert_eq!(answers.fallback, 1);
        // The failure, the short-circuit, the rejection and the bad request went back as errors;
        // the timeout was covered by the fallback.
        assert_eq!(answers.errors_passed_on, 4);
        assert_eq!(answers.failures_uncovered, 3);
        assert_eq!(answers.peak_in_flight, 3);
        // Seven answers, 263 ms in all; four executed, 260 ms in all.
        let latency = answers.latency.unwrap();
        assert_eq!(latency.mean, Duration::from_nanos(263_000_000 / 7));
        assert!(latency.p0.abs_diff(ms(1)) < ms(1), "{latency:?}");
        assert!(latency.p100.abs_diff(ms(200)) < ms(7), "{latency:?}");
        let executed = answers.executed_latency.unwrap();
        assert_eq!(executed.mean, ms(65));
        assert!(executed.p0.abs_diff(ms(10)) < ms(1), "{executed:?}");
        assert!(executed.p50.abs_diff(ms(20)) < ms(1), "{executed:?}");
        let window = recent.read();
        assert!((window.error_rate - 5.0 / 7.0).abs() < 1e-9, "{window:?}");

        tokio::time::advance(Duration::from_secs(9)).await;
        let answers = recent.answers();
        assert_eq!(answers.success, 0);
        // The peak of the second second is still in the window.
        assert_eq!(answers.peak_in_flight, 2);
        assert_eq!(answers.latency, None);
        assert_eq!(answers.executed_latency, None);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_count_executions_refusals_and_the_peak() {
        let recent = LimitsRecent::new();
        recent.admitted(1);
        recent.admitted(2);
        recent.executed();
        recent.refused();
        tokio::time::advance(Duration::from_secs(1)).await;
        recent.admitted(1);
        recent.executed();
        recent.executed();
        assert_eq!(
            recent.read(),
            Admissions {
                executed: 3,
                refused: 1,
                peak_in_flight: 2
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(recent.read(), Admissions::default());
    }
}
