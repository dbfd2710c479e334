//! Errors shared by the policies.
//!
//! Each rejection is its own small type, defined beside its policy (`breaker::error::BreakerOpen`,
//! `timeout::error::Elapsed`, ...). Tower services return them boxed as a [`BoxError`]; check for
//! one with [`is_caused_by`], never by message text. The direct entry points
//! (`policy.call(|| async { .. })`) return an [`Error`], which keeps the call's own error type.

use std::error::Error as StdError;
use std::fmt;

use crate::adaptive::error::LimitExceeded;
use crate::breaker::error::BreakerOpen;
use crate::bulkhead::error::BulkheadFull;
use crate::ratelimit::error::RateLimited;
use crate::timeout::error::{DeadlineExceeded, Elapsed};

/// The error type of tower services built from the policies.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Whether `err`, or any error in its chain of sources, is an `E`.
///
/// ```
/// use rampart_policy::error::{is_caused_by, BoxError};
/// use rampart_policy::timeout::error::Elapsed;
///
/// let err: BoxError = Box::new(Elapsed::new(std::time::Duration::from_secs(1)));
/// assert!(is_caused_by::<Elapsed>(&*err));
/// ```
pub fn is_caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    find_cause::<E>(err).is_some()
}

/// The first `E` in the chain of sources of `err`, `err` itself included.
pub fn find_cause<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        // `Rejected` is transparent: look at the specific rejection it holds.
        if let Some(found) = err
            .downcast_ref::<Rejected>()
            .and_then(|r| r.as_std_error().downcast_ref::<E>())
        {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// The result of a policy's direct entry point: the call's own error, or a policy's refusal.
#[derive(Debug)]
pub enum Error<E> {
    /// The call ran and returned this error.
    Inner(E),
    /// A policy refused the call, or cut it short.
    Rejected(Rejected),
}

/// Why a policy refused a call or cut it short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The circuit breaker is open.
    #[error(transparent)]
    BreakerOpen(#[from] BreakerOpen),
    /// The call took longer than its timeout.
    #[error(transparent)]
    Timeout(#[from] Elapsed),
    /// The request's deadline passed, or had passed before the call started.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
    /// The bulkhead had no room, and none came free in time.
    #[error(transparent)]
    BulkheadFull(#[from] BulkheadFull),
    /// The rate limit allows no call now.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The adaptive concurrency limit is reached.
    #[error(transparent)]
    LimitExceeded(#[from] LimitExceeded),
}

impl Rejected {
    /// The refusal `err` itself is, if it is one: a `Rejected`, or one of the specific rejection
    /// types that tower services box. Its sources are not looked at; see [`Rejected::from_below`].
    pub fn from_error(err: &(dyn StdError + 'static)) -> Option<Rejected> {
        fn specific<E: StdError + Clone + Into<Rejected> + 'static>(
            err: &(dyn StdError + 'static),
        ) -> Option<Rejected> {
            err.downcast_ref::<E>().map(|e| e.clone().into())
        }
        err.downcast_ref::<Rejected>()
            .cloned()
            .or_else(|| specific::<BreakerOpen>(err))
            .or_else(|| specific::<Elapsed>(err))
            .or_else(|| specific::<DeadlineExceeded>(err))
            .or_else(|| specific::<BulkheadFull>(err))
            .or_else(|| specific::<RateLimited>(err))
            .or_else(|| specific::<LimitExceeded>(err))
    }

    /// The refusal of a policy below that `err` is, as a stack of layers passes it up: `err`
    /// itself, or its direct source (a `Buffer` wraps the error it was given). A refusal deeper
    /// in the chain is the callee's own error: its own dependency refused it, and the callee
    /// failed.
    pub fn from_below(err: &(dyn StdError + 'static)) -> Option<Rejected> {
        Rejected::from_error(err).or_else(|| err.source().and_then(Rejected::from_error))
    }

    /// Boxes the specific rejection (not this enum), so that `is_caused_by::<BreakerOpen>` and
    /// friends find it in a tower error.
    pub fn into_box_error(self) -> BoxError {
        match self {
            Rejected::BreakerOpen(e) => Box::new(e),
            Rejected::Timeout(e) => Box::new(e),
            Rejected::DeadlineExceeded(e) => Box::new(e),
            Rejected::BulkheadFull(e) => Box::new(e),
            Rejected::RateLimited(e) => Box::new(e),
            Rejected::LimitExceeded(e) => Box::new(e),
        }
    }
}

// === impl Error ===

impl<E> Error<E> {
    /// The call's own error, if it got as far as running.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Rejected(_) => None,
        }
    }

    /// The policy's refusal, if it was one.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Error::Inner(_) => None,
            Error::Rejected(r) => Some(r),
        }
    }

    /// Maps the call's own error.
    pub fn map_inner<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Error::Inner(e) => Error::Inner(f(e)),
            Error::Rejected(r) => Error::Rejected(r),
        }
    }
}

impl<E> Error<Error<E>> {
    /// Merges the errors of two nested policies into one level.
    pub fn flatten(self) -> Error<E> {
        match self {
            Error::Inner(inner) => inner,
            Error::Rejected(r) => Error::Rejected(r),
        }
    }
}

impl<E> From<Rejected> for Error<E> {
    fn from(r: Rejected) -> Self {
        Error::Rejected(r)
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Inner(e) => e.fmt(f),
            Error::Rejected(r) => r.fmt(f),
        }
    }
}

impl<E: StdError + 'static> StdError for Error<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Rejected(r) => Some(r.as_std_error()),
        }
    }
}

impl Rejected {
    fn as_std_error(&self) -> &(dyn StdError + 'static) {
        match self {
            Rejected::BreakerOpen(e) => e,
            Rejected::Timeout(e) => e,
            Rejected::DeadlineExceeded(e) => e,
            Rejected::BulkheadFull(e) => e,
            Rejected::RateLimited(e) => e,
            Rejected::LimitExceeded(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_found_in_the_chain_of_an_error_boxed_by_hand() {
        // `breaker.call(..).await.map_err(BoxError::from)` under a layer: the refusal must be
        // found by type, as a layer's own is.
        let open = Rejected::BreakerOpen(BreakerOpen::new(None));
        let err: BoxError = Box::new(Error::<std::io::Error>::Rejected(open.clone()));
        assert!(is_caused_by::<BreakerOpen>(&*err));
        assert_eq!(Rejected::from_below(&*err), Some(open));
        let failed: BoxError = Box::new(Error::Inner(std::io::Error::other("reset")));
        assert!(is_caused_by::<std::io::Error>(&*failed));
        assert_eq!(Rejected::from_below(&*failed), None);
    }
}
