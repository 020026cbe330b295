//! Circuit-breaker rules enforced by the host: the legal state edges and
//! the send/receive gate. Pure logic, no I/O; the spend plugin decides
//! *when* to suspend or evict, this module decides what is *allowed*.
//!
//! Legal edges:
//!
//! | from | to | who |
//! |---|---|---|
//! | ACTIVE | SUSPENDED | plugin or operator |
//! | SUSPENDED | EVICTED | plugin or operator |
//! | ACTIVE | EVICTED | operator only |
//! | SUSPENDED | ACTIVE | operator only (reactivate) |
//! | EVICTED | ACTIVE | operator only (reactivate) |
//!
//! Everything else (including staying in the same state and
//! EVICTED → SUSPENDED) is illegal. The breaker never auto-reactivates.

use std::fmt;

use crate::model::{BreakerInfo, BreakerState};

/// A suspended peer becomes reactivate-eligible after this cooldown (30 min).
pub const REACTIVATE_COOLDOWN_MS: u64 = 30 * 60 * 1000;

/// Who requests a transition (or a trust change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A policy plugin's decision.
    Plugin,
    /// The local operator.
    Operator,
}

impl Actor {
    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Actor::Plugin => "plugin",
            Actor::Operator => "operator",
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused breaker transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal breaker transition {from} -> {to} by {actor}")]
pub struct IllegalTransition {
    /// Current state.
    pub from: BreakerState,
    /// Requested state.
    pub to: BreakerState,
    /// Requester.
    pub actor: Actor,
}

/// Checks a requested transition; returns the new state if legal.
pub fn transition(
    current: BreakerState,
    requested: BreakerState,
    actor: Actor,
) -> Result<BreakerState, IllegalTransition> {
    use BreakerState::{Active, Evicted, Suspended};
    let legal = match (current, requested) {
        (Active, Suspended) | (Suspended, Evicted) => true,
        (Active, Evicted) | (Suspended, Active) | (Evicted, Active) => actor == Actor::Operator,
        _ => false,
    };
    if legal {
        Ok(requested)
    } else {
        Err(IllegalTransition {
            from: current,
            to: requested,
            actor,
        })
    }
}

/// Why a send to (or message from) a peer is refused before any other work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum GateError {
    /// The peer is SUSPENDED.
    #[error("PEER_SUSPENDED")]
    PeerSuspended,
    /// The peer is EVICTED.
    #[error("PEER_EVICTED")]
    PeerEvicted,
}

impl GateError {
    /// The constant error code.
    pub const fn code(self) -> &'static str {
        match self {
            GateError::PeerSuspended => "PEER_SUSPENDED",
            GateError::PeerEvicted => "PEER_EVICTED",
        }
    }
}

/// Gate for outbound sends and inbound messages: only ACTIVE peers pass.
pub fn check_gate(state: BreakerState) -> Result<(), GateError> {
    match state {
        BreakerState::Active => Ok(()),
        BreakerState::Suspended => Err(GateError::PeerSuspended),
        BreakerState::Evicted => Err(GateError::PeerEvicted),
    }
}

/// Whether a SUSPENDED peer has served the reactivation cooldown (shown in
/// breaker status; reactivation itself stays an operator action).
pub fn reactivate_eligible(info: &BreakerInfo, now_ms: u64) -> bool {
    info.state == BreakerState::Suspended
        && now_ms.saturating_sub(info.since_ms) >= REACTIVATE_COOLDOWN_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::{Active, Evicted, Suspended};

    const STATES: [BreakerState; 3] = [Active, Suspended, Evicted];
    const ACTORS: [Actor; 2] = [Actor::Plugin, Actor::Operator];

    /// The full table: (from, to, plugin allowed, operator allowed).
    const TABLE: [(BreakerState, BreakerState, bool, bool); 9] = [
        (Active, Active, false, false),
        (Active, Suspended, true, true),
        (Active, Evicted, false, true),
        (Suspended, Active, false, true),
        (Suspended, Suspended, false, false),
        (Suspended, Evicted, true, true),
        (Evicted, Active, false, true),
        (Evicted, Suspended, false, false),
        (Evicted, Evicted, false, false),
    ];

    #[test]
    fn every_edge_for_every_actor() {
        for (from, to, plugin, operator) in TABLE {
            for actor in ACTORS {
                let want = match actor {
                    Actor::Plugin => plugin,
                    Actor::Operator => operator,
                };
                let got = transition(from, to, actor);
                if want {
                    assert_eq!(got, Ok(to), "{from} -> {to} by {actor}");
                } else {
                    assert_eq!(
                        got,
                        Err(IllegalTransition { from, to, actor }),
                        "{from} -> {to} by {actor}"
                    );
                }
            }
        }
        // The table covers every pair.
        for from in STATES {
            for to in STATES {
                assert!(TABLE.iter().any(|&(f, t, _, _)| f == from && t == to));
            }
        }
    }

    #[test]
    fn illegal_transition_message_names_edge_and_actor() {
        let err = transition(Active, Evicted, Actor::Plugin).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("illegal breaker transition ACTIVE -> EVICTED by plugin".to_string())
        );
    }

    #[test]
    fn gate_codes() {
        assert_eq!(check_gate(Active), Ok(()));
        assert_eq!(check_gate(Suspended), Err(GateError::PeerSuspended));
        assert_eq!(check_gate(Evicted), Err(GateError::PeerEvicted));
        assert_eq!(GateError::PeerSuspended.to_string(), "PEER_SUSPENDED");
        assert_eq!(GateError::PeerEvicted.to_string(), "PEER_EVICTED");
        assert_eq!(GateError::PeerEvicted.code(), "PEER_EVICTED");
    }

    #[test]
    fn reactivation_cooldown() {
        let info = BreakerInfo {
            state: Suspended,
            since_ms: 1_000,
            ..BreakerInfo::default()
        };
        assert!(!reactivate_eligible(
            &info,
            1_000 + REACTIVATE_COOLDOWN_MS - 1
        ));
        assert!(reactivate_eligible(&info, 1_000 + REACTIVATE_COOLDOWN_MS));
        let active = BreakerInfo::default();
        assert!(!reactivate_eligible(&active, u64::MAX));
    }
}
