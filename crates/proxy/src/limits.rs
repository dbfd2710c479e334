//! `[upstreams.NAME.limits]`: how much of an upstream one proxy may take, shared by every route
//! to it.
//!
//! Every attempt (first tries, retries and hedges alike, since each reaches the upstream) is
//! admitted here before an endpoint is picked:
//!
//! - the rate limit (`rate`, `burst`; off unless `rate` is set) spends one token, and refuses with
//!   `rate-limited` (429) when the bucket is empty; nothing waits for it to refill;
//! - the concurrency limit (`max_concurrent`, always on) takes a slot. With a fixed limit, an
//!   attempt that finds every slot taken waits in a FIFO queue of at most `max_pending` for at most
//!   `pending_timeout` (never past the request's deadline), and is refused with `overloaded` (503)
//!   when the queue is full or the wait runs out. With `"adaptive"` the limit is learnt from every
//!   attempt's latency and drops (Gradient2: initial 20, between 5 and 200), and an attempt over
//!   it is refused at once: a queue in front would hide from the limit the very queueing it
//!   measures (Envoy's adaptive concurrency filter refuses at once too). `max_pending` and
//!   `pending_timeout` apply to the fixed limit only.
//!
//! The rate is checked before the slot, so that a flood over the rate is refused without taking a
//! place in the queue; a token spent by an attempt the concurrency limit then refuses is lost. A
//! hedge, which never waits for a slot, takes it first and its token last.
//!
//! An attempt comes here only once a look at the pool, asking no breaker, found an endpoint that
//! may take it ([`Pool::may_admit`](crate::upstream::Pool::may_admit)): one that every breaker or
//! health check would refuse (`breaker-open`, `no-healthy-endpoint`) spends no token and takes
//! no slot.
//!
//! A refusal says nothing about any endpoint, so it never reaches a breaker, and it is not
//! retried: the retry would go through the same limits a moment later.
//!
//! A slot is held from admission until the attempt's response head arrives (or the attempt
//! fails, times out or is cancelled), not to the end of the body as Envoy's `max_requests` does.
//! What the limit protects is the upstream's work in progress: once the head is out, the rest of
//! the exchange goes at the client's pace, and a slow reader holding a slot would starve other
//! requests of the upstream without loading it, and teach the adaptive limit the client's speed
//! instead of the upstream's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rampart_config::MaxConcurrent;
use rampart_http::Reason;
use rampart_policy::Outcome;
use rampart_policy::adaptive::{self, AdaptiveLimit};
use rampart_policy::bulkhead::{Bulkhead, BulkheadPermit};
use rampart_policy::ratelimit::RateLimiter;
use tokio::time::Instant;

use crate::metrics::UpstreamMetrics;
use crate::recent::{Admissions, LimitsRecent};
use crate::turn;

/// One upstream's limits, with the gauges that show them (`rampart_inflight`,
/// `rampart_concurrency_limit`) and their last ten seconds.
#[derive(Debug)]
pub(crate) struct Limits {
    concurrency: Concurrency,
    rate: Option<RateLimiter>,
    metrics: UpstreamMetrics,
    recent: LimitsRecent,
    /// A reload replaced these limits: their attempts still in flight must not set the gauge,
    /// which the limits serving now share by name.
    retired: AtomicBool,
}

#[derive(Debug)]
enum Concurrency {
    /// A fixed `max_concurrent`, with its pending queue.
    Fixed(Bulkhead),
    /// `"adaptive"`.
    Adaptive(AdaptiveLimit),
}

/// A slot of the concurrency limit, held by one attempt until its response head: recorded with
/// the attempt's outcome ([`Slot::record`]), or dropped when the attempt is cancelled, which
/// teaches the adaptive limit nothing. It counts in `rampart_inflight` while it lives.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    held: Held<'a>,
    counted: Counted<'a>,
}

#[derive(Debug)]
enum Held<'a> {
    Fixed(BulkheadPermit<'a>),
    Adaptive {
        permit: adaptive::Permit,
        taken: Instant,
    },
}

/// One attempt in the upstream's in-flight gauge, until dropped.
#[derive(Debug)]
struct Counted<'a>(&'a Limits);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.metrics.inflight.dec();
    }
}

// === impl Limits ===

impl Limits {
    /// The limits of `[upstreams.NAME.limits]`; the error says what the policy refused.
    pub(crate) fn new(
        config: &rampart_config::Limits,
        metrics: UpstreamMetrics,
    ) -> Result<Limits, String> {
        let concurrency = match config.max_concurrent {
            MaxConcurrent::Fixed(max) => {
                let max = usize::try_from(max).map_err(|err| err.to_string())?;
                // No wait at all is no queue at all (the bulkhead refuses a queue without a wait).
                let pending = if config.pending_timeout.is_zero() {
                    0
                } else {
                    usize::try_from(config.max_pending).map_err(|err| err.to_string())?
                };
                let bulkhead = Bulkhead::builder(max)
                    .max_wait_queue(pending)
                    .max_wait(config.pending_timeout)
                    .build()
                    .map_err(|err| err.to_string())?;
                Concurrency::Fixed(bulkhead)
            }
            MaxConcurrent::Adaptive => Concurrency::Adaptive(AdaptiveLimit::gradient2()),
        };
        let rate = config
            .rate
            .zip(config.rate_burst())
            .map(|(rate, burst)| {
                let builder = if rate.per >= Duration::from_secs(60) {
                    RateLimiter::per_minute(rate.count)
                } else {
                    RateLimiter::per_second(rate.count)
                };
                builder.burst(burst).build().map_err(|err| err.to_string())
            })
            .transpose()?;
        let limits = Limits {
            concurrency,
            rate,
            metrics,
            recent: LimitsRecent::new(),
            retired: AtomicBool::new(false),
        };
        limits.publish();
        Ok(limits)
    }

    /// Sets `rampart_concurrency_limit` to the limit as it stands.
    pub(crate) fn publish(&self) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let limit = match &self.concurrency {
            Concurrency::Fixed(bulkhead) => bulkhead.max_concurrent(),
            Concurrency::Adaptive(limit) => limit.limit(),
        };
        self.metrics
            .concurrency_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// These limits no longer serve (see `retired`).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Admits an attempt that must be sent (a first try or a retry): spends a token, then takes
    /// a slot, waiting in the pending queue for one if the limit is fixed. The caller bounds the
    /// wait by the request's deadline.
    pub(crate) async fn admit(&self) -> Result<Slot<'_>, Reason> {
        let admitted = self.take().await;
        if admitted.is_err() && !self.metrics.skip {
            self.recent.refused();
        }
        admitted
    }

    async fn take(&self) -> Result<Slot<'_>, Reason> {
        self.spend()?;
        let held = match &self.concurrency {
            Concurrency::Fixed(bulkhead) => bulkhead
                .acquire()
                .await
                .map(Held::Fixed)
                .map_err(|_full| Reason::Overloaded),
            Concurrency::Adaptive(limit) => adaptive_slot(limit),
        }?;
        Ok(self.counted(held))
    }

    /// Admits a hedge only if it can start now: a hedge is extra load, never worth a wait in the
    /// queue, nor a place a queued request is owed. `pay` (the hedge's share of the retry budget)
    /// is asked between the slot and the token, once the rate would give one: when it declines,
    /// the answer is `retry-budget-exhausted`, the slot is given back and no token is spent; a
    /// hedge the rate refuses spends no budget.
    pub(crate) fn try_admit(&self, pay: impl FnOnce() -> bool) -> Result<Slot<'_>, Reason> {
        // The slot first: a hedge the concurrency limit refuses spends no token, nor any budget.
        let held = match &self.concurrency {
            Concurrency::Fixed(bulkhead) => bulkhead
                .try_acquire()
                .map(Held::Fixed)
                .map_err(|_full| Reason::Overloaded),
            Concurrency::Adaptive(limit) => adaptive_slot(limit),
        }?;
        let slot = self.counted(held);
        // Paid for before the token, and once there is one to take: a hedge the budget declines
        // spends no token, and one the rate refuses no budget. (A token another thread takes
        // between the look and the spend costs this hedge its payment: a race, not a drain.)
        if self.rate_ready_in().is_some_and(|wait| !wait.is_zero()) {
            return Err(Reason::RateLimited);
        }
        if !pay() {
            return Err(Reason::RetryBudgetExhausted);
        }
        self.spend()?;
        Ok(slot)
    }

    fn counted<'a>(&'a self, held: Held<'a>) -> Slot<'a> {
        let before = self.metrics.inflight.inc();
        if !self.metrics.skip {
            self.recent.admitted(u64::try_from(before).unwrap_or(0) + 1);
        }
        Slot {
            held,
            counted: Counted(self),
        }
    }

    fn spend(&self) -> Result<(), Reason> {
        match &self.rate {
            Some(rate) => rate.try_acquire().map_err(|_limited| Reason::RateLimited),
            None => Ok(()),
        }
    }

    /// How long until the rate limit would admit an attempt: what a client refused
    /// `rate-limited` is told to wait. `None` without a rate.
    pub(crate) fn rate_ready_in(&self) -> Option<Duration> {
        self.rate.as_ref().map(RateLimiter::time_to_ready)
    }

    /// Attempts waiting in the pending queue now (none for the adaptive limit, which has no
    /// queue).
    pub(crate) fn queued(&self) -> usize {
        match &self.concurrency {
            Concurrency::Fixed(bulkhead) => bulkhead.queued(),
            Concurrency::Adaptive(_) => 0,
        }
    }

    /// How many attempts the pending queue holds at most: 0 without one (the adaptive limit,
    /// or no `pending_timeout`).
    pub(crate) fn max_pending(&self) -> usize {
        match &self.concurrency {
            Concurrency::Fixed(bulkhead) => bulkhead.max_wait_queue(),
            Concurrency::Adaptive(_) => 0,
        }
    }

    /// The last ten seconds of admissions.
    pub(crate) fn admissions(&self) -> Admissions {
        self.recent.read()
    }

    /// The adaptive limit as it stands, if the limit is adaptive.
    #[cfg(test)]
    fn adaptive_limit(&self) -> Option<usize> {
        match &self.concurrency {
            Concurrency::Fixed(_) => None,
            Concurrency::Adaptive(limit) => Some(limit.limit()),
        }
    }
}

fn adaptive_slot(limit: &AdaptiveLimit) -> Result<Held<'_>, Reason> {
    limit
        .try_acquire()
        .map(|permit| Held::Adaptive {
            permit,
            taken: turn::now(),
        })
        .map_err(|_exceeded| Reason::Overloaded)
}

// === impl Slot ===

impl Slot<'_> {
    /// Gives the slot back, the attempt counted as executed in the recent admissions; the adaptive
    /// limit learns from its `outcome` and the time since admission (a failure is a drop).
    pub(crate) fn record(self, outcome: Outcome) {
        let Slot { held, counted } = self;
        if !counted.0.metrics.skip {
            counted.0.recent.executed();
        }
        match held {
            Held::Fixed(permit) => drop(permit),
            Held::Adaptive { permit, taken } => {
                permit.record(outcome, taken.elapsed());
                counted.0.publish();
            }
        }
    }

    /// Gives the slot back, the attempt counted as executed in the recent admissions, the
    /// adaptive limit learning nothing from it: an attempt the client's own deadline cut short
    /// went out, and says nothing of the upstream's latency.
    pub(crate) fn executed(self) {
        if !self.counted.0.metrics.skip {
            self.counted.0.recent.executed();
        }
    }
}

#[cfg(test)]
mod tests {
    use rampart_config::Config;

    use super::*;
    use crate::metrics::Metrics;

    fn parse(section: &str) -> Limits {
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n\
             [upstreams.app.limits]\n{section}\n"
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Limits::new(
            &config.upstreams[0].limits,
            Metrics::default().upstream("app"),
        )
        .unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_limit_queues_then_refuses() {
        let limits = parse("max_concurrent = 1\nmax_pending = 1\npending_timeout = \"50ms\"");
        let held = limits.admit().await.unwrap();
        let mut queued = tokio_test::task::spawn(limits.admit());
        tokio_test::assert_pending!(queued.poll());
        assert_eq!((limits.queued(), limits.max_pending()), (1, 1));
        // The queue of one is full: refused at once.
        assert_eq!(limits.admit().await.unwrap_err(), Reason::Overloaded);
        // A hedge never takes the place the queued attempt is owed.
        drop(held);
        assert_eq!(limits.try_admit(|| true).unwrap_err(), Reason::Overloaded);
        let slot = tokio_test::assert_ready_ok!(queued.poll());
        drop(queued);
        // Waiting past `pending_timeout` is refused too.
        let start = Instant::now();
        assert_eq!(limits.admit().await.unwrap_err(), Reason::Overloaded);
        assert_eq!(start.elapsed(), ms(50));
        slot.record(Outcome::Success);
        assert!(limits.try_admit(|| true).is_ok());
        // One slot came to an outcome (the others were let go unrecorded), two first tries were
        // refused; the hedge declined is no refusal.
        assert_eq!(
            limits.admissions(),
            Admissions {
                executed: 1,
                refused: 2,
                peak_in_flight: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_pending_timeout_means_no_queue() {
        let limits = parse("max_concurrent = 1\nmax_pending = 5\npending_timeout = \"0s\"");
        assert_eq!(limits.max_pending(), 0);
        let _held = limits.admit().await.unwrap();
        let start = Instant::now();
        assert_eq!(limits.admit().await.unwrap_err(), Reason::Overloaded);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn over_the_rate_is_rate_limited_and_the_burst_defaults_to_one_second_of_it() {
        let limits = parse("rate = \"3/s\"");
        for _ in 0..3 {
            drop(limits.admit().await.unwrap());
        }
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);
        assert_eq!(limits.try_admit(|| true).unwrap_err(), Reason::RateLimited);

        // Less than one a second: a burst of one.
        let limits = parse("rate = \"30/m\"");
        drop(limits.admit().await.unwrap());
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);
        let limits = parse("rate = \"120/m\"");
        for _ in 0..2 {
            drop(limits.admit().await.unwrap());
        }
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);

        let limits = parse("rate = \"100/m\"\nburst = 2");
        drop(limits.admit().await.unwrap());
        drop(limits.try_admit(|| true).unwrap());
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);
    }

    #[tokio::test]
    async fn a_hedge_refused_a_slot_spends_no_token_nor_budget() {
        let limits = parse("max_concurrent = 1\nmax_pending = 0\nrate = \"2/m\"\nburst = 2");
        let held = limits.admit().await.unwrap();
        let paid = std::cell::Cell::new(false);
        let refused = limits.try_admit(|| {
            paid.set(true);
            true
        });
        assert_eq!(refused.unwrap_err(), Reason::Overloaded);
        assert!(!paid.get());
        drop(held);
        // The second token is still there.
        drop(limits.admit().await.unwrap());
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);
    }

    #[tokio::test]
    async fn a_hedge_the_rate_refuses_spends_no_budget() {
        let limits = parse("rate = \"1/m\"\nburst = 1");
        drop(limits.admit().await.unwrap());
        let paid = std::cell::Cell::new(false);
        let refused = limits.try_admit(|| {
            paid.set(true);
            true
        });
        assert_eq!(refused.unwrap_err(), Reason::RateLimited);
        assert!(!paid.get(), "paid for a hedge that never went");
    }

    #[tokio::test]
    async fn a_hedge_the_budget_declines_spends_no_token_and_gives_its_slot_back() {
        let limits = parse("max_concurrent = 1\nmax_pending = 0\nrate = \"1/m\"\nburst = 1");
        assert_eq!(
            limits.try_admit(|| false).unwrap_err(),
            Reason::RetryBudgetExhausted
        );
        // The slot and the one token are still there.
        drop(limits.admit().await.unwrap());
        assert_eq!(limits.admit().await.unwrap_err(), Reason::RateLimited);
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_shrinks_when_the_upstream_slows_down() {
        let limits = parse("max_concurrent = \"adaptive\"");
        let initial = limits.adaptive_limit().unwrap();
        // Rounds of attempts filling the limit: fast ones set what normal is, then slow ones.
        let round = |latency: Duration| {
            let limits = &limits;
            async move {
                let slots: Vec<_> = std::iter::from_fn(|| limits.try_admit(|| true).ok()).collect();
                assert_eq!(slots.len(), limits.adaptive_limit().unwrap());
                tokio::time::advance(latency).await;
                for slot in slots {
                    slot.record(Outcome::Success);
                }
            }
        };
        for _ in 0..3 {
            round(ms(10)).await;
        }
        let learnt = limits.adaptive_limit().unwrap();
        assert!(learnt >= initial, "{learnt} < {initial}");
        for _ in 0..5 {
            round(ms(500)).await;
        }
        let slowed = limits.adaptive_limit().unwrap();
        assert!(slowed < initial, "{slowed} >= {initial}");
        // Over the limit, refused at once (no queue for the adaptive limit).
        let slots: Vec<_> = std::iter::from_fn(|| limits.try_admit(|| true).ok()).collect();
        assert_eq!(limits.admit().await.unwrap_err(), Reason::Overloaded);
        drop(slots);
    }
}
