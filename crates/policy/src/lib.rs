//! Resilience policies for calls between services.
//!
//! When a service you depend on crashes, slows down or is overloaded, your own service must not
//! crash, hang or pile up requests. These policies keep it answering:
//!
//! | policy | module | what it does |
//! |---|---|---|
//! | circuit breaker | [`breaker`] | stops calling a callee that keeps failing, probes it back to health |
//! | retry | [`retry`] | tries again with backoff, within a budget so retries cannot become a storm |
//! | timeout, deadline | [`timeout`] | bounds one call; a [`timeout::Deadline`] bounds a whole request across hops |
//! | bulkhead | [`bulkhead`] | bounds concurrent calls and the queue waiting for them |
//! | rate limit | [`ratelimit`] | bounds calls per second |
//! | adaptive concurrency | [`adaptive`] | finds the concurrency a callee sustains from its latency |
//! | hedging | [`hedge`] | sends a second attempt when the first is slow, keeps the first answer |
//! | fallback | [`fallback`] | answers with a substitute when the call fails or is refused |
//!
//! Every policy works two ways: as a tower [`Layer`](tower_layer::Layer), and directly around any
//! async call, for users of reqwest, sqlx or anything else (`policy.call(|| async { .. })`). They
//! share one [`classify::Outcome`] so that they agree on what a failure is, and read time and
//! randomness through injectable sources ([`clock`], [`rng`]) so that every timing behaviour can
//! be tested on tokio's paused clock.
//!
//! The [`pipeline`] module composes them in a documented order.

pub mod adaptive;
pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod clock;
pub mod error;
pub mod fallback;
pub mod hedge;
pub mod latency;
pub mod pipeline;
pub mod ratelimit;
pub mod request;
pub mod retry;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod timeout;
mod window;

pub use classify::{Classify, Outcome};
pub use error::{BoxError, Error, Rejected};
