//! The fault proxy against a real echo server on 127.0.0.1.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use rampart_test_support::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Long enough that a blocked read is certainly blocked, short enough to keep the suite quick.
/// It is only ever a lower bound: a test waits at least this long and never asserts "at most".
const PATIENCE: Duration = Duration::from_millis(200);

/// A server that echoes every connection back; it counts connections it accepted.
async fn echo_server() -> (SocketAddr, tokio::sync::watch::Receiver<u32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, seen) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, seen)
}

/// A server that writes `body` on every connection and then keeps it open.
async fn talking_server(body: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(body).await.unwrap();
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut got = vec![0; msg.len()];
    stream.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn passes_bytes_both_ways_and_counts_them() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    assert_eq!(round_trip(&mut client, b"hello").await.unwrap(), b"hello");
    assert_eq!(round_trip(&mut client, b"again").await.unwrap(), b"again");

    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.bytes_to_target(), 10);
    assert_eq!(proxy.bytes_to_client(), 10);
}

#[tokio::test]
async fn passes_the_close_on() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();

    assert_eq!(got, b"bye");
}

#[tokio::test]
async fn latency_delays_each_direction() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let delay = Duration::from_millis(100);
    proxy.set_fault(Fault::Latency(delay)).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"slow").await.unwrap(), b"slow");

    // Once on the way there, once on the way back.
    assert!(
        started.elapsed() >= 2 * delay,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn latency_applies_to_open_connections() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut client, b"warm").await.unwrap();

    let delay = Duration::from_millis(100);
    proxy.set_fault(Fault::Latency(delay)).unwrap();
    let started = Instant::now();
    round_trip(&mut client, b"slow").await.unwrap();

    assert!(
        started.elapsed() >= 2 * delay,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reset_resets_new_connections() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    proxy.set_fault(Fault::Reset).unwrap();

    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let err = round_trip(&mut client, b"hi").await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn reset_resets_open_connections() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut client, b"warm").await.unwrap();

    proxy.set_fault(Fault::Reset).unwrap();
    let mut buf = [0; 1];
    let err = client.read(&mut buf).await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn refuse_closes_the_port_and_reopens_it_on_the_same_address() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let addr = proxy.addr();

    proxy.set_fault(Fault::Refuse).unwrap();
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // The port is kept meanwhile, bound: the kernel gives it to no outgoing connection nor
    // listener of port 0, and a socket asking for it without SO_REUSEADDR is refused.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.set_reuseaddr(false).unwrap();
    assert!(other.bind(addr).is_err(), "the port was free to take");
    drop(other);

    proxy.set_fault(Fault::None).unwrap();
    assert_eq!(proxy.addr(), addr);
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut client, b"back").await.unwrap(), b"back");
}

#[tokio::test]
async fn refuse_leaves_open_connections_alone() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    // Until the proxy has accepted it, the connection waits in the port's backlog, and closing
    // the port would reset it.
    round_trip(&mut client, b"warm").await.unwrap();

    proxy.set_fault(Fault::Refuse).unwrap();

    assert_eq!(round_trip(&mut client, b"still").await.unwrap(), b"still");
}

#[tokio::test]
async fn blackhole_never_answers_nor_closes() {
    let (target, target_accepted) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    proxy.set_fault(Fault::Blackhole).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    client.write_all(b"anyone?").await.unwrap();
    let mut buf = [0; 1];
    let read = timeout(PATIENCE, client.read(&mut buf)).await;

    assert!(read.is_err(), "the read ended: {read:?}");
    assert_eq!(*target_accepted.borrow(), 0);
}

#[tokio::test]
async fn blackhole_swallows_open_connections() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut client, b"warm").await.unwrap();

    proxy.set_fault(Fault::Blackhole).unwrap();
    let read = timeout(PATIENCE, round_trip(&mut client, b"lost")).await;

    assert!(read.is_err(), "the round trip ended: {read:?}");
}

#[tokio::test]
async fn reset_after_cuts_the_response_midway() {
    let target = talking_server(b"0123456789abcdefghij").await;
    let proxy = FaultProxy::start(target).await.unwrap();
    proxy.set_fault(Fault::ResetAfter(10)).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    let mut got = Vec::new();
    let mut buf = [0; 64];
    let err = loop {
        match client.read(&mut buf).await {
            Ok(0) => panic!("closed cleanly after {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => break err,
        }
    };

    assert_eq!(got, b"0123456789");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(proxy.bytes_to_client(), 10);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let (target, _) = echo_server().await;
    let proxy = FaultProxy::start(target).await.unwrap();
    let addr = proxy.addr();
    let mut client = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut client, b"warm").await.unwrap();

    drop(proxy);

    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let mut buf = [0; 1];
    let read = timeout(PATIENCE, client.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the connection is still open: {read:?}"
    );
}
