//! One request through the proxy: what every connection's service does with it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue,
    RETRY_AFTER, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use rampart_config::Listener;
use rampart_http::Reason;
use rampart_http::classify::{classify_trailers, grpc_status, is_grpc};
use rampart_http::deadline::{DeadlineError, deadline_within, header_budget};
use rampart_http::headers::{HopByHop, append_forwarded_for, remove_hop_by_hop};
use rampart_http::rescue::{
    X_RAMPART_ERROR, X_RAMPART_FALLBACK, rescue_fault, rescue_saying, rescue_with_status,
};
use rampart_policy::Outcome;
use rampart_policy::error::BoxError;

use crate::body::{
    BodyFault, ClientBodyFault, DRAIN_MAX, DRAIN_WITHIN, Drained, GrpcEnding, IdleBody, LimitBody,
    RequestBody, ResponseBody, Watch, boxed, drain, rescued,
};
use crate::metrics::{Headed, RouteOutcome};
use crate::outbox::Refused;
use crate::recent::Kind;
use crate::route::Router;
use crate::stack::{GaveUp, Stack};
use crate::turn;
use crate::upgrade::{self, Tunnel};

/// What a listener bounds each request's bodies by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_request_body`, in bytes.
    max_request_body: u64,
    /// `body_idle_timeout`.
    body_idle_timeout: Duration,
    /// `tunnel_idle_timeout`.
    tunnel_idle_timeout: Duration,
    /// `max_headers`, which hyper applies to HTTP/1.1 heads and this module to HTTP/2 ones.
    max_headers: usize,
}

impl Limits {
    pub(crate) fn new(listener: &Listener) -> Limits {
        Limits {
            max_request_body: listener.max_request_body.bytes(),
            body_idle_timeout: listener.body_idle_timeout,
            tunnel_idle_timeout: listener.tunnel_idle_timeout,
            max_headers: listener.max_headers as usize,
        }
    }
}

/// Who sent a request, and what their listener allows.
#[derive(Debug, Clone, Copy)]
struct Client {
    peer: SocketAddr,
    grpc: bool,
    limits: Limits,
}

/// Answers one request from a client at `peer`. Never fails: whatever goes wrong is answered
/// with a response saying why. An upgrade the upstream agreed to comes with the tunnel to run
/// once the 101 is written.
pub(crate) async fn handle(
    mut request: Request<Incoming>,
    router: &Router,
    peer: SocketAddr,
    limits: Limits,
) -> Handled {
    // gRPC is carried over HTTP/2 alone: an HTTP/1.1 client does not get the trailers its
    // status would come in (hyper sends only those a `Trailer` field announced), so a call cut
    // short, ended with a failing status, would reach it as a clean end. Over HTTP/1.x a gRPC
    // content-type is plain HTTP: rampart's own answers are HTTP statuses, and a broken body
    // ends the connection.
    let grpc = request.version() == Version::HTTP_2 && is_grpc(request.headers());
    // rampart only ever connects to configured endpoints: it is no tunnel.
    if request.method() == Method::CONNECT {
        // Closing: what follows a CONNECT may be a tunnel's bytes, which the strict check of
        // request heads no longer reads as requests.
        return Handled::unrouted(
            closing(refuse_connect(grpc), request.version()),
            Reason::BadRequest,
        );
    }
    // A body announced larger than allowed is refused before anything is sent or read; the
    // connection closes, as its unread body cannot be skipped safely.
    if request
        .body()
        .size_hint()
        .exact()
        .is_some_and(|len| len > limits.max_request_body)
    {
        return Handled::unrouted(
            closing(rescued(Reason::BodyTooLarge, grpc), request.version()),
            Reason::BodyTooLarge,
        );
    }
    // More header fields than `max_headers`: hyper counts them in an HTTP/1.1 head only, and
    // the next hop (another rampart's HTTP/1.1 listener, say) would refuse what went on.
    if request.version() == Version::HTTP_2 && too_many_fields(request.headers(), limits) {
        return Handled::unrouted(
            rescued(Reason::HeadersTooLarge, grpc),
            Reason::HeadersTooLarge,
        );
    }
    // An asterisk-form target (`OPTIONS *`) asks about rampart itself, and names nothing an
    // upstream could be sent; a request must name its host once. A target's authority (an
    // absolute-form target, HTTP/2's `:authority`) may not carry credentials (RFC 9110 §4.2.4,
    // RFC 9113 §8.3.1): they would go on to the upstream in its Host; nor may it be what a Host
    // field may not (a port alone, a port past 65535): it goes on as the upstream's Host.
    let version = request.version();
    let authority = request.uri().authority().map(Authority::as_str);
    let userinfo = authority.is_some_and(|authority| authority.contains('@'));
    // An authority-form target (`GET example.com:80`) is CONNECT's alone (RFC 9112 §3.2.3).
    let authority_form = request.uri().scheme().is_none() && authority.is_some();
    // Over HTTP/2 the target is built from `:scheme`, `:authority` and a `:path` of `*`.
    let malformed = if request.uri().path() == "*" {
        Some("an asterisk-form target (OPTIONS *) names nothing to forward")
    } else if userinfo {
        Some("a target's authority may not carry credentials (user@host)")
    } else if authority_form {
        Some("an authority-form target (host:port) is for CONNECT alone")
    } else if authority.is_some_and(|authority| !is_host(authority.as_bytes())) {
        Some("a target's authority must be a host and an optional port up to 65535")
    } else if !host_is_sound(&request) {
        Some(if version == Version::HTTP_2 {
            "an HTTP/2 request may have one Host field at most, and a valid one"
        } else {
            "an HTTP/1.x request must name its host once, in one valid Host field"
        })
    } else if version == Version::HTTP_2 && padded_value(request.headers()) {
        // HTTP/1.1's parser takes the white space off; HTTP/2 sends values as they are, and
        // such a request is malformed (RFC 9113 §8.2.1): an upstream may read `" admin"` and
        // `"admin"` as one.
        Some("an HTTP/2 field value may not begin or end with a space or a tab")
    } else {
        None
    };
    if let Some(message) = malformed {
        let response = rescue_saying(Reason::BadRequest, StatusCode::BAD_REQUEST, message, grpc);
        return Handled::unrouted(closing(boxed(response), version), Reason::BadRequest);
    }
    // A transfer coding besides chunked (`gzip, chunked`): hyper takes the chunks off and no
    // more, so the coded bytes would reach the upstream as a plain body, their coding gone with
    // the hop-by-hop header. RFC 9112 §6.1 answers a coding not understood with 501. Only a
    // body of unknown length (chunked) can have one.
    // Chunked twice (`chunked, chunked`) is no coding a sender may apply (RFC 9112 §7): which
    // layer ends the body is each reader's guess.
    let codings = if version < Version::HTTP_2 && request.body().size_hint().exact().is_none() {
        transfer_codings(&request)
    } else {
        Codings::Chunked
    };
    let refused = match codings {
        Codings::Chunked => None,
        Codings::Other => Some((
            StatusCode::NOT_IMPLEMENTED,
            "a transfer coding other than chunked is not implemented",
        )),
        Codings::ChunkedTwice => Some((
            StatusCode::BAD_REQUEST,
            "chunked is a transfer coding applied once",
        )),
    };
    if let Some((status, message)) = refused {
        let response = rescue_saying(Reason::BadRequest, status, message, grpc);
        return Handled::unrouted(closing(boxed(response), version), Reason::BadRequest);
    }
    // An absolute-form target with an empty path (`http://host?x=1`) asks for the path `/`
    // (RFC 9112 §3.2.1, RFC 3986 §6.2.3); left as it is, the path and query would go on as the
    // request target `?x=1`, which no upstream reads.
    if request
        .uri()
        .path_and_query()
        .is_some_and(|target| target.as_str().starts_with('?'))
    {
        *request.uri_mut() = with_root_path(request.uri());
    }
    let offer = upgrade::offer(&request);
    let client_upgrade = (offer == Some(true)).then(|| hyper::upgrade::on(&mut request));
    // How long a small body left unread by the answer may take to be read and dropped after
    // it, so that its HTTP/1.x connection carries on; `None` when the connection must close
    // instead: a body of unknown or large size, or one whose client waits for `100 Continue`
    // before sending it (reading it would ask for the upload the answer spares it).
    // Looked at only for a body (a GET has none): the lookup of `Expect` hashes its name.
    let drain_within = (version < Version::HTTP_2
        && !request.body().is_end_stream()
        && request
            .body()
            .size_hint()
            .exact()
            .is_some_and(|len| len <= DRAIN_MAX)
        && !request.headers().contains_key(EXPECT))
    .then_some(limits.body_idle_timeout.min(DRAIN_WITHIN));
    // An offer to switch protocols that was not taken ends the connection: the strict check of
    // request heads (`strict.rs`) stopped at it, as what follows it might have been another
    // protocol's bytes.
    let (mut parts, body) = request.into_parts();
    let Some(stack) = router.route(&parts) else {
        let response = rescued(Reason::NoRoute, grpc);
        // A body left unread (below) ends the connection too, unless it is drained.
        let response = if offer.is_some() || (!body.is_end_stream() && drain_within.is_none()) {
            closing(response, version)
        } else {
            drain(body, drain_within.unwrap_or_default());
            response
        };
        return Handled::unrouted(response, Reason::NoRoute);
    };
    let client = Client { peer, grpc, limits };
    let started = turn::now();
    let executing = stack.metrics().executing(started);
    let (body, body_fault) = client_body(body, limits, (grpc, drain_within), &mut parts);
    let body_left = body_fault.clone();
    let mut upstream = FromUpstream::default();
    let mut response = exchange(
        stack,
        parts,
        (body, body_fault),
        client,
        client_upgrade,
        &mut upstream,
    )
    .await;
    // The answer came before the client's body was read whole (the upstream answered early,
    // a refusal came first): unless the rest is small enough to be read and dropped after the
    // answer (`Drained`), it cannot be told from a next request on an HTTP/1.x connection, so
    // the connection closes after the answer and says so (RFC 9112 §9.6), as Envoy closes it.
    // An HTTP/2 client's stream is reset instead (RFC 9113 §8.1).
    // A body the exchange was waiting for when it ended (it stalled past a timeout) or that
    // broke is not coming soon, if at all: no drain is worth waiting for.
    let body_unread = body_left.as_ref().is_some_and(|fault| {
        !fault.is_read_whole()
            && (drain_within.is_none() || fault.awaits_client() || fault.get().is_some())
    });
    if (offer.is_some() || body_unread) && upstream.tunnel.is_none() {
        response = closing(response, version);
    }
    let (outcome, kind) = match upstream.outcome {
        // The upstream's own answer counts as its breaker classified it, whatever its headers
        // say: a rampart in front of that upstream marks its own fallbacks and errors, which
        // are not this route's.
        Some(Outcome::Failure) => (RouteOutcome::Failure, Kind::Failure),
        Some(Outcome::Success | Outcome::Slow) => (RouteOutcome::Success, Kind::Success),
        None => own_outcome(&response),
    };
    // A gRPC answer of the upstream's whose head has no status is judged by its trailers, as
    // the endpoint's breaker judges it: counted at its head, a call failing INTERNAL after its
    // messages would count as a success.
    let by_trailers = grpc
        && matches!(upstream.outcome, Some(Outcome::Success | Outcome::Slow))
        && grpc_status(response.headers()).is_none()
        && !response.body().is_end_stream();
    // A client that went away mid-body never reads its answer: it left, as one that goes away
    // before the answer's head does (`cancelled`).
    if body_left.and_then(|fault| fault.get()) == Some(ClientBodyFault::Gone) {
        drop(executing);
    } else if by_trailers {
        if let Some(headed) = executing.headed() {
            let stack = Arc::clone(stack);
            response = response.map(|body| Judged::new(body, stack, headed).boxed_unsync());
        }
    } else {
        executing.answered(outcome, kind);
    }
    Handled {
        response,
        tunnel: upstream.tunnel,
        unrouted: None,
    }
}

/// What [`handle`] made of a request.
pub(crate) struct Handled {
    pub(crate) response: Response<ResponseBody>,
    /// The tunnel of an upgrade the upstream agreed to, to run once the 101 is written.
    pub(crate) tunnel: Option<Tunnel>,
    /// Why rampart answered before any route took the request, when it did: no route's series
    /// counts such a request, the listener's does.
    pub(crate) unrouted: Option<Reason>,
}

impl Handled {
    fn unrouted(response: Response<ResponseBody>, reason: Reason) -> Handled {
        Handled {
            response,
            tunnel: None,
            unrouted: Some(reason),
        }
    }
}

/// What the upstream left of an exchange it answered itself: the tunnel of an upgrade it agreed
/// to, and its answer's outcome as the endpoint's breaker classified it. Left empty when
/// rampart answered instead (a fallback, a rescue response, the outbox's 202).
#[derive(Default)]
struct FromUpstream {
    tunnel: Option<Tunnel>,
    outcome: Option<Outcome>,
}

// What an answer rampart made counts as in `rampart_requests_total`, and the kind of answer it
// is in the route's recent stats: a fallback and a rescue response say why in their headers;
// one that says nothing (the outbox's 202) is a success.
fn own_outcome<B>(response: &Response<B>) -> (RouteOutcome, Kind) {
    let headers = response.headers();
    // One pass over the fields rather than two lookups, each hashing its name: most answers
    // hold neither, and few fields. The first of each name counts, as `get` would read it.
    let (mut fallback, mut error) = (None, None);
    for (name, value) in headers {
        if *name == X_RAMPART_FALLBACK {
            fallback = fallback.or(Some(value));
        } else if *name == X_RAMPART_ERROR {
            error = error.or(Some(value));
        }
    }
    // A fallback stands in for a failure of the kind its header names.
    if let Some(why) = fallback {
        let kind = reason(why.as_bytes()).map_or(Kind::Failure, kind_of);
        return (RouteOutcome::Fallback, kind);
    }
    if let Some(error) = error {
        let kind = reason(error.as_bytes()).map_or(Kind::Failure, kind_of);
        // Refused by rampart's own policies, as the kind says: the breakers, the upstream's
        // limits, the outbox. A retry the budget refused stands for the failure before it.
        let outcome = match kind {
            Kind::ShortCircuited | Kind::Rejected => RouteOutcome::Rejected,
            _ => RouteOutcome::Failure,
        };
        return (outcome, kind);
    }
    (RouteOutcome::Success, Kind::Success)
}

// What a gRPC answer's trailers say it came to, as its endpoint's breaker judges them; with
// `x-rampart-error` among them (rampart ended the call: its deadline, the upstream's reset),
// of that reason's kind.
fn trailers_outcome(trailers: &HeaderMap) -> (RouteOutcome, Kind) {
    if let Some(Outcome::Success | Outcome::Slow) = classify_trailers(trailers) {
        return (RouteOutcome::Success, Kind::Success);
    }
    let kind = trailers
        .get(X_RAMPART_ERROR)
        .and_then(|error| reason(error.as_bytes()))
        .map_or(Kind::Failure, kind_of);
    (RouteOutcome::Failure, kind)
}

/// A gRPC answer's body whose route outcome is counted at its end, from its trailers: a body
/// that ends without them, or breaks off, is a failure; one dropped before its end (the client
/// cancelled the call), `cancelled`.
struct Judged {
    inner: ResponseBody,
    stack: Arc<Stack>,
    headed: Option<Headed>,
}

impl Judged {
    fn new(inner: ResponseBody, stack: Arc<Stack>, headed: Headed) -> Judged {
        Judged {
            inner,
            stack,
            headed: Some(headed),
        }
    }

    fn judge(&mut self, ended: Option<(RouteOutcome, Kind)>) {
        if let Some(headed) = self.headed.take() {
            self.stack.metrics().judged(headed, ended);
        }
    }
}

impl Body for Judged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.judge(Some(trailers_outcome(trailers)));
                }
            }
            Some(Err(_)) | None => self.judge(Some((RouteOutcome::Failure, Kind::Failure))),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Judged {
    fn drop(&mut self) {
        self.judge(None);
    }
}

// The reason a header value names, if any (a fallback's `5xx` names none).
fn reason(value: &[u8]) -> Option<Reason> {
    Reason::ALL
        .iter()
        .copied()
        .find(|reason| reason.as_str().as_bytes() == value)
}

// The kind of answer a request given up for `reason` is, as the Hystrix stream counts it: a
// refusal for want of an admitting breaker is a short-circuit, one by the upstream's limits a
// rejection; a retry the budget refused stands for the failure that called for it.
fn kind_of(reason: Reason) -> Kind {
    match reason {
        Reason::BreakerOpen | Reason::NoHealthyEndpoint => Kind::ShortCircuited,
        Reason::Timeout | Reason::DeadlineExceeded => Kind::Timeout,
        Reason::Overloaded
        | Reason::RateLimited
        | Reason::OutboxFull
        | Reason::OutboxUnavailable => Kind::Rejected,
        Reason::BadRequest | Reason::BodyTooLarge | Reason::HeadersTooLarge => Kind::BadRequest,
        Reason::UpstreamConnect
        | Reason::UpstreamReset
        | Reason::UpstreamInvalid
        | Reason::RetryBudgetExhausted
        | Reason::FaultInjected
        | Reason::NoRoute => Kind::Failure,
    }
}

// The client's body on its way upstream: held to `max_request_body` as it streams (a chunked
// body says its length only at its end; a gRPC call's, each message) and to
// `body_idle_timeout` between pieces, and drained within `drain_within` if the answer leaves it
// unread. Where it records breaking either, or breaking off, goes in the request's extensions,
// for the stack, and is handed back, for the answer.
fn client_body(
    body: Incoming,
    limits: Limits,
    (grpc, drain_within): (bool, Option<Duration>),
    parts: &mut Parts,
) -> (RequestBody, Option<BodyFault>) {
    if body.is_end_stream() {
        // Nothing to read (a GET, most often): a body of nothing, which boxes without allocating.
        return (
            Empty::new().map_err(|never| match never {}).boxed_unsync(),
            None,
        );
    }
    let fault = BodyFault::default();
    parts.extensions.insert(fault.clone());
    let body = IdleBody::new(
        Drained::new(body, drain_within, fault.clone()),
        limits.body_idle_timeout,
        Watch::Request(fault.clone()),
    );
    let body = if grpc {
        LimitBody::per_grpc_message(body, limits.max_request_body, fault.clone())
    } else {
        LimitBody::new(body, limits.max_request_body, fault.clone())
    };
    (body.boxed_unsync(), Some(fault))
}

// The request through the route's stack, and its answer; an answer of the upstream's own
// leaves its outcome, and the tunnel of an upgrade it agreed to, in `upstream`.
async fn exchange(
    stack: &Stack,
    mut parts: Parts,
    (body, body_fault): (RequestBody, Option<BodyFault>),
    client: Client,
    client_upgrade: Option<OnUpgrade>,
    upstream: &mut FromUpstream,
) -> Response<ResponseBody> {
    let grpc = client.grpc;
    // No time left, or a garbled deadline header: answered at once, nothing is sent upstream.
    let found = header_budget(&parts.headers, grpc).and_then(|budget| {
        deadline_within(budget, stack.timeout(), turn::now()).map(|deadline| (deadline, budget))
    });
    let (deadline, budget) = match found {
        Ok(found) => found,
        Err(err @ DeadlineError::Invalid { .. }) => {
            let reason = Reason::from(&err);
            return boxed(rescue_saying(reason, reason.status(), err.detail(), grpc));
        }
        Err(err) => return rescued(Reason::from(err), grpc),
    };
    // When the client's own budget is the shorter, its passing is the client's deadline, not the
    // route's timeout.
    let expired = match budget {
        Some(budget) if budget < stack.timeout() => Reason::DeadlineExceeded,
        _ => Reason::Timeout,
    };

    // Where a good answer is kept for the fallback's `stale`, if anywhere.
    let stale_key = stack
        .fallback()
        .and_then(|fallback| fallback.stale_key(&parts));

    if let Some(fault) = stack.fault() {
        let injected = fault.draw();
        if let Some(delay) = injected.delay {
            // The delay counts against the deadline, as a slow network's would.
            let until = turn::now() + delay;
            if until >= deadline.instant() {
                tokio::time::sleep_until(deadline.instant()).await;
                return failed(stack, expired, stale_key.as_deref(), grpc, None);
            }
            tokio::time::sleep_until(until).await;
        }
        if let Some(abort) = injected.abort {
            // Answered after the delay, if any: the upstream, its breaker and the retry budget
            // never see it. Fault injection sits above the fallback, yet a fallback that names
            // `fault-injected` asked to be rehearsed with it.
            return match stack.fallback().and_then(|fallback| {
                fallback.for_reason(Reason::FaultInjected, stale_key.as_deref(), grpc)
            }) {
                Some(fallback) => fallback,
                None => boxed(rescue_fault(abort.status, abort.grpc, grpc)),
            };
        }
    }

    let version = parts.version;
    // An HTTP/1.0 client keeps its connection only when it asks and the answer agrees
    // (RFC 9112 Appendix C.2.2), which hyper reads from the answer's `Connection`: the
    // upstream's, a field of its own hop, goes, so the proxy agrees for it.
    let keep_alive_10 = version == Version::HTTP_10 && asks_keep_alive(&parts.headers);
    // An async route answers for the upstream: nothing is tunnelled through it.
    let hop_by_hop = if client_upgrade.is_some() && stack.outbox().is_none() {
        HopByHop::tunnel_upgrade()
    } else {
        HopByHop::default()
    };
    rewrite_request(&mut parts, client.peer, hop_by_hop);
    // The answer once the outbox or the stack has given up, with how the client's body failed
    // the exchange, if it did.
    let give_up = |reason, after| {
        let body_fault = body_fault.as_ref().and_then(BodyFault::get);
        gave_up(
            stack,
            (reason, after),
            body_fault,
            stale_key.as_deref(),
            grpc,
            version,
        )
    };
    if let Some(outbox) = stack.outbox() {
        return match outbox
            .accept(stack.name(), parts, body, (deadline.instant(), expired))
            .await
        {
            Ok(accepted) => accepted,
            // Refused with the body read whole (or none read), in words of its own.
            Err(Refused {
                reason,
                saying: Some(saying),
            }) => failed(stack, reason, stale_key.as_deref(), grpc, Some(saying)),
            Err(Refused { reason, .. }) => give_up(reason, None),
        };
    }
    let request = Request::from_parts(parts, body);
    match stack.call(request, deadline.instant(), expired).await {
        Ok((mut response, outcome)) => {
            if let Some(client_upgrade) = client_upgrade {
                upstream.tunnel = upgrade::join(
                    client_upgrade,
                    &mut response,
                    client.limits.tunnel_idle_timeout,
                );
            }
            if upstream.tunnel.is_some() {
                upstream.outcome = Some(outcome);
                // The 101 goes back as it came, with its `Upgrade`; the tunnel takes it from
                // there, past the route's timeout and any fallback.
                let (mut parts, body) = response.into_parts();
                let hop_by_hop = HopByHop {
                    tunnel_upgrade: true,
                    response: true,
                };
                remove_hop_by_hop(&mut parts.headers, hop_by_hop);
                return Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
            }
            if let Some(fallback) = stack.fallback().and_then(|fallback| {
                fallback.for_status(
                    response.status(),
                    response.headers(),
                    stale_key.as_deref(),
                    grpc,
                )
            }) {
                // The upstream's own failing answer gives way; its connection is let go.
                return fallback;
            }
            upstream.outcome = Some(outcome);
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers, HopByHop::response());
            // Only a body of known length can end without the connection ending with it.
            let keep_alive_10 = keep_alive_10 && body.size_hint().exact().is_some();
            if parts.status == StatusCode::NO_CONTENT {
                // A 204 has no content to measure (RFC 9110 §8.6): an HTTP/2 client resets a
                // stream whose 204 says a length other than 0. hyper drops it over HTTP/1.1.
                parts.headers.remove(CONTENT_LENGTH);
            }
            parts.version = version;
            // The stack bounds the body by the deadline already.
            let watch = body_fault.clone().map_or(Watch::None, Watch::Reply);
            let body = IdleBody::new(body, client.limits.body_idle_timeout, watch).boxed_unsync();
            let body = match stack.fallback() {
                // A good answer is copied aside as it streams, for the fallback's `stale`.
                Some(fallback) if stale_key.is_some() => fallback
                    .keep(stale_key, parts.status, &parts.headers, body)
                    .boxed_unsync(),
                _ => body,
            };
            // Set after the fallback's copy: it is this hop's, not part of a stale answer.
            if keep_alive_10 {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
            }
            // A gRPC call cut short ends with a status saying why, not a bare stream reset.
            let body = if grpc {
                // A 200 without a status in its head (a trailers-only answer has one); another
                // HTTP status is the client's to read as gRPC does.
                let owes_status = parts.status == StatusCode::OK
                    && grpc_status(&parts.headers).is_none()
                    && stack.answers_grpc(&parts.headers);
                GrpcEnding::new(body, expired, body_fault.clone(), owes_status).boxed_unsync()
            } else {
                body
            };
            Response::from_parts(parts, body)
        }
        Err(GaveUp { reason, after }) => give_up(reason, after),
    }
}

// The answer for a request the stack (or the outbox) gave up on for `reason` (after an attempt
// that met `after`, for a retry the budget refused), with how the client's body failed the
// exchange if it did, the client's HTTP `version` known.
fn gave_up(
    stack: &Stack,
    (reason, after): (Reason, Option<Reason>),
    body_fault: Option<ClientBodyFault>,
    stale_key: Option<&str>,
    grpc: bool,
    version: Version,
) -> Response<ResponseBody> {
    match reason {
        // The client's body outgrew `max_request_body` before the upstream answered.
        Reason::BodyTooLarge => closing(rescued(Reason::BodyTooLarge, grpc), version),
        // The client's body stalled past `body_idle_timeout` before the upstream answered: 408,
        // as Envoy answers a stream idle timeout before the response began.
        Reason::BadRequest if body_fault == Some(ClientBodyFault::Stalled) => closing(
            boxed(rescue_with_status(
                Reason::BadRequest,
                StatusCode::REQUEST_TIMEOUT,
                grpc,
            )),
            version,
        ),
        // The client broke its body off or garbled it (what is left of it on the connection
        // cannot be told from a next request), or the outbox could not store it.
        Reason::BadRequest => {
            let response = match body_fault {
                Some(ClientBodyFault::Broken | ClientBodyFault::Gone) => boxed(rescue_saying(
                    Reason::BadRequest,
                    StatusCode::BAD_REQUEST,
                    "the request body broke off or was malformed (a chunk garbled, or the \
                     connection or stream ended before the body did)",
                    grpc,
                )),
                _ => rescued(Reason::BadRequest, grpc),
            };
            closing(response, version)
        }
        reason => failed(
            stack,
            reason,
            stale_key,
            grpc,
            after.and_then(refused_after),
        ),
    }
}

// What a client refused a retry by the budget is told, when the attempt before met `after`:
// the failure that called for the retry, which says more of the upstream's state (every
// endpoint down) than the refusal alone.
fn refused_after(after: Reason) -> Option<&'static str> {
    Some(match after {
        Reason::UpstreamConnect => {
            "the request failed (could not connect to the upstream) and the retry budget \
             allows no retry now"
        }
        Reason::UpstreamReset => {
            "the request failed (the upstream closed or reset the connection or stream before \
             the response was complete) and the retry budget allows no retry now"
        }
        Reason::UpstreamInvalid => {
            "the request failed (the upstream sent an invalid response) and the retry budget \
             allows no retry now"
        }
        Reason::Timeout => {
            "the request failed (the upstream did not answer within the per-try timeout) and \
             the retry budget allows no retry now"
        }
        _ => return None,
    })
}

// The answer for a request the stack gave up on: the route's fallback if it covers `reason`, else
// the rescue response saying why, in words of its own when `saying` has some.
fn failed(
    stack: &Stack,
    reason: Reason,
    stale_key: Option<&str>,
    grpc: bool,
    saying: Option<&'static str>,
) -> Response<ResponseBody> {
    if let Some(fallback) = stack
        .fallback()
        .and_then(|fallback| fallback.for_reason(reason, stale_key, grpc))
    {
        return fallback;
    }
    let mut response = match saying {
        Some(message) => boxed(rescue_saying(reason, reason.status(), message, grpc)),
        None => rescued(reason, grpc),
    };
    // When the rate limit will take another request, as a 429 may say (RFC 6585 §4): in whole
    // seconds (RFC 9110 §10.2.3), rounded up, so that a client that honours it never comes
    // back to be refused again, at worst waiting up to a second longer than it must.
    if reason == Reason::RateLimited
        && !grpc
        && let Some(wait) = stack.upstream().limits().rate_ready_in()
    {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

// The headers of a request on its way upstream; each attempt adds the time it has
// (`Stack::call`).
fn rewrite_request(parts: &mut Parts, peer: SocketAddr, hop_by_hop: HopByHop) {
    // The target's authority (HTTP/2's `:authority`, an HTTP/1.1 absolute-form target) names the
    // host, over any Host field (RFC 9112 §3.2.2, RFC 9113 §8.3.1), and routes the request: the
    // upstream is sent the same host, in Host, so that it cannot be told another.
    if let Some(authority) = parts.uri.authority()
        && parts.headers.get(HOST).map(HeaderValue::as_bytes) != Some(authority.as_str().as_bytes())
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(HOST, host);
    }
    remove_hop_by_hop(&mut parts.headers, hop_by_hop);
    append_forwarded_for(&mut parts.headers, peer.ip());
}

// Whether a request names its host once, validly: RFC 9112 §3.2 has a server refuse an HTTP/1.x
// request with two Host fields or an invalid one, and an HTTP/1.1 request with none (an HTTP/1.0
// client may send none). With two, which one names the origin is each reader's guess, and a
// route matched on one while the upstream reads the other is a way around the match. HTTP/2
// names the host in `:authority` and needs no Host field, but a client may send one (RFC 9113
// §8.3.1), held to the same rule: without `:authority` the route reads it; with it, it is
// replaced by `:authority` on the way (see `rewrite_request`), as the route reads that.
fn host_is_sound<B>(request: &Request<B>) -> bool {
    // A pass over the few fields of a request costs less than a lookup, which hashes the name.
    let mut hosts = request.headers().iter().filter(|(name, _)| *name == HOST);
    match (hosts.next(), hosts.next()) {
        (Some((_, host)), None) => is_host(host.as_bytes()),
        (None, _) => request.version() != Version::HTTP_11,
        (Some(_), Some(_)) => false,
    }
}

// Whether `host` is RFC 3986's `host [ ":" port ]` as an `http` URI's authority has it: a host,
// not empty (RFC 9110 §4.2.1: the target an upstream would rebuild from it names nothing), of
// the bytes a host may have, and a port, if any, of digits up to 65535.
fn is_host(host: &[u8]) -> bool {
    if matches!(host, [] | [b':', ..]) || !host.iter().all(|&b| HOST_BYTES[usize::from(b)]) {
        return false;
    }
    // The port follows the last colon outside an IP literal's brackets.
    let port = match host.iter().rposition(|&b| b == b':') {
        Some(at) if !host[at..].contains(&b']') => &host[at + 1..],
        _ => return true,
    };
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

// Whether a `Connection` field of `headers` names `keep-alive`.
fn asks_keep_alive(headers: &HeaderMap) -> bool {
    members(headers, CONNECTION).any(|option| option.eq_ignore_ascii_case(b"keep-alive"))
}

/// The transfer codings of a request whose body has no length given.
enum Codings {
    /// `chunked`, once.
    Chunked,
    /// A coding besides `chunked`.
    Other,
    /// `chunked` more than once, and nothing else.
    ChunkedTwice,
}

fn transfer_codings<B>(request: &Request<B>) -> Codings {
    let mut chunked = 0;
    for coding in members(request.headers(), TRANSFER_ENCODING) {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Codings::Other;
        }
        chunked += 1;
    }
    if chunked > 1 {
        Codings::ChunkedTwice
    } else {
        Codings::Chunked
    }
}

// The members of the comma-separated lists in every `name` field of `headers`, trimmed.
fn members(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

// The bytes of RFC 3986's `host [ ":" port ]`: unreserved, percent-encoded, sub-delims, and the
// brackets and colons of an IP literal and a port.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric();
        byte += 1;
    }
    let others = b"-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

// Whether an HTTP/2 request's fields are more than `max_headers`. Cookie crumbs (RFC 9113
// §8.2.3: a client may send each cookie as a field of its own) count as the one field an
// HTTP/1.1 upstream gets them joined in.
fn too_many_fields(headers: &HeaderMap, limits: Limits) -> bool {
    headers.len() > limits.max_headers && {
        let crumbs = headers.get_all(COOKIE).iter().count();
        headers.len() - crumbs.saturating_sub(1) > limits.max_headers
    }
}

// Whether a field value of `headers` begins or ends with a space or a tab.
fn padded_value(headers: &HeaderMap) -> bool {
    headers.values().any(|value| {
        let value = value.as_bytes();
        let padded = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        padded(value.first()) || padded(value.last())
    })
}

// `uri`, whose path is empty, with the path `/`.
fn with_root_path(uri: &Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    let target = parts
        .path_and_query
        .as_ref()
        .map_or("", PathAndQuery::as_str);
    // `/` and a query that parsed once parse again.
    parts.path_and_query = PathAndQuery::try_from(format!("/{target}")).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

// `response`, with the client's HTTP/1.x connection closed after it: what is left of the request
// body is not read, and cannot be told from a next request.
fn closing(mut response: Response<ResponseBody>, version: Version) -> Response<ResponseBody> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

// CONNECT gets 405, with the methods a client may use instead, as RFC 9110 §15.5.6 asks.
fn refuse_connect(grpc: bool) -> Response<ResponseBody> {
    let mut response = rescue_saying(
        Reason::BadRequest,
        StatusCode::METHOD_NOT_ALLOWED,
        "CONNECT is not allowed: rampart forwards requests, it opens no tunnels to a host:port",
        grpc,
    );
    response.headers_mut().insert(
        ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
    );
    boxed(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_rampart_made_counts_as_its_reason_says_in_both_tallies() {
        let outcome = |error: &'static str| {
            let response = Response::builder()
                .header(X_RAMPART_ERROR, error)
                .body(())
                .unwrap();
            own_outcome(&response)
        };
        // Refused by rampart's own policies: rejected, whichever tally reads it.
        assert_eq!(
            outcome("breaker-open"),
            (RouteOutcome::Rejected, Kind::ShortCircuited)
        );
        assert_eq!(
            outcome("overloaded"),
            (RouteOutcome::Rejected, Kind::Rejected)
        );
        assert_eq!(
            outcome("outbox-full"),
            (RouteOutcome::Rejected, Kind::Rejected)
        );
        // A retry the budget refused stands for the failure before it.
        assert_eq!(
            outcome("retry-budget-exhausted"),
            (RouteOutcome::Failure, Kind::Failure)
        );
        assert_eq!(outcome("timeout"), (RouteOutcome::Failure, Kind::Timeout));
        let plain = Response::new(());
        assert_eq!(own_outcome(&plain), (RouteOutcome::Success, Kind::Success));
    }
}
