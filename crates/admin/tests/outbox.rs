//! `/api/outbox` over real sockets, beside a proxy whose async route stored known messages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rampart_admin::{Admin, ReloadError};
use rampart_proxy::Proxy;
use rampart_test_support::{Behavior, ProxyBuilder, TempDir, Upstream};

use common::*;

const TOKEN: &str = "outbox-token";

async fn admin(proxy: &Proxy) -> Admin {
    let config = rampart_config::Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_env: Some("RAMPART_ADMIN_TOKEN".into()),
        ..Default::default()
    };
    Admin::start_with_token(
        &config,
        Some(TOKEN.to_owned()),
        proxy.handle(),
        Arc::new(|| Err(ReloadError::Refused("no reload here".into()))),
    )
    .await
    .unwrap()
}

/// A proxy whose route `orders` to `upstream` is async, its messages dead after 200 ms of
/// failures.
async fn async_proxy(upstream: &Upstream, dir: &std::path::Path) -> Proxy {
    ProxyBuilder::from_toml(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [outbox]
        path = "{}"
        max_age = "1s"
        retry = {{ base = "10ms", max = "20ms" }}

        [[routes]]
        name = "orders"
        upstream = "orders"
        [routes.retry]
        attempts = 1
        [routes.async]
        enabled = true

        [upstreams.orders]
        endpoints = ["{}"]
        [upstreams.orders.breaker]
        enabled = false
        "#,
        dir.display(),
        upstream.addr()
    ))
    .start()
    .await
}

/// Polls `path` on the admin port until `check` holds on its JSON (10 s at most).
async fn until(admin: &Admin, path: &str, check: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..500 {
        let answer = get(admin.addr(), path).await;
        if answer.status == StatusCode::OK && check(&answer.json()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never showed what was awaited");
}

#[tokio::test]
async fn a_message_is_followed_from_queued_to_dead_and_redriven_to_delivered() {
    let dir = TempDir::new("admin-outbox");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::BAD_GATEWAY))
        .await
        .unwrap();
    let proxy = async_proxy(&upstream, dir.path()).await;
    let admin = admin(&proxy).await;

    // The async route is listed before it holds anything.
    let empty = get(admin.addr(), "/api/outbox").await.json();
    assert_eq!(empty["routes"]["orders"]["queued"], 0, "{empty}");
    assert_eq!(empty["routes"]["orders"]["dead"], 0, "{empty}");

    let accepted = post(proxy.listeners()[0].addr, "/orders", None, "order 1").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/outbox/{id}");

    until(&admin, &path, |m| m["state"] == "dead").await;
    let dead = get(admin.addr(), &path).await.json();
    assert_eq!(dead["id"], id.as_str());
    assert_eq!(dead["route"], "orders");
    assert_eq!(dead["last_error"], "the upstream answered 502 Bad Gateway");
    assert!(dead["attempts"].as_u64().unwrap() >= 2, "{dead}");
    assert!(dead["size"].as_u64().unwrap() > 7, "{dead}");
    for time in ["accepted_at", "queued_at", "next_attempt_at", "changed_at"] {
        let text = dead[time].as_str().unwrap();
        assert!(text.len() == 24 && text.ends_with('Z'), "{time}: {text}");
    }

    let summary = get(admin.addr(), "/api/outbox").await.json();
    assert_eq!(summary["store"], "embedded");
    assert_eq!(summary["pending"], 0);
    assert_eq!(summary["total"]["dead"], 1);
    assert_eq!(summary["routes"]["orders"]["dead"], 1);
    // The stats, and so the dashboard's events, carry the same summary.
    let stats = get(admin.addr(), "/api/stats").await.json();
    assert_eq!(stats["outbox"], summary);

    // Re-driving takes the token, and only a dead message.
    let redrive = format!("{path}/redrive");
    assert_eq!(
        post(admin.addr(), &redrive, None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    upstream.set_behavior(Behavior::ok("taken"));
    let redriven = post(admin.addr(), &redrive, Some(TOKEN), "").await;
    assert_eq!(redriven.status, StatusCode::OK, "{}", redriven.body);
    assert_eq!(redriven.json()["state"], "queued");
    until(&admin, &path, |m| m["state"] == "delivered").await;
    let again = post(admin.addr(), &redrive, Some(TOKEN), "").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("only a dead message"), "{}", again.body);
    until(&admin, "/api/outbox", |s| {
        s["total"]["delivered"] == 1 && s["total"]["dead"] == 0
    })
    .await;

    proxy.shutdown().await;
}

/// A proxy whose routes `orders` (`/orders`) and `mails` (`/mails`) to `upstream` are async,
/// their messages dead after 200 ms of failures.
async fn two_route_proxy(upstream: &Upstream, dir: &std::path::Path) -> Proxy {
    let route = |name: &str| {
        format!(
            r#"
            [[routes]]
            name = "{name}"
            upstream = "up"
            match = {{ path_prefix = "/{name}" }}
            [routes.retry]
            attempts = 1
            [routes.async]
            enabled = true
            "#
        )
    };
    ProxyBuilder::from_toml(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [outbox]
        path = "{}"
        max_age = "1s"
        retry = {{ base = "10ms", max = "20ms" }}
        {}
        {}
        [upstreams.up]
        endpoints = ["{}"]
        [upstreams.up.breaker]
        enabled = false
        "#,
        dir.display(),
        route("orders"),
        route("mails"),
        upstream.addr()
    ))
    .start()
    .await
}

/// The ids of a page of `GET /api/outbox/dead`, and its `next`.
fn page_ids(page: &serde_json::Value) -> (Vec<String>, Option<String>) {
    let ids = page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {page}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, page["next"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn dead_letters_are_listed_in_pages_and_redriven_per_route_or_all_at_once() {
    let dir = TempDir::new("admin-dead");
    let upstream = Upstream::start(Behavior::Fail(StatusCode::BAD_GATEWAY))
        .await
        .unwrap();
    let proxy = two_route_proxy(&upstream, dir.path()).await;
    let admin = admin(&proxy).await;
    let listener = proxy.listeners()[0].addr;

    // Accepted one after another: acceptance order is id order.
    let mut ids = Vec::new();
    for path in ["/orders", "/mails", "/orders", "/mails", "/orders"] {
        let accepted = post(listener, path, None, "x").await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
        ids.push(accepted.json()["id"].as_str().unwrap().to_owned());
    }
    let orders = vec![ids[0].clone(), ids[2].clone(), ids[4].clone()];
    let mails = vec![ids[1].clone(), ids[3].clone()];
    until(&admin, "/api/outbox", |s| s["total"]["dead"] == 5).await;

    // All of them, each as GET /api/outbox/<id> shows it.
    let all = get(admin.addr(), "/api/outbox/dead").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let all = all.json();
    assert_eq!(page_ids(&all), (ids.clone(), None));
    for message in all["messages"].as_array().unwrap() {
        let path = format!("/api/outbox/{}", message["id"].as_str().unwrap());
        assert_eq!(get(admin.addr(), &path).await.json(), *message);
        assert_eq!(message["state"], "dead");
    }
    assert_eq!(
        page_ids(&get(admin.addr(), "/api/outbox/dead?limit=5").await.json()),
        (ids.clone(), None),
        "a page holding the last one has no next"
    );

    // Pages of two, each after the one before's `next`.
    let first = get(admin.addr(), "/api/outbox/dead?limit=2").await.json();
    assert_eq!(page_ids(&first), (ids[..2].to_vec(), Some(ids[1].clone())));
    let second = format!("/api/outbox/dead?limit=2&after={}", ids[1]);
    let second = get(admin.addr(), &second).await.json();
    assert_eq!(
        page_ids(&second),
        (ids[2..4].to_vec(), Some(ids[3].clone()))
    );
    let third = format!("/api/outbox/dead?after={}&limit=2", ids[3]);
    let third = get(admin.addr(), &third).await.json();
    assert_eq!(page_ids(&third), (ids[4..].to_vec(), None));
    let of_mails = get(admin.addr(), "/api/outbox/dead?route=mails")
        .await
        .json();
    assert_eq!(page_ids(&of_mails), (mails.clone(), None));
    // A route the outbox does not know is no route without dead letters: a typo must not look
    // like an empty list, nor like nothing to re-drive.
    for unknown in [
        get(admin.addr(), "/api/outbox/dead?route=ordres").await,
        post(
            admin.addr(),
            "/api/outbox/dead/redrive?route=ordres",
            Some(TOKEN),
            "",
        )
        .await,
    ] {
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
        let error = unknown.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("\"ordres\""), "{error}");
        assert!(error.contains("mails, orders"), "{error}");
    }
    assert_eq!(
        page_ids(&get(admin.addr(), "/api/outbox/dead").await.json()).0,
        ids,
        "nothing was re-driven"
    );

    for (bad, says) in [
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("after=nope", "after must be a message id"),
        ("sort=id", "this call takes route, after, limit"),
    ] {
        let refused = get(admin.addr(), &format!("/api/outbox/dead?{bad}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            refused.json()["error"].as_str().unwrap().contains(says),
            "{bad}: {}",
            refused.body
        );
    }

    // Re-driving them all takes the token, and a POST.
    let redrive = "/api/outbox/dead/redrive";
    assert_eq!(
        post(admin.addr(), redrive, None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = get(admin.addr(), redrive).await;
    assert_eq!(
        wrong.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        wrong.body
    );
    let wrong = post(admin.addr(), "/api/outbox/dead", Some(TOKEN), "").await;
    assert_eq!(
        wrong.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        wrong.body
    );
    let refused = post(admin.addr(), &format!("{redrive}?limit=2"), Some(TOKEN), "").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);

    // One route's, then the rest.
    upstream.set_behavior(Behavior::ok("taken"));
    let route = format!("{redrive}?route=mails");
    let redriven = post(admin.addr(), &route, Some(TOKEN), "").await;
    assert_eq!(redriven.status, StatusCode::OK, "{}", redriven.body);
    assert_eq!(redriven.json(), serde_json::json!({"redriven": 2}));
    until(&admin, "/api/outbox", |s| {
        s["routes"]["mails"]["delivered"] == 2
    })
    .await;
    let left = get(admin.addr(), "/api/outbox/dead").await.json();
    assert_eq!(page_ids(&left), (orders, None), "the orders are still dead");
    let of_mails = get(admin.addr(), "/api/outbox/dead?route=mails").await;
    assert_eq!(of_mails.status, StatusCode::OK, "{}", of_mails.body);
    assert_eq!(page_ids(&of_mails.json()), (vec![], None));

    let redriven = post(admin.addr(), redrive, Some(TOKEN), "").await;
    assert_eq!(redriven.json(), serde_json::json!({"redriven": 3}));
    until(&admin, "/api/outbox", |s| {
        s["total"]["delivered"] == 5 && s["total"]["dead"] == 0
    })
    .await;
    let none_left = post(admin.addr(), redrive, Some(TOKEN), "").await;
    assert_eq!(none_left.json(), serde_json::json!({"redriven": 0}));

    proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_and_a_proxy_without_outbox_are_told_apart() {
    let dir = TempDir::new("admin-outbox-ids");
    let upstream = Upstream::start(Behavior::ok("fine")).await.unwrap();
    let proxy = async_proxy(&upstream, dir.path()).await;
    let api = admin(&proxy).await;

    let malformed = get(api.addr(), "/api/outbox/not-an-id").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(
        malformed.body.contains("not a message id"),
        "{}",
        malformed.body
    );
    // A well-formed id nobody was given.
    let accepted = post(proxy.listeners()[0].addr, "/orders", None, "x").await;
    let id = accepted.json()["id"].as_str().unwrap().to_owned();
    let mut other = id.clone().into_bytes();
    let last = other.last_mut().unwrap();
    *last = if *last == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    let unknown = get(api.addr(), &format!("/api/outbox/{other}")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
    assert_eq!(
        post(api.addr(), "/api/outbox", Some(TOKEN), "")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    proxy.shutdown().await;

    let plain = ProxyBuilder::to(&[upstream.addr()]).start().await;
    let api = admin(&plain).await;
    let none = get(api.addr(), "/api/outbox").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(none.body.contains("[outbox]"), "{}", none.body);
    assert!(get(api.addr(), "/api/stats").await.json()["outbox"].is_null());
    for none in [
        get(api.addr(), "/api/outbox/dead").await,
        post(api.addr(), "/api/outbox/dead/redrive", Some(TOKEN), "").await,
    ] {
        assert_eq!(none.status, StatusCode::NOT_FOUND);
        assert!(none.body.contains("[outbox]"), "{}", none.body);
    }
}
