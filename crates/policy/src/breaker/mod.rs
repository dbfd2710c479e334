//! Circuit breaker: stop calling a service that keeps failing, and find out when it is back.
//!
//! Calling a dead or drowning service costs the caller a timeout per call and costs the callee the
//! load it cannot take. A breaker watches the outcomes of calls and, once they say the callee is in
//! trouble, refuses calls at once (**open**) for a while. Then it lets a few probes through
//! (**half-open**): if they all succeed it lets traffic back (**closed**); if one fails it opens
//! again, for twice as long, up to a cap.
//!
//! It trips on any of:
//! - `consecutive_failures` failures in a row (default 5);
//! - a failure rate of at least `failure_rate` over the sliding `window`, once `min_calls` calls are
//!   in it (default 50% over 10 s, from 20 calls);
//! - a slow-call rate of at least `slow_call_rate`, when a `slow_call` threshold is set (off by
//!   default).
//!
//! Open periods are jittered so that a fleet of clients tripped by one outage does not probe in
//! lockstep. The breaker can be forced open or closed by an operator and released back to automatic;
//! every transition is told to subscribers, and [`CircuitBreaker::snapshot`] reads its numbers.
//!
//! A closed breaker costs a few nanoseconds a call and takes no lock: the data path reads one
//! atomic and counts into a per-thread stripe of the window (see `window.rs`), so threads sharing a
//! breaker do not contend.
//!
//! # Around any async call
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::breaker::CircuitBreaker;
//! use rampart_policy::{Error, Rejected};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .consecutive_failures(3)
//!     .open_for(Duration::from_secs(10))
//!     .build()
//!     .unwrap();
//!
//! for _ in 0..3 {
//!     let _ = breaker.call(|| async { Err::<(), _>("connection refused") }).await;
//! }
//! // Open: the call is refused without running.
//! let refused = breaker.call(|| async { Ok::<_, &str>("never called") }).await;
//! assert!(matches!(refused, Err(Error::Rejected(Rejected::BreakerOpen(_)))));
//! # }
//! ```
//!
//! # As a tower layer
//!
//! ```
//! use rampart_policy::breaker::CircuitBreaker;
//! use rampart_policy::breaker::error::BreakerOpen;
//! use rampart_policy::error::is_caused_by;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::builder().consecutive_failures(1).build().unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service_fn(|_req: ()| async { Err::<(), _>(std::io::Error::other("boom")) });
//!
//! let _ = svc.ready().await.unwrap().call(()).await;
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(is_caused_by::<BreakerOpen>(&*err));
//! # }
//! ```
//!
//! The service's `poll_ready` only asks the inner service: a refusal comes from the response future,
//! so a `Buffer` in front of the breaker is never poisoned by it.
//!
//! # What the breaker learns from
//!
//! Every call that ends, as its classifier says, with two exceptions that say nothing of the
//! callee. A call that fails once the [`Deadline`](crate::timeout::Deadline) in force has passed
//! is the caller running out of time, not the callee failing: it is not recorded (without this, a
//! caller with 50 ms left calling a healthy service that answers in 100 ms would open its breaker
//! for everyone). And a call whose future is dropped before it ends is not recorded either: put
//! the timeout that bounds a call *under* the breaker (`breaker.call(|| timeout.call(f))`, or a
//! [`TimeoutLayer`](crate::timeout::TimeoutLayer) below the breaker's layer), so that a hung call
//! ends as a timeout the breaker counts, rather than being dropped by a timeout above it.

mod config;
pub mod error;
pub mod future;
mod layer;
mod shared;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

pub use self::config::Builder;
use self::error::BreakerOpen;
use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
use self::shared::{Shared, Ticket};
use crate::classify::{Classify, ErrorsAreFailures, Outcome, Verdict, judge};
use crate::error::{BoxError, Error};

/// A circuit breaker. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

/// Where a breaker stands. The discriminants are the values of the `rampart_breaker_state` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls go through; outcomes are watched.
    Closed = 0,
    /// Calls are refused until the open period ends.
    Open = 1,
    /// A few probes go through; the rest are refused.
    HalfOpen = 2,
    /// Refused by an operator's decision, until released.
    ForcedOpen = 3,
    /// Let through by an operator's decision, whatever the outcomes, until released.
    ForcedClosed = 4,
}

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// The failure rate over the window reached the threshold.
    FailureRate {
        /// The failure rate that tripped it.
        rate: f64,
        /// Calls in the window.
        calls: u64,
    },
    /// The slow-call rate over the window reached the threshold.
    SlowCallRate {
        /// The slow-call rate that tripped it.
        rate: f64,
        /// Calls in the window.
        calls: u64,
    },
    /// The open period ended: time to probe.
    OpenElapsed,
    /// A half-open probe failed.
    ProbeFailed,
    /// The half-open probes were not all answered within
    /// [`half_open_max_wait`](Builder::half_open_max_wait).
    ProbesTimedOut,
    /// Every half-open probe succeeded.
    ProbesSucceeded,
    /// An operator forced it open.
    ForcedOpen,
    /// An operator forced it closed.
    ForcedClosed,
    /// An operator released it back to automatic.
    Released,
}

impl fmt::Display for Reason {
    /// In words, as a log line or an operator reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let calls = |n: u64| if n == 1 { "call" } else { "calls" };
        match *self {
            Reason::ConsecutiveFailures(1) => f.write_str("a failure"),
            Reason::ConsecutiveFailures(n) => write!(f, "{n} failures in a row"),
            Reason::FailureRate { rate, calls: n } => {
                write!(f, "failure rate {:.0}% over {n} {}", rate * 100.0, calls(n))
            }
            Reason::SlowCallRate { rate, calls: n } => {
                write!(
                    f,
                    "slow-call rate {:.0}% over {n} {}",
                    rate * 100.0,
                    calls(n)
                )
            }
            Reason::OpenElapsed => f.write_str("open period over"),
            Reason::ProbeFailed => f.write_str("a half-open probe failed"),
            Reason::ProbesTimedOut => f.write_str("half-open probes not answered in time"),
            Reason::ProbesSucceeded => f.write_str("every half-open probe succeeded"),
            Reason::ForcedOpen => f.write_str("forced open by an operator"),
            Reason::ForcedClosed => f.write_str("forced closed by an operator"),
            Reason::Released => f.write_str("released by an operator"),
        }
    }
}

/// One change of state, as told to subscribers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// When.
    pub at: Instant,
}

/// A breaker's numbers at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    /// The current state.
    pub state: State,
    /// Calls recorded in the window.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Slow successes among them (counted only with a `slow_call` threshold).
    pub slow_calls: u64,
    /// `failures / calls`, 0 with no calls.
    pub failure_rate: f64,
    /// `slow_calls / calls`, 0 with no calls.
    pub slow_call_rate: f64,
    /// The current run of failures.
    pub consecutive_failures: u32,
    /// Calls refused since the breaker was made.
    pub rejected: u64,
    /// Times the breaker opened since it was made.
    pub opened: u64,
    /// Time left in the open period, when open.
    pub open_remaining: Option<Duration>,
}

type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            _ => State::ForcedClosed,
        }
    }

    /// Whether an operator put the breaker here.
    pub fn is_forced(self) -> bool {
        matches!(self, State::ForcedOpen | State::ForcedClosed)
    }

    /// The state's name as the admin API and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::ForcedClosed => "forced-closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// A breaker with the default settings (see [`Builder`]).
    pub fn new() -> CircuitBreaker {
        CircuitBreaker::from_builder(Builder::default())
    }

    /// Starts building a breaker.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn from_builder(builder: Builder) -> CircuitBreaker {
        CircuitBreaker {
            shared: Arc::new(Shared::new(builder)),
        }
    }

    /// Asks to make a call. Record the call's outcome on the permit; dropping it unrecorded means
    /// "this call tells nothing" (it was cancelled, say), and a probe's place goes to another call.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        let ticket = self.shared.try_acquire()?;
        Ok(Permit {
            shared: &self.shared,
            ticket,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle on the breaker,
    /// for futures that must be `'static`.
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, BreakerOpen> {
        let ticket = self.shared.try_acquire()?;
        Ok(OwnedPermit {
            shared: self.shared.clone(),
            ticket: Some(ticket),
        })
    }

    /// Turns `permit`, taken from this breaker with [`try_acquire`](Self::try_acquire), into an
    /// [`OwnedPermit`]: for a call whose outcome is known only after the borrow must end (when a
    /// response body ends, say). Costs a reference count, no allocation.
    ///
    /// # Panics
    ///
    /// If `permit` is another breaker's.
    #[inline]
    pub fn own(&self, permit: Permit<'_>) -> OwnedPermit {
        assert!(
            std::ptr::eq(permit.shared, &*self.shared),
            "a permit can only be owned through the breaker that gave it"
        );
        let ticket = permit.ticket;
        // The ticket moves to the owned permit, which releases or records it.
        std::mem::forget(permit);
        OwnedPermit {
            shared: self.shared.clone(),
            ticket: Some(ticket),
        }
    }

    /// Runs `f` if the breaker allows it, and learns from its result: `Err` is a failure.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(ErrorsAreFailures, f).await
    }

    /// Runs `f` if the breaker allows it, and learns from its result as `classify` says.
    pub async fn call_classified<C, F, Fut, T, E>(&self, classify: C, f: F) -> Result<T, Error<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self
            .try_acquire()
            .map_err(|open| Error::Rejected(open.into()))?;
        let result = f().await;
        permit.settle(judge(&classify, &result));
        result.map_err(Error::Inner)
    }

    /// The synchronous form of [`call`](Self::call), for blocking code.
    #[inline]
    pub fn call_sync<F, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Result<T, E>,
    {
        let permit = self
            .try_acquire()
            .map_err(|open| Error::Rejected(open.into()))?;
        let result = f();
        permit.record(ErrorsAreFailures.classify(&result));
        result.map_err(Error::Inner)
    }

    /// The current state.
    #[inline]
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// Whether [`try_acquire`](Self::try_acquire) would admit a call now, without asking: no
    /// permit is taken, no probe spent, no refusal counted. A balancer looks with it at every
    /// endpoint before it asks the one it chose. Another caller may change the answer before
    /// the call is asked for. The one change a look makes is the one time makes: half-open
    /// probes overdue past [`half_open_max_wait`](Builder::half_open_max_wait) open the breaker
    /// again, as the next ask would.
    #[inline]
    pub fn would_admit(&self) -> bool {
        self.shared.would_admit()
    }

    /// Refuses every call until [`release`](Self::release)d.
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Lets every call through, whatever happens, until [`release`](Self::release)d.
    pub fn force_closed(&self) {
        self.shared.force(State::ForcedClosed);
    }

    /// Ends a forced state, or an ejection (open or half-open), as resilience4j's `reset`: the
    /// breaker is closed again with a fresh window and its open period back to the first, and
    /// automatic. Does nothing to a closed breaker.
    pub fn release(&self) {
        self.shared.force(State::Closed);
    }

    /// Ends the open period now, if the breaker is open: the next call goes through as a
    /// half-open probe, as when the period runs out, and the probes decide as they do then.
    /// What else has learnt the callee is back (an active health check, as Envoy's
    /// `successful_active_health_check_uneject_host` takes a passing check for) need not wait
    /// out a period grown long over an outage. Nothing for a closed, half-open or forced
    /// breaker.
    pub fn end_open_period(&self) {
        self.shared.shorten_open_period(Duration::ZERO);
    }

    /// Ends the open period no later than `at_most` from now (less the share of it the period's
    /// jitter cut from the period, so that breakers shortened together still probe apart), if
    /// the breaker is open and its period would last longer; then calls go through as half-open
    /// probes, as when the period runs out. Repeated trips double the open period, to spare a callee that keeps failing; a
    /// caller that needs this one back more than it needs to spare it (the endpoints it could
    /// use instead are all failing too) bounds the wait. Nothing for any other state.
    pub fn shorten_open_period(&self, at_most: Duration) {
        self.shared.shorten_open_period(at_most);
    }

    /// Calls `listener` at every transition, after the state changed, in the order the
    /// transitions happened even when threads make them at once: on the thread that caused it,
    /// or on one still telling an earlier transition. It may read or force the breaker; it must
    /// be quick and must not block; send the transition on a channel for anything more.
    pub fn subscribe(&self, listener: impl Fn(&Transition) + Send + Sync + 'static) {
        self.shared.subscribe(Arc::new(listener));
    }

    /// How long ago the breaker's current ejection began: when it last left the closed state
    /// for the open one; it has been open or half-open since. `None` while closed, and while
    /// forced (an operator's decision, not an ejection). A balancer holding several breakers
    /// tells with it which endpoint was ejected last.
    pub fn ejected_for(&self) -> Option<Duration> {
        self.shared.ejected_for()
    }

    /// The breaker's numbers now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// A tower layer that puts this breaker in front of a service.
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.clone())
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new()
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

// === impl Permit ===

/// Leave to make one call; see [`CircuitBreaker::try_acquire`].
#[must_use = "a permit records nothing unless told the outcome"]
#[derive(Debug)]
pub struct Permit<'a> {
    shared: &'a Shared,
    ticket: Ticket,
}

impl Permit<'_> {
    /// Whether this is a half-open probe's permit: the breaker admits no other call until the
    /// probes' outcomes are in, so a caller that could learn a call's outcome early (at a
    /// response's head rather than at the end of a long stream) should tell it early.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_probe()
    }

    /// Tells the breaker how the call went.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        let (shared, ticket) = (self.shared, self.ticket);
        // Recorded: there is nothing left to release. (A borrow and two words: nothing leaks.)
        std::mem::forget(self);
        shared.record(ticket, outcome);
    }

    /// Records what `verdict` says of the call: its outcome, a cut short, or nothing at all.
    pub(crate) fn settle(self, verdict: Verdict) {
        match verdict {
            Verdict::Judged(outcome) => self.record(outcome),
            Verdict::CutShort => self.cut_short(),
            Verdict::NotCalled => drop(self),
        }
    }

    /// Tells the breaker that the caller gave up on the call (its deadline passed) before the
    /// callee answered. That says nothing of the callee, so the permit goes as if dropped,
    /// unless slow calls trip the breaker (`slow_call` and a `slow_call_rate` below 1) and the
    /// call had already run past the slow-call threshold: then it counts as a slow call, and a
    /// probe so cut fails. A callee that hangs while every caller's deadline runs out first is
    /// thus still seen.
    pub fn cut_short(self) {
        let (shared, ticket) = (self.shared, self.ticket);
        std::mem::forget(self);
        shared.cut_short(ticket);
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.shared.release(self.ticket);
    }
}

/// A [`Permit`] that owns a handle on its breaker.
#[must_use = "a permit records nothing unless told the outcome"]
#[derive(Debug)]
pub struct OwnedPermit {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl OwnedPermit {
    /// Tells the breaker how the call went.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.record(ticket, outcome);
        }
    }

    /// As [`Permit::settle`].
    pub(crate) fn settle(self, verdict: Verdict) {
        match verdict {
            Verdict::Judged(outcome) => self.record(outcome),
            Verdict::CutShort => self.cut_short(),
            Verdict::NotCalled => drop(self),
        }
    }

    /// Tells the breaker that the callee has answered, though the call's outcome is known only
    /// later: a response whose body streams after its head, say. The time to here is the
    /// call's duration for the slow-call check (`slow_call`), and what follows does not make
    /// the call slow; the outcome recorded later, or a cut short, is timed as of now.
    pub fn answered(&mut self) {
        if let Some(ticket) = &mut self.ticket {
            self.shared.answered(ticket);
        }
    }

    /// As [`Permit::cut_short`].
    pub fn cut_short(mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.cut_short(ticket);
        }
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.release(ticket);
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

// === impl CircuitBreakerService ===

/// A service behind a circuit breaker; made by [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, C = ErrorsAreFailures> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S> CircuitBreakerService<S> {
    /// Puts `breaker` in front of `inner`, counting every `Err` as a failure.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        CircuitBreakerService {
            inner,
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Judges responses with `classify` instead (a 503 response can be a failure too).
    pub fn with_classify<C2>(self, classify: C2) -> CircuitBreakerService<S, C2> {
        CircuitBreakerService {
            inner: self.inner,
            breaker: self.breaker,
            classify,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's alone: refusing here would poison a `Buffer`.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classify.clone())
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

#[cfg(test)]
mod tests;
