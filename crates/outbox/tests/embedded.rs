//! The embedded store's behaviour, on tokio's paused clock: order, due times, leases, limits,
//! tombstones, dead letters and restarts.

mod common;

use std::time::Duration;

use common::{START, clock, open, request};
use rampart_outbox::{
    Counts, Error, FullReason, Limits, MessageId, OnFull, State, Store, StoreClock, Timestamp,
};
use rampart_test_support::TempDir;
use tokio::time::advance;

const NOW: Duration = Duration::ZERO;

fn ids(batch: &[rampart_outbox::Leased]) -> Vec<MessageId> {
    batch.iter().map(|l| l.message.id()).collect()
}

fn at(after: Duration) -> Timestamp {
    START.saturating_add(after)
}

#[tokio::test(start_paused = true)]
async fn messages_are_taken_oldest_first_per_route() {
    let dir = TempDir::new("fifo");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let mut orders = Vec::new();
    let mut mails = Vec::new();
    for n in 0..6 {
        let route = if n % 2 == 0 { "orders" } else { "mails" };
        let id = store.append(route, request(n, b"{}")).await.unwrap();
        if n % 2 == 0 { &mut orders } else { &mut mails }.push(id);
    }
    assert!(orders.windows(2).all(|w| w[0] < w[1]), "ids grow");

    let first = store.take("orders", 2, NOW).await.unwrap();
    assert_eq!(ids(&first), orders[..2]);
    let rest = store.take("orders", 10, NOW).await.unwrap();
    assert_eq!(ids(&rest), orders[2..]);
    assert_eq!(ids(&store.take("mails", 10, NOW).await.unwrap()), mails);

    // The request comes back as it was sent, headers in order, and the id reads back from text.
    let m = &first[0].message;
    assert_eq!(m.request, request(0, b"{}"));
    assert_eq!(m.status.state, State::Delivering);
    assert_eq!(m.status.accepted_at, START);
    assert_eq!(m.id().to_string().parse::<MessageId>(), Ok(m.id()));
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_attempt_waits_until_its_next_attempt_is_due() {
    let dir = TempDir::new("due");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let a = store.append("r", request(1, b"a")).await.unwrap();
    let b = store.append("r", request(2, b"b")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    store
        .retry_later(
            taken[0].lease,
            at(Duration::from_secs(5)),
            "503 from upstream".into(),
        )
        .await
        .unwrap();

    // a waits; b, accepted later, goes first.
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![b]);
    assert!(store.take("r", 10, NOW).await.unwrap().is_empty());
    let status = store.get(a).await.unwrap().unwrap();
    assert_eq!(status.state, State::Queued);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.next_attempt_at, at(Duration::from_secs(5)));
    assert_eq!(status.last_error.as_deref(), Some("503 from upstream"));

    advance(Duration::from_millis(4_999)).await;
    assert!(
        store.take("r", 10, NOW).await.unwrap().is_empty(),
        "1 ms early"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![a]);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_take_wakes_when_a_message_arrives_or_comes_due() {
    let dir = TempDir::new("wake");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.take("r", 10, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    let taken = waiter.await.unwrap().unwrap();
    assert_eq!(ids(&taken), vec![id]);
    assert_eq!(store.now(), START, "woken by the append, not by time");

    store
        .retry_later(taken[0].lease, at(Duration::from_secs(2)), "reset".into())
        .await
        .unwrap();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.take("r", 10, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_secs(2)).await;
    assert_eq!(ids(&waiter.await.unwrap().unwrap()), vec![id]);

    // Nothing due: the wait ends empty when its time is up.
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.take("other", 10, Duration::from_secs(1)).await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_secs(1)).await;
    assert!(waiter.await.unwrap().unwrap().is_empty());
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn messages_stored_while_the_clock_was_ahead_wait_no_longer_than_they_were_told() {
    let dir = TempDir::new("clock-ahead");
    // Two days ahead: one message waits 5 s after a failed attempt, one was never tried.
    let ahead = StoreClock::starting_at(
        std::sync::Arc::new(rampart_policy::clock::TokioClock),
        at(Duration::from_secs(2 * 86_400)),
    );
    let store = open(dir.path(), &ahead, Limits::default()).await;
    let failed = store.append("r", request(1, b"a")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    let retry_at = ahead.now().saturating_add(Duration::from_secs(5));
    store
        .retry_later(taken[0].lease, retry_at, "503 from upstream".into())
        .await
        .unwrap();
    let untried = store.append("r", request(2, b"b")).await.unwrap();
    store.close().await.unwrap();

    // The clock is put right: the untried one is due now, the other 5 s from now, not in two
    // days.
    let store = open(dir.path(), &clock(), Limits::default()).await;
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![untried]);
    advance(Duration::from_millis(4_999)).await;
    assert!(
        store.take("r", 10, NOW).await.unwrap().is_empty(),
        "its backoff holds"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![failed]);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_hands_the_message_out_again() {
    let dir = TempDir::new("lease");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    let first = store.take("r", 10, NOW).await.unwrap();
    advance(Duration::from_millis(29_999)).await;
    assert!(
        store.take("r", 10, NOW).await.unwrap().is_empty(),
        "still leased"
    );
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        State::Delivering
    );

    advance(Duration::from_millis(1)).await;
    assert_eq!(store.get(id).await.unwrap().unwrap().state, State::Queued);
    let second = store.take("r", 10, NOW).await.unwrap();
    assert_eq!(ids(&second), vec![id]);
    assert_ne!(first[0].lease, second[0].lease);

    // The first attempt's lease settles nothing but a success.
    let stale = first[0].lease;
    let later = at(Duration::from_secs(60));
    assert!(matches!(
        store.retry_later(stale, later, "late".into()).await,
        Err(Error::LeaseLost(lost)) if lost == id
    ));
    assert!(matches!(
        store.dead(stale, "late".into()).await,
        Err(Error::LeaseLost(_))
    ));
    store.delivered(stale).await.unwrap();
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        State::Delivered
    );
    assert!(matches!(
        store.delivered(second[0].lease).await,
        Err(Error::LeaseLost(_))
    ));
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_store_rejects_and_keeps_everything_it_accepted() {
    let dir = TempDir::new("reject");
    let limits = Limits {
        max_messages: 3,
        max_bytes: 1_000,
        on_full: OnFull::Reject,
    };
    let store = open(dir.path(), &clock(), limits).await;
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
        assert_eq!(store.get(*id).await.unwrap().unwrap().state, State::Queued);
    }
    let summary = store.summary().await.unwrap();
    assert_eq!((summary.total.queued, summary.dropped), (3, 0));
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_drops_dead_letters_first_then_the_oldest_queued() {
    let dir = TempDir::new("drop");
    let limits = Limits {
        max_messages: 3,
        max_bytes: 1 << 20,
        on_full: OnFull::DropOldest,
    };
    let store = open(dir.path(), &clock(), limits).await;
    let a = store.append("r", request(1, b"a")).await.unwrap();
    let b = store.append("r", request(2, b"b")).await.unwrap();
    let c = store.append("r", request(3, b"c")).await.unwrap();
    // a dies; b is being delivered; c waits.
    let taken = store.take("r", 2, NOW).await.unwrap();
    store.dead(taken[0].lease, "gave up".into()).await.unwrap();

    let d = store.append("r", request(4, b"d")).await.unwrap();
    assert_eq!(store.get(a).await.unwrap().unwrap().state, State::Dropped);
    let e = store.append("r", request(5, b"e")).await.unwrap();
    assert_eq!(store.get(c).await.unwrap().unwrap().state, State::Dropped);
    let f = store.append("r", request(6, b"f")).await.unwrap();
    assert_eq!(store.get(d).await.unwrap().unwrap().state, State::Dropped);
    assert_eq!(
        store.get(b).await.unwrap().unwrap().state,
        State::Delivering,
        "never a leased one"
    );

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
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![e, f]);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_delivered_message_answers_until_its_tombstone_is_purged() {
    let dir = TempDir::new("tombstone");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let id = store.append("r", request(1, b"x")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    advance(Duration::from_secs(1)).await;
    store.delivered(taken[0].lease).await.unwrap();
    let status = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.attempts, status.size),
        (State::Delivered, 1, 0)
    );
    assert_eq!(status.changed_at, at(Duration::from_secs(1)));
    assert_eq!(store.summary().await.unwrap().total.delivered, 1);

    // Purged by the first write after the retention (1 h), not before.
    advance(Duration::from_secs(3599)).await;
    store.append("r", request(2, b"y")).await.unwrap();
    assert!(store.get(id).await.unwrap().is_some());
    advance(Duration::from_secs(1)).await;
    store.append("r", request(3, b"z")).await.unwrap();
    assert_eq!(store.get(id).await.unwrap(), None);
    assert_eq!(store.summary().await.unwrap().total.delivered, 0);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_store_purges_its_tombstones_when_a_take_finds_nothing() {
    let dir = TempDir::new("idle-purge");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    store.append("r", request(1, b"x")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    store.delivered(taken[0].lease).await.unwrap();

    // Only takes that find nothing from now on, as a deliverer of a quiet route makes; the
    // summary reads the index without writing.
    let delivered = || async { store.summary().await.unwrap().total.delivered };
    let idle_take = || async {
        let take = store.take("r", 1, Duration::from_secs(1));
        let (taken, ()) = tokio::join!(take, advance(Duration::from_secs(1)));
        assert!(taken.unwrap().is_empty());
    };
    advance(Duration::from_secs(3590)).await;
    idle_take().await;
    assert_eq!(delivered().await, 1);
    advance(Duration::from_secs(9)).await;
    idle_take().await;
    assert_eq!(delivered().await, 0);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tombstones_are_capped_at_max_messages() {
    let dir = TempDir::new("cap");
    let limits = Limits {
        max_messages: 2,
        ..Limits::default()
    };
    let store = open(dir.path(), &clock(), limits).await;
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

#[tokio::test(start_paused = true)]
async fn a_dead_message_is_kept_whole_until_redriven() {
    let dir = TempDir::new("dead");
    let store = open(dir.path(), &clock(), Limits::default()).await;
    let id = store.append("r", request(1, b"body")).await.unwrap();
    let taken = store.take("r", 1, NOW).await.unwrap();
    store.dead(taken[0].lease, "max_age".into()).await.unwrap();
    let status = store.get(id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (State::Dead, 1));
    assert!(store.take("r", 10, NOW).await.unwrap().is_empty());
    assert!(matches!(
        store.redrive(MessageId::from_u128(1)).await,
        Err(Error::NotFound(_))
    ));

    advance(Duration::from_secs(10)).await;
    store.redrive(id).await.unwrap();
    let again = store.take("r", 10, NOW).await.unwrap();
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
    store.close().await.unwrap();
}

/// The ids of a page of dead letters.
fn dead_ids(page: &[rampart_outbox::Status]) -> Vec<MessageId> {
    page.iter().map(|s| s.id).collect()
}

#[tokio::test(start_paused = true)]
async fn dead_letters_are_listed_oldest_first_per_route_in_pages() {
    let dir = TempDir::new("dead-letters");
    let clock = clock();
    let store = open(dir.path(), &clock, Limits::default()).await;
    let mut a = Vec::new();
    for n in 0..5 {
        a.push(store.append("a", request(n, b"a")).await.unwrap());
    }
    let b = store.append("b", request(9, b"b")).await.unwrap();
    let queued = store.append("a", request(10, b"queued")).await.unwrap();
    // They die newest first: the list is in acceptance order all the same.
    let taken = store.take("a", 5, NOW).await.unwrap();
    for leased in taken.iter().rev() {
        advance(Duration::from_secs(1)).await;
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

    // A re-driven message leaves the list; the pages after it do not shift.
    store.redrive(a[2]).await.unwrap();
    assert_eq!(dead_ids(&page(Some(a[1])).await.unwrap()), [a[3], a[4]]);
    assert_eq!(dead_ids(&page(Some(a[3])).await.unwrap()), a[4..]);

    // The list outlives a restart.
    store.close().await.unwrap();
    assert!(matches!(
        store.dead_letters(None, None, 100).await,
        Err(Error::Closed)
    ));
    let store = open(dir.path(), &clock, Limits::default()).await;
    let again = store.dead_letters(None, None, 100).await.unwrap();
    assert_eq!(dead_ids(&again), [a[0], a[1], a[3], a[4], b]);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_requeues_what_was_being_delivered_and_keeps_the_rest() {
    let dir = TempDir::new("restart");
    let clock = clock();
    let store = open(dir.path(), &clock, Limits::default()).await;
    let leased = store.append("r", request(1, b"1")).await.unwrap();
    let waiting = store.append("r", request(2, b"2")).await.unwrap();
    let dead = store.append("r", request(3, b"3")).await.unwrap();
    let delivered = store.append("r", request(4, b"4")).await.unwrap();
    let taken = store.take("r", 4, NOW).await.unwrap();
    store
        .retry_later(taken[1].lease, at(Duration::from_secs(60)), "503".into())
        .await
        .unwrap();
    store.dead(taken[2].lease, "400".into()).await.unwrap();
    store.delivered(taken[3].lease).await.unwrap();
    let before = store.summary().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.get(leased).await, Err(Error::Closed)));

    advance(Duration::from_secs(1)).await;
    let store = open(dir.path(), &clock, Limits::default()).await;
    assert_eq!(
        store.get(leased).await.unwrap().unwrap().state,
        State::Queued
    );
    let w = store.get(waiting).await.unwrap().unwrap();
    assert_eq!((w.state, w.attempts), (State::Queued, 1));
    assert_eq!(w.next_attempt_at, at(Duration::from_secs(60)));
    assert_eq!(store.get(dead).await.unwrap().unwrap().state, State::Dead);
    assert_eq!(
        store.get(delivered).await.unwrap().unwrap().state,
        State::Delivered
    );
    let after = store.summary().await.unwrap();
    assert_eq!(
        after.total.queued,
        before.total.queued + before.total.delivering
    );
    assert_eq!(after.total.bytes, before.total.bytes);

    // The interrupted delivery is due at once; the failed one keeps its backoff.
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![leased]);
    let next = store.append("r", request(5, b"5")).await.unwrap();
    assert!(next > delivered, "new ids sort after the old ones");
    store.close().await.unwrap();
}

/// Writes `bytes` as the record of `id` in `table` of the closed store in `dir`.
fn damage(dir: &std::path::Path, table: &str, id: MessageId, bytes: &[u8]) {
    let file = dir.join(rampart_outbox::embedded::FILE_NAME);
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let definition: redb::TableDefinition<'_, u128, &[u8]> = redb::TableDefinition::new(table);
        let mut table = txn.open_table(definition).unwrap();
        table.insert(id.as_u128(), bytes).unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_request_is_dead_lettered_and_does_not_block_its_queue() {
    let dir = TempDir::new("unreadable");
    let clock = clock();
    let store = open(dir.path(), &clock, Limits::default()).await;
    let bad = store.append("r", request(1, b"1")).await.unwrap();
    let good = store.append("r", request(2, b"2")).await.unwrap();
    store.close().await.unwrap();

    // Damage the first request's record behind the store's back.
    damage(dir.path(), "messages", bad, &[1u8, b'M', 0xff]);

    let store = open(dir.path(), &clock, Limits::default()).await;
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![good]);
    let status = store.get(bad).await.unwrap().unwrap();
    assert_eq!(status.state, State::Dead);
    let why = status.last_error.unwrap();
    assert!(why.contains("unreadable"), "{why}");
    store.close().await.unwrap();
}

/// Damages, in the closed store in `dir`, the table page holding `marker`, as a bad disk
/// sector would: two of its offsets say 65,535, past the page's end.
fn damage_page_of(dir: &std::path::Path, marker: &[u8]) {
    const PAGE: usize = 4096;
    let file = dir.join(rampart_outbox::embedded::FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the marker is stored");
    let page = at / PAGE * PAGE;
    bytes[page + 8..page + 12].copy_from_slice(&[0xff, 0xff, 0, 0]);
    std::fs::write(&file, bytes).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_damaged_page_of_requests_dead_letters_those_it_held_and_the_store_serves_on() {
    let dir = TempDir::new("damaged-page");
    let clock = clock();
    let store = open(dir.path(), &clock, Limits::default()).await;
    let mut stored = Vec::new();
    for n in 0..60 {
        let body = format!("request-{n:04}-{}", "z".repeat(100));
        stored.push(
            store
                .append("r", request(n, body.as_bytes()))
                .await
                .unwrap(),
        );
    }
    store.close().await.unwrap();
    damage_page_of(dir.path(), b"request-0030-");

    let store = open(dir.path(), &clock, Limits::default()).await;
    let taken = ids(&store.take("r", 100, NOW).await.unwrap());
    let dead: Vec<_> = stored.iter().filter(|id| !taken.contains(id)).collect();
    assert!(!dead.is_empty(), "the damage reached no request");
    assert!(
        taken.len() >= 50,
        "the others were handed out: {} of 60",
        taken.len()
    );
    for id in dead {
        let status = store.get(*id).await.unwrap().unwrap();
        assert_eq!(status.state, State::Dead, "{id}");
        let why = status.last_error.unwrap();
        assert!(why.contains("unreadable"), "{why}");
        // Redriven, it is found as unreadable again, not read again.
        store.redrive(*id).await.unwrap();
    }
    assert!(store.take("r", 100, NOW).await.unwrap().is_empty());
    // The store serves on: new messages are stored and handed out.
    let next = store.append("r", request(99, b"99")).await.unwrap();
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![next]);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_status_leaves_its_message_aside_and_the_store_opens() {
    let dir = TempDir::new("unreadable-status");
    let clock = clock();
    let store = open(dir.path(), &clock, Limits::default()).await;
    let bad = store.append("r", request(1, b"1")).await.unwrap();
    let good = store.append("r", request(2, b"2")).await.unwrap();
    store.close().await.unwrap();

    // Damage the first message's status record behind the store's back.
    damage(dir.path(), "statuses", bad, &[0xff, 0xff, 0xff]);

    let store = open(dir.path(), &clock, Limits::default()).await;
    assert_eq!(ids(&store.take("r", 10, NOW).await.unwrap()), vec![good]);
    // Asked for by its id, the damaged one is an error of its own: the store serves on, and
    // nothing else asked beside it fails.
    let (asked, redriven, appended) = tokio::join!(
        store.get(bad),
        store.redrive(bad),
        store.append("r", request(4, b"4"))
    );
    assert!(
        matches!(asked, Err(rampart_outbox::Error::Corrupt(_))),
        "{asked:?}"
    );
    assert!(
        matches!(redriven, Err(rampart_outbox::Error::Corrupt(_))),
        "{redriven:?}"
    );
    let appended = appended.unwrap();
    assert!(store.summary().await.is_ok());
    assert_eq!(
        store.get(good).await.unwrap().unwrap().state,
        State::Delivering
    );
    // New messages sort after every stored one, the damaged one included.
    let next = store.append("r", request(3, b"3")).await.unwrap();
    assert!(next > bad && next > good && next > appended);
    store.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_summary_counts_per_route_and_state() {
    let dir = TempDir::new("summary");
    let store = open(dir.path(), &clock(), Limits::default()).await;
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

    // An expired lease counts as queued again.
    advance(Duration::from_secs(30)).await;
    assert_eq!(store.summary().await.unwrap().routes["a"].queued, 2);
    store.close().await.unwrap();
}
