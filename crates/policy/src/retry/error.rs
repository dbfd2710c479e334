//! Errors in building a retry policy.
//!
//! A retry never refuses a call by itself (it hands back the last attempt's result), so these are
//! only the reasons a constructor turns down its settings.

use std::time::Duration;

/// [`Retry::new`](super::Retry::new) was asked for zero attempts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry attempts must be at least 1 (the first attempt counts), got 0")]
pub struct InvalidAttempts {
    _priv: (),
}

impl InvalidAttempts {
    pub(crate) fn new() -> InvalidAttempts {
        InvalidAttempts { _priv: () }
    }
}

/// Why [`ExponentialBackoff::new`](super::ExponentialBackoff::new) refused its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// A zero base would make every sleep zero, and retries hammer the callee back to back.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// The cap is below the first sleep.
    #[error("backoff max ({max:?}) must be at least its base ({base:?})")]
    MaxBelowBase {
        /// The base asked for.
        base: Duration,
        /// The max asked for.
        max: Duration,
    },
}

/// Why [`Budget::new`](super::Budget::new) refused its settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBudget {
    /// The window is too short to see a storm coming.
    #[error("retry budget window ({window:?}) must be at least {min:?}")]
    WindowTooShort {
        /// The window asked for.
        window: Duration,
        /// The shortest window allowed.
        min: Duration,
    },
    /// The ratio is negative, infinite or NaN.
    #[error(
        "retry budget ratio must be a finite number >= 0 (0.2 = retries add at most 20% load), got {0}"
    )]
    InvalidRatio(f64),
}
