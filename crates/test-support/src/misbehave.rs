//! An upstream that misbehaves on purpose, byte by byte: a script of raw writes, pauses, HTTP/2
//! frames and closes, run on plain TCP, so a test can send what no HTTP library would.
//!
//! [`Misbehaving`] runs the same [`Step`]s on every connection it accepts, then closes it. A
//! script usually starts with [`Step::ReadRequest`], which reads one request whatever its
//! protocol: HTTP/1.1 up to the end of its head, HTTP/2 (told apart by the connection preface)
//! frame by frame up to the end of the request's stream, acknowledging the client's SETTINGS on
//! the way. The HTTP/2 steps ([`Step::Headers`], [`Step::Data`], [`Step::RstStream`],
//! [`Step::GoAway`]) answer on that request's stream; header fields are HPACK-encoded as plain
//! literals, which every decoder must accept.
//!
//! | what the upstream does | script |
//! |---|---|
//! | answers garbage | `ReadRequest`, `Write(b"SSH-2.0-...")` |
//! | HTTP/1.1 with a bad chunk size | `ReadRequest`, `Write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")` |
//! | resets in the middle of the body | `ReadRequest`, `Write(head)`, `Write(part)`, `Await`, `Reset` |
//! | HTTP/2 headers, then nothing | `Settings`, `ReadRequest`, `Headers { .. }`, `Hang` |
//! | HTTP/2 stream refused | `Settings`, `ReadRequest`, `RstStream(H2Code::REFUSED_STREAM)` |
//! | HTTP/2 GOAWAY before answering | `Settings`, `ReadRequest`, `GoAway { processed: false, .. }` |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use rampart_test_support::{Misbehaving, Step};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let upstream = Misbehaving::start(vec![
//!     Step::ReadRequest,
//!     Step::Write("not HTTP at all\r\n".into()),
//! ])
//! .await?;
//! let mut tcp = tokio::net::TcpStream::connect(upstream.addr()).await?;
//! tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await?;
//! let mut answer = String::new();
//! tcp.read_to_string(&mut answer).await?;
//! assert_eq!(answer, "not HTTP at all\r\n");
//! upstream.wait_for_requests(1).await;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The HTTP/2 connection preface a client starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// The largest frame payload a peer must always accept (`SETTINGS_MAX_FRAME_SIZE`'s default).
const MAX_FRAME: usize = 16 << 10;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HTTP/2 error code (RFC 9113 §7), for [`Step::RstStream`] and [`Step::GoAway`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Code(pub u32);

impl H2Code {
    /// `NO_ERROR`: a graceful shutdown.
    pub const NO_ERROR: H2Code = H2Code(0x0);
    /// `PROTOCOL_ERROR`.
    pub const PROTOCOL_ERROR: H2Code = H2Code(0x1);
    /// `INTERNAL_ERROR`.
    pub const INTERNAL_ERROR: H2Code = H2Code(0x2);
    /// `REFUSED_STREAM`: the stream was not processed, and may be sent again.
    pub const REFUSED_STREAM: H2Code = H2Code(0x7);
    /// `CANCEL`.
    pub const CANCEL: H2Code = H2Code(0x8);
}

/// One step of a [`Misbehaving`] upstream's script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reads one request: HTTP/1.1 up to the end of its head, plus a `content-length` body;
    /// HTTP/2 (the connection preface says so) frame by frame up to the end of its stream,
    /// acknowledging each SETTINGS of the client. Counts it in
    /// [`request_count`](Misbehaving::request_count). A connection closed first ends the script.
    ReadRequest,
    /// Writes these bytes as they are.
    Write(Bytes),
    /// Writes these bytes one at a time, waiting `every` before each one; on an HTTP/2
    /// connection, each in a DATA frame of its own on the request's stream.
    Drip {
        /// What to write.
        bytes: Bytes,
        /// The pause before each byte.
        every: Duration,
    },
    /// Waits this long.
    Pause(Duration),
    /// Waits until the test calls [`Misbehaving::proceed`]: a fault that must come after the
    /// client has seen what was sent before (a response head) waits for the test to say so.
    Await,
    /// HTTP/2: a SETTINGS frame keeping every default, as a server starts its connection.
    Settings,
    /// HTTP/2: a HEADERS frame on the request's stream (`:status` among the fields).
    Headers {
        /// The fields, lower-case names, in order.
        fields: Vec<(String, String)>,
        /// Whether the frame ends the stream (a trailers-only answer, or trailers).
        end_stream: bool,
    },
    /// HTTP/2: a DATA frame on the request's stream.
    Data {
        /// The payload.
        data: Bytes,
        /// Whether the frame ends the stream.
        end_stream: bool,
    },
    /// HTTP/2: RST_STREAM on the request's stream.
    RstStream(H2Code),
    /// HTTP/2: GOAWAY naming as the last stream processed the request's stream (`processed`)
    /// or none (stream 0: the request was not processed and may be sent again).
    GoAway {
        /// Whether the request's stream counts as processed.
        processed: bool,
        /// The error code.
        code: H2Code,
    },
    /// HTTP/2: a malformed frame, a PING seven bytes long (a PING has eight): a connection
    /// error (`FRAME_SIZE_ERROR`) for any peer.
    BadFrame,
    /// Reads and drops whatever comes, never writing nor closing, until the upstream is
    /// dropped.
    Hang,
    /// Closes the connection with a TCP reset (`SO_LINGER` 0) instead of a FIN.
    Reset,
}

/// A TCP server on 127.0.0.1 that runs a script of [`Step`]s on each connection, then closes it
/// (with a FIN, unless the script reset it or hangs).
///
/// Dropping it closes its port and every connection.
///
/// Must be started inside a tokio runtime with the IO and time drivers enabled.
#[derive(Debug)]
pub struct Misbehaving {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    /// The script of each connection in turn, the last one's for every connection after.
    scripts: Vec<Vec<Step>>,
    connections: AtomicU64,
    requests: AtomicU64,
    arrived: Notify,
    /// One permit per [`Misbehaving::proceed`], taken by a [`Step::Await`].
    proceed: Semaphore,
}

// === impl Misbehaving ===

impl Misbehaving {
    /// Serves `script` on 127.0.0.1 on a free port.
    pub async fn start(script: Vec<Step>) -> io::Result<Misbehaving> {
        Misbehaving::start_each(vec![script]).await
    }

    /// Serves `scripts[n]` on its `n`th connection (from 0), the last script on every
    /// connection after: an upstream that misbehaves on its first connection only, as a server
    /// closing a connection after so many requests (nginx's `keepalive_requests`) does.
    ///
    /// # Panics
    ///
    /// When `scripts` is empty.
    pub async fn start_each(scripts: Vec<Vec<Step>>) -> io::Result<Misbehaving> {
        assert!(!scripts.is_empty(), "a script for the connections at least");
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            scripts,
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            arrived: Notify::new(),
            proceed: Semaphore::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Misbehaving {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address to send requests to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Requests read whole so far by [`Step::ReadRequest`].
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Acquire)
    }

    /// Lets one connection waiting at a [`Step::Await`] (or the next one to reach one) go on.
    pub fn proceed(&self) {
        self.shared.proceed.add_permits(1);
    }

    /// Waits until at least `n` requests were read.
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

impl Drop for Misbehaving {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let n = shared.connections.fetch_add(1, Ordering::AcqRel);
                    connections.spawn(run(stream, shared.clone(), n));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

// === Refusing ===

/// A port on 127.0.0.1 that refuses connections while this lives: a socket bound to it that
/// never listens, so the kernel answers every connection with a reset, and no other socket (a
/// server started later in the test) can take the port, as one freed after a bind could be.
#[derive(Debug)]
pub struct Refusing {
    addr: SocketAddr,
    _socket: TcpSocket,
}

impl Refusing {
    /// Binds a free port. Must be called inside a tokio runtime.
    pub fn bind() -> io::Result<Refusing> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))?;
        Ok(Refusing {
            addr: socket.local_addr()?,
            _socket: socket,
        })
    }

    /// Binds `addr`, the port of an upstream just stopped, so that no connection takes it as its
    /// own port while the upstream is down (a port of the ephemeral range left free can become
    /// the local port of any connection made meanwhile) and it is there to start the upstream
    /// on again. The stopped upstream's sockets close as its tasks end, so the bind is tried
    /// again for up to a second.
    pub async fn bind_to(addr: SocketAddr) -> io::Result<Refusing> {
        let mut tries = 0;
        loop {
            let socket = TcpSocket::new_v4()?;
            // The stopped server's connections lingering in TIME_WAIT do not hold the port.
            socket.set_reuseaddr(true)?;
            match socket.bind(addr) {
                Ok(()) => {
                    return Ok(Refusing {
                        addr: socket.local_addr()?,
                        _socket: socket,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The address that refuses connections.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

// === running a script ===

/// One connection's state: what was read of it and the request's HTTP/2 stream, if any.
struct Connection {
    tcp: TcpStream,
    read: BytesMut,
    /// The stream of the request read, on an HTTP/2 connection.
    stream: Option<u32>,
}

async fn run(tcp: TcpStream, shared: Arc<Shared>, n: u64) {
    let last = shared.scripts.len() - 1;
    let script = &shared.scripts[usize::try_from(n).unwrap_or(last).min(last)];
    let mut conn = Connection {
        tcp,
        read: BytesMut::new(),
        stream: None,
    };
    for step in script {
        let done = match step {
            Step::ReadRequest => match conn.read_request().await {
                Ok(()) => {
                    shared.requests.fetch_add(1, Ordering::AcqRel);
                    shared.arrived.notify_waiters();
                    Ok(())
                }
                Err(err) => Err(err),
            },
            Step::Write(bytes) => conn.write(bytes).await,
            Step::Drip { bytes, every } => conn.drip(bytes, *every).await,
            Step::Pause(pause) => {
                tokio::time::sleep(*pause).await;
                Ok(())
            }
            Step::Await => match shared.proceed.acquire().await {
                Ok(permit) => {
                    permit.forget();
                    Ok(())
                }
                Err(_) => return,
            },
            Step::Settings => conn.write(&frame(SETTINGS, 0, 0, &[])).await,
            Step::Headers { fields, end_stream } => {
                // A block larger than a frame may be (16 KiB, the default and the least) goes
                // on in CONTINUATION frames, the last one ending it.
                let block = hpack(fields);
                let mut pieces = block.chunks(MAX_FRAME).peekable();
                let mut kind = HEADERS;
                let mut flags = if *end_stream { END_STREAM } else { 0 };
                let mut frames = BytesMut::new();
                while let Some(piece) = pieces.next() {
                    if pieces.peek().is_none() {
                        flags |= END_HEADERS;
                    }
                    frames.put(frame(kind, flags, conn.stream(), piece));
                    (kind, flags) = (CONTINUATION, 0);
                }
                if block.is_empty() {
                    frames.put(frame(HEADERS, flags | END_HEADERS, conn.stream(), &[]));
                }
                conn.write(&frames).await
            }
            Step::Data { data, end_stream } => {
                let flags = if *end_stream { END_STREAM } else { 0 };
                conn.write(&frame(DATA, flags, conn.stream(), data)).await
            }
            Step::RstStream(code) => {
                let payload = code.0.to_be_bytes();
                conn.write(&frame(RST_STREAM, 0, conn.stream(), &payload))
                    .await
            }
            Step::GoAway { processed, code } => {
                let last = if *processed { conn.stream() } else { 0 };
                let mut payload = last.to_be_bytes().to_vec();
                payload.extend_from_slice(&code.0.to_be_bytes());
                conn.write(&frame(GOAWAY, 0, 0, &payload)).await
            }
            Step::BadFrame => conn.write(&frame(PING, 0, 0, &[0; 7])).await,
            Step::Hang => {
                let mut buf = [0; 4096];
                while matches!(conn.tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                // The peer closed; still never close.
                std::future::pending().await
            }
            Step::Reset => {
                let _ = conn.tcp.set_zero_linger();
                return;
            }
        };
        if done.is_err() {
            return;
        }
    }
    let _ = conn.tcp.shutdown().await;
}

impl Connection {
    /// The request's stream; stream 1 when no HTTP/2 request was read.
    fn stream(&self) -> u32 {
        self.stream.unwrap_or(1)
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tcp.write_all(bytes).await?;
        self.tcp.flush().await
    }

    async fn drip(&mut self, bytes: &[u8], every: Duration) -> io::Result<()> {
        for byte in bytes {
            tokio::time::sleep(every).await;
            match self.stream {
                Some(stream) => self.write(&frame(DATA, 0, stream, &[*byte])).await?,
                None => self.write(&[*byte]).await?,
            }
        }
        Ok(())
    }

    /// Reads more into the buffer; an error at the end of the stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.tcp.read_buf(&mut self.read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn read_request(&mut self) -> io::Result<()> {
        while self.read.len() < PREFACE.len() && PREFACE.starts_with(&self.read) {
            self.fill().await?;
        }
        if self.read.starts_with(PREFACE) || self.stream.is_some() {
            self.read_h2_request().await
        } else {
            self.read_h1_request().await
        }
    }

    async fn read_h1_request(&mut self) -> io::Result<()> {
        let head_end = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.read[..head_end]).to_ascii_lowercase();
        let body = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|len| len.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while self.read.len() < head_end + body {
            self.fill().await?;
        }
        let _ = self.read.split_to(head_end + body);
        Ok(())
    }

    async fn read_h2_request(&mut self) -> io::Result<()> {
        if self.read.starts_with(PREFACE) {
            let _ = self.read.split_to(PREFACE.len());
        }
        loop {
            while self.read.len() < 9 {
                self.fill().await?;
            }
            let len = usize::from(self.read[0]) << 16
                | usize::from(self.read[1]) << 8
                | usize::from(self.read[2]);
            while self.read.len() < 9 + len {
                self.fill().await?;
            }
            let (kind, flags) = (self.read[3], self.read[4]);
            let id = u32::from_be_bytes([self.read[5], self.read[6], self.read[7], self.read[8]])
                & 0x7fff_ffff;
            let _ = self.read.split_to(9 + len);
            match kind {
                SETTINGS if flags & ACK == 0 => self.write(&frame(SETTINGS, ACK, 0, &[])).await?,
                HEADERS if self.stream.is_none_or(|stream| stream < id) => {
                    self.stream = Some(id);
                    if flags & END_STREAM != 0 {
                        return Ok(());
                    }
                }
                DATA if Some(id) == self.stream && flags & END_STREAM != 0 => return Ok(()),
                _ => {}
            }
        }
    }
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & 0x7fff_ffff);
    out.put_slice(payload);
    out.freeze()
}

/// A header block of literal fields without indexing, new names, no Huffman coding
/// (RFC 7541 §6.2.2): the plainest encoding, which needs no table on either side.
fn hpack(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for text in [name.as_bytes(), value.as_bytes()] {
            integer(&mut out, text.len(), 7);
            out.extend_from_slice(text);
        }
    }
    out
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1), the flag bits above it zero.
fn integer(out: &mut Vec<u8>, mut value: usize, prefix: u32) {
    let max = (1 << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // An h2c GET to `upstream` on a connection of its own: the response head, or hyper's error.
    async fn h2_get(
        upstream: &Misbehaving,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        let tcp = TcpStream::connect(upstream.addr()).await.unwrap();
        let (mut client, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let request = http::Request::get(format!("http://{}/", upstream.addr()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        client.send_request(request).await
    }

    #[tokio::test]
    async fn an_http2_script_answers_on_the_requests_stream() {
        let upstream = Misbehaving::start(vec![
            Step::Settings,
            Step::ReadRequest,
            Step::Headers {
                fields: vec![(":status".into(), "202".into()), ("x-a".into(), "b".into())],
                end_stream: false,
            },
            Step::Data {
                data: Bytes::from_static(b"body"),
                end_stream: true,
            },
        ])
        .await
        .unwrap();
        let response = h2_get(&upstream).await.unwrap();
        assert_eq!(response.status(), 202);
        assert_eq!(response.headers()["x-a"], "b");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"body");
        assert_eq!(upstream.request_count(), 1);
    }

    #[tokio::test]
    async fn http2_streams_are_refused_and_left_out_as_scripted() {
        let refusing = Misbehaving::start(vec![
            Step::Settings,
            Step::ReadRequest,
            Step::RstStream(H2Code::REFUSED_STREAM),
            Step::Hang,
        ])
        .await
        .unwrap();
        // hyper's error shows h2's, which names what came.
        let err = format!("{:?}", h2_get(&refusing).await.unwrap_err());
        assert!(
            err.contains("Reset(StreamId(1), REFUSED_STREAM, Remote)"),
            "{err}"
        );

        let going_away = Misbehaving::start(vec![
            Step::Settings,
            Step::ReadRequest,
            Step::GoAway {
                processed: false,
                code: H2Code::NO_ERROR,
            },
            Step::Hang,
        ])
        .await
        .unwrap();
        let err = format!("{:?}", h2_get(&going_away).await.unwrap_err());
        assert!(err.contains("GoAway(b\"\", NO_ERROR, Remote)"), "{err}");
    }

    #[test]
    fn hpack_integers_follow_the_rfc_examples() {
        // RFC 7541 C.1.1 and C.1.2.
        let mut out = Vec::new();
        integer(&mut out, 10, 5);
        assert_eq!(out, [10]);
        let mut out = Vec::new();
        integer(&mut out, 1337, 5);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn frames_have_the_nine_byte_header() {
        let goaway = frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&goaway[..9], &[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(
            hpack(&[(":status".into(), "200".into())])[..3],
            [0, 7, b':']
        );
    }
}
