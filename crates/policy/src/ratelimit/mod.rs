//! A rate limit: a bound on calls per second (or minute), with a burst allowance.
//!
//! A bulkhead bounds how many calls run at once; a rate limit bounds how many start per unit of
//! time, whatever they last. Use it to stay within a callee's quota (a paid API allowing 100
//! calls a second) or, with a bucket per client ([`KeyedRateLimiter`]), to keep one client from
//! taking more than its share of a service.
//!
//! [`RateLimiter`] is a token bucket, kept as the generic cell rate algorithm (GCRA): one number,
//! the theoretical arrival time of the next call. It allows `n` calls per second (or minute) on
//! average, and up to `burst` in a row after a quiet spell; by default the burst is one period's
//! worth, `n`. A call over the limit is refused at once with [`RateLimited`], whose
//! [`retry_after`](RateLimited::retry_after) says when the next call would be allowed; a caller
//! that may wait a little for its turn asks [`RateLimiter::acquire`] or
//! [`RateLimiter::call_waiting`] instead. The check is one atomic compare-and-swap, with no
//! allocation and no lock.
//!
//! # Time
//!
//! Reading a clock costs more than the rest of the check (governor, the usual crate for this, spends
//! most of its ~12 ns there), so the limiter checks against the cached clock of
//! [`recent_nanos`](crate::clock::recent_nanos): one atomic load. That clock is never ahead of the
//! real time, and usually less than [`RECENT_RESOLUTION`](crate::clock::RECENT_RESOLUTION) (5 ms)
//! behind it (more only while the machine is too starved to run the thread that refreshes it).
//! A call it would refuse is checked again against the real time, so no call the limit allows is
//! refused and [`retry_after`](RateLimited::retry_after) is exact. The price is on the other
//! side: a burst may exceed `burst` by what the clock's lag allows of the rate (five calls at 1,000
//! a second for a lag of 5 ms), as if those calls had come that much earlier; over any longer span
//! the rate holds.
//!
//! The cached clock does not follow tokio's paused clock, so tests that drive time with
//! `tokio::time::advance` build the limiter with
//! [`.clock(rampart_policy::clock::tokio_clock())`](RateLimiterBuilder::clock), or with a
//! [`ManualClock`](crate::clock::ManualClock) outside a runtime.
//!
//! # Directly, around any async call
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::{Error, Rejected};
//! use rampart_policy::ratelimit::RateLimiter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::per_second(100).burst(2).build()?;
//!
//! for _ in 0..2 {
//!     limiter.call(|| async { Ok::<_, std::io::Error>(()) }).await?;
//! }
//! match limiter.call(|| async { Ok::<_, std::io::Error>(()) }).await {
//!     Err(Error::Rejected(Rejected::RateLimited(limited))) => {
//!         assert!(limited.retry_after() <= Duration::from_millis(10));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # As a tower layer
//!
//! A call over the limit is refused from the response future, without calling the service below;
//! `poll_ready` only asks the service below, so a `tower::buffer::Buffer` in front is not
//! poisoned.
//!
//! ```
//! use rampart_policy::error::{is_caused_by, BoxError};
//! use rampart_policy::ratelimit::{error::RateLimited, RateLimitLayer, RateLimiter};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let limiter = RateLimiter::per_minute(1).build()?;
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service(service_fn(|request: u32| async move { Ok::<_, BoxError>(request) }));
//!
//! assert_eq!(service.clone().oneshot(1).await?, 1);
//! let err = service.oneshot(2).await.unwrap_err();
//! assert!(is_caused_by::<RateLimited>(&*err));
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod future;
mod keyed;
mod layer;

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tower_service::Service;

use self::error::{ConfigError, RateLimited};
use self::future::ResponseFuture;
pub use self::keyed::{KeyedRateLimitLayer, KeyedRateLimitService, KeyedRateLimiter};
pub use self::layer::RateLimitLayer;
use crate::clock::{SharedClock, TimeSource, saturating_nanos};
use crate::error::{BoxError, Error};
use crate::timeout::Deadline;

/// A token-bucket rate limit. Cheap to clone: clones share one bucket.
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

struct Shared {
    /// The theoretical arrival time of the next call, in nanoseconds on `time`'s timeline: the
    /// bucket is full when it is in the past, empty when it is `tolerance` ahead of now.
    tat: AtomicU64,
    rate: Rate,
    time: TimeSource,
}

/// A rate as GCRA keeps it.
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Nanoseconds for one call's worth to come back.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run: `interval * (burst - 1)`.
    tolerance: u64,
    burst: u32,
}

/// Configures a [`RateLimiter`]; made by [`RateLimiter::per_second`] and
/// [`RateLimiter::per_minute`].
#[derive(Clone, Debug)]
pub struct RateLimiterBuilder {
    rate: u32,
    per: Per,
    burst: Option<u32>,
    clock: Option<SharedClock>,
}

#[derive(Clone, Copy, Debug)]
enum Per {
    Second,
    Minute,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// A tower layer that puts this rate limit in front of a service; its services share it.
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer::new(self.clone())
    }

    /// Starts configuring a limit of `rate` calls per second, with a burst of `rate` by default.
    pub fn per_second(rate: u32) -> RateLimiterBuilder {
        RateLimiterBuilder::new(rate, Per::Second)
    }

    /// Starts configuring a limit of `rate` calls per minute, with a burst of `rate` by default.
    pub fn per_minute(rate: u32) -> RateLimiterBuilder {
        RateLimiterBuilder::new(rate, Per::Minute)
    }

    /// Takes one call's worth from the bucket, or says how long until one is there.
    #[inline]
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        let shared = &*self.shared;
        match shared.admit(shared.time.nanos()) {
            Ok(()) => Ok(()),
            Err(_) => shared.admit_precisely(),
        }
    }

    /// How long until the limit would admit a call, taking none: zero when it would now. What
    /// a refused caller may be told to wait (an HTTP `Retry-After`).
    pub fn time_to_ready(&self) -> Duration {
        let shared = &*self.shared;
        let tat = shared.tat.load(Relaxed);
        match shared.rate.step(tat, shared.time.precise_nanos(), 0) {
            Ok(_) => Duration::ZERO,
            Err(wait) => Duration::from_nanos(wait),
        }
    }

    /// Calls `f` if the limit allows a call now.
    ///
    /// Fails with [`Rejected::RateLimited`](crate::Rejected::RateLimited) at once, without
    /// calling `f`, when it does not; it never waits for the bucket to refill.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.try_acquire()
            .map_err(|limited| Error::Rejected(limited.into()))?;
        f().await.map_err(Error::Inner)
    }

    /// Takes one call's worth from the bucket, waiting for it up to `max_wait` (and never past
    /// the [`Deadline`] in force) when none is there: a caller that must stay within a quota and
    /// may wait a little for it, as with resilience4j's `timeoutDuration`. Refused with
    /// [`RateLimited`] at once when its turn would come later.
    ///
    /// A waiter reserves its turn as it asks and sleeps once, until it: waiters are served in
    /// the order they asked, and a call that does not wait cannot take a turn reserved before
    /// it. A waiter dropped before its turn leaves it unused, as a reservation in resilience4j
    /// does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rampart_policy::clock::tokio_clock;
    /// use rampart_policy::ratelimit::RateLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // Ten calls a second, one at a time: the second waits a tenth of a second.
    /// let limiter = RateLimiter::per_second(10).burst(1).clock(tokio_clock()).build().unwrap();
    /// limiter.acquire(Duration::ZERO).await.unwrap();
    /// assert!(limiter.acquire(Duration::from_millis(50)).await.is_err());
    /// limiter.acquire(Duration::from_millis(100)).await.unwrap();
    /// # }
    /// ```
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), RateLimited> {
        let max_wait = Deadline::cap_wait(max_wait);
        let shared = &*self.shared;
        match shared.reserve(shared.time.precise_nanos(), saturating_nanos(max_wait)) {
            Ok(0) => Ok(()),
            Ok(wait) => {
                tokio::time::sleep(Duration::from_nanos(wait)).await;
                Ok(())
            }
            Err(wait) => Err(RateLimited::new(Duration::from_nanos(wait))),
        }
    }

    /// Calls `f` once the limit allows a call, waiting for it up to `max_wait` as
    /// [`acquire`](Self::acquire) does; fails with
    /// [`Rejected::RateLimited`](crate::Rejected::RateLimited), without calling `f`, when it
    /// would have to wait longer.
    pub async fn call_waiting<F, Fut, T, E>(&self, max_wait: Duration, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.acquire(max_wait)
            .await
            .map_err(|limited| Error::Rejected(limited.into()))?;
        f().await.map_err(Error::Inner)
    }

    /// The most calls allowed in a row.
    pub fn burst(&self) -> u32 {
        self.shared.rate.burst
    }

    /// The time it takes for one call's worth to come back into the bucket.
    pub fn replenish_interval(&self) -> Duration {
        Duration::from_nanos(self.shared.rate.interval)
    }
}

// === impl Rate ===

impl Rate {
    /// One step of GCRA: with the next call's theoretical arrival time at `tat`, a call at `now`
    /// that may wait up to `max` nanoseconds waits `Ok((wait, next))`, `next` the theoretical
    /// arrival time after it; or, refused, would have to wait `Err(wait)`.
    #[inline]
    fn step(&self, tat: u64, now: u64, max: u64) -> Result<(u64, u64), u64> {
        let start = tat.max(now);
        let wait = (start - now).saturating_sub(self.tolerance);
        if wait > max {
            return Err(wait);
        }
        Ok((wait, start.saturating_add(self.interval)))
    }
}

// === impl Shared ===

impl Shared {
    /// Admits a call at `now`, or says how many nanoseconds until one would be admitted.
    #[inline]
    fn admit(&self, now: u64) -> Result<(), u64> {
        self.reserve(now, 0).map(|_| ())
    }

    /// Takes the next call's worth if it comes within `max` nanoseconds of `now`, and says in how
    /// many it does (0: there is one now); or, refusing, in how many it would.
    #[inline]
    fn reserve(&self, now: u64, max: u64) -> Result<u64, u64> {
        let mut tat = self.tat.load(Relaxed);
        loop {
            let (wait, next) = self.rate.step(tat, now, max)?;
            // Relaxed: the one number is all the state there is; it guards no other memory.
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(wait),
                Err(actual) => tat = actual,
            }
        }
    }

    /// The cached clock may lag: before refusing, look at the real time.
    #[cold]
    fn admit_precisely(&self) -> Result<(), RateLimited> {
        self.admit(self.time.precise_nanos())
            .map_err(|wait| RateLimited::new(Duration::from_nanos(wait)))
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("burst", &self.burst())
            .field("replenish_interval", &self.replenish_interval())
            .finish()
    }
}

// === impl RateLimiterBuilder ===

impl RateLimiterBuilder {
    fn new(rate: u32, per: Per) -> RateLimiterBuilder {
        RateLimiterBuilder {
            rate,
            per,
            burst: None,
            clock: None,
        }
    }

    /// The most calls allowed in a row after a quiet spell. Default: the rate, one period's
    /// worth.
    pub fn burst(mut self, burst: u32) -> RateLimiterBuilder {
        self.burst = Some(burst);
        self
    }

    /// Reads time from `clock` instead of the cached real-time clock: pass
    /// [`tokio_clock()`](crate::clock::tokio_clock) to follow tokio's paused clock in tests.
    pub fn clock(mut self, clock: SharedClock) -> RateLimiterBuilder {
        self.clock = Some(clock);
        self
    }

    /// Builds the limiter, or says why the configuration cannot work.
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                tat: AtomicU64::new(0),
                rate: self.rate()?,
                time: TimeSource::new(self.clock),
            }),
        })
    }

    /// Builds a limiter with a bucket of this rate and burst for each key (a client, a tenant),
    /// or says why the configuration cannot work; see [`KeyedRateLimiter`].
    pub fn build_keyed<K: Hash + Eq>(self) -> Result<KeyedRateLimiter<K>, ConfigError> {
        Ok(KeyedRateLimiter::new(
            self.rate()?,
            TimeSource::new(self.clock),
        ))
    }

    fn rate(&self) -> Result<Rate, ConfigError> {
        let per = match self.per {
            Per::Second => "second",
            Per::Minute => "minute",
        };
        if self.rate == 0 {
            return Err(ConfigError::ZeroRate { per });
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        let period = match self.per {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
        };
        // At least a nanosecond: a rate above a billion a second is no limit at all anyway.
        let interval = (saturating_nanos(period) / u64::from(self.rate)).max(1);
        Ok(Rate {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst) - 1),
            burst,
        })
    }
}

// === impl RateLimitService ===

/// A service whose calls are bounded by a [`RateLimiter`].
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S> RateLimitService<S> {
    /// Wraps `inner` so that its calls are bounded by `limiter`.
    pub fn new(inner: S, limiter: RateLimiter) -> RateLimitService<S> {
        RateLimitService { inner, limiter }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
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

impl<S, R> Service<R> for RateLimitService<S>
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
        match self.limiter.try_acquire() {
            Ok(()) => ResponseFuture::allowed(self.inner.call(request)),
            // The request is dropped unsent; the readiness it was given serves the next one.
            Err(limited) => ResponseFuture::limited(limited),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::advance;
    use tokio_test::{assert_ready_err, assert_ready_ok, task};
    use tower::{ServiceBuilder, ServiceExt, service_fn};
    use tower_test::mock;

    use super::*;
    use crate::clock::{ManualClock, tokio_clock};
    use crate::error::{Rejected, is_caused_by};
    use crate::test_util::next_request;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn on_tokio_time(builder: RateLimiterBuilder) -> RateLimiter {
        builder.clock(tokio_clock()).build().unwrap()
    }

    fn retry_after(limiter: &RateLimiter) -> Duration {
        limiter
            .try_acquire()
            .expect_err("expected the limit to be reached")
            .retry_after()
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_callers_get_their_turns_in_order_within_their_wait_and_no_later() {
        let limiter = on_tokio_time(RateLimiter::per_second(10).burst(1));
        let start = tokio::time::Instant::now();
        limiter.acquire(Duration::ZERO).await.unwrap();
        // The next token is 100 ms away: a 50 ms wait is refused at once.
        let refused = limiter.acquire(ms(50)).await.unwrap_err();
        assert_eq!(refused.retry_after(), ms(100));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "refused without waiting in vain"
        );
        // Two waiters take the next two turns, in the order they asked.
        let waiter = |max| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                limiter
                    .call_waiting(max, || async { Ok::<_, ()>(start.elapsed()) })
                    .await
                    .unwrap()
            })
        };
        let (first, second) = (waiter(ms(250)), waiter(ms(250)));
        tokio::task::yield_now().await;
        // A caller that does not wait finds the turns taken.
        assert!(limiter.try_acquire().is_err());
        assert_eq!(first.await.unwrap(), ms(100));
        assert_eq!(second.await.unwrap(), ms(200));
        // The deadline in force bounds the wait too, and its refusal comes at once.
        let before = tokio::time::Instant::now();
        let capped = Deadline::after(ms(20))
            .scope(limiter.acquire(Duration::MAX))
            .await;
        assert!(capped.is_err());
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[test]
    fn misconfigurations_are_refused_with_the_reason() {
        assert_eq!(
            RateLimiter::per_second(0).build().unwrap_err(),
            ConfigError::ZeroRate { per: "second" }
        );
        assert_eq!(
            RateLimiter::per_minute(0).build().unwrap_err(),
            ConfigError::ZeroRate { per: "minute" }
        );
        assert_eq!(
            RateLimiter::per_second(5).burst(0).build().unwrap_err(),
            ConfigError::ZeroBurst
        );
    }

    #[test]
    fn the_burst_defaults_to_one_period_worth() {
        let limiter = RateLimiter::per_second(50).build().unwrap();
        assert_eq!(limiter.burst(), 50);
        assert_eq!(limiter.replenish_interval(), ms(20));
        let limiter = RateLimiter::per_minute(6).build().unwrap();
        assert_eq!(limiter.burst(), 6);
        assert_eq!(limiter.replenish_interval(), Duration::from_secs(10));
        let limiter = RateLimiter::per_second(50).burst(3).build().unwrap();
        assert_eq!(limiter.burst(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_burst_then_rejects_with_the_time_to_the_next_call() {
        let limiter = on_tokio_time(RateLimiter::per_second(10));
        for i in 0..10 {
            assert!(
                limiter.try_acquire().is_ok(),
                "call {i} of the burst refused"
            );
        }
        assert_eq!(retry_after(&limiter), ms(100));
        advance(ms(40)).await;
        assert_eq!(retry_after(&limiter), ms(60));
        // The same wait, told without a call taken or refused.
        assert_eq!(limiter.time_to_ready(), ms(60));
        advance(ms(60)).await;
        assert_eq!(limiter.time_to_ready(), Duration::ZERO);
        assert!(limiter.try_acquire().is_ok(), "time_to_ready took nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn refills_one_call_per_interval() {
        let limiter = on_tokio_time(RateLimiter::per_second(10));
        while limiter.try_acquire().is_ok() {}

        advance(ms(99)).await;
        assert_eq!(retry_after(&limiter), ms(1));
        advance(ms(1)).await;
        assert!(limiter.try_acquire().is_ok());
        assert_eq!(retry_after(&limiter), ms(100));

        // A quiet spell refills the bucket up to the burst, and no further.
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            assert!(limiter.try_acquire().is_ok());
        }
        assert_eq!(retry_after(&limiter), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_smaller_burst_spreads_calls_out() {
        let limiter = on_tokio_time(RateLimiter::per_second(10).burst(2));
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_ok());
        assert_eq!(retry_after(&limiter), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn per_minute_refills_over_minutes() {
        let limiter = on_tokio_time(RateLimiter::per_minute(6));
        for _ in 0..6 {
            assert!(limiter.try_acquire().is_ok());
        }
        assert_eq!(retry_after(&limiter), Duration::from_secs(10));
        advance(Duration::from_secs(10)).await;
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_err());
    }

    #[test]
    fn a_manual_clock_drives_it_outside_a_runtime() {
        let clock = ManualClock::new();
        let limiter = RateLimiter::per_second(1)
            .clock(clock.clone())
            .build()
            .unwrap();
        assert!(limiter.try_acquire().is_ok());
        assert_eq!(retry_after(&limiter), Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(limiter.try_acquire().is_ok());
    }

    #[test]
    fn the_default_clock_limits_too() {
        // A minute per call: the second call cannot be allowed however slow the machine.
        let limiter = RateLimiter::per_minute(1).build().unwrap();
        assert!(limiter.try_acquire().is_ok());
        let retry_after = retry_after(&limiter);
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_bucket() {
        let limiter = on_tokio_time(RateLimiter::per_second(1));
        let clone = limiter.clone();
        assert!(limiter.try_acquire().is_ok());
        assert!(clone.try_acquire().is_err());
    }

    // === call ===

    #[tokio::test(start_paused = true)]
    async fn call_rejects_at_once_without_calling() {
        let limiter = on_tokio_time(RateLimiter::per_second(1));
        let calls = AtomicUsize::new(0);
        let call = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ()>(3) }
        };
        assert_eq!(limiter.call(call).await.unwrap(), 3);
        match limiter.call(call).await {
            Err(Error::Rejected(Rejected::RateLimited(limited))) => {
                assert_eq!(limited.retry_after(), Duration::from_secs(1));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn call_passes_the_inner_error_through() {
        let limiter = on_tokio_time(RateLimiter::per_second(1));
        let result = limiter.call(|| async { Err::<(), _>("boom") }).await;
        assert!(matches!(result, Err(Error::Inner("boom"))));
    }

    // === tower ===

    #[tokio::test(start_paused = true)]
    async fn service_rejects_from_the_response_future_without_calling() {
        let limiter = on_tokio_time(RateLimiter::per_second(1));
        let (mut service, mut handle) =
            mock::spawn_layer::<u32, u32, _>(RateLimitLayer::new(limiter));

        assert_ready_ok!(service.poll_ready());
        let mut first = task::spawn(service.call(1));
        let (request, send) = next_request(&mut handle).await;
        assert_eq!(request, 1);
        send.send_response(10);
        assert_eq!(assert_ready_ok!(first.poll()), 10);

        assert_ready_ok!(service.poll_ready());
        let mut second = task::spawn(service.call(2));
        let err = assert_ready_err!(second.poll());
        let limited = err.downcast_ref::<RateLimited>().expect("a RateLimited");
        assert_eq!(limited.retry_after(), Duration::from_secs(1));
        assert!(
            handle.poll_request().is_pending(),
            "the limited request was sent"
        );

        advance(Duration::from_secs(1)).await;
        assert_ready_ok!(service.poll_ready());
        let mut third = task::spawn(service.call(3));
        let (request, send) = next_request(&mut handle).await;
        assert_eq!(request, 3);
        send.send_error("inner failure");
        let err = assert_ready_err!(third.poll());
        assert_eq!(err.to_string(), "inner failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffer_in_front_is_not_poisoned() {
        let limiter = on_tokio_time(RateLimiter::per_second(1));
        let service = ServiceBuilder::new()
            .buffer(4)
            .layer(RateLimitLayer::new(limiter))
            .service(service_fn(|request: u32| async move {
                Ok::<_, BoxError>(request)
            }));
        assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
        let err = service.clone().oneshot(2).await.unwrap_err();
        assert!(is_caused_by::<RateLimited>(&*err));
        advance(Duration::from_secs(1)).await;
        assert_eq!(service.clone().oneshot(3).await.unwrap(), 3);
    }
}
