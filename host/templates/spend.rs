//! {{name}}: a spend (circuit-breaker) policy for agentfed.
//!
//! Suspends an active peer whose 24-hour spend exceeds `max-usd-per-day`
//! (config, default 2.0) and evicts a suspended one after 5 more failures.
use agentfed_guest::spend::*;

/// The plugin type, exported below.
pub struct Policy;

/// The decision, as a pure function.
pub fn decide(request: &SpendRequest, max_usd: f64) -> SpendDecision {
    match request.breaker.state {
        BreakerState::Active if request.last_day.usd > max_usd => SpendDecision::Suspend(format!(
            "24h spend ${:.2} exceeds ${max_usd:.2}",
            request.last_day.usd
        )),
        BreakerState::Suspended if request.breaker.failures_since_suspend >= 5 => {
            SpendDecision::Evict("failures continued while suspended".into())
        }
        _ => SpendDecision::None,
    }
}

impl SpendPolicy for Policy {
    const DESCRIPTION: &'static str = "{{name}}: a strict daily spend cap";

    fn evaluate(request: SpendRequest) -> Result<SpendDecision, String> {
        let max = host::config_or("max-usd-per-day", 2.0f64)?;
        Ok(decide(&request, max))
    }
}

agentfed_guest::export_spend_policy!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: BreakerState, usd: f64, failures_since_suspend: u32) -> SpendRequest {
        let window = |window_ms| SpendWindow { window_ms, samples: 1, failures: 0, tokens: 0, usd };
        SpendRequest {
            node_id: "peer-1".into(),
            breaker: BreakerView { state, since_ms: 0, reason: None, failures_since_suspend },
            last_hour: window(3_600_000),
            last_day: window(86_400_000),
            now_ms: 0,
        }
    }

    #[test]
    fn suspends_over_the_cap() {
        assert!(matches!(decide(&request(BreakerState::Active, 2.5, 0), 2.0), SpendDecision::Suspend(_)));
        assert!(matches!(decide(&request(BreakerState::Active, 1.5, 0), 2.0), SpendDecision::None));
    }

    #[test]
    fn evicts_after_failures_while_suspended() {
        assert!(matches!(decide(&request(BreakerState::Suspended, 0.0, 5), 2.0), SpendDecision::Evict(_)));
    }
}
