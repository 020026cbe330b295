//! Federation end to end: real `agentfed daemon` processes on 127.0.0.1
//! with real TLS sessions between them, driven through the CLI (and the
//! control client where a test needs thousands of calls). Joins, trust,
//! send + inbox with PII handled per trust level, query, broadcast, leave;
//! then reliable delivery across `kill -9` of the receiver and of the
//! sender. Every wait has a named timeout; daemons are killed and homes
//! removed on drop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentfed::control::client::Client;
use serde_json::{Value, json};

use crate::harness::{Node, fed_node, fingerprint, session_peers, wait_until};

/// Longest wait for sessions, deliveries and inbox contents.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the reliability run to drain its outbox.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1200);

/// Messages in the reliability test: `AGENTFED_RELIABILITY_N`, default
/// 10,000 (about five minutes on the 2-core machine; delivery is bound by
/// per-message fsyncs, see docs/benchmarks.md). Set it lower for a quick
/// local run.
fn reliability_n() -> usize {
    std::env::var("AGENTFED_RELIABILITY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 10)
        .unwrap_or(10_000)
}

/// Mutual join: `a` joins `b` (b does not know a yet: refused, but a now
/// knows b), then `b` joins `a`, which completes the session.
pub(crate) fn join_pair(a: (&Node, &str, &str), b: (&Node, &str, &str)) {
    let (a_node, a_name, a_endpoint) = a;
    let (b_node, b_name, b_endpoint) = b;
    // Refused by the peer: exit 1, the result (with the hint) on stdout.
    let first = a_node.run(&[
        "join",
        b_endpoint,
        "--fingerprint",
        &fingerprint(b_node),
        "--json",
    ]);
    first.fails(1, &["refused the session", "UNKNOWN_PEER"]);
    let first: Value = serde_json::from_str(&first.stdout).expect("join result JSON");
    assert_eq!(first["peer"], b_name, "{first}");
    assert_eq!(first["joined"], false, "{first}");
    let second = b_node
        .run(&[
            "join",
            a_endpoint,
            "--fingerprint",
            &fingerprint(a_node),
            "--json",
        ])
        .json();
    assert_eq!(second["peer"], a_name, "{second}");
    assert_eq!(second["joined"], true, "{second}");
    wait_until(
        &format!("{a_name} to see its session with {b_name}"),
        SETTLE_TIMEOUT,
        || session_peers(a_node).iter().any(|p| p == b_name),
    );
}

/// alpha and beta, joined, each ATTESTED in the other's view (enough for
/// task-assignments both ways); with their endpoints.
pub(crate) fn attested_pair() -> (Node, String, Node, String) {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&["trust", "set", peer, "attested", "--reason", "test pair"])
            .ok();
    }
    (alpha, alpha_ep, beta, beta_ep)
}

/// `from` sends `{"n": n}` to `to` as a task-assignment.
pub(crate) fn send_n(from: &Node, to: &str, n: u32) {
    from.run(&[
        "send",
        to,
        "task-assignment",
        "--payload",
        &format!(r#"{{"n":{n}}}"#),
    ])
    .ok();
}

fn outbox(node: &Node) -> u64 {
    node.run(&["status", "--json"]).json()["outbox"]
        .as_u64()
        .expect("outbox count")
}

fn inbox(node: &Node) -> Vec<Value> {
    node.run(&["inbox", "--limit", "10000", "--json"])
        .json()
        .as_array()
        .cloned()
        .expect("inbox array")
}

fn verify_audit(node: &Node) {
    let v = node.run(&["audit", "verify", "--json"]).json();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn three_nodes_join_send_query_broadcast_and_leave() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    let (gamma, gamma_ep) = fed_node("gamma");

    // Without a pin nothing is trusted: the CLI shows what it would trust.
    let probe = alpha.run(&["join", &beta_ep]);
    let line = probe.fails(1, &["CONFIRMATION_REQUIRED", "beta", "--accept-new"]);
    assert!(line.contains(&fingerprint(&beta)), "{line}");
    // With --json the same, structured, on stdout.
    let probe = alpha.run(&["join", &beta_ep, "--json"]);
    probe.fails(1, &["CONFIRMATION_REQUIRED"]);
    let shown: Value = serde_json::from_str(&probe.stdout).expect("JSON on stdout");
    assert_eq!(shown["joined"], false, "{shown}");
    assert_eq!(shown["error"]["code"], "CONFIRMATION_REQUIRED", "{shown}");
    assert_eq!(
        shown["error"]["details"]["fingerprint"],
        fingerprint(&beta).as_str()
    );
    assert_eq!(alpha.peers().as_array().unwrap().len(), 0);
    // A wrong pin is refused at the TLS layer.
    alpha
        .run(&["join", &beta_ep, "--fingerprint", &"ab".repeat(32)])
        .fails(1, &["PIN_MISMATCH"]);

    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    join_pair((&alpha, "alpha", &alpha_ep), (&gamma, "gamma", &gamma_ep));
    join_pair((&beta, "beta", &beta_ep), (&gamma, "gamma", &gamma_ep));
    for (node, name) in [(&alpha, "alpha"), (&beta, "beta"), (&gamma, "gamma")] {
        wait_until(
            &format!("{name} to hold two sessions"),
            SETTLE_TIMEOUT,
            || session_peers(node).len() == 2,
        );
        for peer in node.peers().as_array().unwrap() {
            assert_eq!(peer["trust_level"], "VERIFIED", "{name}: {peer}");
        }
    }

    // Raise trust with operator reasons, both sides of each pair.
    for (node, peer, level) in [
        (&alpha, "beta", "attested"),
        (&beta, "alpha", "attested"),
        (&alpha, "gamma", "trusted"),
        (&gamma, "alpha", "trusted"),
    ] {
        node.run(&[
            "trust",
            "set",
            peer,
            level,
            "--reason",
            "federation e2e bootstrap",
        ])
        .ok();
    }

    // send + inbox: the email is redacted at ATTESTED, hashed at TRUSTED.
    let payload = r#"{"task":"summarise","contact":"dana@example.com"}"#;
    let sent = alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            payload,
            "--json",
        ])
        .json();
    assert_eq!(sent["pii"]["email"], 1, "{sent}");
    alpha
        .run(&["send", "gamma", "task-assignment", "--payload", payload])
        .ok();
    wait_until("alpha's outbox to drain", SETTLE_TIMEOUT, || {
        outbox(&alpha) == 0
    });
    let at_beta = inbox(&beta);
    assert_eq!(at_beta.len(), 1, "{at_beta:?}");
    assert_eq!(at_beta[0]["from"], "alpha");
    assert_eq!(at_beta[0]["envelope_id"], sent["envelope_id"]);
    assert_eq!(at_beta[0]["payload"]["contact"], "[REDACTED:email]");
    assert_eq!(at_beta[0]["payload"]["task"], "summarise");
    let at_gamma = inbox(&gamma);
    assert_eq!(at_gamma.len(), 1, "{at_gamma:?}");
    let hashed = at_gamma[0]["payload"]["contact"].as_str().unwrap();
    assert!(
        !hashed.contains("dana") && !hashed.contains("REDACTED"),
        "{hashed}"
    );
    let text = beta.run(&["inbox"]).ok().to_string();
    assert!(text.contains("from alpha task-assignment"), "{text}");

    // A send the receiver's view refuses is not retried forever: beta sees
    // gamma as VERIFIED, which does not allow task-assignment — refused
    // on the sender side already.
    beta.run(&["send", "gamma", "task-assignment", "--payload", "{}"])
        .fails(
            1,
            &[
                "CAPABILITY_DENIED",
                "ATTESTED and above",
                "agentfed trust set gamma attested --reason",
            ],
        );

    // query: ping → pong from the handler plugin, over the live session.
    let pong = alpha.run(&["query", "beta", "ping", "--json"]).json();
    assert_eq!(pong["status"], "replied", "{pong}");
    assert_eq!(pong["reply"]["type"], "pong", "{pong}");
    assert_eq!(pong["reply"]["node"], "beta", "{pong}");
    let human = gamma.run(&["query", "alpha", "ping"]).ok().to_string();
    assert!(
        human.contains("pong") && human.contains("replied"),
        "{human}"
    );

    // broadcast from beta reaches alpha and gamma.
    let results = beta
        .run(&[
            "broadcast",
            "status-broadcast",
            "--payload",
            r#"{"load":0.25}"#,
            "--json",
        ])
        .json();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    // A status broadcast is noted, not stored: the default handler keeps
    // status signals out of the agent's inbox.
    for r in results {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["result"]["status"], "replied", "{r}");
        assert_eq!(r["result"]["reply"]["type"], "noted", "{r}");
        assert_eq!(r["result"]["reply"]["of"], "status-broadcast", "{r}");
    }
    for (node, name) in [(&alpha, "alpha"), (&gamma, "gamma")] {
        let got = inbox(node);
        assert!(
            !got.iter()
                .any(|m| m["from"] == "beta" && m["message_type"] == "status-broadcast"),
            "{name}: {got:?}"
        );
    }

    // leave: the session closes on both sides, the peer stays known, and
    // it is not re-established.
    let left = alpha.run(&["leave", "gamma", "--json"]).json();
    assert!(left["session_closed"].is_string(), "{left}");
    wait_until("gamma to notice alpha left", SETTLE_TIMEOUT, || {
        !session_peers(&gamma).contains(&"alpha".to_string())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(session_peers(&alpha), vec!["beta".to_string()]);
    alpha.peer("gamma");
    alpha
        .run(&["query", "gamma", "ping"])
        .fails(1, &["NO_SESSION"]);

    // Every step is in the audit chains, and they verify.
    let types: Vec<String> = alpha
        .audit_records()
        .iter()
        .map(|r| r["event_type"].as_str().unwrap().to_string())
        .collect();
    for t in [
        "handshake_initiated",
        "handshake_rejected",
        "handshake_completed",
        "session_created",
        "session_terminated",
        "message_sent",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} missing in {types:?}");
    }
    for node in [&alpha, &beta, &gamma] {
        verify_audit(node);
    }
}

/// Reads `node`'s whole inbox through one control connection.
pub(crate) fn inbox_all(node: &Node) -> Vec<Value> {
    let mut client = Client::connect(&node.home).expect("connecting to the receiver");
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page = client
            .call("inbox", json!({"after": after, "limit": 10_000}))
            .expect("inbox");
        let page = page.as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(page);
    }
}

fn inbox_len(node: &Node) -> usize {
    inbox_all(node).len()
}

#[test]
fn every_message_arrives_exactly_once_across_kill_9_of_receiver_and_sender() {
    let n = reliability_n();
    eprintln!("reliability run with N = {n} (AGENTFED_RELIABILITY_N)");
    let (mut alpha, alpha_ep) = fed_node("alpha");
    let (mut beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    alpha
        .run(&[
            "trust",
            "set",
            "beta",
            "attested",
            "--reason",
            "reliability test",
        ])
        .ok();
    beta.run(&[
        "trust",
        "set",
        "alpha",
        "attested",
        "--reason",
        "reliability test",
    ])
    .ok();

    let started = Instant::now();
    // Queue all N from a second thread while the receiver is killed
    // (`kill -9`) mid-stream and restarted.
    let alpha_home = alpha.home.clone();
    let sender = std::thread::spawn(move || {
        let mut client = Client::connect(&alpha_home).expect("connecting to the sender");
        let mut ids = BTreeMap::new();
        for i in 0..n {
            let receipt = client
                .call(
                    "send",
                    json!({"peer": "beta", "message_type": "task-assignment", "payload": {"n": i}}),
                )
                .expect("send");
            ids.insert(receipt["envelope_id"].as_str().unwrap().to_string(), i);
        }
        ids
    });
    wait_until("beta to receive the first messages", SETTLE_TIMEOUT, || {
        inbox_len(&beta) >= n / 10
    });
    beta.kill9();
    eprintln!(
        "receiver killed with {} messages in the sender's outbox",
        outbox(&alpha)
    );
    // The rest queues up while the receiver is down.
    wait_until(
        "the sender thread to queue every message",
        DRAIN_TIMEOUT,
        || sender.is_finished(),
    );
    let ids = sender.join().expect("the queueing thread panicked");
    assert_eq!(ids.len(), n);
    beta.start(&[]);

    // kill -9 the sender mid-stream, with its outbox not yet empty.
    let backlog = outbox(&alpha);
    assert!(
        backlog > 0,
        "the sender's outbox drained too early to test a sender crash"
    );
    wait_until(
        "some redelivery after the receiver restarted",
        DRAIN_TIMEOUT,
        || outbox(&alpha) < backlog * 3 / 4 || outbox(&alpha) == 0,
    );
    let at_sender_kill = outbox(&alpha);
    alpha.kill9();
    eprintln!("sender killed with {at_sender_kill} messages still in its outbox");
    alpha.start(&[]);

    wait_until("the sender's outbox to drain", DRAIN_TIMEOUT, || {
        outbox(&alpha) == 0
    });
    let elapsed = started.elapsed();

    let received = inbox_all(&beta);
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut envelope_ids = std::collections::BTreeSet::new();
    for m in &received {
        assert_eq!(m["from"], "alpha");
        let i = m["payload"]["n"].as_u64().unwrap() as usize;
        *seen.entry(i).or_default() += 1;
        let id = m["envelope_id"].as_str().unwrap().to_string();
        assert_eq!(
            ids.get(&id),
            Some(&i),
            "envelope {id} carries the wrong counter"
        );
        assert!(
            envelope_ids.insert(id.clone()),
            "envelope {id} processed twice"
        );
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(received.len(), n);
    eprintln!(
        "{n} messages delivered exactly once in {:.1}s across two kill -9 restarts",
        elapsed.as_secs_f64()
    );
    verify_audit(&alpha);
    verify_audit(&beta);
}

/// The periodic outbox scan (which now looks in an in-memory index, see
/// `Store::outbox_due_where`) must still find messages queued for a peer
/// that was down, and must not be starved by a steady stream of fresh
/// sends to another peer.
#[test]
fn messages_for_a_returning_peer_are_delivered_while_traffic_to_another_flows() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    let (mut gamma, gamma_ep) = fed_node("gamma");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    join_pair((&alpha, "alpha", &alpha_ep), (&gamma, "gamma", &gamma_ep));
    for (node, peer) in [
        (&alpha, "beta"),
        (&beta, "alpha"),
        (&alpha, "gamma"),
        (&gamma, "alpha"),
    ] {
        node.run(&["trust", "set", peer, "attested", "--reason", "scan test"])
            .ok();
    }
    gamma.kill9();
    wait_until("alpha to notice gamma is gone", SETTLE_TIMEOUT, || {
        !session_peers(&alpha).iter().any(|p| p == "gamma")
    });

    // A steady stream to beta for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let alpha_home = alpha.home.clone();
    let stream_stop = Arc::clone(&stop);
    let stream = std::thread::spawn(move || {
        let mut client = Client::connect(&alpha_home).expect("connecting to alpha");
        let mut sent = 0usize;
        while !stream_stop.load(Ordering::SeqCst) {
            client
                .call(
                    "send",
                    json!({"peer": "beta", "message_type": "task-assignment", "payload": {"n": sent}}),
                )
                .expect("send to beta");
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });

    // Queued for gamma while it is down: only the scan can deliver these.
    let mut client = Client::connect(&alpha.home).expect("connecting to alpha");
    for i in 0..20 {
        client
            .call(
                "send",
                json!({"peer": "gamma", "message_type": "task-assignment", "payload": {"g": i}}),
            )
            .expect("send to gamma");
    }
    std::thread::sleep(Duration::from_millis(500));
    gamma.start(&[]);
    wait_until(
        "gamma to receive all 20 while beta's stream flows",
        SETTLE_TIMEOUT,
        || inbox_len(&gamma) == 20,
    );
    assert!(
        !stream.is_finished(),
        "the stream to beta stopped before gamma caught up"
    );
    stop.store(true, Ordering::SeqCst);
    let sent = stream.join().expect("stream thread");
    assert!(sent > 0);
    wait_until("alpha's outbox to drain", SETTLE_TIMEOUT, || {
        outbox(&alpha) == 0
    });
    assert_eq!(inbox_len(&beta), sent);
    let mut got: Vec<u64> = inbox_all(&gamma)
        .iter()
        .map(|m| m["payload"]["g"].as_u64().expect("g"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u64>>());
    for node in [&alpha, &beta, &gamma] {
        verify_audit(node);
    }
}

#[test]
fn removing_a_peer_closes_its_session_and_queries_name_the_unknown_peer() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    let removed = alpha.run(&["peers", "remove", "beta", "--json"]).json();
    assert_eq!(removed["removed"], "beta", "{removed}");
    assert!(removed["session_closed"].is_string(), "{removed}");
    // No session survives on either side, and alpha does not redial.
    assert!(session_peers(&alpha).is_empty());
    wait_until("beta to see the session closed", SETTLE_TIMEOUT, || {
        session_peers(&beta).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(session_peers(&alpha).is_empty());
    // Every command about beta now names the unknown peer (exit 2).
    for args in [
        &["query", "beta", "ping"][..],
        &["leave", "beta"][..],
        &["peers", "remove", "beta"][..],
    ] {
        alpha.run(args).fails(2, &["UNKNOWN_PEER"]);
    }
    verify_audit(&alpha);
    let closed = alpha
        .run(&["audit", "query", "--type", "session_terminated", "--json"])
        .json();
    assert!(
        closed
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["details"]["code"] == "PEER_REMOVED"),
        "{closed}"
    );
}

#[test]
fn a_node_the_peer_left_stops_redialing_it_after_one_refusal() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    beta.run(&["leave", "alpha"]).ok();
    let refusals = || {
        alpha
            .run(&[
                "audit",
                "query",
                "--type",
                "handshake_rejected",
                "--peer",
                "beta",
                "--json",
            ])
            .json()
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| {
                r["details"]["code"] == "REJECTED"
                    && r["summary"]
                        .as_str()
                        .is_some_and(|s| s.contains("SESSION_LEFT"))
            })
            .count()
    };
    wait_until("alpha's redial to be refused", SETTLE_TIMEOUT, || {
        refusals() == 1
    });
    // Retries would come every second here (retry_max_ms = 1000); none do.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(refusals(), 1);
    assert!(session_peers(&alpha).is_empty());
    // Joining again (from beta) brings the session back.
    beta.run(&["join", &alpha_ep, "--fingerprint", &fingerprint(&alpha)])
        .ok();
    wait_until("the session to return", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    verify_audit(&alpha);
}

#[test]
fn processed_inbox_messages_can_be_removed_through_a_number() {
    let (alpha, _, beta, _) = attested_pair();
    for n in 0..3 {
        send_n(&alpha, "beta", n);
    }
    wait_until("beta's inbox to hold 3", SETTLE_TIMEOUT, || {
        inbox(&beta).len() == 3
    });
    let seqs: Vec<u64> = inbox(&beta)
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    let removed = beta
        .run(&["inbox", "--remove-through", &seqs[1].to_string(), "--json"])
        .json();
    assert_eq!(removed["removed"], 2, "{removed}");
    let left = inbox(&beta);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["seq"].as_u64(), Some(seqs[2]));
    // Listing and removing at once is refused before anything happens.
    let both = beta.run(&["inbox", "--remove-through", "1", "--after", "0"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("--remove-through"), "{}", both.stderr);
    assert_eq!(inbox(&beta).len(), 1);
    verify_audit(&beta);
}

#[test]
fn waiting_inbox_reads_wake_on_commit_and_follow_streams_new_messages() {
    use std::io::BufRead;
    let (alpha, _, mut beta, _) = attested_pair();
    let send = |n: u32| send_n(&alpha, "beta", n);

    // Nothing arrives: the wait ends with an empty list.
    let empty = beta.run(&["inbox", "--wait", "1", "--json"]).json();
    assert_eq!(empty, json!([]));

    // A waiting read is answered by the commit, long before its wait ends.
    let home = beta.home.clone();
    let waiter = std::thread::spawn(move || {
        let mut client = Client::connect(&home).expect("control connection");
        let started = Instant::now();
        let page = client
            .call("inbox", json!({"after": 0, "wait_ms": 60_000}))
            .expect("waiting inbox read");
        (page, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    send(1);
    let (page, waited) = waiter.join().expect("waiter");
    assert_eq!(page.as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page[0]["payload"]["n"], 1);
    assert!(
        waited < Duration::from_secs(45),
        "answered only at the end of its wait: {waited:?}"
    );
    let first = page[0]["seq"].as_u64().expect("seq");

    // --follow prints messages as they come, one JSON object per line.
    let mut follower = std::process::Command::new(crate::harness::bin())
        .arg("--home")
        .arg(&beta.home)
        .args(["inbox", "--follow", "--json", "--after", &first.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning inbox --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let expect = |count: usize, got: &mut Vec<u64>, follower: &mut std::process::Child| {
        while got.len() < count {
            match lines_rx.recv_timeout(SETTLE_TIMEOUT) {
                Ok(line) => {
                    let m: Value = serde_json::from_str(&line).expect("one JSON object per line");
                    got.push(m["payload"]["n"].as_u64().expect("n"));
                }
                Err(e) => {
                    let _ = follower.kill();
                    panic!("--follow printed {got:?}, then nothing: {e}");
                }
            }
        }
    };
    send(2);
    send(3);
    expect(2, &mut got, &mut follower);
    // The daemon restarts: --follow waits for it and goes on.
    beta.stop();
    beta.start(&[]);
    wait_until("the session to come back", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    send(4);
    expect(3, &mut got, &mut follower);
    follower.kill().expect("stopping --follow");
    follower.wait().expect("reaping --follow");
    reader.join().expect("reader");
    assert_eq!(got, vec![2, 3, 4]);

    // Nobody reading its output any more (`| head -1`): it ends quietly.
    let mut follower = std::process::Command::new(crate::harness::bin())
        .arg("--home")
        .arg(&beta.home)
        .args(["inbox", "--follow"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning inbox --follow");
    let mut first = String::new();
    std::io::BufReader::new(follower.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.starts_with('#'), "{first}");
    // The read end is closed now: it ends without another message coming
    // (the doc's `| head -1` returns at once, not at the next message).
    let mut status = None;
    wait_until(
        "--follow to end on a closed pipe",
        Duration::from_secs(10),
        || {
            status = follower.try_wait().expect("polling --follow");
            status.is_some()
        },
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A wait past the cap is refused, through the API and the CLI.
    let mut client = Client::connect(&beta.home).expect("control connection");
    let refused = client
        .call("inbox", json!({"after": 0, "wait_ms": 60_001}))
        .expect_err("a wait past the cap");
    assert!(refused.to_string().contains("wait_ms"), "{refused}");
    let cli = beta.run(&["inbox", "--wait", "61"]);
    assert_eq!(cli.code, 2, "{}", cli.stderr);
    verify_audit(&beta);
}

#[test]
fn a_node_that_moves_is_found_at_its_new_endpoint() {
    let (mut alpha, _, mut beta, beta_ep) = attested_pair();

    // beta moves: a new port in agentfed.toml, applied at its next start.
    beta.stop();
    let moved_ep = format!("wss://127.0.0.1:{}", crate::harness::free_port());
    let config_path = beta.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let moved = config.replace(
        &format!("endpoint = \"{beta_ep}\""),
        &format!("endpoint = \"{moved_ep}\""),
    );
    assert_ne!(moved, config, "the config names beta's endpoint");
    std::fs::write(&config_path, moved).expect("config");
    beta.start(&[]);
    assert_eq!(crate::harness::manifest_field(&beta, "endpoint"), moved_ep);
    let published = beta
        .audit_records()
        .into_iter()
        .find(|r| r["event_type"] == "manifest_published")
        .expect("the move is audited");
    assert_eq!(published["details"]["previous_endpoint"], beta_ep.as_str());

    // beta redials alpha; the manifest it proves its key with replaces the
    // stored one.
    wait_until("alpha to learn beta's new endpoint", SETTLE_TIMEOUT, || {
        alpha.peer("beta")["endpoint"] == moved_ep.as_str()
    });
    // beta's claim over its inbound session is not taken at its word: alpha
    // dialed the new endpoint, found beta's certificate there, then adopted.
    let records = alpha.audit_records();
    let claimed = records
        .iter()
        .find(|r| r["event_type"] == "peer_manifest_updated" && r["details"]["adopted"] == false)
        .expect("the claim is audited");
    assert_eq!(
        claimed["details"]["endpoint"],
        moved_ep.as_str(),
        "{claimed}"
    );
    let updated = records
        .into_iter()
        .find(|r| r["event_type"] == "peer_manifest_updated" && r["details"]["adopted"] == true)
        .expect("the update is audited");
    assert_eq!(
        updated["details"]["changed"],
        json!(["endpoint"]),
        "{updated}"
    );
    assert_eq!(updated["details"]["previous_endpoint"], beta_ep.as_str());

    // alpha now dials the new endpoint itself: beta no longer dials out
    // (its list of peers to reconnect to is emptied while it is stopped).
    beta.stop();
    alpha.stop();
    std::fs::write(
        beta.home.join(agentfed::federation::WANTED_FILE),
        b"[]".as_slice(),
    )
    .expect("emptying beta's reconnect list");
    beta.start(&[]);
    alpha.start(&[]);
    wait_until("alpha's redial to reach beta", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            r#"{"after":"the move"}"#,
        ])
        .ok();
    wait_until("the message at the new endpoint", SETTLE_TIMEOUT, || {
        inbox(&beta)
            .iter()
            .any(|m| m["payload"]["after"] == "the move")
    });
    verify_audit(&alpha);
    verify_audit(&beta);
}

#[test]
fn joins_pinned_by_public_key_and_heartbeats_are_observed_but_earn_nothing() {
    let (mut alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    // Heartbeats every second on alpha's side of the session.
    alpha.stop();
    let path = alpha.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).expect("config");
    let faster = config.replace("heartbeat_secs = 30", "heartbeat_secs = 1");
    assert_ne!(faster, config, "the config names heartbeat_secs");
    std::fs::write(&path, faster).expect("config");
    alpha.start(&[]);

    // Pinned by the Ed25519 key instead of the certificate fingerprint.
    let alpha_key = crate::harness::manifest_field(&alpha, "public_key");
    let beta_key = crate::harness::manifest_field(&beta, "public_key");
    alpha
        .run(&["join", &beta_ep, "--public-key", &beta_key])
        .fails(1, &["refused the session", "UNKNOWN_PEER"]);
    let joined = beta
        .run(&["join", &alpha_ep, "--public-key", &alpha_key, "--json"])
        .json();
    assert_eq!(joined["joined"], true, "{joined}");
    // A key that is not the peer's is refused before anything is trusted.
    alpha
        .run(&["join", &beta_ep, "--public-key", &alpha_key])
        .fails(1, &["PIN_MISMATCH"]);
    wait_until("alpha to see its session with beta", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });

    // No messages: answered heartbeats keep beta seen (observed), and
    // earn it nothing toward promotion.
    let metric = |name: &str| {
        alpha.peer("beta")["metrics"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("metrics.{name}"))
    };
    let before = metric("observed");
    wait_until("heartbeats to be observed", SETTLE_TIMEOUT, || {
        metric("observed") >= before + 3
    });
    assert_eq!(metric("interactions"), 0, "heartbeats earn nothing");
    assert_eq!(metric("successes"), 0);
    assert_eq!(metric("failures"), 0, "answered heartbeats are no failures");
    verify_audit(&alpha);
}

#[test]
fn plain_ws_only_where_the_config_allows_it() {
    let plain_node = |name: &str, allow: bool| {
        let endpoint = format!("ws://127.0.0.1:{}", crate::harness::free_port());
        let node = Node::init_at(name, &endpoint);
        crate::harness::fast_retries(&node);
        if allow {
            let path = node.home.join("agentfed.toml");
            let config = std::fs::read_to_string(&path).expect("config");
            let allowed = config.replace("allow_plaintext = false", "allow_plaintext = true");
            assert_ne!(allowed, config, "the config names allow_plaintext");
            std::fs::write(&path, allowed).expect("config");
        }
        (node, endpoint)
    };
    let (mut alpha, alpha_ep) = plain_node("alpha", true);
    let (mut beta, beta_ep) = plain_node("beta", true);
    alpha.start(&[]);
    beta.start(&[]);

    // Without the opt-in a ws:// node does not start at all (it could
    // neither listen nor be dialed): a configuration error naming the
    // setting …
    let (deaf, _) = plain_node("gamma", false);
    deaf.run(&["daemon"])
        .fails(2, &["[transport] allow_plaintext", "ws://"]);
    assert!(!deaf.socket().exists(), "nothing was served");
    // … and a wss:// node without it does not dial ws://.
    let (gamma, _) = fed_node("gamma");
    gamma
        .run(&["join", &alpha_ep, "--accept-new"])
        .fails(1, &["PLAINTEXT_NOT_ALLOWED"]);
    assert!(session_peers(&gamma).is_empty());

    // With it on both sides, the whole handshake runs over ws://.
    alpha
        .run(&["join", &beta_ep, "--accept-new"])
        .fails(1, &["refused the session", "UNKNOWN_PEER"]);
    let joined = beta
        .run(&["join", &alpha_ep, "--accept-new", "--json"])
        .json();
    assert_eq!(joined["joined"], true, "{joined}");
    wait_until("alpha to see its session with beta", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    let pong = alpha.run(&["query", "beta", "ping", "--json"]).json();
    assert_eq!(pong["status"], "replied", "{pong}");
    assert_eq!(pong["reply"]["type"], "pong", "{pong}");
    // The query's envelope named the session it travelled on.
    let session = alpha.run(&["sessions", "--json"]).json()[0]["session_id"].clone();
    let received = beta
        .audit_records()
        .into_iter()
        .find(|r| {
            r["event_type"] == "message_received"
                && r["details"]["envelope_id"] == pong["envelope_id"]
        })
        .expect("beta recorded the query");
    assert_eq!(received["details"]["session"], session, "{received}");
    verify_audit(&alpha);
}

#[test]
fn a_burst_of_700_tasks_leaves_both_peers_attested() {
    // The farming attempt from the issue: two nodes ATTESTED in each
    // other's view (not pinned, so only the earning rules hold them), then
    // 700 task-assignments in a loop. Before the rules, both sides were
    // TRUSTED about two seconds later.
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&[
            "trust",
            "set",
            peer,
            "attested",
            "--unpin",
            "--reason",
            "burst test",
        ])
        .ok();
    }
    let mut client = Client::connect(&alpha.home).expect("alpha's control socket");
    for n in 0..700 {
        client
            .call(
                "send",
                json!({"peer": "beta", "message_type": "task-assignment", "payload": {"n": n}}),
            )
            .expect("send");
    }
    wait_until("the burst to be delivered", SETTLE_TIMEOUT, || {
        outbox(&alpha) == 0 && inbox_len(&beta) == 700
    });
    let metrics = |node: &Node, peer: &str| node.peer(peer)["metrics"].clone();
    // alpha asked, beta fulfilled: counted, but at most the hourly cap (a
    // run straddling a clock hour may see two hours' worth).
    let earned = metrics(&alpha, "beta");
    let counted = earned["successes"].as_u64().unwrap();
    assert!((60..=120).contains(&counted), "{earned}");
    assert_eq!(
        counted + earned["earned"]["over_cap"].as_u64().unwrap(),
        700,
        "{earned}"
    );
    // beta only received: observed, nothing earned.
    let observed = metrics(&beta, "alpha");
    assert!(observed["observed"].as_u64().unwrap() >= 700, "{observed}");
    assert_eq!(observed["successes"], 0, "{observed}");
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&["trust", "evaluate", peer]).ok();
        assert_eq!(node.peer(peer)["trust_level"], "ATTESTED");
    }
    verify_audit(&alpha);
}

#[test]
fn a_pair_on_fake_clocks_earns_trusted_on_the_expected_day_and_not_before() {
    // Two daemons on fake clocks moved together, ten days of a realistic
    // pattern in alpha's view of beta:
    // * days 0-1, beta VERIFIED: alpha asks beta 30 `ping` queries a day,
    //   which beta answers (ATTESTED needs 24 h, 2 active days, 50);
    // * from day 1, beta ATTESTED: alpha delivers 80 task-assignments a day
    //   in two working hours (TRUSTED needs 7 days at ATTESTED, 5 active
    //   days, 500).
    let start = crate::harness::FAKE_START_MS.to_string();
    let fake = |name: &str| {
        let endpoint = format!("wss://127.0.0.1:{}", crate::harness::free_port());
        let mut node = Node::init_at(name, &endpoint);
        crate::harness::fast_retries(&node);
        node.start(&["--fake-clock-ms", &start]);
        (node, endpoint)
    };
    let (alpha, alpha_ep) = fake("alpha");
    let (beta, beta_ep) = fake("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    // beta lets alpha send it work; alpha raises nobody: beta must earn it.
    beta.run(&[
        "trust",
        "set",
        "alpha",
        "attested",
        "--reason",
        "alpha's tasks welcome",
    ])
    .ok();
    let mut clients: Vec<Client> = [&alpha, &beta]
        .iter()
        .map(|n| Client::connect(&n.home).expect("control socket"))
        .collect();
    let mut advance = |ms: u64| {
        for client in clients.iter_mut() {
            client
                .call("clock.advance", json!({"ms": ms, "tick": true}))
                .expect("clock.advance");
        }
    };
    let level = || {
        alpha.peer("beta")["trust_level"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut alpha_client = Client::connect(&alpha.home).expect("control socket");
    let mut history = Vec::new();
    let mut sent = 0u64;
    for day in 0..10u64 {
        if level() == "VERIFIED" {
            for _ in 0..30 {
                // Sessions live on the fake clock: a jump can expire one,
                // and the nodes redial; a query meanwhile is retried.
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                let reply = loop {
                    match alpha_client.call(
                        "query",
                        json!({"peer": "beta", "message_type": "ping", "payload": {}}),
                    ) {
                        Ok(reply) => break reply,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("query retried: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("ping query: {e}"),
                    }
                };
                assert_eq!(reply["status"], "replied", "{reply}");
                advance(60_000);
            }
        } else {
            for _hour in 0..2 {
                for n in 0..40 {
                    alpha_client
                        .call(
                            "send",
                            json!({"peer": "beta", "message_type": "task-assignment", "payload": {"day": day, "n": n}}),
                        )
                        .expect("send");
                }
                sent += 40;
                // Retries are due on the fake clock: nudge it (both
                // clocks, a second at a time) while delivery catches up.
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                let mut nudged = 0;
                while outbox(&alpha) > 0 {
                    assert!(
                        Instant::now() < deadline,
                        "the hour's tasks were not delivered"
                    );
                    advance(1_000);
                    nudged += 1_000;
                    std::thread::sleep(Duration::from_millis(50));
                }
                advance(3_600_000_u64.saturating_sub(nudged));
            }
        }
        history.push((day, level()));
        // The rest of the day, in hours, the timers ticking.
        let used = if day == 0 || history.iter().all(|(_, l)| l == "VERIFIED") {
            30 * 60_000
        } else {
            2 * 3_600_000
        };
        let mut rest = 24 * 3_600_000 - used;
        while rest > 0 {
            let step = rest.min(3_600_000);
            advance(step);
            rest -= step;
        }
    }
    assert!(sent >= 500, "{sent}");
    let first = |wanted: &str| history.iter().find(|(_, l)| l == wanted).map(|(d, _)| *d);
    assert_eq!(first("ATTESTED"), Some(1), "{history:?}");
    assert_eq!(first("TRUSTED"), Some(8), "{history:?}");
    // beta's view of alpha: held by its operator, and alpha never did work
    // for beta, so nothing was earned there.
    let beta_view = beta.peer("alpha");
    assert_eq!(beta_view["trust_level"], "ATTESTED");
    assert_eq!(beta_view["metrics"]["successes"], 0, "{beta_view}");
    verify_audit(&alpha);
    verify_audit(&beta);
}

#[test]
fn messages_queued_before_a_demotion_are_dropped_not_delivered() {
    let (alpha, _alpha_ep, mut beta, _beta_ep) = attested_pair();
    beta.stop();
    for n in 0..2 {
        send_n(&alpha, "beta", n);
    }
    assert_eq!(outbox(&alpha), 2);
    // alpha's operator lowers beta while the tasks wait: they were gated
    // and scanned for ATTESTED, which beta no longer is.
    alpha
        .run(&[
            "trust",
            "set",
            "beta",
            "verified",
            "--reason",
            "under review",
        ])
        .ok();
    beta.start(&[]);
    wait_until("the stale queue to be dropped", SETTLE_TIMEOUT, || {
        outbox(&alpha) == 0
    });
    let dropped: Vec<Value> = alpha
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["event_type"] == "message_rejected" && r["details"]["reason"] == "LEVEL_LOWERED"
        })
        .collect();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    // Nothing of it reached beta, while a ping (allowed at VERIFIED) does.
    wait_until("the session to come back", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    alpha.run(&["query", "beta", "ping"]).ok();
    assert!(
        inbox(&beta).iter().all(|m| m["from"] != "alpha"),
        "{:?}",
        inbox(&beta)
    );
}

#[test]
fn nothing_sent_fails_silently_send_wait_outbox_and_failed() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (mut beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    // Raised on one side only, as a newcomer following the docs might.
    alpha
        .run(&[
            "trust",
            "set",
            "beta",
            "attested",
            "--reason",
            "one side only",
        ])
        .ok();
    let refused = alpha.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"x"}"#,
        "--wait",
        "20",
    ]);
    refused.fails(1, &["CAPABILITY_DENIED", "refused", "outbox --failed"]);
    let failed = alpha.run(&["outbox", "--failed", "--json"]).json();
    assert_eq!(failed[0]["code"], "CAPABILITY_DENIED", "{failed}");
    assert_eq!(failed[0]["peer"], "beta");
    let text = alpha.run(&["outbox", "--failed"]);
    assert!(text.ok().contains("CAPABILITY_DENIED"), "{}", text.stdout);
    let status = alpha.run(&["status", "--json"]).json();
    assert_eq!(status["refused_for_good"], 1, "{status}");
    let log = alpha.daemon.as_ref().expect("running").log();
    assert!(
        log.contains("message refused for good"),
        "a final refusal is logged at warn: {log}"
    );

    // Both sides raised: --wait reports the delivery.
    beta.run(&["trust", "set", "alpha", "attested", "--reason", "now both"])
        .ok();
    let delivered = alpha.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"task":"y"}"#,
        "--wait",
    ]);
    assert!(delivered.ok().contains("delivered"), "{}", delivered.stdout);

    // beta away: messages wait, listed with their type; one is cancelled;
    // --wait gives up with TIMEOUT and the message stays queued.
    beta.stop();
    send_n(&alpha, "beta", 1);
    let waited = alpha.run(&[
        "send",
        "beta",
        "task-assignment",
        "--payload",
        r#"{"n":2}"#,
        "--wait",
        "1",
    ]);
    waited.fails(1, &["TIMEOUT", "still queued"]);
    let queued = alpha.run(&["outbox", "--json"]).json();
    let queued = queued.as_array().unwrap();
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert!(
        queued
            .iter()
            .all(|m| m["message_type"] == "task-assignment" && m["peer"] == "beta")
    );
    let listing = alpha.run(&["outbox"]);
    assert!(listing.ok().contains("ATTEMPTS"), "{}", listing.stdout);
    let id = queued[0]["envelope_id"].as_str().unwrap().to_string();
    alpha
        .run(&["outbox", "cancel", &id, "--reason", "no longer needed"])
        .ok();
    alpha
        .run(&["outbox", "cancel", &id, "--reason", "again"])
        .fails(2, &["no queued message"]);
    assert_eq!(outbox(&alpha), 1);
    let cancelled = alpha.run(&["outbox", "--failed", "--json"]).json();
    assert!(
        cancelled
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["envelope_id"] == id.as_str() && r["code"] == "CANCELLED"),
        "{cancelled}"
    );
    beta.start(&[]);
    wait_until("the one left to be delivered", SETTLE_TIMEOUT, || {
        outbox(&alpha) == 0
    });
    let got = inbox(&beta);
    assert!(
        got.iter().all(|m| m["envelope_id"] != id.as_str()),
        "the cancelled message never arrives"
    );
    verify_audit(&alpha);
}

#[test]
fn an_unreachable_peer_is_audited_once_per_outage_not_once_per_redial() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (mut beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    let records = |event: &str| {
        alpha
            .run(&[
                "audit", "query", "--type", event, "--peer", "beta", "--limit", "1000", "--json",
            ])
            .json()
            .as_array()
            .expect("records")
            .len()
    };
    let (failed_before, dialing_before) =
        (records("handshake_failed"), records("handshake_initiated"));

    // An outage: alpha redials about every second (redial_max_ms = 1000
    // here), a dozen times in 12 s; one record says beta is unreachable.
    beta.stop();
    wait_until("alpha to notice the outage", SETTLE_TIMEOUT, || {
        records("handshake_failed") > failed_before
    });
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        records("handshake_failed"),
        failed_before + 1,
        "one record per outage"
    );
    assert!(
        records("handshake_initiated") <= dialing_before + 2,
        "redials during an outage are not audited one by one"
    );

    // The outage ends with the session; the next one is audited again.
    beta.start(&[]);
    wait_until("the session to return", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });
    beta.stop();
    wait_until("the second outage's record", SETTLE_TIMEOUT, || {
        records("handshake_failed") == failed_before + 2
    });
    verify_audit(&alpha);
}

#[test]
fn a_keyed_send_cut_off_by_kill_9_and_retried_is_delivered_exactly_once() {
    let (mut alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&[
            "trust",
            "set",
            peer,
            "attested",
            "--reason",
            "idempotency test",
        ])
        .ok();
    }
    const SENDS: u64 = 8;
    let args = |i: u64| {
        vec![
            "send".to_string(),
            "beta".into(),
            "task-assignment".into(),
            "--payload".into(),
            json!({"n": i}).to_string(),
            "--idempotency-key".into(),
            format!("job-{i}"),
            "--json".into(),
        ]
    };
    let mut ids = BTreeMap::new();
    for i in 0..SENDS {
        // The send is in flight (or done, or not yet arrived) when the
        // daemon is killed: each run cuts it at another point.
        let mut child = std::process::Command::new(crate::harness::bin())
            .arg("--home")
            .arg(&alpha.home)
            .args(args(i))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawning send");
        std::thread::sleep(Duration::from_millis(i * 4));
        alpha.kill9();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the cut-off send did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        alpha.start(&[]);
        // The client cannot know whether it was queued: it retries.
        let retry: Vec<String> = args(i);
        let retry: Vec<&str> = retry.iter().map(String::as_str).collect();
        let receipt = alpha.run(&retry).json();
        ids.insert(receipt["envelope_id"].as_str().expect("id").to_string(), i);
        // Retried again: the same receipt, marked as a repeat.
        let again = alpha.run(&retry).json();
        assert_eq!(again["envelope_id"], receipt["envelope_id"]);
        assert_eq!(again["repeated"], true);
    }
    // The key bound to its request: another payload is refused.
    alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            "{\"n\": 99}",
            "--idempotency-key",
            "job-0",
        ])
        .fails(2, &["IDEMPOTENCY_KEY_REUSED"]);
    wait_until(
        "the sender's outbox to drain",
        Duration::from_secs(60),
        || outbox(&alpha) == 0,
    );
    let received = inbox_all(&beta);
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for m in &received {
        seen.entry(m["payload"]["n"].as_u64().expect("n"))
            .or_default()
            .push(m["envelope_id"].as_str().expect("id").to_string());
    }
    for i in 0..SENDS {
        let got = seen.get(&i).cloned().unwrap_or_default();
        assert_eq!(got.len(), 1, "message {i} delivered {} times", got.len());
        assert_eq!(
            ids.get(&got[0]),
            Some(&i),
            "message {i} under another envelope"
        );
    }
    assert_eq!(received.len() as u64, SENDS);
}

/// A `context-share` payload of about `mib` MiB: strings of ~1 KB (the
/// shape of a large document set), one e-mail address per 64 strings.
pub(crate) fn bulk_payload(mib: usize) -> String {
    let chunk = "the quarterly summary covers throughput, latency and cost per region. ".repeat(14);
    let docs: Vec<String> = (0..mib * 1000)
        .map(|i| {
            if i % 64 == 0 {
                format!("{chunk} ask ops{i}@example.com")
            } else {
                chunk.clone()
            }
        })
        .collect();
    json!({"docs": docs}).to_string()
}

#[test]
fn a_15_mib_context_share_goes_through_two_daemons_while_pings_are_answered() {
    // The default deadlines, scaled with the payload's size, fit a 15 MiB
    // scan with room on an idle machine (docs/benchmarks.md); this test
    // shares two cores with the whole suite, so its nodes get a larger
    // base.
    let node = |name: &str| {
        let endpoint = format!("wss://127.0.0.1:{}", crate::harness::free_port());
        let mut node = Node::init_at(name, &endpoint);
        crate::harness::fast_retries(&node);
        crate::harness::set_payload_plugin_deadlines(&node, 1000);
        node.start(&[]);
        (node, endpoint)
    };
    let (alpha, alpha_ep) = node("alpha");
    let (beta, beta_ep) = node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    // Over 1 MiB goes only as context-share or memory-response to TRUSTED.
    let payload = bulk_payload(15);
    assert!(
        payload.len() > 14_000_000 && payload.len() < 16_000_000,
        "{}",
        payload.len()
    );
    let file = alpha.write_file("bulk.json", payload.as_bytes());
    let at = format!("@{}", file.display());
    alpha
        .run(&["trust", "set", "beta", "attested", "--reason", "bulk test"])
        .ok();
    alpha
        .run(&["send", "beta", "task-assignment", "--payload", &at])
        .fails(2, &["MESSAGE_TOO_LARGE", "TRUSTED"]);
    assert_eq!(outbox(&alpha), 0, "nothing queued");
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&["trust", "set", peer, "trusted", "--reason", "bulk test"])
            .ok();
    }
    // Two bulk sends queued at once; pings go through meanwhile.
    for _ in 0..2 {
        alpha
            .run(&["send", "beta", "context-share", "--payload", &at])
            .ok();
    }
    for _ in 0..3 {
        let pong = alpha
            .run(&["query", "beta", "ping", "--json", "--timeout-ms", "10000"])
            .json();
        assert_eq!(pong["status"], "replied", "{pong}");
    }
    wait_until(
        "both bulk messages delivered",
        Duration::from_secs(120),
        || outbox(&alpha) == 0,
    );
    let received = inbox_all(&beta);
    let bulk: Vec<&Value> = received
        .iter()
        .filter(|m| m["message_type"] == "context-share")
        .collect();
    assert_eq!(bulk.len(), 2);
    for m in bulk {
        let docs = m["payload"]["docs"].as_array().expect("docs");
        assert_eq!(docs.len(), 15_000);
        // The outbound PII scan of the whole payload ran: addresses in
        // strings past the first MiB are handled too.
        let last = docs[14_976].as_str().expect("doc");
        assert!(
            !last.contains("ops14976@example.com"),
            "{}",
            &last[last.len() - 60..]
        );
    }
}

#[test]
fn keyed_query_and_broadcast_retries_return_the_recorded_answer_and_send_nothing() {
    let (mut alpha, alpha_ep) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    // Queries alpha sent that beta answered (one `message_sent` record
    // each, state "answered").
    let answered = || {
        alpha
            .run(&["audit", "query", "--type", "message_sent", "--json"])
            .json()
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["details"]["state"] == "answered")
            .count()
    };
    let query = |payload: &str, key: &str| {
        alpha.run(&[
            "query",
            "beta",
            "ping",
            "--payload",
            payload,
            "--idempotency-key",
            key,
            "--json",
        ])
    };
    let first = query("{}", "q-1").json();
    assert_eq!(first["status"], "replied", "{first}");
    assert!(first.get("repeated").is_none(), "{first}");
    let sent = answered();
    // The retry: the recorded answer, the same envelope, nothing sent.
    let again = query("{}", "q-1").json();
    assert_eq!(again["repeated"], true, "{again}");
    assert_eq!(again["envelope_id"], first["envelope_id"]);
    assert_eq!(again["reply"], first["reply"]);
    assert_eq!(answered(), sent, "a repeated query is not sent");
    let human = alpha
        .run(&["query", "beta", "ping", "--idempotency-key", "q-1"])
        .ok()
        .to_string();
    assert!(human.contains("already answered"), "{human}");
    // The key is bound to its request.
    query(r#"{"n":2}"#, "q-1").fails(2, &["IDEMPOTENCY_KEY_REUSED"]);
    // Two calls with a new key at once: one query is sent, and both get
    // its answer.
    let sent = answered();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| query("{}", "q-2").json());
        let b = s.spawn(|| query("{}", "q-2").json());
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_eq!(a["envelope_id"], b["envelope_id"], "{a} {b}");
    assert_eq!(
        [&a, &b].iter().filter(|r| r["repeated"] == true).count(),
        1,
        "{a} {b}"
    );
    assert_eq!(answered(), sent + 1);

    let broadcast = |payload: &str, key: &str| {
        alpha.run(&[
            "broadcast",
            "status-broadcast",
            "--payload",
            payload,
            "--idempotency-key",
            key,
            "--json",
        ])
    };
    let first = broadcast(r#"{"load":0.5}"#, "b-1").json();
    let list = first.as_array().expect("results");
    assert_eq!(list.len(), 1, "{first}");
    assert_eq!(list[0]["ok"], true, "{first}");
    let sent = answered();
    let again = broadcast(r#"{"load":0.5}"#, "b-1").json();
    let repeated = again.as_array().expect("results");
    assert_eq!(repeated.len(), 1, "{again}");
    assert_eq!(repeated[0]["repeated"], true, "{again}");
    assert_eq!(
        repeated[0]["result"]["envelope_id"],
        list[0]["result"]["envelope_id"]
    );
    assert_eq!(answered(), sent, "a repeated broadcast is not sent");
    broadcast(r#"{"load":0.9}"#, "b-1").fails(2, &["IDEMPOTENCY_KEY_REUSED"]);
    // A key names one request of one kind: the query's key is not a
    // broadcast's.
    broadcast(r#"{"load":0.5}"#, "q-1").fails(2, &["IDEMPOTENCY_KEY_REUSED"]);
    // The recorded answer is durable: after a kill -9 and a restart the
    // retry gets it without a session, and nothing is sent.
    let first = query("{}", "q-1").json();
    alpha.kill9();
    alpha.start(&[]);
    let after = alpha
        .run(&[
            "query",
            "beta",
            "ping",
            "--idempotency-key",
            "q-1",
            "--json",
        ])
        .json();
    assert_eq!(after["repeated"], true, "{after}");
    assert_eq!(after["envelope_id"], first["envelope_id"]);
    verify_audit(&alpha);
}
