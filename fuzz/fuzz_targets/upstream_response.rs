//! The proxy's reading of an upstream's HTTP/1.1 response (`crates/proxy/src/h1.rs`): its head
//! parsed into a header map, informational answers read past, and its body decoded by length,
//! chunks (with trailers) or the connection's end. It must never panic, must never hand out more
//! body than it read, and must read the same however the socket's reads split the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_proxy::fuzzing::upstream_response;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read sizes of a second pass and whether the request was a HEAD,
    // the rest is the stream.
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let whole = upstream_response([stream], head_request);
    if let Ok((_, body, _, _)) = &whole {
        assert!(body.len() <= stream.len(), "more body than bytes read");
    }
    let by_byte = upstream_response(stream.chunks(1), head_request);
    assert_eq!(by_byte, whole, "read a byte at a time");
    let step = usize::from(first % 64) + 1;
    let by_step = upstream_response(stream.chunks(step), head_request);
    assert_eq!(by_step, whole, "read {step} bytes at a time");
});
