//! An allow-list trust policy for agentfed.
//!
//! Our lab only wants machines it knows to climb the trust ladder. This
//! policy promotes a peer only if its node id is on the allow-list in the
//! node config, and then only against a simple bar; everyone else stays
//! where the handshake (or the operator) put them. Any sign of trouble sends
//! a peer, listed or not, straight to UNTRUSTED.
//!
//! # Rules, in order
//!
//! 1. **Any threat** → `demote(untrusted)`, for a peer above UNTRUSTED with
//!    `threats > 0`, `threats-last-hour > 0` or `signature-failures > 0`.
//!    The counters are taken as the host passes them: if it keeps them for
//!    the peer's whole life, a peer with one recorded threat is demoted
//!    again whenever it is re-admitted, until the operator clears its
//!    history. That is deliberate for us.
//! 2. **Not on the allow-list** → `keep`.
//! 3. **UNTRUSTED** → `keep`: only a completed handshake makes a peer
//!    VERIFIED.
//! 4. **TRUSTED or PRIVILEGED** → `keep`: this policy never goes past
//!    TRUSTED and never recommends PRIVILEGED (a PRIVILEGED peer was set by
//!    an operator and is left alone).
//! 5. **VERIFIED or ATTESTED** → `promote` one level when the peer has at
//!    least `min-interactions` interactions (default 20) and a success rate
//!    `successes / interactions` of at least `min-success-rate` (default
//!    0.9); otherwise `keep`.
//!
//! The reported score is the success rate (0 without interactions, capped
//! at 1), as the single component `success-rate` with weight 1.
//!
//! # Configuration (`[plugins.trust.config]`)
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `allow` | empty (nobody) | comma-separated node ids; an entry ending in `*` matches every id that starts with what comes before it (`lab-*`) |
//! | `min-interactions` | `20` | interactions needed for a promotion (integer ≥ 0) |
//! | `min-success-rate` | `0.9` | success rate needed for a promotion (number in `[0, 1]`) |
//!
//! Matching is exact and case-sensitive. Spaces around entries and empty
//! entries are ignored. An entry with a space or control character inside,
//! a `*` anywhere but at the end, or a bare `*` (that would allow
//! everyone: use the default policy instead) is invalid. Any invalid value
//! makes `evaluate` return `Err`, which the host treats as "no transition"
//! and audits.
//!
//! # Testing
//!
//! [`decide`] is a pure function of the snapshot and a [`Settings`];
//! [`Settings::from_config`] reads settings from anything implementing
//! [`Config`] (a slice of pairs in tests, the host's config in the
//! component).
#![deny(missing_docs)]

use agentfed_guest::trust::{
    PeerSnapshot, ScoreComponent, TrustAction, TrustDecision, TrustLevel, TrustPolicy,
};

/// Where settings come from: the node config in the component, anything in
/// tests.
pub trait Config {
    /// The raw value for `key`, if the operator set one.
    fn get(&self, key: &str) -> Option<String>;
}

/// The node config, through the host. Only works inside the component.
pub struct HostConfig;

impl Config for HostConfig {
    fn get(&self, key: &str) -> Option<String> {
        agentfed_guest::host::config(key)
    }
}

impl Config for [(&str, &str)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl<const N: usize> Config for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        Config::get(self.as_slice(), key)
    }
}

fn invalid(key: &str) -> String {
    format!("config key `{key}` has an invalid value")
}

/// Parses `key` like `agentfed_guest::host::config_or` does: trimmed,
/// default when unset, an error naming the key when it does not parse.
fn parse_or<C: Config + ?Sized, T: std::str::FromStr>(
    config: &C,
    key: &str,
    default: T,
) -> Result<T, String> {
    match config.get(key) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| invalid(key)),
    }
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// This exact node id.
    Exact(String),
    /// Every node id starting with this (written `prefix*`).
    Prefix(String),
}

impl Pattern {
    /// Whether `node_id` matches.
    pub fn matches(&self, node_id: &str) -> bool {
        match self {
            Pattern::Exact(id) => node_id == id,
            Pattern::Prefix(prefix) => node_id.starts_with(prefix.as_str()),
        }
    }
}

/// The node ids allowed to be promoted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Pattern>);

impl AllowList {
    /// Parses a comma-separated list such as `lab-*,alice`.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut patterns = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("config key `allow`: entry {} {why}", i + 1);
            if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("contains a space or control character"));
            }
            let pattern = match entry.strip_suffix('*') {
                Some("") => return Err(bad("is a bare `*`, which would allow everyone")),
                Some(prefix) => Pattern::Prefix(prefix.to_owned()),
                None => Pattern::Exact(entry.to_owned()),
            };
            if matches!(&pattern, Pattern::Prefix(p) | Pattern::Exact(p) if p.contains('*')) {
                return Err(bad("has a `*` that is not at the end"));
            }
            patterns.push(pattern);
        }
        Ok(AllowList(patterns))
    }

    /// Whether `node_id` is on the list.
    pub fn allows(&self, node_id: &str) -> bool {
        self.0.iter().any(|p| p.matches(node_id))
    }
}

/// Everything the policy can be told.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Who may be promoted.
    pub allow: AllowList,
    /// Interactions needed for a promotion.
    pub min_interactions: u64,
    /// Success rate needed for a promotion, in `[0, 1]`.
    pub min_success_rate: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow: AllowList::default(),
            min_interactions: 20,
            min_success_rate: 0.9,
        }
    }
}

impl Settings {
    /// Reads the settings, with defaults for what is unset.
    pub fn from_config<C: Config + ?Sized>(config: &C) -> Result<Settings, String> {
        let d = Settings::default();
        let allow = match config.get("allow") {
            Some(text) => AllowList::parse(&text)?,
            None => d.allow,
        };
        let min_interactions = parse_or(config, "min-interactions", d.min_interactions)?;
        let min_success_rate: f64 = parse_or(config, "min-success-rate", d.min_success_rate)?;
        if !(0.0..=1.0).contains(&min_success_rate) {
            // Also catches NaN.
            return Err(invalid("min-success-rate"));
        }
        Ok(Settings {
            allow,
            min_interactions,
            min_success_rate,
        })
    }
}

fn name(level: TrustLevel) -> &'static str {
    match level {
        TrustLevel::Untrusted => "UNTRUSTED",
        TrustLevel::Verified => "VERIFIED",
        TrustLevel::Attested => "ATTESTED",
        TrustLevel::Trusted => "TRUSTED",
        TrustLevel::Privileged => "PRIVILEGED",
    }
}

/// The success rate, 0 without interactions, at most 1.
pub fn success_rate(peer: &PeerSnapshot) -> f64 {
    let m = &peer.metrics;
    if m.interactions == 0 {
        0.0
    } else {
        (m.successes as f64 / m.interactions as f64).min(1.0)
    }
}

/// Decides what happens to `peer`. Pure: no host calls.
pub fn decide(peer: &PeerSnapshot, settings: &Settings) -> TrustDecision {
    let rate = success_rate(peer);
    let (action, reason) = rule(peer, rate, settings);
    TrustDecision {
        action,
        score: rate,
        components: vec![ScoreComponent {
            name: "success-rate".into(),
            value: rate,
            weight: 1.0,
        }],
        reason,
    }
}

fn rule(peer: &PeerSnapshot, rate: f64, settings: &Settings) -> (TrustAction, String) {
    let m = &peer.metrics;
    let level = peer.level;
    let here = name(level);

    if level != TrustLevel::Untrusted
        && (m.threats > 0 || m.threats_last_hour > 0 || m.signature_failures > 0)
    {
        return (
            TrustAction::Demote(TrustLevel::Untrusted),
            format!(
                "threat seen ({} threats, {} in the last hour, {} signature failures): {here} → UNTRUSTED",
                m.threats, m.threats_last_hour, m.signature_failures
            ),
        );
    }
    if !settings.allow.allows(&peer.node_id) {
        return (
            TrustAction::Keep,
            format!("not on the allow-list: stays {here}"),
        );
    }
    let next = match level {
        TrustLevel::Untrusted => {
            return (
                TrustAction::Keep,
                "allow-listed, but only a handshake makes a peer VERIFIED: stays UNTRUSTED".into(),
            );
        }
        TrustLevel::Trusted | TrustLevel::Privileged => {
            return (
                TrustAction::Keep,
                format!("allow-listed; this policy promotes no further than TRUSTED: stays {here}"),
            );
        }
        TrustLevel::Verified => TrustLevel::Attested,
        TrustLevel::Attested => TrustLevel::Trusted,
    };
    let enough = m.interactions >= settings.min_interactions;
    let good = rate >= settings.min_success_rate;
    let facts = format!(
        "allow-listed, {} {} {} interactions, success rate {:.3} {} {:.3}",
        m.interactions,
        if enough { "≥" } else { "<" },
        settings.min_interactions,
        rate,
        if good { "≥" } else { "<" },
        settings.min_success_rate,
    );
    if enough && good {
        (
            TrustAction::Promote(next),
            format!("{facts}: {here} → {}", name(next)),
        )
    } else {
        (TrustAction::Keep, format!("{facts}: stays {here}"))
    }
}

/// The exported policy.
pub struct AllowListTrust;

impl TrustPolicy for AllowListTrust {
    const DESCRIPTION: &'static str =
        "promotes only allow-listed peers (config `allow`), up to TRUSTED; any threat → UNTRUSTED";

    fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String> {
        Ok(decide(&peer, &Settings::from_config(&HostConfig)?))
    }
}

// Export only when building the component; natively this crate is just a
// library for the tests.
#[cfg(target_arch = "wasm32")]
agentfed_guest::export_trust_policy!(AllowListTrust);

#[cfg(test)]
mod tests {
    use super::*;
    use TrustLevel::*;
    use agentfed_guest::InteractionMetrics;

    fn peer(node_id: &str, level: TrustLevel, interactions: u64, successes: u64) -> PeerSnapshot {
        PeerSnapshot {
            node_id: node_id.into(),
            level,
            level_since_ms: 0,
            metrics: InteractionMetrics {
                interactions,
                successes,
                failures: interactions.saturating_sub(successes),
                threats: 0,
                signature_failures: 0,
                uptime: 1.0,
                integrity: 1.0,
                threats_last_hour: 0,
                first_seen_ms: 0,
                last_seen_ms: 0,
            },
            now_ms: 0,
        }
    }

    fn lab() -> Settings {
        Settings::from_config(&[("allow", "lab-*, alice")]).unwrap()
    }

    fn action(p: &PeerSnapshot, s: &Settings) -> TrustAction {
        decide(p, s).action
    }

    fn promoted(a: &TrustAction) -> Option<TrustLevel> {
        match a {
            TrustAction::Promote(l) => Some(*l),
            _ => None,
        }
    }

    fn keep(a: &TrustAction) -> bool {
        matches!(a, TrustAction::Keep)
    }

    #[test]
    fn allow_list_matching() {
        let list = AllowList::parse("lab-*, alice,,bob ").unwrap();
        assert!(list.allows("lab-1"));
        assert!(list.allows("lab-"));
        assert!(list.allows("alice"));
        assert!(list.allows("bob"));
        assert!(!list.allows("alice2"), "exact entries are exact");
        assert!(!list.allows("Alice"), "case-sensitive");
        assert!(!list.allows("lab"));
        assert!(!list.allows("xlab-1"));
        assert!(!list.allows(""));
        assert!(!AllowList::parse("").unwrap().allows("anyone"));
    }

    #[test]
    fn allow_list_rejects_bad_entries() {
        for text in [
            "*", "lab-*,*", "l*b", "*lab", "lab-**", "ali ce", "a\tb", "x\u{7}",
        ] {
            let err = AllowList::parse(text).unwrap_err();
            assert!(
                err.starts_with("config key `allow`: entry "),
                "{text:?}: {err}"
            );
        }
        assert_eq!(
            AllowList::parse("alice, *").unwrap_err(),
            "config key `allow`: entry 2 is a bare `*`, which would allow everyone"
        );
    }

    #[test]
    fn settings_defaults_and_overrides() {
        let d = Settings::from_config(&[] as &[(&str, &str)]).unwrap();
        assert_eq!(d, Settings::default());
        assert!(d.allow.0.is_empty());
        assert_eq!((d.min_interactions, d.min_success_rate), (20, 0.9));
        let s = Settings::from_config(&[
            ("allow", "a"),
            ("min-interactions", " 5 "),
            ("min-success-rate", "0.75"),
        ])
        .unwrap();
        assert_eq!((s.min_interactions, s.min_success_rate), (5, 0.75));
        assert_eq!(
            promoted(&action(&peer("a", Verified, 5, 4), &s)),
            Some(Attested)
        );
    }

    #[test]
    fn invalid_settings() {
        for (key, value) in [
            ("min-interactions", "-1"),
            ("min-interactions", "many"),
            ("min-success-rate", "1.1"),
            ("min-success-rate", "-0.1"),
            ("min-success-rate", "NaN"),
            ("min-success-rate", "90%"),
        ] {
            assert_eq!(
                Settings::from_config(&[(key, value)]).unwrap_err(),
                format!("config key `{key}` has an invalid value")
            );
        }
    }

    #[test]
    fn off_list_peers_stay_put() {
        for level in TrustLevel::ALL {
            let d = decide(&peer("mallory", level, 1000, 1000), &lab());
            assert!(keep(&d.action), "{level:?}");
            assert!(d.reason.starts_with("not on the allow-list"));
        }
        // With nothing configured, nobody moves.
        let d = decide(&peer("lab-1", Verified, 1000, 1000), &Settings::default());
        assert!(keep(&d.action));
    }

    #[test]
    fn listed_peers_climb_one_level_at_a_time() {
        let s = lab();
        assert_eq!(
            promoted(&action(&peer("lab-7", Verified, 20, 18), &s)),
            Some(Attested)
        );
        assert_eq!(
            promoted(&action(&peer("alice", Attested, 1000, 1000), &s)),
            Some(Trusted)
        );
        let d = decide(&peer("lab-7", Verified, 20, 18), &s);
        assert_eq!(
            d.reason,
            "allow-listed, 20 ≥ 20 interactions, success rate 0.900 ≥ 0.900: VERIFIED → ATTESTED"
        );
        assert_eq!(d.score, 0.9);
        assert_eq!(d.components.len(), 1);
        assert_eq!(d.components[0].name, "success-rate");
    }

    #[test]
    fn promotion_bar_boundaries() {
        let s = lab();
        assert!(
            keep(&action(&peer("lab-1", Verified, 19, 19), &s)),
            "one interaction short"
        );
        assert!(
            keep(&action(&peer("lab-1", Verified, 20, 17), &s)),
            "0.85 < 0.9"
        );
        assert!(
            keep(&action(&peer("lab-1", Verified, 1000, 899), &s)),
            "0.899 < 0.9"
        );
        assert!(promoted(&action(&peer("lab-1", Verified, 1000, 900), &s)).is_some());
        assert!(promoted(&action(&peer("lab-1", Verified, 21, 21), &s)).is_some());
        assert!(
            keep(&action(&peer("lab-1", Verified, 0, 0), &s)),
            "no interactions"
        );
        let d = decide(&peer("lab-1", Verified, 19, 19), &s);
        assert!(d.reason.contains("19 < 20 interactions"), "{}", d.reason);
    }

    #[test]
    fn never_past_trusted_and_never_privileged() {
        let s = lab();
        for level in [Trusted, Privileged] {
            let a = action(&peer("alice", level, u64::MAX, u64::MAX), &s);
            assert!(keep(&a), "{level:?}: {a:?}");
        }
        for level in TrustLevel::ALL {
            let a = action(&peer("alice", level, u64::MAX, u64::MAX), &s);
            assert!(!matches!(a, TrustAction::RecommendPrivileged));
            assert_ne!(promoted(&a), Some(Privileged));
        }
    }

    #[test]
    fn untrusted_is_not_promoted() {
        assert!(keep(&action(&peer("alice", Untrusted, 100, 100), &lab())));
    }

    #[test]
    fn any_threat_demotes_to_untrusted() {
        let s = lab();
        for level in [Verified, Attested, Trusted, Privileged] {
            for id in ["alice", "mallory"] {
                for which in 0..3 {
                    let mut p = peer(id, level, 100, 100);
                    match which {
                        0 => p.metrics.threats = 1,
                        1 => p.metrics.threats_last_hour = 1,
                        _ => p.metrics.signature_failures = 1,
                    }
                    let a = action(&p, &s);
                    assert!(
                        matches!(a, TrustAction::Demote(Untrusted)),
                        "{id} at {level:?}, case {which}: {a:?}"
                    );
                }
            }
        }
        let mut p = peer("alice", Untrusted, 100, 100);
        p.metrics.threats = 5;
        assert!(keep(&action(&p, &s)), "already at the bottom");
    }

    #[test]
    fn success_rate_is_bounded() {
        assert_eq!(success_rate(&peer("a", Verified, 0, 5)), 0.0);
        assert_eq!(success_rate(&peer("a", Verified, 10, 50)), 1.0);
        assert_eq!(success_rate(&peer("a", Verified, 4, 3)), 0.75);
    }
}
