//! A route's retry settings (`[routes.retry]`), ready for the data path, and the request body
//! kept to be sent again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use rampart_config::Route;
use rampart_http::classify::is_retryable;
use rampart_http::{Attempt, RetryOn};
use rampart_policy::error::BoxError;
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

    /// The largest body kept to be sent again.
    pub(crate) fn max_replay_body(&self) -> u64 {
        self.max_replay_body
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

// === impl Replay ===

/// The body of each attempt: the client's, streamed once, or a copy kept to be sent again.
#[derive(Debug)]
pub(crate) enum Replay {
    /// Sent once, as it comes; the request cannot be retried.
    Stream(Option<RequestBody>),
    /// Read whole before the first attempt; every attempt sends it.
    Buffered(Bytes),
    /// Streamed to the first attempt and copied on the way (a gRPC call: its length is not
    /// announced, and a streaming call's client may wait for answers before it sends more, so
    /// reading it whole first could stall the call). A retry sends the copy if the body had
    /// ended by then, within `max_replay_body`; else there is no retry.
    Tee {
        first: Option<RequestBody>,
        copy: Arc<Mutex<TeeCopy>>,
    },
}

/// What a [`Replay::Tee`] copied of the body so far.
#[derive(Debug, Default)]
pub(crate) struct TeeCopy {
    bytes: BytesMut,
    whole: bool,
    /// Past `max_replay_body`, or trailers that the copy cannot carry: nothing is kept.
    given_up: bool,
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

    /// Streams `body` to the first attempt, copying up to `limit` bytes of it for a retry.
    pub(crate) fn tee(body: RequestBody, limit: u64) -> Replay {
        let copy = Arc::new(Mutex::new(TeeCopy::default()));
        let tee = Tee {
            inner: body,
            copy: copy.clone(),
            limit,
        };
        Replay::Tee {
            first: Some(tee.boxed_unsync()),
            copy,
        }
    }

    /// The body of the next attempt; `None` when the streamed body was already sent, or a teed
    /// one was not copied whole.
    pub(crate) fn next(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Stream(body) => body.take(),
            Replay::Buffered(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            Replay::Tee { first, copy } => {
                if let Some(body) = first.take() {
                    return Some(body);
                }
                let whole = {
                    let mut copy = copy.lock().unwrap_or_else(PoisonError::into_inner);
                    (copy.whole && !copy.given_up).then(|| std::mem::take(&mut copy.bytes))
                }?;
                *self = Replay::Buffered(whole.freeze());
                self.next()
            }
        }
    }
}

// === impl Tee ===

pin_project_lite::pin_project! {
    /// A request body streamed on as it comes, copied into a [`TeeCopy`] on the way.
    struct Tee {
        #[pin]
        inner: RequestBody,
        copy: Arc<Mutex<TeeCopy>>,
        limit: u64,
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // Locked only here and once by the retry, never across an await: uncontended.
        let mut copy = this.copy.lock().unwrap_or_else(PoisonError::into_inner);
        match &frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if !copy.given_up => {
                    if (copy.bytes.len() + data.len()) as u64 > *this.limit {
                        copy.given_up = true;
                        copy.bytes = BytesMut::new();
                    } else {
                        copy.bytes.extend_from_slice(data);
                    }
                }
                Some(_) => {}
                None => copy.given_up = true,
            },
            Some(Err(_)) => copy.given_up = true,
            None => copy.whole = true,
        }
        // A body that knows it has ended may never be polled again.
        if this.inner.is_end_stream() {
            copy.whole = true;
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

    // A body in two pieces, of unknown length, as a gRPC client sends one.
    fn pieces() -> RequestBody {
        Pieces(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]).boxed_unsync()
    }

    struct Pieces(Vec<Bytes>);

    impl Body for Pieces {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let next = (!self.0.is_empty()).then(|| self.0.remove(0));
            Poll::Ready(next.map(|piece| Ok(Frame::data(piece))))
        }
    }

    async fn text(body: RequestBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_teed_body_is_replayed_once_it_was_copied_whole() {
        let mut replay = Replay::tee(pieces(), 4);
        assert_eq!(text(replay.next().unwrap()).await, "abcd");
        assert_eq!(text(replay.next().unwrap()).await, "abcd");
        assert_eq!(text(replay.next().unwrap()).await, "abcd");
    }

    #[tokio::test]
    async fn a_teed_body_too_large_or_not_yet_whole_is_not_replayed() {
        let mut replay = Replay::tee(pieces(), 3);
        assert_eq!(text(replay.next().unwrap()).await, "abcd");
        assert!(replay.next().is_none());

        // The answer came before the body had ended.
        let mut replay = Replay::tee(pieces(), 4);
        let mut first = replay.next().unwrap();
        let piece = first.frame().await.unwrap().unwrap();
        assert_eq!(piece.into_data().unwrap(), "ab");
        assert!(replay.next().is_none());
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
