//! The tower layer of [`Retry`].

use std::fmt;

use tower_layer::Layer;

use super::{Cloned, Retry, RetryOnError, RetryService};

/// Wraps services in a [`RetryService`] retrying by one shared [`Retry`] policy.
///
/// Requests are copied for retries with `Clone` unless [`RetryLayer::with_clone_request`] says
/// otherwise.
pub struct RetryLayer<C = RetryOnError, R = Cloned> {
    retry: Retry<C>,
    cloner: R,
}

impl<C> RetryLayer<C> {
    /// A layer retrying by `retry`; its clones share counters and budget.
    pub fn new(retry: Retry<C>) -> RetryLayer<C> {
        RetryLayer {
            retry,
            cloner: Cloned,
        }
    }
}

impl<C, R> RetryLayer<C, R> {
    /// Copies requests for retries with `clone`, a
    /// [`CloneRequest`](super::CloneRequest) such as a `Fn(&Req) -> Option<Req>`. A request it
    /// returns `None` for is sent once and never retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rampart_policy::retry::{ExponentialBackoff, Retry, RetryLayer};
    ///
    /// struct Upload { idempotent: bool, body: Vec<u8> }
    ///
    /// let backoff = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1))?;
    /// let layer = RetryLayer::new(Retry::new(3, backoff)?).with_clone_request(|req: &Upload| {
    ///     req.idempotent.then(|| Upload { idempotent: true, body: req.body.clone() })
    /// });
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_clone_request<R2>(self, clone: R2) -> RetryLayer<C, R2> {
        RetryLayer {
            retry: self.retry,
            cloner: clone,
        }
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for RetryLayer<C, R> {
    type Service = RetryService<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::from_parts(inner, self.retry.clone(), self.cloner.clone())
    }
}

impl<C: Clone, R: Clone> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            retry: self.retry.clone(),
            cloner: self.cloner.clone(),
        }
    }
}

impl<C, R> fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}
