//! Fallback: answer with a substitute when a call fails or a policy refuses it.
//!
//! Failing fast protects the caller, but its own clients still want an answer: a cached value, a
//! default, a degraded response, a message saying "try later". A [`Fallback`] wraps a call (or a
//! whole stack of policies, which is why it sits outermost) and, when the outcome is a failure,
//! calls a fallback function and answers with what it returns, telling it why in a
//! [`FallbackReason`]:
//!
//! - [`FallbackReason::Rejected`]: a policy refused or cut the call short (breaker open, timeout,
//!   bulkhead full, rate limited, ...). The callee may be fine; only its protection said no.
//! - [`FallbackReason::Failed`]: the call ran and returned an error.
//! - [`FallbackReason::FailedResponse`]: the call returned `Ok`, but the [`Classify`] judged it a
//!   failure (an HTTP 503, say).
//!
//! By default every reason triggers the fallback; [`Fallback::on`] narrows that down with
//! [`FallbackOn`], and the other outcomes pass through untouched, as do successes.
//!
//! The reason is owned, not borrowed: an async fallback can keep it across its own awaits, and can
//! hand the error back (`Err(e)`) when it has nothing better to say.
//!
//! # Directly, around any async call
//!
//! The wrapped call returns `Result<T, rampart_policy::Error<E>>`, the result of the other
//! policies' `call`, so that the fallback can tell refusals from failures. Wrap a bare call's
//! error with `.map_err(Error::Inner)`.
//!
//! ```
//! use rampart_policy::fallback::{Fallback, FallbackOn, FallbackReason};
//! use rampart_policy::Error;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let fallback = Fallback::new(|reason: FallbackReason<String, std::io::Error>| async move {
//!     Ok(format!("cached answer ({reason})"))
//! });
//! let answer = fallback
//!     .call(|| async { Err(Error::Inner(std::io::Error::other("connection reset"))) })
//!     .await;
//! assert_eq!(answer.unwrap(), "cached answer (failed: connection reset)");
//!
//! // Only when a policy refused: the call's own errors pass through.
//! let defaults = Fallback::value(String::from("default")).on(FallbackOn::REJECTED);
//! let answer = defaults
//!     .call(|| async { Err::<String, _>(Error::Inner(std::io::Error::other("bad request"))) })
//!     .await;
//! assert!(matches!(answer, Err(Error::Inner(_))));
//! # }
//! ```
//!
//! # As a tower layer
//!
//! Over a service whose error converts into a [`BoxError`]: a rejection is recognised as the
//! error itself or its direct source (a policy layer's error, or one wrapping it once); one
//! wrapped deeper is a failure like any other.
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::error::BoxError;
//! use rampart_policy::fallback::{Fallback, FallbackLayer, FallbackReason};
//! use rampart_policy::timeout::error::Elapsed;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let fallback = Fallback::new(|reason: FallbackReason<&'static str, BoxError>| async move {
//!     match reason {
//!         FallbackReason::Rejected(_) => Ok("busy, try later"),
//!         _ => Ok("something went wrong"),
//!     }
//! });
//! let service = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(fallback))
//!     .service_fn(|_: ()| async {
//!         Err::<&'static str, BoxError>(Box::new(Elapsed::new(Duration::from_secs(1))))
//!     });
//! assert_eq!(service.oneshot(()).await?, "busy, try later");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::ops::BitOr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::classify::{Classify, ErrorsAreFailures};
use crate::error::{BoxError, Error, Rejected};

pub mod future;
mod layer;

pub use self::layer::FallbackLayer;

use self::future::ResponseFuture;

/// Why the fallback was called; it owns what the call produced.
#[derive(Debug)]
pub enum FallbackReason<T, E> {
    /// A policy refused the call or cut it short.
    Rejected(Rejected),
    /// The call returned this error, classified as a failure.
    Failed(E),
    /// The call returned this answer, but it was classified as a failure (an HTTP 503, say).
    FailedResponse(T),
}

/// Which reasons call the fallback; combine with `|`. Default [`FallbackOn::ALL`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FallbackOn(u8);

/// A fallback function: what [`Fallback`] calls with the reason.
///
/// Implemented for every `Fn(FallbackReason<T, E>) -> impl Future<Output = Result<T, E>>` and for
/// [`Value`]; there is rarely a reason to implement it by hand.
pub trait FallbackFn<T, E> {
    /// The future of the substitute answer.
    type Future: Future<Output = Result<T, E>>;

    /// Starts producing the substitute answer.
    fn call(&self, reason: FallbackReason<T, E>) -> Self::Future;
}

/// A fallback answering a clone of a fixed value, whatever the reason.
#[derive(Clone, Debug)]
pub struct Value<T>(T);

/// A fallback policy: substitutes an answer for a failed or refused call. Cheap to clone.
///
/// `T` and `E` are the answer and error types of the calls it wraps (`E` is [`BoxError`] in a
/// tower stack); `F` the fallback function.
pub struct Fallback<T, E, F> {
    fallback: Arc<F>,
    on: FallbackOn,
    _types: PhantomData<fn() -> (T, E)>,
}

/// A tower service answering with a fallback when its inner service fails or is refused.
#[derive(Debug)]
pub struct FallbackService<S, F, C = ErrorsAreFailures> {
    inner: S,
    fallback: Arc<F>,
    on: FallbackOn,
    classify: C,
    // The inner service's readiness error, reported as ready so that the next call answers it.
    unready: Option<BoxError>,
}

// === impl FallbackReason ===

impl<T, E> FallbackReason<T, E> {
    /// The [`FallbackOn`] flag of this reason.
    pub fn kind(&self) -> FallbackOn {
        match self {
            FallbackReason::Rejected(_) => FallbackOn::REJECTED,
            FallbackReason::Failed(_) => FallbackOn::FAILED,
            FallbackReason::FailedResponse(_) => FallbackOn::FAILED_RESPONSE,
        }
    }

    /// The policy's refusal, if that is the reason.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            FallbackReason::Rejected(rejected) => Some(rejected),
            _ => None,
        }
    }
}

impl<T, E: fmt::Display> fmt::Display for FallbackReason<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::Rejected(rejected) => write!(f, "rejected: {rejected}"),
            FallbackReason::Failed(error) => write!(f, "failed: {error}"),
            FallbackReason::FailedResponse(_) => f.write_str("failed response"),
        }
    }
}

// === impl FallbackOn ===

impl FallbackOn {
    /// When a policy refused the call: [`FallbackReason::Rejected`].
    pub const REJECTED: FallbackOn = FallbackOn(1);
    /// When the call returned an error classified as a failure: [`FallbackReason::Failed`].
    pub const FAILED: FallbackOn = FallbackOn(1 << 1);
    /// When the call answered, but the answer was classified as a failure:
    /// [`FallbackReason::FailedResponse`].
    pub const FAILED_RESPONSE: FallbackOn = FallbackOn(1 << 2);
    /// On every reason.
    pub const ALL: FallbackOn = FallbackOn(0b111);

    /// Whether every reason in `other` is in `self`.
    pub fn contains(self, other: FallbackOn) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for FallbackOn {
    type Output = FallbackOn;

    fn bitor(self, other: FallbackOn) -> FallbackOn {
        FallbackOn(self.0 | other.0)
    }
}

impl Default for FallbackOn {
    fn default() -> FallbackOn {
        FallbackOn::ALL
    }
}

impl fmt::Debug for FallbackOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (FallbackOn::REJECTED, "REJECTED"),
            (FallbackOn::FAILED, "FAILED"),
            (FallbackOn::FAILED_RESPONSE, "FAILED_RESPONSE"),
        ];
        let mut set = f.debug_set();
        for (flag, name) in names {
            if self.contains(flag) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

// === impl FallbackFn ===

impl<T, E, F, Fut> FallbackFn<T, E> for F
where
    F: Fn(FallbackReason<T, E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Future = Fut;

    fn call(&self, reason: FallbackReason<T, E>) -> Fut {
        self(reason)
    }
}

impl<T: Clone, E> FallbackFn<T, E> for Value<T> {
    type Future = Ready<Result<T, E>>;

    fn call(&self, _: FallbackReason<T, E>) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

// === impl Fallback ===

impl<T, E, F, Fut> Fallback<T, E, F>
where
    F: Fn(FallbackReason<T, E>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    /// Falls back to the async function `fallback`, told why. Its `Err` becomes the call's
    /// error ([`Error::Inner`] directly, the boxed error in a tower stack).
    pub fn new(fallback: F) -> Fallback<T, E, F> {
        Fallback::with_fn(fallback)
    }
}

impl<T: Clone, E> Fallback<T, E, Value<T>> {
    /// Falls back to a clone of `value`.
    pub fn value(value: T) -> Fallback<T, E, Value<T>> {
        Fallback::with_fn(Value(value))
    }
}

impl<T, F> Fallback<T, BoxError, F> {
    /// A tower layer answering with this fallback when the service it wraps fails or a policy
    /// below refuses.
    pub fn layer(&self) -> FallbackLayer<F> {
        FallbackLayer::new(self.clone())
    }
}

impl<T, E, F> Fallback<T, E, F> {
    /// Falls back to any [`FallbackFn`].
    pub fn with_fn(fallback: F) -> Fallback<T, E, F> {
        Fallback {
            fallback: Arc::new(fallback),
            on: FallbackOn::ALL,
            _types: PhantomData,
        }
    }

    /// Calls the fallback only for these reasons; the others pass through untouched.
    pub fn on(mut self, on: FallbackOn) -> Fallback<T, E, F> {
        self.on = on;
        self
    }

    /// The reasons that call the fallback.
    pub fn reasons(&self) -> FallbackOn {
        self.on
    }
}

impl<T, E, F: FallbackFn<T, E>> Fallback<T, E, F> {
    /// Runs `f`; if it fails (by [`ErrorsAreFailures`]) or a policy refused it, answers with
    /// the fallback instead.
    ///
    /// `f` returns the result of another policy's `call`, `Result<T, Error<E>>`, so that
    /// refusals can be told from failures.
    pub async fn call<G, Fut>(&self, f: G) -> Result<T, Error<E>>
    where
        G: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error<E>>>,
    {
        self.call_classified(ErrorsAreFailures, f).await
    }

    /// Like [`call`](Self::call), judging results with `classify`: an `Ok` answer it calls a
    /// failure triggers [`FallbackReason::FailedResponse`], and an error it calls a success
    /// passes through.
    pub async fn call_classified<C, G, Fut>(&self, classify: C, f: G) -> Result<T, Error<E>>
    where
        C: Classify<T, E>,
        G: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error<E>>>,
    {
        self.answer_classified(classify, f)
            .await
            .map(|answer| answer.value)
    }

    /// Like [`call`](Self::call), and says whether the answer is the fallback's, and why: an
    /// application answering in part (a page without its reviews) must say which parts are
    /// stand-ins, and a proxy must mark a fallback response as such.
    ///
    /// ```
    /// use rampart_policy::breaker::CircuitBreaker;
    /// use rampart_policy::fallback::{Fallback, FellBack};
    /// use rampart_policy::Rejected;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = CircuitBreaker::new();
    /// breaker.force_open();
    /// let bestsellers = Fallback::value(vec!["lamp", "chair"]);
    /// let answer = bestsellers
    ///     .answer(|| breaker.call(|| async { Ok::<_, std::io::Error>(vec!["for you"]) }))
    ///     .await
    ///     .unwrap();
    /// assert_eq!(answer.value, ["lamp", "chair"]);
    /// assert!(matches!(answer.fell_back, Some(FellBack::Rejected(Rejected::BreakerOpen(_)))));
    /// # }
    /// ```
    pub async fn answer<G, Fut>(&self, f: G) -> Result<Answer<T>, Error<E>>
    where
        G: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error<E>>>,
    {
        self.answer_classified(ErrorsAreFailures, f).await
    }

    /// Like [`answer`](Self::answer), judging results with `classify`.
    pub async fn answer_classified<C, G, Fut>(
        &self,
        classify: C,
        f: G,
    ) -> Result<Answer<T>, Error<E>>
    where
        C: Classify<T, E>,
        G: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error<E>>>,
    {
        let result = match f().await {
            Ok(answer) => Ok(answer),
            Err(Error::Inner(error)) => Err(error),
            Err(Error::Rejected(rejected)) => {
                if !self.on.contains(FallbackOn::REJECTED) {
                    return Err(Error::Rejected(rejected));
                }
                return self.fall_back(FallbackReason::Rejected(rejected)).await;
            }
        };
        match judge(result, &classify, self.on) {
            Ok(passed) => passed.map(Answer::real).map_err(Error::Inner),
            Err(reason) => self.fall_back(reason).await,
        }
    }

    async fn fall_back(&self, reason: FallbackReason<T, E>) -> Result<Answer<T>, Error<E>> {
        let why = FellBack::from(&reason);
        let value = self.fallback.call(reason).await.map_err(Error::Inner)?;
        Ok(Answer {
            value,
            fell_back: Some(why),
        })
    }
}

/// An answer, and whether the fallback gave it; see [`Fallback::answer`].
#[derive(Clone, Debug, PartialEq)]
pub struct Answer<T> {
    /// The call's answer, or the fallback's.
    pub value: T,
    /// Why the fallback answered; `None` when the call did.
    pub fell_back: Option<FellBack>,
}

/// Why a fallback answered: a [`FallbackReason`] without what the call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FellBack {
    /// A policy refused the call or cut it short.
    Rejected(Rejected),
    /// The call returned an error classified as a failure.
    Failed,
    /// The call answered, but the answer was classified as a failure.
    FailedResponse,
}

impl<T> Answer<T> {
    fn real(value: T) -> Answer<T> {
        Answer {
            value,
            fell_back: None,
        }
    }

    /// Whether the fallback gave this answer.
    pub fn is_fallback(&self) -> bool {
        self.fell_back.is_some()
    }
}

impl<T, E> From<&FallbackReason<T, E>> for FellBack {
    fn from(reason: &FallbackReason<T, E>) -> FellBack {
        match reason {
            FallbackReason::Rejected(rejected) => FellBack::Rejected(rejected.clone()),
            FallbackReason::Failed(_) => FellBack::Failed,
            FallbackReason::FailedResponse(_) => FellBack::FailedResponse,
        }
    }
}

impl<T, E, F> Clone for Fallback<T, E, F> {
    fn clone(&self) -> Self {
        Fallback {
            fallback: self.fallback.clone(),
            on: self.on,
            _types: PhantomData,
        }
    }
}

impl<T, E, F> fmt::Debug for Fallback<T, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback").field("on", &self.on).finish()
    }
}

/// Sorts a result that got past the policies: `Ok` to pass it on, `Err` to fall back.
fn judge<T, E, C: Classify<T, E>>(
    result: Result<T, E>,
    classify: &C,
    on: FallbackOn,
) -> Result<Result<T, E>, FallbackReason<T, E>> {
    if !classify.classify(&result).is_failure() {
        return Ok(result);
    }
    match result {
        Ok(answer) if on.contains(FallbackOn::FAILED_RESPONSE) => {
            Err(FallbackReason::FailedResponse(answer))
        }
        Err(error) if on.contains(FallbackOn::FAILED) => Err(FallbackReason::Failed(error)),
        passed => Ok(passed),
    }
}

/// Sorts a tower service's result: `Ok` to pass it on, `Err` to fall back.
fn judge_boxed<T, C: Classify<T, BoxError>>(
    result: Result<T, BoxError>,
    classify: &C,
    on: FallbackOn,
) -> Result<Result<T, BoxError>, FallbackReason<T, BoxError>> {
    if let Err(error) = &result
        && let Some(rejected) = Rejected::from_below(&**error)
    {
        return if on.contains(FallbackOn::REJECTED) {
            Err(FallbackReason::Rejected(rejected))
        } else {
            Ok(result)
        };
    }
    judge(result, classify, on)
}

// === impl FallbackService ===

impl<S, F> FallbackService<S, F> {
    /// Answers with `fallback` when `inner` fails or is refused, counting errors as failures.
    pub fn new<T>(inner: S, fallback: Fallback<T, BoxError, F>) -> FallbackService<S, F> {
        FallbackService {
            inner,
            fallback: fallback.fallback,
            on: fallback.on,
            classify: ErrorsAreFailures,
            unready: None,
        }
    }
}

impl<S, F, C> FallbackService<S, F, C> {
    /// Judges results with `classify` (a [`Classify`] of the response and [`BoxError`]) instead.
    pub fn with_classify<C2>(self, classify: C2) -> FallbackService<S, F, C2> {
        FallbackService {
            inner: self.inner,
            fallback: self.fallback,
            on: self.on,
            classify,
            unready: self.unready,
        }
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

impl<S: Clone, F, C: Clone> Clone for FallbackService<S, F, C> {
    fn clone(&self) -> Self {
        FallbackService {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
            on: self.on,
            classify: self.classify.clone(),
            unready: None,
        }
    }
}

impl<S, Req, F, C> Service<Req> for FallbackService<S, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: FallbackFn<S::Response, BoxError>,
    C: Classify<S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F::Future, F, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.unready.is_some() {
            return Poll::Ready(Ok(()));
        }
        // Not ready is backpressure, not a failure: it is no reason to fall back. A readiness
        // error is one (a `Buffer` whose worker died, a service that gave up): it is judged,
        // and answered, by the next call, as that call's own error would be.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                self.unready = Some(error.into());
                Poll::Ready(Ok(()))
            }
            polled => polled.map_err(Into::into),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let fallback = self.fallback.clone();
        let classify = self.classify.clone();
        match self.unready.take() {
            Some(error) => ResponseFuture::unready(error, fallback, self.on, classify),
            None => ResponseFuture::new(self.inner.call(request), fallback, self.on, classify),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::time::sleep;
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;
    use crate::adaptive::error::LimitExceeded;
    use crate::breaker::error::BreakerOpen;
    use crate::bulkhead::error::BulkheadFull;
    use crate::classify::Outcome;
    use crate::timeout::error::Elapsed;

    type Reason = FallbackReason<u16, &'static str>;

    /// A fallback that says which reason it got, and counts its calls.
    fn telling(calls: &Arc<AtomicUsize>) -> impl Fn(Reason) -> Ready<Result<u16, &'static str>> {
        let calls = calls.clone();
        move |reason| {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(Ok(match reason {
                FallbackReason::Rejected(Rejected::BreakerOpen(_)) => 1,
                FallbackReason::Rejected(_) => 2,
                FallbackReason::Failed("boom") => 3,
                FallbackReason::Failed(_) => 4,
                FallbackReason::FailedResponse(503) => 5,
                FallbackReason::FailedResponse(_) => 6,
            }))
        }
    }

    fn status_classifier(result: &Result<u16, &'static str>) -> Outcome {
        match result {
            Ok(status) if *status >= 500 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err("not found") => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn breaker_open() -> Rejected {
        Rejected::BreakerOpen(BreakerOpen::new(None))
    }

    #[tokio::test]
    async fn success_passes_through_untouched() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fallback = Fallback::new(telling(&calls));
        assert_eq!(fallback.call(|| async { Ok(200) }).await.unwrap(), 200);
        let classified = fallback
            .call_classified(status_classifier, || async { Ok(404) })
            .await;
        assert_eq!(classified.unwrap(), 404);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_answer_says_whether_and_why_it_fell_back() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fallback = Fallback::new(telling(&calls));
        let real = fallback.answer(|| async { Ok(200) }).await.unwrap();
        assert_eq!(
            real,
            Answer {
                value: 200,
                fell_back: None
            }
        );
        assert!(!real.is_fallback());

        let refused = fallback
            .answer(|| async { Err(Error::Rejected(breaker_open())) })
            .await
            .unwrap();
        assert_eq!(refused.value, 1);
        assert_eq!(refused.fell_back, Some(FellBack::Rejected(breaker_open())));

        let failed = fallback
            .answer(|| async { Err(Error::Inner("boom")) })
            .await
            .unwrap();
        assert_eq!(
            (failed.value, failed.fell_back),
            (3, Some(FellBack::Failed))
        );

        let failed_response = fallback
            .answer_classified(status_classifier, || async { Ok(503) })
            .await
            .unwrap();
        assert_eq!(
            (failed_response.value, failed_response.fell_back),
            (5, Some(FellBack::FailedResponse))
        );
    }

    #[tokio::test]
    async fn each_reason_triggers_and_is_told() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fallback = Fallback::new(telling(&calls));

        let rejected = fallback
            .call(|| async { Err(Error::Rejected(breaker_open())) })
            .await;
        assert_eq!(rejected.unwrap(), 1);
        let timed_out = fallback
            .call(|| async {
                Err(Error::Rejected(Rejected::Timeout(Elapsed::new(
                    Duration::from_secs(1),
                ))))
            })
            .await;
        assert_eq!(timed_out.unwrap(), 2);
        let failed = fallback.call(|| async { Err(Error::Inner("boom")) }).await;
        assert_eq!(failed.unwrap(), 3);
        let failed_response = fallback
            .call_classified(status_classifier, || async { Ok(503) })
            .await;
        assert_eq!(failed_response.unwrap(), 5);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn reasons_not_selected_pass_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let only_rejections = Fallback::new(telling(&calls)).on(FallbackOn::REJECTED);
        let failed = only_rejections
            .call(|| async { Err(Error::Inner("boom")) })
            .await;
        assert!(matches!(failed, Err(Error::Inner("boom"))));
        let failed_response = only_rejections
            .call_classified(status_classifier, || async { Ok(503) })
            .await;
        assert_eq!(failed_response.unwrap(), 503);
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        let only_failures =
            Fallback::new(telling(&calls)).on(FallbackOn::FAILED | FallbackOn::FAILED_RESPONSE);
        let rejected = only_failures
            .call(|| async { Err(Error::Rejected(breaker_open())) })
            .await;
        assert!(matches!(
            rejected,
            Err(Error::Rejected(Rejected::BreakerOpen(_)))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            only_failures
                .call(|| async { Err(Error::Inner("boom")) })
                .await
                .unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn an_error_classified_as_success_passes_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fallback = Fallback::new(telling(&calls));
        let answer = fallback
            .call_classified(status_classifier, || async {
                Err(Error::Inner("not found"))
            })
            .await;
        assert!(matches!(answer, Err(Error::Inner("not found"))));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_fallback_can_fail_in_turn() {
        let fallback = Fallback::new(|reason: Reason| async move {
            sleep(Duration::from_millis(10)).await;
            match reason {
                FallbackReason::Failed(e) => Err(e),
                _ => Ok(0),
            }
        });
        let answer = fallback.call(|| async { Err(Error::Inner("boom")) }).await;
        assert!(matches!(answer, Err(Error::Inner("boom"))));
    }

    #[tokio::test]
    async fn a_value_answers_every_reason() {
        let fallback = Fallback::<_, &str, _>::value(7u16);
        assert_eq!(
            fallback
                .call(|| async { Err(Error::Rejected(breaker_open())) })
                .await
                .unwrap(),
            7
        );
        assert_eq!(
            fallback
                .call(|| async { Err(Error::Inner("x")) })
                .await
                .unwrap(),
            7
        );
        assert_eq!(fallback.call(|| async { Ok(1) }).await.unwrap(), 1);
    }

    #[test]
    fn reason_flags_combine() {
        let on = FallbackOn::REJECTED | FallbackOn::FAILED;
        assert!(on.contains(FallbackOn::REJECTED));
        assert!(!on.contains(FallbackOn::FAILED_RESPONSE));
        assert!(FallbackOn::ALL.contains(on));
        assert_eq!(FallbackOn::default(), FallbackOn::ALL);
        assert_eq!(format!("{on:?}"), "{REJECTED, FAILED}");
        let reason: Reason = FallbackReason::Failed("x");
        assert_eq!(reason.kind(), FallbackOn::FAILED);
        assert_eq!(reason.to_string(), "failed: x");
    }

    // --- tower ---

    /// A wrapper error, to show that rejections are found anywhere in the chain.
    #[derive(Debug, thiserror::Error)]
    #[error("while calling upstream")]
    struct Wrapped(#[source] BoxError);

    type BoxReason = FallbackReason<u16, BoxError>;

    fn service_failing_with(
        make: fn() -> Result<u16, BoxError>,
    ) -> impl Service<(), Response = u16, Error = BoxError, Future = Ready<Result<u16, BoxError>>> + Clone
    {
        tower::service_fn(move |()| ready(make()))
    }

    fn telling_boxed(
        calls: &Arc<AtomicUsize>,
    ) -> Fallback<u16, BoxError, impl Fn(BoxReason) -> Ready<Result<u16, BoxError>>> {
        let calls = calls.clone();
        Fallback::new(move |reason: BoxReason| {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(Ok(match reason {
                FallbackReason::Rejected(Rejected::BulkheadFull(_)) => 1,
                FallbackReason::Rejected(Rejected::Timeout(_)) => 2,
                FallbackReason::Rejected(_) => 3,
                FallbackReason::Failed(e) if e.to_string() == "boom" => 4,
                FallbackReason::Failed(_) => 5,
                FallbackReason::FailedResponse(status) => status + 1000,
            }))
        })
    }

    #[tokio::test]
    async fn layer_tells_each_reason() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = FallbackLayer::new(telling_boxed(&calls));

        let full = layer.layer(service_failing_with(|| {
            Err(Box::new(BulkheadFull::new(4, false)))
        }));
        assert_eq!(full.oneshot(()).await.unwrap(), 1);

        let wrapped_timeout = layer.layer(service_failing_with(|| {
            Err(Box::new(Wrapped(Box::new(Elapsed::new(
                Duration::from_secs(1),
            )))))
        }));
        assert_eq!(wrapped_timeout.oneshot(()).await.unwrap(), 2);

        let as_rejected = layer.layer(service_failing_with(|| {
            Err(Box::new(Rejected::LimitExceeded(LimitExceeded::new(3))))
        }));
        assert_eq!(as_rejected.oneshot(()).await.unwrap(), 3);

        let failed = layer.layer(service_failing_with(|| Err("boom".into())));
        assert_eq!(failed.oneshot(()).await.unwrap(), 4);

        let classify = |r: &Result<u16, BoxError>| match r {
            Ok(503) | Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        };
        let failed_response = layer
            .clone()
            .with_classify(classify)
            .layer(service_failing_with(|| Ok(503)));
        assert_eq!(failed_response.oneshot(()).await.unwrap(), 1503);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn layer_passes_success_and_unselected_reasons_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = FallbackLayer::new(telling_boxed(&calls).on(FallbackOn::REJECTED));

        let ok = layer.layer(service_failing_with(|| Ok(200)));
        assert_eq!(ok.oneshot(()).await.unwrap(), 200);

        let failed = layer.layer(service_failing_with(|| Err("boom".into())));
        assert_eq!(failed.oneshot(()).await.unwrap_err().to_string(), "boom");

        let only_failures = FallbackLayer::new(telling_boxed(&calls).on(FallbackOn::FAILED));
        let rejected = only_failures.layer(service_failing_with(|| {
            Err(Box::new(BulkheadFull::new(4, false)))
        }));
        let err = rejected.oneshot(()).await.unwrap_err();
        assert!(crate::error::is_caused_by::<BulkheadFull>(&*err));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_readiness_error_is_answered_as_the_calls_own() {
        /// A service that will never be ready again, as a `Buffer` whose worker died.
        struct Dead;
        impl Service<()> for Dead {
            type Response = u16;
            type Error = BoxError;
            type Future = Ready<Result<u16, BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Err("boom".into()))
            }
            fn call(&mut self, (): ()) -> Self::Future {
                unreachable!("never ready")
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let answered = FallbackLayer::new(telling_boxed(&calls)).layer(Dead);
        assert_eq!(answered.oneshot(()).await.unwrap(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A reason the fallback is not for: the error comes out of the call.
        let only_refusals = FallbackLayer::new(telling_boxed(&calls).on(FallbackOn::REJECTED));
        let err = only_refusals.layer(Dead).oneshot(()).await.unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn layer_over_a_mock_falls_back_on_answers_not_on_readiness() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (mut service, mut handle) =
            mock::spawn_layer::<(), u16, _>(FallbackLayer::new(telling_boxed(&calls)));

        // Not ready is backpressure: the layer says so too, and nothing falls back.
        handle.allow(0);
        assert_pending!(service.poll_ready());
        assert_eq!(calls.load(Ordering::SeqCst), 0);

        // Each answer, in turn: one call allowed at a time.
        let mut answer = |respond: fn(mock::SendResponse<u16>)| {
            handle.allow(1);
            assert_ready_ok!(service.poll_ready());
            let mut response = task::spawn(service.call(()));
            assert_pending!(response.poll());
            let ((), send) = assert_ready!(handle.poll_request()).expect("the request was sent");
            respond(send);
            assert_ready!(response.poll())
        };
        assert_eq!(answer(|send| send.send_response(200)).unwrap(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "a success passes through");
        // The fallback tells the reason: 4 for `Failed("boom")`, 1 for a `BulkheadFull` refusal.
        assert_eq!(answer(|send| send.send_error("boom")).unwrap(), 4);
        let rejected_below = |send: mock::SendResponse<u16>| {
            send.send_error(Wrapped(Box::new(BulkheadFull::new(4, false))));
        };
        assert_eq!(answer(rejected_below).unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn layer_awaits_an_async_fallback() {
        let fallback = Fallback::new(|reason: BoxReason| async move {
            sleep(Duration::from_millis(5)).await;
            match reason {
                FallbackReason::Failed(e) => Err(e),
                _ => Ok(0),
            }
        });
        let service =
            FallbackLayer::new(fallback).layer(service_failing_with(|| Err("still broken".into())));
        let err = service.oneshot(()).await.unwrap_err();
        assert_eq!(err.to_string(), "still broken");
    }
}
