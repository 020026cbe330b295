//! The coordinator over a real home: real keys, a real redb store, the
//! real audit chain and the embedded default plugins, with a manual clock.

use std::path::Path;
use std::sync::Arc;

use agentfed::clock::{Clock, ManualClock};
use agentfed::coordinator::{
    BreakerOutcome, CoordError, Coordinator, CoordinatorOptions, Direction, Interaction,
    SendRequest, SpendReport, TrustOutcome,
};
use agentfed::identity::{Identity, NodeId};
use agentfed::model::{BreakerState, TrustLevel};
use serde_json::json;

const START_MS: u64 = 1_800_000_000_000;

pub(crate) struct Node {
    _home: tempfile::TempDir,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) coordinator: Coordinator,
}

fn init_home(home: &Path, node_id: &str) {
    Identity::init(
        home,
        &NodeId::parse(node_id).unwrap(),
        Some("wss://127.0.0.1:9100"),
        false,
    )
    .expect("init identity");
}

pub(crate) fn node(node_id: &str) -> Node {
    node_with_config(node_id, None)
}

/// A node whose `agentfed.toml` is `config` (the defaults without one).
pub(crate) fn node_with_config(node_id: &str, config: Option<&str>) -> Node {
    let home = crate::support::private_tempdir();
    init_home(home.path(), node_id);
    if let Some(config) = config {
        std::fs::write(home.path().join("agentfed.toml"), config).expect("config");
    }
    let clock = Arc::new(ManualClock::new(START_MS));
    let coordinator = Coordinator::open(
        home.path(),
        CoordinatorOptions {
            clock: clock.clone(),
            plugin_cache_dir: Some(shared_cache()),
        },
    )
    .expect("open coordinator");
    Node {
        _home: home,
        clock,
        coordinator,
    }
}

/// One precompiled-plugin cache for every node in these tests, so each
/// default policy is compiled once per test run rather than once per node.
fn shared_cache() -> std::path::PathBuf {
    crate::harness::private_test_dir("agentfed-test-plugin-cache")
}

fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        plugin_cache_dir: Some(shared_cache()),
        ..CoordinatorOptions::default()
    }
}

/// A second node's signed manifest, as `agentfed manifest` would print it.
pub(crate) fn peer_manifest(node_id: &str) -> String {
    String::from_utf8(node(node_id).coordinator.manifest().unwrap().to_json()).unwrap()
}

pub(crate) fn with_peer(node_id: &str, peer: &str) -> Node {
    let n = node(node_id);
    n.coordinator.add_peer(&peer_manifest(peer)).unwrap();
    n
}

pub(crate) fn spend(peer: &str, usd: f64, success: bool) -> SpendReport {
    SpendReport {
        peer: peer.into(),
        task_id: "task-1".into(),
        tokens: 100.0,
        usd,
        success,
    }
}

/// The observable state: peers and the number of audit records.
fn state(c: &Coordinator) -> (String, u64) {
    (
        serde_json::to_string(&c.peers().unwrap()).unwrap(),
        c.audit().len().unwrap(),
    )
}

#[test]
fn peers_are_added_verified_from_signed_manifests() {
    let n = node("alpha");
    let view = n.coordinator.add_peer(&peer_manifest("beta")).unwrap();
    assert_eq!(view.trust_level, TrustLevel::Verified);
    assert_eq!(view.breaker.state, BreakerState::Active);
    let manifest = peer_manifest("beta");
    assert!(matches!(
        n.coordinator.add_peer(&manifest),
        Err(CoordError::PeerExists(_))
    ));
    let own = String::from_utf8(n.coordinator.manifest().unwrap().to_json()).unwrap();
    assert!(matches!(
        n.coordinator.add_peer(&own),
        Err(CoordError::InvalidInput(_))
    ));
    n.coordinator.remove_peer("beta").unwrap();
    assert!(matches!(
        n.coordinator.remove_peer("beta"),
        Err(CoordError::UnknownPeer(_))
    ));
    assert!(n.coordinator.audit().verify().is_ok());
}

#[test]
fn tampered_and_malformed_manifests_change_nothing() {
    let n = node("alpha");
    let before = state(&n.coordinator);
    let tampered = peer_manifest("beta").replace("127.0.0.1", "127.0.0.2");
    for bad in [tampered.as_str(), "{", "{}", "[1,2]", ""] {
        let err = n.coordinator.add_peer(bad).unwrap_err();
        assert_eq!(err.code(), "INVALID_MANIFEST", "{bad}: {err}");
        assert!(err.is_bad_input());
    }
    assert_eq!(state(&n.coordinator), before);
}

#[test]
fn trust_is_earned_through_fulfilled_work_and_time_at_the_default_thresholds() {
    let n = with_peer("alpha", "beta");
    for i in 0..60 {
        let out = n
            .coordinator
            .report_spend(spend("beta", 0.001, true))
            .unwrap();
        match out.trust {
            TrustOutcome::Changed(c) => panic!("promoted on the first day at {i}: {c:?}"),
            // From the 50th on the plugin asks; the host holds it back.
            TrustOutcome::Held {
                to, waiting_for, ..
            } => {
                assert!(i >= 49, "held at {i}");
                assert_eq!(to, TrustLevel::Attested);
                assert!(waiting_for.contains("1 day at VERIFIED"), "{waiting_for}");
            }
            _ => assert!(i < 49, "not held at {i}"),
        }
    }
    // A day later, one more completed task: 24 h at VERIFIED, two active
    // days, 61 counted interactions.
    n.clock.advance(24 * 3_600_000);
    let out = n
        .coordinator
        .report_spend(spend("beta", 0.001, true))
        .unwrap();
    match out.trust {
        TrustOutcome::Changed(change) => {
            assert_eq!(
                (change.from, change.to),
                (TrustLevel::Verified, TrustLevel::Attested)
            );
            assert!(change.actor.starts_with("plugin:"), "{}", change.actor);
        }
        other => panic!("expected a promotion on the second day, got {other:?}"),
    }
    assert_eq!(
        n.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Attested
    );
}

#[test]
fn operator_sets_trust_with_a_reason_and_bad_input_changes_nothing() {
    let n = with_peer("alpha", "beta");
    let before = state(&n.coordinator);
    let cases: [(&str, &str, &str, &str); 4] = [
        ("beta", "sideways", "because", "INVALID_LEVEL"),
        ("beta", "attested", "", "INVALID_INPUT"),
        ("beta", "attested", "two\nlines", "INVALID_INPUT"),
        ("gamma", "attested", "who?", "UNKNOWN_PEER"),
    ];
    for (peer, level, reason, code) in cases {
        let err = n
            .coordinator
            .set_trust(peer, level, reason, true)
            .unwrap_err();
        assert_eq!(err.code(), code, "{peer} {level} {reason:?}: {err}");
    }
    assert_eq!(state(&n.coordinator), before);
    // The level it has, pinned: only the pin changes; again, nothing does.
    let change = n
        .coordinator
        .set_trust("beta", "VERIFIED", "hold it here", true)
        .unwrap();
    assert_eq!(
        (change.from, change.to),
        (TrustLevel::Verified, TrustLevel::Verified)
    );
    let after_pin = state(&n.coordinator);
    let err = n
        .coordinator
        .set_trust("beta", "verified", "again", true)
        .unwrap_err();
    assert_eq!(err.code(), "ILLEGAL_TRANSITION", "{err}");
    assert_eq!(state(&n.coordinator), after_pin);
    let change = n
        .coordinator
        .set_trust("beta", "privileged", "lab machine", true)
        .unwrap();
    assert_eq!(change.to, TrustLevel::Privileged);
    assert_eq!(change.actor, "operator");
    let audit = n.coordinator.audit().query(&Default::default()).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.summary.contains("operator bootstrap: lab machine"))
    );
}

#[test]
fn plugins_cannot_promote_untrusted_peers() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "untrusted", "testing", true)
        .unwrap();
    for _ in 0..60 {
        n.coordinator
            .report_spend(spend("beta", 0.0, true))
            .unwrap();
    }
    assert_eq!(
        n.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Untrusted
    );
}

#[test]
fn breaker_lifecycle_suspend_refuse_evict_reactivate() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "attested", "bootstrap", true)
        .unwrap();
    // 50 samples in the hour, more than half failed → SUSPENDED.
    let mut suspended = false;
    for i in 0..50 {
        let out = n
            .coordinator
            .report_spend(spend("beta", 0.0, i % 4 == 0))
            .unwrap();
        if let BreakerOutcome::Changed(change) = out.breaker {
            assert_eq!(change.to, BreakerState::Suspended);
            assert_eq!(i, 49, "suspended before 50 samples");
            suspended = true;
        }
    }
    assert!(suspended);
    let send = || {
        n.coordinator.send(SendRequest {
            peer: "beta".into(),
            message_type: "task-assignment".into(),
            payload: json!({"task": "x"}),
            budget: None,
            idempotency_key: None,
        })
    };
    assert_eq!(send().unwrap_err().code(), "PEER_SUSPENDED");
    // Never reactivates by itself, even past the cooldown.
    n.clock.advance(31 * 60_000);
    n.coordinator.tick().unwrap();
    let status = &n.coordinator.breaker_status(Some("beta")).unwrap()[0];
    assert_eq!(status.breaker.state, BreakerState::Suspended);
    assert!(status.reactivate_eligible);
    // After 24 h suspended → EVICTED.
    n.clock.advance(24 * 3_600_000);
    let report = n.coordinator.tick().unwrap();
    assert_eq!(report.breaker_changes, 1);
    assert_eq!(
        n.coordinator.peer("beta").unwrap().breaker.state,
        BreakerState::Evicted
    );
    assert_eq!(send().unwrap_err().code(), "PEER_EVICTED");
    // Only the operator brings it back, with a reason.
    assert_eq!(
        n.coordinator.reactivate("beta", "").unwrap_err().code(),
        "INVALID_INPUT"
    );
    let change = n
        .coordinator
        .reactivate("beta", "health probe passed")
        .unwrap();
    assert_eq!(
        (change.from, change.to),
        (BreakerState::Evicted, BreakerState::Active)
    );
    assert_eq!(
        n.coordinator
            .reactivate("beta", "again")
            .unwrap_err()
            .code(),
        "ILLEGAL_TRANSITION"
    );
    send().expect("sends flow again");
    assert!(n.coordinator.audit().verify().is_ok());
}

#[test]
fn continued_failures_while_suspended_evict() {
    let n = with_peer("alpha", "beta");
    let out = n
        .coordinator
        .report_spend(spend("beta", 6.0, true))
        .unwrap();
    match out.breaker {
        BreakerOutcome::Changed(change) => {
            assert!(change.reason.contains('$'), "{}", change.reason)
        }
        other => panic!("expected a cost suspension, got {other:?}"),
    }
    for i in 0..10 {
        let out = n
            .coordinator
            .report_spend(spend("beta", 0.0, false))
            .unwrap();
        let evicted =
            matches!(out.breaker, BreakerOutcome::Changed(ref c) if c.to == BreakerState::Evicted);
        assert_eq!(evicted, i == 9, "eviction at failure {i}");
    }
}

#[test]
fn invalid_spend_reports_change_nothing() {
    let n = with_peer("alpha", "beta");
    let before = state(&n.coordinator);
    for (tokens, usd, task) in [
        (f64::NAN, 0.0, "t"),
        (1.0, f64::INFINITY, "t"),
        (1.5, 0.0, "t"),
        (1e12, 0.0, "t"),
        (1.0, 1e9, "t"),
        (1.0, 0.0, ""),
        (1.0, 0.0, "bad task id"),
    ] {
        let report = SpendReport {
            peer: "beta".into(),
            task_id: task.into(),
            tokens,
            usd,
            success: true,
        };
        let err = n.coordinator.report_spend(report).unwrap_err();
        assert_eq!(err.code(), "INVALID_INPUT", "{tokens} {usd} {task:?}");
    }
    assert_eq!(state(&n.coordinator), before);
    // Negative spend is accepted (and kept in the audit) but cannot buy
    // credit against the breaker.
    n.coordinator
        .report_spend(spend("beta", -100.0, true))
        .unwrap();
    n.coordinator
        .report_spend(spend("beta", 5.5, true))
        .unwrap();
    assert_eq!(
        n.coordinator.peer("beta").unwrap().breaker.state,
        BreakerState::Suspended
    );
}

#[test]
fn sends_pass_gates_budget_and_pii_before_the_outbox() {
    let n = with_peer("alpha", "beta");
    let send =
        |message_type: &str, payload: serde_json::Value, budget: Option<serde_json::Value>| {
            n.coordinator.send(SendRequest {
                peer: "beta".into(),
                message_type: message_type.into(),
                payload,
                budget,
                idempotency_key: None,
            })
        };
    // VERIFIED may ping but not send tasks.
    send("ping", json!({}), None).unwrap();
    let err = send("task-assignment", json!({"task": "x"}), None).unwrap_err();
    assert_eq!(err.code(), "CAPABILITY_DENIED");
    n.coordinator
        .set_trust("beta", "attested", "bootstrap", true)
        .unwrap();
    let before_outbox = n.coordinator.store().outbox_len().unwrap();
    for (budget, code) in [
        (
            json!({"max_hops": 0, "max_tokens": 10, "max_usd": 1.0}),
            "HOP_LIMIT_EXCEEDED",
        ),
        (
            json!({"max_hops": 8, "max_tokens": -1, "max_usd": 1.0}),
            "INVALID_BUDGET",
        ),
        (
            json!({"max_hops": 8, "max_tokens": 10, "max_usd": 1e7}),
            "INVALID_BUDGET",
        ),
        (json!({"max_hops": "x"}), "INVALID_BUDGET"),
    ] {
        let err = send(
            "task-assignment",
            json!({"task": "x"}),
            Some(budget.clone()),
        )
        .unwrap_err();
        assert_eq!(err.code(), code, "{budget}");
    }
    assert_eq!(
        send("launch", json!({}), None).unwrap_err().code(),
        "UNKNOWN_MESSAGE_TYPE"
    );
    // An SSN blocks at every level; nothing reaches the outbox.
    let err = send("task-assignment", json!({"note": "ssn 123-45-6789"}), None).unwrap_err();
    assert_eq!(err.code(), "PII_BLOCKED");
    assert!(
        err.to_string().contains("ssn") && !err.to_string().contains("6789"),
        "{err}"
    );
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), before_outbox);
    // An email is redacted at ATTESTED; the signed frame holds the redaction.
    let receipt = send(
        "task-assignment",
        json!({"note": "mail bob@example.com"}),
        None,
    )
    .unwrap();
    assert_eq!(receipt.pii.get("email"), Some(&1));
    let entry = n
        .coordinator
        .store()
        .outbox_get(&receipt.envelope_id)
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&entry.bytes);
    assert!(
        text.contains("[REDACTED:email]") && !text.contains("bob@example.com"),
        "{text}"
    );
    let signed = agentfed::envelope::SignedEnvelope::from_frame(&entry.bytes).unwrap();
    let key = n.coordinator.identity().verifying_key();
    assert_eq!(signed.open(&key).unwrap().target, "beta");
    // The audit names types and counts, never values.
    let records = n.coordinator.audit().query(&Default::default()).unwrap();
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains("bob@example.com") && !all.contains("123-45-6789"));
    assert!(n.coordinator.audit().verify().is_ok());
}

#[test]
fn threats_and_signature_failures_drop_to_untrusted() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "trusted", "bootstrap", true)
        .unwrap();
    let mut payload = json!({"secret": "ssn 123-45-6789"});
    let level = TrustLevel::Trusted;
    let scan = |p: &mut serde_json::Value| {
        n.coordinator
            .scan_payload("beta", level, Direction::Inbound, "task-assignment", p)
    };
    assert_eq!(
        scan(&mut payload.clone()).unwrap_err().code(),
        "PII_BLOCKED"
    );
    assert_eq!(
        n.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Trusted
    );
    assert_eq!(scan(&mut payload).unwrap_err().code(), "PII_BLOCKED");
    assert_eq!(
        n.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Untrusted
    );

    let n = with_peer("alpha", "gamma");
    n.coordinator
        .set_trust("gamma", "attested", "bootstrap", true)
        .unwrap();
    n.coordinator
        .record_interaction("gamma", Interaction::SignatureFailure)
        .unwrap();
    assert_eq!(
        n.coordinator.peer("gamma").unwrap().trust_level,
        TrustLevel::Untrusted
    );
    // The operator may re-admit; the old failure does not undo it.
    n.coordinator
        .set_trust("gamma", "verified", "key rotated, re-verified", true)
        .unwrap();
    n.coordinator
        .record_interaction("gamma", Interaction::Success)
        .unwrap();
    assert_eq!(
        n.coordinator.peer("gamma").unwrap().trust_level,
        TrustLevel::Verified
    );
}

#[test]
fn a_bad_plugin_reload_keeps_the_previous_plugin() {
    let home = crate::support::private_tempdir();
    init_home(home.path(), "alpha");
    let c = Coordinator::open(home.path(), options()).unwrap();
    let before = c.plugins();
    std::fs::write(
        home.path().join("agentfed.toml"),
        "[plugins.trust]\npath = \"missing.wasm\"\n",
    )
    .unwrap();
    let err = c.reload_plugins(None).unwrap_err();
    assert_eq!(err.code(), "PLUGIN_READ_FAILED");
    assert!(
        err.to_string().contains("the previous one stays in force"),
        "{err}"
    );
    assert_eq!(c.plugins()[0].sha256, before[0].sha256);
    std::fs::write(
        home.path().join("agentfed.toml"),
        format!(
            "[plugins.trust]\npath = {:?}\n",
            agentfed_test_artifacts::ALLOWLIST_TRUST
        ),
    )
    .unwrap();
    let after = c
        .reload_plugins(Some(agentfed::plugin::PluginKind::Trust))
        .unwrap();
    assert_eq!(after[0].name, "allowlist-trust");
}

#[test]
fn state_survives_reopening() {
    let home = crate::support::private_tempdir();
    init_home(home.path(), "alpha");
    let manifest = peer_manifest("beta");
    {
        let c = Coordinator::open(home.path(), options()).unwrap();
        c.add_peer(&manifest).unwrap();
        c.set_trust("beta", "attested", "bootstrap", true).unwrap();
        c.report_spend(spend("beta", 6.0, true)).unwrap();
    }
    let c = Coordinator::open(home.path(), options()).unwrap();
    let peer = c.peer("beta").unwrap();
    assert_eq!(peer.trust_level, TrustLevel::Attested);
    assert_eq!(peer.breaker.state, BreakerState::Suspended);
    assert!(c.audit().verify().unwrap() > 3);
    assert!(c.clock().now_ms() > START_MS - START_MS / 2);
}

/// Two nodes that know each other, at ATTESTED both ways, on clocks that
/// agree.
fn pair() -> (Node, Node) {
    let alpha = node("alpha");
    let beta = node("beta");
    let alpha_manifest =
        String::from_utf8(alpha.coordinator.manifest().unwrap().to_json()).unwrap();
    let beta_manifest = String::from_utf8(beta.coordinator.manifest().unwrap().to_json()).unwrap();
    alpha.coordinator.add_peer(&beta_manifest).unwrap();
    beta.coordinator.add_peer(&alpha_manifest).unwrap();
    alpha
        .coordinator
        .set_trust("beta", "attested", "bootstrap", true)
        .unwrap();
    beta.coordinator
        .set_trust("alpha", "attested", "bootstrap", true)
        .unwrap();
    (alpha, beta)
}

/// Sends from `from` to `to_id` and returns the signed frame from the outbox.
fn frame(from: &Node, to_id: &str, message_type: &str, payload: serde_json::Value) -> Vec<u8> {
    let receipt = from
        .coordinator
        .send(SendRequest {
            peer: to_id.into(),
            message_type: message_type.into(),
            payload,
            budget: None,
            idempotency_key: None,
        })
        .unwrap();
    from.coordinator
        .store()
        .outbox_get(&receipt.envelope_id)
        .unwrap()
        .unwrap()
        .bytes
        .to_vec()
}

/// A task-assignment from beta to alpha signed directly, past beta's own
/// outbound checks (a misbehaving or foreign sender).
fn signed_by_beta(beta: &Node, id: String, payload: serde_json::Value) -> Vec<u8> {
    beta_envelope(beta, id, "task-assignment", None, payload)
}

/// An envelope from beta to alpha, first hop, signed with beta's key and
/// stamped with beta's clock, past beta's own outbound checks.
pub(crate) fn beta_envelope(
    beta: &Node,
    id: String,
    message_type: &str,
    session: Option<String>,
    payload: serde_json::Value,
) -> Vec<u8> {
    agentfed::envelope::Envelope {
        id,
        source: "beta".into(),
        target: "alpha".into(),
        session,
        message_type: message_type.into(),
        payload,
        timestamp_ms: beta.clock.now_ms(),
        nonce: agentfed::envelope::random_id(),
        hop_count: 1,
        budget: agentfed::budget::Budget::with_default_hops(100, 1.0)
            .and_then(|b| b.next_hop())
            .unwrap(),
    }
    .sign(beta.coordinator.identity())
    .to_frame()
}

#[test]
fn inbound_envelopes_are_processed_exactly_once() {
    use agentfed::coordinator::AckStatus;
    let (alpha, beta) = pair();
    let interactions =
        |n: &Node, peer: &str| n.coordinator.peer(peer).unwrap().metrics.interactions;
    let observed = |n: &Node, peer: &str| n.coordinator.peer(peer).unwrap().metrics.observed;
    let received_before = observed(&alpha, "beta");
    let counted_before = interactions(&alpha, "beta");
    let bytes = frame(
        &beta,
        "alpha",
        "task-assignment",
        json!({"task": "mail bob@example.com"}),
    );
    let ack = alpha.coordinator.receive("beta", &bytes).unwrap().unwrap();
    assert_eq!(ack.status, AckStatus::Accepted);
    // A retransmission gets the same acknowledgement and is not stored twice.
    let again = alpha.coordinator.receive("beta", &bytes).unwrap().unwrap();
    assert_eq!(again, ack);
    let inbox = alpha.coordinator.inbox(0, 10).unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].from, "beta");
    assert_eq!(inbox[0].payload["task"], "mail [REDACTED:email]");
    // Ping is answered by the handler plugin.
    let ping = frame(&beta, "alpha", "ping", json!({}));
    let ack = alpha.coordinator.receive("beta", &ping).unwrap().unwrap();
    assert_eq!(ack.status, AckStatus::Replied);
    assert_eq!(ack.reply.unwrap()["type"], "pong");
    assert_eq!(alpha.coordinator.inbox(0, 10).unwrap().len(), 1);
    // Two envelopes processed (the retransmission is not counted); the
    // coalesced evidence is applied before the peer is read. They were
    // beta's initiative: observed, and no interaction that earns trust.
    assert_eq!(observed(&alpha, "beta"), received_before + 2);
    assert_eq!(interactions(&alpha, "beta"), counted_before);
    // The sender settles a delivery once, however many acks arrive.
    let entry = beta
        .coordinator
        .store()
        .outbox_due(u64::MAX, 10)
        .unwrap()
        .remove(0);
    let delivered_before = interactions(&beta, "alpha");
    assert!(
        beta.coordinator
            .delivered(&entry, AckStatus::Accepted)
            .unwrap()
    );
    assert!(
        !beta
            .coordinator
            .delivered(&entry, AckStatus::Accepted)
            .unwrap()
    );
    // A delivery beta asked for and alpha fulfilled: counted.
    assert_eq!(interactions(&beta, "alpha"), delivered_before + 1);
    assert!(
        beta.coordinator
            .store()
            .outbox_get(&entry.envelope_id)
            .unwrap()
            .is_none()
    );
    assert!(alpha.coordinator.audit().verify().is_ok());
    assert!(beta.coordinator.audit().verify().is_ok());
}

#[test]
fn a_burst_is_verified_together_and_a_bad_signature_in_it_is_still_found() {
    use agentfed::coordinator::AckStatus;
    let (alpha, beta) = pair();
    let burst = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| frame(&beta, "alpha", "task-assignment", json!({"task": i})))
            .collect()
    };
    // All good: every envelope is accepted, verified as one batch.
    let signatures = |n: &Node| n.coordinator.status().unwrap().signatures;
    let before = signatures(&alpha);
    let good = burst(6);
    let results = alpha.coordinator.receive_many("beta", &good);
    let after = signatures(&alpha);
    assert_eq!(
        (after.batched - before.batched, after.alone - before.alone),
        (6, 0)
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Ok(ack)) if ack.status == AckStatus::Accepted)),
        "{results:?}"
    );
    assert_eq!(alpha.coordinator.inbox(0, 100).unwrap().len(), 6);
    // One flipped payload byte: the batch fails, each envelope is then
    // verified alone, and only the tampered one is refused.
    let mut mixed = burst(5);
    let last = mixed[2].len() - 3;
    mixed[2][last] ^= 1;
    let results = alpha.coordinator.receive_many("beta", &mixed);
    // The batch failed: each was verified alone (the bad one not counted).
    let mixed_after = signatures(&alpha);
    assert_eq!(mixed_after.batched, after.batched);
    assert_eq!(mixed_after.alone - after.alone, 4);
    let outcome: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(Ok(ack)) => format!("{:?}", ack.status),
            Ok(Err(refusal)) => format!("{refusal:?}"),
            Err(e) => format!("error {e}"),
        })
        .collect();
    // The bad signature also demotes beta below what a task-assignment
    // needs, so the envelopes after it are refused for that.
    assert_eq!(
        outcome,
        [
            "Accepted",
            "Accepted",
            "BadSignature",
            "CapabilityDenied",
            "CapabilityDenied"
        ]
    );
    assert_eq!(alpha.coordinator.inbox(0, 100).unwrap().len(), 8);
    assert!(alpha.coordinator.audit().verify().is_ok());
}

#[test]
fn inbound_refusals_have_constant_codes() {
    use agentfed::coordinator::InboundRefusal as R;
    let (alpha, beta) = pair();
    let good = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    let refuse =
        |peer: &str, bytes: &[u8]| alpha.coordinator.receive(peer, bytes).unwrap().unwrap_err();
    assert_eq!(refuse("beta", b"garbage"), R::MalformedFrame);
    assert_eq!(refuse("gamma", &good), R::UnknownSender);
    // Sent to someone else.
    let gamma = node("gamma");
    let gamma_manifest =
        String::from_utf8(gamma.coordinator.manifest().unwrap().to_json()).unwrap();
    beta.coordinator.add_peer(&gamma_manifest).unwrap();
    beta.coordinator
        .set_trust("gamma", "attested", "bootstrap", true)
        .unwrap();
    let misaddressed = frame(&beta, "gamma", "task-assignment", json!({"task": "x"}));
    assert_eq!(refuse("beta", &misaddressed), R::WrongAddress);
    // Stale: the receiver's clock is 6 minutes ahead.
    alpha.clock.advance(6 * 60_000);
    assert_eq!(refuse("beta", &good), R::StaleTimestamp);
    beta.clock.advance(6 * 60_000);
    // Capability: alpha sees beta only as VERIFIED.
    alpha
        .coordinator
        .set_trust("beta", "verified", "probation", true)
        .unwrap();
    let task = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    assert_eq!(refuse("beta", &task), R::CapabilityDenied);
    // Inbound PII that blocks counts as a threat.
    alpha
        .coordinator
        .set_trust("beta", "attested", "probation over", true)
        .unwrap();
    // beta's own outbound scan blocks an SSN at every level, so a
    // misbehaving sender is simulated by signing as beta directly.
    let ssn = signed_by_beta(
        &beta,
        agentfed::envelope::random_id(),
        json!({"note": "ssn 123-45-6789"}),
    );
    assert_eq!(refuse("beta", &ssn), R::PiiBlocked);
    // A tampered envelope is a signature failure: beta drops to UNTRUSTED.
    let mut tampered = frame(&beta, "alpha", "task-assignment", json!({"task": "y"}));
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    assert_eq!(refuse("beta", &tampered), R::BadSignature);
    assert_eq!(
        alpha.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Untrusted
    );
    // Suspended and evicted senders are refused before anything else.
    for i in 0..50 {
        // More than half of the hour's 50 spend samples failed: SUSPENDED.
        alpha
            .coordinator
            .report_spend(spend("beta", 0.0, i % 4 == 0))
            .unwrap();
    }
    assert_eq!(
        alpha.coordinator.peer("beta").unwrap().breaker.state,
        BreakerState::Suspended
    );
    assert_eq!(refuse("beta", &good), R::PeerSuspended);
    alpha.coordinator.evict("beta", "compromised").unwrap();
    assert_eq!(refuse("beta", &good), R::PeerEvicted);
    assert!(alpha.coordinator.inbox(0, 10).unwrap().is_empty());
    assert!(alpha.coordinator.audit().verify().is_ok());
}

#[test]
fn processed_ids_are_forgotten_after_the_dedupe_window_and_replays_stay_refused() {
    use agentfed::coordinator::{DEDUPE_WINDOW_MS, InboundRefusal as R};
    let (alpha, beta) = pair();
    let bytes = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    alpha.coordinator.receive("beta", &bytes).unwrap().unwrap();
    // Inside the window the tick forgets nothing.
    alpha.clock.advance(DEDUPE_WINDOW_MS - 1);
    assert_eq!(alpha.coordinator.tick().unwrap().dedupe_pruned, 0);
    // Past it the id is forgotten...
    alpha.clock.advance(2);
    assert_eq!(alpha.coordinator.tick().unwrap().dedupe_pruned, 1);
    assert_eq!(alpha.coordinator.tick().unwrap().dedupe_pruned, 0);
    // ...and a replay is still refused: its timestamp is far outside the
    // skew window (the window is much longer than the skew).
    assert_eq!(
        alpha
            .coordinator
            .receive("beta", &bytes)
            .unwrap()
            .unwrap_err(),
        R::StaleTimestamp
    );
    assert_eq!(alpha.coordinator.inbox(0, 10).unwrap().len(), 1);
    assert!(alpha.coordinator.audit().verify().is_ok());
}

#[test]
fn envelope_ids_the_store_cannot_key_are_refused_as_malformed() {
    use agentfed::coordinator::InboundRefusal as R;
    let (alpha, beta) = pair();
    for id in [String::new(), "x".repeat(257)] {
        let bytes = signed_by_beta(&beta, id, json!({"task": "x"}));
        // A final refusal, not an internal error the sender would retry.
        assert_eq!(
            alpha
                .coordinator
                .receive("beta", &bytes)
                .unwrap()
                .unwrap_err(),
            R::MalformedFrame
        );
    }
    assert!(alpha.coordinator.inbox(0, 10).unwrap().is_empty());
}

#[test]
fn a_copy_arriving_while_the_first_is_processed_is_told_to_retry() {
    use agentfed::coordinator::{AckStatus, InboundRefusal as R};
    let (alpha, beta) = pair();
    let bytes = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    // Two copies in one burst: the second arrives while the first is
    // between its checks and its commit.
    let results = alpha
        .coordinator
        .receive_many("beta", &[bytes.clone(), bytes.clone()]);
    assert_eq!(results.len(), 2);
    let first = results[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(first.status, AckStatus::Accepted);
    assert_eq!(
        results[1].as_ref().unwrap().as_ref().unwrap_err(),
        &R::InProgress
    );
    // The retry gets the stored acknowledgement; processed once.
    let again = alpha.coordinator.receive("beta", &bytes).unwrap().unwrap();
    assert_eq!(&again, first);
    assert_eq!(alpha.coordinator.inbox(0, 10).unwrap().len(), 1);
    // Not audited as a refusal.
    let rejected = alpha
        .coordinator
        .audit()
        .query(&agentfed::audit::AuditQuery {
            event_types: vec![agentfed::audit::EventType::MessageRejected],
            ..Default::default()
        })
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
}

/// beta's manifest re-signed with `change` applied (same key).
fn resigned(
    base: &agentfed::identity::SignedManifest,
    key: &ed25519_dalek::SigningKey,
    change: impl FnOnce(&mut agentfed::identity::Manifest),
) -> agentfed::identity::SignedManifest {
    let mut manifest = base.manifest.clone();
    change(&mut manifest);
    manifest.timestamp_ms += 1;
    agentfed::identity::SignedManifest::sign(manifest, key).expect("signing")
}

#[test]
fn a_known_peer_s_new_manifest_is_adopted_but_a_new_certificate_only_when_seen() {
    use agentfed::audit::{AuditQuery, EventType, Order};
    use base64::Engine as _;
    let n = node("alpha");
    let c = &n.coordinator;
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let beta = agentfed::identity::SignedManifest::from_json(peer_manifest("beta").as_bytes())
        .expect("parse");
    let beta = resigned(&beta, &key, |m| {
        m.public_key =
            base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    });
    c.add_peer(&String::from_utf8(beta.to_json()).unwrap())
        .expect("add beta");
    let updates = || {
        c.audit()
            .query(&AuditQuery {
                event_types: vec![EventType::PeerManifestUpdated],
                order: Order::NewestFirst,
                ..AuditQuery::default()
            })
            .expect("query")
    };

    // Nothing new: nothing recorded.
    c.peer_connected(&resigned(&beta, &key, |_| {}), "s0", "server", "stored")
        .expect("connected")
        .expect("admitted");
    assert!(updates().is_empty());

    // Moved, claimed over an inbound session: kept, warned; adopted once
    // this node dialed the new endpoint and the same node answered there.
    let moved = resigned(&beta, &key, |m| {
        m.endpoint = Some("wss://192.0.2.30:9300".into())
    });
    c.peer_connected(&moved, "s1", "server", "stored")
        .expect("connected")
        .expect("admitted");
    assert_eq!(
        c.peer("beta").unwrap().endpoint.as_deref(),
        Some("wss://127.0.0.1:9100")
    );
    let records = updates();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].details["adopted"], false);
    c.adopt_manifest_proven_at_endpoint(&moved)
        .expect("adopted");
    assert_eq!(
        c.peer("beta").unwrap().endpoint.as_deref(),
        Some("wss://192.0.2.30:9300")
    );
    let records = updates();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].details["changed"], json!(["endpoint"]));
    assert_eq!(records[0].details["adopted"], true);
    // A manifest under another key is never adopted that way.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forged = resigned(&moved, &other, |m| {
        m.public_key =
            base64::engine::general_purpose::STANDARD.encode(other.verifying_key().to_bytes());
        m.endpoint = Some("wss://192.0.2.99:9300".into());
    });
    assert!(c.adopt_manifest_proven_at_endpoint(&forged).is_err());
    assert_eq!(
        c.peer("beta").unwrap().endpoint.as_deref(),
        Some("wss://192.0.2.30:9300")
    );

    // Another certificate over an inbound session: not adopted, warned.
    let recertified = resigned(&moved, &key, |m| m.tls_fingerprint = "ab".repeat(32));
    c.peer_connected(&recertified, "s2", "server", "stored")
        .expect("connected")
        .expect("admitted");
    let stored = |c: &Coordinator| {
        c.store()
            .get_peer("beta")
            .unwrap()
            .expect("beta")
            .manifest
            .manifest
            .tls_fingerprint
    };
    assert_eq!(stored(c), moved.manifest.tls_fingerprint);
    let records = updates();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].details["adopted"], false, "{:?}", records[0]);
    // Dialed by us (the certificate was seen and pinned): adopted.
    c.peer_connected(&recertified, "s3", "client", "fingerprint")
        .expect("connected")
        .expect("admitted");
    assert_eq!(stored(c), "ab".repeat(32));
    assert_eq!(updates().len(), 4);

    // Gone dial-only, said over an inbound session: adopted at once (no
    // endpoint can aim this node's dials anywhere), and never dialed.
    let dial_only = resigned(&recertified, &key, |m| m.endpoint = None);
    c.peer_connected(&dial_only, "s4", "server", "stored")
        .expect("connected")
        .expect("admitted");
    assert_eq!(c.peer("beta").unwrap().endpoint, None);
    let records = updates();
    assert_eq!(records.len(), 5);
    assert_eq!(records[0].details["adopted"], true, "{:?}", records[0]);
    assert_eq!(records[0].details["endpoint"], serde_json::Value::Null);
    // Listening again, claimed inbound: kept until the endpoint proves it.
    let listening = resigned(&dial_only, &key, |m| {
        m.endpoint = Some("wss://192.0.2.31:9300".into())
    });
    c.peer_connected(&listening, "s5", "server", "stored")
        .expect("connected")
        .expect("admitted");
    assert_eq!(c.peer("beta").unwrap().endpoint, None);
    assert_eq!(updates()[0].details["adopted"], false);
    assert!(c.audit().verify().is_ok());
}

#[test]
fn configured_message_types_also_need_consensus_both_ways() {
    use agentfed::coordinator::{AckStatus, InboundRefusal as R};
    let consensus = "[transport]\nconsensus_for = [\"agent-handoff\"]\n";
    let alpha = node_with_config("alpha", Some(consensus));
    let beta = node("beta");
    for (a, b, b_id) in [(&alpha, &beta, "beta"), (&beta, &alpha, "alpha")] {
        let manifest = String::from_utf8(b.coordinator.manifest().unwrap().to_json()).unwrap();
        a.coordinator.add_peer(&manifest).unwrap();
        a.coordinator
            .set_trust(b_id, "attested", "bootstrap", true)
            .unwrap();
    }
    let send = |from: &Node, to: &str, message_type: &str| {
        from.coordinator.send(SendRequest {
            peer: to.into(),
            message_type: message_type.into(),
            payload: json!({"task": "x"}),
            budget: None,
            idempotency_key: None,
        })
    };
    // alpha's own gate: beta is ATTESTED, consensus needs TRUSTED.
    let err = send(&alpha, "beta", "agent-handoff").unwrap_err();
    assert_eq!(err.code(), "CAPABILITY_DENIED");
    assert!(err.to_string().contains("collaborative-task"), "{err}");
    send(&alpha, "beta", "claim-event").expect("not configured: send is enough");
    // beta requires no consensus, but alpha refuses it on receipt.
    let handoff = frame(&beta, "alpha", "agent-handoff", json!({"task": "x"}));
    let refused = alpha.coordinator.receive("beta", &handoff).unwrap();
    assert_eq!(refused.unwrap_err(), R::CapabilityDenied);
    // At TRUSTED both ways it goes through.
    alpha
        .coordinator
        .set_trust("beta", "trusted", "joint work", true)
        .unwrap();
    send(&alpha, "beta", "agent-handoff").expect("TRUSTED allows consensus");
    let handoff = frame(&beta, "alpha", "agent-handoff", json!({"task": "y"}));
    let ack = alpha
        .coordinator
        .receive("beta", &handoff)
        .unwrap()
        .unwrap();
    assert_eq!(ack.status, AckStatus::Accepted);
    assert!(alpha.coordinator.audit().verify().is_ok());
}

#[test]
fn the_skew_window_is_the_receiver_s_setting() {
    use agentfed::coordinator::{AckStatus, InboundRefusal as R};
    let strict = node_with_config("alpha", Some("[transport]\nmax_clock_skew_secs = 60\n"));
    let lenient = node("gamma");
    let beta = node("beta");
    for receiver in [&strict, &lenient] {
        let manifest = String::from_utf8(beta.coordinator.manifest().unwrap().to_json()).unwrap();
        receiver.coordinator.add_peer(&manifest).unwrap();
        receiver
            .coordinator
            .set_trust("beta", "attested", "bootstrap", true)
            .unwrap();
        let own = String::from_utf8(receiver.coordinator.manifest().unwrap().to_json()).unwrap();
        beta.coordinator.add_peer(&own).unwrap();
    }
    for id in ["alpha", "gamma"] {
        beta.coordinator
            .set_trust(id, "attested", "bootstrap", true)
            .unwrap();
    }
    // beta's clock runs two minutes ahead of both receivers'.
    beta.clock.advance(2 * 60_000);
    let to_alpha = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    let to_gamma = frame(&beta, "gamma", "task-assignment", json!({"task": "x"}));
    let refused = strict.coordinator.receive("beta", &to_alpha).unwrap();
    assert_eq!(refused.unwrap_err(), R::StaleTimestamp, "60 s allowed");
    let ack = lenient
        .coordinator
        .receive("beta", &to_gamma)
        .unwrap()
        .unwrap();
    assert_eq!(
        ack.status,
        AckStatus::Accepted,
        "the default allows 5 minutes"
    );
}

#[test]
fn synchronous_requests_name_their_session_and_queued_envelopes_none() {
    let (_alpha, beta) = pair();
    let request = || SendRequest {
        peer: "alpha".into(),
        message_type: "ping".into(),
        payload: json!({}),
        budget: None,
        idempotency_key: None,
    };
    let key = beta.coordinator.identity().verifying_key();
    let open = |frame: &[u8]| {
        agentfed::envelope::SignedEnvelope::from_frame(frame)
            .expect("frame")
            .open(&key)
            .expect("signed by beta")
    };
    let session = "5e".repeat(16);
    let (_, synchronous) = beta
        .coordinator
        .prepare_envelope_in(request(), Some(session.clone()))
        .unwrap();
    assert_eq!(open(&synchronous).session, Some(session));
    let queued = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    assert_eq!(open(&queued).session, None);
}

#[test]
fn duplicates_are_audited_a_burst_per_minute_then_counted() {
    use agentfed::audit::{AuditQuery, EventType, Order};
    use agentfed::coordinator::AckStatus;
    let (alpha, beta) = pair();
    let task = frame(&beta, "alpha", "task-assignment", json!({"task": "x"}));
    let first = alpha.coordinator.receive("beta", &task).unwrap().unwrap();
    assert_eq!(first.status, AckStatus::Accepted);
    let duplicates = || {
        alpha
            .coordinator
            .audit()
            .query(&AuditQuery {
                event_types: vec![EventType::MessageDuplicate],
                order: Order::OldestFirst,
                ..AuditQuery::default()
            })
            .unwrap()
    };
    // Records ride the next commit without being waited for.
    let settle = |count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while duplicates().len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{count} duplicate records"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    for _ in 0..20 {
        let again = alpha.coordinator.receive("beta", &task).unwrap().unwrap();
        assert_eq!(again, first, "answered with the stored acknowledgement");
    }
    settle(16);
    // A minute later the next one says how many went unrecorded.
    alpha.clock.advance(61_000);
    beta.clock.advance(61_000);
    alpha.coordinator.receive("beta", &task).unwrap().unwrap();
    settle(17);
    let records = duplicates();
    assert_eq!(records.len(), 17);
    assert_eq!(records[16].details["unreported_before"], 4);
    assert!(records.iter().all(|r| r.details["reason"] == "REPLAY"));
    assert_eq!(alpha.coordinator.inbox(0, 10).unwrap().len(), 1);
    assert!(alpha.coordinator.audit().verify().is_ok());
}

#[test]
fn an_idempotency_key_queues_a_send_once_and_refuses_another_request() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "attested", "idempotency test", false)
        .unwrap();
    let request = |payload: serde_json::Value, key: Option<&str>| SendRequest {
        peer: "beta".into(),
        message_type: "task-assignment".into(),
        payload,
        budget: None,
        idempotency_key: key.map(str::to_string),
    };
    let first = n
        .coordinator
        .send(request(json!({"task": "x"}), Some("job-1")))
        .unwrap();
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), 1);
    // A retry: the original receipt, nothing queued.
    let (again, entry) = n
        .coordinator
        .queue(request(json!({"task": "x"}), Some("job-1")))
        .unwrap();
    assert_eq!(again.envelope_id, first.envelope_id);
    assert!(entry.is_none());
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), 1);
    // The key with another payload, another peer-facing field: refused.
    let err = n
        .coordinator
        .send(request(json!({"task": "y"}), Some("job-1")))
        .unwrap_err();
    assert_eq!(err.code(), "IDEMPOTENCY_KEY_REUSED");
    assert!(err.is_bad_input());
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), 1);
    // Another key, and no key, queue as usual.
    n.coordinator
        .send(request(json!({"task": "x"}), Some("job-2")))
        .unwrap();
    n.coordinator
        .send(request(json!({"task": "x"}), None))
        .unwrap();
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), 3);
    // Bad keys change nothing.
    for bad in ["", "has space", &"k".repeat(129), "tab\there"] {
        let err = n
            .coordinator
            .send(request(json!({"task": "x"}), Some(bad)))
            .unwrap_err();
        assert_eq!(err.code(), "INVALID_INPUT", "{bad:?}");
    }
    assert_eq!(n.coordinator.store().outbox_len().unwrap(), 3);
    // Remembered for 24 h, then forgotten by the tick: the key is new.
    n.clock.advance(24 * 3_600_000 - 1);
    n.coordinator.tick().unwrap();
    let (still, entry) = n
        .coordinator
        .queue(request(json!({"task": "x"}), Some("job-1")))
        .unwrap();
    assert_eq!(still.envelope_id, first.envelope_id);
    assert!(entry.is_none());
    n.clock.advance(2);
    let report = n.coordinator.tick().unwrap();
    assert_eq!(report.idempotency_pruned, 2);
    let later = n
        .coordinator
        .send(request(json!({"task": "y"}), Some("job-1")))
        .unwrap();
    assert_ne!(later.envelope_id, first.envelope_id);
}

/// Jobs the store's writer committed, and audit records, so far.
fn jobs_and_records(n: &Node) -> (u64, u64) {
    (
        n.coordinator.store().commit_stats().jobs,
        n.coordinator.audit().len().unwrap(),
    )
}

#[test]
fn each_state_change_commits_with_its_audit_records_as_one_job() {
    // One job is one transaction: the change and its records are on disk
    // together or not at all (the journal's own tests show a failing
    // change takes its records with it).
    let n = node("alpha");
    let step_jobs = |what: &str, jobs: u64, records: u64, act: &dyn Fn()| {
        let (jobs_before, records_before) = jobs_and_records(&n);
        act();
        let (jobs_after, records_after) = jobs_and_records(&n);
        assert_eq!(jobs_after - jobs_before, jobs, "{what}: commits");
        assert_eq!(records_after - records_before, records, "{what}: records");
    };
    let step = |what: &str, records: u64, act: &dyn Fn()| step_jobs(what, 1, records, act);
    step("peer_added", 1, &|| {
        n.coordinator.add_peer(&peer_manifest("beta")).unwrap();
    });
    n.coordinator
        .set_trust("beta", "attested", "bootstrap", true)
        .unwrap();
    step("breaker_evicted", 1, &|| {
        n.coordinator.evict("beta", "test").unwrap();
    });
    step("breaker_reactivated", 1, &|| {
        n.coordinator.reactivate("beta", "test").unwrap();
    });
    // The sample and its `spend_reported` record are one job; the
    // interaction counted on the peer's record and the trust plugin's new
    // score are two more (no records), and the breaker (no transition)
    // writes nothing.
    step_jobs("spend_reported", 3, 1, &|| {
        n.coordinator
            .report_spend(SpendReport {
                peer: "beta".into(),
                task_id: "task-1".into(),
                tokens: 10.0,
                usd: 0.01,
                success: true,
            })
            .unwrap();
    });
    step(
        "signature_invalid + trust drop + threat_blocked",
        3,
        &|| {
            n.coordinator
                .record_interaction("beta", Interaction::SignatureFailure)
                .unwrap();
        },
    );
    assert_eq!(
        n.coordinator.peer("beta").unwrap().trust_level,
        TrustLevel::Untrusted
    );
    // The count and its record are one job; the trust plugin's evaluation
    // that follows (no drop: already UNTRUSTED) is its own.
    step_jobs("threat_detected (already UNTRUSTED)", 2, 1, &|| {
        n.coordinator
            .record_interaction("beta", Interaction::Threat)
            .unwrap();
    });
    step("peer_removed", 1, &|| {
        n.coordinator.remove_peer("beta").unwrap();
    });
    let removed = n
        .coordinator
        .audit()
        .query(&agentfed::audit::AuditQuery::default())
        .unwrap()
        .into_iter()
        .find(|r| r.event_type == agentfed::audit::EventType::PeerRemoved)
        .expect("peer_removed record");
    assert_eq!(removed.details["outbox_dropped"], 0);
    assert!(n.coordinator.audit().verify().is_ok());
}
