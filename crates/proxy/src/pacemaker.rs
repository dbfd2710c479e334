//! One timer always pending, due within a second, so that registering a request's timers does
//! not wake the runtime's event loop.
//!
//! tokio's time driver cannot tell whether the thread that owns it is parked: it writes to its
//! wake-up descriptor whenever a timer is registered earlier than the earliest one it knew of
//! when it last parked, or when it parked with none (tokio-rs/tokio#5207). Between two requests
//! a proxy under moderate load holds no timer at all, so every request's timeout, registered
//! while the thread is busy anyway, cost a `write(2)` to the eventfd: about one per request at
//! 2,000 req/s (`strace -c`), and none with this timer pending.
//!
//! With one timer always due within [`BEAT`], the driver parks with a wake-up at most that far
//! away, and a timer registered further out than that (a route's `timeout`, the listener's
//! `header_read_timeout` and `idle_timeout`) needs no wake: the driver is up by then and sees
//! it when it next parks. Shorter timers (a backoff, a short `per_try_timeout`) still wake it,
//! as they must. The price is one timer firing a second, a few microseconds of CPU.

use std::time::Duration;

use tokio::sync::watch;

/// How far ahead the pending timer is due.
pub(crate) const BEAT: Duration = Duration::from_secs(1);

/// Keeps a timer pending until `stop` turns true or its sender is gone.
pub(crate) async fn run(mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(BEAT) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_until_the_proxy_stops() {
        let (stop, receiver) = watch::channel(false);
        let task = tokio::spawn(run(receiver));
        tokio::time::sleep(BEAT * 5).await;
        assert!(!task.is_finished(), "it keeps beating while the proxy runs");
        stop.send(true).unwrap();
        tokio::time::timeout(BEAT, task)
            .await
            .expect("a stopped proxy's pacemaker ends at once")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_the_proxy_is_gone() {
        let (stop, receiver) = watch::channel(false);
        let task = tokio::spawn(run(receiver));
        drop(stop);
        tokio::time::timeout(BEAT, task)
            .await
            .expect("a pacemaker outliving its proxy ends at once")
            .unwrap();
    }
}
