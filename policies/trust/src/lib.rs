//! agentfed's default trust policy: the reference implementation's score
//! formula and promotion/demotion thresholds, as a WebAssembly component.
//!
//! The host calls it after interactions and on a timer with a
//! [`PeerSnapshot`]; it answers with a [`TrustDecision`] (action, score,
//! score components and a human reason for the audit log). The host checks
//! every decision before applying it, so this policy can only *ask*.
//!
//! # The score
//!
//! ```text
//! score = 0.4·success_rate + 0.2·uptime + 0.2·(1 − threat_penalty) + 0.2·integrity
//! success_rate   = successes / interactions        (0 when interactions = 0)
//! threat_penalty = min(1, 10 · threats / interactions)
//!                  (0 when interactions = 0 and threats = 0,
//!                   1 when interactions = 0 and threats > 0)
//! ```
//!
//! Every term is clamped to `[0, 1]` (more successes than interactions
//! count as a success rate of 1) and a NaN `uptime` or `integrity` counts as
//! 0. The score is rounded to 9 decimal places, so a peer whose terms add up
//! to exactly a threshold (say 0.70) meets it despite binary floating point.
//! The decision reports the four terms as components named `success-rate`
//! (weight 0.4), `uptime` (0.2), `threat-penalty` (0.2; its value is
//! `1 − threat_penalty`, the part that adds to the score) and `integrity`
//! (0.2).
//!
//! # The rules, in order
//!
//! 1. **Signature failure**: a peer above UNTRUSTED with
//!    `metrics.signature-failures > 0` is demoted to UNTRUSTED at once.
//!    The policy reads the counter as *failures since the peer reached its
//!    current level*: the host must reset it (or pass the difference) when
//!    the level changes, otherwise a peer the operator re-admits after a
//!    signature failure is knocked back to UNTRUSTED on every evaluation.
//!    The host enforces this rule itself as well; the policy states it so
//!    the audit log carries a reason.
//! 2. **Threats**: a peer above UNTRUSTED with
//!    `metrics.threats-last-hour ≥ 2` (`threats.per-hour`) is demoted to
//!    UNTRUSTED at once.
//! 3. **UNTRUSTED is never promoted** by this policy: only a completed
//!    handshake makes a peer VERIFIED.
//! 4. **No evidence, no move**: with `metrics.interactions = 0` the peer
//!    keeps its level. Its success rate is 0, so the score cannot earn a
//!    promotion, and with nothing observed there is no ground for a
//!    demotion either (this protects a peer the operator bootstrapped to a
//!    higher level before it has done anything). Rules 1 and 2 still apply.
//! 5. **Demotion, one level**, when the score is strictly below the level's
//!    floor: ATTESTED → VERIFIED below 0.50, TRUSTED → ATTESTED below 0.65,
//!    PRIVILEGED → TRUSTED below 0.80. VERIFIED is never demoted on score
//!    (it records a verified identity, not behaviour; as in the reference
//!    implementation, only rules 1 and 2 take it to UNTRUSTED).
//! 6. **Promotion, one level**, when the score *and* the interaction count
//!    both reach the next level's bar (`≥`): VERIFIED → ATTESTED at score
//!    0.70 and 50 interactions, ATTESTED → TRUSTED at 0.85 and 500. A
//!    TRUSTED peer at 0.95 and 5000 gets `recommend-privileged`: PRIVILEGED
//!    is never automatic, an operator confirms it. The policy never returns
//!    `promote(privileged)`.
//! 7. Otherwise `keep`, with a reason that says which bar was missed.
//!
//! Reasons state the numbers and the threshold they were compared with,
//! e.g. `score 0.72 ≥ 0.70 with 63 ≥ 50 interactions: VERIFIED → ATTESTED`.
//! Numbers are shown with two decimals, or with as many more as it takes to
//! tell a value from the threshold it missed.
//!
//! # Configuration
//!
//! Read from the node config (`[plugins.trust.config]`), every key
//! optional:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `promote.attested.score` | `0.70` | minimum score for VERIFIED → ATTESTED |
//! | `promote.attested.interactions` | `50` | minimum interactions for VERIFIED → ATTESTED |
//! | `promote.trusted.score` | `0.85` | minimum score for ATTESTED → TRUSTED |
//! | `promote.trusted.interactions` | `500` | minimum interactions for ATTESTED → TRUSTED |
//! | `promote.privileged.score` | `0.95` | minimum score to recommend PRIVILEGED |
//! | `promote.privileged.interactions` | `5000` | minimum interactions to recommend PRIVILEGED |
//! | `demote.attested.below` | `0.50` | ATTESTED → VERIFIED when the score is below this |
//! | `demote.trusted.below` | `0.65` | TRUSTED → ATTESTED when the score is below this |
//! | `demote.privileged.below` | `0.80` | PRIVILEGED → TRUSTED when the score is below this |
//! | `threats.per-hour` | `2` | threat detections within an hour that demote to UNTRUSTED |
//!
//! Scores must be finite numbers in `[0, 1]`, interaction counts
//! non-negative integers, `threats.per-hour` an integer ≥ 1, and each
//! level's floor must not exceed its own promotion score
//! (`demote.X.below ≤ promote.X.score`), or a freshly promoted peer could be
//! demoted on the next evaluation. Any invalid value makes `evaluate`
//! return `Err` naming the key (never its value): the host treats that as
//! "no transition" and audits it. Signature failures have no knob: any one
//! demotes.
//!
//! # Testing against it
//!
//! The decision logic is pure: [`decide`] takes a snapshot and
//! [`Thresholds`]; [`evaluate_with`] adds reading the thresholds from any
//! [`ConfigSource`] (a `[(&str, &str)]` slice or array, a `BTreeMap` or
//! `HashMap`, [`Defaults`]). Neither touches a host import or a clock, so
//! both run natively.
#![deny(missing_docs)]

use agentfed_guest::config;
pub use agentfed_guest::config::{ConfigSource, Defaults, HostConfig};

use agentfed_guest::InteractionMetrics;
use agentfed_guest::trust::{
    PeerSnapshot, ScoreComponent, TrustAction, TrustDecision, TrustLevel, TrustPolicy,
};

/// Weight of the success rate in the score.
pub const WEIGHT_SUCCESS_RATE: f64 = 0.4;
/// Weight of the uptime in the score.
pub const WEIGHT_UPTIME: f64 = 0.2;
/// Weight of `1 − threat_penalty` in the score.
pub const WEIGHT_THREAT: f64 = 0.2;
/// Weight of the integrity in the score.
pub const WEIGHT_INTEGRITY: f64 = 0.2;

/// Each threat costs this many interactions' worth of penalty:
/// `threat_penalty = min(1, THREAT_PENALTY_FACTOR · threats / interactions)`.
pub const THREAT_PENALTY_FACTOR: f64 = 10.0;

/// The bar for reaching one level, and the floor for staying on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rung {
    /// Minimum score to be promoted to (or, for PRIVILEGED, recommended
    /// for) this level, inclusive.
    pub promote_score: f64,
    /// Minimum interactions to be promoted to this level, inclusive.
    pub promote_interactions: u64,
    /// A peer on this level whose score is strictly below this is demoted
    /// one level.
    pub demote_below: f64,
}

/// Every threshold the policy uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// VERIFIED → ATTESTED, and ATTESTED's floor.
    pub attested: Rung,
    /// ATTESTED → TRUSTED, and TRUSTED's floor.
    pub trusted: Rung,
    /// TRUSTED → recommend PRIVILEGED, and PRIVILEGED's floor.
    pub privileged: Rung,
    /// Threat detections within the last hour that drop a peer to
    /// UNTRUSTED (at least 1).
    pub threats_per_hour: u32,
}

impl Default for Thresholds {
    /// The reference implementation's thresholds.
    fn default() -> Self {
        Thresholds {
            attested: Rung {
                promote_score: 0.70,
                promote_interactions: 50,
                demote_below: 0.50,
            },
            trusted: Rung {
                promote_score: 0.85,
                promote_interactions: 500,
                demote_below: 0.65,
            },
            privileged: Rung {
                promote_score: 0.95,
                promote_interactions: 5000,
                demote_below: 0.80,
            },
            threats_per_hour: 2,
        }
    }
}

impl Thresholds {
    /// Reads every threshold from `config`, falling back to the defaults
    /// for unset keys. An unparsable or out-of-range value is an error
    /// naming the key.
    pub fn from_config<C: ConfigSource + ?Sized>(config: &C) -> Result<Self, String> {
        let d = Thresholds::default();
        let rung = |name: &str, d: Rung| -> Result<Rung, String> {
            let score_key = format!("promote.{name}.score");
            let interactions_key = format!("promote.{name}.interactions");
            let below_key = format!("demote.{name}.below");
            let rung = Rung {
                promote_score: unit_config(config, &score_key, d.promote_score)?,
                promote_interactions: config.get_or(&interactions_key, d.promote_interactions)?,
                demote_below: unit_config(config, &below_key, d.demote_below)?,
            };
            if rung.demote_below > rung.promote_score {
                return Err(format!(
                    "config key `{below_key}` must not exceed `{score_key}`"
                ));
            }
            Ok(rung)
        };
        let threats_per_hour = config.get_or("threats.per-hour", d.threats_per_hour)?;
        if threats_per_hour == 0 {
            return Err(config::invalid("threats.per-hour"));
        }
        Ok(Thresholds {
            attested: rung("attested", d.attested)?,
            trusted: rung("trusted", d.trusted)?,
            privileged: rung("privileged", d.privileged)?,
            threats_per_hour,
        })
    }

    /// The rung for `level`: its promotion bar and its floor. `None` for
    /// UNTRUSTED and VERIFIED, which this policy never promotes to.
    pub fn rung(&self, level: TrustLevel) -> Option<&Rung> {
        match level {
            TrustLevel::Attested => Some(&self.attested),
            TrustLevel::Trusted => Some(&self.trusted),
            TrustLevel::Privileged => Some(&self.privileged),
            TrustLevel::Untrusted | TrustLevel::Verified => None,
        }
    }
}

/// A score threshold from config: a finite number in `[0, 1]`.
fn unit_config<C: ConfigSource + ?Sized>(
    config: &C,
    key: &str,
    default: f64,
) -> Result<f64, String> {
    let value: f64 = config.get_or(key, default)?;
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(config::invalid(key))
    }
}

/// A peer's score and the terms it was computed from, each in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// `successes / interactions`, 0 without interactions.
    pub success_rate: f64,
    /// Share of expected heartbeats that arrived.
    pub uptime: f64,
    /// `min(1, 10 · threats / interactions)`: the penalty itself, where 1
    /// is the worst. The score uses `1 − threat_penalty`.
    pub threat_penalty: f64,
    /// Share of envelopes that passed every integrity check.
    pub integrity: f64,
    /// The weighted sum, rounded to 9 decimal places.
    pub value: f64,
}

/// Clamps a metric into `[0, 1]`; NaN counts as 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Rounds to 9 decimal places, so sums that are exactly a decimal
/// threshold in real arithmetic compare equal to it.
fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

impl Score {
    /// Computes the reference score from the host's counters.
    pub fn of(metrics: &InteractionMetrics) -> Score {
        let interactions = metrics.interactions as f64;
        let (success_rate, threat_penalty) = if metrics.interactions == 0 {
            (0.0, if metrics.threats > 0 { 1.0 } else { 0.0 })
        } else {
            (
                unit(metrics.successes as f64 / interactions),
                unit(THREAT_PENALTY_FACTOR * metrics.threats as f64 / interactions),
            )
        };
        let uptime = unit(metrics.uptime);
        let integrity = unit(metrics.integrity);
        let raw = WEIGHT_SUCCESS_RATE * success_rate
            + WEIGHT_UPTIME * uptime
            + WEIGHT_THREAT * (1.0 - threat_penalty)
            + WEIGHT_INTEGRITY * integrity;
        Score {
            success_rate,
            uptime,
            threat_penalty,
            integrity,
            value: unit(round9(raw)),
        }
    }

    /// The terms as the WIT `score-component`s, in formula order.
    pub fn components(&self) -> Vec<ScoreComponent> {
        let c = |name: &str, value: f64, weight: f64| ScoreComponent {
            name: name.to_owned(),
            value,
            weight,
        };
        vec![
            c("success-rate", self.success_rate, WEIGHT_SUCCESS_RATE),
            c("uptime", self.uptime, WEIGHT_UPTIME),
            c("threat-penalty", 1.0 - self.threat_penalty, WEIGHT_THREAT),
            c("integrity", self.integrity, WEIGHT_INTEGRITY),
        ]
    }
}

/// The level's name as operators see it, e.g. `ATTESTED`.
pub fn level_name(level: TrustLevel) -> &'static str {
    match level {
        TrustLevel::Untrusted => "UNTRUSTED",
        TrustLevel::Verified => "VERIFIED",
        TrustLevel::Attested => "ATTESTED",
        TrustLevel::Trusted => "TRUSTED",
        TrustLevel::Privileged => "PRIVILEGED",
    }
}

/// Formats a value and the threshold it was compared with: two decimals,
/// or more when two decimals would make different numbers look equal.
fn pair(value: f64, threshold: f64) -> (String, String) {
    for p in 2..=12 {
        let (a, b) = (format!("{value:.p$}"), format!("{threshold:.p$}"));
        if (a != b) == (value != threshold) {
            return (a, b);
        }
    }
    (value.to_string(), threshold.to_string())
}

/// `"0.72 ≥ 0.70"` or `"0.69 < 0.70"`.
fn cmp_scores(value: f64, threshold: f64) -> String {
    let (a, b) = pair(value, threshold);
    let op = if value >= threshold { '≥' } else { '<' };
    format!("{a} {op} {b}")
}

/// `"63 ≥ 50 interactions"` or `"49 < 50 interactions"`.
fn cmp_interactions(value: u64, threshold: u64) -> String {
    let op = if value >= threshold { '≥' } else { '<' };
    format!("{value} {op} {threshold} interactions")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Decides what happens to `peer` under `thresholds`. Pure: no host
/// imports, no clock, same answer for the same input.
pub fn decide(peer: &PeerSnapshot, thresholds: &Thresholds) -> TrustDecision {
    let score = Score::of(&peer.metrics);
    let (action, reason) = rule(peer, &score, thresholds);
    TrustDecision {
        action,
        score: score.value,
        components: score.components(),
        reason,
    }
}

/// Reads the thresholds from `config`, then [`decide`]s. This is exactly
/// what the component does with the node config.
pub fn evaluate_with<C: ConfigSource + ?Sized>(
    peer: &PeerSnapshot,
    config: &C,
) -> Result<TrustDecision, String> {
    Ok(decide(peer, &Thresholds::from_config(config)?))
}

fn rule(peer: &PeerSnapshot, score: &Score, t: &Thresholds) -> (TrustAction, String) {
    let m = &peer.metrics;
    let level = peer.level;
    let name = level_name(level);

    if level != TrustLevel::Untrusted {
        if m.signature_failures > 0 {
            let n = plural(
                m.signature_failures,
                "signature failure",
                "signature failures",
            );
            return (
                TrustAction::Demote(TrustLevel::Untrusted),
                format!("{n} since reaching {name}: {name} → UNTRUSTED"),
            );
        }
        if m.threats_last_hour >= t.threats_per_hour {
            let n = plural(
                m.threats_last_hour.into(),
                "threat detection",
                "threat detections",
            );
            return (
                TrustAction::Demote(TrustLevel::Untrusted),
                format!(
                    "{n} within the last hour (limit {}): {name} → UNTRUSTED",
                    t.threats_per_hour
                ),
            );
        }
    }

    if level == TrustLevel::Untrusted {
        return (
            TrustAction::Keep,
            "UNTRUSTED is never promoted by policy: a completed handshake makes a peer VERIFIED"
                .to_owned(),
        );
    }
    if m.interactions == 0 {
        return (
            TrustAction::Keep,
            format!(
                "no interactions recorded yet (score {:.2}): no evidence either way, stays {name}",
                score.value
            ),
        );
    }

    let floor = t.rung(level).map(|rung| rung.demote_below);
    if let (Some(floor), Some(lower)) = (floor, level.below())
        && score.value < floor
    {
        return (
            TrustAction::Demote(lower),
            format!(
                "score {}: {name} → {}",
                cmp_scores(score.value, floor),
                level_name(lower)
            ),
        );
    }

    let Some(next) = level.above() else {
        let floor = floor.unwrap_or(0.0);
        return (
            TrustAction::Keep,
            format!(
                "score {}: stays {name}, the top of the ladder",
                cmp_scores(score.value, floor)
            ),
        );
    };
    let Some(bar) = t.rung(next) else {
        // Unreachable: every level above VERIFIED has a rung, and `next`
        // is above VERIFIED here. Keeping is the safe answer regardless.
        return (TrustAction::Keep, format!("stays {name}"));
    };
    let score_ok = score.value >= bar.promote_score;
    let interactions_ok = m.interactions >= bar.promote_interactions;
    let facts = format!(
        "score {} {} {}",
        cmp_scores(score.value, bar.promote_score),
        match (score_ok, interactions_ok) {
            (true, true) => "with",
            (false, false) => "and",
            _ => "but",
        },
        cmp_interactions(m.interactions, bar.promote_interactions),
    );
    match (score_ok && interactions_ok, next) {
        (true, TrustLevel::Privileged) => (
            TrustAction::RecommendPrivileged,
            format!("{facts}: {name} qualifies for PRIVILEGED (an operator must confirm)"),
        ),
        (true, next) => (
            TrustAction::Promote(next),
            format!("{facts}: {name} → {}", level_name(next)),
        ),
        (false, TrustLevel::Privileged) => (
            TrustAction::Keep,
            format!("{facts}: stays {name} (recommending PRIVILEGED needs both)"),
        ),
        (false, next) => (
            TrustAction::Keep,
            format!("{facts}: stays {name} ({} needs both)", level_name(next)),
        ),
    }
}

/// The default trust policy, as exported by the component.
pub struct DefaultTrustPolicy;

impl TrustPolicy for DefaultTrustPolicy {
    const DESCRIPTION: &'static str =
        "reference trust score and thresholds: promotes one level at a time, recommends PRIVILEGED";

    fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String> {
        // The node config is fixed for an instance's lifetime (a reload
        // makes new instances), so it is read and validated once; an
        // invalid value keeps failing closed on every call.
        static CONFIG: std::sync::OnceLock<Result<Thresholds, String>> = std::sync::OnceLock::new();
        let config = CONFIG.get_or_init(|| Thresholds::from_config(&HostConfig));
        Ok(decide(&peer, config.as_ref().map_err(Clone::clone)?))
    }
}

// The export only exists inside the component: its symbol names are not
// valid for a native shared library, and off wasm there is no host anyway.
#[cfg(target_arch = "wasm32")]
agentfed_guest::export_trust_policy!(DefaultTrustPolicy);

#[cfg(test)]
mod tests;
