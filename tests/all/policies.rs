//! The default policies and the examples, exercised as real components
//! through the host (the crates' own native tests cover every rule; these
//! prove the same answers cross the component boundary).

use agentfed::plugin::{
    BreakerState, BreakerView, HandlerDecision, MessageView, PluginError, PluginKind, PluginSource,
    SpendDecision, SpendRequest, SpendWindow, TrustAction, TrustLevel,
};
use agentfed_test_artifacts as artifacts;

use crate::support::{host, load_default, load_with, peer, relaxed_limits, runtime};

fn promote_target(action: &TrustAction) -> Option<TrustLevel> {
    match action {
        TrustAction::Promote(level) => Some(*level),
        _ => None,
    }
}

#[test]
fn default_trust_promotes_at_the_reference_thresholds() {
    let rt = runtime(None);
    let trust = load_default(&rt, PluginKind::Trust);
    // 50 interactions, all successful, perfect uptime and integrity:
    // score 1.0 ≥ 0.70 with 50 ≥ 50 interactions → ATTESTED.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Verified, 50, 50))
        .unwrap();
    assert_eq!(
        promote_target(&d.action),
        Some(TrustLevel::Attested),
        "{}",
        d.reason
    );
    // One interaction short: keep.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Verified, 49, 49))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep), "{}", d.reason);
    // Score exactly 0.70: 0.4·0.25 + 0.2 + 0.2 + 0.2 = 0.70 → promote.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Verified, 100, 25))
        .unwrap();
    assert!((d.score - 0.70).abs() < 1e-9, "{}", d.score);
    assert_eq!(
        promote_target(&d.action),
        Some(TrustLevel::Attested),
        "{}",
        d.reason
    );
    // Just below: 24 of 100 → 0.696 → keep.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Verified, 100, 24))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep), "{}", d.reason);
    // ATTESTED → TRUSTED at ≥ 0.85 and ≥ 500.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Attested, 500, 500))
        .unwrap();
    assert_eq!(
        promote_target(&d.action),
        Some(TrustLevel::Trusted),
        "{}",
        d.reason
    );
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Attested, 499, 499))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep), "{}", d.reason);
    // TRUSTED only ever *recommends* PRIVILEGED.
    let d = trust
        .evaluate_trust(&peer("p", TrustLevel::Trusted, 5000, 5000))
        .unwrap();
    assert!(
        matches!(d.action, TrustAction::RecommendPrivileged),
        "{}",
        d.reason
    );
    assert_eq!(d.components.len(), 4);
}

#[test]
fn default_trust_demotes_on_score_and_threats() {
    let rt = runtime(None);
    let trust = load_default(&rt, PluginKind::Trust);
    // ATTESTED with score < 0.50: 0.4·0 + 0.2 + 0.2·(1-1) + 0.2 = 0.40.
    let mut p = peer("p", TrustLevel::Attested, 100, 0);
    p.metrics.threats = 10;
    let d = trust.evaluate_trust(&p).unwrap();
    assert!(
        matches!(d.action, TrustAction::Demote(TrustLevel::Verified)),
        "{}",
        d.reason
    );
    // Any signature failure → UNTRUSTED at once.
    let mut p = peer("p", TrustLevel::Trusted, 1000, 1000);
    p.metrics.signature_failures = 1;
    let d = trust.evaluate_trust(&p).unwrap();
    assert!(
        matches!(d.action, TrustAction::Demote(TrustLevel::Untrusted)),
        "{}",
        d.reason
    );
    // Two threats within the hour → UNTRUSTED.
    let mut p = peer("p", TrustLevel::Attested, 1000, 1000);
    p.metrics.threats = 2;
    p.metrics.threats_last_hour = 2;
    let d = trust.evaluate_trust(&p).unwrap();
    assert!(
        matches!(d.action, TrustAction::Demote(TrustLevel::Untrusted)),
        "{}",
        d.reason
    );
}

#[test]
fn trust_config_overrides_and_bad_config_fails_closed() {
    let rt = runtime(None);
    let source = || PluginSource::Embedded("default-trust");
    let strict = load_with(
        &rt,
        PluginKind::Trust,
        source(),
        host(&[("promote.attested.interactions", "100")]),
        relaxed_limits(),
    );
    let d = strict
        .evaluate_trust(&peer("p", TrustLevel::Verified, 60, 60))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep), "{}", d.reason);
    let broken = load_with(
        &rt,
        PluginKind::Trust,
        source(),
        host(&[("promote.attested.score", "lots")]),
        relaxed_limits(),
    );
    let err = broken
        .evaluate_trust(&peer("p", TrustLevel::Verified, 60, 60))
        .unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err}");
}

fn spend_request(state: BreakerState, hour: (u32, u32), day_usd: f64) -> SpendRequest {
    SpendRequest {
        node_id: "peer".into(),
        breaker: BreakerView {
            state,
            since_ms: 0,
            reason: None,
            failures_since_suspend: 0,
        },
        last_hour: SpendWindow {
            window_ms: 3_600_000,
            samples: hour.0,
            failures: hour.1,
            tokens: 0,
            usd: 0.0,
        },
        last_day: SpendWindow {
            window_ms: 86_400_000,
            samples: hour.0,
            failures: hour.1,
            tokens: 0,
            usd: day_usd,
        },
        now_ms: 60_000,
    }
}

#[test]
fn default_spend_trips_on_cost_and_failure_ratio() {
    let rt = runtime(None);
    let spend = load_default(&rt, PluginKind::Spend);
    let decide = |r: &SpendRequest| spend.evaluate_spend(r).unwrap();
    assert!(matches!(
        decide(&spend_request(BreakerState::Active, (10, 0), 4.99)),
        SpendDecision::None
    ));
    assert!(matches!(
        decide(&spend_request(BreakerState::Active, (10, 0), 5.01)),
        SpendDecision::Suspend(_)
    ));
    // 26 of 50 failed (> 0.5) with 50 samples → suspend; 49 samples → not yet.
    assert!(matches!(
        decide(&spend_request(BreakerState::Active, (50, 26), 0.0)),
        SpendDecision::Suspend(_)
    ));
    assert!(matches!(
        decide(&spend_request(BreakerState::Active, (49, 49), 0.0)),
        SpendDecision::None
    ));
    // Cost wins when both trip.
    match decide(&spend_request(BreakerState::Active, (50, 50), 9.0)) {
        SpendDecision::Suspend(reason) => assert!(reason.contains('$'), "{reason}"),
        other => panic!("expected suspend, got {other:?}"),
    }
    // Suspended: cooldown, then reactivate-eligible; more failures → evict.
    let mut suspended = spend_request(BreakerState::Suspended, (0, 0), 0.0);
    suspended.now_ms = 29 * 60_000;
    assert!(matches!(decide(&suspended), SpendDecision::None));
    suspended.now_ms = 30 * 60_000;
    assert!(matches!(
        decide(&suspended),
        SpendDecision::ReactivateEligible
    ));
    suspended.breaker.failures_since_suspend = 10;
    assert!(matches!(decide(&suspended), SpendDecision::Evict(_)));
}

fn message(message_type: &str, payload: &str) -> MessageView {
    MessageView {
        id: "m-1".into(),
        source: "peer".into(),
        message_type: message_type.into(),
        payload_json: payload.into(),
        sender_level: TrustLevel::Attested,
        hop_count: 0,
        sent_at_ms: 0,
    }
}

#[test]
fn default_handler_answers_accepts_and_rejects() {
    let rt = runtime(None);
    let handler = load_default(&rt, PluginKind::Handler);
    let handle = |t: &str, p: &str| handler.handle_message(&message(t, p)).unwrap();
    match handle("ping", "{}") {
        HandlerDecision::Reply(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["type"], "pong");
            assert_eq!(v["node"], "standalone");
        }
        other => panic!("{other:?}"),
    }
    match handle("status", "{}") {
        HandlerDecision::Reply(json) => assert!(json.contains("\"version\"")),
        other => panic!("{other:?}"),
    }
    for accepted in [
        "task-assignment",
        "memory-query",
        "context-share",
        "agent-handoff",
    ] {
        assert!(
            matches!(handle(accepted, r#"{"task":"x"}"#), HandlerDecision::Accept),
            "{accepted}"
        );
    }
    assert!(
        matches!(handle("launch-missiles", "{}"), HandlerDecision::Reject(r) if r == "unknown message type")
    );
    assert!(matches!(
        handle("task-assignment", "{not json"),
        HandlerDecision::Reject(_)
    ));
}

#[test]
fn allowlist_example_only_promotes_listed_peers() {
    let rt = runtime(None);
    let plugin = load_with(
        &rt,
        PluginKind::Trust,
        PluginSource::File(artifacts::ALLOWLIST_TRUST.into()),
        host(&[("allow", "lab-*,alice")]),
        relaxed_limits(),
    );
    let d = plugin
        .evaluate_trust(&peer("lab-3", TrustLevel::Verified, 40, 40))
        .unwrap();
    assert_eq!(
        promote_target(&d.action),
        Some(TrustLevel::Attested),
        "{}",
        d.reason
    );
    let d = plugin
        .evaluate_trust(&peer("mallory", TrustLevel::Verified, 4000, 4000))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep), "{}", d.reason);
    let d = plugin
        .evaluate_trust(&peer("alice", TrustLevel::Trusted, 9000, 9000))
        .unwrap();
    assert!(
        !matches!(
            d.action,
            TrustAction::RecommendPrivileged | TrustAction::Promote(_)
        ),
        "{}",
        d.reason
    );
}
