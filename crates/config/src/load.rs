//! Parse -> validate -> build: walks the spanned TOML document, checks every key and value,
//! collects every error with its place, and builds the [`Config`] only when there is none.
//!
//! The walker does not stop at the first problem: a bad value is reported and replaced by its
//! default so that the rest of the file is still checked, including cross-references.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use rampart_http::{GrpcCode, Reason};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Error, Errors, Lines};
use crate::model::*;
use crate::value::{
    ByteSize, DURATION_ALLOWED, Endpoint, Invalid, Rate, SIZE_ALLOWED, check_ratio, closest,
    parse_duration,
};

type Node<'i> = Spanned<DeValue<'i>>;

/// Parses and validates `text`; `origin` names it in errors, `base_dir` resolves `body_file`.
pub(crate) fn load(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Config, Errors> {
    let mut cx = Cx {
        src: text,
        lines: OnceCell::new(),
        origin,
        base_dir,
        errors: Vec::new(),
        endpoints: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for error in syntax {
            let at = error.span().map_or(0, |s| s.start);
            let message = error.message().trim().replace('\n', " ");
            // The text at fault, for a message that does not quote it ("duplicate key").
            let got = error
                .span()
                .map(|span| cx.raw(span))
                .filter(|text| !text.is_empty());
            cx.report(at, "", format!("invalid TOML: {message}"), got, None);
        }
        return Err(cx.finish());
    }
    let config = document(&mut cx, &root);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

// === the walking context ===

/// Where errors are collected while the document is walked.
struct Cx<'s> {
    src: &'s str,
    /// Where `src`'s lines start, found at the first error.
    lines: OnceCell<Lines<'s>>,
    origin: &'s str,
    base_dir: Option<&'s Path>,
    errors: Vec<(usize, Error)>,
    /// Every endpoint read, with its place, for the checks that need the routes (`loops`).
    endpoints: Vec<Placed>,
}

/// An endpoint of an upstream, and where it is written.
struct Placed {
    upstream: String,
    path: String,
    at: usize,
    got: String,
    endpoint: Endpoint,
}

/// A table being read, with the key path and place to blame when a key is missing.
struct Tbl<'a, 'i> {
    map: &'a DeTable<'i>,
    at: usize,
    path: String,
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a Node<'i>> {
        self.map.get(key)
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

impl Cx<'_> {
    fn report(
        &mut self,
        at: usize,
        path: &str,
        message: impl Into<String>,
        got: Option<String>,
        allowed: Option<String>,
    ) {
        let error = Error {
            origin: self.origin.to_owned(),
            position: Some(self.lines.get_or_init(|| Lines::new(self.src)).place(at)),
            path: path.to_owned(),
            message: message.into(),
            got,
            allowed,
        };
        self.errors.push((at, error));
    }

    /// Reports a bad value, quoting it as written.
    fn invalid(&mut self, span: Range<usize>, path: &str, invalid: Invalid) {
        let got = Some(self.raw(span.clone()));
        self.report(
            span.start,
            path,
            invalid.message,
            got,
            Some(invalid.allowed),
        );
    }

    /// The text of `span` as written, on one line, control characters escaped (a NUL printed
    /// raw would cut a terminal's line, or a log's), and cut short when long.
    fn raw(&self, span: Range<usize>) -> String {
        let text = self.src.get(span).unwrap_or("");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        if text.chars().count() > 60 {
            format!("{}...", text.chars().take(57).collect::<String>())
        } else {
            text
        }
    }

    fn finish(mut self) -> Errors {
        self.errors.sort_by_key(|(at, _)| *at);
        Errors(self.errors.into_iter().map(|(_, e)| e).collect())
    }

    /// Reads `node` as a table whose keys must all be in `known`.
    fn table<'a, 'i>(
        &mut self,
        node: &'a Node<'i>,
        at: usize,
        path: String,
        known: &[&str],
    ) -> Option<Tbl<'a, 'i>> {
        let DeValue::Table(map) = node.get_ref() else {
            self.invalid(
                node.span(),
                &path,
                Invalid::new(
                    format!("expected a table, found {}", node.get_ref().type_str()),
                    format!("a table with keys {}", known.join(", ")),
                ),
            );
            return None;
        };
        self.unknown_keys(map, &path, known);
        Some(Tbl { map, at, path })
    }

    /// Reports every key of `map` not in `known`, suggesting the closest known key.
    fn unknown_keys(&mut self, map: &DeTable<'_>, path: &str, known: &[&str]) {
        for (key, _) in map.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let message = match closest(name, known.iter().copied()) {
                Some(near) => format!("unknown key {name:?}; did you mean \"{near}\"?"),
                None => format!("unknown key {name:?}"),
            };
            self.report(
                key.span().start,
                &join(path, name),
                message,
                None,
                Some(known.join(", ")),
            );
        }
    }

    /// Reads the sub-table `key` of `t`, if present.
    fn section<'a, 'i>(
        &mut self,
        t: &Tbl<'a, 'i>,
        key: &str,
        known: &[&str],
    ) -> Option<Tbl<'a, 'i>> {
        let (k, node) = t.map.get_key_value(key)?;
        self.table(node, k.span().start, t.path(key), known)
    }

    /// Reads `key` of `t` with `parse`; a bad value is reported and `None` returned.
    fn get<T>(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        parse: impl FnOnce(&DeValue<'_>) -> Result<T, Invalid>,
    ) -> Option<T> {
        let node = t.get(key)?;
        match parse(node.get_ref()) {
            Ok(value) => Some(value),
            Err(invalid) => {
                self.invalid(node.span(), &t.path(key), invalid);
                None
            }
        }
    }

    /// Reads the array `key` of `t`, each item with `parse`; bad items are reported one by one.
    fn list<T>(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        parse: impl Fn(&DeValue<'_>) -> Result<T, Invalid>,
    ) -> Option<Vec<T>> {
        let items = self.items(t, key, parse)?;
        Some(items.into_iter().map(|item| item.value).collect())
    }

    /// [`Cx::list`], each good item with its position and place.
    fn items<T>(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        parse: impl Fn(&DeValue<'_>) -> Result<T, Invalid>,
    ) -> Option<Vec<Item<T>>> {
        let node = t.get(key)?;
        let path = t.path(key);
        let DeValue::Array(items) = node.get_ref() else {
            // A lone value that would do as an item is most likely one written without its
            // brackets: show it in them.
            let allowed = match parse(node.get_ref()) {
                Ok(_) => format!("an array, such as [{}]", self.raw(node.span())),
                Err(probe) => format!("an array of: {}", probe.allowed),
            };
            self.invalid(
                node.span(),
                &path,
                Invalid::new(
                    format!("expected an array, found {}", node.get_ref().type_str()),
                    allowed,
                ),
            );
            return None;
        };
        let mut values = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match parse(item.get_ref()) {
                Ok(value) => values.push(Item {
                    index: i,
                    span: item.span(),
                    value,
                }),
                Err(invalid) => self.invalid(item.span(), &format!("{path}[{i}]"), invalid),
            }
        }
        Some(values)
    }

    fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, allowed: &str) {
        let path = t.path(key);
        self.report(
            t.at,
            &path,
            format!("missing required key \"{key}\""),
            None,
            Some(allowed.to_owned()),
        );
    }

    /// Reports a value that is fine alone but conflicts with another; blamed on `key` of `t`, or
    /// on the table when the key is absent (a default is in conflict).
    fn conflict(&mut self, t: &Tbl<'_, '_>, key: &str, message: impl Into<String>) {
        let (at, got) = match t.get(key) {
            Some(node) => (node.span().start, Some(self.raw(node.span()))),
            None => (t.at, None),
        };
        self.report(at, &t.path(key), message, got, None);
    }
}

/// A good item of an array: its position, its place and its value.
struct Item<T> {
    index: usize,
    span: Range<usize>,
    value: T,
}

/// Appends `key` to a key path, quoting keys that are not bare TOML keys.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key: Cow<'_, str> = if bare {
        key.into()
    } else {
        // Escaped as a string is: a key holding a line break or a quote must not forge
        // another line of the report, or end the key's quotes early.
        format!("{key:?}").into()
    };
    if path.is_empty() {
        key.into_owned()
    } else {
        format!("{path}.{key}")
    }
}

// === value readers ===

fn string(v: &DeValue<'_>) -> Result<String, Invalid> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        other => Err(Invalid::new(
            format!("expected a string, found {}", other.type_str()),
            "a quoted string",
        )),
    }
}

fn boolean(v: &DeValue<'_>) -> Result<bool, Invalid> {
    match v {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(Invalid::new(
            format!("expected true or false, found {}", other.type_str()),
            "true, false",
        )),
    }
}

/// A TOML integer, which is 64-bit signed (TOML 1.0): a larger one is no integer, as TOML says
/// it must be refused, rather than a value another TOML reader would refuse.
fn integer(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(i128::from),
        _ => None,
    }
}

/// A whole number from `min` to `max`.
fn uint(min: u64, max: u64) -> impl Fn(&DeValue<'_>) -> Result<u64, Invalid> {
    move |v| {
        let allowed = format!("a whole number from {min} to {max}");
        match integer(v) {
            Some(n) if (i128::from(min)..=i128::from(max)).contains(&n) => Ok(n as u64),
            Some(_) => Err(Invalid::new("out of range", allowed)),
            None if matches!(v, DeValue::Integer(_)) => Err(Invalid::new(
                "out of range: the number is too large",
                allowed,
            )),
            None => Err(Invalid::new(
                format!("expected a whole number, found {}", v.type_str()),
                allowed,
            )),
        }
    }
}

fn u32_in(min: u32, max: u32) -> impl Fn(&DeValue<'_>) -> Result<u32, Invalid> {
    let read = uint(u64::from(min), u64::from(max));
    move |v| read(v).map(|n| n as u32)
}

fn duration(v: &DeValue<'_>) -> Result<Duration, Invalid> {
    match v {
        DeValue::String(s) => parse_duration(s),
        DeValue::Integer(_) | DeValue::Float(_) => Err(Invalid::new(
            "a duration is a quoted string with a unit",
            DURATION_ALLOWED,
        )),
        other => Err(Invalid::new(
            format!("expected a duration, found {}", other.type_str()),
            DURATION_ALLOWED,
        )),
    }
}

/// A duration longer than zero.
fn positive(v: &DeValue<'_>) -> Result<Duration, Invalid> {
    match duration(v)? {
        Duration::ZERO => Err(Invalid::new(
            "must be longer than zero",
            "a duration longer than zero, like \"250ms\" or \"2s\"",
        )),
        d => Ok(d),
    }
}

/// A size above zero.
fn nonzero_size(v: &DeValue<'_>) -> Result<ByteSize, Invalid> {
    match size(v)? {
        ByteSize(0) => Err(Invalid::new("expected a size above zero", SIZE_ALLOWED)),
        bytes => Ok(bytes),
    }
}

fn size(v: &DeValue<'_>) -> Result<ByteSize, Invalid> {
    match v {
        DeValue::String(s) => ByteSize::parse(s),
        DeValue::Integer(_) => match integer(v) {
            Some(n) if n >= 0 && n <= i128::from(u64::MAX) => Ok(ByteSize(n as u64)),
            Some(n) if n < 0 => Err(Invalid::new("a size cannot be negative", SIZE_ALLOWED)),
            _ => Err(Invalid::new("the size is too large", SIZE_ALLOWED)),
        },
        other => Err(Invalid::new(
            format!("expected a size, found {}", other.type_str()),
            SIZE_ALLOWED,
        )),
    }
}

fn ratio(v: &DeValue<'_>) -> Result<f64, Invalid> {
    let value = match v {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(_) => integer(v).map(|n| n as f64),
        _ => None,
    };
    match value {
        Some(value) => check_ratio(value),
        None => Err(Invalid::new(
            format!("expected a ratio, found {}", v.type_str()),
            "a number from 0.0 to 1.0 (0.5 is half)",
        )),
    }
}

/// A breaker's trip rate: a ratio above 0, as the breaker takes no other.
fn trip_rate(allowed: &'static str) -> impl Fn(&DeValue<'_>) -> Result<f64, Invalid> {
    move |v| match ratio(v) {
        Ok(rate) if rate > 0.0 => Ok(rate),
        Ok(_) => Err(Invalid::new(
            "must be more than 0: a rate of 0 would open the breaker however few calls fail",
            allowed,
        )),
        Err(invalid) => Err(Invalid::new(invalid.message, allowed)),
    }
}

fn percent(v: &DeValue<'_>) -> Result<u8, Invalid> {
    uint(0, 100)(v).map(|n| n as u8)
}

/// A share of requests in percent, fractions allowed (`0.1` is one in a thousand), as Envoy's
/// fault percentages take them: a fault in production is often wanted on fewer than one in a
/// hundred requests.
fn share(v: &DeValue<'_>) -> Result<f64, Invalid> {
    const ALLOWED: &str = "a number from 0 to 100, fractions allowed (0.1 is one in a thousand)";
    let value = match v {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(_) => integer(v).map(|n| n as f64),
        _ => None,
    };
    match value {
        Some(value) if (0.0..=100.0).contains(&value) => Ok(value),
        Some(_) => Err(Invalid::new("a share must be between 0 and 100", ALLOWED)),
        None => Err(Invalid::new(
            format!("expected a number, found {}", v.type_str()),
            ALLOWED,
        )),
    }
}

fn status(min: u16) -> impl Fn(&DeValue<'_>) -> Result<u16, Invalid> {
    move |v| uint(u64::from(min), 599)(v).map(|n| n as u16)
}

/// One of the `options`, with a suggestion for a near miss.
fn choice<'o, T: Copy>(
    options: &'o [(&'o str, T)],
) -> impl Fn(&DeValue<'_>) -> Result<T, Invalid> + 'o {
    move |v| {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let allowed = names.join(", ");
        let DeValue::String(s) = v else {
            return Err(Invalid::new(
                format!("expected a string, found {}", v.type_str()),
                allowed,
            ));
        };
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == s.as_ref()) {
            return Ok(*value);
        }
        let message = match closest(s, names.iter().copied()) {
            Some(near) => format!("unknown value; did you mean \"{near}\"?"),
            None => "unknown value".to_owned(),
        };
        Err(Invalid::new(message, allowed))
    }
}

const NAME_ALLOWED: &str = "letters, digits, '-', '_' and '.', at most 64 characters";

/// A name used in metrics labels and admin URLs.
fn name(v: &DeValue<'_>) -> Result<String, Invalid> {
    let s = string(v)?;
    check_name(&s)?;
    Ok(s)
}

fn check_name(s: &str) -> Result<(), Invalid> {
    let valid = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Invalid::new("invalid name", NAME_ALLOWED))
    }
}

/// A JetStream stream's name, as the nats store takes it: it also starts the stream's subjects
/// and names its status bucket, where a '.' would split a token.
fn stream_name(v: &DeValue<'_>) -> Result<String, Invalid> {
    let allowed = "letters, digits, '-' and '_', at most 64 characters";
    let s = string(v).map_err(|e| Invalid::new(e.message, allowed))?;
    let valid = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(s)
    } else {
        Err(Invalid::new("invalid stream name", allowed))
    }
}

const LISTEN_ALLOWED: &str = "an IP address and port, like \"127.0.0.1:8080\" or \"[::1]:8080\"";

fn socket_addr(v: &DeValue<'_>) -> Result<SocketAddr, Invalid> {
    let s = string(v).map_err(|e| Invalid::new(e.message, LISTEN_ALLOWED))?;
    s.parse().map_err(|_| {
        // Say what is wrong with it: most often a port past 65535, or a host name.
        let (host, port) = s.rsplit_once(':').unwrap_or((&s, ""));
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let message = if !s.starts_with('[') && s.matches(':').count() > 1 {
            "an IPv6 address goes in brackets, before its port"
        } else if port.is_empty() || s.ends_with(']') {
            "expected an IP address and a port: the port is missing"
        } else if host.parse::<std::net::IpAddr>().is_err() {
            "expected an IP address (names are not resolved here)"
        } else {
            "the port is not a number from 0 to 65535"
        };
        Invalid::new(message, LISTEN_ALLOWED)
    })
}

fn endpoint(v: &DeValue<'_>) -> Result<Endpoint, Invalid> {
    let s = string(v).map_err(|e| Invalid::new(e.message, crate::value::ENDPOINT_ALLOWED))?;
    Endpoint::parse(&s)
}

fn path_value(v: &DeValue<'_>) -> Result<String, Invalid> {
    let s = string(v)?;
    // As a request's target arrives: a space or a control character could never be matched,
    // nor sent as a health check's target; other characters come percent-encoded.
    // A fragment is never part of a request's target.
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        Ok(s)
    } else {
        Err(Invalid::new(
            "a path starts with '/' and has no spaces, control characters, non-ASCII \
             characters (percent-encode them) or '#'",
            "a path like \"/orders\"",
        ))
    }
}

/// A path a route matches: the request's path alone is matched, without its query.
fn match_path(v: &DeValue<'_>) -> Result<String, Invalid> {
    let s = path_value(v)?;
    if s.contains('?') {
        return Err(Invalid::new(
            "a route matches the request's path without its query, so a '?' here could never \
             match",
            "a path like \"/orders\" (percent-encode a '?' that is part of the path)",
        ));
    }
    Ok(s)
}

/// HTTP methods a route may match or retry; CONNECT is always refused.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
];

fn method(v: &DeValue<'_>) -> Result<String, Invalid> {
    let s = string(v)?;
    if METHODS.contains(&s.as_str()) {
        return Ok(s);
    }
    let message = match closest(&s, METHODS) {
        Some(near) => format!("unknown method; did you mean \"{near}\"?"),
        None => "unknown method".to_owned(),
    };
    Err(Invalid::new(message, METHODS.join(", ")))
}

/// The most headers a `headers` table (a route's match, a fallback's answer) may hold.
const MAX_HEADER_ENTRIES: usize = 100;

/// A header name (a token, compared without case) and its value (visible ASCII and spaces).
fn headers(cx: &mut Cx<'_>, t: &Tbl<'_, '_>, key: &str) -> Vec<(String, String)> {
    let Some(node) = t.get(key) else {
        return Vec::new();
    };
    let path = t.path(key);
    let DeValue::Table(map) = node.get_ref() else {
        cx.invalid(
            node.span(),
            &path,
            Invalid::new(
                "expected a table of header names to values",
                "{ \"content-type\" = \"application/json\" }",
            ),
        );
        return Vec::new();
    };
    // Far more than any real match or answer needs, and far below what a header map can hold.
    if map.len() > MAX_HEADER_ENTRIES {
        cx.invalid(
            node.span(),
            &path,
            Invalid::new(
                format!("{} headers", map.len()),
                format!("at most {MAX_HEADER_ENTRIES} headers"),
            ),
        );
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in map.iter() {
        let name: &str = key.get_ref();
        let header_path = join(&path, name);
        // TOML keys differ by case where header names do not: both would be sent, or one would
        // be looked for twice.
        if out.iter().any(|(seen, _)| seen.eq_ignore_ascii_case(name)) {
            cx.invalid(
                key.span(),
                &header_path,
                Invalid::new(
                    format!(
                        "{} is named twice (header names are compared without case)",
                        name.to_ascii_lowercase()
                    ),
                    "each header once",
                ),
            );
            continue;
        }
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            cx.invalid(
                key.span(),
                &header_path,
                Invalid::new("invalid header name", "letters, digits and !#$%&'*+-.^_`|~"),
            );
            continue;
        }
        match value.get_ref() {
            DeValue::String(s) if s.bytes().all(|b| b == b'\t' || (b' '..0x7f).contains(&b)) => {
                out.push((name.to_ascii_lowercase(), s.to_string()));
            }
            _ => cx.invalid(
                value.span(),
                &header_path,
                Invalid::new(
                    "invalid header value",
                    "a string of visible ASCII characters and spaces",
                ),
            ),
        }
    }
    out
}

// === the document ===

fn document(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>) -> Config {
    let root = Tbl {
        map: root.get_ref(),
        at: 0,
        path: String::new(),
    };
    let known = [
        "admin",
        "runtime",
        "listeners",
        "routes",
        "upstreams",
        "outbox",
    ];
    cx.unknown_keys(root.map, "", &known);

    let admin = admin(cx, &root);
    let runtime = runtime(cx, &root);
    let listeners = listeners(cx, &root, &admin);
    let upstreams = upstreams(cx, &root);
    let outbox = cx
        .section(&root, "outbox", OUTBOX_KEYS)
        .map(|t| outbox(cx, &t));
    let routes = routes(cx, &root, &listeners, &upstreams, outbox.is_some());
    loops(cx, &routes, &listeners);
    Config {
        admin,
        runtime,
        listeners,
        routes,
        upstreams,
        outbox,
    }
}

/// Array-of-tables `key` of the root, each element with its index.
fn array_of_tables<'a, 'i>(
    cx: &mut Cx<'_>,
    root: &Tbl<'a, 'i>,
    key: &str,
    known: &[&str],
) -> Vec<(usize, Tbl<'a, 'i>)> {
    let Some(node) = root.get(key) else {
        return Vec::new();
    };
    let DeValue::Array(items) = node.get_ref() else {
        cx.invalid(
            node.span(),
            key,
            Invalid::new(
                format!(
                    "expected an array of tables, found {}",
                    node.get_ref().type_str()
                ),
                format!("[[{key}]] sections"),
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            cx.table(item, item.span().start, format!("{key}[{i}]"), known)
                .map(|t| (i, t))
        })
        .collect()
}

const ADMIN_KEYS: &[&str] = &["listen", "token_env", "metrics"];

fn admin(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Admin {
    let mut admin = Admin::default();
    if let Some(t) = cx.section(root, "admin", ADMIN_KEYS) {
        if let Some(listen) = cx.get(&t, "listen", socket_addr) {
            admin.listen = listen;
            // With no `[[listeners]]`, the default one listens there (see `listeners`, which
            // checks the clashes of those written).
            if root.get("listeners").is_none() && clash(listen, DEFAULT_LISTEN) {
                let message = format!(
                    "the listener there is when no [[listeners]] are written listens on \
                     {DEFAULT_LISTEN}{}",
                    covered(DEFAULT_LISTEN, listen)
                );
                cx.conflict(&t, "listen", message);
            }
        }
        admin.token_env = cx.get(&t, "token_env", |v| {
            let s = string(v)?;
            let valid = !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if valid {
                Ok(s)
            } else {
                Err(Invalid::new(
                    "invalid environment variable name",
                    "letters, digits and '_', not starting with a digit",
                ))
            }
        });
        if let Some(metrics) = cx.get(&t, "metrics", boolean) {
            admin.metrics = metrics;
        }
    }
    admin
}

const RUNTIME_KEYS: &[&str] = &["worker_threads", "drain_timeout"];

fn runtime(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Runtime {
    let mut runtime = Runtime {
        worker_threads: None,
        drain_timeout: Duration::from_secs(10),
    };
    let mut written = false;
    if let Some(t) = cx.section(root, "runtime", RUNTIME_KEYS) {
        written = t.get("worker_threads").is_some();
        runtime.worker_threads = cx
            .get(&t, "worker_threads", uint(1, 1024))
            .map(|n| n as usize);
        if let Some(d) = cx.get(&t, "drain_timeout", duration) {
            runtime.drain_timeout = d;
        }
    }
    // Written, even refused, the key is what counts, not the variable.
    if !written {
        threads_from_env(cx);
    }
    runtime
}

/// The variable tokio reads for its number of worker threads when `worker_threads` is left out.
const THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// Checks the variable `worker_threads` defaults to, which tokio would otherwise read itself as
/// the runtime starts: it panics on a value that is not a number, and takes any number, where
/// the key allows 1 to 1024. Checked here, `check` and `run` agree, and `run` says what is wrong
/// before it starts anything.
fn threads_from_env(cx: &mut Cx<'_>) {
    let Some(value) = std::env::var_os(THREADS_VAR) else {
        return;
    };
    let value = value.to_string_lossy();
    if matches!(value.parse::<u64>(), Ok(1..=1024)) {
        return;
    }
    cx.errors.push((
        0,
        Error {
            origin: cx.origin.to_owned(),
            position: None,
            path: "runtime.worker_threads".to_owned(),
            message: format!(
                "left out, so taken from the environment variable {THREADS_VAR}, which is not a \
                 number of threads"
            ),
            got: Some(format!("{value:?}")),
            allowed: Some(format!(
                "a whole number from 1 to 1024 in {THREADS_VAR}, or worker_threads written in \
                 [runtime], which takes precedence"
            )),
        },
    ));
}

// === listeners ===

/// The most header lines a listener may allow a request head.
const MAX_HEADERS: u32 = 10_000;

const LISTENER_KEYS: &[&str] = &[
    "name",
    "listen",
    "protocol",
    "max_connections",
    "header_read_timeout",
    "idle_timeout",
    "body_idle_timeout",
    "tunnel_idle_timeout",
    "max_header_bytes",
    "max_headers",
    "max_request_body",
    "h2_max_concurrent_streams",
    "park_idle_above",
];

/// Where the listener there is when no `[[listeners]]` are written listens.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// The least `max_header_bytes`.
const MIN_HEADER_BYTES: u64 = 1 << 10;

fn default_listener(name: String) -> Listener {
    Listener {
        name,
        listen: DEFAULT_LISTEN,
        protocol: ListenerProtocol::Auto,
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        body_idle_timeout: Duration::from_secs(30),
        tunnel_idle_timeout: Duration::from_secs(300),
        max_header_bytes: ByteSize(64 << 10),
        max_headers: 100,
        max_request_body: ByteSize(8 << 20),
        h2_max_concurrent_streams: 256,
        park_idle_above: 256,
    }
}

fn listeners(cx: &mut Cx<'_>, root: &Tbl<'_, '_>, admin: &Admin) -> Vec<Listener> {
    let tables = array_of_tables(cx, root, "listeners", LISTENER_KEYS);
    match root.get("listeners") {
        None => return vec![default_listener("listener-0".to_owned())],
        Some(node) if matches!(node.get_ref(), DeValue::Array(items) if items.is_empty()) => {
            cx.invalid(
                node.span(),
                "listeners",
                Invalid::new(
                    "a proxy needs at least one listener: with none it would serve nothing",
                    "[[listeners]] sections; with no `listeners` at all, there is one on \
                     127.0.0.1:8080",
                ),
            );
            // The default stands in, so that the routes are checked against a listener.
            return vec![default_listener("listener-0".to_owned())];
        }
        Some(_) => {}
    }
    let mut out: Vec<Listener> = Vec::new();
    // The listeners whose `listen` was refused.
    let mut invalid_listen: Vec<String> = Vec::new();
    for (i, t) in tables {
        let mut l = default_listener(
            cx.get(&t, "name", name)
                .unwrap_or_else(|| format!("listener-{i}")),
        );
        if let Some(v) = cx.get(&t, "listen", socket_addr) {
            l.listen = v;
        }
        if let Some(v) = cx.get(
            &t,
            "protocol",
            choice(&[
                ("auto", ListenerProtocol::Auto),
                ("http1", ListenerProtocol::Http1),
                ("http2", ListenerProtocol::Http2),
            ]),
        ) {
            l.protocol = v;
        }
        let u32_keys: [(&str, &mut u32); 2] = [
            ("max_connections", &mut l.max_connections),
            (
                "h2_max_concurrent_streams",
                &mut l.h2_max_concurrent_streams,
            ),
        ];
        for (key, slot) in u32_keys {
            if let Some(v) = cx.get(&t, key, u32_in(1, u32::MAX)) {
                *slot = v;
            }
        }
        // Room for this many lines is set aside to parse each head: past a few thousand it is
        // memory no request needs, and near u32::MAX more than any machine has.
        if let Some(v) = cx.get(&t, "max_headers", u32_in(1, MAX_HEADERS)) {
            l.max_headers = v;
        }
        if let Some(v) = cx.get(&t, "park_idle_above", u32_in(0, u32::MAX)) {
            l.park_idle_above = v;
        }
        let durations: [(&str, &mut Duration); 4] = [
            ("header_read_timeout", &mut l.header_read_timeout),
            ("idle_timeout", &mut l.idle_timeout),
            ("body_idle_timeout", &mut l.body_idle_timeout),
            ("tunnel_idle_timeout", &mut l.tunnel_idle_timeout),
        ];
        for (key, slot) in durations {
            if let Some(v) = cx.get(&t, key, positive) {
                *slot = v;
            }
        }
        // A head smaller than this holds no real request; HTTP/2 connections told a bound of 0
        // were cut off with GOAWAY, not answered 431. Envoy's least is the same.
        if let Some(v) = cx.get(&t, "max_header_bytes", |v| {
            size(v).and_then(|bytes| match bytes.0 {
                MIN_HEADER_BYTES.. => Ok(bytes),
                _ => Err(Invalid::new(
                    "too small for any request's head",
                    "1KiB or more",
                )),
            })
        }) {
            l.max_header_bytes = v;
        }
        if let Some(v) = cx.get(&t, "max_request_body", size) {
            l.max_request_body = v;
        }
        if let Some(first) = out.iter().find(|o| o.name == l.name) {
            let message = format!("duplicate listener name \"{}\"", first.name);
            cx.conflict(&t, "name", message);
        }
        // An address refused above is no address: the default put in its place would clash
        // with another for nothing.
        let refused = |cx: &Cx<'_>, path: &str| cx.errors.iter().any(|(_, e)| e.path == path);
        let listen_refused = refused(cx, &t.path("listen"));
        if listen_refused {
            invalid_listen.push(l.name.clone());
        } else if let Some(first) = out
            .iter()
            .filter(|o| !invalid_listen.contains(&o.name))
            .find(|o| clash(o.listen, l.listen))
        {
            let message = if first.listen == l.listen {
                format!(
                    "listener \"{}\" already listens on {}",
                    first.name, l.listen
                )
            } else {
                format!(
                    "listener \"{}\" already listens on {}{}",
                    first.name,
                    first.listen,
                    covered(first.listen, l.listen)
                )
            };
            cx.conflict(&t, "listen", message);
        }
        if !listen_refused && !refused(cx, "admin.listen") && clash(admin.listen, l.listen) {
            let message = if admin.listen == l.listen {
                "the admin API already listens on this address".to_owned()
            } else {
                format!(
                    "the admin API listens on {}{}",
                    admin.listen,
                    covered(admin.listen, l.listen)
                )
            };
            cx.conflict(&t, "listen", message);
        }
        out.push(l);
    }
    if out.is_empty() {
        // `listeners` refused whole (a table where an array of them goes, say), as an empty
        // array is: the default stands in, so that the routes are not refused for a listener
        // they cannot name.
        out.push(default_listener("listener-0".to_owned()));
    }
    out
}

/// Whether two sockets cannot both listen on `a` and `b`: the same port (not 0, which is the
/// kernel's choice and never the same twice) on the same address, or on addresses one of which
/// is a wildcard covering the other. `0.0.0.0` covers every IPv4 address, and `[::]` every
/// address, IPv4 ones too, as Linux binds it by default (`net.ipv6.bindv6only = 0`). An IPv4
/// address mapped into IPv6 (`[::ffff:127.0.0.1]`) is the IPv4 address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a == b
        || a == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        || b == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        || (a.is_ipv4() && b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}

/// Refuses an endpoint that is the listener of a route sending to its upstream: every request
/// would come back to that route, in a loop. An endpoint that is another listener of rampart's
/// is a chain of routes, which is fine.
fn loops(cx: &mut Cx<'_>, routes: &[Route], listeners: &[Listener]) {
    let mut refused: HashSet<&str> = HashSet::new();
    let mut found = Vec::new();
    let mut by_upstream: HashMap<&str, Vec<&Placed>> = HashMap::new();
    for placed in &cx.endpoints {
        by_upstream
            .entry(&placed.upstream)
            .or_default()
            .push(placed);
    }
    for route in routes {
        let Some(listener) = listeners.iter().find(|l| l.name == route.listener) else {
            continue;
        };
        let endpoints = by_upstream
            .get(route.upstream.as_str())
            .into_iter()
            .flatten();
        for placed in endpoints {
            if refused.contains(placed.path.as_str()) || !is_listener(&placed.endpoint, listener) {
                continue;
            }
            refused.insert(&placed.path);
            let message = format!(
                "endpoint {} is listener \"{}\" ({}), whose route \"{}\" sends to this \
                 upstream: every request would come back to it, in a loop",
                placed.endpoint, listener.name, listener.listen, route.name
            );
            found.push((placed.at, placed.path.clone(), message, placed.got.clone()));
        }
    }
    for (at, path, message, got) in found {
        cx.report(at, &path, message, Some(got), None);
    }
}

/// Whether `endpoint` is written as an address `listener` listens on: its own address, or a
/// loopback one under a listener on every address. A host name, or another address under such
/// a listener, may well be another machine.
fn is_listener(endpoint: &Endpoint, listener: &Listener) -> bool {
    let Ok(ip) = endpoint.host.parse::<IpAddr>() else {
        return false;
    };
    let ip = ip.to_canonical();
    let listen = listener.listen.ip().to_canonical();
    // `0.0.0.0` covers the IPv4 addresses only; `[::]` every one, as `clash` says.
    let covers = listen.is_unspecified() && (listen.is_ipv6() || ip.is_ipv4());
    listener.listen.port() == endpoint.port
        && (listen == ip || (covers && (ip.is_loopback() || ip.is_unspecified())))
}

/// Why the address written (`second`) clashes with one taken before (`first`), for the error.
fn covered(first: SocketAddr, second: SocketAddr) -> &'static str {
    let (a, b) = (first.ip(), second.ip());
    if a.to_canonical() == b.to_canonical() {
        return ", the same address";
    }
    match (a.is_unspecified(), a.is_ipv6()) {
        (true, true) => ", which takes this port on every address, IPv4 ones too",
        (true, false) => ", which takes this port on every IPv4 address",
        // The one written is the wildcard.
        (false, _) if b.is_ipv6() => {
            ", a port this address would take on every address, IPv4 ones too"
        }
        (false, _) => ", a port this address would take on every IPv4 address",
    }
}

// === upstreams ===

const UPSTREAM_KEYS: &[&str] = &[
    "endpoints",
    "backup",
    "protocol",
    "balance",
    "connect_timeout",
    "idle_timeout",
    "max_connection_age",
    "failure_status",
    "h2_max_concurrent_streams",
    "breaker",
    "health",
    "limits",
];
const BREAKER_KEYS: &[&str] = &[
    "enabled",
    "consecutive_failures",
    "failure_rate",
    "slow_call",
    "slow_call_rate",
    "window",
    "min_calls",
    "open_for",
    "open_for_max",
    "half_open_probes",
    "max_ejected_percent",
];
const HEALTH_KEYS: &[&str] = &[
    "path",
    "grpc",
    "interval",
    "timeout",
    "unhealthy_after",
    "healthy_after",
];
const LIMITS_KEYS: &[&str] = &[
    "max_concurrent",
    "max_pending",
    "pending_timeout",
    "rate",
    "burst",
];

fn upstreams(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Vec<Upstream> {
    let Some((key, node)) = root.map.get_key_value("upstreams") else {
        return Vec::new();
    };
    let DeValue::Table(map) = node.get_ref() else {
        cx.invalid(
            node.span(),
            "upstreams",
            Invalid::new("expected a table of upstreams", "[upstreams.NAME] sections"),
        );
        return Vec::new();
    };
    let _ = key;
    // The map is sorted by name; the file's order reads better in summaries.
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::new();
    for (key, node) in entries {
        let upstream_name: &str = key.get_ref();
        let path = join("upstreams", upstream_name);
        if let Err(invalid) = check_name(upstream_name) {
            cx.invalid(key.span(), &path, invalid);
        }
        if let Some(t) = cx.table(node, key.span().start, path, UPSTREAM_KEYS) {
            out.push(upstream(cx, upstream_name.to_owned(), &t));
        }
    }
    out
}

fn upstream(cx: &mut Cx<'_>, upstream_name: String, t: &Tbl<'_, '_>) -> Upstream {
    let endpoints = cx.items(t, "endpoints", endpoint).unwrap_or_default();
    match t.get("endpoints") {
        None => cx.missing(t, "endpoints", "an array of \"host:port\" strings"),
        Some(node)
            if endpoints.is_empty()
                && matches!(node.get_ref(), DeValue::Array(a) if a.is_empty()) =>
        {
            cx.invalid(
                node.span(),
                &t.path("endpoints"),
                Invalid::new(
                    "an upstream needs at least one endpoint",
                    "an array of \"host:port\" strings",
                ),
            );
        }
        Some(_) => {}
    }
    let backup = cx.items(t, "backup", endpoint).unwrap_or_default();
    // Each endpoint with where it was first listed; a repetition is blamed on itself.
    let mut seen: Vec<(&Endpoint, String)> = Vec::new();
    for (key, items) in [("endpoints", &endpoints), ("backup", &backup)] {
        for item in items {
            let at = format!("{key}[{}]", item.index);
            cx.endpoints.push(Placed {
                upstream: upstream_name.clone(),
                path: format!("{}[{}]", t.path(key), item.index),
                at: item.span.start,
                got: cx.raw(item.span.clone()),
                endpoint: item.value.clone(),
            });
            match seen.iter().find(|(e, _)| **e == item.value) {
                Some((e, first)) => {
                    let message = format!("endpoint {e} is listed twice: it is {first} already");
                    let got = Some(cx.raw(item.span.clone()));
                    let path = format!("{}[{}]", t.path(key), item.index);
                    cx.report(item.span.start, &path, message, got, None);
                }
                None => seen.push((&item.value, at)),
            }
        }
    }
    let endpoints: Vec<Endpoint> = endpoints.into_iter().map(|item| item.value).collect();
    let backup: Vec<Endpoint> = backup.into_iter().map(|item| item.value).collect();
    let protocol = cx
        .get(
            t,
            "protocol",
            choice(&[
                ("http1", UpstreamProtocol::Http1),
                ("http2", UpstreamProtocol::Http2),
                ("grpc", UpstreamProtocol::Grpc),
            ]),
        )
        .unwrap_or(UpstreamProtocol::Http1);
    let balance = cx
        .get(
            t,
            "balance",
            choice(&[
                ("p2c-ewma", Balance::P2cEwma),
                ("round-robin", Balance::RoundRobin),
                ("least-request", Balance::LeastRequest),
                ("random", Balance::Random),
            ]),
        )
        .unwrap_or(Balance::P2cEwma);
    let connect_timeout = cx
        .get(t, "connect_timeout", positive)
        .unwrap_or(Duration::from_secs(1));
    let idle_timeout = cx
        .get(t, "idle_timeout", positive)
        .unwrap_or(match protocol {
            UpstreamProtocol::Http1 => Duration::from_secs(4),
            UpstreamProtocol::Http2 | UpstreamProtocol::Grpc => Duration::from_secs(90),
        });
    let max_connection_age = cx
        .get(t, "max_connection_age", positive)
        .unwrap_or(Duration::from_secs(3600));
    let failure_status = cx
        .list(t, "failure_status", status_match)
        .unwrap_or_else(|| vec![StatusMatch::Class5xx]);
    let h2_max_concurrent_streams = cx
        .get(t, "h2_max_concurrent_streams", u32_in(1, u32::MAX))
        .unwrap_or(100);
    let breaker = breaker(cx, t);
    let health = cx
        .section(t, "health", HEALTH_KEYS)
        .map(|h| health(cx, &h, protocol));
    let limits = limits(cx, t);
    Upstream {
        name: upstream_name,
        endpoints,
        backup,
        protocol,
        balance,
        connect_timeout,
        idle_timeout,
        max_connection_age,
        failure_status,
        h2_max_concurrent_streams,
        breaker,
        health,
        limits,
    }
}

fn status_match(v: &DeValue<'_>) -> Result<StatusMatch, Invalid> {
    let allowed = "\"5xx\" or an exact status from 100 to 599 (503 or \"503\")";
    let code = match v {
        DeValue::String(s) if s == "5xx" => return Ok(StatusMatch::Class5xx),
        DeValue::String(s) => s.parse::<u16>().ok(),
        DeValue::Integer(_) => integer(v).and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    match code {
        Some(code) if (100..=599).contains(&code) => Ok(StatusMatch::Exact(code)),
        _ => Err(Invalid::new("not a status or status class", allowed)),
    }
}

fn breaker(cx: &mut Cx<'_>, upstream: &Tbl<'_, '_>) -> Breaker {
    let mut b = Breaker {
        enabled: true,
        consecutive_failures: 5,
        failure_rate: 0.5,
        slow_call: Duration::from_secs(1),
        slow_call_rate: 1.0,
        window: Duration::from_secs(10),
        min_calls: 20,
        open_for: Duration::from_secs(5),
        open_for_max: Duration::from_secs(60),
        half_open_probes: 3,
        max_ejected_percent: 50,
    };
    let Some(t) = cx.section(upstream, "breaker", BREAKER_KEYS) else {
        return b;
    };
    if let Some(v) = cx.get(&t, "enabled", boolean) {
        b.enabled = v;
    }
    if let Some(v) = cx.get(&t, "consecutive_failures", u32_in(0, u32::MAX)) {
        b.consecutive_failures = v;
    }
    if let Some(v) = cx.get(
        &t,
        "failure_rate",
        trip_rate("a number more than 0 and at most 1.0 (0.5 is half)"),
    ) {
        b.failure_rate = v;
    }
    if let Some(v) = cx.get(&t, "slow_call", positive) {
        b.slow_call = v;
    }
    if let Some(v) = cx.get(
        &t,
        "slow_call_rate",
        trip_rate("a number more than 0 and at most 1.0 (1.0 turns this trigger off)"),
    ) {
        b.slow_call_rate = v;
    }
    if let Some(v) = cx.get(&t, "window", positive) {
        b.window = v;
    }
    if let Some(v) = cx.get(&t, "min_calls", u32_in(1, u32::MAX)) {
        b.min_calls = v;
    }
    let open_for = cx.get(&t, "open_for", positive);
    let open_for_max = cx.get(&t, "open_for_max", positive);
    b.open_for = open_for.unwrap_or(b.open_for);
    b.open_for_max = open_for_max.unwrap_or(b.open_for_max);
    if b.open_for_max < b.open_for {
        let message = format!(
            "open_for_max ({}) must be at least open_for ({})",
            crate::value::format_duration(b.open_for_max),
            crate::value::format_duration(b.open_for)
        );
        let key = if open_for_max.is_some() {
            "open_for_max"
        } else {
            "open_for"
        };
        cx.conflict(&t, key, message);
    }
    if let Some(v) = cx.get(&t, "half_open_probes", u32_in(1, u32::MAX)) {
        b.half_open_probes = v;
    }
    if let Some(v) = cx.get(&t, "max_ejected_percent", percent) {
        b.max_ejected_percent = v;
    }
    b
}

fn health(cx: &mut Cx<'_>, t: &Tbl<'_, '_>, protocol: UpstreamProtocol) -> Health {
    let path = cx.get(t, "path", path_value);
    let grpc = cx.get(t, "grpc", boolean);
    let check = match (path, grpc, t.get("path").is_some()) {
        (Some(_), Some(true), _) => {
            cx.conflict(t, "grpc", "set either `path` or `grpc = true`, not both");
            HealthCheck::Grpc
        }
        (Some(path), _, _) => HealthCheck::Http(path),
        (None, Some(true), _) => {
            if protocol == UpstreamProtocol::Http1 {
                cx.conflict(
                    t,
                    "grpc",
                    "gRPC health checks need HTTP/2: set the upstream's protocol to \"grpc\" or \"http2\"",
                );
            }
            HealthCheck::Grpc
        }
        (None, _, false) => {
            cx.missing(t, "path", "`path = \"/healthz\"` or `grpc = true`");
            HealthCheck::Grpc
        }
        // A bad path, already reported.
        (None, _, true) => HealthCheck::Grpc,
    };
    let interval = cx
        .get(t, "interval", positive)
        .unwrap_or(Duration::from_secs(2));
    let timeout = cx
        .get(t, "timeout", positive)
        .unwrap_or(Duration::from_secs(1));
    if timeout > interval {
        cx.conflict(
            t,
            "timeout",
            format!(
                "a health check timeout ({}) must not be longer than its interval ({})",
                crate::value::format_duration(timeout),
                crate::value::format_duration(interval)
            ),
        );
    }
    Health {
        check,
        interval,
        timeout,
        unhealthy_after: cx.get(t, "unhealthy_after", u32_in(1, 1000)).unwrap_or(2),
        healthy_after: cx.get(t, "healthy_after", u32_in(1, 1000)).unwrap_or(2),
    }
}

fn limits(cx: &mut Cx<'_>, upstream: &Tbl<'_, '_>) -> Limits {
    let mut l = Limits {
        max_concurrent: MaxConcurrent::Fixed(256),
        max_pending: 128,
        pending_timeout: Duration::from_millis(100),
        rate: None,
        burst: None,
    };
    let Some(t) = cx.section(upstream, "limits", LIMITS_KEYS) else {
        return l;
    };
    const MAX_CONCURRENT_ALLOWED: &str = "a whole number from 1 to 4294967295, or \"adaptive\"";
    if let Some(v) = cx.get(&t, "max_concurrent", |v| match v {
        DeValue::String(s) if s == "adaptive" => Ok(MaxConcurrent::Adaptive),
        DeValue::Integer(_) => u32_in(1, u32::MAX)(v)
            .map(MaxConcurrent::Fixed)
            .map_err(|e| Invalid::new(e.message, MAX_CONCURRENT_ALLOWED)),
        DeValue::String(s) if closest(s, ["adaptive"]).is_some() => Err(Invalid::new(
            "unknown value; did you mean \"adaptive\"?",
            MAX_CONCURRENT_ALLOWED,
        )),
        _ => Err(Invalid::new(
            "expected a number or \"adaptive\"",
            MAX_CONCURRENT_ALLOWED,
        )),
    }) {
        l.max_concurrent = v;
    }
    // The adaptive limit queues nothing (a queue would hide from it the queueing it learns
    // from): a queue's settings beside it would be read and do nothing.
    if l.max_concurrent == MaxConcurrent::Adaptive {
        for key in ["max_pending", "pending_timeout"] {
            if t.get(key).is_some() {
                cx.conflict(
                    &t,
                    key,
                    format!(
                        "`{key}` does not apply to `max_concurrent = \"adaptive\"`, which queues \
                         nothing: remove it, or set a fixed `max_concurrent`"
                    ),
                );
            }
        }
    }
    if let Some(v) = cx.get(&t, "max_pending", u32_in(0, u32::MAX)) {
        l.max_pending = v;
    }
    if let Some(v) = cx.get(&t, "pending_timeout", duration) {
        l.pending_timeout = v;
    }
    l.rate = cx.get(&t, "rate", |v| match v {
        DeValue::String(s) => Rate::parse(s),
        other => Err(Invalid::new(
            format!("expected a rate, found {}", other.type_str()),
            crate::value::RATE_ALLOWED,
        )),
    });
    l.burst = cx.get(&t, "burst", u32_in(1, u32::MAX));
    if l.burst.is_some() && t.get("rate").is_none() {
        cx.conflict(&t, "burst", "`burst` needs a `rate`");
    }
    l
}

// === outbox ===

const OUTBOX_KEYS: &[&str] = &[
    "store",
    "path",
    "nats",
    "max_messages",
    "max_bytes",
    "max_buffered",
    "on_full",
    "max_age",
    "retention",
    "retry",
];

fn backoff(cx: &mut Cx<'_>, parent: &Tbl<'_, '_>, key: &str, default: Backoff) -> Backoff {
    let Some(t) = cx.section(parent, key, &["base", "max"]) else {
        return default;
    };
    let base = cx.get(&t, "base", positive).unwrap_or(default.base);
    let max = cx.get(&t, "max", positive).unwrap_or(default.max);
    if max < base {
        // The one left out is its default, which the reader did not write.
        let default = |written: bool| if written { "" } else { ", the default" };
        let message = format!(
            "the backoff's max ({}{}) must be at least its base ({}{})",
            crate::value::format_duration(max),
            default(t.get("max").is_some()),
            crate::value::format_duration(base),
            default(t.get("base").is_some()),
        );
        let key = if t.get("max").is_some() {
            "max"
        } else {
            "base"
        };
        cx.conflict(&t, key, message);
    }
    Backoff { base, max }
}

/// The largest fallback body, inline or in a `body_file`: a stand-in answer is short, and it is
/// held in memory and read again on every reload.
const MAX_FALLBACK_BODY: u64 = 1 << 20;

const FALLBACK_BODY_ALLOWED: &str = "at most 1 MiB (1048576 bytes)";

/// A fallback's body from `path`: an existing regular file of at most [`MAX_FALLBACK_BODY`]
/// bytes, looked at before it is read so that a FIFO or a device is not read at all. Else what
/// is wrong with it.
fn read_body_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = path.display();
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no such file: {file}"));
        }
        Err(e) => return Err(format!("cannot read {file}: {e}")),
    };
    if metadata.is_dir() {
        return Err(format!("{file} is a directory, not a file"));
    }
    // A FIFO or a device would be read without end, or block the read.
    if !metadata.is_file() {
        return Err(format!("{file} is not a regular file"));
    }
    if metadata.len() > MAX_FALLBACK_BODY {
        return Err(format!(
            "{file} is {} bytes; a fallback body is {FALLBACK_BODY_ALLOWED}",
            metadata.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {file}: {e}"))
}

/// `[outbox] nats.url`: one server, or several separated by commas, each `nats://` or `tls://`
/// (the first at least), credentials if any, a host, and a port from 1 to 65535 if any; what
/// the NATS client would refuse as the store opens, refused with the file.
fn nats_url(v: &DeValue<'_>) -> Result<String, Invalid> {
    const ALLOWED: &str = "nats://HOST:PORT or tls://HOST:PORT, several separated by commas, \
                           credentials as nats://USER:PASSWORD@HOST:PORT";
    let url = string(v)?;
    // A URL refused is not shown if it may hold credentials: parsed wrong (a `/` or a `,` in a
    // password, unencoded), its credentials are where its host or next server should be.
    let shown = |i: usize, server: &str| {
        if url.contains('@') {
            format!("{}", i + 1)
        } else {
            format!("{} ({server})", i + 1)
        }
    };
    for (i, server) in url.split(',').map(str::trim).enumerate() {
        let rest = server
            .strip_prefix("nats://")
            .or_else(|| server.strip_prefix("tls://"));
        // The servers after the first may leave their scheme out, as the client takes them.
        let Some(rest) = rest.or_else(|| (i > 0 && !server.contains("://")).then_some(server))
        else {
            let message = format!(
                "the URL's server {} is not nats:// or tls://",
                shown(i, server)
            );
            return Err(Invalid::new(message, ALLOWED));
        };
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        // The credentials end at the last `@`: a password may hold one.
        let address = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = match address.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, port)) => (host, port.strip_prefix(':')),
                None => ("", None),
            },
            None => match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            },
        };
        let bad = if host.is_empty() {
            Some("has no host")
        } else if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            Some("has a host that is no host name or address")
        } else if port.is_some_and(|port| !matches!(port.parse::<u16>(), Ok(1..))) {
            Some("has a port that is not a number from 1 to 65535")
        } else {
            None
        };
        if let Some(bad) = bad {
            let message = format!("the URL's server {} {bad}", shown(i, server));
            return Err(Invalid::new(message, ALLOWED));
        }
    }
    Ok(url)
}

/// `path` resolved against the configuration file's directory, when there is a file: what a
/// file names is where the file says, whatever directory rampart runs in (a service manager's
/// is often `/`). Relative to the working directory for a text without a file.
fn relative_to_file(base_dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

fn outbox(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> Outbox {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Embedded,
        Nats,
    }
    let kind = cx
        .get(
            t,
            "store",
            choice(&[("embedded", Kind::Embedded), ("nats", Kind::Nats)]),
        )
        .unwrap_or(Kind::Embedded);
    // `nats` may stand beside `store = "embedded"`, so that switching stores is one word: it is
    // checked all the same, and used only by `store = "nats"`.
    let nats = cx.section(t, "nats", &["url", "stream"]).map(|n| {
        // Refused without its credentials: an error is printed, logged, and a reload's is the
        // admin API's answer.
        let url = n
            .get("url")
            .and_then(|node| match nats_url(node.get_ref()) {
                Ok(url) => Some(url),
                Err(invalid) => {
                    let raw = cx.raw(node.span());
                    let got = if raw.contains('@') {
                        "a URL with credentials, not shown".to_owned()
                    } else {
                        raw
                    };
                    let (at, path) = (node.span().start, n.path("url"));
                    cx.report(at, &path, invalid.message, Some(got), Some(invalid.allowed));
                    None
                }
            });
        if n.get("url").is_none() {
            cx.missing(&n, "url", "a NATS URL like \"nats://127.0.0.1:4222\"");
        }
        OutboxStore::Nats {
            url: url.unwrap_or_default(),
            stream: cx
                .get(&n, "stream", stream_name)
                .unwrap_or_else(|| "RAMPART_OUTBOX".to_owned()),
        }
    });
    let store = match (kind, nats) {
        (Kind::Nats, Some(nats)) => nats,
        (Kind::Nats, None) => {
            cx.conflict(
                t,
                "store",
                "store = \"nats\" needs `nats = { url = \"nats://...\" }`",
            );
            OutboxStore::Embedded
        }
        (Kind::Embedded, _) => OutboxStore::Embedded,
    };
    let outbox = Outbox {
        store,
        path: cx
            .get(t, "path", |v| {
                let path = string(v)?;
                if path.is_empty() {
                    return Err(Invalid::new(
                        "an empty path",
                        "a directory, like \"rampart-data/outbox\"",
                    ));
                }
                Ok(PathBuf::from(path))
            })
            .map(|path| relative_to_file(cx.base_dir, path))
            .unwrap_or_else(|| relative_to_file(cx.base_dir, PathBuf::from("rampart-data/outbox"))),
        max_messages: cx
            .get(t, "max_messages", uint(1, u64::from(u32::MAX)))
            .unwrap_or(100_000),
        max_bytes: cx
            .get(t, "max_bytes", nonzero_size)
            .unwrap_or(ByteSize(1 << 30)),
        max_buffered: cx
            .get(t, "max_buffered", nonzero_size)
            .unwrap_or(ByteSize(64 << 20)),
        on_full: cx
            .get(
                t,
                "on_full",
                choice(&[
                    ("reject", OnFull::Reject),
                    ("drop-oldest", OnFull::DropOldest),
                ]),
            )
            .unwrap_or(OnFull::Reject),
        max_age: cx
            .get(t, "max_age", positive)
            .unwrap_or(Duration::from_secs(86_400)),
        retention: cx
            .get(t, "retention", positive)
            .unwrap_or(Duration::from_secs(3600)),
        retry: backoff(
            cx,
            t,
            "retry",
            Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(30),
            },
        ),
    };
    // Checked with the file, as a `body_file` is: `run` would fail to open the store there, or
    // to make its directory under a file.
    let existing = outbox
        .path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists());
    if let Some(file) = existing
        .filter(|p| cx.base_dir.is_some() && outbox.store == OutboxStore::Embedded && !p.is_dir())
    {
        let message = if file == outbox.path {
            format!("{} is not a directory", file.display())
        } else {
            format!(
                "{} cannot be made: {} is not a directory",
                outbox.path.display(),
                file.display()
            )
        };
        cx.conflict(t, "path", message);
    }
    outbox
}

// === routes ===

const ROUTE_KEYS: &[&str] = &[
    "name",
    "listener",
    "match",
    "upstream",
    "timeout",
    "per_try_timeout",
    "retry",
    "hedge",
    "fallback",
    "fault",
    "async",
];
const MATCH_KEYS: &[&str] = &["path_prefix", "path", "host", "method", "headers"];
const RETRY_KEYS: &[&str] = &[
    "attempts",
    "backoff",
    "on",
    "budget",
    "methods",
    "max_replay_body",
];
const FALLBACK_KEYS: &[&str] = &["on", "status", "headers", "body", "body_file", "stale"];
const FAULT_KEYS: &[&str] = &[
    "delay",
    "delay_percent",
    "abort_status",
    "abort_grpc_status",
    "abort_percent",
];

const RETRY_ON_ALLOWED: &str = "connect-failure, reset, refused-stream, timeout, 5xx, a status like \"503\", grpc-<code> (grpc-unavailable, grpc-deadline-exceeded, grpc-resource-exhausted, ...)";

fn retry_on(v: &DeValue<'_>) -> Result<RetryOn, Invalid> {
    if let Some(code) = integer(v) {
        return u16::try_from(code)
            .ok()
            .filter(|code| (100..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .map(RetryOn::Status)
            .ok_or_else(|| Invalid::new("not an HTTP status", RETRY_ON_ALLOWED));
    }
    let s = string(v).map_err(|e| Invalid::new(e.message, RETRY_ON_ALLOWED))?;
    // The proxy's own parser: what is accepted here is exactly what the proxy matches.
    if let Ok(token) = s.parse::<RetryOn>() {
        return Ok(token);
    }
    let mut names: Vec<String> = [
        "connect-failure",
        "reset",
        "refused-stream",
        "timeout",
        "5xx",
    ]
    .iter()
    .map(|n| (*n).to_owned())
    .collect();
    names.extend(
        GrpcCode::ALL
            .iter()
            .filter(|code| **code != GrpcCode::Ok)
            .map(|code| format!("grpc-{}", code.name())),
    );
    let message = match closest(&s, names.iter().map(String::as_str)) {
        Some(near) => format!("unknown retry condition; did you mean \"{near}\"?"),
        None => "unknown retry condition".to_owned(),
    };
    Err(Invalid::new(message, RETRY_ON_ALLOWED))
}

fn fallback_on(v: &DeValue<'_>) -> Result<String, Invalid> {
    let reasons = || Reason::ALL.iter().map(|reason| reason.as_str());
    let allowed = format!("5xx, {}", reasons().collect::<Vec<_>>().join(", "));
    let s = string(v).map_err(|e| Invalid::new(e.message, allowed.clone()))?;
    if s == "5xx" || s.parse::<Reason>().is_ok() {
        return Ok(s);
    }
    let message = match closest(&s, reasons().chain(["5xx"])) {
        Some(near) => format!("unknown fallback reason; did you mean \"{near}\"?"),
        None => "unknown fallback reason".to_owned(),
    };
    Err(Invalid::new(message, allowed))
}

fn routes(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    listeners: &[Listener],
    upstreams: &[Upstream],
    has_outbox: bool,
) -> Vec<Route> {
    let tables = array_of_tables(cx, root, "routes", ROUTE_KEYS);
    let mut out: Vec<Route> = Vec::new();
    // Looked up by name for each route: a file of thousands of routes must not take a scan of
    // them all for each.
    let upstream_names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let mut route_names: HashSet<String> = HashSet::new();
    for (i, t) in tables {
        let route_name = cx
            .get(&t, "name", name)
            .unwrap_or_else(|| format!("route-{i}"));
        if !route_names.insert(route_name.clone()) {
            let message = format!("duplicate route name \"{route_name}\"");
            cx.conflict(&t, "name", message);
        }
        let listener = route_listener(cx, &t, listeners);
        let upstream = match cx.get(&t, "upstream", string) {
            Some(u) if upstream_names.contains(u.as_str()) => u,
            Some(u) => {
                let names: Vec<&str> = upstreams.iter().map(|x| x.name.as_str()).collect();
                let message = match closest(&u, names.iter().copied()) {
                    Some(near) => format!("no upstream named {u:?}; did you mean \"{near}\"?"),
                    None => format!("no upstream named {u:?}"),
                };
                let node = t.get("upstream").expect("read above");
                let allowed = if names.is_empty() {
                    "the name of an [upstreams.NAME] section (there is none)".to_owned()
                } else {
                    names.join(", ")
                };
                cx.invalid(
                    node.span(),
                    &t.path("upstream"),
                    Invalid::new(message, allowed),
                );
                u
            }
            None => {
                if t.get("upstream").is_none() {
                    cx.missing(&t, "upstream", "the name of an [upstreams.NAME] section");
                }
                String::new()
            }
        };
        let matcher = cx
            .section(&t, "match", MATCH_KEYS)
            .map(|m| route_match(cx, &m))
            .unwrap_or_default();
        let timeout = cx
            .get(&t, "timeout", positive)
            .unwrap_or(Duration::from_secs(15));
        let per_try_timeout = cx.get(&t, "per_try_timeout", positive);
        if per_try_timeout.is_some_and(|p| p > timeout) {
            let message = format!(
                "per_try_timeout must not be longer than the route's timeout ({})",
                crate::value::format_duration(timeout)
            );
            cx.conflict(&t, "per_try_timeout", message);
        }
        let retry = retry(cx, &t);
        let hedge = cx.section(&t, "hedge", &["after", "max_extra"]).map(|h| {
            let after = cx
                .get(&h, "after", hedge_after)
                .unwrap_or(HedgeAfter::Percentile(95.0));
            // An attempt is given up at its per-try timeout, or at the route's: a hedge
            // that waits as long is never sent.
            let (bound, key) = match per_try_timeout {
                Some(per_try) => (per_try, "per_try_timeout"),
                None => (timeout, "timeout"),
            };
            if matches!(after, HedgeAfter::Delay(delay) if delay >= bound) {
                let message = format!(
                    "a hedge must wait less than the route's {key} ({}): an attempt is \
                         given up then, so no hedge would ever be sent",
                    crate::value::format_duration(bound)
                );
                cx.conflict(&h, "after", message);
            }
            Hedge {
                after,
                max_extra: cx.get(&h, "max_extra", u32_in(1, 10)).unwrap_or(1),
            }
        });
        let fallback = cx
            .section(&t, "fallback", FALLBACK_KEYS)
            .map(|f| fallback(cx, &f));
        let fault = cx.section(&t, "fault", FAULT_KEYS).map(|f| fault(cx, &f));
        let mut async_enabled = false;
        let mut async_concurrency = 1;
        if let Some(a) = cx.section(&t, "async", &["enabled", "concurrency"]) {
            async_enabled = cx.get(&a, "enabled", boolean).unwrap_or(false);
            async_concurrency = cx.get(&a, "concurrency", u32_in(1, 1024)).unwrap_or(1);
            if async_enabled && !has_outbox {
                cx.conflict(
                    &a,
                    "enabled",
                    "an async route needs an [outbox] section to store its messages",
                );
            }
        }
        out.push(Route {
            name: route_name,
            listener,
            matcher,
            upstream,
            timeout,
            per_try_timeout,
            retry,
            hedge,
            fallback,
            fault,
            async_enabled,
            async_concurrency,
        });
    }
    out
}

fn route_listener(cx: &mut Cx<'_>, t: &Tbl<'_, '_>, listeners: &[Listener]) -> String {
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    match cx.get(t, "listener", string) {
        Some(l) if names.contains(&l.as_str()) => l,
        Some(l) => {
            let message = match closest(&l, names.iter().copied()) {
                Some(near) => format!("no listener named {l:?}; did you mean \"{near}\"?"),
                None => format!("no listener named {l:?}"),
            };
            let node = t.get("listener").expect("read above");
            cx.invalid(
                node.span(),
                &t.path("listener"),
                Invalid::new(message, names.join(", ")),
            );
            l
        }
        None if t.get("listener").is_some() => String::new(),
        None => match names.as_slice() {
            [only] => (*only).to_owned(),
            _ => {
                let path = t.path("listener");
                cx.report(
                    t.at,
                    &path,
                    "a route must name its listener when there are several",
                    None,
                    Some(names.join(", ")),
                );
                String::new()
            }
        },
    }
}

fn route_match(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> Match {
    let m = Match {
        path_prefix: cx.get(t, "path_prefix", match_path),
        path: cx.get(t, "path", match_path),
        host: cx.get(t, "host", |v| {
            let s = string(v)?;
            let name = s
                .strip_prefix('*')
                .or_else(|| s.strip_suffix('*'))
                .unwrap_or(&s);
            let valid = s == "*"
                || (!name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if valid {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(Invalid::new(
                    "invalid host",
                    "a host name without port, like \"orders.internal\", with at most one `*` \
                     for one character or more, first (\"*.example.com\") or last \
                     (\"example.*\"), or `*` alone for any host",
                ))
            }
        }),
        method: cx.get(t, "method", method),
        headers: headers(cx, t, "headers"),
    };
    if t.get("path").is_some() && t.get("path_prefix").is_some() {
        cx.conflict(t, "path", "set either `path` or `path_prefix`, not both");
    }
    // HTTP/2 carries the host in `:authority`, and no `host` header: such a match would hold
    // over HTTP/1.1 only.
    let written = match t.get("headers").map(Spanned::get_ref) {
        Some(DeValue::Table(map)) => map
            .iter()
            .find(|(name, _)| name.get_ref().eq_ignore_ascii_case("host")),
        _ => None,
    };
    if let Some((name, _)) = written {
        cx.report(
            name.span().start,
            &join(&t.path("headers"), name.get_ref()),
            "a request's host is matched with `host`, which reads HTTP/2's :authority too; a \
             `host` header is HTTP/1.1's alone",
            None,
            Some("match = { host = \"orders.internal\" }".to_owned()),
        );
    }
    m
}

fn retry(cx: &mut Cx<'_>, route: &Tbl<'_, '_>) -> Retry {
    let mut r = Retry {
        attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
        },
        on: vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::RefusedStream,
            RetryOn::Timeout,
            RetryOn::Status(StatusCode::BAD_GATEWAY),
            RetryOn::Status(StatusCode::SERVICE_UNAVAILABLE),
            RetryOn::Status(StatusCode::GATEWAY_TIMEOUT),
            RetryOn::Grpc(GrpcCode::Unavailable),
        ],
        budget_ratio: 0.2,
        budget_min_per_sec: 10,
        methods: ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]
            .map(str::to_owned)
            .to_vec(),
        max_replay_body: ByteSize(64 << 10),
    };
    let Some(t) = cx.section(route, "retry", RETRY_KEYS) else {
        return r;
    };
    if let Some(v) = cx.get(&t, "attempts", u32_in(1, 10)) {
        r.attempts = v;
    }
    r.backoff = backoff(cx, &t, "backoff", r.backoff);
    if let Some(v) = cx.list(&t, "on", retry_on) {
        r.on = v;
    }
    if let Some(b) = cx.section(&t, "budget", &["ratio", "min_per_sec"]) {
        if let Some(v) = cx.get(&b, "ratio", ratio) {
            r.budget_ratio = v;
        }
        if let Some(v) = cx.get(&b, "min_per_sec", u32_in(0, u32::MAX)) {
            r.budget_min_per_sec = v;
        }
    }
    if let Some(v) = cx.list(&t, "methods", method) {
        r.methods = v;
    }
    if let Some(v) = cx.get(&t, "max_replay_body", size) {
        r.max_replay_body = v;
    }
    r
}

fn hedge_after(v: &DeValue<'_>) -> Result<HedgeAfter, Invalid> {
    let allowed =
        "a delay like \"100ms\", or a percentile of observed latency like \"p95\" (p1 to p99.9)";
    if let DeValue::String(s) = v
        && let Some(p) = s.strip_prefix('p')
    {
        return match p.parse::<f64>() {
            Ok(p) if (1.0..=99.9).contains(&p) => Ok(HedgeAfter::Percentile(p)),
            _ => Err(Invalid::new("invalid percentile", allowed)),
        };
    }
    positive(v)
        .map(HedgeAfter::Delay)
        .map_err(|e| Invalid::new(e.message, allowed))
}

fn fallback(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> Fallback {
    // By default, whatever leaves the client without an answer from the upstream: refused by a
    // breaker or the limits, no endpoint to take it, no answer in time, and the upstream down
    // (a connection refused or broken off, an answer that is not HTTP, and the retry of one of
    // those that the budget refused): the failures of a service that died, which the route's
    // fallback is there for. Not the upstream's own answers (`5xx`).
    let on = cx.list(t, "on", fallback_on).unwrap_or_else(|| {
        [
            "breaker-open",
            "no-healthy-endpoint",
            "timeout",
            "overloaded",
            "upstream-connect",
            "upstream-reset",
            "upstream-invalid",
            "retry-budget-exhausted",
        ]
        .map(str::to_owned)
        .to_vec()
    });
    if matches!(t.get("on").map(Spanned::get_ref), Some(DeValue::Array(a)) if a.is_empty()) {
        cx.conflict(
            t,
            "on",
            "a fallback on nothing never answers: leave `on` out for its default, or \
             [routes.fallback] out for none",
        );
    }
    let body = cx.get(t, "body", |v| {
        let text = string(v)?;
        if text.len() as u64 > MAX_FALLBACK_BODY {
            return Err(Invalid::new(
                format!("the body is {} bytes", text.len()),
                FALLBACK_BODY_ALLOWED,
            ));
        }
        Ok(text)
    });
    let body_file = cx.get(t, "body_file", string);
    let body = match (body, body_file) {
        (Some(_), Some(_)) => {
            cx.conflict(t, "body_file", "set either `body` or `body_file`, not both");
            FallbackBody::Inline(String::new())
        }
        (Some(text), None) => FallbackBody::Inline(text),
        (None, Some(file)) => {
            let path = relative_to_file(cx.base_dir, PathBuf::from(&file));
            let content = match cx.base_dir.map(|_| read_body_file(&path)) {
                Some(Ok(content)) => Some(content),
                Some(Err(message)) => {
                    cx.conflict(t, "body_file", message);
                    None
                }
                None => None,
            };
            FallbackBody::File { path, content }
        }
        (None, None) => FallbackBody::Inline(String::new()),
    };
    let status = cx
        .get(t, "status", |v| match status(100)(v) {
            Ok(101) => Err(Invalid::new(
                "101 switches protocols, which a fallback cannot do",
                FALLBACK_STATUS_ALLOWED,
            )),
            Ok(code @ 100..=199) => Err(Invalid::new(
                format!("{code} is an interim status: the client would wait for a final answer"),
                FALLBACK_STATUS_ALLOWED,
            )),
            Ok(code) => Ok(code),
            Err(invalid) => Err(Invalid::new(invalid.message, FALLBACK_STATUS_ALLOWED)),
        })
        .unwrap_or(200);
    let headers = headers(cx, t, "headers");
    reserved_headers(cx, t);
    grpc_fallback(cx, t, status, &headers, &body);
    // Sent, the body would be dropped on the way (HTTP/1.1, RFC 9110 §15.3.5 and §15.4.5), or
    // read as the start of the next answer.
    let has_body = match &body {
        FallbackBody::Inline(text) => !text.is_empty(),
        FallbackBody::File { .. } => true,
    };
    if matches!(status, 204 | 304) && has_body {
        let key = if t.get("body").is_some() {
            "body"
        } else {
            "body_file"
        };
        cx.conflict(t, key, format!("a {status} answer has no body"));
    }
    Fallback {
        on,
        status,
        headers,
        body,
        stale: cx.get(t, "stale", positive),
    }
}

const FALLBACK_STATUS_ALLOWED: &str = "a whole number from 200 to 599";

/// Headers that frame the message or are about one connection, not the answer: rampart sets them
/// itself, and a fallback's own would desynchronise the connection (a `content-length` that does
/// not match the body makes the client read the rest as the next response).
const CONNECTION_HEADERS: [(&str, &str); 8] = [
    ("content-length", "rampart sets it from the body"),
    ("transfer-encoding", "rampart frames the body itself"),
    (
        "connection",
        "it is about the connection, which rampart manages",
    ),
    (
        "keep-alive",
        "it is about the connection, which rampart manages",
    ),
    (
        "proxy-connection",
        "it is about the connection, which rampart manages",
    ),
    ("upgrade", "a fallback switches no protocol"),
    ("te", "it is about the request's connection, not an answer"),
    ("trailer", "a fallback sends no trailers of its own"),
];

/// Reports every header of a fallback's `headers` table that rampart keeps to itself, at its
/// key: an `x-rampart-` one, or one that [`CONNECTION_HEADERS`] names.
fn reserved_headers(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) {
    let Some(DeValue::Table(map)) = t.get("headers").map(Spanned::get_ref) else {
        return;
    };
    let path = t.path("headers");
    for (key, _) in map.iter() {
        let name: &str = key.get_ref();
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-rampart-") {
            cx.invalid(
                key.span(),
                &join(&path, name),
                Invalid::new(
                    format!(
                        "a fallback may not set {lower}: rampart sets its own x-rampart- \
                         headers (x-rampart-fallback on every fallback), which a rampart in \
                         front reads"
                    ),
                    "any header but the x-rampart- ones and the framing ones",
                ),
            );
            continue;
        }
        let Some((_, why)) = CONNECTION_HEADERS.iter().find(|(n, _)| *n == lower) else {
            continue;
        };
        let allowed = CONNECTION_HEADERS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        cx.invalid(
            key.span(),
            &join(&path, name),
            Invalid::new(
                format!("a fallback may not set {lower}: {why}"),
                format!("any header but {allowed}"),
            ),
        );
    }
}

/// A fallback whose content-type is gRPC answers gRPC calls as a gRPC server would: with 200,
/// and the call's outcome in `grpc-status` (sent as a trailer), which must be a gRPC code.
fn grpc_fallback(
    cx: &mut Cx<'_>,
    t: &Tbl<'_, '_>,
    status: u16,
    headers: &[(String, String)],
    body: &FallbackBody,
) {
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let grpc = header("content-type").is_some_and(|value| {
        let mut map = http::HeaderMap::new();
        http::HeaderValue::from_str(value).is_ok_and(|value| {
            map.insert(http::header::CONTENT_TYPE, value);
            rampart_http::classify::is_grpc(&map)
        })
    });
    if !grpc {
        return;
    }
    if status != 200
        && let Some(node) = t.get("status")
    {
        cx.invalid(
            node.span(),
            &t.path("status"),
            Invalid::new(
                "a gRPC fallback (its content-type is gRPC) answers 200; its grpc-status header \
                 says how the call ended",
                "200",
            ),
        );
    }
    // A body the client could not split into messages fails the call as a protocol error,
    // where the fallback was to answer it.
    let framed = match body {
        FallbackBody::Inline(text) => Some(grpc_messages(text.as_bytes())),
        FallbackBody::File { content, .. } => content.as_deref().map(grpc_messages),
    };
    if let Some(Err(why)) = framed {
        let key = if t.get("body").is_some() {
            "body"
        } else {
            "body_file"
        };
        cx.conflict(
            t,
            key,
            format!("a gRPC fallback's body is gRPC messages: {why}"),
        );
    }
    let Some(code) = header("grpc-status") else {
        return;
    };
    if GrpcCode::parse(code.as_bytes()).is_some() {
        return;
    }
    let Some(DeValue::Table(map)) = t.get("headers").map(Spanned::get_ref) else {
        return;
    };
    let written = map
        .iter()
        .find(|(name, _)| name.get_ref().eq_ignore_ascii_case("grpc-status"));
    if let Some((name, value)) = written {
        cx.invalid(
            value.span(),
            &join(&t.path("headers"), name.get_ref()),
            Invalid::new(
                "not a gRPC status code",
                "a gRPC status code from 0 to 16, like \"14\" (UNAVAILABLE)",
            ),
        );
    }
}

/// Whether `body` is whole gRPC messages, each a flag byte of 0 or 1, a 4-byte big-endian length
/// and that many bytes; empty is none.
fn grpc_messages(mut body: &[u8]) -> Result<(), String> {
    while !body.is_empty() {
        let Some((head, rest)) = body.split_first_chunk::<5>() else {
            return Err(format!(
                "{} bytes left, short of a message's 5-byte prefix",
                body.len()
            ));
        };
        if head[0] > 1 {
            return Err(format!("a message's flag is {}, where 0 or 1 is", head[0]));
        }
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if rest.len() < length {
            return Err(format!(
                "a message's prefix says {length} bytes, and {} follow",
                rest.len()
            ));
        }
        body = &rest[length..];
    }
    Ok(())
}

fn fault(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> Fault {
    let delay = cx.get(t, "delay", positive);
    let delay_percent = cx.get(t, "delay_percent", share);
    let abort_status = cx.get(t, "abort_status", status(400));
    let abort_grpc_status = cx.get(t, "abort_grpc_status", grpc_error_code);
    let abort_percent = cx.get(t, "abort_percent", share);
    if t.get("delay_percent").is_some() && t.get("delay").is_none() {
        cx.conflict(t, "delay_percent", "`delay_percent` needs a `delay`");
    }
    let aborts = t.get("abort_status").is_some() || t.get("abort_grpc_status").is_some();
    if t.get("abort_percent").is_some() && !aborts {
        cx.conflict(
            t,
            "abort_percent",
            "`abort_percent` needs an `abort_status` or an `abort_grpc_status`",
        );
    }
    Fault {
        delay,
        delay_percent: delay_percent.unwrap_or(if delay.is_some() { 100.0 } else { 0.0 }),
        abort_status,
        abort_grpc_status,
        abort_percent: abort_percent.unwrap_or(if aborts { 100.0 } else { 0.0 }),
    }
}

/// A gRPC status other than OK, by its name in config tokens (`resource-exhausted`).
fn grpc_error_code(v: &DeValue<'_>) -> Result<GrpcCode, Invalid> {
    let codes: Vec<(&str, GrpcCode)> = GrpcCode::ALL
        .into_iter()
        .filter(|code| *code != GrpcCode::Ok)
        .map(|code| (code.name(), code))
        .collect();
    choice(&codes)(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        load(text, "t.toml", None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(text: &str) -> Vec<Error> {
        load(text, "t.toml", None)
            .expect_err("must be refused")
            .iter()
            .cloned()
            .collect()
    }

    const UPSTREAM: &str = "[upstreams.u]\nendpoints = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn an_empty_file_gets_every_default() {
        let c = ok("");
        assert_eq!(c.admin.listen, SocketAddr::from(([127, 0, 0, 1], 9901)));
        assert_eq!(c.admin.token_env, None);
        assert!(c.admin.metrics);
        assert_eq!(c.runtime.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.listeners, vec![default_listener("listener-0".into())]);
        assert!(c.routes.is_empty() && c.upstreams.is_empty() && c.outbox.is_none());
    }

    #[test]
    fn a_minimal_route_gets_its_defaults() {
        let c = ok(&format!("[[routes]]\nupstream = \"u\"\n{UPSTREAM}"));
        let r = &c.routes[0];
        assert_eq!(
            (r.name.as_str(), r.listener.as_str()),
            ("route-0", "listener-0")
        );
        assert!(r.matcher.is_any());
        assert_eq!(r.timeout, Duration::from_secs(15));
        assert_eq!(r.retry.attempts, 3);
        assert_eq!(r.retry.on.len(), 8);
        assert!(r.hedge.is_none() && r.fallback.is_none() && r.fault.is_none());
        let u = &c.upstreams[0];
        assert_eq!(u.failure_status, vec![StatusMatch::Class5xx]);
        assert!(u.breaker.enabled);
        assert_eq!(u.breaker.open_for_max, Duration::from_secs(60));
        assert_eq!(u.limits.max_concurrent, MaxConcurrent::Fixed(256));
    }

    #[test]
    fn the_contract_sample_values_are_read() {
        let c = ok(&format!(
            "[[routes]]\nupstream = \"u\"\n\
             retry = {{ on = [\"grpc-deadline-exceeded\", 429, \"5xx\"], budget = {{ ratio = 0 }} }}\n\
             hedge = {{ after = \"100ms\", max_extra = 2 }}\n\
             fallback = {{ on = [\"rate-limited\"], status = 503 }}\n\
             fault = {{ abort_status = 503 }}\n\
             {UPSTREAM}\
             limits = {{ rate = \"60/m\", max_concurrent = \"adaptive\" }}\n\
             health = {{ grpc = true }}\nprotocol = \"grpc\"\n\
             failure_status = [\"5xx\", 429, \"408\"]\n"
        ));
        let r = &c.routes[0];
        assert_eq!(
            r.retry.on,
            vec![
                RetryOn::Grpc(GrpcCode::DeadlineExceeded),
                RetryOn::Status(StatusCode::TOO_MANY_REQUESTS),
                RetryOn::Status5xx
            ]
        );
        assert_eq!(r.retry.budget_ratio, 0.0);
        assert_eq!(
            r.hedge,
            Some(Hedge {
                after: HedgeAfter::Delay(Duration::from_millis(100)),
                max_extra: 2
            })
        );
        assert_eq!(r.fault.unwrap().abort_percent, 100.0);
        assert_eq!(r.fault.unwrap().delay_percent, 0.0);
        let u = &c.upstreams[0];
        assert_eq!(u.limits.max_concurrent, MaxConcurrent::Adaptive);
        assert_eq!(u.health.as_ref().unwrap().check, HealthCheck::Grpc);
        assert_eq!(
            u.failure_status,
            vec![
                StatusMatch::Class5xx,
                StatusMatch::Exact(429),
                StatusMatch::Exact(408)
            ]
        );
    }

    #[test]
    fn listener_is_optional_with_one_and_required_with_several() {
        let one = format!("[[listeners]]\nname = \"a\"\n[[routes]]\nupstream = \"u\"\n{UPSTREAM}");
        assert_eq!(ok(&one).routes[0].listener, "a");
        let two = format!(
            "[[listeners]]\n[[listeners]]\nlisten = \"127.0.0.1:8081\"\n\
             [[routes]]\nupstream = \"u\"\n{UPSTREAM}"
        );
        let e = errors(&two);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].listener");
        assert_eq!(e[0].line(), Some(4));
        assert_eq!(e[0].allowed(), Some("listener-0, listener-1"));
    }

    #[test]
    fn servers_may_share_port_zero_but_not_a_fixed_address() {
        let zero = "[admin]\nlisten = \"127.0.0.1:0\"\n\
                    [[listeners]]\nlisten = \"127.0.0.1:0\"\n\
                    [[listeners]]\nlisten = \"127.0.0.1:0\"\n";
        assert_eq!(ok(zero).listeners.len(), 2);

        let fixed = "[admin]\nlisten = \"127.0.0.1:8080\"\n\
                     [[listeners]]\nlisten = \"127.0.0.1:8080\"\n\
                     [[listeners]]\nlisten = \"127.0.0.1:8080\"\n";
        let e = errors(fixed);
        let found: Vec<(&str, Option<usize>)> = e.iter().map(|e| (e.path(), e.line())).collect();
        assert_eq!(
            found,
            [
                ("listeners[0].listen", Some(4)),
                ("listeners[1].listen", Some(6)),
                ("listeners[1].listen", Some(6)),
            ]
        );
    }

    #[test]
    fn breaker_rates_must_be_more_than_zero() {
        // The breaker refuses a rate of 0 at start: it would trip on the first call of a window.
        for key in ["failure_rate", "slow_call_rate"] {
            for zero in ["0", "0.0"] {
                let e = errors(&format!(
                    "{UPSTREAM}[upstreams.u.breaker]\n{key} = {zero}\n"
                ));
                assert_eq!(e.len(), 1, "{e:?}");
                assert_eq!(e[0].path(), format!("upstreams.u.breaker.{key}"));
                assert_eq!((e[0].line(), e[0].column()), (Some(4), Some(key.len() + 4)));
                assert_eq!(e[0].got(), Some(zero));
                let allowed = e[0].allowed().unwrap_or_default();
                assert!(allowed.contains("more than 0"), "{allowed}");
            }
            let c = ok(&format!("{UPSTREAM}[upstreams.u.breaker]\n{key} = 0.001\n"));
            let b = &c.upstreams[0].breaker;
            assert_eq!(
                if key == "failure_rate" {
                    b.failure_rate
                } else {
                    b.slow_call_rate
                },
                0.001
            );
        }
    }

    #[test]
    fn a_nats_stream_name_is_one_jetstream_takes() {
        let nats = |stream: &str| {
            format!(
                "[outbox]\nstore = \"nats\"\nnats = {{ url = \"nats://x:1\", stream = \"{stream}\" }}\n"
            )
        };
        let c = ok(&nats("orders_OUTBOX-2"));
        assert!(matches!(
            c.outbox.unwrap().store,
            OutboxStore::Nats { stream, .. } if stream == "orders_OUTBOX-2"
        ));
        // The stream's name is the first token of its subjects: a '.' would split it.
        let e = errors(&nats("orders.outbox"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "outbox.nats.stream");
        assert_eq!(e[0].got(), Some("\"orders.outbox\""));
        assert_eq!(e[0].column(), Some(39));
    }

    #[test]
    fn a_hedge_waits_a_delay_or_a_percentile_from_p1_to_p99_9() {
        let hedge = |after: &str| {
            format!("[[routes]]\nupstream = \"u\"\nhedge = {{ after = {after} }}\n{UPSTREAM}")
        };
        for after in ["\"p1\"", "\"p99.9\"", "\"p50\"", "\"20ms\""] {
            ok(&hedge(after));
        }
        for after in [
            "\"p0.5\"",
            "\"p99.99\"",
            "\"p100\"",
            "\"pNaN\"",
            "\"p\"",
            "\"0ms\"",
        ] {
            let e = errors(&hedge(after));
            assert_eq!(e[0].path(), "routes[0].hedge.after", "{after}");
        }
    }

    #[test]
    fn a_hedge_that_waits_as_long_as_an_attempt_lasts_is_refused() {
        let hedge = |timeouts: &str, after: &str| {
            format!(
                "[[routes]]\nupstream = \"u\"\n{timeouts}\nhedge = {{ after = \"{after}\" }}\n\
                 {UPSTREAM}"
            )
        };
        ok(&hedge("timeout = \"1s\"", "999ms"));
        ok(&hedge("per_try_timeout = \"300ms\"", "299ms"));
        let e = errors(&hedge("timeout = \"1s\"", "1s"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].hedge.after");
        assert!(e[0].message().contains("route's timeout (1s)"), "{e:?}");
        let e = errors(&hedge("per_try_timeout = \"300ms\"", "2s"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message().contains("per_try_timeout (300ms)"), "{e:?}");
        // The default timeout is 15 s.
        assert_eq!(errors(&hedge("", "15s"))[0].path(), "routes[0].hedge.after");
    }

    #[test]
    fn nats_beside_the_embedded_store_is_checked_and_left_unused() {
        let both =
            |url: &str| format!("[outbox]\nstore = \"embedded\"\nnats = {{ url = \"{url}\" }}\n");
        let c = ok(&both("nats://127.0.0.1:4222"));
        assert_eq!(c.outbox.unwrap().store, OutboxStore::Embedded);
        let e = errors(&both("http://127.0.0.1:4222"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "outbox.nats.url");
    }

    #[test]
    fn a_grpc_fallback_answers_200_with_a_grpc_status() {
        let route = |fallback: &str| {
            format!("[[routes]]\nupstream = \"u\"\nfallback = {{ {fallback} }}\n{UPSTREAM}")
        };
        let grpc =
            "headers = { \"content-type\" = \"application/grpc+proto\", \"grpc-status\" = \"14\" }";
        ok(&route(grpc));
        ok(&route(&format!("{grpc}, status = 200")));
        let e = errors(&route(&format!("{grpc}, status = 503")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].fallback.status");
        assert_eq!(e[0].got(), Some("503"));
        // A plain HTTP fallback may answer any status it likes.
        ok(&route(
            "headers = { \"content-type\" = \"application/grpc-web\" }, status = 503",
        ));

        for bad in ["\"99\"", "\"unavailable\"", "\"\""] {
            let e = errors(&route(&format!(
                "headers = {{ \"Content-Type\" = \"application/grpc\", \"grpc-status\" = {bad} }}"
            )));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].path(), "routes[0].fallback.headers.grpc-status");
            assert_eq!(e[0].got(), Some(bad));
        }
    }

    #[test]
    fn a_fallback_sets_no_framing_or_hop_by_hop_header() {
        let route = |fallback: &str| {
            format!("[[routes]]\nupstream = \"u\"\nfallback = {{ {fallback} }}\n{UPSTREAM}")
        };
        ok(&route(
            "headers = { \"content-type\" = \"text/plain\" }, body = \"hello\"",
        ));
        for name in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "TE",
            "trailer",
            "proxy-connection",
        ] {
            let e = errors(&route(&format!(
                "headers = {{ \"x-a\" = \"1\", \"{name}\" = \"5\" }}, body = \"hello world\""
            )));
            assert_eq!(e.len(), 1, "{name}: {e:?}");
            assert_eq!(e[0].path(), format!("routes[0].fallback.headers.{name}"));
            assert_eq!((e[0].line(), e[0].column()), (Some(3), Some(39)), "{name}");
            assert_eq!(e[0].got(), Some(format!("\"{name}\"").as_str()));
            let lower = name.to_ascii_lowercase();
            assert!(e[0].message().contains(&lower), "{}", e[0].message());
        }
    }

    #[test]
    fn a_fallback_sends_what_it_says_and_no_more() {
        let route = |fallback: &str| {
            format!("[[routes]]\nupstream = \"u\"\nfallback = {{ {fallback} }}\n{UPSTREAM}")
        };
        // A header twice, by case: both would be sent.
        let e = errors(&route(
            "headers = { \"Content-Type\" = \"text/plain\", \"content-type\" = \"a/b\" }",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].fallback.headers.content-type");
        assert!(e[0].message().contains("named twice"), "{}", e[0].message());
        // rampart's own headers, which a rampart in front would believe.
        let e = errors(&route("headers = { \"X-Rampart-Error\" = \"spoof\" }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].fallback.headers.X-Rampart-Error");
        // A body where the status has none.
        for status in [204, 304] {
            let e = errors(&route(&format!("status = {status}, body = \"{{}}\"")));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].path(), "routes[0].fallback.body");
            assert!(e[0].message().contains("has no body"), "{}", e[0].message());
            ok(&route(&format!("status = {status}")));
        }
    }

    #[test]
    fn a_headers_table_holds_at_most_a_hundred() {
        let table = |n: usize| {
            let fields: Vec<String> = (0..n).map(|i| format!("\"x-{i}\" = \"1\"")).collect();
            format!("{{ {} }}", fields.join(", "))
        };
        for key in ["fallback", "match"] {
            let route = |n: usize| {
                format!(
                    "[[routes]]\nupstream = \"u\"\n{key} = {{ headers = {} }}\n{UPSTREAM}",
                    table(n)
                )
            };
            ok(&route(100));
            let e = errors(&route(25_000));
            assert_eq!(e.len(), 1, "{key}: {e:?}");
            assert_eq!(e[0].path(), format!("routes[0].{key}.headers"));
            assert!(
                e[0].message().contains("25000 headers"),
                "{}",
                e[0].message()
            );
            assert_eq!(e[0].allowed(), Some("at most 100 headers"));
        }
    }

    #[test]
    fn a_fallback_answers_a_final_status() {
        let route = |status: u16| {
            format!("[[routes]]\nupstream = \"u\"\nfallback = {{ status = {status} }}\n{UPSTREAM}")
        };
        for status in [200, 204, 302, 503, 599] {
            assert_eq!(
                ok(&route(status)).routes[0]
                    .fallback
                    .as_ref()
                    .unwrap()
                    .status,
                status
            );
        }
        for status in [100, 101, 199, 600] {
            let e = errors(&route(status));
            assert_eq!(e.len(), 1, "{status}: {e:?}");
            assert_eq!(e[0].path(), "routes[0].fallback.status");
            assert_eq!(e[0].allowed(), Some("a whole number from 200 to 599"));
        }
    }

    #[test]
    fn a_wildcard_address_takes_its_port_on_every_address_it_covers() {
        // (first, second, whether binding both fails), as Linux binds them by default: a
        // wildcard takes the port on every address of its family, and `[::]` on IPv4 too.
        let cases = [
            ("0.0.0.0:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "0.0.0.0:8080", true),
            ("[::]:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "[::]:8080", true),
            ("[::]:8080", "0.0.0.0:8080", true),
            ("[::]:8080", "[::1]:8080", true),
            ("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080", true),
            ("[::ffff:127.0.0.1]:8080", "0.0.0.0:8080", true),
            ("0.0.0.0:8080", "[::1]:8080", false),
            ("127.0.0.1:8080", "127.0.0.2:8080", false),
            ("0.0.0.0:8080", "127.0.0.1:8081", false),
            ("0.0.0.0:0", "127.0.0.1:0", false),
        ];
        for (first, second, clash) in cases {
            let text = format!(
                "[admin]\nlisten = \"127.0.0.1:1\"\n\
                 [[listeners]]\nname = \"b\"\nlisten = \"{first}\"\n\
                 [[listeners]]\nname = \"c\"\nlisten = \"{second}\"\n"
            );
            if !clash {
                assert_eq!(ok(&text).listeners.len(), 2, "{first} {second}");
                continue;
            }
            let e = errors(&text);
            assert_eq!(e.len(), 1, "{first} {second}: {e:?}");
            assert_eq!(e[0].path(), "listeners[1].listen");
            assert_eq!(e[0].line(), Some(8));
            assert!(e[0].message().contains("\"b\""), "{}", e[0].message());
        }
        for (admin, listener) in [
            ("0.0.0.0:9901", "127.0.0.1:9901"),
            ("127.0.0.1:9901", "0.0.0.0:9901"),
            ("[::]:9901", "[::1]:9901"),
            ("[::]:9901", "10.0.0.1:9901"),
        ] {
            let e = errors(&format!(
                "[admin]\nlisten = \"{admin}\"\n[[listeners]]\nlisten = \"{listener}\"\n"
            ));
            assert_eq!(e.len(), 1, "{admin} {listener}: {e:?}");
            assert_eq!(e[0].path(), "listeners[0].listen");
            assert!(e[0].message().contains("admin"), "{}", e[0].message());
        }
    }

    #[test]
    fn an_empty_listener_list_is_refused_and_a_missing_one_is_the_default() {
        assert_eq!(ok("").listeners.len(), 1);
        let e = errors(&format!(
            "listeners = []\n[[routes]]\nupstream = \"u\"\n{UPSTREAM}"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "listeners");
        assert_eq!((e[0].line(), e[0].column()), (Some(1), Some(13)));
        assert_eq!(e[0].got(), Some("[]"));
    }

    #[test]
    fn an_invalid_header_name_is_blamed_on_itself() {
        let e = errors(&format!(
            "[[routes]]\nupstream = \"u\"\n\
             match = {{ headers = {{ \"x-ok\" = \"v\", \"bad name\" = \"v\" }} }}\n{UPSTREAM}"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "routes[0].match.headers.\"bad name\"");
        assert_eq!((e[0].line(), e[0].column()), (Some(3), Some(37)));
        assert_eq!(e[0].got(), Some("\"bad name\""));
    }

    #[test]
    fn a_repeated_endpoint_is_blamed_on_its_repetition() {
        let e = errors(
            "[upstreams.u]\nendpoints = [\"a:1\", \"b:1\", \"a:1\"]\nbackup = [\"c:1\", \"b:1\"]\n",
        );
        let found: Vec<(&str, Option<usize>, Option<&str>)> =
            e.iter().map(|e| (e.path(), e.column(), e.got())).collect();
        assert_eq!(
            found,
            [
                ("upstreams.u.endpoints[2]", Some(28), Some("\"a:1\"")),
                ("upstreams.u.backup[1]", Some(18), Some("\"b:1\"")),
            ]
        );
        assert!(
            e[0].message().contains("endpoints[0]"),
            "{}",
            e[0].message()
        );
        assert!(
            e[1].message().contains("endpoints[1]"),
            "{}",
            e[1].message()
        );
    }

    #[test]
    fn a_number_too_large_says_so() {
        let e = errors(&format!(
            "{UPSTREAM}limits = {{ rate = \"99999999999/s\" }}\n"
        ));
        assert_eq!(e[0].path(), "upstreams.u.limits.rate");
        assert!(e[0].message().contains("too large"), "{}", e[0].message());
        for text in [
            "[[listeners]]\nmax_connections = 999999999999999999999999999999999999999999\n",
            "[[listeners]]\nmax_request_body = 999999999999999999999999999999999999999999\n",
        ] {
            let e = errors(text);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].message().contains("too large"), "{}", e[0].message());
        }
    }

    #[test]
    fn metrics_can_be_turned_off_with_a_boolean_only() {
        assert!(!ok("[admin]\nmetrics = false\n").admin.metrics);
        let e = errors("[admin]\nmetrics = \"off\"\n");
        assert_eq!(e[0].path(), "admin.metrics");
        assert_eq!(e[0].got(), Some("\"off\""));
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let e = errors(
            "[runtime]\ndrain_timeout = \"x\"\nworker_threads = 0\n\
             [admin]\nlisten = \"nowhere\"\ntoken_env = \"1BAD\"\n",
        );
        let paths: Vec<&str> = e.iter().map(Error::path).collect();
        assert_eq!(
            paths,
            [
                "runtime.drain_timeout",
                "runtime.worker_threads",
                "admin.listen",
                "admin.token_env"
            ]
        );
        let lines: Vec<Option<usize>> = e.iter().map(Error::line).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(5), Some(6)]);
    }

    #[test]
    fn errors_quote_the_value_as_written() {
        let e = errors(&format!("{UPSTREAM}connect_timeout = '250 ms'\n"));
        assert_eq!(e[0].got(), Some("'250 ms'"));
        assert_eq!((e[0].line(), e[0].column()), (Some(3), Some(19)));
    }

    #[test]
    fn cross_checks() {
        let cases: [(&str, &str); 8] = [
            ("[upstreams.u]\nendpoints = []\n", "upstreams.u.endpoints"),
            (
                "[upstreams.u]\nendpoints = [\"a:1\"]\nbackup = [\"a:1\"]\n",
                "upstreams.u.backup[0]",
            ),
            (
                "[upstreams.\"a b\"]\nendpoints = [\"a:1\"]\n",
                "upstreams.\"a b\"",
            ),
            (
                "[upstreams.u]\nendpoints = [\"a:1\"]\nhealth = { grpc = true }\n",
                "upstreams.u.health.grpc",
            ),
            (
                "[upstreams.u]\nendpoints = [\"a:1\"]\nhealth = { path = \"/h\", interval = \"1s\", timeout = \"2s\" }\n",
                "upstreams.u.health.timeout",
            ),
            ("[outbox]\nstore = \"nats\"\n", "outbox.store"),
            (
                "[[listeners]]\nlisten = \"127.0.0.1:9901\"\n",
                "listeners[0].listen",
            ),
            (
                "[[routes]]\nupstream = \"u\"\nmatch = { path = \"/a\", path_prefix = \"/b\" }\n[upstreams.u]\nendpoints = [\"a:1\"]\n",
                "routes[0].match.path",
            ),
        ];
        for (text, path) in cases {
            let e = errors(text);
            assert!(
                e.iter().any(|e| e.path() == path),
                "{text}: wanted {path}, got {e:?}"
            );
        }
    }

    #[test]
    fn an_upstreams_http2_streams_a_connection_default_to_100_and_refuse_zero() {
        let c = ok(UPSTREAM);
        assert_eq!(c.upstreams[0].h2_max_concurrent_streams, 100);
        let c = ok(&format!("{UPSTREAM}h2_max_concurrent_streams = 250\n"));
        assert_eq!(c.upstreams[0].h2_max_concurrent_streams, 250);
        let e = errors(&format!("{UPSTREAM}h2_max_concurrent_streams = 0\n"));
        assert_eq!(e[0].path(), "upstreams.u.h2_max_concurrent_streams");
    }

    #[test]
    fn an_upstreams_idle_timeout_defaults_by_protocol_and_refuses_zero() {
        let idle = |extra: &str| ok(&format!("{UPSTREAM}{extra}")).upstreams[0].idle_timeout;
        assert_eq!(idle(""), Duration::from_secs(4));
        assert_eq!(idle("protocol = \"http2\"\n"), Duration::from_secs(90));
        assert_eq!(idle("protocol = \"grpc\"\n"), Duration::from_secs(90));
        assert_eq!(
            idle("idle_timeout = \"1500ms\"\n"),
            Duration::from_millis(1500)
        );
        let e = errors(&format!("{UPSTREAM}idle_timeout = \"0s\"\n"));
        assert_eq!(e[0].path(), "upstreams.u.idle_timeout");
    }

    #[test]
    fn an_upstreams_connections_live_an_hour_unless_told_and_never_zero() {
        let age = |extra: &str| ok(&format!("{UPSTREAM}{extra}")).upstreams[0].max_connection_age;
        assert_eq!(age(""), Duration::from_secs(3600));
        assert_eq!(
            age("max_connection_age = \"10m\"\n"),
            Duration::from_secs(600)
        );
        let e = errors(&format!("{UPSTREAM}max_connection_age = \"0s\"\n"));
        assert_eq!(e[0].path(), "upstreams.u.max_connection_age");
    }

    #[test]
    fn the_outbox_byte_limits_have_defaults_and_refuse_zero() {
        let o = ok("[outbox]\n").outbox.expect("an outbox");
        assert_eq!(o.max_bytes, ByteSize(1 << 30));
        let o = ok("[outbox]\nmax_bytes = \"64MiB\"\n")
            .outbox
            .expect("an outbox");
        assert_eq!(o.max_bytes, ByteSize(64 << 20));
        let e = errors("[outbox]\nmax_bytes = \"0B\"\n");
        assert_eq!(e[0].path(), "outbox.max_bytes");
        assert_eq!(o.max_buffered, ByteSize(64 << 20));
        let o = ok("[outbox]\nmax_buffered = \"1MiB\"\n").outbox.unwrap();
        assert_eq!(o.max_buffered, ByteSize(1 << 20));
        let e = errors("[outbox]\nmax_buffered = \"0B\"\n");
        assert_eq!(e[0].path(), "outbox.max_buffered");
        assert!(e[0].message().contains("above zero"), "{}", e[0].message());
    }

    #[test]
    fn tombstones_are_kept_an_hour_unless_retention_says_otherwise() {
        let o = ok("[outbox]\n").outbox.expect("an outbox");
        assert_eq!(o.retention, Duration::from_secs(3600));
        let o = ok("[outbox]\nretention = \"2m\"\n")
            .outbox
            .expect("an outbox");
        assert_eq!(o.retention, Duration::from_secs(120));
        let e = errors("[outbox]\nretention = \"0s\"\n");
        assert_eq!(e[0].path(), "outbox.retention");
    }

    #[test]
    fn the_summary_shows_the_limits_queue_and_burst_in_force() {
        let c = ok("[[routes]]\nupstream = \"a\"\n[routes.fault]\n\n\
                    [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n\
                    limits = { max_concurrent = 4, rate = \"60/m\" }\n\
                    [upstreams.b]\nendpoints = [\"127.0.0.1:2\"]\n\
                    limits = { max_pending = 0, rate = \"10/s\", burst = 3 }\n");
        let summary = c.summary().to_string();
        for shown in [
            "max 4 concurrent, 128 queued up to 100ms; rate 60/m, burst 1",
            "max 256 concurrent, no queue; rate 10/s, burst 3",
            "FAULT set, but neither delay nor abort",
        ] {
            assert!(summary.contains(shown), "{shown:?} in {summary}");
        }
    }

    #[test]
    fn the_summary_hides_the_credentials_of_a_nats_url() {
        // (URL, as shown): only the first server must name its scheme; a password may hold `@`.
        for (url, shown) in [
            (
                "nats://svc:s3cret@a:4222,nats://b:4222",
                "nats nats://***@a:4222,nats://b:4222 stream RAMPART_OUTBOX",
            ),
            (
                "nats://a:4222,svc:s3cret@b:4222,tls://svc:s3@cret@c:4222/x",
                "nats nats://a:4222,***@b:4222,tls://***@c:4222/x stream RAMPART_OUTBOX",
            ),
        ] {
            let c = ok(&format!(
                "[outbox]\nstore = \"nats\"\nnats = {{ url = \"{url}\" }}\n"
            ));
            let summary = c.summary().to_string();
            assert!(!summary.contains("s3"), "{summary}");
            assert!(summary.contains(shown), "{summary}");
        }
    }

    #[test]
    fn names_keys_and_units_are_escaped_so_that_each_error_stays_one_line() {
        let toml = "\"x\\nFAKE.toml:1:1: injected\" = 1\n[[routes]]\nupstream = \"a\\nb\"\n\
                    listener = \"l\\nq\"\ntimeout = \"1s\\r\\nFAKE: x\"\n\
                    [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n";
        let e = errors(toml);
        assert_eq!(e.len(), 4, "{e:?}");
        for error in &e {
            let line = error.to_string();
            assert!(!line.contains(['\n', '\r']), "{line}");
        }
        assert!(
            e[0].message().contains(r#""x\nFAKE.toml:1:1: injected""#),
            "{}",
            e[0]
        );
        assert!(
            e[1].message().contains(r#"no upstream named "a\nb""#),
            "{}",
            e[1]
        );
    }

    #[test]
    fn a_syntax_error_has_a_place() {
        let e = errors("a = 1\n[routes\n");
        assert_eq!(e[0].line(), Some(2));
        assert_eq!(e[0].path(), "");
        assert!(e[0].message().starts_with("invalid TOML"));
    }

    #[test]
    fn a_path_with_a_control_character_is_refused() {
        let toml = "[[routes]]\nupstream = \"a\"\nmatch = { path = \"/a\\u0001b\" }\n\
                    [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n";
        let e = errors(toml);
        assert_eq!(e[0].path(), "routes[0].match.path", "{}", e[0]);
    }

    #[test]
    fn a_host_takes_one_wildcard_first_or_last() {
        let with_host = |host: &str| {
            format!(
                "[[routes]]\nupstream = \"a\"\nmatch = {{ host = \"{host}\" }}\n\
                 [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n"
            )
        };
        for host in [
            "*.example.com",
            "*-api.example.com",
            "orders.*",
            "*",
            "Example.org.",
        ] {
            let config = ok(&with_host(host));
            assert_eq!(
                config.routes[0].matcher.host.as_deref(),
                Some(&*host.to_ascii_lowercase())
            );
        }
        for host in ["a*b.com", "*example*", "**", "*.*", "", "orders:80"] {
            let e = errors(&with_host(host));
            assert_eq!(e[0].path(), "routes[0].match.host", "{host}: {}", e[0]);
        }
    }

    #[test]
    fn a_refused_listen_address_clashes_with_nothing() {
        // Each address is refused once, for what is wrong with it, and the default standing in
        // for it is not said to clash with another listener's or the admin API's.
        for toml in [
            "[admin]\nlisten = \"127.0.0.1:99999\"\n[[listeners]]\nlisten = \"127.0.0.1:9901\"\n",
            "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:80800\"\n\
             [[listeners]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\n",
        ] {
            let e = errors(toml);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].message()
                    .contains("the port is not a number from 0 to 65535"),
                "{}",
                e[0]
            );
        }
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let e = errors("[runtime]\nworker_threads = 1\nworker_threads = 2\n");
        assert_eq!(e[0].line(), Some(3));
        assert!(
            e[0].to_string()
                .contains("duplicate key (got worker_threads)"),
            "{}",
            e[0]
        );
    }

    /// Every error of `text` as displayed, one per line.
    fn said(text: &str) -> String {
        errors(text)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn an_admin_address_of_the_listener_there_is_when_none_is_written_is_refused() {
        let route = "[[routes]]\nupstream = \"u\"\n";
        let e = said(&format!(
            "[admin]\nlisten = \"127.0.0.1:8080\"\n{route}{UPSTREAM}"
        ));
        assert!(e.contains("admin.listen"), "{e}");
        assert!(e.contains("no [[listeners]] are written"), "{e}");
        let e = said(&format!(
            "[admin]\nlisten = \"0.0.0.0:8080\"\n{route}{UPSTREAM}"
        ));
        assert!(e.contains("a port this address would take"), "{e}");
        // Elsewhere, or beside a listener of its own, it stands.
        let other = format!("[admin]\nlisten = \"127.0.0.1:8081\"\n{route}{UPSTREAM}");
        assert!(load(&other, "t.toml", None).is_ok());
    }

    #[test]
    fn a_route_path_with_a_query_or_a_fragment_is_refused() {
        for path in ["/a?b=1", "/a#b"] {
            for key in ["path", "path_prefix"] {
                let e = said(&format!(
                    "[[routes]]\nupstream = \"u\"\nmatch = {{ {key} = \"{path}\" }}\n{UPSTREAM}"
                ));
                assert!(e.contains(&format!("routes[0].match.{key}")), "{e}");
            }
        }
        // A health check's target may have a query.
        let text = format!(
            "[[routes]]\nupstream = \"u\"\n{UPSTREAM}[upstreams.u.health]\npath = \"/h?deep=1\"\n"
        );
        assert!(load(&text, "t.toml", None).is_ok());
    }

    #[test]
    fn a_header_bound_too_small_for_any_request_is_refused() {
        for bytes in ["0", "100", "\"1023B\""] {
            let e = said(&format!(
                "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmax_header_bytes = {bytes}\n\
                 [[routes]]\nupstream = \"u\"\n{UPSTREAM}"
            ));
            assert!(e.contains("listeners[0].max_header_bytes"), "{e}");
            assert!(e.contains("1KiB or more"), "{e}");
        }
    }

    #[test]
    fn nats_urls_the_client_would_refuse_are_refused_with_their_credentials_hidden() {
        let with = |url: &str| {
            format!(
                "[[routes]]\nupstream = \"u\"\n{UPSTREAM}\
                 [outbox]\nstore = \"nats\"\nnats = {{ url = \"{url}\" }}\n"
            )
        };
        for url in [
            "nats://alice:pw@127.0.0.1:99999",
            "nats://alice:pw@",
            "nats://127.0.0.1:4222,bad url",
            "nat://alice:pw@host:4222",
            "nats://127.0.0.1:0",
            // Unencoded, a `/` or a `,` in a password splits it where a host or a server goes.
            "nats://svc:pw/9x@nats:4222",
            "nats://svc:pw,9x@nats:4222",
        ] {
            let e = said(&with(url));
            assert!(e.contains("outbox.nats.url"), "{url}: {e}");
            assert!(!e.contains("pw") && !e.contains("9x"), "{url}: {e}");
        }
        for url in [
            "nats://alice:p@ss@nats.internal:4222",
            "tls://[::1]:4222,nats://b",
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223",
        ] {
            assert!(load(&with(url), "t.toml", None).is_ok(), "{url}");
        }
    }

    #[test]
    fn an_endpoint_that_is_rampart_s_own_listener_is_refused() {
        let with = |listen: &str, endpoint: &str| {
            format!(
                "[[listeners]]\nname = \"main\"\nlisten = \"{listen}\"\n\
                 [[routes]]\nupstream = \"u\"\n[upstreams.u]\nendpoints = [\"{endpoint}\"]\n"
            )
        };
        for (listen, endpoint) in [
            ("127.0.0.1:7000", "127.0.0.1:7000"),
            ("0.0.0.0:7000", "127.0.0.1:7000"),
            ("[::]:7000", "127.0.0.1:7000"),
        ] {
            let e = said(&with(listen, endpoint));
            assert!(e.contains("upstreams.u.endpoints[0]"), "{e}");
            assert!(e.contains("in a loop"), "{e}");
        }
        // Another listener of rampart's, whose routes go elsewhere, is a chain, not a loop.
        let chain = "[[listeners]]\nname = \"edge\"\nlisten = \"127.0.0.1:7000\"\n\
                     [[listeners]]\nname = \"inner\"\nlisten = \"127.0.0.1:7001\"\n\
                     [[routes]]\nlistener = \"edge\"\nupstream = \"inner\"\n\
                     [[routes]]\nlistener = \"inner\"\nupstream = \"app\"\n\
                     [upstreams.inner]\nendpoints = [\"127.0.0.1:7001\"]\n\
                     [upstreams.app]\nendpoints = [\"127.0.0.1:9000\"]\n";
        assert!(load(chain, "t.toml", None).is_ok());
        // Another port, a host name, another machine, or IPv6 under an IPv4 wildcard.
        for (listen, endpoint) in [
            ("127.0.0.1:7000", "127.0.0.1:7001"),
            ("0.0.0.0:7000", "localhost:7000"),
            ("0.0.0.0:7000", "10.1.2.3:7000"),
            ("0.0.0.0:7000", "[::1]:7000"),
        ] {
            assert!(
                load(&with(listen, endpoint), "t.toml", None).is_ok(),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn an_outbox_path_is_where_the_file_says_whatever_the_working_directory() {
        let dir = Path::new("/etc/rampart");
        let with = |outbox: &str| {
            let text = format!("[[routes]]\nupstream = \"u\"\n{UPSTREAM}[outbox]\n{outbox}\n");
            load(&text, "t.toml", Some(dir))
                .unwrap()
                .outbox
                .unwrap()
                .path
        };
        assert_eq!(with(""), dir.join("rampart-data/outbox"));
        assert_eq!(with("path = \"queue\""), dir.join("queue"));
        assert_eq!(with("path = \"/var/lib/q\""), Path::new("/var/lib/q"));
    }

    #[test]
    fn an_outbox_directory_that_cannot_be_made_under_a_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("rampart-outbox-under-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a-file");
        std::fs::write(&file, "").unwrap();
        let text = format!(
            "[[routes]]\nupstream = \"u\"\n{UPSTREAM}[outbox]\npath = \"{}\"\n",
            file.join("outbox").display()
        );
        let e = load(&text, "t.toml", Some(&dir)).expect_err("must be refused");
        let e = e.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("outbox.path"), "{e}");
        assert!(e.contains("cannot be made"), "{e}");
    }

    #[test]
    fn a_host_header_to_match_is_refused_for_the_host_key() {
        let e = said(&format!(
            "[[routes]]\nupstream = \"u\"\nmatch = {{ headers = {{ Host = \"a\" }} }}\n{UPSTREAM}"
        ));
        assert!(e.contains("routes[0].match.headers.Host"), "{e}");
        assert!(e.contains(":authority"), "{e}");
    }

    #[test]
    fn a_fallback_on_nothing_is_refused() {
        let e = said(&format!(
            "[[routes]]\nupstream = \"u\"\n[routes.fallback]\non = []\n{UPSTREAM}"
        ));
        assert!(e.contains("routes[0].fallback.on"), "{e}");
    }

    #[test]
    fn a_grpc_fallback_body_must_be_whole_messages() {
        let with = |body: &str| {
            format!(
                "[[routes]]\nupstream = \"u\"\n[routes.fallback]\n\
                 headers = {{ content-type = \"application/grpc\" }}\nbody = \"{body}\"\n{UPSTREAM}"
            )
        };
        for body in [
            "hello",
            "\\u0000\\u0000\\u0000\\u0000\\u0009hello",
            "\\u0002\\u0000\\u0000\\u0000\\u0000",
        ] {
            let e = said(&with(body));
            assert!(e.contains("routes[0].fallback.body"), "{body}: {e}");
        }
        for body in [
            "",
            "\\u0000\\u0000\\u0000\\u0000\\u0005hello",
            "\\u0000\\u0000\\u0000\\u0000\\u0000\\u0001\\u0000\\u0000\\u0000\\u0001x",
        ] {
            assert!(load(&with(body), "t.toml", None).is_ok(), "{body}");
        }
    }

    #[test]
    fn listeners_written_as_one_table_are_refused_alone() {
        let e = errors(&format!(
            "[listeners]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n{UPSTREAM}"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path(), "listeners");
    }

    #[test]
    fn fault_percentages_take_fractions_within_0_to_100() {
        let with = |line: &str| {
            format!(
                "[[routes]]\nupstream = \"u\"\n[routes.fault]\nabort_status = 503\n\
                 delay = \"10ms\"\n{line}\n{UPSTREAM}"
            )
        };
        let fault = ok(&with("abort_percent = 0.1\ndelay_percent = 5")).routes[0]
            .fault
            .unwrap();
        assert_eq!((fault.abort_percent, fault.delay_percent), (0.1, 5.0));
        for bad in [
            "abort_percent = 100.5",
            "delay_percent = -0.1",
            "abort_percent = \"1%\"",
        ] {
            let e = said(&with(bad));
            assert!(
                e.contains("a number from 0 to 100, fractions allowed"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_fault_aborts_grpc_calls_with_a_named_code() {
        let with = |lines: &str| {
            format!("[[routes]]\nupstream = \"u\"\n[routes.fault]\n{lines}\n{UPSTREAM}")
        };
        let fault = ok(&with(
            "abort_grpc_status = \"resource-exhausted\"\nabort_percent = 5",
        ))
        .routes[0]
            .fault
            .unwrap();
        assert_eq!(fault.abort_grpc_status, Some(GrpcCode::ResourceExhausted));
        assert_eq!((fault.abort_status, fault.abort_percent), (None, 5.0));
        // Alone, it aborts every request.
        let fault = ok(&with("abort_grpc_status = \"unavailable\"")).routes[0]
            .fault
            .unwrap();
        assert_eq!(fault.abort_percent, 100.0);
        for (bad, says) in [
            ("abort_grpc_status = \"ok\"", "unknown value"),
            (
                "abort_grpc_status = \"resource-exhaustd\"",
                "did you mean \"resource-exhausted\"?",
            ),
            ("abort_grpc_status = 8", "expected a string, found integer"),
        ] {
            let e = said(&with(bad));
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                e.contains("cancelled, unknown, invalid-argument"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_backoff_error_says_which_bound_is_the_default() {
        let e = said(&format!(
            "[[routes]]\nupstream = \"u\"\n[routes.retry]\nbackoff = {{ base = \"2s\" }}\n{UPSTREAM}"
        ));
        assert!(
            e.contains("max (1s, the default) must be at least its base (2s)"),
            "{e}"
        );
    }

    #[test]
    fn an_integer_past_toml_s_64_bits_is_refused() {
        let with = |bytes: &str| {
            format!(
                "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmax_request_body = {bytes}\n\
                 [[routes]]\nupstream = \"u\"\n{UPSTREAM}"
            )
        };
        let e = said(&with("18446744073709551615"));
        assert!(e.contains("listeners[0].max_request_body"), "{e}");
        assert!(load(&with("9223372036854775807"), "t.toml", None).is_ok());
    }

    #[test]
    fn key_paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a.b", "c-d_e"), "a.b.c-d_e");
        assert_eq!(join("h", "x y"), "h.\"x y\"");
    }
}
