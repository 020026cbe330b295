//! The WireGuard mesh reconciler against a real userspace device.
//!
//! ```text
//! cargo bench -p agentfed --bench mesh
//! ```
//!
//! Needs root, `ip netns` and wireguard-go (as the namespace tests do).
//! Starts wireguard-go in a network namespace it creates (and removes),
//! then for 10, 100 and 1,000 peers measures one reconcile as the daemon
//! does it: desired state from the peer records, read the device over its
//! UAPI socket, diff, apply. Three cases: the first reconcile (every peer
//! added), a reconcile with nothing to change (the periodic drift check),
//! and one peer suspended (its allowed IPs cleared). The time from a
//! breaker SUSPEND to the first dropped packet is measured end to end by
//! the namespace test (`mesh_netns`, printed as `suspend → first drop`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentfed::identity::{Identity, ManifestParams, NodeId, SignedManifest};
use agentfed::mesh::desired::{LocalNode, desired};
use agentfed::mesh::diff::plan;
use agentfed::mesh::uapi::UapiDevice;
use agentfed::model::{BreakerState, PeerRecord, TrustLevel};
use base64::Engine as _;

const UAPI_DIR: &str = "/var/run/wireguard";

/// A namespace with wireguard-go in it, removed on drop.
struct Device {
    ns: String,
    interface: String,
    child: std::process::Child,
}

impl Device {
    fn start() -> Device {
        let ns = format!("afbench{}", std::process::id() % 100_000);
        let interface = format!("afbwg{}", std::process::id() % 100_000);
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add failed: the mesh bench needs root");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "wireguard-go", "-f", &interface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go (apt-get install wireguard-go)");
        let socket = Path::new(UAPI_DIR).join(format!("{interface}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "wireguard-go did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Device {
            ns,
            interface,
            child,
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.sock", self.interface)));
    }
}

/// `n` peer records with distinct keys and mesh IPs in 198.18.0.0/15, at
/// mixed trust levels.
fn peers(n: usize) -> Vec<PeerRecord> {
    let template = Identity::generate(
        &NodeId::parse("template").expect("id"),
        "wss://192.0.2.1:9100",
    )
    .expect("identity")
    .signed_manifest(&ManifestParams::new(Ipv4Addr::new(198, 18, 0, 1)), 1)
    .expect("manifest");
    (0..n)
        .map(|i| {
            let mut m = template.manifest.clone();
            m.node_id = format!("peer-{i}");
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            key[31] = 0x40;
            m.wg_public_key = base64::engine::general_purpose::STANDARD.encode(key);
            let ip = u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i as u32;
            m.mesh_ip = Ipv4Addr::from(ip).to_string();
            m.wg_endpoint = Some(format!("192.0.2.{}:51820", 1 + i % 250));
            let mut record = PeerRecord::new(
                SignedManifest {
                    manifest: m,
                    signature: template.signature.clone(),
                },
                1,
            );
            record.trust_level = [
                TrustLevel::Verified,
                TrustLevel::Attested,
                TrustLevel::Trusted,
            ][i % 3];
            record
        })
        .collect()
}

fn reconcile_ms(local: &LocalNode, records: &[PeerRecord], device: &UapiDevice) -> (f64, usize) {
    let started = Instant::now();
    let want = desired(local, records, &|e| e.parse().ok());
    let actual = device.get().expect("device state");
    let changes = plan(&want.peers, &actual);
    device
        .set(&changes.iter().map(|c| c.change.clone()).collect::<Vec<_>>())
        .expect("apply");
    (started.elapsed().as_secs_f64() * 1000.0, changes.len())
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    if std::env::var("AGENTFED_SKIP_NETNS").as_deref() == Ok("1") {
        println!("mesh bench SKIPPED: AGENTFED_SKIP_NETNS=1");
        return;
    }
    let local = LocalNode {
        subnet: "198.18.0.0/15".parse().expect("subnet"),
        mesh_ip: Ipv4Addr::new(198, 18, 0, 1),
        public_key: [0xee; 32],
        keepalive_secs: 25,
    };
    println!("reconcile against wireguard-go over UAPI (min / median / max of 5, ms)");
    for n in [10usize, 100, 1000] {
        let device = Device::start();
        let uapi = UapiDevice::new(Path::new(UAPI_DIR), &device.interface);
        let mut records = peers(n);
        let (first, added) = reconcile_ms(&local, &records, &uapi);
        assert_eq!(added, n);
        let noop: Vec<f64> = (0..5)
            .map(|_| {
                let (ms, changes) = reconcile_ms(&local, &records, &uapi);
                assert_eq!(changes, 0);
                ms
            })
            .collect();
        let one: Vec<f64> = (0..5)
            .map(|i| {
                let victim = (i * 7) % n;
                records[victim].breaker.state = BreakerState::Suspended;
                let (ms, changes) = reconcile_ms(&local, &records, &uapi);
                assert_eq!(changes, 1);
                records[victim].breaker.state = BreakerState::Active;
                reconcile_ms(&local, &records, &uapi);
                ms
            })
            .collect();
        let (nmin, nmed, nmax) = median(noop);
        let (omin, omed, omax) = median(one);
        println!(
            "{n:>5} peers  first (all added) {first:>8.2}   no change {nmin:>6.2} / {nmed:>6.2} / {nmax:>6.2}   one suspended {omin:>6.2} / {omed:>6.2} / {omax:>6.2}"
        );
    }
}
