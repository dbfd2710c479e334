//! The nats store's view of the status bucket: every message's place, in memory, kept current by
//! the bucket's change feed.
//!
//! Counts, limits, drop-oldest's choice and the purge of old tombstones need every message's state
//! without a round trip each. So each instance reads the bucket once when it connects (the last
//! status of every key) into an [`Index`], as the embedded store reads its file, and then follows
//! the bucket's changes, whoever makes them. Its own writes it applies at once, so that a summary
//! right after a settle shows it; the feed brings the same revision again a moment later and it is
//! ignored, since each message's entry remembers the revision it reflects. Other instances'
//! changes show after the feed's delay: milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use futures_util::StreamExt;

use super::names::Names;
use crate::error::{BoxError, Full};
use crate::id::MessageId;
use crate::index::{Index, Tombstone};
use crate::message::{State, Status};
use crate::record;
use crate::store::{Limits, Summary};
use crate::time::{StoreClock, Timestamp};

/// How long the initial read may wait for the bucket's next record before giving up.
const LOAD_STALL: Duration = Duration::from_secs(10);
/// The pause after the feed fails, before it is polled again (it reconnects by itself).
const FEED_RETRY: Duration = Duration::from_millis(250);

/// The bucket's contents as this instance knows them.
#[derive(Debug)]
pub(super) struct View {
    state: Mutex<ViewState>,
    /// The lease period: a message being delivered counts as queued once it is over.
    lease: Duration,
}

#[derive(Debug, Default)]
struct ViewState {
    index: Index,
    /// The revision each known message's entry reflects.
    revisions: HashMap<u128, u64>,
    /// Tombstones purged from the bucket, with their last revision, which the feed may still
    /// bring.
    gone: HashMap<u128, u64>,
    /// The highest revision the feed brought.
    followed: u64,
    /// The highest id seen.
    highest: Option<MessageId>,
}

impl View {
    pub(super) fn new(lease: Duration) -> View {
        View {
            state: Mutex::new(ViewState::default()),
            lease,
        }
    }

    fn state(&self) -> MutexGuard<'_, ViewState> {
        // Every change leaves the state whole before the next statement can panic; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a message's status at `revision`, unless the view already reflects that revision
    /// or a later one.
    pub(super) fn apply(&self, status: &Status, revision: u64, now: Timestamp) {
        let mut state = self.state();
        let id = status.id.as_u128();
        let known = state.revisions.get(&id).or(state.gone.get(&id));
        if known.is_some_and(|&seen| seen >= revision) {
            return;
        }
        state.revisions.insert(id, revision);
        state.highest = state.highest.max(Some(status.id));
        let index = &mut state.index;
        let route = index.route(&status.route);
        match status.state {
            State::Queued | State::Dead => {
                index.forget(id);
                let dead = status.state == State::Dead;
                index.insert(id, route, status.size, status.next_attempt_at, dead, now);
            }
            State::Delivering => {
                index.forget(id);
                let until = status.changed_at.saturating_add(self.lease);
                index.insert_leased(id, route, status.size, revision, until);
            }
            State::Delivered | State::Dropped => {
                // A message the view never saw held (it was settled before the view began)
                // leaves its tombstone all the same.
                if index.bury(id, status.state, status.changed_at).is_none() {
                    index.add_tombstone(Tombstone {
                        at: status.changed_at,
                        id,
                        route,
                        state: status.state,
                    });
                }
            }
        }
    }

    /// Forgets a message whose record was deleted behind the store's back.
    fn remove(&self, id: MessageId, revision: u64) {
        let mut state = self.state();
        state.index.forget(id.as_u128());
        state.revisions.remove(&id.as_u128());
        state.gone.insert(id.as_u128(), revision);
    }

    /// Takes in one record of the bucket's stream.
    fn take_in(&self, names: &Names, message: &jetstream::Message, now: Timestamp) {
        let Some(id) = names.status_id(&message.subject) else {
            return;
        };
        let Ok(info) = message.info() else {
            return;
        };
        let revision = info.stream_sequence;
        {
            let mut state = self.state();
            state.followed = state.followed.max(revision);
        }
        let operation = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str().to_owned());
        if operation.is_some_and(|op| op == "DEL" || op == "PURGE") {
            self.remove(id, revision);
            return;
        }
        match record::decode_status(id, &message.payload) {
            Ok(status) => self.apply(&status, revision, now),
            Err(e) => tracing::warn!(%id, error = %e, "outbox: a status record is unreadable"),
        }
    }

    /// Orders the tombstones read at connect (they come in key order, not in time order).
    fn loaded(&self) {
        self.state().index.sort_tombstones();
    }

    pub(super) fn highest_id(&self) -> Option<MessageId> {
        self.state().highest
    }

    /// Counts as of `now`.
    pub(super) fn summary(&self, now: Timestamp) -> Summary {
        let mut state = self.state();
        state.index.refresh_all(now);
        state.index.summary()
    }

    /// The ids of the dead messages of `route` (of every route when `None`) above `after`,
    /// oldest first, at most `limit`.
    pub(super) fn dead_letters(
        &self,
        route: Option<&str>,
        after: Option<MessageId>,
        limit: usize,
    ) -> Vec<MessageId> {
        let ids = self
            .state()
            .index
            .dead_letters(route, after.map(MessageId::as_u128), limit);
        ids.into_iter().map(MessageId::from_u128).collect()
    }

    /// What must go for a message of `size` bytes to fit, as in the embedded store.
    pub(super) fn make_room(
        &self,
        size: u64,
        limits: &Limits,
        now: Timestamp,
    ) -> Result<Vec<MessageId>, Full> {
        let mut state = self.state();
        state.index.refresh_all(now);
        let victims = state.index.make_room(size, limits)?;
        Ok(victims.into_iter().map(MessageId::from_u128).collect())
    }

    /// The tombstones whose time is up (older than `retention`, or beyond the `max` newest),
    /// at most `limit`, with their revisions: forgotten here, to be purged by the caller (or
    /// [kept](View::keep)).
    pub(super) fn purge_due(
        &self,
        now: Timestamp,
        retention: Duration,
        max: u64,
        limit: usize,
    ) -> Vec<(Tombstone, u64)> {
        let mut state = self.state();
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let purged = state.index.purge_tombstones(now, retention, max, limit);
        let mut due = Vec::with_capacity(purged.len());
        for t in purged {
            let revision = state.revisions.remove(&t.id).unwrap_or(0);
            state.gone.insert(t.id, revision);
            due.push((t, revision));
        }
        // What the feed has passed it cannot bring again.
        let followed = state.followed;
        state.gone.retain(|_, revision| *revision > followed);
        due
    }

    /// Takes back a tombstone that [`purge_due`](View::purge_due) gave out and that must stay
    /// for now: it goes to the end of the purge order.
    pub(super) fn keep(&self, tombstone: Tombstone, revision: u64) {
        let mut state = self.state();
        state.gone.remove(&tombstone.id);
        state.revisions.insert(tombstone.id, revision);
        state.index.add_tombstone(tombstone);
    }
}

// === the feed ===

/// Reads the last status of every message in the bucket into `view`, and returns the feed of the
/// changes that follow.
pub(super) async fn load(
    bucket: &jetstream::stream::Stream,
    client: &async_nats::Client,
    names: &Names,
    view: &View,
    clock: &StoreClock,
) -> Result<Ordered, BoxError> {
    let consumer = bucket
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("rampart outbox: status view".to_owned()),
            filter_subject: names.status_subjects(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut feed = consumer.messages().await?;
    while pending > 0 {
        let next = tokio::time::timeout(LOAD_STALL, feed.next())
            .await
            .map_err(|_| "the status bucket stopped sending its records")?;
        let message = next.ok_or("the status bucket's feed ended")??;
        pending = message.info()?.pending;
        view.take_in(names, &message, clock.now());
    }
    view.loaded();
    Ok(feed)
}

/// Applies the bucket's changes to `view` for as long as the store is open (the task running it
/// is aborted at close). The feed survives reconnections by itself, resuming after the last
/// record it delivered.
pub(super) async fn follow(mut feed: Ordered, names: Names, view: Arc<View>, clock: StoreClock) {
    while let Some(next) = feed.next().await {
        match next {
            Ok(message) => view.take_in(&names, &message, clock.now()),
            Err(e) => {
                tracing::warn!(error = %e, "outbox: the status feed failed; resuming");
                tokio::time::sleep(FEED_RETRY).await;
            }
        }
    }
}
