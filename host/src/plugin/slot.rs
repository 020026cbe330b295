//! Hot-reloadable plugin slots.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::PluginKind;
use super::error::PluginError;
use super::loaded::LoadedPlugin;

/// The current plugin of one kind. Readers take an `Arc` of the current
/// plugin without locking; a reload swaps in a new one atomically, and
/// calls already running keep the plugin they started with until they
/// return, so nothing in flight is dropped.
pub struct PluginSlot {
    kind: PluginKind,
    current: ArcSwap<LoadedPlugin>,
}

impl std::fmt::Debug for PluginSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSlot")
            .field("kind", &self.kind)
            .field("current", &self.current.load().label())
            .finish()
    }
}

impl PluginSlot {
    /// A slot holding `plugin`, which must be of `kind`.
    pub fn new(kind: PluginKind, plugin: Arc<LoadedPlugin>) -> Result<Self, PluginError> {
        check_kind(kind, &plugin)?;
        Ok(PluginSlot {
            kind,
            current: ArcSwap::new(plugin),
        })
    }

    /// The slot's kind.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The current plugin.
    pub fn get(&self) -> Arc<LoadedPlugin> {
        self.current.load_full()
    }

    /// Replaces the plugin; returns the previous one.
    pub fn replace(&self, plugin: Arc<LoadedPlugin>) -> Result<Arc<LoadedPlugin>, PluginError> {
        check_kind(self.kind, &plugin)?;
        Ok(self.current.swap(plugin))
    }
}

fn check_kind(kind: PluginKind, plugin: &LoadedPlugin) -> Result<(), PluginError> {
    if plugin.kind() == kind {
        Ok(())
    } else {
        Err(PluginError::WrongWorld {
            source_label: plugin.source().to_string(),
            kind,
            expected: kind.export_interface(),
            found: format!(" (it is a {} plugin)", plugin.kind()),
        })
    }
}

/// One slot per kind: what a node runs.
#[derive(Debug)]
pub struct PluginSet {
    /// Trust decisions.
    pub trust: PluginSlot,
    /// PII scanning.
    pub pii: PluginSlot,
    /// Spend and breaker decisions.
    pub spend: PluginSlot,
    /// Inbound message handling.
    pub handler: PluginSlot,
}

impl PluginSet {
    /// The slot of `kind`.
    pub fn slot(&self, kind: PluginKind) -> &PluginSlot {
        match kind {
            PluginKind::Trust => &self.trust,
            PluginKind::Pii => &self.pii,
            PluginKind::Spend => &self.spend,
            PluginKind::Handler => &self.handler,
        }
    }
}
