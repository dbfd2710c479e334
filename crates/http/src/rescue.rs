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
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use rampart_policy::Rejected;
use rampart_policy::adaptive::error::LimitExceeded;
use rampart_policy::breaker::error::BreakerOpen;
use rampart_policy::bulkhead::error::BulkheadFull;
use rampart_policy::ratelimit::error::RateLimited;
use rampart_policy::timeout::error::{DeadlineExceeded, Elapsed};

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
    /// The route's timeout expired: 504, DEADLINE_EXCEEDED.
    Timeout = "timeout", GATEWAY_TIMEOUT, DeadlineExceeded,
        "the upstream did not answer within the route's timeout";
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
        "the upstream connection was reset before the response was complete";
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
        if let Some(rejected) = err.downcast_ref::<Rejected>() {
            return Some(Reason::from(rejected));
        }
        if let Some(err) = err.downcast_ref::<TransportError>() {
            return Some(Reason::from(*err));
        }
        if let Some(err) = err.downcast_ref::<DeadlineError>() {
            return Some(Reason::from(err));
        }
        let reason = if err.is::<BreakerOpen>() {
            Reason::BreakerOpen
        } else if err.is::<Elapsed>() {
            Reason::Timeout
        } else if err.is::<DeadlineExceeded>() {
            Reason::DeadlineExceeded
        } else if err.is::<BulkheadFull>() || err.is::<LimitExceeded>() {
            Reason::Overloaded
        } else if err.is::<RateLimited>() {
            Reason::RateLimited
        } else {
            return None;
        };
        Some(reason)
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
