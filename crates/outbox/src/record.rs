//! The binary records the outbox writes: versioned, self-delimiting, and read by a decoder that
//! never panics.
//!
//! Two kinds of record, each starting with the format version (1) and a kind byte. Integers are
//! little-endian; every variable part is preceded by its length; a record has no bytes after its
//! last field.
//!
//! A **message record** (kind `M`) is the accepted request, written once at append:
//!
//! | field | encoding |
//! |---|---|
//! | version, kind | `u8` 1, `u8` `b'M'` |
//! | route | `u16` length, UTF-8 |
//! | method | `u16` length, an HTTP method token |
//! | path and query | `u32` length, as `http::uri::PathAndQuery` accepts it and reads it back (no fragment, not empty) |
//! | idempotency key | `u8` 0 (none) or 1, then `u16` length, UTF-8 |
//! | headers | `u32` count, then each: `u16` name length, name (a valid header name); `u32` value length, value (a valid header value) |
//! | body | `u64` length, bytes |
//!
//! A **status record** (kind `S`) is where the message's delivery stands, rewritten at each change:
//!
//! | field | encoding |
//! |---|---|
//! | version, kind | `u8` 1, `u8` `b'S'` |
//! | state | `u8`: 0 queued, 1 delivering, 2 delivered, 3 dead, 4 dropped |
//! | attempts | `u32` |
//! | accepted at, queued at, next attempt at, changed at | 4 x `u64`, milliseconds since the Unix epoch |
//! | size | `u64`, bytes the message counts against `max_bytes` |
//! | route | `u16` length, UTF-8 |
//! | last error | `u8` 0 (none) or 1, then `u32` length, UTF-8 |
//!
//! The id is not in either record: it is the key both are stored under (and it carries the
//! acceptance time, as does the status record). A later format gets a new
//! version number; this decoder refuses versions it does not know rather than guess.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method};

use crate::error::Error;
use crate::id::MessageId;
use crate::message::{Request, State, Status};
use crate::time::Timestamp;

/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
const MESSAGE: u8 = b'M';
const STATUS: u8 = b'S';

/// The longest `last_error` kept: a failure's description, not a log.
pub const MAX_ERROR_LEN: usize = 1024;

/// A message record: what [`encode_message`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    /// The route that accepted it.
    pub route: Arc<str>,
    /// The request.
    pub request: Request,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct DecodeError {
    /// What is wrong.
    pub what: Problem,
    /// Where, counted from the record's first byte.
    pub offset: usize,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record ends before the field does.
    Truncated {
        /// The field cut short.
        field: &'static str,
    },
    /// A format version this code does not know.
    UnknownVersion(u8),
    /// Not the kind of record expected.
    WrongKind {
        /// The kind expected.
        expected: u8,
        /// The kind found.
        found: u8,
    },
    /// A field's value is not valid.
    Invalid {
        /// The field.
        field: &'static str,
    },
    /// Bytes after the last field.
    Trailing(usize),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Truncated { field } => write!(f, "record cut short in {field}"),
            Problem::UnknownVersion(v) => write!(f, "unknown record format version {v}"),
            Problem::WrongKind { expected, found } => write!(
                f,
                "record of kind {:?}, expected {:?}",
                char::from(*found),
                char::from(*expected)
            ),
            Problem::Invalid { field } => write!(f, "invalid {field}"),
            Problem::Trailing(n) => write!(f, "{n} bytes after the record's end"),
        }
    }
}

// === encoding ===

/// The bytes of a message record; fails when a part is longer than its length field allows.
pub fn encode_message(record: &MessageRecord) -> Result<Vec<u8>, Error> {
    let r = &record.request;
    let headers: usize = r
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(
        40 + record.route.len() + r.path_and_query.as_str().len() + headers + r.body.len(),
    );
    out.extend_from_slice(&[VERSION, MESSAGE]);
    put_u16_bytes(
        &mut out,
        record.route.as_bytes(),
        "the route name is over 65535 bytes",
    )?;
    put_u16_bytes(
        &mut out,
        r.method.as_str().as_bytes(),
        "the method is over 65535 bytes",
    )?;
    put_u32_bytes(
        &mut out,
        r.path_and_query.as_str().as_bytes(),
        "the path and query are over 4 GiB",
    )?;
    match &r.idempotency_key {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            put_u16_bytes(
                &mut out,
                key.as_bytes(),
                "the idempotency key is over 65535 bytes",
            )?;
        }
    }
    if r.headers.len() > MAX_HEADERS {
        return Err(Error::Unstorable("more than 10,000 header lines"));
    }
    let count = r.headers.len() as u32;
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in &r.headers {
        put_u16_bytes(
            &mut out,
            name.as_str().as_bytes(),
            "a header name is over 65535 bytes",
        )?;
        put_u32_bytes(&mut out, value.as_bytes(), "a header value is over 4 GiB")?;
    }
    out.extend_from_slice(&(r.body.len() as u64).to_le_bytes());
    out.extend_from_slice(&r.body);
    Ok(out)
}

/// The bytes of a status record (the id is the key, not part of it). A `last_error` longer than
/// [`MAX_ERROR_LEN`] is cut there.
pub fn encode_status(status: &Status) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64 + status.route.len());
    out.extend_from_slice(&[VERSION, STATUS, state_byte(status.state)]);
    out.extend_from_slice(&status.attempts.to_le_bytes());
    for t in [
        status.accepted_at,
        status.queued_at,
        status.next_attempt_at,
        status.changed_at,
    ] {
        out.extend_from_slice(&t.as_millis().to_le_bytes());
    }
    out.extend_from_slice(&status.size.to_le_bytes());
    put_u16_bytes(
        &mut out,
        status.route.as_bytes(),
        "the route name is over 65535 bytes",
    )?;
    match &status.last_error {
        None => out.push(0),
        Some(e) => {
            out.push(1);
            let e = truncate(e, MAX_ERROR_LEN);
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e.as_bytes());
        }
    }
    Ok(out)
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_u16_bytes(out: &mut Vec<u8>, bytes: &[u8], too_long: &'static str) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::Unstorable(too_long))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_u32_bytes(out: &mut Vec<u8>, bytes: &[u8], too_long: &'static str) -> Result<(), Error> {
    let len = u32::try_from(bytes.len()).map_err(|_| Error::Unstorable(too_long))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn state_byte(state: State) -> u8 {
    match state {
        State::Queued => 0,
        State::Delivering => 1,
        State::Delivered => 2,
        State::Dead => 3,
        State::Dropped => 4,
    }
}

// === decoding ===

/// The most header fields a stored request may hold: as many as a listener's `max_headers` may
/// allow (the proxy refuses a request with more, HTTP/2 cookie crumbs included, before storing
/// it), and far below the 24,576 a header map can be made for at once.
pub const MAX_HEADERS: usize = 10_000;

/// The longest method, idempotency key and header name a stored request may have: their
/// lengths are 16-bit (the proxy refuses a request with a longer one before storing it).
pub const MAX_SHORT_FIELD: usize = u16::MAX as usize;

/// Reads a message record. Any bytes at all give a record or an error, never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<MessageRecord, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    r.header(MESSAGE)?;
    let route = r.string16("route")?;
    let method = r.bytes16("method")?;
    let method = r.check(Method::from_bytes(method).ok(), "method")?;
    let target = r.bytes32("path and query")?;
    // The parser drops a fragment and reads an empty target as `/`: a target that would not read
    // back as written is not one the encoder wrote, and delivering it would send another request
    // than the one accepted.
    let path_and_query = PathAndQuery::try_from(target)
        .ok()
        .filter(|parsed| parsed.as_str().as_bytes() == target);
    let path_and_query = r.check(path_and_query, "path and query")?;
    let idempotency_key = match r.u8("idempotency key")? {
        0 => None,
        1 => Some(r.string16("idempotency key")?.to_string()),
        _ => return Err(r.invalid("idempotency key")),
    };
    let count = r.u32("header count")? as usize;
    // More than a request can have been accepted with is no record the encoder wrote, and would
    // overflow the header map the delivery builds.
    if count > MAX_HEADERS {
        return Err(r.invalid("header count"));
    }
    // Each header takes at least 6 bytes: a claimed count cannot make us reserve more than that.
    let mut headers = Vec::with_capacity(count.min(r.remaining() / 6));
    for _ in 0..count {
        let name = r.bytes16("header name")?;
        let name = r.check(HeaderName::from_bytes(name).ok(), "header name")?;
        let value = r.bytes32("header value")?;
        let value = r.check(HeaderValue::from_bytes(value).ok(), "header value")?;
        headers.push((name, value));
    }
    let len = r.u64("body length")?;
    let body = r.take(usize::try_from(len).unwrap_or(usize::MAX), "body")?;
    r.end()?;
    Ok(MessageRecord {
        route: route.into(),
        request: Request {
            method,
            path_and_query,
            headers,
            body: Bytes::copy_from_slice(body),
            idempotency_key,
        },
    })
}

/// Reads a status record, stored under `id`. Any bytes at all give a record or an error, never a
/// panic.
pub fn decode_status(id: MessageId, bytes: &[u8]) -> Result<Status, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    r.header(STATUS)?;
    let state = match r.u8("state")? {
        0 => State::Queued,
        1 => State::Delivering,
        2 => State::Delivered,
        3 => State::Dead,
        4 => State::Dropped,
        _ => return Err(r.invalid("state")),
    };
    let attempts = r.u32("attempts")?;
    let accepted_at = Timestamp::from_millis(r.u64("accepted at")?);
    let queued_at = Timestamp::from_millis(r.u64("queued at")?);
    let next_attempt_at = Timestamp::from_millis(r.u64("next attempt at")?);
    let changed_at = Timestamp::from_millis(r.u64("changed at")?);
    let size = r.u64("size")?;
    let route = r.string16("route")?.into();
    let last_error = match r.u8("last error")? {
        0 => None,
        1 => {
            let bytes = r.bytes32("last error")?;
            let text = std::str::from_utf8(bytes).ok();
            Some(r.check(text, "last error")?.to_owned())
        }
        _ => return Err(r.invalid("last error")),
    };
    r.end()?;
    Ok(Status {
        id,
        route,
        state,
        attempts,
        accepted_at,
        queued_at,
        next_attempt_at,
        changed_at,
        last_error,
        size,
    })
}

/// A cursor over a record's bytes; every read checks the length left.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn error(&self, what: Problem) -> DecodeError {
        DecodeError {
            what,
            offset: self.at,
        }
    }

    fn invalid(&self, field: &'static str) -> DecodeError {
        self.error(Problem::Invalid { field })
    }

    fn check<T>(&self, value: Option<T>, field: &'static str) -> Result<T, DecodeError> {
        value.ok_or_else(|| self.invalid(field))
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(Problem::Truncated { field }));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)?;
        self.take(len as usize, field)
    }

    fn string16(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.at;
        let bytes = self.bytes16(field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError {
            what: Problem::Invalid { field },
            offset: start,
        })
    }

    fn header(&mut self, kind: u8) -> Result<(), DecodeError> {
        let version = self.u8("version")?;
        if version != VERSION {
            self.at -= 1;
            return Err(self.error(Problem::UnknownVersion(version)));
        }
        let found = self.u8("kind")?;
        if found != kind {
            self.at -= 1;
            return Err(self.error(Problem::WrongKind {
                expected: kind,
                found,
            }));
        }
        Ok(())
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(Problem::Trailing(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = Request> {
        let header = (
            "[a-z][a-z0-9-]{0,20}",
            proptest::collection::vec(32u8..127, 0..40),
        )
            .prop_map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(&v).unwrap(),
                )
            });
        (
            prop_oneof![Just(Method::POST), Just(Method::PUT), Just(Method::GET)],
            "/[a-z0-9/]{0,30}(\\?[a-z=&]{0,20})?",
            proptest::collection::vec(header, 0..6),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of("[A-Za-z0-9-]{1,40}"),
        )
            .prop_map(|(method, target, headers, body, idempotency_key)| Request {
                method,
                path_and_query: PathAndQuery::try_from(target).unwrap(),
                headers,
                body: Bytes::from(body),
                idempotency_key,
            })
    }

    fn status() -> impl Strategy<Value = Status> {
        (
            0usize..5,
            any::<u32>(),
            proptest::array::uniform4(any::<u64>()),
            any::<u64>(),
            "[a-z-]{1,20}",
            proptest::option::of(".{0,60}"),
        )
            .prop_map(|(state, attempts, t, size, route, last_error)| Status {
                id: MessageId::from_u128(7),
                route: route.into(),
                state: [
                    State::Queued,
                    State::Delivering,
                    State::Delivered,
                    State::Dead,
                    State::Dropped,
                ][state],
                attempts,
                accepted_at: Timestamp::from_millis(t[0]),
                queued_at: Timestamp::from_millis(t[1]),
                next_attempt_at: Timestamp::from_millis(t[2]),
                changed_at: Timestamp::from_millis(t[3]),
                last_error,
                size,
            })
    }

    proptest! {
        #[test]
        fn a_message_record_reads_back_as_written(request in request(), route in "[a-z-]{1,20}") {
            let record = MessageRecord { route: route.into(), request };
            let bytes = encode_message(&record).unwrap();
            prop_assert_eq!(decode_message(&bytes), Ok(record));
        }

        #[test]
        fn a_status_record_reads_back_as_written(status in status()) {
            let bytes = encode_status(&status).unwrap();
            prop_assert_eq!(decode_status(status.id, &bytes), Ok(status));
        }

        #[test]
        fn every_cut_of_a_record_is_an_error(request in request(), cut in any::<prop::sample::Index>()) {
            let record = MessageRecord { route: "r".into(), request };
            let bytes = encode_message(&record).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(decode_message(&bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_message(&bytes);
            let _ = decode_status(MessageId::from_u128(1), &bytes);
        }

        #[test]
        fn flipped_bytes_never_panic_the_decoders(
            request in request(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let record = MessageRecord { route: "r".into(), request };
            let mut bytes = encode_message(&record).unwrap();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = decode_message(&bytes);
        }
    }

    #[test]
    fn a_record_holds_at_most_ten_thousand_header_lines() {
        let record = |count: usize| MessageRecord {
            route: "r".into(),
            request: Request {
                method: Method::POST,
                path_and_query: PathAndQuery::from_static("/"),
                headers: vec![
                    (
                        HeaderName::from_static("x-a"),
                        HeaderValue::from_static("1")
                    );
                    count
                ],
                body: Bytes::new(),
                idempotency_key: None,
            },
        };
        let bytes = encode_message(&record(MAX_HEADERS)).unwrap();
        assert_eq!(decode_message(&bytes), Ok(record(MAX_HEADERS)));
        assert!(matches!(
            encode_message(&record(MAX_HEADERS + 1)),
            Err(Error::Unstorable(_))
        ));
        // Written by another hand: 25,000 lines, which a header map cannot be made for, are a
        // damaged record, not a panic at delivery.
        let mut many = encode_message(&record(0)).unwrap();
        let at = many.len() - 12;
        many.splice(at..at + 4, 25_000u32.to_le_bytes());
        let line = [3, 0, b'x', b'-', b'a', 1, 0, 0, 0, b'1'];
        many.splice(
            at + 4..at + 4,
            line.iter().copied().cycle().take(line.len() * 25_000),
        );
        assert_eq!(
            decode_message(&many).unwrap_err().what,
            Problem::Invalid {
                field: "header count"
            }
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let status = Status {
            id: MessageId::from_u128(1),
            route: "orders".into(),
            state: State::Queued,
            attempts: 0,
            accepted_at: Timestamp::EPOCH,
            queued_at: Timestamp::EPOCH,
            next_attempt_at: Timestamp::EPOCH,
            changed_at: Timestamp::EPOCH,
            last_error: None,
            size: 10,
        };
        let mut bytes = encode_status(&status).unwrap();
        assert_eq!(
            decode_status(status.id, &bytes[..5])
                .unwrap_err()
                .to_string(),
            "record cut short in attempts at byte 3"
        );
        bytes.push(0);
        assert_eq!(
            decode_status(status.id, &bytes).unwrap_err().what,
            Problem::Trailing(1)
        );
        bytes[0] = 2;
        assert_eq!(
            decode_status(status.id, &bytes).unwrap_err().to_string(),
            "unknown record format version 2 at byte 0"
        );
        bytes[0] = VERSION;
        bytes[2] = 9;
        assert_eq!(
            decode_status(status.id, &bytes).unwrap_err().what,
            Problem::Invalid { field: "state" }
        );
        assert!(matches!(
            decode_message(&bytes).unwrap_err().what,
            Problem::WrongKind {
                expected: b'M',
                found: b'S'
            }
        ));
    }

    // A message record with `target` as its path and query, and nothing else in it.
    fn with_target(target: &[u8]) -> Vec<u8> {
        let mut bytes = vec![VERSION, MESSAGE];
        put_u16_bytes(&mut bytes, b"r", "route").unwrap();
        put_u16_bytes(&mut bytes, b"POST", "method").unwrap();
        put_u32_bytes(&mut bytes, target, "path and query").unwrap();
        bytes.push(0); // no idempotency key
        bytes.extend_from_slice(&0u32.to_le_bytes()); // no headers
        bytes.extend_from_slice(&0u64.to_le_bytes()); // no body
        bytes
    }

    #[test]
    fn a_target_that_would_not_read_back_as_written_is_refused() {
        let record = decode_message(&with_target(b"/orders?id=7")).unwrap();
        assert_eq!(record.request.path_and_query.as_str(), "/orders?id=7");
        // Found by fuzzing: `#//ordkey-` decoded as `/`, and so re-encoded as other bytes.
        for target in [&b"#//ordkey-"[..], b"/orders#frag", b"/a?b#c", b"#"] {
            assert_eq!(
                decode_message(&with_target(target)).unwrap_err().what,
                Problem::Invalid {
                    field: "path and query"
                },
                "{}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate(&long, MAX_ERROR_LEN + 1);
        assert_eq!(cut.len(), MAX_ERROR_LEN);
        assert!(long.starts_with(cut));
    }
}
