//! A pipeline: every policy around one call, in the order that makes them work together.
//!
//! Policies nest, and their order changes what they do: a retry outside a breaker retries the
//! breaker's refusals, a retry inside it hammers a broken callee; a timeout outside a retry bounds
//! all attempts, inside it bounds each. [`Pipeline`] puts them in one order and explains it, so that
//! each call site does not have to rediscover it. Outermost first:
//!
//! | # | policy | why here |
//! |---|---|---|
//! | 1 | fallback ([`Pipeline::call_with_fallback`]) | outermost, so it can answer whatever went wrong below, refusals included |
//! | 2 | total timeout ([`PipelineBuilder::timeout`]) | bounds all attempts together: retries cannot outlive the caller's patience; a [`Deadline`] in scope caps it, and it is the deadline of what runs inside, so that a retry whose backoff would outlast it gives back the last attempt's error at once |
//! | 3 | retry ([`PipelineBuilder::retry`]) | above the limits and the breaker, so a refused or failed attempt can be tried again after a backoff; its budget keeps retries from turning an outage into a storm |
//! | 4 | hedge ([`PipelineBuilder::hedge`]) | each attempt may be hedged; hedges pass through the limits below like any attempt, and are paid from the retry's budget when there is one |
//! | 5 | bulkhead, adaptive limit | bound attempts in flight; taken before the breaker, so their refusals (which say nothing about the callee) never reach its statistics |
//! | 6 | circuit breaker ([`PipelineBuilder::breaker`]) | refuses at once while the callee is known broken, holding a bulkhead place only for an instant |
//! | 7 | rate limit ([`PipelineBuilder::rate_limit`]) | every attempt reaching the callee, retries and hedges included, spends a token; taken last, so an attempt refused above spends none, and its own refusal leaves the breaker's permit unrecorded |
//! | 8 | attempt timeout ([`PipelineBuilder::attempt_timeout`]) | innermost, so a hung attempt is cut short and the breaker above counts it as a failure |
//!
//! Every stage is optional. One classifier ([`PipelineBuilder::classify`], by default every `Err`
//! is a failure) judges each attempt for the breaker, the adaptive limit, the hedge and the retry
//! alike, so an `Ok` holding an HTTP 503 can count as a failure everywhere at once. The retry of a pipeline
//! retries failures and attempt timeouts; it never retries a refusal (breaker open, bulkhead full,
//! rate limited, deadline exceeded), since trying again at once would meet the same refusal. An
//! attempt cut short by the caller's deadline teaches the adaptive limit nothing: the caller ran
//! out of time, which says nothing about the callee; nor the breaker, unless the attempt had run
//! past its slow-call threshold (see [`Permit::cut_short`](crate::breaker::Permit::cut_short)).
//! An attempt cut short by the pipeline's own total timeout is a failure of the callee's, as one
//! its attempt timeout cuts is: that is the time the pipeline's owner gives a call.
//! As a tower layer ([`Pipeline::layer`]), a refusal that comes up from a layer below (in the
//! boxed error's chain) is one of the pipeline's own, judged as above.
//!
//! ```
//! use std::time::Duration;
//! use rampart_policy::breaker::CircuitBreaker;
//! use rampart_policy::bulkhead::Bulkhead;
//! use rampart_policy::fallback::Fallback;
//! use rampart_policy::pipeline::Pipeline;
//! use rampart_policy::ratelimit::RateLimiter;
//! use rampart_policy::retry::{ExponentialBackoff, Retry};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ms = Duration::from_millis;
//! let pipeline = Pipeline::builder()
//!     .timeout(ms(800))
//!     .retry(Retry::new(3, ExponentialBackoff::new(ms(10), ms(200)).unwrap()).unwrap())
//!     .rate_limit(RateLimiter::per_second(500).build().unwrap())
//!     .bulkhead(Bulkhead::builder(64).build().unwrap())
//!     .breaker(CircuitBreaker::new())
//!     .attempt_timeout(ms(250))
//!     .build();
//!
//! let stock = pipeline.call(|| async { Ok::<u32, std::io::Error>(7) }).await.unwrap();
//! assert_eq!(stock, 7);
//!
//! // With a fallback, outermost: a failure or a refusal answers "unknown" instead.
//! let unknown = Fallback::value(0);
//! let stock = pipeline
//!     .call_with_fallback(&unknown, || async { Err::<u32, _>(std::io::Error::other("down")) })
//!     .await
//!     .unwrap();
//! assert_eq!(stock, 0);
//! # }
//! ```
//!
//! # With tower
//!
//! [`Pipeline::layer`] applies the same pipeline to a tower service; see [`PipelineService`]
//! for how its attempts meet the service's readiness.
//!
//! ```
//! # use std::time::Duration;
//! # use rampart_policy::{breaker::CircuitBreaker, pipeline::Pipeline,
//! #     retry::{ExponentialBackoff, Retry}};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tower::{Layer, ServiceExt};
//!
//! let ms = Duration::from_millis;
//! let pipeline = Pipeline::builder()
//!     .retry(Retry::new(3, ExponentialBackoff::new(ms(10), ms(200)).unwrap()).unwrap())
//!     .breaker(CircuitBreaker::new())
//!     .attempt_timeout(ms(250))
//!     .build();
//! let svc = pipeline
//!     .layer()
//!     .layer(tower::service_fn(|req: u32| async move { Ok::<_, std::io::Error>(req + 1) }));
//! assert_eq!(svc.oneshot(41).await.unwrap(), 42);
//! # }
//! ```
//!
//! The policies' own layers compose as well. A `ServiceBuilder` applies layers outermost first,
//! so the same order reads top to bottom. The breaker's layer lets a refusal from below (a
//! rate limit's, a bulkhead's) go without counting it, so the rate limit sits below the breaker
//! as in the pipeline, and an attempt the breaker refuses spends no token. A `RetryLayer`
//! classifies with its own classifier, by default retrying every error, refusals included: give
//! it [`RetryTransient`], as below, to retry what the pipeline retries.
//!
//! ```
//! # use std::time::Duration;
//! # use rampart_policy::{breaker::CircuitBreaker, bulkhead::Bulkhead, ratelimit::RateLimiter,
//! #     retry::{ExponentialBackoff, Retry, RetryTransient}, classify::ErrorsAreFailures,
//! #     timeout::Timeout};
//! # let ms = Duration::from_millis;
//! let retry = Retry::new(3, ExponentialBackoff::new(ms(10), ms(200)).unwrap())
//!     .unwrap()
//!     .with_classify(RetryTransient(ErrorsAreFailures)); // failures and timeouts, no refusals
//! # let limiter = RateLimiter::per_second(500).build().unwrap();
//! # let bulkhead = Bulkhead::builder(64).build().unwrap();
//! # let breaker = CircuitBreaker::new();
//! let svc = tower::ServiceBuilder::new()
//!     .layer(Timeout::new(ms(800)).layer())   // all attempts together
//!     .layer(retry.layer())                   // attempts, backoff, budget
//!     .layer(bulkhead.layer())                // attempts in flight
//!     .layer(breaker.layer())                 // refuse while broken
//!     .layer(limiter.layer())                 // a token per attempt the breaker lets go
//!     .layer(Timeout::new(ms(250)).layer())   // one attempt
//!     .service_fn(|req: u32| async move { Ok::<_, std::io::Error>(req) });
//! # let _ = svc;
//! ```
//!
//! One difference: the outer `Timeout` bounds all attempts together without telling the retry
//! how long is left, so a retry whose backoff would outlast it sleeps into it, and the caller
//! gets [`Rejected::Timeout`] where the pipeline gives back the last failure at once. A
//! [`Deadline`] does tell it: call the stack inside `Deadline::after(total).scope(..)`, or give
//! the requests their deadline and put a `DeadlineLayer` on top.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use tokio::time::Instant;

mod service;

pub use self::service::{NotCopied, PipelineLayer, PipelineService, ResponseFuture};

use crate::adaptive::{AdaptiveLimit, Permit as AdaptivePermit};
use crate::breaker::{CircuitBreaker, Permit as BreakerPermit};
use crate::bulkhead::{Bulkhead, BulkheadPermit};
use crate::classify::{Classify, ErrorsAreFailures, Outcome, Verdict, judge};
use crate::error::{Error, Rejected};
use crate::fallback::{Fallback, FallbackFn};
use crate::hedge::Hedge;
use crate::ratelimit::RateLimiter;
pub use crate::retry::RetryTransient;
use crate::retry::{Budget, Retry};
use crate::timeout::error::{DeadlineExceeded, Elapsed};
use crate::timeout::{Deadline, Timeout};

/// Policies composed around a call; see the [module docs](self) for the order and why.
///
/// Cheap to clone: every policy in it is a shared handle, so clones share breakers, budgets and
/// limits.
#[derive(Clone, Debug)]
pub struct Pipeline<C = ErrorsAreFailures> {
    stages: Stages,
    retry: Option<Retry<RetryTransient<C>>>,
    classify: C,
}

/// The stages that do not depend on the classifier.
#[derive(Clone, Debug, Default)]
struct Stages {
    timeout: Option<Timeout>,
    hedge: Option<Hedge>,
    rate_limit: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    adaptive: Option<AdaptiveLimit>,
    breaker: Option<CircuitBreaker>,
    attempt_timeout: Option<Timeout>,
}

/// Builds a [`Pipeline`]; each stage is optional and lands in its place whatever the order of the
/// calls.
#[derive(Clone, Debug)]
#[must_use]
pub struct PipelineBuilder<C = ErrorsAreFailures> {
    stages: Stages,
    retry: Option<Retry<()>>,
    classify: C,
}

// === impl PipelineBuilder ===

impl<C> PipelineBuilder<C> {
    /// Judges each attempt with `classify` (for the breaker, the adaptive limit, the hedge and the
    /// retry) instead of counting every `Err` as a failure. It sees what the attempt returned,
    /// refusals as [`Error::Rejected`].
    pub fn classify<C2>(self, classify: C2) -> PipelineBuilder<C2> {
        PipelineBuilder {
            stages: self.stages,
            retry: self.retry,
            classify,
        }
    }

    /// Bounds the whole call, every attempt and backoff included.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stages.timeout = Some(Timeout::new(timeout));
        self
    }

    /// Retries failed attempts. The retry's own classifier gives way to the pipeline's (see
    /// [`RetryTransient`]); its attempts, backoff and budget are kept.
    pub fn retry<R>(mut self, retry: Retry<R>) -> Self {
        self.retry = Some(retry.with_classify(()));
        self
    }

    /// Hedges each attempt.
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.stages.hedge = Some(hedge);
        self
    }

    /// Spends a token per attempt.
    pub fn rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.stages.rate_limit = Some(limiter);
        self
    }

    /// Bounds attempts in flight, with a waiting queue.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.stages.bulkhead = Some(bulkhead);
        self
    }

    /// Bounds attempts in flight by a limit learnt from their latency. It sits beside the
    /// bulkhead, inside it when both are set.
    pub fn adaptive_limit(mut self, limit: AdaptiveLimit) -> Self {
        self.stages.adaptive = Some(limit);
        self
    }

    /// Refuses attempts while the callee is known broken.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.stages.breaker = Some(breaker);
        self
    }

    /// Bounds each attempt.
    pub fn attempt_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stages.attempt_timeout = Some(Timeout::new(timeout));
        self
    }

    /// The pipeline.
    pub fn build(self) -> Pipeline<C>
    where
        C: Clone,
    {
        Pipeline {
            retry: self
                .retry
                .map(|retry| retry.with_classify(RetryTransient(self.classify.clone()))),
            stages: self.stages,
            classify: self.classify,
        }
    }
}

// === impl Pipeline ===

impl Pipeline {
    /// Starts building a pipeline.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }
}

impl Default for Pipeline {
    /// A pipeline with no stage: it just calls.
    fn default() -> Self {
        Pipeline::builder().build()
    }
}

impl Default for PipelineBuilder {
    fn default() -> Self {
        PipelineBuilder {
            stages: Stages::default(),
            retry: None,
            classify: ErrorsAreFailures,
        }
    }
}

impl<C> Pipeline<C> {
    /// Runs `f` through every stage. `f` makes one attempt each time it is called; it is `Fn`
    /// because a retry or a hedge calls it again, maybe while an earlier attempt still runs.
    ///
    /// A refusal comes back as [`Error::Rejected`] (the last attempt's, after retries), the
    /// call's own error as [`Error::Inner`].
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(&Closure(f)).await
    }

    /// Like [`call`](Self::call), answering with `fallback` when the call fails or is refused
    /// (for the reasons the fallback is set to). Whether it failed is the pipeline's classifier's
    /// say, as for every other stage: an `Ok` it calls a failure is a
    /// [`FallbackReason::FailedResponse`](crate::fallback::FallbackReason::FailedResponse).
    pub async fn call_with_fallback<Fb, F, Fut, T, E>(
        &self,
        fallback: &Fallback<T, E, Fb>,
        f: F,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        Fb: FallbackFn<T, E>,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let result = self.call(f).await;
        // The fallback judges `Result<T, E>`, the pipeline's classifier `Result<T, Error<E>>`: the
        // verdict is passed on rather than the classifier (a refusal the fallback tells itself).
        let failed = self.classify.classify(&result).is_failure();
        let verdict = move |_: &Result<T, E>| {
            if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            }
        };
        fallback
            .call_classified(verdict, || std::future::ready(result))
            .await
    }

    /// Whether an attempt may be followed by another: a retry or a hedge.
    fn repeats(&self) -> bool {
        self.retry.is_some() || self.stages.hedge.is_some()
    }

    /// Every stage around the attempts of `callee`.
    async fn run<A, T, E>(&self, callee: &A) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        A: Callee<Response = T, Error = E>,
    {
        let Some(timeout) = self.stages.timeout else {
            return self.retried(callee, None).await;
        };
        // The total timeout is the deadline of what runs inside, so that a retry whose backoff
        // would outlast it gives back the last attempt's own error at once, rather than sleeping
        // into a bare timeout, and an attempt timeout is capped by it.
        let outer = Deadline::current();
        let total = Deadline::after(timeout.duration());
        // The total is the pipeline's own when it comes before the caller's deadline: an attempt
        // it cuts short had all the time the pipeline gives one, and failed (see `attempt`).
        let own = outer
            .is_none_or(|outer| total.instant() < outer.instant())
            .then_some(total);
        match timeout
            .call(|| total.scope(self.retried(callee, own)))
            .await
            .map_err(Error::flatten)
        {
            // The total timeout ran out, not a deadline of the caller's: a timeout it is. A
            // deadline passed below the pipeline (a `DeadlineLayer` under it, the request's own)
            // before the total is the deadline's refusal, and stays one: a timeout is retried
            // by a `RetryTransient` above, a passed deadline must not be.
            Err(Error::Rejected(Rejected::DeadlineExceeded(_)))
                if total.is_expired() && !outer.is_some_and(|outer| outer.is_expired()) =>
            {
                Err(Error::Rejected(Rejected::Timeout(Elapsed::new(
                    timeout.duration(),
                ))))
            }
            result => result,
        }
    }

    async fn retried<A, T, E>(&self, callee: &A, own: Option<Deadline>) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        A: Callee<Response = T, Error = E>,
    {
        match &self.retry {
            Some(retry) if callee.repeatable() => retry.call(|| self.hedged(callee, own)).await,
            Some(retry) => {
                // Sent once, but still a call the budget counts, as a retry service counts it.
                if let Some(budget) = retry.budget() {
                    budget.deposit();
                }
                self.hedged(callee, own).await
            }
            None => self.hedged(callee, own).await,
        }
    }

    async fn hedged<A, T, E>(&self, callee: &A, own: Option<Deadline>) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        A: Callee<Response = T, Error = E>,
    {
        // Ready, and in the bulkhead, before the race, so that neither a slow readiness nor a
        // wait in the bulkhead's queue sets off a hedge (which would wait behind it in the same
        // queue) or counts in the latency the hedge learns from.
        let ready = self.ready(callee).await?;
        let place = self.place().await?;
        let Some(hedge) = self.stages.hedge.as_ref().filter(|_| callee.repeatable()) else {
            return self.attempt(callee, ready, place, own).await;
        };
        // A hedge is extra load, paid from the retry's budget when there is one, as a retry is
        // (and as Finagle and gRPC bound hedging): a callee slow for everyone does not get
        // twice its calls. It is paid once its callee is ready, as a hedge service's is.
        let budget = self.retry.as_ref().and_then(Retry::budget);
        let admitted = self.admit().map_err(Error::Rejected)?;
        self.spend_token().map_err(Error::Rejected)?;
        hedge
            .race_when_ready(
                // Judged by the pipeline's classifier, so that an answer it calls a failure (a
                // 503 in an `Ok`, say) does not win over an attempt still in flight.
                |result: &Result<T, Error<E>>| self.classify.classify(result),
                self.admitted(callee, ready, place, admitted, own),
                || self.ready(callee),
                |ready| {
                    // A hedge waits in no queue: with no place free, no hedge (nor any of the
                    // budget spent). Nor is one the adaptive limit, the breaker or the rate limit
                    // refuses sent: admitted here, before it is counted, its refusal never races
                    // the attempt in flight (with `Winner::FirstAnswer` it would win and cancel
                    // it). The budget is paid before the rate limit's token is taken, as a retry
                    // pays it before its attempt: a hedge the rate limit then refuses has spent
                    // it, which only makes the budget stricter.
                    let place = match &self.stages.bulkhead {
                        Some(bulkhead) => Some(bulkhead.try_acquire().ok()?),
                        None => None,
                    };
                    let admitted = self.admit().ok()?;
                    if !budget.is_none_or(Budget::withdraw) {
                        return None;
                    }
                    self.spend_token().ok()?;
                    Some(self.admitted(callee, ready, place, admitted, own))
                },
            )
            .await
    }

    /// Waits until `callee` can take an attempt, before any stage of it, as in a stack of tower
    /// layers: the wait holds no place nor permit and is not the attempt's slowness. The
    /// caller's deadline (the total timeout's, inside one) bounds it.
    async fn ready<A>(&self, callee: &A) -> Result<A::Ready, Error<A::Error>>
    where
        A: Callee,
    {
        let mut wait = pin!(callee.ready());
        // A callee ready at once (a closure always is) needs no timer.
        let failed = |err| from_callee(callee, err);
        if let Poll::Ready(ready) = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await {
            return ready.map_err(failed);
        }
        let Some(deadline) = Deadline::current() else {
            return wait.await.map_err(failed);
        };
        match tokio::time::timeout_at(deadline.instant(), wait).await {
            Ok(ready) => ready.map_err(failed),
            Err(_) => Err(Error::Rejected(Rejected::DeadlineExceeded(
                DeadlineExceeded::new(),
            ))),
        }
    }

    /// A place in the bulkhead, waited for in its queue; `None` without a bulkhead.
    async fn place<E>(&self) -> Result<Option<BulkheadPermit<'_>>, Error<E>> {
        match &self.stages.bulkhead {
            Some(bulkhead) => match bulkhead.acquire().await {
                Ok(place) => Ok(Some(place)),
                Err(full) => Err(Error::Rejected(crate::bulkhead::refusal(full))),
            },
            None => Ok(None),
        }
    }

    /// One attempt, holding its bulkhead `place`: the adaptive limit, the breaker and the
    /// attempt timeout around a call of `callee`, ready, which is made only once every stage
    /// let it through. `own` is the pipeline's total timeout, when it is the deadline in force.
    async fn attempt<A, T, E>(
        &self,
        callee: &A,
        ready: A::Ready,
        place: Option<BulkheadPermit<'_>>,
        own: Option<Deadline>,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        A: Callee<Response = T, Error = E>,
    {
        let admitted = self.admit().map_err(Error::Rejected)?;
        self.spend_token().map_err(Error::Rejected)?;
        self.admitted(callee, ready, place, admitted, own).await
    }

    /// A place in the adaptive limit and the breaker's permit, for an attempt.
    fn admit(&self) -> Result<Admitted<'_>, Rejected> {
        let stages = &self.stages;
        let limit = match &stages.adaptive {
            Some(adaptive) => Some(adaptive.try_acquire()?),
            None => None,
        };
        let permit = match &stages.breaker {
            Some(breaker) => Some(breaker.try_acquire()?),
            None => None,
        };
        Ok(Admitted { limit, permit })
    }

    /// The rate limit's token, taken last of an attempt's admission, so that only an attempt
    /// that reaches the callee spends one. Its refusal drops the permits taken before it
    /// unrecorded: it says nothing about the callee.
    fn spend_token(&self) -> Result<(), Rejected> {
        match &self.stages.rate_limit {
            Some(limiter) => Ok(limiter.try_acquire()?),
            None => Ok(()),
        }
    }

    /// The attempt [`Pipeline::attempt`] makes once every stage let it through.
    async fn admitted<A, T, E>(
        &self,
        callee: &A,
        ready: A::Ready,
        _place: Option<BulkheadPermit<'_>>,
        Admitted { limit, permit }: Admitted<'_>,
        own: Option<Deadline>,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, Error<E>>,
        A: Callee<Response = T, Error = E>,
    {
        let stages = &self.stages;
        // The adaptive limit learns from latency; nothing else here needs the clock.
        let start = limit.as_ref().map(|_| Instant::now());
        // A total timeout already past is not sent to the callee at all: nothing to judge then.
        let sent_in_time = !own.is_some_and(|own| own.is_expired());

        let result = match stages.attempt_timeout {
            Some(timeout) => timeout.call(|| callee.call(ready)).await,
            // Bounded by the deadline in force even without an attempt timeout, so that an
            // attempt it cuts ends here, where the breaker hears of it (`cut_short`), rather
            // than being dropped by a timer above.
            None => match Deadline::current() {
                Some(deadline) => deadline.call(|| callee.call(ready)).await,
                None => callee.call(ready).await.map_err(Error::Inner),
            },
        };
        let result = result.map_err(|err| match err {
            Error::Inner(err) => from_callee(callee, err),
            refused => refused,
        });

        // Cut short by the attempt timeout (or a timer below): as failed as an error. A deadline
        // passed: the caller's patience ran out, whether the deadline in force here or one a
        // `DeadlineLayer` below set (see `judge`). A policy below refused before the callee
        // was called (see `judge_boxed`).
        let verdict = match &result {
            Err(Error::Rejected(rejected)) => Verdict::of_refusal(rejected),
            _ => judge(&self.classify, &result),
        };
        // Unless the deadline that passed is the pipeline's own total timeout: no caller's hurry,
        // but the time its owner gives a call, which a callee that hangs would otherwise take
        // from every caller without its breaker ever opening (resilience4j counts its
        // TimeLimiter's timeouts, Envoy its route timeouts, as the callee's failures).
        let verdict = match verdict {
            Verdict::CutShort if sent_in_time && own.is_some_and(|own| own.is_expired()) => {
                Verdict::Judged(Outcome::Failure)
            }
            verdict => verdict,
        };
        if let Some(permit) = permit {
            permit.settle(verdict);
        }
        // Neither a call cut short nor one refused below says anything about the callee's
        // latency: the adaptive limit's slot is dropped unrecorded.
        if let (Verdict::Judged(outcome), Some(limit), Some(start)) = (verdict, limit, start) {
            limit.record(outcome, start.elapsed());
        }
        result
    }
}

/// What an attempt holds once the adaptive limit and the breaker let it through.
struct Admitted<'a> {
    limit: Option<AdaptivePermit>,
    permit: Option<BreakerPermit<'a>>,
}

// === Callee ===

/// What a pipeline's attempts call: a closure ([`Pipeline::call`]) or a tower service
/// ([`PipelineService`]).
trait Callee {
    /// What an attempt gives back.
    type Response;
    /// How an attempt fails.
    type Error;
    /// The callee, ready for one attempt.
    type Ready;

    /// Waits until the callee can take one attempt.
    fn ready(&self) -> impl Future<Output = Result<Self::Ready, Self::Error>>;

    /// Makes the attempt.
    fn call(&self, ready: Self::Ready)
    -> impl Future<Output = Result<Self::Response, Self::Error>>;

    /// Whether the callee may be called more than once: if not, it is neither retried nor
    /// hedged.
    fn repeatable(&self) -> bool {
        true
    }

    /// The policy's refusal that `err` is, if it is one: a tower service's error may be the
    /// refusal of a layer below the pipeline, which the pipeline then takes as its own.
    fn refusal(&self, _err: &Self::Error) -> Option<Rejected> {
        None
    }
}

/// `err`, from `callee`, as the pipeline's error: a refusal from below (a `DeadlineLayer`'s
/// deadline passed, a breaker open) is one of the pipeline's own. It is then retried, judged and
/// answered as one (never retried but for a timeout, never counted against the callee for a
/// deadline), as a [`RetryTransient`] and the breaker's layer judge it in a stack of layers.
fn from_callee<A: Callee>(callee: &A, err: A::Error) -> Error<A::Error> {
    match callee.refusal(&err) {
        Some(rejected) => Error::Rejected(rejected),
        None => Error::Inner(err),
    }
}

/// A closure, called once an attempt: always ready.
struct Closure<F>(F);

impl<F, Fut, T, E> Callee for Closure<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Ready = ();

    fn ready(&self) -> impl Future<Output = Result<(), E>> {
        std::future::ready(Ok(()))
    }

    fn call(&self, (): ()) -> impl Future<Output = Result<T, E>> {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::time::Duration;

    use tokio::time::sleep;

    use super::*;
    use crate::breaker::State;
    use crate::classify::Hinted;
    use crate::clock::TokioClock;
    use crate::error::is_caused_by;
    use crate::retry::ExponentialBackoff;
    use crate::rng::Rng;
    use crate::timeout::Deadline;
    use crate::timeout::error::Elapsed;

    const MS: Duration = Duration::from_millis(1);

    pub(super) fn retry(attempts: u32) -> Retry {
        Retry::new(
            attempts,
            ExponentialBackoff::new(10 * MS, 100 * MS)
                .unwrap()
                .with_rng(Rng::fixed(0.5)),
        )
        .unwrap()
        .without_budget()
    }

    pub(super) fn breaker(failures: u32) -> CircuitBreaker {
        CircuitBreaker::builder()
            .consecutive_failures(failures)
            .clock(Arc::new(TokioClock))
            .rng(Rng::fixed(0.0))
            .build()
            .unwrap()
    }

    /// A callee that fails its first `failures` calls, counting every call it gets.
    fn flaky(
        failures: u32,
    ) -> (
        Arc<AtomicU32>,
        impl Fn() -> std::future::Ready<Result<u32, &'static str>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let f = move || {
            let n = counter.fetch_add(1, SeqCst);
            std::future::ready(if n < failures { Err("down") } else { Ok(n) })
        };
        (calls, f)
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_pipeline_just_calls() {
        let (calls, f) = flaky(0);
        assert_eq!(Pipeline::default().call(f).await.unwrap(), 0);
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_ride_over_transient_failures_through_the_breaker() {
        let b = breaker(5);
        let p = Pipeline::builder()
            .retry(retry(3))
            .breaker(b.clone())
            .build();
        let (calls, f) = flaky(2);
        assert_eq!(p.call(f).await.unwrap(), 2);
        assert_eq!(calls.load(SeqCst), 3);
        // Each failed attempt reached the breaker, and the success reset the run.
        assert_eq!(b.snapshot().calls, 3);
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_names_its_wait_is_retried_no_sooner() {
        // (status, Retry-After in ms)
        type Answer = Result<(u16, u64), Error<()>>;
        let classify = Hinted {
            classify: |answer: &Answer| match answer {
                Ok((200, _)) => Outcome::Success,
                _ => Outcome::Failure,
            },
            hint: |answer: &Answer| match answer {
                Ok((503, ms)) => Some(Duration::from_millis(*ms)),
                _ => None,
            },
        };
        let pipeline = Pipeline::builder()
            .classify(classify)
            .retry(retry(2))
            .build();
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let answer = pipeline
            .call(|| {
                let first = calls.fetch_add(1, SeqCst) == 0;
                std::future::ready(Ok::<_, ()>(if first { (503, 300) } else { (200, 0) }))
            })
            .await;
        assert_eq!(answer.unwrap(), (200, 0));
        // The backoff alone would have waited 5 ms.
        assert_eq!(start.elapsed(), 300 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_refusal_is_not_retried() {
        let b = breaker(1);
        b.force_open();
        let r = retry(5);
        let p = Pipeline::builder()
            .retry(r.clone())
            .breaker(b.clone())
            .build();
        let (calls, f) = flaky(0);
        let err = p.call(f).await.unwrap_err();
        assert!(matches!(err, Error::Rejected(Rejected::BreakerOpen(_))));
        assert_eq!(calls.load(SeqCst), 0);
        assert_eq!(b.snapshot().rejected, 1, "one attempt, refused once");
        assert_eq!(r.retries_total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_classifier_judges_every_attempt_for_breaker_and_retry() {
        let b = breaker(3);
        let p = Pipeline::builder()
            .classify(|r: &Result<u16, Error<()>>| match r {
                Ok(status) if *status >= 500 => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            })
            .retry(retry(3))
            .breaker(b.clone())
            .build();
        // Two 503s, then a 200: retried as failures, and counted as such.
        let calls = AtomicU32::new(0);
        let status = p
            .call(|| {
                let n = calls.fetch_add(1, SeqCst);
                std::future::ready(Ok::<u16, ()>(if n < 2 { 503 } else { 200 }))
            })
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(b.snapshot().failures, 2);
        // A 404 is an answer: kept, not retried, a success.
        let status = p.call(|| std::future::ready(Ok::<u16, ()>(404))).await;
        assert_eq!(status.unwrap(), 404);
        assert_eq!(calls.load(SeqCst), 3);
        assert_eq!(b.snapshot().consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_running_out_teaches_the_breaker_nothing() {
        let b = breaker(1);
        let p = Pipeline::builder()
            .breaker(b.clone())
            .attempt_timeout(Duration::from_secs(1))
            .build();
        let err = Deadline::after(10 * MS)
            .scope(p.call(|| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<(), ()>(())
            }))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Rejected(Rejected::DeadlineExceeded(_))
        ));
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.snapshot().calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_callee_cut_by_the_total_timeout_is_a_failure() {
        // No attempt timeout and no slow-call trigger: the total timeout cuts each call, and
        // that is the callee failing, not a caller in a hurry.
        let b = CircuitBreaker::builder()
            .consecutive_failures(3)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let limit = AdaptiveLimit::new(
            crate::adaptive::Aimd::builder()
                .initial_limit(10)
                .build()
                .unwrap(),
        );
        let p = Pipeline::builder()
            .timeout(150 * MS)
            .breaker(b.clone())
            .adaptive_limit(limit.clone())
            .build();
        for _ in 0..3 {
            let err = p
                .call(std::future::pending::<Result<(), ()>>)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Rejected(Rejected::Timeout(_))),
                "{err:?}"
            );
        }
        assert_eq!(b.snapshot().failures, 3);
        assert_eq!(b.state(), State::Open);
        assert!(limit.limit() < 10, "the limit heard of the timeouts");

        // So is an attempt timeout the total caps, which then ends the attempt as a deadline.
        let b = CircuitBreaker::builder()
            .consecutive_failures(2)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let p = Pipeline::builder()
            .timeout(150 * MS)
            .attempt_timeout(Duration::from_secs(1))
            .breaker(b.clone())
            .build();
        for _ in 0..2 {
            p.call(std::future::pending::<Result<(), ()>>)
                .await
                .unwrap_err();
        }
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_total_timeout_after_the_callers_deadline_leaves_the_callee_unjudged() {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let p = Pipeline::builder()
            .timeout(Duration::from_secs(1))
            .breaker(b.clone())
            .build();
        let err = Deadline::after(10 * MS)
            .scope(p.call(std::future::pending::<Result<(), ()>>))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Rejected(Rejected::DeadlineExceeded(_))),
            "{err:?}"
        );
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.snapshot().calls, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_is_hedged_and_the_hedge_spends_a_token() {
        let limiter = RateLimiter::per_second(2)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let hedge = Hedge::new(crate::hedge::HedgeDelay::Fixed(20 * MS)).unwrap();
        let p = Pipeline::builder()
            .hedge(hedge.clone())
            .rate_limit(limiter.clone())
            .build();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let answer = p
            .call(|| {
                let n = calls.fetch_add(1, SeqCst);
                async move {
                    // The first attempt hangs; the hedge answers.
                    if n == 0 {
                        sleep(Duration::from_secs(60)).await;
                    }
                    Ok::<_, ()>(n)
                }
            })
            .await
            .unwrap();
        assert_eq!(answer, 1, "the hedge's answer");
        assert_eq!(start.elapsed(), 20 * MS);
        assert_eq!(hedge.hedges_sent(), 1);
        assert!(
            limiter.try_acquire().is_err(),
            "both attempts spent a token"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_a_policy_refuses_is_not_sent_and_never_beats_the_attempt() {
        // The adaptive limit has room for the first attempt only: its refusal of the hedge is
        // no answer of the callee's.
        let limit = AdaptiveLimit::new(
            crate::adaptive::Aimd::builder()
                .initial_limit(1)
                .build()
                .unwrap(),
        );
        let hedge = Hedge::builder(crate::hedge::HedgeDelay::Fixed(10 * MS))
            .winner(crate::hedge::Winner::FirstAnswer)
            .build()
            .unwrap();
        let p = Pipeline::builder()
            .hedge(hedge.clone())
            .adaptive_limit(limit)
            .build();
        let start = Instant::now();
        let answer = p
            .call(|| async {
                sleep(50 * MS).await;
                Ok::<_, ()>(7)
            })
            .await;
        assert_eq!(answer.unwrap(), 7, "the attempt's own answer");
        assert_eq!(start.elapsed(), 50 * MS);
        assert_eq!(hedge.hedges_sent(), 0);
        assert_eq!(hedge.hedges_won(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hedge_judges_answers_with_the_pipelines_classifier() {
        let p = Pipeline::builder()
            .classify(|r: &Result<u16, Error<()>>| match r {
                Ok(status) if *status >= 500 => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            })
            .hedge(Hedge::new(crate::hedge::HedgeDelay::Fixed(10 * MS)).unwrap())
            .build();
        let calls = AtomicU32::new(0);
        let status = p
            .call(|| {
                let n = calls.fetch_add(1, SeqCst);
                async move {
                    // The first attempt answers 503 at 20 ms; the hedge, sent at 10 ms, answers
                    // 200 at 25 ms.
                    if n == 0 {
                        sleep(20 * MS).await;
                        Ok::<u16, ()>(503)
                    } else {
                        sleep(15 * MS).await;
                        Ok(200)
                    }
                }
            })
            .await;
        assert_eq!(status.unwrap(), 200, "a 503 is a failure, and does not win");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_is_cut_retried_and_counted_by_the_breaker() {
        let b = breaker(10);
        let p = Pipeline::builder()
            .retry(retry(2))
            .breaker(b.clone())
            .attempt_timeout(50 * MS)
            .build();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let answer = p
            .call(|| {
                let n = calls.fetch_add(1, SeqCst);
                async move {
                    if n == 0 {
                        sleep(Duration::from_secs(60)).await;
                    }
                    Ok::<_, ()>(n)
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 1);
        // 50 ms attempt timeout, then a backoff of half of 10 ms (fixed rng 0.5, full jitter).
        assert_eq!(start.elapsed(), 55 * MS);
        assert_eq!(b.snapshot().failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_timeout_bounds_every_attempt_together() {
        let p = Pipeline::builder()
            .timeout(100 * MS)
            .retry(retry(10))
            .attempt_timeout(40 * MS)
            .build();
        let start = Instant::now();
        let err = p
            .call(|| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<(), ()>(())
            })
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), 100 * MS);
        let Error::Rejected(rejected) = err else {
            panic!("expected a refusal")
        };
        assert!(is_caused_by::<Elapsed>(&rejected));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_would_outlast_the_total_timeout_gives_back_the_last_error_at_once() {
        let backoff = ExponentialBackoff::new(300 * MS, Duration::from_secs(1))
            .unwrap()
            .with_rng(Rng::fixed(1.0));
        let p = Pipeline::builder()
            .timeout(200 * MS)
            .retry(Retry::new(3, backoff).unwrap())
            .build();
        let (calls, f) = flaky(10);
        let start = Instant::now();
        let err = p.call(f).await.unwrap_err();
        assert!(matches!(err, Error::Inner("down")), "{err:?}");
        assert_eq!(calls.load(SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO, "no sleep into the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_are_paid_from_the_retry_budget() {
        let hedge = || Hedge::new(crate::hedge::HedgeDelay::Fixed(20 * MS)).unwrap();
        let slow_once = || {
            let calls = Arc::new(AtomicU32::new(0));
            move || {
                let n = calls.fetch_add(1, SeqCst);
                async move {
                    if n == 0 {
                        sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<u32, ()>(n)
                }
            }
        };
        // A budget with nothing in it: the slow attempt is not hedged.
        let broke = Budget::new(Duration::from_secs(10), 0.0, 0).unwrap();
        let (none, some) = (hedge(), hedge());
        let p = Pipeline::builder()
            .retry(retry(2).with_budget(broke))
            .hedge(none.clone())
            .build();
        assert_eq!(p.call(slow_once()).await.unwrap(), 0);
        assert_eq!(none.hedges_sent(), 0);
        // With room in it, the hedge goes and wins.
        let p = Pipeline::builder()
            .retry(retry(2))
            .hedge(some.clone())
            .build();
        assert_eq!(p.call(slow_once()).await.unwrap(), 1);
        assert_eq!(some.hedges_sent(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_in_scope_caps_the_pipeline() {
        let p = Pipeline::builder().timeout(Duration::from_secs(10)).build();
        let start = Instant::now();
        let err = Deadline::after(30 * MS)
            .scope(p.call(|| async {
                sleep(Duration::from_secs(60)).await;
                Ok::<(), ()>(())
            }))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), 30 * MS);
        assert!(matches!(
            err,
            Error::Rejected(Rejected::DeadlineExceeded(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_refuse_before_the_breaker_hears_of_it() {
        let b = breaker(1);
        let limiter = RateLimiter::per_second(1)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let p = Pipeline::builder()
            .rate_limit(limiter)
            .breaker(b.clone())
            .build();
        let (_, f) = flaky(0);
        p.call(&f).await.unwrap();
        let err = p.call(&f).await.unwrap_err();
        assert!(matches!(err, Error::Rejected(Rejected::RateLimited(_))));
        assert_eq!(b.state(), State::Closed);
        assert_eq!(
            b.snapshot().calls,
            1,
            "the refused attempt never reached the breaker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_the_breaker_refuses_spends_no_token() {
        let b = breaker(1);
        b.force_open();
        let limiter = RateLimiter::per_second(1)
            .clock(Arc::new(TokioClock))
            .build()
            .unwrap();
        let p = Pipeline::builder()
            .rate_limit(limiter.clone())
            .breaker(b)
            .build();
        let (calls, f) = flaky(0);
        let err = p.call(&f).await.unwrap_err();
        assert!(matches!(err, Error::Rejected(Rejected::BreakerOpen(_))));
        assert_eq!(calls.load(SeqCst), 0);
        assert!(
            limiter.try_acquire().is_ok(),
            "the one token is still there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_refuses_and_frees_its_place_after_each_attempt() {
        let bulkhead = Bulkhead::builder(1).build().unwrap();
        let p = Pipeline::builder().bulkhead(bulkhead.clone()).build();
        let slow = p.call(|| async {
            sleep(100 * MS).await;
            Ok::<_, ()>(())
        });
        let fast = async {
            // Let the slow call take the place first.
            sleep(MS).await;
            p.call(|| async { Ok::<_, ()>(()) }).await
        };
        let (slow, fast) = tokio::join!(slow, fast);
        assert!(slow.is_ok());
        assert!(matches!(
            fast,
            Err(Error::Rejected(Rejected::BulkheadFull(_)))
        ));
        assert_eq!(bulkhead.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_waits_in_no_bulkhead_queue_nor_is_set_off_by_one() {
        // One place, taken by `a` for 50 ms while `b` waits for it. Neither hedge may go: `a`'s
        // finds no place free, and `b`'s wait in the queue is not its callee's slowness.
        let bulkhead = Bulkhead::builder(1)
            .max_wait_queue(4)
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap();
        let hedge = Hedge::new(crate::hedge::HedgeDelay::Fixed(10 * MS)).unwrap();
        let p = Pipeline::builder()
            .bulkhead(bulkhead)
            .hedge(hedge.clone())
            .build();
        let calls = AtomicU32::new(0);
        let call = || {
            calls.fetch_add(1, SeqCst);
            async {
                sleep(50 * MS).await;
                Ok::<_, ()>(())
            }
        };
        let start = Instant::now();
        let (a, b) = tokio::join!(p.call(call), p.call(call));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(start.elapsed(), 100 * MS);
        assert_eq!(calls.load(SeqCst), 2);
        assert_eq!(hedge.hedges_sent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fallback_answers_failures_and_refusals() {
        let b = breaker(1);
        let p = Pipeline::builder().breaker(b.clone()).build();
        let zero = Fallback::value(0u32);
        let (_, f) = flaky(1);
        assert_eq!(
            p.call_with_fallback(&zero, &f).await.unwrap(),
            0,
            "a failure"
        );
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            p.call_with_fallback(&zero, &f).await.unwrap(),
            0,
            "a refusal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_fallback_answers_what_the_pipelines_classifier_calls_a_failure() {
        let p = Pipeline::builder()
            .classify(|r: &Result<u16, Error<&str>>| match r {
                Ok(status) if *status >= 500 => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(Error::Inner(error)) if *error == "not found" => Outcome::Success,
                Err(_) => Outcome::Failure,
            })
            .build();
        let ok = Fallback::value(200u16);
        let answer = p.call_with_fallback(&ok, || async { Ok::<u16, &str>(503) });
        assert_eq!(answer.await.unwrap(), 200, "a 503 is a failed answer");
        let answer = p.call_with_fallback(&ok, || async { Ok::<u16, &str>(404) });
        assert_eq!(answer.await.unwrap(), 404, "a 404 is an answer");
        let answer = p.call_with_fallback(&ok, || async { Err::<u16, _>("not found") });
        assert!(
            matches!(answer.await, Err(Error::Inner("not found"))),
            "an error it calls a success passes through"
        );
        let answer = p.call_with_fallback(&ok, || async { Err::<u16, _>("reset") });
        assert_eq!(answer.await.unwrap(), 200, "an error it calls a failure");
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_limit_learns_from_each_attempt() {
        let aimd = crate::adaptive::Aimd::builder()
            .initial_limit(2)
            .build()
            .unwrap();
        let limit = AdaptiveLimit::new(aimd);
        let p = Pipeline::builder().adaptive_limit(limit.clone()).build();
        p.call(|| async { Ok::<_, ()>(()) }).await.unwrap();
        assert_eq!(limit.limit(), 3, "a success with the limit in use grows it");
        let _ = p.call(|| async { Err::<(), _>(()) }).await;
        assert_eq!(limit.limit(), 2, "a failure shrinks it");
        assert_eq!(limit.in_flight(), 0, "every place was given back");
    }
}
