//! An open-loop load generator: requests to A at a fixed rate, each sent on its schedule whatever
//! happened to the ones before, as real clients do.
//!
//! A closed loop (send, wait for the answer, send the next) slows down with the service it
//! measures: a service that hangs gets fewer requests, and its latency hides behind them
//! (coordinated omission). Here the n-th request leaves at `n / rate` seconds, so a slow service
//! shows as latency and requests piling up. Each request has the client's own timeout (10 s by
//! default), past which it counts as failed with that latency; each is recorded with the time it
//! was sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Protocol;
use crate::grpc;
use crate::service::{self, Reply};

/// How many different items the requests ask for, in turn.
const ITEMS: u64 = 100;

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A whole page.
    Ok,
    /// A page with stand-ins that protection chose to give: the degraded parts are named.
    Fallback,
    /// A page with a part missing: a call failed, and the page shows a hole.
    Partial,
    /// An error answer (A could not build a page), or no answer.
    Error,
    /// No answer within the client's timeout.
    Timeout,
}

impl Outcome {
    /// Whether the client got what it asked for, real or stand-in.
    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Fallback)
    }
}

/// One request: when it was sent, how long its answer took, how it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds from the start of the run to the request's departure.
    pub sent: f64,
    /// Milliseconds to the whole answer (or to the client's timeout).
    pub latency_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// The load of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per second.
    pub rate: u32,
    /// How long requests are sent for.
    pub duration: Duration,
    /// The client's patience with one request.
    pub timeout: Duration,
    /// Post orders (`POST /order/<n>`, each number once) instead of asking for pages.
    pub orders: bool,
}

impl Load {
    /// How many requests the run sends.
    pub fn requests(&self) -> u64 {
        (self.duration.as_secs_f64() * f64::from(self.rate)).round() as u64
    }
}

/// Counts kept as the run goes, for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests answered (or timed out).
    pub done: AtomicU64,
    /// Requests that succeeded (whole or with stand-ins).
    pub succeeded: AtomicU64,
    /// The numbers of the orders A accepted (answered 200 or 202), when the load posts orders.
    pub accepted: std::sync::Mutex<Vec<u64>>,
}

/// Sends `load` to A at `target`, starting at `start`; returns every request's sample, once the
/// last one has ended.
pub async fn run(
    target: SocketAddr,
    protocol: Protocol,
    load: Load,
    start: Instant,
    live: Arc<Live>,
) -> Vec<Sample> {
    let client = Client::builder(TokioExecutor::new()).build(service::connector());
    let grpc = grpc::Client::new();
    let (send, mut samples) = mpsc::unbounded_channel();
    let period = Duration::from_secs_f64(1.0 / f64::from(load.rate.max(1)));
    for n in 0..load.requests() {
        let at = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(at).await;
        let (client, grpc, send, live) = (client.clone(), grpc.clone(), send.clone(), live.clone());
        live.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let item = n % ITEMS + 1;
            let sent = Instant::now();
            let answer = match protocol {
                Protocol::Http if load.orders => {
                    let order = n + 1;
                    let answer =
                        tokio::time::timeout(load.timeout, post_order(&client, target, order))
                            .await;
                    if answer == Ok(Outcome::Ok) {
                        live.accepted
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(order);
                    }
                    answer
                }
                Protocol::Http => {
                    tokio::time::timeout(load.timeout, http(&client, target, item)).await
                }
                Protocol::Grpc => {
                    tokio::time::timeout(load.timeout, via_grpc(&grpc, target, item)).await
                }
            };
            let outcome = answer.unwrap_or(Outcome::Timeout);
            let sample = Sample {
                sent: sent.duration_since(start).as_secs_f64(),
                latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                outcome,
            };
            live.done.fetch_add(1, Ordering::Relaxed);
            if outcome.succeeded() {
                live.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            let _ = send.send(sample);
        });
    }
    drop(send);
    let mut all = Vec::new();
    while let Some(sample) = samples.recv().await {
        all.push(sample);
    }
    all.sort_by(|a, b| a.sent.total_cmp(&b.sent));
    all
}

/// One request to A, with the client's usual timeout: how it ended.
pub(crate) async fn probe(target: SocketAddr, protocol: Protocol) -> Outcome {
    let answer = match protocol {
        Protocol::Http => {
            let client = Client::builder(TokioExecutor::new()).build(service::connector());
            tokio::time::timeout(Duration::from_secs(10), http(&client, target, 1)).await
        }
        Protocol::Grpc => {
            let client = grpc::Client::new();
            tokio::time::timeout(Duration::from_secs(10), via_grpc(&client, target, 1)).await
        }
    };
    answer.unwrap_or(Outcome::Timeout)
}

async fn http(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    target: SocketAddr,
    item: u64,
) -> Outcome {
    let Ok(uri) = format!("http://{target}/item/{item}").parse() else {
        return Outcome::Error;
    };
    let Ok(response) = client.get(uri).await else {
        return Outcome::Error;
    };
    let status = response.status();
    let Ok(body) = response.into_body().collect().await else {
        return Outcome::Error;
    };
    if !status.is_success() {
        return Outcome::Error;
    }
    match serde_json::from_slice(&body.to_bytes())
        .ok()
        .and_then(|json: Value| Reply::from_json(&json))
    {
        Some(reply) => judge(&reply),
        None => Outcome::Error,
    }
}

/// Posts order `order` to A: accepted when A answers 200 (C took it) or 202 (queued for C).
async fn post_order(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    target: SocketAddr,
    order: u64,
) -> Outcome {
    let Ok(request) =
        http::Request::post(format!("http://{target}/order/{order}")).body(Empty::new())
    else {
        return Outcome::Error;
    };
    let Ok(response) = client.request(request).await else {
        return Outcome::Error;
    };
    let status = response.status();
    if response.into_body().collect().await.is_err() || !status.is_success() {
        return Outcome::Error;
    }
    Outcome::Ok
}

async fn via_grpc(client: &grpc::Client, target: SocketAddr, item: u64) -> Outcome {
    match client.call(target, &grpc::path("a"), item, None).await {
        Ok((reply, _)) => judge(&reply),
        Err(_) => Outcome::Error,
    }
}

/// A page is whole, degraded (stand-ins named in `degraded`) or partial (parts in `missing`).
/// A page whose main part, B's item, stood in as nothing is partial too, whatever stands in
/// beside it: the naive wiring's page without it counts as failed, and so does this one.
pub(crate) fn judge(page: &Reply) -> Outcome {
    let missing = page.value["missing"]
        .as_array()
        .is_some_and(|missing| !missing.is_empty());
    if missing || page.value.get("b").is_some_and(Value::is_null) {
        Outcome::Partial
    } else if page.degraded.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Fallback
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn page(degraded: &[&str], missing: Value) -> Reply {
        Reply {
            service: "a".to_owned(),
            value: json!({"item": 1, "missing": missing}),
            degraded: degraded.iter().map(|name| (*name).to_owned()).collect(),
        }
    }

    #[test]
    fn pages_are_judged_by_their_parts() {
        assert_eq!(judge(&page(&[], json!([]))), Outcome::Ok);
        assert_eq!(judge(&page(&["c"], json!([]))), Outcome::Fallback);
        let hole = json!([{"part": "b", "why": "502"}]);
        assert_eq!(judge(&page(&["c"], hole)), Outcome::Partial);
        // B's item stood in for by nothing: no page, whatever stands in for D.
        let mut empty = page(&["b", "d"], json!([]));
        empty.value["b"] = Value::Null;
        empty.value["d"] = json!({"also_bought": []});
        assert_eq!(judge(&empty), Outcome::Partial);
        // B's item with C's part stood in for is a page.
        let mut degraded = page(&["c"], json!([]));
        degraded.value["b"] = json!({"name": "item 1", "stock": null});
        assert_eq!(judge(&degraded), Outcome::Fallback);
    }

    #[test]
    fn the_schedule_is_the_rate_times_the_duration() {
        let load = Load {
            rate: 50,
            duration: Duration::from_secs(12),
            timeout: Duration::from_secs(10),
            orders: false,
        };
        assert_eq!(load.requests(), 600);
    }
}
