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

use agentfed::plugin::{Direction, PiiAction, ScanRequest, StringValue};

const LEVELS: [TrustLevel; 5] = [
    TrustLevel::Untrusted,
    TrustLevel::Verified,
    TrustLevel::Attested,
    TrustLevel::Trusted,
    TrustLevel::Privileged,
];

fn pii_request(text: &str, level: TrustLevel) -> ScanRequest {
    ScanRequest {
        direction: Direction::Outbound,
        peer_level: level,
        message_type: "task-assignment".into(),
        values: vec![StringValue {
            path: "/text".into(),
            value: text.into(),
        }],
    }
}

/// The design's action table, every type × every level, through the real
/// component: detection, the action per level, and the rewritten text
/// (hashes computed by the host's keyed-hash import).
#[test]
fn default_pii_action_table_through_the_component() {
    use PiiAction::{Block as B, Hash as H, Pass as P, Redact as R};
    let cases: [(&str, &str, &str, [PiiAction; 5]); 14] = [
        (
            "email",
            "mail bob@example.com now",
            "bob@example.com",
            [B, B, R, H, P],
        ),
        ("ssn", "ssn 123-45-6789 ok", "123-45-6789", [B; 5]),
        (
            "credit_card",
            "card 4111 1111 1111 1111 ok",
            "4111 1111 1111 1111",
            [B; 5],
        ),
        (
            "api_key",
            "key sk-proj-Abc123Def456Ghi789Jkl012 ok",
            "sk-proj-Abc123Def456Ghi789Jkl012",
            [B, B, B, B, R],
        ),
        (
            "password",
            "login with password=hunter2 ok",
            "hunter2",
            [B; 5],
        ),
        (
            "name",
            "ask Dr. Jane Smith today",
            "Dr. Jane Smith",
            [B, B, R, R, P],
        ),
        (
            "address",
            "ship to 221B Baker Street please",
            "221B Baker Street",
            [B, B, R, R, P],
        ),
        (
            "phone",
            "call 555-123-4567 now",
            "555-123-4567",
            [B, B, R, H, P],
        ),
        (
            "ip_address",
            "host 192.0.2.14 is up",
            "192.0.2.14",
            [B, B, H, H, P],
        ),
        (
            "jwt",
            "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            [B, B, B, B, R],
        ),
        (
            "aws_key",
            "id AKIAIOSFODNN7EXAMPLE end",
            "AKIAIOSFODNN7EXAMPLE",
            [B; 5],
        ),
        (
            "private_key",
            "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY----- end",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            [B; 5],
        ),
        (
            "database_url",
            "db postgres://app:Zx9qLm2P@db.internal:5432/app ok",
            "postgres://app:Zx9qLm2P@db.internal:5432/app",
            [B, B, B, B, R],
        ),
        (
            "github_token",
            "tok ghp_0123456789abcdefghijABCDEFGHIJ012345 ok",
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            [B, B, B, B, R],
        ),
    ];
    let rt = runtime(None);
    let pii = load_default(&rt, PluginKind::Pii);
    for (pii_type, text, secret, actions) in cases {
        for (level, expected) in LEVELS.into_iter().zip(actions) {
            let result = pii.scan_pii(&pii_request(text, level)).unwrap();
            let what = format!("{pii_type} at {level:?}");
            let detection = result
                .detections
                .iter()
                .find(|d| d.pii_type == pii_type)
                .unwrap_or_else(|| panic!("{what}: not detected in {:?}", result.detections));
            assert_eq!(
                &text[detection.start as usize..detection.end as usize],
                secret,
                "{what}: span"
            );
            assert_eq!(detection.action, expected, "{what}: action");
            assert_eq!(result.blocked, expected == B, "{what}: blocked");
            let rewritten = result.rewritten.first().map(|r| r.value.as_str());
            match expected {
                B | P => assert_eq!(rewritten, None, "{what}: nothing rewritten"),
                R => assert_eq!(
                    rewritten,
                    Some(
                        text.replace(secret, &format!("[REDACTED:{pii_type}]"))
                            .as_str()
                    ),
                    "{what}"
                ),
                H => {
                    let hash = agentfed::plugin::keyed_hash(&[7; 32], secret.as_bytes());
                    assert_eq!(
                        rewritten,
                        Some(
                            text.replace(secret, &format!("[HASH:{pii_type}:{hash}]"))
                                .as_str()
                        ),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn secret_named_fields_are_caught_by_path() {
    let rt = runtime(None);
    let pii = load_default(&rt, PluginKind::Pii);
    let mut request = pii_request("just words", TrustLevel::Privileged);
    request.values.push(StringValue {
        path: "/config/db_password".into(),
        value: "correct horse battery staple".into(),
    });
    let result = pii.scan_pii(&request).unwrap();
    assert!(result.blocked);
    let d = &result.detections[0];
    assert_eq!((d.value_index, d.pii_type.as_str()), (1, "password"));
}

#[test]
fn hipaa_example_adds_medical_identifiers_and_is_stricter() {
    let rt = runtime(None);
    let plugin = load_with(
        &rt,
        PluginKind::Pii,
        PluginSource::File(artifacts::HIPAA_PII.into()),
        host(&[]),
        relaxed_limits(),
    );
    let result = plugin
        .scan_pii(&pii_request(
            "Patient MRN 12345678, DOB 1980-04-12, dx E11.9",
            TrustLevel::Trusted,
        ))
        .unwrap();
    let types: Vec<&str> = result
        .detections
        .iter()
        .map(|d| d.pii_type.as_str())
        .collect();
    for expected in ["medical_record_number", "date_of_birth", "diagnosis_code"] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    assert!(result.blocked);
    // The default policy passes emails at PRIVILEGED; HIPAA never does.
    let result = plugin
        .scan_pii(&pii_request("mail bob@example.com", TrustLevel::Privileged))
        .unwrap();
    assert_ne!(result.detections[0].action, PiiAction::Pass);
}
