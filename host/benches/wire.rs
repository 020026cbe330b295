//! The federation wire end to end: two real `agentfed daemon` processes
//! (release build) on 127.0.0.1 with a real TLS session between them.
//!
//! ```text
//! cargo bench -p agentfed --bench wire
//! ```
//!
//! Every message is a 1 KB `task-assignment` queued with the control API's
//! `send`: PII-scanned (Wasm plugin) and signed on the sender, written to
//! its durable outbox, delivered over the session, verified, PII-scanned
//! again and handled (Wasm plugin) on the receiver, committed to its inbox
//! and dedupe table, audited on both sides, and acknowledged; the sender
//! then removes it from its outbox. Nothing is faked or skipped.
//!
//! Measured:
//! (a) sustained throughput: `AGENTFED_BENCH_N` messages (default 20,000)
//!     queued by 4 control connections pipelining their requests; time
//!     until the receiver's inbox holds them all (and, separately, how
//!     fast the sender accepts them), the CPU each daemon and this
//!     benchmark's own clients used per message (all three share the
//!     cores, so their sum bounds the throughput), the daemons' threads'
//!     context switches per message, and the group commits of each state
//!     file;
//! (b) latency from the `send` call to the message being visible in the
//!     receiver's inbox, at a fixed offered rate (1,000/s, or 80% of the
//!     throughput from (a) when that is lower; `AGENTFED_BENCH_RATE`
//!     overrides), open loop: measured from each message's scheduled send
//!     time, so falling behind shows. The inbox is read with a long-poll
//!     (`inbox` with `wait_ms`: the daemon answers as soon as a message
//!     commits), so no polling interval adds to the latency or loads the
//!     receiver; 16 threads send, and the `send` call's own latency
//!     is reported too. `AGENTFED_BENCH_DUMP=FILE` writes each message's
//!     scheduled offset and latency (ms) to FILE, to look for stalls;
//! (c) `query ping` round trips idle and while 4 context-shares of 15 MiB
//!     each (60 MiB in all, each near the wire's 16 MiB frame limit) are
//!     in flight: queued through the control API's large-request slots,
//!     PII-scanned on both sides, written to both message logs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfed::control::client::Client;
use serde_json::{Value, json};

mod support;
use support::{DaemonGuard, agentfed, cli, free_port};

/// Control connections queueing in parallel in (a); each pipelines its
/// requests (the control API answers in order, up to 64 in progress).
const SENDERS: usize = 4;
/// Threads sending at the fixed rate in (b), one request at a time each.
const RATE_SENDERS: usize = 16;
/// Duration of the fixed-rate run in (b).
const RATE_RUN: Duration = Duration::from_secs(10);
/// Context-shares in (c) and the size of each payload string.
const SHARES: usize = 4;
const SHARE_BYTES: usize = 15 << 20;

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Daemon {
    home: PathBuf,
    endpoint: String,
    _guard: DaemonGuard,
}

impl Daemon {
    fn start(dir: &Path, name: &str, cache: &Path) -> Daemon {
        let home = dir.join(name);
        let endpoint = format!("wss://127.0.0.1:{}", free_port());
        cli(
            &home,
            &[
                "init",
                "--node-id",
                name,
                "--endpoint",
                &endpoint,
                "--mesh-subnet",
                "198.18.0.0/15",
            ],
        );
        std::os::unix::fs::symlink(cache, home.join("cache")).expect("linking the plugin cache");
        let config_path = home.join("agentfed.toml");
        let config = std::fs::read_to_string(&config_path).expect("config");
        let config = config
            .replace("retry_base_ms = 500", "retry_base_ms = 100")
            .replace("retry_max_ms = 60000", "retry_max_ms = 1000")
            .replace("redial_max_ms = 600000", "redial_max_ms = 1000");
        std::fs::write(&config_path, config).expect("config");
        let child = agentfed(&home)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the daemon");
        let guard = DaemonGuard(child);
        wait_until(
            &format!("{name}'s daemon to answer"),
            Duration::from_secs(300),
            || Client::connect(&home).is_ok_and(|mut c| c.call("status", json!({})).is_ok()),
        );
        Daemon {
            home,
            endpoint,
            _guard: guard,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.home).expect("control connection")
    }

    fn fingerprint(&self) -> String {
        let manifest: Value = serde_json::from_str(&cli(&self.home, &["manifest"])).unwrap();
        manifest["manifest"]["tls_fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// CPU time the daemon process has used so far (user + system).
    fn cpu(&self) -> Duration {
        process_cpu(&self._guard.0.id().to_string())
    }

    /// Context switches (voluntary + involuntary) of every thread alive
    /// now: each is a thread hand-off or a preemption.
    fn switches(&self) -> u64 {
        let tasks = format!("/proc/{}/task", self._guard.0.id());
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return 0;
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// CPU time used so far by the daemon's state-file writer thread
    /// (`agentfed-commit`: applies each batch to redb, commits it, waits
    /// for its `fdatasync`).
    fn writer_cpu(&self) -> Duration {
        let tasks = format!("/proc/{}/task", self._guard.0.id());
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|name| name.trim() == "agentfed-commit")
            })
            .map_or(Duration::ZERO, |t| stat_cpu(&t.path().join("stat")))
    }

    fn outbox(&self, c: &mut Client) -> u64 {
        c.call("status", json!({})).expect("status")["outbox"]
            .as_u64()
            .unwrap()
    }
}

/// A 1 KB payload of lowercase words (nothing the PII scan would flag).
fn payload(n: usize, seed: u64) -> Value {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = String::with_capacity(1000);
    while text.len() < 940 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 3 + (state % 7) as usize;
        for i in 0..len {
            text.push((b'a' + ((state >> (8 + i * 5)) % 26) as u8) as char);
        }
        text.push(' ');
    }
    json!({"task": "bench", "n": n, "text": text})
}

fn send(c: &mut Client, n: usize, seed: u64) {
    c.call(
        "send",
        json!({"peer": "beta", "message_type": "task-assignment", "payload": payload(n, seed)}),
    )
    .expect("send");
}

/// Queues one `send` per `k` on one control connection, pipelined: a
/// writer thread streams the requests while this thread reads the
/// responses (in request order) and checks each.
fn send_pipelined(home: &Path, ks: std::ops::Range<usize>) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(home.join("control.sock"))
        .expect("control connection");
    let mut writer = std::io::BufWriter::new(stream.try_clone().expect("clone"));
    let count = ks.len();
    let requests = std::thread::spawn(move || {
        for k in ks {
            let request = json!({"v": 1, "id": k, "method": "send", "params": {
                "peer": "beta", "message_type": "task-assignment", "payload": payload(k, k as u64)}});
            serde_json::to_writer(&mut writer, &request).expect("request");
            writer.write_all(b"\n").expect("request");
        }
        writer.flush().expect("request");
    });
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).expect("response");
        let response: Value = serde_json::from_str(&line).expect("response JSON");
        assert_eq!(response["ok"], true, "send failed: {line}");
    }
    requests.join().expect("request writer");
}

/// How long one inbox read waits for a message when there is none
/// (`wait_ms`, a long-poll: the daemon answers as soon as one commits).
const INBOX_WAIT_MS: u64 = 1_000;

/// Reads the receiver's inbox after `cursor`, first waiting (long-poll) for
/// a message if there is none yet; calls `f` on every message.
fn drain_inbox(c: &mut Client, cursor: &mut u64, mut f: impl FnMut(&Value)) -> usize {
    let mut count = 0;
    loop {
        let wait_ms = if count == 0 { INBOX_WAIT_MS } else { 0 };
        let page = c
            .call(
                "inbox",
                json!({"after": *cursor, "limit": 10_000, "wait_ms": wait_ms}),
            )
            .expect("inbox");
        let page = page.as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return count;
        }
        for m in &page {
            f(m);
        }
        count += page.len();
        *cursor = page.last().unwrap()["seq"].as_u64().unwrap();
    }
}

/// `(commits, jobs, busy µs)` of a daemon's state file so far.
fn commit_stats(c: &mut Client) -> (u64, u64, u64) {
    let status = c.call("status", json!({})).expect("status");
    let stats = &status["store_commits"];
    (
        stats["commits"].as_u64().expect("commits"),
        stats["jobs"].as_u64().expect("jobs"),
        stats["busy_us"].as_u64().expect("busy_us"),
    )
}

/// CPU time (user + system) process `pid` has used so far; `self` for
/// this benchmark's own process (the load generator).
fn process_cpu(pid: &str) -> Duration {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) from a `/proc/…/stat` file (a process's or a
/// thread's).
fn stat_cpu(path: &Path) -> Duration {
    let stat = std::fs::read_to_string(path).expect("reading /proc/…/stat");
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based), in clock ticks.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ: 100 on Linux for every architecture's user ABI.
    Duration::from_millis(ticks * 10)
}

/// The work every message needs whatever the implementation around it,
/// measured in this process on one thread (best of five passes), in µs
/// per message: an Ed25519
/// signature of a 1.2 KB envelope, its share of a 32-envelope batch
/// verification (the receiver's best case), and the plugin calls: two PII
/// scans of the payload (sender and receiver) and the receiver's handler,
/// by the default Wasm policies.
fn necessary_work(cache: &Path) -> (f64, f64, f64) {
    use agentfed::plugin::{
        Direction, HostContext, Limits, MessageView, PluginKind, PluginRuntime, PluginSource,
        RuntimeOptions, ScanRequest, StringValue, TrustLevel,
    };
    use ed25519_dalek::{Signer, SigningKey};
    const ROUNDS: usize = 1_024;
    /// The best of a few passes: a floor, so other activity on the shared
    /// VM during one pass must not raise it.
    const PASSES: usize = 5;
    let per_message = |mut pass: Box<dyn FnMut() + '_>| {
        (0..PASSES)
            .map(|_| {
                let started = Instant::now();
                pass();
                started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64
            })
            .fold(f64::INFINITY, f64::min)
    };

    let key = SigningKey::from_bytes(&[7; 32]);
    let envelopes: Vec<Vec<u8>> = (0..ROUNDS)
        .map(|i| {
            let text = payload(i, i as u64)["text"].to_string();
            json!({"id": i, "type": "task-assignment", "payload": {"text": text}})
                .to_string()
                .into_bytes()
        })
        .collect();
    let signatures: Vec<_> = envelopes.iter().map(|e| key.sign(e)).collect();
    let sign = per_message(Box::new(|| {
        for e in &envelopes {
            std::hint::black_box(key.sign(e));
        }
    }));
    let keys = vec![key.verifying_key(); 32];
    let verify = per_message(Box::new(|| {
        for (chunk, sigs) in envelopes.chunks(32).zip(signatures.chunks(32)) {
            let messages: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            ed25519_dalek::verify_batch(&messages, sigs, &keys[..chunk.len()]).expect("valid");
        }
    }));

    let runtime = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(cache.to_path_buf()),
    })
    .expect("plugin runtime");
    let load = |kind| {
        runtime
            .load(
                kind,
                PluginSource::Embedded(agentfed::embedded::default_name(kind)),
                HostContext::standalone("bench", Default::default(), [9; 32]),
                Limits::default(),
            )
            .expect("loading a default policy")
    };
    let (pii, handler) = (load(PluginKind::Pii), load(PluginKind::Handler));
    let requests: Vec<ScanRequest> = (0..ROUNDS)
        .map(|i| ScanRequest {
            direction: if i % 2 == 0 {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            peer_level: TrustLevel::Attested,
            message_type: "task-assignment".into(),
            values: vec![StringValue {
                path: "/text".into(),
                value: payload(i, i as u64)["text"].as_str().unwrap_or("").into(),
            }],
        })
        .collect();
    let scans = 2.0
        * per_message(Box::new(|| {
            for request in &requests {
                pii.scan_pii(request).expect("scan");
            }
        }));
    let views: Vec<MessageView> = (0..ROUNDS)
        .map(|i| MessageView {
            id: format!("{i:032x}"),
            source: "alpha".into(),
            message_type: "task-assignment".into(),
            payload_json: payload(i, i as u64).to_string(),
            sender_level: TrustLevel::Attested,
            hop_count: 0,
            sent_at_ms: 1_700_000_000_000,
        })
        .collect();
    let handled = per_message(Box::new(|| {
        for view in &views {
            handler.handle_message(view).expect("handler");
        }
    }));
    let plugins = scans + handled;
    (sign, verify, plugins)
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn main() {
    let n_total = env_usize("AGENTFED_BENCH_N").unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("plugin-cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    eprintln!("starting two daemons (the first start compiles the policy plugins)…");
    let alpha = Daemon::start(dir.path(), "alpha", &cache);
    let beta = Daemon::start(dir.path(), "beta", &cache);

    // Join both ways, pinned; raise trust to ATTESTED both ways. beta does
    // not know alpha yet, so the first join is refused (exit 1), but alpha
    // now knows beta; the second completes the session.
    let first = agentfed(&alpha.home)
        .args(["join", &beta.endpoint, "--fingerprint", &beta.fingerprint()])
        .stdin(Stdio::null())
        .output()
        .expect("running agentfed join");
    assert!(
        first.status.code() == Some(1)
            && String::from_utf8_lossy(&first.stderr).contains("refused the session"),
        "first join: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    cli(
        &beta.home,
        &[
            "join",
            &alpha.endpoint,
            "--fingerprint",
            &alpha.fingerprint(),
            "--json",
        ],
    );
    let mut a = alpha.client();
    let mut b = beta.client();
    wait_until("the session", Duration::from_secs(60), || {
        a.call("sessions", json!({}))
            .expect("sessions")
            .as_array()
            .is_some_and(|s| !s.is_empty())
    });
    for (d, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        cli(
            &d.home,
            &[
                "trust",
                "set",
                peer,
                "attested",
                "--reason",
                "wire benchmark",
            ],
        );
    }

    // Warm-up: plugins instantiated, session carrying traffic.
    let mut cursor = 0u64;
    for i in 0..200 {
        send(&mut a, i, i as u64);
    }
    let mut warm = 0;
    wait_until("the warm-up", Duration::from_secs(120), || {
        warm += drain_inbox(&mut b, &mut cursor, |_| {});
        warm >= 200
    });

    // ---- (a) sustained throughput ----
    let commits_before = [commit_stats(&mut a), commit_stats(&mut b)];
    let cpu_before = [alpha.cpu(), beta.cpu()];
    let client_cpu_before = process_cpu("self");
    let switches_before = [alpha.switches(), beta.switches()];
    let writer_cpu_before = [alpha.writer_cpu(), beta.writer_cpu()];
    let started = Instant::now();
    let per = n_total / SENDERS;
    let n = per * SENDERS;
    let queued_at = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..SENDERS)
        .map(|t| {
            let home = alpha.home.clone();
            let queued_at = queued_at.clone();
            std::thread::spawn(move || {
                let first = 1_000_000 + t * per;
                send_pipelined(&home, first..first + per);
                queued_at.lock().unwrap().push(Instant::now());
            })
        })
        .collect();
    let mut received = 0usize;
    let mut last_progress = Instant::now();
    while received < n {
        let got = drain_inbox(&mut b, &mut cursor, |_| {});
        if got > 0 {
            last_progress = Instant::now();
        }
        received += got;
        assert!(
            last_progress.elapsed() < Duration::from_secs(60),
            "no delivery progress for 60 s ({received}/{n})"
        );
    }
    let delivered = started.elapsed();
    for t in threads {
        t.join().expect("sender thread");
    }
    let queued = queued_at
        .lock()
        .unwrap()
        .iter()
        .max()
        .map(|t| *t - started)
        .unwrap_or(delivered);
    wait_until(
        "the sender's outbox to drain",
        Duration::from_secs(120),
        || alpha.outbox(&mut a) == 0,
    );
    let commits_after = [commit_stats(&mut a), commit_stats(&mut b)];
    // Threads that ended during the run are not counted (undercounts).
    let switches_per_message: Vec<f64> = [alpha.switches(), beta.switches()]
        .iter()
        .zip(switches_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / n as f64)
        .collect();
    // The clients below (JSON encoding of every request, reading every
    // response, polling the receiver's inbox) share the two cores.
    let client_cpu_per_message =
        (process_cpu("self") - client_cpu_before).as_secs_f64() * 1e6 / n as f64;
    let writer_cpu_per_message: Vec<f64> = [alpha.writer_cpu(), beta.writer_cpu()]
        .iter()
        .zip(writer_cpu_before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64() * 1e6 / n as f64)
        .collect();
    let cpu_per_message: Vec<f64> = [alpha.cpu(), beta.cpu()]
        .iter()
        .zip(cpu_before)
        .map(|(after, before)| (*after - before).as_secs_f64() * 1e6 / n as f64)
        .collect();
    let batching: Vec<(u64, f64, f64)> = (0..2)
        .map(|i| {
            let commits = commits_after[i].0 - commits_before[i].0;
            let jobs = commits_after[i].1 - commits_before[i].1;
            let busy = commits_after[i].2 - commits_before[i].2;
            (
                commits,
                jobs as f64 / commits.max(1) as f64,
                busy as f64 / 1000.0 / commits.max(1) as f64,
            )
        })
        .collect();
    let throughput = n as f64 / delivered.as_secs_f64();
    let enqueue_rate = n as f64 / queued.as_secs_f64();

    // ---- (b) latency at a fixed rate ----
    let rate = env_usize("AGENTFED_BENCH_RATE")
        .map(|r| r as f64)
        .unwrap_or_else(|| 1000f64.min((throughput * 0.8).floor()))
        .max(1.0);
    let count = (rate * RATE_RUN.as_secs_f64()) as usize;
    let t0 = Instant::now() + Duration::from_millis(200);
    let schedule: Arc<Vec<Instant>> = Arc::new(
        (0..count)
            .map(|i| t0 + Duration::from_secs_f64(i as f64 / rate))
            .collect(),
    );
    let send_ms = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let threads: Vec<_> = (0..RATE_SENDERS)
        .map(|t| {
            let home = alpha.home.clone();
            let schedule = schedule.clone();
            let send_ms = send_ms.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&home).expect("control connection");
                let mut i = t;
                while i < schedule.len() {
                    let at = schedule[i];
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let started = Instant::now();
                    send(&mut c, 2_000_000 + i, i as u64);
                    send_ms
                        .lock()
                        .unwrap()
                        .push(started.elapsed().as_secs_f64() * 1000.0);
                    i += RATE_SENDERS;
                }
            })
        })
        .collect();
    let mut seen_at: HashMap<usize, Instant> = HashMap::with_capacity(count);
    let deadline = Instant::now() + RATE_RUN + Duration::from_secs(120);
    while seen_at.len() < count {
        let now_seen = {
            let mut batch = Vec::new();
            drain_inbox(&mut b, &mut cursor, |m| {
                if let Some(k) = m["payload"]["n"].as_u64() {
                    batch.push(k as usize);
                }
            });
            batch
        };
        let at = Instant::now();
        for k in now_seen {
            if k >= 2_000_000 {
                seen_at.insert(k - 2_000_000, at);
            }
        }
        assert!(Instant::now() < deadline, "fixed-rate run did not complete");
    }
    for t in threads {
        t.join().expect("sender thread");
    }
    let rate_commits = commit_stats(&mut a);
    let receiver_rate_commits = commit_stats(&mut b);
    let mut lat: Vec<f64> = seen_at
        .iter()
        .map(|(i, at)| at.saturating_duration_since(schedule[*i]).as_secs_f64() * 1000.0)
        .collect();
    if let Ok(path) = std::env::var("AGENTFED_BENCH_DUMP") {
        // One line per message: scheduled offset (ms), latency (ms).
        let mut rows: Vec<(f64, f64)> = seen_at
            .iter()
            .map(|(i, at)| {
                (
                    (schedule[*i] - schedule[0]).as_secs_f64() * 1000.0,
                    at.saturating_duration_since(schedule[*i]).as_secs_f64() * 1000.0,
                )
            })
            .collect();
        rows.sort_by(|x, y| x.0.total_cmp(&y.0));
        let text: String = rows
            .iter()
            .map(|(t, l)| format!("{t:.3} {l:.3}\n"))
            .collect();
        std::fs::write(&path, text).expect("writing AGENTFED_BENCH_DUMP");
    }
    lat.sort_by(f64::total_cmp);
    let mut send_lat = send_ms.lock().unwrap().clone();
    let rate_before = commits_after[0];
    let rate_commit_ms = (rate_commits.2 - rate_before.2) as f64
        / 1000.0
        / (rate_commits.0 - rate_before.0).max(1) as f64;
    let rate_jobs =
        (rate_commits.1 - rate_before.1) as f64 / (rate_commits.0 - rate_before.0).max(1) as f64;
    let receiver_before = commits_after[1];
    let receiver_commits = (receiver_rate_commits.0 - receiver_before.0).max(1) as f64;
    let receiver_commit_ms =
        (receiver_rate_commits.2 - receiver_before.2) as f64 / 1000.0 / receiver_commits;
    let receiver_jobs = (receiver_rate_commits.1 - receiver_before.1) as f64 / receiver_commits;
    send_lat.sort_by(f64::total_cmp);
    let achieved = count as f64 / (schedule[count - 1] - schedule[0]).as_secs_f64().max(1e-9);
    wait_until(
        "the sender's outbox to drain",
        Duration::from_secs(120),
        || alpha.outbox(&mut a) == 0,
    );

    // ---- (c) ping during bulk context-shares ----
    // The trust plugin may have promoted both sides to TRUSTED already
    // (thousands of successful interactions): then `trust set` refuses
    // with ILLEGAL_TRANSITION, which is fine.
    for (d, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        let out = agentfed(&d.home)
            .args([
                "trust",
                "set",
                peer,
                "trusted",
                "--reason",
                "wire benchmark: context-share",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("trust set");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("already TRUSTED"),
            "trust set {peer} trusted: {err}"
        );
    }
    let mut ping_client = alpha.client();
    let mut ping = move || {
        let t = Instant::now();
        let r = ping_client
            .call(
                "query",
                json!({"peer": "beta", "message_type": "ping", "payload": {}}),
            )
            .expect("ping query");
        assert_eq!(r["status"], "replied", "{r}");
        (t, t.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..50 {
        ping();
    }
    let mut idle: Vec<f64> = (0..300).map(|_| ping().1).collect();
    idle.sort_by(f64::total_cmp);

    let blob: String = {
        let words = payload(0, 7)["text"].as_str().unwrap().to_string();
        words.repeat(SHARE_BYTES / words.len() + 1)[..SHARE_BYTES].to_string()
    };
    let pinger_stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(Mutex::new(Vec::new()));
    let pinger = {
        let stop = pinger_stop.clone();
        let pings = pings.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sample = ping();
                pings.lock().unwrap().push(sample);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let bulk_start = Instant::now();
    let mut share_client = alpha.client();
    for i in 0..SHARES {
        share_client
            .call(
                "send",
                json!({"peer": "beta", "message_type": "context-share",
                       "payload": {"n": 3_000_000 + i, "context": blob}}),
            )
            .expect("context-share send");
    }
    let bulk_queued = bulk_start.elapsed();
    let mut shares_in = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while shares_in < SHARES {
        let page = b
            .call(
                "inbox",
                json!({"after": cursor, "limit": 1, "wait_ms": INBOX_WAIT_MS}),
            )
            .expect("inbox");
        if let Some(m) = page.as_array().and_then(|p| p.first()) {
            cursor = m["seq"].as_u64().unwrap();
            if m["message_type"] == "context-share" {
                shares_in += 1;
            }
        }
        assert!(Instant::now() < deadline, "context-shares not delivered");
    }
    let bulk_end = Instant::now();
    pinger_stop.store(true, Ordering::SeqCst);
    pinger.join().expect("pinger");
    let mut during: Vec<f64> = pings
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= bulk_start && *t < bulk_end)
        .map(|(_, ms)| *ms)
        .collect();
    during.sort_by(f64::total_cmp);
    let bulk_secs = (bulk_end - bulk_start).as_secs_f64();
    // Measured with the daemons idle, after the runs.
    let (sign_us, verify_us, plugins_us) = necessary_work(&cache);
    let floor_us = sign_us
        + verify_us
        + plugins_us
        + writer_cpu_per_message.iter().sum::<f64>()
        + client_cpu_per_message;

    println!();
    println!("wire benchmark: two daemons on 127.0.0.1, TLS 1.3, 1 KB task-assignments");
    println!("(signed, PII-scanned both sides, audited both sides, acknowledged durably)");
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    println!(
        "| (a) throughput, {n} messages, {SENDERS} pipelined control connections | **{throughput:.0} messages/s** delivered into the receiver's inbox ({:.2} s) |",
        delivered.as_secs_f64()
    );
    println!(
        "| (a) sender accepts (`send`: PII + sign + outbox commit) | {enqueue_rate:.0} messages/s ({:.2} s to queue all) |",
        queued.as_secs_f64()
    );
    println!(
        "| (a) CPU per message: sender / receiver daemon | {:.0} / {:.0} µs |",
        cpu_per_message[0], cpu_per_message[1]
    );
    let all_cpu = cpu_per_message[0] + cpu_per_message[1] + client_cpu_per_message;
    println!(
        "| (a) CPU per message: this benchmark's clients (request encoding, inbox polling) | {client_cpu_per_message:.0} µs; all three processes {all_cpu:.0} µs, i.e. at most {:.0} messages/s on {} cores |",
        available_cores() as f64 * 1e6 / all_cpu.max(1.0),
        available_cores()
    );
    println!(
        "| (a) of which the state-file writer thread (redb apply + commit + fdatasync): sender / receiver | {:.0} / {:.0} µs |",
        writer_cpu_per_message[0], writer_cpu_per_message[1]
    );
    println!(
        "| (a) floor: Ed25519 sign + batch verify + plugins (PII scan ×2, handler; this process, one thread) + the two writer threads + this benchmark's clients | {sign_us:.0} + {verify_us:.0} + {plugins_us:.0} + {:.0} + {client_cpu_per_message:.0} = {floor_us:.0} µs, i.e. at most {:.0} messages/s on {} cores if TLS, sockets, JSON, the control API and scheduling cost nothing |",
        writer_cpu_per_message.iter().sum::<f64>(),
        available_cores() as f64 * 1e6 / floor_us.max(1.0),
        available_cores()
    );
    println!(
        "| (a) context switches per message: sender / receiver daemon | {:.1} / {:.1} |",
        switches_per_message[0], switches_per_message[1]
    );
    println!(
        "| (a) group commits: sender / receiver | {} / {} durable commits, {:.1} / {:.1} jobs and {:.2} / {:.2} ms each |",
        batching[0].0, batching[1].0, batching[0].1, batching[1].1, batching[0].2, batching[1].2
    );
    println!(
        "| (b) send → receiver inbox at {rate:.0}/s offered ({achieved:.0}/s scheduled, {count} messages) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "| (b) of which the `send` call (PII, sign, durable outbox commit) | p50 {:.2} ms, p99 {:.2} ms (sender commits: {rate_jobs:.1} jobs, {rate_commit_ms:.2} ms each) |",
        pct(&send_lat, 0.5),
        pct(&send_lat, 0.99)
    );
    println!(
        "| (b) the receiver's commits (inbox, dedupe, acknowledgement, audit record) | {receiver_jobs:.1} jobs, {receiver_commit_ms:.2} ms each |"
    );
    println!(
        "| (c) `query ping` idle (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
        idle.len(),
        pct(&idle, 0.5),
        pct(&idle, 0.99)
    );
    println!(
        "| (c) `query ping` while {SHARES} × {:.1} MB context-shares are in flight (n={}) | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        SHARE_BYTES as f64 / 1e6,
        during.len(),
        pct(&during, 0.5),
        pct(&during, 0.99),
        pct(&during, 1.0)
    );
    println!(
        "| (c) the {SHARES} context-shares: queued in {:.2} s, all in the receiver's inbox after {bulk_secs:.2} s | {:.1} MB/s |",
        bulk_queued.as_secs_f64(),
        (SHARES * SHARE_BYTES) as f64 / 1e6 / bulk_secs
    );
}
