//! The per-route stack: what a route does to a request between the match and the upstream.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use rampart_config::Route;
use rampart_http::{Reason, TransportError};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::upstream::Pool;

/// One route's way to its upstream.
///
/// Today: one attempt, at the endpoint [`Pool::pick`] chooses (round-robin), bounded by the
/// request's deadline. The resilience stack goes here, outermost first, as DESIGN.md's "One
/// request through the proxy" orders it: fault injection -> async route (outbox, 202) -> fallback
/// -> total timeout (the deadline, already applied) -> retry (budget, backoff, body replay,
/// another endpoint) -> hedge -> balancer (P2C over available primaries, then backups) -> the
/// per-endpoint stack: breaker gate -> concurrency limit and pending queue -> per-try timeout ->
/// pooled connection.
#[derive(Debug)]
pub(crate) struct Stack {
    timeout: Duration,
    upstream: Arc<Pool>,
}

impl Stack {
    pub(crate) fn new(route: &Route, upstream: Arc<Pool>) -> Stack {
        Stack {
            timeout: route.timeout,
            upstream,
        }
    }

    /// The route's `timeout`: the whole exchange, until the response's last byte.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` (headers already rewritten) to an endpoint and waits for the response
    /// head until `deadline`; past it, the answer is `expired`.
    pub(crate) async fn call(
        &self,
        mut request: Request<RequestBody>,
        deadline: Instant,
        expired: Reason,
    ) -> Result<Response<Incoming>, Reason> {
        let endpoint = self.upstream.pick();
        set_target(&mut request, endpoint, self.upstream.version())?;
        match tokio::time::timeout_at(deadline, self.upstream.client().request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(Reason::from(transport_error(&err))),
            Err(_elapsed) => Err(expired),
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
