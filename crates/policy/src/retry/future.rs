//! The response future of [`RetryService`](super::RetryService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::{CloneRequest, Next, RetryClassify, Ticket};
use crate::error::BoxError;

pin_project! {
    /// The response future of [`RetryService`](super::RetryService): the current attempt, the
    /// backoff sleep or the wait for the service to be ready, until a result is kept.
    pub struct ResponseFuture<S, Req, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // Only for a call that may be retried: one that may not carries no copy, no service
        // and no policy.
        retrying: Option<Retrying<S, Req, C, R>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is under way.
        Called {
            #[pin]
            future: F,
        },
        // Backing off. Boxed because a timer is large and only retries need one: the future of
        // a call that succeeds at once stays small.
        Sleeping {
            sleep: Pin<Box<Sleep>>,
        },
        // Waiting for the service to be ready for the next attempt.
        PollReady,
    }
}

/// What a call that may be retried needs for its next attempt.
struct Retrying<S, Req, C, R> {
    service: S,
    policy: Ticket<C>,
    cloner: R,
    /// The next attempt's request; `None` once no copy could be made, and then no retry follows.
    request: Option<Req>,
    /// The attempt under way, from 1.
    attempt: u32,
}

// === impl ResponseFuture ===

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    /// A call that will not be retried.
    #[inline]
    pub(crate) fn once(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
            retrying: None,
        }
    }

    /// A call that may be retried with `request`, on `service`, by `policy`.
    #[inline]
    pub(crate) fn retrying(
        future: S::Future,
        request: Req,
        service: S,
        policy: Ticket<C>,
        cloner: R,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            retrying: Some(Retrying {
                service,
                policy,
                cloner,
                request: Some(request),
                attempt: 1,
            }),
        }
    }
}

impl<S, Req, C, R> Future for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: RetryClassify<S::Response, S::Error>,
    R: CloneRequest<Req>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The common case, kept small so that it inlines: an attempt whose result is kept.
        let mut this = self.as_mut().project();
        if let StateProj::Called { future } = this.state.as_mut().project() {
            let result = ready!(future.poll(cx));
            if let Some(kept) = settle(result, this.retrying, this.state) {
                return Poll::Ready(kept.map_err(Into::into));
            }
        }
        self.poll_retry(cx)
    }
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: RetryClassify<S::Response, S::Error>,
    R: CloneRequest<Req>,
{
    /// Backing off, waiting for the service, and the attempts after the first.
    #[cold]
    fn poll_retry(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    if let Some(kept) = settle(result, this.retrying, this.state.as_mut()) {
                        return Poll::Ready(kept.map_err(Into::into));
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::PollReady);
                }
                StateProj::PollReady => {
                    let r = this
                        .retrying
                        .as_mut()
                        .expect("only a call that may be retried backs off");
                    if let Err(err) = ready!(r.service.poll_ready(cx)) {
                        return Poll::Ready(Err(err.into()));
                    }
                    let request = r
                        .request
                        .take()
                        .expect("a retry is decided only with a copy in hand");
                    r.attempt += 1;
                    if r.attempt < r.policy.attempts() {
                        r.request = r.cloner.clone_request(&request);
                    }
                    let future = r.service.call(request);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Decides what follows a finished attempt: `Some(result)` to keep it, or `None` once `state`
/// has moved on to the retry.
#[inline]
fn settle<S, Req, C, R>(
    result: Result<S::Response, S::Error>,
    retrying: &mut Option<Retrying<S, Req, C, R>>,
    state: Pin<&mut State<S::Future>>,
) -> Option<Result<S::Response, S::Error>>
where
    S: Service<Req>,
    C: RetryClassify<S::Response, S::Error>,
{
    // Each way of keeping the result returns at once, so that the common one compiles to a
    // couple of tests.
    let Some(r) = retrying else {
        return Some(result);
    };
    if r.request.is_none() {
        return Some(result);
    }
    let Next::Wait(wait) = r.policy.next(&result, r.attempt) else {
        return Some(result);
    };
    // A failed response may hold a connection or a buffer: let it go before backing off.
    drop(result);
    back_off(wait, state);
    None
}

/// Moves `state` on to waiting `wait` before the next attempt.
#[cold]
#[inline(never)]
fn back_off<F>(wait: Duration, mut state: Pin<&mut State<F>>) {
    if wait.is_zero() {
        state.set(State::PollReady);
    } else {
        let sleep = Box::pin(tokio::time::sleep(wait));
        state.set(State::Sleeping { sleep });
    }
}

impl<S, Req, C, R> fmt::Debug for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Sleeping { .. } => "sleeping",
            State::PollReady => "waiting for the service",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.retrying.as_ref().map_or(1, |r| r.attempt))
            .finish_non_exhaustive()
    }
}
