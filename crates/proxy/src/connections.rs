//! The connections to one endpoint, kept open between requests.
//!
//! A general HTTP client pools connections for any authority: hyper-util's finds them by hashing
//! the request's authority, builds a connect future for every request in case none is idle, and
//! hands each HTTP/1.1 connection back from a task it spawns per request. rampart knows its
//! endpoints when it loads its configuration, so each endpoint keeps its own: an HTTP/1.1
//! connection carries one exchange at a time, spoken by the exchange itself ([`h1`]), and goes
//! back on the endpoint's idle stack when the response body it carried ends; an HTTP/2
//! connection carries many requests at once, up to the upstream's `h2_max_concurrent_streams`,
//! and a request finding every connection full opens another, as Envoy does: a server refuses
//! streams past its own `SETTINGS_MAX_CONCURRENT_STREAMS` (100 to 250 on common servers), and a
//! request sent past it waits inside the connection for a stream to end, so that a hundred
//! long gRPC streams held every unary call to the endpoint until its deadline. hyper does not
//! tell the peer's limit; the upstream's setting (100 by default, the least RFC 9113 advises a
//! server to allow) stands for it.
//!
//! A connection idle for the upstream's `idle_timeout` is closed rather than reused: one
//! silently dropped on the way (a NAT's or a firewall's idle timeout) must not hold a request
//! until its deadline, an endpoint no longer called must not hold sockets open, and an HTTP/1.1
//! server closing idle keep-alive connections (Node.js and Apache after 5 s, gunicorn after 2)
//! must not close one as a request goes out on it: a request that cannot be sent again (a POST)
//! would be lost. A task per endpoint, started when it first has a connection to keep and ended
//! when it has none, looks every [`LOOK`] (or every `idle_timeout`, if shorter), so a connection
//! closes at most that long after its time; a checkout never reuses one past it. An idle
//! HTTP/1.1 connection the upstream has closed is let go at checkout, before anything is sent on
//! it, or at that task's next look, whichever comes first, so that its socket does not wait in
//! CLOSE_WAIT for a request to notice; an HTTP/2 one that gives its request back unsent sends it
//! once more on a new connection, as hyper-util's client does.
//!
//! A connection is used for at most the upstream's `max_connection_age` (1 h by default, as
//! nginx's `keepalive_time`; Envoy's `max_connection_duration`): an HTTP/1.1 one past it is
//! closed when its exchange ends instead of going back, an HTTP/2 one takes no new request and
//! closes when its last stream ends. Without it a connection in steady use lives for as long as
//! both ends do, so an endpoint named by DNS keeps sending its traffic to the address it had at
//! the start, and one behind a layer-4 load balancer to the backend it first reached. The ages
//! of an endpoint's connections are spread between nine tenths of the setting and all of it,
//! so that connections opened together (a start, a burst) are not all made again at once.
//!
//! An HTTP/2 connection carries every request to its endpoint, so one that stops answering while
//! staying open (a black-holed flow, a wedged server) would time out every request, and its
//! breaker's probes too, for as long as it stays: it is pinged when nothing came on it for
//! [`PING_AFTER`], and closed when the ping is not answered within [`PING_TIMEOUT`]; the next
//! request makes a new one.

use std::error::Error as StdError;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rampart_http::deadline::Outgoing;
use rampart_policy::error::{BoxError, find_cause};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::RequestBody;
use crate::dns::Connector;
use crate::h1;
use crate::lock;
use crate::turn;

/// How often an endpoint's idle connections are looked at, while it has any.
const LOOK: Duration = Duration::from_secs(5);

/// How long an HTTP/2 connection may stay silent before it is pinged.
pub(crate) const PING_AFTER: Duration = Duration::from_secs(10);

/// How long a ping's answer may take before its connection is taken for dead and closed.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What an upstream may send on one HTTP/2 stream before rampart has passed it on. A stream's
/// data waits in rampart until its client takes it, and the streams of every client share the
/// connection's window: with hyper's defaults (2 MiB a stream, 5 MiB the connection) three
/// clients that stop reading took the whole window, and every other client of the endpoint got
/// its response head and then nothing.
const STREAM_WINDOW: u32 = 256 << 10;

/// What an upstream may send on one HTTP/2 connection before rampart has passed it on: room for
/// 64 streams held by clients that stopped reading before the others are held up.
const CONNECTION_WINDOW: u32 = 64 * STREAM_WINDOW;

/// The largest header list (response head or trailers) an HTTP/2 upstream may send, as for an
/// HTTP/1.1 upstream's head: hyper's default of 16 KiB refused heads and lost trailers (a
/// `grpc-status-details-bin`) that HTTP/1.1 upstreams may send.
const MAX_HEADER_LIST: u32 = 64 << 10;

/// The connections to one endpoint.
pub(crate) struct Connections {
    /// `http://authority/`, what the connector is asked for.
    target: Uri,
    authority: Authority,
    connector: Connector,
    /// When the endpoint speaks h2c: the streams one connection carries at once.
    http2: Option<usize>,
    kept: Arc<Kept>,
}

/// The connections an endpoint keeps between exchanges.
struct Kept {
    /// How long a connection may wait idle before it is closed rather than reused.
    idle_timeout: Duration,
    /// How long a connection is used at most; each is given a share of it (see `retire_at`).
    max_age: Duration,
    /// Connections made, HTTP/1.1 or HTTP/2: spreads their ages.
    made: AtomicU64,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connections, the oldest first, so that the ones opened for a burst go idle
    /// and are closed once it has passed.
    http2: Mutex<Vec<Shared>>,
    /// Held while an HTTP/2 connection is made, so that the requests that find none wait for
    /// that one; it keeps why the last attempt could not connect, for those that waited on it.
    connecting: tokio::sync::Mutex<Option<ConnectFailed>>,
    /// HTTP/2 connections made or tried: numbers them.
    connects: AtomicU64,
    /// HTTP/2 connects that came to an end, made or failed (not those dropped midway): tells a
    /// waiter whether the one it waited for ended while it did.
    connects_ended: AtomicU64,
    /// Whether the task closing idle connections runs.
    watched: AtomicBool,
}

struct Idle<S = Box<h1::Conn>> {
    handle: S,
    since: Instant,
}

/// An HTTP/2 connection, when it last took a request, its number among the connects, and the
/// streams open on it.
struct Shared {
    idle: Idle<http2::SendRequest<RequestBody>>,
    number: u64,
    streams: Arc<Streams>,
    /// When it takes no new stream (`max_connection_age`).
    retire_at: Option<Instant>,
}

/// The streams open on an HTTP/2 connection.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    /// The last open stream ended since the idle connections were last looked at: the
    /// connection was in use until then, however long ago that stream began.
    ended: AtomicBool,
}

/// A stream open on an HTTP/2 connection: counted there until its response body is dropped (or
/// the request fails), which ends the stream.
struct Stream(Arc<Streams>);

/// A stream taken on HTTP/2 connection number `number`, to send one request on with `sender`.
struct Taken {
    sender: http2::SendRequest<RequestBody>,
    number: u64,
    stream: Stream,
}

impl Shared {
    /// One more stream on this connection, unless `max` are open.
    fn take(&mut self, max: usize) -> Option<Taken> {
        self.streams
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        self.idle.since = turn::now();
        Some(Taken {
            sender: self.idle.handle.clone(),
            number: self.number,
            stream: Stream(self.streams.clone()),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.store(true, Ordering::Release);
        }
    }
}

/// Why an exchange got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made.
    Connect(BoxError),
    /// The connection broke, the upstream's answer was not HTTP, or the request's body failed.
    Exchange(BoxError),
}

impl Connections {
    /// Connections to `authority`, made by `connector`, speaking h2c by prior knowledge with at
    /// most `streams` requests at once on each connection when `http2` is `Some(streams)`, else
    /// HTTP/1.1; a connection idle for `idle_timeout` is closed rather than reused, and one is
    /// used for at most `max_age`, less up to a tenth of it.
    pub(crate) fn new(
        authority: Authority,
        connector: Connector,
        http2: Option<usize>,
        idle_timeout: Duration,
        max_age: Duration,
    ) -> Connections {
        let target = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("an authority and a path make a URI");
        Connections {
            target,
            authority,
            connector,
            http2,
            kept: Arc::new(Kept {
                idle_timeout,
                max_age,
                made: AtomicU64::default(),
                idle: Mutex::default(),
                http2: Mutex::default(),
                connecting: tokio::sync::Mutex::default(),
                connects: AtomicU64::default(),
                connects_ended: AtomicU64::default(),
                watched: AtomicBool::default(),
            }),
        }
    }

    /// Sends the request of `head` and `body` to this endpoint, with `deadline` in place of any
    /// deadline header of `head`, and returns the response head; its body hands the connection
    /// back when it ends. `head` is lent: an HTTP/1.1 exchange writes it out as it starts, so a
    /// retry sends it again without a copy; an HTTP/2 one takes a copy, its target made absolute.
    pub(crate) async fn send(
        &self,
        head: &Parts,
        deadline: Outgoing,
        body: RequestBody,
    ) -> Result<Response<PooledBody>, SendError> {
        // Boxed, as the rare paths below are: what the common one holds is copied with every
        // request's future.
        if let Some(streams) = self.http2 {
            return pin_in_box!(self.send_http2(head, deadline, body, streams)).await;
        }
        let conn = match self.checkout() {
            Some(conn) => conn,
            // Boxed: a connect's future is large, and rare.
            None => {
                let io = Box::pin(self.connect()).await?.into_inner();
                h1::Conn::new(io, self.kept.retire_at(turn::now()))
            }
        };
        let response = h1::send(conn, head, &self.authority, deadline, body)
            .await
            .map_err(|err| SendError::Exchange(err.into()))?;
        let kept = self.kept.clone();
        Ok(response.map(|body| PooledBody::http1(body, kept)))
    }

    // The most recently used idle connection that is still open, closing those idle too long.
    fn checkout(&self) -> Option<Box<h1::Conn>> {
        let mut idle = lock(&self.kept.idle);
        // No clock read when there is nothing to reuse.
        if idle.is_empty() {
            return None;
        }
        let now = turn::now();
        close_stale(&mut idle, now, self.kept.idle_timeout);
        // One the upstream closed meanwhile is let go, and so is one past its age (the look
        // every few seconds may not have come yet).
        while let Some(Idle { handle: conn, .. }) = idle.pop() {
            if !retired(conn.retire_at(), now) && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    async fn send_http2(
        &self,
        head: &Parts,
        deadline: Outgoing,
        body: RequestBody,
        streams: usize,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut request = Request::from_parts(head.clone(), body);
        // The host the client named goes in `:authority`, which an HTTP/2 upstream reads before
        // Host (RFC 9113 §8.3.1); Host then goes, so that the two cannot differ.
        let host = request.headers_mut().remove(HOST);
        let authority = host
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .or_else(|| request.uri().authority().cloned());
        *request.uri_mut() =
            absolute(authority.as_ref().unwrap_or(&self.authority), request.uri())?;
        *request.version_mut() = Version::HTTP_2;
        deadline.set(request.headers_mut());
        let (mut taken, reused) = match self.live_http2(streams, None) {
            Some(taken) => (taken, true),
            None => Box::pin(self.http2_sender(streams, None)).await?,
        };
        let response = match taken.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                let request = resendable(err, reused)?;
                let replacing = Some(taken.number);
                (taken, _) = Box::pin(self.http2_sender(streams, replacing)).await?;
                taken
                    .sender
                    .send_request(request)
                    .await
                    .map_err(|err| SendError::Exchange(err.into()))?
            }
        };
        Ok(response.map(|body| PooledBody::http2(body, taken.stream)))
    }

    // An open HTTP/2 connection with room for one more of `streams` streams, and that stream,
    // taken; connection number `replacing` (one that gave a request back unsent) is let go.
    fn live_http2(&self, streams: usize, replacing: Option<u64>) -> Option<Taken> {
        let mut shared = lock(&self.kept.http2);
        // Streams still open keep their connection: only this handle goes.
        shared.retain(|shared| !shared.idle.handle.is_closed() && Some(shared.number) != replacing);
        // One past its age stays until its streams end (the look closes it), taking no more.
        let now = turn::now();
        shared
            .iter_mut()
            .filter(|shared| !retired(shared.retire_at, now))
            .find_map(|shared| shared.take(streams))
    }

    // An HTTP/2 connection with room for one more of `streams` streams, and that stream, taken;
    // made if there is none (connection number `replacing` let go), with whether it was made
    // before: requests that find none wait for the one connect under way, rather than each
    // make their own (a hundred requests arriving at once on a cold pool, or after a connection
    // was lost, made a hundred connections, and an upstream coming back met a connection
    // storm). When that connect fails, the requests that waited for it fail with it, rather
    // than each try again in turn (against an endpoint that drops packets, one connect_timeout
    // after another). A connect dropped midway (its request gone: a client hung up, a hedge
    // lost, a timer fired) is no failure: the requests waiting on it connect themselves.
    async fn http2_sender(
        &self,
        streams: usize,
        replacing: Option<u64>,
    ) -> Result<(Taken, bool), SendError> {
        let ended = self.kept.connects_ended.load(Ordering::Acquire);
        let mut failed = self.kept.connecting.lock().await;
        if let Some(taken) = self.live_http2(streams, replacing) {
            return Ok((taken, true));
        }
        if self.kept.connects_ended.load(Ordering::Acquire) != ended
            && let Some(why) = failed.as_ref()
        {
            return self.over_limit(replacing, SendError::Connect(Box::new(why.clone())));
        }
        // Cleared before the connect: one dropped midway must leave no older failure behind
        // for the requests that waited on it.
        *failed = None;
        let number = self.kept.connects.fetch_add(1, Ordering::AcqRel) + 1;
        let connected = self.connect_http2(number).await;
        self.kept.connects_ended.fetch_add(1, Ordering::AcqRel);
        match connected {
            Ok(taken) => Ok((taken, false)),
            // A failed handshake is left for each request to meet.
            Err(SendError::Connect(why)) => {
                let why = ConnectFailed(Arc::new(why));
                *failed = Some(why.clone());
                self.over_limit(replacing, SendError::Connect(Box::new(why)))
            }
            Err(err) => self.over_limit(replacing, err),
        }
    }

    // When no further connection can be made: a stream on a live connection over its limit,
    // where the request waits for one of the streams to end, as it did when an endpoint had one
    // connection; `err` when none is live. A request that only found the connections full
    // must not fail as if the endpoint were down, nor count against its breaker.
    fn over_limit(
        &self,
        replacing: Option<u64>,
        err: SendError,
    ) -> Result<(Taken, bool), SendError> {
        self.live_http2(usize::MAX, replacing)
            .map(|taken| (taken, true))
            .ok_or(err)
    }

    // A new HTTP/2 connection, number `number`, shared from now on, and a stream on it.
    async fn connect_http2(&self, number: u64) -> Result<Taken, SendError> {
        let io = self.connect().await?;
        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_AFTER)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(io)
            .await
            .map_err(|err| SendError::Exchange(err.into()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
            .ready()
            .await
            .map_err(|err| SendError::Exchange(err.into()))?;
        let now = turn::now();
        let mut shared = Shared {
            idle: Idle {
                handle: sender,
                since: now,
            },
            number,
            streams: Arc::default(),
            retire_at: self.kept.retire_at(now),
        };
        let taken = shared.take(1).expect("a new connection has room");
        lock(&self.kept.http2).push(shared);
        self.kept.watch();
        Ok(taken)
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|err| SendError::Connect(err.into()))?;
        connector
            .call(self.target.clone())
            .await
            .map_err(|err| SendError::Connect(err.into()))
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections")
            .field("authority", &self.authority)
            .field("http2", &self.http2)
            .field("idle", &lock(&self.kept.idle).len())
            .finish_non_exhaustive()
    }
}

// The request of a failed send, when it may go once more on a new connection: it came back
// unsent from a reused connection, which the upstream closed as the request went out.
fn resendable(
    mut err: TrySendError<Request<RequestBody>>,
    reused: bool,
) -> Result<Request<RequestBody>, SendError> {
    match err.take_message() {
        Some(request) if reused => Ok(request),
        _ => Err(SendError::Exchange(err.into_error().into())),
    }
}

// The target of a request sent on a connection to an endpoint: `authority` (the host the client
// named, or the endpoint's own when it named none), with the request's own path and query. The
// connection is made to the endpoint first: the authority never picks where the request goes.
fn absolute(authority: &Authority, target: &Uri) -> Result<Uri, SendError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        target
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).map_err(|err| SendError::Exchange(err.into()))
}

// Whether a connection to be retired at `at` is past its age at `now`.
fn retired(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| now >= at)
}

// Closes the connections of `idle` unused for `timeout` at `now`.
fn close_stale(idle: &mut Vec<Idle>, now: Instant, timeout: Duration) {
    // The oldest are at the bottom: once the bottom one is fresh, all are.
    let stale = idle
        .iter()
        .take_while(|idle| now.duration_since(idle.since) >= timeout)
        .count();
    idle.drain(..stale);
}

impl Kept {
    /// When a connection made at `now` is to be retired: `None` past the clock's range. The
    /// n-th connection's age is short of `max_age` by a tenth of it times the fraction of n
    /// times the golden ratio: connections made one after another get ages as far apart as
    /// their number allows, with no randomness drawn from the proxy's own (which the tests of
    /// other draws replay).
    fn retire_at(&self, now: Instant) -> Option<Instant> {
        const GOLDEN: f64 = 0.618_033_988_749_895;
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let share = 1.0 - 0.1 * (n as f64 * GOLDEN).fract();
        let age = Duration::try_from_secs_f64(self.max_age.as_secs_f64() * share).ok()?;
        now.checked_add(age)
    }

    /// Starts the task closing idle connections, unless it runs (or no runtime does).
    fn watch(self: &Arc<Kept>) {
        // A load first: this runs on every hand-back, and a swap would write a shared line.
        if self.watched.load(Ordering::Relaxed) || self.watched.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watched.store(false, Ordering::Relaxed);
            return;
        };
        runtime.spawn(close_idle(Arc::downgrade(self)));
    }
}

// Every `LOOK` (or `idle_timeout`, if shorter), closes the connections unused for
// `idle_timeout` and those the upstream closed, until the endpoint keeps none (a hand-back starts
// the task again) or its connections are dropped.
async fn close_idle(kept: Weak<Kept>) {
    let Some(every) = kept.upgrade().map(|kept| LOOK.min(kept.idle_timeout)) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(kept) = kept.upgrade() else {
            return;
        };
        if kept.look(turn::now()) {
            continue;
        }
        kept.watched.store(false, Ordering::Relaxed);
        // A hand-back between the look and the store saw the task still running: look once
        // more, and carry on if it left something to watch.
        if !kept.look(turn::now()) || kept.watched.swap(true, Ordering::Relaxed) {
            return;
        }
    }
}

impl Kept {
    /// Closes the connections idle too long at `now` and those the upstream closed: whether
    /// any connection is left to look at.
    fn look(&self, now: Instant) -> bool {
        let mut idle = lock(&self.idle);
        close_stale(&mut idle, now, self.idle_timeout);
        // No checkout may come to notice for a while.
        idle.retain(|idle| !retired(idle.handle.retire_at(), now) && idle.handle.is_usable());
        let mut http2 = lock(&self.http2);
        // One with streams open is not idle, however long ago they began (a gRPC watch), and
        // one whose last stream ended since the last look is idle from now.
        http2.retain_mut(
            |Shared {
                 idle,
                 streams,
                 retire_at,
                 ..
             }| {
                if streams.ended.swap(false, Ordering::AcqRel) {
                    idle.since = now;
                }
                !idle.handle.is_closed()
                    && (streams.open.load(Ordering::Acquire) > 0
                        || (now.duration_since(idle.since) < self.idle_timeout
                            && !retired(*retire_at, now)))
            },
        );
        !idle.is_empty() || !http2.is_empty()
    }
}

impl Kept {
    /// Takes an HTTP/1.1 connection back after an exchange that ended whole.
    fn give_back(self: &Arc<Kept>, conn: Box<h1::Conn>) {
        let now = turn::now();
        // Past its age, it closes here, between two exchanges.
        if retired(conn.retire_at(), now) {
            return;
        }
        let idle = Idle {
            handle: conn,
            since: now,
        };
        lock(&self.idle).push(idle);
        self.watch();
    }
}

/// An upstream's response body. Over HTTP/1.1 it hands its connection back for the next request
/// once the exchange has ended whole; a body dropped before its end takes the connection with
/// it, unless its rest has arrived and is short (see [`h1::Body::drain`]): what is left of the
/// response cannot be told from the next one.
pub(crate) struct PooledBody {
    inner: Inner,
}

enum Inner {
    Http1 { body: h1::Body, kept: Arc<Kept> },
    Http2 { body: Incoming, _stream: Stream },
}

impl PooledBody {
    fn http1(body: h1::Body, kept: Arc<Kept>) -> PooledBody {
        PooledBody {
            inner: Inner::Http1 { body, kept },
        }
    }

    fn http2(body: Incoming, stream: Stream) -> PooledBody {
        PooledBody {
            inner: Inner::Http2 {
                body,
                _stream: stream,
            },
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing to read (a HEAD, a 204) is done without being read, and a short
        // one already arrived is read out; `take_reusable` gives nothing for one dropped before
        // its end.
        if let Inner::Http1 { body, kept } = &mut self.inner {
            body.drain();
            if let Some(conn) = body.take_reusable() {
                kept.give_back(conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Http1 { body, kept } => {
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                // The end, read whole: the connection may carry the next exchange.
                if let Some(conn) = body.take_reusable() {
                    kept.give_back(conn);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
            }
            Inner::Http2 { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1 { body, .. } => body.is_end_stream(),
            Inner::Http2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1 { body, .. } => body.size_hint(),
            Inner::Http2 { body, .. } => body.size_hint(),
        }
    }
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Http1 { body, .. } => f.debug_tuple("PooledBody").field(body).finish(),
            Inner::Http2 { body, .. } => f.debug_tuple("PooledBody").field(body).finish(),
        }
    }
}

/// A connect's failure, told to every request that waited for it: its causes stay readable
/// (a shortage of the process's own descriptors must be told from the endpoint's refusal).
#[derive(Clone, Debug)]
struct ConnectFailed(Arc<BoxError>);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

// It says what the failure says: its source is the failure's, so that a report of the chain
// does not print the message twice.
impl StdError for ConnectFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl SendError {
    /// Why no connection could be made, when it was for want of this process's own resources:
    /// file descriptors (`EMFILE`, `ENFILE`), socket buffers or memory (`ENOBUFS`, `ENOMEM`),
    /// local ports (`EADDRNOTAVAIL`). Nothing the endpoint did: counted against it, a proxy out
    /// of descriptors would eject every endpoint it has, healthy ones first.
    pub(crate) fn local_shortage(&self) -> Option<&std::io::Error> {
        let SendError::Connect(err) = self else {
            return None;
        };
        find_cause::<std::io::Error>(err.as_ref()).filter(|io| {
            matches!(
                io.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                )
            )
        })
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::Connect(err) => Some(err.as_ref()),
            SendError::Exchange(err) => Some(err.as_ref()),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("cannot connect"),
            SendError::Exchange(_) => f.write_str("the exchange failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::server::conn::{http1 as server1, http2 as server2};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::dns::Resolver;

    /// A listener on a free port whose connections are counted and each served by `serve`.
    async fn counting<F, S>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> S + Send + 'static,
        S: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream));
            }
        });
        (addr, accepted)
    }

    /// An upstream answering `hello` on every connection it accepts, counted; the first
    /// answer of each connection says `Connection: close` when `close_first`.
    async fn upstream(http2: bool, close_first: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        counting(move |stream| async move {
            let service = service_fn(move |_: Request<Incoming>| async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"hello")));
                if close_first {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            });
            let io = TokioIo::new(stream);
            let _ = if http2 {
                server2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                server1::Builder::new().serve_connection(io, service).await
            };
        })
        .await
    }

    fn connections(addr: SocketAddr, http2: bool) -> Connections {
        connections_of(addr, http2.then_some(100))
    }

    /// The upstreams' `idle_timeout` in these tests.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

    /// The upstreams' `max_connection_age` in these tests.
    const MAX_AGE: Duration = Duration::from_secs(3600);

    /// Connections to `addr`, carrying at most `streams` requests at once on each when HTTP/2.
    fn connections_of(addr: SocketAddr, streams: Option<usize>) -> Connections {
        idle_for(addr, streams, IDLE_TIMEOUT)
    }

    fn idle_for(addr: SocketAddr, streams: Option<usize>, idle: Duration) -> Connections {
        made(addr, streams, idle, MAX_AGE)
    }

    /// Connections to `addr` used for at most `max_age` (the first of them for all of it).
    fn aged(addr: SocketAddr, streams: Option<usize>, max_age: Duration) -> Connections {
        made(addr, streams, IDLE_TIMEOUT, max_age)
    }

    fn made(
        addr: SocketAddr,
        streams: Option<usize>,
        idle: Duration,
        max_age: Duration,
    ) -> Connections {
        let mut connector = Connector::new_with_resolver(Resolver::system(Duration::from_secs(5)));
        connector.enforce_http(true);
        Connections::new(
            addr.to_string().parse().unwrap(),
            connector,
            streams,
            idle,
            max_age,
        )
    }

    /// A GET of `/path` sent through `connections`.
    async fn send(connections: &Connections) -> Result<Response<PooledBody>, SendError> {
        send_to(connections, "/path").await
    }

    /// A GET of `path` sent through `connections`.
    async fn send_to(
        connections: &Connections,
        path: &str,
    ) -> Result<Response<PooledBody>, SendError> {
        let (head, body) = Request::builder()
            .uri(path)
            .body(Empty::new().map_err(BoxError::from).boxed_unsync())
            .unwrap()
            .into_parts();
        let deadline = Outgoing {
            remaining: Duration::from_secs(1),
            grpc: false,
        };
        connections.send(&head, deadline, body).await
    }

    /// One exchange with `addr` through `connections`, read to its end.
    async fn exchange(connections: &Connections) {
        let response = send(connections).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_finding_no_http2_connection_share_the_one_being_made() {
        let (addr, accepted) = upstream(true, false).await;
        let connections = Arc::new(connections(addr, true));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let connections = connections.clone();
            all.spawn(async move { exchange(&connections).await });
        }
        all.join_all().await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn requests_waiting_on_a_connect_that_fails_fail_with_it() {
        // Nothing listens: each connect is refused. The first request connects; the 49 others
        // come while it does, wait for it, and fail with it rather than each try again in turn.
        let refusing = rampart_test_support::Refusing::bind().unwrap();
        let connections = connections(refusing.addr(), true);
        let all = (0..50).map(|_| send(&connections));
        for result in futures_util::future::join_all(all).await {
            assert!(matches!(result, Err(SendError::Connect(_))), "{result:?}");
        }
        assert_eq!(connections.kept.connects.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connect_dropped_midway_leaves_its_waiters_to_connect_themselves() {
        // A connect that fails, then one that cannot end: the endpoint listens again, but with
        // its accept queue full, so the kernel drops the connect's SYN.
        let refusing = rampart_test_support::Refusing::bind().unwrap();
        let addr = refusing.addr();
        let connections = connections(addr, true);
        assert!(matches!(
            send(&connections).await,
            Err(SendError::Connect(_))
        ));
        drop(refusing);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let _listener = socket.listen(0).unwrap();
        let mut queued = Vec::new();
        while let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            queued.push(stream);
        }

        // Three requests: the first connects, the two others wait for it. Each connect under
        // way is dropped in turn (its client gone); the request that waited on it does not fail
        // with the refusal before, but connects.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut requests: Vec<_> = (0..3).map(|_| Box::pin(send(&connections))).collect();
        for request in &mut requests {
            assert!(request.as_mut().poll(&mut cx).is_pending());
        }
        for made in [3, 4] {
            drop(requests.remove(0));
            let polled = requests[0].as_mut().poll(&mut cx);
            assert!(polled.is_pending(), "{:?}", polled.map(|r| r.map(|_| ())));
            assert_eq!(connections.kept.connects.load(Ordering::Relaxed), made);
        }
    }

    /// The connections an upstream accepts for three HTTP/1.1 exchanges one after the other,
    /// each of its answers closing its connection when `close`.
    async fn connections_for_three(close: bool) -> usize {
        let (addr, accepted) = upstream(false, close).await;
        let connections = connections(addr, false);
        for _ in 0..3 {
            exchange(&connections).await;
        }
        accepted.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        assert_eq!(connections_for_three(false).await, 1);
    }

    /// An upstream that answers each request head it reads on a connection with `answer`, in
    /// one write, the connections it accepts counted.
    async fn answering(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        counting(move |mut stream| async move {
            let mut read = Vec::new();
            let mut buf = [0; 4096];
            loop {
                while let Some(end) = memchr::memmem::find(&read, b"\r\n\r\n") {
                    read.drain(..end + 4);
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
    }

    /// The connections `answer` costs two exchanges when the first answer is dropped unread.
    async fn connections_after_one_dropped(answer: &'static [u8]) -> usize {
        let (addr, accepted) = answering(answer).await;
        let connections = connections(addr, false);
        // The answer is written at once, and read with its head.
        drop(send(&connections).await.unwrap());
        let _ = send(&connections).await.unwrap();
        accepted.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_short_answer_dropped_unread_leaves_its_connection_for_the_next() {
        // A retried 503, or one a fallback replaced, is dropped unread.
        let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\nunavailable";
        assert_eq!(connections_after_one_dropped(answer).await, 1);
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n\
            b\r\nunavailable\r\n0\r\nx-why: down\r\n\r\n";
        assert_eq!(connections_after_one_dropped(chunked).await, 1);
    }

    #[tokio::test]
    async fn a_body_left_unread_takes_its_connection_with_it() {
        // Its rest has not arrived: it cannot be told from the next answer.
        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\nten bytes.";
        assert_eq!(connections_after_one_dropped(partial).await, 2);
        // Longer than a short answer is read out for.
        let long: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n"[..],
                &[b'x'; 70_000],
            ]
            .concat()
            .into_boxed_slice(),
        );
        assert_eq!(connections_after_one_dropped(long).await, 2);
        // Nor is the end of a body read until the connection ends.
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(connections_after_one_dropped(unframed).await, 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        assert_eq!(connections_for_three(true).await, 3);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_closed_rather_than_reused() {
        let (addr, accepted) = upstream(false, false).await;
        let connections = connections(addr, false);
        exchange(&connections).await;
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        tokio::time::resume();
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1, "still fresh: reused");
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT).await;
        tokio::time::resume();
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert_eq!(
            lock(&connections.kept.idle).len(),
            1,
            "the stale one is gone"
        );
    }

    #[tokio::test]
    async fn an_idle_timeout_shorter_than_the_look_is_kept_to() {
        let (addr, accepted) = upstream(false, false).await;
        let connections = idle_for(addr, None, Duration::from_secs(2));
        exchange(&connections).await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::time::resume();
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2, "idle 2 s: not reused");
        // The look comes every 2 s, not every `LOOK` (which would come 5 s after the first
        // hand-back, 3 s after this one).
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(2500)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&connections.kept.idle).len(), 0);
    }

    #[tokio::test]
    async fn an_http1_connection_in_steady_use_is_made_again_past_its_age() {
        let (addr, accepted) = upstream(false, false).await;
        let connections = aged(addr, None, Duration::from_secs(10));
        // An exchange every 3 s: never idle for long.
        for _ in 0..3 {
            exchange(&connections).await;
            advance(Duration::from_secs(3)).await;
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "9 s old: still the first"
        );
        // An exchange under way as the connection comes of age ends whole, and then the
        // connection closes instead of going back.
        let held = send(&connections).await.unwrap();
        advance(Duration::from_secs(2)).await;
        let body = held.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert!(lock(&connections.kept.idle).is_empty());
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        assert_eq!(lock(&connections.kept.idle).len(), 1);
    }

    #[tokio::test]
    async fn an_idle_http1_connection_past_its_age_is_not_checked_out() {
        let (addr, accepted) = upstream(false, false).await;
        let connections = aged(addr, None, Duration::from_secs(4));
        exchange(&connections).await;
        advance(Duration::from_millis(3500)).await;
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        // Past its age before the look (every `LOOK`) has come.
        advance(Duration::from_millis(600)).await;
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_http2_connection_past_its_age_takes_no_new_stream_and_ends_its_own() {
        let (addr, accepted) = upstream(true, false).await;
        let connections = aged(addr, Some(100), Duration::from_secs(10));
        exchange(&connections).await;
        // A stream open across the age: its answer is held, not read.
        let held = send(&connections).await.unwrap();
        advance(Duration::from_secs(10)).await;
        exchange(&connections).await;
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            2,
            "the new request: a new connection"
        );
        let numbers = || {
            let shared = lock(&connections.kept.http2);
            shared
                .iter()
                .map(|shared| shared.number)
                .collect::<Vec<_>>()
        };
        // Looked at while its stream is open, the old connection stays for it.
        connections.kept.look(Instant::now());
        assert_eq!(numbers(), [1, 2]);
        let body = held.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello", "the old connection's stream ends whole");
        // Its last stream ended: the look closes it, and keeps the new one.
        connections.kept.look(Instant::now());
        assert_eq!(numbers(), [2]);
    }

    #[tokio::test]
    async fn connections_made_together_are_retired_apart() {
        let (addr, _) = upstream(false, false).await;
        let now = Instant::now();
        let age = Duration::from_secs(100);
        let connections = aged(addr, None, age);
        let ages: Vec<Duration> = (0..20)
            .map(|_| connections.kept.retire_at(now).unwrap() - now)
            .collect();
        assert_eq!(ages[0], age, "the first: all of it");
        // Between nine tenths of the age and all of it, and no two within 0.3 s of each other
        // (twenty multiples of the golden ratio leave gaps of at least 0.034 between their
        // fractions).
        let mut sorted = ages.clone();
        sorted.sort();
        assert!(sorted[0] > Duration::from_secs(90), "{sorted:?}");
        assert!(
            sorted
                .windows(2)
                .all(|pair| pair[1] - pair[0] > Duration::from_millis(300))
        );
        // An age past the clock's range never comes, and is no panic.
        let forever = aged(addr, None, Duration::MAX);
        assert_eq!(forever.kept.retire_at(now), None);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_with_no_request_to_notice() {
        let (addr1, _) = upstream(false, false).await;
        let (addr2, _) = upstream(true, false).await;
        let (http1, http2) = (connections(addr1, false), connections(addr2, true));
        exchange(&http1).await;
        exchange(&http2).await;
        assert_eq!(lock(&http1.kept.idle).len(), 1);
        assert!(!lock(&http2.kept.http2).is_empty());
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&http1.kept.idle).len(), 1, "not yet idle long enough");
        assert!(!lock(&http2.kept.http2).is_empty());
        tokio::time::advance(IDLE_TIMEOUT * 2).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&http1.kept.idle).len(), 0);
        assert!(lock(&http2.kept.http2).is_empty());
    }

    /// An upstream that answers one request on each connection and closes it when told, as a
    /// server with a keep-alive timeout of its own does.
    async fn closing_upstream() -> (SocketAddr, Arc<tokio::sync::Notify>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let close = Arc::new(tokio::sync::Notify::new());
        let told = close.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let told = told.clone();
                tokio::spawn(async move {
                    let mut buf = [0; 1024];
                    let _ = stream.read(&mut buf).await.unwrap();
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    stream.write_all(answer).await.unwrap();
                    told.notified().await;
                });
            }
        });
        (addr, close)
    }

    /// Tells `upstream` to close its connections, and waits until the idle one of
    /// `connections` has seen it (without looking at it the way the pool does).
    async fn close_and_wait(connections: &Connections, upstream: &tokio::sync::Notify) {
        upstream.notify_waiters();
        let mut waited = 0;
        while lock(&connections.kept.idle)
            .first()
            .is_some_and(|idle| idle.handle.is_usable())
        {
            waited += 1;
            assert!(waited < 1000, "the close was never seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets the clock move by `by`, and the tasks woken run.
    async fn advance(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::resume();
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_goes_at_the_next_look_and_the_look_ends_with_it()
     {
        let (addr, upstream) = closing_upstream().await;
        let connections = connections(addr, false);
        // The exchange hands its connection back, which starts the task that looks.
        exchange(&connections).await;
        assert!(connections.kept.watched.load(Ordering::Relaxed));
        close_and_wait(&connections, &upstream).await;
        assert_eq!(lock(&connections.kept.idle).len(), 1);
        advance(LOOK).await;
        assert_eq!(
            lock(&connections.kept.idle).len(),
            0,
            "fresh, but closed by the upstream"
        );
        // Nothing left to look at: the task has ended.
        assert!(!connections.kept.watched.load(Ordering::Relaxed));

        // The next connection handed back starts it again.
        exchange(&connections).await;
        assert!(connections.kept.watched.load(Ordering::Relaxed));
        close_and_wait(&connections, &upstream).await;
        advance(LOOK).await;
        assert_eq!(lock(&connections.kept.idle).len(), 0);
    }

    #[tokio::test]
    async fn http2_requests_share_one_connection_at_once() {
        let (addr, accepted) = upstream(true, false).await;
        let connections = connections(addr, true);
        exchange(&connections).await;
        tokio::join!(
            exchange(&connections),
            exchange(&connections),
            exchange(&connections),
        );
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    /// A response body that never ends, as a long gRPC stream's.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    /// An h2c upstream allowing two streams at once on a connection, answering `/hold` with a
    /// body that never ends and anything else with `hello`, and counting the connections it
    /// accepts.
    async fn two_stream_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        counting(serve_two_streams).await
    }

    /// Serves `stream` as h2c allowing two streams at once, answering `/hold` with a body that
    /// never ends and anything else with `hello`.
    async fn serve_two_streams(stream: TcpStream) {
        let service = service_fn(|request: Request<Incoming>| async move {
            let body = if request.uri().path() == "/hold" {
                Endless.boxed_unsync()
            } else {
                Full::new(Bytes::from_static(b"hello")).boxed_unsync()
            };
            Ok::<_, Infallible>(Response::new(body))
        });
        let _ = server2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(2)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    #[tokio::test]
    async fn a_request_finding_its_http2_connection_full_opens_another() {
        let (addr, accepted) = two_stream_upstream().await;
        let connections = connections_of(addr, Some(2));
        let held = [
            send_to(&connections, "/hold").await.unwrap(),
            send_to(&connections, "/hold").await.unwrap(),
        ];
        // Past the upstream's two streams the request would wait on that connection for one of
        // them to end, which they never do.
        tokio::time::timeout(Duration::from_secs(10), exchange(&connections))
            .await
            .expect("answered on a connection of its own");
        assert_eq!(accepted.load(Ordering::Relaxed), 2);

        // Once the long ones end, the first connection has room again, and takes the next
        // requests: the second goes idle, to be closed.
        drop(held);
        exchange(&connections).await;
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        let kept = lock(&connections.kept.http2);
        let open: Vec<_> = kept
            .iter()
            .map(|shared| shared.streams.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(open, [0, 0], "every stream ended is counted out");
    }

    #[tokio::test]
    async fn a_request_finding_its_connections_full_and_no_more_to_be_had_waits_in_one() {
        // The upstream takes one connection, allowing two streams on it, and then no more.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(listener);
            serve_two_streams(stream).await;
        });
        let connections = Arc::new(connections_of(addr, Some(2)));
        let first = send_to(&connections, "/hold").await.unwrap();
        let _second = send_to(&connections, "/hold").await.unwrap();
        // No second connection can be made: the request waits on the first for a stream to
        // end, rather than failing as if the endpoint were down.
        let third = tokio::spawn({
            let connections = connections.clone();
            async move { exchange(&connections).await }
        });
        // Once it has found the connection full and tried for another, a stream ends.
        tokio::time::timeout(Duration::from_secs(10), async {
            while connections.kept.connects.load(Ordering::Acquire) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("another connection was tried");
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("answered once a stream ended")
            .unwrap();
    }

    #[tokio::test]
    async fn an_http2_connection_carrying_a_stream_is_not_idle() {
        let (addr, accepted) = two_stream_upstream().await;
        let connections = connections_of(addr, Some(2));
        let held = send_to(&connections, "/hold").await.unwrap();
        advance(IDLE_TIMEOUT + LOOK).await;
        assert_eq!(
            lock(&connections.kept.http2).len(),
            1,
            "a stream is open on it"
        );
        exchange(&connections).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 1);

        // Its idle time counts from the stream's end, not from when the stream began.
        advance(IDLE_TIMEOUT + LOOK).await;
        drop(held);
        // At least one look, which sees the stream ended.
        advance(2 * LOOK).await;
        assert_eq!(lock(&connections.kept.http2).len(), 1, "in use until now");
        advance(IDLE_TIMEOUT + LOOK).await;
        assert!(
            lock(&connections.kept.http2).is_empty(),
            "idle, once it ended"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let refusing = rampart_test_support::Refusing::bind().unwrap();
        let connections = connections(refusing.addr(), false);
        let err = send(&connections).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    }
}
