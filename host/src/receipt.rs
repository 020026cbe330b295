//! Signed delivery receipts (protocol §10.4).
//!
//! A receiver that processed an envelope says so with a receipt: its
//! Ed25519 signature over who received what from whom, the digest of the
//! envelope bytes exactly as they arrived, and the outcome. The sender
//! checks the receipt against the receiver's pinned manifest key before it
//! removes the envelope from its outbox, so a forged acknowledgement (a
//! man in the middle on `ws://`, a bug, a lying relay) cannot make it drop
//! a message that was never delivered. The sender keeps the receipt in its
//! audit record; `agentfed audit proof ENVELOPE_ID` prints it, and anyone
//! with the receiver's public key can check it offline: proof of delivery.
//!
//! This module owns the receipt's canonical bytes, signing and checking;
//! it knows nothing of sessions or stores.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, verify_ed25519};

/// Domain separation: a receipt signature can never be mistaken for a
/// signature over an envelope, a manifest or a handshake transcript.
pub const RECEIPT_DOMAIN: &[u8] = b"agentfed-receipt-v1";

/// The manifest `protocol_version` from which a node signs its receipts
/// and requires them from its peers (§10.4). Peers that announce an older
/// version get, and may send, unsigned acknowledgements.
pub const SIGNED_RECEIPTS_VERSION: u32 = 2;

/// Longest field of a receipt that the receiver chose (`outcome`,
/// `reason`): a receipt is small, and a sender refuses a larger one.
const MAX_TEXT: usize = 256;

/// A receiver's signed statement that it processed an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]

pub struct Receipt {
    /// The receiver's node id.
    pub receiver: String,
    /// The sender's node id (the envelope's `source`).
    pub sender: String,
    /// The envelope's id.
    pub envelope_id: String,
    /// Lowercase hex SHA-256 of the envelope frame as received.
    pub digest: String,
    /// `accepted`, `replied`, `rejected` or `refused`.
    pub outcome: String,
    /// The refusal code or rejection reason; empty for `accepted` and
    /// `replied`.
    #[serde(default)]
    pub reason: String,
    /// The receiver's clock when it signed, ms since the epoch.
    pub at_ms: u64,
    /// Standard padded base64 of the Ed25519 signature over
    /// [`Receipt::signed_bytes`].
    pub signature: String,
}

/// Why a receipt does not prove what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The reply carried no receipt, though the receiver signs receipts.
    #[error("the acknowledgement carries no receipt")]
    Missing,
    /// A field names another envelope, node or outcome than the one sent.
    #[error("the receipt's {field} does not match ({found:?})")]
    Mismatch {
        /// The field that differs.
        field: &'static str,
        /// What the receipt says (clipped).
        found: String,
    },
    /// The signature is malformed or does not verify with the key.
    #[error("the receipt's signature does not verify with the receiver's key")]
    BadSignature,
    /// The public key given to check it is not an Ed25519 key.
    #[error("the public key is not standard base64 of 32 bytes")]
    BadKey,
}

/// What the sender expects a receipt to say.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The peer the envelope went to.
    pub receiver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// The envelope sent.
    pub envelope_id: &'a str,
    /// The frame sent (its digest is compared).
    pub frame: &'a [u8],
    /// The outcome the reply reports.
    pub outcome: &'a str,
    /// The reason or code the reply reports ("" when none).
    pub reason: &'a str,
}

/// Lowercase hex SHA-256 of an envelope frame.
pub fn frame_digest(frame: &[u8]) -> String {
    hex::encode(Sha256::digest(frame))
}

impl Receipt {
    /// Signs a receipt for `frame` from `sender` with this node's identity.
    pub fn sign(
        identity: &Identity,
        sender: &str,
        envelope_id: &str,
        frame: &[u8],
        outcome: &str,
        reason: &str,
        at_ms: u64,
    ) -> Receipt {
        let mut receipt = Receipt {
            receiver: identity.node_id().as_str().to_string(),
            sender: sender.to_string(),
            envelope_id: envelope_id.to_string(),
            digest: frame_digest(frame),
            outcome: outcome.to_string(),
            reason: reason.to_string(),
            at_ms,
            signature: String::new(),
        };
        receipt.signature = B64.encode(identity.sign(&receipt.signed_bytes()).to_bytes());
        receipt
    }

    /// The bytes the signature covers: [`RECEIPT_DOMAIN`], then each of
    /// `receiver`, `sender`, `envelope_id`, `digest`, `outcome`, `reason`
    /// as a 4-byte big-endian length and its UTF-8 bytes, then `at_ms` as
    /// 8 bytes big-endian. Lengths make the encoding unambiguous whatever
    /// the fields contain.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let fields = [
            &self.receiver,
            &self.sender,
            &self.envelope_id,
            &self.digest,
            &self.outcome,
            &self.reason,
        ];
        let len: usize = fields.iter().map(|f| 4 + f.len()).sum();
        let mut out = Vec::with_capacity(RECEIPT_DOMAIN.len() + len + 8);
        out.extend_from_slice(RECEIPT_DOMAIN);
        for field in fields {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out
    }

    /// Checks the signature alone, with `public_key` (standard base64 of
    /// the receiver's 32-byte Ed25519 key, as in its manifest).
    pub fn verify_signature(&self, public_key: &str) -> Result<(), ReceiptError> {
        let key: [u8; 32] = B64
            .decode(public_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(ReceiptError::BadKey)?;
        let signature: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(ReceiptError::BadSignature)?;
        if verify_ed25519(&key, &self.signed_bytes(), &signature) {
            Ok(())
        } else {
            Err(ReceiptError::BadSignature)
        }
    }

    /// Checks that the receipt proves `expected`, signed with
    /// `public_key`: every field first, then the signature.
    pub fn check(&self, expected: &Expected<'_>, public_key: &str) -> Result<(), ReceiptError> {
        let digest = frame_digest(expected.frame);
        let pairs: [(&'static str, &str, &str); 6] = [
            ("receiver", &self.receiver, expected.receiver),
            ("sender", &self.sender, expected.sender),
            ("envelope_id", &self.envelope_id, expected.envelope_id),
            ("digest", &self.digest, &digest),
            ("outcome", &self.outcome, expected.outcome),
            ("reason", &self.reason, expected.reason),
        ];
        for (field, found, wanted) in pairs {
            if found != wanted {
                return Err(ReceiptError::Mismatch {
                    field,
                    found: crate::control::clip(found, 80),
                });
            }
        }
        if self.outcome.len() > MAX_TEXT || self.reason.len() > MAX_TEXT {
            return Err(ReceiptError::Mismatch {
                field: "reason",
                found: "(too long)".into(),
            });
        }
        self.verify_signature(public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ((), Identity) {
        let node = crate::identity::NodeId::parse("beta").expect("node id");
        let id = Identity::generate(&node, "wss://192.0.2.10:9100").expect("identity");
        ((), id)
    }

    fn expected<'a>(frame: &'a [u8]) -> Expected<'a> {
        Expected {
            receiver: "beta",
            sender: "alpha",
            envelope_id: "e1",
            frame,
            outcome: "accepted",
            reason: "",
        }
    }

    #[test]
    fn a_signed_receipt_checks_and_every_changed_field_fails() {
        let (_dir, id) = identity();
        let frame = b"frame bytes";
        let receipt = Receipt::sign(&id, "alpha", "e1", frame, "accepted", "", 42);
        let key = id.public_key_b64();
        assert_eq!(receipt.check(&expected(frame), &key), Ok(()));

        // A receipt for other bytes, another envelope or another outcome
        // proves nothing about this one.
        assert!(matches!(
            receipt.check(&expected(b"other bytes"), &key),
            Err(ReceiptError::Mismatch {
                field: "digest",
                ..
            })
        ));
        let mut wrong = expected(frame);
        wrong.outcome = "rejected";
        assert!(matches!(
            receipt.check(&wrong, &key),
            Err(ReceiptError::Mismatch {
                field: "outcome",
                ..
            })
        ));
        // Edited after signing: the signature no longer verifies.
        let mut edited = receipt.clone();
        edited.at_ms = 43;
        assert_eq!(
            edited.check(&expected(frame), &key),
            Err(ReceiptError::BadSignature)
        );
        // Another node's key does not verify it.
        let (_d2, other) = identity();
        assert_eq!(
            receipt.check(&expected(frame), &other.public_key_b64()),
            Err(ReceiptError::BadSignature)
        );
        assert_eq!(
            receipt.verify_signature("not base64"),
            Err(ReceiptError::BadKey)
        );
    }

    #[test]
    fn signed_bytes_are_length_prefixed_so_fields_cannot_slide() {
        let (_dir, id) = identity();
        let a = Receipt::sign(&id, "ab", "c", b"x", "accepted", "", 1);
        let mut b = a.clone();
        b.sender = "a".into();
        b.envelope_id = "bc".into();
        assert_ne!(a.signed_bytes(), b.signed_bytes());
        assert!(a.signed_bytes().starts_with(RECEIPT_DOMAIN));
    }
}
