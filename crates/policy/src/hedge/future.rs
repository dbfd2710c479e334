//! The race between a call and its hedges, and the response future of
//! [`HedgeService`](super::HedgeService).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::clock::saturating_after;
use tower_service::Service;

use super::{CloneRequest, Shared, Winner};
use crate::classify::{Classify, Verdict};
use crate::error::BoxError;
use crate::retry::Budget;

pin_project! {
    /// Races a request against its hedges and answers with the winner.
    pub struct ResponseFuture<S, Req, P, C>
    where
        S: Service<Req>,
    {
        #[pin]
        race: Race<S::Future, ServiceLauncher<S, Req, P>, C>,
    }
}

/// Starts the extra attempts of a race.
pub(super) trait Launch<F> {
    /// Starts one more attempt when it can, once `budget` (if any) pays for it; `Ready(None)`
    /// when no more can be started. `last` says that no attempt will be asked for after this
    /// one.
    fn poll_launch(
        &mut self,
        cx: &mut Context<'_>,
        last: bool,
        budget: Option<&Budget>,
    ) -> Poll<Option<F>>;
}

/// Whether `budget` pays for one more attempt; without a budget every attempt is paid for.
fn paid(budget: Option<&Budget>) -> bool {
    budget.is_none_or(Budget::withdraw)
}

/// Starts attempts by calling a closure again.
pub(super) struct FnLauncher<G>(pub(super) G);

/// Starts attempts by calling a closure again, which may decline.
pub(super) struct DecliningLauncher<G>(pub(super) G);

/// Starts attempts once a readiness future, made anew for each, completes: `launch` turns what
/// it gives into an attempt, or declines (`None`). A readiness that fails starts no attempt, and
/// no further one is asked for, as with a service that fails readiness.
pub(super) struct ReadyLauncher<M, R, G> {
    pub(super) make_ready: M,
    pub(super) pending: Option<Pin<Box<R>>>,
    pub(super) launch: G,
}

/// Starts attempts by sending a copy of the request through a clone of the service, once the
/// clone is ready.
pub(super) struct ServiceLauncher<S, Req, P> {
    service: S,
    spare: Option<Req>,
    clone_request: P,
}

pin_project! {
    /// The first attempt, the hedges sent after it, and the timer of the next hedge.
    pub(super) struct Race<F, L, C>
    where
        F: Future,
    {
        // Held inline so that a call answered before its hedge delay allocates nothing.
        #[pin]
        first: Option<F>,
        extras: Vec<Pin<Box<F>>>,
        // Armed when the first attempt has to wait: a call answered at once needs no timer (and
        // no runtime to register one with).
        #[pin]
        timer: Option<Sleep>,
        // When the first attempt started: the first hedge is due one delay after, and an
        // answer's latency is counted from it (see `settle`).
        started: Instant,
        // The timer fired and the launcher is not ready yet.
        launching: bool,
        launcher: Option<L>,
        extras_left: usize,
        delay: Duration,
        classify: C,
        shared: Arc<Shared>,
        last_failure: Option<F::Output>,
    }
}

// === impl ResponseFuture ===

impl<S, Req, P, C> ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    pub(super) fn new(
        race: Race<S::Future, ServiceLauncher<S, Req, P>, C>,
    ) -> ResponseFuture<S, Req, P, C> {
        ResponseFuture { race }
    }
}

impl<S, Req, P, C> Future for ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: CloneRequest<Req>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().race.poll(cx).map_err(Into::into)
    }
}

impl<S, Req, P, C> std::fmt::Debug for ResponseFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === impl FnLauncher ===

impl<G, F> Launch<F> for FnLauncher<G>
where
    G: FnMut() -> F,
{
    fn poll_launch(
        &mut self,
        _: &mut Context<'_>,
        _: bool,
        budget: Option<&Budget>,
    ) -> Poll<Option<F>> {
        Poll::Ready(paid(budget).then(|| (self.0)()))
    }
}

// === impl DecliningLauncher ===

impl<G, F> Launch<F> for DecliningLauncher<G>
where
    G: FnMut() -> Option<F>,
{
    fn poll_launch(
        &mut self,
        _: &mut Context<'_>,
        _: bool,
        budget: Option<&Budget>,
    ) -> Poll<Option<F>> {
        Poll::Ready(paid(budget).then(|| (self.0)()).flatten())
    }
}

// === impl ServiceLauncher ===

impl<S, Req, P> ServiceLauncher<S, Req, P> {
    pub(super) fn new(service: S, spare: Req, clone_request: P) -> ServiceLauncher<S, Req, P> {
        ServiceLauncher {
            service,
            spare: Some(spare),
            clone_request,
        }
    }
}

impl<S, Req, P> Launch<S::Future> for ServiceLauncher<S, Req, P>
where
    S: Service<Req>,
    P: CloneRequest<Req>,
{
    fn poll_launch(
        &mut self,
        cx: &mut Context<'_>,
        last: bool,
        budget: Option<&Budget>,
    ) -> Poll<Option<S::Future>> {
        if self.spare.is_none() {
            return Poll::Ready(None);
        }
        // A service that fails readiness cannot take the hedge; the attempts already sent carry
        // on, and their answer is the answer. A hedge is paid for once its service is ready, so
        // that one which never goes out costs nothing.
        if ready!(self.service.poll_ready(cx)).is_err() || !paid(budget) {
            self.spare = None;
            return Poll::Ready(None);
        }
        let Some(request) = self.spare.take() else {
            return Poll::Ready(None);
        };
        if !last {
            self.spare = self.clone_request.clone_request(&request);
        }
        Poll::Ready(Some(self.service.call(request)))
    }
}

// === impl ReadyLauncher ===

impl<M, R, G, F, Ready, E> Launch<F> for ReadyLauncher<M, R, G>
where
    M: FnMut() -> R,
    R: Future<Output = Result<Ready, E>>,
    G: FnMut(Ready) -> Option<F>,
{
    fn poll_launch(
        &mut self,
        cx: &mut Context<'_>,
        _: bool,
        budget: Option<&Budget>,
    ) -> Poll<Option<F>> {
        let pending = self
            .pending
            .get_or_insert_with(|| Box::pin((self.make_ready)()));
        let ready = ready!(pending.as_mut().poll(cx));
        self.pending = None;
        Poll::Ready(
            ready
                .ok()
                .filter(|_| paid(budget))
                .and_then(&mut self.launch),
        )
    }
}

// === impl Race ===

impl<F, L, C> Race<F, L, C>
where
    F: Future,
{
    /// Races `first` against up to `max_extra` attempts from `launcher`, one every `delay`; no
    /// hedge without a delay or a launcher.
    pub(super) fn new(
        first: F,
        launcher: Option<L>,
        delay: Option<Duration>,
        classify: C,
        shared: Arc<Shared>,
    ) -> Race<F, L, C> {
        if let Some(budget) = &shared.budget {
            budget.deposit();
        }
        let hedging = launcher.is_some() && delay.is_some();
        let delay = delay.unwrap_or_default();
        Race {
            started: Instant::now(),
            first: Some(first),
            extras: Vec::new(),
            timer: None,
            launching: false,
            launcher: if hedging { launcher } else { None },
            extras_left: if hedging { shared.max_extra } else { 0 },
            delay,
            classify,
            last_failure: None,
            shared,
        }
    }
}

impl<F, L, C, T, E> Future for Race<F, L, C>
where
    F: Future<Output = Result<T, E>>,
    L: Launch<F>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let mut answer = None;
            if let Some(first) = this.first.as_mut().as_pin_mut()
                && let Poll::Ready(result) = first.poll(cx)
            {
                this.first.set(None);
                answer = settle(
                    this.shared,
                    this.classify,
                    this.last_failure,
                    result,
                    *this.started,
                    None,
                )
                .map(|result| (result, false));
            }
            let mut i = 0;
            while answer.is_none() && i < this.extras.len() {
                if let Poll::Ready(result) = this.extras[i].as_mut().poll(cx) {
                    drop(this.extras.swap_remove(i));
                    answer = settle(
                        this.shared,
                        this.classify,
                        this.last_failure,
                        result,
                        *this.started,
                        Some(*this.delay),
                    )
                    .map(|result| (result, true));
                } else {
                    i += 1;
                }
            }

            if let Some((result, from_hedge)) = answer {
                if from_hedge {
                    this.shared.won.fetch_add(1, Ordering::Relaxed);
                }
                // Cancel the losers now, not whenever this future happens to be dropped.
                this.first.set(None);
                this.extras.clear();
                this.timer.set(None);
                *this.launcher = None;
                return Poll::Ready(result);
            }
            if this.first.is_none() && this.extras.is_empty() {
                // Every attempt failed. A hedge answers slowness, not failure: no new attempt
                // starts once nothing is in flight (that would be a retry).
                let failure = this.last_failure.take();
                return Poll::Ready(failure.expect("an attempt finished before the race emptied"));
            }

            if *this.extras_left == 0 {
                return Poll::Pending;
            }
            let Some(launcher) = this.launcher.as_mut() else {
                return Poll::Pending;
            };
            if !*this.launching {
                if this.timer.is_none() {
                    let due = saturating_after(*this.started, *this.delay);
                    this.timer.set(Some(sleep_until(due)));
                }
                if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                    ready!(timer.poll(cx));
                }
                *this.launching = true;
            }
            let last = *this.extras_left == 1;
            match ready!(launcher.poll_launch(cx, last, this.shared.budget.as_ref())) {
                Some(future) => {
                    *this.launching = false;
                    *this.extras_left -= 1;
                    this.shared.sent.fetch_add(1, Ordering::Relaxed);
                    this.extras.push(Box::pin(future));
                    if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                        timer.reset(saturating_after(Instant::now(), *this.delay));
                    }
                    // Poll the new attempt and the rearmed timer so that they can wake us.
                }
                None => {
                    *this.launching = false;
                    *this.launcher = None;
                    this.timer.set(None);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Judges one answer: `Some` if it wins the race, otherwise kept as the last failure. A hedge's
/// answer comes with the delay after which the first hedge went out (`hedged_after`).
fn settle<T, E, C: Classify<T, E>>(
    shared: &Shared,
    classify: &C,
    last_failure: &mut Option<Result<T, E>>,
    result: Result<T, E>,
    started: Instant,
    hedged_after: Option<Duration>,
) -> Option<Result<T, E>> {
    let outcome = classify.classify(&result);
    if !outcome.is_failure() {
        // Only successes teach the percentile: a fast failure would pull the hedge delay down
        // exactly when the callee is in trouble. The delay is a percentile of the first
        // attempt's latency, of which a winning hedge shows a lower bound: the delay itself,
        // which the first attempt outlasted. Timed from its own start, each winning hedge
        // would add a short latency, the percentile would sink, and more calls would be hedged
        // than it says; timed from the first attempt's start, delay and hedge together, each
        // window where more calls are hedged than the percentile leaves would raise the delay
        // by a hedge's latency, until it hedged nothing.
        let latency = started.elapsed();
        shared
            .latencies
            .record(hedged_after.map_or(latency, |delay| latency.min(delay)));
        return Some(result);
    }
    match shared.winner {
        // A policy inside that refused the attempt (a breaker open, a bulkhead or limit full)
        // gave no answer of the callee's: it must not end the race and cancel an attempt the
        // callee is answering. Its timeout, the callee's slowness, is an answer.
        Winner::FirstAnswer
            if classify.refusal(&result).map(Verdict::of_refusal) != Some(Verdict::NotCalled) =>
        {
            Some(result)
        }
        Winner::FirstAnswer | Winner::FirstSuccess => {
            *last_failure = Some(result);
            None
        }
    }
}
