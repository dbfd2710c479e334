//! Name lookups of upstream endpoints, bounded by the upstream's `connect_timeout`, one at a
//! time per name.
//!
//! hyper-util's connector bounds only the TCP connect by its timeout. A lookup goes to
//! `getaddrinfo` on tokio's blocking pool, which waits as long as the system resolver does (with
//! the usual `resolv.conf`, 5 s per server and try): a DNS server that stops answering would hold
//! every attempt to a named endpoint until the route's timeout, and no retry could go elsewhere
//! in time. [`Resolver`] fails a lookup that outlasts `connect_timeout` as the connect error it
//! is (`upstream-connect`, retryable, counted against the endpoint like a refused connection).
//!
//! The abandoned `getaddrinfo` keeps its blocking thread until the system resolver gives up.
//! So that a resolver that stopped answering is not sent one more query, and a blocking thread
//! not held, for every connection attempt meanwhile, a name has at most one lookup under way:
//! the connections that need it while it lasts wait for its answer, each within its own
//! timeout, as Envoy's DNS cache resolves each host once for all its callers.
//!
//! A name that stands for several addresses gives each new connection its addresses starting at
//! the next one in turn (among those of the family listed first, which the system's resolver
//! put first for a reason): the connector tries them in order, and would otherwise send every
//! connection, so all traffic, to the first.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tokio::sync::watch;
use tower_service::Service;

use crate::lock;

/// The connector of every upstream client: TCP, with lookups bounded by [`Resolver`].
pub(crate) type Connector = HttpConnector<Resolver>;

/// The answer of one lookup, for every connection waiting for it: the addresses, or the error's
/// kind and text (an `io::Error` cannot be cloned).
type Answer = Result<Vec<SocketAddr>, (io::ErrorKind, String)>;

/// A resolver whose lookups fail once they take longer than a timeout, asking its inner
/// resolver once for a name however many connections wait for it. Clones share their lookups.
#[derive(Clone, Debug)]
pub(crate) struct Resolver<R = GaiResolver> {
    inner: R,
    timeout: Duration,
    /// The lookups under way, by name; each removes itself when it has its answer.
    in_flight: Arc<Mutex<HashMap<Name, watch::Receiver<Option<Answer>>>>>,
    /// Counts the connections asked for: the address each starts at.
    turn: Arc<AtomicUsize>,
}

impl Resolver {
    /// The system resolver, bounded by `timeout`.
    pub(crate) fn system(timeout: Duration) -> Resolver {
        Resolver::new(GaiResolver::new(), timeout)
    }
}

impl<R> Resolver<R> {
    pub(crate) fn new(inner: R, timeout: Duration) -> Resolver<R> {
        Resolver {
            inner,
            timeout,
            in_flight: Arc::default(),
            turn: Arc::default(),
        }
    }
}

impl<R> Resolver<R>
where
    R: Service<Name, Error = io::Error>,
    R::Response: Iterator<Item = SocketAddr>,
    R::Future: Send + 'static,
{
    /// The answer to come for `name`: the lookup under way, or a new one.
    fn lookup(&mut self, name: Name) -> watch::Receiver<Option<Answer>> {
        let mut in_flight = lock(&self.in_flight);
        if let Some(answer) = in_flight.get(&name) {
            return answer.clone();
        }
        let (send, answer) = watch::channel(None);
        in_flight.insert(name.clone(), answer.clone());
        drop(in_flight);
        let lookup = self.inner.call(name.clone());
        let in_flight = Arc::downgrade(&self.in_flight);
        // On its own task, so that it is awaited to its end whoever stopped waiting for it.
        tokio::spawn(async move {
            let answer = match lookup.await {
                Ok(addrs) => Ok(addrs.collect()),
                Err(err) => Err((err.kind(), err.to_string())),
            };
            if let Some(in_flight) = in_flight.upgrade() {
                lock(&in_flight).remove(&name);
            }
            // Nobody may be waiting any more.
            let _ = send.send(Some(answer));
        });
        answer
    }
}

impl<R> Service<Name> for Resolver<R>
where
    R: Service<Name, Error = io::Error>,
    R::Response: Iterator<Item = SocketAddr>,
    R::Future: Send + 'static,
{
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    // Boxed: one allocation per new connection, not per request.
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let timeout = self.timeout;
        let message = format!("looking up {} took longer than {timeout:?}", name.as_str());
        let mut answer = self.lookup(name);
        // Relaxed: the turn only spreads connections; nothing else depends on it.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let answered = tokio::time::timeout(timeout, answer.wait_for(Option::is_some)).await;
            let Ok(answered) = answered else {
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            };
            let answered = answered.map_err(|_| io::Error::other("the lookup ended unanswered"))?;
            match answered.as_ref().expect("waited for an answer") {
                Ok(addrs) => Ok(in_turn(addrs, turn).into_iter()),
                Err((kind, text)) => Err(io::Error::new(*kind, text.clone())),
            }
        })
    }
}

/// `addrs` starting at the `turn`th of those of the first one's family, in their order round,
/// the others after them as they were.
fn in_turn(addrs: &[SocketAddr], turn: usize) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut preferred, others): (Vec<_>, Vec<_>) = addrs
        .iter()
        .partition(|addr| addr.is_ipv4() == first.is_ipv4());
    let len = preferred.len();
    preferred.rotate_left(turn % len);
    preferred.extend(others);
    preferred
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::IntoIter;

    use super::*;

    type Addrs = IntoIter<SocketAddr>;

    fn name() -> Name {
        "upstream.test".parse().unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:80".parse().unwrap()
    }

    // A resolver that answers `answer` after `delay`, counting the lookups it is asked for.
    fn answering_after(
        delay: Duration,
        answer: io::Result<()>,
        lookups: Arc<AtomicUsize>,
    ) -> impl Service<Name, Response = Addrs, Error = io::Error, Future: Send + 'static> + Clone
    {
        let answer = answer.map_err(|err| (err.kind(), err.to_string()));
        tower::service_fn(move |_: Name| {
            lookups.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move {
                tokio::time::sleep(delay).await;
                match answer {
                    Ok(()) => Ok::<Addrs, io::Error>(vec![addr()].into_iter()),
                    Err((kind, text)) => Err(io::Error::new(kind, text)),
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_outlasts_the_timeout_fails_as_timed_out() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let inner = answering_after(Duration::from_secs(30), Ok(()), lookups);
        let mut resolver = Resolver::new(inner, ms(250));
        let started = tokio::time::Instant::now();
        let err = resolver.call(name()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("upstream.test"), "{err}");
        assert_eq!(started.elapsed(), ms(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_within_the_timeout_gives_its_addresses() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let mut resolver = Resolver::new(answering_after(ms(100), Ok(()), lookups), ms(250));
        let addrs: Vec<SocketAddr> = resolver.call(name()).await.unwrap().collect();
        assert_eq!(addrs, vec![addr()]);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_needing_a_name_at_once_share_one_lookup() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let mut resolver =
            Resolver::new(answering_after(ms(100), Ok(()), lookups.clone()), ms(250));
        let mut clone = resolver.clone();
        let (a, b) = tokio::join!(resolver.call(name()), clone.call(name()));
        assert_eq!(a.unwrap().collect::<Vec<_>>(), vec![addr()]);
        assert_eq!(b.unwrap().collect::<Vec<_>>(), vec![addr()]);
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        // Once answered, the next connection looks the name up again.
        resolver.call(name()).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_given_up_on_is_still_the_one_later_connections_wait_for() {
        // The resolver stopped answering: it is asked once, not once per connection attempt.
        let lookups = Arc::new(AtomicUsize::new(0));
        let inner = answering_after(Duration::from_secs(10), Ok(()), lookups.clone());
        let mut resolver = Resolver::new(inner, ms(250));
        for _ in 0..3 {
            let err = resolver.call(name()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        // When it answers at last, a connection waiting then gets the answer.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let mut late = Resolver {
            timeout: Duration::from_secs(5),
            ..resolver.clone()
        };
        assert_eq!(
            late.call(name()).await.unwrap().collect::<Vec<_>>(),
            vec![addr()]
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_fails_every_connection_waiting_for_it() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let failing = Err(io::Error::new(io::ErrorKind::NotFound, "no such host"));
        let mut resolver =
            Resolver::new(answering_after(ms(50), failing, lookups.clone()), ms(250));
        let mut clone = resolver.clone();
        let (a, b) = tokio::join!(resolver.call(name()), clone.call(name()));
        for err in [a.unwrap_err(), b.unwrap_err()] {
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            assert!(err.to_string().contains("no such host"), "{err}");
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn connections_start_at_each_address_in_turn_within_the_preferred_family() {
        let addrs: Vec<SocketAddr> = ["[::1]:80", "10.0.0.1:80", "[::2]:80", "[::3]:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let firsts: Vec<SocketAddr> = (0..4).map(|turn| in_turn(&addrs, turn)[0]).collect();
        assert_eq!(firsts, [addrs[0], addrs[2], addrs[3], addrs[0]]);
        for turn in 0..4 {
            let mut each = in_turn(&addrs, turn);
            assert_eq!(each[3], addrs[1], "the other family comes after");
            each.sort();
            let mut all = addrs.clone();
            all.sort();
            assert_eq!(each, all, "every address is tried");
        }
        assert!(in_turn(&[], 3).is_empty());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
