//! What is worth retrying.
//!
//! Whether a result counts against the callee ([`Outcome`]) and whether it is worth another try
//! are different questions: a 503 is both, a 500 from a non-idempotent call is a failure not to
//! repeat, and a 429 with a `Retry-After` is worth a retry only after the time the server named.
//! A retry therefore asks a [`RetryClassify`] for a [`Decision`].

use std::time::Duration;

use crate::classify::{Classify, Outcome};
use crate::error::{BoxError, Error, Rejected};

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Keep this result: it is an answer, or trying again would not help.
    Done,
    /// Try again after the backoff, if attempts and budget allow.
    Retry,
    /// Try again, but not before this long (a server's `Retry-After` hint): the retry waits for
    /// the longer of the backoff and the hint; a hint past
    /// [`Retry::with_max_retry_after`](super::Retry::with_max_retry_after) ends the retries.
    RetryAfter(Duration),
}

/// Decides whether a finished attempt should be retried.
///
/// Implemented for every `Fn(&Result<T, E>) -> Decision`, so a closure is a classifier:
///
/// ```
/// use std::time::Duration;
/// use rampart_policy::retry::{Decision, RetryClassify};
///
/// // Retry 503s, honouring the server's hint; keep every other answer.
/// let classify = |result: &Result<(u16, Option<u64>), std::io::Error>| match result {
///     Ok((503, Some(secs))) => Decision::RetryAfter(Duration::from_secs(*secs)),
///     Ok((503, None)) | Err(_) => Decision::Retry,
///     Ok(_) => Decision::Done,
/// };
/// assert_eq!(classify.decide(&Ok((200, None))), Decision::Done);
/// assert_eq!(classify.decide(&Ok((503, Some(2)))), Decision::RetryAfter(Duration::from_secs(2)));
/// ```
pub trait RetryClassify<T, E> {
    /// Decides about one finished attempt.
    fn decide(&self, result: &Result<T, E>) -> Decision;
}

impl<T, E, F> RetryClassify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Decision,
{
    #[inline]
    fn decide(&self, result: &Result<T, E>) -> Decision {
        self(result)
    }
}

/// The default classifier: retry every `Err`, never an `Ok`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnError;

impl<T, E> RetryClassify<T, E> for RetryOnError {
    #[inline]
    fn decide(&self, result: &Result<T, E>) -> Decision {
        match result {
            Ok(_) => Decision::Done,
            Err(_) => Decision::Retry,
        }
    }
}

/// Retries what a shared [`Classify`] calls a [`Outcome::Failure`], so that a retry and a
/// breaker given the same classifier agree, not before the wait its
/// [`retry_after`](Classify::retry_after) reads. Slow successes are kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnFailure<K>(pub K);

impl<T, E, K> RetryClassify<T, E> for RetryOnFailure<K>
where
    K: Classify<T, E>,
{
    #[inline]
    fn decide(&self, result: &Result<T, E>) -> Decision {
        failed(&self.0, result)
    }
}

// A failure is worth another attempt, not before the wait it asks for if it asks for one; a
// success, slow or not, is kept.
fn failed<T, E>(classify: &impl Classify<T, E>, result: &Result<T, E>) -> Decision {
    match classify.classify(result) {
        Outcome::Failure => match classify.retry_after(result) {
            Some(wait) => Decision::RetryAfter(wait),
            None => Decision::Retry,
        },
        Outcome::Success | Outcome::Slow => Decision::Done,
    }
}

/// Retries what the shared [`Classify`] calls a failure and an attempt that timed out, never a
/// refusal: a breaker open, a bulkhead or limit full, a rate limit, a deadline passed. Trying
/// again at once would meet the same refusal, and spend the backoff, the budget and a token of
/// the rate limit doing it. The retry of a [`Pipeline`](crate::pipeline::Pipeline) decides so;
/// give it to a [`RetryLayer`](super::RetryLayer) over the policies' layers to decide the same,
/// as their errors come boxed:
///
/// ```
/// use rampart_policy::breaker::CircuitBreaker;
/// use rampart_policy::classify::ErrorsAreFailures;
/// use rampart_policy::error::BoxError;
/// use rampart_policy::retry::{Decision, RetryClassify, RetryTransient};
/// use rampart_policy::timeout::error::Elapsed;
///
/// let retry = RetryTransient(ErrorsAreFailures);
/// let breaker = CircuitBreaker::new();
/// breaker.force_open();
/// let open: Result<(), BoxError> = Err(Box::new(breaker.try_acquire().unwrap_err()));
/// assert_eq!(retry.decide(&open), Decision::Done);
/// let timed_out: Result<(), BoxError> = Err(Box::new(Elapsed::new(std::time::Duration::ZERO)));
/// assert_eq!(retry.decide(&timed_out), Decision::Retry);
/// let reset: Result<(), BoxError> = Err("connection reset".into());
/// assert_eq!(retry.decide(&reset), Decision::Retry);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryTransient<K>(pub K);

impl<T, E, K: Classify<T, Error<E>>> RetryClassify<T, Error<E>> for RetryTransient<K> {
    #[inline]
    fn decide(&self, result: &Result<T, Error<E>>) -> Decision {
        match result {
            Err(Error::Rejected(rejected)) => transient(rejected),
            _ => failed(&self.0, result),
        }
    }
}

impl<T, K: Classify<T, BoxError>> RetryClassify<T, BoxError> for RetryTransient<K> {
    #[inline]
    fn decide(&self, result: &Result<T, BoxError>) -> Decision {
        match result {
            Err(err) => match Rejected::from_below(&**err) {
                Some(rejected) => transient(&rejected),
                None => failed(&self.0, result),
            },
            Ok(_) => failed(&self.0, result),
        }
    }
}

// Whether a policy's refusal is worth another attempt: only a timeout, which says the attempt
// was slow, not that the next one would be refused.
fn transient(rejected: &Rejected) -> Decision {
    match rejected {
        Rejected::Timeout(_) => Decision::Retry,
        _ => Decision::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_retries_errors_only() {
        assert_eq!(RetryOnError.decide(&Ok::<u8, u8>(1)), Decision::Done);
        assert_eq!(RetryOnError.decide(&Err::<u8, u8>(1)), Decision::Retry);
    }

    #[test]
    fn failures_of_a_shared_classifier_are_retried() {
        let status = |r: &Result<u16, ()>| match r {
            Ok(s) if *s >= 500 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Failure,
        };
        let retry = RetryOnFailure(status);
        assert_eq!(retry.decide(&Ok(503)), Decision::Retry);
        assert_eq!(retry.decide(&Ok(404)), Decision::Done);
        assert_eq!(retry.decide(&Err(())), Decision::Retry);
    }
}
