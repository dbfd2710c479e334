//! Upstreams: a pooled client per upstream, and the choice of an endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::Version;
use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rampart_config::{Upstream, UpstreamProtocol};

use crate::Error;
use crate::body::RequestBody;

/// One upstream: its endpoints and the connection pool they share.
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: Vec<Authority>,
    version: Version,
    next: AtomicUsize,
    // Pools connections per endpoint (the pool key is the authority).
    client: Client<HttpConnector, RequestBody>,
}

impl Pool {
    pub(crate) fn new(upstream: &Upstream) -> Result<Pool, Error> {
        let endpoints = upstream
            .endpoints
            .iter()
            .map(|endpoint| {
                endpoint
                    .to_string()
                    .parse::<Authority>()
                    .map_err(|err| Error::Invalid {
                        path: format!("upstreams.{}.endpoints", upstream.name),
                        message: format!("{endpoint} is not a URI authority: {err}"),
                    })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if endpoints.is_empty() {
            return Err(Error::Invalid {
                path: format!("upstreams.{}.endpoints", upstream.name),
                message: "an upstream needs at least one endpoint".to_owned(),
            });
        }
        let http2 = matches!(
            upstream.protocol,
            UpstreamProtocol::Http2 | UpstreamProtocol::Grpc
        );

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // h2c by prior knowledge: no upgrade dance, the connection starts with the preface.
            .http2_only(http2)
            .timer(TokioTimer::new())
            // Idle pooled connections are closed after the pool's idle timeout only with a timer.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Pool {
            endpoints,
            version: if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            next: AtomicUsize::new(0),
            client,
        })
    }

    /// The endpoint for the next request: round-robin over the primaries.
    ///
    /// The seam for the balancers: P2C over the endpoints whose breaker admits a call, `backup`
    /// endpoints only when no primary is available, `no-healthy-endpoint` when none is.
    pub(crate) fn pick(&self) -> &Authority {
        // Relaxed: the counter only spreads requests; no other memory depends on it.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.endpoints[n % self.endpoints.len()]
    }

    /// The HTTP version requests to this upstream go out with.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The pooled client.
    pub(crate) fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }
}
