//! The default action table (14 types × 5 levels), rewrites and operator
//! overrides.

mod support;

use std::collections::HashMap;

use agentfed_guest::pii::{PiiAction, TrustLevel};
use agentfed_policy_pii::{ActionTable, Policy, types};
use support::{fake_hash, scan, scan_with};

use PiiAction::{Block as B, Hash as H, Pass as P, Redact as R};

/// (type, text, the sensitive part, actions UNTRUSTED..PRIVILEGED).
const CASES: &[(&str, &str, &str, [PiiAction; 5])] = &[
    (
        "email",
        "mail bob@example.com now",
        "bob@example.com",
        [B, B, R, H, P],
    ),
    ("ssn", "ssn 123-45-6789 ok", "123-45-6789", [B, B, B, B, B]),
    (
        "credit_card",
        "card 4111 1111 1111 1111 ok",
        "4111 1111 1111 1111",
        [B, B, B, B, B],
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
        [B, B, B, B, B],
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
        [B, B, B, B, B],
    ),
    (
        "private_key",
        "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY----- end",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        [B, B, B, B, B],
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

#[test]
fn every_canonical_type_has_a_case() {
    let mut covered: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    covered.sort();
    let mut all: Vec<&str> = types::ALL.to_vec();
    all.sort();
    assert_eq!(covered, all);
}

#[test]
fn default_table_matches_the_design() {
    let table = ActionTable::default();
    for (ty, _, _, actions) in CASES {
        assert_eq!(table.row(ty), Some(*actions), "{ty}");
    }
}

/// 14 types × 5 levels = 70 scans, each checking the detection, its
/// action, `blocked` and the rewritten text.
#[test]
fn action_table_70_cases() {
    let mut checked = 0;
    for (ty, text, needle, actions) in CASES {
        let start = text.find(needle).expect("needle in text");
        let end = start + needle.len();
        for (level, expected) in TrustLevel::ALL.into_iter().zip(actions) {
            let r = scan(&[("/note", text)], level);
            let ctx = format!("{ty} at {level:?}");
            assert_eq!(r.detections.len(), 1, "{ctx}: {:?}", r.detections);
            let d = &r.detections[0];
            assert_eq!(d.pii_type, *ty, "{ctx}");
            assert_eq!((d.start as usize, d.end as usize), (start, end), "{ctx}");
            assert_eq!(d.value_index, 0, "{ctx}");
            assert!(d.confidence > 0.0 && d.confidence <= 1.0, "{ctx}");
            assert_eq!(d.action, *expected, "{ctx}");
            assert_eq!(r.blocked, *expected == B, "{ctx}");
            let rewritten = r.rewritten.first().map(|w| w.value.as_str());
            let want = match expected {
                B | P => None,
                R => Some(format!("{}[REDACTED:{ty}]{}", &text[..start], &text[end..])),
                H => Some(format!(
                    "{}[HASH:{ty}:{}]{}",
                    &text[..start],
                    fake_hash(needle),
                    &text[end..]
                )),
            };
            assert_eq!(rewritten, want.as_deref(), "{ctx}");
            assert!(r.rewritten.len() <= 1, "{ctx}");
            checked += 1;
        }
    }
    assert_eq!(checked, 70);
}

#[test]
fn same_table_for_both_directions() {
    use agentfed_guest::pii::Direction;
    let policy = Policy::default();
    for dir in [Direction::Outbound, Direction::Inbound] {
        let mut req = support::request(&[("/m", "mail bob@example.com")], TrustLevel::Trusted);
        req.direction = dir;
        let r = policy.scan(&req, &mut |s| fake_hash(s)).unwrap();
        assert_eq!(r.detections[0].action, H);
    }
}

fn config(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[test]
fn per_level_override() {
    let mut policy = Policy::default();
    policy
        .configure(&config(&[("action.email.attested", "hash")]))
        .unwrap();
    let r = scan_with(&policy, &[("/m", "bob@example.com")], TrustLevel::Attested);
    assert_eq!(r.detections[0].action, H);
    assert_eq!(
        r.rewritten[0].value,
        format!("[HASH:email:{}]", fake_hash("bob@example.com"))
    );
    // Other levels keep their defaults.
    let r = scan_with(
        &policy,
        &[("/m", "bob@example.com")],
        TrustLevel::Privileged,
    );
    assert_eq!(r.detections[0].action, P);
}

#[test]
fn type_wide_override_and_precedence() {
    let mut policy = Policy::default();
    policy
        .configure(&config(&[
            ("action.ip_address", "pass"),
            ("action.ip_address.untrusted", " BLOCK "),
        ]))
        .unwrap();
    assert_eq!(
        policy.table().row("ip_address"),
        Some([B, P, P, P, P]),
        "per-level key wins over the type-wide key; case and spaces ignored"
    );
    let r = scan_with(&policy, &[("/m", "host 192.0.2.1")], TrustLevel::Verified);
    assert!(!r.blocked);
    assert!(r.rewritten.is_empty());
}

#[test]
fn no_overrides_leaves_the_default_table() {
    let mut policy = Policy::default();
    policy.configure(&|_| None).unwrap();
    for (ty, _, _, actions) in CASES {
        assert_eq!(policy.table().row(ty), Some(*actions));
    }
}

#[test]
fn invalid_override_is_an_error() {
    for (k, v) in [
        ("action.email.attested", "drop"),
        ("action.ssn", ""),
        ("action.phone.trusted", "redacted"),
    ] {
        let mut policy = Policy::default();
        let err = policy.configure(&config(&[(k, v)])).unwrap_err();
        assert!(err.contains(k), "{err}");
    }
}

#[test]
fn min_confidence_override() {
    let mut policy = Policy::default();
    policy
        .configure(&config(&[("min_confidence", "0.6")]))
        .unwrap();
    assert_eq!(policy.min_confidence(), 0.6);
    // A dotted quad of single digits has confidence 0.5: dropped.
    let r = scan_with(
        &policy,
        &[("/m", "go to 1.2.3.4 now")],
        TrustLevel::Untrusted,
    );
    assert!(r.detections.is_empty(), "{:?}", r.detections);
    let r = scan_with(
        &policy,
        &[("/m", "go to 192.0.2.7 now")],
        TrustLevel::Untrusted,
    );
    assert_eq!(r.detections.len(), 1);
    for bad in ["1.5", "-0.1", "x", "NaN"] {
        let mut policy = Policy::default();
        assert!(
            policy
                .configure(&config(&[("min_confidence", bad)]))
                .is_err(),
            "{bad}"
        );
    }
}

#[test]
fn floors_reject_weaker_overrides() {
    let mut table = ActionTable::default();
    table.set_floor(types::EMAIL, H);
    assert_eq!(
        table.row("email"),
        Some([B, B, R, H, H]),
        "pass raised to the floor"
    );
    let mut policy = Policy::new(Default::default(), table);
    let err = policy
        .configure(&config(&[("action.email.privileged", "pass")]))
        .unwrap_err();
    assert!(err.contains("action.email.privileged"), "{err}");
    let mut policy = Policy::new(Default::default(), {
        let mut t = ActionTable::default();
        t.set_floor(types::EMAIL, H);
        t
    });
    policy
        .configure(&config(&[("action.email.privileged", "redact")]))
        .unwrap();
    assert_eq!(policy.table().action("email", TrustLevel::Privileged), R);
}

#[test]
fn unknown_types_are_blocked() {
    let table = ActionTable::default();
    for level in TrustLevel::ALL {
        assert_eq!(table.action("martian_id", level), B);
    }
}

#[test]
fn hash_that_leaks_the_value_is_refused() {
    let policy = Policy::default();
    let req = support::request(&[("/m", "mail bob@example.com")], TrustLevel::Trusted);
    let err = policy.scan(&req, &mut |s| s[..3].to_string()).unwrap_err();
    assert!(err.contains("prefix"), "{err}");
    let err = policy.scan(&req, &mut |_| "not hex!".into()).unwrap_err();
    assert!(err.contains("malformed"), "{err}");
    let err = policy.scan(&req, &mut |_| String::new()).unwrap_err();
    assert!(err.contains("malformed"), "{err}");
}

#[test]
fn blocked_messages_compute_no_hash_and_no_rewrite() {
    let policy = Policy::default();
    let req = support::request(
        &[("/a", "mail bob@example.com"), ("/b", "ssn 123-45-6789")],
        TrustLevel::Trusted,
    );
    let r = policy
        .scan(&req, &mut |_| panic!("no hash for a blocked message"))
        .unwrap();
    assert!(r.blocked);
    assert!(r.rewritten.is_empty());
    assert_eq!(r.detections.len(), 2);
}
