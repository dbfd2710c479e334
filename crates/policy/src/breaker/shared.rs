//! The breaker's state: a gate read on every call, and a state machine behind a lock that only
//! failures, probes and timers reach.
//!
//! The data path reads one atomic (`gate`) to admit a call and again to record it, bumps one
//! counter in this thread's stripe of the window, and reads (but does not write) the run of
//! consecutive failures. Nothing on it writes a cache line another thread reads, which is what
//! keeps a closed breaker cheap under contention.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Builder, Settings};
use super::error::BreakerOpen;
use super::{Listener, Reason, Snapshot, State, Transition};
use crate::classify::Outcome;
use crate::clock::{SharedClock, TimeSource, saturating_nanos};
use crate::rng::Rng;
use crate::window::Window;

const CALLS: usize = 0;
const FAILURES: usize = 1;
const SLOW: usize = 2;

/// Keeps a value alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

pub(super) struct Shared {
    /// The data-path gate: a `State` in the low byte, and above it the generation of the closed
    /// state, bumped at every entry into `Closed`. One word, so that a call admitted while
    /// closed learns which closed state it belongs to from the one load that admits it.
    gate: Padded<AtomicU64>,
    /// Failures in a row; written on failures, and on the first success after one.
    consecutive: Padded<AtomicU32>,
    /// The current period (low 32 bits of a counter bumped at every transition that makes earlier
    /// probes stale) in the high half, the probes admitted in it in the low half: one word, so
    /// that a probe is admitted into exactly the period it is counted in.
    probes: AtomicU64,
    /// When the current open period ends, in nanoseconds since `origin`.
    open_until: AtomicU64,
    /// The share the current open period's jitter cut from it (`f64` bits), drawn at its trip:
    /// a period shortened is cut by as much, so that breakers shortened together (by a caller's
    /// [`shorten_open_period`](Shared::shorten_open_period)) still probe apart.
    open_cut: AtomicU64,
    /// When the breaker last turned half-open, in nanoseconds since `origin`.
    half_open_at: AtomicU64,
    /// When the current ejection began (the breaker last left `Closed` for `Open`), in
    /// nanoseconds since `origin` plus one; 0 while closed or forced.
    ejected_at: AtomicU64,
    rejected: AtomicU64,
    /// Whether the window held failures or slow calls when it was last judged, but too few
    /// calls to trip on their rate: the success that brings it to `min_calls` judges it again.
    /// Rarely written, so that a success reads it from a shared line. A success that begins a
    /// bucket judges the window too: older calls may have left it, and with them the calls that
    /// kept it over `min_calls` or its rates under their thresholds.
    deferred: AtomicBool,
    window: Window<3>,
    settings: Settings,
    clock: Option<SharedClock>,
    origin: Instant,
    rng: Rng,
    machine: Mutex<Machine>,
    listeners: RwLock<Vec<Listener>>,
    /// Transitions not yet told to the listeners, in the order they happened.
    notices: Mutex<Notices>,
}

/// Transitions waiting to be told, and whether a thread is telling them. Each is queued under
/// the machine lock, so the queue holds them in the order they happened; they are told outside
/// it, one thread at a time, so a listener may read or even force the breaker, and a
/// transition made meanwhile is told after the one being told.
#[derive(Default)]
struct Notices {
    queue: VecDeque<Transition>,
    telling: bool,
}

/// Gives up the telling if a listener panics.
struct Telling<'a>(&'a Mutex<Notices>);

impl Drop for Telling<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .telling = false;
    }
}

/// What only transitions touch.
#[derive(Debug, Default)]
pub(super) struct Machine {
    /// Trips in a row, each doubling the open period: since the breaker was released, or since
    /// the last trip that followed a calm of `open_for_max` (see [`Shared::trip`]).
    trips: u32,
    /// When probes last closed the breaker, in nanoseconds since `origin`.
    closed_at: Option<u64>,
    probe_successes: u32,
    opened_total: u64,
}

/// What a permit remembers of its admission: two words, so that moving it around a future costs
/// two plain copies.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    /// The half-open period a probe belongs to; or, for a call admitted while closed, `CLOSED`
    /// and the generation of that closed state (its outcome feeds the window while it lasts).
    period: u64,
    /// When the call started, in nanoseconds since `origin` plus one; 0 when calls are not timed
    /// or answered in good time, and [`ANSWERED_SLOW`] once answered late.
    start: u64,
}

/// The start of a ticket whose call answered past the slow-call threshold
/// ([`Shared::answered`]): no call starts at it, 584 years after the breaker's origin.
const ANSWERED_SLOW: u64 = u64::MAX;

/// The mark of a ticket admitted while closed; probe periods stay below it.
const CLOSED: u64 = 1 << 63;

impl Ticket {
    /// Whether the ticket is a half-open probe's.
    pub(super) fn is_probe(&self) -> bool {
        self.period & CLOSED == 0
    }
}

/// Where the closed state's generation starts in `gate`, above the state's byte.
const GENERATION: u32 = 8;

/// The state's byte of `gate`.
const STATE: u64 = (1 << GENERATION) - 1;

/// The low half of `probes`: the count of probes admitted.
const COUNT: u64 = 0xffff_ffff;

impl Shared {
    pub(super) fn new(builder: Builder) -> Shared {
        let Builder {
            settings,
            clock,
            rng,
            listeners,
        } = builder;
        let origin = clock.as_ref().map_or_else(Instant::now, |c| c.now());
        Shared {
            gate: Padded(AtomicU64::new(State::Closed as u64)),
            consecutive: Padded(AtomicU32::new(0)),
            probes: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            open_cut: AtomicU64::new(0),
            half_open_at: AtomicU64::new(0),
            ejected_at: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            deferred: AtomicBool::new(false),
            window: Window::new(
                settings.window,
                settings.window_buckets,
                TimeSource::new(clock.clone()),
            ),
            settings,
            clock,
            origin,
            rng,
            machine: Mutex::new(Machine::default()),
            listeners: RwLock::new(listeners),
            notices: Mutex::default(),
        }
    }

    #[inline]
    fn now(&self) -> Instant {
        match &self.clock {
            None => Instant::now(),
            Some(clock) => clock.now(),
        }
    }

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        saturating_nanos(at.saturating_duration_since(self.origin))
    }

    #[inline]
    pub(super) fn state(&self) -> State {
        State::from_u8(self.gate.load(Acquire) as u8)
    }

    /// The generation of the closed state: calls admitted in an earlier one no longer count.
    #[inline]
    fn generation(&self) -> u64 {
        // Relaxed: a stale answer can only let through a count that races with the close.
        self.gate.load(Relaxed) >> GENERATION
    }

    /// A ticket for period `period`, timed only when slow calls are looked for, since a clock
    /// read costs more than the rest of the closed path.
    #[inline]
    fn ticket(&self, period: u64) -> Ticket {
        let start = match self.settings.slow_call {
            None => 0,
            Some(_) => self.nanos_since_origin(self.now()).saturating_add(1),
        };
        Ticket { period, start }
    }

    // === the data path ===

    #[inline]
    pub(super) fn try_acquire(&self) -> Result<Ticket, BreakerOpen> {
        let gate = self.gate.load(Acquire);
        match State::from_u8(gate as u8) {
            State::Closed | State::ForcedClosed => Ok(self.ticket(CLOSED | gate >> GENERATION)),
            _ => self.try_acquire_slow(),
        }
    }

    #[inline]
    pub(super) fn would_admit(&self) -> bool {
        match self.state() {
            State::Closed | State::ForcedClosed => true,
            State::ForcedOpen => false,
            // An open period that has ended turns half-open at the next ask.
            State::Open => self.nanos_since_origin(self.now()) >= self.open_until.load(Acquire),
            State::HalfOpen => {
                let word = self.probes.load(Acquire);
                if word & COUNT < u64::from(self.settings.half_open_probes) {
                    return true;
                }
                // Overdue probes reopen it here too: a balancer that only looks never asks.
                if self.probes_overdue() {
                    self.trip(State::HalfOpen, Some(word >> 32), Reason::ProbesTimedOut);
                }
                false
            }
        }
    }

    #[cold]
    fn try_acquire_slow(&self) -> Result<Ticket, BreakerOpen> {
        loop {
            let gate = self.gate.load(Acquire);
            match State::from_u8(gate as u8) {
                State::Closed | State::ForcedClosed => {
                    return Ok(self.ticket(CLOSED | gate >> GENERATION));
                }
                State::ForcedOpen => return Err(self.reject(None)),
                State::Open => {
                    let now = self.now();
                    let until = self.open_until.load(Acquire);
                    let now_nanos = self.nanos_since_origin(now);
                    if now_nanos < until {
                        return Err(self.reject(Some(Duration::from_nanos(until - now_nanos))));
                    }
                    self.half_open(now);
                    // Loop: now half-open (or closed/forced by someone else meanwhile).
                }
                State::HalfOpen => {
                    let probes = u64::from(self.settings.half_open_probes);
                    let taken = self.probes.fetch_update(AcqRel, Acquire, |word| {
                        (word & COUNT < probes).then_some(word + 1)
                    });
                    // The gate may have moved since it was read: a probe is admitted only if it
                    // still reads half-open in the period the probe was counted in, and a
                    // refusal stands only if it still reads half-open.
                    let gate = self.gate.load(Acquire);
                    let still = State::from_u8(gate as u8) == State::HalfOpen;
                    match taken {
                        Ok(word) if still && self.period() == word >> 32 => {
                            return Ok(self.ticket(word >> 32));
                        }
                        Ok(word) => {
                            // Given back, if its period is still the count's.
                            let _ = self.probes.fetch_update(AcqRel, Acquire, |now| {
                                (now >> 32 == word >> 32 && now & COUNT > 0).then(|| now - 1)
                            });
                        }
                        Err(word) if still => {
                            if !self.probes_overdue() {
                                return Err(self.reject(None));
                            }
                            self.trip(State::HalfOpen, Some(word >> 32), Reason::ProbesTimedOut);
                            // Loop: now open (or moved by someone else meanwhile).
                        }
                        Err(_) => {}
                    }
                    // Loop: read the gate again.
                }
            }
        }
    }

    /// Whether the probes out have had `half_open_max_wait` to answer, and not all did.
    #[cold]
    fn probes_overdue(&self) -> bool {
        self.settings.half_open_max_wait.is_some_and(|wait| {
            let since = self.half_open_at.load(Acquire);
            self.nanos_since_origin(self.now()).saturating_sub(since) >= saturating_nanos(wait)
        })
    }

    fn reject(&self, retry_in: Option<Duration>) -> BreakerOpen {
        self.rejected.fetch_add(1, Relaxed);
        BreakerOpen::new(retry_in)
    }

    /// Feeds the outcome of an admitted call back.
    #[inline]
    pub(super) fn record(&self, ticket: Ticket, outcome: Outcome) {
        let outcome = self.timed(outcome, ticket.start);
        if ticket.is_probe() {
            return self.probe_done(ticket.period, outcome);
        }
        // A call admitted before the breaker last closed (one that hung through a trip, say)
        // tells of the callee as it was then: the closed state it belonged to is over.
        if ticket.period != CLOSED | self.generation() {
            return;
        }
        let slid = self.window.record(CALLS);
        if outcome == Outcome::Success {
            // A read, not a write, in the common case: the line stays shared.
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            // A success lowers every rate, but the one that brings the window to `min_calls`
            // may find it over a threshold the calls before it could not yet be judged by, and
            // the window may have slid since the last judgement, its older successes gone (once
            // a bucket per thread: a sum of the window's buckets).
            if slid || self.deferred.load(Relaxed) {
                self.check_trips(0);
            }
        } else {
            self.record_bad(outcome);
        }
    }

    #[inline]
    fn timed(&self, outcome: Outcome, start: u64) -> Outcome {
        match start {
            0 => return outcome,
            ANSWERED_SLOW => {
                return outcome.with_latency(Duration::MAX, self.settings.slow_call);
            }
            _ => {}
        }
        let elapsed = self
            .nanos_since_origin(self.now())
            .saturating_sub(start - 1);
        outcome.with_latency(Duration::from_nanos(elapsed), self.settings.slow_call)
    }

    /// Stops a timed ticket's clock: the callee has answered, and the time it took is decided
    /// now, whatever comes after it (a body that streams for minutes) and whenever its outcome
    /// is recorded.
    pub(super) fn answered(&self, ticket: &mut Ticket) {
        if ticket.start != 0 && ticket.start != ANSWERED_SLOW {
            let slow = self.timed(Outcome::Success, ticket.start) == Outcome::Slow;
            ticket.start = if slow { ANSWERED_SLOW } else { 0 };
        }
    }

    /// A permit dropped without an outcome: the call was cancelled, or its result says nothing
    /// about the callee. A probe gives its place back so another call can probe.
    pub(super) fn release(&self, ticket: Ticket) {
        if ticket.is_probe() {
            let _machine = self.lock();
            // Under the lock no new period can start: the count still holds this probe.
            if self.period() == ticket.period && self.state() == State::HalfOpen {
                self.probes.fetch_sub(1, AcqRel);
            }
        }
    }

    // === the slow path: failures, slow calls, probes and transitions ===

    /// A call its caller gave up on (its deadline passed) before the callee answered. It says
    /// nothing of the callee, unless slow calls trip the breaker and it had already run past the
    /// slow-call threshold: then it was a slow call at the least, though no success, so a run of
    /// failures goes on through it, and a probe so cut fails. A callee that hangs while every
    /// caller's deadline runs out first is thus still seen.
    pub(super) fn cut_short(&self, ticket: Ticket) {
        let slow = self.settings.slow_trips()
            && self.timed(Outcome::Success, ticket.start) == Outcome::Slow;
        if !slow {
            return self.release(ticket);
        }
        if ticket.is_probe() {
            return self.probe_done(ticket.period, Outcome::Slow);
        }
        if ticket.period != CLOSED | self.generation() {
            return;
        }
        self.window.record(CALLS);
        self.window.record(SLOW);
        // The run of failures stands as it was: only a rate can trip now.
        self.check_trips(0);
    }

    #[cold]
    fn record_bad(&self, outcome: Outcome) {
        let consecutive = if outcome == Outcome::Failure {
            self.window.record(FAILURES);
            self.consecutive.fetch_add(1, AcqRel).saturating_add(1)
        } else {
            self.window.record(SLOW);
            // A slow success is still a success for the run of failures.
            self.consecutive.store(0, Relaxed);
            0
        };
        self.check_trips(consecutive);
    }

    /// Trips a closed breaker whose run of failures (`consecutive`) or window calls for it.
    fn check_trips(&self, consecutive: u32) {
        let s = &self.settings;
        if self.state() != State::Closed {
            return;
        }
        let reason = if s.consecutive_failures > 0 && consecutive >= s.consecutive_failures {
            Some(Reason::ConsecutiveFailures(consecutive))
        } else {
            let [calls, failures, slow] = self.window.sum();
            let too_few = calls < s.min_calls.max(1);
            let deferred = too_few && failures + slow > 0;
            if self.deferred.load(Relaxed) != deferred {
                self.deferred.store(deferred, Relaxed);
            }
            if too_few {
                None
            } else if failures as f64 >= s.failure_rate * calls as f64 {
                Some(Reason::FailureRate {
                    rate: failures as f64 / calls as f64,
                    calls,
                })
            } else if s.slow_trips() && slow as f64 >= s.slow_call_rate * calls as f64 {
                Some(Reason::SlowCallRate {
                    rate: slow as f64 / calls as f64,
                    calls,
                })
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            self.trip(State::Closed, None, reason);
        }
    }

    fn probe_done(&self, period: u64, outcome: Outcome) {
        let good = match outcome {
            Outcome::Success => true,
            Outcome::Slow => !self.settings.slow_trips(),
            Outcome::Failure => false,
        };
        if !good {
            self.trip(State::HalfOpen, Some(period), Reason::ProbeFailed);
            return;
        }
        {
            let mut machine = self.lock();
            // A probe of an earlier period says nothing about this one.
            if self.period() != period || self.state() != State::HalfOpen {
                return;
            }
            machine.probe_successes += 1;
            if machine.probe_successes < self.settings.half_open_probes {
                return;
            }
            // The trips are kept: one soon after this close continues the backoff.
            machine.closed_at = Some(self.nanos_since_origin(self.now()));
            self.reset_closed();
            self.set(State::HalfOpen, State::Closed, Reason::ProbesSucceeded)
        };
        self.tell();
    }

    /// Opens the breaker if it is still in `from` (and, for a probe's failure, still in the
    /// probe's period).
    ///
    /// A trip soon after probes closed the breaker continues its backoff, as Envoy's ejection
    /// multiplier does: an endpoint that fails again as soon as it is back (it flaps) is kept
    /// out longer each time, up to `open_for_max`, rather than for `open_for` again and again.
    /// Only a calm as long as `open_for_max` since the close starts the backoff over.
    fn trip(&self, from: State, period: Option<u64>, reason: Reason) {
        {
            let mut machine = self.lock();
            if self.state() != from || period.is_some_and(|p| p != self.period()) {
                return;
            }
            let now = self.nanos_since_origin(self.now());
            if from == State::Closed {
                let calm = saturating_nanos(self.settings.open_for_max);
                if machine
                    .closed_at
                    .is_some_and(|at| now.saturating_sub(at) >= calm)
                {
                    machine.trips = 0;
                }
            }
            machine.trips = machine.trips.saturating_add(1);
            machine.opened_total += 1;
            let cut = self.settings.open_jitter * self.rng.next_f64();
            self.open_cut.store(cut.to_bits(), Release);
            let period = self.open_period(machine.trips, cut);
            let until = now.saturating_add(saturating_nanos(period));
            self.open_until.store(until, Release);
            // The gate first: a probe admitted in the old period meanwhile then finds it moved
            // (see `try_acquire_slow`), and none is admitted in the new one while it reads
            // half-open.
            self.set(from, State::Open, reason);
            self.next_period();
        };
        self.tell();
    }

    /// `open_for` doubled for each trip after the first, capped, then shortened by the jitter's
    /// `cut`, a share of it.
    fn open_period(&self, trips: u32, cut: f64) -> Duration {
        let s = &self.settings;
        let doublings = trips.saturating_sub(1).min(32);
        let base = s
            .open_for
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(s.open_for_max)
            .min(s.open_for_max);
        // In whole nanoseconds: `Duration::mul_f64` panics on periods too long for an f64.
        let nanos = saturating_nanos(base);
        Duration::from_nanos(nanos.saturating_sub((nanos as f64 * cut) as u64))
    }

    /// The current period, as probes carry it.
    fn period(&self) -> u64 {
        self.probes.load(Acquire) >> 32
    }

    /// Starts a new period with no probe admitted; the caller holds the machine lock.
    fn next_period(&self) {
        let next = (self.period() + 1) & COUNT;
        self.probes.store(next << 32, Release);
    }

    fn half_open(&self, now: Instant) {
        {
            let mut machine = self.lock();
            if self.state() != State::Open
                || self.nanos_since_origin(now) < self.open_until.load(Acquire)
            {
                return;
            }
            machine.probe_successes = 0;
            self.half_open_at
                .store(self.nanos_since_origin(now), Release);
            self.next_period();
            self.set(State::Open, State::HalfOpen, Reason::OpenElapsed)
        };
        self.tell();
    }

    /// Ends an open period no later than `at_most` from now, less the period's own jitter (the
    /// same share of `at_most` as it cut from the period): then the next call is a half-open
    /// probe, as when the period runs out. Nothing for any other state, nor for a period that
    /// ends sooner.
    pub(super) fn shorten_open_period(&self, at_most: Duration) {
        if self.state() != State::Open {
            return;
        }
        let now = self.nanos_since_origin(self.now());
        let latest = || {
            let at_most = saturating_nanos(at_most);
            let cut = f64::from_bits(self.open_cut.load(Acquire));
            now.saturating_add(at_most.saturating_sub((at_most as f64 * cut) as u64))
        };
        // Without the lock in the common case of a caller asking again and again.
        if self.open_until.load(Acquire) <= latest() {
            return;
        }
        let _machine = self.lock();
        if self.state() == State::Open {
            // Under the lock, as `trip` writes it: a trip meanwhile would otherwise lose its
            // period to this one.
            self.open_until.fetch_min(latest(), AcqRel);
        }
    }

    pub(super) fn force(&self, to: State) {
        {
            let mut machine = self.lock();
            let from = self.state();
            if from == to {
                return;
            }
            let reason = match to {
                State::ForcedOpen => Reason::ForcedOpen,
                State::ForcedClosed => Reason::ForcedClosed,
                _ => {
                    // Back to automatic, from a forced state or an ejection, into a fresh closed
                    // state; a closed breaker is left as it is.
                    if from == State::Closed {
                        return;
                    }
                    machine.trips = 0;
                    machine.closed_at = None;
                    self.reset_closed();
                    Reason::Released
                }
            };
            // The gate first, as in `trip`.
            self.set(from, to, reason);
            self.next_period();
        };
        self.tell();
    }

    /// Makes a fresh closed state, to be entered next; the caller holds the machine lock.
    fn reset_closed(&self) {
        // A new generation first, so that a call admitted before it counts neither in the
        // window nor in the run once they are cleared.
        self.gate.fetch_add(1 << GENERATION, AcqRel);
        self.window.clear();
        self.consecutive.store(0, Release);
    }

    /// Moves the gate, keeping its generation, and queues the transition for the listeners; the
    /// caller holds the machine lock, and calls [`Shared::tell`] once it has let it go.
    fn set(&self, from: State, to: State, reason: Reason) {
        let generation = self.gate.load(Acquire) & !STATE;
        self.gate.store(generation | to as u64, Release);
        let at = self.now();
        // An ejection begins when the breaker leaves `Closed` for `Open`, lasts through half-open
        // and open again, and ends with any other state: closed, or forced (an operator's
        // decision, no ejection of the breaker's own).
        match (from, to) {
            (State::Closed, State::Open) => self
                .ejected_at
                .store(self.nanos_since_origin(at).saturating_add(1), Release),
            (_, State::Open | State::HalfOpen) => {}
            _ => self.ejected_at.store(0, Release),
        }
        let transition = Transition {
            from,
            to,
            reason,
            at,
        };
        self.notices().queue.push_back(transition);
    }

    /// Tells the listeners every queued transition, in order, unless another thread is telling
    /// them already (it tells the ones queued meanwhile too).
    fn tell(&self) {
        {
            let mut notices = self.notices();
            if notices.telling {
                return;
            }
            notices.telling = true;
        }
        // A listener that panics leaves the telling to the next transition's thread.
        let telling = Telling(&self.notices);
        loop {
            let next = {
                let mut notices = self.notices();
                let next = notices.queue.pop_front();
                // Decided under the lock that a queuing thread takes: none is left untold.
                notices.telling = next.is_some();
                next
            };
            let Some(transition) = next else { break };
            // A copy of the list (transitions are rare): a listener may subscribe another, and
            // a slow one keeps no other thread from subscribing.
            let listeners = self
                .listeners
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for listener in &listeners {
                listener(&transition);
            }
        }
        std::mem::forget(telling);
    }

    pub(super) fn subscribe(&self, listener: Listener) {
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    fn notices(&self) -> MutexGuard<'_, Notices> {
        // A queue only: a panic elsewhere cannot leave it inconsistent.
        self.notices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Machine> {
        // The machine holds counters only: a panic elsewhere cannot leave it inconsistent.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long ago the current ejection began: the breaker left `Closed` for `Open` then, and
    /// has been open or half-open since. `None` while closed or forced.
    pub(super) fn ejected_for(&self) -> Option<Duration> {
        let at = self.ejected_at.load(Acquire);
        (at != 0).then(|| {
            let now = self.nanos_since_origin(self.now());
            Duration::from_nanos(now.saturating_sub(at - 1))
        })
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let [calls, failures, slow] = self.window.sum();
        let ratio = |n: u64| {
            if calls == 0 {
                0.0
            } else {
                n as f64 / calls as f64
            }
        };
        let opened = self.lock().opened_total;
        let state = self.state();
        let open_remaining = (state == State::Open).then(|| {
            let now = self.nanos_since_origin(self.now());
            Duration::from_nanos(self.open_until.load(Acquire).saturating_sub(now))
        });
        Snapshot {
            state,
            calls,
            failures,
            slow_calls: slow,
            failure_rate: ratio(failures),
            slow_call_rate: ratio(slow),
            consecutive_failures: self.consecutive.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            opened,
            open_remaining,
        }
    }
}
