use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::error::DeadlineExceeded;
use super::future::{Expiry, Scoped, Timed};
use crate::clock::saturating_after;
use crate::error::Error;

tokio::task_local! {
    // The deadline of the request the current task is working on. A task-local rather than a
    // parameter, so that a deadline set at the edge reaches every nested call without each layer
    // in between threading it by hand.
    static CURRENT: Deadline;
}

/// The moment by which a whole request must be answered.
///
/// A [`Timeout`](super::Timeout) bounds one call; a deadline bounds everything done on behalf of
/// one request, however many calls, retries and hops that takes. Set it once where the request
/// comes in, with [`Deadline::scope`]; every [`Timeout`](super::Timeout) and
/// [`TimeoutService`](super::TimeoutService) called inside then waits no longer than the time
/// left, and fails with [`DeadlineExceeded`] without calling anything once none is left.
///
/// Deadlines order by time: the smaller one is the earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

/// A request that carries its own deadline, for [`DeadlineService`](super::DeadlineService).
///
/// Implement it for your request type, typically by reading a deadline that the edge of your
/// service stored in the request (for HTTP, a deadline parsed from a header into the request's
/// extensions):
///
/// ```
/// use rampart_policy::timeout::{Deadline, HasDeadline};
///
/// struct Request {
///     body: String,
///     deadline: Option<Deadline>,
/// }
///
/// impl HasDeadline for Request {
///     fn deadline(&self) -> Option<Deadline> {
///         self.deadline
///     }
/// }
/// ```
pub trait HasDeadline {
    /// The request's deadline, if it has one.
    fn deadline(&self) -> Option<Deadline>;
}

impl HasDeadline for Deadline {
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        Some(*self)
    }
}

/// An HTTP request's deadline is the [`Deadline`] in its extensions, put there by what read it
/// (a `grpc-timeout` header, a deadline header of your own, or the edge's budget for the
/// request), so that a [`DeadlineLayer`](super::DeadlineLayer) works in axum, hyper and tonic
/// stacks. (Feature `http`, on by default.)
///
/// ```
/// use std::time::Duration;
/// use rampart_policy::timeout::{Deadline, HasDeadline};
///
/// let mut request = http::Request::new(());
/// assert_eq!(request.deadline(), None);
/// let deadline = Deadline::after(Duration::from_millis(250));
/// request.extensions_mut().insert(deadline);
/// assert_eq!(request.deadline(), Some(deadline));
/// ```
#[cfg(feature = "http")]
impl<B> HasDeadline for http::Request<B> {
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        self.extensions().get::<Deadline>().copied()
    }
}

// === impl Deadline ===

impl Deadline {
    /// The deadline `timeout` from now.
    ///
    /// A timeout too large to add to the clock gives a deadline about thirty years out, which is
    /// none in practice.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: saturating_after(Instant::now(), timeout),
        }
    }

    /// The deadline at `at`.
    pub fn at(at: Instant) -> Deadline {
        Deadline { at }
    }

    /// The moment of the deadline.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left until the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// `max_wait`, or the time left of the deadline in force when that is shorter: how long a
    /// wait (for a token, for a place) may last so as not to outlive its caller.
    pub(crate) fn cap_wait(max_wait: Duration) -> Duration {
        Deadline::current().map_or(max_wait, |deadline| max_wait.min(deadline.remaining()))
    }

    /// Whether the deadline has passed (it has when it is now).
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The earlier of two deadlines.
    #[inline]
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// The earliest of two optional deadlines; `None` only when both are.
    #[inline]
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// The deadline in force in the current task: the one set by the innermost enclosing
    /// [`Deadline::scope`] (or [`Deadline::call`], or a [`DeadlineService`](super::DeadlineService)
    /// response).
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(|deadline| *deadline).ok()
    }

    /// Runs `fut` with `deadline` in force, so that [`Deadline::current`] and every timeout inside
    /// it see it.
    ///
    /// A scope never extends the deadline it is nested in: the deadline in force inside is the
    /// earlier of this one and the one in force around the scope when it runs. The scope only makes
    /// the deadline known; it does not cut `fut` short by itself (that is what
    /// [`Deadline::call`] is for), so a `fut` that never calls a timeout runs to its end.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rampart_policy::timeout::Deadline;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let outer = Deadline::after(Duration::from_secs(1));
    /// outer
    ///     .scope(async move {
    ///         // A later inner deadline does not extend the outer one.
    ///         Deadline::after(Duration::from_secs(5))
    ///             .scope(async move { assert_eq!(Deadline::current(), Some(outer)) })
    ///             .await
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub fn scope<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped::new(fut, self)
    }

    /// Calls `f` with this deadline in force (as [`Deadline::scope`] does) and cuts it short when
    /// the deadline passes.
    ///
    /// Fails with [`DeadlineExceeded`] when the deadline (or an earlier one in force around it)
    /// passes; when none is left, at once and without calling `f`.
    pub async fn call<F, Fut, T, E>(self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = self.capped_by_current();
        if deadline.is_expired() {
            return Err(Error::Rejected(DeadlineExceeded::new().into()));
        }
        // `f` itself runs in the scope too: it may read the deadline before its future starts.
        let fut = deadline.sync_scope(f);
        let timed = Timed::new(fut, Expiry::deadline(deadline));
        match deadline.scope(timed).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Error::Inner(err)),
            Err(rejected) => Err(Error::Rejected(rejected)),
        }
    }

    /// The earlier of this deadline and the one in force in the current task.
    fn capped_by_current(self) -> Deadline {
        match Deadline::current() {
            Some(current) => self.min(current),
            None => self,
        }
    }

    /// Runs the synchronous `f` with exactly this deadline in force: for a service's `call`, and
    /// for each poll of a [`Scoped`] future.
    pub(crate) fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Rejected;
    use tokio::time::advance;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_counts_down_to_zero() {
        let deadline = Deadline::after(ms(100));
        assert_eq!(deadline.remaining(), ms(100));
        assert!(!deadline.is_expired());
        advance(ms(60)).await;
        assert_eq!(deadline.remaining(), ms(40));
        advance(ms(40)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
        assert!(deadline.is_expired());
        advance(ms(40)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_enormous_timeout_saturates() {
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.remaining() > Duration::from_secs(60 * 60 * 24 * 365));
    }

    #[tokio::test(start_paused = true)]
    async fn min_and_earliest_pick_the_earlier() {
        let early = Deadline::after(ms(10));
        let late = Deadline::after(ms(20));
        assert_eq!(early.min(late), early);
        assert_eq!(late.min(early), early);
        assert_eq!(Deadline::earliest(Some(late), Some(early)), Some(early));
        assert_eq!(Deadline::earliest(None, Some(late)), Some(late));
        assert_eq!(Deadline::earliest(Some(late), None), Some(late));
        assert_eq!(Deadline::earliest(None, None), None);
        assert!(early < late);
    }

    #[tokio::test(start_paused = true)]
    async fn current_is_set_only_inside_a_scope() {
        assert_eq!(Deadline::current(), None);
        let deadline = Deadline::after(ms(10));
        let seen = Deadline::scope(deadline, async { Deadline::current() }).await;
        assert_eq!(seen, Some(deadline));
        assert_eq!(Deadline::current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn nested_scopes_keep_the_earlier_deadline() {
        let early = Deadline::after(ms(10));
        let late = Deadline::after(ms(20));
        let inner_later = Deadline::scope(early, async {
            Deadline::scope(late, async { Deadline::current() }).await
        })
        .await;
        assert_eq!(inner_later, Some(early));

        let inner_earlier = Deadline::scope(late, async {
            Deadline::scope(early, async { Deadline::current() }).await
        })
        .await;
        assert_eq!(inner_earlier, Some(early));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_built_before_nesting_keeps_the_earlier_deadline() {
        let early = Deadline::after(ms(10));
        let late = Deadline::after(ms(20));
        let inner = late.scope(async { Deadline::current() });
        assert_eq!(early.scope(inner).await, Some(early));
    }

    #[tokio::test(start_paused = true)]
    async fn has_deadline_for_a_deadline_is_itself() {
        let deadline = Deadline::after(ms(10));
        assert_eq!(deadline.deadline(), Some(deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn call_cuts_the_call_short_at_the_deadline() {
        let deadline = Deadline::after(ms(100));
        let call = tokio::spawn(deadline.call(|| async {
            tokio::time::sleep(ms(500)).await;
            Ok::<_, ()>(())
        }));
        advance(ms(99)).await;
        assert!(!call.is_finished());
        advance(ms(1)).await;
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(
            err,
            Error::Rejected(Rejected::DeadlineExceeded(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn call_runs_the_function_inside_the_scope() {
        let deadline = Deadline::after(ms(100));
        let seen = deadline
            .call(|| {
                let in_f = Deadline::current();
                async move { Ok::<_, ()>((in_f, Deadline::current())) }
            })
            .await
            .unwrap();
        assert_eq!(seen, (Some(deadline), Some(deadline)));
    }

    #[tokio::test(start_paused = true)]
    async fn call_with_no_time_left_does_not_call() {
        let deadline = Deadline::after(ms(10));
        advance(ms(10)).await;
        let mut called = false;
        let result = deadline
            .call(|| {
                called = true;
                async { Ok::<_, ()>(()) }
            })
            .await;
        assert!(matches!(
            result,
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
        ));
        assert!(!called);
    }

    #[tokio::test(start_paused = true)]
    async fn call_passes_the_inner_error_through() {
        let result = Deadline::after(ms(10))
            .call(|| async { Err::<(), _>("boom") })
            .await;
        assert!(matches!(result, Err(Error::Inner("boom"))));
    }
}
