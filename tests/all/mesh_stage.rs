//! `agentfed wg stage`: the Phase 7 bundle for hand application, for one
//! peer given on the command line and from the node's own peers (through
//! the daemon and with it stopped), with every hand-given field checked
//! as the mesh checks it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::Value;

use crate::harness::{Node, fed_node};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A WireGuard public key another node really has.
fn some_wg_key() -> String {
    let other = Node::init("other");
    crate::harness::manifest_field(&other, "wg_public_key")
}

#[test]
fn one_peer_given_by_hand_is_staged_with_the_node_s_key_and_checked_fields() {
    let node = Node::init("alpha");
    let key = some_wg_key();
    let out = node.dir.path().join("stage");
    let o = out.to_str().expect("utf-8");
    let staged = node
        .run(&[
            "wg",
            "stage",
            "--out",
            o,
            "--peer",
            "beta",
            "--peer-key",
            &key,
            "--peer-mesh-ip",
            "198.18.9.1",
            "--peer-endpoint",
            "192.0.2.2:51820",
            "--peer-level",
            "trusted",
            "--json",
        ])
        .json();
    assert_eq!(staged["peers"], 1, "{staged}");
    assert_eq!(mode(&out), 0o700);
    let names = [
        "wg-key-alpha.json",
        "agentfed0.conf",
        "agentfed0.nft.json",
        "agentfed0.pf",
        "APPLY.txt",
    ];
    for name in names {
        assert_eq!(mode(&out.join(name)), 0o600, "{name}");
    }
    // The key file and the configuration hold the node's own key.
    let own_private = std::fs::read_to_string(node.home.join("wireguard.key")).expect("key");
    let own_private = own_private.trim();
    let key_file: Value = serde_json::from_str(&read(&out, "wg-key-alpha.json")).expect("json");
    assert_eq!(key_file["private_key"], own_private);
    assert_eq!(
        key_file["public_key"],
        crate::harness::manifest_field(&node, "wg_public_key").as_str()
    );
    let conf = read(&out, "agentfed0.conf");
    for line in [
        format!("PrivateKey = {own_private}"),
        format!("PublicKey = {key}"),
        "AllowedIPs = 198.18.9.1/32".to_string(),
        "Endpoint = 192.0.2.2:51820".to_string(),
        "ListenPort = 51820".to_string(),
    ] {
        assert!(conf.contains(&line), "{line} not in {conf}");
    }
    // TRUSTED reaches 22 and 80-443 in both firewall renders.
    let nft: Value = serde_json::from_str(&read(&out, "agentfed0.nft.json")).expect("nft json");
    let nft_text = nft.to_string();
    assert!(
        nft_text.contains("198.18.9.1") && nft_text.contains("443"),
        "{nft_text}"
    );
    let pf = read(&out, "agentfed0.pf");
    assert!(pf.contains("198.18.9.1") && pf.contains("22"), "{pf}");
    let apply = read(&out, "APPLY.txt");
    assert!(apply.contains("wg-quick up agentfed0"), "{apply}");
    assert!(apply.contains("nft -j -f agentfed0.nft.json"), "{apply}");
    assert!(!apply.contains(own_private), "the key stays in its files");
}

#[test]
fn a_bad_hand_given_field_is_refused_and_nothing_is_written() {
    let node = Node::init("alpha");
    let key = some_wg_key();
    let out = node.dir.path().join("stage");
    let o = out.to_str().expect("utf-8");
    let base = |field: &str, value: &str| {
        let mut args: Vec<String> = [
            "wg",
            "stage",
            "--out",
            o,
            "--peer",
            "beta",
            "--peer-key",
            &key,
            "--peer-mesh-ip",
            "198.18.9.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let at = args.iter().position(|a| a == field);
        match at {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([field.to_string(), value.to_string()]),
        }
        args
    };
    let cases = [
        ("--peer-key", "not base64\n[Peer]", "--peer-key"),
        (
            "--peer-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "--peer-key",
        ),
        ("--peer-mesh-ip", "10.0.0.1", "--peer-mesh-ip"),
        (
            "--peer-mesh-ip",
            "198.18.9.1\nPostUp = rm -rf /",
            "--peer-mesh-ip",
        ),
        (
            "--peer-endpoint",
            "192.0.2.2:51820\nPostUp = x",
            "--peer-endpoint",
        ),
        ("--peer-endpoint", "host name:1", "--peer-endpoint"),
        ("--peer", "Beta\"", "--peer"),
        ("--peer-level", "godlike", "--peer-level"),
    ];
    for (field, value, named) in cases {
        let args = base(field, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = node.run(&args);
        run.fails(2, &[named]);
        assert!(!out.exists(), "{field} {value:?} wrote something");
    }
    // The peer's fields need --peer.
    let run = node.run(&["wg", "stage", "--out", o, "--peer-key", &key]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!out.exists());
}

#[test]
fn the_node_s_own_peers_are_staged_through_the_daemon_and_with_it_stopped() {
    let (mut alpha, _) = fed_node("alpha");
    let beta = Node::init("beta");
    let manifest = beta.manifest_file("beta.manifest.json");
    alpha
        .run(&["peers", "add", manifest.to_str().expect("utf-8")])
        .ok();
    let beta_key = crate::harness::manifest_field(&beta, "wg_public_key");
    let beta_ip = crate::harness::manifest_field(&beta, "mesh_ip");
    let live = alpha.dir.path().join("live");
    alpha
        .run(&["wg", "stage", "--out", live.to_str().expect("utf-8")])
        .ok();
    let conf = read(&live, "agentfed0.conf");
    assert!(conf.contains(&format!("PublicKey = {beta_key}")), "{conf}");
    assert!(
        conf.contains(&format!("AllowedIPs = {beta_ip}/32")),
        "{conf}"
    );
    alpha.stop();
    let offline = alpha.dir.path().join("offline");
    alpha
        .run(&["wg", "stage", "--out", offline.to_str().expect("utf-8")])
        .ok();
    for name in ["agentfed0.conf", "agentfed0.nft.json", "agentfed0.pf"] {
        assert_eq!(read(&live, name), read(&offline, name), "{name}");
    }
}
