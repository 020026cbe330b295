//! Everything a PII plugin needs: `use agentfed_guest::pii::*;`.

pub use crate::bindings::pii::exports::agentfed::plugin::pii_policy::{
    Detection, PiiAction, PiiType, RewrittenValue, ScanRequest, ScanResult,
};
pub use crate::{Direction, PluginMetadata, StringValue, TrustLevel, host, last_path_segment};

/// A PII policy. Export it with [`export_pii_policy!`](crate::export_pii_policy).
pub trait PiiPolicy {
    /// One line shown by `agentfed plugin list`.
    const DESCRIPTION: &'static str;

    /// Scans every string value of one message and decides, per finding,
    /// whether it passes, is redacted, hashed, or blocks the message.
    fn scan(request: ScanRequest) -> Result<ScanResult, String>;
}

/// Exports a [`PiiPolicy`] implementation as the component's PII world.
#[macro_export]
macro_rules! export_pii_policy {
    ($policy:ty) => {
        // Exports exist only in the component; native builds (unit tests)
        // still type-check the implementation.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::pii as __bindings;
            struct __AgentfedPiiExport;
            impl __bindings::exports::agentfed::plugin::pii_policy::Guest for __AgentfedPiiExport {
                fn scan(
                    request: $crate::pii::ScanRequest,
                ) -> ::core::result::Result<$crate::pii::ScanResult, ::std::string::String>
                {
                    <$policy as $crate::pii::PiiPolicy>::scan(request)
                }
            }
            impl __bindings::Guest for __AgentfedPiiExport {
                fn metadata() -> $crate::PluginMetadata {
                    $crate::PluginMetadata {
                        name: ::std::string::String::from(env!("CARGO_PKG_NAME")),
                        version: ::std::string::String::from(env!("CARGO_PKG_VERSION")),
                        description: ::std::string::String::from(
                            <$policy as $crate::pii::PiiPolicy>::DESCRIPTION,
                        ),
                    }
                }
            }
    __bindings::__export_pii_world!(__AgentfedPiiExport with_types_in __bindings);
        };
    };
}

include!("pii_type_names.rs");
