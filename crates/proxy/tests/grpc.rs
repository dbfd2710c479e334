//! gRPC through rampart, over real sockets: tonic clients -> rampart (`protocol = "grpc"`) ->
//! tonic servers. Deadlines, synthetic errors the gRPC way, a status in the trailers feeding the
//! breaker, retries to another endpoint, and fallbacks for gRPC clients.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use rampart_proxy::Proxy;
use rampart_test_support::{
    Behavior, EchoClient, EchoRequest, GrpcBehavior, GrpcUpstream, Refusing, SAY, Upstream,
};
use tonic::{Code, Status};

use common::*;

/// A proxy with one route to one gRPC upstream of these endpoints, `route` and `upstream` lines
/// added to each table.
async fn grpc_proxy(endpoints: &[SocketAddr], route: &str, upstream: &str) -> Proxy {
    simple(
        endpoints,
        route,
        &format!("protocol = \"grpc\"\n{upstream}"),
    )
    .await
}

fn say(message: &str) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        message: message.to_owned(),
    })
}

/// A metadata value of a failed call, if any.
fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status
        .metadata()
        .get(key)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn a_unary_call_passes_through_with_its_status_message_and_metadata() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
    let proxy = grpc_proxy(&[upstream.addr()], "", "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    let mut request = say("hello");
    request
        .metadata_mut()
        .insert("x-trace", "abc".parse().unwrap());
    let response = client.call(request).await.unwrap();
    assert!(response.metadata().get("x-rampart-error").is_none());
    let reply = response.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.served_by, upstream.addr().to_string());

    let seen = &upstream.calls()[0];
    assert_eq!(seen.path, SAY);
    assert_eq!(seen.message, "hello");
    assert_eq!(seen.headers["x-trace"], "abc");
    assert!(
        seen.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc")
    );
    // The route's timeout (15 s by default) went along as the call's deadline.
    let timeout = seen.timeout.expect("a grpc-timeout went upstream");
    assert!(timeout > Duration::ZERO && timeout <= Duration::from_secs(15));

    // An error of the upstream's own reaches the client as it is, code and message.
    upstream.set_behavior(GrpcBehavior::Fail(Code::NotFound));
    let status = client.say("missing").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "failed as scripted");
    assert_eq!(meta(&status, "x-rampart-error"), None);
}

#[tokio::test]
async fn a_client_deadline_of_300ms_ends_a_hanging_call_with_deadline_exceeded() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Hang).await.unwrap();
    let proxy = grpc_proxy(&[upstream.addr()], "", "").await;
    // A client without a timer of its own: what it gets is what rampart answered.
    let mut client = EchoClient::connect_untimed(addr(&proxy));

    let mut request = say("wait");
    request.set_timeout(Duration::from_millis(300));
    // Ended by the deadline, not by the route's 15 s timeout.
    let status = tokio::time::timeout(Duration::from_secs(10), client.call(request))
        .await
        .expect("ended by the client's deadline")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("deadline-exceeded"));

    upstream.wait_for_calls(1).await;
    let timeout = upstream.calls()[0]
        .timeout
        .expect("a grpc-timeout went upstream");
    assert!(timeout > Duration::ZERO, "{timeout:?}");
    assert!(timeout <= Duration::from_millis(300), "{timeout:?}");
}

#[tokio::test]
async fn a_client_deadline_passing_mid_reply_is_not_the_endpoints_failure() {
    // The reply's head comes at once, its status only after 5 s: clients that ask for 300 ms
    // give up in the middle of the body, which says nothing about the endpoint.
    let upstream = GrpcUpstream::start(GrpcBehavior::SlowBody(Duration::from_secs(5)))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"",
    )
    .await;
    let mut client = EchoClient::connect_untimed(addr(&proxy));
    for i in 0..3 {
        let mut request = say("hurry");
        request.set_timeout(Duration::from_millis(300));
        let status = tokio::time::timeout(Duration::from_secs(10), client.call(request))
            .await
            .expect("ended by the client's deadline")
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "call {i}: {status:?}"
        );
    }
    // The breaker, which opens at two failures, still admits.
    upstream.set_behavior(GrpcBehavior::Ok);
    let reply = client.say("patient").await.unwrap().into_inner();
    assert_eq!(reply.message, "patient");
}

#[tokio::test]
async fn a_per_try_timeout_bounds_the_head_and_the_upstream_is_told_the_whole_call() {
    // The reply's head at once, its status 1.5 s later, as a server stream's: past the route's
    // per-try timeout of 1 s, within its timeout of 10 s. The per-try timeout bounds the wait
    // for an attempt's head, and a gRPC server ends a call at the `grpc-timeout` it was told:
    // told the per-try time, it would end every stream longer than that DEADLINE_EXCEEDED, and
    // that failure would open the endpoint's breaker.
    let upstream = GrpcUpstream::start(GrpcBehavior::SlowBody(Duration::from_millis(1500)))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "timeout = \"10s\"\nper_try_timeout = \"1s\"",
        "",
    )
    .await;
    let mut client = EchoClient::connect_untimed(addr(&proxy));
    let reply = client.say("stream").await.unwrap().into_inner();
    assert_eq!(reply.message, "stream");

    let timeout = upstream.calls()[0]
        .timeout
        .expect("a grpc-timeout went upstream");
    assert!(timeout > Duration::from_secs(9), "told {timeout:?}");
    assert!(timeout <= Duration::from_secs(10), "told {timeout:?}");
}

#[tokio::test]
async fn a_reply_whose_status_comes_long_after_its_head_is_no_slow_call() {
    // The reply's head at once, its status 400 ms later: four times the slow-call threshold.
    // A call is slow when its answer is slow to begin, as it is for a plain HTTP answer and
    // for the balancer; a server stream that lasts is no slow call.
    let upstream = GrpcUpstream::start(GrpcBehavior::SlowBody(Duration::from_millis(400)))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nslow_call = \"100ms\"\nslow_call_rate = 0.5\nmin_calls = 2\n\
         open_for = \"60s\"",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    for i in 0..3 {
        let reply = client.say("long").await;
        assert_eq!(reply.unwrap().into_inner().message, "long", "call {i}");
    }
    // The breaker stayed closed: the third call reached the endpoint.
    assert_eq!(upstream.call_count(), 3);
}

#[tokio::test]
async fn a_tonic_channel_with_a_deadline_gives_up_on_a_hanging_call_in_time() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Hang).await.unwrap();
    let proxy = grpc_proxy(&[upstream.addr()], "", "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    let mut request = say("wait");
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(Duration::from_secs(10), client.call(request))
        .await
        .expect("ended by the deadline, not the route's 15 s timeout")
        .unwrap_err();
    // tonic's channel keeps its own timer, which starts before rampart's and so usually fires
    // first; tonic calls its own expiry CANCELLED, rampart's is DEADLINE_EXCEEDED.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    upstream.wait_for_calls(1).await;
    let timeout = upstream.calls()[0].timeout.unwrap();
    assert!(timeout > Duration::ZERO && timeout <= Duration::from_millis(300));
}

#[tokio::test]
async fn a_route_timeout_ends_a_hanging_call_with_deadline_exceeded_and_the_reason() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Hang).await.unwrap();
    let proxy = grpc_proxy(&[upstream.addr()], "timeout = \"500ms\"", "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    let status = client.say("wait").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("timeout"));
    upstream.wait_for_calls(1).await;
    let timeout = upstream.calls()[0].timeout.unwrap();
    assert!(timeout > Duration::ZERO && timeout <= Duration::from_millis(500));
}

#[tokio::test]
async fn no_route_is_unimplemented() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "match = { path_prefix = \"/other.Service/\" }",
        "",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    let status = client.say("lost").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("no-route"));
    assert_eq!(status.message(), "no route matches the request");
    assert_eq!(upstream.call_count(), 0);
}

#[tokio::test]
async fn an_endpoint_that_refuses_connections_is_unavailable() {
    let refusing = Refusing::bind().unwrap();
    let proxy = grpc_proxy(&[refusing.addr()], "[routes.retry]\nattempts = 1", "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    let status = client.say("anyone").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("upstream-connect"));
}

#[tokio::test]
async fn an_open_breaker_is_unavailable() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Fail(Code::Unavailable))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 1",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    // The upstream's own UNAVAILABLE (trailers-only), which trips the breaker.
    let status = client.say("one").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(meta(&status, "x-rampart-error"), None);

    let status = client.say("two").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("breaker-open"));
    assert_eq!(upstream.call_count(), 1);
}

#[tokio::test]
async fn a_rate_limit_further_down_the_chain_leaves_the_breaker_closed_and_is_not_retried() {
    // The upstream is a rampart refusing calls past its rate limit: RESOURCE_EXHAUSTED,
    // trailers-only, with its reason.
    let upstream = Upstream::start(Behavior::Headed {
        status: http::StatusCode::OK,
        headers: [
            ("content-type", "application/grpc"),
            ("grpc-status", "8"),
            ("x-rampart-error", "rate-limited"),
        ]
        .into_iter()
        .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
        .collect(),
    })
    .await
    .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 3\non = [\"grpc-resource-exhausted\"]\n\
         backoff = { base = \"1ms\", max = \"1ms\" }",
        "[upstreams.app.breaker]\nconsecutive_failures = 1",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    for i in 0..5 {
        let status = client.say("again").await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "call {i}");
        assert_eq!(
            meta(&status, "x-rampart-error"),
            Some("rate-limited"),
            "call {i}"
        );
    }
    // Each call reached it once (its limit's refusal is not retried into it), and none found
    // the breaker open: a rate limit is no failure, as its 429 over HTTP is none.
    assert_eq!(upstream.request_count(), 5);
}

#[tokio::test]
async fn unavailable_in_the_trailers_opens_the_breaker() {
    let upstream = GrpcUpstream::start(GrpcBehavior::FailInTrailers(Code::Unavailable))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 3",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    for _ in 0..3 {
        // Headers and a reply went through before the status: the client sees the status.
        let status = client.say("x").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(meta(&status, "x-rampart-error"), None);
    }
    let status = client.say("x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("breaker-open"));
    assert_eq!(upstream.call_count(), 3);
}

#[tokio::test]
async fn the_route_counts_a_call_by_the_status_in_its_trailers() {
    // Its head, a reply, then INTERNAL in the trailers: a failure of the route as of the
    // endpoint; a call answered OK in its trailers, a success.
    let upstream = GrpcUpstream::start(GrpcBehavior::FailInTrailers(Code::Internal))
        .await
        .unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    for _ in 0..2 {
        let status = client.say("x").await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    upstream.set_behavior(GrpcBehavior::Ok);
    client.say("fine").await.unwrap();

    let text = metrics(&proxy);
    let series = |outcome: &str| {
        format!("rampart_requests_total{{route=\"route-0\",outcome=\"{outcome}\"}}")
    };
    assert!(
        text.contains(&format!("{} 2\n", series("failure"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 1\n", series("success"))),
        "{text}"
    );
}

#[tokio::test]
async fn trailers_failures_move_traffic_to_the_other_endpoint() {
    let failing = GrpcUpstream::start(GrpcBehavior::FailInTrailers(Code::Internal))
        .await
        .unwrap();
    let healthy = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
    let proxy = grpc_proxy(
        &[failing.addr(), healthy.addr()],
        "[routes.retry]\nattempts = 1",
        // In turn, so that the failing endpoint surely gets the two calls that eject it.
        "balance = \"round-robin\"\n[upstreams.app.breaker]\nconsecutive_failures = 2",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    for _ in 0..10 {
        let _ = client.say("x").await;
    }
    // Two failures ejected it; the rest went to the healthy endpoint.
    assert_eq!(failing.call_count(), 2);
    assert_eq!(healthy.call_count(), 8);
}

#[tokio::test]
async fn successes_in_the_trailers_keep_the_breaker_closed() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
    let proxy = grpc_proxy(
        &[upstream.addr()],
        "",
        "[upstreams.app.breaker]\nconsecutive_failures = 1",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();
    for _ in 0..5 {
        client.say("fine").await.unwrap();
    }
    assert_eq!(upstream.call_count(), 5);
}

#[tokio::test]
async fn a_call_failing_with_unavailable_is_retried_on_the_other_endpoint() {
    let failing = GrpcUpstream::start(GrpcBehavior::Fail(Code::Unavailable))
        .await
        .unwrap();
    let healthy = GrpcUpstream::start(GrpcBehavior::Ok).await.unwrap();
    let proxy = grpc_proxy(
        &[failing.addr(), healthy.addr()],
        "[routes.retry]\nattempts = 2\non = [\"grpc-unavailable\"]",
        "",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    for _ in 0..4 {
        let reply = client.say("again").await.unwrap().into_inner();
        assert_eq!(reply.served_by, healthy.addr().to_string());
        assert_eq!(reply.message, "again");
    }
    // Round-robin sent some first attempts to the failing endpoint; each was retried.
    assert!(failing.call_count() >= 1);
    // The retries carried the same message: the body was replayed.
    assert_eq!(healthy.call_count(), 4);
    assert!(healthy.calls().iter().all(|call| call.message == "again"));
}

#[tokio::test]
async fn the_servers_pushback_delays_or_stops_the_retries() {
    // (grpc-retry-pushback-ms, calls the upstream sees, the least wait between the first two);
    // the backoff waits at most 1 s, so a longer pushback is not waited.
    for (pushback, calls, gap) in [
        ("-1", 1, 0),
        ("soon", 1, 0),
        ("0", 3, 0),
        ("300", 2, 300),
        ("5000", 1, 0),
    ] {
        // A trailers-only UNAVAILABLE answer carrying the pushback.
        let upstream = Upstream::start(Behavior::Headed {
            status: http::StatusCode::OK,
            headers: [
                ("content-type", "application/grpc"),
                ("grpc-status", "14"),
                ("grpc-retry-pushback-ms", pushback),
            ]
            .into_iter()
            .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
            .collect(),
        })
        .await
        .unwrap();
        let attempts = if gap > 0 { 2 } else { 3 };
        let proxy = grpc_proxy(
            &[upstream.addr()],
            &format!(
                "[routes.retry]\nattempts = {attempts}\non = [\"grpc-unavailable\"]\n\
                 backoff = {{ base = \"1ms\", max = \"1s\" }}"
            ),
            "[upstreams.app.breaker]\nenabled = false",
        )
        .await;
        let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

        let status = client.say("again").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "pushback {pushback}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), calls, "pushback {pushback}");
        if calls > 1 {
            let waited = seen[1].at - seen[0].at;
            assert!(
                waited >= Duration::from_millis(gap),
                "pushback {pushback}: {waited:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_grpc_fallback_answers_a_grpc_client_with_its_reply() {
    let refusing = Refusing::bind().unwrap();
    // EchoReply { message: "degraded", served_by: "fallback" }, framed: no compression, 20 bytes.
    let route = "[routes.fallback]\non = [\"upstream-connect\"]\n\
                 headers = { \"content-type\" = \"application/grpc\" }\n\
                 body = \"\\u0000\\u0000\\u0000\\u0000\\u0014\\n\\bdegraded\\u0012\\bfallback\"\n\
                 [routes.retry]\nattempts = 1";
    let proxy = grpc_proxy(&[refusing.addr()], route, "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    let response = client.say("x").await.unwrap();
    assert_eq!(
        response.metadata().get("x-rampart-fallback").unwrap(),
        "upstream-connect"
    );
    let reply = response.into_inner();
    assert_eq!(reply.message, "degraded");
    assert_eq!(reply.served_by, "fallback");
}

#[tokio::test]
async fn a_grpc_fallback_on_5xx_answers_a_server_error_but_not_an_answer_about_the_request() {
    let upstream = GrpcUpstream::start(GrpcBehavior::Fail(Code::Unavailable))
        .await
        .unwrap();
    // EchoReply { message: "degraded", served_by: "fallback" }, framed: no compression, 20 bytes.
    let route = "[routes.fallback]\non = [\"5xx\"]\n\
                 headers = { \"content-type\" = \"application/grpc\" }\n\
                 body = \"\\u0000\\u0000\\u0000\\u0000\\u0014\\n\\bdegraded\\u0012\\bfallback\"\n\
                 [routes.retry]\nattempts = 1";
    let proxy = grpc_proxy(
        &[upstream.addr()],
        route,
        "[upstreams.app.breaker]\nenabled = false",
    )
    .await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    // UNAVAILABLE in a trailers-only answer: the gRPC form of a 503.
    let response = client.say("x").await.unwrap();
    assert_eq!(
        response.metadata().get("x-rampart-fallback").unwrap(),
        "5xx"
    );
    assert_eq!(response.into_inner().message, "degraded");

    // RESOURCE_EXHAUSTED is a 429's gRPC form: the upstream's own answer goes through.
    upstream.set_behavior(GrpcBehavior::Fail(Code::ResourceExhausted));
    let status = client.say("x").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-fallback"), None);
}

#[tokio::test]
async fn a_json_fallback_gives_a_grpc_client_the_grpc_error() {
    let refusing = Refusing::bind().unwrap();
    let route = "[routes.fallback]\non = [\"upstream-connect\"]\n\
                 headers = { \"content-type\" = \"application/json\" }\n\
                 body = '{\"degraded\":true}'\n\
                 [routes.retry]\nattempts = 1";
    let proxy = grpc_proxy(&[refusing.addr()], route, "").await;
    let mut client = EchoClient::connect(addr(&proxy)).await.unwrap();

    let status = client.say("x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(meta(&status, "x-rampart-error"), Some("upstream-connect"));
    assert_eq!(meta(&status, "x-rampart-fallback"), None);
}

#[tokio::test]
async fn a_client_stream_failing_mid_reply_ends_its_call_and_is_not_the_endpoints_failure() {
    use http_body_util::BodyExt;
    // Replies for five seconds, one every 50 ms.
    let upstream = streamed_replies(100, Duration::from_millis(50)).await;
    let proxy = proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        max_request_body = "1KiB"
        [[routes]]
        upstream = "app"
        timeout = "10s"
        [upstreams.app]
        endpoints = ["{upstream}"]
        protocol = "grpc"
        [upstreams.app.breaker]
        consecutive_failures = 1
        "#
    ))
    .await;

    // A bidirectional call whose client, once the replies flow, sends more than it may.
    let (send_message, response) = bidi_call(&proxy, "Chat").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a reply").unwrap();
    assert!(first.is_data());
    send_message.send(framed(&[b'z'; 2048])).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the call ends")
        .unwrap();
    let trailers = ended
        .trailers()
        .cloned()
        .expect("the call ends with a status");
    assert_eq!(
        trailers["x-rampart-error"], "body-too-large",
        "{trailers:?}"
    );
    drop(send_message);

    // The endpoint is not blamed: its breaker, which opens at one failure, still admits.
    let text = metrics(&proxy);
    let failed = format!(
        "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{upstream}\",outcome=\"failure\"}} 1"
    );
    assert!(!text.contains(&failed), "{text}");
    assert!(
        text.contains("rampart_breaker_state{upstream=\"app\""),
        "{text}"
    );
    assert!(!text.contains("state=\"open\"} 1"), "{text}");
}

#[tokio::test]
async fn a_client_stream_is_held_to_max_request_body_a_message_at_a_time() {
    use http_body_util::BodyExt;
    // 1 KiB a message: a stream carries any amount in messages under it, as gRPC's own limit is
    // on a message's size; a bidirectional call may last hours, and is no body to cap whole.
    let upstream = streamed_replies(20, Duration::from_millis(50)).await;
    let proxy = proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        max_request_body = "1KiB"
        [[routes]]
        upstream = "app"
        timeout = "10s"
        [upstreams.app]
        endpoints = ["{upstream}"]
        protocol = "grpc"
        "#
    ))
    .await;

    let (send_message, response) = bidi_call(&proxy, "Chat").await;
    assert_eq!(response.status(), 200);
    // 16 messages of 600 bytes, 9.6 KiB in all, each split across two frames as a stream may
    // cut them.
    for _ in 0..16 {
        let message = framed(&[b'z'; 600]);
        send_message.send(message.slice(..300)).await.unwrap();
        send_message.send(message.slice(300..)).await.unwrap();
    }
    drop(send_message);
    let ended = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the call ends")
        .unwrap();
    let trailers = ended
        .trailers()
        .cloned()
        .expect("the call ends with a status");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert!(trailers.get("x-rampart-error").is_none(), "{trailers:?}");
}

/// `message` as gRPC frames it on the wire: uncompressed, its length before it.
fn framed(message: &[u8]) -> bytes::Bytes {
    let mut framed = vec![0];
    framed.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

#[tokio::test]
async fn a_reply_the_upstream_resets_with_no_error_before_its_end_is_no_success() {
    use http_body_util::BodyExt;
    // An h2c server whose every reply is one message and a reset with NO_ERROR: no END_STREAM,
    // no trailers, no status.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // Fired once the client has the reply's head: the reset must come after it.
    let (headed, head_seen) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut head_seen = Some(head_seen);
        while let Ok((stream, _)) = listener.accept().await {
            let head_seen = head_seen.take();
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(stream).await.unwrap();
                let mut head_seen = head_seen;
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut reply = respond.send_response(head, false).unwrap();
                    reply
                        .send_data(bytes::Bytes::from_static(b"\0\0\0\0\x01x"), false)
                        .unwrap();
                    // The reset follows once the head and the message have gone on, as a
                    // server's would that stopped part way through a long reply.
                    let head_seen = head_seen.take();
                    tokio::spawn(async move {
                        if let Some(head_seen) = head_seen {
                            let _ = head_seen.await;
                        }
                        reply.send_reset(h2::Reason::NO_ERROR);
                    });
                }
            });
        }
    });
    let proxy = grpc_proxy(
        &[upstream],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 1",
    )
    .await;

    let mut sender = h2_connection(&proxy).await;
    let call = hyper::Request::post(format!("http://{}/echo.Echo/Call", addr(&proxy)))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x01y",
        )))
        .unwrap();
    let response = sender.send_request(call).await.unwrap();
    // The head came before the reset: the call's status, if any, is in the trailers.
    assert!(
        response.headers().get("grpc-status").is_none(),
        "{response:?}"
    );
    headed.send(()).unwrap();
    let ended = response.into_body().collect().await.unwrap();
    let trailers = ended
        .trailers()
        .cloned()
        .expect("the call ends with a status");
    // A reply ended without the status it owed: INTERNAL, as gRPC maps a NO_ERROR reset
    // (PROTOCOL-HTTP2.md, "Errors"), not UNAVAILABLE, which a client would retry for a call
    // that ran.
    assert_eq!(trailers["grpc-status"], "13", "{trailers:?}");
    assert_eq!(trailers["x-rampart-error"], "upstream-invalid");
    let text = metrics(&proxy);
    let failed = format!(
        "rampart_upstream_requests_total{{upstream=\"app\",endpoint=\"{upstream}\",outcome=\"failure\"}} 1"
    );
    assert!(text.contains(&failed), "{text}");
}

#[tokio::test]
async fn a_stream_that_probes_a_half_open_breaker_does_not_hold_its_endpoint() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    // Call 0 fails with UNAVAILABLE in its trailers, which opens the breaker; every call after
    // it streams a message, then the first of them, the half-open probe, goes on for a minute
    // (a watch, a feed) while the others end with status 0.
    let calls = Arc::new(AtomicU32::new(0));
    let upstream = h2c_server(move |held| {
        let n = calls.fetch_add(1, SeqCst);
        let frames = futures_util::stream::unfold(0, move |step| async move {
            let frame = match (n, step) {
                (0, 1..) | (_, 2..) => return None,
                (0, 0) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
                    Frame::trailers(trailers)
                }
                (_, 0) => Frame::data(Bytes::from_static(b"\0\0\0\0\x01x")),
                (1, _) => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Frame::trailers(ok_status())
                }
                _ => Frame::trailers(ok_status()),
            };
            Some((Ok::<_, std::convert::Infallible>(frame), step + 1))
        });
        drop(held);
        StreamBody::new(Box::pin(frames))
    })
    .await;
    let proxy = grpc_proxy(
        &[upstream],
        "[routes.retry]\nattempts = 1",
        "[upstreams.app.breaker]\nconsecutive_failures = 1\nopen_for = \"100ms\"\n\
         half_open_probes = 1",
    )
    .await;
    let mut sender = h2_connection(&proxy).await;
    let call = || {
        hyper::Request::post(format!("http://{}/echo.Echo/Watch", addr(&proxy)))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"\0\0\0\0\x01y",
            )))
            .unwrap()
    };

    let failed = sender.send_request(call()).await.unwrap();
    assert_eq!(status_of(failed).await, "14");
    // Refused while the breaker is open; the first call let through is its probe.
    let probe = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = sender.send_request(call()).await.unwrap();
            if error_of(&response).is_none() {
                return response;
            }
            assert_eq!(error_of(&response), Some("breaker-open"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the breaker half-opens");
    let mut probe = probe.into_body();
    let message = probe.frame().await.unwrap().unwrap();
    assert!(message.is_data());

    // The probe streams on: its head was answer enough, and the endpoint takes calls again.
    let next = sender.send_request(call()).await.unwrap();
    assert_eq!(error_of(&next), None, "{next:?}");
    assert_eq!(status_of(next).await, "0");
    drop(probe);
}

/// The `grpc-status` in the trailers that end `response`'s body.
async fn status_of(response: hyper::Response<hyper::body::Incoming>) -> String {
    use http_body_util::BodyExt;
    let ended = response.into_body().collect().await.unwrap();
    let trailers = ended.trailers().expect("the call ends with trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

/// A bidirectional call to `/echo.Echo/<method>` through `proxy`, its first message sent; the
/// client's next messages go through the sender returned, and its stream ends when it is dropped.
async fn bidi_call(
    proxy: &Proxy,
    method: &str,
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    hyper::Response<hyper::body::Incoming>,
) {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let mut sender = h2_connection(proxy).await;
    let (send_message, messages) = tokio::sync::mpsc::channel::<Bytes>(1);
    send_message
        .send(Bytes::from_static(b"\0\0\0\0\x01y"))
        .await
        .unwrap();
    let frames = futures_util::stream::unfold(messages, |mut messages| async move {
        let message = messages.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(message)),
            messages,
        ))
    });
    let call = hyper::Request::post(format!("http://{}/echo.Echo/{method}", addr(proxy)))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(Box::pin(frames)))
        .unwrap();
    let response = sender.send_request(call).await.unwrap();
    (send_message, response)
}

/// An h2c server on a free port answering each gRPC call with the body `reply` makes of the
/// call's request stream.
async fn h2c_server<B>(
    reply: impl Fn(hyper::body::Incoming) -> B + Clone + Send + 'static,
) -> SocketAddr
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let body = reply(request.into_body());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    addr
}

/// Status 0, as a gRPC call's trailers.
fn ok_status() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

/// An h2c server answering every call with `count` messages, one every `every`, then status 0,
/// whatever the call's request stream does (it is held, never read).
async fn streamed_replies(count: u32, every: Duration) -> SocketAddr {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    h2c_server(move |held| {
        let frames =
            futures_util::stream::unfold((0, Some(held)), move |(sent, held)| async move {
                let held = held?;
                if sent == count {
                    drop(held);
                    return Some((Ok(Frame::trailers(ok_status())), (sent, None)));
                }
                tokio::time::sleep(every).await;
                let message = Bytes::from_static(b"\0\0\0\0\x01x");
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(message)),
                    (sent + 1, Some(held)),
                ))
            });
        StreamBody::new(Box::pin(frames))
    })
    .await
}

/// A proxy to the gRPC `upstream`, whose bodies may idle 300 ms, in a route of 10 s.
async fn idle_bound_proxy(upstream: SocketAddr) -> Proxy {
    proxy(&format!(
        r#"
        [[listeners]]
        listen = "127.0.0.1:0"
        body_idle_timeout = "300ms"
        [[routes]]
        upstream = "app"
        timeout = "10s"
        [upstreams.app]
        endpoints = ["{upstream}"]
        protocol = "grpc"
        "#
    ))
    .await
}

/// The body and trailers of a call's reply, which must end within 10 s.
async fn ended(
    response: hyper::Response<hyper::body::Incoming>,
) -> (bytes::Bytes, http::HeaderMap) {
    use http_body_util::BodyExt;
    let ended = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the call ends")
        .unwrap();
    let trailers = ended
        .trailers()
        .cloned()
        .expect("the call ends with a status");
    (ended.to_bytes(), trailers)
}

#[tokio::test]
async fn a_quiet_client_stream_is_not_cut_while_its_replies_flow() {
    // Ten replies, one every 100 ms: a second of reply against a 300 ms idle bound, while the
    // client sends one message and then nothing (a watch).
    let upstream = streamed_replies(10, Duration::from_millis(100)).await;
    let proxy = idle_bound_proxy(upstream).await;
    let (send_message, response) = bidi_call(&proxy, "Watch").await;
    let (body, trailers) = ended(response).await;
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(body.len(), 10 * 6);
    drop(send_message);
}

/// An h2c server that answers every call's head at once, then reads the call's request stream
/// to its end before it sends one message and status 0: a handler that replies to an upload.
async fn head_then_reply_once_read() -> SocketAddr {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    h2c_server(|upload| {
        let reply = futures_util::stream::once(async move {
            let _ = upload.collect().await;
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x")))
        })
        .chain(futures_util::stream::once(async {
            Ok(Frame::trailers(ok_status()))
        }));
        StreamBody::new(Box::pin(reply))
    })
    .await
}

#[tokio::test]
async fn a_reply_waiting_for_a_flowing_client_stream_is_not_cut() {
    // The head of the reply comes at once, its message only once the client's stream ends: ten
    // messages, one every 100 ms, against a 300 ms idle bound. The reply is quiet for a second
    // while the client's stream moves, which keeps the exchange from being idle (as Envoy's
    // stream idle timeout counts both directions).
    let upstream = head_then_reply_once_read().await;
    let proxy = idle_bound_proxy(upstream).await;
    let (send_message, response) = bidi_call(&proxy, "Upload").await;
    assert_eq!(response.status(), 200);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..10 {
            every.tick().await;
            let message = bytes::Bytes::from_static(b"\0\0\0\0\x01y");
            if send_message.send(message).await.is_err() {
                return;
            }
        }
    });
    let (body, trailers) = ended(response).await;
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(body.len(), 6);
}
