//! Host-side bindings generated from `wit/`, one module per world.
//!
//! The shared `types` and `host` interfaces are generated once (from the
//! `plugin-host` world) and every plugin world maps onto them with `with`,
//! so a `TrustLevel` is the same Rust type in all four worlds. Generated
//! types also derive serde so `agentfed plugin run` can take and print JSON.

/// Shared types and the `host` import interface.
#[allow(missing_docs)]
pub mod common {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agentfed:plugin/plugin-host@0.1.0",
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

/// The trust world.
#[allow(missing_docs)]
pub mod trust {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agentfed:plugin/trust@0.1.0",
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "agentfed:plugin/types@0.1.0": super::common::agentfed::plugin::types,
            "agentfed:plugin/host@0.1.0": super::common::agentfed::plugin::host,
        },
    });
}

/// The PII world.
#[allow(missing_docs)]
pub mod pii {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agentfed:plugin/pii@0.1.0",
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "agentfed:plugin/types@0.1.0": super::common::agentfed::plugin::types,
            "agentfed:plugin/host@0.1.0": super::common::agentfed::plugin::host,
        },
    });
}

/// The spend world.
#[allow(missing_docs)]
pub mod spend {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agentfed:plugin/spend@0.1.0",
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "agentfed:plugin/types@0.1.0": super::common::agentfed::plugin::types,
            "agentfed:plugin/host@0.1.0": super::common::agentfed::plugin::host,
        },
    });
}

/// The message-handler world.
#[allow(missing_docs)]
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agentfed:plugin/handler@0.1.0",
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "agentfed:plugin/types@0.1.0": super::common::agentfed::plugin::types,
            "agentfed:plugin/host@0.1.0": super::common::agentfed::plugin::host,
        },
    });
}

pub use common::agentfed::plugin::types::{
    BreakerState, BreakerView, Direction, InteractionMetrics, LogLevel, PeerSnapshot,
    PluginMetadata, SpendWindow, StringValue, TrustLevel,
};
pub use handler::agentfed::plugin::node::NodeStatus;
pub use handler::exports::agentfed::plugin::message_handler::{HandlerDecision, MessageView};
pub use pii::exports::agentfed::plugin::pii_policy::{
    Detection, PiiAction, PiiType, RewrittenValue, ScanRequest, ScanResult,
};
pub use spend::exports::agentfed::plugin::spend_policy::{SpendDecision, SpendRequest};
pub use trust::exports::agentfed::plugin::trust_policy::{
    ScoreComponent, TrustAction, TrustDecision,
};

// The category names live in the guest SDK, so guests and the host agree.
include!("../../../guest-sdk/src/pii_type_names.rs");
