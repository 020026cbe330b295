//! The node's configuration file (`agentfed.toml` in the node home).
//!
//! Every field has a default, so a missing file or a missing section means
//! "use the defaults"; unknown keys are errors, so a typo is caught instead
//! of silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plugin::{Limits, PluginKind};

/// The name of the config file inside the node home.
pub const CONFIG_FILE: &str = "agentfed.toml";

/// Errors reading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or ill-typed keys.
    #[error("{path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Policy plugins, one section per kind.
    pub plugins: PluginsConfig,
}

/// `[plugins.*]`: which component fills each slot, and how it is limited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.trust]`
    pub trust: PluginConfig,
    /// `[plugins.pii]`
    pub pii: PluginConfig,
    /// `[plugins.spend]`
    pub spend: PluginConfig,
    /// `[plugins.handler]`
    pub handler: PluginConfig,
}

impl PluginsConfig {
    /// The section of `kind`.
    pub fn get(&self, kind: PluginKind) -> &PluginConfig {
        match kind {
            PluginKind::Trust => &self.trust,
            PluginKind::Pii => &self.pii,
            PluginKind::Spend => &self.spend,
            PluginKind::Handler => &self.handler,
        }
    }
}

/// One plugin slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of a `.wasm` component (relative paths are relative to the
    /// node home); unset means the embedded default policy.
    pub path: Option<PathBuf>,
    /// Sandbox limits of every call.
    pub limits: Limits,
    /// Values the plugin reads with `host.config(key)`.
    pub config: BTreeMap<String, String>,
}

impl NodeConfig {
    /// Reads `home/agentfed.toml`; a missing file gives the defaults.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// The component path configured for `kind`, resolved against `home`.
    pub fn plugin_path(&self, home: &Path, kind: PluginKind) -> Option<PathBuf> {
        self.plugins.get(kind).path.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                home.join(p)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let config = NodeConfig::parse(Path::new("x"), "").unwrap();
        assert_eq!(config, NodeConfig::default());
        assert_eq!(config.plugins.pii.limits.deadline_ms, 50);
        assert_eq!(config.plugins.pii.limits.memory_mib, 64);
    }

    #[test]
    fn plugin_sections_parse() {
        let text = r#"
            [plugins.trust]
            path = "plugins/allowlist_trust.wasm"
            [plugins.trust.limits]
            deadline_ms = 20
            [plugins.trust.config]
            allow = "lab-*,alice"
        "#;
        let config = NodeConfig::parse(Path::new("x"), text).unwrap();
        assert_eq!(config.plugins.trust.limits.deadline_ms, 20);
        assert_eq!(config.plugins.trust.limits.memory_mib, 64);
        assert_eq!(config.plugins.trust.config["allow"], "lab-*,alice");
        assert_eq!(
            config.plugin_path(Path::new("/home/n"), PluginKind::Trust),
            Some(PathBuf::from("/home/n/plugins/allowlist_trust.wasm"))
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = NodeConfig::parse(Path::new("cfg.toml"), "[plugins.trust]\npth = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg.toml"), "{err}");
        assert!(err.contains("pth"), "{err}");
    }
}
