//! Fallback (`[routes.fallback]`): a canned answer instead of a failure.
//!
//! It wraps the route's stack from outside (DESIGN.md: "fallback is outermost so it can answer
//! whatever went wrong below"): when the stack gives up with one of the configured reasons, or the
//! upstream answers a 5xx and `on` names `5xx`, the client gets the configured status, headers and
//! body instead, marked `x-rampart-fallback: <reason>` so it can tell a degraded answer from a
//! real one. The body (inline, or `body_file` read once when the proxy starts) is shared, so an
//! answer costs no copy of it.
//!
//! Fault injection sits above it, so an injected abort keeps its `abort_status`, unless `on`
//! names `fault-injected`: then the fallback answers it, which is how a fallback is rehearsed.
//!
//! Not done yet: `stale` (serving the last good GET response) is read by the configuration but
//! not used; the configured body is served instead. A failure after the response head was sent
//! (the route's timeout passing mid-body) cannot be answered any more and is not covered.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use rampart_config::{Fallback as FallbackConfig, FallbackBody};
use rampart_http::Reason;
use rampart_http::rescue::{X_RAMPART_FALLBACK, mark_fallback};

use crate::Error;

/// One route's fallback answer, and when it is given.
#[derive(Debug)]
pub(crate) struct Fallback {
    on: Vec<Reason>,
    on_5xx: bool,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Fallback {
    /// The route's fallback; `path` names the table in errors. Reads `body_file` now, so a file
    /// that cannot be read stops the start rather than a request.
    pub(crate) fn new(config: &FallbackConfig, path: &str) -> Result<Fallback, Error> {
        let mut on = Vec::with_capacity(config.on.len());
        let mut on_5xx = false;
        for (i, reason) in config.on.iter().enumerate() {
            if reason == "5xx" {
                on_5xx = true;
                continue;
            }
            on.push(reason.parse::<Reason>().map_err(|err| Error::Invalid {
                path: format!("{path}.on[{i}]"),
                message: err.to_string(),
            })?);
        }
        let status = StatusCode::from_u16(config.status).map_err(|_| Error::Invalid {
            path: format!("{path}.status"),
            message: format!("{} is no HTTP status", config.status),
        })?;
        let mut headers = HeaderMap::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let invalid = |what: &str| Error::Invalid {
                path: format!("{path}.headers"),
                message: format!("{name:?}: invalid header {what}"),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| invalid("value"))?;
            headers.append(name, value);
        }
        let body = match &config.body {
            FallbackBody::Inline(text) => Bytes::from(text.clone()),
            FallbackBody::File(file) => {
                Bytes::from(std::fs::read(file).map_err(|source| Error::BodyFile {
                    path: format!("{path}.body_file"),
                    file: file.clone(),
                    source,
                })?)
            }
        };
        Ok(Fallback {
            on,
            on_5xx,
            status,
            headers,
            body,
        })
    }

    /// The fallback answer for a request the stack gave up on with `reason`, if `on` names it.
    pub(crate) fn for_reason(&self, reason: Reason) -> Option<Response<Bytes>> {
        if !self.on.contains(&reason) {
            return None;
        }
        let mut response = self.answer();
        mark_fallback(&mut response, reason);
        Some(response)
    }

    /// The fallback answer for an upstream's own answer with `status`, if it is a 5xx and `on`
    /// names `5xx`.
    pub(crate) fn for_status(&self, status: StatusCode) -> Option<Response<Bytes>> {
        if !(self.on_5xx && status.is_server_error()) {
            return None;
        }
        let mut response = self.answer();
        response
            .headers_mut()
            .insert(X_RAMPART_FALLBACK, HeaderValue::from_static("5xx"));
        Some(response)
    }

    fn answer(&self) -> Response<Bytes> {
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(on: &[&str], body: FallbackBody) -> FallbackConfig {
        FallbackConfig {
            on: on.iter().map(|s| s.to_string()).collect(),
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            stale: None,
        }
    }

    fn fallback(on: &[&str]) -> Fallback {
        let body = FallbackBody::Inline(r#"{"degraded":true}"#.into());
        Fallback::new(&config(on, body), "routes[0].fallback").unwrap()
    }

    #[test]
    fn answers_the_reasons_in_on_only() {
        let fallback = fallback(&["breaker-open", "upstream-connect"]);
        let response = fallback.for_reason(Reason::UpstreamConnect).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "upstream-connect");
        assert_eq!(response.body(), r#"{"degraded":true}"#);
        assert!(fallback.for_reason(Reason::Timeout).is_none());
        // Without "5xx" in `on`, an upstream's 503 stays the upstream's.
        assert!(
            fallback
                .for_status(StatusCode::SERVICE_UNAVAILABLE)
                .is_none()
        );
    }

    #[test]
    fn five_xx_covers_server_errors_only() {
        let fallback = fallback(&["5xx"]);
        let response = fallback.for_status(StatusCode::BAD_GATEWAY).unwrap();
        assert_eq!(response.headers()[X_RAMPART_FALLBACK], "5xx");
        assert!(fallback.for_status(StatusCode::NOT_FOUND).is_none());
        assert!(fallback.for_status(StatusCode::OK).is_none());
        assert!(fallback.for_reason(Reason::BreakerOpen).is_none());
    }

    #[test]
    fn an_unknown_reason_is_refused() {
        let config = config(&["nope"], FallbackBody::Inline(String::new()));
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(
            err.to_string().contains("routes[0].fallback.on[0]"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_body_file_is_a_start_error() {
        let missing = std::env::temp_dir().join("rampart-no-such-fallback-body");
        let config = config(&["timeout"], FallbackBody::File(missing));
        let err = Fallback::new(&config, "routes[0].fallback").unwrap_err();
        assert!(matches!(err, Error::BodyFile { .. }), "{err}");
    }
}
