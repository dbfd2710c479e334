//! A scriptable gRPC upstream (tonic's server side over hyper's h2c), and a tonic client for it.
//!
//! The service is `rampart.test.Echo`, one unary method, `Say(EchoRequest) -> EchoReply`. Its
//! messages are derived with prost by hand, and the server and client use tonic's lower-level
//! API (`tonic::server::Grpc`, `tonic::client::Grpc` with `tonic_prost::ProstCodec`), so no
//! `.proto` file and no protoc are needed.
//!
//! The server also answers the standard health checks (`grpc.health.v1.Health`, tonic-health),
//! whose status a test sets with [`GrpcUpstream::set_health`].
//!
//! The server is served by hyper directly rather than by `tonic::transport::Server`: that server
//! enforces each call's `grpc-timeout` itself, and would end a [`GrpcBehavior::Hang`] with its own
//! DEADLINE_EXCEEDED, racing the proxy's timeout that the tests want to see.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tonic::server::{Grpc, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_prost::ProstCodec;
use tower_service::Service as _;

use crate::ParseBehaviorError;
use crate::upstream::lock;

/// The path of `rampart.test.Echo/Say`.
pub const SAY: &str = "/rampart.test.Echo/Say";

/// The path prefix of the health service's methods.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// `rampart.test.EchoRequest`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoRequest {
    /// What to echo.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `rampart.test.EchoReply`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EchoReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The address of the upstream that answered, `127.0.0.1:PORT`.
    #[prost(string, tag = "2")]
    pub served_by: String,
}

/// How a [`GrpcUpstream`] answers each call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GrpcBehavior {
    /// Reply at once with the request's message (status OK, in the trailers).
    #[default]
    Ok,
    /// Fail at once with this code, the way tonic fails a unary call: a trailers-only response,
    /// the `grpc-status` in the response headers.
    Fail(Code),
    /// Send the response headers and the reply, then end with this code in the trailers: the
    /// status arrives only after the body.
    FailInTrailers(Code),
    /// Reply after this delay.
    Slow(Duration),
    /// Never reply; the call stays open until the client or the upstream gives up.
    Hang,
    /// Send the response headers and the first byte of the reply at once, the rest of the reply
    /// and the trailers after this delay: a call caught in the middle of its body.
    SlowBody(Duration),
}

/// The text form, for the `--grpc` mode of the `rampart-test-upstream` binary: `ok`,
/// `fail:CODE`, `fail-in-trailers:CODE` (CODE a number, `14` for UNAVAILABLE), `slow:MILLIS`,
/// `hang`, `slow-body:MILLIS`.
impl fmt::Display for GrpcBehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcBehavior::Ok => f.write_str("ok"),
            GrpcBehavior::Fail(code) => write!(f, "fail:{}", *code as i32),
            GrpcBehavior::FailInTrailers(code) => write!(f, "fail-in-trailers:{}", *code as i32),
            GrpcBehavior::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            GrpcBehavior::Hang => f.write_str("hang"),
            GrpcBehavior::SlowBody(delay) => write!(f, "slow-body:{}", delay.as_millis()),
        }
    }
}

impl FromStr for GrpcBehavior {
    type Err = ParseBehaviorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let invalid = || ParseBehaviorError::grpc(format!("`{text}` is not a gRPC behaviour"));
        let code = |s: &str| match s.parse::<i32>() {
            Ok(n @ 0..=16) => Ok(Code::from_i32(n)),
            _ => Err(invalid()),
        };
        let millis = |s: &str| s.parse().map(Duration::from_millis).map_err(|_| invalid());
        match (kind, rest) {
            ("ok", "") => Ok(GrpcBehavior::Ok),
            ("fail", rest) => Ok(GrpcBehavior::Fail(code(rest)?)),
            ("fail-in-trailers", rest) => Ok(GrpcBehavior::FailInTrailers(code(rest)?)),
            ("slow", rest) => Ok(GrpcBehavior::Slow(millis(rest)?)),
            ("hang", "") => Ok(GrpcBehavior::Hang),
            ("slow-body", rest) => Ok(GrpcBehavior::SlowBody(millis(rest)?)),
            _ => Err(invalid()),
        }
    }
}

/// One call as the upstream received it.
#[derive(Clone, Debug)]
pub struct SeenCall {
    /// The request path, e.g. `/rampart.test.Echo/Say`.
    pub path: String,
    /// The request headers (the call's metadata, `grpc-timeout` and `content-type` included).
    pub headers: HeaderMap,
    /// The request's `grpc-timeout`, decoded; `None` when the call came without one.
    pub timeout: Option<Duration>,
    /// The request's message.
    pub message: String,
}

/// A gRPC server on 127.0.0.1 serving `rampart.test.Echo` as its [`GrpcBehavior`] says, and
/// recording each call once its request message has arrived, before it is answered.
///
/// Dropping it closes its port and every connection, which ends every call still open.
///
/// Must be started inside a tokio runtime with the IO and time drivers enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use rampart_test_support::{EchoClient, GrpcBehavior, GrpcUpstream};
///
/// let upstream = GrpcUpstream::start(GrpcBehavior::Ok).await?;
/// let mut client = EchoClient::connect(upstream.addr()).await?;
/// let reply = client.say("hi").await?.into_inner();
/// assert_eq!(reply.message, "hi");
/// assert_eq!(reply.served_by, upstream.addr().to_string());
/// assert_eq!(upstream.calls()[0].message, "hi");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct GrpcUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    health: HealthReporter,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    health: HealthServer<HealthService>,
    health_checks: AtomicU64,
    behavior: Mutex<GrpcBehavior>,
    calls: Mutex<Vec<SeenCall>>,
    count: AtomicU64,
    arrived: Notify,
}

// === impl GrpcUpstream ===

impl GrpcUpstream {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start(behavior: GrpcBehavior) -> io::Result<GrpcUpstream> {
        GrpcUpstream::start_on(
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            behavior,
        )
        .await
    }

    /// Serves on `addr`, e.g. the port of an upstream that was stopped, to bring it back.
    pub async fn start_on(addr: SocketAddr, behavior: GrpcBehavior) -> io::Result<GrpcUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // The server as a whole ("") starts SERVING.
        let health = HealthReporter::new();
        let shared = Arc::new(Shared {
            addr,
            health: HealthServer::new(HealthService::from_health_reporter(health.clone())),
            health_checks: AtomicU64::new(0),
            behavior: Mutex::new(behavior),
            calls: Mutex::default(),
            count: AtomicU64::new(0),
            arrived: Notify::new(),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(GrpcUpstream {
            addr,
            shared,
            health,
            accept_task,
        })
    }

    /// The address to send calls to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The behaviour for calls arriving from now on.
    pub fn set_behavior(&self, behavior: GrpcBehavior) {
        *lock(&self.shared.behavior) = behavior;
    }

    /// What the health service answers for the server as a whole (the service name ""):
    /// `SERVING` at start.
    pub async fn set_health(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
    }

    /// How many health checks were received so far (they are not among [`calls`](Self::calls)).
    pub fn health_check_count(&self) -> u64 {
        self.shared.health_checks.load(Ordering::Acquire)
    }

    /// Every call of `Say` received so far, in order of arrival.
    pub fn calls(&self) -> Vec<SeenCall> {
        lock(&self.shared.calls).clone()
    }

    /// How many calls were received so far.
    pub fn call_count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Waits until at least `n` calls were received.
    pub async fn wait_for_calls(&self, n: u64) {
        loop {
            let arrived = self.shared.arrived.notified();
            if self.call_count() >= n {
                return;
            }
            arrived.await;
        }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

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

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| handle(request, shared.clone()));
    let _ = auto::Builder::new(TokioExecutor::new())
        .http2_only()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<tonic::body::Body>, std::convert::Infallible> {
    if request.uri().path().starts_with(HEALTH) {
        shared.health_checks.fetch_add(1, Ordering::Release);
        return shared.health.clone().call(request).await;
    }
    let behavior = lock(&shared.behavior).clone();
    let say = Say {
        shared,
        behavior: behavior.clone(),
        path: request.uri().path().to_owned(),
        headers: request.headers().clone(),
    };
    let mut grpc = Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
    let response = grpc.unary(say, request).await;
    Ok(match behavior {
        GrpcBehavior::FailInTrailers(code) => response.map(|body| {
            // tonic ends the reply with `grpc-status: 0` in the trailers; this one fails there.
            let status = HeaderValue::from(code as i32);
            tonic::body::Body::new(body.map_frame(move |frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    trailers.insert("grpc-status", status.clone());
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))
        }),
        GrpcBehavior::SlowBody(delay) => slow_body(response, delay).await,
        _ => response,
    })
}

// The response with its first byte at once, the rest of it and the trailers after `delay`.
async fn slow_body(
    response: Response<tonic::body::Body>,
    delay: Duration,
) -> Response<tonic::body::Body> {
    let (parts, body) = response.into_parts();
    // The reply is ready: tonic encoded it before answering.
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, tonic::body::Body::empty());
    };
    let trailers = collected.trailers().cloned();
    let mut rest = collected.to_bytes();
    let first = rest.split_to(rest.len().min(1));
    let later = async move {
        tokio::time::sleep(delay).await;
        let frames = [Some(Frame::data(rest)), trailers.map(Frame::trailers)];
        stream::iter(frames.into_iter().flatten().map(Ok::<_, Status>))
    };
    let frames = stream::once(std::future::ready(Ok(Frame::data(first))))
        .chain(stream::once(later).flatten());
    Response::from_parts(parts, tonic::body::Body::new(StreamBody::new(frames)))
}

// One call of `Say`, as tonic's server hands it over.
struct Say {
    shared: Arc<Shared>,
    behavior: GrpcBehavior,
    path: String,
    headers: HeaderMap,
}

type SayFuture = Pin<Box<dyn Future<Output = Result<tonic::Response<EchoReply>, Status>> + Send>>;

impl UnaryService<EchoRequest> for Say {
    type Response = EchoReply;
    type Future = SayFuture;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> SayFuture {
        let message = request.into_inner().message;
        let seen = SeenCall {
            path: std::mem::take(&mut self.path),
            timeout: self
                .headers
                .get("grpc-timeout")
                .and_then(|value| parse_timeout(value.as_bytes())),
            headers: std::mem::take(&mut self.headers),
            message: message.clone(),
        };
        lock(&self.shared.calls).push(seen);
        // Counted after it is stored, so `calls()` holds at least `call_count()` entries.
        self.shared.count.fetch_add(1, Ordering::Release);
        self.shared.arrived.notify_waiters();

        let reply = EchoReply {
            message,
            served_by: self.shared.addr.to_string(),
        };
        let behavior = self.behavior.clone();
        Box::pin(async move {
            match behavior {
                GrpcBehavior::Ok | GrpcBehavior::FailInTrailers(_) | GrpcBehavior::SlowBody(_) => {}
                GrpcBehavior::Fail(code) => return Err(Status::new(code, "failed as scripted")),
                GrpcBehavior::Slow(delay) => tokio::time::sleep(delay).await,
                GrpcBehavior::Hang => std::future::pending().await,
            }
            Ok(tonic::Response::new(reply))
        })
    }
}

/// Decodes a `grpc-timeout` value, as the proxy does.
fn parse_timeout(value: &[u8]) -> Option<Duration> {
    rampart_http::deadline::parse_grpc_timeout(value).ok()
}

// === EchoClient ===

/// A tonic client of `rampart.test.Echo`, over h2c.
///
/// Two kinds: [`connect`](EchoClient::connect) makes the usual tonic client (a `Channel`), which
/// keeps a timer for a call's deadline itself and reports its own expiry as CANCELLED (tonic's
/// choice); [`connect_untimed`](EchoClient::connect_untimed) sends the deadline as `grpc-timeout`
/// but keeps no timer, so a test sees what the other side answered when the deadline passed.
#[derive(Debug, Clone)]
pub struct EchoClient {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Channel(tonic::client::Grpc<Channel>),
    // Boxed: hyper's client is much the larger.
    Untimed(Box<tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>>),
}

impl EchoClient {
    /// Connects a tonic `Channel` to `addr` (a [`GrpcUpstream`], or a proxy in front of one).
    pub async fn connect(addr: SocketAddr) -> Result<EchoClient, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(EchoClient {
            inner: Inner::Channel(tonic::client::Grpc::new(channel)),
        })
    }

    /// A client of `addr` over hyper's pooled client, without a timer of its own for deadlines;
    /// it connects at the first call.
    pub fn connect_untimed(addr: SocketAddr) -> EchoClient {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let origin = http::Uri::try_from(format!("http://{addr}"))
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1"));
        EchoClient {
            inner: Inner::Untimed(Box::new(tonic::client::Grpc::with_origin(client, origin))),
        }
    }

    /// Calls `Say` with `message`, no deadline, no metadata.
    pub async fn say(&mut self, message: &str) -> Result<tonic::Response<EchoReply>, Status> {
        self.call(tonic::Request::new(EchoRequest {
            message: message.to_owned(),
        }))
        .await
    }

    /// Calls `Say` with a request of the caller's making (metadata, a deadline with
    /// [`tonic::Request::set_timeout`]).
    pub async fn call(
        &mut self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let path = http::uri::PathAndQuery::from_static(SAY);
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let unavailable = |err: &dyn std::fmt::Display| Status::unavailable(err.to_string());
        match &mut self.inner {
            Inner::Channel(grpc) => {
                grpc.ready().await.map_err(|err| unavailable(&err))?;
                grpc.unary(request, path, codec).await
            }
            Inner::Untimed(grpc) => {
                grpc.ready().await.map_err(|err| unavailable(&err))?;
                grpc.unary(request, path, codec).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_decode_in_every_unit() {
        assert_eq!(parse_timeout(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(
            parse_timeout(b"299999u"),
            Some(Duration::from_micros(299_999))
        );
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"300"), None);
        assert_eq!(parse_timeout(b"123456789m"), None);
    }

    #[test]
    fn behaviour_text_form_round_trips() {
        let behaviors = [
            GrpcBehavior::Ok,
            GrpcBehavior::Fail(Code::NotFound),
            GrpcBehavior::FailInTrailers(Code::Unavailable),
            GrpcBehavior::Slow(Duration::from_millis(250)),
            GrpcBehavior::Hang,
            GrpcBehavior::SlowBody(Duration::from_secs(3)),
        ];
        for behavior in behaviors {
            let text = behavior.to_string();
            assert_eq!(text.parse::<GrpcBehavior>(), Ok(behavior), "{text}");
        }
        for text in ["", "fail:17", "fail:x", "slow", "hang:1", "echo"] {
            assert!(text.parse::<GrpcBehavior>().is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn a_slow_body_sends_its_head_and_first_byte_at_once() {
        let upstream = GrpcUpstream::start(GrpcBehavior::SlowBody(Duration::from_secs(60)))
            .await
            .unwrap();
        let tcp = TcpStream::connect(upstream.addr()).await.unwrap();
        let (mut client, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::post(format!("http://{}{SAY}", upstream.addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // EchoRequest { message: "x" }, framed.
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 3, 0x0a, 1, b'x',
            ])))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        // The compression flag of the reply's frame; the rest waits a minute.
        assert_eq!(&first[..], &[0]);
        let rest = tokio::time::timeout(Duration::from_millis(100), body.frame()).await;
        assert!(rest.is_err(), "the rest came at once");
    }

    #[tokio::test]
    async fn health_checks_answer_as_set() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus as Answer;
        use tonic_health::pb::health_client::HealthClient;

        let upstream = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
        let channel = Endpoint::from_shared(format!("http://{}", upstream.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let check = || tonic::Request::new(HealthCheckRequest::default());
        let answer = client.check(check()).await.unwrap().into_inner();
        assert_eq!(answer.status(), Answer::Serving);
        upstream.set_health(ServingStatus::NotServing).await;
        let answer = client.check(check()).await.unwrap().into_inner();
        assert_eq!(answer.status(), Answer::NotServing);
        assert_eq!(upstream.health_check_count(), 2);
        assert_eq!(upstream.call_count(), 0);
    }

    #[tokio::test]
    async fn each_behaviour_answers_as_scripted() {
        let upstream = GrpcUpstream::start(GrpcBehavior::Fail(Code::NotFound))
            .await
            .unwrap();
        let mut client = EchoClient::connect(upstream.addr()).await.unwrap();
        let status = client.say("a").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);

        upstream.set_behavior(GrpcBehavior::FailInTrailers(Code::Unavailable));
        let status = client.say("b").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);

        upstream.set_behavior(GrpcBehavior::Hang);
        let request = || {
            let mut request = tonic::Request::new(EchoRequest {
                message: "c".into(),
            });
            request.set_timeout(Duration::from_millis(50));
            request
        };
        let status = client.call(request()).await.unwrap_err();
        // tonic's own timer ends the call, and calls that CANCELLED.
        assert_eq!(status.code(), Code::Cancelled);
        // Without a timer of its own, the client waits for the server, which hangs on.
        let mut untimed = EchoClient::connect_untimed(upstream.addr());
        let waited =
            tokio::time::timeout(Duration::from_millis(200), untimed.call(request())).await;
        assert!(waited.is_err());
        upstream.wait_for_calls(4).await;

        let calls = upstream.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0].path, SAY);
        assert_eq!(calls[0].timeout, None);
        assert_eq!(calls[2].timeout, Some(Duration::from_millis(50)));
        assert_eq!(calls[3].timeout, Some(Duration::from_millis(50)));
    }
}
