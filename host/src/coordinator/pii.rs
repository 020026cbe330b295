//! PII: the PII plugin's scan of outbound payloads, inbound payloads and
//! query answers (detect, strip or block), with the counts audited and
//! never the values.

use super::*;

impl Coordinator {
    // ---- PII ----

    /// Checks a query's answer from `peer` before the caller sees it: the
    /// reply at most [`MAX_REPLY_BYTES`] as JSON, the reason one clipped
    /// line without control characters, and both through the inbound PII
    /// scan at the peer's level (a block counts as a threat, as for any
    /// inbound payload). Returns them as the caller may see them.
    pub fn check_reply(
        &self,
        peer: &str,
        message_type: &str,
        reply: Option<Value>,
        reason: Option<String>,
    ) -> Result<(Option<Value>, Option<String>)> {
        let record = self.peer_record(peer)?;
        if let Some(reply) = &reply {
            let size = serde_json::to_vec(reply)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_REPLY_BYTES {
                return Err(CoordError::ReplyTooLarge(MAX_REPLY_BYTES));
            }
        }
        if message_type == crate::envelope::WITNESS_REQUEST {
            // A witness page is checked by its signatures, entry by entry,
            // before anything of it is shown ([`crate::mesh::fetch`]); a
            // PII rewrite would break every one of them.
            return Ok((reply, reason.as_deref().map(clip_reason)));
        }
        let mut answer = json!({
            "reply": reply,
            "reason": reason.as_deref().map(clip_reason),
        });
        self.scan_payload(
            peer,
            record.trust_level,
            Direction::Inbound,
            message_type,
            &mut answer,
        )?;
        let reason = answer["reason"].as_str().map(str::to_string);
        Ok((
            Some(answer["reply"].take()).filter(|r| !r.is_null()),
            reason,
        ))
    }

    /// Runs the PII chain (the default policy or the one replacing it,
    /// then any `[[plugins.pii.add]]` policies, within one deadline) over
    /// a payload's string values and applies the merged answer
    /// ([`crate::pii::merge`]): rewrites in place, or `PII_BLOCKED`. Audits types and
    /// counts only. A plugin failure blocks the message. A blocked inbound
    /// payload counts as a threat from its sender.
    pub fn scan_payload(
        &self,
        peer: &str,
        level: TrustLevel,
        direction: Direction,
        message_type: &str,
        payload: &mut Value,
    ) -> Result<PiiReport> {
        if !crate::pii::has_content(payload) {
            return Ok(PiiReport::default());
        }
        let Ok(values) = crate::pii::string_values_capped(
            payload,
            crate::limits::MAX_PII_SCAN_VALUES,
            crate::limits::MAX_PII_SCAN_BYTES,
        ) else {
            return Err(CoordError::PayloadTooComplex);
        };
        let request = plugin::ScanRequest {
            direction,
            peer_level: to_wit_level(level),
            message_type: message_type.to_string(),
            values,
        };
        let chain = self.plugins.pii.chain();
        let plugin = chain[0].clone();
        let hash_key = self.identity.hash_secret();
        let mut hash = |span: &str| plugin::keyed_hash(hash_key, span.as_bytes());
        // 50 ms (by default) for an ordinary message, more per MiB for a
        // bulk one.
        let deadline_ms =
            crate::pii::scan_deadline_ms(plugin.limits().deadline_ms, &request.values);
        let result = match crate::pii::scan_chain(&chain, &request, deadline_ms, &mut hash) {
            Ok(result) => result,
            Err((failed, err)) => {
                // The policy's own words (a panic message, a refusal) are
                // kept, minus any payload text they quote.
                let reported = scrub_plugin_error(&err, &request.values);
                self.plugin_failed(&failed, Some(peer), reported)?;
                let err = scrub_plugin_error(&err, &request.values);
                self.record(AuditEvent::pii(
                    PiiOutcome::Blocked,
                    Some(peer),
                    &[("plugin_failure", 1)],
                ))?;
                return Err(CoordError::Plugin(err));
            }
        };
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut blocking: Vec<String> = Vec::new();
        for d in &result.detections {
            let name = d.pii_type.as_str();
            *counts.entry(name.to_string()).or_default() += 1;
            // A key or a number cannot be rewritten without changing the
            // document's shape: anything but `pass` there blocks.
            let structural = request
                .values
                .get(d.value_index as usize)
                .is_some_and(crate::pii::is_structural);
            let blocks = d.action == plugin::PiiAction::Block
                || (structural && d.action != plugin::PiiAction::Pass);
            if blocks && !blocking.iter().any(|b| b == name) {
                blocking.push(name.to_string());
            }
        }
        let count_list: Vec<(&str, u32)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if result.blocked || !blocking.is_empty() {
            blocking.sort();
            self.record(AuditEvent::pii(
                PiiOutcome::Blocked,
                Some(peer),
                &count_list,
            ))?;
            if direction == Direction::Inbound {
                let _guard = self.lock_decisions();
                let _ = self.record_interaction_locked(peer, Interaction::Threat)?;
            }
            return Err(CoordError::PiiBlocked { types: blocking });
        }
        if let Err(err) = crate::pii::apply_rewrites(payload, &request.values, &result.rewritten) {
            let err = PluginError::Refused {
                plugin: plugin.label(),
                reason: err.to_string(),
            };
            self.plugin_failed(
                &plugin,
                Some(peer),
                PluginError::Refused {
                    plugin: plugin.label(),
                    reason: err.to_string(),
                },
            )?;
            return Err(CoordError::Plugin(err));
        }
        if !counts.is_empty() {
            let outcome = if result.rewritten.is_empty() {
                PiiOutcome::Detected
            } else {
                PiiOutcome::Stripped
            };
            self.record(AuditEvent::pii(outcome, Some(peer), &count_list))?;
        }
        Ok(PiiReport {
            counts,
            rewritten: result.rewritten.len(),
        })
    }
}
