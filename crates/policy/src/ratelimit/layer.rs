use tower_layer::Layer;

use super::{RateLimitService, RateLimiter};

/// Applies a [`RateLimiter`] to the wrapped service.
///
/// Every service the layer builds shares the one limiter it was given: the rate holds across all
/// of them together.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// A layer that applies `limiter`.
    pub fn new(limiter: RateLimiter) -> RateLimitLayer {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.limiter.clone())
    }
}
