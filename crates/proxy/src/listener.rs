//! Listeners: accept connections, serve HTTP/1.1 and h2c prior knowledge on one port, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rampart_config::{Listener, ListenerProtocol};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::route::Router;
use crate::{Drain, Error, forward};

/// hyper refuses a read buffer below this size.
const MIN_BUF_SIZE: usize = 8192;

/// How long to wait before accepting again after an accept error: these are resource shortages
/// (out of file descriptors, most often), and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    builder: auto::Builder<TokioExecutor>,
    // Swapped whole by a reload.
    routes: Arc<ArcSwap<Router>>,
    // One permit per open connection: past `max_connections`, new ones are closed at once.
    connections: Arc<Semaphore>,
    drain_timeout: Duration,
}

impl Serve {
    pub(crate) fn new(
        listener: &Listener,
        routes: Arc<ArcSwap<Router>>,
        drain_timeout: Duration,
    ) -> Serve {
        Serve {
            builder: builder(listener),
            routes,
            connections: Arc::new(Semaphore::new(listener.max_connections as usize)),
            drain_timeout,
        }
    }

    /// Accepts until `stop` turns true (or its sender is gone), then drains.
    pub(crate) async fn run(self, tcp: TcpListener, mut stop: watch::Receiver<bool>) -> Drain {
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(connection) = self.connection(stream, peer, &graceful) {
                            connections.spawn(connection);
                        }
                    }
                    Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
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
        let drain = match tokio::time::timeout(self.drain_timeout, graceful.shutdown()).await {
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
        graceful: &GracefulShutdown,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        // Small request and response heads must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let routes = self.routes.clone();
        // Each request takes the routes in force when it arrives, and keeps them to its end: a
        // reload reaches open connections without changing a request in flight.
        let service = service_fn(move |request| forward::handle(request, routes.load_full(), peer));
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        Some(async move {
            // A connection error (a client gone, a malformed request answered 400) ends only this
            // connection; there is nothing more to do with it here.
            let _ = connection.await;
            drop(permit);
        })
    }
}

// The connection settings of a listener.
fn builder(listener: &Listener) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_header_bytes = usize::try_from(listener.max_header_bytes.0).unwrap_or(usize::MAX);
    builder
        .http1()
        // The header read timeout needs a timer to run on.
        .timer(TokioTimer::new())
        .header_read_timeout(listener.header_read_timeout)
        .max_headers(listener.max_headers as usize)
        // The head must fit in the read buffer: a larger one is answered 431.
        .max_buf_size(max_header_bytes.max(MIN_BUF_SIZE));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(listener.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    match listener.protocol {
        ListenerProtocol::Auto => builder,
        ListenerProtocol::Http1 => builder.http1_only(),
        ListenerProtocol::Http2 => builder.http2_only(),
    }
}
