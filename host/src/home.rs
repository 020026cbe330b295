//! Where a node keeps its files.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home.
pub const HOME_ENV: &str = "AGENTFED_HOME";

/// The node home: `--home`, else `$AGENTFED_HOME`, else `~/.agentfed`.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".agentfed")
}

/// The precompiled plugin cache inside a home.
pub fn plugin_cache_dir(home: &Path) -> PathBuf {
    home.join("cache").join("plugins")
}
