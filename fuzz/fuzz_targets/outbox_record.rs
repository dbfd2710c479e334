//! The outbox's stored bytes: message records, status records and message ids. Any bytes decode
//! to a value or an error, never a panic; a decoded record encodes and decodes back to itself,
//! and a record read from bytes the encoder wrote is those bytes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_outbox::record::{
    MAX_ERROR_LEN, decode_message, decode_status, encode_message, encode_status, truncate,
};
use rampart_outbox::{MessageId, Status};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the parser, so that one corpus serves all three.
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(record) = decode_message(bytes) else {
                return;
            };
            let encoded = encode_message(&record).expect("a decoded record fits its fields");
            assert_eq!(decode_message(&encoded).as_ref(), Ok(&record));
            assert_eq!(
                encode_message(&decode_message(&encoded).unwrap()).unwrap(),
                encoded
            );
        }
        1 => {
            let id = MessageId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
            let Ok(status) = decode_status(id, bytes) else {
                return;
            };
            let encoded = encode_status(&status).expect("a decoded status fits its fields");
            // The encoder cuts a long last error, as documented; nothing else may change.
            let cut = Status {
                last_error: status
                    .last_error
                    .as_deref()
                    .map(|e| truncate(e, MAX_ERROR_LEN).to_owned()),
                ..status
            };
            assert_eq!(decode_status(id, &encoded), Ok(cut));
        }
        _ => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return;
            };
            if let Ok(id) = text.parse::<MessageId>() {
                let printed = id.to_string();
                assert_eq!(printed.parse::<MessageId>(), Ok(id), "{text:?}");
                // The text form is canonical up to case and Crockford's read-alikes.
                assert_eq!(printed.len(), text.len());
            }
        }
    }
});
