//! Test fixtures for rampart's integration tests: real sockets on 127.0.0.1, ports chosen by the
//! kernel, and nothing left running once a fixture is dropped.
//!
//! - [`FaultProxy`]: a TCP proxy that injects latency, resets, refusals, black holes and resets
//!   in the middle of a body, switchable while connections are open.

mod fault;

pub use fault::{Fault, FaultProxy};
