use super::*;
use std::collections::{BTreeMap, HashMap};

use TrustLevel::{Attested, Privileged, Trusted, Untrusted, Verified};

fn metrics(interactions: u64, successes: u64) -> InteractionMetrics {
    InteractionMetrics {
        interactions,
        successes,
        failures: interactions.saturating_sub(successes),
        threats: 0,
        signature_failures: 0,
        uptime: 1.0,
        integrity: 1.0,
        threats_last_hour: 0,
        first_seen_ms: 1_000,
        last_seen_ms: 2_000,
    }
}

fn snapshot(level: TrustLevel, metrics: InteractionMetrics) -> PeerSnapshot {
    PeerSnapshot {
        node_id: "peer-a".into(),
        level,
        level_since_ms: 1_500,
        metrics,
        now_ms: 3_000,
    }
}

/// A peer at `level` with `interactions` interactions whose score is
/// `target` (no threats; success rate 1 and uptime = integrity above 0.6,
/// success rate 0 below).
fn scored(level: TrustLevel, interactions: u64, target: f64) -> PeerSnapshot {
    assert!((0.2..=1.0).contains(&target));
    let (successes, x) = if target >= 0.6 {
        (interactions, (target - 0.6) / 0.4)
    } else {
        (0, (target - 0.2) / 0.4)
    };
    let mut m = metrics(interactions, successes);
    m.uptime = x;
    m.integrity = x;
    let peer = snapshot(level, m);
    let got = Score::of(&peer.metrics).value;
    assert!(
        (got - target).abs() < 1e-12,
        "helper built score {got}, wanted {target}"
    );
    peer
}

fn run(peer: &PeerSnapshot) -> TrustDecision {
    decide(peer, &Thresholds::default())
}

fn action(peer: &PeerSnapshot) -> TrustAction {
    run(peer).action
}

fn is_keep(a: &TrustAction) -> bool {
    matches!(a, TrustAction::Keep)
}

fn promoted_to(a: &TrustAction) -> Option<TrustLevel> {
    match a {
        TrustAction::Promote(l) => Some(*l),
        _ => None,
    }
}

fn demoted_to(a: &TrustAction) -> Option<TrustLevel> {
    match a {
        TrustAction::Demote(l) => Some(*l),
        _ => None,
    }
}

const EPS: f64 = 1e-9;

// ---------------------------------------------------------------- formula

#[test]
fn formula_hand_computed() {
    // sr = 80/100 = 0.8; penalty = min(1, 10·2/100) = 0.2;
    // 0.4·0.8 + 0.2·0.9 + 0.2·0.8 + 0.2·0.95 = 0.32 + 0.18 + 0.16 + 0.19 = 0.85
    let mut m = metrics(100, 80);
    m.threats = 2;
    m.uptime = 0.9;
    m.integrity = 0.95;
    let s = Score::of(&m);
    assert_eq!(s.success_rate, 0.8);
    assert!((s.threat_penalty - 0.2).abs() < 1e-15);
    assert_eq!(s.value, 0.85);
}

#[test]
fn formula_threat_penalty_saturates() {
    // 10·1/10 = 1 → threat term 0; 0.4·0.7 + 0.2·0.5 + 0 + 0.2·1 = 0.58
    let mut m = metrics(10, 7);
    m.threats = 1;
    m.uptime = 0.5;
    let s = Score::of(&m);
    assert_eq!(s.threat_penalty, 1.0);
    assert_eq!(s.value, 0.58);
    // 10·3/10 = 3 → still 1.
    m.threats = 3;
    assert_eq!(Score::of(&m).threat_penalty, 1.0);
    assert_eq!(Score::of(&m).value, 0.58);
}

#[test]
fn formula_partial_threat_penalty() {
    // 10·1/40 = 0.25 → term 0.75; 0.4·0.5 + 0.2·0.5 + 0.2·0.75 + 0.2·0.5
    // = 0.2 + 0.1 + 0.15 + 0.1 = 0.55
    let mut m = metrics(40, 20);
    m.threats = 1;
    m.uptime = 0.5;
    m.integrity = 0.5;
    let s = Score::of(&m);
    assert_eq!(s.threat_penalty, 0.25);
    assert_eq!(s.value, 0.55);
}

#[test]
fn formula_extremes() {
    assert_eq!(Score::of(&metrics(10, 10)).value, 1.0);
    let mut m = metrics(10, 0);
    m.uptime = 0.0;
    m.integrity = 0.0;
    m.threats = 1;
    assert_eq!(Score::of(&m).value, 0.0);
}

#[test]
fn components_names_weights_values() {
    let mut m = metrics(100, 80);
    m.threats = 2;
    m.uptime = 0.9;
    m.integrity = 0.95;
    let d = run(&snapshot(Verified, m));
    let got: Vec<(&str, f64, f64)> = d
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.value, c.weight))
        .collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], ("success-rate", 0.8, 0.4));
    assert_eq!(got[1], ("uptime", 0.9, 0.2));
    assert_eq!(got[2].0, "threat-penalty");
    assert!((got[2].1 - 0.8).abs() < 1e-15, "1 − penalty");
    assert_eq!(got[2].2, 0.2);
    assert_eq!(got[3], ("integrity", 0.95, 0.2));
    let weights: f64 = got.iter().map(|c| c.2).sum();
    assert!((weights - 1.0).abs() < 1e-15);
    let weighted: f64 = got.iter().map(|c| c.1 * c.2).sum();
    assert!((weighted - d.score).abs() < 1e-9);
    assert_eq!(d.score, 0.85);
}

#[test]
fn zero_interactions_score() {
    // No evidence: success rate 0, no threat penalty.
    let s = Score::of(&metrics(0, 0));
    assert_eq!(s.success_rate, 0.0);
    assert_eq!(s.threat_penalty, 0.0);
    assert_eq!(s.value, 0.6);
    // Threats without any interaction: full penalty.
    let mut m = metrics(0, 0);
    m.threats = 1;
    assert_eq!(Score::of(&m).threat_penalty, 1.0);
    assert_eq!(Score::of(&m).value, 0.4);
    // Successes without interactions do not count.
    let mut m = metrics(0, 0);
    m.successes = 7;
    assert_eq!(Score::of(&m).success_rate, 0.0);
}

#[test]
fn nan_and_out_of_range_inputs() {
    let mut m = metrics(10, 10);
    m.uptime = f64::NAN;
    m.integrity = f64::NAN;
    let s = Score::of(&m);
    assert_eq!((s.uptime, s.integrity), (0.0, 0.0));
    assert_eq!(s.value, 0.6);

    m.uptime = 1.5;
    m.integrity = -0.3;
    let s = Score::of(&m);
    assert_eq!((s.uptime, s.integrity), (1.0, 0.0));
    assert_eq!(s.value, 0.8);

    m.uptime = f64::INFINITY;
    m.integrity = f64::NEG_INFINITY;
    let s = Score::of(&m);
    assert_eq!((s.uptime, s.integrity), (1.0, 0.0));

    // More successes than interactions count as a success rate of 1.
    let m = metrics(10, 50);
    assert_eq!(Score::of(&m).success_rate, 1.0);

    // Huge counters neither overflow nor panic.
    let mut m = metrics(u64::MAX, u64::MAX);
    m.threats = u64::MAX;
    let s = Score::of(&m);
    assert_eq!(s.threat_penalty, 1.0);
    assert!(s.value.is_finite() && (0.0..=1.0).contains(&s.value));

    // NaN never makes a peer look good.
    let mut m = metrics(100, 100);
    m.uptime = f64::NAN;
    m.integrity = f64::NAN;
    let d = run(&snapshot(Attested, m));
    assert!(is_keep(&d.action), "0.6 < 0.85: no promotion");
    assert!(d.score.is_finite());
    for c in &d.components {
        assert!(c.value.is_finite() && (0.0..=1.0).contains(&c.value));
    }
}

#[test]
fn score_exactly_at_decimal_threshold_despite_floating_point() {
    // 0.4·0.25 + 0.2·1 + 0.2·1 + 0.2·1 is 0.7000000000000001 in binary
    // floating point; the rounded score is exactly 0.70.
    let m = metrics(4, 1);
    assert_eq!(Score::of(&m).value, 0.7);
}

// ---------------------------------------------------------------- promotion

/// Checks the five boundary cases of one promotion rung.
fn promotion_boundaries(from: TrustLevel, score: f64, interactions: u64, expect: fn(&TrustAction)) {
    let not_promoted = |a: &TrustAction, what: &str| {
        assert!(is_keep(a), "{what}: expected keep, got {a:?}");
    };
    expect(&action(&scored(from, interactions, score)));
    expect(&action(&scored(from, interactions, score + EPS)));
    expect(&action(&scored(from, interactions + 1, score)));
    not_promoted(
        &action(&scored(from, interactions, score - EPS)),
        "score just below",
    );
    not_promoted(
        &action(&scored(from, interactions - 1, score)),
        "one interaction short",
    );
    not_promoted(
        &action(&scored(from, interactions - 1, score - EPS)),
        "both short",
    );
}

#[test]
fn verified_to_attested_boundaries() {
    promotion_boundaries(Verified, 0.70, 50, |a| {
        assert_eq!(promoted_to(a), Some(Attested), "{a:?}")
    });
}

#[test]
fn attested_to_trusted_boundaries() {
    promotion_boundaries(Attested, 0.85, 500, |a| {
        assert_eq!(promoted_to(a), Some(Trusted), "{a:?}")
    });
}

#[test]
fn trusted_recommends_privileged_boundaries() {
    promotion_boundaries(Trusted, 0.95, 5000, |a| {
        assert!(matches!(a, TrustAction::RecommendPrivileged), "{a:?}")
    });
}

#[test]
fn promotion_reason_states_numbers() {
    let d = run(&scored(Verified, 50, 0.70));
    assert_eq!(
        d.reason,
        "score 0.70 ≥ 0.70 with 50 ≥ 50 interactions: VERIFIED → ATTESTED"
    );
    let d = run(&scored(Verified, 63, 0.72));
    assert_eq!(
        d.reason,
        "score 0.72 ≥ 0.70 with 63 ≥ 50 interactions: VERIFIED → ATTESTED"
    );
    let d = run(&scored(Attested, 600, 0.9));
    assert_eq!(
        d.reason,
        "score 0.90 ≥ 0.85 with 600 ≥ 500 interactions: ATTESTED → TRUSTED"
    );
    let d = run(&scored(Trusted, 5000, 0.95));
    assert_eq!(
        d.reason,
        "score 0.95 ≥ 0.95 with 5000 ≥ 5000 interactions: TRUSTED qualifies for PRIVILEGED (an operator must confirm)"
    );
}

#[test]
fn keep_reason_names_the_missed_bar() {
    let d = run(&scored(Verified, 63, 0.69));
    assert_eq!(
        d.reason,
        "score 0.69 < 0.70 but 63 ≥ 50 interactions: stays VERIFIED (ATTESTED needs both)"
    );
    let d = run(&scored(Verified, 49, 0.72));
    assert_eq!(
        d.reason,
        "score 0.72 ≥ 0.70 but 49 < 50 interactions: stays VERIFIED (ATTESTED needs both)"
    );
    let d = run(&scored(Verified, 49, 0.69));
    assert!(
        d.reason
            .starts_with("score 0.69 < 0.70 and 49 < 50 interactions"),
        "{}",
        d.reason
    );
    // Just below: enough digits to see that it missed.
    let d = run(&scored(Verified, 50, 0.70 - EPS));
    assert!(
        d.reason.starts_with("score 0.699999999 < 0.700000000"),
        "{}",
        d.reason
    );
    let d = run(&scored(Trusted, 4999, 0.99));
    assert!(
        d.reason
            .ends_with("stays TRUSTED (recommending PRIVILEGED needs both)"),
        "{}",
        d.reason
    );
}

#[test]
fn promotes_one_level_at_a_time() {
    let d = run(&snapshot(Verified, metrics(1_000_000, 1_000_000)));
    assert_eq!(d.score, 1.0);
    assert_eq!(promoted_to(&d.action), Some(Attested));
    let d = run(&snapshot(Attested, metrics(1_000_000, 1_000_000)));
    assert_eq!(promoted_to(&d.action), Some(Trusted));
}

#[test]
fn never_promotes_to_privileged() {
    for level in TrustLevel::ALL {
        let a = action(&snapshot(level, metrics(u64::MAX, u64::MAX)));
        assert_ne!(promoted_to(&a), Some(Privileged), "{level:?}");
    }
    assert!(matches!(
        action(&snapshot(Trusted, metrics(10_000, 10_000))),
        TrustAction::RecommendPrivileged
    ));
}

#[test]
fn privileged_stays_at_the_top() {
    let d = run(&snapshot(Privileged, metrics(10_000, 10_000)));
    assert!(is_keep(&d.action));
    assert_eq!(
        d.reason,
        "score 1.00 ≥ 0.80: stays PRIVILEGED, the top of the ladder"
    );
}

#[test]
fn untrusted_is_never_promoted() {
    let d = run(&snapshot(Untrusted, metrics(1_000_000, 1_000_000)));
    assert!(is_keep(&d.action));
    assert_eq!(d.score, 1.0);
    assert!(d.reason.contains("handshake"), "{}", d.reason);
}

// ---------------------------------------------------------------- demotion

fn demotion_boundaries(level: TrustLevel, floor: f64, lower: TrustLevel) {
    for interactions in [1, 100, 10_000] {
        assert!(
            is_keep(&action(&scored(level, interactions, floor))),
            "at floor"
        );
        assert!(
            is_keep(&action(&scored(level, interactions, floor + EPS))),
            "above floor"
        );
        assert_eq!(
            demoted_to(&action(&scored(level, interactions, floor - EPS))),
            Some(lower),
            "just below floor"
        );
    }
}

#[test]
fn attested_floor() {
    demotion_boundaries(Attested, 0.50, Verified);
}

#[test]
fn trusted_floor() {
    demotion_boundaries(Trusted, 0.65, Attested);
}

#[test]
fn privileged_floor() {
    demotion_boundaries(Privileged, 0.80, Trusted);
}

#[test]
fn demotion_reason_states_numbers() {
    let d = run(&scored(Attested, 100, 0.48));
    assert_eq!(d.reason, "score 0.48 < 0.50: ATTESTED → VERIFIED");
    let d = run(&scored(Trusted, 100, 0.6));
    assert_eq!(d.reason, "score 0.60 < 0.65: TRUSTED → ATTESTED");
    let d = run(&scored(Privileged, 100, 0.8 - EPS));
    assert_eq!(
        d.reason,
        "score 0.799999999 < 0.800000000: PRIVILEGED → TRUSTED"
    );
}

#[test]
fn demotes_only_one_level_on_score() {
    // Score 0.2 is below every floor, but a score demotion is one level.
    let mut m = metrics(100, 0);
    m.uptime = 0.0;
    m.integrity = 0.0;
    let d = run(&snapshot(Privileged, m));
    assert_eq!(d.score, 0.2);
    assert_eq!(demoted_to(&d.action), Some(Trusted));
}

#[test]
fn verified_is_not_demoted_on_score() {
    let mut m = metrics(1000, 0);
    m.uptime = 0.0;
    m.integrity = 0.0;
    m.threats = 1000;
    let d = run(&snapshot(Verified, m));
    assert_eq!(d.score, 0.0);
    assert!(is_keep(&d.action), "{:?}", d.action);
}

#[test]
fn zero_interactions_keep_every_level() {
    for level in TrustLevel::ALL {
        let mut m = metrics(0, 0);
        m.uptime = 0.0;
        m.integrity = 0.0;
        let d = run(&snapshot(level, m));
        assert!(is_keep(&d.action), "{level:?}: {:?}", d.action);
        assert_eq!(d.score, 0.2);
    }
    let d = run(&snapshot(Trusted, metrics(0, 0)));
    assert_eq!(
        d.reason,
        "no interactions recorded yet (score 0.60): no evidence either way, stays TRUSTED"
    );
}

// ---------------------------------------------------------------- threats

#[test]
fn two_threats_in_an_hour_drop_to_untrusted() {
    for level in [Verified, Attested, Trusted, Privileged] {
        let mut m = metrics(10_000, 10_000);
        m.threats_last_hour = 1;
        m.threats = 1;
        assert!(
            demoted_to(&action(&snapshot(level, m))).is_none(),
            "one threat is not enough at {level:?}"
        );
        for n in [2, 3, u32::MAX] {
            m.threats_last_hour = n;
            m.threats = n.into();
            assert_eq!(
                demoted_to(&action(&snapshot(level, m))),
                Some(Untrusted),
                "{n} threats at {level:?}"
            );
        }
    }
    let mut m = metrics(100, 100);
    m.threats_last_hour = 2;
    let d = run(&snapshot(Trusted, m));
    assert_eq!(
        d.reason,
        "2 threat detections within the last hour (limit 2): TRUSTED → UNTRUSTED"
    );
}

#[test]
fn any_signature_failure_drops_to_untrusted() {
    for level in [Verified, Attested, Trusted, Privileged] {
        for interactions in [0, 10_000] {
            let mut m = metrics(interactions, interactions);
            m.signature_failures = 1;
            assert_eq!(
                demoted_to(&action(&snapshot(level, m))),
                Some(Untrusted),
                "{level:?} with {interactions} interactions"
            );
        }
    }
    let mut m = metrics(100, 100);
    m.signature_failures = 1;
    assert_eq!(
        run(&snapshot(Attested, m)).reason,
        "1 signature failure since reaching ATTESTED: ATTESTED → UNTRUSTED"
    );
    m.signature_failures = 3;
    assert_eq!(
        run(&snapshot(Verified, m)).reason,
        "3 signature failures since reaching VERIFIED: VERIFIED → UNTRUSTED"
    );
}

#[test]
fn signature_failure_beats_promotion_and_threats() {
    let mut m = metrics(10_000, 10_000);
    m.signature_failures = 1;
    m.threats_last_hour = 5;
    let d = run(&snapshot(Trusted, m));
    assert_eq!(demoted_to(&d.action), Some(Untrusted));
    assert!(d.reason.contains("signature failure"), "{}", d.reason);
}

#[test]
fn untrusted_stays_untrusted_under_threats() {
    let mut m = metrics(100, 100);
    m.signature_failures = 4;
    m.threats_last_hour = 9;
    assert!(is_keep(&action(&snapshot(Untrusted, m))));
}

// ---------------------------------------------------------------- config

#[test]
fn defaults_from_empty_config() {
    assert_eq!(
        Thresholds::from_config(&Defaults),
        Ok(Thresholds::default())
    );
    assert_eq!(
        Thresholds::from_config(&BTreeMap::new()),
        Ok(Thresholds::default())
    );
    let t = Thresholds::default();
    assert_eq!(
        (
            t.attested.promote_score,
            t.attested.promote_interactions,
            t.attested.demote_below
        ),
        (0.70, 50, 0.50)
    );
    assert_eq!(
        (
            t.trusted.promote_score,
            t.trusted.promote_interactions,
            t.trusted.demote_below
        ),
        (0.85, 500, 0.65)
    );
    assert_eq!(
        (
            t.privileged.promote_score,
            t.privileged.promote_interactions,
            t.privileged.demote_below
        ),
        (0.95, 5000, 0.80)
    );
    assert_eq!(t.threats_per_hour, 2);
}

#[test]
fn every_key_overrides() {
    let cfg = [
        ("promote.attested.score", "0.6"),
        ("promote.attested.interactions", "10"),
        ("demote.attested.below", "0.4"),
        ("promote.trusted.score", " 0.8 "),
        ("promote.trusted.interactions", "100"),
        ("demote.trusted.below", "0.55"),
        ("promote.privileged.score", "0.9"),
        ("promote.privileged.interactions", "1000"),
        ("demote.privileged.below", "0.7"),
        ("threats.per-hour", "3"),
    ];
    let t = Thresholds::from_config(&cfg).unwrap();
    assert_eq!(
        t,
        Thresholds {
            attested: Rung {
                promote_score: 0.6,
                promote_interactions: 10,
                demote_below: 0.4
            },
            trusted: Rung {
                promote_score: 0.8,
                promote_interactions: 100,
                demote_below: 0.55
            },
            privileged: Rung {
                promote_score: 0.9,
                promote_interactions: 1000,
                demote_below: 0.7
            },
            threats_per_hour: 3,
        }
    );
    // The overrides drive decisions.
    let a = evaluate_with(&scored(Verified, 10, 0.6), &cfg)
        .unwrap()
        .action;
    assert_eq!(promoted_to(&a), Some(Attested));
    let a = evaluate_with(&scored(Verified, 9, 0.6), &cfg)
        .unwrap()
        .action;
    assert!(is_keep(&a));
    let a = evaluate_with(&scored(Attested, 10, 0.45), &cfg)
        .unwrap()
        .action;
    assert!(is_keep(&a), "0.45 is above the new 0.4 floor");
    let a = evaluate_with(&scored(Trusted, 1000, 0.9), &cfg)
        .unwrap()
        .action;
    assert!(matches!(a, TrustAction::RecommendPrivileged));
    let mut m = metrics(100, 100);
    m.threats_last_hour = 2;
    let a = evaluate_with(&snapshot(Trusted, m), &cfg).unwrap().action;
    assert!(is_keep(&a), "2 < 3 threats per hour");
    m.threats_last_hour = 3;
    let a = evaluate_with(&snapshot(Trusted, m), &cfg).unwrap().action;
    assert_eq!(demoted_to(&a), Some(Untrusted));
    // The reason quotes the configured threshold.
    let d = evaluate_with(&scored(Verified, 12, 0.65), &cfg).unwrap();
    assert_eq!(
        d.reason,
        "score 0.65 ≥ 0.60 with 12 ≥ 10 interactions: VERIFIED → ATTESTED"
    );
}

#[test]
fn map_sources() {
    let mut b = BTreeMap::new();
    b.insert("promote.attested.interactions".to_owned(), "7".to_owned());
    assert_eq!(
        Thresholds::from_config(&b)
            .unwrap()
            .attested
            .promote_interactions,
        7
    );
    let mut h = HashMap::new();
    h.insert("threats.per-hour".to_owned(), "5".to_owned());
    assert_eq!(Thresholds::from_config(&h).unwrap().threats_per_hour, 5);
    // A later duplicate in a slice wins, like a later line in a file.
    let s: &[(&str, &str)] = &[("threats.per-hour", "4"), ("threats.per-hour", "6")];
    assert_eq!(Thresholds::from_config(s).unwrap().threats_per_hour, 6);
}

#[test]
fn invalid_config_is_an_error_naming_the_key() {
    let bad: &[(&str, &str)] = &[
        ("promote.attested.score", "abc"),
        ("promote.attested.score", "NaN"),
        ("promote.attested.score", "inf"),
        ("promote.attested.score", "-0.1"),
        ("promote.attested.score", "1.01"),
        ("promote.attested.score", ""),
        ("promote.trusted.score", "0,9"),
        ("promote.privileged.score", "2"),
        ("demote.attested.below", "-1"),
        ("demote.trusted.below", "nan"),
        ("demote.privileged.below", "1e9"),
        ("promote.attested.interactions", "-1"),
        ("promote.trusted.interactions", "1.5"),
        ("promote.privileged.interactions", "lots"),
        ("promote.privileged.interactions", "18446744073709551616"),
        ("threats.per-hour", "0"),
        ("threats.per-hour", "-2"),
        ("threats.per-hour", "two"),
    ];
    let peer = scored(Verified, 100, 0.9);
    for (key, value) in bad {
        let err = evaluate_with(&peer, &[(*key, *value)]).unwrap_err();
        assert!(err.contains(key), "{key}={value}: {err}");
        if !value.is_empty() {
            assert!(!err.contains(value), "error echoes the value: {err}");
        }
    }
}

#[test]
fn floor_above_promotion_bar_is_rejected() {
    let err = Thresholds::from_config(&[("demote.attested.below", "0.75")]).unwrap_err();
    assert_eq!(
        err,
        "config key `demote.attested.below` must not exceed `promote.attested.score`"
    );
    let err = Thresholds::from_config(&[("promote.trusted.score", "0.6")]).unwrap_err();
    assert!(err.contains("demote.trusted.below"), "{err}");
    // Equal is allowed.
    let t = Thresholds::from_config(&[
        ("demote.privileged.below", "0.9"),
        ("promote.privileged.score", "0.9"),
    ])
    .unwrap();
    assert_eq!(t.privileged.demote_below, 0.9);
}

// ---------------------------------------------------------------- helpers

#[test]
fn number_pairs_show_enough_digits() {
    assert_eq!(pair(0.72, 0.7), ("0.72".into(), "0.70".into()));
    assert_eq!(pair(0.7, 0.7), ("0.70".into(), "0.70".into()));
    assert_eq!(
        pair(0.699999999, 0.7),
        ("0.699999999".into(), "0.700000000".into())
    );
    assert_eq!(pair(0.704, 0.7), ("0.704".into(), "0.700".into()));
}

#[test]
fn level_names() {
    let names: Vec<_> = TrustLevel::ALL.iter().map(|l| level_name(*l)).collect();
    assert_eq!(
        names,
        ["UNTRUSTED", "VERIFIED", "ATTESTED", "TRUSTED", "PRIVILEGED"]
    );
}

#[test]
fn description_is_one_line() {
    assert!(!DefaultTrustPolicy::DESCRIPTION.contains('\n'));
}
