//! `federation_status` and `federation_send` round trips through the MCP
//! bridge (`agentfed mcp` over stdio) next to the same requests on the
//! control socket, against one real daemon.
//!
//! ```text
//! cargo bench -p agentfed --bench mcp
//! # options: AGENTFED_BENCH_N=2000 (calls per series), AGENTFED_BENCH_BIN=PATH (another build)
//! ```
//!
//! The bridge is driven with raw JSON-RPC lines on its stdin/stdout (one
//! request at a time), so the numbers are the bridge's and the daemon's,
//! not an MCP client library's. Sends go to a known ATTESTED peer that is
//! not running: each is checked, PII-scanned, signed and durably queued
//! (the same work on both paths) and stays in the outbox.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use agentfed::control::client::Client;
use serde_json::{Value, json};

mod support;
use support::{DaemonGuard, agentfed, cli};

/// Median and p99 of `samples_us`, in ms.
fn stats(samples_us: &mut [u64]) -> (f64, f64) {
    samples_us.sort_unstable();
    let n = samples_us.len();
    let pct = |p: f64| {
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        samples_us[i] as f64 / 1000.0
    };
    (pct(0.5), pct(0.99))
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

/// The bridge's stdio, spoken by hand.
struct Rpc {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Rpc {
    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .expect("request JSON");
        line.push(b'\n');
        self.stdin.write_all(&line).expect("writing to the bridge");
        loop {
            let mut answer = String::new();
            let n = self
                .stdout
                .read_line(&mut answer)
                .expect("reading the bridge");
            assert!(n > 0, "the bridge closed its stdout");
            let value: Value = serde_json::from_str(&answer).expect("response JSON");
            if value["id"] == json!(id) {
                return value;
            }
        }
    }

    fn notify(&mut self, method: &str) {
        let line = format!("{}\n", json!({"jsonrpc": "2.0", "method": method}));
        self.stdin
            .write_all(line.as_bytes())
            .expect("writing to the bridge");
    }

    fn tool(&mut self, name: &str, arguments: Value) {
        let answer = self.request("tools/call", json!({"name": name, "arguments": arguments}));
        assert_eq!(
            answer["result"]["isError"],
            json!(false),
            "{name} failed: {answer}"
        );
    }
}

fn main() {
    let n: usize = std::env::var("AGENTFED_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let peer_home = dir.path().join("peer");
    for (h, id) in [(&home, "bench-node"), (&peer_home, "bench-peer")] {
        cli(
            h,
            &["init", "--node-id", id, "--mesh-subnet", "198.18.0.0/15"],
        );
    }
    let manifest = cli(&peer_home, &["manifest"]);
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
        .call("peers.add", json!({"manifest": manifest}))
        .expect("peers.add");
    client
        .call(
            "trust.set",
            json!({"peer": "bench-peer", "level": "attested", "reason": "bench"}),
        )
        .expect("trust.set");

    let mut bridge = agentfed(&home)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agentfed mcp");
    let mut rpc = Rpc {
        stdin: bridge.stdin.take().expect("stdin"),
        stdout: BufReader::new(bridge.stdout.take().expect("stdout")),
        next: 0,
    };
    rpc.request(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}}),
    );
    rpc.notify("notifications/initialized");

    let send = json!({"peer": "bench-peer", "message_type": "task-assignment",
                      "payload": {"task": "benchmark"}});
    // Warm up both paths.
    for _ in 0..200 {
        client.call("status", json!({})).expect("status");
        rpc.tool("federation_status", json!({}));
    }
    let mut rows = Vec::new();
    let mut socket_status = time(n, || {
        client.call("status", json!({})).expect("status");
    });
    let mut bridge_status = time(n, || rpc.tool("federation_status", json!({})));
    let mut socket_send = time(n, || {
        client.call("send", send.clone()).expect("send");
    });
    let mut bridge_send = time(n, || rpc.tool("federation_send", send.clone()));
    rows.push((
        "status",
        stats(&mut socket_status),
        stats(&mut bridge_status),
    ));
    rows.push(("send", stats(&mut socket_send), stats(&mut bridge_send)));
    println!("n={n} calls per series, one at a time");
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "request", "socket median", "socket p99", "MCP median", "MCP p99", "MCP adds (med)"
    );
    for (name, (sm, sp), (bm, bp)) in rows {
        println!(
            "{name:<8} {sm:>11.3} ms {sp:>11.3} ms {bm:>11.3} ms {bp:>11.3} ms {:>11.3} ms",
            bm - sm
        );
    }
    drop(rpc);
    let _ = bridge.wait();
}
