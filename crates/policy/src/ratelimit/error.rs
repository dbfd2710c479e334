//! Errors returned by the rate limiter.

use std::time::Duration;

/// The rate limit allows no call now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: next call allowed in {retry_after:?}")]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(retry_after: Duration) -> RateLimited {
        RateLimited { retry_after }
    }

    /// How long until a call would be allowed.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

/// Why a rate limit configuration was refused by
/// [`RateLimiterBuilder::build`](super::RateLimiterBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The rate was zero calls per period: no call could ever pass.
    #[error("rate limit is 0 calls per {per}; it must be at least 1")]
    ZeroRate {
        /// The period of the rate: "second" or "minute".
        per: &'static str,
    },
    /// The burst was zero: no call could ever pass.
    #[error("rate limit burst is 0; it must be at least 1")]
    ZeroBurst,
}
