//! Adaptive concurrency limit: finds how many concurrent calls a callee sustains, from its latency
//! and its failures.
//!
//! A fixed concurrency limit is wrong most of the time: too high when the callee slows down (calls
//! queue inside it, latency climbs, timeouts fire), too low when it is healthy or has scaled out.
//! An [`AdaptiveLimit`] admits a call only while fewer than its current limit are in flight,
//! refusing the rest at once with [`LimitExceeded`], and moves the limit after every call from
//! what the call showed:
//!
//! - [`Gradient2`] (the default) compares the short-term latency with its long-term average: as
//!   long as the callee answers as fast as usual the limit grows, and when queueing makes it
//!   slower the limit shrinks in proportion, before anything times out.
//! - [`Aimd`] grows the limit by one per success and cuts it by a ratio on each failure or call
//!   slower than a timeout, like TCP's congestion window.
//!
//! Admission is one atomic increment, without a lock. Learning takes a short mutex once the call
//! has finished, never while it runs.
//!
//! # Directly, around any async call
//!
//! ```
//! use rampart_policy::adaptive::AdaptiveLimit;
//! use rampart_policy::{Error, Rejected};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limit = AdaptiveLimit::gradient2();
//! let answer = limit.call(|| async { Ok::<_, std::io::Error>("pong") }).await;
//! match answer {
//!     Ok(body) => assert_eq!(body, "pong"),
//!     Err(Error::Rejected(Rejected::LimitExceeded(e))) => eprintln!("shed: {e}"),
//!     Err(e) => eprintln!("failed: {e}"),
//! }
//!
//! // Or hold a permit yourself and say how the call went; dropping it unrecorded frees the place
//! // without teaching the limit anything.
//! let permit = limit.try_acquire().expect("below the limit");
//! assert_eq!(limit.in_flight(), 1);
//! permit.record(rampart_policy::Outcome::Success, std::time::Duration::from_millis(12));
//! assert_eq!(limit.in_flight(), 0);
//! # }
//! ```
//!
//! # As a tower layer
//!
//! ```
//! use rampart_policy::adaptive::{AdaptiveLimit, AdaptiveLimitLayer, Aimd};
//! use rampart_policy::adaptive::error::LimitExceeded;
//! use rampart_policy::error::{is_caused_by, BoxError};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(50).build()?);
//! let service = ServiceBuilder::new()
//!     .layer(AdaptiveLimitLayer::new(limit.clone()))
//!     .service_fn(|name: &'static str| async move {
//!         Ok::<_, std::io::Error>(format!("hello {name}"))
//!     });
//!
//! match service.oneshot("world").await {
//!     Ok(greeting) => assert_eq!(greeting, "hello world"),
//!     Err(err) if is_caused_by::<LimitExceeded>(&*err) => { /* shed load: answer 503 */ }
//!     Err(err) => return Err(err),
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::classify::{Classify, ErrorsAreFailures, Outcome, Verdict, judge};
use crate::error::{BoxError, Error, Rejected};

mod algorithm;
pub mod error;
pub mod future;
mod layer;

pub use self::algorithm::{Aimd, AimdBuilder, Algorithm, Gradient2, Gradient2Builder, QueueSize};
pub use self::error::LimitExceeded;
pub use self::layer::AdaptiveLimitLayer;

use self::algorithm::{Sample, State};
use self::future::ResponseFuture;

/// An adaptive concurrency limit; cheap to clone, clones share the limit.
#[derive(Clone)]
pub struct AdaptiveLimit {
    shared: Arc<Shared>,
}

struct Shared {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

/// A place under the limit, held for the duration of one call.
///
/// [`record`](Permit::record) how the call went to teach the limit; dropping the permit without
/// recording frees the place and teaches nothing (a cancelled call says nothing about the callee).
#[must_use = "a permit frees its place when dropped"]
pub struct Permit {
    shared: Arc<Shared>,
    /// Calls in flight when this one was admitted, itself included.
    in_flight: usize,
}

/// A tower service admitting requests under an [`AdaptiveLimit`].
///
/// Refusals come from the response future as a boxed [`LimitExceeded`]; `poll_ready` only asks the
/// inner service.
#[derive(Clone, Debug)]
pub struct AdaptiveLimitService<S, C = ErrorsAreFailures> {
    inner: S,
    limit: AdaptiveLimit,
    classify: C,
}

// === impl AdaptiveLimit ===

impl AdaptiveLimit {
    /// A tower layer that puts this limit in front of a service; its services share it.
    pub fn layer(&self) -> AdaptiveLimitLayer {
        AdaptiveLimitLayer::new(self.clone())
    }

    /// A limit learning with `algorithm` (a [`Gradient2`], an [`Aimd`] or an [`Algorithm`]).
    pub fn new(algorithm: impl Into<Algorithm>) -> AdaptiveLimit {
        let algorithm = algorithm.into();
        AdaptiveLimit {
            shared: Arc::new(Shared {
                limit: AtomicUsize::new(algorithm.initial_limit()),
                in_flight: AtomicUsize::new(0),
                state: Mutex::new(algorithm.into_state()),
            }),
        }
    }

    /// A limit learning with [`Gradient2`]'s defaults.
    pub fn gradient2() -> AdaptiveLimit {
        AdaptiveLimit::new(Gradient2::default())
    }

    /// A limit learning with [`Aimd`]'s defaults.
    pub fn aimd() -> AdaptiveLimit {
        AdaptiveLimit::new(Aimd::default())
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// The calls holding a permit now. May briefly count a call being refused.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a place if fewer calls than the limit are in flight; refuses at once otherwise.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, LimitExceeded> {
        let limit = self.limit();
        // Counters guarding no other data: relaxed is enough. Increment first and undo on
        // refusal, so the admitted path is a single atomic operation; a racing caller may see
        // the place briefly taken and be refused, which errs on the safe side.
        let before = self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= limit {
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(LimitExceeded::new(limit));
        }
        Ok(Permit {
            shared: self.shared.clone(),
            in_flight: before + 1,
        })
    }

    /// Runs `f` under the limit, classifying its result with [`ErrorsAreFailures`].
    ///
    /// Refused at once with [`Rejected::LimitExceeded`] when the limit is reached; otherwise the
    /// call's latency (on tokio's clock) and outcome teach the limit. A call dropped before it
    /// finishes teaches nothing.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(ErrorsAreFailures, f).await
    }

    /// Like [`call`](Self::call), judging the result with `classify`: an `Ok` answer classified
    /// as a failure (say, an HTTP 503) shrinks the limit like an error does.
    pub async fn call_classified<C, F, Fut, T, E>(&self, classify: C, f: F) -> Result<T, Error<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self
            .try_acquire()
            .map_err(|e| Error::Rejected(Rejected::LimitExceeded(e)))?;
        let start = Instant::now();
        let result = f().await;
        // Dropped unrecorded when the caller's deadline cut the call short.
        if let Verdict::Judged(outcome) = judge(&classify, &result) {
            permit.record(outcome, start.elapsed());
        }
        result.map_err(Error::Inner)
    }
}

impl Default for AdaptiveLimit {
    fn default() -> AdaptiveLimit {
        AdaptiveLimit::gradient2()
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

// === impl Permit ===

impl Permit {
    /// Frees the place and teaches the limit how the call went: its outcome and how long it took.
    pub fn record(self, outcome: Outcome, latency: Duration) {
        let sample = Sample {
            outcome,
            latency,
            in_flight: self.in_flight,
        };
        // A panic elsewhere while learning leaves the state usable: it is plain numbers.
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let limit = state.update(sample);
        // Published under the lock so that two samples cannot store their limits out of order.
        self.shared.limit.store(limit, Ordering::Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

// === impl AdaptiveLimitService ===

impl<S> AdaptiveLimitService<S> {
    /// Admits requests to `inner` under `limit`, counting errors as failures.
    pub fn new(inner: S, limit: AdaptiveLimit) -> AdaptiveLimitService<S> {
        AdaptiveLimitService {
            inner,
            limit,
            classify: ErrorsAreFailures,
        }
    }
}

impl<S, C> AdaptiveLimitService<S, C> {
    /// Judges responses with `classify` instead.
    pub fn with_classify<C2>(self, classify: C2) -> AdaptiveLimitService<S, C2> {
        AdaptiveLimitService {
            inner: self.inner,
            limit: self.limit,
            classify,
        }
    }

    /// The limit this service admits under.
    pub fn limit(&self) -> &AdaptiveLimit {
        &self.limit
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

impl<S, C, Req> Service<Req> for AdaptiveLimitService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limit.try_acquire() {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classify.clone())
            }
            Err(refused) => ResponseFuture::refused(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{advance, sleep};
    use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;
    use crate::error::is_caused_by;
    use crate::test_util::next_request;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs one round: fills the limit with permits, then records each with `latency`.
    fn saturated_round(limit: &AdaptiveLimit, outcome: Outcome, latency: Duration) {
        let permits: Vec<_> = std::iter::from_fn(|| limit.try_acquire().ok()).collect();
        assert_eq!(
            permits.len(),
            limit.limit(),
            "the limit admits exactly its size"
        );
        for permit in permits {
            permit.record(outcome, latency);
        }
    }

    #[test]
    fn rejects_at_the_limit_and_a_dropped_permit_frees_its_place() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(3).build().unwrap());
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        let _c = limit.try_acquire().unwrap();
        assert_eq!(limit.in_flight(), 3);
        let refused = limit.try_acquire().unwrap_err();
        assert_eq!(refused.limit(), 3);
        assert_eq!(limit.in_flight(), 3, "a refusal takes no place");

        drop(a);
        assert_eq!(limit.in_flight(), 2);
        assert_eq!(limit.limit(), 3, "an unrecorded permit teaches nothing");
        let _d = limit
            .try_acquire()
            .expect("the dropped permit's place is free");
    }

    #[test]
    fn gradient2_grows_while_latency_is_steady_and_the_limit_saturated() {
        let limit = AdaptiveLimit::gradient2();
        assert_eq!(limit.limit(), 20);
        for _ in 0..20 {
            saturated_round(&limit, Outcome::Success, ms(10));
        }
        assert!(limit.limit() > 60, "limit {}", limit.limit());
    }

    #[test]
    fn gradient2_stays_put_when_the_limit_is_not_used() {
        let limit = AdaptiveLimit::gradient2();
        for _ in 0..200 {
            limit
                .try_acquire()
                .unwrap()
                .record(Outcome::Success, ms(10));
        }
        assert_eq!(limit.limit(), 20);
    }

    #[test]
    fn gradient2_shrinks_when_latency_rises_then_recovers() {
        let limit = AdaptiveLimit::gradient2();
        for _ in 0..4 {
            saturated_round(&limit, Outcome::Success, ms(10));
        }
        let grown = limit.limit();
        assert!(grown > 100, "limit {grown}");
        // The callee starts queueing: latency quadruples.
        saturated_round(&limit, Outcome::Success, ms(40));
        let shrunk = limit.limit();
        assert!(shrunk < grown / 2, "limit {shrunk} after {grown}");
        // Back to normal: the limit grows again.
        saturated_round(&limit, Outcome::Success, ms(10));
        assert!(limit.limit() > shrunk, "{shrunk} -> {}", limit.limit());
    }

    #[test]
    fn aimd_grows_on_success_and_shrinks_on_drops() {
        let limit = AdaptiveLimit::aimd();
        assert_eq!(limit.limit(), 10);
        for _ in 0..5 {
            saturated_round(&limit, Outcome::Success, ms(10));
        }
        let grown = limit.limit();
        assert!(grown > 30, "limit {grown}");
        let permit = limit.try_acquire().unwrap();
        permit.record(Outcome::Failure, ms(10));
        assert_eq!(limit.limit(), (grown as f64 * 0.9) as usize);
        for _ in 0..50 {
            limit.try_acquire().unwrap().record(Outcome::Failure, ms(1));
        }
        assert!(limit.limit() < 5, "limit {}", limit.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_failing_once_the_callers_deadline_has_passed_teaches_nothing() {
        use crate::timeout::{Deadline, Timeout};

        let limit = AdaptiveLimit::aimd();
        let timeout = Timeout::new(Duration::from_secs(1));
        for _ in 0..5 {
            let result = Deadline::after(ms(50))
                .scope(limit.call(|| {
                    timeout.call(|| async {
                        sleep(ms(100)).await;
                        Ok::<_, std::io::Error>(())
                    })
                }))
                .await;
            assert!(result.is_err());
        }
        assert_eq!((limit.limit(), limit.in_flight()), (10, 0));
        // A failure with time left is a drop.
        let _ = Deadline::after(ms(50))
            .scope(limit.call(|| async { Err::<(), _>("refused") }))
            .await;
        assert_eq!(limit.limit(), 9);
    }

    #[test]
    fn limits_never_leave_their_bounds() {
        let gradient = Gradient2::builder()
            .initial_limit(10)
            .min_limit(8)
            .max_limit(12)
            .build()
            .unwrap();
        let aimd = Aimd::builder()
            .initial_limit(10)
            .min_limit(8)
            .max_limit(12)
            .build()
            .unwrap();
        for limit in [AdaptiveLimit::new(gradient), AdaptiveLimit::new(aimd)] {
            let mut seen = Vec::new();
            for round in 0..200u64 {
                let (outcome, latency) = match round % 40 {
                    0..10 => (Outcome::Success, ms(10)),
                    10..20 => (Outcome::Success, ms(10 * (round % 7 + 1))),
                    20..30 => (Outcome::Failure, ms(1)),
                    _ => (Outcome::Success, ms(500)),
                };
                saturated_round(&limit, outcome, latency);
                seen.push(limit.limit());
            }
            assert!(seen.iter().all(|l| (8..=12).contains(l)), "{seen:?}");
            assert!(seen.contains(&8) && seen.contains(&12), "{seen:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn call_measures_latency_on_tokio_clock() {
        // AIMD with a 50 ms timeout: a call slower than that counts as a drop.
        let aimd = Aimd::builder()
            .initial_limit(2)
            .timeout(ms(50))
            .build()
            .unwrap();
        let limit = AdaptiveLimit::new(aimd);
        let fast = limit.call(|| async {
            sleep(ms(10)).await;
            Ok::<_, ()>(1)
        });
        assert_eq!(fast.await.unwrap(), 1);
        assert_eq!(limit.limit(), 3, "in use (1 of 2) and fast: grows");
        let slow = limit.call(|| async {
            sleep(ms(60)).await;
            Ok::<_, ()>(2)
        });
        assert_eq!(slow.await.unwrap(), 2);
        assert_eq!(limit.limit(), 2, "slower than the timeout: backs off");
        assert_eq!(limit.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn call_rejects_at_the_limit_and_frees_its_place_when_cancelled() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(1).build().unwrap());
        let mut running = task::spawn(limit.call(|| async {
            sleep(ms(100)).await;
            Ok::<_, ()>(())
        }));
        assert_pending!(running.poll());
        assert_eq!(limit.in_flight(), 1);

        let refused = limit.call(|| async { Ok::<_, ()>(()) }).await;
        assert!(matches!(
            refused,
            Err(Error::Rejected(Rejected::LimitExceeded(ref e))) if e.limit() == 1
        ));

        drop(running);
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(limit.limit(), 1);
        assert!(limit.call(|| async { Ok::<_, ()>(()) }).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn call_classified_counts_failed_answers_as_drops() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(10).build().unwrap());
        let server_error = |r: &Result<u16, ()>| match r {
            Ok(status) if *status >= 500 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        let answer = limit
            .call_classified(server_error, || async { Ok::<u16, ()>(503) })
            .await;
        assert_eq!(answer.unwrap(), 503, "the answer itself is passed on");
        assert_eq!(limit.limit(), 9);
        let answer = limit.call(|| async { Err::<(), _>("boom") }).await;
        assert!(matches!(answer, Err(Error::Inner("boom"))));
        assert_eq!(limit.limit(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_rejects_from_the_response_future() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(1).build().unwrap());
        let (mut service, mut handle) =
            mock::spawn_layer::<&str, &str, _>(AdaptiveLimitLayer::new(limit.clone()));

        handle.allow(2);
        assert_ready_ok!(service.poll_ready());
        let first = service.call("first");
        assert_ready_ok!(service.poll_ready(), "readiness ignores the limit");
        let mut second = task::spawn(service.call("second"));
        let err = assert_ready_err!(second.poll());
        assert!(is_caused_by::<LimitExceeded>(&*err));

        let (request, respond) = next_request(&mut handle).await;
        assert_eq!(request, "first");
        advance(ms(5)).await;
        respond.send_response("ok");
        assert_eq!(first.await.unwrap(), "ok");
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(limit.limit(), 2, "one in flight of a limit of one: grows");
    }

    #[tokio::test(start_paused = true)]
    async fn layer_classifies_inner_errors_as_drops() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(10).build().unwrap());
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service = AdaptiveLimitLayer::new(limit.clone()).layer(service);
        handle.allow(1);
        let call = tokio::spawn(service.oneshot("x"));
        let (_, respond) = next_request(&mut handle).await;
        respond.send_error(std::io::Error::other("down"));
        let err = call.await.unwrap().unwrap_err();
        assert!(!is_caused_by::<LimitExceeded>(&*err));
        assert_eq!(err.to_string(), "down");
        assert_eq!(limit.limit(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_with_a_classifier_sees_the_inner_response() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(10).build().unwrap());
        let (service, mut handle) = mock::pair::<&str, u16>();
        let classify = |r: &Result<u16, BoxError>| match r {
            Ok(503) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        };
        let service = AdaptiveLimitLayer::new(limit.clone())
            .with_classify(classify)
            .layer(service);
        handle.allow(1);
        let call = tokio::spawn(service.oneshot("x"));
        let (_, respond) = next_request(&mut handle).await;
        respond.send_response(503);
        assert_eq!(call.await.unwrap().unwrap(), 503);
        assert_eq!(limit.limit(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_open_below_teaches_the_limit_nothing() {
        // The order the pipeline keeps: the limit above the breaker. The breaker's quick
        // refusals are not the callee's answers; taken as drops, each would cut the limit.
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(10).build().unwrap());
        let breaker = crate::breaker::CircuitBreaker::new();
        breaker.force_open();
        let service = tower::ServiceBuilder::new()
            .layer(limit.layer())
            .layer(breaker.layer())
            .service_fn(|_: ()| async { Ok::<_, BoxError>(()) });
        for _ in 0..9 {
            let err = service.clone().oneshot(()).await.unwrap_err();
            assert!(
                is_caused_by::<crate::breaker::error::BreakerOpen>(&*err),
                "{err}"
            );
        }
        assert_eq!(limit.limit(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffer_in_front_stays_usable_after_a_rejection() {
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(1).build().unwrap());
        let (service, mut handle) = mock::pair::<&str, &str>();
        let service =
            tower::buffer::Buffer::new(AdaptiveLimitLayer::new(limit.clone()).layer(service), 8);
        handle.allow(10);

        let first = tokio::spawn(service.clone().oneshot("first"));
        let (_, respond_first) = next_request(&mut handle).await;
        let err = service.clone().oneshot("second").await.unwrap_err();
        assert!(is_caused_by::<LimitExceeded>(&*err));

        respond_first.send_response("one");
        assert_eq!(first.await.unwrap().unwrap(), "one");
        let third = tokio::spawn(service.clone().oneshot("third"));
        let (request, respond) = next_request(&mut handle).await;
        assert_eq!(request, "third");
        respond.send_response("three");
        assert_eq!(third.await.unwrap().unwrap(), "three");
    }

    #[test]
    fn permits_are_counted_across_threads() {
        let limit = AdaptiveLimit::new(
            Aimd::builder()
                .initial_limit(50)
                .max_limit(50)
                .build()
                .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..10_000 {
                        if let Ok(permit) = limit.try_acquire() {
                            assert!(limit.in_flight() <= 50 + 4);
                            admitted += 1;
                            permit.record(Outcome::Success, ms(1));
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert_eq!(limit.in_flight(), 0);
    }
}
