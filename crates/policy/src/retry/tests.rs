use crate::test_util::next_request;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_test::mock;

use super::*;
use crate::BoxError;
use crate::clock::{ManualClock, TokioClock};
use crate::rng::Rng;
use crate::timeout::Deadline;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Backoff of 100ms doubling up to 1s; `Rng::fixed(0.5)` sleeps half of each cap.
fn backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(ms(100), ms(1000))
        .unwrap()
        .with_rng(Rng::fixed(0.5))
}

fn retry(attempts: u32) -> Retry {
    Retry::new(attempts, backoff()).unwrap()
}

/// A budget that never allows a retry.
fn empty_budget() -> Budget {
    Budget::new(Duration::from_secs(10), 0.0, 0).unwrap()
}

/// The times at which a call made its attempts, each failing with its attempt number until
/// `succeed_at`.
struct Script {
    starts: RefCell<Vec<Instant>>,
    succeed_at: usize,
}

impl Script {
    fn failing() -> Script {
        Script::succeeding_at(usize::MAX)
    }

    fn succeeding_at(attempt: usize) -> Script {
        Script {
            starts: RefCell::new(Vec::new()),
            succeed_at: attempt,
        }
    }

    fn attempt(&self) -> std::future::Ready<Result<usize, usize>> {
        let mut starts = self.starts.borrow_mut();
        starts.push(Instant::now());
        let n = starts.len();
        std::future::ready(if n >= self.succeed_at { Ok(n) } else { Err(n) })
    }

    fn attempts(&self) -> usize {
        self.starts.borrow().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        self.starts
            .borrow()
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }
}

// === direct calls ===

#[test]
fn refuses_zero_attempts() {
    assert_eq!(
        Retry::new(0, backoff()).unwrap_err(),
        error::InvalidAttempts::new()
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_count_the_first_one() {
    for attempts in [1, 2, 3, 7] {
        let script = Script::failing();
        let (result, stats) = retry(attempts).call_with_stats(|| script.attempt()).await;
        assert_eq!(script.attempts(), attempts as usize);
        // The last attempt's error comes back as it was.
        assert_eq!(result, Err(attempts as usize));
        assert_eq!(
            stats,
            RetryStats {
                attempts,
                budget_exhausted: false
            }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_kept_result_ends_the_call() {
    let script = Script::succeeding_at(1);
    assert_eq!(retry(3).call(|| script.attempt()).await, Ok(1));
    assert_eq!(script.attempts(), 1);

    let script = Script::succeeding_at(2);
    let policy = retry(5);
    assert_eq!(policy.call(|| script.attempt()).await, Ok(2));
    assert_eq!(script.attempts(), 2);
    assert_eq!(policy.retries_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_is_retried() {
    // Even attempt numbers are "fatal": not worth another try.
    let policy = retry(5).with_classify(|result: &Result<usize, usize>| match result {
        Err(n) if n % 2 == 0 => Decision::Done,
        Err(_) => Decision::Retry,
        Ok(_) => Decision::Done,
    });
    let script = Script::failing();
    assert_eq!(policy.call(|| script.attempt()).await, Err(2));
    assert_eq!(script.attempts(), 2);

    // And an `Ok` may be worth retrying too (a 503, say).
    let policy = retry(3).with_classify(|result: &Result<&str, ()>| match result {
        Ok("busy") => Decision::Retry,
        _ => Decision::Done,
    });
    let calls = AtomicUsize::new(0);
    let result = policy
        .call(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok("busy")
        })
        .await;
    assert_eq!(result, Ok("busy"));
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn sleeps_follow_the_backoff_up_to_its_max() {
    let script = Script::failing();
    retry(7).call(|| script.attempt()).await.unwrap_err();
    // Half of 100, 200, 400, 800, then of the 1s max.
    assert_eq!(
        script.gaps(),
        [ms(50), ms(100), ms(200), ms(400), ms(500), ms(500)]
    );
}

#[tokio::test(start_paused = true)]
async fn zero_jitter_retries_at_once() {
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0))).unwrap();
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.gaps(), [Duration::ZERO, Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn decorrelated_sleeps_stay_between_base_and_max() {
    for seed in 0..20 {
        let backoff = backoff()
            .with_jitter(Jitter::Decorrelated)
            .with_rng(Rng::seeded(seed));
        let policy = Retry::new(12, backoff).unwrap();
        let script = Script::failing();
        policy.call(|| script.attempt()).await.unwrap_err();
        let gaps = script.gaps();
        assert_eq!(gaps.len(), 11);
        for (gap, previous) in gaps.iter().zip(std::iter::once(&ms(100)).chain(&gaps)) {
            // Timers fire on whole milliseconds: allow the rounding up.
            assert!(*gap >= ms(100) && *gap <= ms(1001), "seed {seed}: {gaps:?}");
            assert!(*gap <= *previous * 3 + ms(1), "seed {seed}: {gaps:?}");
        }
    }
}

fn hinted(hint: Duration) -> impl Fn(&Result<usize, usize>) -> Decision + Clone {
    move |result| match result {
        Ok(_) => Decision::Done,
        Err(_) => Decision::RetryAfter(hint),
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_hint_is_honoured() {
    let policy = retry(3).with_classify(hinted(Duration::from_secs(2)));
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.gaps(), [ms(2000), ms(2000)]);
}

#[tokio::test(start_paused = true)]
async fn a_short_hint_does_not_shorten_the_backoff() {
    let policy = retry(3).with_classify(hinted(ms(60)));
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.gaps(), [ms(60), ms(100)]);
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_cap_ends_the_retries_and_one_within_it_is_waited() {
    let hour = Duration::from_secs(3600);
    let policy = retry(2)
        .with_classify(hinted(hour))
        .with_max_retry_after(Duration::from_secs(5));
    let script = Script::failing();
    let start = Instant::now();
    assert_eq!(policy.call(|| script.attempt()).await, Err(1));
    assert_eq!(
        script.attempts(),
        1,
        "no retry sooner than the server asked"
    );
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the result comes back at once"
    );

    // The default cap is 30 s: a hint of 30 s is waited, one of 31 s is not.
    let policy = retry(2).with_classify(hinted(Duration::from_secs(30)));
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.gaps(), [Duration::from_secs(30)]);
    let policy = retry(2).with_classify(hinted(Duration::from_secs(31)));
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.attempts(), 1);

    // A zero cap ignores hints: the backoff alone decides.
    let policy = retry(2)
        .with_classify(hinted(hour))
        .with_max_retry_after(Duration::ZERO);
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.gaps(), [ms(50)]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_stops_retries_and_says_so() {
    let policy = retry(3).with_budget(empty_budget());
    let script = Script::failing();
    let (result, stats) = policy.call_with_stats(|| script.attempt()).await;
    assert_eq!(result, Err(1));
    assert_eq!(script.attempts(), 1);
    assert_eq!(
        stats,
        RetryStats {
            attempts: 1,
            budget_exhausted: true
        }
    );
    assert_eq!(policy.budget_exhausted_total(), 1);
    assert_eq!(policy.retries_total(), 0);

    // A call the classifier is happy with never asks the budget.
    let script = Script::succeeding_at(1);
    let (_, stats) = policy.call_with_stats(|| script.attempt()).await;
    assert!(!stats.budget_exhausted);
    assert_eq!(policy.budget_exhausted_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn policies_sharing_a_budget_share_its_retries() {
    // Three retries a second (over the last fifth of 5 s), whoever takes them.
    let budget = Budget::new(Duration::from_secs(5), 0.0, 3)
        .unwrap()
        .with_clock(Arc::new(TokioClock));
    let a = retry(3).with_budget(budget.clone());
    let b = retry(3).with_budget(budget);

    let script = Script::failing();
    a.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.attempts(), 3);
    let script = Script::failing();
    let (_, stats) = b.call_with_stats(|| script.attempt()).await;
    assert_eq!(stats.attempts, 2);
    assert!(stats.budget_exhausted);
    assert_eq!((a.retries_total(), b.retries_total()), (2, 1));

    // A second later the last fifth has moved past those retries.
    tokio::time::advance(Duration::from_secs(1)).await;
    let script = Script::failing();
    b.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn requests_feed_the_budget() {
    // Retries may add half the requests, and nothing more.
    let clock = ManualClock::new();
    let budget = Budget::new(Duration::from_secs(10), 0.5, 0)
        .unwrap()
        .with_clock(clock);
    let policy = retry(2).with_budget(budget);
    for _ in 0..4 {
        policy.call(|| async { Ok::<_, ()>(()) }).await.unwrap();
    }
    let calls = AtomicUsize::new(0);
    for _ in 0..4 {
        let _ = policy
            .call(|| async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), ()>(())
            })
            .await;
    }
    // 8 requests earn 4 retries: the 4 failing calls are each retried once.
    assert_eq!(calls.load(Ordering::Relaxed), 8);
    assert_eq!(policy.budget_exhausted_total(), 0);
    // 9 requests earn 4.5 retries: a fifth is allowed; 10 earn 5, so a sixth is not.
    let _ = policy.call(|| async { Err::<(), ()>(()) }).await;
    let _ = policy.call(|| async { Err::<(), ()>(()) }).await;
    assert_eq!(policy.retries_total(), 5);
    assert_eq!(policy.budget_exhausted_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_budget_only_attempts_bound_retries() {
    let policy = retry(4).with_budget(empty_budget()).without_budget();
    let script = Script::failing();
    policy.call(|| script.attempt()).await.unwrap_err();
    assert_eq!(script.attempts(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_retry_the_deadline_leaves_no_time_for_is_given_up_at_once() {
    // A 5 s backoff (half of 10 s) against a deadline 100 ms away: the retry could only start
    // after it.
    let backoff = ExponentialBackoff::new(Duration::from_secs(10), Duration::from_secs(10))
        .unwrap()
        .with_rng(Rng::fixed(0.5));
    // One retry in the budget, to show it is not spent.
    let budget = Budget::new(Duration::from_secs(1), 0.0, 1)
        .unwrap()
        .with_clock(ManualClock::new());
    let policy = Retry::new(3, backoff).unwrap().with_budget(budget);
    let script = Script::failing();
    let start = Instant::now();
    let (result, stats) = Deadline::after(ms(100))
        .scope(policy.call_with_stats(|| script.attempt()))
        .await;
    assert!(start.elapsed() <= ms(100), "{:?}", start.elapsed());
    assert_eq!(result, Err(1), "the first attempt's failure, as it was");
    assert_eq!(
        stats,
        RetryStats {
            attempts: 1,
            budget_exhausted: false
        }
    );
    assert_eq!(policy.retries_total(), 0);

    // Without a deadline, the retry the budget holds is still there to be made.
    let script = Script::failing();
    let (_, stats) = policy.call_with_stats(|| script.attempt()).await;
    assert_eq!(stats.attempts, 2);
    assert!(stats.budget_exhausted);
}

#[tokio::test(start_paused = true)]
async fn a_retry_the_deadline_leaves_less_than_a_tick_after_its_wait_is_given_up() {
    // A wait of 99.5 ms (half of 199 ms) against a deadline 100 ms away: the attempt would have
    // half a millisecond, and the timers fire on the same tick.
    let policy = |max: Duration| {
        let backoff = ExponentialBackoff::new(max, max)
            .unwrap()
            .with_rng(Rng::fixed(0.5));
        Retry::new(3, backoff).unwrap().without_budget()
    };
    let tight = policy(Duration::from_micros(199_000));
    let script = Script::failing();
    let (result, stats) = Deadline::after(ms(100))
        .scope(tight.call_with_stats(|| script.attempt()))
        .await;
    assert_eq!(result, Err(1), "the first attempt's failure, as it was");
    assert_eq!(stats.attempts, 1);
    assert_eq!(tight.retries_total(), 0);

    // A wait of 98 ms leaves the attempt 2 ms: it is made.
    let roomy = policy(ms(196));
    let script = Script::failing();
    let (_, stats) = Deadline::after(ms(100))
        .scope(roomy.call_with_stats(|| script.attempt()))
        .await;
    assert_eq!(stats.attempts, 2);
}

#[test]
fn configuring_a_shared_policy_leaves_the_others_alone() {
    let a = retry(3);
    let b = a.clone().with_max_retry_after(ms(1)).without_budget();
    assert_eq!(a.max_retry_after(), Duration::from_secs(30));
    assert!(a.budget().is_some());
    assert_eq!(b.max_retry_after(), ms(1));
    assert!(b.budget().is_none());
}

#[test]
fn calls_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let policy = retry(3);
    let future = policy.call(|| async { Ok::<_, ()>(()) });
    assert_send(&future);
}

// === tower ===

type Handle = mock::Handle<&'static str, &'static str>;

#[tokio::test(start_paused = true)]
async fn layer_retries_until_an_answer() {
    let (mut service, mut handle) = mock::spawn_layer(RetryLayer::new(retry(3)));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));

    let (request, send) = next_request(&mut handle).await;
    assert_eq!(request, "hello");
    send.send_error("reset");
    // Backing off: half of 100ms.
    assert_pending!(response.poll());
    tokio::time::advance(ms(49)).await;
    assert_pending!(response.poll());
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(ms(1)).await;
    assert_pending!(response.poll());

    let (request, send) = next_request(&mut handle).await;
    assert_eq!(request, "hello");
    send.send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
}

#[tokio::test(start_paused = true)]
async fn layer_polls_the_service_ready_before_each_retry() {
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0))).unwrap();
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy));
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");

    // The mock has no capacity left: the retry waits for it rather than calling an unready
    // service (the mock panics on a call without a ready poll).
    assert_pending!(response.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    assert!(response.is_woken());
    assert_pending!(response.poll());
    let (_, send) = next_request(&mut handle).await;
    send.send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
}

#[tokio::test(start_paused = true)]
async fn layer_returns_the_last_error() {
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0))).unwrap();
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    for n in 1..=3 {
        assert_pending!(response.poll());
        let (_, send) = next_request(&mut handle).await;
        send.send_error(format!("failure {n}"));
    }
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "failure 3");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn layer_returns_a_failed_readiness() {
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0))).unwrap();
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    handle.send_error("closing");
    send.send_error("reset");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "closing");
}

#[tokio::test(start_paused = true)]
async fn layer_sends_an_uncopyable_request_once() {
    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let layer = RetryLayer::new(retry(3)).with_clone_request(move |_: &&'static str| {
        counted.fetch_add(1, Ordering::Relaxed);
        None
    });
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("stream"));
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "reset");
    assert!(handle.poll_request().is_pending());
    assert_eq!(copies.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_retries_by_a_reconfigured_policy_and_counts_its_retries() {
    // Each `with_` makes a policy of its own: its futures must find that one, not the first.
    let policy = retry(3)
        .with_budget(Budget::new(Duration::from_secs(10), 0.0, 1).unwrap())
        .with_max_retry_after(ms(10));
    let counts = policy.clone();
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    assert_pending!(response.poll());
    tokio::time::advance(ms(50)).await;
    assert_pending!(response.poll());
    let (_, send) = next_request(&mut handle).await;
    send.send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
    assert_eq!(counts.retries_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_retries_a_call_that_outlives_every_handle_of_its_policy() {
    let (inner, mut handle): (_, Handle) = mock::pair();
    // The layer is a temporary, and `oneshot` drops the service once it has made the call: the
    // call in flight is all that is left of the policy.
    let mut response = task::spawn(RetryLayer::new(retry(3)).layer(inner).oneshot("hello"));
    assert_pending!(response.poll());
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    // Backing off: half of 100ms.
    assert_pending!(response.poll());
    tokio::time::advance(ms(50)).await;
    assert_pending!(response.poll());

    let (request, send) = next_request(&mut handle).await;
    assert_eq!(request, "hello");
    send.send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
}

#[tokio::test(start_paused = true)]
async fn layer_retries_every_call_through_its_policys_last_handle_once_that_is_dropped() {
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(retry(3)));
    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call("one"));
    assert_ready_ok!(service.poll_ready());
    let mut second = task::spawn(service.call("two"));
    // The service held the policy's last handle: the calls in flight are all that is left.
    drop(service);
    let (_, send_first) = next_request(&mut handle).await;
    let (_, send_second) = next_request(&mut handle).await;
    // The first call ends and is dropped: the second must not have counted on it.
    send_first.send_response("1");
    assert_eq!(assert_ready_ok!(first.poll()), "1");
    drop(first);
    send_second.send_error("reset");
    assert_pending!(second.poll());
    tokio::time::advance(ms(50)).await;
    assert_pending!(second.poll());

    let (request, send) = next_request(&mut handle).await;
    assert_eq!(request, "two");
    send.send_response("2");
    assert_eq!(assert_ready_ok!(second.poll()), "2");
}

#[tokio::test(start_paused = true)]
async fn layer_retries_a_call_made_beside_other_handles_while_one_lives() {
    let policy = retry(3);
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy.clone()));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    // The policy outlives the service that made the call.
    drop(service);
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    assert_pending!(response.poll());
    tokio::time::advance(ms(50)).await;
    assert_pending!(response.poll());

    let (_, send) = next_request(&mut handle).await;
    send.send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
    assert_eq!(policy.retries_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_keeps_the_result_of_a_call_made_beside_other_handles_once_all_are_gone() {
    let policy = retry(3);
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy.clone()));
    assert_ready_ok!(service.poll_ready());
    // Another handle lives: the call does not hold the policy, it finds it on a failure.
    let mut response = task::spawn(service.call("hello"));
    // Every handle is dropped while the call is in flight.
    drop(service);
    drop(policy);
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "reset");
    // No retry was sent (the handle may see the service's last copy gone with the call).
    assert!(!matches!(handle.poll_request(), Poll::Ready(Some(_))));
}

#[test]
fn only_a_call_through_the_last_handle_counts_a_reference_to_its_policy() {
    let policy = retry(3);
    let shared = Arc::clone(&policy.shared.0);
    let (mut service, _handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy.clone()));
    let before = Arc::strong_count(&shared);
    let _ = service.poll_ready();
    let beside = service.call("hello");
    assert_eq!(Arc::strong_count(&shared), before, "found by its key");
    drop(beside);

    drop(policy);
    let before = Arc::strong_count(&shared);
    let _ = service.poll_ready();
    let last = service.call("hello");
    assert_eq!(Arc::strong_count(&shared), before + 1, "held by the call");
    drop(last);
    assert_eq!(Arc::strong_count(&shared), before);
}

#[tokio::test(start_paused = true)]
async fn layer_gives_up_at_once_on_a_retry_the_deadline_leaves_no_time_for() {
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(retry(3)));
    assert_ready_ok!(service.poll_ready());
    // Half of the first 100ms of backoff would end after the deadline.
    let mut response = task::spawn(Deadline::after(ms(40)).scope(service.call("hello")));
    assert_pending!(response.poll());
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "reset");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn layer_stops_when_a_later_copy_fails() {
    // The first copy works, the second does not: two attempts, though five are allowed.
    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let layer = RetryLayer::new(Retry::new(5, backoff().with_rng(Rng::fixed(0.0))).unwrap())
        .with_clone_request(move |req: &&'static str| {
            (counted.fetch_add(1, Ordering::Relaxed) == 0).then_some(*req)
        });
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    for n in 1..=2 {
        assert_pending!(response.poll());
        let (_, send) = next_request(&mut handle).await;
        send.send_error(format!("failure {n}"));
    }
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "failure 2");
    assert_eq!(copies.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn layer_copies_only_what_a_retry_may_need() {
    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let counting = move |req: &&'static str| {
        counted.fetch_add(1, Ordering::Relaxed);
        Some(*req)
    };

    // One attempt: nothing to copy for.
    let layer = RetryLayer::new(retry(1)).with_clone_request(counting.clone());
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    assert_ready_err!(response.poll());
    assert_eq!(copies.load(Ordering::Relaxed), 0);

    // Three attempts: a copy for each retry, none for after the last.
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0))).unwrap();
    let layer = RetryLayer::new(policy).with_clone_request(counting);
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    for _ in 0..3 {
        assert_pending!(response.poll());
        let (_, send) = next_request(&mut handle).await;
        send.send_error("reset");
    }
    assert_ready_err!(response.poll());
    assert_eq!(copies.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn layer_classifies_the_inner_error_and_response() {
    // Retry "busy" answers; keep everything else, errors included.
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0)))
        .unwrap()
        .with_classify(|result: &Result<&'static str, BoxError>| match result {
            Ok("busy") => Decision::Retry,
            _ => Decision::Done,
        });
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy));
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    send.send_response("busy");
    assert_pending!(response.poll());
    let (_, send) = next_request(&mut handle).await;
    send.send_error("fatal");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "fatal");
}

#[tokio::test(start_paused = true)]
async fn layer_deposits_and_respects_the_budget() {
    let policy = retry(3).with_budget(empty_budget());
    let layer = RetryLayer::new(policy.clone());
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(layer);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let (_, send) = next_request(&mut handle).await;
    send.send_error("reset");
    let err = assert_ready_err!(response.poll());
    assert_eq!(err.to_string(), "reset");
    assert_eq!(policy.budget_exhausted_total(), 1);

    // Deposits: with a ratio of 1/16, a batch of 16 requests earns one retry.
    let budget = Budget::new(Duration::from_secs(10), 1.0 / 16.0, 0)
        .unwrap()
        .with_clock(ManualClock::new());
    let policy = Retry::new(3, backoff().with_rng(Rng::fixed(0.0)))
        .unwrap()
        .with_budget(budget);
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(policy.clone()));
    for _ in 1..DEPOSIT_BATCH {
        assert_ready_ok!(service.poll_ready());
        let mut response = task::spawn(service.call("hello"));
        let (_, send) = next_request(&mut handle).await;
        send.send_response("world");
        assert_ready_ok!(response.poll());
    }
    // The batch's last call fails: its own deposit completes the batch before it is retried.
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    for _ in 0..2 {
        assert_pending!(response.poll());
        let (_, send) = next_request(&mut handle).await;
        send.send_error("reset");
    }
    assert_ready_err!(response.poll());
    assert_eq!(
        (policy.retries_total(), policy.budget_exhausted_total()),
        (1, 1)
    );
}

/// A retry service over a service that always succeeds, its policy on `budget`.
fn succeeding(budget: &Budget) -> impl tower::Service<(), Response = (), Error = BoxError> + Clone {
    let policy = retry(3).with_budget(budget.clone());
    let ok = tower::service_fn(|()| std::future::ready(Ok::<_, BoxError>(())));
    RetryLayer::new(policy).layer(ok)
}

/// One call through `service`, polled ready first.
fn call(service: &mut impl tower::Service<(), Response = (), Error = BoxError>) {
    tokio_test::block_on(tower::ServiceExt::ready(&mut *service)).unwrap();
    tokio_test::block_on(service.call(())).unwrap();
}

/// How many retries `budget` allows now (taking them).
fn allowed(budget: &Budget) -> usize {
    (0..1000).take_while(|_| budget.withdraw()).count()
}

#[test]
fn layer_deposits_in_batches_and_all_it_holds_when_dropped() {
    // Ratio 1, no floor: each deposited request allows exactly one retry.
    let budget = Budget::new(Duration::from_secs(10), 1.0, 0)
        .unwrap()
        .with_clock(ManualClock::new());
    let mut service = succeeding(&budget);

    for _ in 1..DEPOSIT_BATCH {
        call(&mut service);
    }
    assert_eq!(allowed(&budget), 0, "a batch is held until it is full");
    call(&mut service);
    assert_eq!(allowed(&budget), DEPOSIT_BATCH as usize);

    // A clone holds its own batch; dropping either hands over what it holds.
    let mut clone = service.clone();
    call(&mut service);
    call(&mut service);
    call(&mut clone);
    assert_eq!(allowed(&budget), 0);
    drop(service);
    assert_eq!(allowed(&budget), 2);
    drop(clone);
    assert_eq!(allowed(&budget), 1);
}

#[test]
fn a_batch_goes_in_once_a_bucket_old_and_a_stale_one_is_dropped() {
    // A window of 10 s in tenths: a bucket is a second.
    let clock = ManualClock::new();
    let budget = Budget::new(Duration::from_secs(10), 1.0, 0)
        .unwrap()
        .with_clock(clock.clone());
    let mut service = succeeding(&budget);

    // Modest traffic, 5 calls a second for 4 s: fewer than a batch a bucket (1 s), and every
    // one is deposited, at most a bucket after it was made.
    for _ in 0..20 {
        call(&mut service);
        clock.advance(Duration::from_millis(200));
    }
    let deposited = budget.deposited();
    assert!(
        (15..20).contains(&deposited),
        "{deposited}: the last bucket's held"
    );
    // What is held goes in with the next call a bucket after it began.
    clock.advance(Duration::from_secs(1));
    call(&mut service);
    assert_eq!(budget.deposited(), 21, "none lost");

    // A service that goes quiet holding a batch: found two buckets old, it is dropped. Counted
    // as new, its requests would allow retries for a whole window after they had aged out.
    call(&mut service);
    assert_eq!(budget.deposited(), 21, "held");
    clock.advance(Duration::from_secs(2));
    call(&mut service);
    assert_eq!(
        budget.deposited(),
        22,
        "the held call dropped, the one after the quiet in at once"
    );
    drop(service);
    assert_eq!(budget.deposited(), 22, "nothing left held");
}

#[test]
fn sparse_calls_are_each_deposited_at_once() {
    // A call every two buckets: a batch begun by one would be stale at the next, and dropped.
    let clock = ManualClock::new();
    let budget = Budget::new(Duration::from_secs(10), 1.0, 0)
        .unwrap()
        .with_clock(clock.clone());
    let mut service = succeeding(&budget);
    clock.advance(Duration::from_secs(2));
    for _ in 0..4 {
        call(&mut service);
        clock.advance(Duration::from_secs(2));
    }
    assert_eq!(budget.deposited(), 4);
}

#[test]
fn response_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (mut service, _handle): (_, Handle) = mock::spawn_layer(RetryLayer::new(retry(3)));
    let _ = service.poll_ready();
    let future = service.call("hello");
    assert_send(&future);
}

#[tokio::test(start_paused = true)]
async fn a_layer_retrying_transient_errors_takes_no_refusal_for_one() {
    use crate::breaker::CircuitBreaker;
    use crate::classify::ErrorsAreFailures;

    let breaker = CircuitBreaker::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(
            retry(3).with_classify(RetryTransient(ErrorsAreFailures)),
        ))
        .layer(breaker.layer())
        .service_fn(move |_: ()| {
            counted.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), BoxError>("reset".into()) }
        });

    // A failure is retried: three attempts.
    let start = Instant::now();
    service.clone().oneshot(()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), 3);

    // A refusal is not: no backoff, no second look at the open breaker.
    breaker.force_open();
    let start_refused = Instant::now();
    let err = service.oneshot(()).await.unwrap_err();
    assert!(crate::error::is_caused_by::<
        crate::breaker::error::BreakerOpen,
    >(&*err));
    assert_eq!(start_refused.elapsed(), Duration::ZERO);
    assert_eq!(breaker.snapshot().rejected, 1, "asked once");
    assert!(start.elapsed() > Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn listeners_are_told_of_each_retry_and_each_refusal() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let events = |policy: Retry| {
        let log = seen.clone();
        policy.subscribe(move |event| log.lock().unwrap().push(*event));
        policy
    };
    // A clone made before the subscription hears it too: they are one policy.
    let retrying = retry(3);
    let clone = retrying.clone();
    let _subscribed = events(retrying);
    let _ = clone.call(|| async { Err::<(), _>("reset") }).await;
    let refused = events(retry(3).with_budget(empty_budget()));
    let _ = refused.call(|| async { Err::<(), _>("reset") }).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            RetryEvent::Retrying {
                retry: 1,
                wait: ms(50)
            },
            RetryEvent::Retrying {
                retry: 2,
                wait: ms(100)
            },
            RetryEvent::BudgetExhausted,
        ]
    );
}
