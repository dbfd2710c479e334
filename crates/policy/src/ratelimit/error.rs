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
