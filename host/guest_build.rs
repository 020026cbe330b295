//! Builds guest crates of this workspace as wasm32-wasip2 components from
//! a build script (shared by `host/build.rs` and `tests/artifacts/build.rs`),
//! the way wasmtime's test-programs do.
//!
//! Each crate gets its own `cargo build` so that cargo features do not
//! unify across plugins: a component must embed exactly one world.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (parent of the crate running the build script).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    manifest
        .ancestors()
        .find(|dir| dir.join("wit").is_dir() && dir.join("guest-sdk").is_dir())
        .expect("the build script runs inside the agentfed workspace")
        .to_path_buf()
}

/// Where a group of guest builds goes: a target directory of its own, so
/// the nested cargo never waits on the outer build's lock, and so groups
/// never overwrite each other's components (a cdylib's file name has no
/// hash: `hipaa-pii` rebuilds `agentfed-policy-pii` without its export
/// under the same name as the default policy).
pub fn guest_target_dir(root: &Path, group: &str) -> PathBuf {
    root.join("target").join("guests").join(group)
}

/// Builds `package` into the target directory of `group` and returns the
/// path of its component.
pub fn build_guest(root: &Path, group: &str, package: &str) -> PathBuf {
    let target_dir = guest_target_dir(root, group);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--quiet",
            "--profile",
            "guest",
            "--target",
            "wasm32-wasip2",
        ])
        .args(["-p", package])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    if !status.success() {
        panic!(
            "building the {package} component failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
    }
    let file = format!("{}.wasm", package.replace('-', "_"));
    let path = target_dir.join("wasm32-wasip2").join("guest").join(file);
    assert!(path.is_file(), "{} was not produced", path.display());
    path
}

/// Tells cargo to rerun the build script when guest sources change.
pub fn rerun_if_changed(root: &Path, dirs: &[&str]) {
    for dir in dirs {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
}
