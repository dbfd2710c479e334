//! A read-only view of a running proxy, for the admin API: each route's and each upstream's
//! counts, recent rates and latencies, and each endpoint's breaker, health and load.
//!
//! The counts are those of the metrics (`rampart_requests_total` and the rest), read from the
//! same handles; the rates, percentiles and recent counts cover a rolling window of about ten
//! seconds (see [`Window`], [`Answers`] and [`Admissions`]).

use rampart_policy::breaker::{CircuitBreaker, State};

use crate::metrics::RouteOutcome;
pub use crate::recent::{Admissions, Answers, Latencies, Window};
use crate::stack::Stack;
use crate::upstream::Pool;

/// Every route and upstream of the proxy at one moment, in configuration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The routes, in file order.
    pub routes: Vec<RouteStats>,
    /// The upstreams, in file order.
    pub upstreams: Vec<UpstreamStats>,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStats {
    /// The route's name.
    pub name: String,
    /// The upstream it sends to.
    pub upstream: String,
    /// Requests answered since the start, by outcome (`rampart_requests_total`; a reload keeps
    /// counting for a route of the same name).
    pub requests: Outcomes,
    /// Retries sent (`rampart_retries_total`).
    pub retries: u64,
    /// Retries the budget refused (`rampart_retry_budget_exhausted_total`).
    pub retry_budget_exhausted: u64,
    /// Hedges sent (`rampart_hedges_total`).
    pub hedges: u64,
    /// The last ten seconds or so; an error is any answer but a success.
    pub recent: Window,
    /// The same window's answers by what became of them, with their latency distributions.
    pub answers: Answers,
    /// Requests between their arrival and their answer (the response head), now.
    pub in_flight: u64,
}

/// A route's requests by outcome; docs/admin.md says which answer counts as which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcomes {
    /// Answered by the upstream, without a failure status.
    pub success: u64,
    /// A failing upstream answer, or a rampart error other than a refusal.
    pub failure: u64,
    /// Answered by the route's fallback.
    pub fallback: u64,
    /// Refused by rampart's own policies.
    pub rejected: u64,
    /// Never answered: the client went away first.
    pub cancelled: u64,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamStats {
    /// The upstream's name.
    pub name: String,
    /// Attempts holding a slot of its concurrency limit (`rampart_inflight`).
    pub in_flight: u64,
    /// Its concurrency limit, fixed or as the adaptive limit stands.
    pub concurrency_limit: u64,
    /// Attempts waiting in the pending queue for a slot, now (never any with the adaptive
    /// limit, which has no queue).
    pub queued: u64,
    /// How many attempts the pending queue holds at most (`max_pending`); 0 without a queue (the
    /// adaptive limit, or `pending_timeout = "0s"`).
    pub max_pending: u64,
    /// The last ten seconds or so of its limits' admissions.
    pub admissions: Admissions,
    /// Its endpoints, primaries then backups.
    pub endpoints: Vec<EndpointStats>,
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStats {
    /// Its address, as configured.
    pub address: String,
    /// Whether it is a backup (`backup`), used only when no primary may take an attempt.
    pub backup: bool,
    /// Its breaker's state; `None` when the upstream's breaker is disabled.
    pub state: Option<State>,
    /// Whether its active health check holds it healthy (always, without a check).
    pub healthy: bool,
    /// Whether it takes attempts though its breaker refuses them: more endpoints are ejected
    /// than `max_ejected_percent` allows, and it is among the ones ejected last, which the cap
    /// puts back in service.
    pub reinstated: bool,
    /// Attempts sent to it and not yet answered.
    pub in_flight: u64,
    /// Attempts whose outcome was recorded, since the start: `(success, failure)`
    /// (`rampart_upstream_requests_total`; a reload keeps counting for the same address).
    pub attempts: (u64, u64),
    /// The last ten seconds or so of its attempts; an error is a failed attempt.
    pub recent: Window,
}

/// What [`ProxyHandle::breakers`](crate::ProxyHandle::breakers) could not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// No upstream has this name.
    #[error("no upstream named \"{0}\"")]
    Upstream(String),
    /// The upstream has no endpoint with this address.
    #[error("upstream \"{upstream}\" has no endpoint \"{endpoint}\"")]
    Endpoint {
        /// The upstream.
        upstream: String,
        /// The address asked for.
        endpoint: String,
    },
    /// The upstream's breakers are disabled (`[upstreams.NAME.breaker] enabled = false`).
    #[error("upstream \"{0}\" has its breakers disabled")]
    Disabled(String),
}

/// The stats of the route whose stack is `stack`, to `upstream`.
pub(crate) fn route(stack: &Stack, upstream: &str) -> RouteStats {
    let metrics = stack.metrics();
    let in_flight = metrics.in_flight();
    let mut answers = metrics.recent().answers();
    // The peak is taken as requests arrive: requests still in flight, with none arriving since,
    // are in it too.
    answers.peak_in_flight = answers.peak_in_flight.max(in_flight);
    RouteStats {
        name: stack.name().to_owned(),
        upstream: upstream.to_owned(),
        requests: Outcomes {
            success: metrics.count(RouteOutcome::Success),
            failure: metrics.count(RouteOutcome::Failure),
            fallback: metrics.count(RouteOutcome::Fallback),
            rejected: metrics.count(RouteOutcome::Rejected),
            cancelled: metrics.count(RouteOutcome::Cancelled),
        },
        retries: metrics.retries(),
        retry_budget_exhausted: metrics.retry_budget_exhausted(),
        hedges: metrics.hedges(),
        recent: metrics.recent().read(),
        answers,
        in_flight,
    }
}

/// The breakers of `pool` (the upstream `upstream`): of the endpoint `endpoint`, or of every
/// endpoint for `None`.
pub(crate) fn breakers(
    pool: &Pool,
    upstream: &str,
    endpoint: Option<&str>,
) -> Result<Vec<CircuitBreaker>, Unknown> {
    let mut found = false;
    let mut breakers = Vec::new();
    for (address, breaker) in pool.endpoint_breakers() {
        if endpoint.is_none_or(|endpoint| endpoint == address.as_str()) {
            found = true;
            breakers.extend(breaker.cloned());
        }
    }
    match endpoint {
        Some(endpoint) if !found => Err(Unknown::Endpoint {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        }),
        _ if breakers.is_empty() => Err(Unknown::Disabled(upstream.to_owned())),
        _ => Ok(breakers),
    }
}

/// A change an operator watches for, told as it happens: an endpoint's breaker moved, or its
/// health checks changed their verdict. Every [`ProxyHandle::changes`](crate::ProxyHandle::changes)
/// receiver gets each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The upstream's name.
    pub upstream: String,
    /// The endpoint's address, as configured.
    pub endpoint: String,
    /// What changed.
    pub kind: ChangeKind,
}

/// What changed about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its breaker went from one state to another (`closed`, `open`, `half-open`,
    /// `forced-open`, `forced-closed`).
    Breaker {
        /// The state left.
        from: &'static str,
        /// The state entered.
        to: &'static str,
    },
    /// Its health checks now hold it healthy, or not.
    Health {
        /// The new verdict.
        healthy: bool,
    },
}
