//! HTTP/1.1 upgrades (a WebSocket, for one): the handshake goes to the upstream like any request,
//! and once the upstream answers 101 the client's connection and the upstream's are joined byte
//! for byte until either side closes.
//!
//! An upgrade is one attempt: never retried, never hedged (the handshake carries `Upgrade`
//! upstream, which the retry reads as "once only"). The endpoint's breaker records the 101 as a
//! success, a connect failure as usual. The route's `timeout` bounds the wait for the 101, not the
//! tunnel (`idle_timeout` and `body_idle_timeout` speak of HTTP exchanges, and a tunnel carries
//! none): it lasts until a side closes, until no byte has passed either way for the listener's
//! `tunnel_idle_timeout` (as nginx's `proxy_read_timeout` and Envoy's stream idle timeout close
//! an idle WebSocket), or until the proxy shuts down, which closes every tunnel as its drain
//! begins rather than wait for them.
//!
//! `Upgrade: h2c` is never tunnelled: rampart speaks HTTP/2 to a client by prior knowledge only,
//! and an upstream's HTTP/2 is rampart's own business. Such a request goes upstream as a plain
//! HTTP/1.1 request without `Upgrade` (RFC 9113 §3.1 lets a server ignore the offer).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::h1;
use crate::stall::unmoved_for;

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
/// switch, closed once no byte has passed either way for `idle` (to twice that); `None` (and
/// the response passes as any other) when it answered otherwise.
pub(crate) fn join<B>(
    client: OnUpgrade,
    response: &mut Response<B>,
    idle: Duration,
) -> Option<Tunnel> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    // Only an HTTP/1.1 upstream's connection can switch.
    let upstream = response.extensions_mut().remove::<h1::Upgraded>()?;
    Some(Box::pin(async move {
        // The client's upgrade failing (it went away before the 101 was written, say) leaves
        // nothing to join; dropping the upstream's connection closes it.
        let (Ok(client), Some((upstream, early))) = (client.await, upstream.take()) else {
            return;
        };
        let moved = Arc::new(AtomicU64::new(0));
        let mut client = Moving::new(TokioIo::new(client), moved.clone());
        let mut upstream = Moving::new(upstream, moved.clone());
        // What the upstream sent right after its 101 came with the head's read.
        if client.write_all(&early).await.is_err() {
            return;
        }
        // Ends when either side closes (each shutdown is passed on to the other) or fails, or
        // when nothing moved for a whole `idle`: a peer gone without a word (a host that
        // crashed, a network cut) would otherwise hold both connections for good.
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = unmoved_for(idle, || Some(moved.load(Ordering::Relaxed))) => {}
        }
    }))
}

pin_project_lite::pin_project! {
    /// One side of a tunnel, counting its reads that brought bytes in `moved`, shared with the
    /// other side: a plain add per read, no clock.
    struct Moving<T> {
        #[pin]
        inner: T,
        moved: Arc<AtomicU64>,
    }
}

impl<T> Moving<T> {
    fn new(inner: T, moved: Arc<AtomicU64>) -> Moving<T> {
        Moving { inner, moved }
    }
}

impl<T: AsyncRead> AsyncRead for Moving<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Moving<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
