//! Build information for `/info` and `fieldseal_build_info`: the rustc
//! version and, in release builds, the git commit (from the local checkout,
//! no network). Debug builds skip git so a commit does not rebuild the crate;
//! `FIELDSEAL_GIT_COMMIT` overrides both (e.g. a Docker build without `.git`).

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FIELDSEAL_GIT_COMMIT");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    let commit = match std::env::var("FIELDSEAL_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ if std::env::var("PROFILE").as_deref() == Ok("release") => git_commit(),
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=FIELDSEAL_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=FIELDSEAL_BUILD_COMMIT={commit}");
}

/// The checkout's HEAD commit; the script reruns when HEAD or the branch it
/// names moves. (No "dirty" mark: edits that touch no git file would not
/// rerun the script, so it could go stale.)
fn git_commit() -> String {
    let Some(commit) = output("git", &["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let head_ref = output("git", &["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD", "packed-refs"]
        .into_iter()
        .chain(head_ref.as_deref())
    {
        // Only files that exist: cargo reruns the script on every build for
        // a missing one.
        if let Some(p) = output("git", &["rev-parse", "--git-path", path]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    commit
}
