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
use crate::error::{BoxError, Error};
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
/// The instance the caller polled ready takes the first attempt; a retry or a hedge goes through
/// a clone of the service, polled ready before any stage of its attempt is entered (as in a stack
/// of tower layers: waiting for readiness holds no bulkhead place nor breaker permit, and the
/// attempt timeout does not count it). An error of that wait ends the attempt as a failure of
/// the service would. When the pipeline retries or hedges, each attempt sends a copy of the
/// request made by a [`CloneRequest`] (by default the request's `Clone`); a request it declines
/// to copy is sent once, with neither retry nor hedge.
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
    P: CloneRequest<Req> + Send + 'static,
    P: Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The instance polled ready goes with this request, for its first attempt; a clone
        // stays for the next caller to poll.
        let spare = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, spare.clone());
        // A request that may be sent again is copied for each attempt, the first included, so
        // that the original stays to copy from; one that cannot be copied is sent once, with
        // neither retry nor hedge.
        let (first, original) = match self.pipeline.repeats() {
            true => match self.clone_request.clone_request(&request) {
                Some(copy) => (copy, Some(request)),
                None => (request, None),
            },
            false => (request, None),
        };
        let callee = ServiceCallee {
            repeatable: original.is_some(),
            state: Mutex::new(State {
                ready: Some(ready),
                spare,
                copy: self.clone_request.clone(),
                first: Some(first),
                original,
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
    /// The instance the caller polled ready, until the first attempt takes it.
    ready: Option<S>,
    /// Cloned for every later attempt.
    spare: S,
    copy: P,
    /// The first attempt's request, until it takes it.
    first: Option<Req>,
    /// What later attempts send copies of, when the request may be sent again.
    original: Option<Req>,
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
    type Ready = S;

    async fn ready(&self) -> Result<S, BoxError> {
        let taken = self.lock().ready.take();
        if let Some(ready) = taken {
            return Ok(ready);
        }
        let mut service = self.lock().spare.clone();
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        Ok(service)
    }

    fn call(&self, mut ready: S) -> impl Future<Output = Result<S::Response, BoxError>> {
        let request = {
            let mut state = self.lock();
            let State {
                copy,
                first,
                original,
                ..
            } = &mut *state;
            first
                .take()
                .or_else(|| copy.clone_request(original.as_ref()?))
        };
        let response = request.map(|request| ready.call(request));
        async move {
            match response {
                Some(response) => response.await.map_err(Into::into),
                None => Err(BoxError::from(NotCopied)),
            }
        }
    }

    fn repeatable(&self) -> bool {
        self.repeatable
    }
}

/// A retry or a hedge found no request to send: its [`CloneRequest`] copied the request for the
/// first attempt, then declined to copy it again.
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
    use crate::error::is_caused_by;
    use crate::hedge::{Hedge, HedgeDelay};
    use crate::pipeline::tests::{breaker, retry};

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
            .breaker(breaker(2))
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
    async fn a_refusal_comes_boxed_and_a_request_that_cannot_be_copied_is_sent_once() {
        let (calls, inner) = flaky(u32::MAX);
        let pipeline = Pipeline::builder()
            .retry(retry(3))
            .breaker(breaker(3))
            .build();
        let layer = pipeline.layer().with_clone_request(|_: &u32| None);
        let service = layer.layer(inner);
        let err = service.clone().oneshot(1).await.unwrap_err();
        assert_eq!(err.to_string(), "down");
        assert_eq!(calls.load(SeqCst), 1, "not copied, not retried");

        // Copied, it is retried until the breaker opens; then refused.
        let service = pipeline.layer().layer(flaky(u32::MAX).1);
        service.clone().oneshot(1).await.unwrap_err();
        let err = service.oneshot(1).await.unwrap_err();
        assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");
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
