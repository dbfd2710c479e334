//! Async routes (`[routes.async]`): a request is stored in the outbox and answered `202
//! Accepted` at once; a delivery loop per route sends it upstream later, through the route's
//! stack, until the upstream takes it or `max_age` passes.
//!
//! - **Acceptance** ([`Outbox::accept`]): the body is read whole (bounded by `max_request_body`
//!   and the route's `timeout`), the request is appended to the store, and only once the store
//!   says it is durable does the client get its 202 with `x-rampart-message-id`. A full store is
//!   `outbox-full` (503), a failing one `outbox-unavailable` (503): then nothing was accepted.
//! - **Delivery** ([`Deliveries`]): one task per async route takes due messages, oldest first,
//!   up to `[routes.async] concurrency` at a time, and sends each through [`Stack::call`]: the
//!   route's retries, hedging, the upstream's limits, balancer, breakers and per-try timeout all
//!   apply, with the route's `timeout` as each delivery's deadline. A 2xx answer settles the
//!   message as delivered; anything else (another status, a timeout, no endpoint) is a failed
//!   attempt: the message is due again after the `[outbox] retry` backoff (or the upstream's
//!   `Retry-After`, when longer), or goes to the dead-letter list once it has been queued for
//!   `max_age`. The route's fallback never answers a delivery: only the upstream can take it.
//! - **Pause**: while no endpoint of the upstream may be picked (every breaker open, every
//!   endpoint unhealthy) the loop takes nothing and looks again every [`PAUSE`], so an outage
//!   costs neither attempts nor store writes, and the first probe the breaker admits carries a
//!   message.
//! - **Each delivery** carries `x-rampart-message-id` (and the client's own headers, its
//!   `idempotency-key` among them), so an upstream can recognise a message delivered twice:
//!   delivery is at least once.
//!
//! The loops follow reloads: each looks its route up by name for every batch, so a changed
//! route delivers with its new stack, a route that stops being async (or is removed) keeps its
//! messages in the store until one with its name comes back, and a route that becomes async
//! gets a loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::gauge::Gauge;
use rampart_config::{Config, OutboxStore, Route};
use rampart_http::Reason;
use rampart_http::classify::{GrpcCode, RetryHint, grpc_status, is_grpc, retry_hint};
use rampart_http::deadline::Outgoing;
use rampart_outbox::{
    Embedded, Error as StoreError, Full as NoRoom, FullReason, Leased, Message, MessageId, Nats,
    NatsOptions, Options, Store,
};
use rampart_policy::retry::ExponentialBackoff;
use rampart_policy::rng::Rng;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::Error;
use crate::body::{BodyFault, ClientBodyFault, RequestBody, ResponseBody, boxed};
use crate::metrics::OutboxMetrics;
use crate::route::Router;
use crate::stack::Stack;
use crate::turn;

/// The header naming a stored message: on the 202, and on each delivery of it.
pub const X_RAMPART_MESSAGE_ID: HeaderName = HeaderName::from_static("x-rampart-message-id");

/// The header a client names its request with, for an upstream to deduplicate deliveries.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How often a paused delivery loop looks whether an endpoint may be picked again.
const PAUSE: Duration = Duration::from_millis(100);

/// How long one `take` waits for a message to come due before the loop looks around again.
const TAKE_WAIT: Duration = Duration::from_secs(1);

/// How often `rampart_outbox_pending` is read from the store.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// The longest `Retry-After` a delivery honours: beyond, the backoff's own delay applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The store behind every async route, and how deliveries use it (`[outbox]`).
#[derive(Debug)]
pub(crate) struct Outbox {
    store: Arc<dyn Store>,
    /// The longest a delivery may take: half the lease, fixed when the store opened. A route
    /// whose `timeout` a reload raised past it is delivered within it, or a delivery still under
    /// way would be handed out again, and made twice at once.
    longest_delivery: Duration,
    max_age: Duration,
    backoff: ExponentialBackoff,
    metrics: OutboxMetrics,
    buffered: Buffered,
}

// === impl Outbox ===

impl Outbox {
    /// The outbox of `config`, its store opened (and what a crash left leased queued again), or
    /// `None` without an `[outbox]`.
    pub(crate) async fn open(
        config: &Config,
        rng: &Rng,
        metrics: OutboxMetrics,
    ) -> Result<Option<Arc<Outbox>>, Error> {
        let Some(outbox) = &config.outbox else {
            return Ok(None);
        };
        let limits = rampart_outbox::Limits {
            max_messages: outbox.max_messages,
            max_bytes: outbox.max_bytes.bytes(),
            on_full: match outbox.on_full {
                rampart_config::OnFull::Reject => rampart_outbox::OnFull::Reject,
                rampart_config::OnFull::DropOldest => rampart_outbox::OnFull::DropOldest,
            },
        };
        // A lease must outlast the longest delivery, or a slow one would be handed out again
        // while it is still under way.
        let longest = config.routes.iter().map(|r| r.timeout).max();
        let lease = longest.map_or(Duration::ZERO, |t| t * 2).max(LEASE);
        let store: Arc<dyn Store> = match &outbox.store {
            OutboxStore::Embedded => {
                let mut options = Options::new(&outbox.path);
                options.limits = limits;
                options.retention = outbox.retention;
                options.lease = lease;
                options.rng = rng.clone();
                Arc::new(
                    Embedded::open(options)
                        .await
                        .map_err(|source| Error::Outbox {
                            store: format!(
                                "the embedded store at {} (outbox.path)",
                                outbox.path.display()
                            ),
                            source,
                        })?,
                )
            }
            OutboxStore::Nats { url, stream } => {
                let mut options = NatsOptions::new(url, stream);
                options.limits = limits;
                options.retention = outbox.retention;
                options.lease = lease;
                options.rng = rng.clone();
                let shown = options.redacted_url();
                Arc::new(
                    Nats::connect(options)
                        .await
                        .map_err(|source| Error::Outbox {
                            store: format!(
                                "the nats store at {shown}, stream {stream} (outbox.nats)"
                            ),
                            source,
                        })?,
                )
            }
        };
        let backoff = ExponentialBackoff::new(outbox.retry.base, outbox.retry.max)
            .map_err(|err| Error::Invalid {
                path: "outbox.retry".to_owned(),
                message: err.to_string(),
            })?
            .with_rng(rng.clone());
        Ok(Some(Arc::new(Outbox {
            store,
            longest_delivery: lease / 2,
            max_age: outbox.max_age,
            backoff,
            buffered: Buffered::new(outbox.max_buffered.bytes(), metrics.buffered.clone()),
            metrics,
        })))
    }

    /// The store, for the admin API.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores the request of `route` (its headers rewritten for the upstream already) and
    /// answers 202 once it is durable; or gives up with the reason to answer, nothing stored.
    /// `deadline` is the request's, which `expired` names when it passes.
    pub(crate) async fn accept(
        &self,
        route: &str,
        parts: Parts,
        body: RequestBody,
        (deadline, expired): (Instant, Reason),
    ) -> Result<Response<ResponseBody>, Refused> {
        // More header fields than a record holds (HTTP/2 cookie crumbs count as one field
        // against `max_headers`, and are stored one by one), or a method or idempotency key
        // longer than a record's 16-bit lengths (with `max_header_bytes` raised past 64 KiB):
        // refused as the head it is, before the body is read.
        if !fits_a_record(&parts) {
            return Err(Refused::said(
                Reason::HeadersTooLarge,
                "the request head is larger than the outbox stores: at most 10000 fields, and a method or idempotency-key of at most 65535 bytes",
            ));
        }
        let (body, _held) = match tokio::time::timeout_at(deadline, self.buffered.read(body)).await
        {
            Ok(Ok(read)) => read,
            // `max_buffered` is taken by the bodies of other requests: shed at once, holding
            // nothing, rather than wait holding part of the budget others wait for. The
            // reason's general message (the upstream's limit) would misname it.
            Ok(Err(Unread::NoRoom)) => {
                return Err(Refused::said(
                    Reason::Overloaded,
                    "the bodies of other requests being stored hold all of the outbox's memory (max_buffered); try again later",
                ));
            }
            // The body outgrew `max_request_body`, stalled past `body_idle_timeout`, or the
            // client went away: the caller answers each as it does for a forwarded request.
            Ok(Err(Unread::Body)) => {
                let fault = parts.extensions.get::<BodyFault>().and_then(BodyFault::get);
                return Err(Refused::from(
                    fault.map_or(Reason::BadRequest, ClientBodyFault::reason),
                ));
            }
            // The route's timeout passed while the body was read: the upstream, not asked yet,
            // is not the one late, as the reason's general message would have it. The client's
            // own deadline is its own reason.
            Err(_elapsed) if expired == Reason::Timeout => {
                return Err(Refused::said(
                    Reason::Timeout,
                    "the request body did not arrive whole within the route's timeout",
                ));
            }
            Err(_elapsed) => return Err(Refused::from(expired)),
        };
        let request = stored(parts, body);
        // Larger alone than `max_bytes` lets the whole outbox hold, or than the store takes a
        // message (a NATS server's `max_payload`): it would never be stored, however empty the
        // outbox, so 413, not a 503 that asks the client to try again. The body was read whole:
        // the connection stays.
        let too_large = |what| Refused::said(Reason::BodyTooLarge, what);
        match self.store.append(route, request).await {
            Ok(id) => Ok(accepted(id)),
            Err(StoreError::Full(NoRoom {
                reason: FullReason::Bytes { max, size },
            })) if size > max => {
                tracing::debug!(route, size, max, "outbox: a request larger than max_bytes");
                Err(too_large(
                    "the request is larger than the outbox holds in all (max_bytes)",
                ))
            }
            Err(StoreError::Full(full)) => {
                tracing::debug!(route, %full, "outbox: a request refused");
                Err(Refused::from(Reason::OutboxFull))
            }
            Err(StoreError::Unstorable(why)) => {
                tracing::debug!(route, why, "outbox: a request too large to store");
                Err(too_large(
                    "the request is larger than the outbox's store takes a message",
                ))
            }
            Err(err) => {
                tracing::warn!(route, error = %err, "outbox: cannot store a request");
                Err(Refused::from(Reason::OutboxUnavailable))
            }
        }
    }

    // The sleep before the next attempt of a message that failed `attempts` times before.
    fn backoff(&self, attempts: u32) -> Duration {
        // The backoff reaches its cap long before 64 doublings.
        let n = attempts.min(63) as usize;
        self.backoff.delays().nth(n).unwrap_or(self.backoff.max())
    }
}

/// The shortest lease. A lease is twice the longest route timeout (a delivery's attempts, its
/// backoffs and its settle fit well inside), and not shorter than this. With the nats store it
/// is the consumers' `ack_wait`, which every instance sharing a stream must agree on: they do,
/// given the same routes.
const LEASE: Duration = Duration::from_secs(10);

/// Why an async route did not accept a request: the reason to answer, and words of its own
/// when the reason's general message would misname what happened.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: Reason,
    pub(crate) saying: Option<&'static str>,
}

impl Refused {
    fn said(reason: Reason, saying: &'static str) -> Refused {
        Refused {
            reason,
            saying: Some(saying),
        }
    }
}

impl From<Reason> for Refused {
    fn from(reason: Reason) -> Refused {
        Refused {
            reason,
            saying: None,
        }
    }
}

// Whether the head of a request fits a stored record's limits (a header name cannot pass them:
// `http` refuses one over 65535 bytes).
fn fits_a_record(parts: &Parts) -> bool {
    use rampart_outbox::record::{MAX_HEADERS, MAX_SHORT_FIELD};
    parts.headers.len() <= MAX_HEADERS
        && parts.method.as_str().len() <= MAX_SHORT_FIELD
        && parts
            .headers
            .get_all(IDEMPOTENCY_KEY)
            .iter()
            .all(|key| key.len() <= MAX_SHORT_FIELD)
}

// The request as the store keeps it: the client's method, target, headers (less the ones that
// mean something only now) and body.
fn stored(parts: Parts, body: Bytes) -> rampart_outbox::Request {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut request = rampart_outbox::Request::new(parts.method, path_and_query);
    request.idempotency_key = parts
        .headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|key| key.to_str().ok())
        .map(str::to_owned);
    request.headers = parts
        .headers
        .iter()
        // Each attempt of a delivery says its own deadline; a message id is rampart's to give.
        .filter(|(name, _)| *name != X_RAMPART_MESSAGE_ID && !Outgoing::replaces(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    request.body = body;
    request
}

// `202 Accepted`, naming the message.
fn accepted(id: MessageId) -> Response<ResponseBody> {
    let id = id.to_string();
    let body = format!("{{\"id\": \"{id}\", \"status\": \"queued\"}}");
    let mut response = boxed(Response::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // An id is made of letters and digits only.
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(X_RAMPART_MESSAGE_ID, value);
    }
    response
}

/// The delivery loops of the async routes, and the task keeping `rampart_outbox_pending` up to
/// date. Dropped, they stop at once (a delivery cut short is handed out again later).
#[derive(Debug)]
pub(crate) struct Deliveries {
    outbox: Arc<Outbox>,
    routers: Arc<[Arc<ArcSwap<Router>>]>,
    loops: HashMap<String, JoinHandle<()>>,
    gauge: JoinHandle<()>,
    /// Tells the loops that the routes changed.
    reloaded: watch::Sender<()>,
    stop: watch::Receiver<bool>,
    drain: Duration,
}

// === impl Deliveries ===

impl Deliveries {
    /// Starts a loop for every async route of `config`, over the routers of every listener,
    /// until `stop` says `true`; each then lets its deliveries in flight finish for up to the
    /// configured `drain_timeout`.
    pub(crate) fn start(
        outbox: Arc<Outbox>,
        routers: Arc<[Arc<ArcSwap<Router>>]>,
        config: &Config,
        stop: watch::Receiver<bool>,
    ) -> Deliveries {
        let gauge = tokio::spawn(refresh_gauge(outbox.clone(), stop.clone()));
        let mut deliveries = Deliveries {
            outbox,
            routers,
            loops: HashMap::new(),
            gauge,
            reloaded: watch::channel(()).0,
            stop,
            drain: config.runtime.drain_timeout,
        };
        deliveries.reloaded(config);
        deliveries
    }

    /// Follows a reload to `config`: a loop for each async route that has none, and every loop
    /// told to look its route up again.
    pub(crate) fn reloaded(&mut self, config: &Config) {
        let routes: Vec<&Route> = config.routes.iter().filter(|r| r.async_enabled).collect();
        for route in &routes {
            if route.timeout > self.outbox.longest_delivery {
                tracing::warn!(
                    route = %route.name,
                    timeout = ?route.timeout,
                    delivered_within = ?self.outbox.longest_delivery,
                    "outbox: the route's timeout is longer than the lease set at start allows; \
                     its deliveries are cut at half the lease until a restart"
                );
            }
            if self.loops.contains_key(&route.name) {
                continue;
            }
            let delivery = Delivery {
                route: route.name.clone(),
                outbox: self.outbox.clone(),
                routers: self.routers.clone(),
                reloaded: self.reloaded.subscribe(),
                stop: self.stop.clone(),
                drain: self.drain,
            };
            self.loops
                .insert(route.name.clone(), tokio::spawn(delivery.run()));
        }
        let routed = routes.iter().map(|r| r.name.clone()).collect();
        tokio::spawn(warn_unrouted(self.outbox.clone(), routed));
        self.reloaded.send_replace(());
    }

    /// Waits for every loop to end (they end once the proxy's stop is sent, after their drain),
    /// then closes the store.
    pub(crate) async fn finish(mut self) {
        for (_, delivery) in std::mem::take(&mut self.loops) {
            // A loop that panicked has ended too.
            let _ = delivery.await;
        }
        if let Err(err) = self.outbox.store.close().await {
            tracing::warn!(error = %err, "outbox: the store did not close cleanly");
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        for delivery in self.loops.values() {
            delivery.abort();
        }
        self.gauge.abort();
    }
}

// Reads how many messages are pending, every `GAUGE_EVERY`, and what `drop-oldest` dropped.
async fn refresh_gauge(outbox: Arc<Outbox>, mut stop: watch::Receiver<bool>) {
    let metrics = &outbox.metrics;
    loop {
        if let Ok(summary) = outbox.store.summary().await {
            metrics
                .pending
                .set(i64::try_from(summary.total.pending()).unwrap_or(i64::MAX));
            // The store counts drops since it was opened, as this counter does.
            let counted = metrics.dropped.get();
            if summary.dropped > counted {
                metrics.dropped.inc_by(summary.dropped - counted);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(GAUGE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Says which routes of the store's waiting messages are not among `routed`, the async routes
/// configured (a reload removed one, or rampart started without it): their messages wait there
/// and are delivered once an async route of their name is back, which an operator who removed
/// the route may not expect.
async fn warn_unrouted(outbox: Arc<Outbox>, routed: Vec<String>) {
    let Ok(summary) = outbox.store.summary().await else {
        return;
    };
    for (route, counts) in &summary.routes {
        if counts.pending() > 0 && !routed.iter().any(|name| **name == **route) {
            tracing::warn!(
                route = %route,
                waiting = counts.pending(),
                "outbox: messages wait in the store for a route that is not async now; \
                 they are delivered once an async route of this name is back"
            );
        }
    }
}

/// One async route's delivery loop.
struct Delivery {
    route: String,
    outbox: Arc<Outbox>,
    routers: Arc<[Arc<ArcSwap<Router>>]>,
    reloaded: watch::Receiver<()>,
    stop: watch::Receiver<bool>,
    drain: Duration,
}

impl Delivery {
    async fn run(mut self) {
        let mut in_flight = JoinSet::new();
        while !*self.stop.borrow() {
            while in_flight.try_join_next().is_some() {}
            let Some(stack) = self.stack() else {
                // No async route of this name now: its messages wait for one to come back.
                tokio::select! {
                    _ = self.reloaded.changed() => continue,
                    _ = self.stop.changed() => break,
                }
            };
            let concurrency = stack.async_concurrency();
            if in_flight.len() >= concurrency {
                tokio::select! {
                    _ = in_flight.join_next() => continue,
                    _ = self.stop.changed() => break,
                }
            }
            // No endpoint may take a message now: trying each in turn would only record
            // failures and push every message's next attempt back.
            if stack.upstream().may_admit().is_err() {
                tokio::select! {
                    () = tokio::time::sleep(PAUSE) => continue,
                    _ = self.stop.changed() => break,
                }
            }
            // While only half-open probes may go, one message at a time: it carries a probe, and
            // a batch would meet refusals past the probes, each costing its message an attempt
            // and a write. The next waits for it to end, which tells whether the probe closed
            // the breaker (a delivery under way may not have asked for its probe yet).
            let free = if stack.upstream().admits_freely() {
                concurrency - in_flight.len()
            } else if in_flight.is_empty() {
                1
            } else {
                tokio::select! {
                    _ = in_flight.join_next() => continue,
                    _ = self.stop.changed() => break,
                }
            };
            // Not cut short by a reload: a batch taken but not started would wait out its lease
            // before anything handed it out again, behind every later message. A take waits
            // `TAKE_WAIT` at most, and what it takes goes with the routes as they are then.
            let taken = tokio::select! {
                taken = self.outbox.store.take(&self.route, free, TAKE_WAIT) => taken,
                // A batch taken but not started is handed out again when its lease ends.
                _ = self.stop.changed() => break,
            };
            match taken {
                Ok(batch) => {
                    let stack = self.stack().unwrap_or(stack);
                    for leased in batch {
                        in_flight.spawn(deliver(self.outbox.clone(), stack.clone(), leased));
                    }
                }
                Err(StoreError::Closed) => {
                    // Closed at shutdown once the loops are told to stop; before that, only a
                    // store that failed for good closes, and nothing else would say so.
                    if !*self.stop.borrow() {
                        tracing::error!(
                            route = %self.route,
                            "outbox: the store closed; this route's messages wait for a restart"
                        );
                    }
                    break;
                }
                Err(err) => {
                    tracing::warn!(route = %self.route, error = %err, "outbox: cannot take messages");
                    tokio::select! {
                        () = tokio::time::sleep(TAKE_WAIT) => {}
                        _ = self.stop.changed() => break,
                    }
                }
            }
        }
        // Deliveries under way may finish; one cut short is delivered again after a restart.
        let finished = tokio::time::timeout(self.drain, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                route = %self.route,
                cut = in_flight.len(),
                "outbox: the drain timeout passed with deliveries under way; they are delivered \
                 again after a restart"
            );
        }
    }

    // The async route of this loop's name, as the routes stand now.
    fn stack(&self) -> Option<Arc<Stack>> {
        self.routers.iter().find_map(|router| {
            router
                .load()
                .stacks()
                .find(|stack| stack.name() == self.route && stack.outbox().is_some())
                .cloned()
        })
    }
}

/// The memory the bodies of async requests hold while they are read and stored (`[outbox]
/// max_buffered`), counted in KiB. Without it nothing but `max_connections` times the HTTP/2
/// streams times `max_request_body` bounded it: a burst of large posts could take gigabytes.
#[derive(Debug)]
struct Buffered {
    kib: Semaphore,
    /// The whole budget: a body may hold all of it, never more.
    total: u32,
    /// `rampart_outbox_buffered_bytes`.
    gauge: Gauge,
}

/// What [`Buffered::read`] sets aside before a body arrives, at most: its declared length is
/// only a claim.
const FIRST_BUFFER: u64 = 64 << 10;

/// Why [`Buffered::read`] read no body.
enum Unread {
    /// The budget has no room for it.
    NoRoom,
    /// The body failed (its fault is in the request's extensions).
    Body,
}

/// A body's share of the budget, given back when dropped.
struct Held<'a> {
    permit: SemaphorePermit<'a>,
    bytes: i64,
    gauge: &'a Gauge,
}

impl Buffered {
    fn new(max: u64, gauge: Gauge) -> Buffered {
        let total = u32::try_from(max.div_ceil(1024)).unwrap_or(u32::MAX);
        Buffered {
            kib: Semaphore::new(total as usize),
            total,
            gauge,
        }
    }

    /// Reads `body` whole, holding its size of the budget as it arrives, until the share
    /// returned is dropped. What a body holds is what it sent, not what it declared: a client
    /// declaring a large length and sending slowly holds nothing it has not sent. A body larger
    /// than the whole budget holds all of it, so it is read alone; `max_request_body` still
    /// bounds it.
    async fn read(&self, mut body: RequestBody) -> Result<(Bytes, Held<'_>), Unread> {
        let declared = hyper::body::Body::size_hint(&body).lower();
        let mut held = Held {
            permit: self.kib.try_acquire_many(0).map_err(|_| Unread::NoRoom)?,
            bytes: 0,
            gauge: &self.gauge,
        };
        let mut read =
            BytesMut::with_capacity(usize::try_from(declared.min(FIRST_BUFFER)).unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Unread::Body)?;
            if let Ok(data) = frame.into_data() {
                self.grow(&mut held, data.len())?;
                read.extend_from_slice(&data);
            }
        }
        Ok((read.freeze(), held))
    }

    /// Makes `held` cover `more` bytes besides its own, if the budget has room.
    fn grow<'a>(&'a self, held: &mut Held<'a>, more: usize) -> Result<(), Unread> {
        let bytes = held.bytes + more as i64;
        let want = u32::try_from((bytes as u64).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total);
        let have = held.permit.num_permits() as u32;
        if want > have {
            let more = self
                .kib
                .try_acquire_many(want - have)
                .map_err(|_| Unread::NoRoom)?;
            held.permit.merge(more);
        }
        self.gauge.inc_by(bytes - held.bytes);
        held.bytes = bytes;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// Why a delivery attempt failed, and when the upstream asked to be tried again.
struct Failure {
    why: String,
    retry_after: Option<Duration>,
}

// One attempt at `leased`, and its settlement in the store.
async fn deliver(outbox: Arc<Outbox>, stack: Arc<Stack>, leased: Leased) {
    let Leased { message, lease } = leased;
    let store = &outbox.store;
    let settled = match attempt(&stack, &message, outbox.longest_delivery).await {
        Ok(()) => store.delivered(lease).await.map(|()| {
            outbox.metrics.delivered.inc();
        }),
        Err(failure) => {
            let now = store.now();
            if now.saturating_since(message.status.queued_at) >= outbox.max_age {
                tracing::warn!(
                    route = %stack.name(), id = %message.id(), attempts = message.status.attempts + 1,
                    error = %failure.why, "outbox: a message is dead after max_age"
                );
                store.dead(lease, failure.why).await.map(|()| {
                    outbox.metrics.dead.inc();
                })
            } else {
                let backoff = outbox.backoff(message.status.attempts);
                let delay = failure
                    .retry_after
                    .map_or(backoff, |hint| hint.max(backoff));
                // Never past `max_age`: a backoff or a `Retry-After` longer than the time left
                // would keep the message queued long after it should have been given up on (for
                // ever, with a backoff of centuries); its last attempt comes as its age is up,
                // and a failure then makes it dead.
                let last = message.status.queued_at.saturating_add(outbox.max_age);
                let at = now.saturating_add(delay).min(last);
                store.retry_later(lease, at, failure.why).await
            }
        }
    };
    match settled {
        // The lease ran out during the attempt: the message was handed out again, and that
        // delivery settles it.
        Ok(()) | Err(StoreError::LeaseLost(_)) => {}
        Err(err) => {
            tracing::warn!(route = %stack.name(), id = %message.id(), error = %err,
                "outbox: cannot record a delivery attempt");
        }
    }
}

// Sends `message` through the route's stack, within its timeout and `longest`; a 2xx answer that
// the upstream's classifier does not call a failure is a delivery, and a gRPC answer is one by
// its `grpc-status: 0` alone.
async fn attempt(stack: &Stack, message: &Message, longest: Duration) -> Result<(), Failure> {
    let stored = &message.request;
    let mut headers = HeaderMap::with_capacity(stored.headers.len() + 1);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Ok(id) = HeaderValue::from_str(&message.id().to_string()) {
        headers.insert(X_RAMPART_MESSAGE_ID, id);
    }
    let body = Full::new(stored.body.clone())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut request = Request::new(body);
    *request.method_mut() = stored.method.clone();
    *request.uri_mut() = Uri::from(stored.path_and_query.clone());
    *request.headers_mut() = headers;

    let deadline = turn::now() + stack.timeout().min(longest);
    let (response, outcome) = stack
        .call(request, deadline, Reason::Timeout)
        .await
        .map_err(|gave_up| Failure {
            why: gave_up.to_string(),
            retry_after: None,
        })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let grpc = is_grpc(response.headers());
    let mut code = grpc_status(response.headers());
    // Read to its end, so that the connection goes back to the pool. An HTTP body cut short does
    // not undo an answer already given; a gRPC call's status comes at the end.
    let mut body = std::pin::pin!(response.into_body());
    let whole = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Ok(trailers) = frame.into_trailers() {
                    code = code.or(grpc_status(&trailers));
                }
            }
        }
    };
    // A gRPC call is delivered by its status 0 alone: any other (UNIMPLEMENTED from a service
    // being redeployed, as a 404 would be) is a failed attempt, and so is an answer that broke
    // off before its end.
    let why = match code {
        Some(GrpcCode::Ok) if grpc && whole => return Ok(()),
        _ if grpc && !whole => "the upstream's gRPC answer broke off before its end".to_owned(),
        Some(code) if grpc || code.is_failure() => format!(
            "the upstream answered grpc-status {} ({})",
            code.as_u8(),
            code.name()
        ),
        None if grpc => "the upstream's gRPC answer ended without a grpc-status".to_owned(),
        _ if status.is_success() && !outcome.is_failure() => return Ok(()),
        _ => format!("the upstream answered {status}"),
    };
    Err(Failure { why, retry_after })
}

// A `Retry-After` in seconds (the HTTP-date form is not honoured), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    match retry_hint(headers, false) {
        RetryHint::After(hint) => Some(hint.min(MAX_RETRY_AFTER)),
        RetryHint::None | RetryHint::Never => None,
    }
}
