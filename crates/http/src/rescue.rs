//! The one place where errors become responses.
//!
//! Whatever went wrong, a policy's refusal, a dead upstream or a malformed request, the client
//! gets a response that says why: `x-rampart-error: <reason>` with one of the [`Reason`]s of the
//! contract. [`rescue`] makes that response, so every synthetic answer of the proxy has the same
//! shape:
//!
//! - plain HTTP: the reason's [status](Reason::status), `x-rampart-error`,
//!   `content-type: application/json`, `cache-control: no-store` (a synthetic 404 must not be
//!   cached past the next reload) and a one-line JSON body,
//!   `{"error":"<reason>","message":"<what happened>"}`;
//! - gRPC: what gRPC clients expect of a failed call, a trailers-only response: HTTP 200,
//!   `content-type: application/grpc`, `grpc-status` (the reason's [code](Reason::grpc_code)),
//!   `grpc-message` (percent-encoded) and `x-rampart-error`, and no body.
//!
//! The body is a plain [`Bytes`]: turn the response into the server's body type with
//! [`Response::map`] (`response.map(http_body_util::Full::new)`, for instance). An empty `Full`
//! reports the end of the stream at once, so an HTTP/2 server sends the gRPC answer as one
//! HEADERS frame with END_STREAM, as a trailers-only response must be.
//!
//! A service built on `rampart-policy`'s tower layers answers their refusals the same way: the
//! error out of the stack names its [`Reason`] ([`Reason::from_error`]), in an axum
//! `HandleErrorLayer` or a tonic interceptor alike:
//!
//! ```
//! use rampart_http::rescue::{rescue, Reason};
//! use rampart_policy::breaker::CircuitBreaker;
//! use rampart_policy::error::BoxError;
//!
//! // What a stack with the breaker's layer returns while the breaker is open.
//! let breaker = CircuitBreaker::new();
//! breaker.force_open();
//! let err: BoxError = Box::new(breaker.try_acquire().unwrap_err());
//!
//! // Anything else is the service's own failure: a 502 here.
//! let reason = Reason::from_error(&*err).unwrap_or(Reason::UpstreamReset);
//! let response = rescue(reason, false);
//! assert_eq!(response.status(), 503);
//! assert_eq!(response.headers()["x-rampart-error"], "breaker-open");
//! ```
//!
//! ```
//! use rampart_http::rescue::{rescue, Reason};
//!
//! let response = rescue(Reason::BreakerOpen, false);
//! assert_eq!(response.status(), 503);
//! assert_eq!(response.headers()["x-rampart-error"], "breaker-open");
//!
//! let response = rescue(Reason::BreakerOpen, true);
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["grpc-status"], "14");
//! assert!(response.body().is_empty());
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use rampart_policy::Rejected;

use crate::classify::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode, TransportError};
use crate::deadline::DeadlineError;

/// `x-rampart-error`: on a response rampart made itself, why.
pub const X_RAMPART_ERROR: HeaderName = HeaderName::from_static("x-rampart-error");

/// `x-rampart-fallback`: on a fallback response, why the fallback answered.
pub const X_RAMPART_FALLBACK: HeaderName = HeaderName::from_static("x-rampart-fallback");

macro_rules! reasons {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $token:literal, $status:ident, $grpc:ident, $message:literal;
    )*) => {
        /// Why rampart answered instead of the upstream: the value of `x-rampart-error` and
        /// `x-rampart-fallback`.
        ///
        /// Each reason has an HTTP [status](Reason::status) and a gRPC [code](Reason::grpc_code).
        /// Those the contract fixes are as it says; the others, chosen here, are documented on
        /// the variant.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $(
                $(#[$doc])*
                $variant,
            )*
        }

        impl Reason {
            /// Every reason, in the contract's order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The reason as it appears in headers and config: `breaker-open`, ...
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $token,)*
                }
            }

            /// The HTTP status of a plain HTTP response made for this reason.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Reason::$variant => StatusCode::$status,)*
                }
            }

            /// The `grpc-status` of a gRPC response made for this reason.
            pub fn grpc_code(self) -> GrpcCode {
                match self {
                    $(Reason::$variant => GrpcCode::$grpc,)*
                }
            }

            /// One sentence for people: what happened. ASCII without `%`, so it is its own
            /// `grpc-message` encoding.
            pub fn message(self) -> &'static str {
                match self {
                    $(Reason::$variant => $message,)*
                }
            }

            // The plain HTTP body, built at compile time so a rescue allocates nothing for it.
            fn json_body(self) -> &'static str {
                match self {
                    $(Reason::$variant => concat!(
                        "{\"error\":\"", $token, "\",\"message\":\"", $message, "\"}\n"
                    ),)*
                }
            }
        }
    };
}

reasons! {
    /// The endpoint's circuit breaker is open: 503, UNAVAILABLE.
    BreakerOpen = "breaker-open", SERVICE_UNAVAILABLE, Unavailable,
        "the upstream's circuit breaker is open; the request was not sent";
    /// No endpoint of the upstream is available: 503, UNAVAILABLE.
    NoHealthyEndpoint = "no-healthy-endpoint", SERVICE_UNAVAILABLE, Unavailable,
        "no healthy endpoint of the upstream is available";
    /// The route's timeout expired, or the last attempt's per-try timeout, or the upstream's
    /// answer stalled past `body_idle_timeout`: 504, DEADLINE_EXCEEDED.
    Timeout = "timeout", GATEWAY_TIMEOUT, DeadlineExceeded,
        "the upstream did not answer in time: the route's timeout or per-try timeout ran out, or its answer sent nothing for body_idle_timeout";
    /// The request's own deadline passed, or had passed when it arrived: 504, DEADLINE_EXCEEDED.
    DeadlineExceeded = "deadline-exceeded", GATEWAY_TIMEOUT, DeadlineExceeded,
        "the request's deadline passed";
    /// A concurrency limit (bulkhead, adaptive limit, pending queue) had no room: 503,
    /// RESOURCE_EXHAUSTED.
    Overloaded = "overloaded", SERVICE_UNAVAILABLE, ResourceExhausted,
        "the upstream's concurrency limit is reached; try again later";
    /// The upstream's rate limit allows no request now: 429, RESOURCE_EXHAUSTED.
    RateLimited = "rate-limited", TOO_MANY_REQUESTS, ResourceExhausted,
        "the upstream's rate limit allows no request now; try again later";
    /// No connection could be made to the upstream: 502, UNAVAILABLE.
    UpstreamConnect = "upstream-connect", BAD_GATEWAY, Unavailable,
        "could not connect to the upstream";
    /// The upstream connection or stream was reset before the response was complete: 502,
    /// UNAVAILABLE.
    UpstreamReset = "upstream-reset", BAD_GATEWAY, Unavailable,
        "the upstream closed or reset the connection or stream before the response was complete";
    /// An attempt failed and the retry budget allowed no other: 503 (chosen here: like the
    /// other refusals to add load, a temporary condition), RESOURCE_EXHAUSTED.
    RetryBudgetExhausted = "retry-budget-exhausted", SERVICE_UNAVAILABLE, ResourceExhausted,
        "the request failed and the retry budget allows no retry now";
    /// Fault injection aborted the request: 503 (chosen here; a fault's own `abort_status`
    /// overrides it, see [`rescue_with_status`]), UNAVAILABLE.
    FaultInjected = "fault-injected", SERVICE_UNAVAILABLE, Unavailable,
        "the request was aborted by fault injection";
    /// No route matches the request: 404, UNIMPLEMENTED.
    NoRoute = "no-route", NOT_FOUND, Unimplemented,
        "no route matches the request";
    /// The async route's outbox is full, nothing was accepted: 503, UNAVAILABLE.
    OutboxFull = "outbox-full", SERVICE_UNAVAILABLE, Unavailable,
        "the outbox is full; the request was not accepted";
    /// The async route's outbox could not store the request (its disk or its NATS server
    /// failed), nothing was accepted: 503, UNAVAILABLE. Not in the contract's list: an addition,
    /// so that a store failure does not pass for a full outbox.
    OutboxUnavailable = "outbox-unavailable", SERVICE_UNAVAILABLE, Unavailable,
        "the outbox cannot store the request now; it was not accepted";
    /// The request is malformed (including an invalid deadline header): 400, INTERNAL (chosen
    /// here, as gRPC maps HTTP 400).
    BadRequest = "bad-request", BAD_REQUEST, Internal,
        "the request is malformed";
    /// The request body is larger than the listener allows: 413, RESOURCE_EXHAUSTED (chosen here,
    /// as gRPC answers a message over its size limit).
    BodyTooLarge = "body-too-large", PAYLOAD_TOO_LARGE, ResourceExhausted,
        "the request body is larger than allowed";
    /// The request head is larger than the listener allows: 431, RESOURCE_EXHAUSTED (chosen
    /// here, like `body-too-large`).
    HeadersTooLarge = "headers-too-large", REQUEST_HEADER_FIELDS_TOO_LARGE, ResourceExhausted,
        "the request headers are larger than allowed";
    /// The upstream sent something that is not valid HTTP: 502, INTERNAL (chosen here: a protocol
    /// error, as gRPC reports one, not a passing unavailability worth a blind retry).
    UpstreamInvalid = "upstream-invalid", BAD_GATEWAY, Internal,
        "the upstream sent an invalid response";
}

/// A string that names no [`Reason`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason {0:?}")]
pub struct UnknownReason(String);

// === impl Reason ===

impl Reason {
    /// The reason as a header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The reason a response's head says a rampart made it for (`x-rampart-error`), if one did.
    pub fn of(headers: &HeaderMap) -> Option<Reason> {
        headers.get(X_RAMPART_ERROR)?.to_str().ok()?.parse().ok()
    }

    /// Whether a rampart answering for this reason was shedding load (`overloaded`,
    /// `rate-limited`) or had run out of retries (`retry-budget-exhausted`): a caller retrying
    /// the answer would only add the load it shed, at every hop of a chain. Envoy does not retry
    /// an answer marked `x-envoy-overloaded`, for the same reason.
    pub fn forbids_retry(self) -> bool {
        matches!(
            self,
            Reason::Overloaded | Reason::RateLimited | Reason::RetryBudgetExhausted
        )
    }
}

impl Reason {
    /// The reason for an error out of a tower stack: the outermost error in the chain of sources
    /// that is a policy's refusal (`BreakerOpen`, `Elapsed`, ...), a [`Rejected`], a
    /// [`TransportError`] or a [`DeadlineError`]. `None` when there is none; the caller decides
    /// what an unknown error means.
    pub fn from_error(err: &(dyn StdError + 'static)) -> Option<Reason> {
        let mut next = Some(err);
        while let Some(err) = next {
            if let Some(reason) = Reason::from_one(err) {
                return Some(reason);
            }
            next = err.source();
        }
        None
    }

    fn from_one(err: &(dyn StdError + 'static)) -> Option<Reason> {
        if let Some(rejected) = Rejected::from_error(err) {
            return Some(Reason::from(&rejected));
        }
        if let Some(err) = err.downcast_ref::<TransportError>() {
            return Some(Reason::from(*err));
        }
        err.downcast_ref::<DeadlineError>().map(Reason::from)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL
            .iter()
            .copied()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

impl From<&Rejected> for Reason {
    fn from(rejected: &Rejected) -> Reason {
        match rejected {
            Rejected::BreakerOpen(_) => Reason::BreakerOpen,
            Rejected::Timeout(_) => Reason::Timeout,
            Rejected::DeadlineExceeded(_) => Reason::DeadlineExceeded,
            Rejected::BulkheadFull(_) | Rejected::LimitExceeded(_) => Reason::Overloaded,
            Rejected::RateLimited(_) => Reason::RateLimited,
            // A refusal added to the policies later: "overloaded" is the least wrong reading of
            // an unknown refusal to do more work.
            _ => Reason::Overloaded,
        }
    }
}

impl From<Rejected> for Reason {
    fn from(rejected: Rejected) -> Reason {
        Reason::from(&rejected)
    }
}

impl From<TransportError> for Reason {
    /// A transport error that ended the last attempt. A refused stream reads as a reset: the
    /// upstream dropped the request on an open connection.
    fn from(err: TransportError) -> Reason {
        match err {
            TransportError::ConnectFailure => Reason::UpstreamConnect,
            TransportError::Reset | TransportError::RefusedStream => Reason::UpstreamReset,
            TransportError::Timeout => Reason::Timeout,
            TransportError::Invalid => Reason::UpstreamInvalid,
        }
    }
}

impl From<&DeadlineError> for Reason {
    fn from(err: &DeadlineError) -> Reason {
        match err {
            DeadlineError::Expired => Reason::DeadlineExceeded,
            DeadlineError::Invalid { .. } => Reason::BadRequest,
        }
    }
}

impl From<DeadlineError> for Reason {
    fn from(err: DeadlineError) -> Reason {
        Reason::from(&err)
    }
}

// === rescue ===

/// The response rampart sends instead of the upstream's, for `reason`.
///
/// See the [module documentation](self) for its shape in each mode.
pub fn rescue(reason: Reason, is_grpc: bool) -> Response<Bytes> {
    rescue_with_status(reason, reason.status(), is_grpc)
}

/// Like [`rescue`], with `status` in place of the reason's own for plain HTTP: a fault's
/// `abort_status`, for one. gRPC responses are HTTP 200 whatever `status` says.
pub fn rescue_with_status(reason: Reason, status: StatusCode, is_grpc: bool) -> Response<Bytes> {
    let (status, body) = if is_grpc {
        (StatusCode::OK, Bytes::new())
    } else {
        (status, Bytes::from_static(reason.json_body().as_bytes()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if is_grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, reason.grpc_code().header_value());
        // The messages need no percent-encoding (a test holds them to it).
        headers.insert(GRPC_MESSAGE, HeaderValue::from_static(reason.message()));
    } else {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(X_RAMPART_ERROR, reason.header_value());
    response
}

/// A fault's abort: `status` for plain HTTP and `code` for gRPC (a route's `abort_status` and
/// `abort_grpc_status`), marked `fault-injected` either way.
pub fn rescue_fault(status: StatusCode, code: GrpcCode, is_grpc: bool) -> Response<Bytes> {
    let mut response = rescue_with_status(Reason::FaultInjected, status, is_grpc);
    if is_grpc {
        response
            .headers_mut()
            .insert(GRPC_STATUS, code.header_value());
    }
    response
}

/// Like [`rescue_with_status`], with `message` in place of the reason's general one: what was
/// wrong with a client's request, which the client can mend only if told. `message` is plain
/// text, without quotes, backslashes or percent signs, so that it goes into the JSON body and
/// `grpc-message` as it is.
pub fn rescue_saying(
    reason: Reason,
    status: StatusCode,
    message: &'static str,
    is_grpc: bool,
) -> Response<Bytes> {
    debug_assert!(
        !message.contains(['"', '\\']) && matches!(encode_grpc_message(message), Cow::Borrowed(_)),
        "{message:?} needs escaping"
    );
    let mut response = rescue_with_status(reason, status, is_grpc);
    if is_grpc {
        response
            .headers_mut()
            .insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    } else {
        *response.body_mut() = Bytes::from(format!(
            "{{\"error\":\"{}\",\"message\":\"{message}\"}}\n",
            reason.as_str()
        ));
    }
    response
}

/// Marks a fallback response with `x-rampart-fallback: <reason>`, the reason the fallback
/// answered.
pub fn mark_fallback<B>(response: &mut Response<B>, reason: Reason) {
    response
        .headers_mut()
        .insert(X_RAMPART_FALLBACK, reason.header_value());
}

// === grpc-message ===

/// Percent-encodes a `grpc-message` (gRPC over HTTP/2, "Responses"): every byte of the UTF-8 text
/// outside printable ASCII, and `%` itself, becomes `%XX`. Borrows when nothing needs encoding.
pub fn encode_grpc_message(message: &str) -> Cow<'_, str> {
    fn plain(b: u8) -> bool {
        (0x20..=0x7e).contains(&b) && b != b'%'
    }
    if message.bytes().all(plain) {
        return Cow::Borrowed(message);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len() * 3);
    for b in message.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// Decodes a percent-encoded `grpc-message`. As the gRPC spec asks of receivers, a `%` not followed
/// by two hex digits is kept as it is, and bytes that are not UTF-8 become U+FFFD.
pub fn decode_grpc_message(value: &[u8]) -> Cow<'_, str> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if !value.contains(&b'%') {
        return String::from_utf8_lossy(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let decoded = match value[i..] {
            [b'%', hi, lo, ..] => hex(hi).zip(hex(lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(value[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use rampart_policy::adaptive::AdaptiveLimit;
    use rampart_policy::breaker::CircuitBreaker;
    use rampart_policy::bulkhead::Bulkhead;
    use rampart_policy::error::BoxError;
    use rampart_policy::ratelimit::RateLimiter;
    use rampart_policy::timeout::error::{DeadlineExceeded, Elapsed};

    use super::*;

    // The contract's table, plus the choices made here where it says nothing (the gRPC codes of
    // bad-request, body-too-large, headers-too-large and upstream-invalid; the HTTP statuses of
    // retry-budget-exhausted and fault-injected), written out again so a change shows here.
    const CONTRACT: [(&str, u16, u8); 17] = [
        ("breaker-open", 503, 14),
        ("no-healthy-endpoint", 503, 14),
        ("timeout", 504, 4),
        ("deadline-exceeded", 504, 4),
        ("overloaded", 503, 8),
        ("rate-limited", 429, 8),
        ("upstream-connect", 502, 14),
        ("upstream-reset", 502, 14),
        ("retry-budget-exhausted", 503, 8),
        ("fault-injected", 503, 14),
        ("no-route", 404, 12),
        ("outbox-full", 503, 14),
        ("outbox-unavailable", 503, 14),
        ("bad-request", 400, 13),
        ("body-too-large", 413, 8),
        ("headers-too-large", 431, 8),
        ("upstream-invalid", 502, 13),
    ];

    #[test]
    fn every_reason_of_the_contract_and_no_other() {
        assert_eq!(Reason::ALL.len(), CONTRACT.len());
        for (reason, (token, status, code)) in Reason::ALL.iter().zip(CONTRACT) {
            assert_eq!(reason.as_str(), token);
            assert_eq!(reason.to_string(), token);
            assert_eq!(token.parse::<Reason>(), Ok(*reason));
            assert_eq!(reason.status().as_u16(), status, "{token}");
            assert_eq!(reason.grpc_code().as_u8(), code, "{token}");
        }
        assert!("Breaker-Open".parse::<Reason>().is_err());
        assert!("5xx".parse::<Reason>().is_err());
    }

    #[test]
    fn plain_http_rescue_for_every_reason() {
        for &reason in Reason::ALL {
            let response = rescue(reason, false);
            assert_eq!(response.status(), reason.status(), "{reason}");
            let headers = response.headers();
            assert_eq!(headers[X_RAMPART_ERROR], reason.as_str());
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(headers[CACHE_CONTROL], "no-store");
            assert!(!headers.contains_key(GRPC_STATUS));
            // The body is built by `concat!`: it holds valid JSON only if no message needs
            // escaping.
            assert!(!reason.message().contains(['"', '\\']), "{reason}");
            let body = std::str::from_utf8(response.body()).unwrap();
            assert_eq!(
                body,
                format!(
                    "{{\"error\":\"{}\",\"message\":\"{}\"}}\n",
                    reason.as_str(),
                    reason.message()
                )
            );
        }
    }

    #[test]
    fn grpc_rescue_is_trailers_only_for_every_reason() {
        for &reason in Reason::ALL {
            let response = rescue(reason, true);
            assert_eq!(response.status(), StatusCode::OK, "{reason}");
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], "application/grpc");
            assert_eq!(
                headers[GRPC_STATUS],
                reason.grpc_code().as_u8().to_string().as_str()
            );
            assert_eq!(headers[GRPC_MESSAGE], reason.message());
            // The message is sent as it is: it must be its own percent-encoding.
            assert!(matches!(
                encode_grpc_message(reason.message()),
                Cow::Borrowed(_)
            ));
            assert_eq!(headers[X_RAMPART_ERROR], reason.as_str());
            assert!(response.body().is_empty(), "{reason}");
            assert_eq!(headers.len(), 4, "{reason}: {headers:?}");
        }
    }

    #[test]
    fn a_rescue_may_say_what_was_wrong() {
        let details = [
            DeadlineError::Invalid {
                header: "x-rampart-deadline",
            }
            .detail(),
            DeadlineError::Invalid {
                header: "grpc-timeout",
            }
            .detail(),
        ];
        for message in details {
            let response =
                rescue_saying(Reason::BadRequest, StatusCode::BAD_REQUEST, message, false);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            assert_eq!(response.headers()[X_RAMPART_ERROR], "bad-request");
            assert_eq!(
                std::str::from_utf8(response.body()).unwrap(),
                format!("{{\"error\":\"bad-request\",\"message\":\"{message}\"}}\n")
            );
            let response =
                rescue_saying(Reason::BadRequest, StatusCode::BAD_REQUEST, message, true);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[GRPC_STATUS], "13");
            assert_eq!(response.headers()[GRPC_MESSAGE], message);
        }
        assert!(details[1].starts_with("grpc-timeout"));
    }

    #[test]
    fn a_fault_may_abort_with_its_own_status() {
        let internal = StatusCode::INTERNAL_SERVER_ERROR;
        let response = rescue_with_status(Reason::FaultInjected, internal, false);
        assert_eq!(response.status(), internal);
        assert_eq!(response.headers()[X_RAMPART_ERROR], "fault-injected");
        let response = rescue_with_status(Reason::FaultInjected, internal, true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[GRPC_STATUS], "14");
        assert_eq!(rescue(Reason::FaultInjected, false).status(), 503);
    }

    #[test]
    fn a_fault_aborts_a_grpc_call_with_its_own_code() {
        let exhausted = GrpcCode::ResourceExhausted;
        let response = rescue_fault(StatusCode::TOO_MANY_REQUESTS, exhausted, true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[GRPC_STATUS], "8");
        assert_eq!(response.headers()[X_RAMPART_ERROR], "fault-injected");
        let response = rescue_fault(StatusCode::TOO_MANY_REQUESTS, exhausted, false);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(!response.headers().contains_key(GRPC_STATUS));
    }

    #[test]
    fn fallback_responses_are_marked() {
        let mut response = Response::new(());
        mark_fallback(&mut response, Reason::Timeout);
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "timeout");
        mark_fallback(&mut response, Reason::BreakerOpen);
        assert_eq!(
            response
                .headers()
                .get_all(X_RAMPART_FALLBACK)
                .iter()
                .collect::<Vec<_>>(),
            ["breaker-open"]
        );
    }

    // Real refusals from the policies: their constructors are the policies' own.
    fn refusals() -> Vec<(Rejected, Reason)> {
        let breaker = CircuitBreaker::new();
        breaker.force_open();
        let breaker_open = breaker.try_acquire().err().unwrap();

        let bulkhead = Bulkhead::builder(1).max_wait_queue(0).build().unwrap();
        let _held = bulkhead.try_acquire().unwrap();
        let bulkhead_full = bulkhead.try_acquire().err().unwrap();

        let limiter = RateLimiter::per_second(1).burst(1).build().unwrap();
        let _ = limiter.try_acquire();
        let rate_limited = limiter.try_acquire().unwrap_err();

        let limit = AdaptiveLimit::aimd();
        let mut permits = Vec::new();
        let limit_exceeded = loop {
            match limit.try_acquire() {
                Ok(permit) => permits.push(permit),
                Err(err) => break err,
            }
            assert!(permits.len() < 100_000, "the adaptive limit never refused");
        };

        vec![
            (Rejected::from(breaker_open), Reason::BreakerOpen),
            (
                Rejected::from(Elapsed::new(Duration::from_secs(1))),
                Reason::Timeout,
            ),
            (
                Rejected::from(DeadlineExceeded::new()),
                Reason::DeadlineExceeded,
            ),
            (Rejected::from(bulkhead_full), Reason::Overloaded),
            (Rejected::from(limit_exceeded), Reason::Overloaded),
            (Rejected::from(rate_limited), Reason::RateLimited),
        ]
    }

    #[test]
    fn policy_refusals_map_to_reasons() {
        for (rejected, reason) in refusals() {
            assert_eq!(Reason::from(&rejected), reason, "{rejected:?}");
            // Boxed as a tower stack boxes it: the specific error, not `Rejected`.
            let boxed: BoxError = rejected.clone().into_box_error();
            assert_eq!(Reason::from_error(&*boxed), Some(reason), "{rejected:?}");
            let boxed: BoxError = Box::new(rejected.clone());
            assert_eq!(Reason::from_error(&*boxed), Some(reason), "{rejected:?}");
            assert_eq!(Reason::from(rejected), reason);
        }
    }

    #[test]
    fn transport_and_deadline_errors_map_to_reasons() {
        let cases = [
            (TransportError::ConnectFailure, Reason::UpstreamConnect),
            (TransportError::Reset, Reason::UpstreamReset),
            (TransportError::RefusedStream, Reason::UpstreamReset),
            (TransportError::Timeout, Reason::Timeout),
            (TransportError::Invalid, Reason::UpstreamInvalid),
        ];
        for (err, reason) in cases {
            assert_eq!(Reason::from(err), reason);
            let boxed: BoxError = Box::new(err);
            assert_eq!(Reason::from_error(&*boxed), Some(reason));
        }
        assert_eq!(
            Reason::from(DeadlineError::Expired),
            Reason::DeadlineExceeded
        );
        let invalid = DeadlineError::Invalid {
            header: "grpc-timeout",
        };
        assert_eq!(Reason::from(&invalid), Reason::BadRequest);
        let boxed: BoxError = Box::new(invalid);
        assert_eq!(Reason::from_error(&*boxed), Some(Reason::BadRequest));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("while forwarding")]
    struct Wrapper(#[source] BoxError);

    #[test]
    fn the_cause_is_found_down_the_chain() {
        let err = Wrapper(Box::new(TransportError::ConnectFailure));
        assert_eq!(Reason::from_error(&err), Some(Reason::UpstreamConnect));
        let err = Wrapper(Box::new(std::io::Error::other("boom")));
        assert_eq!(Reason::from_error(&err), None);
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert!(matches!(
            encode_grpc_message("plain text"),
            Cow::Borrowed(_)
        ));
        assert_eq!(encode_grpc_message("100%"), "100%25");
        assert_eq!(encode_grpc_message("a\nb"), "a%0Ab");
        assert_eq!(encode_grpc_message("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(encode_grpc_message("\u{7f}~ "), "%7F~ ");
        assert_eq!(decode_grpc_message(b"caf%C3%A9"), "caf\u{e9}");
        assert_eq!(decode_grpc_message(b"caf%c3%a9"), "caf\u{e9}");
        // Broken escapes are kept as they are.
        assert_eq!(decode_grpc_message(b"50%"), "50%");
        assert_eq!(decode_grpc_message(b"%zz%4"), "%zz%4");
        assert_eq!(decode_grpc_message(b"%FF"), "\u{fffd}");
    }

    proptest! {
        #[test]
        fn grpc_message_encoding_round_trips(message in any::<String>()) {
            let encoded = encode_grpc_message(&message);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            prop_assert!(HeaderValue::from_str(&encoded).is_ok());
            prop_assert_eq!(decode_grpc_message(encoded.as_bytes()), message.as_str());
        }
    }
}
