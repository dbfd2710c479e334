//! `GET /hystrix.stream`: the proxy in the format of Hystrix's metrics event stream, so that a
//! Hystrix Dashboard or a Turbine aggregating many instances can read rampart.
//!
//! Every `delay` milliseconds (`?delay=N`, 500 by default as Hystrix's servlet; at least
//! [`MIN_DELAY`]) the stream sends one `data: {json}\n\n` event per route, a `HystrixCommand`
//! named after it in the group of its upstream, then one per upstream, a `HystrixThreadPool`
//! standing for its limits; with neither, it sends Hystrix's keep-alive, `ping: \n\n`, so that a
//! client that went away is noticed. The fields, their types and what rampart puts in each are
//! those of Hystrix's `SerialHystrixDashboardData` (docs/admin.md has the table); every number is
//! an integer, as Turbine sums only integers.
//!
//! Each stream is fed by a task of its own, which ends when the client goes away (its body is
//! dropped, the channel closes) or the admin server stops (which drops every connection).

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use http_body_util::BodyExt;
use rampart_config::Config;
use rampart_policy::breaker::State;
use rampart_proxy::ProxyHandle;
use rampart_proxy::stats::{Latencies, RouteStats, Snapshot, UpstreamStats};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::MissedTickBehavior;

use crate::api::Answer;
use crate::events::Events;

/// How often the metrics go out without `?delay=`: Hystrix's servlet default.
const DEFAULT_DELAY: Duration = Duration::from_millis(500);

/// The shortest `?delay=` honoured: each round reads the proxy's stats under the lock a reload
/// takes, which a stream should not hold a thousand times a second.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(100);

/// The rolling window of every rolling count, as Hystrix's default (and rampart's window).
const WINDOW_MS: u64 = 10_000;

/// Rounds written ahead of a slow client: past this, the feeding task waits for it.
const QUEUED: usize = 4;

/// What Hystrix writes when it has nothing to send: an SSE field no client reads.
const PING: &[u8] = b"ping: \n\n";

/// The metrics stream of `proxy`, every `delay` from the request's query (`delay=N`, in
/// milliseconds).
pub(crate) fn stream(
    proxy: ProxyHandle,
    query: Option<&str>,
    permit: OwnedSemaphorePermit,
) -> Answer {
    let (rounds, queue) = mpsc::channel(QUEUED);
    let delay = delay(query);
    tokio::spawn(async move {
        feed(proxy, delay, rounds).await;
        // The stream's place is free once nobody reads it.
        drop(permit);
    });
    let mut response = Response::new(Events(queue).boxed_unsync());
    let headers = response.headers_mut();
    // The headers Hystrix's servlet sends.
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream;charset=UTF-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
    );
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The `delay` of `query`: its value in milliseconds, at least [`MIN_DELAY`]; the default when
/// it is absent or not a whole number (Hystrix ignores such a value too).
fn delay(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("delay="))
        .and_then(|millis| millis.parse().ok())
        .map_or(DEFAULT_DELAY, |millis| {
            Duration::from_millis(millis).max(MIN_DELAY)
        })
}

// Writes a round of the metrics of `proxy` into `rounds` every `delay`, until nobody reads them.
async fn feed(proxy: ProxyHandle, delay: Duration, rounds: mpsc::Sender<Bytes>) {
    let mut tick = tokio::time::interval(delay);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rounds.closed() => return,
            _ = tick.tick() => {}
        }
        let round = round(&proxy.snapshot(), &proxy.config(), wall_clock_millis());
        if !crate::events::offer(&rounds, round).await {
            return;
        }
    }
}

/// One round: an event per route, then one per upstream, at `now` (milliseconds since the Unix
/// epoch); a ping when there is neither.
fn round(snapshot: &Snapshot, config: &Config, now: u64) -> Bytes {
    let commands = snapshot.routes.iter().filter_map(|route| {
        let upstream = snapshot
            .upstreams
            .iter()
            .find(|u| u.name == route.upstream)?;
        command(route, upstream, config, now)
    });
    let pools = snapshot.upstreams.iter().map(|u| thread_pool(u, now));
    let mut round = Vec::new();
    for event in commands.chain(pools) {
        round.extend_from_slice(b"data: ");
        round.extend_from_slice(event.to_string().as_bytes());
        round.extend_from_slice(b"\n\n");
    }
    if round.is_empty() {
        return Bytes::from_static(PING);
    }
    Bytes::from(round)
}

/// The `HystrixCommand` of `route`, to `upstream`, with the settings `config` gives them; `None`
/// when `config` no longer has the route (a reload between the two reads): the next round has it
/// right.
fn command(
    route: &RouteStats,
    upstream: &UpstreamStats,
    config: &Config,
    now: u64,
) -> Option<Value> {
    let settings = config.routes.iter().find(|r| r.name == route.name)?;
    let breaker = config.upstream(&upstream.name)?.breaker;
    let answers = &route.answers;
    // Hystrix's health counts: short-circuits count as errors, bad requests not at all.
    let errors = answers.failure + answers.timeout + answers.rejected + answers.short_circuited;
    let requests = answers.success + errors;
    let states = || upstream.endpoints.iter().map(|endpoint| endpoint.state);
    let all = |wanted: &[State]| {
        !upstream.endpoints.is_empty()
            && states().all(|state| state.is_some_and(|state| wanted.contains(&state)))
    };
    let timeout = millis(settings.timeout);
    Some(object([
        ("type", "HystrixCommand".into()),
        ("name", route.name.as_str().into()),
        ("group", route.upstream.as_str().into()),
        ("currentTime", now.into()),
        // No endpoint's breaker is closed: each is open, forced open or half-open (letting its
        // probes only), as Hystrix tells a half-open circuit open.
        (
            "isCircuitBreakerOpen",
            all(&[State::Open, State::ForcedOpen, State::HalfOpen]).into(),
        ),
        ("errorPercentage", percent(errors, requests).into()),
        ("errorCount", errors.into()),
        ("requestCount", requests.into()),
        ("rollingCountBadRequests", answers.bad_request.into()),
        ("rollingCountCollapsedRequests", 0.into()),
        ("rollingCountEmit", 0.into()),
        (
            "rollingCountExceptionsThrown",
            answers.errors_passed_on.into(),
        ),
        ("rollingCountFailure", answers.failure.into()),
        ("rollingCountFallbackEmit", 0.into()),
        ("rollingCountFallbackFailure", 0.into()),
        (
            "rollingCountFallbackMissing",
            answers.failures_uncovered.into(),
        ),
        ("rollingCountFallbackRejection", 0.into()),
        ("rollingCountFallbackSuccess", answers.fallback.into()),
        ("rollingCountResponsesFromCache", 0.into()),
        ("rollingCountSemaphoreRejected", 0.into()),
        ("rollingCountShortCircuited", answers.short_circuited.into()),
        ("rollingCountSuccess", answers.success.into()),
        ("rollingCountThreadPoolRejected", answers.rejected.into()),
        ("rollingCountTimeout", answers.timeout.into()),
        ("currentConcurrentExecutionCount", route.in_flight.into()),
        (
            "rollingMaxConcurrentExecutionCount",
            answers.peak_in_flight.into(),
        ),
        ("latencyExecute_mean", mean(answers.executed_latency).into()),
        ("latencyExecute", percentiles(answers.executed_latency)),
        ("latencyTotal_mean", mean(answers.latency).into()),
        ("latencyTotal", percentiles(answers.latency)),
        (
            "propertyValue_circuitBreakerRequestVolumeThreshold",
            breaker.min_calls.into(),
        ),
        (
            "propertyValue_circuitBreakerSleepWindowInMilliseconds",
            millis(breaker.open_for).into(),
        ),
        (
            "propertyValue_circuitBreakerErrorThresholdPercentage",
            ((breaker.failure_rate * 100.0).round() as u64).into(),
        ),
        (
            "propertyValue_circuitBreakerForceOpen",
            all(&[State::ForcedOpen]).into(),
        ),
        (
            "propertyValue_circuitBreakerForceClosed",
            all(&[State::ForcedClosed]).into(),
        ),
        (
            "propertyValue_circuitBreakerEnabled",
            breaker.enabled.into(),
        ),
        ("propertyValue_executionIsolationStrategy", "THREAD".into()),
        (
            "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
            timeout.into(),
        ),
        (
            "propertyValue_executionTimeoutInMilliseconds",
            timeout.into(),
        ),
        (
            "propertyValue_executionIsolationThreadInterruptOnTimeout",
            true.into(),
        ),
        (
            "propertyValue_executionIsolationThreadPoolKeyOverride",
            Value::Null,
        ),
        (
            "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
            upstream.concurrency_limit.into(),
        ),
        // A fallback answer is made in memory, with no limit: Java's "unbounded".
        (
            "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
            i32::MAX.into(),
        ),
        (
            "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
            WINDOW_MS.into(),
        ),
        ("propertyValue_requestCacheEnabled", false.into()),
        ("propertyValue_requestLogEnabled", false.into()),
        ("reportingHosts", 1.into()),
        ("threadPool", route.upstream.as_str().into()),
    ]))
}

/// The `HystrixThreadPool` of `upstream`: its limits, the pool's size being the concurrency
/// limit and its queue the pending queue.
fn thread_pool(upstream: &UpstreamStats, now: u64) -> Value {
    let completed: u64 = upstream
        .endpoints
        .iter()
        .map(|endpoint| endpoint.attempts.0 + endpoint.attempts.1)
        .sum();
    let size = upstream.concurrency_limit;
    let admissions = &upstream.admissions;
    object([
        ("type", "HystrixThreadPool".into()),
        ("name", upstream.name.as_str().into()),
        ("currentTime", now.into()),
        ("currentActiveCount", upstream.in_flight.into()),
        ("currentCompletedTaskCount", completed.into()),
        ("currentCorePoolSize", size.into()),
        ("currentLargestPoolSize", size.into()),
        ("currentMaximumPoolSize", size.into()),
        ("currentPoolSize", size.into()),
        ("currentQueueSize", upstream.queued.into()),
        (
            "currentTaskCount",
            (completed + upstream.in_flight + upstream.queued).into(),
        ),
        ("rollingCountThreadsExecuted", admissions.executed.into()),
        ("rollingMaxActiveThreads", admissions.peak_in_flight.into()),
        ("rollingCountCommandRejections", admissions.refused.into()),
        (
            "propertyValue_queueSizeRejectionThreshold",
            upstream.max_pending.into(),
        ),
        (
            "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
            WINDOW_MS.into(),
        ),
        ("reportingHosts", 1.into()),
    ])
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect::<Map<_, _>>(),
    )
}

/// Whole milliseconds, as Hystrix's `int` fields hold them (cut, not rounded, as Java casts).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Hystrix's error percentage: whole, cut down; 0 with no request.
fn percent(errors: u64, requests: u64) -> u64 {
    if requests == 0 {
        return 0;
    }
    (errors as f64 / requests as f64 * 100.0) as u64
}

fn mean(latencies: Option<Latencies>) -> u64 {
    latencies.map_or(0, |l| millis(l.mean))
}

/// The percentiles Hystrix reports, in milliseconds; all 0 with nothing in the window, as
/// Hystrix's.
fn percentiles(latencies: Option<Latencies>) -> Value {
    let at = |percentile: fn(&Latencies) -> Duration| {
        latencies.as_ref().map_or(0, |l| millis(percentile(l)))
    };
    object([
        ("0", at(|l| l.p0).into()),
        ("25", at(|l| l.p25).into()),
        ("50", at(|l| l.p50).into()),
        ("75", at(|l| l.p75).into()),
        ("90", at(|l| l.p90).into()),
        ("95", at(|l| l.p95).into()),
        ("99", at(|l| l.p99).into()),
        ("99.5", at(|l| l.p99_5).into()),
        ("100", at(|l| l.p100).into()),
    ])
}

/// Milliseconds since the Unix epoch: Hystrix's `currentTime`, which Turbine sets against its own
/// clock to tell how late an event is. Wall-clock time is the point of this field, and nothing
/// here is timed by it.
#[expect(
    clippy::disallowed_types,
    reason = "`currentTime` is wall-clock time by definition"
)]
fn wall_clock_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use rampart_proxy::stats::{Admissions, Answers, EndpointStats, Outcomes, Window};
    use rampart_test_support::{Behavior, ProxyBuilder, Upstream};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delay_is_the_query_s_at_least_the_minimum_else_the_default() {
        assert_eq!(delay(None), ms(500));
        assert_eq!(delay(Some("delay=2000")), ms(2000));
        assert_eq!(delay(Some("x=1&delay=250")), ms(250));
        assert_eq!(delay(Some("delay=0")), MIN_DELAY);
        assert_eq!(delay(Some("delay=-5")), ms(500));
        assert_eq!(delay(Some("delay=soon")), ms(500));
        assert_eq!(delay(Some("linger=9")), ms(500));
    }

    fn config() -> Config {
        Config::from_str(
            r#"
            [[routes]]
            name = "api"
            upstream = "app"
            timeout = "2s"

            [upstreams.app]
            endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
            [upstreams.app.breaker]
            failure_rate = 0.25
            min_calls = 7
            open_for = "3s"
            [upstreams.app.limits]
            max_pending = 9
            "#,
            "test.toml",
        )
        .unwrap()
    }

    fn endpoint(state: State, attempts: (u64, u64)) -> EndpointStats {
        EndpointStats {
            address: "127.0.0.1:1".into(),
            backup: false,
            state: Some(state),
            healthy: true,
            reinstated: false,
            in_flight: 0,
            attempts,
            recent: window(),
        }
    }

    fn window() -> Window {
        Window {
            requests_per_second: 0.0,
            error_rate: 0.0,
            p50: None,
            p99: None,
        }
    }

    fn snapshot(states: [State; 2], answers: Answers) -> Snapshot {
        Snapshot {
            routes: vec![RouteStats {
                name: "api".into(),
                upstream: "app".into(),
                requests: Outcomes::default(),
                retries: 0,
                retry_budget_exhausted: 0,
                hedges: 0,
                recent: window(),
                answers,
                in_flight: 2,
            }],
            upstreams: vec![UpstreamStats {
                name: "app".into(),
                in_flight: 2,
                concurrency_limit: 64,
                queued: 1,
                max_pending: 9,
                admissions: Admissions {
                    executed: 11,
                    refused: 3,
                    peak_in_flight: 5,
                },
                endpoints: vec![endpoint(states[0], (10, 2)), endpoint(states[1], (4, 0))],
            }],
        }
    }

    // The events of a round, as JSON.
    fn events(round: &Bytes) -> Vec<Value> {
        let text = std::str::from_utf8(round).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split_terminator("\n\n")
            .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn a_route_is_a_command_with_its_counts_settings_and_latencies() {
        let latencies = Latencies {
            mean: Duration::from_micros(12_900),
            p0: ms(1),
            p25: ms(2),
            p50: ms(3),
            p75: ms(4),
            p90: ms(5),
            p95: ms(6),
            p99: ms(7),
            p99_5: ms(8),
            p100: Duration::from_micros(9_999),
        };
        let answers = Answers {
            success: 6,
            failure: 2,
            timeout: 1,
            short_circuited: 3,
            rejected: 1,
            bad_request: 4,
            fallback: 2,
            errors_passed_on: 9,
            failures_uncovered: 5,
            peak_in_flight: 4,
            latency: Some(latencies),
            executed_latency: None,
        };
        let round = round(
            &snapshot([State::Open, State::HalfOpen], answers),
            &config(),
            NOW,
        );
        let events = events(&round);
        assert_eq!(events.len(), 2);
        let command = &events[0];
        for (field, value) in [
            ("type", json!("HystrixCommand")),
            ("name", json!("api")),
            ("group", json!("app")),
            ("threadPool", json!("app")),
            ("currentTime", json!(NOW)),
            ("isCircuitBreakerOpen", json!(true)),
            // 2 + 1 + 3 + 1 errors in 13 requests (bad requests out): 53.8%, cut down.
            ("errorCount", json!(7)),
            ("requestCount", json!(13)),
            ("errorPercentage", json!(53)),
            ("rollingCountSuccess", json!(6)),
            ("rollingCountFailure", json!(2)),
            ("rollingCountTimeout", json!(1)),
            ("rollingCountShortCircuited", json!(3)),
            ("rollingCountThreadPoolRejected", json!(1)),
            ("rollingCountSemaphoreRejected", json!(0)),
            ("rollingCountBadRequests", json!(4)),
            ("rollingCountFallbackSuccess", json!(2)),
            ("rollingCountExceptionsThrown", json!(9)),
            ("rollingCountFallbackMissing", json!(5)),
            ("currentConcurrentExecutionCount", json!(2)),
            ("rollingMaxConcurrentExecutionCount", json!(4)),
            ("latencyTotal_mean", json!(12)),
            (
                "latencyTotal",
                json!({"0": 1, "25": 2, "50": 3, "75": 4, "90": 5, "95": 6, "99": 7,
                       "99.5": 8, "100": 9}),
            ),
            ("latencyExecute_mean", json!(0)),
            (
                "latencyExecute",
                json!({"0": 0, "25": 0, "50": 0, "75": 0, "90": 0, "95": 0, "99": 0,
                       "99.5": 0, "100": 0}),
            ),
            ("propertyValue_circuitBreakerEnabled", json!(true)),
            (
                "propertyValue_circuitBreakerRequestVolumeThreshold",
                json!(7),
            ),
            (
                "propertyValue_circuitBreakerSleepWindowInMilliseconds",
                json!(3000),
            ),
            (
                "propertyValue_circuitBreakerErrorThresholdPercentage",
                json!(25),
            ),
            ("propertyValue_circuitBreakerForceOpen", json!(false)),
            ("propertyValue_circuitBreakerForceClosed", json!(false)),
            ("propertyValue_executionIsolationStrategy", json!("THREAD")),
            (
                "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
                json!(2000),
            ),
            ("propertyValue_executionTimeoutInMilliseconds", json!(2000)),
            (
                "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
                json!(64),
            ),
            (
                "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
                json!(10_000),
            ),
            ("reportingHosts", json!(1)),
        ] {
            assert_eq!(command[field], value, "{field}");
        }

        let pool = &events[1];
        for (field, value) in [
            ("type", json!("HystrixThreadPool")),
            ("name", json!("app")),
            ("currentTime", json!(NOW)),
            ("currentActiveCount", json!(2)),
            ("currentQueueSize", json!(1)),
            ("currentPoolSize", json!(64)),
            ("currentCorePoolSize", json!(64)),
            ("currentMaximumPoolSize", json!(64)),
            ("currentLargestPoolSize", json!(64)),
            ("currentCompletedTaskCount", json!(16)),
            ("currentTaskCount", json!(19)),
            ("rollingCountThreadsExecuted", json!(11)),
            ("rollingCountCommandRejections", json!(3)),
            ("rollingMaxActiveThreads", json!(5)),
            ("propertyValue_queueSizeRejectionThreshold", json!(9)),
            (
                "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
                json!(10_000),
            ),
            ("reportingHosts", json!(1)),
        ] {
            assert_eq!(pool[field], value, "{field}");
        }
    }

    #[test]
    fn the_circuit_is_open_only_when_no_endpoint_s_breaker_is_closed() {
        let open = |states| {
            let round = round(&snapshot(states, Answers::default()), &config(), NOW);
            let command = events(&round).remove(0);
            (
                command["isCircuitBreakerOpen"].as_bool().unwrap(),
                command["propertyValue_circuitBreakerForceOpen"]
                    .as_bool()
                    .unwrap(),
                command["propertyValue_circuitBreakerForceClosed"]
                    .as_bool()
                    .unwrap(),
            )
        };
        assert_eq!(open([State::Open, State::Closed]), (false, false, false));
        assert_eq!(open([State::Open, State::ForcedOpen]), (true, false, false));
        assert_eq!(
            open([State::ForcedOpen, State::ForcedOpen]),
            (true, true, false)
        );
        assert_eq!(
            open([State::ForcedClosed, State::ForcedClosed]),
            (false, false, true)
        );
        assert_eq!(
            open([State::ForcedClosed, State::HalfOpen]),
            (false, false, false)
        );
    }

    #[test]
    fn nothing_to_send_is_a_ping() {
        let empty = Snapshot {
            routes: Vec::new(),
            upstreams: Vec::new(),
        };
        assert_eq!(round(&empty, &config(), NOW), "ping: \n\n");
    }

    #[tokio::test]
    async fn the_feed_ends_when_nobody_reads_it() {
        let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
        let proxy = ProxyBuilder::to(&[upstream.addr()]).start().await;
        let (rounds, mut queue) = mpsc::channel(QUEUED);
        let feeding = tokio::spawn(feed(proxy.handle(), MIN_DELAY, rounds));
        assert!(queue.recv().await.is_some());
        drop(queue);
        tokio::time::timeout(Duration::from_secs(5), feeding)
            .await
            .expect("the feed ends once its reader is gone")
            .unwrap();
    }
}
