//! Capability gates per trust level (the design's ladder, cumulative):
//!
//! | level | unlocks |
//! |---|---|
//! | UNTRUSTED | discovery |
//! | VERIFIED | + status, ping |
//! | ATTESTED | + send, receive, query-redacted |
//! | TRUSTED | + share-context, collaborative-task |
//! | PRIVILEGED | + full-memory, remote-spawn |
//!
//! Both sides gate: the sender checks its view of the receiver, the
//! receiver its view of the sender. Pure logic, no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::TrustLevel;

/// An operation a peer may be allowed to perform or receive.
/// Named in kebab-case (`query-redacted`) in text and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Be discovered / exchange manifests.
    Discovery,
    /// Status requests.
    Status,
    /// Liveness pings.
    Ping,
    /// Send messages.
    Send,
    /// Receive messages.
    Receive,
    /// Queries with redacted answers.
    QueryRedacted,
    /// Share context.
    ShareContext,
    /// Collaborative tasks.
    CollaborativeTask,
    /// Full memory access.
    FullMemory,
    /// Spawn agents remotely.
    RemoteSpawn,
}

impl Capability {
    /// Every capability, in ladder order.
    pub const ALL: [Capability; 10] = [
        Capability::Discovery,
        Capability::Status,
        Capability::Ping,
        Capability::Send,
        Capability::Receive,
        Capability::QueryRedacted,
        Capability::ShareContext,
        Capability::CollaborativeTask,
        Capability::FullMemory,
        Capability::RemoteSpawn,
    ];

    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::Discovery => "discovery",
            Capability::Status => "status",
            Capability::Ping => "ping",
            Capability::Send => "send",
            Capability::Receive => "receive",
            Capability::QueryRedacted => "query-redacted",
            Capability::ShareContext => "share-context",
            Capability::CollaborativeTask => "collaborative-task",
            Capability::FullMemory => "full-memory",
            Capability::RemoteSpawn => "remote-spawn",
        }
    }

    /// The lowest trust level that unlocks this capability.
    pub const fn required_level(self) -> TrustLevel {
        match self {
            Capability::Discovery => TrustLevel::Untrusted,
            Capability::Status | Capability::Ping => TrustLevel::Verified,
            Capability::Send | Capability::Receive | Capability::QueryRedacted => {
                TrustLevel::Attested
            }
            Capability::ShareContext | Capability::CollaborativeTask => TrustLevel::Trusted,
            Capability::FullMemory | Capability::RemoteSpawn => TrustLevel::Privileged,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability")]
pub struct UnknownCapability;

impl FromStr for Capability {
    type Err = UnknownCapability;
    /// Exact kebab-case names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownCapability)
    }
}

/// Whether a peer at `level` may use `capability`.
pub fn allowed(level: TrustLevel, capability: Capability) -> bool {
    level >= capability.required_level()
}

/// Everything `level` unlocks, in ladder order.
pub fn capabilities(level: TrustLevel) -> Vec<Capability> {
    Capability::ALL
        .into_iter()
        .filter(|&c| allowed(level, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability as C;
    use TrustLevel as L;

    /// The design's table, written out in full: for each level, exactly
    /// these capabilities are allowed.
    fn expected(level: TrustLevel) -> &'static [Capability] {
        match level {
            L::Untrusted => &[C::Discovery],
            L::Verified => &[C::Discovery, C::Status, C::Ping],
            L::Attested => &[
                C::Discovery,
                C::Status,
                C::Ping,
                C::Send,
                C::Receive,
                C::QueryRedacted,
            ],
            L::Trusted => &[
                C::Discovery,
                C::Status,
                C::Ping,
                C::Send,
                C::Receive,
                C::QueryRedacted,
                C::ShareContext,
                C::CollaborativeTask,
            ],
            L::Privileged => &C::ALL,
        }
    }

    #[test]
    fn full_ladder_table() {
        for level in L::ALL {
            let want = expected(level);
            for cap in C::ALL {
                assert_eq!(allowed(level, cap), want.contains(&cap), "{level} / {cap}");
            }
            assert_eq!(capabilities(level), want);
        }
    }

    #[test]
    fn names_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        for cap in C::ALL {
            assert_eq!(cap.as_str().parse::<Capability>(), Ok(cap));
            assert_eq!(serde_json::to_string(&cap)?, format!("\"{cap}\""));
        }
        assert!("Send".parse::<Capability>().is_err());
        assert!("query".parse::<Capability>().is_err());
        Ok(())
    }
}
