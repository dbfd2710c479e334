//! A route's retry settings (`[routes.retry]`), ready for the data path, and the request body
//! kept to be sent again.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::UPGRADE;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, SizeHint};
use rampart_config::Route;
use rampart_http::classify::is_retryable;
use rampart_http::{Attempt, RetryOn, TransportError};
use rampart_policy::error::BoxError;
use rampart_policy::retry::{Budget, ExponentialBackoff};

use crate::body::RequestBody;
use crate::{Error, lock};

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
        let backoff = ExponentialBackoff::new(config.backoff.base, config.backoff.max)
            .map_err(|err| invalid("backoff", err.to_string()))?;
        let budget = Budget::new(
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

    /// What a request may be retried for, if anything. A method of `methods` may be retried
    /// for any failure `on` names; gRPC calls are all POSTs, and whether one may be retried is
    /// said by the `on` tokens alone (`grpc-unavailable` means the server did not process it).
    /// Any other method only for a failure that left it unsent, which no method makes unsafe to
    /// send again, as Finagle requeues what it could not write: during a redeploy, a POST whose
    /// connection was refused goes to another endpoint instead of failing. An upgrade (a
    /// WebSocket handshake, which still carries `Upgrade` on its way upstream) is never retried:
    /// once the upstream agrees, the connection is no longer HTTP.
    pub(crate) fn scope(&self, request: &Parts, grpc: bool) -> Option<Scope> {
        if request.headers.contains_key(UPGRADE) {
            None
        } else if grpc || self.methods.contains(&request.method) {
            Some(Scope::Any)
        } else {
            Some(Scope::Unsent)
        }
    }

    /// Whether the route's `on` tokens ask for `attempt` to be retried, and a request retried
    /// for `scope` may be.
    pub(crate) fn wants(&self, attempt: &Attempt, scope: Scope) -> bool {
        let unsent = matches!(
            attempt,
            Attempt::Error(TransportError::ConnectFailure | TransportError::RefusedStream)
        );
        (scope == Scope::Any || unsent) && is_retryable(&self.on, attempt)
    }

    /// Whether a request carrying `body` may be retried for its size: a body of known length
    /// must fit `max_replay_body`; a chunked one may, and is copied as it streams until it
    /// turns out not to ([`Replay`]).
    pub(crate) fn can_replay(&self, body: &RequestBody) -> bool {
        body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_none_or(|len| len <= self.max_replay_body)
    }

    /// The most of a request body kept to be sent again.
    pub(crate) fn max_replay_body(&self) -> u64 {
        self.max_replay_body
    }
}

/// The body of each attempt: the client's, sent once, or sent while a copy is kept for the
/// attempts after it.
#[derive(Debug)]
pub(crate) enum Replay {
    /// Sent once, as it comes; the request cannot be retried.
    Once(Option<RequestBody>),
    /// No body at all: every attempt sends none.
    Empty(Option<RequestBody>),
    /// Streamed to the first attempt while its pieces are copied aside, up to a cap; each later
    /// attempt sends the copy, then whatever of the client's body no attempt has read yet.
    Recorded {
        recording: Arc<Recording>,
        /// Whether the first attempt's body was handed out.
        started: bool,
    },
}

impl Replay {
    /// A body sent once only (unless it is empty).
    pub(crate) fn once(body: RequestBody) -> Replay {
        // An empty body goes again as easily, should an upstream leave the request unprocessed.
        if body.is_end_stream() {
            return Replay::Empty(Some(body));
        }
        Replay::Once(Some(body))
    }

    /// A body to be sent again when it turns out to fit in `cap` bytes. Nothing is read ahead:
    /// the first attempt gets the client's pieces as they come.
    pub(crate) fn record(body: RequestBody, cap: u64) -> Replay {
        if body.is_end_stream() {
            return Replay::Empty(Some(body));
        }
        let recording = Arc::new(Recording {
            replayable: AtomicBool::new(true),
            hint: body.size_hint(),
            slot: Mutex::new(Slot {
                state: Some(BodyState {
                    copy: Vec::new(),
                    copied: 0,
                    cap,
                    rest: Some(body),
                    trailers: None,
                }),
                waiting: None,
            }),
        });
        Replay::Recorded {
            recording,
            started: false,
        }
    }

    /// Whether another attempt can still be sent the whole body: not after a body sent once,
    /// nor after a recorded one outgrew its cap or broke off.
    pub(crate) fn can_retry(&self) -> bool {
        match self {
            Replay::Once(_) => false,
            Replay::Empty(_) => true,
            Replay::Recorded { recording, .. } => recording.replayable.load(Ordering::Acquire),
        }
    }

    /// Whether an attempt's body still holds what was read of the client's: an upstream that
    /// answered before it had read the whole request leaves its writer holding it while its
    /// answer is kept, and a retry's body would wait for it until the deadline.
    pub(crate) fn is_held(&self) -> bool {
        match self {
            Replay::Recorded { recording, started } => {
                *started && lock(&recording.slot).state.is_none()
            }
            Replay::Once(_) | Replay::Empty(_) => false,
        }
    }

    /// The body of the next attempt; `None` when the body cannot be sent again (see
    /// [`Replay::can_retry`]).
    pub(crate) fn next(&mut self) -> Option<RequestBody> {
        match self {
            Replay::Once(body) => body.take(),
            Replay::Empty(body) => Some(
                body.take()
                    .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed_unsync()),
            ),
            Replay::Recorded { recording, started } => {
                if !recording.replayable.load(Ordering::Acquire) {
                    return None;
                }
                let replay = std::mem::replace(started, true);
                Some(
                    ReplayBody {
                        recording: recording.clone(),
                        state: None,
                        replay,
                        sent: 0,
                        sent_trailers: false,
                    }
                    .boxed_unsync(),
                )
            }
        }
    }
}

/// What the attempts of one request share of its body.
#[derive(Debug)]
pub(crate) struct Recording {
    /// Cleared once the copy is given up: the body outgrew the cap, or the client's body failed.
    /// Read without the lock, to decide on a retry.
    replayable: AtomicBool,
    /// The client body's size hint, which every attempt's body repeats.
    hint: SizeHint,
    slot: Mutex<Slot>,
}

/// The body's state, when no attempt's body holds it, and the attempt waiting for it.
#[derive(Debug)]
struct Slot {
    state: Option<BodyState>,
    waiting: Option<Waker>,
}

/// Everything read of the client's body, and the rest of it.
#[derive(Debug)]
struct BodyState {
    /// The pieces read so far, while they fit in `cap`; emptied when they no longer do.
    copy: Vec<Bytes>,
    copied: u64,
    cap: u64,
    /// What no attempt has read yet; `None` once the client's body ended.
    rest: Option<RequestBody>,
    trailers: Option<HeaderMap>,
}

/// One attempt's body over a [`Recording`]: the copy first, then the client's body.
///
/// Attempts run one after another, but the body of a finished attempt may still be held (by a
/// connection on its way down) when the next attempt starts: the state is taken by the body being
/// read and given back when it is dropped, and the next one waits for it. The lock is taken when
/// a body first reads and when it is dropped, never per piece.
struct ReplayBody {
    recording: Arc<Recording>,
    /// The state, while this body holds it.
    state: Option<BodyState>,
    /// Whether an earlier attempt's body came first: this one must send the body whole.
    replay: bool,
    /// How many pieces of the copy this body has sent.
    sent: usize,
    sent_trailers: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.state.is_none() {
            let mut slot = lock(&this.recording.slot);
            match slot.state.take() {
                Some(state) => this.state = Some(state),
                None => {
                    slot.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            drop(slot);
            // A later attempt's body whose copy was given up (by an earlier attempt's body
            // still reading when this one started) cannot be sent whole. Asked once, as the
            // state comes: from then on only this body reads, and a copy it gives up itself
            // (a body over the cap that no attempt had read) leaves it sending the body whole.
            if this.replay && !this.recording.replayable.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(Box::new(NotReplayable))));
            }
        }
        let Some(state) = this.state.as_mut() else {
            return Poll::Pending;
        };
        if let Some(piece) = state.copy.get(this.sent) {
            this.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(piece.clone()))));
        }
        let Some(rest) = state.rest.as_mut() else {
            if !this.sent_trailers {
                this.sent_trailers = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        };
        let frame = match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                state.rest = None;
                this.sent_trailers = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(err))) => {
                // What was read is not the whole body, and never will be.
                this.recording.replayable.store(false, Ordering::Release);
                return Poll::Ready(Some(Err(err)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if state.copied + len > state.cap {
                // Too large to keep: this attempt goes on, no other will follow.
                this.recording.replayable.store(false, Ordering::Release);
                state.copy = Vec::new();
            } else if this.recording.replayable.load(Ordering::Relaxed) {
                state.copy.push(data.clone());
            }
            state.copied += len;
            this.sent = state.copy.len();
        } else if let Some(trailers) = frame.trailers_ref() {
            state.trailers = Some(trailers.clone());
            this.sent_trailers = true;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.state.as_ref().is_some_and(|state| {
            self.sent >= state.copy.len()
                && state.rest.is_none()
                && (self.sent_trailers || state.trailers.is_none())
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.recording.hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let mut slot = lock(&self.recording.slot);
            slot.state = Some(state);
            if let Some(waker) = slot.waiting.take() {
                waker.wake();
            }
        }
    }
}

impl fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// What a request may be retried for ([`Retry::scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Any failure the route's `on` names.
    Any,
    /// Only a failure that left the request unsent, when `on` names it: a refused connection
    /// (`connect-failure`), an HTTP/2 stream refused or left out by a GOAWAY (`refused-stream`).
    Unsent,
}

/// An attempt's body was to be a replay, but the copy was given up before it could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NotReplayable;

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body outgrew max_replay_body and cannot be sent again")
    }
}

impl StdError for NotReplayable {}

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
    use http::Request;
    use http_body_util::Full;
    use rampart_config::Config;
    use rampart_http::{GrpcCode, TransportError};
    use tokio::sync::mpsc;

    use super::*;

    fn retry(section: &str) -> Option<Retry> {
        let toml = format!(
            "[[routes]]\nupstream = \"app\"\n[routes.retry]\n{section}\n\
             [upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        let config = Config::from_str(&toml, "test.toml").unwrap();
        Retry::new(&config.routes[0]).unwrap()
    }

    fn parts(method: Method, upgrade: bool) -> Parts {
        let mut request = Request::builder().method(method);
        if upgrade {
            request = request
                .header("connection", "upgrade")
                .header("upgrade", "websocket");
        }
        request.body(()).unwrap().into_parts().0
    }

    fn full(s: &'static str) -> RequestBody {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    // A chunked body whose pieces a test sends; it ends when the sender is dropped.
    fn chunked() -> (mpsc::UnboundedSender<Bytes>, RequestBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ChannelBody(rx).boxed_unsync())
    }

    struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|piece| piece.map(|p| Ok(Frame::data(p))))
        }
    }

    async fn read(body: RequestBody) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
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
        assert_eq!(
            retry.scope(&parts(Method::GET, false), false),
            Some(Scope::Any)
        );
        assert_eq!(
            retry.scope(&parts(Method::POST, false), false),
            Some(Scope::Unsent)
        );
    }

    #[test]
    fn the_default_tokens_and_methods() {
        let retry = retry("").unwrap();
        let wants = |attempt| retry.wants(&attempt, Scope::Any);
        assert!(wants(Attempt::Error(TransportError::ConnectFailure)));
        assert!(wants(Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!wants(Attempt::status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(wants(Attempt::grpc(GrpcCode::Unavailable)));
        assert_eq!(
            retry.scope(&parts(Method::GET, false), false),
            Some(Scope::Any)
        );
        assert_eq!(
            retry.scope(&parts(Method::POST, false), true),
            Some(Scope::Any)
        );
    }

    #[test]
    fn a_method_not_listed_is_retried_only_for_a_failure_that_left_it_unsent() {
        let default = retry("").unwrap();
        assert_eq!(
            default.scope(&parts(Method::POST, false), false),
            Some(Scope::Unsent)
        );
        let wants = |attempt| default.wants(&attempt, Scope::Unsent);
        assert!(wants(Attempt::Error(TransportError::ConnectFailure)));
        assert!(wants(Attempt::Error(TransportError::RefusedStream)));
        // Whatever may have reached the upstream is not sent again.
        assert!(!wants(Attempt::Error(TransportError::Reset)));
        assert!(!wants(Attempt::Error(TransportError::Timeout)));
        assert!(!wants(Attempt::status(StatusCode::SERVICE_UNAVAILABLE)));
        // And only when `on` names the failure.
        let narrow = retry("on = [\"503\"]").unwrap();
        assert!(!narrow.wants(
            &Attempt::Error(TransportError::ConnectFailure),
            Scope::Unsent
        ));
    }

    #[test]
    fn an_upgrade_is_never_retried() {
        let retry = retry("").unwrap();
        assert_eq!(retry.scope(&parts(Method::GET, true), false), None);
        assert_eq!(retry.scope(&parts(Method::POST, true), false), None);
    }

    #[test]
    fn bodies_of_known_size_over_the_cap_are_not_replayed() {
        let retry = retry("max_replay_body = \"4B\"").unwrap();
        assert!(retry.can_replay(&full("")));
        assert!(retry.can_replay(&full("1234")));
        assert!(!retry.can_replay(&full("12345")));
        // A chunked body: no length until it ends, so it may turn out to fit.
        assert!(retry.can_replay(&chunked().1));
    }

    #[tokio::test]
    async fn a_chunked_body_that_fits_is_sent_again_whole() {
        let (tx, body) = chunked();
        let mut replay = Replay::record(body, 16);
        for piece in ["ab", "cd", "ef"] {
            tx.send(Bytes::from_static(piece.as_bytes())).unwrap();
        }
        drop(tx);
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
        assert!(replay.can_retry());
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn an_attempt_cut_short_leaves_the_rest_to_the_next() {
        let (tx, body) = chunked();
        let mut replay = Replay::record(body, 16);
        let mut first = replay.next().unwrap();
        tx.send(Bytes::from_static(b"ab")).unwrap();
        let piece = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(piece, "ab");
        // The first attempt fails here, having sent one piece.
        drop(first);
        tx.send(Bytes::from_static(b"cd")).unwrap();
        drop(tx);
        assert!(replay.can_retry());
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_cap_is_sent_once_only() {
        let (tx, body) = chunked();
        let mut replay = Replay::record(body, 4);
        for piece in ["ab", "cd", "ef"] {
            tx.send(Bytes::from_static(piece.as_bytes())).unwrap();
        }
        drop(tx);
        // The first attempt gets all of it all the same.
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
        assert!(!replay.can_retry());
        assert!(replay.next().is_none());
    }

    #[tokio::test]
    async fn a_body_over_the_cap_no_attempt_read_goes_whole_to_the_next() {
        // Too large to copy (a cap of 0): the first attempt's connection was refused before it
        // read anything, and the next attempt sends it all, giving up the copy itself as it
        // reads.
        let mut replay = Replay::record(full("abcdef"), 0);
        drop(replay.next().unwrap());
        assert!(replay.can_retry());
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
        assert!(!replay.can_retry());
        // So does one whose copy a retry outgrows: the copy, then the rest.
        let (tx, body) = chunked();
        let mut replay = Replay::record(body, 4);
        let mut first = replay.next().unwrap();
        tx.send(Bytes::from_static(b"ab")).unwrap();
        first.frame().await.unwrap().unwrap();
        drop(first);
        for piece in ["cd", "ef"] {
            tx.send(Bytes::from_static(piece.as_bytes())).unwrap();
        }
        drop(tx);
        assert_eq!(read(replay.next().unwrap()).await.unwrap(), "abcdef");
        assert!(replay.next().is_none());
    }

    #[tokio::test]
    async fn a_later_attempt_waits_for_the_earlier_body_to_be_let_go() {
        let (tx, body) = chunked();
        let mut replay = Replay::record(body, 16);
        let mut first = replay.next().unwrap();
        tx.send(Bytes::from_static(b"ab")).unwrap();
        first.frame().await.unwrap().unwrap();
        let second = tokio::spawn(read(replay.next().unwrap()));
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        drop(tx);
        assert_eq!(second.await.unwrap().unwrap(), "ab");
    }

    #[tokio::test]
    async fn no_body_is_no_body_every_time() {
        let mut replay = Replay::record(full(""), 4);
        for _ in 0..2 {
            let body = replay.next().unwrap();
            assert!(body.is_end_stream());
        }
        assert!(replay.can_retry());
    }
}
