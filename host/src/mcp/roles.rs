//! The bridge's roles: an agent sees the federation tools; the operator
//! also sees the tools the user guide marks as operator tools.

use clap::ValueEnum;

/// Who drives the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An AI agent: operator tools are not listed and are refused.
    Agent,
    /// The node's operator: every tool.
    Operator,
}

impl Role {
    /// The audit actor of operator events caused through the bridge.
    pub fn actor(self) -> &'static str {
        match self {
            Role::Agent => crate::audit::ACTOR_MCP_AGENT,
            Role::Operator => crate::audit::ACTOR_MCP_OPERATOR,
        }
    }

    /// Whether this role may call a tool that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Operator || needed == Role::Agent
    }

    /// `agent` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }
}

/// The code of a refused operator tool (or `federation_trust` setting a
/// level) in the agent role.
pub const OPERATOR_ONLY: &str = "OPERATOR_ONLY";

/// The refusal text of `tool` in the agent role.
pub fn operator_only(tool: &str) -> String {
    format!(
        "{tool} is an operator tool; this bridge runs in the agent role (start it with --role operator to enable operator tools)"
    )
}
