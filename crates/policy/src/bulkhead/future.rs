//! The response future of [`BulkheadService`](super::BulkheadService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::OwnedBulkheadPermit;
use super::error::BulkheadFull;
use super::state::{Shared, Wait};
use crate::error::BoxError;

pin_project! {
    /// The response future of [`BulkheadService`](super::BulkheadService): waits for a place
    /// when the request was queued, then holds the place until the response is in.
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        // Queued: the service (made ready before the call) and the request wait with us.
        Waiting {
            #[pin]
            wait: Wait<Arc<Shared>>,
            service: Option<S>,
            request: Option<R>,
        },
        Running {
            #[pin]
            future: S::Future,
            permit: Option<OwnedBulkheadPermit>,
        },
        Refused {
            full: Option<BulkheadFull>,
        },
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
{
    pub(crate) fn running(future: S::Future, permit: OwnedBulkheadPermit) -> ResponseFuture<S, R> {
        ResponseFuture {
            state: State::Running {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn waiting(wait: Wait<Arc<Shared>>, service: S, request: R) -> ResponseFuture<S, R> {
        ResponseFuture {
            state: State::Waiting {
                wait,
                service: Some(service),
                request: Some(request),
            },
        }
    }

    pub(crate) fn refused(full: BulkheadFull) -> ResponseFuture<S, R> {
        ResponseFuture {
            state: State::Refused { full: Some(full) },
        }
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Running { future, permit } => {
                    let output = ready!(future.poll(cx));
                    // The place is free as soon as the response is in, whenever the future is
                    // dropped.
                    drop(permit.take());
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProj::Waiting {
                    mut wait,
                    service,
                    request,
                } => {
                    if let Err(full) = ready!(wait.as_mut().poll(cx)) {
                        return Poll::Ready(Err(super::refusal(full).into_box_error()));
                    }
                    let permit = OwnedBulkheadPermit::new(Arc::clone(wait.shared()));
                    let mut service = service.take().expect("polled after completion");
                    let request = request.take().expect("polled after completion");
                    let future = service.call(request);
                    state.set(State::Running {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Refused { full } => {
                    let full = full.take().expect("polled after completion");
                    return Poll::Ready(Err(Box::new(full)));
                }
            }
        }
    }
}

impl<S, R> fmt::Debug for ResponseFuture<S, R>
where
    S: Service<R>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Running { .. } => "running",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
