//! What is worth retrying.
//!
//! Whether a result counts against the callee ([`Outcome`]) and whether it is worth another try
//! are different questions: a 503 is both, a 500 from a non-idempotent call is a failure not to
//! repeat, and a 429 with a `Retry-After` is worth a retry only after the time the server named.
//! A retry therefore asks a [`RetryClassify`] for a [`Decision`].

use std::time::Duration;

use crate::classify::{Classify, Outcome};

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
/// breaker given the same classifier agree. Slow successes are kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnFailure<K>(pub K);

impl<T, E, K> RetryClassify<T, E> for RetryOnFailure<K>
where
    K: Classify<T, E>,
{
    #[inline]
    fn decide(&self, result: &Result<T, E>) -> Decision {
        match self.0.classify(result) {
            Outcome::Failure => Decision::Retry,
            Outcome::Success | Outcome::Slow => Decision::Done,
        }
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
