//! A store's in-memory index: which messages are held, in which state, in which order.
//!
//! The backend holds the records; this index answers the questions asked on every operation
//! without reading them: which messages of a route are due, oldest first; when the next one
//! comes due; which to drop when full; how many there are. It holds a few dozen bytes per
//! message, never a body, and is rebuilt from the status records at open.
//!
//! In the embedded store it is also the truth about leases: a lease lives in memory only (a
//! restart voids every lease), so a message whose lease has expired counts as queued here even
//! while its record on disk still says delivering. The nats store keeps its index as a view of the
//! shared status bucket (see `crate::nats`), leases included, as each instance recorded them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Full, FullReason};
use crate::message::{Lease, State};
use crate::store::{Counts, Limits, OnFull, Summary};
use crate::time::Timestamp;

/// Where a held message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    Queued,
    Delivering { token: u64, until: Timestamp },
    Dead,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) route: Arc<str>,
    pub(crate) held: Held,
    pub(crate) size: u64,
    pub(crate) next_attempt_at: Timestamp,
}

/// One route's queue.
#[derive(Debug, Default)]
struct Queue {
    /// Queued and due, in id (acceptance) order.
    ready: BTreeSet<u128>,
    /// Queued, due later, by due time.
    waiting: BTreeSet<(Timestamp, u128)>,
    /// Leased, by lease expiry.
    leased: BTreeSet<(Timestamp, u128)>,
    /// Dead, in id order: the route's page of the dead-letter list.
    dead: BTreeSet<u128>,
    counts: Counts,
}

/// A delivered or dropped message's tombstone, kept for the retention window.
#[derive(Debug)]
pub(crate) struct Tombstone {
    pub(crate) at: Timestamp,
    pub(crate) id: u128,
    pub(crate) route: Arc<str>,
    pub(crate) state: State,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<u128, Entry>,
    queues: HashMap<Arc<str>, Queue>,
    /// Every queued message (ready or waiting), oldest first: the drop-oldest order.
    queued: BTreeSet<u128>,
    /// Every dead message, oldest first: dropped before any queued one.
    dead: BTreeSet<u128>,
    /// By the time they were made (which only grows within a process; sorted at open).
    tombstones: VecDeque<Tombstone>,
    bytes: u64,
    dropped: u64,
    /// The last lease token handed out. Starts at the open's epoch (see `start_tokens`), so that
    /// a lease from before a restart never matches one made after.
    next_token: u64,
}

impl Index {
    /// Goes on counting drops from `before`'s count: the index of the same store, replaced by
    /// this one read again from its file.
    pub(crate) fn count_drops_from(&mut self, before: &Index) {
        self.dropped += before.dropped;
    }

    /// The route name shared by every message of the route (one allocation per route).
    pub(crate) fn route(&mut self, name: &str) -> Arc<str> {
        match self.queues.get_key_value(name) {
            Some((route, _)) => route.clone(),
            None => {
                let route: Arc<str> = name.into();
                self.queues.insert(route.clone(), Queue::default());
                route
            }
        }
    }

    /// Lease tokens continue from `token`.
    pub(crate) fn start_tokens(&mut self, token: u64) {
        self.next_token = token;
    }

    pub(crate) fn entry(&self, id: u128) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// A held message's state as of `now`: an expired lease reads as queued.
    pub(crate) fn state(&self, id: u128, now: Timestamp) -> Option<State> {
        self.entries.get(&id).map(|e| match e.held {
            Held::Queued => State::Queued,
            Held::Delivering { until, .. } if until <= now => State::Queued,
            Held::Delivering { .. } => State::Delivering,
            Held::Dead => State::Dead,
        })
    }

    // === adding and removing ===

    /// Adds a message as queued (or dead), due at `next_attempt_at`; `now` tells whether it is
    /// due already.
    pub(crate) fn insert(
        &mut self,
        id: u128,
        route: Arc<str>,
        size: u64,
        next_attempt_at: Timestamp,
        dead: bool,
        now: Timestamp,
    ) {
        let held = if dead { Held::Dead } else { Held::Queued };
        let queue = self.queues.entry(route.clone()).or_default();
        queue.counts.bytes += size;
        if dead {
            queue.counts.dead += 1;
            queue.dead.insert(id);
            self.dead.insert(id);
        } else {
            queue.counts.queued += 1;
            if next_attempt_at <= now {
                queue.ready.insert(id);
            } else {
                queue.waiting.insert((next_attempt_at, id));
            }
            self.queued.insert(id);
        }
        self.bytes += size;
        self.entries.insert(
            id,
            Entry {
                route,
                held,
                size,
                next_attempt_at,
            },
        );
    }

    /// Adds a message as leased under `token` until `until`: a lease recorded elsewhere (the nats
    /// store's instances share their leases through the status records).
    pub(crate) fn insert_leased(
        &mut self,
        id: u128,
        route: Arc<str>,
        size: u64,
        token: u64,
        until: Timestamp,
    ) {
        let queue = self.queues.entry(route.clone()).or_default();
        queue.counts.bytes += size;
        queue.counts.delivering += 1;
        queue.leased.insert((until, id));
        self.bytes += size;
        self.entries.insert(
            id,
            Entry {
                route,
                held: Held::Delivering { token, until },
                size,
                next_attempt_at: until,
            },
        );
    }

    /// Removes a held message from every structure; returns it.
    fn remove(&mut self, id: u128) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        let queue = self.queues.entry(entry.route.clone()).or_default();
        queue.counts.bytes -= entry.size;
        self.bytes -= entry.size;
        match entry.held {
            Held::Queued => {
                queue.ready.remove(&id);
                queue.waiting.remove(&(entry.next_attempt_at, id));
                queue.counts.queued -= 1;
                self.queued.remove(&id);
            }
            Held::Delivering { until, .. } => {
                queue.leased.remove(&(until, id));
                queue.counts.delivering -= 1;
            }
            Held::Dead => {
                queue.counts.dead -= 1;
                queue.dead.remove(&id);
                self.dead.remove(&id);
            }
        }
        Some(entry)
    }

    /// Removes a held message without a trace.
    pub(crate) fn forget(&mut self, id: u128) {
        self.remove(id);
    }

    /// Removes a held message, leaving a tombstone of `state` made at `at`.
    pub(crate) fn bury(&mut self, id: u128, state: State, at: Timestamp) -> Option<Entry> {
        let entry = self.remove(id)?;
        if state == State::Dropped {
            self.dropped += 1;
        }
        self.add_tombstone(Tombstone {
            at,
            id,
            route: entry.route.clone(),
            state,
        });
        Some(entry)
    }

    /// Adds a tombstone (at open, in any order; `sort_tombstones` puts them in order).
    pub(crate) fn add_tombstone(&mut self, tombstone: Tombstone) {
        let counts = &mut self
            .queues
            .entry(tombstone.route.clone())
            .or_default()
            .counts;
        if tombstone.state == State::Delivered {
            counts.delivered += 1;
        }
        self.tombstones.push_back(tombstone);
    }

    pub(crate) fn sort_tombstones(&mut self) {
        self.tombstones
            .make_contiguous()
            .sort_by_key(|t| (t.at, t.id));
    }

    /// Whether [`purge_tombstones`](Index::purge_tombstones) would forget any tombstone now.
    pub(crate) fn tombstones_due(&self, now: Timestamp, retention: Duration, max: usize) -> bool {
        self.tombstones.len() > max
            || self
                .tombstones
                .front()
                .is_some_and(|oldest| oldest.at.saturating_add(retention) <= now)
    }

    /// Forgets the tombstones older than `retention`, and the oldest beyond `max` of them;
    /// returns them (at most `limit`, so one batch stays small).
    pub(crate) fn purge_tombstones(
        &mut self,
        now: Timestamp,
        retention: Duration,
        max: usize,
        limit: usize,
    ) -> Vec<Tombstone> {
        let mut purged = Vec::new();
        while purged.len() < limit && self.tombstones_due(now, retention, max) {
            let Some(t) = self.tombstones.pop_front() else {
                break;
            };
            if t.state == State::Delivered
                && let Some(queue) = self.queues.get_mut(&t.route)
            {
                queue.counts.delivered -= 1;
            }
            purged.push(t);
        }
        purged
    }

    // === limits ===

    /// What must go for a message of `size` bytes to fit: nothing, the dead and oldest queued
    /// messages to drop (drop-oldest), or [`Full`] when it cannot fit (then nothing is dropped).
    pub(crate) fn make_room(&self, size: u64, limits: &Limits) -> Result<Vec<u128>, Full> {
        let too_big = |bytes: u64| bytes.saturating_add(size) > limits.max_bytes;
        let too_many = |count: u64| count.saturating_add(1) > limits.max_messages;
        let (mut count, mut bytes) = (self.entries.len() as u64, self.bytes);
        let reason = |count: u64| {
            if too_many(count) {
                FullReason::Messages {
                    max: limits.max_messages,
                }
            } else {
                FullReason::Bytes {
                    max: limits.max_bytes,
                    size,
                }
            }
        };
        if size > limits.max_bytes {
            // Nothing could make room for it.
            return Err(Full {
                reason: FullReason::Bytes {
                    max: limits.max_bytes,
                    size,
                },
            });
        }
        if !too_many(count) && !too_big(bytes) {
            return Ok(Vec::new());
        }
        if limits.on_full == OnFull::Reject {
            return Err(Full {
                reason: reason(count),
            });
        }
        let mut victims = Vec::new();
        for &id in self.dead.iter().chain(self.queued.iter()) {
            if !too_many(count) && !too_big(bytes) {
                break;
            }
            victims.push(id);
            count -= 1;
            bytes -= self.entries.get(&id).map_or(0, |e| e.size);
        }
        if too_many(count) || too_big(bytes) {
            return Err(Full {
                reason: reason(count),
            });
        }
        Ok(victims)
    }

    // === delivery ===

    /// Returns every expired lease of `route` to the ready queue, and every waiting message that
    /// came due.
    fn refresh(&mut self, route: &str, now: Timestamp) {
        let Some(queue) = self.queues.get_mut(route) else {
            return;
        };
        while let Some(&(until, id)) = queue.leased.first() {
            if until > now {
                break;
            }
            queue.leased.pop_first();
            queue.ready.insert(id);
            queue.counts.delivering -= 1;
            queue.counts.queued += 1;
            self.queued.insert(id);
            if let Some(e) = self.entries.get_mut(&id) {
                e.held = Held::Queued;
                e.next_attempt_at = now;
            }
        }
        while let Some(&(due, id)) = queue.waiting.first() {
            if due > now {
                break;
            }
            queue.waiting.pop_first();
            queue.ready.insert(id);
        }
    }

    /// Brings every route up to `now` (before counting).
    pub(crate) fn refresh_all(&mut self, now: Timestamp) {
        let routes: Vec<Arc<str>> = self.queues.keys().cloned().collect();
        for route in routes {
            self.refresh(&route, now);
        }
    }

    /// When the next message of `route` comes due: now when one is, `None` when none is queued
    /// or leased.
    pub(crate) fn next_due(&self, route: &str, now: Timestamp) -> Option<Timestamp> {
        let queue = self.queues.get(route)?;
        if !queue.ready.is_empty() {
            return Some(now);
        }
        let waiting = queue.waiting.first().map(|&(t, _)| t);
        let lease_end = queue.leased.first().map(|&(t, _)| t);
        match (waiting, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| t.max(now))
    }

    /// Leases up to `max` due messages of `route`, oldest first, until `until`.
    pub(crate) fn lease(
        &mut self,
        route: &str,
        max: usize,
        now: Timestamp,
        until: Timestamp,
    ) -> Vec<Lease> {
        self.refresh(route, now);
        let Some(queue) = self.queues.get_mut(route) else {
            return Vec::new();
        };
        let mut leases = Vec::new();
        while leases.len() < max {
            let Some(id) = queue.ready.pop_first() else {
                break;
            };
            self.next_token += 1;
            let token = self.next_token;
            queue.leased.insert((until, id));
            queue.counts.queued -= 1;
            queue.counts.delivering += 1;
            self.queued.remove(&id);
            if let Some(e) = self.entries.get_mut(&id) {
                e.held = Held::Delivering { token, until };
            }
            leases.push(Lease {
                id: crate::id::MessageId::from_u128(id),
                token,
            });
        }
        leases
    }

    /// Whether `lease` is the current, unexpired lease of its message.
    pub(crate) fn holds(&self, lease: Lease, now: Timestamp) -> bool {
        matches!(
            self.entries.get(&lease.id.as_u128()),
            Some(Entry { held: Held::Delivering { token, until }, .. })
                if *token == lease.token && *until > now
        )
    }

    /// Puts a message back in its queue (after a failed attempt, or a re-drive), due at `at`.
    pub(crate) fn requeue(&mut self, id: u128, at: Timestamp, now: Timestamp) {
        if let Some(entry) = self.remove(id) {
            self.insert(id, entry.route, entry.size, at, false, now);
        }
    }

    /// Moves a message to the dead-letter list.
    pub(crate) fn kill(&mut self, id: u128, now: Timestamp) {
        if let Some(entry) = self.remove(id) {
            self.insert(id, entry.route, entry.size, now, true, now);
        }
    }

    // === dead letters ===

    /// The dead messages of `route` (of every route when `None`) whose id is above `after`,
    /// oldest first, at most `limit`.
    pub(crate) fn dead_letters(
        &self,
        route: Option<&str>,
        after: Option<u128>,
        limit: usize,
    ) -> Vec<u128> {
        let dead = match route {
            None => &self.dead,
            Some(route) => match self.queues.get(route) {
                Some(queue) => &queue.dead,
                None => return Vec::new(),
            },
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        dead.range((from, Bound::Unbounded))
            .take(limit)
            .copied()
            .collect()
    }

    // === counting ===

    pub(crate) fn summary(&self) -> Summary {
        let mut summary = Summary {
            dropped: self.dropped,
            ..Summary::default()
        };
        for (route, queue) in &self.queues {
            if queue.counts != Counts::default() {
                summary.total.add(&queue.counts);
                summary.routes.insert(route.clone(), queue.counts);
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn due_messages_are_leased_oldest_first_and_the_rest_wait() {
        let mut index = Index::default();
        let r = index.route("r");
        index.insert(3, r.clone(), 1, t(0), false, t(0));
        index.insert(1, r.clone(), 1, t(50), false, t(0));
        index.insert(2, r.clone(), 1, t(0), false, t(0));
        let ids = |leases: Vec<Lease>| leases.iter().map(|l| l.id.as_u128()).collect::<Vec<_>>();
        assert_eq!(ids(index.lease("r", 10, t(10), t(1000))), vec![2, 3]);
        assert_eq!(index.next_due("r", t(10)), Some(t(50)));
        assert_eq!(ids(index.lease("r", 10, t(50), t(1000))), vec![1]);
        assert_eq!(
            index.next_due("r", t(60)),
            Some(t(1000)),
            "the first lease's end"
        );
    }

    #[test]
    fn drop_oldest_takes_dead_messages_first_and_never_a_leased_one() {
        let mut index = Index::default();
        let r = index.route("r");
        index.insert(1, r.clone(), 10, t(0), false, t(0));
        index.insert(2, r.clone(), 10, t(0), false, t(0));
        index.insert(3, r.clone(), 10, t(0), true, t(0));
        index.lease("r", 1, t(0), t(100));
        let limits = Limits {
            max_messages: 3,
            max_bytes: 1000,
            on_full: OnFull::DropOldest,
        };
        assert_eq!(index.make_room(10, &limits), Ok(vec![3]));
        let bytes = Limits {
            max_bytes: 35,
            ..limits
        };
        assert_eq!(index.make_room(20, &bytes), Ok(vec![3, 2]));
        assert!(
            index.make_room(36, &bytes).is_err(),
            "bigger than the limit"
        );
        let two = Limits {
            max_messages: 1,
            ..limits
        };
        assert!(index.make_room(1, &two).is_err(), "the leased one stays");
    }

    #[test]
    fn dead_letters_are_listed_oldest_first_per_route_and_in_pages() {
        let mut index = Index::default();
        let (a, b) = (index.route("a"), index.route("b"));
        for id in [5, 1, 3] {
            index.insert(id, a.clone(), 1, t(0), true, t(0));
        }
        index.insert(2, b.clone(), 1, t(0), true, t(0));
        index.insert(4, a.clone(), 1, t(0), false, t(0));
        assert_eq!(index.dead_letters(None, None, 10), vec![1, 2, 3, 5]);
        assert_eq!(index.dead_letters(Some("a"), None, 10), vec![1, 3, 5]);
        assert_eq!(index.dead_letters(Some("a"), Some(1), 1), vec![3]);
        assert_eq!(index.dead_letters(None, Some(3), 10), vec![5]);
        assert!(index.dead_letters(Some("none"), None, 10).is_empty());

        // A re-driven message leaves the list; one dead again comes back in its place.
        index.requeue(3, t(0), t(0));
        assert_eq!(index.dead_letters(Some("a"), None, 10), vec![1, 5]);
        index.lease("a", 10, t(0), t(100));
        index.kill(3, t(0));
        assert_eq!(index.dead_letters(Some("a"), None, 10), vec![1, 3, 5]);
    }
}
