//! Helpers shared by the outbox's tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use rampart_outbox::{Embedded, Limits, Options, Request, StoreClock, Timestamp};
use rampart_policy::clock::TokioClock;
use rampart_policy::rng::Rng;

/// The time every test store starts at: 2026-01-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// A clock reading [`START`] now and moving with tokio's (paused) clock.
pub fn clock() -> StoreClock {
    StoreClock::starting_at(Arc::new(TokioClock), START)
}

/// Options for a store in `dir` on `clock`, leases of 30 s, tombstones kept 1 h.
pub fn options(dir: &Path, clock: &StoreClock, limits: Limits) -> Options {
    Options {
        limits,
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(3600),
        clock: clock.clone(),
        rng: Rng::seeded(1),
        ..Options::new(dir)
    }
}

pub async fn open(dir: &Path, clock: &StoreClock, limits: Limits) -> Embedded {
    Embedded::open(options(dir, clock, limits))
        .await
        .expect("the store opens")
}

/// A POST of `body` to `/orders?n=<tag>`, with two headers, one repeated.
pub fn request(tag: u64, body: &[u8]) -> Request {
    let mut r = Request::new(
        Method::POST,
        format!("/orders?n={tag}").parse().expect("a path"),
    );
    r.headers = vec![
        (
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        ),
        (HeaderName::from_static("x-tag"), HeaderValue::from(tag)),
        (
            HeaderName::from_static("x-tag"),
            HeaderValue::from_static("again"),
        ),
    ];
    r.body = Bytes::copy_from_slice(body);
    r.idempotency_key = Some(format!("key-{tag}"));
    r
}
