//! The mesh's desired state and renders for a fixed set of peers at every
//! trust level and breaker state, compared with golden files in
//! `tests/golden/mesh/` (regenerate with `UPDATE_GOLDEN=1 cargo test -p
//! agentfed --test all mesh_render`, then review the diff); and every
//! peer-supplied field tried with hostile values: the peer is excluded
//! with a reason, and nothing of the value reaches any render.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use agentfed::identity::{Identity, ManifestParams, NodeId, SignedManifest};
use agentfed::mesh::desired::{DesiredMesh, LocalNode, desired};
use agentfed::mesh::render::{nft_ruleset, pf_anchor, wg_quick, wg_set_line};
use agentfed::mesh::uapi::DeviceChange;
use agentfed::model::{BreakerState, PeerRecord, TrustLevel};
use base64::Engine as _;

const INTERFACE: &str = "agentfed0";

fn local() -> LocalNode {
    LocalNode {
        subnet: "198.18.0.0/15".parse().expect("subnet"),
        mesh_ip: Ipv4Addr::new(198, 18, 0, 1),
        public_key: [0xee; 32],
        keepalive_secs: 25,
    }
}

fn template() -> SignedManifest {
    Identity::generate(
        &NodeId::parse("template").expect("id"),
        "wss://192.0.2.1:9100",
    )
    .expect("identity")
    .signed_manifest(&ManifestParams::new(Ipv4Addr::new(198, 18, 0, 2)), 1)
    .expect("manifest")
}

fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A peer record with the given fields (the signature is not checked by
/// the mesh: it relies on the store holding verified manifests, and
/// re-checks every field anyway).
fn record(
    template: &SignedManifest,
    node_id: &str,
    key: &str,
    mesh_ip: &str,
    wg_endpoint: Option<&str>,
    level: TrustLevel,
    breaker: BreakerState,
) -> PeerRecord {
    let mut m = template.manifest.clone();
    m.node_id = node_id.into();
    m.wg_public_key = key.into();
    m.mesh_ip = mesh_ip.into();
    m.wg_endpoint = wg_endpoint.map(str::to_string);
    let mut r = PeerRecord::new(
        SignedManifest {
            manifest: m,
            signature: template.signature.clone(),
        },
        1,
    );
    r.trust_level = level;
    r.breaker.state = breaker;
    r
}

/// Every trust level × breaker state, one peer each.
fn fixed_peers() -> Vec<PeerRecord> {
    let t = template();
    let mut out = Vec::new();
    let mut n = 0u8;
    for level in TrustLevel::ALL {
        for breaker in [
            BreakerState::Active,
            BreakerState::Suspended,
            BreakerState::Evicted,
        ] {
            n += 1;
            let name = format!(
                "{}-{}",
                level.to_string().to_lowercase(),
                breaker.to_string().to_lowercase()
            );
            let mut key = [n; 32];
            key[0] = 0x10 + n;
            out.push(record(
                &t,
                &name,
                &b64(&key),
                &format!("198.18.7.{n}"),
                n.is_multiple_of(2)
                    .then(|| format!("192.0.2.{n}:51820"))
                    .as_deref(),
                level,
                breaker,
            ));
        }
    }
    out
}

fn resolve(endpoint: &str) -> Option<SocketAddr> {
    endpoint.parse().ok()
}

/// Every render of `mesh`, named as the golden files are.
fn renders(mesh: &DesiredMesh) -> Vec<(&'static str, String)> {
    let nft = serde_json::to_string_pretty(&nft_ruleset(INTERFACE, &mesh.grants)).expect("json");
    let commands: Vec<String> = mesh
        .peers
        .iter()
        .map(|p| {
            wg_set_line(
                INTERFACE,
                &DeviceChange::UpsertPeer {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: p.allowed_ips.clone(),
                },
            )
        })
        .collect();
    vec![
        ("agentfed.nft.json", nft + "\n"),
        ("agentfed.pf.conf", pf_anchor(INTERFACE, &mesh.grants)),
        (
            "agentfed0.conf",
            wg_quick(&local(), &[0x42; 32], 51820, mesh),
        ),
        ("commands.sh", commands.join("\n") + "\n"),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/mesh")
}

#[test]
fn mesh_renders_for_every_trust_level_and_breaker_state_match_the_golden_files() {
    let mesh = desired(&local(), &fixed_peers(), &resolve);
    // UNTRUSTED and EVICTED peers are absent; SUSPENDED ones present with
    // no allowed IPs and no grant; 5 levels × 3 states → 8 present.
    assert_eq!(mesh.peers.len(), 8, "{mesh:#?}");
    assert!(mesh.excluded.is_empty(), "{:?}", mesh.excluded);
    for p in &mesh.peers {
        assert_eq!(
            p.node_id.ends_with("-suspended"),
            p.allowed_ips.is_empty(),
            "{p:?}"
        );
        assert!(!p.node_id.starts_with("untrusted") && !p.node_id.ends_with("-evicted"));
    }
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    for (name, text) in renders(&mesh) {
        let path = golden_dir().join(name);
        if update {
            std::fs::create_dir_all(golden_dir()).expect("golden dir");
            std::fs::write(&path, &text).expect("writing golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        assert_eq!(
            text,
            expected,
            "{name} differs from {} (UPDATE_GOLDEN=1 regenerates it; review the diff)",
            path.display()
        );
    }
}

#[test]
fn the_golden_nftables_ruleset_loads_into_a_real_nft() {
    if crate::netns::skipped("the_golden_nftables_ruleset_loads_into_a_real_nft") {
        return;
    }
    let ns = crate::netns::Netns::new();
    let path = golden_dir().join("agentfed.nft.json");
    let path = path.to_str().expect("utf-8");
    // Twice: the batch replaces the table, it does not fail on an existing one.
    ns.run(&["nft", "-j", "-f", path]);
    ns.run(&["nft", "-j", "-f", path]);
    let listed = ns.run(&["nft", "list", "table", "inet", "agentfed"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("tcp dport { 22, 80-443, 9100-9199 } accept"),
        "{text}"
    );
    assert!(
        text.contains("ip saddr 198.18.7.13 accept"),
        "PRIVILEGED: everything\n{text}"
    );
    assert!(text.contains("reject with tcp reset"), "{text}");
}

#[test]
fn hostile_peer_fields_exclude_the_peer_and_never_reach_a_render() {
    let t = template();
    let good_key = b64(&[0x21; 32]);
    let marker = "EVIL";
    let long = format!("{marker}{}", "a".repeat(300));
    // (field, node id, key, mesh ip, endpoint)
    let mut cases: Vec<(&str, String, String, String, Option<String>)> = Vec::new();
    for bad in [
        format!("{marker}\nx"),
        format!("{marker}\"x"),
        format!("{marker} x"),
        long.clone(),
        format!("-{marker}"),
    ] {
        cases.push(("node_id", bad, good_key.clone(), "198.18.9.1".into(), None));
    }
    for bad in [
        format!("{marker}\n"),
        format!("{marker}\"{}", "A".repeat(39)),
        " ".repeat(44),
        b64(&[0; 32]),
        base64::engine::general_purpose::STANDARD.encode([1u8; 31]),
        base64::engine::general_purpose::STANDARD.encode([1u8; 33]),
        b64(&[0xee; 32]),
        long.clone(),
    ] {
        cases.push((
            "wg_public_key",
            "peer-k".into(),
            bad,
            "198.18.9.2".into(),
            None,
        ));
    }
    for bad in [
        format!("198.18.9.3\n{marker}"),
        "198.18.9.3 ".to_string(),
        "\"198.18.9.3\"".to_string(),
        "10.0.0.1".into(),
        "198.18.0.0".into(),
        "198.19.255.255".into(),
        "198.18.0.1".into(),
        "198.18.009.3".into(),
        "256.18.9.3".into(),
        long.clone(),
    ] {
        cases.push(("mesh_ip", "peer-m".into(), good_key.clone(), bad, None));
    }
    for bad in [
        format!("192.0.2.1:51820\n{marker}"),
        format!("{marker} :51820"),
        format!("\"{marker}\":51820"),
        "192.0.2.1:0".into(),
        "192.0.2.1:65536".into(),
        "192.0.2.1".into(),
        format!("{long}:51820"),
    ] {
        cases.push((
            "wg_endpoint",
            "peer-e".into(),
            good_key.clone(),
            "198.18.9.4".into(),
            Some(bad),
        ));
    }
    for (field, node_id, key, ip, endpoint) in cases {
        let hostile = record(
            &t,
            &node_id,
            &key,
            &ip,
            endpoint.as_deref(),
            TrustLevel::Privileged,
            BreakerState::Active,
        );
        let fine = record(
            &t,
            "fine",
            &b64(&[0x33; 32]),
            "198.18.9.9",
            Some("192.0.2.9:51820"),
            TrustLevel::Verified,
            BreakerState::Active,
        );
        let mesh = desired(&local(), &[hostile, fine], &resolve);
        let what = format!(
            "{field} = {:?}",
            [&node_id, &key, &ip]
                .iter()
                .find(|v| v.contains(marker))
                .map(|s| s.as_str())
                .unwrap_or(endpoint.as_deref().unwrap_or(&ip))
        );
        assert_eq!(mesh.excluded.len(), 1, "{what}: {mesh:#?}");
        assert_eq!(mesh.excluded[0].field, field, "{what}: {:?}", mesh.excluded);
        assert!(
            !mesh.excluded[0].reason.contains(marker),
            "the reason echoes the value: {what}"
        );
        assert_eq!(mesh.peers.len(), 1, "{what}: only the fine peer");
        assert_eq!(mesh.peers[0].node_id, "fine");
        for (name, text) in renders(&mesh) {
            assert!(!text.contains(marker), "{what} reached {name}:\n{text}");
            assert!(
                !text.contains(&ip) || ip == "198.18.9.9" || ip == "198.18.0.1",
                "{what}: its mesh IP reached {name}"
            );
        }
    }
}

#[test]
fn peers_sharing_a_key_or_a_mesh_ip_are_both_kept_out() {
    let t = template();
    let key = b64(&[0x44; 32]);
    let a = record(
        &t,
        "a",
        &key,
        "198.18.9.1",
        None,
        TrustLevel::Trusted,
        BreakerState::Active,
    );
    let b = record(
        &t,
        "b",
        &key,
        "198.18.9.2",
        None,
        TrustLevel::Verified,
        BreakerState::Active,
    );
    let c = record(
        &t,
        "c",
        &b64(&[0x45; 32]),
        "198.18.9.3",
        None,
        TrustLevel::Verified,
        BreakerState::Active,
    );
    let d = record(
        &t,
        "d",
        &b64(&[0x46; 32]),
        "198.18.9.3",
        None,
        TrustLevel::Verified,
        BreakerState::Active,
    );
    let mesh = desired(&local(), &[a, b, c, d], &resolve);
    let out: Vec<(&str, &str)> = mesh
        .excluded
        .iter()
        .map(|e| (e.node_id.as_str(), e.field))
        .collect();
    assert_eq!(
        out,
        [
            ("a", "wg_public_key"),
            ("b", "wg_public_key"),
            ("c", "mesh_ip"),
            ("d", "mesh_ip")
        ]
    );
    assert!(mesh.peers.is_empty() && mesh.grants.is_empty());
}
