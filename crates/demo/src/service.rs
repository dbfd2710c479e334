//! The demo's services, A, B, C and D: one process each, `rampart __demo-service --role ...`.
//!
//! - **C** is the leaf everything depends on (stock levels). It has 16 workers, as a service has
//!   a thread pool or database connections: a request waits for one, then takes a few
//!   milliseconds of work. The demo switches how it behaves through its standard input
//!   ([`Mode`]): slow (each request holds a worker for seconds, so a queue builds up in front of
//!   the workers), flaky (a share of the answers are 500s). It honours the deadline a request
//!   carries (`x-rampart-deadline`, `grpc-timeout`): a request whose caller has given up by the
//!   time a worker is free is answered at once, not worked on.
//! - **D** (recommendations) answers in a few milliseconds.
//! - **B** (the item) calls C and builds its answer from C's: without one it fails.
//! - **A** (the page) calls B and D in parallel and answers with what it got, saying which parts
//!   are stand-ins (`degraded`: a caller further down answered with a fallback) and which are
//!   missing (a call failed). It fails only when every part is missing.
//! - **Orders** (the `async` scenario): the client posts `POST /order/<n>` to A, which places it
//!   with C (`POST /c/order/<n>`, the call named `orders`) and answers 200 when C took it, 202
//!   when it was queued for C (its sidecar's async route answered 202), 502 otherwise. C writes
//!   the number of each order it takes to its `--orders` file.
//!
//! A service neither knows nor cares whether it calls the next one directly (naive) or through
//! its sidecar (protected): the address it is given is all that changes. What it does see is
//! what a sidecar adds: `x-rampart-fallback` on a stand-in answer (the part is then `degraded`),
//! and the time left in `x-rampart-deadline`, which B passes on to C as any service should.
//!
//! The first line a service writes on stdout is the address it listens on; then each line it
//! reads on stdin is a [`Mode`] for C, acknowledged with `ok`. When stdin closes (the demo ended,
//! or died) the service exits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::{Protocol, ServiceArgs, grpc};

/// The header a sidecar puts on a fallback answer (CONTRACT.md).
const FALLBACK: &str = "x-rampart-fallback";
/// The header carrying the milliseconds left to a request (CONTRACT.md).
pub(crate) const DEADLINE: &str = "x-rampart-deadline";
/// C's workers: how many requests it works on at once.
const WORKERS: usize = 16;

/// One of the demo's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// The page the client asks for: calls B and D in parallel.
    A,
    /// The item: calls C.
    B,
    /// Stock levels: the leaf the faults are injected into.
    C,
    /// Recommendations.
    D,
}

impl Role {
    /// The service's name, as in paths and reports: `a`, `b`, `c`, `d`.
    pub fn name(self) -> &'static str {
        match self {
            Role::A => "a",
            Role::B => "b",
            Role::C => "c",
            Role::D => "d",
        }
    }
}

/// A service that a service calls: its name and the addresses it is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `b`, `c` or `d`.
    pub name: String,
    /// Taken in turn, one per call.
    pub addrs: Vec<SocketAddr>,
}

impl Call {
    /// Parses `NAME=ADDR[,ADDR...]`.
    pub fn parse(text: &str) -> Result<Call, String> {
        let (name, addrs) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not NAME=ADDR[,ADDR...]"))?;
        let addrs = addrs
            .split(',')
            .map(|addr| addr.parse().map_err(|err| format!("`{addr}`: {err}")))
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        Ok(Call {
            name: name.to_owned(),
            addrs,
        })
    }

    /// The argument [`parse`](Self::parse) reads back.
    pub(crate) fn to_arg(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        format!("{}={}", self.name, addrs.join(","))
    }
}

/// How C answers; the demo sends one per line on C's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A few milliseconds of work per request.
    Normal,
    /// Each request holds a worker this long.
    Slow(Duration),
    /// This percentage of the answers are 500s.
    Flaky(u8),
}

impl Mode {
    /// The line the service reads: `normal`, `slow MS`, `flaky PERCENT`.
    pub(crate) fn to_line(self) -> String {
        match self {
            Mode::Normal => "normal".to_owned(),
            Mode::Slow(delay) => format!("slow {}", delay.as_millis()),
            Mode::Flaky(percent) => format!("flaky {percent}"),
        }
    }

    fn parse(line: &str) -> Option<Mode> {
        let mut words = line.split_whitespace();
        let mode = match (words.next()?, words.next()) {
            ("normal", None) => Mode::Normal,
            ("slow", Some(ms)) => Mode::Slow(Duration::from_millis(ms.parse().ok()?)),
            ("flaky", Some(percent)) => Mode::Flaky(percent.parse().ok().filter(|p| *p <= 100)?),
            _ => return None,
        };
        words.next().is_none().then_some(mode)
    }
}

/// What a called service's answer is to its caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    /// A real answer; `degraded` names the parts of it that were stand-ins further down.
    Answer(Reply),
    /// A stand-in that protection chose to give (a sidecar's fallback, configured or stale).
    Fallback(Reply),
    /// The call failed; why.
    Missing(String),
}

/// A service's answer, the same over HTTP (a JSON object) and gRPC (a message whose `value` is
/// JSON text).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// Which service answered.
    pub(crate) service: String,
    /// What it answered; `null` in a configured fallback.
    pub(crate) value: Value,
    /// The parts of the answer that are stand-ins, by service name.
    pub(crate) degraded: Vec<String>,
}

impl Reply {
    pub(crate) fn to_json(&self) -> Value {
        json!({"service": self.service, "value": self.value, "degraded": self.degraded})
    }

    pub(crate) fn from_json(json: &Value) -> Option<Reply> {
        Some(Reply {
            service: json.get("service")?.as_str()?.to_owned(),
            value: json.get("value").cloned().unwrap_or(Value::Null),
            degraded: json
                .get("degraded")?
                .as_array()?
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// Why a service gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// C failed the request (flaky): HTTP 500, gRPC INTERNAL.
    Broken,
    /// The caller's deadline passed before the work began: 504, DEADLINE_EXCEEDED.
    DeadlinePassed,
    /// A part this service cannot answer without is missing: 502, UNAVAILABLE.
    Dependency(String),
}

impl Failure {
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::Broken => "failed while working on it".to_owned(),
            Failure::DeadlinePassed => "the caller's deadline passed before work began".to_owned(),
            Failure::Dependency(why) => why.clone(),
        }
    }
}

/// A running service: its role, what it calls, and C's workers, mode and orders file.
#[derive(Debug)]
pub(crate) struct Service {
    role: Role,
    calls: HashMap<String, Downstream>,
    workers: Semaphore,
    mode: Mutex<Mode>,
    orders: Option<Mutex<std::fs::File>>,
}

/// What became of an order A placed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placed {
    /// C took it.
    Taken,
    /// It was stored to be delivered to C later.
    Queued,
    /// Neither; why.
    Failed(String),
}

// === impl Service ===

impl Service {
    fn new(
        role: Role,
        protocol: Protocol,
        calls: Vec<Call>,
        orders: Option<std::fs::File>,
    ) -> Service {
        let calls = calls
            .into_iter()
            .map(|call| (call.name.clone(), Downstream::new(protocol, call)))
            .collect();
        Service {
            role,
            calls,
            workers: Semaphore::new(WORKERS),
            mode: Mutex::new(Mode::Normal),
            orders: orders.map(Mutex::new),
        }
    }

    /// A: places order `n` with C.
    async fn place(&self, n: u64) -> Placed {
        match self.calls.get("orders") {
            Some(downstream) => downstream.place(n).await,
            None => Placed::Failed("no address to place orders at".to_owned()),
        }
    }

    /// C: takes order `n`, which is done once it is written down.
    async fn take_order(&self, n: u64) -> Result<(), String> {
        let _worker = self.workers.acquire().await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(2..6))).await;
        let Some(orders) = &self.orders else {
            return Err("this service takes no orders".to_owned());
        };
        let mut file = orders.lock().unwrap_or_else(PoisonError::into_inner);
        // One write per order, appended: what was written survives a SIGKILL of this process.
        file.write_all(format!("{n}\n").as_bytes())
            .map_err(|err| format!("cannot write the order down: {err}"))
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to a request for `item`, which must be answered by `deadline` if it has one.
    pub(crate) async fn answer(
        &self,
        item: u64,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        let value = match self.role {
            Role::C => return self.stock(item, deadline).await,
            Role::D => {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(3..8))).await;
                json!({"item": item, "also_bought": [item + 1, item + 2, item + 3]})
            }
            Role::B => {
                return match self.call("c", item, deadline).await {
                    Part::Answer(c) => Ok(self.reply(json!({"item": item, "stock": c.value}), c)),
                    Part::Fallback(mut c) => {
                        c.degraded.push("c".to_owned());
                        Ok(self.reply(json!({"item": item, "stock": c.value}), c))
                    }
                    Part::Missing(why) => Err(Failure::Dependency(format!("c: {why}"))),
                };
            }
            Role::A => return self.page(item, deadline).await,
        };
        Ok(Reply {
            service: self.role.name().to_owned(),
            value,
            degraded: Vec::new(),
        })
    }

    /// B's answer around C's: stand-ins further down stay stand-ins.
    fn reply(&self, value: Value, from: Reply) -> Reply {
        Reply {
            service: self.role.name().to_owned(),
            value,
            degraded: from.degraded,
        }
    }

    /// A: B and D in parallel, the page built from what came back.
    async fn page(&self, item: u64, deadline: Option<Instant>) -> Result<Reply, Failure> {
        let (b, d) = tokio::join!(
            self.call("b", item, deadline),
            self.call("d", item, deadline)
        );
        let mut value = serde_json::Map::new();
        let (mut degraded, mut missing) = (Vec::new(), Vec::new());
        for (name, part) in [("b", b), ("d", d)] {
            match part {
                Part::Answer(reply) => {
                    degraded.extend(reply.degraded);
                    value.insert(name.to_owned(), reply.value);
                }
                Part::Fallback(reply) => {
                    degraded.extend(reply.degraded);
                    degraded.push(name.to_owned());
                    value.insert(name.to_owned(), reply.value);
                }
                Part::Missing(why) => {
                    value.insert(name.to_owned(), Value::Null);
                    missing.push(json!({"part": name, "why": why}));
                }
            }
        }
        if value.values().all(Value::is_null) && !missing.is_empty() {
            let whys: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(Failure::Dependency(whys.join("; ")));
        }
        degraded.sort();
        degraded.dedup();
        value.insert("item".to_owned(), json!(item));
        value.insert("missing".to_owned(), Value::Array(missing));
        Ok(Reply {
            service: "a".to_owned(),
            value: Value::Object(value),
            degraded,
        })
    }

    /// C's work: wait for a worker, then work as the mode says.
    async fn stock(&self, item: u64, deadline: Option<Instant>) -> Result<Reply, Failure> {
        let _worker = self.workers.acquire().await;
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Failure::DeadlinePassed);
        }
        let work = Duration::from_millis(fastrand::u64(2..6));
        match self.mode() {
            Mode::Normal => tokio::time::sleep(work).await,
            Mode::Slow(delay) => tokio::time::sleep(delay).await,
            Mode::Flaky(percent) => {
                tokio::time::sleep(work).await;
                if fastrand::u8(0..100) < percent {
                    return Err(Failure::Broken);
                }
            }
        }
        Ok(Reply {
            service: "c".to_owned(),
            value: json!({"item": item, "in_stock": item % 7 + 1}),
            degraded: Vec::new(),
        })
    }

    async fn call(&self, name: &str, item: u64, deadline: Option<Instant>) -> Part {
        match self.calls.get(name) {
            Some(downstream) => downstream.fetch(item, deadline).await,
            None => Part::Missing(format!("no address to call {name} at")),
        }
    }
}

/// One service called, over one protocol, its addresses taken in turn.
#[derive(Debug)]
struct Downstream {
    call: Call,
    next: AtomicUsize,
    client: Client<HttpConnector, Empty<Bytes>>,
    grpc: Option<grpc::Client>,
}

// === impl Downstream ===

impl Downstream {
    fn new(protocol: Protocol, call: Call) -> Downstream {
        // The textbook client: hyper's defaults, so no timeout, no retry, nothing.
        let client = Client::builder(TokioExecutor::new()).build(connector());
        let grpc = (protocol == Protocol::Grpc).then(grpc::Client::new);
        Downstream {
            call,
            next: AtomicUsize::new(0),
            client,
            grpc,
        }
    }

    /// The address of the next call: each in turn.
    fn next_addr(&self) -> SocketAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.call.addrs[n % self.call.addrs.len()]
    }

    async fn fetch(&self, item: u64, deadline: Option<Instant>) -> Part {
        let addr = self.next_addr();
        // The time left goes on, so that the next hop does not work for a caller that is gone.
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if let Some(grpc) = &self.grpc {
            return grpc.fetch(addr, &self.call.name, item, left).await;
        }
        let mut request = Request::get(format!("http://{addr}/{}/item/{item}", self.call.name));
        if let Some(left) = left {
            request = request.header(DEADLINE, left.as_millis().to_string());
        }
        let Ok(request) = request.body(Empty::new()) else {
            return Part::Missing("cannot build the request".to_owned());
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => return Part::Missing(transport_error(&err)),
        };
        let fallback = response.headers().contains_key(FALLBACK);
        let status = response.status();
        let why = response
            .headers()
            .get("x-rampart-error")
            .and_then(|value| value.to_str().ok())
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => return Part::Missing(format!("the answer broke off: {err}")),
        };
        if !status.is_success() {
            return Part::Missing(format!("{status}{why}"));
        }
        let reply = serde_json::from_slice(&body)
            .ok()
            .and_then(|json| Reply::from_json(&json));
        match (reply, fallback) {
            (Some(reply), false) => Part::Answer(reply),
            (Some(reply), true) => Part::Fallback(reply),
            (None, _) => Part::Missing("an answer that is not a reply".to_owned()),
        }
    }
}

impl Downstream {
    /// Posts order `n` to C (directly, or to the async route of the sidecar).
    async fn place(&self, n: u64) -> Placed {
        let addr = self.next_addr();
        let Ok(request) = Request::post(format!("http://{addr}/c/order/{n}")).body(Empty::new())
        else {
            return Placed::Failed("cannot build the request".to_owned());
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => return Placed::Failed(transport_error(&err)),
        };
        let status = response.status();
        // Read to the end, so that the connection can carry the next order.
        let _ = response.into_body().collect().await;
        match status {
            StatusCode::ACCEPTED => Placed::Queued,
            status if status.is_success() => Placed::Taken,
            status => Placed::Failed(format!("C answered {status}")),
        }
    }
}

/// hyper's connector, with Nagle's algorithm off (as tonic, curl and most clients have it):
/// otherwise a request written in more than one piece (HTTP/2 frames, a gRPC call) waits for
/// the peer's delayed ACK, 40 ms a hop, which would be measured as the services' latency.
pub(crate) fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// hyper's client errors say little in their own text; their source says what happened.
fn transport_error(err: &hyper_util::client::legacy::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// `rampart __demo-service`: serves until stdin closes.
pub(crate) fn serve(args: ServiceArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("rampart demo service: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                say!(
                    "rampart demo service: cannot listen on {}: {err}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        let orders = match &args.orders {
            None => None,
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => Some(file),
                Err(err) => {
                    say!(
                        "rampart demo service: cannot open {}: {err}",
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            },
        };
        let service = Arc::new(Service::new(args.role, args.protocol, args.calls, orders));
        if !say(&addr.to_string()) {
            return ExitCode::FAILURE;
        }
        let serving = match args.protocol {
            Protocol::Http => tokio::spawn(accept(listener, service.clone(), false)),
            Protocol::Grpc => tokio::spawn(accept(listener, service.clone(), true)),
        };
        control(&service).await;
        serving.abort();
        ExitCode::SUCCESS
    })
}

/// Writes a line on stdout for the demo; false when the demo is gone.
fn say(line: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// Reads modes from stdin until it closes.
async fn control(service: &Service) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match Mode::parse(&line) {
            Some(mode) => {
                service.set_mode(mode);
                "ok".to_owned()
            }
            None => format!("unknown mode `{line}`"),
        };
        if !say(&answer) {
            return;
        }
    }
}

async fn accept(listener: TcpListener, service: Arc<Service>, grpc: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        // Nagle's algorithm off on this side too (see `connector`).
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let builder = auto::Builder::new(TokioExecutor::new());
            if grpc {
                let handler = service_fn(move |request| grpc::handle(request, service.clone()));
                let _ = builder.http2_only().serve_connection(io, handler).await;
            } else {
                let handler = service_fn(move |request| handle(request, service.clone()));
                let _ = builder.serve_connection(io, handler).await;
            }
        });
    }
}

/// The HTTP front of a service: `GET /healthz`, and `GET /<role>/item/<id>` (A's is `/item/<id>`,
/// the path the client asks for); A takes `POST /order/<n>`, C `POST /c/order/<n>`.
async fn handle(
    request: Request<Incoming>,
    service: Arc<Service>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path == "/healthz" {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    if request.method() == http::Method::POST {
        return Ok(order(path, &service).await);
    }
    let prefix = match service.role {
        Role::A => "/item/".to_owned(),
        role => format!("/{}/item/", role.name()),
    };
    let Some(item) = path
        .strip_prefix(&prefix)
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such path; ask for {prefix}<number>")}),
        ));
    };
    let deadline = request
        .headers()
        .get(DEADLINE)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    Ok(match service.answer(item, deadline).await {
        Ok(reply) => json_response(StatusCode::OK, &reply.to_json()),
        Err(failure) => {
            let status = match failure {
                Failure::Broken => StatusCode::INTERNAL_SERVER_ERROR,
                Failure::DeadlinePassed => StatusCode::GATEWAY_TIMEOUT,
                Failure::Dependency(_) => StatusCode::BAD_GATEWAY,
            };
            let body = json!({"service": service.role.name(), "error": failure.message()});
            json_response(status, &body)
        }
    })
}

/// `POST /order/<n>` on A, `POST /c/order/<n>` on C.
async fn order(path: &str, service: &Service) -> Response<Full<Bytes>> {
    let prefix = match service.role {
        Role::A => "/order/",
        Role::C => "/c/order/",
        _ => "",
    };
    let Some(n) = path
        .strip_prefix(prefix)
        .filter(|_| !prefix.is_empty())
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "orders are posted to A at /order/<number>"}),
        );
    };
    if service.role == Role::C {
        return match service.take_order(n).await {
            Ok(()) => json_response(StatusCode::OK, &json!({"service": "c", "order": n})),
            Err(why) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": why})),
        };
    }
    match service.place(n).await {
        Placed::Taken => json_response(StatusCode::OK, &json!({"order": n, "status": "taken"})),
        Placed::Queued => json_response(
            StatusCode::ACCEPTED,
            &json!({"order": n, "status": "queued"}),
        ),
        Placed::Failed(why) => {
            json_response(StatusCode::BAD_GATEWAY, &json!({"order": n, "error": why}))
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_back_what_they_write() {
        for mode in [
            Mode::Normal,
            Mode::Slow(Duration::from_millis(2000)),
            Mode::Flaky(50),
        ] {
            assert_eq!(Mode::parse(&mode.to_line()), Some(mode));
        }
        assert_eq!(Mode::parse("flaky 101"), None);
        assert_eq!(Mode::parse("slow"), None);
        assert_eq!(Mode::parse("normal 3"), None);
    }

    #[test]
    fn calls_read_back_what_they_write() {
        let call = Call::parse("c=127.0.0.1:1,127.0.0.1:2").unwrap();
        assert_eq!(call.addrs.len(), 2);
        assert_eq!(Call::parse(&call.to_arg()), Ok(call));
        assert!(Call::parse("c").is_err());
        assert!(Call::parse("c=nowhere").is_err());
    }
}
