//! `agentfed mcp`: the MCP bridge. AI agents (Claude Code, `claude -p`,
//! other MCP clients) drive the federation through MCP tools; the bridge
//! maps every tool onto control-API requests to the node's daemon and
//! holds no business logic of its own (`docs/mcp.md`).
//!
//! * [`tools`]: the tool table (names as in the user guide) and their
//!   input types;
//! * [`roles`]: agent and operator;
//! * [`resources`]: `agentfed://inbox` (subscribable), `agentfed://status`,
//!   `agentfed://manifest`;
//! * [`node`]: which daemon serves the bridge: one already running for the
//!   home, or the node run in-process for as long as the bridge runs;
//! * [`handler`]: the MCP server itself;
//! * [`http`]: the streamable HTTP transport (`--http`).
//!
//! Nothing but protocol goes to stdout; logs go to stderr.

pub mod control;
pub mod handler;
pub mod http;
pub mod node;
pub mod resources;
pub mod roles;
pub mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use roles::Role;

use crate::control::ErrorBody;

/// A refused or failed tool call: an MCP tool error whose text starts with
/// the constant code the CLI prints (`PEER_SUSPENDED: …`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    /// Constant code, e.g. `UNKNOWN_PEER`.
    pub code: String,
    /// One line for the agent.
    pub message: String,
    /// Structured extras from the daemon, if any.
    pub details: Option<serde_json::Value>,
}

impl ToolError {
    /// An error with no details.
    pub fn new(code: &str, message: impl Into<String>) -> ToolError {
        ToolError {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// The daemon's error, as it sent it.
    pub fn from_body(body: ErrorBody) -> ToolError {
        // Some messages already start with their code.
        let prefix = format!("{}: ", body.code);
        let message = match body.message.strip_prefix(&prefix) {
            Some(rest) => rest.to_string(),
            None => body.message,
        };
        ToolError {
            code: body.code,
            message,
            details: body.details,
        }
    }
}

/// How `agentfed mcp` runs.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// Agent (default) or operator.
    pub role: Role,
    /// Never run the node in-process: tools answer `NOT_RUNNING` while no
    /// daemon runs for the home.
    pub no_daemon: bool,
    /// Serve streamable HTTP on this address instead of stdio.
    pub http: Option<SocketAddr>,
    /// Allow a non-loopback `--http` address (served over TLS with the
    /// node's certificate).
    pub allow_remote: bool,
}

/// Why the bridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// A bad option combination.
    #[error("{0}")]
    Usage(String),
    /// The transport failed.
    #[error("{0}")]
    Transport(String),
    /// Reading or writing a file.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs the bridge until its stdin closes (stdio) or SIGINT/SIGTERM
/// (`--http`), then stops the in-process node if it started one.
pub fn run(home: &Path, options: McpOptions) -> Result<(), McpError> {
    if let Some(addr) = options.http {
        http::check_address(addr, &options)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agentfed-mcp")
        .enable_all()
        .build()
        .map_err(|source| McpError::Io {
            action: "starting the async runtime for",
            path: home.to_path_buf(),
            source,
        })?;
    let node = Arc::new(node::Node::new(home, options.no_daemon));
    let result = runtime.block_on(async {
        node.start().await;
        let shared = Arc::new(handler::Shared::new(home, options.role, Arc::clone(&node)));
        match options.http {
            None => handler::serve_stdio(shared).await,
            Some(addr) => http::serve(shared, addr).await,
        }
    });
    runtime.block_on(node.stop());
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_keep_their_code_without_repeating_it() {
        let e = ToolError::from_body(ErrorBody::new(
            "PEER_SUSPENDED",
            "PEER_SUSPENDED: beta is suspended",
            false,
        ));
        assert_eq!(e.to_string(), "PEER_SUSPENDED: beta is suspended");
        let e = ToolError::from_body(ErrorBody::new("UNKNOWN_PEER", "unknown peer `x`", true));
        assert_eq!(e.to_string(), "UNKNOWN_PEER: unknown peer `x`");
    }
}
