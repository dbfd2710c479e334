//! `GET /`: the live dashboard, a page and two assets compiled into the binary (no build step,
//! nothing fetched from elsewhere), and `GET /targets.json`, which tells the page whose events
//! to follow.
//!
//! The page reads the proxy only through the admin API (`/api/events`, and
//! `POST /api/breakers/...` for its force buttons), at URLs relative to each target's `base`. The
//! admin server names one target, itself, at `"."`; a server in front of several rampart
//! instances can serve the same files with a `targets.json` naming each, and the page groups
//! their routes and upstreams by instance.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::api::{Answer, whole};

/// The list of instances the page follows.
const TARGETS: &str = "/targets.json";

/// What the page may load and connect to: its own origin only, so that it works without a
/// network and a value shown on it cannot pull anything in from elsewhere.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                      base-uri 'none'; frame-ancestors 'none'";

/// One file of the dashboard.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page and its assets, by path.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("dashboard/index.html"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/dashboard.js"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/dashboard.css"),
    },
];

/// Whether `path` is one of the dashboard's.
pub(crate) fn serves(path: &str) -> bool {
    path == TARGETS || ASSETS.iter().any(|asset| asset.path == path)
}

/// The answer to `GET path`, for a path [`serves`] accepts; `addr` is the admin API's own
/// address, the name of its one target.
pub(crate) fn get(path: &str, addr: SocketAddr) -> Answer {
    asset(path).unwrap_or_else(|| targets(&json!([{"name": addr.to_string(), "base": "."}])))
}

/// The page or one of its assets, if `path` is one.
pub(crate) fn asset(path: &str) -> Option<Answer> {
    let asset = ASSETS.iter().find(|asset| asset.path == path)?;
    Some(file(
        asset.content_type,
        Bytes::from_static(asset.body.as_bytes()),
    ))
}

/// `targets.json`: the instances the page follows.
pub(crate) fn targets(list: &Value) -> Answer {
    file("application/json", Bytes::from(list.to_string()))
}

fn file(content_type: &'static str, body: Bytes) -> Answer {
    let mut response = Response::new(whole(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary, which the browser cannot tell by their URLs.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_every_asset_by_a_relative_url() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            let relative = asset.path.trim_start_matches('/');
            assert!(
                page.contains(&format!("\"{relative}\"")),
                "index.html does not load {relative}"
            );
        }
        assert!(serves(TARGETS));
        assert!(!serves("/index.htm"));
    }

    #[test]
    fn the_page_names_its_icon_so_no_browser_asks_for_a_missing_one() {
        // Without an icon of its own, a browser asks for /favicon.ico, which is not served, and
        // logs the 404 as an error on the console of every load.
        let page = ASSETS[0].body;
        assert!(page.contains(r#"<link rel="icon" href="data:,">"#));
        assert!(!serves("/favicon.ico"));
        assert!(
            POLICY.contains("img-src 'self' data:"),
            "the policy allows it"
        );
    }
}
