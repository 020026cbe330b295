//! The federation tools: each one's name (as in the user guide), role,
//! description, input type (its JSON Schema is derived from the Rust type)
//! and the control-API request(s) it maps onto. The bridge holds no
//! business logic: arguments are checked against their type, then passed
//! to the daemon, whose answer (or error code) is passed back.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::ToolError;
use super::roles::Role;
use crate::control::{
    AuditFilter, BroadcastParams, InboxParams, InboxRemoveParams, NoParams, OptionalPeerParams,
    OutboxCancelParams, PeerParams, QueryParams, ReasonParams, SpendParams,
};
use crate::federation::JoinRequest;

/// One tool.
#[derive(Debug, Clone, Copy)]
pub struct ToolSpec {
    /// Tool name.
    pub name: &'static str,
    /// Least role that may call it.
    pub role: Role,
    /// The control request(s) it maps onto (documentation).
    pub methods: &'static str,
    /// Reads only.
    pub read_only: bool,
    /// Destroys something (a peer's standing, a key).
    pub destructive: bool,
    /// What an agent needs to know to use it.
    pub description: &'static str,
    /// What `result` holds.
    pub result: &'static str,
    schema: fn() -> Arc<rmcp::model::JsonObject>,
}

fn schema<T: JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    rmcp::handler::server::common::schema_for_type::<T>()
}

// One line per tool in the table below reads better than struct literals.
#[allow(clippy::too_many_arguments)]
const fn tool(
    name: &'static str,
    role: Role,
    methods: &'static str,
    read_only: bool,
    destructive: bool,
    description: &'static str,
    result: &'static str,
    schema: fn() -> Arc<rmcp::model::JsonObject>,
) -> ToolSpec {
    ToolSpec {
        name,
        role,
        methods,
        read_only,
        destructive,
        description,
        result,
        schema,
    }
}

/// `federation_init`: the guide's camelCase fields.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InitArgs {
    /// This node's id (1-63 chars of lowercase letters, digits, '.', '_',
    /// '-'). Required when the node does not exist yet.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Federation endpoint peers connect to (ws:// or wss://host:port);
    /// default wss://127.0.0.1:9100.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Agent types this node offers, e.g. ["coder"].
    #[serde(default)]
    pub agent_types: Vec<String>,
    /// A dial-only node (a laptop behind NAT): no listener and no endpoint;
    /// it joins its peers, and they never dial it. Not with `endpoint`.
    #[serde(default)]
    pub no_listen: bool,
}

/// `federation_send`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendArgs {
    /// Target peer node id.
    pub peer: String,
    /// Message type, e.g. `task-assignment`, `ping`, `status-broadcast`.
    pub message_type: String,
    /// JSON payload.
    pub payload: Value,
    /// Budget `{"max_hops":…, "max_tokens":…, "max_usd":…}`; defaults
    /// apply when absent.
    #[serde(default)]
    pub budget: Option<Value>,
    /// Wait up to this many seconds (1-600) for the receiver's
    /// acknowledgement instead of returning once the message is queued.
    #[serde(default)]
    pub wait_secs: Option<u64>,
    /// Set this when you may retry the call (a timeout, a dropped
    /// connection, a restarted daemon): within 24 h, a send with the same
    /// key and the same peer, type, payload and budget returns the original
    /// receipt (`"repeated": true`) and queues nothing, so the peer gets
    /// the message once. Reusing a key for another request is
    /// IDEMPOTENCY_KEY_REUSED. 1-128 printable ASCII characters, e.g. a
    /// UUID made once per logical message.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `federation_trust`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustArgs {
    /// Peer node id; absent lists every peer's trust.
    #[serde(default)]
    pub peer: Option<String>,
    /// Set this level (UNTRUSTED, VERIFIED, ATTESTED, TRUSTED,
    /// PRIVILEGED; operator role only, needs `peer` and `reason`).
    #[serde(default)]
    pub level: Option<String>,
    /// Why the level is set (audited).
    #[serde(default)]
    pub reason: Option<String>,
    /// Set the level without pinning it (plugins may promote again).
    #[serde(default)]
    pub unpin: bool,
}

/// `federation_consensus`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsensusArgs {
    /// The proposal (JSON).
    pub proposal: Value,
    /// Peers asked to vote; absent means every peer with a session.
    #[serde(default)]
    pub peers: Option<Vec<String>>,
    /// How long to collect votes (ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `federation_wg_attest`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WgAttestArgs {
    /// What the operator attests (entered into the witness chain).
    pub note: String,
}

/// `federation_wg_witness_fetch`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WgWitnessFetchArgs {
    /// The peer whose witness chain to fetch and verify (it must be
    /// TRUSTED or above, and see this node so).
    pub peer: String,
    /// How long to wait for each page, ms (default 10,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `federation_wg_keyrotate`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WgKeyrotateArgs {
    /// Must be true: rotating the WireGuard key drops the mesh until peers
    /// have the new manifest.
    #[serde(default)]
    pub confirm: bool,
}

/// `federation_outbox`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxArgs {
    /// Only messages for this peer.
    #[serde(default)]
    pub peer: Option<String>,
    /// At most this many (1-10000, default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// List messages refused for good (with their codes) instead of the
    /// queued ones.
    #[serde(default)]
    pub failed: bool,
}

/// Every tool, in documentation order.
pub const TOOLS: &[ToolSpec] = &[
    tool(
        "federation_init",
        Role::Agent,
        "(local) create the node home; manifest",
        false,
        false,
        "Initialize this node: creates the node home (keys 0600, TLS certificate, config with defaults) when it does not exist, using nodeId (required then), endpoint and agentTypes; when it exists, reports the node as it is and changes nothing (keys are never overwritten).",
        "{created, node_id, endpoint, fingerprint, tls_fingerprint, manifest…}",
        schema::<InitArgs>,
    ),
    tool(
        "federation_join",
        Role::Agent,
        "join",
        false,
        false,
        "Join a peer by endpoint (wss://host:port): connects, checks its signed manifest and starts a session. Pin it with fingerprint (TLS, 64 hex) or public_key, or set accept_new to trust what it presents on first use; without them the peer's identity is shown and nothing changes (CONFIRMATION_REQUIRED).",
        "the session and the peer's identity",
        schema::<JoinRequest>,
    ),
    tool(
        "federation_peers",
        Role::Agent,
        "peers.list, peers.show",
        true,
        false,
        "List known peers with trust level, breaker state and capabilities; with peer, one peer's full record.",
        "array of peers, or one peer",
        schema::<OptionalPeerParams>,
    ),
    tool(
        "federation_send",
        Role::Agent,
        "send, outbox.outcome",
        false,
        false,
        "Send a typed message to a peer through the gates (trust level, breaker, budget), PII scan, signature and the durable outbox. Returns once queued, or with wait_secs waits for the receiver's acknowledgement (TIMEOUT if none came; the message stays queued). Pass an idempotency_key if you may retry: a retry with the same key returns the original receipt and sends nothing twice. Errors: UNKNOWN_PEER, IDEMPOTENCY_KEY_REUSED, PEER_SUSPENDED, PEER_EVICTED, TRUST_TOO_LOW, PII_BLOCKED, BUDGET_EXCEEDED, …",
        "the receipt {envelope_id, peer, frame_bytes, pii}, and with wait_secs the outcome",
        schema::<SendArgs>,
    ),
    tool(
        "federation_query",
        Role::Agent,
        "query",
        false,
        false,
        "Send a message over the live session and wait for the peer's reply (ATTESTED+ for most types; ping and status need VERIFIED). timeout_ms defaults to 10000. Pass an idempotency_key if you may retry: once the peer answered, a retry with the same key (within 24 h) sends nothing and returns the recorded answer with \"repeated\": true; a query that got no answer records nothing, so its retry is sent again. Errors: NO_SESSION, UNKNOWN_PEER, IDEMPOTENCY_KEY_REUSED, REQUEST_TIMEOUT, PEER_SUSPENDED, PEER_EVICTED, CAPABILITY_DENIED, PII_BLOCKED, …",
        "the reply",
        schema::<QueryParams>,
    ),
    tool(
        "federation_status",
        Role::Agent,
        "status",
        true,
        false,
        "This node at a glance: id, endpoint, peers by trust level and breaker state, inbox and outbox, plugins; plus how this bridge runs (role, and whether the node runs inside the bridge).",
        "the node's status; `bridge` says how the bridge runs",
        schema::<NoParams>,
    ),
    tool(
        "federation_trust",
        Role::Agent,
        "trust.show, trust.set (operator)",
        false,
        false,
        "View trust levels (all peers, or one peer with what stands between it and its next level). Setting a level (level + peer + reason) is an operator action: refused with OPERATOR_ONLY in the agent role.",
        "array of trust views, or the change",
        schema::<TrustArgs>,
    ),
    tool(
        "federation_audit",
        Role::Operator,
        "audit.query",
        true,
        false,
        "Read the audit log, newest first: filter by types, severity, categories, peer, since_ms/until_ms, limit (default 100), order.",
        "array of audit records",
        schema::<AuditFilter>,
    ),
    tool(
        "federation_audit_verify",
        Role::Agent,
        "audit.verify",
        true,
        false,
        "Verify the audit log's hash chain; AUDIT_TAMPERED names the first broken record.",
        "{ok, records}",
        schema::<NoParams>,
    ),
    tool(
        "federation_audit_proof",
        Role::Agent,
        "audit.proof",
        true,
        false,
        "Proof of delivery: the receipt the receiver signed when it acknowledged (or finally refused) one of this node's envelopes (envelope_id as federation_send returned it): receiver, sender, SHA-256 of the exact bytes, outcome, time, signature and the receiver's public key. Anyone can check it with `agentfed audit proof --verify`. NOT_FOUND while the message is still queued; NO_RECEIPT when the receiver speaks protocol version 1.",
        "{seq, receipt}",
        schema::<crate::control::ProofParams>,
    ),
    tool(
        "federation_breaker_status",
        Role::Agent,
        "breaker.status",
        true,
        false,
        "Circuit-breaker state per peer (ACTIVE, SUSPENDED, EVICTED), when it changed and why.",
        "array of breaker states",
        schema::<OptionalPeerParams>,
    ),
    tool(
        "federation_evict",
        Role::Operator,
        "breaker.evict",
        false,
        true,
        "Evict a peer (from ACTIVE or SUSPENDED): its sends short-circuit with PEER_EVICTED and its session ends until an operator reactivates it. reason is audited.",
        "the breaker change",
        schema::<ReasonParams>,
    ),
    tool(
        "federation_reactivate",
        Role::Operator,
        "breaker.reactivate",
        false,
        false,
        "Reactivate a SUSPENDED or EVICTED peer. reason is audited.",
        "the breaker change",
        schema::<ReasonParams>,
    ),
    tool(
        "federation_report_spend",
        Role::Agent,
        "spend.report",
        false,
        false,
        "Report the cost of completed work done by a peer (task_id, tokens, usd, success): feeds the spend policy and the breaker.",
        "the spend decision",
        schema::<SpendParams>,
    ),
    tool(
        "federation_consensus",
        Role::Agent,
        "consensus.propose",
        false,
        false,
        "Put a proposal to peers and collect their votes. NOT_AVAILABLE while the node has no consensus capability.",
        "the consensus outcome",
        schema::<ConsensusArgs>,
    ),
    tool(
        "federation_wg_status",
        Role::Agent,
        "wg.status",
        true,
        false,
        "Per-peer WireGuard mesh state. NOT_AVAILABLE while the mesh is not enabled on this node.",
        "the mesh state",
        schema::<NoParams>,
    ),
    tool(
        "federation_wg_attest",
        Role::Operator,
        "wg.attest",
        false,
        false,
        "Enter an operator-signed witness entry (note) into the mesh's witness chain. NOT_AVAILABLE while the mesh is not enabled.",
        "the witness entry",
        schema::<WgAttestArgs>,
    ),
    tool(
        "federation_wg_witness_fetch",
        Role::Agent,
        "wg.witness.fetch",
        true,
        false,
        "Fetch a TRUSTED peer's WireGuard witness chain over the federation session and verify it with the key of the peer's manifest on record: what the peer did to its mesh, every entry signed. Errors: NO_SESSION, CAPABILITY_DENIED (either side below TRUSTED), WITNESS_REFUSED, BAD_WITNESS_PAGE, INVALID_WITNESS (names the first bad entry).",
        "the verified chain: entries, head hash and the export text",
        schema::<WgWitnessFetchArgs>,
    ),
    tool(
        "federation_wg_keyrotate",
        Role::Operator,
        "wg.rotate",
        false,
        true,
        "Rotate this node's WireGuard keypair. Needs confirm: true (else CONFIRMATION_REQUIRED). NOT_AVAILABLE while the mesh is not enabled.",
        "the new key's public half",
        schema::<WgKeyrotateArgs>,
    ),
    tool(
        "federation_inbox",
        Role::Agent,
        "inbox",
        true,
        false,
        "Messages received and accepted by this node, oldest first, after sequence number `after` (default 0), at most `limit` (default 100). With wait_ms (at most 60000) and nothing there yet, waits for the next message. Remove processed ones with federation_inbox_remove. Subscribe to the resource agentfed://inbox to be told when one arrives.",
        "array of messages {seq, envelope_id, from, message_type, payload, …}",
        schema::<InboxParams>,
    ),
    tool(
        "federation_inbox_remove",
        Role::Agent,
        "inbox.remove",
        false,
        false,
        "Remove processed inbox messages, up to and including sequence number `through`.",
        "{removed}",
        schema::<InboxRemoveParams>,
    ),
    tool(
        "federation_outbox",
        Role::Agent,
        "outbox.list, outbox.failed",
        true,
        false,
        "Messages waiting to be delivered (peer, type, age, attempts, last error); with failed: true, messages refused for good with their codes.",
        "array of outbox entries",
        schema::<OutboxArgs>,
    ),
    tool(
        "federation_outbox_cancel",
        Role::Agent,
        "outbox.cancel",
        false,
        false,
        "Cancel a queued message (envelope_id): it is removed and never sent. reason is audited.",
        "the cancelled entry",
        schema::<OutboxCancelParams>,
    ),
    tool(
        "federation_leave",
        Role::Agent,
        "leave",
        false,
        false,
        "Close the session with a peer and stop reconnecting (the peer stays known).",
        "what was closed",
        schema::<PeerParams>,
    ),
    tool(
        "federation_sessions",
        Role::Agent,
        "sessions",
        true,
        false,
        "Live sessions: peer, session id, who dialed, address, encryption, since when.",
        "array of sessions",
        schema::<NoParams>,
    ),
    tool(
        "federation_broadcast",
        Role::Agent,
        "broadcast",
        false,
        false,
        "Send a message to every peer with a live session and collect each acknowledgement (timeout_ms each, default 10000). Pass an idempotency_key if you may retry: once a broadcast finished, a retry with the same key (within 24 h) sends nothing and returns its recorded per-peer results, each with \"repeated\": true. Errors: IDEMPOTENCY_KEY_REUSED (per-peer failures are in the results).",
        "per-peer outcomes",
        schema::<BroadcastParams>,
    ),
    tool(
        "federation_plugins",
        Role::Agent,
        "plugins.list",
        true,
        false,
        "The policy plugins in force (trust, pii, spend, handler): name, version, digest, source.",
        "array of plugins",
        schema::<NoParams>,
    ),
];

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The MCP description of `spec`.
pub fn describe(spec: &ToolSpec) -> rmcp::model::Tool {
    use rmcp::model::{Tool, ToolAnnotations};
    let mut annotations = ToolAnnotations::new()
        .read_only(spec.read_only)
        .destructive(spec.destructive)
        .open_world(false);
    annotations.title = Some(spec.name.replace('_', " "));
    Tool::new(
        Cow::Borrowed(spec.name),
        Cow::Borrowed(spec.description),
        (spec.schema)(),
    )
    .with_raw_output_schema(Arc::new(output_schema(spec)))
    .with_annotations(annotations)
}

/// `{"result": …}` (and `bridge` for `federation_status`).
fn output_schema(spec: &ToolSpec) -> Map<String, Value> {
    let mut properties = Map::new();
    properties.insert(
        "result".into(),
        json!({"description": format!("What the node answered: {}", spec.result)}),
    );
    let mut required = vec![json!("result")];
    if spec.name == "federation_status" {
        properties.insert(
            "bridge".into(),
            json!({
                "type": "object",
                "description": "How this MCP bridge runs: role, and daemon = external | in-process | none",
                "properties": {
                    "role": {"type": "string"},
                    "daemon": {"type": "string"},
                },
            }),
        );
        required.push(json!("bridge"));
    }
    let Value::Object(map) = json!({
        "type": "object",
        "properties": properties,
        "required": required,
    }) else {
        unreachable!("a json! object literal is an object")
    };
    map
}

/// Decodes a tool's arguments into its input type: a wrong type, a
/// missing required field or an unknown field is `INVALID_PARAMS`, before
/// anything is sent.
pub fn decode<T: DeserializeOwned>(tool: &str, args: &Map<String, Value>) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(args.clone())).map_err(|e| {
        ToolError::new(
            "INVALID_PARAMS",
            format!("{tool}: {}", crate::control::clip(&e.to_string(), 300)),
        )
    })
}

/// Serializes a checked argument struct back to control params.
pub fn params<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// How often a long wait reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_method_names_a_tool_of_the_bridge() {
        for method in crate::control::METHODS {
            // Test hooks and operator-only methods have no tool.
            if method.mcp_tool.starts_with('(') {
                continue;
            }
            assert!(
                find(method.mcp_tool).is_some(),
                "{} maps onto {}, which the bridge lacks",
                method.name,
                method.mcp_tool
            );
        }
        let names: std::collections::BTreeSet<_> = TOOLS.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), TOOLS.len(), "tool names are unique");
    }

    #[test]
    fn every_input_schema_is_a_closed_object() {
        for spec in TOOLS {
            let schema = (spec.schema)();
            assert_eq!(schema["type"], "object", "{}", spec.name);
            assert_eq!(schema["additionalProperties"], false, "{}", spec.name);
            let described = describe(spec);
            assert!(described.output_schema.is_some(), "{}", spec.name);
        }
    }

    #[test]
    fn bad_arguments_are_invalid_params_naming_the_tool() {
        let args = serde_json::json!({"peer": 5});
        let e = decode::<crate::control::PeerParams>("federation_leave", args.as_object().unwrap())
            .unwrap_err();
        assert_eq!(e.code, "INVALID_PARAMS");
        assert!(
            e.message.starts_with("federation_leave: invalid type"),
            "{}",
            e.message
        );
    }
}
