//! A pipeline as one tower layer: [`Pipeline::layer`].

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{Callee, Pipeline};
use crate::classify::Classify;
use crate::error::{BoxError, Error, Rejected};
use crate::request::{CloneRequest, Cloned};

/// Puts a [`Pipeline`] in front of a service; made by [`Pipeline::layer`].
///
/// Every service the layer makes shares the pipeline's policies (its breaker, budget and
/// limits), as clones of the pipeline do.
#[derive(Clone, Debug)]
pub struct PipelineLayer<C, P = Cloned> {
    pipeline: Pipeline<C>,
    clone_request: P,
}

/// A service behind a [`Pipeline`]: every stage in the pipeline's order around each request.
///
/// The instance the caller polled ready takes the first attempt, with the request as it came. A
/// retry or a hedge goes through a clone of the service, polled ready before any stage of its
/// attempt, as in a stack of tower layers: the wait holds no bulkhead place, breaker permit nor
/// rate-limit token and the attempt timeout does not count it, though the caller's deadline and
/// the total timeout bound it; a hedge is started, counted and paid for once its clone is ready.
/// An error of that wait is the attempt's, recorded by no policy (a retry may try another clone);
/// a hedge whose clone fails readiness is not sent.
///
/// When the pipeline retries or hedges, later attempts send copies of the request made by a
/// [`CloneRequest`]: by default the request's `Clone`, so a request type that is not `Clone` (an
/// `http::Request` with a streaming body) needs
/// [`with_clone_request`](PipelineLayer::with_clone_request), which may copy what it can and
/// decline the rest (`|_| None`): a request it declines is sent once, neither retried nor hedged.
///
/// Errors are boxed: the inner service's own, or the specific refusal of a policy
/// (`is_caused_by::<BreakerOpen>(&*err)` finds it). The pipeline's classifier sees each attempt's
/// result as a [`Pipeline::call`] gives it, `Result<S::Response, Error<BoxError>>`. The response
/// future is boxed, since the pipeline's stages are async functions.
pub struct PipelineService<S, C, P = Cloned> {
    inner: S,
    pipeline: Pipeline<C>,
    clone_request: P,
}

/// The future of a [`PipelineService`]'s response.
pub type ResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

// === impl Pipeline ===

impl<C: Clone> Pipeline<C> {
    /// A tower layer applying this pipeline to a service; see [`PipelineService`].
    pub fn layer(&self) -> PipelineLayer<C> {
        PipelineLayer {
            pipeline: self.clone(),
            clone_request: Cloned,
        }
    }
}

// === impl PipelineLayer ===

impl<C, P> PipelineLayer<C, P> {
    /// Copies requests for retries and hedges with `clone_request` instead.
    pub fn with_clone_request<P2>(self, clone_request: P2) -> PipelineLayer<C, P2> {
        PipelineLayer {
            pipeline: self.pipeline,
            clone_request,
        }
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for PipelineLayer<C, P> {
    type Service = PipelineService<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            pipeline: self.pipeline.clone(),
            clone_request: self.clone_request.clone(),
        }
    }
}

// === impl PipelineService ===

impl<S, C, P> PipelineService<S, C, P> {
    /// The pipeline this service applies.
    pub fn pipeline(&self) -> &Pipeline<C> {
        &self.pipeline
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, P: Clone> Clone for PipelineService<S, C, P> {
    fn clone(&self) -> Self {
        PipelineService {
            inner: self.inner.clone(),
            pipeline: self.pipeline.clone(),
            clone_request: self.clone_request.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, P> fmt::Debug for PipelineService<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineService")
            .field("inner", &self.inner)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, P> Service<Req> for PipelineService<S, C, P>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Req: Send + 'static,
    C: Classify<S::Response, Error<BoxError>> + Clone + Send + Sync + 'static,
    P: CloneRequest<Req> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // A request that may be sent again is copied before it goes, so that a copy stays to
        // make the next attempt's from; one that cannot be copied is sent once, with neither
        // retry nor hedge. The request itself goes first, as it came.
        let copy = self
            .pipeline
            .repeats()
            .then(|| self.clone_request.clone_request(&request))
            .flatten();
        // The instance polled ready goes with this request, for its first attempt; a clone
        // stays for the next caller to poll, and another for this request's later attempts.
        let spare = copy.as_ref().map(|_| self.inner.clone());
        let next = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, next);
        let callee = ServiceCallee {
            repeatable: copy.is_some(),
            state: Mutex::new(State {
                first: Some((ready, request)),
                spare,
                clone_request: self.clone_request.clone(),
                copy,
            }),
        };
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            pipeline.run(&callee).await.map_err(|err| match err {
                Error::Inner(err) => err,
                Error::Rejected(rejected) => rejected.into_box_error(),
            })
        })
    }
}

// === ServiceCallee ===

/// A tower service and one request, as the pipeline's attempts call them.
///
/// Behind a mutex, locked for an instant by each attempt, so that the response future is `Send`
/// whatever the service and the request (neither need be `Sync`).
struct ServiceCallee<S, Req, P> {
    repeatable: bool,
    state: Mutex<State<S, Req, P>>,
}

struct State<S, Req, P> {
    /// The instance the caller polled ready and the request, until the first attempt takes them.
    first: Option<(S, Req)>,
    /// Cloned for every later attempt, if there may be one.
    spare: Option<S>,
    clone_request: P,
    /// What later attempts send copies of, if there may be one.
    copy: Option<Req>,
}

impl<S, Req, P> ServiceCallee<S, Req, P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S, Req, P>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S, Req, P> Callee for ServiceCallee<S, Req, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: CloneRequest<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Ready = (S, Req);

    async fn ready(&self) -> Result<(S, Req), BoxError> {
        let (mut service, request) = {
            let mut state = self.lock();
            if let Some(first) = state.first.take() {
                return Ok(first);
            }
            let State {
                spare,
                clone_request,
                copy,
                ..
            } = &mut *state;
            let request = copy
                .as_ref()
                .and_then(|copy| clone_request.clone_request(copy));
            match (spare.clone(), request) {
                (Some(service), Some(request)) => (service, request),
                _ => return Err(NotCopied.into()),
            }
        };
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        Ok((service, request))
    }

    fn call(
        &self,
        (mut service, request): (S, Req),
    ) -> impl Future<Output = Result<S::Response, BoxError>> {
        let response = service.call(request);
        async move { response.await.map_err(Into::into) }
    }

    fn repeatable(&self) -> bool {
        self.repeatable
    }

    fn refusal(&self, err: &BoxError) -> Option<Rejected> {
        Rejected::from_below(&**err)
    }
}

/// A retry or a hedge found no request to send: its [`CloneRequest`] copied the request once,
/// then declined to copy it again. The attempt ends before any stage, recorded by no policy.
#[derive(Debug, thiserror::Error)]
#[error("the request could not be copied for another attempt")]
pub struct NotCopied;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::time::Duration;

    use tokio::time::{Instant, Sleep, sleep, timeout};
    use tower::limit::ConcurrencyLimit;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::breaker::error::BreakerOpen;
    use crate::breaker::{CircuitBreaker, State};
    use crate::error::is_caused_by;
    use crate::hedge::{Hedge, HedgeDelay};
    use crate::pipeline::tests::{breaker, retry};
    use crate::timeout::error::DeadlineExceeded;
    use crate::timeout::{Deadline, DeadlineLayer};

    const MS: Duration = Duration::from_millis(1);

    /// A service failing its first `failures` calls, counting every call it gets.
    fn flaky(
        failures: u32,
    ) -> (
        Arc<AtomicU32>,
        impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let service = service_fn(move |request: u32| {
            let n = counter.fetch_add(1, SeqCst);
            async move {
                if n < failures {
                    Err(BoxError::from("down"))
                } else {
                    Ok(request)
                }
            }
        });
        (calls, service)
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_goes_through_an_instance_polled_ready_and_gives_its_place_back() {
        // A concurrency limit of one panics when called unready and holds its one place from
        // readiness to the response: a retry on an unready clone, or a readiness reserved and
        // never used, shows.
        let (calls, service) = flaky(2);
        let pipeline = Pipeline::builder().retry(retry(3)).build();
        let mut service = pipeline.layer().layer(ConcurrencyLimit::new(service, 1));
        for request in [7, 8] {
            let call = async { service.ready().await?.call(request).await };
            let answer = timeout(Duration::from_secs(10), call)
                .await
                .expect("every place taken is given back");
            assert_eq!(answer.unwrap(), request);
        }
        assert_eq!(calls.load(SeqCst), 4);
    }

    /// A service whose clones need `warm_up` to get ready, failing its first call.
    struct SlowToReady {
        warm_up: Option<Pin<Box<Sleep>>>,
        delay: Duration,
        calls: Arc<AtomicU32>,
    }

    impl Clone for SlowToReady {
        fn clone(&self) -> Self {
            SlowToReady {
                warm_up: Some(Box::pin(sleep(self.delay))),
                delay: self.delay,
                calls: self.calls.clone(),
            }
        }
    }

    impl Service<u32> for SlowToReady {
        type Response = u32;
        type Error = BoxError;
        type Future = std::future::Ready<Result<u32, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if let Some(warm_up) = &mut self.warm_up {
                std::task::ready!(warm_up.as_mut().poll(cx));
                self.warm_up = None;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            assert!(self.warm_up.is_none(), "called before it was ready");
            let n = self.calls.fetch_add(1, SeqCst);
            std::future::ready(if n == 0 {
                Err("down".into())
            } else {
                Ok(request)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_for_readiness_outside_its_attempt_timeout() {
        let calls = Arc::new(AtomicU32::new(0));
        let inner = SlowToReady {
            warm_up: None,
            delay: 300 * MS,
            calls: calls.clone(),
        };
        let pipeline = Pipeline::builder()
            .retry(retry(2))
            .attempt_timeout(100 * MS)
            .build();
        let service = pipeline.layer().layer(inner);
        let start = Instant::now();
        // The retry's clone takes 300 ms to get ready: longer than an attempt may take, but
        // the attempt starts once it is ready, and answers at once.
        assert_eq!(service.oneshot(5).await.unwrap(), 5);
        assert!(start.elapsed() >= 300 * MS);
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_be_copied_is_sent_once() {
        let (calls, inner) = flaky(u32::MAX);
        let pipeline = Pipeline::builder().retry(retry(3)).build();
        let layer = pipeline.layer().with_clone_request(|_: &u32| None);
        let err = layer.layer(inner).oneshot(1).await.unwrap_err();
        assert_eq!(err.to_string(), "down");
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breakers_refusal_comes_boxed() {
        let (calls, inner) = flaky(u32::MAX);
        let pipeline = Pipeline::builder()
            .retry(retry(3))
            .breaker(breaker(3))
            .build();
        let service = pipeline.layer().layer(inner);
        // Three failed attempts open the breaker; the next call is refused without a call.
        let err = service.clone().oneshot(1).await.unwrap_err();
        assert_eq!(err.to_string(), "down");
        let err = service.oneshot(1).await.unwrap_err();
        assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
        assert_eq!(calls.load(SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passed_below_is_neither_retried_nor_held_against_the_service() {
        // The pipeline over a `DeadlineLayer`, as in an axum stack whose requests carry their
        // deadline: the deadline is in force below the pipeline only, and its refusal comes up
        // boxed. The service is healthy, only slower than this caller may wait.
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let slow = service_fn(move |_: Deadline| {
            counter.fetch_add(1, SeqCst);
            async {
                sleep(100 * MS).await;
                Ok::<_, BoxError>(())
            }
        });
        let breaker = breaker(3);
        // A total timeout of its own, far from passing: the refusal is the deadline's still.
        let pipeline = Pipeline::builder()
            .retry(retry(3))
            .breaker(breaker.clone())
            .timeout(Duration::from_secs(5))
            .build();
        let service = pipeline.layer().layer(DeadlineLayer::new().layer(slow));
        for _ in 0..3 {
            let started = Instant::now();
            let err = service
                .clone()
                .oneshot(Deadline::after(50 * MS))
                .await
                .unwrap_err();
            assert!(is_caused_by::<DeadlineExceeded>(&*err), "{err}");
            assert_eq!(started.elapsed(), 50 * MS);
        }
        assert_eq!(calls.load(SeqCst), 3, "one attempt a call");
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_from_below_is_not_retried() {
        // A breaker layer below the pipeline, forced open: trying again at once meets the same
        // refusal, as a `RetryTransient` over the layers would decide.
        let (calls, inner) = flaky(0);
        let below = CircuitBreaker::new();
        below.force_open();
        let pipeline = Pipeline::builder().retry(retry(3)).build();
        let service = pipeline.layer().layer(below.layer().layer(inner));
        let start = Instant::now();
        let err = service.oneshot(1).await.unwrap_err();
        assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
        assert_eq!(start.elapsed(), Duration::ZERO, "no backoff slept");
        assert_eq!(calls.load(SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_from_below_is_not_held_against_the_service() {
        // A breaker layer below the pipeline's, forced open: the service is never called, so
        // the pipeline's breaker has nothing to hold against it.
        let (calls, inner) = flaky(0);
        let below = CircuitBreaker::new();
        below.force_open();
        let breaker = breaker(3);
        let pipeline = Pipeline::builder().breaker(breaker.clone()).build();
        let service = pipeline.layer().layer(below.layer().layer(inner));
        for _ in 0..3 {
            let err = service.clone().oneshot(1).await.unwrap_err();
            assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
        }
        assert_eq!(calls.load(SeqCst), 0);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().failures, 0);
    }

    /// A service whose calls never answer.
    fn hung() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
        service_fn(|request: u32| async move {
            sleep(Duration::from_secs(3600)).await;
            Ok(request)
        })
    }

    /// Whether `service` gets ready within ten seconds: its places were given back.
    async fn gets_ready<S: Service<u32>>(service: &mut S) -> bool {
        timeout(Duration::from_secs(10), service.ready())
            .await
            .is_ok_and(|ready| ready.is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_first_attempt_gives_the_callers_place_back() {
        let breaker = breaker(1);
        breaker.force_open();
        let pipeline = Pipeline::builder().breaker(breaker).build();
        let mut service = pipeline.layer().layer(ConcurrencyLimit::new(hung(), 1));
        let err = service.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
        assert!(gets_ready(&mut service).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_response_gives_every_place_back() {
        let hedge = Hedge::new(HedgeDelay::Fixed(10 * MS)).unwrap();
        let pipeline = Pipeline::builder().hedge(hedge).retry(retry(2)).build();
        let mut service = pipeline.layer().layer(ConcurrencyLimit::new(hung(), 2));
        let response = service.ready().await.unwrap().call(1);
        // The attempt and its hedge both hang, each holding a place, until the caller gives up.
        assert!(timeout(100 * MS, response).await.is_err());
        assert!(gets_ready(&mut service).await);
        let mut other = service.clone();
        assert!(gets_ready(&mut other).await, "the second place");
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_bounds_a_wait_for_readiness() {
        let calls = Arc::new(AtomicU32::new(0));
        let inner = SlowToReady {
            warm_up: None,
            delay: 300 * MS,
            calls: calls.clone(),
        };
        let pipeline = Pipeline::builder().retry(retry(2)).build();
        let service = pipeline.layer().layer(inner);
        let start = Instant::now();
        let err = Deadline::after(100 * MS)
            .scope(service.oneshot(5))
            .await
            .unwrap_err();
        assert!(is_caused_by::<DeadlineExceeded>(&*err), "{err}");
        assert_eq!(start.elapsed(), 100 * MS);
        assert_eq!(calls.load(SeqCst), 1, "the retry never got ready");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_is_sent_and_counted_only_once_its_clone_is_ready() {
        // One place, held by the first attempt: the hedge due at 50 ms cannot get ready before
        // the first attempt answers at 200 ms, and is never sent.
        let inner = service_fn(|request: u32| async move {
            sleep(200 * MS).await;
            Ok::<_, BoxError>(request)
        });
        let hedge = Hedge::new(HedgeDelay::Fixed(50 * MS)).unwrap();
        let pipeline = Pipeline::builder().hedge(hedge.clone()).build();
        let service = pipeline.layer().layer(ConcurrencyLimit::new(inner, 1));
        let start = Instant::now();
        assert_eq!(service.oneshot(3).await.unwrap(), 3);
        assert_eq!(start.elapsed(), 200 * MS);
        assert_eq!(hedge.hedges_sent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_is_hedged_through_a_clone_polled_ready() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        // The first call hangs; the hedge answers at once.
        let inner = service_fn(move |request: u32| {
            let n = counter.fetch_add(1, SeqCst);
            async move {
                if n == 0 {
                    sleep(Duration::from_secs(3600)).await;
                }
                Ok::<_, BoxError>(request + n)
            }
        });
        let hedge = Hedge::new(HedgeDelay::Fixed(50 * MS)).unwrap();
        let pipeline = Pipeline::builder().hedge(hedge).build();
        let service = pipeline.layer().layer(ConcurrencyLimit::new(inner, 2));
        let start = Instant::now();
        assert_eq!(service.oneshot(10).await.unwrap(), 11);
        assert_eq!(start.elapsed(), 50 * MS);
    }
}
