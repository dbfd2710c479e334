//! `/api/outbox`: the queues of the async routes, one message's state, the dead-letter list, and
//! the re-drive of dead messages, one or all.
//!
//! ```text
//! GET  /api/outbox                  {"store": "embedded", "pending": 3, "dropped": 0,
//!                                    "total": {"queued": 2, "delivering": 1, "dead": 1, ...},
//!                                    "routes": {"orders": {...}}}
//! GET  /api/outbox/<id>             {"id": "...", "route": "orders", "state": "queued",
//!                                    "attempts": 2, "last_error": "...", "accepted_at": ..., ...}
//! POST /api/outbox/<id>/redrive     a dead message back in its queue (token needed)
//! GET  /api/outbox/dead             {"messages": [<as GET /api/outbox/<id>>, ...],
//!      ?route=NAME&after=ID&limit=N  "next": "<id>" | null}
//! POST /api/outbox/dead/redrive     every dead message (of `?route=NAME`) back in its queue
//!                                   (token needed): {"redriven": 12}
//! ```
//!
//! A `route` the outbox does not know (no async route of the configuration, no messages in the
//! store) is answered 404 with the routes it knows, rather than an empty list.
//!
//! The dead-letter list comes oldest accepted first, `limit` at a time (100 by default, 1000 at
//! most); `next` is the `after` of the next page, `null` on the last. Paging by id rather than by
//! position keeps a page steady while messages die or are re-driven meanwhile. Re-driving them
//! all walks the same pages, a few dozen re-drives under way at once, so that the embedded store
//! commits them together; a message that left the list in between (delivered, dropped, re-driven
//! by another caller) is passed over and not counted.
//!
//! Times are RFC 3339 in UTC, to the millisecond.

use futures_util::{StreamExt, stream};
use http::StatusCode;
use rampart_outbox::{Counts, Error, MessageId, Status, Store, Summary, Timestamp};
use rampart_proxy::ProxyHandle;
use serde_json::{Map, Value, json};

use crate::State;
use crate::api::{Answer, answer, decode, error};

/// Dead messages a page holds when the call does not say.
const DEFAULT_LIMIT: usize = 100;
/// Dead messages a page holds at most: a page is read and rendered whole.
const MAX_LIMIT: usize = 1000;
/// Re-drives under way at once when re-driving them all: enough for the embedded store to commit
/// many in one fsync (and the nats store to overlap its round trips), few enough to leave the
/// store to the delivery loops too.
const REDRIVES_AT_ONCE: usize = 64;

/// `GET /api/outbox`.
pub(crate) async fn summary(state: &State) -> Answer {
    let Some(store) = state.proxy.outbox() else {
        return none();
    };
    match store.summary().await {
        Ok(summary) => answer(
            StatusCode::OK,
            &summary_json(&state.proxy, &summary, store.kind()),
        ),
        Err(err) => unavailable(&err),
    }
}

/// The `outbox` of the stats: what `GET /api/outbox` answers, `null` without an `[outbox]`, and
/// `{"store", "error"}` while the store fails.
pub(crate) async fn stats(proxy: &ProxyHandle) -> Value {
    let Some(store) = proxy.outbox() else {
        return Value::Null;
    };
    match store.summary().await {
        Ok(summary) => summary_json(proxy, &summary, store.kind()),
        Err(err) => json!({"store": store.kind(), "error": err.to_string()}),
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

/// `GET /api/outbox/dead`: a page of the dead-letter list.
pub(crate) async fn dead_letters(state: &State, query: Option<&str>) -> Answer {
    let Some(store) = state.proxy.outbox() else {
        return none();
    };
    let page = match DeadQuery::parse(query, DeadQuery::PAGE) {
        Ok(page) => page,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(route) = &page.route
        && let Err(refused) = known_route(state, &*store, route).await
    {
        return refused;
    }
    // One more than the page: whether it comes says whether there is a next page.
    let listed = store
        .dead_letters(page.route.as_deref(), page.after, page.limit + 1)
        .await;
    match listed {
        Ok(mut dead) => {
            let next = if dead.len() > page.limit {
                dead.truncate(page.limit);
                dead.last().map(|status| status.id.to_string())
            } else {
                None
            };
            let messages: Vec<Value> = dead.iter().map(status_json).collect();
            answer(StatusCode::OK, &json!({"messages": messages, "next": next}))
        }
        Err(err) => unavailable(&err),
    }
}

/// `POST /api/outbox/dead/redrive`: every dead message (of the route) back in its queue; the
/// caller checked the token.
pub(crate) async fn redrive_dead(state: &State, query: Option<&str>) -> Answer {
    let Some(store) = state.proxy.outbox() else {
        return none();
    };
    let route = match DeadQuery::parse(query, DeadQuery::REDRIVE) {
        Ok(query) => query.route,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(route) = &route
        && let Err(refused) = known_route(state, &*store, route).await
    {
        return refused;
    }
    match redrive_all(&*store, route.as_deref(), MAX_LIMIT).await {
        Ok(redriven) => {
            tracing::info!(
                route = route.as_deref().unwrap_or("*"),
                redriven,
                "admin API: dead messages re-driven"
            );
            answer(StatusCode::OK, &json!({"redriven": redriven}))
        }
        // What was re-driven stays so.
        Err((redriven, err)) => {
            tracing::warn!(redriven, error = %err, "admin API: re-driving the dead messages failed");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "error": format!("after {redriven} re-drives: {err}"),
                    "redriven": redriven,
                }),
            )
        }
    }
}

/// Whether the outbox knows `route`: an async route of the configuration, or a route the store
/// holds messages of (one a reload made synchronous or removed); else the 404 to answer, naming
/// the routes it knows, so that a misspelt route is not taken for one without dead messages.
async fn known_route(state: &State, store: &dyn Store, route: &str) -> Result<(), Answer> {
    let mut known = async_routes(&state.proxy);
    if known.iter().any(|name| name == route) {
        return Ok(());
    }
    let summary = store.summary().await.map_err(|err| unavailable(&err))?;
    if summary.routes.contains_key(route) {
        return Ok(());
    }
    known.extend(summary.routes.keys().map(|name| name.to_string()));
    known.sort_unstable();
    known.dedup();
    let listed = if known.is_empty() {
        "the outbox knows none".to_owned()
    } else {
        format!("the outbox knows {}", known.join(", "))
    };
    Err(error(
        StatusCode::NOT_FOUND,
        &format!("no outbox route {route:?}: {listed}"),
    ))
}

/// Re-drives every dead message of `route` (of every route when `None`), walking the list `page`
/// at a time; answers how many, or how many before the store failed, and why.
///
/// The walk goes by id, each page after the last: a message that dies again while the walk goes
/// on (a short `max_age`) is not re-driven twice, and the walk ends.
async fn redrive_all(
    store: &dyn Store,
    route: Option<&str>,
    page: usize,
) -> Result<u64, (u64, Error)> {
    let mut redriven = 0u64;
    let mut after = None;
    loop {
        let dead = store
            .dead_letters(route, after, page)
            .await
            .map_err(|err| (redriven, err))?;
        let Some(last) = dead.last() else {
            return Ok(redriven);
        };
        after = Some(last.id);
        let ids: Vec<MessageId> = dead.iter().map(|status| status.id).collect();
        let mut redrives = stream::iter(ids)
            .map(|id| store.redrive(id))
            .buffer_unordered(REDRIVES_AT_ONCE);
        let mut failed = None;
        while let Some(result) = redrives.next().await {
            match result {
                Ok(()) => redriven += 1,
                // It left the list since it was listed: delivered, dropped or re-driven by
                // another caller.
                Err(Error::NotFound(_) | Error::NotDead { .. }) => {}
                Err(err) => failed = Some(err),
            }
        }
        if let Some(err) = failed {
            return Err((redriven, err));
        }
        if dead.len() < page {
            return Ok(redriven);
        }
    }
}

/// The query of a dead-letter call.
#[derive(Debug, PartialEq, Eq)]
struct DeadQuery {
    /// Only this route's dead messages.
    route: Option<String>,
    /// Only those after this id (the previous page's `next`).
    after: Option<MessageId>,
    /// At most this many.
    limit: usize,
}

impl DeadQuery {
    /// What `GET /api/outbox/dead` takes.
    const PAGE: &[&str] = &["route", "after", "limit"];
    /// What `POST /api/outbox/dead/redrive` takes.
    const REDRIVE: &[&str] = &["route"];

    /// Reads `query`, taking the parameters `allowed` only, or says what is wrong and what is
    /// allowed.
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<DeadQuery, String> {
        let mut parsed = DeadQuery {
            route: None,
            after: None,
            limit: DEFAULT_LIMIT,
        };
        let mut seen: Vec<&str> = Vec::new();
        let pairs = query.into_iter().flat_map(|q| q.split('&'));
        for pair in pairs.filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            if !allowed.contains(&name) {
                return Err(format!(
                    "unknown parameter {:?}; this call takes {}",
                    decode(name),
                    allowed.join(", ")
                ));
            }
            if seen.contains(&name) {
                return Err(format!("{name} is given twice; give it once"));
            }
            seen.push(name);
            match name {
                "route" if value.is_empty() => {
                    return Err("route must name a route: route=NAME".to_owned());
                }
                "route" => parsed.route = Some(value),
                "after" => {
                    let id = value.parse::<MessageId>().map_err(|_| {
                        format!(
                            "after must be a message id (the \"next\" of the page before), \
                             not {value:?}"
                        )
                    })?;
                    parsed.after = Some(id);
                }
                _ => {
                    parsed.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                        .ok_or_else(|| {
                            format!(
                                "limit must be a whole number from 1 to {MAX_LIMIT}, not {value:?}"
                            )
                        })?;
                }
            }
        }
        Ok(parsed)
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
    // One unreadable record is that message's trouble: the store serves on.
    if let Error::Corrupt(_) = err {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string());
    }
    // Its message says the store failed, and how.
    error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string())
}

/// The names of the async routes `proxy` serves now.
fn async_routes(proxy: &ProxyHandle) -> Vec<String> {
    let config = proxy.config();
    let routes = config.routes.into_iter();
    routes.filter(|r| r.async_enabled).map(|r| r.name).collect()
}

fn summary_json(proxy: &ProxyHandle, summary: &Summary, store: &str) -> Value {
    // Every async route, one that holds nothing yet too, and every route the store holds
    // messages of (one a reload made synchronous or removed).
    let mut routes: Map<String, Value> = async_routes(proxy)
        .into_iter()
        .map(|route| (route, counts_json(&Counts::default())))
        .collect();
    routes.extend(
        summary
            .routes
            .iter()
            .map(|(route, counts)| (route.to_string(), counts_json(counts))),
    );
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
    use std::time::Duration;

    use http::Method;
    use rampart_outbox::{Embedded, Options, Request};

    use super::*;

    #[tokio::test]
    async fn redriving_them_all_walks_every_page_of_the_route() {
        let dir =
            std::env::temp_dir().join(format!("rampart-admin-redrive-all-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Embedded::open(Options::new(&dir)).await.unwrap();
        for (route, n) in [("a", 5), ("b", 1)] {
            for _ in 0..n {
                let request = Request::new(Method::POST, "/".parse().unwrap());
                store.append(route, request).await.unwrap();
            }
            for leased in store.take(route, n, Duration::ZERO).await.unwrap() {
                store.dead(leased.lease, "down".into()).await.unwrap();
            }
        }
        let dead = |route| store.dead_letters(route, None, 100);
        assert_eq!(dead(None).await.unwrap().len(), 6);

        // Pages of two: three of them for route a's five.
        assert_eq!(redrive_all(&store, Some("a"), 2).await.unwrap(), 5);
        assert_eq!(store.summary().await.unwrap().routes["a"].queued, 5);
        assert_eq!(dead(None).await.unwrap()[0].route.as_ref(), "b");
        assert_eq!(redrive_all(&store, None, 2).await.unwrap(), 1);
        assert_eq!(redrive_all(&store, None, 2).await.unwrap(), 0);

        store.close().await.unwrap();
        assert!(matches!(
            redrive_all(&store, None, 2).await,
            Err((0, Error::Closed))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dead_letter_query_takes_its_parameters_and_refuses_the_rest() {
        fn page(query: &str) -> Result<DeadQuery, String> {
            DeadQuery::parse(Some(query), DeadQuery::PAGE)
        }
        let id = MessageId::from_u128(42);
        assert_eq!(
            DeadQuery::parse(None, DeadQuery::PAGE),
            Ok(DeadQuery {
                route: None,
                after: None,
                limit: DEFAULT_LIMIT
            })
        );
        assert_eq!(
            page(&format!("route=order%20s&after={id}&limit=1000")),
            Ok(DeadQuery {
                route: Some("order s".to_owned()),
                after: Some(id),
                limit: MAX_LIMIT
            })
        );
        for (bad, says) in [
            ("limit=0", "from 1 to 1000"),
            ("limit=1001", "from 1 to 1000"),
            ("limit=ten", "from 1 to 1000"),
            ("limit", "from 1 to 1000"),
            ("after=dead", "message id"),
            ("route=", "route=NAME"),
            ("route=a&route=b", "given twice"),
            ("page=2", "route, after, limit"),
        ] {
            let err = page(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = DeadQuery::parse(Some("limit=5"), DeadQuery::REDRIVE).unwrap_err();
        assert!(err.contains("takes route"), "{err}");
    }

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
