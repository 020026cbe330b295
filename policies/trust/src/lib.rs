//! Placeholder being replaced.
use agentfed_guest::trust::*;
struct P;
impl TrustPolicy for P {
    const DESCRIPTION: &'static str = "x";
    fn evaluate(peer: PeerSnapshot) -> Result<TrustDecision, String> {
        Ok(TrustDecision { action: TrustAction::Keep, score: 0.0, components: vec![], reason: peer.node_id })
    }
}
agentfed_guest::export_trust_policy!(P);
