//! Message ids: unique, sortable by acceptance, printable as `x-rampart-message-id`.
//!
//! An id is 128 bits laid out like a ULID: the acceptance time in milliseconds since the Unix
//! epoch in the top 48 bits, then 80 bits that start random each millisecond and count up within
//! it. The store that makes ids never hands out one below the last (nor below any id it holds, even
//! when the wall clock steps back across a restart), so ordering ids orders messages by acceptance:
//! FIFO is id order. The random part keeps ids of several instances sharing one queue apart.
//!
//! Printed as 26 characters of Crockford's base32 (digits and upper-case letters without I, L, O
//! and U), so that the text form sorts as the number does.

use std::fmt;
use std::str::FromStr;

use rampart_policy::rng::Rng;

use crate::time::Timestamp;

/// A message's id. Ordered by acceptance within one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u128);

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in the text form: 26 x 5 bits cover 128 (the first character holds 3).
pub(crate) const TEXT_LEN: usize = 26;

const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1 << RANDOM_BITS) - 1;

impl MessageId {
    /// The id with this numeric value.
    pub const fn from_u128(value: u128) -> MessageId {
        MessageId(value)
    }

    /// The numeric value: the store's key.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The acceptance time the id carries (milliseconds since the Unix epoch).
    pub fn timestamp(self) -> Timestamp {
        Timestamp::from_millis((self.0 >> RANDOM_BITS) as u64)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; TEXT_LEN];
        for (i, c) in text.iter_mut().enumerate() {
            let shift = 5 * (TEXT_LEN - 1 - i);
            *c = ALPHABET[((self.0 >> shift) & 0x1f) as usize];
        }
        // Every byte comes from the ASCII alphabet.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Why a text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a message id: expected 26 characters of Crockford base32, the first of them 0 to 7 \
     (26 characters hold 130 bits, an id 128)"
)]
pub struct ParseIdError;

impl FromStr for MessageId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<MessageId, ParseIdError> {
        let bytes = s.as_bytes();
        if bytes.len() != TEXT_LEN {
            return Err(ParseIdError);
        }
        // 26 characters hold 130 bits: the first may only carry 3.
        if digit(bytes[0]).ok_or(ParseIdError)? > 7 {
            return Err(ParseIdError);
        }
        let mut value = 0u128;
        for &b in bytes {
            value = (value << 5) | u128::from(digit(b).ok_or(ParseIdError)?);
        }
        Ok(MessageId(value))
    }
}

/// The value of one base32 character, either case; the letters Crockford reads as digits too.
fn digit(b: u8) -> Option<u8> {
    let b = b.to_ascii_uppercase();
    match b {
        b'O' => Some(0),
        b'I' | b'L' => Some(1),
        b'U' => None,
        _ => ALPHABET.iter().position(|&c| c == b).map(|p| p as u8),
    }
}

// === impl IdGenerator ===

/// Makes strictly increasing ids.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    last: u128,
    rng: Rng,
}

impl IdGenerator {
    /// A generator whose ids all sort after `floor` (the highest id already stored).
    pub(crate) fn new(floor: Option<MessageId>, rng: Rng) -> IdGenerator {
        IdGenerator {
            last: floor.map_or(0, MessageId::as_u128),
            rng,
        }
    }

    /// The next id for a message accepted at `now`.
    pub(crate) fn next(&mut self, now: Timestamp) -> MessageId {
        let millis = u128::from(now.as_millis()) & ((1 << 48) - 1);
        let fresh = (millis << RANDOM_BITS) | self.random();
        // A fresh millisecond starts from a random point; within one (or when the clock stepped
        // back) the id counts up from the last, which keeps ids strictly increasing.
        let id = if millis > self.last >> RANDOM_BITS {
            fresh
        } else {
            self.last.wrapping_add(1)
        };
        self.last = id;
        MessageId(id)
    }

    /// 80 random bits, with the top one clear so that counting up within a millisecond cannot
    /// carry into the timestamp.
    fn random(&self) -> u128 {
        let high = (self.rng.next_f64() * (1u64 << 39) as f64) as u128;
        let low = (self.rng.next_f64() * (1u64 << 40) as f64) as u128;
        ((high << 40) | low) & (RANDOM_MASK >> 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert_eq, proptest};

    #[test]
    fn the_text_form_has_26_characters_and_reads_back() {
        let id = MessageId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let text = id.to_string();
        assert_eq!(text.len(), TEXT_LEN);
        assert_eq!(text.parse::<MessageId>(), Ok(id));
        assert_eq!(text.to_lowercase().parse::<MessageId>(), Ok(id));
        assert_eq!(
            MessageId(u128::MAX).to_string(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
        assert_eq!(MessageId(0).to_string(), "00000000000000000000000000");
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "",
            "0",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "0000000000000000000000000U",
            "000000000000000000000000000",
        ] {
            assert_eq!(bad.parse::<MessageId>(), Err(ParseIdError), "{bad:?}");
        }
    }

    #[test]
    fn ids_increase_within_a_millisecond_and_when_the_clock_steps_back() {
        let mut ids = IdGenerator::new(None, Rng::seeded(7));
        let a = ids.next(Timestamp::from_millis(1_000));
        let b = ids.next(Timestamp::from_millis(1_000));
        let c = ids.next(Timestamp::from_millis(999));
        let d = ids.next(Timestamp::from_millis(1_001));
        assert!(a < b && b < c && c < d);
        assert_eq!(a.timestamp(), Timestamp::from_millis(1_000));
        assert_eq!(d.timestamp(), Timestamp::from_millis(1_001));
    }

    #[test]
    fn ids_sort_after_the_floor_they_were_given() {
        let floor = MessageId((5_000u128 << RANDOM_BITS) | 42);
        let mut ids = IdGenerator::new(Some(floor), Rng::fixed(0.0));
        assert!(ids.next(Timestamp::from_millis(10)) > floor);
    }

    proptest! {
        #[test]
        fn text_order_is_number_order(a: u128, b: u128) {
            let (ta, tb) = (MessageId(a).to_string(), MessageId(b).to_string());
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            prop_assert_eq!(ta.parse::<MessageId>(), Ok(MessageId(a)));
        }
    }
}
