//! The tower layer of the fallback policy.

use std::sync::Arc;

use tower_layer::Layer;

use super::{Fallback, FallbackOn, FallbackService};
use crate::classify::ErrorsAreFailures;
use crate::error::BoxError;

/// Wraps services in a [`FallbackService`] answering with one [`Fallback`].
#[derive(Debug)]
pub struct FallbackLayer<F, C = ErrorsAreFailures> {
    fallback: Arc<F>,
    on: FallbackOn,
    classify: C,
}

impl<F> FallbackLayer<F> {
    /// A layer answering with `fallback` (whose error type is [`BoxError`]) when the inner
    /// service fails or a policy below refuses, counting errors as failures.
    pub fn new<T>(fallback: Fallback<T, BoxError, F>) -> FallbackLayer<F> {
        FallbackLayer {
            fallback: fallback.fallback,
            on: fallback.on,
            classify: ErrorsAreFailures,
        }
    }
}

impl<F, C> FallbackLayer<F, C> {
    /// Judges results with `classify` (a [`Classify`](crate::Classify) of the response and
    /// [`BoxError`]), so that, say, an HTTP 503 answer calls the fallback with
    /// [`FallbackReason::FailedResponse`](super::FallbackReason::FailedResponse).
    pub fn with_classify<C2>(self, classify: C2) -> FallbackLayer<F, C2> {
        FallbackLayer {
            fallback: self.fallback,
            on: self.on,
            classify,
        }
    }
}

impl<F, C: Clone> Clone for FallbackLayer<F, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            fallback: self.fallback.clone(),
            on: self.on,
            classify: self.classify.clone(),
        }
    }
}

impl<S, F, C: Clone> Layer<S> for FallbackLayer<F, C> {
    type Service = FallbackService<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
            on: self.on,
            classify: self.classify.clone(),
            unready: None,
        }
    }
}
