//! The outbound pipeline, in the order a send passes it:
//!
//! 1. **gates** (`gates`): the breaker, then the capability's trust gate;
//! 2. **budget** ([`crate::budget`]): the caller's limits and the spend so far;
//! 3. **PII** (`pii`): the payload scanned, stripped or blocked;
//! 4. **sign**: the envelope signed with the node's key and checked
//!    against the peer's inbound limits (protocol §9.5);
//! 5. **log**: the signed frame, its idempotency key and its `message_sent`
//!    record committed to the outbox in one job, durable in the message
//!    log before `send` returns.
//!
//! `prepare_envelope_in` runs stages 1–4 (a query uses it too, with its
//! session); `queue_submit` adds stage 5.
//!
//! Delivery (the federation layer's worker) then reports acknowledgements
//! and refusals back here, each removal committed with its record.

use super::*;

impl Coordinator {
    /// The outbound pipeline of [`Coordinator::send`] (breaker gate,
    /// capability gate, budget, PII, signature) without the outbox: returns
    /// the signed frame. Queued envelopes carry no session (they may be
    /// delivered on a later one).
    pub fn prepare_envelope(&self, request: SendRequest) -> Result<(SendReceipt, Vec<u8>)> {
        self.prepare_envelope_in(request, None)
    }

    /// [`Coordinator::prepare_envelope`] for a synchronous request
    /// (`query`, `broadcast`) over the session `session_id`, which the
    /// envelope names. Nothing is queued; the caller audits the outcome.
    pub fn prepare_envelope_in(
        &self,
        request: SendRequest,
        session_id: Option<String>,
    ) -> Result<(SendReceipt, Vec<u8>)> {
        // Order matters: the breaker gate comes before any other work.
        let record = self.peer_record(&request.peer)?;
        check_breaker(&record)?;
        let capabilities = self
            .message_capabilities(&request.message_type)
            .ok_or_else(|| CoordError::UnknownMessageType(clip(&request.message_type)))?;
        check_gates(&record, &capabilities)?;
        let budget = match &request.budget {
            Some(value) => Budget::from_json_value(value)?,
            None => Budget::with_default_hops(
                crate::budget::MAX_TOKENS_CEILING,
                crate::budget::MAX_USD_CEILING,
            )?,
        };
        let budget = budget.next_hop()?;
        let mut payload = request.payload;
        let pii = self.scan_payload(
            &request.peer,
            record.trust_level,
            Direction::Outbound,
            &request.message_type,
            &mut payload,
        )?;
        // Counted on the tree before it is signed: the same count the
        // receiver makes of the frame's text (§9.5).
        let shape = crate::limits::Shape::of_value(&payload);
        let now = self.now();
        let envelope = Envelope {
            id: envelope::ordered_id(now),
            source: self.node_id().to_string(),
            target: request.peer.clone(),
            session: session_id,
            message_type: request.message_type.clone(),
            payload,
            timestamp_ms: now,
            nonce: envelope::random_id(),
            hop_count: budget.hop_count(),
            budget,
        };
        let frame = envelope.sign(&self.identity).to_frame();
        check_outbound_size(
            &request.message_type,
            record.trust_level,
            frame.len(),
            &shape,
        )?;
        Ok((
            SendReceipt {
                envelope_id: envelope.id,
                peer: request.peer,
                pii: pii.counts,
                frame_bytes: frame.len(),
            },
            frame,
        ))
    }

    // ---- outbound messages ----

    /// The outbound pipeline up to the durable outbox: breaker gate, then
    /// capability gate, budget, PII, signature; the signed frame is
    /// committed to the outbox before this returns.
    pub fn send(&self, request: SendRequest) -> Result<SendReceipt> {
        Ok(self.queue(request)?.0)
    }

    /// [`Coordinator::send`], also returning the queued outbox entry so
    /// the delivery worker can send it at once instead of finding it in
    /// the table.
    /// The entry is `None` when the send repeated a committed idempotency
    /// key: the original entry is (or was) the one to deliver.
    pub fn queue(&self, request: SendRequest) -> Result<(SendReceipt, Option<OutboxEntry>)> {
        let (receipt, entry, ticket) = self.queue_submit(request)?;
        match ticket.wait()? {
            Some(original) => Ok((original, None)),
            None => Ok((receipt, entry)),
        }
    }

    /// [`Coordinator::queue`] without waiting for the commit: the entry is
    /// durable (and may be delivered) only once the ticket resolves `Ok`.
    /// A caller with many sends queues them all, then waits: they share
    /// group commits.
    ///
    /// With an idempotency key, the key is committed with the entry; a
    /// key already committed for the same request makes the ticket
    /// resolve to the original receipt, and nothing is queued (see
    /// [`QueuedTicket::wait`]).
    pub fn queue_submit(
        &self,
        request: SendRequest,
    ) -> Result<(SendReceipt, Option<OutboxEntry>, QueuedTicket)> {
        let keyed = match &request.idempotency_key {
            Some(key) => {
                check_idempotency_key(key)?;
                let digest = request_digest(&request);
                // A retry of a committed send is answered without signing
                // or scanning anything again.
                if let Some(done) = self.idempotent_answer(key, &digest)? {
                    return Ok(done);
                }
                Some((key.clone(), digest))
            }
            None => None,
        };
        let message_type = request.message_type.clone();
        let (receipt, frame) = self.prepare_envelope(request)?;
        let entry = OutboxEntry {
            envelope_id: receipt.envelope_id.clone(),
            target: receipt.peer.clone(),
            bytes: frame.into(),
            attempts: 0,
            next_attempt_ms: self.now(),
        };
        crate::store::check_outbox_entry(&entry)?;
        let queued = AuditEvent::new(
            EventType::MessageSent,
            format!("{message_type} queued for {}", receipt.peer),
        )
        .with_peer(&receipt.peer)
        .with_details(json!({
            "envelope_id": receipt.envelope_id,
            "message_type": message_type,
            "bytes": receipt.frame_bytes,
            "state": "queued",
            "idempotency_key": keyed.as_ref().map(|(k, _)| k),
        }));
        let now = self.now();
        let record = keyed.map(|(key, digest)| {
            (
                key,
                crate::store::IdempotencyRecord {
                    digest,
                    created_ms: now,
                    receipt: serde_json::to_value(&receipt).expect("receipts serialise"),
                },
            )
        });
        // The entry, its key and its `message_sent` record commit together;
        // a key committed meanwhile by a concurrent retry wins, and this
        // entry is not written.
        let job_entry = entry.clone();
        let index = self.store.outbox_put_hook(&entry);
        let ticket = self.store.submit_logged_recorded(
            self.audit.recorder(),
            move |tx| {
                if let Some((key, record)) = &record {
                    if let Some(seen) = crate::store::idempotency_get_in(tx.txn(), key)?
                        .filter(|seen| seen.live_at(record.created_ms, IDEMPOTENCY_WINDOW_MS))
                    {
                        return Ok((Keyed::Seen(key.clone(), seen, record.digest.clone()), false));
                    }
                    crate::store::idempotency_put_in(tx, key, record)?;
                }
                outbox_put_in(tx, &job_entry)?;
                Ok((Keyed::Fresh, true))
            },
            vec![queued],
            Some(move |outcome: &Keyed| {
                if matches!(outcome, Keyed::Fresh) {
                    index(&());
                }
            }),
            Persist::Durable,
        )?;
        Ok((receipt, Some(entry), QueuedTicket(Queued::Pending(ticket))))
    }

    /// The answer to a keyed send whose key is already committed: the
    /// original receipt for the same request, `IDEMPOTENCY_KEY_REUSED` for
    /// another; `None` for a key not seen within the window.
    pub(super) fn idempotent_answer(
        &self,
        key: &str,
        digest: &str,
    ) -> Result<Option<(SendReceipt, Option<OutboxEntry>, QueuedTicket)>> {
        let Some(seen) = self
            .store
            .idempotency_get(key)?
            .filter(|seen| seen.live_at(self.now(), IDEMPOTENCY_WINDOW_MS))
        else {
            return Ok(None);
        };
        let receipt = original_receipt(key, &seen, digest)?;
        Ok(Some((
            receipt.clone(),
            None,
            QueuedTicket(Queued::Repeated(receipt)),
        )))
    }

    /// The result recorded under a `query` or `broadcast` idempotency key
    /// within its window, for the request whose digest is `digest`
    /// ([`query_digest`], [`broadcast_digest`]); `None` for a key not
    /// seen; `IDEMPOTENCY_KEY_REUSED` for a key recorded for another
    /// request (a send's key included).
    pub fn idempotent_result(&self, key: &str, digest: &str) -> Result<Option<Value>> {
        check_idempotency_key(key)?;
        let Some(seen) = self
            .store
            .idempotency_get(key)?
            .filter(|seen| seen.live_at(self.now(), IDEMPOTENCY_WINDOW_MS))
        else {
            return Ok(None);
        };
        if seen.digest != digest {
            return Err(CoordError::IdempotencyKeyReused(clip(key)));
        }
        Ok(Some(seen.receipt))
    }

    /// Records `result` under a `query` or `broadcast` idempotency key
    /// (for 24 h, like a send's) and returns it; when a concurrent call
    /// with the same key recorded first, its result is returned instead
    /// (or `IDEMPOTENCY_KEY_REUSED`, for another request).
    pub fn remember_result(&self, key: &str, digest: &str, result: Value) -> Result<Value> {
        check_idempotency_key(key)?;
        let record = crate::store::IdempotencyRecord {
            digest: digest.to_string(),
            created_ms: self.now(),
            receipt: result,
        };
        let kept = self
            .store
            .idempotency_put_if_absent(key, record, IDEMPOTENCY_WINDOW_MS)?;
        if kept.digest != digest {
            return Err(CoordError::IdempotencyKeyReused(clip(key)));
        }
        Ok(kept.receipt)
    }

    /// An outbox entry was acknowledged by its target: removes it and
    /// audits the delivery in one commit, and notes the success. Returns
    /// `false` (and records nothing) when the entry was already gone, e.g.
    /// acknowledged through another attempt.
    pub fn delivered(&self, entry: &OutboxEntry, status: AckStatus) -> Result<bool> {
        let ticket = self.submit_delivered(entry, status, None)?;
        self.conclude_delivered(entry, status, ticket)
    }

    /// [`Coordinator::delivered`] for many acknowledged entries, each with
    /// the receiver's signed receipt when it gave one (kept in the
    /// `delivered` record, for `audit proof`): all removals are queued
    /// first and share group commits. One result per entry, in order.
    pub fn delivered_many(
        &self,
        entries: &[(OutboxEntry, AckStatus, Option<crate::receipt::Receipt>)],
    ) -> Vec<Result<bool>> {
        let tickets: Vec<_> = entries
            .iter()
            .map(|(entry, status, receipt)| self.submit_delivered(entry, *status, receipt.as_ref()))
            .collect();
        entries
            .iter()
            .zip(tickets)
            .map(|((entry, status, _), ticket)| self.conclude_delivered(entry, *status, ticket?))
            .collect()
    }

    pub(super) fn conclude_delivered(
        &self,
        entry: &OutboxEntry,
        status: AckStatus,
        ticket: crate::journal::TypedTicket<bool>,
    ) -> Result<bool> {
        let (existed, _) = ticket.wait().map_err(crate::audit::journal_error)?;
        if existed && status != AckStatus::Rejected {
            self.note_fulfilled(&entry.target);
        }
        self.forget_delivery_error(&entry.envelope_id);
        Ok(existed)
    }

    /// Queues the removal of an acknowledged entry with its `delivered`
    /// record (written only if the entry was still there).
    pub(super) fn submit_delivered(
        &self,
        entry: &OutboxEntry,
        status: AckStatus,
        receipt: Option<&crate::receipt::Receipt>,
    ) -> Result<crate::journal::TypedTicket<bool>> {
        let (peer, id) = (entry.target.as_str(), entry.envelope_id.clone());
        let mut details = json!({
            "envelope_id": id,
            "state": "delivered",
            "status": status,
            "attempts": entry.attempts + 1,
        });
        if let Some(receipt) = receipt {
            details["receipt"] = receipt_details(receipt, &self.peer_public_key(peer));
        }
        let event = AuditEvent::new(EventType::MessageSent, format!("{id} delivered to {peer}"))
            .with_peer(peer)
            .with_details(details);
        // Nobody waits on it with a deadline: it rides the next commit a
        // `send` or an inbound envelope needs.
        self.submit_removal(entry, event, Persist::Lazy)
    }

    /// Queues the removal of `entry` from the outbox with `event`, which is
    /// recorded only if the entry was still there; the ticket yields
    /// whether it was.
    pub(super) fn submit_removal(
        &self,
        entry: &OutboxEntry,
        event: AuditEvent,
        persist: Persist,
    ) -> Result<crate::journal::TypedTicket<bool>> {
        let id = entry.envelope_id.clone();
        Ok(self.store.submit_logged_recorded(
            self.audit.recorder(),
            move |tx| {
                let existed = outbox_remove_in(tx, &id)?;
                Ok((existed, existed))
            },
            vec![event],
            Some(self.store.outbox_remove_hook(&entry.envelope_id)),
            persist,
        )?)
    }

    /// Whether `entry` was queued before its target's level last went
    /// down: it passed the capability gate and the PII scan for a level
    /// the peer no longer holds, so it must not be delivered. Reads the
    /// envelope's timestamp only for a peer that was ever demoted.
    pub fn queued_before_demotion(&self, entry: &OutboxEntry) -> Result<bool> {
        let Some(record) = self.store.get_peer(&entry.target)? else {
            return Ok(false);
        };
        if record.last_demoted_ms == 0 {
            return Ok(false);
        }
        #[derive(Deserialize)]
        struct Stamp {
            timestamp_ms: u64,
        }
        let stamp = envelope::SignedEnvelope::from_frame(&entry.bytes)
            .ok()
            .and_then(|signed| serde_json::from_slice::<Stamp>(&signed.bytes).ok());
        // Our own envelope always parses; if it somehow does not, it is
        // safer not to send it.
        Ok(stamp.is_none_or(|s| s.timestamp_ms <= record.last_demoted_ms))
    }

    /// An outbox entry was refused for good by its target (`code`), or
    /// dropped here ([`LEVEL_LOWERED`]): removes it and audits the refusal
    /// in one commit.
    pub fn refused_for_good(&self, entry: &OutboxEntry, code: &str) -> Result<bool> {
        self.refused_for_good_with(entry, code, None)
    }

    /// [`Coordinator::refused_for_good`], keeping the receiver's signed
    /// receipt of the refusal in the record when it gave one.
    pub fn refused_for_good_with(
        &self,
        entry: &OutboxEntry,
        code: &str,
        receipt: Option<&crate::receipt::Receipt>,
    ) -> Result<bool> {
        let (peer, id) = (entry.target.as_str(), entry.envelope_id.clone());
        // A stale envelope refused after earlier attempts may have been
        // processed by one of them (its acknowledgement lost, and the
        // receiver's record of it since forgotten): say so, not "refused".
        let outcome_unknown = code == "STALE_TIMESTAMP" && entry.attempts > 0;
        let summary = if code == LEVEL_LOWERED {
            format!(
                "{id} to {peer} dropped: queued before {peer}'s trust level was lowered; not sent"
            )
        } else if outcome_unknown {
            format!(
                "{id} expired undelivered to {peer} ({code} after {} attempts; an earlier attempt may have been processed); not retried",
                entry.attempts
            )
        } else {
            format!("{id} refused by {peer}: {code}; not retried")
        };
        let mut details = json!({
            "envelope_id": id,
            "reason": code,
            "final": true,
            "outcome_unknown": outcome_unknown,
        });
        if let Some(receipt) = receipt {
            details["receipt"] = receipt_details(receipt, &self.peer_public_key(peer));
        }
        let event = AuditEvent::new(EventType::MessageRejected, summary)
            .with_peer(peer)
            .with_details(details);
        let (existed, _) = self
            .submit_removal(entry, event, Persist::Durable)?
            .wait()
            .map_err(crate::audit::journal_error)?;
        if existed {
            // Nothing fails silently: the sender's operator sees it in the
            // log, in `status` and in `outbox --failed`.
            tracing::warn!(peer = %peer, envelope_id = %id, code, "message refused for good, not retried");
            self.refused_for_good.fetch_add(1, Ordering::Relaxed);
        }
        self.forget_delivery_error(&id);
        Ok(existed)
    }

    /// Remembers why the last delivery attempt of `envelope_id` failed
    /// (shown by `outbox`).
    pub fn note_delivery_error(&self, envelope_id: &str, code: &str) {
        let mut errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        errors.insert(envelope_id.to_string(), code.to_string());
    }

    pub(super) fn forget_delivery_error(&self, envelope_id: &str) {
        let mut errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        errors.remove(envelope_id);
    }

    /// Messages waiting in the outbox (for `peer` only, if given), the
    /// next due first, at most `limit`.
    pub fn outbox(&self, peer: Option<&str>, limit: usize) -> Result<Vec<OutboxView>> {
        let now = self.now();
        let errors = self
            .delivery_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(self
            .store
            .outbox_list(peer, limit)?
            .iter()
            .map(|e| outbox_view(e, now, errors.get(&e.envelope_id).cloned()))
            .collect())
    }

    /// Cancels a queued message: removed from the outbox with a
    /// `message_rejected` record (reason `CANCELLED`, by the operator).
    /// Refused when it is not queued (delivered, refused or unknown).
    pub fn cancel_outbox(&self, envelope_id: &str, reason: &str) -> Result<OutboxView> {
        let reason = validate_reason(reason)?;
        let Some(entry) = self.store.outbox_get(envelope_id)? else {
            return Err(CoordError::InvalidInput(format!(
                "no queued message {}: it was delivered, refused or never queued (see `agentfed outbox --failed` and the audit log)",
                clip(envelope_id)
            )));
        };
        let view = outbox_view(&entry, self.now(), None);
        let event = AuditEvent::new(
            EventType::MessageRejected,
            format!(
                "{} to {} cancelled by the operator: {reason}",
                entry.envelope_id, entry.target
            ),
        )
        .with_peer(&entry.target)
        .with_actor(crate::audit::ACTOR_OPERATOR)
        .with_details(json!({
            "envelope_id": entry.envelope_id,
            "reason": "CANCELLED",
            "final": true,
            "cancelled": reason,
        }));
        let (existed, _) = self
            .submit_removal(&entry, event, Persist::Durable)?
            .wait()
            .map_err(crate::audit::journal_error)?;
        self.forget_delivery_error(envelope_id);
        if !existed {
            return Err(CoordError::InvalidInput(
                "the message left the outbox meanwhile (delivered or refused)".into(),
            ));
        }
        Ok(view)
    }

    /// What became of an envelope this node sent to `peer`: still
    /// queued, delivered (with the receiver's status), or refused for
    /// good (with the code), from the outbox and the audit log.
    pub fn delivery_outcome(&self, peer: &str, envelope_id: &str) -> Result<DeliveryOutcome> {
        if let Some(entry) = self.store.outbox_get(envelope_id)? {
            let error = self
                .delivery_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(envelope_id)
                .cloned();
            return Ok(DeliveryOutcome::Queued {
                attempts: entry.attempts,
                last_error: error,
            });
        }
        let records = self
            .audit
            .query(&crate::audit::AuditQuery {
                event_types: vec![EventType::MessageSent, EventType::MessageRejected],
                peer: Some(peer.to_string()),
                order: crate::audit::Order::NewestFirst,
                limit: Some(10_000),
                ..Default::default()
            })
            .map_err(CoordError::Audit)?;
        for r in records {
            if r.details["envelope_id"] != envelope_id {
                continue;
            }
            if r.event_type == EventType::MessageSent && r.details["state"] == "delivered" {
                return Ok(DeliveryOutcome::Delivered {
                    status: r.details["status"].as_str().unwrap_or("").to_lowercase(),
                });
            }
            if r.event_type == EventType::MessageRejected && r.details["final"] == true {
                return Ok(DeliveryOutcome::Refused {
                    code: r.details["reason"]
                        .as_str()
                        .unwrap_or("REFUSED")
                        .to_string(),
                });
            }
        }
        Ok(DeliveryOutcome::Unknown)
    }
}

/// A receipt as audit records keep it: the receipt with the key that
/// checked it, so that `audit proof` can print a self-contained proof.
pub(super) fn receipt_details(receipt: &crate::receipt::Receipt, public_key: &str) -> Value {
    let mut value = serde_json::to_value(receipt).unwrap_or(Value::Null);
    value["public_key"] = Value::String(public_key.to_string());
    value
}

/// The sender's side of protocol §9.5: a frame the peer would refuse for
/// its size or shape (at its level in this node's view) is not sent.
pub(super) fn check_outbound_size(
    message_type: &str,
    level: TrustLevel,
    frame_bytes: usize,
    shape: &crate::limits::Shape,
) -> Result<()> {
    let limit = crate::limits::inbound_limit(message_type, level);
    if frame_bytes > limit.frame_bytes {
        return Err(CoordError::MessageTooLarge {
            message_type: clip(message_type),
            bytes: frame_bytes,
            limit: limit.frame_bytes,
            level,
        });
    }
    if !shape.within(&limit.shape) {
        return Err(CoordError::ShapeTooLarge {
            message_type: clip(message_type),
            level,
        });
    }
    Ok(())
}

/// What committing a keyed send found.
pub(super) enum Keyed {
    /// The entry (and its key, if any) were written.
    Fresh,
    /// The key was committed before: the key, its record, and this
    /// request's digest.
    Seen(String, crate::store::IdempotencyRecord, String),
}

/// The receipt a committed key stands for, if `digest` is its request's.
pub(super) fn original_receipt(
    key: &str,
    seen: &crate::store::IdempotencyRecord,
    digest: &str,
) -> Result<SendReceipt> {
    if seen.digest != digest {
        return Err(CoordError::IdempotencyKeyReused(clip(key)));
    }
    serde_json::from_value(seen.receipt.clone()).map_err(|e| {
        CoordError::InvalidInput(format!("stored receipt of key `{}`: {e}", clip(key)))
    })
}

/// The pending commit of a queued envelope ([`Coordinator::queue_submit`]).
pub struct QueuedTicket(Queued);

pub(super) enum Queued {
    /// The entry is being committed.
    Pending(crate::journal::TypedTicket<Keyed>),
    /// A retry of a committed keyed send: nothing was queued.
    Repeated(SendReceipt),
}

impl std::fmt::Debug for QueuedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedTicket").finish_non_exhaustive()
    }
}

impl QueuedTicket {
    /// Blocks until the entry and its audit record are durable. `Some`
    /// with the original receipt when the send repeated a committed
    /// idempotency key: nothing was queued, and there is nothing to
    /// deliver.
    pub fn wait(self) -> Result<Option<SendReceipt>> {
        match self.0 {
            Queued::Repeated(receipt) => Ok(Some(receipt)),
            Queued::Pending(ticket) => {
                let (outcome, _) = ticket.wait().map_err(crate::audit::journal_error)?;
                match outcome {
                    Keyed::Fresh => Ok(None),
                    Keyed::Seen(key, seen, digest) => {
                        original_receipt(&key, &seen, &digest).map(Some)
                    }
                }
            }
        }
    }
}
