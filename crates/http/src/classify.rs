//! One classification of HTTP and gRPC results, and the retry `on` tokens.
//!
//! The breaker, the retry, outlier ejection and the metrics must agree on what an exchange with an
//! upstream meant, so they all read the [`Outcome`] given here. Following the contract, an exchange
//! is a failure when it never got an answer ([`TransportError`]: connect error, reset, refused
//! stream, timeout, invalid HTTP), when its status is in the upstream's [`FailureStatus`] (by
//! default any 5xx; a 4xx is an answer, not a failure), and for gRPC when its `grpc-status`, in the
//! response headers or in the trailers, is one of UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
//! UNKNOWN or RESOURCE_EXHAUSTED ([`GrpcCode::is_failure`]).
//!
//! A gRPC response usually carries its status in the trailers, after the body. Classify the head
//! with [`classify_response`] when it arrives; when it gives [`Outcome::Success`] and the body
//! ends, [`classify_trailers`] has the last word.
//!
//! Whether a failed attempt is worth another one is a separate question, answered by the route's
//! [`RetryOn`] tokens ([`is_retryable`]); when, if at all, the upstream may say in its answer
//! ([`retry_hint`]).
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use rampart_http::classify::{classify_response, classify_trailers, FailureStatus};
//! use rampart_policy::Outcome;
//!
//! let failures = FailureStatus::default(); // "5xx"
//! let head = HeaderMap::new();
//! assert_eq!(classify_response(StatusCode::NOT_FOUND, &head, &failures, false), Outcome::Success);
//! assert_eq!(classify_response(StatusCode::BAD_GATEWAY, &head, &failures, false), Outcome::Failure);
//!
//! // gRPC: the head says 200, the trailers say UNAVAILABLE.
//! assert_eq!(classify_response(StatusCode::OK, &head, &failures, true), Outcome::Success);
//! let mut trailers = HeaderMap::new();
//! trailers.insert("grpc-status", "14".parse().unwrap());
//! assert_eq!(classify_trailers(&trailers), Some(Outcome::Failure));
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use rampart_policy::Outcome;

use crate::rescue::Reason;

/// `grpc-status`: the gRPC status code, in the response headers (trailers-only responses) or in
/// the trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `grpc-message`: the percent-encoded text beside a gRPC status.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request or response is gRPC, from its `content-type`: `application/grpc`, alone or
/// followed by `+format` or `;parameters` (gRPC over HTTP/2, "Requests").
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// A gRPC status code (gRPC's `statuscodes.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the caller cancelled the call.
    Cancelled = 1,
    /// 2: an error of unknown kind.
    Unknown = 2,
    /// 3: the caller sent an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline passed before the call finished.
    DeadlineExceeded = 4,
    /// 5: a requested entity was not found.
    NotFound = 5,
    /// 6: the entity the caller tried to create exists.
    AlreadyExists = 6,
    /// 7: the caller may not do this.
    PermissionDenied = 7,
    /// 8: a resource (quota, memory, a limit) is used up.
    ResourceExhausted = 8,
    /// 9: the system is not in the state the call needs.
    FailedPrecondition = 9,
    /// 10: the call was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// 11: an argument is past the valid range.
    OutOfRange = 11,
    /// 12: the method is not implemented or not supported.
    Unimplemented = 12,
    /// 13: an invariant of the server is broken.
    Internal = 13,
    /// 14: the service is unavailable for now; retrying may help.
    Unavailable = 14,
    /// 15: data was lost or corrupted.
    DataLoss = 15,
    /// 16: the caller has no valid credentials.
    Unauthenticated = 16,
}

// === impl GrpcCode ===

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    // Decimal forms for header values, indexed by code, so writing one allocates nothing.
    const DECIMAL: [&'static str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];

    /// The code numbered `code`, if there is one.
    pub fn from_u32(code: u32) -> Option<GrpcCode> {
        usize::try_from(code)
            .ok()
            .and_then(|i| GrpcCode::ALL.get(i))
            .copied()
    }

    /// The code's number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parses a `grpc-status` value: ASCII digits naming a known code. Leading zeros are allowed;
    /// anything else, signs and spaces included, is `None`.
    pub fn parse(value: &[u8]) -> Option<GrpcCode> {
        // Three digits are plenty for any code; more could only overflow.
        if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        GrpcCode::from_u32(n)
    }

    /// The code's name in config tokens, lower case with dashes: `unavailable`,
    /// `deadline-exceeded` (the retry token is `grpc-` and this).
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "ok",
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::InvalidArgument => "invalid-argument",
            GrpcCode::DeadlineExceeded => "deadline-exceeded",
            GrpcCode::NotFound => "not-found",
            GrpcCode::AlreadyExists => "already-exists",
            GrpcCode::PermissionDenied => "permission-denied",
            GrpcCode::ResourceExhausted => "resource-exhausted",
            GrpcCode::FailedPrecondition => "failed-precondition",
            GrpcCode::Aborted => "aborted",
            GrpcCode::OutOfRange => "out-of-range",
            GrpcCode::Unimplemented => "unimplemented",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
            GrpcCode::DataLoss => "data-loss",
            GrpcCode::Unauthenticated => "unauthenticated",
        }
    }

    /// The code whose [`name`](GrpcCode::name) is `name`.
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        GrpcCode::ALL.into_iter().find(|code| code.name() == name)
    }

    /// The code as a `grpc-status` header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(GrpcCode::DECIMAL[self as usize])
    }

    /// Whether this code counts against the upstream that sent it: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, INTERNAL, UNKNOWN and RESOURCE_EXHAUSTED. The others are answers about
    /// the request (NOT_FOUND, INVALID_ARGUMENT, ...), like a 4xx.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            GrpcCode::Unavailable
                | GrpcCode::DeadlineExceeded
                | GrpcCode::Internal
                | GrpcCode::Unknown
                | GrpcCode::ResourceExhausted
        )
    }

    /// The HTTP status that says the same, as gRPC's HTTP mapping gives it (grpc-gateway's
    /// `HTTPStatusFromCode`): OK 200, INVALID_ARGUMENT 400, NOT_FOUND 404, RESOURCE_EXHAUSTED
    /// 429, UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL, UNKNOWN and
    /// DATA_LOSS 500, ...
    pub fn http_status(self) -> StatusCode {
        match self {
            GrpcCode::Ok => StatusCode::OK,
            GrpcCode::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
            GrpcCode::Unknown | GrpcCode::Internal | GrpcCode::DataLoss => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            GrpcCode::InvalidArgument | GrpcCode::FailedPrecondition | GrpcCode::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            GrpcCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            GrpcCode::NotFound => StatusCode::NOT_FOUND,
            GrpcCode::AlreadyExists | GrpcCode::Aborted => StatusCode::CONFLICT,
            GrpcCode::PermissionDenied => StatusCode::FORBIDDEN,
            GrpcCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            GrpcCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// The outcome of a call that ended with this code.
    pub fn outcome(self) -> Outcome {
        if self.is_failure() {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads the `grpc-status` of a response head or of trailers.
///
/// `None` when there is none. A value that names no code reads as [`GrpcCode::Unknown`], as gRPC
/// clients read it, so a garbled status never passes for a success.
pub fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    headers
        .get(GRPC_STATUS)
        .map(|value| GrpcCode::parse(value.as_bytes()).unwrap_or(GrpcCode::Unknown))
}

// === FailureStatus ===

/// Which HTTP statuses count as failures of the upstream (`failure_status`).
///
/// A set of the `5xx` class and exact codes; the default is the `5xx` class. Checking a status is
/// one bit test, with no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FailureStatus {
    // One bit per status 0..1024 (`StatusCode` is 100..=999).
    bits: [u64; 16],
}

impl FailureStatus {
    /// No status is a failure (only transport errors and gRPC codes are).
    pub const fn none() -> FailureStatus {
        FailureStatus { bits: [0; 16] }
    }

    /// Adds the whole `5xx` class.
    pub const fn with_5xx(mut self) -> FailureStatus {
        let mut code = 500;
        while code < 600 {
            self.bits[code / 64] |= 1 << (code % 64);
            code += 1;
        }
        self
    }

    /// Adds one exact status.
    pub fn with_status(mut self, status: StatusCode) -> FailureStatus {
        let code = usize::from(status.as_u16());
        self.bits[code / 64] |= 1 << (code % 64);
        self
    }

    /// Whether `status` counts as a failure.
    #[inline]
    pub fn contains(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.bits[code / 64] & (1 << (code % 64)) != 0
    }
}

impl Default for FailureStatus {
    /// `["5xx"]`.
    fn default() -> Self {
        FailureStatus::none().with_5xx()
    }
}

impl fmt::Debug for FailureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((100..1000u16).filter(|code| {
                StatusCode::from_u16(*code).is_ok_and(|status| self.contains(status))
            }))
            .finish()
    }
}

// === classification ===

/// Classifies a response head.
///
/// A status in `failures` is a failure. For gRPC (`is_grpc`), so is a failing `grpc-status` in the
/// head (a trailers-only response); with no `grpc-status` in the head the status comes in the
/// trailers, and the head alone is a success until [`classify_trailers`] says otherwise. A
/// refusal a rampart further down made (`x-rampart-error`) is judged by its reason's HTTP status,
/// as it is over HTTP: its rate limit (RESOURCE_EXHAUSTED, HTTP's 429) is no failure of the
/// endpoint, where counted as one it would open this side's breaker on the calls past the limit,
/// and cut off every call for the open period.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    failures: &FailureStatus,
    is_grpc: bool,
) -> Outcome {
    if failures.contains(status) {
        return Outcome::Failure;
    }
    if is_grpc && let Some(code) = grpc_status(headers) {
        if code.is_failure()
            && let Some(reason) = Reason::of(headers)
        {
            return match failures.contains(reason.status()) {
                true => Outcome::Failure,
                false => Outcome::Success,
            };
        }
        return code.outcome();
    }
    Outcome::Success
}

/// [`classify_response`] of a response's [`Parts`].
pub fn classify_parts(parts: &Parts, failures: &FailureStatus, is_grpc: bool) -> Outcome {
    classify_response(parts.status, &parts.headers, failures, is_grpc)
}

/// Classifies the trailers that ended a gRPC response body, from their `grpc-status`.
///
/// `None` when they carry none. A gRPC response that ends with no `grpc-status` at all (neither in
/// its head nor in trailers) broke the protocol; gRPC clients report it as an error, so the caller
/// should count it as a failure.
pub fn classify_trailers(trailers: &HeaderMap) -> Option<Outcome> {
    grpc_status(trailers).map(GrpcCode::outcome)
}

/// Why an exchange with an upstream got no HTTP answer. Every kind is a failure of the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TransportError {
    /// The connection could not be made (refused, unreachable, connect timeout).
    #[error("could not connect to the upstream")]
    ConnectFailure,
    /// The connection was reset or closed before the response was complete.
    #[error("the upstream connection was reset")]
    Reset,
    /// The HTTP/2 stream was refused (`REFUSED_STREAM`): the upstream did not process the request.
    #[error("the upstream refused the stream")]
    RefusedStream,
    /// The per-try timeout expired before the upstream answered.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The upstream sent something that is not valid HTTP.
    #[error("the upstream sent an invalid response")]
    Invalid,
}

impl TransportError {
    /// The outcome: always [`Outcome::Failure`].
    pub fn outcome(self) -> Outcome {
        Outcome::Failure
    }

    /// The kind of an I/O error met while connecting (`connecting`) or while exchanging on an
    /// open connection.
    ///
    /// While connecting, every error is a connect failure except a timeout. On an open connection,
    /// a timeout is a timeout, invalid data is [`TransportError::Invalid`], and the rest (reset,
    /// aborted, broken pipe, early end of stream, ...) is a reset.
    pub fn from_io(err: &io::Error, connecting: bool) -> TransportError {
        match (err.kind(), connecting) {
            (io::ErrorKind::TimedOut, _) => TransportError::Timeout,
            (_, true) => TransportError::ConnectFailure,
            (io::ErrorKind::InvalidData, false) => TransportError::Invalid,
            (_, false) => TransportError::Reset,
        }
    }
}

/// How one attempt at an upstream ended, as far as retry and classification care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The upstream answered.
    Response {
        /// The HTTP status.
        status: StatusCode,
        /// The gRPC status, when the call is gRPC and it is known (trailers-only response, or the
        /// trailers arrived).
        grpc: Option<GrpcCode>,
    },
    /// No answer came.
    Error(TransportError),
}

impl Attempt {
    /// An HTTP answer with this status.
    pub fn status(status: StatusCode) -> Attempt {
        Attempt::Response { status, grpc: None }
    }

    /// A gRPC answer with HTTP 200 and this gRPC status.
    pub fn grpc(code: GrpcCode) -> Attempt {
        Attempt::Response {
            status: StatusCode::OK,
            grpc: Some(code),
        }
    }

    /// Classifies the attempt, like [`classify_response`] and [`classify_trailers`] together.
    pub fn outcome(&self, failures: &FailureStatus) -> Outcome {
        match *self {
            Attempt::Response { status, .. } if failures.contains(status) => Outcome::Failure,
            Attempt::Response {
                grpc: Some(code), ..
            } => code.outcome(),
            Attempt::Response { grpc: None, .. } => Outcome::Success,
            Attempt::Error(err) => err.outcome(),
        }
    }
}

impl From<TransportError> for Attempt {
    fn from(err: TransportError) -> Attempt {
        Attempt::Error(err)
    }
}

// === RetryOn ===

/// One token of a route's retry `on` list: what makes an attempt worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// `connect-failure`.
    ConnectFailure,
    /// `reset`.
    Reset,
    /// `refused-stream`.
    RefusedStream,
    /// `timeout`: a per-try timeout expired, or the upstream answered 504.
    Timeout,
    /// `5xx`: any 5xx status.
    Status5xx,
    /// A 3-digit status such as `503` (100 to 599).
    Status(StatusCode),
    /// `grpc-<code>` such as `grpc-unavailable` (never `grpc-ok`).
    Grpc(GrpcCode),
}

/// A retry `on` token that names nothing retryable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown retry token {token:?}: expected connect-failure, reset, refused-stream, timeout, 5xx, \
     a status from 100 to 599, or grpc-<code> (grpc-unavailable, grpc-deadline-exceeded, ...)"
)]
pub struct InvalidRetryOn {
    token: String,
}

impl RetryOn {
    /// Whether this token asks for `attempt` to be retried.
    pub fn matches(self, attempt: &Attempt) -> bool {
        match (self, *attempt) {
            (RetryOn::ConnectFailure, Attempt::Error(TransportError::ConnectFailure))
            | (RetryOn::Reset, Attempt::Error(TransportError::Reset))
            | (RetryOn::RefusedStream, Attempt::Error(TransportError::RefusedStream))
            | (RetryOn::Timeout, Attempt::Error(TransportError::Timeout)) => true,
            // The contract: "timeout" also covers a gateway's own timeout one hop further.
            (RetryOn::Timeout, Attempt::Response { status, .. }) => {
                status == StatusCode::GATEWAY_TIMEOUT
            }
            (RetryOn::Status5xx, Attempt::Response { status, .. }) => status.is_server_error(),
            (RetryOn::Status(wanted), Attempt::Response { status, .. }) => status == wanted,
            (RetryOn::Grpc(wanted), Attempt::Response { grpc, .. }) => grpc == Some(wanted),
            _ => false,
        }
    }
}

impl FromStr for RetryOn {
    type Err = InvalidRetryOn;

    fn from_str(token: &str) -> Result<RetryOn, InvalidRetryOn> {
        let invalid = || InvalidRetryOn {
            token: token.to_owned(),
        };
        Ok(match token {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "refused-stream" => RetryOn::RefusedStream,
            "timeout" => RetryOn::Timeout,
            "5xx" => RetryOn::Status5xx,
            _ if token.len() == 3 && token.bytes().all(|b| b.is_ascii_digit()) => {
                match token.parse::<u16>() {
                    Ok(code @ 100..=599) => {
                        RetryOn::Status(StatusCode::from_u16(code).map_err(|_| invalid())?)
                    }
                    _ => return Err(invalid()),
                }
            }
            _ => match token.strip_prefix("grpc-").and_then(GrpcCode::from_name) {
                Some(GrpcCode::Ok) | None => return Err(invalid()),
                Some(code) => RetryOn::Grpc(code),
            },
        })
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::RefusedStream => f.write_str("refused-stream"),
            RetryOn::Timeout => f.write_str("timeout"),
            RetryOn::Status5xx => f.write_str("5xx"),
            RetryOn::Status(status) => write!(f, "{}", status.as_u16()),
            RetryOn::Grpc(code) => write!(f, "grpc-{}", code.name()),
        }
    }
}

/// Whether any token of `on` asks for `attempt` to be retried.
pub fn is_retryable(on: &[RetryOn], attempt: &Attempt) -> bool {
    on.iter().any(|token| token.matches(attempt))
}

/// The gRPC server pushback header (gRFC A6): milliseconds before a retry, or no retry at all.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// What an upstream's answer says about trying it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// Nothing: the retry policy decides alone.
    None,
    /// Not before this long.
    After(Duration),
    /// Not at all (a gRPC pushback that is negative or not a number).
    Never,
}

/// What the response head `headers` says about a retry: `Retry-After` in seconds (the HTTP-date
/// form, and any other value, is ignored), or for gRPC `grpc-retry-pushback-ms` (a non-negative
/// count of milliseconds; anything else means do not retry, as gRFC A6 says). A rampart further
/// down that shed the request or ran out of retries says not to ([`Reason::forbids_retry`]).
pub fn retry_hint(headers: &HeaderMap, is_grpc: bool) -> RetryHint {
    if Reason::of(headers).is_some_and(Reason::forbids_retry) {
        return RetryHint::Never;
    }
    fn number(value: &HeaderValue) -> Option<u64> {
        let text = value.to_str().ok()?.trim();
        // `u64::from_str` takes a leading `+`, which neither header allows.
        if text.starts_with('+') {
            return None;
        }
        text.parse().ok()
    }
    if is_grpc && let Some(value) = headers.get(GRPC_RETRY_PUSHBACK_MS) {
        return number(value).map_or(RetryHint::Never, |millis| {
            RetryHint::After(Duration::from_millis(millis))
        });
    }
    match headers.get(http::header::RETRY_AFTER).and_then(number) {
        Some(seconds) => RetryHint::After(Duration::from_secs(seconds)),
        None => RetryHint::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints_are_read_from_retry_after_and_the_grpc_pushback() {
        let hint = |pairs: &[(&'static str, &'static str)], grpc: bool| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, HeaderValue::from_static(value));
            }
            retry_hint(&headers, grpc)
        };
        let secs = |n| RetryHint::After(Duration::from_secs(n));
        assert_eq!(hint(&[], false), RetryHint::None);
        assert_eq!(hint(&[("retry-after", "120")], false), secs(120));
        assert_eq!(hint(&[("retry-after", " 0 ")], false), secs(0));
        for ignored in ["Fri, 31 Dec 1999 23:59:59 GMT", "-1", "+5", "1.5", ""] {
            assert_eq!(hint(&[("retry-after", ignored)], false), RetryHint::None);
        }
        let pushback = |value| hint(&[("grpc-retry-pushback-ms", value)], true);
        assert_eq!(
            pushback("250"),
            RetryHint::After(Duration::from_millis(250))
        );
        for never in ["-1", "soon", "+5", ""] {
            assert_eq!(pushback(never), RetryHint::Never, "{never:?}");
        }
        // The pushback is gRPC's: a plain HTTP answer's is not read, and it wins over
        // `Retry-After` in a gRPC one.
        assert_eq!(
            hint(&[("grpc-retry-pushback-ms", "-1")], false),
            RetryHint::None
        );
        let both = [("retry-after", "9"), ("grpc-retry-pushback-ms", "5")];
        assert_eq!(
            hint(&both, true),
            RetryHint::After(Duration::from_millis(5))
        );
        assert_eq!(hint(&[("retry-after", "9")], true), secs(9));
    }

    const FAILING: [GrpcCode; 5] = [
        GrpcCode::Unavailable,
        GrpcCode::DeadlineExceeded,
        GrpcCode::Internal,
        GrpcCode::Unknown,
        GrpcCode::ResourceExhausted,
    ];

    fn with_grpc_status(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static(value));
        headers
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn grpc_codes_are_numbered_as_the_spec() {
        assert_eq!(GrpcCode::ALL.len(), 17);
        for (n, code) in GrpcCode::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(code.as_u8()), n);
            assert_eq!(GrpcCode::from_u32(n as u32), Some(code));
            assert_eq!(code.header_value(), n.to_string().as_str());
            assert_eq!(GrpcCode::parse(n.to_string().as_bytes()), Some(code));
        }
        assert_eq!(GrpcCode::Unavailable.as_u8(), 14);
        assert_eq!(GrpcCode::DeadlineExceeded.as_u8(), 4);
        assert_eq!(GrpcCode::ResourceExhausted.as_u8(), 8);
        assert_eq!(GrpcCode::Unimplemented.as_u8(), 12);
        assert_eq!(GrpcCode::from_u32(17), None);
    }

    #[test]
    fn grpc_status_values_parse_strictly() {
        assert_eq!(GrpcCode::parse(b"014"), Some(GrpcCode::Unavailable));
        for bad in [
            &b""[..],
            b"17",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x1",
            b"0014",
            b"UNAVAILABLE",
        ] {
            assert_eq!(
                GrpcCode::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn grpc_code_names_are_the_config_tokens() {
        assert_eq!(GrpcCode::Unavailable.name(), "unavailable");
        assert_eq!(GrpcCode::DeadlineExceeded.name(), "deadline-exceeded");
        assert_eq!(
            GrpcCode::ResourceExhausted.to_string(),
            "resource-exhausted"
        );
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::from_name(code.name()), Some(code));
        }
        assert_eq!(GrpcCode::from_name("UNAVAILABLE"), None);
        assert_eq!(GrpcCode::from_name("deadline_exceeded"), None);
    }

    #[test]
    fn exactly_five_grpc_codes_are_failures() {
        for code in GrpcCode::ALL {
            assert_eq!(code.is_failure(), FAILING.contains(&code), "{code}");
        }
    }

    #[test]
    fn each_grpc_code_in_the_head_classifies_the_response() {
        let failures = FailureStatus::default();
        for code in GrpcCode::ALL {
            let mut head = HeaderMap::new();
            head.insert(GRPC_STATUS, code.header_value());
            let expected = if FAILING.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(
                classify_response(StatusCode::OK, &head, &failures, true),
                expected,
                "{code}"
            );
            // A plain HTTP response's grpc-status means nothing.
            assert_eq!(
                classify_response(StatusCode::OK, &head, &failures, false),
                Outcome::Success,
                "{code}"
            );
        }
    }

    #[test]
    fn each_grpc_code_in_the_trailers_classifies_the_response() {
        for code in GrpcCode::ALL {
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, code.header_value());
            let expected = if FAILING.contains(&code) {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(classify_trailers(&trailers), Some(expected), "{code}");
        }
        assert_eq!(classify_trailers(&HeaderMap::new()), None);
    }

    #[test]
    fn a_refusal_of_a_rampart_further_down_is_judged_by_its_http_status() {
        let failures = FailureStatus::default();
        let refused = |code: &'static str, reason: Option<&'static str>| {
            let mut headers = with_grpc_status(code);
            if let Some(reason) = reason {
                headers.insert("x-rampart-error", HeaderValue::from_static(reason));
            }
            classify_response(StatusCode::OK, &headers, &failures, true)
        };
        // A rate limit there is a 429 over HTTP: no failure of the endpoint.
        assert_eq!(refused("8", Some("rate-limited")), Outcome::Success);
        assert_eq!(refused("8", None), Outcome::Failure, "the server's own");
        // Shedding load, a timeout, an unreachable service: 5xx, failures as over HTTP.
        assert_eq!(refused("8", Some("overloaded")), Outcome::Failure);
        assert_eq!(refused("4", Some("timeout")), Outcome::Failure);
        assert_eq!(refused("14", Some("upstream-connect")), Outcome::Failure);
        // A reason no rampart gives is no reason: the grpc-status decides.
        assert_eq!(refused("8", Some("tired")), Outcome::Failure);
        // An answer that fails nothing is not turned into a failure by a header.
        assert_eq!(refused("5", Some("overloaded")), Outcome::Success);
    }

    #[test]
    fn an_answer_a_rampart_further_down_shed_or_gave_up_on_is_not_retried() {
        for (reason, grpc) in [
            ("overloaded", false),
            ("rate-limited", true),
            ("retry-budget-exhausted", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-rampart-error", HeaderValue::from_static(reason));
            headers.insert("retry-after", HeaderValue::from_static("1"));
            assert_eq!(retry_hint(&headers, grpc), RetryHint::Never, "{reason}");
        }
        // Another replica may well answer where this one could not reach its service.
        for reason in [
            "upstream-connect",
            "breaker-open",
            "timeout",
            "fault-injected",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-rampart-error", HeaderValue::from_static(reason));
            assert_eq!(retry_hint(&headers, false), RetryHint::None, "{reason}");
        }
    }

    #[test]
    fn a_garbled_grpc_status_is_unknown_so_a_failure() {
        for value in ["", "17", "abc", "-1"] {
            let headers = with_grpc_status(value);
            assert_eq!(grpc_status(&headers), Some(GrpcCode::Unknown), "{value:?}");
            assert_eq!(classify_trailers(&headers), Some(Outcome::Failure));
            assert_eq!(
                classify_response(StatusCode::OK, &headers, &FailureStatus::default(), true),
                Outcome::Failure
            );
        }
    }

    #[test]
    fn a_grpc_head_without_status_waits_for_the_trailers() {
        assert_eq!(
            classify_response(
                StatusCode::OK,
                &HeaderMap::new(),
                &FailureStatus::default(),
                true
            ),
            Outcome::Success
        );
    }

    #[test]
    fn failure_statuses_decide_for_http() {
        let failures = FailureStatus::default();
        let empty = HeaderMap::new();
        for code in [500, 502, 503, 504, 599] {
            assert_eq!(
                classify_response(status(code), &empty, &failures, false),
                Outcome::Failure,
                "{code}"
            );
        }
        for code in [200, 204, 301, 400, 404, 429, 499, 600, 999] {
            assert_eq!(
                classify_response(status(code), &empty, &failures, false),
                Outcome::Success,
                "{code}"
            );
        }
    }

    #[test]
    fn exact_failure_statuses() {
        let failures = FailureStatus::none()
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_status(StatusCode::TOO_MANY_REQUESTS);
        assert!(failures.contains(StatusCode::SERVICE_UNAVAILABLE));
        assert!(failures.contains(StatusCode::TOO_MANY_REQUESTS));
        assert!(!failures.contains(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!failures.contains(StatusCode::BAD_GATEWAY));
        assert!(!FailureStatus::none().contains(StatusCode::INTERNAL_SERVER_ERROR));
        let both = FailureStatus::none().with_5xx().with_status(status(999));
        assert!(both.contains(status(999)) && both.contains(status(500)));
        assert_eq!(format!("{:?}", failures), "{429, 503}");
    }

    #[test]
    fn a_failure_status_fails_a_grpc_response_whatever_its_grpc_status() {
        let head = with_grpc_status("0");
        let outcome = classify_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &head,
            &FailureStatus::default(),
            true,
        );
        assert_eq!(outcome, Outcome::Failure);
        let parts = http::Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(
            classify_parts(&parts, &FailureStatus::default(), true),
            Outcome::Failure
        );
        assert_eq!(
            classify_parts(&parts, &FailureStatus::none(), true),
            Outcome::Success
        );
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/gr", false),
        ] {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
    }

    #[test]
    fn transport_errors_are_failures() {
        for err in [
            TransportError::ConnectFailure,
            TransportError::Reset,
            TransportError::RefusedStream,
            TransportError::Timeout,
            TransportError::Invalid,
        ] {
            assert_eq!(err.outcome(), Outcome::Failure);
            assert_eq!(
                Attempt::Error(err).outcome(&FailureStatus::none()),
                Outcome::Failure
            );
        }
    }

    #[test]
    fn io_errors_map_to_transport_errors() {
        use io::ErrorKind::*;
        let kind = |k: io::ErrorKind, connecting| TransportError::from_io(&k.into(), connecting);
        assert_eq!(
            kind(ConnectionRefused, true),
            TransportError::ConnectFailure
        );
        assert_eq!(kind(ConnectionReset, true), TransportError::ConnectFailure);
        assert_eq!(kind(TimedOut, true), TransportError::Timeout);
        assert_eq!(kind(TimedOut, false), TransportError::Timeout);
        assert_eq!(kind(ConnectionReset, false), TransportError::Reset);
        assert_eq!(kind(BrokenPipe, false), TransportError::Reset);
        assert_eq!(kind(UnexpectedEof, false), TransportError::Reset);
        assert_eq!(kind(InvalidData, false), TransportError::Invalid);
    }

    #[test]
    fn attempts_classify_like_responses() {
        let failures = FailureStatus::default();
        assert_eq!(
            Attempt::status(StatusCode::NOT_FOUND).outcome(&failures),
            Outcome::Success
        );
        assert_eq!(
            Attempt::status(StatusCode::BAD_GATEWAY).outcome(&failures),
            Outcome::Failure
        );
        assert_eq!(
            Attempt::grpc(GrpcCode::NotFound).outcome(&failures),
            Outcome::Success
        );
        assert_eq!(
            Attempt::grpc(GrpcCode::Unavailable).outcome(&failures),
            Outcome::Failure
        );
    }

    // === retry tokens ===

    fn tokens(list: &[&str]) -> Vec<RetryOn> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn retry_tokens_parse_and_print_back() {
        let all = [
            ("connect-failure", RetryOn::ConnectFailure),
            ("reset", RetryOn::Reset),
            ("refused-stream", RetryOn::RefusedStream),
            ("timeout", RetryOn::Timeout),
            ("5xx", RetryOn::Status5xx),
            ("503", RetryOn::Status(StatusCode::SERVICE_UNAVAILABLE)),
            ("100", RetryOn::Status(StatusCode::CONTINUE)),
            ("599", RetryOn::Status(status(599))),
            ("grpc-unavailable", RetryOn::Grpc(GrpcCode::Unavailable)),
            (
                "grpc-deadline-exceeded",
                RetryOn::Grpc(GrpcCode::DeadlineExceeded),
            ),
        ];
        for (text, token) in all {
            assert_eq!(text.parse::<RetryOn>(), Ok(token), "{text}");
            assert_eq!(token.to_string(), text);
        }
        for code in GrpcCode::ALL.into_iter().skip(1) {
            let text = format!("grpc-{}", code.name());
            assert_eq!(text.parse::<RetryOn>(), Ok(RetryOn::Grpc(code)));
        }
    }

    #[test]
    fn unknown_retry_tokens_are_refused() {
        for bad in [
            "",
            "grpc-ok",
            "grpc-",
            "grpc-14",
            "grpc-UNAVAILABLE",
            "600",
            "099",
            "5003",
            "50",
            "5XX",
            "4xx",
            "Timeout",
            " reset",
            "connect_failure",
        ] {
            let err = bad.parse::<RetryOn>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad}");
        }
    }

    #[test]
    fn transport_tokens_match_their_error_only() {
        let pairs = [
            (RetryOn::ConnectFailure, TransportError::ConnectFailure),
            (RetryOn::Reset, TransportError::Reset),
            (RetryOn::RefusedStream, TransportError::RefusedStream),
            (RetryOn::Timeout, TransportError::Timeout),
        ];
        for (token, matching) in pairs {
            for (_, err) in pairs {
                assert_eq!(
                    token.matches(&Attempt::Error(err)),
                    err == matching,
                    "{token} {err:?}"
                );
            }
            assert!(!token.matches(&Attempt::Error(TransportError::Invalid)));
            assert!(!token.matches(&Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        }
    }

    #[test]
    fn timeout_also_matches_504() {
        assert!(RetryOn::Timeout.matches(&Attempt::status(StatusCode::GATEWAY_TIMEOUT)));
        assert!(!RetryOn::Timeout.matches(&Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!RetryOn::Timeout.matches(&Attempt::status(StatusCode::REQUEST_TIMEOUT)));
        assert!(!RetryOn::Timeout.matches(&Attempt::grpc(GrpcCode::DeadlineExceeded)));
    }

    #[test]
    fn status_tokens_match_statuses() {
        for code in [500, 502, 503, 504, 599] {
            assert!(
                RetryOn::Status5xx.matches(&Attempt::status(status(code))),
                "{code}"
            );
        }
        for code in [200, 404, 429, 499] {
            assert!(
                !RetryOn::Status5xx.matches(&Attempt::status(status(code))),
                "{code}"
            );
        }
        assert!(!RetryOn::Status5xx.matches(&Attempt::Error(TransportError::Reset)));
        let exact = RetryOn::Status(StatusCode::SERVICE_UNAVAILABLE);
        assert!(exact.matches(&Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!exact.matches(&Attempt::status(StatusCode::BAD_GATEWAY)));
        let too_many = RetryOn::Status(StatusCode::TOO_MANY_REQUESTS);
        assert!(too_many.matches(&Attempt::status(StatusCode::TOO_MANY_REQUESTS)));
    }

    #[test]
    fn grpc_tokens_match_grpc_codes() {
        let token = RetryOn::Grpc(GrpcCode::Unavailable);
        assert!(token.matches(&Attempt::grpc(GrpcCode::Unavailable)));
        assert!(!token.matches(&Attempt::grpc(GrpcCode::Internal)));
        // An HTTP 503 is not a gRPC UNAVAILABLE: the tokens say what they mean.
        assert!(!token.matches(&Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!token.matches(&Attempt::Error(TransportError::Reset)));
    }

    #[test]
    fn the_contract_sample_list_retries_what_it_names() {
        let on = tokens(&[
            "connect-failure",
            "reset",
            "refused-stream",
            "timeout",
            "502",
            "503",
            "504",
            "grpc-unavailable",
        ]);
        for yes in [
            Attempt::Error(TransportError::ConnectFailure),
            Attempt::Error(TransportError::Reset),
            Attempt::Error(TransportError::RefusedStream),
            Attempt::Error(TransportError::Timeout),
            Attempt::status(StatusCode::BAD_GATEWAY),
            Attempt::status(StatusCode::SERVICE_UNAVAILABLE),
            Attempt::status(StatusCode::GATEWAY_TIMEOUT),
            Attempt::grpc(GrpcCode::Unavailable),
        ] {
            assert!(is_retryable(&on, &yes), "{yes:?}");
        }
        for no in [
            Attempt::Error(TransportError::Invalid),
            Attempt::status(StatusCode::OK),
            Attempt::status(StatusCode::INTERNAL_SERVER_ERROR),
            Attempt::status(StatusCode::NOT_FOUND),
            Attempt::grpc(GrpcCode::Internal),
            Attempt::grpc(GrpcCode::Ok),
        ] {
            assert!(!is_retryable(&on, &no), "{no:?}");
        }
        assert!(!is_retryable(&[], &Attempt::Error(TransportError::Reset)));
    }
}
