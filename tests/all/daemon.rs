//! The daemon as a real process: locking, socket access, shutdown, crash
//! recovery, tamper detection, and the breaker and trust life cycles
//! driven through the CLI with an injected clock.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfed::control::client::{CallError, Client};
use redb::ReadableTable;
use serde_json::{Value, json};

use crate::harness::{CLI_TIMEOUT, Node, Rng, Run, peer_manifest, run_with_timeout};

const HOUR_MS: u64 = 3_600_000;

/// A node with its daemon on the fake clock and one peer, `beta`, added
/// from a real manifest file.
fn node_with_peer(node_id: &str) -> (Node, Node) {
    let mut node = Node::init(node_id);
    let beta = Node::init("beta");
    let manifest = beta.manifest_file("beta.json");
    node.start_fake_clock();
    node.run(&["peers", "add", manifest.to_str().unwrap()]).ok();
    (node, beta)
}

/// Lifts the hourly cap on counted interactions in `node`'s config (the
/// daemon must be stopped).
fn uncap_counting(node: &Node) {
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let uncapped = config.replace("counted_per_hour = 60", "counted_per_hour = 100000");
    assert_ne!(uncapped, config, "the config names counted_per_hour");
    std::fs::write(&path, uncapped).expect("config");
}

fn breaker_state(node: &Node, peer: &str) -> String {
    let status = node.run(&["breaker", "status", peer, "--json"]).json();
    status[0]["state"].as_str().unwrap().to_string()
}

fn trust_level(node: &Node, peer: &str) -> String {
    node.peer(peer)["trust_level"].as_str().unwrap().to_string()
}

fn advance(node: &Node, ms: u64) -> Value {
    let mut client = Client::connect(&node.home).expect("connecting");
    client
        .call("clock.advance", json!({"ms": ms}))
        .expect("clock.advance")
}

#[test]
fn a_second_daemon_is_refused_naming_the_holder_pid() {
    let mut node = Node::init("solo");
    node.start(&[]);
    let pid = node.daemon.as_ref().unwrap().pid();
    let mut second = node.spawn_daemon(&[]);
    let status = second.wait_exit("the second daemon to give up", CLI_TIMEOUT);
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    assert!(log.contains(&format!("pid {pid}")), "{log}");
    assert!(log.contains("daemon.lock"), "{log}");
    // The first daemon is unaffected.
    node.run(&["status"]).ok();
    node.stop();
}

#[test]
fn clean_sigterm_shutdown_flushes_and_removes_the_socket() {
    let (mut node, _beta) = node_with_peer("tidy");
    node.run(&[
        "spend", "report", "beta", "--task", "t-1", "--tokens", "5", "--usd", "0.01",
    ])
    .ok();
    assert_eq!(
        std::fs::metadata(node.socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let log = node.stop();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!node.socket().exists(), "socket left behind");
    // Offline verify, then the last record is the daemon's own stop.
    let verify = node.run(&["audit", "verify"]);
    assert!(verify.ok().contains("checked offline"), "{}", verify.stdout);
    // Query and export read the stopped daemon's store too.
    let offline = node
        .run(&["audit", "query", "--type", "daemon_stopped", "--json"])
        .json();
    assert_eq!(offline.as_array().map(Vec::len), Some(1), "{offline}");
    let csv = node.run(&["audit", "export", "--format", "csv"]);
    assert!(csv.ok().contains("spend_reported"), "{}", csv.stdout);
    node.run(&["status"])
        .fails(3, &["no agentfed daemon is running", "daemon"]);
    node.start_fake_clock();
    let records = node.audit_records();
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["event_type"].as_str().unwrap())
        .collect();
    let stop = types
        .iter()
        .rposition(|t| *t == "daemon_stopped")
        .expect("daemon_stopped");
    assert_eq!(types[stop - 1], "spend_reported", "{types:?}");
    assert_eq!(types.last(), Some(&"daemon_started"));
    assert_eq!(node.peer("beta")["metrics"]["interactions"], 1);
    // SIGINT works the same way.
    let daemon = node.daemon.take().unwrap();
    daemon.signal(rustix::process::Signal::INT);
    let mut daemon = daemon;
    let status = daemon.wait_exit("the daemon to stop after SIGINT", CLI_TIMEOUT);
    assert_eq!(status.code(), Some(0));
    assert!(!node.socket().exists());
}

/// Copies the binary somewhere `nobody` can execute it (the build tree
/// may not be reachable for other users).
fn binary_for_nobody(dir: &Path) -> std::path::PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = bin_dir.join("agentfed");
    std::fs::copy(crate::harness::bin(), &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    target
}

fn run_as_nobody(bin: &Path, home: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg("--home").arg(home).args(args).uid(65534).gid(65534);
    let out = run_with_timeout(cmd, "agentfed as nobody", CLI_TIMEOUT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Proves both layers: with the socket at its normal mode 0600 the kernel
/// refuses `nobody` before the daemon sees anything; with the file mode
/// opened up on purpose, the daemon itself refuses the connection by its
/// peer credentials (SO_PEERCRED) and answers PERMISSION_DENIED.
#[test]
fn socket_access_from_another_uid_is_refused() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: switching to uid 65534 needs root");
        return;
    }
    let mut node = Node::init("guarded");
    node.start(&[]);
    // Let `nobody` reach the socket path: temp dir and home traversable.
    for dir in [node.dir.path(), node.home.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let bin = binary_for_nobody(node.dir.path());

    // Layer 1: the socket file's mode.
    let out = run_as_nobody(&bin, &node.home, &["status"]);
    out.fails(1, &["permission denied", "control.sock"]);

    // Layer 2: the daemon's peer-credential check.
    std::fs::set_permissions(node.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_as_nobody(&bin, &node.home, &["status"]);
    out.fails(1, &["PERMISSION_DENIED", "uid 65534"]);
    let log = node.daemon.as_ref().unwrap().log();
    assert!(
        log.contains("refused control connection from another user"),
        "{log}"
    );
    assert!(log.contains("uid=65534"), "{log}");
    // Nothing the refused client sent was executed; the owner still works.
    node.run(&["status"]).ok();
    node.stop();
}

/// One operation of the crash test and how to recognise it afterwards.
#[derive(Debug, Clone)]
enum Op {
    Spend(String),
    Trust(String),
    AddPeer(String),
}

#[test]
fn state_and_audit_chain_survive_kill_9_at_random_points() {
    let mut rng = Rng::new();
    let (mut node, _beta) = node_with_peer("crashy");
    // Every spend report counts (no hourly cap), so the interaction count
    // below can be checked against the acknowledged reports.
    node.stop();
    uncap_counting(&node);
    node.start_fake_clock();
    node.run(&["trust", "set", "beta", "attested", "--reason", "start"])
        .ok();
    let mut acknowledged: Vec<Op> = Vec::new();
    let mut last_trust = "ATTESTED".to_string();
    let mut peer_counter = 0;
    let home = node.home.clone();
    let manifests_dir = node.dir.path().to_path_buf();
    for round in 0..4 {
        // A stream of CLI operations on a thread; the main thread kills
        // the daemon at a random moment.
        let acked: Arc<Mutex<Vec<Op>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first_peer = peer_counter;
        peer_counter += 1000;
        let worker = {
            let acked = Arc::clone(&acked);
            let stop = Arc::clone(&stop);
            let home = home.clone();
            let dir = manifests_dir.clone();
            let mut level_toggle = last_trust == "ATTESTED";
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let (op, args): (Op, Vec<String>) = match i % 5 {
                        0 => {
                            let level = if level_toggle { "TRUSTED" } else { "ATTESTED" };
                            (
                                Op::Trust(level.into()),
                                vec![
                                    "trust".into(),
                                    "set".into(),
                                    "beta".into(),
                                    level.into(),
                                    "--reason".into(),
                                    format!("r{round}-{i}"),
                                ],
                            )
                        }
                        3 => {
                            let id = format!("peer-{}", first_peer + i as usize);
                            let path = dir.join(format!("{id}.json"));
                            std::fs::write(&path, peer_manifest(&id).to_json()).unwrap();
                            (
                                Op::AddPeer(id),
                                vec!["peers".into(), "add".into(), path.display().to_string()],
                            )
                        }
                        _ => {
                            let task = format!("r{round}-t{i}");
                            (
                                Op::Spend(task.clone()),
                                vec![
                                    "spend".into(),
                                    "report".into(),
                                    "beta".into(),
                                    "--task".into(),
                                    task,
                                    "--tokens".into(),
                                    "3".into(),
                                    "--usd".into(),
                                    "0.001".into(),
                                ],
                            )
                        }
                    };
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let run = crate::harness::agentfed(&home, &args);
                    match run.code {
                        0 => {
                            if let Op::Trust(_) = op {
                                level_toggle = !level_toggle;
                            }
                            acked.lock().unwrap().push(op);
                        }
                        // The daemon died under us: unknown outcome.
                        1 | 3 => {}
                        other => panic!("unexpected exit {other}: {}", run.stderr),
                    }
                }
            })
        };
        let delay = rng.range(150, 1500);
        std::thread::sleep(Duration::from_millis(delay));
        node.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        crate::harness::within_thread(worker, "the operation stream to stop");
        let round_acked = acked.lock().unwrap().clone();
        eprintln!(
            "round {round}: killed after {delay} ms, {} operations acknowledged",
            round_acked.len()
        );
        for op in &round_acked {
            if let Op::Trust(level) = op {
                last_trust = level.clone();
            }
        }
        acknowledged.extend(round_acked);

        // Restart: the lock is free, the stale socket is replaced, the
        // store opens, and the chain verifies.
        node.start_fake_clock();
        node.run(&["audit", "verify"]).ok();
        let records = node.audit_records();
        let spend_tasks: BTreeSet<String> = records
            .iter()
            .filter(|r| r["event_type"] == "spend_reported")
            .filter_map(|r| r["details"]["task_id"].as_str().map(String::from))
            .collect();
        let peers: BTreeSet<String> = node
            .peers()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["node_id"].as_str().unwrap().to_string())
            .collect();
        let beta = node.peer("beta");
        for op in &acknowledged {
            match op {
                Op::Spend(task) => {
                    assert!(spend_tasks.contains(task), "acknowledged spend {task} lost")
                }
                Op::AddPeer(id) => assert!(peers.contains(id), "acknowledged peer {id} lost"),
                Op::Trust(_) => {}
            }
        }
        let spends = acknowledged
            .iter()
            .filter(|o| matches!(o, Op::Spend(_)))
            .count() as u64;
        // Operator trust changes close evidence periods: count them all.
        let interactions = beta["metrics"]["interactions"].as_u64().unwrap()
            + beta["metrics"]["archived"]["interactions"]
                .as_u64()
                .unwrap();
        // The in-flight report at the kill may or may not have landed.
        assert!(
            interactions >= spends,
            "{interactions} < {spends} acknowledged reports"
        );
        assert!(
            interactions <= spends + 1 + round as u64,
            "{interactions} interactions for {spends} reports"
        );
        // The trust level is the last acknowledged one, or the one that
        // was in flight when the daemon died.
        let level = beta["trust_level"].as_str().unwrap().to_string();
        if level != last_trust {
            let other = if last_trust == "ATTESTED" {
                "TRUSTED"
            } else {
                "ATTESTED"
            };
            assert_eq!(
                level, other,
                "trust level {level} after acknowledged {last_trust}"
            );
            last_trust = level;
        }
    }
    node.stop();
    node.run(&["audit", "verify"]).ok();
}

#[test]
fn audit_verify_catches_a_record_edited_in_the_redb_file() {
    let (mut node, _beta) = node_with_peer("auditee");
    for i in 0..5 {
        let task = format!("t{i}");
        node.run(&[
            "spend", "report", "beta", "--task", &task, "--tokens", "1", "--usd", "0.01",
        ])
        .ok();
    }
    let records = node.audit_records();
    let victim = records
        .iter()
        .find(|r| r["event_type"] == "spend_reported")
        .expect("a spend record");
    let seq = victim["seq"].as_u64().unwrap();
    node.stop();
    node.run(&["audit", "verify"]).ok();

    // Edit the record with plain redb, as an attacker with file access would.
    {
        let db = redb::Database::create(node.home.join("state.redb")).unwrap();
        let table_def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(table_def).unwrap();
            let raw = table.get(seq).unwrap().unwrap().value().to_vec();
            let mut row: Value = serde_json::from_slice(&raw).unwrap();
            row["summary"] = json!("spend reported for task t-nothing-to-see");
            table
                .insert(seq, serde_json::to_vec(&row).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    // Offline…
    let line = node
        .run(&["audit", "verify"])
        .fails(1, &["AUDIT_TAMPERED", &format!("record {seq}")]);
    assert!(line.contains("edited"), "{line}");
    // …and through a running daemon.
    node.start_fake_clock();
    node.run(&["audit", "verify"])
        .fails(1, &["AUDIT_TAMPERED", &format!("record {seq}")]);
    let out = node.run(&["audit", "verify", "--json"]);
    assert_eq!(out.code, 1);
    node.stop();
}

#[test]
fn breaker_lifecycle_end_to_end_through_the_cli() {
    let (mut node, _beta) = node_with_peer("breaker-node");
    node.run(&["trust", "set", "beta", "attested", "--reason", "lab peer"])
        .ok();
    node.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"warm up"}"#,
    ])
    .ok();
    // The default spend policy needs 50 samples before the failure ratio
    // may suspend: 49 failures leave the peer ACTIVE, the 50th suspends.
    let mut client = Client::connect(&node.home).unwrap();
    for i in 0..49 {
        client
            .call(
                "spend.report",
                json!({"peer": "beta", "task_id": format!("f{i}"), "tokens": 10, "usd": 0.001, "success": false}),
            )
            .unwrap();
    }
    assert_eq!(breaker_state(&node, "beta"), "ACTIVE");
    let out = node
        .run(&[
            "spend", "report", "beta", "--task", "f49", "--tokens", "10", "--usd", "0.001",
            "--failed", "--json",
        ])
        .json();
    assert_eq!(out["breaker"]["outcome"], "changed", "{out}");
    assert_eq!(out["breaker"]["to"], "SUSPENDED");
    assert_eq!(breaker_state(&node, "beta"), "SUSPENDED");

    // Sends are refused before any other work.
    node.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"x"}"#,
    ])
    .fails(
        1,
        &[
            "PEER_SUSPENDED",
            "SUSPENDED since 2023-11-14T22:13:20Z",
            "failure ratio 1.00",
            "agentfed reactivate beta --reason",
        ],
    );

    // Not reactivate-eligible before the 30-minute cooldown, eligible after.
    let status = node.run(&["breaker", "status", "beta", "--json"]).json();
    assert_eq!(status[0]["reactivate_eligible"], false);
    advance(&node, 31 * 60 * 1000);
    let status = node.run(&["breaker", "status", "beta", "--json"]).json();
    assert_eq!(status[0]["reactivate_eligible"], true);
    assert_eq!(status[0]["state"], "SUSPENDED", "never auto-reactivates");

    // 24 h suspended: the timer evicts.
    advance(&node, 24 * HOUR_MS);
    assert_eq!(breaker_state(&node, "beta"), "EVICTED");
    node.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"x"}"#,
    ])
    .fails(1, &["PEER_EVICTED"]);
    // Time alone never brings it back.
    advance(&node, 48 * HOUR_MS);
    assert_eq!(breaker_state(&node, "beta"), "EVICTED");

    // The operator reactivates, with a correlation id.
    let change = node
        .run(&[
            "reactivate",
            "beta",
            "--reason",
            "health probe ok",
            "--json",
        ])
        .json();
    assert_eq!(change["from"], "EVICTED");
    assert_eq!(change["to"], "ACTIVE");
    assert!(
        change["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(breaker_state(&node, "beta"), "ACTIVE");
    node.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"back"}"#,
    ])
    .ok();
    node.run(&["reactivate", "beta", "--reason", "again"])
        .fails(2, &["illegal", "ACTIVE"]);

    // Operator eviction from ACTIVE, then the audit trail of the cycle.
    node.run(&["evict", "beta", "--reason", "manual"]).ok();
    assert_eq!(breaker_state(&node, "beta"), "EVICTED");
    let types: Vec<String> = node
        .run(&[
            "audit",
            "query",
            "--category",
            "breaker",
            "--oldest-first",
            "--json",
        ])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "breaker_suspended",
            "breaker_evicted",
            "breaker_reactivated",
            "breaker_evicted"
        ]
    );
    node.stop();
}

#[test]
fn trust_promotion_at_the_default_thresholds_on_the_expected_days() {
    // A realistic pattern on the fake clock: every day, two working hours
    // in which beta completes 40 tasks each for this node (reported with
    // `spend report`), then the rest of the day passes. The thresholds
    // (50 and 500 counted interactions) are met early; the time rules
    // decide: ATTESTED after 24 h at VERIFIED with two active days,
    // TRUSTED 7 days later with five active days.
    let (mut node, _beta) = node_with_peer("truster");
    assert_eq!(trust_level(&node, "beta"), "VERIFIED");
    let mut client = Client::connect(&node.home).unwrap();
    let task = std::cell::Cell::new(0u32);
    let work_hour = |client: &mut Client| -> Vec<(u32, Value)> {
        (0..40)
            .map(|_| {
                task.set(task.get() + 1);
                let task = task.get();
                let out = client
                    .call(
                        "spend.report",
                        json!({"peer": "beta", "task_id": format!("ok{task}"), "tokens": 100, "usd": 0.0, "success": true}),
                    )
                    .unwrap();
                client.call("clock.advance", json!({"ms": 90_000})).unwrap();
                (task, out["trust"].clone())
            })
            .collect()
    };
    // (day, level) whenever the level read after a working hour changed;
    // the daemon's timer may promote between reports, so the level is
    // read rather than taken from report outcomes.
    let mut promotions = Vec::new();
    let mut level = trust_level(&node, "beta");
    for day in 0..10u64 {
        for _ in 0..2 {
            for (task, outcome) in work_hour(&mut client) {
                if day == 0 && task >= 50 {
                    // Enough interactions, not enough time: held, with why.
                    assert_eq!(outcome["outcome"], "held", "{outcome}");
                    assert_eq!(outcome["to"], "ATTESTED");
                    let why = outcome["waiting_for"].as_str().unwrap();
                    assert!(why.contains("at VERIFIED"), "{why}");
                }
            }
            let now = trust_level(&node, "beta");
            if now != level {
                promotions.push((day, now.clone()));
                level = now;
            }
        }
        // Two working hours passed (80 × 90 s); the rest of the day does too.
        advance(&node, 24 * 3_600_000 - 80 * 90_000);
    }
    assert_eq!(
        promotions,
        [(1, "ATTESTED".to_string()), (8, "TRUSTED".to_string())],
        "promoted on day 1 and day 8, and not before"
    );
    let shown = node.run(&["trust", "show", "beta", "--json"]).json();
    assert_eq!(shown[0]["trust_level"], "TRUSTED");
    assert_eq!(
        shown[0]["interactions"], 800,
        "every task counted (under the cap)"
    );
    assert_eq!(shown[0]["next"]["to"], Value::Null);
    let summary = shown[0]["next"]["summary"].as_str().unwrap();
    assert!(summary.contains("operator confirms"), "{summary}");
    // Promotions are audited with the plugin as the actor.
    let changes = node
        .run(&[
            "audit",
            "query",
            "--type",
            "trust_level_changed",
            "--oldest-first",
            "--json",
        ])
        .json();
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for change in changes {
        assert!(
            change["actor"].as_str().unwrap().starts_with("plugin:"),
            "{change}"
        );
    }
    // PRIVILEGED is never automatic.
    assert_ne!(trust_level(&node, "beta"), "PRIVILEGED");
    node.stop();
}

/// What "nothing changed" compares: peers, audit length, outbox length.
fn snapshot(node: &Node) -> (Value, usize, Value) {
    let status = node.run(&["status", "--json"]).json();
    (
        node.peers(),
        node.audit_records().len(),
        status["outbox"].clone(),
    )
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (mut node, beta) = node_with_peer("strict");
    node.run(&[
        "trust",
        "set",
        "beta",
        "attested",
        "--reason",
        "so sends pass the gate",
    ])
    .ok();
    let before = snapshot(&node);
    let good = beta.manifest_file("beta-again.json");
    let text = std::fs::read_to_string(&good).unwrap();
    let malformed = node.write_file("malformed.json", b"{\"manifest\": {\"node_id\": 1}");
    let tampered = node.write_file(
        "tampered.json",
        text.replace("wss://192.0.2.10:9100", "wss://192.0.2.99:9100")
            .as_bytes(),
    );
    let own = node.manifest_file("own.json");
    let path = |p: &Path| p.display().to_string();
    let (malformed, tampered, good, own) =
        (path(&malformed), path(&tampered), path(&good), path(&own));
    let big = "1e10";

    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // Unknown peers.
        (
            vec!["trust", "set", "ghost", "attested", "--reason", "x"],
            2,
            vec!["UNKNOWN_PEER", "ghost"],
        ),
        (
            vec!["evict", "ghost", "--reason", "x"],
            2,
            vec!["UNKNOWN_PEER"],
        ),
        (
            vec!["reactivate", "ghost", "--reason", "x"],
            2,
            vec!["UNKNOWN_PEER"],
        ),
        (vec!["peers", "remove", "ghost"], 2, vec!["UNKNOWN_PEER"]),
        (vec!["breaker", "status", "ghost"], 2, vec!["UNKNOWN_PEER"]),
        (
            vec![
                "spend", "report", "ghost", "--task", "t", "--tokens", "1", "--usd", "1",
            ],
            2,
            vec!["UNKNOWN_PEER"],
        ),
        (
            vec!["send", "ghost", "task-assignment", "--payload", "{}"],
            2,
            vec!["UNKNOWN_PEER"],
        ),
        // Unknown level names and missing reasons.
        (
            vec!["trust", "set", "beta", "superuser", "--reason", "x"],
            2,
            vec!["INVALID_LEVEL", "superuser"],
        ),
        (
            vec!["trust", "set", "beta", "attested", "--reason", " "],
            2,
            vec!["reason is required"],
        ),
        (
            vec!["trust", "set", "beta", "attested", "--reason", "again"],
            2,
            vec!["ILLEGAL_TRANSITION", "already ATTESTED"],
        ),
        // Illegal breaker transitions.
        (
            vec!["reactivate", "beta", "--reason", "it is active"],
            2,
            vec!["ILLEGAL_TRANSITION"],
        ),
        // Spend values: NaN, infinite, fractional tokens, oversized.
        (
            vec![
                "spend", "report", "beta", "--task", "t", "--tokens", "NaN", "--usd", "1",
            ],
            2,
            vec!["--tokens must be a finite number"],
        ),
        (
            vec![
                "spend", "report", "beta", "--task", "t", "--tokens", "1", "--usd", "inf",
            ],
            2,
            vec!["--usd must be a finite number"],
        ),
        (
            vec![
                "spend", "report", "beta", "--task", "t", "--tokens", "1.5", "--usd", "1",
            ],
            2,
            vec!["INVALID_INPUT", "whole number"],
        ),
        (
            vec![
                "spend", "report", "beta", "--task", "t", "--tokens", "1", "--usd", "1e7",
            ],
            2,
            vec!["INVALID_INPUT", "usd"],
        ),
        (
            vec![
                "spend", "report", "beta", "--task", "t", "--tokens", big, "--usd", "1",
            ],
            2,
            vec!["INVALID_INPUT", "tokens"],
        ),
        (
            vec![
                "spend",
                "report",
                "beta",
                "--task",
                "bad task!",
                "--tokens",
                "1",
                "--usd",
                "1",
            ],
            2,
            vec!["task id"],
        ),
        // Budgets: NaN, negative, oversized, fractional.
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-usd",
                "NaN",
            ],
            2,
            vec!["--max-usd must be a finite number"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-usd",
                "-1",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-tokens",
                "-5",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-tokens",
                "2000000000",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-usd",
                "1e7",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-hops",
                "65",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-tokens",
                "1.5",
            ],
            2,
            vec!["INVALID_BUDGET"],
        ),
        // No hops left is a refusal, not bad input.
        (
            vec![
                "send",
                "beta",
                "task-assignment",
                "--payload",
                "{}",
                "--max-hops",
                "0",
            ],
            1,
            vec!["HOP_LIMIT_EXCEEDED"],
        ),
        // Messages.
        (
            vec!["send", "beta", "no-such-type", "--payload", "{}"],
            2,
            vec!["UNKNOWN_MESSAGE_TYPE"],
        ),
        (
            vec!["send", "beta", "task-assignment", "--payload", "{not json"],
            2,
            vec!["--payload is not valid JSON"],
        ),
        // Manifests: malformed, tampered, duplicate, our own, missing file.
        (
            vec!["peers", "add", &malformed],
            2,
            vec!["INVALID_MANIFEST", "malformed"],
        ),
        (
            vec!["peers", "add", &tampered],
            2,
            vec!["INVALID_MANIFEST", "signature does not verify"],
        ),
        (vec!["peers", "add", &good], 2, vec!["PEER_EXISTS"]),
        (vec!["peers", "add", &own], 2, vec!["own manifest"]),
        (
            vec!["peers", "add", "/nonexistent/m.json"],
            2,
            vec!["cannot read"],
        ),
        // Audit filters and plugin kinds.
        (
            vec!["audit", "query", "--type", "nope"],
            2,
            vec!["INVALID_PARAMS", "unknown event type `nope`"],
        ),
        (
            vec!["audit", "query", "--severity", "loud"],
            2,
            vec!["INVALID_PARAMS", "severity"],
        ),
        (
            vec!["audit", "query", "--since", "yesterday"],
            2,
            vec!["--since must be RFC 3339"],
        ),
        (
            vec!["plugin", "reload", "bogus"],
            2,
            vec!["INVALID_PARAMS", "kind"],
        ),
    ];
    for (args, code, needles) in &cases {
        let run = node.run(args);
        let line = run.fails(*code, needles);
        assert!(line.len() < 600, "error line too long: {line}");
    }
    assert_eq!(snapshot(&node), before, "a refused command changed state");
    node.stop();
}

#[test]
fn control_protocol_errors_are_precise() {
    let mut node = Node::init("protocol");
    node.start(&[]);
    let mut client = Client::connect(&node.home).unwrap();
    let remote = |r: Result<Value, CallError>| match r {
        Err(CallError::Remote(body)) => body,
        other => panic!("expected a remote error, got {other:?}"),
    };
    // Unknown method; clock.advance exists only with --fake-clock-ms.
    assert_eq!(
        remote(client.call("peers.frobnicate", json!({}))).code,
        "UNKNOWN_METHOD"
    );
    let e = remote(client.call("clock.advance", json!({"ms": 1})));
    assert_eq!((e.code.as_str(), e.bad_input), ("UNKNOWN_METHOD", true));
    // Bad params: unknown field, wrong type, not an object.
    let e = remote(client.call("status", json!({"verbose": true})));
    assert_eq!(e.code, "INVALID_PARAMS");
    assert!(e.message.contains("verbose"), "{}", e.message);
    let e = remote(client.call(
        "spend.report",
        json!({"peer": "x", "task_id": "t", "tokens": "ten", "usd": 1}),
    ));
    assert_eq!(e.code, "INVALID_PARAMS");
    let e = remote(client.call("peers.show", json!([1, 2])));
    assert_eq!(e.code, "INVALID_PARAMS");
    // A huge bad value is not echoed back.
    let e = remote(client.call("peers.show", json!({"peer": 7, "x": "y".repeat(500_000)})));
    assert!(e.message.len() < 500, "{}", e.message.len());

    // Raw framing: unsupported version, bad JSON, pipelining, size limit.
    client
        .send_raw(b"{\"v\":2,\"id\":11,\"method\":\"status\"}\n")
        .unwrap();
    let r = client.read_response().unwrap();
    assert_eq!(r.id, json!(11));
    assert_eq!(r.error.unwrap().code, "UNSUPPORTED_VERSION");
    client.send_raw(b"{oops\n").unwrap();
    let r = client.read_response().unwrap();
    assert_eq!(
        (r.id, r.error.unwrap().code),
        (Value::Null, "INVALID_REQUEST".to_string())
    );
    client
        .send_raw(b"{\"v\":1,\"id\":\"a\",\"method\":\"status\"}\n{\"v\":1,\"id\":\"b\",\"method\":\"peers.list\"}\n")
        .unwrap();
    let a = client.read_response().unwrap();
    let b = client.read_response().unwrap();
    assert_eq!(
        (a.id, a.ok, b.id, b.ok),
        (json!("a"), true, json!("b"), true)
    );
    assert_eq!(b.result, Some(json!([])));
    // Deep pipelining (more than the 64 handled at once), mixing methods
    // and errors: every answer comes back, in request order.
    let mut burst = Vec::new();
    for i in 0..200 {
        let line = match i % 3 {
            0 => format!("{{\"v\":1,\"id\":{i},\"method\":\"status\"}}\n"),
            1 => format!("{{\"v\":1,\"id\":{i},\"method\":\"peers.list\"}}\n"),
            _ => format!(
                "{{\"v\":1,\"id\":{i},\"method\":\"peers.show\",\"params\":{{\"peer\":\"nobody\"}}}}\n"
            ),
        };
        burst.extend_from_slice(line.as_bytes());
    }
    client.send_raw(&burst).unwrap();
    for i in 0..200 {
        let r = client.read_response().unwrap();
        assert_eq!(r.id, json!(i), "answers out of request order");
        assert_eq!(r.ok, i % 3 != 2, "request {i}: {r:?}");
    }
    let mut huge = vec![b'x'; agentfed::control::MAX_LARGE_REQUEST_BYTES + 16];
    huge.push(b'\n');
    // The daemon may close before reading it all; a write error is fine.
    let _ = client.send_raw(&huge);
    match client.read_response() {
        Ok(r) => assert_eq!(r.error.unwrap().code, "REQUEST_TOO_LARGE"),
        Err(e) => panic!("expected REQUEST_TOO_LARGE, got {e}"),
    }
    // The connection is closed after that; a new one works.
    assert!(client.call("status", json!({})).is_err());
    let status = Client::connect(&node.home)
        .unwrap()
        .call("status", json!({}))
        .unwrap();
    assert_eq!(status["node_id"], "protocol");
    // Every documented method is served (smoke: read-only ones).
    for method in [
        "status",
        "peers.list",
        "trust.show",
        "breaker.status",
        "audit.query",
        "audit.verify",
        "plugins.list",
        "manifest",
    ] {
        Client::connect(&node.home)
            .unwrap()
            .call(method, json!({}))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
    }
    let export = Client::connect(&node.home)
        .unwrap()
        .call("audit.export", json!({"format": "csv"}))
        .unwrap();
    assert!(
        export["content"]
            .as_str()
            .unwrap()
            .starts_with("seq,ts_ms,event_type")
    );
    // A connection idling mid-request does not block shutdown.
    let mut idle = Client::connect(&node.home).unwrap();
    idle.send_raw(b"{\"v\":1,").unwrap();
    let started = Instant::now();
    node.stop();
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn audit_records_are_stamped_by_the_node_clock() {
    let (node, _beta) = node_with_peer("stamped");
    let first = node.audit_records();
    let started = first
        .iter()
        .rfind(|r| r["event_type"] == "daemon_started")
        .expect("daemon_started");
    let started_ts = started["ts_ms"].as_u64().unwrap();
    // The daemon's first record is stamped with the fake clock's start.
    assert_eq!(started_ts, crate::harness::FAKE_START_MS);
    advance(&node, 24 * HOUR_MS);
    node.run(&[
        "trust",
        "set",
        "beta",
        "attested",
        "--reason",
        "clock check",
    ])
    .ok();
    let records = node.audit_records();
    let last = records.last().expect("a record");
    assert_eq!(last["event_type"], "trust_level_changed", "{last}");
    assert_eq!(
        last["ts_ms"].as_u64().unwrap(),
        crate::harness::FAKE_START_MS + 24 * HOUR_MS,
        "{last}"
    );
    // Timestamps never go backwards along the chain.
    let stamps: Vec<u64> = records
        .iter()
        .map(|r| r["ts_ms"].as_u64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
}

#[test]
fn pipelined_sends_are_answered_in_order_each_with_its_own_outcome() {
    let (node, _beta) = node_with_peer("piper");
    node.run(&["trust", "set", "beta", "attested", "--reason", "pipelining"])
        .ok();
    let mut client = Client::connect(&node.home).unwrap();
    // Sends (good, to an unknown peer, with bad params), a status in the
    // middle, more sends: written at once, so runs of sends are handled
    // as bursts.
    let send = |id: usize, peer: &str| {
        format!(
            "{{\"v\":1,\"id\":{id},\"method\":\"send\",\"params\":{{\"peer\":\"{peer}\",\"message_type\":\"task-assignment\",\"payload\":{{\"n\":{id}}}}}}}\n"
        )
    };
    let mut lines = String::new();
    let mut expected = Vec::new();
    for id in 0..60 {
        let (line, outcome) = match id % 10 {
            3 => (send(id, "nobody"), Some("UNKNOWN_PEER")),
            7 => (
                format!(
                    "{{\"v\":1,\"id\":{id},\"method\":\"send\",\"params\":{{\"peer\":\"beta\"}}}}\n"
                ),
                Some("INVALID_PARAMS"),
            ),
            9 => (
                format!("{{\"v\":1,\"id\":{id},\"method\":\"status\"}}\n"),
                None,
            ),
            _ => (send(id, "beta"), None),
        };
        lines.push_str(&line);
        expected.push(outcome);
    }
    client.send_raw(lines.as_bytes()).unwrap();
    let mut queued = 0;
    for (id, outcome) in expected.iter().enumerate() {
        let r = client.read_response().unwrap();
        assert_eq!(r.id, json!(id), "answers out of request order");
        match outcome {
            Some(code) => assert_eq!(
                r.error.as_ref().map(|e| e.code.as_str()),
                Some(*code),
                "{r:?}"
            ),
            None => {
                assert!(r.ok, "request {id}: {r:?}");
                if id % 10 != 9 {
                    assert!(
                        r.result.as_ref().unwrap()["envelope_id"].is_string(),
                        "{r:?}"
                    );
                    queued += 1;
                }
            }
        }
    }
    // Every acknowledged send is in the outbox (beta has no session).
    let status = client.call("status", json!({})).unwrap();
    assert_eq!(status["outbox"], queued);
    assert_eq!(queued, 42);
}

#[test]
fn an_operators_reactivation_holds_through_the_following_ticks() {
    // The demo's breaker scene, continued past the timer tick it skips.
    let (mut node, _beta) = node_with_peer("keeper");
    let report = |task: &str, usd: &str| {
        node.run(&[
            "spend", "report", "beta", "--task", task, "--tokens", "100", "--usd", usd, "--json",
        ])
        .json()
    };
    let out = report("big-job", "5.70");
    assert_eq!(out["breaker"]["to"], "SUSPENDED", "{out}");
    advance(&node, 31 * 60 * 1000);
    node.run(&[
        "reactivate",
        "beta",
        "--reason",
        "limit discussed with finance",
    ])
    .ok();
    let reactivated = node.run(&["breaker", "status", "beta", "--json"]).json();
    let counts_from = reactivated[0]["counts_from_ms"].as_u64().unwrap();
    assert!(counts_from > 0, "{reactivated}");
    assert_eq!(reactivated[0]["usd_last_day"], 0.0, "{reactivated}");
    // Ticks over the next hour, the old $5.70 still inside the 24 h window.
    let mut client = Client::connect(&node.home).unwrap();
    for _ in 0..6 {
        client
            .call("clock.advance", json!({"ms": 10 * 60 * 1000, "tick": true}))
            .unwrap();
        assert_eq!(breaker_state(&node, "beta"), "ACTIVE");
    }
    let text = node.run(&["breaker", "status", "beta"]);
    assert!(text.ok().contains("COUNTS FROM"), "{}", text.stdout);
    // New spend over the limit trips it again.
    report("next-1", "3.00");
    assert_eq!(breaker_state(&node, "beta"), "ACTIVE");
    let out = report("next-2", "2.50");
    assert_eq!(out["breaker"]["to"], "SUSPENDED", "{out}");
    node.stop();
}

#[test]
fn trust_show_explains_the_next_step_and_pins_are_set_shown_and_released() {
    let (mut node, _beta) = node_with_peer("explainer");
    node.run(&[
        "trust", "set", "beta", "attested", "--reason", "pilot", "--unpin",
    ])
    .ok();
    let shown = node.run(&["trust", "show", "beta"]);
    let text = shown.ok();
    assert!(text.contains("ATTESTED (floor)"), "{text}");
    assert!(text.contains("TRUSTED at the earliest in 7 days"), "{text}");
    assert!(text.contains("missing 7 days at ATTESTED"), "{text}");
    assert!(
        text.contains("missing counted interactions on 5 distinct days"),
        "{text}"
    );
    let json = node.run(&["trust", "show", "beta", "--json"]).json();
    let next = &json[0]["next"];
    assert_eq!(next["to"], "TRUSTED");
    assert_eq!(next["requirements"].as_array().unwrap().len(), 3, "{next}");
    assert_eq!(json[0]["operator"]["pinned"], false);

    // Pinned: shown in `peers`, and waiting cannot lift it.
    let set = node.run(&["trust", "set", "beta", "attested", "--reason", "hold"]);
    assert!(set.ok().contains("pinned"), "{}", set.stdout);
    let peers = node.run(&["peers"]);
    assert!(peers.ok().contains("PIN"), "{}", peers.stdout);
    let text = node.run(&["trust", "show", "beta"]).stdout;
    assert!(text.contains("cannot happen by waiting"), "{text}");
    assert!(text.contains("not pinned"), "{text}");
    node.run(&["trust", "set", "beta", "attested", "--reason", "hold"])
        .fails(2, &["already ATTESTED (pinned)"]);
    node.run(&["trust", "unpin", "beta", "--reason", "pilot over"])
        .ok();
    node.run(&["trust", "unpin", "beta", "--reason", "again"])
        .fails(2, &["not pinned"]);
    let json = node.run(&["trust", "show", "beta", "--json"]).json();
    assert_eq!(json[0]["operator"]["pinned"], false);
    assert_eq!(json[0]["operator"]["level"], "ATTESTED");
    node.stop();
}

#[test]
fn a_plugin_configuration_it_cannot_use_is_refused_and_the_previous_plugin_stays() {
    let (mut node, _beta) = node_with_peer("configured");
    let path = node.home.join("agentfed.toml");
    let original = std::fs::read_to_string(&path).expect("config");
    let with_spend_config = |lines: &str| {
        let text = original.replacen(
            "[plugins.spend.config]",
            &format!("[plugins.spend.config]\n{lines}"),
            1,
        );
        assert_ne!(text, original, "the config has a spend config table");
        std::fs::write(&path, text).expect("config");
    };
    // A value the policy cannot read: refused at reload, the old policy stays.
    with_spend_config("\"max-usd-per-day\" = \"lots\"");
    node.run(&["plugin", "reload", "spend"]).fails(
        1,
        &[
            "not reloaded",
            "previous one stays in force",
            "max-usd-per-day",
        ],
    );
    // A misspelled key: refused too, naming the keys the policy reads.
    with_spend_config("\"max-usd-per-dya\" = \"1.0\"");
    node.run(&["plugin", "reload", "spend"]).fails(
        1,
        &[
            "unknown configuration key `max-usd-per-dya`",
            "max-usd-per-day",
        ],
    );
    // The $5/day limit is still enforced by the plugin that stayed.
    let out = node
        .run(&[
            "spend", "report", "beta", "--task", "t", "--tokens", "1", "--usd", "6", "--json",
        ])
        .json();
    assert_eq!(out["breaker"]["to"], "SUSPENDED", "{out}");
    // A daemon does not start on such a configuration either.
    node.stop();
    let mut daemon = node.spawn_daemon(&[]);
    let status = daemon.wait_exit("a daemon on a bad plugin config", Duration::from_secs(60));
    assert!(!status.success());
    assert!(daemon.log().contains("max-usd-per-dya"), "{}", daemon.log());
    // A good value is taken.
    with_spend_config("\"max-usd-per-day\" = \"2.5\"");
    node.start_fake_clock();
    node.stop();
}

#[test]
fn audit_prune_exports_then_removes_a_prefix_and_the_chain_still_verifies() {
    let mut node = Node::init("pruner");
    let beta = Node::init("beta");
    let manifest = beta.manifest_file("beta.json");
    node.start(&[]);
    node.run(&["peers", "add", manifest.to_str().unwrap()]).ok();
    node.run(&[
        "spend", "report", "beta", "--task", "t-1", "--tokens", "5", "--usd", "0.01",
    ])
    .ok();
    let before = node.audit_records();
    let last = before.last().expect("records").clone();
    let cut = last["ts_ms"].as_u64().unwrap() + 1;
    std::thread::sleep(Duration::from_millis(5));

    // Neither a copy nor --discard: refused, nothing changed.
    node.run(&["audit", "prune", "--before", &cut.to_string()])
        .fails(2, &["--output"]);
    let export = node.home.join("pruned.ndjson");
    let report = node
        .run(&[
            "audit",
            "prune",
            "--before",
            &cut.to_string(),
            "--output",
            export.to_str().unwrap(),
            "--json",
        ])
        .json();
    let pruned = report["pruned"].as_u64().unwrap();
    assert!(pruned >= before.len() as u64, "{report}");
    assert_eq!(report["first_seq"], 1, "{report}");
    assert_eq!(report["exported"]["records"], pruned, "{report}");
    // The copy holds exactly the removed records, chained, private.
    let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let copied: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(copied.len() as u64, pruned);
    for (a, b) in before.iter().zip(&copied) {
        assert_eq!(a["hash"], b["hash"]);
    }
    for pair in copied.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let through_hash = copied.last().unwrap()["hash"].clone();
    assert_eq!(report["through_hash"], through_hash);
    // What is left starts with the records after the cut-off; the
    // checkpoint names the last removed record; the chain verifies.
    let left = node.audit_records();
    assert!(left.iter().all(|r| r["seq"].as_u64().unwrap() > pruned));
    let checkpoint = left
        .iter()
        .find(|r| r["event_type"] == "audit_pruned")
        .expect("checkpoint record");
    assert_eq!(checkpoint["details"]["pruned_through_hash"], through_hash);
    assert_eq!(checkpoint["actor"], "operator");
    let verified = node.run(&["audit", "verify", "--json"]).json();
    assert_eq!(verified["records"], left.len() as u64);
    // The copy is never overwritten: a second prune into it is refused
    // before anything is removed.
    node.run(&[
        "audit",
        "prune",
        "--before",
        &(cut + 60_000).to_string(),
        "--output",
        export.to_str().unwrap(),
    ])
    .fails(1, &["never replaced"]);
    assert_eq!(node.audit_records().len(), left.len());

    // With the daemon stopped, the CLI prunes the store itself.
    node.stop();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(5));
    let offline = node
        .run(&[
            "audit",
            "prune",
            "--before",
            &(now + 1).to_string(),
            "--discard",
        ])
        .ok()
        .to_string();
    assert!(offline.contains("checkpoint record"), "{offline}");
    let verify = node.run(&["audit", "verify"]);
    assert!(verify.ok().contains("checked offline"), "{}", verify.stdout);
    node.start(&[]);
    node.run(&["audit", "verify"]).ok();
    let types: Vec<Value> = node
        .audit_records()
        .iter()
        .map(|r| r["event_type"].clone())
        .collect();
    assert_eq!(types.first(), Some(&json!("audit_pruned")), "{types:?}");
    node.stop();
}
