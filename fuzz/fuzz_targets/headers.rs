//! The header values the proxy reads: `grpc-timeout`, `x-rampart-deadline`, `grpc-status`,
//! `grpc-message`, `x-rampart-error` reasons and retry `on` tokens. None may panic; each value
//! accepted writes back to text that reads as the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_http::classify::{GrpcCode, RetryOn};
use rampart_http::deadline::{
    format_grpc_timeout, format_rampart_deadline, parse_grpc_timeout, parse_rampart_deadline,
};
use rampart_http::rescue::{Reason, decode_grpc_message, encode_grpc_message};

fuzz_target!(|data: &[u8]| {
    if let Ok(timeout) = parse_grpc_timeout(data) {
        // Formatting rounds down to a unit whose count fits 8 digits: for a value that came from
        // a header, that is exact.
        let formatted = format_grpc_timeout(timeout);
        assert_eq!(
            parse_grpc_timeout(formatted.as_bytes()),
            Ok(timeout),
            "{formatted:?}"
        );
    }
    if let Ok(left) = parse_rampart_deadline(data) {
        let formatted = format_rampart_deadline(left);
        assert_eq!(
            parse_rampart_deadline(formatted.as_bytes()),
            Ok(left),
            "{formatted:?}"
        );
    }
    if let Some(code) = GrpcCode::parse(data) {
        assert_eq!(GrpcCode::parse(code.header_value().as_bytes()), Some(code));
    }

    let message = decode_grpc_message(data);
    let encoded = encode_grpc_message(&message);
    // What is encoded is a valid header value, and it decodes back to the text.
    assert!(http::HeaderValue::from_str(&encoded).is_ok(), "{encoded:?}");
    assert_eq!(decode_grpc_message(encoded.as_bytes()), message);

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(reason) = text.parse::<Reason>() {
            assert_eq!(reason.as_str(), text);
        }
        if let Ok(on) = text.parse::<RetryOn>() {
            assert_eq!(on.to_string().parse::<RetryOn>().ok(), Some(on), "{text:?}");
        }
    }
});
