//! A scriptable HTTP/1.1 and h2c upstream that records what it was sent.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How an [`Upstream`] answers each request.
///
/// The textual form (see [`FromStr`] and [`Display`](fmt::Display)) is what the
/// `rampart-test-upstream` binary takes after `--behavior`:
///
/// | behaviour | text |
/// |---|---|
/// | `Ok { status: 201, body: "made" }` | `ok:201:made` (`ok` alone is 200 `ok`) |
/// | `Fail(503)` | `fail:503` |
/// | `Slow(250 ms)` | `slow:250` (milliseconds) |
/// | `Hang` | `hang` |
/// | `Reset` | `reset` |
/// | `SlowBody { chunk: "x", every: 50 ms, chunks: 10 }` | `slow-body:50:10:x` |
/// | `Echo` | `echo` |
///
/// Bodies and chunks are written as UTF-8 text, so one that is not valid UTF-8 does not survive
/// the round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Answer at once with this status and body.
    Ok {
        /// The response status.
        status: StatusCode,
        /// The response body.
        body: Bytes,
    },
    /// Answer at once with this status; the body is its reason phrase.
    Fail(StatusCode),
    /// Answer 200 `ok` after this delay.
    Slow(Duration),
    /// Never answer; the request stays open until the client or the upstream gives up.
    Hang,
    /// Close the connection without answering. With HTTP/2 this ends every stream on the
    /// connection. The kernel closes with FIN, or RST if unread bytes remain; for a reset every
    /// time, put a [`FaultProxy`](crate::FaultProxy) in front.
    Reset,
    /// Answer 200 at once, then send the body `chunk` by `chunk`, one every `every`, `chunks`
    /// times in all.
    SlowBody {
        /// One piece of the body.
        chunk: Bytes,
        /// The pause before each piece.
        every: Duration,
        /// How many pieces the body has.
        chunks: u32,
    },
    /// Answer at once with this status and these header lines (in place of any default of the
    /// same name), and an empty body: a `Retry-After`, or a gRPC trailers-only answer.
    Headed {
        /// The response status.
        status: StatusCode,
        /// The header lines, in order.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer 200 with what was received, as JSON: method, path (with query), version,
    /// headers (pairs, in order) and body (lossy UTF-8). The method and path are also in the
    /// `x-echo-method` and `x-echo-path` response headers.
    Echo,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// The path and query, e.g. `/orders?id=7`.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: Version,
    /// The target's authority: HTTP/2's `:authority`, or an HTTP/1.1 absolute-form target's.
    pub authority: Option<String>,
    /// The headers as received (for HTTP/2, without pseudo-headers).
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// When the request's body had fully arrived, on tokio's clock.
    pub at: Instant,
}

/// An HTTP/1.1 and h2c server on 127.0.0.1, answering as its [`Behavior`] says.
///
/// Both protocols share one port (HTTP/2 by prior knowledge, told apart by the connection
/// preface); the behaviour can be switched while it runs. Each request is recorded as a [`SeenRequest`] once its body has
/// arrived, before it is answered, so a test can check what a proxy forwarded even when the
/// upstream never answers.
///
/// Dropping the upstream closes its port and every connection, and so ends every request still
/// being answered, including HTTP/2 streams, which hyper runs as tasks of their own.
///
/// Must be started inside a tokio runtime with the IO and time drivers enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use http_body_util::{BodyExt, Empty};
/// use hyper_util::rt::TokioIo;
/// use rampart_test_support::{Behavior, Upstream};
///
/// let upstream = Upstream::start(Behavior::Fail(hyper::StatusCode::SERVICE_UNAVAILABLE)).await?;
///
/// let tcp = tokio::net::TcpStream::connect(upstream.addr()).await?;
/// let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
/// tokio::spawn(conn);
/// let request = hyper::Request::get("/orders").body(Empty::<bytes::Bytes>::new())?;
/// let response = client.send_request(request).await?;
///
/// assert_eq!(response.status(), 503);
/// assert_eq!(upstream.request_count(), 1);
/// assert_eq!(upstream.requests()[0].path, "/orders");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<SeenRequest>>,
    count: AtomicU64,
    arrived: Notify,
}

// === impl Behavior ===

impl Default for Behavior {
    fn default() -> Self {
        Behavior::ok("ok")
    }
}

impl Behavior {
    /// Answer 200 with this body.
    pub fn ok(body: impl Into<Bytes>) -> Behavior {
        Behavior::Ok {
            status: StatusCode::OK,
            body: body.into(),
        }
    }

    async fn answer(self, request: &SeenRequest, reset: &Notify) -> Response<Body> {
        match self {
            Behavior::Ok { status, body } => respond(status, body),
            Behavior::Fail(status) => {
                respond(status, status.canonical_reason().unwrap_or_default())
            }
            Behavior::Slow(delay) => {
                tokio::time::sleep(delay).await;
                respond(StatusCode::OK, "ok")
            }
            Behavior::Hang => std::future::pending().await,
            Behavior::Reset => {
                reset.notify_one();
                std::future::pending().await
            }
            Behavior::SlowBody {
                chunk,
                every,
                chunks,
            } => {
                let pieces = futures_util::stream::unfold(chunks, move |left| {
                    let chunk = chunk.clone();
                    async move {
                        if left == 0 {
                            return None;
                        }
                        tokio::time::sleep(every).await;
                        Some((Ok(Frame::data(chunk)), left - 1))
                    }
                });
                let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(pieces)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                response
            }
            Behavior::Headed { status, headers } => {
                let mut response = respond(status, Bytes::new());
                for (name, _) in &headers {
                    response.headers_mut().remove(name);
                }
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                response
            }
            Behavior::Echo => echo(request),
        }
    }
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Ok { status, body } => {
                write!(
                    f,
                    "ok:{}:{}",
                    status.as_u16(),
                    String::from_utf8_lossy(body)
                )
            }
            Behavior::Fail(status) => write!(f, "fail:{}", status.as_u16()),
            Behavior::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            Behavior::Hang => f.write_str("hang"),
            Behavior::Reset => f.write_str("reset"),
            Behavior::SlowBody {
                chunk,
                every,
                chunks,
            } => write!(
                f,
                "slow-body:{}:{chunks}:{}",
                every.as_millis(),
                String::from_utf8_lossy(chunk)
            ),
            Behavior::Headed { status, headers } => {
                write!(f, "headed:{}:", status.as_u16())?;
                for (i, (name, value)) in headers.iter().enumerate() {
                    let separator = if i == 0 { "" } else { ";" };
                    let value = String::from_utf8_lossy(value.as_bytes());
                    write!(f, "{separator}{name}={value}")?;
                }
                Ok(())
            }
            Behavior::Echo => f.write_str("echo"),
        }
    }
}

/// Why a text is not a [`Behavior`] (or a [`GrpcBehavior`](crate::GrpcBehavior)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBehaviorError {
    message: String,
    expected: &'static str,
}

impl fmt::Display for ParseBehaviorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; expected one of {}", self.message, self.expected)
    }
}

impl ParseBehaviorError {
    fn http(message: String) -> ParseBehaviorError {
        ParseBehaviorError {
            message,
            expected: "ok, ok:STATUS:BODY, fail:STATUS, slow:MILLIS, hang, reset, \
                       slow-body:EVERY_MILLIS:CHUNKS:CHUNK, headed:STATUS:NAME=VALUE;..., echo",
        }
    }

    pub(crate) fn grpc(message: String) -> ParseBehaviorError {
        ParseBehaviorError {
            message,
            expected: "ok, fail:CODE, fail-in-trailers:CODE, slow:MILLIS, hang, slow-body:MILLIS",
        }
    }
}

impl std::error::Error for ParseBehaviorError {}

impl FromStr for Behavior {
    type Err = ParseBehaviorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let status = |s: &str| {
            StatusCode::from_str(s)
                .map_err(|_| ParseBehaviorError::http(format!("`{s}` is not an HTTP status")))
        };
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| ParseBehaviorError::http(format!("`{s}` is not a whole number")))
        };
        match (kind, rest) {
            ("ok", "") => Ok(Behavior::default()),
            ("ok", rest) => {
                let (code, body) = rest.split_once(':').unwrap_or((rest, ""));
                Ok(Behavior::Ok {
                    status: status(code)?,
                    body: Bytes::copy_from_slice(body.as_bytes()),
                })
            }
            ("fail", code) => Ok(Behavior::Fail(status(code)?)),
            ("slow", millis) => Ok(Behavior::Slow(Duration::from_millis(number(millis)?))),
            ("hang", "") => Ok(Behavior::Hang),
            ("reset", "") => Ok(Behavior::Reset),
            ("slow-body", rest) => {
                let mut parts = rest.splitn(3, ':');
                let (Some(every), Some(chunks), Some(chunk)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(ParseBehaviorError::http(format!("`{text}` lacks a part")));
                };
                Ok(Behavior::SlowBody {
                    chunk: Bytes::copy_from_slice(chunk.as_bytes()),
                    every: Duration::from_millis(number(every)?),
                    chunks: u32::try_from(number(chunks)?)
                        .map_err(|_| ParseBehaviorError::http(format!("`{chunks}` is too many")))?,
                })
            }
            ("headed", rest) => {
                let (code, lines) = rest.split_once(':').unwrap_or((rest, ""));
                let headers = lines
                    .split(';')
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let parsed = line.split_once('=').and_then(|(name, value)| {
                            Some((
                                HeaderName::from_str(name).ok()?,
                                HeaderValue::from_str(value).ok()?,
                            ))
                        });
                        parsed.ok_or_else(|| {
                            ParseBehaviorError::http(format!("`{line}` is not NAME=VALUE"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Behavior::Headed {
                    status: status(code)?,
                    headers,
                })
            }
            ("echo", "") => Ok(Behavior::Echo),
            _ => Err(ParseBehaviorError::http(format!(
                "`{text}` is not a behaviour"
            ))),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start(behavior: Behavior) -> io::Result<Upstream> {
        Upstream::start_on(
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            behavior,
        )
        .await
    }

    /// Serves on `addr`, e.g. the port of an upstream that was stopped, to bring it back.
    pub async fn start_on(addr: SocketAddr, behavior: Behavior) -> io::Result<Upstream> {
        // tokio's bind sets SO_REUSEADDR, so the connections of a previous server on this port
        // lingering in TIME_WAIT do not hold it.
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behavior: Mutex::new(behavior),
            requests: Mutex::default(),
            count: AtomicU64::new(0),
            arrived: Notify::new(),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Upstream {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address to send requests to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The behaviour for requests arriving from now on; requests being answered keep theirs.
    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.shared.behavior) = behavior;
    }

    /// The behaviour in force.
    pub fn behavior(&self) -> Behavior {
        lock(&self.shared.behavior).clone()
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received so far; reads an atomic, takes no lock.
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Waits until at least `n` requests were received.
    pub async fn wait_for_requests(&self, n: u64) {
        loop {
            let arrived = self.shared.arrived.notified();
            if self.request_count() >= n {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks; each connection task's
        // end ends the requests it had started.
        self.accept_task.abort();
    }
}

// === impl Shared ===

impl Shared {
    fn record(&self, request: SeenRequest) {
        lock(&self.requests).push(request);
        // Counted after it is stored, so `requests()` holds at least `request_count()` entries.
        self.count.fetch_add(1, Ordering::Release);
        self.arrived.notify_waiters();
    }
}

// A test that panicked while holding the lock has failed already; the state it guards is still
// worth reading to report what happened.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === the tasks ===

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// The most header lines the upstream takes in a request head.
const UPSTREAM_MAX_HEADERS: usize = 1000;

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    // A handler told to reset the connection asks this task to drop it.
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |request| handle(request, shared.clone(), reset.clone()))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Past any head a proxy under test lets through, so that its own limits are the ones seen.
    builder.http1().max_headers(UPSTREAM_MAX_HEADERS);
    let serving = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = serving => {}
        // Dropping the connection closes the socket without a word.
        () = reset.notified() => {}
    }
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<Notify>,
) -> Result<Response<Body>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let seen = SeenRequest {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
        version: parts.version,
        authority: parts.uri.authority().map(ToString::to_string),
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let behavior = lock(&shared.behavior).clone();
    shared.record(seen.clone());
    // A handler that never answers still ends with its connection: hyper drops it with an
    // HTTP/1.1 connection, and ends the task of an HTTP/2 stream once the stream is reset, which
    // closing the connection does.
    Ok(behavior.answer(&seen, &reset).await)
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed_unsync(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn echo(request: &SeenRequest) -> Response<Body> {
    let mut json = String::new();
    json.push_str("{\"method\":");
    push_json_string(&mut json, request.method.as_str());
    json.push_str(",\"path\":");
    push_json_string(&mut json, &request.path);
    json.push_str(",\"version\":");
    push_json_string(&mut json, &format!("{:?}", request.version));
    json.push_str(",\"headers\":[");
    for (i, (name, value)) in request.headers.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('[');
        push_json_string(&mut json, name.as_str());
        json.push(',');
        push_json_string(&mut json, &String::from_utf8_lossy(value.as_bytes()));
        json.push(']');
    }
    json.push_str("],\"body\":");
    push_json_string(&mut json, &String::from_utf8_lossy(&request.body));
    json.push('}');

    let mut response = respond(StatusCode::OK, json);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(method) = HeaderValue::from_str(request.method.as_str()) {
        headers.insert("x-echo-method", method);
    }
    if let Ok(path) = HeaderValue::from_str(&request.path) {
        headers.insert("x-echo-path", path);
    }
    response
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let behaviors = [
            Behavior::default(),
            Behavior::Ok {
                status: StatusCode::CREATED,
                body: Bytes::from_static(b"with: colons"),
            },
            Behavior::Fail(StatusCode::BAD_GATEWAY),
            Behavior::Slow(Duration::from_millis(250)),
            Behavior::Hang,
            Behavior::Reset,
            Behavior::SlowBody {
                chunk: Bytes::from_static(b"a:b"),
                every: Duration::from_millis(40),
                chunks: 5,
            },
            Behavior::Headed {
                status: StatusCode::SERVICE_UNAVAILABLE,
                headers: vec![
                    (
                        HeaderName::from_static("retry-after"),
                        HeaderValue::from_static("1"),
                    ),
                    (
                        HeaderName::from_static("x-two"),
                        HeaderValue::from_static("a:b"),
                    ),
                ],
            },
            Behavior::Echo,
        ];
        for behavior in behaviors {
            let text = behavior.to_string();
            assert_eq!(text.parse::<Behavior>(), Ok(behavior), "{text}");
        }
    }

    #[test]
    fn short_forms_parse() {
        assert_eq!("ok".parse(), Ok(Behavior::ok("ok")));
        assert_eq!(
            "ok:204".parse(),
            Ok(Behavior::Ok {
                status: StatusCode::NO_CONTENT,
                body: Bytes::new()
            })
        );
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        for text in [
            "",
            "okay",
            "fail:abc",
            "fail:1000",
            "slow:-1",
            "slow-body:5:2",
            "hang:1",
        ] {
            assert!(text.parse::<Behavior>().is_err(), "{text}");
        }
        let err = "slow:soon".parse::<Behavior>().unwrap_err().to_string();
        assert!(err.contains("`soon` is not a whole number"), "{err}");
    }
}
