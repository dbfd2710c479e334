//! Abusive clients against a real `rampart run`, with well-behaved clients beside them.
//!
//! Each test is one attack (a row of the "Client abuse" table in docs/security.md). While it
//! runs, well-behaved clients (keep-alive HTTP/1.1, and h2c when the attack is HTTP/2) send small
//! GETs, and rampart's resident memory is sampled. Each row asserts that the attack got its
//! refusal, that rampart still serves, that every well-behaved request succeeded, and that the
//! peak RSS stayed under [`RSS_BOUND_MIB`]. The well-behaved clients' latencies are printed, one
//! line per attack (`cargo test -p rampart --test abuse -- --nocapture`), never asserted.
//!
//! The rows run one at a time, each against a rampart of its own, so that one attack's figures
//! are not another's.

mod common;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_test_support::{Behavior, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use common::{Rampart, TempConfig};

/// How long each attack runs.
const ATTACK: Duration = Duration::from_secs(3);
/// The most resident memory rampart may use during any attack, in MiB: the largest, clients that
/// never read, took about 50 (and 160 while an upstream's reads and an HTTP/2 stream's send
/// buffer were left at hyper's sizes).
const RSS_BOUND_MIB: u64 = 128;
/// Well-behaved clients per protocol, each sending one GET at a time.
const CLIENTS: usize = 4;
/// The pause between two GETs of one well-behaved client.
const PACE: Duration = Duration::from_millis(5);
/// The longest wait for one well-behaved answer before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Far beyond any timeout rampart is configured with here: only a connection it never closes
/// runs into it.
const PATIENCE: Duration = Duration::from_secs(20);
/// The size of the `big` upstream's answers.
const BIG: usize = 8 << 20;

/// One row at a time: cargo runs the tests of a file on several threads.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The configuration every row runs: the defaults, with the timeouts short enough for their
/// refusals to be seen within a row, and `max_request_body` small enough to outgrow quickly.
fn config(small: SocketAddr, big: SocketAddr) -> String {
    format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        header_read_timeout = "2s"
        idle_timeout = "3s"
        body_idle_timeout = "2s"
        max_request_body = "1MiB"

        [[routes]]
        name = "big"
        match = {{ path_prefix = "/big" }}
        upstream = "big"
        timeout = "2s"

        [[routes]]
        name = "small"
        upstream = "small"

        [upstreams.small]
        endpoints = ["{small}"]

        [upstreams.big]
        endpoints = ["{big}"]
        "#
    )
}

// === slowloris ===

/// Slowloris connections open at once.
const SLOWLORIS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_read_timeout() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("slowloris").await;
    let watch = site.watch(false);

    // Each attacker opens a connection again as soon as rampart closed its last one.
    let until = Instant::now() + ATTACK;
    let mut attackers = JoinSet::new();
    for _ in 0..SLOWLORIS {
        let addr = site.addr;
        attackers.spawn(async move {
            let mut closed = Vec::new();
            while Instant::now() < until {
                closed.push(slowloris(addr).await);
            }
            closed
        });
    }
    let closed: Vec<Option<String>> = attackers.join_all().await.concat();

    site.finish("slowloris", watch).await;
    let still_open = closed.iter().filter(|answer| answer.is_none()).count();
    assert_eq!(
        still_open,
        0,
        "of {} slowloris connections, rampart left {still_open} open",
        closed.len()
    );
    // hyper closes at the header read timeout without a word.
    let answers: HashSet<&str> = closed.iter().flatten().map(|a| status_line(a)).collect();
    assert!(answers.iter().all(|a| a.is_empty()), "{answers:?}");
    site.assert_unseen("/small/attack");
}

/// One slowloris connection: a head that never ends, dripped a byte every 100 ms. What rampart
/// wrote once it closed the connection, or `None` if it was still open after [`PATIENCE`].
async fn slowloris(addr: SocketAddr) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.expect("rampart accepts");
    let (mut read, mut write) = tcp.into_split();
    if write
        .write_all(b"GET /small/attack-slow HTTP/1.1\r\nHost: app\r\nX-Slow: ")
        .await
        .is_err()
    {
        return Some(String::new());
    }
    let mut drip = tokio::time::interval(Duration::from_millis(100));
    let patience = tokio::time::sleep(PATIENCE);
    tokio::pin!(patience);
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    loop {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = drip.tick() => {
                if write.write_all(b"a").await.is_err() {
                    return Some(String::from_utf8_lossy(&got).into_owned());
                }
            }
            () = &mut patience => return None,
        }
    }
}

// === 1 MiB of request headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mebibyte_of_request_headers_gets_431() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("headers").await;
    let watch = site.watch(false);

    let head = "GET /small/attack-headers HTTP/1.1\r\nHost: app\r\n";
    // One header line of 1 MiB, over `max_header_bytes`.
    let one_line = format!("{head}X-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    // 1 MiB in lines of 16 bytes, over `max_headers` long before `max_header_bytes`.
    let many_lines = format!("{head}{}\r\n", "X-Many: 123456\r\n".repeat(1 << 16));
    let answers = repeat(site.addr, &[one_line, many_lines]).await;

    site.finish("1 MiB of request headers", watch).await;
    for (variant, answers) in ["one 1 MiB line", "65,536 lines"].iter().zip(&answers) {
        refused_with(variant, answers, 431);
    }
    site.assert_unseen("/small/attack");
}

// === oversized bodies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_request_body_get_413() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("bodies").await;
    let watch = site.watch(false);

    // A length of 100 MiB announced, 64 KiB sent.
    let announced = format!(
        "POST /small/attack-body HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n{}",
        100 << 20,
        "a".repeat(64 << 10)
    );
    // A chunked body that grows to 2 MiB, twice `max_request_body`, and never ends.
    let chunk = format!("10000\r\n{}\r\n", "a".repeat(64 << 10));
    let growing = format!(
        "POST /small/attack-body HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        chunk.repeat(32)
    );
    let answers = repeat(site.addr, &[announced, growing]).await;

    site.finish("oversized bodies", watch).await;
    for (variant, answers) in ["Content-Length over", "chunked, growing over"]
        .iter()
        .zip(&answers)
    {
        refused_with(variant, answers, 413);
        assert!(
            answers
                .iter()
                .flatten()
                .all(|a| a.contains("body-too-large")),
            "{variant}: {answers:?}"
        );
    }
    site.assert_unseen("/small/attack");
}

// === request smuggling ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_nothing_reaches_the_upstream() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("smuggling").await;
    let watch = site.watch(false);

    let post = "POST /small/attack-smuggle HTTP/1.1\r\nHost: app\r\n";
    let smuggled = "GET /small/smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let attempts = [
        // CL.TE: a front end reading Content-Length passes the smuggled request on as body.
        format!(
            "{post}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // TE.CL: a back end reading Content-Length takes the chunk's data for a request.
        format!(
            "{post}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        // Two Content-Lengths, each side picking another.
        format!(
            "{post}Content-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // A Transfer-Encoding hidden in an obs-fold.
        format!(
            "{post}Content-Length: 0\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\n\r\n{smuggled}"
        ),
        // A Transfer-Encoding with a space before its colon.
        format!("{post}Content-Length: 0\r\nTransfer-Encoding : chunked\r\n\r\n{smuggled}"),
    ];
    let answers = repeat(site.addr, &attempts).await;

    site.finish("request smuggling", watch).await;
    for (attempt, answers) in [
        "CL.TE",
        "TE.CL",
        "two Content-Lengths",
        "obs-fold",
        "TE space",
    ]
    .iter()
    .zip(&answers)
    {
        answered_all(attempt, answers, 400);
    }
    site.assert_unseen("/small/");
}

// === invalid methods and request targets ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_methods_and_targets_get_400() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("invalid").await;
    let watch = site.watch(false);

    let requests = [
        "G\x01T /small/attack HTTP/1.1\r\nHost: app\r\n\r\n",
        "G(T /small/attack HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET /small/at tack HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET /small/\x00attack HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET /small/\x7fattack HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET small/attack HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET  HTTP/1.1\r\nHost: app\r\n\r\n",
        "GET /small/attack HTTP/1.2\r\nHost: app\r\n\r\n",
    ]
    .map(str::to_owned);
    let answers = repeat(site.addr, &requests).await;

    site.finish("invalid methods and targets", watch).await;
    for (request, answers) in requests.iter().zip(&answers) {
        answered_all(request, answers, 400);
    }
    site.assert_unseen("/small/");
}

// === absolute-form targets, Host and CONNECT aimed elsewhere ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_target_host_or_connect_reaches_another_address() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("host").await;
    // Where an open proxy would be sent: a listener of the test's, on the loopback.
    let decoy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = decoy.local_addr().unwrap();
    let reached = Arc::new(AtomicU64::new(0));
    let counting = {
        let reached = reached.clone();
        tokio::spawn(async move {
            while decoy.accept().await.is_ok() {
                reached.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let watch = site.watch(true);

    let requests = [
        format!(
            "GET http://{other}/small/attack HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"
        ),
        format!("GET /small/attack HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET http://{other}/small/attack HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET //{other}/small/attack HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET http://app@{other}/small/attack HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"
        ),
        format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\nConnection: close\r\n\r\n"),
    ];
    let until = Instant::now() + ATTACK;
    let h1 = repeat_until(site.addr, &requests, until);
    let h2 = async {
        let mut answers = vec![Vec::new(); 2];
        while Instant::now() < until {
            answers[0].push(
                h2_status(
                    site.addr,
                    Method::GET,
                    &format!("http://{other}/small/attack"),
                )
                .await,
            );
            answers[1].push(h2_status(site.addr, Method::CONNECT, &other.to_string()).await);
        }
        answers
    };
    let (h1, h2) = tokio::join!(h1, h2);

    site.finish("absolute-URI, Host, CONNECT", watch).await;
    counting.abort();
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the other listener was reached"
    );
    // Credentials in a target are refused (they would reach the upstream in its Host).
    let expected = [200, 200, 200, 200, 400, 405];
    for ((request, answers), status) in requests.iter().zip(&h1).zip(expected) {
        answered_all(request, answers, status);
        if status == 200 {
            assert!(
                answers.iter().flatten().all(|a| a.ends_with("ok")),
                "{answers:?}"
            );
        }
    }
    assert!(
        h2[0].iter().all(|s| *s == Some(200)),
        "h2 :authority: {:?}",
        h2[0]
    );
    assert!(
        h2[1].iter().all(|s| *s == Some(405)),
        "h2 CONNECT: {:?}",
        h2[1]
    );
}

/// The status rampart answers one h2c request with, on a connection of its own.
async fn h2_status(addr: SocketAddr, method: Method, uri: &str) -> Option<u16> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    Some(response.status().as_u16())
}

// === 10,000 idle connections ===

/// Idle connections opened at once.
const IDLE: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_held_then_closed() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("idle").await;
    let watch = site.watch(false);

    let mut opening = JoinSet::new();
    for _ in 0..IDLE {
        let addr = site.addr;
        opening.spawn(async move { TcpStream::connect(addr).await });
    }
    let idle: Vec<TcpStream> = opening
        .join_all()
        .await
        .into_iter()
        .collect::<io::Result<_>>()
        .expect("every idle connection is made");
    let ports: HashSet<u16> = idle
        .iter()
        .map(|tcp| tcp.local_addr().unwrap().port())
        .collect();
    let held = held_by_rampart(site.addr, &ports);
    tokio::time::sleep(ATTACK).await;
    // None sends a byte: each is closed at the header read timeout.
    site.wait_closed("idle", &ports).await;

    site.finish("10,000 idle connections", watch).await;
    // The well-behaved clients hold a place each under `max_connections` (10,000).
    assert!(
        held <= IDLE - CLIENTS,
        "rampart held {held} idle connections"
    );
    drop(idle);
}

// === HTTP/2 rapid reset ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_goaway_enhance_your_calm() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("rapid-reset").await;
    let watch = site.watch(true);

    let until = Instant::now() + ATTACK;
    let mut attackers = JoinSet::new();
    for _ in 0..2 {
        let addr = site.addr;
        attackers.spawn(async move {
            let mut connections = Vec::new();
            while Instant::now() < until {
                connections.push(rapid_reset(addr, until).await);
            }
            connections
        });
    }
    let connections: Vec<(u32, Option<u32>)> = attackers.join_all().await.concat();

    site.finish("HTTP/2 rapid reset", watch).await;
    let streams: u32 = connections.iter().map(|(streams, _)| streams).sum();
    let reached = site.seen("/small/attack");
    eprintln!(
        "abuse: rapid reset: {} connections, {streams} streams opened and reset, {reached} reached the upstream",
        connections.len()
    );
    let calm = connections
        .iter()
        .filter(|(_, goaway)| *goaway == Some(ENHANCE_YOUR_CALM))
        .count();
    assert_eq!(calm, connections.len(), "GOAWAYs: {connections:?}");
}

/// One connection of rapid resets: HEADERS then RST_STREAM, in batches, until rampart ends it
/// (or `until`). The streams opened, and the error code of rampart's GOAWAY, if it sent one.
async fn rapid_reset(addr: SocketAddr, until: Instant) -> (u32, Option<u32>) {
    let tcp = TcpStream::connect(addr).await.expect("rampart accepts");
    let (mut read, mut write) = tcp.into_split();
    let reader = tokio::spawn(async move { goaway(&mut read).await });
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let block = get_block("/small/attack-reset");
    let mut stream = 1;
    // One batch at least: it is over the bound by itself.
    while stream == 1 || (!reader.is_finished() && Instant::now() < until) {
        for _ in 0..100 {
            frame(&mut out, HEADERS, END_STREAM | END_HEADERS, stream, &block);
            frame(&mut out, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
            stream += 2;
        }
        if write.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    drop(write);
    let goaway = match tokio::time::timeout(PATIENCE, reader).await {
        Ok(goaway) => goaway.unwrap(),
        Err(_) => None,
    };
    (stream / 2, goaway)
}

// === HTTP/2 SETTINGS and PING floods ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_and_ping_floods_cost_rampart_nothing_lasting() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("floods").await;
    let watch = site.watch(true);

    let until = Instant::now() + ATTACK;
    let addr = site.addr;
    let floods = [
        tokio::spawn(flood(addr, SETTINGS, &[], true, until)),
        tokio::spawn(flood(addr, SETTINGS, &[], false, until)),
        tokio::spawn(flood(addr, PING, &[7; 8], true, until)),
        tokio::spawn(flood(addr, PING, &[7; 8], false, until)),
    ];
    let mut floods = join_in_order(floods).await;
    // The floods that never read leave rampart writing acknowledgements nobody takes; it must
    // close them all the same.
    let ports: HashSet<u16> = floods.iter().map(|f| f.port).collect();
    site.wait_closed("flooding", &ports).await;

    site.finish("HTTP/2 SETTINGS and PING floods", watch).await;
    for flood in &mut floods {
        eprintln!(
            "abuse: {} flood{}: {} frames sent, {} acknowledged",
            if flood.kind == SETTINGS {
                "SETTINGS"
            } else {
                "PING"
            },
            if flood.reading { "" } else { " (never read)" },
            flood.sent,
            flood.acks
        );
        // A client flooding frames no request called for is told to stop (GOAWAY) after a
        // thousand of them, and what it sent is read no further: acknowledged are those, and
        // those of the read that brought the thousandth (a few hundred more).
        assert!(flood.acks <= 4_000, "{flood:?}");
    }
}

/// One flooding connection.
#[derive(Debug)]
struct Flood {
    kind: u8,
    reading: bool,
    sent: u64,
    acks: u64,
    port: u16,
    // Held open until the flood's results are looked at.
    _tcp: Option<TcpStream>,
}

/// Sends `kind` frames with `payload` until `until` on one connection, reading (and counting)
/// rampart's acknowledgements if `reading`.
async fn flood(
    addr: SocketAddr,
    kind: u8,
    payload: &'static [u8],
    reading: bool,
    until: Instant,
) -> Flood {
    let tcp = TcpStream::connect(addr).await.expect("rampart accepts");
    let port = tcp.local_addr().unwrap().port();
    let (mut read, mut write) = tcp.into_split();
    let acks = Arc::new(AtomicU64::new(0));
    let (reader, unread) = if reading {
        let acks = acks.clone();
        let reader = tokio::spawn(async move {
            while let Ok((got, flags, _, _)) = read_frame(&mut read).await {
                if got == kind && flags & ACK != 0 {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (Some(reader), None)
    } else {
        (None, Some(read))
    };
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let mut sent = 0;
    let mut batch = Vec::new();
    for _ in 0..1000 {
        frame(&mut batch, kind, 0, 0, payload);
    }
    let writing = async {
        if write.write_all(&out).await.is_err() {
            return;
        }
        while write.write_all(&batch).await.is_ok() {
            sent += 1000;
        }
    };
    let _ = tokio::time::timeout_at(until, writing).await;
    if let Some(reader) = reader {
        reader.abort();
    }
    let tcp = unread.map(|read| read.reunite(write).unwrap());
    Flood {
        kind,
        reading,
        sent,
        acks: acks.load(Ordering::Relaxed),
        port,
        _tcp: tcp,
    }
}

// === clients that never read ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_off() {
    let _serial = SERIAL.lock().await;
    let mut site = Site::start("never-read").await;
    let watch = site.watch(true);

    let mut stalled = Vec::new();
    for n in 0..40 {
        let mut tcp = TcpStream::connect(site.addr)
            .await
            .expect("rampart accepts");
        if n % 2 == 0 {
            tcp.write_all(b"GET /big/attack HTTP/1.1\r\nHost: app\r\n\r\n")
                .await
                .unwrap();
        } else {
            // Windows as large as HTTP/2 allows, so that only TCP holds rampart back.
            let mut out = PREFACE.to_vec();
            frame(&mut out, SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
            frame(
                &mut out,
                WINDOW_UPDATE,
                0,
                0,
                &(0x7fff_ffff - 65_535u32).to_be_bytes(),
            );
            for stream in [1, 3, 5, 7] {
                frame(
                    &mut out,
                    HEADERS,
                    END_STREAM | END_HEADERS,
                    stream,
                    &get_block("/big/attack"),
                );
            }
            tcp.write_all(&out).await.unwrap();
        }
        stalled.push(tcp);
    }
    tokio::time::sleep(ATTACK).await;
    let ports: HashSet<u16> = stalled
        .iter()
        .map(|tcp| tcp.local_addr().unwrap().port())
        .collect();
    site.wait_closed("never-reading", &ports).await;

    site.finish("clients that never read", watch).await;
    // Whatever reached them stopped short of the answers' end.
    for mut tcp in stalled {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got)).await;
        assert!(
            got.len() < BIG,
            "a whole answer was sent: {} bytes",
            got.len()
        );
    }
}

// === the site: rampart and its upstreams ===

/// A `rampart run` in front of two upstreams: `small` answers `ok`, `big` 8 MiB.
struct Site {
    rampart: Rampart,
    addr: SocketAddr,
    small: Upstream,
    _big: Upstream,
    _config: TempConfig,
}

/// What is watched while an attack runs: the well-behaved clients and rampart's memory.
struct Watch {
    stop: watch::Sender<bool>,
    clients: JoinSet<Tally>,
    peak_rss: Arc<AtomicU64>,
    sampler: JoinHandle<()>,
}

impl Site {
    async fn start(name: &str) -> Site {
        let small = Upstream::start(Behavior::ok("ok")).await.unwrap();
        let big = Upstream::start(Behavior::ok(vec![b'x'; BIG]))
            .await
            .unwrap();
        let config = TempConfig::new(&format!("abuse-{name}"), &config(small.addr(), big.addr()));
        let mut rampart = Rampart::run(&[], &config.0);
        let addr = rampart.listening().parse().unwrap();
        Site {
            rampart,
            addr,
            small,
            _big: big,
            _config: config,
        }
    }

    /// Starts the well-behaved clients (HTTP/1.1, and h2c too if `h2`) and the RSS sampler.
    fn watch(&self, h2: bool) -> Watch {
        let (stop, stopped) = watch::channel(false);
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            clients.spawn(well_behaved(self.addr, false, stopped.clone()));
            if h2 {
                clients.spawn(well_behaved(self.addr, true, stopped.clone()));
            }
        }
        let peak_rss = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (pid, peak_rss) = (self.rampart.pid(), peak_rss.clone());
            tokio::spawn(async move {
                loop {
                    if let Some(kib) = rss_kib(pid) {
                        peak_rss.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Watch {
            stop,
            clients,
            peak_rss,
            sampler,
        }
    }

    /// Stops the watch, prints the row, and asserts what holds after every attack: rampart
    /// still runs and serves, every well-behaved request succeeded, the RSS stayed bounded.
    async fn finish(&mut self, attack: &str, watch: Watch) {
        let _ = watch.stop.send(true);
        let mut tally = Tally::default();
        for client in watch.clients.join_all().await {
            tally.merge(client);
        }
        watch.sampler.abort();
        let peak_mib = watch.peak_rss.load(Ordering::Relaxed) as f64 / 1024.0;
        tally.latencies.sort();
        let total = tally.ok + tally.failed;
        eprintln!(
            "abuse: {attack:<34} {total:>6} requests  {:>7.3}% ok  p50 {:>9.3?}  p99 {:>9.3?}  peak RSS {peak_mib:.1} MiB",
            100.0 * tally.ok as f64 / total.max(1) as f64,
            quantile(&tally.latencies, 0.5),
            quantile(&tally.latencies, 0.99),
        );

        assert!(self.rampart.is_running(), "rampart died during {attack}");
        let after = common::get(&self.addr.to_string(), "/small/after").await;
        assert!(
            after.starts_with("HTTP/1.1 200") && after.ends_with("ok"),
            "{after}"
        );
        assert!(
            tally.ok > 0,
            "no well-behaved request was made during {attack}"
        );
        assert_eq!(
            tally.failed, 0,
            "well-behaved requests failed during {attack}; the first: {:?}",
            tally.first_failure
        );
        assert!(
            peak_mib < RSS_BOUND_MIB as f64,
            "rampart's RSS reached {peak_mib:.1} MiB during {attack}"
        );
    }

    /// How many requests the `small` upstream received whose path starts with `prefix`.
    fn seen(&self, prefix: &str) -> usize {
        self.small
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with(prefix) && r.path != "/small/ping" && r.path != "/small/after"
            })
            .count()
    }

    /// Asserts that no attack's request reached the `small` upstream whole.
    fn assert_unseen(&self, prefix: &str) {
        assert_eq!(
            self.seen(prefix),
            0,
            "an attack's request reached the upstream"
        );
    }

    /// Waits until rampart has closed each connection from one of `ports`.
    async fn wait_closed(&self, what: &str, ports: &HashSet<u16>) {
        let closed = tokio::time::timeout(PATIENCE, async {
            while held_by_rampart(self.addr, ports) > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "rampart still holds {} of {} {what} connections",
            held_by_rampart(self.addr, ports),
            ports.len()
        );
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How many TCP connections from `ports` to `rampart` rampart has not closed yet, read from
/// the kernel's table: its side of a connection it closed is no longer established, even while
/// its last bytes wait for a peer that does not read.
fn held_by_rampart(rampart: SocketAddr, ports: &HashSet<u16>) -> usize {
    const ESTABLISHED: &str = "01";
    const CLOSE_WAIT: &str = "08";
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    let table = std::fs::read_to_string("/proc/net/tcp").expect("Linux lists TCP sockets");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().take(4).collect();
            fields.len() == 4
                && port(fields[1]) == Some(rampart.port())
                && port(fields[2]).is_some_and(|p| ports.contains(&p))
                && (fields[3] == ESTABLISHED || fields[3] == CLOSE_WAIT)
        })
        .count()
}

// === the well-behaved clients ===

/// What the well-behaved clients saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies: Vec<Duration>,
    first_failure: Option<String>,
}

impl Tally {
    fn record(&mut self, result: Result<Duration, String>) {
        match result {
            Ok(latency) => {
                self.ok += 1;
                self.latencies.push(latency);
            }
            Err(why) => {
                self.failed += 1;
                self.first_failure.get_or_insert(why);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies.extend(other.latencies);
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One well-behaved client: a keep-alive connection (HTTP/1.1, or h2c if `h2`), one small GET
/// every [`PACE`] until `stop`, made again after a failure.
async fn well_behaved(addr: SocketAddr, h2: bool, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut sender = None;
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !*stop.borrow() {
        pace.tick().await;
        let started = Instant::now();
        let exchange = async {
            if sender.is_none() {
                sender = Some(Sender::connect(addr, h2).await?);
            }
            sender.as_mut().unwrap().get().await
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
        if result.is_err() {
            sender = None;
        }
        tally.record(result.map(|()| started.elapsed()));
    }
    tally
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn connect(addr: SocketAddr, h2: bool) -> Result<Sender, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        let handshake = |e: hyper::Error| format!("handshake: {e}");
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(handshake)?;
            tokio::spawn(conn);
            Ok(Sender::Http2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(handshake)?;
            tokio::spawn(conn);
            Ok(Sender::Http1(sender))
        }
    }

    /// One GET, which must be answered 200 `ok`.
    async fn get(&mut self) -> Result<(), String> {
        let failed = |e: hyper::Error| format!("request: {e}");
        let response = match self {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(failed)?;
                let request = Request::get("/small/ping").header(HOST, "app");
                sender
                    .send_request(request.body(Empty::new()).unwrap())
                    .await
                    .map_err(failed)?
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(failed)?;
                let request = Request::get("http://app/small/ping");
                sender
                    .send_request(request.body(Empty::new()).unwrap())
                    .await
                    .map_err(failed)?
            }
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status != 200 || body != "ok" {
            return Err(format!("{status} {body:?}"));
        }
        Ok(())
    }
}

// === raw HTTP/1.1 attacks ===

/// Sends each of `requests`, in turn, on connections of their own, from four attackers at
/// once, for [`ATTACK`]; what rampart answered each, by request.
async fn repeat(addr: SocketAddr, requests: &[String]) -> Vec<Vec<Option<String>>> {
    repeat_until(addr, requests, Instant::now() + ATTACK).await
}

async fn repeat_until(
    addr: SocketAddr,
    requests: &[String],
    until: Instant,
) -> Vec<Vec<Option<String>>> {
    let mut attackers = JoinSet::new();
    for _ in 0..4 {
        let requests = requests.to_vec();
        attackers.spawn(async move {
            let mut answers = vec![Vec::new(); requests.len()];
            while Instant::now() < until {
                for (request, answers) in requests.iter().zip(&mut answers) {
                    answers.push(exchange(addr, request.as_bytes().to_vec()).await);
                }
            }
            answers
        });
    }
    let mut answers = vec![Vec::new(); requests.len()];
    for attacker in attackers.join_all().await {
        for (all, some) in answers.iter_mut().zip(attacker) {
            all.extend(some);
        }
    }
    answers
}

/// Sends `request` on a connection of its own and reads until rampart closes it: what it
/// answered, or `None` if it reset the connection before an answer could be read (it closed
/// with part of the request unread).
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.expect("rampart accepts");
    let (mut read, mut write) = tcp.into_split();
    // Written beside the reading, as rampart may answer and close before it read it all. The
    // write half is kept: dropping it would half-close the connection.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut got = Vec::new();
    let reading = async {
        let mut buf = [0; 8192];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(PATIENCE, reading).await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "rampart left the connection open after {:?}",
        String::from_utf8_lossy(&got)
    );
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

/// Asserts that every answer to `what` was `status` or a reset, and that `status` was seen.
fn refused_with(what: &str, answers: &[Option<String>], status: u16) {
    let expected = format!("HTTP/1.1 {status} ");
    let statuses: HashSet<&str> = answers.iter().flatten().map(|a| status_line(a)).collect();
    assert!(
        answers.iter().flatten().all(|a| a.starts_with(&expected)),
        "{what}: {statuses:?}"
    );
    assert!(
        answers.iter().flatten().count() > 0,
        "{what}: every one of {} connections was reset before an answer",
        answers.len()
    );
}

/// Asserts that every request `what` was answered `status`.
fn answered_all(what: &str, answers: &[Option<String>], status: u16) {
    let expected = format!("HTTP/1.1 {status} ");
    assert!(
        answers
            .iter()
            .all(|a| a.as_deref().is_some_and(|a| a.starts_with(&expected))),
        "{what:?}: {:?}",
        answers
            .iter()
            .map(|a| a.as_deref().map(status_line))
            .collect::<HashSet<_>>()
    );
}

async fn join_in_order<T: Send + 'static>(
    tasks: impl IntoIterator<Item = JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

// === HTTP/2 frames, by hand ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// `GET path` as an HPACK block: method and scheme from the static table, path and authority
/// as literals never added to the dynamic table.
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(0x04, path), (0x01, "app")] {
        block.push(index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// One frame: its type, flags, stream and payload.
async fn read_frame(read: &mut (impl AsyncRead + Unpin)) -> io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0; 9];
    read.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    read.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
async fn goaway(read: &mut (impl AsyncRead + Unpin)) -> Option<u32> {
    loop {
        let (kind, _, _, payload) = read_frame(read).await.ok()?;
        if kind == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}
