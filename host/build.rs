//! Builds the default policies (`policies/*`) as components and embeds
//! them, so one `cargo build` yields a node that works out of the box.

#[path = "guest_build.rs"]
mod guest_build;

use std::fmt::Write;

/// (embedded name, package).
const DEFAULT_POLICIES: [(&str, &str); 4] = [
    ("default-trust", "agentfed-policy-trust"),
    ("default-pii", "agentfed-policy-pii"),
    ("default-spend", "agentfed-policy-spend"),
    ("default-handler", "agentfed-policy-handler"),
];

fn main() {
    let root = guest_build::workspace_root();
    guest_build::rerun_if_changed(&root, &["wit", "guest-sdk", "policies"]);
    let mut code = String::from("/// (name, component bytes) of every embedded default policy.\n");
    code.push_str("pub static EMBEDDED: &[(&str, &[u8])] = &[\n");
    for (name, package) in DEFAULT_POLICIES {
        let path = guest_build::build_guest(&root, "policies", package);
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("embedded_policies.rs"), code).expect("writing embedded_policies.rs");
}
