//! User-facing errors and hints of the CLI, run as real processes: `init`
//! under a live daemon, a daemon whose listen port is taken, `join`
//! refusals and pins, budget flags, `--payload @-`, and help texts. Every
//! home is a temp dir, every port an ephemeral one on 127.0.0.1, and every
//! daemon started here is stopped.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    CLI_TIMEOUT, Node, START_TIMEOUT, bin, fast_retries, fed_node, manifest_field,
    run_with_timeout, session_peers, wait_until,
};

/// Longest wait for a session to come up or go down.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `agentfed --home HOME args…` with `stdin` as standard input.
fn with_stdin(node: &Node, args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(&node.home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawning agentfed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.expect("waiting for agentfed"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("timed out after {CLI_TIMEOUT:?} waiting for agentfed {args:?}");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `agentfed ARGS --help` (no home needed).
fn help(args: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--help");
    let out = run_with_timeout(cmd, &format!("agentfed {args:?} --help"), CLI_TIMEOUT);
    assert!(out.status.success(), "{args:?} --help failed");
    // Unwrap clap's line wrapping so phrases can be searched.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn init_force_is_refused_while_the_daemon_runs() {
    let mut node = Node::init("running");
    node.start(&[]);
    let files = [
        "identity.key",
        "tls.crt",
        "tls.key",
        "node.json",
        "agentfed.toml",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(node.home.join(f)).expect("reading a node file"))
        .collect();
    let pid = node.daemon.as_ref().expect("daemon").pid().to_string();
    node.run(&["init", "--node-id", "replaced", "--force"])
        .fails(1, &["is running", &pid, "stop it", "nothing was changed"]);
    node.run(&["init", "--node-id", "replaced"])
        .fails(1, &["is running"]);
    for (file, old) in files.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(node.home.join(file)).expect("reading a node file"),
            old,
            "{file} changed under the running daemon"
        );
    }
    // The daemon is unaffected; once it stops, --force works.
    node.run(&["status"]).ok();
    node.stop();
    node.run(&["init", "--node-id", "replaced", "--force"]).ok();
    assert_ne!(
        std::fs::read(node.home.join("identity.key")).expect("identity.key"),
        before[0]
    );
}

#[test]
fn daemon_exits_1_when_its_listen_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    let addr = taken.local_addr().expect("local addr");
    let mut node = Node::init_at("deaf", &format!("wss://{addr}"));
    let mut daemon = node.spawn_daemon(&[]);
    let status = daemon.wait_exit("the daemon to refuse a taken port", START_TIMEOUT);
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(
        line.contains(&format!("cannot listen for peers on {addr}")),
        "{line}"
    );
    assert!(line.contains("in use"), "{line}");
    assert!(!log.contains("daemon ready"), "{log}");
    assert!(!node.socket().exists());
    drop(taken);

    // The same through [transport] listen, with the endpoint elsewhere.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    let addr = taken.local_addr().expect("local addr");
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).expect("reading the config");
    let config = config.replace(
        "# listen = \"0.0.0.0:9100\"",
        &format!("listen = \"{addr}\""),
    );
    assert!(config.contains(&format!("listen = \"{addr}\"")), "{config}");
    std::fs::write(&path, config).expect("writing the config");
    let mut daemon = node.spawn_daemon(&[]);
    let status = daemon.wait_exit("the daemon to refuse a taken port", START_TIMEOUT);
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        log.contains(&format!("cannot listen for peers on {addr}")),
        "{log}"
    );
    drop(taken);
    // Free again: the daemon starts.
    node.start(&[]);
    node.stop();
}

#[test]
fn join_refusals_exit_1_with_a_hint_matching_the_code() {
    let (mut alpha, alpha_ep) = fed_node("alpha");
    let (mut beta, beta_ep) = fed_node("beta");
    let alpha_fp = manifest_field(&alpha, "tls_fingerprint");
    let beta_fp = manifest_field(&beta, "tls_fingerprint");

    // beta does not know alpha: the generic hint, and alpha now knows beta.
    let first = alpha.run(&["join", &beta_ep, "--accept-new"]);
    first.fails(1, &["beta refused the session: UNKNOWN_PEER"]);
    assert!(
        first.stdout.contains("beta is known here now"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains(&format!(
            "agentfed join {alpha_ep} --fingerprint {alpha_fp}"
        )),
        "{}",
        first.stdout
    );

    // beta joins alpha trusting on first use: the fingerprint it trusted
    // is printed.
    let joined = beta.run(&["join", &alpha_ep, "--accept-new"]);
    let out = joined.ok();
    assert!(out.contains("joined alpha"), "{out}");
    assert!(
        out.contains(&format!("trusted TLS certificate fingerprint {alpha_fp}")),
        "{out}"
    );
    wait_until("alpha's session with beta", SETTLE_TIMEOUT, || {
        session_peers(&alpha).iter().any(|p| p == "beta")
    });

    // beta evicts alpha: alpha's join is refused with PEER_EVICTED, and
    // the hint says beta's operator must reactivate alpha.
    beta.run(&["evict", "alpha", "--reason", "cli test"]).ok();
    wait_until("alpha to lose its session", SETTLE_TIMEOUT, || {
        !session_peers(&alpha).iter().any(|p| p == "beta")
    });
    let evicted = alpha.run(&["join", &beta_ep, "--fingerprint", &beta_fp, "--json"]);
    evicted.fails(1, &["beta refused the session: PEER_EVICTED"]);
    let result: Value = serde_json::from_str(&evicted.stdout).expect("join result JSON");
    assert_eq!(result["joined"], false, "{result}");
    assert_eq!(result["added"], false, "{result}");
    let hint = result["hint"].as_str().expect("hint");
    assert!(hint.contains("beta was already known here"), "{hint}");
    assert!(hint.contains("agentfed reactivate alpha"), "{hint}");
    assert!(!hint.contains("is known here now"), "{hint}");
    assert!(!hint.contains("--fingerprint"), "{hint}");

    // alpha is re-initialised with a new key under the same id: beta has
    // the old key on record, so its operator must remove it first.
    alpha
        .run(&["init", "--node-id", "alpha", "--force"])
        .fails(1, &["is running"]);
    alpha.stop();
    alpha
        .run(&[
            "init",
            "--node-id",
            "alpha",
            "--endpoint",
            &alpha_ep,
            "--mesh-subnet",
            "198.18.0.0/15",
            "--force",
        ])
        .ok();
    fast_retries(&alpha);
    alpha.start(&[]);
    let new_fp = manifest_field(&alpha, "tls_fingerprint");
    let mismatch = alpha.run(&["join", &beta_ep, "--fingerprint", &beta_fp]);
    mismatch.fails(1, &["beta refused the session: KEY_MISMATCH"]);
    assert!(
        mismatch.stdout.contains("agentfed peers remove alpha"),
        "{}",
        mismatch.stdout
    );
    assert!(
        mismatch
            .stdout
            .contains(&format!("agentfed join {alpha_ep} --fingerprint {new_fp}")),
        "{}",
        mismatch.stdout
    );
    assert!(
        !mismatch.stdout.contains("reactivate"),
        "{}",
        mismatch.stdout
    );
    // From beta's side the new key does not match its record of alpha: the
    // probe (no pin) and a join pinning the new certificate both say so,
    // with the way out, instead of suggesting a pin that cannot work.
    for args in [
        vec!["join", alpha_ep.as_str()],
        vec!["join", alpha_ep.as_str(), "--fingerprint", new_fp.as_str()],
    ] {
        let out = beta
            .run(&args)
            .fails(1, &["KEY_MISMATCH", "agentfed peers remove alpha"]);
        assert!(!out.contains("rerun with --fingerprint"), "{out}");
    }
    // A node's own endpoint is named as such at once.
    beta.run(&["join", &beta_ep]).fails(2, &["own endpoint"]);
    alpha.stop();
    beta.stop();
}

#[test]
fn join_pins_are_checked_before_contacting_anyone() {
    // No daemon runs: a bad pin is exit 2, not "no daemon" (exit 3).
    let node = Node::init("pins");
    let endpoint = "wss://127.0.0.1:9";
    let sha = format!("sha256:{}", "ab".repeat(32));
    node.run(&["join", endpoint, "--fingerprint", &sha]).fails(
        2,
        &["TLS certificate fingerprint", "tls fingerprint", "identity"],
    );
    node.run(&["join", endpoint, "--fingerprint", "abcd"])
        .fails(2, &["64 hex digits"]);
    node.run(&["join", endpoint, "--public-key", "abc"])
        .fails(2, &["not a valid Ed25519 public key", "base64", "32 bytes"]);
    // Well-formed pins get as far as the daemon.
    let key = manifest_field(&node, "public_key");
    node.run(&["join", endpoint, "--public-key", &key])
        .fails(3, &["no agentfed daemon"]);
    let colons = "ab:".repeat(31) + "ab";
    node.run(&["join", endpoint, "--fingerprint", &colons])
        .fails(3, &["no agentfed daemon"]);
}

#[test]
fn budget_flags_name_the_flag_and_the_range() {
    let node = Node::init("budgets");
    for (flag, value, range) in [
        ("--max-usd", "-1", "from 0 to 1000000"),
        ("--max-usd", "1000000.5", "from 0 to 1000000"),
        ("--max-hops", "65", "whole number from 0 to 64"),
        ("--max-hops", "2.5", "whole number from 0 to 64"),
        (
            "--max-tokens",
            "1200.7",
            "whole number from 0 to 1000000000",
        ),
        ("--max-tokens", "-5", "whole number from 0 to 1000000000"),
    ] {
        let line = node
            .run(&["send", "peer", "ping", "--payload", "{}", flag, value])
            .fails(2, &["INVALID_BUDGET", flag, range]);
        assert!(!line.contains(value), "the value is not echoed: {line}");
    }
    // Valid budgets get as far as the daemon.
    node.run(&[
        "send",
        "peer",
        "ping",
        "--payload",
        "{}",
        "--max-usd",
        "0.5",
        "--max-tokens",
        "1200",
        "--max-hops",
        "64",
    ])
    .fails(3, &["no agentfed daemon"]);
}

#[test]
fn payload_from_stdin_works_for_send_query_and_broadcast() {
    let node = Node::init("stdin");
    for args in [
        vec!["send", "peer", "ping", "--payload", "@-"],
        vec!["query", "peer", "ping", "--payload", "@-"],
        vec!["broadcast", "ping", "--payload", "@-"],
    ] {
        // Read and parsed: the command gets as far as the (absent) daemon.
        let (code, stderr) = with_stdin(&node, &args, r#"{"from":"stdin"}"#);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert!(stderr.contains("no agentfed daemon"), "{args:?}: {stderr}");
        // Read from stdin, and refused as JSON (not as a file named `-`).
        let (code, stderr) = with_stdin(&node, &args, "{not json");
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--payload is not valid JSON"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_texts_say_what_the_commands_accept() {
    let join = help(&["join"]);
    assert!(join.contains("TLS certificate fingerprint"), "{join}");
    assert!(join.contains("64 hex digits"), "{join}");
    assert!(join.contains("\"tls fingerprint\""), "{join}");
    assert!(
        join.contains("Not the `sha256:…` identity fingerprint"),
        "{join}"
    );

    let query = help(&["query"]);
    assert!(query.contains("1-600000 (default 10000)"), "{query}");

    for command in ["send", "query", "broadcast"] {
        let text = help(&[command]);
        for (message_type, _) in agentfed::envelope::MESSAGE_TYPES {
            assert!(
                text.contains(&format!(" {message_type},"))
                    || text.contains(&format!(" {message_type} ")),
                "{command} --help does not list {message_type}: {text}"
            );
        }
        assert!(text.contains("@- for stdin"), "{command}: {text}");
    }

    let send = help(&["send"]);
    assert!(send.contains("HOP_LIMIT_EXCEEDED"), "{send}");
    assert!(!send.contains("0 = no remote delegation"), "{send}");

    let demo = help(&["demo"]);
    assert!(demo.contains("temporary homes"), "{demo}");
    let dir = tempfile::tempdir().expect("temp dir");
    crate::harness::agentfed(dir.path(), &["demo"]).fails(2, &["demo", "--home"]);
    assert_eq!(
        std::fs::read_dir(dir.path())
            .expect("listing the temp dir")
            .count(),
        0,
        "demo touched --home"
    );
}

#[test]
fn a_move_to_a_taken_port_changes_nothing() {
    let first = format!("wss://127.0.0.1:{}", crate::harness::free_port());
    let mut node = Node::init_at("mover", &first);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    let addr = taken.local_addr().expect("local addr");
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).expect("reading the config");
    let moved = config.replace(
        &format!("endpoint = \"{first}\""),
        &format!("endpoint = \"wss://{addr}\""),
    );
    assert_ne!(moved, config, "the config names the endpoint");
    std::fs::write(&path, moved).expect("writing the config");
    let mut daemon = node.spawn_daemon(&[]);
    let status = daemon.wait_exit("the daemon to refuse a taken port", START_TIMEOUT);
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log());
    // Not moved, and nothing recorded: the address was checked first.
    assert_eq!(manifest_field(&node, "endpoint"), first);
    drop(taken);
    node.start(&[]);
    assert_eq!(manifest_field(&node, "endpoint"), format!("wss://{addr}"));
    let moves: Vec<_> = node
        .audit_records()
        .into_iter()
        .filter(|r| r["event_type"] == "manifest_published")
        .collect();
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0]["details"]["previous_endpoint"], first.as_str());
    node.stop();
}

#[test]
fn a_mistyped_peer_gets_a_suggestion_and_a_mistyped_home_says_it_does_not_exist() {
    let mut node = crate::harness::Node::init("alpha");
    let beta = crate::harness::Node::init("beta");
    node.start(&[]);
    node.run(&[
        "peers",
        "add",
        beta.manifest_file("beta.json").to_str().unwrap(),
    ])
    .ok();
    node.run(&["trust", "show", "bta"])
        .fails(2, &["UNKNOWN_PEER", "did you mean `beta`?"]);
    node.run(&["trust", "show", "zzzzzz"])
        .fails(2, &["UNKNOWN_PEER"]);
    // `peers show` reads like the other commands; --json is exact.
    let shown = node.run(&["peers", "show", "beta"]);
    let text = shown.ok();
    assert!(text.contains("trust         VERIFIED since"), "{text}");
    assert!(text.contains("breaker       ACTIVE"), "{text}");
    assert_eq!(node.peer("beta")["trust_level"], "VERIFIED");
    let missing = node.home.join("no-such-node");
    let run = crate::harness::agentfed(&missing, &["status"]);
    run.fails(3, &["does not exist", "init"]);
    assert!(!missing.exists(), "nothing was created");
    node.stop();
}

#[test]
fn send_needs_no_payload_for_a_ping_and_plugin_limits_of_zero_are_refused() {
    let (alpha, alpha_ep) = crate::harness::fed_node("alpha");
    let (beta, beta_ep) = crate::harness::fed_node("beta");
    // Each joins the other (the first join is refused: beta does not know
    // alpha yet, but alpha now knows beta).
    let beta_fp = crate::harness::fingerprint(&beta);
    alpha
        .run(&["join", &beta_ep, "--fingerprint", &beta_fp])
        .fails(1, &["UNKNOWN_PEER"]);
    let alpha_fp = crate::harness::fingerprint(&alpha);
    beta.run(&["join", &alpha_ep, "--fingerprint", &alpha_fp])
        .ok();
    crate::harness::wait_until("alpha's session with beta", Duration::from_secs(60), || {
        crate::harness::session_peers(&alpha)
            .iter()
            .any(|p| p == "beta")
    });
    let queued = alpha.run(&["send", "beta", "ping", "--wait", "20"]);
    assert!(queued.ok().contains("delivered ping"), "{}", queued.stdout);
    // A zero deadline would make every plugin call time out: refused at
    // start-up, naming the key.
    let mut node = crate::harness::Node::init("gamma");
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replacen("deadline_ms = 50", "deadline_ms = 0", 1),
    )
    .unwrap();
    let daemon = node.run(&["plugin", "list"]);
    assert_ne!(daemon.code, 0, "{}", daemon.stdout);
    assert!(
        daemon.stderr.contains("limits.deadline_ms"),
        "{}",
        daemon.stderr
    );
    drop(node.daemon.take());
}

#[test]
fn operations_md_lists_every_audit_event_type() {
    let doc = include_str!("../../docs/operations.md");
    for event in agentfed::audit::EventType::ALL {
        let row = format!(
            "| `{}` | {} | {} |",
            event.as_str(),
            event.category().as_str(),
            event.default_severity().as_str()
        );
        assert!(
            doc.contains(&row),
            "docs/operations.md lacks the row of {event}"
        );
    }
}
