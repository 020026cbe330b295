//! Inbound memory under hostile payloads (issue 16, item 1): one real
//! `agentfed daemon` (release build) on 127.0.0.1 and raw peers built from
//! the transport's pieces, sending hand-signed envelopes over real TLS
//! sessions.
//!
//! ```text
//! cargo bench -p agentfed --bench inbound_memory
//! ```
//!
//! Phases, each followed by the daemon's peak resident memory (`VmHWM`
//! from `/proc/<pid>/status`, which only grows) and the CPU it used:
//! 1. idle: the daemon started, one raw session, one ping answered;
//! 2. one VERIFIED session sends the worst it may: `ping`s at the 8 KiB
//!    limit shaped `[0,0,…]`, `["a","a",…]` and nested arrays, 64 in
//!    flight at a time, plus 16 MiB envelopes of the flat shapes (the
//!    security review's attack), 4 in flight;
//! 3. 16 more VERIFIED sessions do the same at once;
//! 4. 16 TRUSTED sessions at once each send `context-share`s at the bulk
//!    limit (16 MiB frames of 16 Ki strings of ~1 KB: the most strings and
//!    bytes a PII call may take), 2 in flight per session: these are
//!    accepted and go through the PII plugin, the handler and the inbox,
//!    so this phase shows the node-wide inbound budget at work. The PII
//!    plugin's deadline is raised to 1 s for this (`[plugins.pii.limits]
//!    deadline_ms`): a call at both caps needs ~45 ms of the default
//!    50 ms, and a timeout would refuse the message before the handler
//!    and the inbox, the costlier half of the path.
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a quick
//! version: 2 sessions instead of 16, fewer rounds, the debug binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentfed::budget::Budget;
use agentfed::envelope::{ENVELOPE_DOMAIN, Envelope, SignedEnvelope, random_id};
use agentfed::federation::WireReply;
use agentfed::identity::{Identity, ManifestParams, NodeId};
use agentfed::limits::{
    BULK_FRAME_BYTES, MAX_PII_SCAN_BYTES, MAX_PII_SCAN_VALUES, SMALL_FRAME_BYTES,
};
use agentfed::transport::{
    AcceptAll, Connection, LocalNode, Pin, Priority, TransportConfig, connect,
};
use serde_json::{Value, json};

mod support;
use support::{DaemonGuard, agentfed, cli, free_port};

/// Longest wait for one request's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

struct Daemon {
    home: PathBuf,
    endpoint: String,
    guard: DaemonGuard,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let home = dir.join("alpha");
        let endpoint = format!("wss://127.0.0.1:{}", free_port());
        cli(
            &home,
            &[
                "init",
                "--node-id",
                "alpha",
                "--endpoint",
                &endpoint,
                "--mesh-subnet",
                "198.18.0.0/15",
            ],
        );
        // See phase 4 in the module docs.
        let config_path = home.join("agentfed.toml");
        let config = std::fs::read_to_string(&config_path).expect("config");
        let at = config
            .find("[plugins.pii.limits]")
            .expect("a [plugins.pii.limits] section");
        let (head, tail) = config.split_at(at);
        let tail = tail.replacen("deadline_ms = 50", "deadline_ms = 1000", 1);
        assert!(tail.contains("deadline_ms = 1000"), "{tail}");
        std::fs::write(&config_path, format!("{head}{tail}")).expect("config");
        let child = agentfed(&home)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the daemon");
        let guard = DaemonGuard(child);
        let deadline = Instant::now() + Duration::from_secs(300);
        while agentfed(&home)
            .args(["status", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            home,
            endpoint,
            guard,
        }
    }

    fn pin(&self) -> Pin {
        let manifest: Value = serde_json::from_str(&cli(&self.home, &["manifest"])).unwrap();
        Pin::Fingerprint(
            manifest["manifest"]["tls_fingerprint"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    fn proc_status(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guard.0.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("a kB field")
            * 1024
    }

    /// Peak resident memory so far.
    fn peak(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    /// Resident memory now.
    fn rss(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    /// CPU time used so far (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.guard.0.id()))
            .expect("proc stat");
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }
}

/// A hand-made peer: its own identity, known to the daemon through
/// `peers add` (VERIFIED), or raised with `trust set`.
struct Raw {
    name: String,
    node: LocalNode,
}

impl Raw {
    fn new(name: &str, daemon: &Daemon, level: Option<&str>) -> Raw {
        let id = NodeId::parse(name).expect("node id");
        let endpoint = format!("wss://127.0.0.1:{}", free_port());
        let identity = Arc::new(Identity::generate(&id, &endpoint).expect("identity"));
        let subnet = "198.18.0.0/15".parse().expect("subnet");
        let ip = identity.mesh_ip(&subnet, &|_| false).expect("mesh ip");
        let manifest = identity
            .signed_manifest(&ManifestParams::new(ip), now_ms())
            .expect("manifest");
        let path = daemon.home.join(format!("{name}.manifest.json"));
        std::fs::write(&path, manifest.to_json()).expect("manifest file");
        cli(&daemon.home, &["peers", "add", path.to_str().unwrap()]);
        if let Some(level) = level {
            for step in ["attested", level] {
                cli(
                    &daemon.home,
                    &[
                        "trust",
                        "set",
                        name,
                        step,
                        "--reason",
                        "inbound memory bench",
                    ],
                );
            }
        }
        Raw {
            name: name.to_string(),
            node: LocalNode::new(identity, manifest).expect("local node"),
        }
    }

    async fn connect(&self, daemon_endpoint: &str, pin: Pin) -> Connection {
        let config = TransportConfig {
            // Send more than the daemon accepts.
            max_message_size: 32 << 20,
            ..TransportConfig::default()
        };
        connect(daemon_endpoint, pin, &self.node, &config, &AcceptAll)
            .await
            .expect("a session")
    }

    /// A signed frame whose payload is `payload_json` verbatim.
    fn frame(&self, session: &str, message_type: &str, payload_json: &str) -> Vec<u8> {
        let envelope = Envelope {
            id: random_id(),
            source: self.name.clone(),
            target: "alpha".into(),
            session: Some(session.to_string()),
            message_type: message_type.into(),
            payload: Value::Null,
            timestamp_ms: now_ms(),
            nonce: random_id(),
            hop_count: 1,
            budget: Budget::with_default_hops(1000, 1.0).expect("budget"),
        };
        let bytes = serde_json::to_vec(&envelope).expect("envelope JSON");
        let marker = b"\"payload\":null";
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("payload field");
        let mut out = Vec::with_capacity(bytes.len() + payload_json.len());
        out.extend_from_slice(&bytes[..at + marker.len() - 4]);
        out.extend_from_slice(payload_json.as_bytes());
        out.extend_from_slice(&bytes[at + marker.len()..]);
        let mut input = ENVELOPE_DOMAIN.to_vec();
        input.extend_from_slice(&out);
        let signature = self.node.identity().sign(&input).to_bytes();
        SignedEnvelope {
            bytes: out,
            signature,
        }
        .to_frame()
    }
}

/// `[0,0,…]`, `["a","a",…]` or nested arrays, at most `len` bytes.
fn hostile(shape: &str, len: usize) -> String {
    match shape {
        "zeros" => format!("[{}0]", "0,".repeat((len - 1) / 2 - 1)),
        "strings" => format!("[{}\"a\"]", "\"a\",".repeat((len - 1) / 4 - 1)),
        "nested" => format!("{}{}", "[".repeat(len / 2), "]".repeat(len / 2)),
        other => panic!("no shape {other}"),
    }
}

/// The bulk worst case: the most strings a PII call takes, of equal
/// length, filling a frame of at most `len` bytes.
fn bulk_strings(len: usize) -> String {
    let n = MAX_PII_SCAN_VALUES;
    // `"…",` around each in the frame; each value's path ("/16383") counts
    // with it in the PII call.
    let each = ((len - 2) / n - 3).min(MAX_PII_SCAN_BYTES / n - 6);
    let one = format!("\"{}\"", "s".repeat(each));
    format!("[{}]", vec![one; n].join(","))
}

/// What the daemon answered: refusal codes and acknowledgement statuses.
#[derive(Default)]
struct Tally(std::collections::BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, outcome: &Result<Vec<u8>, agentfed::transport::TransportError>) {
        let key = match outcome {
            Ok(bytes) => match serde_json::from_slice::<WireReply>(bytes) {
                Ok(WireReply::Ack(ack)) => format!("ack:{:?}", ack.status),
                Ok(WireReply::Refused(code)) => code,
                Err(_) => "unreadable".into(),
            },
            Err(e) => format!("reset:{}", e.code()),
        };
        *self.0.entry(key).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }
}

/// Sends every frame `frames` yields, `in_flight` at a time.
async fn pump(conn: &Connection, frames: Vec<Vec<u8>>, in_flight: usize) -> Tally {
    use futures::StreamExt as _;
    let mut tally = Tally::default();
    let mut replies = futures::stream::iter(frames.into_iter().map(|frame| {
        let priority = if frame.len() > 64 * 1024 {
            Priority::Bulk
        } else {
            Priority::Interactive
        };
        conn.request(priority, frame, REQUEST_TIMEOUT)
    }))
    .buffer_unordered(in_flight);
    while let Some(outcome) = replies.next().await {
        tally.add(&outcome);
    }
    tally
}

/// One VERIFIED session's worst: each small shape at the 8 KiB limit
/// (`small_rounds` of each, 64 in flight), then the 16 MiB flat shapes
/// (`big_rounds` of each, 4 in flight).
async fn verified_attack(
    raw: Arc<Raw>,
    conn: Arc<Connection>,
    small_rounds: usize,
    big_rounds: usize,
) -> Tally {
    let session = conn.session().session_id.clone();
    let overhead = raw.frame(&session, "ping", "0").len() - 1;
    let mut tally = Tally::default();
    let mut small = Vec::new();
    for _ in 0..small_rounds {
        for shape in ["zeros", "strings", "nested"] {
            small.push(raw.frame(
                &session,
                "ping",
                &hostile(shape, SMALL_FRAME_BYTES - overhead),
            ));
        }
    }
    tally.merge(pump(&conn, small, 64).await);
    for shape in ["zeros", "strings"] {
        let payload = hostile(shape, BULK_FRAME_BYTES - overhead);
        let big = (0..big_rounds)
            .map(|_| raw.frame(&session, "ping", &payload))
            .collect();
        tally.merge(pump(&conn, big, 4).await);
    }
    tally
}

/// One TRUSTED session's bulk worst: `rounds` context-shares at the bulk
/// limit, 2 in flight.
async fn trusted_bulk(raw: Arc<Raw>, conn: Arc<Connection>, rounds: usize) -> Tally {
    let session = conn.session().session_id.clone();
    let overhead = raw.frame(&session, "context-share", "0").len() - 1;
    let payload = bulk_strings(BULK_FRAME_BYTES - overhead);
    let frames = (0..rounds)
        .map(|_| raw.frame(&session, "context-share", &payload))
        .collect();
    pump(&conn, frames, 2).await
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

struct Phase {
    name: String,
    peak: u64,
    rss: u64,
    cpu: Duration,
    secs: f64,
    tally: Tally,
}

fn report(phases: &[Phase], idle_peak: u64) {
    println!();
    println!(
        "| phase | daemon peak RSS (VmHWM) | above idle | RSS after | daemon CPU | wall | answers |"
    );
    println!("|---|---|---|---|---|---|---|");
    for p in phases {
        let answers: Vec<String> = p.tally.0.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        println!(
            "| {} | {:.0} MB | {:.0} MB | {:.0} MB | {:.2} s | {:.1} s | {} |",
            p.name,
            mb(p.peak),
            mb(p.peak.saturating_sub(idle_peak)),
            mb(p.rss),
            p.cpu.as_secs_f64(),
            p.secs,
            answers.join(", ")
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // gets a quick run that only shows the benchmark still works.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (sessions, small_rounds, big_rounds, bulk_rounds) =
        if quick { (2, 4, 1, 1) } else { (16, 64, 3, 3) };
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!("starting the daemon…");
    let daemon = Daemon::start(dir.path());
    let pin = daemon.pin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut phases = Vec::new();
    let mut measure = |name: String, started: Instant, cpu_before: Duration, tally: Tally| {
        phases.push(Phase {
            name,
            peak: daemon.peak(),
            rss: daemon.rss(),
            cpu: daemon.cpu().saturating_sub(cpu_before),
            secs: started.elapsed().as_secs_f64(),
            tally,
        });
    };

    // 1. idle, one session, one ping.
    let first = Arc::new(Raw::new("raw-0", &daemon, None));
    let conn = Arc::new(rt.block_on(first.connect(&daemon.endpoint, pin.clone())));
    let (started, cpu) = (Instant::now(), daemon.cpu());
    let session = conn.session().session_id.clone();
    let ping = first.frame(&session, "ping", &json!({"n": 1}).to_string());
    let tally = rt.block_on(pump(&conn, vec![ping], 1));
    assert!(tally.0.contains_key("ack:Replied"), "{:?}", tally.0);
    std::thread::sleep(Duration::from_millis(500));
    let idle_peak = daemon.peak();
    measure("idle, one session".into(), started, cpu, tally);

    // 2. one VERIFIED session.
    let (started, cpu) = (Instant::now(), daemon.cpu());
    let tally = rt.block_on(verified_attack(
        first.clone(),
        conn.clone(),
        small_rounds,
        big_rounds,
    ));
    measure(
        "one VERIFIED session, worst case".into(),
        started,
        cpu,
        tally,
    );

    // 3. more VERIFIED sessions at once.
    let raws: Vec<Arc<Raw>> = (1..=sessions)
        .map(|i| Arc::new(Raw::new(&format!("raw-{i}"), &daemon, None)))
        .collect();
    let conns: Vec<Arc<Connection>> = raws
        .iter()
        .map(|r| Arc::new(rt.block_on(r.connect(&daemon.endpoint, pin.clone()))))
        .collect();
    let (started, cpu) = (Instant::now(), daemon.cpu());
    let tally = rt.block_on(async {
        let tasks: Vec<_> = raws
            .iter()
            .zip(&conns)
            .map(|(r, c)| {
                tokio::spawn(verified_attack(
                    r.clone(),
                    c.clone(),
                    small_rounds,
                    big_rounds,
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for t in tasks {
            tally.merge(t.await.expect("attack task"));
        }
        tally
    });
    measure(
        format!("{sessions} VERIFIED sessions at once, worst case"),
        started,
        cpu,
        tally,
    );
    for c in &conns {
        c.close("NORMAL");
    }

    // 4. TRUSTED sessions sending accepted bulk payloads.
    let trusted: Vec<Arc<Raw>> = (1..=sessions)
        .map(|i| Arc::new(Raw::new(&format!("bulk-{i}"), &daemon, Some("trusted"))))
        .collect();
    let tconns: Vec<Arc<Connection>> = trusted
        .iter()
        .map(|r| Arc::new(rt.block_on(r.connect(&daemon.endpoint, pin.clone()))))
        .collect();
    let (started, cpu) = (Instant::now(), daemon.cpu());
    let tally = rt.block_on(async {
        let tasks: Vec<_> = trusted
            .iter()
            .zip(&tconns)
            .map(|(r, c)| tokio::spawn(trusted_bulk(r.clone(), c.clone(), bulk_rounds)))
            .collect();
        let mut tally = Tally::default();
        for t in tasks {
            tally.merge(t.await.expect("bulk task"));
        }
        tally
    });
    measure(
        format!("{sessions} TRUSTED sessions at once, 16 MiB context-shares (16 Ki strings each)"),
        started,
        cpu,
        tally,
    );

    // Still serving afterwards.
    let ping = first.frame(&session, "ping", &json!({"n": 2}).to_string());
    let tally = rt.block_on(pump(&conn, vec![ping], 1));
    assert!(
        tally.0.contains_key("ack:Replied"),
        "the first session is no longer served: {:?}",
        tally.0
    );
    for c in &tconns {
        c.close("NORMAL");
    }
    conn.close("NORMAL");
    drop(rt);
    report(&phases, idle_peak);
    if quick {
        return;
    }
    let one = phases[1].peak.saturating_sub(idle_peak);
    let many = phases[2].peak;
    println!();
    println!(
        "targets: one VERIFIED session ≤ 64 MB above idle: {:.0} MB ({}); {sessions} sessions peak under 256 MB: {:.0} MB ({})",
        mb(one),
        if one <= 64_000_000 { "met" } else { "MISSED" },
        mb(many),
        if many < 256_000_000 { "met" } else { "MISSED" },
    );
}
