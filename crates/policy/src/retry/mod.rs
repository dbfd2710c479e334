//! Retries with backoff, within a budget.
//!
//! Many failures pass: a connection reset by a redeploy, a 503 from an instance shedding load, a
//! lost packet. Trying again hides them from your own callers. Trying again carelessly is how a
//! small outage becomes a large one, so a [`Retry`] bounds itself three ways:
//! - **attempts**: at most `attempts` tries per call, the first one included (3 = up to 2
//!   retries);
//! - **backoff**: sleeps between tries grow exponentially and are jittered
//!   ([`ExponentialBackoff`]), so clients that failed together do not come back together;
//! - **budget**: retries may add only a share of recent traffic plus a small floor ([`Budget`],
//!   on by default at 20% + 10/s over 10 s), so a callee that fails everything is not hit with
//!   `attempts` times its load just when it struggles. Share one budget between the retries of a
//!   route, or of a whole callee, by cloning it.
//!
//! What is worth retrying is for a [`RetryClassify`] to say (by default every `Err`, no `Ok`);
//! it may also honour a server's hint with [`Decision::RetryAfter`]. A retry never refuses a call
//! by itself: when it stops (the classifier is satisfied, the attempts are spent, the budget says
//! no, or the [`Deadline`] in force would pass before the next attempt could start) it hands
//! back the last attempt's result as it was.
//!
//! # Use
//!
//! Directly, around any async call that can be made again ([`Retry::call`]), or as a tower
//! layer ([`RetryLayer`]) around a `Clone` service. A tower request is consumed by each attempt,
//! so the layer keeps a copy for the next one, made by a [`CloneRequest`] (by default `Clone`);
//! a request that cannot be copied (a streaming body, say) is sent once and never retried.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use rampart_policy::BoxError;
//! use rampart_policy::retry::{Budget, ExponentialBackoff, Retry, RetryLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let backoff = ExponentialBackoff::new(Duration::from_millis(25), Duration::from_secs(1))?;
//! // At most 3 tries per call; retries add at most 10% load plus 5 per second.
//! let retry = Retry::new(3, backoff)?.with_budget(Budget::new(
//!     Duration::from_secs(10),
//!     0.1,
//!     5,
//! )?);
//!
//! // Around any async call: the closure makes a fresh attempt each time it is called.
//! let calls = AtomicU32::new(0);
//! let answer = retry
//!     .call(|| async {
//!         match calls.fetch_add(1, Ordering::Relaxed) {
//!             0 => Err("connection reset"),
//!             _ => Ok("hello"),
//!         }
//!     })
//!     .await;
//! assert_eq!(answer, Ok("hello"));
//! assert_eq!(retry.retries_total(), 1);
//!
//! // As a tower layer around a service.
//! let service = RetryLayer::new(retry).layer(service_fn(|name: String| async move {
//!     Ok::<_, BoxError>(format!("hello, {name}"))
//! }));
//! assert_eq!(service.oneshot("you".to_string()).await?, "hello, you");
//! # Ok(())
//! # }
//! ```
//!
//! # Cost
//!
//! A call that succeeds at once pays one budget deposit (a few nanoseconds, no clock read of its
//! own) and one classification; no allocation. The tower service also copies the request and
//! clones the service into the response future, but only when a retry could follow; a call that
//! is retried allocates once, at its first retry, for the state of the attempts after.
//!
//! How such a future reaches its policy depends on the policy's other handles (its [`Retry`]
//! values, and so its layers and services) when the call is made:
//! - a call made through a service that is its policy's last handle holds the policy until it
//!   ends, so it is retried even once the service is gone (a layer in a `ServiceBuilder` chain
//!   built inline is dropped as soon as it has made the service, and `oneshot` drops the service
//!   as soon as it has called it). The price is a reference count taken and let go per call: two
//!   locked atomic operations, about 11 ns;
//! - a call made while the policy has other handles holds only a key, and finds the policy by it
//!   when an attempt fails: it costs no atomic operation, and is retried as long as one handle
//!   of the policy lives. Once every handle is gone it may find nothing, and then keeps the
//!   result it has.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

mod backoff;
mod budget;
mod classify;
pub mod error;
pub mod future;
mod layer;
mod registry;

pub use self::backoff::{Delays, ExponentialBackoff, Jitter};
pub use self::budget::Budget;
pub use self::classify::{Decision, RetryClassify, RetryOnError, RetryOnFailure, RetryTransient};
pub use self::layer::RetryLayer;
pub use crate::request::{CloneRequest, Cloned};

use self::backoff::BackoffState;
use self::error::InvalidAttempts;
use self::future::ResponseFuture;
use self::registry::{Key, Registry};
use crate::timeout::Deadline;

/// Every live policy, for the response futures of [`RetryService`] that do not hold theirs, to
/// find it on a failure.
static POLICIES: Registry<Shared> = Registry::new();

/// The longest a [`Decision::RetryAfter`] hint may make a retry wait, unless set otherwise.
const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A retry policy: attempts, backoff, budget and classifier.
///
/// Cheap to clone; clones share their counters and budget. Configure it before cloning it: a
/// clone given another budget or retry-after cap becomes a policy of its own, with its own
/// counters (a clone given another classifier keeps sharing them).
pub struct Retry<C = RetryOnError> {
    shared: Handle,
    classify: C,
}

struct Shared {
    config: Config,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    /// The policy's [`Handle`]s alive: its [`Retry`] values, and so its layers and services. The
    /// calls in flight that hold the policy are not counted.
    handles: AtomicUsize,
    /// Where the response futures of [`RetryService`] that do not hold this policy find it.
    key: Key,
    /// Told of each retry decided and each refused; see [`Retry::subscribe`].
    listeners: RwLock<Vec<Listener>>,
}

/// What a [`Retry`] holds of its policy: a reference counted once more in the policy's
/// `handles`, so that a service can tell when it holds the last one.
struct Handle(Arc<Shared>);

/// What a policy is set to.
#[derive(Clone)]
struct Config {
    attempts: u32,
    backoff: ExponentialBackoff,
    budget: Option<Budget>,
    max_retry_after: Duration,
}

/// What [`Retry::subscribe`] is given.
type Listener = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// A retry a call wanted, told to the subscribers of [`Retry::subscribe`] as it is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// The call's `retry`th retry (1 for the second attempt) is to be made after `wait` (told
    /// before the sleep: a call dropped meanwhile does not make it).
    Retrying {
        /// Which retry of the call: 1 for the first.
        retry: u32,
        /// The sleep before it: the backoff's, or the server's longer hint.
        wait: Duration,
    },
    /// The budget refused a retry the classifier asked for: the last result stands.
    BudgetExhausted,
}

/// What one [`Retry::call_with_stats`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// The call stopped because the budget refused a retry it wanted.
    pub budget_exhausted: bool,
}

impl RetryStats {
    /// The stats of a call whose first attempt was kept.
    fn first(done: Next) -> RetryStats {
        RetryStats {
            attempts: 1,
            budget_exhausted: done == Next::Refused,
        }
    }
}

/// What to do after an attempt, once attempts and budget have had their say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep the result: no retry is wanted, or none could start before the deadline in force.
    Done,
    /// Keep the result: a retry was wanted, but the budget refused it.
    Refused,
    /// Retry after this long.
    Wait(Duration),
}

// === impl Retry ===

impl Retry {
    /// A policy making at most `attempts` tries per call (the first one included, so at least 1),
    /// sleeping by `backoff` between them, retrying every `Err`, within a default [`Budget`].
    pub fn new(attempts: u32, backoff: ExponentialBackoff) -> Result<Retry, InvalidAttempts> {
        if attempts == 0 {
            return Err(InvalidAttempts::new());
        }
        let config = Config {
            attempts,
            backoff,
            budget: Some(Budget::default()),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        };
        Ok(Retry {
            shared: Handle::register(config, 0, 0, Vec::new()),
            classify: RetryOnError,
        })
    }
}

impl<C> Retry<C> {
    /// A tower layer that retries by this policy; its services share its counters and budget.
    pub fn layer(&self) -> RetryLayer<C>
    where
        C: Clone,
    {
        RetryLayer::new(self.clone())
    }

    /// Draws retries from `budget` (clones share one account) instead of a budget of its own.
    pub fn with_budget(mut self, budget: Budget) -> Retry<C> {
        self.reconfigure(|config| config.budget = Some(budget));
        self
    }

    /// Retries with no budget: only attempts bound the extra load. Meant for calls whose callee
    /// cannot be overloaded by them, such as a local resource.
    pub fn without_budget(mut self) -> Retry<C> {
        self.reconfigure(|config| config.budget = None);
        self
    }

    /// The longest a [`Decision::RetryAfter`] hint may make a retry wait (default 30 s), so a
    /// wrong or hostile hint cannot park the caller: a longer hint ends the retries, the last
    /// result coming back at once. Zero ignores hints.
    pub fn with_max_retry_after(mut self, max: Duration) -> Retry<C> {
        self.reconfigure(|config| config.max_retry_after = max);
        self
    }

    /// Tells `listener` of each retry this policy decides to make and each its budget refuses
    /// (resilience4j's `onRetry`, Polly's `OnRetry`), through every clone, layer and service of
    /// the policy, as [`CircuitBreaker::subscribe`](crate::breaker::CircuitBreaker::subscribe)
    /// does for transitions: to log or count them with what the service already uses. It runs
    /// on the calling task, before the sleep; keep it quick. A policy made anew from this one
    /// ([`with_budget`](Self::with_budget), ...) keeps its subscribers.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use rampart_policy::retry::{ExponentialBackoff, Retry, RetryEvent};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let backoff = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1))
    ///     .unwrap();
    /// let retry = Retry::new(3, backoff).unwrap();
    /// retry.subscribe(move |event| log.lock().unwrap().push(*event));
    /// let _ = retry.call(|| async { Err::<(), _>("reset") }).await;
    /// let seen = seen.lock().unwrap();
    /// assert_eq!(seen.len(), 2);
    /// assert!(matches!(seen[1], RetryEvent::Retrying { retry: 2, .. }));
    /// # }
    /// ```
    pub fn subscribe(&self, listener: impl Fn(&RetryEvent) + Send + Sync + 'static) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(listener));
    }

    // A policy of its own, set as `change` says, that starts from this one's counts.
    fn reconfigure(&mut self, change: impl FnOnce(&mut Config)) {
        let shared = &self.shared;
        let mut config = shared.config.clone();
        change(&mut config);
        let listeners = shared
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.shared = Handle::register(
            config,
            shared.retries.load(Relaxed),
            shared.budget_exhausted.load(Relaxed),
            listeners,
        );
    }

    /// Decides what to retry with `classify` instead of [`RetryOnError`].
    pub fn with_classify<C2>(self, classify: C2) -> Retry<C2> {
        Retry {
            shared: self.shared,
            classify,
        }
    }

    /// The most tries per call, the first one included.
    pub fn attempts(&self) -> u32 {
        self.shared.config.attempts
    }

    /// The sleeps between tries.
    pub fn backoff(&self) -> &ExponentialBackoff {
        &self.shared.config.backoff
    }

    /// The budget retries draw from, if any.
    pub fn budget(&self) -> Option<&Budget> {
        self.shared.config.budget.as_ref()
    }

    /// The longest wait a retry-after hint may impose.
    pub fn max_retry_after(&self) -> Duration {
        self.shared.config.max_retry_after
    }

    /// Retries decided so far, by this policy and its clones. A retry counts, and takes its
    /// place in the budget, once it is decided, before its backoff, as resilience4j and Polly
    /// count theirs: the budget must refuse a retry before the call sleeps for it, and a call
    /// dropped during the backoff does not make the retry it was counted for.
    pub fn retries_total(&self) -> u64 {
        self.shared.retries.load(Relaxed)
    }

    /// Retries wanted but refused by the budget, by this policy and its clones.
    pub fn budget_exhausted_total(&self) -> u64 {
        self.shared.budget_exhausted.load(Relaxed)
    }

    /// Calls `f` until its result is kept, then returns that result: the first attempt's when it
    /// needs no retry, else the last attempt's.
    ///
    /// `f` makes a fresh attempt each time it is called. The call stops when the classifier says
    /// [`Decision::Done`], when `attempts` tries are made, when the budget refuses a retry, or
    /// when the [`Deadline`] in force leaves no more time than the wait before the next attempt.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: RetryClassify<T, E>,
    {
        self.call_with_stats(f).await.0
    }

    /// Like [`Retry::call`], and also tells how many attempts were made and whether the budget
    /// cut the call short.
    pub async fn call_with_stats<F, Fut, T, E>(&self, mut f: F) -> (Result<T, E>, RetryStats)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: RetryClassify<T, E>,
    {
        self.deposit();
        let mut backoff = BackoffState::new();
        let first = f().await;
        // The common case, a first attempt whose result is kept, stays out of the retry loop's
        // larger state.
        match self.next(&first, 1, &mut backoff) {
            Next::Wait(wait) => {
                drop(first);
                self.retry_loop(f, wait, backoff).await
            }
            done => (first, RetryStats::first(done)),
        }
    }

    /// The attempts after the first, which failed and is to be retried after `wait`.
    async fn retry_loop<F, Fut, T, E>(
        &self,
        mut f: F,
        mut wait: Duration,
        mut backoff: BackoffState,
    ) -> (Result<T, E>, RetryStats)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: RetryClassify<T, E>,
    {
        let mut attempts = 1;
        loop {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            attempts += 1;
            let result = f().await;
            wait = match self.next(&result, attempts, &mut backoff) {
                Next::Wait(wait) => wait,
                done => {
                    let stats = RetryStats {
                        attempts,
                        budget_exhausted: done == Next::Refused,
                    };
                    return (result, stats);
                }
            };
            // A failed response may hold a connection or a buffer: let it go before sleeping.
            drop(result);
        }
    }

    /// Counts a call's first attempt in the budget.
    #[inline]
    pub(crate) fn deposit(&self) {
        if let Some(budget) = &self.shared.config.budget {
            budget.deposit();
        }
    }

    /// What follows attempt number `attempt` (from 1), which ended in `result`.
    #[inline]
    pub(crate) fn next<T, E>(
        &self,
        result: &Result<T, E>,
        attempt: u32,
        backoff: &mut BackoffState,
    ) -> Next
    where
        C: RetryClassify<T, E>,
    {
        match wanted(self.shared.config.attempts, &self.classify, result, attempt) {
            Some(hint) => self.shared.retry(hint, backoff),
            None => Next::Done,
        }
    }

    /// What the response future of a call that may be retried holds of the policy, the policy
    /// itself aside (see `Local::issue`).
    #[inline]
    pub(crate) fn ticket(&self) -> Ticket<C>
    where
        C: Clone,
    {
        Ticket {
            shared: None,
            key: self.shared.key,
            classify: self.classify.clone(),
        }
    }
}

/// Whether attempt number `attempt` (from 1), which ended in `result`, calls for another: `None`
/// to keep its result, else the wait the server asked for (zero if none).
#[inline]
fn wanted<C, T, E>(
    attempts: u32,
    classify: &C,
    result: &Result<T, E>,
    attempt: u32,
) -> Option<Duration>
where
    C: RetryClassify<T, E>,
{
    // The classifier first: a result it keeps, the common case, needs nothing else.
    let hint = asked(classify, result)?;
    (attempt < attempts).then_some(hint)
}

/// Whether the classifier asks for another attempt after `result`, attempts aside: `None` to
/// keep it, else the wait the server asked for (zero if none).
#[inline]
fn asked<C, T, E>(classify: &C, result: &Result<T, E>) -> Option<Duration>
where
    C: RetryClassify<T, E>,
{
    match classify.decide(result) {
        Decision::Done => None,
        Decision::Retry => Some(Duration::ZERO),
        Decision::RetryAfter(hint) => Some(hint),
    }
}

/// A policy as the response future of a call that may be retried holds it: the classifier, which
/// a call that succeeds needs, and the way to the rest (attempts, budget, backoff, counters) for
/// when its first attempt fails.
///
/// Issued only to a call whose policy allows a second attempt, so that judging the first one
/// needs only the classifier. Two words with a classifier of no size, so that what a retry needs
/// travels in registers.
pub(crate) struct Ticket<C> {
    /// The policy itself, for a call made through its last handle: the service may be dropped
    /// while the call is in flight (`oneshot` does so as soon as it has called it), and nothing
    /// else would keep the policy. `None` for a call made while other handles lived, which finds
    /// the policy by `key` and costs no reference count.
    shared: Option<Arc<Shared>>,
    key: Key,
    classify: C,
}

/// What a call needs from its first failure on.
pub(crate) struct Found<C> {
    shared: Arc<Shared>,
    classify: C,
    backoff: BackoffState,
}

impl<C> Ticket<C> {
    /// The ticket of a new call, holding `shared` if given.
    #[inline]
    fn issue(&self, shared: Option<Arc<Shared>>) -> Ticket<C>
    where
        C: Clone,
    {
        Ticket {
            shared,
            key: self.key,
            classify: self.classify.clone(),
        }
    }

    /// Whether the first attempt, which ended in `result`, calls for another: `None` to keep its
    /// result, else the least wait before it. (The policy allows a second attempt, or the call
    /// would have no ticket.)
    #[inline]
    pub(crate) fn wants<T, E>(&self, result: &Result<T, E>) -> Option<Duration>
    where
        C: RetryClassify<T, E>,
    {
        asked(&self.classify, result)
    }

    /// The policy, for a call's first retry: the one the ticket holds, else the one its key
    /// finds; `None` once it is no longer alive, and then the call retries nothing.
    pub(crate) fn find(self) -> Option<Found<C>> {
        let shared = match self.shared {
            Some(shared) => shared,
            None => POLICIES.get(self.key)?,
        };
        Some(Found {
            shared,
            classify: self.classify,
            backoff: BackoffState::new(),
        })
    }
}

impl<C> Found<C> {
    /// The most tries per call, the first one included.
    pub(crate) fn attempts(&self) -> u32 {
        self.shared.config.attempts
    }

    /// Whether attempt number `attempt` (from 1), which ended in `result`, calls for another:
    /// `None` to keep its result, else the least wait before it.
    pub(crate) fn wants<T, E>(&self, result: &Result<T, E>, attempt: u32) -> Option<Duration>
    where
        C: RetryClassify<T, E>,
    {
        wanted(self.attempts(), &self.classify, result, attempt)
    }

    /// A retry wanted after waiting at least `hint`: allowed by the budget, or refused, or not
    /// worth making when the deadline in force leaves it no time.
    pub(crate) fn retry(&mut self, hint: Duration) -> Next {
        self.shared.retry(hint, &mut self.backoff)
    }
}

// === impl Handle ===

impl Handle {
    /// The first handle of a new policy set to `config`, its counters starting at `retries` and
    /// `budget_exhausted`.
    fn register(
        config: Config,
        retries: u64,
        budget_exhausted: u64,
        listeners: Vec<Listener>,
    ) -> Handle {
        Handle(Arc::new_cyclic(|weak| Shared {
            config,
            retries: AtomicU64::new(retries),
            budget_exhausted: AtomicU64::new(budget_exhausted),
            handles: AtomicUsize::new(1),
            key: POLICIES.insert(weak.clone()),
            listeners: RwLock::new(listeners),
        }))
    }

    /// The policy, counted once more, if this is its last handle; else `None`.
    ///
    /// A plain load, no write: only a handle makes another, by being cloned, so a handle seen to
    /// be the last stays the last until it is cloned itself.
    #[inline]
    fn if_last(&self) -> Option<Arc<Shared>> {
        if self.0.handles.load(Relaxed) == 1 {
            Some(self.count())
        } else {
            None
        }
    }

    /// The policy, counted once more.
    ///
    /// Out of line, so that a call through a service beside other handles, which does not take
    /// this path, runs straight through.
    #[cold]
    #[inline(never)]
    fn count(&self) -> Arc<Shared> {
        Arc::clone(&self.0)
    }
}

impl Deref for Handle {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Clone for Handle {
    /// Another handle: counted before it exists, so that no service takes itself for the last
    /// while it lives.
    fn clone(&self) -> Self {
        self.0.handles.fetch_add(1, Relaxed);
        Handle(Arc::clone(&self.0))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.handles.fetch_sub(1, Relaxed);
    }
}

/// The least time a retry's attempt must have before the deadline in force, once its wait is
/// over, to be worth making: a timer's tick. Tokio's timers fire on whole milliseconds, the
/// wait's and the deadline's on the same one, and an attempt left less would be counted and
/// never sent.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(1);

// === impl Shared ===

impl Shared {
    /// A retry wanted after waiting at least `hint`: allowed by the budget, or refused, or not
    /// worth making when the deadline in force leaves it no time.
    #[cold]
    fn retry(&self, hint: Duration, backoff: &mut BackoffState) -> Next {
        let config = &self.config;
        // A server asking for longer than the caller will wait is not helped by a retry sooner
        // than it asked, which it would most likely refuse again: the last result comes back.
        // A zero cap ignores hints.
        let hint = match config.max_retry_after {
            cap if cap.is_zero() => Duration::ZERO,
            cap if hint > cap => return Next::Done,
            _ => hint,
        };
        let wait = backoff.next(&config.backoff).max(hint);
        // An attempt that could start only once the caller's deadline has passed would be
        // refused by it: hand back the failure in hand now rather than after sleeping, and leave
        // the budget to retries that can still help. So would one left less than
        // `MIN_ATTEMPT`.
        if Deadline::current().is_some_and(|deadline| deadline.remaining() <= wait + MIN_ATTEMPT) {
            return Next::Done;
        }
        if let Some(budget) = &config.budget
            && !budget.withdraw()
        {
            self.budget_exhausted.fetch_add(1, Relaxed);
            self.tell(&RetryEvent::BudgetExhausted);
            return Next::Refused;
        }
        self.retries.fetch_add(1, Relaxed);
        self.tell(&RetryEvent::Retrying {
            retry: backoff.retries(),
            wait,
        });
        Next::Wait(wait)
    }

    fn tell(&self, event: &RetryEvent) {
        // Called outside the lock, so that a listener may subscribe another.
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in &listeners {
            listener(event);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        POLICIES.remove(self.key);
    }
}

impl<C: Clone> Clone for Retry<C> {
    fn clone(&self) -> Self {
        Retry {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C> fmt::Debug for Retry<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.shared.config;
        f.debug_struct("Retry")
            .field("attempts", &config.attempts)
            .field("backoff", &config.backoff)
            .field("budget", &config.budget)
            .field("max_retry_after", &config.max_retry_after)
            .finish_non_exhaustive()
    }
}

// === impl RetryService ===

/// Retries the calls of a tower service; see [`RetryLayer`].
///
/// The service must be `Clone`: each response future that may retry holds its own copy, and
/// polls it ready before every retry. Its errors are the service's own, unchanged: a retry
/// adds no error of its own (it hands back the last attempt's result), so it boxes nothing.
///
/// A call that may be retried holds its policy until it ends only when the service is the
/// policy's last handle (no other [`Retry`], layer or service of the policy lives), at the price
/// of a reference count per call: such a service may be dropped while its calls are in flight,
/// as `oneshot` drops it. A call made while other handles live costs no atomic operation on the
/// policy; it finds the policy when an attempt fails, and is retried as long as one handle lives.
///
/// Each `RetryService` counts its calls itself and deposits them in the policy's [`Budget`]
/// sixteen at a time, and what it still holds when it is dropped: a budget behind a service
/// sees up to fifteen of its latest requests late, which can only refuse a retry it would have
/// allowed, never allow more. A batch goes in once it is a tenth of the budget's window old
/// too, at the next call, so that a service with modest traffic deposits all of it; one that
/// a service went quiet holding, two tenths old or more by then, is dropped: counted late, old
/// requests would allow retries after they had aged out. The budget's floor (`min_per_sec`)
/// allows the retries of quiet traffic.
pub struct RetryService<S, C = RetryOnError, R = Cloned> {
    inner: S,
    policy: Local<C>,
    cloner: R,
}

/// First attempts a service counts before passing them to the budget all at once.
///
/// Counting each call in the budget's shared window costs a chain of loads to reach this
/// thread's counter; counting in the service costs one add to memory it owns. The price is that
/// a service holds back up to `DEPOSIT_BATCH - 1` requests from the budget (all of them go when
/// it is dropped, unless the batch has grown stale: see [`Budget::deposit_held`]),
/// which only ever makes the budget stricter, by at most `ratio * (DEPOSIT_BATCH - 1)` retries
/// per service; the budget's floor covers quiet traffic.
pub(crate) const DEPOSIT_BATCH: u32 = 16;

/// A service's own handle on its policy.
struct Local<C> {
    retry: Retry<C>,
    /// What each call's future holds of the policy, kept here so that a call reads the policy's
    /// count of handles and nothing else beyond the service's own memory. It never holds the
    /// policy: [`Local::issue`] adds it to the tickets that must.
    ticket: Ticket<C>,
    /// The policy's budget, kept here so that a deposit reaches it in one step.
    budget: Option<Budget>,
    /// The most tries per call, the first one included.
    attempts: u32,
    /// First attempts not yet deposited in the budget.
    held: u32,
    /// When the first of them was made, by the budget's time.
    held_since: u64,
}

impl<C> Local<C> {
    /// The ticket of a new call that may be retried: holding the policy if this service is its
    /// last handle, which the call may outlive; else finding it by key, with no atomic write.
    #[inline]
    fn issue(&self) -> Ticket<C>
    where
        C: Clone,
    {
        self.ticket.issue(self.retry.shared.if_last())
    }

    #[inline]
    fn deposit(&mut self) {
        let Some(budget) = &self.budget else {
            return;
        };
        // A cached clock's read: one load.
        let now = budget.now();
        if budget.is_due(self.held_since, now) {
            // A bucket or more since the batch began: what it holds goes in before it grows
            // older (dropped if it already has: see `Budget::deposit_held`), so that a service
            // with modest traffic deposits all of it. This call goes in at once: traffic this
            // sparse would find a batch of one stale at the next call, and drop every deposit.
            if self.held > 0 {
                budget.deposit_held(self.held, self.held_since, now);
                self.held = 0;
            }
            budget.deposit_many(1);
            self.held_since = now;
            return;
        }
        if self.held == 0 {
            self.held_since = now;
        }
        self.held += 1;
        if self.held == DEPOSIT_BATCH {
            self.flush(now);
        }
    }

    // Out of line, so that a call's path stays small enough to inline into its caller.
    #[cold]
    #[inline(never)]
    fn flush(&mut self, now: u64) {
        if let Some(budget) = &self.budget {
            budget.deposit_held(self.held, self.held_since, now);
        }
        self.held = 0;
    }
}

impl<C: Clone> Clone for Local<C> {
    fn clone(&self) -> Self {
        Local {
            retry: self.retry.clone(),
            ticket: self.ticket.issue(None),
            budget: self.budget.clone(),
            attempts: self.attempts,
            held: 0,
            held_since: 0,
        }
    }
}

impl<C> Drop for Local<C> {
    fn drop(&mut self) {
        if self.held > 0
            && let Some(budget) = &self.budget
        {
            let now = budget.now();
            self.flush(now);
        }
    }
}

impl<S, C> RetryService<S, C> {
    /// Retries `inner`'s calls by `retry`, copying requests with `Clone`.
    pub fn new(inner: S, retry: Retry<C>) -> RetryService<S, C>
    where
        C: Clone,
    {
        RetryService::from_parts(inner, retry, Cloned)
    }
}

impl<S, C, R> RetryService<S, C, R> {
    /// Copies requests for retries with `clone` instead.
    pub fn with_clone_request<R2>(self, clone: R2) -> RetryService<S, C, R2> {
        RetryService {
            inner: self.inner,
            policy: self.policy,
            cloner: clone,
        }
    }

    pub(crate) fn from_parts(inner: S, retry: Retry<C>, clone: R) -> RetryService<S, C, R>
    where
        C: Clone,
    {
        RetryService {
            inner,
            policy: Local {
                ticket: retry.ticket(),
                budget: retry.budget().cloned(),
                attempts: retry.attempts(),
                retry,
                held: 0,
                held_since: 0,
            },
            cloner: clone,
        }
    }

    /// The retry policy.
    pub fn retry(&self) -> &Retry<C> {
        &self.policy.retry
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, Req> Service<Req> for RetryService<S, C, R>
where
    S: Service<Req> + Clone,
    C: RetryClassify<S::Response, S::Error> + Clone,
    R: CloneRequest<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.policy.deposit();
        // The attempt consumes the request: copy it first, but only if a retry could follow.
        let copy = if self.policy.attempts > 1 {
            self.cloner.clone_request(&req)
        } else {
            None
        };
        match copy {
            None => ResponseFuture::once(self.inner.call(req)),
            Some(copy) => {
                // The ready service makes this attempt; the future's clone is polled ready
                // before each retry.
                let service = self.inner.clone();
                let future = self.inner.call(req);
                ResponseFuture::retrying(
                    future,
                    copy,
                    service,
                    self.policy.issue(),
                    self.cloner.clone(),
                )
            }
        }
    }
}

impl<S: Clone, C: Clone, R: Clone> Clone for RetryService<S, C, R> {
    fn clone(&self) -> Self {
        RetryService {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            cloner: self.cloner.clone(),
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for RetryService<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("retry", &self.policy.retry)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
