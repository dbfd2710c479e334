//! The outbox: durable store-and-forward for requests that need no answer now.
//!
//! Placing an order or sending a notification must not fail because the service that handles
//! it is down for a minute. A route with `[routes.async] enabled = true` therefore stores each
//! request here, durably, and only then answers the client `202 Accepted` with
//! `x-rampart-message-id`; a delivery loop sends it upstream later through the route's normal
//! stack, retrying with backoff until the upstream takes it or `max_age` passes, then moves it to
//! a dead-letter list.
//!
//! **The guarantee is at-least-once.** An append that returned `Ok` is on disk (or in JetStream)
//! and will be delivered, or dead-lettered and kept, whatever crashes meanwhile. A message may be
//! delivered more than once: when the process dies after the upstream took it but before that
//! was recorded, or when an attempt outlives its lease. Upstreams that must not act twice use the
//! client's `idempotency-key`, which the store keeps with the request ([`Request::idempotency_key`]).
//!
//! # The pieces
//!
//! - [`Store`]: the operations, one FIFO queue per route. Object-safe, so the proxy holds an
//!   `Arc<dyn Store>` whichever backend `[outbox] store` names.
//! - [`Embedded`]: a redb file under `[outbox] path`, with group commit ([`embedded`] tells how).
//! - [`Nats`]: a NATS JetStream work-queue stream and a key-value bucket of statuses, which
//!   several rampart instances can share ([`nats`] tells how, and what differs).
//! - [`record`]: the versioned binary format of what is stored, and its never-panicking decoder.
//! - [`StoreClock`]: the store's wall-clock time, moving with an injected clock so that tests run
//!   on tokio's paused clock.
//!
//! # How the proxy uses it
//!
//! - **Start:** `Embedded::open(Options { dir: path, limits: Limits { max_messages, max_bytes,
//!   on_full }, lease, .. })` from `[outbox]`, with `lease` above the longest route timeout; for
//!   `store = "nats"`, `Nats::connect(NatsOptions { url, stream, limits, lease, .. })` from
//!   `nats = { url, stream }` instead. Either goes into an `Arc<dyn Store>`.
//! - **An async request:** buffer the body (bounded by `max_request_body`), then
//!   [`Store::append`]. `Ok(id)`: answer 202 with `x-rampart-message-id: {id}` and
//!   `{"id": "{id}", "status": "queued"}`. [`Error::Full`]: answer through `rampart_http::rescue`
//!   with the `outbox-full` reason (503). Any other error: 503 as well; nothing was accepted.
//! - **The delivery loop**, one per async route:
//!   ```text
//!   loop {
//!       for Leased { message, lease } in store.take(route, 16, 1s).await? {
//!           send message.request through the route's stack (fallback, timeout, retry, ...)
//!           success        -> store.delivered(lease)                  ; rampart_outbox_delivered_total += 1
//!           failure, young -> store.retry_later(lease, now + backoff(message.status.attempts), why)
//!           failure, older than max_age (counted from status.queued_at)
//!                          -> store.dead(lease, why)                   ; rampart_outbox_dead_total += 1
//!       }
//!   }
//!   ```
//!   `backoff` is `rampart_policy::retry::ExponentialBackoff` from `[outbox] retry`, with the
//!   proxy's injected RNG for jitter. [`Error::LeaseLost`] from a settle means the attempt outlived
//!   its lease and the message was handed out again; the loop ignores it.
//! - **Admin API:** `GET /api/outbox` renders [`Store::summary`] (`rampart_outbox_pending` is
//!   [`Counts::pending`] of its total); `GET /api/outbox/<id>` parses the id
//!   ([`MessageId`]'s `FromStr`) and renders [`Store::get`], 404 for `None`;
//!   `GET /api/outbox/dead` renders a page of [`Store::dead_letters`], and
//!   `POST /api/outbox/dead/redrive` walks the pages calling [`Store::redrive`] on each.
//! - **Drain:** stop the loops at their next `take`, then [`Embedded::close`] (or
//!   [`Nats::close`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use http::Method;
//! use rampart_outbox::{Embedded, Options, Request, State, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rampart_outbox::Error> {
//! # let dir = std::env::temp_dir().join(format!("rampart-outbox-doc-{}", std::process::id()));
//! let store = Embedded::open(Options::new(&dir)).await?;
//!
//! let mut order = Request::new(Method::POST, "/orders".parse().unwrap());
//! order.body = "{\"sku\": 42}".into();
//! let id = store.append("orders", order).await?; // durable now: answer 202
//!
//! let batch = store.take("orders", 10, Duration::ZERO).await?;
//! assert_eq!(batch[0].message.id(), id);
//! store.delivered(batch[0].lease).await?; // the upstream took it
//!
//! assert_eq!(store.get(id).await?.unwrap().state, State::Delivered);
//! store.close().await?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod embedded;
mod error;
mod id;
mod index;
mod message;
pub mod nats;
pub mod record;
mod store;
mod time;

pub use embedded::{Embedded, Options};
pub use error::{BoxError, Error, Full, FullReason};
pub use id::{MessageId, ParseIdError};
pub use message::{Lease, Leased, Message, Request, State, Status};
pub use nats::{Nats, NatsOptions};
pub use store::{Counts, Limits, OnFull, Store, Summary};
pub use time::{StoreClock, Timestamp};
