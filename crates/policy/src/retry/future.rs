//! The response future of [`RetryService`](super::RetryService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::{CloneRequest, Found, Next, RetryClassify, Ticket};

/// What a call resolves to: its service's result, as the kept attempt returned it.
type CallResult<S, Req> = Result<<S as Service<Req>>::Response, <S as Service<Req>>::Error>;

pin_project! {
    /// The response future of [`RetryService`](super::RetryService): the first attempt, then,
    /// only if it is to be retried, the attempts after it.
    pub struct ResponseFuture<S, Req, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Retrying<S, Req, C, R>, Retries<S, Req, C, R>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, First, Then> {
        // The first attempt is under way. `retrying` is what a retry would need: `None` for a
        // call that may not be retried, which carries no copy, no service and no policy.
        First {
            #[pin]
            future: F,
            retrying: Option<First>,
        },
        // The attempts after the first, boxed: a call whose first attempt is kept, the common
        // case, then owns nothing to free, and no pointer to its future escapes to code out of
        // line, so that its path from call to result compiles to a few tests on registers.
        Retries {
            retries: Pin<Box<Then>>,
        },
    }
}

/// What a call that may be retried needs for its first retry.
struct Retrying<S, Req, C, R> {
    service: S,
    ticket: Ticket<C>,
    cloner: R,
    /// The copy of the request the first retry sends.
    request: Req,
}

pin_project! {
    /// A call from its first retry on.
    struct Retries<S, Req, C, R>
    where
        S: Service<Req>,
    {
        service: S,
        found: Found<C>,
        cloner: R,
        // The next attempt's request; `None` once no copy could be made, and then no retry
        // follows.
        request: Option<Req>,
        // The attempt under way, or the last one made while backing off.
        attempt: u32,
        #[pin]
        phase: Phase<S::Future>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F> {
        // Backing off.
        Sleeping {
            #[pin]
            sleep: Sleep,
        },
        // Waiting for the service to be ready for the next attempt.
        PollReady,
        // An attempt is under way.
        Called {
            #[pin]
            future: F,
        },
    }
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
            state: State::First {
                future,
                retrying: None,
            },
        }
    }

    /// A call that may be retried with `request`, on `service`, by `ticket`.
    #[inline]
    pub(crate) fn retrying(
        future: S::Future,
        request: Req,
        service: S,
        ticket: Ticket<C>,
        cloner: R,
    ) -> Self {
        ResponseFuture {
            state: State::First {
                future,
                retrying: Some(Retrying {
                    service,
                    ticket,
                    cloner,
                    request,
                }),
            },
        }
    }
}

impl<S, Req, C, R> Future for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    C: RetryClassify<S::Response, S::Error>,
    R: CloneRequest<Req>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let (future, retrying) = match state.as_mut().project() {
            StateProj::First { future, retrying } => (future, retrying),
            StateProj::Retries { retries } => return Retries::resume(retries.as_mut(), cx.waker()),
        };
        let result = ready!(future.poll(cx));
        // Each way of keeping the result returns at once, so that the common one compiles to a
        // couple of tests.
        let Some(hint) = retrying.as_ref().and_then(|r| r.ticket.wants(&result)) else {
            return Poll::Ready(result);
        };
        let retrying = retrying
            .take()
            .expect("a retry is wanted only of a call that may be");
        match Retries::start(retrying, result, hint, cx.waker()) {
            Ok(retries) => {
                state.set(State::Retries { retries });
                Poll::Pending
            }
            Err(output) => Poll::Ready(output),
        }
    }
}

// === impl Retries ===

impl<S, Req, C, R> Retries<S, Req, C, R>
where
    S: Service<Req>,
{
    /// The retries of a call whose first attempt ended in `result` and wants another after at
    /// least `hint`: `Err` with the call's output once it is known (the policy was gone, or it
    /// refused the retry, or the retries ended at once), else the retries under way.
    ///
    /// Out of line and given its inputs by value, so that the first attempt's path keeps the
    /// future out of memory and stays small enough to inline into its caller. It takes the
    /// waker rather than the caller's `Context` for the same reason as [`Retries::resume`].
    #[cold]
    #[inline(never)]
    fn start(
        retrying: Retrying<S, Req, C, R>,
        result: Result<S::Response, S::Error>,
        hint: Duration,
        waker: &Waker,
    ) -> Result<Pin<Box<Self>>, CallResult<S, Req>>
    where
        C: RetryClassify<S::Response, S::Error>,
        R: CloneRequest<Req>,
    {
        let Retrying {
            service,
            ticket,
            cloner,
            request,
        } = retrying;
        let Some(mut found) = ticket.find() else {
            return Err(result);
        };
        let Next::Wait(wait) = found.retry(hint) else {
            return Err(result);
        };
        // A failed response may hold a connection or a buffer: let it go before backing off.
        drop(result);
        let mut retries = Box::pin(Retries {
            service,
            found,
            cloner,
            request: Some(request),
            attempt: 1,
            phase: Phase::after(wait),
        });
        match retries.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(output) => Err(output),
            Poll::Pending => Ok(retries),
        }
    }

    /// Polls the retries under way with a context of `waker`; out of line, as a call that is
    /// retried has time to spare, and the first attempt's path stays small enough to inline
    /// into its caller.
    ///
    /// Given the waker, not the caller's `Context`: a pointer to the caller's context passed out
    /// of line would make its caller build it in memory on every call, the common ones too,
    /// where the waker is a value it can hand over from a register.
    #[inline(never)]
    fn resume(self: Pin<&mut Self>, waker: &Waker) -> Poll<CallResult<S, Req>>
    where
        C: RetryClassify<S::Response, S::Error>,
        R: CloneRequest<Req>,
    {
        self.poll(&mut Context::from_waker(waker))
    }
}

impl<S, Req, C, R> Future for Retries<S, Req, C, R>
where
    S: Service<Req>,
    C: RetryClassify<S::Response, S::Error>,
    R: CloneRequest<Req>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.phase.as_mut().project() {
                PhaseProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.phase.set(Phase::PollReady);
                }
                PhaseProj::PollReady => {
                    if let Err(err) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(err));
                    }
                    let request = this
                        .request
                        .take()
                        .expect("a retry is decided only with a copy in hand");
                    *this.attempt += 1;
                    if *this.attempt < this.found.attempts() {
                        *this.request = this.cloner.clone_request(&request);
                    }
                    let future = this.service.call(request);
                    this.phase.set(Phase::Called { future });
                }
                PhaseProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let hint = match this.request {
                        Some(_) => this.found.wants(&result, *this.attempt),
                        None => None,
                    };
                    let next = hint.map_or(Next::Done, |hint| this.found.retry(hint));
                    let Next::Wait(wait) = next else {
                        return Poll::Ready(result);
                    };
                    drop(result);
                    this.phase.set(Phase::after(wait));
                }
            }
        }
    }
}

// === impl Phase ===

impl<F> Phase<F> {
    /// Waiting `wait` before the next attempt.
    fn after(wait: Duration) -> Phase<F> {
        if wait.is_zero() {
            Phase::PollReady
        } else {
            Phase::Sleeping {
                sleep: tokio::time::sleep(wait),
            }
        }
    }
}

impl<S, Req, C, R> fmt::Debug for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, attempt) = match &self.state {
            State::First { .. } => ("called", 1),
            State::Retries { retries } => {
                let phase = match &retries.phase {
                    Phase::Called { .. } => "called",
                    Phase::Sleeping { .. } => "sleeping",
                    Phase::PollReady => "waiting for the service",
                };
                (phase, retries.attempt)
            }
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &attempt)
            .finish_non_exhaustive()
    }
}
