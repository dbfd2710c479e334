use tower_layer::Layer;

use super::{CircuitBreaker, CircuitBreakerService};
use crate::classify::ErrorsAreFailures;

/// Puts a [`CircuitBreaker`] in front of a service.
///
/// Every service the layer makes shares the one breaker: layer a breaker per endpoint, not one per
/// route, when endpoints fail independently.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ErrorsAreFailures> {
    breaker: CircuitBreaker,
    classify: C,
}

impl CircuitBreakerLayer {
    /// A layer over `breaker` that counts every `Err` as a failure.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Judges responses with `classify` instead (a 503 response can be a failure too).
    pub fn with_classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(inner, self.breaker.clone()).with_classify(self.classify.clone())
    }
}
