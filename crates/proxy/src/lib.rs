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
//! answer to the same GET while it is fresh enough; a gRPC fallback answers gRPC requests only, a
//! plain one plain requests only) -> the route's stack: retry (`[routes.retry]`: budget, backoff, body replay, another endpoint) -> hedge
//! (`[routes.hedge]`: another endpoint when the head is slow to come, the first good answer
//! wins) -> the upstream's limits (`[upstreams.NAME.limits]`: rate, concurrency limit and pending
//! queue, shared by every route to it) -> balancer (`balance`, p2c-ewma by default, among the
//! endpoints that are healthy and whose circuit breaker admits; backups only when no primary
//! may) -> per-try timeout -> pooled connection -> upstream. Active health checks
//! (`[upstreams.NAME.health]`) run beside it, one task per endpoint, until the proxy shuts down.
//!
//! gRPC: errors made by rampart are gRPC-shaped (HTTP 200, `grpc-status`, `grpc-message`,
//! `x-rampart-error`); a call's `grpc-timeout` caps the route's timeout and goes upstream as the
//! time left; a call is retried on its `on` tokens with its body copied as it streams; a
//! `grpc-status` in the trailers feeds the endpoint's breaker when the body ends.
//!
//! The request goes out with the endpoint's address and the original path and query (an
//! absolute-form target or a Host header never picks a destination), without hop-by-hop headers,
//! with the client's address appended to `x-forwarded-for` and the time left in the deadline
//! header. Bodies stream both ways, each held to the listener's `body_idle_timeout`, the request
//! body to `max_request_body` too (past either before the upstream answered: 408 or 413, and the
//! connection closed); a request body that may be retried is copied as it streams, up to
//! `max_replay_body`. An HTTP/1.1 upgrade (a WebSocket) is sent once, and after the upstream's 101
//! the two connections are joined byte for byte until either closes. A keep-alive connection with
//! no request in flight for `idle_timeout` is closed, and one whose client takes nothing written
//! to it for `body_idle_timeout` is cut off. What goes wrong becomes a response in one place,
//! [`rampart_http::rescue()`], with `x-rampart-error` saying why: `timeout` (504) when the
//! route's timeout passes before the response's last byte (after the head was sent, the response
//! is cut off instead; a gRPC call ends with trailers carrying the reason's `grpc-status` and
//! `x-rampart-error`), `upstream-connect` (502) when no connection could be made,
//! `upstream-reset` (502) when the upstream dropped the exchange (an HTTP/2 stream it refused,
//! or left out of its GOAWAY, is retried as `refused-stream`), `upstream-invalid` (502) when
//! it answered with something that is not HTTP (a malformed head, an HTTP/2 protocol error),
//! `breaker-open` or
//! `no-healthy-endpoint` (503) when no endpoint's breaker admits the request,
//! `retry-budget-exhausted` (503) when a failure without a response called for a retry the
//! budget refused, `rate-limited` (429) over the upstream's `rate`, `overloaded` (503) when its
//! concurrency limit is full and its pending queue full too, or the wait in it passed
//! `pending_timeout`. An upstream's own failing response, retried or not, reaches the client as it
//! is.
//!
//! [`Proxy::reload`] serves a new configuration without closing a connection: every request
//! reads its listener's routes once, as it arrives, through an `ArcSwap`, and keeps them to its
//! end. An unchanged upstream keeps its pooled connections and breakers, a changed one the
//! breakers of its endpoints still listed; listener changes are refused (they need a restart).
//!
//! The proxy logs through `tracing` and never per request at `info`: each endpoint's breaker
//! transitions go to the target `rampart_proxy::breaker` (an opening at `warn`, naming the
//! upstream and the endpoint, the rest at `info`). The binary chooses where and how they are
//! written.
//!
//! Metrics (docs/admin.md has every family and label value): the families are registered into the
//! [`Registry`] given to [`Proxy::start_with`] (or one of the proxy's own, [`Proxy::registry`]);
//! every series is made when its route or pool is built and kept beside it, so recording one on
//! the request path is an atomic add. [`Proxy::handle`] gives the admin API a read-only
//! [`stats::Snapshot`] of routes, upstreams and endpoints (counts, a rolling ten-second window of
//! rates, latency percentiles, each route's answers by kind and each upstream's admissions,
//! breaker states, health, load), the configuration served, and the live breakers to force.
//!
//! Async routes (`[routes.async]`): after fault injection, the request is read whole, stored in
//! the outbox (`[outbox]`) and answered `202 Accepted` with `x-rampart-message-id` once it is
//! durable; a delivery loop per route sends it through the route's stack later, until the
//! upstream answers 2xx or `max_age` passes (the `outbox` module tells how). [`ProxyHandle::outbox`]
//! gives the admin API the store.
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

/// `Box::pin(future)`, the box allocated before the future is made: rustc builds a value before
/// moving it into a box allocated after, and a future's size is its largest state's, so a
/// request's future of several KiB, of which only what it captured is set when it starts, cost
/// a copy of the whole of it (5 KiB a request for the listener's). Allocated first, the future is
/// built where it stays. Used for the futures boxed on every request; `Box::pin` stays where a
/// future is small or boxed on a rare path (a new connection, a hedge race).
macro_rules! pin_in_box {
    ($future:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(
            ::std::boxed::Box::new_uninit(),
            $future,
        ))
    };
}

mod balance;
mod body;
mod coalesce;
mod conn;
mod connections;
#[cfg(test)]
mod counting_waker;
mod dns;
mod fallback;
mod fault;
mod forward;
mod frames;
mod h1;
mod head_timeout;
mod health;
mod hedge;
mod limits;
mod listener;
mod metrics;
mod outbox;
mod pacemaker;
mod recent;
mod reload;
mod retry;
mod route;
mod stack;
mod stall;
pub mod stats;
mod strict;
mod turn;
mod upgrade;
mod upstream;
mod woken;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use prometheus_client::registry::Registry;
use rampart_config::Config;
use rampart_policy::breaker::CircuitBreaker;
use rampart_policy::rng::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::outbox::Outbox;
pub use crate::outbox::X_RAMPART_MESSAGE_ID;
use crate::reload::Live;
pub use crate::reload::{Changes, ReloadSummary};
pub use crate::stall::StallIo;
use crate::stats::{Snapshot, Unknown};

/// The proxy's private parsers of hostile bytes, for the fuzz targets in `fuzz/` only: built
/// with `--cfg fuzzing`, which `cargo fuzz` sets.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Where the CRLF check refuses a client's bytes read in `pieces`, if it does.
    pub fn strict_refused_at<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
        crate::strict::refused_at(pieces)
    }

    /// An upstream's HTTP/1.1 response read from `pieces` (a connection's reads, after which it
    /// ends) as an exchange reads it: its status, body, trailers and whether its connection
    /// could be reused, or why it was refused.
    pub fn upstream_response<'a>(
        pieces: impl IntoIterator<Item = &'a [u8]>,
        head_request: bool,
    ) -> Result<(u16, Vec<u8>, Vec<(String, Vec<u8>)>, bool), String> {
        crate::h1::read_response(pieces, head_request)
            .map(|read| (read.status, read.body, read.trailers, read.reusable))
    }
}

/// A running proxy: its listeners accept and forward until [`Proxy::shutdown`].
///
/// Dropping it without a shutdown stops every listener and health check, and cuts every
/// connection at once.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<BoundListener>,
    // The routes, upstreams and health checks in use now; locked only by a reload and by the
    // admin API's reads, never on the request path.
    live: Arc<Mutex<Live>>,
    registry: Arc<Registry>,
    // Sending `true` tells every listener to stop accepting and drain, and the health checks to
    // end.
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

/// Why the proxy could not start, or refused a reload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reload would add, remove or change a listener, which only a restart does; the reload
    /// changed nothing.
    #[error("listener changes need a restart ({0})")]
    ListenersChanged(String),
    /// A reload would remove every route, so that every request is answered 404 `no-route`:
    /// more likely a file cut short than what was meant; the reload changed nothing.
    #[error(
        "the new configuration has no routes, and every request would be answered 404 \
         no-route (a file cut short?); a restart serves it if that is meant"
    )]
    NoRoutesLeft,
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
    /// The outbox's store (`[outbox]`) could not be opened.
    #[error("cannot open {store}: {source}")]
    Outbox {
        /// Which store: its kind and where it is.
        store: String,
        /// What the store said.
        #[source]
        source: rampart_outbox::Error,
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
    /// Binds every listener of `config` and starts serving, its metrics in a registry of its
    /// own ([`Proxy::registry`]).
    ///
    /// Every address is bound before any is served, so a failure leaves nothing running. Must be
    /// called inside a tokio runtime with the IO and time drivers enabled.
    pub async fn start(config: &Config) -> Result<Proxy, Error> {
        Proxy::start_with(config, Rng::thread(), Registry::default()).await
    }

    /// Like [`Proxy::start`], with every random choice the proxy makes (the balancers' draws,
    /// fault injection's `delay_percent` and `abort_percent`, the health checks' jitter) drawn
    /// from `rng` instead of [`Rng::thread()`]: tests pass `Rng::fixed(..)` or `Rng::seeded(..)`
    /// to make them reproducible. Every route, upstream and health check shares the one `rng`,
    /// so a seeded sequence runs across them in the order they draw from it.
    pub async fn start_with_rng(config: &Config, rng: Rng) -> Result<Proxy, Error> {
        Proxy::start_with(config, rng, Registry::default()).await
    }

    /// Like [`Proxy::start_with_rng`], with the proxy's metric families (docs/admin.md)
    /// registered into `registry`, beside whatever its owner registered there already; the
    /// proxy keeps it, to be read through [`Proxy::registry`]. Nothing is global: two proxies in
    /// one process count apart.
    pub async fn start_with(
        config: &Config,
        rng: Rng,
        mut registry: Registry,
    ) -> Result<Proxy, Error> {
        let (stop, _) = watch::channel(false);
        let metrics = Metrics::register(&mut registry, config.admin.metrics);
        let listener_metrics: Vec<_> = (config.listeners.iter())
            .map(|listener| metrics.listener(&listener.name))
            .collect();
        let outbox = Outbox::open(config, &rng, metrics.outbox.clone()).await?;
        let live = Live::new(config, rng, metrics, stop.subscribe(), outbox)?;
        let mut bound = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let tcp = listener::bind(listener).await?;
            bound.push((listener, tcp));
        }

        let mut listeners = Vec::with_capacity(bound.len());
        let mut tasks = Vec::with_capacity(bound.len());
        let each = bound.into_iter().zip(live.routes()).zip(listener_metrics);
        for (((listener, tcp), routes), metrics) in each {
            let addr = tcp.local_addr().map_err(|source| Error::Bind {
                name: listener.name.clone(),
                addr: listener.listen,
                source,
            })?;
            listeners.push(BoundListener {
                name: listener.name.clone(),
                addr,
            });
            let serve =
                listener::Serve::new(listener, routes, metrics, config.runtime.drain_timeout);
            tasks.push(tokio::spawn(serve.run(tcp, stop.subscribe())));
        }
        tokio::spawn(pacemaker::run(stop.subscribe()));
        Ok(Proxy {
            listeners,
            live: Arc::new(Mutex::new(live)),
            registry: Arc::new(registry),
            stop,
            tasks,
        })
    }

    /// The listeners, in configuration order, with the addresses they are bound to.
    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// Serves `config` from now on, without closing a connection or cutting a request in flight,
    /// or changes nothing and says why.
    ///
    /// Requests that arrive after the reload, on new or open connections, follow the new routes;
    /// a request in flight finishes with the route and upstream it started with. An upstream
    /// whose settings are unchanged keeps its pooled connections and its endpoints' breakers; a
    /// changed one keeps the breaker of each endpoint still listed, as long as its
    /// `[upstreams.NAME.breaker]` is unchanged. Listeners are bound at start only: a reload that
    /// adds, removes or changes one is refused ([`Error::ListenersChanged`]), and so is one that
    /// removes every route ([`Error::NoRoutesLeft`]). `[runtime]`,
    /// `[admin]` and `[outbox]` are read at start only: a change to them is not applied, and the
    /// summary names them ([`ReloadSummary::needs_restart`]).
    ///
    /// `config` is validated already (it is a [`Config`]); an error here (a listener change, a
    /// `body_file` that cannot be read) leaves the old configuration serving whole. Reloads are
    /// applied one at a time.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, Error> {
        lock(&self.live).reload(config)
    }

    /// The registry the proxy's metrics are in, to be encoded for a scrape.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// A handle on what the admin API reads and changes: the proxy's stats and breakers, and
    /// its registry. It outlives nothing: after a shutdown it shows the proxy as it was last.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            live: self.live.clone(),
            registry: self.registry.clone(),
        }
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
        // The deliveries stopped taking messages with the listeners; those under way finish
        // (within the drain timeout), then the store commits and closes.
        let deliveries = lock(&self.live).take_deliveries();
        if let Some(deliveries) = deliveries {
            deliveries.finish().await;
        }
        drain
    }
}

/// What an operator may see and change of a running [`Proxy`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    live: Arc<Mutex<Live>>,
    registry: Arc<Registry>,
}

// === impl ProxyHandle ===

impl ProxyHandle {
    /// Every route and upstream as they stand now, with their counts, recent rates and
    /// latencies, and each endpoint's breaker state, health and load.
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.live).snapshot()
    }

    /// The configuration the proxy serves now: the one it started with, or the last a reload
    /// applied (the settings behind the stats, for an operator to read beside them).
    pub fn config(&self) -> Config {
        lock(&self.live).config().clone()
    }

    /// The circuit breakers of the endpoint `endpoint` (its address as configured) of
    /// `upstream`, or of every endpoint of it for `None`: to force open or closed, or release
    /// ([`CircuitBreaker::force_open`], [`CircuitBreaker::force_closed`],
    /// [`CircuitBreaker::release`]). The breakers are the live ones: a change shows in the
    /// metrics and the stats at once, and lasts across reloads that keep them.
    pub fn breakers(
        &self,
        upstream: &str,
        endpoint: Option<&str>,
    ) -> Result<Vec<CircuitBreaker>, Unknown> {
        lock(&self.live).breakers(upstream, endpoint)
    }

    /// Serves `config` from now on, as [`Proxy::reload`] does.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, Error> {
        lock(&self.live).reload(config)
    }

    /// Counts a reload refused before it could be asked of the proxy (its file unreadable or
    /// invalid) in `rampart_config_reloads_total` and `rampart_config_last_reload_successful`,
    /// beside the reloads [`ProxyHandle::reload`] applies and refuses.
    pub fn reload_refused(&self) {
        lock(&self.live).refused();
    }

    /// Every breaker transition and health change from now on, as it happens. A receiver that
    /// falls more than a few hundred changes behind misses the oldest and is told how many
    /// (`RecvError::Lagged`); [`ProxyHandle::snapshot`] has the state they led to.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<stats::Change> {
        lock(&self.live).changes()
    }

    /// The registry the proxy's metrics are in.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The outbox's store (`[outbox]`), if the proxy has one: to read a message's state and
    /// the queues' counts, and to re-drive dead messages.
    pub fn outbox(&self) -> Option<Arc<dyn rampart_outbox::Store>> {
        lock(&self.live).outbox()
    }
}

/// Locks `mutex`, poisoned or not. Every lock of this crate guards state that a panic cannot
/// leave half-changed: each change is one assignment or one call (a list pushed to or popped
/// from, a map entry inserted or removed), and a reload that panicked swapped nothing in (every
/// router is built before any is swapped).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Each listener task owns its connections; aborting it drops them all.
        for task in &self.tasks {
            task.abort();
        }
        // The health checks end with the `Live` that owns them.
    }
}
