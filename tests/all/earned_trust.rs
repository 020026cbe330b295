//! Trust that cannot be farmed: the host's earning rules over real
//! coordinators (real keys, a real redb store, the real audit chain, the
//! embedded default plugins) on a manual clock, so weeks pass in
//! milliseconds.
//!
//! Fulfilled requests are noted through `note_fulfilled`, the call the
//! delivery path makes when a peer acknowledges one of our envelopes;
//! inbound envelopes go through `receive_many`, the wire's own entry point.
//! End-to-end versions over two daemons live in `federation.rs` and
//! `daemon.rs`.

use agentfed::clock::Clock;
use agentfed::coordinator::{Interaction, TrustOutcome};
use agentfed::model::{InteractionMetrics, TrustLevel};
use serde_json::json;

use crate::coordinator::{Node, node, spend, with_peer};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn level(n: &Node, peer: &str) -> TrustLevel {
    n.coordinator.peer(peer).unwrap().trust_level
}

fn metrics(n: &Node, peer: &str) -> InteractionMetrics {
    n.coordinator.peer(peer).unwrap().metrics
}

/// Moves `n`'s clock on by `ms` and runs its timer tick (trust, decay,
/// breaker), as the daemon does.
fn pass(n: &Node, ms: u64) {
    n.clock.advance(ms);
    n.coordinator.tick().unwrap();
}

/// `hours` hours in which `peer` fulfils `per_hour` requests of `n`'s
/// each, the timer ticking every hour.
fn work(n: &Node, peer: &str, hours: u64, per_hour: u64) {
    for _ in 0..hours {
        for _ in 0..per_hour {
            n.coordinator.note_fulfilled(peer);
        }
        n.coordinator.apply_pending_successes();
        pass(n, HOUR);
    }
}

/// `days` working days: `hours` hours of `per_hour` fulfilled requests,
/// then the rest of the day passes (ticking every hour).
fn working_days(n: &Node, peer: &str, days: u64, hours: u64, per_hour: u64) {
    for _ in 0..days {
        work(n, peer, hours, per_hour);
        for _ in hours..24 {
            pass(n, HOUR);
        }
    }
}

/// alpha and beta know each other at VERIFIED, the level a bare handshake
/// gives.
fn verified_pair() -> (Node, Node) {
    let alpha = node("alpha");
    let beta = node("beta");
    let manifest = |n: &Node| String::from_utf8(n.coordinator.manifest().unwrap().to_json());
    alpha
        .coordinator
        .add_peer(&manifest(&beta).unwrap())
        .unwrap();
    beta.coordinator
        .add_peer(&manifest(&alpha).unwrap())
        .unwrap();
    (alpha, beta)
}

/// An envelope of `message_type` from beta to alpha, signed with beta's key.
fn from_beta(beta: &Node, message_type: &str) -> Vec<u8> {
    let id = agentfed::envelope::random_id();
    crate::coordinator::beta_envelope(beta, id, message_type, None, json!({}))
}

#[test]
fn a_verified_peer_that_sends_ten_thousand_pings_stays_verified() {
    use agentfed::coordinator::AckStatus;
    let (alpha, beta) = verified_pair();
    // 1,000 pings a day for ten days, in bursts, both clocks moving.
    for _day in 0..10 {
        for _burst in 0..10 {
            let frames: Vec<Vec<u8>> = (0..100).map(|_| from_beta(&beta, "ping")).collect();
            for answer in alpha.coordinator.receive_many("beta", &frames) {
                assert_eq!(answer.unwrap().unwrap().status, AckStatus::Replied);
            }
            for n in [&alpha, &beta] {
                pass(n, 2 * HOUR);
            }
        }
        for n in [&alpha, &beta] {
            pass(n, 4 * HOUR);
        }
    }
    let m = metrics(&alpha, "beta");
    assert_eq!(m.observed, 10_000, "every ping was seen");
    assert_eq!(
        (m.interactions, m.successes),
        (0, 0),
        "none earned anything"
    );
    assert_eq!(level(&alpha, "beta"), TrustLevel::Verified);
    let next = alpha.coordinator.trust_next_step("beta").unwrap();
    assert_eq!(next.to, Some(TrustLevel::Attested));
    let plugin = next.requirements.last().unwrap();
    assert!(!plugin.met, "{next:?}");
    assert!(plugin.have.contains("no interactions"), "{}", plugin.have);
    // It could still earn its way: work fulfilled on two days would do.
    assert!(next.earliest_ms.is_some(), "{next:?}");
}

#[test]
fn heartbeats_for_a_month_earn_nothing_until_the_peer_fulfils_work() {
    let n = with_peer("alpha", "beta");
    // A month of answered heartbeats, one every 30 s.
    for _hour in 0..30 * 24 {
        for _ in 0..120 {
            n.coordinator.note_observed("beta");
        }
        n.coordinator.apply_pending_successes();
        pass(&n, HOUR);
    }
    let m = metrics(&n, "beta");
    assert_eq!(m.observed, 30 * 24 * 120);
    assert_eq!(m.interactions, 0);
    assert_eq!(level(&n, "beta"), TrustLevel::Verified);
    // Work this node asks for and beta fulfils, on two days: ATTESTED.
    working_days(&n, "beta", 1, 2, 30);
    assert_eq!(level(&n, "beta"), TrustLevel::Verified, "one active day");
    work(&n, "beta", 1, 30);
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);
}

#[test]
fn a_burst_earns_no_more_than_the_hourly_cap() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "attested", "known colleague", false)
        .unwrap();
    // The 700-message burst: a minute's work, an hour's worth of credit.
    for _ in 0..700 {
        n.coordinator.note_fulfilled("beta");
    }
    n.coordinator.apply_pending_successes();
    let m = metrics(&n, "beta");
    assert_eq!((m.interactions, m.successes), (60, 60));
    assert_eq!(m.earned.over_cap, 640);
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);
    // The same burst every day for a week earns 60 a day: 420 < 500 after
    // seven days, so still ATTESTED on the eighth, while a steady working
    // pattern (below) earns TRUSTED.
    for _day in 1..8 {
        pass(&n, DAY);
        for _ in 0..700 {
            n.coordinator.note_fulfilled("beta");
        }
        n.coordinator.apply_pending_successes();
    }
    pass(&n, DAY);
    assert_eq!(metrics(&n, "beta").successes, 8 * 60);
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);

    let steady = with_peer("alpha", "beta");
    steady
        .coordinator
        .set_trust("beta", "attested", "known colleague", false)
        .unwrap();
    working_days(&steady, "beta", 8, 2, 40);
    assert_eq!(level(&steady, "beta"), TrustLevel::Trusted);
}

#[test]
fn a_level_the_operator_set_holds_against_a_burst_that_would_promote() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "attested", "pilot project", true)
        .unwrap();
    // Ten days of steady work: enough for TRUSTED, but the pin holds.
    working_days(&n, "beta", 10, 8, 60);
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);
    match n.coordinator.evaluate_trust("beta").unwrap() {
        TrustOutcome::Held {
            to, waiting_for, ..
        } => {
            assert_eq!(to, TrustLevel::Trusted);
            assert!(waiting_for.contains("pinned"), "{waiting_for}");
        }
        other => panic!("expected the pin to hold, got {other:?}"),
    }
    let next = n.coordinator.trust_next_step("beta").unwrap();
    assert_eq!(next.earliest_ms, None, "waiting cannot lift a pin");
    assert!(
        next.summary.contains("cannot happen by waiting"),
        "{}",
        next.summary
    );
    let peer = n.coordinator.peer("beta").unwrap();
    let pin = peer.operator.unwrap();
    assert!(pin.pinned && pin.level == TrustLevel::Attested);

    // Unpinned, it has earned TRUSTED: the next evaluation grants it.
    let err = n.coordinator.unpin_trust("beta", "").unwrap_err();
    assert_eq!(err.code(), "INVALID_INPUT");
    n.coordinator
        .unpin_trust("beta", "pilot went well")
        .unwrap();
    assert_eq!(
        n.coordinator
            .unpin_trust("beta", "again")
            .unwrap_err()
            .code(),
        "ILLEGAL_TRANSITION"
    );
    match n.coordinator.evaluate_trust("beta").unwrap() {
        TrustOutcome::Changed(change) => assert_eq!(change.to, TrustLevel::Trusted),
        other => panic!("expected TRUSTED once unpinned, got {other:?}"),
    }

    // Held down: an operator lowers a farmed peer; more work the next
    // days does not bring it back above the operator's level.
    n.coordinator
        .set_trust("beta", "verified", "under review", true)
        .unwrap();
    let m = metrics(&n, "beta");
    assert_eq!(
        (m.interactions, m.successes),
        (0, 0),
        "a new evidence period"
    );
    assert!(m.archived.successes >= 4800);
    working_days(&n, "beta", 3, 8, 60);
    assert_eq!(level(&n, "beta"), TrustLevel::Verified);
    let audit = n.coordinator.audit().query(&Default::default()).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.summary.contains("trust pin on beta at ATTESTED released"))
    );
}

#[test]
fn evidence_older_than_an_operators_decision_does_not_undo_it() {
    let n = with_peer("alpha", "beta");
    n.coordinator
        .set_trust("beta", "attested", "bootstrap", true)
        .unwrap();
    for _ in 0..2 {
        n.coordinator
            .record_interaction("beta", Interaction::Threat)
            .unwrap();
    }
    assert_eq!(level(&n, "beta"), TrustLevel::Untrusted);
    // The operator re-admits it within the same hour: the two old threats
    // no longer count, so evaluations and a first new threat leave it.
    n.clock.advance(60_000);
    n.coordinator
        .set_trust("beta", "attested", "false positive, checked", true)
        .unwrap();
    let m = metrics(&n, "beta");
    assert_eq!((m.threats, m.archived.threats), (0, 2));
    assert!(m.recent_threats_ms.is_empty());
    n.coordinator.evaluate_trust("beta").unwrap();
    n.coordinator.tick().unwrap();
    n.coordinator
        .record_interaction("beta", Interaction::Threat)
        .unwrap();
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);
    // New evidence does count: a second new threat within the hour.
    n.coordinator
        .record_interaction("beta", Interaction::Threat)
        .unwrap();
    assert_eq!(level(&n, "beta"), TrustLevel::Untrusted);
}

#[test]
fn decay_takes_one_level_a_month_and_stops_at_the_operators_level() {
    // Earned from VERIFIED: decays back to VERIFIED, and no further.
    let n = with_peer("alpha", "beta");
    working_days(&n, "beta", 2, 2, 30);
    assert_eq!(level(&n, "beta"), TrustLevel::Attested);
    let attested_at = n.coordinator.peer("beta").unwrap().level_since_ms;
    let last_counted = metrics(&n, "beta").earned.last_counted_ms;
    let quiet_since = attested_at.max(last_counted);
    while n.clock.now_ms() + DAY < quiet_since + 30 * DAY {
        pass(&n, DAY);
    }
    assert_eq!(level(&n, "beta"), TrustLevel::Attested, "not yet 30 days");
    pass(&n, DAY);
    assert_eq!(level(&n, "beta"), TrustLevel::Verified, "30 days silent");
    for _ in 0..90 {
        pass(&n, DAY);
    }
    assert_eq!(
        level(&n, "beta"),
        TrustLevel::Verified,
        "never below VERIFIED"
    );
    let audit = n.coordinator.audit().query(&Default::default()).unwrap();
    let decays: Vec<_> = audit
        .iter()
        .filter(|r| r.summary.contains("decay: nothing earned for"))
        .collect();
    assert_eq!(decays.len(), 1, "{decays:?}");
    assert_eq!(decays[0].actor, "system");

    // Set by the operator (not pinned) and earned above it: decays to the
    // operator's level and stops there.
    let m = with_peer("alpha", "beta");
    m.coordinator
        .set_trust("beta", "attested", "colleague", false)
        .unwrap();
    working_days(&m, "beta", 8, 2, 40);
    assert_eq!(level(&m, "beta"), TrustLevel::Trusted);
    for _ in 0..31 {
        pass(&m, DAY);
    }
    assert_eq!(level(&m, "beta"), TrustLevel::Attested);
    for _ in 0..90 {
        pass(&m, DAY);
    }
    assert_eq!(
        level(&m, "beta"),
        TrustLevel::Attested,
        "the operator's floor"
    );
}

#[test]
fn spend_before_an_operators_reactivation_does_not_suspend_again() {
    use agentfed::coordinator::BreakerOutcome;
    use agentfed::model::BreakerState;
    let n = with_peer("alpha", "beta");
    let out = n
        .coordinator
        .report_spend(spend("beta", 5.70, true))
        .unwrap();
    assert!(
        matches!(out.breaker, BreakerOutcome::Changed(ref c) if c.to == BreakerState::Suspended),
        "{out:?}"
    );
    n.clock.advance(31 * 60_000);
    n.coordinator
        .reactivate("beta", "limit raised with finance")
        .unwrap();
    let reactivated_at = n.clock.now_ms();
    // The same 24 h window, several ticks later: still ACTIVE.
    for _ in 0..5 {
        pass(&n, 30_000);
        assert_eq!(
            n.coordinator.peer("beta").unwrap().breaker.state,
            BreakerState::Active
        );
    }
    let status = n.coordinator.breaker_status(Some("beta")).unwrap();
    assert_eq!(status[0].breaker.counts_from_ms, reactivated_at);
    assert_eq!(status[0].usd_last_day, 0.0, "old spend no longer counts");
    // New spend counts, and crossing the limit again suspends again.
    n.coordinator
        .report_spend(spend("beta", 4.0, true))
        .unwrap();
    assert_eq!(
        n.coordinator.peer("beta").unwrap().breaker.state,
        BreakerState::Active
    );
    let out = n
        .coordinator
        .report_spend(spend("beta", 1.5, true))
        .unwrap();
    assert!(
        matches!(out.breaker, BreakerOutcome::Changed(ref c) if c.to == BreakerState::Suspended),
        "{out:?}"
    );
}
