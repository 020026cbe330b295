//! [`CoordError`]: why a coordinator call failed, with the constant code
//! each failure carries to the control API, MCP and the CLI's exit code.

use super::*;

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
