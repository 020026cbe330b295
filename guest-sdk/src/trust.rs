//! Everything a trust plugin needs: `use agentfed_guest::trust::*;`.

pub use crate::bindings::trust::exports::agentfed::plugin::trust_policy::{
    ScoreComponent, TrustAction, TrustDecision,
};
pub use crate::{PeerSnapshot, PluginMetadata, TrustLevel, host};

/// A trust policy. Export it with [`export_trust_policy!`](crate::export_trust_policy).
pub trait TrustPolicy {
    /// One line shown by `agentfed plugin list`.
    const DESCRIPTION: &'static str;

    /// Decides whether `peer` keeps its level, is promoted one level, is
    /// demoted, or qualifies for PRIVILEGED (which an operator confirms).
    fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String>;
}

/// Exports a [`TrustPolicy`] implementation as the component's trust world.
#[macro_export]
macro_rules! export_trust_policy {
    ($policy:ty) => {
        // Exports exist only in the component; native builds (unit tests)
        // still type-check the implementation.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::trust as __bindings;
            struct __AgentfedTrustExport;
            impl __bindings::exports::agentfed::plugin::trust_policy::Guest for __AgentfedTrustExport {
                fn evaluate(
                    peer: $crate::PeerSnapshot,
                ) -> ::core::result::Result<$crate::trust::TrustDecision, ::std::string::String> {
                    <$policy as $crate::trust::TrustPolicy>::evaluate(peer)
                }
            }
            impl __bindings::Guest for __AgentfedTrustExport {
                fn metadata() -> $crate::PluginMetadata {
                    $crate::PluginMetadata {
                        name: ::std::string::String::from(env!("CARGO_PKG_NAME")),
                        version: ::std::string::String::from(env!("CARGO_PKG_VERSION")),
                        description: ::std::string::String::from(
                            <$policy as $crate::trust::TrustPolicy>::DESCRIPTION,
                        ),
                    }
                }
            }
            __bindings::__export_trust_world!(__AgentfedTrustExport with_types_in __bindings);
        };
    };
}
