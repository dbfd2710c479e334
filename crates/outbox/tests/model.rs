//! The stores against a model: random sequences of operations, with the store closed and reopened
//! at random, must give the results and the contents that a plain in-memory list of messages
//! gives.
//!
//! The model is deliberately naive (a vector scanned for every question) so that it is obviously
//! right: due messages are the queued ones whose time has come, oldest id first; a lease holds
//! until it expires; limits count held messages; a restart voids every lease.
//!
//! The embedded store runs on tokio's paused clock, time moving at random. The nats store runs
//! against a real nats-server, whose timers cannot be paused: there time stands still, a failed
//! attempt is due at once or in an hour, and the model follows JetStream where it differs (see
//! [`Flavour::Nats`]).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{START, clock, open, request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rampart_outbox::record::{MessageRecord, encode_message};
use rampart_outbox::{
    Counts, Embedded, Error, Lease, Limits, MessageId, Nats, NatsOptions, OnFull, State, Status,
    Store, StoreClock, Timestamp,
};
use rampart_policy::clock::ManualClock;
use rampart_policy::rng::Rng;
use rampart_test_support::{NatsServer, TempDir};

const ROUTES: [&str; 2] = ["a", "b"];
const LEASE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Op {
    Append {
        route: usize,
        body: usize,
    },
    Take {
        route: usize,
        max: usize,
    },
    Delivered(usize),
    RetryLater(usize, u64),
    Dead(usize),
    Redrive(usize),
    Get(usize),
    /// A page of the dead letters: of one route or all, from the start or after one of the ids
    /// (`(true, i)`: one of those dead now, as the next page's request names one).
    DeadLetters {
        route: Option<usize>,
        after: Option<(bool, usize)>,
        limit: usize,
    },
    Advance(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..400usize).prop_map(|(route, body)| Op::Append { route, body }),
        3 => (0..2usize, 1..4usize).prop_map(|(route, max)| Op::Take { route, max }),
        2 => any::<usize>().prop_map(Op::Delivered),
        2 => (any::<usize>(), 0..20_000u64).prop_map(|(i, d)| Op::RetryLater(i, d)),
        1 => any::<usize>().prop_map(Op::Dead),
        1 => any::<usize>().prop_map(Op::Redrive),
        1 => any::<usize>().prop_map(Op::Get),
        1 => (
            proptest::option::of(0..2usize),
            proptest::option::of((any::<bool>(), any::<usize>())),
            1..6usize,
        )
            .prop_map(|(route, after, limit)| Op::DeadLetters { route, after, limit }),
        2 => (0..40_000u64).prop_map(Op::Advance),
        // Exactly a lease, to land on lease expiries.
        1 => Just(Op::Advance(LEASE.as_millis() as u64)),
        1 => Just(Op::Reopen),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (3..8u64, 1_000..4_000u64, any::<bool>()).prop_map(|(max_messages, max_bytes, drop)| Limits {
        max_messages,
        max_bytes,
        on_full: if drop {
            OnFull::DropOldest
        } else {
            OnFull::Reject
        },
    })
}

// === the model ===

#[derive(Clone, Debug)]
struct Msg {
    status: Status,
    /// The current lease: token and expiry.
    lease: Option<(u64, Timestamp)>,
    /// When it was (re-)published to its queue (nats: the stream's order).
    published: u64,
    /// When a failed attempt made it due again at once (nats: the redelivery order).
    again: Option<u64>,
    /// nats: its request is still in its queue though the message is delivered or dropped.
    copy: Leftover,
}

/// Where a settled message's request is (nats): gone, or left in its queue, where a take will
/// come to it and remove it, or held by the server past the test's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Leftover {
    #[default]
    Gone,
    Due,
    Stuck,
}

/// Where the stores' behaviour differs, the model follows the store under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Flavour {
    /// The embedded store: due messages oldest id first; a restart voids every lease and queues
    /// what was being delivered again.
    #[default]
    Embedded,
    /// The nats store: JetStream hands out the messages due again (after a failed attempt) before
    /// the others, in the order they came due, then the others in the order they were published
    /// (a re-driven message joins the end); a lease outlives a restart, being the server's, though
    /// the restarted store holds no token of it.
    Nats,
}

#[derive(Debug, Default)]
struct Model {
    flavour: Flavour,
    /// Every message accepted and not purged, by id.
    msgs: BTreeMap<MessageId, Msg>,
    /// Tombstones in purge order.
    tombstones: Vec<MessageId>,
    dropped: u64,
    /// Counts publications and failed attempts, for the nats store's order.
    events: u64,
}

impl Model {
    /// The state as the store reports it: an expired lease is queued.
    fn state(m: &Msg, now: Timestamp) -> State {
        match (m.status.state, m.lease) {
            (State::Delivering, Some((_, until))) if until <= now => State::Queued,
            (state, _) => state,
        }
    }

    fn held(&self) -> impl Iterator<Item = (&MessageId, &Msg)> {
        self.msgs.iter().filter(|(_, m)| m.status.state.is_held())
    }

    fn append_victims(&self, size: u64, limits: &Limits, now: Timestamp) -> Option<Vec<MessageId>> {
        let over = |count: u64, bytes: u64| {
            count + 1 > limits.max_messages || bytes + size > limits.max_bytes
        };
        let mut count = self.held().count() as u64;
        let mut bytes: u64 = self.held().map(|(_, m)| m.status.size).sum();
        if size > limits.max_bytes {
            return None;
        }
        if !over(count, bytes) {
            return Some(Vec::new());
        }
        if limits.on_full == OnFull::Reject {
            return None;
        }
        let dead = self
            .held()
            .filter(|(_, m)| Self::state(m, now) == State::Dead);
        let queued = self
            .held()
            .filter(|(_, m)| Self::state(m, now) == State::Queued);
        let mut victims = Vec::new();
        for (id, m) in dead.chain(queued) {
            if !over(count, bytes) {
                break;
            }
            victims.push(*id);
            count -= 1;
            bytes -= m.status.size;
        }
        (!over(count, bytes)).then_some(victims)
    }

    fn bury(&mut self, id: MessageId, state: State, now: Timestamp) {
        let nats = self.flavour == Flavour::Nats;
        let m = self.msgs.get_mut(&id).expect("held");
        // nats: the store acknowledges the request away when it holds it (delivered under a
        // lease of its own); otherwise the request stays where it was.
        let held_here = state == State::Delivered && m.lease.is_some();
        m.copy = match m.status.state {
            _ if !nats || held_here => Leftover::Gone,
            State::Queued if m.status.next_attempt_at <= now => Leftover::Due,
            State::Queued | State::Delivering => Leftover::Stuck,
            _ => Leftover::Gone,
        };
        m.status.state = state;
        m.status.changed_at = now;
        m.status.size = 0;
        m.lease = None;
        self.tombstones.push(id);
    }

    /// What every writer operation ends with: the oldest tombstones beyond the cap go.
    fn purge(&mut self, max: u64) {
        while self.tombstones.len() as u64 > max {
            let id = self.tombstones.remove(0);
            self.msgs.remove(&id);
        }
    }

    /// What the nats store's successful writes end with: the oldest tombstones beyond the cap,
    /// 16 at most, go, but for those whose request is still queued, which go to the end.
    fn purge_nats(&mut self, max: u64) {
        let mut due = Vec::new();
        while due.len() < 16 && self.tombstones.len() as u64 > max {
            due.push(self.tombstones.remove(0));
        }
        for id in due {
            if self.msgs[&id].copy == Leftover::Gone {
                self.msgs.remove(&id);
            } else {
                self.tombstones.push(id);
            }
        }
    }

    fn due(&self, route: &str, max: usize, now: Timestamp) -> Vec<MessageId> {
        self.msgs
            .iter()
            .filter(|(_, m)| &*m.status.route == route)
            .filter(|(_, m)| Self::is_due(m, now))
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    fn is_due(m: &Msg, now: Timestamp) -> bool {
        match Self::state(m, now) {
            State::Queued => m.status.next_attempt_at <= now || m.status.state == State::Delivering,
            _ => false,
        }
    }

    /// What a nats take hands out: JetStream's order over the route's queue, in which the
    /// requests left behind by settled messages are passed over, and removed.
    fn take_nats(&mut self, route: &str, max: usize, now: Timestamp) -> Vec<MessageId> {
        let mut queue: Vec<(&MessageId, &Msg)> = self
            .msgs
            .iter()
            .filter(|(_, m)| &*m.status.route == route)
            .filter(|(_, m)| Self::is_due(m, now) || m.copy == Leftover::Due)
            .collect();
        queue.sort_by_key(|(_, m)| (m.again.is_none(), m.again, m.published));
        let mut taken = Vec::new();
        let mut passed = Vec::new();
        for (id, m) in queue {
            if taken.len() == max {
                break;
            }
            if m.copy == Leftover::Due {
                passed.push(*id);
            } else {
                taken.push(*id);
            }
        }
        for id in passed {
            self.msgs.get_mut(&id).unwrap().copy = Leftover::Gone;
        }
        taken
    }

    fn event(&mut self) -> u64 {
        self.events += 1;
        self.events
    }

    fn holds(&self, lease: Lease, now: Timestamp) -> bool {
        self.msgs.get(&lease.id).is_some_and(|m| {
            m.status.state == State::Delivering
                && matches!(m.lease, Some((token, until)) if token == lease.token && until > now)
        })
    }

    fn counts(&self, now: Timestamp) -> BTreeMap<Arc<str>, Counts> {
        let mut out: BTreeMap<Arc<str>, Counts> = BTreeMap::new();
        for m in self.msgs.values() {
            let c = out.entry(m.status.route.clone()).or_default();
            match Self::state(m, now) {
                State::Queued => c.queued += 1,
                State::Delivering => c.delivering += 1,
                State::Dead => c.dead += 1,
                State::Delivered => c.delivered += 1,
                State::Dropped => {}
            }
            c.bytes += m.status.size;
        }
        out.retain(|_, c| *c != Counts::default());
        out
    }

    fn reported(&self, id: MessageId, now: Timestamp) -> Option<Status> {
        self.msgs.get(&id).map(|m| Status {
            state: Self::state(m, now),
            ..m.status.clone()
        })
    }

    /// The dead messages of `route` (or of all) with an id above `after`, oldest first, at most
    /// `limit`, as `get` reports them.
    fn dead_letters(
        &self,
        route: Option<&str>,
        after: Option<MessageId>,
        limit: usize,
        now: Timestamp,
    ) -> Vec<Status> {
        self.msgs
            .iter()
            .filter(|(_, m)| Self::state(m, now) == State::Dead)
            .filter(|(_, m)| route.is_none_or(|route| &*m.status.route == route))
            .filter(|(id, _)| after.is_none_or(|after| **id > after))
            .take(limit)
            .filter_map(|(id, _)| self.reported(*id, now))
            .collect()
    }

    /// A restart: every lease token is void; what was being delivered is queued again (nats:
    /// stays leased on the server).
    fn reopen(&mut self, now: Timestamp) {
        for m in self.msgs.values_mut() {
            if m.status.state == State::Delivering && self.flavour == Flavour::Embedded {
                m.status.state = State::Queued;
                m.status.changed_at = now;
            }
            m.lease = None;
        }
        self.dropped = 0;
        let msgs = &self.msgs;
        self.tombstones
            .sort_by_key(|id| (msgs[id].status.changed_at, *id));
    }
}

fn kind(e: &Error) -> String {
    match e {
        Error::Full(_) => "full".into(),
        Error::LeaseLost(id) => format!("lease-lost {id}"),
        Error::NotFound(id) => format!("not-found {id}"),
        Error::NotDead { id, state } => format!("not-dead {id} {state}"),
        other => panic!("unexpected error: {other}"),
    }
}

// === the run ===

/// Where the store under test lives.
enum Backend {
    Embedded(TempDir),
    Nats { url: String, stream: String },
}

/// A store under test, open.
enum Opened {
    Embedded(Embedded),
    Nats(Nats),
}

impl Backend {
    fn flavour(&self) -> Flavour {
        match self {
            Backend::Embedded(_) => Flavour::Embedded,
            Backend::Nats { .. } => Flavour::Nats,
        }
    }

    async fn open(&self, clock: &StoreClock, limits: Limits) -> Opened {
        match self {
            Backend::Embedded(dir) => Opened::Embedded(open(dir.path(), clock, limits).await),
            Backend::Nats { url, stream } => Opened::Nats(
                Nats::connect(NatsOptions {
                    limits,
                    lease: LEASE,
                    retention: Duration::from_secs(3600),
                    clock: clock.clone(),
                    rng: Rng::seeded(1),
                    ..NatsOptions::new(url.clone(), stream.clone())
                })
                .await
                .expect("the store connects"),
            ),
        }
    }
}

impl std::ops::Deref for Opened {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            Opened::Embedded(store) => store,
            Opened::Nats(store) => store,
        }
    }
}

impl Opened {
    async fn close(&self) -> Result<(), Error> {
        match self {
            Opened::Embedded(store) => store.close().await,
            Opened::Nats(store) => store.close().await,
        }
    }
}

async fn run(
    ops: Vec<Op>,
    limits: Limits,
    backend: Backend,
    clock: StoreClock,
) -> Result<(), TestCaseError> {
    let mut store = backend.open(&clock, limits).await;
    let mut model = Model {
        flavour: backend.flavour(),
        ..Model::default()
    };
    let mut leases: Vec<Lease> = Vec::new();
    let mut ids: Vec<MessageId> = Vec::new();
    let mut tag = 0u64;

    for op in ops {
        let now = clock.now();
        let mut wrote = false;
        match op {
            Op::Append { route, body } => {
                tag += 1;
                let req = request(tag, &vec![b'x'; body]);
                let route = ROUTES[route];
                let size = encode_message(&MessageRecord {
                    route: route.into(),
                    request: req.clone(),
                })
                .unwrap()
                .len() as u64;
                let got = store.append(route, req).await;
                match model.append_victims(size, &limits, now) {
                    None => prop_assert_eq!(got.as_ref().map_err(kind), Err("full".to_string())),
                    Some(victims) => {
                        let id = got.map_err(|e| TestCaseError::fail(format!("append: {e}")))?;
                        wrote = true;
                        prop_assert!(ids.iter().all(|old| *old < id), "ids grow");
                        for v in victims {
                            model.dropped += 1;
                            model.bury(v, State::Dropped, now);
                        }
                        model.msgs.insert(
                            id,
                            Msg {
                                status: Status::accepted(id, route.into(), now, size),
                                lease: None,
                                published: 0,
                                again: None,
                                copy: Leftover::Gone,
                            },
                        );
                        let published = model.event();
                        let m = model.msgs.get_mut(&id).unwrap();
                        m.published = published;
                        ids.push(id);
                    }
                }
            }
            Op::Take { route, max } => {
                let route = ROUTES[route];
                let want = match model.flavour {
                    Flavour::Embedded => model.due(route, max, now),
                    Flavour::Nats => model.take_nats(route, max, now),
                };
                let got = store.take(route, max, Duration::ZERO).await.unwrap();
                let got_ids: Vec<MessageId> = got.iter().map(|l| l.message.id()).collect();
                prop_assert_eq!(&got_ids, &want, "take {} at {}", route, now);
                for l in got {
                    let m = model.msgs.get_mut(&l.lease.id).unwrap();
                    m.status.state = State::Delivering;
                    m.status.changed_at = now;
                    prop_assert_eq!(&l.message.status, &m.status);
                    m.lease = Some((l.lease.token, now.saturating_add(LEASE)));
                    m.again = None;
                    leases.push(l.lease);
                }
            }
            Op::Delivered(i) if !leases.is_empty() => {
                let lease = leases[i % leases.len()];
                let got = store.delivered(lease).await.map_err(|e| kind(&e));
                if model
                    .msgs
                    .get(&lease.id)
                    .is_some_and(|m| m.status.state.is_held())
                {
                    prop_assert_eq!(got, Ok(()));
                    wrote = true;
                    model.msgs.get_mut(&lease.id).unwrap().status.attempts += 1;
                    model.bury(lease.id, State::Delivered, now);
                } else {
                    prop_assert_eq!(got, Err(format!("lease-lost {}", lease.id)));
                }
            }
            Op::RetryLater(i, delay) if !leases.is_empty() => {
                let lease = leases[i % leases.len()];
                // The nats store's delays run on the server's clock, which does not stand still
                // with the test's: due at once, or not during the test.
                let delay = match model.flavour {
                    Flavour::Embedded => delay,
                    Flavour::Nats if delay < 10_000 => 0,
                    Flavour::Nats => 3_600_000,
                };
                let due = now.saturating_add(Duration::from_millis(delay));
                let got = store
                    .retry_later(lease, due, format!("e{delay}"))
                    .await
                    .map_err(|e| kind(&e));
                if model.holds(lease, now) {
                    prop_assert_eq!(got, Ok(()));
                    wrote = true;
                    let m = model.msgs.get_mut(&lease.id).unwrap();
                    m.status.state = State::Queued;
                    m.status.attempts += 1;
                    m.status.next_attempt_at = due;
                    m.status.changed_at = now;
                    m.status.last_error = Some(format!("e{delay}"));
                    m.lease = None;
                    if delay == 0 {
                        let again = model.event();
                        model.msgs.get_mut(&lease.id).unwrap().again = Some(again);
                    }
                } else {
                    prop_assert_eq!(got, Err(format!("lease-lost {}", lease.id)));
                }
            }
            Op::Dead(i) if !leases.is_empty() => {
                let lease = leases[i % leases.len()];
                let got = store.dead(lease, "dead".into()).await.map_err(|e| kind(&e));
                if model.holds(lease, now) {
                    prop_assert_eq!(got, Ok(()));
                    wrote = true;
                    let m = model.msgs.get_mut(&lease.id).unwrap();
                    m.status.state = State::Dead;
                    m.status.attempts += 1;
                    m.status.changed_at = now;
                    m.status.last_error = Some("dead".into());
                    m.lease = None;
                } else {
                    prop_assert_eq!(got, Err(format!("lease-lost {}", lease.id)));
                }
            }
            Op::Redrive(i) if !ids.is_empty() => {
                let id = ids[i % ids.len()];
                let got = store.redrive(id).await.map_err(|e| kind(&e));
                match model.msgs.get_mut(&id) {
                    None => prop_assert_eq!(got, Err(format!("not-found {id}"))),
                    Some(m) if Model::state(m, now) == State::Dead => {
                        prop_assert_eq!(got, Ok(()));
                        wrote = true;
                        m.status.state = State::Queued;
                        m.status.attempts = 0;
                        m.status.queued_at = now;
                        m.status.next_attempt_at = now;
                        m.status.changed_at = now;
                        m.again = None;
                        let published = model.event();
                        model.msgs.get_mut(&id).unwrap().published = published;
                    }
                    Some(m) => {
                        let state = Model::state(m, now);
                        prop_assert_eq!(got, Err(format!("not-dead {id} {state}")));
                    }
                }
            }
            Op::Get(i) if !ids.is_empty() => {
                let id = ids[i % ids.len()];
                prop_assert_eq!(store.get(id).await.unwrap(), model.reported(id, now));
            }
            Op::DeadLetters {
                route,
                after,
                limit,
            } => {
                let route = route.map(|r| ROUTES[r]);
                let dead: Vec<MessageId> = model
                    .dead_letters(None, None, usize::MAX, now)
                    .iter()
                    .map(|s| s.id)
                    .collect();
                let after = match after {
                    Some((true, i)) if !dead.is_empty() => Some(dead[i % dead.len()]),
                    Some((_, i)) if !ids.is_empty() => Some(ids[i % ids.len()]),
                    _ => None,
                };
                let got = store.dead_letters(route, after, limit).await.unwrap();
                prop_assert_eq!(
                    got,
                    model.dead_letters(route, after, limit, now),
                    "dead letters of {:?} after {:?}",
                    route,
                    after
                );
            }
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Reopen => {
                store.close().await.unwrap();
                store = backend.open(&clock, limits).await;
                model.reopen(clock.now());
            }
            // A settle or look-up with nothing to name.
            _ => continue,
        }
        match model.flavour {
            Flavour::Embedded => model.purge(limits.max_messages),
            Flavour::Nats if wrote => model.purge_nats(limits.max_messages),
            Flavour::Nats => {}
        }

        let now = clock.now();
        let summary = store.summary().await.unwrap();
        prop_assert_eq!(
            &summary.routes,
            &model.counts(now),
            "counts after {:?}",
            now
        );
        prop_assert_eq!(summary.dropped, model.dropped);
    }

    let now = clock.now();
    for &id in &ids {
        prop_assert_eq!(
            store.get(id).await.unwrap(),
            model.reported(id, now),
            "{}",
            id
        );
    }
    store.close().await.unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_embedded_store_behaves_like_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        limits in limits(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            run(ops, limits, Backend::Embedded(TempDir::new("model")), clock()).await
        })?;
    }
}

/// Fewer cases than the embedded store's, each a few hundred round trips to a real server: one
/// server for them all, one stream per case.
#[test]
fn the_nats_store_behaves_like_the_model() {
    let server = NatsServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ops = op().prop_filter("the nats store's time stands still", |op| {
        !matches!(op, Op::Advance(_))
    });
    let strategy = (proptest::collection::vec(ops, 1..60), limits());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::Cell::new(0u64);
    let result = runner.run(&strategy, |(ops, limits)| {
        case.set(case.get() + 1);
        let backend = Backend::Nats {
            url: server.url(),
            stream: format!("MODEL_{}", case.get()),
        };
        // Time stands still: the store's clock never moves.
        let clock = StoreClock::starting_at(ManualClock::new(), START);
        runtime.block_on(run(ops, limits, backend, clock))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
