//! The protected wiring's sidecars: their configuration, and what the demo reads from their
//! admin APIs.
//!
//! Two sidecars, one per calling service, each on its service's outbound calls (the way a
//! sidecar proxy is usually deployed):
//!
//! - **A's**, with a route to B and a route to D. The page has 300 ms: each route's `timeout` is
//!   250 ms, B's and D's answers come back in tens of milliseconds, and a fallback stands in for
//!   whichever does not (B's: the page without the item's details; D's: no recommendations).
//! - **B's**, with a route to C, the service the faults hit. Its timeout (150 ms, and 60 ms per
//!   try) fits inside A's 250 ms for B, so that B still has time to answer with a stand-in for C
//!   before A gives up on B: budgets shrink along the chain, as deadlines do (and the time left
//!   travels with each request, in `x-rampart-deadline` or `grpc-timeout`).
//!
//! The configuration files are written with a comment on every choice; [`config_a`] and
//! [`config_b`] make them, and docs/demo.md explains the same choices.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::time::Instant;

use crate::Protocol;
use crate::grpc::{self, ItemReply};

/// C's endpoints as B's sidecar knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The endpoints taking the calls.
    pub primary: Vec<SocketAddr>,
    /// Used only while no primary may take a call.
    pub backup: Vec<SocketAddr>,
}

/// The configuration of A's sidecar: routes to B and to D; with `orders` (C's endpoints and an
/// outbox directory), an async route for the orders A places with C.
pub fn config_a(
    protocol: Protocol,
    b: SocketAddr,
    d: SocketAddr,
    orders: Option<(&Endpoints, &Path)>,
) -> String {
    let mut text = header("A", "A calls B and D through it");
    if let Some((c, outbox)) = orders {
        let _ = write!(
            text,
            "\n[outbox]                          # orders A places with C wait here, on disk, while C cannot take them\n\
             path = \"{}\"\n\
             max_age = \"1h\"                    # an order is given up on (dead-lettered) only after an hour\n\
             retry = {{ base = \"100ms\", max = \"1s\" }}   # tried again within a second of C coming back\n\
             \n\
             [[routes]]\n\
             name = \"orders\"\n\
             match = {{ path_prefix = \"/c/order/\", method = \"POST\" }}\n\
             upstream = \"c\"\n\
             timeout = \"1s\"                    # one delivery attempt\n\
             \n\
             [routes.retry]\n\
             attempts = 1                      # the outbox tries again by itself, with backoff\n\
             \n\
             [routes.async]\n\
             enabled = true                    # stored, answered 202 at once, delivered when C can take it\n\
             concurrency = 4\n",
            outbox.display()
        );
        text.push_str(&upstream(protocol, "c", c, None));
    }
    text.push_str(&route(
        protocol,
        "b",
        "250ms",
        None,
        "# The page has 300 ms. B answers in ~10 ms, and within 150 ms even when C fails (its own\n\
         # sidecar stands in for C by then): 250 ms for B leaves the page room to answer.\n",
        RETRY_A,
        &fallback(
            protocol,
            "b",
            "null",
            "# Without B the page still shows what it has, marked degraded, rather than an error.",
        ),
    ));
    text.push_str(&route(
        protocol,
        "d",
        "250ms",
        Some("100ms"),
        "# D answers in ~5 ms; a try still waiting after 100 ms is stuck, and another is sent.\n",
        RETRY_D,
        &fallback(
            protocol,
            "d",
            r#"{"also_bought":[]}"#,
            "# No recommendations is a fine page: an empty list, marked degraded.",
        ),
    ));
    text.push_str(&upstream(
        protocol,
        "b",
        &Endpoints {
            primary: vec![b],
            backup: Vec::new(),
        },
        None,
    ));
    text.push_str(&upstream(
        protocol,
        "d",
        &Endpoints {
            primary: vec![d],
            backup: Vec::new(),
        },
        None,
    ));
    text
}

/// The configuration of B's sidecar: the route to C.
pub fn config_b(protocol: Protocol, c: &Endpoints) -> String {
    let mut text = header("B", "B calls C through it");
    text.push_str(&route(
        protocol,
        "c",
        "150ms",
        Some("60ms"),
        "# C answers in ~5 ms. A try still waiting after 60 ms is stuck (C is overloaded or\n\
         # hung): cut it and try again, on another endpoint if there is one. 150 ms for every try\n\
         # together leaves B time to answer A (which gives B 250 ms) with a stand-in for C.\n",
        RETRY_B,
        &fallback(
            protocol,
            "c",
            "null",
            "# Without C, B answers without the stock level, marked degraded; the page says so.",
        ),
    ));
    let limits = "\n[upstreams.c.limits]\n\
        max_concurrent = 32               # C has 16 workers: more calls in flight only queue inside C\n\
        max_pending = 32                  # a short queue here instead, where it is bounded...\n\
        pending_timeout = \"20ms\"          # ...and brief: past it the call is refused (fallback)\n";
    text.push_str(&upstream(protocol, "c", c, Some(limits)));
    text
}

/// The variable the sidecars read their admin token from.
pub const TOKEN_ENV: &str = "RAMPART_DEMO_TOKEN";

fn header(of: &str, what: &str) -> String {
    format!(
        "# The sidecar of service {of}, written by `rampart demo`: {what}.\n\
         # Every setting is a choice, and the comment beside it says why (docs/demo.md too).\n\
         \n\
         [admin]\n\
         listen = \"127.0.0.1:0\"            # the dashboard (GET /), /api/stats, /metrics; the demo\n\
         \u{20}                                 # reads the port the kernel chose from the log\n\
         token_env = \"{TOKEN_ENV}\"   # forcing a breaker from the dashboard takes this token;\n\
         \u{20}                                 # the demo draws one per run and prints it\n\
         \n\
         [runtime]\n\
         worker_threads = 1                # a sidecar is small beside its service\n\
         \n\
         [[listeners]]\n\
         listen = \"127.0.0.1:0\"            # {of} sends its calls here; the port is the kernel's choice\n"
    )
}

/// A's retries to B: B answers for itself, stand-ins included, so only a call that never got
/// an answer is worth sending again.
const RETRY_A: &str = "attempts = 2                      # B answers for itself: retry only calls that got no answer\n\
    backoff = { base = \"10ms\", max = \"50ms\" }\n\
    on = [\"connect-failure\", \"reset\", \"refused-stream\", \"502\", \"503\", \"grpc-unavailable\"]\n\
    budget = { ratio = 0.2, min_per_sec = 10 }   # retries add at most 20% to the load\n";
const RETRY_D: &str = "attempts = 3\n\
    backoff = { base = \"10ms\", max = \"50ms\" }\n\
    on = [\"connect-failure\", \"reset\", \"refused-stream\", \"timeout\", \"502\", \"503\", \"504\", \"grpc-unavailable\"]\n\
    budget = { ratio = 0.2, min_per_sec = 10 }\n";
const RETRY_B: &str = "attempts = 3                      # a transient failure is retried twice...\n\
    backoff = { base = \"10ms\", max = \"40ms\" }   # ...after a short, jittered pause...\n\
    on = [\"connect-failure\", \"reset\", \"refused-stream\", \"timeout\", \"5xx\", \"grpc-unavailable\", \"grpc-internal\"]\n\
    budget = { ratio = 0.2, min_per_sec = 10 }   # ...but retries add at most 20% to the load:\n\
                                      # when C is down for good, retrying everything would only\n\
                                      # triple its load as it comes back\n";

fn route(
    protocol: Protocol,
    name: &str,
    timeout: &str,
    per_try: Option<&str>,
    why: &str,
    retry: &str,
    fallback: &str,
) -> String {
    let prefix = match protocol {
        Protocol::Http => format!("/{name}/"),
        Protocol::Grpc => grpc::prefix(name),
    };
    let mut text = format!(
        "\n[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"{name}\"\n{why}timeout = \"{timeout}\"\n"
    );
    if let Some(per_try) = per_try {
        let _ = writeln!(text, "per_try_timeout = \"{per_try}\"");
    }
    let _ = write!(text, "\n[routes.retry]\n{retry}\n{fallback}");
    text
}

/// Every reason rampart gives up for: whatever goes wrong below, the caller gets a stand-in.
const GIVE_UP: &str = "[\"breaker-open\", \"no-healthy-endpoint\", \"timeout\", \"deadline-exceeded\", \"overloaded\", \"rate-limited\",\n      \
    \"upstream-connect\", \"upstream-reset\", \"upstream-invalid\", \"retry-budget-exhausted\", \"5xx\"]";

fn fallback(protocol: Protocol, name: &str, value: &str, why: &str) -> String {
    match protocol {
        Protocol::Http => {
            let body = format!(r#"{{"service":"{name}","value":{value},"degraded":[]}}"#);
            let stale = if name == "c" {
                "stale = \"30s\"                     # better than no stock level: C's last answer for the same\n\
                 \u{20}                                 # item, up to 30 s old (still marked as a fallback)\n"
            } else {
                ""
            };
            format!(
                "[routes.fallback]\n{why}\non = {GIVE_UP}\nstatus = 200\n\
                 headers = {{ \"content-type\" = \"application/json\" }}\nbody = '{body}'\n{stale}"
            )
        }
        Protocol::Grpc => {
            let reply = ItemReply {
                service: name.to_owned(),
                value: value.to_owned(),
                degraded: Vec::new(),
            };
            format!(
                "[routes.fallback]\n{why}\n# The body is an ItemReply {{ service: \"{name}\", value: '{value}' }}, framed as gRPC sends it.\n\
                 on = {GIVE_UP}\nheaders = {{ \"content-type\" = \"application/grpc\" }}\nbody = \"{}\"\n",
                toml_escape(&grpc::framed(&reply))
            )
        }
    }
}

/// Bytes as the inside of a TOML basic string: printable ASCII as is, the rest as `\uXXXX`.
fn toml_escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                text.push('\\');
                text.push(char::from(byte));
            }
            0x20..=0x7e => text.push(char::from(byte)),
            _ => {
                let _ = write!(text, "\\u{byte:04x}");
            }
        }
    }
    text
}

fn upstream(protocol: Protocol, name: &str, endpoints: &Endpoints, limits: Option<&str>) -> String {
    let list = |addrs: &[SocketAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|addr| format!("\"{addr}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut text = format!(
        "\n[upstreams.{name}]\nendpoints = {}\n",
        list(&endpoints.primary)
    );
    if !endpoints.backup.is_empty() {
        let _ = writeln!(
            text,
            "backup = {}             # takes the calls only while no primary can",
            list(&endpoints.backup)
        );
    }
    if protocol == Protocol::Grpc {
        text.push_str("protocol = \"grpc\"                 # grpc-status feeds the breakers\n");
    }
    let health = match protocol {
        Protocol::Http => "path = \"/healthz\"",
        Protocol::Grpc => "grpc = true                       # grpc.health.v1",
    };
    let _ = write!(
        text,
        "connect_timeout = \"100ms\"         # on one machine a connection takes microseconds\n\
         \n\
         [upstreams.{name}.breaker]          # one per endpoint: a failing one is taken out of rotation\n\
         consecutive_failures = 20         # a dead endpoint is out after 20 failures in a row (a\n\
         \u{20}                                 # fraction of a second here), which one failing half\n\
         \u{20}                                 # its calls at random all but never has...\n\
         failure_rate = 0.8                # ...a sick one when most of its calls fail (one failing\n\
         \u{20}                                 # half of them is flaky: retries answer for those)...\n\
         window = \"10s\"                    # ...over the last 10 s...\n\
         min_calls = 20                    # ...once there are enough calls to judge\n\
         open_for = \"1s\"                   # then it rests 1 s, and 3 probes must pass to bring it back;\n\
         open_for_max = \"4s\"               # each failed comeback doubles the rest, up to 4 s\n\
         half_open_probes = 3\n\
         \n\
         [upstreams.{name}.health]           # a dead process is seen within 2 s even with no traffic,\n\
         {health}\n\
         interval = \"1s\"                   # and a restarted one is taken back as soon as it answers\n\
         timeout = \"250ms\"\n\
         unhealthy_after = 2\n\
         healthy_after = 2\n"
    );
    if let Some(limits) = limits {
        text.push_str(limits);
    }
    text
}

// === the admin API ===

/// A breaker transition or health change of a sidecar's endpoint, as its event stream told it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Seconds since the run began.
    pub at: f64,
    /// Whose sidecar: `a` or `b`.
    pub sidecar: &'static str,
    /// The upstream (`b`, `c`, `d`).
    pub upstream: String,
    /// The endpoint's address.
    pub endpoint: String,
    /// What happened: `breaker open`, `breaker closed`, `unhealthy`, `healthy`, ...
    pub what: String,
}

/// What a sidecar counted, read from its admin API at the end of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Breaker transitions (`rampart_breaker_transitions_total`, every endpoint and state).
    pub breaker_transitions: u64,
    /// Answers given by a route's fallback.
    pub fallbacks: u64,
    /// Retries sent.
    pub retries: u64,
    /// Retries the budget refused.
    pub budget_exhausted: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, other: &Counts) {
        self.breaker_transitions += other.breaker_transitions;
        self.fallbacks += other.fallbacks;
        self.retries += other.retries;
        self.budget_exhausted += other.budget_exhausted;
    }
}

type AdminClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn admin_client() -> AdminClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &AdminClient, admin: SocketAddr, path: &str) -> Option<Bytes> {
    let uri = format!("http://{admin}{path}").parse().ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(response.into_body().collect().await.ok()?.to_bytes())
}

/// Reads a sidecar's counts from `/metrics` (the breaker transitions) and `/api/stats` (the
/// routes' fallbacks and retries). `None` when it does not answer.
pub(crate) async fn counts(admin: SocketAddr) -> Option<Counts> {
    let client = admin_client();
    let metrics = get(&client, admin, "/metrics").await?;
    let breaker_transitions = String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|line| line.starts_with("rampart_breaker_transitions_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    let stats: Value = serde_json::from_slice(&get(&client, admin, "/api/stats").await?).ok()?;
    let mut counts = Counts {
        // A count of events: a whole number, as Prometheus writes it.
        breaker_transitions: breaker_transitions.round() as u64,
        ..Counts::default()
    };
    for route in stats["routes"].as_array()? {
        counts.fallbacks += route["requests"]["fallback"].as_u64().unwrap_or(0);
        counts.retries += route["retries"].as_u64().unwrap_or(0);
        counts.budget_exhausted += route["retry_budget_exhausted"].as_u64().unwrap_or(0);
    }
    Some(counts)
}

/// Follows a sidecar's `/api/events` and hands each transition to `sink`, timed from `start`,
/// until the stream ends (the sidecar is gone) or the task is aborted.
pub(crate) async fn follow(
    admin: SocketAddr,
    sidecar: &'static str,
    start: Instant,
    sink: impl Fn(Transition),
) {
    let client = admin_client();
    let Ok(uri) = format!("http://{admin}/api/events").parse() else {
        return;
    };
    let Ok(response) = client.get(uri).await else {
        return;
    };
    let mut body = response.into_body();
    let mut pending = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        // Events are separated by a blank line.
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(transition) = parse_event(&event, sidecar, start.elapsed()) {
                sink(transition);
            }
        }
    }
}

fn parse_event(event: &str, sidecar: &'static str, at: Duration) -> Option<Transition> {
    let mut lines = event.lines();
    if lines.next()? != "event: transition" {
        return None;
    }
    let data: Value = serde_json::from_str(lines.next()?.strip_prefix("data: ")?).ok()?;
    let what = match data["kind"].as_str()? {
        "breaker" => format!("breaker {}", data["to"].as_str()?),
        "health" if data["healthy"].as_bool()? => "healthy".to_owned(),
        "health" => "unhealthy".to_owned(),
        _ => return None,
    };
    Some(Transition {
        at: at.as_secs_f64(),
        sidecar,
        upstream: data["upstream"].as_str()?.to_owned(),
        endpoint: data["endpoint"].as_str()?.to_owned(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Every configuration the demo writes is one `rampart check` accepts.
    #[test]
    fn the_generated_configurations_are_valid() {
        let c = Endpoints {
            primary: vec![addr(9001), addr(9002)],
            backup: vec![addr(9003)],
        };
        for protocol in [Protocol::Http, Protocol::Grpc] {
            for (name, text) in [
                ("a", config_a(protocol, addr(9101), addr(9102), None)),
                (
                    "a with orders",
                    config_a(
                        protocol,
                        addr(9101),
                        addr(9102),
                        Some((
                            &Endpoints {
                                primary: vec![addr(9103)],
                                backup: Vec::new(),
                            },
                            Path::new("/tmp/outbox"),
                        )),
                    ),
                ),
                ("b", config_b(protocol, &c)),
            ] {
                if let Err(errors) = rampart_config::Config::from_str(&text, "sidecar.toml") {
                    panic!("{name} ({protocol:?}):\n{errors}\n{text}");
                }
            }
        }
    }

    #[test]
    fn transitions_are_read_from_the_event_stream() {
        let event = "event: transition\ndata: {\"upstream\": \"c\", \"endpoint\": \"127.0.0.1:1\", \"kind\": \"breaker\", \"from\": \"closed\", \"to\": \"open\"}\n\n";
        let transition = parse_event(event, "b", Duration::from_millis(1500)).unwrap();
        assert_eq!(transition.what, "breaker open");
        assert_eq!(transition.upstream, "c");
        assert_eq!(transition.at, 1.5);
        let health = "event: transition\ndata: {\"upstream\": \"c\", \"endpoint\": \"127.0.0.1:1\", \"kind\": \"health\", \"healthy\": false}\n\n";
        assert_eq!(
            parse_event(health, "b", Duration::ZERO).unwrap().what,
            "unhealthy"
        );
        assert_eq!(
            parse_event("event: stats\ndata: {}\n\n", "b", Duration::ZERO),
            None
        );
    }

    #[test]
    fn bytes_escape_into_a_toml_string() {
        assert_eq!(toml_escape(b"\0a\"\\\n"), "\\u0000a\\\"\\\\\\u000a");
    }
}
