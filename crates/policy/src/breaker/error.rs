//! Errors returned by the circuit breaker.

use std::time::Duration;

/// The breaker refused the call: it is open, forced open, or half-open with every probe taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open")]
pub struct BreakerOpen {
    retry_in: Option<Duration>,
}

impl BreakerOpen {
    pub(crate) fn new(retry_in: Option<Duration>) -> BreakerOpen {
        BreakerOpen { retry_in }
    }

    /// How long until the breaker lets a probe through, when it knows (not when forced open, nor
    /// when half-open with its probes taken).
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_in
    }
}
