use tower_layer::Layer;

use super::{Bulkhead, BulkheadService};

/// Applies a [`Bulkhead`] to the wrapped service.
///
/// Every service the layer builds shares the one bulkhead it was given: the limit holds across
/// all of them together.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer that applies `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> BulkheadLayer {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(inner, self.bulkhead.clone())
    }
}
