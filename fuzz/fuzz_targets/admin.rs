//! What the admin side parses: a path segment's `%XX` escapes (an endpoint's address in
//! `/api/upstreams/NAME/endpoints/ADDR/...`) and a fleet target (`rampart fleet URL...`). None
//! may panic; escapes of any text decode back to it; an accepted target reads back as itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_admin::Target;
use rampart_admin::fuzzing::decode_segment;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode_segment(text);
    if !text.contains('%') {
        assert_eq!(decoded, text);
    }
    let escaped: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(decode_segment(&escaped), text);

    if let Ok(target) = Target::parse(text) {
        let again = Target::parse(target.name()).expect("a target's name is a valid target");
        assert_eq!(again.name(), target.name());
    }
});
