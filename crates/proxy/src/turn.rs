//! The time of a task's turn: one clock read for everything a poll of a connection does.
//!
//! A request on its way through the proxy looks at the time about fifteen times: when it
//! starts, for its deadline, when an endpoint is picked (the balancer's and the metrics' start),
//! when a slot of the upstream's limit is taken, when the answer's head comes back (the
//! balancer's latency, the limit's, the metrics' and the route's recent stats), for the body's
//! idle timer, hyper's header read timer and the connection's idle count. A vDSO clock read costs 20 to 40 ns, and
//! together they were 3 to 4 % of the CPU time of a small proxied request.
//!
//! Within one poll of a connection's task (a turn: no time passes for the task between its
//! reads that it could act on), [`now`] returns the time read once, when the turn first asked
//! for it. nginx caches its time per event-loop iteration for the same reason. A latency
//! measured between two turns is late by at most the work done in the turn before the reading
//! was wanted, a few microseconds. A turn that asks nothing (about a third: writing an
//! answer out, reading the end of a body) reads no clock. Outside a turn (a health check, the
//! outbox's delivery loop, a test calling a function directly), [`now`] reads the clock.
//!
//! Every reading is tokio's clock, so tests on its paused clock see the same times: the paused
//! clock only moves between polls.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Executor, Sleep, Timer};
use hyper_util::rt::TokioTimer;
use tokio::time::Instant;

/// Where this thread is: in no turn, in one that has not read the clock yet, or in one that has.
#[derive(Clone, Copy)]
enum Turn {
    Outside,
    Unread,
    At(Instant),
}

thread_local! {
    static TURN: Cell<Turn> = const { Cell::new(Turn::Outside) };
}

/// The current time: the turn's inside one (read at its first ask), the clock's otherwise.
#[inline]
pub(crate) fn now() -> Instant {
    TURN.with(|turn| match turn.get() {
        Turn::At(at) => at,
        Turn::Outside => Instant::now(),
        Turn::Unread => {
            let at = Instant::now();
            turn.set(Turn::At(at));
            at
        }
    })
}

/// Runs `poll` as one turn: [`now`] within it is the time read when it is first asked for. A
/// turn inside another reads the clock again, and the outer turn's time is back when it ends.
#[inline]
pub(crate) fn run<R>(poll: impl FnOnce() -> R) -> R {
    // Restored on unwinding too: a panicking poll must not leave its time to the thread's
    // next task.
    struct Restore(Turn);
    impl Drop for Restore {
        fn drop(&mut self) {
            TURN.set(self.0);
        }
    }
    let _restore = Restore(TURN.replace(Turn::Unread));
    poll()
}

pin_project_lite::pin_project! {
    /// A future each poll of which is a turn.
    pub(crate) struct Turns<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        run(|| inner.poll(cx))
    }
}

/// Spawns hyper's tasks (an HTTP/2 connection's streams) on tokio, each poll a turn.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TurnExecutor;

impl<F> Executor<F> for TurnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Turns { inner: future });
    }
}

/// tokio's timer for hyper, whose `now` (the start of a header read timeout) is the turn's.
#[derive(Clone, Debug, Default)]
pub(crate) struct TurnTimer(TokioTimer);

#[expect(
    clippy::disallowed_types,
    reason = "hyper's Timer speaks std's Instant; tokio's converts to it"
)]
impl Timer for TurnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: std::time::Instant) {
        self.0.reset(sleep, new_deadline);
    }

    fn now(&self) -> std::time::Instant {
        now().into_std()
    }
}

/// The proxy's clock for the policies it holds (latency recorders): the turn's time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TurnClock;

impl rampart_policy::clock::Clock for TurnClock {
    #[inline]
    fn now(&self) -> Instant {
        now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests run on the real clock, and sleep the thread to make it move within a turn.
    const WHILE: Duration = Duration::from_millis(2);

    #[test]
    fn within_a_turn_the_time_is_its_first_reading_and_after_it_the_clocks() {
        let (first, seen) = run(|| {
            let first = now();
            std::thread::sleep(WHILE);
            (first, now())
        });
        assert_eq!(seen, first, "the turn's time, not the clock's");
        assert!(now() >= first + WHILE, "outside a turn, the clock");
    }

    #[test]
    fn a_turn_reads_the_clock_when_first_asked_not_as_it_starts() {
        let (began, first) = run(|| {
            let began = Instant::now();
            std::thread::sleep(WHILE);
            (began, now())
        });
        assert!(first >= began + WHILE, "read when asked");
    }

    #[test]
    fn a_turn_inside_another_reads_the_clock_and_gives_the_outer_its_time_back() {
        run(|| {
            let outer = now();
            std::thread::sleep(WHILE);
            let inner = run(now);
            assert!(inner >= outer + WHILE);
            assert_eq!(now(), outer);
        });
    }

    #[test]
    fn a_panicking_turn_leaves_no_time_behind() {
        let before = Instant::now();
        let panicked = std::panic::catch_unwind(|| run(|| panic!("the poll failed")));
        assert!(panicked.is_err());
        std::thread::sleep(WHILE);
        assert!(now() >= before + WHILE);
    }

    #[test]
    fn each_poll_of_turns_is_a_turn() {
        let mut seen = Vec::new();
        let mut turns = std::pin::pin!(Turns {
            inner: std::future::poll_fn(|_| {
                seen.push(now());
                std::thread::sleep(WHILE);
                seen.push(now());
                Poll::<()>::Pending
            }),
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..2 {
            assert!(turns.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(seen[0], seen[1], "one poll, one time");
        assert!(seen[2] >= seen[1] + WHILE, "the next poll, the next time");
        assert_eq!(seen[2], seen[3]);
    }
}
