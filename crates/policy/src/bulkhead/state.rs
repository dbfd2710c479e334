//! The bulkhead's shared state: a lock-free count of calls in flight, and a locked queue of
//! waiters used only when the bulkhead is full.
//!
//! One word holds the number of places taken and, in its top bit, whether anyone is queued. The
//! bit makes the word larger than any limit, so that while it is set the fast path fails and a
//! newcomer cannot overtake a waiter; a release that sees it hands its place to the oldest waiter
//! under the lock instead of leaving it for whoever comes next. Without the bit, acquiring is one
//! compare-and-swap and releasing one subtraction.
//!
//! Invariants, kept under the queue's lock:
//! - the bit is set exactly while the queue is not empty;
//! - the count never exceeds `max_concurrent`;
//! - a waiter is either in the queue (waiting) or out of it and holding a place (granted): only
//!   the waiter itself removes its entry otherwise, when it times out or is dropped.

use std::collections::VecDeque;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use std::{fmt, future::Future};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::error::BulkheadFull;
use crate::clock::saturating_after;
use crate::timeout::Deadline;

/// Set while the waiting queue is not empty.
const WAITERS: usize = 1 << (usize::BITS - 1);

/// The largest `max_concurrent`: the count must stay clear of the flag bit.
pub(crate) const MAX_CONCURRENT: usize = WAITERS - 1;

pub(crate) struct Shared {
    /// Places taken, plus [`WAITERS`].
    state: AtomicUsize,
    max_concurrent: usize,
    max_wait_queue: usize,
    max_wait: Duration,
    queue: Mutex<Queue>,
    /// The queue's length, readable without the lock.
    queued: AtomicUsize,
}

struct Queue {
    /// Oldest first; tickets increase from front to back, so a ticket is found by binary search.
    waiters: VecDeque<Waiter>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    waker: Option<Waker>,
}

/// How a call that missed the fast path got on.
pub(crate) enum Admission {
    /// A place came free meanwhile: it is the caller's.
    Acquired,
    /// The caller is queued under this ticket; it must wait with a [`Wait`].
    Queued(u64),
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(max_concurrent: usize, max_wait_queue: usize, max_wait: Duration) -> Shared {
        debug_assert!((1..=MAX_CONCURRENT).contains(&max_concurrent));
        Shared {
            state: AtomicUsize::new(0),
            max_concurrent,
            max_wait_queue,
            max_wait,
            queue: Mutex::new(Queue {
                waiters: VecDeque::new(),
                next_ticket: 0,
            }),
            queued: AtomicUsize::new(0),
        }
    }

    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub(crate) fn max_wait_queue(&self) -> usize {
        self.max_wait_queue
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.max_wait
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.state.load(Ordering::Relaxed) & !WAITERS
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Takes a place if one is free and nobody is queued for it.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut current = self.state.load(Ordering::Relaxed);
        // With the flag set `current` exceeds any limit, so waiters keep their turn.
        while current < self.max_concurrent {
            match self.state.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Gives a place back.
    #[inline]
    pub(crate) fn release(&self) {
        let previous = self.state.fetch_sub(1, Ordering::Release);
        if previous & WAITERS != 0 {
            self.hand_over();
        }
    }

    /// The slow path after [`Shared::try_acquire`] failed: takes a place that came free
    /// meanwhile, or joins the queue, or is refused because the queue is full.
    #[cold]
    pub(crate) fn enqueue(&self) -> Result<Admission, BulkheadFull> {
        let mut queue = self.lock();
        if queue.waiters.is_empty() {
            let mut current = self.state.load(Ordering::Acquire);
            loop {
                if current < self.max_concurrent {
                    match self.state.compare_exchange(
                        current,
                        current + 1,
                        Ordering::Acquire,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(Admission::Acquired),
                        Err(actual) => current = actual,
                    }
                } else if self.max_wait_queue == 0 {
                    return Err(self.full(false));
                } else {
                    // Set the flag from the exact count seen full: if a release slipped in, the
                    // swap fails and the freed place is taken instead.
                    match self.state.compare_exchange(
                        current,
                        current | WAITERS,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(actual) => current = actual,
                    }
                }
            }
        } else if queue.waiters.len() >= self.max_wait_queue {
            return Err(self.full(false));
        }
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiters.push_back(Waiter {
            ticket,
            waker: None,
        });
        self.queued.store(queue.waiters.len(), Ordering::Relaxed);
        Ok(Admission::Queued(ticket))
    }

    /// Whether the waiter holding `ticket` got a place; removes it from the queue when it timed
    /// out first.
    fn poll_queued(
        &self,
        ticket: u64,
        timed_out: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BulkheadFull>> {
        let mut queue = self.lock();
        let Some(index) = queue.position(ticket) else {
            // Only a grant takes a waiter out of the queue while it waits: the place is ours,
            // even if the timer fired at the same moment.
            return Poll::Ready(Ok(()));
        };
        if timed_out {
            self.remove(&mut queue, index);
            return Poll::Ready(Err(self.full(true)));
        }
        let waker = &mut queue.waiters[index].waker;
        match waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A waiter gave up (its future was dropped): frees its place in the queue, or the place it
    /// was granted but never used.
    fn cancel(&self, ticket: u64) {
        let granted = {
            let mut queue = self.lock();
            match queue.position(ticket) {
                Some(index) => {
                    self.remove(&mut queue, index);
                    false
                }
                None => true,
            }
        };
        if granted {
            self.release();
        }
    }

    /// Hands places freed while the flag was set to the oldest waiters, one at a time so that no
    /// waker runs under the lock.
    #[cold]
    fn hand_over(&self) {
        loop {
            let waker = {
                let mut queue = self.lock();
                // Another release, or a newcomer after the queue emptied, may already have used
                // the place this release freed.
                if self.state.load(Ordering::Acquire) & !WAITERS >= self.max_concurrent {
                    return;
                }
                let Some(waiter) = queue.waiters.pop_front() else {
                    return;
                };
                self.state.fetch_add(1, Ordering::AcqRel);
                if queue.waiters.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
                self.queued.store(queue.waiters.len(), Ordering::Relaxed);
                waiter.waker
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn remove(&self, queue: &mut Queue, index: usize) {
        queue.waiters.remove(index);
        if queue.waiters.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
        self.queued.store(queue.waiters.len(), Ordering::Relaxed);
    }

    fn full(&self, waited: bool) -> BulkheadFull {
        BulkheadFull::new(self.max_concurrent, waited)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics under the lock; were it poisoned, the queue would still be consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait_queue", &self.max_wait_queue)
            .field("max_wait", &self.max_wait)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}

impl Queue {
    fn position(&self, ticket: u64) -> Option<usize> {
        self.waiters
            .binary_search_by_key(&ticket, |waiter| waiter.ticket)
            .ok()
    }
}

// === impl Wait ===

pin_project! {
    /// A queued caller waiting for a place, until `max_wait` passes.
    ///
    /// Resolves once the caller holds a place, for it to wrap in a permit. Dropped before that, it
    /// leaves the queue (or gives back the place it was just granted).
    pub(crate) struct Wait<P>
    where
        P: Deref<Target = Shared>,
    {
        ticket: Ticket<P>,
        #[pin]
        sleep: Sleep,
    }
}

/// A place in the queue, given up on drop unless it was resolved.
struct Ticket<P: Deref<Target = Shared>> {
    shared: P,
    ticket: u64,
    waiting: bool,
}

impl<P> Wait<P>
where
    P: Deref<Target = Shared>,
{
    /// Waits under `ticket`, just returned by [`Shared::enqueue`].
    pub(crate) fn new(shared: P, ticket: u64) -> Wait<P> {
        // The ticket is guarded before the timer is made, so that nothing can leak it.
        let ticket = Ticket {
            ticket,
            waiting: true,
            shared,
        };
        // No longer than the deadline in force: a caller whose time is up would otherwise hold
        // a place in the queue, ahead of live ones, for the rest of `max_wait`.
        let max_wait = Deadline::cap_wait(ticket.shared.max_wait);
        let until: Instant = saturating_after(Instant::now(), max_wait);
        Wait {
            ticket,
            sleep: sleep_until(until),
        }
    }
}

impl<P> Wait<P>
where
    P: Deref<Target = Shared>,
{
    /// The shared state waited on.
    pub(crate) fn shared(&self) -> &P {
        &self.ticket.shared
    }
}

impl<P> Future for Wait<P>
where
    P: Deref<Target = Shared>,
{
    type Output = Result<(), BulkheadFull>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let ticket = this.ticket;
        debug_assert!(ticket.waiting, "Wait polled after completion");
        let timed_out = this.sleep.poll(cx).is_ready();
        let result = ready!(ticket.shared.poll_queued(ticket.ticket, timed_out, cx));
        ticket.waiting = false;
        Poll::Ready(result)
    }
}

impl<P: Deref<Target = Shared>> Drop for Ticket<P> {
    fn drop(&mut self) {
        if self.waiting {
            self.shared.cancel(self.ticket);
        }
    }
}

impl<P: Deref<Target = Shared>> fmt::Debug for Wait<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("ticket", &self.ticket.ticket)
            .field("waiting", &self.ticket.waiting)
            .finish()
    }
}
