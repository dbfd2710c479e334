//! The fleet view: one dashboard over the admin APIs of several rampart instances, so that a
//! fleet of sidecars is watched on one page (the role Turbine plays for Hystrix).
//!
//! `rampart dashboard --target URL...` runs it. It serves the dashboard's page, a
//! `targets.json` naming each instance with the base path the page reaches it under
//! (`t/0`, `t/1`, ...) and the one event stream that brings every instance's events
//! (`fleet/events`, see [`stream`]), and under each base passes on the few calls the page may
//! make to that instance: `GET api/stats`, `GET api/events` (streamed as it comes),
//! `GET hystrix.stream` and `POST api/breakers/...` (the `Authorization` header passed along:
//! the instance checks the token, the fleet view holds none). Nothing else is passed on, and only
//! to the targets given at start: the fleet view is no open proxy.

mod stream;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::net::TcpListener;

use crate::Server;
use crate::api::{self, Allow, Answer};
use crate::dashboard;

/// How long an instance may take to answer a call's head before the page is told it is
/// unreachable; an event stream then flows for as long as both ends keep it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request body passed on: a breaker change is a few bytes.
const MAX_BODY: usize = 64 * 1024;

/// The request headers an instance needs from the page; no other is passed on.
const PASSED_ON: [HeaderName; 4] = [
    AUTHORIZATION,
    CONTENT_TYPE,
    ACCEPT,
    HeaderName::from_static("last-event-id"),
];

/// A running fleet view; dropping it stops it too.
#[derive(Debug)]
pub struct Fleet(Server);

/// One rampart instance's admin API, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the page calls it: its address as given.
    name: String,
    authority: Authority,
}

/// Why a target URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTarget {
    /// The URL, unless it has a `@`: a user or password, refused for it, is never kept to be
    /// shown (by `Display` or `Debug` alike).
    url: Option<String>,
    reason: &'static str,
}

/// What every request of the fleet view reads.
struct Targets {
    targets: Vec<Target>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What the fleet view answers: its own answers, or an instance's body as it streams.
type Passed = Response<UnsyncBoxBody<Bytes, hyper::Error>>;

// === impl Fleet ===

impl Fleet {
    /// Binds `listen` and serves the fleet view over `targets`.
    pub async fn start(listen: SocketAddr, targets: Vec<Target>) -> io::Result<Fleet> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let state = Arc::new(Targets {
            targets,
            client: Client::builder(TokioExecutor::new()).build(connector),
        });
        let tcp = TcpListener::bind(listen).await?;
        let server = Server::start(tcp, move |request| {
            let state = state.clone();
            async move { handle(request, &state).await }
        })?;
        Ok(Fleet(server))
    }

    /// The address the fleet view listens on (the port the kernel chose, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Stops accepting and closes every connection, event streams included.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

// === impl Target ===

impl Target {
    /// An admin API at `url`: `http://host:port` (a path, if any, is ignored), or `host:port`.
    pub fn parse(url: &str) -> Result<Target, InvalidTarget> {
        let invalid = |reason| InvalidTarget {
            url: (!url.contains('@')).then(|| url.to_owned()),
            reason,
        };
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|_| invalid("not a URL: expected http://HOST:PORT or HOST:PORT"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(
                "only http:// is served (the admin API has no TLS; keep it on loopback or a private network)",
            ));
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| invalid("no host: expected http://HOST:PORT"))?
            .clone();
        if authority.port_u16().is_none() {
            return Err(invalid(
                "no port: the admin API has no default port to assume",
            ));
        }
        if authority.as_str().contains('@') {
            return Err(invalid("a user or password in the URL is not passed on"));
        }
        Ok(Target {
            name: authority.to_string(),
            authority,
        })
    }

    /// What the dashboard calls this instance.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for InvalidTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.url {
            Some(url) => write!(f, "invalid target {url:?}: {}", self.reason),
            None => write!(
                f,
                "invalid target (not shown: it has a '@'): {}",
                self.reason
            ),
        }
    }
}

impl std::error::Error for InvalidTarget {}

// === the requests ===

async fn handle(request: Request<Incoming>, state: &Targets) -> Passed {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // HEAD is answered as GET, as the instances' own admin API does.
    let method = api::method(&request);
    match (&method, segments.as_slice()) {
        (&Method::GET, ["targets.json"]) => own(targets(state)),
        (&Method::GET, ["fleet", "events"]) => own(stream::stream(&state.targets, &state.client)),
        (_, ["targets.json"] | ["fleet", "events"]) => own(api::not_allowed(Allow::Read)),
        (_, ["t", index, rest @ ..]) => {
            let Some(target) = index.parse().ok().and_then(|i: usize| state.targets.get(i)) else {
                return own(api::error(
                    StatusCode::NOT_FOUND,
                    &format!("no target {index}: see targets.json"),
                ));
            };
            let allowed = match rest {
                ["api", "stats"] | ["api", "events"] | ["hystrix.stream"] => Allow::Read,
                ["api", "breakers", _, _] => Allow::Write,
                _ => {
                    return own(api::error(
                        StatusCode::NOT_FOUND,
                        "the fleet view passes on GET api/stats, GET api/events, GET \
                         hystrix.stream and POST api/breakers/<upstream>/<endpoint> only",
                    ));
                }
            };
            let fits = match allowed {
                Allow::Read => method == Method::GET,
                Allow::Write => method == Method::POST,
            };
            if !fits {
                return own(api::not_allowed(allowed));
            }
            // Passed on with its own method: a HEAD stays a HEAD.
            let rest = rest.join("/");
            pass_on(request, &rest, target, &state.client).await
        }
        (method, _) => match dashboard::asset(&path) {
            Some(asset) if method == Method::GET => own(asset),
            Some(_) => own(api::not_allowed(Allow::Read)),
            None => own(api::error(
                StatusCode::NOT_FOUND,
                &format!("nothing at {method} {path}"),
            )),
        },
    }
}

fn targets(state: &Targets) -> Answer {
    let targets: Vec<_> = state
        .targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            json!({"name": target.name, "base": format!("t/{i}"), "events": "fleet/events"})
        })
        .collect();
    dashboard::targets(&json!(targets))
}

// Sends `request` to `rest` (and the query) on `target`, and its answer back as it comes.
async fn pass_on(
    request: Request<Incoming>,
    rest: &str,
    target: &Target,
    client: &Client<HttpConnector, Full<Bytes>>,
) -> Passed {
    let (parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri = format!("http://{}/{rest}{query}", target.authority);
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return own(api::error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {err}"),
            ));
        }
    };
    let mut onward = Request::new(Full::new(body));
    *onward.method_mut() = parts.method;
    *onward.uri_mut() = match uri.parse() {
        Ok(uri) => uri,
        Err(_) => return own(api::error(StatusCode::BAD_REQUEST, "not a valid path")),
    };
    for name in PASSED_ON {
        if let Some(value) = parts.headers.get(&name) {
            onward.headers_mut().insert(name, value.clone());
        }
    }

    let unreachable = |why: String| {
        own(api::error(
            StatusCode::BAD_GATEWAY,
            &format!("rampart at {} is unreachable: {why}", target.name),
        ))
    };
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, client.request(onward)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return unreachable(err.to_string()),
        Err(_) => return unreachable(format!("no answer within {ANSWER_TIMEOUT:?}")),
    };
    let (parts, body) = answer.into_parts();
    let mut passed = Response::new(body.boxed_unsync());
    *passed.status_mut() = parts.status;
    for name in [CONTENT_TYPE, CACHE_CONTROL] {
        if let Some(value) = parts.headers.get(&name) {
            passed.headers_mut().insert(name, value.clone());
        }
    }
    passed
}

// One of the fleet view's own answers, whose body cannot fail.
fn own(answer: Answer) -> Passed {
    answer.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_an_http_address_with_a_port() {
        let target = Target::parse("http://127.0.0.1:9901").unwrap();
        assert_eq!(target.name(), "127.0.0.1:9901");
        assert_eq!(
            Target::parse("10.0.0.7:9901").unwrap().name(),
            "10.0.0.7:9901"
        );
        assert_eq!(
            Target::parse("http://[::1]:9901/ignored").unwrap().name(),
            "[::1]:9901"
        );
        for (url, reason) in [
            ("https://10.0.0.7:9901", "only http://"),
            ("http://10.0.0.7", "no port"),
            ("http:// bad", "not a URL"),
        ] {
            let err = Target::parse(url).unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
            assert!(err.contains(url), "{url}: {err}");
        }
    }

    #[test]
    fn a_target_with_a_password_is_refused_without_showing_it() {
        for (url, reason) in [
            ("http://user:pw5ecret@10.0.0.7:9901", "a user or password"),
            ("http://user:pw5ecret@10.0.0.7", "no port"),
            ("https://user:pw5ecret@10.0.0.7:9901", "only http://"),
        ] {
            let err = Target::parse(url).unwrap_err();
            assert!(err.to_string().contains(reason), "{url}: {err}");
            assert!(!err.to_string().contains("5ecret"), "{url}: {err}");
            assert!(!format!("{err:?}").contains("5ecret"), "{url}: {err:?}");
        }
    }
}
