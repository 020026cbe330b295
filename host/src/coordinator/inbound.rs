//! The inbound pipeline, in the order an envelope passes it:
//!
//! 1. **verify**: the frame's size, the sender's rate, the sender known
//!    and its breaker ACTIVE (SUSPENDED and EVICTED peers are refused
//!    before anything is parsed), the size its level allows, then the
//!    signature against its key on record (batched), the addresses and
//!    the payload's size and shape for its type;
//! 2. **dedupe**: a retransmission gets its stored acknowledgement back;
//! 3. **gates**: the timestamp window, then the message type's
//!    capabilities (and `receive` for anything but ping, heartbeat and
//!    status) at the sender's trust level, then the hop limit;
//! 4. **PII** (`pii`): the inbound scan;
//! 5. **handler**: the message handler plugin decides and may reply;
//! 6. **log**: the dedupe entry, the acknowledgement, the inbox message
//!    and the `message_received` record committed in one job;
//! 7. **ack**: only then is the acknowledgement sent.

use super::*;

/// The acknowledgement's reason when a handler accepted a message into the
/// inbox from a sender whose level does not allow `receive`.
pub const RECEIVE_DENIED_REASON: &str = "RECEIVE_DENIED: not stored; the sender's trust level does not allow receive (ATTESTED and above)";

/// The acknowledgement's reason when the outbound PII scan blocked a
/// handler's reply.
pub const REPLY_BLOCKED_REASON: &str =
    "PII_BLOCKED: the reply was blocked by this node's PII policy";

/// The local code of an outbox message dropped because its target was
/// demoted after it was queued ([`Coordinator::queued_before_demotion`]).
pub const LEVEL_LOWERED: &str = "LEVEL_LOWERED";

/// Largest query reply handed to a caller, as JSON: 1 MiB, the control
/// API's request size.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// Whether `s` is a session id: 32 lowercase hex digits.
pub(super) fn is_session_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Largest envelope frame accepted (the transport caps messages too).
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024 + 4096;
/// How long processed envelope ids (and their acknowledgements) are
/// remembered. Must exceed the skew window, so a replay is either
/// remembered or stale; a week, so that a sender that was offline for
/// days and retries an envelope whose acknowledgement it lost still gets
/// that acknowledgement rather than `STALE_TIMESTAMP`.
pub const DEDUPE_WINDOW_MS: u64 = 7 * 24 * HOUR_MS;
const _: () = assert!(DEDUPE_WINDOW_MS > 2 * crate::config::MAX_CLOCK_SKEW_SECS * 1000);

/// The acknowledgement a receiver sends for an envelope, committed before
/// it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The envelope acknowledged.
    pub envelope_id: String,
    /// What happened.
    pub status: AckStatus,
    /// The handler's reply payload (`replied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// A constant reason code (`rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Outcome of an inbound envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored in the inbox.
    Accepted,
    /// Answered by the handler.
    Replied,
    /// Refused by the handler or a policy.
    Rejected,
}

/// A message in the local inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Inbox sequence number.
    #[serde(default)]
    pub seq: u64,
    /// Envelope id.
    pub envelope_id: String,
    /// Sender.
    pub from: String,
    /// Message type.
    pub message_type: String,
    /// Payload after the inbound PII scan.
    pub payload: Value,
    /// Sender's timestamp.
    pub sent_at_ms: u64,
    /// When it was accepted here.
    pub received_at_ms: u64,
}

/// Why an inbound frame was refused before it was processed. Codes are
/// constant and sent back to the peer; nothing of the input is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundRefusal {
    /// Not a frame.
    #[error("MALFORMED_FRAME")]
    MalformedFrame,
    /// Over the size limit of the message type at the sender's level
    /// ([`crate::limits`]).
    #[error("MESSAGE_TOO_LARGE")]
    MessageTooLarge,
    /// The payload has more elements, strings or nesting than its type
    /// allows, or more than one PII call may carry ([`crate::limits`]).
    #[error("PAYLOAD_TOO_COMPLEX")]
    PayloadTooComplex,
    /// The sender is not a known peer.
    #[error("UNKNOWN_SENDER")]
    UnknownSender,
    /// The sender's breaker is SUSPENDED.
    #[error("PEER_SUSPENDED")]
    PeerSuspended,
    /// The sender's breaker is EVICTED.
    #[error("PEER_EVICTED")]
    PeerEvicted,
    /// The signature does not verify with the sender's key.
    #[error("BAD_SIGNATURE")]
    BadSignature,
    /// Source or target do not match the session.
    #[error("WRONG_ADDRESS")]
    WrongAddress,
    /// Timestamp outside the skew window.
    #[error("STALE_TIMESTAMP")]
    StaleTimestamp,
    /// Unknown message type.
    #[error("UNKNOWN_MESSAGE_TYPE")]
    UnknownMessageType,
    /// The sender's level does not allow this message type.
    #[error("CAPABILITY_DENIED")]
    CapabilityDenied,
    /// Hop limit exceeded.
    #[error("HOP_LIMIT_EXCEEDED")]
    HopLimitExceeded,
    /// The inbound PII scan blocked it.
    #[error("PII_BLOCKED")]
    PiiBlocked,
    /// A plugin failed; failing closed.
    #[error("PLUGIN_FAILED")]
    PluginFailed,
    /// Another copy of this envelope is being processed right now; a
    /// retry gets its acknowledgement. (Without this, a retransmission
    /// racing a slow commit could be refused `STALE_TIMESTAMP`, a final
    /// refusal, for an envelope that is in fact processed.)
    #[error("IN_PROGRESS")]
    InProgress,
    /// The sender is over its inbound envelope or byte rate
    /// (`[transport] peer_envelopes_per_sec`, `peer_bytes_per_sec`); a
    /// later retry is accepted.
    #[error("RATE_LIMITED")]
    RateLimited,
    /// The sender has as many messages or bytes waiting in this node's
    /// inbox as its quota allows (`[transport] peer_inbox_messages`,
    /// `peer_inbox_bytes`); a retry is accepted once the local agent has
    /// removed what it processed.
    #[error("INBOX_FULL")]
    InboxFull,
}

impl InboundRefusal {
    /// The constant code, as sent to the peer.
    pub fn code(&self) -> &'static str {
        match self {
            InboundRefusal::MalformedFrame => "MALFORMED_FRAME",
            InboundRefusal::MessageTooLarge => "MESSAGE_TOO_LARGE",
            InboundRefusal::UnknownSender => "UNKNOWN_SENDER",
            InboundRefusal::PeerSuspended => "PEER_SUSPENDED",
            InboundRefusal::PeerEvicted => "PEER_EVICTED",
            InboundRefusal::BadSignature => "BAD_SIGNATURE",
            InboundRefusal::WrongAddress => "WRONG_ADDRESS",
            InboundRefusal::StaleTimestamp => "STALE_TIMESTAMP",
            InboundRefusal::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            InboundRefusal::CapabilityDenied => "CAPABILITY_DENIED",
            InboundRefusal::HopLimitExceeded => "HOP_LIMIT_EXCEEDED",
            InboundRefusal::PiiBlocked => "PII_BLOCKED",
            InboundRefusal::PluginFailed => "PLUGIN_FAILED",
            InboundRefusal::InProgress => "IN_PROGRESS",
            InboundRefusal::RateLimited => "RATE_LIMITED",
            InboundRefusal::InboxFull => "INBOX_FULL",
            InboundRefusal::PayloadTooComplex => "PAYLOAD_TOO_COMPLEX",
        }
    }

    /// Whether the refusal shows the sender misbehaving (a failure counted
    /// in full against its trust), rather than this node's state, its
    /// clock, a plugin of ours, or a race. Bad signatures and PII blocks
    /// count separately, as signature failures and threats.
    pub fn is_senders_fault(&self) -> bool {
        matches!(
            self,
            InboundRefusal::MalformedFrame
                | InboundRefusal::MessageTooLarge
                | InboundRefusal::PayloadTooComplex
                | InboundRefusal::WrongAddress
                | InboundRefusal::UnknownMessageType
                | InboundRefusal::CapabilityDenied
                | InboundRefusal::HopLimitExceeded
                | InboundRefusal::RateLimited
        )
    }
}

/// Per-peer token buckets for inbound envelopes and bytes (real time: they
/// protect this machine's resources, whatever the decision clock says).
/// A bucket holds two seconds' worth, so a burst passes and a sustained
/// flood is held to the rate.
#[derive(Debug, Default)]
pub(super) struct RateLimiter {
    buckets: std::sync::Mutex<HashMap<String, RateBucket>>,
}

#[derive(Debug)]
pub(super) struct RateBucket {
    refilled: Instant,
    envelopes: f64,
    bytes: f64,
}

impl RateLimiter {
    /// Takes one envelope of `bytes` from `peer`'s buckets; `false` when
    /// either is empty (nothing is taken then).
    pub(super) fn admit(&self, peer: &str, bytes: usize, per_sec: u64, bytes_per_sec: u64) -> bool {
        const BURST_SECS: f64 = 2.0;
        let (cap_n, cap_b) = (
            per_sec as f64 * BURST_SECS,
            bytes_per_sec as f64 * BURST_SECS,
        );
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(peer.to_string()).or_insert(RateBucket {
            refilled: now,
            envelopes: cap_n,
            bytes: cap_b,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.envelopes = (bucket.envelopes + elapsed * per_sec as f64).min(cap_n);
        bucket.bytes = (bucket.bytes + elapsed * bytes_per_sec as f64).min(cap_b);
        // One envelope larger than the whole bucket can still pass when
        // the bucket is full (the size limits bound it separately).
        let bytes = (bytes as f64).min(cap_b);
        if bucket.envelopes < 1.0 || bucket.bytes < bytes {
            return false;
        }
        bucket.envelopes -= 1.0;
        bucket.bytes -= bytes;
        true
    }
}

/// `(sender, envelope id)` of inbound envelopes being processed.
pub(super) type PendingSet = Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>;

/// Marks an inbound envelope as being processed until dropped.
pub(super) struct PendingInbound {
    set: PendingSet,
    key: (String, String),
}

impl PendingInbound {
    /// `None` when a copy of the envelope is already being processed.
    pub(super) fn claim(
        set: &PendingSet,
        sender: &str,
        envelope_id: &str,
    ) -> Option<PendingInbound> {
        let key = (sender.to_string(), envelope_id.to_string());
        let fresh = set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        fresh.then(|| PendingInbound {
            set: Arc::clone(set),
            key,
        })
    }
}

impl Drop for PendingInbound {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Duplicates and refusals audited one by one per sender, kind and
/// window; the rest are counted into summaries.
pub const AUDIT_BURST: u32 = 16;
/// The window of [`AUDIT_BURST`]: one minute.
pub const AUDIT_WINDOW_MS: u64 = 60_000;

/// Per `(sender, kind)` (a refusal code, or `REPLAY`), how many records
/// were written in the current window and how many were held back. Peers
/// control how often these events happen; the audit log must not grow one
/// record per envelope they send.
#[derive(Debug, Default)]
pub(super) struct AuditThrottle {
    windows: std::sync::Mutex<HashMap<(String, &'static str), AuditWindow>>,
}

#[derive(Debug, Default)]
pub(super) struct AuditWindow {
    started_ms: u64,
    recorded: u32,
    /// Events past the burst, reported with the next record or a summary.
    unreported: u64,
}

impl AuditThrottle {
    /// Whether to record this event now; `Some(n)` with the number of
    /// events held back before it, `None` to count it instead.
    pub(super) fn admit(&self, sender: &str, kind: &'static str, now_ms: u64) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry((sender.to_string(), kind)).or_default();
        if now_ms.saturating_sub(window.started_ms) >= AUDIT_WINDOW_MS {
            // A new window; what was held back is reported now.
            window.started_ms = now_ms;
            window.recorded = 0;
        }
        if window.recorded >= AUDIT_BURST {
            window.unreported += 1;
            return None;
        }
        window.recorded += 1;
        Some(std::mem::take(&mut window.unreported))
    }

    /// Takes the counts held back in windows that have ended (for summary
    /// records), and forgets idle windows.
    pub(super) fn take_expired(&self, now_ms: u64) -> Vec<(String, &'static str, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        windows.retain(|(sender, kind), w| {
            let ended = now_ms.saturating_sub(w.started_ms) >= AUDIT_WINDOW_MS;
            if ended && w.unreported > 0 {
                out.push((sender.clone(), *kind, std::mem::take(&mut w.unreported)));
            }
            !ended
        });
        out
    }
}

/// A frame whose signature a batch verification accepted, and the key it
/// was verified with.
pub(super) struct Verified {
    signed: envelope::SignedEnvelope,
    key: ed25519_dalek::VerifyingKey,
}

/// An inbound envelope past its checks.
pub(super) enum Processed {
    /// A retransmission of an envelope already processed: its stored
    /// acknowledgement.
    Answered(Ack),
    /// Handled; its records are queued for the next group commit.
    Committing {
        ack: Ack,
        ticket: crate::journal::TypedTicket<InboundCommit>,
        /// Held until the commit is waited for.
        _pending: PendingInbound,
    },
}

impl Coordinator {
    // ---- inbound messages ----

    /// The largest frame `peer` may send at its current trust level
    /// ([`crate::limits::max_frame_for_level`]); the smallest limit when
    /// it is not known or cannot be read.
    pub fn inbound_message_limit(&self, peer: &str) -> usize {
        let level = match self.store.get_peer(peer) {
            Ok(Some(record)) => record.trust_level,
            _ => TrustLevel::Untrusted,
        };
        crate::limits::max_frame_for_level(level)
    }

    /// Processes one inbound frame from `session_peer` (the node id the
    /// transport authenticated): verify → gates → PII (inbound) → handler
    /// plugin → durable record → acknowledgement. A retransmission of an
    /// envelope already processed gets the stored acknowledgement again
    /// and is not processed twice. Refusals are audited with their code.
    pub fn receive(
        &self,
        session_peer: &str,
        frame: &[u8],
    ) -> Result<std::result::Result<Ack, InboundRefusal>> {
        let processed = self.receive_checked(session_peer, frame, None);
        self.conclude(session_peer, processed)
    }

    /// [`Coordinator::receive`] for a burst of frames from one peer, with
    /// one answer per frame in order. Every frame is checked and handled
    /// first and all their commits are queued together, then awaited: the
    /// burst shares group commits and costs one wait instead of one per
    /// frame.
    pub fn receive_many(
        &self,
        session_peer: &str,
        frames: &[Vec<u8>],
    ) -> Vec<Result<std::result::Result<Ack, InboundRefusal>>> {
        let verified = self.verify_burst(session_peer, frames);
        let processed: Vec<_> = frames
            .iter()
            .zip(verified)
            .map(|(frame, verified)| self.receive_checked(session_peer, frame, verified))
            .collect();
        processed
            .into_iter()
            .map(|p| self.conclude(session_peer, p))
            .collect()
    }

    /// The stored acknowledgement of envelope `envelope_id` from `sender`
    /// if it was processed before; the copy is then audited as a duplicate.
    pub(super) fn processed_before(&self, sender: &str, envelope_id: &str) -> Result<Option<Ack>> {
        let Some(stored) = self.store.inbound_ack(sender, envelope_id)? else {
            return Ok(None);
        };
        let Ok(ack) = serde_json::from_slice::<Ack>(&stored) else {
            return Ok(None);
        };
        self.audit_duplicate(sender, &ack);
        Ok(Some(ack))
    }

    /// Records a duplicate (`message_duplicate`, reason `REPLAY`): the
    /// first [`AUDIT_BURST`] per sender and minute one by one,
    /// the rest counted into the next record (`unreported_before`). The
    /// record rides the next commit without being waited for: answering a
    /// duplicate stays a read, and a burst of retransmissions after a
    /// reconnect does not turn into a series of `fdatasync`s.
    pub(super) fn audit_duplicate(&self, sender: &str, ack: &Ack) {
        let now = self.now();
        let Some(unreported_before) = self.audit_throttle.admit(sender, "REPLAY", now) else {
            return;
        };
        let mut details = json!({
            "envelope_id": ack.envelope_id,
            "reason": "REPLAY",
            "status": ack.status,
        });
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(
            EventType::MessageDuplicate,
            format!(
                "{} from {sender} again (replay or retransmission): answered with the stored acknowledgement, not processed again",
                clip(&ack.envelope_id)
            ),
        )
        .with_peer(sender)
        .with_details(details);
        self.record_lazily(event, "cannot audit a duplicate envelope");
    }

    /// Queues `event` to ride the next commit, without waiting for it: for
    /// records of events a peer controls the rate of, which acknowledge
    /// nothing. A failure to queue is logged (`what`), not returned.
    pub(super) fn record_lazily(&self, event: AuditEvent, what: &str) {
        if let Err(e) = self.store.submit_recorded(
            self.audit.recorder(),
            |_| Ok(((), true)),
            vec![event],
            None::<fn(&())>,
            Persist::Lazy,
        ) {
            tracing::warn!("{what}: {e}");
        }
    }

    /// Records an inbound refusal (`message_rejected`): the first
    /// [`AUDIT_BURST`] per sender, code and minute one by one, the rest
    /// counted into the next record (`unreported_before`) or a summary the
    /// timer writes when the minute ends. Not waited for: a refusal
    /// acknowledges nothing, and a flood of bad frames must not turn into
    /// a flood of `fdatasync`s.
    pub(super) fn audit_refusal(&self, sender: &str, refusal: InboundRefusal) {
        let code: &'static str = refusal.code();
        let context = self.take_refusal_context(sender, code);
        let Some(unreported_before) = self.audit_throttle.admit(sender, code, self.now()) else {
            return;
        };
        let mut details = json!({"reason": code});
        let mut summary = format!("inbound envelope refused: {code}");
        if let Some(Value::Object(extra)) = context {
            if let (Some(t), Some(c), Some(level)) = (
                extra.get("message_type").and_then(Value::as_str),
                extra.get("missing_capability").and_then(Value::as_str),
                extra.get("sender_level").and_then(Value::as_str),
            ) {
                summary = format!(
                    "inbound {t} refused: CAPABILITY_DENIED ({sender} is {level} here; {t} needs {c}, which takes {})",
                    extra
                        .get("needed_level")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                );
            } else if let (Some(t), Some(e)) = (
                extra.get("message_type").and_then(Value::as_str),
                extra.get("plugin_error").and_then(Value::as_str),
            ) {
                summary = format!("inbound {t} refused: {code}: {e}");
            }
            for (key, value) in extra {
                details[key] = value;
            }
        }
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(EventType::MessageRejected, summary)
            .with_peer(sender)
            .with_details(details);
        self.record_lazily(event, "cannot audit an inbound refusal");
    }

    /// Most contexts kept per sender and code before the oldest is
    /// dropped (each is taken by the refusal's audit record right after).
    const MAX_REFUSAL_CONTEXTS: usize = 256;

    /// Remembers what the audit record of the refusal being made should
    /// say beyond its code ([`Coordinator::audit_refusal`] takes it).
    pub(super) fn note_refusal_context(
        &self,
        sender: &str,
        refusal: InboundRefusal,
        context: Value,
    ) {
        let mut map = self
            .refusal_context
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let queue = map.entry((sender.to_string(), refusal.code())).or_default();
        if queue.len() >= Self::MAX_REFUSAL_CONTEXTS {
            queue.pop_front();
        }
        queue.push_back(context);
    }

    pub(super) fn take_refusal_context(&self, sender: &str, code: &'static str) -> Option<Value> {
        let mut map = self
            .refusal_context
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (sender.to_string(), code);
        let queue = map.get_mut(&key)?;
        let context = queue.pop_front();
        if queue.is_empty() {
            map.remove(&key);
        }
        context
    }

    /// Records an envelope answered with a reply (`message_received`,
    /// status `replied`), throttled per sender like refusals
    /// ([`Coordinator::audit_refusal`]); not waited for.
    pub(super) fn audit_reply(&self, sender: &str, envelope: &Envelope, ack: &Ack) {
        let Some(unreported_before) = self.audit_throttle.admit(sender, "REPLIED", self.now())
        else {
            return;
        };
        let mut details = json!({"envelope_id": envelope.id, "message_type": envelope.message_type, "status": ack.status, "session": envelope.session});
        if unreported_before > 0 {
            details["unreported_before"] = json!(unreported_before);
        }
        let event = AuditEvent::new(
            EventType::MessageReceived,
            format!("{} from {sender}: {:?}", envelope.message_type, ack.status),
        )
        .with_peer(sender)
        .with_details(details);
        self.record_lazily(event, "cannot audit an answered envelope");
    }

    /// Writes one summary record per sender and kind whose throttle window
    /// ended with events held back (the timer calls it).
    pub(super) fn flush_audit_summaries(&self) -> Result<()> {
        for (sender, kind, count) in self.audit_throttle.take_expired(self.now()) {
            let (event_type, summary) = if kind == "REPLAY" {
                (
                    EventType::MessageDuplicate,
                    format!(
                        "{count} more duplicate envelope(s) from {sender} in the last minute, not recorded one by one"
                    ),
                )
            } else if kind == "REPLIED" {
                (
                    EventType::MessageReceived,
                    format!(
                        "{count} more envelope(s) from {sender} answered with a reply in the last minute, not recorded one by one"
                    ),
                )
            } else {
                (
                    EventType::MessageRejected,
                    format!(
                        "{count} more inbound envelope(s) from {sender} refused {kind} in the last minute, not recorded one by one"
                    ),
                )
            };
            self.record(
                AuditEvent::new(event_type, summary)
                    .with_peer(&sender)
                    .with_details(json!({"reason": kind, "summary": true, "count": count})),
            )?;
        }
        Ok(())
    }

    /// Waits for a processed envelope's commit, or audits its refusal.
    pub(super) fn conclude(
        &self,
        session_peer: &str,
        processed: Result<std::result::Result<Processed, InboundRefusal>>,
    ) -> Result<std::result::Result<Ack, InboundRefusal>> {
        match processed? {
            Ok(Processed::Answered(ack)) => Ok(Ok(ack)),
            Ok(Processed::Committing { ack, ticket, .. }) => {
                let (outcome, _) = ticket.wait().map_err(crate::audit::journal_error)?;
                if let InboundCommit::Duplicate { ack: Some(stored) } = outcome {
                    // Processed meanwhile through another attempt.
                    return Ok(Ok(serde_json::from_slice(&stored).unwrap_or(ack)));
                }
                if matches!(outcome, InboundCommit::Fresh { .. })
                    && ack.status != AckStatus::Rejected
                {
                    // The peer's own initiative: it keeps the peer seen
                    // and never earns trust (only work we ask for does).
                    self.note_observed(session_peer);
                }
                Ok(Ok(ack))
            }
            // Not a refusal of the envelope: its first copy is recorded.
            Err(InboundRefusal::InProgress) => Ok(Err(InboundRefusal::InProgress)),
            Err(refusal) => {
                if refusal.is_senders_fault() {
                    self.note_failed(session_peer);
                }
                self.audit_refusal(session_peer, refusal);
                Ok(Err(refusal))
            }
        }
    }

    /// The decompressed key of `manifest` (cached), or `None` when it is
    /// not a valid Ed25519 key.
    pub(super) fn peer_key(
        &self,
        manifest: &crate::identity::Manifest,
    ) -> Option<ed25519_dalek::VerifyingKey> {
        /// Enough for any federation; past it the cache starts over.
        const MAX_CACHED_KEYS: usize = 4096;
        let mut keys = self.peer_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = keys.get(&manifest.public_key) {
            return Some(*key);
        }
        // A weak (small-order) key would let batch verification accept
        // signatures that prove nothing.
        let key = manifest.verifying_key().ok().filter(|k| !k.is_weak())?;
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(manifest.public_key.clone(), key);
        Some(key)
    }

    /// Batch-verifies the signatures of a burst of frames from
    /// `session_peer`: for each frame, its parsed form and the key it was
    /// verified with, if its signature is known to be valid. All `None`
    /// when the batch does not verify (then each frame is verified alone,
    /// which finds the bad ones) or is too small to gain from it.
    pub(super) fn verify_burst(
        &self,
        session_peer: &str,
        frames: &[Vec<u8>],
    ) -> Vec<Option<Verified>> {
        let unverified = || frames.iter().map(|_| None).collect();
        if frames.len() < 2 {
            return unverified();
        }
        let Ok(Some(record)) = self.store.get_peer(session_peer) else {
            return unverified();
        };
        let Some(key) = self.peer_key(&record.manifest.manifest) else {
            return unverified();
        };
        let signed: Vec<Option<envelope::SignedEnvelope>> = frames
            .iter()
            .map(|frame| {
                (frame.len() <= MAX_FRAME_BYTES)
                    .then(|| envelope::SignedEnvelope::from_frame(frame).ok())
                    .flatten()
            })
            .collect();
        let batch: Vec<&envelope::SignedEnvelope> = signed.iter().flatten().collect();
        if batch.len() < 2 || !envelope::verify_batch(&batch, &key) {
            return unverified();
        }
        signed
            .into_iter()
            .map(|s| s.map(|signed| Verified { signed, key }))
            .collect()
    }

    /// Checks, scans and handles one frame and queues its commit;
    /// `verified` is the frame as [`Coordinator::verify_burst`] verified
    /// it, if it did.
    pub(super) fn receive_checked(
        &self,
        session_peer: &str,
        frame: &[u8],
        verified: Option<Verified>,
    ) -> Result<std::result::Result<Processed, InboundRefusal>> {
        use InboundRefusal as R;
        if frame.len() > MAX_FRAME_BYTES {
            return Ok(Err(R::MessageTooLarge));
        }
        let t = &self.config.transport;
        if !self.inbound_rates.admit(
            session_peer,
            frame.len(),
            t.peer_envelopes_per_sec,
            t.peer_bytes_per_sec,
        ) {
            return Ok(Err(R::RateLimited));
        }
        let Some(record) = self.store.get_peer(session_peer)? else {
            return Ok(Err(R::UnknownSender));
        };
        match record.breaker.state {
            BreakerState::Suspended => return Ok(Err(R::PeerSuspended)),
            BreakerState::Evicted => return Ok(Err(R::PeerEvicted)),
            BreakerState::Active => {}
        }
        // Larger than anything the sender's level may send: refused on
        // the length alone, before the bytes are copied, hashed or parsed.
        if frame.len() > crate::limits::max_frame_for_level(record.trust_level) {
            return Ok(Err(R::MessageTooLarge));
        }
        let (signed, verified_with) = match verified {
            Some(Verified { signed, key }) => (signed, Some(key)),
            None => match envelope::SignedEnvelope::from_frame(frame) {
                Ok(signed) => (signed, None),
                Err(_) => return Ok(Err(R::MalformedFrame)),
            },
        };
        let Some(key) = self.peer_key(&record.manifest.manifest) else {
            return Ok(Err(R::UnknownSender));
        };
        // The batch counts only if the peer's key is still the one it
        // was verified with (the manifest may have changed meanwhile).
        let verdict = if verified_with == Some(key) {
            self.verified_batched.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            let verdict = signed.verify(&key);
            if verdict.is_ok() {
                self.verified_alone.fetch_add(1, Ordering::Relaxed);
            }
            verdict
        };
        if verdict.is_err() {
            let _guard = self.lock_decisions();
            self.record_interaction_locked(session_peer, Interaction::SignatureFailure)?;
            return Ok(Err(R::BadSignature));
        }
        // The envelope's fields, its payload only counted: no tree is
        // built until its size and shape fit its type and our view of the
        // sender.
        let head = match crate::limits::parse_head(&signed.bytes) {
            Ok(head) => head,
            Err(crate::limits::HeadError::TooComplex) => return Ok(Err(R::PayloadTooComplex)),
            Err(crate::limits::HeadError::Malformed) => return Ok(Err(R::MalformedFrame)),
        };
        if head.source != session_peer || head.target != self.node_id() {
            return Ok(Err(R::WrongAddress));
        }
        let limit = crate::limits::inbound_limit(&head.message_type, record.trust_level);
        if frame.len() > limit.frame_bytes {
            return Ok(Err(R::MessageTooLarge));
        }
        if !head.payload.within(&limit.shape) {
            return Ok(Err(R::PayloadTooComplex));
        }
        // The one tree of the payload; the copy of the bytes goes at once.
        let parsed = signed.parse_verified();
        drop(signed);
        let mut envelope = match parsed {
            Ok(envelope) => envelope,
            Err(_) => return Ok(Err(R::MalformedFrame)),
        };
        // The id keys the dedupe and acknowledgement tables: refuse one
        // they cannot hold before any work is done (a storage error here
        // would tell the sender to retry forever).
        if envelope.id.is_empty() || envelope.id.len() > crate::store::MAX_KEY_BYTES {
            return Ok(Err(R::MalformedFrame));
        }
        // The session field is recorded in `message_received`: only its
        // grammar (absent, null, or a session id) may reach the audit log.
        if envelope
            .session
            .as_deref()
            .is_some_and(|s| !is_session_id(s))
        {
            return Ok(Err(R::MalformedFrame));
        }
        // A retransmission (the sender lost our acknowledgement) or a
        // replay: answer as before, process nothing.
        if let Some(ack) = self.processed_before(session_peer, &envelope.id)? {
            return Ok(Ok(Processed::Answered(ack)));
        }
        let Some(pending) =
            PendingInbound::claim(&self.inbound_pending, session_peer, &envelope.id)
        else {
            return Ok(Err(R::InProgress));
        };
        // Asked again under the claim: another copy may have committed
        // (and let go of its claim) since the first look.
        if let Some(ack) = self.processed_before(session_peer, &envelope.id)? {
            return Ok(Ok(Processed::Answered(ack)));
        }
        let now = self.now();
        let skew_ms = self
            .config
            .transport
            .max_clock_skew_secs
            .saturating_mul(1000);
        if envelope.timestamp_ms.abs_diff(now) > skew_ms {
            return Ok(Err(R::StaleTimestamp));
        }
        let Some(required) = self.message_capabilities(&envelope.message_type) else {
            return Ok(Err(R::UnknownMessageType));
        };
        let receive = [Capability::Receive];
        let needs_receive = !matches!(
            envelope.message_type.as_str(),
            "ping" | "heartbeat" | "status" | "status-broadcast"
        );
        let extra: &[Capability] = if needs_receive { &receive } else { &[] };
        if let Some(&missing) = required
            .iter()
            .chain(extra)
            .find(|&&c| !trust::allowed(record.trust_level, c))
        {
            self.note_refusal_context(
                session_peer,
                R::CapabilityDenied,
                json!({
                    "message_type": envelope.message_type,
                    "missing_capability": missing.as_str(),
                    "needed_level": missing.required_level().to_string(),
                    "sender_level": record.trust_level.to_string(),
                }),
            );
            return Ok(Err(R::CapabilityDenied));
        }
        if envelope.hop_count > envelope.budget.max_hops() {
            return Ok(Err(R::HopLimitExceeded));
        }
        if envelope.message_type == crate::envelope::WITNESS_REQUEST {
            // Answered by the host from its witness chain, like a ping:
            // nothing is stored, so nothing is committed.
            drop(pending);
            let ack = self.answer_witness_request(&envelope);
            self.note_observed(session_peer);
            self.audit_reply(session_peer, &envelope, &ack);
            return Ok(Ok(Processed::Answered(ack)));
        }
        // Scanned and rewritten in place: the payload is never cloned.
        let mut payload = std::mem::take(&mut envelope.payload);
        match self.scan_payload(
            session_peer,
            record.trust_level,
            Direction::Inbound,
            &envelope.message_type,
            &mut payload,
        ) {
            Ok(_) => {}
            Err(CoordError::PiiBlocked { .. }) => return Ok(Err(R::PiiBlocked)),
            Err(CoordError::PayloadTooComplex) => return Ok(Err(R::PayloadTooComplex)),
            Err(CoordError::Plugin(err)) => {
                self.note_refusal_context(
                    session_peer,
                    R::PluginFailed,
                    json!({"message_type": envelope.message_type, "plugin_kind": "pii", "plugin_error": err.to_string()}),
                );
                return Ok(Err(R::PluginFailed));
            }
            Err(other) => return Err(other),
        }
        let view = plugin::MessageView {
            id: envelope.id.clone(),
            source: envelope.source.clone(),
            message_type: envelope.message_type.clone(),
            payload_json: payload.to_string(),
            sender_level: to_wit_level(record.trust_level),
            hop_count: envelope.hop_count,
            sent_at_ms: envelope.timestamp_ms,
        };
        let handler = self.plugins.handler.get();
        let decision = handler.handle_message(&view);
        // The payload's text copy is not needed past the handler: freed
        // before the inbox copy is made.
        drop(view);
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => {
                self.note_refusal_context(
                    session_peer,
                    R::PluginFailed,
                    json!({"message_type": envelope.message_type, "plugin_kind": "handler", "plugin_error": err.to_string()}),
                );
                self.plugin_failed(&handler, Some(session_peer), err)?;
                return Ok(Err(R::PluginFailed));
            }
        };
        // Writing into the local agent's inbox needs `receive`, whatever
        // the handler says: a peer below ATTESTED (which may still send
        // ping, status, heartbeat and status-broadcast) must not put text
        // in front of the agent.
        let decision = match decision {
            plugin::HandlerDecision::Accept
                if !trust::allowed(record.trust_level, Capability::Receive) =>
            {
                plugin::HandlerDecision::Reject(RECEIVE_DENIED_REASON.to_string())
            }
            // What a handler answers leaves this node: the outbound PII
            // scan applies to it as to any payload we send this peer.
            plugin::HandlerDecision::Reply(text) => {
                let mut reply = serde_json::from_str(&text).unwrap_or(Value::String(text));
                match self.scan_payload(
                    session_peer,
                    record.trust_level,
                    Direction::Outbound,
                    &envelope.message_type,
                    &mut reply,
                ) {
                    Ok(_) => plugin::HandlerDecision::Reply(reply.to_string()),
                    Err(CoordError::PiiBlocked { .. } | CoordError::PayloadTooComplex) => {
                        plugin::HandlerDecision::Reject(REPLY_BLOCKED_REASON.to_string())
                    }
                    Err(CoordError::Plugin(_)) => return Ok(Err(R::PluginFailed)),
                    Err(other) => return Err(other),
                }
            }
            other => other,
        };
        let (ack, inbox) = match decision {
            plugin::HandlerDecision::Accept => {
                let (messages, bytes) = self.store.inbox_usage(session_peer);
                let t = &self.config.transport;
                if messages >= t.peer_inbox_messages
                    || bytes.saturating_add(frame.len() as u64) > t.peer_inbox_bytes
                {
                    return Ok(Err(R::InboxFull));
                }
                let message = InboxMessage {
                    seq: 0,
                    envelope_id: envelope.id.clone(),
                    from: envelope.source.clone(),
                    message_type: envelope.message_type.clone(),
                    payload,
                    sent_at_ms: envelope.timestamp_ms,
                    received_at_ms: now,
                };
                let bytes = serde_json::to_vec(&message).expect("inbox messages serialise");
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Accepted,
                        reply: None,
                        reason: None,
                    },
                    Some(bytes),
                )
            }
            plugin::HandlerDecision::Reply(text) => {
                let reply = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Replied,
                        reply: Some(reply),
                        reason: None,
                    },
                    None,
                )
            }
            plugin::HandlerDecision::Reject(reason) => {
                let reason = clip_reason(&reason);
                (
                    Ack {
                        envelope_id: envelope.id.clone(),
                        status: AckStatus::Rejected,
                        reply: None,
                        reason: Some(reason),
                    },
                    None,
                )
            }
        };
        if ack.status == AckStatus::Replied {
            // A reply changes nothing here (handlers have no side effects:
            // their only imports are the log, the clock, config and status),
            // so answering again is as good as a stored answer: nothing is
            // committed, and `message_received` is throttled like refusals,
            // so a flood of pings or heartbeats cannot grow the state file.
            drop(pending);
            self.note_observed(session_peer);
            self.audit_reply(session_peer, &envelope, &ack);
            return Ok(Ok(Processed::Answered(ack)));
        }
        let ack_bytes = serde_json::to_vec(&ack).expect("acks serialise");
        // The dedupe entry, the inbox message, the stored acknowledgement
        // and the `message_received` record commit together (group
        // commit): after a crash, all of them are there or none.
        let record = InboundRecord::new(
            session_peer,
            &envelope.id,
            now,
            inbox.as_deref(),
            &ack_bytes,
        )?;
        let received = AuditEvent::new(EventType::MessageReceived, format!("{} from {session_peer}: {:?}", envelope.message_type, ack.status))
            .with_peer(session_peer)
            .with_details(json!({"envelope_id": envelope.id, "message_type": envelope.message_type, "status": ack.status, "session": envelope.session}));
        let ticket =
            self.store.submit_logged_recorded(
                self.audit.recorder(),
                move |tx| {
                    let outcome = commit_inbound_in(tx, &record)?;
                    let fresh = matches!(outcome, InboundCommit::Fresh { .. });
                    Ok((outcome, fresh))
                },
                vec![received],
                Some(self.store.inbound_commit_hook(
                    session_peer,
                    inbox.as_ref().map_or(0, |m| m.len() as u64),
                )),
                Persist::Durable,
            )?;
        Ok(Ok(Processed::Committing {
            ack,
            ticket,
            _pending: pending,
        }))
    }

    /// Removes the inbox messages numbered up to `through_seq` (the
    /// consumer has processed them); returns how many. Their receipt
    /// stays in the audit log.
    pub fn inbox_remove_through(&self, through_seq: u64) -> Result<u64> {
        Ok(self.store.inbox_remove_through(through_seq)?)
    }

    /// Messages in the local inbox after `after_seq`, oldest first.
    pub fn inbox(&self, after_seq: u64, limit: usize) -> Result<Vec<InboxMessage>> {
        self.store
            .inbox_list(after_seq, limit)?
            .into_iter()
            .map(|(seq, bytes)| {
                let mut message: InboxMessage = serde_json::from_slice(&bytes)
                    .map_err(|_| CoordError::Store(StoreError::Decode { table: "inbox" }))?;
                message.seq = seq;
                Ok(message)
            })
            .collect()
    }

    /// Forgets envelope ids (and their stored acknowledgements) older than
    /// the dedupe window, a bounded transaction at a time so that inbound
    /// commits are not held up behind one large prune. Returns how many.
    ///
    /// Safe because the window is far longer than the timestamp skew
    /// accepted: a replay that passes the skew check was first received at
    /// most twice the skew window (at most [`crate::config::MAX_CLOCK_SKEW_SECS`])
    /// earlier, so its id is still remembered.
    pub fn prune_dedupe(&self) -> Result<u64> {
        /// Ids forgotten per transaction, and transactions per call (the
        /// rest waits for the next tick, so a large backlog cannot hold
        /// up a shutdown).
        const PRUNE_BATCH: usize = 10_000;
        /// At least this many batches per call, then more while the
        /// backlog lasts and [`PRUNE_TIME_BUDGET`] allows: so pruning keeps
        /// up with a sustained inbound rate well above what one tick's
        /// fixed share would cover.
        const PRUNE_MIN_BATCHES: usize = 10;
        const PRUNE_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);
        let cutoff = self.now().saturating_sub(DEDUPE_WINDOW_MS);
        let started = Instant::now();
        let mut pruned = 0;
        for batch in 0.. {
            let n = self.store.dedupe_prune_older_than(cutoff, PRUNE_BATCH)?;
            pruned += n;
            if n < PRUNE_BATCH as u64
                || (batch + 1 >= PRUNE_MIN_BATCHES && started.elapsed() >= PRUNE_TIME_BUDGET)
            {
                break;
            }
        }
        Ok(pruned)
    }
}
