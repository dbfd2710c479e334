//! The proxy's scan of a client's HTTP/1.1 byte stream (`crates/proxy/src/strict.rs`): it follows
//! heads, Content-Length and chunked bodies ahead of hyper to refuse a head with a bare LF. It
//! must never panic, must refuse only at a line feed, and must find the same place however the
//! socket's reads split the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_proxy::fuzzing::strict_refused_at;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read sizes of a second pass, the rest is the stream.
    let Some((&sizes, stream)) = data.split_first() else {
        return;
    };
    let whole = strict_refused_at([stream]);
    if let Some(at) = whole {
        assert_eq!(stream.get(at), Some(&b'\n'), "refused at {at}");
    }
    assert_eq!(strict_refused_at(stream.chunks(1)), whole, "read a byte at a time");
    let step = usize::from(sizes % 32) + 1;
    assert_eq!(strict_refused_at(stream.chunks(step)), whole, "read {step} bytes at a time");
});
