//! {{name}}: a trust policy for agentfed.
//!
//! Promotes a peer one level when it has at least `min-interactions`
//! interactions (config, default 20) and a success rate of at least 0.9;
//! demotes to UNTRUSTED on any signature failure. Never recommends
//! PRIVILEGED.
use agentfed_guest::trust::*;

/// The plugin type, exported below.
pub struct Policy;

/// The decision, as a pure function so it can be unit-tested natively.
pub fn decide(peer: &PeerSnapshot, min_interactions: u64) -> TrustDecision {
    let m = &peer.metrics;
    let success_rate = if m.interactions == 0 { 0.0 } else { m.successes as f64 / m.interactions as f64 };
    let components = vec![ScoreComponent { name: "success-rate".into(), value: success_rate, weight: 1.0 }];
    let (action, reason) = if m.signature_failures > 0 {
        (TrustAction::Demote(TrustLevel::Untrusted), "signature failure".to_string())
    } else if success_rate >= 0.9
        && m.interactions >= min_interactions
        && peer.level != TrustLevel::Untrusted
    {
        match peer.level.above() {
            Some(next) if next != TrustLevel::Privileged => {
                (TrustAction::Promote(next), format!("success rate {success_rate:.2} over {} interactions", m.interactions))
            }
            _ => (TrustAction::Keep, "already at the highest automatic level".into()),
        }
    } else {
        (TrustAction::Keep, format!("success rate {success_rate:.2} over {} interactions", m.interactions))
    };
    TrustDecision { action, score: success_rate, components, reason }
}

impl TrustPolicy for Policy {
    const DESCRIPTION: &'static str = "{{name}}: promotes reliable peers one level at a time";

    fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String> {
        let min = host::config_or("min-interactions", 20u64)?;
        Ok(decide(&peer, min))
    }
}

agentfed_guest::export_trust_policy!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use agentfed_guest::InteractionMetrics;

    fn peer(level: TrustLevel, interactions: u64, successes: u64) -> PeerSnapshot {
        PeerSnapshot {
            node_id: "peer-1".into(),
            level,
            level_since_ms: 0,
            metrics: InteractionMetrics {
                interactions, successes, failures: interactions - successes, threats: 0,
                signature_failures: 0, uptime: 1.0, integrity: 1.0, threats_last_hour: 0,
                first_seen_ms: 0, last_seen_ms: 0,
            },
            now_ms: 0,
        }
    }

    #[test]
    fn promotes_reliable_peers() {
        let d = decide(&peer(TrustLevel::Verified, 20, 19), 20);
        assert!(matches!(d.action, TrustAction::Promote(TrustLevel::Attested)));
    }

    #[test]
    fn keeps_unreliable_or_new_peers() {
        assert!(matches!(decide(&peer(TrustLevel::Verified, 20, 10), 20).action, TrustAction::Keep));
        assert!(matches!(decide(&peer(TrustLevel::Verified, 5, 5), 20).action, TrustAction::Keep));
    }

    #[test]
    fn never_promotes_to_privileged() {
        assert!(matches!(decide(&peer(TrustLevel::Trusted, 1000, 1000), 20).action, TrustAction::Keep));
    }
}
