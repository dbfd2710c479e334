//! A fault-injecting TCP proxy, for machines without netem.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The misbehaviour a [`FaultProxy`] applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes unchanged.
    #[default]
    None,
    /// Hold each chunk this long before forwarding it, in both directions.
    Latency(Duration),
    /// Accept, then close with a TCP reset (`SO_LINGER` 0), so the client reads
    /// `ConnectionReset`.
    Reset,
    /// Close the listening socket, so connects are refused; switching to another fault listens
    /// on the same port again.
    Refuse,
    /// Accept and read, but never answer and never close.
    Blackhole,
    /// Forward this many bytes of the response (target to client), then reset: a reset in the
    /// middle of a body. Requests are forwarded unchanged.
    ResetAfter(u64),
}

/// A TCP proxy on 127.0.0.1 that forwards to one target and injects [`Fault`]s on demand.
///
/// It forwards bytes both ways until told to misbehave with [`set_fault`](Self::set_fault). A
/// fault switched on applies to the connections accepted after it and, where a live connection
/// can suffer it, to the connections already open:
///
/// | fault | new connections | open connections |
/// |---|---|---|
/// | [`Fault::None`] | forwarded | forwarded again (except those accepted under `Blackhole`) |
/// | [`Fault::Latency`] | each chunk delayed, both ways | the same, from the next chunk |
/// | [`Fault::Reset`] | accepted, then reset (RST) | reset at once |
/// | [`Fault::Refuse`] | refused: nothing listens on the port | left alone, as a closed port would (those not yet accepted are reset) |
/// | [`Fault::Blackhole`] | read and never answered nor closed | what they send and receive is dropped |
/// | [`Fault::ResetAfter`] | `n` response bytes, then reset | `n` more response bytes, then reset |
///
/// [`freeze_open`](Self::freeze_open) silences the connections open at the call for good, whatever
/// the fault, and leaves later ones to it.
///
/// Dropping the proxy closes its port and every connection it holds.
///
/// Must be started inside a tokio runtime with the IO and time drivers enabled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rampart_test_support::{Fault, FaultProxy};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let proxy = FaultProxy::start(target.local_addr()?).await?;
///
/// proxy.set_fault(Fault::Refuse)?;
/// assert!(tokio::net::TcpStream::connect(proxy.addr()).await.is_err());
///
/// proxy.set_fault(Fault::None)?;
/// let mut client = tokio::net::TcpStream::connect(proxy.addr()).await?;
/// client.write_all(b"ping").await?;
/// let (mut server, _) = target.accept().await?;
/// let mut got = [0; 4];
/// server.read_exact(&mut got).await?;
/// assert_eq!(&got, b"ping");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The port, held while connects are refused (see [`FaultProxy::set_fault`]).
    held: Mutex<Option<TcpSocket>>,
    faults: watch::Sender<Fault>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    /// `None` while the fault is [`Fault::Refuse`]. The accept loop borrows the listener only
    /// inside one poll, so `set_fault` can close the port at once.
    listener: Mutex<Option<TcpListener>>,
    /// The runtime the proxy was started on, to register a re-opened listener from any thread.
    runtime: Handle,
    counters: Counters,
    /// How many times [`FaultProxy::freeze_open`] was called: a connection accepted when it
    /// stood lower is frozen.
    freezes: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    to_target: AtomicU64,
    to_client: AtomicU64,
}

/// How one direction of a proxied connection ended.
enum End {
    /// The sender closed its side; the close was passed on.
    Eof,
    /// The connection must be reset: a fault asked for it, or a socket failed.
    Reset,
}

#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

// === impl FaultProxy ===

impl FaultProxy {
    /// Listens on 127.0.0.1 on a free port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(listener)),
            runtime: Handle::current(),
            counters: Counters::default(),
            freezes: AtomicU64::new(0),
        });
        let (faults, _) = watch::channel(Fault::None);
        let accept_task = tokio::spawn(accept_loop(shared.clone(), faults.subscribe(), target));
        Ok(FaultProxy {
            addr,
            shared,
            held: Mutex::new(None),
            faults,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.faults.borrow()
    }

    /// Switches the fault; see the table on [`FaultProxy`] for what it does to open connections.
    ///
    /// Switching to [`Fault::Refuse`] closes the port before returning; switching away from it
    /// listens again on the same port before returning, so a connect right after succeeds.
    ///
    /// While refusing, the port stays bound by a socket that does not listen (a connect to it
    /// is refused as to a closed port): the port was chosen by the kernel from the ephemeral
    /// range, where outgoing connections also take their local ports, and one of the many a
    /// test suite makes would otherwise take it before the proxy listens again.
    ///
    /// # Errors
    ///
    /// Re-opening the port fails if another socket took it in the instant between the close
    /// and the bind that holds it; the fault then stays `Refuse`.
    pub fn set_fault(&self, fault: Fault) -> io::Result<()> {
        {
            let mut listener = self.shared.listener();
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            match (fault, listener.is_some()) {
                (Fault::Refuse, true) => {
                    *listener = None;
                    // Best effort: without it, the port is only as safe as before.
                    *held = self.hold().ok();
                }
                (Fault::Refuse, false) | (_, true) => {}
                (_, false) => *listener = Some(self.rebind(held.take())?),
            }
        }
        self.faults.send_replace(fault);
        Ok(())
    }

    /// Every connection open now goes silent for good, whatever the fault later: what it sends
    /// and receives is dropped, and it is never closed. Connections accepted afterwards are
    /// served as the fault in force says. A wedged peer, or a flow a middlebox black-holed,
    /// while the endpoint itself serves new connections.
    pub fn freeze_open(&self) {
        // Each pump looks at the count for every chunk it reads.
        self.shared.freezes.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far, whatever the fault did to them.
    pub fn connections(&self) -> u64 {
        self.shared.counters.accepted.load(Ordering::Relaxed)
    }

    /// Bytes handed on from clients to the target.
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.counters.to_target.load(Ordering::Relaxed)
    }

    /// Bytes handed on from the target to clients.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.counters.to_client.load(Ordering::Relaxed)
    }

    // A socket bound to the proxy's port, not listening: it keeps the port while connects are
    // refused. SO_REUSEADDR, as the listener's, so the old listener's connections still open
    // or lingering in TIME_WAIT do not stand in the way.
    fn hold(&self) -> io::Result<TcpSocket> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        Ok(socket)
    }

    fn rebind(&self, held: Option<TcpSocket>) -> io::Result<TcpListener> {
        let _runtime = self.shared.runtime.enter();
        let socket = match held {
            Some(socket) => socket,
            None => self.hold()?,
        };
        socket.listen(1024)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Closing the port here, not when the aborted task is next polled, frees it at once.
        self.shared.listener().take();
        // The accept task owns the connection tasks; aborting it drops them with their sockets.
        self.accept_task.abort();
    }
}

// === impl Shared ===

impl Shared {
    fn listener(&self) -> MutexGuard<'_, Option<TcpListener>> {
        self.listener.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the next connection on the listener in force, or for the fault to change.
    async fn accept(&self) -> Option<io::Result<TcpStream>> {
        std::future::poll_fn(|cx| match self.listener().as_ref() {
            Some(listener) => listener.poll_accept(cx).map(|r| Some(r.map(|(s, _)| s))),
            // Closed for Refuse: `set_fault` re-opens it and the fault change wakes the loop.
            None => Poll::Ready(None),
        })
        .await
    }
}

// === the tasks ===

async fn accept_loop(shared: Arc<Shared>, mut faults: watch::Receiver<Fault>, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = shared.accept() => accepted,
            changed = faults.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Some(Ok(stream)) => stream,
            // A connection that failed before it was accepted concerns no one.
            Some(Err(_)) => continue,
            None => {
                // Refused: sleep until the fault changes.
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let generation = shared.freezes.load(Ordering::SeqCst);
        connections.spawn(serve(
            stream,
            target,
            faults.clone(),
            shared.clone(),
            generation,
        ));
    }
}

async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut faults: watch::Receiver<Fault>,
    shared: Arc<Shared>,
    generation: u64,
) {
    let fault = *faults.borrow_and_update();
    match fault {
        // Refuse can only be seen here by a connection that raced the closing of the port.
        Fault::Reset | Fault::Refuse => return reset(client),
        Fault::Blackhole => return blackhole(client, faults).await,
        Fault::None | Fault::Latency(_) | Fault::ResetAfter(_) => {}
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        // The target is down: the client learns it as abruptly as a direct connect would.
        return reset(client);
    };
    proxy(client, upstream, faults, &shared, generation).await;
}

/// Forwards both directions until both have ended, or resets both sockets.
async fn proxy(
    mut client: TcpStream,
    mut upstream: TcpStream,
    faults: watch::Receiver<Fault>,
    shared: &Shared,
    generation: u64,
) {
    let counters = &shared.counters;
    let frozen = || shared.freezes.load(Ordering::SeqCst) > generation;
    let must_reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let to_target = pump(
            &mut client_read,
            &mut upstream_write,
            Direction::ToTarget,
            faults.clone(),
            &counters.to_target,
            frozen,
        );
        let to_client = pump(
            &mut upstream_read,
            &mut client_write,
            Direction::ToClient,
            faults,
            &counters.to_client,
            frozen,
        );
        tokio::pin!(to_target, to_client);
        let (mut target_done, mut client_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut to_target, if !target_done => { target_done = true; end }
                end = &mut to_client, if !client_done => { client_done = true; end }
            };
            match end {
                End::Reset => break true,
                End::Eof if target_done && client_done => break false,
                End::Eof => {}
            }
        }
    };
    if must_reset {
        reset(client);
        reset(upstream);
    }
}

/// Copies one direction, chunk by chunk, applying the fault in force to each chunk.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    direction: Direction,
    mut faults: watch::Receiver<Fault>,
    counter: &AtomicU64,
    frozen: impl Fn() -> bool,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; 16 * 1024];
    // (the ResetAfter it counts for, response bytes it still lets through)
    let mut allowance: Option<(u64, u64)> = None;
    loop {
        let fault = *faults.borrow_and_update();
        if fault == Fault::Reset && !frozen() {
            return End::Reset;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // A fault switched on applies to an idle connection too (a reset, at once).
            changed = faults.changed() => {
                if changed.is_err() {
                    return End::Reset;
                }
                continue;
            }
        };
        let chunk = match read {
            Ok(0) => {
                // Pass the half-close on; the other direction may still be talking.
                return match to.shutdown().await {
                    Ok(()) => End::Eof,
                    Err(_) => End::Reset,
                };
            }
            Ok(n) => &buf[..n],
            Err(_) => return End::Reset,
        };
        if frozen() {
            continue;
        }
        // The fault in force when the chunk arrived, which may differ from the one above.
        let fault = *faults.borrow_and_update();
        let chunk = match (fault, direction) {
            (Fault::Reset, _) => return End::Reset,
            (Fault::Blackhole, _) => continue,
            (Fault::Latency(delay), _) => {
                tokio::time::sleep(delay).await;
                chunk
            }
            (Fault::ResetAfter(limit), Direction::ToClient) => {
                let left = match allowance {
                    Some((counted_for, left)) if counted_for == limit => left,
                    _ => limit,
                };
                let pass = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - pass as u64;
                allowance = Some((limit, left));
                if left == 0 {
                    let _ = write(to, &chunk[..pass], counter).await;
                    return End::Reset;
                }
                chunk
            }
            (Fault::None | Fault::Refuse | Fault::ResetAfter(_), _) => chunk,
        };
        if write(to, chunk, counter).await.is_err() {
            return End::Reset;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    chunk: &[u8],
    counter: &AtomicU64,
) -> io::Result<()> {
    // Counted before it is written, so a peer that has read it finds it counted.
    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    to.write_all(chunk).await?;
    to.flush().await
}

/// Reads and drops whatever the client sends, never answering, until the fault becomes
/// `Reset` or the proxy is dropped.
async fn blackhole(mut client: TcpStream, mut faults: watch::Receiver<Fault>) {
    let mut buf = vec![0; 16 * 1024];
    let mut open = true;
    loop {
        tokio::select! {
            read = client.read(&mut buf), if open => {
                // After the client's close there is nothing to read; still never close.
                if matches!(read, Ok(0) | Err(_)) {
                    open = false;
                }
            }
            changed = faults.changed() => {
                if changed.is_err() || *faults.borrow_and_update() == Fault::Reset {
                    return reset(client);
                }
            }
        }
    }
}

/// Closes the socket with a TCP reset instead of an orderly FIN.
fn reset(stream: TcpStream) {
    // With a zero linger, close sends RST and returns at once: nothing blocks the thread.
    let _ = stream.set_zero_linger();
    drop(stream);
}
