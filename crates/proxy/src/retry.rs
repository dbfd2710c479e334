//! A route's retry settings (`[routes.retry]`), ready for the data path, and the request body
//! kept to be sent again.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use rampart_config::Route;
use rampart_http::classify::is_retryable;
use rampart_http::{Attempt, RetryOn};
use rampart_policy::retry::{Budget, ExponentialBackoff};

use crate::Error;
use crate::body::RequestBody;

/// The span a route's retry budget counts requests and retries over (the contract has no key for
/// it; linkerd and Finagle use 10 s too).
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// `[routes.retry]` of one route. Present only when a request may be sent more than once:
/// `attempts` above 1, or hedging (`[routes.hedge]`), which sends only what may be retried, keeps
/// the body the same way and spends the same budget.
#[derive(Debug)]
pub(crate) struct Retry {
    attempts: u32,
    backoff: ExponentialBackoff,
    on: Vec<RetryOn>,
    /// Shared by every request of the route, so that retries add a bounded share of its load.
    budget: Budget,
    methods: Vec<Method>,
    max_replay_body: u64,
}

impl Retry {
    pub(crate) fn new(route: &Route) -> Result<Option<Retry>, Error> {
        let config = &route.retry;
        if config.attempts <= 1 && route.hedge.is_none() {
            return Ok(None);
        }
        let invalid = |key: &str, message: String| Error::Invalid {
            path: format!("routes.{}.retry.{key}", route.name),
            message,
        };
        let backoff = ExponentialBackoff::try_new(config.backoff.base, config.backoff.max)
            .map_err(|err| invalid("backoff", err.to_string()))?;
        let budget = Budget::try_new(
            BUDGET_WINDOW,
            config.budget_ratio,
            config.budget_min_per_sec,
        )
        .map_err(|err| invalid("budget", err.to_string()))?;
        let on = config.on.clone();
        let methods = config
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|err| invalid("methods", err.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Retry {
            attempts: config.attempts,
            backoff,
            on,
            budget,
            methods,
            max_replay_body: config.max_replay_body.bytes(),
        }))
    }

    /// Total attempts, the first included.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The sleeps before each retry.
    pub(crate) fn backoff(&self) -> &ExponentialBackoff {
        &self.backoff
    }

    /// The route's budget.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether a request of this method may be retried at all. gRPC calls are all POSTs; whether
    /// one may be retried is said by the `on` tokens alone (`grpc-unavailable` means the server
    /// did not process it).
    pub(crate) fn allows(&self, method: &Method, grpc: bool) -> bool {
        grpc || self.methods.contains(method)
    }

    /// Whether the route's `on` tokens ask for `attempt` to be retried.
    pub(crate) fn wants(&self, attempt: &Attempt) -> bool {
        is_retryable(&self.on, attempt)
    }

    /// Whether a body this size may be buffered to be sent again: its length must be known
    /// (`content-length`, or no body at all) and within `max_replay_body`.
    pub(crate) fn can_replay(&self, body: &RequestBody) -> bool {
        body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|len| len <= self.max_replay_body)
    }
}

/// The body of each attempt: the client's, streamed once, or a copy kept to be sent again.
#[derive(Debug)]
pub(crate) enum Replay {
    /// Sent once, as it comes; the request cannot be retried.
    Stream(Option<RequestBody>),
    /// Read whole before the first attempt; every attempt sends it.
    Buffered(Bytes),
}

impl Replay {
    /// Reads `body` whole (its length is known and small: see [`Retry::can_replay`]). Trailers
    /// are dropped (a request that may be retried has none worth keeping); more data than the
    /// announced length is refused, though hyper already holds a body to its `content-length`.
    pub(crate) async fn buffer(mut body: RequestBody) -> Result<Replay, ()> {
        let length = body.size_hint().exact().unwrap_or(0);
        let mut buffer = BytesMut::with_capacity(usize::try_from(length).map_err(|_| ())?);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|_| ())?.into_data() {
                if (buffer.len() + data.len()) as u64 > length {
                    return Err(());
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(Replay::Buffered(buffer.freeze()))
    }

    /// The body of the next attempt; `None` when the streamed body was already sent.
    pub(crate) fn next(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Stream(body) => body.take(),
            Replay::Buffered(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
        }
    }
}

/// How an attempt that got a response ended, for the `on` tokens.
pub(crate) fn answered(status: StatusCode, headers: &HeaderMap, grpc: bool) -> Attempt {
    Attempt::Response {
        status,
        grpc: grpc
            .then(|| rampart_http::classify::grpc_status(headers))
            .flatten(),
    }
}

#[cfg(test)]
mod tests {
    use rampart_config::Config;
    use rampart_http::{GrpcCode, TransportError};

    use super::*;

    fn retry(section: &str) -> Option<Retry> {
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n[routes.retry]\n{section}\n\
             [upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Retry::new(&config.routes[0]).unwrap()
    }

    #[test]
    fn one_attempt_means_no_retry() {
        assert!(retry("attempts = 1").is_none());
    }

    #[test]
    fn a_hedged_route_keeps_what_replay_needs_even_without_retries() {
        let toml = "[[routes]]\nupstream = \"app\"\n[routes.retry]\nattempts = 1\n\
                    [routes.hedge]\nafter = \"50ms\"\n\
                    [upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n";
        let config = Config::from_str(toml, "test.toml").unwrap();
        let retry = Retry::new(&config.routes[0]).unwrap().unwrap();
        assert_eq!(retry.attempts(), 1);
        assert!(retry.allows(&Method::GET, false));
        assert!(!retry.allows(&Method::POST, false));
    }

    #[test]
    fn the_default_tokens_and_methods() {
        let retry = retry("").unwrap();
        assert!(retry.wants(&Attempt::Error(TransportError::ConnectFailure)));
        assert!(retry.wants(&Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!retry.wants(&Attempt::status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(retry.wants(&Attempt::grpc(GrpcCode::Unavailable)));
        assert!(retry.allows(&Method::GET, false));
        assert!(!retry.allows(&Method::POST, false));
        assert!(retry.allows(&Method::POST, true));
    }

    #[test]
    fn bodies_of_unknown_or_large_size_are_not_replayed() {
        let retry = retry("max_replay_body = \"4B\"").unwrap();
        let full = |s: &'static str| {
            Full::new(Bytes::from_static(s.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        assert!(retry.can_replay(&full("")));
        assert!(retry.can_replay(&full("1234")));
        assert!(!retry.can_replay(&full("12345")));
        // A chunked body: no length until it ends.
        assert!(!retry.can_replay(&Chunked.boxed_unsync()));
    }

    struct Chunked;

    impl Body for Chunked {
        type Data = Bytes;
        type Error = rampart_policy::error::BoxError;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
    }
}
