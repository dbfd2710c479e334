//! The futures of [`Deadline::scope`], [`TimeoutService`](super::TimeoutService) and
//! [`DeadlineService`](super::DeadlineService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::deadline::Deadline;
use super::error::{DeadlineExceeded, Elapsed};
use crate::clock::saturating_after;
use crate::error::{BoxError, Rejected};

pin_project! {
    /// The response future of [`TimeoutService`](super::TimeoutService).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    /// The response future of [`DeadlineService`](super::DeadlineService).
    #[derive(Debug)]
    pub struct DeadlineFuture<F> {
        #[pin]
        state: DeadlineState<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Running { #[pin] timed: Timed<F> },
        // The deadline had passed before the call: the inner service was not called.
        Refused { rejected: Option<Rejected> },
    }
}

pin_project! {
    #[project = DeadlineStateProj]
    #[derive(Debug)]
    enum DeadlineState<F> {
        // The request had no deadline: nothing to enforce.
        Unbounded { #[pin] future: F },
        Running { #[pin] scoped: Scoped<Timed<F>> },
        Refused,
    }
}

pin_project! {
    /// A future run with a [`Deadline`] in force, made by [`Deadline::scope`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        deadline: Deadline,
    }
}

pin_project! {
    /// A future cut short at its expiry.
    ///
    /// The inner future is polled first and the timer created only when it is pending, so that a
    /// call that is ready at once costs no timer registration.
    #[derive(Debug)]
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        expiry: Expiry,
    }
}

/// When a timed call must end, and what to call its end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry {
    /// `None` for a timeout until the call first waits, its time counted from then: a clock
    /// read costs more than a call that is ready at once, and such a call needs no expiry at
    /// all. Counted so whether or not a deadline is in force, which only caps it.
    at: Option<Instant>,
    cause: Cause,
    /// The deadline in force when a timeout's call was made.
    cap: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Cause {
    Timeout(Duration),
    Deadline,
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, expiry: Expiry) -> ResponseFuture<F> {
        ResponseFuture {
            state: State::Running {
                timed: Timed::new(inner, expiry),
            },
        }
    }

    pub(crate) fn refused(rejected: Rejected) -> ResponseFuture<F> {
        ResponseFuture {
            state: State::Refused {
                rejected: Some(rejected),
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
            StateProj::Running { timed } => Poll::Ready(flatten(ready!(timed.poll(cx)))),
            StateProj::Refused { rejected } => Poll::Ready(Err(rejected
                .take()
                .unwrap_or_else(|| DeadlineExceeded::new().into())
                .into_box_error())),
        }
    }
}

// === impl DeadlineFuture ===

impl<F> DeadlineFuture<F> {
    pub(crate) fn unbounded(future: F) -> DeadlineFuture<F> {
        DeadlineFuture {
            state: DeadlineState::Unbounded { future },
        }
    }

    pub(crate) fn new(inner: F, deadline: Deadline) -> DeadlineFuture<F> {
        let timed = Timed::new(inner, Expiry::deadline(deadline));
        DeadlineFuture {
            state: DeadlineState::Running {
                scoped: Scoped::new(timed, deadline),
            },
        }
    }

    pub(crate) fn refused() -> DeadlineFuture<F> {
        DeadlineFuture {
            state: DeadlineState::Refused,
        }
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            DeadlineStateProj::Unbounded { future } => future.poll(cx).map_err(Into::into),
            DeadlineStateProj::Running { scoped } => Poll::Ready(flatten(ready!(scoped.poll(cx)))),
            DeadlineStateProj::Refused => Poll::Ready(Err(Box::new(DeadlineExceeded::new()))),
        }
    }
}

fn flatten<T, E: Into<BoxError>>(result: Result<Result<T, E>, Rejected>) -> Result<T, BoxError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.into()),
        Err(rejected) => Err(rejected.into_box_error()),
    }
}

// === impl Scoped ===

impl<F> Scoped<F> {
    pub(crate) fn new(inner: F, deadline: Deadline) -> Scoped<F> {
        Scoped { inner, deadline }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Capped at each poll rather than once at construction: a scope built before it is
        // placed inside another (`outer.scope(inner.scope(fut))`) still keeps the earlier.
        let own = *this.deadline;
        let deadline = match Deadline::current() {
            Some(current) => own.min(current),
            None => own,
        };
        let inner = this.inner;
        deadline.sync_scope(|| inner.poll(cx))
    }
}

// === impl Timed ===

impl<F> Timed<F> {
    pub(crate) fn new(inner: F, expiry: Expiry) -> Timed<F> {
        Timed {
            inner,
            sleep: None,
            expiry,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = Result<F::Output, Rejected>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(this.expiry.start())));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        Poll::Ready(Err(this.expiry.rejection()))
    }
}

// === impl Expiry ===

impl Expiry {
    /// The expiry of a call given `timeout` now, capped by `deadline`. Fails when the deadline has
    /// already passed, so that no call is made that could not finish.
    ///
    /// When the deadline and the timeout fall together the deadline is named: the request is out
    /// of time, which tells a retry above not to try again.
    #[inline]
    pub(crate) fn new(timeout: Duration, deadline: Option<Deadline>) -> Result<Expiry, Rejected> {
        let cap = match deadline {
            Some(deadline) if deadline.instant() <= Instant::now() => {
                return Err(DeadlineExceeded::new().into());
            }
            deadline => deadline.map(|deadline| deadline.instant()),
        };
        Ok(Expiry {
            at: None,
            cause: Cause::Timeout(timeout),
            cap,
        })
    }

    /// The instant to stop at, fixed when the call first has to wait: the timeout from then,
    /// or the deadline if that comes first.
    fn start(&mut self) -> Instant {
        if let Some(at) = self.at {
            return at;
        }
        let at = match self.cause {
            Cause::Timeout(timeout) => saturating_after(Instant::now(), timeout),
            // Not made: a deadline expiry always has its instant.
            Cause::Deadline => Instant::now(),
        };
        let at = match self.cap {
            Some(cap) if cap <= at => {
                self.cause = Cause::Deadline;
                cap
            }
            _ => at,
        };
        self.at = Some(at);
        at
    }

    /// Expiry at `deadline`, named as such.
    pub(crate) fn deadline(deadline: Deadline) -> Expiry {
        Expiry {
            at: Some(deadline.instant()),
            cause: Cause::Deadline,
            cap: None,
        }
    }

    fn rejection(&self) -> Rejected {
        match self.cause {
            Cause::Timeout(after) => Elapsed::new(after).into(),
            Cause::Deadline => DeadlineExceeded::new().into(),
        }
    }
}
