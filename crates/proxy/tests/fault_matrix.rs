//! The upstream fault matrix: for each way an upstream can fail, and for each protocol (HTTP/1.1,
//! h2c, gRPC), the client gets a defined answer within the route's timeout: the upstream's answer,
//! a healthy endpoint's answer after a retry, the route's fallback, a synthetic error saying why
//! (`x-rampart-error`; gRPC: `grpc-status` and the reason), or, once the head has gone out, a
//! body cut off as the contract says (HTTP: the connection closed or the stream reset; gRPC:
//! the call ended with a status and the reason in the trailers).
//!
//! docs/security.md ("Fault matrix") has the table these tests hold the proxy to.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use rampart_http::Reason;
use rampart_proxy::Proxy;
use rampart_test_support::{
    Behavior, ChildUpstream, EchoClient, GrpcBehavior, GrpcUpstream, H2Code, Misbehaving, Refusing,
    Step, Upstream,
};
use tokio::time::Instant;
use tonic::Code;

use common::*;

/// Every route's timeout.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Every answer comes within this: the route's timeout and a wide margin for a loaded machine.
const WITHIN: Duration = Duration::from_secs(5);
/// The attempts a route makes at most unless told otherwise (`[routes.retry] attempts`).
const DEFAULT_ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
    Grpc,
}

use Protocol::{Grpc, H2c, Http1};

const ALL: [Protocol; 3] = [Http1, H2c, Grpc];
/// GOAWAY and RST_STREAM are HTTP/2 frames: not applicable to HTTP/1.1.
const HTTP2: [Protocol; 2] = [H2c, Grpc];

/// What the client got.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A whole HTTP response.
    Http {
        status: u16,
        error: Option<String>,
        fallback: Option<String>,
        body: Bytes,
    },
    /// An HTTP response head, then a body that broke off.
    CutOff { status: u16 },
    /// A gRPC reply, from the upstream at this address.
    Reply { served_by: String },
    /// A failed gRPC call.
    Status { code: Code, error: Option<String> },
}

impl Answer {
    /// The `x-rampart-error` that came with it, if any.
    fn error(&self) -> Option<&str> {
        match self {
            Answer::Http { error, .. } | Answer::Status { error, .. } => error.as_deref(),
            Answer::CutOff { .. } | Answer::Reply { .. } => None,
        }
    }
}

/// What the client must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The healthy endpoint's answer (after a retry, where the faulty endpoint was tried first).
    Healthy,
    /// rampart's answer for this reason: its status and `x-rampart-error` (gRPC: its code and
    /// `x-rampart-error`).
    Synthetic(Reason),
    /// The head of a 200 went out, then the body broke off (HTTP only).
    CutOff,
    /// The upstream's own answer with this status, no `x-rampart-error` (gRPC: this code).
    Upstream(u16),
}

// === the clients ===

impl Protocol {
    /// The upstream's `protocol`.
    fn config(self) -> &'static str {
        match self {
            Http1 => "http1",
            H2c => "http2",
            Grpc => "grpc",
        }
    }

    /// One request through `proxy`, and what came of it, within [`WITHIN`].
    async fn ask(self, proxy: &Proxy) -> Answer {
        self.ask_then(proxy, None).await
    }

    /// [`ask`](Self::ask), letting `upstream` go on past its [`Step::Await`] once the response
    /// head has reached the client (gRPC: at once, the call's answer is the same either way;
    /// and for each of the route's attempts, as a call whose answer broke off before any of it
    /// reached the client may be retried).
    async fn ask_then(self, proxy: &Proxy, upstream: Option<&Misbehaving>) -> Answer {
        tokio::time::timeout(WITHIN, self.exchange(proxy, upstream))
            .await
            .unwrap_or_else(|_| panic!("{self:?}: no answer within {WITHIN:?}"))
    }

    async fn exchange(self, proxy: &Proxy, upstream: Option<&Misbehaving>) -> Answer {
        let client = match self {
            Http1 => http1(),
            H2c => h2c(),
            Grpc => {
                for _ in 0..DEFAULT_ATTEMPTS {
                    upstream.map(Misbehaving::proceed);
                }
                return grpc_call(proxy).await;
            }
        };
        let request = request(proxy, "/").body(Full::default()).unwrap();
        let response = client.request(request).await.expect("a response head");
        upstream.map(Misbehaving::proceed);
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        let (error, fallback) = (header("x-rampart-error"), header("x-rampart-fallback"));
        match response.into_body().collect().await {
            Ok(body) => Answer::Http {
                status,
                error,
                fallback,
                body: body.to_bytes(),
            },
            Err(_) => Answer::CutOff { status },
        }
    }
}

async fn grpc_call(proxy: &Proxy) -> Answer {
    // No timer of its own: what it gets is what rampart answered.
    let mut client = EchoClient::connect_untimed(addr(proxy));
    match client.say("matrix").await {
        Ok(reply) => Answer::Reply {
            served_by: reply.into_inner().served_by,
        },
        Err(status) => Answer::Status {
            code: status.code(),
            error: status
                .metadata()
                .get("x-rampart-error")
                .map(|value| value.to_str().unwrap().to_owned()),
        },
    }
}

/// Asserts that `answer` is what `expect` says, `healthy` the healthy endpoint's address.
#[track_caller]
fn check(protocol: Protocol, answer: &Answer, expect: Expect, healthy: Option<SocketAddr>) {
    let grpc = protocol == Grpc;
    let wanted = match (expect, grpc) {
        (Expect::Healthy, false) => Answer::Http {
            status: 200,
            error: None,
            fallback: None,
            body: Bytes::from_static(b"healthy"),
        },
        (Expect::Healthy, true) => Answer::Reply {
            served_by: healthy.expect("a healthy endpoint").to_string(),
        },
        (Expect::Synthetic(reason), false) => Answer::Http {
            status: reason.status().as_u16(),
            error: Some(reason.as_str().to_owned()),
            fallback: None,
            body: rampart_http::rescue(reason, false).into_body(),
        },
        (Expect::Synthetic(reason), true) => Answer::Status {
            code: Code::from_i32(i32::from(reason.grpc_code().as_u8())),
            error: Some(reason.as_str().to_owned()),
        },
        (Expect::CutOff, false) => Answer::CutOff { status: 200 },
        (Expect::CutOff, true) => panic!("a gRPC call is never left cut off"),
        (Expect::Upstream(status), false) => Answer::Http {
            status,
            error: None,
            fallback: None,
            body: Bytes::from(
                StatusCode::from_u16(status)
                    .unwrap()
                    .canonical_reason()
                    .unwrap(),
            ),
        },
        (Expect::Upstream(code), true) => Answer::Status {
            code: Code::from_i32(i32::from(code)),
            error: None,
        },
    };
    assert_eq!(answer, &wanted, "{protocol:?}");
}

// === the upstreams ===

/// A proxy for `protocol` to these endpoints, the route timing out after [`TIMEOUT`]; `route`
/// lines added to the route. Endpoints are taken in turn, so that with a faulty endpoint first
/// and a healthy one second, two requests try both first.
async fn proxy(protocol: Protocol, endpoints: &[SocketAddr], route: &str) -> Proxy {
    proxy_timed(protocol, endpoints, TIMEOUT, route).await
}

/// [`proxy`] with the route timing out after `timeout`.
async fn proxy_timed(
    protocol: Protocol,
    endpoints: &[SocketAddr],
    timeout: Duration,
    route: &str,
) -> Proxy {
    simple(
        endpoints,
        &format!("timeout = \"{}ms\"\n{route}", timeout.as_millis()),
        &format!(
            "protocol = \"{}\"\nbalance = \"round-robin\"",
            protocol.config()
        ),
    )
    .await
}

/// A well-behaved upstream of `protocol`: HTTP/1.1 and h2c, or gRPC.
enum Answering {
    Http(Upstream),
    Grpc(GrpcUpstream),
}

impl Answering {
    /// Answering 200 `healthy` (gRPC: echoing, with its address).
    async fn healthy(protocol: Protocol) -> Answering {
        match protocol {
            Grpc => Answering::Grpc(GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap()),
            Http1 | H2c => Answering::Http(Upstream::start(Behavior::ok("healthy")).await.unwrap()),
        }
    }

    /// Answering 503 (gRPC: UNAVAILABLE) to everything.
    async fn unavailable(protocol: Protocol) -> Answering {
        match protocol {
            Grpc => Answering::Grpc(
                GrpcUpstream::start(GrpcBehavior::Fail(Code::Unavailable))
                    .await
                    .unwrap(),
            ),
            Http1 | H2c => Answering::Http(
                Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
                    .await
                    .unwrap(),
            ),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Answering::Http(upstream) => upstream.addr(),
            Answering::Grpc(upstream) => upstream.addr(),
        }
    }

    /// Requests (gRPC: calls) received so far.
    fn seen(&self) -> u64 {
        match self {
            Answering::Http(upstream) => upstream.request_count(),
            Answering::Grpc(upstream) => upstream.call_count(),
        }
    }
}

/// The start of a response of `protocol`, a 200 whose body is `len` bytes long: an HTTP/1.1
/// head, or the HEADERS of an HTTP/2 exchange (its SETTINGS first; gRPC's content type).
fn head(protocol: Protocol, len: usize) -> Vec<Step> {
    match protocol {
        Http1 => vec![
            Step::ReadRequest,
            Step::Write(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into()),
        ],
        H2c | Grpc => {
            let mut fields = vec![(":status".to_owned(), "200".to_owned())];
            if protocol == Grpc {
                fields.push(("content-type".to_owned(), "application/grpc".to_owned()));
            } else {
                fields.push(("content-length".to_owned(), len.to_string()));
            }
            vec![
                Step::Settings,
                Step::ReadRequest,
                Step::Headers {
                    fields,
                    end_stream: false,
                },
            ]
        }
    }
}

/// The first bytes of a body of `protocol`: for gRPC, the start of a message 16 bytes long.
fn some_body(protocol: Protocol) -> Step {
    let bytes = match protocol {
        Grpc => Bytes::from_static(&[0, 0, 0, 0, 16, 0x0a]),
        Http1 | H2c => Bytes::from_static(b"partial"),
    };
    match protocol {
        Http1 => Step::Write(bytes),
        H2c | Grpc => Step::Data {
            data: bytes,
            end_stream: false,
        },
    }
}

/// A 200 whose body breaks off after a first piece by `fault`, served alone: what the client
/// gets. The fault waits until the head has reached the client: an HTTP client whose response
/// breaks off at once may see the break before the head, a connection closed or a stream reset
/// with no response (the contract's cut-off all the same; a gRPC call's answer is the same
/// either way).
async fn cut_mid_body(protocol: Protocol, fault: Vec<Step>, grpc: Reason) {
    let mut script = head(protocol, 100);
    script.extend([some_body(protocol), Step::Await]);
    script.extend(fault);
    let upstream = Misbehaving::start(script).await.unwrap();
    let proxy = proxy(protocol, &[upstream.addr()], "").await;
    let answer = protocol.ask_then(&proxy, Some(&upstream)).await;
    let expect = match protocol {
        Http1 | H2c => Expect::CutOff,
        Grpc => Expect::Synthetic(grpc),
    };
    check(protocol, &answer, expect, None);
}

/// What an HTTP/2 script starts with: the server's SETTINGS, then the request read.
fn h2_request() -> Vec<Step> {
    vec![Step::Settings, Step::ReadRequest]
}

/// `script` served alone, then beside a healthy endpoint; what the client gets in each case.
async fn alone_and_beside_healthy(protocol: Protocol, script: Vec<Step>, alone: Expect) {
    let faulty = Misbehaving::start(script).await.unwrap();
    let answer = protocol
        .ask(&proxy(protocol, &[faulty.addr()], "").await)
        .await;
    check(protocol, &answer, alone, None);

    let healthy = Answering::healthy(protocol).await;
    let proxy = proxy(protocol, &[faulty.addr(), healthy.addr()], "").await;
    let before = faulty.connections();
    for _ in 0..2 {
        let answer = protocol.ask(&proxy).await;
        check(protocol, &answer, Expect::Healthy, Some(healthy.addr()));
    }
    assert!(faulty.connections() > before, "{protocol:?}: never tried");
}

// === the rows ===

#[tokio::test]
async fn connection_refused() {
    for protocol in ALL {
        let refusing = Refusing::bind().unwrap();
        let closed = refusing.addr();
        let answer = protocol.ask(&proxy(protocol, &[closed], "").await).await;
        check(
            protocol,
            &answer,
            Expect::Synthetic(Reason::UpstreamConnect),
            None,
        );

        let healthy = Answering::healthy(protocol).await;
        let proxy = proxy(protocol, &[closed, healthy.addr()], "").await;
        for _ in 0..2 {
            let answer = protocol.ask(&proxy).await;
            check(protocol, &answer, Expect::Healthy, Some(healthy.addr()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sigkilled_mid_response() {
    let binary = ChildUpstream::built_binary_path();
    for protocol in ALL {
        // The head and a first piece at once, then a piece now and then, for far longer than
        // the route's timeout.
        let mut child = match protocol {
            Http1 | H2c => ChildUpstream::spawn_with(
                &binary,
                Behavior::SlowBody {
                    chunk: "x".into(),
                    every: Duration::from_millis(100),
                    chunks: 100,
                },
            ),
            Grpc => ChildUpstream::spawn_grpc_with(
                &binary,
                GrpcBehavior::SlowBody(Duration::from_secs(30)),
            ),
        }
        .unwrap();
        // A route timeout far away: what cuts the body is the kill.
        let proxy = proxy_timed(protocol, &[child.addr()], Duration::from_secs(30), "").await;
        let started = Instant::now();
        let client = match protocol {
            Http1 => http1(),
            H2c | Grpc => h2c(),
        };
        let mut request = request(&proxy, "/");
        // The gRPC call by hand: a tonic client shows nothing before the call ends, and the kill
        // must come once the body has started. Its trailers are what tonic would read.
        let body = if protocol == Grpc {
            request = request
                .method(Method::POST)
                .uri(format!(
                    "http://{}{}",
                    addr(&proxy),
                    rampart_test_support::SAY
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            // EchoRequest { message: "x" }, framed: no compression, 3 bytes.
            Full::new(Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'x']))
        } else {
            Full::default()
        };
        let response = client.request(request.body(body).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{protocol:?}");
        let mut body = response.into_body();
        // The body has started: kill the upstream in the middle of it.
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data(), "{protocol:?}");
        tokio::task::block_in_place(|| child.kill()).unwrap();

        let rest = tokio::time::timeout(WITHIN, async {
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                match frame.map(|frame| frame.into_trailers()) {
                    Ok(Ok(frame)) => trailers = Some(frame),
                    Ok(Err(_data)) => {}
                    Err(_) => return Err(()),
                }
            }
            Ok(trailers)
        })
        .await
        .expect("the body ends soon after the kill");
        match protocol {
            // Cut off: the connection closed, the stream reset.
            Http1 | H2c => assert!(rest.is_err(), "{protocol:?}: the body ended as if whole"),
            Grpc => {
                let trailers = rest.expect("the call ends with trailers").unwrap();
                assert_eq!(trailers["grpc-status"], "14");
                assert_eq!(trailers["x-rampart-error"], "upstream-reset");
            }
        }
        assert!(started.elapsed() < WITHIN, "{protocol:?}");
    }
}

#[tokio::test]
async fn hang_after_response_headers() {
    for protocol in ALL {
        let mut script = head(protocol, 10);
        script.push(Step::Hang);
        let upstream = Misbehaving::start(script).await.unwrap();
        let answer = protocol
            .ask(&proxy(protocol, &[upstream.addr()], "").await)
            .await;
        let expect = match protocol {
            Http1 | H2c => Expect::CutOff,
            Grpc => Expect::Synthetic(Reason::Timeout),
        };
        check(protocol, &answer, expect, None);
    }
}

#[tokio::test]
async fn reset_before_any_response_byte() {
    for protocol in ALL {
        let mut script = match protocol {
            Http1 => vec![Step::ReadRequest],
            H2c | Grpc => h2_request(),
        };
        script.push(Step::Reset);
        let alone = Expect::Synthetic(Reason::UpstreamReset);
        alone_and_beside_healthy(protocol, script, alone).await;
    }
}

#[tokio::test]
async fn reset_mid_body() {
    for protocol in ALL {
        cut_mid_body(protocol, vec![Step::Reset], Reason::UpstreamReset).await;
    }
}

#[tokio::test]
async fn garbage_instead_of_http() {
    let garbage: [&'static [u8]; 2] = [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        // Bytes of no protocol at all.
        &[
            0x9c, 0x01, 0xff, 0x00, 0x37, 0xe2, 0x10, 0x44, 0x00, 0x00, 0xab, 0x5d, 0x0f,
        ],
    ];
    for protocol in ALL {
        for bytes in garbage {
            // No SETTINGS: an HTTP/2 client reads the garbage where they should be.
            let script = vec![Step::ReadRequest, Step::Write(Bytes::from_static(bytes))];
            let upstream = Misbehaving::start(script).await.unwrap();
            let answer = protocol
                .ask(&proxy(protocol, &[upstream.addr()], "").await)
                .await;
            check(
                protocol,
                &answer,
                Expect::Synthetic(Reason::UpstreamInvalid),
                None,
            );
        }
    }
}

#[tokio::test]
async fn bad_http1_framing() {
    let head = "HTTP/1.1 200 OK\r\n";
    // (the head, what follows once the client has it, the answer)
    let cases: [(&str, Option<&str>, Expect); 4] = [
        // A chunk size that is no number.
        (
            "transfer-encoding: chunked\r\n\r\n",
            Some("zz\r\nhello\r\n0\r\n\r\n"),
            Expect::CutOff,
        ),
        // A body shorter than its content-length, then the connection closed.
        ("content-length: 100\r\n\r\n", Some("short"), Expect::CutOff),
        // Two lengths that disagree: the head is invalid.
        (
            "content-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            None,
            Expect::Synthetic(Reason::UpstreamInvalid),
        ),
        // A body longer than its content-length: the length is believed, the rest dropped.
        (
            "content-length: 7\r\n\r\nhealthy, and then some",
            None,
            Expect::Healthy,
        ),
    ];
    for (rest_of_head, body, expect) in cases {
        let mut script = vec![
            Step::ReadRequest,
            Step::Write(format!("{head}{rest_of_head}").into()),
        ];
        if let Some(body) = body {
            script.extend([Step::Await, Step::Write(body.into())]);
        }
        let upstream = Misbehaving::start(script).await.unwrap();
        let proxy = proxy(Http1, &[upstream.addr()], "").await;
        // Twice: what the first left on the connection must not become the second's answer.
        for _ in 0..2 {
            let answer = Http1.ask_then(&proxy, Some(&upstream)).await;
            check(Http1, &answer, expect, None);
        }
    }
}

#[tokio::test]
async fn malformed_http2_frame() {
    for protocol in HTTP2 {
        // Before the response: no answer came, the upstream's HTTP/2 is invalid.
        let mut script = h2_request();
        script.push(Step::BadFrame);
        let upstream = Misbehaving::start(script).await.unwrap();
        let answer = protocol
            .ask(&proxy(protocol, &[upstream.addr()], "").await)
            .await;
        check(
            protocol,
            &answer,
            Expect::Synthetic(Reason::UpstreamInvalid),
            None,
        );

        // In the middle of the body.
        cut_mid_body(protocol, vec![Step::BadFrame], Reason::UpstreamInvalid).await;
    }
}

#[tokio::test]
async fn a_5xx_storm() {
    for protocol in ALL {
        // Every answer a 503 (gRPC: UNAVAILABLE); the breaker opens after five failures.
        let upstream = Answering::unavailable(protocol).await;
        let proxy = proxy(protocol, &[upstream.addr()], "").await;
        let own = match protocol {
            Http1 | H2c => Expect::Upstream(503),
            Grpc => Expect::Upstream(Code::Unavailable as u16),
        };
        // Three attempts each (the first request and its two retries, ...): the upstream's own
        // answer until the fifth failure opens the breaker, which answers from then on.
        for _ in 0..2 {
            check(protocol, &protocol.ask(&proxy).await, own, None);
        }
        for _ in 0..10 {
            let answer = protocol.ask(&proxy).await;
            check(
                protocol,
                &answer,
                Expect::Synthetic(Reason::BreakerOpen),
                None,
            );
        }
        assert_eq!(upstream.seen(), 5, "{protocol:?}");
    }

    // With a fallback for both, the client gets the fallback throughout.
    for protocol in [Http1, H2c] {
        let upstream = Upstream::start(Behavior::Fail(StatusCode::SERVICE_UNAVAILABLE))
            .await
            .unwrap();
        let fallback = "[routes.fallback]\non = [\"5xx\", \"breaker-open\"]\nbody = \"degraded\"";
        let proxy = proxy(protocol, &[upstream.addr()], fallback).await;
        for i in 0..8 {
            let why = if i < 2 { "5xx" } else { "breaker-open" };
            let answer = protocol.ask(&proxy).await;
            let wanted = Answer::Http {
                status: 200,
                error: None,
                fallback: Some(why.to_owned()),
                body: Bytes::from_static(b"degraded"),
            };
            assert_eq!(answer, wanted, "{protocol:?}, request {i}");
        }
    }
}

#[tokio::test]
async fn a_body_dripping_past_the_route_timeout() {
    for protocol in ALL {
        // One byte a second, thirty in all.
        let drip = match protocol {
            Grpc => {
                let mut message = vec![0, 0, 0, 0, 25];
                message.extend([0x0a, 23]);
                message.extend(b"x".repeat(23));
                message
            }
            Http1 | H2c => b"x".repeat(30),
        };
        let mut script = head(protocol, drip.len());
        script.push(Step::Drip {
            bytes: drip.into(),
            every: Duration::from_secs(1),
        });
        let upstream = Misbehaving::start(script).await.unwrap();
        let answer = protocol
            .ask(&proxy(protocol, &[upstream.addr()], "").await)
            .await;
        let expect = match protocol {
            Http1 | H2c => Expect::CutOff,
            Grpc => Expect::Synthetic(Reason::Timeout),
        };
        check(protocol, &answer, expect, None);
    }
}

#[tokio::test]
async fn an_endpoint_host_name_that_does_not_resolve() {
    // `.invalid` never resolves (RFC 6761). The configuration takes host names; the proxy
    // resolves them when it connects, so the failure is a connect failure.
    for protocol in ALL {
        let answer = protocol.ask(&unresolvable(protocol, None).await).await;
        check(
            protocol,
            &answer,
            Expect::Synthetic(Reason::UpstreamConnect),
            None,
        );

        let healthy = Answering::healthy(protocol).await;
        let proxy = unresolvable(protocol, Some(healthy.addr())).await;
        for _ in 0..2 {
            let answer = protocol.ask(&proxy).await;
            check(protocol, &answer, Expect::Healthy, Some(healthy.addr()));
        }
    }
}

/// A proxy for `protocol` to `nothing.invalid:80`, then `healthy` if given.
async fn unresolvable(protocol: Protocol, healthy: Option<SocketAddr>) -> Proxy {
    let endpoints = match healthy {
        Some(healthy) => format!("\"nothing.invalid:80\", \"{healthy}\""),
        None => "\"nothing.invalid:80\"".to_owned(),
    };
    common::proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"app\"\ntimeout = \"{}ms\"\n\n\
         [upstreams.app]\nendpoints = [{endpoints}]\nprotocol = \"{}\"\n\
         balance = \"round-robin\"\n",
        TIMEOUT.as_millis(),
        protocol.config()
    ))
    .await
}

#[tokio::test]
async fn goaway_before_answering() {
    for protocol in HTTP2 {
        // The request's stream is not among those processed: safe to send again.
        let mut script = h2_request();
        script.push(Step::GoAway {
            processed: false,
            code: H2Code::NO_ERROR,
        });
        let alone = Expect::Synthetic(Reason::UpstreamReset);
        alone_and_beside_healthy(protocol, script, alone).await;
    }
}

#[tokio::test]
async fn a_graceful_goaway_costs_no_attempt() {
    // The upstream closes its first connection without error before taking the request, as
    // nginx does after `keepalive_requests` or a server about to restart, then answers on the
    // next connection. The request was not processed: it goes again at once, on a new
    // connection, as the same attempt. A route that retries nothing still gets the answer.
    let mut closing = h2_request();
    closing.push(Step::GoAway {
        processed: false,
        code: H2Code::NO_ERROR,
    });
    let mut answering = head(H2c, 7);
    answering.push(Step::Data {
        data: Bytes::from_static(b"healthy"),
        end_stream: true,
    });
    let upstream = Misbehaving::start_each(vec![closing, answering])
        .await
        .unwrap();
    let proxy = proxy(H2c, &[upstream.addr()], "[routes.retry]\nattempts = 1").await;
    let answer = H2c.ask(&proxy).await;
    check(H2c, &answer, Expect::Healthy, None);
    assert_eq!(upstream.connections(), 2);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn goaway_while_answering() {
    for protocol in HTTP2 {
        let goaway = Step::GoAway {
            processed: true,
            code: H2Code::INTERNAL_ERROR,
        };
        cut_mid_body(protocol, vec![goaway], Reason::UpstreamReset).await;
    }
}

#[tokio::test]
async fn rst_stream_before_answering() {
    for protocol in HTTP2 {
        for code in [H2Code::REFUSED_STREAM, H2Code::INTERNAL_ERROR] {
            let mut script = h2_request();
            script.push(Step::RstStream(code));
            let alone = Expect::Synthetic(Reason::UpstreamReset);
            alone_and_beside_healthy(protocol, script, alone).await;
        }
    }
}

#[tokio::test]
async fn rst_stream_mid_body() {
    for protocol in HTTP2 {
        // The connection stays open: only the stream is reset.
        let reset = vec![Step::RstStream(H2Code::INTERNAL_ERROR), Step::Hang];
        cut_mid_body(protocol, reset, Reason::UpstreamReset).await;
    }
}

#[tokio::test]
async fn only_unprocessed_streams_count_as_refused() {
    // Retried on `refused-stream` alone: a stream refused, or left out by a GOAWAY, is retried;
    // one reset after the upstream took it is not.
    let cases = [
        (Step::RstStream(H2Code::REFUSED_STREAM), true),
        (
            Step::GoAway {
                processed: false,
                code: H2Code::NO_ERROR,
            },
            true,
        ),
        (Step::RstStream(H2Code::INTERNAL_ERROR), false),
    ];
    for protocol in HTTP2 {
        for (fault, refused) in cases.clone() {
            let mut script = h2_request();
            script.push(fault.clone());
            let faulty = Misbehaving::start(script).await.unwrap();
            let healthy = Answering::healthy(protocol).await;
            let retry = "[routes.retry]\non = [\"refused-stream\"]";
            let proxy = proxy(protocol, &[faulty.addr(), healthy.addr()], retry).await;
            // Taken in turn: one of the two goes to the faulty endpoint first.
            let mut resets = 0;
            for _ in 0..2 {
                let answer = protocol.ask(&proxy).await;
                let expect = if answer.error() == Some("upstream-reset") {
                    resets += 1;
                    Expect::Synthetic(Reason::UpstreamReset)
                } else {
                    Expect::Healthy
                };
                check(protocol, &answer, expect, Some(healthy.addr()));
            }
            let expected = if refused { 0 } else { 1 };
            assert_eq!(resets, expected, "{protocol:?}: {fault:?}");
            assert_eq!(faulty.request_count(), 1, "{protocol:?}: {fault:?}");
        }
    }
}

#[tokio::test]
async fn grpc_trailers_over_the_header_list_bound_end_the_call_as_an_invalid_reply() {
    // A whole reply (an empty message), then trailers larger than the 64 KiB a header list may
    // be, the status after the large field: the HTTP/2 layer passes on the fields before the
    // bound and drops the rest, here all of them.
    let mut script = head(Grpc, 5);
    script.push(Step::Data {
        data: Bytes::from_static(&[0, 0, 0, 0, 0]),
        end_stream: false,
    });
    script.push(Step::Headers {
        fields: vec![
            ("x-big".to_owned(), "x".repeat(70_000)),
            ("grpc-status".to_owned(), "0".to_owned()),
        ],
        end_stream: true,
    });
    let upstream = Misbehaving::start(script).await.unwrap();
    let answer = Grpc.ask(&proxy(Grpc, &[upstream.addr()], "").await).await;
    check(
        Grpc,
        &answer,
        Expect::Synthetic(Reason::UpstreamInvalid),
        None,
    );
}
