//! The configuration README.md shows a newcomer passes `rampart check`, so it never rots.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempConfig;

/// The first ```toml block of README.md.
fn readme_config() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md reads");
    let (_, start) = text
        .split_once("\n```toml\n")
        .expect("README.md shows a ```toml block");
    let (block, _) = start.split_once("\n```").expect("the block is closed");
    format!("{block}\n")
}

#[test]
fn the_readme_configuration_passes_check() {
    let config = TempConfig::new("readme", &readme_config());
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["check", "-c"])
        .arg(&config.0)
        .output()
        .expect("the rampart binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "README.md's configuration is invalid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the README says it shows: one route to one upstream of two endpoints.
    assert!(stdout.contains("/orders* -> orders"), "{stdout}");
    for endpoint in ["127.0.0.1:9001", "127.0.0.1:9002"] {
        assert!(stdout.contains(endpoint), "{stdout}");
    }
}
