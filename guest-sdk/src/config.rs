//! Where a plugin reads its configuration from.
//!
//! Inside the component the values come from the node config
//! (`[plugins.<kind>.config]`) through the `config` host import; in native
//! tests the host imports do not exist, so decision logic that reads
//! through [`ConfigSource`] can be handed a plain map instead.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

/// A read-only source of configuration values, keyed by name.
pub trait ConfigSource {
    /// The raw value for `key`, or `None` when the operator set nothing.
    fn get(&self, key: &str) -> Option<String>;

    /// The value for `key` parsed as `T`, or `default` when it is unset.
    ///
    /// Same contract as [`crate::host::config_or`]: surrounding
    /// whitespace is ignored, and a value that does not parse is an error
    /// naming the key (never echoing the value), so a typo fails closed.
    fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| invalid(key)),
        }
    }
}

/// The error for a key whose value is unusable. Names the key, never the
/// value.
pub fn invalid(key: &str) -> String {
    format!("config key `{key}` has an invalid value")
}

/// The node's configuration, read through the host import. Only usable
/// inside the component: off wasm the host imports are unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostConfig;

impl ConfigSource for HostConfig {
    fn get(&self, key: &str) -> Option<String> {
        crate::host::config(key)
    }

    fn get_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        crate::host::config_or(key, default)
    }
}

/// No configuration at all: every key takes its default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults;

impl ConfigSource for Defaults {
    fn get(&self, _key: &str) -> Option<String> {
        None
    }
}

impl ConfigSource for [(&str, &str)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl<const N: usize> ConfigSource for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        ConfigSource::get(self.as_slice(), key)
    }
}

impl ConfigSource for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

impl<S: std::hash::BuildHasher> ConfigSource for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}
