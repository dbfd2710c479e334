//! The breaker service's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::OwnedPermit;
use super::error::BreakerOpen;
use crate::classify::{Classify, judge_boxed};
use crate::error::BoxError;

pin_project! {
    /// Either the inner call, whose outcome it records, or a refusal.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, C> {
        Called {
            #[pin]
            future: F,
            permit: Option<OwnedPermit>,
            classify: C,
        },
        Rejected {
            open: Option<BreakerOpen>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn called(future: F, permit: OwnedPermit, classify: C) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                permit: Some(permit),
                classify,
            },
        }
    }

    pub(super) fn rejected(open: BreakerOpen) -> Self {
        ResponseFuture {
            state: State::Rejected { open: Some(open) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                permit,
                classify,
            } => {
                let (verdict, result) = judge_boxed(classify, ready!(future.poll(cx)));
                if let Some(permit) = permit.take() {
                    permit.settle(verdict);
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { open } => {
                let open = open.take().expect("polled after completion");
                Poll::Ready(Err(Box::new(open)))
            }
        }
    }
}
