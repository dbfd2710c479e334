//! `GET /hystrix.stream` over real sockets, beside a proxy that served known traffic: what a
//! Hystrix Dashboard or Turbine reads of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart_admin::{Admin, ReloadError};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, ProxyBuilder, Upstream};
use serde_json::Value;

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request's status and headers of interest.
struct Sent {
    status: StatusCode,
    rampart_error: Option<String>,
    fallback: Option<String>,
}

async fn send(addr: SocketAddr, path: &str, deadline_ms: Option<u32>) -> Sent {
    let mut request = Request::get(format!("http://{addr}{path}"));
    if let Some(ms) = deadline_ms {
        request = request.header("x-rampart-deadline", ms.to_string());
    }
    let response = client()
        .request(request.body(Full::default()).unwrap())
        .await
        .expect("an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let sent = Sent {
        status: response.status(),
        rampart_error: header("x-rampart-error"),
        fallback: header("x-rampart-fallback"),
    };
    response.into_body().collect().await.unwrap();
    sent
}

async fn admin(proxy: &Proxy) -> Admin {
    let config = rampart_config::Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let reload = Arc::new(|| Err(ReloadError::Refused("no reload in this test".into())));
    Admin::start_with_token(&config, None, proxy.handle(), reload)
        .await
        .unwrap()
}

/// An open `/hystrix.stream` and what was read of it and not yet parsed.
struct Stream {
    body: Incoming,
    buffer: String,
}

impl Stream {
    async fn open(admin: SocketAddr, query: &str) -> Stream {
        let uri = format!("http://{admin}/hystrix.stream{query}");
        let response = client()
            .request(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream;charset=UTF-8"
        );
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event's data, as JSON (pings are skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if event == "ping: \n\n" {
                    continue;
                }
                let data = event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an event: {event:?}"));
                return Some(
                    serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data}")),
                );
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")?;
            let Ok(frame) = frame else { return None };
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event of `type` named `name`.
    async fn next_of(&mut self, kind: &str, name: &str) -> Value {
        loop {
            let event = self.next().await.expect("the stream goes on");
            if event["type"] == kind && event["name"] == name {
                return event;
            }
        }
    }
}

/// Two routes: `api` to `app` (its breaker opens at the fifth failure in a row and stays open; a
/// fallback answers its timeouts), `limited` to `tight` (one request a minute).
async fn proxy(upstream: &Upstream) -> Proxy {
    let addr = upstream.addr();
    ProxyBuilder::from_toml(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [[routes]]
        name = "api"
        match = {{ path_prefix = "/api" }}
        upstream = "app"
        timeout = "500ms"
        [routes.retry]
        attempts = 1
        [routes.fallback]
        on = ["timeout"]
        body = "degraded"

        [[routes]]
        name = "limited"
        match = {{ path_prefix = "/limited" }}
        upstream = "tight"
        [routes.retry]
        attempts = 1

        [upstreams.app]
        endpoints = ["{addr}"]
        [upstreams.app.breaker]
        consecutive_failures = 4
        open_for = "1h"
        open_for_max = "1h"

        [upstreams.tight]
        endpoints = ["{addr}"]
        [upstreams.tight.limits]
        rate = "1/m"
        "#
    ))
    .start()
    .await
}

#[tokio::test]
async fn commands_and_thread_pools_count_the_traffic_exactly() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy(&upstream).await;
    let addr = proxy.listeners()[0].addr;

    // `limited`: one success, then the rate limit refuses.
    assert_eq!(send(addr, "/limited", None).await.status, 200);
    let refused = send(addr, "/limited", None).await;
    assert_eq!(refused.rampart_error.as_deref(), Some("rate-limited"));
    // `api`: five successes...
    for _ in 0..5 {
        assert_eq!(send(addr, "/api", None).await.status, 200);
    }
    // ...a timeout (the client's deadline, which the fallback does not cover, and which says
    // nothing of the endpoint: its breaker does not count it)...
    upstream.set_behavior(Behavior::Hang);
    let expired = send(addr, "/api", Some(200)).await;
    assert_eq!(expired.rampart_error.as_deref(), Some("deadline-exceeded"));
    // ...a timeout the fallback answers...
    let covered = send(addr, "/api", None).await;
    assert_eq!(
        (covered.status, covered.fallback.as_deref()),
        (StatusCode::OK, Some("timeout"))
    );
    // ...three upstream failures, the fourth failure in a row opening the breaker...
    upstream.set_behavior(Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..3 {
        assert_eq!(send(addr, "/api", None).await.status, 500);
    }
    // ...and two requests refused by it.
    for _ in 0..2 {
        let refused = send(addr, "/api", None).await;
        assert_eq!(refused.rampart_error.as_deref(), Some("breaker-open"));
    }

    let admin = admin(&proxy).await;
    let mut stream = Stream::open(admin.addr(), "").await;
    let api = stream.next_of("HystrixCommand", "api").await;
    for (field, value) in [
        ("group", Value::from("app")),
        ("threadPool", "app".into()),
        ("isCircuitBreakerOpen", true.into()),
        ("rollingCountSuccess", 5.into()),
        ("rollingCountFailure", 3.into()),
        ("rollingCountTimeout", 2.into()),
        ("rollingCountShortCircuited", 2.into()),
        ("rollingCountThreadPoolRejected", 0.into()),
        ("rollingCountSemaphoreRejected", 0.into()),
        ("rollingCountBadRequests", 0.into()),
        ("rollingCountFallbackSuccess", 1.into()),
        ("rollingCountFallbackFailure", 0.into()),
        ("rollingCountFallbackRejection", 0.into()),
        // Every error but the one the fallback answered reached the client.
        ("rollingCountExceptionsThrown", 6.into()),
        ("rollingCountFallbackMissing", 6.into()),
        // 3 + 2 + 2 errors of 12, short-circuits included as Hystrix counts them.
        ("errorCount", 7.into()),
        ("requestCount", 12.into()),
        ("errorPercentage", 58.into()),
        ("currentConcurrentExecutionCount", 0.into()),
        ("rollingMaxConcurrentExecutionCount", 1.into()),
        ("propertyValue_executionTimeoutInMilliseconds", 500.into()),
        ("propertyValue_circuitBreakerEnabled", true.into()),
        (
            "propertyValue_circuitBreakerSleepWindowInMilliseconds",
            3_600_000.into(),
        ),
    ] {
        assert_eq!(api[field], value, "{field} in {api}");
    }
    // The timeouts took at least 200 ms and 500 ms: ten executions (the short-circuits never
    // reached the upstream) of at least 700 ms in all; twelve answers in all.
    let latency = |field: &str| api[field].as_u64().unwrap_or_else(|| panic!("{field}"));
    assert!(latency("latencyExecute_mean") >= 70, "{api}");
    assert!(latency("latencyTotal_mean") >= 58, "{api}");
    assert!(
        api["latencyExecute"]["100"].as_u64().unwrap() >= 480,
        "{api}"
    );
    assert!(api["latencyTotal"]["100"].as_u64().unwrap() >= 480, "{api}");

    let limited = stream.next_of("HystrixCommand", "limited").await;
    for (field, value) in [
        ("group", Value::from("tight")),
        ("isCircuitBreakerOpen", false.into()),
        ("rollingCountSuccess", 1.into()),
        ("rollingCountThreadPoolRejected", 1.into()),
        ("rollingCountExceptionsThrown", 1.into()),
        ("errorCount", 1.into()),
        ("requestCount", 2.into()),
        ("errorPercentage", 50.into()),
    ] {
        assert_eq!(limited[field], value, "{field} in {limited}");
    }

    let app = stream.next_of("HystrixThreadPool", "app").await;
    for (field, value) in [
        ("currentActiveCount", 0),
        ("currentQueueSize", 0),
        ("currentPoolSize", 256),
        ("currentMaximumPoolSize", 256),
        // Ten attempts went out: the short-circuited requests never did...
        ("rollingCountThreadsExecuted", 10),
        // ...and nine have an outcome: the one the client's deadline cut short has none.
        ("currentCompletedTaskCount", 9),
        ("currentTaskCount", 9),
        ("rollingCountCommandRejections", 0),
        ("rollingMaxActiveThreads", 1),
        ("propertyValue_queueSizeRejectionThreshold", 128),
    ] {
        assert_eq!(app[field], value, "{field} in {app}");
    }
    let tight = stream.next_of("HystrixThreadPool", "tight").await;
    for (field, value) in [
        ("rollingCountThreadsExecuted", 1),
        ("rollingCountCommandRejections", 1),
        ("currentCompletedTaskCount", 1),
    ] {
        assert_eq!(tight[field], value, "{field} in {tight}");
    }
    admin.shutdown().await;
}

/// Every field `hystrixCommand.js` and `hystrixThreadPool.js` of the Hystrix Dashboard assert or
/// their templates show, with the JSON type they need: numbers are integers, since Turbine sums
/// only those (it keeps any other value as a string).
const COMMAND_FIELDS: &[(&str, &str)] = &[
    ("type", "string"),
    ("name", "string"),
    ("group", "string"),
    ("currentTime", "integer"),
    ("reportingHosts", "integer"),
    ("isCircuitBreakerOpen", "boolean"),
    ("errorPercentage", "integer"),
    ("errorCount", "integer"),
    ("requestCount", "integer"),
    ("rollingCountCollapsedRequests", "integer"),
    ("rollingCountExceptionsThrown", "integer"),
    ("rollingCountFailure", "integer"),
    ("rollingCountFallbackFailure", "integer"),
    ("rollingCountFallbackRejection", "integer"),
    ("rollingCountFallbackSuccess", "integer"),
    ("rollingCountResponsesFromCache", "integer"),
    ("rollingCountSemaphoreRejected", "integer"),
    ("rollingCountShortCircuited", "integer"),
    ("rollingCountSuccess", "integer"),
    ("rollingCountThreadPoolRejected", "integer"),
    ("rollingCountTimeout", "integer"),
    ("rollingCountBadRequests", "integer"),
    ("currentConcurrentExecutionCount", "integer"),
    ("latencyExecute_mean", "integer"),
    ("latencyExecute", "percentiles"),
    ("latencyTotal_mean", "integer"),
    ("latencyTotal", "percentiles"),
    (
        "propertyValue_circuitBreakerRequestVolumeThreshold",
        "integer",
    ),
    (
        "propertyValue_circuitBreakerSleepWindowInMilliseconds",
        "integer",
    ),
    (
        "propertyValue_circuitBreakerErrorThresholdPercentage",
        "integer",
    ),
    ("propertyValue_circuitBreakerForceOpen", "boolean"),
    ("propertyValue_circuitBreakerForceClosed", "boolean"),
    ("propertyValue_executionIsolationStrategy", "string"),
    (
        "propertyValue_executionIsolationThreadTimeoutInMilliseconds",
        "integer",
    ),
    (
        "propertyValue_executionIsolationThreadInterruptOnTimeout",
        "boolean",
    ),
    (
        "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests",
        "integer",
    ),
    (
        "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests",
        "integer",
    ),
    ("propertyValue_requestCacheEnabled", "boolean"),
    ("propertyValue_requestLogEnabled", "boolean"),
    (
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
        "integer",
    ),
];

const THREAD_POOL_FIELDS: &[(&str, &str)] = &[
    ("type", "string"),
    ("name", "string"),
    ("currentTime", "integer"),
    ("reportingHosts", "integer"),
    ("currentActiveCount", "integer"),
    ("currentCompletedTaskCount", "integer"),
    ("currentCorePoolSize", "integer"),
    ("currentLargestPoolSize", "integer"),
    ("currentMaximumPoolSize", "integer"),
    ("currentPoolSize", "integer"),
    ("currentQueueSize", "integer"),
    ("currentTaskCount", "integer"),
    ("rollingCountThreadsExecuted", "integer"),
    ("rollingMaxActiveThreads", "integer"),
    ("propertyValue_queueSizeRejectionThreshold", "integer"),
    (
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds",
        "integer",
    ),
];

fn has_type(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "percentiles" => ["0", "25", "50", "75", "90", "95", "99", "99.5", "100"]
            .iter()
            .all(|p| value[p].is_u64()),
        _ => unreachable!("{kind}"),
    }
}

#[tokio::test]
async fn every_field_the_dashboard_reads_is_there_with_its_type() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy(&upstream).await;
    assert_eq!(
        send(proxy.listeners()[0].addr, "/api", None).await.status,
        200
    );
    let admin = admin(&proxy).await;
    let mut stream = Stream::open(admin.addr(), "").await;

    for (kind, name, fields) in [
        ("HystrixCommand", "api", COMMAND_FIELDS),
        ("HystrixThreadPool", "app", THREAD_POOL_FIELDS),
    ] {
        let event = stream.next_of(kind, name).await;
        for (field, wanted) in fields {
            assert!(
                has_type(&event[field], wanted),
                "{kind}.{field} should be {wanted}: {event}"
            );
        }
    }
    let answer = client()
        .request(
            Request::post(format!("http://{}/hystrix.stream", admin.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    admin.shutdown().await;
}

/// The `currentTime` of two events of the command `api` in a row on a stream opened with
/// `query`: how far apart the rounds were made.
async fn round_gap(admin: SocketAddr, query: &str) -> u64 {
    let mut stream = Stream::open(admin, query).await;
    let time = |event: Value| event["currentTime"].as_u64().expect("a currentTime");
    let first = time(stream.next_of("HystrixCommand", "api").await);
    let second = time(stream.next_of("HystrixCommand", "api").await);
    second - first
}

#[tokio::test]
async fn the_delay_of_the_query_is_honoured_down_to_a_minimum() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy(&upstream).await;
    let admin = admin(&proxy).await;
    // Rounds are made no sooner than asked (a busy machine may only make them later); the
    // wall clock the stream stamps them with is read to the millisecond, hence the margins.
    let asked = round_gap(admin.addr(), "?delay=1500").await;
    assert!(asked >= 1450, "{asked} ms between rounds, 1500 asked");
    let default = round_gap(admin.addr(), "").await;
    assert!(default >= 450, "{default} ms between rounds by default");
    // Below the minimum, the minimum: 100 ms.
    let clamped = round_gap(admin.addr(), "?delay=1").await;
    assert!(clamped >= 90, "{clamped} ms between rounds, 1 asked");
    admin.shutdown().await;
}

#[tokio::test]
async fn the_stream_ends_when_the_admin_api_stops() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy(&upstream).await;
    let admin = admin(&proxy).await;
    let mut stream = Stream::open(admin.addr(), "?delay=100").await;
    assert!(stream.next().await.is_some());
    admin.shutdown().await;
    // What was sent before the stop may still be read; then the stream ends.
    tokio::time::timeout(Duration::from_secs(5), async {
        while stream.next().await.is_some() {}
    })
    .await
    .expect("the stream ends within 5 s of the stop");
}
