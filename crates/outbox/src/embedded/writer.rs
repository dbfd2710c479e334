//! The writer thread: the one owner of the database, committing operations in groups.
//!
//! Every operation reaches the writer as a [`Job`] on a channel. The writer takes the first job,
//! then whatever else has queued up meanwhile (up to [`MAX_BATCH`]), runs them all in one write
//! transaction and commits once; then it answers each. While one commit's fsync runs, the next
//! group gathers, so a fsync costs a few milliseconds however many appends share it: that is the
//! group commit. A group holding only leases commits without fsync (see [`Op::needs_fsync`]).
//!
//! The writer runs on tokio's blocking pool, not as an async task: a commit blocks on fsync,
//! which must not stall a runtime worker.
//!
//! A commit that fails on I/O (a full disk, a failing device) leaves redb's database refusing
//! every later transaction until it is opened again. So after any failed commit the writer
//! closes the file and opens it again at once, as a restart would: the file holds the last
//! committed transaction, messages that were leased are queued again, and leases handed out
//! before are void (a delivery under way may be made twice: at least once). While the file
//! cannot be opened (the disk is still full), every operation fails at once, saying why, and the
//! writer tries again at most once every [`REOPEN_EVERY`].

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::Error;
use crate::id::{IdGenerator, MessageId};
use crate::index::{Index, Tombstone};
use crate::message::{Lease, Leased, Message, State, Status};
use crate::record::{self, MAX_ERROR_LEN};
use crate::store::Limits;
use crate::time::{StoreClock, Timestamp};

/// The accepted requests (message records), by id: written once, removed when delivered or
/// dropped.
pub(super) const MESSAGES: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("messages");
/// Where each message stands (status records), by id: rewritten at each change; a delivered or
/// dropped message's record stays as its tombstone until purged.
pub(super) const STATUSES: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("statuses");

/// Facts about the store itself: `opens`, how many times it was opened.
pub(super) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Jobs run in one transaction at most: bounds a commit's size and the wait of its first job.
pub(super) const MAX_BATCH: usize = 1024;
/// Tombstones purged per transaction at most, so that a backlog of them never makes one commit
/// long.
const PURGE_PER_BATCH: usize = 1024;
/// How often a writer whose database could not be opened again tries once more. Each try reads
/// every status record, so not at every operation.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// An operation and where to send its result.
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Done, Error>>,
}

pub(super) enum Op {
    /// Store an encoded message record.
    Append {
        route: Box<str>,
        record: Vec<u8>,
    },
    Take {
        route: Box<str>,
        max: usize,
    },
    Delivered(Lease),
    RetryLater {
        lease: Lease,
        at: Timestamp,
        error: String,
    },
    Dead {
        lease: Lease,
        error: String,
    },
    Redrive(MessageId),
    Get(MessageId),
    /// A page of the dead-letter list (see [`Store::dead_letters`](crate::Store::dead_letters)).
    DeadLetters {
        route: Option<Box<str>>,
        after: Option<MessageId>,
        limit: usize,
    },
    /// Nothing but the purge of the tombstones whose time is up, which every transaction does:
    /// for a store that nothing else writes to.
    Purge,
    /// Stop: the database closes before the reply.
    Close,
}

impl Op {
    /// Whether the transaction running this must be durable before it answers. A lease need
    /// not be: losing one to a crash only makes the message due again, which a restart does
    /// anyway.
    fn needs_fsync(&self) -> bool {
        // Nor a purge: one lost to a crash is done again by the next transaction.
        !matches!(
            self,
            Op::Take { .. } | Op::Get(_) | Op::DeadLetters { .. } | Op::Purge | Op::Close
        )
    }
}

/// What an operation gives back.
pub(super) enum Done {
    Appended(MessageId),
    Taken(Vec<Leased>),
    Settled,
    Found(Option<Status>),
    Listed(Vec<Status>),
    Closed,
}

/// State shared between the writer and the store's handles.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) index: Mutex<Index>,
    pub(super) clock: StoreClock,
    /// Woken when a message may have come due earlier than waiters expect: an append, a
    /// re-drive, a failed attempt.
    pub(super) changed: Notify,
    pub(super) limits: Limits,
    pub(super) lease: Duration,
    pub(super) retention: Duration,
    /// Why the database is out of service, while it is (see [`Writer::reopen`]).
    pub(super) broken: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index as it was at the panic, which the
        // next commit's failure path (a rebuild from disk) repairs; keep serving.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What an operation is told while the database is out of service (an [`Error::Backend`]).
    pub(super) fn out_of_service(&self) -> Option<String> {
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        broken.as_ref().map(|why| {
            format!(
                "{why}; the store is opened again every {} s until that succeeds",
                REOPEN_EVERY.as_secs()
            )
        })
    }

    fn set_broken(&self, why: Option<String>) {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

pub(super) struct Writer {
    /// `None` while out of service: a failed commit closed it and opening it again failed.
    pub(super) db: Option<Database>,
    /// The database file, to open it again.
    pub(super) path: PathBuf,
    pub(super) shared: Arc<Shared>,
    pub(super) jobs: mpsc::Receiver<Job>,
    pub(super) ids: IdGenerator,
    /// When opening the database again was last tried.
    pub(super) last_reopen: Option<Timestamp>,
    /// Messages whose stored request could not be read without a failure inside the database
    /// (a damaged page of the file): neither read again (dead-lettered again if redriven) nor
    /// removed, which would rewrite the damaged page.
    pub(super) unreadable: HashSet<u128>,
}

impl Writer {
    /// Runs until an [`Op::Close`] or until every handle is gone.
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.jobs.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let close = batch.iter().position(|j| matches!(j.op, Op::Close));
            let closing = close.map(|i| batch.remove(i));
            if self.db.is_none() {
                self.reopen();
            }
            if self.db.is_some() {
                self.run_batch(&mut batch);
            } else {
                let why = self.shared.out_of_service();
                for job in batch.drain(..) {
                    let err = why.clone().map_or(Error::Closed, Error::backend);
                    let _ = job.reply.send(Err(err));
                }
            }
            if let Some(job) = closing {
                // Jobs sent after the close find the channel closed: `Error::Closed`.
                self.jobs.close();
                drop(self.db.take());
                let _ = job.reply.send(Ok(Done::Closed));
                return;
            }
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>) {
        let fsync = batch.iter().any(|j| j.op.needs_fsync());
        let mut results = Vec::with_capacity(batch.len());
        // A panic of redb's on a damaged page the take's own catch did not see: the batch
        // fails as a failed commit does and the store is opened again. Uncaught, it would end
        // this thread and close the store for good, silently.
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| self.apply(batch, fsync, &mut results)))
                .unwrap_or_else(|panic| {
                    Err(Error::backend(format!(
                        "the store's file failed to read: {}",
                        panic_message(panic.as_ref())
                    )))
                });
        let wake = batch.iter().any(|j| {
            matches!(
                j.op,
                Op::Append { .. } | Op::RetryLater { .. } | Op::Redrive(_)
            )
        });
        match outcome {
            Ok(()) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
                if wake {
                    self.shared.changed.notify_waiters();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox: a transaction failed; opening the store again");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(Error::backend(e.to_string())));
                }
                // redb refuses every transaction after a failed commit until it is opened
                // again; and the index ran ahead of what did not commit. Both are rebuilt from
                // the file, as at a restart.
                // The file's lock is released before it is taken again.
                drop(self.db.take());
                self.shared
                    .set_broken(Some(format!("a commit failed: {}", cause(&e))));
                self.reopen();
            }
        }
    }

    /// Opens the database again, rebuilding the index from it, unless that was tried less than
    /// [`REOPEN_EVERY`] ago. While it is not open the store stays out of service, saying why.
    fn reopen(&mut self) {
        let now = self.shared.clock.now();
        if self
            .last_reopen
            .is_some_and(|at| now.saturating_since(at) < REOPEN_EVERY)
        {
            return;
        }
        self.last_reopen = Some(now);
        match open(&self.path, &self.shared.clock) {
            Ok((db, mut loaded)) => {
                let mut index = self.shared.index();
                // The drops are counted since the store was opened by this process, as the
                // metric that reads them is: the file does not keep them.
                loaded.index.count_drops_from(&index);
                *index = loaded.index;
                drop(index);
                self.db = Some(db);
                self.shared.set_broken(None);
                tracing::info!("outbox: the store is open again");
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox: the store cannot be opened again");
                self.shared
                    .set_broken(Some(format!("it cannot be opened: {}", cause(&e))));
            }
        }
    }

    /// Runs the batch in one transaction; `results` gets one entry per job, in order.
    fn apply(
        &mut self,
        batch: &[Job],
        fsync: bool,
        results: &mut Vec<Result<Done, Error>>,
    ) -> Result<(), Error> {
        let db = self.db.as_ref().ok_or(Error::Closed)?;
        let mut txn = db.begin_write().or_backend()?;
        txn.set_durability(if fsync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .or_backend()?;
        {
            let mut tables = Tables::open(&txn)?;
            let now = self.shared.clock.now();
            let shared = self.shared.clone();
            let mut index = shared.index();
            // Expired leases are queued messages again, for every operation below (drop-oldest
            // may drop them, counts count them so).
            index.refresh_all(now);
            for job in batch {
                let result = self.run_op(&job.op, &mut tables, &mut index, now)?;
                results.push(result);
            }
            let max_tombstones = usize::try_from(shared.limits.max_messages).unwrap_or(usize::MAX);
            for t in index.purge_tombstones(now, shared.retention, max_tombstones, PURGE_PER_BATCH)
            {
                tables.statuses.remove(t.id).or_backend()?;
            }
        }
        // The index lock is released: readers of counts do not wait for the fsync.
        txn.commit().or_backend()?;
        Ok(())
    }

    /// One operation. An `Err` aborts the whole transaction; an `Ok(Err)` is this job's own
    /// failure (full, lease lost, ...).
    fn run_op(
        &mut self,
        op: &Op,
        tables: &mut Tables<'_>,
        index: &mut Index,
        now: Timestamp,
    ) -> Result<Result<Done, Error>, Error> {
        let shared = &self.shared;
        Ok(match op {
            Op::Append { route, record } => {
                let size = record.len() as u64;
                let victims = match index.make_room(size, &shared.limits) {
                    Ok(victims) => victims,
                    Err(full) => return Ok(Err(full.into())),
                };
                for victim in victims {
                    if let Some(status) = tables.status(victim)? {
                        if !self.unreadable.contains(&victim) {
                            tables.messages.remove(victim).or_backend()?;
                        }
                        let status = tombstone(status, State::Dropped, now);
                        tables.put_status(&status)?;
                        index.bury(victim, State::Dropped, now);
                    }
                }
                let id = self.ids.next(now);
                let route = index.route(route);
                let status = Status::accepted(id, route.clone(), now, size);
                tables
                    .messages
                    .insert(id.as_u128(), record.as_slice())
                    .or_backend()?;
                tables.put_status(&status)?;
                index.insert(id.as_u128(), route, size, now, false, now);
                Ok(Done::Appended(id))
            }
            Op::Take { route, max } => {
                let until = now.saturating_add(shared.lease);
                let mut taken = Vec::new();
                for lease in index.lease(route, *max, now, until) {
                    let id = lease.id.as_u128();
                    let Some(mut status) = tables.status(id)? else {
                        // Indexed but not stored: nothing to deliver, nothing to keep leasing.
                        index.forget(id);
                        continue;
                    };
                    let decoded = if self.unreadable.contains(&id) {
                        Err(UNREADABLE.to_owned())
                    } else {
                        // redb panics on some damaged pages (an offset past its page's end),
                        // as the value is found or read; nothing is locked then. Caught here,
                        // inside the transaction, the message goes to the dead-letter list and
                        // the batch commits; a panic through the transaction would leave the
                        // file to be repaired, which a damaged page fails.
                        let read = panic::catch_unwind(AssertUnwindSafe(|| {
                            Ok::<_, Error>(match tables.messages.get(id).or_backend()? {
                                Some(bytes) => record::decode_message(bytes.value())
                                    .map_err(|e| format!("its stored request is unreadable: {e}")),
                                None => Err("its stored request is missing".to_owned()),
                            })
                        }));
                        match read {
                            Ok(decoded) => decoded?,
                            Err(panic) => {
                                self.unreadable.insert(id);
                                Err(format!("{UNREADABLE} ({})", panic_message(panic.as_ref())))
                            }
                        }
                    };
                    match decoded {
                        Ok(message) => {
                            status.state = State::Delivering;
                            status.changed_at = now;
                            tables.put_status(&status)?;
                            taken.push(Leased {
                                message: Message {
                                    status,
                                    request: message.request,
                                },
                                lease,
                            });
                        }
                        // A message that cannot be sent must not block its queue: it goes to
                        // the dead-letter list, saying why.
                        Err(why) => {
                            tracing::error!(id = %lease.id, "outbox: {why}; dead-lettered");
                            status.state = State::Dead;
                            status.changed_at = now;
                            status.last_error = Some(why);
                            tables.put_status(&status)?;
                            index.kill(id, now);
                        }
                    }
                }
                Ok(Done::Taken(taken))
            }
            Op::Delivered(lease) => {
                let id = lease.id.as_u128();
                let Some(status) = index.entry(id).and(tables.status(id)?) else {
                    return Ok(Err(Error::LeaseLost(lease.id)));
                };
                let mut status = tombstone(status, State::Delivered, now);
                status.attempts = status.attempts.saturating_add(1);
                tables.messages.remove(id).or_backend()?;
                tables.put_status(&status)?;
                index.bury(id, State::Delivered, now);
                Ok(Done::Settled)
            }
            Op::RetryLater { lease, at, error } => {
                let id = lease.id.as_u128();
                let held = index.holds(*lease, now);
                let Some(mut status) = held.then(|| tables.status(id)).transpose()?.flatten()
                else {
                    return Ok(Err(Error::LeaseLost(lease.id)));
                };
                status.state = State::Queued;
                status.attempts = status.attempts.saturating_add(1);
                status.next_attempt_at = *at;
                status.changed_at = now;
                status.last_error = Some(record::truncate(error, MAX_ERROR_LEN).to_owned());
                tables.put_status(&status)?;
                index.requeue(id, *at, now);
                Ok(Done::Settled)
            }
            Op::Dead { lease, error } => {
                let id = lease.id.as_u128();
                let held = index.holds(*lease, now);
                let Some(mut status) = held.then(|| tables.status(id)).transpose()?.flatten()
                else {
                    return Ok(Err(Error::LeaseLost(lease.id)));
                };
                status.state = State::Dead;
                status.attempts = status.attempts.saturating_add(1);
                status.changed_at = now;
                status.last_error = Some(record::truncate(error, MAX_ERROR_LEN).to_owned());
                tables.put_status(&status)?;
                index.kill(id, now);
                Ok(Done::Settled)
            }
            Op::Redrive(id) => {
                let Some(status) = tables.readable_status(id.as_u128())? else {
                    return Ok(Err(Error::NotFound(*id)));
                };
                let mut status = match status {
                    Ok(status) => status,
                    Err(unreadable) => return Ok(Err(unreadable)),
                };
                let state = index.state(id.as_u128(), now).unwrap_or(status.state);
                if state != State::Dead {
                    return Ok(Err(Error::NotDead { id: *id, state }));
                }
                status.state = State::Queued;
                status.attempts = 0;
                status.queued_at = now;
                status.next_attempt_at = now;
                status.changed_at = now;
                tables.put_status(&status)?;
                index.requeue(id.as_u128(), now, now);
                Ok(Done::Settled)
            }
            Op::Get(id) => {
                let status = match tables.readable_status(id.as_u128())? {
                    Some(Err(unreadable)) => return Ok(Err(unreadable)),
                    found => found.and_then(Result::ok),
                };
                let status = status.map(|mut status| {
                    // The index knows about leases that the record does not (see its docs).
                    if let Some(state) = index.state(id.as_u128(), now) {
                        status.state = state;
                    }
                    status
                });
                Ok(Done::Found(status))
            }
            Op::DeadLetters {
                route,
                after,
                limit,
            } => {
                // The ids from the index, the records from the table this transaction sees: the
                // two agree, being changed together by this thread only.
                let ids =
                    index.dead_letters(route.as_deref(), after.map(MessageId::as_u128), *limit);
                let mut dead = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(status) = tables.status(id)? {
                        dead.push(status);
                    }
                }
                Ok(Done::Listed(dead))
            }
            Op::Purge => Ok(Done::Settled),
            Op::Close => Ok(Done::Closed),
        })
    }
}

/// A status turned into the tombstone of a message that is gone.
fn tombstone(mut status: Status, state: State, now: Timestamp) -> Status {
    status.state = state;
    status.changed_at = now;
    status.size = 0;
    status
}

/// The two tables, open in one write transaction.
struct Tables<'txn> {
    messages: Table<'txn, u128, &'static [u8]>,
    statuses: Table<'txn, u128, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, Error> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES).or_backend()?,
            statuses: txn.open_table(STATUSES).or_backend()?,
        })
    }

    /// The status record of `id`, asked for by its id (not found through the index): one that
    /// cannot be read is the asker's answer, not the transaction's failure. Opening the store
    /// left it aside; reading it again must not take the store out of service.
    fn readable_status(&self, id: u128) -> Result<Option<Result<Status, Error>>, Error> {
        match self.status(id) {
            Ok(status) => Ok(status.map(Ok)),
            Err(unreadable @ Error::Corrupt(_)) => Ok(Some(Err(unreadable))),
            Err(err) => Err(err),
        }
    }

    fn status(&self, id: u128) -> Result<Option<Status>, Error> {
        let Some(bytes) = self.statuses.get(id).or_backend()? else {
            return Ok(None);
        };
        Ok(Some(record::decode_status(
            MessageId::from_u128(id),
            bytes.value(),
        )?))
    }

    fn put_status(&mut self, status: &Status) -> Result<(), Error> {
        let bytes = record::encode_status(status)?;
        self.statuses
            .insert(status.id.as_u128(), bytes.as_slice())
            .or_backend()?;
        Ok(())
    }
}

/// Why a message whose read failed inside the database is dead-lettered.
const UNREADABLE: &str = "its stored request is unreadable: reading it failed inside the store \
                          (a damaged page of its file)";

/// What a caught panic said, when it said it as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}

/// What the backend said, without the "store failed" an [`Error::Backend`] wraps it in.
fn cause(e: &Error) -> String {
    match e {
        Error::Backend(source) => source.to_string(),
        other => other.to_string(),
    }
}

/// Turns a database error into [`Error::Backend`].
trait OrBackend<T> {
    fn or_backend(self) -> Result<T, Error>;
}

impl<T, E: Into<crate::error::BoxError>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, Error> {
        self.map_err(Error::backend)
    }
}

// === opening ===

/// What reading the database at open found.
pub(super) struct Loaded {
    pub(super) index: Index,
    /// The highest id stored: new ids sort after it.
    pub(super) last_id: Option<MessageId>,
    /// Messages found leased, which a crash interrupted.
    pub(super) recovered: Vec<u128>,
}

/// Rebuilds the index from the status records, as of `now`.
pub(super) fn load_index(db: &Database, now: Timestamp) -> Result<Loaded, Error> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().or_backend()?;
    let statuses = txn.open_table(STATUSES).or_backend()?;
    let mut index = Index::default();
    let mut recovered = Vec::new();
    let mut last_id = None;
    for row in statuses.iter().or_backend()? {
        let (key, value) = row.or_backend()?;
        let id = MessageId::from_u128(key.value());
        last_id = Some(id);
        // One damaged record must not keep the whole proxy from starting (its synchronous
        // routes too): the message is left aside, in the file, and named in the log.
        let status = match record::decode_status(id, value.value()) {
            Ok(status) => status,
            Err(err) => {
                tracing::error!(
                    %id,
                    error = %err,
                    "outbox: a message's status record is unreadable; the message is left aside"
                );
                continue;
            }
        };
        let route = index.route(&status.route);
        match status.state {
            State::Queued | State::Delivering | State::Dead => {
                if status.state == State::Delivering {
                    recovered.push(id.as_u128());
                }
                // A change stamped ahead of now: the wall clock was ahead then, or stepped
                // back since. The wait it set is kept as long as it was, from now; due at its
                // stamp, the message would stall for as long as the clock was wrong.
                let due = if status.changed_at > now {
                    now.saturating_add(status.next_attempt_at.saturating_since(status.changed_at))
                } else {
                    status.next_attempt_at
                };
                index.insert(
                    id.as_u128(),
                    route,
                    status.size,
                    due,
                    status.state == State::Dead,
                    now,
                );
            }
            State::Delivered | State::Dropped => index.add_tombstone(Tombstone {
                at: status.changed_at,
                id: id.as_u128(),
                route,
                state: status.state,
            }),
        }
    }
    index.sort_tombstones();
    Ok(Loaded {
        index,
        last_id,
        recovered,
    })
}

/// Opens (or creates) the database file, and turns every message a crash left leased back into
/// a queued one, durably.
pub(super) fn open(path: &Path, clock: &StoreClock) -> Result<(Database, Loaded), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).or_backend()?;
    let existed = path.exists();
    // redb makes a new database of an empty file without a word: a file that held messages
    // and was emptied (by hand, by a tool) would pass for a new store.
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0) {
        tracing::warn!(
            path = %path.display(),
            "outbox: the store's file is empty; starting a new store in it"
        );
    }
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .or_backend()?;
    if !existed {
        // The new file's directory entry must survive a crash too, or the first appends'
        // fsyncs would have saved a file that nobody can find.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .or_backend()?;
    }
    let txn = db.begin_write().or_backend()?;
    Tables::open(&txn)?;
    txn.commit().or_backend()?;

    let now = clock.now();
    let mut loaded = load_index(&db, now)?;
    let txn = db.begin_write().or_backend()?;
    {
        let mut meta = txn.open_table(META).or_backend()?;
        let opens = meta.get("opens").or_backend()?.map_or(0, |v| v.value()) + 1;
        meta.insert("opens", opens).or_backend()?;
        // 2^40 leases per open before the next open's range.
        loaded.index.start_tokens(opens << 40);

        let mut tables = Tables::open(&txn)?;
        for &id in &loaded.recovered {
            if let Some(mut status) = tables.status(id)? {
                status.state = State::Queued;
                status.changed_at = now;
                tables.put_status(&status)?;
            }
        }
    }
    txn.commit().or_backend()?;
    if !loaded.recovered.is_empty() {
        tracing::info!(
            messages = loaded.recovered.len(),
            "outbox: messages whose delivery a restart interrupted are queued again"
        );
    }
    Ok((db, loaded))
}

/// redb's page cache. Each body is read once, to deliver it, so a large cache buys little; this
/// keeps the sidecar's memory modest.
const CACHE_BYTES: usize = 64 << 20;
