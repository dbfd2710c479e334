//! Upstreams: a pooled client per upstream, its endpoints each behind a circuit breaker (and an
//! active health check, when configured), and the choice of an endpoint.
//!
//! The breakers are the proxy's outlier ejection: an endpoint whose breaker is open is skipped by
//! [`Pool::pick`] until its open period ends, then it gets the breaker's half-open probes, and
//! comes back when they succeed. Because the breaker sits per endpoint, below the retry, a retry
//! after a failure goes to an endpoint that still works instead of hammering the broken one.
//!
//! The active health checks (`[upstreams.NAME.health]`, see [`crate::health`]) mark endpoints
//! healthy or not; [`Pool::pick`] skips an unhealthy endpoint as it skips an ejected one. Among
//! the endpoints left, the upstream's [`Balancer`] (`balance`) chooses.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rampart_config::{Breaker, StatusMatch, Upstream, UpstreamProtocol};
use rampart_http::{FailureStatus, Reason};
use rampart_policy::breaker::{
    CircuitBreaker, OwnedPermit, Permit, Reason as Why, State, Transition,
};
use rampart_policy::rng::Rng;
use tokio::time::Instant;

use crate::Error;
use crate::balance::{Balancer, InFlight, Load};
use crate::body::BodyFault;
use crate::connections::{Connections, PING_AFTER, PING_TIMEOUT};
use crate::dns::{Connector, Resolver};
use crate::limits::Limits;
use crate::lock;
use crate::metrics::{EndpointMetrics, Failure, Metrics, UpstreamMetrics};
use crate::stats::{EndpointStats, UpstreamStats};
use crate::turn;

/// One upstream: its endpoints, primaries then backups, and the connection pool they share.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The primaries first, then the backups: an endpoint is known by its index here.
    endpoints: Vec<Endpoint>,
    primaries: usize,
    /// How many endpoints may be ejected at once (`max_ejected_percent`, at least one).
    max_ejected: usize,
    /// The first open period of the breakers (`open_for`): the longest an endpoint ejected
    /// waits to be probed while the cap puts others back (see [`Pool::let_go`]).
    open_for: Duration,
    /// How many endpoints the health checks hold unhealthy.
    unhealthy: AtomicUsize,
    /// How many endpoints the ejection cap put back at the last pick (`Endpoint::kept`): while
    /// none is, a pick looks at no endpoint's mark.
    kept: AtomicUsize,
    balancer: Balancer,
    failures: FailureStatus,
    grpc: bool,
    /// Shared with the pool a reload replaced when `[upstreams.NAME.limits]` did not change, so
    /// that the places its attempts still hold count against the limit.
    limits: Arc<Limits>,
    metrics: UpstreamMetrics,
}

/// One endpoint: its breaker (none when `[upstreams.NAME.breaker] enabled = false`), its health
/// and its load.
#[derive(Debug)]
struct Endpoint {
    authority: Authority,
    connections: Connections,
    breaker: Option<CircuitBreaker>,
    /// Whether the breaker's transitions reach the metrics and the event stream: while it is
    /// the one serving its endpoint. Quiet while a reload builds it (a reload refused must count
    /// nothing, and an operator's force carried over is no new transition), and again once a
    /// reload replaces it (the old pool's attempts still in flight would otherwise move the
    /// series of the breaker now serving).
    speaks: Arc<AtomicBool>,
    /// Written by the endpoint's health check only; true until a check says otherwise, but for
    /// an endpoint a reload added to a checked upstream (see [`Pool::take_health`]).
    healthy: AtomicBool,
    /// Held out until its first check passes: a reload added it to a checked upstream.
    pending: bool,
    /// Whether the ejection cap put the endpoint back at the last pick, its breaker refusing.
    kept: AtomicBool,
    /// When the cap, putting another endpoint back, last had this one probed at once (see
    /// [`Pool::let_go`]): at most once an `open_for`. Carried over a reload with the breaker.
    probed_at_once: Arc<Mutex<Option<Instant>>>,
    /// Shared with the endpoint at the same address of the pool a reload replaced, so that
    /// the attempts it still has in flight count in the balancer's choices.
    load: Arc<Load>,
    metrics: Arc<EndpointMetrics>,
}

/// The endpoint chosen for one attempt, with its breaker's permit and its place in the
/// endpoint's load: the attempt's outcome must be recorded on it ([`Picked::record`]). Dropped
/// unrecorded (the client went away, a hedge won elsewhere), it is cut short
/// ([`Picked::cut_short`]): the breaker learns nothing unless the attempt had already run long
/// enough to be a slow call; the balancer counts the time it ran as a sample that can only raise
/// its estimate (see `InFlight`'s drop), and the attempt no longer counts as in flight.
#[derive(Debug)]
pub(crate) struct Picked<'a> {
    pub(crate) index: usize,
    permit: Unjudged<'a>,
    in_flight: InFlight<'a>,
    metrics: &'a Arc<EndpointMetrics>,
    sent: Instant,
}

/// A breaker's permit (none when the endpoint has no breaker, or when the ejection cap sent the
/// attempt to an endpoint whose breaker refused it: see `Pool::pick`) that is cut short when
/// dropped unrecorded. A client that goes away before the answer, like one whose own deadline
/// runs out, says nothing of the endpoint; but an endpoint that hangs while every client gives
/// up first must still be seen, as a slow call once past the threshold.
///
/// Not when the exchange was waiting for the client's own body, or the body failed: a client
/// that uploads slowly, then hangs up (an HTTP/2 stream reset mid-body drops the exchange before
/// its body can say so), says nothing of the endpoint however long it took.
#[derive(Debug)]
struct Unjudged<'a>(Option<Permit<'a>>, Option<BodyFault>);

impl Drop for Unjudged<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.0.take() else {
            return;
        };
        let clients = self
            .1
            .as_ref()
            .is_some_and(|fault| fault.awaits_client() || fault.get().is_some());
        if !clients {
            permit.cut_short();
        }
    }
}

impl Picked<'_> {
    /// Whether the attempt is a half-open probe of its endpoint's breaker.
    pub(crate) fn is_probe(&self) -> bool {
        self.permit.0.as_ref().is_some_and(Permit::is_probe)
    }

    /// Tells the endpoint's breaker how the attempt went, its balancer how long it took, and its
    /// metrics both.
    /// Notes what the attempt met, when it failed, before [`Picked::record`]: an ejection its
    /// outcome causes is logged with it.
    pub(crate) fn failed_with(&self, failure: Failure) {
        self.metrics.failed_with(failure);
    }

    pub(crate) fn record(mut self, outcome: rampart_policy::Outcome) {
        self.metrics.attempted(outcome, self.sent, turn::now());
        let probe = self.is_probe();
        if let Some(permit) = self.permit.0.take() {
            permit.record(outcome);
        }
        self.in_flight.finish(outcome, probe);
    }

    /// The client's deadline ran out before the endpoint answered: the breaker learns nothing,
    /// unless the attempt had already run past its slow-call threshold with slow calls tripping
    /// it (`Permit::cut_short`); the balancer counts it as an attempt let go unfinished. What a
    /// drop does too.
    pub(crate) fn cut_short(self) {
        drop(self);
    }

    /// Watches the request's body (`fault`, when it has one): a drop while the exchange waits
    /// for it, or after it failed, is the client's doing.
    pub(crate) fn watch_client(&mut self, fault: Option<&BodyFault>) {
        self.permit.1 = fault.cloned();
    }

    /// The attempt failed for the client's own doing (its request body broke off, grew too
    /// large or stalled while the endpoint waited for it): the breaker learns nothing at all,
    /// however long the endpoint waited.
    pub(crate) fn release(mut self) {
        drop(self.permit.0.take());
    }

    /// The same pick, no longer borrowing `pool` (the pool it came from), for an outcome known
    /// only when the response body ends: from a gRPC answer's trailers. The attempt's time is
    /// its head's, for the breaker's slow calls and the metrics alike, as it is for the
    /// balancer: a server stream that lasts longer than `slow_call` is no slow call, and a
    /// call is slow when its answer is slow to begin.
    pub(crate) fn into_owned(mut self, pool: &Pool) -> OwnedPicked {
        // The balancer learns from the response head: the latency it weighs is the time to the
        // first byte of an answer, and a stream that lasts minutes would otherwise count as
        // one slow request in flight all along.
        let probe = self.is_probe();
        self.in_flight
            .finish(rampart_policy::Outcome::Success, probe);
        let breaker = pool.endpoints[self.index].breaker.as_ref();
        let mut permit = self
            .permit
            .0
            .take()
            .zip(breaker)
            .map(|(permit, breaker)| breaker.own(permit));
        if let Some(permit) = &mut permit {
            permit.answered();
        }
        OwnedPicked {
            permit,
            metrics: self.metrics.clone(),
            sent: self.sent,
            head: turn::now(),
            by_head: false,
        }
    }

    /// As [`Picked::into_owned`], for an answer whose good head is its outcome unless its body
    /// breaks off.
    pub(crate) fn judged_by_head(self, pool: &Pool) -> OwnedPicked {
        let mut owned = self.into_owned(pool);
        owned.by_head = true;
        owned
    }
}

/// The endpoints one request has sent attempts to, which its next attempt (a retry, a hedge)
/// avoids while another endpoint may take it, as Envoy's `previous_hosts` retry predicate does:
/// an endpoint that failed this request once is the likeliest of all to fail it again.
///
/// A bit per endpoint: the first 64 inline, so that a request to any pool of up to 64 endpoints
/// keeps it without allocating, the others in words allocated once one of them is tried.
#[derive(Debug, Default)]
pub(crate) struct Avoid {
    /// Endpoints 0 to 63.
    low: u64,
    /// Endpoints from 64 on, 64 to a word.
    high: Vec<u64>,
    /// The endpoint tried last: round-robin continues after it, and it is the last resort.
    last: Option<usize>,
}

impl Avoid {
    /// Adds the endpoint at `index`, now the one tried last.
    pub(crate) fn insert(&mut self, index: usize) {
        match index.checked_sub(64) {
            None => self.low |= 1 << index,
            Some(high) => {
                let word = high / 64;
                if self.high.len() <= word {
                    self.high.resize(word + 1, 0);
                }
                self.high[word] |= 1 << (high % 64);
            }
        }
        self.last = Some(index);
    }

    /// Whether the endpoint at `index` was tried.
    pub(crate) fn contains(&self, index: usize) -> bool {
        match index.checked_sub(64) {
            None => self.low & (1 << index) != 0,
            Some(high) => self
                .high
                .get(high / 64)
                .is_some_and(|word| *word & (1 << (high % 64)) != 0),
        }
    }

    /// The endpoint tried last.
    fn last(&self) -> Option<usize> {
        self.last
    }

    /// The endpoints tried, in the order a pick falls back to them when no other may take the
    /// attempt: by index, the one tried last at the very end.
    fn fallback(&self) -> impl Iterator<Item = usize> + '_ {
        let words = std::iter::once(self.low).chain(self.high.iter().copied());
        words
            .enumerate()
            .flat_map(|(n, mut word)| {
                std::iter::from_fn(move || {
                    let bit = (word != 0).then(|| word.trailing_zeros() as usize)?;
                    word &= word - 1;
                    Some(n * 64 + bit)
                })
            })
            .filter(|&index| Some(index) != self.last)
            .chain(self.last)
    }
}

impl FromIterator<usize> for Avoid {
    /// The endpoints of `iter`, tried in its order.
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Avoid {
        let mut avoid = Avoid::default();
        for index in iter {
            avoid.insert(index);
        }
        avoid
    }
}

/// A [`Picked`] that owns what it needs, for an outcome known when the response body ends,
/// timed at its head. Dropped unrecorded (the client went away before the end), one judged by
/// trailers tells the breaker nothing, and one judged by its head ([`Picked::judged_by_head`])
/// counts as its head did.
#[derive(Debug)]
pub(crate) struct OwnedPicked {
    permit: Option<OwnedPermit>,
    metrics: Arc<EndpointMetrics>,
    sent: Instant,
    /// When the head came: the attempt's end for its latency.
    head: Instant,
    /// Whether the good head is the outcome unless the body breaks off, until it is recorded.
    by_head: bool,
}

impl OwnedPicked {
    /// Tells the endpoint's breaker and its metrics how the attempt went.
    pub(crate) fn record(mut self, outcome: rampart_policy::Outcome) {
        self.settle(outcome);
    }

    /// Whether the answer's good head is its outcome unless its body breaks off.
    pub(crate) fn is_judged_by_head(&self) -> bool {
        self.by_head
    }

    /// As [`Picked::cut_short`].
    pub(crate) fn cut_short(mut self) {
        self.by_head = false;
        if let Some(permit) = self.permit.take() {
            permit.cut_short();
        }
    }

    fn settle(&mut self, outcome: rampart_policy::Outcome) {
        self.by_head = false;
        self.metrics.attempted(outcome, self.sent, self.head);
        if let Some(permit) = self.permit.take() {
            permit.record(outcome);
        }
    }
}

impl Drop for OwnedPicked {
    fn drop(&mut self) {
        // Let go before its body's end (the client went away, say): as its head said.
        if self.by_head {
            self.settle(rampart_policy::Outcome::Success);
        }
    }
}

impl Pool {
    /// The pool of `upstream`, its series made in `metrics`; its balancer draws from `rng`.
    pub(crate) fn new(upstream: &Upstream, rng: &Rng, metrics: &Metrics) -> Result<Pool, Error> {
        let invalid = |key: &str, message: String| Error::Invalid {
            path: format!("upstreams.{}.{key}", upstream.name),
            message,
        };
        let authority = |key: &str, endpoint: &rampart_config::value::Endpoint| {
            endpoint
                .to_string()
                .parse::<Authority>()
                .map_err(|err| invalid(key, format!("{endpoint} is not a URI authority: {err}")))
        };
        if upstream.endpoints.is_empty() {
            return Err(invalid(
                "endpoints",
                "an upstream needs at least one endpoint".to_owned(),
            ));
        }
        let balancer = Balancer::new(upstream.balance, rng.clone());
        let http2 = matches!(
            upstream.protocol,
            UpstreamProtocol::Http2 | UpstreamProtocol::Grpc
        )
        .then_some(upstream.h2_max_concurrent_streams as usize);
        let connector = connector(upstream);
        let mut endpoints = Vec::with_capacity(upstream.endpoints.len() + upstream.backup.len());
        for (key, list) in [
            ("endpoints", &upstream.endpoints),
            ("backup", &upstream.backup),
        ] {
            for endpoint in list {
                let authority = authority(key, endpoint)?;
                let breaker =
                    breaker(&upstream.breaker).map_err(|message| invalid("breaker", message))?;
                let metrics = Arc::new(metrics.endpoint(
                    &upstream.name,
                    authority.as_str(),
                    breaker.is_some(),
                ));
                let speaks = Arc::new(AtomicBool::new(true));
                if let Some(breaker) = &breaker {
                    metrics.set_state(breaker.state());
                    let (metrics, speaks) = (metrics.clone(), speaks.clone());
                    breaker.subscribe(move |transition| {
                        if speaks.load(Ordering::Relaxed) {
                            metrics.transition(transition);
                            log_transition(transition, &metrics);
                        }
                    });
                }
                endpoints.push(Endpoint {
                    connections: Connections::new(
                        authority.clone(),
                        connector.clone(),
                        http2,
                        upstream.idle_timeout,
                        upstream.max_connection_age,
                    ),
                    authority,
                    breaker,
                    speaks,
                    healthy: AtomicBool::new(true),
                    pending: false,
                    kept: AtomicBool::new(false),
                    probed_at_once: Arc::default(),
                    load: Arc::new(balancer.load()),
                    metrics,
                });
            }
        }
        let upstream_metrics = metrics.upstream(&upstream.name);
        Ok(Pool {
            max_ejected: max_ejected(endpoints.len(), upstream.breaker.max_ejected_percent),
            open_for: upstream.breaker.open_for,
            endpoints,
            primaries: upstream.endpoints.len(),
            unhealthy: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            balancer,
            failures: failure_status(&upstream.failure_status),
            grpc: upstream.protocol == UpstreamProtocol::Grpc,
            limits: Arc::new(
                Limits::new(&upstream.limits, upstream_metrics.clone())
                    .map_err(|message| invalid("limits", message))?,
            ),
            metrics: upstream_metrics,
        })
    }

    /// The endpoint for the next attempt, preferring any the request has not tried yet (any not
    /// in `avoid`): a tried one only when no other may take the attempt, a backup included. A
    /// request that failed on every primary is retried on a backup before a primary that failed
    /// it, as Envoy's `previous_priorities` retry option does: a refused connection to the only
    /// primary is answered from the backup at once, not after as many attempts on the primary
    /// as its breaker takes to trip.
    ///
    /// An endpoint may take the attempt when it is healthy and its breaker admits a call; the
    /// balancer chooses among the primaries that may, and among the backups only when no
    /// primary may. When no endpoint is healthy at all, the health checks are ignored (fail
    /// open, as Envoy's panic threshold does): a check that fails everywhere says more about the
    /// check than about every endpoint at once, and the breakers still guard each of them.
    ///
    /// The ejection cap: at most `max_ejected_percent` of the endpoints (primaries and backups
    /// together, at least one) are out at once for their breakers. When more breakers refuse,
    /// the endpoints ejected last are used anyway, as many as are past the cap, without a
    /// permit (their outcomes do not touch their breakers): as Envoy refuses the ejections that
    /// would pass its cap, and keeps the hosts ejected first out. A primary put back so is used
    /// beside primaries that admit, but after the backups when none does (as Envoy's priority
    /// levels send the traffic of a level with no healthy host to the next). The cap applies whether or not
    /// other endpoints admit: three of four endpoints ejected under a cap of 50% put one of them
    /// back rather than load the last with everything. It keeps a mass ejection (a shared
    /// dependency's blip tripping every breaker) from becoming an outage of its own, and an
    /// endpoint ejected long ago (dead) out rather than one a blip tripped since. Endpoints held
    /// unhealthy by the health checks are out whatever the cap, as in Envoy, where active health
    /// checking is not subject to it, and so are those an operator forced open: forcing every
    /// breaker open stops the traffic. With a single endpoint (or a cap of 100%), nothing
    /// overrides the breakers, and the answer is `breaker-open` for a lone endpoint,
    /// `no-healthy-endpoint` otherwise.
    ///
    /// An endpoint put back is judged as soon as the cap lets it go (see [`Pool::let_go`]).
    pub(crate) fn pick(&self, avoid: &Avoid) -> Result<Picked<'_>, Reason> {
        self.pick_among(avoid, true)
    }

    /// The endpoint for a hedge of a request racing on the endpoints in `avoid`: as
    /// [`Pool::pick`], but an endpoint of the tier that serves, racing or not, before a backup
    /// it has not tried. The attempts a hedge races have not failed: sending it to a backup
    /// would load the backups while every primary serves.
    pub(crate) fn pick_hedge(&self, avoid: &Avoid) -> Result<Picked<'_>, Reason> {
        self.pick_among(avoid, false)
    }

    /// Whether the endpoint at `index` is the only one of its tier (primaries, or backups).
    pub(crate) fn alone_in_tier(&self, index: usize) -> bool {
        if index < self.primaries {
            self.primaries == 1
        } else {
            self.endpoints.len() - self.primaries == 1
        }
    }

    // A pick preferring untried endpoints of the other tier to tried ones of its own when
    // `across` (a retry: every endpoint tried has failed the request), else its own tier first.
    fn pick_among(&self, avoid: &Avoid, across: bool) -> Result<Picked<'_>, Reason> {
        let usable = self.usable();
        let reinstated = self.past_cap(&usable);
        if !reinstated.is_empty() || self.kept.load(Ordering::Relaxed) != 0 {
            // Only those that serve: a primary put back while a backup serves carries no
            // traffic, and the cap it passes spares the backups, not the primaries' probes.
            self.let_go(&self.serving(reinstated.clone(), &usable));
        }
        let (first, then) = self.tiers(&usable);
        let untried = |tier| self.untried(tier, avoid, &usable, &reinstated);
        let tried = |tier| self.tried_again(tier, avoid, &usable, &reinstated);
        let picked = if across {
            untried(first.clone())
                .or_else(|| untried(then.clone()))
                .or_else(|| tried(first))
                .or_else(|| tried(then))
        } else {
            untried(first.clone())
                .or_else(|| tried(first))
                .or_else(|| untried(then.clone()))
                .or_else(|| tried(then))
        };
        picked.ok_or_else(|| self.refusal())
    }

    /// The primaries and the backups, in the order a pick looks at them. The cap puts ejected
    /// primaries back to spare the primaries still admitting, not to keep the backups idle:
    /// once no primary admits by its own breaker, the backups come first, and a primary past the
    /// cap only when no backup may take the attempt either.
    fn tiers(&self, usable: &impl Fn(usize) -> bool) -> (Range<usize>, Range<usize>) {
        let (primaries, backups) = (0..self.primaries, self.primaries..self.endpoints.len());
        if backups.is_empty() || self.admits_alone(primaries.clone(), usable) {
            (primaries, backups)
        } else {
            (backups, primaries)
        }
    }

    /// Whether an endpoint of `tier` may take attempts by its own breaker, the cap aside.
    fn admits_alone(&self, mut tier: Range<usize>, usable: &impl Fn(usize) -> bool) -> bool {
        tier.any(|index| usable(index) && self.endpoints[index].would_admit())
    }

    /// Whether the endpoint at `index` may take attempts as far as health goes: it is healthy,
    /// or no endpoint is (fail open).
    fn usable(&self) -> impl Fn(usize) -> bool + '_ {
        let panic = self.none_healthy();
        move |index| panic || self.endpoints[index].healthy.load(Ordering::Relaxed)
    }

    /// The endpoints whose breakers refuse, past the ejection cap, that are used anyway: the
    /// ones ejected last, as many as the cap is passed by. Among the endpoints that count for
    /// it: `usable`, and not forced open by an operator, whose decision stands whatever the cap.
    /// Empty (and allocating nothing) while the cap holds, the common case: one look at each
    /// endpoint's gate.
    fn past_cap(&self, usable: &impl Fn(usize) -> bool) -> Vec<usize> {
        let count = self.endpoints.len();
        if self.max_ejected >= count {
            return Vec::new();
        }
        // The breaker's answer first: the common case, an admitting one, costs one load.
        let refusing = |index: usize| {
            let endpoint = &self.endpoints[index];
            !endpoint.would_admit() && usable(index) && !endpoint.is_forced_open()
        };
        let ejected = (0..count).filter(|&index| refusing(index)).count();
        if ejected <= self.max_ejected {
            return Vec::new();
        }
        let mut latest: Vec<(Duration, usize)> = (0..count)
            .filter(|&index| refusing(index))
            .map(|index| {
                let breaker = self.endpoints[index].breaker.as_ref();
                // Half-open with no probe left is out as long as its ejection has lasted.
                let since = breaker.and_then(CircuitBreaker::ejected_for);
                (since.unwrap_or(Duration::MAX), index)
            })
            .collect();
        latest.sort_unstable();
        latest.truncate(ejected - self.max_ejected);
        latest.into_iter().map(|(_, index)| index).collect()
    }

    /// Marks the endpoints the cap puts back now and that serve (`serving`), and ends the open
    /// period of those it put back before and no longer needs: their next attempts are half-open
    /// probes. While it puts some back, the others ejected wait at most `open_for` for their
    /// next probe; when it puts one more back, they are probed at once (each at most once an
    /// `open_for`).
    ///
    /// An endpoint put back serves without a permit, so nothing it does closes its breaker, and
    /// its open period may have grown long meanwhile, as overload failed its probes. Left to
    /// wait the period out once the cap lets it go, it would leave the endpoint that came back
    /// alone with all the load it shared: under overload, that one trips in turn, the cap puts
    /// it back and lets the other go, and the two swap for as long as the period lasts, one
    /// endpoint serving where two could. Probed at once with its share of the traffic, the one
    /// let go closes again if it can take that share, and if it is dead one failed probe puts
    /// it out for a longer period, as any probe would.
    ///
    /// The ones kept out are what would end that: with the cap passed, the upstream is short of
    /// endpoints, and one that recovered is worth more back soon than spared probes. Their
    /// periods, doubled at each trip to spare a callee that keeps failing, would otherwise keep
    /// the few put back alone with all the traffic for up to `open_for_max` after an overload
    /// has passed. A dead one costs a failed probe every `open_for`.
    ///
    /// The moment the cap puts another endpoint back is when one kept out is most likely worth
    /// more than the one just ejected: in a rolling restart, the instance restarted first is
    /// back and serving, still in its open period, when the next one goes down and trips. Kept
    /// out until its period ends, it left the clients with only the one going down for seconds;
    /// probed then, it closes at once. A dead one costs one more failed probe.
    #[cold]
    fn let_go(&self, serving: &[usize]) {
        let more = serving
            .iter()
            .any(|&index| !self.endpoints[index].kept.load(Ordering::Relaxed));
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let kept = serving.contains(&index);
            if let Some(breaker) = &endpoint.breaker
                && !kept
                && !serving.is_empty()
            {
                // Only an open breaker is probed sooner for it: the others keep their turn.
                let open = breaker.state() == State::Open;
                let wait = if more && open && endpoint.may_probe_at_once(self.open_for) {
                    Duration::ZERO
                } else {
                    self.open_for
                };
                breaker.shorten_open_period(wait);
            }
            // A load first: the mark is written only when it changes, not at every pick. The
            // swap decides which pick counts an endpoint in or out, so the count stays the
            // number of marks even when picks race.
            if endpoint.kept.load(Ordering::Relaxed) == kept {
                continue;
            }
            match (endpoint.kept.swap(kept, Ordering::Relaxed), kept) {
                (false, true) => {
                    self.kept.fetch_add(1, Ordering::Relaxed);
                    endpoint.metrics.set_reinstated(true);
                }
                (true, false) => {
                    self.kept.fetch_sub(1, Ordering::Relaxed);
                    endpoint.metrics.set_reinstated(false);
                    if let Some(breaker) = &endpoint.breaker {
                        breaker.end_open_period();
                    }
                }
                _ => {}
            }
        }
    }

    /// The endpoints past the ejection cap that [`Pool::pick`] would use now: those of the tier
    /// it serves. A primary put back waits while a backup admits by its own breaker, and a
    /// backup put back while a primary does.
    fn serving_past_cap(&self) -> Vec<usize> {
        let usable = self.usable();
        self.serving(self.past_cap(&usable), &usable)
    }

    /// Of the endpoints put back past the cap (`reinstated`), those of the tier a pick serves.
    fn serving(&self, mut reinstated: Vec<usize>, usable: &impl Fn(usize) -> bool) -> Vec<usize> {
        if reinstated.is_empty() {
            return reinstated;
        }
        // The first tier serves when an endpoint of it may take attempts, put back or not.
        let (first, then) = self.tiers(usable);
        let tier = if self.admits_alone(first.clone(), usable)
            || reinstated.iter().any(|index| first.contains(index))
        {
            first
        } else {
            then
        };
        reinstated.retain(|index| tier.contains(index));
        reinstated
    }

    /// The answer to an attempt no endpoint may take.
    fn refusal(&self) -> Reason {
        if self.endpoints.len() == 1 {
            Reason::BreakerOpen
        } else {
            Reason::NoHealthyEndpoint
        }
    }

    // The endpoint of `tier` the balancer chooses among the usable ones not in `avoid` whose
    // breaker admits a call or that are `reinstated` past the ejection cap.
    fn untried(
        &self,
        tier: Range<usize>,
        avoid: &Avoid,
        usable: &impl Fn(usize) -> bool,
        reinstated: &[usize],
    ) -> Option<Picked<'_>> {
        // An endpoint whose breaker waits for a probe (its open period over, or half-open with
        // one to spare) gets the attempt, whatever the balancer would say: p2c weighs it by an
        // estimate that still holds the attempts that tripped it, and would not choose it for a
        // minute after it came back, its breaker open all that while for want of a probe.
        if let Some(picked) = tier
            .clone()
            .filter(|&index| {
                self.endpoints[index].awaits_probe() && !avoid.contains(index) && usable(index)
            })
            .find_map(|index| self.admit(index, reinstated))
        {
            return Some(picked);
        }
        // The balancer sees the breakers' answers without asking them: asking takes a permit,
        // and a half-open probe, from an endpoint that may not be chosen.
        let chosen = self.balancer.choose(tier.clone(), avoid.last(), |index| {
            let endpoint = &self.endpoints[index];
            let admits = endpoint.would_admit() || reinstated.contains(&index);
            (!avoid.contains(index) && usable(index) && admits).then_some(&endpoint.load)
        });
        if let Some(picked) = chosen.and_then(|index| self.admit(index, reinstated)) {
            return Some(picked);
        }
        // No other endpoint looked admitting, or the chosen one's breaker changed its mind since
        // the look: every usable endpoint not tried is asked in order.
        tier.clone()
            .filter(|&index| !avoid.contains(index) && usable(index))
            .find_map(|index| self.admit(index, reinstated))
    }

    // An endpoint of `tier` the request tried, when none it has not tried may take the attempt:
    // in the order of `Avoid::fallback`, the one tried last at the very end. Asked only then,
    // as asking a breaker may take a half-open probe.
    fn tried_again(
        &self,
        tier: Range<usize>,
        avoid: &Avoid,
        usable: &impl Fn(usize) -> bool,
        reinstated: &[usize],
    ) -> Option<Picked<'_>> {
        avoid
            .fallback()
            .filter(|index| tier.contains(index) && usable(*index))
            .find_map(|index| self.admit(index, reinstated))
    }

    // An attempt on the endpoint at `index`, with its breaker's permit; without one when its
    // breaker refuses and it is `reinstated` past the ejection cap.
    fn admit(&self, index: usize, reinstated: &[usize]) -> Option<Picked<'_>> {
        let endpoint = &self.endpoints[index];
        let permit = match &endpoint.breaker {
            None => None,
            Some(breaker) => match breaker.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) if reinstated.contains(&index) => None,
                Err(_) => return None,
            },
        };
        Some(Picked {
            index,
            permit: Unjudged(permit, None),
            in_flight: self.balancer.start(&endpoint.load),
            metrics: &endpoint.metrics,
            sent: turn::now(),
        })
    }

    /// Whether [`Pool::pick`] could pick an endpoint now, asking no breaker: one that is
    /// usable and whose breaker would admit, or one the ejection cap lets through; if not, the
    /// refusal the pick would answer. The stack looks before the upstream's limits, so that an
    /// attempt no endpoint may take spends no token; the outbox's deliveries wait while it
    /// refuses instead of trying each message in turn.
    pub(crate) fn may_admit(&self) -> Result<(), Reason> {
        let usable = self.usable();
        // One that admits first, the common case; then the cap, as `pick` counts it.
        let admits = self.admits_alone(0..self.endpoints.len(), &usable)
            || !self.past_cap(&usable).is_empty();
        if admits { Ok(()) } else { Err(self.refusal()) }
    }

    /// Whether an attempt may go now to an endpoint that takes attempts freely: a usable one
    /// whose breaker is closed (or that has none), or one past the ejection cap. Not while only
    /// half-open probes may go, each of which admits so many attempts and refuses the rest.
    pub(crate) fn admits_freely(&self) -> bool {
        let usable = self.usable();
        (0..self.endpoints.len()).any(|index| {
            usable(index)
                && self.endpoints[index]
                    .breaker
                    .as_ref()
                    .is_none_or(|breaker| {
                        matches!(breaker.state(), State::Closed | State::ForcedClosed)
                    })
        }) || !self.past_cap(&usable).is_empty()
    }

    /// How many endpoints there are, primaries and backups.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The address of the endpoint at `index`.
    pub(crate) fn authority(&self, index: usize) -> &Authority {
        &self.endpoints[index].authority
    }

    /// Sets the gauges of this pool to what it holds: each endpoint's breaker state and health,
    /// the concurrency limit. The series are shared by name with any other pool of the same
    /// upstream, such as one a refused reload built.
    pub(crate) fn publish(&self) {
        for endpoint in &self.endpoints {
            endpoint
                .metrics
                .show_healthy(endpoint.healthy.load(Ordering::Relaxed));
            if let Some(breaker) = &endpoint.breaker {
                endpoint.metrics.set_state(breaker.state());
            }
            // The series outlives a pool a reload replaced: this one's marks are what it shows.
            endpoint
                .metrics
                .set_reinstated(endpoint.kept.load(Ordering::Relaxed));
        }
        self.limits.publish();
    }

    /// Marks the endpoint at `index` healthy or not, and says whether that changed its mark.
    /// Only its health check calls it, so the count of unhealthy endpoints moves with each
    /// change exactly once.
    pub(crate) fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        // Relaxed: the flags and the count only steer choices; no other memory depends on them.
        let endpoint = &self.endpoints[index];
        if healthy && let Some(breaker) = &endpoint.breaker {
            // Back, by its checks (failing, then passing): probes may find out now, not at the
            // end of an open period that the outage's trips have stretched toward
            // `open_for_max`; also when the checks failed too few times to mark it unhealthy,
            // as a quick redeploy between two checks does.
            breaker.end_open_period();
        }
        if endpoint.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return false;
        }
        endpoint.metrics.set_healthy(healthy);
        if healthy {
            self.unhealthy.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.unhealthy.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Whether the endpoint at `index` is marked healthy.
    pub(crate) fn is_healthy(&self, index: usize) -> bool {
        self.endpoints[index].healthy.load(Ordering::Relaxed)
    }

    /// Whether the endpoint at `index` is held out until its first check passes.
    pub(crate) fn is_pending(&self, index: usize) -> bool {
        self.endpoints[index].pending
    }

    /// Whether the health checks hold every endpoint unhealthy, and so are ignored.
    pub(crate) fn none_healthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed) >= self.endpoints.len()
    }

    /// Which statuses of this upstream are failures (`failure_status`).
    pub(crate) fn failures(&self) -> &FailureStatus {
        &self.failures
    }

    /// Whether responses are classified as gRPC whatever the request says (`protocol = "grpc"`).
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// `[upstreams.NAME.limits]`, shared by every route to this upstream.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The connections to endpoint `index`.
    pub(crate) fn connections(&self, index: usize) -> &Connections {
        &self.endpoints[index].connections
    }
}

impl Endpoint {
    /// Whether the cap may have this endpoint, which it keeps out, probed at once now: not
    /// within `open_for` of the last time, so that an upstream whose endpoints trip in turn
    /// (overload moving from one to the next) does not probe a dead one at every turn.
    fn may_probe_at_once(&self, open_for: Duration) -> bool {
        let now = turn::now();
        let mut last = lock(&self.probed_at_once);
        if last.is_some_and(|last| now.duration_since(last) < open_for) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Whether the breaker would admit a call now, asking nothing of it.
    fn would_admit(&self) -> bool {
        self.breaker
            .as_ref()
            .is_none_or(CircuitBreaker::would_admit)
    }

    /// Whether the breaker is out of its closed state (open or half-open) and would let a probe
    /// through now. One atomic read for a closed breaker, the common case.
    fn awaits_probe(&self) -> bool {
        self.breaker.as_ref().is_some_and(|breaker| {
            matches!(breaker.state(), State::Open | State::HalfOpen) && breaker.would_admit()
        })
    }

    fn is_forced_open(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|breaker| breaker.state() == State::ForcedOpen)
    }
}

// === impl Pool: reload ===

impl Pool {
    /// Marks unhealthy each endpoint that is unhealthy in `old`, the pool this one replaces: the
    /// new pool's checks start over, and until they have passed `healthy_after` times an
    /// endpoint that was failing them stays out, as it would have without the reload. An
    /// endpoint `old` did not have is held out until its first check passes.
    /// Told to no one: nothing changed for the endpoint, and the series show it once this pool
    /// serves.
    pub(crate) fn take_health(&mut self, old: &Pool) {
        for endpoint in &mut self.endpoints {
            let before = old
                .endpoints
                .iter()
                .find(|e| e.authority == endpoint.authority);
            // An endpoint new to the upstream waits for its first check, as Envoy holds a host
            // it has not checked yet: traffic already flows to the others, and one that accepts
            // connections but never answers would otherwise take its share until the checks
            // caught up. (A starting proxy has no others: there every endpoint starts healthy.)
            let held_out = match before {
                Some(before) => !before.healthy.load(Ordering::Relaxed),
                None => {
                    endpoint.pending = true;
                    true
                }
            };
            if held_out && endpoint.healthy.swap(false, Ordering::Relaxed) {
                self.unhealthy.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells, as transitions and health changes, what differs between each endpoint of this
    /// pool and the one of `old`, the pool it replaces, at the same address: new breakers
    /// start closed (an endpoint `old`'s breaker held open is back), and without health checks
    /// every endpoint is healthy. The counters and the event stream hear of it as of any
    /// change, so that neither an alert on `rampart_breaker_transitions_total` nor a dashboard's
    /// timeline misses a recovery a reload made.
    pub(crate) fn tell_changes_from(&self, old: &Pool) {
        for endpoint in &self.endpoints {
            let Some(before) = old
                .endpoints
                .iter()
                .find(|e| e.authority == endpoint.authority)
            else {
                continue;
            };
            if let (Some(from), Some(to)) = (&before.breaker, &endpoint.breaker) {
                let (from, to) = (from.state(), to.state());
                if from != to {
                    endpoint.metrics.entered(from, to);
                }
            }
            let healthy = endpoint.healthy.load(Ordering::Relaxed);
            if before.healthy.load(Ordering::Relaxed) != healthy {
                endpoint.metrics.set_healthy(healthy);
            }
        }
    }

    /// Forces the breakers of this pool's endpoints as an operator forced those of `old` with
    /// the same address: new breaker settings make new breakers, and an endpoint drained by
    /// hand must not come back with them. How many were forced, and how many endpoints that
    /// `old`'s breakers held ejected start closed (the operator changing the settings should
    /// hear that they are back).
    pub(crate) fn take_forced(&self, old: &Pool) -> (usize, usize) {
        let (mut forced, mut ended) = (0, 0);
        for endpoint in &self.endpoints {
            let Some(breaker) = &endpoint.breaker else {
                continue;
            };
            match old
                .breaker_of(&endpoint.authority)
                .map(CircuitBreaker::state)
            {
                Some(State::ForcedOpen) => breaker.force_open(),
                Some(State::ForcedClosed) => breaker.force_closed(),
                Some(State::Open | State::HalfOpen) => {
                    ended += 1;
                    continue;
                }
                _ => continue,
            }
            forced += 1;
        }
        (forced, ended)
    }

    /// The breaker of the endpoint at `authority`, if this pool lists it and it has one.
    pub(crate) fn breaker_of(&self, authority: &Authority) -> Option<&CircuitBreaker> {
        self.endpoints
            .iter()
            .find(|e| &e.authority == authority)
            .and_then(|e| e.breaker.as_ref())
    }

    /// Takes over the load (attempts in flight, latency estimate) of each endpoint of `old`
    /// whose address this pool also has: the attempts the old pool sent still run, and a
    /// balancer that counted them as gone would send more to the busiest endpoints.
    pub(crate) fn take_loads(&mut self, old: &Pool) {
        for endpoint in &mut self.endpoints {
            if let Some(before) = old
                .endpoints
                .iter()
                .find(|e| e.authority == endpoint.authority)
            {
                endpoint.load = before.load.clone();
            }
        }
    }

    /// Takes over `old`'s limits, built from the same `[upstreams.NAME.limits]`: the places its
    /// attempts hold still count, and new ones wait behind them as before the reload.
    pub(crate) fn take_limits(&mut self, old: &Pool) {
        self.limits = old.limits.clone();
    }

    /// Takes over the breaker of each endpoint of `old` whose address this pool also has, so
    /// that a reload changing an upstream neither forgets an ejection nor resets a window. Only
    /// for breakers built from the same `[upstreams.NAME.breaker]`. Returns how many were taken.
    pub(crate) fn take_breakers(&mut self, old: &Pool) -> usize {
        let mut taken = 0;
        for endpoint in &mut self.endpoints {
            let Some(old) = old
                .endpoints
                .iter()
                .find(|e| e.authority == endpoint.authority)
            else {
                continue;
            };
            let Some(breaker) = &old.breaker else {
                continue;
            };
            // The kept breaker's subscription already moves this endpoint's series, while its
            // voice, taken with it, is on.
            endpoint.metrics.set_state(breaker.state());
            endpoint.breaker = Some(breaker.clone());
            endpoint.speaks = old.speaks.clone();
            endpoint.probed_at_once = old.probed_at_once.clone();
            // Put back by the old pool's cap, it is let go by this one's first pick if this cap
            // does not need it (see `let_go`), rather than left out for its grown period.
            if old.kept.load(Ordering::Relaxed) {
                *endpoint.kept.get_mut() = true;
                *self.kept.get_mut() += 1;
            }
            taken += 1;
        }
        taken
    }

    /// Silences the breakers of this pool, just built by a reload, until it serves.
    pub(crate) fn quiet(&self) {
        for endpoint in &self.endpoints {
            endpoint.speaks.store(false, Ordering::Relaxed);
        }
    }

    /// This pool, built by a reload, serves from now on: its breakers speak, and its series
    /// show its breakers, health and limit.
    pub(crate) fn serve(&self) {
        for endpoint in &self.endpoints {
            endpoint.speaks.store(true, Ordering::Relaxed);
        }
        self.publish();
    }

    /// This pool no longer serves, replaced by `successor` (none: its upstream was removed): the
    /// breakers it does not hand on, and its limit, stop moving the series they share by name
    /// with the successor's, as its attempts still in flight end.
    pub(crate) fn retire(&self, successor: Option<&Pool>) {
        for endpoint in &self.endpoints {
            let handed_on = successor.is_some_and(|pool| {
                pool.endpoints
                    .iter()
                    .any(|e| Arc::ptr_eq(&e.speaks, &endpoint.speaks))
            });
            if !handed_on {
                endpoint.speaks.store(false, Ordering::Relaxed);
            }
        }
        if !successor.is_some_and(|pool| Arc::ptr_eq(&pool.limits, &self.limits)) {
            self.limits.retire();
        }
    }
}

// === impl Pool: stats ===

impl Pool {
    /// The stats of this pool, the upstream `name`.
    pub(crate) fn stats(&self, name: &str) -> UpstreamStats {
        let reinstated = self.serving_past_cap();
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| EndpointStats {
                address: endpoint.authority.to_string(),
                backup: index >= self.primaries,
                state: endpoint.breaker.as_ref().map(CircuitBreaker::state),
                healthy: endpoint.healthy.load(Ordering::Relaxed),
                reinstated: reinstated.contains(&index),
                in_flight: u64::from(endpoint.load.in_flight()),
                attempts: endpoint.metrics.attempts(),
                recent: endpoint.metrics.recent().read(),
            })
            .collect();
        let gauge = |value: i64| u64::try_from(value).unwrap_or(0);
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let in_flight = gauge(self.metrics.inflight.get());
        let mut admissions = self.limits.admissions();
        // The peak is taken as attempts are admitted: those still in flight, with none admitted
        // since (or since a reload made these limits), are in it too.
        admissions.peak_in_flight = admissions.peak_in_flight.max(in_flight);
        UpstreamStats {
            name: name.to_owned(),
            in_flight,
            concurrency_limit: gauge(self.metrics.concurrency_limit.get()),
            queued: count(self.limits.queued()),
            max_pending: count(self.limits.max_pending()),
            admissions,
            endpoints,
        }
    }

    /// Each endpoint's address and breaker (none when disabled), primaries then backups.
    pub(crate) fn endpoint_breakers(
        &self,
    ) -> impl Iterator<Item = (&Authority, Option<&CircuitBreaker>)> {
        self.endpoints
            .iter()
            .map(|e| (&e.authority, e.breaker.as_ref()))
    }
}

/// A pooled client for the health checks of `upstream`'s endpoints, speaking h2c (by prior
/// knowledge: no upgrade dance, the connection starts with the preface) when `http2`, HTTP/1.1
/// otherwise. Requests go through each endpoint's own [`Connections`].
pub(crate) fn client<B>(upstream: &Upstream, http2: bool) -> Client<Connector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .timer(TokioTimer::new())
        // A connection that stopped answering would fail every check while it stays open.
        .http2_keep_alive_interval(PING_AFTER)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        // Idle pooled connections are closed after the pool's idle timeout only with a timer.
        .pool_timer(TokioTimer::new())
        .build(connector(upstream))
}

/// The target of breaker transition events, for `RUST_LOG=rampart_proxy::breaker=...`.
const BREAKER: &str = "rampart_proxy::breaker";

// An endpoint leaving the rotation is worth a warning; its way back is news. What happens
// between (its probes, each failed one reopening the breaker) is for debugging: an endpoint down
// for minutes, probed every few seconds, would otherwise log two lines a probe, and more under
// the ejection cap, which probes sooner (as HAProxy logs a server going DOWN and UP, not its
// checks). The metrics and the event stream carry every transition.
fn log_transition(t: &Transition, metrics: &EndpointMetrics) {
    let (upstream, endpoint) = (metrics.upstream(), metrics.endpoint());
    let (from, to, reason) = (t.from.as_str(), t.to.as_str(), &t.reason);
    // Tripped by failures: what the last of them met says what to look at (a refused
    // connection, a timeout, a 503), as HAProxy's "Layer4 connection problem" does.
    let met = matches!(
        t.reason,
        Why::ConsecutiveFailures(_) | Why::FailureRate { .. } | Why::ProbeFailed
    )
    .then(|| metrics.last_failure())
    .flatten();
    match (t.from, t.to, met) {
        (State::HalfOpen, State::Open, _) | (_, State::HalfOpen, _) => tracing::debug!(
            target: BREAKER,
            upstream,
            endpoint,
            from,
            to,
            %reason,
            last_failure = met.map(tracing::field::display),
            "circuit breaker {to}"
        ),
        (_, State::Open | State::ForcedOpen, _) => tracing::warn!(
            target: BREAKER,
            upstream,
            endpoint,
            from,
            to,
            %reason,
            last_failure = met.map(tracing::field::display),
            "circuit breaker {to}: endpoint ejected"
        ),
        (_, State::Closed | State::ForcedClosed, _) => tracing::info!(
            target: BREAKER,
            upstream,
            endpoint,
            from,
            to,
            %reason,
            "circuit breaker {to}"
        ),
    }
}

/// What connects to the endpoints of `upstream`.
fn connector(upstream: &Upstream) -> Connector {
    // `connect_timeout` bounds the name lookup too, and then the connect.
    let mut connector = Connector::new_with_resolver(Resolver::system(upstream.connect_timeout));
    connector.set_connect_timeout(Some(upstream.connect_timeout));
    connector.set_nodelay(true);
    connector
}

/// One endpoint's breaker from `[upstreams.NAME.breaker]`.
fn breaker(config: &Breaker) -> Result<Option<CircuitBreaker>, String> {
    if !config.enabled {
        return Ok(None);
    }
    let mut builder = CircuitBreaker::builder()
        .consecutive_failures(config.consecutive_failures)
        .failure_rate(config.failure_rate)
        .slow_call_rate(config.slow_call_rate)
        .window(config.window)
        .min_calls(u64::from(config.min_calls))
        .open_for(config.open_for)
        .open_for_max(config.open_for_max)
        .half_open_probes(config.half_open_probes);
    // Timing every call costs a clock read; only a slow-call trigger needs it.
    if config.slow_call_rate < 1.0 {
        builder = builder.slow_call(config.slow_call);
    }
    builder.build().map(Some).map_err(|err| err.to_string())
}

/// `max_ejected_percent` of `endpoints`, rounded down, but at least one, so that a single
/// endpoint's breaker can open.
fn max_ejected(endpoints: usize, percent: u8) -> usize {
    (endpoints * usize::from(percent) / 100).max(1)
}

fn failure_status(list: &[StatusMatch]) -> FailureStatus {
    list.iter()
        .fold(FailureStatus::none(), |set, entry| match *entry {
            StatusMatch::Class5xx => set.with_5xx(),
            StatusMatch::Exact(code) => match http::StatusCode::from_u16(code) {
                Ok(status) => set.with_status(status),
                // The config only lets 100 to 599 through.
                Err(_) => set,
            },
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rampart_config::Config;
    use rampart_policy::Outcome;

    use super::*;

    const BALANCERS: [&str; 4] = ["p2c-ewma", "round-robin", "least-request", "random"];

    fn pool_with(endpoints: &[&str], extra: &str, rng: Rng) -> Pool {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n\n\
             [upstreams.app]\nendpoints = [{}]\n{extra}\n",
            endpoints.join(", ")
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Pool::new(
            &config.upstreams[0],
            &rng,
            &crate::metrics::Metrics::default(),
        )
        .unwrap()
    }

    fn pool(extra: &str) -> Pool {
        pool_with(&["127.0.0.1:1", "127.0.0.1:2"], extra, Rng::seeded(7))
    }

    fn three(balance: &str, extra: &str) -> Pool {
        pool_with(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            &format!("balance = \"{balance}\"\n{extra}"),
            Rng::seeded(11),
        )
    }

    // The tests run on tokio's paused clock: p2c-ewma's estimates move only when a test says
    // how long an attempt took.

    /// The endpoints a request has tried, in this order.
    fn tried<const N: usize>(indices: [usize; N]) -> Avoid {
        indices.into_iter().collect()
    }

    fn trip(pool: &Pool, index: usize) {
        let breaker = pool.endpoints[index].breaker.as_ref().unwrap();
        while breaker.try_acquire().is_ok() {
            breaker.try_acquire().unwrap().record(Outcome::Failure);
        }
    }

    fn picks(pool: &Pool, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                pool.authority(pool.pick(&tried([])).unwrap().index)
                    .to_string()
            })
            .collect()
    }

    /// How many of `n` picks (each recorded at once as a success) went to each endpoint.
    fn spread(pool: &Pool, n: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.len()];
        for _ in 0..n {
            let picked = pool.pick(&tried([])).unwrap();
            counts[picked.index] += 1;
            picked.record(Outcome::Success);
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_an_ejected_endpoint() {
        let pool = pool("balance = \"round-robin\"");
        assert_eq!(
            picks(&pool, 4),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
        trip(&pool, 0);
        assert_eq!(picks(&pool, 3), ["127.0.0.1:2"; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_shares_an_endpoints_turns_among_the_others() {
        let pool = three(
            "round-robin",
            "[upstreams.app.breaker]\nmax_ejected_percent = 100",
        );
        trip(&pool, 0);
        assert_eq!(spread(&pool, 60), [0, 30, 30]);
        let pool = three("round-robin", "");
        pool.set_healthy(2, false);
        assert_eq!(spread(&pool, 60), [30, 30, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_balancer_skips_ejected_and_unhealthy_endpoints() {
        for balance in BALANCERS {
            let pool = three(
                balance,
                "[upstreams.app.breaker]\nmax_ejected_percent = 100",
            );
            trip(&pool, 0);
            assert_eq!(spread(&pool, 60)[0], 0, "{balance}: ejected");
            let pool = three(balance, "");
            pool.set_healthy(1, false);
            assert_eq!(spread(&pool, 60)[1], 0, "{balance}: unhealthy");
            pool.set_healthy(1, true);
            assert!(spread(&pool, 60)[1] > 0, "{balance}: healthy again");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn another_endpoint_is_preferred_to_the_one_that_failed() {
        for balance in BALANCERS {
            // No cap: the two others are out for their breakers.
            let pool = three(
                balance,
                "[upstreams.app.breaker]\nmax_ejected_percent = 100",
            );
            for _ in 0..20 {
                assert_ne!(pool.pick(&tried([0])).unwrap().index, 0, "{balance}");
            }
            trip(&pool, 1);
            trip(&pool, 2);
            // The avoided endpoint is still better than none.
            assert_eq!(pool.pick(&tried([0])).unwrap().index, 0, "{balance}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_endpoint_the_request_tried_is_avoided() {
        for balance in BALANCERS {
            let pool = three(balance, "");
            for _ in 0..20 {
                assert_eq!(pool.pick(&tried([0, 1])).unwrap().index, 2, "{balance}");
                assert_eq!(pool.pick(&tried([2, 0])).unwrap().index, 1, "{balance}");
            }
            // With no other left, a tried endpoint is still better than none: the one tried
            // last only when no other may.
            trip(&pool, 2);
            assert_eq!(pool.pick(&tried([0, 1])).unwrap().index, 0, "{balance}");
            assert_eq!(pool.pick(&tried([1, 0])).unwrap().index, 1, "{balance}");
        }
    }

    #[test]
    fn the_tried_set_holds_any_index_and_falls_back_to_the_last_one_tried_last() {
        let avoid = tried([130, 3, 64, 0]);
        for index in [0, 3, 64, 130] {
            assert!(avoid.contains(index), "{index}");
        }
        for index in [1, 63, 65, 128, 129, 131, 1000] {
            assert!(!avoid.contains(index), "{index}");
        }
        assert_eq!(avoid.fallback().collect::<Vec<_>>(), [3, 64, 130, 0]);
        assert!(tried([]).fallback().next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn backups_serve_only_while_no_primary_admits() {
        for balance in BALANCERS {
            let pool = pool(&format!(
                "balance = \"{balance}\"\nbackup = [\"127.0.0.1:3\"]\n\
                 [upstreams.app.breaker]\nmax_ejected_percent = 100"
            ));
            assert!(
                picks(&pool, 20).iter().all(|p| p != "127.0.0.1:3"),
                "{balance}"
            );
            trip(&pool, 0);
            trip(&pool, 1);
            assert_eq!(picks(&pool, 2), ["127.0.0.1:3"; 2], "{balance}");
            trip(&pool, 2);
            assert_eq!(
                pool.pick(&tried([])).unwrap_err(),
                Reason::NoHealthyEndpoint
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_every_primary_failed_goes_to_a_backup_before_a_primary_again() {
        for balance in BALANCERS {
            let pool = pool(&format!(
                "balance = \"{balance}\"\nbackup = [\"127.0.0.1:3\"]"
            ));
            // Primaries 0 and 1 admit; the request failed on both, then on the backup.
            assert_eq!(pool.pick(&tried([0])).unwrap().index, 1, "{balance}");
            assert_eq!(pool.pick(&tried([0, 1])).unwrap().index, 2, "{balance}");
            assert_eq!(pool.pick(&tried([0, 1, 2])).unwrap().index, 0, "{balance}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backups_serve_when_every_primary_is_ejected_whatever_the_cap() {
        for balance in BALANCERS {
            // The default cap, 50% of three: one ejection. With both primaries out, the cap
            // puts the one ejected last back, but the backup, admitting, comes first.
            let with_backup = || {
                pool(&format!(
                    "balance = \"{balance}\"\nbackup = [\"127.0.0.1:3\"]"
                ))
            };
            // The stats say which endpoints serve though their breakers refuse.
            let reinstated = |pool: &Pool| -> Vec<bool> {
                let stats = pool.stats("app");
                stats.endpoints.iter().map(|e| e.reinstated).collect()
            };
            let last = with_backup();
            trip_in_turn(&last, &[0, 1]).await;
            assert_eq!(picks(&last, 4), ["127.0.0.1:3"; 4], "{balance}");
            assert_eq!(reinstated(&last), [false; 3], "{balance}");
            // The backup out too, last: the cap puts back the two ejected last, the backup and
            // the second primary, and the backup, its tier first, serves.
            trip_in_turn(&last, &[2]).await;
            // The primaries kept out are probed at once, and the backup, let go meanwhile.
            assert_eq!(fail_probes(&last), [0, 1, 2], "{balance}");
            assert_eq!(picks(&last, 4), ["127.0.0.1:3"; 4], "{balance}");
            assert_eq!(reinstated(&last), [false, false, true], "{balance}");
            // The backup out first: the two put back are the primaries.
            let first = with_backup();
            trip_in_turn(&first, &[2, 0, 1]).await;
            assert_eq!(fail_probes(&first), [2], "{balance}");
            assert!(
                picks(&first, 4).iter().all(|p| p != "127.0.0.1:3"),
                "{balance}"
            );
            assert_eq!(reinstated(&first), [true, true, false], "{balance}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backups_serve_while_no_primary_is_healthy() {
        let pool = pool("backup = [\"127.0.0.1:3\"]");
        pool.set_healthy(0, false);
        pool.set_healthy(1, false);
        assert_eq!(picks(&pool, 3), ["127.0.0.1:3"; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_endpoint_healthy_health_is_ignored() {
        let pool = three("round-robin", "");
        for index in 0..3 {
            pool.set_healthy(index, false);
        }
        assert_eq!(spread(&pool, 30), [10, 10, 10]);
        // The breakers still decide.
        trip(&pool, 0);
        assert_eq!(spread(&pool, 30)[0], 0);
    }

    #[tokio::test]
    async fn an_attempt_let_go_past_the_slow_call_threshold_is_slow_unless_it_waited_for_the_client()
     {
        // A client that goes away (an HTTP/2 stream reset drops the exchange before its body can
        // say it broke off) while the exchange waited for its body says nothing of the endpoint.
        let slow = "[upstreams.app.breaker]\nslow_call = \"100ms\"\nslow_call_rate = 0.5\n\
                    min_calls = 1\nopen_for = \"60s\"";
        let pool = pool_with(&["127.0.0.1:1"], slow, Rng::seeded(7));
        let state = || pool.endpoints[0].breaker.as_ref().unwrap().state();
        let fault = BodyFault::default();
        fault.awaiting(true);
        let mut picked = pool.pick(&tried([])).unwrap();
        picked.watch_client(Some(&fault));
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(picked);
        assert_eq!(state(), State::Closed);
        // Not waiting for the client: a slow call, which opens the breaker.
        let picked = pool.pick(&tried([])).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(picked);
        assert_eq!(state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejection_cap_keeps_one_of_two_endpoints_in_use() {
        // 50% of two: one may be ejected, so with both breakers open one still takes traffic.
        let pool = pool("");
        trip(&pool, 0);
        trip(&pool, 1);
        assert_eq!(fail_probes(&pool).len(), 1);
        let picked = pool.pick(&tried([])).unwrap();
        assert!(picked.permit.0.is_none());
    }

    /// Fails the probes that the cap, putting one more endpoint back, sends at once to the ones
    /// it keeps out (dead, in these tests); the endpoints probed, in turn.
    fn fail_probes(pool: &Pool) -> Vec<usize> {
        let mut probed = Vec::new();
        loop {
            let picked = pool.pick(&tried([])).unwrap();
            if !picked.is_probe() {
                return probed;
            }
            probed.push(picked.index);
            picked.record(Outcome::Failure);
        }
    }

    // Trips the breakers of `indices` in turn, each ejection a little after the one before.
    async fn trip_in_turn(pool: &Pool, indices: &[usize]) {
        for &index in indices {
            trip(pool, index);
            tokio::time::advance(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_endpoint_ejected_last_is_used_not_the_first() {
        // The first ejected is dead; the second tripped on a blip. One of two may be out: the
        // dead one stays out, whatever the balancer thinks of its (fast) failures.
        for balance in BALANCERS {
            let pool = pool(&format!("balance = \"{balance}\""));
            trip_in_turn(&pool, &[0, 1]).await;
            assert_eq!(fail_probes(&pool), [0], "{balance}");
            for _ in 0..20 {
                let picked = pool.pick(&tried([])).unwrap();
                assert_eq!(picked.index, 1, "{balance}");
                assert!(picked.permit.0.is_none());
            }
            // The stats say which one serves though its breaker is open.
            let stats = pool.stats("app");
            let reinstated: Vec<bool> = stats.endpoints.iter().map(|e| e.reinstated).collect();
            assert_eq!(reinstated, [false, true], "{balance}");
            assert!(stats.endpoints.iter().all(|e| e.state == Some(State::Open)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_the_cap_kept_in_service_is_judged_as_soon_as_the_cap_lets_it_go() {
        // Overload trips both breakers; the cap keeps the one ejected last serving everything,
        // unjudged. When the other comes back, the one kept must share the load again at once,
        // not sit out the rest of an open period that overload grew: alone, the one back would
        // take everything and trip in its turn, and the two would swap for as long as that lasts.
        let pool = pool("balance = \"round-robin\"");
        trip_in_turn(&pool, &[0, 1]).await;
        assert_eq!(fail_probes(&pool), [0]);
        assert!(picks(&pool, 4).iter().all(|p| p == "127.0.0.1:2"));
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        // The first one's open period ends, and its probes (three by default) succeed.
        breaker(0).end_open_period();
        for _ in 0..3 {
            let picked = pool.pick(&tried([1])).unwrap();
            assert_eq!(picked.index, 0);
            assert!(picked.is_probe());
            picked.record(Outcome::Success);
        }
        assert_eq!(breaker(0).state(), State::Closed);
        assert_eq!(breaker(1).state(), State::Open, "its period is not over");
        // The one kept is probed by its share of the traffic, and closes.
        let counts = spread(&pool, 20);
        assert!(counts[1] >= 3, "{counts:?}");
        assert_eq!(breaker(1).state(), State::Closed);
        assert!(!pool.stats("app").endpoints.iter().any(|e| e.reinstated));

        // A dead one let go so fails its probe and is out again, for a longer period.
        let pool = self::pool("balance = \"round-robin\"");
        trip_in_turn(&pool, &[0, 1]).await;
        assert_eq!(fail_probes(&pool), [0]);
        assert_eq!(picks(&pool, 1), ["127.0.0.1:2"]);
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        breaker(0).end_open_period();
        for _ in 0..3 {
            pool.pick(&tried([1])).unwrap().record(Outcome::Success);
        }
        let probe = pool.pick(&tried([0])).unwrap();
        assert_eq!((probe.index, probe.is_probe()), (1, true));
        probe.record(Outcome::Failure);
        assert_eq!(breaker(1).state(), State::Open);
        assert_eq!(picks(&pool, 4), ["127.0.0.1:1"; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_cap_puts_an_endpoint_back_the_others_are_probed_every_open_for() {
        let pool = pool("balance = \"round-robin\"");
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        let remaining = |index: usize| breaker(index).snapshot().open_remaining.unwrap();
        // Endpoint 0 fails its probes: each doubles its open period (5 s by default).
        trip(&pool, 0);
        for _ in 0..2 {
            tokio::time::advance(remaining(0)).await;
            let probe = pool.pick(&tried([1])).unwrap();
            assert_eq!((probe.index, probe.is_probe()), (0, true));
            probe.record(Outcome::Failure);
        }
        assert!(remaining(0) > Duration::from_secs(10), "{:?}", remaining(0));
        // Endpoint 1 trips too, and the cap puts it back: 0 is probed at once, and fails.
        trip(&pool, 1);
        assert_eq!(fail_probes(&pool), [0]);
        // Then within the first period, whatever its doubled one says.
        assert_eq!(picks(&pool, 1), ["127.0.0.1:2"]);
        assert!(remaining(0) <= Duration::from_secs(5), "{:?}", remaining(0));
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = pool.pick(&tried([1])).unwrap();
        assert_eq!((probe.index, probe.is_probe()), (0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_rolling_restart_the_endpoint_back_is_probed_when_the_next_goes_down() {
        // Endpoint 0 goes down and trips; it is back a second later, still in its open period
        // (5 s), when endpoint 1 goes down and trips. The cap puts 1 back, as the one ejected
        // last, and has 0 probed at once: its probes (three) pass, and it takes the traffic.
        let pool = pool("balance = \"round-robin\"");
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        trip(&pool, 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        trip(&pool, 1);
        for _ in 0..3 {
            let probe = pool.pick(&tried([])).unwrap();
            assert_eq!((probe.index, probe.is_probe()), (0, true));
            probe.record(Outcome::Success);
        }
        assert_eq!(breaker(0).state(), State::Closed);
        // No longer needed, 1 is let go and probed; down, it fails, and 0 takes everything.
        assert_eq!(fail_probes(&pool), [1]);
        assert_eq!(picks(&pool, 4), ["127.0.0.1:1"; 4]);

        // Had 0 stayed down, one failed probe, and no other at once within open_for: endpoint
        // 1 tripping again (after its own probe failed) brings no new probe of 0 before then.
        let pool = self::pool("balance = \"round-robin\"");
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        trip(&pool, 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        trip(&pool, 1);
        assert_eq!(fail_probes(&pool), [0]);
        breaker(1).end_open_period();
        let probe = pool.pick(&tried([])).unwrap();
        assert_eq!((probe.index, probe.is_probe()), (1, true));
        probe.record(Outcome::Failure);
        assert_eq!(picks(&pool, 4), ["127.0.0.1:2"; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_of_a_rolling_restart_probes_the_endpoint_back_of_the_step_before() {
        // Three endpoints, one may be out; they restart in turn, two seconds apart. Each step's
        // endpoint, back, is probed when the next one trips, though an earlier step had another
        // probed at once within open_for.
        let pool = three("round-robin", "");
        let breaker = |index: usize| pool.endpoints[index].breaker.as_ref().unwrap();
        trip(&pool, 0);
        for (back, down) in [(0, 1), (1, 2)] {
            tokio::time::advance(Duration::from_secs(2)).await;
            trip(&pool, down);
            for _ in 0..3 {
                let probe = pool.pick(&tried([])).unwrap();
                assert_eq!((probe.index, probe.is_probe()), (back, true), "{back}");
                probe.record(Outcome::Success);
            }
            assert_eq!(breaker(back).state(), State::Closed);
            // The one down, let go, fails its probe.
            assert_eq!(fail_probes(&pool), [down]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_whose_cap_no_longer_needs_an_endpoint_put_back_probes_it() {
        let old = pool("");
        trip_in_turn(&old, &[0, 1]).await;
        assert_eq!(fail_probes(&old), [0]);
        assert_eq!(picks(&old, 1), ["127.0.0.1:2"]);
        // Two endpoints more: 50% of four lets both out, and the one put back is let go.
        let four = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
        let mut new = pool_with(&four, "", Rng::seeded(7));
        assert_eq!(new.take_breakers(&old), 2);
        let breaker = new.endpoints[1].breaker.clone().unwrap();
        assert!(!breaker.would_admit());
        let _ = picks(&new, 1);
        assert!(
            breaker.would_admit(),
            "probed at once, not after its period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn primaries_out_while_a_backup_serves_keep_their_backoff() {
        // Two dead primaries, one backup: the cap passed spares the backup, not the primaries'
        // probes, which keep their periods, doubled at each failure.
        let pool = pool("balance = \"round-robin\"\nbackup = [\"127.0.0.1:3\"]");
        let remaining = |index: usize| {
            let breaker = pool.endpoints[index].breaker.as_ref().unwrap();
            breaker.snapshot().open_remaining.unwrap()
        };
        trip(&pool, 0);
        tokio::time::advance(remaining(0)).await;
        let probe = pool.pick(&tried([1, 2])).unwrap();
        assert_eq!((probe.index, probe.is_probe()), (0, true));
        probe.record(Outcome::Failure);
        let grown = remaining(0);
        assert!(grown > Duration::from_secs(5), "{grown:?}");
        trip(&pool, 1);
        assert_eq!(picks(&pool, 4), ["127.0.0.1:3"; 4]);
        assert_eq!(remaining(0), grown);
        assert_eq!(pool.kept.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_while_other_endpoints_still_admit() {
        // Four endpoints, two may be out; three are ejected: the last of them is put back beside
        // the one left, rather than that one taking everything.
        let pool = pool_with(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            "",
            Rng::seeded(5),
        );
        trip_in_turn(&pool, &[0, 1, 2]).await;
        // Putting one back, the cap has the two it keeps out probed at once, and lets it go
        // while they are; each fails its probe.
        let mut probed = fail_probes(&pool);
        probed.sort_unstable();
        assert_eq!(probed, [0, 1, 2]);
        let counts = spread(&pool, 200);
        assert_eq!(&counts[..2], [0, 0], "{counts:?}");
        assert!(counts[2] > 40 && counts[3] > 40, "{counts:?}");
        assert!(pool.may_admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_forced_open_are_out_whatever_the_cap() {
        let pool = pool("");
        for endpoint in &pool.endpoints {
            endpoint.breaker.as_ref().unwrap().force_open();
        }
        assert_eq!(
            pool.pick(&tried([])).unwrap_err(),
            Reason::NoHealthyEndpoint
        );
        assert!(pool.may_admit().is_err());
        // One forced open, the other tripped: one ejected by its breaker, within the cap.
        pool.endpoints[1].breaker.as_ref().unwrap().release();
        trip(&pool, 1);
        assert_eq!(
            pool.pick(&tried([])).unwrap_err(),
            Reason::NoHealthyEndpoint
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_endpoints_are_out_whatever_the_cap() {
        // Four endpoints, two may be ejected. Two are unhealthy and the two others ejected: the
        // cap is not exceeded by the breakers, and health is not capped.
        let pool = pool_with(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            "",
            Rng::seeded(3),
        );
        pool.set_healthy(0, false);
        pool.set_healthy(1, false);
        trip(&pool, 2);
        trip(&pool, 3);
        assert_eq!(
            pool.pick(&tried([])).unwrap_err(),
            Reason::NoHealthyEndpoint
        );
        // Three healthy and all ejected: more than the cap, so one of them takes the attempt.
        pool.set_healthy(1, true);
        trip(&pool, 1);
        // Each healthy one is probed once, as the cap puts one back and lets it go again; the
        // unhealthy one never.
        let mut probed = fail_probes(&pool);
        probed.sort_unstable();
        assert_eq!(probed, [1, 2, 3]);
        for _ in 0..20 {
            let picked = pool.pick(&tried([])).unwrap();
            assert_ne!(picked.index, 0, "the unhealthy endpoint stays out");
            assert!(picked.permit.0.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_endpoint_is_refused_as_breaker_open() {
        let pool = pool_with(&["127.0.0.1:1"], "", Rng::seeded(1));
        trip(&pool, 0);
        assert_eq!(pool.pick(&tried([])).unwrap_err(), Reason::BreakerOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_ejects() {
        let pool = pool("[upstreams.app.breaker]\nenabled = false");
        assert!(pool.endpoints.iter().all(|e| e.breaker.is_none()));
        assert!(pool.pick(&tried([])).unwrap().permit.0.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_open_probe_is_not_spent_on_an_endpoint_not_chosen() {
        // Endpoint 0 is half-open with one probe; picks that avoid it must leave the probe alone.
        let pool = pool(
            "balance = \"round-robin\"\n[upstreams.app.breaker]\n\
             max_ejected_percent = 100\nopen_for = \"1ms\"\nhalf_open_probes = 1",
        );
        trip(&pool, 0);
        tokio::time::advance(Duration::from_millis(5)).await;
        for _ in 0..5 {
            assert_eq!(pool.pick(&tried([0])).unwrap().index, 1);
        }
        assert_eq!(
            pool.pick(&tried([1])).unwrap().index,
            0,
            "the probe is still there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_sends_most_traffic_away_from_a_slow_endpoint() {
        let pool = three("p2c-ewma", "");
        let mut counts = [0; 3];
        for _ in 0..300 {
            let picked = pool.pick(&tried([])).unwrap();
            counts[picked.index] += 1;
            // Endpoint 0 answers in 200 ms, the others in 5 ms.
            let latency = if picked.index == 0 { 200 } else { 5 };
            tokio::time::advance(Duration::from_millis(latency)).await;
            picked.record(Outcome::Success);
        }
        assert!(counts[0] < 15, "{counts:?}");
        assert!(counts[1] > 100 && counts[2] > 100, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_after_its_breaker_tripped_on_timeouts_is_probed_and_used_again() {
        let pool = three(
            "p2c-ewma",
            "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"5s\"\n\
             half_open_probes = 1",
        );
        // Endpoint 0 hangs: an attempt cut at a 15 s timeout trips its breaker.
        let hung = loop {
            let picked = pool.pick(&tried([])).unwrap();
            if picked.index == 0 {
                break picked;
            }
            tokio::time::advance(Duration::from_millis(5)).await;
            picked.record(Outcome::Success);
        };
        tokio::time::advance(Duration::from_secs(15)).await;
        hung.record(Outcome::Failure);
        assert_eq!(
            pool.endpoints[0].breaker.as_ref().unwrap().state(),
            State::Open
        );
        // Its open period over, the next pick probes it, though its estimate still holds 15 s.
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = pool.pick(&tried([])).unwrap();
        assert_eq!(probe.index, 0);
        assert!(probe.is_probe());
        tokio::time::advance(Duration::from_millis(5)).await;
        probe.record(Outcome::Success);
        assert_eq!(
            pool.endpoints[0].breaker.as_ref().unwrap().state(),
            State::Closed
        );
        // Back at once: its share of the next picks, as fast as the others.
        let counts = spread_timed(&pool, 300, Duration::from_millis(5)).await;
        assert!(counts[0] > 60, "{counts:?}");
    }

    /// How many of `n` picks went to each endpoint, each answered after `latency`.
    async fn spread_timed(pool: &Pool, n: usize, latency: Duration) -> Vec<usize> {
        let mut counts = vec![0; pool.len()];
        for _ in 0..n {
            let picked = pool.pick(&tried([])).unwrap();
            counts[picked.index] += 1;
            tokio::time::advance(latency).await;
            picked.record(Outcome::Success);
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_sends_most_traffic_away_from_an_endpoint_with_many_in_flight() {
        let pool = three("p2c-ewma", "");
        let held: Vec<_> = (0..10)
            .map(|_| pool.balancer.start(&pool.endpoints[0].load))
            .collect();
        let counts = spread(&pool, 300);
        assert!(counts[0] < 15, "{counts:?}");
        assert!(counts[1] > 100 && counts[2] > 100, "{counts:?}");
        drop(held);
        assert_eq!(pool.endpoints[0].load.in_flight(), 0);
        assert!(
            spread(&pool, 300)[0] > 50,
            "back in use once the load is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_picks_the_least_loaded() {
        let pool = three("least-request", "");
        let _held: Vec<_> = [0, 0, 0, 2]
            .iter()
            .map(|&index| pool.balancer.start(&pool.endpoints[index].load))
            .collect();
        assert_eq!(spread(&pool, 20), [0, 20, 0]);
        // Endpoint 1 busy too: it ties with 2, and the tie is broken both ways.
        let _more = pool.balancer.start(&pool.endpoints[1].load);
        let counts = spread(&pool, 100);
        assert_eq!(counts[0], 0);
        assert!(counts[1] > 20 && counts[2] > 20, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn random_covers_every_endpoint() {
        let pool = three("random", "");
        let counts = spread(&pool, 300);
        assert!(counts.iter().all(|&n| n > 60), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_leaves_the_in_flight_count_when_recorded_or_dropped() {
        let pool = pool("");
        let a = pool.pick(&tried([])).unwrap();
        let b = pool.pick(&tried([a.index])).unwrap();
        let in_flight = |index: usize| pool.endpoints[index].load.in_flight();
        assert_eq!(in_flight(a.index) + in_flight(b.index), 2);
        let (ai, bi) = (a.index, b.index);
        a.record(Outcome::Success);
        drop(b);
        assert_eq!(in_flight(ai) + in_flight(bi), 0);
    }

    #[test]
    fn the_cap_is_at_least_one_endpoint() {
        assert_eq!(max_ejected(1, 50), 1);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 0), 1);
        assert_eq!(max_ejected(3, 100), 3);
    }
}
