//! What the admin API's tests share: an HTTP/1.1 client and an event stream reader.

#![allow(dead_code)] // Each test binary uses its own part.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One answer: status, a few headers' values and the body as text.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) cache_control: Option<String>,
    pub(crate) rampart_error: Option<String>,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    /// The value of the header `name`, if there is one.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) async fn call(request: Request<Full<Bytes>>) -> Answer {
    let response = client().request(request).await.expect("an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_type, cache_control, rampart_error) = (
        response.status(),
        header("content-type").unwrap_or_default(),
        header("cache-control"),
        header("x-rampart-error"),
    );
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        cache_control,
        rampart_error,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> Answer {
    let uri = format!("http://{addr}{path}");
    call(Request::get(uri).body(Full::default()).unwrap()).await
}

/// A request of `method` to `path`, without a body.
pub(crate) async fn request(addr: SocketAddr, method: http::Method, path: &str) -> Answer {
    let uri = format!("http://{addr}{path}");
    call(
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

pub(crate) async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut request = Request::post(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    call(
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// Opens the event stream at `path`: its body, after checking it is one.
pub(crate) async fn events(addr: SocketAddr, path: &str) -> Incoming {
    let uri = format!("http://{addr}{path}");
    let response = client()
        .request(Request::get(uri).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response.into_body()
}

/// The next event of an SSE stream: its name and its data, read as JSON.
pub(crate) async fn next_event(body: &mut Incoming, buffer: &mut String) -> (String, Value) {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {event:?}"))
                    .to_owned()
            };
            let data = field("data: ");
            let data = serde_json::from_str(&data).unwrap_or_else(|err| panic!("{err}: {data}"));
            return (field("event: "), data);
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}
