//! What callers of the coordinator send and get back: requests, receipts,
//! views of peers, trust, the breaker and the outbox, outcomes and status.

use super::*;

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

pub(super) fn outbox_view(entry: &OutboxEntry, now: u64, last_error: Option<String>) -> OutboxView {
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
pub(super) fn request_digest(request: &SendRequest) -> String {
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
