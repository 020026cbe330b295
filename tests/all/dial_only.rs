//! Dial-only nodes (protocol §4.3, §10.3): a node made with `init
//! --no-listen` publishes no endpoint and opens no listener; its peers
//! never dial it, and what they queue for it is delivered while it is
//! connected (the guide's travel laptop and home server).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Node, fast_retries, fed_node, fingerprint, wait_until};

/// Longest wait for sessions and deliveries.
const SETTLE: Duration = Duration::from_secs(30);

fn outbox(node: &Node) -> u64 {
    node.run(&["status", "--json"]).json()["outbox"]
        .as_u64()
        .expect("outbox count")
}

fn inbox_tasks(node: &Node) -> Vec<String> {
    node.run(&["inbox", "--limit", "1000", "--json"])
        .json()
        .as_array()
        .expect("inbox array")
        .iter()
        .filter_map(|m| m["payload"]["task"].as_str().map(str::to_string))
        .collect()
}

/// Audit records of `node` about `peer` with one of `types`.
fn records_about(node: &Node, peer: &str, types: &[&str]) -> Vec<Value> {
    node.audit_records()
        .into_iter()
        .filter(|r| r["peer"] == peer && types.iter().any(|t| r["event_type"] == *t))
        .collect()
}

#[test]
fn a_dial_only_node_is_never_dialed_and_gets_what_was_queued_when_it_connects() {
    let (mut home, home_endpoint) = fed_node("home-server");
    let mut laptop = Node::init_with("travel-laptop", &["--no-listen"]);
    fast_retries(&laptop);

    // Its manifest has no endpoint, and says so to whoever checks it.
    let manifest: Value = serde_json::from_str(laptop.run(&["manifest"]).ok()).expect("manifest");
    assert_eq!(manifest["manifest"]["endpoint"], Value::Null);
    let file = laptop.manifest_file("travel-laptop.manifest.json");
    let checked = home.run(&["manifest", "verify", file.to_str().expect("utf-8")]);
    assert!(checked.ok().contains("dial-only"), "{}", checked.ok());
    let config = std::fs::read_to_string(laptop.home.join("agentfed.toml")).expect("config");
    assert!(config.contains("endpoint = \"none\""), "{config}");

    // It runs without a listener.
    laptop.start(&[]);
    let status = laptop.run(&["status", "--json"]).json();
    assert_eq!(status["endpoint"], Value::Null);
    assert!(laptop.run(&["status"]).ok().contains("dial-only"));

    // The home server knows it by its manifest; something queued for it
    // waits, since there is nowhere to dial.
    let added = home.run(&["peers", "add", file.to_str().expect("utf-8")]);
    assert!(added.ok().contains("dial-only"), "{}", added.ok());
    assert_eq!(home.peer("travel-laptop")["endpoint"], Value::Null);
    home.run(&[
        "trust",
        "set",
        "travel-laptop",
        "attested",
        "--reason",
        "my laptop",
    ])
    .ok();
    home.run(&[
        "send",
        "travel-laptop",
        "task-assignment",
        "--payload",
        r#"{"task":"while you were away"}"#,
    ])
    .ok();
    assert_eq!(outbox(&home), 1);

    // The laptop knows the server and trusts it to assign tasks, then
    // joins; the queued message arrives over the session it opened, and
    // the home server removes it on the signed receipt.
    let server_manifest = home.manifest_file("home-server.manifest.json");
    laptop
        .run(&["peers", "add", server_manifest.to_str().expect("utf-8")])
        .ok();
    laptop
        .run(&[
            "trust",
            "set",
            "home-server",
            "attested",
            "--reason",
            "my server",
        ])
        .ok();
    laptop
        .run(&["join", &home_endpoint, "--fingerprint", &fingerprint(&home)])
        .ok();
    wait_until("the queued message reaches the laptop", SETTLE, || {
        inbox_tasks(&laptop) == ["while you were away"]
    });
    wait_until("the home server's outbox empties", SETTLE, || {
        outbox(&home) == 0
    });
    let delivered: Vec<Value> = records_about(&home, "travel-laptop", &["message_sent"])
        .into_iter()
        .filter(|r| r["details"]["state"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert!(
        delivered[0]["details"]["receipt"].is_object(),
        "{delivered:#?}"
    );

    // The laptop goes away. The home server queues for it again and never
    // tries to dial it (fast retries would redial every second).
    laptop.stop();
    wait_until("the home server sees the session end", SETTLE, || {
        home.run(&["sessions", "--json"])
            .json()
            .as_array()
            .is_some_and(|s| s.is_empty())
    });
    let dials_before = records_about(
        &home,
        "travel-laptop",
        &["handshake_initiated", "handshake_failed"],
    )
    .len();
    home.run(&[
        "send",
        "travel-laptop",
        "task-assignment",
        "--payload",
        r#"{"task":"second trip"}"#,
    ])
    .ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(outbox(&home), 1, "kept for the laptop");
    let dials_after = records_about(
        &home,
        "travel-laptop",
        &["handshake_initiated", "handshake_failed"],
    );
    assert_eq!(
        dials_after.len(),
        dials_before,
        "a dial-only peer must never be dialed: {dials_after:#?}"
    );

    // Back online, the laptop redials the home server by itself (it joined
    // it), and the second message arrives.
    laptop.start(&[]);
    wait_until("the second message reaches the laptop", SETTLE, || {
        inbox_tasks(&laptop).contains(&"second trip".to_string())
    });
    wait_until("the home server's outbox empties again", SETTLE, || {
        outbox(&home) == 0
    });
    laptop.stop();
    home.stop();
}

#[test]
fn init_no_listen_refuses_an_endpoint_and_a_bad_endpoint_names_the_dial_only_spelling() {
    let dir = crate::support::private_tempdir();
    let home = dir.path().join("n");
    let home_str = home.to_str().expect("utf-8");
    let both = crate::harness::agentfed(
        &home,
        &[
            "init",
            "--node-id",
            "n",
            "--no-listen",
            "--endpoint",
            "wss://127.0.0.1:9100",
        ],
    );
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(
        both.stderr.contains("--no-listen") && both.stderr.contains("--endpoint"),
        "{}",
        both.stderr
    );
    assert!(!home.exists(), "nothing created at {home_str}");
    let bad = crate::harness::agentfed(&home, &["init", "--node-id", "n", "--endpoint", "None"]);
    bad.fails(2, &["endpoint", "\"none\""]);
    assert!(!home.exists(), "nothing created at {home_str}");
}
