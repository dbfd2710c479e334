//! The proxy's Prometheus metrics, registered into the registry the proxy's owner passes in.
//!
//! Every series a request can touch is created when the proxy is built: a route's when its
//! [`Stack`](crate::stack::Stack) is built, an endpoint's and an upstream's when its
//! [`Pool`](crate::upstream::Pool) is. The handles (atomics behind an `Arc`) are kept there, so
//! recording is an atomic add: no family lookup, which takes a lock, on the request path. A
//! reload asks the families for the handles of the routes and endpoints it builds; the same
//! labels give back the same handle, so an unchanged endpoint's series go on counting. The series
//! of a route, upstream or endpoint that a reload removed are dropped; a pool a reload replaced
//! stops moving the series it shared with its successor (`Pool::retire`).
//!
//! The families and what each label value means are in docs/admin.md. prometheus-client's own
//! histogram takes a lock per observation, so the request duration is a histogram of atomics
//! ([`Latency`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use rampart_http::{GrpcCode, Reason, TransportError};
use rampart_policy::Outcome;
use rampart_policy::breaker::{State, Transition};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::recent::{Kind, Recent, RouteRecent};
use crate::stats::{Change, ChangeKind};
use crate::turn;

/// A family's label set: `(name, value)` pairs in the order CONTRACT.md lists them.
type Labels = Vec<(&'static str, String)>;

/// What became of a request a route answered: the `outcome` of `rampart_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteOutcome {
    /// Answered by the upstream with a response its `failure_status` does not name.
    Success = 0,
    /// Answered with a failing upstream response, or a rampart error other than a refusal.
    Failure = 1,
    /// Answered by the route's fallback.
    Fallback = 2,
    /// Refused by rampart's own policies before or instead of reaching an endpoint.
    Rejected = 3,
    /// Never answered: the client went away first (nginx's 499).
    Cancelled = 4,
}

const ROUTE_OUTCOMES: [(RouteOutcome, &str); 5] = [
    (RouteOutcome::Success, "success"),
    (RouteOutcome::Failure, "failure"),
    (RouteOutcome::Fallback, "fallback"),
    (RouteOutcome::Rejected, "rejected"),
    (RouteOutcome::Cancelled, "cancelled"),
];

/// The states a breaker can enter, in the order of their `rampart_breaker_state` values.
const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::ForcedClosed,
];

/// The families, shared by every route and pool the proxy builds over its life.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Latency>,
    upstream_requests: Family<Labels, Counter>,
    breaker_state: Family<Labels, Gauge>,
    breaker_transitions: Family<Labels, Counter>,
    /// 1 while the ejection cap keeps the endpoint in service though its breaker is open.
    endpoint_reinstated: Family<Labels, Gauge>,
    retries: Family<Labels, Counter>,
    retry_budget_exhausted: Family<Labels, Counter>,
    hedges: Family<Labels, Counter>,
    endpoint_healthy: Family<Labels, Gauge>,
    inflight: Family<Labels, Gauge>,
    concurrency_limit: Family<Labels, Gauge>,
    listener_connections: Family<Labels, Gauge>,
    listener_parked: Family<Labels, Gauge>,
    listener_refused: Family<Labels, Counter>,
    listener_accept_failures: Family<Labels, Counter>,
    listener_unrouted: Family<Labels, Counter>,
    /// Reloads by outcome, `applied` or `refused`.
    reloads: Family<Labels, Counter>,
    /// 1 while the last reload was applied (or none was asked), 0 after one was refused.
    last_reload_successful: Gauge,
    /// The outbox's series: process-wide, as the outbox is.
    pub(crate) outbox: OutboxMetrics,
    changes: Changes,
    /// Each route's live figures, by name (see [`RouteLive`]).
    routes_live: Arc<Mutex<HashMap<String, Arc<RouteLive>>>>,
    /// `[admin] metrics = false`: every per-request count skipped (see [`Metrics::register`]).
    skip: bool,
}

/// Where breaker transitions and health changes are told, for the admin API's event stream.
#[derive(Debug, Clone)]
struct Changes(broadcast::Sender<Change>);

/// How many changes a slow watcher may fall behind by before it misses some (it is told, and
/// the next stats it reads bring it up to date).
const CHANGES_KEPT: usize = 256;

impl Default for Changes {
    fn default() -> Changes {
        Changes(broadcast::channel(CHANGES_KEPT).0)
    }
}

/// One listener's series.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerMetrics {
    pub(crate) connections: Gauge,
    pub(crate) parked: Gauge,
    /// Connections closed at once, the listener being full (`max_connections`).
    pub(crate) refused: Counter,
    /// Accepts that failed (out of file descriptors, most often): the clients wait in the
    /// kernel's queue meanwhile, which nothing else shows.
    pub(crate) accept_failures: Counter,
    /// Requests answered before any route took them, by [`UNROUTED`] reason: no route's series
    /// counts them, and misrouted traffic would go unseen.
    unrouted: [Counter; UNROUTED.len()],
}

/// Why the listener answers a request itself, before any route (see `forward::handle`).
const UNROUTED: [Reason; 4] = [
    Reason::NoRoute,
    Reason::BadRequest,
    Reason::BodyTooLarge,
    Reason::HeadersTooLarge,
];

impl ListenerMetrics {
    /// Counts a request the listener answered with `reason` before any route took it.
    pub(crate) fn unrouted(&self, reason: Reason) {
        if let Some(i) = UNROUTED.iter().position(|r| *r == reason) {
            self.unrouted[i].inc();
        }
    }
}

/// One route's series.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    skip: bool,
    outcomes: [Counter; 5],
    duration: Latency,
    retries: Counter,
    retry_budget_exhausted: Counter,
    hedges: Counter,
    /// Shared with every stack of the same route name, across reloads.
    live: Arc<RouteLive>,
}

/// What the dashboard reads of a route now: kept by the route's name across reloads, as its
/// counters are, so that a reload (one that changes nothing, sent by a tool on a timer, say)
/// neither blanks the window nor loses the requests in flight, which still finish on the stack
/// they started on.
#[derive(Debug)]
struct RouteLive {
    recent: RouteRecent,
    /// Requests between their arrival and their answer.
    in_flight: AtomicU64,
}

/// A request of a route counted in flight until it is answered, or counted `cancelled` when
/// dropped unanswered: its client went away, and its task with it.
#[derive(Debug)]
pub(crate) struct Executing<'a> {
    metrics: Option<&'a RouteMetrics>,
    started: Instant,
}

impl Executing<'_> {
    /// Counts the request answered `outcome` now, of `kind`.
    pub(crate) fn answered(mut self, outcome: RouteOutcome, kind: Kind) {
        if let Some(metrics) = self.metrics.take() {
            metrics.live.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics.answered(outcome, kind, self.started);
        }
    }

    /// The answer's head is ready, its outcome to come with its body's end (a gRPC answer's
    /// status, in its trailers): the request is no longer in flight, and what
    /// [`RouteMetrics::judged`] counts at the end is returned. `None` when nothing is counted.
    pub(crate) fn headed(mut self) -> Option<Headed> {
        let metrics = self.metrics.take()?;
        metrics.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        Some(Headed {
            elapsed: turn::now().saturating_duration_since(self.started),
        })
    }
}

/// A request whose answer's head went out, its outcome still to come: the time to its head,
/// which its latency is, as for every other answer (a stream that lasts minutes is no slow
/// request).
#[derive(Debug)]
pub(crate) struct Headed {
    elapsed: Duration,
}

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics {
            metrics.live.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics.outcomes[RouteOutcome::Cancelled as usize].inc();
        }
    }
}

/// One endpoint's series.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    skip: bool,
    /// `success` then `failure`.
    attempts: [Counter; 2],
    /// The breaker's series; none when the upstream's breakers are disabled.
    breaker: Option<BreakerSeries>,
    healthy: Gauge,
    recent: Recent,
    changes: Changes,
    upstream: String,
    endpoint: String,
    /// What the endpoint's last failed attempt met ([`Failure::encode`]; 0 for none yet).
    last_failure: AtomicU32,
}

/// What a failed attempt met, as the log of its endpoint's ejection says it: a refused or
/// timed-out connection, a reset and a 503 call for different remedies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The exchange failed, or the per-try timeout expired first.
    Transport(TransportError),
    /// No answer within the route's timeout.
    Timeout,
    /// An answer with a status counted as a failure.
    Status(u16),
    /// A gRPC answer with a failing `grpc-status`.
    Grpc(GrpcCode),
}

impl Failure {
    const STATUS: u32 = 1 << 16;
    const GRPC: u32 = 2 << 16;

    fn encode(self) -> u32 {
        match self {
            Failure::Transport(TransportError::ConnectFailure) => 1,
            Failure::Transport(TransportError::Reset) => 2,
            Failure::Transport(TransportError::RefusedStream) => 3,
            Failure::Transport(TransportError::Timeout) => 4,
            Failure::Transport(TransportError::Invalid) => 5,
            Failure::Timeout => 6,
            Failure::Status(status) => Failure::STATUS | u32::from(status),
            Failure::Grpc(code) => Failure::GRPC | u32::from(code.as_u8()),
        }
    }

    fn decode(code: u32) -> Option<Failure> {
        Some(match code {
            1 => Failure::Transport(TransportError::ConnectFailure),
            2 => Failure::Transport(TransportError::Reset),
            3 => Failure::Transport(TransportError::RefusedStream),
            4 => Failure::Transport(TransportError::Timeout),
            5 => Failure::Transport(TransportError::Invalid),
            6 => Failure::Timeout,
            _ if code & Failure::GRPC != 0 => Failure::Grpc(GrpcCode::from_u32(code & 0xffff)?),
            _ if code & Failure::STATUS != 0 => Failure::Status(u16::try_from(code & 0xffff).ok()?),
            _ => return None,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transport(TransportError::ConnectFailure) => {
                f.write_str("could not connect (refused, unreachable or connect_timeout)")
            }
            Failure::Transport(TransportError::Reset) => {
                f.write_str("connection reset or closed before the answer was whole")
            }
            Failure::Transport(TransportError::RefusedStream) => f.write_str("stream refused"),
            Failure::Transport(TransportError::Timeout) => {
                f.write_str("no answer within per_try_timeout")
            }
            Failure::Transport(TransportError::Invalid) => f.write_str("invalid HTTP answer"),
            Failure::Timeout => f.write_str("no answer within the route's timeout"),
            Failure::Status(status) => write!(f, "answered {status}"),
            Failure::Grpc(code) => {
                write!(f, "answered grpc-status {} ({})", code.as_u8(), code.name())
            }
        }
    }
}

#[derive(Debug)]
struct BreakerSeries {
    state: Gauge,
    reinstated: Gauge,
    /// By the state entered, in the order of [`STATES`].
    transitions: [Counter; 5],
}

/// The outbox's series. They stay at zero without an `[outbox]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutboxMetrics {
    /// Messages queued or being delivered, as last read from the store (every second).
    pub(crate) pending: Gauge,
    /// Messages an upstream took.
    pub(crate) delivered: Counter,
    /// Messages moved to the dead-letter list.
    pub(crate) dead: Counter,
    /// Messages dropped by `on_full = "drop-oldest"`.
    pub(crate) dropped: Counter,
    /// Bytes of request bodies async routes hold while they read and store them.
    pub(crate) buffered: Gauge,
}

/// One upstream's series.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamMetrics {
    pub(crate) inflight: Gauge,
    pub(crate) concurrency_limit: Gauge,
    /// `[admin] metrics = false`: the limits' recent admissions are not counted.
    pub(crate) skip: bool,
}

// === impl Metrics ===

impl Metrics {
    /// The families, registered into `registry`; the outbox's stay at zero without an outbox.
    ///
    /// With `record` false, requests and attempts are not counted (their families stay at zero,
    /// and so do the stats the admin API shows): what is left is the state the proxy keeps
    /// anyway (breaker states and transitions, health, in-flight and limits). That lets a
    /// benchmark measure what recording costs, and a user who never reads them skip it.
    pub(crate) fn register(registry: &mut Registry, record: bool) -> Metrics {
        let metrics = Metrics {
            skip: !record,
            ..Metrics::default()
        };
        // prometheus-client appends `_total` to a counter's name.
        registry.register(
            "rampart_requests",
            "Requests answered, by route and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "rampart_request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            metrics.duration.clone(),
        );
        registry.register(
            "rampart_upstream_requests",
            "Attempts sent to an endpoint, by outcome",
            metrics.upstream_requests.clone(),
        );
        registry.register(
            "rampart_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced-open, 4 forced-closed",
            metrics.breaker_state.clone(),
        );
        registry.register(
            "rampart_endpoint_reinstated",
            "1 while the endpoint takes traffic though its breaker is open: more endpoints are \
             ejected than max_ejected_percent allows, and the cap keeps it in service; else 0",
            metrics.endpoint_reinstated.clone(),
        );
        registry.register(
            "rampart_breaker_transitions",
            "Circuit breaker transitions, by the state entered",
            metrics.breaker_transitions.clone(),
        );
        registry.register(
            "rampart_retries",
            "Retries sent, by route",
            metrics.retries.clone(),
        );
        registry.register(
            "rampart_retry_budget_exhausted",
            "Retries the route's retry budget refused",
            metrics.retry_budget_exhausted.clone(),
        );
        registry.register(
            "rampart_hedges",
            "Hedged attempts sent, by route",
            metrics.hedges.clone(),
        );
        registry.register(
            "rampart_endpoint_healthy",
            "1 while the active health check holds the endpoint healthy, else 0",
            metrics.endpoint_healthy.clone(),
        );
        registry.register(
            "rampart_inflight",
            "Attempts holding a slot of the upstream's concurrency limit",
            metrics.inflight.clone(),
        );
        registry.register(
            "rampart_concurrency_limit",
            "The upstream's concurrency limit: fixed, or as the adaptive limit stands",
            metrics.concurrency_limit.clone(),
        );
        registry.register(
            "rampart_listener_connections",
            "Connections open on the listener",
            metrics.listener_connections.clone(),
        );
        registry.register(
            "rampart_listener_parked_connections",
            "HTTP/1.1 connections of the listener waiting for their next request without hyper's buffers",
            metrics.listener_parked.clone(),
        );
        registry.register(
            "rampart_listener_refused_connections",
            "Connections closed at once because the listener held max_connections already",
            metrics.listener_refused.clone(),
        );
        registry.register(
            "rampart_listener_accept_failures",
            "Accepts of the listener that failed (out of file descriptors, most often); the clients wait in the kernel's queue meanwhile",
            metrics.listener_accept_failures.clone(),
        );
        registry.register(
            "rampart_listener_unrouted_requests",
            "Requests the listener answered before any route took them, by the answer's x-rampart-error",
            metrics.listener_unrouted.clone(),
        );
        registry.register(
            "rampart_outbox_pending",
            "Messages of async routes queued or being delivered",
            metrics.outbox.pending.clone(),
        );
        registry.register(
            "rampart_outbox_delivered",
            "Messages of async routes an upstream took",
            metrics.outbox.delivered.clone(),
        );
        registry.register(
            "rampart_outbox_dead",
            "Messages of async routes moved to the dead-letter list",
            metrics.outbox.dead.clone(),
        );
        registry.register(
            "rampart_outbox_dropped",
            "Messages of async routes dropped to make room (on_full = \"drop-oldest\")",
            metrics.outbox.dropped.clone(),
        );
        registry.register(
            "rampart_outbox_buffered_bytes",
            "Bytes of request bodies async routes hold in memory while they read and store them (max_buffered)",
            metrics.outbox.buffered.clone(),
        );
        registry.register(
            "rampart_config_reloads",
            "Reloads of the configuration file asked (SIGHUP, POST /api/reload), by outcome: applied or refused",
            metrics.reloads.clone(),
        );
        registry.register(
            "rampart_config_last_reload_successful",
            "1 when the last reload asked was applied (or none was asked yet), 0 when it was refused",
            metrics.last_reload_successful.clone(),
        );
        // Both outcomes from the start, so that a rate or an alert on either has a series.
        for outcome in ["applied", "refused"] {
            metrics
                .reloads
                .get_or_create_owned(&vec![("outcome", outcome.to_owned())]);
        }
        metrics.last_reload_successful.set(1);
        metrics
    }

    /// Counts a reload asked, applied or refused.
    pub(crate) fn reloaded(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.reloads
            .get_or_create_owned(&vec![("outcome", outcome.to_owned())])
            .inc();
        self.last_reload_successful.set(i64::from(applied));
    }

    /// A receiver of every change from now on.
    pub(crate) fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.0.subscribe()
    }

    /// The series of the listener named `listener`: state the proxy keeps, recorded whatever
    /// `[admin] metrics` says.
    pub(crate) fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = vec![("listener", listener.to_owned())];
        let unrouted = |reason: Reason| {
            let mut labels = labels.clone();
            labels.push(("reason", reason.as_str().to_owned()));
            self.listener_unrouted.get_or_create_owned(&labels)
        };
        ListenerMetrics {
            connections: self.listener_connections.get_or_create_owned(&labels),
            parked: self.listener_parked.get_or_create_owned(&labels),
            refused: self.listener_refused.get_or_create_owned(&labels),
            accept_failures: self.listener_accept_failures.get_or_create_owned(&labels),
            unrouted: UNROUTED.map(unrouted),
        }
    }

    /// The series of the route named `route`.
    pub(crate) fn route(&self, route: &str) -> RouteMetrics {
        let labels = || vec![("route", route.to_owned())];
        let outcome = |(_, name): (RouteOutcome, &str)| {
            let mut labels = labels();
            labels.push(("outcome", name.to_owned()));
            self.requests.get_or_create_owned(&labels)
        };
        RouteMetrics {
            skip: self.skip,
            outcomes: ROUTE_OUTCOMES.map(outcome),
            duration: self.duration.get_or_create_owned(&labels()),
            retries: self.retries.get_or_create_owned(&labels()),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create_owned(&labels()),
            hedges: self.hedges.get_or_create_owned(&labels()),
            live: self
                .routes_live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(route.to_owned())
                .or_insert_with(|| {
                    Arc::new(RouteLive {
                        recent: RouteRecent::new(),
                        in_flight: AtomicU64::new(0),
                    })
                })
                .clone(),
        }
    }

    /// The series of the endpoint `endpoint` of `upstream`, with its breaker's when it has one.
    pub(crate) fn endpoint(
        &self,
        upstream: &str,
        endpoint: &str,
        breaker: bool,
    ) -> EndpointMetrics {
        let labels = || endpoint_labels(upstream, endpoint, None);
        let with = |key, value| endpoint_labels(upstream, endpoint, Some((key, value)));
        let healthy = self.endpoint_healthy.get_or_create_owned(&labels());
        healthy.set(1);
        EndpointMetrics {
            skip: self.skip,
            attempts: ["success", "failure"].map(|outcome| {
                self.upstream_requests
                    .get_or_create_owned(&with("outcome", outcome))
            }),
            breaker: breaker.then(|| BreakerSeries {
                state: self.breaker_state.get_or_create_owned(&labels()),
                reinstated: self.endpoint_reinstated.get_or_create_owned(&labels()),
                transitions: STATES.map(|to| {
                    self.breaker_transitions
                        .get_or_create_owned(&with("to", to.as_str()))
                }),
            }),
            healthy,
            recent: Recent::new(),
            changes: self.changes.clone(),
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
            last_failure: AtomicU32::new(0),
        }
    }

    /// The series of `upstream`.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let labels = vec![("upstream", upstream.to_owned())];
        UpstreamMetrics {
            inflight: self.inflight.get_or_create_owned(&labels),
            concurrency_limit: self.concurrency_limit.get_or_create_owned(&labels),
            skip: self.skip,
        }
    }

    // A reload drops the series of what it removed: a gauge left behind (an endpoint held
    // unhealthy, a breaker open) would keep an alert firing about something that no longer
    // exists. Requests still finishing on what was removed count in series no longer shown; a
    // name that comes back starts its counters over, which Prometheus reads as a reset.

    /// Drops the series of the route `route`.
    pub(crate) fn forget_route(&self, route: &str) {
        let labels = || vec![("route", route.to_owned())];
        for (_, outcome) in ROUTE_OUTCOMES {
            let mut labels = labels();
            labels.push(("outcome", outcome.to_owned()));
            self.requests.remove(&labels);
        }
        self.duration.remove(&labels());
        self.retries.remove(&labels());
        self.retry_budget_exhausted.remove(&labels());
        self.hedges.remove(&labels());
        self.routes_live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(route);
    }

    /// Drops the series of the upstream `upstream` itself (not its endpoints').
    pub(crate) fn forget_upstream(&self, upstream: &str) {
        let labels = vec![("upstream", upstream.to_owned())];
        self.inflight.remove(&labels);
        self.concurrency_limit.remove(&labels);
    }

    /// Drops the series of the endpoint `endpoint` of `upstream`.
    pub(crate) fn forget_endpoint(&self, upstream: &str, endpoint: &str) {
        let labels = || endpoint_labels(upstream, endpoint, None);
        let with = |key, value| endpoint_labels(upstream, endpoint, Some((key, value)));
        self.endpoint_healthy.remove(&labels());
        self.forget_breaker(upstream, endpoint);
        for outcome in ["success", "failure"] {
            self.upstream_requests.remove(&with("outcome", outcome));
        }
    }

    /// Drops the breaker series of the endpoint `endpoint` of `upstream`: it has no breaker
    /// any more (`enabled = false`).
    pub(crate) fn forget_breaker(&self, upstream: &str, endpoint: &str) {
        self.breaker_state
            .remove(&endpoint_labels(upstream, endpoint, None));
        self.endpoint_reinstated
            .remove(&endpoint_labels(upstream, endpoint, None));
        for to in STATES {
            self.breaker_transitions.remove(&endpoint_labels(
                upstream,
                endpoint,
                Some(("to", to.as_str())),
            ));
        }
    }
}

/// The labels of an endpoint's series, and one more.
fn endpoint_labels(upstream: &str, endpoint: &str, more: Option<(&'static str, &str)>) -> Labels {
    let mut labels = vec![
        ("upstream", upstream.to_owned()),
        ("endpoint", endpoint.to_owned()),
    ];
    labels.extend(more.map(|(key, value)| (key, value.to_owned())));
    labels
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Counts a request in flight from its arrival, `started`, until the guard is dropped.
    pub(crate) fn executing(&self, started: Instant) -> Executing<'_> {
        if self.skip {
            return Executing {
                metrics: None,
                started,
            };
        }
        let in_flight = self.live.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.recent.in_flight(in_flight, started);
        Executing {
            metrics: Some(self),
            started,
        }
    }

    /// Counts a request answered `outcome` now, of `kind`, having arrived at `started`.
    fn answered(&self, outcome: RouteOutcome, kind: Kind, started: Instant) {
        if self.skip {
            return;
        }
        let now = turn::now();
        self.record(outcome, kind, now.saturating_duration_since(started), now);
    }

    /// Counts a request whose answer's head went out (`headed`) as ended now with `outcome`, of
    /// `kind`; `None` (the client left before its end) counts it `cancelled`.
    pub(crate) fn judged(&self, headed: Headed, ended: Option<(RouteOutcome, Kind)>) {
        if self.skip {
            return;
        }
        match ended {
            Some((outcome, kind)) => self.record(outcome, kind, headed.elapsed, turn::now()),
            None => {
                self.outcomes[RouteOutcome::Cancelled as usize].inc();
            }
        }
    }

    fn record(&self, outcome: RouteOutcome, kind: Kind, elapsed: Duration, now: Instant) {
        self.outcomes[outcome as usize].inc();
        self.duration.observe(elapsed);
        self.live
            .recent
            .record(kind, outcome == RouteOutcome::Fallback, elapsed, now);
    }

    pub(crate) fn retried(&self) {
        if !self.skip {
            self.retries.inc();
        }
    }

    pub(crate) fn budget_exhausted(&self) {
        if !self.skip {
            self.retry_budget_exhausted.inc();
        }
    }

    pub(crate) fn hedged(&self) {
        if !self.skip {
            self.hedges.inc();
        }
    }

    /// Requests answered so far with `outcome`.
    pub(crate) fn count(&self, outcome: RouteOutcome) -> u64 {
        self.outcomes[outcome as usize].get()
    }

    pub(crate) fn retries(&self) -> u64 {
        self.retries.get()
    }

    pub(crate) fn retry_budget_exhausted(&self) -> u64 {
        self.retry_budget_exhausted.get()
    }

    pub(crate) fn hedges(&self) -> u64 {
        self.hedges.get()
    }

    pub(crate) fn recent(&self) -> &RouteRecent {
        &self.live.recent
    }

    /// Requests in flight now, from their arrival to their answer.
    pub(crate) fn in_flight(&self) -> u64 {
        self.live.in_flight.load(Ordering::Relaxed)
    }
}

// === impl EndpointMetrics ===

impl EndpointMetrics {
    /// Counts an attempt sent at `sent` and answered at `answered` (the end of its answer, or
    /// its head for one judged by it) whose outcome is known now. A slow success is a success
    /// here: slowness is the breaker's business (`slow_call`).
    pub(crate) fn attempted(&self, outcome: Outcome, sent: Instant, answered: Instant) {
        if self.skip {
            return;
        }
        let failed = outcome == Outcome::Failure;
        self.attempts[usize::from(failed)].inc();
        self.recent.record(
            failed,
            answered.saturating_duration_since(sent),
            turn::now(),
        );
    }

    /// The breaker entered `transition.to`.
    pub(crate) fn transition(&self, transition: &Transition) {
        self.entered(transition.from, transition.to);
    }

    /// The endpoint's breaker state went from `from` to `to`: a transition of its breaker, or
    /// a reload that gave it a new breaker in another state.
    pub(crate) fn entered(&self, from: State, to: State) {
        if let Some(breaker) = &self.breaker {
            breaker.state.set(i64::from(to as u8));
            breaker.transitions[to as usize].inc();
        }
        self.tell(ChangeKind::Breaker {
            from: from.as_str(),
            to: to.as_str(),
        });
    }

    // Tells the watchers, if any: breakers and health checks change rarely, so the copies of the
    // names this makes cost nothing worth counting.
    fn tell(&self, kind: ChangeKind) {
        // No receiver: nobody watches.
        let _ = self.changes.0.send(Change {
            upstream: self.upstream.clone(),
            endpoint: self.endpoint.clone(),
            kind,
        });
    }

    /// The breaker stands at `state` (when the series is made, or a breaker is taken over).
    pub(crate) fn set_state(&self, state: State) {
        if let Some(breaker) = &self.breaker {
            breaker.state.set(i64::from(state as u8));
        }
    }

    /// The ejection cap put the endpoint back in service (`true`), or let it go.
    pub(crate) fn set_reinstated(&self, reinstated: bool) {
        if let Some(breaker) = &self.breaker {
            breaker.reinstated.set(i64::from(reinstated));
        }
    }

    /// The health checks' verdict changed to `healthy`.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.show_healthy(healthy);
        self.tell(ChangeKind::Health { healthy });
    }

    /// Sets the health gauge to `healthy`, telling no one: the verdict did not change.
    pub(crate) fn show_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    /// The upstream's name.
    pub(crate) fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The endpoint's address.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Notes what a failed attempt met, before its outcome reaches the breaker: an ejection it
    /// causes is logged with it.
    pub(crate) fn failed_with(&self, failure: Failure) {
        self.last_failure.store(failure.encode(), Ordering::Relaxed);
    }

    /// What the last failed attempt noted met.
    pub(crate) fn last_failure(&self) -> Option<Failure> {
        Failure::decode(self.last_failure.load(Ordering::Relaxed))
    }

    /// Attempts so far: `(successes, failures)`.
    pub(crate) fn attempts(&self) -> (u64, u64) {
        (self.attempts[0].get(), self.attempts[1].get())
    }

    pub(crate) fn recent(&self) -> &Recent {
        &self.recent
    }
}

/// A duration histogram of atomics: an observation is three relaxed adds, no lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latency {
    inner: Arc<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    /// One count per bound of [`BOUNDS`], then one for what lies above the last.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// The upper bounds of the request duration buckets, in seconds: 100 µs, what a request to a
/// neighbour on the same host takes through rampart, to a minute, past the route timeouts
/// most set (a longer request counts in `+Inf`).
const BOUNDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

impl Latency {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BOUNDS.len());
        // Counters guard no other data: relaxed adds are enough.
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            // The encoder writes `f64::MAX` as `+Inf`.
            .chain([f64::MAX])
            .zip(&self.inner.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(self.inner.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn an_endpoint_keeps_what_its_last_failure_met() {
        let metrics = Metrics::default();
        let endpoint = metrics.endpoint("app", "127.0.0.1:1", true);
        assert_eq!(endpoint.last_failure(), None);
        let transport = [
            TransportError::ConnectFailure,
            TransportError::Reset,
            TransportError::RefusedStream,
            TransportError::Timeout,
            TransportError::Invalid,
        ]
        .map(Failure::Transport);
        let others = [
            Failure::Timeout,
            Failure::Status(503),
            Failure::Status(599),
            Failure::Grpc(GrpcCode::Unavailable),
            Failure::Grpc(GrpcCode::Ok),
        ];
        for failure in transport.into_iter().chain(others) {
            endpoint.failed_with(failure);
            assert_eq!(endpoint.last_failure(), Some(failure));
        }
        assert_eq!(
            Failure::Grpc(GrpcCode::Unavailable).to_string(),
            "answered grpc-status 14 (unavailable)"
        );
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn every_family_is_registered_and_a_route_counts_by_outcome() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, true);
        let route = metrics.route("api");
        route.answered(
            RouteOutcome::Success,
            Kind::Success,
            Instant::now() - Duration::from_millis(3),
        );
        route.answered(
            RouteOutcome::Rejected,
            Kind::ShortCircuited,
            Instant::now() - Duration::from_millis(30),
        );
        let text = text(&registry);
        for line in [
            r#"rampart_requests_total{route="api",outcome="success"} 1"#,
            r#"rampart_requests_total{route="api",outcome="rejected"} 1"#,
            r#"rampart_requests_total{route="api",outcome="fallback"} 0"#,
            r#"rampart_request_duration_seconds_bucket{le="0.0001",route="api"} 0"#,
            r#"rampart_request_duration_seconds_bucket{le="0.001",route="api"} 0"#,
            r#"rampart_request_duration_seconds_bucket{le="0.005",route="api"} 1"#,
            r#"rampart_request_duration_seconds_bucket{le="+Inf",route="api"} 2"#,
            r#"rampart_request_duration_seconds_count{route="api"} 2"#,
            "rampart_outbox_pending 0",
            "rampart_outbox_delivered_total 0",
            "rampart_outbox_dead_total 0",
            "rampart_outbox_dropped_total 0",
            "rampart_outbox_buffered_bytes 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn the_same_labels_give_the_same_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, true);
        let first = metrics.endpoint("app", "127.0.0.1:1", true);
        first.attempted(Outcome::Failure, Instant::now(), Instant::now());
        let again = metrics.endpoint("app", "127.0.0.1:1", true);
        again.attempted(Outcome::Slow, Instant::now(), Instant::now());
        assert_eq!(first.attempts(), (1, 1));
        assert!(text(&registry).contains(
            r#"rampart_upstream_requests_total{upstream="app",endpoint="127.0.0.1:1",outcome="failure"} 1"#
        ));
    }

    #[test]
    fn with_recording_off_requests_and_attempts_count_nothing() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, false);
        let route = metrics.route("api");
        route.answered(RouteOutcome::Failure, Kind::Failure, Instant::now());
        let _executing = route.executing(Instant::now());
        route.retried();
        let endpoint = metrics.endpoint("app", "127.0.0.1:1", true);
        endpoint.attempted(Outcome::Failure, Instant::now(), Instant::now());
        assert_eq!(route.count(RouteOutcome::Failure), 0);
        assert_eq!(route.retries(), 0);
        assert_eq!(route.in_flight(), 0);
        assert_eq!(route.recent().read().requests_per_second, 0.0);
        assert_eq!(endpoint.attempts(), (0, 0));
        // The families are still there for a scraper, at zero.
        assert!(
            text(&registry).contains(r#"rampart_requests_total{route="api",outcome="failure"} 0"#)
        );
    }
}
