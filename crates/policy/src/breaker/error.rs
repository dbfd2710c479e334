//! Errors returned by the circuit breaker.

use std::time::Duration;

/// The breaker refused the call: it is open, forced open, or half-open with every probe taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open")]
pub struct BreakerOpen {
    retry_in: Option<Duration>,
}

impl BreakerOpen {
    pub(crate) fn new(retry_in: Option<Duration>) -> BreakerOpen {
        BreakerOpen { retry_in }
    }

    /// How long until the breaker lets a probe through, when it knows (not when forced open, nor
    /// when half-open with its probes taken).
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_in
    }
}

/// A breaker setting out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker setting `{setting}` is {value}, but {allowed}")]
pub struct ConfigError {
    setting: &'static str,
    value: String,
    allowed: &'static str,
}

impl ConfigError {
    pub(crate) fn new(
        setting: &'static str,
        value: impl std::fmt::Debug,
        allowed: &'static str,
    ) -> Self {
        ConfigError {
            setting,
            value: format!("{value:?}"),
            allowed,
        }
    }

    /// The name of the setting, as the builder method that sets it.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// What the setting allows.
    pub fn allowed(&self) -> &'static str {
        self.allowed
    }
}
