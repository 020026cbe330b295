//! The mesh as files an operator (or the daemon) applies: the nftables
//! ruleset (JSON for `nft -j -f`), a macOS pf anchor, and a wg-quick
//! configuration. Every value written is typed (addresses, ports, keys
//! re-encoded from bytes, node ids that passed their grammar), so nothing
//! a peer sent reaches a file as text.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Value, json};

use super::desired::{Access, DesiredMesh, Grant, LocalNode};

/// The nftables table agentfed owns (family `inet`).
pub const NFT_TABLE: &str = "agentfed";

/// The pf anchor agentfed's rules load into.
pub const PF_ANCHOR: &str = "agentfed";

/// The nftables ruleset for `grants` on `interface`, as one `nft -j -f`
/// batch that replaces table `inet agentfed` atomically (add, delete and
/// re-create in one transaction: an existing table is never seen half
/// updated, and a missing one is not an error).
///
/// Traffic arriving on the mesh interface: established and related
/// packets pass; each peer's packets from its mesh IP pass to what its
/// level grants; the rest is refused (TCP with a reset, the rest with an
/// ICMP error), so a client sees "connection refused", not a hang.
/// Traffic on other interfaces is not touched.
pub fn nft_ruleset(interface: &str, grants: &[Grant]) -> Value {
    let table = json!({"family": "inet", "name": NFT_TABLE});
    let mut batch = vec![
        json!({"metainfo": {"json_schema_version": 1}}),
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
        json!({"add": {"chain": {
            "family": "inet", "table": NFT_TABLE, "name": "mesh_input",
            "type": "filter", "hook": "input", "prio": 0, "policy": "accept"
        }}}),
    ];
    let on_mesh =
        json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": interface}});
    let rule = |comment: Option<String>, expr: Vec<Value>| {
        let mut rule =
            json!({"family": "inet", "table": NFT_TABLE, "chain": "mesh_input", "expr": expr});
        if let Some(comment) = comment {
            rule["comment"] = json!(comment);
        }
        json!({"add": {"rule": rule}})
    };
    batch.push(rule(
        None,
        vec![
            on_mesh.clone(),
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ],
    ));
    for grant in grants {
        let from = json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": grant.mesh_ip.to_string()}});
        let comment = Some(format!("{} {}", grant.node_id, grant.level));
        match &grant.access {
            Access::Nothing => {}
            Access::Everything => batch.push(rule(
                comment,
                vec![on_mesh.clone(), from, json!({"accept": null})],
            )),
            Access::TcpPorts(ports) => {
                let set: Vec<Value> = ports
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            json!(lo)
                        } else {
                            json!({"range": [lo, hi]})
                        }
                    })
                    .collect();
                batch.push(rule(
                    comment,
                    vec![
                        on_mesh.clone(),
                        from,
                        json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": set}}}),
                        json!({"accept": null}),
                    ],
                ));
            }
        }
    }
    batch.push(rule(
        None,
        vec![
            on_mesh.clone(),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            json!({"reject": {"type": "tcp reset"}}),
        ],
    ));
    batch.push(rule(None, vec![on_mesh, json!({"reject": null})]));
    json!({"nftables": batch})
}

/// The pf anchor for `grants` on `interface` (macOS): load it with
/// `pfctl -a agentfed -f FILE` after adding `anchor "agentfed"` to
/// `/etc/pf.conf`. Same policy as [`nft_ruleset`]; pf evaluates the last
/// matching rule, so the refusal comes first and `quick` passes follow.
pub fn pf_anchor(interface: &str, grants: &[Grant]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# agentfed mesh firewall, anchor \"{PF_ANCHOR}\" (generated; do not edit)"
    );
    let _ = writeln!(out, "block return in on {interface} all");
    for grant in grants {
        let ports = match &grant.access {
            Access::Nothing => continue,
            Access::Everything => {
                let _ = writeln!(
                    out,
                    "pass in quick on {interface} inet from {} to any keep state # {} {}",
                    grant.mesh_ip, grant.node_id, grant.level
                );
                continue;
            }
            Access::TcpPorts(ports) => ports,
        };
        let list: Vec<String> = ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}:{hi}")
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "pass in quick on {interface} inet proto tcp from {} to any port {{ {} }} keep state # {} {}",
            grant.mesh_ip,
            list.join(", "),
            grant.node_id,
            grant.level
        );
    }
    out
}

/// A wg-quick configuration for this node and `mesh`'s peers. The private
/// key goes only into this file (written 0600 by `wg stage`).
pub fn wg_quick(
    local: &LocalNode,
    private_key: &[u8; 32],
    listen_port: u16,
    mesh: &DesiredMesh,
) -> String {
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# agentfed mesh (generated by agentfed; the private key makes this file secret)"
    );
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "PrivateKey = {}", b64(private_key));
    let _ = writeln!(out, "Address = {}/{}", local.mesh_ip, local.subnet.prefix());
    let _ = writeln!(out, "ListenPort = {listen_port}");
    for peer in &mesh.peers {
        let _ = writeln!(out);
        let _ = writeln!(out, "# {}", peer.node_id);
        let _ = writeln!(out, "[Peer]");
        let _ = writeln!(out, "PublicKey = {}", b64(&peer.public_key));
        let ips: Vec<String> = peer
            .allowed_ips
            .iter()
            .map(|(ip, prefix)| format!("{ip}/{prefix}"))
            .collect();
        if ips.is_empty() {
            // A SUSPENDED peer: on the device, nothing routed to it.
            let _ = writeln!(out, "# AllowedIPs: none (suspended)");
        } else {
            let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "Endpoint = {endpoint}");
        }
        if peer.persistent_keepalive > 0 {
            let _ = writeln!(out, "PersistentKeepalive = {}", peer.persistent_keepalive);
        }
    }
    out
}

/// The `wg set` commands that bring a device to `mesh`'s peers from
/// nothing (what `wg plan` prints for changes, and `wg stage` for hand
/// application).
pub fn wg_set_line(interface: &str, change: &super::uapi::DeviceChange) -> String {
    use super::uapi::DeviceChange;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    match change {
        DeviceChange::Interface { listen_port, .. } => {
            format!("wg set {interface} listen-port {listen_port} private-key ./wireguard.key")
        }
        DeviceChange::UpsertPeer {
            public_key,
            endpoint,
            persistent_keepalive,
            allowed_ips,
        } => {
            let ips: Vec<String> = allowed_ips
                .iter()
                .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                .collect();
            let mut line = format!("wg set {interface} peer {}", b64(public_key));
            if let Some(endpoint) = endpoint {
                let _ = write!(line, " endpoint {endpoint}");
            }
            let _ = write!(
                line,
                " persistent-keepalive {persistent_keepalive} allowed-ips '{}'",
                ips.join(",")
            );
            line
        }
        DeviceChange::RemovePeer { public_key } => {
            format!("wg set {interface} peer {} remove", b64(public_key))
        }
    }
}
