//! The services over gRPC: `rampart.demo.<A|B|C|D>/Get(ItemRequest) -> ItemReply`, and the
//! standard health service (`grpc.health.v1`, SERVING).
//!
//! Messages are derived with prost by hand and the calls go through tonic's lower-level API
//! (`tonic::server::Grpc`, `tonic::client::Grpc` with `tonic_prost::ProstCodec`), so no `.proto`
//! file and no protoc are needed. The client is hyper's, HTTP/2 only, at its defaults: as in the
//! HTTP wiring, no timeout of its own; a deadline goes out as `grpc-timeout` when the service has
//! one to pass on.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tonic::server::UnaryService;
use tonic::{Code, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_prost::ProstCodec;
use tower_service::Service as _;

use crate::service::{Failure, Part, Reply, Service};

/// `rampart.demo.ItemRequest`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct ItemRequest {
    /// The item asked for.
    #[prost(uint64, tag = "1")]
    pub(crate) item: u64,
}

/// `rampart.demo.ItemReply`: a [`Reply`], its value as JSON text.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct ItemReply {
    /// Which service answered.
    #[prost(string, tag = "1")]
    pub(crate) service: String,
    /// The answer, JSON text; `null` in a configured fallback.
    #[prost(string, tag = "2")]
    pub(crate) value: String,
    /// The parts of the answer that are stand-ins.
    #[prost(string, repeated, tag = "3")]
    pub(crate) degraded: Vec<String>,
}

impl ItemReply {
    fn from_reply(reply: Reply) -> ItemReply {
        ItemReply {
            service: reply.service,
            value: reply.value.to_string(),
            degraded: reply.degraded,
        }
    }

    pub(crate) fn into_reply(self) -> Reply {
        Reply {
            service: self.service,
            value: serde_json::from_str(&self.value).unwrap_or(serde_json::Value::Null),
            degraded: self.degraded,
        }
    }
}

/// The path of a service's `Get`: `/rampart.demo.B/Get` for `b`.
pub(crate) fn path(name: &str) -> String {
    format!("/rampart.demo.{}/Get", name.to_ascii_uppercase())
}

/// The path prefix a sidecar's route matches for a service: `/rampart.demo.B/`.
pub(crate) fn prefix(name: &str) -> String {
    format!("/rampart.demo.{}/", name.to_ascii_uppercase())
}

/// A gRPC client at hyper's defaults, for any address.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, tonic::body::Body>,
}

// === impl Client ===

impl Client {
    pub(crate) fn new() -> Client {
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(crate::service::connector());
        Client { inner }
    }

    /// Calls `name`'s `Get` at `addr`, with `left` as its `grpc-timeout`.
    pub(crate) async fn fetch(
        &self,
        addr: SocketAddr,
        name: &str,
        item: u64,
        left: Option<Duration>,
    ) -> Part {
        match self.call(addr, &path(name), item, left).await {
            Ok((reply, false)) => Part::Answer(reply),
            Ok((reply, true)) => Part::Fallback(reply),
            Err(status) => Part::Missing(describe(&status)),
        }
    }

    /// Calls the `Get` at `path` on `addr`: the reply, and whether a sidecar's fallback gave it.
    pub(crate) async fn call(
        &self,
        addr: SocketAddr,
        path: &str,
        item: u64,
        left: Option<Duration>,
    ) -> Result<(Reply, bool), Status> {
        let origin = http::Uri::try_from(format!("http://{addr}"))
            .map_err(|err| Status::internal(err.to_string()))?;
        let mut grpc = tonic::client::Grpc::with_origin(self.inner.clone(), origin);
        let mut request = tonic::Request::new(ItemRequest { item });
        if let Some(left) = left {
            request.set_timeout(left);
        }
        grpc.ready()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let path = PathAndQuery::try_from(path).map_err(|err| Status::internal(err.to_string()))?;
        let codec = ProstCodec::<ItemRequest, ItemReply>::default();
        let response = grpc.unary(request, path, codec).await?;
        let fallback = response.metadata().contains_key("x-rampart-fallback");
        Ok((response.into_inner().into_reply(), fallback))
    }
}

/// A status as a short reason: its code, message, and the sidecar's `x-rampart-error`.
pub(crate) fn describe(status: &Status) -> String {
    let reason = status
        .metadata()
        .get("x-rampart-error")
        .and_then(|value| value.to_str().ok())
        .map(|reason| format!(" ({reason})"))
        .unwrap_or_default();
    format!("{:?}: {}{reason}", status.code(), status.message())
}

/// The gRPC front of a service: health checks, and its `Get`.
pub(crate) async fn handle(
    request: http::Request<Incoming>,
    service: Arc<Service>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    if request.uri().path().starts_with("/grpc.health.v1.Health/") {
        // The server as a whole ("") is SERVING from the start, and stays so: a slow or flaky
        // C still answers its health checks, as a live process does; its breakers judge it.
        let health = HealthService::from_health_reporter(HealthReporter::new());
        return HealthServer::new(health).call(request).await;
    }
    let deadline = request
        .headers()
        .get("grpc-timeout")
        .and_then(|value| parse_timeout(value.as_bytes()))
        .map(|left| Instant::now() + left);
    let get = Get { service, deadline };
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<ItemReply, ItemRequest>::default());
    Ok(grpc.unary(get, request).await)
}

/// One call of `Get`, as tonic's server hands it over.
struct Get {
    service: Arc<Service>,
    deadline: Option<Instant>,
}

type GetFuture = Pin<Box<dyn Future<Output = Result<tonic::Response<ItemReply>, Status>> + Send>>;

impl UnaryService<ItemRequest> for Get {
    type Response = ItemReply;
    type Future = GetFuture;

    fn call(&mut self, request: tonic::Request<ItemRequest>) -> GetFuture {
        let item = request.into_inner().item;
        let (service, deadline) = (self.service.clone(), self.deadline);
        Box::pin(async move {
            match service.answer(item, deadline).await {
                Ok(reply) => Ok(tonic::Response::new(ItemReply::from_reply(reply))),
                Err(failure) => {
                    let code = match failure {
                        Failure::Broken => Code::Internal,
                        Failure::DeadlinePassed => Code::DeadlineExceeded,
                        Failure::Dependency(_) => Code::Unavailable,
                    };
                    Err(Status::new(code, failure.message()))
                }
            }
        })
    }
}

/// Decodes a `grpc-timeout` value, as the proxy does.
fn parse_timeout(value: &[u8]) -> Option<Duration> {
    rampart_http::deadline::parse_grpc_timeout(value).ok()
}

/// A reply as a sidecar's gRPC fallback sends it: the message framed as on the wire (not
/// compressed, its length in four bytes, big-endian), ready for `[routes.fallback] body`.
pub(crate) fn framed(reply: &ItemReply) -> Vec<u8> {
    let message = prost::Message::encode_to_vec(reply);
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_decode() {
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"2"), None);
    }

    #[test]
    fn a_framed_reply_decodes_back() {
        let reply = ItemReply {
            service: "c".to_owned(),
            value: "null".to_owned(),
            degraded: Vec::new(),
        };
        let framed = framed(&reply);
        assert_eq!(framed[0], 0);
        assert_eq!(
            usize::try_from(u32::from_be_bytes(framed[1..5].try_into().unwrap())).unwrap(),
            framed.len() - 5
        );
        let decoded: ItemReply = prost::Message::decode(&framed[5..]).unwrap();
        assert_eq!(decoded, reply);
    }
}
