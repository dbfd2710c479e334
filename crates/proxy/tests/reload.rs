//! Reload: a new configuration reaches new requests on new and open connections, requests in
//! flight finish as they began, breakers of unchanged endpoints keep their state, and a refused
//! reload changes nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rampart_config::Config;
use rampart_proxy::stats::ChangeKind;
use rampart_proxy::{Error, Proxy};
use rampart_test_support::{Behavior, Upstream};
use tokio::net::TcpStream;

use common::*;

fn config(toml: &str) -> Config {
    Config::from_str(toml, "test.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

const LISTENER: &str = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n";

/// A route named `name` for `/name...` to the upstream `name` at `endpoint`.
fn route(name: &str, endpoint: SocketAddr) -> String {
    route_with(name, endpoint, "")
}

/// [`route`] with `extra` lines in the route's table.
fn route_with(name: &str, endpoint: SocketAddr, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nupstream = \"{name}\"\n{extra}\n\n\
         [upstreams.{name}]\nendpoints = [\"{endpoint}\"]\n\n"
    )
}

#[tokio::test]
async fn a_route_added_by_reload_serves() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("a", a.addr()))).await;
    assert_eq!(error_of(&get(&proxy, "/b").await), Some("no-route"));

    let summary = proxy
        .reload(&config(&format!(
            "{LISTENER}{}{}",
            route("a", a.addr()),
            route("b", b.addr())
        )))
        .unwrap();
    assert_eq!(summary.routes.added, ["b"]);
    assert_eq!(summary.upstreams.added, ["b"]);
    assert!(summary.routes.changed.is_empty() && summary.upstreams.changed.is_empty());

    let response = get(&proxy, "/b/x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "from b");
    assert_eq!(b.requests()[0].path, "/b/x");
    assert_eq!(get(&proxy, "/a").await.body(), "from a");
}

#[tokio::test]
async fn a_route_removed_by_reload_answers_no_route() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let proxy = proxy(&format!(
        "{LISTENER}{}{}",
        route("a", a.addr()),
        route("b", b.addr())
    ))
    .await;
    assert_eq!(get(&proxy, "/b").await.body(), "from b");

    let summary = proxy
        .reload(&config(&format!("{LISTENER}{}", route("a", a.addr()))))
        .unwrap();
    assert_eq!(summary.routes.removed, ["b"]);
    assert_eq!(summary.upstreams.removed, ["b"]);

    let response = get(&proxy, "/b").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_of(&response), Some("no-route"));
    assert_eq!(b.request_count(), 1);
    assert_eq!(get(&proxy, "/a").await.body(), "from a");
}

#[tokio::test]
async fn a_request_in_flight_finishes_with_the_upstream_it_started_with() {
    let old = Upstream::start(Behavior::Slow(Duration::from_secs(2)))
        .await
        .unwrap();
    let new = Upstream::start(Behavior::ok("from new")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("app", old.addr()))).await;
    let uri = format!("http://{}/app/slow", addr(&proxy));
    let in_flight = tokio::spawn(async move {
        send(
            &http1(),
            hyper::Request::get(uri).body(Default::default()).unwrap(),
        )
        .await
    });
    old.wait_for_requests(1).await;

    // The upstream `app` now has another endpoint: its pool is replaced.
    let summary = proxy
        .reload(&config(&format!("{LISTENER}{}", route("app", new.addr()))))
        .unwrap();
    assert_eq!(summary.upstreams.changed, ["app"]);
    assert!(
        !in_flight.is_finished(),
        "the request ended before the reload"
    );

    assert_eq!(get(&proxy, "/app/fast").await.body(), "from new");
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "ok");
    assert_eq!(old.request_count(), 1);
    assert_eq!(new.requests()[0].path, "/app/fast");
}

#[tokio::test]
async fn an_open_keep_alive_connection_keeps_working_and_sees_the_new_routes() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("a", a.addr()))).await;

    // One connection, kept open across the reload.
    let tcp = TcpStream::connect(addr(&proxy)).await.unwrap();
    let (mut connection, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(driver);
    let mut get_on_it = async |path: &str| {
        let request = hyper::Request::get(path)
            .header("host", "proxy")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = connection.send_request(request).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    assert_eq!(get_on_it("/a").await, (StatusCode::OK, "from a".into()));

    proxy
        .reload(&config(&format!(
            "{LISTENER}{}{}",
            route("a", a.addr()),
            route("b", b.addr())
        )))
        .unwrap();

    assert_eq!(get_on_it("/b").await, (StatusCode::OK, "from b".into()));
    assert_eq!(get_on_it("/a").await, (StatusCode::OK, "from a".into()));
    assert!(!driver.is_finished(), "the connection was closed");
}

/// The upstream `app` with one endpoint per address, a breaker that opens at the first failure
/// and stays open, and no retries.
fn breaking_app(endpoints: &[SocketAddr], breaker: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/app\" }}\nupstream = \"app\"\n\
         retry = {{ attempts = 1 }}\n\n\
         [upstreams.app]\nendpoints = [{}]\n\n\
         [upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"1h\"\nopen_for_max = \"1h\"\n{breaker}\n\n",
        endpoints.join(", ")
    )
}

/// An upstream answering every request 503, and a proxy routing `/app` to it behind a breaker
/// (`breaking_app`).
async fn failing_app() -> (Upstream, Proxy) {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let proxy = proxy(&format!(
        "{LISTENER}{}",
        breaking_app(&[failing.addr()], "")
    ))
    .await;
    (failing, proxy)
}

/// Trips the breaker of `failing`, the only endpoint of `app`.
async fn trip(proxy: &Proxy, failing: &Upstream) {
    let response = get(proxy, "/app").await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_of(&response), None, "the upstream's own 503");
    assert_eq!(error_of(&get(proxy, "/app").await), Some("breaker-open"));
    assert_eq!(failing.request_count(), 1);
}

#[tokio::test]
async fn a_tripped_breaker_stays_open_across_a_reload_of_other_routes_and_upstreams() {
    let failing = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
        .await
        .unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let app = breaking_app(&[failing.addr()], "");
    let proxy = proxy(&format!("{LISTENER}{app}{}", route("other", other.addr()))).await;
    trip(&proxy, &failing).await;

    let summary = proxy
        .reload(&config(&format!(
            "{LISTENER}{app}{}connect_timeout = \"2s\"\n",
            route("other", other.addr())
        )))
        .unwrap();
    assert_eq!(summary.upstreams.changed, ["other"]);
    assert!(summary.routes.is_empty());

    assert_eq!(error_of(&get(&proxy, "/app").await), Some("breaker-open"));
    assert_eq!(failing.request_count(), 1);
    assert_eq!(get(&proxy, "/other").await.body(), "other");
}

#[tokio::test]
async fn a_changed_upstream_keeps_the_breakers_of_its_endpoints_unless_the_breaker_changed() {
    let (failing, proxy) = failing_app().await;
    let healthy = Upstream::start(Behavior::ok("healthy")).await.unwrap();
    trip(&proxy, &failing).await;

    // Another endpoint joins: the tripped one keeps its open breaker, so all goes to the new one.
    let both = [failing.addr(), healthy.addr()];
    let summary = proxy
        .reload(&config(&format!("{LISTENER}{}", breaking_app(&both, ""))))
        .unwrap();
    assert_eq!(summary.upstreams.changed, ["app"]);
    assert_eq!(summary.breakers_kept, 1);
    for _ in 0..4 {
        assert_eq!(get(&proxy, "/app").await.body(), "healthy");
    }
    assert_eq!(failing.request_count(), 1);

    // New breaker settings make new breakers: the failing endpoint is tried again.
    let mut changes = proxy.handle().changes();
    let summary = proxy
        .reload(&config(&format!(
            "{LISTENER}{}",
            breaking_app(&both, "min_calls = 5")
        )))
        .unwrap();
    assert_eq!(summary.breakers_kept, 0);
    // Told as a transition, as any recovery is: to the event stream and the counter.
    let change = changes.try_recv().expect("the recovery is told");
    assert_eq!(change.endpoint, failing.addr().to_string());
    assert_eq!(
        change.kind,
        ChangeKind::Breaker {
            from: "open",
            to: "closed"
        }
    );
    assert!(
        changes.try_recv().is_err(),
        "only the tripped endpoint changed"
    );
    let closed = format!(
        "rampart_breaker_transitions_total{{upstream=\"app\",endpoint=\"{}\",to=\"closed\"}} 1",
        failing.addr()
    );
    let text = metrics(&proxy);
    assert!(text.contains(&closed), "{text}");
    // Said, since the operator may not expect it while tuning a breaker in an incident.
    assert_eq!(summary.ejections_ended, 1);
    assert!(
        summary
            .to_string()
            .contains("ejections ended by new breaker settings: 1"),
        "{summary}"
    );
    for _ in 0..2 {
        get(&proxy, "/app").await;
    }
    assert_eq!(failing.request_count(), 2);
}

#[tokio::test]
async fn an_endpoint_forced_open_stays_so_when_new_breaker_settings_make_new_breakers() {
    let drained = Upstream::start(Behavior::ok("drained")).await.unwrap();
    let serving = Upstream::start(Behavior::ok("serving")).await.unwrap();
    let both = [drained.addr(), serving.addr()];
    let proxy = proxy(&format!("{LISTENER}{}", breaking_app(&both, ""))).await;
    let handle = proxy.handle();
    for breaker in handle
        .breakers("app", Some(&drained.addr().to_string()))
        .unwrap()
    {
        breaker.force_open();
    }

    let summary = proxy
        .reload(&config(&format!(
            "{LISTENER}{}",
            breaking_app(&both, "min_calls = 5")
        )))
        .unwrap();
    assert_eq!(summary.breakers_kept, 0);
    assert_eq!(summary.forced_kept, 1);
    assert!(
        summary.to_string().contains("forced states kept: 1"),
        "{summary}"
    );
    for _ in 0..6 {
        assert_eq!(get(&proxy, "/app").await.body(), "serving");
    }
    assert_eq!(drained.request_count(), 0);
    // Forced once, by the operator: the new breaker's taking the force over is no transition.
    let forced = format!(
        "rampart_breaker_transitions_total{{upstream=\"app\",endpoint=\"{}\",to=\"forced-open\"}} 1\n",
        drained.addr()
    );
    assert!(metrics(&proxy).contains(&forced), "{}", metrics(&proxy));
}

/// The metrics after a request to the route `app`, whose upstream never answers, timed out
/// 300 ms after it was sent, a reload having meanwhile changed `[upstreams.app]`'s lines from
/// `before` to `after`; and the upstream's address.
async fn reloaded_while_in_flight(before: &str, after: &str) -> (String, SocketAddr) {
    let hanging = Upstream::start(Behavior::Hang).await.unwrap();
    let app = |lines: &str| {
        format!(
            "{LISTENER}[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/app\" }}\n\
             upstream = \"app\"\ntimeout = \"300ms\"\nretry = {{ attempts = 1 }}\n\n\
             [upstreams.app]\nendpoints = [\"{}\"]\n{lines}\n",
            hanging.addr()
        )
    };
    let proxy = proxy(&app(before)).await;
    let (answer, ()) = tokio::join!(get(&proxy, "/app"), async {
        hanging.wait_for_requests(1).await;
        proxy.reload(&config(&app(after))).unwrap();
    });
    assert_eq!(error_of(&answer), Some("timeout"));
    (metrics(&proxy), hanging.addr())
}

#[tokio::test]
async fn a_breaker_a_reload_replaced_no_longer_moves_the_series() {
    // The attempt in flight on the breaker that new settings replace: its timeout trips that
    // breaker, which no longer serves.
    let breaker = "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"1h\"\nopen_for_max = \"1h\"\n";
    let (text, endpoint) =
        reloaded_while_in_flight(breaker, &format!("{breaker}min_calls = 5\n")).await;
    let state = format!("rampart_breaker_state{{upstream=\"app\",endpoint=\"{endpoint}\"}} 0\n");
    assert!(text.contains(&state), "{text}");
    let opened = format!(
        "rampart_breaker_transitions_total{{upstream=\"app\",endpoint=\"{endpoint}\",to=\"open\"}} 0\n"
    );
    assert!(text.contains(&opened), "{text}");
}

#[tokio::test]
async fn a_reload_that_would_leave_no_route_is_refused() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("a", a.addr()))).await;

    // As a file cut short after its listeners would read.
    let err = proxy.reload(&config(LISTENER)).unwrap_err();
    assert!(matches!(err, Error::NoRoutesLeft), "{err}");
    assert_eq!(get(&proxy, "/a").await.body(), "from a");
}

#[tokio::test]
async fn a_listener_change_is_refused_and_the_old_configuration_keeps_serving() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("a", a.addr()))).await;

    let refused = proxy.reload(&config(&format!(
        "{LISTENER}[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:1\"\n\n{}{}",
        route_with("a", a.addr(), "listener = \"listener-0\""),
        route_with("b", b.addr(), "listener = \"listener-0\""),
    )));
    let err = refused.unwrap_err();
    assert!(matches!(err, Error::ListenersChanged(_)), "{err}");
    assert!(
        err.to_string()
            .contains("listener changes need a restart (added second)"),
        "{err}"
    );

    // A listener changed in place: the keys are named.
    let refused = proxy.reload(&config(&format!(
        "{}{}",
        LISTENER.replace(
            "[[listeners]]",
            "[[listeners]]\nmax_connections = 7\nidle_timeout = \"5s\""
        ),
        route("a", a.addr()),
    )));
    let err = refused.unwrap_err().to_string();
    assert!(
        err.contains("(changed listener-0 (max_connections, idle_timeout))"),
        "{err}"
    );

    assert_eq!(get(&proxy, "/a").await.body(), "from a");
    assert_eq!(error_of(&get(&proxy, "/b").await), Some("no-route"));
    assert_eq!(b.request_count(), 0);
    assert_eq!(proxy.listeners().len(), 1);
}

#[tokio::test]
async fn runtime_changes_are_named_as_needing_a_restart() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let proxy = proxy(&format!("{LISTENER}{}", route("a", a.addr()))).await;

    let summary = proxy
        .reload(&config(&format!("{LISTENER}{}", route("a", a.addr()))))
        .unwrap();
    assert!(summary.is_empty());
    assert_eq!(summary.to_string(), "no change");

    let shorter_drain = config(&format!(
        "[runtime]\ndrain_timeout = \"1s\"\n\n{LISTENER}{}",
        route("a", a.addr())
    ));
    let summary = proxy.reload(&shorter_drain).unwrap();
    assert_eq!(summary.needs_restart, ["[runtime]"]);
    assert_eq!(
        summary.to_string(),
        "routes: unchanged | upstreams: unchanged | [runtime] changed: not applied until a restart"
    );
    assert_eq!(get(&proxy, "/a").await.body(), "from a");

    // Not applied, so not forgotten: the next reload of the same file says it again, and the
    // configuration served is still the one running.
    let summary = proxy.reload(&shorter_drain).unwrap();
    assert_eq!(summary.needs_restart, ["[runtime]"]);
    assert_ne!(
        proxy.handle().config().runtime.drain_timeout,
        Duration::from_secs(1)
    );
}

#[tokio::test]
async fn what_a_reload_removes_leaves_the_metrics_and_what_it_keeps_stays() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("from b")).await.unwrap();
    let gone = Upstream::start(Behavior::ok("gone")).await.unwrap();
    let two = format!(
        "[[routes]]\nname = \"a\"\nmatch = {{ path_prefix = \"/a\" }}\nupstream = \"a\"\n\n\
         [upstreams.a]\nendpoints = [\"{}\", \"{}\"]\n\n",
        a.addr(),
        gone.addr()
    );
    let proxy = proxy(&format!("{LISTENER}{two}{}", route("b", b.addr()))).await;
    for path in ["/a", "/a", "/b"] {
        assert_eq!(get(&proxy, path).await.status(), 200);
    }
    let text = metrics(&proxy);
    assert!(text.contains(&gone.addr().to_string()), "{text}");
    assert!(text.contains("route=\"b\""), "{text}");

    // The route and upstream `b` go, and an endpoint of `a`.
    proxy
        .reload(&config(&format!("{LISTENER}{}", route("a", a.addr()))))
        .unwrap();
    let text = metrics(&proxy);
    assert!(!text.contains(&gone.addr().to_string()), "{text}");
    assert!(!text.contains(&b.addr().to_string()), "{text}");
    assert!(!text.contains("route=\"b\""), "{text}");
    assert!(!text.contains("upstream=\"b\""), "{text}");
    // What stayed keeps its series and its counts.
    let kept = format!("endpoint=\"{}\"", a.addr());
    assert!(text.contains(&kept), "{text}");
    assert!(
        text.contains("rampart_requests_total{route=\"a\",outcome=\"success\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn breakers_disabled_by_a_reload_leave_no_series() {
    let (failing, proxy) = failing_app().await;
    trip(&proxy, &failing).await;
    let state = format!(
        "rampart_breaker_state{{upstream=\"app\",endpoint=\"{}\"}} 1",
        failing.addr()
    );
    assert!(metrics(&proxy).contains(&state), "{}", metrics(&proxy));

    proxy
        .reload(&config(&format!(
            "{LISTENER}{}",
            breaking_app(&[failing.addr()], "enabled = false")
        )))
        .unwrap();
    let text = metrics(&proxy);
    assert!(!text.contains("rampart_breaker_state{"), "{text}");
    assert!(
        !text.contains("rampart_breaker_transitions_total{"),
        "{text}"
    );
    // The endpoint itself stays, and its answers go through.
    assert!(
        text.contains(&format!("endpoint=\"{}\"", failing.addr())),
        "{text}"
    );
    assert_eq!(error_of(&get(&proxy, "/app").await), None);
}

#[tokio::test]
async fn a_reload_keeps_a_routes_live_figures() {
    let slow = Upstream::start(Behavior::Slow(Duration::from_secs(2)))
        .await
        .unwrap();
    let toml = format!("{LISTENER}{}", route("app", slow.addr()));
    let proxy = proxy(&toml).await;
    let uri = format!("http://{}/app", addr(&proxy));
    let in_flight = tokio::spawn(async move {
        send(
            &http1(),
            hyper::Request::get(uri).body(Default::default()).unwrap(),
        )
        .await
    });
    slow.wait_for_requests(1).await;
    let before = proxy.handle().snapshot().routes[0].clone();
    assert_eq!(before.in_flight, 1);

    // Nothing changes: the dashboard's figures must not either.
    proxy.reload(&config(&toml)).unwrap();
    let after = proxy.handle().snapshot().routes[0].clone();
    assert_eq!(after.in_flight, 1, "{after:?}");
    assert_eq!(in_flight.await.unwrap().status(), 200);
    let answered = proxy.handle().snapshot().routes[0].clone();
    assert_eq!(answered.in_flight, 0);
    assert_eq!(answered.answers.success, 1, "{answered:?}");
}

#[tokio::test]
async fn a_refused_reload_leaves_the_metrics_as_they_were() {
    let (failing, proxy) = failing_app().await;
    let joining = Upstream::start(Behavior::ok("joining")).await.unwrap();
    let ghost = Upstream::start(Behavior::ok("ghost")).await.unwrap();
    trip(&proxy, &failing).await;
    let open = format!(
        "rampart_breaker_state{{upstream=\"app\",endpoint=\"{}\"}} 1",
        failing.addr()
    );
    let limit = "rampart_concurrency_limit{upstream=\"app\"} 256";
    let before = metrics(&proxy);
    assert!(before.contains(&open) && before.contains(limit), "{before}");

    let mut changes = proxy.handle().changes();
    // New breakers, a new limit, a new endpoint and a new upstream, and an async route this
    // proxy, started without an outbox, cannot serve: the reload is refused when the routes are
    // built, after the pools.
    let refused = proxy.reload(&config(&format!(
        "{LISTENER}{}[upstreams.app.limits]\nmax_concurrent = 9\n\n{}\
         [outbox]\npath = \"unused\"\n",
        breaking_app(&[failing.addr(), joining.addr()], "min_calls = 5"),
        route_with("ghost", ghost.addr(), "[routes.async]\nenabled = true"),
    )));
    assert!(refused.is_err());

    let after = metrics(&proxy);
    assert!(after.contains(&open), "{after}");
    assert!(after.contains(limit), "{after}");
    assert!(!after.contains("ghost"), "{after}");
    assert!(!after.contains(&joining.addr().to_string()), "{after}");
    assert_eq!(error_of(&get(&proxy, "/app").await), Some("breaker-open"));
    // Nor does a dashboard hear of a change that did not happen.
    assert!(changes.try_recv().is_err(), "{:?}", changes.try_recv());
}

#[tokio::test]
async fn reloads_are_counted_by_outcome_and_the_last_one_says_whether_it_was_applied() {
    let a = Upstream::start(Behavior::ok("from a")).await.unwrap();
    let serving = format!("{LISTENER}{}", route("a", a.addr()));
    let proxy = proxy(&serving).await;
    let counts = |text: &str| {
        ["applied", "refused"].map(|outcome| {
            let series = format!("rampart_config_reloads_total{{outcome=\"{outcome}\"}} ");
            let line = text.lines().find(|line| line.starts_with(&series));
            line.and_then(|line| line[series.len()..].parse::<u64>().ok())
        })
    };
    let last = |text: &str| text.contains("rampart_config_last_reload_successful 1");
    let text = metrics(&proxy);
    assert_eq!(counts(&text), [Some(0), Some(0)], "{text}");
    assert!(last(&text), "{text}");

    // Refused by the proxy (no route left), then before it (the file invalid), then applied.
    assert!(proxy.reload(&config(LISTENER)).is_err());
    proxy.handle().reload_refused();
    let text = metrics(&proxy);
    assert_eq!(counts(&text), [Some(0), Some(2)], "{text}");
    assert!(
        text.contains("rampart_config_last_reload_successful 0"),
        "{text}"
    );
    proxy.reload(&config(&serving)).unwrap();
    let text = metrics(&proxy);
    assert_eq!(counts(&text), [Some(1), Some(2)], "{text}");
    assert!(last(&text), "{text}");
}

#[tokio::test]
async fn limits_a_reload_replaced_no_longer_set_the_gauge() {
    // The attempt in flight under the adaptive limit that a fixed one replaces: its end
    // teaches the old limit, which must not show.
    let (text, _) = reloaded_while_in_flight(
        "limits = { max_concurrent = \"adaptive\" }",
        "limits = { max_concurrent = 256 }",
    )
    .await;
    assert!(
        text.contains("rampart_concurrency_limit{upstream=\"app\"} 256\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_breakers_a_reload_made_speak_once_they_serve() {
    let (failing, proxy) = failing_app().await;
    // New breaker settings: a new breaker, quiet while the reload builds it.
    proxy
        .reload(&config(&format!(
            "{LISTENER}{}",
            breaking_app(&[failing.addr()], "min_calls = 5")
        )))
        .unwrap();
    trip(&proxy, &failing).await;
    let endpoint = failing.addr();
    let text = metrics(&proxy);
    for line in [
        format!("rampart_breaker_state{{upstream=\"app\",endpoint=\"{endpoint}\"}} 1\n"),
        format!(
            "rampart_breaker_transitions_total{{upstream=\"app\",endpoint=\"{endpoint}\",to=\"open\"}} 1\n"
        ),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn a_refused_reload_counts_no_transition() {
    let drained = Upstream::start(Behavior::ok("drained")).await.unwrap();
    let proxy = proxy(&format!(
        "{LISTENER}{}",
        breaking_app(&[drained.addr()], "")
    ))
    .await;
    for breaker in proxy.handle().breakers("app", None).unwrap() {
        breaker.force_open();
    }
    // New breaker settings, which carry the force over to new breakers, and a fallback whose
    // body cannot be read, which refuses the reload once they are built.
    let refused = format!(
        "{LISTENER}{}",
        breaking_app(&[drained.addr()], "min_calls = 5").replacen(
            "retry = { attempts = 1 }\n",
            "retry = { attempts = 1 }\n[routes.fallback]\nbody_file = \"/nonexistent/fb.json\"\n",
            1
        )
    );
    assert!(proxy.reload(&config(&refused)).is_err());
    let forced = format!(
        "rampart_breaker_transitions_total{{upstream=\"app\",endpoint=\"{}\",to=\"forced-open\"}} 1\n",
        drained.addr()
    );
    assert!(metrics(&proxy).contains(&forced), "{}", metrics(&proxy));
}
