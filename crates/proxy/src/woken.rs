//! Futures polled only after something woke them.
//!
//! A connection's task is woken for every read and write of its socket, and `tokio::select!`
//! polls each of its branches at every wake-up: beside the connection, the drain signal (a
//! `watch` borrow and a `Notify` check under its lock) and the idle timer, about 500
//! instructions a request of the ~40,000 a small proxied request costs (callgrind), for
//! branches that are ready once in a connection's life. Wrapped in [`WhenWoken`], such a future
//! is polled when its own waker was woken since its last poll, and otherwise answers `Pending`
//! at the cost of a load and a waker check.
//!
//! The futures of one task share a [`Wakes`]: a wake-up of any of them has them all polled
//! once more, which costs nothing worth sparing for futures woken that rarely.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The wake-ups of the futures of one task that are polled only when woken.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    // How many wake-ups there were: a future polled at a count it saw before was not woken since.
    count: AtomicU64,
    // The task to wake.
    task: AtomicWaker,
}

impl Wakes {
    pub(crate) fn new() -> Arc<Wakes> {
        Arc::default()
    }
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Counted before the task is woken, so that the poll it wakes for sees the count.
        self.count.fetch_add(1, Ordering::AcqRel);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// `inner`, polled only when it was woken since its last poll (or never polled yet).
    pub(crate) struct WhenWoken<F> {
        #[pin]
        inner: F,
        wakes: Arc<Wakes>,
        seen: Option<u64>,
    }
}

impl<F> WhenWoken<F> {
    pub(crate) fn new(inner: F, wakes: &Arc<Wakes>) -> WhenWoken<F> {
        WhenWoken {
            inner,
            wakes: wakes.clone(),
            seen: None,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The task is registered before the count is read: a wake-up between the two is either
        // counted in what is read, or wakes the task for another poll.
        this.wakes.task.register(cx.waker());
        let count = this.wakes.count.load(Ordering::Acquire);
        if *this.seen == Some(count) {
            return Poll::Pending;
        }
        *this.seen = Some(count);
        let waker = Waker::from(this.wakes.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Duration;

    use super::*;
    use crate::counting_waker::CountingWaker;

    /// What a [`Probe`] shows: its polls, whether to be ready, the waker of its last poll.
    #[derive(Default)]
    struct Seen {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Seen {
        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }

        fn wake(&self) {
            self.waker.lock().unwrap().take().unwrap().wake();
        }
    }

    /// A future counting its polls, pending until told to be ready.
    struct Probe(Arc<Seen>);

    impl Future for Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            if self.0.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn probe() -> (Probe, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        (Probe(seen.clone()), seen)
    }

    #[test]
    fn polled_first_then_only_when_woken() {
        let wakes = Wakes::new();
        let (probe, seen) = probe();
        let mut future = std::pin::pin!(WhenWoken::new(probe, &wakes));
        let mut cx = Context::from_waker(Waker::noop());

        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(seen.polls(), 1, "the first poll reaches the future");
        for _ in 0..3 {
            assert!(future.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(seen.polls(), 1, "not woken: not polled");

        seen.ready.store(true, Ordering::SeqCst);
        seen.wake();
        assert!(future.as_mut().poll(&mut cx).is_ready());
        assert_eq!(seen.polls(), 2);
    }

    #[test]
    fn a_wake_up_wakes_the_task_and_reaches_every_future_sharing_the_wakes() {
        let wakes = Wakes::new();
        let (first, first_seen) = probe();
        let (second, second_seen) = probe();
        let mut first = std::pin::pin!(WhenWoken::new(first, &wakes));
        let mut second = std::pin::pin!(WhenWoken::new(second, &wakes));
        let (task, task_waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&task_waker);
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());

        first_seen.wake();
        assert_eq!(task.count(), 1, "the task is woken");
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(first_seen.polls(), 2);
        assert_eq!(second_seen.polls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_through_it() {
        let wakes = Wakes::new();
        let started = tokio::time::Instant::now();
        WhenWoken::new(tokio::time::sleep(Duration::from_secs(5)), &wakes).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
