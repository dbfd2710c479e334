//! `/api/outbox`: the queues of the async routes, one message's state, and the re-drive of a
//! dead message.
//!
//! ```text
//! GET  /api/outbox                  {"store": "embedded", "pending": 3, "dropped": 0,
//!                                    "total": {"queued": 2, "delivering": 1, "dead": 1, ...},
//!                                    "routes": {"orders": {...}}}
//! GET  /api/outbox/<id>             {"id": "...", "route": "orders", "state": "queued",
//!                                    "attempts": 2, "last_error": "...", "accepted_at": ..., ...}
//! POST /api/outbox/<id>/redrive     a dead message back in its queue (token needed)
//! ```
//!
//! Times are RFC 3339 in UTC, to the millisecond.

use rampart_config::OutboxStore;
use rampart_outbox::{Counts, Error, MessageId, Status, Store, Summary, Timestamp};
use serde_json::{Map, Value, json};

use crate::State;
use crate::api::{Answer, answer, error};
use http::StatusCode;

/// `GET /api/outbox`.
pub(crate) async fn summary(state: &State) -> Answer {
    let Some(store) = state.proxy.outbox() else {
        return none();
    };
    match store.summary().await {
        Ok(summary) => answer(StatusCode::OK, &summary_json(&summary, kind(state))),
        Err(err) => unavailable(&err),
    }
}

/// `GET /api/outbox/<id>`.
pub(crate) async fn message(state: &State, id: &str) -> Answer {
    let (store, id) = match store_and_id(state, id) {
        Ok(found) => found,
        Err((status, message)) => return error(status, &message),
    };
    match store.get(id).await {
        Ok(Some(status)) => answer(StatusCode::OK, &status_json(&status)),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no message {id}")),
        Err(err) => unavailable(&err),
    }
}

/// `POST /api/outbox/<id>/redrive`: the caller checked the token.
pub(crate) async fn redrive(state: &State, id: &str) -> Answer {
    let (store, id) = match store_and_id(state, id) {
        Ok(found) => found,
        Err((status, message)) => return error(status, &message),
    };
    match store.redrive(id).await {
        Ok(()) => {
            tracing::info!(%id, "admin API: a dead message re-driven");
            answer(
                StatusCode::OK,
                &json!({"id": id.to_string(), "state": "queued"}),
            )
        }
        Err(Error::NotFound(_)) => error(StatusCode::NOT_FOUND, &format!("no message {id}")),
        Err(err @ Error::NotDead { .. }) => error(StatusCode::CONFLICT, &err.to_string()),
        Err(err) => unavailable(&err),
    }
}

type Found = (std::sync::Arc<dyn Store>, MessageId);

// The store and the id `id` names, or the status and message to refuse with.
fn store_and_id(state: &State, id: &str) -> Result<Found, (StatusCode, String)> {
    let Some(store) = state.proxy.outbox() else {
        return Err((StatusCode::NOT_FOUND, NO_OUTBOX.to_owned()));
    };
    let id = id.parse::<MessageId>().map_err(|err| {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "{id:?} is not a message id ({err}); ids are what a 202's x-rampart-message-id says"
            ),
        )
    })?;
    Ok((store, id))
}

const NO_OUTBOX: &str = "no outbox: the configuration has no [outbox] section";

fn none() -> Answer {
    error(StatusCode::NOT_FOUND, NO_OUTBOX)
}

fn unavailable(err: &Error) -> Answer {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the outbox store failed: {err}"),
    )
}

fn kind(state: &State) -> &'static str {
    match state.proxy.config().outbox.map(|outbox| outbox.store) {
        Some(OutboxStore::Nats { .. }) => "nats",
        _ => "embedded",
    }
}

fn summary_json(summary: &Summary, store: &str) -> Value {
    let routes: Map<String, Value> = summary
        .routes
        .iter()
        .map(|(route, counts)| (route.to_string(), counts_json(counts)))
        .collect();
    json!({
        "store": store,
        "pending": summary.total.pending(),
        "dropped": summary.dropped,
        "total": counts_json(&summary.total),
        "routes": routes,
    })
}

fn counts_json(counts: &Counts) -> Value {
    json!({
        "queued": counts.queued,
        "delivering": counts.delivering,
        "dead": counts.dead,
        "delivered": counts.delivered,
        "bytes": counts.bytes,
    })
}

fn status_json(status: &Status) -> Value {
    json!({
        "id": status.id.to_string(),
        "route": &*status.route,
        "state": status.state.as_str(),
        "attempts": status.attempts,
        "last_error": status.last_error,
        "accepted_at": rfc3339(status.accepted_at),
        "queued_at": rfc3339(status.queued_at),
        "next_attempt_at": rfc3339(status.next_attempt_at),
        "changed_at": rfc3339(status.changed_at),
        "size": status.size,
    })
}

/// `at` as `2026-11-28T05:04:03.210Z`.
fn rfc3339(at: Timestamp) -> String {
    let millis = at.as_millis();
    let (days, ms_of_day) = (millis / 86_400_000, millis % 86_400_000);
    let (year, month, day) = civil(days);
    let seconds = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms_of_day % 1000
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(Timestamp::EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(
            rfc3339(Timestamp::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_millis(1_795_840_496_000)),
            "2026-11-28T04:34:56.000Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_millis(4_107_542_399_999)),
            "2100-02-28T23:59:59.999Z"
        );
    }
}
