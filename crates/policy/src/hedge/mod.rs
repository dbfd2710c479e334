//! Hedging: when a call is slow to answer, send the same call again and keep the first answer.
//!
//! A few calls in a hundred are slow for reasons that have nothing to do with the request: a
//! garbage collection, a cold cache, a busy replica. Waiting for them sets the tail latency of the
//! whole service. A [`Hedge`] starts a second attempt (up to `max_extra` more) when the first has
//! not answered within a delay, races them, returns the first success and cancels the others at
//! once. The delay is either fixed ([`HedgeDelay::Fixed`]) or a percentile of the latencies the
//! hedge itself observed ([`HedgeDelay::Percentile`]), so that only the slowest few percent of
//! calls are hedged and the extra load stays a few percent.
//!
//! Hedge only calls that are safe to repeat (reads, idempotent writes). A hedge answers slowness,
//! not failure: when every attempt sent has failed, the last failure is returned and no new
//! attempt starts; pair the hedge with a retry for that.
//!
//! # Choices
//!
//! - **Winner**: by default ([`Winner::FirstSuccess`]) the first answer classified as a success
//!   wins, and a failure waits for the other attempts still in flight (the last failure is
//!   returned when all have failed). [`Winner::FirstAnswer`] takes whatever answers first.
//! - **Percentile delay before enough samples**: until the window holds `min_samples` successful
//!   latencies (default 20) a percentile is noise, so by default the hedge does not hedge at all;
//!   [`HedgeBuilder::warmup_delay`] sets a fixed delay to use meanwhile instead.
//! - **What is measured**: each successful answer, from the start of the call's first attempt;
//!   a winning hedge's as the delay after which it went out, a lower bound of the first
//!   attempt's latency, so that the delay stays the percentile of the first attempt's latency
//!   and about `100 - p` percent of calls are hedged (timed from the hedge's own start, fast
//!   winning hedges would pull the delay down and hedge more calls; timed from the first
//!   attempt's start, while more than `100 - p` percent of calls are slow, the delay would rise
//!   by a hedge's latency every window, until it hedged nothing). Failures are not recorded
//!   (fast errors would pull the delay down when the callee is in trouble), nor are the
//!   cancelled losers.
//! - **Budget**: a hedge adds load, and a callee that turns slow for every call gets `max_extra`
//!   more calls for each, just when it can least take them (a percentile delay catches up only
//!   a window later). [`HedgeBuilder::budget`] pays each hedge from a [`Budget`] that every call
//!   deposits into, capping hedges to a share of the calls, as Finagle's backup requests do. A
//!   hedge is paid for when it is about to go out (through a tower service, once its clone is
//!   ready). By default there is none; a [`Pipeline`](crate::pipeline::Pipeline) with a retry
//!   pays its hedges from the retry's budget.
//!
//! # Directly, around any async call
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::hedge::{Hedge, HedgeDelay};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Hedge the slowest 5% of calls, once the hedge has seen enough of them.
//! let hedge = Hedge::new(HedgeDelay::Percentile(95.0)).unwrap();
//! let answer = hedge
//!     .call(|| async { Ok::<_, std::io::Error>("pong") }) // called again for each hedge
//!     .await;
//! assert_eq!(answer.unwrap(), "pong");
//! println!("{} hedges sent, {} won", hedge.hedges_sent(), hedge.hedges_won());
//! # }
//! ```
//!
//! [`Hedge::race`] is the same race for a caller that starts the first attempt itself and may
//! decline a hedge when its turn comes (no budget left for it, nowhere else to send it).
//!
//! # As a tower layer
//!
//! The service must be `Clone` (a hedge goes through a clone, once it is ready) and the request
//! `Clone`, or copied by a function given to [`HedgeLayer::with_clone_request`] that may decline
//! (a request that cannot be copied is simply not hedged).
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::error::BoxError;
//! use rampart_policy::hedge::{Hedge, HedgeDelay, HedgeLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let hedge = Hedge::new(HedgeDelay::Fixed(Duration::from_millis(50)))?;
//! let service = ServiceBuilder::new()
//!     .layer(HedgeLayer::new(hedge))
//!     .service_fn(|key: String| async move { Ok::<_, std::io::Error>(key.len()) });
//! assert_eq!(service.oneshot("four".to_string()).await?, 4);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use crate::classify::{Classify, ErrorsAreFailures};
use crate::clock::{SharedClock, tokio_clock};
use crate::error::{BoxError, Error};
use crate::latency::LatencyRecorder;
use crate::retry::Budget;

pub mod error;
pub mod future;
mod layer;

pub use self::error::InvalidConfig;
pub use self::layer::HedgeLayer;
pub use crate::request::{CloneRequest, Cloned};

use self::future::{
    DecliningLauncher, FnLauncher, Race, ReadyLauncher, ResponseFuture, ServiceLauncher,
};

/// When to send a hedge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// This long after the previous attempt started.
    Fixed(Duration),
    /// At this percentile (in `[0, 100]`) of the successful latencies the hedge observed in its
    /// window: `Percentile(95.0)` hedges the slowest 5% of calls.
    Percentile(f64),
}

/// Which answer ends the race.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Winner {
    /// The first answer classified as a success; the last failure if every attempt failed.
    #[default]
    FirstSuccess,
    /// The first answer, success or failure. An attempt a policy inside the call refused
    /// without calling the callee (a breaker open, a bulkhead or limit full, as a [`Nested`]
    /// classifier tells them) is no answer: it does not end the race.
    ///
    /// [`Nested`]: crate::classify::Nested
    FirstAnswer,
}

/// A hedging policy; cheap to clone, clones share the observed latencies and the counters.
#[derive(Clone)]
pub struct Hedge {
    shared: Arc<Shared>,
}

/// Builds a validated [`Hedge`].
#[derive(Clone, Debug)]
pub struct HedgeBuilder {
    delay: HedgeDelay,
    max_extra: usize,
    winner: Winner,
    min_samples: u64,
    warmup_delay: Option<Duration>,
    window: Duration,
    clock: Option<SharedClock>,
    budget: Option<Budget>,
}

struct Shared {
    delay: HedgeDelay,
    max_extra: usize,
    winner: Winner,
    min_samples: u64,
    warmup_delay: Option<Duration>,
    latencies: LatencyRecorder,
    sent: AtomicU64,
    won: AtomicU64,
    budget: Option<Budget>,
}

/// A tower service hedging requests to its inner service.
///
/// Hedges go through a clone of the inner service, which is polled ready before each one. Errors
/// are the inner service's, boxed; the hedge itself never refuses a request.
#[derive(Clone, Debug)]
pub struct HedgeService<S, P = Cloned, C = ErrorsAreFailures> {
    inner: S,
    hedge: Hedge,
    clone_request: P,
    classify: C,
}

// === impl Hedge ===

impl Hedge {
    /// A tower layer that puts this hedging policy in front of a service; its services share it.
    pub fn layer(&self) -> HedgeLayer {
        HedgeLayer::new(self.clone())
    }

    /// A hedge with `delay` and the defaults: one extra attempt, the first success wins, a
    /// percentile over the last 30 s once it holds 20 samples.
    pub fn new(delay: HedgeDelay) -> Result<Hedge, InvalidConfig> {
        Hedge::builder(delay).build()
    }

    /// A builder for a hedge with `delay`.
    pub fn builder(delay: HedgeDelay) -> HedgeBuilder {
        HedgeBuilder {
            delay,
            max_extra: 1,
            winner: Winner::FirstSuccess,
            min_samples: 20,
            warmup_delay: None,
            window: Duration::from_secs(30),
            clock: None,
            budget: None,
        }
    }

    /// The delay a call starting now would hedge after; `None` when it would not hedge (a
    /// percentile delay without enough samples and no warm-up delay).
    pub fn current_delay(&self) -> Option<Duration> {
        self.shared.delay_for_call()
    }

    /// The successful latencies this hedge observed, each from the start of the call's first
    /// attempt (what its caller waited).
    pub fn latencies(&self) -> &LatencyRecorder {
        &self.shared.latencies
    }

    /// How many extra attempts were sent.
    pub fn hedges_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// How many calls were answered by an extra attempt rather than the first.
    pub fn hedges_won(&self) -> u64 {
        self.shared.won.load(Ordering::Relaxed)
    }

    /// Calls `f`, and calls it again for each hedge while no answer has won; the first success
    /// (by [`ErrorsAreFailures`]) wins and the other attempts are dropped at once.
    ///
    /// The hedge never refuses: an error is always [`Error::Inner`], the call's own.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(ErrorsAreFailures, f).await
    }

    /// Like [`call`](Self::call), judging answers with `classify`: an `Ok` answer classified as
    /// a failure (say, an HTTP 503) does not win over an attempt still in flight.
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classify: C,
        mut f: F,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, E>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let delay = self.shared.delay_for_call();
        let first = f();
        let race = Race::new(
            first,
            Some(FnLauncher(f)),
            delay,
            classify,
            self.shared.clone(),
        );
        race.await.map_err(Error::Inner)
    }

    /// Races `first`, already started, against hedges from `hedge`, which may decline one
    /// (`None`: no budget left for it, nowhere to send it); once it declines, no further hedge is
    /// asked for and the attempts in flight finish the race. Classified and judged as
    /// [`Hedge::call_classified`]; the race's own answer, success or last failure, is returned
    /// as it is.
    pub async fn race<C, G, Fut, T, E>(&self, classify: C, first: Fut, hedge: G) -> Result<T, E>
    where
        C: Classify<T, E>,
        G: FnMut() -> Option<Fut>,
        Fut: Future<Output = Result<T, E>>,
    {
        let delay = self.shared.delay_for_call();
        Race::new(
            first,
            Some(DecliningLauncher(hedge)),
            delay,
            classify,
            self.shared.clone(),
        )
        .await
    }

    /// Like [`race`](Self::race), each hedge started once a readiness future from `make_ready`
    /// completes: until then it is neither counted nor paid for, and a readiness that fails
    /// starts no hedge. What a pipeline over a tower service hedges with.
    pub(crate) async fn race_when_ready<C, M, R, G, Fut, Ready, E2, T, E>(
        &self,
        classify: C,
        first: Fut,
        make_ready: M,
        launch: G,
    ) -> Result<T, E>
    where
        C: Classify<T, E>,
        M: FnMut() -> R,
        R: Future<Output = Result<Ready, E2>>,
        G: FnMut(Ready) -> Option<Fut>,
        Fut: Future<Output = Result<T, E>>,
    {
        let delay = self.shared.delay_for_call();
        let launcher = ReadyLauncher {
            make_ready,
            pending: None,
            launch,
        };
        Race::new(first, Some(launcher), delay, classify, self.shared.clone()).await
    }
}

impl fmt::Debug for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("delay", &self.shared.delay)
            .field("max_extra", &self.shared.max_extra)
            .field("winner", &self.shared.winner)
            .field("budget", &self.shared.budget)
            .field("hedges_sent", &self.hedges_sent())
            .field("hedges_won", &self.hedges_won())
            .finish()
    }
}

// === impl HedgeBuilder ===

impl HedgeBuilder {
    /// The most extra attempts per call, at least 1; each starts one delay after the previous
    /// one. Default 1.
    pub fn max_extra(mut self, max_extra: usize) -> Self {
        self.max_extra = max_extra;
        self
    }

    /// Which answer ends the race. Default [`Winner::FirstSuccess`].
    pub fn winner(mut self, winner: Winner) -> Self {
        self.winner = winner;
        self
    }

    /// How many successful latencies the window must hold before a percentile delay is used.
    /// Default 20.
    pub fn min_samples(mut self, min_samples: u64) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// The delay to use while a percentile delay lacks samples. Default none: no hedging until
    /// the window holds `min_samples`.
    pub fn warmup_delay(mut self, delay: Duration) -> Self {
        self.warmup_delay = Some(delay);
        self
    }

    /// How far back the observed latencies go. Default 30 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The clock that ages the observed latencies. Default tokio's.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Pays every hedge from `budget`, which every call deposits into: hedges then add at most
    /// the budget's share of the load (Finagle's backup requests' `maxExtraLoad`), however slow
    /// the callee turns. Without one (the default) a callee that turns slow for every call gets
    /// `max_extra` more calls for each, just when it can least take them; a percentile delay
    /// only catches up a window later.
    ///
    /// A budget of its own: a [`Retry`](crate::retry::Retry) around the hedge sharing this one
    /// would count each call twice. In a [`Pipeline`](crate::pipeline::Pipeline) with a retry,
    /// hedges are paid from the retry's budget already.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Hedge, InvalidConfig> {
        if self.max_extra == 0 {
            return Err(InvalidConfig::ZeroMaxExtra);
        }
        if let HedgeDelay::Percentile(p) = self.delay
            && !(0.0..=100.0).contains(&p)
        {
            return Err(InvalidConfig::Percentile(p));
        }
        let clock = self.clock.unwrap_or_else(tokio_clock);
        let latencies =
            LatencyRecorder::new(self.window, clock).map_err(|_| InvalidConfig::ZeroWindow)?;
        Ok(Hedge {
            shared: Arc::new(Shared {
                delay: self.delay,
                max_extra: self.max_extra,
                winner: self.winner,
                min_samples: self.min_samples,
                warmup_delay: self.warmup_delay,
                latencies,
                sent: AtomicU64::new(0),
                won: AtomicU64::new(0),
                budget: self.budget,
            }),
        })
    }
}

// === impl Shared ===

impl Shared {
    fn delay_for_call(&self) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::Percentile(p) => self
                .latencies
                .percentile_if_at_least(p, self.min_samples)
                .or(self.warmup_delay),
        }
    }
}

// === impl HedgeService ===

impl<S> HedgeService<S> {
    /// Hedges requests to `inner` with `hedge`, copying requests with `Clone` and counting errors
    /// as failures.
    pub fn new(inner: S, hedge: Hedge) -> HedgeService<S> {
        HedgeService {
            inner,
            hedge,
            clone_request: Cloned,
            classify: ErrorsAreFailures,
        }
    }
}

impl<S, P, C> HedgeService<S, P, C> {
    /// Copies requests with `clone_request` instead; a request it declines is not hedged.
    pub fn with_clone_request<P2>(self, clone_request: P2) -> HedgeService<S, P2, C> {
        HedgeService {
            inner: self.inner,
            hedge: self.hedge,
            clone_request,
            classify: self.classify,
        }
    }

    /// Judges answers with `classify` instead.
    pub fn with_classify<C2>(self, classify: C2) -> HedgeService<S, P, C2> {
        HedgeService {
            inner: self.inner,
            hedge: self.hedge,
            clone_request: self.clone_request,
            classify,
        }
    }

    /// The hedge this service applies.
    pub fn hedge(&self) -> &Hedge {
        &self.hedge
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, P, C> Service<Req> for HedgeService<S, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: CloneRequest<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let delay = self.hedge.shared.delay_for_call();
        // Copy the request and the service only when this call may hedge.
        let launcher = delay
            .and_then(|_| self.clone_request.clone_request(&request))
            .map(|spare| {
                ServiceLauncher::new(self.inner.clone(), spare, self.clone_request.clone())
            });
        let first = self.inner.call(request);
        ResponseFuture::new(Race::new(
            first,
            launcher,
            delay,
            self.classify.clone(),
            self.hedge.shared.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::time::{advance, sleep};
    use tokio_test::{assert_pending, assert_ready, task};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;
    use crate::classify::Outcome;
    use crate::test_util::next_request;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fixed(delay: Duration) -> Hedge {
        Hedge::new(HedgeDelay::Fixed(delay)).unwrap()
    }

    /// Sets its flag when dropped: observes cancellation.
    struct DropGuard(Arc<AtomicUsize>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An attempt factory: attempt `n` (from 0) sleeps `latencies[n]` and answers `answers[n]`.
    fn attempts(
        latencies: &'static [u64],
        answers: &'static [Result<&'static str, &'static str>],
        started: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<&'static str, &'static str>>>>
    {
        move || {
            let n = started.fetch_add(1, Ordering::SeqCst);
            let guard = DropGuard(dropped.clone());
            Box::pin(async move {
                let _guard = guard;
                sleep(ms(latencies[n])).await;
                answers[n]
            })
        }
    }

    fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
    }

    #[test]
    fn builder_refuses_misconfiguration() {
        assert_eq!(
            Hedge::builder(HedgeDelay::Fixed(ms(1)))
                .max_extra(0)
                .build()
                .unwrap_err(),
            InvalidConfig::ZeroMaxExtra
        );
        for p in [-1.0, 100.5, f64::NAN] {
            assert!(matches!(
                Hedge::new(HedgeDelay::Percentile(p)),
                Err(InvalidConfig::Percentile(_))
            ));
        }
        assert_eq!(
            Hedge::builder(HedgeDelay::Percentile(90.0))
                .window(Duration::ZERO)
                .build()
                .unwrap_err(),
            InvalidConfig::ZeroWindow
        );
        assert!(Hedge::new(HedgeDelay::Fixed(Duration::ZERO)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_when_the_first_answers_before_the_delay() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(&[50], &[Ok("first")], started.clone(), dropped.clone());
        assert_eq!(hedge.call(f).await.unwrap(), "first");
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(hedge.hedges_sent(), 0);
        // Even much later, no stray hedge starts.
        advance(ms(1000)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_extra_at_the_delay() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(
            &[1000, 1000],
            &[Ok("first"), Ok("second")],
            started.clone(),
            dropped,
        );
        let mut call = task::spawn(hedge.call(f));
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 1);
        advance(ms(99)).await;
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 1, "not before the delay");
        advance(ms(1)).await;
        assert!(call.is_woken());
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 2, "one hedge at the delay");
        advance(ms(500)).await;
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 2, "max_extra is 1");
        advance(ms(400)).await;
        assert_eq!(assert_ready!(call.poll()).unwrap(), "first");
        assert_eq!(hedge.hedges_sent(), 1);
        assert_eq!(hedge.hedges_won(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_faster_answer_wins_and_the_loser_is_cancelled() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(
            &[1000, 10],
            &[Ok("first"), Ok("second")],
            started.clone(),
            dropped.clone(),
        );
        let start = tokio::time::Instant::now();
        let mut call = task::spawn(hedge.call(f));
        assert_pending!(call.poll());
        advance(ms(100)).await;
        assert_pending!(call.poll());
        advance(ms(10)).await;
        assert_eq!(assert_ready!(call.poll()).unwrap(), "second");
        assert_eq!(start.elapsed(), ms(110));
        // The slow first attempt is not left running once the call has answered. The call owns its
        // race and drops it on returning, so this cannot tell a loser cancelled when the winner
        // answers from one dropped with the race; `layer_cancels_the_losing_call` checks the
        // moment, on a response future that outlives its answer.
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert_eq!(hedge.hedges_sent(), 1);
        assert_eq!(hedge.hedges_won(), 1);
        drop(call);
    }

    #[tokio::test(start_paused = true)]
    async fn more_extras_follow_one_delay_apart() {
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(100)))
            .max_extra(2)
            .build()
            .unwrap();
        let (started, dropped) = counters();
        let f = attempts(
            &[1000, 1000, 1000],
            &[Ok("a"), Ok("b"), Ok("c")],
            started.clone(),
            dropped,
        );
        let start = tokio::time::Instant::now();
        let mut call = task::spawn(hedge.call(f));
        assert_pending!(call.poll());
        for (at, expected) in [(100, 2), (199, 2), (200, 3), (900, 3)] {
            advance(ms(at) - start.elapsed()).await;
            let _ = call.poll();
            assert_eq!(started.load(Ordering::SeqCst), expected, "at {at} ms");
        }
        assert_eq!(hedge.hedges_sent(), 2);
    }

    /// A budget on the paused clock, so that the window's buckets follow the test's time.
    fn budget(ratio: f64) -> Budget {
        Budget::new(Duration::from_secs(10), ratio, 0)
            .unwrap()
            .with_clock(tokio_clock())
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_bounds_hedges_to_its_share_of_the_calls() {
        // Every call is slow: without a budget, each would be hedged.
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(10)))
            .budget(budget(0.5))
            .build()
            .unwrap();
        let (started, dropped) = counters();
        for _ in 0..10 {
            started.store(0, Ordering::SeqCst);
            let f = attempts(
                &[100, 100],
                &[Ok("first"), Ok("hedge")],
                started.clone(),
                dropped.clone(),
            );
            assert_eq!(hedge.call(f).await.unwrap(), "first");
        }
        assert_eq!(hedge.hedges_sent(), 5, "half as many hedges as calls");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_leaves_the_slow_call_alone() {
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(10)))
            .max_extra(3)
            .budget(budget(0.0))
            .build()
            .unwrap();
        let (started, dropped) = counters();
        let f = attempts(&[100], &[Ok("first")], started.clone(), dropped);
        let start = tokio::time::Instant::now();
        assert_eq!(hedge.call(f).await.unwrap(), "first");
        assert_eq!(start.elapsed(), ms(100));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(hedge.hedges_sent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn first_success_waits_for_a_hedge_when_the_first_fails() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(
            &[150, 100],
            &[Err("boom"), Ok("second")],
            started.clone(),
            dropped,
        );
        let start = tokio::time::Instant::now();
        assert_eq!(hedge.call(f).await.unwrap(), "second");
        assert_eq!(start.elapsed(), ms(200));
        assert_eq!(hedge.hedges_won(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn first_answer_takes_a_failure_too() {
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(100)))
            .winner(Winner::FirstAnswer)
            .build()
            .unwrap();
        let (started, dropped) = counters();
        let f = attempts(
            &[150, 100],
            &[Err("boom"), Ok("second")],
            started.clone(),
            dropped.clone(),
        );
        let start = tokio::time::Instant::now();
        assert!(matches!(hedge.call(f).await, Err(Error::Inner("boom"))));
        // The failure ended the call at once, without waiting for the hedge (due to answer at
        // 200 ms), and the hedge is not left running after it (when exactly it was dropped, only
        // the layer test `layer_cancels_the_losing_call` can see).
        assert_eq!(start.elapsed(), ms(150));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "the hedge is not left running"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_answer_takes_no_refusal_of_a_policy_inside_for_an_answer() {
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(100)))
            .winner(Winner::FirstAnswer)
            .build()
            .unwrap();
        let bulkhead = crate::bulkhead::Bulkhead::builder(1).build().unwrap();
        // The first attempt holds the bulkhead's one place until 150 ms; the hedge, at 100 ms,
        // is refused at once without reaching the callee, and must not end the race.
        let start = tokio::time::Instant::now();
        let result = hedge
            .call_classified(crate::classify::Nested::new(), || {
                bulkhead.call(|| async {
                    sleep(ms(150)).await;
                    Ok::<_, &str>("first")
                })
            })
            .await;
        assert_eq!(result.unwrap(), "first");
        assert_eq!(start.elapsed(), ms(150));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_attempt_fails_the_last_failure_is_returned() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(
            &[300, 100],
            &[Err("first"), Err("second")],
            started.clone(),
            dropped,
        );
        assert!(matches!(hedge.call(f).await, Err(Error::Inner("first"))));
        assert_eq!(hedge.hedges_won(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_the_delay_is_returned_without_a_hedge() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let f = attempts(&[10], &[Err("down")], started.clone(), dropped);
        let start = tokio::time::Instant::now();
        assert!(matches!(hedge.call(f).await, Err(Error::Inner("down"))));
        assert_eq!(start.elapsed(), ms(10));
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_classified_failure_does_not_win() {
        let hedge = fixed(ms(100));
        let calls = AtomicUsize::new(0);
        let classify = |r: &Result<u16, ()>| match r {
            Ok(503) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        };
        let answer = hedge
            .call_classified(classify, || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        sleep(ms(150)).await;
                        Ok::<u16, ()>(503)
                    } else {
                        sleep(ms(100)).await;
                        Ok(200)
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_delay_follows_the_recorded_latencies() {
        let hedge = Hedge::builder(HedgeDelay::Percentile(50.0))
            .min_samples(5)
            .build()
            .unwrap();
        let close = |delay: Option<Duration>, expected: Duration| {
            let delay = delay.expect("warm");
            delay.abs_diff(expected) <= expected.mul_f64(LatencyRecorder::PRECISION)
        };

        // Not warm yet: no hedging at all, however slow the call.
        for _ in 0..5 {
            assert_eq!(hedge.current_delay(), None);
            let (started, dropped) = counters();
            let f = attempts(&[20], &[Ok("ok")], started.clone(), dropped);
            hedge.call(f).await.unwrap();
            assert_eq!(started.load(Ordering::SeqCst), 1);
        }
        assert!(close(hedge.current_delay(), ms(20)));

        // Warm: a slow call is hedged at the median.
        let (started, dropped) = counters();
        let f = attempts(&[500, 500], &[Ok("a"), Ok("b")], started.clone(), dropped);
        let mut call = task::spawn(hedge.call(f));
        assert_pending!(call.poll());
        advance(ms(19)).await;
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 1);
        advance(ms(2)).await;
        assert_pending!(call.poll());
        assert_eq!(started.load(Ordering::SeqCst), 2);
        advance(ms(500)).await;
        assert_eq!(assert_ready!(call.poll()).unwrap(), "a");

        // The callee slows down: the median, and the delay, follow.
        for _ in 0..10 {
            let (started, dropped) = counters();
            let f = attempts(&[200, 200], &[Ok("a"), Ok("b")], started, dropped);
            hedge.call(f).await.unwrap();
        }
        assert!(
            close(hedge.current_delay(), ms(200)),
            "{:?}",
            hedge.current_delay()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn race_stops_hedging_once_a_hedge_is_declined() {
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(10)))
            .max_extra(3)
            .build()
            .unwrap();
        let (started, dropped) = counters();
        let mut attempt = attempts(
            &[100, 100, 100],
            &[Ok("first"), Ok("hedge"), Ok("unused")],
            started.clone(),
            dropped,
        );
        let first = attempt();
        // The first hedge goes out, the second is declined: no third is asked for.
        let asked = std::cell::Cell::new(0);
        let hedges = || {
            asked.set(asked.get() + 1);
            (asked.get() == 1).then(&mut attempt)
        };
        let mut race = task::spawn(hedge.race(ErrorsAreFailures, first, hedges));
        assert_pending!(race.poll());
        for _ in 0..3 {
            advance(ms(10)).await;
            assert_pending!(race.poll());
        }
        assert_eq!(started.load(Ordering::SeqCst), 2);
        advance(ms(100)).await;
        assert_eq!(assert_ready!(race.poll()), Ok("first"));
        assert_eq!(asked.get(), 2);
        assert_eq!(hedge.hedges_sent(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_do_not_feed_the_percentile() {
        let hedge = Hedge::builder(HedgeDelay::Percentile(50.0))
            .min_samples(5)
            .build()
            .unwrap();
        let fail_fast = || {
            let (started, dropped) = counters();
            attempts(&[1], &[Err("down")], started, dropped)
        };

        // Cold: failures would warm the window up, and with fast latencies.
        for _ in 0..10 {
            assert!(hedge.call(fail_fast()).await.is_err());
        }
        assert_eq!(hedge.latencies().count(), 0);
        assert_eq!(hedge.current_delay(), None);

        // Warm at 100 ms: fast failures, and a hedged call whose attempts both fail, leave the
        // window and the delay as they were.
        for _ in 0..5 {
            let (started, dropped) = counters();
            let f = attempts(&[100], &[Ok("ok")], started, dropped);
            hedge.call(f).await.unwrap();
        }
        let delay = hedge.current_delay();
        assert!(delay.is_some());
        for _ in 0..20 {
            assert!(hedge.call(fail_fast()).await.is_err());
        }
        let (started, dropped) = counters();
        let f = attempts(&[300, 5], &[Err("a"), Err("b")], started.clone(), dropped);
        assert!(hedge.call(f).await.is_err());
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "the hedge was sent, and failed"
        );
        assert_eq!(hedge.latencies().count(), 5);
        assert_eq!(hedge.current_delay(), delay);
    }

    #[tokio::test(start_paused = true)]
    async fn a_winning_hedge_counts_as_the_delay_the_first_attempt_outlasted() {
        // Every first attempt is slow and every hedge fast. Were the hedges timed from their
        // own start, the percentile would learn 1 ms and hedge nearly every call that ever
        // took longer; what it learns is that the first attempts took at least 20 ms.
        let hedge = Hedge::builder(HedgeDelay::Percentile(50.0))
            .min_samples(5)
            .warmup_delay(ms(20))
            .build()
            .unwrap();
        for _ in 0..5 {
            let (started, dropped) = counters();
            let f = attempts(&[100, 1], &[Ok("first"), Ok("hedge")], started, dropped);
            assert_eq!(hedge.call(f).await.unwrap(), "hedge");
        }
        assert_eq!(hedge.hedges_won(), 5);
        let delay = hedge.current_delay().expect("warm");
        assert!(
            delay.abs_diff(ms(20)) <= ms(20).mul_f64(LatencyRecorder::PRECISION),
            "{delay:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_hedging_more_calls_than_its_percentile_leaves_holds_still() {
        // One call in five is slow (1 s) and its hedge answers in 5 ms, against a p95: more
        // calls are hedged than the percentile leaves, window after window. The delay must
        // not climb by a hedge's latency each window until it hedges nothing.
        let hedge = Hedge::builder(HedgeDelay::Percentile(95.0))
            .min_samples(20)
            .warmup_delay(ms(20))
            .window(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut delays = Vec::new();
        for round in 0..600 {
            let (started, dropped) = counters();
            let latencies: &[u64] = if round % 5 == 0 { &[1000, 5] } else { &[10, 5] };
            let f = attempts(latencies, &[Ok("first"), Ok("hedge")], started, dropped);
            hedge.call(f).await.unwrap();
            tokio::time::advance(ms(100)).await;
            if round % 100 == 99 {
                delays.push(hedge.current_delay().expect("warm"));
            }
        }
        let (first, last) = (delays[0], delays[delays.len() - 1]);
        assert!(
            last <= first + first.mul_f64(LatencyRecorder::PRECISION),
            "the delay climbed: {delays:?}"
        );
        assert!(hedge.hedges_won() > 100, "{}", hedge.hedges_won());
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_delay_waits_without_overflowing_the_clock() {
        // `Instant + Duration::MAX` overflows: the hedge timer, armed when the first attempt has
        // to wait, must saturate rather than panic.
        let endless_warmup = Hedge::builder(HedgeDelay::Percentile(90.0))
            .warmup_delay(Duration::MAX)
            .build()
            .unwrap();
        for hedge in [fixed(Duration::MAX), endless_warmup] {
            assert_eq!(hedge.current_delay(), Some(Duration::MAX));
            let (started, dropped) = counters();
            let f = attempts(&[50], &[Ok("first")], started.clone(), dropped);
            let start = tokio::time::Instant::now();
            assert_eq!(hedge.call(f).await.unwrap(), "first");
            assert_eq!(start.elapsed(), ms(50));
            assert_eq!(started.load(Ordering::SeqCst), 1);
            assert_eq!(hedge.hedges_sent(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn warmup_delay_stands_in_until_enough_samples() {
        let hedge = Hedge::builder(HedgeDelay::Percentile(90.0))
            .min_samples(100)
            .warmup_delay(ms(30))
            .build()
            .unwrap();
        assert_eq!(hedge.current_delay(), Some(ms(30)));
        let (started, dropped) = counters();
        let f = attempts(&[100, 5], &[Ok("a"), Ok("b")], started.clone(), dropped);
        let start = tokio::time::Instant::now();
        assert_eq!(hedge.call(f).await.unwrap(), "b");
        assert_eq!(start.elapsed(), ms(35));
    }

    #[tokio::test(start_paused = true)]
    async fn old_latencies_leave_the_window() {
        let hedge = Hedge::builder(HedgeDelay::Percentile(50.0))
            .min_samples(1)
            .window(Duration::from_secs(10))
            .build()
            .unwrap();
        hedge.call(|| async { Ok::<_, ()>(()) }).await.unwrap();
        assert!(hedge.current_delay().is_some());
        advance(Duration::from_secs(11)).await;
        assert_eq!(hedge.current_delay(), None);
    }

    // --- tower ---

    #[tokio::test(start_paused = true)]
    async fn layer_hedges_through_a_ready_clone() {
        let hedge = fixed(ms(100));
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service = HedgeLayer::new(hedge.clone()).layer(service);

        handle.allow(1);
        let mut call = task::spawn(service.oneshot("req"));
        assert_pending!(call.poll());
        let (request, _first) = next_request(&mut handle).await;
        assert_eq!(request, "req");

        // At the delay the clone is not ready (no capacity): the hedge waits for it.
        advance(ms(100)).await;
        assert_pending!(call.poll());
        assert!(matches!(handle.poll_request(), Poll::Pending));

        handle.allow(1);
        assert_pending!(call.poll());
        let (request, second) = next_request(&mut handle).await;
        assert_eq!(request, "req", "the hedge is a copy of the request");
        second.send_response("from the hedge");
        assert_eq!(assert_ready!(call.poll()).unwrap(), "from the hedge");
        assert_eq!(hedge.hedges_won(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_without_a_copy_does_not_hedge() {
        let hedge = fixed(ms(100));
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service = HedgeLayer::new(hedge.clone())
            .with_clone_request(|_: &&str| None)
            .layer(service);
        handle.allow(5);
        let mut call = task::spawn(service.oneshot("req"));
        assert_pending!(call.poll());
        let (_, first) = next_request(&mut handle).await;
        advance(ms(500)).await;
        assert_pending!(call.poll());
        // No second request: the channel is empty, or closed since no clone of the mock is left.
        assert!(!matches!(handle.poll_request(), Poll::Ready(Some(_))));
        first.send_response("only");
        assert_eq!(assert_ready!(call.poll()).unwrap(), "only");
        assert_eq!(hedge.hedges_sent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_pays_for_a_hedge_once_its_clone_is_ready() {
        // Hedges up to 0.3 times the calls: the first call's hedge, had it been paid for while
        // its clone was not ready, would leave none for the second, and the second's leaves
        // none for the third.
        let hedge = Hedge::builder(HedgeDelay::Fixed(ms(100)))
            .budget(budget(0.3))
            .build()
            .unwrap();
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service = HedgeLayer::new(hedge.clone()).layer(service);

        handle.allow(1);
        let mut call = task::spawn(service.clone().oneshot("one"));
        assert_pending!(call.poll());
        let (_, first) = next_request(&mut handle).await;
        advance(ms(100)).await;
        assert_pending!(call.poll());
        first.send_response("one");
        assert_eq!(assert_ready!(call.poll()).unwrap(), "one");
        assert_eq!(hedge.hedges_sent(), 0, "the clone was never ready");

        handle.allow(2);
        let mut call = task::spawn(service.clone().oneshot("two"));
        assert_pending!(call.poll());
        let (_, _first) = next_request(&mut handle).await;
        advance(ms(100)).await;
        assert_pending!(call.poll());
        let (request, second) = next_request(&mut handle).await;
        assert_eq!(request, "two");
        second.send_response("hedged");
        assert_eq!(assert_ready!(call.poll()).unwrap(), "hedged");
        assert_eq!(hedge.hedges_sent(), 1);

        handle.allow(2);
        let mut call = task::spawn(service.oneshot("three"));
        assert_pending!(call.poll());
        let (_, first) = next_request(&mut handle).await;
        advance(ms(100)).await;
        assert_pending!(call.poll());
        // No second request: the channel is empty, or closed since no clone of the mock is left.
        assert!(
            !matches!(handle.poll_request(), Poll::Ready(Some(_))),
            "the budget is spent: the clone is ready, but no hedge goes"
        );
        first.send_response("three");
        assert_eq!(assert_ready!(call.poll()).unwrap(), "three");
        assert_eq!(hedge.hedges_sent(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_cancels_the_losing_call() {
        let hedge = fixed(ms(100));
        let (started, dropped) = counters();
        let service = tower::service_fn({
            let (started, dropped) = (started.clone(), dropped.clone());
            move |latency: u64| {
                let n = started.fetch_add(1, Ordering::SeqCst);
                let guard = DropGuard(dropped.clone());
                async move {
                    let _guard = guard;
                    // The first call is slow, the hedge fast.
                    sleep(ms(if n == 0 { latency } else { 10 })).await;
                    Ok::<_, std::io::Error>(n)
                }
            }
        });
        let mut service = HedgeLayer::new(hedge.clone()).layer(service);
        let start = tokio::time::Instant::now();
        service.ready().await.unwrap();
        let mut call = task::spawn(service.call(1000));
        assert_pending!(call.poll());
        advance(ms(100)).await;
        assert_pending!(call.poll());
        advance(ms(10)).await;
        assert_eq!(assert_ready!(call.poll()).unwrap(), 1);
        assert_eq!(start.elapsed(), ms(110));
        // The slow first call is cancelled when the answer is out, not when the future is dropped.
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        drop(call);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_passes_errors_boxed() {
        let hedge = fixed(ms(100));
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service = HedgeLayer::new(hedge).layer(service);
        handle.allow(1);
        let call = tokio::spawn(service.oneshot("req"));
        let (_, first) = next_request(&mut handle).await;
        first.send_error(std::io::Error::other("refused"));
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "refused");
    }
}
