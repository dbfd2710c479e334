//! The configuration file: any text is either a `Config` or a non-empty list of errors, each
//! placed inside the text, and both render without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str(text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.summary().to_string();
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "a refused file names at least one error"
            );
            let lines = text.lines().count().max(1);
            for error in errors.iter() {
                if let (Some(line), Some(column)) = (error.line(), error.column()) {
                    // A place just past the last line is where an unterminated item ends.
                    assert!(
                        (1..=lines + 1).contains(&line) && column >= 1,
                        "{error} is placed outside the text ({lines} lines)"
                    );
                }
            }
            let _ = errors.to_string();
        }
    }
});
