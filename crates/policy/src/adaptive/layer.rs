//! The tower layer of the adaptive concurrency limit.

use tower_layer::Layer;

use super::{AdaptiveLimit, AdaptiveLimitService};
use crate::classify::ErrorsAreFailures;

/// Wraps services in an [`AdaptiveLimitService`] sharing one [`AdaptiveLimit`].
///
/// Every service the layer makes admits under the same limit, so wrap once per callee: a limit
/// shared by two callees learns neither.
#[derive(Clone, Debug)]
pub struct AdaptiveLimitLayer<C = ErrorsAreFailures> {
    limit: AdaptiveLimit,
    classify: C,
}

impl AdaptiveLimitLayer {
    /// A layer admitting under `limit`, counting errors as failures.
    pub fn new(limit: AdaptiveLimit) -> AdaptiveLimitLayer {
        AdaptiveLimitLayer {
            limit,
            classify: ErrorsAreFailures,
        }
    }
}

impl<C> AdaptiveLimitLayer<C> {
    /// Judges responses with `classify` (a [`Classify`](crate::Classify) of the inner service's
    /// response and error), so that, say, an HTTP 503 shrinks the limit like an error does.
    pub fn with_classify<C2>(self, classify: C2) -> AdaptiveLimitLayer<C2> {
        AdaptiveLimitLayer {
            limit: self.limit,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveLimitLayer<C> {
    type Service = AdaptiveLimitService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimitService::new(inner, self.limit.clone()).with_classify(self.classify.clone())
    }
}
