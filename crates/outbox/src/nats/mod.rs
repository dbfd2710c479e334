//! The nats store: the outbox in NATS JetStream, one durable queue that several rampart
//! instances share.
//!
//! # Where things are
//!
//! - **The requests** are messages of one work-queue stream, `[outbox] nats.stream`
//!   (`RAMPART_OUTBOX` by default; file storage; created when missing). A route's queue is the
//!   subjects `{stream}.q.{route}.*`, one per message, `{stream}.q.{route}.{id}` (the route's name
//!   written as a token, see `names`), so that whether a message is still queued can be asked by
//!   its id; a dead message's request waits under `{stream}.dead.{id}` until re-driven. Each
//!   message carries its id in the `Rampart-Message-Id` header, and its request in the payload as
//!   a [`record`] message record, exactly as the embedded store keeps it.
//! - **The statuses** are the [`record`] status records of a key-value bucket,
//!   `{stream}_STATUS`, one key per id: rewritten at each change, and left as the tombstone of a
//!   delivered or dropped message until purged. Every write but the first is a compare-and-set on
//!   the key's revision, which is how instances that share the stream keep out of each other's
//!   way.
//! - **Each route's consumer** is a durable pull consumer named by the route's token, with
//!   explicit acks and `ack_wait` equal to the lease. JetStream hands each message to one
//!   consumer request at a time, whichever instance made it: that is how several instances share
//!   one queue without two of them holding the same message.
//!
//! # The operations
//!
//! - **append** publishes the request with `Nats-Msg-Id: {id}` and waits for JetStream's
//!   acknowledgement (from then on the message is in the stream and will be delivered), then
//!   creates its status record. When the process dies between the two, whoever takes the message
//!   writes its status.
//! - **take** fetches up to `max` messages of the route's consumer at once, and when none is due,
//!   waits up to `wait` for one. For each, it writes the status `delivering`; the new revision of
//!   that record is the lease's token. The JetStream message stays in memory until settled.
//! - **delivered** writes the tombstone, then acknowledges the message (and waits for the
//!   server's answer), which removes it from the stream. **retry_later** writes the status, then
//!   naks the message with the delay until `at`: JetStream hands it out again then. **dead**
//!   publishes the request under the dead subject, writes the status, then acknowledges the queued
//!   copy. **redrive** publishes the dead request to the route's queue again, writes the status,
//!   then deletes the dead copy.
//! - **get** reads the status record; **summary** counts from the view (see `view`), which
//!   follows the bucket's changes. Limits, drop-oldest and the purge of tombstones work on the
//!   view as the embedded store's work on its index.
//!
//! Every step is ordered so that a crash between two of them leaves nothing lost: a status
//! written before its message is gone from the queue makes the leftover copy harmless (a taker
//! finding a `delivered` or `dropped` status acknowledges the copy away; one finding `dead`
//! queues the message again, as a re-drive would). A tombstone is purged only once its message
//! is out of the queue, so that a leftover copy never comes back as a message without a status,
//! which a taker would deliver.
//!
//! # What differs from the embedded store
//!
//! - **Durability** is the NATS server's: an append returns once JetStream acknowledged the
//!   message, that is once the server wrote it to its files. A killed nats-server loses nothing so
//!   acknowledged; a machine crash or power loss can lose what the server had not yet fsync'd,
//!   which by default is up to two minutes of writes. Servers from 2.10 on take `sync_interval`
//!   in their `jetstream` block (`always`: fsync every write); a cluster with replicated streams
//!   survives the loss of one machine without it.
//! - **Leases are the server's.** A lease lasts `ack_wait` from when the server handed the
//!   message out; when it ends the server hands the message out again, to any instance. A restart
//!   of rampart does not void the leases it held: their messages come due when the leases end.
//! - **Order.** JetStream hands out messages that come due again (after a failed attempt or an
//!   expired lease) before new ones, in the order they came due; a re-driven message joins the end
//!   of its queue.
//! - **Limits are checked against the view**, so instances appending at the same moment may pass
//!   `max_messages` or `max_bytes` by the number of those appends. A dropped message's request
//!   stays in the stream until the queue reaches it, and its status is a tombstone at once.
//! - **A request larger than the server's `max_payload`** (1 MiB by default) cannot be stored:
//!   [`Error::Unstorable`].
//! - **An append that failed may still be delivered**: when the failure came after JetStream
//!   stored the message (the acknowledgement was lost, or the status could not be written).
//! - **Time.** Due times and leases run on the server's clock, so this store cannot run on a paused
//!   tokio clock.

mod error;
mod names;
mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use rampart_policy::rng::Rng;
use tokio::task::JoinHandle;

pub use error::NatsError;
pub use names::InvalidStream;

use self::error::Place;
use self::names::Names;
use self::view::View;
use crate::error::{BoxError, Error};
use crate::id::{IdGenerator, MessageId};
use crate::message::{Lease, Leased, Message, Request, State, Status};
use crate::record::{self, MAX_ERROR_LEN, MessageRecord};
use crate::store::{Limits, OnFull, Store, Summary};
use crate::time::{StoreClock, Timestamp};

/// The header carrying a message's id.
const ID_HEADER: &str = "Rampart-Message-Id";
/// How long to wait for the server's answer to any one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the server at connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a compare-and-set is tried again when another writer came first.
const TRIES: usize = 4;
/// Tombstones purged per operation at most, so that a backlog never makes one operation long.
const PURGE_PER_OP: usize = 16;
/// How long a pull request for what is due now may take before the store stops waiting for
/// it. The server answers such a request at once; this only bounds a server that does not.
const NO_WAIT_GUARD: Duration = Duration::from_secs(5);
/// The shortest wait worth a pull request.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// How to connect a [`Nats`] store.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// The NATS server (`[outbox] nats.url`), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream (`[outbox] nats.stream`): 1 to 64 ASCII letters, digits, `-` or `_`. It names
    /// the subjects and the status bucket too. Instances naming the same stream share its queues.
    pub stream: String,
    /// `max_messages`, `max_bytes`, `on_full`.
    pub limits: Limits,
    /// How long a `take` leases a message (the consumers' `ack_wait`): it must exceed the longest
    /// delivery attempt, and be the same on every instance sharing the stream. Default 60 s.
    pub lease: Duration,
    /// How long a delivered or dropped message's tombstone is kept. Default 1 hour.
    pub retention: Duration,
    /// The store's time. Default [`StoreClock::system`].
    pub clock: StoreClock,
    /// The random part of new ids. Default [`Rng::thread`].
    pub rng: Rng,
}

impl NatsOptions {
    /// Defaults for the stream `stream` on the server at `url`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            stream: stream.into(),
            limits: Limits::default(),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
            clock: StoreClock::system(),
            rng: Rng::thread(),
        }
    }
}

/// The nats store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct Nats {
    inner: Arc<Inner>,
}

struct Inner {
    place: Place,
    names: Names,
    client: async_nats::Client,
    js: Context,
    /// The work-queue stream.
    queue: stream::Stream,
    statuses: kv::Store,
    /// The stream behind `statuses`, to delete tombstones without leaving markers.
    statuses_stream: stream::Stream,
    consumers: Mutex<HashMap<Arc<str>, PullConsumer>>,
    leases: Mutex<HashMap<MessageId, Held>>,
    view: Arc<View>,
    ids: Mutex<IdGenerator>,
    clock: StoreClock,
    limits: Limits,
    lease: Duration,
    retention: Duration,
    closed: AtomicBool,
    /// The task following the status bucket.
    feed: JoinHandle<()>,
}

/// A message this instance leased: what settling it needs.
struct Held {
    token: u64,
    /// When the lease ends, as this instance counts.
    until: Timestamp,
    /// The status written when it was taken.
    status: Status,
    /// The JetStream message, to acknowledge or nak.
    message: jetstream::Message,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("stream", &self.inner.names.stream)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves its map whole; a panic elsewhere must not stop the store.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Nats {
    /// Connects to the server, creates the stream and the status bucket when missing, and reads
    /// every status into the store's view. Fails with [`Error::Backend`] carrying a
    /// [`NatsError`] that names the server, the stream and what failed.
    pub async fn connect(options: NatsOptions) -> Result<Nats, Error> {
        let place = Place::new(&options.url, &options.stream);
        let names =
            Names::new(&options.stream).map_err(|e| place.error("checking the stream name", e))?;
        let client = async_nats::ConnectOptions::new()
            .name("rampart-outbox")
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(options.url.as_str())
            .await
            .map_err(|e| place.error("connecting", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let queue = open_queue(&js, &names).await.map_err(|e| {
            place.error(
                "opening the stream (is JetStream enabled on the server, `nats-server -js`?)",
                e,
            )
        })?;
        let (statuses, statuses_stream) = open_bucket(&js, &names)
            .await
            .map_err(|e| place.error(format!("opening the bucket {}", names.bucket), e))?;

        let view = Arc::new(View::new(options.lease));
        let feed = view::load(&statuses_stream, &client, &names, &view, &options.clock)
            .await
            .map_err(|e| place.error("reading the statuses", e))?;
        let feed = tokio::spawn(view::follow(
            feed,
            names.clone(),
            view.clone(),
            options.clock.clone(),
        ));
        let ids = IdGenerator::new(view.highest_id(), options.rng);
        Ok(Nats {
            inner: Arc::new(Inner {
                place,
                names,
                client,
                js,
                queue,
                statuses,
                statuses_stream,
                consumers: Mutex::new(HashMap::new()),
                leases: Mutex::new(HashMap::new()),
                view,
                ids: Mutex::new(ids),
                clock: options.clock,
                limits: options.limits,
                lease: options.lease,
                retention: options.retention,
                closed: AtomicBool::new(false),
                feed,
            }),
        })
    }

    /// Sends what is pending and closes the connection. Operations on any clone fail with
    /// [`Error::Closed`] from then on. Leases still held end on the server's clock, after which
    /// their messages are handed out again.
    pub async fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.feed.abort();
        inner
            .client
            .flush()
            .await
            .map_err(|e| inner.place.error("closing", e))?;
        inner
            .client
            .drain()
            .await
            .map_err(|e| inner.place.error("closing", e))
    }
}

/// Opens the work-queue stream, creating it when missing; refuses a stream of that name that is
/// not one.
async fn open_queue(js: &Context, names: &Names) -> Result<stream::Stream, BoxError> {
    let subjects = names.stream_subjects();
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.stream.clone(),
            description: Some("rampart outbox: queued and dead-lettered requests".to_owned()),
            subjects: subjects.to_vec(),
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    let config = &stream.cached_info().config;
    let usable = config.retention == RetentionPolicy::WorkQueue
        && subjects.iter().all(|s| config.subjects.contains(s));
    if !usable {
        return Err(format!(
            "the stream exists but is not the outbox's: it needs work-queue retention and the \
             subjects {} and {}",
            subjects[0], subjects[1]
        )
        .into());
    }
    Ok(stream)
}

/// Opens the status bucket, creating it when missing, and returns it with the stream behind it.
///
/// The bucket's stream is made here as a key-value bucket's is (one record per key, rollups),
/// rather than by the client's own bucket creation, which first asks the server for account
/// details in a form older servers (2.9) do not give; and unlike one, it allows deleting a
/// record, which is how tombstones go without leaving markers behind.
async fn open_bucket(js: &Context, names: &Names) -> Result<(kv::Store, stream::Stream), BoxError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.bucket_stream(),
            description: Some("rampart outbox: where each message stands".to_owned()),
            subjects: vec![names.status_subjects()],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    let bucket = js.get_key_value(names.bucket.as_str()).await?;
    Ok((bucket, stream))
}

// === impl Inner: the records ===

impl Inner {
    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A message's status record and its revision.
    async fn read(&self, id: MessageId) -> Result<Option<(Status, u64)>, Error> {
        let entry = self
            .statuses
            .entry(id.to_string())
            .await
            .map_err(|e| self.place.error("reading a status", e))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => Ok(Some((
                record::decode_status(id, &entry.value)?,
                entry.revision,
            ))),
            _ => Ok(None),
        }
    }

    /// Writes `status` as the message's first record; `None` when it has one already.
    async fn create(&self, status: &Status) -> Result<Option<u64>, Error> {
        let bytes = Bytes::from(record::encode_status(status)?);
        match self.statuses.create(status.id.to_string(), bytes).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(self.place.error("writing a status", e)),
        }
    }

    /// Writes `status` if the message's record is still at `revision`; `None` when another write
    /// came first.
    async fn write(&self, status: &Status, revision: u64) -> Result<Option<u64>, Error> {
        let bytes = Bytes::from(record::encode_status(status)?);
        match self
            .statuses
            .update(status.id.to_string(), bytes, revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.place.error("writing a status", e)),
        }
    }

    /// Writes `status` at `revision` (or as the first record), and shows it in the view.
    async fn record(&self, status: &Status, revision: Option<u64>) -> Result<Option<u64>, Error> {
        let written = match revision {
            Some(revision) => self.write(status, revision).await?,
            None => self.create(status).await?,
        };
        if let Some(revision) = written {
            self.view.apply(status, revision, self.clock.now());
        }
        Ok(written)
    }

    /// Publishes a request to `subject` and waits for JetStream to have stored it.
    async fn publish(
        &self,
        subject: String,
        id: MessageId,
        dedup: String,
        payload: Bytes,
    ) -> Result<PublishAck, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(ID_HEADER, id.to_string().as_str());
        let message = PublishMessage::build()
            .headers(headers)
            .message_id(dedup)
            .payload(payload);
        let stored = async { self.js.send_publish(subject, message).await?.await }.await;
        stored.map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                Error::Unstorable("the request is larger than the NATS server's max_payload")
            }
            _ => self.place.error("publishing a message", e),
        })
    }

    /// The status as reported: a lease that ended reads as queued.
    fn reported(&self, mut status: Status, now: Timestamp) -> Status {
        if status.state == State::Delivering && status.changed_at.saturating_add(self.lease) <= now
        {
            status.state = State::Queued;
        }
        status
    }

    /// Whether a message's request is still in its route's queue.
    async fn still_queued(&self, route: &str, id: MessageId) -> Result<bool, BoxError> {
        let subject = self.names.queued(&names::token(route), id);
        match self.queue.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a dead message's request from its dead subject.
    async fn forget_dead(&self, id: MessageId) {
        if let Err(e) = remove(&self.queue, &self.names.dead(id)).await {
            tracing::warn!(%id, error = %e, "outbox: a dead letter's request could not be removed");
        }
    }

    /// Acknowledges (or naks) a JetStream message, waiting for the server. A failure is logged
    /// only: the status is written already, and whoever is handed the message again acts on it.
    async fn answer(&self, message: &jetstream::Message, kind: AckKind) {
        if let Err(e) = message.double_ack_with(kind).await {
            tracing::warn!(error = %e, "outbox: JetStream did not confirm an acknowledgement");
        }
    }

    /// Purges the tombstones whose time is up, as the embedded store does on its writes.
    async fn purge_tombstones(&self) {
        let due = self.view.purge_due(
            self.clock.now(),
            self.retention,
            self.limits.max_messages,
            PURGE_PER_OP,
        );
        for (tombstone, revision) in due {
            let id = MessageId::from_u128(tombstone.id);
            // A request still in its queue (dropped, and its turn has not come; or a crash came
            // between its tombstone and its acknowledgement) must not outlive its tombstone, or
            // a taker would find it without a status and deliver it. Its tombstone waits.
            match self.still_queued(&tombstone.route, id).await {
                Ok(false) => {}
                Ok(true) => {
                    self.view.keep(tombstone, revision);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "outbox: a tombstone could not be purged");
                    self.view.keep(tombstone, revision);
                    continue;
                }
            }
            if let Err(e) = remove(&self.statuses_stream, &self.names.status_subject(id)).await {
                tracing::warn!(%id, error = %e, "outbox: a tombstone could not be purged");
            }
        }
    }

    /// The JetStream message and status behind `lease`, if it is still this instance's current,
    /// unexpired lease.
    fn held(&self, lease: Lease) -> Result<(jetstream::Message, Status), Error> {
        let now = self.clock.now();
        let leases = lock(&self.leases);
        match leases.get(&lease.id) {
            Some(held) if held.token == lease.token && held.until > now => {
                Ok((held.message.clone(), held.status.clone()))
            }
            _ => Err(Error::LeaseLost(lease.id)),
        }
    }

    /// Forgets `lease` (and only that lease of its message).
    fn release(&self, lease: Lease) {
        let mut leases = lock(&self.leases);
        if leases
            .get(&lease.id)
            .is_some_and(|h| h.token == lease.token)
        {
            leases.remove(&lease.id);
        }
    }
}

// === impl Inner: the operations ===

impl Inner {
    async fn append(&self, route: &str, request: Request) -> Result<MessageId, Error> {
        self.check_open()?;
        let payload = Bytes::from(record::encode_message(&MessageRecord {
            route: route.into(),
            request,
        })?);
        let size = payload.len() as u64;
        self.make_room(size).await?;
        let now = self.clock.now();
        let token = names::token(route);
        let mut tries = 0;
        let id = loop {
            let id = lock(&self.ids).next(now);
            // The message first: once it is in the stream it will be delivered, and a taker
            // that finds no status (this process died before writing it) writes one.
            let subject = self.names.queued(&token, id);
            let stored = self
                .publish(subject, id, id.to_string(), payload.clone())
                .await?;
            // JetStream keeps one message per `Nats-Msg-Id`: a duplicate is another instance's
            // message, which drew the same id in the same millisecond. Draw again.
            if !stored.duplicate {
                break id;
            }
            tries += 1;
            if tries == TRIES {
                return Err(self
                    .place
                    .error("publishing a message", "every id drawn was taken"));
            }
        };
        let status = Status {
            id,
            route: route.into(),
            state: State::Queued,
            attempts: 0,
            accepted_at: now,
            queued_at: now,
            next_attempt_at: now,
            changed_at: now,
            last_error: None,
            size,
        };
        // `None`: a taker was quicker and wrote the status itself.
        self.record(&status, None).await?;
        self.purge_tombstones().await;
        Ok(id)
    }

    /// Makes room for a message of `size` bytes: nothing to do, messages dropped
    /// (drop-oldest), or [`Error::Full`] with nothing changed.
    async fn make_room(&self, size: u64) -> Result<(), Error> {
        for _ in 0..TRIES {
            let victims = self.view.make_room(size, &self.limits, self.clock.now())?;
            if victims.is_empty() {
                return Ok(());
            }
            for id in victims {
                self.drop_message(id).await?;
            }
        }
        // Other writers kept changing what could be dropped: it fits as things stand, or not.
        let as_is = Limits {
            on_full: OnFull::Reject,
            ..self.limits
        };
        self.view.make_room(size, &as_is, self.clock.now())?;
        Ok(())
    }

    /// Drops a message to make room, unless its record says it may not be (the view was behind):
    /// then the view learns the record.
    async fn drop_message(&self, id: MessageId) -> Result<(), Error> {
        let Some((status, revision)) = self.read(id).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        let state = self.reported(status.clone(), now).state;
        if !matches!(state, State::Queued | State::Dead) {
            self.view.apply(&status, revision, now);
            return Ok(());
        }
        let dropped = tombstone(status, State::Dropped, now);
        // A queued message's request stays in its queue until its turn comes: the taker then
        // finds the tombstone and acknowledges it away. (Deleting it now would be quicker, but
        // nats-server 2.9 can then leave pull requests unanswered.)
        if self.record(&dropped, Some(revision)).await?.is_some() && state == State::Dead {
            self.forget_dead(id).await;
        }
        Ok(())
    }

    async fn take(&self, route: &str, max: usize, wait: Duration) -> Result<Vec<Leased>, Error> {
        self.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let consumer = self.consumer(route).await?;
        self.prune_leases();
        let deadline = tokio::time::Instant::now() + wait;
        let mut taken = Vec::new();
        while taken.len() < max {
            let mut batch = self
                .fetch(&consumer, route, max - taken.len(), None)
                .await?;
            if batch.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !taken.is_empty() || left < MIN_WAIT {
                    break;
                }
                batch = self.fetch(&consumer, route, 1, Some(left)).await?;
                if batch.is_empty() {
                    break;
                }
            }
            for message in batch {
                match self.lease_message(route, message).await {
                    Ok(Some(leased)) => taken.push(leased),
                    // Settled already, or raced: nothing to hand out.
                    Ok(None) => {}
                    Err(e) if taken.is_empty() => return Err(e),
                    // What was taken is handed out; the rest comes again after the lease.
                    Err(e) => {
                        tracing::warn!(route, error = %e, "outbox: a take stopped short");
                        return Ok(taken);
                    }
                }
            }
        }
        Ok(taken)
    }

    /// The route's consumer, created (or brought up to date) on first use.
    async fn consumer(&self, route: &str) -> Result<PullConsumer, Error> {
        if let Some(consumer) = lock(&self.consumers).get(route) {
            return Ok(consumer.clone());
        }
        let token = names::token(route);
        let consumer = self
            .queue
            .create_consumer(pull::Config {
                durable_name: Some(token.clone()),
                description: Some(format!("rampart outbox: the queue of route {route:?}")),
                filter_subject: self.names.queue(&token),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.lease,
                // Redelivered for as long as it takes: max_age is the delivery loop's to enforce.
                max_deliver: -1,
                // Messages waiting out a backoff count as pending: there must be no cap on them.
                max_ack_pending: -1,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                self.place
                    .error(format!("creating the consumer of route {route:?}"), e)
            })?;
        lock(&self.consumers).insert(route.into(), consumer.clone());
        Ok(consumer)
    }

    /// Up to `max` messages of the consumer: those due now, or, with `wait`, the first to come due
    /// within it.
    async fn fetch(
        &self,
        consumer: &PullConsumer,
        route: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<jetstream::Message>, Error> {
        let batch: Result<Batch, BoxError> = match wait {
            None => consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(Into::into),
            Some(wait) => consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(Into::into),
        };
        let failed = |e: BoxError| {
            // The consumer may have been deleted behind the store's back: make it again next time.
            lock(&self.consumers).remove(route);
            self.place
                .error(format!("fetching messages of route {route:?}"), e)
        };
        let mut batch = batch.map_err(failed)?;
        let mut messages = Vec::new();
        let collect = async {
            while let Some(next) = batch.next().await {
                match next {
                    Ok(message) => messages.push(message),
                    Err(e) if messages.is_empty() => return Err(failed(e)),
                    Err(e) => {
                        tracing::warn!(route, error = %e, "outbox: a fetch stopped short");
                        break;
                    }
                }
            }
            Ok(())
        };
        // A waiting request is bounded by its expiry already.
        let guard = wait.map_or(NO_WAIT_GUARD, |wait| wait + NO_WAIT_GUARD);
        match tokio::time::timeout(guard, collect).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(route, "outbox: the server left a fetch unanswered"),
        }
        Ok(messages)
    }

    /// Leases one message handed out by JetStream; `None` when there is nothing to deliver.
    async fn lease_message(
        &self,
        route: &str,
        message: jetstream::Message,
    ) -> Result<Option<Leased>, Error> {
        let received = self.clock.now();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(ID_HEADER))
            .and_then(|v| v.as_str().parse::<MessageId>().ok());
        let Some(id) = id else {
            tracing::warn!(subject = %message.subject, "outbox: a message without an id in the queue; removed");
            self.answer(&message, AckKind::Term).await;
            return Ok(None);
        };
        let request = record::decode_message(&message.payload);
        for _ in 0..TRIES {
            let now = self.clock.now();
            let (mut status, revision) = match self.read(id).await? {
                // Delivered or dropped: a copy left behind by a crash, or a drop.
                Some((status, _)) if !status.state.is_held() => {
                    self.answer(&message, AckKind::Ack).await;
                    return Ok(None);
                }
                Some((status, revision)) => (status, Some(revision)),
                // Its appender died before writing the status.
                None => (first_status(id, route, message.payload.len() as u64), None),
            };
            let was_dead = status.state == State::Dead;
            if was_dead {
                // A dead-lettering cut short, or a re-drive under way: the message is queued
                // again either way, as a re-drive leaves it.
                status.attempts = 0;
                status.queued_at = now;
                status.next_attempt_at = now;
            }
            let request = match &request {
                Ok(record) => record.request.clone(),
                Err(e) => {
                    // A message that cannot be sent must not block its queue.
                    tracing::error!(%id, "outbox: its stored request is unreadable: {e}; dead-lettered");
                    status.state = State::Dead;
                    status.changed_at = now;
                    status.last_error = Some(format!("its stored request is unreadable: {e}"));
                    if self.kill(&message, &status, revision).await?.is_some() {
                        return Ok(None);
                    }
                    continue;
                }
            };
            status.state = State::Delivering;
            status.changed_at = now;
            let Some(token) = self.record(&status, revision).await? else {
                continue;
            };
            if was_dead {
                self.forget_dead(id).await;
            }
            let held = Held {
                token,
                until: received.saturating_add(self.lease),
                status: status.clone(),
                message,
            };
            lock(&self.leases).insert(id, held);
            return Ok(Some(Leased {
                message: Message { status, request },
                lease: Lease { id, token },
            }));
        }
        // Other writers kept changing its status: JetStream hands it out again after the lease.
        Ok(None)
    }

    /// Forgets leases over for a whole lease period: nobody will settle them any more (and a late
    /// `delivered` needs only the status).
    fn prune_leases(&self) {
        let now = self.clock.now();
        let lease = self.lease;
        lock(&self.leases).retain(|_, held| held.until.saturating_add(lease) > now);
    }

    /// Moves a message's request to the dead letters with `status` (dead): the request under the
    /// dead subject first, then the status if still at `revision`, then the queued copy goes.
    /// `None` when the status had moved on (the dead copy is taken back).
    async fn kill(
        &self,
        message: &jetstream::Message,
        status: &Status,
        revision: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let id = status.id;
        let dedup = format!("{id}.dead.{}", revision.unwrap_or(0));
        let copy = self
            .publish(self.names.dead(id), id, dedup, message.payload.clone())
            .await?;
        let Some(written) = self.record(status, revision).await? else {
            if let Err(e) = self.queue.delete_message(copy.sequence).await {
                tracing::warn!(%id, error = %e, "outbox: a stale dead letter could not be removed");
            }
            return Ok(None);
        };
        self.answer(message, AckKind::Ack).await;
        Ok(Some(written))
    }

    async fn delivered(&self, lease: Lease) -> Result<(), Error> {
        self.check_open()?;
        let id = lease.id;
        for _ in 0..TRIES {
            let Some((status, revision)) = self.read(id).await? else {
                return Err(Error::LeaseLost(id));
            };
            if !status.state.is_held() {
                // Settled already: the copy this instance holds, if any, is a leftover.
                let held = lock(&self.leases).remove(&id);
                if let Some(held) = held {
                    self.answer(&held.message, AckKind::Ack).await;
                }
                return Err(Error::LeaseLost(id));
            }
            let was_dead = status.state == State::Dead;
            let mut done = tombstone(status, State::Delivered, self.clock.now());
            done.attempts = done.attempts.saturating_add(1);
            if self.record(&done, Some(revision)).await?.is_none() {
                continue;
            }
            if was_dead {
                self.forget_dead(id).await;
            }
            // Whichever lease this instance holds on it: the message is delivered.
            let held = lock(&self.leases).remove(&id);
            if let Some(held) = held {
                self.answer(&held.message, AckKind::Ack).await;
            }
            self.purge_tombstones().await;
            return Ok(());
        }
        Err(self.place.error(
            "recording a delivery",
            "the message's status kept changing under concurrent writers",
        ))
    }

    async fn retry_later(&self, lease: Lease, at: Timestamp, error: String) -> Result<(), Error> {
        self.check_open()?;
        let (message, mut status) = self.held(lease)?;
        let now = self.clock.now();
        status.state = State::Queued;
        status.attempts = status.attempts.saturating_add(1);
        status.next_attempt_at = at;
        status.changed_at = now;
        status.last_error = Some(record::truncate(&error, MAX_ERROR_LEN).to_owned());
        let written = self.record(&status, Some(lease.token)).await?;
        self.release(lease);
        if written.is_none() {
            return Err(Error::LeaseLost(lease.id));
        }
        let delay = at.saturating_since(now);
        let nak = AckKind::Nak((!delay.is_zero()).then_some(delay));
        self.answer(&message, nak).await;
        self.purge_tombstones().await;
        Ok(())
    }

    async fn dead(&self, lease: Lease, error: String) -> Result<(), Error> {
        self.check_open()?;
        let (message, mut status) = self.held(lease)?;
        status.state = State::Dead;
        status.attempts = status.attempts.saturating_add(1);
        status.changed_at = self.clock.now();
        status.last_error = Some(record::truncate(&error, MAX_ERROR_LEN).to_owned());
        let written = self.kill(&message, &status, Some(lease.token)).await?;
        self.release(lease);
        if written.is_none() {
            return Err(Error::LeaseLost(lease.id));
        }
        self.purge_tombstones().await;
        Ok(())
    }

    async fn redrive(&self, id: MessageId) -> Result<(), Error> {
        self.check_open()?;
        let Some((status, revision)) = self.read(id).await? else {
            return Err(Error::NotFound(id));
        };
        let now = self.clock.now();
        let state = self.reported(status.clone(), now).state;
        if state != State::Dead {
            return Err(Error::NotDead { id, state });
        }
        let copy = match self
            .queue
            .get_last_raw_message_by_subject(&self.names.dead(id))
            .await
        {
            Ok(copy) => copy,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Err(self.place.error(
                    format!("re-driving message {id}"),
                    "its dead-lettered request is missing from the stream",
                ));
            }
            Err(e) => return Err(self.place.error("reading a dead letter", e)),
        };
        // The copy first, as at append; its dedup id names the dead status it re-drives, so
        // that instances re-driving the same message at once queue it once.
        let subject = self.names.queued(&names::token(&status.route), id);
        let dedup = format!("{id}.redrive.{revision}");
        self.publish(subject, id, dedup, copy.payload).await?;
        let mut queued = status;
        queued.state = State::Queued;
        queued.attempts = 0;
        queued.queued_at = now;
        queued.next_attempt_at = now;
        queued.changed_at = now;
        // `None`: a taker already took the new copy (and queued it as a re-drive does).
        self.record(&queued, Some(revision)).await?;
        if let Err(e) = self.queue.delete_message(copy.sequence).await {
            tracing::warn!(%id, error = %e, "outbox: a re-driven dead letter could not be removed");
        }
        self.purge_tombstones().await;
        Ok(())
    }

    async fn get(&self, id: MessageId) -> Result<Option<Status>, Error> {
        self.check_open()?;
        let now = self.clock.now();
        Ok(self
            .read(id)
            .await?
            .map(|(status, _)| self.reported(status, now)))
    }
}

/// Deletes the messages of `subject` (one, but for what a crash left behind), one by one. Only
/// for subjects no pull consumer reads: dead letters and status records.
///
/// Not with a purge filtered on the subject: nats-server 2.9 then moves the stream's consumers
/// past messages they have not delivered yet, stalling every route's queue.
async fn remove(stream: &stream::Stream, subject: &str) -> Result<(), BoxError> {
    for _ in 0..TRIES {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => {
                stream.delete_message(message.sequence).await?;
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The status of a message whose appender died before writing one: as the append would have
/// written it, accepted when its id says.
fn first_status(id: MessageId, route: &str, size: u64) -> Status {
    let accepted = id.timestamp();
    Status {
        id,
        route: route.into(),
        state: State::Queued,
        attempts: 0,
        accepted_at: accepted,
        queued_at: accepted,
        next_attempt_at: accepted,
        changed_at: accepted,
        last_error: None,
        size,
    }
}

/// A status turned into the tombstone of a message that is gone.
fn tombstone(mut status: Status, state: State, now: Timestamp) -> Status {
    status.state = state;
    status.changed_at = now;
    status.size = 0;
    status
}

impl Store for Nats {
    fn append<'a>(
        &'a self,
        route: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<MessageId, Error>> {
        Box::pin(self.inner.append(route, request))
    }

    fn take<'a>(
        &'a self,
        route: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Leased>, Error>> {
        Box::pin(self.inner.take(route, max, wait))
    }

    fn delivered(&self, lease: Lease) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.inner.delivered(lease))
    }

    fn retry_later(
        &self,
        lease: Lease,
        at: Timestamp,
        error: String,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.inner.retry_later(lease, at, error))
    }

    fn dead(&self, lease: Lease, error: String) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.inner.dead(lease, error))
    }

    fn redrive(&self, id: MessageId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.inner.redrive(id))
    }

    fn get(&self, id: MessageId) -> BoxFuture<'_, Result<Option<Status>, Error>> {
        Box::pin(self.inner.get(id))
    }

    fn summary(&self) -> BoxFuture<'_, Result<Summary, Error>> {
        Box::pin(async move {
            self.inner.check_open()?;
            Ok(self.inner.view.summary(self.inner.clock.now()))
        })
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }
}
