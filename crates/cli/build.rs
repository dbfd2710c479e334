//! Build information for `rampart version`: the git commit when built from a git checkout of
//! rampart ("unknown" otherwise: a source tarball, a crate from a registry, no git installed),
//! the compiler, the target triple and the profile.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git_commit(&manifest).unwrap_or_else(|| "unknown".to_owned());
    let rustc = env::var_os("RUSTC")
        .and_then(|rustc| output(Command::new(rustc).arg("--version")))
        .unwrap_or_else(|| "unknown".to_owned());
    let var = |name: &str| env::var(name).unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=RAMPART_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=RAMPART_RUSTC_VERSION={rustc}");
    println!("cargo:rustc-env=RAMPART_TARGET={}", var("TARGET"));
    println!("cargo:rustc-env=RAMPART_PROFILE={}", var("PROFILE"));
}

/// The short hash of HEAD, when `manifest` is in a git checkout whose top is rampart's own
/// workspace: a tarball unpacked inside some other checkout must not report that one's commit.
fn git_commit(manifest: &Path) -> Option<String> {
    let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(manifest).args(args));
    let toplevel = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let workspace = manifest.join("../..");
    if toplevel.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    // Built again when HEAD moves: HEAD itself for a checkout, the branch's ref for a commit.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            let path = manifest.join(path);
            // A file that does not exist would have the script run at every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "--short", "HEAD"])
}

/// The command's standard output, trimmed, when it ran, succeeded and printed something.
fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok().filter(|out| out.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
