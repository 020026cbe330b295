//! The gates every message passes in both directions: the breaker first
//! (SUSPENDED and EVICTED peers get nothing), then each capability's trust
//! gate.

use super::*;

/// The breaker gate, then each capability's trust gate.
pub(super) fn check_gates(record: &PeerRecord, capabilities: &[Capability]) -> Result<()> {
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
pub(super) fn check_breaker(record: &PeerRecord) -> Result<()> {
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

impl Coordinator {
    /// The capabilities a peer needs here for `message_type` (sent to it
    /// or received from it): the type's own
    /// ([`envelope::required_capabilities`]), plus the consensus capability
    /// (`collaborative-task`) when `[transport] consensus_for` lists the
    /// type. `None` for an unknown type.
    pub(super) fn message_capabilities(&self, message_type: &str) -> Option<Vec<Capability>> {
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
}
