//! Errors returned by the adaptive concurrency limit.

/// The adaptive limit was reached, and no place came free in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit of {limit} reached")]
pub struct LimitExceeded {
    limit: usize,
}

impl LimitExceeded {
    pub(crate) fn new(limit: usize) -> LimitExceeded {
        LimitExceeded { limit }
    }

    /// The limit in force when the call was refused.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A misconfigured adaptive limit: what was wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// `min_limit` was zero: a limit of zero would refuse every call forever.
    #[error("min_limit must be at least 1")]
    ZeroMinLimit,
    /// The limits were not ordered `min_limit <= initial_limit <= max_limit`.
    #[error(
        "limits must satisfy min_limit ({min}) <= initial_limit ({initial}) <= max_limit ({max})"
    )]
    LimitOrder {
        /// The configured `min_limit`.
        min: usize,
        /// The configured `initial_limit`.
        initial: usize,
        /// The configured `max_limit`.
        max: usize,
    },
    /// Gradient2's smoothing was outside `(0, 1]`.
    #[error("smoothing must be in (0, 1], got {0}")]
    Smoothing(f64),
    /// Gradient2's RTT tolerance was below 1 or not a finite number.
    #[error("tolerance must be a finite number >= 1, got {0}")]
    Tolerance(f64),
    /// A Gradient2 averaging window held no sample.
    #[error("the {0} RTT window must span at least one sample")]
    ZeroWindow(&'static str),
    /// AIMD's backoff ratio was outside `[0.5, 1)`.
    #[error("backoff ratio must be in [0.5, 1), got {0}")]
    BackoffRatio(f64),
    /// AIMD's timeout was zero.
    #[error("timeout must be longer than zero")]
    ZeroTimeout,
}
