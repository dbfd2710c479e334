//! Active health checks over real sockets: an endpoint that fails its checks stops getting
//! traffic, and gets it back once it passes them again; over HTTP and over gRPC.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_test_support::{Behavior, Upstream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use common::*;

/// The longest any condition below may take to come true; it normally takes a few intervals.
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `condition` holds, checking every 10 ms; panics after [`PATIENCE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let polling = async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, polling)
        .await
        .unwrap_or_else(|_| panic!("not within {PATIENCE:?}: {what}"));
}

/// Requests the upstream received other than health checks.
fn traffic(upstream: &Upstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path != "/healthz")
        .count()
}

/// Waits until six requests in a row are answered by the endpoint `b`: the other one has been
/// marked unhealthy.
async fn until_only_b_answers(proxy: &rampart_proxy::Proxy) {
    eventually("a is marked unhealthy", || async {
        let mut from_b = 0;
        while from_b < 6 && get(proxy, "/work").await.body() == "b" {
            from_b += 1;
        }
        from_b == 6
    })
    .await;
}

const HTTP_CHECKS: &str = "balance = \"round-robin\"\n\
    [upstreams.app.breaker]\nenabled = false\n\
    [upstreams.app.health]\npath = \"/healthz\"\ninterval = \"250ms\"\ntimeout = \"250ms\"\n\
    unhealthy_after = 2\nhealthy_after = 3";

#[tokio::test]
async fn an_endpoint_failing_its_checks_loses_its_traffic_until_it_passes_again() {
    let a = Upstream::start(Behavior::ok("a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("b")).await.unwrap();
    // The breaker is off and nothing is retried: only the health checks can take `a` out.
    let proxy = simple(
        &[a.addr(), b.addr()],
        "[routes.retry]\nattempts = 1",
        HTTP_CHECKS,
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(&proxy, "/work").await.status(), 200);
    }
    assert_eq!((traffic(&a), traffic(&b)), (2, 2));
    // Checks are sent as GETs of the path, with the endpoint as Host.
    eventually("a is checked", || async {
        a.request_count() > traffic(&a) as u64
    })
    .await;
    let check = a
        .requests()
        .into_iter()
        .find(|r| r.path == "/healthz")
        .unwrap();
    assert_eq!(check.method, hyper::Method::GET);
    assert_eq!(check.headers["host"], a.addr().to_string().as_str());

    // `a` fails everything, its checks included: once they have failed twice in a row, every
    // request goes to `b`.
    a.set_behavior(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE));
    until_only_b_answers(&proxy).await;
    let before = traffic(&a);
    for _ in 0..20 {
        let response = get(&proxy, "/work").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), "b");
    }
    assert_eq!(traffic(&a), before, "an unhealthy endpoint gets no traffic");
    let checks_so_far = a.request_count() - before as u64;

    // `a` recovers: after three passed checks in a row it is back in turn.
    a.set_behavior(Behavior::ok("a"));
    eventually("a is marked healthy again", || async {
        get(&proxy, "/work").await.body() == "a"
    })
    .await;
    assert!(
        a.request_count() - traffic(&a) as u64 >= checks_so_far + 3,
        "it took three passed checks"
    );
}

#[tokio::test]
async fn an_endpoint_failing_its_checks_stays_out_across_a_reload_of_its_upstream() {
    let a = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let b = Upstream::start(Behavior::ok("b")).await.unwrap();
    let builder = |upstream: &str| {
        rampart_test_support::ProxyBuilder::to(&[a.addr(), b.addr()])
            .route("[routes.retry]\nattempts = 1")
            .upstream(upstream)
            .upstream(HTTP_CHECKS)
    };
    let proxy = builder("").start().await;
    until_only_b_answers(&proxy).await;

    // The upstream changes (not its checks): its pool is built anew, with new checks.
    let changed = builder("connect_timeout = \"2s\"").toml();
    let config = rampart_config::Config::from_str(&changed, "test.toml").unwrap();
    let summary = proxy.reload(&config).unwrap();
    assert_eq!(summary.upstreams.changed, ["app"]);
    let before = traffic(&a);
    for _ in 0..20 {
        assert_eq!(get(&proxy, "/work").await.body(), "b");
    }
    assert_eq!(traffic(&a), before, "the failing endpoint stayed out");
}

#[tokio::test]
async fn an_endpoint_brought_back_by_removing_its_checks_is_told_healthy() {
    let a = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let b = Upstream::start(Behavior::ok("b")).await.unwrap();
    let builder = |checks: &str| {
        rampart_test_support::ProxyBuilder::to(&[a.addr(), b.addr()])
            .route("[routes.retry]\nattempts = 1")
            .upstream(checks)
    };
    let proxy = builder(HTTP_CHECKS).start().await;
    until_only_b_answers(&proxy).await;

    // Without checks nothing holds `a` out: the dashboard and the gauge hear it is back.
    let mut changes = proxy.handle().changes();
    let config = rampart_config::Config::from_str(&builder("").toml(), "test.toml").unwrap();
    proxy.reload(&config).unwrap();
    let change = changes.try_recv().expect("the change is told");
    assert_eq!(change.endpoint, a.addr().to_string());
    assert_eq!(
        change.kind,
        rampart_proxy::stats::ChangeKind::Health { healthy: true }
    );
    assert!(changes.try_recv().is_err(), "only `a` changed");
}

/// An endpoint that fails, opening its breaker for a minute (only the checks can bring it back
/// sooner), and fails at least one check, `unhealthy_after` in a row marking it unhealthy; then
/// it answers again: once its checks have passed twice, the next request is a probe, well
/// inside the minute.
async fn back_by_its_checks_within_the_open_period(unhealthy_after: u32) {
    let a = Upstream::start(Behavior::ok("a")).await.unwrap();
    let proxy = simple(
        &[a.addr()],
        "[routes.retry]\nattempts = 1",
        &format!(
            "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\n\
             [upstreams.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
             timeout = \"100ms\"\nunhealthy_after = {unhealthy_after}\nhealthy_after = 2"
        ),
    )
    .await;
    a.set_behavior(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(get(&proxy, "/work").await.status(), 503);
    assert_eq!(error_of(&get(&proxy, "/work").await), Some("breaker-open"));
    let checks = a.request_count() - traffic(&a) as u64;
    eventually("a fails a check", || async {
        a.request_count() - traffic(&a) as u64 > checks
    })
    .await;

    a.set_behavior(Behavior::ok("a"));
    eventually("a answers again", || async {
        get(&proxy, "/work").await.body() == "a"
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_back_by_its_checks_need_not_wait_out_its_breakers_open_period() {
    back_by_its_checks_within_the_open_period(1).await;
}

#[tokio::test]
async fn an_endpoint_down_between_two_checks_need_not_wait_out_its_breakers_open_period() {
    // As a quick redeploy: one check failed, far too few to mark `a` unhealthy; the passes
    // after it bring `a` back all the same.
    back_by_its_checks_within_the_open_period(1000).await;
}

#[tokio::test]
async fn an_endpoint_a_reload_adds_waits_for_its_first_check() {
    let a = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let b = Upstream::start(Behavior::ok("b")).await.unwrap();
    let builder = |endpoints: &[SocketAddr]| {
        rampart_test_support::ProxyBuilder::to(endpoints)
            .route("[routes.retry]\nattempts = 1")
            .upstream(HTTP_CHECKS)
    };
    let proxy = builder(&[b.addr()]).start().await;
    assert_eq!(get(&proxy, "/work").await.body(), "b");

    // `a` joins failing: traffic flows to `b` meanwhile, and `a` takes none before a check has
    // passed (round-robin would give it every other request at once).
    let config =
        rampart_config::Config::from_str(&builder(&[b.addr(), a.addr()]).toml(), "test.toml")
            .unwrap();
    proxy.reload(&config).unwrap();
    for _ in 0..10 {
        let response = get(&proxy, "/work").await;
        assert_eq!(response.body(), "b");
    }
    assert_eq!(
        traffic(&a),
        0,
        "an endpoint not yet checked takes no traffic"
    );

    // Its checks pass: it is in.
    a.set_behavior(Behavior::ok("a"));
    eventually("a takes traffic", || async {
        get(&proxy, "/work").await.body() == "a"
    })
    .await;
}

#[tokio::test]
async fn with_every_endpoint_unhealthy_traffic_still_flows() {
    let a = Upstream::start(Behavior::ok("a")).await.unwrap();
    let proxy = simple(&[a.addr()], "", HTTP_CHECKS).await;
    // A check that fails everywhere (here: any path but /healthz would do) says more about the
    // check than about the endpoints: health is then ignored, and the breakers decide.
    a.set_behavior(Behavior::Fail(StatusCode::NOT_FOUND));
    eventually("a has failed two checks", || async {
        a.requests().iter().filter(|r| r.path == "/healthz").count() >= 4
    })
    .await;
    let response = get(&proxy, "/work").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(&response), None, "the upstream's own answer");
}

#[tokio::test]
async fn checks_stop_when_the_proxy_shuts_down_or_is_dropped() {
    for shutdown in [true, false] {
        let a = Upstream::start(Behavior::ok("a")).await.unwrap();
        let proxy = simple(&[a.addr()], "", HTTP_CHECKS).await;
        eventually("a is checked", || async { a.request_count() >= 2 }).await;
        if shutdown {
            proxy.shutdown().await;
        } else {
            drop(proxy);
        }
        let after = a.request_count();
        // Three intervals: a check still running would have sent more. One already on its way
        // when the proxy stopped may still arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.request_count() <= after + 1, "shutdown {shutdown}");
    }
}

// === a gRPC upstream answering grpc.health.v1 ===

/// An h2c server whose `grpc.health.v1.Health/Check` answers SERVING or NOT_SERVING (in a
/// message with `grpc-status` in the trailers), and every other call OK with no message
/// (trailers-only).
struct GrpcUpstream {
    addr: SocketAddr,
    serving: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

impl GrpcUpstream {
    async fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (serving, checks, calls) = (serving.clone(), checks.clone(), calls.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let (serving, checks, calls) = (serving.clone(), checks.clone(), calls.clone());
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let answer = answer(request.uri().path(), &serving, &checks, &calls);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    connections.spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            }
        });
        GrpcUpstream {
            addr,
            serving,
            checks,
            calls,
            task,
        }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    path: &str,
    serving: &AtomicBool,
    checks: &AtomicU64,
    calls: &AtomicU64,
) -> Response<Body> {
    let grpc = |body: Body| {
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    };
    if path == "/grpc.health.v1.Health/Check" {
        checks.fetch_add(1, Ordering::SeqCst);
        // HealthCheckResponse { status: SERVING (1) or NOT_SERVING (2) }, framed.
        let status = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
        let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        grpc(
            Full::new(message)
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed_unsync(),
        )
    } else {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = grpc(Full::new(Bytes::new()).boxed_unsync());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("0"));
        response
    }
}

/// One unary call through the proxy, answered OK.
async fn call(proxy: &rampart_proxy::Proxy) {
    let request = request(proxy, "/demo.Orders/Get")
        .method("POST")
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = send(&h2c(), request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "0");
}

#[tokio::test]
async fn a_grpc_endpoint_not_serving_loses_its_traffic_until_it_serves_again() {
    let a = GrpcUpstream::start().await;
    let b = GrpcUpstream::start().await;
    let proxy = simple(
        &[a.addr, b.addr],
        "",
        "protocol = \"grpc\"\nbalance = \"round-robin\"\n\
         [upstreams.app.health]\ngrpc = true\ninterval = \"250ms\"\ntimeout = \"250ms\"\n\
         unhealthy_after = 2\nhealthy_after = 2",
    )
    .await;
    eventually("both are checked", || async {
        a.checks.load(Ordering::SeqCst) >= 1 && b.checks.load(Ordering::SeqCst) >= 1
    })
    .await;
    for _ in 0..4 {
        call(&proxy).await;
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 2);
    assert_eq!(b.calls.load(Ordering::SeqCst), 2);

    a.serving.store(false, Ordering::SeqCst);
    let checks = a.checks.load(Ordering::SeqCst);
    // A check counted after the switch was answered NOT_SERVING; the third one's arrival means
    // the second was answered (an endpoint's checks come one after the other).
    eventually("a has answered NOT_SERVING twice", || async {
        a.checks.load(Ordering::SeqCst) >= checks + 3
    })
    .await;
    let before = a.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        call(&proxy).await;
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before,
        "NOT_SERVING gets no traffic"
    );

    a.serving.store(true, Ordering::SeqCst);
    eventually("a serves again", || async {
        call(&proxy).await;
        a.calls.load(Ordering::SeqCst) > before
    })
    .await;
}
