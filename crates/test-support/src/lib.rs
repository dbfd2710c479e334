//! Test fixtures for rampart's integration tests: real sockets on 127.0.0.1, ports chosen by the
//! kernel, and nothing left running once a fixture is dropped.
//!
//! - [`FaultProxy`]: a TCP proxy that injects latency, resets, refusals, black holes and resets
//!   in the middle of a body, switchable while connections are open.
//! - [`Upstream`]: an HTTP/1.1 and h2c server answering as scripted (fail, slow, hang, reset, drip
//!   the body, echo) and recording every request it received.
//! - [`GrpcUpstream`]: a gRPC server (tonic) of a small echo service answering as scripted
//!   (fail in the headers or in the trailers, slow, hang), recording each call and the
//!   `grpc-timeout` it came with, and answering `grpc.health.v1` health checks as set
//!   ([`ServingStatus`]); [`EchoClient`] is a tonic client for it.
//! - [`ChildUpstream`]: the same upstreams (HTTP or gRPC) in a process of their own, to SIGKILL
//!   for real and bring back on the same port.
//! - [`Misbehaving`]: a raw TCP upstream running a script of [`Step`]s: garbage, broken framing,
//!   resets, drips, HTTP/2 frames such as RST_STREAM and GOAWAY, written byte for byte; and
//!   [`Refusing`], a port that refuses connections.
//! - [`ProxyBuilder`]: a rampart proxy in the test's own process, from configuration text.

mod fault;
mod grpc;
mod misbehave;
mod nats;
mod process;
mod proxy;
mod temp;
mod upstream;

pub use fault::{Fault, FaultProxy};
pub use grpc::{EchoClient, EchoReply, EchoRequest, GrpcBehavior, GrpcUpstream, SAY, SeenCall};
pub use misbehave::{H2Code, Misbehaving, Refusing, Step};
pub use nats::NatsServer;
pub use process::{ChildUpstream, UPSTREAM_BINARY, open_file_limits};
pub use proxy::ProxyBuilder;
pub use temp::TempDir;
pub use tonic_health::ServingStatus;
pub use upstream::{Behavior, ParseBehaviorError, SeenRequest, Upstream};
