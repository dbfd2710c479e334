//! Errors returned by the bulkhead.

/// The bulkhead was full and its waiting queue too, or no place came free within the wait timeout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {max_concurrent} calls in flight{}", if *.queued { ", and no place came free in time" } else { " and the waiting queue full" })]
pub struct BulkheadFull {
    max_concurrent: usize,
    queued: bool,
}

impl BulkheadFull {
    pub(crate) fn new(max_concurrent: usize, queued: bool) -> BulkheadFull {
        BulkheadFull {
            max_concurrent,
            queued,
        }
    }

    /// The bulkhead's limit on concurrent calls.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// True when the call waited in the queue and timed out; false when it was refused at once
    /// because the queue was full too.
    pub fn waited(&self) -> bool {
        self.queued
    }
}

/// Why a bulkhead configuration was refused by
/// [`BulkheadBuilder::build`](super::BulkheadBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_concurrent` was zero: no call could ever run.
    #[error("bulkhead max_concurrent is 0; it must be at least 1")]
    ZeroConcurrency,
    /// `max_concurrent` was larger than the bulkhead can count.
    #[error("bulkhead max_concurrent is {got}; it must be at most {max}")]
    TooManyConcurrent {
        /// The value given.
        got: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// `max_wait` was zero with a waiting queue: every queued call would time out at once.
    #[error(
        "bulkhead max_wait is 0 with max_wait_queue {max_wait_queue}; queued calls would time out at once: set max_wait above 0, or max_wait_queue to 0 to refuse at once"
    )]
    ZeroWait {
        /// The queue length given.
        max_wait_queue: usize,
    },
}
