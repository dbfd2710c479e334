//! A rampart proxy running in the test's own process, built from configuration text.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use rampart_test_support::{Behavior, ProxyBuilder, Upstream};
//!
//! let upstream = Upstream::start(Behavior::ok("hello")).await.unwrap();
//! let proxy = ProxyBuilder::to(&[upstream.addr()])
//!     .route(r#"timeout = "500ms""#)
//!     .upstream(r#"balance = "round-robin""#)
//!     .start()
//!     .await;
//! assert_ne!(proxy.listeners()[0].addr.port(), 0);
//! # }
//! ```

use std::fmt::Write;
use std::net::SocketAddr;

use rampart_config::Config;
use rampart_policy::rng::Rng;
use rampart_proxy::Proxy;

/// Builds a [`Proxy`] in this process: from a whole configuration ([`ProxyBuilder::from_toml`]),
/// or from the usual test shape ([`ProxyBuilder::to`]): one listener on `127.0.0.1:0`, one route
/// to one upstream named `app`, with lines of TOML added to the route's table and the upstream's.
///
/// [`ProxyBuilder::start`] panics with every configuration error and the text it came from: a
/// test's configuration is part of the test, and a typo in it must fail loudly.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    toml: Toml,
    rng: Option<Rng>,
}

#[derive(Debug, Clone)]
enum Toml {
    Whole(String),
    Simple {
        endpoints: Vec<SocketAddr>,
        route: String,
        upstream: String,
    },
}

impl ProxyBuilder {
    /// A proxy from a whole configuration file's text; its listeners should listen on
    /// `127.0.0.1:0`.
    pub fn from_toml(toml: &str) -> ProxyBuilder {
        ProxyBuilder {
            toml: Toml::Whole(toml.to_owned()),
            rng: None,
        }
    }

    /// One listener on `127.0.0.1:0` and one route to an upstream `app` of `endpoints`.
    pub fn to(endpoints: &[SocketAddr]) -> ProxyBuilder {
        ProxyBuilder {
            toml: Toml::Simple {
                endpoints: endpoints.to_vec(),
                route: String::new(),
                upstream: String::new(),
            },
            rng: None,
        }
    }

    /// Adds lines to the route's table (`timeout = "1s"`, `[routes.retry]` sections, ...). Only
    /// for a builder made by [`ProxyBuilder::to`].
    pub fn route(mut self, lines: &str) -> ProxyBuilder {
        if let Toml::Simple { route, .. } = &mut self.toml {
            route.push_str(lines);
            route.push('\n');
        }
        self
    }

    /// Adds lines to the upstream's table (`balance = "random"`, `[upstreams.app.breaker]`
    /// sections, ...). Only for a builder made by [`ProxyBuilder::to`].
    pub fn upstream(mut self, lines: &str) -> ProxyBuilder {
        if let Toml::Simple { upstream, .. } = &mut self.toml {
            upstream.push_str(lines);
            upstream.push('\n');
        }
        self
    }

    /// Every random choice of the proxy drawn from `rng` (see `Proxy::start_with_rng`).
    pub fn rng(mut self, rng: Rng) -> ProxyBuilder {
        self.rng = Some(rng);
        self
    }

    /// The configuration text this builder stands for.
    pub fn toml(&self) -> String {
        match &self.toml {
            Toml::Whole(toml) => toml.clone(),
            Toml::Simple {
                endpoints,
                route,
                upstream,
            } => {
                let mut list = String::new();
                for (i, endpoint) in endpoints.iter().enumerate() {
                    let comma = if i == 0 { "" } else { ", " };
                    let _ = write!(list, "{comma}\"{endpoint}\"");
                }
                format!(
                    "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
                     [[routes]]\nupstream = \"app\"\n{route}\n\n\
                     [upstreams.app]\nendpoints = [{list}]\n{upstream}\n"
                )
            }
        }
    }

    /// Starts the proxy; it serves until dropped or shut down.
    pub async fn start(self) -> Proxy {
        let toml = self.toml();
        let config = Config::from_str(&toml, "test.toml")
            .unwrap_or_else(|errors| panic!("{errors}\nin the configuration:\n{toml}"));
        let started = match self.rng {
            Some(rng) => Proxy::start_with_rng(&config, rng).await,
            None => Proxy::start(&config).await,
        };
        started.unwrap_or_else(|err| panic!("the proxy does not start: {err}\n{toml}"))
    }
}
