//! Whole-message behaviour: several values, overlaps, UTF-8, empty input,
//! idempotence, extension.

mod support;

use agentfed_guest::pii::{PiiAction, TrustLevel};
use agentfed_policy_pii::{ActionTable, Decision, Finding, Policy, Scanner, apply, resolve, types};
use support::{fake_hash, request, scan, scan_with};

#[test]
fn empty_request() {
    let r = scan(&[], TrustLevel::Untrusted);
    assert!(r.detections.is_empty() && r.rewritten.is_empty() && !r.blocked);
    let r = scan(&[("", ""), ("/a", "")], TrustLevel::Untrusted);
    assert!(r.detections.is_empty() && !r.blocked);
}

#[test]
fn multi_value_indices_and_rewrites() {
    let values = [
        ("/title", "weekly sync"),
        ("/attendees/0", "bob@example.com"),
        ("/notes", "nothing here"),
        ("/attendees/1", "call 555-123-4567 or mail amy@example.org"),
        ("/server", "192.0.2.44"),
    ];
    let r = scan(&values, TrustLevel::Attested);
    assert!(!r.blocked);
    let got: Vec<(u32, &str, PiiAction)> = r
        .detections
        .iter()
        .map(|d| (d.value_index, d.pii_type.as_str(), d.action))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "email", PiiAction::Redact),
            (3, "phone", PiiAction::Redact),
            (3, "email", PiiAction::Redact),
            (4, "ip_address", PiiAction::Hash),
        ]
    );
    let rw: Vec<(u32, &str)> = r
        .rewritten
        .iter()
        .map(|w| (w.value_index, w.value.as_str()))
        .collect();
    let ip_hash = format!("[HASH:ip_address:{}]", fake_hash("192.0.2.44"));
    assert_eq!(
        rw,
        vec![
            (1, "[REDACTED:email]"),
            (3, "call [REDACTED:phone] or mail [REDACTED:email]"),
            (4, ip_hash.as_str()),
        ]
    );
}

#[test]
fn one_blocking_value_blocks_the_message() {
    let r = scan(
        &[("/a", "bob@example.com"), ("/b", "card 4111111111111111")],
        TrustLevel::Privileged,
    );
    assert!(r.blocked);
    assert_eq!(r.detections.len(), 2);
    assert_eq!(r.detections[0].action, PiiAction::Pass);
    assert_eq!(r.detections[1].action, PiiAction::Block);
    assert!(r.rewritten.is_empty());
}

#[test]
fn overlaps_prefer_severity_then_length_then_start() {
    let f = |ty, start, end| Finding::new(ty, start, end, 0.9, "test");
    let table = ActionTable::default();
    // At ATTESTED email redacts and ssn blocks: the block wins although
    // the email span is longer.
    let d = resolve(
        &[f(types::EMAIL, 0, 20), f(types::SSN, 5, 16)],
        &table,
        TrustLevel::Attested,
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].finding.pii_type, types::SSN);
    // Same action: the longer span wins.
    let d = resolve(
        &[f(types::NAME, 0, 8), f(types::ADDRESS, 4, 20)],
        &table,
        TrustLevel::Attested,
    );
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].finding.pii_type, types::ADDRESS);
    // Same action and length: the earlier start wins; the later
    // non-overlapping one is kept.
    let d = resolve(
        &[
            f(types::NAME, 4, 10),
            f(types::ADDRESS, 2, 8),
            f(types::NAME, 10, 12),
        ],
        &table,
        TrustLevel::Attested,
    );
    let spans: Vec<(usize, usize)> = d.iter().map(|d| (d.finding.start, d.finding.end)).collect();
    assert_eq!(spans, vec![(2, 8), (10, 12)]);
    // Redact beats hash (email hashes, name redacts at TRUSTED).
    let d = resolve(
        &[f(types::EMAIL, 0, 30), f(types::NAME, 0, 10)],
        &table,
        TrustLevel::Trusted,
    );
    assert_eq!(d[0].finding.pii_type, types::NAME);
}

#[test]
fn overlap_resolution_is_order_independent() {
    let f = |ty, start, end, c| Finding::new(ty, start, end, c, "test");
    let table = ActionTable::default();
    let mut input = vec![
        f(types::EMAIL, 10, 25, 0.9),
        f(types::PHONE, 0, 12, 0.7),
        f(types::IP_ADDRESS, 20, 30, 0.85),
        f(types::NAME, 30, 40, 0.8),
        f(types::API_KEY, 26, 34, 0.7),
        f(types::API_KEY, 26, 34, 0.95),
    ];
    let expected = resolve(&input, &table, TrustLevel::Privileged);
    for rot in 0..input.len() {
        input.rotate_left(1);
        let mut rev = input.clone();
        rev.reverse();
        assert_eq!(
            resolve(&input, &table, TrustLevel::Privileged),
            expected,
            "rot {rot}"
        );
        assert_eq!(
            resolve(&rev, &table, TrustLevel::Privileged),
            expected,
            "rot {rot} rev"
        );
    }
    for w in expected.windows(2) {
        assert!(w[0].finding.end <= w[1].finding.start);
    }
    // The more confident of two identical spans is kept.
    let key = expected
        .iter()
        .find(|d| d.finding.pii_type == types::API_KEY)
        .unwrap();
    assert_eq!(key.finding.confidence, 0.95);
}

#[test]
fn real_overlaps_resolve_to_the_container() {
    // The e-mail inside the database URL and the IP inside it are not
    // reported separately.
    let text = "db mysql://root:toor@192.0.2.5:3306/shop and postgres://u:p4ss@bob.example.com/x";
    for level in TrustLevel::ALL {
        let r = scan(&[("/t", text)], level);
        let types: Vec<&str> = r.detections.iter().map(|d| d.pii_type.as_str()).collect();
        assert_eq!(types, vec!["database_url", "database_url"], "{level:?}");
    }
    // A JWT that follows `Bearer`: one detection (the longer JWT rule and
    // the bearer rule cover the same span; the JWT is more specific).
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let r = scan(
        &[("/h", &format!("Authorization: Bearer {jwt}"))],
        TrustLevel::Privileged,
    );
    assert_eq!(r.detections.len(), 1, "{:?}", r.detections);
    assert_eq!(r.detections[0].pii_type, "jwt");
}

#[test]
fn utf8_safety() {
    let text =
        "Grüße an Dr. Zoë Müller — bob@example.com, 📞 555-123-4567 📞, Straße 5, 東京 192.0.2.1 ✓";
    for level in TrustLevel::ALL {
        let r = scan(&[("/ü/ß", text)], level);
        assert_eq!(r.detections.len(), 4, "{level:?}: {:?}", r.detections);
        for d in &r.detections {
            assert!(text.is_char_boundary(d.start as usize));
            assert!(text.is_char_boundary(d.end as usize));
        }
        let spans: Vec<&str> = r
            .detections
            .iter()
            .map(|d| &text[d.start as usize..d.end as usize])
            .collect();
        assert_eq!(
            spans,
            [
                "Dr. Zoë Müller",
                "bob@example.com",
                "555-123-4567",
                "192.0.2.1"
            ]
        );
        if let Some(w) = r.rewritten.first() {
            assert!(w.value.starts_with("Grüße an "));
            assert!(w.value.ends_with(" ✓"));
            assert!(
                w.value.contains("📞 [REDACTED:phone] 📞") || w.value.contains("📞 [HASH:phone:")
            );
        }
    }
    // Every byte offset of a multi-byte text: no panic, boundaries only.
    let tricky = "ü@ü.de é@example.com ™555-123-4567™ Dr. Ädam Ölsen ６６６-12-3456 ٣٤٥";
    let f = support::findings("/x", tricky);
    for f in &f {
        assert!(tricky.is_char_boundary(f.start) && tricky.is_char_boundary(f.end));
    }
}

#[test]
fn rewritten_text_scans_clean() {
    let text = "Dr. Jane Smith, bob@example.com, 555-123-4567, 192.0.2.1, 123 Main St";
    for level in [TrustLevel::Attested, TrustLevel::Trusted] {
        let r = scan(&[("/t", text)], level);
        assert!(!r.blocked);
        let once = &r.rewritten[0].value;
        let again = scan(&[("/t", once)], level);
        assert!(
            again.detections.is_empty(),
            "{once}: {:?}",
            again.detections
        );
    }
}

#[test]
fn detect_is_sorted_and_deduplicated() {
    let f = agentfed_policy_pii::detect(
        "/t",
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY mail bob@example.com",
    );
    for w in f.windows(2) {
        assert!((w[0].start, w[0].end) <= (w[1].start, w[1].end));
        assert!(
            !(w[0].start == w[1].start && w[0].end == w[1].end && w[0].pii_type == w[1].pii_type)
        );
    }
}

#[test]
fn apply_rejects_bad_decisions() {
    let d = |s, e| Decision {
        finding: Finding::new(types::EMAIL, s, e, 0.9, "t"),
        action: PiiAction::Redact,
    };
    let mut h = |s: &str| fake_hash(s);
    assert_eq!(
        apply("abcdef", &[d(1, 3)], &mut h).unwrap().as_deref(),
        Some("a[REDACTED:email]def")
    );
    assert!(
        apply("abcdef", &[d(1, 4), d(3, 5)], &mut h).is_err(),
        "overlap"
    );
    assert!(apply("abc", &[d(1, 9)], &mut h).is_err(), "out of range");
    assert!(
        apply("é", &[d(1, 2)], &mut h).is_err(),
        "not a char boundary"
    );
    assert_eq!(apply("abc", &[], &mut h).unwrap(), None);
}

#[test]
fn extension_with_a_custom_detector() {
    let scanner =
        Scanner::new().with_detector(|_path: &str, value: &str, out: &mut Vec<Finding>| {
            if let Some(p) = value.find("BADGE-") {
                out.push(Finding::new(
                    "badge_id",
                    p,
                    (p + 10).min(value.len()),
                    0.9,
                    "badge",
                ));
            }
        });
    let mut table = ActionTable::default();
    table.set("badge_id", [PiiAction::Redact; 5]);
    let policy = Policy::new(scanner, table);
    let r = scan_with(
        &policy,
        &[("/t", "id BADGE-1234 for bob@example.com")],
        TrustLevel::Privileged,
    );
    assert_eq!(
        r.rewritten[0].value,
        "id [REDACTED:badge_id] for bob@example.com"
    );
    // Custom detectors' findings inside markers are dropped too.
    let r = scan_with(
        &policy,
        &[("/t", "[REDACTED:BADGE-12]")],
        TrustLevel::Privileged,
    );
    assert!(r.detections.is_empty());
}

#[test]
fn large_values_and_many_values() {
    let big = "lorem ipsum dolor sit amet ".repeat(4000) + "bob@example.com";
    let r = scan(&[("/t", &big)], TrustLevel::Attested);
    assert_eq!(r.detections.len(), 1);
    assert_eq!(r.detections[0].start as usize, big.len() - 15);
    let many: Vec<(String, String)> = (0..500)
        .map(|i| (format!("/items/{i}"), format!("user{i}@example.com")))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(p, v)| (p.as_str(), v.as_str())).collect();
    let r = Policy::default()
        .scan(&request(&refs, TrustLevel::Trusted), &mut |s| fake_hash(s))
        .unwrap();
    assert_eq!(r.detections.len(), 500);
    assert_eq!(r.rewritten.len(), 500);
    assert!(
        r.detections
            .iter()
            .enumerate()
            .all(|(i, d)| d.value_index as usize == i)
    );
}

#[test]
fn hostile_inputs_do_not_panic() {
    let inputs = [
        "@".repeat(1000),
        ":".repeat(1000),
        "-----BEGIN ".repeat(200),
        "[REDACTED:".repeat(200),
        "1-".repeat(2000),
        "1.".repeat(2000),
        "Dr. ".repeat(500),
        "password=".repeat(500),
        "eyJ".repeat(1000) + ".eyJ",
        "a".repeat(100_000),
        "9".repeat(100_000),
        "sk-".repeat(1000),
        "\u{0}\u{1}\u{7f}".repeat(300),
        "~Q~8Q~".repeat(300),
        "(((555) ".repeat(300),
        "+".repeat(300) + "1 555 123 4567",
    ];
    for s in &inputs {
        let _ = scan(&[("/x", s)], TrustLevel::Privileged);
    }
}

#[test]
fn hostile_inputs_stay_linear() {
    use std::time::Instant;
    let inputs = [
        "-----BEGIN RSA PRIVATE KEY----- ".repeat(20_000),
        "a://".repeat(50_000),
        "eyJhbGciOiJub25lIn0.".repeat(10_000),
        "x@".repeat(100_000),
        "password=".repeat(20_000),
        "1 ".repeat(100_000),
        "Dr. A ".repeat(30_000),
    ];
    for s in &inputs {
        let t = Instant::now();
        let _ = scan(&[("/x", s)], TrustLevel::Privileged);
        // Generous even for unoptimised test builds on a busy machine.
        assert!(
            t.elapsed().as_secs_f64() < 5.0,
            "{:?}… took {:?}",
            &s[..20],
            t.elapsed()
        );
    }
}
