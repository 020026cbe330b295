//! `agentfed plugin new`: generates a plugin crate that builds and passes
//! its own tests as generated.
//!
//! The crate vendors the guest SDK and the WIT contract this binary was
//! built with (under `vendor/`), so it builds without this repository and
//! always matches the host's WIT version.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugin::PluginKind;

/// The guest SDK and WIT files as (relative path, contents).
const SDK_FILES: &[(&str, &str)] = &[
    (
        "agentfed-guest/src/lib.rs",
        include_str!("../../guest-sdk/src/lib.rs"),
    ),
    (
        "agentfed-guest/src/common.rs",
        include_str!("../../guest-sdk/src/common.rs"),
    ),
    (
        "agentfed-guest/src/config.rs",
        include_str!("../../guest-sdk/src/config.rs"),
    ),
    (
        "agentfed-guest/src/pii_type_names.rs",
        include_str!("../../guest-sdk/src/pii_type_names.rs"),
    ),
    (
        "agentfed-guest/src/trust.rs",
        include_str!("../../guest-sdk/src/trust.rs"),
    ),
    (
        "agentfed-guest/src/pii.rs",
        include_str!("../../guest-sdk/src/pii.rs"),
    ),
    (
        "agentfed-guest/src/spend.rs",
        include_str!("../../guest-sdk/src/spend.rs"),
    ),
    (
        "agentfed-guest/src/handler.rs",
        include_str!("../../guest-sdk/src/handler.rs"),
    ),
    ("wit/types.wit", include_str!("../../wit/types.wit")),
    ("wit/trust.wit", include_str!("../../wit/trust.wit")),
    ("wit/pii.wit", include_str!("../../wit/pii.wit")),
    ("wit/spend.wit", include_str!("../../wit/spend.wit")),
    ("wit/handler.wit", include_str!("../../wit/handler.wit")),
];

const SDK_MANIFEST: &str = r#"[package]
name = "agentfed-guest"
version = "0.1.0"
edition = "2024"
description = "agentfed guest SDK (vendored by `agentfed plugin new`)"
license = "Apache-2.0"

[features]
default = []
trust = []
pii = []
spend = []
handler = []

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc"] }
"#;

fn template(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Trust => include_str!("../templates/trust.rs"),
        PluginKind::Pii => include_str!("../templates/pii.rs"),
        PluginKind::Spend => include_str!("../templates/spend.rs"),
        PluginKind::Handler => include_str!("../templates/handler.rs"),
    }
}

/// Checks a crate name: lowercase ASCII letters, digits, `-` and `_`,
/// starting with a letter, at most 64 characters.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "invalid plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter (at most 64)"
        );
    }
    Ok(())
}

/// Writes the crate to `parent/name` and returns its path. Refuses to
/// touch an existing directory.
pub fn generate(kind: PluginKind, name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let root = parent.join(name);
    if root.exists() {
        bail!(
            "{} already exists; choose another name or directory",
            root.display()
        );
    }
    let files = crate_files(kind, name);
    for (relative, contents) in &files {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

fn crate_files(kind: PluginKind, name: &str) -> Vec<(String, String)> {
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A standalone workspace: building here never attaches to a parent one.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
agentfed-guest = {{ path = "vendor/agentfed-guest", features = ["{kind}"] }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = "debuginfo"
panic = "abort"
"#
    );
    let readme = format!(
        "# {name}\n\nAn agentfed {kind} plugin (world `{world}`).\n\n\
         ```sh\nrustup target add wasm32-wasip2   # once\ncargo test                         # native unit tests\n\
         cargo build --release --target wasm32-wasip2\n\
         agentfed plugin inspect target/wasm32-wasip2/release/{file}.wasm\n```\n\n\
         Load it in a node by adding to `agentfed.toml`:\n\n{load}\n\
         then `agentfed plugin reload {kind}` (or restart the daemon), and check with `agentfed plugin list`.\n\n\
         `vendor/` holds the guest SDK and WIT contract of the agentfed that generated this crate.\n",
        world = kind.world(),
        file = name.replace('-', "_"),
        load = load_snippet(kind, &name.replace('-', "_")),
    );
    let mut files = vec![
        ("Cargo.toml".to_string(), manifest),
        ("README.md".to_string(), readme),
        (
            "src/lib.rs".to_string(),
            template(kind).replace("{{name}}", name),
        ),
        (".gitignore".to_string(), "/target\n".to_string()),
        (
            "vendor/agentfed-guest/Cargo.toml".to_string(),
            SDK_MANIFEST.to_string(),
        ),
    ];
    files.extend(
        SDK_FILES
            .iter()
            .map(|(path, contents)| (format!("vendor/{path}"), (*contents).to_string())),
    );
    files
}

/// The `agentfed.toml` lines that load a generated plugin, for its README
/// and `plugin new`'s output. A PII policy is added after the default one
/// (which keeps its fourteen categories); other kinds replace their slot's
/// default.
pub fn load_snippet(kind: PluginKind, file: &str) -> String {
    match kind {
        PluginKind::Pii => format!(
            "```toml\n\
             # Runs after the default PII policy; per span the strictest action wins,\n\
             # so this crate only handles its own categories. The chain shares one\n\
             # deadline: raise deadline_ms under [plugins.pii.limits] (e.g. to 200).\n\
             [[plugins.pii.add]]\n\
             path = \"/absolute/path/to/{file}.wasm\"\n\
             [plugins.pii.add.config]\n\
             codenames = \"bluebird,kestrel\"\n\
             ```\n\n\
             (To replace the default policy instead, which drops its fourteen categories, set\n\
             `path` and `replace_default = true` under `[plugins.pii]`.)\n"
        ),
        _ => format!("```toml\n[plugins.{kind}]\npath = \"/absolute/path/to/{file}.wasm\"\n```\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("my-policy_2").is_ok());
        for bad in ["", "My", "1abc", "a b", "../x", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("taken")).unwrap();
        let err = generate(PluginKind::Trust, "taken", dir.path()).unwrap_err();
        assert!(err.to_string().contains("already exists"));
    }

    #[test]
    fn writes_a_complete_crate() {
        let dir = tempfile::tempdir().unwrap();
        let root = generate(PluginKind::Pii, "my-pii", dir.path()).unwrap();
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "vendor/agentfed-guest/src/pii.rs",
            "vendor/wit/pii.wit",
        ] {
            assert!(root.join(file).is_file(), "{file}");
        }
        let lib = fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("my-pii") && !lib.contains("{{name}}"));
        // The README adds the policy after the default: a config that
        // parses, with a chain of two.
        let readme = fs::read_to_string(root.join("README.md")).unwrap();
        let toml = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let config = crate::config::NodeConfig::parse(Path::new("README.md"), toml).unwrap();
        assert_eq!(config.plugins.pii.add.len(), 1, "{toml}");
        assert!(!config.plugins.pii.replace_default);
    }
}
