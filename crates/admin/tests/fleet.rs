//! The fleet view over two real admin APIs: it lists them, passes on what the dashboard calls,
//! event streams included, leaves the token to each instance, and passes on nothing else.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use rampart_admin::{Admin, Fleet, ReloadError, Target};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, ProxyBuilder, Upstream};
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

/// An address nothing listens on.
fn closed_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn the_fleet_view_lists_its_targets_and_passes_on_their_stats_and_events() {
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let (_alpha, alpha_admin) = instance("alpha", &upstream).await;
    let (_beta, beta_admin) = instance("beta", &upstream).await;
    let dead = closed_addr();
    let targets = vec![
        target(alpha_admin.addr()),
        target(beta_admin.addr()),
        target(dead),
    ];
    let fleet = Fleet::start("127.0.0.1:0".parse().unwrap(), targets)
        .await
        .unwrap();
    let addr = fleet.addr();

    let listed = get(addr, "/targets.json").await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json(),
        json!([
            {"name": alpha_admin.addr().to_string(), "base": "t/0"},
            {"name": beta_admin.addr().to_string(), "base": "t/1"},
            {"name": dead.to_string(), "base": "t/2"},
        ])
    );

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
    assert!(down.body.contains(&dead.to_string()), "{}", down.body);

    // Unknown targets and anything but the dashboard's calls are refused.
    assert_eq!(get(addr, "/t/3/api/stats").await.status, 404);
    assert_eq!(get(addr, "/t/x/api/stats").await.status, 404);
    assert_eq!(get(addr, "/t/0/metrics").await.status, 404);
    assert_eq!(
        post(addr, "/t/0/api/reload", Some(TOKEN), "").await.status,
        404
    );
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
