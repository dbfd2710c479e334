//! One request through the proxy: the service every connection runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{ALLOW, HOST, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rampart_http::Reason;
use rampart_http::classify::is_grpc;
use rampart_http::deadline::{header_budget, incoming_deadline, set_outgoing};
use rampart_http::headers::{HopByHop, append_forwarded_for, remove_hop_by_hop};
use rampart_http::rescue::rescue_with_status;
use rampart_policy::error::BoxError;
use tokio::time::Instant;

use crate::body::{ResponseBody, boxed, rescued};
use crate::route::Router;
use crate::stack::Stack;

/// Answers one request from a client at `peer`. Never fails: whatever goes wrong is answered
/// with a response saying why.
pub(crate) async fn handle(
    request: Request<Incoming>,
    router: Arc<Router>,
    peer: SocketAddr,
) -> Result<Response<ResponseBody>, Infallible> {
    Ok(forward(request, &router, peer).await)
}

async fn forward(
    request: Request<Incoming>,
    router: &Router,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let grpc = is_grpc(request.headers());
    // rampart only ever connects to configured endpoints: it is no tunnel.
    if request.method() == Method::CONNECT {
        return refuse_connect(grpc);
    }
    let (mut parts, body) = request.into_parts();
    let Some(stack) = router.route(&parts) else {
        return rescued(Reason::NoRoute, grpc);
    };

    let deadline = match incoming_deadline(&parts.headers, grpc, stack.timeout(), Instant::now()) {
        Ok(deadline) => deadline,
        // No time left, or a garbled deadline header: answered at once, nothing is sent upstream.
        Err(err) => return rescued(Reason::from(err), grpc),
    };
    // When the client's own budget is the shorter, its passing is the client's deadline, not the
    // route's timeout.
    let expired = match header_budget(&parts.headers, grpc) {
        Ok(Some(budget)) if budget < stack.timeout() => Reason::DeadlineExceeded,
        _ => Reason::Timeout,
    };

    // Where a good answer is kept for the fallback's `stale`, if anywhere.
    let stale_key = stack
        .fallback()
        .and_then(|fallback| fallback.stale_key(&parts));

    if let Some(fault) = stack.fault() {
        let injected = fault.draw();
        if let Some(status) = injected.abort {
            // Answered at once: the upstream, its breaker and the retry budget never see it.
            // Fault injection sits above the fallback, yet a fallback that names
            // `fault-injected` asked to be rehearsed with it.
            return match stack.fallback().and_then(|fallback| {
                fallback.for_reason(Reason::FaultInjected, stale_key.as_deref(), grpc)
            }) {
                Some(fallback) => fallback,
                None => boxed(rescue_with_status(Reason::FaultInjected, status, grpc)),
            };
        }
        if let Some(delay) = injected.delay {
            // The delay counts against the deadline, as a slow network's would.
            let until = Instant::now() + delay;
            if until >= deadline.instant() {
                tokio::time::sleep_until(deadline.instant()).await;
                return failed(stack, expired, stale_key.as_deref(), grpc);
            }
            tokio::time::sleep_until(until).await;
        }
    }

    let version = parts.version;
    rewrite_request(&mut parts, peer, grpc, deadline.remaining());
    let request = Request::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
    match stack.call(request, deadline.instant(), expired).await {
        Ok(response) => {
            if let Some(fallback) = stack.fallback().and_then(|fallback| {
                fallback.for_status(response.status(), stale_key.as_deref(), grpc)
            }) {
                // The upstream's own failing answer gives way; its connection is let go.
                return fallback;
            }
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers, HopByHop::default());
            parts.version = version;
            let body = body.boxed_unsync();
            let body = match stack.fallback() {
                // A good answer is copied aside as it streams, for the fallback's `stale`.
                Some(fallback) if stale_key.is_some() => fallback
                    .keep(stale_key, parts.status, &parts.headers, body)
                    .boxed_unsync(),
                _ => body,
            };
            Response::from_parts(parts, body)
        }
        Err(reason) => failed(stack, reason, stale_key.as_deref(), grpc),
    }
}

// The answer for a request the stack gave up on: the route's fallback if it covers `reason`, else
// the rescue response saying why.
fn failed(
    stack: &Stack,
    reason: Reason,
    stale_key: Option<&str>,
    grpc: bool,
) -> Response<ResponseBody> {
    match stack
        .fallback()
        .and_then(|fallback| fallback.for_reason(reason, stale_key, grpc))
    {
        Some(fallback) => fallback,
        None => rescued(reason, grpc),
    }
}

// The headers of a request on its way upstream.
fn rewrite_request(
    parts: &mut Parts,
    peer: SocketAddr,
    grpc: bool,
    remaining: std::time::Duration,
) {
    // An HTTP/2 client names the host in `:authority`, which the new target replaces: an HTTP/1.1
    // upstream still learns it from Host.
    if !parts.headers.contains_key(HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, host);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers, HopByHop::default());
    append_forwarded_for(&mut parts.headers, peer.ip());
    // The upstream learns how long its caller will wait.
    set_outgoing(&mut parts.headers, remaining, grpc);
}

// CONNECT gets 405, with the methods a client may use instead, as RFC 9110 §15.5.6 asks.
fn refuse_connect(grpc: bool) -> Response<ResponseBody> {
    let mut response = rescue_with_status(Reason::BadRequest, StatusCode::METHOD_NOT_ALLOWED, grpc);
    response.headers_mut().insert(
        ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
    );
    boxed(response)
}
