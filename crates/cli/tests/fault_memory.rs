//! `rampart run`'s memory stays bounded under upstream faults: every fault of the fault matrix
//! (docs/security.md), over HTTP/1.1, h2c and gRPC, driven round after round, and the process's
//! resident memory read from /proc after each round. A leak per failed exchange (a connection, a
//! stream, a timer or a buffer kept) grows with the rounds; a bounded proxy levels off after the
//! first.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart_test_support::{
    Behavior, EchoClient, EchoRequest, GrpcBehavior, GrpcUpstream, H2Code, Misbehaving, Refusing,
    Step, Upstream,
};
use tokio::sync::Semaphore;
use tonic::Code;

use common::*;

/// Requests per fault and protocol in one round.
const PER_CELL: usize = 8;
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// No answer may take longer: the routes time out after 500 ms.
const WITHIN: Duration = Duration::from_secs(10);
/// The resident memory rampart may have after the load (a debug build, two worker threads;
/// measured at about 25 MiB): far above what it needs, far below what a leak of every failed
/// exchange would reach.
const MAX_RSS: u64 = 64 << 20;
/// What a second round equal to the first may add.
const MAX_GROWTH: u64 = 10 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
    Grpc,
}

impl Protocol {
    fn config(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "http2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The faults: a name and the upstream's script for each protocol (`None`: not applicable).
fn faults() -> Vec<(&'static str, [Option<Vec<Step>>; 3])> {
    let h2 = |more: Vec<Step>| {
        let mut script = vec![Step::Settings, Step::ReadRequest];
        script.extend(more);
        script
    };
    let h1_head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    let headers = |grpc: bool| Step::Headers {
        fields: if grpc {
            vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/grpc".into()),
            ]
        } else {
            vec![(":status".into(), "200".into())]
        },
        end_stream: false,
    };
    let data = || Step::Data {
        data: Bytes::from_static(&[0, 0, 0, 0, 16, 0x0a]),
        end_stream: false,
    };
    let drip = |bytes: &'static [u8]| Step::Drip {
        bytes: Bytes::from_static(bytes),
        every: Duration::from_millis(200),
    };
    let per_protocol =
        |h1: Vec<Step>, h2c: Vec<Step>, grpc: Vec<Step>| [Some(h1), Some(h2c), Some(grpc)];
    vec![
        (
            "reset-before-answer",
            per_protocol(
                vec![Step::ReadRequest, Step::Reset],
                h2(vec![Step::Reset]),
                h2(vec![Step::Reset]),
            ),
        ),
        (
            "reset-mid-body",
            per_protocol(
                vec![Step::ReadRequest, Step::Write(h1_head.into()), Step::Reset],
                h2(vec![headers(false), data(), Step::Reset]),
                h2(vec![headers(true), data(), Step::Reset]),
            ),
        ),
        (
            "hang-after-headers",
            per_protocol(
                vec![Step::ReadRequest, Step::Write(h1_head.into()), Step::Hang],
                h2(vec![headers(false), Step::Hang]),
                h2(vec![headers(true), Step::Hang]),
            ),
        ),
        (
            "garbage",
            per_protocol(
                vec![
                    Step::ReadRequest,
                    Step::Write("SSH-2.0-OpenSSH_9.6\r\n".into()),
                ],
                vec![
                    Step::ReadRequest,
                    Step::Write("SSH-2.0-OpenSSH_9.6\r\n".into()),
                ],
                vec![
                    Step::ReadRequest,
                    Step::Write("SSH-2.0-OpenSSH_9.6\r\n".into()),
                ],
            ),
        ),
        (
            "bad-framing",
            per_protocol(
                vec![
                    Step::ReadRequest,
                    Step::Write(
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n"
                            .into(),
                    ),
                ],
                h2(vec![headers(false), Step::BadFrame]),
                h2(vec![headers(true), Step::BadFrame]),
            ),
        ),
        (
            "drip",
            per_protocol(
                vec![
                    Step::ReadRequest,
                    Step::Write(h1_head.into()),
                    drip(b"xxxxxxxxxx"),
                ],
                h2(vec![headers(false), drip(b"xxxxxxxxxx")]),
                h2(vec![headers(true), drip(&[0, 0, 0, 0, 16, 0x0a, 14, b'x'])]),
            ),
        ),
        (
            "goaway",
            [
                None,
                Some(h2(vec![Step::GoAway {
                    processed: false,
                    code: H2Code::NO_ERROR,
                }])),
                Some(h2(vec![
                    headers(true),
                    data(),
                    Step::GoAway {
                        processed: true,
                        code: H2Code::INTERNAL_ERROR,
                    },
                ])),
            ],
        ),
        (
            "rst-stream",
            [
                None,
                Some(h2(vec![Step::RstStream(H2Code::REFUSED_STREAM)])),
                Some(h2(vec![
                    headers(true),
                    data(),
                    Step::RstStream(H2Code::INTERNAL_ERROR),
                ])),
            ],
        ),
    ]
}

/// One route per fault and protocol, matched by the `x-fault` header, and the upstreams serving
/// them; besides, `refused`, `unresolvable` and `5xx-storm`.
struct Setup {
    config: String,
    cells: Vec<(String, Protocol)>,
    _misbehaving: Vec<Misbehaving>,
    _refusing: Refusing,
    _storm: (Upstream, GrpcUpstream),
}

async fn setup() -> Setup {
    let mut config = String::from(
        "[runtime]\nworker_threads = 2\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
         max_connections = 1000\n",
    );
    let mut cells = Vec::new();
    let mut misbehaving = Vec::new();
    let mut route = |config: &mut String, name: &str, protocol: Protocol, endpoint: String| {
        let cell = format!("{name}-{}", protocol.config());
        config.push_str(&format!(
            "\n[[routes]]\nname = \"{cell}\"\nmatch = {{ headers = {{ \"x-fault\" = \"{cell}\" }} }}\n\
             upstream = \"{cell}\"\ntimeout = \"500ms\"\n\
             [upstreams.{cell}]\nendpoints = [{endpoint}]\nprotocol = \"{}\"\n",
            protocol.config()
        ));
        cells.push((cell, protocol));
    };
    let protocols = [Protocol::Http1, Protocol::H2c, Protocol::Grpc];
    for (name, scripts) in faults() {
        for (protocol, script) in protocols.into_iter().zip(scripts) {
            let Some(script) = script else { continue };
            let upstream = Misbehaving::start(script).await.unwrap();
            route(
                &mut config,
                name,
                protocol,
                format!("\"{}\"", upstream.addr()),
            );
            misbehaving.push(upstream);
        }
    }
    let refusing = Refusing::bind().unwrap();
    let closed = refusing.addr();
    let storm = (
        Upstream::start(Behavior::Fail(http::StatusCode::SERVICE_UNAVAILABLE))
            .await
            .unwrap(),
        GrpcUpstream::start(GrpcBehavior::Fail(Code::Unavailable))
            .await
            .unwrap(),
    );
    for protocol in protocols {
        route(&mut config, "refused", protocol, format!("\"{closed}\""));
        route(
            &mut config,
            "unresolvable",
            protocol,
            "\"nothing.invalid:80\"".to_owned(),
        );
        let storm = match protocol {
            Protocol::Grpc => storm.1.addr(),
            Protocol::Http1 | Protocol::H2c => storm.0.addr(),
        };
        route(&mut config, "5xx-storm", protocol, format!("\"{storm}\""));
    }
    Setup {
        config,
        cells,
        _misbehaving: misbehaving,
        _refusing: refusing,
        _storm: storm,
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One request of `cell`; panics if no answer of any kind comes within [`WITHIN`].
async fn ask(
    proxy: SocketAddr,
    cell: &str,
    protocol: Protocol,
    clients: &(HttpClient, HttpClient),
) {
    let exchange = async {
        let client = match protocol {
            Protocol::Http1 => &clients.0,
            Protocol::H2c => &clients.1,
            Protocol::Grpc => {
                let mut client = EchoClient::connect_untimed(proxy);
                let mut request = tonic::Request::new(EchoRequest {
                    message: "memory".into(),
                });
                request
                    .metadata_mut()
                    .insert("x-fault", cell.parse().unwrap());
                let _ = client.call(request).await;
                return;
            }
        };
        let request = http::Request::get(format!("http://{proxy}/"))
            .header("x-fault", cell)
            .body(Full::default())
            .unwrap();
        if let Ok(response) = client.request(request).await {
            let _ = response.into_body().collect().await;
        }
    };
    tokio::time::timeout(WITHIN, exchange)
        .await
        .unwrap_or_else(|_| panic!("{cell}: no answer within {WITHIN:?}"));
}

/// One round: [`PER_CELL`] requests of every cell, [`CONCURRENCY`] at a time.
async fn round(proxy: SocketAddr, cells: &[(String, Protocol)]) {
    let clients = Arc::new((
        Client::builder(TokioExecutor::new()).build_http(),
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
    ));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for _ in 0..PER_CELL {
        for (cell, protocol) in cells {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (cell, protocol, clients) = (cell.clone(), *protocol, clients.clone());
            tasks.push(tokio::spawn(async move {
                ask(proxy, &cell, protocol, &clients).await;
                drop(permit);
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_every_upstream_fault() {
    // The listener takes a port of the kernel's choice, read back from the log: a port picked
    // free beforehand could be taken by one of the upstreams `setup` binds meanwhile.
    let setup = setup().await;
    let config = TempConfig::new("fault-memory", &setup.config);
    let mut rampart = Rampart::run(&[], &config.0);
    let listen: SocketAddr = rampart.listening().parse().unwrap();
    let pid = rampart.pid();

    // The first round warms the pools, the allocator's arenas and the lazily made state.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        round(listen, &setup.cells).await;
        rounds.push(rss(pid));
    }
    let requests = 3 * PER_CELL * setup.cells.len();
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "{requests} requests over {} cells; VmRSS after each round: {:.1} / {:.1} / {:.1} MiB",
        setup.cells.len(),
        mib(rounds[0]),
        mib(rounds[1]),
        mib(rounds[2]),
    );
    let last = rounds[2];
    assert!(
        last < MAX_RSS,
        "rampart holds {:.1} MiB after the load",
        mib(last)
    );
    let growth = last.saturating_sub(rounds[1]);
    assert!(
        growth < MAX_GROWTH,
        "a round equal to the one before added {:.1} MiB",
        mib(growth)
    );
}
