//! Shared host-side domain types: trust levels, breaker states and the
//! per-peer records persisted by [`crate::store`].
//!
//! These types carry no behaviour with side effects; the rules that govern
//! them live in [`crate::breaker`] (legal breaker edges), [`crate::trust`]
//! (capability gates) and the plugins (score policy).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::SignedManifest;
use crate::trust_ledger::{EarnedLedger, OperatorLevel};

/// One hour in milliseconds: the window for "two threats within an hour".
pub const HOUR_MS: u64 = 60 * 60 * 1000;

/// One day in milliseconds: the spend window, and the unit of the trust
/// rules' "distinct days".
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// The local view of how far a peer is trusted. Ordered: `Untrusted` is the
/// lowest, `Privileged` the highest, so `level >= TrustLevel::Attested`
/// reads as "at least ATTESTED".
///
/// Serialized (JSON) and displayed in UPPERCASE (`"VERIFIED"`); parsed from
/// any letter case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrustLevel {
    /// Discovery only; excluded from the mesh.
    Untrusted,
    /// Valid signed manifest plus a completed handshake.
    Verified,
    /// Earned through interactions (plugin decision) or operator bootstrap.
    Attested,
    /// Earned through many good interactions.
    Trusted,
    /// Never automatic: operator-confirmed.
    Privileged,
}

impl TrustLevel {
    /// Every level, lowest first.
    pub const ALL: [TrustLevel; 5] = [
        TrustLevel::Untrusted,
        TrustLevel::Verified,
        TrustLevel::Attested,
        TrustLevel::Trusted,
        TrustLevel::Privileged,
    ];

    /// The UPPERCASE name, as displayed and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Untrusted => "UNTRUSTED",
            TrustLevel::Verified => "VERIFIED",
            TrustLevel::Attested => "ATTESTED",
            TrustLevel::Trusted => "TRUSTED",
            TrustLevel::Privileged => "PRIVILEGED",
        }
    }

    /// The level one step up, or `None` at `Privileged`.
    pub const fn next_up(self) -> Option<TrustLevel> {
        match self {
            TrustLevel::Untrusted => Some(TrustLevel::Verified),
            TrustLevel::Verified => Some(TrustLevel::Attested),
            TrustLevel::Attested => Some(TrustLevel::Trusted),
            TrustLevel::Trusted => Some(TrustLevel::Privileged),
            TrustLevel::Privileged => None,
        }
    }

    /// The level one step down, or `None` at `Untrusted`.
    pub const fn next_down(self) -> Option<TrustLevel> {
        match self {
            TrustLevel::Untrusted => None,
            TrustLevel::Verified => Some(TrustLevel::Untrusted),
            TrustLevel::Attested => Some(TrustLevel::Verified),
            TrustLevel::Trusted => Some(TrustLevel::Attested),
            TrustLevel::Privileged => Some(TrustLevel::Trusted),
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the five trust levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown trust level (expected one of UNTRUSTED, VERIFIED, ATTESTED, TRUSTED, PRIVILEGED)")]
pub struct UnknownTrustLevel;

impl FromStr for TrustLevel {
    type Err = UnknownTrustLevel;

    /// Case-insensitive: `"attested"`, `"Attested"` and `"ATTESTED"` all parse.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownTrustLevel)
    }
}

/// Circuit-breaker state of a peer. Legal edges are enforced by
/// [`crate::breaker::transition`]. Serialized and displayed in UPPERCASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BreakerState {
    /// Normal operation.
    #[default]
    Active,
    /// Sends and inbound refused with `PEER_SUSPENDED`; reactivation by operator only.
    Suspended,
    /// Terminal until an operator reactivates; refused with `PEER_EVICTED`.
    Evicted,
}

impl BreakerState {
    /// The UPPERCASE name, as displayed and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Active => "ACTIVE",
            BreakerState::Suspended => "SUSPENDED",
            BreakerState::Evicted => "EVICTED",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a breaker state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown breaker state (expected one of ACTIVE, SUSPENDED, EVICTED)")]
pub struct UnknownBreakerState;

impl FromStr for BreakerState {
    type Err = UnknownBreakerState;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            BreakerState::Active,
            BreakerState::Suspended,
            BreakerState::Evicted,
        ]
        .into_iter()
        .find(|state| state.as_str().eq_ignore_ascii_case(s))
        .ok_or(UnknownBreakerState)
    }
}

/// Counters and health inputs the trust policy scores a peer on.
///
/// The counters the policy scores (`interactions`, `successes`,
/// `failures`, `threats`, `signature_failures`) cover the current *evidence
/// period*: an operator's `trust set` closes the period, adding them to
/// [`InteractionMetrics::archived`] and starting again from zero, so
/// evidence older than an operator's decision never undoes it.
///
/// New fields must carry `#[serde(default)]` so older stored records still
/// decode.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InteractionMetrics {
    /// Interactions with an outcome that count: counted successes plus
    /// every failure.
    pub interactions: u64,
    /// Successes counted toward promotion: work this node asked of the
    /// peer and the peer fulfilled, within the hourly cap
    /// ([`crate::trust_ledger`]).
    pub successes: u64,
    /// Failures, counted in full: our requests that timed out, work
    /// reported failed, envelopes from the peer refused for its own fault.
    pub failures: u64,
    /// Threat detections attributed to this peer in this period.
    pub threats: u64,
    /// Envelopes from this peer whose signature did not verify, in this
    /// period.
    pub signature_failures: u64,
    /// Observed availability in `[0, 1]`.
    pub uptime: f64,
    /// Integrity score in `[0, 1]` (e.g. share of envelopes that verified cleanly).
    pub integrity: f64,
    /// Timestamps (ms since the Unix epoch) of threat detections within the
    /// last hour; pruned by [`InteractionMetrics::record_threat`].
    pub recent_threats_ms: Vec<u64>,
    /// Signature failures since the peer reached its current trust level
    /// (reset on every level change), which is what trust policies see, so
    /// an operator's re-admission is not undone by an old failure.
    #[serde(default)]
    pub signature_failures_since_level: u64,
    /// What the peer did on its own initiative and we accepted (envelopes
    /// it sent, heartbeats it answered): it keeps the peer seen, and never
    /// earns trust.
    pub observed: u64,
    /// When counted successes were earned: the hourly cap's state and the
    /// per-day history the promotion rules read.
    pub earned: EarnedLedger,
    /// The counters of earlier evidence periods, closed by operator
    /// decisions.
    pub archived: ArchivedEvidence,
}

/// Totals of evidence periods an operator closed (kept for people; no rule
/// reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchivedEvidence {
    /// Interactions.
    pub interactions: u64,
    /// Counted successes.
    pub successes: u64,
    /// Failures.
    pub failures: u64,
    /// Threat detections.
    pub threats: u64,
    /// Signature failures.
    pub signature_failures: u64,
}

impl InteractionMetrics {
    /// Records one threat at `now_ms`, dropping remembered threats older
    /// than one hour, and returns how many threats fall within the last hour
    /// (including this one).
    pub fn record_threat(&mut self, now_ms: u64) -> usize {
        self.threats = self.threats.saturating_add(1);
        self.recent_threats_ms.push(now_ms);
        self.prune_threats(now_ms);
        self.recent_threats_ms.len()
    }

    /// Drops remembered threat timestamps older than one hour before `now_ms`.
    pub fn prune_threats(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(HOUR_MS);
        self.recent_threats_ms.retain(|&t| t >= cutoff);
    }

    /// Closes the current evidence period (an operator decided): its
    /// counters move to [`InteractionMetrics::archived`] and restart from
    /// zero; threats within the last hour are forgotten and integrity
    /// starts again at 1. Uptime, what was observed and the earned-day
    /// history stay (the promotion rules only read days since the level
    /// was reached, which the decision resets).
    pub fn close_period(&mut self) {
        let a = &mut self.archived;
        a.interactions = a.interactions.saturating_add(self.interactions);
        a.successes = a.successes.saturating_add(self.successes);
        a.failures = a.failures.saturating_add(self.failures);
        a.threats = a.threats.saturating_add(self.threats);
        a.signature_failures = a.signature_failures.saturating_add(self.signature_failures);
        self.interactions = 0;
        self.successes = 0;
        self.failures = 0;
        self.threats = 0;
        self.signature_failures = 0;
        self.signature_failures_since_level = 0;
        self.recent_threats_ms.clear();
        self.integrity = 1.0;
    }

    /// Success ratio in `[0, 1]`; `0` when there were no interactions.
    pub fn success_rate(&self) -> f64 {
        if self.interactions == 0 {
            0.0
        } else {
            (self.successes as f64 / self.interactions as f64).clamp(0.0, 1.0)
        }
    }
}

/// The four weighted inputs of the default trust score, as last computed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoreComponents {
    /// `successes / interactions`.
    pub success_rate: f64,
    /// Availability in `[0, 1]`.
    pub uptime: f64,
    /// `min(1, 10 * threats / messages)`.
    pub threat_penalty: f64,
    /// Integrity in `[0, 1]`.
    pub integrity: f64,
}

/// Breaker state of one peer plus why and since when.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerInfo {
    /// Current state.
    pub state: BreakerState,
    /// Why the state was entered (policy reason or operator text).
    pub reason: Option<String>,
    /// Correlation id linking the change to audit records.
    pub correlation_id: Option<String>,
    /// When the current state was entered (ms since the Unix epoch).
    pub since_ms: u64,
    /// Failures reported while SUSPENDED (drives eviction).
    pub failures_since_suspend: u64,
    /// Spend windows count only samples reported from this instant on (ms
    /// since the Unix epoch): the operator's last reactivation, so spend
    /// before it cannot trip the breaker again. 0: every sample counts.
    pub counts_from_ms: u64,
    /// The first spend sample (by the peer's report sequence) that counts;
    /// what [`BreakerInfo::counts_from_ms`] means, exactly.
    pub counts_from_seq: u64,
}

/// Everything this node remembers about one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's signed manifest as last verified.
    pub manifest: SignedManifest,
    /// Local trust level.
    pub trust_level: TrustLevel,
    /// When `trust_level` was last changed (ms since the Unix epoch).
    #[serde(default)]
    pub level_since_ms: u64,
    /// Last computed trust score in `[0, 1]`.
    #[serde(default)]
    pub score: f64,
    /// Inputs of `score`.
    #[serde(default)]
    pub score_components: ScoreComponents,
    /// Interaction counters.
    #[serde(default)]
    pub metrics: InteractionMetrics,
    /// Breaker state.
    #[serde(default)]
    pub breaker: BreakerInfo,
    /// Last time anything was heard from the peer (ms since the Unix epoch).
    #[serde(default)]
    pub last_seen_ms: u64,
    /// When the peer was first added (ms since the Unix epoch).
    #[serde(default)]
    pub added_ms: u64,
    /// The trust plugin found the peer qualifies for PRIVILEGED; waiting
    /// for an operator to confirm with `trust set PEER PRIVILEGED`.
    #[serde(default)]
    pub privileged_recommended: bool,
    /// The level an operator last set, and whether it is pinned.
    #[serde(default)]
    pub operator: Option<OperatorLevel>,
    /// How the peer became known: by an operator (`peers add`, `join`), or
    /// by connecting to this node under `accept_new_peers`. Only the first
    /// kind is redialed; the second is capped in number.
    #[serde(default)]
    pub admitted: PeerOrigin,
    /// When the peer's level last went down (0: never). Outbox messages
    /// queued before it were gated and scanned for the higher level and
    /// are dropped instead of delivered.
    #[serde(default)]
    pub last_demoted_ms: u64,
}

/// How a peer became known to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOrigin {
    /// An operator added or joined it (every peer known before this field
    /// existed, too).
    #[default]
    Operator,
    /// It connected to this node and was admitted by `accept_new_peers`.
    AcceptNew,
}

impl PeerRecord {
    /// A fresh record for a newly verified manifest: UNTRUSTED, ACTIVE, all
    /// counters zero, timestamps at `now_ms`.
    pub fn new(manifest: SignedManifest, now_ms: u64) -> Self {
        PeerRecord {
            manifest,
            trust_level: TrustLevel::Untrusted,
            level_since_ms: now_ms,
            score: 0.0,
            score_components: ScoreComponents::default(),
            // No evidence against a new peer yet: uptime and integrity start
            // at 1 and are lowered by missed heartbeats and bad envelopes.
            metrics: InteractionMetrics {
                uptime: 1.0,
                integrity: 1.0,
                ..InteractionMetrics::default()
            },
            breaker: BreakerInfo {
                since_ms: now_ms,
                ..BreakerInfo::default()
            },
            last_seen_ms: now_ms,
            added_ms: now_ms,
            privileged_recommended: false,
            operator: None,
            admitted: PeerOrigin::Operator,
            last_demoted_ms: 0,
        }
    }

    /// The peer's node id (from its manifest).
    pub fn node_id(&self) -> &str {
        self.manifest.manifest.node_id.as_str()
    }
}

/// One spend report for a peer, as reported (negative values are kept here
/// and clamped only when aggregated for the breaker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendSample {
    /// When the work completed (ms since the Unix epoch).
    pub ts_ms: u64,
    /// The integrator's task id.
    pub task_id: String,
    /// Tokens as reported (may be negative; clamped to 0 in aggregates).
    pub tokens: i64,
    /// USD as reported (finite; may be negative; clamped to 0 in aggregates).
    pub usd: f64,
    /// Whether the work succeeded.
    pub success: bool,
}

/// Aggregate of a peer's spend samples within a time window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SpendWindow {
    /// Samples in the window.
    pub samples: u64,
    /// Samples with `success == false`.
    pub failures: u64,
    /// Sum of tokens, each sample clamped to `>= 0`.
    pub tokens: u64,
    /// Sum of USD, each sample clamped to `>= 0`.
    pub usd: f64,
}

impl SpendWindow {
    /// `failures / samples`, `0` for an empty window.
    pub fn failure_ratio(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.failures as f64 / self.samples as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_level_parses_any_case_and_displays_uppercase() {
        for level in TrustLevel::ALL {
            let lower = level.as_str().to_ascii_lowercase();
            assert_eq!(lower.parse::<TrustLevel>(), Ok(level));
            assert_eq!(level.as_str().parse::<TrustLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.as_str());
        }
        assert_eq!("Attested".parse::<TrustLevel>(), Ok(TrustLevel::Attested));
        assert!("root".parse::<TrustLevel>().is_err());
        assert!("".parse::<TrustLevel>().is_err());
    }

    #[test]
    fn trust_level_is_ordered_and_steps() {
        assert!(TrustLevel::Untrusted < TrustLevel::Verified);
        assert!(TrustLevel::Trusted < TrustLevel::Privileged);
        assert_eq!(TrustLevel::Untrusted.next_down(), None);
        assert_eq!(TrustLevel::Privileged.next_up(), None);
        assert_eq!(TrustLevel::Verified.next_up(), Some(TrustLevel::Attested));
        assert_eq!(
            TrustLevel::Verified.next_down(),
            Some(TrustLevel::Untrusted)
        );
    }

    #[test]
    fn trust_level_and_breaker_serialize_uppercase() {
        assert_eq!(
            serde_json::to_string(&TrustLevel::Privileged).ok(),
            Some("\"PRIVILEGED\"".to_string())
        );
        assert_eq!(
            serde_json::to_string(&BreakerState::Suspended).ok(),
            Some("\"SUSPENDED\"".to_string())
        );
        assert_eq!("evicted".parse::<BreakerState>(), Ok(BreakerState::Evicted));
        assert!("dead".parse::<BreakerState>().is_err());
    }

    #[test]
    fn threats_older_than_an_hour_are_pruned() {
        let mut m = InteractionMetrics::default();
        assert_eq!(m.record_threat(1_000), 1);
        assert_eq!(m.record_threat(1_000 + HOUR_MS), 2);
        assert_eq!(m.record_threat(2_000 + HOUR_MS), 2);
        assert_eq!(m.threats, 3);
    }

    #[test]
    fn success_rate_and_failure_ratio_handle_zero() {
        let m = InteractionMetrics::default();
        assert_eq!(m.success_rate(), 0.0);
        assert_eq!(SpendWindow::default().failure_ratio(), 0.0);
        let w = SpendWindow {
            samples: 4,
            failures: 1,
            ..SpendWindow::default()
        };
        assert_eq!(w.failure_ratio(), 0.25);
    }
}
