//! `GET /fleet/events`: the event streams of every instance, relayed in one.
//!
//! A browser opens at most six HTTP/1.1 connections to one server, and each event stream holds
//! one for as long as the page is open: a page following each instance's `/api/events` through
//! the fleet view would stall past five instances. So the fleet view follows them itself, one
//! task per instance for as long as the page's stream is open, and relays each `stats` and
//! `transition` as `target-stats` and `target-transition`, their data wrapped as
//! `{"target": "t/<i>", "data": ...}`. When it cannot follow an instance (no answer, a stream
//! that ends, or no event for five seconds where stats come every second) it says
//! `target-lost` with the reason, and follows it again after a pause growing from one to five
//! seconds. A `ping` every two seconds tells the page that the stream itself is alive.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};

use super::{ANSWER_TIMEOUT, Target};
use crate::api::Answer;
use crate::events::{self, frame};

/// Events written ahead of a slow page: past this, the relaying tasks wait for it.
const QUEUED: usize = 64;

/// How often the page is told the stream is alive.
const PING_EVERY: Duration = Duration::from_secs(2);

/// An instance silent for this long (its stats come every second) is taken for lost.
const SILENCE: Duration = Duration::from_secs(5);

/// The pauses before following a lost instance again: the first, doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// The largest event relayed: an instance's stats for a few thousand endpoints fit well within.
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// The shared stream of `targets`, each followed by a task that ends when the page leaves.
pub(super) fn stream(targets: &[Target], client: &Client<HttpConnector, Full<Bytes>>) -> Answer {
    let (events, queue) = mpsc::channel(QUEUED);
    for (i, target) in targets.iter().enumerate() {
        let follow = follow(
            format!("t/{i}"),
            target.clone(),
            client.clone(),
            events.clone(),
        );
        tokio::spawn(follow);
    }
    tokio::spawn(ping(events));
    events::response(queue)
}

async fn ping(events: mpsc::Sender<Bytes>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if events.send(frame("ping", &json!({}))).await.is_err() {
            return;
        }
    }
}

// Follows `target` until the page leaves, telling it each time the instance is lost.
async fn follow(
    base: String,
    target: Target,
    client: Client<HttpConnector, Full<Bytes>>,
    events: mpsc::Sender<Bytes>,
) {
    let mut pause = RETRY_FIRST;
    loop {
        let why = tokio::select! {
            _ = events.closed() => return,
            why = relay(&base, &target, &client, &events, &mut pause) => why,
        };
        let lost = frame("target-lost", &json!({"target": base, "error": why}));
        if events.send(lost).await.is_err() {
            return;
        }
        tokio::select! {
            _ = events.closed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_LAST);
    }
}

// Relays the events of `target` until its stream ends or fails, and says why it did. Each event
// relayed resets `pause`: the instance was reached.
async fn relay(
    base: &str,
    target: &Target,
    client: &Client<HttpConnector, Full<Bytes>>,
    events: &mpsc::Sender<Bytes>,
    pause: &mut Duration,
) -> String {
    let request = match Request::get(format!("http://{}/api/events", target.authority))
        .body(Full::default())
    {
        Ok(request) => request,
        Err(err) => return err.to_string(),
    };
    let response = match timeout(ANSWER_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return err.to_string(),
        Err(_) => return format!("no answer within {ANSWER_TIMEOUT:?}"),
    };
    if response.status() != StatusCode::OK {
        return format!("its event stream answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    loop {
        let frame = match timeout(SILENCE, body.frame()).await {
            Err(_) => return format!("no event for {SILENCE:?}"),
            Ok(None) => return "its event stream ended".to_owned(),
            Ok(Some(Err(err))) => return err.to_string(),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            if let Some(relayed) = wrap(base, &event) {
                *pause = RETRY_FIRST;
                if events.send(relayed).await.is_err() {
                    return "the page left".to_owned();
                }
            }
        }
        if buffer.len() > MAX_EVENT {
            return format!("an event larger than {MAX_EVENT} bytes");
        }
    }
}

/// An instance's `stats` or `transition` event as the shared stream carries it; `None` for any
/// other event, or one that is not an event of rampart's.
fn wrap(base: &str, event: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(event).ok()?;
    let (mut name, mut data) = (None, None);
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim());
        } else if let Some(value) = line.strip_prefix("data:") {
            data = Some(value.trim_start());
        }
    }
    let name = match name? {
        "stats" => "target-stats",
        "transition" => "target-transition",
        _ => return None,
    };
    let data: Value = serde_json::from_str(data?).ok()?;
    Some(frame(name, &json!({"target": base, "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_event_is_wrapped_with_its_base() {
        let wrapped = wrap("t/1", b"event: transition\ndata: {\"to\":\"open\"}\n\n").unwrap();
        assert_eq!(
            wrapped,
            "event: target-transition\ndata: {\"data\":{\"to\":\"open\"},\"target\":\"t/1\"}\n\n"
        );
        assert!(wrap("t/1", b"event: other\ndata: {}\n\n").is_none());
        assert!(wrap("t/1", b"event: stats\ndata: not json\n\n").is_none());
        assert!(wrap("t/1", b"data: {}\n\n").is_none());
    }
}
