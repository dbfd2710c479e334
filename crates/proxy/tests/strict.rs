//! Hostile or malformed requests (RFC 9112): what could be read two ways is refused with 400 and
//! the connection closed, so nothing can be smuggled to an upstream; the destination is never the
//! client's to pick.

mod common;

use std::time::Duration;

use common::{addr, raw, simple};
use rampart_test_support::{Behavior, Upstream};

/// Sends `request` raw and returns the answer, which must end with the connection closed.
async fn answer(request: &str) -> (String, Upstream) {
    let upstream = Upstream::start(Behavior::ok("reached")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;
    let answer = tokio::time::timeout(Duration::from_secs(10), raw(addr(&proxy), request))
        .await
        .expect("the proxy closes the connection");
    (answer, upstream)
}

/// Asserts that `request` got 400 and that the upstream saw nothing.
async fn refused(request: &str) {
    let (answer, upstream) = answer(request).await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "{request:?} got {answer:?}"
    );
    assert!(!answer.contains("reached"), "{answer}");
    // The body after a smuggled second request, were any, would have reached the upstream too.
    assert_eq!(
        upstream.request_count(),
        0,
        "{request:?} reached the upstream"
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde")
        .await;
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 5\r\n\r\nabcde").await;
}

#[tokio::test]
async fn an_invalid_content_length_is_refused() {
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc").await;
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc").await;
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc").await;
}

#[tokio::test]
async fn an_unknown_transfer_coding_is_refused() {
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc").await;
}

#[tokio::test]
async fn obs_fold_is_refused() {
    refused("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n").await;
}

#[tokio::test]
async fn bare_lf_line_endings_are_refused() {
    refused("GET / HTTP/1.1\nHost: a\n\n").await;
    refused("GET / HTTP/1.1\r\nHost: a\nX-Other: b\r\n\r\n").await;
    refused("GET / HTTP/1.1\r\nHost: a\r\n\n").await;
}

#[tokio::test]
async fn a_request_of_method_pri_leaves_the_heads_after_it_checked() {
    // Only the HTTP/2 preface's own line ends the check; a PRI request is a request like any.
    let (answer, upstream) = answer(
        "PRI /x HTTP/1.1\r\nHost: a\r\n\r\n\
         POST /attacker HTTP/1.1\r\nHost: a\r\nX-A: 1\nContent-Length: 52\r\n\r\n\
         GET /victim HTTP/1.1\r\nHost: a\r\nCookie: session=secret\r\n\r\n",
    )
    .await;
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/x"]);
}

#[tokio::test]
async fn a_well_formed_request_reaches_the_upstream() {
    // The same helper with a request that is fine: the refusals above are not the helper's doing.
    let (answer, upstream) = answer("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn an_absolute_form_target_or_host_never_picks_the_destination() {
    // The decoy stands where a client would point a proxy that obeyed the target, on the
    // loopback, so that a wrong destination is seen here and nowhere else.
    let decoy = Upstream::start(Behavior::ok("decoy")).await.unwrap();
    let upstream = Upstream::start(Behavior::ok("configured")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let request = format!(
        "GET http://{decoy}/latest/meta-data HTTP/1.1\r\nHost: {decoy}\r\nConnection: close\r\n\r\n",
        decoy = decoy.addr()
    );
    let answer = raw(addr(&proxy), &request).await;
    assert!(answer.ends_with("configured"), "{answer}");

    let request = format!(
        "GET /latest HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        decoy.addr()
    );
    let answer = raw(addr(&proxy), &request).await;
    assert!(answer.ends_with("configured"), "{answer}");

    assert_eq!(decoy.request_count(), 0);
    let seen = upstream.requests();
    assert_eq!(seen[0].path, "/latest/meta-data");
    assert_eq!(seen[1].path, "/latest");
}

#[tokio::test]
async fn connect_is_refused_and_nothing_is_dialled() {
    let decoy = Upstream::start(Behavior::ok("decoy")).await.unwrap();
    let upstream = Upstream::start(Behavior::ok("configured")).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    let request = format!(
        "CONNECT {decoy} HTTP/1.1\r\nHost: {decoy}\r\nConnection: close\r\n\r\n",
        decoy = decoy.addr()
    );
    let answer = raw(addr(&proxy), &request).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(decoy.request_count(), 0);
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn bodies_pass_untouched_and_every_head_is_checked() {
    let upstream = Upstream::start(Behavior::Echo).await.unwrap();
    let proxy = simple(&[upstream.addr()], "", "").await;

    // Bodies holding bare LFs, framed by Content-Length and by chunks (with trailers), then, on
    // the same connection, a head with a bare LF.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        raw(
            addr(&proxy),
            "POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\na\nb\n\
             POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\n\n\n\n\r\n2\r\nc\n\r\n0\r\nX-Trailer: t\r\n\r\n\
             GET /three HTTP/1.1\nHost: a\r\n\r\n",
        ),
    )
    .await
    .expect("the proxy closes the connection");

    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answer[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, "a\nb\n");
    assert_eq!(seen[1].body, "\n\n\nc\n");
}

#[tokio::test]
async fn after_an_upgrade_not_taken_or_a_connect_no_further_request_is_read() {
    // The check of request heads stops where another protocol's bytes might follow: were the
    // connection kept, the smuggled request after it would be read unchecked.
    let smuggled = "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for first in [
        // h2c is never tunnelled: the upstream answers 200.
        "GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        // Offered without `Connection: upgrade`: not tunnelled either.
        "GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n",
        "CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n",
    ] {
        let (answer, upstream) = answer(&format!("{first}{smuggled}")).await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{first}: {answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            upstream
                .requests()
                .iter()
                .all(|seen| seen.path != "/smuggled"),
            "{first}"
        );
    }
}

#[tokio::test]
async fn a_transfer_coding_besides_chunked_gets_501_and_nothing_reaches_the_upstream() {
    for request in [
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n",
    ] {
        let (answer, upstream) = answer(request).await;
        assert!(
            answer.starts_with("HTTP/1.1 501"),
            "{request:?} got {answer:?}"
        );
        assert!(answer.contains("x-rampart-error: bad-request"), "{answer}");
        assert_eq!(
            upstream.request_count(),
            0,
            "{request:?} reached the upstream"
        );
    }
}

#[tokio::test]
async fn chunked_applied_twice_is_refused() {
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    refused(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\
         \r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_framing_header_the_check_cannot_read_is_refused_and_nothing_after_it_is_read() {
    // A length of eighty zeros and a 3 is longer than the check keeps of a line, yet hyper
    // would read it: the check, not knowing where its body ends, could not follow the requests
    // after it.
    refused(&format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}3\r\n\r\nabc\
         GET /smuggled HTTP/1.1\nHost: a\r\n\r\n",
        "0".repeat(80)
    ))
    .await;
}

#[tokio::test]
async fn an_authority_form_target_is_refused_but_for_connect() {
    refused("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n").await;
}
