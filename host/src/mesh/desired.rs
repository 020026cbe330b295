//! What the mesh should look like, computed from the peers' trust level,
//! breaker state and signed manifests (docs/mesh.md, "What each level
//! reaches"):
//!
//! | peer | on the device | firewall (TCP from its mesh IP) |
//! |---|---|---|
//! | UNTRUSTED, or breaker EVICTED | absent | nothing |
//! | breaker SUSPENDED | present, no allowed IPs | nothing |
//! | VERIFIED | present, mesh IP/32 | 9100 |
//! | ATTESTED | present | 9100–9199 |
//! | TRUSTED | present | 22, 80–443, 9100–9199 |
//! | PRIVILEGED | present | everything, ICMP included |
//!
//! Every peer-supplied field that could reach the device or a firewall
//! rule is checked again here, whatever the manifest check let through:
//! a peer failing any check is left out of the mesh and listed in
//! [`DesiredMesh::excluded`] with the field and the reason, never echoing
//! the value.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::identity::{MeshSubnet, decode_key32, validate_host_port, validate_node_id};
use crate::model::{BreakerState, PeerRecord, TrustLevel};

use super::diff::WantedPeer;

/// The mesh's own node, the other side of every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// The mesh subnet.
    pub subnet: MeshSubnet,
    /// This node's mesh IP.
    pub mesh_ip: Ipv4Addr,
    /// This node's WireGuard public key.
    pub public_key: [u8; 32],
    /// Keepalive sent to peers, seconds (0 off).
    pub keepalive_secs: u16,
}

/// What a peer may reach over the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing (SUSPENDED).
    Nothing,
    /// These TCP ports and ranges (inclusive).
    TcpPorts(Vec<(u16, u16)>),
    /// Everything, ICMP included (PRIVILEGED).
    Everything,
}

impl Access {
    /// The access of a peer at `level` whose breaker is ACTIVE.
    pub fn for_level(level: TrustLevel) -> Access {
        const AGENTS: (u16, u16) = (9100, 9100);
        const AGENT_RANGE: (u16, u16) = (9100, 9199);
        match level {
            TrustLevel::Untrusted => Access::Nothing,
            TrustLevel::Verified => Access::TcpPorts(vec![AGENTS]),
            TrustLevel::Attested => Access::TcpPorts(vec![AGENT_RANGE]),
            TrustLevel::Trusted => Access::TcpPorts(vec![(22, 22), (80, 443), AGENT_RANGE]),
            TrustLevel::Privileged => Access::Everything,
        }
    }
}

/// One peer's firewall grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The peer's node id.
    pub node_id: String,
    /// Its mesh IP (the source the rule matches).
    pub mesh_ip: Ipv4Addr,
    /// Its trust level, as the rule's comment says.
    pub level: TrustLevel,
    /// What it may reach.
    pub access: Access,
}

/// A peer kept out of the mesh because a field failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// The peer's node id as stored (shown only if it passes its grammar;
    /// else `"(invalid node id)"`).
    pub node_id: String,
    /// The field that failed.
    pub field: &'static str,
    /// Why (never the value).
    pub reason: String,
}

/// The mesh this node should have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredMesh {
    /// Peers on the device, in public-key order.
    pub peers: Vec<WantedPeer>,
    /// Firewall grants, in mesh-IP order (one per present peer).
    pub grants: Vec<Grant>,
    /// Peers left out for a bad field, in node-id order.
    pub excluded: Vec<Excluded>,
}

/// A peer that passed every check, before duplicates are looked for.
struct Candidate {
    node_id: String,
    public_key: [u8; 32],
    mesh_ip: Ipv4Addr,
    endpoint: Option<String>,
    level: TrustLevel,
    suspended: bool,
}

/// Computes the desired mesh from `peers`. `resolve` turns a checked
/// `host:port` WireGuard endpoint into an address (names may need DNS);
/// `None` leaves the peer without an endpoint (it can still reach us).
pub fn desired(
    local: &LocalNode,
    peers: &[PeerRecord],
    resolve: &dyn Fn(&str) -> Option<SocketAddr>,
) -> DesiredMesh {
    desired_from_fields(local, &mesh_fields(peers), resolve)
}

/// The mesh fields of every peer not evicted (an evicted peer is never on
/// the mesh), as `wg.peers` reports them to `wg stage`.
pub fn mesh_fields(peers: &[PeerRecord]) -> Vec<PeerFields> {
    peers
        .iter()
        .filter(|r| r.breaker.state != BreakerState::Evicted)
        .map(fields_of)
        .collect()
}

/// Puts checked candidates on the mesh: a key or mesh IP claimed twice
/// keeps both claimants out.
fn assemble(
    local: &LocalNode,
    candidates: Vec<Candidate>,
    resolve: &dyn Fn(&str) -> Option<SocketAddr>,
    out: &mut DesiredMesh,
) {
    // A key or address claimed by two peers is ambiguous: the mesh cannot
    // tell which one is legitimate, so neither gets it.
    let mut keys: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    let mut ips: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for c in &candidates {
        *keys.entry(c.public_key).or_default() += 1;
        *ips.entry(c.mesh_ip).or_default() += 1;
    }
    for c in candidates {
        if keys[&c.public_key] > 1 {
            out.excluded.push(Excluded {
                node_id: c.node_id,
                field: "wg_public_key",
                reason: "another peer presents the same WireGuard key".into(),
            });
            continue;
        }
        if ips[&c.mesh_ip] > 1 {
            out.excluded.push(Excluded {
                node_id: c.node_id,
                field: "mesh_ip",
                reason: "another peer claims the same mesh IP".into(),
            });
            continue;
        }
        let access = if c.suspended {
            Access::Nothing
        } else {
            Access::for_level(c.level)
        };
        out.peers.push(WantedPeer {
            node_id: c.node_id.clone(),
            public_key: c.public_key,
            endpoint: c.endpoint.as_deref().and_then(resolve),
            persistent_keepalive: local.keepalive_secs,
            allowed_ips: if c.suspended {
                Vec::new()
            } else {
                vec![(c.mesh_ip, 32)]
            },
        });
        out.grants.push(Grant {
            node_id: c.node_id,
            mesh_ip: c.mesh_ip,
            level: c.level,
            access,
        });
    }
}

/// A peer as an operator describes it (`wg stage --peer …`), or as the
/// daemon reports it: the manifest's mesh fields, unchecked, with the
/// peer's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFields {
    /// Its node id.
    pub node_id: String,
    /// Its WireGuard public key (standard base64).
    pub wg_public_key: String,
    /// Its mesh IP.
    pub mesh_ip: String,
    /// Its WireGuard `host:port`, if it publishes one.
    pub wg_endpoint: Option<String>,
    /// Its trust level in this node's view.
    pub level: TrustLevel,
    /// Whether its breaker is SUSPENDED.
    pub suspended: bool,
}

/// [`desired`] for peers given by their fields: the same checks, the same
/// exclusions (an UNTRUSTED peer is left out silently).
pub fn desired_from_fields(
    local: &LocalNode,
    peers: &[PeerFields],
    resolve: &dyn Fn(&str) -> Option<SocketAddr>,
) -> DesiredMesh {
    let mut out = DesiredMesh::default();
    let mut candidates = Vec::new();
    for peer in peers.iter().filter(|p| p.level != TrustLevel::Untrusted) {
        match check_fields(local, peer) {
            Ok(c) => candidates.push(c),
            Err(excluded) => out.excluded.push(excluded),
        }
    }
    assemble(local, candidates, resolve, &mut out);
    out.peers.sort_by_key(|p| p.public_key);
    out.grants.sort_by_key(|g| g.mesh_ip);
    out.excluded.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

impl PeerFields {
    /// As the control API reports it (`wg.peers`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id,
            "wg_public_key": self.wg_public_key,
            "mesh_ip": self.mesh_ip,
            "wg_endpoint": self.wg_endpoint,
            "trust_level": self.level.to_string(),
            "suspended": self.suspended,
        })
    }

    /// Reads what [`PeerFields::to_json`] wrote (nothing in it is trusted
    /// yet: [`desired_from_fields`] checks every field).
    pub fn from_json(value: &serde_json::Value) -> Option<PeerFields> {
        let text = |key: &str| value.get(key)?.as_str().map(str::to_string);
        Some(PeerFields {
            node_id: text("node_id")?,
            wg_public_key: text("wg_public_key")?,
            mesh_ip: text("mesh_ip")?,
            wg_endpoint: text("wg_endpoint"),
            level: text("trust_level")?.parse().ok()?,
            suspended: value.get("suspended")?.as_bool()?,
        })
    }
}

/// The mesh fields of a stored peer.
pub fn fields_of(record: &PeerRecord) -> PeerFields {
    let m = &record.manifest.manifest;
    PeerFields {
        node_id: m.node_id.clone(),
        wg_public_key: m.wg_public_key.clone(),
        mesh_ip: m.mesh_ip.clone(),
        wg_endpoint: m.wg_endpoint.clone(),
        level: record.trust_level,
        suspended: record.breaker.state == BreakerState::Suspended,
    }
}

/// Checks every field of a peer the mesh uses.
fn check_fields(local: &LocalNode, m: &PeerFields) -> Result<Candidate, Excluded> {
    let shown = if validate_node_id(&m.node_id).is_ok() {
        m.node_id.clone()
    } else {
        "(invalid node id)".to_string()
    };
    let excluded = |field: &'static str, reason: &str| Excluded {
        node_id: shown.clone(),
        field,
        reason: reason.to_string(),
    };
    validate_node_id(&m.node_id).map_err(|e| excluded("node_id", e.reason))?;
    let public_key = decode_key32("wg_public_key", &m.wg_public_key)
        .map_err(|e| excluded("wg_public_key", e.reason))?;
    if public_key == [0; 32] {
        return Err(excluded("wg_public_key", "is the all-zero key"));
    }
    if public_key == local.public_key {
        return Err(excluded(
            "wg_public_key",
            "is this node's own WireGuard key",
        ));
    }
    let mesh_ip = check_mesh_ip(local, &m.mesh_ip).map_err(|reason| excluded("mesh_ip", reason))?;
    if let Some(endpoint) = &m.wg_endpoint {
        validate_host_port("wg_endpoint", endpoint)
            .map_err(|e| excluded("wg_endpoint", e.reason))?;
    }
    Ok(Candidate {
        node_id: m.node_id.clone(),
        public_key,
        mesh_ip,
        endpoint: m.wg_endpoint.clone(),
        level: m.level,
        suspended: m.suspended,
    })
}

/// A peer's mesh IP: a dotted quad inside the subnet, not its network or
/// broadcast address, and not ours.
fn check_mesh_ip(local: &LocalNode, text: &str) -> Result<Ipv4Addr, &'static str> {
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| "is not a dotted-quad IPv4 address")?;
    // `parse` accepts only canonical dotted quads; a round trip also rules
    // out anything it might normalise.
    if ip.to_string() != text {
        return Err("is not a canonical dotted-quad IPv4 address");
    }
    if !local.subnet.contains(ip) {
        return Err("is outside this node's mesh subnet");
    }
    let host_bits = 32 - u32::from(local.subnet.prefix());
    if host_bits >= 2 {
        let host = u32::from(ip) & ((1u32 << host_bits) - 1);
        if host == 0 || host == (1u32 << host_bits) - 1 {
            return Err("is the subnet's network or broadcast address");
        }
    }
    if ip == local.mesh_ip {
        return Err("is this node's own mesh IP");
    }
    Ok(ip)
}
