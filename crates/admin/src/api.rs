//! The admin API's endpoints: one request in, one response out.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use prometheus_client::encoding::text::encode;
use rampart_proxy::stats::Unknown;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::Refusal;
use crate::{MAX_STREAMS, ReloadError, State, dashboard, events, hystrix, json, outbox};

/// The largest request body read: a breaker change is a few bytes.
const MAX_BODY: usize = 64 * 1024;

/// How long a request body may take to arrive whole, as long as its head may.
const BODY_TIMEOUT: std::time::Duration = crate::HEADER_READ_TIMEOUT;

/// What `prometheus-client` encodes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An answer of the admin API: whole, or the event stream.
pub(crate) type Answer = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// Answers `request`.
pub(crate) async fn handle(request: Request<Incoming>, state: &State) -> Answer {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = method(&request);
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => metrics(state),
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        // The admin API starts once the proxy has loaded its configuration and bound its
        // listeners, and stops as it drains.
        (&Method::GET, ["readyz"]) => text(StatusCode::OK, "ready\n"),
        (&Method::GET, ["api", "stats"]) => {
            answer(StatusCode::OK, &json::stats(&state.proxy).await)
        }
        (&Method::GET, ["api", "events"]) => match stream_permit(state) {
            Some(permit) => events::stream(state.proxy.clone(), permit),
            None => streams_full(),
        },
        (&Method::GET, ["hystrix.stream"]) => match stream_permit(state) {
            Some(permit) => hystrix::stream(state.proxy.clone(), request.uri().query(), permit),
            None => streams_full(),
        },
        (&Method::GET, _) if dashboard::serves(&path) => dashboard::get(&path, state.addr),
        (&Method::POST, ["api", "breakers", upstream, endpoint]) => {
            let (upstream, endpoint) = (decode(upstream), decode(endpoint));
            match refusal(state, &request) {
                Some(refused) => refused,
                None => breakers(state, request, &upstream, &endpoint).await,
            }
        }
        (&Method::POST, ["api", "reload"]) => match refusal(state, &request) {
            Some(refused) => refused,
            None => reload(state).await,
        },
        (&Method::GET, ["api", "outbox"]) => outbox::summary(state).await,
        // Before `<id>`, which would take it for a malformed id: `dead` is no id (ids have 26
        // characters), so this hides no message.
        (&Method::GET, ["api", "outbox", "dead"]) => {
            outbox::dead_letters(state, request.uri().query()).await
        }
        (&Method::GET, ["api", "outbox", id]) => outbox::message(state, id).await,
        (&Method::POST, ["api", "outbox", "dead", "redrive"]) => match refusal(state, &request) {
            Some(refused) => refused,
            None => outbox::redrive_dead(state, request.uri().query()).await,
        },
        (&Method::POST, ["api", "outbox", id, "redrive"]) => match refusal(state, &request) {
            Some(refused) => refused,
            None => outbox::redrive(state, id).await,
        },
        (_, ["metrics"] | ["healthz"] | ["readyz"] | ["api", "stats"] | ["api", "events"]) => {
            not_allowed(Allow::Read)
        }
        (_, ["hystrix.stream"] | ["api", "outbox"] | ["api", "outbox", _]) => {
            not_allowed(Allow::Read)
        }
        _ if dashboard::serves(&path) => not_allowed(Allow::Read),
        (_, ["api", "breakers", _, _] | ["api", "reload"] | ["api", "outbox", _, "redrive"]) => {
            not_allowed(Allow::Write)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no admin endpoint at {path}"),
        ),
    }
}

/// The method `request` is answered for: HEAD is answered as GET, hyper sending the head of the
/// answer and dropping its body (an event stream ends with it), so both give the same status and
/// headers.
pub(crate) fn method<B>(request: &Request<B>) -> Method {
    match request.method() {
        &Method::HEAD => Method::GET,
        method => method.clone(),
    }
}

/// The methods a path takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Allow {
    /// GET, and HEAD with it.
    Read,
    /// POST.
    Write,
}

/// 405, with the `Allow` header RFC 9110 (15.5.6) asks of it.
pub(crate) fn not_allowed(allow: Allow) -> Answer {
    let (methods, message) = match allow {
        Allow::Read => ("GET, HEAD", "use GET or HEAD"),
        Allow::Write => ("POST", "use POST"),
    };
    let mut answer = error(StatusCode::METHOD_NOT_ALLOWED, message);
    answer
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(methods));
    answer
}

// A place among the event streams open at once; none when every one is taken.
fn stream_permit(state: &State) -> Option<OwnedSemaphorePermit> {
    state.streams.clone().try_acquire_owned().ok()
}

fn streams_full() -> Answer {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{MAX_STREAMS} event streams are open already, the most there may be; close one"),
    )
}

fn metrics(state: &State) -> Answer {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, state.proxy.registry());
    let mut response = Response::new(whole(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

// The answer to a mutating call without the token; `None` when it carries it.
fn refusal<B>(state: &State, request: &Request<B>) -> Option<Answer> {
    match state.token.check(request.headers()) {
        Ok(()) => None,
        Err(Refusal::NotConfigured(message)) => Some(error(StatusCode::FORBIDDEN, &message)),
        Err(Refusal::Unauthorized) => {
            let mut answer = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <token>",
            );
            // RFC 9110 (11.6.1): a 401 names the scheme that would do.
            answer
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(answer)
        }
    }
}

/// What a breaker is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Force {
    Open,
    Closed,
    Auto,
}

async fn breakers(
    state: &State,
    request: Request<Incoming>,
    upstream: &str,
    endpoint: &str,
) -> Answer {
    let force = match read_force(request).await {
        Ok(force) => force,
        Err((status, message)) => return error(status, &message),
    };
    let which = (endpoint != "*").then_some(endpoint);
    let breakers = match state.proxy.breakers(upstream, which) {
        Ok(breakers) => breakers,
        Err(err @ (Unknown::Upstream(_) | Unknown::Endpoint { .. })) => {
            return error(StatusCode::NOT_FOUND, &err.to_string());
        }
        Err(err @ Unknown::Disabled(_)) => return error(StatusCode::CONFLICT, &err.to_string()),
    };
    for breaker in &breakers {
        match force {
            Force::Open => breaker.force_open(),
            Force::Closed => breaker.force_closed(),
            Force::Auto => breaker.release(),
        }
    }
    tracing::info!(upstream, endpoint, ?force, "admin API: breakers set");
    let states: Vec<&str> = breakers.iter().map(|b| b.state().as_str()).collect();
    answer(
        StatusCode::OK,
        &json!({"upstream": upstream, "endpoint": endpoint, "states": states}),
    )
}

// `{"state": "open" | "closed" | "auto"}`, or the status and what is wrong with the body.
async fn read_force(request: Request<Incoming>) -> Result<Force, (StatusCode, String)> {
    let too_large = || {
        let message = format!("the body is larger than the {MAX_BODY} bytes allowed");
        (StatusCode::PAYLOAD_TOO_LARGE, message)
    };
    // A length declared over the limit is refused before a byte of the body is awaited.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    // A body that does not come, or comes a byte now and then, must not hold one of the admin
    // API's few connections (and its caller) for ever.
    let reading = Limited::new(request.into_body(), MAX_BODY).collect();
    let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, reading).await else {
        let message = format!(
            "the body did not arrive whole within {} s",
            BODY_TIMEOUT.as_secs()
        );
        return Err((StatusCode::REQUEST_TIMEOUT, message));
    };
    let bytes = read
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                too_large()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {err}"),
                )
            }
        })?
        .to_bytes();
    let usage = r#"the body must be {"state": "open" | "closed" | "auto"}"#;
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| bad(format!("the body is not JSON ({err}); {usage}")))?;
    // A misspelt field beside `state` is refused, as the configuration refuses unknown keys: a
    // typo in an operator's call must not pass for what was meant. So is `state` given twice,
    // which `Value` reads as its last.
    if value.is_object() {
        let Fields(names) = serde_json::from_slice(&bytes)
            .map_err(|err| bad(format!("the body is not JSON ({err}); {usage}")))?;
        if let Some(other) = names.iter().find(|name| *name != "state") {
            return Err(bad(format!("unknown field {other:?}; {usage}")));
        }
        if names.len() > 1 {
            return Err(bad(format!("the field \"state\" is given twice; {usage}")));
        }
    }
    match value.get("state").and_then(Value::as_str) {
        Some("open") => Ok(Force::Open),
        Some("closed") => Ok(Force::Closed),
        Some("auto") => Ok(Force::Auto),
        _ => Err(bad(usage.to_owned())),
    }
}

/// The field names of a JSON object as written, a repeated one as often as it comes.
struct Fields(Vec<String>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut names = Vec::new();
                while let Some((name, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                    names.push(name);
                }
                Ok(Fields(names))
            }
        }
        deserializer.deserialize_map(Names)
    }
}

/// Why a reload was not made.
const BUSY: &str = "another reload is under way; try again once it has ended";

/// How long `POST /api/reload` waits for the reload to end before answering that it has not.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

async fn reload(state: &State) -> Answer {
    let refused = |status, error: &str| answer(status, &json!({"reloaded": false, "error": error}));
    // One at a time: a reload whose read hangs holds its thread until the read ends, and must
    // not be joined by more of them.
    let Ok(turn) = state.reloading.clone().try_acquire_owned() else {
        return refused(StatusCode::CONFLICT, BUSY);
    };
    // Off the runtime: reading the file may block (a FIFO, a hung network mount), and neither
    // the data path nor this API may wait on it.
    let reload = state.reload.clone();
    let done = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        reload()
    });
    let result = match tokio::time::timeout(RELOAD_WAIT, done).await {
        Ok(Ok(result)) => result,
        Ok(Err(failed)) => {
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the reload failed: {failed}"),
            );
        }
        Err(_elapsed) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the reload has not ended after 10 s: reading the configuration file, or a file \
                 it names, blocks; the running configuration keeps serving, and the reload \
                 applies if the read ends",
            );
        }
    };
    match result {
        Ok(summary) => answer(
            StatusCode::OK,
            &json!({"reloaded": true, "summary": summary}),
        ),
        Err(ReloadError::Invalid(errors)) => answer(
            StatusCode::BAD_REQUEST,
            &json!({"reloaded": false, "error": errors}),
        ),
        Err(ReloadError::Refused(reason)) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"reloaded": false, "error": reason}),
        ),
        Err(ReloadError::Busy) => {
            tracing::info!("admin API: reload refused: {BUSY}");
            refused(StatusCode::CONFLICT, BUSY)
        }
    }
}

// A path segment or query value with its `%XX` escapes decoded (an IPv6 endpoint's brackets
// and colons may come escaped, and a route's name anything); an invalid escape stays as it is.
pub(crate) fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn answer(status: StatusCode, body: &Value) -> Answer {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(whole(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn error(status: StatusCode, message: &str) -> Answer {
    answer(status, &json!({"error": message}))
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    let mut response = Response::new(whole(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn whole(body: Bytes) -> UnsyncBoxBody<Bytes, Infallible> {
    Full::new(body).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_in_a_segment_are_decoded() {
        assert_eq!(decode("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(decode("%5B%3A%3A1%5D%3A80"), "[::1]:80");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
