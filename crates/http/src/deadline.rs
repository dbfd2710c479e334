//! Deadlines across hops: `grpc-timeout` and `x-rampart-deadline`.
//!
//! When A calls B calls C, C should not work on a request A has already given up on. So the time
//! left travels with the request: an incoming `grpc-timeout` (gRPC) or `x-rampart-deadline`
//! (milliseconds left, plain HTTP) caps the route's timeout ([`incoming_deadline`]), and every
//! request sent upstream carries the time left for it in the same header ([`Outgoing`]), also
//! when the client sent none. Formatting rounds down, so a hop never grants more time than it has.
//!
//! A request that arrives with no time left is refused at once ([`DeadlineError::Expired`], which
//! [`rescue`](crate::rescue()) turns into 504 / DEADLINE_EXCEEDED); a deadline header that is not
//! valid is refused too ([`DeadlineError::Invalid`], a bad request), as gRPC servers refuse a
//! malformed `grpc-timeout`: guessing at a garbled budget could only make it longer than meant.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use rampart_http::deadline::{incoming_deadline, set_outgoing};
//! use tokio::time::Instant;
//!
//! let now = Instant::now();
//! let mut headers = HeaderMap::new();
//! headers.insert("grpc-timeout", "300m".parse().unwrap());
//!
//! // The client allows 300ms, the route 2s: the client's budget wins.
//! let deadline = incoming_deadline(&headers, true, Duration::from_secs(2), now).unwrap();
//! assert_eq!(deadline.instant(), now + Duration::from_millis(300));
//!
//! // Forwarded with the time left, in the finest unit that fits.
//! set_outgoing(&mut headers, Duration::from_millis(250), true);
//! assert_eq!(headers["grpc-timeout"], "250000u");
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rampart_policy::timeout::Deadline;
use tokio::time::Instant;

use crate::headers::write_decimal;

/// `grpc-timeout`: the time a gRPC client allows the call.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `x-rampart-deadline`: the milliseconds left for a plain HTTP request.
pub const X_RAMPART_DEADLINE: HeaderName = HeaderName::from_static("x-rampart-deadline");

/// The largest value of either header: 8 digits, as gRPC allows (`x-rampart-deadline`'s largest is
/// then a little over 27 hours).
const MAX_VALUE: u64 = 99_999_999;

/// Why a request's deadline could not be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    /// The request arrived with no time left: answer deadline-exceeded, call nothing.
    #[error("the request arrived with no time left")]
    Expired,
    /// A deadline header is not valid (or appears more than once): answer bad-request.
    #[error("invalid {header} header")]
    Invalid {
        /// The header's name.
        header: &'static str,
    },
}

impl DeadlineError {
    /// What was wrong, in words the client can act on.
    pub fn detail(&self) -> &'static str {
        match self {
            DeadlineError::Expired => "the request arrived with no time left",
            DeadlineError::Invalid {
                header: "grpc-timeout",
            } => "grpc-timeout must appear once, as 1 to 8 digits and a unit: H, M, S, m, u or n",
            DeadlineError::Invalid { .. } => {
                "x-rampart-deadline must appear once, as the milliseconds left: 1 to 8 digits"
            }
        }
    }
}

/// A `grpc-timeout` or `x-rampart-deadline` value that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeout value")]
pub struct InvalidTimeout {
    _priv: (),
}

const INVALID: InvalidTimeout = InvalidTimeout { _priv: () };

// The units of `grpc-timeout`, finest first, with their length in nanoseconds. Each divides the
// next, so a value in one unit is exact in every finer one.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 60 * 60 * 1_000_000_000),
];

// 1 to 8 ASCII digits, nothing else.
fn digits(value: &[u8]) -> Result<u64, InvalidTimeout> {
    if value.is_empty() || value.len() > 8 || !value.iter().all(u8::is_ascii_digit) {
        return Err(INVALID);
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit, `H`ours, `M`inutes,
/// `S`econds, `m`illiseconds, `u` microseconds or `n`anoseconds (gRPC over HTTP/2,
/// "Requests"). Anything else (a sign, a space, a ninth digit, no unit) is refused.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, InvalidTimeout> {
    let (&unit, number) = value.split_last().ok_or(INVALID)?;
    let (_, nanos) = UNITS.iter().find(|(u, _)| *u == unit).ok_or(INVALID)?;
    let n = digits(number)?;
    // 99,999,999 hours is about 3.6e20 ns: past u64, so multiply as u128 and split.
    let total = u128::from(n) * u128::from(*nanos);
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| INVALID)?;
    // The remainder of a division by 1e9 always fits u32.
    let sub = u32::try_from(total % 1_000_000_000).map_err(|_| INVALID)?;
    Ok(Duration::new(secs, sub))
}

/// Formats `timeout` as a `grpc-timeout` value: the finest unit whose count fits 8 digits,
/// rounded down so the receiver never gets more time than `timeout`. Above 99,999,999 hours it
/// caps there.
pub fn format_grpc_timeout(timeout: Duration) -> HeaderValue {
    header_value(|text| write_grpc_timeout(timeout, text))
}

fn write_grpc_timeout(timeout: Duration, out: &mut Vec<u8>) {
    let nanos = timeout.as_nanos();
    let (count, unit) = UNITS
        .iter()
        .find_map(|(unit, len)| {
            let count = nanos / u128::from(*len);
            // At most 8 digits: always a u64.
            u64::try_from(count)
                .ok()
                .filter(|count| *count <= MAX_VALUE)
                .map(|count| (count, *unit))
        })
        .unwrap_or((MAX_VALUE, b'H'));
    write_decimal(count, out);
    out.push(unit);
}

/// Parses an `x-rampart-deadline` value: the milliseconds left, 1 to 8 ASCII digits.
pub fn parse_rampart_deadline(value: &[u8]) -> Result<Duration, InvalidTimeout> {
    digits(value).map(Duration::from_millis)
}

/// Formats `remaining` as an `x-rampart-deadline` value: whole milliseconds, rounded down, capped
/// at 99,999,999.
pub fn format_rampart_deadline(remaining: Duration) -> HeaderValue {
    header_value(|text| write_rampart_deadline(remaining, text))
}

fn write_rampart_deadline(remaining: Duration, out: &mut Vec<u8>) {
    let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    write_decimal(millis.min(MAX_VALUE), out);
}

/// A value written by `write`: digits and a unit letter, always a valid header value.
fn header_value(write: impl FnOnce(&mut Vec<u8>)) -> HeaderValue {
    let mut text = Vec::with_capacity(9);
    write(&mut text);
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The time budget a request's own header gives, if it has one.
///
/// gRPC requests read `grpc-timeout`, plain HTTP ones `x-rampart-deadline`. A header present more
/// than once is invalid: two budgets would leave the choice to whoever reads it.
pub fn header_budget(
    headers: &HeaderMap,
    is_grpc: bool,
) -> Result<Option<Duration>, DeadlineError> {
    type Parse = fn(&[u8]) -> Result<Duration, InvalidTimeout>;
    let (name, header, parse): (HeaderName, &'static str, Parse) = if is_grpc {
        (GRPC_TIMEOUT, "grpc-timeout", parse_grpc_timeout)
    } else {
        (
            X_RAMPART_DEADLINE,
            "x-rampart-deadline",
            parse_rampart_deadline,
        )
    };
    let invalid = || DeadlineError::Invalid { header };
    let mut values = headers.get_all(&name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    parse(value.as_bytes()).map(Some).map_err(|_| invalid())
}

/// The deadline of a request that arrived at `now`: the earlier of the route's timeout and the
/// budget in the request's own header ([`header_budget`]).
///
/// Fails with [`DeadlineError::Expired`] when no time is left (a budget of zero), and with
/// [`DeadlineError::Invalid`] when the header is not valid.
pub fn incoming_deadline(
    headers: &HeaderMap,
    is_grpc: bool,
    route_timeout: Duration,
    now: Instant,
) -> Result<Deadline, DeadlineError> {
    deadline_within(header_budget(headers, is_grpc)?, route_timeout, now)
}

/// The deadline of a request that arrived at `now` with the budget `budget` read from its header
/// ([`header_budget`]), if it had one: [`incoming_deadline`] for a caller that needs the budget
/// itself too, and reads the header once.
pub fn deadline_within(
    budget: Option<Duration>,
    route_timeout: Duration,
    now: Instant,
) -> Result<Deadline, DeadlineError> {
    let budget = match budget {
        Some(budget) => budget.min(route_timeout),
        None => route_timeout,
    };
    if budget.is_zero() {
        return Err(DeadlineError::Expired);
    }
    // A budget past the clock's range is no deadline in practice: stop at the far end.
    let at = now.checked_add(budget).unwrap_or_else(|| far_future(now));
    Ok(Deadline::at(at))
}

fn far_future(now: Instant) -> Instant {
    const THIRTY_YEARS: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);
    now.checked_add(THIRTY_YEARS).unwrap_or(now)
}

/// The deadline header of one request sent upstream: the time left for it, in `grpc-timeout` for
/// gRPC and `x-rampart-deadline` otherwise.
///
/// It is the time of one attempt: a retry after a backoff carries what is left then, not what was
/// left when the request arrived, and an attempt cut short by a per-try timeout says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The time left.
    pub remaining: Duration,
    /// Whether the request is gRPC's, which reads `grpc-timeout`.
    pub grpc: bool,
}

impl Outgoing {
    /// The header's name.
    pub fn name(self) -> HeaderName {
        if self.grpc {
            GRPC_TIMEOUT
        } else {
            X_RAMPART_DEADLINE
        }
    }

    /// The header's value, rounded down.
    pub fn value(self) -> HeaderValue {
        header_value(|text| self.write_value(text))
    }

    /// Writes the header's value, rounded down, at the end of `out`: for a head built as bytes,
    /// with no allocation of its own.
    pub fn write_value(self, out: &mut Vec<u8>) {
        if self.grpc {
            write_grpc_timeout(self.remaining, out);
        } else {
            write_rampart_deadline(self.remaining, out);
        }
    }

    /// Whether a field named `name` is one this header replaces: either deadline header, so that
    /// the upstream reads one budget only, this one.
    pub fn replaces(name: &HeaderName) -> bool {
        *name == X_RAMPART_DEADLINE || *name == GRPC_TIMEOUT
    }

    /// Writes this header into `headers`, replacing any deadline header there.
    pub fn set(self, headers: &mut HeaderMap) {
        let other = if self.grpc {
            X_RAMPART_DEADLINE
        } else {
            GRPC_TIMEOUT
        };
        // Most requests carry neither: a pass over the names costs less than a removal's lookup,
        // which hashes the name.
        if headers.keys().any(|present| *present == other) {
            headers.remove(other);
        }
        headers.insert(self.name(), self.value());
    }
}

/// Writes the time left, `remaining`, into an outgoing request: `grpc-timeout` for gRPC,
/// `x-rampart-deadline` otherwise, replacing any value there, and removes the other header so the
/// upstream reads one budget only ([`Outgoing::set`]).
pub fn set_outgoing(headers: &mut HeaderMap, remaining: Duration, is_grpc: bool) {
    Outgoing {
        remaining,
        grpc: is_grpc,
    }
    .set(headers);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn unit_nanos(value: &HeaderValue) -> u64 {
        let unit = *value.as_bytes().last().unwrap();
        UNITS.iter().find(|(u, _)| *u == unit).unwrap().1
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("5M", Duration::from_secs(300)),
            ("10S", Duration::from_secs(10)),
            ("300m", MS(300)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
            ("0n", Duration::ZERO),
            ("00000001S", Duration::from_secs(1)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_grpc_timeouts_are_refused() {
        for bad in [
            "",
            "H",
            "1",
            "123456789n",
            "-1S",
            "+1S",
            " 1S",
            "1S ",
            "1s",
            "1h",
            "1.5S",
            "1Sx",
            "1 S",
            "1e3m",
            "0x10m",
            "١S",
        ] {
            assert!(parse_grpc_timeout(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeouts_format_in_the_finest_unit_that_fits() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_999), "100000u"),
            (MS(250), "250000u"),
            (Duration::from_secs(2), "2000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666666M"),
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (timeout, text) in cases {
            assert_eq!(format_grpc_timeout(timeout), text, "{timeout:?}");
        }
    }

    #[test]
    fn rampart_deadlines_parse_and_format() {
        assert_eq!(parse_rampart_deadline(b"0"), Ok(Duration::ZERO));
        assert_eq!(parse_rampart_deadline(b"100"), Ok(MS(100)));
        assert_eq!(parse_rampart_deadline(b"99999999"), Ok(MS(99_999_999)));
        for bad in ["", "-1", "+1", "1.0", "123456789", " 1", "1 ", "1ms", "0x1"] {
            assert!(parse_rampart_deadline(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(format_rampart_deadline(Duration::from_micros(1999)), "1");
        assert_eq!(format_rampart_deadline(Duration::from_micros(999)), "0");
        assert_eq!(format_rampart_deadline(MS(1500)), "1500");
        assert_eq!(format_rampart_deadline(Duration::MAX), "99999999");
    }

    #[test]
    fn the_earlier_of_header_and_route_wins() {
        let now = Instant::now();
        let route = Duration::from_secs(2);
        let at = |h: &HeaderMap, grpc| incoming_deadline(h, grpc, route, now).map(|d| d.instant());

        assert_eq!(at(&HeaderMap::new(), false), Ok(now + route));
        assert_eq!(at(&HeaderMap::new(), true), Ok(now + route));
        assert_eq!(
            at(&headers(&[("x-rampart-deadline", "150")]), false),
            Ok(now + MS(150))
        );
        assert_eq!(
            at(&headers(&[("x-rampart-deadline", "5000")]), false),
            Ok(now + route)
        );
        assert_eq!(
            at(&headers(&[("grpc-timeout", "150m")]), true),
            Ok(now + MS(150))
        );
        assert_eq!(
            at(&headers(&[("grpc-timeout", "1H")]), true),
            Ok(now + route)
        );
    }

    #[test]
    fn each_mode_reads_its_own_header() {
        let now = Instant::now();
        let route = Duration::from_secs(2);
        let grpc_header = headers(&[("grpc-timeout", "1m")]);
        let http_header = headers(&[("x-rampart-deadline", "1")]);
        let at = |h: &HeaderMap, grpc| incoming_deadline(h, grpc, route, now).map(|d| d.instant());
        assert_eq!(at(&grpc_header, false), Ok(now + route));
        assert_eq!(at(&http_header, true), Ok(now + route));
    }

    #[test]
    fn no_time_left_is_expired() {
        let now = Instant::now();
        let route = Duration::from_secs(2);
        for (h, grpc) in [
            (headers(&[("x-rampart-deadline", "0")]), false),
            (headers(&[("grpc-timeout", "0n")]), true),
            (headers(&[("grpc-timeout", "0H")]), true),
        ] {
            assert_eq!(
                incoming_deadline(&h, grpc, route, now),
                Err(DeadlineError::Expired)
            );
        }
        assert_eq!(
            incoming_deadline(&HeaderMap::new(), false, Duration::ZERO, now),
            Err(DeadlineError::Expired)
        );
        // One nanosecond is little, but it is time left.
        let h = headers(&[("grpc-timeout", "1n")]);
        assert!(incoming_deadline(&h, true, route, now).is_ok());
    }

    #[test]
    fn garbled_or_repeated_headers_are_invalid() {
        let now = Instant::now();
        let route = Duration::from_secs(2);
        let cases = [
            (
                headers(&[("x-rampart-deadline", "soon")]),
                false,
                "x-rampart-deadline",
            ),
            (headers(&[("grpc-timeout", "1s")]), true, "grpc-timeout"),
            (
                headers(&[("grpc-timeout", "1S"), ("grpc-timeout", "2S")]),
                true,
                "grpc-timeout",
            ),
            (
                headers(&[("x-rampart-deadline", "1"), ("x-rampart-deadline", "1")]),
                false,
                "x-rampart-deadline",
            ),
        ];
        for (h, grpc, header) in cases {
            assert_eq!(
                incoming_deadline(&h, grpc, route, now),
                Err(DeadlineError::Invalid { header })
            );
        }
    }

    #[test]
    fn a_huge_budget_does_not_overflow_the_clock() {
        let now = Instant::now();
        let deadline = incoming_deadline(&HeaderMap::new(), false, Duration::MAX, now).unwrap();
        assert!(deadline.instant() > now + Duration::from_secs(60 * 60 * 24 * 365));
    }

    #[test]
    fn outgoing_requests_carry_one_budget_in_their_header() {
        let mut h = headers(&[("grpc-timeout", "10S"), ("x-rampart-deadline", "10000")]);
        set_outgoing(&mut h, MS(1500), false);
        assert_eq!(h[X_RAMPART_DEADLINE], "1500");
        assert!(!h.contains_key(GRPC_TIMEOUT));

        let mut h = headers(&[
            ("grpc-timeout", "10S"),
            ("grpc-timeout", "20S"),
            ("x-rampart-deadline", "10000"),
        ]);
        set_outgoing(&mut h, MS(1500), true);
        assert_eq!(
            h.get_all(GRPC_TIMEOUT).iter().collect::<Vec<_>>(),
            ["1500000u"]
        );
        assert!(!h.contains_key(X_RAMPART_DEADLINE));

        // Written with no incoming header too: the route's timeout is then the budget.
        let mut h = HeaderMap::new();
        set_outgoing(&mut h, Duration::from_secs(2), false);
        assert_eq!(h[X_RAMPART_DEADLINE], "2000");
    }

    #[test]
    fn an_outgoing_header_replaces_both_deadline_headers_and_nothing_else() {
        for name in ["x-rampart-deadline", "grpc-timeout"] {
            assert!(Outgoing::replaces(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["x-rampart-error", "timeout", "grpc-status", "deadline"] {
            assert!(
                !Outgoing::replaces(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        let http = Outgoing {
            remaining: MS(1500),
            grpc: false,
        };
        assert_eq!(
            (http.name(), http.value()),
            (X_RAMPART_DEADLINE, "1500".parse().unwrap())
        );
        let grpc = Outgoing { grpc: true, ..http };
        assert_eq!(
            (grpc.name(), grpc.value()),
            (GRPC_TIMEOUT, "1500000u".parse().unwrap())
        );
    }

    fn grpc_timeout_text() -> impl Strategy<Value = String> {
        (
            "[0-9]{1,8}",
            prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n']),
        )
            .prop_map(|(digits, unit)| format!("{digits}{unit}"))
    }

    proptest! {
        #[test]
        fn formatting_never_exceeds_8_digits_nor_rounds_up(nanos in any::<u64>(), secs in any::<u64>()) {
            for timeout in [Duration::from_nanos(nanos), Duration::new(secs, 0)] {
                let value = format_grpc_timeout(timeout);
                let text = value.to_str().unwrap();
                prop_assert!(text.len() >= 2 && text.len() <= 9, "{}", text);
                prop_assert!(text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit()));
                let back = parse_grpc_timeout(value.as_bytes()).unwrap();
                prop_assert!(back <= timeout, "{:?} became {}", timeout, text);
                // Down by less than one unit, unless capped at the largest value.
                if text != "99999999H" {
                    prop_assert!(timeout - back < Duration::from_nanos(unit_nanos(&value)));
                }
            }
        }

        #[test]
        fn parsed_timeouts_format_back_exactly(text in grpc_timeout_text()) {
            let timeout = parse_grpc_timeout(text.as_bytes()).unwrap();
            let formatted = format_grpc_timeout(timeout);
            prop_assert_eq!(parse_grpc_timeout(formatted.as_bytes()), Ok(timeout));
        }

        #[test]
        fn short_timeouts_round_trip_exactly(nanos in 0u64..=99_999_999) {
            let timeout = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_grpc_timeout(format_grpc_timeout(timeout).as_bytes()), Ok(timeout));
        }

        #[test]
        fn rampart_deadlines_round_down_and_round_trip(nanos in any::<u64>()) {
            let remaining = Duration::from_nanos(nanos);
            let value = format_rampart_deadline(remaining);
            prop_assert!(value.len() <= 8);
            let back = parse_rampart_deadline(value.as_bytes()).unwrap();
            prop_assert!(back <= remaining);
            if remaining < MS(99_999_999) {
                prop_assert!(remaining - back < MS(1));
            }
        }
    }
}
