//! What the outbox keeps: the accepted request, and where its delivery stands.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method};

use crate::id::MessageId;
use crate::time::Timestamp;

/// The request as the client sent it, to be replayed upstream. Never changes once stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path and query, as received.
    pub path_and_query: PathAndQuery,
    /// Every header line, in the order received (a name may repeat).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
    /// The client's `idempotency-key`, when it sent one: delivery is at-least-once, so the
    /// upstream may use it to recognise a second delivery of the same message.
    pub idempotency_key: Option<String>,
}

impl Request {
    /// A request with no headers, no body and no idempotency key.
    pub fn new(method: Method, path_and_query: PathAndQuery) -> Request {
        Request {
            method,
            path_and_query,
            headers: Vec::new(),
            body: Bytes::new(),
            idempotency_key: None,
        }
    }
}

/// Where a message stands.
///
/// ```text
///            append            take                    delivered
///   (client) ------> queued ---------> delivering ------------------> delivered (tombstone)
///                    ^  ^                 |  |
///                    |  +-----------------+  |  retry_later, lease expiry, restart
///                    |                       |
///                    +--- redrive --- dead <-+  dead (max_age, or a final failure)
/// ```
///
/// A message dropped by `on_full = "drop-oldest"` leaves a `dropped` tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Waiting for its next attempt (due now, or at `next_attempt_at`).
    Queued,
    /// Leased to a delivery attempt.
    Delivering,
    /// An upstream took it; only a tombstone is left.
    Delivered,
    /// Given up on; kept, whole, until re-driven.
    Dead,
    /// Dropped to make room for newer messages; only a tombstone is left.
    Dropped,
}

impl State {
    /// The name used in the admin API and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Delivering => "delivering",
            State::Delivered => "delivered",
            State::Dead => "dead",
            State::Dropped => "dropped",
        }
    }

    /// Whether the store still holds the message's request (and counts it against its limits).
    pub fn is_held(self) -> bool {
        matches!(self, State::Queued | State::Delivering | State::Dead)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message's delivery record: everything but the request itself. This is what
/// `GET /api/outbox/<id>` shows, and all that is left of a delivered or dropped message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The id.
    pub id: MessageId,
    /// The route that accepted it, whose stack delivers it.
    pub route: Arc<str>,
    /// Where it stands.
    pub state: State,
    /// Attempts that ended (failed, or succeeded when delivered). An attempt cut short by a crash
    /// or an expired lease is not counted.
    pub attempts: u32,
    /// When it was accepted.
    pub accepted_at: Timestamp,
    /// When it (re-)entered the queue: acceptance, or the last re-drive. `max_age` counts from
    /// here, so a re-driven message gets a full new life.
    pub queued_at: Timestamp,
    /// When its next attempt is due (meaningful while queued).
    pub next_attempt_at: Timestamp,
    /// When its state last changed (for a tombstone: when it was delivered or dropped).
    pub changed_at: Timestamp,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Bytes it counts against `max_bytes` (its stored record's size; 0 for a tombstone).
    pub size: u64,
}

impl Status {
    /// The record of a message `route` just accepted at `now`: queued, due at once, no attempt
    /// yet; `size` bytes against `max_bytes`.
    pub fn accepted(id: MessageId, route: Arc<str>, now: Timestamp, size: u64) -> Status {
        Status {
            id,
            route,
            state: State::Queued,
            attempts: 0,
            accepted_at: now,
            queued_at: now,
            next_attempt_at: now,
            changed_at: now,
            last_error: None,
            size,
        }
    }
}

/// A message taken for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its delivery record, as it was when taken.
    pub status: Status,
    /// The request to send.
    pub request: Request,
}

impl Message {
    /// The id.
    pub fn id(&self) -> MessageId {
        self.status.id
    }
}

/// The right to settle one message: handed out by `take`, given back to `delivered`,
/// `retry_later` or `dead`. A lease that expired, or that a restart voided, no longer settles
/// anything but a successful delivery (see [`Store::delivered`](crate::Store::delivered)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The message leased.
    pub id: MessageId,
    /// Which lease of that message (each `take` makes a new one).
    pub token: u64,
}

/// A message and its lease, as `take` returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    /// The message.
    pub message: Message,
    /// Give it back to settle the message.
    pub lease: Lease,
}
