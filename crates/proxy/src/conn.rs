//! One accepted connection served by hyper: HTTP/1.1 or HTTP/2 (h2c prior knowledge), picked
//! from the client's first bytes, which are looked at without being read.
//!
//! hyper-util's `auto` server does the same by reading the first bytes and replaying them: hyper
//! then finds those bytes in front of its read buffer, and on its next read grows the buffer to
//! twice its size, for every HTTP/1.1 connection and for as long as it lives. Peeking leaves the
//! socket as it was, so hyper's first read takes the whole head into its first buffer; and a
//! connection that has sent nothing yet costs no hyper state at all.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use rampart_config::{Listener, ListenerProtocol};
use rampart_policy::error::BoxError;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::coalesce::{Coalesce, EndOfTurn, coalesce};
use crate::frames::{Conduct, FrameWatch};
use crate::head_timeout::HeadTimer;
use crate::stall::StallIo;
use crate::strict::{Quiet, StrictIo};
use crate::turn::{self, TurnExecutor, TurnTimer};

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper refuses a read buffer below this size.
const MIN_BUF_SIZE: usize = 8192;

/// The most header lines hyper parses in a request head unless told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// HTTP/2 streams a client may reset before they were taken up, on one connection (hyper's
/// default, set here so that it is kept).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// HTTP/2 streams rampart may reset for a client's protocol errors, on one connection (hyper's
/// default, likewise).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The most response data an HTTP/2 stream holds for a client that is slow to take it (hyper's
/// default is about 400 KiB). A client that opens its streams with the largest windows and then
/// reads nothing leaves every stream's buffer full until `body_idle_timeout`: with the upstream's
/// reads bounded too (`h1::MAX_READ`), 20 such clients of 4 streams each
/// and 20 HTTP/1.1 ones took rampart to 51 MiB instead of 158 (`tests/abuse.rs`). A fast client
/// loses little: 4 MiB answers over h2c, 16 streams, 1.5 to 1.8 GiB/s instead of 1.9.
const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// What an HTTP/2 client may send on one stream ahead of what rampart has passed on upstream.
/// A request body waits in rampart while its upstream does not read it, and a client's streams
/// share the connection's window: with hyper's defaults (1 MiB each, the stream's and the
/// connection's) one upload to an endpoint that stopped reading took the whole window, and every
/// other request body on the connection (a gRPC channel's every call) stalled until
/// `body_idle_timeout`, though its endpoint was healthy.
const CLIENT_STREAM_WINDOW: u32 = 256 << 10;

/// What an HTTP/2 client may send on one connection ahead of what rampart has passed on: room
/// for 16 uploads held by endpoints that stopped reading before the others are held up, as
/// Envoy's advice for edge proxies has it (64 KiB a stream, 1 MiB the connection). It bounds
/// what one connection's bodies hold in rampart too: 4 MiB.
const CLIENT_CONNECTION_WINDOW: u32 = 16 * CLIENT_STREAM_WINDOW;

/// The first pause before looking again at a connection whose first bytes are the start of the
/// preface, and the longest: a client sending its first bytes one at a time is rare, and must not
/// cost a wake-up every millisecond.
const SNIFF_PAUSE: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(500));

/// A client connection below hyper: strict heads, cut when it takes nothing written to it.
type Stream = StrictIo<StallIo<TcpStream>>;

type Io = TokioIo<Stream>;

/// An HTTP/2 client connection: its writes gathered, sent at the end of each turn of its task,
/// its frames watched.
type Http2Io = TokioIo<FrameWatch<Coalesce<Stream>>>;

/// The connection settings of a listener, for each protocol it speaks.
pub(crate) struct Builders {
    protocol: ListenerProtocol,
    http1: http1::Builder,
    http2: http2::Builder<TurnExecutor>,
    header_read_timeout: Duration,
    // How long a write to the client may wait without the client taking a byte.
    stall_timeout: Duration,
}

impl Builders {
    pub(crate) fn new(listener: &Listener) -> Builders {
        let max_header_bytes = usize::try_from(listener.max_header_bytes.0).unwrap_or(usize::MAX);
        let mut http1 = http1::Builder::new();
        http1
            // Each connection gets its timer, which the header read timeout runs on
            // (`HeadTimer`).
            .header_read_timeout(listener.header_read_timeout)
            // One buffer per write, sent with send(2), rather than the head and body as separate
            // slices through writev(2), which takes the longer way through the kernel's file
            // layer: about 0.8 µs less kernel time a request (1 KiB answers), the copy into one
            // buffer costing nothing measurable even for 4 MiB answers.
            .writev(false)
            // The head must fit in the read buffer: a larger one is answered 431.
            .max_buf_size(max_header_bytes.max(MIN_BUF_SIZE));
        // hyper parses up to its default of 100 header lines into room on the stack, left
        // uninitialized; any count set explicitly, even 100, is room filled in for every request
        // (about 1,700 instructions each). Either way more lines get 431.
        if listener.max_headers as usize != HYPER_MAX_HEADERS {
            http1.max_headers(listener.max_headers as usize);
        }
        let mut http2 = http2::Builder::new(TurnExecutor);
        http2
            .timer(TurnTimer::default())
            .max_concurrent_streams(listener.h2_max_concurrent_streams)
            .max_send_buf_size(H2_MAX_SEND_BUF)
            .initial_stream_window_size(CLIENT_STREAM_WINDOW)
            .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
            // HTTP/2 rapid reset (CVE-2023-44487): a stream the client resets before it was taken
            // up still waits in hyper's accept queue. Past this many on a connection, GOAWAY
            // ENHANCE_YOUR_CALM; without a bound the queue grows as fast as the client writes.
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            // Likewise for the streams rampart must reset for the client's errors.
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Builders {
            protocol: listener.protocol,
            http1,
            http2,
            header_read_timeout: listener.header_read_timeout,
            stall_timeout: listener.body_idle_timeout,
        }
    }

    /// Serves `stream` with `service` in the protocol the listener and the client's first bytes
    /// say. `None` when the client closes, fails or sends nothing within the header read
    /// timeout before that is known.
    ///
    /// Connections are boxed wherever they are made or taken apart, in functions that do not
    /// wait: a connection held or moved by value in its task's future would take room in the
    /// task for its whole life (about 1.7 KiB), connection waiting or not.
    pub(crate) async fn serve<S, B>(
        &self,
        stream: TcpStream,
        service: S,
        conduct: &Arc<Conduct>,
    ) -> Option<Pin<Box<Connection<S>>>>
    where
        S: HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let http2 = match self.protocol {
            ListenerProtocol::Http1 => false,
            ListenerProtocol::Http2 => true,
            ListenerProtocol::Auto => {
                tokio::time::timeout(self.header_read_timeout, speaks_http2(&stream))
                    .await
                    .ok()?
                    .ok()??
            }
        };
        // A client that takes nothing written to it is cut off, whatever waits on the write.
        let io = StrictIo::new(StallIo::new(stream, self.stall_timeout));
        Some(self.connection(io, service, http2.then(|| conduct.clone())))
    }

    /// Serves a parked connection again, from its next request on.
    pub(crate) fn resume<S, B>(&self, parked: Parked<S>) -> Pin<Box<Connection<S>>>
    where
        S: HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.connection(parked.io, parked.service, None)
    }

    // An HTTP/2 connection when given its client's conduct to watch, else HTTP/1.1.
    fn connection<S, B>(
        &self,
        io: Stream,
        service: S,
        conduct: Option<Arc<Conduct>>,
    ) -> Pin<Box<Connection<S>>>
    where
        S: HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(conduct) = conduct {
            let (io, end_of_turn) = coalesce(io);
            let io = FrameWatch::new(io, conduct, self.header_read_timeout);
            let inner = self.http2.serve_connection(TokioIo::new(io), service);
            return Box::pin(Connection::Http2 { inner, end_of_turn });
        }
        let quiet = io.quiet().clone();
        // The header read timeout of a later request counts from its first byte, which only
        // this connection's reads see.
        let mut http1 = self.http1.clone();
        http1.timer(HeadTimer::new(quiet.clone()));
        let inner = http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        Box::pin(Connection::Http1 { inner, quiet })
    }
}

/// An HTTP/1.1 connection waiting for its next request outside hyper: its socket and its
/// service, without hyper's state (a read and a write buffer of 8 KiB each, its dispatcher).
pub(crate) struct Parked<S> {
    io: Stream,
    service: S,
}

impl<S> Parked<S> {
    /// Resolves once the client has sent something (or closed), or at once when bytes read
    /// before are waiting.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        if self.io.has_replay() {
            return Ok(());
        }
        self.io.get_ref().get_ref().readable().await
    }
}

/// Whether the client opens with the HTTP/2 preface: `None` if it closed first. Waits for as many
/// bytes as it takes to tell, without reading them.
async fn speaks_http2(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut first = [0; PREFACE.len()];
    let mut pause = SNIFF_PAUSE.0;
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        if first[..n] != PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == PREFACE.len() {
            return Ok(Some(true));
        }
        // The start of the preface, and no more yet: peeking again at once would see the same
        // bytes, so wait a little, longer each time. A client that closed after them is let go:
        // a peek would go on seeing them, never the end, and hold its place among
        // `max_connections` until the header read timeout.
        if stream.ready(Interest::READABLE).await?.is_read_closed() {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SNIFF_PAUSE.1);
    }
}

pin_project_lite::pin_project! {
    /// hyper's connection, in the protocol the client speaks.
    #[project = ConnectionProj]
    pub(crate) enum Connection<S>
    where
        S: HttpService<Incoming>,
    {
        Http1 { #[pin] inner: http1::UpgradeableConnection<Io, S>, quiet: Arc<Quiet> },
        Http2 {
            #[pin]
            inner: http2::Connection<Http2Io, S, TurnExecutor>,
            end_of_turn: EndOfTurn<Stream>,
        },
    }
}

impl<S, B> Connection<S>
where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Finishes the requests in flight and closes: HTTP/1.1 after the current exchange, HTTP/2
    /// with GOAWAY.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ConnectionProj::Http1 { inner, .. } => inner.graceful_shutdown(),
            ConnectionProj::Http2 { inner, .. } => inner.graceful_shutdown(),
        }
    }

    /// Whether hyper holds nothing of a message: an HTTP/1.1 connection every byte of which read
    /// so far belonged to whole requests, with nothing left to write. With no request in flight
    /// either, hyper is waiting for the next request's first byte, and the connection may be
    /// parked.
    pub(crate) fn is_quiet(&self) -> bool {
        match self {
            Connection::Http1 { quiet, .. } => quiet.is_quiet(),
            Connection::Http2 { .. } => false,
        }
    }

    /// Takes a quiet HTTP/1.1 connection (see [`Connection::is_quiet`]) out of hyper, which it
    /// leaves without a word on the wire. `None` for an HTTP/2 one, or one upgraded.
    pub(crate) fn park(connection: Pin<Box<Self>>) -> Option<Parked<S>> {
        let Connection::Http1 { inner, .. } = *Pin::into_inner(connection) else {
            return None;
        };
        let http1::Parts {
            io,
            read_buf,
            service,
            ..
        } = inner.into_parts()?;
        let mut io = io.into_inner();
        // Only empty lines can be left here (hyper parses a whole head as soon as it has one),
        // and they may be dropped: a server ignores them before a request (RFC 9112, section
        // 2.2). Anything else goes back to hyper, copied, as `read_buf` holds on to hyper's
        // whole buffer.
        if read_buf.iter().any(|&byte| byte != b'\r' && byte != b'\n') {
            io.replay(Bytes::copy_from_slice(&read_buf));
        }
        Some(Parked { io, service })
    }
}

impl<S, B> Future for Connection<S>
where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnectionProj::Http1 { inner, .. } => turn::run(|| inner.poll(cx)),
            ConnectionProj::Http2 { inner, end_of_turn } => {
                let polled = turn::run(|| inner.poll(cx));
                end_of_turn.send(cx);
                polled
            }
        }
    }
}
