//! Builds the hostile fixtures and the example plugins as components and
//! writes their paths as constants for the tests.

#[path = "../../host/guest_build.rs"]
mod guest_build;

use std::fmt::Write;

/// (constant name, package).
const GUESTS: [(&str, &str); 11] = [
    ("ENDLESS_LOOP", "fixture-endless-loop"),
    ("MEMORY_HOG", "fixture-memory-hog"),
    ("PANICS", "fixture-panics"),
    ("PII_PANICS", "fixture-pii-panics"),
    ("READS_FILES", "fixture-reads-files"),
    ("READS_ENV", "fixture-reads-env"),
    ("OPENS_SOCKET", "fixture-opens-socket"),
    ("STDOUT_FLOOD", "fixture-stdout-flood"),
    ("LEAKY_HANDLER", "fixture-leaky-handler"),
    ("ALLOWLIST_TRUST", "allowlist-trust"),
    ("HIPAA_PII", "hipaa-pii"),
];

fn main() {
    let root = guest_build::workspace_root();
    guest_build::rerun_if_changed(
        &root,
        &["wit", "guest-sdk", "policies", "tests/fixtures", "examples"],
    );
    let mut code = String::new();
    for (constant, package) in GUESTS {
        let path = guest_build::build_guest(&root, "test-artifacts", package);
        writeln!(code, "/// Component built from `{package}`.").expect("String");
        writeln!(
            code,
            "pub const {constant}: &str = {:?};",
            path.display().to_string()
        )
        .expect("String");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("artifacts.rs"), code).expect("writing artifacts.rs");
}
