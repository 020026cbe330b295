//! Inbound limits: how many bytes, JSON elements, strings and nesting
//! levels an envelope from a peer may carry, by message type and the
//! sender's trust level, and the streaming pre-check that enforces them
//! before any JSON tree is built.
//!
//! Why: a verified peer's frame used to be parsed into a full
//! `serde_json::Value`, cloned, flattened into one path string and one
//! value string per JSON string for the PII call, and serialised again
//! for the handler. A 16 MiB `["a","a",…]` took a daemon past 1 GB. The
//! limits here keep what the receiver allocates a small multiple of the
//! bytes it admitted:
//!
//! * the frame size by type and level is checked on the raw bytes (and,
//!   for the largest size a level may send at all, before the signature
//!   is even verified);
//! * the payload's shape is counted by [`parse_head`] with a visitor that
//!   allocates nothing per element, and refused past the limits with
//!   `PAYLOAD_TOO_COMPLEX`;
//! * only then is the payload parsed into a tree, once;
//! * the PII call gets at most [`MAX_PII_SCAN_VALUES`] values and
//!   [`MAX_PII_SCAN_BYTES`] bytes; past that the message is refused, never
//!   half-scanned.
//!
//! Every number is a constant of this module; `docs/operations.md` lists
//! them with their refusal codes, `docs/protocol.md` states what a peer
//! must respect.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::budget::Budget;
use crate::model::TrustLevel;

/// Largest frame (version byte, signature and envelope JSON) of the small
/// message types (`ping`, `heartbeat`, `status`, `status-broadcast`):
/// 8 KiB. These are the only types a VERIFIED peer may send, so this is
/// also the largest frame a VERIFIED peer may send at all.
pub const SMALL_FRAME_BYTES: usize = 8 * 1024;
/// Largest frame of every other message type, and of the bulk types below
/// TRUSTED: 1 MiB.
pub const ORDINARY_FRAME_BYTES: usize = 1024 * 1024;
/// Largest frame of the bulk types (`context-share`, `memory-response`)
/// from a TRUSTED or PRIVILEGED sender: the wire's largest message,
/// 16 MiB.
pub const BULK_FRAME_BYTES: usize = crate::transport::DEFAULT_MAX_MESSAGE;

/// Message types that may carry bulk payloads, from TRUSTED senders.
pub const BULK_MESSAGE_TYPES: &[&str] = &["context-share", "memory-response"];
/// Message types limited to [`SMALL_FRAME_BYTES`] at every level.
pub const SMALL_MESSAGE_TYPES: &[&str] = &["ping", "heartbeat", "status", "status-broadcast"];

/// The most a payload may contain, counted without building it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// JSON elements: every value (containers, scalars, strings) and every
    /// object key. Each costs a tree node once parsed.
    pub max_elements: u64,
    /// String values (not keys): each becomes one value of the PII call.
    pub max_strings: u64,
    /// Nesting of arrays and objects (the payload's top level is 1).
    pub max_depth: u32,
}

/// Shape of the small types: a status or ping has a handful of fields.
pub const SMALL_SHAPE: ShapeLimits = ShapeLimits {
    max_elements: 256,
    max_strings: 64,
    max_depth: 8,
};
/// Shape of ordinary messages: tasks, queries, handoffs (at most ~2 MB of
/// tree for a 1 MiB frame).
pub const ORDINARY_SHAPE: ShapeLimits = ShapeLimits {
    max_elements: 32 * 1024,
    max_strings: 16 * 1024,
    max_depth: 32,
};
/// Shape of bulk payloads: large documents, not millions of tiny values.
pub const BULK_SHAPE: ShapeLimits = ShapeLimits {
    max_elements: 256 * 1024,
    max_strings: MAX_PII_SCAN_VALUES as u64,
    max_depth: 32,
};

/// `base_ms`, plus `per_mib_ms` for each MiB (or part of one) of `bytes`
/// past the first: how the time allowed for work on a payload grows with
/// it (a plugin call's deadline, a delivery's wait for its
/// acknowledgement), while every ordinary message (at most 1 MiB) keeps
/// the base.
pub fn plus_per_extra_mib(base_ms: u64, bytes: u64, per_mib_ms: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let extra_mib = bytes.saturating_sub(MIB).div_ceil(MIB);
    base_ms.saturating_add(extra_mib.saturating_mul(per_mib_ms))
}

/// Most string values in one PII call (either direction). The default
/// PII plugin spends about 0.3 us per value on top of its time per byte;
/// with [`MAX_PII_SCAN_BYTES`] a call at both caps takes ~45 ms of its
/// 50 ms default deadline on the benchmark machine (`docs/benchmarks.md`).
pub const MAX_PII_SCAN_VALUES: usize = 16 * 1024;
/// Most bytes (JSON Pointer paths plus values) in one PII call: the
/// strings of the largest bulk payload. The default plugin scans ~400 MB/s
/// and holds the request in its 64 MiB of memory.
pub const MAX_PII_SCAN_BYTES: usize = BULK_FRAME_BYTES;

/// Inbound envelope bytes processed at once by all sessions together, in
/// KiB (see `federation.rs`): one bulk message, or thousands of small
/// ones. Past it, sessions wait (and stop reading their sockets) instead
/// of allocating. Processing a payload costs several times its bytes (the
/// frame, the tree, the PII request and the plugin's copy, the handler's
/// text, the inbox record), so this is what bounds the node's peak.
pub const INBOUND_GLOBAL_BUDGET_KIB: usize = 16 * 1024;

/// Inbound message bytes the transport may hold for all sessions together
/// (being received, or complete and waiting for a session's reader): three
/// bulk messages. Past it, streams growing beyond one frame are reset with
/// `RESOURCE_EXHAUSTED` and their senders retry
/// ([`crate::transport::InboundPool`]).
pub const INBOUND_TRANSPORT_POOL_BYTES: usize = 48 * 1024 * 1024;

/// What one message type may carry at one trust level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimit {
    /// Largest frame, bytes.
    pub frame_bytes: usize,
    /// Largest payload shape.
    pub shape: ShapeLimits,
}

/// The limit of `message_type` from a sender at `level`. Unknown types get
/// the ordinary limit (they are refused as unknown anyway).
pub fn inbound_limit(message_type: &str, level: TrustLevel) -> InboundLimit {
    if SMALL_MESSAGE_TYPES.contains(&message_type) {
        InboundLimit {
            frame_bytes: SMALL_FRAME_BYTES,
            shape: SMALL_SHAPE,
        }
    } else if BULK_MESSAGE_TYPES.contains(&message_type) && level >= TrustLevel::Trusted {
        InboundLimit {
            frame_bytes: BULK_FRAME_BYTES,
            shape: BULK_SHAPE,
        }
    } else {
        InboundLimit {
            frame_bytes: ORDINARY_FRAME_BYTES,
            shape: ORDINARY_SHAPE,
        }
    }
}

/// The largest frame a sender at `level` may send of any type its level
/// allows: checked on the raw bytes before the signature and the JSON are
/// looked at, and given to the transport as the session's message limit.
pub fn max_frame_for_level(level: TrustLevel) -> usize {
    match level {
        // Only ping, heartbeat, status and status-broadcast are allowed.
        TrustLevel::Untrusted | TrustLevel::Verified => SMALL_FRAME_BYTES,
        TrustLevel::Attested => ORDINARY_FRAME_BYTES,
        TrustLevel::Trusted | TrustLevel::Privileged => BULK_FRAME_BYTES,
    }
}

/// What [`parse_head`] counted in a payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Values and object keys.
    pub elements: u64,
    /// String values.
    pub strings: u64,
    /// Bytes of the string values (unescaped).
    pub string_bytes: u64,
    /// Deepest nesting reached.
    pub depth: u32,
}

impl Shape {
    /// The shape of a payload already in memory, counted exactly as
    /// [`parse_head`] counts its JSON text (the sender's side of the check,
    /// without parsing the signed frame again).
    pub fn of_value(value: &serde_json::Value) -> Shape {
        let mut shape = Shape::default();
        count_value(value, 0, &mut shape);
        shape
    }

    /// Whether the payload stays within `limits`.
    pub fn within(&self, limits: &ShapeLimits) -> bool {
        self.elements <= limits.max_elements
            && self.strings <= limits.max_strings
            && self.depth <= limits.max_depth
    }
}

/// An envelope's fields without its payload tree: what the receiver
/// checks before deciding to build one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHead {
    /// Envelope id.
    pub id: String,
    /// Sender node id.
    pub source: String,
    /// Receiver node id.
    pub target: String,
    /// Session id, if any.
    pub session: Option<String>,
    /// Message type.
    pub message_type: String,
    /// The payload, counted and skipped.
    #[serde(deserialize_with = "count_payload")]
    pub payload: Shape,
    /// Sender's clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Nonce.
    pub nonce: String,
    /// Hops travelled so far.
    pub hop_count: u32,
    /// The budget.
    pub budget: Budget,
}

/// Why [`parse_head`] refused envelope bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an envelope.
    #[error("MALFORMED_FRAME")]
    Malformed,
    /// The payload exceeds the largest shape any message may have
    /// ([`BULK_SHAPE`]); counting stopped there.
    #[error("PAYLOAD_TOO_COMPLEX")]
    TooComplex,
}

/// Marker in the serde error when the count stopped at the hard limit.
const TOO_COMPLEX: &str = "PAYLOAD_TOO_COMPLEX";

/// Parses envelope JSON without building its payload: the payload is
/// walked once, counting elements, strings and depth, and nothing is
/// allocated per element (strings are seen borrowed or through the
/// parser's one reusable scratch buffer). Counting stops with
/// [`HeadError::TooComplex`] past [`BULK_SHAPE`], so the walk costs time
/// linear in the bytes and no memory; the caller compares the counts with
/// the limit of the message's type and level.
pub fn parse_head(bytes: &[u8]) -> Result<EnvelopeHead, HeadError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().starts_with(TOO_COMPLEX) {
            HeadError::TooComplex
        } else {
            HeadError::Malformed
        }
    })
}

fn count_payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Shape, D::Error> {
    let mut shape = Shape::default();
    Counter {
        shape: &mut shape,
        depth: 0,
        limits: &BULK_SHAPE,
    }
    .deserialize(deserializer)?;
    Ok(shape)
}

fn count_value(value: &serde_json::Value, depth: u32, shape: &mut Shape) {
    use serde_json::Value;
    shape.elements += 1;
    match value {
        Value::String(s) => {
            shape.strings += 1;
            shape.string_bytes += s.len() as u64;
        }
        Value::Array(items) => {
            shape.depth = shape.depth.max(depth + 1);
            for item in items {
                count_value(item, depth + 1, shape);
            }
        }
        Value::Object(members) => {
            shape.depth = shape.depth.max(depth + 1);
            for member in members.values() {
                // The key is one element, as in the parser's count.
                shape.elements += 1;
                count_value(member, depth + 1, shape);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Counts one value and everything in it into `shape`.
struct Counter<'a> {
    shape: &'a mut Shape,
    /// Nesting of the containers around this value.
    depth: u32,
    limits: &'a ShapeLimits,
}

impl Counter<'_> {
    fn element<E: de::Error>(&mut self) -> Result<(), E> {
        self.shape.elements += 1;
        if self.shape.elements > self.limits.max_elements {
            return Err(E::custom(TOO_COMPLEX));
        }
        Ok(())
    }

    fn string<E: de::Error>(&mut self, len: usize) -> Result<(), E> {
        self.element()?;
        self.shape.strings += 1;
        self.shape.string_bytes += len as u64;
        if self.shape.strings > self.limits.max_strings {
            return Err(E::custom(TOO_COMPLEX));
        }
        Ok(())
    }

    /// Enters a container; refuses past the depth limit before serde_json's
    /// own recursion limit (128) is reached, so deep nesting is reported as
    /// too complex rather than malformed.
    fn enter<E: de::Error>(&mut self) -> Result<u32, E> {
        self.element()?;
        let depth = self.depth + 1;
        self.shape.depth = self.shape.depth.max(depth);
        if depth > self.limits.max_depth {
            return Err(E::custom(TOO_COMPLEX));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.element()
    }

    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.element()
    }

    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.element()
    }

    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.element()
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.element()
    }

    fn visit_str<E: de::Error>(mut self, s: &str) -> Result<(), E> {
        self.string(s.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        while seq
            .next_element_seed(Counter {
                shape: &mut *self.shape,
                depth,
                limits: self.limits,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        // Keys are skipped (a key is one element, never scanned for PII).
        while map.next_key::<IgnoredAny>()?.is_some() {
            self.element()?;
            map.next_value_seed(Counter {
                shape: &mut *self.shape,
                depth,
                limits: self.limits,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope_bytes(payload_json: &str) -> Vec<u8> {
        let head = json!({
            "id": "00", "source": "a", "target": "b", "session": null,
            "message_type": "ping", "payload": null, "timestamp_ms": 1,
            "nonce": "n", "hop_count": 1,
            "budget": Budget::with_default_hops(1000, 1.0).unwrap(),
        })
        .to_string();
        head.replace("\"payload\":null", &format!("\"payload\":{payload_json}"))
            .into_bytes()
    }

    #[test]
    fn a_payload_in_memory_is_counted_as_its_json_text_is() {
        for payload in [
            json!(null),
            json!("text"),
            json!({"a":[1,"xy",{"b":null}],"c":"q\u{e9}"}),
            json!([[[[]]], {}, {"k": [true, false, 1.5, -3, "s"]}]),
            json!({"deep": {"er": {"still": ["a", {"x": "y"}]}}}),
        ] {
            let parsed = parse_head(&envelope_bytes(&payload.to_string()))
                .unwrap()
                .payload;
            assert_eq!(Shape::of_value(&payload), parsed, "{payload}");
        }
    }

    #[test]
    fn counts_elements_strings_and_depth() {
        let head = parse_head(&envelope_bytes(
            r#"{"a":[1,"xy",{"b":null}],"c":"q\u00e9"}"#,
        ))
        .unwrap();
        // {}, key a, [], 1, "xy", {}, key b, null, key c, "qé"
        assert_eq!(
            head.payload,
            Shape {
                elements: 10,
                strings: 2,
                string_bytes: 2 + 3,
                depth: 3,
            }
        );
        assert_eq!(head.message_type, "ping");
        assert!(head.payload.within(&SMALL_SHAPE));
    }

    #[test]
    fn the_three_hostile_shapes_stop_at_the_hard_limit() {
        let n = BULK_SHAPE.max_elements as usize + 1;
        let zeros = format!("[{}0]", "0,".repeat(n));
        assert_eq!(
            parse_head(&envelope_bytes(&zeros)),
            Err(HeadError::TooComplex)
        );
        let strings = format!("[{}\"a\"]", "\"a\",".repeat(MAX_PII_SCAN_VALUES));
        assert_eq!(
            parse_head(&envelope_bytes(&strings)),
            Err(HeadError::TooComplex)
        );
        // Deeper than our limit but shallower than serde_json's 128.
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            parse_head(&envelope_bytes(&deep)),
            Err(HeadError::TooComplex)
        );
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(
            parse_head(&envelope_bytes(&deep)),
            Err(HeadError::TooComplex)
        );
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(parse_head(&envelope_bytes(&ok)).unwrap().payload.depth, 32);
    }

    #[test]
    fn below_the_hard_limit_counts_are_compared_per_type() {
        let zeros = format!("[{}0]", "0,".repeat(1000));
        let head = parse_head(&envelope_bytes(&zeros)).unwrap();
        assert_eq!(head.payload.elements, 1002);
        assert!(!head.payload.within(&SMALL_SHAPE));
        assert!(head.payload.within(&ORDINARY_SHAPE));
    }

    #[test]
    fn malformed_envelopes_are_malformed() {
        assert_eq!(parse_head(b"{"), Err(HeadError::Malformed));
        assert_eq!(
            parse_head(&envelope_bytes("[1,]")),
            Err(HeadError::Malformed)
        );
        let mut extra = envelope_bytes("1");
        extra.pop();
        extra.extend_from_slice(br#","x":1}"#);
        assert_eq!(parse_head(&extra), Err(HeadError::Malformed));
        // serde_json's recursion limit is past ours: still too complex.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_head(&envelope_bytes(&deep)),
            Err(HeadError::TooComplex)
        );
    }

    #[test]
    fn limits_by_type_and_level() {
        use TrustLevel as L;
        assert_eq!(
            inbound_limit("ping", L::Privileged).frame_bytes,
            SMALL_FRAME_BYTES
        );
        assert_eq!(
            inbound_limit("context-share", L::Attested).frame_bytes,
            ORDINARY_FRAME_BYTES
        );
        assert_eq!(
            inbound_limit("context-share", L::Trusted).frame_bytes,
            BULK_FRAME_BYTES
        );
        assert_eq!(
            inbound_limit("memory-response", L::Privileged).shape,
            BULK_SHAPE
        );
        assert_eq!(
            inbound_limit("task-assignment", L::Privileged).frame_bytes,
            ORDINARY_FRAME_BYTES
        );
        assert_eq!(max_frame_for_level(L::Verified), SMALL_FRAME_BYTES);
        // No type's limit exceeds its level's largest frame.
        for level in [
            L::Untrusted,
            L::Verified,
            L::Attested,
            L::Trusted,
            L::Privileged,
        ] {
            for (t, caps) in crate::envelope::MESSAGE_TYPES {
                if caps.iter().all(|&c| crate::trust::allowed(level, c)) {
                    assert!(inbound_limit(t, level).frame_bytes <= max_frame_for_level(level));
                }
            }
        }
        assert!(BULK_SHAPE.max_strings as usize <= MAX_PII_SCAN_VALUES);
    }
}
