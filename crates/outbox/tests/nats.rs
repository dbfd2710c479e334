//! The nats store's behaviour against a real nats-server (started by each test, with JetStream, on
//! a free port): the embedded store's semantics wherever JetStream allows them, several stores
//! sharing one stream, leases that end on the server's clock, and a server killed with SIGKILL
//! while messages are appended.
//!
//! Store time runs on a manual clock where a test checks times exactly, and on tokio's clock where
//! the server's own timers (leases, retry delays) are the point; the server's timers cannot be
//! paused, so those tests wait for them, bounded by a few seconds.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{START, request};
use rampart_outbox::nats::NatsError;
use rampart_outbox::{
    Counts, Error, FullReason, Leased, Limits, MessageId, Nats, NatsOptions, OnFull, State, Store,
    StoreClock, Timestamp,
};
use rampart_policy::clock::{ManualClock, TokioClock};
use rampart_policy::rng::Rng;
use rampart_test_support::NatsServer;
use tokio::time::Instant;

const NOW: Duration = Duration::ZERO;
const STREAM: &str = "RAMPART_OUTBOX";

fn ids(batch: &[Leased]) -> Vec<MessageId> {
    batch.iter().map(|l| l.message.id()).collect()
}

fn at(after: Duration) -> Timestamp {
    START.saturating_add(after)
}

/// A store clock standing at [`START`] until the test moves it.
fn manual() -> (StoreClock, Arc<ManualClock>) {
    let manual = ManualClock::new();
    (StoreClock::starting_at(manual.clone(), START), manual)
}

/// A store clock following tokio's (real) clock from [`START`].
fn real() -> StoreClock {
    StoreClock::starting_at(Arc::new(TokioClock), START)
}

fn options(
    server: &NatsServer,
    clock: &StoreClock,
    limits: Limits,
    lease: Duration,
) -> NatsOptions {
    NatsOptions {
        limits,
        lease,
        retention: Duration::from_secs(3600),
        clock: clock.clone(),
        rng: Rng::seeded(1),
        ..NatsOptions::new(server.url(), STREAM)
    }
}

async fn connect(server: &NatsServer, clock: &StoreClock, limits: Limits) -> Nats {
    connect_with_lease(server, clock, limits, Duration::from_secs(30)).await
}

/// Another store on the same stream, drawing other ids.
async fn connect_another(server: &NatsServer, clock: &StoreClock) -> Nats {
    Nats::connect(NatsOptions {
        rng: Rng::seeded(2),
        ..options(server, clock, Limits::default(), Duration::from_secs(30))
    })
    .await
    .expect("the store connects")
}

async fn connect_with_lease(
    server: &NatsServer,
    clock: &StoreClock,
    limits: Limits,
    lease: Duration,
) -> Nats {
    Nats::connect(options(server, clock, limits, lease))
        .await
        .expect("the store connects")
}

async fn state(store: &Nats, id: MessageId) -> Option<State> {
    store.get(id).await.unwrap().map(|s| s.state)
}

#[tokio::test]
async fn messages_are_taken_oldest_first_per_route() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let mut orders = Vec::new();
    let mut mails = Vec::new();
    for n in 0..6 {
        let route = if n % 2 == 0 { "orders" } else { "mail.out" };
        let id = store.append(route, request(n, b"{}")).await.unwrap();
        if n % 2 == 0 { &mut orders } else { &mut mails }.push(id);
    }
    assert!(orders.windows(2).all(|w| w[0] < w[1]), "ids grow");

    let first = store.take("orders", 2, NOW).await.unwrap();
    assert_eq!(ids(&first), orders[..2]);
    let rest = store.take("orders", 10, NOW).await.unwrap();
    assert_eq!(ids(&rest), orders[2..]);
    assert_eq!(ids(&store.take("mail.out", 10, NOW).await.unwrap()), mails);

    // The request comes back as it was sent, headers in order.
    let m = &first[0].message;
    assert_eq!(m.request, request(0, b"{}"));
    assert_eq!(m.status.state, State::Delivering);
    assert_eq!(m.status.accepted_at, START);
    assert_eq!(m.status.route.as_ref(), "orders");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_attempt_waits_until_its_next_attempt_is_due() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let a = store.append("r", request(1, b"a")).await.unwrap();
    let b = store.append("r", request(2, b"b")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    let started = Instant::now();
    let due = at(Duration::from_secs(1));
    store
        .retry_later(taken[0].lease, due, "503 from upstream".into())
        .await
        .unwrap();

    // a waits; b, accepted later, goes first.
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![b]);
    assert!(store.take("r", 10, NOW).await.unwrap().is_empty());
    let status = store.get(a).await.unwrap().unwrap();
    assert_eq!(status.state, State::Queued);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.next_attempt_at, due);
    assert_eq!(status.last_error.as_deref(), Some("503 from upstream"));

    // The server hands it out again when the delay is over, not before.
    let again = store.take("r", 10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&again), vec![a]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(again[0].message.status.attempts, 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_waiting_take_wakes_when_a_message_arrives() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let started = Instant::now();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.take("r", 10, Duration::from_secs(20)).await })
    };
    tokio::task::yield_now().await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    assert_eq!(ids(&waiter.await.unwrap().unwrap()), vec![id]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken by the append"
    );

    // Nothing due: the wait ends empty when its time is up.
    let started = Instant::now();
    let none = store
        .take("other", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    store.close().await.unwrap();
}

#[tokio::test]
async fn an_unsettled_lease_ends_and_another_store_is_handed_the_message() {
    let server = NatsServer::start();
    let clock = real();
    let lease = Duration::from_secs(1);
    let a = connect_with_lease(&server, &clock, Limits::default(), lease).await;
    let b = connect_with_lease(&server, &clock, Limits::default(), lease).await;
    let id = a.append("r", request(1, b"x")).await.unwrap();
    let started = Instant::now();
    let first = a.take("r", 10, NOW).await.unwrap();
    assert_eq!(ids(&first), vec![id]);
    assert!(
        b.take("r", 10, NOW).await.unwrap().is_empty(),
        "still leased"
    );
    assert_eq!(state(&b, id).await, Some(State::Delivering));

    let second = b.take("r", 10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&second), vec![id]);
    assert!(started.elapsed() >= lease, "{:?}", started.elapsed());
    assert_ne!(first[0].lease, second[0].lease);
    assert_eq!(
        second[0].message.status.attempts, 0,
        "an expired lease is no attempt"
    );

    // The first attempt's lease settles nothing but a success.
    let stale = first[0].lease;
    let later = clock.now().saturating_add(Duration::from_secs(60));
    assert!(matches!(
        a.retry_later(stale, later, "late".into()).await,
        Err(Error::LeaseLost(lost)) if lost == id
    ));
    assert!(matches!(
        a.dead(stale, "late".into()).await,
        Err(Error::LeaseLost(_))
    ));
    a.delivered(stale).await.unwrap();
    assert_eq!(state(&b, id).await, Some(State::Delivered));
    assert!(matches!(
        b.delivered(second[0].lease).await,
        Err(Error::LeaseLost(_))
    ));
    // Nothing is left to hand out, now or later.
    assert!(
        b.take("r", 10, Duration::from_millis(1500))
            .await
            .unwrap()
            .is_empty()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_holder_whose_lease_ended_on_the_server_is_fenced_off_by_the_status_revision() {
    let server = NatsServer::start();
    let lease = Duration::from_secs(1);
    // a's clock stands still: a never sees its lease end, though the server does.
    let (frozen, _) = manual();
    let a = connect_with_lease(&server, &frozen, Limits::default(), lease).await;
    let b = connect_with_lease(&server, &real(), Limits::default(), lease).await;
    let id = a.append("r", request(1, b"body")).await.unwrap();
    let first = a.take("r", 1, NOW).await.unwrap();
    let second = b.take("r", 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&second), vec![id]);

    let stale = first[0].lease;
    let later = frozen.now().saturating_add(Duration::from_secs(60));
    assert!(matches!(
        a.retry_later(stale, later, "late".into()).await,
        Err(Error::LeaseLost(_))
    ));
    assert!(matches!(
        a.dead(stale, "late".into()).await,
        Err(Error::LeaseLost(_))
    ));
    let status = b.get(id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (State::Delivering, 0));

    // b's lease holds: its dead-lettering keeps the one request, whole.
    b.dead(second[0].lease, "gave up".into()).await.unwrap();
    b.redrive(id).await.unwrap();
    let again = b.take("r", 10, NOW).await.unwrap();
    assert_eq!(ids(&again), vec![id]);
    assert_eq!(again[0].message.request, request(1, b"body"));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_retry_later_than_the_lease_waits_for_its_time() {
    let server = NatsServer::start();
    let clock = real();
    let lease = Duration::from_secs(1);
    let store = connect_with_lease(&server, &clock, Limits::default(), lease).await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    let started = Instant::now();
    let delay = Duration::from_millis(2500);
    let due = clock.now().saturating_add(delay);
    store
        .retry_later(taken[0].lease, due, "503".into())
        .await
        .unwrap();
    let again = store.take("r", 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&again), vec![id]);
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    store.close().await.unwrap();
}

#[tokio::test]
async fn two_stores_share_a_queue_and_never_hold_one_message_together() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let a = connect(&server, &clock, Limits::default()).await;
    let b = connect_another(&server, &clock).await;
    let mut appended = HashSet::new();
    for n in 0..40 {
        let store = if n % 2 == 0 { &a } else { &b };
        appended.insert(store.append("shared", request(n, b"x")).await.unwrap());
    }

    // One message held by a: b is handed every other one, never that one.
    let held = a.take("shared", 1, NOW).await.unwrap();
    let mut seen: HashMap<MessageId, &str> = HashMap::new();
    seen.insert(held[0].message.id(), "a");
    let takers = [("a", &a), ("b", &b)].map(|(name, store)| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.take("shared", 3, NOW).await.unwrap();
                if batch.is_empty() {
                    return (name, got);
                }
                for leased in batch {
                    got.push(leased.message.id());
                    store.delivered(leased.lease).await.unwrap();
                }
            }
        })
    });
    for taker in takers {
        let (name, got) = taker.await.unwrap();
        for id in got {
            assert!(seen.insert(id, name).is_none(), "{id} handed out twice");
        }
    }
    let counted: HashSet<MessageId> = seen.keys().copied().collect();
    assert_eq!(counted, appended, "every message handed out once");
    assert!(seen.values().any(|&n| n == "b"), "b took its share");
    a.delivered(held[0].lease).await.unwrap();

    // Both views come to count the same 40 delivered messages.
    for store in [&a, &b] {
        let mut summary = store.summary().await.unwrap();
        for _ in 0..100 {
            if summary.total.delivered == 40 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            summary = store.summary().await.unwrap();
        }
        assert_eq!(
            (summary.total.delivered, summary.total.pending()),
            (40, 0),
            "{store:?}"
        );
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn stores_that_draw_the_same_id_keep_both_messages() {
    let server = NatsServer::start();
    // The same seed on a clock that stands still: both stores draw the same ids.
    let (clock, _) = manual();
    let a = connect(&server, &clock, Limits::default()).await;
    let b = connect(&server, &clock, Limits::default()).await;
    let mut appended = Vec::new();
    for n in 0..6 {
        let store = if n % 2 == 0 { &a } else { &b };
        appended.push((store.append("r", request(n, b"x")).await.unwrap(), n));
    }
    let distinct: HashSet<MessageId> = appended.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), 6);
    let taken = a.take("r", 10, NOW).await.unwrap();
    let requests: HashMap<MessageId, _> = taken
        .into_iter()
        .map(|l| (l.message.id(), l.message.request))
        .collect();
    for (id, n) in appended {
        assert_eq!(requests.get(&id), Some(&request(n, b"x")), "{id}");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_full_store_rejects_and_keeps_everything_it_accepted() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let limits = Limits {
        max_messages: 3,
        max_bytes: 1_000,
        on_full: OnFull::Reject,
    };
    let store = connect(&server, &clock, limits).await;
    let mut kept = Vec::new();
    for n in 0..3 {
        kept.push(store.append("r", request(n, b"x")).await.unwrap());
    }
    match store.append("r", request(9, b"x")).await {
        Err(Error::Full(full)) => assert_eq!(full.reason, FullReason::Messages { max: 3 }),
        other => panic!("expected Full, got {other:?}"),
    }
    // Delivering one makes room again.
    let taken = store.take("r", 1, NOW).await.unwrap();
    store.delivered(taken[0].lease).await.unwrap();
    store.append("r", request(3, b"x")).await.unwrap();

    let big = vec![b'x'; 1_000];
    match store.append("r", request(10, &big)).await {
        Err(Error::Full(full)) => {
            assert!(matches!(full.reason, FullReason::Bytes { max: 1_000, .. }))
        }
        other => panic!("expected Full, got {other:?}"),
    }
    for id in &kept[1..] {
        assert_eq!(state(&store, *id).await, Some(State::Queued));
    }
    let summary = store.summary().await.unwrap();
    assert_eq!((summary.total.queued, summary.dropped), (3, 0));
    assert_eq!(
        store.take("r", 10, NOW).await.unwrap().len(),
        3,
        "nothing refused was stored"
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn drop_oldest_drops_dead_letters_first_then_the_oldest_queued() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let limits = Limits {
        max_messages: 3,
        max_bytes: 1 << 20,
        on_full: OnFull::DropOldest,
    };
    let store = connect(&server, &clock, limits).await;
    let a = store.append("r", request(1, b"a")).await.unwrap();
    let b = store.append("r", request(2, b"b")).await.unwrap();
    let c = store.append("r", request(3, b"c")).await.unwrap();
    // a dies; b is being delivered; c waits.
    let taken = store.take("r", 2, NOW).await.unwrap();
    store.dead(taken[0].lease, "gave up".into()).await.unwrap();

    let d = store.append("r", request(4, b"d")).await.unwrap();
    assert_eq!(state(&store, a).await, Some(State::Dropped));
    let e = store.append("r", request(5, b"e")).await.unwrap();
    assert_eq!(state(&store, c).await, Some(State::Dropped));
    let f = store.append("r", request(6, b"f")).await.unwrap();
    assert_eq!(state(&store, d).await, Some(State::Dropped));
    assert_eq!(
        state(&store, b).await,
        Some(State::Delivering),
        "never a leased one"
    );
    assert!(matches!(
        store.redrive(a).await,
        Err(Error::NotDead {
            state: State::Dropped,
            ..
        })
    ));

    let summary = store.summary().await.unwrap();
    assert_eq!(summary.dropped, 3);
    assert_eq!(
        summary.total,
        Counts {
            queued: 2,
            delivering: 1,
            dead: 0,
            delivered: 0,
            bytes: summary.total.bytes
        }
    );
    // The dropped requests still in the queue are passed over.
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![e, f]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_delivered_message_answers_until_its_tombstone_is_purged() {
    let server = NatsServer::start();
    let (clock, manual) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    manual.advance(Duration::from_secs(1));
    store.delivered(taken[0].lease).await.unwrap();
    let status = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.attempts, status.size),
        (State::Delivered, 1, 0)
    );
    assert_eq!(status.changed_at, at(Duration::from_secs(1)));
    assert_eq!(store.summary().await.unwrap().total.delivered, 1);

    // Purged by the first write after the retention (1 h), not before.
    manual.advance(Duration::from_secs(3599));
    store.append("r", request(2, b"y")).await.unwrap();
    assert!(store.get(id).await.unwrap().is_some());
    manual.advance(Duration::from_secs(1));
    store.append("r", request(3, b"z")).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), None);
    assert_eq!(store.summary().await.unwrap().total.delivered, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn an_idle_store_purges_its_tombstones_when_a_take_finds_nothing() {
    let server = NatsServer::start();
    let (clock, manual) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    store.append("r", request(1, b"x")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    store.delivered(taken[0].lease).await.unwrap();

    // Only takes that find nothing from now on, as a deliverer of a quiet route makes; the
    // summary reads the store's view without writing.
    let idle_take = || async {
        let taken = store.take("r", 1, Duration::from_millis(200)).await;
        assert!(taken.unwrap().is_empty());
    };
    manual.advance(Duration::from_secs(3599));
    idle_take().await;
    assert_eq!(store.summary().await.unwrap().total.delivered, 1);
    manual.advance(Duration::from_secs(1));
    idle_take().await;
    assert_eq!(store.summary().await.unwrap().total.delivered, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn tombstones_are_capped_at_max_messages() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let limits = Limits {
        max_messages: 2,
        ..Limits::default()
    };
    let store = connect(&server, &clock, limits).await;
    let mut delivered = Vec::new();
    for n in 0..4 {
        let id = store.append("r", request(n, b"x")).await.unwrap();
        let taken = store.take("r", 1, NOW).await.unwrap();
        store.delivered(taken[0].lease).await.unwrap();
        delivered.push(id);
    }
    assert_eq!(store.get(delivered[0]).await.unwrap(), None);
    assert_eq!(store.get(delivered[1]).await.unwrap(), None);
    assert!(store.get(delivered[3]).await.unwrap().is_some());
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_message_is_kept_whole_until_redriven() {
    let server = NatsServer::start();
    let (clock, manual) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let id = store.append("r", request(1, b"body")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    store.dead(taken[0].lease, "max_age".into()).await.unwrap();
    let status = store.get(id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (State::Dead, 1));
    assert_eq!(status.last_error.as_deref(), Some("max_age"));
    assert!(store.take("r", 10, NOW).await.unwrap().is_empty());
    assert!(matches!(
        store.redrive(MessageId::from_u128(1)).await,
        Err(Error::NotFound(_))
    ));

    manual.advance(Duration::from_secs(10));
    store.redrive(id).await.unwrap();
    let again = store.take("r", 10, NOW).await.unwrap();
    assert_eq!(ids(&again), vec![id]);
    assert_eq!(again[0].message.request, request(1, b"body"));
    let status = &again[0].message.status;
    assert_eq!(status.attempts, 0);
    assert_eq!(
        status.queued_at,
        at(Duration::from_secs(10)),
        "max_age counts afresh"
    );
    assert_eq!(status.accepted_at, START);
    assert!(matches!(
        store.redrive(id).await,
        Err(Error::NotDead {
            state: State::Delivering,
            ..
        })
    ));
    // Dead again, and re-driven again: the request is still whole.
    store.dead(again[0].lease, "again".into()).await.unwrap();
    store.redrive(id).await.unwrap();
    let third = store.take("r", 10, NOW).await.unwrap();
    assert_eq!(third[0].message.request, request(1, b"body"));
    store.close().await.unwrap();
}

/// The ids of a page of dead letters.
fn dead_ids(page: &[rampart_outbox::Status]) -> Vec<MessageId> {
    page.iter().map(|s| s.id).collect()
}

#[tokio::test]
async fn dead_letters_are_listed_oldest_first_per_route_in_pages() {
    let server = NatsServer::start();
    let (clock, manual) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let mut a = Vec::new();
    for n in 0..5 {
        a.push(store.append("a", request(n, b"a")).await.unwrap());
    }
    let b = store.append("b", request(9, b"b")).await.unwrap();
    let queued = store.append("a", request(10, b"queued")).await.unwrap();
    // They die newest first: the list is in acceptance order all the same.
    let taken = store.take("a", 5, NOW).await.unwrap();
    assert_eq!(ids(&taken), a);
    for leased in taken.iter().rev() {
        manual.advance(Duration::from_secs(1));
        let why = format!("dead {}", leased.message.id());
        store.dead(leased.lease, why).await.unwrap();
    }
    let taken = store.take("b", 1, NOW).await.unwrap();
    store.dead(taken[0].lease, "b down".into()).await.unwrap();

    let all = store.dead_letters(None, None, 100).await.unwrap();
    let mut everyone = a.clone();
    everyone.push(b);
    assert_eq!(dead_ids(&all), everyone);
    for status in &all {
        assert_eq!(status.state, State::Dead);
        assert_eq!(Some(status), store.get(status.id).await.unwrap().as_ref());
    }
    assert_eq!(all[0].last_error, Some(format!("dead {}", a[0])));
    assert_eq!(all[0].changed_at, at(Duration::from_secs(5)));
    let of_a = store.dead_letters(Some("a"), None, 100).await.unwrap();
    assert_eq!(dead_ids(&of_a), a, "not b's, nor the queued one");
    assert!(!dead_ids(&of_a).contains(&queued));
    assert!(
        store
            .dead_letters(Some("nobody"), None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // Pages of two, each after the last id of the one before.
    let page = |after: Option<MessageId>| store.dead_letters(Some("a"), after, 2);
    assert_eq!(dead_ids(&page(None).await.unwrap()), a[..2]);
    assert_eq!(dead_ids(&page(Some(a[1])).await.unwrap()), a[2..4]);
    assert_eq!(dead_ids(&page(Some(a[3])).await.unwrap()), a[4..]);
    assert!(page(Some(a[4])).await.unwrap().is_empty());

    // Another instance on the stream lists the same, and what it re-drives leaves both lists:
    // whether or not this one's view has heard, it reads the records.
    let other = connect_another(&server, &clock).await;
    assert_eq!(
        other.dead_letters(None, None, 100).await.unwrap(),
        store.dead_letters(None, None, 100).await.unwrap()
    );
    other.redrive(a[2]).await.unwrap();
    assert_eq!(dead_ids(&page(Some(a[1])).await.unwrap()), [a[3], a[4]]);
    assert_eq!(dead_ids(&page(Some(a[3])).await.unwrap()), a[4..]);
    let left = other.dead_letters(Some("a"), None, 100).await.unwrap();
    assert_eq!(dead_ids(&left), [a[0], a[1], a[3], a[4]]);

    other.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.dead_letters(None, None, 100).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn the_summary_counts_per_route_and_state() {
    let server = NatsServer::start();
    let (clock, manual) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    for n in 0..3 {
        store.append("a", request(n, b"12345")).await.unwrap();
    }
    store.append("b", request(9, b"")).await.unwrap();
    let taken = store.take("a", 2, NOW).await.unwrap();
    store.dead(taken[1].lease, "x".into()).await.unwrap();

    let summary = store.summary().await.unwrap();
    let a = summary.routes["a"];
    assert_eq!((a.queued, a.delivering, a.dead, a.delivered), (1, 1, 1, 0));
    assert_eq!(summary.routes["b"].queued, 1);
    assert_eq!(summary.total.pending(), 3);
    let sizes: u64 = [&taken[0], &taken[1]]
        .iter()
        .map(|l| l.message.status.size)
        .sum();
    assert!(a.bytes > sizes && summary.total.bytes > a.bytes);

    // A lease that ended counts as queued again.
    manual.advance(Duration::from_secs(30));
    assert_eq!(store.summary().await.unwrap().routes["a"].queued, 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_store_connected_again_finds_every_status_and_lease() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let leased = store.append("r", request(1, b"1")).await.unwrap();
    let waiting = store.append("r", request(2, b"2")).await.unwrap();
    let dead = store.append("r", request(3, b"3")).await.unwrap();
    let delivered = store.append("r", request(4, b"4")).await.unwrap();
    let taken = store.take("r", 4, NOW).await.unwrap();
    store
        .retry_later(taken[1].lease, at(Duration::from_secs(3600)), "503".into())
        .await
        .unwrap();
    store.dead(taken[2].lease, "400".into()).await.unwrap();
    store.delivered(taken[3].lease).await.unwrap();
    let before = store.summary().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.get(leased).await, Err(Error::Closed)));
    assert!(matches!(
        store.append("r", request(9, b"")).await,
        Err(Error::Closed)
    ));

    let store = connect(&server, &clock, Limits::default()).await;
    // Unlike the embedded store, the lease outlives the instance: it is the server's.
    assert_eq!(state(&store, leased).await, Some(State::Delivering));
    let w = store.get(waiting).await.unwrap().unwrap();
    assert_eq!((w.state, w.attempts), (State::Queued, 1));
    assert_eq!(w.next_attempt_at, at(Duration::from_secs(3600)));
    assert_eq!(state(&store, dead).await, Some(State::Dead));
    assert_eq!(state(&store, delivered).await, Some(State::Delivered));
    assert_eq!(store.summary().await.unwrap(), before);
    assert!(store.take("r", 10, NOW).await.unwrap().is_empty());

    // The old lease settles a success still.
    store.delivered(taken[0].lease).await.unwrap();
    assert_eq!(state(&store, leased).await, Some(State::Delivered));
    let next = store.append("r", request(5, b"5")).await.unwrap();
    assert!(next > delivered, "new ids sort after the old ones");
    store.close().await.unwrap();
}

/// Publishes to the store's queue behind its back, as an appender that died before writing the
/// status leaves a message.
async fn publish_raw(server: &NatsServer, route: &str, id: MessageId, payload: Vec<u8>) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Rampart-Message-Id", id.to_string().as_str());
    js.publish_with_headers(format!("{STREAM}.q.{route}.{id}"), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_message_without_a_status_is_delivered_and_one_unreadable_is_dead_lettered() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let accepted = START.saturating_add(Duration::from_millis(5));
    let id_of = |n: u128| MessageId::from_u128((u128::from(accepted.as_millis()) << 80) | n);

    let record = rampart_outbox::record::encode_message(&rampart_outbox::record::MessageRecord {
        route: "r".into(),
        request: request(1, b"orphan"),
    })
    .unwrap();
    publish_raw(&server, "r", id_of(1), vec![1, b'M', 0xff]).await;
    publish_raw(&server, "r", id_of(2), record).await;
    let good = store.append("r", request(3, b"good")).await.unwrap();

    let taken = store.take("r", 10, NOW).await.unwrap();
    assert_eq!(ids(&taken), vec![id_of(2), good]);
    let orphan = &taken[0].message;
    assert_eq!(orphan.request, request(1, b"orphan"));
    assert_eq!(
        (orphan.status.attempts, orphan.status.accepted_at),
        (0, accepted)
    );

    let bad = store.get(id_of(1)).await.unwrap().unwrap();
    assert_eq!(bad.state, State::Dead);
    let why = bad.last_error.unwrap();
    assert!(why.contains("unreadable"), "{why}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn connection_failures_name_the_server_the_stream_and_the_cause() {
    let (clock, _) = manual();
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let failed = Nats::connect(NatsOptions {
        clock: clock.clone(),
        ..NatsOptions::new(url.clone(), "ORDERS")
    })
    .await
    .unwrap_err();
    let Error::Backend(source) = &failed else {
        panic!("expected a backend error, got {failed:?}")
    };
    let nats = source.downcast_ref::<NatsError>().expect("a NatsError");
    assert_eq!(
        (nats.what(), nats.url(), nats.stream()),
        ("connecting", url.as_str(), "ORDERS")
    );
    let text = failed.to_string();
    assert!(text.contains(&url) && text.contains("ORDERS"), "{text}");

    // Credentials in the URL are never shown: not in the message, its causes or `Debug`.
    let options = NatsOptions::new(format!("nats://alice:s3cret@127.0.0.1:{port}"), "ORDERS");
    assert!(!format!("{options:?}").contains("s3cret"), "{options:?}");
    let failed = Nats::connect(NatsOptions {
        clock: clock.clone(),
        ..options
    })
    .await
    .unwrap_err();
    let mut shown = format!("{failed} {failed:?}");
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&failed);
    while let Some(err) = cause {
        shown.push_str(&format!(" {err} {err:?}"));
        cause = err.source();
    }
    assert!(
        !shown.contains("s3cret") && !shown.contains("alice"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("nats://***@127.0.0.1:{port}")),
        "{shown}"
    );

    let server = NatsServer::start_without_jetstream();
    let failed = Nats::connect(NatsOptions {
        clock: clock.clone(),
        ..NatsOptions::new(server.url(), STREAM)
    })
    .await
    .unwrap_err();
    assert!(failed.to_string().contains("JetStream"), "{failed}");

    let failed = Nats::connect(NatsOptions {
        clock,
        ..NatsOptions::new(server.url(), "not.a.stream")
    })
    .await
    .unwrap_err();
    assert!(
        failed.to_string().contains("invalid stream name"),
        "{failed}"
    );
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_to_the_server() {
    let server = NatsServer::start_with_user("alice", "p@ss:5ecret");
    let (clock, _) = manual();
    let options = |url: String| NatsOptions {
        clock: clock.clone(),
        ..NatsOptions::new(url, STREAM)
    };
    // Without them the server refuses the connection.
    let refused = Nats::connect(options(server.url())).await.unwrap_err();
    assert!(refused.to_string().contains("connecting"), "{refused}");

    // The password percent-encoded, as a URL carries an `@` or a `:`.
    let url = server
        .url()
        .replace("nats://", "nats://alice:p%40ss%3A5ecret@");
    let store = Nats::connect(options(url)).await.unwrap();
    let id = store.append("r", request(1, b"hello")).await.unwrap();
    assert_eq!(
        store.get(id).await.unwrap().map(|s| s.state),
        Some(State::Queued)
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_request_over_the_servers_max_payload_is_unstorable() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let store = connect(&server, &clock, Limits::default()).await;
    let big = vec![b'x'; 2 << 20];
    assert!(matches!(
        store.append("r", request(1, &big)).await,
        Err(Error::Unstorable(_))
    ));
    assert_eq!(store.summary().await.unwrap().total, Counts::default());
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_full_drop_oldest_store_drops_nothing_for_a_request_it_cannot_store() {
    let server = NatsServer::start();
    let (clock, _) = manual();
    let limits = Limits {
        max_messages: 2,
        max_bytes: 1 << 30,
        on_full: OnFull::DropOldest,
    };
    let store = connect(&server, &clock, limits).await;
    let a = store.append("r", request(1, b"a")).await.unwrap();
    let b = store.append("r", request(2, b"b")).await.unwrap();
    // Past the server's max_payload: refused before room is made, not after.
    let big = vec![b'x'; 2 << 20];
    for _ in 0..2 {
        assert!(matches!(
            store.append("r", request(3, &big)).await,
            Err(Error::Unstorable(_))
        ));
    }
    assert_eq!(state(&store, a).await, Some(State::Queued));
    assert_eq!(state(&store, b).await, Some(State::Queued));
    assert_eq!(store.summary().await.unwrap().dropped, 0);
    store.close().await.unwrap();
}

/// Appends from a few tasks while the server is killed with SIGKILL and restarted twice; every
/// append that returned `Ok` must then be in the stream, its request intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_survives_the_server_being_killed() {
    const APPENDS: u64 = 1_000;
    const PRODUCERS: u64 = 4;
    let mut server = NatsServer::start();
    let clock = real();
    let store = connect(&server, &clock, Limits::default()).await;
    let acked = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let store = store.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut failed = 0;
                for n in (p..APPENDS).step_by(PRODUCERS as usize) {
                    match store.append("crash", body_of(n)).await {
                        Ok(id) => {
                            ok.push((id, n));
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // The server is down: a pause before the next, as a client would
                        // back off, so that the outage does not use up every append as a
                        // failure before the server is back (under load its restart and
                        // JetStream's recovery take seconds).
                        Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    for kill_at in [250, 600] {
        let reached = async {
            while acked.load(Ordering::SeqCst) < kill_at {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .unwrap_or_else(|_| panic!("appends stalled before {kill_at} were acknowledged"));
        server.kill();
        server.restart();
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    for producer in producers {
        let (o, f) = producer.await.unwrap();
        ok.extend(o);
        failed += f;
    }
    store.close().await.unwrap();
    assert!(
        ok.len() as u64 > 600,
        "appends went on after the kills: {} ok, {failed} failed",
        ok.len()
    );
    assert_eq!(ok.len() as u64 + failed, APPENDS);

    let store = connect(&server, &clock, Limits::default()).await;
    for &(id, _) in &ok {
        assert_eq!(state(&store, id).await, Some(State::Queued), "{id}");
    }
    let mut found = HashMap::new();
    loop {
        let batch = store.take("crash", 500, NOW).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for l in batch {
            assert!(
                found.insert(l.message.id(), l.message.request).is_none(),
                "handed out twice"
            );
        }
    }
    for &(id, n) in &ok {
        assert_eq!(found.get(&id), Some(&body_of(n)), "{id}");
    }
    store.close().await.unwrap();
}

/// A 1 KiB body that says which tag it belongs to.
fn body_of(tag: u64) -> rampart_outbox::Request {
    let line = format!("{tag:020}|");
    request(tag, &line.repeat(1024 / line.len() + 1).as_bytes()[..1024])
}

/// Waits (up to 10 s) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// A post refused while the server is down (the client would have kept it in its buffer and
/// sent it once connected again) is not delivered once the server is back: the caller was told
/// it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_refused_while_the_server_is_down_is_never_delivered() {
    let mut server = NatsServer::start();
    let clock = real();
    let store = connect(&server, &clock, Limits::default()).await;
    let kept = store.append("orders", request(1, b"kept")).await.unwrap();
    server.kill();
    until("the store sees the server gone", || !store.is_connected()).await;
    let refused = store.append("orders", request(2, b"refused")).await;
    assert!(matches!(refused, Err(Error::Backend(_))), "{refused:?}");

    server.restart();
    until("the store is connected again", || store.is_connected()).await;
    let taken = store
        .take("orders", 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ids(&taken), [kept]);
    for leased in taken {
        store.delivered(leased.lease).await.unwrap();
    }
    // Whatever the client had buffered went out with the reconnection.
    let late = store
        .take("orders", 10, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        late.is_empty(),
        "a refused append was delivered: {:?}",
        ids(&late)
    );
    assert_eq!(store.summary().await.unwrap().total.pending(), 0);
    store.close().await.unwrap();
}
