//! The fleet view over two real admin APIs: it lists them, passes on what the dashboard calls,
//! event streams included, leaves the token to each instance, and passes on nothing else.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use rampart_admin::{Admin, Fleet, ReloadError, Target};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, ProxyBuilder, Refusing, Upstream};
use serde_json::json;

use common::*;

const TOKEN: &str = "fleet-token";

/// A proxy whose one route is `route`, to `upstream`, with its admin API.
async fn instance(route: &str, upstream: &Upstream) -> (Proxy, Admin) {
    let proxy = ProxyBuilder::to(&[upstream.addr()])
        .route(&format!("name = \"{route}\""))
        .start()
        .await;
    let config = rampart_config::Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_env: Some("RAMPART_ADMIN_TOKEN".into()),
        ..Default::default()
    };
    let reload = Arc::new(|| Err(ReloadError::Refused("no reload here".into())));
    let admin = Admin::start_with_token(&config, Some(TOKEN.into()), proxy.handle(), reload)
        .await
        .unwrap();
    (proxy, admin)
}

fn target(addr: SocketAddr) -> Target {
    Target::parse(&format!("http://{addr}")).unwrap()
}

/// Two instances, `alpha` and `beta`, routing to one upstream, and the fleet view over them and
/// an address where nothing answers.
struct Setup {
    upstream: Upstream,
    alpha: (Proxy, Admin),
    beta: (Proxy, Admin),
    /// Where nothing listens, held so that no other socket can take it meanwhile.
    dead: Refusing,
    fleet: Fleet,
}

impl Setup {
    async fn start() -> Setup {
        let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
        let alpha = instance("alpha", &upstream).await;
        let beta = instance("beta", &upstream).await;
        let dead = Refusing::bind().unwrap();
        let targets = vec![
            target(alpha.1.addr()),
            target(beta.1.addr()),
            target(dead.addr()),
        ];
        let fleet = Fleet::start("127.0.0.1:0".parse().unwrap(), targets)
            .await
            .unwrap();
        Setup {
            upstream,
            alpha,
            beta,
            dead,
            fleet,
        }
    }
}

#[tokio::test]
async fn the_fleet_view_lists_its_targets_and_passes_on_their_stats_and_events() {
    let Setup {
        upstream: _upstream,
        alpha: (_alpha, alpha_admin),
        beta: (_beta, beta_admin),
        dead,
        fleet,
    } = Setup::start().await;
    let addr = fleet.addr();

    let listed = get(addr, "/targets.json").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json(),
        json!([
            {"name": alpha_admin.addr().to_string(), "base": "t/0", "events": "fleet/events"},
            {"name": beta_admin.addr().to_string(), "base": "t/1", "events": "fleet/events"},
            {"name": dead.addr().to_string(), "base": "t/2", "events": "fleet/events"},
        ])
    );

    // The same page as the admin API's.
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("dashboard.js"));
    assert_eq!(get(addr, "/dashboard.js").await.status, 200);

    // Each base reaches its own instance.
    let alpha = get(addr, "/t/0/api/stats").await;
    assert_eq!(alpha.status, 200);
    assert_eq!(alpha.content_type, "application/json");
    assert_eq!(alpha.json()["routes"][0]["name"], "alpha");
    assert_eq!(
        get(addr, "/t/1/api/stats").await.json()["routes"][0]["name"],
        "beta"
    );

    // The event stream flows through as it comes.
    let mut body = events(addr, "/t/1/api/events").await;
    let mut buffer = String::new();
    let (name, stats) = next_event(&mut body, &mut buffer).await;
    assert_eq!(
        (name.as_str(), &stats["routes"][0]["name"]),
        ("stats", &json!("beta"))
    );

    // A down instance is named, not hidden.
    let down = get(addr, "/t/2/api/stats").await;
    assert_eq!(down.status, 502);
    assert!(
        down.body.contains(&dead.addr().to_string()),
        "{}",
        down.body
    );

    // Unknown targets and anything but the dashboard's calls are refused.
    assert_eq!(get(addr, "/t/3/api/stats").await.status, 404);
    assert_eq!(get(addr, "/t/x/api/stats").await.status, 404);
    assert_eq!(get(addr, "/t/0/metrics").await.status, 404);
    assert_eq!(
        post(addr, "/t/0/api/reload", Some(TOKEN), "").await.status,
        404
    );

    // HEAD wherever GET, as on an instance; a method a path does not take is 405, saying which.
    for path in ["/targets.json", "/", "/t/0/api/stats"] {
        let head = request(addr, http::Method::HEAD, path).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}");
    }
    for (method, path, allow) in [
        (http::Method::POST, "/targets.json", "GET, HEAD"),
        (http::Method::DELETE, "/", "GET, HEAD"),
        (http::Method::PUT, "/t/0/api/stats", "GET, HEAD"),
        (http::Method::GET, "/t/0/api/breakers/u/e", "POST"),
    ] {
        let refused = request(addr, method.clone(), path).await;
        assert_eq!(refused.status, 405, "{method} {path}");
        assert_eq!(refused.header("allow"), Some(allow), "{method} {path}");
    }
    fleet.shutdown().await;
}

#[tokio::test]
async fn forcing_a_breaker_through_the_fleet_view_needs_the_instance_token() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let (_alpha, alpha_admin) = instance("alpha", &upstream).await;
    let (beta, beta_admin) = instance("beta", &upstream).await;
    let fleet = Fleet::start(
        "127.0.0.1:0".parse().unwrap(),
        vec![target(alpha_admin.addr()), target(beta_admin.addr())],
    )
    .await
    .unwrap();
    let path = format!("/t/1/api/breakers/app/{}", upstream.addr());
    let open = r#"{"state": "open"}"#;

    let refused = post(fleet.addr(), &path, Some("wrong"), open).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let refused = post(fleet.addr(), &path, None, open).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let state = || beta.handle().snapshot().upstreams[0].endpoints[0].state;
    assert_eq!(state().map(|s| s.as_str()), Some("closed"));

    let forced = post(fleet.addr(), &path, Some(TOKEN), open).await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert_eq!(forced.json()["states"], json!(["forced-open"]));
    assert_eq!(state().map(|s| s.as_str()), Some("forced-open"));
    fleet.shutdown().await;
}

/// The events of the shared stream until `done` says it has seen enough, with a minute's patience.
async fn until(
    body: &mut hyper::body::Incoming,
    buffer: &mut String,
    mut done: impl FnMut(&str, &serde_json::Value) -> bool,
) {
    let wait = async {
        loop {
            let (name, data) = next_event(body, buffer).await;
            if done(&name, &data) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), wait)
        .await
        .expect("the events within a minute");
}

#[tokio::test]
async fn one_stream_brings_every_instance_and_says_which_is_lost() {
    let Setup {
        upstream,
        alpha: (_alpha, alpha_admin),
        beta: (_beta, beta_admin),
        dead: _,
        fleet,
    } = Setup::start().await;
    let mut body = events(fleet.addr(), "/fleet/events").await;
    let mut buffer = String::new();

    // Both live instances' stats come, each tagged with its base, and the dead one is lost.
    let (mut alpha, mut beta, mut lost) = (false, false, None);
    until(&mut body, &mut buffer, |name, data| {
        match (name, data["target"].as_str()) {
            ("target-stats", Some("t/0")) => {
                assert_eq!(data["data"]["routes"][0]["name"], "alpha");
                alpha = true;
            }
            ("target-stats", Some("t/1")) => {
                assert_eq!(data["data"]["routes"][0]["name"], "beta");
                beta = true;
            }
            ("target-lost", Some("t/2")) => lost = data["error"].as_str().map(str::to_owned),
            ("target-lost", other) => panic!("{other:?} lost: {data}"),
            _ => {}
        }
        alpha && beta && lost.is_some()
    })
    .await;

    // A transition on one instance comes tagged with it.
    let path = format!("/api/breakers/app/{}", upstream.addr());
    let forced = post(
        beta_admin.addr(),
        &path,
        Some(TOKEN),
        r#"{"state": "open"}"#,
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    until(&mut body, &mut buffer, |name, data| {
        name == "target-transition"
            && data["target"] == "t/1"
            && data["data"]["to"] == "forced-open"
    })
    .await;

    // An instance that stops is told lost, and the others go on.
    alpha_admin.shutdown().await;
    until(&mut body, &mut buffer, |name, data| {
        name == "target-lost" && data["target"] == "t/0"
    })
    .await;
    until(&mut body, &mut buffer, |name, data| {
        name == "target-stats" && data["target"] == "t/1"
    })
    .await;
    fleet.shutdown().await;
}
