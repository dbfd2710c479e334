//! The body types on both sides, and what bounds them: the route's deadline on a response body,
//! the listener's `body_idle_timeout` on both, its `max_request_body` on a request body; and the
//! outcome of a gRPC call whose status comes in the trailers.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rampart_http::Reason;
use rampart_http::classify::classify_trailers;
use rampart_http::headers::remove_forbidden_trailers;
use rampart_policy::Outcome;
use rampart_policy::error::BoxError;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use crate::connections::PooledBody;
use crate::turn;
use crate::upstream::OwnedPicked;

/// A request body on its way upstream: the client's, streamed. Boxed so that a replayable body
/// (for retries) can take its place without changing the client's type.
pub(crate) type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body on its way to the client: the upstream's, streamed, or rampart's own.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// An upstream's response body as the stack hands it on: ended by the route's deadline, and
/// recording the attempt's outcome when it ends if that waits for the trailers.
pub(crate) type UpstreamBody = OutcomeAtEnd<DeadlineBody<PooledBody>>;

/// The response rampart sends instead of the upstream's, for `reason`.
pub(crate) fn rescued(reason: Reason, is_grpc: bool) -> Response<ResponseBody> {
    boxed(rampart_http::rescue(reason, is_grpc))
}

/// A response made here, with its body in the proxy's body type.
pub(crate) fn boxed(response: Response<Bytes>) -> Response<ResponseBody> {
    response.map(|body| {
        Full::new(body)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync()
    })
}

// === impl Drained ===

/// The most of a client's HTTP/1.x request body left unread when its answer is ready that is
/// read and dropped after it so that the connection carries on, as nginx discards such a body:
/// a refusal (a rate limit, an injected fault, no route) of a small POST then costs the client
/// no new connection, just when connections are dearest. A longer body closes its connection.
pub(crate) const DRAIN_MAX: u64 = 64 * 1024;

/// How long the rest of such a body may take to come (or `body_idle_timeout`, when shorter), as
/// nginx's `lingering_timeout`: a body in flight comes well within it, one that stalled will not.
pub(crate) const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// A client's request body which, dropped before its end, is read to its end and dropped by a
/// task of its own, for at most `within`, so that its HTTP/1.x connection can take the next
/// request (hyper reads on only once a body has ended). Only for a body known to be small
/// ([`DRAIN_MAX`]); one that takes longer than `within` closes its connection, as hyper closes
/// one whose body is dropped unread.
pub(crate) struct Drained {
    inner: Option<Incoming>,
    within: Duration,
    fault: BodyFault,
}

impl Drained {
    /// `inner`, drained within `within` if dropped before its end; not drained without
    /// `within`, nor when `fault` says the exchange was waiting for it (it stalled) or it
    /// broke: what is not coming soon is not worth a wait.
    pub(crate) fn new(inner: Incoming, within: Option<Duration>, fault: BodyFault) -> Drained {
        Drained {
            inner: Some(inner),
            within: within.unwrap_or_default(),
            fault,
        }
    }
}

impl Body for Drained {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take()
            && !self.fault.awaits_client()
            && self.fault.get().is_none()
        {
            drain(body, self.within);
        }
    }
}

/// Reads `body` to its end and drops it, for at most `within` (none: dropped at once), in a
/// task of its own.
pub(crate) fn drain(mut body: Incoming, within: Duration) {
    if body.is_end_stream() || within.is_zero() {
        return;
    }
    // Not in a runtime (its shutdown): the body goes with it.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let _ = tokio::time::timeout(within, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

// === impl SignalEnd ===

pin_project_lite::pin_project! {
    /// A request body that says when its last frame has gone: an attempt's per-try timeout
    /// counts from then, as Envoy's does, since no answer can be asked of an upstream before it
    /// has the request (a client stream, an upload).
    pub(crate) struct SignalEnd<B> {
        #[pin]
        inner: B,
        ended: Option<tokio::sync::oneshot::Sender<()>>,
    }
}

impl<B> SignalEnd<B> {
    /// `inner`, and what resolves once its last frame has gone (or it is dropped before).
    pub(crate) fn new(inner: B) -> (SignalEnd<B>, tokio::sync::oneshot::Receiver<()>) {
        let (ended, sent) = tokio::sync::oneshot::channel();
        let body = SignalEnd {
            inner,
            ended: Some(ended),
        };
        (body, sent)
    }
}

impl<B: Body> Body for SignalEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some(ended) = this.ended.take()
        {
            let _ = ended.send(());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl DeadlineBody ===

pin_project_lite::pin_project! {
    /// A body that fails once `deadline` passes before its end: the route's timeout holds until
    /// the response's last byte, and a response cut short must read as cut short (the connection
    /// closed or the stream reset), never as complete.
    pub(crate) struct DeadlineBody<B> {
        inner: Held<B>,
        deadline: Instant,
        timer: Timer,
        // Frames read in a row without a wait.
        streak: u8,
        // Data bytes read so far, up to `WATCH_AFTER`.
        read: u32,
        // Whether the body has been waiting for the upstream since a poll before this one, or
        // was when the deadline passed.
        waiting: bool,
    }
}

/// Frames read in a row without a wait after which the clock is looked at. A client reading
/// slower than the upstream sends never leaves the body waiting (the upstream's next piece is
/// always there when the client takes one), so the timer, looked at on a wait, would never be:
/// an endless body streamed past the route's timeout for as long as the client read. Looking
/// every frame would cost a clock read to every small answer.
const LOOK_EVERY: u8 = 16;

/// How long after its deadline a body nobody reads is ended by its watchdog ([`Held`]): long
/// enough for a body that is being read to end by its own timer, as it always has.
const WATCHDOG_GRACE: Duration = Duration::from_secs(1);

/// Data read, or known to come, past which a body not yet ended is handed to a watchdog. Under
/// it, a gRPC call's answer and most answers of unknown length pay no watchdog. Not watched, so,
/// is an answer of unknown length whose client stops taking it within its first 16 KiB: it holds
/// its upstream until the client reads on, or its connection closes.
const WATCH_AFTER: u32 = 16 * 1024;

/// Where a [`DeadlineBody`] keeps the body it reads.
///
/// A body is read only while its reader asks for more, and a client that takes nothing (an
/// HTTP/2 stream whose window it never opens, an HTTP/1.1 client that reads a byte now and
/// then) stops hyper from asking: the deadline's timer, looked at on a read, is then never
/// looked at, and the upstream's connection and what it sent stay held past the route's
/// timeout, as long as the client likes. So a body that has given [`WATCH_AFTER`] and has more
/// to come is handed to a watchdog, a task that drops it at the deadline (and a grace) unless it
/// ended before: its upstream side is let go then, and the next read, whenever it comes, fails
/// as timed out. A body smaller than that, as most are, never needs one.
enum Held<B> {
    Here(B),
    Watched {
        body: Arc<Mutex<Option<B>>>,
        _watchdog: Watchdog,
    },
    // Only while a body is being handed over.
    Moving,
}

impl<B: Send + 'static> Held<B> {
    fn watch(&mut self, deadline: Instant) {
        let Held::Here(body) = std::mem::replace(self, Held::Moving) else {
            return;
        };
        let body = Arc::new(Mutex::new(Some(body)));
        let watched = Arc::downgrade(&body);
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(deadline + WATCHDOG_GRACE).await;
            if let Some(body) = watched.upgrade() {
                let taken = body.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(taken);
            }
        });
        *self = Held::Watched {
            body,
            _watchdog: Watchdog(watchdog.abort_handle()),
        };
    }
}

impl<B> Held<B> {
    /// `look` at the body, `None` once its watchdog let it go.
    fn peek<R>(&self, look: impl FnOnce(Option<&B>) -> R) -> R {
        match self {
            Held::Here(body) => look(Some(body)),
            Held::Watched { body, .. } => {
                look(body.lock().unwrap_or_else(PoisonError::into_inner).as_ref())
            }
            Held::Moving => look(None),
        }
    }
}

/// A body's watchdog, stopped when the body is done with (its timer goes with it).
struct Watchdog(AbortHandle);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, deadline: Instant) -> DeadlineBody<B> {
        DeadlineBody {
            inner: Held::Here(inner),
            read: 0,
            deadline,
            timer: Timer::default(),
            streak: 0,
            waiting: false,
        }
    }
}

/// A timer made when a wait first needs it. Most bodies never make their reader wait: their
/// pieces are read as soon as they are asked for. A tokio `Sleep` made up front costs each of
/// them a clone of the runtime's handle, and about a hundred bytes moved with the body through
/// every layer that wraps it.
#[derive(Default)]
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// The timer, made set to `at` if there was none.
    fn get_or_set(&mut self, at: Instant) -> Pin<&mut Sleep> {
        self.0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
    }

    /// The timer, set to `at`.
    fn set(&mut self, at: Instant) -> Pin<&mut Sleep> {
        if let Some(sleep) = &mut self.0 {
            sleep.as_mut().reset(at);
        }
        self.get_or_set(at)
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.streak >= LOOK_EVERY {
            *this.streak = 0;
            if turn::now() >= *this.deadline {
                return Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                    waiting: *this.waiting,
                }))));
            }
        }
        // The body first: a frame that is ready when the deadline passes is still delivered.
        let polled = match this.inner {
            Held::Here(body) => Pin::new(body).poll_frame(cx),
            Held::Watched { body, .. } => {
                let mut body = body.lock().unwrap_or_else(PoisonError::into_inner);
                match body.as_mut() {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    // Its watchdog let the body go: the deadline passed while nobody read.
                    None => {
                        return Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                            waiting: *this.waiting,
                        }))));
                    }
                }
            }
            Held::Moving => unreachable!("a body is handed over within one call"),
        };
        if let Poll::Ready(frame) = polled {
            if *this.read < WATCH_AFTER
                && let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
            {
                let len = data.map_or(0, Bytes::len);
                *this.read = this
                    .read
                    .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
                let large = |body: &B| {
                    !body.is_end_stream()
                        && (*this.read >= WATCH_AFTER
                            || body.size_hint().lower() >= u64::from(WATCH_AFTER))
                };
                if matches!(this.inner, Held::Here(body) if large(body)) {
                    this.inner.watch(*this.deadline);
                }
            }
            *this.streak += 1;
            // A piece that came only after the deadline, to a wait begun before it: the
            // upstream was late, whatever follows.
            *this.waiting = *this.waiting && turn::now() >= *this.deadline;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        *this.streak = 0;
        match this.timer.get_or_set(*this.deadline).poll(cx) {
            // Past the deadline already when this wait began: the time went by while the
            // reader was elsewhere (a slow client's writes), and a socket that has just been
            // read short reads as empty until the runtime looks again, whatever has arrived.
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                waiting: *this.waiting,
            })))),
            // A wait begun before the deadline, by the clock: the timer fires up to a
            // millisecond late, and a wait begun in that millisecond is no upstream's.
            Poll::Pending => {
                *this.waiting = *this.waiting || turn::now() < *this.deadline;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body its watchdog let go has not ended: its next read says it was cut short.
        self.inner
            .peek(|body| body.is_some_and(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .peek(|body| body.map_or_else(SizeHint::default, Body::size_hint))
    }
}

/// The route's timeout passed while the response body was still streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyTimedOut {
    /// Whether the body was waiting for the upstream's next piece. Not, when every piece was
    /// there as it was asked for: the reader (a client that reads slowly, or the sheer size of
    /// the answer) is what the timeout outran, not the upstream.
    waiting: bool,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the route's timeout passed before the response body ended")
    }
}

impl StdError for BodyTimedOut {}

// === impl OutcomeAtEnd ===

pin_project_lite::pin_project! {
    /// A response body that holds the endpoint's breaker permit ([`OwnedPicked`]) until it ends,
    /// when the attempt's outcome is recorded. Two kinds of answer come with one:
    ///
    /// - A gRPC answer whose `grpc-status` comes in the trailers: its outcome is the trailers'
    ///   status (classified as the head's would be), timed at the head. A body that ends without one, or breaks off
    ///   (a reset, the route's deadline), is a failure: gRPC clients read a call that ends with
    ///   no status as INTERNAL. A body dropped before its end (the client went away) records
    ///   nothing.
    /// - Any other good answer with a body ([`OwnedPicked::is_judged_by_head`]): its head's
    ///   success stands, timed at the head, unless the body breaks off (the upstream closed or
    ///   reset it before its end, garbled its framing, or ran past the route's deadline): then
    ///   it is a failure. Dropped before its end, it counts as its head.
    ///
    /// A body cut for keeping its reader waiting past `body_idle_timeout` is dropped (the cut is
    /// made above this body): a stream with nothing to say (a watch, server-sent events) is
    /// no failure of its endpoint.
    ///
    /// Nor does a body that breaks off because the client's own request stream failed (it went
    /// quiet past `body_idle_timeout`, grew past `max_request_body`, broke off) count against
    /// the endpoint; nor, for a gRPC call, one cut by the client's own deadline.
    ///
    /// With nothing pending, it only passes the frames on.
    #[project = OutcomeAtEndProj]
    pub(crate) struct OutcomeAtEnd<B> {
        #[pin]
        inner: B,
        // Boxed: only an answer with a body to come has one, and every answer is moved several
        // times on its way back.
        pending: Option<Box<OwnedPicked>>,
        // Where the client's request body records its failure.
        fault: Option<BodyFault>,
        // The client's own deadline, when it is shorter than the route's timeout.
        client_deadline: Option<Instant>,
        // An error held back for a poll (see `poll_frame`).
        held: Option<BoxError>,
    }
}

impl<B> OutcomeAtEnd<B> {
    /// `inner`, whose end decides the outcome to record on `pending`, if any, unless the
    /// request's body recorded a failure of the client's in `fault`, or the body broke off
    /// once the client's own deadline (`client_deadline`) had passed: a gRPC call is then cut
    /// short (`OwnedPicked::cut_short`), as the attempt is before its head.
    pub(crate) fn new(
        inner: B,
        pending: Option<OwnedPicked>,
        fault: Option<BodyFault>,
        client_deadline: Option<Instant>,
    ) -> OutcomeAtEnd<B> {
        OutcomeAtEnd {
            inner,
            pending: pending.map(Box::new),
            fault,
            client_deadline,
            held: None,
        }
    }
}

impl<B> Body for OutcomeAtEnd<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(err) = this.held.take() {
            return Poll::Ready(Some(Err(err)));
        }
        let frame = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
            // What frames, routes or belongs to one connection goes no further in trailers, as
            // in the request's (`LimitBody`): hyper drops it toward an HTTP/1.1 client, and an
            // HTTP/2 client would reset the stream of an answer otherwise whole.
            Some(Ok(frame)) if frame.is_trailers() => Some(Ok(cleaned(frame))),
            frame => frame,
        };
        judge(&mut this, &frame);
        // An error waits one poll: once a body fails, hyper sends nothing of what it holds
        // unwritten (the head, the pieces before), so an answer that breaks off right after a
        // piece, both read at once, would reach the client as nothing at all. A wait lets it
        // write them first.
        if let Some(Err(err)) = frame {
            *this.held = Some(err);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Claiming the end early would skip the poll that records the outcome, or the one that
        // gives the held error.
        self.pending.is_none() && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records on the pending pick of `this` what `frame` makes of the attempt, if anything:
/// [`OutcomeAtEnd`] says what counts how.
fn judge<B: Body>(
    this: &mut OutcomeAtEndProj<'_, B>,
    frame: &Option<Result<Frame<Bytes>, BoxError>>,
) {
    let Some(pending) = this.pending.as_ref() else {
        return;
    };
    let by_head = pending.is_judged_by_head();
    let outcome = match frame {
        // The last piece of a body of known length: the end, with no poll more to wait for.
        Some(Ok(frame)) if by_head && frame.is_data() && this.inner.is_end_stream() => {
            Some(Outcome::Success)
        }
        Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
            if by_head {
                Outcome::Success
            } else {
                classify_trailers(trailers).unwrap_or(Outcome::Failure)
            }
        }),
        // The client's failure, or the route's timeout passing while the upstream's pieces
        // were there as soon as asked for (the client read them slowly): the endpoint is
        // not held to it (a gRPC permit goes unrecorded, an answer judged by its head stands
        // as its head).
        Some(Err(_)) | None if this.fault.as_ref().and_then(BodyFault::get).is_some() => {
            drop(this.pending.take());
            None
        }
        Some(Err(err))
            if err
                .downcast_ref::<BodyTimedOut>()
                .is_some_and(|cut| !cut.waiting) =>
        {
            drop(this.pending.take());
            None
        }
        // The client's own deadline ran out: that says nothing about the endpoint, unless a
        // gRPC call's head had come past the slow-call threshold (a call is timed to its head;
        // an answer judged by its head stands as its head). An endpoint that sends a head and
        // then hangs is seen when the route's own timeout cuts it.
        Some(Err(_)) if this.client_deadline.is_some_and(|at| turn::now() >= at) => {
            if let Some(pending) = this.pending.take()
                && !by_head
            {
                pending.cut_short();
            }
            None
        }
        Some(Err(_)) => Some(Outcome::Failure),
        // Ended short of the length its head announced: an HTTP/2 upstream's RST_STREAM
        // with NO_ERROR reads as an end (hyper), and the client's stream is reset for it.
        None if by_head && this.inner.size_hint().lower() == 0 => Some(Outcome::Success),
        None => Some(Outcome::Failure),
    };
    if let Some(outcome) = outcome
        && let Some(pending) = this.pending.take()
    {
        pending.record(outcome);
    }
}

// === impl GrpcEnding ===

pin_project_lite::pin_project! {
    /// A response body to a gRPC client that, if it breaks off (a reset, a dead or invalid
    /// upstream, the route's deadline), ends with trailers saying why instead: the `grpc-status`,
    /// `grpc-message` and `x-rampart-error` of [`rampart_http::rescue()`] for the reason. A gRPC
    /// client reads a stream reset as INTERNAL with no reason; these trailers end the call with
    /// the status the reason has everywhere else (DEADLINE_EXCEEDED for `timeout`, UNAVAILABLE
    /// for `upstream-reset`, ...). What came of the reply before is left for the client to drop.
    pub(crate) struct GrpcEnding<B> {
        #[pin]
        inner: B,
        // The reason when the deadline cuts the body: `timeout`, or `deadline-exceeded` when
        // the client's own deadline was the shorter.
        expired: Reason,
        // Where the client's request body records its failure, which is then the reason.
        fault: Option<BodyFault>,
        // Whether the call's status must still come, in trailers: the head had none.
        owes_status: bool,
        ended: bool,
    }
}

impl<B> GrpcEnding<B> {
    /// `inner`, ended by trailers if it fails; `expired` is the reason for the deadline, and a
    /// failure the request's body recorded in `fault` the reason before any other. With
    /// `owes_status` (the head had no `grpc-status`), a body that ends without trailers broke
    /// off too: an upstream's reset with NO_ERROR before the end of its reply reads as an end
    /// (RFC 9113 §8.1 allows it only after a complete response), and the call would end with no
    /// status, or a reply cut short passed off as whole.
    pub(crate) fn new(
        inner: B,
        expired: Reason,
        fault: Option<BodyFault>,
        owes_status: bool,
    ) -> GrpcEnding<B> {
        GrpcEnding {
            inner,
            expired,
            fault,
            owes_status,
            ended: false,
        }
    }
}

impl<B> Body for GrpcEnding<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let reason = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Err(err)) => match this.fault.as_ref().and_then(BodyFault::get) {
                Some(fault) => fault.reason(),
                None => broken_body(&*err, *this.expired),
            },
            // Ended whole, without the status it owed: the upstream broke gRPC, it reset
            // nothing (a client told UNAVAILABLE would retry a call that ran).
            None if *this.owes_status => Reason::UpstreamInvalid,
            Some(Ok(frame)) => {
                let frame = match frame.into_trailers() {
                    // Trailers owing the status that lack it (the upstream's, or what the HTTP/2
                    // layer passes on of a trailer section over the header list's bound: the
                    // fields before it): the call would end with no status, which a client
                    // reads as UNKNOWN with no reason. The upstream's fields stay.
                    Ok(mut trailers)
                        if *this.owes_status
                            && !trailers.contains_key(rampart_http::classify::GRPC_STATUS) =>
                    {
                        *this.ended = true;
                        trailers.extend(rescue_trailers(Reason::UpstreamInvalid));
                        Frame::trailers(trailers)
                    }
                    Ok(trailers) => {
                        *this.owes_status = false;
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                return Poll::Ready(Some(Ok(frame)));
            }
            None => return Poll::Ready(None),
        };
        *this.ended = true;
        Poll::Ready(Some(Ok(Frame::trailers(rescue_trailers(reason)))))
    }

    fn is_end_stream(&self) -> bool {
        // Claiming the end early would skip the poll that finds the status missing.
        self.ended || (!self.owes_status && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The trailers ending a gRPC call for `reason`: its `grpc-status`, `grpc-message` and
/// `x-rampart-error`.
fn rescue_trailers(reason: Reason) -> http::HeaderMap {
    let (mut parts, _) = rampart_http::rescue(reason, true).into_parts();
    // The content type belongs to the head, sent long ago.
    parts.headers.remove(http::header::CONTENT_TYPE);
    parts.headers
}

/// Why a response body broke off: the deadline (`expired`), a stall past `body_idle_timeout`
/// (`timeout` too), or the exchange with the upstream breaking.
fn broken_body(err: &(dyn StdError + 'static), expired: Reason) -> Reason {
    if err.is::<BodyTimedOut>() {
        expired
    } else if err.is::<BodyStalled>() {
        Reason::Timeout
    } else {
        Reason::from(crate::stack::broken_exchange(Some(err)))
    }
}

/// `frame`, if it is trailers, without the fields a trailer section must not carry
/// ([`remove_forbidden_trailers`]).
fn cleaned(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            remove_forbidden_trailers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

// === impl IdleBody ===

pin_project_lite::pin_project! {
    /// A body that fails when it keeps its reader waiting longer than `timeout` for the next
    /// piece (`body_idle_timeout`). Only a wait for the body counts: while the reader does not
    /// ask (a slow client, a full upstream window), the clock is not running.
    pub(crate) struct IdleBody<B> {
        #[pin]
        inner: B,
        timer: Timer,
        timeout: Duration,
        // Whether `timer` is set for the current wait.
        waiting: bool,
        watch: Watch,
        // How far the other direction had moved when the current wait began.
        seen: u64,
    }
}

/// What an [`IdleBody`] shares with the other direction of its exchange, through the request's
/// [`BodyFault`].
pub(crate) enum Watch {
    /// Nothing (a reply to a request without a body).
    None,
    /// A request body: it records its stall. Each direction stalls only while the other does
    /// not move either (as Envoy's stream idle timeout counts activity in both directions):
    /// a gRPC client streaming nothing while the server's replies flow is not cut off, nor a
    /// reply whose head came early and that waits for the end of a client stream that flows.
    Request(BodyFault),
    /// A reply.
    Reply(BodyFault),
}

impl Watch {
    /// Tells the other direction that this one moved.
    fn moved(&self) {
        match self {
            Watch::None => {}
            Watch::Request(fault) => fault.request_moved(),
            Watch::Reply(fault) => fault.reply_moved(),
        }
    }

    /// How far the other direction has moved.
    fn other_moves(&self) -> u64 {
        match self {
            Watch::None => 0,
            Watch::Request(fault) => fault.reply_moves(),
            Watch::Reply(fault) => fault.request_moves(),
        }
    }
}

impl<B> IdleBody<B> {
    /// `inner`, cut after `timeout` without a piece, sharing `watch` with the other direction.
    pub(crate) fn new(inner: B, timeout: Duration, watch: Watch) -> IdleBody<B> {
        IdleBody {
            inner,
            timer: Timer::default(),
            timeout,
            waiting: false,
            watch,
            seen: 0,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            if let Some(Ok(_)) = &frame {
                this.watch.moved();
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // The gap starts when the reader first finds nothing, not at the last piece: time the
        // reader spent elsewhere is not the body's stall.
        let at = turn::now() + *this.timeout;
        let sleep = if std::mem::replace(this.waiting, true) {
            this.timer.get_or_set(at)
        } else {
            *this.seen = this.watch.other_moves();
            this.timer.set(at)
        };
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let moves = this.watch.other_moves();
        if moves != *this.seen {
            // The other direction moved meanwhile: the exchange is not idle, and the wait starts
            // over.
            *this.seen = moves;
            let _ = this.timer.set(turn::now() + *this.timeout).poll(cx);
            return Poll::Pending;
        }
        if let Watch::Request(fault) = &*this.watch {
            fault.set(ClientBodyFault::Stalled);
        }
        Poll::Ready(Some(Err(Box::new(BodyStalled))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Nothing of a body arrived for the listener's `body_idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyStalled;

impl fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no piece of the body arrived within body_idle_timeout")
    }
}

impl StdError for BodyStalled {}

pin_project_lite::pin_project! {
    /// A request body held to `max_request_body` as it streams (a chunked body says its length
    /// only at its end): the whole body, or each message of a gRPC call's stream.
    pub(crate) struct LimitBody<B> {
        #[pin]
        inner: B,
        counting: Counting,
        fault: BodyFault,
    }
}

/// What a [`LimitBody`] holds to its limit.
enum Counting {
    /// The whole body: this many bytes may still come.
    Whole { remaining: u64 },
    /// Each gRPC message, by the length its prefix declares: a client or bidirectional stream
    /// may last hours and carry any amount, as gRPC's own limit is on a message's size.
    Messages { limit: u64, framing: Framing },
}

/// Where a stream of gRPC length-prefixed messages (a flag byte and a 4-byte big-endian length,
/// then the message) stands.
#[derive(Default)]
struct Framing {
    prefix: [u8; 5],
    // Bytes of the next prefix read so far.
    have: usize,
    // Bytes of the current message still to come.
    rest: u64,
}

impl Framing {
    /// Follows `data`; the length of the first message it declares over `limit`, if any.
    fn too_large(&mut self, mut data: &[u8], limit: u64) -> Option<u64> {
        while !data.is_empty() {
            if self.rest > 0 {
                let taken = data
                    .len()
                    .min(usize::try_from(self.rest).unwrap_or(usize::MAX));
                self.rest -= taken as u64;
                data = &data[taken..];
                continue;
            }
            let taken = data.len().min(self.prefix.len() - self.have);
            self.prefix[self.have..self.have + taken].copy_from_slice(&data[..taken]);
            self.have += taken;
            data = &data[taken..];
            if self.have == self.prefix.len() {
                self.have = 0;
                let [_, length @ ..] = self.prefix;
                self.rest = u64::from(u32::from_be_bytes(length));
                if self.rest > limit {
                    return Some(self.rest);
                }
            }
        }
        None
    }
}

impl<B> LimitBody<B> {
    /// `inner`, cut once it outgrows `limit` bytes, which it records in `fault`.
    pub(crate) fn new(inner: B, limit: u64, fault: BodyFault) -> LimitBody<B> {
        LimitBody {
            inner,
            counting: Counting::Whole { remaining: limit },
            fault,
        }
    }

    /// `inner`, a gRPC call's stream of messages, cut once a message declares itself over
    /// `limit` bytes, which it records in `fault`.
    pub(crate) fn per_grpc_message(inner: B, limit: u64, fault: BodyFault) -> LimitBody<B> {
        LimitBody {
            inner,
            counting: Counting::Messages {
                limit,
                framing: Framing::default(),
            },
            fault,
        }
    }
}

impl<B> Body for LimitBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        this.fault.awaiting(polled.is_pending());
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(err))) => {
                // A stall was recorded below; anything else is a body the client left (a
                // closed connection, a cancelled stream) or broke off or garbled (a bad chunk,
                // a stream reset otherwise).
                let err = err.into();
                if this.fault.get().is_none() {
                    this.fault.set(if client_left(&*err) {
                        ClientBodyFault::Gone
                    } else {
                        ClientBodyFault::Broken
                    });
                }
                return Poll::Ready(Some(Err(err)));
            }
            Poll::Ready(None) => {
                this.fault.end();
                return Poll::Ready(None);
            }
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let too_large = match this.counting {
                Counting::Whole { remaining } => {
                    let len = data.len() as u64;
                    let over = len > *remaining;
                    *remaining = remaining.saturating_sub(len);
                    over
                }
                Counting::Messages { limit, framing } => framing.too_large(data, *limit).is_some(),
            };
            if too_large {
                this.fault.set(ClientBodyFault::TooLarge);
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
            // The last piece of a body of known length: its reader may ask no more.
            if this.inner.is_end_stream() {
                this.fault.end();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        // The client's trailers, the body's last frame, go on without what would frame or
        // route the request anew.
        this.fault.end();
        Poll::Ready(Some(Ok(cleaned(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request body's error says that the client went away: its HTTP/1.x connection closed
/// before the body's end, or it cancelled its HTTP/2 stream.
fn client_left(err: &(dyn StdError + 'static)) -> bool {
    let Some(err) = err.downcast_ref::<hyper::Error>() else {
        return false;
    };
    // hyper reads an HTTP/1.x connection closed mid-body as an unexpected end of its input.
    let source = err.source();
    err.is_incomplete_message()
        || source
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        || source
            .and_then(|source| source.downcast_ref::<h2::Error>())
            .is_some_and(|h2| h2.reason() == Some(h2::Reason::CANCEL))
}

/// The request body grew past the listener's `max_request_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body is larger than max_request_body")
    }
}

impl StdError for BodyTooLarge {}

/// How a client's request body broke an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientBodyFault {
    /// It grew past `max_request_body`: 413 `body-too-large`.
    TooLarge = 1,
    /// It stalled past `body_idle_timeout`: 408.
    Stalled = 2,
    /// The client broke it off or garbled it: 400.
    Broken = 3,
    /// The client went away in the middle of it: its connection closed, or it cancelled its
    /// HTTP/2 stream. Answered 400 like a broken body, though nobody reads the answer: the
    /// route counts the request as `cancelled`, as one the client left before its answer.
    Gone = 4,
}

impl ClientBodyFault {
    /// The reason the client is answered with.
    pub(crate) fn reason(self) -> Reason {
        match self {
            ClientBodyFault::TooLarge => Reason::BodyTooLarge,
            ClientBodyFault::Stalled | ClientBodyFault::Broken | ClientBodyFault::Gone => {
                Reason::BadRequest
            }
        }
    }
}

/// Where a client's request body records that it failed the exchange, for the stack to read when
/// the attempt fails: the failure is the client's, not the endpoint's. The body's own error does
/// not always reach the stack: an HTTP/2 upstream connection reports only that it reset the
/// stream. Carried in the request's extensions, so that every attempt sees it.
///
/// It also carries how far the request body and the reply have moved, for each one's idle timer
/// ([`Watch`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyFault(Arc<FaultCell>);

#[derive(Debug, Default)]
struct FaultCell {
    fault: AtomicU8,
    /// The body's reader is waiting for the client: it asked for the next piece and none has
    /// come yet.
    awaited: AtomicBool,
    /// Pieces of the reply passed on so far.
    reply_moves: AtomicU64,
    /// Pieces of the request body passed on so far.
    request_moves: AtomicU64,
    /// The body was read to its end.
    ended: AtomicBool,
}

impl BodyFault {
    fn set(&self, fault: ClientBodyFault) {
        self.0.fault.store(fault as u8, Ordering::Release);
    }

    fn end(&self) {
        self.0.ended.store(true, Ordering::Release);
    }

    /// Whether the client's body was read to its end: when it was not by the time of the
    /// answer (the upstream answered early, or the request was refused before its body was
    /// read), the rest of it is still on the client's connection.
    pub(crate) fn is_read_whole(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }

    pub(crate) fn awaiting(&self, client: bool) {
        // Read before written: a store on every frame would write a line the reply shares.
        if self.0.awaited.load(Ordering::Relaxed) != client {
            self.0.awaited.store(client, Ordering::Relaxed);
        }
    }

    /// Whether the upstream's side is waiting for the client's next piece of the body now: an
    /// upstream cannot be blamed for not answering a request it asked the rest of and has not
    /// had (an upload slower than the route's timeout, an HTTP/2 client waiting for a
    /// `100 Continue` before it begins). A body that ended, or that the upstream stopped
    /// taking (it hangs with its buffers full), is not.
    pub(crate) fn awaits_client(&self) -> bool {
        self.0.awaited.load(Ordering::Relaxed)
    }

    // Each count has one writer, its direction's body: a plain add, no locked one.
    fn reply_moved(&self) {
        let moves = &self.0.reply_moves;
        moves.store(moves.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn reply_moves(&self) -> u64 {
        self.0.reply_moves.load(Ordering::Relaxed)
    }

    fn request_moved(&self) {
        let moves = &self.0.request_moves;
        moves.store(moves.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn request_moves(&self) -> u64 {
        self.0.request_moves.load(Ordering::Relaxed)
    }

    /// What the body recorded, if anything.
    pub(crate) fn get(&self) -> Option<ClientBodyFault> {
        match self.0.fault.load(Ordering::Acquire) {
            1 => Some(ClientBodyFault::TooLarge),
            2 => Some(ClientBodyFault::Stalled),
            3 => Some(ClientBodyFault::Broken),
            4 => Some(ClientBodyFault::Gone),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn grpc_framing_finds_an_oversized_message_however_the_stream_is_cut() {
        // Messages of 10, 1,024 and 1,025 bytes, the last over the limit.
        let mut stream = Vec::new();
        for len in [10u32, 1024, 1025] {
            stream.push(0);
            stream.extend(len.to_be_bytes());
            stream.extend(std::iter::repeat_n(b'm', len as usize));
        }
        for piece in [1, 3, 5, 7, 1000, stream.len()] {
            let mut framing = Framing::default();
            let found = stream
                .chunks(piece)
                .find_map(|chunk| framing.too_large(chunk, 1024));
            assert_eq!(found, Some(1025), "in pieces of {piece}");
        }
        let mut framing = Framing::default();
        assert_eq!(
            framing.too_large(&stream[..stream.len() - 1030], 1024),
            None
        );
    }

    // A body whose frames a test sends one by one.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d))))
        }
    }

    // A body of these frames, in order.
    struct Frames(Vec<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let next = (!self.0.is_empty()).then(|| self.0.remove(0));
            Poll::Ready(next.map(Ok))
        }
    }

    #[tokio::test]
    async fn trailers_owing_the_status_and_lacking_it_end_the_call_as_an_invalid_reply() {
        // The trailers a reply of a piece and `trailers` ends with, its head with no status
        // (`owes_status`) or with one.
        async fn ending(trailers: Frame<Bytes>, owes_status: bool) -> http::HeaderMap {
            let data = Frame::data(Bytes::from_static(b"reply"));
            let frames = Frames(vec![data, trailers]);
            let mut body = Box::pin(GrpcEnding::new(frames, Reason::Timeout, None, owes_status));
            assert!(body.frame().await.unwrap().unwrap().is_data());
            let last = body
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_trailers()
                .unwrap();
            assert!(body.frame().await.is_none());
            last
        }
        let mut other = http::HeaderMap::new();
        other.insert("x-trace", http::HeaderValue::from_static("abc"));
        let last = ending(Frame::trailers(other.clone()), true).await;
        assert_eq!(last["grpc-status"], "13");
        assert_eq!(last["x-rampart-error"], "upstream-invalid");
        assert_eq!(last["x-trace"], "abc", "the upstream's own fields stay");
        // With its status, as they came; and a status given in the head owes none.
        let last = ending(trailers("0"), true).await;
        assert_eq!(last.len(), 1);
        assert_eq!(last["grpc-status"], "0");
        assert_eq!(ending(Frame::trailers(other), false).await.len(), 1);
    }

    fn trailers(code: &'static str) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(trailers)
    }

    // Streams `frames` through a body holding the permit of a lone endpoint whose breaker opens
    // at the first failure (`end` false: the client goes away after the first frame); then says
    // whether the breaker still admits.
    async fn admits_after(frames: Vec<Frame<Bytes>>, end: bool) -> bool {
        let toml = "[[routes]]\nupstream = \"app\"\n[upstreams.app]\n\
                    endpoints = [\"127.0.0.1:1\"]\n[upstreams.app.breaker]\n\
                    consecutive_failures = 1\n";
        let config = rampart_config::Config::from_str(toml, "test.toml").unwrap();
        let pool = crate::upstream::Pool::new(
            &config.upstreams[0],
            &rampart_policy::rng::Rng::thread(),
            &crate::metrics::Metrics::default(),
        )
        .unwrap();
        let pending = pool
            .pick(&crate::upstream::Avoid::default())
            .unwrap()
            .into_owned(&pool);
        let mut body = Box::pin(OutcomeAtEnd::new(Frames(frames), Some(pending), None, None));
        if end {
            while body.frame().await.is_some() {}
        } else {
            body.frame().await;
        }
        drop(body);
        pool.pick(&crate::upstream::Avoid::default()).is_ok()
    }

    #[tokio::test]
    async fn the_trailers_status_is_the_outcome() {
        let data = || Frame::data(Bytes::from_static(b"reply"));
        assert!(admits_after(vec![data(), trailers("0")], true).await);
        assert!(admits_after(vec![data(), trailers("5")], true).await);
        assert!(!admits_after(vec![data(), trailers("14")], true).await);
        assert!(!admits_after(vec![data(), trailers("13")], true).await);
    }

    #[tokio::test]
    async fn a_body_ending_without_a_status_is_a_failure_and_a_dropped_one_nothing() {
        let data = || Frame::data(Bytes::from_static(b"reply"));
        assert!(!admits_after(vec![data()], true).await);
        assert!(!admits_after(vec![data(), Frame::trailers(http::HeaderMap::new())], true).await);
        // The client went away mid-body: the call tells nothing.
        assert!(admits_after(vec![data(), trailers("14")], false).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_outlives_the_deadline_ends_in_an_error() {
        let (tx, rx) = mpsc::channel(1);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut body = Box::pin(DeadlineBody::new(ChannelBody(rx), deadline));

        tx.send(Bytes::from_static(b"a")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");

        // Nothing more arrives; the paused clock jumps to the deadline.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyTimedOut>());
        assert_eq!(Instant::now(), deadline);
        drop(tx);
    }

    /// Whether the deadline of `body` cut it while it waited for its upstream.
    async fn cut_waiting(body: &mut Pin<Box<DeadlineBody<ChannelBody>>>) -> bool {
        let err = body.frame().await.unwrap().unwrap_err();
        err.downcast_ref::<BodyTimedOut>().unwrap().waiting
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_says_whether_it_came_while_the_upstream_kept_the_body_waiting() {
        let second = Duration::from_secs(1);
        // Nothing arrives: the deadline ends a wait for the upstream.
        let (tx, rx) = mpsc::channel(1);
        let mut body = Box::pin(DeadlineBody::new(ChannelBody(rx), Instant::now() + second));
        assert!(cut_waiting(&mut body).await);
        drop(tx);
        // A piece that comes after the deadline, to a wait begun before it: the upstream was
        // late, though the piece was there when next asked for.
        let (tx, rx) = mpsc::channel(1);
        let mut body = Box::pin(DeadlineBody::new(ChannelBody(rx), Instant::now() + second));
        assert!(
            tokio::time::timeout(second / 2, body.frame())
                .await
                .is_err()
        );
        tokio::time::advance(second).await;
        tx.send(Bytes::from_static(b"late")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "late"
        );
        assert!(cut_waiting(&mut body).await);
        // Every piece there as soon as asked for, the deadline passing while the reader was
        // elsewhere (a client reading slowly): not the upstream's doing.
        let (tx, rx) = mpsc::channel(1);
        let mut body = Box::pin(DeadlineBody::new(ChannelBody(rx), Instant::now() + second));
        tx.send(Bytes::from_static(b"ready")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ready"
        );
        tokio::time::advance(2 * second).await;
        assert!(!cut_waiting(&mut body).await);
        drop(tx);
        // A wait begun just after the deadline, before the timer (which fires on the next
        // millisecond) says so: not the upstream's doing either.
        let (tx, rx) = mpsc::channel(1);
        let deadline = Instant::now() + second + Duration::from_micros(500);
        let mut body = Box::pin(DeadlineBody::new(ChannelBody(rx), deadline));
        tx.send(Bytes::from_static(b"ready")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ready"
        );
        tokio::time::advance(second + Duration::from_micros(600)).await;
        assert!(!cut_waiting(&mut body).await);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_ends_cleanly() {
        let (tx, rx) = mpsc::channel(1);
        let deadline = Instant::now() + Duration::from_secs(1);
        let body = Box::pin(DeadlineBody::new(ChannelBody(rx), deadline));
        tx.send(Bytes::from_static(b"whole")).await.unwrap();
        drop(tx);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "whole");
        assert!(Instant::now() < deadline);
    }
}
