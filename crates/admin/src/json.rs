//! `GET /api/stats`: the proxy's [`Snapshot`] as JSON; and the `transition` events of
//! `GET /api/events`, one [`Change`] each:
//!
//! ```json
//! {"upstream": "app", "endpoint": "127.0.0.1:8081", "kind": "breaker", "from": "closed", "to": "open"}
//! {"upstream": "app", "endpoint": "127.0.0.1:8081", "kind": "health", "healthy": false}
//! ```
//!
//! The stats:
//!
//! ```json
//! {
//!   "window_seconds": 10,
//!   "routes": [{
//!     "name": "api", "upstream": "app",
//!     "requests": {"success": 5, "failure": 3, "fallback": 0, "rejected": 1, "cancelled": 0},
//!     "retries": 0, "retry_budget_exhausted": 0, "hedges": 0, "in_flight": 0,
//!     "answers": {"success": 5, "failure": 3, "timeout": 0, "short_circuited": 1,
//!                 "rejected": 0, "bad_request": 0, "fallback": 0, "peak_in_flight": 1},
//!     "requests_per_second": 0.9, "error_rate": 0.44, "p50_ms": 1.2, "p99_ms": 3.4
//!   }],
//!   "upstreams": [{
//!     "name": "app", "in_flight": 0, "concurrency_limit": 256, "queued": 0, "max_pending": 128,
//!     "admissions": {"executed": 8, "refused": 0, "peak_in_flight": 1},
//!     "endpoints": [{
//!       "address": "127.0.0.1:8081", "backup": false, "state": "open", "healthy": true,
//!       "reinstated": false, "in_flight": 0, "attempts": {"success": 5, "failure": 3},
//!       "requests_per_second": 0.8, "error_rate": 0.37, "p50_ms": 1.0, "p99_ms": 3.1
//!     }]
//!   }],
//!   "outbox": {"store": "embedded", "pending": 2, "dropped": 0,
//!              "total": {"queued": 2, "delivering": 0, "dead": 1, "delivered": 40, "bytes": 512},
//!              "routes": {"orders": {...}}}
//! }
//! ```
//!
//! `state` is a breaker state as the metrics name it (`closed`, `open`, `half-open`,
//! `forced-open`, `forced-closed`), or `disabled` without a breaker; `reinstated` says that an
//! endpoint takes attempts though its breaker refuses them (`max_ejected_percent`); `p50_ms` and `p99_ms` are
//! `null` with nothing in the window. A route's `answers` and an upstream's `admissions` cover the
//! same window as the rates (docs/admin.md says what each count holds). `outbox` is what
//! `GET /api/outbox` answers (`null` without an `[outbox]`), so that a dashboard following the
//! events sees the async routes' queues too.

use std::time::Duration;

use rampart_proxy::ProxyHandle;
use rampart_proxy::stats::{
    Admissions, Answers, Change, ChangeKind, EndpointStats, RouteStats, Snapshot, UpstreamStats,
    Window,
};
use serde_json::{Map, Value, json};

/// The window the rates and percentiles cover, as the proxy keeps it.
const WINDOW_SECONDS: u64 = 10;

/// The JSON of one `transition` event.
pub(crate) fn change(change: &Change) -> Value {
    let (upstream, endpoint) = (&change.upstream, &change.endpoint);
    match change.kind {
        ChangeKind::Breaker { from, to } => json!({
            "upstream": upstream, "endpoint": endpoint, "kind": "breaker", "from": from, "to": to,
        }),
        ChangeKind::Health { healthy } => json!({
            "upstream": upstream, "endpoint": endpoint, "kind": "health", "healthy": healthy,
        }),
    }
}

/// The stats of `proxy` now, its outbox's queues included.
pub(crate) async fn stats(proxy: &ProxyHandle) -> Value {
    let mut stats = snapshot_json(&proxy.snapshot());
    stats["outbox"] = crate::outbox::stats(proxy).await;
    stats
}

/// The JSON of `snapshot`.
fn snapshot_json(snapshot: &Snapshot) -> Value {
    json!({
        "window_seconds": WINDOW_SECONDS,
        "routes": snapshot.routes.iter().map(route).collect::<Vec<_>>(),
        "upstreams": snapshot.upstreams.iter().map(upstream).collect::<Vec<_>>(),
    })
}

fn route(route: &RouteStats) -> Value {
    let mut object = json!({
        "name": route.name,
        "upstream": route.upstream,
        "requests": {
            "success": route.requests.success,
            "failure": route.requests.failure,
            "fallback": route.requests.fallback,
            "rejected": route.requests.rejected,
            "cancelled": route.requests.cancelled,
        },
        "retries": route.retries,
        "retry_budget_exhausted": route.retry_budget_exhausted,
        "hedges": route.hedges,
        "in_flight": route.in_flight,
        "answers": answers(&route.answers),
    });
    recent(&mut object, &route.recent);
    object
}

fn answers(answers: &Answers) -> Value {
    json!({
        "success": answers.success,
        "failure": answers.failure,
        "timeout": answers.timeout,
        "short_circuited": answers.short_circuited,
        "rejected": answers.rejected,
        "bad_request": answers.bad_request,
        "fallback": answers.fallback,
        "peak_in_flight": answers.peak_in_flight,
    })
}

fn admissions(admissions: &Admissions) -> Value {
    json!({
        "executed": admissions.executed,
        "refused": admissions.refused,
        "peak_in_flight": admissions.peak_in_flight,
    })
}

fn upstream(upstream: &UpstreamStats) -> Value {
    json!({
        "name": upstream.name,
        "in_flight": upstream.in_flight,
        "concurrency_limit": upstream.concurrency_limit,
        "queued": upstream.queued,
        "max_pending": upstream.max_pending,
        "admissions": admissions(&upstream.admissions),
        "endpoints": upstream.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
    })
}

fn endpoint(endpoint: &EndpointStats) -> Value {
    let (success, failure) = endpoint.attempts;
    let mut object = json!({
        "address": endpoint.address,
        "backup": endpoint.backup,
        "state": endpoint.state.map_or("disabled", |state| state.as_str()),
        "healthy": endpoint.healthy,
        "reinstated": endpoint.reinstated,
        "in_flight": endpoint.in_flight,
        "attempts": {"success": success, "failure": failure},
    });
    recent(&mut object, &endpoint.recent);
    object
}

// The window's fields, beside the object's own.
fn recent(object: &mut Value, window: &Window) {
    let fields: &mut Map<String, Value> = object.as_object_mut().expect("an object");
    let ms = |latency: Option<Duration>| latency.map(|l| l.as_secs_f64() * 1000.0);
    fields.insert(
        "requests_per_second".into(),
        json!(window.requests_per_second),
    );
    fields.insert("error_rate".into(), json!(window.error_rate));
    fields.insert("p50_ms".into(), json!(ms(window.p50)));
    fields.insert("p99_ms".into(), json!(ms(window.p99)));
}

#[cfg(test)]
mod tests {
    use rampart_policy::breaker::State;
    use rampart_proxy::stats::Outcomes;

    use super::*;

    #[test]
    fn the_shape_names_every_route_upstream_and_endpoint() {
        let window = Window {
            requests_per_second: 2.5,
            error_rate: 0.25,
            p50: Some(Duration::from_millis(4)),
            p99: None,
        };
        let snapshot = Snapshot {
            routes: vec![RouteStats {
                name: "api".into(),
                upstream: "app".into(),
                requests: Outcomes {
                    success: 5,
                    failure: 3,
                    fallback: 0,
                    rejected: 1,
                    cancelled: 0,
                },
                retries: 2,
                retry_budget_exhausted: 0,
                hedges: 1,
                recent: window,
                answers: Answers {
                    success: 5,
                    failure: 2,
                    short_circuited: 1,
                    fallback: 1,
                    peak_in_flight: 2,
                    ..Answers::default()
                },
                in_flight: 1,
            }],
            upstreams: vec![UpstreamStats {
                name: "app".into(),
                in_flight: 1,
                concurrency_limit: 256,
                queued: 3,
                max_pending: 128,
                admissions: Admissions {
                    executed: 7,
                    refused: 1,
                    peak_in_flight: 4,
                },
                endpoints: vec![
                    EndpointStats {
                        address: "127.0.0.1:1".into(),
                        backup: false,
                        state: Some(State::ForcedOpen),
                        healthy: true,
                        reinstated: false,
                        in_flight: 1,
                        attempts: (5, 3),
                        recent: window,
                    },
                    EndpointStats {
                        address: "127.0.0.1:2".into(),
                        backup: true,
                        state: Some(State::Open),
                        healthy: true,
                        reinstated: true,
                        in_flight: 0,
                        attempts: (0, 0),
                        recent: window,
                    },
                ],
            }],
        };
        let json = snapshot_json(&snapshot);
        assert_eq!(
            json["routes"][0],
            json!({
                "name": "api", "upstream": "app",
                "requests": {"success": 5, "failure": 3, "fallback": 0, "rejected": 1, "cancelled": 0},
                "retries": 2, "retry_budget_exhausted": 0, "hedges": 1, "in_flight": 1,
                "answers": {
                    "success": 5, "failure": 2, "timeout": 0, "short_circuited": 1,
                    "rejected": 0, "bad_request": 0, "fallback": 1, "peak_in_flight": 2,
                },
                "requests_per_second": 2.5, "error_rate": 0.25, "p50_ms": 4.0, "p99_ms": null,
            })
        );
        let upstream = &json["upstreams"][0];
        assert_eq!(upstream["name"], "app");
        assert_eq!(upstream["concurrency_limit"], 256);
        assert_eq!(upstream["queued"], 3);
        assert_eq!(upstream["max_pending"], 128);
        assert_eq!(
            upstream["admissions"],
            json!({"executed": 7, "refused": 1, "peak_in_flight": 4})
        );
        assert_eq!(upstream["endpoints"][0]["state"], "forced-open");
        assert_eq!(
            upstream["endpoints"][0]["attempts"],
            json!({"success": 5, "failure": 3})
        );
        assert_eq!(upstream["endpoints"][0]["reinstated"], false);
        assert_eq!(upstream["endpoints"][1]["state"], "open");
        assert_eq!(upstream["endpoints"][1]["backup"], true);
        assert_eq!(upstream["endpoints"][1]["reinstated"], true);
        assert_eq!(json["window_seconds"], 10);
    }
}
