//! The [`Store`] trait: what every backend offers the proxy.
//!
//! The trait is object-safe, its methods returning boxed futures, so the proxy holds an
//! `Arc<dyn Store>` chosen at start from `[outbox] store`: one delivery loop and one admin handler
//! serve every backend, and no type parameter spreads through the proxy's types. The box costs
//! one allocation per operation, nothing beside the fsync or network round trip each one waits
//! for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::Error;
use crate::id::MessageId;
use crate::message::{Lease, Leased, Request, Status};
use crate::time::Timestamp;

/// A durable queue of requests, one FIFO per route, delivered at least once.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Stores a request accepted by `route` and returns its id, only once the message is durable
    /// (on disk, or in JetStream). Concurrent appends share one commit.
    ///
    /// Fails with [`Error::Full`] when the message would pass a limit and `on_full` could not make
    /// room; then nothing changed.
    fn append<'a>(
        &'a self,
        route: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<MessageId, Error>>;

    /// Leases up to `max` messages of `route` that are due, oldest accepted first, waiting up to
    /// `wait` for one to become due when none is. An empty result means none came due in time.
    ///
    /// A leased message is not handed out again until its lease expires (the store's lease
    /// period) or the process restarts; then it is, so a delivery that crashed is retried.
    fn take<'a>(
        &'a self,
        route: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Leased>, Error>>;

    /// Settles a message as delivered: the upstream took it. The store keeps a tombstone for a
    /// while, so that its id still answers `delivered`.
    ///
    /// Accepted whatever became of the lease, as long as the store still holds the message: the
    /// upstream has it, whether or not the lease expired meanwhile. Fails with
    /// [`Error::LeaseLost`] when it is no longer held (already delivered or dropped).
    fn delivered(&self, lease: Lease) -> BoxFuture<'_, Result<(), Error>>;

    /// Records a failed attempt: the message goes back to the queue, due at `at`.
    ///
    /// Fails with [`Error::LeaseLost`] unless `lease` is the message's current lease.
    fn retry_later(
        &self,
        lease: Lease,
        at: Timestamp,
        error: String,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// Records a failed attempt after which the message is given up on: it moves to the
    /// dead-letter list, kept whole until re-driven.
    ///
    /// Fails with [`Error::LeaseLost`] unless `lease` is the message's current lease.
    fn dead(&self, lease: Lease, error: String) -> BoxFuture<'_, Result<(), Error>>;

    /// Puts a dead message back in its queue, due now, with its attempts reset and `max_age`
    /// counted afresh.
    fn redrive(&self, id: MessageId) -> BoxFuture<'_, Result<(), Error>>;

    /// The message's delivery record, or `None` for an id the store does not know (never
    /// accepted, or a tombstone already purged).
    fn get(&self, id: MessageId) -> BoxFuture<'_, Result<Option<Status>, Error>>;

    /// A page of the dead-letter list: the delivery records of the dead messages, oldest accepted
    /// first (id order), of `route` only when one is named, at most `limit` of them.
    ///
    /// `after` pages through the list: the page starts with the first dead message whose id sorts
    /// above it, so passing the last id of one page gives the next, and messages that die or are
    /// re-driven meanwhile neither shift a page nor repeat one. An empty page (or one shorter than
    /// `limit`) is the end of the list. A route that has no dead message, or that the store never
    /// saw, gives an empty list.
    ///
    /// Each record is read as [`get`](Store::get) would answer for its id: what the operator sees
    /// before re-driving it.
    fn dead_letters<'a>(
        &'a self,
        route: Option<&'a str>,
        after: Option<MessageId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Status>, Error>>;

    /// Counts per route and state, and bytes held.
    fn summary(&self) -> BoxFuture<'_, Result<Summary, Error>>;

    /// The store's kind, as `[outbox] store` names it: `embedded` or `nats`.
    fn kind(&self) -> &'static str;

    /// The store's time, on which due times are set.
    fn now(&self) -> Timestamp;

    /// Commits what is pending and lets go of the backend (the file, the connection); returns
    /// once that is done. Every operation fails with [`Error::Closed`] from then on.
    fn close(&self) -> BoxFuture<'_, Result<(), Error>>;
}

/// What happens to a message that would pass a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Refuse it ([`Error::Full`]); nothing accepted is ever dropped.
    #[default]
    Reject,
    /// Make room by dropping dead messages first, then the oldest queued ones (never one being
    /// delivered), each counted in [`Summary::dropped`]; refuse it when that cannot make room.
    DropOldest,
}

/// The bounds of a store (`[outbox]` `max_messages`, `max_bytes`, `on_full`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages held at most: queued, delivering or dead. Tombstones do not count.
    pub max_messages: u64,
    /// Bytes held at most: the sum of the held messages' [`Status::size`].
    pub max_bytes: u64,
    /// What a message that does not fit meets.
    pub on_full: OnFull,
}

impl Default for Limits {
    /// The configuration's defaults: 100000 messages, 1 GiB, reject.
    fn default() -> Limits {
        Limits {
            max_messages: 100_000,
            max_bytes: 1 << 30,
            on_full: OnFull::Reject,
        }
    }
}

/// A snapshot of a store's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Per route.
    pub routes: BTreeMap<Arc<str>, Counts>,
    /// All routes together.
    pub total: Counts,
    /// Messages dropped by `on_full = "drop-oldest"` since the store was opened.
    pub dropped: u64,
}

/// How many messages are in each state, and the bytes they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Waiting for an attempt.
    pub queued: u64,
    /// Leased to an attempt.
    pub delivering: u64,
    /// In the dead-letter list.
    pub dead: u64,
    /// Tombstones of delivered messages still kept.
    pub delivered: u64,
    /// Bytes the held (queued, delivering, dead) messages count.
    pub bytes: u64,
}

impl Counts {
    /// Messages waiting to be delivered: queued or being delivered (`rampart_outbox_pending`).
    pub fn pending(&self) -> u64 {
        self.queued + self.delivering
    }

    /// Adds another route's counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.queued += other.queued;
        self.delivering += other.delivering;
        self.dead += other.dead;
        self.delivered += other.delivered;
        self.bytes += other.bytes;
    }
}
