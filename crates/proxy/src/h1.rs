//! HTTP/1.1 to an upstream, spoken by the exchange itself.
//!
//! hyper's client runs each connection in a task of its own: a request goes to that task through
//! a channel, its response head comes back through another, and every exchange wakes the
//! connection's task and then the request's. Here the request's own future writes the request
//! and reads the response head on the connection it checked out, and the response body reads
//! the rest and lets the connection go back to its endpoint once the exchange has ended whole.
//!
//! What it reads is held to RFC 9112 as hyper's client holds it: a head over [`MAX_HEAD`] or with
//! more than [`MAX_HEADERS`] fields, a malformed line, a Content-Length that is not one number,
//! Transfer-Encoding in HTTP/1.0, or a broken chunk is an invalid response; informational
//! answers (`100 Continue`, `103 Early Hints`) are read past; a body is framed by chunks, by its
//! length, or by the connection's end (RFC 9112 §6.3). What it writes is framed as the request
//! says: the client's Content-Length, else the body's known length, else chunks, whatever the
//! method (a GET's body is rare, but not the proxy's to drop).
//!
//! A connection is reused only when the exchange ended whole on both sides, the upstream did not
//! ask to close it (`Connection: close`, or HTTP/1.0 without keep-alive), and nothing unasked
//! for followed the response.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::ext::ReasonPhrase;
use rampart_http::deadline::Outgoing;
use rampart_http::headers::write_decimal;
use rampart_policy::error::BoxError;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

/// The largest response head (or chunked body's trailers) read: one under it always fits, as
/// with hyper's client bounded the same way.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The most header fields a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// The largest read, and so the largest chunk of a response body: behind a client slow to take
/// a large answer, chunks that size wait in the client's buffers.
const MAX_READ: usize = 64 * 1024;

/// The room a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// The most of a response body read out to keep its connection when the body is dropped
/// before its end ([`Body::drain`]): a short error page, not a download.
const MAX_DRAIN: usize = 64 * 1024;

/// A request body's first piece small enough to go out in one write with the head.
const COALESCE: usize = 16 * 1024;

/// The longest chunk-size line (with its extensions) read before the chunk is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An open HTTP/1.1 connection to an upstream, between exchanges.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    /// What was read and not yet taken.
    read: BytesMut,
    /// When it is closed instead of reused (the upstream's `max_connection_age`).
    retire_at: Option<Instant>,
}

impl Conn {
    /// Boxed once for its whole life: a response body carries its connection, and is moved
    /// several times on its way back, each time 64 bytes more with the connection inline.
    pub(crate) fn new(io: TcpStream, retire_at: Option<Instant>) -> Box<Conn> {
        Box::new(Conn {
            io,
            read: BytesMut::new(),
            retire_at,
        })
    }

    /// When it is to be closed instead of reused.
    pub(crate) fn retire_at(&self) -> Option<Instant> {
        self.retire_at
    }

    /// Whether this idle connection may carry another exchange: the upstream has not closed it,
    /// and sent nothing unasked for. Makes no system call unless the connection was readable
    /// when the runtime last looked.
    pub(crate) fn is_usable(&self) -> bool {
        let mut byte = [0; 1];
        matches!(self.io.try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The upstream's answer broke HTTP/1.1.
    Invalid(&'static str),
    /// The connection closed before the response was complete.
    Closed,
    /// Reading from or writing to the connection failed.
    Io(io::Error),
    /// The request body failed (the client's body broke or outgrew a limit), or it did not
    /// match the length its request announced.
    Body(BoxError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(what) => write!(f, "invalid response from the upstream: {what}"),
            Error::Closed => {
                f.write_str("the upstream closed the connection before the response ended")
            }
            Error::Io(_) => f.write_str("the upstream connection failed"),
            Error::Body(_) => f.write_str("the request body failed"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            Error::Body(err) => Some(err.as_ref()),
            Error::Invalid(_) | Error::Closed => None,
        }
    }
}

/// The connection of a `101 Switching Protocols`, for the tunnel to take: the stream, and what
/// the upstream sent after the 101's head. In the response's extensions, which must be `Clone`.
#[derive(Clone)]
pub(crate) struct Upgraded(Arc<Mutex<Option<(TcpStream, Bytes)>>>);

impl Upgraded {
    /// The stream and the bytes read past the 101, once.
    pub(crate) fn take(&self) -> Option<(TcpStream, Bytes)> {
        crate::lock(&self.0).take()
    }
}

/// Sends the request of `head` and `body` on `conn` and returns the response head; its body
/// reads the rest. The request line names the path and query of `head`'s target, a `head`
/// without Host gets `host`, and `deadline` stands in for any deadline header of `head`.
///
/// The head is lent, not given: it is written out before the first poll returns, and a retry
/// sends the same head again without a copy of it.
pub(crate) async fn send(
    mut conn: Box<Conn>,
    request: &Parts,
    host: &Authority,
    deadline: Outgoing,
    body: RequestBody,
) -> Result<Response<Body>, Error> {
    let head_request = request.method == Method::HEAD;
    let mut writer = Writer::new(request, host, deadline, body);
    let waiting = Waiting::enter();
    let head = poll_fn(|cx| poll_head(&mut conn, &mut writer, head_request, cx)).await?;
    drop(waiting);
    // A switch of protocols the request did not ask for would leave the client a connection in
    // a protocol it never chose (and HTTP/2 has no 101 at all).
    if head.status == StatusCode::SWITCHING_PROTOCOLS && !request.headers.contains_key(UPGRADE) {
        return Err(Error::Invalid("101 to a request that asked for no upgrade"));
    }
    let Head {
        status,
        reason,
        version,
        headers,
        framing,
        keep_alive,
    } = head;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
    let body = if status == StatusCode::SWITCHING_PROTOCOLS {
        let Conn { io, mut read, .. } = *conn;
        let leftover = read.split().freeze();
        response
            .extensions_mut()
            .insert(Upgraded(Arc::new(Mutex::new(Some((io, leftover))))));
        Body::done()
    } else {
        Body {
            conn: Some(conn),
            decoder: framing,
            // A write that failed leaves the connection to no other exchange.
            reusable: keep_alive && !writer.failed,
            writer: (!writer.done).then(|| Box::new(writer)),
        }
    };
    Ok(response.map(|()| body))
}

/// The exchanges waiting for a response head, in the whole process: a task can move between a
/// runtime's threads, so no thread's own count would stay right. With one worker thread, the
/// sidecar's usual setting, the line is never shared.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// An exchange waiting for its response head, counted while it lives.
struct Waiting(());

impl Waiting {
    fn enter() -> Waiting {
        WAITING.fetch_add(1, Relaxed);
        Waiting(())
    }

    /// Whether exchanges other than the caller's wait.
    fn others() -> bool {
        WAITING.load(Relaxed) > 1
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Relaxed);
    }
}

/// Writes what is left of the request and reads until a final response head is whole.
fn poll_head(
    conn: &mut Conn,
    writer: &mut Writer,
    head_request: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, Error>> {
    // With other exchanges under way, the request waits for the rest of the turn: the tasks
    // woken with it write theirs first, and an upstream woken by the first write reads them
    // all, instead of being woken for each (a wake-up of another process is most of a small
    // write's cost in the kernel). Alone, it goes at once, and costs no latency.
    if writer.head.is_some() && !writer.deferred && Waiting::others() {
        writer.deferred = true;
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    loop {
        // The request goes out while the answer is awaited: an upstream may answer (and close)
        // before it has read the whole body.
        if !writer.done {
            match writer.poll_write(&mut conn.io, cx) {
                Poll::Ready(Err(Error::Io(_))) => writer.broken(),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if let Some(head) = take_head(&mut conn.read, head_request)? {
            return Poll::Ready(Ok(head));
        }
        if ready!(poll_fill(&mut conn.io, &mut conn.read, READ_CHUNK, cx)).map_err(Error::Io)? == 0
        {
            return Poll::Ready(Err(Error::Closed));
        }
    }
}

/// The final response head at the start of `read`, taken from it with the informational ones
/// before it; `None` while more bytes are needed.
fn take_head(read: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    while !read.is_empty()
        && let Some(head) = parse_head(read, head_request)?
    {
        match head {
            Parsed::Final(head) => return Ok(Some(head)),
            // `100 Continue` and the like: the final answer follows.
            Parsed::Informational => {}
        }
    }
    if read.len() >= MAX_HEAD {
        return Err(Error::Invalid("response head too large"));
    }
    Ok(None)
}

/// Reads what is there, into at most `want` more bytes of room (at least [`READ_CHUNK`]);
/// `Ok(0)` at the connection's end.
fn poll_fill(
    io: &mut TcpStream,
    read: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let room = want.clamp(READ_CHUNK, MAX_READ);
    if read.capacity() - read.len() < room {
        read.reserve(room);
    }
    // Through `AsyncRead`, not `try_read`: a read that comes back short clears the socket's
    // readiness, so that the next look (at checkout, say) costs no system call.
    let mut limited = read.limit(MAX_READ);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut limited)
}

/// A response head read whole.
struct Head {
    status: StatusCode,
    /// The reason phrase, when it is not the status's usual one.
    reason: Option<ReasonPhrase>,
    version: Version,
    headers: HeaderMap,
    framing: Decoder,
    keep_alive: bool,
}

enum Parsed {
    Final(Head),
    Informational,
}

/// The head at the start of `read`, taken from it once whole; `None` while it is not.
fn parse_head(read: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, Error> {
    // Where each field lies in the head, kept while the parser borrows `read`: offsets fit,
    // as a head is read whole within `MAX_HEAD` plus one read.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count, reason) = {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many header fields"));
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let base = read.as_ptr() as usize;
        let offset = |field: &[u8]| (field.as_ptr() as usize - base) as u32;
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = (
                offset(field.name.as_bytes()),
                field.name.len() as u32,
                offset(field.value),
                field.value.len() as u32,
            );
        }
        let code = parsed.code.unwrap_or_default();
        let minor = parsed.version.unwrap_or_default();
        let reason = parsed
            .reason
            .filter(|reason| !reason.is_empty())
            .map(|reason| (offset(reason.as_bytes()), reason.len() as u32));
        (len, code, minor, parsed.headers.len(), reason)
    };
    let head = read.split_to(len).freeze();
    if (100..=199).contains(&code) && code != 101 {
        return Ok(Some(Parsed::Informational));
    }
    // RFC 9110 §15: three digits from 100 to 599 (`StatusCode` takes up to 999).
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|status| status.as_u16() <= 599)
        .ok_or(Error::Invalid("status code"))?;
    // A reason phrase of the upstream's own goes to the client as it came, as hyper's client
    // and server pass it (`ReasonPhrase`); the usual one is written again from the status.
    let reason = reason
        .map(|(at, len)| head.slice(at as usize..(at + len) as usize))
        .filter(|reason| Some(&reason[..]) != status.canonical_reason().map(str::as_bytes))
        .and_then(|reason| ReasonPhrase::try_from(reason).ok());
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // The fields that frame the body and say whether the connection stays open are read as
    // the map is built: no lookup afterwards.
    let mut fields = Fields::default();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let name = &head[name as usize..(name + name_len) as usize];
        let name = HeaderName::from_bytes(name).map_err(|_| Error::Invalid("header name"))?;
        let value = head.slice(value as usize..(value + value_len) as usize);
        if !fields.read(&name, &value)? {
            continue;
        }
        let value =
            HeaderValue::from_maybe_shared(value).map_err(|_| Error::Invalid("header value"))?;
        headers.append(name, value);
    }
    if let (Some(length), false) = (fields.content_length, fields.length_kept) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    let framing = fields.framing(code, version, head_request)?;
    // `close` first, whatever the version (RFC 9112 §9.3); an HTTP/1.0 message with a
    // Transfer-Encoding has faulty framing, and its connection closes (RFC 9112 §6.1) even when
    // its status leaves it no body to read.
    //
    // An answer to HEAD has no body, but one whose head would frame a body for GET (a length
    // over zero, chunks, or none: to the connection's end) may come from a server that writes
    // the body anyway, in a write of its own after the head, where the next exchange's answer
    // is read: with the connection reused at once, another client would be handed those bytes
    // as its answer (an upstream writing a response there served it to whoever came next).
    // HEAD is rare; such a connection is not worth the risk.
    let body_to_fear =
        head_request && !matches!(fields.framing(code, version, false), Ok(Decoder::Length(0)));
    let keep_alive = !matches!(framing, Decoder::Eof)
        && !fields.close
        && !body_to_fear
        && match version {
            Version::HTTP_11 => true,
            _ => fields.keep_alive && !fields.chunked,
        };
    Ok(Some(Parsed::Final(Head {
        status,
        reason,
        version,
        headers,
        framing,
        keep_alive,
    })))
}

/// What a response head's framing and connection fields say.
#[derive(Default)]
struct Fields {
    /// Transfer-Encoding is there, saying chunked (nothing else is read).
    chunked: bool,
    /// The Content-Length, every value of it one number.
    content_length: Option<u64>,
    /// The head's Content-Length field is kept as it came: it was the only one, one number.
    length_kept: bool,
    /// `Connection` names `close`.
    close: bool,
    /// `Connection` names `keep-alive`.
    keep_alive: bool,
}

impl Fields {
    /// Reads one field of the head; whether the response keeps it. A Connection field that
    /// names only `close` or `keep-alive` speaks of this connection alone, which is read here:
    /// it is let go, as the proxy strips hop-by-hop fields anyway (RFC 9110 §7.6.1) and looking
    /// it up to do so costs more than never keeping it. One naming anything else is kept for
    /// that (an `upgrade`, a field to strip).
    fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, Error> {
        if name == CONNECTION {
            let mut only_this_connection = true;
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                only_this_connection &= close || keep_alive || token.is_empty();
            }
            return Ok(!only_this_connection);
        } else if name == TRANSFER_ENCODING {
            // Chunked once, and nothing else: the coding is hop-by-hop, so a body in any other
            // (`gzip`) would reach the client undecoded with nothing saying so, and the
            // connection's end would have to frame it. nginx refuses the same.
            if self.chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Error::Invalid("transfer-encoding other than chunked"));
            }
            self.chunked = true;
        } else if name == CONTENT_LENGTH {
            let first = self.content_length.is_none();
            self.content_length =
                Some(add_length(self.content_length, value).map_err(Error::Invalid)?);
            // One length said more than once (`5, 5`, or two fields) goes on said once, as RFC
            // 9112 §6.3 asks of a proxy: an HTTP/2 client refuses a list, and an HTTP/1.1 one
            // may read it otherwise. The field is written again after the head, when this
            // one is not kept.
            let plain = first && !value.contains(&b',');
            self.length_kept |= plain;
            return Ok(plain);
        }
        Ok(true)
    }

    /// How the body of a response with status `code` is framed (RFC 9112 §6.3).
    fn framing(&self, code: u16, version: Version, head_request: bool) -> Result<Decoder, Error> {
        if code == 101 || code == 204 || code == 304 || head_request {
            return Ok(Decoder::Length(0));
        }
        match (self.chunked, self.content_length) {
            (true, _) if version == Version::HTTP_10 => {
                Err(Error::Invalid("transfer-encoding in HTTP/1.0"))
            }
            // Either could frame it, and the Content-Length would go on to the client with a
            // body of another length: the mark of response splitting (RFC 9112 §6.3), which
            // nginx refuses too.
            (true, Some(_)) => Err(Error::Invalid("content-length with transfer-encoding")),
            (true, None) => Ok(Decoder::Chunked(Chunked::Size)),
            (false, None) => Ok(Decoder::Eof),
            (false, Some(length)) => Ok(Decoder::Length(length)),
        }
    }
}

/// A response as it reads from `pieces`, the reads of a connection that then ends: for the fuzz
/// target and the tests, through the same parsing and decoding as an exchange.
#[cfg(any(test, fuzzing))]
pub(crate) fn read_response<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    head_request: bool,
) -> Result<ReadResponse, String> {
    let mut pieces = pieces.into_iter();
    let mut read = BytesMut::new();
    let head = loop {
        if let Some(head) = take_head(&mut read, head_request).map_err(|e| e.to_string())? {
            break head;
        }
        let piece = pieces.next().ok_or(Error::Closed.to_string())?;
        read.extend_from_slice(piece);
    };
    let mut decoder = head.framing;
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        match decoder.next(&mut read).map_err(|e| e.to_string())? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(fields) => {
                trailers = fields
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                    .collect();
            }
            Decoded::End => break,
            Decoded::More => match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None => {
                    decoder.eof().map_err(|e| e.to_string())?;
                    break;
                }
            },
        }
    }
    Ok(ReadResponse {
        status: head.status.as_u16(),
        body,
        trailers,
        reusable: head.keep_alive && read.is_empty() && pieces.all(<[u8]>::is_empty),
    })
}

/// What [`read_response`] read.
#[cfg(any(test, fuzzing))]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadResponse {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Vec<(String, Vec<u8>)>,
    /// The connection could carry another exchange: it stays open and nothing followed.
    pub(crate) reusable: bool,
}

// === Writer ===

/// The request on its way: its head until the first write, the bytes framed and not yet
/// written, and the body still to read.
struct Writer {
    head: Option<Vec<u8>>,
    /// What is being written, then what follows it (a chunk's size line, data and end): most
    /// requests need no queue.
    out: Bytes,
    queue: VecDeque<Bytes>,
    body: Option<RequestBody>,
    framing: Encoder,
    /// Everything was written (or writing stopped: see [`Writer::broken`]).
    done: bool,
    /// A write failed: the rest is not sent, and the connection is not reused.
    failed: bool,
    /// The first write waited for the rest of the turn once.
    deferred: bool,
}

#[derive(Debug, Clone, Copy)]
enum Encoder {
    /// This many body bytes are still to come.
    Length(u64),
    Chunked,
}

impl Writer {
    /// The request's head framed, with `host` when it names none and `deadline` instead of its
    /// own deadline headers, the body to follow.
    fn new(parts: &Parts, host: &Authority, deadline: Outgoing, body: RequestBody) -> Writer {
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str());
        // Sized once: the request line, the fields, and room for Host, the deadline and a framing
        // field.
        let (mut has_host, mut has_te, mut cookies) = (false, false, 0);
        let fields: usize = parts
            .headers
            .iter()
            .map(|(name, value)| {
                has_host |= name == HOST;
                has_te |= name == TE;
                cookies += usize::from(name == COOKIE);
                name.as_str().len() + value.len() + 4
            })
            .sum();
        let mut head = Vec::with_capacity(
            parts.method.as_str().len() + target.len() + fields + host.as_str().len() + 96,
        );
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        // HTTP/1.1 requires Host (a request from an HTTP/1.0 client may lack it).
        if !has_host {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(host.as_str().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        // How the body is framed, and the Content-Length to write. The client's own fields are
        // written again as one: an HTTP/2 client's go unchecked but for their number (`003`,
        // or two fields saying 3, which an upstream may refuse as RFC 9110 §8.6 lets it).
        let (framing, mut announce) = if body.is_end_stream() {
            // `content-length: 0` if the client wrote one (seen with the fields below): a
            // bodiless GET's head costs no lookup.
            (Encoder::Length(0), None)
        } else if let Some(length) = content_length(&parts.headers) {
            (Encoder::Length(length), Some(length))
        } else if let Some(length) = body.size_hint().exact() {
            (Encoder::Length(length), Some(length))
        } else {
            // Whatever the method: a GET's body is rare, but the client's to send, not this
            // side's to drop.
            (Encoder::Chunked, None)
        };
        // The framing is this side's to say, and the deadline this attempt's.
        let mut had_length = false;
        let fields = parts.headers.iter().filter(|(name, _)| {
            if *name == CONTENT_LENGTH {
                had_length = true;
                return false;
            }
            *name != TRANSFER_ENCODING
                && !Outgoing::replaces(name)
                && (cookies < 2 || *name != COOKIE)
        });
        write_fields(&mut head, fields);
        if had_length && matches!(framing, Encoder::Length(0)) {
            announce = Some(0);
        }
        // An HTTP/2 client may send its cookies as several fields; HTTP/1.1 has them in one, the
        // pairs joined by "; " (RFC 9113 §8.2.3); an empty one adds nothing, and would leave an
        // empty pair (`a=1; ; b=2`).
        if cookies > 1 {
            head.extend_from_slice(b"cookie: ");
            let crumbs = parts.headers.get_all(COOKIE).into_iter();
            for (i, cookie) in crumbs.filter(|cookie| !cookie.is_empty()).enumerate() {
                if i > 0 {
                    head.extend_from_slice(b"; ");
                }
                head.extend_from_slice(cookie.as_bytes());
            }
            head.extend_from_slice(b"\r\n");
        }
        // TE (only ever `trailers` here) speaks of this connection: whoever sends it lists it
        // in Connection (RFC 9110 §10.1.4), beside any other Connection field (an upgrade's).
        if has_te {
            head.extend_from_slice(b"connection: te\r\n");
        }
        head.extend_from_slice(deadline.name().as_str().as_bytes());
        head.extend_from_slice(b": ");
        deadline.write_value(&mut head);
        head.extend_from_slice(b"\r\n");
        if let Some(length) = announce {
            head.extend_from_slice(b"content-length: ");
            write_decimal(length, &mut head);
            head.extend_from_slice(b"\r\n");
        } else if let Encoder::Chunked = framing {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        Writer {
            head: Some(head),
            out: Bytes::new(),
            queue: VecDeque::new(),
            body: (!matches!(framing, Encoder::Length(0))).then_some(body),
            framing,
            done: false,
            failed: false,
            deferred: false,
        }
    }

    /// Writing stops for good: a write failed, and the answer, if any, is still to be read.
    fn broken(&mut self) {
        self.done = true;
        self.failed = true;
        self.head = None;
        self.out.clear();
        self.queue.clear();
        self.body = None;
    }

    /// Writes until everything is written or the connection or the body has to wait.
    fn poll_write(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(head) = self.head.take() {
            self.first_write(head, cx)?;
        }
        loop {
            while !self.out.is_empty() {
                let written =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out)).map_err(Error::Io)?;
                if written == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.out.advance(written);
                if self.out.is_empty()
                    && let Some(next) = self.queue.pop_front()
                {
                    self.out = next;
                }
            }
            let Some(body) = self.body.as_mut() else {
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            let frame = ready!(Pin::new(body).poll_frame(cx));
            self.take(frame)?;
        }
    }

    /// Queues the head, with the body's first piece in the same write when it is at hand and
    /// small: a request and its body in one packet, as one upstream read.
    fn first_write(&mut self, mut head: Vec<u8>, cx: &mut Context<'_>) -> Result<(), Error> {
        let first = match (self.body.as_mut(), self.framing) {
            (Some(body), Encoder::Length(_)) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            },
            _ => None,
        };
        let first = match (first, self.framing) {
            (Some(Some(Ok(frame))), Encoder::Length(left))
                if frame
                    .data_ref()
                    .is_some_and(|data| data.len() <= COALESCE && data.len() as u64 <= left) =>
            {
                let data = frame.into_data().unwrap_or_default();
                head.extend_from_slice(&data);
                let left = left - data.len() as u64;
                self.framing = Encoder::Length(left);
                if left == 0 {
                    self.body = None;
                }
                None
            }
            (first, _) => first,
        };
        self.push(Bytes::from(head));
        match first {
            Some(frame) => self.take(frame),
            None => Ok(()),
        }
    }

    /// Takes what the body gave: a piece to frame, trailers, its end or its failure.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), Error> {
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(Error::Body(err)),
            None => {
                match self.framing {
                    Encoder::Chunked => self.push(last_chunk(None)),
                    Encoder::Length(0) => {}
                    Encoder::Length(left) => return Err(Error::Body(short(left))),
                }
                self.body = None;
                return Ok(());
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => return self.frame(data),
            Err(frame) => frame,
        };
        // Trailers end the body: after the last chunk, or nowhere for a body of known length.
        match (self.framing, frame.into_trailers()) {
            (Encoder::Chunked, Ok(trailers)) => self.push(last_chunk(Some(&trailers))),
            (Encoder::Chunked, Err(_)) => self.push(last_chunk(None)),
            (Encoder::Length(0), _) => {}
            (Encoder::Length(left), _) => return Err(Error::Body(short(left))),
        }
        self.body = None;
        Ok(())
    }

    /// Queues `bytes` to write after what is queued.
    fn push(&mut self, bytes: Bytes) {
        if self.out.is_empty() && self.queue.is_empty() {
            self.out = bytes;
        } else {
            self.queue.push_back(bytes);
        }
    }

    /// Queues one piece of the body, framed.
    fn frame(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Encoder::Length(left) => {
                let len = data.len() as u64;
                if len > left {
                    return Err(Error::Body(
                        "the request body is longer than its content-length".into(),
                    ));
                }
                self.framing = Encoder::Length(left - len);
                self.push(data);
                if left == len {
                    self.body = None;
                }
            }
            Encoder::Chunked => {
                self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }
}

fn short(left: u64) -> BoxError {
    format!("the request body ended {left} bytes short of its content-length").into()
}

/// The last chunk, with the trailers if any.
fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(trailers) = trailers.filter(|trailers| !trailers.is_empty()) else {
        return Bytes::from_static(b"0\r\n\r\n");
    };
    let mut out = b"0\r\n".to_vec();
    write_fields(&mut out, trailers.iter());
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Writes `fields` as field lines.
fn write_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The request's own Content-Length, when it is one number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .try_fold(None, |length, value| {
            add_length(length, value.as_bytes()).map(Some)
        })
        .ok()
        .flatten()
}

/// The length a Content-Length field `value` (a comma-separated list) says, with what the
/// fields before it said: every number must be the same.
fn add_length(before: Option<u64>, value: &[u8]) -> Result<u64, &'static str> {
    let mut length = before;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err("content-length");
        }
        let parsed = item
            .iter()
            .fold(0u64, |length, digit| length * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|length| length != parsed) {
            return Err("conflicting content-length");
        }
        length = Some(parsed);
    }
    length.ok_or("content-length")
}

// === Body ===

/// How the rest of a response body is framed.
#[derive(Debug, Clone, Copy)]
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunks, at this point of one.
    Chunked(Chunked),
    /// Everything until the connection ends.
    Eof,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunked {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk's data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section (after the last chunk) is next.
    Trailers,
}

/// A response body read from its connection, which it gives back once the exchange has ended
/// whole (see [`Body::take_reusable`]).
#[derive(Debug)]
pub(crate) struct Body {
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    /// What is left of the request body, when the answer came before its end: boxed, as that
    /// is rare, and the response (with this body) is moved along the way back.
    writer: Option<Box<Writer>>,
    /// The upstream keeps the connection open after this exchange.
    reusable: bool,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("framing", &self.framing)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Body {
    fn done() -> Body {
        Body {
            conn: None,
            decoder: Decoder::Done,
            writer: None,
            reusable: false,
        }
    }

    /// The connection, once the exchange has ended whole and it may carry another.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let whole = matches!(self.decoder, Decoder::Done | Decoder::Length(0))
            && self
                .writer
                .as_ref()
                .is_none_or(|writer| writer.done && !writer.failed);
        if !whole || !self.reusable {
            return None;
        }
        // Bytes after the response were never asked for: the connection is out of step.
        self.conn.take().filter(|conn| conn.read.is_empty())
    }

    /// Reads out the rest of a body its reader let go of, when that rest has arrived and is
    /// short: a retried 503, or one a fallback replaced, is dropped unread, and without this its
    /// connection would go with it (what is left of a response cannot be told from the next
    /// one). Waits for nothing: what the socket does not already hold is not asked for, and a
    /// rest longer than [`MAX_DRAIN`] is left, the connection with it.
    pub(crate) fn drain(&mut self) {
        let writing = self
            .writer
            .as_ref()
            .is_some_and(|writer| !writer.done || writer.failed);
        if !self.reusable || writing {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut drained = 0;
        loop {
            match self.decoder {
                Decoder::Length(left) if left > (MAX_DRAIN - drained) as u64 => return,
                // Read until the connection ends: never reusable.
                Decoder::Eof => return,
                _ => {}
            }
            match self.decoder.next(&mut conn.read) {
                Ok(Decoded::End) => return,
                Ok(Decoded::Data(data)) => {
                    drained += data.len();
                    if drained > MAX_DRAIN {
                        return;
                    }
                }
                Ok(Decoded::Trailers(_)) => {}
                Ok(Decoded::More) => {
                    conn.read.reserve(READ_CHUNK);
                    // Nothing there (or the end, or an error): the rest has not arrived.
                    if !matches!(conn.io.try_read_buf(&mut conn.read), Ok(read) if read > 0) {
                        return;
                    }
                }
                Err(_) => {
                    self.conn = None;
                    return;
                }
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(writer) = self.writer.as_mut().filter(|writer| !writer.done) {
            match writer.poll_write(&mut conn.io, cx) {
                Poll::Ready(Err(Error::Io(_))) => writer.broken(),
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            match self.decoder.next(&mut conn.read)? {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Decoded::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => return Poll::Ready(None),
                Decoded::More => {
                    let want = match self.decoder {
                        Decoder::Length(left) => usize::try_from(left).unwrap_or(usize::MAX),
                        _ => MAX_READ,
                    };
                    if ready!(poll_fill(&mut conn.io, &mut conn.read, want, cx))
                        .map_err(Error::Io)?
                        == 0
                    {
                        return Poll::Ready(self.decoder.eof().err().map(Err));
                    }
                }
            }
        }
    }
}

/// What a body's decoder found in what was read.
#[derive(Debug)]
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// The decoder needs more bytes.
    More,
}

impl Decoder {
    /// The next piece of the body from `read`.
    fn next(&mut self, read: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match *self {
                Decoder::Done | Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Decoded::End);
                }
                _ if read.is_empty() => return Ok(Decoded::More),
                Decoder::Length(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
                    *self = Decoder::Length(left - take as u64);
                    return Ok(Decoded::Data(read.split_to(take).freeze()));
                }
                Decoder::Eof => return Ok(Decoded::Data(read.split().freeze())),
                Decoder::Chunked(state) => match decode_chunk(read, state)? {
                    Step::Next(state) => *self = Decoder::Chunked(state),
                    Step::Data(data, state) => {
                        *self = Decoder::Chunked(state);
                        return Ok(Decoded::Data(data));
                    }
                    Step::End(trailers) => {
                        *self = Decoder::Done;
                        return Ok(trailers.map_or(Decoded::End, Decoded::Trailers));
                    }
                    Step::More if read.len() >= MAX_HEAD => {
                        return Err(Error::Invalid("chunk line or trailers too large"));
                    }
                    Step::More => return Ok(Decoded::More),
                },
            }
        }
    }

    /// The connection ended with nothing more read: the end of a body read until then, else
    /// one cut short.
    fn eof(&mut self) -> Result<(), Error> {
        match self {
            Decoder::Eof => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(Error::Closed),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = ready!(this.poll_data(cx));
        if let Some(Err(_)) = &frame {
            // A broken exchange leaves a connection no other may use.
            this.conn = None;
            this.decoder = Decoder::Done;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(left) => SizeHint::with_exact(left),
            Decoder::Chunked(_) | Decoder::Eof => SizeHint::default(),
        }
    }
}

/// What the chunk decoder found at the start of the buffer.
enum Step {
    /// It moved on without data (a size line, a data's CRLF).
    Next(Chunked),
    /// Data of the current chunk.
    Data(Bytes, Chunked),
    /// The body's end, with its trailers if it had any.
    End(Option<HeaderMap>),
    /// It needs more bytes.
    More,
}

/// One step of chunked decoding on `read` (RFC 9112 §7.1), lines ending in CRLF.
fn decode_chunk(read: &mut BytesMut, state: Chunked) -> Result<Step, Error> {
    match state {
        Chunked::Size => {
            let Some(lf) = memchr::memchr(b'\n', read) else {
                if read.len() > MAX_CHUNK_LINE {
                    return Err(Error::Invalid("chunk size line too long"));
                }
                return Ok(Step::More);
            };
            // A bare LF ends no line here, as in a head: refused at once rather than waited
            // past until the line is too long, while the client waits for the body.
            let Some(end) = lf.checked_sub(1).filter(|&cr| read[cr] == b'\r') else {
                return Err(Error::Invalid("chunk size line ended by a bare LF"));
            };
            // Refused whether or not its end was read with it.
            if end > MAX_CHUNK_LINE {
                return Err(Error::Invalid("chunk size line too long"));
            }
            let line = &read[..end];
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            // After the size: nothing, or extensions (ignored) after optional whitespace.
            let rest = &line[digits..];
            // Only spaces and tabs may come before an extension (BWS, RFC 9112 §7.1.1).
            let rest_ok = rest.is_empty() || {
                let rest = &rest[rest
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count()..];
                rest.first() == Some(&b';') && !rest.contains(&b'\n') && !rest.contains(&b'\r')
            };
            if digits == 0 || digits > 16 || !rest_ok {
                return Err(Error::Invalid("chunk size"));
            }
            let size = std::str::from_utf8(&line[..digits])
                .ok()
                .and_then(|digits| u64::from_str_radix(digits, 16).ok())
                .ok_or(Error::Invalid("chunk size"))?;
            read.advance(end + 2);
            Ok(Step::Next(if size == 0 {
                Chunked::Trailers
            } else {
                Chunked::Data(size)
            }))
        }
        Chunked::Data(left) => {
            if read.is_empty() {
                return Ok(Step::More);
            }
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
            let data = read.split_to(take).freeze();
            let left = left - take as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                },
            ))
        }
        Chunked::DataEnd => {
            if read.len() < 2 {
                return Ok(Step::More);
            }
            if &read[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data not followed by CRLF"));
            }
            read.advance(2);
            Ok(Step::Next(Chunked::Size))
        }
        Chunked::Trailers => {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (len, trailers) = match httparse::parse_headers(read, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for field in fields.iter() {
                        let name = HeaderName::from_bytes(field.name.as_bytes())
                            .map_err(|_| Error::Invalid("trailer name"))?;
                        let value = HeaderValue::from_bytes(field.value)
                            .map_err(|_| Error::Invalid("trailer value"))?;
                        trailers.append(name, value);
                    }
                    (len, trailers)
                }
                Ok(httparse::Status::Partial) => return Ok(Step::More),
                Err(_) => return Err(Error::Invalid("malformed trailers")),
            };
            read.advance(len);
            Ok(Step::End((!trailers.is_empty()).then_some(trailers)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use http::Request;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// A server that, on its one connection, reads a request head and `body` bytes after it,
    /// writes `answer`, then reads until the client closes; its task returns what it read
    /// before answering.
    async fn server(answer: &'static [u8], body: usize) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0; 4096];
            loop {
                let head = memchr::memmem::find(&read, b"\r\n\r\n");
                if head.is_some_and(|end| read.len() >= end + 4 + body) {
                    break;
                }
                let n = stream.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "the client closed before its request was whole");
                read.extend_from_slice(&buf[..n]);
            }
            stream.write_all(answer).await.unwrap();
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            read
        });
        (addr, task)
    }

    async fn conn(addr: SocketAddr) -> Box<Conn> {
        Conn::new(TcpStream::connect(addr).await.unwrap(), None)
    }

    fn request(method: Method, body: RequestBody) -> Request<RequestBody> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = "/path?q=1".parse().unwrap();
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("upstream"));
        request
    }

    /// The deadline header each request in these tests is sent with.
    const DEADLINE: Outgoing = Outgoing {
        remaining: Duration::from_secs(1),
        grpc: false,
    };

    /// `request` sent on `conn`, `upstream` its host when it names none.
    async fn send(conn: Box<Conn>, request: Request<RequestBody>) -> Result<Response<Body>, Error> {
        let (head, body) = request.into_parts();
        super::send(
            conn,
            &head,
            &Authority::from_static("upstream"),
            DEADLINE,
            body,
        )
        .await
    }

    fn empty() -> RequestBody {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    fn full(data: &'static str) -> RequestBody {
        Full::new(Bytes::from_static(data.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync()
    }

    /// A body whose length is not known up front.
    fn streamed(pieces: &[&'static str]) -> RequestBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    /// The exchange's answer: its head, its body read whole, its trailers, and whether its
    /// connection could carry another.
    async fn exchange(
        answer: &'static [u8],
        request: Request<RequestBody>,
        body: usize,
    ) -> (Response<()>, Bytes, Option<HeaderMap>, bool, String) {
        let (addr, server) = server(answer, body).await;
        let mut response = send(conn(addr).await, request).await.unwrap();
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = response.body_mut().frame().await {
            match frame.unwrap().into_data() {
                Ok(piece) => data.extend_from_slice(&piece),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        let reusable = response.body_mut().take_reusable().is_some();
        drop(response.body_mut().conn.take());
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        (response.map(drop), data.freeze(), trailers, reusable, sent)
    }

    #[tokio::test]
    async fn a_content_length_said_more_than_once_goes_on_said_once() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\nX-After: 1\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            let (response, body, ..) = exchange(answer, request(Method::GET, empty()), 0).await;
            let lengths: Vec<_> = response.headers().get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["5"], "{}", String::from_utf8_lossy(answer));
            assert_eq!(body, "hello");
        }
        let (response, ..) = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            request(Method::GET, empty()),
            0,
        )
        .await;
        assert_eq!(response.headers()[CONTENT_LENGTH], "5");
    }

    async fn failure(answer: &'static [u8]) -> Error {
        let (addr, _server) = server(answer, 0).await;
        match send(conn(addr).await, request(Method::GET, empty())).await {
            Ok(mut response) => loop {
                match response.body_mut().frame().await {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return err,
                    None => panic!("the answer was taken as valid"),
                }
            },
            Err(err) => err,
        }
    }

    #[tokio::test]
    async fn a_get_goes_out_as_its_head_and_its_answer_comes_back() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-up: 1\r\n\r\nhello";
        let (response, body, trailers, reusable, sent) =
            exchange(answer, request(Method::GET, empty()), 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.headers()["x-up"], "1");
        assert_eq!(body, "hello");
        assert!(trailers.is_none());
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_request_without_host_names_the_endpoint_and_one_with_host_keeps_its_own() {
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut get = request(Method::GET, empty());
        get.headers_mut().remove(http::header::HOST);
        get.headers_mut()
            .insert("accept", HeaderValue::from_static("*/*"));
        let (.., sent) = exchange(answer, get, 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\naccept: */*\r\nx-rampart-deadline: 1000\r\n\r\n"
        );

        let mut get = request(Method::GET, empty());
        get.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("asked-for"));
        let (.., sent) = exchange(answer, get, 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: asked-for\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn the_attempts_deadline_stands_in_for_the_requests_own() {
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut get = request(Method::GET, empty());
        for (name, value) in [
            ("x-rampart-deadline", "5000"),
            ("accept", "*/*"),
            ("grpc-timeout", "5S"),
        ] {
            get.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        let (.., sent) = exchange(answer, get, 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\naccept: */*\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn an_upstreams_own_reason_phrase_is_kept() {
        for (answer, kept) in [
            (
                &b"HTTP/1.1 404 Nothing Here\r\ncontent-length: 0\r\n\r\n"[..],
                Some("Nothing Here"),
            ),
            (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", None),
            (b"HTTP/1.1 404 \r\ncontent-length: 0\r\n\r\n", None),
        ] {
            let (response, ..) = exchange(answer, request(Method::GET, empty()), 0).await;
            let reason = response.extensions().get::<ReasonPhrase>();
            assert_eq!(reason.map(ReasonPhrase::as_bytes), kept.map(str::as_bytes));
        }
    }

    #[tokio::test]
    async fn a_body_of_known_length_says_it_and_one_of_unknown_length_goes_in_chunks() {
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (.., sent) = exchange(answer, request(Method::POST, full("hello")), 5).await;
        assert_eq!(
            sent,
            "POST /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\ncontent-length: 5\r\n\r\nhello"
        );
        let chunked = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let put = request(Method::PUT, streamed(&["hello", " world"]));
        let (.., sent) = exchange(answer, put, chunked.len()).await;
        assert_eq!(
            sent,
            format!(
                "PUT /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"
            )
        );
        // A GET's too: rare, but the client's to send.
        let get = request(Method::GET, streamed(&["hello", " world"]));
        let (.., sent) = exchange(answer, get, chunked.len()).await;
        assert_eq!(
            sent,
            format!(
                "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"
            )
        );
    }

    #[tokio::test]
    async fn cookies_in_several_fields_go_in_one() {
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut get = request(Method::GET, empty());
        // An empty crumb adds no pair.
        for cookie in ["a=1", "", "b=2; c=3"] {
            get.headers_mut()
                .append(COOKIE, HeaderValue::from_static(cookie));
        }
        get.headers_mut()
            .insert("accept", HeaderValue::from_static("*/*"));
        let (.., sent) = exchange(answer, get, 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\naccept: */*\r\ncookie: a=1; b=2; c=3\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn te_trailers_goes_listed_in_connection() {
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut get = request(Method::GET, empty());
        get.headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
        let (.., sent) = exchange(answer, get, 0).await;
        assert_eq!(
            sent,
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\nte: trailers\r\nconnection: te\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn the_clients_content_length_frames_the_body() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let mut post = request(Method::POST, streamed(&["he", "llo"]));
        post.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (.., reusable, sent) = exchange(answer, post, 5).await;
        assert_eq!(
            sent,
            "POST /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(reusable);

        // Written again as one field of the number alone, as an HTTP/2 client's may not be.
        let mut post = request(Method::POST, streamed(&["he", "llo"]));
        for length in ["005", "5"] {
            post.headers_mut()
                .append(CONTENT_LENGTH, HeaderValue::from_static(length));
        }
        let (.., sent) = exchange(answer, post, 5).await;
        assert_eq!(
            sent,
            "POST /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\ncontent-length: 5\r\n\r\nhello"
        );

        // An empty body keeps the length the client wrote, and gets none it did not.
        let mut post = request(Method::POST, empty());
        post.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (.., sent) = exchange(answer, post, 0).await;
        assert!(sent.ends_with("content-length: 0\r\n\r\n"), "{sent}");
        let (.., sent) = exchange(answer, request(Method::POST, empty()), 0).await;
        assert!(!sent.contains("content-length"), "{sent}");
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_with_its_extensions_and_trailers() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n\
            5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        let (_, body, trailers, reusable, _) =
            exchange(answer, request(Method::GET, empty()), 0).await;
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
        assert!(reusable);
    }

    #[test]
    fn a_body_framed_two_ways_or_in_a_coding_other_than_chunked_is_refused() {
        for framing in [
            // The Content-Length would reach the client with a body of another length.
            "Content-Length: 2\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 11",
            // The client would get the gzip bytes, with nothing saying they are.
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ] {
            let wire = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
            assert!(
                read_response([wire.as_bytes()], false).is_err(),
                "{framing}"
            );
        }
    }

    #[test]
    fn a_chunk_size_line_allows_only_spaces_and_tabs_before_an_extension() {
        for line in ["5;x", "5 ;x", "5\t ;x=\"y\""] {
            let wire = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{line}\r\nhello\r\n0\r\n\r\n"
            );
            let read = read_response([wire.as_bytes()], false);
            assert_eq!(read.map(|r| r.body), Ok(b"hello".to_vec()), "{line:?}");
        }
        for line in ["5\n;x", "5\r;x", "5\x0c;x", "5 x", "5;x\ny"] {
            let wire = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{line}\r\nhello\r\n0\r\n\r\n"
            );
            assert!(read_response([wire.as_bytes()], false).is_err(), "{line:?}");
        }
        // Lines ended by bare LFs are refused as they come, not when the upstream closes.
        let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\n0\n\n";
        let refused = read_response([&wire[..]], false).unwrap_err();
        assert!(refused.contains("bare LF"), "{refused}");
    }

    #[test]
    fn a_response_split_anywhere_reads_the_same() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
            transfer-encoding: chunked\r\n\r\n\
            3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n";
        let whole = read_response([&wire[..]], false).unwrap();
        assert_eq!(whole.status, 200);
        assert_eq!(whole.body, b"abc0123456789abcdef");
        assert_eq!(whole.trailers, [("x-t".to_string(), b"1".to_vec())]);
        assert!(whole.reusable);
        for cut in 0..wire.len() {
            let (first, rest) = wire.split_at(cut);
            let split = read_response([first].into_iter().chain(rest.chunks(1)), false);
            assert_eq!(split.as_ref(), Ok(&whole), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn informational_answers_are_read_past() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
            HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno";
        let (response, body, ..) = exchange(answer, request(Method::GET, empty()), 0).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(!response.headers().contains_key("link"));
        assert_eq!(body, "no");
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body_whatever_its_length_says() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
        let (response, body, _, reusable, _) =
            exchange(answer, request(Method::HEAD, empty()), 0).await;
        assert_eq!(response.headers()[CONTENT_LENGTH], "100");
        assert_eq!(body, "");
        // The body the length announces may still come, from a server that writes it anyway,
        // where the next answer would be read: the connection is not reused.
        assert!(!reusable);
        // So with chunks, or with no framing at all (a body to the connection's end).
        for answer in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\r\n",
        ] {
            let (.., reusable, _) = exchange(answer, request(Method::HEAD, empty()), 0).await;
            assert!(!reusable, "{}", String::from_utf8_lossy(answer));
        }
        // One that announces none is.
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let (.., reusable, _) = exchange(answer, request(Method::HEAD, empty()), 0).await;
            assert!(reusable, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn only_an_answer_keeping_its_connection_open_lets_it_be_reused() {
        for (answer, reused) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"[..],
                false,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n",
                true,
            ),
            // `close` wins, whatever the version.
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, close\r\n\r\n",
                false,
            ),
            // Faulty framing in HTTP/1.0 (RFC 9112 §6.1), though a 204 has no body to frame.
            (
                b"HTTP/1.0 204 No Content\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
                false,
            ),
            // Until the connection's end: nothing follows it.
            (b"HTTP/1.1 200 OK\r\n\r\n", false),
        ] {
            let (addr, server) = server(answer, 0).await;
            let mut response = send(conn(addr).await, request(Method::GET, empty()))
                .await
                .unwrap();
            if reused {
                while response.body_mut().frame().await.is_some() {}
                assert!(response.body_mut().take_reusable().is_some());
            } else {
                assert!(response.body_mut().take_reusable().is_none());
            }
            drop(response);
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_field_only_about_this_connection_is_not_kept() {
        for (answer, kept) in [
            (
                &b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"[..],
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nconnection: Close, \r\ncontent-length: 0\r\n\r\n",
                None,
            ),
            // Naming a field, it is kept, for the proxy to strip that field too.
            (
                b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\ncontent-length: 0\r\n\r\n",
                Some("keep-alive, x-hop"),
            ),
        ] {
            let (response, ..) = exchange(answer, request(Method::GET, empty()), 0).await;
            let connection = response.headers().get(CONNECTION);
            assert_eq!(connection.map(|value| value.to_str().unwrap()), kept);
        }
    }

    #[tokio::test]
    async fn bytes_after_the_answer_keep_its_connection_from_reuse() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n\r\n";
        let (_, body, _, reusable, _) = exchange(answer, request(Method::GET, empty()), 0).await;
        assert_eq!(body, "hi");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn broken_framing_is_an_invalid_answer() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiX\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            let err = failure(answer).await;
            assert!(matches!(err, Error::Invalid(_)), "{err:?} for {answer:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_a_closed_connection() {
        for answer in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ncontent-",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0; 1024];
                let _ = stream.read(&mut buf).await;
                stream.write_all(answer).await.unwrap();
            });
            let result = match send(conn(addr).await, request(Method::GET, empty())).await {
                Ok(response) => response.into_body().collect().await.map(drop),
                Err(err) => Err(err),
            };
            assert!(
                matches!(result, Err(Error::Closed)),
                "{result:?} for {answer:?}"
            );
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_request_body_ends_comes_back() {
        // A body that never ends: the upstream refuses it after the head.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        }))
        .boxed_unsync();
        let answer =
            b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (addr, server) = server(answer, 0).await;
        let mut response = send(conn(addr).await, request(Method::POST, body))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(response.body_mut().take_reusable().is_none());
        drop(response);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_usable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = conn(addr).await;
        let (stream, _) = listener.accept().await.unwrap();
        assert!(conn.is_usable());
        drop(stream);
        // The runtime learns of the close on its next look at the sockets.
        let mut looks = 0;
        while conn.is_usable() {
            looks += 1;
            assert!(looks < 1000, "the close was never seen");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn with_other_exchanges_waiting_a_request_waits_for_the_rest_of_the_turn() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (addr, server) = server(answer, 0).await;
        // Another exchange under way (other tests' may be too: the count is the process's).
        let other = Waiting::enter();
        let mut exchange =
            tokio_test::task::spawn(send(conn(addr).await, request(Method::GET, empty())));
        assert!(exchange.poll().is_pending());
        assert!(
            exchange.is_woken(),
            "woken at once, to write on its next poll"
        );
        drop(other);
        let response = exchange.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        assert_eq!(
            String::from_utf8(server.await.unwrap()).unwrap(),
            "GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\nx-rampart-deadline: 1000\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_switch_of_protocols_hands_over_the_connection() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nearly";
        let (addr, server) = server(answer, 0).await;
        let mut asking = request(Method::GET, empty());
        asking
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("echo"));
        let mut response = send(conn(addr).await, asking).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgraded = response.extensions_mut().remove::<Upgraded>().unwrap();
        let (mut stream, early) = upgraded.take().unwrap();
        assert_eq!(early, "early");
        stream.write_all(b"after").await.unwrap();
        drop(stream);
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(sent.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn a_switch_of_protocols_no_request_asked_for_is_refused() {
        let answer =
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
        let (addr, _server) = server(answer, 0).await;
        let refused = send(conn(addr).await, request(Method::GET, empty())).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    }
}
