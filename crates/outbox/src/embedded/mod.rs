//! The embedded store: one redb file under `[outbox] path`, written by one thread that commits
//! concurrent operations together.
//!
//! - **Durable before it answers.** An append returns once its transaction is committed with
//!   [`redb::Durability::Immediate`]: the data and the commit record are fsync'd. So does every
//!   settle (delivered, failed attempt, dead, re-drive), so a restart neither re-delivers what
//!   was settled as delivered nor forgets a failure's backoff. A lease alone commits without
//!   fsync: losing one to a crash only makes its message due again.
//! - **Group commit.** One writer thread owns the database; operations queue to it and each
//!   commit takes everything queued meanwhile (see the `writer` module), so one fsync serves many
//!   concurrent appends.
//! - **Crash-safe.** redb commits are atomic: after a crash the file holds exactly the last
//!   committed transaction. At open, messages found leased (a crash cut their delivery short)
//!   are queued again, and the index is rebuilt from the small status records only (no bodies
//!   are read): a store holding 100,000 queued messages serves again about a second after a
//!   restart, even in a debug build (docs/benchmarks.md).
//! - **Three tables.** `messages` holds each accepted request (written once, removed on delivery);
//!   `statuses` holds where each stands, rewritten at each change, and stays behind as the
//!   tombstone of a delivered or dropped message; both are in the versioned format of
//!   [`crate::record`]. `meta` counts the opens, which numbers each open's leases apart.

mod writer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rampart_policy::rng::Rng;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::Error;
use crate::id::{IdGenerator, MessageId};
use crate::message::{Lease, Leased, Request, Status};
use crate::record::{self, MessageRecord};
use crate::store::{Limits, Store, Summary};
use crate::time::{StoreClock, Timestamp};
use writer::{Done, Job, Op, Shared, Writer};

/// The file the store keeps in its directory.
pub const FILE_NAME: &str = "outbox.redb";

/// Jobs waiting for the writer at most; appends beyond wait for room (backpressure).
const QUEUE: usize = 4 * writer::MAX_BATCH;

/// How to open an [`Embedded`] store.
#[derive(Clone, Debug)]
pub struct Options {
    /// The directory of the store (`[outbox] path`); created if missing.
    pub dir: PathBuf,
    /// `max_messages`, `max_bytes`, `on_full`.
    pub limits: Limits,
    /// How long a `take` leases a message before handing it out again. It must exceed the
    /// longest delivery attempt (the route's timeout). Default 60 s.
    pub lease: Duration,
    /// How long a delivered or dropped message's tombstone is kept, so that its id still answers
    /// with its state. At most `max_messages` tombstones are kept, the oldest purged first.
    /// Default 1 hour.
    pub retention: Duration,
    /// The store's time. Default [`StoreClock::system`].
    pub clock: StoreClock,
    /// The random part of new ids. Default [`Rng::thread`].
    pub rng: Rng,
}

impl Options {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            limits: Limits::default(),
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(3600),
            clock: StoreClock::system(),
            rng: Rng::thread(),
        }
    }
}

/// The embedded store. Cheap to clone: clones share one database.
#[derive(Clone, Debug)]
pub struct Embedded {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl Embedded {
    /// Opens the store in `options.dir` (creating it), recovering what a crash left leased.
    pub async fn open(options: Options) -> Result<Embedded, Error> {
        let path = options.dir.join(FILE_NAME);
        let clock = options.clock.clone();
        let opened = path.clone();
        let (db, loaded) = tokio::task::spawn_blocking(move || writer::open(&opened, &clock))
            .await
            .map_err(Error::backend)??;
        let shared = Arc::new(Shared {
            index: Mutex::new(loaded.index),
            clock: options.clock,
            changed: Notify::new(),
            limits: options.limits,
            lease: options.lease,
            retention: options.retention,
            broken: Mutex::new(None),
        });
        let (jobs, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            db: Some(db),
            path,
            shared: shared.clone(),
            jobs: receiver,
            ids: IdGenerator::new(loaded.last_id, options.rng),
            last_reopen: None,
            unreadable: HashSet::new(),
        };
        // On tokio's blocking pool for the store's whole life. There, on a paused test clock,
        // it also keeps tokio from jumping time forward while a job waits for its commit: tests
        // move time only with `tokio::time::advance`.
        tokio::task::spawn_blocking(move || writer.run());
        Ok(Embedded { shared, jobs })
    }

    /// Commits what is pending and closes the database file; returns once it is closed (another
    /// open of the same directory may follow at once). Operations on any clone fail with
    /// [`Error::Closed`] from then on.
    pub async fn close(&self) -> Result<(), Error> {
        self.run(Op::Close).await.map(|_| ())
    }

    /// Sends a job to the writer and waits for its result.
    async fn run(&self, op: Op) -> Result<Done, Error> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::Closed)?;
        result.await.map_err(|_| Error::Closed)?
    }

    /// Purges the tombstones whose time is up when nothing else will: a take that found
    /// nothing is the sign of a store no write may come to for a while, and deliverers take
    /// every second or so.
    async fn purge_if_due(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let max = usize::try_from(shared.limits.max_messages).unwrap_or(usize::MAX);
        let due = shared
            .index()
            .tombstones_due(shared.clock.now(), shared.retention, max);
        if due {
            self.settle(Op::Purge).await?;
        }
        Ok(())
    }

    async fn settle(&self, op: Op) -> Result<(), Error> {
        match self.run(op).await? {
            Done::Settled => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn take_due(
        &self,
        route: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Leased>, Error> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let clock = &self.shared.clock;
        let deadline = clock.now().saturating_add(wait);
        loop {
            // Registered before looking, so that a change made between the look and the wait
            // still wakes this waiter.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let now = clock.now();
            let next = self.shared.index().next_due(route, now);
            if next.is_some_and(|due| due <= now) {
                let op = Op::Take {
                    route: route.into(),
                    max,
                };
                match self.run(op).await? {
                    // Empty when another taker was first: wait on.
                    Done::Taken(taken) if taken.is_empty() => {}
                    Done::Taken(taken) => return Ok(taken),
                    _ => return Err(unexpected()),
                }
            }
            if clock.now() >= deadline {
                self.purge_if_due().await?;
                return Ok(Vec::new());
            }
            let wake = next.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(clock.instant_at(wake)) => {}
            }
        }
    }
}

/// A reply of the wrong kind: the writer answers each operation with its own kind, so this only
/// guards against a broken writer.
fn unexpected() -> Error {
    Error::backend("the outbox writer answered with the wrong kind of result")
}

impl Store for Embedded {
    fn append<'a>(
        &'a self,
        route: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<MessageId, Error>> {
        Box::pin(async move {
            // Encoded here, on the caller's task, so that the writer only copies bytes.
            let record = record::encode_message(&MessageRecord {
                route: route.into(),
                request,
            })?;
            let op = Op::Append {
                route: route.into(),
                record,
            };
            match self.run(op).await? {
                Done::Appended(id) => Ok(id),
                _ => Err(unexpected()),
            }
        })
    }

    fn take<'a>(
        &'a self,
        route: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Leased>, Error>> {
        Box::pin(self.take_due(route, max, wait))
    }

    fn delivered(&self, lease: Lease) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.settle(Op::Delivered(lease)))
    }

    fn retry_later(
        &self,
        lease: Lease,
        at: Timestamp,
        error: String,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.settle(Op::RetryLater { lease, at, error }))
    }

    fn dead(&self, lease: Lease, error: String) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.settle(Op::Dead { lease, error }))
    }

    fn redrive(&self, id: MessageId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.settle(Op::Redrive(id)))
    }

    fn get(&self, id: MessageId) -> BoxFuture<'_, Result<Option<Status>, Error>> {
        Box::pin(async move {
            match self.run(Op::Get(id)).await? {
                Done::Found(status) => Ok(status),
                _ => Err(unexpected()),
            }
        })
    }

    fn dead_letters<'a>(
        &'a self,
        route: Option<&'a str>,
        after: Option<MessageId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Status>, Error>> {
        Box::pin(async move {
            let op = Op::DeadLetters {
                route: route.map(Into::into),
                after,
                limit,
            };
            match self.run(op).await? {
                Done::Listed(dead) => Ok(dead),
                _ => Err(unexpected()),
            }
        })
    }

    fn summary(&self) -> BoxFuture<'_, Result<Summary, Error>> {
        Box::pin(async move {
            if self.jobs.is_closed() {
                return Err(Error::Closed);
            }
            if self.shared.out_of_service().is_some() {
                // Only a job makes the writer open the store again, and one that nothing posts
                // to or delivers from gets none: asking how it is goes as one (the writer tries
                // at most once every `REOPEN_EVERY`), so that whoever watches the summary (the
                // proxy's gauges, every second; the admin API) sees it serve again as soon as
                // it can.
                let _ = self.settle(Op::Purge).await;
                if let Some(why) = self.shared.out_of_service() {
                    return Err(Error::backend(why));
                }
            }
            let mut index = self.shared.index();
            index.refresh_all(self.shared.clock.now());
            Ok(index.summary())
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Embedded::close(self))
    }
}
