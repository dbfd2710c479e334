//! The configuration of the rampart proxy: one TOML file, parsed, validated and built into a
//! [`Config`] with every default filled in and every reference resolved.
//!
//! Loading never stops at the first problem: every error in the file is collected, each naming
//! the file, line and column, the key path, the bad value and what is allowed, so that one run
//! of `rampart check` shows everything to fix. Unknown keys are errors (a typo in a resilience
//! setting would otherwise silently fall back to a default), with a suggestion when a known key
//! is close.
//!
//! ```
//! use rampart_config::Config;
//!
//! let config = Config::from_str(
//!     r#"
//!     [[routes]]
//!     match = { path_prefix = "/orders" }
//!     upstream = "orders"
//!     timeout = "2s"
//!
//!     [upstreams.orders]
//!     endpoints = ["127.0.0.1:9001"]
//!     "#,
//!     "rampart.toml",
//! )
//! .unwrap();
//! assert_eq!(config.routes[0].name, "route-0");
//! assert_eq!(config.routes[0].listener, "listener-0");
//! assert_eq!(config.listeners[0].listen.to_string(), "127.0.0.1:8080");
//!
//! let errors = Config::from_str(
//!     "[upstreams.orders]\nendpoints = [\"127.0.0.1:9001\"]\nconect_timeout = \"1s\"\n",
//!     "rampart.toml",
//! )
//! .unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "rampart.toml:3:1: upstreams.orders.conect_timeout: unknown key \"conect_timeout\"; \
//!      did you mean \"connect_timeout\"? (allowed: endpoints, backup, protocol, balance, \
//!      connect_timeout, failure_status, h2_max_concurrent_streams, breaker, health, limits)"
//! );
//! ```
//!
//! The reference of every key is `docs/configuration.md`.

mod error;
mod load;
mod model;
mod summary;
pub mod value;

use std::path::Path;

pub use error::{Error, Errors};
pub use model::*;
pub use summary::Summary;

impl Config {
    /// Reads, parses and validates the file at `path`; errors name it as given.
    ///
    /// A relative `body_file` is resolved against the file's directory and must exist.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Errors> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Errors(vec![Error {
                origin: origin.clone(),
                position: None,
                path: String::new(),
                message: format!("cannot read the configuration file: {e}"),
                got: None,
                allowed: None,
            }])
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        load::load(&text, &origin, Some(base.unwrap_or(Path::new("."))))
    }

    /// Parses and validates `text`; `origin` names it in errors (a file name, `<stdin>`, ...).
    ///
    /// `body_file` paths are kept as written and not checked, as there is no directory to
    /// resolve them against.
    #[allow(clippy::should_implement_trait)] // FromStr cannot take the origin name.
    pub fn from_str(text: &str, origin: &str) -> Result<Config, Errors> {
        load::load(text, origin, None)
    }

    /// A one-screen summary, as `rampart check` prints it.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}
