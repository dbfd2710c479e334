//! A retry budget: retries may add only a bounded share of load.
//!
//! A fixed number of attempts per call does not stop a retry storm: when a callee fails every
//! call, three attempts triple its load just as it struggles, and each layer of callers that also
//! retries multiplies that again. A budget caps retries against recent traffic instead, like
//! Finagle's `RetryBudget` and linkerd's: over a sliding window, retries may number at most
//! `ratio` times the requests plus a floor of `min_per_sec` per second, so that a quiet client can
//! still retry its occasional failure.
//!
//! The same rule holds over the window's last fifth too. A whole window's allowance is saved up
//! while calls succeed, and Finagle's budget lets it all go at once: when the callee starts
//! failing, in the very second it most needs sparing (ten seconds of 50 calls a second at 20%,
//! plus ten a second, is 200 retries), and again whenever the retries of that burst leave the
//! window. Over the last fifth, the retries go out at the rate the budget names.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, TimeSource};
use crate::window::Window;

use super::error::InvalidBudget;

/// Counter 0 of the window: first attempts.
const REQUESTS: usize = 0;
/// Counter 1 of the window: retries let through.
const RETRIES: usize = 1;
/// The window slides by tenths.
const BUCKETS: u32 = 10;
/// The span of the window that may not spend more than its own share, in buckets: a fifth.
const RECENT: u64 = 2;
/// A shorter window forgets a storm before it can see it.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// A retry budget, shared by every clone.
///
/// Every first attempt deposits; every retry withdraws, and is allowed only while
/// `retries < ratio * requests + min_per_sec * window` over the last `window`, and likewise over
/// its last fifth (`min_per_sec` times that span), so that what a calm window saved up is spent
/// over time rather than in one burst. Clones share one account, so one budget can cover every
/// retry policy of a route, or of a whole callee.
///
/// Depositing costs a few nanoseconds: it reads a cached clock (unless a clock is injected with
/// [`Budget::with_clock`]) and adds one to a per-thread counter; a
/// [`RetryService`](super::RetryService) deposits its calls in batches
/// ([`Budget::deposit_many`]) and costs less still. Withdrawing sums the window and happens only
/// when a call is about to be retried. Threads withdrawing at the same instant may each take the
/// last retry the budget allows, so under contention it may overshoot by at most one retry per
/// such thread.
///
/// ```
/// use std::time::Duration;
/// use rampart_policy::retry::Budget;
///
/// // Retries add at most 20% to the load, plus 10 per second for quiet periods.
/// let budget = Budget::new(Duration::from_secs(10), 0.2, 10)?;
/// budget.deposit();
/// assert!(budget.withdraw());
/// # Ok::<(), rampart_policy::retry::error::InvalidBudget>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    shared: Arc<Shared>,
}

struct Shared {
    window: Window<2>,
    len: Duration,
    ratio: f64,
    min_per_sec: u32,
    /// `min_per_sec` over the whole window.
    floor: f64,
    /// `min_per_sec` over the last `RECENT` buckets.
    recent_floor: f64,
}

impl Budget {
    /// A budget over the last `window` (at least a second) that lets retries add `ratio` of the
    /// requests (0.2 = 20%; finite, at least 0) plus `min_per_sec` retries per second.
    pub fn new(window: Duration, ratio: f64, min_per_sec: u32) -> Result<Budget, InvalidBudget> {
        if window < MIN_WINDOW {
            return Err(InvalidBudget::WindowTooShort {
                window,
                min: MIN_WINDOW,
            });
        }
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(InvalidBudget::InvalidRatio(ratio));
        }
        Ok(Budget::build(window, ratio, min_per_sec, None))
    }

    /// The same budget reading `clock` on every deposit and withdrawal, for exact bucketing or
    /// tests on a paused or manual clock. The new budget starts empty: clones of `self` keep the
    /// old account, so call this before sharing the budget.
    pub fn with_clock(self, clock: SharedClock) -> Budget {
        let shared = &self.shared;
        Budget::build(shared.len, shared.ratio, shared.min_per_sec, Some(clock))
    }

    fn build(len: Duration, ratio: f64, min_per_sec: u32, clock: Option<SharedClock>) -> Budget {
        Budget {
            shared: Arc::new(Shared {
                window: Window::new(len, BUCKETS, TimeSource::new(clock)),
                len,
                ratio,
                min_per_sec,
                floor: f64::from(min_per_sec) * len.as_secs_f64(),
                recent_floor: f64::from(min_per_sec) * len.as_secs_f64() * RECENT as f64
                    / f64::from(BUCKETS),
            }),
        }
    }

    /// Counts a request: a call's first attempt. Retry policies do this themselves.
    #[inline]
    pub fn deposit(&self) {
        // Lossy under a rare race, which only ever makes the budget stricter: see `add_lossy`.
        self.shared.window.add_lossy(REQUESTS, 1);
    }

    /// Counts `n` requests at once, as a service that counted them itself does; lossy under the
    /// same rare race as [`Budget::deposit`].
    pub fn deposit_many(&self, n: u32) {
        self.shared.window.add_lossy(REQUESTS, u64::from(n));
    }

    /// The budget's time, as a deposit reads it: when a batch of [`Budget::deposit_held`]
    /// begins.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.shared.window.now()
    }

    /// Whether a batch begun at `since` (read with [`Budget::now`]) is a bucket (a tenth of the
    /// window) old at `now`: it is then deposited, before it stays in the window much longer
    /// than its requests would have.
    #[inline]
    pub(crate) fn is_due(&self, since: u64, now: u64) -> bool {
        self.shared.window.buckets_since(since, now) >= 1
    }

    /// Counts `n` requests held back since `since`, at `now` (both read with [`Budget::now`]),
    /// as a service that batches its deposits does; lossy as [`Budget::deposit`] is. A batch
    /// two buckets old
    /// or more (a service that went quiet holding it) is dropped instead: counted now, its
    /// requests would stay in the window well after they had aged out, and allow retries they
    /// no longer earn. Dropped, they can only refuse a retry, never allow one.
    pub(crate) fn deposit_held(&self, n: u32, since: u64, now: u64) {
        if self.shared.window.buckets_since(since, now) < 2 {
            self.deposit_many(n);
        }
    }

    /// Takes one retry from the budget: `true` if the retry may go ahead, and then it is counted.
    pub fn withdraw(&self) -> bool {
        let shared = &*self.shared;
        let within = |[requests, retries]: [u64; 2], floor: f64| {
            (retries as f64) < shared.ratio * requests as f64 + floor
        };
        // The last fifth paces what the window allows; it allows one retry at least, so that
        // the retry of a call slower than a fifth of the window, whose request has left it,
        // goes when the window allows it, with no floor and no other traffic too.
        let [recent_requests, recent_retries] = shared.window.sum_last(RECENT);
        if within(shared.window.sum(), shared.floor)
            && (recent_retries == 0
                || within([recent_requests, recent_retries], shared.recent_floor))
        {
            shared.window.record(RETRIES);
            true
        } else {
            false
        }
    }

    /// The requests counted over the window, for the tests of what deposits them.
    #[cfg(test)]
    pub(crate) fn deposited(&self) -> u64 {
        self.shared.window.sum()[REQUESTS]
    }

    /// The span over which retries are counted against requests.
    pub fn window(&self) -> Duration {
        self.shared.len
    }

    /// The share of requests that retries may add.
    pub fn ratio(&self) -> f64 {
        self.shared.ratio
    }

    /// The retries per second allowed whatever the traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.shared.min_per_sec
    }
}

impl Default for Budget {
    /// Retries add at most 20% load, plus 10 per second, over 10 seconds.
    fn default() -> Budget {
        Budget::build(Duration::from_secs(10), 0.2, 10, None)
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("window", &self.shared.len)
            .field("ratio", &self.shared.ratio)
            .field("min_per_sec", &self.shared.min_per_sec)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::{ManualClock, TokioClock};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn refuses_bad_settings() {
        assert_eq!(
            Budget::new(Duration::from_millis(999), 0.2, 10).unwrap_err(),
            InvalidBudget::WindowTooShort {
                window: Duration::from_millis(999),
                min: secs(1)
            }
        );
        for ratio in [-0.1, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                Budget::new(secs(10), ratio, 10).unwrap_err(),
                InvalidBudget::InvalidRatio(ratio)
            );
        }
        assert!(matches!(
            Budget::new(secs(10), f64::NAN, 10),
            Err(InvalidBudget::InvalidRatio(r)) if r.is_nan()
        ));
        assert!(Budget::new(secs(1), 0.0, 0).is_ok());
    }

    fn drain(budget: &Budget) -> usize {
        (0..10_000).take_while(|_| budget.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_ratio_plus_the_floor_and_no_more() {
        let budget = Budget::new(secs(10), 0.2, 1)
            .unwrap()
            .with_clock(Arc::new(TokioClock));
        for _ in 0..100 {
            budget.deposit();
        }
        // The window allows 20% of 100 requests plus 1/s over 10 s (30); its last fifth, 20% of
        // them plus 1/s over 2 s (22), and that is all that goes at once.
        assert_eq!(drain(&budget), 22);
        assert!(!budget.withdraw());
        // Each new request earns a fifth of a retry.
        for _ in 0..5 {
            budget.deposit();
        }
        assert_eq!(drain(&budget), 1);
        // Those requests and retries leave the last fifth, not the window: the rest of the
        // window's 31 goes at the floor's pace, 2 every 2 s, and no more.
        for _ in 0..4 {
            tokio::time::advance(secs(2)).await;
            assert_eq!(drain(&budget), 2);
        }
        tokio::time::advance(secs(1)).await;
        assert_eq!(drain(&budget), 0, "the window's 31 are spent");
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_as_the_window_slides() {
        let budget = Budget::new(secs(10), 0.5, 0)
            .unwrap()
            .with_clock(Arc::new(TokioClock));
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(drain(&budget), 5);
        tokio::time::advance(secs(5)).await;
        for _ in 0..10 {
            budget.deposit();
        }
        // The first retries still count against the 20 requests in the window.
        assert_eq!(drain(&budget), 5);
        // Once the first second's bucket leaves the window, its requests and retries go with it.
        tokio::time::advance(secs(5)).await;
        assert_eq!(
            drain(&budget),
            0,
            "the first 5 requests' retries left with them"
        );
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(drain(&budget), 5);
        // Ten quiet seconds later nothing is left: no requests, no retries.
        tokio::time::advance(secs(10)).await;
        assert!(!budget.withdraw());
        budget.deposit();
        budget.deposit();
        assert_eq!(drain(&budget), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_calls_retry_goes_when_the_window_allows_it() {
        // No floor: the retry is the request's share alone. The call took longer than the
        // window's last fifth, which its request has left.
        let budget = Budget::new(secs(10), 0.5, 0)
            .unwrap()
            .with_clock(Arc::new(TokioClock));
        budget.deposit();
        tokio::time::advance(secs(3)).await;
        assert_eq!(drain(&budget), 1);
    }

    #[test]
    fn the_floor_allows_retries_without_traffic() {
        // 3 a second: over 10 s, 30; over its last fifth, 2 s, 6.
        let clock = ManualClock::new();
        let budget = Budget::new(secs(10), 0.0, 3)
            .unwrap()
            .with_clock(clock.clone());
        assert_eq!(drain(&budget), 6);
        clock.advance(secs(2));
        assert_eq!(drain(&budget), 6);
    }

    #[test]
    fn clones_share_one_account() {
        let clock = ManualClock::new();
        let a = Budget::new(secs(10), 1.0, 0).unwrap().with_clock(clock);
        let b = a.clone();
        a.deposit();
        a.deposit();
        assert!(b.withdraw());
        assert!(a.withdraw());
        assert!(!b.withdraw());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        Retry,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Request),
            3 => Just(Op::Retry),
            1 => (1u64..3_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against a model that keeps every event with the bucket it fell in: the budget lets a
        /// retry through exactly when the retries already in the window number fewer than
        /// `ratio * requests + min_per_sec * window`, and those in its last two buckets are
        /// none or fewer than `ratio * requests + min_per_sec * (their span)` of those two
        /// buckets, and refuses it otherwise.
        #[test]
        fn never_allows_more_than_the_model(
            ops in prop::collection::vec(op(), 1..400),
            window_s in 1u64..20,
            ratio in 0.0f64..2.0,
            min_per_sec in 0u32..5,
        ) {
            let clock = ManualClock::new();
            let budget = Budget::new(secs(window_s), ratio, min_per_sec)
                .unwrap()
                .with_clock(clock.clone());
            let bucket_ms = window_s * 1000 / u64::from(BUCKETS);
            let floor = f64::from(min_per_sec) * window_s as f64;
            let recent_floor = floor * RECENT as f64 / f64::from(BUCKETS);
            let mut now_ms = 0u64;
            // (bucket, is_retry) of every request and every allowed retry.
            let mut events: Vec<(u64, bool)> = Vec::new();
            for op in ops {
                let bucket = now_ms / bucket_ms;
                let within = |buckets: u64, retry: bool| {
                    let oldest = bucket.saturating_sub(buckets - 1);
                    events.iter().filter(|&&(b, r)| b >= oldest && r == retry).count() as f64
                };
                match op {
                    Op::Wait(ms) => {
                        clock.advance(Duration::from_millis(ms));
                        now_ms += ms;
                    }
                    Op::Request => {
                        budget.deposit();
                        events.push((bucket, false));
                    }
                    Op::Retry => {
                        let allows = |buckets: u64, floor: f64| {
                            within(buckets, true) < ratio * within(buckets, false) + floor
                        };
                        let model = allows(u64::from(BUCKETS), floor)
                            && (within(RECENT, true) == 0.0 || allows(RECENT, recent_floor));
                        prop_assert_eq!(budget.withdraw(), model);
                        if model {
                            events.push((bucket, true));
                        }
                    }
                }
            }
        }
    }
}
