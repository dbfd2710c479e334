//! The response future of [`FallbackService`](super::FallbackService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{FallbackFn, FallbackOn, judge_boxed};
use crate::classify::Classify;
use crate::error::BoxError;

pin_project! {
    /// Waits for the inner service's answer, then for the fallback's if the answer failed.
    pub struct ResponseFuture<Fut, FbFut, F, C> {
        #[pin]
        state: State<Fut, FbFut>,
        fallback: Arc<F>,
        on: FallbackOn,
        classify: C,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, FbFut> {
        Calling {
            #[pin]
            future: Fut,
        },
        // The inner service failed to get ready: no call was made.
        Unready {
            error: Option<BoxError>,
        },
        FallingBack {
            #[pin]
            future: FbFut,
        },
    }
}

impl<Fut, FbFut, F, C> ResponseFuture<Fut, FbFut, F, C> {
    pub(super) fn new(
        future: Fut,
        fallback: Arc<F>,
        on: FallbackOn,
        classify: C,
    ) -> ResponseFuture<Fut, FbFut, F, C> {
        ResponseFuture {
            state: State::Calling { future },
            fallback,
            on,
            classify,
        }
    }

    pub(super) fn unready(
        error: BoxError,
        fallback: Arc<F>,
        on: FallbackOn,
        classify: C,
    ) -> ResponseFuture<Fut, FbFut, F, C> {
        ResponseFuture {
            state: State::Unready { error: Some(error) },
            fallback,
            on,
            classify,
        }
    }
}

impl<Fut, F, C, T, E> Future for ResponseFuture<Fut, F::Future, F, C>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: FallbackFn<T, BoxError>,
    C: Classify<T, BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Calling { future } => ready!(future.poll(cx)).map_err(Into::into),
                StateProj::Unready { error } => Err(error.take().expect("polled after completion")),
                StateProj::FallingBack { future } => return future.poll(cx),
            };
            match judge_boxed(result, this.classify, *this.on) {
                Ok(passed) => return Poll::Ready(passed),
                Err(reason) => {
                    let future = this.fallback.call(reason);
                    this.state.set(State::FallingBack { future });
                }
            }
        }
    }
}

impl<Fut, FbFut, F, C> fmt::Debug for ResponseFuture<Fut, FbFut, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}
