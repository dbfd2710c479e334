//! The nats store's operations, as the [`Store`](crate::Store) trait names them.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Held, ID_HEADER, Inner, MIN_WAIT, NO_WAIT_GUARD, READS_AT_ONCE, TRIES, lock, names};
use crate::error::{BoxError, Error};
use crate::id::{self, MessageId};
use crate::message::{Lease, Leased, Message, Request, State, Status};
use crate::record::{self, MAX_ERROR_LEN, MessageRecord};
use crate::store::{Limits, OnFull};
use crate::time::Timestamp;

/// The bytes a publish of an appended message's `payload` puts on the wire, as the server's
/// `max_payload` counts them: the header block that [`Inner::publish`] writes (its first line,
/// the message id under [`ID_HEADER`] and again as `Nats-Msg-Id`, the blank line) and the payload.
fn publish_size(payload: usize) -> usize {
    const LINE_END: usize = "\r\n".len();
    let header = |name: &str| name.len() + ": ".len() + id::TEXT_LEN + LINE_END;
    "NATS/1.0".len()
        + LINE_END
        + header(ID_HEADER)
        + header(async_nats::header::NATS_MESSAGE_ID.as_ref())
        + LINE_END
        + payload
}

/// How long an append that failed waits for its message to be marked dropped (see
/// [`Inner::disown`]).
const DISOWN_WAIT: Duration = Duration::from_millis(250);

impl Inner {
    pub(super) async fn append(&self, route: &str, request: Request) -> Result<MessageId, Error> {
        self.check_open()?;
        let payload = Bytes::from(record::encode_message(&MessageRecord {
            route: route.into(),
            request,
        })?);
        let size = payload.len() as u64;
        // Both refusals of the publish that can be known now, before `make_room` drops older
        // messages for this one: a request refused after that would have cost them for nothing.
        if !self.is_connected() {
            return Err(self
                .place
                .error("publishing a message", "not connected to the server"));
        }
        if publish_size(payload.len()) > self.client.max_payload() {
            return Err(Error::Unstorable(
                "the request is larger than the NATS server's max_payload",
            ));
        }
        self.make_room(size).await?;
        let now = self.clock.now();
        let token = names::token(route);
        let mut tries = 0;
        let id = loop {
            // While disconnected the client would keep the message in its buffer and send it
            // once connected again, long after the caller was told it failed: a 503'd post
            // delivered later. Refused here instead, nothing sent.
            if !self.is_connected() {
                return Err(self
                    .place
                    .error("publishing a message", "not connected to the server"));
            }
            let id = lock(&self.ids).next(now);
            // The message first: once it is in the stream it will be delivered, and a taker
            // that finds no status (this process died before writing it) writes one.
            let subject = self.names.queued(&token, id);
            let stored = match self
                .publish(subject, id, id.to_string(), payload.clone())
                .await
            {
                Ok(stored) => stored,
                Err(err) => {
                    self.disown(id, route, now).await;
                    return Err(err);
                }
            };
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
        let status = Status::accepted(id, route.into(), now, size);
        // `None`: a taker was quicker and wrote the status itself.
        self.record(&status, None).await?;
        self.purge_tombstones().await;
        Ok(id)
    }

    /// Marks a message whose publish failed as dropped, should it reach the stream after all
    /// (the connection broke after it was sent; the client sends what it buffered once connected
    /// again): a taker acknowledges it without delivering it, as the caller was told it failed.
    /// Best effort: when the status cannot be written either, such a message is delivered.
    ///
    /// The wait is short: the write is in the client's buffer once sent, and goes out with the
    /// message when the connection is back; only its acknowledgement is not waited for.
    async fn disown(&self, id: MessageId, route: &str, now: Timestamp) {
        let status = tombstone(
            Status::accepted(id, route.into(), now, 0),
            State::Dropped,
            now,
        );
        match tokio::time::timeout(DISOWN_WAIT, self.record(&status, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(%id, error = %err, "outbox: a failed publish could not be disowned");
            }
            Err(_elapsed) => {
                tracing::debug!(%id, "outbox: a failed publish's disowning is not acknowledged");
            }
        }
    }

    /// Makes room for a message of `size` bytes: nothing to do, messages dropped
    /// (drop-oldest), or [`Error::Full`] with nothing changed.
    pub(super) async fn make_room(&self, size: u64) -> Result<(), Error> {
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
    pub(super) async fn drop_message(&self, id: MessageId) -> Result<(), Error> {
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

    pub(super) async fn take(
        &self,
        route: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Leased>, Error> {
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
                    // Nothing came for a while: tombstones whose time is up would otherwise
                    // wait for the next write.
                    self.purge_tombstones().await;
                    break;
                }
            }
            for (arrived, message) in batch {
                match self.lease_message(route, message, arrived).await {
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
    pub(super) async fn consumer(&self, route: &str) -> Result<PullConsumer, Error> {
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
    pub(super) async fn fetch(
        &self,
        consumer: &PullConsumer,
        route: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<(Timestamp, jetstream::Message)>, Error> {
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
                    // The server's lease on it (`ack_wait`) began as it sent it: counted from
                    // here, not from its turn in leasing the batch one message at a time,
                    // which can come seconds later.
                    Ok(message) => messages.push((self.clock.now(), message)),
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

    /// Leases one message handed out by JetStream, which `arrived` then, when its lease is
    /// counted from; `None` when there is nothing to deliver.
    pub(super) async fn lease_message(
        &self,
        route: &str,
        message: jetstream::Message,
        arrived: Timestamp,
    ) -> Result<Option<Leased>, Error> {
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
            // When the lease began, as the status's readers count it (`reported`, the view):
            // it ends `lease` after, as the one held here does.
            status.changed_at = arrived;
            let Some(token) = self.record(&status, revision).await? else {
                continue;
            };
            if was_dead {
                self.forget_dead(id).await;
            }
            let held = Held {
                token,
                until: arrived.saturating_add(self.lease),
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
    pub(super) fn prune_leases(&self) {
        let now = self.clock.now();
        let lease = self.lease;
        lock(&self.leases).retain(|_, held| held.until.saturating_add(lease) > now);
    }

    /// Moves a message's request to the dead letters with `status` (dead): the request under the
    /// dead subject first, then the status if still at `revision`, then the queued copy goes.
    /// `None` when the status had moved on (the dead copy is taken back).
    pub(super) async fn kill(
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

    pub(super) async fn delivered(&self, lease: Lease) -> Result<(), Error> {
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

    pub(super) async fn retry_later(
        &self,
        lease: Lease,
        at: Timestamp,
        error: String,
    ) -> Result<(), Error> {
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

    pub(super) async fn dead(&self, lease: Lease, error: String) -> Result<(), Error> {
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

    pub(super) async fn redrive(&self, id: MessageId) -> Result<(), Error> {
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

    /// A page of the dead-letter list: the ids from the view, each record read from the bucket.
    /// A record that is no longer dead (another instance re-drove or dropped the message, and
    /// the view has not heard yet) is left out and taught to the view, and the page filled from
    /// further on.
    pub(super) async fn dead_letters(
        &self,
        route: Option<&str>,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Status>, Error> {
        self.check_open()?;
        let mut dead = Vec::new();
        let mut after = after;
        while dead.len() < limit {
            let wanted = limit - dead.len();
            let ids = self.view.dead_letters(route, after, wanted);
            let Some(&last) = ids.last() else {
                break;
            };
            after = Some(last);
            let listed = ids.len();
            let mut reads = futures_util::stream::iter(ids)
                .map(|id| self.read(id))
                .buffered(READS_AT_ONCE);
            while let Some(read) = reads.next().await {
                let Some((status, revision)) = read? else {
                    // Purged meanwhile: not dead.
                    continue;
                };
                if status.state == State::Dead {
                    dead.push(status);
                } else {
                    self.view.apply(&status, revision, self.clock.now());
                }
            }
            if listed < wanted {
                break;
            }
        }
        Ok(dead)
    }

    pub(super) async fn get(&self, id: MessageId) -> Result<Option<Status>, Error> {
        self.check_open()?;
        let now = self.clock.now();
        Ok(self
            .read(id)
            .await?
            .map(|(status, _)| self.reported(status, now)))
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rampart_test_support::NatsServer;

    use super::*;
    use crate::store::Store;
    use crate::time::StoreClock;
    use crate::{Nats, NatsOptions};

    /// A view behind the bucket (another instance re-drove a message, and the feed has not
    /// brought it yet) must not put a message that is no longer dead in the list, nor leave the
    /// page short: the view is made wrong on purpose here, the feed being too quick to catch.
    #[tokio::test]
    async fn a_dead_letter_the_view_is_wrong_about_is_left_out_and_the_page_filled() {
        let server = NatsServer::start();
        let clock = StoreClock::starting_at(
            rampart_policy::clock::ManualClock::new(),
            Timestamp::from_millis(1_767_225_600_000),
        );
        let store = Nats::connect(NatsOptions {
            clock,
            ..NatsOptions::new(server.url(), "VIEW")
        })
        .await
        .unwrap();
        let alive = store.append("r", Request::new(http::Method::POST, "/a".parse().unwrap()));
        let alive = alive.await.unwrap();
        let dead = store.append("r", Request::new(http::Method::POST, "/b".parse().unwrap()));
        let dead = dead.await.unwrap();
        let taken = store.take("r", 2, Duration::ZERO).await.unwrap();
        store.dead(taken[1].lease, "gone".into()).await.unwrap();

        let inner = &store.inner;
        let (mut status, revision) = inner.read(alive).await.unwrap().unwrap();
        status.state = State::Dead;
        inner
            .view
            .apply(&status, revision + 1_000, inner.clock.now());
        assert_eq!(inner.view.dead_letters(None, None, 1), vec![alive]);

        let page = store.dead_letters(None, None, 1).await.unwrap();
        assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), vec![dead]);
        assert_eq!(page[0].state, State::Dead);
        store.close().await.unwrap();
    }
}
