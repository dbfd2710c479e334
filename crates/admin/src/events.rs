//! `GET /api/events`: Server-Sent Events for a dashboard to follow a running proxy without
//! polling. `stats` comes every second with the `/api/stats` JSON; `transition` comes as it
//! happens, at each breaker transition or health change of an endpoint.
//!
//! Each stream is fed by a task of its own, which ends when the client goes away (its body is
//! dropped, the channel closes) or the admin server stops (which ends each answer's body, the
//! stream with its last chunk).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use rampart_proxy::ProxyHandle;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::MissedTickBehavior;

use crate::api::Answer;
use crate::json;

/// How often the stats go out.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Events written ahead of a slow client: past this, the feeding task waits for it. Few: each
/// may be the whole stats of a large configuration, held for a client that reads nothing.
const QUEUED: usize = 4;

/// How long a stream's reader may take none of its events before the stream gives up its place
/// (one of the few there may be) and stops being fed: a reader stuck, or gone without closing,
/// must not lock out the dashboards for good.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(30);

/// The event stream of `proxy`.
pub(crate) fn stream(proxy: ProxyHandle, permit: OwnedSemaphorePermit) -> Answer {
    let (events, queue) = mpsc::channel(QUEUED);
    tokio::spawn(async move {
        feed(proxy, events).await;
        // The stream's place is free once nobody reads it.
        drop(permit);
    });
    response(queue)
}

/// An event stream whose events are what `queue` receives, until its senders are gone.
pub(crate) fn response(queue: mpsc::Receiver<Bytes>) -> Answer {
    let mut response = Response::new(Events(queue).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

// Writes the events of `proxy` into `events` until nobody reads them.
async fn feed(proxy: ProxyHandle, events: mpsc::Sender<Bytes>) {
    // Subscribed before the first stats go out, so no change falls between the two.
    let mut changes = proxy.changes();
    let mut tick = tokio::time::interval(STATS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = events.closed() => return,
            _ = tick.tick() => frame("stats", &json::stats(&proxy).await),
            change = changes.recv() => match change {
                Ok(change) => frame("transition", &json::change(&change)),
                // Fallen behind: the next stats bring the client up to date.
                Err(RecvError::Lagged(_)) => continue,
                // The proxy is gone.
                Err(RecvError::Closed) => return,
            },
        };
        if !offer(&events, event).await {
            return;
        }
    }
}

/// Queues `event` for the reader of `events`: `false` when the reader is gone, or has taken
/// nothing for [`STALLED_AFTER`] while the queue was full.
pub(crate) async fn offer(events: &mpsc::Sender<Bytes>, event: Bytes) -> bool {
    matches!(
        tokio::time::timeout(STALLED_AFTER, events.send(event)).await,
        Ok(Ok(()))
    )
}

/// One event in the SSE format: its name, and its JSON on one `data:` line.
pub(crate) fn frame(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The response body of an event stream: the events as the task feeding it writes them.
pub(crate) struct Events(pub(crate) mpsc::Receiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|event| Ok(Frame::data(event))))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_nothing_is_given_up_on() {
        let (events, mut queue) = mpsc::channel(QUEUED);
        for _ in 0..QUEUED {
            assert!(offer(&events, Bytes::from_static(b"x")).await);
        }
        let start = tokio::time::Instant::now();
        assert!(!offer(&events, Bytes::from_static(b"x")).await);
        assert_eq!(start.elapsed(), STALLED_AFTER);
        // One that reads, however slowly, is not.
        let reading = tokio::spawn(async move {
            tokio::time::sleep(STALLED_AFTER / 2).await;
            let event = queue.recv().await;
            (event, queue)
        });
        assert!(offer(&events, Bytes::from_static(b"y")).await);
        let (event, _queue) = reading.await.unwrap();
        assert_eq!(event.as_deref(), Some(&b"x"[..]));
        drop(events);
    }

    #[test]
    fn an_event_is_its_name_and_one_data_line() {
        let event = frame("transition", &json!({"to": "open"}));
        assert_eq!(event, "event: transition\ndata: {\"to\":\"open\"}\n\n");
    }
}
