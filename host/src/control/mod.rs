//! The control API: a versioned request/response protocol on a Unix socket
//! in the node home (`<home>/control.sock`), spoken by the CLI and (later)
//! the MCP bridge. `docs/control-api.md` is the full reference.
//!
//! # Framing
//!
//! Newline-delimited JSON, one request per line, one response line per
//! request, in request order. A connection may carry many requests and
//! may pipeline them: up to [`server::PIPELINE_DEPTH`] run concurrently,
//! so two pipelined requests can take effect in either order.
//!
//! ```text
//! → {"v":1,"id":7,"method":"peers.list","params":{}}
//! ← {"v":1,"id":7,"ok":true,"result":[…]}
//! ← {"v":1,"id":7,"ok":false,"error":{"code":"UNKNOWN_PEER","message":"…","bad_input":true}}
//! ```
//!
//! * `v` must be [`PROTOCOL_VERSION`], else `UNSUPPORTED_VERSION`.
//! * `id` is a number or a string of at most 64 bytes, echoed back.
//! * A request line is at most [`MAX_REQUEST_BYTES`] (1 MiB) including the
//!   newline, or [`MAX_LARGE_REQUEST_BYTES`] (20 MiB, room for a 16 MiB
//!   payload) while one of the daemon's [`LARGE_REQUEST_SLOTS`] large-line
//!   slots is free (a reader waits for one); a longer line gets
//!   `REQUEST_TOO_LARGE` and the connection is closed.
//! * Only processes running as the daemon's own uid may connect (checked
//!   with `SO_PEERCRED`); others get one `PERMISSION_DENIED` response and
//!   the connection is closed. The socket file is mode 0600 as well.
//!
//! Each method maps onto one MCP tool of the user guide ([`METHODS`]).

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Largest ordinary request line, newline included.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest request line at all, newline included: a `send` or `query`
/// carrying a payload up to the wire's 16 MiB limit.
pub const MAX_LARGE_REQUEST_BYTES: usize = 20 * 1024 * 1024;

/// How many request lines over [`MAX_REQUEST_BYTES`] the daemon buffers at
/// once, across all connections (a bound on their memory).
pub const LARGE_REQUEST_SLOTS: usize = 2;

/// Longest string `id` echoed back.
pub const MAX_ID_BYTES: usize = 64;

/// The socket's file name inside the node home.
pub const SOCKET_FILE: &str = "control.sock";

/// Default number of records `audit.query` returns.
pub const DEFAULT_AUDIT_QUERY_LIMIT: usize = 100;

/// Largest `limit` of `audit.query` / `audit.export`.
pub const MAX_AUDIT_LIMIT: usize = 1_000_000;

/// The control socket of `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// Error codes of the protocol itself (the coordinator's codes, such as
/// `UNKNOWN_PEER` or `PEER_SUSPENDED`, pass through unchanged).
pub mod codes {
    /// The line is not a JSON request object.
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// The line exceeds [`super::MAX_REQUEST_BYTES`].
    pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";
    /// `v` is not [`super::PROTOCOL_VERSION`].
    pub const UNSUPPORTED_VERSION: &str = "UNSUPPORTED_VERSION";
    /// No such method (or `clock.advance` without `--fake-clock-ms`).
    pub const UNKNOWN_METHOD: &str = "UNKNOWN_METHOD";
    /// `params` do not fit the method.
    pub const INVALID_PARAMS: &str = "INVALID_PARAMS";
    /// The connecting process runs as another user.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// `audit.verify` found an edited, removed or reordered record.
    pub const AUDIT_TAMPERED: &str = "AUDIT_TAMPERED";
    /// A failure inside the daemon (e.g. a panic in a handler).
    pub const INTERNAL: &str = "INTERNAL";
    /// A method of a capability this node does not have yet (`wg.*`,
    /// `consensus.*`): the message names the capability.
    pub const NOT_AVAILABLE: &str = "NOT_AVAILABLE";
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Protocol version.
    pub v: u64,
    /// Caller's correlation id, echoed in the response.
    pub id: Value,
    /// Method name, e.g. `peers.list`.
    pub method: String,
    /// Method parameters (an object; absent means `{}`).
    #[serde(default)]
    pub params: Value,
    /// Who the request acts for (`mcp:agent` or `mcp:operator`; absent
    /// means the operator): operator events it causes are audited under
    /// that actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The MCP client's declared name (with `actor`), added to those
    /// events' details as `mcp_client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u64,
    /// The request's id (`null` if the request could not be read).
    pub id: Value,
    /// Whether the call succeeded.
    pub ok: bool,
    /// The method's result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success.
    pub fn ok(id: Value, result: Value) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failure.
    pub fn err(id: Value, error: ErrorBody) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }

    /// The response as one line (newline included).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"v":1,"id":null,"ok":false,"error":{"code":"INTERNAL","message":"response does not serialize","bad_input":false}}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Constant code, e.g. `UNKNOWN_PEER`.
    pub code: String,
    /// One line for humans; never contains secrets, never echoes more
    /// than a short excerpt of the input.
    pub message: String,
    /// The caller's input was wrong and nothing changed (CLI exit 2);
    /// otherwise the operation was refused or failed (CLI exit 1).
    #[serde(default)]
    pub bad_input: bool,
    /// Structured extras (e.g. `{"seq": 12}` for `AUDIT_TAMPERED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    /// An error with no details.
    pub fn new(code: &str, message: impl Into<String>, bad_input: bool) -> ErrorBody {
        ErrorBody {
            code: code.to_string(),
            message: one_line(&message.into()),
            bad_input,
            details: None,
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> ErrorBody {
        self.details = Some(details);
        self
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with(&self.code) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// One method of the API and the MCP tool it serves.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// Method name.
    pub name: &'static str,
    /// The user guide's MCP tool it maps onto.
    pub mcp_tool: &'static str,
    /// Whether it changes state.
    pub mutates: bool,
}

/// Every method, in documentation order. `clock.advance` exists only when
/// the daemon runs with `--fake-clock-ms`.
pub const METHODS: &[MethodInfo] = &[
    m("status", "federation_status", false),
    m("peers.list", "federation_peers", false),
    m("peers.show", "federation_peers", false),
    m("peers.add", "federation_join", true),
    m("peers.remove", "federation_peers", true),
    m("trust.show", "federation_trust", false),
    m("trust.set", "federation_trust", true),
    m("trust.unpin", "federation_trust", true),
    m("trust.evaluate", "federation_trust", true),
    m("breaker.status", "federation_breaker_status", false),
    m("breaker.evict", "federation_evict", true),
    m("breaker.reactivate", "federation_reactivate", true),
    m("spend.report", "federation_report_spend", true),
    m("send", "federation_send", true),
    m("join", "federation_join", true),
    m("leave", "federation_leave", true),
    m("sessions", "federation_status", false),
    m("query", "federation_query", true),
    m("broadcast", "federation_broadcast", true),
    m("outbox.list", "federation_outbox", false),
    m("outbox.cancel", "federation_outbox", true),
    m("outbox.outcome", "federation_send", false),
    m("outbox.failed", "federation_outbox", false),
    m("inbox", "federation_inbox", false),
    m("inbox.remove", "federation_inbox", true),
    m("audit.query", "federation_audit", false),
    m("audit.export", "federation_audit", false),
    m("audit.verify", "federation_audit", false),
    m("audit.proof", "federation_audit", false),
    m("audit.prune", "(operator CLI only)", true),
    m("plugins.list", "federation_status", false),
    m("plugins.reload", "federation_status", true),
    m("manifest", "federation_init", false),
    m("wg.status", "federation_wg_status", false),
    m("wg.plan", "federation_wg_status", false),
    m("wg.attest", "federation_wg_attest", true),
    m("wg.witness.export", "federation_wg_status", false),
    m("wg.rotate", "federation_wg_keyrotate", true),
    m("wg.witness.fetch", "federation_wg_witness_fetch", false),
    m("wg.peers", "federation_wg_status", false),
    m("clock.advance", "(tests only)", true),
];

const fn m(name: &'static str, mcp_tool: &'static str, mutates: bool) -> MethodInfo {
    MethodInfo {
        name,
        mcp_tool,
        mutates,
    }
}

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// Parameters naming no peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `{note}` (`wg.attest`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteParams {
    /// The operator's note: 1-1024 characters, no control characters.
    pub note: String,
}

/// `{peer, timeout_ms?}` (`wg.witness.fetch`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WitnessFetchParams {
    /// The peer whose chain is fetched (TRUSTED or above, both ways).
    pub peer: String,
    /// How long to wait for each page, ms (default 10,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `{confirm}` (`wg.rotate`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmParams {
    /// Must be `true`: the action cannot be undone.
    #[serde(default)]
    pub confirm: bool,
}

/// `{peer}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerParams {
    /// Peer node id.
    pub peer: String,
}

/// `{peer?}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionalPeerParams {
    /// Peer node id; absent means every peer.
    #[serde(default)]
    pub peer: Option<String>,
}

/// `peers.add`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPeerParams {
    /// The signed manifest: a JSON object, or its JSON text as a string.
    pub manifest: Value,
}

/// `trust.set`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustSetParams {
    /// Peer node id.
    pub peer: String,
    /// Level name, any case (`attested`, `ATTESTED`).
    pub level: String,
    /// Why (audited; required).
    pub reason: String,
    /// Set the level without pinning it: plugins may promote the peer
    /// above it again. By default the level is pinned.
    #[serde(default)]
    pub unpin: bool,
}

/// `outbox.list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxListParams {
    /// Only messages for this peer.
    #[serde(default)]
    pub peer: Option<String>,
    /// At most this many (1..=10000, default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `outbox.cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxCancelParams {
    /// The queued envelope.
    pub envelope_id: String,
    /// Why (audited; required).
    pub reason: String,
}

/// `outbox.outcome`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxOutcomeParams {
    /// The receiver the envelope was sent to.
    pub peer: String,
    /// The envelope.
    pub envelope_id: String,
}

/// `{peer, reason}`: `trust.unpin`, `breaker.evict` and
/// `breaker.reactivate`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonParams {
    /// Peer node id.
    pub peer: String,
    /// Why (audited; required).
    pub reason: String,
}

/// `spend.report`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendParams {
    /// The peer that did the work.
    pub peer: String,
    /// The integrator's task id.
    pub task_id: String,
    /// Tokens spent (a whole number).
    pub tokens: f64,
    /// US dollars spent.
    pub usd: f64,
    /// Whether the work succeeded (default true).
    #[serde(default = "yes")]
    pub success: bool,
}

fn yes() -> bool {
    true
}

/// `send`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// Target peer.
    pub peer: String,
    /// Message type, e.g. `task-assignment`.
    pub message_type: String,
    /// JSON payload.
    pub payload: Value,
    /// Budget: `{"max_hops":…, "max_tokens":…, "max_usd":…}`; defaults
    /// apply when absent.
    #[serde(default)]
    pub budget: Option<Value>,
    /// Makes a retry safe: within 24 h, a send with the same key and the
    /// same request returns the original receipt (with `"repeated":
    /// true`) and queues nothing; the same key with another request is
    /// `IDEMPOTENCY_KEY_REUSED`. 1-128 printable ASCII characters.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `query`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// Target peer (must have a live session).
    pub peer: String,
    /// Message type, e.g. `ping`.
    pub message_type: String,
    /// JSON payload.
    #[serde(default)]
    pub payload: Value,
    /// How long to wait for the acknowledgement (default 10 000 ms, at
    /// most 600 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Makes a retry safe: within 24 h, a query with the same key and the
    /// same peer, type and payload that was answered is not sent again;
    /// the recorded answer comes back (with `"repeated": true`). A query
    /// that got no answer records nothing (its retry is sent afresh). The
    /// same key with another request is `IDEMPOTENCY_KEY_REUSED`. 1-128
    /// printable ASCII characters.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `broadcast`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastParams {
    /// Message type, e.g. `status-broadcast`.
    pub message_type: String,
    /// JSON payload.
    #[serde(default)]
    pub payload: Value,
    /// How long to wait for each acknowledgement (default 10 000 ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Makes a retry safe: within 24 h, a broadcast with the same key and
    /// the same type and payload sends nothing and returns the recorded
    /// per-peer results (each with `"repeated": true`); they are recorded
    /// once the first broadcast finished. The same key with another
    /// request is `IDEMPOTENCY_KEY_REUSED`. 1-128 printable ASCII
    /// characters.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `inbox.remove`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxRemoveParams {
    /// Remove messages numbered up to and including this.
    pub through: u64,
}

/// `inbox`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxParams {
    /// Messages with a sequence number greater than this (default 0).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 100, at most 10 000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// When no message is there yet, wait up to this many milliseconds
    /// (at most [`MAX_INBOX_WAIT_MS`]) for one to be committed, then
    /// answer (an empty list when none came). Default 0: answer at once.
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// Longest `inbox` long-poll (`wait_ms`): a minute, so a client notices a
/// dead daemon within that time even without a read timeout of its own.
pub const MAX_INBOX_WAIT_MS: u64 = 60_000;

/// Filters of `audit.query` and `audit.export`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Event types (snake_case); any of them matches.
    #[serde(default)]
    pub types: Vec<String>,
    /// Minimum severity: debug, info, warning, error, critical.
    #[serde(default)]
    pub severity: Option<String>,
    /// Categories (snake_case); any of them matches.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Exact peer.
    #[serde(default)]
    pub peer: Option<String>,
    /// Records at or after this time (ms since the Unix epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Records at or before this time (ms since the Unix epoch).
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// At most this many records.
    #[serde(default)]
    pub limit: Option<usize>,
    /// `newest` (default for query) or `oldest` (default for export).
    #[serde(default)]
    pub order: Option<String>,
}

/// `audit.proof`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofParams {
    /// The envelope whose delivery (or final refusal) to prove.
    pub envelope_id: String,
}

/// `audit.prune`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    /// Remove the records committed before this time (ms since the Unix
    /// epoch); records' times never decrease, so this is a prefix.
    pub before_ms: u64,
    /// Remove none after this seq (the last one the caller exported).
    #[serde(default)]
    pub through_seq: Option<u64>,
}

/// `audit.export`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// `json`, `ndjson` or `csv`.
    pub format: String,
    /// Filters.
    #[serde(flatten)]
    pub filter: AuditFilter,
}

/// `plugins.reload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadParams {
    /// `trust`, `pii`, `spend` or `handler`; absent reloads all four.
    #[serde(default)]
    pub kind: Option<String>,
    /// Answer `{"plugins": [PluginInfo], "not_applied": [key]}` instead of
    /// the bare list: `not_applied` names the settings outside
    /// `[plugins]` whose value on disk differs from the running one (a
    /// reload does not apply them; a restart does).
    #[serde(default)]
    pub report: bool,
}

/// `clock.advance`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceParams {
    /// Milliseconds to move the fake clock forward.
    pub ms: u64,
    /// Run the timers (`tick`) afterwards (default true).
    #[serde(default = "yes")]
    pub tick: bool,
}

/// `audit.verify` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Always true (a broken chain is an `AUDIT_TAMPERED` error).
    pub ok: bool,
    /// Records checked.
    pub records: u64,
}

/// `audit.export` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResult {
    /// The format.
    pub format: String,
    /// Records exported.
    pub records: usize,
    /// The exported text.
    pub content: String,
}

/// Collapses a message to one line.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.lines().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(part.trim_end());
    }
    out
}

/// At most `max` characters of `text`, control characters removed, `…`
/// appended when cut: for echoing caller input in errors.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_serialize_in_the_documented_shape() {
        let ok = Response::ok(json!(7), json!({"x": 1}));
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"v": 1, "id": 7, "ok": true, "result": {"x": 1}})
        );
        let err = Response::err(
            json!("a"),
            ErrorBody::new("UNKNOWN_PEER", "unknown peer `x`", true),
        );
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"v": 1, "id": "a", "ok": false,
                   "error": {"code": "UNKNOWN_PEER", "message": "unknown peer `x`", "bad_input": true}})
        );
        assert!(ok.to_line().ends_with(b"\n"));
    }

    #[test]
    fn error_messages_are_one_line_and_clipped() {
        let e = ErrorBody::new("X", "a\nb\r\nc", false);
        assert_eq!(e.message, "a b c");
        assert_eq!(clip(&"y".repeat(100), 5), "yyyyy…");
        assert_eq!(clip("a\u{7}b", 5), "ab");
    }

    #[test]
    fn every_method_names_an_mcp_tool() {
        for method in METHODS {
            assert!(!method.mcp_tool.is_empty(), "{}", method.name);
        }
        let names: std::collections::BTreeSet<_> = METHODS.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), METHODS.len());
    }
}
