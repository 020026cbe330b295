//! Hot-reloadable plugin slots.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::PluginKind;
use super::error::PluginError;
use super::loaded::LoadedPlugin;

/// The current plugin of one kind, or for PII the current chain of
/// policies (the main one first). Readers take an `Arc` of the current
/// chain without locking; a reload swaps in a new one atomically, and
/// calls already running keep the chain they started with until they
/// return, so nothing in flight is dropped.
pub struct PluginSlot {
    kind: PluginKind,
    current: ArcSwap<Vec<Arc<LoadedPlugin>>>,
}

impl std::fmt::Debug for PluginSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<String> = self.current.load().iter().map(|p| p.label()).collect();
        f.debug_struct("PluginSlot")
            .field("kind", &self.kind)
            .field("chain", &labels)
            .finish()
    }
}

impl PluginSlot {
    /// A slot holding `plugin`, which must be of `kind`.
    pub fn new(kind: PluginKind, plugin: Arc<LoadedPlugin>) -> Result<Self, PluginError> {
        Self::with_chain(kind, vec![plugin])
    }

    /// A slot holding `chain` (main policy first; more than one only for
    /// PII), every element of `kind`.
    pub fn with_chain(
        kind: PluginKind,
        chain: Vec<Arc<LoadedPlugin>>,
    ) -> Result<Self, PluginError> {
        check_chain(kind, &chain)?;
        Ok(PluginSlot {
            kind,
            current: ArcSwap::from_pointee(chain),
        })
    }

    /// The slot's kind.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The current (main) plugin.
    pub fn get(&self) -> Arc<LoadedPlugin> {
        self.current.load()[0].clone()
    }

    /// The current chain, main policy first.
    pub fn chain(&self) -> Arc<Vec<Arc<LoadedPlugin>>> {
        self.current.load_full()
    }

    /// Replaces the plugin (and any chain) with one; returns the previous
    /// main plugin.
    pub fn replace(&self, plugin: Arc<LoadedPlugin>) -> Result<Arc<LoadedPlugin>, PluginError> {
        Ok(self.replace_chain(vec![plugin])?[0].clone())
    }

    /// Replaces the whole chain at once; returns the previous one.
    pub fn replace_chain(
        &self,
        chain: Vec<Arc<LoadedPlugin>>,
    ) -> Result<Arc<Vec<Arc<LoadedPlugin>>>, PluginError> {
        check_chain(self.kind, &chain)?;
        Ok(self.current.swap(Arc::new(chain)))
    }
}

fn check_chain(kind: PluginKind, chain: &[Arc<LoadedPlugin>]) -> Result<(), PluginError> {
    if chain.is_empty() || (chain.len() > 1 && kind != PluginKind::Pii) {
        return Err(PluginError::Chain {
            kind,
            reason: if chain.is_empty() {
                "a slot needs a plugin".into()
            } else {
                format!("only the pii slot holds a chain; {kind} holds one plugin")
            },
        });
    }
    chain.iter().try_for_each(|plugin| check_kind(kind, plugin))
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
