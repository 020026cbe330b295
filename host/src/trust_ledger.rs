//! What counts as *earned* trust, and when it may be spent.
//!
//! The trust plugin scores a peer and asks for promotions; this module holds
//! the host's rules that no plugin can bend, so trust cannot be farmed:
//!
//! * **Only work the peer did for us is earned.** A success counts toward
//!   promotion only when this node started the interaction and the peer
//!   fulfilled it (an acknowledged delivery, an answered query, a spend
//!   report of completed work). What the peer sends us, and heartbeats, are
//!   *observed* (they keep it seen) but never earn anything.
//! * **Bursts count as little.** At most [`EarningRules::counted_per_hour`]
//!   successes count per clock hour ([`EarnedLedger::credit`]); the rest is
//!   remembered as `over_cap`. Failures and threats always count in full.
//! * **Earned trust needs time.** A promotion to ATTESTED or TRUSTED also
//!   needs a minimum time at the current level and counted interactions on a
//!   minimum number of distinct UTC days since the peer reached it
//!   ([`promotion_gates`]).
//! * **Operator decisions hold.** A level the operator set is pinned: no
//!   plugin promotes above it until the operator unpins it. Decay never takes
//!   a peer below the operator's level ([`decay_target`]).
//! * **Decay.** A peer that earned nothing for
//!   [`EarningRules::decay_after_ms`] loses one earned level, and one more
//!   for every further such period.
//!
//! The `agentfed:plugin@0.1.0` peer snapshot has no fields for distinct days
//! or the operator's level (that is a pending contract change, see
//! `wit/PENDING_CHANGES.md`), so the host enforces these rules itself, for
//! every trust plugin, and feeds the plugin the counted figures through the
//! existing `interactions` / `successes` fields. Pure logic, no I/O.

use serde::{Deserialize, Serialize};

pub use crate::model::DAY_MS;
use crate::model::{HOUR_MS, TrustLevel};

/// How many UTC days of counted interactions a ledger keeps. Longer than any
/// configurable day window ([`MAX_GATE_DAYS`]), so a gate never reads a day
/// the ledger has forgotten.
pub const LEDGER_DAYS: usize = 400;

/// The largest day count a gate may ask for.
pub const MAX_GATE_DAYS: u32 = 365;

/// The host's earning rules (`[trust]` in `agentfed.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarningRules {
    /// Successes counted toward promotion per clock hour, at most.
    pub counted_per_hour: u32,
    /// Time a peer must spend at VERIFIED before ATTESTED.
    pub attested_after_ms: u64,
    /// Distinct UTC days with counted interactions, since reaching
    /// VERIFIED, needed for ATTESTED.
    pub attested_active_days: u32,
    /// Time a peer must spend at ATTESTED before TRUSTED.
    pub trusted_after_ms: u64,
    /// Distinct UTC days with counted interactions, since reaching
    /// ATTESTED, needed for TRUSTED.
    pub trusted_active_days: u32,
    /// A peer that earned nothing for this long loses one earned level;
    /// `0` turns decay off.
    pub decay_after_ms: u64,
}

impl Default for EarningRules {
    fn default() -> Self {
        EarningRules {
            counted_per_hour: 60,
            attested_after_ms: 24 * HOUR_MS,
            attested_active_days: 2,
            trusted_after_ms: 7 * DAY_MS,
            trusted_active_days: 5,
            decay_after_ms: 30 * DAY_MS,
        }
    }
}

/// Counted interactions on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    /// Successes counted that day.
    pub counted: u32,
}

/// Per-peer record of what was earned when: the hourly cap's state and a
/// bounded per-day history. Stored with the peer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EarnedLedger {
    /// Start of the clock hour `this_hour` belongs to.
    pub hour_start_ms: u64,
    /// Successes counted in that hour.
    pub this_hour: u32,
    /// Counted successes per UTC day, oldest first, at most
    /// [`LEDGER_DAYS`] entries, days without any left out.
    pub days: Vec<DayCount>,
    /// Successes that arrived over the hourly cap and were not counted.
    pub over_cap: u64,
    /// When a success was last counted (0: never).
    pub last_counted_ms: u64,
}

impl EarnedLedger {
    /// Counts up to `count` successes at `now_ms`, as far as the hourly cap
    /// allows, and returns how many counted.
    pub fn credit(&mut self, now_ms: u64, count: u64, cap_per_hour: u32) -> u64 {
        let hour = now_ms - now_ms % HOUR_MS;
        if hour != self.hour_start_ms {
            self.hour_start_ms = hour;
            self.this_hour = 0;
        }
        let room = u64::from(cap_per_hour.saturating_sub(self.this_hour));
        let counted = count.min(room);
        self.over_cap = self.over_cap.saturating_add(count - counted);
        if counted == 0 {
            return 0;
        }
        // `counted <= room <= u32::MAX`.
        let counted32 = counted as u32;
        self.this_hour += counted32;
        self.last_counted_ms = now_ms;
        let day = now_ms / DAY_MS;
        match self.days.last_mut() {
            Some(last) if last.day == day => last.counted = last.counted.saturating_add(counted32),
            _ => self.days.push(DayCount {
                day,
                counted: counted32,
            }),
        }
        if self.days.len() > LEDGER_DAYS {
            let excess = self.days.len() - LEDGER_DAYS;
            self.days.drain(..excess);
        }
        counted
    }

    /// Distinct UTC days with counted successes from the day of `since_ms`
    /// on (that day included).
    pub fn active_days_since(&self, since_ms: u64) -> u32 {
        let first = since_ms / DAY_MS;
        self.days.iter().filter(|d| d.day >= first).count() as u32
    }

    /// Whether `now_ms`'s UTC day already has a counted success.
    fn active_on(&self, now_ms: u64) -> bool {
        self.days.last().is_some_and(|d| d.day == now_ms / DAY_MS)
    }
}

/// A level an operator set, and whether it holds the peer there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorLevel {
    /// The level the operator set (also the floor decay stops at).
    pub level: TrustLevel,
    /// When (ms since the Unix epoch). Evidence recorded before this
    /// instant no longer counts for or against the peer.
    pub at_ms: u64,
    /// Pinned: no plugin promotes the peer above `level` until an operator
    /// unpins it. Demotions on new evidence still apply.
    pub pinned: bool,
}

/// One condition of a promotion, met or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// What is required, e.g. `7 days at ATTESTED`.
    pub rule: String,
    /// What the peer has, e.g. `3 days 4 h`.
    pub have: String,
    /// Whether it is met now.
    pub met: bool,
    /// The earliest time it could be met, if it is not met and that time
    /// can be known (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_ms: Option<u64>,
}

/// The host's verdict on a promotion from `level` to the next level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionGates {
    /// The level a promotion would reach.
    pub to: TrustLevel,
    /// Every host condition, in the order they are checked.
    pub requirements: Vec<Requirement>,
}

impl PromotionGates {
    /// Whether every condition is met.
    pub fn open(&self) -> bool {
        self.requirements.iter().all(|r| r.met)
    }

    /// The first unmet condition, as one line for logs and outcomes.
    pub fn first_unmet(&self) -> Option<String> {
        self.requirements
            .iter()
            .find(|r| !r.met)
            .map(|r| format!("{} (has {})", r.rule, r.have))
    }

    /// The earliest time all conditions could be met (`None` when one of
    /// them can never be met by waiting, e.g. a pin).
    pub fn earliest_ms(&self, now_ms: u64) -> Option<u64> {
        self.requirements.iter().try_fold(now_ms, |acc, r| {
            if r.met {
                Some(acc)
            } else {
                r.earliest_ms.map(|t| acc.max(t))
            }
        })
    }
}

/// The host's conditions for promoting a peer at `level` one level up, or
/// `None` when `level` has no automatic next level (UNTRUSTED needs a
/// handshake; TRUSTED and above need an operator).
pub fn promotion_gates(
    rules: &EarningRules,
    level: TrustLevel,
    level_since_ms: u64,
    ledger: &EarnedLedger,
    operator: Option<&OperatorLevel>,
    now_ms: u64,
) -> Option<PromotionGates> {
    let (to, min_ms, days) = match level {
        TrustLevel::Verified => (
            TrustLevel::Attested,
            rules.attested_after_ms,
            rules.attested_active_days,
        ),
        TrustLevel::Attested => (
            TrustLevel::Trusted,
            rules.trusted_after_ms,
            rules.trusted_active_days,
        ),
        _ => return None,
    };
    let mut requirements = Vec::with_capacity(3);
    if let Some(op) = operator.filter(|op| op.pinned && op.level <= level) {
        requirements.push(Requirement {
            rule: format!(
                "not pinned (the operator holds it at {}; `agentfed trust unpin`)",
                op.level
            ),
            have: "pinned".into(),
            met: false,
            earliest_ms: None,
        });
    }
    let at_level = now_ms.saturating_sub(level_since_ms);
    requirements.push(Requirement {
        rule: format!("{} at {level}", duration_text(min_ms)),
        have: duration_text(at_level),
        met: at_level >= min_ms,
        earliest_ms: Some(level_since_ms.saturating_add(min_ms)),
    });
    let active = ledger.active_days_since(level_since_ms);
    let missing = days.saturating_sub(active);
    requirements.push(Requirement {
        rule: format!("counted interactions on {days} distinct days at {level}"),
        have: format!("{active}"),
        met: missing == 0,
        earliest_ms: Some(earliest_with_days(ledger, missing, now_ms)),
    });
    Some(PromotionGates { to, requirements })
}

/// The earliest time `missing` more active days can be complete, with one
/// counted interaction a day from now on.
fn earliest_with_days(ledger: &EarnedLedger, missing: u32, now_ms: u64) -> u64 {
    if missing == 0 {
        return now_ms;
    }
    // Today still counts if nothing was counted yet today.
    let first_day = if ledger.active_on(now_ms) {
        now_ms / DAY_MS + 1
    } else {
        now_ms / DAY_MS
    };
    let last_day = first_day + u64::from(missing) - 1;
    (last_day * DAY_MS).max(now_ms)
}

/// The level a silent peer decays to now, if it decays: one level down,
/// when nothing was earned for [`EarningRules::decay_after_ms`] since the
/// later of its last counted success and its last level change; never below
/// VERIFIED nor below the operator's level, and never from a level the
/// operator set.
pub fn decay_target(
    rules: &EarningRules,
    level: TrustLevel,
    level_since_ms: u64,
    ledger: &EarnedLedger,
    operator: Option<&OperatorLevel>,
    now_ms: u64,
) -> Option<TrustLevel> {
    if rules.decay_after_ms == 0 {
        return None;
    }
    let floor = operator
        .map(|op| op.level)
        .unwrap_or(TrustLevel::Verified)
        .max(TrustLevel::Verified);
    if level <= floor {
        return None;
    }
    let quiet_since = ledger.last_counted_ms.max(level_since_ms);
    if now_ms.saturating_sub(quiet_since) < rules.decay_after_ms {
        return None;
    }
    level.next_down().map(|down| down.max(floor))
}

/// `3 days 4 h`, `5 h 12 min`, `40 s`: a duration for people.
pub fn duration_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} day{}", if d == 1 { "" } else { "s" }),
        (d, h, _) => format!("{d} day{} {h} h", if d == 1 { "" } else { "s" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS; // a UTC midnight

    fn rules() -> EarningRules {
        EarningRules::default()
    }

    fn ledger_with_days(days: &[u64]) -> EarnedLedger {
        let mut l = EarnedLedger::default();
        for &d in days {
            l.credit(T0 + d * DAY_MS + HOUR_MS, 1, 60);
        }
        l
    }

    #[test]
    fn the_hourly_cap_counts_at_most_the_rate_and_resets_on_the_hour() {
        let mut l = EarnedLedger::default();
        assert_eq!(l.credit(T0, 59, 60), 59);
        assert_eq!(l.credit(T0 + 1, 1, 60), 1, "the 60th still counts");
        assert_eq!(l.credit(T0 + 2, 1, 60), 0, "the 61st does not");
        assert_eq!(l.credit(T0 + HOUR_MS - 1, 700, 60), 0);
        assert_eq!(l.over_cap, 701);
        assert_eq!(l.credit(T0 + HOUR_MS, 700, 60), 60, "a new hour");
        assert_eq!(
            l.days,
            vec![DayCount {
                day: T0 / DAY_MS,
                counted: 120
            }]
        );
        assert_eq!(l.last_counted_ms, T0 + HOUR_MS);
        // A cap of zero counts nothing and records nothing as counted.
        let mut z = EarnedLedger::default();
        assert_eq!(z.credit(T0, 5, 0), 0);
        assert!(z.days.is_empty());
        assert_eq!(z.last_counted_ms, 0);
    }

    #[test]
    fn active_days_are_distinct_utc_days_from_the_level_day_on() {
        let l = ledger_with_days(&[0, 0, 1, 3]);
        assert_eq!(l.days.len(), 3);
        assert_eq!(l.active_days_since(T0), 3);
        assert_eq!(l.active_days_since(T0 + DAY_MS - 1), 3, "day 0 included");
        assert_eq!(l.active_days_since(T0 + DAY_MS), 2);
        assert_eq!(l.active_days_since(T0 + 4 * DAY_MS), 0);
        // Crossing midnight makes a new day.
        let mut m = EarnedLedger::default();
        m.credit(T0 + DAY_MS - 1, 1, 60);
        m.credit(T0 + DAY_MS, 1, 60);
        assert_eq!(m.active_days_since(T0), 2);
    }

    #[test]
    fn the_ledger_forgets_only_beyond_its_window() {
        let mut l = EarnedLedger::default();
        for d in 0..(LEDGER_DAYS as u64 + 10) {
            l.credit(T0 + d * DAY_MS, 1, 60);
        }
        assert_eq!(l.days.len(), LEDGER_DAYS);
        assert_eq!(l.days[0].day, T0 / DAY_MS + 10);
    }

    fn gates(level: TrustLevel, since: u64, l: &EarnedLedger, now: u64) -> PromotionGates {
        promotion_gates(&rules(), level, since, l, None, now).expect("a next level")
    }

    #[test]
    fn attested_needs_24_hours_at_verified_and_two_active_days() {
        let l = ledger_with_days(&[0, 1]);
        let since = T0;
        assert!(!gates(TrustLevel::Verified, since, &l, T0 + 24 * HOUR_MS - 1).open());
        let g = gates(TrustLevel::Verified, since, &l, T0 + 24 * HOUR_MS);
        assert!(g.open(), "{g:?}");
        assert_eq!(g.to, TrustLevel::Attested);
        // One active day is one short, however long the wait.
        let one = ledger_with_days(&[0]);
        let g = gates(TrustLevel::Verified, since, &one, T0 + 3 * DAY_MS);
        assert!(!g.open());
        assert!(
            g.first_unmet().unwrap().contains("2 distinct days"),
            "{g:?}"
        );
    }

    #[test]
    fn trusted_needs_seven_days_at_attested_and_five_active_days() {
        let since = T0 + 9 * HOUR_MS;
        let l = ledger_with_days(&[0, 1, 2, 3, 4]);
        let week = since + 7 * DAY_MS;
        let g = gates(TrustLevel::Attested, since, &l, week - 1);
        assert!(!g.open());
        assert_eq!(g.earliest_ms(week - 1), Some(week));
        assert!(gates(TrustLevel::Attested, since, &l, week).open());
        // Four active days: not yet, however long the wait.
        let four = ledger_with_days(&[0, 1, 2, 3]);
        assert!(!gates(TrustLevel::Attested, since, &four, week + 30 * DAY_MS).open());
        // Days before the level was reached do not count.
        let early = ledger_with_days(&[0, 1, 2, 3, 4]);
        assert!(!gates(TrustLevel::Attested, T0 + DAY_MS, &early, week + DAY_MS).open());
    }

    #[test]
    fn the_earliest_time_counts_today_only_if_it_is_still_open() {
        let since = T0;
        let now = T0 + 2 * DAY_MS + HOUR_MS; // day 2
        // Active on day 0 only: days 2, 3, 4, 5 missing → day 5 at midnight.
        let l = ledger_with_days(&[0]);
        let g = gates(TrustLevel::Attested, since, &l, now);
        assert_eq!(
            g.earliest_ms(now),
            Some(T0 + 7 * DAY_MS),
            "the 7 days rule is later"
        );
        let days = &g.requirements[1];
        assert_eq!(days.earliest_ms, Some(T0 + 5 * DAY_MS));
        // Already active today: tomorrow is the first day that can add one.
        let l = ledger_with_days(&[0, 2]);
        let g = gates(TrustLevel::Attested, since, &l, now);
        assert_eq!(g.requirements[1].earliest_ms, Some(T0 + 5 * DAY_MS));
    }

    #[test]
    fn a_pin_closes_the_gate_until_unpinned_and_never_opens_by_waiting() {
        let l = ledger_with_days(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let now = T0 + 20 * DAY_MS;
        let pin = OperatorLevel {
            level: TrustLevel::Attested,
            at_ms: T0,
            pinned: true,
        };
        let g = promotion_gates(&rules(), TrustLevel::Attested, T0, &l, Some(&pin), now).unwrap();
        assert!(!g.open());
        assert_eq!(g.earliest_ms(now), None);
        assert!(g.first_unmet().unwrap().contains("trust unpin"));
        let unpinned = OperatorLevel {
            pinned: false,
            ..pin
        };
        let g =
            promotion_gates(&rules(), TrustLevel::Attested, T0, &l, Some(&unpinned), now).unwrap();
        assert!(g.open(), "{g:?}");
        // A pin at a lower level (the plugin demoted meanwhile) still holds
        // the peer at or below it.
        let low = OperatorLevel {
            level: TrustLevel::Verified,
            ..pin
        };
        let g = promotion_gates(&rules(), TrustLevel::Verified, T0, &l, Some(&low), now).unwrap();
        assert!(!g.open());
    }

    #[test]
    fn no_automatic_next_level_above_attested_or_from_untrusted() {
        let l = EarnedLedger::default();
        for level in [
            TrustLevel::Untrusted,
            TrustLevel::Trusted,
            TrustLevel::Privileged,
        ] {
            assert!(promotion_gates(&rules(), level, T0, &l, None, T0).is_none());
        }
    }

    #[test]
    fn decay_takes_one_level_per_silent_period_and_stops_at_the_floor() {
        let r = rules();
        let mut l = EarnedLedger::default();
        l.credit(T0, 1, 60);
        let period = r.decay_after_ms;
        let d = |level, since, op: Option<&OperatorLevel>, now| {
            decay_target(&r, level, since, &l, op, now)
        };
        assert_eq!(d(TrustLevel::Trusted, T0, None, T0 + period - 1), None);
        assert_eq!(
            d(TrustLevel::Trusted, T0, None, T0 + period),
            Some(TrustLevel::Attested)
        );
        // The level change restarts the period.
        assert_eq!(
            d(TrustLevel::Attested, T0 + period, None, T0 + 2 * period - 1),
            None
        );
        assert_eq!(
            d(TrustLevel::Attested, T0 + period, None, T0 + 2 * period),
            Some(TrustLevel::Verified)
        );
        assert_eq!(d(TrustLevel::Verified, T0, None, T0 + 9 * period), None);
        // The operator's level is the floor, pinned or not.
        let op = OperatorLevel {
            level: TrustLevel::Attested,
            at_ms: T0,
            pinned: false,
        };
        assert_eq!(
            d(TrustLevel::Trusted, T0, Some(&op), T0 + period),
            Some(TrustLevel::Attested)
        );
        assert_eq!(
            d(TrustLevel::Attested, T0, Some(&op), T0 + 9 * period),
            None
        );
        let privileged = OperatorLevel {
            level: TrustLevel::Privileged,
            ..op
        };
        assert_eq!(
            d(
                TrustLevel::Privileged,
                T0,
                Some(&privileged),
                T0 + 9 * period
            ),
            None
        );
        // Off.
        let off = EarningRules {
            decay_after_ms: 0,
            ..r
        };
        assert_eq!(
            decay_target(&off, TrustLevel::Trusted, T0, &l, None, T0 + 9 * period),
            None
        );
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(duration_text(40_000), "40 s");
        assert_eq!(duration_text(5 * 60_000), "5 min");
        assert_eq!(duration_text(2 * HOUR_MS), "2 h");
        assert_eq!(duration_text(5 * HOUR_MS + 12 * 60_000), "5 h 12 min");
        assert_eq!(duration_text(DAY_MS), "1 day");
        assert_eq!(duration_text(3 * DAY_MS + 4 * HOUR_MS), "3 days 4 h");
    }
}
