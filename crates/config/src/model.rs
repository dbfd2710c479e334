//! The validated configuration: every default filled in, every reference resolved.
//!
//! Nothing here can be wrong once built: the walker in `load` checks each value and each
//! cross-reference before it builds these. docs/configuration.md is the user's reference; the
//! field docs say the unit and default of each key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::value::{ByteSize, Endpoint, Rate};
use rampart_http::GrpcCode;

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[admin]`: the admin API.
    pub admin: Admin,
    /// `[runtime]`: threads and shutdown.
    pub runtime: Runtime,
    /// `[[listeners]]`, in file order; one on 127.0.0.1:8080 when the file has none.
    pub listeners: Vec<Listener>,
    /// `[[routes]]`, in file order; the first match wins.
    pub routes: Vec<Route>,
    /// `[upstreams.NAME]`, in file order.
    pub upstreams: Vec<Upstream>,
    /// `[outbox]`, if present; required by routes with `async.enabled`.
    pub outbox: Option<Outbox>,
}

impl Config {
    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// `listen`: address of the admin API. Default `127.0.0.1:9901`.
    pub listen: SocketAddr,
    /// `token_env`: environment variable holding the bearer token for mutating calls. Default
    /// none, and then every mutating call is refused (403).
    pub token_env: Option<String>,
    /// `metrics`: record per-request metrics (the Prometheus families, `/api/stats`, the
    /// dashboard). Default true; false skips every per-request count, to run without their cost
    /// or to measure it.
    pub metrics: bool,
}

impl Default for Admin {
    /// The admin API on 127.0.0.1:9901, no token (mutating calls refused), metrics recorded.
    fn default() -> Admin {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token_env: None,
            metrics: true,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `worker_threads`: default `None`, tokio's own: `TOKIO_WORKER_THREADS`, else the number of
    /// cores.
    pub worker_threads: Option<usize>,
    /// `drain_timeout`: how long in-flight requests may finish on SIGTERM/SIGINT. Default 10s.
    pub drain_timeout: Duration,
}

/// `protocol` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// `auto`: HTTP/1.1 and h2c prior knowledge on one port (the default).
    Auto,
    /// `http1`: HTTP/1.1 only.
    Http1,
    /// `http2`: h2c prior knowledge only.
    Http2,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `name`: default `listener-N`, N its position from 0.
    pub name: String,
    /// `listen`: address and port. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// `protocol`: default `auto`.
    pub protocol: ListenerProtocol,
    /// `max_connections`: default 10000.
    pub max_connections: u32,
    /// `header_read_timeout`: default 10s.
    pub header_read_timeout: Duration,
    /// `idle_timeout`: default 60s.
    pub idle_timeout: Duration,
    /// `body_idle_timeout`: default 30s.
    pub body_idle_timeout: Duration,
    /// `tunnel_idle_timeout`: default 5m.
    pub tunnel_idle_timeout: Duration,
    /// `max_header_bytes`: default 64KiB.
    pub max_header_bytes: ByteSize,
    /// `max_headers`: default 100.
    pub max_headers: u32,
    /// `max_request_body`: default 8MiB.
    pub max_request_body: ByteSize,
    /// `h2_max_concurrent_streams`: default 256.
    pub h2_max_concurrent_streams: u32,
    /// `park_idle_above`: default 256.
    pub park_idle_above: u32,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `name`: default `route-N`, N its position from 0.
    pub name: String,
    /// `listener`: the listener's name (resolved when the file has one listener).
    pub listener: String,
    /// `match`: default matches every request.
    pub matcher: Match,
    /// `upstream`: the upstream's name. Required.
    pub upstream: String,
    /// `timeout`: whole exchange, all attempts, until the response's last byte. Default 15s.
    pub timeout: Duration,
    /// `per_try_timeout`: one attempt. Default none (only `timeout` applies).
    pub per_try_timeout: Option<Duration>,
    /// `[routes.retry]`: on by default with the defaults of [`Retry`]; `attempts = 1` turns it off.
    pub retry: Retry,
    /// `[routes.hedge]`: off unless present.
    pub hedge: Option<Hedge>,
    /// `[routes.fallback]`: off unless present.
    pub fallback: Option<Fallback>,
    /// `[routes.fault]`: off unless present.
    pub fault: Option<Fault>,
    /// `[routes.async]` `enabled`: store-and-forward through the outbox. Default false.
    pub async_enabled: bool,
    /// `[routes.async]` `concurrency`: deliveries in flight at once. Default 1, which delivers
    /// strictly in order of acceptance while the upstream takes every message.
    pub async_concurrency: u32,
}

/// `match` of a route; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// `path_prefix`: the path starts with this.
    pub path_prefix: Option<String>,
    /// `path`: the path is exactly this.
    pub path: Option<String>,
    /// `host`: the Host (or `:authority`) without port, case-insensitive.
    pub host: Option<String>,
    /// `method`: the request method.
    pub method: Option<String>,
    /// `headers`: each header is present with exactly this value.
    pub headers: Vec<(String, String)>,
}

impl Match {
    /// True when the match has no condition, so it matches every request.
    pub fn is_any(&self) -> bool {
        *self == Match::default()
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// `base`: the first delay's upper bound.
    pub base: Duration,
    /// `max`: the cap; at least `base`.
    pub max: Duration,
}

/// `[routes.retry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// `attempts`: total attempts, first included. Default 3.
    pub attempts: u32,
    /// `backoff`: default `{ base = "25ms", max = "1s" }`.
    pub backoff: Backoff,
    /// `on`: what is retried. Default connect-failure, reset, refused-stream, timeout, 502, 503,
    /// 504, grpc-unavailable.
    pub on: Vec<RetryOn>,
    /// `budget.ratio`: retries may add at most this share of load. Default 0.2.
    pub budget_ratio: f64,
    /// `budget.min_per_sec`: retries always allowed per second. Default 10.
    pub budget_min_per_sec: u32,
    /// `methods`: HTTP methods retried. Default GET, HEAD, PUT, DELETE, OPTIONS.
    pub methods: Vec<String>,
    /// `max_replay_body`: larger request bodies are never retried. Default 64KiB.
    pub max_replay_body: ByteSize,
}

/// A retry `on` token: the proxy's own type, so that what the file says is what the proxy
/// matches.
pub use rampart_http::RetryOn;

/// `[routes.hedge]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    /// `after`: default `p95`.
    pub after: HedgeAfter,
    /// `max_extra`: extra attempts at most. Default 1.
    pub max_extra: u32,
}

/// When a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay (`"100ms"`).
    Delay(Duration),
    /// A percentile of the route's observed latency (`"p95"` is 95.0).
    Percentile(f64),
}

/// `[routes.fallback]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// `on`: default breaker-open, no-healthy-endpoint, timeout, overloaded, upstream-connect,
    /// upstream-reset, upstream-invalid, retry-budget-exhausted.
    pub on: Vec<String>,
    /// `status`: default 200.
    pub status: u16,
    /// `headers`: default none.
    pub headers: Vec<(String, String)>,
    /// `body` or `body_file`: default an empty body.
    pub body: FallbackBody,
    /// `stale`: serve the last good GET response up to this age instead. Default none.
    pub stale: Option<Duration>,
}

/// The body of a fallback answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackBody {
    /// `body`: this text.
    Inline(String),
    /// `body_file`: this file's content.
    File {
        /// The file, relative to the config file's directory.
        path: PathBuf,
        /// Its content, read with the configuration when that was read from a file (within
        /// the time a reload gives the file, so that building the proxy reads no file); `None`
        /// for a configuration parsed from text alone, whose proxy reads the file as it starts.
        content: Option<Vec<u8>>,
    },
}

/// `[routes.fault]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// `delay`: added before forwarding. Default none.
    pub delay: Option<Duration>,
    /// `delay_percent`: share of requests delayed, 0 to 100, fractions allowed. Default 100
    /// when `delay` is set.
    pub delay_percent: f64,
    /// `abort_status`: answered instead of forwarding, to plain HTTP requests. Default none.
    pub abort_status: Option<u16>,
    /// `abort_grpc_status`: the status a gRPC call is aborted with. Default none
    /// (UNAVAILABLE when only `abort_status` is set).
    pub abort_grpc_status: Option<GrpcCode>,
    /// `abort_percent`: share of requests aborted, 0 to 100, fractions allowed. Default 100
    /// when `abort_status` or `abort_grpc_status` is set.
    pub abort_percent: f64,
}

/// `protocol` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// `http1` (the default).
    Http1,
    /// `http2`: h2c prior knowledge.
    Http2,
    /// `grpc`: HTTP/2 with gRPC classification.
    Grpc,
}

/// `balance` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// `p2c-ewma` (the default).
    P2cEwma,
    /// `round-robin`.
    RoundRobin,
    /// `least-request`.
    LeastRequest,
    /// `random`.
    Random,
}

/// A `failure_status` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// `"5xx"`.
    Class5xx,
    /// An exact status, `503` or `"503"`.
    Exact(u16),
}

/// One `[upstreams.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The table's key.
    pub name: String,
    /// `endpoints`: required, at least one.
    pub endpoints: Vec<Endpoint>,
    /// `backup`: used only while no primary is available. Default none.
    pub backup: Vec<Endpoint>,
    /// `protocol`: default `http1`.
    pub protocol: UpstreamProtocol,
    /// `balance`: default `p2c-ewma`.
    pub balance: Balance,
    /// `connect_timeout`: default 1s.
    pub connect_timeout: Duration,
    /// `idle_timeout`: how long a connection to an endpoint may wait idle before it is closed
    /// rather than reused. Default 4s with `protocol = "http1"` (under the keep-alive timeouts
    /// of common servers, which close idle connections after 5 s: a request sent as one closes
    /// is lost), 90s with `"http2"` and `"grpc"` (a server closing one says so, GOAWAY, and a
    /// request it did not take is sent again).
    pub idle_timeout: Duration,
    /// `max_connection_age`: how long a connection to an endpoint is used before it is closed
    /// (between exchanges) and another made, so that a changed DNS answer or a rebalanced
    /// endpoint behind a load balancer is reached by steady traffic too. Default 1h.
    pub max_connection_age: Duration,
    /// `failure_status`: default `["5xx"]`.
    pub failure_status: Vec<StatusMatch>,
    /// `h2_max_concurrent_streams`: the requests one HTTP/2 connection to an endpoint carries
    /// at once; more open another connection. Default 100.
    pub h2_max_concurrent_streams: u32,
    /// `[upstreams.NAME.breaker]`: on by default.
    pub breaker: Breaker,
    /// `[upstreams.NAME.health]`: off unless present.
    pub health: Option<Health>,
    /// `[upstreams.NAME.limits]`.
    pub limits: Limits,
}

/// `[upstreams.NAME.breaker]`, one state machine per endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breaker {
    /// `enabled`: default true.
    pub enabled: bool,
    /// `consecutive_failures`: 0 turns this trigger off. Default 5.
    pub consecutive_failures: u32,
    /// `failure_rate`: over the window. Default 0.5.
    pub failure_rate: f64,
    /// `slow_call`: a success slower than this counts as slow. Default 1s.
    pub slow_call: Duration,
    /// `slow_call_rate`: 1.0 turns this trigger off. Default 1.0.
    pub slow_call_rate: f64,
    /// `window`: default 10s.
    pub window: Duration,
    /// `min_calls`: no rate-based trip below this volume. Default 20.
    pub min_calls: u32,
    /// `open_for`: first open period. Default 5s.
    pub open_for: Duration,
    /// `open_for_max`: cap of the backed-off open period. Default 60s.
    pub open_for_max: Duration,
    /// `half_open_probes`: default 3.
    pub half_open_probes: u32,
    /// `max_ejected_percent`: default 50.
    pub max_ejected_percent: u8,
}

/// `[upstreams.NAME.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `path` or `grpc = true`.
    pub check: HealthCheck,
    /// `interval`: default 2s.
    pub interval: Duration,
    /// `timeout`: default 1s, at most `interval`.
    pub timeout: Duration,
    /// `unhealthy_after`: default 2.
    pub unhealthy_after: u32,
    /// `healthy_after`: default 2.
    pub healthy_after: u32,
}

/// What an active health check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `path`: an HTTP GET that must answer 2xx.
    Http(String),
    /// `grpc = true`: `grpc.health.v1.Health/Check`.
    Grpc,
}

/// `[upstreams.NAME.limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_concurrent`: default 256.
    pub max_concurrent: MaxConcurrent,
    /// `max_pending`: default 128.
    pub max_pending: u32,
    /// `pending_timeout`: default 100ms.
    pub pending_timeout: Duration,
    /// `rate`: default none (no limit).
    pub rate: Option<Rate>,
    /// `burst`: default one second's worth of `rate` (at least 1).
    pub burst: Option<u32>,
}

/// `max_concurrent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConcurrent {
    /// A fixed limit.
    Fixed(u32),
    /// `"adaptive"`: learnt from observed latency.
    Adaptive,
}

/// `store` of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxStore {
    /// `embedded`: a file database under `path`.
    Embedded,
    /// `nats`: JetStream.
    Nats {
        /// `nats.url`.
        url: String,
        /// `nats.stream`: default `RAMPART_OUTBOX`.
        stream: String,
    },
}

/// `on_full` of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// `reject`: 503, nothing accepted is ever dropped (the default).
    Reject,
    /// `drop-oldest`.
    DropOldest,
}

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    /// `store` (and `nats` when it is `nats`): default `embedded`.
    pub store: OutboxStore,
    /// `path`: default `rampart-data/outbox`.
    pub path: PathBuf,
    /// `max_messages`: default 100000.
    pub max_messages: u64,
    /// `max_bytes`: the messages' encoded size held at most. Default 1GiB.
    pub max_bytes: ByteSize,
    /// `max_buffered`: the request bodies async routes hold in memory at once while they read
    /// and store them. Default 64MiB.
    pub max_buffered: ByteSize,
    /// `on_full`: default `reject`.
    pub on_full: OnFull,
    /// `max_age`: then a message is dead-lettered. Default 24h.
    pub max_age: Duration,
    /// `retention`: how long a delivered or dropped message's tombstone is kept, so that
    /// `GET /api/outbox/<id>` still tells its state. Default 1h.
    pub retention: Duration,
    /// `retry`: delivery backoff. Default `{ base = "100ms", max = "30s" }`.
    pub retry: Backoff,
}

impl ListenerProtocol {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Auto => "auto",
            ListenerProtocol::Http1 => "http1",
            ListenerProtocol::Http2 => "http2",
        }
    }
}

impl Limits {
    /// The rate limit's burst: `burst`, or one second's worth of `rate` (at least 1), not one
    /// period's ("60/m" allows one call at a time, not sixty in a row). `None` without a rate.
    pub fn rate_burst(&self) -> Option<u32> {
        let rate = self.rate?;
        let one_second = if rate.per >= Duration::from_secs(60) {
            rate.count / 60
        } else {
            rate.count
        };
        Some(self.burst.unwrap_or(one_second.max(1)))
    }
}

impl UpstreamProtocol {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
            UpstreamProtocol::Grpc => "grpc",
        }
    }
}

impl Balance {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::P2cEwma => "p2c-ewma",
            Balance::RoundRobin => "round-robin",
            Balance::LeastRequest => "least-request",
            Balance::Random => "random",
        }
    }
}

impl OnFull {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Reject => "reject",
            OnFull::DropOldest => "drop-oldest",
        }
    }
}
