//! agentfed's default spend policy: the circuit breaker of the user guide
//! and the reference implementation, as a WebAssembly component.
//!
//! The host calls it after every spend report and on a timer with a
//! [`SpendRequest`] (the peer's breaker, aggregates of the last hour and the
//! last 24 hours, and the host's clock) and applies the [`SpendDecision`]
//! only if it is a legal transition: ACTIVE → SUSPENDED, SUSPENDED →
//! EVICTED. Nothing ever goes back to ACTIVE without an operator; this
//! policy at most reports `reactivate-eligible`.
//!
//! # The rules
//!
//! **ACTIVE** peer, first match wins:
//!
//! 1. `suspend` when the 24 h spend `last-day.usd` is strictly greater than
//!    `max-usd-per-day` (default $5.00). Negative spend counts as 0; a spend
//!    that is not a finite number (NaN, infinity) counts as over the limit,
//!    so corrupt accounting fails closed. Reason, e.g.
//!    `24h spend $5.20 exceeds limit $5.00`.
//! 2. `suspend` when `last-hour.samples ≥ min-samples` (default 50) and the
//!    failure ratio `last-hour.failures / last-hour.samples` is strictly
//!    greater than `max-failure-ratio` (default 0.5). Failures above the
//!    sample count count as the sample count. Reason, e.g.
//!    `1h failure ratio 0.52 (26 of 50 samples) exceeds 0.50`.
//! 3. Otherwise `none`.
//!
//! Cost wins over the failure ratio when both trip: the reason names the
//! cost.
//!
//! **SUSPENDED** peer, first match wins (time is `now-ms − breaker.since-ms`,
//! 0 if the clock is behind the breaker):
//!
//! 1. `evict` when `breaker.failures-since-suspend ≥ evict-after-failures`
//!    (default 10). Reason, e.g. `10 failures reported while suspended
//!    (limit 10)`.
//! 2. `evict` when the peer has been suspended for at least
//!    `evict-after-secs` (default 86400, 24 h). Reason, e.g.
//!    `suspended for 24h (limit 24h)`.
//! 3. `reactivate-eligible` when it has been suspended for at least
//!    `cooldown-secs` (default 1800, 30 min): the operator (or their health
//!    probe) may now reactivate it.
//! 4. Otherwise `none`.
//!
//! **EVICTED** peer: always `none`.
//!
//! Reasons carry only amounts, counts, ratios and durations: never node ids,
//! task contents or anything else a peer supplied.
//!
//! # Configuration
//!
//! Read from the node config (`[plugins.spend.config]`), every key optional:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max-usd-per-day` | `5.0` | suspend when the 24 h spend in USD exceeds this (finite, ≥ 0) |
//! | `max-failure-ratio` | `0.5` | suspend when the 1 h failure ratio exceeds this (in `[0, 1]`; 1 disables the rule) |
//! | `min-samples` | `50` | samples in the last hour before the failure ratio counts (integer ≥ 1) |
//! | `evict-after-failures` | `10` | failures reported while suspended that evict (integer ≥ 1) |
//! | `evict-after-secs` | `86400` | seconds suspended after which the peer is evicted (integer ≥ 1) |
//! | `cooldown-secs` | `1800` | seconds suspended after which the peer is reactivate-eligible (integer, below `evict-after-secs`) |
//!
//! A value that does not parse or is out of range, or a cooldown that is
//! not shorter than the eviction time (the peer could never become
//! eligible: most likely a unit mistake), makes `evaluate` return `Err`
//! naming the key (never its value). The host treats that as "no
//! transition" and audits it, so an operator sees the mistake instead of a
//! silently different breaker.
//!
//! # Testing against it
//!
//! The decision logic is pure: [`decide`] takes a request and [`Limits`];
//! [`evaluate_with`] adds reading the limits from any [`ConfigSource`] (a
//! `[(&str, &str)]` slice or array, a `BTreeMap` or `HashMap`,
//! [`Defaults`]). Time comes only from `request.now-ms`.
#![deny(missing_docs)]

use agentfed_guest::config;
pub use agentfed_guest::config::{ConfigSource, Defaults, HostConfig};

use agentfed_guest::spend::{BreakerState, SpendDecision, SpendPolicy, SpendRequest};

/// The breaker's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Suspend when the 24 h spend in USD is strictly above this.
    pub max_usd_per_day: f64,
    /// Suspend when the 1 h failure ratio is strictly above this...
    pub max_failure_ratio: f64,
    /// ...and the last hour holds at least this many samples.
    pub min_samples: u32,
    /// Evict a suspended peer once this many failures were reported while
    /// it was suspended.
    pub evict_after_failures: u32,
    /// Evict a suspended peer once it has been suspended this long.
    pub evict_after_secs: u64,
    /// A suspended peer becomes reactivate-eligible after this long.
    pub cooldown_secs: u64,
}

impl Default for Limits {
    /// The user guide's and the reference implementation's defaults.
    fn default() -> Self {
        Limits {
            max_usd_per_day: 5.0,
            max_failure_ratio: 0.5,
            min_samples: 50,
            evict_after_failures: 10,
            evict_after_secs: 86_400,
            cooldown_secs: 1_800,
        }
    }
}

impl Limits {
    /// Reads every limit from `config`, falling back to the defaults for
    /// unset keys. An unparsable, out-of-range or contradictory value is an
    /// error naming the key.
    pub fn from_config<C: ConfigSource + ?Sized>(config: &C) -> Result<Self, String> {
        let d = Limits::default();
        let max_usd_per_day: f64 = config.get_or("max-usd-per-day", d.max_usd_per_day)?;
        if !(max_usd_per_day.is_finite() && max_usd_per_day >= 0.0) {
            return Err(config::invalid("max-usd-per-day"));
        }
        let max_failure_ratio: f64 = config.get_or("max-failure-ratio", d.max_failure_ratio)?;
        if !(max_failure_ratio.is_finite() && (0.0..=1.0).contains(&max_failure_ratio)) {
            return Err(config::invalid("max-failure-ratio"));
        }
        let positive_u32 = |key: &str, default: u32| -> Result<u32, String> {
            match config.get_or(key, default)? {
                0 => Err(config::invalid(key)),
                n => Ok(n),
            }
        };
        let min_samples = positive_u32("min-samples", d.min_samples)?;
        let evict_after_failures = positive_u32("evict-after-failures", d.evict_after_failures)?;
        let evict_after_secs: u64 = config.get_or("evict-after-secs", d.evict_after_secs)?;
        if evict_after_secs == 0 {
            return Err(config::invalid("evict-after-secs"));
        }
        let cooldown_secs: u64 = config.get_or("cooldown-secs", d.cooldown_secs)?;
        if cooldown_secs >= evict_after_secs {
            return Err(
                "config key `cooldown-secs` must be less than `evict-after-secs`".to_owned(),
            );
        }
        Ok(Limits {
            max_usd_per_day,
            max_failure_ratio,
            min_samples,
            evict_after_failures,
            evict_after_secs,
            cooldown_secs,
        })
    }
}

/// Formats a value and the limit it was compared with: two decimals, more
/// when two would make different numbers look equal, scientific notation
/// for absurdly large amounts.
fn pair(value: f64, limit: f64) -> (String, String) {
    if value.abs().max(limit.abs()) >= 1e12 {
        return (format!("{value:.3e}"), format!("{limit:.3e}"));
    }
    for p in 2..=12 {
        let (a, b) = (format!("{value:.p$}"), format!("{limit:.p$}"));
        if (a != b) == (value != limit) {
            return (a, b);
        }
    }
    (value.to_string(), limit.to_string())
}

/// A duration in seconds as `24h`, `30m`, `1h 30m 5s`, `0s`.
fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let parts: Vec<String> = [(h, "h"), (m, "m"), (s, "s")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Decides what the breaker of one peer should do under `limits`. Pure:
/// no host imports, time only from `request.now_ms`.
pub fn decide(request: &SpendRequest, limits: &Limits) -> SpendDecision {
    match request.breaker.state {
        BreakerState::Active => decide_active(request, limits),
        BreakerState::Suspended => decide_suspended(request, limits),
        BreakerState::Evicted => SpendDecision::None,
    }
}

/// Reads the limits from `config`, then [`decide`]s. This is exactly what
/// the component does with the node config.
pub fn evaluate_with<C: ConfigSource + ?Sized>(
    request: &SpendRequest,
    config: &C,
) -> Result<SpendDecision, String> {
    Ok(decide(request, &Limits::from_config(config)?))
}

fn decide_active(request: &SpendRequest, limits: &Limits) -> SpendDecision {
    let usd = request.last_day.usd;
    if !usd.is_finite() {
        return SpendDecision::Suspend(format!(
            "24h spend is not a finite number (limit ${:.2})",
            limits.max_usd_per_day
        ));
    }
    let usd = usd.max(0.0);
    if usd > limits.max_usd_per_day {
        let (spent, limit) = pair(usd, limits.max_usd_per_day);
        return SpendDecision::Suspend(format!("24h spend ${spent} exceeds limit ${limit}"));
    }

    let hour = &request.last_hour;
    if hour.samples >= limits.min_samples {
        let failures = hour.failures.min(hour.samples);
        let ratio = f64::from(failures) / f64::from(hour.samples);
        if ratio > limits.max_failure_ratio {
            let (ratio, limit) = pair(ratio, limits.max_failure_ratio);
            return SpendDecision::Suspend(format!(
                "1h failure ratio {ratio} ({failures} of {} samples) exceeds {limit}",
                hour.samples
            ));
        }
    }
    SpendDecision::None
}

fn decide_suspended(request: &SpendRequest, limits: &Limits) -> SpendDecision {
    let failures = request.breaker.failures_since_suspend;
    if failures >= limits.evict_after_failures {
        return SpendDecision::Evict(format!(
            "{failures} {} reported while suspended (limit {})",
            if failures == 1 { "failure" } else { "failures" },
            limits.evict_after_failures
        ));
    }
    let suspended_ms = request.now_ms.saturating_sub(request.breaker.since_ms);
    if suspended_ms >= limits.evict_after_secs.saturating_mul(1000) {
        return SpendDecision::Evict(format!(
            "suspended for {} (limit {})",
            duration(suspended_ms / 1000),
            duration(limits.evict_after_secs)
        ));
    }
    if suspended_ms >= limits.cooldown_secs.saturating_mul(1000) {
        return SpendDecision::ReactivateEligible;
    }
    SpendDecision::None
}

/// The default spend policy, as exported by the component.
pub struct DefaultSpendPolicy;

impl SpendPolicy for DefaultSpendPolicy {
    const DESCRIPTION: &'static str =
        "suspends on $5/day or >50% failures (50+ samples); evicts after 10 more failures or 24h";

    fn evaluate(request: SpendRequest) -> Result<SpendDecision, String> {
        // The node config is fixed for an instance's lifetime (a reload
        // makes new instances), so it is read and validated once; an
        // invalid value keeps failing closed on every call.
        static CONFIG: std::sync::OnceLock<Result<Limits, String>> = std::sync::OnceLock::new();
        let config = CONFIG.get_or_init(|| Limits::from_config(&HostConfig));
        Ok(decide(&request, config.as_ref().map_err(Clone::clone)?))
    }
}

// The export only exists inside the component: its symbol names are not
// valid for a native shared library, and off wasm there is no host anyway.
#[cfg(target_arch = "wasm32")]
agentfed_guest::export_spend_policy!(DefaultSpendPolicy);

#[cfg(test)]
mod tests;
