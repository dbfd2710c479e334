//! The embedded store against a model: random sequences of operations, with time moving and the
//! store closed and reopened at random, must give the results and the contents that a plain
//! in-memory list of messages gives.
//!
//! The model is deliberately naive (a vector scanned for every question) so that it is obviously
//! right: due messages are the queued ones whose time has come, oldest id first; a lease holds
//! until it expires; limits count held messages; a restart voids every lease.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{TempDir, clock, open, request};
use proptest::prelude::*;
use rampart_outbox::record::{MessageRecord, encode_message};
use rampart_outbox::{
    Counts, Embedded, Error, Lease, Limits, MessageId, OnFull, State, Status, Store, StoreClock,
    Timestamp,
};

const ROUTES: [&str; 2] = ["a", "b"];
const LEASE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Op {
    Append { route: usize, body: usize },
    Take { route: usize, max: usize },
    Delivered(usize),
    RetryLater(usize, u64),
    Dead(usize),
    Redrive(usize),
    Get(usize),
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
}

#[derive(Debug, Default)]
struct Model {
    /// Every message accepted and not purged, by id.
    msgs: BTreeMap<MessageId, Msg>,
    /// Tombstones in purge order.
    tombstones: Vec<MessageId>,
    dropped: u64,
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
        let m = self.msgs.get_mut(&id).expect("held");
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

    fn due(&self, route: &str, max: usize, now: Timestamp) -> Vec<MessageId> {
        self.msgs
            .iter()
            .filter(|(_, m)| &*m.status.route == route)
            .filter(|(_, m)| match Self::state(m, now) {
                State::Queued => {
                    m.status.next_attempt_at <= now || m.status.state == State::Delivering
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .take(max)
            .collect()
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

    /// A restart: every lease is void; what was being delivered is queued again.
    fn reopen(&mut self, now: Timestamp) {
        for m in self.msgs.values_mut() {
            if m.status.state == State::Delivering {
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

async fn run(ops: Vec<Op>, limits: Limits) -> Result<(), TestCaseError> {
    let dir = TempDir::new("model");
    let clock: StoreClock = clock();
    let mut store: Embedded = open(dir.path(), &clock, limits).await;
    let mut model = Model::default();
    let mut leases: Vec<Lease> = Vec::new();
    let mut ids: Vec<MessageId> = Vec::new();
    let mut tag = 0u64;

    for op in ops {
        let now = clock.now();
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
                        prop_assert!(ids.iter().all(|old| *old < id), "ids grow");
                        for v in victims {
                            model.dropped += 1;
                            model.bury(v, State::Dropped, now);
                        }
                        model.msgs.insert(
                            id,
                            Msg {
                                status: Status {
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
                                },
                                lease: None,
                            },
                        );
                        ids.push(id);
                    }
                }
            }
            Op::Take { route, max } => {
                let route = ROUTES[route];
                let want = model.due(route, max, now);
                let got = store.take(route, max, Duration::ZERO).await.unwrap();
                let got_ids: Vec<MessageId> = got.iter().map(|l| l.message.id()).collect();
                prop_assert_eq!(&got_ids, &want, "take {} at {}", route, now);
                for l in got {
                    let m = model.msgs.get_mut(&l.lease.id).unwrap();
                    m.status.state = State::Delivering;
                    m.status.changed_at = now;
                    prop_assert_eq!(&l.message.status, &m.status);
                    m.lease = Some((l.lease.token, now.saturating_add(LEASE)));
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
                    model.msgs.get_mut(&lease.id).unwrap().status.attempts += 1;
                    model.bury(lease.id, State::Delivered, now);
                } else {
                    prop_assert_eq!(got, Err(format!("lease-lost {}", lease.id)));
                }
            }
            Op::RetryLater(i, delay) if !leases.is_empty() => {
                let lease = leases[i % leases.len()];
                let due = now.saturating_add(Duration::from_millis(delay));
                let got = store
                    .retry_later(lease, due, format!("e{delay}"))
                    .await
                    .map_err(|e| kind(&e));
                if model.holds(lease, now) {
                    prop_assert_eq!(got, Ok(()));
                    let m = model.msgs.get_mut(&lease.id).unwrap();
                    m.status.state = State::Queued;
                    m.status.attempts += 1;
                    m.status.next_attempt_at = due;
                    m.status.changed_at = now;
                    m.status.last_error = Some(format!("e{delay}"));
                    m.lease = None;
                } else {
                    prop_assert_eq!(got, Err(format!("lease-lost {}", lease.id)));
                }
            }
            Op::Dead(i) if !leases.is_empty() => {
                let lease = leases[i % leases.len()];
                let got = store.dead(lease, "dead".into()).await.map_err(|e| kind(&e));
                if model.holds(lease, now) {
                    prop_assert_eq!(got, Ok(()));
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
                        m.status.state = State::Queued;
                        m.status.attempts = 0;
                        m.status.queued_at = now;
                        m.status.next_attempt_at = now;
                        m.status.changed_at = now;
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
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Reopen => {
                store.close().await.unwrap();
                store = open(dir.path(), &clock, limits).await;
                model.reopen(clock.now());
            }
            // A settle or look-up with nothing to name.
            _ => continue,
        }
        model.purge(limits.max_messages);

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
        runtime.block_on(run(ops, limits))?;
    }
}
