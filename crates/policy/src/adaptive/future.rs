//! The response future of [`AdaptiveLimitService`](super::AdaptiveLimitService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::Permit;
use super::error::LimitExceeded;
use crate::classify::{Classify, Verdict, judge_boxed};
use crate::error::BoxError;

pin_project! {
    /// Runs an admitted request and teaches the limit how it went, or answers a refusal.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            // Taken when the response arrives; dropping the future before then frees the place
            // without teaching the limit.
            permit: Option<Permit>,
            classify: C,
            start: Instant,
        },
        Refused {
            error: Option<LimitExceeded>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn called(future: F, permit: Permit, classify: C) -> ResponseFuture<F, C> {
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                classify,
                start: Instant::now(),
            },
        }
    }

    pub(super) fn refused(error: LimitExceeded) -> ResponseFuture<F, C> {
        ResponseFuture {
            kind: Kind::Refused { error: Some(error) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classify,
                start,
            } => {
                let (verdict, result) = judge_boxed(classify, ready!(future.poll(cx)));
                // Dropped unrecorded when the caller's deadline cut the call short, or a policy
                // below refused it.
                if let Some(permit) = permit.take()
                    && let Verdict::Judged(outcome) = verdict
                {
                    permit.record(outcome, start.elapsed());
                }
                Poll::Ready(result)
            }
            KindProj::Refused { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(Box::new(error)))
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
