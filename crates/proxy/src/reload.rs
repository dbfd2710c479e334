//! The live routing state of a running proxy, and its replacement by a new configuration.
//!
//! Each listener's connections read their listener's [`Router`] through an [`ArcSwap`] once per
//! request: a reload builds every new router aside, then swaps them in. A request keeps the
//! `Arc` of the routes it started with (and through them its route's stack and upstream pool), so
//! it finishes as it began; the next request, on a new connection or on an open keep-alive one,
//! sees the new routes. Nothing is closed: connections stay open, and an upstream's pooled
//! connections go away with the last request that still holds its pool.
//!
//! An upstream whose configuration is unchanged keeps its [`Pool`]: its connections, its limits
//! and its endpoints' breakers. A changed upstream gets a new pool (and new limits, which do not
//! count the requests still in flight under the old ones), whose endpoints take over the breaker
//! of the old endpoint with the same address when `[upstreams.NAME.breaker]` did not change: an
//! ejected endpoint stays ejected. Routes are built anew, so a route's retry budget, the latency
//! its hedging learnt and its fallback's stale answers start afresh.
//!
//! Listeners are bound once, at start: a reload that adds, removes or changes a listener is
//! refused whole ([`Error::ListenersChanged`]), and the old configuration keeps serving.
//! `[runtime]`, `[admin]` and `[outbox]` are read at start only: the reload applies the rest and
//! says in its [`ReloadSummary`] that those need a restart.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZero;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rampart_config::{Config, Listener, Runtime};
use rampart_policy::rng::Rng;
use tokio::sync::watch;

use crate::Error;
use crate::health::{self, Checks};
use crate::metrics::Metrics;
use crate::outbox::{Deliveries, Outbox};
use crate::route::Router;
use crate::stats::{self, Snapshot, Unknown};
use crate::upstream::Pool;

/// What the proxy serves now: the configuration it was built from, the upstream pools, and the
/// routes of each listener.
#[derive(Debug)]
pub(crate) struct Live {
    config: Config,
    upstreams: HashMap<String, Arc<Pool>>,
    /// By listener name, in the order of the listeners at start; each listener's connections
    /// hold a clone.
    routers: Vec<(String, Arc<ArcSwap<Router>>)>,
    /// The active health checks of each upstream's pool, by upstream name: they end when
    /// dropped, with the pool they check.
    health: HashMap<String, Checks>,
    rng: Rng,
    /// The families every route and pool built makes its series in.
    metrics: Metrics,
    /// The outbox of the async routes, with `[outbox]`.
    outbox: Option<Arc<Outbox>>,
    /// The async routes' delivery loops, until the proxy's shutdown takes them to finish.
    deliveries: Option<Deliveries>,
    // Tells the health checks to end when the proxy shuts down.
    stop: watch::Receiver<bool>,
}

/// What a [`Proxy::reload`](crate::Proxy::reload) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Routes, by name.
    pub routes: Changes,
    /// Upstreams, by name. An unchanged upstream kept its pool and breakers.
    pub upstreams: Changes,
    /// How many endpoints of changed upstreams took over the breaker of the old endpoint with the
    /// same address.
    pub breakers_kept: usize,
    /// How many endpoints of upstreams whose breaker settings changed have their new breaker
    /// forced as an operator had forced the old one.
    pub forced_kept: usize,
    /// How many endpoints that their breakers held ejected start closed, as upstreams whose
    /// breaker settings changed get new breakers.
    pub ejections_ended: usize,
    /// Sections that changed but are read at start only (`[runtime]`, `[admin]`, `[outbox]`):
    /// they take effect at the next restart.
    pub needs_restart: Vec<&'static str>,
}

/// Names added, removed and changed, each in the new file's order (removed ones in the old's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// In the new configuration only.
    pub added: Vec<String>,
    /// In the old configuration only.
    pub removed: Vec<String>,
    /// In both, with different settings.
    pub changed: Vec<String>,
}

// === impl Live ===

impl Live {
    /// A receiver of every breaker transition and health change from now on.
    pub(crate) fn changes(&self) -> tokio::sync::broadcast::Receiver<crate::stats::Change> {
        self.metrics.changes()
    }

    /// The state of a proxy starting with `config`, its health checks and the async routes'
    /// deliveries running until `stop` says `true`; the balancers, fault injection and the
    /// checks' jitter draw from `rng`; every series is made in `metrics`; async routes store
    /// their requests in `outbox`.
    pub(crate) fn new(
        config: &Config,
        rng: Rng,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
        outbox: Option<Arc<Outbox>>,
    ) -> Result<Live, Error> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Ok((u.name.clone(), Arc::new(Pool::new(u, &rng, &metrics)?))))
            .collect::<Result<HashMap<_, _>, Error>>()?;
        let routers: Vec<_> = routers(config, &upstreams, &rng, &metrics, outbox.as_ref())?
            .into_iter()
            .map(|(name, router)| (name, Arc::new(ArcSwap::from_pointee(router))))
            .collect();
        let deliveries = outbox.as_ref().map(|outbox| {
            let all = routers.iter().map(|(_, router)| router.clone()).collect();
            Deliveries::start(outbox.clone(), all, config, stop.clone())
        });
        let health = config
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    health::spawn(u, &upstreams[&u.name], &rng, &stop),
                )
            })
            .collect();
        Ok(Live {
            config: config.clone(),
            upstreams,
            routers,
            health,
            rng,
            metrics,
            outbox,
            deliveries,
            stop,
        })
    }

    /// The outbox's store, with `[outbox]`.
    pub(crate) fn outbox(&self) -> Option<Arc<dyn rampart_outbox::Store>> {
        self.outbox.as_ref().map(|outbox| outbox.store().clone())
    }

    /// The delivery loops, for the shutdown to wait for them and close the store.
    pub(crate) fn take_deliveries(&mut self) -> Option<Deliveries> {
        self.deliveries.take()
    }

    /// The routes of each listener, in configuration order, for its connections to read per
    /// request.
    pub(crate) fn routes(&self) -> impl Iterator<Item = Arc<ArcSwap<Router>>> + '_ {
        self.routers.iter().map(|(_, routes)| routes.clone())
    }

    /// Serves `config` from now on, or changes nothing and says why not.
    pub(crate) fn reload(&mut self, config: &Config) -> Result<ReloadSummary, Error> {
        let reloaded = self.apply(config);
        self.metrics.reloaded(reloaded.is_ok());
        reloaded
    }

    /// Counts a reload refused before it reached the proxy: its file unreadable or invalid.
    pub(crate) fn refused(&self) {
        self.metrics.reloaded(false);
    }

    fn apply(&mut self, config: &Config) -> Result<ReloadSummary, Error> {
        let mut listeners = changes(&self.config.listeners, &config.listeners, |l| &l.name);
        if !listeners.is_empty() {
            // Which keys: a restart asked for one an operator may not know they touched.
            for name in &mut listeners.changed {
                let old = self.config.listeners.iter().find(|l| l.name == *name);
                let new = config.listeners.iter().find(|l| l.name == *name);
                if let (Some(old), Some(new)) = (old, new) {
                    *name = format!("{name} ({})", listener_keys(old, new).join(", "));
                }
            }
            return Err(Error::ListenersChanged(listeners.to_string()));
        }
        if config.routes.is_empty() && !self.config.routes.is_empty() {
            return Err(Error::NoRoutesLeft);
        }

        let (mut summary, upstreams, routers) = match self.build(config) {
            Ok(built) => built,
            Err(err) => {
                self.restore_metrics(config);
                return Err(err);
            }
        };

        // Nothing can fail from here on. The pools built serve before the first request
        // reaches them, so that no transition of theirs goes untold.
        let built = |name: &String, new: &Arc<Pool>| {
            !self
                .upstreams
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(new, old))
        };
        for (name, new) in &upstreams {
            if built(name, new) {
                new.serve();
            }
        }
        // The listeners are the same, perhaps in another order.
        for (listener, router) in routers {
            if let Some((_, routes)) = self.routers.iter().find(|(name, _)| *name == listener) {
                routes.store(Arc::new(router));
            }
        }
        summary.routes = route_changes(&self.config, config);
        summary.needs_restart = [
            (
                "[runtime]",
                !runs_alike(&self.config.runtime, &config.runtime),
            ),
            ("[admin]", self.config.admin != config.admin),
            ("[outbox]", self.config.outbox != config.outbox),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        // An unchanged pool keeps its checks; a new one gets its own, and the checks of a pool
        // replaced or removed end as they are dropped here.
        let mut old_checks = std::mem::take(&mut self.health);
        self.health = config
            .upstreams
            .iter()
            .map(|u| {
                let pool = &upstreams[&u.name];
                let kept = self
                    .upstreams
                    .get(&u.name)
                    .filter(|old| Arc::ptr_eq(old, pool))
                    .and_then(|_| old_checks.remove(&u.name));
                let checks = kept.unwrap_or_else(|| health::spawn(u, pool, &self.rng, &self.stop));
                (u.name.clone(), checks)
            })
            .collect();
        if let Some(deliveries) = &mut self.deliveries {
            deliveries.reloaded(config);
        }
        // Read at start only: the configuration served keeps the sections running, so that what
        // it shows is what runs and every later reload still tells they differ.
        let mut served = config.clone();
        served.runtime = self.config.runtime.clone();
        served.admin = self.config.admin.clone();
        served.outbox = self.config.outbox.clone();
        self.forget_removed(&served, &upstreams);
        // The pools replaced fall silent, and the series show the pools serving, whatever the
        // replaced ones wrote meanwhile.
        for (name, old) in &self.upstreams {
            let new = upstreams.get(name);
            if !new.is_some_and(|new| Arc::ptr_eq(new, old)) {
                old.retire(new.map(|new| &**new));
            }
        }
        for (name, new) in &upstreams {
            if built(name, new) {
                new.publish();
                if let Some(old) = self.upstreams.get(name) {
                    new.tell_changes_from(old);
                }
            }
        }
        self.config = served;
        self.upstreams = upstreams;
        Ok(summary)
    }

    /// The pools and routers of `config`, built beside the running ones: the pools of the
    /// upstreams it leaves as they are, new ones for the others.
    fn build(&self, config: &Config) -> Result<Built, Error> {
        let mut summary = ReloadSummary::default();
        let mut upstreams = HashMap::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let name = upstream.name.clone();
            let pool = match (self.config.upstream(&name), self.upstreams.get(&name)) {
                (Some(old), Some(pool)) if old == upstream => pool.clone(),
                (Some(old), Some(old_pool)) => {
                    let mut pool = Pool::new(upstream, &self.rng, &self.metrics)?;
                    pool.quiet();
                    pool.take_loads(old_pool);
                    if old.limits == upstream.limits {
                        pool.take_limits(old_pool);
                    }
                    if old.breaker == upstream.breaker {
                        summary.breakers_kept += pool.take_breakers(old_pool);
                    } else {
                        let (forced, ended) = pool.take_forced(old_pool);
                        summary.forced_kept += forced;
                        summary.ejections_ended += ended;
                    }
                    // Only checks can find an endpoint healthy again: without them, an endpoint
                    // kept out would be out for good.
                    if upstream.health.is_some() {
                        pool.take_health(old_pool);
                    }
                    summary.upstreams.changed.push(name.clone());
                    Arc::new(pool)
                }
                _ => {
                    summary.upstreams.added.push(name.clone());
                    let pool = Pool::new(upstream, &self.rng, &self.metrics)?;
                    pool.quiet();
                    Arc::new(pool)
                }
            };
            upstreams.insert(name, pool);
        }
        summary.upstreams.removed =
            changes(&self.config.upstreams, &config.upstreams, |u| &u.name).removed;
        // Every router is built before any is swapped in: a route that cannot be built leaves the
        // old configuration serving whole.
        let routers = routers(
            config,
            &upstreams,
            &self.rng,
            &self.metrics,
            self.outbox.as_ref(),
        )?;
        Ok((summary, upstreams, routers))
    }

    /// Undoes what building `refused`'s pools and routes did to the metrics: their series are
    /// made, or shared with the running ones by name, and set (an endpoint's breaker state and
    /// health, an upstream's concurrency limit). Those of names not running go; the running
    /// pools set theirs again. A refused reload changes nothing, the metrics included.
    fn restore_metrics(&self, refused: &Config) {
        for route in &refused.routes {
            if !self.config.routes.iter().any(|r| r.name == route.name) {
                self.metrics.forget_route(&route.name);
            }
        }
        for upstream in &refused.upstreams {
            let running = self.upstreams.get(&upstream.name);
            if running.is_none() {
                self.metrics.forget_upstream(&upstream.name);
            }
            for endpoint in upstream.endpoints.iter().chain(&upstream.backup) {
                let address = endpoint.to_string();
                let kept = running.is_some_and(|pool| {
                    (0..pool.len()).any(|index| pool.authority(index).as_str() == address)
                });
                if !kept {
                    self.metrics.forget_endpoint(&upstream.name, &address);
                }
            }
            if let Some(pool) = running {
                pool.publish();
            }
        }
    }
}

impl Live {
    // Drops the metric series of the routes, upstreams and endpoints that the configuration
    // served now has and `config`, about to be served with `upstreams`, has not.
    fn forget_removed(&self, config: &Config, upstreams: &HashMap<String, Arc<Pool>>) {
        for route in &self.config.routes {
            if !config.routes.iter().any(|r| r.name == route.name) {
                self.metrics.forget_route(&route.name);
            }
        }
        for (name, old) in &self.upstreams {
            let new = upstreams.get(name);
            if new.is_none() {
                self.metrics.forget_upstream(name);
            }
            for index in 0..old.len() {
                let endpoint = old.authority(index);
                let kept =
                    new.filter(|new| (0..new.len()).any(|index| new.authority(index) == endpoint));
                match kept {
                    None => self.metrics.forget_endpoint(name, endpoint.as_str()),
                    // Kept with its breakers disabled: a breaker state left behind (open,
                    // forced open) would keep an alert firing about a breaker gone.
                    Some(new)
                        if old.breaker_of(endpoint).is_some()
                            && new.breaker_of(endpoint).is_none() =>
                    {
                        self.metrics.forget_breaker(name, endpoint.as_str());
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

// === impl Live: stats ===

impl Live {
    /// Every route, in file order, and every upstream, in file order, as they stand now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let routers: Vec<_> = self.routers.iter().map(|(_, r)| r.load_full()).collect();
        let routes = self
            .config
            .routes
            .iter()
            .filter_map(|route| {
                routers
                    .iter()
                    .flat_map(|router| router.stacks())
                    .find(|stack| stack.name() == route.name)
                    .map(|stack| stats::route(stack, &route.upstream))
            })
            .collect();
        let upstreams = self
            .config
            .upstreams
            .iter()
            .map(|u| self.upstreams[&u.name].stats(&u.name))
            .collect();
        Snapshot { routes, upstreams }
    }

    /// The configuration served now.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The breakers of `upstream`'s endpoint `endpoint`, or of all its endpoints for `None`.
    pub(crate) fn breakers(
        &self,
        upstream: &str,
        endpoint: Option<&str>,
    ) -> Result<Vec<rampart_policy::breaker::CircuitBreaker>, Unknown> {
        let pool = self
            .upstreams
            .get(upstream)
            .ok_or_else(|| Unknown::Upstream(upstream.to_owned()))?;
        stats::breakers(pool, upstream, endpoint)
    }
}

/// What a reload builds before it swaps anything in: what changed, the pools by upstream, and
/// the routers by listener.
type Built = (
    ReloadSummary,
    HashMap<String, Arc<Pool>>,
    Vec<(String, Router)>,
);

/// The router of every listener of `config`, by listener name.
fn routers(
    config: &Config,
    upstreams: &HashMap<String, Arc<Pool>>,
    rng: &Rng,
    metrics: &Metrics,
    outbox: Option<&Arc<Outbox>>,
) -> Result<Vec<(String, Router)>, Error> {
    let by_name = upstreams
        .iter()
        .map(|(name, pool)| (name.as_str(), pool.clone()))
        .collect();
    config
        .listeners
        .iter()
        .map(|l| {
            Ok((
                l.name.clone(),
                Router::new(config, &l.name, &by_name, rng, metrics, outbox)?,
            ))
        })
        .collect()
}

// What differs between the `old` and `new` items of one kind, told apart by name.
fn changes<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &String) -> Changes {
    // The item of `items` named like `item`, if any.
    let twin = |items: &[T], item: &T| -> Option<usize> {
        items.iter().position(|i| name(i) == name(item))
    };
    let names = |items: &[T], keep: &dyn Fn(&T) -> bool| -> Vec<String> {
        items
            .iter()
            .filter(|i| keep(i))
            .map(|i| name(i).clone())
            .collect()
    };
    Changes {
        added: names(new, &|n| twin(old, n).is_none()),
        removed: names(old, &|o| twin(new, o).is_none()),
        changed: names(new, &|n| twin(old, n).is_some_and(|i| old[i] != *n)),
    }
}

fn route_changes(old: &Config, new: &Config) -> Changes {
    let mut changes = changes(&old.routes, &new.routes, |r| &r.name);
    // The first match wins, so the same routes in another order are another configuration.
    if changes.is_empty() && old.routes != new.routes {
        changes.changed = new.routes.iter().map(|r| r.name.clone()).collect();
    }
    changes
}

/// The keys of a listener that differ between `old` and `new`.
fn listener_keys(old: &Listener, new: &Listener) -> Vec<&'static str> {
    // Every field bound, so that one added to `Listener` cannot be left out here.
    let Listener {
        name: _,
        listen,
        protocol,
        max_connections,
        header_read_timeout,
        idle_timeout,
        body_idle_timeout,
        tunnel_idle_timeout,
        max_header_bytes,
        max_headers,
        max_request_body,
        h2_max_concurrent_streams,
        park_idle_above,
    } = old;
    let keys = [
        ("listen", *listen != new.listen),
        ("protocol", *protocol != new.protocol),
        ("max_connections", *max_connections != new.max_connections),
        (
            "header_read_timeout",
            *header_read_timeout != new.header_read_timeout,
        ),
        ("idle_timeout", *idle_timeout != new.idle_timeout),
        (
            "body_idle_timeout",
            *body_idle_timeout != new.body_idle_timeout,
        ),
        (
            "tunnel_idle_timeout",
            *tunnel_idle_timeout != new.tunnel_idle_timeout,
        ),
        (
            "max_header_bytes",
            *max_header_bytes != new.max_header_bytes,
        ),
        ("max_headers", *max_headers != new.max_headers),
        (
            "max_request_body",
            *max_request_body != new.max_request_body,
        ),
        (
            "h2_max_concurrent_streams",
            *h2_max_concurrent_streams != new.h2_max_concurrent_streams,
        ),
        ("park_idle_above", *park_idle_above != new.park_idle_above),
    ];
    keys.into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
}

// === impl Changes ===

/// Whether two `[runtime]` sections run the same: `worker_threads` left out is tokio's default
/// (`TOKIO_WORKER_THREADS`, else the number of cores), so that writing down what runs is no
/// change to restart for (but one thread on the multi-threaded scheduler, a one-core machine's
/// default, is not `worker_threads = 1`, the single-threaded one).
fn runs_alike(old: &Runtime, new: &Runtime) -> bool {
    let default = || {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|threads| threads.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZero::get))
    };
    let threads = |runtime: &Runtime| match runtime.worker_threads {
        Some(1) => None,
        Some(threads) => Some(threads),
        None => Some(default()),
    };
    threads(old) == threads(new) && old.drain_timeout == new.drain_timeout
}

impl Changes {
    /// Whether nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for Changes {
    /// `added a, b; removed c; changed d`, or `unchanged`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("unchanged");
        }
        let mut sep = "";
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                write!(f, "{sep}{what} {}", names.join(", "))?;
                sep = "; ";
            }
        }
        Ok(())
    }
}

// === impl ReloadSummary ===

impl ReloadSummary {
    /// Whether the reload changed nothing and left nothing for a restart.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.upstreams.is_empty() && self.needs_restart.is_empty()
    }
}

impl fmt::Display for ReloadSummary {
    /// One line: `routes: added b; changed a | upstreams: changed app (breakers kept: 2)`, then
    /// the sections that need a restart, or `no change`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        write!(f, "routes: {} | upstreams: {}", self.routes, self.upstreams)?;
        if self.breakers_kept > 0 {
            write!(f, " (breakers kept: {})", self.breakers_kept)?;
        }
        if self.forced_kept > 0 {
            write!(f, " (forced states kept: {})", self.forced_kept)?;
        }
        if self.ejections_ended > 0 {
            write!(
                f,
                " (ejections ended by new breaker settings: {})",
                self.ejections_ended
            )?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                " | {} changed: not applied until a restart",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &[(&str, &str)]) -> Config {
        let mut toml = String::new();
        for (name, prefix) in routes {
            toml.push_str(&format!(
                "[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"app\"\n"
            ));
        }
        toml.push_str("[upstreams.app]\nendpoints = [\"127.0.0.1:1\"]\n");
        Config::from_str(&toml, "test.toml").unwrap()
    }

    #[test]
    fn routes_added_removed_and_changed_by_name() {
        let old = config(&[("a", "/a"), ("b", "/b"), ("c", "/c")]);
        let new = config(&[("a", "/a"), ("c", "/cc"), ("d", "/d")]);
        let changes = route_changes(&old, &new);
        assert_eq!(changes.added, ["d"]);
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(changes.changed, ["c"]);
        assert_eq!(changes.to_string(), "added d; removed b; changed c");
        assert!(route_changes(&old, &old).is_empty());
    }

    #[test]
    fn the_same_routes_in_another_order_are_changed() {
        let old = config(&[("a", "/a"), ("b", "/")]);
        let new = config(&[("b", "/"), ("a", "/a")]);
        assert_eq!(route_changes(&old, &new).changed, ["b", "a"]);
    }

    #[test]
    fn worker_threads_written_as_they_run_are_no_change() {
        let runtime = |toml: &str| Config::from_str(toml, "test.toml").unwrap().runtime;
        let cores = std::thread::available_parallelism().unwrap().get();
        let unwritten = runtime("");
        let written = runtime(&format!("[runtime]\nworker_threads = {cores}"));
        // On one core, no value writes the default down: `1` is the other scheduler.
        if cores > 1 && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            assert!(runs_alike(&unwritten, &written));
            assert!(runs_alike(&written, &unwritten));
        }
        let more = runtime(&format!("[runtime]\nworker_threads = {}", cores + 1));
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            assert!(!runs_alike(&unwritten, &more));
        }
        // One thread is the single-threaded scheduler, never the default's multi-threaded one.
        let one = runtime("[runtime]\nworker_threads = 1");
        assert!(!runs_alike(&unwritten, &one));
        let drain = runtime("[runtime]\ndrain_timeout = \"1s\"");
        assert!(!runs_alike(&unwritten, &drain));
    }

    #[test]
    fn the_summary_is_one_line() {
        let summary = ReloadSummary {
            routes: Changes {
                added: vec!["b".into(), "c".into()],
                ..Changes::default()
            },
            upstreams: Changes {
                changed: vec!["app".into()],
                ..Changes::default()
            },
            breakers_kept: 2,
            forced_kept: 0,
            ejections_ended: 0,
            needs_restart: vec!["[runtime]", "[admin]"],
        };
        assert_eq!(
            summary.to_string(),
            "routes: added b, c | upstreams: changed app (breakers kept: 2) | \
             [runtime], [admin] changed: not applied until a restart"
        );
        assert_eq!(ReloadSummary::default().to_string(), "no change");
    }
}
