use tower_layer::Layer;

use super::{DeadlineService, Timeout, TimeoutService};

/// Applies a [`Timeout`] to every call of the wrapped service.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Timeout,
}

impl TimeoutLayer {
    /// A layer that applies `timeout`.
    pub fn new(timeout: Timeout) -> TimeoutLayer {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService::new(inner, self.timeout)
    }
}

/// Enforces each request's own [`Deadline`](super::Deadline) on the wrapped service, and makes
/// it the deadline in force below.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    _priv: (),
}

impl DeadlineLayer {
    /// A layer that enforces the deadline of each request.
    pub fn new() -> DeadlineLayer {
        DeadlineLayer { _priv: () }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService::new(inner)
    }
}
