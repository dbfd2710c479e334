//! One outcome classification, shared by every policy.
//!
//! A breaker, a retry, an adaptive limit and the metrics must agree on what a finished call meant,
//! or one of them trips on calls another thinks were fine. Each of them therefore takes a
//! [`Classify`] and reads the same three-valued [`Outcome`].

use std::time::Duration;

use crate::error::{BoxError, Error, Rejected};
use crate::timeout::Deadline;

/// What a finished call says about the health of the service that answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded in good time.
    Success,
    /// The call succeeded, but slower than the slow-call threshold: a sign of a struggling callee.
    Slow,
    /// The call failed in a way that counts against the callee.
    Failure,
}

impl Outcome {
    /// Turns a success that took longer than `threshold` into [`Outcome::Slow`].
    ///
    /// Failures stay failures whatever their duration; `None` turns slow-call detection off.
    #[inline]
    pub fn with_latency(self, elapsed: Duration, threshold: Option<Duration>) -> Outcome {
        match (self, threshold) {
            (Outcome::Success, Some(threshold)) if elapsed > threshold => Outcome::Slow,
            (outcome, _) => outcome,
        }
    }

    /// Whether this outcome counts against the callee.
    #[inline]
    pub fn is_failure(self) -> bool {
        self == Outcome::Failure
    }
}

/// Decides what a finished call's result means.
///
/// Implemented for every `Fn(&Result<T, E>) -> Outcome`, so a closure is a classifier:
///
/// ```
/// use rampart_policy::classify::{Classify, Outcome};
///
/// // A 404 is an answer, not a failure of the callee.
/// let classify = |result: &Result<u16, std::io::Error>| match result {
///     Ok(status) if *status >= 500 => Outcome::Failure,
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure,
/// };
/// assert_eq!(classify.classify(&Ok(404)), Outcome::Success);
/// assert_eq!(classify.classify(&Ok(503)), Outcome::Failure);
/// ```
pub trait Classify<T, E> {
    /// Classifies one finished call. Return [`Outcome::Success`] or [`Outcome::Failure`]; the
    /// policies that measure latency turn slow successes into [`Outcome::Slow`] themselves.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// How long a failed call's result asks the caller to wait before trying again, if it says
    /// (a server's `Retry-After`, a gRPC pushback). The retries that decide with a classifier (a
    /// [`Pipeline`](crate::pipeline::Pipeline)'s, [`RetryOnFailure`](crate::retry::RetryOnFailure),
    /// [`RetryTransient`](crate::retry::RetryTransient)) wait at least this long, and give up on
    /// a wait past their [`max_retry_after`](crate::retry::Retry::with_max_retry_after). None by
    /// default; [`Hinted`] gives a closure classifier one.
    fn retry_after(&self, result: &Result<T, E>) -> Option<Duration> {
        let _ = result;
        None
    }

    /// The refusal of a policy inside the call that `result` is, if it is one. A breaker or an
    /// adaptive limit judges such a result as a pipeline judges a refusal from below: a
    /// `Timeout` is the callee's failure, a passed deadline the caller's hurry, and the others
    /// (breaker open, bulkhead, limit or rate limit full) nothing at all, since the callee was
    /// not called. `None` by default, so that a call's own error is judged as it is; [`Nested`]
    /// reads a policy's [`Error`].
    fn refusal<'r>(&self, result: &'r Result<T, E>) -> Option<&'r Rejected> {
        let _ = result;
        None
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a success and `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreFailures;

impl<T, E> Classify<T, E> for ErrorsAreFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// The classifier of a call that is itself a policy's direct call (`breaker.call_classified(
/// Nested::new(), || bulkhead.call(f))`): `C` judges each result, and the inner policy's
/// refusal ([`Error::Rejected`]) is read as one ([`Classify::refusal`]), so that a breaker does
/// not open on a bulkhead's shedding, nor an adaptive limit shrink at each quick refusal of a
/// breaker inside it. (resilience4j's `ignoreExceptions`, for the policies' own refusals.)
///
/// ```
/// use rampart_policy::breaker::{CircuitBreaker, State};
/// use rampart_policy::bulkhead::Bulkhead;
/// use rampart_policy::classify::Nested;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder().consecutive_failures(1).build().unwrap();
/// let bulkhead = Bulkhead::builder(1).build().unwrap();
/// let _busy = bulkhead.try_acquire().unwrap();
/// let result = breaker
///     .call_classified(Nested::new(), || bulkhead.call(|| async { Ok::<_, ()>(()) }))
///     .await;
/// assert!(result.is_err());
/// assert_eq!(breaker.state(), State::Closed, "the bulkhead's refusal is no failure");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Nested<C = ErrorsAreFailures>(pub C);

impl Nested {
    /// Judges with [`ErrorsAreFailures`], the inner policy's refusals aside.
    pub fn new() -> Nested {
        Nested(ErrorsAreFailures)
    }
}

impl<T, E, C> Classify<T, Error<E>> for Nested<C>
where
    C: Classify<T, Error<E>>,
{
    #[inline]
    fn classify(&self, result: &Result<T, Error<E>>) -> Outcome {
        self.0.classify(result)
    }

    fn retry_after(&self, result: &Result<T, Error<E>>) -> Option<Duration> {
        self.0.retry_after(result)
    }

    fn refusal<'r>(&self, result: &'r Result<T, Error<E>>) -> Option<&'r Rejected> {
        match result {
            Err(Error::Rejected(rejected)) => Some(rejected),
            _ => self.0.refusal(result),
        }
    }
}

/// A classifier that reads a server's hint of when to try again: `classify` judges each result,
/// `hint` reads the wait a failed one asks for.
///
/// ```
/// use std::time::Duration;
/// use rampart_policy::classify::{Classify, Hinted, Outcome};
///
/// // (status, Retry-After in seconds)
/// let classify = Hinted {
///     classify: |result: &Result<(u16, Option<u64>), std::io::Error>| match result {
///         Ok((status, _)) if *status >= 500 => Outcome::Failure,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     },
///     hint: |result: &Result<(u16, Option<u64>), std::io::Error>| match result {
///         Ok((_, Some(secs))) => Some(Duration::from_secs(*secs)),
///         _ => None,
///     },
/// };
/// assert_eq!(classify.classify(&Ok((503, Some(2)))), Outcome::Failure);
/// assert_eq!(classify.retry_after(&Ok((503, Some(2)))), Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Hinted<K, H> {
    /// Judges each result.
    pub classify: K,
    /// Reads the wait a failed result asks for.
    pub hint: H,
}

impl<T, E, K, H> Classify<T, E> for Hinted<K, H>
where
    K: Classify<T, E>,
    H: Fn(&Result<T, E>) -> Option<Duration>,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self.classify.classify(result)
    }

    fn retry_after(&self, result: &Result<T, E>) -> Option<Duration> {
        (self.hint)(result)
    }

    fn refusal<'r>(&self, result: &'r Result<T, E>) -> Option<&'r Rejected> {
        self.classify.refusal(result)
    }
}

/// What an attempt's result says of the callee, for the breaker and the adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An outcome to record.
    Judged(Outcome),
    /// The caller's deadline cut the call short: nothing, unless it had already run past the
    /// breaker's `slow_call` (see `Permit::cut_short`).
    CutShort,
    /// A policy below refused the call before the callee was called: nothing at all.
    NotCalled,
}

impl Verdict {
    /// The verdict of a refusal that ended an attempt: a timer's cut a call the callee was slow
    /// to answer; a passed deadline is the caller's hurry; the others came before any call.
    pub(crate) fn of_refusal(rejected: &Rejected) -> Verdict {
        match rejected {
            Rejected::Timeout(_) => Verdict::Judged(Outcome::Failure),
            Rejected::DeadlineExceeded(_) => Verdict::CutShort,
            _ => Verdict::NotCalled,
        }
    }
}

/// What `classify` makes of `result`, or [`Verdict::CutShort`] when the result says nothing of
/// the callee: an error that came once the deadline in force ([`Deadline::current`]) had passed. That is the
/// caller's patience running out (a timeout capped by the deadline cut the call short, or the
/// call failed for want of time), not the callee failing: a caller in a hurry, with a deadline
/// shorter than the callee's usual latency, would otherwise open a healthy callee's breaker and
/// shrink its limit for every other caller. The breaker and the adaptive limit both judge through
/// here, so that they agree.
pub(crate) fn judge<T, E>(classify: &impl Classify<T, E>, result: &Result<T, E>) -> Verdict {
    // The deadline is read only for errors: a success is news of the callee whenever it comes.
    if result.is_err() && Deadline::current().is_some_and(|deadline| deadline.is_expired()) {
        return Verdict::CutShort;
    }
    match classify.refusal(result) {
        Some(refused) => Verdict::of_refusal(refused),
        None => Verdict::Judged(classify.classify(result)),
    }
}

/// [`judge`] for a tower service, whose error goes on boxed, where a refusal of a policy below
/// ([`Rejected::from_below`]) is judged by [`Verdict::of_refusal`]. A `DeadlineLayer` below the
/// breaker or the limit sets the deadline for the services below it only, where this one
/// cannot read it: its refusal is how the deadline shows here. A breaker layer open below, or a
/// limit full, refused before the callee was called: recorded, an adaptive limit above a breaker
/// would shrink at each of the breaker's quick refusals, and a breaker above a limit would open
/// on the limit's shedding (or count a long wait in its queue as a slow call).
pub(crate) fn judge_boxed<T, E: Into<BoxError>>(
    classify: &impl Classify<T, E>,
    result: Result<T, E>,
) -> (Verdict, Result<T, BoxError>) {
    let judged = judge(classify, &result);
    let result = result.map_err(Into::into);
    let refused = result
        .as_ref()
        .err()
        .and_then(|err| Rejected::from_below(&**err));
    let verdict = match refused {
        // A timer's cut a call the callee was slow to answer: the classifier judges it.
        Some(Rejected::Timeout(_)) | None => judged,
        Some(rejected) => Verdict::of_refusal(&rejected),
    };
    (verdict, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_only_upgrades_successes() {
        let ms = Duration::from_millis;
        assert_eq!(
            Outcome::Success.with_latency(ms(20), Some(ms(10))),
            Outcome::Slow
        );
        assert_eq!(
            Outcome::Success.with_latency(ms(10), Some(ms(10))),
            Outcome::Success
        );
        assert_eq!(
            Outcome::Success.with_latency(ms(20), None),
            Outcome::Success
        );
        assert_eq!(
            Outcome::Failure.with_latency(ms(20), Some(ms(10))),
            Outcome::Failure
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_nested_policys_refusal_is_no_failure_but_its_timeout_is() {
        use crate::adaptive::{AdaptiveLimit, Aimd};
        use crate::breaker::{CircuitBreaker, State};
        use crate::bulkhead::Bulkhead;
        use crate::timeout::Timeout;

        let breaker = CircuitBreaker::builder()
            .consecutive_failures(2)
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1).build().unwrap();
        let busy = bulkhead.try_acquire().unwrap();
        let ok = || async { Ok::<_, ()>(()) };
        for _ in 0..2 {
            let result = breaker
                .call_classified(Nested::new(), || bulkhead.call(ok))
                .await;
            assert!(result.is_err());
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().calls, 0);
        // Without `Nested` the refusal is an error like any other.
        for _ in 0..2 {
            let _ = breaker.call(|| bulkhead.call(ok)).await;
        }
        assert_eq!(breaker.state(), State::Open);
        drop(busy);

        // A timeout inside is the callee's slowness: a failure.
        let breaker = CircuitBreaker::builder()
            .consecutive_failures(1)
            .build()
            .unwrap();
        let timeout = Timeout::new(Duration::from_millis(10));
        let _ = breaker
            .call_classified(Nested::new(), || {
                timeout.call(std::future::pending::<Result<(), ()>>)
            })
            .await;
        assert_eq!(breaker.state(), State::Open);

        // An adaptive limit around an open breaker does not shrink at its refusals.
        let limit = AdaptiveLimit::new(Aimd::builder().initial_limit(10).build().unwrap());
        for _ in 0..5 {
            let _ = limit
                .call_classified(Nested::new(), || breaker.call(ok))
                .await;
        }
        assert_eq!(limit.limit(), 10);
    }

    #[test]
    fn default_classifier_reads_the_result() {
        assert_eq!(
            ErrorsAreFailures.classify(&Ok::<(), ()>(())),
            Outcome::Success
        );
        assert_eq!(
            ErrorsAreFailures.classify(&Err::<(), ()>(())),
            Outcome::Failure
        );
    }
}
