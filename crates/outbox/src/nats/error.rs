//! What the nats store reports when NATS fails it: what it was doing, against which server and
//! stream, and why. It travels as the source of [`Error::Backend`](crate::Error::Backend), so the
//! proxy's handling stays the same for every backend while the operator's log says what to fix.

use std::fmt;
use std::sync::Arc;

use super::url;
use crate::error::{BoxError, Error};

/// The NATS server and stream a store works with, named in its errors.
#[derive(Clone, Debug)]
pub(super) struct Place(Arc<(String, String)>);

impl Place {
    /// The place named in errors: `url` with its credentials hidden.
    pub(super) fn new(url: &str, stream: &str) -> Place {
        Place(Arc::new((url::redacted(url), stream.to_owned())))
    }

    /// An [`Error::Backend`] saying that `what` failed, and why.
    pub(super) fn error(&self, what: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Backend(Box::new(NatsError {
            what: what.into(),
            url: self.0.0.clone(),
            stream: self.0.1.clone(),
            source: source.into(),
        }))
    }
}

/// A NATS operation of the outbox failed.
#[derive(Debug)]
pub struct NatsError {
    what: String,
    url: String,
    stream: String,
    source: BoxError,
}

impl NatsError {
    /// What the store was doing, e.g. "connecting" or "publishing a message".
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The server's URL as configured (`[outbox] nats.url`), with any user, password or token
    /// in it replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The stream (`[outbox] nats.stream`).
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (NATS server {}, stream {}): {}",
            self.what, self.url, self.stream, self.source
        )
    }
}

impl std::error::Error for NatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
