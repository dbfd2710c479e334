//! (in progress)

pub mod error;
