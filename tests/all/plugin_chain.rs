//! PII policy chains and `plugin list` (issue 17, items 3 and 4), through
//! the CLI against real daemons: the default policy plus a team's policy
//! (`examples/hipaa-pii`), strictest action per span; what the daemon runs
//! next to what the configuration names, after a failed reload. Also the
//! errors of issue 17 item 5 that concern plugins and refusals: a PII
//! policy's panic message kept (without the payload it quotes), the
//! receiver's CAPABILITY_DENIED record naming type and capability, and
//! PIN_MISMATCH showing what the peer presented.

use std::time::Duration;

use agentfed_test_artifacts as artifacts;
use serde_json::Value;

use crate::federation::join_pair;
use crate::harness::{Node, fast_retries, fingerprint, free_port, wait_until};

/// A node on a loopback endpoint with fast retries whose config has
/// `edit` applied before its daemon starts.
fn node_with(name: &str, edit: impl FnOnce(String) -> String) -> (Node, String) {
    let endpoint = format!("wss://127.0.0.1:{}", free_port());
    let mut node = Node::init_at(name, &endpoint);
    fast_retries(&node);
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(config)).unwrap();
    node.start(&[]);
    (node, endpoint)
}

/// The default PII policy configured with `default_actions`, then
/// hipaa-pii added after it with `added_actions`.
fn chain_config(config: String, default_actions: &str, added_actions: &str) -> String {
    let config = config.replacen(
        "[plugins.pii.config]\n",
        &format!("[plugins.pii.config]\n{default_actions}"),
        1,
    );
    assert!(config.contains(default_actions), "{config}");
    format!(
        "{config}\n[[plugins.pii.add]]\npath = {:?}\n[plugins.pii.add.config]\n{added_actions}",
        artifacts::HIPAA_PII
    )
}

fn pii_rows(node: &Node) -> Vec<Value> {
    let rows = node.run(&["plugin", "list", "--json"]).json();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "pii")
        .cloned()
        .collect()
}

#[test]
fn a_pii_chain_handles_the_defaults_and_the_teams_categories_strictest_wins() {
    // alpha: the default redacts e-mail and hashes SSNs and cards; the
    // team's policy hashes e-mail (its PRIVILEGED row), redacts SSNs and
    // medical record numbers, hashes cards. Per span the strictest wins.
    let (alpha, alpha_ep) = node_with("alpha", |c| {
        chain_config(
            c,
            "\"action.email\" = \"redact\"\n\"action.ssn\" = \"hash\"\n\"action.credit_card\" = \"hash\"\n",
            "\"action.ssn\" = \"redact\"\n\"action.credit_card\" = \"hash\"\n",
        )
    });
    let (beta, beta_ep) = node_with("beta", |c| c);
    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    alpha
        .run(&[
            "trust",
            "set",
            "beta",
            "privileged",
            "--reason",
            "chain test",
        ])
        .ok();
    beta.run(&[
        "trust",
        "set",
        "alpha",
        "attested",
        "--reason",
        "chain test",
    ])
    .ok();

    // plugin list: both policies, what runs is what is configured.
    let text = alpha.run(&["plugin", "list"]).ok().to_string();
    assert!(
        text.contains("pii+1") && text.contains("hipaa-pii"),
        "{text}"
    );
    assert!(
        text.contains("daemon: running the configured plugins"),
        "{text}"
    );
    assert!(!text.contains("REPLACED"), "{text}");
    let rows = pii_rows(&alpha);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["embedded"], true);
    assert_eq!(rows[1]["name"], "hipaa-pii");
    assert_eq!(rows[1]["loaded"]["sha256"], rows[1]["sha256"]);
    assert_eq!(rows[1]["differs"], false);
    let status = alpha.run(&["status"]).ok().to_string();
    assert!(
        status.contains("plugin        pii+1    hipaa-pii"),
        "{status}"
    );

    let payload = r#"{"note":"mail bob@example.com ssn 536-22-1234","card":"4111 1111 1111 1111","chart":"MRN: 00123456"}"#;
    let sent = alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            payload,
            "--wait",
            "30",
            "--json",
        ])
        .json();
    assert_eq!(sent["outcome"]["state"], "delivered", "{sent}");
    for t in ["email", "ssn", "credit_card", "medical_record_number"] {
        assert_eq!(sent["receipt"]["pii"][t], 1, "{t}: {sent}");
    }
    let inbox = beta.run(&["inbox", "--json"]).json();
    let got = &inbox.as_array().unwrap().last().expect("one message")["payload"];
    // E-mail: redact (default) beats hash (team). SSN: redact (team) beats
    // hash (default). Card: hashed by both. MRN: the team's category.
    assert_eq!(
        got["note"], "mail [REDACTED:email] ssn [REDACTED:ssn]",
        "{got}"
    );
    let card = got["card"].as_str().unwrap();
    assert!(
        card.starts_with("[HASH:credit_card:") && !card.contains("4111"),
        "{card}"
    );
    assert_eq!(
        got["chart"], "MRN: [REDACTED:medical_record_number]",
        "{got}"
    );
    let sent_text = alpha.run(&["audit", "query", "--json"]).ok().to_string();
    assert!(!sent_text.contains("536-22-1234") && !sent_text.contains("00123456"));
}

#[test]
fn plugin_list_shows_what_runs_next_to_what_is_configured() {
    let (mut alpha, _) = node_with("alpha", |c| chain_config(c, "", ""));
    let config_path = alpha.home.join("agentfed.toml");
    let good = std::fs::read_to_string(&config_path).unwrap();

    // The added policy's path now names a trust plugin: the reload fails,
    // the daemon keeps hipaa-pii, and plugin list says both.
    std::fs::write(
        &config_path,
        good.replace(artifacts::HIPAA_PII, artifacts::ALLOWLIST_TRUST),
    )
    .unwrap();
    alpha
        .run(&["plugin", "reload", "pii"])
        .fails(1, &["previous"]);
    let out = alpha.run(&["plugin", "list"]);
    let text = out.fails(1, &["failed to load", "daemon keeps running"]);
    let stdout = out.stdout.clone();
    assert!(stdout.contains("[daemon differs]"), "{stdout}\n{text}");
    assert!(
        stdout.contains("pii+1: the daemon runs hipaa-pii")
            && stdout.contains("allowlist_trust.wasm (which does not load")
            && stdout.contains("agentfed plugin reload pii"),
        "{stdout}"
    );
    let rows: Value =
        serde_json::from_str(&alpha.run(&["plugin", "list", "--json"]).stdout).unwrap();
    let added = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "pii" && r["position"] == 1)
        .unwrap();
    assert_eq!(added["differs"], true, "{added}");
    assert_eq!(added["loaded"]["name"], "hipaa-pii", "{added}");
    assert!(added["error"].as_str().unwrap().contains("pii"), "{added}");

    // Back to the good configuration: no difference left.
    std::fs::write(&config_path, &good).unwrap();
    alpha.run(&["plugin", "reload", "pii"]).ok();
    let text = alpha.run(&["plugin", "list"]).ok().to_string();
    assert!(
        text.contains("daemon: running the configured plugins"),
        "{text}"
    );

    // A policy removed from the configuration but still running.
    std::fs::write(
        &config_path,
        good.split("\n[[plugins.pii.add]]").next().unwrap(),
    )
    .unwrap();
    let text = alpha.run(&["plugin", "list"]).ok().to_string();
    assert!(
        text.contains("pii+1: the daemon runs hipaa-pii") && text.contains("names nothing"),
        "{text}"
    );

    // Offline: the configuration only, and it says so.
    alpha.stop();
    let text = alpha.run(&["plugin", "list"]).ok().to_string();
    assert!(text.contains("daemon: not running"), "{text}");
    // A value the plugin cannot use is that row's error, as the daemon
    // would refuse it.
    std::fs::write(
        &config_path,
        good.replacen(
            "[plugins.spend.config]\n",
            "[plugins.spend.config]\n\"max-usd-per-day\" = \"lots\"\n",
            1,
        ),
    )
    .unwrap();
    let out = alpha.run(&["plugin", "list"]);
    out.fails(1, &["1 configured plugin(s) failed to load"]);
    assert!(
        out.stdout.contains("ERROR: agentfed-policy-spend@0.1.0 refused the call: config key `max-usd-per-day` has an invalid value"),
        "{}",
        out.stdout
    );

    // Replacing the default is explicit, and plugin list says so.
    std::fs::write(
        &config_path,
        good.split("\n[[plugins.pii.add]]")
            .next()
            .unwrap()
            .replacen(
                "[plugins.pii]\n",
                &format!("[plugins.pii]\npath = {:?}\n", artifacts::HIPAA_PII),
                1,
            ),
    )
    .unwrap();
    alpha.run(&["plugin", "list"]).fails(
        2,
        &[
            "replaces the built-in PII detection",
            "replace_default = true",
            "[[plugins.pii.add]]",
        ],
    );
    let replaced = std::fs::read_to_string(&config_path).unwrap().replacen(
        "[plugins.pii]\n",
        "[plugins.pii]\nreplace_default = true\n",
        1,
    );
    std::fs::write(&config_path, replaced).unwrap();
    let text = alpha.run(&["plugin", "list"]).ok().to_string();
    assert!(
        text.contains("(replaces default)")
            && text.contains("the built-in default PII policy is REPLACED"),
        "{text}"
    );
}

#[test]
fn refusals_say_what_was_missing_and_a_panicking_policy_keeps_its_message() {
    // beta adds a PII policy that panics (quoting the value) to its chain.
    let (alpha, alpha_ep) = node_with("alpha", |c| c);
    let (beta, beta_ep) = node_with("beta", |c| {
        format!(
            "{c}\n[[plugins.pii.add]]\npath = {:?}\n",
            artifacts::PII_PANICS
        )
    });
    // A wrong pin: refused, showing what beta presents (OpenSSH-style).
    let wrong = "ab".repeat(32);
    let line = alpha
        .run(&["join", &beta_ep, "--fingerprint", &wrong])
        .fails(1, &["PIN_MISMATCH", "presents node id beta"]);
    assert!(line.contains(&fingerprint(&beta)), "{line}");
    assert!(
        line.contains(&format!("certificate fingerprint {wrong} does not match")),
        "{line}"
    );
    assert!(alpha.peers().as_array().unwrap().is_empty());

    join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    // Raised on alpha's side only: beta refuses a task for good.
    alpha
        .run(&["trust", "set", "beta", "attested", "--reason", "one side"])
        .ok();
    alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            r#"{"t":"x"}"#,
            "--wait",
            "30",
        ])
        .fails(1, &["CAPABILITY_DENIED"]);
    let denied = beta
        .audit_records()
        .into_iter()
        .find(|r| {
            r["event_type"] == "message_rejected" && r["details"]["reason"] == "CAPABILITY_DENIED"
        })
        .expect("beta's refusal record");
    assert_eq!(
        denied["details"]["message_type"], "task-assignment",
        "{denied}"
    );
    assert_eq!(denied["details"]["missing_capability"], "send", "{denied}");
    assert_eq!(denied["details"]["needed_level"], "ATTESTED", "{denied}");
    assert_eq!(denied["details"]["sender_level"], "VERIFIED", "{denied}");
    let summary = denied["summary"].as_str().unwrap();
    assert!(
        summary.contains("task-assignment") && summary.contains("send"),
        "{summary}"
    );

    // Now beta admits tasks; its added policy panics on this one.
    beta.run(&[
        "trust",
        "set",
        "alpha",
        "attested",
        "--reason",
        "both sides",
    ])
    .ok();
    alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            r#"{"t":"PANIC-ME 4417"}"#,
        ])
        .ok();
    let mut failed = None;
    wait_until(
        "beta to record the plugin failure",
        Duration::from_secs(60),
        || {
            let records = beta.audit_records();
            let f = records
                .iter()
                .find(|r| r["event_type"] == "plugin_failed")
                .cloned();
            let r = records
                .iter()
                .find(|r| {
                    r["event_type"] == "message_rejected"
                        && r["details"]["reason"] == "PLUGIN_FAILED"
                })
                .cloned();
            if let (Some(f), Some(r)) = (f, r) {
                failed = Some((f, r));
                true
            } else {
                false
            }
        },
    );
    let (plugin_failed, refused) = failed.unwrap();
    let text = plugin_failed["summary"].as_str().unwrap();
    assert!(
        text.contains("panicked: cannot handle value `[scanned text]` here"),
        "{plugin_failed}"
    );
    assert_eq!(
        refused["details"]["message_type"], "task-assignment",
        "{refused}"
    );
    assert!(
        refused["details"]["plugin_error"]
            .as_str()
            .unwrap()
            .contains("cannot handle value `[scanned text]`"),
        "{refused}"
    );
    let log = beta.daemon.as_ref().unwrap().log();
    assert!(
        log.contains("cannot handle value `[scanned text]` here"),
        "{log}"
    );
    let everything = format!(
        "{}{log}",
        serde_json::to_string(&beta.audit_records()).unwrap()
    );
    let leaks: Vec<&str> = everything
        .lines()
        .filter(|l| l.contains("PANIC-ME 4417"))
        .collect();
    assert!(leaks.is_empty(), "the payload leaked: {leaks:?}");
}

#[test]
fn inspect_takes_default_and_reload_names_the_settings_it_did_not_apply() {
    let (alpha, _) = node_with("alpha", |c| c);
    // plugin inspect default: the four embedded policies; KIND default one.
    let all = alpha
        .run(&["plugin", "inspect", "default"])
        .ok()
        .to_string();
    for kind in ["trust", "pii", "spend", "handler"] {
        assert!(
            all.contains(&format!("file:     embedded:default-{kind}")),
            "{all}"
        );
    }
    let pii = alpha
        .run(&["plugin", "inspect", "pii", "default", "--json"])
        .json();
    assert_eq!(pii["kind"], "pii", "{pii}");
    assert_eq!(pii["world"], "agentfed:plugin/pii@0.1.0");
    alpha
        .run(&["plugin", "inspect", "trust", artifacts::HIPAA_PII])
        .fails(2, &["is not a trust plugin: it is a pii plugin"]);

    // Nothing changed: a reload says nothing more.
    let out = alpha.run(&["plugin", "reload"]).ok().to_string();
    assert!(
        out.contains("reloaded pii plugin") && !out.contains("not applied"),
        "{out}"
    );
    // A changed transport setting and a changed plugin setting: the
    // plugin one is applied, the other named as needing a restart.
    let path = alpha.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let config = config
        .replace("retry_base_ms = 100", "retry_base_ms = 150")
        .replacen(
            "[plugins.pii.config]\n",
            "[plugins.pii.config]\n\"action.email\" = \"hash\"\n",
            1,
        );
    std::fs::write(&path, config).unwrap();
    let out = alpha.run(&["plugin", "reload", "pii"]).ok().to_string();
    assert!(
        out.contains("not applied: transport.retry_base_ms changed in agentfed.toml")
            && out.contains("restart the daemon"),
        "{out}"
    );
    assert!(!out.contains("plugins."), "{out}");
    let json = alpha.run(&["plugin", "reload", "pii", "--json"]);
    assert!(
        json.stderr.contains("not applied: transport.retry_base_ms"),
        "{}",
        json.stderr
    );
    assert!(json.json().as_array().is_some());
}
