//! The userspace WireGuard device API against a real wireguard-go, started
//! in a network namespace the test creates (docs/mesh.md, "Devices").

use std::net::Ipv4Addr;
use std::path::Path;

use agentfed::mesh::uapi::{DeviceChange, UapiDevice};

use crate::netns::{Netns, UAPI_DIR, skipped, unique_name};

#[test]
fn uapi_sets_and_reads_back_peers_on_a_real_wireguard_go() {
    if skipped("uapi_sets_and_reads_back_peers_on_a_real_wireguard_go") {
        return;
    }
    let mut ns = Netns::new();
    let interface = unique_name("afwg");
    ns.start_wireguard_go(&interface);
    let device = UapiDevice::new(Path::new(UAPI_DIR), &interface);

    let private = [9u8; 32];
    let public =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes();
    let (a, b) = ([0x11; 32], [0x22; 32]);
    device
        .set(&[
            DeviceChange::Interface {
                private_key: private,
                listen_port: 51999,
            },
            DeviceChange::UpsertPeer {
                public_key: a,
                endpoint: Some("192.0.2.7:51820".parse().expect("addr")),
                persistent_keepalive: 25,
                allowed_ips: vec![(Ipv4Addr::new(198, 18, 0, 7), 32)],
            },
            DeviceChange::UpsertPeer {
                public_key: b,
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: vec![(Ipv4Addr::new(198, 18, 0, 8), 32)],
            },
        ])
        .expect("set");
    let state = device.get().expect("get");
    assert_eq!(state.public_key, Some(public));
    assert_eq!(state.listen_port, 51999);
    assert_eq!(state.peers.len(), 2);
    assert_eq!(
        state.peers[&a].endpoint,
        Some("192.0.2.7:51820".parse().expect("addr"))
    );
    assert_eq!(state.peers[&a].persistent_keepalive, 25);

    // Replacing allowed IPs with none (a SUSPENDED peer), removing another.
    device
        .set(&[
            DeviceChange::UpsertPeer {
                public_key: a,
                endpoint: None,
                persistent_keepalive: 25,
                allowed_ips: vec![],
            },
            DeviceChange::RemovePeer { public_key: b },
        ])
        .expect("set");
    let state = device.get().expect("get");
    assert_eq!(state.peers.len(), 1);
    assert!(state.peers[&a].allowed_ips.is_empty(), "{state:?}");

    // What `wg` itself reads from the device agrees.
    let shown = ns.run(&["wg", "show", &interface, "allowed-ips"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("(none)"), "{text}");
}
