//! The audit record: what an event is (vocabulary, actors, details
//! bounds and compliance filtering), how a record is encoded, hashed and
//! chained, and how chained records are written inside a transaction. The
//! journal writes records with this; [`super::audit`] reads, verifies and
//! prunes them.
//!
//! # Records and the hash chain
//!
//! Records are numbered from 1. Each [`AuditRecord`] carries `prev_hash`,
//! the previous record's `hash` (64 `'0'`s for record 1), and `hash`, the
//! lowercase hex SHA-256 of this canonical encoding of all other fields:
//!
//! ```text
//! "agentfed-audit-v1\0"
//! u64be(seq) u64be(ts_ms)
//! lp(event_type) lp(severity) lp(category)      -- snake_case names
//! opt(peer) lp(actor) lp(summary)
//! lp(details_json)                              -- canonical JSON, below
//! lp(prev_hash)                                 -- 64 lowercase hex chars
//!
//! lp(x)        = u32be(len(x)) || x             (UTF-8 bytes)
//! opt(None)    = 0x00
//! opt(Some(x)) = 0x01 || lp(x)
//! ```
//!
//! `details_json` is the details value as canonical JSON: object keys sorted
//! by their UTF-8 bytes at every level, no whitespace, scalars as serde_json
//! writes them. That exact text is what is stored (the row keeps details as
//! a JSON string), so verification hashes the stored bytes and never
//! re-serializes a parsed value (float re-parsing is not bit-exact).
//!
//! The table row is `seq → JSON {seq, ts_ms, event_type, severity, category,
//! peer, actor, summary, details (string), prev_hash, hash}`, and `meta`
//! holds `audit_head` = `u64be(last seq) || last hash (64 ASCII hex)`,
//! written in the same transaction, so removing records from the tail is
//! detected too.
//!
//! # Compliance mode `hipaa`
//!
//! With [`ComplianceMode::Hipaa`], before hashing:
//!
//! * `summary` is replaced by the event type's name (e.g. `"pii_blocked"`);
//! * in `details`, numbers, booleans and nulls are kept; a string is kept
//!   only if its key (or, inside an array, the array's key) is an
//!   identifier key — `id`, `type`, `types`, `kind`, `category`, `level`,
//!   `from`, `to`, `state`, `status`, `action`, `actor`, `peer`, `node`,
//!   `code`, `version`, `algorithm`, or ending in `_id`, `_type`, `_code`,
//!   `_level`, `_state` — *and* the value is a token of at most 128 bytes of
//!   `[A-Za-z0-9._:-]`; every other string is dropped, as is every object
//!   key that is not such a token;
//! * when anything was dropped, `details.hipaa_stripped` is set to the
//!   number of dropped values.
//!
//! `peer` and `actor` are identifiers and kept. PII events carry only types
//! and counts in any mode (see [`AuditEvent::pii`]).
//!
//! # Bounds
//!
//! `summary` is cut to 2 KiB, `peer`/`actor` to 256 bytes (at a character
//! boundary), and details larger than 32 KiB of canonical JSON are replaced
//! by `{"details_truncated": true, "original_bytes": n}`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::WriteTransaction;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::tables::{AUDIT, META, StoreError};
use crate::breaker::Actor as BreakerActor;
use crate::model::{BreakerState, TrustLevel};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain-separation prefix of the record hash input.
pub const HASH_DOMAIN: &[u8] = b"agentfed-audit-v1\0";

/// Longest summary kept, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 2048;
/// Longest peer or actor kept, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest canonical details JSON kept, in bytes.
pub const MAX_DETAILS_BYTES: usize = 32 * 1024;
pub(crate) const HEAD_KEY: &str = "audit_head";
/// `meta` key of the pruned prefix's anchor: `u64be(last pruned seq) ||
/// its hash (64 ASCII hex)` (see [`AuditLog::prune`]).
pub(crate) const ANCHOR_KEY: &str = "audit_anchor";

// ---------------------------------------------------------------------------
// Event vocabulary
// ---------------------------------------------------------------------------

/// How serious an event is. Ordered: `Debug < Info < Warning < Error < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something refused or degraded.
    Warning,
    /// A failure.
    Error,
    /// A security-relevant failure needing attention.
    Critical,
}

/// Which part of the system an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Manifests, handshakes, peers joining and leaving.
    Identity,
    /// Trust levels, threats, signature failures.
    Trust,
    /// Sessions and messages.
    Messaging,
    /// PII detection and handling.
    Pii,
    /// Circuit breaker.
    Breaker,
    /// Spend reports and budgets.
    Spend,
    /// Federated consensus.
    Consensus,
    /// Policy plugins.
    Plugin,
    /// WireGuard mesh mutations.
    Wireguard,
    /// Operator actions.
    Operator,
    /// The daemon itself.
    System,
}

macro_rules! event_types {
    ($( $variant:ident => $name:literal, $cat:ident, $sev:ident; )*) => {
        /// Every kind of audited event (snake_case in JSON).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventType {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The snake_case name.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            /// The category events of this type belong to by default.
            pub const fn category(self) -> Category {
                match self { $(EventType::$variant => Category::$cat,)* }
            }

            /// The default severity of events of this type.
            pub const fn default_severity(self) -> Severity {
                match self { $(EventType::$variant => Severity::$sev,)* }
            }
        }
    };
}

event_types! {
    PeerDiscovered => "peer_discovered", Identity, Info;
    PeerAdded => "peer_added", Identity, Info;
    PeerRemoved => "peer_removed", Identity, Info;
    PeerExcluded => "peer_excluded", Identity, Warning;
    PeerManifestUpdated => "peer_manifest_updated", Identity, Info;
    ManifestPublished => "manifest_published", Identity, Info;
    HandshakeInitiated => "handshake_initiated", Identity, Debug;
    HandshakeCompleted => "handshake_completed", Identity, Info;
    HandshakeFailed => "handshake_failed", Identity, Warning;
    HandshakeRejected => "handshake_rejected", Identity, Warning;
    SessionCreated => "session_created", Messaging, Info;
    SessionRenewed => "session_renewed", Messaging, Debug;
    SessionExpired => "session_expired", Messaging, Info;
    SessionTerminated => "session_terminated", Messaging, Info;
    MessageSent => "message_sent", Messaging, Debug;
    MessageReceived => "message_received", Messaging, Debug;
    MessageRejected => "message_rejected", Messaging, Warning;
    MessageDuplicate => "message_duplicate", Messaging, Info;
    MessageTimeout => "message_timeout", Messaging, Warning;
    PiiDetected => "pii_detected", Pii, Info;
    PiiStripped => "pii_stripped", Pii, Info;
    PiiBlocked => "pii_blocked", Pii, Warning;
    ThreatDetected => "threat_detected", Trust, Warning;
    ThreatBlocked => "threat_blocked", Trust, Error;
    SignatureInvalid => "signature_invalid", Trust, Error;
    TrustLevelChanged => "trust_level_changed", Trust, Info;
    BreakerSuspended => "breaker_suspended", Breaker, Warning;
    BreakerEvicted => "breaker_evicted", Breaker, Error;
    BreakerReactivated => "breaker_reactivated", Breaker, Info;
    SpendReported => "spend_reported", Spend, Info;
    BudgetExceeded => "budget_exceeded", Spend, Warning;
    ConsensusProposed => "consensus_proposed", Consensus, Info;
    ConsensusVoted => "consensus_voted", Consensus, Info;
    ConsensusReached => "consensus_reached", Consensus, Info;
    ConsensusFailed => "consensus_failed", Consensus, Warning;
    PluginLoaded => "plugin_loaded", Plugin, Info;
    PluginReloaded => "plugin_reloaded", Plugin, Info;
    PluginFailed => "plugin_failed", Plugin, Error;
    WireguardMutation => "wireguard_mutation", Wireguard, Info;
    OperatorAction => "operator_action", Operator, Info;
    DaemonStarted => "daemon_started", System, Info;
    DaemonStopped => "daemon_stopped", System, Info;
    StorageRecovered => "storage_recovered", System, Warning;
    AuditPruned => "audit_pruned", Operator, Warning;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Severity {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl Category {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Identity => "identity",
            Category::Trust => "trust",
            Category::Messaging => "messaging",
            Category::Pii => "pii",
            Category::Breaker => "breaker",
            Category::Spend => "spend",
            Category::Consensus => "consensus",
            Category::Plugin => "plugin",
            Category::Wireguard => "wireguard",
            Category::Operator => "operator",
            Category::System => "system",
        }
    }
}

/// Actor string for the daemon itself.
pub const ACTOR_SYSTEM: &str = "system";
/// Actor string for the local operator (CLI / MCP operator tools).
pub const ACTOR_OPERATOR: &str = "operator";

/// Actor string for operator actions taken through the MCP bridge in the
/// agent role.
pub const ACTOR_MCP_AGENT: &str = "mcp:agent";
/// Actor string for operator actions taken through the MCP bridge in the
/// operator role.
pub const ACTOR_MCP_OPERATOR: &str = "mcp:operator";

thread_local! {
    /// Who the local operator is for events prepared on this thread (see
    /// [`as_local_actor`]).
    static LOCAL_ACTOR: std::cell::RefCell<Option<(String, Option<String>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every event of actor [`ACTOR_OPERATOR`] or
/// [`ACTOR_SYSTEM`] prepared on this thread (the events the request itself
/// causes: `f` runs synchronously on it) recorded as `actor` instead, with
/// `client` (the MCP client's declared name) added to its details as
/// `mcp_client`. Plugin and peer actors are kept. The control API
/// uses it for requests that name their actor (the MCP bridge does), so
/// the audit trail tells an agent's actions from the operator's.
pub fn as_local_actor<R>(actor: &str, client: Option<&str>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<(String, Option<String>)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            LOCAL_ACTOR.with(|slot| *slot.borrow_mut() = previous);
        }
    }
    let previous = LOCAL_ACTOR.with(|slot| {
        slot.borrow_mut()
            .replace((actor.to_string(), client.map(str::to_string)))
    });
    let _reset = Reset(previous);
    f()
}

/// The actor an operator event prepared on this thread is recorded
/// under: the one [`as_local_actor`] set, else [`ACTOR_OPERATOR`].
pub fn local_actor() -> String {
    LOCAL_ACTOR.with(|slot| {
        slot.borrow()
            .as_ref()
            .map(|(actor, _)| actor.clone())
            .unwrap_or_else(|| ACTOR_OPERATOR.to_string())
    })
}

/// Applies [`as_local_actor`]'s relabelling to `event`.
fn relabel_local_actor(mut event: AuditEvent) -> AuditEvent {
    if event.actor != ACTOR_OPERATOR && event.actor != ACTOR_SYSTEM {
        return event;
    }
    LOCAL_ACTOR.with(|slot| {
        if let Some((actor, client)) = &*slot.borrow() {
            event.actor = actor.clone();
            if let (Some(client), Value::Object(details)) = (client, &mut event.details) {
                details.insert("mcp_client".into(), Value::String(client.clone()));
            }
        }
    });
    event
}

/// Actor string for a policy plugin: `plugin:<name>`.
pub fn plugin_actor(name: &str) -> String {
    format!("plugin:{name}")
}

/// Actor string for a remote peer: `peer:<node id>`.
pub fn peer_actor(node_id: &str) -> String {
    format!("peer:{node_id}")
}

/// What happened to detected PII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiOutcome {
    /// Found (and passed or hashed).
    Detected,
    /// Redacted or hashed out of the payload.
    Stripped,
    /// The message was not sent / accepted.
    Blocked,
}

/// An event to append: everything but the sequence number, timestamp and
/// hashes, which the log assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Event type.
    pub event_type: EventType,
    /// Severity (defaults to the type's).
    pub severity: Severity,
    /// Category (defaults to the type's).
    pub category: Category,
    /// The peer concerned, if any.
    pub peer: Option<String>,
    /// Who caused it (`system`, `operator`, `plugin:<name>`, `peer:<id>`).
    pub actor: String,
    /// One human-readable line. Never put payload content or PII here.
    pub summary: String,
    /// Structured details (an object). Never put payload content or PII here.
    pub details: Value,
}

impl AuditEvent {
    /// An event with the type's default severity and category, actor
    /// `system`, no peer and empty details.
    pub fn new(event_type: EventType, summary: impl Into<String>) -> AuditEvent {
        AuditEvent {
            event_type,
            severity: event_type.default_severity(),
            category: event_type.category(),
            peer: None,
            actor: ACTOR_SYSTEM.to_string(),
            summary: summary.into(),
            details: Value::Object(Map::new()),
        }
    }

    /// Sets the peer.
    pub fn with_peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Sets the severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Sets the category.
    pub fn with_category(mut self, category: Category) -> Self {
        self.category = category;
        self
    }

    /// Sets the details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// A trust level change by a plugin or the operator, with a reason.
    pub fn trust_level_changed(
        peer: &str,
        from: TrustLevel,
        to: TrustLevel,
        actor: BreakerActor,
        reason: &str,
    ) -> AuditEvent {
        let actor_name = match actor {
            BreakerActor::Plugin => "plugin",
            BreakerActor::Operator => "operator",
        };
        let category = match actor {
            BreakerActor::Plugin => Category::Trust,
            BreakerActor::Operator => Category::Operator,
        };
        AuditEvent::new(
            EventType::TrustLevelChanged,
            format!("trust {from} -> {to} by {actor_name}: {reason}"),
        )
        .with_peer(peer)
        .with_actor(actor_name)
        .with_category(category)
        .with_details(json!({
            "from": from.as_str(),
            "to": to.as_str(),
            "actor": actor_name,
            "reason": reason,
        }))
    }

    /// A PII event carrying only types and counts — never values.
    /// `counts` pairs a PII type name (e.g. `"email"`) with how many were found.
    pub fn pii(outcome: PiiOutcome, peer: Option<&str>, counts: &[(&str, u32)]) -> AuditEvent {
        let event_type = match outcome {
            PiiOutcome::Detected => EventType::PiiDetected,
            PiiOutcome::Stripped => EventType::PiiStripped,
            PiiOutcome::Blocked => EventType::PiiBlocked,
        };
        let mut types = Map::new();
        let mut total: u64 = 0;
        for (name, n) in counts {
            total += u64::from(*n);
            // Type names come from the PII policy; anything that is not a
            // short token is counted, not recorded.
            let name = if is_token(name) { name } else { "invalid_type" };
            let entry = types.entry(name.to_string()).or_insert(json!(0));
            let prev = entry.as_u64().unwrap_or(0);
            *entry = json!(prev + u64::from(*n));
        }
        let names: Vec<&str> = types.keys().map(String::as_str).collect();
        let summary = format!("{}: {}", event_type.as_str(), names.join(", "));
        let mut event = AuditEvent::new(event_type, summary)
            .with_details(json!({ "types": types, "total": total }));
        event.peer = peer.map(str::to_string);
        event
    }

    /// A breaker state change.
    pub fn breaker(
        peer: &str,
        to: BreakerState,
        actor: BreakerActor,
        reason: &str,
        correlation_id: &str,
    ) -> AuditEvent {
        let event_type = match to {
            BreakerState::Active => EventType::BreakerReactivated,
            BreakerState::Suspended => EventType::BreakerSuspended,
            BreakerState::Evicted => EventType::BreakerEvicted,
        };
        let actor_name = match actor {
            BreakerActor::Plugin => "plugin",
            BreakerActor::Operator => "operator",
        };
        AuditEvent::new(
            event_type,
            format!("breaker {to} by {actor_name}: {reason}"),
        )
        .with_peer(peer)
        .with_actor(actor_name)
        .with_details(json!({
            "state": to.as_str(),
            "reason": reason,
            "correlation_id": correlation_id,
        }))
    }

    /// A spend report, with the values as reported (negative values kept).
    pub fn spend_reported(
        peer: &str,
        task_id: &str,
        tokens: i64,
        usd: f64,
        success: bool,
    ) -> AuditEvent {
        let usd_value = serde_json::Number::from_f64(usd).map_or(Value::Null, Value::Number);
        AuditEvent::new(
            EventType::SpendReported,
            format!("spend reported for task {task_id}"),
        )
        .with_peer(peer)
        .with_details(json!({
            "task_id": task_id,
            "tokens": tokens,
            "usd": usd_value,
            "success": success,
        }))
    }
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// A committed audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Commit time, ms since the Unix epoch; never decreases along the chain.
    pub ts_ms: u64,
    /// Event type.
    pub event_type: EventType,
    /// Severity.
    pub severity: Severity,
    /// Category.
    pub category: Category,
    /// The peer concerned.
    pub peer: Option<String>,
    /// Who caused it.
    pub actor: String,
    /// Summary line.
    pub summary: String,
    /// Structured details.
    pub details: Value,
    /// Hash of the previous record ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// SHA-256 of the canonical encoding (module docs), lowercase hex.
    pub hash: String,
}

/// A row in its borrowed form, for hashing and writing without copies.
#[derive(Serialize)]
struct RowRef<'a> {
    seq: u64,
    ts_ms: u64,
    event_type: &'a str,
    severity: &'a str,
    category: &'a str,
    peer: Option<&'a str>,
    actor: &'a str,
    summary: &'a str,
    details: &'a str,
    prev_hash: &'a str,
    hash: &'a str,
}

impl RowRef<'_> {
    /// SHA-256 of the canonical encoding (module docs), lowercase hex.
    pub(crate) fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        h.update(self.seq.to_be_bytes());
        h.update(self.ts_ms.to_be_bytes());
        for field in [self.event_type, self.severity, self.category] {
            hash_lp(&mut h, field.as_bytes());
        }
        match self.peer {
            None => h.update([0u8]),
            Some(p) => {
                h.update([1u8]);
                hash_lp(&mut h, p.as_bytes());
            }
        }
        hash_lp(&mut h, self.actor.as_bytes());
        hash_lp(&mut h, self.summary.as_bytes());
        hash_lp(&mut h, self.details.as_bytes());
        hash_lp(&mut h, self.prev_hash.as_bytes());
        hex::encode(h.finalize())
    }
}

/// The row as stored: details kept as their canonical JSON text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub(crate) seq: u64,
    pub(crate) ts_ms: u64,
    pub(crate) event_type: String,
    pub(crate) severity: String,
    pub(crate) category: String,
    pub(crate) peer: Option<String>,
    pub(crate) actor: String,
    pub(crate) summary: String,
    pub(crate) details: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

impl StoredRecord {
    fn as_row(&self) -> RowRef<'_> {
        RowRef {
            seq: self.seq,
            ts_ms: self.ts_ms,
            event_type: &self.event_type,
            severity: &self.severity,
            category: &self.category,
            peer: self.peer.as_deref(),
            actor: &self.actor,
            summary: &self.summary,
            details: &self.details,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }

    pub(crate) fn compute_hash(&self) -> String {
        self.as_row().compute_hash()
    }

    pub(crate) fn to_record(&self) -> Result<AuditRecord, AuditError> {
        let undecodable = || AuditError::Undecodable { seq: self.seq };
        Ok(AuditRecord {
            seq: self.seq,
            ts_ms: self.ts_ms,
            event_type: parse_name(&self.event_type).ok_or_else(undecodable)?,
            severity: parse_name(&self.severity).ok_or_else(undecodable)?,
            category: parse_name(&self.category).ok_or_else(undecodable)?,
            peer: self.peer.clone(),
            actor: self.actor.clone(),
            summary: self.summary.clone(),
            details: serde_json::from_str(&self.details).map_err(|_| undecodable())?,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// Parses a snake_case enum name through its serde representation.
fn parse_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

fn hash_lp(h: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(bytes);
}

/// An event after compliance filtering and bounding, ready to chain.
pub(crate) struct PreparedEvent {
    pub(crate) event_type: EventType,
    pub(crate) severity: Severity,
    pub(crate) category: Category,
    pub(crate) peer: Option<String>,
    pub(crate) actor: String,
    pub(crate) summary: String,
    pub(crate) details: Value,
    pub(crate) details_json: String,
}

impl PreparedEvent {
    pub(crate) fn into_record(self, sealed: Sealed) -> AuditRecord {
        AuditRecord {
            seq: sealed.seq,
            ts_ms: sealed.ts_ms,
            event_type: self.event_type,
            severity: self.severity,
            category: self.category,
            peer: self.peer,
            actor: self.actor,
            summary: self.summary,
            details: self.details,
            prev_hash: sealed.prev_hash,
            hash: sealed.hash,
        }
    }
}

/// What the writer assigns to an event.
pub(crate) struct Sealed {
    seq: u64,
    ts_ms: u64,
    prev_hash: String,
    hash: String,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The record's content does not match its hash: it was edited.
    HashMismatch,
    /// The row is not a record at all: it was edited.
    Undecodable,
    /// The row stored under this key claims another sequence number: records
    /// were reordered or moved.
    SeqMismatch {
        /// The seq inside the row.
        stored: u64,
    },
    /// Sequence numbers jump: records before this one were removed.
    SeqGap {
        /// The seq that should have come next.
        expected: u64,
    },
    /// `prev_hash` is not the previous record's hash: reordered or removed.
    PrevHashMismatch,
    /// The chain ends before the recorded head: records were removed from the end.
    TailRemoved {
        /// Last seq the head says was committed.
        head_seq: u64,
    },
    /// The last record differs from the recorded head.
    HeadMismatch,
    /// The pruned-prefix anchor the chain starts from is not the one the
    /// newest `audit_pruned` record names (or no such record is left):
    /// records were removed, or the anchor edited.
    AnchorMismatch {
        /// Last pruned seq the anchor claims.
        anchor_seq: u64,
    },
}

/// The first bad record found by [`super::audit::AuditLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Sequence number of the first bad record (for `TailRemoved`, the
    /// first missing one).
    pub seq: u64,
    /// What is wrong.
    pub kind: BreakKind,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.kind {
            BreakKind::HashMismatch => {
                write!(f, "record {seq}: content does not match its hash (edited)")
            }
            BreakKind::Undecodable => write!(f, "record {seq}: not a valid audit record (edited)"),
            BreakKind::SeqMismatch { stored } => write!(
                f,
                "record {seq}: row holds record {stored} (records reordered or moved)"
            ),
            BreakKind::SeqGap { expected } => write!(
                f,
                "record {seq}: expected record {expected} next (records {expected}..{} removed)",
                seq.saturating_sub(1)
            ),
            BreakKind::PrevHashMismatch => write!(
                f,
                "record {seq}: prev_hash does not match the previous record (reordered or removed)"
            ),
            BreakKind::TailRemoved { head_seq } => write!(
                f,
                "record {seq}: missing; the log head says {head_seq} records were committed (records removed from the end)"
            ),
            BreakKind::HeadMismatch => {
                write!(
                    f,
                    "record {seq}: does not match the recorded log head (edited)"
                )
            }
            BreakKind::AnchorMismatch { anchor_seq } => write!(
                f,
                "record {seq}: the chain starts after pruned record {anchor_seq}, but no audit_pruned record names that prefix (records removed or the anchor edited)"
            ),
        }
    }
}

/// Failures of the audit log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The store failed (message of the underlying error).
    #[error("audit store: {0}")]
    Store(String),
    /// A stored record does not decode.
    #[error("audit record {seq} does not decode")]
    Undecodable {
        /// Its sequence number.
        seq: u64,
    },
    /// The writer thread is gone (log closed or panicked).
    #[error("audit log is closed")]
    Closed,
    /// Another `AuditLog` is already open on this store.
    #[error("an audit log is already open on this store")]
    AlreadyOpen,
    /// `verify` found a broken chain.
    #[error("audit chain broken: {0}")]
    Tampered(ChainBreak),
    /// Writing an export failed.
    #[error("audit export: {0}")]
    Export(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        AuditError::Store(e.to_string())
    }
}

macro_rules! audit_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for AuditError {
            fn from(e: $t) -> Self {
                AuditError::Store(e.to_string())
            }
        }
    )*};
}
audit_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Compliance filtering applied before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComplianceMode {
    /// Keep summaries and details as given.
    #[default]
    Standard,
    /// Strip free text (see the module docs).
    Hipaa,
}

/// Turns events into records under one compliance mode ([`prepare`]): what
/// a caller hands the store with a state change, so the store commits the
/// change and its records in one job without depending on the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorder {
    /// The audit log's compliance mode.
    pub(crate) compliance: ComplianceMode,
}

impl Recorder {
    /// Checks and encodes `events`.
    pub(crate) fn prepare_all(
        &self,
        events: Vec<AuditEvent>,
    ) -> Result<Vec<PreparedEvent>, AuditError> {
        events
            .into_iter()
            .map(|e| prepare(e, self.compliance))
            .collect()
    }
}

/// The end of the chain: the last record's seq, hash and timestamp.
#[derive(Debug, Clone)]
pub(crate) struct ChainHead {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    pub(crate) ts_ms: u64,
}

pub(crate) fn journal_error(e: StoreError) -> AuditError {
    match e {
        StoreError::Closed => AuditError::Closed,
        other => AuditError::Store(other.to_string()),
    }
}

/// Milliseconds since the Unix epoch by the system clock (record time).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn decode_row(key: u64, bytes: &[u8]) -> Result<StoredRecord, AuditError> {
    serde_json::from_slice(bytes).map_err(|_| AuditError::Undecodable { seq: key })
}

/// Chains `events` onto `head` and writes them inside `txn`, all stamped
/// `ts_ms`; advances `head` (the caller keeps the old one until commit).
/// With `rows`, each written row is also handed back (seq, bytes), for the
/// message log.
pub(crate) fn write_chained(
    txn: &WriteTransaction,
    head: &mut ChainHead,
    events: &[PreparedEvent],
    ts_ms: u64,
    mut rows: Option<&mut Vec<(u64, Vec<u8>)>>,
) -> Result<Vec<Sealed>, StoreError> {
    let mut table = txn.open_table(AUDIT)?;
    let mut sealed = Vec::with_capacity(events.len());
    let mut buf = Vec::with_capacity(1024);
    for e in events {
        let seq = head.seq + 1;
        let mut row = RowRef {
            seq,
            ts_ms,
            event_type: e.event_type.as_str(),
            severity: e.severity.as_str(),
            category: e.category.as_str(),
            peer: e.peer.as_deref(),
            actor: &e.actor,
            summary: &e.summary,
            details: &e.details_json,
            prev_hash: &head.hash,
            hash: "",
        };
        let hash = row.compute_hash();
        row.hash = &hash;
        buf.clear();
        serde_json::to_writer(&mut buf, &row)
            .map_err(|_| StoreError::InvalidValue("audit record does not serialize"))?;
        table.insert(seq, buf.as_slice())?;
        if let Some(rows) = rows.as_mut() {
            rows.push((seq, buf.clone()));
        }
        let prev_hash = std::mem::replace(&mut head.hash, hash.clone());
        head.seq = seq;
        head.ts_ms = ts_ms;
        sealed.push(Sealed {
            seq,
            ts_ms,
            prev_hash,
            hash,
        });
    }
    Ok(sealed)
}

/// Writes the chain head to `meta` inside `txn` (module docs).
pub(crate) fn write_head(txn: &WriteTransaction, head: &ChainHead) -> Result<(), StoreError> {
    txn.open_table(META)?
        .insert(HEAD_KEY, head_bytes(head).as_slice())?;
    Ok(())
}

/// How the chain head is stored under [`HEAD_KEY`].
pub(crate) fn head_bytes(head: &ChainHead) -> Vec<u8> {
    let mut bytes = head.seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(head.hash.as_bytes());
    bytes
}

// ---------------------------------------------------------------------------
// Preparing events: bounds, compliance, canonical JSON
// ---------------------------------------------------------------------------

pub(crate) fn prepare(
    event: AuditEvent,
    mode: ComplianceMode,
) -> Result<PreparedEvent, AuditError> {
    let event = relabel_local_actor(event);
    let (summary, mut details) = match mode {
        ComplianceMode::Standard => (event.summary, event.details),
        ComplianceMode::Hipaa => (
            event.event_type.as_str().to_string(),
            hipaa_strip(event.details),
        ),
    };
    let mut details_json = canonical_json(&details)?;
    if details_json.len() > MAX_DETAILS_BYTES {
        details = json!({
            "details_truncated": true,
            "original_bytes": details_json.len(),
        });
        details_json = canonical_json(&details)?;
    }
    Ok(PreparedEvent {
        details,
        event_type: event.event_type,
        severity: event.severity,
        category: event.category,
        peer: event.peer.map(|p| truncate(p, MAX_ID_BYTES)),
        actor: truncate(event.actor, MAX_ID_BYTES),
        summary: truncate(summary, MAX_SUMMARY_BYTES),
        details_json,
    })
}

pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Canonical JSON: object keys sorted by UTF-8 bytes at every level, no
/// whitespace, scalars as serde_json writes them.
pub fn canonical_json(value: &Value) -> Result<String, AuditError> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    String::from_utf8(out).map_err(|_| AuditError::Store("canonical JSON is not UTF-8".into()))
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let scalar_err =
        |e: serde_json::Error| AuditError::Store(format!("details do not serialize: {e}"));
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).map_err(scalar_err)?;
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).map_err(scalar_err)?,
    }
    Ok(())
}

fn is_identifier_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "id",
        "type",
        "types",
        "kind",
        "category",
        "level",
        "from",
        "to",
        "state",
        "status",
        "action",
        "actor",
        "peer",
        "node",
        "code",
        "version",
        "algorithm",
    ];
    const SUFFIXES: &[&str] = &["_id", "_type", "_code", "_level", "_state"];
    EXACT.contains(&key) || SUFFIXES.iter().any(|s| key.ends_with(s))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// HIPAA filtering of details (module docs).
pub(crate) fn hipaa_strip(details: Value) -> Value {
    let mut dropped = 0u64;
    let stripped = strip_value(details, false, &mut dropped);
    let mut obj = match stripped {
        Some(Value::Object(map)) => map,
        Some(other) => {
            let mut map = Map::new();
            map.insert("value".into(), other);
            map
        }
        None => Map::new(),
    };
    if dropped > 0 {
        obj.insert("hipaa_stripped".into(), json!(dropped));
    }
    Value::Object(obj)
}

/// Returns the kept value, or `None` if dropped. `id_context` says whether
/// strings here sit under an identifier key.
fn strip_value(value: Value, id_context: bool, dropped: &mut u64) -> Option<Value> {
    match value {
        Value::String(s) => {
            if id_context && is_token(&s) {
                Some(Value::String(s))
            } else {
                *dropped += 1;
                None
            }
        }
        Value::Array(items) => Some(Value::Array(
            items
                .into_iter()
                .filter_map(|v| strip_value(v, id_context, dropped))
                .collect(),
        )),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if !is_token(&k) {
                    *dropped += 1;
                    continue;
                }
                let id = is_identifier_key(&k);
                if let Some(kept) = strip_value(v, id, dropped) {
                    out.insert(k, kept);
                }
            }
            Some(Value::Object(out))
        }
        scalar => Some(scalar),
    }
}
