//! Name lookups of upstream endpoints, bounded by the upstream's `connect_timeout`.
//!
//! hyper-util's connector bounds only the TCP connect by its timeout. A lookup goes to
//! `getaddrinfo` on tokio's blocking pool, which waits as long as the system resolver does (with
//! the usual `resolv.conf`, 5 s per server and try): a DNS server that stops answering would hold
//! every attempt to a named endpoint until the route's timeout, and no retry could go elsewhere
//! in time. [`Resolver`] fails a lookup that outlasts `connect_timeout` as the connect error it
//! is (`upstream-connect`, retryable, counted against the endpoint like a refused connection).
//! The abandoned `getaddrinfo` keeps its blocking thread until the system resolver gives up; the
//! attempt does not wait for it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

/// The connector of every upstream client: TCP, with lookups bounded by [`Resolver`].
pub(crate) type Connector = HttpConnector<Resolver>;

/// A resolver whose lookups fail once they take longer than a timeout.
#[derive(Clone, Debug)]
pub(crate) struct Resolver<R = GaiResolver> {
    inner: R,
    timeout: Duration,
}

impl Resolver {
    /// The system resolver, bounded by `timeout`.
    pub(crate) fn system(timeout: Duration) -> Resolver {
        Resolver::new(GaiResolver::new(), timeout)
    }
}

impl<R> Resolver<R> {
    pub(crate) fn new(inner: R, timeout: Duration) -> Resolver<R> {
        Resolver { inner, timeout }
    }
}

impl<R> Service<Name> for Resolver<R>
where
    R: Service<Name, Error = io::Error>,
    R::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = io::Error;
    // Boxed: one allocation per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = io::Result<R::Response>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let timeout = self.timeout;
        let message = format!("looking up {} took longer than {timeout:?}", name.as_str());
        let lookup = tokio::time::timeout(timeout, self.inner.call(name));
        Box::pin(async move {
            lookup
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, message)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::vec::IntoIter;

    use super::*;

    type Addrs = IntoIter<SocketAddr>;

    fn name() -> Name {
        "upstream.test".parse().unwrap()
    }

    // A resolver that answers after `delay` with one address.
    fn answering_after(
        delay: Duration,
    ) -> impl Service<Name, Response = Addrs, Error = io::Error, Future: Send + 'static> + Clone
    {
        tower::service_fn(move |_: Name| async move {
            tokio::time::sleep(delay).await;
            let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
            Ok::<Addrs, io::Error>(vec![addr].into_iter())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_outlasts_the_timeout_fails_as_timed_out() {
        let mut resolver = Resolver::new(answering_after(Duration::from_secs(30)), ms(250));
        let started = tokio::time::Instant::now();
        let err = resolver.call(name()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("upstream.test"), "{err}");
        assert_eq!(started.elapsed(), ms(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_within_the_timeout_gives_its_addresses() {
        let mut resolver = Resolver::new(answering_after(ms(100)), ms(250));
        let addrs: Vec<SocketAddr> = resolver.call(name()).await.unwrap().collect();
        assert_eq!(addrs, vec!["127.0.0.1:80".parse::<SocketAddr>().unwrap()]);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
