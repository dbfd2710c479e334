//! The nats store's records: status records read and written by compare-and-set, requests
//! published and waited for, leftovers removed, tombstones purged.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use bytes::Bytes;

use super::{ID_HEADER, Inner, PURGE_PER_OP, TRIES, lock, names};
use crate::error::{BoxError, Error};
use crate::id::MessageId;
use crate::message::{Lease, State, Status};
use crate::record;
use crate::time::Timestamp;

impl Inner {
    pub(super) fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A message's status record and its revision.
    pub(super) async fn read(&self, id: MessageId) -> Result<Option<(Status, u64)>, Error> {
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
    pub(super) async fn create(&self, status: &Status) -> Result<Option<u64>, Error> {
        let bytes = Bytes::from(record::encode_status(status)?);
        match self.statuses.create(status.id.to_string(), bytes).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(self.place.error("writing a status", e)),
        }
    }

    /// Writes `status` if the message's record is still at `revision`; `None` when another write
    /// came first.
    pub(super) async fn write(&self, status: &Status, revision: u64) -> Result<Option<u64>, Error> {
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
    pub(super) async fn record(
        &self,
        status: &Status,
        revision: Option<u64>,
    ) -> Result<Option<u64>, Error> {
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
    pub(super) async fn publish(
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
    pub(super) fn reported(&self, mut status: Status, now: Timestamp) -> Status {
        if status.state == State::Delivering && status.changed_at.saturating_add(self.lease) <= now
        {
            status.state = State::Queued;
        }
        status
    }

    /// Whether a message's request is still in its route's queue.
    pub(super) async fn still_queued(&self, route: &str, id: MessageId) -> Result<bool, BoxError> {
        let subject = self.names.queued(&names::token(route), id);
        match self.queue.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a dead message's request from its dead subject.
    pub(super) async fn forget_dead(&self, id: MessageId) {
        if let Err(e) = remove(&self.queue, &self.names.dead(id)).await {
            tracing::warn!(%id, error = %e, "outbox: a dead letter's request could not be removed");
        }
    }

    /// Acknowledges (or naks) a JetStream message, waiting for the server. A failure is logged
    /// only: the status is written already, and whoever is handed the message again acts on it.
    pub(super) async fn answer(&self, message: &jetstream::Message, kind: AckKind) {
        if let Err(e) = message.double_ack_with(kind).await {
            tracing::warn!(error = %e, "outbox: JetStream did not confirm an acknowledgement");
        }
    }

    /// Purges the tombstones whose time is up, as the embedded store does on its writes.
    pub(super) async fn purge_tombstones(&self) {
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
    pub(super) fn held(&self, lease: Lease) -> Result<(jetstream::Message, Status), Error> {
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
    pub(super) fn release(&self, lease: Lease) {
        let mut leases = lock(&self.leases);
        if leases
            .get(&lease.id)
            .is_some_and(|h| h.token == lease.token)
        {
            leases.remove(&lease.id);
        }
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
