//! Listeners: accept connections, serve HTTP/1.1 and h2c prior knowledge on one port, close
//! connections idle for `idle_timeout` (and cut those whose client reads nothing, see
//! [`crate::stall`]), park idle HTTP/1.1 connections past `park_idle_above` open ones, run the
//! tunnels of upgraded connections, drain.
//!
//! A parked connection is one hyper has let go between two requests: its socket, its service
//! and the framing state of [`StrictIo`](crate::strict::StrictIo) wait in the task, without
//! hyper's read and write buffers, until the client sends again.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::HttpService;
use hyper::service::service_fn;
use prometheus_client::metrics::gauge::Gauge;
use rampart_config::Listener;
use rampart_policy::error::BoxError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::conn::{Builders, Connection};
use crate::frames::Conduct;
use crate::metrics::ListenerMetrics;
use crate::route::Router;
use crate::stall::unmoved_for;
use crate::turn;
use crate::upgrade::Tunnel;
use crate::woken::{Wakes, WhenWoken};
use crate::{Drain, Error, forward};

/// How long to wait before accepting again after an accept error: these are resource shortages
/// (out of file descriptors, most often), and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A request whose client resets it (or goes away) before its answer, this soon after it
/// began, was reset early: the shape of a rapid reset that waits for each stream to be taken up
/// before resetting it, which the HTTP/2 layer's bound on streams reset before they are taken up
/// does not see, and which makes the upstream do the work of each stream (Envoy's
/// `premature_reset_min_stream_lifetime_seconds`).
const EARLY_RESET: Duration = Duration::from_secs(1);

/// A connection whose client reset at least half of its requests early, counted once it has
/// made this many (or at once when half of this many are early resets), is closed (Envoy's
/// `premature_reset_total_stream_count`). A client that cancels a call now and then, as gRPC
/// clients do on deadlines, stays far below half.
const EARLY_RESETS_SEEN_AFTER: u64 = 500;

/// How long a connection closed for a flood of control frames is given to send its GOAWAY.
const GOAWAY_FLUSH: Duration = Duration::from_millis(100);

/// Requests a client sent GOAWAY for misbehaving may still begin before its connection is cut:
/// a few may cross the GOAWAY on the wire.
const IGNORED_GOAWAY: u64 = 32;

/// Binds the listener's address.
pub(crate) async fn bind(listener: &Listener) -> Result<TcpListener, Error> {
    TcpListener::bind(listener.listen)
        .await
        .map_err(|source| Error::Bind {
            name: listener.name.clone(),
            addr: listener.listen,
            source,
        })
}

/// One listener's accept loop, with what each connection needs.
pub(crate) struct Serve {
    builders: Arc<Builders>,
    // Swapped whole by a reload.
    routes: Arc<ArcSwap<Router>>,
    // One permit per open connection: past `max_connections`, new ones are closed at once.
    connections: Arc<Semaphore>,
    // Whether the last connection was refused: one warning for each spell of refusals.
    full: AtomicBool,
    // Past this many open connections, idle HTTP/1.1 ones are parked.
    park_idle_above: i64,
    limits: forward::Limits,
    metrics: ListenerMetrics,
    idle_timeout: Duration,
    // How long a client may take nothing of an answer ready for it: `body_idle_timeout`.
    stall_timeout: Duration,
    drain_timeout: Duration,
}

impl Serve {
    pub(crate) fn new(
        listener: &Listener,
        routes: Arc<ArcSwap<Router>>,
        metrics: ListenerMetrics,
        drain_timeout: Duration,
    ) -> Serve {
        Serve {
            builders: Arc::new(Builders::new(listener)),
            routes,
            connections: Arc::new(Semaphore::new(listener.max_connections as usize)),
            full: AtomicBool::new(false),
            park_idle_above: i64::from(listener.park_idle_above),
            limits: forward::Limits::new(listener),
            metrics,
            idle_timeout: listener.idle_timeout,
            stall_timeout: listener.body_idle_timeout,
            drain_timeout,
        }
    }

    /// Accepts until `stop` turns true (or its sender is gone), then drains.
    pub(crate) async fn run(self, tcp: TcpListener, mut stop: watch::Receiver<bool>) -> Drain {
        let mut connections = JoinSet::new();
        // Accepts failing (out of file descriptors, most often): said once for the spell, as
        // the kernel's queue holds the clients meanwhile and nothing else would show it.
        let mut failing = false;
        loop {
            tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("accepting connections again");
                        }
                        if let Some(connection) = self.connection(stream, peer, stop.clone()) {
                            connections.spawn(connection);
                        }
                    }
                    Err(err) => {
                        self.metrics.accept_failures.inc();
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(
                                error = %err,
                                "cannot accept connections: clients wait in the kernel's queue \
                                 until it passes, counted in \
                                 rampart_listener_accept_failures_total (out of file descriptors: \
                                 raise `ulimit -n`, or lower `max_connections`)"
                            );
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                // Reap finished connections, so the set holds only open ones.
                Some(_) = connections.join_next() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        // Closing the port first: a client connecting now is refused rather than left waiting.
        drop(tcp);
        // Each connection saw `stop` too: it finishes its requests and closes.
        let all_closed = async { while connections.join_next().await.is_some() {} };
        let drain = match tokio::time::timeout(self.drain_timeout, all_closed).await {
            Ok(()) => Drain::Complete,
            Err(_) => Drain::TimedOut,
        };
        // Cuts the connections still open after the drain timeout; a no-op after a full drain.
        connections.shutdown().await;
        drain
    }

    // The future serving one connection, or `None` when the listener is full and the connection
    // is closed at once.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.metrics.refused.inc();
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %peer,
                    "listener full (max_connections): new connections are closed at once, counted in rampart_listener_refused_connections_total"
                );
            }
            return None;
        };
        self.full.store(false, Ordering::Relaxed);
        // Small request and response heads must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(self.metrics.clone()));
        let service = {
            let routes = self.routes.clone();
            let activity = activity.clone();
            let limits = self.limits;
            service_fn(move |request| {
                let busy = Busy::start(activity.clone());
                // Each request takes the routes in force when it arrives, and keeps them to its
                // end: a reload reaches open connections without changing a request in flight.
                let router = routes.load_full();
                // Boxed: hyper keeps room for one request's future in every connection, idle
                // or not, and this one is several KiB.
                pin_in_box!(async move {
                    let handled = forward::handle(request, &router, peer, limits).await;
                    if let Some(reason) = handled.unrouted {
                        busy.activity.metrics.unrouted(reason);
                    }
                    if let Some(tunnel) = handled.tunnel {
                        busy.activity.open_tunnel(tunnel);
                    }
                    let response = handled.response;
                    Ok::<_, Infallible>(response.map(|body| busy.answer(body)))
                })
            })
        };
        let builders = self.builders.clone();
        let idle_timeout = self.idle_timeout;
        let stall_timeout = self.stall_timeout;
        let park_idle_above = self.park_idle_above;
        let metrics = self.metrics.clone();
        Some(async move {
            let _open = Counted::new(&metrics.connections);
            // Nothing more to do for a client gone, or silent for the header read timeout,
            // before its protocol is known; nor for one still silent when a drain begins.
            let connection = tokio::select! {
                connection = builders.serve(stream, service, &activity.conduct) => connection,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(mut connection) = connection else {
                return;
            };
            let mut closing = false;
            // The drain signal and the timers are polled only when woken, not at each wake-up
            // of the connection's socket.
            let wakes = Wakes::new();
            // Set by an idle close: an HTTP/2 client closes only after answering the GOAWAY's
            // PING, and one that never reads would hold the connection for ever.
            let mut cut_at = None;
            let mut misbehaved = false;
            // The requests begun when the client was sent GOAWAY for misbehaving.
            let mut warned_at: Option<u64> = None;
            loop {
                let quiet = tokio::select! {
                    // A connection error (a client gone, a malformed request answered 400) ends
                    // only this connection; there is nothing more to do with it here.
                    served = until_quiet(connection.as_mut(), &activity, || {
                        !closing && metrics.connections.get() > park_idle_above
                    }) => match served {
                        Served::Closed => break,
                        Served::Quiet => true,
                    },
                    // A drain: the requests in flight finish, then the connection closes (an
                    // HTTP/2 client is sent GOAWAY).
                    _ = WhenWoken::new(stop.wait_for(|stop| *stop), &wakes), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        false
                    }
                    // One branch for both clocks: each branch costs every poll of the task.
                    lapse = WhenWoken::new(
                        activity.lapse((!closing).then_some(idle_timeout), stall_timeout),
                        &wakes,
                    ) => match lapse {
                        Lapse::Idle => {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                            cut_at = Some(turn::now() + idle_timeout);
                            false
                        }
                        // A client that takes nothing of the answers ready for it (an HTTP/2
                        // client that never opens its window, which no write stall shows since
                        // nothing is written): closed, and the upstreams it held let go.
                        Lapse::Stalled => {
                            tracing::debug!(
                                %peer,
                                "a client took nothing of its answers for body_idle_timeout: closed"
                            );
                            break;
                        }
                    },
                    () = WhenWoken::new(sleep_until(cut_at), &wakes) => break,
                    // Heard while closing too: a client told to stop that goes on is cut.
                    () = WhenWoken::new(activity.conduct.misbehaved(), &wakes) => {
                        misbehaved = true;
                        false
                    }
                };
                // A flood of PING or SETTINGS frames: GOAWAY, and closed once it is out (the
                // client is read no further). A rapid reset (the client resets most of its
                // requests just after they began, each one work for the upstream): GOAWAY, and
                // the requests in flight may finish, as on an idle close; a client whose calls
                // time out in a brownout is no worse off.
                if misbehaved && let Some(warned_at) = warned_at {
                    misbehaved = false;
                    // hyper's graceful GOAWAY names no last stream until the client answers its
                    // PING: one that never does may go on opening streams, each reset early
                    // and each work for an upstream, for an `idle_timeout`. Past a few, or on a
                    // flood, cut.
                    let went_on =
                        activity.requests.load(Ordering::Relaxed) > warned_at + IGNORED_GOAWAY;
                    if went_on || activity.conduct.is_deaf() {
                        tracing::debug!(
                            %peer,
                            "a client went on misbehaving after its GOAWAY: closed"
                        );
                        if activity.conduct.is_deaf() {
                            let _ = tokio::time::timeout(GOAWAY_FLUSH, connection.as_mut()).await;
                        }
                        break;
                    }
                }
                if misbehaved {
                    misbehaved = false;
                    warned_at = Some(activity.requests.load(Ordering::Relaxed));
                    tracing::debug!(
                        %peer,
                        "a client reset most of its requests within a second of sending them, or flooded control frames: GOAWAY"
                    );
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    if activity.conduct.is_deaf() {
                        let _ = tokio::time::timeout(GOAWAY_FLUSH, connection.as_mut()).await;
                        break;
                    }
                    cut_at = Some(turn::now() + idle_timeout);
                }
                if !quiet {
                    continue;
                }
                // Waiting for the next request, the connection gives back hyper's buffers.
                let Some(parked) = Connection::park(connection) else {
                    break;
                };
                let counted = Counted::new(&metrics.parked);
                let resume = tokio::select! {
                    readable = parked.readable() => readable.is_ok(),
                    // Closed at once, as hyper closes an idle connection on a drain, or past
                    // the idle timeout, as an idle connection hyper holds is (the head's own
                    // timeout counts from its first byte: `head_timeout.rs`).
                    _ = stop.wait_for(|stop| *stop) => false,
                    () = activity.idle_for(idle_timeout) => false,
                };
                drop(counted);
                if !resume {
                    break;
                }
                connection = builders.resume(parked);
            }
            // An upgraded connection lives on as a tunnel, until a side closes or a drain begins.
            if let Some(tunnel) = activity.take_tunnel() {
                tokio::select! {
                    () = tunnel => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            }
            drop(permit);
        })
    }
}

/// One more in a gauge, while it lives.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How serving a connection until it may be parked ended.
enum Served {
    /// The connection ended.
    Closed,
    /// No request is in flight and hyper holds nothing of one (see [`Connection::is_quiet`]).
    Quiet,
}

/// Serves `connection` until it ends or, when it is quiet with no request in flight (hyper is
/// waiting for the next request's first byte), until `may_park` says so.
async fn until_quiet<S, B>(
    mut connection: Pin<&mut Connection<S>>,
    activity: &Activity,
    may_park: impl Fn() -> bool,
) -> Served
where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| match connection.as_mut().poll(cx) {
        Poll::Ready(_) => Poll::Ready(Served::Closed),
        Poll::Pending if activity.is_idle() && connection.is_quiet() && may_park() => {
            Poll::Ready(Served::Quiet)
        }
        Poll::Pending => Poll::Pending,
    })
    .await
}

// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection's task knows of its requests: how many are in flight and since when none
/// is (for `idle_timeout`), and the tunnel an upgrade left to run. hyper's HTTP/1.1 has no idle
/// timer of its own, and its HTTP/2 keep-alive pings a peer rather than close an idle one.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests begun, and those of them reset early ([`EARLY_RESET`]).
    requests: AtomicU64,
    early_resets: AtomicU64,
    /// The listener's series, for the requests it answers before any route.
    metrics: ListenerMetrics,
    /// How the client behaves: told when early resets are past the bound
    /// ([`EARLY_RESETS_SEEN_AFTER`]), and by the connection's frames.
    conduct: Arc<Conduct>,
    // When the last request ended, in milliseconds since `epoch`.
    last_end: AtomicU64,
    /// Answers whose last news is that something is ready for the client (their head, a piece
    /// of body): hyper asks for more only once the client has taken it, or has room for it.
    ready: AtomicUsize,
    /// Times hyper came back for more of such an answer: the client is taking.
    taken: AtomicU64,
    // Taken once, when the connection has handed its IO over; locked only by an upgrade.
    tunnel: Mutex<Option<Tunnel>>,
}

impl Activity {
    fn new(metrics: ListenerMetrics) -> Activity {
        Activity {
            metrics,
            epoch: turn::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            early_resets: AtomicU64::new(0),
            conduct: Arc::default(),
            last_end: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            tunnel: Mutex::new(None),
        }
    }

    // Whether no request is in flight.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    // Since when no request has been in flight, or `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.last_end.load(Ordering::Acquire)))
    }

    // Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            match self.idle_since() {
                Some(since) if turn::now() >= since + timeout => return,
                Some(since) => tokio::time::sleep_until(since + timeout).await,
                // Looked at again a timeout later: a request ending meanwhile restarts the count.
                None => tokio::time::sleep(timeout).await,
            }
        }
    }

    // Resolves once no request has been in flight for `idle` (if given), or answers have been
    // ready for the client and it has taken nothing of them for `stall`, whichever comes first.
    async fn lapse(&self, idle: Option<Duration>, stall: Duration) -> Lapse {
        let idle = async {
            match idle {
                Some(idle) => self.idle_for(idle).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = idle => Lapse::Idle,
            // Answers ready for the client, and nothing of them taken over two looks.
            () = unmoved_for(stall, || {
                (self.ready.load(Ordering::Relaxed) > 0)
                    .then(|| self.taken.load(Ordering::Relaxed))
            }) => Lapse::Stalled,
        }
    }

    // A request reset early: past the bound, the connection's task is told.
    fn reset_early(&self) {
        let early = self.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        if early * 2 >= requests.max(EARLY_RESETS_SEEN_AFTER) {
            self.conduct.misbehave(false);
        }
    }

    fn open_tunnel(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
    }

    fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// What a connection's clocks found ([`Activity::lapse`]).
enum Lapse {
    /// No request in flight for `idle_timeout`.
    Idle,
    /// Answers ready for the client, nothing of them taken for `body_idle_timeout`.
    Stalled,
}

/// One request in flight on a connection, from its head until its response's last byte was
/// sent (or the exchange was dropped).
struct Busy {
    activity: Arc<Activity>,
    started: Instant,
    /// The request has its answer; dropped before, it was reset (or its client went away).
    answered: bool,
    /// Counted in [`Activity::ready`]: its answer has something for the client, not yet taken.
    ready: bool,
}

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.conduct.called();
        Busy {
            activity,
            started: turn::now(),
            answered: false,
            ready: false,
        }
    }

    // The response that keeps the request counted in flight until its body ends: its head is
    // ready for the client.
    fn answer(mut self, body: ResponseBody) -> Tracked {
        self.answered = true;
        self.set_ready(true);
        Tracked { body, busy: self }
    }

    // Whether the answer has something for the client that it has not taken.
    fn set_ready(&mut self, ready: bool) {
        if ready == self.ready {
            return;
        }
        self.ready = ready;
        if ready {
            self.activity.ready.fetch_add(1, Ordering::Relaxed);
        } else {
            self.activity.ready.fetch_sub(1, Ordering::Relaxed);
            self.activity.taken.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.ready {
            self.activity.ready.fetch_sub(1, Ordering::Relaxed);
        }
        let now = turn::now();
        if !self.answered && now.saturating_duration_since(self.started) < EARLY_RESET {
            self.activity.reset_early();
        }
        let since_epoch = now.saturating_duration_since(self.activity.epoch);
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        // Stored before the count drops, so an idle count always reads a fresh end.
        self.activity.last_end.store(millis, Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it is done.
    pub(crate) struct Tracked {
        #[pin]
        body: ResponseBody,
        busy: Busy,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        // Asked for more: the client took what was ready, or has room for more.
        this.busy.set_ready(false);
        let polled = this.body.as_mut().poll_frame(cx);
        // An answer flowing: the client's pings to size its window are its due.
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data()) {
            this.busy.activity.conduct.called();
            if !this.body.is_end_stream() {
                this.busy.set_ready(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
