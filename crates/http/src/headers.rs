//! Hop-by-hop headers and `x-forwarded-for`, and numbers written into heads built by hand.
//!
//! Some headers speak of one connection, not of the message: a proxy must not forward them
//! (RFC 9110 §7.6.1). [`remove_hop_by_hop`] strips them from a request before it goes upstream,
//! and from a response before it goes back to the client:
//!
//! - `Connection`, and every header it names;
//! - `Keep-Alive`, `Proxy-Connection` (obsolete, still sent), `Transfer-Encoding`;
//! - `TE`, except a request's `trailers` member: gRPC servers require `te: trailers` to know the
//!   client reads trailers, so a request that says it keeps exactly `te: trailers` (a response's
//!   `TE` means nothing and goes whole: [`HopByHop::response`]);
//! - `Upgrade`, unless the proxy is tunnelling that upgrade ([`HopByHop::tunnel_upgrade`]);
//! - `Proxy-Authenticate` and `Proxy-Authorization`, which are meant for the proxy a client talks
//!   to, here none: forwarding them would hand the client's proxy credentials to the upstream.
//!
//! `Trailer`, which announces the trailer fields, is end-to-end (RFC 9110 §6.6.2) and is kept.
//!
//! A client cannot use `Connection` to strip `Host` or `Content-Length`: those decide where and
//! how the message goes, and dropping them on a client's word would change the message the
//! upstream reads.
//!
//! ```
//! use http::HeaderMap;
//! use rampart_http::headers::{remove_hop_by_hop, HopByHop};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", "close, x-secret".parse().unwrap());
//! headers.insert("x-secret", "1".parse().unwrap());
//! headers.insert("te", "trailers".parse().unwrap());
//! headers.insert("accept", "*/*".parse().unwrap());
//!
//! remove_hop_by_hop(&mut headers, HopByHop::default());
//! assert!(!headers.contains_key("connection"));
//! assert!(!headers.contains_key("x-secret"));
//! assert_eq!(headers["te"], "trailers");
//! assert_eq!(headers["accept"], "*/*");
//! ```

use std::net::IpAddr;

use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, COOKIE, EXPECT, Entry, HOST, HeaderMap, HeaderName, HeaderValue, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, MAX_FORWARDS, PRAGMA,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RANGE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

use crate::deadline::{GRPC_TIMEOUT, X_RAMPART_DEADLINE};

/// `keep-alive`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection`.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `x-forwarded-for`: the chain of client addresses a request came through.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How [`remove_hop_by_hop`] treats the headers it may keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopByHop {
    /// Keep `Upgrade` and answer it with `Connection: upgrade`, because the proxy is tunnelling
    /// this upgrade (a WebSocket, for one) to the upstream. Default: false.
    pub tunnel_upgrade: bool,
    /// The headers are a response's: `TE`, a request's field, goes whole. Default: false.
    pub response: bool,
}

impl HopByHop {
    /// Tunnelling an upgrade: `Upgrade` is kept.
    pub fn tunnel_upgrade() -> HopByHop {
        HopByHop {
            tunnel_upgrade: true,
            response: false,
        }
    }

    /// A response's headers.
    pub fn response() -> HopByHop {
        HopByHop {
            tunnel_upgrade: false,
            response: true,
        }
    }
}

/// Removes the hop-by-hop headers of a request or response, as the [module documentation](self)
/// lists them.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, how: HopByHop) {
    // Most messages hold none of these names, or only `Connection`: one pass over the names
    // present spares a hash lookup for each absent one, on every request and every response.
    let present = headers
        .keys()
        .fold(Fixed::NONE, |set, name| set | Fixed::of(name));
    if present == Fixed::NONE {
        return;
    }
    if present.has(Fixed::CONNECTION) {
        // Every `Connection` line counts, and `remove` returns only the first: read them all
        // first.
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            collect_names(value, &mut listed);
        }
        headers.remove(CONNECTION);
        for name in listed {
            if !is_protected(&name, how) {
                headers.remove(name);
            }
        }
    }
    for (fixed, name) in [
        (Fixed::KEEP_ALIVE, KEEP_ALIVE),
        (Fixed::PROXY_CONNECTION, PROXY_CONNECTION),
        (Fixed::TRANSFER_ENCODING, TRANSFER_ENCODING),
        (Fixed::PROXY_AUTHENTICATE, PROXY_AUTHENTICATE),
        (Fixed::PROXY_AUTHORIZATION, PROXY_AUTHORIZATION),
    ] {
        if present.has(fixed) {
            headers.remove(name);
        }
    }
    if present.has(Fixed::TE) {
        if how.response {
            headers.remove(TE);
        } else {
            keep_te_trailers(headers);
        }
    }
    if !present.has(Fixed::UPGRADE) {
        return;
    }
    if how.tunnel_upgrade && headers.contains_key(UPGRADE) {
        // The upgrade is forwarded, and an upgrade request must say so in `Connection`.
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// A set of the hop-by-hop names that are removed whatever `Connection` says, and `Connection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fixed(u8);

impl Fixed {
    const NONE: Fixed = Fixed(0);
    const CONNECTION: Fixed = Fixed(1);
    const KEEP_ALIVE: Fixed = Fixed(1 << 1);
    const PROXY_CONNECTION: Fixed = Fixed(1 << 2);
    const TRANSFER_ENCODING: Fixed = Fixed(1 << 3);
    const TE: Fixed = Fixed(1 << 4);
    const UPGRADE: Fixed = Fixed(1 << 5);
    const PROXY_AUTHENTICATE: Fixed = Fixed(1 << 6);
    const PROXY_AUTHORIZATION: Fixed = Fixed(1 << 7);

    /// `name`, if it is one of the set.
    fn of(name: &HeaderName) -> Fixed {
        match name.as_str() {
            "connection" => Fixed::CONNECTION,
            "keep-alive" => Fixed::KEEP_ALIVE,
            "proxy-connection" => Fixed::PROXY_CONNECTION,
            "transfer-encoding" => Fixed::TRANSFER_ENCODING,
            "te" => Fixed::TE,
            "upgrade" => Fixed::UPGRADE,
            "proxy-authenticate" => Fixed::PROXY_AUTHENTICATE,
            "proxy-authorization" => Fixed::PROXY_AUTHORIZATION,
            _ => Fixed::NONE,
        }
    }

    fn has(self, other: Fixed) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Fixed {
    type Output = Fixed;

    fn bitor(self, other: Fixed) -> Fixed {
        Fixed(self.0 | other.0)
    }
}

// The header names listed in one `Connection` value that need removing on their own; tokens
// that are not header names (there should be none) are skipped, and so are the names removed
// (or, for `TE` and `Upgrade`, kept) by their own rule, and `close`: the common values then
// allocate nothing.
fn collect_names(value: &HeaderValue, into: &mut Vec<HeaderName>) {
    let Ok(value) = value.to_str() else {
        return;
    };
    for token in value.split(',') {
        let token = token.trim();
        // `close` names no header, and `keep-alive` (in most answers of an HTTP/1.1 upstream)
        // one removed anyway: neither is worth parsing into a name.
        if token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
        {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && Fixed::of(&name) == Fixed::NONE
        {
            into.push(name);
        }
    }
}

fn is_protected(name: &HeaderName, how: HopByHop) -> bool {
    // TE has its own rule (keep `trailers`); Upgrade its own flag.
    *name == HOST
        || *name == CONTENT_LENGTH
        || *name == TE
        || (*name == UPGRADE && how.tunnel_upgrade)
}

// Leaves `te: trailers` when the request asked for trailers, and no other TE.
fn keep_te_trailers(headers: &mut HeaderMap) {
    let wants_trailers = headers.get_all(TE).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value.split(',').any(|member| {
                // A member may carry a weight: `trailers;q=1` is not valid for trailers, but
                // compare the token before any parameter all the same.
                let token = member.split(';').next().unwrap_or("").trim();
                token.eq_ignore_ascii_case("trailers")
            })
        })
    });
    if headers.remove(TE).is_some() && wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends `client` to `x-forwarded-for`, after the addresses already there, in one header line.
///
/// Several `x-forwarded-for` lines are merged into that one line, in order: some applications read
/// the first line only and would miss the rest.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    // Most requests come with none: then the address alone, with no string to build.
    if let Entry::Vacant(entry) = headers.entry(X_FORWARDED_FOR) {
        if let Some(value) = address_value(client) {
            entry.insert(value);
        }
        return;
    }
    let client = client.to_string();
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        // A value that is not visible ASCII cannot be copied into a header line as text; it is
        // the client's own claim anyway, so it is dropped rather than trusted.
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                chain.push_str(value);
                chain.push_str(", ");
            }
        }
    }
    chain.push_str(&client);
    // Visible ASCII, commas and spaces only: always a valid value.
    if let Ok(value) = HeaderValue::try_from(chain) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

// `client` as a header value; an IPv4 address, most clients', is written without the
// formatting machinery, which costs more than the rest of the header.
fn address_value(client: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = client else {
        return HeaderValue::try_from(client.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = match octet {
            100.. => 0,
            10.. => 1,
            _ => 2,
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// Removes from a request's or a response's trailers the fields RFC 9110 §6.5.1 keeps out of a
/// trailer section,
/// and the hop-by-hop ones of the [module documentation](self): what frames the message
/// (`Content-Length`, `Transfer-Encoding`), routes it (`Host`), modifies the request
/// (`Cache-Control`, `Expect`, `Max-Forwards`, `Pragma`, `Range`, `TE`, the `If-*`
/// conditionals), authenticates it (`Authorization`, `Cookie`) or says how to process its
/// content (`Content-Encoding`, `Content-Type`, `Content-Range`, `Trailer`); and the fields
/// rampart itself sets in a request's head (`X-Forwarded-For`, `X-Rampart-Deadline`,
/// `grpc-timeout`), which a client would otherwise pass on as it pleases. A recipient that
/// merges trailers into the header section would otherwise act on them after every check
/// before it was made on the head, and an HTTP/2 peer resets a stream whose trailers carry a
/// connection-specific field (RFC 9113 §8.2.2).
pub fn remove_forbidden_trailers(trailers: &mut HeaderMap) {
    // Most trailer sections (a gRPC call's status and message) hold none: a look at the few
    // names present spares a lookup for each forbidden one.
    if !trailers
        .keys()
        .any(|name| FORBIDDEN_IN_TRAILERS.contains(name))
    {
        return;
    }
    for name in &FORBIDDEN_IN_TRAILERS {
        trailers.remove(name);
    }
}

/// What [`remove_forbidden_trailers`] removes.
static FORBIDDEN_IN_TRAILERS: [HeaderName; 29] = [
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
    HOST,
    CACHE_CONTROL,
    EXPECT,
    MAX_FORWARDS,
    PRAGMA,
    RANGE,
    TE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    AUTHORIZATION,
    COOKIE,
    CONTENT_ENCODING,
    CONTENT_TYPE,
    CONTENT_RANGE,
    TRAILER,
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    X_FORWARDED_FOR,
    X_RAMPART_DEADLINE,
    GRPC_TIMEOUT,
];

/// Writes `n` in decimal, as a head built by hand takes a number (a length, a deadline):
/// without a formatter, and without allocating.
pub fn write_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // A remainder of 10: always one digit.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn fixed_hop_by_hop_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("content-type", "text/plain"),
            ("authorization", "Bearer t"),
            ("trailer", "x-checksum"),
        ]);
        remove_hop_by_hop(&mut headers, HopByHop::default());
        assert_eq!(
            names(&headers),
            ["authorization", "content-type", "trailer"]
        );
    }

    #[test]
    fn headers_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "close, X-Secret"),
            ("connection", " x-other ,, keep-alive"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-other", "3"),
            ("x-kept", "4"),
        ]);
        remove_hop_by_hop(&mut headers, HopByHop::default());
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn connection_cannot_strip_host_or_content_length() {
        let mut headers = map(&[
            ("connection", "host, content-length, te, upgrade"),
            ("host", "example.com"),
            ("content-length", "3"),
            ("te", "trailers"),
        ]);
        remove_hop_by_hop(&mut headers, HopByHop::default());
        assert_eq!(names(&headers), ["content-length", "host", "te"]);
        assert_eq!(headers["te"], "trailers");
    }

    #[test]
    fn a_responses_te_goes_whole() {
        let mut headers = map(&[("te", "trailers"), ("content-type", "text/plain")]);
        remove_hop_by_hop(&mut headers, HopByHop::response());
        assert!(!headers.contains_key(TE));
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn te_trailers_is_kept_and_nothing_else_of_te() {
        for (values, kept) in [
            (&["trailers"][..], true),
            (&["Trailers"][..], true),
            (&["gzip, trailers;q=1"][..], true),
            (&["deflate", "trailers"][..], true),
            (&["gzip"][..], false),
            (&["trailersx"][..], false),
            (&[][..], false),
        ] {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(TE, HeaderValue::from_static(value));
            }
            remove_hop_by_hop(&mut headers, HopByHop::default());
            let te: Vec<_> = headers.get_all(TE).iter().collect();
            if kept {
                assert_eq!(te, ["trailers"], "{values:?}");
            } else {
                assert!(te.is_empty(), "{values:?}");
            }
        }
    }

    #[test]
    fn upgrade_is_kept_only_when_tunnelling() {
        let request = || {
            map(&[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ])
        };
        let mut headers = request();
        remove_hop_by_hop(&mut headers, HopByHop::default());
        assert_eq!(names(&headers), ["sec-websocket-key"]);

        let mut headers = request();
        remove_hop_by_hop(&mut headers, HopByHop::tunnel_upgrade());
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(
            names(&headers),
            ["connection", "sec-websocket-key", "upgrade"]
        );

        // Tunnelling with nothing to upgrade adds nothing.
        let mut headers = map(&[("connection", "keep-alive"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut headers, HopByHop::tunnel_upgrade());
        assert_eq!(names(&headers), ["accept"]);
    }

    #[test]
    fn forwarded_for_starts_a_chain() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.7".parse().unwrap());
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.7");
    }

    #[test]
    fn forwarded_for_appends_to_the_chain_in_one_line() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.1, 198.51.100.2"),
            ("x-forwarded-for", "192.0.2.3"),
        ]);
        append_forwarded_for(&mut headers, "2001:db8::1".parse().unwrap());
        assert_eq!(
            headers.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["203.0.113.1, 198.51.100.2, 192.0.2.3, 2001:db8::1"]
        );
    }

    #[test]
    fn forwarded_for_starts_a_chain_with_an_ipv6_address() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "2001:db8::1".parse().unwrap());
        assert_eq!(headers[X_FORWARDED_FOR], "2001:db8::1");
    }

    /// The rule, written the plain way: every fixed name removed whether present or not, every
    /// name `Connection` lists collected.
    fn remove_hop_by_hop_model(headers: &mut HeaderMap, how: HopByHop) {
        let mut listed = Vec::new();
        for value in headers.get_all(CONNECTION) {
            if let Ok(value) = value.to_str() {
                listed.extend(
                    value
                        .split(',')
                        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok()),
                );
            }
        }
        headers.remove(CONNECTION);
        for name in listed {
            if !is_protected(&name, how) {
                headers.remove(name);
            }
        }
        for name in [
            KEEP_ALIVE,
            PROXY_CONNECTION,
            TRANSFER_ENCODING,
            PROXY_AUTHENTICATE,
            PROXY_AUTHORIZATION,
        ] {
            headers.remove(name);
        }
        if how.response {
            headers.remove(TE);
        } else {
            keep_te_trailers(headers);
        }
        if how.tunnel_upgrade && headers.contains_key(UPGRADE) {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(UPGRADE);
        }
    }

    const NAMES: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "content-length",
        "x-custom",
        "accept",
    ];
    const VALUES: [&str; 9] = [
        "close",
        "keep-alive",
        "Upgrade, x-custom",
        "trailers",
        "gzip, trailers;q=1",
        "te, host, Content-Length",
        "accept,,proxy-connection",
        "websocket",
        "1",
    ];

    proptest::proptest! {
        /// Whatever the message holds, the same headers are left as by the plain rule.
        #[test]
        fn removes_what_the_plain_rule_removes(
            lines in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..10),
            tunnel_upgrade: bool,
            response: bool,
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in lines {
                headers.append(NAMES[name], HeaderValue::from_static(VALUES[value]));
            }
            let how = HopByHop { tunnel_upgrade, response };
            let mut expected = headers.clone();
            remove_hop_by_hop_model(&mut expected, how);
            remove_hop_by_hop(&mut headers, how);
            proptest::prop_assert_eq!(headers, expected);
        }

        /// Written by hand, an IPv4 address reads as std writes it.
        #[test]
        fn an_ipv4_address_is_written_as_std_writes_it(bits: u32) {
            let address = std::net::Ipv4Addr::from(bits);
            let value = address_value(IpAddr::V4(address)).unwrap();
            proptest::prop_assert_eq!(value.to_str().unwrap(), address.to_string());
        }
    }

    #[test]
    fn forwarded_for_skips_empty_and_non_text_values() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static(" "));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.3"));
        append_forwarded_for(&mut headers, "10.0.0.7".parse().unwrap());
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.3, 10.0.0.7");
    }

    #[test]
    fn trailers_lose_what_frames_or_routes_and_keep_the_rest() {
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "50"),
            ("transfer-encoding", "chunked"),
            ("host", "elsewhere"),
            ("connection", "close"),
            ("trailer", "x-checksum"),
            ("authorization", "Bearer late"),
            ("content-type", "text/plain"),
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-rampart-deadline", "1"),
            ("grpc-timeout", "1m"),
        ] {
            trailers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_forbidden_trailers(&mut trailers);
        let mut left: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }
}
