//! Spend and the circuit breaker: spend reports, the spend plugin's
//! verdicts applied through the legal edges only
//! ([`crate::breaker::transition`]), and operator evictions and
//! reactivations, each transition with its record in one commit.

use super::*;

impl Coordinator {
    // ---- spend and the circuit breaker ----

    /// Records a completed call's cost and outcome, then re-evaluates the
    /// peer's breaker and trust. Negative values are kept in the audit and
    /// count as 0 for the breaker.
    pub fn report_spend(&self, report: SpendReport) -> Result<SpendOutcome> {
        validate_task_id(&report.task_id)?;
        if !report.tokens.is_finite()
            || report.tokens.fract() != 0.0
            || report.tokens.abs() > MAX_REPORT_TOKENS
        {
            return Err(CoordError::InvalidInput(format!(
                "tokens must be a whole number of magnitude at most {MAX_REPORT_TOKENS:e}"
            )));
        }
        if !report.usd.is_finite() || report.usd.abs() > MAX_REPORT_USD {
            return Err(CoordError::InvalidInput(format!(
                "usd must be a finite number of magnitude at most {MAX_REPORT_USD:e}"
            )));
        }
        let _guard = self.lock_decisions();
        let record = self.peer_record(&report.peer)?;
        let now = self.now();
        let sample = SpendSample {
            ts_ms: now,
            task_id: report.task_id.clone(),
            tokens: report.tokens as i64,
            usd: report.usd,
            success: report.success,
        };
        // The sample, a failure counted against a suspended peer and its
        // `spend_reported` record commit together.
        let event = AuditEvent::spend_reported(
            &report.peer,
            &report.task_id,
            sample.tokens,
            report.usd,
            report.success,
        );
        let count_failure = record.breaker.state == BreakerState::Suspended && !report.success;
        if !self.store.record_spend_recorded(
            self.audit.recorder(),
            &report.peer,
            &sample,
            count_failure,
            vec![event],
        )? {
            return Err(CoordError::UnknownPeer(clip(&report.peer)));
        }
        let interaction = if report.success {
            Interaction::Success
        } else {
            Interaction::Failure
        };
        let trust = self.record_interaction_locked(&report.peer, interaction)?;
        let breaker = self.evaluate_breaker_locked(&report.peer)?;
        Ok(SpendOutcome { breaker, trust })
    }

    pub(super) fn spend_request(
        &self,
        record: &PeerRecord,
        now: u64,
    ) -> Result<plugin::SpendRequest> {
        let node_id = record.node_id();
        let window = |span: u64| -> Result<plugin::SpendWindow> {
            let w = self.store.spend_window(
                node_id,
                now.saturating_sub(span),
                record.breaker.counts_from_seq,
            )?;
            Ok(plugin::SpendWindow {
                window_ms: span,
                samples: w.samples.min(u64::from(u32::MAX)) as u32,
                failures: w.failures.min(u64::from(u32::MAX)) as u32,
                tokens: w.tokens,
                usd: w.usd,
            })
        };
        Ok(plugin::SpendRequest {
            node_id: node_id.to_string(),
            breaker: plugin::BreakerView {
                state: to_wit_breaker(record.breaker.state),
                since_ms: record.breaker.since_ms,
                reason: record.breaker.reason.clone(),
                failures_since_suspend: record
                    .breaker
                    .failures_since_suspend
                    .min(u64::from(u32::MAX)) as u32,
            },
            last_hour: window(HOUR_MS)?,
            last_day: window(DAY_MS)?,
            now_ms: now,
        })
    }

    /// Asks the spend plugin about one peer and applies a legal answer.
    pub fn evaluate_breaker(&self, node_id: &str) -> Result<BreakerOutcome> {
        let _guard = self.lock_decisions();
        self.evaluate_breaker_locked(node_id)
    }

    pub(super) fn evaluate_breaker_locked(&self, node_id: &str) -> Result<BreakerOutcome> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let unchanged = BreakerOutcome::Unchanged {
            state: record.breaker.state,
            reactivate_eligible: breaker::reactivate_eligible(&record.breaker, now),
        };
        if record.breaker.state == BreakerState::Evicted {
            return Ok(unchanged);
        }
        let plugin = self.plugins.spend.get();
        let decision = match plugin.evaluate_spend(&self.spend_request(&record, now)?) {
            Ok(decision) => decision,
            Err(err) => {
                let code = self.plugin_failed(&plugin, Some(node_id), err)?;
                return Ok(BreakerOutcome::PluginFailed { code });
            }
        };
        let (target, reason) = match decision {
            plugin::SpendDecision::None | plugin::SpendDecision::ReactivateEligible => {
                return Ok(unchanged);
            }
            plugin::SpendDecision::Suspend(reason) => (BreakerState::Suspended, reason),
            plugin::SpendDecision::Evict(reason) => (BreakerState::Evicted, reason),
        };
        match breaker::transition(record.breaker.state, target, Actor::Plugin) {
            Ok(_) => {
                let reason = clip_reason(&reason);
                let change = self.apply_breaker(
                    &record,
                    target,
                    &plugin_actor(&plugin),
                    Actor::Plugin,
                    &reason,
                )?;
                Ok(BreakerOutcome::Changed(change))
            }
            Err(illegal) => {
                let reason = illegal.to_string();
                self.record(
                    AuditEvent::new(
                        EventType::PluginFailed,
                        format!("breaker decision refused: {reason}"),
                    )
                    .with_peer(node_id)
                    .with_actor(plugin_actor(&plugin))
                    .with_severity(Severity::Warning)
                    .with_details(json!({"kind": "spend", "refused": reason})),
                )?;
                Ok(BreakerOutcome::Refused { reason })
            }
        }
    }

    pub(super) fn apply_breaker(
        &self,
        record: &PeerRecord,
        to: BreakerState,
        actor_name: &str,
        actor: Actor,
        reason: &str,
    ) -> Result<BreakerChange> {
        let now = self.now();
        let correlation = correlation_id();
        let (why, id) = (reason.to_string(), correlation.clone());
        // An operator's reactivation starts the spend windows afresh: spend
        // reported before it cannot trip the breaker again, only new spend
        // can. Every other change keeps where the windows count from.
        let counts_from = if actor == Actor::Operator && to == BreakerState::Active {
            (now, self.store.spend_next_seq(record.node_id())?)
        } else {
            (
                record.breaker.counts_from_ms,
                record.breaker.counts_from_seq,
            )
        };
        // The transition and its record commit together.
        let updated = self.store.update_peer_recorded(
            self.audit.recorder(),
            record.node_id(),
            move |r| {
                r.breaker = BreakerInfo {
                    state: to,
                    reason: Some(why.clone()),
                    correlation_id: Some(id.clone()),
                    since_ms: now,
                    failures_since_suspend: 0,
                    counts_from_ms: counts_from.0,
                    counts_from_seq: counts_from.1,
                };
            },
            vec![
                AuditEvent::breaker(record.node_id(), to, actor, reason, &correlation)
                    .with_actor(actor_name.to_string()),
            ],
        )?;
        if updated.is_none() {
            return Err(CoordError::UnknownPeer(clip(record.node_id())));
        }
        self.refresh_live_counts()?;
        Ok(BreakerChange {
            peer: record.node_id().to_string(),
            from: record.breaker.state,
            to,
            actor: actor_name.to_string(),
            reason: reason.to_string(),
            correlation_id: correlation,
        })
    }

    /// Operator eviction (from ACTIVE or SUSPENDED).
    pub fn evict(&self, node_id: &str, reason: &str) -> Result<BreakerChange> {
        self.operator_breaker(node_id, BreakerState::Evicted, reason)
    }

    /// Operator reactivation (from SUSPENDED or EVICTED): the only way back
    /// to ACTIVE.
    pub fn reactivate(&self, node_id: &str, reason: &str) -> Result<BreakerChange> {
        self.operator_breaker(node_id, BreakerState::Active, reason)
    }

    pub(super) fn operator_breaker(
        &self,
        node_id: &str,
        to: BreakerState,
        reason: &str,
    ) -> Result<BreakerChange> {
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        breaker::transition(record.breaker.state, to, Actor::Operator)
            .map_err(|e| CoordError::IllegalTransition(e.to_string()))?;
        self.apply_breaker(
            &record,
            to,
            crate::audit::ACTOR_OPERATOR,
            Actor::Operator,
            &reason,
        )
    }

    /// Breaker state of one peer or all.
    pub fn breaker_status(&self, node_id: Option<&str>) -> Result<Vec<BreakerView>> {
        let records = match node_id {
            Some(id) => vec![self.peer_record(id)?],
            None => self.store.list_peers()?,
        };
        let now = self.now();
        records
            .iter()
            .map(|r| {
                let from = r.breaker.counts_from_seq;
                let hour =
                    self.store
                        .spend_window(r.node_id(), now.saturating_sub(HOUR_MS), from)?;
                let day = self
                    .store
                    .spend_window(r.node_id(), now.saturating_sub(DAY_MS), from)?;
                Ok(BreakerView {
                    node_id: r.node_id().to_string(),
                    breaker: r.breaker.clone(),
                    reactivate_eligible: breaker::reactivate_eligible(&r.breaker, now),
                    usd_last_day: day.usd,
                    samples_last_hour: hour.samples,
                    failures_last_hour: hour.failures,
                })
            })
            .collect()
    }
}
