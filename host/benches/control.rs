//! `status` round trips over the control socket against a real daemon.
//!
//! ```text
//! cargo bench -p agentfed --bench control
//! ```
//!
//! Starts `agentfed init` + `agentfed daemon` in a temp home, then measures
//! (a) `status` on one kept-open connection, (b) connect + `status` per
//! call, (c) a whole `agentfed status --json` process, and (d) a mutating
//! call (`spend.report`, several fsyncs) for comparison.

use std::process::Stdio;
use std::time::{Duration, Instant};

use agentfed::control::client::Client;
use serde_json::json;

mod support;
use support::{DaemonGuard, agentfed};

fn report(label: &str, mut samples_us: Vec<u64>) {
    samples_us.sort_unstable();
    let n = samples_us.len();
    let pct = |p: f64| {
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        samples_us[i] as f64 / 1000.0
    };
    println!(
        "{label:<34} n={n:<6} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn time<F: FnMut()>(n: usize, mut f: F) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_micros() as u64
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let peer_home = dir.path().join("peer");
    for (h, id) in [(&home, "bench-node"), (&peer_home, "bench-peer")] {
        let status = agentfed(h)
            .args(["init", "--node-id", id, "--mesh-subnet", "198.18.0.0/15"])
            .stdout(Stdio::null())
            .status()
            .expect("init");
        assert!(status.success(), "init failed");
    }
    let manifest = agentfed(&peer_home)
        .arg("manifest")
        .output()
        .expect("manifest");
    let manifest_path = dir.path().join("peer.json");
    std::fs::write(&manifest_path, &manifest.stdout).expect("writing manifest");

    let daemon = agentfed(&home)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let _guard = DaemonGuard(daemon);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut client = loop {
        if let Ok(mut c) = Client::connect(&home)
            && c.call("status", json!({})).is_ok()
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not start within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    client
        .call(
            "peers.add",
            json!({"manifest": String::from_utf8_lossy(&manifest.stdout)}),
        )
        .expect("peers.add");

    // Warm up.
    for _ in 0..200 {
        client.call("status", json!({})).expect("status");
    }
    report(
        "status, kept-open connection",
        time(5000, || {
            client.call("status", json!({})).expect("status");
        }),
    );
    report(
        "connect + status",
        time(2000, || {
            Client::connect(&home)
                .expect("connect")
                .call("status", json!({}))
                .expect("status");
        }),
    );
    report(
        "`agentfed status --json` process",
        time(100, || {
            let out = agentfed(&home)
                .args(["status", "--json"])
                .output()
                .expect("agentfed status");
            assert!(out.status.success());
        }),
    );
    let mut i = 0;
    report(
        "spend.report (durable, 2 plugins)",
        time(1000, || {
            i += 1;
            client
                .call(
                    "spend.report",
                    json!({"peer": "bench-peer", "task_id": format!("t{i}"), "tokens": 10, "usd": 0.0, "success": true}),
                )
                .expect("spend.report");
        }),
    );
}
