use super::*;
use agentfed_guest::spend::{BreakerView, SpendWindow};
use std::collections::{BTreeMap, HashMap};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// A realistic clock: 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

fn window(window_ms: u64, samples: u32, failures: u32, usd: f64) -> SpendWindow {
    SpendWindow {
        window_ms,
        samples,
        failures,
        tokens: u64::from(samples) * 1000,
        usd,
    }
}

/// An ACTIVE peer with `samples`/`failures` in the last hour and `usd`
/// spent in the last day.
fn active(samples: u32, failures: u32, usd: f64) -> SpendRequest {
    SpendRequest {
        node_id: "peer-a".into(),
        breaker: BreakerView {
            state: BreakerState::Active,
            since_ms: T0 - DAY_MS,
            reason: None,
            failures_since_suspend: 0,
        },
        last_hour: window(HOUR_MS, samples, failures, usd.min(0.01)),
        last_day: window(DAY_MS, samples, failures, usd),
        now_ms: T0,
    }
}

/// A SUSPENDED peer, suspended `suspended_ms` ago, with `failures` reported
/// since.
fn suspended(suspended_ms: u64, failures: u32) -> SpendRequest {
    SpendRequest {
        node_id: "peer-a".into(),
        breaker: BreakerView {
            state: BreakerState::Suspended,
            since_ms: T0,
            reason: Some("24h spend $5.20 exceeds limit $5.00".into()),
            failures_since_suspend: failures,
        },
        last_hour: window(HOUR_MS, 0, 0, 0.0),
        last_day: window(DAY_MS, 0, 0, 0.0),
        now_ms: T0 + suspended_ms,
    }
}

fn run(request: &SpendRequest) -> SpendDecision {
    decide(request, &Limits::default())
}

fn is_none(d: &SpendDecision) -> bool {
    matches!(d, SpendDecision::None)
}

fn suspend_reason(d: &SpendDecision) -> Option<&str> {
    match d {
        SpendDecision::Suspend(r) => Some(r),
        _ => None,
    }
}

fn evict_reason(d: &SpendDecision) -> Option<&str> {
    match d {
        SpendDecision::Evict(r) => Some(r),
        _ => None,
    }
}

fn is_eligible(d: &SpendDecision) -> bool {
    matches!(d, SpendDecision::ReactivateEligible)
}

// ---------------------------------------------------------------- cost

#[test]
fn cost_at_and_around_the_limit() {
    assert!(is_none(&run(&active(0, 0, 0.0))));
    assert!(is_none(&run(&active(0, 0, 4.99))));
    assert!(is_none(&run(&active(0, 0, 5.0))), "exactly at the limit");
    assert!(suspend_reason(&run(&active(0, 0, 5.000_000_1))).is_some());
    assert!(suspend_reason(&run(&active(0, 0, 5.01))).is_some());
    assert!(suspend_reason(&run(&active(0, 0, 1e9))).is_some());
}

#[test]
fn cost_reason() {
    assert_eq!(
        suspend_reason(&run(&active(0, 0, 5.2))),
        Some("24h spend $5.20 exceeds limit $5.00")
    );
    // Enough digits to see the difference.
    assert_eq!(
        suspend_reason(&run(&active(0, 0, 5.004))),
        Some("24h spend $5.004 exceeds limit $5.000")
    );
    assert_eq!(
        suspend_reason(&run(&active(0, 0, 2e13))),
        Some("24h spend $2.000e13 exceeds limit $5.000e0")
    );
}

#[test]
fn negative_spend_counts_as_zero() {
    assert!(is_none(&run(&active(0, 0, -100.0))));
    let limits = Limits {
        max_usd_per_day: 0.0,
        ..Limits::default()
    };
    assert!(is_none(&decide(&active(0, 0, -1.0), &limits)));
    assert!(suspend_reason(&decide(&active(0, 0, 0.01), &limits)).is_some());
}

#[test]
fn non_finite_spend_fails_closed() {
    for usd in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(
            suspend_reason(&run(&active(0, 0, usd))),
            Some("24h spend is not a finite number (limit $5.00)"),
            "{usd}"
        );
    }
}

// ---------------------------------------------------------------- failures

#[test]
fn failure_ratio_at_and_around_the_threshold() {
    assert!(is_none(&run(&active(50, 25, 0.0))), "0.5 is not above 0.5");
    assert!(suspend_reason(&run(&active(50, 26, 0.0))).is_some());
    assert!(is_none(&run(&active(100, 50, 0.0))));
    assert!(suspend_reason(&run(&active(100, 51, 0.0))).is_some());
    assert!(
        suspend_reason(&run(&active(51, 26, 0.0))).is_some(),
        "0.5098"
    );
    assert!(is_none(&run(&active(51, 25, 0.0))), "0.4902");
    assert!(suspend_reason(&run(&active(50, 50, 0.0))).is_some());
}

#[test]
fn failure_ratio_needs_min_samples() {
    assert!(is_none(&run(&active(49, 49, 0.0))), "49 < 50 samples");
    assert!(is_none(&run(&active(0, 0, 0.0))));
    assert!(
        is_none(&run(&active(0, 7, 0.0))),
        "failures without samples"
    );
    assert!(suspend_reason(&run(&active(50, 49, 0.0))).is_some());
}

#[test]
fn failure_ratio_reason() {
    assert_eq!(
        suspend_reason(&run(&active(50, 26, 0.0))),
        Some("1h failure ratio 0.52 (26 of 50 samples) exceeds 0.50")
    );
    // Failures above the sample count are capped at it.
    assert_eq!(
        suspend_reason(&run(&active(50, 80, 0.0))),
        Some("1h failure ratio 1.00 (50 of 50 samples) exceeds 0.50")
    );
    // 1002/2000 = 0.501: enough digits to see it is above.
    assert_eq!(
        suspend_reason(&run(&active(2000, 1002, 0.0))),
        Some("1h failure ratio 0.501 (1002 of 2000 samples) exceeds 0.500")
    );
}

#[test]
fn cost_wins_over_failure_ratio() {
    let d = run(&active(100, 100, 6.0));
    assert_eq!(
        suspend_reason(&d),
        Some("24h spend $6.00 exceeds limit $5.00")
    );
}

#[test]
fn active_peers_are_never_evicted_or_made_eligible() {
    for (samples, failures, usd) in [(0, 0, 0.0), (100, 100, 100.0), (10, 10, 1.0)] {
        let mut r = active(samples, failures, usd);
        r.breaker.failures_since_suspend = 1000;
        r.breaker.since_ms = 0;
        let d = run(&r);
        assert!(
            is_none(&d) || suspend_reason(&d).is_some(),
            "{samples}/{failures}/{usd}: {d:?}"
        );
    }
}

#[test]
fn reasons_never_name_the_peer() {
    let mut r = active(100, 100, 6.0);
    r.node_id = "secret-node-name".into();
    let d = run(&r);
    assert!(!suspend_reason(&d).unwrap().contains("secret"));
    let mut r = suspended(DAY_MS, 20);
    r.node_id = "secret-node-name".into();
    assert!(!evict_reason(&run(&r)).unwrap().contains("secret"));
}

// ---------------------------------------------------------------- suspended

#[test]
fn cooldown_boundaries() {
    let cooldown = 30 * 60 * 1000;
    assert!(is_none(&run(&suspended(0, 0))));
    assert!(is_none(&run(&suspended(cooldown - 1, 0))));
    assert!(is_eligible(&run(&suspended(cooldown, 0))));
    assert!(is_eligible(&run(&suspended(cooldown + 1, 0))));
    assert!(is_eligible(&run(&suspended(DAY_MS - 1, 9))));
}

#[test]
fn clock_behind_the_breaker_counts_as_just_suspended() {
    let mut r = suspended(0, 0);
    r.now_ms = r.breaker.since_ms - HOUR_MS;
    assert!(is_none(&run(&r)));
    r.now_ms = 0;
    assert!(is_none(&run(&r)));
}

#[test]
fn eviction_after_failures_boundaries() {
    assert!(is_none(&run(&suspended(0, 9))));
    assert_eq!(
        evict_reason(&run(&suspended(0, 10))),
        Some("10 failures reported while suspended (limit 10)")
    );
    assert!(evict_reason(&run(&suspended(0, 11))).is_some());
    assert!(evict_reason(&run(&suspended(0, u32::MAX))).is_some());
    // Still eligible (not evicted) one failure short, after the cooldown.
    assert!(is_eligible(&run(&suspended(HOUR_MS, 9))));
}

#[test]
fn eviction_after_time_boundaries() {
    assert!(is_eligible(&run(&suspended(DAY_MS - 1, 0))));
    assert_eq!(
        evict_reason(&run(&suspended(DAY_MS, 0))),
        Some("suspended for 24h (limit 24h)")
    );
    assert_eq!(
        evict_reason(&run(&suspended(DAY_MS + 90_061_000, 0))),
        Some("suspended for 49h 1m 1s (limit 24h)")
    );
}

#[test]
fn failure_eviction_reason_wins_over_time() {
    assert_eq!(
        evict_reason(&run(&suspended(2 * DAY_MS, 12))),
        Some("12 failures reported while suspended (limit 10)")
    );
}

#[test]
fn suspended_peers_ignore_spend_and_are_never_suspended_again() {
    let mut r = suspended(60_000, 0);
    r.last_day = window(DAY_MS, 1000, 1000, 1e6);
    r.last_hour = window(HOUR_MS, 1000, 1000, 1e6);
    assert!(is_none(&run(&r)));
}

#[test]
fn evicted_is_always_none() {
    for (ms, failures) in [(0, 0), (DAY_MS * 30, 1000), (HOUR_MS, 5)] {
        let mut r = suspended(ms, failures);
        r.breaker.state = BreakerState::Evicted;
        r.last_day = window(DAY_MS, 1000, 1000, 1e6);
        assert!(is_none(&run(&r)));
    }
}

// ---------------------------------------------------------------- config

#[test]
fn defaults_from_empty_config() {
    let d = Limits::default();
    assert_eq!(Limits::from_config(&Defaults), Ok(d));
    assert_eq!(Limits::from_config(&BTreeMap::new()), Ok(d));
    assert_eq!(
        (
            d.max_usd_per_day,
            d.max_failure_ratio,
            d.min_samples,
            d.evict_after_failures,
            d.evict_after_secs,
            d.cooldown_secs
        ),
        (5.0, 0.5, 50, 10, 86_400, 1_800)
    );
}

#[test]
fn every_key_overrides() {
    let cfg = [
        ("max-usd-per-day", "2.5"),
        ("max-failure-ratio", " 0.2 "),
        ("min-samples", "10"),
        ("evict-after-failures", "3"),
        ("evict-after-secs", "7200"),
        ("cooldown-secs", "60"),
    ];
    let l = Limits::from_config(&cfg).unwrap();
    assert_eq!(
        l,
        Limits {
            max_usd_per_day: 2.5,
            max_failure_ratio: 0.2,
            min_samples: 10,
            evict_after_failures: 3,
            evict_after_secs: 7200,
            cooldown_secs: 60,
        }
    );
    let ev = |r: &SpendRequest| evaluate_with(r, &cfg).unwrap();
    assert!(is_none(&ev(&active(0, 0, 2.5))));
    assert_eq!(
        suspend_reason(&ev(&active(0, 0, 2.6))),
        Some("24h spend $2.60 exceeds limit $2.50")
    );
    assert!(is_none(&ev(&active(9, 9, 0.0))), "9 < 10 samples");
    assert!(is_none(&ev(&active(10, 2, 0.0))), "0.2 is not above 0.2");
    assert_eq!(
        suspend_reason(&ev(&active(10, 3, 0.0))),
        Some("1h failure ratio 0.30 (3 of 10 samples) exceeds 0.20")
    );
    assert!(is_none(&ev(&suspended(59_999, 2))));
    assert!(is_eligible(&ev(&suspended(60_000, 2))));
    assert!(evict_reason(&ev(&suspended(0, 3))).is_some());
    assert!(is_eligible(&ev(&suspended(7_199_999, 0))));
    assert_eq!(
        evict_reason(&ev(&suspended(7_200_000, 0))),
        Some("suspended for 2h (limit 2h)")
    );
}

#[test]
fn failure_ratio_one_disables_the_ratio_rule() {
    let cfg = [("max-failure-ratio", "1")];
    assert!(is_none(
        &evaluate_with(&active(1000, 1000, 0.0), &cfg).unwrap()
    ));
}

#[test]
fn zero_cooldown_is_eligible_at_once() {
    let cfg = [("cooldown-secs", "0")];
    assert!(is_eligible(&evaluate_with(&suspended(0, 0), &cfg).unwrap()));
}

#[test]
fn map_sources() {
    let mut h = HashMap::new();
    h.insert("min-samples".to_owned(), "5".to_owned());
    assert_eq!(Limits::from_config(&h).unwrap().min_samples, 5);
    let mut b = BTreeMap::new();
    b.insert("max-usd-per-day".to_owned(), "0".to_owned());
    assert_eq!(Limits::from_config(&b).unwrap().max_usd_per_day, 0.0);
}

#[test]
fn invalid_config_is_an_error_naming_the_key() {
    let bad: &[(&str, &str)] = &[
        ("max-usd-per-day", "five"),
        ("max-usd-per-day", "$5"),
        ("max-usd-per-day", "-1"),
        ("max-usd-per-day", "NaN"),
        ("max-usd-per-day", "inf"),
        ("max-usd-per-day", ""),
        ("max-failure-ratio", "1.5"),
        ("max-failure-ratio", "-0.1"),
        ("max-failure-ratio", "nan"),
        ("max-failure-ratio", "50%"),
        ("min-samples", "0"),
        ("min-samples", "-5"),
        ("min-samples", "2.5"),
        ("min-samples", "4294967296"),
        ("evict-after-failures", "0"),
        ("evict-after-failures", "ten"),
        ("evict-after-secs", "0"),
        ("evict-after-secs", "1d"),
        ("cooldown-secs", "-1"),
        ("cooldown-secs", "30m"),
    ];
    let r = active(100, 10, 1.0);
    for (key, value) in bad {
        let err = evaluate_with(&r, &[(*key, *value)]).unwrap_err();
        assert_eq!(
            err,
            format!("config key `{key}` has an invalid value"),
            "{value}"
        );
    }
}

#[test]
fn cooldown_must_be_shorter_than_eviction() {
    for cfg in [
        [("cooldown-secs", "86400"), ("evict-after-secs", "86400")],
        [("cooldown-secs", "90000"), ("evict-after-secs", "86400")],
        [("cooldown-secs", "1800"), ("evict-after-secs", "60")],
    ] {
        assert_eq!(
            Limits::from_config(&cfg).unwrap_err(),
            "config key `cooldown-secs` must be less than `evict-after-secs`"
        );
    }
    assert!(Limits::from_config(&[("cooldown-secs", "86399")]).is_ok());
}

#[test]
fn huge_durations_do_not_overflow() {
    let cfg = [
        ("evict-after-secs", "18446744073709551615"),
        ("cooldown-secs", "1000"),
    ];
    let mut r = suspended(0, 0);
    r.breaker.since_ms = 0;
    // The eviction limit saturates at u64::MAX ms instead of wrapping round
    // to something small.
    r.now_ms = u64::MAX - 1;
    assert!(is_eligible(&evaluate_with(&r, &cfg).unwrap()));
    r.now_ms = u64::MAX;
    assert!(evict_reason(&evaluate_with(&r, &cfg).unwrap()).is_some());
}

// ---------------------------------------------------------------- helpers

#[test]
fn durations() {
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(59), "59s");
    assert_eq!(duration(1800), "30m");
    assert_eq!(duration(5400), "1h 30m");
    assert_eq!(duration(86_400), "24h");
    assert_eq!(duration(90_061), "25h 1m 1s");
}

#[test]
fn description_is_one_line() {
    assert!(!DefaultSpendPolicy::DESCRIPTION.contains('\n'));
}
