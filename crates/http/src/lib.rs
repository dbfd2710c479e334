//! The HTTP and gRPC knowledge of the rampart proxy, with no sockets, listeners or config files.
//!
//! The resilience policies of `rampart-policy` know calls and outcomes; this crate knows what an
//! HTTP or gRPC exchange means to them, and what the proxy must say and write back:
//!
//! - [`classify`]: one classification of responses and transport errors into an
//!   [`Outcome`](rampart_policy::Outcome) (status in the failure set, `grpc-status` in the head or
//!   the trailers), and the retry `on` tokens;
//! - [`rescue`](mod@rescue): the one place where errors become responses, with `x-rampart-error: <reason>`;
//! - [`deadline`]: the time left across hops, read from and written to `grpc-timeout` and
//!   `x-rampart-deadline`;
//! - [`headers`]: hop-by-hop headers and `x-forwarded-for`.
//!
//! One request's way through them, as the proxy goes:
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderMap, StatusCode};
//! use rampart_http::classify::{classify_response, FailureStatus};
//! use rampart_http::deadline::{incoming_deadline, set_outgoing};
//! use rampart_http::headers::{append_forwarded_for, remove_hop_by_hop, HopByHop};
//! use rampart_http::rescue::{rescue, Reason};
//! use rampart_policy::Outcome;
//! use tokio::time::Instant;
//!
//! // A plain HTTP request comes in with 100 ms left; the route allows 2 s.
//! let mut request = HeaderMap::new();
//! request.insert("x-rampart-deadline", "100".parse().unwrap());
//! request.insert("connection", "keep-alive".parse().unwrap());
//! let now = Instant::now();
//! // With no time left or a garbled header, the `Err` is the answer to send at once, and nothing
//! // is called upstream.
//! let deadline = incoming_deadline(&request, false, Duration::from_secs(2), now)
//!     .map_err(|err| rescue(Reason::from(err), false))
//!     .expect("100 ms are left");
//! assert_eq!(deadline.instant(), now + Duration::from_millis(100));
//!
//! // On its way upstream: no hop-by-hop headers, the client's address, the time left.
//! remove_hop_by_hop(&mut request, HopByHop::default());
//! append_forwarded_for(&mut request, "10.0.0.7".parse().unwrap());
//! set_outgoing(&mut request, Duration::from_millis(97), false);
//! assert_eq!(request["x-rampart-deadline"], "97");
//! assert_eq!(request["x-forwarded-for"], "10.0.0.7");
//!
//! // The upstream answers 503: a failure for the breaker.
//! let outcome = classify_response(
//!     StatusCode::SERVICE_UNAVAILABLE,
//!     &HeaderMap::new(),
//!     &FailureStatus::default(),
//!     false,
//! );
//! assert_eq!(outcome, Outcome::Failure);
//!
//! // Later the breaker refuses the call; the client is told why.
//! let response = rescue(Reason::BreakerOpen, false);
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()["x-rampart-error"], "breaker-open");
//! ```

pub mod classify;
pub mod deadline;
pub mod headers;
pub mod rescue;

pub use classify::{Attempt, FailureStatus, GrpcCode, RetryOn, TransportError};
pub use rescue::{Reason, rescue};
