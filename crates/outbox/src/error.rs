//! What can go wrong with the outbox: one small type per failure, gathered in [`Error`] so that
//! callers match on the variant, never on message text.

use crate::id::MessageId;
use crate::message::State;
use crate::record::DecodeError;

/// A boxed error from a backend's own machinery (the database file, the NATS connection).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message would pass a limit, and `on_full` could not (or may not) make room. Nothing
    /// already accepted was lost. The proxy answers 503 `outbox-full`, or 413 `body-too-large`
    /// when the message is larger alone than `max_bytes`.
    #[error(transparent)]
    Full(#[from] Full),
    /// The lease no longer settles the message: it expired and the message was taken again, a
    /// restart voided it, or the message was settled already.
    #[error("message {0}: the lease no longer holds (expired, taken again, or already settled)")]
    LeaseLost(MessageId),
    /// No message has this id (or its tombstone was purged).
    #[error("no message {0}")]
    NotFound(MessageId),
    /// Only a dead message can be re-driven.
    #[error("message {id} is {state}: only a dead message can be re-driven")]
    NotDead {
        /// The message.
        id: MessageId,
        /// Its state.
        state: State,
    },
    /// The request cannot be stored: a part is longer than the record format allows.
    #[error("the message cannot be stored: {0}")]
    Unstorable(&'static str),
    /// A stored record is unreadable: the file was damaged, or written by a newer version.
    #[error("a stored record is unreadable: {0}")]
    Corrupt(#[from] DecodeError),
    /// The store was closed, or its writer stopped after an error.
    #[error("the outbox store is closed")]
    Closed,
    /// The backend failed (disk, database, network).
    #[error("the outbox store failed: {0}")]
    Backend(#[source] BoxError),
}

/// Why a message did not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the outbox is full: {reason}")]
pub struct Full {
    /// Which limit.
    pub reason: FullReason,
}

/// The limit a message would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// `max_messages` messages are held.
    Messages {
        /// The limit.
        max: u64,
    },
    /// The message does not fit in `max_bytes` beside those held.
    Bytes {
        /// The limit.
        max: u64,
        /// The message's size.
        size: u64,
    },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::Messages { max } => write!(f, "{max} messages held (max_messages)"),
            FullReason::Bytes { max, size } => {
                write!(
                    f,
                    "a message of {size} bytes does not fit in {max} bytes (max_bytes)"
                )
            }
        }
    }
}

impl Error {
    /// Wraps a backend's own error.
    pub fn backend(e: impl Into<BoxError>) -> Error {
        Error::Backend(e.into())
    }
}
