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
//!      connect_timeout, idle_timeout, max_connection_age, failure_status, \
//!      h2_max_concurrent_streams, breaker, health, limits)"
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

/// The largest configuration file read: far past any real one, and short of what a file that
/// never ends (`/dev/zero`) would cost.
const MAX_FILE: u64 = 16 << 20;

/// The text of the configuration file at `path`, or why it cannot be used.
fn read(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| match std::env::current_dir() {
        // Where a relative name was looked for: a command run from another directory than
        // meant finds nothing, and its error should say where it looked.
        Ok(dir) if e.kind() == std::io::ErrorKind::NotFound && path.is_relative() => format!(
            "cannot read the configuration file: no such file in {}",
            dir.display()
        ),
        _ => format!("cannot read the configuration file: {e}"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err("the configuration file is larger than 16 MiB".into());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        // The bytes before it are text: where it stands can be said as an editor shows it.
        let before = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
        let (line, column) = error::line_column(before, at);
        format!(
            "the configuration file is not UTF-8 text (an invalid byte at line {line}, column \
             {column}, offset {at})"
        )
    })?;
    // A file cut short by a write under way, or emptied by mistake, would otherwise be a valid
    // configuration of no routes.
    if text.trim().is_empty() {
        return Err("the configuration file is empty".into());
    }
    Ok(text)
}

impl Config {
    /// Reads, parses and validates the file at `path`; errors name it as given.
    ///
    /// A relative `body_file` is resolved against the file's directory and must exist.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Errors> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = read(path).map_err(|message| {
            Errors(vec![Error {
                origin: origin.clone(),
                position: None,
                path: String::new(),
                message,
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
