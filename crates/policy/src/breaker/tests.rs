use crate::test_util::next_request;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{advance, sleep};
use tower::{Service, ServiceExt};
use tower_test::mock;

use super::error::BreakerOpen;
use super::*;
use crate::clock::TokioClock;
use crate::error::{Rejected, is_caused_by};
use crate::rng::Rng;

const SEC: Duration = Duration::from_secs(1);

/// A breaker on tokio's (paused) clock with no jitter.
fn builder() -> Builder {
    CircuitBreaker::builder()
        .clock(Arc::new(TokioClock))
        .rng(Rng::fixed(0.0))
        .open_for(SEC)
        .open_for_max(10 * SEC)
}

fn fail(b: &CircuitBreaker) {
    b.try_acquire().unwrap().record(Outcome::Failure);
}

fn succeed(b: &CircuitBreaker) {
    b.try_acquire().unwrap().record(Outcome::Success);
}

fn transitions(b: &CircuitBreaker) -> Arc<Mutex<Vec<(State, State, Reason)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    b.subscribe(move |t| sink.lock().unwrap().push((t.from, t.to, t.reason)));
    seen
}

#[tokio::test(start_paused = true)]
async fn trips_after_consecutive_failures_and_a_success_resets_the_run() {
    let b = builder()
        .consecutive_failures(3)
        .min_calls(1000)
        .build()
        .unwrap();
    fail(&b);
    fail(&b);
    succeed(&b);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.state(), State::Open);

    let mut ran = false;
    let refused = b
        .call(|| async {
            ran = true;
            Ok::<_, ()>(())
        })
        .await;
    assert!(matches!(
        refused,
        Err(Error::Rejected(Rejected::BreakerOpen(_)))
    ));
    assert!(!ran, "an open breaker must not run the call");
}

#[tokio::test(start_paused = true)]
async fn trips_on_failure_rate_only_from_the_minimum_volume() {
    let b = builder()
        .consecutive_failures(0)
        .failure_rate(0.5)
        .min_calls(10)
        .build()
        .unwrap();
    let seen = transitions(&b);
    for _ in 0..5 {
        succeed(&b);
    }
    for _ in 0..4 {
        fail(&b);
    }
    // 4 of 9 failed, and 9 calls are below the minimum anyway.
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].2,
        Reason::FailureRate {
            rate: 0.5,
            calls: 10
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_success_that_brings_the_window_to_the_minimum_volume_judges_its_rate() {
    // The state after `failures` failures and then successes up to 4 calls, the minimum.
    let after = |failures: usize| {
        let b = builder()
            .consecutive_failures(0)
            .failure_rate(0.5)
            .min_calls(4)
            .build()
            .unwrap();
        (0..failures).for_each(|_| fail(&b));
        (failures..4).for_each(|_| succeed(&b));
        b.state()
    };
    // 3 of 4 failed, over the rate: the success judges the window, as resilience4j judges after
    // every call. 1 of 4 is under it.
    assert_eq!(after(3), State::Open);
    assert_eq!(after(1), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_window_whose_older_successes_left_it_is_judged_by_the_next_success() {
    // The state after 10 successes, 6 failures 5 s later, the successes aged out 6 s after
    // that, and then `successes` more.
    let after = |successes: usize| async move {
        let b = builder()
            .consecutive_failures(0)
            .failure_rate(0.5)
            .min_calls(10)
            .window(10 * SEC)
            .build()
            .unwrap();
        (0..10).for_each(|_| succeed(&b));
        advance(5 * SEC).await;
        // 6 of 16: under the rate.
        (0..6).for_each(|_| fail(&b));
        advance(6 * SEC).await;
        (0..successes).for_each(|_| succeed(&b));
        b.state()
    };
    // 6 of 10 once the old successes are gone: over the rate, judged by the success that
    // brings the window back to `min_calls`, as resilience4j judges after every call.
    assert_eq!(after(4).await, State::Open);
    // 6 of 9: too few calls to judge.
    assert_eq!(after(3).await, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn below_the_minimum_volume_a_high_rate_does_not_trip() {
    let b = builder()
        .consecutive_failures(0)
        .min_calls(5)
        .build()
        .unwrap();
    for _ in 0..4 {
        fail(&b);
    }
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_age_out_of_the_sliding_window() {
    let b = builder()
        .consecutive_failures(0)
        .failure_rate(0.5)
        .min_calls(4)
        .window(10 * SEC)
        .build()
        .unwrap();
    for _ in 0..3 {
        fail(&b);
    }
    advance(11 * SEC).await;
    for _ in 0..3 {
        succeed(&b);
    }
    // With the three old failures this would be 4 of 7; in the window it is 1 of 4.
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 4);
    assert_eq!(b.snapshot().failures, 1);
}

#[tokio::test(start_paused = true)]
async fn trips_on_slow_call_rate() {
    let b = builder()
        .consecutive_failures(0)
        .slow_call(Duration::from_millis(100))
        .slow_call_rate(0.5)
        .min_calls(4)
        .build()
        .unwrap();
    let seen = transitions(&b);
    for _ in 0..2 {
        b.call(|| async { Ok::<_, ()>(()) }).await.unwrap();
    }
    b.call(|| async {
        sleep(Duration::from_millis(150)).await;
        Ok::<_, ()>(())
    })
    .await
    .unwrap();
    assert_eq!(b.state(), State::Closed);
    b.call(|| async {
        sleep(Duration::from_millis(101)).await;
        Ok::<_, ()>(())
    })
    .await
    .unwrap();
    assert_eq!(b.state(), State::Open);
    assert!(matches!(
        seen.lock().unwrap()[0].2,
        Reason::SlowCallRate { calls: 4, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_call_is_timed_at_its_answer_whenever_its_outcome_is_recorded() {
    let b = builder()
        .consecutive_failures(0)
        .slow_call(Duration::from_millis(100))
        .slow_call_rate(0.9)
        .min_calls(10)
        .window(600 * SEC)
        .build()
        .unwrap();
    // Answered in good time, then a body that streams for a minute: a success.
    let mut permit = b.try_acquire_owned().unwrap();
    advance(Duration::from_millis(50)).await;
    permit.answered();
    advance(60 * SEC).await;
    permit.answered();
    permit.record(Outcome::Success);
    // Answered late: slow, however soon the rest follows.
    let mut permit = b.try_acquire_owned().unwrap();
    advance(Duration::from_millis(150)).await;
    permit.answered();
    permit.record(Outcome::Success);
    // Cut short a minute after an answer in good time: nothing. Cut after a late one: slow.
    let mut permit = b.try_acquire_owned().unwrap();
    advance(Duration::from_millis(50)).await;
    permit.answered();
    advance(60 * SEC).await;
    permit.cut_short();
    let mut permit = b.try_acquire_owned().unwrap();
    advance(Duration::from_millis(150)).await;
    permit.answered();
    permit.cut_short();
    let s = b.snapshot();
    assert_eq!((s.calls, s.slow_calls), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn slow_calls_are_counted_but_do_not_trip_when_the_rate_trigger_is_off() {
    let b = builder()
        .slow_call(Duration::from_millis(100))
        .min_calls(1)
        .build()
        .unwrap();
    for _ in 0..10 {
        b.call(|| async {
            sleep(Duration::from_millis(200)).await;
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
    }
    assert_eq!(b.state(), State::Closed);
    let s = b.snapshot();
    assert_eq!((s.calls, s.slow_calls, s.slow_call_rate), (10, 10, 1.0));
}

#[tokio::test(start_paused = true)]
async fn open_refuses_until_the_period_ends_then_admits_exactly_the_probes() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(2)
        .build()
        .unwrap();
    fail(&b);
    let open = b.try_acquire().unwrap_err();
    assert_eq!(open.retry_in(), Some(SEC));

    advance(SEC - Duration::from_millis(1)).await;
    assert!(b.try_acquire().is_err());
    advance(Duration::from_millis(1)).await;

    let p1 = b.try_acquire().expect("first probe");
    assert_eq!(b.state(), State::HalfOpen);
    let p2 = b.try_acquire().expect("second probe");
    assert!(p1.is_probe() && p2.is_probe());
    assert_eq!(b.try_acquire().unwrap_err().retry_in(), None);
    p1.record(Outcome::Success);
    assert_eq!(b.state(), State::HalfOpen, "one probe of two is not enough");
    p2.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    assert!(!b.try_acquire().unwrap().is_probe());
    // Closed afresh: the failure that tripped it is forgotten.
    assert_eq!(b.snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn would_admit_answers_as_try_acquire_would_without_taking_anything() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .build()
        .unwrap();
    assert!(b.would_admit());
    fail(&b);
    assert!(!b.would_admit());
    let rejected = b.snapshot().rejected;
    advance(SEC).await;
    // The period is over: the look says yes, and leaves the probe to whoever asks.
    assert!(b.would_admit());
    assert!(b.would_admit());
    assert_eq!(b.state(), State::Open);
    let probe = b.try_acquire().expect("the probe is still there");
    assert!(!b.would_admit(), "the only probe is taken");
    drop(probe);
    assert!(b.would_admit());
    b.force_open();
    assert!(!b.would_admit());
    b.force_closed();
    assert!(b.would_admit());
    assert_eq!(b.snapshot().rejected, rejected, "looking refuses nothing");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_for(SEC)
        .open_for_max(3 * SEC)
        .build()
        .unwrap();
    fail(&b);
    for expected in [2 * SEC, 3 * SEC, 3 * SEC] {
        advance(b.snapshot().open_remaining.unwrap()).await;
        fail(&b); // the probe
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.snapshot().open_remaining, Some(expected));
    }
    // A successful probe closes it; a calm as long as the cap resets the backoff.
    advance(3 * SEC).await;
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
    advance(3 * SEC).await;
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(SEC));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_fails_again_soon_after_closing_is_kept_out_longer_each_time() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_for(SEC)
        .open_for_max(8 * SEC)
        .build()
        .unwrap();
    // It flaps: each time it is back, it fails again at once.
    for expected in [SEC, 2 * SEC, 4 * SEC, 8 * SEC, 8 * SEC] {
        fail(&b);
        assert_eq!(b.snapshot().open_remaining, Some(expected));
        advance(expected).await;
        succeed(&b); // the probe
        assert_eq!(b.state(), State::Closed);
    }
    // Calm for the cap's length: the next trip starts over.
    advance(8 * SEC).await;
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(SEC));
    // Released by an operator: so does it.
    b.force_closed();
    b.release();
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(SEC));
}

#[tokio::test(start_paused = true)]
async fn the_ejection_is_timed_from_the_trip_through_half_open_to_the_close() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .build()
        .unwrap();
    assert_eq!(b.ejected_for(), None);
    fail(&b);
    assert_eq!(b.ejected_for(), Some(Duration::ZERO));
    advance(SEC).await;
    fail(&b); // a failed probe: the same ejection goes on
    advance(SEC).await;
    assert_eq!(b.ejected_for(), Some(2 * SEC));
    advance(SEC).await;
    succeed(&b);
    assert_eq!(b.ejected_for(), None);
    b.force_open();
    assert_eq!(b.ejected_for(), None, "forced is no ejection");
}

#[tokio::test(start_paused = true)]
async fn the_open_period_is_jittered_downwards() {
    let b = builder()
        .consecutive_failures(1)
        .open_jitter(0.2)
        .rng(Rng::fixed(0.5))
        .build()
        .unwrap();
    fail(&b);
    assert_eq!(
        b.snapshot().open_remaining,
        Some(Duration::from_millis(900))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_place_to_another_call() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .build()
        .unwrap();
    fail(&b);
    advance(SEC).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(probe);
    let probe = b.try_acquire().expect("the place is free again");
    probe.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_records_nothing() {
    let b = builder().consecutive_failures(1).build().unwrap();
    let call = b.call(|| async {
        sleep(SEC).await;
        Err::<(), _>(())
    });
    // Dropped before it finishes: neither a failure nor a success.
    let _ = tokio::time::timeout(Duration::from_millis(10), call).await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn probes_unanswered_past_the_half_open_max_wait_open_the_breaker_again() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .half_open_max_wait(2 * SEC)
        .build()
        .unwrap();
    let seen = transitions(&b);
    fail(&b);
    advance(SEC).await;
    // The probe hangs: nothing below it bounds it.
    let probe = b.try_acquire().unwrap();
    advance(2 * SEC - Duration::from_millis(1)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), State::HalfOpen);
    advance(Duration::from_millis(1)).await;
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        refused.retry_in(),
        Some(2 * SEC),
        "backed off as after a failed probe"
    );
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&(State::HalfOpen, State::Open, Reason::ProbesTimedOut))
    );

    // Its late answer counts for nothing; the next period's probe closes it.
    probe.record(Outcome::Success);
    assert_eq!(b.state(), State::Open);
    advance(2 * SEC).await;
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_look_finds_overdue_probes_and_opens_the_breaker_again() {
    // A balancer looks with `would_admit` and never asks a breaker it sees refusing.
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .half_open_max_wait(2 * SEC)
        .build()
        .unwrap();
    fail(&b);
    advance(SEC).await;
    let _probe = b.try_acquire().unwrap();
    assert!(!b.would_admit());
    advance(2 * SEC).await;
    assert!(!b.would_admit());
    assert_eq!(b.state(), State::Open);
    // Open for twice as long, then probes again.
    advance(2 * SEC).await;
    assert!(b.would_admit());
}

#[tokio::test(start_paused = true)]
async fn without_a_half_open_max_wait_a_hung_probe_keeps_the_breaker_half_open() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .build()
        .unwrap();
    fail(&b);
    advance(SEC).await;
    let probe = b.try_acquire().unwrap();
    advance(3600 * SEC).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), State::HalfOpen);
    // Dropped, it gives its place to another call.
    drop(probe);
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_late_probe_of_an_earlier_period_cannot_close_a_later_one() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(2)
        .build()
        .unwrap();
    fail(&b);
    advance(SEC).await;
    let late = b.try_acquire().unwrap();
    fail(&b); // the second probe fails: open again, for 2 s
    advance(2 * SEC).await;
    let fresh = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    late.record(Outcome::Success);
    fresh.record(Outcome::Success);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "only one probe of this period succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_probe_failure_of_an_earlier_period_cannot_reopen_a_later_one() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(2)
        .build()
        .unwrap();
    fail(&b);
    advance(SEC).await;
    let late = b.try_acquire().unwrap();
    fail(&b); // the other probe fails: open again, for 2 s
    advance(2 * SEC).await;
    let fresh = b.try_acquire().unwrap();
    late.record(Outcome::Failure);
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "a stale probe's failure must not reopen"
    );
    fresh.record(Outcome::Success);
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
    // Its backoff was not doubled by the stale failure either: a trip at once is the third,
    // open for 4 s, not 8.
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(4 * SEC));
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_before_a_trip_do_not_reopen_the_breaker_once_it_has_closed() {
    let b = builder()
        .consecutive_failures(2)
        .half_open_probes(1)
        .build()
        .unwrap();
    // Two calls hang while two others fail fast and trip the breaker.
    let hung = [b.try_acquire().unwrap(), b.try_acquire().unwrap()];
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    advance(SEC).await;
    succeed(&b);
    assert_eq!(b.state(), State::Closed);
    // Their failures tell of the callee before it recovered, not of the callee now.
    for permit in hung {
        permit.record(Outcome::Failure);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 0);
    assert_eq!(b.snapshot().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_period_of_any_length_is_taken_without_panicking() {
    let b = builder()
        .consecutive_failures(1)
        .open_for(Duration::MAX)
        .open_for_max(Duration::MAX)
        .open_jitter(0.5)
        .rng(Rng::fixed(0.9))
        .build()
        .unwrap();
    // A call admitted before the trip, failing after it, meets the open breaker too.
    let late = b.try_acquire().unwrap();
    fail(&b);
    late.record(Outcome::Failure);
    assert_eq!(b.state(), State::Open);
    assert!(b.snapshot().open_remaining.unwrap() > Duration::from_secs(100 * 365 * 24 * 3600));
}

#[test]
fn the_closed_path_takes_no_lock() {
    let b = CircuitBreaker::new();
    // Hold the state machine's lock: a closed call that needed it would wait forever.
    let machine = b.shared.lock();
    let (done, finished) = std::sync::mpsc::channel();
    let b2 = b.clone();
    std::thread::spawn(move || {
        for _ in 0..1000 {
            b2.call_sync(|| Ok::<_, ()>(())).unwrap();
        }
        done.send(()).unwrap();
    });
    // A guard against a hang, not a timing assertion: the calls take microseconds.
    let result = finished.recv_timeout(Duration::from_secs(30));
    drop(machine);
    assert!(
        result.is_ok(),
        "closed calls blocked on the state machine's lock"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_states_override_and_release_returns_to_a_fresh_closed_state() {
    let b = builder().consecutive_failures(2).build().unwrap();
    let seen = transitions(&b);
    b.force_open();
    assert!(b.try_acquire().is_err());
    advance(100 * SEC).await;
    assert!(b.try_acquire().is_err(), "forced open does not time out");

    b.force_closed();
    for _ in 0..10 {
        fail(&b);
    }
    assert_eq!(b.state(), State::ForcedClosed, "forced closed never trips");
    assert_eq!(b.snapshot().failures, 10, "but still counts");

    b.release();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failures, 0);
    fail(&b);
    assert_eq!(
        b.state(),
        State::Closed,
        "the run of failures starts afresh"
    );
    b.release(); // not forced: nothing happens

    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![
            (State::Closed, State::ForcedOpen, Reason::ForcedOpen),
            (State::ForcedOpen, State::ForcedClosed, Reason::ForcedClosed),
            (State::ForcedClosed, State::Closed, Reason::Released),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn release_ends_an_ejection_too() {
    let b = builder()
        .consecutive_failures(1)
        .open_for(SEC)
        .open_for_max(8 * SEC)
        .build()
        .unwrap();
    let seen = transitions(&b);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    b.release();
    assert_eq!(b.state(), State::Closed);
    assert!(b.try_acquire().is_ok());
    // Half-open, likewise; and the next trip opens for the first period again.
    fail(&b);
    advance(SEC).await;
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    b.release();
    drop(probe);
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(SEC));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .filter(|(_, to, reason)| *to == State::Closed && *reason == Reason::Released)
            .count(),
        2
    );
}

/// A breaker of one probe whose probe failed: open for 16 s, twice its first period.
async fn reopened_for_16_s() -> CircuitBreaker {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_for(8 * SEC)
        .open_for_max(64 * SEC)
        .build()
        .unwrap();
    fail(&b);
    advance(8 * SEC).await;
    fail(&b);
    assert_eq!(b.snapshot().open_remaining, Some(16 * SEC));
    b
}

#[tokio::test(start_paused = true)]
async fn an_open_period_ended_early_lets_the_next_call_probe() {
    let b = reopened_for_16_s().await;
    advance(SEC).await;
    assert!(b.try_acquire().is_err());

    b.end_open_period();
    assert!(b.would_admit());
    let probe = b.try_acquire().expect("the next call is a probe");
    assert_eq!(b.state(), State::HalfOpen);
    assert!(b.try_acquire().is_err(), "one probe, as configured");
    probe.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);

    // Nothing for any other state: a closed breaker stays closed, a forced one forced.
    b.end_open_period();
    assert_eq!(b.state(), State::Closed);
    b.force_open();
    b.end_open_period();
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), State::ForcedOpen);
}

#[tokio::test(start_paused = true)]
async fn an_open_period_shortened_ends_no_later_than_asked() {
    let b = reopened_for_16_s().await;
    b.shorten_open_period(4 * SEC);
    assert_eq!(b.snapshot().open_remaining, Some(4 * SEC));
    // Never longer: a period that ends sooner stands.
    b.shorten_open_period(10 * SEC);
    assert_eq!(b.snapshot().open_remaining, Some(4 * SEC));
    advance(3 * SEC).await;
    assert!(b.try_acquire().is_err());
    advance(SEC).await;
    let probe = b.try_acquire().expect("the period is over");
    probe.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    // Nothing for any other state.
    b.shorten_open_period(Duration::ZERO);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_open_period_shortened_keeps_its_jitter() {
    // Jitter 0.5 and draws of 0.5: the period is cut by a quarter, and so is the shortening.
    let jittered = |draw: f64| {
        let b = builder()
            .consecutive_failures(1)
            .open_for(8 * SEC)
            .open_for_max(64 * SEC)
            .open_jitter(0.5)
            .rng(Rng::fixed(draw))
            .build()
            .unwrap();
        fail(&b);
        b
    };
    let b = jittered(0.5);
    assert_eq!(b.snapshot().open_remaining, Some(6 * SEC));
    b.shorten_open_period(4 * SEC);
    assert_eq!(b.snapshot().open_remaining, Some(3 * SEC));
    // Asked again and again, as a pool does at each pick, it ends no sooner.
    advance(SEC).await;
    b.shorten_open_period(4 * SEC);
    assert_eq!(b.snapshot().open_remaining, Some(2 * SEC));
    // Breakers drawn otherwise, shortened together, probe apart.
    let other = jittered(0.0);
    other.shorten_open_period(4 * SEC);
    assert_eq!(other.snapshot().open_remaining, Some(4 * SEC));
}

#[test]
fn reasons_read_as_words() {
    let said = [
        Reason::ConsecutiveFailures(1),
        Reason::ConsecutiveFailures(5),
        Reason::FailureRate {
            rate: 0.5,
            calls: 20,
        },
        Reason::SlowCallRate {
            rate: 1.0,
            calls: 1,
        },
        Reason::ProbesTimedOut,
    ]
    .map(|reason| reason.to_string());
    assert_eq!(
        said,
        [
            "a failure",
            "5 failures in a row",
            "failure rate 50% over 20 calls",
            "slow-call rate 100% over 1 call",
            "half-open probes not answered in time",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn subscribers_are_told_of_every_transition_in_order() {
    let seen_at_build = Arc::new(Mutex::new(0));
    let counter = seen_at_build.clone();
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .on_transition(move |_| *counter.lock().unwrap() += 1)
        .build()
        .unwrap();
    let seen = transitions(&b);
    fail(&b);
    advance(SEC).await;
    fail(&b);
    advance(2 * SEC).await;
    succeed(&b);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (State::Closed, State::Open, Reason::ConsecutiveFailures(1)),
            (State::Open, State::HalfOpen, Reason::OpenElapsed),
            (State::HalfOpen, State::Open, Reason::ProbeFailed),
            (State::Open, State::HalfOpen, Reason::OpenElapsed),
            (State::HalfOpen, State::Closed, Reason::ProbesSucceeded),
        ]
    );
    assert_eq!(*seen_at_build.lock().unwrap(), 5);
}

#[test]
fn transitions_made_on_two_threads_at_once_are_told_in_the_order_they_happened() {
    // A listener keeping a gauge of the state: it must end on the state the breaker is in.
    let gauge = Arc::new(Mutex::new(State::Closed));
    let (entered, in_listener) = std::sync::mpsc::channel::<()>();
    let (forced, forced_done) = std::sync::mpsc::channel::<()>();
    let forced_done = Mutex::new(forced_done);
    let b = Arc::new(
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .on_transition({
                let gauge = gauge.clone();
                move |t| {
                    if t.to == State::Open {
                        // Held while the operator forces the breaker closed on another thread.
                        entered.send(()).unwrap();
                        forced_done.lock().unwrap().recv().unwrap();
                    }
                    *gauge.lock().unwrap() = t.to;
                }
            })
            .build()
            .unwrap(),
    );
    let operator = std::thread::spawn({
        let b = b.clone();
        move || {
            in_listener.recv().unwrap();
            b.force_closed();
            forced.send(()).unwrap();
        }
    });
    // Trips, and tells the trip on this thread while the operator acts.
    fail(&b);
    operator.join().unwrap();
    assert_eq!(b.state(), State::ForcedClosed);
    assert_eq!(*gauge.lock().unwrap(), State::ForcedClosed);
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_counts_calls_rejections_and_openings() {
    let b = builder()
        .consecutive_failures(3)
        .min_calls(1000)
        .build()
        .unwrap();
    succeed(&b);
    for _ in 0..3 {
        fail(&b);
    }
    for _ in 0..4 {
        assert!(b.try_acquire().is_err());
    }
    let s = b.snapshot();
    assert_eq!(s.state, State::Open);
    assert_eq!((s.calls, s.failures, s.failure_rate), (4, 3, 0.75));
    assert_eq!((s.rejected, s.opened), (4, 1));
    assert_eq!(s.consecutive_failures, 3);
}

#[test]
fn the_synchronous_form_works_without_a_runtime() {
    let b = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    assert_eq!(b.call_sync(|| Ok::<_, ()>(7)).unwrap(), 7);
    let _ = b.call_sync(|| Err::<(), _>("down"));
    let _ = b.call_sync(|| Err::<(), _>("down"));
    assert!(matches!(
        b.call_sync(|| Ok::<_, ()>(())),
        Err(Error::Rejected(Rejected::BreakerOpen(_)))
    ));
}

#[test]
fn settings_out_of_range_are_refused_with_the_reason() {
    let err = CircuitBreaker::builder()
        .failure_rate(1.5)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "failure_rate");
    assert!(err.to_string().contains("at most 1"), "{err}");
    let err = CircuitBreaker::builder()
        .slow_call_rate(0.5)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("slow_call"), "{err}");
    let err = CircuitBreaker::builder()
        .open_for(10 * SEC)
        .open_for_max(SEC)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "open_for_max");
    for bad in [
        CircuitBreaker::builder().half_open_probes(0).build(),
        CircuitBreaker::builder().open_for(Duration::ZERO).build(),
        CircuitBreaker::builder().window_buckets(0).build(),
        CircuitBreaker::builder().open_jitter(1.0).build(),
        CircuitBreaker::builder().failure_rate(f64::NAN).build(),
        CircuitBreaker::builder()
            .half_open_max_wait(Duration::ZERO)
            .build(),
    ] {
        assert!(bad.is_err());
    }
}

// === the tower service ===

#[tokio::test(start_paused = true)]
async fn the_service_refuses_from_the_future_and_stays_ready() {
    let b = builder().consecutive_failures(1).build().unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());

    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let call = svc.call("a");
    let (_, respond) = next_request(&mut handle).await;
    respond.send_error(std::io::Error::other("down"));
    assert!(call.await.is_err());
    assert_eq!(b.state(), State::Open);

    // Open, yet ready: readiness is the inner service's alone.
    handle.allow(1);
    tokio_test::assert_ready_ok!(svc.poll_ready());
    let err = svc.call("b").await.unwrap_err();
    assert!(is_caused_by::<BreakerOpen>(&*err));
    assert!(
        handle.poll_request().is_pending(),
        "the inner service must not see a refused request"
    );
}

#[tokio::test(start_paused = true)]
async fn the_service_classifies_responses() {
    let b = builder().consecutive_failures(2).build().unwrap();
    let layer = b
        .layer()
        .with_classify(|r: &Result<u16, BoxError>| match r {
            Ok(status) if *status >= 500 => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        });
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|status: u16| async move { Ok::<_, BoxError>(status) });
    svc.ready().await.unwrap().call(404).await.unwrap();
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_buffer_in_front_is_not_poisoned_by_a_refusal() {
    let b = builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .build()
        .unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let svc = tower::ServiceBuilder::new()
        .buffer(8)
        .layer(b.layer())
        .service_fn(move |_: ()| {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if ok {
                    Ok::<_, BoxError>("ok")
                } else {
                    Err("down".into())
                }
            }
        });
    let _ = svc.clone().oneshot(()).await;
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(is_caused_by::<BreakerOpen>(&*err), "{err}");

    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    advance(SEC).await;
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), "ok");
    assert_eq!(svc.oneshot(()).await.unwrap(), "ok");
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn two_threads_sharing_a_breaker_count_every_call() {
    let b = CircuitBreaker::builder().build().unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..50_000 {
                    b.call_sync(|| Ok::<_, ()>(())).unwrap();
                }
            });
        }
    });
    assert_eq!(b.snapshot().calls, 100_000);
}

// === against a model ===

mod model {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::ManualClock;
    use crate::rng::Rng;

    /// The breaker as the docs describe it, written plainly: every event kept with its time.
    struct Model {
        cf: u32,
        rate: f64,
        min_calls: u64,
        bucket_nanos: u64,
        buckets: u64,
        open_ms: u64,
        open_max_ms: u64,
        probes: u32,
        now: u64,
        state: ModelState,
        trips: u32,
        closed_at: Option<u64>,
    }

    #[derive(Debug)]
    enum ModelState {
        Closed { events: Vec<(u64, bool)>, run: u32 },
        Open { until: u64 },
        HalfOpen { successes: u32 },
    }

    impl Model {
        fn call(&mut self, failed: bool) -> bool {
            if let ModelState::Open { until } = self.state {
                if self.now < until {
                    return false;
                }
                self.state = ModelState::HalfOpen { successes: 0 };
            }
            match &mut self.state {
                ModelState::Closed { events, run } => {
                    events.push((self.now, failed));
                    // Judged after every call, as resilience4j judges.
                    if failed {
                        *run += 1;
                    } else {
                        *run = 0;
                    }
                    let by_run = failed && self.cf > 0 && *run >= self.cf;
                    let bucket = |ms: u64| ms * 1_000_000 / self.bucket_nanos;
                    let oldest = bucket(self.now).saturating_sub(self.buckets - 1);
                    let recent = events.iter().filter(|(t, _)| bucket(*t) >= oldest);
                    let (calls, failures) = recent.fold((0u64, 0u64), |(c, f), (_, failed)| {
                        (c + 1, f + u64::from(*failed))
                    });
                    let too_few = calls < self.min_calls.max(1);
                    let by_rate = !too_few && failures as f64 >= self.rate * calls as f64;
                    if by_run || by_rate {
                        // A calm as long as the cap since the last close starts over.
                        if self
                            .closed_at
                            .is_some_and(|at| self.now - at >= self.open_max_ms)
                        {
                            self.trips = 0;
                        }
                        self.trip();
                    }
                }
                ModelState::HalfOpen { successes } => {
                    if failed {
                        self.trip();
                    } else {
                        *successes += 1;
                        if *successes == self.probes {
                            self.closed_at = Some(self.now);
                            self.state = ModelState::Closed {
                                events: Vec::new(),
                                run: 0,
                            };
                        }
                    }
                }
                ModelState::Open { .. } => unreachable!("left above"),
            }
            true
        }

        fn trip(&mut self) {
            self.trips += 1;
            let period = (self.open_ms << (self.trips - 1).min(20)).min(self.open_max_ms);
            self.state = ModelState::Open {
                until: self.now + period,
            };
        }

        fn state(&self) -> State {
            match self.state {
                ModelState::Closed { .. } => State::Closed,
                ModelState::Open { .. } => State::Open,
                ModelState::HalfOpen { .. } => State::HalfOpen,
            }
        }
    }

    proptest! {
        /// Sequential calls (each recorded before the next) on a manual clock, against the model:
        /// the same calls are admitted and the breaker is in the same state after each step.
        #[test]
        fn behaves_like_the_model(
            cf in 0u32..4,
            rate in prop::sample::select(vec![0.25, 0.5, 1.0]),
            min_calls in 1u64..6,
            window_s in 1u64..10,
            buckets in 1u64..5,
            open_ms in 100u64..2000,
            open_factor in 1u64..4,
            probes in 1u32..3,
            steps in prop::collection::vec((0u64..1500, any::<bool>()), 1..150),
        ) {
            let clock = ManualClock::new();
            let b = CircuitBreaker::builder()
                .clock(clock.clone())
                .rng(Rng::fixed(0.0))
                .consecutive_failures(cf)
                .failure_rate(rate)
                .min_calls(min_calls)
                .window(Duration::from_secs(window_s))
                .window_buckets(buckets as u32)
                .open_for(Duration::from_millis(open_ms))
                .open_for_max(Duration::from_millis(open_ms * open_factor))
                .half_open_probes(probes)
                .build()
                .unwrap();
            let mut model = Model {
                cf,
                rate,
                min_calls,
                bucket_nanos: window_s * 1_000_000_000 / buckets,
                buckets,
                open_ms,
                open_max_ms: open_ms * open_factor,
                probes,
                now: 0,
                state: ModelState::Closed { events: Vec::new(), run: 0 },
                trips: 0,
                closed_at: None,
            };
            for (i, (gap_ms, failed)) in steps.into_iter().enumerate() {
                clock.advance(Duration::from_millis(gap_ms));
                model.now += gap_ms;
                let admitted = match b.try_acquire() {
                    Ok(permit) => {
                        permit.record(if failed { Outcome::Failure } else { Outcome::Success });
                        true
                    }
                    Err(_) => false,
                };
                prop_assert_eq!(admitted, model.call(failed), "admission at step {}", i);
                prop_assert_eq!(b.state(), model.state(), "state after step {}", i);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_owned_permit_records_like_the_borrowed_one_it_came_from() {
    let b = builder()
        .consecutive_failures(2)
        .half_open_probes(1)
        .build()
        .unwrap();
    let owned = b.own(b.try_acquire().unwrap());
    owned.record(Outcome::Failure);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    advance(SEC).await;
    // The probe's place stays taken while its owned permit lives, and is given back when it is
    // dropped unrecorded.
    let probe = b.own(b.try_acquire().unwrap());
    assert!(b.try_acquire().is_err());
    drop(probe);
    let probe = b.own(b.try_acquire().unwrap());
    probe.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}

#[test]
#[should_panic(expected = "through the breaker that gave it")]
fn another_breakers_permit_cannot_be_owned() {
    let (a, b) = (builder().build().unwrap(), builder().build().unwrap());
    let _ = b.own(a.try_acquire().unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_call_failing_once_the_callers_deadline_has_passed_is_not_recorded() {
    use crate::timeout::{Deadline, Timeout, TimeoutLayer};

    let b = builder().consecutive_failures(1).build().unwrap();
    let timeout = Timeout::new(SEC);
    // A healthy callee answering in 100 ms, called by callers with 50 ms left.
    let healthy = || async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>("answer")
    };
    for _ in 0..3 {
        let result = Deadline::after(Duration::from_millis(50))
            .scope(b.call(|| timeout.call(healthy)))
            .await;
        assert!(
            matches!(
                result,
                Err(Error::Inner(Error::Rejected(Rejected::DeadlineExceeded(_))))
            ),
            "{result:?}"
        );
    }
    let mut service = tower::ServiceBuilder::new()
        .layer(b.layer())
        .layer(TimeoutLayer::new(timeout))
        .service_fn(|()| healthy());
    for _ in 0..3 {
        let err = Deadline::after(Duration::from_millis(50))
            .scope(async { service.ready().await.unwrap().call(()).await })
            .await
            .unwrap_err();
        assert!(
            is_caused_by::<crate::timeout::error::DeadlineExceeded>(&*err),
            "{err}"
        );
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 0, "six calls, none of them recorded");

    // A failure with time left is the callee's.
    let _ = Deadline::after(SEC)
        .scope(b.call(|| async { Err::<(), _>("refused") }))
        .await;
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_layer_below_the_breaker_opens_nothing_either() {
    use crate::timeout::{Deadline, DeadlineLayer};

    // The request's deadline is enforced below the breaker, where the breaker cannot read it:
    // its refusal is how the breaker learns the call was cut short.
    let b = builder().consecutive_failures(2).build().unwrap();
    let mut service = tower::ServiceBuilder::new()
        .layer(b.layer())
        .layer(DeadlineLayer::new())
        .service_fn(|_: Deadline| async {
            sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>("answer")
        });
    for _ in 0..3 {
        let hurried = Deadline::after(Duration::from_millis(50));
        let err = service
            .ready()
            .await
            .unwrap()
            .call(hurried)
            .await
            .unwrap_err();
        assert!(
            is_caused_by::<crate::timeout::error::DeadlineExceeded>(&*err),
            "{err}"
        );
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_limit_shedding_below_opens_nothing() {
    use crate::adaptive::{AdaptiveLimit, Aimd};

    // A limit of one below the breaker sheds every call past the first while it is in flight:
    // the callee, never called for those, is not failing.
    let b = builder().consecutive_failures(2).build().unwrap();
    let limit = AdaptiveLimit::new(
        Aimd::builder()
            .initial_limit(1)
            .min_limit(1)
            .build()
            .unwrap(),
    );
    let service = tower::ServiceBuilder::new()
        .layer(b.layer())
        .layer(limit.layer())
        .service_fn(|_: ()| async {
            sleep(SEC).await;
            Ok::<_, std::io::Error>(())
        });
    let first = tokio::spawn(service.clone().oneshot(()));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        let err = service.clone().oneshot(()).await.unwrap_err();
        assert!(
            is_caused_by::<crate::adaptive::LimitExceeded>(&*err),
            "{err}"
        );
    }
    first.await.unwrap().unwrap();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_wait_in_a_queue_below_is_no_slow_call() {
    use crate::bulkhead::{Bulkhead, error::BulkheadFull};

    // A bulkhead below the breaker, its one place held: a call waits out its 2 s in the queue
    // and is refused, past the breaker's 1 s slow-call threshold. The callee was never called.
    let b = builder()
        .slow_call(SEC)
        .slow_call_rate(0.5)
        .min_calls(1)
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .max_wait_queue(1)
        .max_wait(2 * SEC)
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(b.layer())
        .layer(bulkhead.layer())
        .service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) });
    let _held = bulkhead.try_acquire().unwrap();
    let err = service.oneshot(()).await.unwrap_err();
    assert!(is_caused_by::<BulkheadFull>(&*err), "{err}");
    let snapshot = b.snapshot();
    assert_eq!((snapshot.calls, snapshot.slow_calls), (0, 0));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_deep_in_the_callees_error_is_the_callees_failure() {
    // The callee failed because its own dependency's breaker is open: a failure of the callee,
    // not a refusal of a layer around it.
    #[derive(Debug, thiserror::Error)]
    #[error("the catalogue is unavailable")]
    struct Unavailable(#[source] Wrapped);
    #[derive(Debug, thiserror::Error)]
    #[error("lookup failed")]
    struct Wrapped(#[source] BreakerOpen);

    let b = builder().consecutive_failures(1).build().unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(b.layer())
        .service_fn(|_: ()| async { Err::<(), _>(Unavailable(Wrapped(BreakerOpen::new(None)))) });
    let _ = service.oneshot(()).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_listener_may_subscribe_another() {
    let b = builder().consecutive_failures(1).build().unwrap();
    let told = Arc::new(Mutex::new(0));
    let inner = b.clone();
    let counter = told.clone();
    b.subscribe(move |_| {
        let counter = counter.clone();
        inner.subscribe(move |_| *counter.lock().unwrap() += 1);
    });
    fail(&b); // opens: the first listener subscribes a second
    b.release(); // closes: both are told
    assert_eq!(*told.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_its_caller_gave_up_on_past_the_slow_threshold_is_a_slow_call() {
    use crate::timeout::{Deadline, Timeout};

    // Failures alone (two of four) never open it: only the slow calls can.
    let b = builder()
        .consecutive_failures(3)
        .failure_rate(0.9)
        .slow_call(Duration::from_millis(100))
        .slow_call_rate(0.5)
        .min_calls(4)
        .build()
        .unwrap();
    let timeout = Timeout::new(10 * SEC);
    let hung = || async {
        sleep(3600 * SEC).await;
        Ok::<_, std::io::Error>("answer")
    };
    let cut = |left: u64| {
        let call = b.call(|| timeout.call(hung));
        Deadline::after(Duration::from_millis(left)).scope(call)
    };
    // Callers in a hurry, cut before the threshold: nothing is learnt.
    for _ in 0..4 {
        cut(50).await.unwrap_err();
    }
    assert_eq!(b.snapshot().calls, 0);
    // Callers that waited past it: slow calls, though none ever answered; the breaker opens
    // when they make half of the window.
    let failure = || async { Err::<&str, _>(std::io::Error::other("refused")) };
    b.call(failure).await.unwrap_err();
    b.call(failure).await.unwrap_err();
    for _ in 0..2 {
        cut(150).await.unwrap_err();
    }
    assert_eq!(b.state(), State::Open, "{:?}", b.snapshot());
    assert_eq!(b.snapshot().slow_calls, 2);

    // A probe cut past the threshold fails: open again (released, it would leave the breaker
    // half-open).
    sleep(SEC).await;
    cut(150).await.unwrap_err();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_cut_call_is_nothing_while_slow_calls_do_not_trip() {
    use crate::timeout::{Deadline, Timeout};

    // A slow-call threshold for the metrics only: a call cut past it is not a "slow success"
    // that could close a half-open breaker.
    let b = builder()
        .consecutive_failures(1)
        .slow_call(Duration::from_millis(100))
        .half_open_probes(1)
        .build()
        .unwrap();
    b.call(|| async { Err::<(), _>("refused") })
        .await
        .unwrap_err();
    sleep(SEC).await;
    let timeout = Timeout::new(10 * SEC);
    Deadline::after(Duration::from_millis(150))
        .scope(b.call(|| {
            timeout.call(|| async {
                sleep(3600 * SEC).await;
                Ok::<_, std::io::Error>(())
            })
        }))
        .await
        .unwrap_err();
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "the probe's place is free again"
    );
    b.call(|| async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(b.state(), State::Closed);
}
