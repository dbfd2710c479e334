//! A bulkhead: a bound on concurrent calls, and on the queue waiting for them.
//!
//! When a callee slows down, calls to it pile up: each holds a connection, memory and a task, and
//! soon the caller has nothing left for its other work. A [`Bulkhead`] lets at most
//! `max_concurrent` calls run at once, like a ship's bulkhead keeps a leak to one compartment.
//! A call that finds it full waits in a bounded queue (`max_wait_queue`, which may be 0) for at
//! most `max_wait`, and is otherwise refused with [`BulkheadFull`] at once:
//! [`waited()`](BulkheadFull::waited) tells a queue that was full (false) from a wait
//! that timed out (true).
//!
//! Waiters are served in order of arrival, and a newcomer never takes a place a waiter is owed.
//! A waiter that gives up (its future dropped) leaves the queue at once. A place is held by a
//! permit ([`BulkheadPermit`]) and given back when the permit is dropped, so a call that fails,
//! is cancelled or panics frees its place.
//!
//! Taking and giving back a place while the bulkhead has room is one atomic operation each; the
//! queue, behind a lock, is touched only when the bulkhead is full.
//!
//! # Directly, around any async call
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::{Error, Rejected};
//! use rampart_policy::bulkhead::Bulkhead;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bulkhead = Bulkhead::builder(10)
//!     .max_wait_queue(20)
//!     .max_wait(Duration::from_millis(100))
//!     .build()?;
//!
//! let answer = bulkhead.call(|| async { Ok::<_, std::io::Error>(42) }).await;
//! assert_eq!(answer.unwrap(), 42);
//!
//! // Holding every place, the next call waits 100 ms in the queue and is refused.
//! let permits: Vec<_> = (0..10).map(|_| bulkhead.try_acquire().unwrap()).collect();
//! let refused = bulkhead.call(|| async { Ok::<_, std::io::Error>(42) }).await;
//! match refused {
//!     Err(Error::Rejected(Rejected::BulkheadFull(full))) => assert!(full.waited()),
//!     other => panic!("{other:?}"),
//! }
//! drop(permits);
//! assert_eq!(bulkhead.in_flight(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # As a tower layer
//!
//! The place is taken in the response future, not in `poll_ready`: a full bulkhead answers with
//! an error instead of holding back readiness, so a `tower::buffer::Buffer` in front of it is not
//! poisoned. A queued request waits in its response future together with the service it is for,
//! which is why the wrapped service must be `Clone` (a `Buffer` is).
//!
//! ```
//! use rampart_policy::error::{is_caused_by, BoxError};
//! use rampart_policy::bulkhead::{error::BulkheadFull, Bulkhead, BulkheadLayer};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let bulkhead = Bulkhead::builder(1).build()?;
//! let mut service = ServiceBuilder::new()
//!     .layer(BulkheadLayer::new(bulkhead.clone()))
//!     .service(service_fn(|request: u32| async move { Ok::<_, BoxError>(request) }));
//!
//! let first = service.ready().await?.call(1); // takes the only place
//! let second = service.ready().await?.call(2); // finds none, and no queue
//! let err = second.await.unwrap_err();
//! assert!(is_caused_by::<BulkheadFull>(&*err));
//! assert_eq!(first.await?, 1);
//! assert_eq!(bulkhead.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
mod state;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use self::error::{BulkheadFull, ConfigError};
use self::future::ResponseFuture;
pub use self::layer::BulkheadLayer;
use self::state::{Admission, MAX_CONCURRENT, Shared, Wait};
use crate::error::{BoxError, Error, Rejected};
use crate::timeout::Deadline;
use crate::timeout::error::DeadlineExceeded;

/// What a refused place is to its caller: the deadline in force passing, when that cut the wait
/// short (a caller out of time is told so: 504 `deadline-exceeded` over HTTP, not 503
/// `overloaded`), or else the bulkhead full.
pub(crate) fn refusal(full: BulkheadFull) -> Rejected {
    if full.waited() && Deadline::current().is_some_and(|deadline| deadline.is_expired()) {
        Rejected::DeadlineExceeded(DeadlineExceeded::new())
    } else {
        Rejected::BulkheadFull(full)
    }
}

/// The default [`BulkheadBuilder::max_wait`].
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// A bound on concurrent calls, with a bounded queue for calls waiting for a place.
///
/// Cheap to clone: clones share one limit.
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

/// Configures a [`Bulkhead`]; made by [`Bulkhead::builder`].
#[derive(Clone, Debug)]
pub struct BulkheadBuilder {
    max_concurrent: usize,
    max_wait_queue: usize,
    max_wait: Duration,
}

/// A place in a [`Bulkhead`], given back when dropped.
#[must_use = "the place is given back as soon as the permit is dropped"]
pub struct BulkheadPermit<'a> {
    bulkhead: &'a Bulkhead,
}

/// A place in a [`Bulkhead`] that does not borrow it, given back when dropped.
#[must_use = "the place is given back as soon as the permit is dropped"]
pub struct OwnedBulkheadPermit {
    shared: Arc<Shared>,
}

// === impl Bulkhead ===

impl Bulkhead {
    /// A tower layer that puts this bulkhead in front of a service; its services share it.
    pub fn layer(&self) -> BulkheadLayer {
        BulkheadLayer::new(self.clone())
    }

    /// Starts configuring a bulkhead that lets `max_concurrent` calls run at once.
    ///
    /// By default a call that finds it full is refused at once (`max_wait_queue` 0).
    pub fn builder(max_concurrent: usize) -> BulkheadBuilder {
        BulkheadBuilder {
            max_concurrent,
            max_wait_queue: 0,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// Calls `f` once a place is free, and gives the place back when its future completes (or is
    /// dropped, or panics).
    ///
    /// Waits in the queue when the bulkhead is full; fails with
    /// [`Rejected::BulkheadFull`] without calling `f` when the
    /// queue is full too or no place comes free within `max_wait`.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self
            .acquire()
            .await
            .map_err(|full| Error::Rejected(refusal(full)))?;
        f().await.map_err(Error::Inner)
    }

    /// Takes a place if one is free now; never waits, never queues.
    ///
    /// Fails (with [`waited()`](BulkheadFull::waited) false) when the bulkhead is full, or when
    /// calls are queued: they are owed the next places.
    #[inline]
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        if self.shared.try_acquire() {
            Ok(BulkheadPermit { bulkhead: self })
        } else {
            Err(BulkheadFull::new(self.shared.max_concurrent(), false))
        }
    }

    /// Takes a place, waiting in the queue for one when the bulkhead is full.
    ///
    /// Fails when the queue is full too ([`waited()`](BulkheadFull::waited) false) or no place
    /// comes free within `max_wait` (true). Dropping the future leaves the queue.
    #[inline]
    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        let shared: &Shared = &self.shared;
        if !shared.try_acquire()
            && let Admission::Queued(ticket) = shared.enqueue()?
        {
            Wait::new(shared, ticket).await?;
        }
        Ok(BulkheadPermit { bulkhead: self })
    }

    /// Like [`Bulkhead::try_acquire`], with a permit that does not borrow the bulkhead.
    pub fn try_acquire_owned(&self) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        self.try_acquire().map(BulkheadPermit::into_owned)
    }

    /// Like [`Bulkhead::acquire`], with a permit that does not borrow the bulkhead.
    pub async fn acquire_owned(&self) -> Result<OwnedBulkheadPermit, BulkheadFull> {
        self.acquire().await.map(BulkheadPermit::into_owned)
    }

    /// The number of places taken now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// The number of calls waiting for a place now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// The limit on concurrent calls.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent()
    }

    /// The limit on calls waiting for a place.
    pub fn max_wait_queue(&self) -> usize {
        self.shared.max_wait_queue()
    }

    /// How long a call waits for a place before it is refused.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait()
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

// === impl BulkheadBuilder ===

impl BulkheadBuilder {
    /// How many calls may wait for a place when all are taken. Default 0: a call that finds the
    /// bulkhead full is refused at once.
    pub fn max_wait_queue(mut self, max_wait_queue: usize) -> BulkheadBuilder {
        self.max_wait_queue = max_wait_queue;
        self
    }

    /// How long a queued call waits for a place before it is refused. Default
    /// [`DEFAULT_MAX_WAIT`] (1 s); unused without a queue.
    pub fn max_wait(mut self, max_wait: Duration) -> BulkheadBuilder {
        self.max_wait = max_wait;
        self
    }

    /// Builds the bulkhead, or says why the configuration cannot work.
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.max_concurrent > MAX_CONCURRENT {
            return Err(ConfigError::TooManyConcurrent {
                got: self.max_concurrent,
                max: MAX_CONCURRENT,
            });
        }
        if self.max_wait_queue > 0 && self.max_wait.is_zero() {
            return Err(ConfigError::ZeroWait {
                max_wait_queue: self.max_wait_queue,
            });
        }
        Ok(Bulkhead {
            shared: Arc::new(Shared::new(
                self.max_concurrent,
                self.max_wait_queue,
                self.max_wait,
            )),
        })
    }
}

// === impl BulkheadPermit ===

impl BulkheadPermit<'_> {
    /// Turns the permit into one that does not borrow the bulkhead.
    pub fn into_owned(self) -> OwnedBulkheadPermit {
        let shared = Arc::clone(&self.bulkhead.shared);
        // The place moves to the owned permit: this one must not give it back.
        std::mem::forget(self);
        OwnedBulkheadPermit { shared }
    }
}

impl Drop for BulkheadPermit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.bulkhead.shared.release();
    }
}

impl fmt::Debug for BulkheadPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit").finish_non_exhaustive()
    }
}

// === impl OwnedBulkheadPermit ===

impl OwnedBulkheadPermit {
    pub(crate) fn new(shared: Arc<Shared>) -> OwnedBulkheadPermit {
        OwnedBulkheadPermit { shared }
    }
}

impl Drop for OwnedBulkheadPermit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl fmt::Debug for OwnedBulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedBulkheadPermit")
            .finish_non_exhaustive()
    }
}

// === impl BulkheadService ===

/// A service whose calls are bounded by a [`Bulkhead`].
#[derive(Clone, Debug)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S> BulkheadService<S> {
    /// Wraps `inner` so that its calls are bounded by `bulkhead`.
    pub fn new(inner: S, bulkhead: Bulkhead) -> BulkheadService<S> {
        BulkheadService { inner, bulkhead }
    }

    /// The bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
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

impl<S, R> Service<R> for BulkheadService<S>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let shared = &self.bulkhead.shared;
        if shared.try_acquire() {
            let permit = OwnedBulkheadPermit::new(Arc::clone(shared));
            return ResponseFuture::running(self.inner.call(request), permit);
        }
        match shared.enqueue() {
            Ok(Admission::Acquired) => {
                let permit = OwnedBulkheadPermit::new(Arc::clone(shared));
                ResponseFuture::running(self.inner.call(request), permit)
            }
            Ok(Admission::Queued(ticket)) => {
                // The ticket is guarded first: the clone is the inner service's code, and a
                // panic in it must not leave a waiter that nothing gives up.
                let wait = Wait::new(Arc::clone(shared), ticket);
                // The service was made ready for this request: it goes with the request, and a
                // clone (not yet ready) stays for the next.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, service, request)
            }
            Err(full) => ResponseFuture::refused(full),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;
    use tokio::time::advance;
    use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
    use tower::{ServiceBuilder, ServiceExt, service_fn};
    use tower_test::mock;

    use super::*;
    use crate::error::{Rejected, is_caused_by};
    use crate::test_util::next_request;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bulkhead(max_concurrent: usize, max_wait_queue: usize) -> Bulkhead {
        Bulkhead::builder(max_concurrent)
            .max_wait_queue(max_wait_queue)
            .max_wait(ms(100))
            .build()
            .unwrap()
    }

    fn assert_full<T: fmt::Debug>(result: Result<T, BulkheadFull>, waited: bool) {
        let full = result.expect_err("expected the bulkhead to be full");
        assert_eq!(full.waited(), waited, "{full}");
    }

    // === configuration ===

    #[test]
    fn misconfigurations_are_refused_with_the_reason() {
        assert_eq!(
            Bulkhead::builder(0).build().unwrap_err(),
            ConfigError::ZeroConcurrency
        );
        assert_eq!(
            Bulkhead::builder(usize::MAX).build().unwrap_err(),
            ConfigError::TooManyConcurrent {
                got: usize::MAX,
                max: MAX_CONCURRENT
            }
        );
        assert_eq!(
            Bulkhead::builder(1)
                .max_wait_queue(3)
                .max_wait(Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroWait { max_wait_queue: 3 }
        );
        // No queue, no wait: refusing at once is a fine configuration.
        let bulkhead = Bulkhead::builder(2)
            .max_wait(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(bulkhead.max_concurrent(), 2);
        assert_eq!(bulkhead.max_wait_queue(), 0);
    }

    // === admission ===

    #[test]
    fn admits_max_concurrent_and_refuses_the_next_at_once() {
        let bulkhead = bulkhead(3, 0);
        let permits: Vec<_> = (0..3).map(|_| bulkhead.try_acquire().unwrap()).collect();
        assert_eq!(bulkhead.in_flight(), 3);
        assert_full(bulkhead.try_acquire(), false);
        drop(permits);
        assert_eq!(bulkhead.in_flight(), 0);
        assert!(bulkhead.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn queues_max_wait_queue_and_refuses_the_next_without_waiting() {
        let bulkhead = bulkhead(2, 3);
        let _held: Vec<_> = (0..2).map(|_| bulkhead.try_acquire().unwrap()).collect();
        let mut waiters: Vec<_> = (0..3).map(|_| task::spawn(bulkhead.acquire())).collect();
        for waiter in &mut waiters {
            assert_pending!(waiter.poll());
        }
        assert_eq!(bulkhead.queued(), 3);

        let mut refused = task::spawn(bulkhead.acquire());
        assert_full(assert_ready!(refused.poll()), false);
        assert_eq!(bulkhead.queued(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_after_max_wait() {
        let bulkhead = bulkhead(1, 1);
        let _held = bulkhead.try_acquire().unwrap();
        let mut waiter = task::spawn(bulkhead.acquire());
        assert_pending!(waiter.poll());
        advance(ms(99)).await;
        assert_pending!(waiter.poll());
        advance(ms(1)).await;
        assert!(waiter.is_woken());
        assert_full(assert_ready!(waiter.poll()), true);
        assert_eq!(bulkhead.queued(), 0);
        assert_eq!(bulkhead.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_no_longer_than_the_deadline_in_force() {
        let bulkhead = bulkhead(1, 1);
        let _held = bulkhead.try_acquire().unwrap();
        let start = tokio::time::Instant::now();
        let waited = crate::timeout::Deadline::after(ms(20))
            .scope(bulkhead.acquire())
            .await;
        assert_full(waited.map(drop), true);
        assert_eq!(start.elapsed(), ms(20), "max_wait is 100 ms");
        // Its place in the queue went with it.
        assert_eq!(bulkhead.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_the_deadline_ends_is_the_deadlines_refusal() {
        // Through `call` and the service alike: the caller ran out of time, which the bulkhead
        // being full (503 `overloaded` over HTTP) would not say.
        let bulkhead = bulkhead(1, 1);
        let _held = bulkhead.try_acquire().unwrap();
        let hurried = || crate::timeout::Deadline::after(ms(20));
        let called = hurried()
            .scope(bulkhead.call(|| async { Ok::<_, ()>(()) }))
            .await;
        assert!(
            matches!(called, Err(Error::Rejected(Rejected::DeadlineExceeded(_)))),
            "{called:?}"
        );
        let service = tower::Layer::layer(
            &BulkheadLayer::new(bulkhead.clone()),
            service_fn(|()| async { Ok::<_, BoxError>(()) }),
        );
        let err = hurried().scope(service.oneshot(())).await.unwrap_err();
        assert!(is_caused_by::<DeadlineExceeded>(&*err), "{err}");
        // Past `max_wait` with time left, the bulkhead was full.
        let called = crate::timeout::Deadline::after(ms(500))
            .scope(bulkhead.call(|| async { Ok::<_, ()>(()) }))
            .await;
        assert!(
            matches!(called, Err(Error::Rejected(Rejected::BulkheadFull(_)))),
            "{called:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_place_goes_to_the_waiter_not_a_newcomer() {
        let bulkhead = bulkhead(1, 1);
        let held = bulkhead.try_acquire().unwrap();
        let mut waiter = task::spawn(bulkhead.acquire());
        assert_pending!(waiter.poll());

        drop(held);
        assert!(waiter.is_woken());
        // The place was handed over, not left for the taking.
        assert_eq!(bulkhead.in_flight(), 1);
        assert_full(bulkhead.try_acquire(), false);

        let permit = assert_ready_ok!(waiter.poll());
        assert_eq!(bulkhead.queued(), 0);
        drop(permit);
        assert_eq!(bulkhead.in_flight(), 0);
        assert!(bulkhead.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order_of_arrival() {
        let bulkhead = bulkhead(1, 4);
        let held = bulkhead.try_acquire().unwrap();
        let mut waiters: Vec<_> = (0..4).map(|_| task::spawn(bulkhead.acquire())).collect();
        for waiter in &mut waiters {
            assert_pending!(waiter.poll());
        }

        let mut permit = Some(held);
        for served in 0..4 {
            drop(permit.take());
            for (i, waiter) in waiters.iter_mut().enumerate().skip(served + 1) {
                assert_pending!(waiter.poll(), "waiter {i} served before waiter {served}");
            }
            permit = Some(assert_ready_ok!(waiters[served].poll()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_frees_its_place_in_the_queue() {
        let bulkhead = bulkhead(1, 1);
        let held = bulkhead.try_acquire().unwrap();
        let mut first = task::spawn(bulkhead.acquire());
        assert_pending!(first.poll());
        let mut refused = task::spawn(bulkhead.acquire());
        assert_full(assert_ready!(refused.poll()), false);

        drop(first);
        assert_eq!(bulkhead.queued(), 0);
        let mut second = task::spawn(bulkhead.acquire());
        assert_pending!(second.poll());
        drop(held);
        let _permit = assert_ready_ok!(second.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_in_the_middle_is_skipped() {
        let bulkhead = bulkhead(1, 3);
        let held = bulkhead.try_acquire().unwrap();
        let mut a = task::spawn(bulkhead.acquire());
        let mut b = task::spawn(bulkhead.acquire());
        let mut c = task::spawn(bulkhead.acquire());
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        assert_pending!(c.poll());
        drop(b);
        assert_eq!(bulkhead.queued(), 2);

        drop(held);
        let permit = assert_ready_ok!(a.poll());
        assert_pending!(c.poll());
        drop(permit);
        let _permit = assert_ready_ok!(c.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_after_its_grant_gives_the_place_back() {
        let bulkhead = bulkhead(1, 2);
        let held = bulkhead.try_acquire().unwrap();
        let mut granted = task::spawn(bulkhead.acquire());
        let mut next = task::spawn(bulkhead.acquire());
        assert_pending!(granted.poll());
        assert_pending!(next.poll());

        drop(held); // handed to `granted`, which never looks
        drop(granted); // so it passes on to `next`
        assert!(next.is_woken());
        let permit = assert_ready_ok!(next.poll());
        assert_eq!(bulkhead.in_flight(), 1);
        drop(permit);
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_beats_a_timer_that_fired_at_the_same_time() {
        let bulkhead = bulkhead(1, 1);
        let held = bulkhead.try_acquire().unwrap();
        let mut waiter = task::spawn(bulkhead.acquire());
        assert_pending!(waiter.poll());
        advance(ms(100)).await;
        drop(held);
        let _permit = assert_ready_ok!(waiter.poll());
        assert_eq!(bulkhead.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn owned_permits_hold_and_give_back_a_place() {
        let bulkhead = bulkhead(1, 0);
        let owned = bulkhead.try_acquire_owned().unwrap();
        assert_full(bulkhead.try_acquire(), false);
        drop(owned);
        let owned = bulkhead.acquire_owned().await.unwrap();
        assert_eq!(bulkhead.in_flight(), 1);
        drop(owned);
        let converted = bulkhead.try_acquire().unwrap().into_owned();
        assert_eq!(bulkhead.in_flight(), 1);
        drop(converted);
        assert_eq!(bulkhead.in_flight(), 0);
    }

    // === call ===

    #[tokio::test(start_paused = true)]
    async fn call_returns_the_value_or_the_inner_error() {
        let bulkhead = bulkhead(1, 0);
        assert_eq!(bulkhead.call(|| async { Ok::<_, ()>(5) }).await.unwrap(), 5);
        let failed = bulkhead.call(|| async { Err::<(), _>("boom") }).await;
        assert!(matches!(failed, Err(Error::Inner("boom"))));
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn call_refuses_without_calling_when_full() {
        let bulkhead = bulkhead(1, 0);
        let _held = bulkhead.try_acquire().unwrap();
        let calls = AtomicUsize::new(0);
        let result = bulkhead
            .call(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, ()>(()) }
            })
            .await;
        match result {
            Err(Error::Rejected(Rejected::BulkheadFull(full))) => {
                assert!(!full.waited());
                assert_eq!(full.max_concurrent(), 1);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_place_is_held_while_the_call_runs() {
        let bulkhead = bulkhead(1, 0);
        let (release, released) = oneshot::channel::<()>();
        let mut call = task::spawn(bulkhead.call(|| async {
            released.await.unwrap();
            Ok::<_, ()>(())
        }));
        assert_pending!(call.poll());
        assert_eq!(bulkhead.in_flight(), 1);
        release.send(()).unwrap();
        assert_ready_ok!(call.poll());
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_gives_its_place_back() {
        let bulkhead = bulkhead(1, 0);
        let mut call = task::spawn(bulkhead.call(std::future::pending::<Result<(), ()>>));
        assert_pending!(call.poll());
        assert_eq!(bulkhead.in_flight(), 1);
        drop(call);
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_call_gives_its_place_back() {
        let bulkhead = bulkhead(1, 0);
        let task = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move {
                bulkhead
                    .call(|| async {
                        panic!("the call panics");
                        #[allow(unreachable_code)]
                        Ok::<(), ()>(())
                    })
                    .await
            }
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(bulkhead.in_flight(), 0);
        assert!(bulkhead.try_acquire().is_ok());
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let bulkhead = bulkhead(1, 0);
        assert_send(&bulkhead.call(|| async { Ok::<_, ()>(()) }));
        assert_send(&bulkhead.acquire());
    }

    // === tower ===

    #[tokio::test(start_paused = true)]
    async fn service_refuses_from_the_response_future() {
        let bulkhead = bulkhead(1, 0);
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(BulkheadLayer::new(bulkhead.clone()));

        assert_ready_ok!(service.poll_ready());
        let mut first = task::spawn(service.call(1));
        let (request, send) = next_request(&mut handle).await;
        assert_eq!(request, 1);
        assert_eq!(bulkhead.in_flight(), 1);

        // Full, yet ready: the refusal comes from the future.
        assert_ready_ok!(service.poll_ready());
        let mut second = task::spawn(service.call(2));
        let err = assert_ready_err!(second.poll());
        let full = err.downcast_ref::<BulkheadFull>().expect("a BulkheadFull");
        assert!(!full.waited());
        assert!(
            handle.poll_request().is_pending(),
            "the refused request was sent"
        );

        send.send_response(10);
        assert_eq!(assert_ready_ok!(first.poll()), 10);
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn service_sends_a_queued_request_once_a_place_frees() {
        let bulkhead = bulkhead(1, 1);
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(BulkheadLayer::new(bulkhead.clone()));

        assert_ready_ok!(service.poll_ready());
        let mut first = task::spawn(service.call(1));
        let (_, send_first) = next_request(&mut handle).await;

        assert_ready_ok!(service.poll_ready());
        let mut second = task::spawn(service.call(2));
        assert_pending!(second.poll());
        assert!(
            handle.poll_request().is_pending(),
            "sent before a place freed"
        );
        assert_eq!(bulkhead.queued(), 1);

        send_first.send_response(1);
        assert_ready_ok!(first.poll());
        assert!(second.is_woken());
        assert_pending!(second.poll());
        let (request, send_second) = next_request(&mut handle).await;
        assert_eq!(request, 2);
        assert_eq!(bulkhead.in_flight(), 1);
        send_second.send_error("inner failure");
        let err = assert_ready_err!(second.poll());
        assert_eq!(err.to_string(), "inner failure");
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn service_times_out_a_queued_request() {
        let bulkhead = bulkhead(1, 1);
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(BulkheadLayer::new(bulkhead.clone()));
        assert_ready_ok!(service.poll_ready());
        let _first = task::spawn(service.call(1));
        let _request = next_request(&mut handle).await;

        assert_ready_ok!(service.poll_ready());
        let mut second = task::spawn(service.call(2));
        assert_pending!(second.poll());
        advance(ms(100)).await;
        let err = assert_ready_err!(second.poll());
        assert!(err.downcast_ref::<BulkheadFull>().unwrap().waited());
        assert_eq!(bulkhead.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clone_that_panics_leaves_no_waiter_behind() {
        /// A service whose clones panic: the one a queued request takes is a clone.
        struct Unclonable;
        impl Clone for Unclonable {
            fn clone(&self) -> Self {
                panic!("no clone");
            }
        }
        impl Service<()> for Unclonable {
            type Response = ();
            type Error = BoxError;
            type Future = std::future::Ready<Result<(), BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, (): ()) -> Self::Future {
                std::future::ready(Ok(()))
            }
        }
        let bulkhead = bulkhead(1, 1);
        let held = bulkhead.try_acquire().unwrap();
        let mut service = BulkheadService::new(Unclonable, bulkhead.clone());
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.call(())));
        assert!(call.is_err(), "the clone panicked");
        assert_eq!(bulkhead.queued(), 0);
        // The place goes back to the bulkhead, not to a waiter no one will ever poll.
        drop(held);
        assert!(bulkhead.try_acquire().is_ok());
    }

    #[tokio::test]
    async fn a_buffer_in_front_is_not_poisoned() {
        let bulkhead = bulkhead(1, 0);
        let (release, released) = oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let service = ServiceBuilder::new()
            .buffer(8)
            .layer(BulkheadLayer::new(bulkhead.clone()))
            .service(service_fn(move |hold: bool| {
                let released = Arc::clone(&released);
                async move {
                    if hold {
                        let released = released.lock().await.take().unwrap();
                        released.await.unwrap();
                    }
                    Ok::<_, BoxError>(hold)
                }
            }));

        let first = tokio::spawn(service.clone().oneshot(true));
        while bulkhead.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let err = service.clone().oneshot(false).await.unwrap_err();
        assert!(is_caused_by::<BulkheadFull>(&*err));

        release.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert!(!service.clone().oneshot(false).await.unwrap());
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[test]
    fn service_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let bulkhead = bulkhead(1, 1);
        let mut service = BulkheadService::new(
            service_fn(|request: u32| async move { Ok::<_, BoxError>(request) }),
            bulkhead,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert_send(&service.call(1));
    }

    // === under contention ===

    /// Ready after `polls` polls: a way to give up on a waiter that does not depend on time.
    fn after_polls(mut polls: usize) -> impl Future<Output = ()> + Unpin {
        std::future::poll_fn(move |cx| {
            if polls == 0 {
                Poll::Ready(())
            } else {
                polls -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
    }

    /// Counts a call as running until dropped, which a call given up on mid-way also is.
    struct Running<'a>(&'a AtomicUsize);

    impl<'a> Running<'a> {
        fn enter(running: &'a AtomicUsize, most: &AtomicUsize) -> Running<'a> {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            Running(running)
        }
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn never_admits_more_than_the_limit_across_threads() {
        const LIMIT: usize = 3;
        const TASKS: usize = 200;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(LIMIT)
            .max_wait_queue(TASKS / 2)
            .max_wait(Duration::from_secs(600))
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        runtime.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let bulkhead = bulkhead.clone();
                    let running = Arc::clone(&running);
                    let most = Arc::clone(&most);
                    let completed = Arc::clone(&completed);
                    tokio::spawn(async move {
                        for round in 0..20 {
                            let call = bulkhead.call(|| async {
                                let _running = Running::enter(&running, &most);
                                tokio::task::yield_now().await;
                                Ok::<_, ()>(())
                            });
                            // Some callers give up while queued, or just as they are granted.
                            let patience = after_polls((task + round) % 7);
                            let call = std::pin::pin!(call);
                            if let futures_util::future::Either::Left((Ok(()), _)) =
                                futures_util::future::select(call, patience).await
                            {
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        assert!(most.load(Ordering::SeqCst) <= LIMIT);
        assert!(completed.load(Ordering::SeqCst) > 0);
        assert_eq!(bulkhead.in_flight(), 0);
        assert_eq!(bulkhead.queued(), 0);
        assert!(bulkhead.try_acquire().is_ok());
    }

    // === against a model ===

    #[derive(Clone, Debug)]
    enum Op {
        Arrive,
        Release(usize),
        Cancel(usize),
        PollAll,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Op::Arrive),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::Cancel),
            2 => Just(Op::PollAll),
        ]
    }

    type Waiting = task::Spawn<
        std::pin::Pin<Box<dyn Future<Output = Result<OwnedBulkheadPermit, BulkheadFull>>>>,
    >;

    proptest::proptest! {
        /// Single-threaded runs of arrivals, releases, cancellations and polls agree with a plain
        /// FIFO model: admissions, refusals, the order of grants, and the counts.
        #[test]
        fn behaves_like_a_fifo_queue_in_front_of_a_counter(
            max_concurrent in 1usize..4,
            max_wait_queue in 0usize..4,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let _runtime = runtime.enter();
            let bulkhead = Bulkhead::builder(max_concurrent)
                .max_wait_queue(max_wait_queue)
                .max_wait(Duration::from_secs(3600))
                .build()
                .unwrap();

            let mut held: Vec<OwnedBulkheadPermit> = Vec::new();
            // Waiters in arrival order, with whether the model says they were granted a place.
            let mut waiting: Vec<(Waiting, bool)> = Vec::new();
            let mut in_flight = 0;

            // A freed place goes to the oldest waiter not yet granted, or back to the pool.
            fn free_a_place(waiting: &mut [(Waiting, bool)], in_flight: &mut usize) {
                match waiting.iter_mut().find(|(_, granted)| !granted) {
                    Some((_, granted)) => *granted = true,
                    None => *in_flight -= 1,
                }
            }

            for op in ops {
                match op {
                    Op::Arrive => {
                        let bulkhead = bulkhead.clone();
                        let mut future: Waiting =
                            task::spawn(Box::pin(async move { bulkhead.acquire_owned().await }));
                        let queued = waiting.iter().filter(|(_, granted)| !granted).count();
                        match future.poll() {
                            Poll::Ready(Ok(permit)) => {
                                proptest::prop_assert!(in_flight < max_concurrent && queued == 0);
                                in_flight += 1;
                                held.push(permit);
                            }
                            Poll::Ready(Err(full)) => {
                                proptest::prop_assert!(!full.waited());
                                proptest::prop_assert!(in_flight == max_concurrent && queued == max_wait_queue);
                            }
                            Poll::Pending => {
                                proptest::prop_assert!(in_flight == max_concurrent && queued < max_wait_queue);
                                waiting.push((future, false));
                            }
                        }
                    }
                    Op::Release(i) if !held.is_empty() => {
                        drop(held.swap_remove(i % held.len()));
                        free_a_place(&mut waiting, &mut in_flight);
                    }
                    Op::Cancel(i) if !waiting.is_empty() => {
                        let (future, granted) = waiting.remove(i % waiting.len());
                        drop(future);
                        if granted {
                            free_a_place(&mut waiting, &mut in_flight);
                        }
                    }
                    Op::Release(_) | Op::Cancel(_) => {}
                    Op::PollAll => {
                        let mut still = Vec::new();
                        for (mut future, granted) in waiting.drain(..) {
                            match future.poll() {
                                Poll::Ready(Ok(permit)) => {
                                    proptest::prop_assert!(granted, "served out of turn");
                                    held.push(permit);
                                }
                                Poll::Ready(Err(full)) => {
                                    proptest::prop_assert!(false, "refused while waiting: {full}")
                                }
                                Poll::Pending => {
                                    proptest::prop_assert!(!granted, "granted but not served");
                                    still.push((future, granted));
                                }
                            }
                        }
                        waiting = still;
                    }
                }
                proptest::prop_assert_eq!(bulkhead.in_flight(), in_flight);
                proptest::prop_assert_eq!(
                    bulkhead.queued(),
                    waiting.iter().filter(|(_, granted)| !granted).count()
                );
            }
            drop(waiting);
            drop(held);
            proptest::prop_assert_eq!(bulkhead.in_flight(), 0);
            proptest::prop_assert_eq!(bulkhead.queued(), 0);
        }
    }
}
