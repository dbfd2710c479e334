//! Upstreams: a pooled client per upstream, its endpoints each behind a circuit breaker, and the
//! choice of an endpoint.
//!
//! The breakers are the proxy's outlier ejection: an endpoint whose breaker is open is skipped by
//! [`Pool::pick`] until its open period ends, then it gets the breaker's half-open probes, and
//! comes back when they succeed. Because the breaker sits per endpoint, below the retry, a retry
//! after a failure goes to an endpoint that still works instead of hammering the broken one.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::Version;
use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rampart_config::{Breaker, StatusMatch, Upstream, UpstreamProtocol};
use rampart_http::{FailureStatus, Reason};
use rampart_policy::breaker::{CircuitBreaker, Permit};

use crate::Error;
use crate::body::RequestBody;
use crate::limits::Limits;

/// One upstream: its endpoints, primaries then backups, and the connection pool they share.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The primaries first, then the backups: an endpoint is known by its index here.
    endpoints: Vec<Endpoint>,
    primaries: usize,
    /// How many endpoints may be ejected at once (`max_ejected_percent`, at least one).
    max_ejected: usize,
    failures: FailureStatus,
    grpc: bool,
    version: Version,
    next: AtomicUsize,
    limits: Limits,
    // Pools connections per endpoint (the pool key is the authority).
    client: Client<HttpConnector, RequestBody>,
}

/// One endpoint and its breaker (none when `[upstreams.NAME.breaker] enabled = false`).
#[derive(Debug)]
struct Endpoint {
    authority: Authority,
    breaker: Option<CircuitBreaker>,
}

/// The endpoint chosen for one attempt, with its breaker's permit: the attempt's outcome must be
/// recorded on it ([`Picked::record`]).
#[derive(Debug)]
pub(crate) struct Picked<'a> {
    pub(crate) index: usize,
    pub(crate) authority: &'a Authority,
    // None when the endpoint has no breaker, or when the ejection cap sent the attempt to an
    // endpoint whose breaker refused it (see `Pool::pick`).
    permit: Option<Permit<'a>>,
}

impl Picked<'_> {
    /// Tells the endpoint's breaker how the attempt went.
    pub(crate) fn record(self, outcome: rampart_policy::Outcome) {
        if let Some(permit) = self.permit {
            permit.record(outcome);
        }
    }
}

impl Pool {
    pub(crate) fn new(upstream: &Upstream) -> Result<Pool, Error> {
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
        let mut endpoints = Vec::with_capacity(upstream.endpoints.len() + upstream.backup.len());
        for (key, list) in [
            ("endpoints", &upstream.endpoints),
            ("backup", &upstream.backup),
        ] {
            for endpoint in list {
                endpoints.push(Endpoint {
                    authority: authority(key, endpoint)?,
                    breaker: breaker(&upstream.breaker)
                        .map_err(|message| invalid("breaker", message))?,
                });
            }
        }
        let http2 = matches!(
            upstream.protocol,
            UpstreamProtocol::Http2 | UpstreamProtocol::Grpc
        );

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // h2c by prior knowledge: no upgrade dance, the connection starts with the preface.
            .http2_only(http2)
            .timer(TokioTimer::new())
            // Idle pooled connections are closed after the pool's idle timeout only with a timer.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Pool {
            max_ejected: max_ejected(endpoints.len(), upstream.breaker.max_ejected_percent),
            endpoints,
            primaries: upstream.endpoints.len(),
            failures: failure_status(&upstream.failure_status),
            grpc: upstream.protocol == UpstreamProtocol::Grpc,
            version: if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            next: AtomicUsize::new(0),
            limits: Limits::new(&upstream.limits).map_err(|message| invalid("limits", message))?,
            client,
        })
    }

    /// The endpoint for the next attempt, preferring any other than `avoid` (the endpoint whose
    /// attempt just failed).
    ///
    /// Round-robin over the primaries whose breaker admits a call; the backups, the same way,
    /// only when no primary admits. When no endpoint admits at all, the ejection cap decides:
    /// `max_ejected_percent` of the endpoints (primaries and backups together, at least one) may
    /// be ejected at once. Every endpoint is then refusing, so more are ejected than the cap
    /// allows whenever the upstream has more endpoints than the cap: the attempt goes to the
    /// primary at the round-robin position anyway, without a permit, so its outcome does not
    /// touch the breaker. The cap thus never sends traffic to an ejected endpoint while another
    /// admits; it keeps a mass ejection (a shared dependency's blip tripping every breaker) from
    /// becoming an outage of its own. With a single endpoint (or a cap of 100%), nothing
    /// overrides the breakers, and the answer is `breaker-open` for a lone endpoint,
    /// `no-healthy-endpoint` otherwise.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> Result<Picked<'_>, Reason> {
        let start = match avoid {
            // A retry starts after the endpoint that failed; it does not move the round-robin,
            // which would otherwise send every first attempt to the same endpoint when each
            // request takes two picks.
            Some(failed) => failed + 1,
            // Relaxed: the counter only spreads requests; no other memory depends on it.
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let (primaries, backups) = (0..self.primaries, self.primaries..self.endpoints.len());
        if let Some(picked) = self
            .admitting(primaries.clone(), start, avoid)
            .or_else(|| self.admitting(backups, start, avoid))
        {
            return Ok(picked);
        }
        if self.endpoints.len() > self.max_ejected {
            let index = start % primaries.len();
            return Ok(Picked {
                index,
                authority: &self.endpoints[index].authority,
                permit: None,
            });
        }
        Err(if self.endpoints.len() == 1 {
            Reason::BreakerOpen
        } else {
            Reason::NoHealthyEndpoint
        })
    }

    // The first endpoint of `tier` from the round-robin position whose breaker admits a call,
    // `avoid` last.
    fn admitting(
        &self,
        tier: std::ops::Range<usize>,
        start: usize,
        avoid: Option<usize>,
    ) -> Option<Picked<'_>> {
        let len = tier.len();
        let order = (0..len).map(|i| tier.start + (start + i) % len);
        // The avoided endpoint is asked last: asking its breaker would take a half-open probe.
        order
            .filter(|&index| Some(index) != avoid)
            .chain(avoid.filter(|index| tier.contains(index)))
            .find_map(|index| self.admit(index))
    }

    fn admit(&self, index: usize) -> Option<Picked<'_>> {
        let endpoint = &self.endpoints[index];
        let permit = match &endpoint.breaker {
            None => None,
            Some(breaker) => Some(breaker.try_acquire().ok()?),
        };
        Some(Picked {
            index,
            authority: &endpoint.authority,
            permit,
        })
    }

    /// Which statuses of this upstream are failures (`failure_status`).
    pub(crate) fn failures(&self) -> &FailureStatus {
        &self.failures
    }

    /// Whether responses are classified as gRPC whatever the request says (`protocol = "grpc"`).
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The HTTP version requests to this upstream go out with.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// `[upstreams.NAME.limits]`, shared by every route to this upstream.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The pooled client.
    pub(crate) fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }
}

// === impl Pool: reload ===

impl Pool {
    /// Each endpoint's address and breaker, primaries then backups.
    pub(crate) fn breakers(&self) -> impl Iterator<Item = (&Authority, &CircuitBreaker)> {
        self.endpoints
            .iter()
            .filter_map(|e| e.breaker.as_ref().map(|b| (&e.authority, b)))
    }

    /// Takes over the breaker of each endpoint of `old` whose address this pool also has, so
    /// that a reload changing an upstream neither forgets an ejection nor resets a window. Only
    /// for breakers built from the same `[upstreams.NAME.breaker]`. Returns how many were taken.
    pub(crate) fn take_breakers(&mut self, old: &Pool) -> usize {
        let mut taken = 0;
        for endpoint in &mut self.endpoints {
            let kept = old
                .endpoints
                .iter()
                .find(|e| e.authority == endpoint.authority)
                .and_then(|e| e.breaker.clone());
            if let Some(breaker) = kept {
                endpoint.breaker = Some(breaker);
                taken += 1;
            }
        }
        taken
    }
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
    use rampart_config::Config;
    use rampart_policy::Outcome;

    use super::*;

    fn pool(extra: &str) -> Pool {
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n\n\
             [upstreams.app]\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n{extra}\n"
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Pool::new(&config.upstreams[0]).unwrap()
    }

    fn trip(pool: &Pool, index: usize) {
        let breaker = pool.endpoints[index].breaker.as_ref().unwrap();
        while breaker.try_acquire().is_ok() {
            breaker.try_acquire().unwrap().record(Outcome::Failure);
        }
    }

    fn picks(pool: &Pool, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| pool.pick(None).unwrap().authority.to_string())
            .collect()
    }

    #[tokio::test]
    async fn round_robin_skips_an_ejected_endpoint() {
        let pool = pool("");
        assert_eq!(
            picks(&pool, 4),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
        trip(&pool, 0);
        assert_eq!(picks(&pool, 3), ["127.0.0.1:2"; 3]);
    }

    #[tokio::test]
    async fn another_endpoint_is_preferred_to_the_one_that_failed() {
        let pool = pool("");
        for _ in 0..4 {
            assert_eq!(pool.pick(Some(0)).unwrap().index, 1);
        }
        trip(&pool, 1);
        // The avoided endpoint is still better than none.
        assert_eq!(pool.pick(Some(0)).unwrap().index, 0);
    }

    #[tokio::test]
    async fn backups_serve_only_while_no_primary_admits() {
        let pool =
            pool("backup = [\"127.0.0.1:3\"]\n[upstreams.app.breaker]\nmax_ejected_percent = 100");
        assert!(picks(&pool, 4).iter().all(|p| p != "127.0.0.1:3"));
        trip(&pool, 0);
        trip(&pool, 1);
        assert_eq!(picks(&pool, 2), ["127.0.0.1:3"; 2]);
        trip(&pool, 2);
        assert_eq!(pool.pick(None).unwrap_err(), Reason::NoHealthyEndpoint);
    }

    #[tokio::test]
    async fn the_ejection_cap_keeps_one_of_two_endpoints_in_use() {
        // 50% of two: one may be ejected, so with both breakers open one still takes traffic.
        let pool = pool("");
        trip(&pool, 0);
        trip(&pool, 1);
        let picked = pool.pick(None).unwrap();
        assert!(picked.permit.is_none());
    }

    #[tokio::test]
    async fn a_lone_endpoint_is_refused_as_breaker_open() {
        let toml =
            "[[routes]]\nupstream = \"app\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n";
        let config = Config::from_str(toml, "test.toml").unwrap();
        let pool = Pool::new(&config.upstreams[0]).unwrap();
        trip(&pool, 0);
        assert_eq!(pool.pick(None).unwrap_err(), Reason::BreakerOpen);
    }

    #[tokio::test]
    async fn a_disabled_breaker_never_ejects() {
        let pool = pool("[upstreams.app.breaker]\nenabled = false");
        assert!(pool.endpoints.iter().all(|e| e.breaker.is_none()));
        assert!(pool.pick(None).unwrap().permit.is_none());
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
