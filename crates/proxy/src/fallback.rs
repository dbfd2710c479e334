//! Fallback (`[routes.fallback]`): a canned answer instead of a failure.
//!
//! It wraps the route's stack from outside (the fallback is outermost so that it can answer
//! whatever went wrong below; see docs/architecture.md): when the stack gives up with one of the
//! configured reasons, or the upstream answers a 5xx (for gRPC, also a failing `grpc-status` in
//! its head) and `on` names `5xx`, the client gets the configured status, headers and
//! body instead, marked `x-rampart-fallback: <reason>` so it can tell a degraded answer from a
//! real one. The body (inline, or `body_file` as read with the configuration, on start and on
//! each reload) is shared, so an answer costs no copy of it.
//!
//! A fallback answers requests of its own kind only. One whose `content-type` is gRPC
//! (`application/grpc...`) answers gRPC requests, the gRPC way: status 200 (the only one allowed
//! it), its headers, its body as the response message(s) (already framed: a byte of compression
//! flag, four of length, the message), then trailers with `grpc-status` and `grpc-message` taken
//! from its `headers` (`grpc-status` 0 when it names none). Any other fallback (JSON, say) would be
//! a protocol error to a gRPC client, so a gRPC request gets the usual gRPC error in its place
//! (`grpc-status` and `x-rampart-error`), as a plain HTTP request never gets a gRPC fallback.
//!
//! Fault injection sits above it, so an injected abort keeps its `abort_status`, unless `on`
//! names `fault-injected`: then the fallback answers it, which is how a fallback is rehearsed.
//!
//! With `stale`, the last good answer to each GET (a 2xx, per path and query, body complete and
//! at most 1 MiB, up to 1000 of them per route) is kept as it streams to the client, never
//! buffered ahead of it, and served in place of the configured answer while it is younger than
//! `stale`. The store is a map behind a mutex, locked once when such an answer ends and once
//! when a fallback is served, never across an `.await`. A failure after the response head was sent (the route's timeout passing mid-body)
//! cannot be answered any more and is not covered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use rampart_config::{Fallback as FallbackConfig, FallbackBody};
use rampart_http::Reason;
use rampart_http::classify::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode, grpc_status, is_grpc};
use rampart_http::rescue::{X_RAMPART_FALLBACK, encode_grpc_message, mark_fallback};
use tokio::time::Instant;

use crate::Error;
use crate::body::ResponseBody;
use crate::turn;

/// One route's fallback answer, and when it is given.
#[derive(Debug)]
pub(crate) struct Fallback {
    on: Vec<Reason>,
    on_5xx: bool,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// `Some` for a gRPC fallback: the trailers that end its answer.
    grpc_trailers: Option<HeaderMap>,
    stale: Option<Arc<Stale>>,
}

/// The last good GET answers of a route, for `stale`.
#[derive(Debug)]
pub(crate) struct Stale {
    max_age: Duration,
    kept: Mutex<Store>,
}

/// The answers kept, and how many bytes of bodies they hold.
#[derive(Debug, Default)]
struct Store {
    answers: HashMap<String, Kept>,
    bytes: usize,
}

/// One kept answer.
#[derive(Debug, Clone)]
struct Kept {
    at: Instant,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Answers kept per route at most.
const MAX_KEPT: usize = 1000;
/// A larger body is not kept.
const MAX_KEPT_BODY: usize = 1 << 20;
/// Bytes of bodies kept per route at most: a thousand answers of a megabyte would be a
/// gigabyte, far past what a sidecar may hold.
const MAX_KEPT_BYTES: usize = 16 << 20;

impl Fallback {
    /// The route's fallback; `path` names the table in errors. A `body_file` the configuration
    /// did not read (it was parsed from text alone) is read now, so a file that cannot be read
    /// stops the start rather than a request.
    pub(crate) fn new(config: &FallbackConfig, path: &str) -> Result<Fallback, Error> {
        let mut on = Vec::with_capacity(config.on.len());
        let mut on_5xx = false;
        for (i, reason) in config.on.iter().enumerate() {
            if reason == "5xx" {
                on_5xx = true;
                continue;
            }
            on.push(reason.parse::<Reason>().map_err(|err| Error::Invalid {
                path: format!("{path}.on[{i}]"),
                message: err.to_string(),
            })?);
        }
        let status = StatusCode::from_u16(config.status).map_err(|_| Error::Invalid {
            path: format!("{path}.status"),
            message: format!("{} is no HTTP status", config.status),
        })?;
        let mut headers = HeaderMap::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let invalid = |what: &str| Error::Invalid {
                path: format!("{path}.headers"),
                message: format!("{name:?}: invalid header {what}"),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid("value"))?;
            headers.append(name, value);
        }
        let grpc_trailers = is_grpc(&headers)
            .then(|| grpc_trailers(&mut headers, status, path))
            .transpose()?;
        let body = match &config.body {
            FallbackBody::Inline(text) => Bytes::from(text.clone()),
            FallbackBody::File {
                content: Some(content),
                ..
            } => Bytes::from(content.clone()),
            FallbackBody::File {
                path: file,
                content: None,
            } => Bytes::from(std::fs::read(file).map_err(|source| Error::BodyFile {
                path: format!("{path}.body_file"),
                file: file.clone(),
                source,
            })?),
        };
        Ok(Fallback {
            on,
            on_5xx,
            status,
            headers,
            body,
            grpc_trailers,
            stale: config.stale.map(|max_age| {
                Arc::new(Stale {
                    max_age,
                    kept: Mutex::new(Store::default()),
                })
            }),
        })
    }

    /// Where a good answer to this request is kept, for `stale`: its path and query, for a GET
    /// on a route with `stale` only.
    pub(crate) fn stale_key(&self, request: &Parts) -> Option<String> {
        if self.stale.is_none() || request.method != Method::GET {
            return None;
        }
        Some(
            request
                .uri
                .path_and_query()
                .map_or("/", |target| target.as_str())
                .to_owned(),
        )
    }

    /// The fallback answer for a request (gRPC or not, as `grpc` says) the stack gave up on with
    /// `reason`, if `on` names it and the fallback is of the request's kind: the answer kept
    /// under `key` if it is fresh enough, else the configured one.
    pub(crate) fn for_reason(
        &self,
        reason: Reason,
        key: Option<&str>,
        grpc: bool,
    ) -> Option<Response<ResponseBody>> {
        if !self.on.contains(&reason) || grpc != self.grpc_trailers.is_some() {
            return None;
        }
        let mut response = self.answer(key);
        mark_fallback(&mut response, reason);
        Some(self.with_trailers(response))
    }

    /// The fallback answer for an upstream's own answer head (`status` and `headers`), if it
    /// failed, `on` names `5xx` and the fallback is of the request's kind.
    ///
    /// An answer failed when its status is a 5xx, or, for a gRPC call, when its head carries a
    /// `grpc-status` whose HTTP form is a 5xx (see [`grpc_server_error`]): a trailers-only
    /// answer, the form a gRPC server gives a call it fails before any message. A failing status
    /// that comes in the trailers, after messages have been sent on to the client, cannot be
    /// replaced any more.
    pub(crate) fn for_status(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        key: Option<&str>,
        grpc: bool,
    ) -> Option<Response<ResponseBody>> {
        if !self.on_5xx || grpc != self.grpc_trailers.is_some() {
            return None;
        }
        let failed = status.is_server_error() || (grpc && grpc_server_error(headers));
        if !failed {
            return None;
        }
        let mut response = self.answer(key);
        response
            .headers_mut()
            .insert(X_RAMPART_FALLBACK, HeaderValue::from_static("5xx"));
        Some(self.with_trailers(response))
    }

    // The answer in the proxy's body type, ended by the gRPC trailers for a gRPC fallback.
    fn with_trailers(&self, response: Response<Bytes>) -> Response<ResponseBody> {
        response.map(|body| {
            Canned {
                data: Some(body).filter(|body| !body.is_empty()),
                trailers: self.grpc_trailers.clone(),
            }
            .map_err(|never: Infallible| match never {})
            .boxed_unsync()
        })
    }

    /// Keeps a good (2xx) answer under `key` once its body has arrived whole, for `stale`.
    pub(crate) fn keep<B>(
        &self,
        key: Option<String>,
        status: StatusCode,
        headers: &HeaderMap,
        body: B,
    ) -> KeepBody<B> {
        let keep = match (&self.stale, key) {
            (Some(stale), Some(key)) if status.is_success() => Some(Keeping {
                stale: stale.clone(),
                key,
                status,
                headers: headers.clone(),
                body: BytesMut::new(),
            }),
            _ => None,
        };
        KeepBody { inner: body, keep }
    }

    fn answer(&self, key: Option<&str>) -> Response<Bytes> {
        if let Some(kept) = key.and_then(|key| self.stale.as_ref()?.fresh(key)) {
            let mut response = Response::new(kept.body);
            *response.status_mut() = kept.status;
            *response.headers_mut() = kept.headers;
            return response;
        }
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// Whether a gRPC answer's head says what a 5xx says over HTTP: the server failed, not the
/// request. A refusal of a rampart further down (`x-rampart-error`) is judged by the HTTP status
/// it has over HTTP (`overloaded` and `retry-budget-exhausted` are 503s, `rate-limited` a 429,
/// `body-too-large` a 413), any other `grpc-status` by gRPC's HTTP mapping
/// ([`GrpcCode::http_status`]: UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED and
/// UNIMPLEMENTED are 5xx; RESOURCE_EXHAUSTED, NOT_FOUND, INVALID_ARGUMENT, ... are not).
fn grpc_server_error(headers: &HeaderMap) -> bool {
    let Some(code) = grpc_status(headers) else {
        return false;
    };
    match Reason::of(headers) {
        Some(reason) => reason.status().is_server_error(),
        None => code.http_status().is_server_error(),
    }
}

/// Takes `grpc-status` and `grpc-message` out of a gRPC fallback's `headers`, for its trailers;
/// `grpc-status` is 0 (OK) when it names none. `status` must be 200, as gRPC needs.
fn grpc_trailers(
    headers: &mut HeaderMap,
    status: StatusCode,
    path: &str,
) -> Result<HeaderMap, Error> {
    let invalid = |key: &str, message: String| Error::Invalid {
        path: format!("{path}.{key}"),
        message,
    };
    if status != StatusCode::OK {
        return Err(invalid(
            "status",
            format!("a gRPC fallback (content-type application/grpc) answers 200, not {status}"),
        ));
    }
    let mut trailers = HeaderMap::with_capacity(2);
    let code = match headers.remove(GRPC_STATUS) {
        Some(value) => {
            GrpcCode::parse(value.as_bytes()).ok_or_else(|| {
                invalid(
                    "headers",
                    format!("grpc-status {value:?} is no gRPC status code"),
                )
            })?;
            value
        }
        None => GrpcCode::Ok.header_value(),
    };
    trailers.insert(GRPC_STATUS, code);
    // Written as text, sent as gRPC wants it: percent-encoded, so that a `%` of the text is not
    // read as the start of an escape ("degraded 50% off").
    if let Some(message) = headers.remove(GRPC_MESSAGE) {
        let text = message.to_str().map_err(|_| {
            invalid(
                "headers",
                "grpc-message must be printable ASCII text".to_owned(),
            )
        })?;
        let encoded = HeaderValue::from_str(&encode_grpc_message(text))
            .expect("a percent-encoded message is a header value");
        trailers.insert(GRPC_MESSAGE, encoded);
    }
    Ok(trailers)
}

/// A fallback's body: its bytes, if any, then its trailers, if any.
struct Canned {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Canned {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Frame::data(data),
            None => match self.trailers.take() {
                Some(trailers) => Frame::trailers(trailers),
                None => return Poll::Ready(None),
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |data| data.len() as u64);
        SizeHint::with_exact(len)
    }
}

// === impl Stale ===

impl Stale {
    fn fresh(&self, key: &str) -> Option<Kept> {
        let mut store = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = store.answers.get(key)?;
        if kept.at.elapsed() < self.max_age {
            return Some(kept.clone());
        }
        // Too old to serve again: its memory goes now rather than when the store fills.
        store.remove(key);
        None
    }

    fn store(&self, key: String, answer: Kept) {
        let mut store = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        store.remove(&key);
        let full = |store: &Store| {
            store.answers.len() >= MAX_KEPT || store.bytes + answer.body.len() > MAX_KEPT_BYTES
        };
        if full(&store) {
            // Full: the stale answers make room first, then the oldest.
            let max_age = self.max_age;
            let Store { answers, bytes } = &mut *store;
            answers.retain(|_, kept| {
                let fresh = kept.at.elapsed() < max_age;
                if !fresh {
                    *bytes -= kept.body.len();
                }
                fresh
            });
            while full(&store) {
                let oldest = store
                    .answers
                    .iter()
                    .min_by_key(|(_, kept)| kept.at)
                    .map(|(key, _)| key.clone());
                let Some(oldest) = oldest else {
                    break;
                };
                store.remove(&oldest);
            }
        }
        store.bytes += answer.body.len();
        store.answers.insert(key, answer);
    }
}

impl Store {
    fn remove(&mut self, key: &str) {
        if let Some(kept) = self.answers.remove(key) {
            self.bytes -= kept.body.len();
        }
    }
}

// === impl KeepBody ===

/// A good answer's body on its way to the client, copied aside (up to 1 MiB) to be kept for
/// `stale` when it ends whole.
pub(crate) struct KeepBody<B> {
    inner: B,
    keep: Option<Keeping>,
}

struct Keeping {
    stale: Arc<Stale>,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
}

impl<B> KeepBody<B> {
    fn store(&mut self) {
        if let Some(keep) = self.keep.take() {
            let answer = Kept {
                at: turn::now(),
                status: keep.status,
                headers: keep.headers,
                body: keep.body.freeze(),
            };
            keep.stale.store(keep.key, answer);
        }
    }
}

impl<B> Body for KeepBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let fits = this
                        .keep
                        .as_ref()
                        .is_some_and(|keep| keep.body.len() + data.len() <= MAX_KEPT_BODY);
                    match this.keep.as_mut() {
                        Some(keep) if fits => keep.body.extend_from_slice(data),
                        // Too large to keep: nothing more is copied.
                        _ => this.keep = None,
                    }
                }
                // A body of known length may never be polled past its last frame: it is whole
                // now, and kept before the client sees its end.
                if this.inner.is_end_stream() {
                    this.store();
                }
            }
            // A body cut short is no good answer.
            Some(Err(_)) => this.keep = None,
            None => this.store(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Claiming the end early would skip the poll that keeps the answer.
        self.keep.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use rampart_http::rescue::X_RAMPART_ERROR;

    use super::*;

    // The body and trailers of a fallback answer, which are there at once.
    fn whole(response: Response<ResponseBody>) -> (Bytes, Option<HeaderMap>) {
        let collect = std::pin::pin!(response.into_body().collect());
        match collect.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(collected)) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers)
            }
            _ => panic!("a fallback body is there at once"),
        }
    }

    fn config(on: &[&str], body: FallbackBody) -> FallbackConfig {
        FallbackConfig {
            on: on.iter().map(|s| s.to_string()).collect(),
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            stale: None,
        }
    }

    fn fallback(on: &[&str]) -> Fallback {
        let body = FallbackBody::Inline(r#"{"degraded":true}"#.into());
        Fallback::new(&config(on, body), "routes[0].fallback").unwrap()
    }

    #[test]
    fn answers_the_reasons_in_on_only() {
        let fallback = fallback(&["breaker-open", "upstream-connect"]);
        let response = fallback
            .for_reason(Reason::UpstreamConnect, None, false)
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "upstream-connect");
        assert_eq!(whole(response).0, r#"{"degraded":true}"#);
        assert!(fallback.for_reason(Reason::Timeout, None, false).is_none());
        // Without "5xx" in `on`, an upstream's 503 stays the upstream's.
        assert!(
            fallback
                .for_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &HeaderMap::new(),
                    None,
                    false
                )
                .is_none()
        );
    }

    #[test]
    fn five_xx_covers_server_errors_only() {
        let fallback = fallback(&["5xx"]);
        let response = fallback
            .for_status(StatusCode::BAD_GATEWAY, &HeaderMap::new(), None, false)
            .unwrap();
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "5xx");
        assert!(
            fallback
                .for_status(StatusCode::NOT_FOUND, &HeaderMap::new(), None, false)
                .is_none()
        );
        assert!(
            fallback
                .for_status(StatusCode::OK, &HeaderMap::new(), None, false)
                .is_none()
        );
        assert!(
            fallback
                .for_reason(Reason::BreakerOpen, None, false)
                .is_none()
        );
    }

    fn with_stale(stale: Duration) -> Fallback {
        let mut config = config(&["timeout"], FallbackBody::Inline("configured".into()));
        config.stale = Some(stale);
        Fallback::new(&config, "routes[0].fallback").unwrap()
    }

    fn get(target: &str) -> Parts {
        http::Request::get(target).body(()).unwrap().into_parts().0
    }

    // Streams `body` through the keeper, as the proxy does on its way to the client.
    async fn pass(fallback: &Fallback, target: &str, status: StatusCode, body: Vec<u8>) {
        use http_body_util::{BodyExt, Full};
        let key = fallback.stale_key(&get(target));
        let body = fallback.keep(key, status, &HeaderMap::new(), Full::new(Bytes::from(body)));
        body.collect().await.unwrap();
    }

    fn answered(fallback: &Fallback, target: &str) -> Bytes {
        let key = fallback.stale_key(&get(target));
        let response = fallback
            .for_reason(Reason::Timeout, key.as_deref(), false)
            .unwrap();
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "timeout");
        whole(response).0
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_get_answer_is_served_while_younger_than_stale() {
        let fallback = with_stale(Duration::from_secs(60));
        pass(&fallback, "/items?page=1", StatusCode::OK, b"kept".to_vec()).await;
        assert_eq!(answered(&fallback, "/items?page=1"), "kept");
        // Another query is another answer.
        assert_eq!(answered(&fallback, "/items?page=2"), "configured");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(answered(&fallback, "/items?page=1"), "configured");
    }

    #[tokio::test(start_paused = true)]
    async fn only_good_get_answers_of_bounded_size_are_kept() {
        let keeper = with_stale(Duration::from_secs(60));
        pass(&keeper, "/error", StatusCode::BAD_GATEWAY, b"no".to_vec()).await;
        assert_eq!(answered(&keeper, "/error"), "configured");
        pass(
            &keeper,
            "/big",
            StatusCode::OK,
            vec![b'x'; MAX_KEPT_BODY + 1],
        )
        .await;
        assert_eq!(answered(&keeper, "/big"), "configured");
        let post = http::Request::post("/items")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(keeper.stale_key(&post), None);
        // Without `stale`, nothing is kept at all.
        let without = fallback(&["timeout"]);
        assert_eq!(without.stale_key(&get("/items")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_lets_the_oldest_answer_go() {
        let fallback = with_stale(Duration::from_secs(3600));
        for i in 0..MAX_KEPT {
            pass(
                &fallback,
                &format!("/{i}"),
                StatusCode::OK,
                b"kept".to_vec(),
            )
            .await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        pass(&fallback, "/new", StatusCode::OK, b"new".to_vec()).await;
        assert_eq!(answered(&fallback, "/new"), "new");
        assert_eq!(answered(&fallback, "/0"), "configured");
        assert_eq!(answered(&fallback, "/1"), "kept");
        let kept = fallback
            .stale
            .as_ref()
            .unwrap()
            .kept
            .lock()
            .unwrap()
            .answers
            .len();
        assert_eq!(kept, MAX_KEPT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_answers_kept_hold_16_mib_of_bodies_at_most() {
        let fallback = with_stale(Duration::from_secs(3600));
        // Twenty answers of a megabyte: the oldest go, so that sixteen fit.
        for i in 0..20 {
            pass(
                &fallback,
                &format!("/{i}"),
                StatusCode::OK,
                vec![b'x'; MAX_KEPT_BODY],
            )
            .await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        {
            let store = fallback.stale.as_ref().unwrap().kept.lock().unwrap();
            assert_eq!(store.answers.len(), 16);
            assert_eq!(store.bytes, 16 * MAX_KEPT_BODY);
            assert!(!store.answers.contains_key("/3") && store.answers.contains_key("/4"));
        }
        // One too old to serve is let go when asked for.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(answered(&fallback, "/19"), "configured");
        let store = fallback.stale.as_ref().unwrap().kept.lock().unwrap();
        assert_eq!(store.answers.len(), 15);
        assert_eq!(store.bytes, 15 * MAX_KEPT_BODY);
    }

    fn grpc_config(headers: &[(&str, &str)]) -> FallbackConfig {
        let mut config = config(
            &["upstream-connect"],
            FallbackBody::Inline("\0\0\0\0\0".into()),
        );
        config.headers = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        config
    }

    #[test]
    fn a_grpc_fallback_answers_grpc_requests_only_with_its_status_in_the_trailers() {
        let config = grpc_config(&[
            ("content-type", "application/grpc"),
            ("grpc-status", "14"),
            ("grpc-message", "degraded"),
        ]);
        let fallback = Fallback::new(&config, "routes[0].fallback").unwrap();
        assert!(
            fallback
                .for_reason(Reason::UpstreamConnect, None, false)
                .is_none()
        );
        let response = fallback
            .for_reason(Reason::UpstreamConnect, None, true)
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "upstream-connect");
        assert!(!response.headers().contains_key(GRPC_STATUS));
        let (body, trailers) = whole(response);
        assert_eq!(body, &b"\0\0\0\0\0"[..]);
        let trailers = trailers.unwrap();
        assert_eq!(trailers[GRPC_STATUS], "14");
        assert_eq!(trailers[GRPC_MESSAGE], "degraded");

        // With no grpc-status of its own, the answer is OK.
        let config = grpc_config(&[("content-type", "application/grpc+proto")]);
        let fallback = Fallback::new(&config, "routes[0].fallback").unwrap();
        let response = fallback
            .for_reason(Reason::UpstreamConnect, None, true)
            .unwrap();
        assert_eq!(whole(response).1.unwrap()[GRPC_STATUS], "0");

        // Its message is text: a `%` in it goes percent-encoded, as gRPC reads the field.
        let config = grpc_config(&[
            ("content-type", "application/grpc"),
            ("grpc-message", "degraded 50% off"),
        ]);
        let fallback = Fallback::new(&config, "routes[0].fallback").unwrap();
        let response = fallback
            .for_reason(Reason::UpstreamConnect, None, true)
            .unwrap();
        assert_eq!(
            whole(response).1.unwrap()[GRPC_MESSAGE],
            "degraded 50%25 off"
        );
    }

    #[test]
    fn a_failing_grpc_status_in_the_head_is_the_grpc_form_of_5xx() {
        let mut config = grpc_config(&[("content-type", "application/grpc")]);
        config.on = vec!["5xx".into()];
        let grpc = Fallback::new(&config, "routes[0].fallback").unwrap();
        let head = |code: GrpcCode| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_STATUS, code.header_value());
            headers
        };
        // A trailers-only UNAVAILABLE (HTTP 200) gives way to the fallback.
        let response = grpc
            .for_status(StatusCode::OK, &head(GrpcCode::Unavailable), None, true)
            .unwrap();
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "5xx");
        assert_eq!(whole(response).1.unwrap()[GRPC_STATUS], "0");
        // So does a rampart's refusal that is a 503 over HTTP, told by its `x-rampart-error`.
        let mut overloaded = head(GrpcCode::ResourceExhausted);
        overloaded.insert(X_RAMPART_ERROR, Reason::Overloaded.header_value());
        assert!(
            grpc.for_status(StatusCode::OK, &overloaded, None, true)
                .is_some()
        );
        // An answer about the request (NOT_FOUND, RESOURCE_EXHAUSTED: a 429 or a 413 over HTTP,
        // the latter told by rampart's `x-rampart-error`), a success, or a 200 whose status is
        // still to come in the trailers stays the upstream's.
        let mut too_large = head(GrpcCode::ResourceExhausted);
        too_large.insert(X_RAMPART_ERROR, Reason::BodyTooLarge.header_value());
        for headers in [
            head(GrpcCode::NotFound),
            head(GrpcCode::ResourceExhausted),
            too_large,
            head(GrpcCode::Ok),
            HeaderMap::new(),
        ] {
            assert!(
                grpc.for_status(StatusCode::OK, &headers, None, true)
                    .is_none()
            );
        }
        // A plain request's answer is read by its HTTP status only.
        let plain = fallback(&["5xx"]);
        assert!(
            plain
                .for_status(StatusCode::OK, &head(GrpcCode::Unavailable), None, false)
                .is_none()
        );
    }

    #[test]
    fn a_plain_fallback_never_answers_a_grpc_request() {
        let fallback = fallback(&["upstream-connect", "5xx"]);
        assert!(
            fallback
                .for_reason(Reason::UpstreamConnect, None, true)
                .is_none()
        );
        assert!(
            fallback
                .for_status(StatusCode::BAD_GATEWAY, &HeaderMap::new(), None, true)
                .is_none()
        );
    }

    #[test]
    fn a_grpc_fallback_must_answer_200_with_a_known_code() {
        let mut config = grpc_config(&[("content-type", "application/grpc")]);
        config.status = 503;
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(
            err.to_string().contains("routes[0].fallback.status"),
            "{err}"
        );
        let config = grpc_config(&[("content-type", "application/grpc"), ("grpc-status", "99")]);
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(
            err.to_string().contains("routes[0].fallback.headers"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_reason_is_refused() {
        let config = config(&["nope"], FallbackBody::Inline(String::new()));
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(
            err.to_string().contains("routes[0].fallback.on[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_body_file_read_with_the_configuration_is_not_read_again() {
        // Gone since: a reload applying the configuration must not reach for the file, which
        // may hang (a network mount) where the reading of the configuration is bounded.
        let config = config(
            &["timeout"],
            FallbackBody::File {
                path: std::env::temp_dir().join("rampart-no-such-fallback-body"),
                content: Some(b"as read".to_vec()),
            },
        );
        let fallback = Fallback::new(&config, "routes[0].fallback").unwrap();
        assert_eq!(fallback.body, "as read");
    }

    #[test]
    fn an_unreadable_body_file_is_a_start_error() {
        let missing = std::env::temp_dir().join("rampart-no-such-fallback-body");
        let config = config(
            &["timeout"],
            FallbackBody::File {
                path: missing,
                content: None,
            },
        );
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(matches!(err, Error::BodyFile { .. }), "{err}");
    }
}
