//! Envelopes: the unit of federation traffic, signed over the exact bytes
//! that travel.
//!
//! An envelope is serialised once to JSON; the Ed25519 signature covers
//! `ENVELOPE_DOMAIN || those bytes`, and the bytes travel verbatim in a
//! frame, so the receiver verifies what was sent and never a
//! re-serialisation of it.
//!
//! Frame layout (version 1): one byte `0x01`, the 64-byte signature, then
//! the envelope JSON.
//!
//! Field rules beyond the JSON types (`docs/protocol.md` §9.2): every
//! field but `session` is required; integers (`timestamp_ms`,
//! `hop_count`, the budget's counts) are JSON integers, never `8.0` or
//! `8e0`; and the hop rule ([`Envelope::hops_agree`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::budget::Budget;
use ed25519_dalek::VerifyingKey;

use crate::identity::Identity;
use crate::trust::Capability;

/// Prefix of every signed envelope, so an envelope signature can never be
/// mistaken for a manifest or handshake signature.
pub const ENVELOPE_DOMAIN: &[u8] = b"agentfed-envelope-v1\n";

/// Version byte of the frame layout.
pub const FRAME_VERSION: u8 = 1;

/// Message types and the capabilities a peer needs for each (every one of
/// them, at the peer's trust level in the local view).
///
/// Consensus traffic (`trust-change`, `topology-change`) needs
/// `collaborative-task`, the ladder's capability for joint work, since the
/// ladder has no separate consensus rung.
pub const MESSAGE_TYPES: &[(&str, &[Capability])] = &[
    ("task-assignment", &[Capability::Send]),
    ("memory-query", &[Capability::QueryRedacted]),
    ("memory-response", &[Capability::QueryRedacted]),
    ("context-share", &[Capability::ShareContext]),
    ("status-broadcast", &[Capability::Status]),
    ("status", &[Capability::Status]),
    ("heartbeat", &[Capability::Ping]),
    ("ping", &[Capability::Ping]),
    ("agent-spawn", &[Capability::RemoteSpawn]),
    ("agent-handoff", &[Capability::Send]),
    ("claim-event", &[Capability::Send]),
    ("trust-change", &[Capability::CollaborativeTask]),
    ("topology-change", &[Capability::CollaborativeTask]),
    (WITNESS_REQUEST, &[Capability::ShareContext]),
];

/// The message type that asks a peer for a page of its mesh witness chain
/// (protocol §9.6). Answered by the host, never by a handler plugin.
pub const WITNESS_REQUEST: &str = "witness-request";

/// The capabilities `message_type` requires, or `None` for an unknown type.
pub fn required_capabilities(message_type: &str) -> Option<&'static [Capability]> {
    MESSAGE_TYPES
        .iter()
        .find(|(name, _)| *name == message_type)
        .map(|(_, caps)| *caps)
}

/// The signed content of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique per sender: 16 random bytes, hex.
    pub id: String,
    /// Sender node id.
    pub source: String,
    /// Receiver node id.
    pub target: String,
    /// Session id, once a session exists; the only optional field (absent
    /// reads as `null`).
    pub session: Option<String>,
    /// One of [`MESSAGE_TYPES`].
    pub message_type: String,
    /// The payload, after the outbound PII scan.
    pub payload: Value,
    /// Sender's clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// 16 random bytes, hex: makes every envelope's bytes unique.
    pub nonce: String,
    /// Hops travelled, this one included: 1 on the first hop, and always
    /// equal to the budget's `hop_count` ([`Envelope::hops_agree`]).
    pub hop_count: u32,
    /// What the work may still cost.
    pub budget: Budget,
}

/// An envelope with its exact bytes and signature.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedEnvelope {
    /// The JSON bytes that were signed.
    pub bytes: Vec<u8>,
    /// Ed25519 over `ENVELOPE_DOMAIN || bytes`.
    pub signature: [u8; 64],
}

/// Why a frame was refused. Display strings are constant: they are sent
/// back to peers and audited, and never echo input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Wrong version byte or too short.
    #[error("MALFORMED_FRAME")]
    MalformedFrame,
    /// The bytes are not an envelope.
    #[error("MALFORMED_ENVELOPE")]
    MalformedEnvelope,
    /// The signature does not verify with the sender's key.
    #[error("BAD_SIGNATURE")]
    BadSignature,
}

impl Envelope {
    /// The hop rule: the first hop is 1 (an envelope is only ever sent
    /// with a budget that [`Budget::next_hop`] advanced), and the
    /// top-level `hop_count` equals `budget.hop_count`. Two counts that
    /// disagree would let a sender pass the hop limit with one while
    /// policies and forwarders read the other. Receivers refuse an
    /// envelope that breaks it as malformed.
    pub fn hops_agree(&self) -> bool {
        self.hop_count >= 1 && self.hop_count == self.budget.hop_count()
    }

    /// Serialises and signs with the node's identity key.
    pub fn sign(&self, identity: &Identity) -> SignedEnvelope {
        let bytes = serde_json::to_vec(self).expect("envelopes always serialise");
        let signature = identity.sign(&signing_input(&bytes)).to_bytes();
        SignedEnvelope { bytes, signature }
    }
}

impl SignedEnvelope {
    /// The frame that travels and is kept in the outbox.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(1 + 64 + self.bytes.len());
        frame.push(FRAME_VERSION);
        frame.extend_from_slice(&self.signature);
        frame.extend_from_slice(&self.bytes);
        frame
    }

    /// Splits a frame; checks only its shape.
    pub fn from_frame(frame: &[u8]) -> Result<SignedEnvelope, EnvelopeError> {
        if frame.len() < 1 + 64 + 2 || frame[0] != FRAME_VERSION {
            return Err(EnvelopeError::MalformedFrame);
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&frame[1..65]);
        Ok(SignedEnvelope {
            bytes: frame[65..].to_vec(),
            signature,
        })
    }

    /// Verifies the signature (`verify_strict`) with the sender's public
    /// key, then parses. The key is taken decompressed: receivers keep it
    /// per peer instead of decompressing it for every envelope.
    pub fn open(&self, sender_key: &VerifyingKey) -> Result<Envelope, EnvelopeError> {
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        if sender_key
            .verify_strict(&signing_input(&self.bytes), &signature)
            .is_err()
        {
            return Err(EnvelopeError::BadSignature);
        }
        self.parse_verified()
    }

    /// Parses an envelope whose signature [`verify_batch`] accepted: the
    /// JSON, the budget's ranges and the hop rule
    /// ([`Envelope::hops_agree`]).
    pub(crate) fn parse_verified(&self) -> Result<Envelope, EnvelopeError> {
        let envelope: Envelope =
            serde_json::from_slice(&self.bytes).map_err(|_| EnvelopeError::MalformedEnvelope)?;
        if !envelope.hops_agree() {
            return Err(EnvelopeError::MalformedEnvelope);
        }
        Ok(envelope)
    }
}

impl SignedEnvelope {
    /// Verifies the signature (`verify_strict`) without parsing, so the
    /// receiver can check the envelope's size and shape
    /// ([`crate::limits::parse_head`]) before any JSON tree is built.
    pub fn verify(&self, sender_key: &VerifyingKey) -> Result<(), EnvelopeError> {
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        sender_key
            .verify_strict(&signing_input(&self.bytes), &signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// Verifies the signatures of several envelopes from one sender at once
/// (Ed25519 batch verification: one multiscalar multiplication for the
/// whole batch, roughly half the cost per signature of verifying them one
/// by one). `true` only if every signature is valid; on `false` the
/// caller verifies them one at a time ([`SignedEnvelope::open`]) to find
/// which are not.
///
/// Batch verification does not refuse a small-order `R` the way
/// `verify_strict` does; only the holder of the sender's key can make such
/// a signature, and it changes nothing about what was signed. The key
/// itself must not be weak (receivers refuse weak keys before this).
pub fn verify_batch(envelopes: &[&SignedEnvelope], sender_key: &VerifyingKey) -> bool {
    let inputs: Vec<Vec<u8>> = envelopes.iter().map(|e| signing_input(&e.bytes)).collect();
    let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let signatures: Vec<ed25519_dalek::Signature> = envelopes
        .iter()
        .map(|e| ed25519_dalek::Signature::from_bytes(&e.signature))
        .collect();
    let keys = vec![*sender_key; envelopes.len()];
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

fn signing_input(bytes: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(ENVELOPE_DOMAIN.len() + bytes.len());
    input.extend_from_slice(ENVELOPE_DOMAIN);
    input.extend_from_slice(bytes);
    input
}

/// 16 random bytes as hex, for ids and nonces.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    hex::encode(bytes)
}

/// An envelope id: 16 bytes as lowercase hex, the first 6 the big-endian
/// millisecond timestamp `now_ms`, the other 10 random. Ids of one sender
/// therefore sort by time, so the tables keyed by them (the sender's
/// outbox, the receiver's de-duplication and acknowledgement tables) grow
/// at one end instead of dirtying a random B-tree page per message.
/// Receivers treat ids as opaque strings.
pub fn ordered_id(now_ms: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    getrandom::fill(&mut bytes[6..]).expect("the OS provides randomness");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeId;

    #[test]
    fn ordered_ids_sort_by_time_and_differ() {
        let a = ordered_id(1_700_000_000_000);
        let b = ordered_id(1_700_000_000_001);
        let c = ordered_id(1_700_000_000_001);
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(a < b && a < c);
        assert_ne!(b, c);
        assert_eq!(&a[..12], "018bcfe56800");
    }

    fn envelope() -> Envelope {
        Envelope {
            id: random_id(),
            source: "a".into(),
            target: "b".into(),
            session: None,
            message_type: "task-assignment".into(),
            payload: serde_json::json!({"task": "x"}),
            timestamp_ms: 1,
            nonce: random_id(),
            hop_count: 1,
            budget: Budget::with_default_hops(1000, 1.0)
                .and_then(|b| b.next_hop())
                .unwrap(),
        }
    }

    #[test]
    fn hop_counts_start_at_one_and_must_agree() {
        let id = Identity::generate(&NodeId::parse("a").unwrap(), "wss://127.0.0.1:9100").unwrap();
        let key = id.verifying_key();
        let open = |e: &Envelope| SignedEnvelope::from_frame(&e.sign(&id).to_frame())?.open(&key);
        let good = envelope();
        assert!(good.hops_agree());
        assert_eq!(open(&good), Ok(good.clone()));
        let fresh = Budget::with_default_hops(1000, 1.0).unwrap();
        for (hop_count, budget) in [
            (0, fresh),                           // hop 0: never sent
            (2, good.budget),                     // top level ahead of the budget
            (1, good.budget.next_hop().unwrap()), // budget ahead of the top level
            (1, fresh),                           // budget never advanced
        ] {
            let bad = Envelope {
                hop_count,
                budget,
                ..good.clone()
            };
            assert!(!bad.hops_agree(), "{hop_count}");
            assert_eq!(open(&bad), Err(EnvelopeError::MalformedEnvelope));
        }
    }

    #[test]
    fn frames_round_trip_and_verify() {
        let id = Identity::generate(&NodeId::parse("a").unwrap(), "wss://127.0.0.1:9100").unwrap();
        let signed = envelope().sign(&id);
        let back = SignedEnvelope::from_frame(&signed.to_frame()).unwrap();
        let key = id.verifying_key();
        assert_eq!(
            back.open(&key).unwrap(),
            serde_json::from_slice(&signed.bytes).unwrap()
        );
    }

    #[test]
    fn batches_verify_only_when_every_signature_does() {
        let id = Identity::generate(&NodeId::parse("a").unwrap(), "wss://127.0.0.1:9100").unwrap();
        let other =
            Identity::generate(&NodeId::parse("b").unwrap(), "wss://127.0.0.1:9101").unwrap();
        let key = id.verifying_key();
        let mut signed: Vec<SignedEnvelope> = (0..8).map(|_| envelope().sign(&id)).collect();
        assert!(verify_batch(&signed.iter().collect::<Vec<_>>(), &key));
        // One tampered byte, or one envelope signed by someone else,
        // fails the whole batch.
        signed[3].bytes[10] ^= 1;
        assert!(!verify_batch(&signed.iter().collect::<Vec<_>>(), &key));
        signed[3] = envelope().sign(&other);
        assert!(!verify_batch(&signed.iter().collect::<Vec<_>>(), &key));
        signed[3] = envelope().sign(&id);
        signed[5].signature[0] ^= 1;
        assert!(!verify_batch(&signed.iter().collect::<Vec<_>>(), &key));
    }

    #[test]
    fn tampering_is_detected() {
        let id = Identity::generate(&NodeId::parse("a").unwrap(), "wss://127.0.0.1:9100").unwrap();
        let key = id.verifying_key();
        let mut frame = envelope().sign(&id).to_frame();
        let last = frame.len() - 2;
        frame[last] ^= 1;
        let signed = SignedEnvelope::from_frame(&frame).unwrap();
        assert_eq!(signed.open(&key), Err(EnvelopeError::BadSignature));
        assert_eq!(
            SignedEnvelope::from_frame(&[2; 80]),
            Err(EnvelopeError::MalformedFrame)
        );
    }

    #[test]
    fn every_message_type_has_capabilities() {
        assert_eq!(required_capabilities("ping"), Some(&[Capability::Ping][..]));
        assert_eq!(required_capabilities("nope"), None);
        assert!(MESSAGE_TYPES.iter().all(|(_, caps)| !caps.is_empty()));
    }
}
