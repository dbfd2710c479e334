//! The admin API over real sockets, beside a proxy that served known traffic.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use rampart_admin::{Admin, Reload, ReloadError};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, ProxyBuilder, Upstream};
use serde_json::json;

use common::*;

const TOKEN: &str = "s3cret-token";

fn admin_config() -> rampart_config::Admin {
    rampart_config::Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_env: Some("RAMPART_ADMIN_TOKEN".into()),
        ..Default::default()
    }
}

fn no_reload() -> Reload {
    Arc::new(|| Err(ReloadError::Refused("no reload in this test".into())))
}

async fn admin(proxy: &Proxy, token: Option<&str>, reload: Reload) -> Admin {
    Admin::start_with_token(
        &admin_config(),
        token.map(str::to_owned),
        proxy.handle(),
        reload,
    )
    .await
    .unwrap()
}

/// A proxy with one route `api` to one endpoint, not retried, whose breaker opens at the third
/// failure in a row and stays open for the test.
async fn proxy_to(upstream: &Upstream) -> Proxy {
    ProxyBuilder::to(&[upstream.addr()])
        .route("name = \"api\"\n[routes.retry]\nattempts = 1")
        .upstream(
            "[upstreams.app.breaker]\nconsecutive_failures = 3\nopen_for = \"1h\"\n\
             open_for_max = \"1h\"",
        )
        .start()
        .await
}

/// 5 successes, 3 failures (which open the breaker), then 1 request refused as breaker-open.
async fn known_traffic(proxy: &Proxy, upstream: &Upstream) {
    let addr = proxy.listeners()[0].addr;
    for _ in 0..5 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    upstream.set_behavior(Behavior::Fail(StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..3 {
        assert_eq!(get(addr, "/").await.status, 500);
    }
    let refused = get(addr, "/").await;
    assert_eq!(refused.rampart_error.as_deref(), Some("breaker-open"));
}

/// The value of the series `series` (name and labels, exactly as written) in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_have_every_family_with_the_traffic_sent() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    known_traffic(&proxy, &upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;

    let metrics = get(admin.addr(), "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        metrics.content_type
    );
    let text = &metrics.body;
    for (family, kind) in [
        ("rampart_requests", "counter"),
        ("rampart_request_duration_seconds", "histogram"),
        ("rampart_upstream_requests", "counter"),
        ("rampart_breaker_state", "gauge"),
        ("rampart_breaker_transitions", "counter"),
        ("rampart_retries", "counter"),
        ("rampart_retry_budget_exhausted", "counter"),
        ("rampart_hedges", "counter"),
        ("rampart_endpoint_healthy", "gauge"),
        ("rampart_inflight", "gauge"),
        ("rampart_concurrency_limit", "gauge"),
        ("rampart_outbox_pending", "gauge"),
        ("rampart_outbox_delivered", "counter"),
        ("rampart_outbox_dead", "counter"),
    ] {
        let line = format!("# TYPE {family} {kind}");
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }

    let route = |outcome: &str| {
        value(
            text,
            &format!("rampart_requests_total{{route=\"api\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(route("success"), 5.0);
    assert_eq!(route("failure"), 3.0);
    assert_eq!(route("rejected"), 1.0);
    assert_eq!(route("fallback"), 0.0);
    assert_eq!(
        value(
            text,
            "rampart_request_duration_seconds_count{route=\"api\"}"
        ),
        9.0
    );
    let endpoint = format!("upstream=\"app\",endpoint=\"{}\"", upstream.addr());
    let attempts = |outcome: &str| {
        value(
            text,
            &format!("rampart_upstream_requests_total{{{endpoint},outcome=\"{outcome}\"}}"),
        )
    };
    // The refused request never reached the endpoint.
    assert_eq!(attempts("success"), 5.0);
    assert_eq!(attempts("failure"), 3.0);
    assert_eq!(
        value(text, &format!("rampart_breaker_state{{{endpoint}}}")),
        1.0
    );
    let transitions = |to: &str| {
        value(
            text,
            &format!("rampart_breaker_transitions_total{{{endpoint},to=\"{to}\"}}"),
        )
    };
    assert_eq!(transitions("open"), 1.0);
    assert_eq!(transitions("half-open"), 0.0);
    assert_eq!(
        value(text, &format!("rampart_endpoint_healthy{{{endpoint}}}")),
        1.0
    );
    assert_eq!(value(text, "rampart_inflight{upstream=\"app\"}"), 0.0);
    assert_eq!(
        value(text, "rampart_concurrency_limit{upstream=\"app\"}"),
        256.0
    );
    assert_eq!(value(text, "rampart_retries_total{route=\"api\"}"), 0.0);
    assert_eq!(value(text, "rampart_outbox_pending"), 0.0);
    admin.shutdown().await;
}

#[tokio::test]
async fn retries_are_counted_per_route() {
    let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = ProxyBuilder::to(&[upstream.addr()])
        .route("name = \"api\"\n[routes.retry]\nattempts = 3\nbackoff = { base = \"1ms\", max = \"1ms\" }")
        .upstream("[upstreams.app.breaker]\nenabled = false")
        .start()
        .await;
    assert_eq!(get(proxy.listeners()[0].addr, "/").await.status, 503);
    let admin = admin(&proxy, None, no_reload()).await;
    let text = get(admin.addr(), "/metrics").await.body;
    assert_eq!(value(&text, "rampart_retries_total{route=\"api\"}"), 2.0);
    // Without a breaker, no breaker series.
    assert!(!text.contains("rampart_breaker_state{"), "{text}");
    assert_eq!(upstream.request_count(), 3);
    let stats = get(admin.addr(), "/api/stats").await.json();
    assert_eq!(stats["routes"][0]["retries"], 2);
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "disabled");
}

#[tokio::test]
async fn stats_show_routes_upstreams_and_endpoints() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    known_traffic(&proxy, &upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;

    let answer = get(admin.addr(), "/api/stats").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    let stats = answer.json();
    let route = &stats["routes"][0];
    assert_eq!(route["name"], "api");
    assert_eq!(route["upstream"], "app");
    assert_eq!(
        route["requests"],
        json!({"success": 5, "failure": 3, "fallback": 0, "rejected": 1, "cancelled": 0})
    );
    // Four of the nine answers in the window were not successes.
    let error_rate = route["error_rate"].as_f64().unwrap();
    assert!((error_rate - 4.0 / 9.0).abs() < 1e-9, "{route}");
    assert!(
        route["requests_per_second"].as_f64().unwrap() > 0.0,
        "{route}"
    );
    assert!(route["p50_ms"].as_f64().is_some(), "{route}");
    assert!(route["p99_ms"].as_f64().is_some(), "{route}");
    // The same window by kind: the refusal was a short-circuit.
    assert_eq!(
        route["answers"],
        json!({
            "success": 5, "failure": 3, "timeout": 0, "short_circuited": 1, "rejected": 0,
            "bad_request": 0, "fallback": 0, "peak_in_flight": 1,
        })
    );
    assert_eq!(route["in_flight"], 0);

    let upstream_stats = &stats["upstreams"][0];
    assert_eq!(upstream_stats["name"], "app");
    assert_eq!(upstream_stats["in_flight"], 0);
    assert_eq!(upstream_stats["concurrency_limit"], 256);
    assert_eq!(upstream_stats["queued"], 0);
    assert_eq!(upstream_stats["max_pending"], 128);
    // Eight attempts went out; the refused request took a slot, found no endpoint, went nowhere.
    assert_eq!(
        upstream_stats["admissions"],
        json!({"executed": 8, "refused": 0, "peak_in_flight": 1})
    );
    let endpoint = &upstream_stats["endpoints"][0];
    assert_eq!(endpoint["address"], upstream.addr().to_string());
    assert_eq!(endpoint["state"], "open");
    assert_eq!(endpoint["healthy"], true);
    assert_eq!(endpoint["backup"], false);
    assert_eq!(endpoint["in_flight"], 0);
    assert_eq!(endpoint["attempts"], json!({"success": 5, "failure": 3}));
    let error_rate = endpoint["error_rate"].as_f64().unwrap();
    assert!((error_rate - 3.0 / 8.0).abs() < 1e-9, "{endpoint}");
}

#[tokio::test]
async fn forcing_a_breaker_open_refuses_requests_until_auto() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let listener = proxy.listeners()[0].addr;
    let admin = admin(&proxy, Some(TOKEN), no_reload()).await;
    let path = format!("/api/breakers/app/{}", upstream.addr());

    let forced = post(admin.addr(), &path, Some(TOKEN), r#"{"state": "open"}"#).await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert_eq!(forced.json()["states"], json!(["forced-open"]));
    let refused = get(listener, "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.rampart_error.as_deref(), Some("breaker-open"));
    assert_eq!(upstream.request_count(), 0);
    let text = get(admin.addr(), "/metrics").await.body;
    let endpoint = format!("upstream=\"app\",endpoint=\"{}\"", upstream.addr());
    assert_eq!(
        value(&text, &format!("rampart_breaker_state{{{endpoint}}}")),
        3.0
    );

    let released = post(
        admin.addr(),
        "/api/breakers/app/*",
        Some(TOKEN),
        r#"{"state":"auto"}"#,
    )
    .await;
    assert_eq!(released.status, 200, "{}", released.body);
    assert_eq!(released.json()["states"], json!(["closed"]));
    assert_eq!(get(listener, "/").await.status, 200);
    let stats = get(admin.addr(), "/api/stats").await.json();
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "closed");
}

#[tokio::test]
async fn a_bad_breaker_call_says_what_is_wrong() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, Some(TOKEN), no_reload()).await;
    let path = format!("/api/breakers/app/{}", upstream.addr());

    let bad = post(admin.addr(), &path, Some(TOKEN), r#"{"state": "half"}"#).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains(r#""open" | "closed" | "auto""#)
    );
    assert_eq!(
        post(admin.addr(), &path, Some(TOKEN), "open").await.status,
        400
    );
    // A misspelt field is not passed over: the call is refused and the breaker left alone.
    let typo = post(
        admin.addr(),
        &path,
        Some(TOKEN),
        r#"{"state": "open", "stat": "closed"}"#,
    )
    .await;
    assert_eq!(typo.status, 400, "{}", typo.body);
    assert!(
        typo.body.contains(r#"unknown field \"stat\""#),
        "{}",
        typo.body
    );
    // Nor is a field given twice, whichever of its values was meant.
    let twice = post(
        admin.addr(),
        &path,
        Some(TOKEN),
        r#"{"state": "open", "state": "closed"}"#,
    )
    .await;
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert!(
        twice.body.contains(r#"the field \"state\" is given twice"#),
        "{}",
        twice.body
    );
    let stats = get(admin.addr(), "/api/stats").await.json();
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "closed");
    let huge = format!(r#"{{"state": "open", "pad": "{}"}}"#, "x".repeat(100_000));
    let huge = post(admin.addr(), &path, Some(TOKEN), &huge).await;
    assert_eq!(huge.status, 413);
    assert!(huge.body.contains("65536 bytes allowed"), "{}", huge.body);
    let unknown = post(
        admin.addr(),
        "/api/breakers/nope/*",
        Some(TOKEN),
        r#"{"state":"open"}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("nope"), "{}", unknown.body);
    let unknown = post(
        admin.addr(),
        "/api/breakers/app/127.0.0.1:1",
        Some(TOKEN),
        r#"{"state":"open"}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(get(admin.addr(), "/api/nothing").await.status, 404);
    assert_eq!(get(admin.addr(), "/api/reload").await.status, 405);
}

#[tokio::test]
async fn head_is_answered_wherever_get_is_and_every_405_says_what_is_allowed() {
    use http::Method;

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;
    let addr = admin.addr();

    // Whole answers: the same status and headers as GET, without the body.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/stats",
        "/",
        "/dashboard.js",
        "/targets.json",
        "/api/outbox",
    ] {
        let get = get(addr, path).await;
        let head = request(addr, Method::HEAD, path).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(head.content_type, get.content_type, "HEAD {path}");
        assert_eq!(head.cache_control, get.cache_control, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}: {}", head.body);
        if path != "/metrics" && path != "/api/stats" {
            assert_eq!(
                head.header("content-length"),
                get.header("content-length"),
                "HEAD {path}"
            );
        }
    }
    // Event streams: their headers, and no stream.
    for (path, content_type) in [
        ("/api/events", "text/event-stream"),
        ("/hystrix.stream", "text/event-stream;charset=UTF-8"),
    ] {
        let head = request(addr, Method::HEAD, path).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert_eq!(head.content_type, content_type, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}");
    }

    for (method, path, allow) in [
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::DELETE, "/readyz", "GET, HEAD"),
        (Method::PUT, "/metrics", "GET, HEAD"),
        (Method::POST, "/api/stats", "GET, HEAD"),
        (Method::POST, "/api/events", "GET, HEAD"),
        (Method::POST, "/hystrix.stream", "GET, HEAD"),
        (Method::POST, "/api/outbox", "GET, HEAD"),
        (Method::DELETE, "/api/outbox/dead", "GET, HEAD"),
        (Method::POST, "/", "GET, HEAD"),
        (Method::GET, "/api/reload", "POST"),
        (Method::HEAD, "/api/reload", "POST"),
        (Method::GET, "/api/breakers/app/*", "POST"),
        (Method::GET, "/api/outbox/dead/redrive", "POST"),
    ] {
        let refused = request(addr, method.clone(), path).await;
        assert_eq!(refused.status, 405, "{method} {path}");
        assert_eq!(refused.header("allow"), Some(allow), "{method} {path}");
    }
    admin.shutdown().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_any_case_and_a_401_names_it() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, Some(TOKEN), no_reload()).await;
    let force = |authorization: Option<String>| {
        let mut request =
            http::Request::post(format!("http://{}/api/breakers/app/*", admin.addr()));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        call(
            request
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"state": "auto"}"#,
                )))
                .unwrap(),
        )
    };
    // RFC 9110 (11.1): the scheme is compared without case.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let answer = force(Some(format!("{scheme} {TOKEN}"))).await;
        assert_eq!(answer.status, 200, "{scheme}: {}", answer.body);
    }
    // RFC 9110 (11.6.1): a 401 says which scheme would do.
    for authorization in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer{TOKEN}")),
    ] {
        let answer = force(authorization.clone()).await;
        assert_eq!(answer.status, 401, "{authorization:?}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Bearer"),
            "{authorization:?}"
        );
    }
    admin.shutdown().await;
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let body = r#"{"state": "open"}"#;

    let without = admin(&proxy, None, no_reload()).await;
    let refused = post(without.addr(), "/api/breakers/app/*", Some(TOKEN), body).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("RAMPART_ADMIN_TOKEN"),
        "{}",
        refused.body
    );
    assert_eq!(
        post(without.addr(), "/api/reload", None, "").await.status,
        403
    );

    let with = admin(&proxy, Some(TOKEN), no_reload()).await;
    assert_eq!(
        post(with.addr(), "/api/breakers/app/*", None, body)
            .await
            .status,
        401
    );
    let wrong = post(
        with.addr(),
        "/api/breakers/app/*",
        Some("s3cret-tokem"),
        body,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        post(with.addr(), "/api/reload", Some("nope"), "")
            .await
            .status,
        401
    );
    // Nothing was forced by the refused calls.
    let stats = get(with.addr(), "/api/stats").await.json();
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "closed");
    assert_eq!(
        post(with.addr(), "/api/breakers/app/*", Some(TOKEN), body)
            .await
            .status,
        200
    );
    // Reading needs no token.
    assert_eq!(get(with.addr(), "/healthz").await.status, 200);
    assert_eq!(get(with.addr(), "/readyz").await.status, 200);
}

#[tokio::test]
async fn reload_calls_the_callback_and_answers_what_it_said() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let reload: Reload = {
        let calls = calls.clone();
        Arc::new(move || match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Ok("routes: added b | upstreams: unchanged".into()),
            1 => Err(ReloadError::Invalid(
                "rampart.toml:3:11: routes[0].timeout: no unit".into(),
            )),
            _ => Err(ReloadError::Refused(
                "listener changes need a restart".into(),
            )),
        })
    };
    let admin = admin(&proxy, Some(TOKEN), reload).await;

    let done = post(admin.addr(), "/api/reload", Some(TOKEN), "").await;
    assert_eq!(done.status, 200);
    assert_eq!(
        done.json(),
        json!({"reloaded": true, "summary": "routes: added b | upstreams: unchanged"})
    );
    let invalid = post(admin.addr(), "/api/reload", Some(TOKEN), "").await;
    assert_eq!(invalid.status, 400);
    assert!(
        invalid.json()["error"]
            .as_str()
            .unwrap()
            .contains("no unit")
    );
    let refused = post(admin.addr(), "/api/reload", Some(TOKEN), "").await;
    assert_eq!(refused.status, 422);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// Three threads: were a reload to block the one that runs it, as each of two blocked reloads
// would, the test's timers still run on the third, and fail it rather than hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_reload_that_blocks_holds_up_neither_the_api_nor_the_reloads_after_it() {
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    // A reload that blocks until told, as one reading a FIFO or a hung network mount does.
    let (entered, mut reloading) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let reload: Reload = Arc::new(move || {
        let _ = entered.send(());
        let _ = released.lock().unwrap().recv();
        Ok("routes: unchanged | upstreams: unchanged".into())
    });
    let admin = admin(&proxy, Some(TOKEN), reload).await;
    let addr = admin.addr();
    // Fails, rather than hangs, when the call is not answered: the blocked reloads are let go
    // first, since a runtime whose threads they hold could never end.
    async fn within<F: std::future::Future>(release: &mpsc::Sender<()>, call: F) -> F::Output {
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(answered) => answered,
            Err(_) => {
                for _ in 0..4 {
                    let _ = release.send(());
                }
                panic!("not answered while a reload blocks");
            }
        }
    }

    let first = tokio::spawn(async move { post(addr, "/api/reload", Some(TOKEN), "").await });
    reloading.recv().await.unwrap();
    assert_eq!(within(&release, get(addr, "/api/stats")).await.status, 200);
    let second = within(&release, post(addr, "/api/reload", Some(TOKEN), "")).await;
    assert_eq!(second.status, 409, "{}", second.body);

    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    // Its turn given back, the next reload runs.
    release.send(()).unwrap();
    assert_eq!(
        within(&release, post(addr, "/api/reload", Some(TOKEN), ""))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn events_bring_the_stats_and_each_breaker_transition() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, Some(TOKEN), no_reload()).await;
    let (mut body, mut buffer) = (events(admin.addr(), "/api/events").await, String::new());

    // The stats come first, at once.
    let (name, stats) = next_event(&mut body, &mut buffer).await;
    assert_eq!(name, "stats");
    assert_eq!(stats["upstreams"][0]["name"], "app");
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "closed");

    let path = format!("/api/breakers/app/{}", upstream.addr());
    let forced = post(admin.addr(), &path, Some(TOKEN), r#"{"state": "open"}"#).await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    // Stats keep coming every second meanwhile: the transition must come within a few of them.
    let transition = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match next_event(&mut body, &mut buffer).await {
                (name, data) if name == "transition" => break data,
                (name, _) => assert_eq!(name, "stats"),
            }
        }
    })
    .await
    .expect("the transition within 5 s");
    assert_eq!(
        transition,
        json!({
            "upstream": "app", "endpoint": upstream.addr().to_string(), "kind": "breaker",
            "from": "closed", "to": "forced-open",
        })
    );
    // The stats that follow show it.
    let stats = loop {
        let (name, data) = next_event(&mut body, &mut buffer).await;
        if name == "stats" {
            break data;
        }
    };
    assert_eq!(
        stats["upstreams"][0]["endpoints"][0]["state"],
        "forced-open"
    );
}

/// The values of every `attribute="..."` in `html`.
fn attributes<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let start = format!("{attribute}=\"");
    html.match_indices(&start)
        .filter_map(|(at, _)| html[at + start.len()..].split('"').next())
        .collect()
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_every_asset_it_loads() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;

    let page = get(admin.addr(), "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert_eq!(page.cache_control.as_deref(), Some("no-cache"));
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);

    // Every file the page loads, by the relative URL it names, so that the same page works
    // under another server's prefix; a `data:` URL (its icon) loads nothing.
    let loaded: Vec<&str> = attributes(&page.body, "src")
        .into_iter()
        .chain(attributes(&page.body, "href"))
        .filter(|url| !url.starts_with("data:"))
        .collect();
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    for url in loaded {
        assert!(
            !url.starts_with('/') && !url.contains(':'),
            "{url} is not relative"
        );
        let asset = get(admin.addr(), &format!("/{url}")).await;
        assert_eq!(asset.status, 200, "{url}");
        assert_eq!(asset.cache_control.as_deref(), Some("no-cache"), "{url}");
        let expected = match url.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => panic!("unexpected asset {url}"),
        };
        assert_eq!(asset.content_type, expected, "{url}");
        assert!(!asset.body.is_empty(), "{url}");
    }
    let script = get(admin.addr(), "/dashboard.js").await.body;
    assert!(
        script.contains("'targets.json'"),
        "the page follows targets.json"
    );
    assert!(
        script.contains("'/api/events'"),
        "the page follows /api/events"
    );

    let targets = get(admin.addr(), "/targets.json").await;
    assert_eq!(targets.status, 200);
    assert_eq!(targets.content_type, "application/json");
    assert_eq!(
        targets.json(),
        json!([{"name": admin.addr().to_string(), "base": "."}])
    );

    assert_eq!(post(admin.addr(), "/", None, "").await.status, 405);
    assert_eq!(get(admin.addr(), "/index.htm").await.status, 404);
    admin.shutdown().await;
}

#[tokio::test]
async fn event_streams_beyond_the_cap_are_refused_until_one_closes() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;

    let mut open = Vec::new();
    for i in 0..rampart_admin::MAX_STREAMS {
        let path = if i % 2 == 0 {
            "/api/events"
        } else {
            "/hystrix.stream"
        };
        open.push(events_any(admin.addr(), path).await);
    }
    for path in ["/api/events", "/hystrix.stream"] {
        let refused = get(admin.addr(), path).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(refused.body.contains("close one"), "{}", refused.body);
    }
    // The rest of the API still answers.
    assert_eq!(get(admin.addr(), "/api/stats").await.status, 200);

    // A reader that goes away frees its place.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..500 {
        let uri = format!("http://{}/api/events", admin.addr());
        let response = client()
            .request(http::Request::get(uri).body(Default::default()).unwrap())
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "no place was freed");
}

#[tokio::test]
async fn event_streams_end_whole_when_the_admin_api_stops() {
    use http_body_util::BodyExt;

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;
    let mut streams = Vec::new();
    for path in ["/api/events", "/hystrix.stream"] {
        let mut body = events_any(admin.addr(), path).await;
        // Under way: something has come.
        assert!(body.frame().await.unwrap().is_ok());
        streams.push((path, body));
    }
    admin.shutdown().await;
    for (path, mut body) in streams {
        // What was written before the end, then the end itself: no error, no cut.
        while let Some(frame) = body.frame().await {
            assert!(frame.is_ok(), "{path} was cut: {frame:?}");
        }
    }
}

/// Opens the event stream at `path` (either kind) and keeps its body.
async fn events_any(addr: std::net::SocketAddr, path: &str) -> hyper::body::Incoming {
    let uri = format!("http://{addr}{path}");
    let response = client()
        .request(http::Request::get(uri).body(Default::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.into_body()
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_no_whole_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;
    for sent in ["", "GET /metrics HTTP/1.1\r\nX: "] {
        let mut stream = tokio::net::TcpStream::connect(admin.addr()).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        // On the paused clock: the admin API's timeout passes long before this one.
        let read = tokio::time::timeout(
            rampart_admin::HEADER_READ_TIMEOUT * 6,
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(read.is_ok(), "a connection that sent {sent:?} stayed open");
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_or_too_slow_is_answered_without_being_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, Some(TOKEN), no_reload()).await;
    let path = format!("/api/breakers/app/{}", upstream.addr());
    // A length over the limit, declared and never sent: 413 from the head alone. A body
    // declared and sent in part: 408 once the head's time has passed for it too.
    for (length, sent, status) in [("999999999", "", "413"), ("100", "{}", "408")] {
        let mut stream = tokio::net::TcpStream::connect(admin.addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: {length}\r\n\r\n{sent}"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // On the paused clock: the admin API's timeout passes long before this one.
        let read = tokio::time::timeout(
            rampart_admin::HEADER_READ_TIMEOUT * 6,
            stream.read_to_end(&mut answer),
        )
        .await;
        assert!(read.is_ok(), "a body of {length} bytes held its connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{length}: {answer}"
        );
    }
    let stats = get(admin.addr(), "/api/stats").await.json();
    assert_eq!(stats["upstreams"][0]["endpoints"][0]["state"], "closed");
}

#[tokio::test]
async fn connections_past_the_admin_apis_limit_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    // A request on a new connection: its answer, or nothing when the connection is closed.
    async fn healthz(addr: std::net::SocketAddr) -> String {
        let mut answer = Vec::new();
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let head = b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
            if stream.write_all(head).await.is_ok() {
                let _ = stream.read_to_end(&mut answer).await;
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = proxy_to(&upstream).await;
    let admin = admin(&proxy, None, no_reload()).await;
    let mut held = Vec::new();
    for _ in 0..rampart_admin::MAX_CONNECTIONS {
        held.push(TcpStream::connect(admin.addr()).await.unwrap());
    }
    // Accepted in the order they came, the held ones first: this one finds no place left.
    assert_eq!(healthz(admin.addr()).await, "");
    held.pop();
    let mut served = false;
    for _ in 0..250 {
        if healthz(admin.addr()).await.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served, "a place freed was not taken up");
}
