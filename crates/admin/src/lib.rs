//! The rampart admin API, on `[admin] listen` (127.0.0.1:9901 by default): what an operator
//! reads of a running proxy, and the few things they may change.
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /` | the live dashboard (and its `dashboard.js`, `dashboard.css` and `targets.json`), served from the binary |
//! | `GET /metrics` | the proxy's registry in the OpenMetrics text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once the proxy has started (configuration loaded, listeners bound) |
//! | `GET /api/stats` | JSON: every route and upstream with its endpoints (see [`json`]) |
//! | `GET /api/events` | Server-Sent Events: `stats` every second (the same JSON), `transition` at each breaker transition or health change |
//! | `GET /hystrix.stream` | Hystrix metrics stream (SSE, `?delay=` milliseconds, 500 by default): a `HystrixCommand` per route, a `HystrixThreadPool` per upstream, for Hystrix Dashboard and Turbine |
//! | `POST /api/breakers/<upstream>/<endpoint or *>` | `{"state": "open" \| "closed" \| "auto"}`: force the breaker, or release it |
//! | `POST /api/reload` | re-reads the configuration file, as SIGHUP does |
//! | `GET /api/outbox`, `/api/outbox/<id>`, `/api/outbox/dead` | the outbox of the async routes: the counts, one message, the dead-letter list in pages (`?route=`, `?after=`, `?limit=`) |
//! | `POST /api/outbox/<id>/redrive`, `/api/outbox/dead/redrive` | a dead message, or every one (`?route=`), back in its queue |
//!
//! The POST calls need `Authorization: Bearer <token>`, the token being the value of the
//! environment variable `[admin] token_env` names, read at start; without one they are refused
//! (403), and with a wrong or missing token they are 401. docs/admin.md has the details.
//!
//! The server is HTTP/1.1 only, and reads the proxy through a [`ProxyHandle`]: it never takes a
//! lock the request path takes.
//!
//! ```no_run
//! # async fn run(proxy: rampart_proxy::Proxy, config: rampart_config::Config) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use rampart_admin::{Admin, ReloadError};
//!
//! let reload = Arc::new(|| Err(ReloadError::Invalid("no file to reload".into())));
//! let admin = Admin::start(&config.admin, proxy.handle(), reload).await?;
//! println!("admin API on http://{}", admin.addr());
//! admin.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod auth;
mod dashboard;
mod events;
mod fleet;
mod hystrix;
pub mod json;
mod outbox;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rampart_proxy::{ProxyHandle, StallIo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::Token;

pub use crate::fleet::{Fleet, InvalidTarget, Target};

/// The admin API's private parsers, for the fuzz targets in `fuzz/` only: built with
/// `--cfg fuzzing`, which `cargo fuzz` sets.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// A path segment with its `%XX` escapes decoded, as the endpoint routes read it.
    pub fn decode_segment(segment: &str) -> String {
        crate::api::decode(segment)
    }
}

/// How long the answers under way when the admin API stops may take to finish (an event stream
/// ends at once, with its last chunk): past it, their connections are cut.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// How long to wait before accepting again after an accept error.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// The most connections the admin API holds open; past it, new ones are closed at once, so that
/// clients of the admin port cannot take the descriptors the proxy's listeners need.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a request head may take to arrive whole, and an idle keep-alive connection may wait
/// for its next request: a client that opens connections and sends nothing, or a few bytes,
/// holds none of them longer.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client may take nothing written to it before its connection is closed: a reader
/// of an event stream that is stuck, or gone without closing, would otherwise hold its
/// connection, and what was queued for it, until the admin port's connections ran out.
pub const WRITE_STALL: std::time::Duration = crate::events::STALLED_AFTER;

/// What the kernel may hold of an admin connection's answer unsent (it doubles the figure
/// for its own bookkeeping). Left to grow, Linux lets it reach 4 MiB, about forty minutes of an
/// event stream: a reader that takes nothing would hold its stream's place that long before a
/// write waited and [`WRITE_STALL`] began to count. 16 KiB is a few seconds of a stream, and
/// still more than a loopback scrape needs to go at full speed.
const SEND_BUFFER: usize = 16 * 1024;

/// What `POST /api/reload` calls: reads the configuration file again and serves it, as SIGHUP
/// does, answering the summary of what changed. It may block (reading a file may), so it is
/// called on a blocking thread, one call at a time.
pub type Reload = Arc<dyn Fn() -> Result<String, ReloadError> + Send + Sync>;

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The file is unreadable or invalid (400); every error, one per line.
    Invalid(String),
    /// The file is valid but cannot be applied, e.g. it changes a listener (422).
    Refused(String),
    /// Another reload is under way, one SIGHUP asked for (409): this one is not made, rather
    /// than made later with whatever file is there then.
    Busy,
}

/// The running admin server; dropping it stops it too.
#[derive(Debug)]
pub struct Admin(Server);

/// An HTTP/1.1 server answering each request with a handler, until told to stop.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// What every request of the admin API reads.
struct State {
    /// The address the admin API listens on, which names it on the dashboard.
    addr: SocketAddr,
    proxy: ProxyHandle,
    token: Token,
    reload: Reload,
    /// The event streams (`/api/events`, `/hystrix.stream`) that may be open at once: each
    /// holds a task and a connection for as long as its reader stays.
    streams: Arc<tokio::sync::Semaphore>,
    /// The one reload that may run at a time (see `api::reload`).
    reloading: Arc<tokio::sync::Semaphore>,
}

/// How many event streams may be open at once: dashboards, Hystrix dashboards and Turbine
/// instances watching one rampart are a handful; a client opening streams without end must not
/// hold a task each.
pub const MAX_STREAMS: usize = 64;

// === impl Admin ===

impl Admin {
    /// Binds `config.listen` and serves the admin API for `proxy`; `reload` is what
    /// `POST /api/reload` calls. The token is read from the environment now.
    pub async fn start(
        config: &rampart_config::Admin,
        proxy: ProxyHandle,
        reload: Reload,
    ) -> io::Result<Admin> {
        let tcp = TcpListener::bind(config.listen).await?;
        Admin::start_on(tcp, config, proxy, reload)
    }

    /// Like [`Admin::start`], on `tcp`, bound to `config.listen` before: so that a process
    /// whose admin address is taken stops before it serves anything, as Envoy does.
    pub fn start_on(
        tcp: TcpListener,
        config: &rampart_config::Admin,
        proxy: ProxyHandle,
        reload: Reload,
    ) -> io::Result<Admin> {
        let token = Token::from_env(config.token_env.as_deref());
        Admin::serve(tcp, token, proxy, reload)
    }

    /// Like [`Admin::start`], with the token given instead of read from the environment (for an
    /// embedder that keeps its secrets elsewhere, and for tests, which cannot safely change
    /// the environment of a process running other tests). `None`, or an empty token, refuses
    /// every mutating call; the refusal names `config.token_env` as the variable to set.
    pub async fn start_with_token(
        config: &rampart_config::Admin,
        token: Option<String>,
        proxy: ProxyHandle,
        reload: Reload,
    ) -> io::Result<Admin> {
        let token = Token::new(config.token_env.as_deref(), token);
        let tcp = TcpListener::bind(config.listen).await?;
        Admin::serve(tcp, token, proxy, reload)
    }

    fn serve(
        tcp: TcpListener,
        token: Token,
        proxy: ProxyHandle,
        reload: Reload,
    ) -> io::Result<Admin> {
        let state = Arc::new(State {
            addr: tcp.local_addr()?,
            proxy,
            token,
            reload,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            reloading: Arc::new(tokio::sync::Semaphore::new(1)),
        });
        let server = Server::start(tcp, move |request| {
            let state = state.clone();
            async move { api::handle(request, &state).await }
        })?;
        Ok(Admin(server))
    }

    /// The address the admin API listens on (the port the kernel chose, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Stops accepting and closes every admin connection: an event stream ends cleanly, with
    /// its last chunk, and a call under way has a second to finish (its calls are short, and
    /// an operator's scrape is worth less than a prompt exit).
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

// === impl Server ===

impl Server {
    /// Answers every request on `tcp` with `handle`.
    fn start<H, F, B>(tcp: TcpListener, handle: H) -> io::Result<Server>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let addr = tcp.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(tcp, handle, stopped));
        Ok(Server {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// Stops accepting and closes every connection (see [`Admin::shutdown`]).
    async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // The serving task ends as told; a panic in it has nothing left to clean.
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// Accepts until `stop` says `true`, each connection in a task of `connections`, which are
// dropped (and so closed) with it.
async fn serve<H, F, B>(tcp: TcpListener, handle: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Accepts failing: said once for the spell, not every pause.
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = tcp.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("admin API: accepting connections again");
                }
                bound_sends(&stream);
                stream
            }
            // Out of file descriptors and the like: the next accept may do better, after a
            // pause, since retrying at once would spin while the shortage lasts.
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("admin API: accept failed: {err}; said once until it passes");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Finished connections are reaped as new ones come, so the set stays small.
        while connections.try_join_next().is_some() {}
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!("admin API: {MAX_CONNECTIONS} connections open, one more closed");
            continue;
        };
        let handle = handle.clone();
        let mut stopping = stop.clone();
        connections.spawn(async move {
            let _place = place;
            let stopped = stopping.clone();
            let service = service_fn(move |request| {
                let answer = handle(request);
                let stopped = stopped.clone();
                async move {
                    let answer = answer.await.map(|body| UntilStopped::new(body, stopped));
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(StallIo::new(stream, WRITE_STALL)), service);
            let mut connection = pin!(connection);
            // A client that goes away mid-request is no error worth a log line.
            let stopped = tokio::select! {
                _ = connection.as_mut() => false,
                _ = stopping.wait_for(|stop| *stop) => true,
            };
            if stopped {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
            }
        });
    }
    // Each connection saw `stop` too, and ends within its grace; the set cuts any left.
    let all_closed = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CLOSING_GRACE * 2, all_closed).await;
}

// Bounds what the kernel holds unsent for `stream` to [`SEND_BUFFER`]: where that fails, the
// connection is served as it is.
fn bound_sends(stream: &tokio::net::TcpStream) {
    if let Err(err) = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!("admin API: cannot bound a connection's send buffer: {err}");
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that ends, cleanly, when the admin API stops while it waits for more: an
    /// event stream then closes with its last chunk, as a client reads a stream the server
    /// ended, rather than cut in the middle of one with its connection.
    struct UntilStopped<B> {
        #[pin]
        inner: B,
        stop: watch::Receiver<bool>,
        // Made when the body first waits: most answers never do.
        stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<B> UntilStopped<B> {
    fn new(inner: B, stop: watch::Receiver<bool>) -> UntilStopped<B> {
        UntilStopped {
            inner,
            stop,
            stopped: None,
        }
    }
}

impl<B: Body> Body for UntilStopped<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let ready @ Poll::Ready(_) = this.inner.poll_frame(cx) {
            return ready;
        }
        let stopped = this.stopped.get_or_insert_with(|| {
            let mut stop = this.stop.clone();
            Box::pin(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
        });
        match stopped.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn an_admin_connection_holds_little_unsent_for_a_reader_that_takes_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let unsent = |stream: &TcpStream| socket2::SockRef::from(stream).send_buffer_size();
        // Over loopback the kernel starts a connection with room for megabytes.
        let before = unsent(&server).unwrap();
        bound_sends(&server);
        let after = unsent(&server).unwrap();
        // Linux doubles what is asked, and grows no further from there.
        assert!(after <= 2 * SEND_BUFFER, "{before} -> {after}");
    }
}
