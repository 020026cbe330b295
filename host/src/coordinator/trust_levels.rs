//! Trust: the capability check, the trust plugin's evaluation under the
//! host's rules (one level up at a time, earning gates, operator pins),
//! threat and signature-failure counting with the drop to UNTRUSTED, and
//! operator changes. Every change commits with its audit records.

use super::*;

impl Coordinator {
    // ---- trust ----

    /// Whether `node_id` may use `capability`: the breaker first, then the
    /// trust level.
    pub fn check_capability(&self, node_id: &str, capability: Capability) -> Result<()> {
        let record = self.peer_record(node_id)?;
        check_gates(&record, &[capability])
    }

    /// Operator sets a peer's level (audited as an operator bootstrap).
    /// This is also how a PRIVILEGED recommendation is confirmed.
    ///
    /// The decision holds: with `pin` (the default of `trust set`) no
    /// plugin promotes the peer above `level` until an operator unpins it;
    /// pinned or not, `level` is the floor decay stops at. It also starts a
    /// new evidence period ([`InteractionMetrics::close_period`]): the
    /// counters the plugin scores restart from zero, so evidence older than
    /// the decision can neither undo it (old threats, failures) nor spend
    /// it (old successes). Setting the level a peer already has only
    /// changes the pin, and is refused when that changes nothing.
    pub fn set_trust(
        &self,
        node_id: &str,
        level: &str,
        reason: &str,
        pin: bool,
    ) -> Result<TrustChange> {
        let level: TrustLevel = level
            .parse()
            .map_err(|_| CoordError::InvalidLevel(clip(level)))?;
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let held = record.operator.filter(|op| op.level == level);
        if record.trust_level == level && held.is_some_and(|op| op.pinned == pin) {
            return Err(CoordError::IllegalTransition(format!(
                "{node_id} is already {level} ({}); nothing to change",
                if pin { "pinned" } else { "not pinned" }
            )));
        }
        let change = TrustChange {
            peer: node_id.to_string(),
            from: record.trust_level,
            to: level,
            actor: crate::audit::ACTOR_OPERATOR.to_string(),
            reason: format!("operator bootstrap: {reason}"),
        };
        let operator = OperatorLevel {
            level,
            at_ms: self.now(),
            pinned: pin,
        };
        self.apply_trust_change_with(&change, Actor::Operator, Some(operator))?;
        Ok(change)
    }

    /// Operator releases a pin: the peer keeps its level and may earn its
    /// way up again; the operator's level stays the floor of decay.
    pub fn unpin_trust(&self, node_id: &str, reason: &str) -> Result<TrustPinView> {
        let reason = validate_reason(reason)?;
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let Some(op) = record.operator.filter(|op| op.pinned) else {
            return Err(CoordError::IllegalTransition(format!(
                "{node_id} is not pinned"
            )));
        };
        let unpinned = OperatorLevel {
            pinned: false,
            ..op
        };
        let event = AuditEvent::new(
            EventType::OperatorAction,
            format!("trust pin on {node_id} at {} released", op.level),
        )
        .with_peer(node_id)
        .with_actor(crate::audit::ACTOR_OPERATOR)
        .with_details(json!({"action": "trust_unpin", "level": op.level, "reason": reason}));
        self.store.update_peer_recorded(
            self.audit.recorder(),
            node_id,
            move |r| r.operator = Some(unpinned),
            vec![event],
        )?;
        Ok(TrustPinView {
            peer: node_id.to_string(),
            level: record.trust_level,
            operator: Some(unpinned),
        })
    }

    /// Applies `change` to the peer's record and records
    /// `trust_level_changed` in the same commit: after a crash both are
    /// there or neither is.
    pub(super) fn apply_trust_change(&self, change: &TrustChange, actor: Actor) -> Result<()> {
        self.apply_trust_change_with(change, actor, None)
    }

    /// [`Coordinator::apply_trust_change`], and for an operator's decision
    /// also its pin and a new evidence period.
    pub(super) fn apply_trust_change_with(
        &self,
        change: &TrustChange,
        actor: Actor,
        operator: Option<OperatorLevel>,
    ) -> Result<()> {
        let now = self.now();
        let to = change.to;
        let mut event = AuditEvent::trust_level_changed(
            &change.peer,
            change.from,
            change.to,
            actor,
            &change.reason,
        )
        .with_actor(change.actor.clone());
        if let (Some(op), Some(details)) = (operator, event.details.as_object_mut()) {
            details.insert("pinned".into(), json!(op.pinned));
        }
        self.store.update_peer_recorded(
            self.audit.recorder(),
            &change.peer,
            move |r| set_trust_level(r, to, now, operator),
            vec![event],
        )?;
        self.refresh_live_counts()
    }

    /// What stands between a peer and its next level: the host's rules
    /// (pin, time at level, distinct active days) and the trust plugin's
    /// own bar, each met or not, with the earliest time the promotion could
    /// happen. Changes nothing.
    ///
    /// The plugin's bar is found by asking it about the peer as it would be
    /// after each further hour of steady work at the hourly cap (every
    /// counted interaction a success), up to [`NEXT_STEP_HORIZON_MS`]; so
    /// the earliest time is a lower bound that holds for any trust plugin.
    pub fn trust_next_step(&self, node_id: &str) -> Result<NextStep> {
        let _guard = self.lock_decisions();
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let level = record.trust_level;
        let Some(gates) = trust_ledger::promotion_gates(
            &self.earning,
            level,
            record.level_since_ms,
            &record.metrics.earned,
            record.operator.as_ref(),
            now,
        ) else {
            let summary = match level {
                TrustLevel::Untrusted => {
                    "UNTRUSTED peers rise only through a completed handshake (VERIFIED) or an operator's `trust set`".to_string()
                }
                TrustLevel::Trusted => format!(
                    "PRIVILEGED is never automatic: an operator confirms it with `agentfed trust set {node_id} privileged --reason …`{}",
                    if record.privileged_recommended { " (the trust plugin recommends it)" } else { "" }
                ),
                _ => "PRIVILEGED is the top of the ladder".to_string(),
            };
            return Ok(NextStep {
                peer: node_id.to_string(),
                level,
                to: None,
                summary,
                requirements: Vec::new(),
                earliest_ms: None,
            });
        };
        let plugin = self.plugins.trust.get();
        let asks_promotion =
            |snapshot: &plugin::PeerSnapshot| -> std::result::Result<(bool, String), String> {
                match plugin.evaluate_trust(snapshot) {
                    Ok(d) => Ok((
                        matches!(d.action, plugin::TrustAction::Promote(_)),
                        d.reason,
                    )),
                    Err(e) => Err(format!("the trust plugin failed ({})", e.code())),
                }
            };
        let base = snapshot(&record, now);
        let mut requirements = gates.requirements.clone();
        let (met, reason) = asks_promotion(&base).unwrap_or_else(|e| (false, e));
        let plugin_earliest = if met {
            Some(now)
        } else {
            let per_hour = u64::from(self.earning.counted_per_hour);
            (1..=NEXT_STEP_HORIZON_MS / HOUR_MS).find_map(|h| {
                let mut future = base.clone();
                future.now_ms = now + h * HOUR_MS;
                future.metrics.interactions += h * per_hour;
                future.metrics.successes += h * per_hour;
                future.metrics.last_seen_ms = future.now_ms;
                matches!(asks_promotion(&future), Ok((true, _))).then_some(future.now_ms)
            })
        };
        requirements.push(trust_ledger::Requirement {
            rule: format!(
                "the trust plugin ({}) asks for {}",
                plugin.metadata().name,
                gates.to
            ),
            have: reason,
            met,
            earliest_ms: plugin_earliest,
        });
        let step = trust_ledger::PromotionGates {
            to: gates.to,
            requirements,
        };
        let earliest_ms = step.earliest_ms(now);
        let summary = if step.open() {
            format!("{} is due now: every condition is met", gates.to)
        } else {
            match earliest_ms {
                Some(t) => format!(
                    "{} at the earliest in {} (with steady work at {} counted interactions an hour)",
                    gates.to,
                    // Rounded up to the minute: "in 7 days", not "6 days 23 h".
                    trust_ledger::duration_text(t.saturating_sub(now).div_ceil(60_000) * 60_000),
                    self.earning.counted_per_hour
                ),
                None => format!(
                    "{} cannot happen by waiting (a pin, or beyond {} at the hourly cap)",
                    gates.to,
                    trust_ledger::duration_text(NEXT_STEP_HORIZON_MS)
                ),
            }
        };
        Ok(NextStep {
            peer: node_id.to_string(),
            level,
            to: Some(gates.to),
            summary,
            requirements: step.requirements,
            earliest_ms,
        })
    }

    /// Asks the trust plugin about one peer and applies a legal answer.
    pub fn evaluate_trust(&self, node_id: &str) -> Result<TrustOutcome> {
        let _guard = self.lock_decisions();
        self.evaluate_trust_locked(node_id)
    }

    pub(super) fn evaluate_trust_locked(&self, node_id: &str) -> Result<TrustOutcome> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let plugin = self.plugins.trust.get();
        let decision = match plugin.evaluate_trust(&snapshot(&record, now)) {
            Ok(decision) => decision,
            Err(err) => {
                return self
                    .plugin_failed(&plugin, Some(node_id), err)
                    .map(|code| TrustOutcome::PluginFailed { code });
            }
        };
        let score = if decision.score.is_finite() {
            decision.score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let components = score_components(&decision.components);
        let current = record.trust_level;
        let verdict = match decision.action {
            plugin::TrustAction::Keep => Ok(None),
            plugin::TrustAction::Promote(to) => {
                let to = from_wit_level(to);
                if current == TrustLevel::Untrusted {
                    Err("a plugin cannot promote an UNTRUSTED peer (VERIFIED comes from a handshake or an operator)".to_string())
                } else if to == TrustLevel::Privileged {
                    Err(
                        "a plugin cannot promote to PRIVILEGED; it may only recommend it"
                            .to_string(),
                    )
                } else if Some(to) != current.next_up() {
                    Err(format!(
                        "a plugin may only promote one level ({current} -> {to} refused)"
                    ))
                } else {
                    Ok(Some(to))
                }
            }
            plugin::TrustAction::Demote(to) => {
                let to = from_wit_level(to);
                if to < current {
                    Ok(Some(to))
                } else {
                    Err(format!(
                        "a demotion must lower the level ({current} -> {to} refused)"
                    ))
                }
            }
            plugin::TrustAction::RecommendPrivileged => {
                if current == TrustLevel::Trusted {
                    Ok(None)
                } else {
                    Err(format!(
                        "PRIVILEGED can only be recommended for a TRUSTED peer, not {current}"
                    ))
                }
            }
        };
        let recommend =
            matches!(decision.action, plugin::TrustAction::RecommendPrivileged) && verdict.is_ok();
        let newly_recommended = recommend && !record.privileged_recommended;
        // Most evaluations change nothing; skipping the write saves a
        // durable commit (an fsync) per interaction.
        if record.score != score || record.score_components != components || newly_recommended {
            // A first PRIVILEGED recommendation and its record commit
            // together with the flag that keeps it from repeating.
            let events = if newly_recommended {
                vec![
                    AuditEvent::new(EventType::TrustLevelChanged, format!("PRIVILEGED recommended for {node_id}; operator confirmation required"))
                        .with_peer(node_id)
                        .with_actor(plugin_actor(&plugin))
                        .with_details(json!({"recommendation": "PRIVILEGED", "from": current, "to": current, "reason": decision.reason, "score": score})),
                ]
            } else {
                Vec::new()
            };
            self.store.update_peer_recorded(
                self.audit.recorder(),
                node_id,
                move |r| {
                    r.score = score;
                    r.score_components = components;
                    if recommend {
                        r.privileged_recommended = true;
                    }
                },
                events,
            )?;
        }
        // A legal promotion must still pass the host's earning rules and
        // any operator pin (checked here, for every trust plugin).
        let verdict = match verdict {
            Ok(Some(to)) if to > current => {
                let gates = trust_ledger::promotion_gates(
                    &self.earning,
                    current,
                    record.level_since_ms,
                    &record.metrics.earned,
                    record.operator.as_ref(),
                    now,
                );
                match gates.as_ref().and_then(|g| g.first_unmet()) {
                    Some(waiting_for) => {
                        return Ok(TrustOutcome::Held {
                            score,
                            reason: decision.reason,
                            to,
                            waiting_for,
                        });
                    }
                    None => Ok(Some(to)),
                }
            }
            other => other,
        };
        match verdict {
            Err(reason) => {
                self.record(
                    AuditEvent::new(
                        EventType::PluginFailed,
                        format!("trust decision refused: {reason}"),
                    )
                    .with_peer(node_id)
                    .with_actor(plugin_actor(&plugin))
                    .with_severity(Severity::Warning)
                    .with_details(json!({"kind": "trust", "refused": reason})),
                )?;
                Ok(TrustOutcome::Refused { reason })
            }
            Ok(Some(to)) => {
                let change = TrustChange {
                    peer: node_id.to_string(),
                    from: current,
                    to,
                    actor: plugin_actor(&plugin),
                    reason: decision.reason,
                };
                self.apply_trust_change(&change, Actor::Plugin)?;
                Ok(TrustOutcome::Changed(change))
            }
            Ok(None) if recommend => Ok(TrustOutcome::PrivilegedRecommended {
                score,
                reason: decision.reason,
            }),
            Ok(None) => Ok(TrustOutcome::Kept {
                score,
                reason: decision.reason,
            }),
        }
    }

    /// Takes a silent peer down one earned level when the decay rule says so
    /// ([`trust_ledger::decay_target`]); audited, with the host as actor.
    pub(super) fn decay_locked(&self, node_id: &str) -> Result<Option<TrustChange>> {
        let record = self.peer_record(node_id)?;
        let now = self.now();
        let Some(to) = trust_ledger::decay_target(
            &self.earning,
            record.trust_level,
            record.level_since_ms,
            &record.metrics.earned,
            record.operator.as_ref(),
            now,
        ) else {
            return Ok(None);
        };
        let quiet_since = record
            .metrics
            .earned
            .last_counted_ms
            .max(record.level_since_ms);
        let change = TrustChange {
            peer: node_id.to_string(),
            from: record.trust_level,
            to,
            actor: crate::audit::ACTOR_SYSTEM.to_string(),
            reason: format!(
                "decay: nothing earned for {} (the limit is {}): one level down",
                trust_ledger::duration_text(now.saturating_sub(quiet_since)),
                trust_ledger::duration_text(self.earning.decay_after_ms)
            ),
        };
        self.apply_trust_change(&change, Actor::Plugin)?;
        Ok(Some(change))
    }

    /// Audits a plugin failure and returns its code; the caller fails
    /// closed.
    pub(super) fn plugin_failed(
        &self,
        plugin: &LoadedPlugin,
        peer: Option<&str>,
        err: PluginError,
    ) -> Result<String> {
        let code = err.code().to_string();
        let mut event = AuditEvent::new(
            EventType::PluginFailed,
            format!("{} plugin failed: {err}", plugin.kind()),
        )
        .with_actor(plugin_actor(plugin))
        .with_severity(Severity::Error)
        .with_details(json!({"kind": plugin.kind(), "code": code}));
        if let Some(peer) = peer {
            event = event.with_peer(peer);
        }
        self.record(event)?;
        tracing::warn!(plugin = %plugin.label(), "plugin failed, failing closed: {err}");
        Ok(code)
    }

    /// Records one interaction with a peer, applies the host's threat
    /// rules, and re-evaluates its trust.
    pub fn record_interaction(
        &self,
        node_id: &str,
        interaction: Interaction,
    ) -> Result<TrustOutcome> {
        let _guard = self.lock_decisions();
        self.record_interaction_locked(node_id, interaction)
    }

    /// Notes one fulfilled request of ours (an acknowledged delivery)
    /// without touching the peer's record. The per-message kinds of
    /// evidence (fulfilled, observed, failed) are counted in memory and
    /// applied as one peer update and one trust evaluation per peer by
    /// [`Coordinator::apply_pending_successes`] (the daemon calls it every
    /// second) or by the next decision or read of peer state
    /// ([`Coordinator::peers`], [`Coordinator::peer`], trust and breaker
    /// decisions), which apply what is pending first, so they never see a
    /// stale count. The message path thus never waits for a peer-record
    /// commit. A crash loses at most the evidence noted since the last
    /// application; it is trust evidence, not acknowledged data.
    pub fn note_fulfilled(&self, node_id: &str) {
        self.note(node_id, |p| p.fulfilled += 1);
    }

    /// Notes something `node_id` did on its own initiative that this node
    /// accepted (an inbound envelope, an answered heartbeat): it keeps the
    /// peer seen, and never earns trust. See [`Coordinator::note_fulfilled`].
    pub fn note_observed(&self, node_id: &str) {
        self.note(node_id, |p| p.observed += 1);
    }

    /// Notes an envelope from `node_id` refused for the sender's own fault:
    /// a failure, counted in full. See [`Coordinator::note_fulfilled`].
    pub fn note_failed(&self, node_id: &str) {
        self.note(node_id, |p| p.failed += 1);
    }

    pub(super) fn note(&self, node_id: &str, add: impl FnOnce(&mut PendingEvidence)) {
        let mut pending = self
            .pending_evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(node_id) {
            Some(p) => add(p),
            None => {
                let mut p = PendingEvidence::default();
                add(&mut p);
                pending.insert(node_id.to_string(), p);
            }
        }
    }

    /// Applies the evidence noted since the last call (see
    /// [`Coordinator::note_fulfilled`]).
    pub fn apply_pending_successes(&self) {
        drop(self.lock_decisions());
    }

    /// Applies the coalesced evidence of [`Coordinator::note_fulfilled`]
    /// and its siblings (the caller holds the decision lock).
    pub(super) fn apply_pending_successes_locked(&self) {
        // One pass over what is pending now: evidence noted meanwhile waits
        // for the next call, so a steady stream of it cannot keep the
        // decision lock held.
        let pending = std::mem::take(
            &mut *self
                .pending_evidence
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (peer, evidence) in pending {
            for (interaction, count) in [
                (Interaction::Observed, evidence.observed),
                (Interaction::Failure, evidence.failed),
                (Interaction::Success, evidence.fulfilled),
            ] {
                if count == 0 {
                    continue;
                }
                if let Err(e) = self.record_interactions_locked(&peer, interaction, count) {
                    // The peer was removed meanwhile, or the store failed:
                    // the evidence is dropped, nothing else depends on it.
                    tracing::debug!(peer = %peer, "cannot apply coalesced evidence: {e}");
                }
            }
        }
    }

    pub(super) fn record_interaction_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
    ) -> Result<TrustOutcome> {
        self.record_interactions_locked(node_id, interaction, 1)
    }

    /// Records `count` interactions of one kind (threats and signature
    /// failures always come one at a time). Successes count toward
    /// promotion only within the hourly cap of [`EarningRules`].
    pub(super) fn record_interactions_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
        count: u64,
    ) -> Result<TrustOutcome> {
        let now = self.now();
        let cap = self.earning.counted_per_hour;
        if matches!(
            interaction,
            Interaction::Threat | Interaction::SignatureFailure
        ) {
            return self.record_threat_locked(node_id, interaction, now, cap);
        }
        let updated = self.store.update_peer(node_id, move |r| {
            note_interactions(r, interaction, count, now, cap);
        })?;
        updated.ok_or_else(|| CoordError::UnknownPeer(clip(node_id)))?;
        self.evaluate_trust_locked(node_id)
    }

    /// A threat or a signature failure: the count, its record
    /// (`threat_detected` / `signature_invalid`) and, when a rule drops
    /// the peer to UNTRUSTED, the drop with its `trust_level_changed` and
    /// `threat_blocked` records, all in one commit.
    pub(super) fn record_threat_locked(
        &self,
        node_id: &str,
        interaction: Interaction,
        now: u64,
        cap: u32,
    ) -> Result<TrustOutcome> {
        // Decisions about this peer are serialised by the decision lock,
        // so the outcome worked out on a copy is the one the commit makes.
        let mut after = self.peer_record(node_id)?;
        note_interactions(&mut after, interaction, 1, now, cap);
        let recent_threats = after.metrics.recent_threats_ms.len();
        let threat = interaction == Interaction::Threat;
        let mut events = vec![
            AuditEvent::new(
                if threat {
                    EventType::ThreatDetected
                } else {
                    EventType::SignatureInvalid
                },
                format!(
                    "{} from {node_id}",
                    if threat {
                        "threat detected"
                    } else {
                        "invalid signature"
                    }
                ),
            )
            .with_peer(node_id)
            .with_details(json!({"threats_last_hour": recent_threats})),
        ];
        let rule = match interaction {
            Interaction::SignatureFailure => Some("signature failure"),
            Interaction::Threat if recent_threats >= 2 => {
                Some("two threat detections within an hour")
            }
            _ => None,
        };
        let drop = rule
            .filter(|_| after.trust_level != TrustLevel::Untrusted)
            .map(|rule| {
                let change = TrustChange {
                    peer: node_id.to_string(),
                    from: after.trust_level,
                    to: TrustLevel::Untrusted,
                    actor: crate::audit::ACTOR_SYSTEM.to_string(),
                    reason: format!("{rule}: dropped to UNTRUSTED"),
                };
                events.push(
                    AuditEvent::trust_level_changed(
                        node_id,
                        change.from,
                        change.to,
                        Actor::Plugin,
                        &change.reason,
                    )
                    .with_actor(change.actor.clone()),
                );
                events.push(
                    AuditEvent::new(
                        EventType::ThreatBlocked,
                        format!("{node_id} dropped to UNTRUSTED: {rule}"),
                    )
                    .with_peer(node_id),
                );
                change
            });
        let dropped = drop.is_some();
        let updated = self.store.update_peer_recorded(
            self.audit.recorder(),
            node_id,
            move |r| {
                note_interactions(r, interaction, 1, now, cap);
                if dropped {
                    set_trust_level(r, TrustLevel::Untrusted, now, None);
                }
            },
            events,
        )?;
        updated.ok_or_else(|| CoordError::UnknownPeer(clip(node_id)))?;
        match drop {
            Some(change) => {
                self.refresh_live_counts()?;
                Ok(TrustOutcome::Changed(change))
            }
            None => self.evaluate_trust_locked(node_id),
        }
    }
}

pub(super) fn score_components(components: &[plugin::ScoreComponent]) -> ScoreComponents {
    let get = |name: &str| {
        components
            .iter()
            .find(|c| c.name == name)
            .map(|c| if c.value.is_finite() { c.value } else { 0.0 })
            .unwrap_or(0.0)
    };
    ScoreComponents {
        success_rate: get("success-rate"),
        uptime: get("uptime"),
        // The default policy reports the term as 1 - penalty.
        threat_penalty: 1.0 - get("threat-penalty"),
        integrity: get("integrity"),
    }
}

/// Moves `r` to trust level `to` at `now` (with an operator's pin and a
/// new evidence period when `operator` decided it).
pub(super) fn set_trust_level(
    r: &mut PeerRecord,
    to: TrustLevel,
    now: u64,
    operator: Option<OperatorLevel>,
) {
    if to < r.trust_level {
        r.last_demoted_ms = now;
    }
    r.trust_level = to;
    r.level_since_ms = now;
    r.metrics.signature_failures_since_level = 0;
    if to >= TrustLevel::Privileged || to < TrustLevel::Trusted {
        r.privileged_recommended = false;
    }
    if let Some(op) = operator {
        r.operator = Some(op);
        r.metrics.close_period();
    }
}

/// Counts `count` interactions of one kind into `r`'s metrics at `now`
/// (successes within the hourly `cap`).
pub(super) fn note_interactions(
    r: &mut PeerRecord,
    interaction: Interaction,
    count: u64,
    now: u64,
    cap: u32,
) {
    let m = &mut r.metrics;
    match interaction {
        Interaction::Success => {
            let counted = m.earned.credit(now, count, cap);
            m.interactions += counted;
            m.successes += counted;
        }
        Interaction::Observed => {
            m.observed = m.observed.saturating_add(count);
        }
        Interaction::Failure => {
            m.interactions += count;
            m.failures += count;
        }
        Interaction::Threat => {
            m.record_threat(now);
        }
        Interaction::SignatureFailure => {
            m.signature_failures += count;
            m.signature_failures_since_level += count;
        }
    }
    let checked = m.interactions.max(m.signature_failures);
    m.integrity = if checked == 0 {
        1.0
    } else {
        1.0 - (m.signature_failures as f64 / checked as f64).clamp(0.0, 1.0)
    };
    r.last_seen_ms = now;
}

/// Evidence about one peer noted on the message path and not yet applied
/// to its record.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PendingEvidence {
    /// Requests of ours the peer fulfilled.
    pub(super) fulfilled: u64,
    /// Things it did on its own initiative that we accepted.
    pub(super) observed: u64,
    /// Its envelopes refused for its own fault.
    pub(super) failed: u64,
}
