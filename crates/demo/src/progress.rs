//! The live progress line of a run on the terminal: a bar of the run's time, the success rate
//! so far, the requests in flight and what is being done to C, in under 80 columns.
//!
//! Drawn on stderr, redrawn in place five times a second when stderr is a terminal; otherwise
//! (a log, CI) only the final line of each run is written.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::load::Live;

/// The bar's width: with the longest label and phase, the line stays under 80 columns, so that
/// a terminal of that width redraws it in place instead of wrapping it onto a new row each time.
const WIDTH: usize = 8;

/// A progress line, redrawn until [`finish`](Progress::finish)ed.
#[derive(Debug)]
pub(crate) struct Progress {
    label: String,
    live: Arc<Live>,
    start: Instant,
    length: Duration,
    phase: Arc<Mutex<&'static str>>,
    terminal: bool,
    drawing: Option<JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(
        label: String,
        live: Arc<Live>,
        start: Instant,
        length: Duration,
    ) -> Progress {
        let phase = Arc::new(Mutex::new("C is fine"));
        let mut progress = Progress {
            label,
            live,
            start,
            length,
            phase,
            terminal: std::io::stderr().is_terminal(),
            drawing: None,
        };
        if progress.terminal {
            let line = progress.snapshot();
            progress.drawing = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    draw(&line.render(), true, false);
                }
            }));
        }
        progress
    }

    /// What is being done to C now, shown beside the numbers.
    pub(crate) fn phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Stops redrawing and writes the final line.
    pub(crate) fn finish(mut self) {
        if let Some(drawing) = self.drawing.take() {
            drawing.abort();
        }
        draw(&self.snapshot().render(), self.terminal, true);
    }

    fn snapshot(&self) -> Line {
        Line {
            label: self.label.clone(),
            live: self.live.clone(),
            start: self.start,
            length: self.length,
            phase: self.phase.clone(),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(drawing) = self.drawing.take() {
            drawing.abort();
        }
    }
}

/// What one drawing of the line needs.
struct Line {
    label: String,
    live: Arc<Live>,
    start: Instant,
    length: Duration,
    phase: Arc<Mutex<&'static str>>,
}

impl Line {
    fn render(&self) -> String {
        let elapsed = self.start.elapsed().min(self.length);
        let filled = (elapsed.as_secs_f64() / self.length.as_secs_f64().max(0.001) * WIDTH as f64)
            .round() as usize;
        let filled = filled.min(WIDTH);
        let sent = self.live.sent.load(Ordering::Relaxed);
        let done = self.live.done.load(Ordering::Relaxed);
        let succeeded = self.live.succeeded.load(Ordering::Relaxed);
        let rate = if done == 0 {
            100.0
        } else {
            succeeded as f64 * 100.0 / done as f64
        };
        let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "  {:<22} [{}{}] {:>4.1}s ok {rate:>5.1}% in flight {:>4} {phase}",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            elapsed.as_secs_f64(),
            sent.saturating_sub(done),
        )
    }
}

/// Draws the line over the previous one on a terminal (`\x1b[K` clears what a longer earlier
/// line left); elsewhere, only the last line is written, plainly.
fn draw(line: &str, terminal: bool, last: bool) {
    let mut stderr = std::io::stderr().lock();
    if terminal {
        let _ = write!(stderr, "\r{line}\x1b[K");
    } else {
        let _ = write!(stderr, "{line}");
    }
    if last {
        let _ = writeln!(stderr);
    }
    let _ = stderr.flush();
}
