//! Requests forwarded through the proxy over real sockets: what the upstream sees, what the
//! client gets back, on HTTP/1.1 and h2c.

mod common;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode, Version};
use rampart_test_support::{Behavior, Upstream};

use common::*;

#[tokio::test]
async fn a_get_is_forwarded_without_hop_by_hop_headers_and_with_x_forwarded_for() {
    let upstream = Upstream::start(Behavior::ok("orders")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let request = request(&proxy, "/orders/7?fields=id")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "for this hop only")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "10.0.0.7")
        .header("accept", "text/plain")
        .body(Full::default())
        .unwrap();
    let response = send(&http1(), request).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "orders");
    assert_eq!(error_of(&response), None);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/orders/7?fields=id");
    assert_eq!(seen.headers["x-forwarded-for"], "10.0.0.7, 127.0.0.1");
    assert_eq!(seen.headers["accept"], "text/plain");
    for hop in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(hop), "{hop} was forwarded");
    }
    // The client's own Host goes on; the endpoint is where the request went.
    assert_eq!(seen.headers["host"], addr(&proxy).to_string());
    // The upstream learns how long the proxy waits (the default route timeout, 15 s).
    let left: u64 = seen.headers["x-rampart-deadline"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 0 && left <= 15_000, "{left}");
}

#[tokio::test]
async fn a_post_body_is_forwarded_and_the_response_body_comes_back() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let request = request(&proxy, "/orders")
        .method(Method::POST)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"item\":\"tea\"}")))
        .unwrap();
    let response = send(&http1(), request).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-method"], "POST");
    let seen = &upstream.requests()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/orders");
    assert_eq!(seen.body, "{\"item\":\"tea\"}");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    // The echo's body made it back whole.
    let echoed = String::from_utf8_lossy(response.body());
    assert!(echoed.contains("{\\\"item\\\":\\\"tea\\\"}"), "{echoed}");
}

#[tokio::test]
async fn http1_and_h2c_clients_share_one_listener() {
    let upstream = Upstream::start(Behavior::ok("hi")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let one = send(
        &http1(),
        request(&proxy, "/one").body(Full::default()).unwrap(),
    )
    .await;
    let two = send(
        &h2c(),
        request(&proxy, "/two").body(Full::default()).unwrap(),
    )
    .await;

    assert_eq!(
        (one.status().as_u16(), one.version()),
        (200, Version::HTTP_11)
    );
    assert_eq!(
        (two.status().as_u16(), two.version()),
        (200, Version::HTTP_2)
    );
    assert_eq!(two.body(), "hi");
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two"]);
    // The h2c request went to an HTTP/1.1 upstream, and still names the host it asked for.
    let seen = &upstream.requests()[1];
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], addr(&proxy).to_string());
}

#[tokio::test]
async fn an_http2_upstream_is_reached_by_h2c_prior_knowledge() {
    let upstream = Upstream::start(Behavior::ok("h2")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "protocol = \"http2\"").await;

    let response = get(&proxy, "/x").await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "h2");
    assert_eq!(upstream.requests()[0].version, Version::HTTP_2);
    assert_eq!(upstream.requests()[0].path, "/x");

    // h2c on both sides.
    let response = send(&h2c(), request(&proxy, "/y").body(Full::default()).unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.requests()[1].version, Version::HTTP_2);
    assert_eq!(upstream.requests()[1].path, "/y");
}

#[tokio::test]
async fn two_endpoints_take_turns() {
    let a = Upstream::start(Behavior::ok("a")).await.unwrap();
    let b = Upstream::start(Behavior::ok("b")).await.unwrap();
    let proxy = simple(&[a.addr(), b.addr()], "", "balance = \"round-robin\"").await;

    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&proxy, "/").await.into_body());
    }

    assert_eq!(bodies, ["a", "b", "a", "b"]);
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
}

#[tokio::test]
async fn routes_are_tried_in_file_order_by_prefix_path_host_method_and_headers() {
    let upstreams = [
        Upstream::start(Behavior::ok("exact")).await.unwrap(),
        Upstream::start(Behavior::ok("tenant")).await.unwrap(),
        Upstream::start(Behavior::ok("orders")).await.unwrap(),
        Upstream::start(Behavior::ok("post")).await.unwrap(),
        Upstream::start(Behavior::ok("host")).await.unwrap(),
    ];
    let proxy = proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"

        [[routes]]
        match = {{ path = "/orders/special" }}
        upstream = "u0"
        [[routes]]
        match = {{ path_prefix = "/orders", headers = {{ x-tenant = "blue" }} }}
        upstream = "u1"
        [[routes]]
        match = {{ path_prefix = "/orders" }}
        upstream = "u2"
        [[routes]]
        match = {{ method = "POST" }}
        upstream = "u3"
        [[routes]]
        match = {{ host = "billing.example" }}
        upstream = "u4"

        [upstreams.u0]
        endpoints = ["{}"]
        [upstreams.u1]
        endpoints = ["{}"]
        [upstreams.u2]
        endpoints = ["{}"]
        [upstreams.u3]
        endpoints = ["{}"]
        [upstreams.u4]
        endpoints = ["{}"]
        "#,
        upstreams[0].addr(),
        upstreams[1].addr(),
        upstreams[2].addr(),
        upstreams[3].addr(),
        upstreams[4].addr(),
    ))
    .await;
    let client = http1();
    let cases = [
        (request(&proxy, "/orders/special"), "exact"),
        (
            request(&proxy, "/orders/1").header("x-tenant", "blue"),
            "tenant",
        ),
        (
            request(&proxy, "/orders/1").header("x-tenant", "red"),
            "orders",
        ),
        (request(&proxy, "/ordersX").method(Method::POST), "orders"),
        (request(&proxy, "/other").method(Method::POST), "post"),
        (
            request(&proxy, "/other").header("host", "Billing.Example:80"),
            "host",
        ),
    ];
    for (builder, wanted) in cases {
        let response = send(&client, builder.body(Full::default()).unwrap()).await;
        assert_eq!(response.body(), wanted);
    }
}

#[tokio::test]
async fn an_absolute_form_target_does_not_pick_the_destination() {
    let upstream = Upstream::start(Behavior::ok("here")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let answer = raw(
        addr(&proxy),
        "GET http://elsewhere.example:9/steal?x=1 HTTP/1.1\r\nHost: elsewhere.example:9\r\n\
         Connection: close\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("here"), "{answer}");
    assert_eq!(upstream.requests()[0].path, "/steal?x=1");
}

/// A proxy routing `public.example` to the first upstream and everything else to the second.
async fn by_host(public: &Upstream, other: &Upstream) -> rampart_proxy::Proxy {
    proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nmatch = {{ host = \"public.example\" }}\nupstream = \"public\"\n\
         [[routes]]\nupstream = \"other\"\n\n\
         [upstreams.public]\nendpoints = [\"{}\"]\n\
         [upstreams.other]\nendpoints = [\"{}\"]\n",
        public.addr(),
        other.addr(),
    ))
    .await
}

#[tokio::test]
async fn an_absolute_form_target_with_an_empty_path_asks_for_the_root() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;

    for (target, path) in [
        ("http://public.example?x=1", "/?x=1"),
        ("http://public.example", "/"),
    ] {
        let head =
            format!("GET {target} HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n");
        let answer = raw(addr(&proxy), &head).await;
        assert!(answer.ends_with("public"), "{target}: {answer}");
        assert_eq!(public.requests().last().unwrap().path, path, "{target}");
    }
}

#[tokio::test]
async fn the_upstream_is_told_the_host_the_request_was_routed_by() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;

    // An absolute-form target's authority overrides Host (RFC 9112 §3.2.2): routed by it, and
    // the upstream reads it too, not the Host the route never looked at.
    let answer = raw(
        addr(&proxy),
        "GET http://public.example/abs HTTP/1.1\r\nHost: admin.internal\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("public"), "{answer}");
    assert_eq!(public.requests()[0].headers["host"], "public.example");
    assert_eq!(
        public.requests()[0].headers.get_all("host").iter().count(),
        1
    );

    // Likewise HTTP/2's `:authority` over a Host field.
    let mut sender = h2_connection(&proxy).await;
    let response = sender
        .send_request(
            http::Request::get("http://public.example/h2")
                .header("host", "admin.internal")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "public");
    assert_eq!(public.requests()[1].headers["host"], "public.example");
    assert_eq!(other.request_count(), 0);
}

#[tokio::test]
async fn an_http1_request_without_one_valid_host_gets_400_and_is_not_forwarded() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;

    for head in [
        // Two: the route would read one, the upstream perhaps the other.
        "GET /two HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\n",
        // None, in HTTP/1.1.
        "GET /none HTTP/1.1\r\n",
        // Not a host.
        "GET /invalid HTTP/1.1\r\nHost: a b@c\r\n",
        // Empty, or a port alone: an `http` URI's host is never empty.
        "GET /empty HTTP/1.1\r\nHost:\r\n",
        "GET /empty HTTP/1.1\r\nHost: \r\n",
        "GET /port HTTP/1.1\r\nHost: :80\r\n",
        // A port past 65535.
        "GET /port HTTP/1.1\r\nHost: public.example:65536\r\n",
    ] {
        let answer = raw(addr(&proxy), &format!("{head}Connection: close\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head}: {answer}");
        assert!(answer.contains("x-rampart-error: bad-request"), "{answer}");
        assert!(answer.contains("must name its host once"), "{answer}");
    }
    assert_eq!(public.request_count() + other.request_count(), 0);

    // An HTTP/1.0 client may name no host.
    let answer = raw(addr(&proxy), "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.ends_with("other"), "{answer}");
}

#[tokio::test]
async fn a_target_whose_authority_is_no_host_gets_400_and_goes_nowhere() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;
    for target in ["http://:80/x", "http://public.example:99999/x"] {
        let answer = raw(
            addr(&proxy),
            &format!("GET {target} HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("authority must be a host"), "{answer}");
    }
    assert_eq!(public.request_count() + other.request_count(), 0);
}

/// The answer to an HTTP/2 GET of `/h2` naming `authority` (none if `None`) and with `hosts`
/// as its Host fields, sent as is (hyper's client would mend them).
async fn h2_get_with_hosts(
    proxy: &rampart_proxy::Proxy,
    authority: Option<&str>,
    hosts: &[&str],
) -> http::Response<h2::RecvStream> {
    let tcp = tokio::net::TcpStream::connect(addr(proxy)).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let mut target = http::uri::Parts::default();
    if let Some(authority) = authority {
        target.scheme = Some(http::uri::Scheme::HTTP);
        target.authority = Some(authority.parse().unwrap());
    }
    target.path_and_query = Some(http::uri::PathAndQuery::from_static("/h2"));
    let mut request = Request::get(http::Uri::from_parts(target).unwrap());
    for host in hosts {
        request = request.header("host", *host);
    }
    let (response, _) = h2.send_request(request.body(()).unwrap(), true).unwrap();
    response.await.unwrap()
}

#[tokio::test]
async fn an_http2_request_whose_host_fields_are_unsound_gets_400_and_goes_nowhere() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;
    for (authority, hosts) in [
        // Two: the route would read one, the upstream perhaps the other.
        (None, &["other.example", "public.example"][..]),
        (
            Some("other.example"),
            &["other.example", "public.example"][..],
        ),
        // Not a host: credentials, nothing, a port alone.
        (None, &["u:p@public.example"][..]),
        (None, &[""][..]),
        (None, &[":80"][..]),
    ] {
        let response = h2_get_with_hosts(&proxy, authority, hosts).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{authority:?} {hosts:?}"
        );
        assert_eq!(response.headers()["x-rampart-error"], "bad-request");
    }
    assert_eq!(public.request_count() + other.request_count(), 0);

    // One alone, or beside `:authority`, which the upstream is told (see above).
    for (authority, hosts) in [
        (Some("public.example"), &["other.example"][..]),
        (None, &["public.example"][..]),
        (Some("public.example"), &[][..]),
    ] {
        let response = h2_get_with_hosts(&proxy, authority, hosts).await;
        assert_eq!(response.status(), StatusCode::OK, "{authority:?} {hosts:?}");
    }
    assert_eq!(public.request_count(), 3);
    assert_eq!(other.request_count(), 0);
}

#[tokio::test]
async fn credentials_in_a_targets_authority_get_400_and_go_nowhere() {
    let public = Upstream::start(Behavior::ok("public")).await.unwrap();
    let other = Upstream::start(Behavior::ok("other")).await.unwrap();
    let proxy = by_host(&public, &other).await;

    let answer = raw(
        addr(&proxy),
        "GET http://user:pw@public.example/abs HTTP/1.1\r\nHost: public.example\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-rampart-error: bad-request"), "{answer}");
    assert!(answer.contains("may not carry credentials"), "{answer}");

    // HTTP/2's `:authority` likewise.
    let mut sender = h2_connection(&proxy).await;
    let response = sender
        .send_request(
            http::Request::get("http://user:pw@public.example/h2")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-rampart-error"], "bad-request");
    assert_eq!(public.request_count() + other.request_count(), 0);
}

#[tokio::test]
async fn an_http2_upstream_is_told_the_clients_host_in_its_authority() {
    let upstream = Upstream::start(Behavior::ok("h2")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "protocol = \"http2\"").await;

    let response = send(
        &http1(),
        request(&proxy, "/x")
            .header("host", "app.example")
            .body(Full::default())
            .unwrap(),
    )
    .await;

    assert_eq!(response.status(), 200);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.version, Version::HTTP_2);
    // What a host match on the upstream's side reads; a Host field, if any, may not differ.
    assert_eq!(seen.authority.as_deref(), Some("app.example"));
    assert!(
        seen.headers
            .get("host")
            .is_none_or(|host| host == "app.example"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn request_trailers_go_on_without_the_fields_that_frame_or_route() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An upstream that keeps the bytes of the one request it reads, to its last chunk's end.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while !(got.ends_with(b"\r\n\r\n") && got.windows(5).any(|w| w == b"\r\n0\r\n")) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the request ended early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        stream.write_all(answer).await.unwrap();
        String::from_utf8(got).unwrap()
    });
    let proxy = simple(&[upstream], "", "").await;

    let answer = raw(
        addr(&proxy),
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         3\r\nabc\r\n0\r\nContent-Length: 50\r\nHost: elsewhere\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen.await.unwrap();
    let (_, trailers) = seen.rsplit_once("\r\n0\r\n").unwrap();
    assert!(trailers.contains("x-checksum: abc"), "{seen}");
    assert!(!trailers.contains("content-length"), "{seen}");
    assert!(!trailers.contains("elsewhere"), "{seen}");
}

#[tokio::test]
async fn an_answer_goes_back_without_what_frames_it_or_belongs_to_a_hop() {
    use http_body_util::BodyExt;
    use rampart_test_support::{Misbehaving, Step};

    // Trailers with fields that frame the message or speak of one connection, and a `TE`, a
    // request's field, in the head: an HTTP/2 client resets the stream of an answer carrying
    // either in its trailers (RFC 9113 §8.2.2).
    let trailered = Misbehaving::start(vec![
        Step::ReadRequest,
        Step::Write(Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
              Trailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\nx-checksum: abc\r\n\
              Content-Length: 99\r\nKeep-Alive: timeout=5\r\nConnection: close\r\n\r\n",
        )),
    ])
    .await
    .unwrap();
    // A 204 that says a length: it has no content to measure (RFC 9110 §8.6).
    let measured = Misbehaving::start(vec![
        Step::ReadRequest,
        Step::Write(Bytes::from_static(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\n",
        )),
    ])
    .await
    .unwrap();

    let proxy = simple(&[trailered.addr()], "", "").await;
    let mut sender = h2_connection::<Full<Bytes>>(&proxy).await;
    let mut response = sender
        .send_request(request(&proxy, "/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("te"), "{response:?}");
    let mut body = Vec::new();
    let mut trailers = None;
    while let Some(frame) = response.body_mut().frame().await {
        match frame.expect("the stream ends whole").into_data() {
            Ok(data) => body.extend_from_slice(&data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert_eq!(body, b"ok");
    let trailers = trailers.expect("the trailers came");
    assert_eq!(trailers["x-checksum"], "abc");
    for hop in ["content-length", "keep-alive", "connection"] {
        assert!(!trailers.contains_key(hop), "{hop}: {trailers:?}");
    }
    // Nor does an HTTP/1.1 client get the `TE`.
    let response = get(&proxy, "/").await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("te"), "{response:?}");

    let proxy = simple(&[measured.addr()], "", "").await;
    let mut sender = h2_connection::<Full<Bytes>>(&proxy).await;
    let response = sender
        .send_request(request(&proxy, "/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-kept"], "1");
    assert!(
        !response.headers().contains_key("content-length"),
        "{response:?}"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the stream ends whole");
    assert!(body.to_bytes().is_empty());
}

#[tokio::test]
async fn an_http10_client_that_asks_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start(Behavior::ok("orders")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;
    let mut stream = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    for i in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0; 1024];
        while !answer.ends_with(b"orders") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "request {i}: closed after {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
        assert!(answer.starts_with("http/1.0 200"), "{answer}");
        assert!(answer.contains("connection: keep-alive"), "{answer}");
    }
    // One that does not ask is answered, then the connection ends.
    let answer = raw(addr(&proxy), "GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("keep-alive"),
        "{answer}"
    );

    // An answer of unknown length ends with the connection, whatever the client asked.
    let chunked = rampart_test_support::Misbehaving::start(vec![
        rampart_test_support::Step::ReadRequest,
        rampart_test_support::Step::Write(Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )),
    ])
    .await
    .unwrap();
    let proxy = simple(&[chunked.addr()], "", "").await;
    let answer = raw(
        addr(&proxy),
        "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("keep-alive"),
        "{answer}"
    );
}

/// What a client gets through a proxy with `route` lines, posting a body of which it sends a
/// tenth before an upstream answers `answer` as soon as the head arrives, keeping its
/// connection; read until the proxy closes the connection.
async fn answered_early(answer: &'static [u8], route: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut read = Vec::new();
        let mut buf = vec![0; 64 << 10];
        while memchr::memmem::find(&read, b"\r\n\r\n").is_none() {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0);
            read.extend_from_slice(&buf[..n]);
        }
        stream.write_all(answer).await.unwrap();
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let proxy = simple(&[upstream], route, "").await;

    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    client.write_all(&[b'x'; 10_000]).await.unwrap();
    until_closed(&mut client).await
}

#[tokio::test]
async fn an_upload_answered_before_its_end_closes_the_clients_connection_after_the_answer() {
    // The answer says the connection ends with it: the rest of the upload cannot be told from
    // a next request.
    let answer = answered_early(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 2\r\n\r\nno",
        "[routes.retry]\nattempts = 1",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nno"), "{answer}");
    // So does a fallback in its place.
    let answer = answered_early(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
        "[routes.retry]\nattempts = 1\n[routes.fallback]\non = [\"5xx\"]\nstatus = 200\nbody = \"later\"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nlater"), "{answer}");
}

/// A proxy whose `/fault` route answers 503 by fault injection and whose `/app` route goes to
/// an upstream answering `read`; no route for anything else.
async fn rehearsal() -> (Upstream, rampart_proxy::Proxy) {
    let upstream = Upstream::start(Behavior::ok("read")).await.unwrap();
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"rehearsal\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/fault\" }}\n\
         [routes.fault]\nabort_status = 503\n\n\
         [[routes]]\nname = \"app\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/app\" }}\n\n\
         [upstreams.app]\nendpoints = [\"{}\"]\n",
        upstream.addr()
    ))
    .await;
    (upstream, proxy)
}

#[tokio::test]
async fn a_small_body_left_unread_is_drained_and_its_connection_carries_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let (_upstream, proxy) = rehearsal().await;
    // A refusal (an injected fault, no route) of a small POST, its body read and dropped after
    // the answer: the same connection then carries the next request, whose answer is the
    // upstream's.
    for path in ["/fault", "/nowhere"] {
        let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
        let post = format!(
            "POST {path} HTTP/1.1\r\nhost: app\r\ncontent-length: 3000\r\n\r\n{}",
            "x".repeat(3000)
        );
        client.write_all(post.as_bytes()).await.unwrap();
        client
            .write_all(b"GET /app HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answers = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_to_string(&mut answers),
        )
        .await
        .expect("both answered")
        .unwrap();
        let refusal = answers.split("HTTP/1.1 200").next().unwrap();
        assert!(!refusal.contains("connection: close"), "{path}: {answers}");
        assert!(answers.ends_with("\r\n\r\nread"), "{path}: {answers}");
    }

    // A client that waits for `100 Continue` before sending its body is spared the upload: its
    // connection closes after the refusal.
    let mut client = TcpStream::connect(addr(&proxy)).await.unwrap();
    client
        .write_all(
            b"POST /fault HTTP/1.1\r\nhost: app\r\ncontent-length: 3000\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}

#[tokio::test]
async fn a_body_left_unread_ends_the_clients_connection_whatever_answers_it() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let (_upstream, proxy) = rehearsal().await;
    // A tenth of the body, then what the proxy says and whether it closes.
    let post = |path: &'static str| {
        let addr = addr(&proxy);
        async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let head =
                format!("POST {path} HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n");
            client.write_all(head.as_bytes()).await.unwrap();
            client.write_all(&[b'x'; 10_000]).await.unwrap();
            until_closed(&mut client).await
        }
    };
    // An injected fault, and no route at all, answer without reading the body.
    for (path, status) in [("/fault", "503"), ("/nowhere", "404")] {
        let answer = post(path).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    }
    // A body read whole keeps its connection.
    let response = send(
        &http1(),
        request(&proxy, "/app")
            .method(Method::POST)
            .body(Full::new(Bytes::from_static(b"whole")))
            .unwrap(),
    )
    .await;
    assert_eq!(response.body(), "read");
    assert!(!response.headers().contains_key("connection"));
}

#[tokio::test]
async fn an_http2_upload_an_upstream_stopped_reading_holds_up_no_other_on_the_connection() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::{StreamExt, stream};
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    // An endpoint that takes connections and never reads them.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let _holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = stalled.accept().await {
            held.push(tcp);
        }
    });
    let echo = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        max_request_body = "1GiB"
        body_idle_timeout = "3s"

        [[routes]]
        match = {{ path_prefix = "/stalled" }}
        upstream = "stalled"
        retry = {{ attempts = 1 }}
        [[routes]]
        upstream = "echo"

        [upstreams.stalled]
        endpoints = ["{stalled_addr}"]
        [upstreams.echo]
        endpoints = ["{}"]
        "#,
        echo.addr(),
    ))
    .await;
    type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;
    let mut h2 = h2_connection::<Body>(&proxy).await;

    // An upload to the stalled endpoint, sent as fast as rampart lets it: past what the kernel
    // holds for the endpoint, rampart reads the client no further.
    let sent = Arc::new(AtomicUsize::new(0));
    let pieces = {
        let sent = sent.clone();
        stream::repeat_with(move || {
            sent.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[b'x'; 64 << 10])))
        })
        .take(16 << 10)
    };
    let upload = http::Request::post("http://app/stalled")
        .body(StreamBody::new(pieces).boxed_unsync())
        .unwrap();
    let stuck = h2.send_request(upload);
    let _stuck = tokio::spawn(stuck);
    let mut last = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }

    // Another upload on the same connection, to a healthy endpoint, goes through whole.
    let body = Bytes::from(vec![b'y'; 512 << 10]);
    let echoed = http::Request::post("http://app/echo")
        .body(
            Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let response = h2.send_request(echoed).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    })
    .await
    .expect("answered");
    assert_eq!(answer.0, 200, "{:?}", String::from_utf8_lossy(&answer.1));
    // The endpoint had the whole body.
    assert_eq!(echo.requests().last().unwrap().body, body);
}

#[tokio::test]
async fn an_asterisk_form_target_gets_400_over_either_protocol_and_goes_nowhere() {
    let upstream = Upstream::start(Behavior::ok("reached")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let answer = raw(
        addr(&proxy),
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("asterisk-form"), "{answer}");

    // `:path: *` (RFC 9113 §8.3.1), which hyper's client would not send.
    let tcp = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(addr(&proxy).to_string().parse().unwrap());
    target.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(http::Uri::from_parts(target).unwrap())
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["x-rampart-error"],
        "bad-request",
        "{response:?}"
    );
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn an_http2_field_value_padded_with_white_space_gets_400_and_goes_nowhere() {
    let upstream = Upstream::start(Behavior::ok("reached")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;
    let mut h2 = h2_connection::<Full<Bytes>>(&proxy).await;
    for value in [" admin", "admin\t", " a "] {
        let request = request(&proxy, "/")
            .header("x-role", value)
            .body(Full::default())
            .unwrap();
        let response = h2.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{value:?}");
        assert_eq!(response.headers()["x-rampart-error"], "bad-request");
    }
    // Inner white space is a value's own.
    let request = request(&proxy, "/")
        .header("x-role", "a b")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        h2.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn a_path_is_routed_as_the_path_its_dot_segments_and_escapes_name() {
    let public = Upstream::start(Behavior::Echo).await.unwrap();
    let internal = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = proxy(&format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nmatch = {{ path_prefix = \"/public/\" }}\nupstream = \"public\"\n\n\
         [[routes]]\nmatch = {{ path_prefix = \"/internal/\" }}\nupstream = \"internal\"\n\n\
         [upstreams.public]\nendpoints = [\"{}\"]\n\n\
         [upstreams.internal]\nendpoints = [\"{}\"]\n",
        public.addr(),
        internal.addr()
    ))
    .await;

    // Matched as it came, each would have gone to `public` under its route's policies. It goes
    // on as it came: an upstream that resolves it serves the path matched.
    for target in [
        "/public/../internal/keys?x=1",
        "/public/%2e%2e/internal/keys?x=1",
        "/%69nternal/keys",
        "/public/%2E./%69%6E%74ernal/keys",
    ] {
        let answer = raw(
            addr(&proxy),
            &format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        assert!(
            answer.contains(&format!("x-echo-path: {target}")),
            "{target}: {answer}"
        );
    }
    assert_eq!(public.request_count(), 0);
    assert_eq!(internal.request_count(), 4);
}
