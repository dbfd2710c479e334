//! The response future of [`RateLimitService`](super::RateLimitService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::error::RateLimited;
use crate::error::BoxError;

pin_project! {
    /// The response future of [`RateLimitService`](super::RateLimitService).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Allowed { #[pin] future: F },
        // The inner service was not called.
        Limited { limited: Option<RateLimited> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn allowed(future: F) -> ResponseFuture<F> {
        ResponseFuture {
            state: State::Allowed { future },
        }
    }

    pub(crate) fn limited(limited: RateLimited) -> ResponseFuture<F> {
        ResponseFuture {
            state: State::Limited {
                limited: Some(limited),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Allowed { future } => future.poll(cx).map_err(Into::into),
            StateProj::Limited { limited } => {
                let limited = limited.take().expect("polled after completion");
                Poll::Ready(Err(Box::new(limited)))
            }
        }
    }
}
