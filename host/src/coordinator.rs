//! The coordinator: one node's business logic, over its store, audit log
//! and plugins. The daemon, the CLI and (later) the wire and MCP call it;
//! it owns no sockets.
//!
//! Rules it enforces itself, whatever a plugin says:
//! * trust: a plugin may promote one level (never from UNTRUSTED, never to
//!   PRIVILEGED), demote to any lower level, or recommend PRIVILEGED for an
//!   operator to confirm; two threats within an hour or any signature
//!   failure drop a peer to UNTRUSTED at once;
//! * breaker: only legal edges ([`crate::breaker::transition`]); no
//!   automatic reactivation; EVICTED is only left by an operator;
//! * sends: breaker gate first, then capability gate, budget, PII;
//! * every state change is committed to the store, then audited, before
//!   the call returns; a plugin failure changes nothing, is audited, and
//!   fails closed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{
    AuditConfig, AuditError, AuditEvent, AuditLog, EventType, PiiOutcome, Severity,
};
use crate::breaker::{self, Actor, GateError};
use crate::budget::{Budget, BudgetError};
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, NodeConfig};
use crate::envelope::{self, Envelope};
use crate::identity::{
    Identity, IdentityError, Manifest, ManifestError, ManifestParams, MeshSubnet, SignedManifest,
};
use crate::journal::Persist;
use crate::model::{
    BreakerInfo, BreakerState, DAY_MS, HOUR_MS, InteractionMetrics, PeerOrigin, PeerRecord,
    ScoreComponents, SpendSample, TrustLevel,
};
use crate::plugin::{
    self, HostContext, Limits, LoadedPlugin, NodeStatus, NodeStatusSource, PluginError, PluginKind,
    PluginRuntime, PluginSet, PluginSlot, PluginSource, RuntimeOptions,
};
use crate::store::{
    InboundCommit, InboundRecord, OutboxEntry, Store, StoreError, commit_inbound_in, outbox_put_in,
    outbox_remove_in,
};
use crate::trust::{self, Capability};
use crate::trust_ledger::{self, EarningRules, OperatorLevel};

/// Longest operator reason kept.
pub const MAX_REASON_BYTES: usize = 512;
/// Largest tokens in one spend report.
pub const MAX_REPORT_TOKENS: f64 = 1e9;
/// Largest USD in one spend report.
pub const MAX_REPORT_USD: f64 = 1e6;

/// Why a coordinator call failed. `Display` is one line with no secrets.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// No such peer.
    #[error("unknown peer `{0}`")]
    UnknownPeer(String),
    /// No such peer, but one with a close id is known.
    #[error("unknown peer `{given}`; did you mean `{known}`?")]
    UnknownPeerDidYouMean {
        /// The id given (clipped).
        given: String,
        /// The closest known id.
        known: String,
    },
    /// The peer is already known.
    #[error("peer `{0}` is already known; remove it first to replace its manifest")]
    PeerExists(String),
    /// Input failed validation.
    #[error("{0}")]
    InvalidInput(String),
    /// Not a trust level name.
    #[error(
        "unknown trust level `{0}`: expected UNTRUSTED, VERIFIED, ATTESTED, TRUSTED or PRIVILEGED"
    )]
    InvalidLevel(String),
    /// Not a message type.
    #[error("unknown message type `{0}`")]
    UnknownMessageType(String),
    /// A manifest failed verification.
    #[error("manifest rejected: {0}")]
    Manifest(#[from] ManifestError),
    /// The requested breaker or trust change is not a legal edge.
    #[error("illegal transition: {0}")]
    IllegalTransition(String),
    /// The peer's breaker refuses traffic: since when, why, and the way
    /// out.
    #[error(
        "{gate}: {peer} is {state} since {since} ({reason}); no traffic flows until an operator reactivates it: `agentfed reactivate {peer} --reason …`{cooldown}"
    )]
    NotActive {
        /// `PEER_SUSPENDED` or `PEER_EVICTED`.
        gate: GateError,
        /// The peer.
        peer: String,
        /// SUSPENDED or EVICTED.
        state: BreakerState,
        /// When, RFC 3339.
        since: String,
        /// Why (policy or operator text, clipped).
        reason: String,
        /// A note on the reactivation cooldown, if it has not passed.
        cooldown: String,
    },
    /// The peer's trust level does not allow this.
    #[error(
        "CAPABILITY_DENIED: {peer} is {level}, which does not allow {capability} ({} and above); if you trust it, raise it: `agentfed trust set {peer} {} --reason …` (its operator must raise this node too, for messages to be accepted there)",
        capability.required_level(),
        capability.required_level().as_str().to_lowercase()
    )]
    CapabilityDenied {
        /// The peer.
        peer: String,
        /// Its level.
        level: TrustLevel,
        /// The capability.
        capability: Capability,
    },
    /// Budget validation or exhaustion (constant strings).
    #[error("{0}")]
    Budget(#[from] BudgetError),
    /// The PII policy blocked the message.
    #[error("PII_BLOCKED: message contains {}", types.join(", "))]
    PiiBlocked {
        /// The types that blocked it (never values).
        types: Vec<String>,
    },
    /// A peer's answer is larger than this node hands to a caller.
    #[error("REPLY_TOO_LARGE: the reply is larger than {0} bytes")]
    ReplyTooLarge(usize),
    /// A payload has more string values or bytes than one PII call may
    /// carry ([`crate::limits::MAX_PII_SCAN_VALUES`],
    /// [`crate::limits::MAX_PII_SCAN_BYTES`]); it is refused rather than
    /// half-scanned.
    #[error(
        "PAYLOAD_TOO_COMPLEX: the payload has more string values or bytes than one PII scan takes"
    )]
    PayloadTooComplex,
    /// A plugin failed; the operation failed closed.
    #[error("plugin failed, failing closed: {0}")]
    Plugin(#[from] PluginError),
    /// A plugin could not be (re)loaded; the previous one stays in force.
    #[error("{kind} plugin not reloaded; the previous one stays in force: {error}")]
    ReloadRefused {
        /// The slot.
        kind: PluginKind,
        /// Why.
        error: PluginError,
    },
    /// The signed envelope is over what the peer accepts of its type from
    /// this node's level in our view (protocol §9.5): refused before it
    /// is queued, since the receiver would refuse it for good.
    #[error(
        "MESSAGE_TOO_LARGE: a {message_type} envelope of {bytes} bytes is over the {limit}-byte limit for a peer at {level} (docs/protocol.md §9.5: over 1 MiB only context-share and memory-response, to a peer at TRUSTED or above)"
    )]
    MessageTooLarge {
        /// The message type.
        message_type: String,
        /// The signed frame's size.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// The peer's level in this node's view.
        level: TrustLevel,
    },
    /// The payload's shape is over what the peer accepts of its type
    /// (elements, strings, depth; protocol §9.5).
    #[error(
        "PAYLOAD_TOO_COMPLEX: the {message_type} payload has more elements, strings or nesting than a peer at {level} accepts (docs/protocol.md §9.5)"
    )]
    ShapeTooLarge {
        /// The message type.
        message_type: String,
        /// The peer's level in this node's view.
        level: TrustLevel,
    },
    /// An idempotency key reused, within its window, for another request.
    #[error(
        "IDEMPOTENCY_KEY_REUSED: idempotency key `{0}` was used for a different request (another peer, type, payload or budget) in the last 24 h; use a new key"
    )]
    IdempotencyKeyReused(String),
    /// Storage failure.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Audit failure.
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
    /// Identity could not be loaded.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// Config could not be loaded.
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl CoordError {
    /// A constant code for the control API and MCP.
    pub fn code(&self) -> &'static str {
        match self {
            CoordError::UnknownPeer(_) | CoordError::UnknownPeerDidYouMean { .. } => "UNKNOWN_PEER",
            CoordError::PeerExists(_) => "PEER_EXISTS",
            CoordError::InvalidInput(_) => "INVALID_INPUT",
            CoordError::InvalidLevel(_) => "INVALID_LEVEL",
            CoordError::UnknownMessageType(_) => "UNKNOWN_MESSAGE_TYPE",
            CoordError::Manifest(_) => "INVALID_MANIFEST",
            CoordError::IllegalTransition(_) => "ILLEGAL_TRANSITION",
            CoordError::NotActive { gate, .. } => gate.code(),
            CoordError::CapabilityDenied { .. } => "CAPABILITY_DENIED",
            CoordError::Budget(e) => e.code(),
            CoordError::PiiBlocked { .. } => "PII_BLOCKED",
            CoordError::ReplyTooLarge(_) => "REPLY_TOO_LARGE",
            CoordError::PayloadTooComplex => "PAYLOAD_TOO_COMPLEX",
            CoordError::Plugin(_) => "PLUGIN_FAILED",
            CoordError::ReloadRefused { error, .. } => error.code(),
            CoordError::IdempotencyKeyReused(_) => "IDEMPOTENCY_KEY_REUSED",
            CoordError::MessageTooLarge { .. } => "MESSAGE_TOO_LARGE",
            CoordError::ShapeTooLarge { .. } => "PAYLOAD_TOO_COMPLEX",
            CoordError::Store(_) => "STORAGE",
            CoordError::Audit(_) => "AUDIT",
            CoordError::Identity(_) => "IDENTITY",
            CoordError::Config(_) => "CONFIG",
        }
    }

    /// The caller's input was wrong (exit 2); otherwise the operation ran
    /// and was refused or failed (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            CoordError::UnknownPeer(_)
                | CoordError::UnknownPeerDidYouMean { .. }
                | CoordError::PeerExists(_)
                | CoordError::InvalidInput(_)
                | CoordError::InvalidLevel(_)
                | CoordError::UnknownMessageType(_)
                | CoordError::Manifest(_)
                | CoordError::IllegalTransition(_)
                | CoordError::Budget(BudgetError::InvalidBudget)
                | CoordError::IdempotencyKeyReused(_)
                | CoordError::MessageTooLarge { .. }
                | CoordError::ShapeTooLarge { .. }
        )
    }
}

/// Result of coordinator calls.
pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// Options of [`Coordinator::open`].
#[derive(Clone)]
pub struct CoordinatorOptions {
    /// Time source for every decision.
    pub clock: Arc<dyn Clock>,
    /// Where precompiled plugin code is cached; default
    /// `<home>/cache/plugins`. Tests share one across homes.
    pub plugin_cache_dir: Option<PathBuf>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            clock: Arc::new(SystemClock),
            plugin_cache_dir: None,
        }
    }
}

/// A peer as the operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// Node id.
    pub node_id: String,
    /// Endpoint from its manifest; `None` for a dial-only peer (never
    /// dialed: what is queued for it waits until it connects).
    pub endpoint: Option<String>,
    /// Trust level in this node's view.
    pub trust_level: TrustLevel,
    /// When it reached that level.
    pub level_since_ms: u64,
    /// Last trust score.
    pub score: f64,
    /// Its inputs.
    pub score_components: ScoreComponents,
    /// Interaction counters.
    pub metrics: InteractionMetrics,
    /// Breaker.
    pub breaker: BreakerInfo,
    /// What its level unlocks.
    pub capabilities: Vec<Capability>,
    /// A suspended peer past its cooldown: the operator may reactivate.
    pub reactivate_eligible: bool,
    /// The trust plugin recommends PRIVILEGED; an operator must confirm.
    pub privileged_recommended: bool,
    /// The level an operator last set and whether it is pinned.
    pub operator: Option<OperatorLevel>,
    /// Last heard from.
    pub last_seen_ms: u64,
    /// First added.
    pub added_ms: u64,
}

/// A peer's breaker as `breaker status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerView {
    /// Node id.
    pub node_id: String,
    /// Breaker state, reason, correlation id, since, failures.
    #[serde(flatten)]
    pub breaker: BreakerInfo,
    /// Past the cooldown (30 min) while suspended.
    pub reactivate_eligible: bool,
    /// 24 h spend (negatives clamped).
    pub usd_last_day: f64,
    /// 1 h samples.
    pub samples_last_hour: u64,
    /// 1 h failures.
    pub failures_last_hour: u64,
}

/// A trust level change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustChange {
    /// The peer.
    pub peer: String,
    /// Old level.
    pub from: TrustLevel,
    /// New level.
    pub to: TrustLevel,
    /// `operator`, `system` or `plugin:<name>`.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// How far ahead [`Coordinator::trust_next_step`] looks for the trust
/// plugin's bar: 90 days.
pub const NEXT_STEP_HORIZON_MS: u64 = 90 * DAY_MS;

/// What stands between a peer and its next trust level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextStep {
    /// The peer.
    pub peer: String,
    /// Its level now.
    pub level: TrustLevel,
    /// The level it could reach automatically; `None` when only an
    /// operator or a handshake can move it.
    pub to: Option<TrustLevel>,
    /// One line for people.
    pub summary: String,
    /// Every condition, met or not.
    pub requirements: Vec<trust_ledger::Requirement>,
    /// The earliest time the promotion could happen; `None` when waiting
    /// alone cannot bring it.
    pub earliest_ms: Option<u64>,
}

/// A queued outbox message, as `outbox` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxView {
    /// Envelope id.
    pub envelope_id: String,
    /// Receiver.
    pub peer: String,
    /// Message type.
    pub message_type: String,
    /// When it was queued (its envelope's timestamp).
    pub queued_at_ms: u64,
    /// How long it has waited.
    pub age_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed, if one did since the daemon started.
    pub last_error: Option<String>,
}

fn outbox_view(entry: &OutboxEntry, now: u64, last_error: Option<String>) -> OutboxView {
    #[derive(Deserialize)]
    struct Head {
        message_type: String,
        timestamp_ms: u64,
    }
    let head = envelope::SignedEnvelope::from_frame(&entry.bytes)
        .ok()
        .and_then(|s| serde_json::from_slice::<Head>(&s.bytes).ok());
    let (message_type, queued_at_ms) = head
        .map(|h| (h.message_type, h.timestamp_ms))
        .unwrap_or_else(|| ("?".into(), 0));
    OutboxView {
        envelope_id: entry.envelope_id.clone(),
        peer: entry.target.clone(),
        message_type,
        queued_at_ms,
        age_ms: now.saturating_sub(queued_at_ms),
        attempts: entry.attempts,
        next_attempt_ms: entry.next_attempt_ms,
        last_error,
    }
}

/// What became of a sent envelope ([`Coordinator::delivery_outcome`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Still in the outbox.
    Queued {
        /// Attempts so far.
        attempts: u32,
        /// Why the last attempt failed, if one did.
        last_error: Option<String>,
    },
    /// Acknowledged by the receiver.
    Delivered {
        /// The receiver's status: `accepted`, `replied` or `rejected`.
        status: String,
    },
    /// Refused for good (by the receiver, or cancelled or dropped here).
    Refused {
        /// The constant code.
        code: String,
    },
    /// Not in the outbox and no record of its delivery (an unknown id).
    Unknown,
}

/// A peer's level and the operator's hold on it (`trust.unpin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustPinView {
    /// The peer.
    pub peer: String,
    /// Its level.
    pub level: TrustLevel,
    /// The operator's level and pin.
    pub operator: Option<OperatorLevel>,
}

/// What a trust evaluation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TrustOutcome {
    /// Level unchanged.
    Kept {
        /// Score.
        score: f64,
        /// Plugin's reason.
        reason: String,
    },
    /// Level changed.
    Changed(TrustChange),
    /// PRIVILEGED recommended to the operator.
    PrivilegedRecommended {
        /// Score.
        score: f64,
        /// Plugin's reason.
        reason: String,
    },
    /// The plugin asked for a promotion that the host's earning rules
    /// ([`crate::trust_ledger`]) do not allow yet, or that an operator's pin
    /// forbids; nothing changed and nothing was audited (it is the normal
    /// state of a peer still earning).
    Held {
        /// Score.
        score: f64,
        /// Plugin's reason.
        reason: String,
        /// The level asked for.
        to: TrustLevel,
        /// The first rule not met, e.g. `7 days at ATTESTED (has 2 days)`.
        waiting_for: String,
    },
    /// The plugin's answer was refused by the host (audited).
    Refused {
        /// Why.
        reason: String,
    },
    /// The plugin failed (audited); nothing changed.
    PluginFailed {
        /// Error code.
        code: String,
    },
}

/// A breaker change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerChange {
    /// The peer.
    pub peer: String,
    /// Old state.
    pub from: BreakerState,
    /// New state.
    pub to: BreakerState,
    /// `operator` or `plugin:<name>`.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Links the change to its audit record.
    pub correlation_id: String,
}

/// What a breaker evaluation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BreakerOutcome {
    /// Nothing changed.
    Unchanged {
        /// Current state.
        state: BreakerState,
        /// Suspended and past its cooldown.
        reactivate_eligible: bool,
    },
    /// The breaker moved.
    Changed(BreakerChange),
    /// The plugin asked for an illegal edge (audited, ignored).
    Refused {
        /// Why.
        reason: String,
    },
    /// The plugin failed (audited); nothing changed.
    PluginFailed {
        /// Error code.
        code: String,
    },
}

/// A spend report from an integrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpendReport {
    /// The peer that did the work.
    pub peer: String,
    /// The task.
    pub task_id: String,
    /// Tokens spent (whole number; negatives are kept in the audit and
    /// count as 0 for the breaker).
    pub tokens: f64,
    /// US dollars spent.
    pub usd: f64,
    /// Whether the work succeeded.
    pub success: bool,
}

/// What a spend report caused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpendOutcome {
    /// The breaker evaluation.
    pub breaker: BreakerOutcome,
    /// The trust evaluation (the report is an interaction).
    pub trust: TrustOutcome,
}

/// A message to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRequest {
    /// Target node id.
    pub peer: String,
    /// Message type.
    pub message_type: String,
    /// JSON payload.
    pub payload: Value,
    /// Budget (`max_hops`, `max_tokens`, `max_usd`, …); defaults apply
    /// when absent.
    #[serde(default)]
    pub budget: Option<Value>,
    /// A caller-chosen key that makes a retried send safe: within
    /// [`IDEMPOTENCY_WINDOW_MS`], the same key with the same request
    /// returns the original receipt and queues nothing; with another
    /// request it is `IDEMPOTENCY_KEY_REUSED`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// How long an idempotency key is remembered: 24 hours.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Checks an idempotency key: 1-128 printable ASCII characters, no
/// spaces (a UUID, a ULID, `job-42/attempt`, …).
pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(CoordError::InvalidInput(format!(
            "idempotency key: 1-{MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// The digest an idempotency key is bound to: the request as the caller
/// sent it (peer, type, payload, budget), before any PII rewrite.
fn request_digest(request: &SendRequest) -> String {
    use sha2::Digest as _;
    let canonical = json!([
        request.peer,
        request.message_type,
        request.payload,
        request.budget
    ]);
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

/// The digest a `query` idempotency key is bound to: the request as the
/// caller sent it (peer, type, payload). Tagged, so a key used for a send
/// or a broadcast is another request.
pub fn query_digest(peer: &str, message_type: &str, payload: &Value) -> String {
    use sha2::Digest as _;
    let canonical = json!(["query", peer, message_type, payload]);
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

/// The digest a `broadcast` idempotency key is bound to (type, payload).
pub fn broadcast_digest(message_type: &str, payload: &Value) -> String {
    use sha2::Digest as _;
    let canonical = json!(["broadcast", message_type, payload]);
    hex::encode(sha2::Sha256::digest(canonical.to_string().as_bytes()))
}

/// A send accepted into the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReceipt {
    /// Envelope id.
    pub envelope_id: String,
    /// Target.
    pub peer: String,
    /// PII findings by type (counts; the payload was rewritten if needed).
    pub pii: BTreeMap<String, u32>,
    /// Bytes of the signed frame.
    pub frame_bytes: usize,
}

/// Which way a payload crosses the PII policy.
pub use crate::plugin::Direction;

/// PII findings of one payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PiiReport {
    /// Findings per type.
    pub counts: BTreeMap<String, u32>,
    /// Values rewritten.
    pub rewritten: usize,
}

/// One interaction with a peer, as the wire reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// Work this node asked of the peer, fulfilled (an acknowledged
    /// delivery, an answered query, completed work reported with `spend`):
    /// the only kind that earns trust, within the hourly cap.
    Success,
    /// Something the peer did on its own initiative and this node accepted
    /// (an envelope it sent, an answered heartbeat): it keeps the peer
    /// seen and never earns trust.
    Observed,
    /// Failed.
    Failure,
    /// A threat was detected in the peer's traffic.
    Threat,
    /// An envelope's signature failed.
    SignatureFailure,
}

/// Evidence about one peer noted on the message path and not yet applied
/// to its record.
#[derive(Debug, Clone, Copy, Default)]
struct PendingEvidence {
    /// Requests of ours the peer fulfilled.
    fulfilled: u64,
    /// Things it did on its own initiative that we accepted.
    observed: u64,
    /// Its envelopes refused for its own fault.
    failed: u64,
}

/// A loaded plugin, as `plugins` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Slot.
    pub kind: PluginKind,
    /// Place in the slot's chain: 0 is the main policy, 1… the
    /// `[[plugins.pii.add]]` ones.
    #[serde(default)]
    pub position: usize,
    /// Whether it is the embedded default policy.
    #[serde(default)]
    pub embedded: bool,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Where it came from.
    pub source: String,
    /// Component SHA-256.
    pub sha256: String,
    /// Call deadline.
    pub deadline_ms: u64,
    /// Memory cap.
    pub memory_mib: u64,
}

/// How inbound envelope signatures were verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureStats {
    /// Verified as part of a batch (a burst from one session).
    pub batched: u64,
    /// Verified one at a time (a lone envelope, or a burst whose batch
    /// failed).
    pub alone: u64,
}

/// The node at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Node id.
    pub node_id: String,
    /// agentfed version.
    pub version: String,
    /// Endpoint; `None` for a dial-only node.
    pub endpoint: Option<String>,
    /// Seconds since the coordinator opened.
    pub uptime_secs: u64,
    /// The coordinator's clock.
    pub now_ms: u64,
    /// Peers known.
    pub peers: usize,
    /// Peers per trust level.
    pub by_trust_level: BTreeMap<String, usize>,
    /// Peers per breaker state.
    pub by_breaker_state: BTreeMap<String, usize>,
    /// Audit records.
    pub audit_records: u64,
    /// Envelopes waiting in the outbox.
    pub outbox: u64,
    /// Durable commits of the state file since the daemon started, and
    /// the state changes and audit records they carried (group commit).
    pub store_commits: crate::journal::CommitStats,
    /// Inbound envelope signatures verified since the daemon started.
    #[serde(default)]
    pub signatures: SignatureStats,
    /// Outbox messages refused for good by their receiver (or dropped
    /// here) since the daemon started: `agentfed outbox --failed` lists
    /// them.
    #[serde(default)]
    pub refused_for_good: u64,
    /// Loaded plugins.
    pub plugins: Vec<PluginInfo>,
}

/// What a timer tick did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TickReport {
    /// Peers evaluated.
    pub peers: usize,
    /// Trust changes.
    pub trust_changes: usize,
    /// Breaker changes.
    pub breaker_changes: usize,
    /// Processed envelope ids forgotten because they left the dedupe
    /// window ([`DEDUPE_WINDOW_MS`]).
    pub dedupe_pruned: u64,
    /// Send idempotency keys forgotten because they left their window
    /// ([`IDEMPOTENCY_WINDOW_MS`]).
    pub idempotency_pruned: u64,
}

/// Peer counts shared with the handler plugins' `node.status` import.
struct LiveStatus {
    node_id: String,
    started: Instant,
    known_peers: AtomicU32,
    active_peers: AtomicU32,
}

impl NodeStatusSource for LiveStatus {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            active_peers: self.active_peers.load(Ordering::Relaxed),
            known_peers: self.known_peers.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

/// One node's business logic. `Send + Sync`: share it in an `Arc`.
pub struct Coordinator {
    home: PathBuf,
    identity: Identity,
    config: NodeConfig,
    store: Store,
    audit: AuditLog,
    runtime: PluginRuntime,
    plugins: PluginSet,
    clock: Arc<dyn Clock>,
    live: Arc<LiveStatus>,
    /// Serialises read-modify-write sequences on one node's state (trust
    /// and breaker evaluation read, ask a plugin, then write).
    decisions: std::sync::Mutex<()>,
    /// Evidence noted per peer and not yet applied
    /// ([`Coordinator::note_fulfilled`] and its siblings).
    pending_evidence: std::sync::Mutex<HashMap<String, PendingEvidence>>,
    /// The host's earning rules (`[trust]`).
    earning: EarningRules,
    /// Decompressed peer keys by their manifest encoding: decompressing an
    /// Ed25519 key costs about as much as a third of a verification, and
    /// every inbound envelope needs its sender's.
    peer_keys: std::sync::Mutex<HashMap<String, ed25519_dalek::VerifyingKey>>,
    /// `(sender, envelope id)` of inbound envelopes past their checks and
    /// not yet committed: a copy arriving meanwhile waits for their ack.
    inbound_pending: PendingSet,
    /// Per sender, how many duplicates were audited in the current window
    /// ([`Coordinator::audit_duplicate`]).
    audit_throttle: AuditThrottle,
    /// Per-peer inbound envelope and byte rates ([`RateLimiter`]).
    inbound_rates: RateLimiter,
    /// The last delivery error of each queued envelope since the daemon
    /// started (`outbox` shows it); forgotten when the entry leaves.
    delivery_errors: std::sync::Mutex<HashMap<String, String>>,
    /// Outbox messages refused for good (or dropped) since the daemon
    /// started (`status`).
    refused_for_good: AtomicU64,
    /// What an inbound refusal's audit record should say beyond its code
    /// (the message type, the missing capability, a plugin's error), per
    /// sender and code, in the order the refusals were made; taken by
    /// [`Coordinator::audit_refusal`].
    refusal_context:
        std::sync::Mutex<HashMap<(String, &'static str), std::collections::VecDeque<Value>>>,
    /// Inbound signatures verified in batches and alone ([`SignatureStats`]).
    verified_batched: AtomicU64,
    verified_alone: AtomicU64,
    /// The mesh's witness chain file, opened on first use: the mesh
    /// appends to it and peers at TRUSTED may read it (`witness-request`).
    witness: Arc<crate::mesh::witness::WitnessFile>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("node_id", &self.identity.node_id().to_string())
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens a node home: config, identity (refusing loose key
    /// permissions), store, audit log and plugins. The caller takes the
    /// home lock first (the daemon does).
    pub fn open(home: &Path, options: CoordinatorOptions) -> Result<Coordinator> {
        let config = NodeConfig::load(home)?;
        let identity = Identity::load(home)?;
        let store = Store::open_in_home(home)?;
        let audit = AuditLog::open(
            &store,
            AuditConfig {
                compliance: config.audit.compliance.into(),
                clock: Some(options.clock.clone()),
            },
        )?;
        let cache_dir = options
            .plugin_cache_dir
            .clone()
            .unwrap_or_else(|| crate::home::plugin_cache_dir(home));
        let runtime = PluginRuntime::new(RuntimeOptions {
            cache_dir: Some(cache_dir),
        })?;
        let live = Arc::new(LiveStatus {
            node_id: identity.node_id().to_string(),
            started: Instant::now(),
            known_peers: AtomicU32::new(0),
            active_peers: AtomicU32::new(0),
        });
        let load = |kind| {
            load_plugin(
                &runtime,
                home,
                &config,
                &identity,
                &options.clock,
                &live,
                kind,
            )
        };
        let plugins = PluginSet {
            trust: PluginSlot::with_chain(PluginKind::Trust, load(PluginKind::Trust)?)?,
            pii: PluginSlot::with_chain(PluginKind::Pii, load(PluginKind::Pii)?)?,
            spend: PluginSlot::with_chain(PluginKind::Spend, load(PluginKind::Spend)?)?,
            handler: PluginSlot::with_chain(PluginKind::Handler, load(PluginKind::Handler)?)?,
        };
        let earning = config.trust.rules();
        let coordinator = Coordinator {
            home: home.to_path_buf(),
            identity,
            config,
            store,
            audit,
            runtime,
            plugins,
            clock: options.clock,
            live,
            decisions: std::sync::Mutex::new(()),
            pending_evidence: std::sync::Mutex::new(HashMap::new()),
            earning,
            peer_keys: std::sync::Mutex::new(HashMap::new()),
            inbound_pending: Arc::default(),
            audit_throttle: AuditThrottle::default(),
            inbound_rates: RateLimiter::default(),
            delivery_errors: std::sync::Mutex::new(HashMap::new()),
            refused_for_good: AtomicU64::new(0),
            refusal_context: std::sync::Mutex::default(),
            verified_batched: AtomicU64::new(0),
            verified_alone: AtomicU64::new(0),
            witness: Arc::new(crate::mesh::witness::WitnessFile::new(
                home.join(crate::mesh::witness::WITNESS_FILE),
            )),
        };
        for info in coordinator.plugins() {
            coordinator.record(
                AuditEvent::new(
                    EventType::PluginLoaded,
                    format!("{} plugin {} {} loaded", info.kind, info.name, info.version),
                )
                .with_details(json!({"kind": info.kind, "name": info.name, "version": info.version, "sha256": info.sha256, "position": info.position})),
            )?;
        }
        coordinator.refresh_live_counts()?;
        Ok(coordinator)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.identity.node_id().as_str()
    }

    /// The time source.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Appends to the audit log, waiting until the record is durable.
    fn record(&self, event: AuditEvent) -> Result<()> {
        self.audit.append(event)?;
        Ok(())
    }
}

/// Loads the configured plugin chain of `kind` (the embedded default or
/// `path`, then any `[[plugins.pii.add]]` policies) with the node's hash
/// key, clock and live status. Every policy is probed with its own
/// configuration; the first that fails refuses the whole chain.
fn load_plugin(
    runtime: &PluginRuntime,
    home: &Path,
    config: &NodeConfig,
    identity: &Identity,
    clock: &Arc<dyn Clock>,
    live: &Arc<LiveStatus>,
    kind: PluginKind,
) -> Result<Vec<Arc<LoadedPlugin>>, PluginError> {
    let section = config.plugins.get(kind);
    let hash_key = HostContext::share_hash_key(identity.hash_secret());
    let mut chain = Vec::new();
    for (position, entry) in config.plugin_chain(home, kind).into_iter().enumerate() {
        let source = match entry.path {
            Some(path) => PluginSource::File(path),
            None => PluginSource::Embedded(crate::embedded::default_name(kind)),
        };
        let table = if position == 0 {
            format!("[plugins.{kind}.config]")
        } else {
            format!("the config of [[plugins.{kind}.add]] number {position}")
        };
        check_default_keys(kind, &source, &entry.config, &table)?;
        let host = HostContext {
            plugin_label: Arc::from(source.to_string().as_str()),
            config: Arc::new(entry.config),
            hash_key: hash_key.clone(),
            clock: clock.clone(),
            node_status: live.clone(),
        };
        let plugin = runtime.load(kind, source, host, section.limits)?;
        probe_configuration(&plugin, kind, clock.now_ms())?;
        chain.push(plugin);
    }
    Ok(chain)
}

/// The dotted keys under `prefix` where `a` and `b` differ.
fn diff_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff_keys(
                    &path,
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// `err` with any payload text its plugin-written parts quote removed
/// ([`crate::pii::scrub_error_text`]), for the log and the audit trail.
fn scrub_plugin_error(err: &PluginError, values: &[plugin::StringValue]) -> PluginError {
    let scrub = |text: &str| crate::pii::scrub_error_text(text, values);
    match err {
        PluginError::Panic { plugin, message } => PluginError::Panic {
            plugin: plugin.clone(),
            message: message.as_deref().map(scrub),
        },
        PluginError::Refused { plugin, reason } => PluginError::Refused {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        PluginError::Trap { plugin, reason } => PluginError::Trap {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        PluginError::Timeout {
            plugin,
            deadline_ms,
        } => PluginError::Timeout {
            plugin: plugin.clone(),
            deadline_ms: *deadline_ms,
        },
        PluginError::OutOfMemory { plugin, limit_mib } => PluginError::OutOfMemory {
            plugin: plugin.clone(),
            limit_mib: *limit_mib,
        },
        PluginError::Instantiate { plugin, reason } => PluginError::Instantiate {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        // Load-time errors (no call, no payload): their text as it is.
        other => PluginError::Refused {
            plugin: "pii policy".into(),
            reason: other.to_string(),
        },
    }
}

/// Refuses a key the embedded default policy of `kind` does not read (a
/// misspelling), naming the keys it reads; `table` names where the key was.
pub(crate) fn check_default_keys(
    kind: PluginKind,
    source: &PluginSource,
    config: &BTreeMap<String, String>,
    table: &str,
) -> Result<(), PluginError> {
    if let PluginSource::Embedded(name) = source
        && let Some(unknown) = crate::config::unknown_default_policy_key(kind, config)
    {
        return Err(PluginError::Refused {
            plugin: name.to_string(),
            reason: format!(
                "unknown configuration key `{}` in {table} (the default {kind} policy reads: {})",
                clip(&unknown),
                crate::config::default_policy_key_names(kind)
            ),
        });
    }
    Ok(())
}

/// Calls a freshly loaded plugin once with a harmless request, so a
/// configuration it cannot use (a bad value: policies read and check
/// their configuration on a call) is refused at load time, with the
/// plugin's own message, instead of failing every later call. The WIT
/// contract has no `validate-config` export yet (`wit/PENDING_CHANGES.md`).
pub(crate) fn probe_configuration(
    plugin: &LoadedPlugin,
    kind: PluginKind,
    now_ms: u64,
) -> Result<(), PluginError> {
    match kind {
        PluginKind::Trust => plugin
            .evaluate_trust(&plugin::PeerSnapshot {
                node_id: "config-probe".into(),
                level: plugin::TrustLevel::Verified,
                level_since_ms: now_ms,
                metrics: plugin::InteractionMetrics {
                    interactions: 0,
                    successes: 0,
                    failures: 0,
                    threats: 0,
                    signature_failures: 0,
                    uptime: 1.0,
                    integrity: 1.0,
                    threats_last_hour: 0,
                    first_seen_ms: now_ms,
                    last_seen_ms: now_ms,
                },
                now_ms,
            })
            .map(drop),
        PluginKind::Spend => {
            let window = |window_ms| plugin::SpendWindow {
                window_ms,
                samples: 0,
                failures: 0,
                tokens: 0,
                usd: 0.0,
            };
            plugin
                .evaluate_spend(&plugin::SpendRequest {
                    node_id: "config-probe".into(),
                    breaker: plugin::BreakerView {
                        state: plugin::BreakerState::Active,
                        since_ms: now_ms,
                        reason: None,
                        failures_since_suspend: 0,
                    },
                    last_hour: window(HOUR_MS),
                    last_day: window(DAY_MS),
                    now_ms,
                })
                .map(drop)
        }
        PluginKind::Pii => plugin
            .scan_pii(&plugin::ScanRequest {
                direction: Direction::Outbound,
                peer_level: plugin::TrustLevel::Attested,
                message_type: "task-assignment".into(),
                values: vec![plugin::StringValue {
                    path: "/probe".into(),
                    value: "configuration probe".into(),
                }],
            })
            .map(drop),
        // The handler world reads no configuration of its own.
        PluginKind::Handler => Ok(()),
    }
}

// ---- conversions between the store's model and the plugin contract ----

fn to_wit_level(level: TrustLevel) -> plugin::TrustLevel {
    match level {
        TrustLevel::Untrusted => plugin::TrustLevel::Untrusted,
        TrustLevel::Verified => plugin::TrustLevel::Verified,
        TrustLevel::Attested => plugin::TrustLevel::Attested,
        TrustLevel::Trusted => plugin::TrustLevel::Trusted,
        TrustLevel::Privileged => plugin::TrustLevel::Privileged,
    }
}

fn from_wit_level(level: plugin::TrustLevel) -> TrustLevel {
    match level {
        plugin::TrustLevel::Untrusted => TrustLevel::Untrusted,
        plugin::TrustLevel::Verified => TrustLevel::Verified,
        plugin::TrustLevel::Attested => TrustLevel::Attested,
        plugin::TrustLevel::Trusted => TrustLevel::Trusted,
        plugin::TrustLevel::Privileged => TrustLevel::Privileged,
    }
}

fn to_wit_breaker(state: BreakerState) -> plugin::BreakerState {
    match state {
        BreakerState::Active => plugin::BreakerState::Active,
        BreakerState::Suspended => plugin::BreakerState::Suspended,
        BreakerState::Evicted => plugin::BreakerState::Evicted,
    }
}

fn snapshot(record: &PeerRecord, now_ms: u64) -> plugin::PeerSnapshot {
    let m = &record.metrics;
    let recent = m
        .recent_threats_ms
        .iter()
        .filter(|&&t| t + HOUR_MS >= now_ms)
        .count();
    plugin::PeerSnapshot {
        node_id: record.node_id().to_string(),
        level: to_wit_level(record.trust_level),
        level_since_ms: record.level_since_ms,
        metrics: plugin::InteractionMetrics {
            interactions: m.interactions,
            successes: m.successes,
            failures: m.failures,
            threats: m.threats,
            signature_failures: m.signature_failures_since_level,
            uptime: m.uptime,
            integrity: m.integrity,
            threats_last_hour: recent as u32,
            first_seen_ms: record.added_ms,
            last_seen_ms: record.last_seen_ms,
        },
        now_ms,
    }
}

fn plugin_actor(plugin: &LoadedPlugin) -> String {
    crate::audit::plugin_actor(&plugin.metadata().name)
}

fn validate_reason(reason: &str) -> Result<String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(CoordError::InvalidInput(
            "a reason is required (it is written to the audit log)".into(),
        ));
    }
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(CoordError::InvalidInput(format!(
            "the reason must be one line of at most {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(reason.to_string())
}

fn validate_task_id(task_id: &str) -> Result<()> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CoordError::InvalidInput(
            "task id must be 1-128 characters of letters, digits and . _ : - /".into(),
        ))
    }
}

fn correlation_id() -> String {
    envelope::random_id()[..16].to_string()
}

fn peer_view(record: &PeerRecord, now_ms: u64) -> PeerView {
    PeerView {
        node_id: record.node_id().to_string(),
        endpoint: record.manifest.manifest.endpoint.clone(),
        trust_level: record.trust_level,
        level_since_ms: record.level_since_ms,
        score: record.score,
        score_components: record.score_components,
        metrics: record.metrics.clone(),
        breaker: record.breaker.clone(),
        capabilities: trust::capabilities(record.trust_level),
        reactivate_eligible: breaker::reactivate_eligible(&record.breaker, now_ms),
        privileged_recommended: record.privileged_recommended,
        operator: record.operator,
        last_seen_ms: record.last_seen_ms,
        added_ms: record.added_ms,
    }
}

impl Coordinator {
    // ---- identity and status ----

    /// The answer to a `witness-request` (protocol §9.6): a page of this
    /// node's witness chain, or a rejection naming what was wrong with the
    /// request.
    fn answer_witness_request(&self, envelope: &Envelope) -> Ack {
        let rejected = |reason: &str| Ack {
            envelope_id: envelope.id.clone(),
            status: AckStatus::Rejected,
            reply: None,
            reason: Some(reason.to_string()),
        };
        let request = match crate::mesh::fetch::WitnessRequest::parse(&envelope.payload) {
            Ok(request) => request,
            Err(reason) => return rejected(&format!("BAD_WITNESS_REQUEST: {reason}")),
        };
        match self.witness.page(request.after_seq, request.limit) {
            Ok((entries, head_seq)) => Ack {
                envelope_id: envelope.id.clone(),
                status: AckStatus::Replied,
                reply: Some(json!({
                    "type": crate::mesh::fetch::WITNESS_PAGE,
                    "node": self.node_id(),
                    "head_seq": head_seq,
                    "entries": entries,
                })),
                reason: None,
            },
            Err(e) => {
                tracing::warn!("cannot answer a witness request: {e}");
                rejected("WITNESS_UNAVAILABLE: this node cannot read its witness chain now")
            }
        }
    }

    /// The node home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The node's witness chain file (docs/mesh.md, "Witness chain").
    pub fn witness_file(&self) -> &Arc<crate::mesh::witness::WitnessFile> {
        &self.witness
    }

    /// This node's manifest, signed now.
    pub fn manifest(&self) -> Result<SignedManifest> {
        let subnet: MeshSubnet = self
            .config
            .node
            .mesh_subnet
            .parse()
            .map_err(|e| CoordError::InvalidInput(format!("[node] mesh_subnet: {e}")))?;
        let mesh_ip = self
            .identity
            .mesh_ip(&subnet, &|_| false)
            .map_err(|e| CoordError::InvalidInput(e.to_string()))?;
        let params = ManifestParams {
            agent_types: self.config.node.agent_types.clone(),
            capabilities: self.config.node.capabilities.clone(),
            mesh_ip,
            wg_endpoint: self.config.node.wg_endpoint.clone(),
            protocol_version: crate::identity::PROTOCOL_VERSION,
        };
        Ok(self.identity.signed_manifest(&params, self.now())?)
    }

    /// The node at a glance.
    pub fn status(&self) -> Result<StatusView> {
        drop(self.lock_decisions());
        let peers = self.store.list_peers()?;
        let mut by_trust_level = BTreeMap::new();
        let mut by_breaker_state = BTreeMap::new();
        for peer in &peers {
            *by_trust_level
                .entry(peer.trust_level.to_string())
                .or_insert(0) += 1;
            *by_breaker_state
                .entry(peer.breaker.state.to_string())
                .or_insert(0) += 1;
        }
        Ok(StatusView {
            node_id: self.node_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            endpoint: self.identity.endpoint().map(str::to_string),
            uptime_secs: self.live.started.elapsed().as_secs(),
            now_ms: self.now(),
            peers: peers.len(),
            by_trust_level,
            by_breaker_state,
            audit_records: self.audit.len()?,
            outbox: self.store.outbox_len()?,
            store_commits: self.store.commit_stats(),
            signatures: SignatureStats {
                batched: self.verified_batched.load(Ordering::Relaxed),
                alone: self.verified_alone.load(Ordering::Relaxed),
            },
            refused_for_good: self.refused_for_good.load(Ordering::Relaxed),
            plugins: self.plugins(),
        })
    }

    fn refresh_live_counts(&self) -> Result<()> {
        let peers = self.store.list_peers()?;
        let active = peers
            .iter()
            .filter(|p| {
                p.breaker.state == BreakerState::Active && p.trust_level >= TrustLevel::Verified
            })
            .count();
        self.live
            .known_peers
            .store(peers.len() as u32, Ordering::Relaxed);
        self.live
            .active_peers
            .store(active as u32, Ordering::Relaxed);
        Ok(())
    }

    // ---- peers ----

    /// Every known peer.
    pub fn peers(&self) -> Result<Vec<PeerView>> {
        drop(self.lock_decisions());
        let now = self.now();
        Ok(self
            .store
            .list_peers()?
            .iter()
            .map(|r| peer_view(r, now))
            .collect())
    }

    /// One peer.
    pub fn peer(&self, node_id: &str) -> Result<PeerView> {
        drop(self.lock_decisions());
        Ok(peer_view(&self.peer_record(node_id)?, self.now()))
    }

    /// The key that signs `node_id`'s delivery receipts, when its
    /// manifest on record announces a protocol version that signs them
    /// ([`crate::receipt::SIGNED_RECEIPTS_VERSION`]); `None` for an older
    /// peer, whose acknowledgements are unsigned (protocol §10.4). The
    /// manifest is signed by the peer, so the version cannot be lowered by
    /// anyone in between.
    pub fn receipt_key(&self, node_id: &str) -> Result<Option<String>> {
        let manifest = self.peer_record(node_id)?.manifest.manifest;
        Ok(
            (manifest.protocol_version >= crate::receipt::SIGNED_RECEIPTS_VERSION)
                .then_some(manifest.public_key),
        )
    }

    /// `node_id`'s Ed25519 key on record ("" when unknown).
    fn peer_public_key(&self, node_id: &str) -> String {
        self.store
            .get_peer(node_id)
            .ok()
            .flatten()
            .map(|r| r.manifest.manifest.public_key)
            .unwrap_or_default()
    }

    fn peer_record(&self, node_id: &str) -> Result<PeerRecord> {
        if let Some(record) = self.store.get_peer(node_id)? {
            return Ok(record);
        }
        // A typo gets a suggestion: the known id within two edits, if one.
        let closest = self
            .store
            .list_peers()?
            .into_iter()
            .map(|r| r.node_id().to_string())
            .map(|id| (edit_distance(node_id, &id), id))
            .filter(|(d, _)| *d <= 2)
            .min();
        Err(match closest {
            Some((_, known)) => CoordError::UnknownPeerDidYouMean {
                given: clip(node_id),
                known,
            },
            None => CoordError::UnknownPeer(clip(node_id)),
        })
    }

    /// Adds a peer out of band from its signed manifest (JSON): the
    /// signature and every field are verified; the peer starts VERIFIED.
    pub fn add_peer(&self, manifest_json: &str) -> Result<PeerView> {
        let manifest = SignedManifest::from_json(manifest_json.as_bytes())?;
        manifest.verify()?;
        let node_id = manifest.manifest.node_id.clone();
        if node_id == self.node_id() {
            return Err(CoordError::InvalidInput(
                "that is this node's own manifest".into(),
            ));
        }
        let _guard = self.lock_decisions();
        if self.store.get_peer(&node_id)?.is_some() {
            return Err(CoordError::PeerExists(node_id));
        }
        let now = self.now();
        let mut record = PeerRecord::new(manifest, now);
        record.trust_level = TrustLevel::Verified;
        // The operator's explicit decision lifts an earlier removal; the
        // peer and its record commit together.
        self.store.upsert_peer_recorded(
            &self.audit,
            &record,
            true,
            vec![
                AuditEvent::new(
                    EventType::PeerAdded,
                    format!("peer {node_id} added out of band"),
                )
                .with_peer(&node_id)
                .with_actor(crate::audit::ACTOR_OPERATOR)
                .with_details(json!({
                    "endpoint": record.manifest.manifest.endpoint,
                    "tls_fingerprint": record.manifest.manifest.tls_fingerprint,
                    "trust_level": record.trust_level,
                })),
            ],
        )?;
        self.refresh_live_counts()?;
        Ok(peer_view(&record, now))
    }

    /// Forgets a peer: its record, its spend samples and its queued
    /// outbox messages (dropped, with their ids in the `peer_removed`
    /// record). It goes on the removed list: its handshakes are refused
    /// (`PEER_REMOVED`) until an operator adds or joins it again.
    pub fn remove_peer(&self, node_id: &str) -> Result<()> {
        let _guard = self.lock_decisions();
        // The removal and its record (naming what was dropped) commit
        // together.
        let removed =
            self.store
                .remove_peer_recorded(&self.audit, node_id, self.now(), |removed| {
                    let dropped = &removed.dropped_envelopes;
                    AuditEvent::new(
                        EventType::PeerRemoved,
                        format!(
                            "peer {node_id} removed; {} queued message(s) dropped",
                            dropped.len()
                        ),
                    )
                    .with_peer(node_id)
                    .with_actor(crate::audit::ACTOR_OPERATOR)
                    .with_details(json!({
                        "outbox_dropped": dropped.len(),
                        "dropped_envelope_ids": dropped.iter().take(100).collect::<Vec<_>>(),
                    }))
                })?;
        if removed.is_none() {
            return Err(CoordError::UnknownPeer(clip(node_id)));
        }
        self.refresh_live_counts()
    }

    /// How many known peers were admitted by `accept_new_peers`.
    pub fn accepted_new_peers(&self) -> Result<usize> {
        Ok(self
            .store
            .list_peers()?
            .iter()
            .filter(|r| r.admitted == PeerOrigin::AcceptNew)
            .count())
    }

    /// Whether this node keeps a session with `node_id` on its own (redials
    /// it): only peers an operator added or joined. A stranger admitted by
    /// `accept_new_peers` is never a redial target, so strangers cannot aim
    /// this node's connections at hosts of their choosing.
    pub fn redials(&self, node_id: &str) -> Result<bool> {
        Ok(self
            .store
            .get_peer(node_id)?
            .is_some_and(|r| r.admitted == PeerOrigin::Operator))
    }

    /// Takes the decision lock; successes noted meanwhile are applied
    /// first, so every decision and read sees current counts.
    fn lock_decisions(&self) -> std::sync::MutexGuard<'_, ()> {
        let guard = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_pending_successes_locked();
        guard
    }

    // ---- trust ----

    /// Whether `node_id` may use `capability`: the breaker first, then the
    /// trust level.
    pub fn check_capability(&self, node_id: &str, capability: Capability) -> Result<()> {
        let record = self.peer_record(node_id)?;
        check_gates(&record, &[capability])
    }

    /// Operator sets a peer's level (audited as an operator bootstrap).
    /// This is also how a PRIVILEGED recommendation is confirmed.
    ///
    /// The decision holds: with `pin` (the default of `trust set`) no
    /// plugin promotes the peer above `level` until an operator unpins it;
    /// pinned or not, `level` is the floor decay stops at. It also starts a
    /// new evidence period ([`InteractionMetrics::close_period`]): the
    /// counters the plugin scores restart from zero, so evidence older than
    /// the decision can neither undo it (old threats, failures) nor spend
    /// it (old successes). Setting the level a peer already has only
    /// changes the pin, and is refused when that changes nothing.
    pub fn set_trust(
        &self,
        node_id: &str,
        level: &str,
        reason: &str,
        pin: bool,
    ) -> Result<TrustChange> {
        let level: TrustLevel = level
            .parse()
            .map_err(|_| CoordError::InvalidLevel(clip(level)))?;
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let held = record.operator.filter(|op| op.level == level);
        if record.trust_level == level && held.is_some_and(|op| op.pinned == pin) {
            return Err(CoordError::IllegalTransition(format!(
                "{node_id} is already {level} ({}); nothing to change",
                if pin { "pinned" } else { "not pinned" }
            )));
        }
        let change = TrustChange {
            peer: node_id.to_string(),
            from: record.trust_level,
            to: level,
            actor: crate::audit::ACTOR_OPERATOR.to_string(),
            reason: format!("operator bootstrap: {reason}"),
        };
        let operator = OperatorLevel {
            level,
            at_ms: self.now(),
            pinned: pin,
        };
        self.apply_trust_change_with(&change, Actor::Operator, Some(operator))?;
        Ok(change)
    }

    /// Operator releases a pin: the peer keeps its level and may earn its
    /// way up again; the operator's level stays the floor of decay.
    pub fn unpin_trust(&self, node_id: &str, reason: &str) -> Result<TrustPinView> {
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let Some(op) = record.operator.filter(|op| op.pinned) else {
            return Err(CoordError::IllegalTransition(format!(
                "{node_id} is not pinned"
            )));
        };
        let unpinned = OperatorLevel {
            pinned: false,
            ..op
        };
        let event = AuditEvent::new(
            EventType::OperatorAction,
            format!("trust pin on {node_id} at {} released", op.level),
        )
        .with_peer(node_id)
        .with_actor(crate::audit::ACTOR_OPERATOR)
        .with_details(json!({"action": "trust_unpin", "level": op.level, "reason": reason}));
        self.store.update_peer_recorded(
            &self.audit,
            node_id,
            move |r| r.operator = Some(unpinned),
            vec![event],
        )?;
        Ok(TrustPinView {
            peer: node_id.to_string(),
            level: record.trust_level,
            operator: Some(unpinned),
        })
    }

    /// Applies `change` to the peer's record and records
    /// `trust_level_changed` in the same commit: after a crash both are
    /// there or neither is.
    fn apply_trust_change(&self, change: &TrustChange, actor: Actor) -> Result<()> {
        self.apply_trust_change_with(change, actor, None)
    }

    /// [`Coordinator::apply_trust_change`], and for an operator's decision
    /// also its pin and a new evidence period.
    fn apply_trust_change_with(
        &self,
        change: &TrustChange,
        actor: Actor,
        operator: Option<OperatorLevel>,
    ) -> Result<()> {
        let now = self.now();
        let to = change.to;
        let mut event = AuditEvent::trust_level_changed(
            &change.peer,
            change.from,
            change.to,
            actor,
            &change.reason,
        )
        .with_actor(change.actor.clone());
        if let (Some(op), Some(details)) = (operator, event.details.as_object_mut()) {
            details.insert("pinned".into(), json!(op.pinned));
        }
        self.store.update_peer_recorded(
            &self.audit,
            &change.peer,
            move |r| set_trust_level(r, to, now, operator),
            vec![event],
        )?;
        self.refresh_live_counts()
    }

    /// What stands between a peer and its next level: the host's rules
    /// (pin, time at level, distinct active days) and the trust plugin's
    /// own bar, each met or not, with the earliest time the promotion could
    /// happen. Changes nothing.
    ///
    /// The plugin's bar is found by asking it about the peer as it would be
    /// after each further hour of steady work at the hourly cap (every
    /// counted interaction a success), up to [`NEXT_STEP_HORIZON_MS`]; so
    /// the earliest time is a lower bound that holds for any trust plugin.
    pub fn trust_next_step(&self, node_id: &str) -> Result<NextStep> {
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let level = record.trust_level;
        let Some(gates) = trust_ledger::promotion_gates(
            &self.earning,
            level,
            record.level_since_ms,
            &record.metrics.earned,
            record.operator.as_ref(),
            now,
        ) else {
            let summary = match level {
                TrustLevel::Untrusted => {
                    "UNTRUSTED peers rise only through a completed handshake (VERIFIED) or an operator's `trust set`".to_string()
                }
                TrustLevel::Trusted => format!(
                    "PRIVILEGED is never automatic: an operator confirms it with `agentfed trust set {node_id} privileged --reason …`{}",
                    if record.privileged_recommended { " (the trust plugin recommends it)" } else { "" }
                ),
                _ => "PRIVILEGED is the top of the ladder".to_string(),
            };
            return Ok(NextStep {
                peer: node_id.to_string(),
                level,
                to: None,
                summary,
                requirements: Vec::new(),
                earliest_ms: None,
            });
        };
        let plugin = self.plugins.trust.get();
        let asks_promotion =
            |snapshot: &plugin::PeerSnapshot| -> std::result::Result<(bool, String), String> {
                match plugin.evaluate_trust(snapshot) {
                    Ok(d) => Ok((
                        matches!(d.action, plugin::TrustAction::Promote(_)),
                        d.reason,
                    )),
                    Err(e) => Err(format!("the trust plugin failed ({})", e.code())),
                }
            };
        let base = snapshot(&record, now);
        let mut requirements = gates.requirements.clone();
        let (met, reason) = asks_promotion(&base).unwrap_or_else(|e| (false, e));
        let plugin_earliest = if met {
            Some(now)
        } else {
            let per_hour = u64::from(self.earning.counted_per_hour);
            (1..=NEXT_STEP_HORIZON_MS / HOUR_MS).find_map(|h| {
                let mut future = base.clone();
                future.now_ms = now + h * HOUR_MS;
                future.metrics.interactions += h * per_hour;
                future.metrics.successes += h * per_hour;
                future.metrics.last_seen_ms = future.now_ms;
                matches!(asks_promotion(&future), Ok((true, _))).then_some(future.now_ms)
            })
        };
        requirements.push(trust_ledger::Requirement {
            rule: format!(
                "the trust plugin ({}) asks for {}",
                plugin.metadata().name,
                gates.to
            ),
            have: reason,
            met,
            earliest_ms: plugin_earliest,
        });
        let step = trust_ledger::PromotionGates {
            to: gates.to,
            requirements,
        };
        let earliest_ms = step.earliest_ms(now);
        let summary = if step.open() {
            format!("{} is due now: every condition is met", gates.to)
        } else {
            match earliest_ms {
                Some(t) => format!(
                    "{} at the earliest in {} (with steady work at {} counted interactions an hour)",
                    gates.to,
                    // Rounded up to the minute: "in 7 days", not "6 days 23 h".
                    trust_ledger::duration_text(t.saturating_sub(now).div_ceil(60_000) * 60_000),
                    self.earning.counted_per_hour
                ),
                None => format!(
                    "{} cannot happen by waiting (a pin, or beyond {} at the hourly cap)",
                    gates.to,
                    trust_ledger::duration_text(NEXT_STEP_HORIZON_MS)
                ),
            }
        };
        Ok(NextStep {
            peer: node_id.to_string(),
            level,
            to: Some(gates.to),
            summary,
            requirements: step.requirements,
            earliest_ms,
        })
    }

    /// Asks the trust plugin about one peer and applies a legal answer.
    pub fn evaluate_trust(&self, node_id: &str) -> Result<TrustOutcome> {
        let _guard = self.lock_decisions();
        self.evaluate_trust_locked(node_id)
    }

    fn evaluate_trust_locked(&self, node_id: &str) -> Result<TrustOutcome> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let plugin = self.plugins.trust.get();
        let decision = match plugin.evaluate_trust(&snapshot(&record, now)) {
            Ok(decision) => decision,
            Err(err) => {
                return self
                    .plugin_failed(&plugin, Some(node_id), err)
                    .map(|code| TrustOutcome::PluginFailed { code });
            }
        };
        let score = if decision.score.is_finite() {
            decision.score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let components = score_components(&decision.components);
        let current = record.trust_level;
        let verdict = match decision.action {
            plugin::TrustAction::Keep => Ok(None),
            plugin::TrustAction::Promote(to) => {
                let to = from_wit_level(to);
                if current == TrustLevel::Untrusted {
                    Err("a plugin cannot promote an UNTRUSTED peer (VERIFIED comes from a handshake or an operator)".to_string())
                } else if to == TrustLevel::Privileged {
                    Err(
                        "a plugin cannot promote to PRIVILEGED; it may only recommend it"
                            .to_string(),
                    )
                } else if Some(to) != current.next_up() {
                    Err(format!(
                        "a plugin may only promote one level ({current} -> {to} refused)"
                    ))
                } else {
                    Ok(Some(to))
                }
            }
            plugin::TrustAction::Demote(to) => {
                let to = from_wit_level(to);
                if to < current {
                    Ok(Some(to))
                } else {
                    Err(format!(
                        "a demotion must lower the level ({current} -> {to} refused)"
                    ))
                }
            }
            plugin::TrustAction::RecommendPrivileged => {
                if current == TrustLevel::Trusted {
                    Ok(None)
                } else {
                    Err(format!(
                        "PRIVILEGED can only be recommended for a TRUSTED peer, not {current}"
                    ))
                }
            }
        };
        let recommend =
            matches!(decision.action, plugin::TrustAction::RecommendPrivileged) && verdict.is_ok();
        let newly_recommended = recommend && !record.privileged_recommended;
        // Most evaluations change nothing; skipping the write saves a
        // durable commit (an fsync) per interaction.
        if record.score != score || record.score_components != components || newly_recommended {
            // A first PRIVILEGED recommendation and its record commit
            // together with the flag that keeps it from repeating.
            let events = if newly_recommended {
                vec![
                    AuditEvent::new(EventType::TrustLevelChanged, format!("PRIVILEGED recommended for {node_id}; operator confirmation required"))
                        .with_peer(node_id)
                        .with_actor(plugin_actor(&plugin))
                        .with_details(json!({"recommendation": "PRIVILEGED", "from": current, "to": current, "reason": decision.reason, "score": score})),
                ]
            } else {
                Vec::new()
            };
            self.store.update_peer_recorded(
                &self.audit,
                node_id,
                move |r| {
                    r.score = score;
                    r.score_components = components;
                    if recommend {
                        r.privileged_recommended = true;
                    }
                },
                events,
            )?;
        }
        // A legal promotion must still pass the host's earning rules and
        // any operator pin (checked here, for every trust plugin).
        let verdict = match verdict {
            Ok(Some(to)) if to > current => {
                let gates = trust_ledger::promotion_gates(
                    &self.earning,
                    current,
                    record.level_since_ms,
                    &record.metrics.earned,
                    record.operator.as_ref(),
                    now,
                );
                match gates.as_ref().and_then(|g| g.first_unmet()) {
                    Some(waiting_for) => {
                        return Ok(TrustOutcome::Held {
                            score,
                            reason: decision.reason,
                            to,
                            waiting_for,
                        });
                    }
                    None => Ok(Some(to)),
                }
            }
            other => other,
        };
        match verdict {
            Err(reason) => {
                self.record(
                    AuditEvent::new(
                        EventType::PluginFailed,
                        format!("trust decision refused: {reason}"),
                    )
                    .with_peer(node_id)
                    .with_actor(plugin_actor(&plugin))
                    .with_severity(Severity::Warning)
                    .with_details(json!({"kind": "trust", "refused": reason})),
                )?;
                Ok(TrustOutcome::Refused { reason })
            }
            Ok(Some(to)) => {
                let change = TrustChange {
                    peer: node_id.to_string(),
                    from: current,
                    to,
                    actor: plugin_actor(&plugin),
                    reason: decision.reason,
                };
                self.apply_trust_change(&change, Actor::Plugin)?;
                Ok(TrustOutcome::Changed(change))
            }
            Ok(None) if recommend => {
                Ok(TrustOutcome::PrivilegedRecommended {
                    score,
                    reason: decision.reason,
                })
            }
            Ok(None) => Ok(TrustOutcome::Kept {
                score,
                reason: decision.reason,
            }),
        }
    }

    /// Takes a silent peer down one earned level when the decay rule says so
    /// ([`trust_ledger::decay_target`]); audited, with the host as actor.
    fn decay_locked(&self, node_id: &str) -> Result<Option<TrustChange>> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let Some(to) = trust_ledger::decay_target(
            &self.earning,
            record.trust_level,
            record.level_since_ms,
            &record.metrics.earned,
            record.operator.as_ref(),
            now,
        ) else {
            return Ok(None);
        };
        let quiet_since = record
            .metrics
            .earned
            .last_counted_ms
            .max(record.level_since_ms);
        let change = TrustChange {
            peer: node_id.to_string(),
            from: record.trust_level,
            to,
            actor: crate::audit::ACTOR_SYSTEM.to_string(),
            reason: format!(
                "decay: nothing earned for {} (the limit is {}): one level down",
                trust_ledger::duration_text(now.saturating_sub(quiet_since)),
                trust_ledger::duration_text(self.earning.decay_after_ms)
            ),
        };
        self.apply_trust_change(&change, Actor::Plugin)?;
        Ok(Some(change))
    }

    /// Audits a plugin failure and returns its code; the caller fails
    /// closed.
    fn plugin_failed(
        &self,
        plugin: &LoadedPlugin,
        peer: Option<&str>,
        err: PluginError,
    ) -> Result<String> {
        let code = err.code().to_string();
        let mut event = AuditEvent::new(
            EventType::PluginFailed,
            format!("{} plugin failed: {err}", plugin.kind()),
        )
        .with_actor(plugin_actor(plugin))
        .with_severity(Severity::Error)
        .with_details(json!({"kind": plugin.kind(), "code": code}));
        if let Some(peer) = peer {
            event = event.with_peer(peer);
        }
        self.record(event)?;
        tracing::warn!(plugin = %plugin.label(), "plugin failed, failing closed: {err}");
        Ok(code)
    }

    /// Records one interaction with a peer, applies the host's threat
    /// rules, and re-evaluates its trust.
    pub fn record_interaction(
        &self,
        node_id: &str,
        interaction: Interaction,
    ) -> Result<TrustOutcome> {
        let _guard = self.lock_decisions();
        self.record_interaction_locked(node_id, interaction)
    }

    /// Notes one fulfilled request of ours (an acknowledged delivery)
    /// without touching the peer's record. The per-message kinds of
    /// evidence (fulfilled, observed, failed) are counted in memory and
    /// applied as one peer update and one trust evaluation per peer by
    /// [`Coordinator::apply_pending_successes`] (the daemon calls it every
    /// second) or by the next decision or read of peer state
    /// ([`Coordinator::peers`], [`Coordinator::peer`], trust and breaker
    /// decisions), which apply what is pending first, so they never see a
    /// stale count. The message path thus never waits for a peer-record
    /// commit. A crash loses at most the evidence noted since the last
    /// application; it is trust evidence, not acknowledged data.
    pub fn note_fulfilled(&self, node_id: &str) {
        self.note(node_id, |p| p.fulfilled += 1);
    }

    /// Notes something `node_id` did on its own initiative that this node
    /// accepted (an inbound envelope, an answered heartbeat): it keeps the
    /// peer seen, and never earns trust. See [`Coordinator::note_fulfilled`].
    pub fn note_observed(&self, node_id: &str) {
        self.note(node_id, |p| p.observed += 1);
    }

    /// Notes an envelope from `node_id` refused for the sender's own fault:
    /// a failure, counted in full. See [`Coordinator::note_fulfilled`].
    pub fn note_failed(&self, node_id: &str) {
        self.note(node_id, |p| p.failed += 1);
    }

    fn note(&self, node_id: &str, add: impl FnOnce(&mut PendingEvidence)) {
        let mut pending = self
            .pending_evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(node_id) {
            Some(p) => add(p),
            None => {
                let mut p = PendingEvidence::default();
                add(&mut p);
                pending.insert(node_id.to_string(), p);
            }
        }
    }

    /// Applies the evidence noted since the last call (see
    /// [`Coordinator::note_fulfilled`]).
    pub fn apply_pending_successes(&self) {
        drop(self.lock_decisions());
    }

    /// Applies the coalesced evidence of [`Coordinator::note_fulfilled`]
    /// and its siblings (the caller holds the decision lock).
    fn apply_pending_successes_locked(&self) {
        // One pass over what is pending now: evidence noted meanwhile waits
        // for the next call, so a steady stream of it cannot keep the
        // decision lock held.
        let pending = std::mem::take(
            &mut *self
                .pending_evidence
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (peer, evidence) in pending {
            for (interaction, count) in [
                (Interaction::Observed, evidence.observed),
                (Interaction::Failure, evidence.failed),
                (Interaction::Success, evidence.fulfilled),
            ] {
                if count == 0 {
                    continue;
                }
                if let Err(e) = self.record_interactions_locked(&peer, interaction, count) {
                    // The peer was removed meanwhile, or the store failed:
                    // the evidence is dropped, nothing else depends on it.
                    tracing::debug!(peer = %peer, "cannot apply coalesced evidence: {e}");
                }
            }
        }
    }

    fn record_interaction_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
    ) -> Result<TrustOutcome> {
        self.record_interactions_locked(node_id, interaction, 1)
    }

    /// Records `count` interactions of one kind (threats and signature
    /// failures always come one at a time). Successes count toward
    /// promotion only within the hourly cap of [`EarningRules`].
    fn record_interactions_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
        count: u64,
    ) -> Result<TrustOutcome> {
        let now = self.now();
        let cap = self.earning.counted_per_hour;
        if matches!(
            interaction,
            Interaction::Threat | Interaction::SignatureFailure
        ) {
            return self.record_threat_locked(node_id, interaction, now, cap);
        }
        let updated = self.store.update_peer(node_id, move |r| {
            note_interactions(r, interaction, count, now, cap);
        })?;
        updated.ok_or_else(|| CoordError::UnknownPeer(clip(node_id)))?;
        self.evaluate_trust_locked(node_id)
    }

    /// A threat or a signature failure: the count, its record
    /// (`threat_detected` / `signature_invalid`) and, when a rule drops
    /// the peer to UNTRUSTED, the drop with its `trust_level_changed` and
    /// `threat_blocked` records, all in one commit.
    fn record_threat_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
        now: u64,
        cap: u32,
    ) -> Result<TrustOutcome> {
        // Decisions about this peer are serialised by the decision lock,
        // so the outcome worked out on a copy is the one the commit makes.
        let mut after = self.peer_record(node_id)?;
        note_interactions(&mut after, interaction, 1, now, cap);
        let recent_threats = after.metrics.recent_threats_ms.len();
        let threat = interaction == Interaction::Threat;
        let mut events = vec![
            AuditEvent::new(
                if threat {
                    EventType::ThreatDetected
                } else {
                    EventType::SignatureInvalid
                },
                format!(
                    "{} from {node_id}",
                    if threat {
                        "threat detected"
                    } else {
                        "invalid signature"
                    }
                ),
            )
            .with_peer(node_id)
            .with_details(json!({"threats_last_hour": recent_threats})),
        ];
        let rule = match interaction {
            Interaction::SignatureFailure => Some("signature failure"),
            Interaction::Threat if recent_threats >= 2 => {
                Some("two threat detections within an hour")
            }
            _ => None,
        };
        let drop = rule
            .filter(|_| after.trust_level != TrustLevel::Untrusted)
            .map(|rule| {
                let change = TrustChange {
                    peer: node_id.to_string(),
                    from: after.trust_level,
                    to: TrustLevel::Untrusted,
                    actor: crate::audit::ACTOR_SYSTEM.to_string(),
                    reason: format!("{rule}: dropped to UNTRUSTED"),
                };
                events.push(
                    AuditEvent::trust_level_changed(
                        node_id,
                        change.from,
                        change.to,
                        Actor::Plugin,
                        &change.reason,
                    )
                    .with_actor(change.actor.clone()),
                );
                events.push(
                    AuditEvent::new(
                        EventType::ThreatBlocked,
                        format!("{node_id} dropped to UNTRUSTED: {rule}"),
                    )
                    .with_peer(node_id),
                );
                change
            });
        let dropped = drop.is_some();
        let updated = self.store.update_peer_recorded(
            &self.audit,
            node_id,
            move |r| {
                note_interactions(r, interaction, 1, now, cap);
                if dropped {
                    set_trust_level(r, TrustLevel::Untrusted, now, None);
                }
            },
            events,
        )?;
        updated.ok_or_else(|| CoordError::UnknownPeer(clip(node_id)))?;
        match drop {
            Some(change) => {
                self.refresh_live_counts()?;
                Ok(TrustOutcome::Changed(change))
            }
            None => self.evaluate_trust_locked(node_id),
        }
    }
}

fn score_components(components: &[plugin::ScoreComponent]) -> ScoreComponents {
    let get = |name: &str| {
        components
            .iter()
            .find(|c| c.name == name)
            .map(|c| if c.value.is_finite() { c.value } else { 0.0 })
            .unwrap_or(0.0)
    };
    ScoreComponents {
        success_rate: get("success-rate"),
        uptime: get("uptime"),
        // The default policy reports the term as 1 - penalty.
        threat_penalty: 1.0 - get("threat-penalty"),
        integrity: get("integrity"),
    }
}

/// The breaker gate, then each capability's trust gate.
fn check_gates(record: &PeerRecord, capabilities: &[Capability]) -> Result<()> {
    check_breaker(record)?;
    for &capability in capabilities {
        if !trust::allowed(record.trust_level, capability) {
            return Err(CoordError::CapabilityDenied {
                peer: record.node_id().to_string(),
                level: record.trust_level,
                capability,
            });
        }
    }
    Ok(())
}

/// The breaker gate, with an error that says since when, why, and how to
/// reactivate.
fn check_breaker(record: &PeerRecord) -> Result<()> {
    let Err(gate) = breaker::check_gate(record.breaker.state) else {
        return Ok(());
    };
    let since = crate::clock::rfc3339(record.breaker.since_ms)
        .unwrap_or_else(|| record.breaker.since_ms.to_string());
    let cooldown = if record.breaker.state == BreakerState::Suspended {
        format!(
            " (eligible {} after the suspension; `agentfed breaker status {}`)",
            crate::trust_ledger::duration_text(breaker::REACTIVATE_COOLDOWN_MS),
            record.node_id()
        )
    } else {
        String::new()
    };
    Err(CoordError::NotActive {
        gate,
        peer: record.node_id().to_string(),
        state: record.breaker.state,
        since,
        reason: clip(
            record
                .breaker
                .reason
                .as_deref()
                .unwrap_or("no reason recorded"),
        ),
        cooldown,
    })
}

impl Coordinator {
    /// The breaker gate for `node_id` alone (e.g. before a query looks for
    /// a session).
    pub fn check_breaker(&self, node_id: &str) -> Result<()> {
        check_breaker(&self.peer_record(node_id)?)
    }
}

/// Levenshtein distance of two short strings (node ids are at most 64
/// characters); inputs past 64 characters are not compared.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Echo at most 64 characters of caller input in an error.
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(64).collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

impl Coordinator {
    // ---- spend and the circuit breaker ----

    /// Records a completed call's cost and outcome, then re-evaluates the
    /// peer's breaker and trust. Negative values are kept in the audit and
    /// count as 0 for the breaker.
    pub fn report_spend(&self, report: SpendReport) -> Result<SpendOutcome> {
        validate_task_id(&report.task_id)?;
        if !report.tokens.is_finite()
            || report.tokens.fract() != 0.0
            || report.tokens.abs() > MAX_REPORT_TOKENS
        {
            return Err(CoordError::InvalidInput(format!(
                "tokens must be a whole number of magnitude at most {MAX_REPORT_TOKENS:e}"
            )));
        }
        if !report.usd.is_finite() || report.usd.abs() > MAX_REPORT_USD {
            return Err(CoordError::InvalidInput(format!(
                "usd must be a finite number of magnitude at most {MAX_REPORT_USD:e}"
            )));
        }
        let _guard = self.lock_decisions();
        let record = self.peer_record(&report.peer)?;
        let now = self.now();
        let sample = SpendSample {
            ts_ms: now,
            task_id: report.task_id.clone(),
            tokens: report.tokens as i64,
            usd: report.usd,
            success: report.success,
        };
        // The sample, a failure counted against a suspended peer and its
        // `spend_reported` record commit together.
        let event = AuditEvent::spend_reported(
            &report.peer,
            &report.task_id,
            sample.tokens,
            report.usd,
            report.success,
        );
        let count_failure = record.breaker.state == BreakerState::Suspended && !report.success;
        if !self.store.record_spend_recorded(
            &self.audit,
            &report.peer,
            &sample,
            count_failure,
            vec![event],
        )? {
            return Err(CoordError::UnknownPeer(clip(&report.peer)));
        }
        let interaction = if report.success {
            Interaction::Success
        } else {
            Interaction::Failure
        };
        let trust = self.record_interaction_locked(&report.peer, interaction)?;
        let breaker = self.evaluate_breaker_locked(&report.peer)?;
        Ok(SpendOutcome { breaker, trust })
    }

    fn spend_request(&self, record: &PeerRecord, now: u64) -> Result<plugin::SpendRequest> {
        let node_id = record.node_id();
        let window = |span: u64| -> Result<plugin::SpendWindow> {
            let w = self.store.spend_window(
                node_id,
                now.saturating_sub(span),
                record.breaker.counts_from_seq,
            )?;
            Ok(plugin::SpendWindow {
                window_ms: span,
                samples: w.samples.min(u64::from(u32::MAX)) as u32,
                failures: w.failures.min(u64::from(u32::MAX)) as u32,
                tokens: w.tokens,
                usd: w.usd,
            })
        };
        Ok(plugin::SpendRequest {
            node_id: node_id.to_string(),
            breaker: plugin::BreakerView {
                state: to_wit_breaker(record.breaker.state),
                since_ms: record.breaker.since_ms,
                reason: record.breaker.reason.clone(),
                failures_since_suspend: record
                    .breaker
                    .failures_since_suspend
                    .min(u64::from(u32::MAX)) as u32,
            },
            last_hour: window(HOUR_MS)?,
            last_day: window(DAY_MS)?,
            now_ms: now,
        })
    }

    /// Asks the spend plugin about one peer and applies a legal answer.
    pub fn evaluate_breaker(&self, node_id: &str) -> Result<BreakerOutcome> {
        let _guard = self.lock_decisions();
        self.evaluate_breaker_locked(node_id)
    }

    fn evaluate_breaker_locked(&self, node_id: &str) -> Result<BreakerOutcome> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let unchanged = BreakerOutcome::Unchanged {
            state: record.breaker.state,
            reactivate_eligible: breaker::reactivate_eligible(&record.breaker, now),
        };
        if record.breaker.state == BreakerState::Evicted {
            return Ok(unchanged);
        }
        let plugin = self.plugins.spend.get();
        let decision = match plugin.evaluate_spend(&self.spend_request(&record, now)?) {
            Ok(decision) => decision,
            Err(err) => {
                let code = self.plugin_failed(&plugin, Some(node_id), err)?;
                return Ok(BreakerOutcome::PluginFailed { code });
            }
        };
        let (target, reason) = match decision {
            plugin::SpendDecision::None | plugin::SpendDecision::ReactivateEligible => {
                return Ok(unchanged);
            }
            plugin::SpendDecision::Suspend(reason) => (BreakerState::Suspended, reason),
            plugin::SpendDecision::Evict(reason) => (BreakerState::Evicted, reason),
        };
        match breaker::transition(record.breaker.state, target, Actor::Plugin) {
            Ok(_) => {
                let reason = clip_reason(&reason);
                let change = self.apply_breaker(
                    &record,
                    target,
                    &plugin_actor(&plugin),
                    Actor::Plugin,
                    &reason,
                )?;
                Ok(BreakerOutcome::Changed(change))
            }
            Err(illegal) => {
                let reason = illegal.to_string();
                self.record(
                    AuditEvent::new(
                        EventType::PluginFailed,
                        format!("breaker decision refused: {reason}"),
                    )
                    .with_peer(node_id)
                    .with_actor(plugin_actor(&plugin))
                    .with_severity(Severity::Warning)
                    .with_details(json!({"kind": "spend", "refused": reason})),
                )?;
                Ok(BreakerOutcome::Refused { reason })
            }
        }
    }

    fn apply_breaker(
        &self,
        record: &PeerRecord,
        to: BreakerState,
        actor_name: &str,
        actor: Actor,
        reason: &str,
    ) -> Result<BreakerChange> {
        let now = self.now();
        let correlation = correlation_id();
        let (why, id) = (reason.to_string(), correlation.clone());
        // An operator's reactivation starts the spend windows afresh: spend
        // reported before it cannot trip the breaker again, only new spend
        // can. Every other change keeps where the windows count from.
        let counts_from = if actor == Actor::Operator && to == BreakerState::Active {
            (now, self.store.spend_next_seq(record.node_id())?)
        } else {
            (
                record.breaker.counts_from_ms,
                record.breaker.counts_from_seq,
            )
        };
        // The transition and its record commit together.
        let updated = self.store.update_peer_recorded(
            &self.audit,
            record.node_id(),
            move |r| {
                r.breaker = BreakerInfo {
                    state: to,
                    reason: Some(why.clone()),
                    correlation_id: Some(id.clone()),
                    since_ms: now,
                    failures_since_suspend: 0,
                    counts_from_ms: counts_from.0,
                    counts_from_seq: counts_from.1,
                };
            },
            vec![
                AuditEvent::breaker(record.node_id(), to, actor, reason, &correlation)
                    .with_actor(actor_name.to_string()),
            ],
        )?;
        if updated.is_none() {
            return Err(CoordError::UnknownPeer(clip(record.node_id())));
        }
        self.refresh_live_counts()?;
        Ok(BreakerChange {
            peer: record.node_id().to_string(),
            from: record.breaker.state,
            to,
            actor: actor_name.to_string(),
            reason: reason.to_string(),
            correlation_id: correlation,
        })
    }

    /// Operator eviction (from ACTIVE or SUSPENDED).
    pub fn evict(&self, node_id: &str, reason: &str) -> Result<BreakerChange> {
        self.operator_breaker(node_id, BreakerState::Evicted, reason)
    }

    /// Operator reactivation (from SUSPENDED or EVICTED): the only way back
    /// to ACTIVE.
    pub fn reactivate(&self, node_id: &str, reason: &str) -> Result<BreakerChange> {
        self.operator_breaker(node_id, BreakerState::Active, reason)
    }

    fn operator_breaker(
        &self,
        node_id: &str,
        to: BreakerState,
        reason: &str,
    ) -> Result<BreakerChange> {
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        breaker::transition(record.breaker.state, to, Actor::Operator)
            .map_err(|e| CoordError::IllegalTransition(e.to_string()))?;
        self.apply_breaker(
            &record,
            to,
            crate::audit::ACTOR_OPERATOR,
            Actor::Operator,
            &reason,
        )
    }

    /// Breaker state of one peer or all.
    pub fn breaker_status(&self, node_id: Option<&str>) -> Result<Vec<BreakerView>> {
        let records = match node_id {
            Some(id) => vec![self.peer_record(id)?],
            None => self.store.list_peers()?,
        };
        let now = self.now();
        records
            .iter()
            .map(|r| {
                let from = r.breaker.counts_from_seq;
                let hour =
                    self.store
                        .spend_window(r.node_id(), now.saturating_sub(HOUR_MS), from)?;
                let day = self
                    .store
                    .spend_window(r.node_id(), now.saturating_sub(DAY_MS), from)?;
                Ok(BreakerView {
                    node_id: r.node_id().to_string(),
                    breaker: r.breaker.clone(),
                    reactivate_eligible: breaker::reactivate_eligible(&r.breaker, now),
                    usd_last_day: day.usd,
                    samples_last_hour: hour.samples,
                    failures_last_hour: hour.failures,
                })
            })
            .collect()
    }

    // ---- PII ----

    /// Checks a query's answer from `peer` before the caller sees it: the
    /// reply at most [`MAX_REPLY_BYTES`] as JSON, the reason one clipped
    /// line without control characters, and both through the inbound PII
    /// scan at the peer's level (a block counts as a threat, as for any
    /// inbound payload). Returns them as the caller may see them.
    pub fn check_reply(
        &self,
        peer: &str,
        message_type: &str,
        reply: Option<Value>,
        reason: Option<String>,
    ) -> Result<(Option<Value>, Option<String>)> {
        let record = self.peer_record(peer)?;
        if let Some(reply) = &reply {
            let size = serde_json::to_vec(reply)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_REPLY_BYTES {
                return Err(CoordError::ReplyTooLarge(MAX_REPLY_BYTES));
            }
        }
        if message_type == crate::envelope::WITNESS_REQUEST {
            // A witness page is checked by its signatures, entry by entry,
            // before anything of it is shown ([`crate::mesh::fetch`]); a
            // PII rewrite would break every one of them.
            return Ok((reply, reason.as_deref().map(clip_reason)));
        }
        let mut answer = json!({
            "reply": reply,
            "reason": reason.as_deref().map(clip_reason),
        });
        self.scan_payload(
            peer,
            record.trust_level,
            Direction::Inbound,
            message_type,
            &mut answer,
        )?;
        let reason = answer["reason"].as_str().map(str::to_string);
        Ok((
            Some(answer["reply"].take()).filter(|r| !r.is_null()),
            reason,
        ))
    }

    /// Runs the PII chain (the default policy or the one replacing it,
    /// then any `[[plugins.pii.add]]` policies, within one deadline) over
    /// a payload's string values and applies the merged answer
    /// ([`crate::pii::merge`]): rewrites in place, or `PII_BLOCKED`. Audits types and
    /// counts only. A plugin failure blocks the message. A blocked inbound
    /// payload counts as a threat from its sender.
    pub fn scan_payload(
        &self,
        peer: &str,
        level: TrustLevel,
        direction: Direction,
        message_type: &str,
        payload: &mut Value,
    ) -> Result<PiiReport> {
        if !crate::pii::has_content(payload) {
            return Ok(PiiReport::default());
        }
        let Ok(values) = crate::pii::string_values_capped(
            payload,
            crate::limits::MAX_PII_SCAN_VALUES,
            crate::limits::MAX_PII_SCAN_BYTES,
        ) else {
            return Err(CoordError::PayloadTooComplex);
        };
        let request = plugin::ScanRequest {
            direction,
            peer_level: to_wit_level(level),
            message_type: message_type.to_string(),
            values,
        };
        let chain = self.plugins.pii.chain();
        let plugin = chain[0].clone();
        let hash_key = self.identity.hash_secret();
        let mut hash = |span: &str| plugin::keyed_hash(hash_key, span.as_bytes());
        // 50 ms (by default) for an ordinary message, more per MiB for a
        // bulk one.
        let deadline_ms =
            crate::pii::scan_deadline_ms(plugin.limits().deadline_ms, &request.values);
        let result = match crate::pii::scan_chain(&chain, &request, deadline_ms, &mut hash) {
            Ok(result) => result,
            Err((failed, err)) => {
                // The policy's own words (a panic message, a refusal) are
                // kept, minus any payload text they quote.
                let reported = scrub_plugin_error(&err, &request.values);
                self.plugin_failed(&failed, Some(peer), reported)?;
                let err = scrub_plugin_error(&err, &request.values);
                self.record(AuditEvent::pii(
                    PiiOutcome::Blocked,
                    Some(peer),
                    &[("plugin_failure", 1)],
                ))?;
                return Err(CoordError::Plugin(err));
            }
        };
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut blocking: Vec<String> = Vec::new();
        for d in &result.detections {
            let name = d.pii_type.as_str();
            *counts.entry(name.to_string()).or_default() += 1;
            // A key or a number cannot be rewritten without changing the
            // document's shape: anything but `pass` there blocks.
            let structural = request
                .values
                .get(d.value_index as usize)
                .is_some_and(crate::pii::is_structural);
            let blocks = d.action == plugin::PiiAction::Block
                || (structural && d.action != plugin::PiiAction::Pass);
            if blocks && !blocking.iter().any(|b| b == name) {
                blocking.push(name.to_string());
            }
        }
        let count_list: Vec<(&str, u32)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if result.blocked || !blocking.is_empty() {
            blocking.sort();
            self.record(AuditEvent::pii(
                PiiOutcome::Blocked,
                Some(peer),
                &count_list,
            ))?;
            if direction == Direction::Inbound {
                let _guard = self.lock_decisions();
                let _ = self.record_interaction_locked(peer, Interaction::Threat)?;
            }
            return Err(CoordError::PiiBlocked { types: blocking });
        }
        if let Err(err) = crate::pii::apply_rewrites(payload, &request.values, &result.rewritten) {
            let err = PluginError::Refused {
                plugin: plugin.label(),
                reason: err.to_string(),
            };
            self.plugin_failed(
                &plugin,
                Some(peer),
                PluginError::Refused {
                    plugin: plugin.label(),
                    reason: err.to_string(),
                },
            )?;
            return Err(CoordError::Plugin(err));
        }
        if !counts.is_empty() {
            let outcome = if result.rewritten.is_empty() {
                PiiOutcome::Detected
            } else {
                PiiOutcome::Stripped
            };
            self.record(AuditEvent::pii(outcome, Some(peer), &count_list))?;
        }
        Ok(PiiReport {
            counts,
            rewritten: result.rewritten.len(),
        })
    }

    // ---- outbound messages ----

    /// The outbound pipeline up to the durable outbox: breaker gate, then
    /// capability gate, budget, PII, signature; the signed frame is
    /// committed to the outbox before this returns.
    pub fn send(&self, request: SendRequest) -> Result<SendReceipt> {
        Ok(self.queue(request)?.0)
    }

    /// [`Coordinator::send`], also returning the queued outbox entry so
    /// the delivery worker can send it at once instead of finding it in
    /// the table.
    /// The entry is `None` when the send repeated a committed idempotency
    /// key: the original entry is (or was) the one to deliver.
    pub fn queue(&self, request: SendRequest) -> Result<(SendReceipt, Option<OutboxEntry>)> {
        let (receipt, entry, ticket) = self.queue_submit(request)?;
        match ticket.wait()? {
            Some(original) => Ok((original, None)),
            None => Ok((receipt, entry)),
        }
    }

    /// [`Coordinator::queue`] without waiting for the commit: the entry is
    /// durable (and may be delivered) only once the ticket resolves `Ok`.
    /// A caller with many sends queues them all, then waits: they share
    /// group commits.
    ///
    /// With an idempotency key, the key is committed with the entry; a
    /// key already committed for the same request makes the ticket
    /// resolve to the original receipt, and nothing is queued (see
    /// [`QueuedTicket::wait`]).
    pub fn queue_submit(
        &self,
        request: SendRequest,
    ) -> Result<(SendReceipt, Option<OutboxEntry>, QueuedTicket)> {
        let keyed = match &request.idempotency_key {
            Some(key) => {
                check_idempotency_key(key)?;
                let digest = request_digest(&request);
                // A retry of a committed send is answered without signing
                // or scanning anything again.
                if let Some(done) = self.idempotent_answer(key, &digest)? {
                    return Ok(done);
                }
                Some((key.clone(), digest))
            }
            None => None,
        };
        let message_type = request.message_type.clone();
        let (receipt, frame) = self.prepare_envelope(request)?;
        let entry = OutboxEntry {
            envelope_id: receipt.envelope_id.clone(),
            target: receipt.peer.clone(),
            bytes: frame.into(),
            attempts: 0,
            next_attempt_ms: self.now(),
        };
        crate::store::check_outbox_entry(&entry)?;
        let queued = AuditEvent::new(
            EventType::MessageSent,
            format!("{message_type} queued for {}", receipt.peer),
        )
        .with_peer(&receipt.peer)
        .with_details(json!({
            "envelope_id": receipt.envelope_id,
            "message_type": message_type,
            "bytes": receipt.frame_bytes,
            "state": "queued",
            "idempotency_key": keyed.as_ref().map(|(k, _)| k),
        }));
        let now = self.now();
        let record = keyed.map(|(key, digest)| {
            (
                key,
                crate::store::IdempotencyRecord {
                    digest,
                    created_ms: now,
                    receipt: serde_json::to_value(&receipt).expect("receipts serialise"),
                },
            )
        });
        // The entry, its key and its `message_sent` record commit together;
        // a key committed meanwhile by a concurrent retry wins, and this
        // entry is not written.
        let job_entry = entry.clone();
        let index = self.store.outbox_put_hook(&entry);
        let ticket = self.audit.submit_logged_with_hook(
            move |tx| {
                if let Some((key, record)) = &record {
                    if let Some(seen) = crate::store::idempotency_get_in(tx.txn(), key)?
                        .filter(|seen| seen.created_ms + IDEMPOTENCY_WINDOW_MS > record.created_ms)
                    {
                        return Ok((Keyed::Seen(key.clone(), seen, record.digest.clone()), false));
                    }
                    crate::store::idempotency_put_in(tx, key, record)?;
                }
                outbox_put_in(tx, &job_entry)?;
                Ok((Keyed::Fresh, true))
            },
            vec![queued],
            Some(move |outcome: &Keyed| {
                if matches!(outcome, Keyed::Fresh) {
                    index(&());
                }
            }),
            Persist::Durable,
        )?;
        Ok((receipt, Some(entry), QueuedTicket(Queued::Pending(ticket))))
    }

    /// The answer to a keyed send whose key is already committed: the
    /// original receipt for the same request, `IDEMPOTENCY_KEY_REUSED` for
    /// another; `None` for a key not seen within the window.
    fn idempotent_answer(
        &self,
        key: &str,
        digest: &str,
    ) -> Result<Option<(SendReceipt, Option<OutboxEntry>, QueuedTicket)>> {
        let Some(seen) = self
            .store
            .idempotency_get(key)?
            .filter(|seen| seen.created_ms + IDEMPOTENCY_WINDOW_MS > self.now())
        else {
            return Ok(None);
        };
        let receipt = original_receipt(key, &seen, digest)?;
        Ok(Some((
            receipt.clone(),
            None,
            QueuedTicket(Queued::Repeated(receipt)),
        )))
    }

    /// The result recorded under a `query` or `broadcast` idempotency key
    /// within its window, for the request whose digest is `digest`
    /// ([`query_digest`], [`broadcast_digest`]); `None` for a key not
    /// seen; `IDEMPOTENCY_KEY_REUSED` for a key recorded for another
    /// request (a send's key included).
    pub fn idempotent_result(&self, key: &str, digest: &str) -> Result<Option<Value>> {
        check_idempotency_key(key)?;
        let Some(seen) = self
            .store
            .idempotency_get(key)?
            .filter(|seen| seen.created_ms + IDEMPOTENCY_WINDOW_MS > self.now())
        else {
            return Ok(None);
        };
        if seen.digest != digest {
            return Err(CoordError::IdempotencyKeyReused(clip(key)));
        }
        Ok(Some(seen.receipt))
    }

    /// Records `result` under a `query` or `broadcast` idempotency key
    /// (for 24 h, like a send's) and returns it; when a concurrent call
    /// with the same key recorded first, its result is returned instead
    /// (or `IDEMPOTENCY_KEY_REUSED`, for another request).
    pub fn remember_result(&self, key: &str, digest: &str, result: Value) -> Result<Value> {
        check_idempotency_key(key)?;
        let record = crate::store::IdempotencyRecord {
            digest: digest.to_string(),
            created_ms: self.now(),
            receipt: result,
        };
        let kept = self
            .store
            .idempotency_put_if_absent(key, record, IDEMPOTENCY_WINDOW_MS)?;
        if kept.digest != digest {
            return Err(CoordError::IdempotencyKeyReused(clip(key)));
        }
        Ok(kept.receipt)
    }

    /// An outbox entry was acknowledged by its target: removes it and
    /// audits the delivery in one commit, and notes the success. Returns
    /// `false` (and records nothing) when the entry was already gone, e.g.
    /// acknowledged through another attempt.
    pub fn delivered(&self, entry: &OutboxEntry, status: AckStatus) -> Result<bool> {
        let ticket = self.submit_delivered(entry, status, None)?;
        self.conclude_delivered(entry, status, ticket)
    }

    /// [`Coordinator::delivered`] for many acknowledged entries, each with
    /// the receiver's signed receipt when it gave one (kept in the
    /// `delivered` record, for `audit proof`): all removals are queued
    /// first and share group commits. One result per entry, in order.
    pub fn delivered_many(
        &self,
        entries: &[(OutboxEntry, AckStatus, Option<crate::receipt::Receipt>)],
    ) -> Vec<Result<bool>> {
        let tickets: Vec<_> = entries
            .iter()
            .map(|(entry, status, receipt)| self.submit_delivered(entry, *status, receipt.as_ref()))
            .collect();
        entries
            .iter()
            .zip(tickets)
            .map(|((entry, status, _), ticket)| self.conclude_delivered(entry, *status, ticket?))
            .collect()
    }

    fn conclude_delivered(
        &self,
        entry: &OutboxEntry,
        status: AckStatus,
        ticket: crate::journal::TypedTicket<bool>,
    ) -> Result<bool> {
        let (existed, _) = ticket.wait().map_err(crate::audit::journal_error)?;
        if existed && status != AckStatus::Rejected {
            self.note_fulfilled(&entry.target);
        }
        self.forget_delivery_error(&entry.envelope_id);
        Ok(existed)
    }

    /// Queues the removal of an acknowledged entry with its `delivered`
    /// record (written only if the entry was still there).
    fn submit_delivered(
        &self,
        entry: &OutboxEntry,
        status: AckStatus,
        receipt: Option<&crate::receipt::Receipt>,
    ) -> Result<crate::journal::TypedTicket<bool>> {
        let (peer, id) = (entry.target.as_str(), entry.envelope_id.clone());
        let mut details = json!({
            "envelope_id": id,
            "state": "delivered",
            "status": status,
            "attempts": entry.attempts + 1,
        });
        if let Some(receipt) = receipt {
            details["receipt"] = receipt_details(receipt, &self.peer_public_key(peer));
        }
        let event = AuditEvent::new(EventType::MessageSent, format!("{id} delivered to {peer}"))
            .with_peer(peer)
            .with_details(details);
        // Nobody waits on it with a deadline: it rides the next commit a
        // `send` or an inbound envelope needs.
        self.submit_removal(entry, event, Persist::Lazy)
    }

    /// Queues the removal of `entry` from the outbox with `event`, which is
    /// recorded only if the entry was still there; the ticket yields
    /// whether it was.
    fn submit_removal(
        &self,
        entry: &OutboxEntry,
        event: AuditEvent,
        persist: Persist,
    ) -> Result<crate::journal::TypedTicket<bool>> {
        let id = entry.envelope_id.clone();
        Ok(self.audit.submit_logged_with_hook(
            move |tx| {
                let existed = outbox_remove_in(tx, &id)?;
                Ok((existed, existed))
            },
            vec![event],
            Some(self.store.outbox_remove_hook(&entry.envelope_id)),
            persist,
        )?)
    }

    /// Whether `entry` was queued before its target's level last went
    /// down: it passed the capability gate and the PII scan for a level
    /// the peer no longer holds, so it must not be delivered. Reads the
    /// envelope's timestamp only for a peer that was ever demoted.
    pub fn queued_before_demotion(&self, entry: &OutboxEntry) -> Result<bool> {
        let Some(record) = self.store.get_peer(&entry.target)? else {
            return Ok(false);
        };
        if record.last_demoted_ms == 0 {
            return Ok(false);
        }
        #[derive(Deserialize)]
        struct Stamp {
            timestamp_ms: u64,
        }
        let stamp = envelope::SignedEnvelope::from_frame(&entry.bytes)
            .ok()
            .and_then(|signed| serde_json::from_slice::<Stamp>(&signed.bytes).ok());
        // Our own envelope always parses; if it somehow does not, it is
        // safer not to send it.
        Ok(stamp.is_none_or(|s| s.timestamp_ms <= record.last_demoted_ms))
    }

    /// An outbox entry was refused for good by its target (`code`), or
    /// dropped here ([`LEVEL_LOWERED`]): removes it and audits the refusal
    /// in one commit.
    pub fn refused_for_good(&self, entry: &OutboxEntry, code: &str) -> Result<bool> {
        self.refused_for_good_with(entry, code, None)
    }

    /// [`Coordinator::refused_for_good`], keeping the receiver's signed
    /// receipt of the refusal in the record when it gave one.
    pub fn refused_for_good_with(
        &self,
        entry: &OutboxEntry,
        code: &str,
        receipt: Option<&crate::receipt::Receipt>,
    ) -> Result<bool> {
        let (peer, id) = (entry.target.as_str(), entry.envelope_id.clone());
        // A stale envelope refused after earlier attempts may have been
        // processed by one of them (its acknowledgement lost, and the
        // receiver's record of it since forgotten): say so, not "refused".
        let outcome_unknown = code == "STALE_TIMESTAMP" && entry.attempts > 0;
        let summary = if code == LEVEL_LOWERED {
            format!(
                "{id} to {peer} dropped: queued before {peer}'s trust level was lowered; not sent"
            )
        } else if outcome_unknown {
            format!(
                "{id} expired undelivered to {peer} ({code} after {} attempts; an earlier attempt may have been processed); not retried",
                entry.attempts
            )
        } else {
            format!("{id} refused by {peer}: {code}; not retried")
        };
        let mut details = json!({
            "envelope_id": id,
            "reason": code,
            "final": true,
            "outcome_unknown": outcome_unknown,
        });
        if let Some(receipt) = receipt {
            details["receipt"] = receipt_details(receipt, &self.peer_public_key(peer));
        }
        let event = AuditEvent::new(EventType::MessageRejected, summary)
            .with_peer(peer)
            .with_details(details);
        let (existed, _) = self
            .submit_removal(entry, event, Persist::Durable)?
            .wait()
            .map_err(crate::audit::journal_error)?;
        if existed {
            // Nothing fails silently: the sender's operator sees it in the
            // log, in `status` and in `outbox --failed`.
            tracing::warn!(peer = %peer, envelope_id = %id, code, "message refused for good, not retried");
            self.refused_for_good.fetch_add(1, Ordering::Relaxed);
        }
        self.forget_delivery_error(&id);
        Ok(existed)
    }

    /// Remembers why the last delivery attempt of `envelope_id` failed
    /// (shown by `outbox`).
    pub fn note_delivery_error(&self, envelope_id: &str, code: &str) {
        let mut errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        errors.insert(envelope_id.to_string(), code.to_string());
    }

    fn forget_delivery_error(&self, envelope_id: &str) {
        let mut errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        errors.remove(envelope_id);
    }

    /// Messages waiting in the outbox (for `peer` only, if given), the
    /// next due first, at most `limit`.
    pub fn outbox(&self, peer: Option<&str>, limit: usize) -> Result<Vec<OutboxView>> {
        let now = self.now();
        let errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(self
            .store
            .outbox_list(peer, limit)?
            .iter()
            .map(|e| outbox_view(e, now, errors.get(&e.envelope_id).cloned()))
            .collect())
    }

    /// Cancels a queued message: removed from the outbox with a
    /// `message_rejected` record (reason `CANCELLED`, by the operator).
    /// Refused when it is not queued (delivered, refused or unknown).
    pub fn cancel_outbox(&self, envelope_id: &str, reason: &str) -> Result<OutboxView> {
        let reason = validate_reason(reason)?;
        let Some(entry) = self.store.outbox_get(envelope_id)? else {
            return Err(CoordError::InvalidInput(format!(
                "no queued message {}: it was delivered, refused or never queued (see `agentfed outbox --failed` and the audit log)",
                clip(envelope_id)
            )));
        };
        let view = outbox_view(&entry, self.now(), None);
        let event = AuditEvent::new(
            EventType::MessageRejected,
            format!(
                "{} to {} cancelled by the operator: {reason}",
                entry.envelope_id, entry.target
            ),
        )
        .with_peer(&entry.target)
        .with_actor(crate::audit::ACTOR_OPERATOR)
        .with_details(json!({
            "envelope_id": entry.envelope_id,
            "reason": "CANCELLED",
            "final": true,
            "cancelled": reason,
        }));
        let (existed, _) = self
            .submit_removal(&entry, event, Persist::Durable)?
            .wait()
            .map_err(crate::audit::journal_error)?;
        self.forget_delivery_error(envelope_id);
        if !existed {
            return Err(CoordError::InvalidInput(
                "the message left the outbox meanwhile (delivered or refused)".into(),
            ));
        }
        Ok(view)
    }

    /// What became of an envelope this node sent to `peer`: still
    /// queued, delivered (with the receiver's status), or refused for
    /// good (with the code), from the outbox and the audit log.
    pub fn delivery_outcome(&self, peer: &str, envelope_id: &str) -> Result<DeliveryOutcome> {
        if let Some(entry) = self.store.outbox_get(envelope_id)? {
            let error = self
                .delivery_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(envelope_id)
                .cloned();
            return Ok(DeliveryOutcome::Queued {
                attempts: entry.attempts,
                last_error: error,
            });
        }
        let records = self
            .audit
            .query(&crate::audit::AuditQuery {
                event_types: vec![EventType::MessageSent, EventType::MessageRejected],
                peer: Some(peer.to_string()),
                order: crate::audit::Order::NewestFirst,
                limit: Some(10_000),
                ..Default::default()
            })
            .map_err(CoordError::Audit)?;
        for r in records {
            if r.details["envelope_id"] != envelope_id {
                continue;
            }
            if r.event_type == EventType::MessageSent && r.details["state"] == "delivered" {
                return Ok(DeliveryOutcome::Delivered {
                    status: r.details["status"].as_str().unwrap_or("").to_lowercase(),
                });
            }
            if r.event_type == EventType::MessageRejected && r.details["final"] == true {
                return Ok(DeliveryOutcome::Refused {
                    code: r.details["reason"]
                        .as_str()
                        .unwrap_or("REFUSED")
                        .to_string(),
                });
            }
        }
        Ok(DeliveryOutcome::Unknown)
    }

    // ---- plugins ----

    /// The plugins in each slot, a chain's policies in call order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        PluginKind::ALL
            .into_iter()
            .flat_map(|kind| {
                let chain = self.plugins.slot(kind).chain();
                (0..chain.len())
                    .map(|position| {
                        let plugin = &chain[position];
                        let limits: Limits = plugin.limits();
                        PluginInfo {
                            kind,
                            position,
                            name: plugin.metadata().name.clone(),
                            version: plugin.metadata().version.clone(),
                            source: plugin.source().to_string(),
                            embedded: matches!(plugin.source(), PluginSource::Embedded(_)),
                            sha256: plugin.sha256().to_string(),
                            deadline_ms: limits.deadline_ms,
                            memory_mib: limits.memory_mib,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Re-reads the config and reloads one slot or all. A plugin that
    /// fails to load leaves the previous one in place (audited, and the
    /// error is returned). Calls in flight finish on the old plugin.
    pub fn reload_plugins(&self, kind: Option<PluginKind>) -> Result<Vec<PluginInfo>> {
        let config = NodeConfig::load(&self.home)?;
        let kinds: Vec<PluginKind> = kind
            .map(|k| vec![k])
            .unwrap_or_else(|| PluginKind::ALL.to_vec());
        for kind in kinds {
            match load_plugin(
                &self.runtime,
                &self.home,
                &config,
                &self.identity,
                &self.clock,
                &self.live,
                kind,
            ) {
                Ok(chain) => {
                    let label = chain
                        .iter()
                        .map(|p| p.label())
                        .collect::<Vec<_>>()
                        .join(" + ");
                    let sha = chain[0].sha256().to_string();
                    self.plugins.slot(kind).replace_chain(chain)?;
                    self.record(
                        AuditEvent::new(
                            EventType::PluginReloaded,
                            format!("{kind} plugin reloaded: {label}"),
                        )
                        .with_actor(crate::audit::ACTOR_OPERATOR)
                        .with_details(json!({"kind": kind, "plugin": label, "sha256": sha})),
                    )?;
                }
                Err(err) => {
                    self.record(
                        AuditEvent::new(
                            EventType::PluginFailed,
                            format!("{kind} plugin reload failed; keeping the previous one: {err}"),
                        )
                        .with_severity(Severity::Error)
                        .with_details(json!({"kind": kind, "code": err.code()})),
                    )?;
                    return Err(CoordError::ReloadRefused { kind, error: err });
                }
            }
        }
        Ok(self.plugins())
    }

    /// The settings outside `[plugins]` whose value in the config on disk
    /// differs from the one this node runs with, as dotted keys
    /// (`transport.retry_base_ms`, `node.endpoint`, …): a plugin reload
    /// does not apply them, a daemon restart does.
    pub fn unapplied_settings(&self) -> Result<Vec<String>> {
        let on_disk = NodeConfig::load(&self.home)?;
        let strip = |c: &NodeConfig| {
            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
            if let Some(map) = v.as_object_mut() {
                map.remove("plugins");
            }
            v
        };
        let mut keys = Vec::new();
        diff_keys("", &strip(&self.config), &strip(&on_disk), &mut keys);
        Ok(keys)
    }

    // ---- timers ----

    /// Periodic work: trust and breaker evaluation for every peer, and
    /// forgetting envelope ids that left the dedupe window.
    pub fn tick(&self) -> Result<TickReport> {
        let peers = self.store.list_peers()?;
        let mut report = TickReport {
            peers: peers.len(),
            ..TickReport::default()
        };
        for peer in peers {
            let _guard = self.lock_decisions();
            if self.decay_locked(peer.node_id())?.is_some() {
                report.trust_changes += 1;
            }
            if let TrustOutcome::Changed(_) = self.evaluate_trust_locked(peer.node_id())? {
                report.trust_changes += 1;
            }
            if let BreakerOutcome::Changed(_) = self.evaluate_breaker_locked(peer.node_id())? {
                report.breaker_changes += 1;
            }
        }
        report.dedupe_pruned = self.prune_dedupe()?;
        // Keys past their window are forgotten (a batch per tick; a retry
        // after the window is a new send, as documented).
        let cutoff = self.now().saturating_sub(IDEMPOTENCY_WINDOW_MS);
        report.idempotency_pruned = self.store.idempotency_prune_older_than(cutoff, 10_000)?;
        self.flush_audit_summaries()?;
        Ok(report)
    }
}

fn clip_reason(reason: &str) -> String {
    let clean: String = reason.chars().filter(|c| !c.is_control()).collect();
    crate::plugin::truncate(&clean, MAX_REASON_BYTES).to_string()
}

/// The acknowledgement's reason when a handler accepted a message into the
/// inbox from a sender whose level does not allow `receive`.
pub const RECEIVE_DENIED_REASON: &str = "RECEIVE_DENIED: not stored; the sender's trust level does not allow receive (ATTESTED and above)";

/// The acknowledgement's reason when the outbound PII scan blocked a
/// handler's reply.
pub const REPLY_BLOCKED_REASON: &str =
    "PII_BLOCKED: the reply was blocked by this node's PII policy";

/// The local code of an outbox message dropped because its target was
/// demoted after it was queued ([`Coordinator::queued_before_demotion`]).
pub const LEVEL_LOWERED: &str = "LEVEL_LOWERED";

/// Largest query reply handed to a caller, as JSON: 1 MiB, the control
/// API's request size.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// A receipt as audit records keep it: the receipt with the key that
/// checked it, so that `audit proof` can print a self-contained proof.
fn receipt_details(receipt: &crate::receipt::Receipt, public_key: &str) -> Value {
    let mut value = serde_json::to_value(receipt).unwrap_or(Value::Null);
    value["public_key"] = Value::String(public_key.to_string());
    value
}

/// Whether `s` is a session id: 32 lowercase hex digits.
fn is_session_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Largest envelope frame accepted (the transport caps messages too).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 4096;
/// How long processed envelope ids (and their acknowledgements) are
/// remembered. Must exceed the skew window, so a replay is either
/// remembered or stale; a week, so that a sender that was offline for
/// days and retries an envelope whose acknowledgement it lost still gets
/// that acknowledgement rather than `STALE_TIMESTAMP`.
pub const DEDUPE_WINDOW_MS: u64 = 7 * 24 * HOUR_MS;
const _: () = assert!(DEDUPE_WINDOW_MS > 2 * crate::config::MAX_CLOCK_SKEW_SECS * 1000);

/// The acknowledgement a receiver sends for an envelope, committed before
/// it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The envelope acknowledged.
    pub envelope_id: String,
    /// What happened.
    pub status: AckStatus,
    /// The handler's reply payload (`replied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// A constant reason code (`rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Outcome of an inbound envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored in the inbox.
    Accepted,
    /// Answered by the handler.
    Replied,
    /// Refused by the handler or a policy.
    Rejected,
}

/// A message in the local inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Inbox sequence number.
    #[serde(default)]
    pub seq: u64,
    /// Envelope id.
    pub envelope_id: String,
    /// Sender.
    pub from: String,
    /// Message type.
    pub message_type: String,
    /// Payload after the inbound PII scan.
    pub payload: Value,
    /// Sender's timestamp.
    pub sent_at_ms: u64,
    /// When it was accepted here.
    pub received_at_ms: u64,
}

/// Why an inbound frame was refused before it was processed. Codes are
/// constant and sent back to the peer; nothing of the input is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundRefusal {
    /// Not a frame.
    #[error("MALFORMED_FRAME")]
    MalformedFrame,
    /// Over the size limit of the message type at the sender's level
    /// ([`crate::limits`]).
    #[error("MESSAGE_TOO_LARGE")]
    MessageTooLarge,
    /// The payload has more elements, strings or nesting than its type
    /// allows, or more than one PII call may carry ([`crate::limits`]).
    #[error("PAYLOAD_TOO_COMPLEX")]
    PayloadTooComplex,
    /// The sender is not a known peer.
    #[error("UNKNOWN_SENDER")]
    UnknownSender,
    /// The sender's breaker is SUSPENDED.
    #[error("PEER_SUSPENDED")]
    PeerSuspended,
    /// The sender's breaker is EVICTED.
    #[error("PEER_EVICTED")]
    PeerEvicted,
    /// The signature does not verify with the sender's key.
    #[error("BAD_SIGNATURE")]
    BadSignature,
    /// Source or target do not match the session.
    #[error("WRONG_ADDRESS")]
    WrongAddress,
    /// Timestamp outside the skew window.
    #[error("STALE_TIMESTAMP")]
    StaleTimestamp,
    /// Unknown message type.
    #[error("UNKNOWN_MESSAGE_TYPE")]
    UnknownMessageType,
    /// The sender's level does not allow this message type.
    #[error("CAPABILITY_DENIED")]
    CapabilityDenied,
    /// Hop limit exceeded.
    #[error("HOP_LIMIT_EXCEEDED")]
    HopLimitExceeded,
    /// The inbound PII scan blocked it.
    #[error("PII_BLOCKED")]
    PiiBlocked,
    /// A plugin failed; failing closed.
    #[error("PLUGIN_FAILED")]
    PluginFailed,
    /// Another copy of this envelope is being processed right now; a
    /// retry gets its acknowledgement. (Without this, a retransmission
    /// racing a slow commit could be refused `STALE_TIMESTAMP`, a final
    /// refusal, for an envelope that is in fact processed.)
    #[error("IN_PROGRESS")]
    InProgress,
    /// The sender is over its inbound envelope or byte rate
    /// (`[transport] peer_envelopes_per_sec`, `peer_bytes_per_sec`); a
    /// later retry is accepted.
    #[error("RATE_LIMITED")]
    RateLimited,
    /// The sender has as many messages or bytes waiting in this node's
    /// inbox as its quota allows (`[transport] peer_inbox_messages`,
    /// `peer_inbox_bytes`); a retry is accepted once the local agent has
    /// removed what it processed.
    #[error("INBOX_FULL")]
    InboxFull,
}

impl InboundRefusal {
    /// The constant code, as sent to the peer.
    pub fn code(&self) -> &'static str {
        match self {
            InboundRefusal::MalformedFrame => "MALFORMED_FRAME",
            InboundRefusal::MessageTooLarge => "MESSAGE_TOO_LARGE",
            InboundRefusal::UnknownSender => "UNKNOWN_SENDER",
            InboundRefusal::PeerSuspended => "PEER_SUSPENDED",
            InboundRefusal::PeerEvicted => "PEER_EVICTED",
            InboundRefusal::BadSignature => "BAD_SIGNATURE",
            InboundRefusal::WrongAddress => "WRONG_ADDRESS",
            InboundRefusal::StaleTimestamp => "STALE_TIMESTAMP",
            InboundRefusal::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            InboundRefusal::CapabilityDenied => "CAPABILITY_DENIED",
            InboundRefusal::HopLimitExceeded => "HOP_LIMIT_EXCEEDED",
            InboundRefusal::PiiBlocked => "PII_BLOCKED",
            InboundRefusal::PluginFailed => "PLUGIN_FAILED",
            InboundRefusal::InProgress => "IN_PROGRESS",
            InboundRefusal::RateLimited => "RATE_LIMITED",
            InboundRefusal::InboxFull => "INBOX_FULL",
            InboundRefusal::PayloadTooComplex => "PAYLOAD_TOO_COMPLEX",
        }
    }

    /// Whether the refusal shows the sender misbehaving (a failure counted
    /// in full against its trust), rather than this node's state, its
    /// clock, a plugin of ours, or a race. Bad signatures and PII blocks
    /// count separately, as signature failures and threats.
    pub fn is_senders_fault(&self) -> bool {
        matches!(
            self,
            InboundRefusal::MalformedFrame
                | InboundRefusal::MessageTooLarge
                | InboundRefusal::PayloadTooComplex
                | InboundRefusal::WrongAddress
                | InboundRefusal::UnknownMessageType
                | InboundRefusal::CapabilityDenied
                | InboundRefusal::HopLimitExceeded
                | InboundRefusal::RateLimited
        )
    }
}

/// Per-peer token buckets for inbound envelopes and bytes (real time: they
/// protect this machine's resources, whatever the decision clock says).
/// A bucket holds two seconds' worth, so a burst passes and a sustained
/// flood is held to the rate.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: std::sync::Mutex<HashMap<String, RateBucket>>,
}

#[derive(Debug)]
struct RateBucket {
    refilled: Instant,
    envelopes: f64,
    bytes: f64,
}

impl RateLimiter {
    /// Takes one envelope of `bytes` from `peer`'s buckets; `false` when
    /// either is empty (nothing is taken then).
    fn admit(&self, peer: &str, bytes: usize, per_sec: u64, bytes_per_sec: u64) -> bool {
        const BURST_SECS: f64 = 2.0;
        let (cap_n, cap_b) = (
            per_sec as f64 * BURST_SECS,
            bytes_per_sec as f64 * BURST_SECS,
        );
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(peer.to_string()).or_insert(RateBucket {
            refilled: now,
            envelopes: cap_n,
            bytes: cap_b,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.envelopes = (bucket.envelopes + elapsed * per_sec as f64).min(cap_n);
        bucket.bytes = (bucket.bytes + elapsed * bytes_per_sec as f64).min(cap_b);
        // One envelope larger than the whole bucket can still pass when
        // the bucket is full (the size limits bound it separately).
        let bytes = (bytes as f64).min(cap_b);
        if bucket.envelopes < 1.0 || bucket.bytes < bytes {
            return false;
        }
        bucket.envelopes -= 1.0;
        bucket.bytes -= bytes;
        true
    }
}

/// `(sender, envelope id)` of inbound envelopes being processed.
type PendingSet = Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>;

/// Marks an inbound envelope as being processed until dropped.
struct PendingInbound {
    set: PendingSet,
    key: (String, String),
}

impl PendingInbound {
    /// `None` when a copy of the envelope is already being processed.
    fn claim(set: &PendingSet, sender: &str, envelope_id: &str) -> Option<PendingInbound> {
        let key = (sender.to_string(), envelope_id.to_string());
        let fresh = set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        fresh.then(|| PendingInbound {
            set: Arc::clone(set),
            key,
        })
    }
}

impl Drop for PendingInbound {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Duplicates and refusals audited one by one per sender, kind and
/// window; the rest are counted into summaries.
pub const AUDIT_BURST: u32 = 16;
/// The window of [`AUDIT_BURST`]: one minute.
pub const AUDIT_WINDOW_MS: u64 = 60_000;

/// Per `(sender, kind)` (a refusal code, or `REPLAY`), how many records
/// were written in the current window and how many were held back. Peers
/// control how often these events happen; the audit log must not grow one
/// record per envelope they send.
#[derive(Debug, Default)]
struct AuditThrottle {
    windows: std::sync::Mutex<HashMap<(String, &'static str), AuditWindow>>,
}

#[derive(Debug, Default)]
struct AuditWindow {
    started_ms: u64,
    recorded: u32,
    /// Events past the burst, reported with the next record or a summary.
    unreported: u64,
}

impl AuditThrottle {
    /// Whether to record this event now; `Some(n)` with the number of
    /// events held back before it, `None` to count it instead.
    fn admit(&self, sender: &str, kind: &'static str, now_ms: u64) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry((sender.to_string(), kind)).or_default();
        if now_ms.saturating_sub(window.started_ms) >= AUDIT_WINDOW_MS {
            // A new window; what was held back is reported now.
            window.started_ms = now_ms;
            window.recorded = 0;
        }
        if window.recorded >= AUDIT_BURST {
            window.unreported += 1;
            return None;
        }
        window.recorded += 1;
        Some(std::mem::take(&mut window.unreported))
    }

    /// Takes the counts held back in windows that have ended (for summary
    /// records), and forgets idle windows.
    fn take_expired(&self, now_ms: u64) -> Vec<(String, &'static str, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        windows.retain(|(sender, kind), w| {
            let ended = now_ms.saturating_sub(w.started_ms) >= AUDIT_WINDOW_MS;
            if ended && w.unreported > 0 {
                out.push((sender.clone(), *kind, std::mem::take(&mut w.unreported)));
            }
            !ended
        });
        out
    }
}

/// Moves `r` to trust level `to` at `now` (with an operator's pin and a
/// new evidence period when `operator` decided it).
fn set_trust_level(r: &mut PeerRecord, to: TrustLevel, now: u64, operator: Option<OperatorLevel>) {
    if to < r.trust_level {
        r.last_demoted_ms = now;
    }
    r.trust_level = to;
    r.level_since_ms = now;
    r.metrics.signature_failures_since_level = 0;
    if to >= TrustLevel::Privileged || to < TrustLevel::Trusted {
        r.privileged_recommended = false;
    }
    if let Some(op) = operator {
        r.operator = Some(op);
        r.metrics.close_period();
    }
}

/// Counts `count` interactions of one kind into `r`'s metrics at `now`
/// (successes within the hourly `cap`).
fn note_interactions(r: &mut PeerRecord, interaction: Interaction, count: u64, now: u64, cap: u32) {
    let m = &mut r.metrics;
    match interaction {
        Interaction::Success => {
            let counted = m.earned.credit(now, count, cap);
            m.interactions += counted;
            m.successes += counted;
        }
        Interaction::Observed => {
            m.observed = m.observed.saturating_add(count);
        }
        Interaction::Failure => {
            m.interactions += count;
            m.failures += count;
        }
        Interaction::Threat => {
            m.record_threat(now);
        }
        Interaction::SignatureFailure => {
            m.signature_failures += count;
            m.signature_failures_since_level += count;
        }
    }
    let checked = m.interactions.max(m.signature_failures);
    m.integrity = if checked == 0 {
        1.0
    } else {
        1.0 - (m.signature_failures as f64 / checked as f64).clamp(0.0, 1.0)
    };
    r.last_seen_ms = now;
}

/// The sender's side of protocol §9.5: a frame the peer would refuse for
/// its size or shape (at its level in this node's view) is not sent.
fn check_outbound_size(
    message_type: &str,
    level: TrustLevel,
    frame_bytes: usize,
    shape: &crate::limits::Shape,
) -> Result<()> {
    let limit = crate::limits::inbound_limit(message_type, level);
    if frame_bytes > limit.frame_bytes {
        return Err(CoordError::MessageTooLarge {
            message_type: clip(message_type),
            bytes: frame_bytes,
            limit: limit.frame_bytes,
            level,
        });
    }
    if !shape.within(&limit.shape) {
        return Err(CoordError::ShapeTooLarge {
            message_type: clip(message_type),
            level,
        });
    }
    Ok(())
}

/// What committing a keyed send found.
enum Keyed {
    /// The entry (and its key, if any) were written.
    Fresh,
    /// The key was committed before: the key, its record, and this
    /// request's digest.
    Seen(String, crate::store::IdempotencyRecord, String),
}

/// The receipt a committed key stands for, if `digest` is its request's.
fn original_receipt(
    key: &str,
    seen: &crate::store::IdempotencyRecord,
    digest: &str,
) -> Result<SendReceipt> {
    if seen.digest != digest {
        return Err(CoordError::IdempotencyKeyReused(clip(key)));
    }
    serde_json::from_value(seen.receipt.clone()).map_err(|e| {
        CoordError::InvalidInput(format!("stored receipt of key `{}`: {e}", clip(key)))
    })
}

/// The pending commit of a queued envelope ([`Coordinator::queue_submit`]).
pub struct QueuedTicket(Queued);

enum Queued {
    /// The entry is being committed.
    Pending(crate::journal::TypedTicket<Keyed>),
    /// A retry of a committed keyed send: nothing was queued.
    Repeated(SendReceipt),
}

impl std::fmt::Debug for QueuedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedTicket").finish_non_exhaustive()
    }
}

impl QueuedTicket {
    /// Blocks until the entry and its audit record are durable. `Some`
    /// with the original receipt when the send repeated a committed
    /// idempotency key: nothing was queued, and there is nothing to
    /// deliver.
    pub fn wait(self) -> Result<Option<SendReceipt>> {
        match self.0 {
            Queued::Repeated(receipt) => Ok(Some(receipt)),
            Queued::Pending(ticket) => {
                let (outcome, _) = ticket.wait().map_err(crate::audit::journal_error)?;
                match outcome {
                    Keyed::Fresh => Ok(None),
                    Keyed::Seen(key, seen, digest) => {
                        original_receipt(&key, &seen, &digest).map(Some)
                    }
                }
            }
        }
    }
}

/// A frame whose signature a batch verification accepted, and the key it
/// was verified with.
struct Verified {
    signed: envelope::SignedEnvelope,
    key: ed25519_dalek::VerifyingKey,
}

/// An inbound envelope past its checks.
enum Processed {
    /// A retransmission of an envelope already processed: its stored
    /// acknowledgement.
    Answered(Ack),
    /// Handled; its records are queued for the next group commit.
    Committing {
        ack: Ack,
        ticket: crate::journal::TypedTicket<InboundCommit>,
        /// Held until the commit is waited for.
        _pending: PendingInbound,
    },
}

impl Coordinator {
    // ---- inbound messages ----

    /// The largest frame `peer` may send at its current trust level
    /// ([`crate::limits::max_frame_for_level`]); the smallest limit when
    /// it is not known or cannot be read.
    pub fn inbound_message_limit(&self, peer: &str) -> usize {
        let level = match self.store.get_peer(peer) {
            Ok(Some(record)) => record.trust_level,
            _ => TrustLevel::Untrusted,
        };
        crate::limits::max_frame_for_level(level)
    }

    /// Processes one inbound frame from `session_peer` (the node id the
    /// transport authenticated): verify → gates → PII (inbound) → handler
    /// plugin → durable record → acknowledgement. A retransmission of an
    /// envelope already processed gets the stored acknowledgement again
    /// and is not processed twice. Refusals are audited with their code.
    pub fn receive(
        &self,
        session_peer: &str,
        frame: &[u8],
    ) -> Result<std::result::Result<Ack, InboundRefusal>> {
        let processed = self.receive_checked(session_peer, frame, None);
        self.conclude(session_peer, processed)
    }

    /// [`Coordinator::receive`] for a burst of frames from one peer, with
    /// one answer per frame in order. Every frame is checked and handled
    /// first and all their commits are queued together, then awaited: the
    /// burst shares group commits and costs one wait instead of one per
    /// frame.
    pub fn receive_many(
        &self,
        session_peer: &str,
        frames: &[Vec<u8>],
    ) -> Vec<Result<std::result::Result<Ack, InboundRefusal>>> {
        let verified = self.verify_burst(session_peer, frames);
        let processed: Vec<_> = frames
            .iter()
            .zip(verified)
            .map(|(frame, verified)| self.receive_checked(session_peer, frame, verified))
            .collect();
        processed
            .into_iter()
            .map(|p| self.conclude(session_peer, p))
            .collect()
    }

    /// The stored acknowledgement of envelope `envelope_id` from `sender`
    /// if it was processed before; the copy is then audited as a duplicate.
    fn processed_before(&self, sender: &str, envelope_id: &str) -> Result<Option<Ack>> {
        let Some(stored) = self.store.inbound_ack(sender, envelope_id)? else {
            return Ok(None);
        };
        let Ok(ack) = serde_json::from_slice::<Ack>(&stored) else {
            return Ok(None);
        };
        self.audit_duplicate(sender, &ack);
        Ok(Some(ack))
    }

    /// Records a duplicate (`message_duplicate`, reason `REPLAY`): the
    /// first [`AUDIT_BURST`] per sender and minute one by one,
    /// the rest counted into the next record (`unreported_before`). The
    /// record rides the next commit without being waited for: answering a
    /// duplicate stays a read, and a burst of retransmissions after a
    /// reconnect does not turn into a series of `fdatasync`s.
    fn audit_duplicate(&self, sender: &str, ack: &Ack) {
        let now = self.now();
        let Some(unreported_before) = self.audit_throttle.admit(sender, "REPLAY", now) else {
            return;
        };
        let mut details = json!({
            "envelope_id": ack.envelope_id,
            "reason": "REPLAY",
            "status": ack.status,
        });
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(
            EventType::MessageDuplicate,
            format!(
                "{} from {sender} again (replay or retransmission): answered with the stored acknowledgement, not processed again",
                clip(&ack.envelope_id)
            ),
        )
        .with_peer(sender)
        .with_details(details);
        self.record_lazily(event, "cannot audit a duplicate envelope");
    }

    /// Queues `event` to ride the next commit, without waiting for it: for
    /// records of events a peer controls the rate of, which acknowledge
    /// nothing. A failure to queue is logged (`what`), not returned.
    fn record_lazily(&self, event: AuditEvent, what: &str) {
        if let Err(e) = self.audit.submit_with_hook(
            |_| Ok(((), true)),
            vec![event],
            None::<fn(&())>,
            Persist::Lazy,
        ) {
            tracing::warn!("{what}: {e}");
        }
    }

    /// Records an inbound refusal (`message_rejected`): the first
    /// [`AUDIT_BURST`] per sender, code and minute one by one, the rest
    /// counted into the next record (`unreported_before`) or a summary the
    /// timer writes when the minute ends. Not waited for: a refusal
    /// acknowledges nothing, and a flood of bad frames must not turn into
    /// a flood of `fdatasync`s.
    fn audit_refusal(&self, sender: &str, refusal: InboundRefusal) {
        let code: &'static str = refusal.code();
        let context = self.take_refusal_context(sender, code);
        let Some(unreported_before) = self.audit_throttle.admit(sender, code, self.now()) else {
            return;
        };
        let mut details = json!({"reason": code});
        let mut summary = format!("inbound envelope refused: {code}");
        if let Some(Value::Object(extra)) = context {
            if let (Some(t), Some(c), Some(level)) = (
                extra.get("message_type").and_then(Value::as_str),
                extra.get("missing_capability").and_then(Value::as_str),
                extra.get("sender_level").and_then(Value::as_str),
            ) {
                summary = format!(
                    "inbound {t} refused: CAPABILITY_DENIED ({sender} is {level} here; {t} needs {c}, which takes {})",
                    extra
                        .get("needed_level")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                );
            } else if let (Some(t), Some(e)) = (
                extra.get("message_type").and_then(Value::as_str),
                extra.get("plugin_error").and_then(Value::as_str),
            ) {
                summary = format!("inbound {t} refused: {code}: {e}");
            }
            for (key, value) in extra {
                details[key] = value;
            }
        }
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(EventType::MessageRejected, summary)
            .with_peer(sender)
            .with_details(details);
        self.record_lazily(event, "cannot audit an inbound refusal");
    }

    /// Most contexts kept per sender and code before the oldest is
    /// dropped (each is taken by the refusal's audit record right after).
    const MAX_REFUSAL_CONTEXTS: usize = 256;

    /// Remembers what the audit record of the refusal being made should
    /// say beyond its code ([`Coordinator::audit_refusal`] takes it).
    fn note_refusal_context(&self, sender: &str, refusal: InboundRefusal, context: Value) {
        let mut map = self
            .refusal_context
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let queue = map.entry((sender.to_string(), refusal.code())).or_default();
        if queue.len() >= Self::MAX_REFUSAL_CONTEXTS {
            queue.pop_front();
        }
        queue.push_back(context);
    }

    fn take_refusal_context(&self, sender: &str, code: &'static str) -> Option<Value> {
        let mut map = self
            .refusal_context
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (sender.to_string(), code);
        let queue = map.get_mut(&key)?;
        let context = queue.pop_front();
        if queue.is_empty() {
            map.remove(&key);
        }
        context
    }

    /// Records an envelope answered with a reply (`message_received`,
    /// status `replied`), throttled per sender like refusals
    /// ([`Coordinator::audit_refusal`]); not waited for.
    fn audit_reply(&self, sender: &str, envelope: &Envelope, ack: &Ack) {
        let Some(unreported_before) = self.audit_throttle.admit(sender, "REPLIED", self.now())
        else {
            return;
        };
        let mut details = json!({"envelope_id": envelope.id, "message_type": envelope.message_type, "status": ack.status, "session": envelope.session});
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(
            EventType::MessageReceived,
            format!("{} from {sender}: {:?}", envelope.message_type, ack.status),
        )
        .with_peer(sender)
        .with_details(details);
        self.record_lazily(event, "cannot audit an answered envelope");
    }

    /// Writes one summary record per sender and kind whose throttle window
    /// ended with events held back (the timer calls it).
    fn flush_audit_summaries(&self) -> Result<()> {
        for (sender, kind, count) in self.audit_throttle.take_expired(self.now()) {
            let (event_type, summary) = if kind == "REPLAY" {
                (
                    EventType::MessageDuplicate,
                    format!(
                        "{count} more duplicate envelope(s) from {sender} in the last minute, not recorded one by one"
                    ),
                )
            } else if kind == "REPLIED" {
                (
                    EventType::MessageReceived,
                    format!(
                        "{count} more envelope(s) from {sender} answered with a reply in the last minute, not recorded one by one"
                    ),
                )
            } else {
                (
                    EventType::MessageRejected,
                    format!(
                        "{count} more inbound envelope(s) from {sender} refused {kind} in the last minute, not recorded one by one"
                    ),
                )
            };
            self.record(
                AuditEvent::new(event_type, summary)
                    .with_peer(&sender)
                    .with_details(json!({"reason": kind, "summary": true, "count": count})),
            )?;
        }
        Ok(())
    }

    /// Waits for a processed envelope's commit, or audits its refusal.
    fn conclude(
        &self,
        session_peer: &str,
        processed: Result<std::result::Result<Processed, InboundRefusal>>,
    ) -> Result<std::result::Result<Ack, InboundRefusal>> {
        match processed? {
            Ok(Processed::Answered(ack)) => Ok(Ok(ack)),
            Ok(Processed::Committing { ack, ticket, .. }) => {
                let (outcome, _) = ticket.wait().map_err(crate::audit::journal_error)?;
                if let InboundCommit::Duplicate { ack: Some(stored) } = outcome {
                    // Processed meanwhile through another attempt.
                    return Ok(Ok(serde_json::from_slice(&stored).unwrap_or(ack)));
                }
                if matches!(outcome, InboundCommit::Fresh { .. })
                    && ack.status != AckStatus::Rejected
                {
                    // The peer's own initiative: it keeps the peer seen
                    // and never earns trust (only work we ask for does).
                    self.note_observed(session_peer);
                }
                Ok(Ok(ack))
            }
            // Not a refusal of the envelope: its first copy is recorded.
            Err(InboundRefusal::InProgress) => Ok(Err(InboundRefusal::InProgress)),
            Err(refusal) => {
                if refusal.is_senders_fault() {
                    self.note_failed(session_peer);
                }
                self.audit_refusal(session_peer, refusal);
                Ok(Err(refusal))
            }
        }
    }

    /// The decompressed key of `manifest` (cached), or `None` when it is
    /// not a valid Ed25519 key.
    fn peer_key(
        &self,
        manifest: &crate::identity::Manifest,
    ) -> Option<ed25519_dalek::VerifyingKey> {
        /// Enough for any federation; past it the cache starts over.
        const MAX_CACHED_KEYS: usize = 4096;
        let mut keys = self.peer_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = keys.get(&manifest.public_key) {
            return Some(*key);
        }
        // A weak (small-order) key would let batch verification accept
        // signatures that prove nothing.
        let key = manifest.verifying_key().ok().filter(|k| !k.is_weak())?;
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(manifest.public_key.clone(), key);
        Some(key)
    }

    /// Batch-verifies the signatures of a burst of frames from
    /// `session_peer`: for each frame, its parsed form and the key it was
    /// verified with, if its signature is known to be valid. All `None`
    /// when the batch does not verify (then each frame is verified alone,
    /// which finds the bad ones) or is too small to gain from it.
    fn verify_burst(&self, session_peer: &str, frames: &[Vec<u8>]) -> Vec<Option<Verified>> {
        let unverified = || frames.iter().map(|_| None).collect();
        if frames.len() < 2 {
            return unverified();
        }
        let Ok(Some(record)) = self.store.get_peer(session_peer) else {
            return unverified();
        };
        let Some(key) = self.peer_key(&record.manifest.manifest) else {
            return unverified();
        };
        let signed: Vec<Option<envelope::SignedEnvelope>> = frames
            .iter()
            .map(|frame| {
                (frame.len() <= MAX_FRAME_BYTES)
                    .then(|| envelope::SignedEnvelope::from_frame(frame).ok())
                    .flatten()
            })
            .collect();
        let batch: Vec<&envelope::SignedEnvelope> = signed.iter().flatten().collect();
        if batch.len() < 2 || !envelope::verify_batch(&batch, &key) {
            return unverified();
        }
        signed
            .into_iter()
            .map(|s| s.map(|signed| Verified { signed, key }))
            .collect()
    }

    /// Checks, scans and handles one frame and queues its commit;
    /// `verified` is the frame as [`Coordinator::verify_burst`] verified
    /// it, if it did.
    fn receive_checked(
        &self,
        session_peer: &str,
        frame: &[u8],
        verified: Option<Verified>,
    ) -> Result<std::result::Result<Processed, InboundRefusal>> {
        use InboundRefusal as R;
        if frame.len() > MAX_FRAME_BYTES {
            return Ok(Err(R::MessageTooLarge));
        }
        let t = &self.config.transport;
        if !self.inbound_rates.admit(
            session_peer,
            frame.len(),
            t.peer_envelopes_per_sec,
            t.peer_bytes_per_sec,
        ) {
            return Ok(Err(R::RateLimited));
        }
        let Some(record) = self.store.get_peer(session_peer)? else {
            return Ok(Err(R::UnknownSender));
        };
        match record.breaker.state {
            BreakerState::Suspended => return Ok(Err(R::PeerSuspended)),
            BreakerState::Evicted => return Ok(Err(R::PeerEvicted)),
            BreakerState::Active => {}
        }
        // Larger than anything the sender's level may send: refused on
        // the length alone, before the bytes are copied, hashed or parsed.
        if frame.len() > crate::limits::max_frame_for_level(record.trust_level) {
            return Ok(Err(R::MessageTooLarge));
        }
        let (signed, verified_with) = match verified {
            Some(Verified { signed, key }) => (signed, Some(key)),
            None => match envelope::SignedEnvelope::from_frame(frame) {
                Ok(signed) => (signed, None),
                Err(_) => return Ok(Err(R::MalformedFrame)),
            },
        };
        let Some(key) = self.peer_key(&record.manifest.manifest) else {
            return Ok(Err(R::UnknownSender));
        };
        // The batch counts only if the peer's key is still the one it
        // was verified with (the manifest may have changed meanwhile).
        let verdict = if verified_with == Some(key) {
            self.verified_batched.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            let verdict = signed.verify(&key);
            if verdict.is_ok() {
                self.verified_alone.fetch_add(1, Ordering::Relaxed);
            }
            verdict
        };
        if verdict.is_err() {
            let _guard = self.lock_decisions();
            self.record_interaction_locked(session_peer, Interaction::SignatureFailure)?;
            return Ok(Err(R::BadSignature));
        }
        // The envelope's fields, its payload only counted: no tree is
        // built until its size and shape fit its type and our view of the
        // sender.
        let head = match crate::limits::parse_head(&signed.bytes) {
            Ok(head) => head,
            Err(crate::limits::HeadError::TooComplex) => return Ok(Err(R::PayloadTooComplex)),
            Err(crate::limits::HeadError::Malformed) => return Ok(Err(R::MalformedFrame)),
        };
        if head.source != session_peer || head.target != self.node_id() {
            return Ok(Err(R::WrongAddress));
        }
        let limit = crate::limits::inbound_limit(&head.message_type, record.trust_level);
        if frame.len() > limit.frame_bytes {
            return Ok(Err(R::MessageTooLarge));
        }
        if !head.payload.within(&limit.shape) {
            return Ok(Err(R::PayloadTooComplex));
        }
        // The one tree of the payload; the copy of the bytes goes at once.
        let parsed = signed.parse_verified();
        drop(signed);
        let mut envelope = match parsed {
            Ok(envelope) => envelope,
            Err(_) => return Ok(Err(R::MalformedFrame)),
        };
        // The id keys the dedupe and acknowledgement tables: refuse one
        // they cannot hold before any work is done (a storage error here
        // would tell the sender to retry forever).
        if envelope.id.is_empty() || envelope.id.len() > crate::store::MAX_KEY_BYTES {
            return Ok(Err(R::MalformedFrame));
        }
        // The session field is recorded in `message_received`: only its
        // grammar (absent, null, or a session id) may reach the audit log.
        if envelope
            .session
            .as_deref()
            .is_some_and(|s| !is_session_id(s))
        {
            return Ok(Err(R::MalformedFrame));
        }
        // A retransmission (the sender lost our acknowledgement) or a
        // replay: answer as before, process nothing.
        if let Some(ack) = self.processed_before(session_peer, &envelope.id)? {
            return Ok(Ok(Processed::Answered(ack)));
        }
        let Some(pending) =
            PendingInbound::claim(&self.inbound_pending, session_peer, &envelope.id)
        else {
            return Ok(Err(R::InProgress));
        };
        // Asked again under the claim: another copy may have committed
        // (and let go of its claim) since the first look.
        if let Some(ack) = self.processed_before(session_peer, &envelope.id)? {
            return Ok(Ok(Processed::Answered(ack)));
        }
        let now = self.now();
        let skew_ms = self
            .config
            .transport
            .max_clock_skew_secs
            .saturating_mul(1000);
        if envelope.timestamp_ms.abs_diff(now) > skew_ms {
            return Ok(Err(R::StaleTimestamp));
        }
        let Some(required) = self.message_capabilities(&envelope.message_type) else {
            return Ok(Err(R::UnknownMessageType));
        };
        let receive = [Capability::Receive];
        let needs_receive = !matches!(
            envelope.message_type.as_str(),
            "ping" | "heartbeat" | "status" | "status-broadcast"
        );
        let extra: &[Capability] = if needs_receive { &receive } else { &[] };
        if let Some(&missing) = required
            .iter()
            .chain(extra)
            .find(|&&c| !trust::allowed(record.trust_level, c))
        {
            self.note_refusal_context(
                session_peer,
                R::CapabilityDenied,
                json!({
                    "message_type": envelope.message_type,
                    "missing_capability": missing.as_str(),
                    "needed_level": missing.required_level().to_string(),
                    "sender_level": record.trust_level.to_string(),
                }),
            );
            return Ok(Err(R::CapabilityDenied));
        }
        if envelope.hop_count > envelope.budget.max_hops() {
            return Ok(Err(R::HopLimitExceeded));
        }
        if envelope.message_type == crate::envelope::WITNESS_REQUEST {
            // Answered by the host from its witness chain, like a ping:
            // nothing is stored, so nothing is committed.
            drop(pending);
            let ack = self.answer_witness_request(&envelope);
            self.note_observed(session_peer);
            self.audit_reply(session_peer, &envelope, &ack);
            return Ok(Ok(Processed::Answered(ack)));
        }
        // Scanned and rewritten in place: the payload is never cloned.
        let mut payload = std::mem::take(&mut envelope.payload);
        match self.scan_payload(
            session_peer,
            record.trust_level,
            Direction::Inbound,
            &envelope.message_type,
            &mut payload,
        ) {
            Ok(_) => {}
            Err(CoordError::PiiBlocked { .. }) => return Ok(Err(R::PiiBlocked)),
            Err(CoordError::PayloadTooComplex) => return Ok(Err(R::PayloadTooComplex)),
            Err(CoordError::Plugin(err)) => {
                self.note_refusal_context(
                    session_peer,
                    R::PluginFailed,
                    json!({"message_type": envelope.message_type, "plugin_kind": "pii", "plugin_error": err.to_string()}),
                );
                return Ok(Err(R::PluginFailed));
            }
            Err(other) => return Err(other),
        }
        let view = plugin::MessageView {
            id: envelope.id.clone(),
            source: envelope.source.clone(),
            message_type: envelope.message_type.clone(),
            payload_json: payload.to_string(),
            sender_level: to_wit_level(record.trust_level),
            hop_count: envelope.hop_count,
            sent_at_ms: envelope.timestamp_ms,
        };
        let handler = self.plugins.handler.get();
        let decision = handler.handle_message(&view);
        // The payload's text copy is not needed past the handler: freed
        // before the inbox copy is made.
        drop(view);
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => {
                self.note_refusal_context(
                    session_peer,
                    R::PluginFailed,
                    json!({"message_type": envelope.message_type, "plugin_kind": "handler", "plugin_error": err.to_string()}),
                );
                self.plugin_failed(&handler, Some(session_peer), err)?;
                return Ok(Err(R::PluginFailed));
            }
        };
        // Writing into the local agent's inbox needs `receive`, whatever
        // the handler says: a peer below ATTESTED (which may still send
        // ping, status, heartbeat and status-broadcast) must not put text
        // in front of the agent.
        let decision = match decision {
            plugin::HandlerDecision::Accept
                if !trust::allowed(record.trust_level, Capability::Receive) =>
            {
                plugin::HandlerDecision::Reject(RECEIVE_DENIED_REASON.to_string())
            }
            // What a handler answers leaves this node: the outbound PII
            // scan applies to it as to any payload we send this peer.
            plugin::HandlerDecision::Reply(text) => {
                let mut reply = serde_json::from_str(&text).unwrap_or(Value::String(text));
                match self.scan_payload(
                    session_peer,
                    record.trust_level,
                    Direction::Outbound,
                    &envelope.message_type,
                    &mut reply,
                ) {
                    Ok(_) => plugin::HandlerDecision::Reply(reply.to_string()),
                    Err(CoordError::PiiBlocked { .. } | CoordError::PayloadTooComplex) => {
                        plugin::HandlerDecision::Reject(REPLY_BLOCKED_REASON.to_string())
                    }
                    Err(CoordError::Plugin(_)) => return Ok(Err(R::PluginFailed)),
                    Err(other) => return Err(other),
                }
            }
            other => other,
        };
        let (ack, inbox) = match decision {
            plugin::HandlerDecision::Accept => {
                let (messages, bytes) = self.store.inbox_usage(session_peer);
                let t = &self.config.transport;
                if messages >= t.peer_inbox_messages
                    || bytes.saturating_add(frame.len() as u64) > t.peer_inbox_bytes
                {
                    return Ok(Err(R::InboxFull));
                }
                let message = InboxMessage {
                    seq: 0,
                    envelope_id: envelope.id.clone(),
                    from: envelope.source.clone(),
                    message_type: envelope.message_type.clone(),
                    payload,
                    sent_at_ms: envelope.timestamp_ms,
                    received_at_ms: now,
                };
                let bytes = serde_json::to_vec(&message).expect("inbox messages serialise");
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Accepted,
                        reply: None,
                        reason: None,
                    },
                    Some(bytes),
                )
            }
            plugin::HandlerDecision::Reply(text) => {
                let reply = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Replied,
                        reply: Some(reply),
                        reason: None,
                    },
                    None,
                )
            }
            plugin::HandlerDecision::Reject(reason) => {
                let reason = clip_reason(&reason);
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Rejected,
                        reply: None,
                        reason: Some(reason),
                    },
                    None,
                )
            }
        };
        if ack.status == AckStatus::Replied {
            // A reply changes nothing here (handlers have no side effects:
            // their only imports are the log, the clock, config and status),
            // so answering again is as good as a stored answer: nothing is
            // committed, and `message_received` is throttled like refusals,
            // so a flood of pings or heartbeats cannot grow the state file.
            drop(pending);
            self.note_observed(session_peer);
            self.audit_reply(session_peer, &envelope, &ack);
            return Ok(Ok(Processed::Answered(ack)));
        }
        let ack_bytes = serde_json::to_vec(&ack).expect("acks serialise");
        // The dedupe entry, the inbox message, the stored acknowledgement
        // and the `message_received` record commit together (group
        // commit): after a crash, all of them are there or none.
        let record = InboundRecord::new(
            session_peer,
            &envelope.id,
            now,
            inbox.as_deref(),
            &ack_bytes,
        )?;
        let received = AuditEvent::new(EventType::MessageReceived, format!("{} from {session_peer}: {:?}", envelope.message_type, ack.status))
            .with_peer(session_peer)
            .with_details(json!({"envelope_id": envelope.id, "message_type": envelope.message_type, "status": ack.status, "session": envelope.session}));
        let ticket =
            self.audit.submit_logged_with_hook(
                move |tx| {
                    let outcome = commit_inbound_in(tx, &record)?;
                    let fresh = matches!(outcome, InboundCommit::Fresh { .. });
                    Ok((outcome, fresh))
                },
                vec![received],
                Some(self.store.inbound_commit_hook(
                    session_peer,
                    inbox.as_ref().map_or(0, |m| m.len() as u64),
                )),
                Persist::Durable,
            )?;
        Ok(Ok(Processed::Committing {
            ack,
            ticket,
            _pending: pending,
        }))
    }

    /// Removes the inbox messages numbered up to `through_seq` (the
    /// consumer has processed them); returns how many. Their receipt
    /// stays in the audit log.
    pub fn inbox_remove_through(&self, through_seq: u64) -> Result<u64> {
        Ok(self.store.inbox_remove_through(through_seq)?)
    }

    /// Messages in the local inbox after `after_seq`, oldest first.
    pub fn inbox(&self, after_seq: u64, limit: usize) -> Result<Vec<InboxMessage>> {
        self.store
            .inbox_list(after_seq, limit)?
            .into_iter()
            .map(|(seq, bytes)| {
                let mut message: InboxMessage = serde_json::from_slice(&bytes)
                    .map_err(|_| CoordError::Store(StoreError::Decode { table: "inbox" }))?;
                message.seq = seq;
                Ok(message)
            })
            .collect()
    }

    /// Forgets envelope ids (and their stored acknowledgements) older than
    /// the dedupe window, a bounded transaction at a time so that inbound
    /// commits are not held up behind one large prune. Returns how many.
    ///
    /// Safe because the window is far longer than the timestamp skew
    /// accepted: a replay that passes the skew check was first received at
    /// most twice the skew window (at most [`crate::config::MAX_CLOCK_SKEW_SECS`])
    /// earlier, so its id is still remembered.
    pub fn prune_dedupe(&self) -> Result<u64> {
        /// Ids forgotten per transaction, and transactions per call (the
        /// rest waits for the next tick, so a large backlog cannot hold
        /// up a shutdown).
        const PRUNE_BATCH: usize = 10_000;
        /// At least this many batches per call, then more while the
        /// backlog lasts and [`PRUNE_TIME_BUDGET`] allows: so pruning keeps
        /// up with a sustained inbound rate well above what one tick's
        /// fixed share would cover.
        const PRUNE_MIN_BATCHES: usize = 10;
        const PRUNE_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);
        let cutoff = self.now().saturating_sub(DEDUPE_WINDOW_MS);
        let started = Instant::now();
        let mut pruned = 0;
        for batch in 0.. {
            let n = self.store.dedupe_prune_older_than(cutoff, PRUNE_BATCH)?;
            pruned += n;
            if n < PRUNE_BATCH as u64
                || (batch + 1 >= PRUNE_MIN_BATCHES && started.elapsed() >= PRUNE_TIME_BUDGET)
            {
                break;
            }
        }
        Ok(pruned)
    }
}

/// Why a handshake partner is refused a session (constant codes, sent to
/// the peer in the handshake's `REJECT`).
pub const ADMIT_SELF: &str = "SELF_CONNECTION";
/// A known node id presented another Ed25519 key than the one on record.
pub const ADMIT_KEY_MISMATCH: &str = "KEY_MISMATCH";
/// An operator removed this peer; only an operator's `peers add` or `join`
/// brings it back.
pub const ADMIT_REMOVED: &str = "PEER_REMOVED";
/// `accept_new_peers` admitted as many strangers as it may
/// (`[transport] max_accepted_peers`).
pub const ADMIT_PEER_LIMIT: &str = "PEER_LIMIT";

/// Whether a peer that completed a handshake may have a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A known peer in good standing.
    Known,
    /// Not known yet (admitted only by an explicit join or
    /// `accept_new_peers`).
    Unknown,
    /// Refused with a constant code (`PEER_SUSPENDED`, `PEER_EVICTED`,
    /// `UNTRUSTED`, [`ADMIT_KEY_MISMATCH`], [`ADMIT_SELF`]).
    Refused(&'static str),
}

impl Coordinator {
    // ---- sessions (the federation layer calls these) ----

    /// Decides whether the node behind `manifest` (already verified by the
    /// transport) may hold a session: suspended, evicted and UNTRUSTED
    /// peers are refused, and a known node id must present the key on
    /// record. A store read only; cheap enough for the handshake path.
    pub fn admit(&self, manifest: &SignedManifest) -> Result<Admission> {
        match self.admit_for_join(manifest)? {
            Admission::Unknown if self.store.removed_at(&manifest.manifest.node_id)?.is_some() => {
                Ok(Admission::Refused(ADMIT_REMOVED))
            }
            other => Ok(other),
        }
    }

    /// [`Coordinator::admit`] for an operator's explicit `join`, which may
    /// bring back a peer an operator removed.
    pub fn admit_for_join(&self, manifest: &SignedManifest) -> Result<Admission> {
        // Evidence still pending in memory (e.g. a threat a second ago) is
        // applied first, so this step-7 verdict is the one
        // `peer_connected` reaches after SESSION: a policy refusal is a
        // REJECT, never a close right after the session was granted.
        drop(self.lock_decisions());
        let node_id = manifest.manifest.node_id.as_str();
        if node_id == self.node_id() {
            return Ok(Admission::Refused(ADMIT_SELF));
        }
        let Some(record) = self.store.get_peer(node_id)? else {
            return Ok(Admission::Unknown);
        };
        Ok(admission_of(&record, manifest))
    }

    /// Adopts `manifest` for a known peer after this node dialed the
    /// manifest's endpoint and the peer's stored certificate answered
    /// there with this manifest: the endpoint is proven, as over any
    /// session this node dials.
    pub fn adopt_manifest_proven_at_endpoint(&self, manifest: &SignedManifest) -> Result<()> {
        manifest.verify()?;
        let _guard = self.lock_decisions();
        let node_id = manifest.manifest.node_id.as_str();
        let Some(known) = self.store.get_peer(node_id)? else {
            return Err(CoordError::UnknownPeer(clip(node_id)));
        };
        if known.manifest.manifest.public_key != manifest.manifest.public_key {
            return Err(CoordError::InvalidInput(
                "the manifest is signed by another key than the one on record".into(),
            ));
        }
        self.note_presented_manifest(Some(&known), manifest, "client", self.now())
    }

    /// After a completed handshake with a known peer: notes that it was
    /// seen, and adopts the manifest it just proved its key with when it
    /// differs from the stored one (a node that moved, or changed what it
    /// offers, is redialed at its new endpoint from then on), with a
    /// `peer_manifest_updated` record in the same commit. A manifest
    /// naming another TLS certificate is adopted only when this node
    /// dialed (`role` "client") and so saw that certificate; over an
    /// inbound session the certificate is not shown, and the pin stays
    /// an operator's decision (`join --fingerprint`).
    fn note_presented_manifest(
        &self,
        known: Option<&PeerRecord>,
        presented: &SignedManifest,
        role: &str,
        now: u64,
    ) -> Result<()> {
        let node_id = presented.manifest.node_id.clone();
        let Some(stored) = known
            .map(|r| &r.manifest)
            .filter(|m| manifest_changed(m, presented))
        else {
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return Ok(());
        };
        let new_certificate = stored.manifest.tls_fingerprint != presented.manifest.tls_fingerprint;
        // A peer that stopped listening (no endpoint) aims this node's
        // dials nowhere, so that change needs no proof.
        let new_endpoint = stored.manifest.endpoint != presented.manifest.endpoint
            && presented.manifest.endpoint.is_some();
        if new_endpoint && !new_certificate && role != "client" {
            // Where this node dials is not moved by what a peer says over
            // a session it opened: the federation layer dials the new
            // endpoint and adopts the manifest only if the same
            // certificate answers there
            // ([`Coordinator::adopt_manifest_proven_at_endpoint`]).
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return self.record(
                AuditEvent::new(
                    EventType::PeerManifestUpdated,
                    format!(
                        "{node_id} presented a manifest naming a new endpoint over an inbound session; kept the stored one until the new endpoint proves the same identity"
                    ),
                )
                .with_peer(&node_id)
                .with_severity(crate::audit::Severity::Warning)
                .with_details(json!({
                    "adopted": false,
                    "endpoint": presented.manifest.endpoint,
                    "stored_endpoint": stored.manifest.endpoint,
                })),
            );
        }
        if new_certificate && role != "client" {
            self.store
                .update_peer(&node_id, move |r| r.last_seen_ms = now)?;
            return self.record(
                AuditEvent::new(
                    EventType::PeerManifestUpdated,
                    format!(
                        "{node_id} presented a manifest naming another TLS certificate over an inbound session; kept the stored one (join it with --fingerprint to accept the new one)"
                    ),
                )
                .with_peer(&node_id)
                .with_severity(crate::audit::Severity::Warning)
                .with_details(json!({
                    "adopted": false,
                    "tls_fingerprint": presented.manifest.tls_fingerprint,
                    "stored_tls_fingerprint": stored.manifest.tls_fingerprint,
                    "endpoint": presented.manifest.endpoint,
                })),
            );
        }
        let event = manifest_update_event(&stored.manifest, &presented.manifest);
        let adopted = presented.clone();
        self.store.update_peer_recorded(
            &self.audit,
            &node_id,
            move |r| {
                r.last_seen_ms = now;
                r.manifest = adopted.clone();
            },
            vec![event],
        )?;
        Ok(())
    }

    /// Records a completed handshake: an unknown peer is added as VERIFIED
    /// (its signed manifest verified, its key proven over this TLS
    /// session), then `handshake_completed` and `session_created` are
    /// audited. A peer refused by [`Coordinator::admit`] meanwhile (e.g.
    /// suspended while the handshake ran) gets the refusal code back and
    /// `handshake_rejected` is audited instead.
    pub fn peer_connected(
        &self,
        manifest: &SignedManifest,
        session_id: &str,
        role: &str,
        pin: &str,
    ) -> Result<std::result::Result<Admission, &'static str>> {
        manifest.verify()?;
        let node_id = manifest.manifest.node_id.clone();
        let _guard = self.lock_decisions();
        let known = if node_id == self.node_id() {
            None
        } else {
            self.store.get_peer(&node_id)?
        };
        let admission = match &known {
            _ if node_id == self.node_id() => Admission::Refused(ADMIT_SELF),
            Some(record) => admission_of(record, manifest),
            None => Admission::Unknown,
        };
        if let Admission::Refused(code) = admission {
            self.record(
                AuditEvent::new(
                    EventType::HandshakeRejected,
                    format!("session with {node_id} refused: {code}"),
                )
                .with_peer(&node_id)
                .with_details(json!({"reason": code, "session_id": session_id, "role": role})),
            )?;
            return Ok(Err(code));
        }
        let now = self.now();
        // The handshake policy checks the cap of strangers first; checked
        // again here, under the decision lock, so handshakes racing each
        // other cannot add up past it.
        if admission == Admission::Unknown
            && role != "client"
            && self.accepted_new_peers()? as u64 >= self.config.transport.max_accepted_peers
        {
            self.record(
                AuditEvent::new(
                    EventType::HandshakeRejected,
                    format!("session with {node_id} refused: {ADMIT_PEER_LIMIT}"),
                )
                .with_peer(&node_id)
                .with_details(
                    json!({"reason": ADMIT_PEER_LIMIT, "session_id": session_id, "role": role}),
                ),
            )?;
            return Ok(Err(ADMIT_PEER_LIMIT));
        }
        if admission == Admission::Unknown {
            let mut record = PeerRecord::new(manifest.clone(), now);
            record.trust_level = TrustLevel::Verified;
            // Dialed by this node (an operator's `join`), or a stranger
            // that connected under `accept_new_peers`.
            record.admitted = if role == "client" {
                PeerOrigin::Operator
            } else {
                PeerOrigin::AcceptNew
            };
            self.store.upsert_peer_recorded(
                &self.audit,
                &record,
                role == "client",
                vec![
                    AuditEvent::new(
                        EventType::PeerAdded,
                        format!("peer {node_id} added after a completed handshake"),
                    )
                    .with_peer(&node_id)
                    .with_actor(crate::audit::ACTOR_SYSTEM)
                    .with_details(json!({
                        "endpoint": record.manifest.manifest.endpoint,
                        "tls_fingerprint": record.manifest.manifest.tls_fingerprint,
                        "trust_level": record.trust_level,
                        "pin": pin,
                    })),
                ],
            )?;
            self.refresh_live_counts()?;
        } else {
            self.note_presented_manifest(known.as_ref(), manifest, role, now)?;
        }
        self.record(
            AuditEvent::new(
                EventType::HandshakeCompleted,
                format!("handshake with {node_id} completed ({role})"),
            )
            .with_peer(&node_id)
            .with_details(json!({"session_id": session_id, "role": role, "pin": pin})),
        )?;
        self.record(
            AuditEvent::new(
                EventType::SessionCreated,
                format!("session {session_id} with {node_id}"),
            )
            .with_peer(&node_id)
            .with_details(json!({"session_id": session_id, "role": role})),
        )?;
        Ok(Ok(admission))
    }

    /// The capabilities a peer needs here for `message_type` (sent to it
    /// or received from it): the type's own
    /// ([`envelope::required_capabilities`]), plus the consensus capability
    /// (`collaborative-task`) when `[transport] consensus_for` lists the
    /// type. `None` for an unknown type.
    fn message_capabilities(&self, message_type: &str) -> Option<Vec<Capability>> {
        let mut capabilities = envelope::required_capabilities(message_type)?.to_vec();
        let consensus = Capability::CollaborativeTask;
        if self
            .config
            .transport
            .consensus_for
            .iter()
            .any(|t| t == message_type)
            && !capabilities.contains(&consensus)
        {
            capabilities.push(consensus);
        }
        Some(capabilities)
    }

    /// The outbound pipeline of [`Coordinator::send`] (breaker gate,
    /// capability gate, budget, PII, signature) without the outbox: returns
    /// the signed frame. Queued envelopes carry no session (they may be
    /// delivered on a later one).
    pub fn prepare_envelope(&self, request: SendRequest) -> Result<(SendReceipt, Vec<u8>)> {
        self.prepare_envelope_in(request, None)
    }

    /// [`Coordinator::prepare_envelope`] for a synchronous request
    /// (`query`, `broadcast`) over the session `session_id`, which the
    /// envelope names. Nothing is queued; the caller audits the outcome.
    pub fn prepare_envelope_in(
        &self,
        request: SendRequest,
        session_id: Option<String>,
    ) -> Result<(SendReceipt, Vec<u8>)> {
        // Order matters: the breaker gate comes before any other work.
        let record = self.peer_record(&request.peer)?;
        check_breaker(&record)?;
        let capabilities = self
            .message_capabilities(&request.message_type)
            .ok_or_else(|| CoordError::UnknownMessageType(clip(&request.message_type)))?;
        check_gates(&record, &capabilities)?;
        let budget = match &request.budget {
            Some(value) => Budget::from_json_value(value)?,
            None => Budget::with_default_hops(
                crate::budget::MAX_TOKENS_CEILING,
                crate::budget::MAX_USD_CEILING,
            )?,
        };
        let budget = budget.next_hop()?;
        let mut payload = request.payload;
        let pii = self.scan_payload(
            &request.peer,
            record.trust_level,
            Direction::Outbound,
            &request.message_type,
            &mut payload,
        )?;
        // Counted on the tree before it is signed: the same count the
        // receiver makes of the frame's text (§9.5).
        let shape = crate::limits::Shape::of_value(&payload);
        let now = self.now();
        let envelope = Envelope {
            id: envelope::ordered_id(now),
            source: self.node_id().to_string(),
            target: request.peer.clone(),
            session: session_id,
            message_type: request.message_type.clone(),
            payload,
            timestamp_ms: now,
            nonce: envelope::random_id(),
            hop_count: budget.hop_count(),
            budget,
        };
        let frame = envelope.sign(&self.identity).to_frame();
        check_outbound_size(
            &request.message_type,
            record.trust_level,
            frame.len(),
            &shape,
        )?;
        Ok((
            SendReceipt {
                envelope_id: envelope.id,
                peer: request.peer,
                pii: pii.counts,
                frame_bytes: frame.len(),
            },
            frame,
        ))
    }

    /// Appends an audit record on behalf of the federation layer, waiting
    /// until it is durable.
    pub fn audit_event(&self, event: AuditEvent) -> Result<()> {
        self.record(event)
    }
}

/// The `peer_manifest_updated` record of a known peer's manifest going
/// from `old` to `new`: which fields changed (the destructuring makes a
/// new manifest field a compile error here until it is listed), with the
/// old and new endpoint and certificate fingerprint.
fn manifest_update_event(old: &Manifest, new: &Manifest) -> AuditEvent {
    let Manifest {
        node_id: _,
        public_key: _,
        endpoint,
        tls_fingerprint,
        agent_types,
        capabilities,
        protocol_version,
        wg_public_key,
        mesh_ip,
        wg_endpoint,
        timestamp_ms: _,
    } = new;
    let changed: Vec<&str> = [
        ("endpoint", *endpoint != old.endpoint),
        ("tls_fingerprint", *tls_fingerprint != old.tls_fingerprint),
        ("agent_types", *agent_types != old.agent_types),
        ("capabilities", *capabilities != old.capabilities),
        (
            "protocol_version",
            *protocol_version != old.protocol_version,
        ),
        ("wg_public_key", *wg_public_key != old.wg_public_key),
        ("mesh_ip", *mesh_ip != old.mesh_ip),
        ("wg_endpoint", *wg_endpoint != old.wg_endpoint),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect();
    AuditEvent::new(
        EventType::PeerManifestUpdated,
        format!(
            "{} presented an updated manifest ({})",
            new.node_id,
            changed.join(", ")
        ),
    )
    .with_peer(&new.node_id)
    .with_details(json!({
        "adopted": true,
        "changed": changed,
        "endpoint": endpoint,
        "previous_endpoint": old.endpoint,
        "tls_fingerprint": tls_fingerprint,
        "previous_tls_fingerprint": old.tls_fingerprint,
    }))
}

/// Whether `presented` says something other than `stored` (the signing
/// time aside: a node re-signs its manifest whenever its daemon starts).
fn manifest_changed(stored: &SignedManifest, presented: &SignedManifest) -> bool {
    let mut presented = presented.manifest.clone();
    presented.timestamp_ms = stored.manifest.timestamp_ms;
    presented != stored.manifest
}

fn admission_of(record: &PeerRecord, manifest: &SignedManifest) -> Admission {
    if record.manifest.manifest.public_key != manifest.manifest.public_key {
        return Admission::Refused(ADMIT_KEY_MISMATCH);
    }
    match record.breaker.state {
        BreakerState::Suspended => Admission::Refused(crate::transport::handshake::PEER_SUSPENDED),
        BreakerState::Evicted => Admission::Refused(crate::transport::handshake::PEER_EVICTED),
        BreakerState::Active if record.trust_level == TrustLevel::Untrusted => {
            Admission::Refused(crate::transport::handshake::UNTRUSTED)
        }
        BreakerState::Active => Admission::Known,
    }
}
