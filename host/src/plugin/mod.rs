//! The plugin runtime: loads policy components, runs them in a sandbox,
//! and hands their decisions back as plain data.
//!
//! * One [`PluginRuntime`] per process owns the wasmtime `Engine`, one
//!   `Linker` per plugin kind, the epoch ticker that enforces deadlines,
//!   and the precompiled-artifact [`ArtifactCache`].
//! * [`PluginRuntime::load`] checks that a component exports the world of
//!   its slot, pre-instantiates it, and returns a [`LoadedPlugin`].
//! * A [`LoadedPlugin`] keeps a pool of warm instances: concurrent calls
//!   each take their own instance (they never serialise on one), a call
//!   that traps discards its instance, and a clean one goes back to the
//!   pool.
//! * A [`PluginSlot`] holds the current plugin of one kind and swaps it
//!   atomically on hot reload; calls in flight finish on the plugin they
//!   started with.

mod bindings;
mod cache;
mod error;
mod host_api;
mod loaded;
mod runtime;
mod sandbox;
mod slot;

pub use bindings::*;
pub use cache::{ArtifactCache, CACHE_KEY_FILE, CacheError, CacheOutcome};
pub use error::PluginError;
pub use host_api::keyed_hash;
pub(crate) use host_api::truncate_on_char_boundary as truncate;
pub use loaded::LoadedPlugin;
pub use runtime::{ComponentInfo, PluginRuntime, PluginSource, RuntimeOptions};
pub use sandbox::{Clock, HostContext, Limits, NodeStatusSource, StaticNodeStatus, SystemClock};
pub use slot::{PluginSet, PluginSlot};

/// The four kinds of plugin, one WIT world each.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Trust ladder decisions (`agentfed:plugin/trust`).
    Trust,
    /// PII detection and actions (`agentfed:plugin/pii`).
    Pii,
    /// Spend and circuit-breaker decisions (`agentfed:plugin/spend`).
    Spend,
    /// Inbound message handling (`agentfed:plugin/handler`).
    Handler,
}

impl PluginKind {
    /// Every kind, in a stable order.
    pub const ALL: [PluginKind; 4] = [
        PluginKind::Trust,
        PluginKind::Pii,
        PluginKind::Spend,
        PluginKind::Handler,
    ];

    /// The lowercase name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Trust => "trust",
            PluginKind::Pii => "pii",
            PluginKind::Spend => "spend",
            PluginKind::Handler => "handler",
        }
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Trust => "agentfed:plugin/trust@0.1.0",
            PluginKind::Pii => "agentfed:plugin/pii@0.1.0",
            PluginKind::Spend => "agentfed:plugin/spend@0.1.0",
            PluginKind::Handler => "agentfed:plugin/handler@0.1.0",
        }
    }

    /// The interface a component must export to fill this kind's slot.
    pub fn export_interface(self) -> &'static str {
        match self {
            PluginKind::Trust => "agentfed:plugin/trust-policy@0.1.0",
            PluginKind::Pii => "agentfed:plugin/pii-policy@0.1.0",
            PluginKind::Spend => "agentfed:plugin/spend-policy@0.1.0",
            PluginKind::Handler => "agentfed:plugin/message-handler@0.1.0",
        }
    }

    /// The kind whose interface a component exports, if any.
    pub fn from_exports<'a>(mut exports: impl Iterator<Item = &'a str>) -> Option<PluginKind> {
        exports.find_map(|name| {
            PluginKind::ALL
                .into_iter()
                .find(|kind| kind.export_interface() == name)
        })
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PluginKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PluginKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown plugin kind `{s}`: expected trust, pii, spend or handler")
            })
    }
}
