//! Everything a message handler needs: `use agentfed_guest::handler::*;`.

pub use crate::bindings::handler::agentfed::plugin::node::NodeStatus;
pub use crate::bindings::handler::exports::agentfed::plugin::message_handler::{
    HandlerDecision, MessageView,
};
pub use crate::{PluginMetadata, TrustLevel, host};

/// Facts about the node the handler runs in.
pub mod node {
    pub use super::NodeStatus;

    /// The node's current status (id, version, peer counts, uptime).
    pub fn status() -> NodeStatus {
        crate::bindings::handler::agentfed::plugin::node::status()
    }
}

/// A message handler. Export it with
/// [`export_message_handler!`](crate::export_message_handler).
pub trait MessageHandler {
    /// One line shown by `agentfed plugin list`.
    const DESCRIPTION: &'static str;

    /// Decides what happens to one verified inbound message: store it in
    /// the inbox, answer it, or reject it.
    fn handle(message: MessageView) -> Result<HandlerDecision, String>;
}

/// Exports a [`MessageHandler`] implementation as the component's handler
/// world.
#[macro_export]
macro_rules! export_message_handler {
    ($handler:ty) => {
        // Exports exist only in the component; native builds (unit tests)
        // still type-check the implementation.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::handler as __bindings;
            struct __AgentfedHandlerExport;
            impl __bindings::exports::agentfed::plugin::message_handler::Guest
                for __AgentfedHandlerExport
            {
                fn handle(
                    message: $crate::handler::MessageView,
                ) -> ::core::result::Result<$crate::handler::HandlerDecision, ::std::string::String>
                {
                    <$handler as $crate::handler::MessageHandler>::handle(message)
                }
            }
            impl __bindings::Guest for __AgentfedHandlerExport {
                fn metadata() -> $crate::PluginMetadata {
                    $crate::PluginMetadata {
                        name: ::std::string::String::from(env!("CARGO_PKG_NAME")),
                        version: ::std::string::String::from(env!("CARGO_PKG_VERSION")),
                        description: ::std::string::String::from(
                            <$handler as $crate::handler::MessageHandler>::DESCRIPTION,
                        ),
                    }
                }
            }
    __bindings::__export_handler_world!(__AgentfedHandlerExport with_types_in __bindings);
        };
    };
}
