//! Timeouts for one call, and deadlines for a whole request.
//!
//! A call to a service that has hung never returns by itself: without a bound, the caller waits
//! with it, holding a connection, a worker and its own caller's patience. A [`Timeout`] bounds one
//! call and fails it with [`Elapsed`](error::Elapsed) when it takes too long.
//!
//! A timeout per call is not enough once calls nest and retry: three tries of one second each,
//! behind a caller that gave up after two, are work nobody waits for. A [`Deadline`] is the moment
//! by which the whole request must be answered. Set it once where the request enters
//! ([`Deadline::scope`], [`Deadline::call`], or a [`DeadlineLayer`] reading it from each request
//! through [`HasDeadline`]); every timeout inside then waits for the earlier of its own duration
//! and the time left, and reports [`DeadlineExceeded`](error::DeadlineExceeded) when the deadline
//! was the tighter bound, so that a retry above knows trying again is pointless. A call started
//! with no time left fails at once and is never made.
//!
//! # Directly, around any async call
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::{Error, Rejected};
//! use rampart_policy::timeout::{Deadline, Timeout};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let timeout = Timeout::new(Duration::from_secs(2));
//!
//! // A fast call passes through.
//! let answer = timeout.call(|| async { Ok::<_, std::io::Error>(42) }).await;
//! assert_eq!(answer.unwrap(), 42);
//!
//! // Inside a request whose deadline is 500 ms away, the same timeout waits 500 ms at most.
//! let request = Deadline::after(Duration::from_millis(500));
//! let slow = request
//!     .scope(async {
//!         timeout
//!             .call(|| async {
//!                 tokio::time::sleep(Duration::from_secs(10)).await;
//!                 Ok::<_, std::io::Error>(42)
//!             })
//!             .await
//!     })
//!     .await;
//! assert!(matches!(slow, Err(Error::Rejected(Rejected::DeadlineExceeded(_)))));
//! # }
//! ```
//!
//! # As a tower layer
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::error::{is_caused_by, BoxError};
//! use rampart_policy::timeout::{error::Elapsed, Timeout, TimeoutLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(100))))
//!     .service(service_fn(|request: &'static str| async move {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, BoxError>(request)
//!     }));
//!
//! let err = service.oneshot("hello").await.unwrap_err();
//! assert!(is_caused_by::<Elapsed>(&*err));
//! # }
//! ```
//!
//! # Deadlines in a tower stack
//!
//! [`TimeoutService`] works for any request type, so it cannot read a deadline from the request;
//! it honours the deadline in force in the task that calls it ([`Deadline::current`]). A request
//! that carries its own deadline goes through a [`DeadlineLayer`] instead (requests
//! `R: HasDeadline`; an `http::Request` carries the [`Deadline`] in its extensions): it fails a request whose deadline has passed without calling the service
//! below, cuts the call short when the deadline passes, and makes the deadline the one in force
//! below it, so that a [`TimeoutLayer`] further down (a per-try timeout under a retry) is capped by
//! it. Two layers rather than one because a generic service cannot ask "does this request
//! implement `HasDeadline`?" in stable Rust.
//!
//! The deadline in force is task-local: it is set while the service below is called and while its
//! response future is polled, but a service that moves the work to another task (a
//! `tower::buffer::Buffer`) leaves it behind. Put the [`DeadlineLayer`] below such a service, or
//! carry the deadline in the request.

mod deadline;
pub mod error;
pub mod future;
mod layer;

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

pub use self::deadline::{Deadline, HasDeadline};
use self::future::{DeadlineFuture, Expiry, ResponseFuture, Timed};
pub use self::layer::{DeadlineLayer, TimeoutLayer};
use crate::error::{BoxError, Error};

/// A bound on how long one call may take.
///
/// Inside a [`Deadline`]'s scope the bound is the earlier of the two. A call whose future is
/// ready when first polled succeeds whatever the timeout, zero included: the timer is only
/// started once the call has to wait, and the timeout counts from then, whether or not a
/// deadline is in force. (tower's `Timeout` counts from `call`: a future first polled later
/// gets its whole timeout from its first poll here; a deadline, a point in time, does not move.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    duration: Duration,
}

impl Timeout {
    /// A tower layer that puts this timeout in front of a service; its services share it.
    pub fn layer(&self) -> TimeoutLayer {
        TimeoutLayer::new(*self)
    }

    /// A timeout of `duration`.
    pub fn new(duration: Duration) -> Timeout {
        Timeout { duration }
    }

    /// The timeout's duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Calls `f` and waits for its result for at most the timeout, or until the deadline in force
    /// ([`Deadline::current`]) if that comes first.
    ///
    /// Fails with [`Rejected::Timeout`](crate::Rejected::Timeout) when the timeout expires and
    /// with [`Rejected::DeadlineExceeded`](crate::Rejected::DeadlineExceeded) when the deadline
    /// does; when no time is left, at once and without calling `f`. The call's own error comes
    /// back as [`Error::Inner`].
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let expiry = Expiry::new(self.duration, Deadline::current()).map_err(Error::Rejected)?;
        match Timed::new(f(), expiry).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Error::Inner(err)),
            Err(rejected) => Err(Error::Rejected(rejected)),
        }
    }
}

/// A service whose calls are bounded by a [`Timeout`], and by the deadline in force when it is
/// called.
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Timeout,
}

impl<S> TimeoutService<S> {
    /// Wraps `inner` so that each call is bounded by `timeout`.
    pub fn new(inner: S, timeout: Timeout) -> TimeoutService<S> {
        TimeoutService { inner, timeout }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for TimeoutService<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        match Expiry::new(self.timeout.duration, Deadline::current()) {
            Ok(expiry) => ResponseFuture::new(self.inner.call(request), expiry),
            // Out of time: the request is dropped unsent, and the error comes from the future so
            // that a buffer in front stays usable.
            Err(rejected) => ResponseFuture::refused(rejected),
        }
    }
}

/// A service that enforces the [`Deadline`] each request carries ([`HasDeadline`]).
///
/// The request's deadline, capped by the one in force when the service is called, is:
/// - checked first: a request with no time left fails with
///   [`DeadlineExceeded`](error::DeadlineExceeded) from its response future, and the service below
///   is not called;
/// - enforced: the call is cut short with `DeadlineExceeded` when the deadline passes;
/// - made the deadline in force while the service below is called and its response is polled, so
///   that timeouts and deadline-aware code below are capped by it.
///
/// A request without a deadline passes through untouched.
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S> DeadlineService<S> {
    /// Wraps `inner` so that each request's deadline is enforced.
    pub fn new(inner: S) -> DeadlineService<S> {
        DeadlineService { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for DeadlineService<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: HasDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match Deadline::earliest(request.deadline(), Deadline::current()) {
            None => DeadlineFuture::unbounded(self.inner.call(request)),
            Some(deadline) if deadline.is_expired() => DeadlineFuture::refused(),
            Some(deadline) => {
                let inner = &mut self.inner;
                let future = deadline.sync_scope(|| inner.call(request));
                DeadlineFuture::new(future, deadline)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::{advance, sleep};
    use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
    use tower::{ServiceBuilder, ServiceExt, service_fn};
    use tower_test::mock;

    use super::error::{DeadlineExceeded, Elapsed};
    use super::*;
    use crate::error::{Rejected, is_caused_by};
    use crate::test_util::next_request;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn never() -> std::future::Pending<Result<(), &'static str>> {
        std::future::pending()
    }

    // === direct ===

    #[tokio::test(start_paused = true)]
    async fn fires_exactly_at_the_duration_and_not_before() {
        let timeout = Timeout::new(ms(100));
        let mut call = task::spawn(timeout.call(never));
        assert_pending!(call.poll());
        advance(ms(100) - Duration::from_nanos(1)).await;
        assert_pending!(call.poll());
        advance(Duration::from_nanos(1)).await;
        match assert_ready!(call.poll()) {
            Err(Error::Rejected(Rejected::Timeout(elapsed))) => {
                assert_eq!(elapsed, Elapsed::new(ms(100)));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_time_returns_its_value() {
        let timeout = Timeout::new(ms(100));
        let result = timeout
            .call(|| async {
                sleep(ms(99)).await;
                Ok::<_, ()>(7)
            })
            .await;
        assert_eq!(result.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_error_passes_through() {
        let timeout = Timeout::new(ms(100));
        let result = timeout.call(|| async { Err::<(), _>("boom") }).await;
        assert!(matches!(result, Err(Error::Inner("boom"))));
    }

    #[test]
    fn a_ready_call_needs_no_timer() {
        // Without a time driver, creating a timer panics: passing proves none was created.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = runtime.block_on(Timeout::new(ms(100)).call(|| async { Ok::<_, ()>(1) }));
        assert_eq!(result.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_still_lets_a_ready_call_through() {
        let timeout = Timeout::new(Duration::ZERO);
        assert_eq!(timeout.call(|| async { Ok::<_, ()>(1) }).await.unwrap(), 1);
        let pending = timeout.call(never).await;
        assert!(matches!(
            pending,
            Err(Error::Rejected(Rejected::Timeout(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wins_and_is_named() {
        let timeout = Timeout::new(ms(100));
        let deadline = Deadline::after(ms(30));
        let mut call = task::spawn(deadline.scope(timeout.call(never)));
        assert_pending!(call.poll());
        advance(ms(29)).await;
        assert_pending!(call.poll());
        advance(ms(1)).await;
        assert!(matches!(
            assert_ready!(call.poll()),
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_timeout_wins_inside_a_later_deadline() {
        let timeout = Timeout::new(ms(30));
        let deadline = Deadline::after(ms(100));
        let mut call = task::spawn(deadline.scope(timeout.call(never)));
        assert_pending!(call.poll());
        advance(ms(30)).await;
        assert!(matches!(
            assert_ready!(call.poll()),
            Err(Error::Rejected(Rejected::Timeout(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn nested_deadlines_keep_the_earlier() {
        let timeout = Timeout::new(ms(500));
        let outer = Deadline::after(ms(50));
        let inner = Deadline::after(ms(200));
        let mut call = task::spawn(outer.scope(inner.scope(timeout.call(never))));
        assert_pending!(call.poll());
        advance(ms(50)).await;
        assert!(matches!(
            assert_ready!(call.poll()),
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn no_time_left_short_circuits_without_calling() {
        let timeout = Timeout::new(ms(100));
        let deadline = Deadline::after(ms(10));
        advance(ms(10)).await;
        let calls = AtomicUsize::new(0);
        let result = deadline
            .scope(timeout.call(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, ()>(()) }
            }))
            .await;
        assert!(matches!(
            result,
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_before_the_call_counts_against_the_deadline() {
        let deadline = Deadline::after(ms(100));
        let result = deadline
            .scope(async {
                sleep(ms(70)).await;
                let started = tokio::time::Instant::now();
                let result = Timeout::new(ms(500)).call(never).await;
                (result, started.elapsed())
            })
            .await;
        assert!(matches!(
            result.0,
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
        ));
        assert_eq!(result.1, ms(30));
    }

    // === tower: TimeoutService ===

    #[tokio::test(start_paused = true)]
    async fn service_times_out_from_the_response_future() {
        let (mut service, mut handle) =
            mock::spawn_layer::<(), (), _>(TimeoutLayer::new(Timeout::new(ms(100))));
        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(()));
        let _request = next_request(&mut handle).await;
        assert_pending!(response.poll());
        advance(ms(99)).await;
        assert_pending!(response.poll());
        advance(ms(1)).await;
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<Elapsed>(&*err));
        assert_eq!(err.downcast_ref::<Elapsed>().unwrap().after(), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn service_passes_responses_and_errors_through() {
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(TimeoutLayer::new(Timeout::new(ms(100))));

        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(1));
        let (request, send) = next_request(&mut handle).await;
        assert_eq!(request, 1);
        send.send_response(2);
        assert_eq!(assert_ready_ok!(response.poll()), 2);

        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(3));
        let (_, send) = next_request(&mut handle).await;
        send.send_error("inner failure");
        let err = assert_ready_err!(response.poll());
        assert_eq!(err.to_string(), "inner failure");
        assert!(!is_caused_by::<Elapsed>(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn service_is_capped_by_the_deadline_in_force() {
        let (mut service, mut handle) =
            mock::spawn_layer::<(), (), _>(TimeoutLayer::new(Timeout::new(ms(100))));
        assert_ready_ok!(service.poll_ready());
        let deadline = Deadline::after(ms(40));
        let mut response = task::spawn(deadline.sync_scope(|| service.call(())));
        let _request = next_request(&mut handle).await;
        advance(ms(40)).await;
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn a_services_timeout_counts_from_the_first_wait_with_or_without_a_deadline() {
        // The response future is made, and first polled 60 ms later: the timeout's 100 ms
        // count from then, whether or not a (later) deadline is in force.
        for deadline in [None, Some(Deadline::after(Duration::from_secs(10)))] {
            let (mut service, mut handle) =
                mock::spawn_layer::<(), (), _>(TimeoutLayer::new(Timeout::new(ms(100))));
            assert_ready_ok!(service.poll_ready());
            let mut call = || service.call(());
            let mut response = task::spawn(match deadline {
                Some(deadline) => deadline.sync_scope(call),
                None => call(),
            });
            advance(ms(60)).await;
            assert_pending!(response.poll());
            let (_, answer) = next_request(&mut handle).await;
            advance(ms(99)).await;
            assert_pending!(response.poll(), "{deadline:?}");
            answer.send_response(());
            assert_ready_ok!(response.poll());
        }
        // The deadline still caps it, and is named when it comes first.
        let (mut service, mut handle) =
            mock::spawn_layer::<(), (), _>(TimeoutLayer::new(Timeout::new(ms(100))));
        assert_ready_ok!(service.poll_ready());
        let deadline = Deadline::after(ms(120));
        let mut response = task::spawn(deadline.sync_scope(|| service.call(())));
        advance(ms(60)).await;
        assert_pending!(response.poll());
        let _request = next_request(&mut handle).await;
        advance(ms(60)).await;
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn service_does_not_call_when_out_of_time_and_stays_usable() {
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(TimeoutLayer::new(Timeout::new(ms(100))));
        let deadline = Deadline::after(ms(10));
        advance(ms(10)).await;

        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(deadline.sync_scope(|| service.call(1)));
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
        assert!(handle.poll_request().is_pending(), "the request was sent");

        // The readiness reserved for the refused request serves the next one.
        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(2));
        let (request, send) = next_request(&mut handle).await;
        assert_eq!(request, 2);
        send.send_response(2);
        assert_eq!(assert_ready_ok!(response.poll()), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffer_in_front_is_not_poisoned_by_timeouts() {
        let slow = service_fn(|delay: u64| async move {
            sleep(ms(delay)).await;
            Ok::<_, BoxError>(delay)
        });
        let service = ServiceBuilder::new()
            .buffer(4)
            .layer(TimeoutLayer::new(Timeout::new(ms(50))))
            .service(slow);

        let err = service.clone().oneshot(100).await.unwrap_err();
        assert!(is_caused_by::<Elapsed>(&*err));
        assert_eq!(service.clone().oneshot(10).await.unwrap(), 10);
    }

    // === tower: DeadlineService ===

    #[derive(Debug)]
    struct Request {
        deadline: Option<Deadline>,
    }

    impl HasDeadline for Request {
        fn deadline(&self) -> Option<Deadline> {
            self.deadline
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_service_cuts_the_call_at_the_request_deadline() {
        let (mut service, mut handle) = mock::spawn_layer::<Request, (), _>(DeadlineLayer::new());
        assert_ready_ok!(service.poll_ready());
        let request = Request {
            deadline: Some(Deadline::after(ms(70))),
        };
        let mut response = task::spawn(service.call(request));
        let _request = next_request(&mut handle).await;
        advance(ms(69)).await;
        assert_pending!(response.poll());
        advance(ms(1)).await;
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_service_refuses_an_expired_request_without_calling() {
        let (mut service, mut handle) = mock::spawn_layer::<Request, (), _>(DeadlineLayer::new());
        let request = Request {
            deadline: Some(Deadline::after(ms(5))),
        };
        advance(ms(5)).await;
        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(request));
        let err = assert_ready_err!(response.poll());
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
        assert!(handle.poll_request().is_pending(), "the request was sent");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_service_passes_a_request_without_deadline() {
        let (mut service, mut handle) = mock::spawn_layer::<Request, u8, _>(DeadlineLayer::new());
        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call(Request { deadline: None }));
        let (_, send) = next_request(&mut handle).await;
        advance(Duration::from_secs(3600)).await;
        assert_pending!(response.poll());
        send.send_response(9);
        assert_eq!(assert_ready_ok!(response.poll()), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_deadline_is_in_force_below_and_caps_timeouts() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        // What the timeout layer answered, before the deadline layer above could cut the call
        // itself: an uncapped 500 ms timeout would answer nothing by 80 ms.
        let from_timeout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record_error = Arc::clone(&from_timeout);
        let service = ServiceBuilder::new()
            .layer(DeadlineLayer::new())
            .map_err(move |err: BoxError| {
                let deadline = is_caused_by::<DeadlineExceeded>(&*err);
                record_error.lock().unwrap().push(deadline);
                err
            })
            .layer(TimeoutLayer::new(Timeout::new(ms(500))))
            .service(service_fn(move |_: Request| {
                // Seen while the service is called, and while its future runs.
                record.lock().unwrap().push(Deadline::current());
                let record = Arc::clone(&record);
                async move {
                    record.lock().unwrap().push(Deadline::current());
                    sleep(ms(1000)).await;
                    Ok::<_, BoxError>(())
                }
            }));

        let deadline = Deadline::after(ms(80));
        let started = tokio::time::Instant::now();
        let err = service
            .oneshot(Request {
                deadline: Some(deadline),
            })
            .await
            .unwrap_err();
        assert!(is_caused_by::<DeadlineExceeded>(&*err));
        assert_eq!(started.elapsed(), ms(80));
        assert_eq!(
            *from_timeout.lock().unwrap(),
            vec![true],
            "the timeout below fired at the deadline, and named it"
        );
        assert_eq!(*seen.lock().unwrap(), vec![Some(deadline), Some(deadline)]);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_service_is_capped_by_an_earlier_deadline_in_force() {
        let service = DeadlineService::new(service_fn(|_: Request| async {
            Ok::<_, BoxError>(Deadline::current())
        }));
        let outer = Deadline::after(ms(10));
        let request = Request {
            deadline: Some(Deadline::after(ms(20))),
        };
        let seen = outer.scope(service.oneshot(request)).await.unwrap();
        assert_eq!(seen, Some(outer));
    }
}
