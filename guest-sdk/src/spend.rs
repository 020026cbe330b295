//! Everything a spend plugin needs: `use agentfed_guest::spend::*;`.

pub use crate::bindings::spend::exports::agentfed::plugin::spend_policy::{
    SpendDecision, SpendRequest,
};
pub use crate::{BreakerState, BreakerView, PluginMetadata, SpendWindow, host};

/// A spend (circuit breaker) policy. Export it with
/// [`export_spend_policy!`](crate::export_spend_policy).
pub trait SpendPolicy {
    /// One line shown by `agentfed plugin list`.
    const DESCRIPTION: &'static str;

    /// Decides whether the peer's breaker should trip, escalate, or has
    /// become eligible for an operator's reactivation.
    fn evaluate(request: SpendRequest) -> Result<SpendDecision, String>;
}

/// Exports a [`SpendPolicy`] implementation as the component's spend world.
#[macro_export]
macro_rules! export_spend_policy {
    ($policy:ty) => {
        // Exports exist only in the component; native builds (unit tests)
        // still type-check the implementation.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::spend as __bindings;
            struct __AgentfedSpendExport;
            impl __bindings::exports::agentfed::plugin::spend_policy::Guest for __AgentfedSpendExport {
                fn evaluate(
                    request: $crate::spend::SpendRequest,
                ) -> ::core::result::Result<$crate::spend::SpendDecision, ::std::string::String> {
                    <$policy as $crate::spend::SpendPolicy>::evaluate(request)
                }
            }
            impl __bindings::Guest for __AgentfedSpendExport {
                fn metadata() -> $crate::PluginMetadata {
                    $crate::PluginMetadata {
                        name: ::std::string::String::from(env!("CARGO_PKG_NAME")),
                        version: ::std::string::String::from(env!("CARGO_PKG_VERSION")),
                        description: ::std::string::String::from(
                            <$policy as $crate::spend::SpendPolicy>::DESCRIPTION,
                        ),
                    }
                }
            }
            __bindings::__export_spend_world!(__AgentfedSpendExport with_types_in __bindings);
        };
    };
}
