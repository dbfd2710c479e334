//! The value types of the configuration file and their parsers.
//!
//! Each parser takes the text a user wrote and returns either the value or an [`Invalid`] that says
//! what was wrong and what is allowed; the key path, place and bad value are added by the caller.
//! Every type formats back to a string its parser accepts, so a summary can be read back in.

use std::fmt;
use std::time::Duration;

/// Why a value was refused: a short message and a description of what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What is wrong with the value.
    pub message: String,
    /// What would have been accepted.
    pub allowed: String,
}

impl Invalid {
    pub(crate) fn new(message: impl Into<String>, allowed: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            allowed: allowed.into(),
        }
    }
}

/// What a duration may look like, for error messages.
pub const DURATION_ALLOWED: &str =
    "a whole number and a unit: ms, s, m or h (\"250ms\", \"2s\", \"1m\", \"24h\")";
/// What a size may look like, for error messages.
pub const SIZE_ALLOWED: &str =
    "a number of bytes, or a whole number and a unit: B, KiB, MiB or GiB (\"64KiB\", \"8MiB\")";
/// What a rate may look like, for error messages.
pub const RATE_ALLOWED: &str =
    "a whole number of requests per second or per minute (\"1000/s\", \"60/m\")";

// === durations ===

const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a human duration: a whole number and one unit of `ms`, `s`, `m` or `h`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(rampart_config::value::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(rampart_config::value::parse_duration("2").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    let expected = "expected a duration like \"250ms\" or \"2s\"; units: ms, s, m, h";
    let (number, unit) = split_number(text);
    if number.is_empty() {
        return Err(Invalid::new(expected, DURATION_ALLOWED));
    }
    if unit.is_empty() {
        return Err(Invalid::new(
            "a duration needs a unit: ms, s, m or h",
            DURATION_ALLOWED,
        ));
    }
    if unit.starts_with(char::is_whitespace) {
        return Err(Invalid::new(
            "no space between the number and the unit",
            DURATION_ALLOWED,
        ));
    }
    if unit.starts_with(['.', ',']) {
        let hint = match fraction(number, unit, &DURATION_UNITS) {
            Some(millis) if millis > 0 => format!(
                ": \"{text}\" is \"{}\"",
                format_duration(Duration::from_millis(millis))
            ),
            _ => ", and the smallest unit is ms".to_owned(),
        };
        return Err(Invalid::new(
            format!("a duration is a whole number of its unit{hint}"),
            DURATION_ALLOWED,
        ));
    }
    let Some(&(_, millis_per_unit)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(Invalid::new(
            format!("unknown duration unit {unit:?}; units: ms, s, m, h"),
            DURATION_ALLOWED,
        ));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| Invalid::new("the duration is too large", DURATION_ALLOWED))
}

/// Formats a duration in the largest unit that expresses it exactly (`"90s"`, `"1m"`, `"250ms"`).
///
/// Sub-millisecond parts are dropped, as the file cannot express them.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, per) in DURATION_UNITS {
        let per = u128::from(per);
        if millis != 0 && millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    "0s".to_owned()
}

/// What `whole` and `rest` (`"1"` and `".5h"`) come to in the smallest of `units`, when that is a
/// whole number of it: for the hint that says how to write a fraction.
fn fraction(whole: &str, rest: &str, units: &[(&str, u64)]) -> Option<u64> {
    let (digits, unit) = split_number(&rest[1..]);
    let &(_, per) = units.iter().find(|(u, _)| *u == unit)?;
    // Past 18 digits the fraction says nothing a unit could hold.
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let scale = 10u128.pow(digits.len() as u32);
    // The number written, in units of `1 / scale` of its unit.
    let scaled = whole
        .parse::<u128>()
        .ok()?
        .checked_mul(scale)?
        .checked_add(digits.parse::<u128>().ok()?)?;
    let smallest = scaled.checked_mul(u128::from(per))?;
    (smallest % scale == 0)
        .then(|| u64::try_from(smallest / scale).ok())
        .flatten()
}

/// Splits leading ASCII digits from the rest (`"250ms"` -> `("250", "ms")`).
fn split_number(text: &str) -> (&str, &str) {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at(digits)
}

// === sizes ===

/// A number of bytes, written `"64KiB"`, `"8MiB"` or as plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses `"64KiB"`, `"8MiB"`, `"1GiB"`, `"512B"` or `"512"`.
    ///
    /// ```
    /// use rampart_config::value::ByteSize;
    /// assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65536)));
    /// assert!(ByteSize::parse("64KB").is_err()); // ambiguous: 1000 or 1024?
    /// ```
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let (number, unit) = split_number(text);
        if number.is_empty() {
            return Err(Invalid::new(
                "expected a size like \"64KiB\" or \"8MiB\"",
                SIZE_ALLOWED,
            ));
        }
        if unit.starts_with(['.', ',']) {
            let hint = match fraction(number, unit, &SIZE_UNITS) {
                Some(bytes) if bytes > 0 => format!(": \"{text}\" is \"{}\"", ByteSize(bytes)),
                _ => ", and the smallest unit is B".to_owned(),
            };
            return Err(Invalid::new(
                format!("a size is a whole number of its unit{hint}"),
                SIZE_ALLOWED,
            ));
        }
        let per = if unit.is_empty() {
            1
        } else if let Some(&(_, per)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
            per
        } else {
            let hint = match unit.to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => format!("; did you mean \"{number}KiB\"?"),
                "m" | "mb" | "mib" => format!("; did you mean \"{number}MiB\"?"),
                "g" | "gb" | "gib" => format!("; did you mean \"{number}GiB\"?"),
                _ => String::new(),
            };
            return Err(Invalid::new(
                format!("unknown size unit {unit:?} (sizes use binary units){hint}"),
                SIZE_ALLOWED,
            ));
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(per))
            .map(ByteSize)
            .ok_or_else(|| Invalid::new("the size is too large", SIZE_ALLOWED))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in SIZE_UNITS {
            if self.0 != 0 && self.0.is_multiple_of(per) {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        f.write_str("0B")
    }
}

// === rates ===

/// A request rate: `count` requests per `per` (one second or one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period; at least 1.
    pub count: u32,
    /// The period: one second or one minute.
    pub per: Duration,
}

impl Rate {
    /// Parses `"1000/s"` or `"60/m"`.
    ///
    /// ```
    /// use rampart_config::value::Rate;
    /// let rate = Rate::parse("60/m").unwrap();
    /// assert_eq!((rate.count, rate.per.as_secs()), (60, 60));
    /// ```
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let Some((count, unit)) = text.split_once('/') else {
            return Err(Invalid::new(
                "expected a rate like \"1000/s\" or \"60/m\"",
                RATE_ALLOWED,
            ));
        };
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => {
                return Err(Invalid::new(
                    format!("unknown rate period \"/{unit}\"; periods: /s, /m"),
                    RATE_ALLOWED,
                ));
            }
        };
        let digits = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
        if !digits {
            return Err(Invalid::new(
                "expected a rate like \"1000/s\" or \"60/m\"",
                RATE_ALLOWED,
            ));
        }
        match count.parse::<u32>() {
            Ok(0) => Err(Invalid::new(
                "a rate must allow at least one request (leave `rate` out for no limit)",
                RATE_ALLOWED,
            )),
            Ok(count) => Ok(Rate { count, per }),
            // Only digits: the number does not fit.
            Err(_) => Err(Invalid::new(
                format!(
                    "the rate is too large: at most {} requests per period",
                    u32::MAX
                ),
                RATE_ALLOWED,
            )),
        }
    }

    /// Requests per second, as a float (60/m is 1.0).
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.per.as_secs() == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)
    }
}

// === ratios ===

/// Checks a ratio: a number from 0 to 1, both included.
pub fn check_ratio(value: f64) -> Result<f64, Invalid> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(Invalid::new(
            "a ratio must be between 0 and 1",
            "a number from 0.0 to 1.0 (0.5 is half)",
        ))
    }
}

// === host:port ===

/// An upstream endpoint: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name, IPv4 address, or IPv6 address (without brackets).
    pub host: String,
    /// TCP port, 1 to 65535.
    pub port: u16,
}

/// What an endpoint may look like, for error messages.
pub const ENDPOINT_ALLOWED: &str =
    "host:port, e.g. \"127.0.0.1:9001\", \"orders.internal:80\" or \"[::1]:9001\"";

impl Endpoint {
    /// Parses `host:port`, with an IPv6 host in brackets (`"[::1]:9001"`).
    ///
    /// ```
    /// use rampart_config::value::Endpoint;
    /// assert_eq!(Endpoint::parse("orders:80").unwrap().port, 80);
    /// assert!(Endpoint::parse("orders").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(Invalid::new(
                format!("an endpoint is host:port, without a scheme (\"{scheme}://\")"),
                ENDPOINT_ALLOWED,
            ));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(Invalid::new("an endpoint needs a port", ENDPOINT_ALLOWED));
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            match inner.strip_suffix(']') {
                Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => ip,
                _ => return Err(Invalid::new("invalid IPv6 address", ENDPOINT_ALLOWED)),
            }
        } else {
            if host.contains(':') {
                return Err(Invalid::new(
                    "an IPv6 address must be in brackets",
                    ENDPOINT_ALLOWED,
                ));
            }
            // As DNS takes a name (RFC 1035): labels of 1 to 63 characters, 253 in all, one
            // final dot allowed. A name past that is refused by every lookup, at run time.
            let name = host.strip_suffix('.').unwrap_or(host);
            let valid_name = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    (1..=63).contains(&label.len())
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid_name {
                return Err(Invalid::new(
                    "invalid host name: letters, digits, '-' and '_' in labels of 1 to 63 \
                     characters between dots, 253 characters at most",
                    ENDPOINT_ALLOWED,
                ));
            }
            host
        };
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        match port.parse::<u16>() {
            Ok(port) if port != 0 && digits => Ok(Endpoint {
                host: host.to_owned(),
                port,
            }),
            _ => Err(Invalid::new(
                "the port must be a number from 1 to 65535",
                ENDPOINT_ALLOWED,
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

// === suggestions ===

/// Levenshtein distance between two strings, in characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_fraction_is_refused_with_what_to_write_instead() {
        let message = |text: &str| parse_duration(text).unwrap_err().message;
        assert!(
            message("1.5h").ends_with(": \"1.5h\" is \"90m\""),
            "{}",
            message("1.5h")
        );
        assert!(message("1.5s").ends_with(": \"1.5s\" is \"1500ms\""));
        assert!(message("0.5ms").ends_with("the smallest unit is ms"));
        let size = |text: &str| ByteSize::parse(text).unwrap_err().message;
        assert!(
            size("2.5MiB").ends_with(": \"2.5MiB\" is \"2560KiB\""),
            "{}",
            size("2.5MiB")
        );
        assert!(size("0.25GiB").ends_with(": \"0.25GiB\" is \"256MiB\""));
        assert!(size("1.5B").ends_with("the smallest unit is B"));
        // Past what any number holds: a hint without a figure, and no overflow.
        let huge = format!("{}.55h", "1".repeat(39));
        assert!(message(&huge).ends_with("the smallest unit is ms"));
        let huge = format!("{}.5", "9".repeat(60));
        assert!(parse_duration(&format!("{huge}s")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "2",
            "2 s",
            "2sec",
            "1.5s",
            "-1s",
            "2S",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(
            parse_duration("2")
                .unwrap_err()
                .message
                .contains("needs a unit")
        );
        assert!(parse_duration("2d").unwrap_err().message.contains("\"d\""));
        let err = parse_duration("1.5s").unwrap_err();
        assert!(err.message.contains("whole number"), "{err:?}");
    }

    #[test]
    fn duration_format() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65_536)));
        assert_eq!(ByteSize::parse("8MiB"), Ok(ByteSize(8 << 20)));
        assert_eq!(ByteSize::parse("1GiB"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("100"), Ok(ByteSize(100)));
        assert_eq!(ByteSize::parse("100B"), Ok(ByteSize(100)));
        let err = ByteSize::parse("64KB").unwrap_err();
        assert!(err.message.contains("did you mean \"64KiB\""), "{err:?}");
        for bad in ["", "KiB", "1.5MiB", "-1", "64 KiB", "99999999999GiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let err = ByteSize::parse("1.5MiB").unwrap_err();
        assert!(err.message.contains("whole number"), "{err:?}");
        assert_eq!(ByteSize(65_536).to_string(), "64KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn rates() {
        assert_eq!(
            Rate::parse("1000/s"),
            Ok(Rate {
                count: 1000,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(Rate::parse("60/m").map(Rate::per_second), Ok(1.0));
        for bad in ["1000", "0/s", "10/h", "/s", "+5/s", "ten/s", "5/sec"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(Rate::parse("4294967295/s").map(|r| r.count), Ok(u32::MAX));
        let err = Rate::parse("4294967296/s").unwrap_err();
        assert!(err.message.contains("too large"), "{err:?}");
    }

    #[test]
    fn ratios() {
        assert_eq!(check_ratio(0.0), Ok(0.0));
        assert_eq!(check_ratio(1.0), Ok(1.0));
        assert!(check_ratio(1.01).is_err());
        assert!(check_ratio(-0.1).is_err());
        assert!(check_ratio(f64::NAN).is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9001"),
            Ok(Endpoint {
                host: "127.0.0.1".into(),
                port: 9001
            })
        );
        assert_eq!(Endpoint::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(
            Endpoint::parse("orders.internal:80").unwrap().host,
            "orders.internal"
        );
        for bad in [
            "orders",
            "orders:",
            ":80",
            "orders:0",
            "orders:70000",
            "::1:80",
            "a b:80",
            "[x]:80",
            "a..b:80",
            ".a:80",
            "..:80",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} must be refused");
        }
        // DNS's bounds: 63 characters a label, 253 a name; a final dot is a name still.
        let label = "a".repeat(63);
        let name = [label.as_str(); 4].join(".");
        assert!(Endpoint::parse(&format!("{label}:80")).is_ok());
        assert!(Endpoint::parse(&format!("{label}a:80")).is_err());
        assert!(Endpoint::parse(&format!("{}:80", &name[..253])).is_ok());
        assert!(Endpoint::parse(&format!("{}:80", &name[..254])).is_err());
        assert!(Endpoint::parse("orders.internal.:80").is_ok());
        let err = Endpoint::parse("http://orders:80").unwrap_err();
        assert!(err.message.contains("without a scheme"), "{err:?}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("atempts", ["attempts", "backoff"]),
            Some("attempts")
        );
        assert_eq!(closest("zzz", ["attempts", "backoff"]), None);
        assert_eq!(closest("GET", ["get"]), Some("get"));
    }

    proptest! {
        #[test]
        fn duration_round_trips(millis in 0u64..10_000_000_000) {
            let duration = Duration::from_millis(millis);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn size_round_trips(bytes in 0u64..(1 << 50)) {
            prop_assert_eq!(ByteSize::parse(&ByteSize(bytes).to_string()), Ok(ByteSize(bytes)));
        }

        #[test]
        fn size_units_scale(n in 0u64..(1 << 20)) {
            prop_assert_eq!(ByteSize::parse(&format!("{n}KiB")), Ok(ByteSize(n * 1024)));
        }

        #[test]
        fn rate_round_trips(count in 1u32.., per_minute in any::<bool>()) {
            let rate = Rate { count, per: Duration::from_secs(if per_minute { 60 } else { 1 }) };
            prop_assert_eq!(Rate::parse(&rate.to_string()), Ok(rate));
        }

        #[test]
        fn endpoint_round_trips(host in "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9]{1,8}){0,3}", port in 1u16..) {
            let endpoint = Endpoint { host, port };
            prop_assert_eq!(Endpoint::parse(&endpoint.to_string()), Ok(endpoint));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
            let _ = ByteSize::parse(&text);
            let _ = Rate::parse(&text);
            let _ = Endpoint::parse(&text);
        }
    }
}
