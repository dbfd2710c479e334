//! Errors returned by the timeout and the deadline.

use std::time::Duration;

/// The call did not finish within its timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call timed out after {after:?}")]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    /// A timeout that expired after `after`.
    pub fn new(after: Duration) -> Elapsed {
        Elapsed { after }
    }

    /// The timeout that expired.
    pub fn after(&self) -> Duration {
        self.after
    }
}

/// The request's deadline passed: either before the call started (it was never made) or while it
/// ran (it was cut short).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded {
    _priv: (),
}

impl DeadlineExceeded {
    /// A passed deadline.
    pub fn new() -> DeadlineExceeded {
        DeadlineExceeded { _priv: () }
    }
}

impl Default for DeadlineExceeded {
    fn default() -> Self {
        DeadlineExceeded::new()
    }
}
