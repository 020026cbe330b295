//! Types and host functions shared by every plugin kind.

use crate::bindings::common::agentfed::plugin::host as wit_host;

pub use crate::bindings::common::agentfed::plugin::types::{
    BreakerState, BreakerView, Direction, InteractionMetrics, LogLevel, PeerSnapshot,
    PluginMetadata, SpendWindow, StringValue, TrustLevel,
};

/// Functions the host offers every plugin.
pub mod host {
    use super::{LogLevel, wit_host};

    /// Writes a line to the node's log (truncated and rate-limited by the
    /// host). Prefer this to `println!`, whose output the host only keeps
    /// in bounded form.
    pub fn log(level: LogLevel, message: &str) {
        wit_host::log(level, message)
    }

    /// The host's clock in milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        wit_host::now_ms()
    }

    /// Keyed hash of `data` with the node's secret (16 hex digits). Use it
    /// for the `hash` PII action: equal inputs correlate, values stay secret.
    pub fn keyed_hash(data: &str) -> String {
        wit_host::keyed_hash(data)
    }

    /// This plugin's configuration value for `key`, from the node config.
    pub fn config(key: &str) -> Option<String> {
        wit_host::config(key)
    }

    /// A configuration value parsed as `T`, or `default` when it is unset.
    /// A value that does not parse is an error naming the key, so a typo in
    /// the node config fails closed instead of silently using the default.
    pub fn config_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T, String> {
        match config(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| crate::config::invalid(key)),
        }
    }
}

impl TrustLevel {
    /// All levels, lowest first.
    pub const ALL: [TrustLevel; 5] = [
        TrustLevel::Untrusted,
        TrustLevel::Verified,
        TrustLevel::Attested,
        TrustLevel::Trusted,
        TrustLevel::Privileged,
    ];

    /// Position on the ladder, 0 for UNTRUSTED up to 4 for PRIVILEGED.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The next level up, if any.
    pub fn above(self) -> Option<TrustLevel> {
        Self::ALL.get(self.rank() as usize + 1).copied()
    }

    /// The next level down, if any.
    pub fn below(self) -> Option<TrustLevel> {
        (self.rank() as usize).checked_sub(1).map(|i| Self::ALL[i])
    }
}

/// The field name at the end of a JSON Pointer (`/user/api_key` →
/// `api_key`), with `~1` and `~0` unescaped. Empty for the root.
pub fn last_path_segment(pointer: &str) -> std::borrow::Cow<'_, str> {
    let last = pointer.rsplit('/').next().unwrap_or("");
    if last.contains('~') {
        std::borrow::Cow::Owned(last.replace("~1", "/").replace("~0", "~"))
    } else {
        std::borrow::Cow::Borrowed(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_neighbours() {
        assert_eq!(TrustLevel::Untrusted.below(), None);
        assert_eq!(TrustLevel::Untrusted.above(), Some(TrustLevel::Verified));
        assert_eq!(TrustLevel::Privileged.above(), None);
        assert_eq!(TrustLevel::Trusted.below(), Some(TrustLevel::Attested));
    }

    #[test]
    fn pointer_segments() {
        assert_eq!(last_path_segment("/user/api_key"), "api_key");
        assert_eq!(last_path_segment("/a~1b"), "a/b");
        assert_eq!(last_path_segment("/m~0n"), "m~n");
        assert_eq!(last_path_segment(""), "");
    }
}
