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
//!   a [`record`](crate::record) message record, exactly as the embedded store keeps it.
//! - **The statuses** are the [`record`](crate::record) status records of a key-value bucket,
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
//!   follows the bucket's changes; **dead_letters** takes a page of dead ids from the view and
//!   reads their records, a few dozen at once, leaving out any the bucket says is no longer dead. Limits, drop-oldest and the purge of tombstones work on the
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
//!   [`Error::Unstorable`]. It is refused, as an append while disconnected is, before
//!   `drop-oldest` drops anything to make room for it.
//! - **An append that failed may still be delivered**: when the failure came after JetStream
//!   stored the message (the acknowledgement was lost, or the status could not be written).
//! - **Time.** Due times and leases run on the server's clock, so this store cannot run on a paused
//!   tokio clock.

mod error;
mod names;
mod operations;
mod records;
mod url;
mod view;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures_util::future::BoxFuture;
use rampart_policy::rng::Rng;
use tokio::task::JoinHandle;

pub use error::NatsError;
pub use names::InvalidStream;

use self::error::Place;
use self::names::Names;
use self::url::Credentials;
use self::view::View;
use crate::error::{BoxError, Error};
use crate::id::{IdGenerator, MessageId};
use crate::message::{Lease, Leased, Request, Status};
use crate::store::{Limits, Store, Summary};
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
/// Status records read at once when listing dead letters: a page of a thousand costs a few
/// dozen round trips' time rather than a thousand.
const READS_AT_ONCE: usize = 32;

/// How to connect a [`Nats`] store. Its `Debug` shows the URL [redacted](Self::redacted_url).
#[derive(Clone)]
pub struct NatsOptions {
    /// The NATS server (`[outbox] nats.url`), e.g. `nats://127.0.0.1:4222`; several separated
    /// by commas. A user and password (`nats://alice:s3cret@host:4222`) or a token
    /// (`nats://s3cret@host:4222`) in it are sent to the server, and never shown: errors and
    /// `Debug` show `nats://***@host:4222`. The client uses one set of credentials, the first
    /// server's that has any, for every server.
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

    /// The URL with any user, password or token in it replaced by `***`, for logs and errors:
    /// `nats://alice:s3cret@host:4222` shows as `nats://***@host:4222`.
    pub fn redacted_url(&self) -> String {
        url::redacted(&self.url)
    }
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &self.redacted_url())
            .field("stream", &self.stream)
            .field("limits", &self.limits)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
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

impl Inner {
    /// Whether the client is connected to a server now.
    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl Nats {
    /// Whether the client is connected to a server now. While it is not, appends fail at once.
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// Connects to the server, creates the stream and the status bucket when missing, and reads
    /// every status into the store's view. Fails with [`Error::Backend`] carrying a
    /// [`NatsError`] that names the server, the stream and what failed.
    pub async fn connect(options: NatsOptions) -> Result<Nats, Error> {
        let place = Place::new(&options.url, &options.stream);
        let names =
            Names::new(&options.stream).map_err(|e| place.error("checking the stream name", e))?;
        let (servers, credentials) = url::split(&options.url);
        let connect = async_nats::ConnectOptions::new()
            .name("rampart-outbox")
            .connection_timeout(CONNECT_TIMEOUT);
        let connect = match credentials {
            Some(Credentials::UserPassword(user, password)) => {
                connect.user_and_password(user, password)
            }
            Some(Credentials::Token(token)) => connect.token(token),
            None => connect,
        };
        let client = connect
            .connect(servers.as_str())
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

    fn dead_letters<'a>(
        &'a self,
        route: Option<&'a str>,
        after: Option<MessageId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Status>, Error>> {
        Box::pin(self.inner.dead_letters(route, after, limit))
    }

    fn summary(&self) -> BoxFuture<'_, Result<Summary, Error>> {
        Box::pin(async move {
            self.inner.check_open()?;
            Ok(self.inner.view.summary(self.inner.clock.now()))
        })
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Nats::close(self))
    }
}
