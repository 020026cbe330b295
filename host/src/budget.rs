//! Per-envelope budgets: hop limit, token and USD ceilings, spend so far.
//!
//! Pure logic, no I/O. A [`Budget`] can only exist in a valid state: every
//! constructor validates, and [`Budget::try_consume`] / [`Budget::next_hop`]
//! either succeed completely or change nothing. Errors are the constant
//! codes `HOP_LIMIT_EXCEEDED`, `BUDGET_EXCEEDED` and `INVALID_BUDGET`; they
//! never echo the remaining budget or the offending value.
//!
//! Check-and-decrement is atomic for the owner of the `&mut Budget`; a
//! budget shared between threads must sit behind a lock.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Hop limit when none is given.
pub const DEFAULT_MAX_HOPS: u32 = 8;
/// Highest allowed hop limit.
pub const MAX_HOPS_CEILING: u32 = 64;
/// Highest allowed token budget (10⁹).
pub const MAX_TOKENS_CEILING: u64 = 1_000_000_000;
/// Highest allowed USD budget (10⁶).
pub const MAX_USD_CEILING: f64 = 1_000_000.0;
/// Float slack when comparing USD sums (one nano-dollar), so that e.g.
/// `0.1 + 0.2` fits a budget of `0.3`.
pub const USD_EPSILON: f64 = 1e-9;

/// A budget violation, as a constant code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum BudgetError {
    /// No hops left (or `max_hops == 0`: no remote delegation).
    #[error("HOP_LIMIT_EXCEEDED")]
    HopLimitExceeded,
    /// Tokens or USD would exceed the budget.
    #[error("BUDGET_EXCEEDED")]
    BudgetExceeded,
    /// Malformed, non-finite, negative, non-integer or above-ceiling values.
    #[error("INVALID_BUDGET")]
    InvalidBudget,
}

impl BudgetError {
    /// The constant error code.
    pub const fn code(self) -> &'static str {
        match self {
            BudgetError::HopLimitExceeded => "HOP_LIMIT_EXCEEDED",
            BudgetError::BudgetExceeded => "BUDGET_EXCEEDED",
            BudgetError::InvalidBudget => "INVALID_BUDGET",
        }
    }
}

/// An envelope's budget. Invariants: `max_hops <= 64`, `hop_count <=
/// max_hops`, `spent_tokens <= max_tokens <= 10⁹`, `0 <= spent_usd <=
/// max_usd <= 10⁶`, all USD values finite.
///
/// JSON form: `{"max_hops", "max_tokens", "max_usd", "hop_count",
/// "spent_tokens", "spent_usd"}`; see [`Budget::from_json_value`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    max_hops: u32,
    max_tokens: u64,
    max_usd: f64,
    hop_count: u32,
    spent_tokens: u64,
    spent_usd: f64,
}

impl Budget {
    /// A fresh budget (nothing spent, hop 0).
    pub fn new(max_hops: u32, max_tokens: u64, max_usd: f64) -> Result<Budget, BudgetError> {
        Budget::from_parts(max_hops, max_tokens, max_usd, 0, 0, 0.0)
    }

    /// A fresh budget with [`DEFAULT_MAX_HOPS`].
    pub fn with_default_hops(max_tokens: u64, max_usd: f64) -> Result<Budget, BudgetError> {
        Budget::new(DEFAULT_MAX_HOPS, max_tokens, max_usd)
    }

    /// A budget from all six values, validated (see the type's invariants).
    /// Range violations are `INVALID_BUDGET`; `hop_count > max_hops` is
    /// `HOP_LIMIT_EXCEEDED`; spend above the maximum is `BUDGET_EXCEEDED`.
    pub fn from_parts(
        max_hops: u32,
        max_tokens: u64,
        max_usd: f64,
        hop_count: u32,
        spent_tokens: u64,
        spent_usd: f64,
    ) -> Result<Budget, BudgetError> {
        let usd_ok = |v: f64| v.is_finite() && (0.0..=MAX_USD_CEILING).contains(&v);
        if max_hops > MAX_HOPS_CEILING
            || hop_count > MAX_HOPS_CEILING
            || max_tokens > MAX_TOKENS_CEILING
            || spent_tokens > MAX_TOKENS_CEILING
            || !usd_ok(max_usd)
            || !usd_ok(spent_usd)
        {
            return Err(BudgetError::InvalidBudget);
        }
        if hop_count > max_hops {
            return Err(BudgetError::HopLimitExceeded);
        }
        if spent_tokens > max_tokens || spent_usd > max_usd + USD_EPSILON {
            return Err(BudgetError::BudgetExceeded);
        }
        Ok(Budget {
            max_hops,
            max_tokens,
            max_usd,
            hop_count,
            spent_tokens,
            // Normalise -0.0 and in-epsilon overshoot.
            spent_usd: spent_usd.clamp(0.0, max_usd),
        })
    }

    /// Validates a budget from untrusted JSON. It must be an object with no
    /// keys beyond the six fields; `max_tokens` and `max_usd` are required,
    /// `max_hops` defaults to 8, the rest to 0. Integer fields must be JSON
    /// integers (`8`; not `8.0`, `8e0`, `8.5`, `"8"` or negatives): the one
    /// number rule of every agentfed integer (`docs/protocol.md` §9.2), so
    /// a budget reads the same way as an envelope's `timestamp_ms`. USD
    /// fields are finite, non-negative numbers (integer or not).
    pub fn from_json_value(value: &Value) -> Result<Budget, BudgetError> {
        const KEYS: [&str; 6] = [
            "max_hops",
            "max_tokens",
            "max_usd",
            "hop_count",
            "spent_tokens",
            "spent_usd",
        ];
        let obj = value.as_object().ok_or(BudgetError::InvalidBudget)?;
        if obj.keys().any(|k| !KEYS.contains(&k.as_str())) {
            return Err(BudgetError::InvalidBudget);
        }
        let max_hops = small_int(obj, "max_hops")?.unwrap_or(DEFAULT_MAX_HOPS);
        let max_tokens = int_field(obj, "max_tokens")?.ok_or(BudgetError::InvalidBudget)?;
        let max_usd = usd_field(obj, "max_usd")?.ok_or(BudgetError::InvalidBudget)?;
        let hop_count = small_int(obj, "hop_count")?.unwrap_or(0);
        let spent_tokens = int_field(obj, "spent_tokens")?.unwrap_or(0);
        let spent_usd = usd_field(obj, "spent_usd")?.unwrap_or(0.0);
        Budget::from_parts(
            max_hops,
            max_tokens,
            max_usd,
            hop_count,
            spent_tokens,
            spent_usd,
        )
    }

    /// Parses and validates JSON bytes (see [`Budget::from_json_value`]).
    /// `NaN`/`Infinity` literals and out-of-range numbers fail to parse and
    /// are `INVALID_BUDGET`.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Budget, BudgetError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| BudgetError::InvalidBudget)?;
        Budget::from_json_value(&value)
    }

    /// Charges `tokens` and `usd` if both fit; otherwise changes nothing.
    /// `usd` must be finite and non-negative (`INVALID_BUDGET`).
    pub fn try_consume(&mut self, tokens: u64, usd: f64) -> Result<(), BudgetError> {
        if !usd.is_finite() || usd < 0.0 {
            return Err(BudgetError::InvalidBudget);
        }
        let new_tokens = self
            .spent_tokens
            .checked_add(tokens)
            .filter(|&t| t <= self.max_tokens)
            .ok_or(BudgetError::BudgetExceeded)?;
        let new_usd = self.spent_usd + usd;
        if new_usd > self.max_usd + USD_EPSILON {
            return Err(BudgetError::BudgetExceeded);
        }
        self.spent_tokens = new_tokens;
        self.spent_usd = new_usd.min(self.max_usd);
        Ok(())
    }

    /// The budget to send with a delegated envelope: same limits and spend,
    /// `hop_count + 1`. `HOP_LIMIT_EXCEEDED` when `max_hops == 0` or all
    /// hops are used. `self` is unchanged.
    pub fn next_hop(&self) -> Result<Budget, BudgetError> {
        if self.hop_count >= self.max_hops {
            return Err(BudgetError::HopLimitExceeded);
        }
        Ok(Budget {
            hop_count: self.hop_count + 1,
            ..*self
        })
    }

    /// Whether remote delegation is possible at all (`max_hops > 0`) and
    /// hops remain.
    pub fn can_delegate(&self) -> bool {
        self.hop_count < self.max_hops
    }

    /// Hop limit.
    pub fn max_hops(&self) -> u32 {
        self.max_hops
    }
    /// Token limit.
    pub fn max_tokens(&self) -> u64 {
        self.max_tokens
    }
    /// USD limit.
    pub fn max_usd(&self) -> f64 {
        self.max_usd
    }
    /// Hops taken so far.
    pub fn hop_count(&self) -> u32 {
        self.hop_count
    }
    /// Tokens spent so far.
    pub fn spent_tokens(&self) -> u64 {
        self.spent_tokens
    }
    /// USD spent so far.
    pub fn spent_usd(&self) -> f64 {
        self.spent_usd
    }
    /// Tokens left.
    pub fn remaining_tokens(&self) -> u64 {
        self.max_tokens - self.spent_tokens
    }
    /// USD left.
    pub fn remaining_usd(&self) -> f64 {
        (self.max_usd - self.spent_usd).max(0.0)
    }
}

impl<'de> Deserialize<'de> for Budget {
    /// Deserializes through [`Budget::from_json_value`]; the error message is
    /// the constant code.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom(BudgetError::InvalidBudget.code()))?;
        Budget::from_json_value(&value).map_err(|e| serde::de::Error::custom(e.code()))
    }
}

/// A JSON integer (no fraction or exponent) that fits a `u64`.
fn int_field(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, BudgetError> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    v.as_u64().map(Some).ok_or(BudgetError::InvalidBudget)
}

fn small_int(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, BudgetError> {
    int_field(obj, key)?
        .map(|v| u32::try_from(v).map_err(|_| BudgetError::InvalidBudget))
        .transpose()
}

fn usd_field(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, BudgetError> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    let f = v.as_f64().ok_or(BudgetError::InvalidBudget)?;
    if f.is_finite() && f >= 0.0 {
        Ok(Some(f))
    } else {
        Err(BudgetError::InvalidBudget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Budget, BudgetError> {
        Budget::from_json_value(&v)
    }

    #[test]
    fn error_strings_are_constant_codes() {
        assert_eq!(
            BudgetError::HopLimitExceeded.to_string(),
            "HOP_LIMIT_EXCEEDED"
        );
        assert_eq!(BudgetError::BudgetExceeded.to_string(), "BUDGET_EXCEEDED");
        assert_eq!(BudgetError::InvalidBudget.to_string(), "INVALID_BUDGET");
        for e in [
            BudgetError::HopLimitExceeded,
            BudgetError::BudgetExceeded,
            BudgetError::InvalidBudget,
        ] {
            assert_eq!(e.code(), e.to_string());
        }
    }

    #[test]
    fn valid_json_parses_with_defaults() -> Result<(), BudgetError> {
        let b = parse(json!({"max_tokens": 1000, "max_usd": 2.5}))?;
        assert_eq!(b.max_hops(), DEFAULT_MAX_HOPS);
        assert_eq!(
            (b.hop_count(), b.spent_tokens(), b.spent_usd()),
            (0, 0, 0.0)
        );
        let full = parse(json!({
            "max_hops": 3, "max_tokens": 100, "max_usd": 1, "hop_count": 2,
            "spent_tokens": 40, "spent_usd": 0.25
        }))?;
        assert_eq!(full, Budget::from_parts(3, 100, 1.0, 2, 40, 0.25)?);
        // USD amounts may be written either way.
        assert_eq!(
            parse(json!({"max_tokens": 10, "max_usd": 2}))?.max_usd(),
            2.0
        );
        // Ceilings themselves are allowed.
        let top = parse(json!({"max_hops": 64, "max_tokens": 1_000_000_000u64, "max_usd": 1e6}))?;
        assert_eq!(top.max_hops(), MAX_HOPS_CEILING);
        Ok(())
    }

    #[test]
    fn nan_and_infinities_are_invalid() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Budget::new(8, 10, bad), Err(BudgetError::InvalidBudget));
            assert_eq!(
                Budget::from_parts(8, 10, 1.0, 0, 0, bad),
                Err(BudgetError::InvalidBudget)
            );
        }
        for text in [
            r#"{"max_tokens": 1, "max_usd": NaN}"#,
            r#"{"max_tokens": 1, "max_usd": Infinity}"#,
            r#"{"max_tokens": 1, "max_usd": -Infinity}"#,
            r#"{"max_tokens": 1, "max_usd": 1e400}"#,
            r#"{"max_tokens": 1e400, "max_usd": 1}"#,
        ] {
            assert_eq!(
                Budget::from_json_slice(text.as_bytes()),
                Err(BudgetError::InvalidBudget),
                "{text}"
            );
        }
        let mut b = Budget::new(8, 10, 1.0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.try_consume(1, f64::NAN), Err(BudgetError::InvalidBudget));
        assert_eq!(
            b.try_consume(1, f64::INFINITY),
            Err(BudgetError::InvalidBudget)
        );
    }

    #[test]
    fn negatives_are_invalid() {
        for (k, v) in [
            ("max_hops", json!(-1)),
            ("max_tokens", json!(-1)),
            ("max_usd", json!(-0.01)),
            ("hop_count", json!(-1)),
            ("spent_tokens", json!(-5)),
            ("spent_usd", json!(-1)),
        ] {
            let mut obj = json!({"max_tokens": 100, "max_usd": 1});
            obj[k] = v;
            assert_eq!(parse(obj), Err(BudgetError::InvalidBudget), "{k}");
        }
        let mut b = Budget::new(8, 10, 1.0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.try_consume(1, -0.5), Err(BudgetError::InvalidBudget));
        assert_eq!(b.spent_tokens(), 0);
    }

    #[test]
    fn non_integers_and_wrong_types_are_invalid() {
        for (k, v) in [
            ("max_hops", json!(2.5)),
            ("max_tokens", json!(10.5)),
            ("hop_count", json!(0.1)),
            ("spent_tokens", json!(1e-3)),
            ("max_tokens", json!("100")),
            ("max_usd", json!("1")),
            ("max_hops", json!(true)),
            ("max_tokens", json!(null)),
            ("max_usd", json!([1])),
            ("max_tokens", json!(1e17)),
            // Integers are JSON integers: an integral float is not one.
            ("max_hops", json!(8.0)),
            ("max_tokens", json!(10.0)),
            ("hop_count", json!(0.0)),
            ("spent_tokens", json!(1e3)),
        ] {
            let mut obj = json!({"max_tokens": 100, "max_usd": 1});
            obj[k] = v;
            assert_eq!(parse(obj), Err(BudgetError::InvalidBudget), "{k}");
        }
        assert_eq!(parse(json!([1, 2])), Err(BudgetError::InvalidBudget));
        assert_eq!(
            parse(json!({"max_usd": 1})),
            Err(BudgetError::InvalidBudget),
            "max_tokens required"
        );
        assert_eq!(
            parse(json!({"max_tokens": 1})),
            Err(BudgetError::InvalidBudget),
            "max_usd required"
        );
        assert_eq!(
            parse(json!({"max_tokens": 1, "max_usd": 1, "extra": 1})),
            Err(BudgetError::InvalidBudget),
            "unknown key"
        );
        assert_eq!(
            Budget::from_json_slice(b"not json"),
            Err(BudgetError::InvalidBudget)
        );
    }

    #[test]
    fn above_ceiling_is_invalid() {
        for (k, v) in [
            ("max_hops", json!(65)),
            ("max_tokens", json!(1_000_000_001u64)),
            ("max_usd", json!(1_000_000.01)),
            ("hop_count", json!(65)),
            ("spent_tokens", json!(1_000_000_001u64)),
            ("spent_usd", json!(2e6)),
            ("max_hops", json!(u64::MAX)),
            ("max_hops", json!(4_294_967_296u64)),
        ] {
            let mut obj = json!({"max_tokens": 100, "max_usd": 1});
            obj[k] = v;
            assert_eq!(parse(obj), Err(BudgetError::InvalidBudget), "{k}");
        }
    }

    #[test]
    fn spend_and_hops_beyond_limits_are_reported_as_such() {
        assert_eq!(
            parse(json!({"max_hops": 2, "hop_count": 3, "max_tokens": 1, "max_usd": 1})),
            Err(BudgetError::HopLimitExceeded)
        );
        assert_eq!(
            parse(json!({"max_tokens": 10, "spent_tokens": 11, "max_usd": 1})),
            Err(BudgetError::BudgetExceeded)
        );
        assert_eq!(
            parse(json!({"max_tokens": 10, "max_usd": 1, "spent_usd": 1.5})),
            Err(BudgetError::BudgetExceeded)
        );
    }

    #[test]
    fn try_consume_is_all_or_nothing() -> Result<(), BudgetError> {
        let mut b = Budget::new(8, 100, 1.0)?;
        b.try_consume(60, 0.5)?;
        let before = b;
        assert_eq!(b.try_consume(41, 0.1), Err(BudgetError::BudgetExceeded));
        assert_eq!(b, before, "token overrun changes nothing");
        assert_eq!(b.try_consume(1, 0.6), Err(BudgetError::BudgetExceeded));
        assert_eq!(b, before, "usd overrun changes nothing");
        assert_eq!(
            b.try_consume(u64::MAX, 0.0),
            Err(BudgetError::BudgetExceeded)
        );
        assert_eq!(b, before, "overflow changes nothing");
        b.try_consume(40, 0.5)?;
        assert_eq!((b.remaining_tokens(), b.remaining_usd()), (0, 0.0));
        assert_eq!(b.try_consume(0, 0.0), Ok(()));
        assert_eq!(b.try_consume(1, 0.0), Err(BudgetError::BudgetExceeded));
        Ok(())
    }

    #[test]
    fn usd_sums_tolerate_float_rounding() -> Result<(), BudgetError> {
        let mut b = Budget::new(8, 10, 0.3)?;
        b.try_consume(0, 0.1)?;
        b.try_consume(0, 0.2)?;
        assert!(b.spent_usd() <= b.max_usd());
        assert_eq!(
            b.try_consume(0, 0.000_001),
            Err(BudgetError::BudgetExceeded)
        );
        Ok(())
    }

    #[test]
    fn next_hop_counts_and_stops() -> Result<(), BudgetError> {
        let b = Budget::new(2, 10, 1.0)?;
        let h1 = b.next_hop()?;
        assert_eq!((b.hop_count(), h1.hop_count()), (0, 1));
        let h2 = h1.next_hop()?;
        assert_eq!(h2.next_hop(), Err(BudgetError::HopLimitExceeded));
        assert!(!h2.can_delegate());
        let none = Budget::new(0, 10, 1.0)?;
        assert!(!none.can_delegate());
        assert_eq!(
            none.next_hop(),
            Err(BudgetError::HopLimitExceeded),
            "0 = no remote delegation"
        );
        Ok(())
    }

    #[test]
    fn serde_round_trip_and_constant_error() -> Result<(), Box<dyn std::error::Error>> {
        let mut b = Budget::new(5, 1000, 3.0)?;
        b.try_consume(10, 0.5)?;
        let text = serde_json::to_string(&b)?;
        assert_eq!(serde_json::from_str::<Budget>(&text)?, b);
        let err = serde_json::from_str::<Budget>(r#"{"max_tokens": -1, "max_usd": 123.456}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("INVALID_BUDGET"), "{err}");
        assert!(!err.contains("123"), "{err}");
        Ok(())
    }
}
