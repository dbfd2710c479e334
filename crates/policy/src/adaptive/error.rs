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
