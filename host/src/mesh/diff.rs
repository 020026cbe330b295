//! Desired WireGuard peers versus what the device reports: the smallest
//! list of changes that makes the device match, each named for the
//! witness chain and the audit log.
//!
//! Only peers are compared here; the interface's own key, port and address
//! are [`super::device::WgDevice::ensure_up`]'s concern, and the firewall
//! is replaced as a whole.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::uapi::{DeviceChange, DeviceState};

/// One peer as the mesh wants it on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPeer {
    /// The peer's node id (for records; never sent to the device).
    pub node_id: String,
    /// Its X25519 public key.
    pub public_key: [u8; 32],
    /// Its resolved WireGuard endpoint, if it published one.
    pub endpoint: Option<SocketAddr>,
    /// Keepalive seconds (0 off).
    pub persistent_keepalive: u16,
    /// Its mesh IP as `/32`, or nothing while it is SUSPENDED.
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
}

/// What a change does, as the witness chain and the audit log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A peer the device did not have.
    PeerAdded,
    /// A present peer's allowed IPs emptied (breaker SUSPEND).
    AllowedIpsCleared,
    /// A present peer's allowed IPs given back (reactivation).
    AllowedIpsRestored,
    /// A present peer's endpoint or keepalive changed.
    PeerUpdated,
    /// A peer removed (EVICTED, UNTRUSTED, or unknown to the mesh).
    PeerRemoved,
}

impl ChangeKind {
    /// The snake_case name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::PeerAdded => "peer_added",
            ChangeKind::AllowedIpsCleared => "allowed_ips_cleared",
            ChangeKind::AllowedIpsRestored => "allowed_ips_restored",
            ChangeKind::PeerUpdated => "peer_updated",
            ChangeKind::PeerRemoved => "peer_removed",
        }
    }
}

/// One change to make, with what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    /// What it does.
    pub kind: ChangeKind,
    /// The peer's node id, when the mesh knows it (a peer found on the
    /// device that no node claims has none).
    pub node_id: Option<String>,
    /// The change for the device.
    pub change: DeviceChange,
}

/// The changes that make `actual`'s peers equal `wanted`, removals first
/// (so that a key moving between node ids never collides), then in public
/// key order: deterministic, so a plan prints the same twice.
pub fn plan(wanted: &[WantedPeer], actual: &DeviceState) -> Vec<PlannedChange> {
    let wanted: BTreeMap<[u8; 32], &WantedPeer> =
        wanted.iter().map(|p| (p.public_key, p)).collect();
    let mut changes = Vec::new();
    for key in actual.peers.keys() {
        if !wanted.contains_key(key) {
            changes.push(PlannedChange {
                kind: ChangeKind::PeerRemoved,
                node_id: None,
                change: DeviceChange::RemovePeer { public_key: *key },
            });
        }
    }
    for (key, want) in &wanted {
        let upsert = || DeviceChange::UpsertPeer {
            public_key: *key,
            endpoint: want.endpoint,
            persistent_keepalive: want.persistent_keepalive,
            allowed_ips: want.allowed_ips.clone(),
        };
        let kind = match actual.peers.get(key) {
            None => Some(ChangeKind::PeerAdded),
            Some(have) => {
                let mut have_ips = have.allowed_ips.clone();
                let mut want_ips = want.allowed_ips.clone();
                have_ips.sort();
                want_ips.sort();
                if have_ips != want_ips {
                    Some(if want_ips.is_empty() {
                        ChangeKind::AllowedIpsCleared
                    } else if have_ips.is_empty() {
                        ChangeKind::AllowedIpsRestored
                    } else {
                        ChangeKind::PeerUpdated
                    })
                } else if have.persistent_keepalive != want.persistent_keepalive
                    || (want.endpoint.is_some() && have.endpoint.is_none())
                {
                    // An endpoint the device learned by roaming differs
                    // from the published one legitimately: only a missing
                    // one is set.
                    Some(ChangeKind::PeerUpdated)
                } else {
                    None
                }
            }
        };
        if let Some(kind) = kind {
            changes.push(PlannedChange {
                kind,
                node_id: Some(want.node_id.clone()),
                change: upsert(),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::uapi::DevicePeer;

    fn wanted(node: &str, key: u8, ips: &[(Ipv4Addr, u8)]) -> WantedPeer {
        WantedPeer {
            node_id: node.into(),
            public_key: [key; 32],
            endpoint: Some(SocketAddr::from(([192, 0, 2, key], 51820))),
            persistent_keepalive: 25,
            allowed_ips: ips.to_vec(),
        }
    }

    fn device(peers: &[(u8, &[(Ipv4Addr, u8)])]) -> DeviceState {
        DeviceState {
            listen_port: 51820,
            public_key: Some([0; 32]),
            peers: peers
                .iter()
                .map(|(key, ips)| {
                    (
                        [*key; 32],
                        DevicePeer {
                            public_key: [*key; 32],
                            endpoint: Some(SocketAddr::from(([192, 0, 2, *key], 51820))),
                            allowed_ips: ips.to_vec(),
                            persistent_keepalive: 25,
                            ..DevicePeer::default()
                        },
                    )
                })
                .collect(),
        }
    }

    const A: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 1), 32);
    const B: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 2), 32);

    fn kinds(changes: &[PlannedChange]) -> Vec<(&'static str, Option<&str>)> {
        changes
            .iter()
            .map(|c| (c.kind.as_str(), c.node_id.as_deref()))
            .collect()
    }

    #[test]
    fn a_device_that_matches_needs_nothing() {
        let want = [wanted("a", 1, &[A]), wanted("b", 2, &[])];
        assert!(plan(&want, &device(&[(1, &[A]), (2, &[])])).is_empty());
    }

    #[test]
    fn each_difference_is_one_named_change_removals_first() {
        let want = [
            wanted("a", 1, &[]),
            wanted("b", 2, &[B]),
            wanted("c", 3, &[A]),
        ];
        let have = device(&[(1, &[A]), (2, &[]), (9, &[B])]);
        let changes = plan(&want, &have);
        assert_eq!(
            kinds(&changes),
            [
                ("peer_removed", None),
                ("allowed_ips_cleared", Some("a")),
                ("allowed_ips_restored", Some("b")),
                ("peer_added", Some("c")),
            ]
        );
        assert_eq!(
            changes[0].change,
            DeviceChange::RemovePeer {
                public_key: [9; 32]
            }
        );
    }

    #[test]
    fn a_roamed_endpoint_is_left_alone_but_a_missing_one_is_set() {
        let want = [wanted("a", 1, &[A])];
        let mut have = device(&[(1, &[A])]);
        have.peers.get_mut(&[1; 32]).unwrap().endpoint = Some("192.0.2.77:40000".parse().unwrap());
        assert!(plan(&want, &have).is_empty());
        have.peers.get_mut(&[1; 32]).unwrap().endpoint = None;
        assert_eq!(kinds(&plan(&want, &have)), [("peer_updated", Some("a"))]);
    }
}
