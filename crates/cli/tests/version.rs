//! `rampart version` on the real binary: the version and what it was built from.

use std::path::Path;
use std::process::Command;

/// The short hash of the workspace's HEAD, when the workspace is a git checkout of its own.
fn head() -> Option<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&workspace)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
    };
    let toplevel = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    git(&["rev-parse", "--short", "HEAD"])
}

#[test]
fn version_prints_the_version_commit_compiler_target_and_profile() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("version")
        .output()
        .expect("the rampart binary runs");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let [name, commit, rustc, target, profile] = lines[..] else {
        panic!("five lines expected:\n{stdout}");
    };

    assert_eq!(name, format!("rampart {}", env!("CARGO_PKG_VERSION")));
    let commit = commit.strip_prefix("commit: ").expect(&stdout);
    match head() {
        Some(head) => assert_eq!(commit, head),
        None => assert_eq!(commit, "unknown"),
    }
    assert!(rustc.starts_with("rustc: rustc 1."), "{stdout}");
    let target = target.strip_prefix("target: ").expect(&stdout);
    assert!(
        target.split('-').count() >= 3,
        "not a target triple: {target}"
    );
    let profile = profile.strip_prefix("profile: ").expect(&stdout);
    assert!(["debug", "release"].contains(&profile), "{stdout}");
}
