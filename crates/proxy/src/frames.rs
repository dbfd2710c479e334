//! What an HTTP/2 client's frames say of it, read as they pass on their way to hyper: floods
//! of PING and SETTINGS frames, and a header block left open.
//!
//! hyper's HTTP/2 layer answers every PING and SETTINGS frame, and one client sending hundreds
//! of thousands a second while reading the answers costs rampart a core's share without ever
//! being told to stop; it bounds no header block by time either, so a client that opens one
//! (HEADERS without END_HEADERS) and sends nothing more held its connection until the idle
//! timeout twice over, where HTTP/1.1's slowloris is cut at `header_read_timeout`. [`FrameWatch`]
//! reads the frame headers of what the client sends (it changes no byte) and:
//! - counts PING and SETTINGS frames that are not acknowledgements, less a few for each reason
//!   rampart had to hear from the client (a request began, an answer's data went out); past
//!   [`CONTROL_FLOOD`] the connection's task is told ([`Conduct::misbehaved`]), which sends
//!   GOAWAY and closes, as gRPC servers do to a client that pings without cause;
//! - fails the connection's reads once a header block has been open for `header_read_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// PING and SETTINGS frames a client may send without cause: far more than keep-alive pings
/// between two requests (an idle connection is closed after `idle_timeout` anyway), and the
/// pings gRPC clients send to size their windows come while answers flow, each one a cause.
pub(crate) const CONTROL_FLOOD: u32 = 1_000;

/// PING and SETTINGS frames each cause (a request begun, a piece of an answer taken) allows: a
/// cause wipes no count clean, or one cheap request (a CONNECT answered 405) would buy a flood's
/// worth of frames, again and again.
const ALLOWED_A_CAUSE: u32 = 8;

/// The client connection preface, which comes before the first frame.
const PREFACE_LEN: usize = 24;

const HEADER_LEN: usize = 9;

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// How a client has behaved, shared by its connection's reads, its requests and the task that
/// serves it.
#[derive(Debug, Default)]
pub(crate) struct Conduct {
    /// PING and SETTINGS frames since the client last gave cause for one.
    uncalled: AtomicU32,
    /// Told when the client has gone past a bound: too many requests reset early, a flood.
    misbehaved: Notify,
    /// Past a bound: nothing more the client sends is read, so that the GOAWAY goes out without
    /// a backlog of its frames answered first.
    deaf: AtomicBool,
}

impl Conduct {
    /// The client gave rampart something to do: a few of its control frames are its due.
    #[inline]
    pub(crate) fn called(&self) {
        // A read first: the line stays shared while nothing needs a write.
        let uncalled = self.uncalled.load(Ordering::Relaxed);
        if uncalled != 0 {
            self.uncalled
                .store(uncalled.saturating_sub(ALLOWED_A_CAUSE), Ordering::Relaxed);
        }
    }

    /// Tells the connection's task that the client went past a bound; `deaf`, that nothing more
    /// it sends is to be read (a flood), else its requests in flight may finish.
    pub(crate) fn misbehave(&self, deaf: bool) {
        if deaf {
            self.deaf.store(true, Ordering::Relaxed);
        }
        self.misbehaved.notify_one();
    }

    /// Whether the connection reads nothing more of its client.
    pub(crate) fn is_deaf(&self) -> bool {
        self.deaf.load(Ordering::Relaxed)
    }

    /// Resolves once the client has gone past a bound.
    pub(crate) async fn misbehaved(&self) {
        self.misbehaved.notified().await;
    }

    fn control_frame(&self) {
        if self.uncalled.fetch_add(1, Ordering::Relaxed) + 1 == CONTROL_FLOOD {
            self.misbehave(true);
        }
    }
}

/// A client connection's reads, their frames watched ([module documentation](self)).
pub(crate) struct FrameWatch<T> {
    io: T,
    conduct: Arc<Conduct>,
    scan: Scan,
    header_read_timeout: Duration,
    /// The end of time of the request head under way, kept (and reset) from one head to the
    /// next: made at the first.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// A head is under way, and `head_timer` set for it.
    timing: bool,
}

/// Where the reads are in the client's stream of frames.
#[derive(Debug)]
struct Scan {
    /// Bytes to pass over before the next frame header: the preface, then each payload.
    skip: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    /// Inside a header block: from its HEADERS frame's first byte until the payload of the frame
    /// that ends it (END_HEADERS) is whole, as h2 reads only whole frames.
    block_open: bool,
    /// The payload being passed over ends the header block.
    ends_block: bool,
}

impl<T> FrameWatch<T> {
    pub(crate) fn new(io: T, conduct: Arc<Conduct>, header_read_timeout: Duration) -> Self {
        FrameWatch {
            io,
            conduct,
            scan: Scan::new(),
            header_read_timeout,
            head_timer: None,
            timing: false,
        }
    }
}

impl Scan {
    fn new() -> Scan {
        Scan {
            skip: PREFACE_LEN,
            header: [0; HEADER_LEN],
            have: 0,
            block_open: false,
            ends_block: false,
        }
    }

    /// Whether a request head is on its way: a header block, or a frame header begun (whose
    /// frame may open one), so that a client trickling either is timed as an HTTP/1.1 head is.
    fn head_under_way(&self) -> bool {
        self.block_open || self.have > 0
    }

    /// Reads the frame headers in `bytes`, the next bytes of the stream, calling `frame` with
    /// the type and flags of each.
    fn read(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                self.payload_passed();
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let [a, b, c, kind, flags, ..] = self.header;
                self.skip = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if kind == HEADERS {
                    self.block_open = true;
                }
                self.ends_block =
                    matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0;
                self.payload_passed();
                frame(kind, flags);
            }
        }
    }

    // A frame whose payload is whole (or empty) and ends the header block closes it.
    fn payload_passed(&mut self) {
        if self.skip == 0 && self.ends_block {
            self.ends_block = false;
            self.block_open = false;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conduct.is_deaf() {
            // The connection's task closes the connection once its GOAWAY is out.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                // Nothing came: a request head under way is timed.
                if let (true, Some(timer)) = (this.timing, &mut this.head_timer) {
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a request head did not arrive whole within header_read_timeout",
                    )));
                }
                return Poll::Pending;
            }
            ready => return ready,
        }
        let conduct = &this.conduct;
        let under_way = this.scan.head_under_way();
        this.scan.read(&buf.filled()[before..], |kind, flags| {
            if matches!(kind, PING | SETTINGS) && flags & ACK == 0 {
                conduct.control_frame();
            }
        });
        this.timing = this.scan.head_under_way();
        if this.timing && !under_way {
            let end = Instant::now() + this.header_read_timeout;
            match &mut this.head_timer {
                Some(timer) => timer.as_mut().reset(end),
                None => this.head_timer = Some(Box::pin(tokio::time::sleep_until(end))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let len = u32::try_from(payload).unwrap().to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        bytes.resize(HEADER_LEN + payload, 0);
        bytes
    }

    #[test]
    fn frames_are_read_whatever_the_reads_cut_them_into() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for (kind, flags, payload) in [(SETTINGS, 0, 12), (PING, 0, 8), (PING, ACK, 8)] {
            stream.extend(frame(kind, flags, payload));
        }
        stream.extend(frame(HEADERS, 0, 300));
        stream.extend(frame(CONTINUATION, END_HEADERS, 20));
        let expected = [
            (SETTINGS, 0),
            (PING, 0),
            (PING, ACK),
            (HEADERS, 0),
            (CONTINUATION, END_HEADERS),
        ];
        for cut in [1, 2, 5, 9, 10, 24, 100, stream.len()] {
            let mut scan = Scan::new();
            let mut seen = Vec::new();
            for piece in stream.chunks(cut) {
                scan.read(piece, |kind, flags| seen.push((kind, flags)));
            }
            assert_eq!(seen, expected, "reads of {cut} bytes");
        }
    }

    #[test]
    fn a_header_block_is_under_way_until_the_payload_that_ends_it_is_whole() {
        let mut scan = Scan::new();
        scan.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", |_, _| {});
        assert!(!scan.head_under_way());
        // A frame header begun: perhaps a head's.
        let settings = frame(SETTINGS, 0, 0);
        scan.read(&settings[..4], |_, _| {});
        assert!(scan.head_under_way());
        scan.read(&settings[4..], |_, _| {});
        assert!(!scan.head_under_way());
        // HEADERS with END_HEADERS, its payload trickling in: under way until it is whole.
        let headers = frame(HEADERS, END_HEADERS, 100);
        scan.read(&headers[..HEADER_LEN + 99], |_, _| {});
        assert!(scan.head_under_way());
        scan.read(&headers[HEADER_LEN + 99..], |_, _| {});
        assert!(!scan.head_under_way());
        // HEADERS without END_HEADERS: under way until a CONTINUATION ends it, whole.
        scan.read(&frame(HEADERS, 0, 10), |_, _| {});
        assert!(scan.head_under_way());
        scan.read(&frame(PING, 0, 8), |_, _| {});
        assert!(scan.head_under_way());
        let last = frame(CONTINUATION, END_HEADERS, 0);
        scan.read(&last, |_, _| {});
        assert!(!scan.head_under_way());
    }

    #[test]
    fn the_bound_is_told_when_reached_and_a_cause_allows_a_few_frames_more() {
        let conduct = Conduct::default();
        for _ in 0..CONTROL_FLOOD - 1 {
            conduct.control_frame();
        }
        // A cause allows a few frames more, not a flood's worth: one cheap request between
        // floods of 900 PINGs buys no second flood.
        conduct.called();
        for _ in 0..ALLOWED_A_CAUSE {
            conduct.control_frame();
        }
        assert!(conduct.misbehaved.notified().now_or_never().is_none());
        conduct.control_frame();
        let told = conduct.misbehaved.notified();
        assert!(told.now_or_never().is_some(), "the flood is told");
    }

    #[test]
    fn causes_as_they_come_keep_a_clients_pings_their_due() {
        // A gRPC client pings to size its window as answers flow: a ping or two a piece.
        let conduct = Conduct::default();
        for _ in 0..10 * CONTROL_FLOOD {
            conduct.control_frame();
            conduct.control_frame();
            conduct.called();
        }
        assert!(conduct.misbehaved.notified().now_or_never().is_none());
    }

    trait NowOrNever: std::future::Future + Sized {
        fn now_or_never(self) -> Option<Self::Output> {
            let mut future = std::pin::pin!(self);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            }
        }
    }

    impl<F: std::future::Future> NowOrNever for F {}
}
