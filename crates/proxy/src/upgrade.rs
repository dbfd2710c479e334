//! HTTP/1.1 upgrades (a WebSocket, for one): the handshake goes to the upstream like any request,
//! and once the upstream answers 101 the client's connection and the upstream's are joined byte
//! for byte until either side closes.
//!
//! An upgrade is one attempt: never retried, never hedged (the handshake carries `Upgrade`
//! upstream, which the retry reads as "once only"). The endpoint's breaker records the 101 as a
//! success, a connect failure as usual. The route's `timeout` bounds the wait for the 101, not the
//! tunnel, which has no timeout of its own (`idle_timeout` and `body_idle_timeout` speak of HTTP
//! exchanges, and a tunnel carries none): it lasts until a side closes, or the proxy shuts down,
//! which closes every tunnel as its drain begins rather than wait for them.
//!
//! `Upgrade: h2c` is never tunnelled: rampart speaks HTTP/2 to a client by prior knowledge only,
//! and an upstream's HTTP/2 is rampart's own business. Such a request goes upstream as a plain
//! HTTP/1.1 request without `Upgrade` (RFC 9113 §3.1 lets a server ignore the offer).

use std::future::Future;
use std::pin::Pin;

use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::h1;

/// A joined pair of connections, to be run by the client connection's task.
pub(crate) type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What `request` offers of a switch of protocols: `None` when it has no Upgrade field, else
/// whether rampart tunnels it: HTTP/1.1, `Connection` naming `upgrade`, and an `Upgrade`
/// offering no `h2c`.
pub(crate) fn offer<B>(request: &Request<B>) -> Option<bool> {
    // Most requests offer no upgrade: one lookup tells.
    let mut offers = request.headers().get_all(UPGRADE).iter().peekable();
    offers.peek()?;
    if request.version() != Version::HTTP_11 {
        return Some(false);
    }
    let names_upgrade = request.headers().get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    Some(
        names_upgrade
            && offers.all(|value| {
                value.to_str().is_ok_and(|value| {
                    value.split(',').all(|protocol| {
                        let name = protocol.split('/').next().unwrap_or("").trim();
                        !name.is_empty() && !name.eq_ignore_ascii_case("h2c")
                    })
                })
            }),
    )
}

/// The tunnel joining the client's connection to the upstream's, when the upstream agreed to
/// switch; `None` (and the response passes as any other) when it answered otherwise.
pub(crate) fn join<B>(client: OnUpgrade, response: &mut Response<B>) -> Option<Tunnel> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    // Only an HTTP/1.1 upstream's connection can switch.
    let upstream = response.extensions_mut().remove::<h1::Upgraded>()?;
    Some(Box::pin(async move {
        // The client's upgrade failing (it went away before the 101 was written, say) leaves
        // nothing to join; dropping the upstream's connection closes it.
        let (Ok(client), Some((mut upstream, early))) = (client.await, upstream.take()) else {
            return;
        };
        let mut client = TokioIo::new(client);
        // What the upstream sent right after its 101 came with the head's read.
        if client.write_all(&early).await.is_err() {
            return;
        }
        // Ends when either side closes (each shutdown is passed on to the other) or fails.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(connection: &str, upgrade: &str) -> Request<()> {
        let mut builder = Request::get("/");
        if !connection.is_empty() {
            builder = builder.header(CONNECTION, connection);
        }
        if !upgrade.is_empty() {
            builder = builder.header(UPGRADE, upgrade);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_websocket_handshake_is_tunnelled() {
        assert_eq!(offer(&request("Upgrade", "websocket")), Some(true));
        assert_eq!(
            offer(&request("keep-alive, upgrade", "websocket/13")),
            Some(true)
        );
    }

    #[test]
    fn h2c_and_half_asked_upgrades_are_offers_not_tunnelled() {
        assert_eq!(
            offer(&request("Upgrade, HTTP2-Settings", "h2c")),
            Some(false)
        );
        assert_eq!(offer(&request("upgrade", "websocket, h2c")), Some(false));
        assert_eq!(offer(&request("", "websocket")), Some(false));
        let mut http10 = request("upgrade", "websocket");
        *http10.version_mut() = Version::HTTP_10;
        assert_eq!(offer(&http10), Some(false));
    }

    #[test]
    fn a_request_without_an_upgrade_field_offers_none() {
        assert_eq!(offer(&request("upgrade", "")), None);
        let plain = Request::get("/").body(()).unwrap();
        assert_eq!(offer(&plain), None);
    }
}
