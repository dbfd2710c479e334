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
