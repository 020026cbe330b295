//! Typed plugin failures. Every variant is a reason to fail closed: the
//! caller denies, blocks or skips the transition, audits the error, and the
//! host keeps serving.

use std::path::PathBuf;

use super::PluginKind;

/// Why loading or calling a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component (a core module, text,
    /// garbage, or a component this engine cannot compile).
    #[error("{source_label} is not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// File name or embedded name.
        source_label: String,
        /// What the compiler said.
        reason: String,
    },
    /// The component exports some other world than the slot needs.
    #[error(
        "{source_label} does not export `{expected}`, so it cannot be used as a {kind} plugin{found}"
    )]
    WrongWorld {
        /// File name or embedded name.
        source_label: String,
        /// The slot it was loaded into.
        kind: PluginKind,
        /// The interface the slot needs.
        expected: &'static str,
        /// What it looks like instead, e.g. " (it is a pii plugin)".
        found: String,
    },
    /// The component imports something the host does not provide.
    #[error("{source_label} needs imports the host does not provide: {reason}")]
    Link {
        /// File name or embedded name.
        source_label: String,
        /// The linker's message (names the missing import).
        reason: String,
    },
    /// Instantiation failed (start function trapped, limits hit).
    #[error("{plugin} could not be instantiated: {reason}")]
    Instantiate {
        /// `name@version` or the source label.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("{plugin} timed out after {deadline_ms} ms")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The deadline it ran past.
        deadline_ms: u64,
    },
    /// The plugin tried to grow its memory past the cap and trapped.
    #[error("{plugin} exceeded its memory limit of {limit_mib} MiB")]
    OutOfMemory {
        /// The plugin.
        plugin: String,
        /// The cap.
        limit_mib: u64,
    },
    /// The plugin panicked (reached `unreachable`).
    #[error("{plugin} panicked{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Panic {
        /// The plugin.
        plugin: String,
        /// The panic message, if the guest printed one.
        message: Option<String>,
    },
    /// Any other trap.
    #[error("{plugin} trapped: {reason}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The trap.
        reason: String,
    },
    /// The plugin returned `err(reason)`.
    #[error("{plugin} refused the call: {reason}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The engine could not be created.
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// A slot was given a chain it cannot hold.
    #[error("{kind} slot: {reason}")]
    Chain {
        /// The slot.
        kind: PluginKind,
        /// What is wrong with the chain.
        reason: String,
    },
}

impl PluginError {
    /// A short constant code for audit records and the control API.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Read { .. } => "PLUGIN_READ_FAILED",
            PluginError::NotAComponent { .. } => "PLUGIN_NOT_A_COMPONENT",
            PluginError::WrongWorld { .. } => "PLUGIN_WRONG_WORLD",
            PluginError::Link { .. } => "PLUGIN_LINK_FAILED",
            PluginError::Instantiate { .. } => "PLUGIN_INSTANTIATE_FAILED",
            PluginError::Timeout { .. } => "PLUGIN_TIMEOUT",
            PluginError::OutOfMemory { .. } => "PLUGIN_OUT_OF_MEMORY",
            PluginError::Panic { .. } => "PLUGIN_PANIC",
            PluginError::Trap { .. } => "PLUGIN_TRAP",
            PluginError::Refused { .. } => "PLUGIN_REFUSED",
            PluginError::Engine(_) => "PLUGIN_ENGINE",
            PluginError::Chain { .. } => "PLUGIN_CHAIN",
        }
    }
}
