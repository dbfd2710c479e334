//! The rampart sidecar proxy, built from a [`Config`]: listeners that serve HTTP/1.1 and h2c on one
//! port, routing in file order, a pooled client per upstream, and a graceful drain.
//!
//! One request's way through it, as far as this crate goes today:
//!
//! listener (strict parsing: what hyper refuses, plus a bare LF in a head and Content-Length with
//! Transfer-Encoding, gets 400 and the connection closed) -> CONNECT refused (405) -> a
//! `Content-Length` over `max_request_body` refused (413) -> route match (or 404 `no-route`) -> deadline (the route's
//! `timeout`, capped by the request's own `x-rampart-deadline` or `grpc-timeout`) -> fault
//! injection (`[routes.fault]`: a delay, or an abort with `abort_status` and
//! `x-rampart-error: fault-injected`, the upstream untouched; the fallback answers it only when
//! its `on` names `fault-injected`) -> fallback (`[routes.fallback]`:
//! the configured answer, marked `x-rampart-fallback: <reason>`, when what follows gives up with a
//! reason in `on`, or the upstream answers a 5xx and `on` names `5xx`; with `stale`, the last good
//! answer to the same GET while it is fresh enough) -> the route's stack: retry (`[routes.retry]`: budget, backoff, body replay, another endpoint) -> endpoint
//! (round-robin over those whose circuit breaker admits, backups only when no primary does) ->
//! per-try timeout -> pooled connection -> upstream.
//!
//! The request goes out with the endpoint's address and the original path and query (an
//! absolute-form target or a Host header never picks a destination), without hop-by-hop headers,
//! with the client's address appended to `x-forwarded-for` and the time left in the deadline
//! header. Bodies stream both ways, each held to the listener's `body_idle_timeout`, the request
//! body to `max_request_body` too (past either before the upstream answered: 408 or 413, and the
//! connection closed); a request body that may be retried is copied as it streams, up to
//! `max_replay_body`. An HTTP/1.1 upgrade (a WebSocket) is sent once, and after the upstream's 101
//! the two connections are joined byte for byte until either closes. A keep-alive connection with
//! no request in flight for `idle_timeout` is closed. What goes wrong becomes a response in one place,
//! [`rampart_http::rescue()`], with `x-rampart-error` saying why: `timeout` (504) when the
//! route's timeout passes before the response's last byte (after the head was sent, the response
//! is cut off instead), `upstream-connect` (502) when no connection could be made,
//! `upstream-reset` (502) when the upstream dropped the exchange, `breaker-open` or
//! `no-healthy-endpoint` (503) when no endpoint's breaker admits the request,
//! `retry-budget-exhausted` (503) when a failure without a response called for a retry the
//! budget refused. An upstream's own failing response, retried or not, reaches the client as it is.
//!
//! Not wired in yet: hedging, the P2C and other balancers (`balance` is read, round-robin is
//! used), limits, async routes; `stack.rs` says where each goes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use rampart_config::Config;
//! use rampart_proxy::{Drain, Proxy};
//! use rampart_test_support::{Behavior, Upstream};
//!
//! let upstream = Upstream::start(Behavior::ok("hello")).await?;
//! let config = Config::from_str(
//!     &format!(
//!         r#"
//!         [[listeners]]
//!         listen = "127.0.0.1:0"
//!
//!         [[routes]]
//!         upstream = "hello"
//!
//!         [upstreams.hello]
//!         endpoints = ["{}"]
//!         "#,
//!         upstream.addr()
//!     ),
//!     "rampart.toml",
//! )?;
//! let proxy = Proxy::start(&config).await?;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
//! let uri = format!("http://{}/hi", proxy.listeners()[0].addr).parse()?;
//! let response = client.get(uri).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "hello");
//! assert_eq!(upstream.requests()[0].path, "/hi");
//!
//! assert_eq!(proxy.shutdown().await, Drain::Complete);
//! # Ok(())
//! # }
//! ```

mod body;
mod fallback;
mod fault;
mod forward;
mod listener;
mod retry;
mod route;
mod stack;
mod strict;
mod upgrade;
mod upstream;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rampart_config::Config;
use rampart_policy::rng::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy: its listeners accept and forward until [`Proxy::shutdown`].
///
/// Dropping it without a shutdown stops every listener and cuts every connection at once.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<BoundListener>,
    // Sending `true` tells every listener to stop accepting and drain.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Drain>>,
}

/// A listener and the address it is bound to (the port the kernel chose, for port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundListener {
    /// The listener's name in the configuration.
    pub name: String,
    /// The address it accepts connections on.
    pub addr: SocketAddr,
}

/// How a [`Proxy::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every in-flight request finished within the drain timeout.
    Complete,
    /// The drain timeout passed first; the connections still open were cut.
    TimedOut,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener's address could not be bound.
    #[error("listener \"{name}\" cannot listen on {addr}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address in the configuration.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A value the configuration accepted cannot be used in HTTP (a header name in a route's
    /// `match`, an endpoint that is no URI authority); `rampart-config` should have refused it.
    #[error("{path}: {message}")]
    Invalid {
        /// The key path, e.g. `routes[0].match.headers`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A route's fallback `body_file` could not be read.
    #[error("{path}: cannot read {}: {source}", file.display())]
    BodyFile {
        /// The key path, e.g. `routes[0].fallback.body_file`.
        path: String,
        /// The file, as resolved by the configuration.
        file: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

// === impl Proxy ===

impl Proxy {
    /// Binds every listener of `config` and starts serving.
    ///
    /// Every address is bound before any is served, so a failure leaves nothing running. Must be
    /// called inside a tokio runtime with the IO and time drivers enabled.
    pub async fn start(config: &Config) -> Result<Proxy, Error> {
        Proxy::start_with_rng(config, Rng::thread()).await
    }

    /// Like [`Proxy::start`], with every random choice the proxy makes per request (for now,
    /// fault injection's `delay_percent` and `abort_percent`) drawn from `rng` instead of
    /// [`Rng::thread()`]: tests pass `Rng::fixed(..)` or `Rng::seeded(..)` to make them
    /// reproducible. Every route shares the one `rng`, so a seeded sequence runs across routes in
    /// the order requests draw from it.
    pub async fn start_with_rng(config: &Config, rng: Rng) -> Result<Proxy, Error> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Ok((u.name.as_str(), Arc::new(upstream::Pool::new(u)?))))
            .collect::<Result<HashMap<_, _>, Error>>()?;

        let mut bound = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let router = route::Router::new(config, &listener.name, &upstreams, &rng)?;
            let tcp = listener::bind(listener).await?;
            bound.push((listener, tcp, router));
        }

        let (stop, _) = watch::channel(false);
        let mut listeners = Vec::with_capacity(bound.len());
        let mut tasks = Vec::with_capacity(bound.len());
        for (listener, tcp, router) in bound {
            let addr = tcp.local_addr().map_err(|source| Error::Bind {
                name: listener.name.clone(),
                addr: listener.listen,
                source,
            })?;
            listeners.push(BoundListener {
                name: listener.name.clone(),
                addr,
            });
            let serve = listener::Serve::new(listener, router, config.runtime.drain_timeout);
            tasks.push(tokio::spawn(serve.run(tcp, stop.subscribe())));
        }
        Ok(Proxy {
            listeners,
            stop,
            tasks,
        })
    }

    /// The listeners, in configuration order, with the addresses they are bound to.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// Stops accepting connections, lets in-flight requests finish up to the configured
    /// `drain_timeout` (`[runtime]`), then cuts what is left.
    ///
    /// Idle keep-alive connections close at once; an HTTP/2 client is sent GOAWAY. Tunnels of
    /// upgraded connections (WebSockets) are closed at once too: they may last for hours, and the
    /// drain is for requests.
    pub async fn shutdown(mut self) -> Drain {
        // No receiver left means every listener has already ended.
        let _ = self.stop.send(true);
        let mut drain = Drain::Complete;
        for task in std::mem::take(&mut self.tasks) {
            // A listener task that panicked has dropped its connections: nothing is left of it.
            if let Ok(Drain::TimedOut) = task.await {
                drain = Drain::TimedOut;
            }
        }
        drain
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Each listener task owns its connections; aborting it drops them all.
        for task in &self.tasks {
            task.abort();
        }
    }
}
