//! An HTTP client behind one `Pipeline`, as a tower layer: retries that honour `Retry-After`, a
//! timeout per attempt and a circuit breaker, around hyper's client, against a real server.
//!
//! The server (on a port of its own, on loopback) answers by a script keyed on the request number,
//! so every run tells the same story: most requests get `200 stock: 7`; every fourth one, starting
//! with the second, gets `503` with `Retry-After: 1`; every fourth, starting with the fourth,
//! hangs for 2 s. The client's pipeline:
//!
//! - judges a 5xx or a transport error a failure, and reads `Retry-After` from a failed answer
//!   (`Hinted`), so the retry after a 503 waits the second the server asked for, not the 50 ms
//!   backoff;
//! - cuts an attempt at 300 ms, so a hung request is retried at once rather than waited for;
//! - bounds each call at 3 s altogether, retries included;
//! - puts a breaker in front, which stays closed here: every failure is followed by a success.
//!
//! It prints one line per call (its status, the server's attempts, the time it took) and the
//! breaker's state at the end.
//!
//! ```sh
//! cargo run -p rampart-policy --example http_client
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_policy::breaker::CircuitBreaker;
use rampart_policy::classify::{Hinted, Outcome};
use rampart_policy::error::BoxError;
use rampart_policy::pipeline::Pipeline;
use rampart_policy::retry::{ExponentialBackoff, Retry};
use rampart_policy::{Error, Rejected};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// What an attempt gives back, as the pipeline's classifier sees it.
type Attempt = Result<Response<Incoming>, Error<BoxError>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let received = Arc::new(AtomicU32::new(0));
    let address = serve(received.clone()).await?;

    let ms = Duration::from_millis;
    let breaker = CircuitBreaker::new();
    let pipeline = Pipeline::builder()
        .classify(Hinted {
            classify: |attempt: &Attempt| match attempt {
                Ok(response) if response.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
            hint: |attempt: &Attempt| {
                let seconds = attempt.as_ref().ok()?.headers().get(header::RETRY_AFTER)?;
                Some(Duration::from_secs(seconds.to_str().ok()?.parse().ok()?))
            },
        })
        .timeout(ms(3000))
        .retry(Retry::new(3, ExponentialBackoff::new(ms(50), ms(500))?)?)
        .breaker(breaker.clone())
        .attempt_timeout(ms(300))
        .build();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    // `Request<Full<Bytes>>` is `Clone`, which is how the retries copy it.
    let service = pipeline.layer().layer(client);

    for call in 1..=6 {
        let before = received.load(Ordering::Relaxed);
        let start = Instant::now();
        let request = Request::get(format!("http://{address}/stock"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let answer = match service.clone().oneshot(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                format!("{status} {}", String::from_utf8_lossy(&body))
            }
            Err(err) => match Rejected::from_below(&*err) {
                Some(refusal) => format!("refused: {refusal}"),
                None => format!("failed: {err}"),
            },
        };
        let attempts = received.load(Ordering::Relaxed) - before;
        println!(
            "call {call}: {answer:<16} after {attempts} attempt(s), {:>5} ms",
            start.elapsed().as_millis()
        );
    }
    println!("breaker: {:?}", breaker.state());
    Ok(())
}

/// Starts the scripted server; returns its address.
async fn serve(received: Arc<AtomicU32>) -> Result<std::net::SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let n = received.fetch_add(1, Ordering::Relaxed) + 1;
                answer(n)
            });
            tokio::spawn(async move {
                // A hung request's connection is dropped by the client: not worth reporting.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

/// The script: the `n`th request's answer.
async fn answer(n: u32) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match n % 4 {
        2 => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::RETRY_AFTER, "1")
            .body(Full::new(Bytes::from_static(b"busy"))),
        0 => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::builder().body(Full::new(Bytes::from_static(b"late")))
        }
        _ => Response::builder().body(Full::new(Bytes::from_static(b"stock: 7"))),
    };
    Ok(response.expect("a valid response"))
}
