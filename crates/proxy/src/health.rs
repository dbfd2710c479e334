//! Active health checks (`[upstreams.NAME.health]`): every endpoint of the upstream asked on its
//! own, every `interval`, whether it is fit to serve, and marked in the [`Pool`] accordingly.
//!
//! - An endpoint starts healthy, before its first check: a proxy that starts does not refuse
//!   traffic while its first checks are on their way, and an endpoint that is down from the
//!   start is caught by its breaker meanwhile.
//! - `unhealthy_after` failed checks in a row mark it unhealthy; `healthy_after` passed checks in
//!   a row mark it healthy again. A check passes when the answer comes within `timeout`: for
//!   `path`, a GET answered 200 to 299 (a redirect is no proof of health); for `grpc = true`, a
//!   `grpc.health.v1.Health/Check` answered `grpc-status: 0` and `SERVING`.
//! - [`Pool::pick`] skips an unhealthy endpoint as it skips an ejected one; the ejection cap
//!   (`max_ejected_percent`) does not apply to health (see there), and when no endpoint at all is
//!   healthy, health is ignored.
//! - Each endpoint's checks run in a task of their own, every `interval` plus a jitter of up to a
//!   tenth of it drawn from the proxy's `Rng`, so that a fleet of proxies started together does
//!   not probe in lockstep; the first check comes within that jitter of the start. The tasks end
//!   when the proxy shuts down or is dropped.
//!
//! The checks go through a client of their own, with the upstream's `connect_timeout` and
//! protocol, not the pool's: a check must neither wait behind nor take the place of requests on
//! the pooled connections (an HTTP/1.1 connection serves one exchange at a time), and its answer
//! is then the endpoint's, not that of a connection the traffic happens to hold open.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, TE, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use rampart_config::{Health, HealthCheck, Upstream, UpstreamProtocol};
use rampart_policy::rng::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dns::Connector;
use crate::turn;
use crate::upstream::Pool;

/// The gRPC health service's method (grpc.health.v1).
const GRPC_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A gRPC health answer is a few bytes; more is not an answer to this question.
const GRPC_MAX_BODY: usize = 1024;

type CheckClient = Client<Connector, Full<Bytes>>;

/// The running checks of one upstream's endpoints: dropping it ends them, so that a reload that
/// replaces or removes the upstream's pool stops checking the old one.
#[derive(Debug, Default)]
pub(crate) struct Checks(Vec<JoinHandle<()>>);

impl Drop for Checks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the checks of `upstream`'s endpoints, if it has `[upstreams.NAME.health]`: one task
/// per endpoint, marking it in `pool`, drawing jitter from `rng`, until `stop` says `true` or
/// the returned [`Checks`] is dropped.
pub(crate) fn spawn(
    upstream: &Upstream,
    pool: &Arc<Pool>,
    rng: &Rng,
    stop: &watch::Receiver<bool>,
) -> Checks {
    let Some(health) = &upstream.health else {
        return Checks::default();
    };
    // gRPC is HTTP/2 only; a `path` check speaks the upstream's protocol.
    let client = crate::upstream::client(
        upstream,
        health.check == HealthCheck::Grpc || upstream.protocol != UpstreamProtocol::Http1,
    );
    let tasks = (0..pool.len())
        .map(|index| {
            let check = Check {
                upstream: upstream.name.clone(),
                pool: pool.clone(),
                index,
                health: health.clone(),
                client: client.clone(),
                rng: rng.clone(),
            };
            tokio::spawn(check.run(stop.clone()))
        })
        .collect::<Vec<_>>();
    Checks(tasks)
}

/// The target of health events, for `RUST_LOG=rampart_proxy::health=...`.
const HEALTH: &str = "rampart_proxy::health";

/// The checks of one endpoint.
struct Check {
    /// The upstream's name, for the log.
    upstream: String,
    pool: Arc<Pool>,
    index: usize,
    health: Health,
    client: CheckClient,
    rng: Rng,
}

/// Checks in a row with the same result, and whether passes may bring the endpoint back.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    passed: u32,
    failed: u32,
    /// A check failed since the endpoint was last found healthy, or it is held out until its
    /// first check: only then does a run of passes say anything. Passes without a failure
    /// before them prove nothing new, and must not end an ejection the endpoint's answers to
    /// traffic earned (a service whose check passes while its requests fail).
    doubted: bool,
    /// Held out until its first check passes (an endpoint a reload added): one pass is enough,
    /// as in Envoy for a host it has not checked yet.
    pending: bool,
}

impl Check {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut run = Run::new(
            !self.pool.is_healthy(self.index),
            self.pool.is_pending(self.index),
        );
        let mut next = turn::now() + self.jitter();
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep_until(next) => {}
            }
            next = turn::now() + self.health.interval + self.jitter();
            let checked = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                checked = self.check() => checked,
            };
            let pending = run.pending;
            if let Some(healthy) = run.record(checked.is_ok(), &self.health) {
                if self.pool.set_healthy(self.index, healthy) {
                    self.log(checked.err());
                } else if pending && let Some(why) = checked.err() {
                    self.log_held_out(&why);
                }
            }
        }
    }

    // An endpoint leaving the rotation is worth a warning, as a breaker's ejection is, with
    // what the check that decided it met (`why`: none when it passed); its way back is news.
    fn log(&self, why: Option<Failed>) {
        let (upstream, endpoint) = (&self.upstream, self.pool.authority(self.index).as_str());
        let Some(why) = why else {
            tracing::info!(target: HEALTH, upstream, endpoint, "health check passed: endpoint healthy");
            return;
        };
        if self.pool.none_healthy() {
            // Then the checks are ignored (see `Pool::pick`): saying the endpoint is out would
            // send an operator looking for traffic that still reaches it.
            tracing::warn!(
                target: HEALTH,
                upstream,
                endpoint,
                after = self.health.unhealthy_after,
                reason = %why,
                "health check failed: endpoint unhealthy, and so is every endpoint of the \
                 upstream: the checks are ignored until one passes (fail open), the breakers \
                 still guard each endpoint"
            );
        } else {
            tracing::warn!(
                target: HEALTH,
                upstream,
                endpoint,
                after = self.health.unhealthy_after,
                reason = %why,
                "health check failed: endpoint unhealthy, out of the rotation"
            );
        }
    }

    // An endpoint a reload added is held out until a check passes: failing, it changes
    // nothing, yet the operator who added it waits for it. Said once a run of failures.
    fn log_held_out(&self, why: &Failed) {
        tracing::warn!(
            target: HEALTH,
            upstream = self.upstream,
            endpoint = self.pool.authority(self.index).as_str(),
            after = self.health.unhealthy_after,
            reason = %why,
            "health check failed: endpoint added by a reload stays out of the rotation until a \
             check passes"
        );
    }

    /// Up to a tenth of the interval.
    fn jitter(&self) -> Duration {
        self.health.interval.mul_f64(self.rng.next_f64() / 10.0)
    }

    /// One check, within the timeout.
    async fn check(&self) -> Result<(), Failed> {
        let authority = self.pool.authority(self.index);
        let exchange = async {
            match &self.health.check {
                HealthCheck::Http(path) => self.http(authority, path).await,
                HealthCheck::Grpc => self.grpc(authority).await,
            }
        };
        tokio::time::timeout(self.health.timeout, exchange)
            .await
            .unwrap_or(Err(Failed::Timeout(self.health.timeout)))
    }

    async fn http(&self, authority: &Authority, path: &str) -> Result<(), Failed> {
        let request =
            request(authority, path, Method::GET, Bytes::new()).ok_or(Failed::Unbuildable)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(Failed::exchange)?;
        let status = response.status();
        // Read to the end, so that the connection can serve the next check.
        let mut body = response.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        if status.is_success() {
            Ok(())
        } else {
            Err(Failed::Status(status))
        }
    }

    async fn grpc(&self, authority: &Authority) -> Result<(), Failed> {
        let mut request = request(
            authority,
            GRPC_CHECK,
            Method::POST,
            Bytes::from_static(&GRPC_REQUEST),
        )
        .ok_or(Failed::Unbuildable)?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let response = self
            .client
            .request(request)
            .await
            .map_err(Failed::exchange)?;
        if !response.status().is_success() {
            return Err(Failed::Status(response.status()));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, GRPC_MAX_BODY)
            .collect()
            .await
            .map_err(|err| Failed::Exchange(err.to_string()))?;
        // The status comes in the trailers, or in the head of a trailers-only answer.
        let status = body.trailers().map_or(&parts.headers, |trailers| trailers);
        if !grpc_ok(status) {
            let code = status
                .get("grpc-status")
                .map_or(Cow::Borrowed("none"), |code| {
                    String::from_utf8_lossy(code.as_bytes())
                });
            return Err(Failed::GrpcStatus(code.into_owned()));
        }
        if grpc_serving(&body.to_bytes()) {
            Ok(())
        } else {
            Err(Failed::NotServing)
        }
    }
}

/// Why a check failed, for the operator reading the log: a refused connection, a timeout and
/// a 500 call for different remedies (HAProxy's "Layer4 connection problem" or "Layer7 wrong
/// status").
#[derive(Debug)]
enum Failed {
    /// No answer within the check's `timeout`.
    Timeout(Duration),
    /// The connection or the exchange failed: the innermost cause, in its own words.
    Exchange(String),
    /// An answer outside 200..=299.
    Status(StatusCode),
    /// A gRPC answer whose `grpc-status` is not OK.
    GrpcStatus(String),
    /// A gRPC answer whose status is not `SERVING`.
    NotServing,
    /// The endpoint and path make no request (the configuration's check forbids it).
    Unbuildable,
}

impl Failed {
    fn exchange(err: hyper_util::client::legacy::Error) -> Failed {
        // The connector's own words ("tcp connect error") say little alone: the innermost
        // cause says what happened (connection refused, reset by peer).
        let mut cause: &dyn StdError = &err;
        while let Some(source) = cause.source() {
            cause = source;
        }
        Failed::Exchange(cause.to_string())
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Timeout(timeout) => write!(f, "no answer within {timeout:?}"),
            Failed::Exchange(cause) => write!(f, "connection failed: {cause}"),
            Failed::Status(status) => write!(f, "answered {}", status.as_u16()),
            Failed::GrpcStatus(code) => write!(f, "answered grpc-status {code}"),
            Failed::NotServing => f.write_str("answered a status other than SERVING"),
            Failed::Unbuildable => f.write_str("no request can be made of the endpoint and path"),
        }
    }
}

impl Run {
    /// The run of an endpoint held `unhealthy` as its checks start, and `pending` its first.
    fn new(unhealthy: bool, pending: bool) -> Run {
        Run {
            passed: 0,
            failed: 0,
            doubted: unhealthy || pending,
            pending,
        }
    }

    /// Counts one check; says what the endpoint becomes when this check decides it: unhealthy
    /// after `unhealthy_after` failures in a row, healthy (and back from any ejection) after
    /// `healthy_after` passes in a row that follow a failure.
    fn record(&mut self, passed: bool, health: &Health) -> Option<bool> {
        if passed {
            self.failed = 0;
            self.passed = self.passed.saturating_add(1);
            let enough = if self.pending {
                1
            } else {
                health.healthy_after
            };
            if self.doubted && self.passed >= enough {
                self.doubted = false;
                self.pending = false;
                return Some(true);
            }
            None
        } else {
            self.passed = 0;
            self.failed = self.failed.saturating_add(1);
            self.doubted = true;
            (self.failed == health.unhealthy_after).then_some(false)
        }
    }
}

fn request(
    authority: &Authority,
    path: &str,
    method: Method,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    // The client adds Host (HTTP/1.1) or `:authority` (HTTP/2) from the URI.
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("rampart-health-check"));
    Some(request)
}

// The gRPC health messages are a few bytes of protobuf, encoded and decoded here by hand rather
// than with tonic and prost: the proxy would take a code generator, a gRPC stack and their
// dependencies for one message of one field each way.
//
// Request: `HealthCheckRequest { service: "" }` (the server's overall health) encodes to no bytes
// at all, as every field at its default does; framed for gRPC, it is the compression flag 0 and
// the message length 0 (4 bytes, big-endian).
const GRPC_REQUEST: [u8; 5] = [0, 0, 0, 0, 0];

/// Whether `grpc-status` is 0 (OK).
fn grpc_ok(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").map(HeaderValue::as_bytes) == Some(b"0")
}

/// Whether a gRPC response body holds a `HealthCheckResponse` whose `status` (field 1, a varint)
/// is `SERVING` (1): framed, that is `00 00000002 08 01`. An absent field is `UNKNOWN` (0), and
/// a compressed message (flag 1) was not asked for: neither is serving.
fn grpc_serving(body: &[u8]) -> bool {
    let Some((&[0, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return false;
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let Some(mut message) = rest.get(..len) else {
        return false;
    };
    let mut status = 0;
    while !message.is_empty() {
        let Some(key) = varint(&mut message) else {
            return false;
        };
        // Any other field, from a newer version of the message, is skipped by its wire type.
        let skipped = match (key >> 3, key & 7) {
            (1, 0) => varint(&mut message).map(|value| status = value),
            (_, 0) => varint(&mut message).map(drop),
            (_, 1) => skip(&mut message, 8),
            (_, 2) => varint(&mut message).and_then(|len| skip(&mut message, len as usize)),
            (_, 5) => skip(&mut message, 4),
            _ => None,
        };
        if skipped.is_none() {
            return false;
        }
    }
    status == 1
}

/// Takes one protobuf varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn skip(bytes: &mut &[u8], n: usize) -> Option<()> {
    *bytes = bytes.get(n..)?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(unhealthy_after: u32, healthy_after: u32) -> Health {
        Health {
            check: HealthCheck::Http("/healthz".to_owned()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after,
            healthy_after,
        }
    }

    #[test]
    fn runs_of_checks_decide_at_their_thresholds() {
        let health = health(2, 3);
        let mut run = Run::new(false, false);
        assert_eq!(run.record(true, &health), None);
        assert_eq!(run.record(true, &health), None);
        assert_eq!(
            run.record(true, &health),
            None,
            "passes with no failure before them tell nothing new"
        );
        assert_eq!(run.record(false, &health), None);
        assert_eq!(run.record(true, &health), None, "a pass breaks the run");
        assert_eq!(run.record(false, &health), None);
        assert_eq!(run.record(false, &health), Some(false));
        assert_eq!(run.record(false, &health), None);
        assert_eq!(run.record(true, &health), None);
        assert_eq!(run.record(true, &health), None);
        assert_eq!(run.record(true, &health), Some(true));
        assert_eq!(run.record(true, &health), None);
    }

    #[test]
    fn passes_after_a_failure_too_few_to_mark_it_unhealthy_still_bring_it_back() {
        // Down and up again between checks (a quick redeploy): one check failed, and the
        // passes after it may end the ejection its refused connections earned.
        let health = health(3, 2);
        let mut run = Run::new(false, false);
        assert_eq!(run.record(false, &health), None);
        assert_eq!(run.record(true, &health), None);
        assert_eq!(run.record(true, &health), Some(true));
        assert_eq!(run.record(true, &health), None);
    }

    #[test]
    fn an_endpoint_held_out_is_back_after_its_thresholds_passes_and_a_new_one_after_one() {
        let health = health(2, 3);
        let mut held_out = Run::new(true, false);
        assert_eq!(held_out.record(true, &health), None);
        assert_eq!(held_out.record(true, &health), None);
        assert_eq!(held_out.record(true, &health), Some(true));
        let mut new = Run::new(true, true);
        assert_eq!(new.record(false, &health), None);
        assert_eq!(new.record(true, &health), Some(true));
        assert_eq!(new.record(true, &health), None);
        assert_eq!(new.record(false, &health), None);
        assert_eq!(
            new.record(true, &health),
            None,
            "once checked, the threshold holds"
        );
    }

    #[test]
    fn serving_is_status_one_in_a_framed_message() {
        assert!(grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        // NOT_SERVING, UNKNOWN (absent), SERVICE_UNKNOWN.
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 0]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08, 0x03]));
        // Another field before it is skipped; a compressed or cut message is refused.
        assert!(grpc_serving(&[0, 0, 0, 0, 5, 0x12, 0x01, b'x', 0x08, 0x01]));
        assert!(!grpc_serving(&[1, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!grpc_serving(&[0, 0, 0, 0, 2, 0x08]));
        assert!(!grpc_serving(&[0, 0, 0]));
    }

    #[test]
    fn the_status_must_be_ok() {
        let mut headers = HeaderMap::new();
        assert!(!grpc_ok(&headers));
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(!grpc_ok(&headers));
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(grpc_ok(&headers));
    }
}
