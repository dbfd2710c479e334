//! The tower layer of the hedging policy.

use tower_layer::Layer;

use super::{Cloned, Hedge, HedgeService};
use crate::classify::ErrorsAreFailures;

/// Wraps services in a [`HedgeService`] sharing one [`Hedge`] (its latencies and counters).
#[derive(Clone, Debug)]
pub struct HedgeLayer<P = Cloned, C = ErrorsAreFailures> {
    hedge: Hedge,
    clone_request: P,
    classify: C,
}

impl HedgeLayer {
    /// A layer hedging with `hedge`, copying requests with `Clone` and counting errors as
    /// failures.
    pub fn new(hedge: Hedge) -> HedgeLayer {
        HedgeLayer {
            hedge,
            clone_request: Cloned,
            classify: ErrorsAreFailures,
        }
    }
}

impl<P, C> HedgeLayer<P, C> {
    /// Copies requests with `clone_request` (a [`CloneRequest`](super::CloneRequest), such as an
    /// `Fn(&Req) -> Option<Req>`) instead of `Clone`; a request it declines is not hedged.
    pub fn with_clone_request<P2>(self, clone_request: P2) -> HedgeLayer<P2, C> {
        HedgeLayer {
            hedge: self.hedge,
            clone_request,
            classify: self.classify,
        }
    }

    /// Judges answers with `classify` (a [`Classify`](crate::Classify) of the inner service's
    /// response and error), so that, say, an HTTP 503 does not win over a hedge in flight.
    pub fn with_classify<C2>(self, classify: C2) -> HedgeLayer<P, C2> {
        HedgeLayer {
            hedge: self.hedge,
            clone_request: self.clone_request,
            classify,
        }
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for HedgeLayer<P, C> {
    type Service = HedgeService<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService::new(inner, self.hedge.clone())
            .with_clone_request(self.clone_request.clone())
            .with_classify(self.classify.clone())
    }
}
