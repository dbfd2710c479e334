//! The per-route stack: what a route does to a request between the match and the upstream.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use rampart_config::Route;
use rampart_http::classify::{classify_response, is_grpc};
use rampart_http::{Attempt, Reason, TransportError};
use rampart_policy::Outcome;
use rampart_policy::rng::Rng;
use tokio::time::Instant;

use crate::body::{BodyFault, ClientBodyFault, RequestBody};
use crate::fallback::Fallback;
use crate::fault::Fault;
use crate::retry::{Replay, Retry, answered};
use crate::upstream::Pool;

/// One route's way to its upstream, outermost first:
///
/// - fault injection (`[routes.fault]`), right after the route match and the deadline: an
///   injected delay counts against the deadline, an abort answers at once (see [`Fault`]);
/// - fallback (`[routes.fallback]`): around everything below, so it can answer whatever gave up
///   there, or an upstream's 5xx (see [`Fallback`]);
/// - the total timeout: the request's deadline (the route's `timeout`, capped by the client's
///   deadline header), set by the caller, bounds every attempt and every backoff sleep together,
///   so retries cannot outlive the client's patience;
/// - retry (`[routes.retry]`): above the balancer, so a retry goes to another endpoint than the
///   one that failed; its budget, shared by the route, keeps retries from turning an outage into a
///   storm; the body is copied for it as it streams, up to `max_replay_body`;
/// - balancer ([`Pool::pick`]): round-robin over the endpoints whose breaker admits, backups only
///   when no primary does;
/// - per endpoint: the breaker's permit, which records the attempt's classified outcome;
/// - per-try timeout (`per_try_timeout`): innermost, so a hung attempt is cut short, counted as
///   a failure by the breaker and retried as `timeout`;
/// - the pooled connection.
///
/// Fault injection and fallback are applied by the caller (`forward.rs`), around
/// [`Stack::call`].
///
/// Still to come, in the order of docs/architecture.md: async routes between fault injection and fallback;
/// hedging between retry and balancer; P2C and the other balancers; the concurrency
/// limit and pending queue between breaker and per-try timeout. The breaker learns from a gRPC
/// response's head only (a `grpc-status` in its trailers is not read yet).
#[derive(Debug)]
pub(crate) struct Stack {
    fault: Option<Fault>,
    fallback: Option<Fallback>,
    timeout: Duration,
    per_try_timeout: Option<Duration>,
    retry: Option<Retry>,
    upstream: Arc<Pool>,
}

/// What became of the last attempt, to be answered when no other follows.
enum Last {
    Response(Response<Incoming>),
    Error(Reason),
}

impl Stack {
    /// The stack of `route`, the `index`th in the file, to `upstream`; fault injection draws
    /// from `rng`.
    pub(crate) fn new(
        route: &Route,
        index: usize,
        upstream: Arc<Pool>,
        rng: &Rng,
    ) -> Result<Stack, crate::Error> {
        Ok(Stack {
            fault: route
                .fault
                .as_ref()
                .map(|fault| Fault::new(fault, rng.clone(), &format!("routes[{index}].fault")))
                .transpose()?,
            fallback: route
                .fallback
                .as_ref()
                .map(|fallback| Fallback::new(fallback, &format!("routes[{index}].fallback")))
                .transpose()?,
            timeout: route.timeout,
            per_try_timeout: route.per_try_timeout,
            retry: Retry::new(route)?,
            upstream,
        })
    }

    /// The route's fault injection (`[routes.fault]`), applied by the caller before anything else.
    pub(crate) fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    /// The route's fallback (`[routes.fallback]`), applied by the caller to what [`Stack::call`]
    /// returns.
    pub(crate) fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// The route's `timeout`: the whole exchange, until the response's last byte.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` (headers already rewritten) to the upstream, retrying as the route says,
    /// and waits for a response head until `deadline`; past it, the answer is `expired`.
    ///
    /// When no attempt succeeds, the client gets the last upstream response as it is, if there
    /// was one (a 503 the upstream sent stays the upstream's 503), else the reason of the last
    /// failure, or `retry-budget-exhausted` when the budget refused the retry the failure called
    /// for.
    pub(crate) async fn call(
        &self,
        request: Request<RequestBody>,
        deadline: Instant,
        expired: Reason,
    ) -> Result<Response<Incoming>, Reason> {
        let grpc = self.upstream.is_grpc() || is_grpc(request.headers());
        let (parts, body) = request.into_parts();

        // Only a request that may be retried is worth a copy of its body.
        let retry = self
            .retry
            .as_ref()
            .filter(|retry| retry.allows(&parts, grpc) && retry.can_replay(&body));
        let mut body = match retry {
            Some(retry) => {
                retry.budget().deposit();
                Replay::record(body, retry.max_replay_body())
            }
            None => Replay::once(body),
        };
        let attempts = retry.map_or(1, Retry::attempts);
        let mut delays = retry.map(|retry| retry.backoff().delays());

        // The endpoint of the failed attempt, and what it answered: kept through the backoff,
        // to be the answer if no endpoint takes the retry.
        let mut failed: Option<(usize, Last)> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let picked = match self.upstream.pick(failed.as_ref().map(|(index, _)| *index)) {
                Ok(picked) => picked,
                Err(reason) => return failed.map_or(Err(reason), |(_, last)| last.into_result()),
            };
            let index = picked.index;
            let Some(attempt_body) = body.next() else {
                // Unreachable: a streamed body is never retried.
                return Err(Reason::BadRequest);
            };
            let mut request = Request::from_parts(parts.clone(), attempt_body);
            set_target(&mut request, picked.authority, self.upstream.version())?;

            let result = self.attempt(request, deadline).await;
            // The previous failure is superseded: let its connection go.
            drop(failed.take());
            let (tried, last) = match result {
                Ok(response) => {
                    picked.record(classify_response(
                        response.status(),
                        response.headers(),
                        self.upstream.failures(),
                        grpc,
                    ));
                    let tried = answered(response.status(), response.headers(), grpc);
                    (tried, Last::Response(response))
                }
                Err(Tried::Client(fault)) => {
                    // The client's body failed the exchange, not the endpoint: its breaker
                    // learns nothing (the permit is let go), and no retry can mend it.
                    drop(picked);
                    return Err(match fault {
                        ClientBodyFault::TooLarge => Reason::BodyTooLarge,
                        ClientBodyFault::Stalled => Reason::BadRequest,
                    });
                }
                Err(Tried::Transport(err)) => {
                    picked.record(err.outcome());
                    (Attempt::Error(err), Last::Error(err.into()))
                }
                Err(Tried::Expired) => {
                    // No answer within the whole exchange's time: a failure of this endpoint.
                    picked.record(Outcome::Failure);
                    return Err(expired);
                }
            };

            let Some(retry) =
                retry.filter(|retry| attempt < attempts && retry.wants(&tried) && body.can_retry())
            else {
                return last.into_result();
            };
            let delay = delays.as_mut().and_then(Iterator::next).unwrap_or_default();
            // A retry that cannot start before the deadline would only turn the answer into a
            // timeout.
            if Instant::now() + delay >= deadline {
                return last.into_result();
            }
            if !retry.budget().withdraw() {
                return match last {
                    Last::Response(response) => Ok(response),
                    Last::Error(_) => Err(Reason::RetryBudgetExhausted),
                };
            }
            tokio::time::sleep(delay).await;
            failed = Some((index, last));
        }
    }

    // One attempt, bounded by the per-try timeout and the deadline.
    async fn attempt(
        &self,
        request: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, Tried> {
        let fault = request.extensions().get::<BodyFault>().cloned();
        let try_deadline = self
            .per_try_timeout
            .map_or(deadline, |timeout| deadline.min(Instant::now() + timeout));
        match tokio::time::timeout_at(try_deadline, self.upstream.client().request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(match fault.as_ref().and_then(BodyFault::get) {
                Some(fault) => Tried::Client(fault),
                None => Tried::Transport(transport_error(&err)),
            }),
            Err(_elapsed) if try_deadline < deadline => {
                Err(Tried::Transport(TransportError::Timeout))
            }
            Err(_elapsed) => Err(Tried::Expired),
        }
    }
}

/// Why an attempt got no response.
enum Tried {
    /// The exchange failed, or the per-try timeout expired first.
    Transport(TransportError),
    /// The request's deadline passed.
    Expired,
    /// The client's request body failed the exchange (`max_request_body`, `body_idle_timeout`).
    Client(ClientBodyFault),
}

impl Last {
    fn into_result(self) -> Result<Response<Incoming>, Reason> {
        match self {
            Last::Response(response) => Ok(response),
            Last::Error(reason) => Err(reason),
        }
    }
}

// The target becomes the endpoint, with the request's own path and query: whatever authority the
// client named (absolute-form, `:authority`, Host) never picks where the request goes.
fn set_target(
    request: &mut Request<RequestBody>,
    endpoint: &Authority,
    version: Version,
) -> Result<(), Reason> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(endpoint.clone());
    target.path_and_query = Some(
        request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    // Only an asterisk-form target (`OPTIONS *`) has no place in an absolute URI.
    *request.uri_mut() = Uri::from_parts(target).map_err(|_| Reason::BadRequest)?;
    *request.version_mut() = version;
    Ok(())
}

/// Why the client got no response head: a connect failure, or the exchange broke on the way.
fn transport_error(err: &hyper_util::client::legacy::Error) -> TransportError {
    if err.is_connect() {
        return TransportError::ConnectFailure;
    }
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(err) = cause.downcast_ref::<hyper::Error>() {
            if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
                return TransportError::Invalid;
            }
        }
        if let Some(err) = cause.downcast_ref::<io::Error>() {
            return TransportError::from_io(err, false);
        }
        source = cause.source();
    }
    // A connection closed before the response (hyper's "incomplete message"), a stream reset
    // (HTTP/2 REFUSED_STREAM included, for now), a canceled request: the exchange broke.
    TransportError::Reset
}
