//! The host functions plugins import (`agentfed:plugin/host`,
//! `agentfed:plugin/node`). They are the only way out of the sandbox, and
//! each is bounded: log lines are truncated and counted, the hash never
//! reveals its key, configuration is read-only.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::bindings::common::agentfed::plugin::{host, types};
use super::bindings::handler::agentfed::plugin::node;
use super::bindings::{LogLevel, NodeStatus};
use super::sandbox::StoreState;

/// Longest log line kept from a plugin, in bytes.
pub const MAX_LOG_LINE: usize = 1024;

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.log_lines_left == 0 {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines_left -= 1;
        let message = truncate_on_char_boundary(&message, MAX_LOG_LINE);
        let plugin = &*self.host.plugin_label;
        match level {
            LogLevel::Trace => tracing::trace!(target: "agentfed::plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "agentfed::plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "agentfed::plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "agentfed::plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "agentfed::plugin", plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        self.host.clock.now_ms()
    }

    fn keyed_hash(&mut self, data: String) -> String {
        keyed_hash(&self.host.hash_key, data.as_bytes())
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.host.config.get(&key).cloned()
    }
}

impl node::Host for StoreState {
    fn status(&mut self) -> NodeStatus {
        self.host.node_status.status()
    }
}

/// HMAC-SHA256 of `data` under `key`, first 8 bytes as 16 lowercase hex
/// digits: enough to correlate equal values, useless without the key.
pub fn keyed_hash(key: &[u8; 32], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..8])
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char
/// boundary.
pub(crate) fn truncate_on_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hash_depends_on_key_and_data() {
        let a = keyed_hash(&[1; 32], b"bob@example.com");
        assert_eq!(a.len(), 16);
        assert_eq!(a, keyed_hash(&[1; 32], b"bob@example.com"));
        assert_ne!(a, keyed_hash(&[2; 32], b"bob@example.com"));
        assert_ne!(a, keyed_hash(&[1; 32], b"alice@example.com"));
        assert!(!"bob@example.com".starts_with(&a));
    }

    #[test]
    fn truncation_respects_utf8() {
        assert_eq!(truncate_on_char_boundary("héllo", 2), "h");
        assert_eq!(truncate_on_char_boundary("héllo", 3), "hé");
        assert_eq!(truncate_on_char_boundary("abc", 10), "abc");
    }
}
