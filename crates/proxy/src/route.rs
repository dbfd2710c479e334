//! Routing: the routes of one listener, tried in file order; the first match wins.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use http::header::{HOST, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use rampart_config::{Config, Match};
use rampart_policy::rng::Rng;

use crate::Error;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::stack::Stack;
use crate::upstream::Pool;

/// The routes of one listener.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Vec<(Matcher, Arc<Stack>)>,
}

impl Router {
    /// The routes of `config` on the listener named `listener`, in file order.
    pub(crate) fn new(
        config: &Config,
        listener: &str,
        upstreams: &HashMap<&str, Arc<Pool>>,
        rng: &Rng,
        metrics: &Metrics,
        outbox: Option<&Arc<Outbox>>,
    ) -> Result<Router, Error> {
        let mut routes = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            if route.listener != listener {
                continue;
            }
            let upstream =
                upstreams
                    .get(route.upstream.as_str())
                    .ok_or_else(|| Error::Invalid {
                        path: format!("routes[{i}].upstream"),
                        message: format!("no upstream named \"{}\"", route.upstream),
                    })?;
            let matcher = Matcher::new(&route.matcher, i)?;
            routes.push((
                matcher,
                Arc::new(Stack::new(
                    route,
                    i,
                    upstream.clone(),
                    rng,
                    metrics,
                    outbox,
                )?),
            ));
        }
        Ok(Router { routes })
    }

    /// Every route's stack, in file order.
    pub(crate) fn stacks(&self) -> impl Iterator<Item = &Arc<Stack>> {
        self.routes.iter().map(|(_, stack)| stack)
    }

    /// The stack of the first route matching the request, if any.
    pub(crate) fn route(&self, request: &Parts) -> Option<&Arc<Stack>> {
        let request = Asked::new(request);
        self.routes
            .iter()
            .find(|(matcher, _)| matcher.matches(&request))
            .map(|(_, stack)| stack)
    }
}

/// A request being routed, its host read once for every route that matches on it.
struct Asked<'a> {
    parts: &'a Parts,
    host: OnceCell<Option<Authority>>,
    /// The path as routes match it, when that is not the path as it came; worked out only when
    /// a route matches on the path.
    resolved: OnceCell<Option<String>>,
}

impl<'a> Asked<'a> {
    fn new(parts: &'a Parts) -> Asked<'a> {
        Asked {
            parts,
            host: OnceCell::new(),
            resolved: OnceCell::new(),
        }
    }

    /// The path routes match: the one the target names to an upstream that reads it as RFC
    /// 3986 has it (§6.2.2), its percent-encoded unreserved characters decoded (`%69` is `i`)
    /// and its dot segments resolved (`/r/../d/x` is `/d/x`), as most upstreams do and as nginx
    /// matches its locations: matched as it came, `/%69nternal/x` or `/r/../internal/x` would
    /// be served as `/internal/x` under another route's policies. The request goes on with its
    /// path as it came, as nginx sends it: an upstream that normalizes serves the path matched,
    /// and one that does not (a store whose keys may hold `..`, a signed path) gets what the
    /// client sent.
    fn path(&self) -> &str {
        let path = self.parts.uri.path();
        self.resolved
            .get_or_init(|| normalized(path))
            .as_deref()
            .unwrap_or(path)
    }

    /// The request's host, without its port. The authority of the target comes first:
    /// HTTP/2's `:authority`, or an HTTP/1.1 absolute-form target, which RFC 9112 §3.2.2 says
    /// overrides Host. None when there is neither, or the Host header is no authority.
    fn host(&self) -> Option<&str> {
        self.host
            .get_or_init(|| match self.parts.uri.authority() {
                Some(authority) => Some(authority.clone()),
                None => self.parts.headers.get(HOST)?.to_str().ok()?.parse().ok(),
            })
            .as_ref()
            .map(Authority::host)
    }
}

/// `path` as routes match it (see [`Asked::path`]); `None` when that is `path` itself. A path
/// without `%` or `/.` (most, gRPC's and file names' included) is passed over with a scan or
/// two, allocating nothing.
fn normalized(path: &str) -> Option<String> {
    let decoded = decode_unreserved(path);
    without_dot_segments(decoded.as_deref().unwrap_or(path)).or(decoded)
}

/// `path` with its percent-encoded unreserved characters decoded (RFC 3986 §2.3: letters,
/// digits, `-`, `.`, `_`, `~`, which mean the same encoded or not); `None` if it has none. The
/// others stay encoded: `%2F` is not `/`, nor `%3F` a `?`.
fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let first = memchr::memchr(b'%', bytes)?;
    let mut decoded = Vec::with_capacity(bytes.len());
    decoded.extend_from_slice(&bytes[..first]);
    let mut changed = false;
    let mut rest = &bytes[first..];
    while let Some((&b, after)) = rest.split_first() {
        rest = after;
        if b == b'%'
            && let [high, low, after @ ..] = rest
            && let (Some(high), Some(low)) = (hex(*high), hex(*low))
            && is_unreserved(high << 4 | low)
        {
            decoded.push(high << 4 | low);
            rest = after;
            changed = true;
        } else {
            decoded.push(b);
        }
    }
    // ASCII in, ASCII out: a URI's path is ASCII, and so are the characters decoded.
    changed.then(|| String::from_utf8(decoded).ok()).flatten()
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|value| value as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `path` with its dot segments removed (RFC 3986 §5.2.4); `None` if it has none.
fn without_dot_segments(path: &str) -> Option<String> {
    memchr::memmem::find(path.as_bytes(), b"/.")?;
    let rest = path.strip_prefix('/')?;
    if !rest.split('/').any(|segment| dots(segment).is_some()) {
        return None;
    }
    let count = rest.split('/').count();
    let mut kept: Vec<&str> = Vec::with_capacity(count);
    for (i, segment) in rest.split('/').enumerate() {
        match dots(segment) {
            None => kept.push(segment),
            Some(n) => {
                if n == 2 {
                    kept.pop();
                }
                // `/a/..` names the directory `/`, `/a/.` the directory `/a/`.
                if i + 1 == count {
                    kept.push("");
                }
            }
        }
    }
    Some(format!("/{}", kept.join("/")))
}

/// How many dots a path segment is, if it is one or two of them (`.`, `..`).
fn dots(segment: &str) -> Option<u8> {
    match segment {
        "." => Some(1),
        ".." => Some(2),
        _ => None,
    }
}

/// A route's `match`, with its values parsed once.
#[derive(Debug)]
struct Matcher {
    path_prefix: Option<String>,
    path: Option<String>,
    host: Option<HostPattern>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    fn new(config: &Match, route: usize) -> Result<Matcher, Error> {
        let invalid = |key: &str, message: String| Error::Invalid {
            path: format!("routes[{route}].match.{key}"),
            message,
        };
        let method = match &config.method {
            Some(method) => Some(
                Method::from_bytes(method.as_bytes())
                    .map_err(|_| invalid("method", format!("{method:?} is not a method")))?,
            ),
            None => None,
        };
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid("headers", format!("{name:?} is not a header name")))?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| invalid("headers", format!("{value:?} is not a header value")))?;
                Ok((name, value))
            })
            .collect::<Result<_, Error>>()?;
        // Written as requests are matched: `/%69nternal` is `/internal` there too.
        let normal = |path: &String| normalized(path).unwrap_or_else(|| path.clone());
        Ok(Matcher {
            path_prefix: config.path_prefix.as_ref().map(normal),
            path: config.path.as_ref().map(normal),
            host: config.host.as_deref().map(HostPattern::new),
            method,
            headers,
        })
    }

    fn matches(&self, asked: &Asked<'_>) -> bool {
        let request = asked.parts;
        self.path_prefix
            .as_ref()
            .is_none_or(|p| asked.path().starts_with(p.as_str()))
            && self.path.as_ref().is_none_or(|p| asked.path() == p)
            && self.method.as_ref().is_none_or(|m| request.method == m)
            && self
                .host
                .as_ref()
                .is_none_or(|pattern| pattern.matches(asked.host()))
            && self
                .headers
                .iter()
                .all(|(name, value)| request.headers.get_all(name).iter().any(|v| v == value))
    }
}

/// A `match.host`: a name, or a name with one `*` at its start or its end standing for one
/// character or more, or `*` alone for any host, as Envoy's virtual host domains.
#[derive(Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, `*-api.example.com`: what follows the `*`.
    Suffix(String),
    /// `example.*`, `api-*`: what comes before the `*`.
    Prefix(String),
    Any,
}

impl HostPattern {
    /// The pattern of `host`, which the configuration checked (letters, digits, `-`, `.`, and
    /// one `*` first or last): lower case, without brackets for an IPv6 address, without the
    /// trailing dot of a fully qualified name.
    fn new(host: &str) -> HostPattern {
        let host = normal(host).to_ascii_lowercase();
        if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix('*') {
            HostPattern::Suffix(suffix.to_owned())
        } else if let Some(prefix) = host.strip_suffix('*') {
            HostPattern::Prefix(prefix.to_owned())
        } else {
            HostPattern::Exact(host)
        }
    }

    /// Whether `host` (none: the request named no host) matches; `*` matches any request.
    fn matches(&self, host: Option<&str>) -> bool {
        let Some(host) = host.map(normal) else {
            return matches!(self, HostPattern::Any);
        };
        // The `*` stands for one character at least: `*.example.com` is not `.example.com`.
        let ends_with = |suffix: &str| {
            host.len() > suffix.len()
                && host.as_bytes()[host.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        };
        let starts_with = |prefix: &str| {
            host.len() > prefix.len()
                && host.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => ends_with(suffix),
            HostPattern::Prefix(prefix) => starts_with(prefix),
            HostPattern::Any => true,
        }
    }
}

/// `host` without the brackets of an IPv6 address, or the trailing dot of a fully qualified
/// name (`example.com.` is `example.com`).
fn normal(host: &str) -> &str {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(address) => address,
        None => host.strip_suffix('.').unwrap_or(host),
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    #[test]
    fn dot_segments_are_resolved_as_rfc_3986_does() {
        for (path, resolved) in [
            // RFC 3986 §5.2.4's example, and the like.
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/r/../d/echo", "/d/echo"),
            ("/r/%2e%2E/d/echo", "/d/echo"),
            ("/r/.%2e/d", "/d"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/./b/", "/a/b/"),
            ("//..", "/"),
            ("/a//../b", "/a/b"),
        ] {
            assert_eq!(normalized(path).as_deref(), Some(resolved), "{path}");
        }
        for path in [
            "/",
            "/orders/17",
            "/static/app.js",
            "/.well-known-not/x",
            "/a/.../b",
            "/a/..b/c",
            "/%2",
            "/a%2",
            "/%2f..",
            "/pkg.Service/Method",
            "/x%2f..",
            "/caf\u{e9}/..x",
            "/%",
            "/a%zz/%4",
        ] {
            assert_eq!(normalized(path), None, "{path}");
        }
    }

    #[test]
    fn percent_encoded_unreserved_characters_are_read_as_themselves() {
        for (path, normal) in [
            ("/%69nternal/x", "/internal/x"),
            ("/%49%6E%74", "/Int"),
            ("/a%2Db%5fc%7E%2e", "/a-b_c~."),
            ("/x/%2e%2E/%69", "/i"),
            // Reserved and other characters stay as they came.
            ("/%69/%2F/%3f/%20/%C3%A9", "/i/%2F/%3f/%20/%C3%A9"),
            ("/%69%", "/i%"),
            ("/%69%6", "/i%6"),
        ] {
            assert_eq!(normalized(path).as_deref(), Some(normal), "{path}");
        }
        let prefix = matcher(Match {
            path_prefix: Some("/internal".into()),
            ..Match::default()
        });
        assert!(matches(&prefix, parts(Request::get("/%69nternal/x"))));
        assert!(matches(&prefix, parts(Request::get("/%69%6e%74ernal"))));
        assert!(!matches(&prefix, parts(Request::get("/%2Finternal"))));
        // A configured path is read the same way.
        let written = matcher(Match {
            path: Some("/%61dmin".into()),
            ..Match::default()
        });
        assert!(matches(&written, parts(Request::get("/admin"))));
    }

    fn parts(request: http::request::Builder) -> Parts {
        request.body(()).unwrap().into_parts().0
    }

    fn matcher(config: Match) -> Matcher {
        Matcher::new(&config, 0).unwrap()
    }

    fn matches(matcher: &Matcher, request: Parts) -> bool {
        matcher.matches(&Asked::new(&request))
    }

    #[test]
    fn an_empty_match_matches_everything() {
        let m = matcher(Match::default());
        assert!(matches(&m, parts(Request::get("/"))));
        assert!(matches(&m, parts(Request::post("/x?y=1"))));
    }

    #[test]
    fn path_prefix_and_exact_path() {
        let prefix = matcher(Match {
            path_prefix: Some("/orders".into()),
            ..Match::default()
        });
        assert!(matches(&prefix, parts(Request::get("/orders/7?x=1"))));
        assert!(matches(&prefix, parts(Request::get("/orders"))));
        assert!(!matches(&prefix, parts(Request::get("/order"))));
        assert!(!matches(&prefix, parts(Request::get("/api/orders"))));

        let exact = matcher(Match {
            path: Some("/orders".into()),
            ..Match::default()
        });
        assert!(matches(&exact, parts(Request::get("/orders?page=2"))));
        assert!(!matches(&exact, parts(Request::get("/orders/7"))));
    }

    #[test]
    fn host_from_the_header_or_the_authority_without_port_any_case() {
        let m = matcher(Match {
            host: Some("Orders.Example".into()),
            ..Match::default()
        });
        assert!(matches(
            &m,
            parts(Request::get("/").header("host", "orders.example:8080"))
        ));
        assert!(matches(
            &m,
            parts(Request::get("/").header("host", "ORDERS.example"))
        ));
        assert!(matches(&m, parts(Request::get("http://orders.example/x"))));
        assert!(!matches(
            &m,
            parts(Request::get("/").header("host", "billing.example"))
        ));
        assert!(!matches(&m, parts(Request::get("/"))));
        // An absolute-form target overrides Host.
        assert!(!matches(
            &m,
            parts(Request::get("http://billing.example/x").header("host", "orders.example"))
        ));

        let v6 = matcher(Match {
            host: Some("::1".into()),
            ..Match::default()
        });
        assert!(matches(
            &v6,
            parts(Request::get("/").header("host", "[::1]:80"))
        ));
    }

    #[test]
    fn a_host_may_have_one_wildcard_first_or_last_or_be_one() {
        let host = |pattern: &str, host: &str| {
            let m = matcher(Match {
                host: Some(pattern.into()),
                ..Match::default()
            });
            matches(&m, parts(Request::get("/").header("host", host)))
        };
        assert!(host("*.example.com", "orders.example.com"));
        assert!(host("*.example.com", "a.b.EXAMPLE.com:8443"));
        assert!(!host("*.example.com", "example.com"));
        assert!(
            !host("*.example.com", ".example.com"),
            "the * is one character or more"
        );
        assert!(!host("*.example.com", "example.org"));
        assert!(host("*-api.example.com", "orders-api.example.com"));
        assert!(host("orders.*", "orders.internal"));
        assert!(!host("orders.*", "orders."));
        assert!(!host("orders.*", "billing.internal"));
        assert!(host("*", "anything.at.all"));
        let no_host = matcher(Match {
            host: Some("*".into()),
            ..Match::default()
        });
        assert!(
            matches(&no_host, parts(Request::get("/"))),
            "* is any request"
        );
        // A Host that is no authority matches no name.
        assert!(!host("*.example.com", "x/y.example.com"));
        let userinfo = matcher(Match {
            host: Some("orders.internal".into()),
            ..Match::default()
        });
        assert!(matches(
            &userinfo,
            parts(Request::get("http://u@orders.internal/"))
        ));
        // The trailing dot of a fully qualified name, on either side.
        assert!(host("example.org.", "EXAMPLE.org"));
        assert!(host("example.org", "example.org.:80"));
    }

    #[test]
    fn method_and_headers() {
        let m = matcher(Match {
            method: Some("POST".into()),
            headers: vec![("x-tenant".into(), "blue".into())],
            ..Match::default()
        });
        assert!(matches(
            &m,
            parts(Request::post("/").header("x-tenant", "blue"))
        ));
        // Any of several lines of the header may hold the value.
        assert!(matches(
            &m,
            parts(
                Request::post("/")
                    .header("x-tenant", "red")
                    .header("x-tenant", "blue")
            )
        ));
        assert!(!matches(
            &m,
            parts(Request::get("/").header("x-tenant", "blue"))
        ));
        assert!(!matches(
            &m,
            parts(Request::post("/").header("x-tenant", "red"))
        ));
        assert!(!matches(&m, parts(Request::post("/"))));
    }
}
