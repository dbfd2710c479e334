//! The one check of RFC 9112 that hyper leaves out: every line of a request head ends in CRLF.
//!
//! hyper (through httparse) takes a bare LF for a line end, as RFC 9112 §2.2 lets a lenient
//! recipient do, and has no setting to refuse it. Every other strict rule (a Content-Length that
//! conflicts or is not a number, obs-fold, an unknown transfer coding, a bare CR) hyper enforces
//! itself, answering 400 and closing the connection; both Content-Length and Transfer-Encoding
//! rampart refuses in `forward.rs`, where the parsed head is at hand.
//!
//! [`StrictIo`] reads the client's bytes ahead of hyper and follows the message framing (heads,
//! Content-Length bodies, chunked bodies and their trailers) to know where each head lies. A bare
//! LF in a head is turned into a NUL byte before hyper sees it, so that hyper's own parser fails
//! on it and answers 400 as for any malformed head. Body bytes are never touched: where the
//! framing is not certain (an upgrade, an HTTP/2 preface), the check stops for the rest of the
//! connection rather than guess. A head with a framing header it cannot read (a value too long
//! to keep, an invalid length, a coding other than chunked last) is refused as one with a bare
//! LF is: hyper refuses most of those itself, but reads a length of eighty zeros and a 3, and
//! the check, not knowing where that body ends, could not follow the requests after it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of a header line is kept to read the framing headers: their names and any sane
/// value fit; a longer line of one of those names stops the check (hyper judges it).
const LINE: usize = 64;

/// What replaces a refused line end and everything after it: a byte no head may hold, then the
/// end of a head.
const SPOILED: &[u8] = b"\0\r\n\r\n";

pin_project_lite::pin_project! {
    /// A client connection whose request heads must use CRLF line ends.
    pub(crate) struct StrictIo<T> {
        #[pin]
        inner: T,
        framing: Framing,
        // Once a head is refused: what is left to hand hyper of the spoiled head.
        spoiled: Option<&'static [u8]>,
        // Bytes read and scanned before, handed out again first (see `replay`).
        replay: Bytes,
        quiet: Arc<Quiet>,
    }
}

/// Whether a connection holds nothing of a message, as its IO sees it: kept by [`StrictIo`] for
/// the connection's task, which cannot reach the IO while hyper holds it.
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    // Bytes of a request are read whose message has not ended, or the framing is not followed.
    reading: AtomicBool,
    // A write waits for the client to take what was written before.
    writing: AtomicBool,
}

impl Quiet {
    /// Every byte read so far belonged to whole requests (or to the empty lines allowed between
    /// them), and the last write went through.
    pub(crate) fn is_quiet(&self) -> bool {
        !self.reading.load(Relaxed) && !self.writing.load(Relaxed)
    }

    /// No byte of a request whose message has not ended has been read: the connection waits
    /// between two requests (or for its first).
    pub(crate) fn between_requests(&self) -> bool {
        !self.reading.load(Relaxed)
    }
}

impl<T> StrictIo<T> {
    pub(crate) fn new(inner: T) -> StrictIo<T> {
        StrictIo {
            inner,
            framing: Framing::new(),
            spoiled: None,
            replay: Bytes::new(),
            quiet: Arc::default(),
        }
    }

    /// What this connection's IO says of its messages.
    pub(crate) fn quiet(&self) -> &Arc<Quiet> {
        &self.quiet
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Hands `bytes`, read from this connection and scanned before, to the next reads again:
    /// what hyper had read and not yet parsed when it let the connection go.
    pub(crate) fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }

    /// Whether bytes are waiting to be read again.
    pub(crate) fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }
}

impl<T: AsyncRead> AsyncRead for StrictIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            // Where these bytes leave the framing is not looked at again: not quiet until the
            // next bytes read say.
            this.quiet.reading.store(true, Relaxed);
            return Poll::Ready(Ok(()));
        }
        if let Some(spoiled) = this.spoiled {
            // What is left of the spoiled head, then the end of the stream.
            let n = spoiled.len().min(buf.remaining());
            buf.put_slice(&spoiled[..n]);
            *spoiled = &spoiled[n..];
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && let Some(at) = this.framing.scan(&buf.filled()[before..])
        {
            // The offending line end and all after it give way to a NUL and the end of a
            // head: hyper then sees a whole head (its quick look for one finds it) that its
            // parser refuses, so it answers 400 and closes.
            buf.set_filled(before + at);
            let n = SPOILED.len().min(buf.remaining());
            buf.put_slice(&SPOILED[..n]);
            *this.spoiled = Some(&SPOILED[n..]);
        }
        let between = this.spoiled.is_none() && this.framing.between_messages();
        this.quiet.reading.store(!between, Relaxed);
        read
    }
}

// `written`, noting in `quiet` whether it waits.
fn noted<R>(quiet: &Quiet, written: Poll<R>) -> Poll<R> {
    quiet.writing.store(written.is_pending(), Relaxed);
    written
}

impl<T: AsyncWrite> AsyncWrite for StrictIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        noted(this.quiet, this.inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        noted(this.quiet, this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where the byte stream of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a head (a request's, or a chunked body's trailers).
    Head,
    /// In a Content-Length body, with this many bytes left.
    Body(u64),
    /// In a chunk-size line.
    ChunkSize,
    /// In a chunk's data, with this many bytes left.
    ChunkData(u64),
    /// In the CRLF after a chunk's data, with this many bytes left.
    ChunkEnd(u8),
    /// The framing is not certain: nothing more is looked at.
    Off,
}

/// The scanner's state: where it is, and what the head read so far says of the body after it.
#[derive(Debug)]
struct Framing {
    state: State,
    prev_cr: bool,
    // The start of the current line, for the framing headers.
    line: [u8; LINE],
    line_len: usize,
    truncated: bool,
    // The current line can say nothing the framing needs (see `may_matter`): it is not kept.
    ignored: bool,
    // Lines of the current head so far; the first is the request line.
    lines: u32,
    // Whether the current head is a chunked body's trailers.
    trailers: bool,
    content_length: Option<u64>,
    chunked: bool,
    has_content_length: bool,
    has_transfer_encoding: bool,
    // The head says something after which the bytes may not be HTTP/1.1 messages.
    opaque: bool,
    // The head has a framing header this check cannot read (a value too long to keep, an
    // invalid length): it is refused at its end.
    unsure: bool,
    // The chunk size read so far.
    chunk: u64,
    in_extension: bool,
}

impl Framing {
    fn new() -> Framing {
        Framing {
            state: State::Head,
            prev_cr: false,
            line: [0; LINE],
            line_len: 0,
            truncated: false,
            ignored: false,
            lines: 0,
            trailers: false,
            content_length: None,
            chunked: false,
            has_content_length: false,
            has_transfer_encoding: false,
            opaque: false,
            unsure: false,
            chunk: 0,
            in_extension: false,
        }
    }

    /// Follows `bytes`; returns where the line end of a head to refuse is, if there is one.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return None,
                State::Body(left) => {
                    let step = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    i += step;
                    let left = left - step as u64;
                    if left == 0 {
                        self.next_message();
                    } else {
                        self.state = State::Body(left);
                    }
                }
                State::ChunkData(left) => {
                    let step = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
                    i += step;
                    let left = left - step as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(left) => {
                    i += 1;
                    self.state = if left == 1 {
                        self.chunk = 0;
                        self.in_extension = false;
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left - 1)
                    };
                }
                State::ChunkSize => {
                    self.chunk_size_byte(bytes[i]);
                    i += 1;
                }
                State::Head => {
                    // A line's text at once, up to its LF: most of a head is text.
                    let rest = &bytes[i..];
                    let text = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                    self.head_text(&rest[..text]);
                    i += text;
                    if i < bytes.len() {
                        if self.line_feed() {
                            self.state = State::Off;
                            return Some(i);
                        }
                        i += 1;
                    }
                }
            }
        }
        None
    }

    fn chunk_size_byte(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                self.state = if self.chunk == 0 {
                    // The last chunk: trailers follow, ended by an empty line.
                    self.start_head(true);
                    State::Head
                } else {
                    State::ChunkData(self.chunk)
                };
            }
            _ if self.in_extension => {}
            b';' | b' ' | b'\t' | b'\r' => self.in_extension = true,
            _ => match (byte as char).to_digit(16) {
                Some(digit) if self.chunk >> 60 == 0 => {
                    self.chunk = self.chunk << 4 | u64::from(digit);
                }
                // Not a size hyper would read: it refuses the body; stop looking.
                _ => self.state = State::Off,
            },
        }
    }

    // Follows `text`, bytes of a head with no LF among them: the last says whether a LF after
    // it is bare, and the start of the line is kept, without its CRs, for the framing headers.
    fn head_text(&mut self, text: &[u8]) {
        let Some(&last) = text.last() else {
            return;
        };
        self.prev_cr = last == b'\r';
        if self.truncated || self.ignored {
            return;
        }
        // Most lines are told apart by their first byte (CRs aside, as they are not kept):
        // those are not copied.
        if self.line_len == 0
            && let Some(&first) = text.iter().find(|&&byte| byte != b'\r')
            && !self.may_matter(first)
        {
            self.ignored = true;
            return;
        }
        // A well-formed line's one CR ends it: then the text is kept as it is.
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !text.contains(&b'\r') {
            let room = LINE - self.line_len;
            let kept = text.len().min(room);
            self.line[self.line_len..][..kept].copy_from_slice(&text[..kept]);
            self.line_len += kept;
            self.truncated = text.len() > room;
            return;
        }
        for &byte in text.iter().filter(|&&byte| byte != b'\r') {
            if self.line_len == LINE {
                self.truncated = true;
                return;
            }
            self.line[self.line_len] = byte;
            self.line_len += 1;
        }
    }

    // Whether a line of the current head starting with `first` may say something the framing
    // needs: the request line of the HTTP/2 preface or of a CONNECT, a header line naming
    // Content-Length, Transfer-Encoding or Upgrade. Trailers never do.
    fn may_matter(&self, first: u8) -> bool {
        match (self.trailers, self.lines) {
            (true, _) => false,
            (false, 0) => matches!(first, b'P' | b'C'),
            (false, _) => matches!(first.to_ascii_lowercase(), b'c' | b't' | b'u'),
        }
    }

    // Whether the LF just read ends a head that must be refused: a bare one does.
    fn line_feed(&mut self) -> bool {
        let prev_cr = std::mem::replace(&mut self.prev_cr, false);
        !prev_cr || self.end_line()
    }

    // Whether the line just ended ends a head that must be refused.
    fn end_line(&mut self) -> bool {
        let empty = self.line_len == 0 && !self.truncated && !self.ignored;
        if empty {
            if self.lines == 0 && !self.trailers {
                // An empty line before a request line is skipped (RFC 9112 §2.2).
                return false;
            }
            // Both Content-Length and Transfer-Encoding: hyper would read the body as chunked
            // and close the connection after it (RFC 9112 §6.3 allows that), but a message two
            // parsers could frame two ways is how requests are smuggled. A framing header that
            // could not be read, or a coding other than chunked last, leaves the end of the
            // body unknown to the check.
            if (self.has_content_length && self.has_transfer_encoding)
                || self.unsure
                || (self.has_transfer_encoding && !self.chunked)
            {
                return true;
            }
            self.end_head();
            return false;
        }
        if self.lines == 0 && !self.trailers {
            let line = &self.line[..self.line_len];
            // The HTTP/2 preface and CONNECT are followed by bytes that are not HTTP/1.1. The
            // preface's line exactly: any other request of method PRI is an HTTP/1.1 request
            // like another, and a client could otherwise turn the check off with one (and
            // smuggle a bare-LF head past a front proxy that reads it one way, to an upstream
            // that rampart would read another).
            if line == b"PRI * HTTP/2.0" || line.starts_with(b"CONNECT ") {
                self.opaque = true;
            }
        } else if !self.trailers && !self.ignored {
            self.header_line();
        }
        self.lines += 1;
        self.line_len = 0;
        self.truncated = false;
        self.ignored = false;
        false
    }

    fn header_line(&mut self) {
        let line = &self.line[..self.line_len];
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => (&line[..colon], Some(&line[colon + 1..])),
            None => (line, None),
        };
        let is = |wanted: &[u8]| {
            if value.is_some() {
                name.eq_ignore_ascii_case(wanted)
            } else {
                // A line cut before its colon: any framing name it may be counts.
                self.truncated
                    && name.len() <= wanted.len()
                    && wanted[..name.len()].eq_ignore_ascii_case(name)
            }
        };
        if value.is_some() {
            self.has_content_length |= name.eq_ignore_ascii_case(b"content-length");
            self.has_transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
        }
        let framing = is(b"content-length") || is(b"transfer-encoding") || is(b"upgrade");
        if !framing {
            return;
        }
        let value = match value {
            Some(value) if !self.truncated => value.trim_ascii(),
            // An upgrade offer ends the check whatever it says.
            _ if is(b"upgrade") => {
                self.opaque = true;
                return;
            }
            _ => {
                self.unsure = true;
                return;
            }
        };
        if name.eq_ignore_ascii_case(b"upgrade") {
            self.opaque = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding of the last line decides, as for hyper: `gzip` on one line and
            // `chunked` on the next is a chunked body.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            self.chunked = last.eq_ignore_ascii_case(b"chunked");
        } else {
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (length, self.content_length) {
                (Some(length), None) => self.content_length = Some(length),
                (Some(length), Some(before)) if length == before => {}
                // Invalid or conflicting: hyper would refuse it too.
                _ => self.unsure = true,
            }
        }
    }

    fn end_head(&mut self) {
        self.state = if self.trailers {
            self.start_head(false);
            State::Head
        } else if self.opaque {
            State::Off
        } else if self.chunked {
            self.chunk = 0;
            self.in_extension = false;
            State::ChunkSize
        } else {
            match self.content_length {
                Some(length) if length > 0 => State::Body(length),
                _ => {
                    self.start_head(false);
                    State::Head
                }
            }
        };
    }

    /// Whether the bytes scanned so far end with a whole message, or with the empty lines that
    /// may come before the next.
    fn between_messages(&self) -> bool {
        self.state == State::Head
            && self.lines == 0
            && self.line_len == 0
            && !self.truncated
            && !self.ignored
            && !self.prev_cr
            && !self.trailers
    }

    fn next_message(&mut self) {
        self.start_head(false);
        self.state = State::Head;
    }

    fn start_head(&mut self, trailers: bool) {
        self.prev_cr = false;
        self.line_len = 0;
        self.truncated = false;
        self.ignored = false;
        self.lines = 0;
        self.trailers = trailers;
        self.content_length = None;
        self.chunked = false;
        self.has_content_length = false;
        self.has_transfer_encoding = false;
        self.opaque = false;
        self.unsure = false;
    }
}

/// Where the scan refuses the bytes of a connection read in `pieces`, if it does: the offset of
/// the offending line end in the whole stream. (For the tests and the fuzz target, which check
/// that it does not depend on how reads split the stream.)
#[cfg(any(test, fuzzing))]
pub(crate) fn refused_at<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
    let mut framing = Framing::new();
    let mut offset = 0;
    for piece in pieces {
        if let Some(at) = framing.scan(piece) {
            return Some(offset + at);
        }
        offset += piece.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn each_step(input: &str, expected: Option<usize>) {
        for step in [1, 2, 3, 7, input.len()] {
            assert_eq!(
                refused_at(input.as_bytes().chunks(step)),
                expected,
                "{input:?} in steps of {step}"
            );
        }
    }

    #[test]
    fn between_messages_only_once_each_request_read_is_whole() {
        let cases = [
            ("", true),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\nG", false),
            ("GET / HTTP/1.1\r\nHost: a\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r", false),
            ("\r", false),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", false),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", true),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n",
                false,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n",
                false,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                true,
            ),
            // After an upgrade the bytes are not HTTP/1.1 messages: never between two.
            (
                "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                false,
            ),
        ];
        for (input, between) in cases {
            for step in [1, 2, 3, 7, input.len().max(1)] {
                let mut framing = Framing::new();
                for piece in input.as_bytes().chunks(step) {
                    assert_eq!(framing.scan(piece), None, "{input:?}");
                }
                assert_eq!(
                    framing.between_messages(),
                    between,
                    "{input:?} in steps of {step}"
                );
            }
        }
    }

    #[tokio::test]
    async fn quiet_follows_the_reads_and_writes_and_replayed_bytes_come_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (near, mut far) = tokio::io::duplex(64);
        let mut io = StrictIo::new(near);
        let quiet = io.quiet().clone();
        let mut buf = [0u8; 64];
        assert!(quiet.is_quiet());

        far.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        assert!(!quiet.is_quiet(), "half a head read");
        far.write_all(b"st: a\r\n\r\n").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 9);
        assert!(quiet.is_quiet(), "the head read whole");

        // A write the peer cannot take yet waits: not quiet until one goes through.
        io.write_all(&[b'x'; 64]).await.unwrap();
        let mut write = tokio_test::task::spawn(io.write(b"more"));
        assert!(write.poll().is_pending());
        drop(write);
        assert!(!quiet.is_quiet(), "a write waits");
        far.read_exact(&mut buf).await.unwrap();
        io.write_all(b"more").await.unwrap();
        assert!(quiet.is_quiet());

        // Replayed bytes come before the peer's, and leave the connection not quiet until the
        // next bytes read.
        io.replay(Bytes::from_static(b"again"));
        far.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
        assert!(!quiet.is_quiet());
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /next HTTP/1.1\r\n\r\n");
        assert!(quiet.is_quiet());
    }

    #[test]
    fn crlf_heads_pass() {
        each_step(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
            None,
        );
    }

    #[test]
    fn a_bare_lf_in_a_head_is_refused() {
        each_step("GET / HTTP/1.1\nHost: a\r\n\r\n", Some(14));
        each_step("GET / HTTP/1.1\r\nHost: a\n\r\n", Some(23));
        each_step("GET / HTTP/1.1\r\nHost: a\r\n\n", Some(25));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let input = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        each_step(input, Some(input.len() - 1));
    }

    #[test]
    fn bodies_are_never_looked_at() {
        // A Content-Length body, a chunked one with trailers, then a head with a bare LF.
        let input = "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\na\nb\n\
                     POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
                     3;x=y\r\n\n\n\n\r\n0\r\nTrailer: t\r\n\r\n\
                     GET / HTTP/1.1\nHost: a\r\n\r\n";
        let expected = input.find("GET / HTTP/1.1\n").unwrap() + 14;
        each_step(input, Some(expected));
    }

    #[test]
    fn framing_fields_count_among_any_others_and_other_lines_are_still_checked() {
        // Lines of other names, long ones too, around the framing ones; a body that the
        // Content-Length frames, then a bare LF in a line of another name.
        let long = "x".repeat(100);
        let input = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\nCONTENT-length: 4\r\n\
             Accept: */*\r\n\r\na\nb\nGET / HTTP/1.1\r\nAccept: */*\nHost: a\r\n\r\n"
        );
        let expected = input.find("*/*\nHost").unwrap() + 3;
        each_step(&input, Some(expected));
        // Trailers' lines, whatever their names, frame nothing.
        let input = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\nContent-Length: 9\r\nUpgrade: x\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n";
        let expected = input.find("GET / HTTP/1.1\n").unwrap() + 14;
        each_step(input, Some(expected));
    }

    #[test]
    fn after_an_upgrade_or_the_http2_preface_nothing_is_looked_at() {
        for input in [
            "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw\nbytes\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n",
        ] {
            each_step(input, None);
        }
    }

    #[test]
    fn a_request_of_method_pri_is_looked_at_as_any_other() {
        // Only the preface's line stops the check: the bare LF after this one is refused.
        let input = "PRI /x HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nX-A: 1\nContent-Length: 5\r\n\r\n";
        each_step(input, input.find("1\nContent").map(|at| at + 1));
    }

    #[test]
    fn a_head_whose_framing_cannot_be_read_is_refused_at_its_end() {
        let long = format!("Content-Length: {}3", "0".repeat(80));
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 1x\r\n".to_owned(),
            format!("POST / HTTP/1.1\r\n{long}\r\n"),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n".to_owned(),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"
                .to_owned(),
        ] {
            // Refused at the LF of the empty line that ends the head.
            let input = format!("{head}\r\nabc");
            each_step(&input, Some(head.len() + 1));
        }
        // `gzip` then `chunked` on the next line is chunked, as hyper reads it: followed.
        let input = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n";
        each_step(input, input.find("\nHost"));
    }
}
