//! agentfed's default message handler, as a WebAssembly component.
//!
//! By the time the host calls `handle`, it has verified the envelope's
//! signature, replay window, breaker state, capability gate and the inbound
//! PII scan. This handler only decides what happens to the message next.
//!
//! # The rules, in order
//!
//! 1. A message type that is not one of the wire spec's
//!    ([`KNOWN_MESSAGE_TYPES`]: `task-assignment`, `memory-query`,
//!    `memory-response`, `context-share`, `status-broadcast`, `heartbeat`,
//!    `ping`, `status`, `agent-spawn`, `agent-handoff`, `claim-event`,
//!    `trust-change`, `topology-change`; exact, case-sensitive match) is
//!    rejected with the constant reason `unknown message type`
//!    ([`REJECT_UNKNOWN_TYPE`]). The type itself is never echoed back: it is
//!    peer-supplied text.
//! 2. A payload that is not exactly one valid JSON value (RFC 8259; an
//!    empty payload or trailing garbage is invalid) is rejected with the
//!    constant reason `payload is not valid JSON` ([`REJECT_INVALID_JSON`]).
//!    The check is iterative and builds nothing, so neither size nor
//!    nesting depth can exhaust the plugin's stack or memory; bounding
//!    them is the host's job (its inbound PII scan has already parsed the
//!    payload).
//! 3. `ping` is answered with a `reply`:
//!    `{"type":"pong","node":"<this node's id>","at_ms":<host clock>}`.
//! 4. `status` is answered with a `reply` carrying this node's status:
//!    `{"type":"status","node":"<id>","version":"<agentfed version>",
//!    "active_peers":<n>,"known_peers":<n>,"uptime_secs":<n>}`.
//! 5. `heartbeat` and `status-broadcast` are answered with a `reply`
//!    `{"type":"noted","of":"<type>","node":"<this node's id>","at_ms":<host clock>}`
//!    and not stored: they are liveness and status signals that a VERIFIED
//!    peer may send, and a peer below ATTESTED must not be able to write
//!    into the local agent's inbox (the host refuses that anyway, whatever
//!    a handler answers).
//! 6. Every other known type is `accept`ed into the local inbox.
//!
//! The handler never returns `Err`. It has no configuration keys.
//!
//! # Testing against it
//!
//! The decision logic is pure: [`decide`] takes the message and a
//! [`NodeEnv`] that supplies the node status and the clock. The component
//! passes [`HostNode`] (the `node.status` and `host.now-ms` imports); tests
//! pass their own. [`pong_json`] and [`status_json`] build the replies.
#![deny(missing_docs)]

use agentfed_guest::handler::{HandlerDecision, MessageHandler, MessageView, NodeStatus};
use serde_json::json;

/// Every message type of the wire spec. Anything else is rejected.
pub const KNOWN_MESSAGE_TYPES: [&str; 13] = [
    "task-assignment",
    "memory-query",
    "memory-response",
    "context-share",
    "status-broadcast",
    "heartbeat",
    "ping",
    "status",
    "agent-spawn",
    "agent-handoff",
    "claim-event",
    "trust-change",
    "topology-change",
];

/// Reason for rejecting a message whose type is not in
/// [`KNOWN_MESSAGE_TYPES`].
pub const REJECT_UNKNOWN_TYPE: &str = "unknown message type";

/// Reason for rejecting a message whose payload is not valid JSON.
pub const REJECT_INVALID_JSON: &str = "payload is not valid JSON";

/// What the handler may ask about its own node.
pub trait NodeEnv {
    /// This node's status (id, version, peer counts, uptime).
    fn status(&self) -> NodeStatus;
    /// The host's clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real node, through the host imports. Only usable inside the
/// component: off wasm the host imports are unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostNode;

impl NodeEnv for HostNode {
    fn status(&self) -> NodeStatus {
        agentfed_guest::handler::node::status()
    }

    fn now_ms(&self) -> u64 {
        agentfed_guest::handler::host::now_ms()
    }
}

/// Whether `message_type` is one of [`KNOWN_MESSAGE_TYPES`].
pub fn is_known_type(message_type: &str) -> bool {
    KNOWN_MESSAGE_TYPES.contains(&message_type)
}

/// Whether `payload` is one complete, valid JSON value. Checks without
/// building the value, iteratively: no allocation, no recursion.
pub fn is_valid_json(payload: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok()
}

/// The answer to a `ping`:
/// `{"type":"pong","node":"<node id>","at_ms":<now_ms>}`.
pub fn pong_json(node_id: &str, now_ms: u64) -> String {
    json!({ "type": "pong", "node": node_id, "at_ms": now_ms }).to_string()
}

/// The answer to a `heartbeat` or `status-broadcast`, which are noted and
/// not stored: `{"type":"noted","of":"<type>","node":"<node id>","at_ms":<now_ms>}`.
pub fn noted_json(message_type: &str, node_id: &str, now_ms: u64) -> String {
    json!({ "type": "noted", "of": message_type, "node": node_id, "at_ms": now_ms }).to_string()
}

/// The answer to a `status` request: `{"type":"status","node":…,
/// "version":…,"active_peers":…,"known_peers":…,"uptime_secs":…}`.
pub fn status_json(status: &NodeStatus) -> String {
    json!({
        "type": "status",
        "node": status.node_id,
        "version": status.version,
        "active_peers": status.active_peers,
        "known_peers": status.known_peers,
        "uptime_secs": status.uptime_secs,
    })
    .to_string()
}

/// Decides what happens to one verified inbound message. Pure apart from
/// what `node` supplies, which is only asked for `ping` and `status`.
pub fn decide<N: NodeEnv + ?Sized>(message: &MessageView, node: &N) -> HandlerDecision {
    let message_type = message.message_type.as_str();
    if !is_known_type(message_type) {
        return HandlerDecision::Reject(REJECT_UNKNOWN_TYPE.to_owned());
    }
    if !is_valid_json(&message.payload_json) {
        return HandlerDecision::Reject(REJECT_INVALID_JSON.to_owned());
    }
    match message_type {
        "ping" => HandlerDecision::Reply(pong_json(&node.status().node_id, node.now_ms())),
        "status" => HandlerDecision::Reply(status_json(&node.status())),
        "heartbeat" | "status-broadcast" => HandlerDecision::Reply(noted_json(
            message_type,
            &node.status().node_id,
            node.now_ms(),
        )),
        _ => HandlerDecision::Accept,
    }
}

/// The default message handler, as exported by the component.
pub struct DefaultMessageHandler;

impl MessageHandler for DefaultMessageHandler {
    const DESCRIPTION: &'static str = "answers ping and status, notes heartbeats and status broadcasts, accepts the other known message types, rejects the rest";

    fn handle(message: MessageView) -> Result<HandlerDecision, String> {
        Ok(decide(&message, &HostNode))
    }
}

// The export only exists inside the component: its symbol names are not
// valid for a native shared library, and off wasm there is no host anyway.
#[cfg(target_arch = "wasm32")]
agentfed_guest::export_message_handler!(DefaultMessageHandler);

#[cfg(test)]
mod tests;
