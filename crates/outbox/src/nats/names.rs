//! The names the nats store gives things in JetStream: subjects, the consumer of each route, the
//! status bucket and its keys.
//!
//! Route names come from the configuration and may hold any character, while a subject token and
//! a consumer name may not hold `.`, `*`, `>` or whitespace. So a route is written as a *token*:
//! ASCII letters, digits and `-` stand for themselves, every other byte of its UTF-8 as `_` and two
//! upper-case hex digits (`_` itself as `_5F`), and the empty name as `_`. Distinct names give
//! distinct tokens. A token longer than [`MAX_TOKEN`] is cut there and ends with `__` and a hash
//! of the whole name, which no escape can produce, so that consumer names stay short.

use std::fmt::Write;

use crate::id::MessageId;

/// The longest token kept whole.
const MAX_TOKEN: usize = 64;

/// Why a stream name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid stream name {0:?}: use 1 to 64 ASCII letters, digits, `-` or `_` \
     (it also names the stream's subjects and its status bucket)"
)]
pub struct InvalidStream(pub String);

/// Every name the store uses in one stream.
#[derive(Clone, Debug)]
pub(super) struct Names {
    /// The work-queue stream holding the messages: queued, being delivered, and dead.
    pub(super) stream: String,
    /// The key-value bucket holding every message's status record.
    pub(super) bucket: String,
}

impl Names {
    /// The names for stream `stream`, once it is known to be a usable name.
    pub(super) fn new(stream: &str) -> Result<Names, InvalidStream> {
        let valid = !stream.is_empty()
            && stream.len() <= 64
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(InvalidStream(stream.to_owned()));
        }
        Ok(Names {
            stream: stream.to_owned(),
            bucket: format!("{stream}_STATUS"),
        })
    }

    /// Subjects the stream must hold: every route's queue and the dead letters.
    pub(super) fn stream_subjects(&self) -> [String; 2] {
        [
            format!("{}.q.*.*", self.stream),
            format!("{}.dead.*", self.stream),
        ]
    }

    /// The subjects of a route's queue, which its consumer filters.
    pub(super) fn queue(&self, token: &str) -> String {
        format!("{}.q.{token}.*", self.stream)
    }

    /// The subject of one message in its route's queue: one subject per message, so that a
    /// message can be removed from its queue by id.
    pub(super) fn queued(&self, token: &str, id: MessageId) -> String {
        format!("{}.q.{token}.{id}", self.stream)
    }

    /// The subject under which a dead message's request is kept until re-driven.
    pub(super) fn dead(&self, id: MessageId) -> String {
        format!("{}.dead.{id}", self.stream)
    }

    /// The stream behind the status bucket.
    pub(super) fn bucket_stream(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    /// The subject of every status record in the bucket's stream.
    pub(super) fn status_subjects(&self) -> String {
        format!("$KV.{}.>", self.bucket)
    }

    /// The subject of one message's status record in the bucket's stream.
    pub(super) fn status_subject(&self, id: MessageId) -> String {
        format!("$KV.{}.{id}", self.bucket)
    }

    /// The message id a status record's subject names.
    pub(super) fn status_id(&self, subject: &str) -> Option<MessageId> {
        subject
            .strip_prefix("$KV.")?
            .strip_prefix(self.bucket.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }
}

/// A route's name as a subject token and consumer name (see the module docs).
pub(super) fn token(route: &str) -> String {
    if route.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(route.len());
    for b in route.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "_{b:02X}");
        }
    }
    if out.len() > MAX_TOKEN {
        out.truncate(MAX_TOKEN - 18);
        let _ = write!(out, "__{:016X}", fnv1a(route.as_bytes()));
    }
    out
}

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change between releases, and the
/// consumer names it makes must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stand_for_themselves_and_the_rest_is_escaped() {
        assert_eq!(token("orders"), "orders");
        assert_eq!(token("Orders-2"), "Orders-2");
        assert_eq!(token("a.b"), "a_2Eb");
        assert_eq!(token("a_b"), "a_5Fb");
        assert_eq!(token("a b*>"), "a_20b_2A_3E");
        assert_eq!(token("é"), "_C3_A9");
        assert_eq!(token(""), "_");
    }

    #[test]
    fn distinct_names_give_distinct_tokens() {
        let names = ["a_2E", "a.", "a_", "_", "", "a", "a_5F", "a__"];
        let tokens: std::collections::HashSet<String> = names.iter().map(|n| token(n)).collect();
        assert_eq!(tokens.len(), names.len());
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let long = "x".repeat(200);
        let other = format!("{}y", "x".repeat(199));
        assert_eq!(token(&long).len(), MAX_TOKEN);
        assert_ne!(token(&long), token(&other));
        assert!(token(&long).contains("__"));
        assert_eq!(token(&"y".repeat(MAX_TOKEN)), "y".repeat(MAX_TOKEN));
    }

    #[test]
    fn stream_names_are_checked() {
        assert!(Names::new("RAMPART_OUTBOX").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert_eq!(Names::new(bad).unwrap_err(), InvalidStream(bad.to_string()));
        }
    }

    #[test]
    fn status_subjects_name_their_message() {
        let names = Names::new("S").unwrap();
        let id = MessageId::from_u128(12345);
        assert_eq!(names.status_id(&names.status_subject(id)), Some(id));
        assert_eq!(names.status_id("$KV.OTHER.x"), None);
        assert_eq!(names.dead(id), format!("S.dead.{id}"));
        assert_eq!(names.queue("orders"), "S.q.orders.*");
        assert_eq!(names.queued("orders", id), format!("S.q.orders.{id}"));
    }
}
