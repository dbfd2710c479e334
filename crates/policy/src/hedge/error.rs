//! Errors of the hedging policy. Hedging never refuses a call: its only errors are
//! configuration mistakes.

/// A misconfigured hedge: what was wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidConfig {
    /// `max_extra` was zero: such a hedge would never hedge.
    #[error("max_extra must be at least 1")]
    ZeroMaxExtra,
    /// The percentile of a [`HedgeDelay::Percentile`](super::HedgeDelay::Percentile) was outside
    /// `[0, 100]` or NaN.
    #[error("the hedge percentile must be within [0, 100], got {0}")]
    Percentile(f64),
    /// The window of observed latencies was zero.
    #[error("the latency window must be longer than zero")]
    ZeroWindow,
}
