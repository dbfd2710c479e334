//! The configuration's value parsers: durations, sizes, rates and endpoints. Each must not panic,
//! and a value it accepts formats back to text it reads as the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_config::value::{ByteSize, Endpoint, Rate, format_duration, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(duration) = parse_duration(text) {
        let formatted = format_duration(duration);
        assert_eq!(
            parse_duration(&formatted),
            Ok(duration),
            "{text:?} -> {formatted:?}"
        );
    }
    if let Ok(size) = ByteSize::parse(text) {
        let formatted = size.to_string();
        assert_eq!(
            ByteSize::parse(&formatted),
            Ok(size),
            "{text:?} -> {formatted:?}"
        );
    }
    if let Ok(rate) = Rate::parse(text) {
        let formatted = rate.to_string();
        assert_eq!(
            Rate::parse(&formatted),
            Ok(rate),
            "{text:?} -> {formatted:?}"
        );
        assert!(rate.count >= 1);
    }
    if let Ok(endpoint) = Endpoint::parse(text) {
        let formatted = endpoint.to_string();
        assert_eq!(
            Endpoint::parse(&formatted),
            Ok(endpoint),
            "{text:?} -> {formatted:?}"
        );
    }
});
