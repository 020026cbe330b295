//! Write agentfed policy plugins in Rust.
//!
//! agentfed asks sandboxed WebAssembly components four kinds of question:
//! whom to trust ([`TrustPolicy`]), what in a payload is personal data and
//! what to do with it ([`PiiPolicy`]), when a peer's spend or failures trip
//! its circuit breaker ([`SpendPolicy`]), and what to do with an inbound
//! message ([`MessageHandler`]). A plugin implements one trait and exports it
//! with one macro; `cargo build --release --target wasm32-wasip2` then yields
//! a component the node can load.
//!
//! Enable exactly one cargo feature, named after the kind you export
//! (`trust`, `pii`, `spend` or `handler`), and make the crate a `cdylib`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! agentfed-guest = { version = "0.1", features = ["trust"] }
//! ```
//!
//! A complete trust plugin that never moves anyone:
//!
//! ```ignore
//! use agentfed_guest::trust::*;
//!
//! pub struct StayPut;
//!
//! impl TrustPolicy for StayPut {
//!     const DESCRIPTION: &'static str = "keeps every peer where it is";
//!
//!     fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String> {
//!         Ok(TrustDecision {
//!             action: TrustAction::Keep,
//!             score: 0.0,
//!             components: vec![],
//!             reason: format!("{} stays at {:?}", peer.node_id, peer.level),
//!         })
//!     }
//! }
//!
//! agentfed_guest::export_trust_policy!(StayPut);
//! ```
//!
//! The README of the repository has one complete plugin per kind, and
//! `agentfed plugin new KIND NAME` scaffolds a crate that builds and tests.
//!
//! Decisions are data: the host validates every answer (a trust plugin
//! cannot promote two levels at once, a spend plugin cannot reactivate a
//! peer) and treats an `Err`, a trap, a timeout or an exhausted memory limit
//! as the safe answer for that kind (no transition, message blocked or
//! rejected).
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    /// Shared types and the host imports, generated once for every kind.
    pub mod common {
        wit_bindgen::generate!({
            path: "../wit",
            world: "agentfed:plugin/plugin-host@0.1.0",
            generate_all,
        });
    }

    #[cfg(feature = "trust")]
    pub mod trust {
        wit_bindgen::generate!({
            path: "../wit",
            world: "agentfed:plugin/trust@0.1.0",
            with: {
                "agentfed:plugin/types@0.1.0": crate::bindings::common::agentfed::plugin::types,
                "agentfed:plugin/host@0.1.0": crate::bindings::common::agentfed::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_trust_world",
            default_bindings_module: "agentfed_guest::bindings::trust",
        });
    }

    #[cfg(feature = "pii")]
    pub mod pii {
        wit_bindgen::generate!({
            path: "../wit",
            world: "agentfed:plugin/pii@0.1.0",
            with: {
                "agentfed:plugin/types@0.1.0": crate::bindings::common::agentfed::plugin::types,
                "agentfed:plugin/host@0.1.0": crate::bindings::common::agentfed::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_pii_world",
            default_bindings_module: "agentfed_guest::bindings::pii",
        });
    }

    #[cfg(feature = "spend")]
    pub mod spend {
        wit_bindgen::generate!({
            path: "../wit",
            world: "agentfed:plugin/spend@0.1.0",
            with: {
                "agentfed:plugin/types@0.1.0": crate::bindings::common::agentfed::plugin::types,
                "agentfed:plugin/host@0.1.0": crate::bindings::common::agentfed::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_spend_world",
            default_bindings_module: "agentfed_guest::bindings::spend",
        });
    }

    #[cfg(feature = "handler")]
    pub mod handler {
        wit_bindgen::generate!({
            path: "../wit",
            world: "agentfed:plugin/handler@0.1.0",
            with: {
                "agentfed:plugin/types@0.1.0": crate::bindings::common::agentfed::plugin::types,
                "agentfed:plugin/host@0.1.0": crate::bindings::common::agentfed::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_handler_world",
            default_bindings_module: "agentfed_guest::bindings::handler",
        });
    }
}

mod common;
pub use common::*;

/// Reading plugin configuration in a way native tests can replace.
pub mod config;

/// Trust plugins: decide promotions and demotions on the trust ladder.
#[cfg(feature = "trust")]
pub mod trust;

/// PII plugins: find personal data and secrets and decide what happens.
#[cfg(feature = "pii")]
pub mod pii;

/// Spend plugins: decide when a peer's circuit breaker trips.
#[cfg(feature = "spend")]
pub mod spend;

/// Message handlers: decide what happens to a verified inbound message.
#[cfg(feature = "handler")]
pub mod handler;
