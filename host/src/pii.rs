//! The host half of the PII pipeline: turning a JSON payload into the
//! values the PII plugin scans, and writing its rewrites back.
//!
//! Every string value is scanned with its RFC 6901 JSON Pointer, and so is
//! every object **key** and every **number**, since personal data hides
//! there too (`{"4111 1111 1111 1111": "x"}`, `{"card": 4111111111111111}`).
//! A key or number is passed as text with its pointer behind a prefix that
//! no JSON Pointer can start with ([`KEY_PREFIX`], [`NUMBER_PREFIX`]), so a
//! policy can tell what it is (the 0.1.0 contract has no field for it),
//! and one that ignores the prefix still scans the text. A redaction
//! replaces a whole JSON string and can never corrupt the document's
//! structure; rewriting a key or a number would change the document's
//! shape, so any detection there that is not `pass` blocks the message
//! ([`is_structural`]).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::plugin::{
    Detection, LoadedPlugin, PiiAction, PluginError, RewrittenValue, ScanRequest, ScanResult,
    StringValue,
};

/// Why rewrites could not be applied (a misbehaving plugin): the caller
/// fails closed and blocks the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The plugin named a value the request did not contain.
    #[error("the PII plugin rewrote value {0}, which does not exist")]
    UnknownIndex(u32),
    /// The path no longer leads to a string (cannot happen unless the
    /// payload changed between scan and apply).
    #[error("the PII plugin rewrote a value whose path is gone")]
    PathGone,
    /// The plugin rewrote an object key or a number (the caller blocks the
    /// message: a rewrite there would change the document's shape).
    #[error("the PII plugin rewrote an object key or a number")]
    Structural,
    /// A detection of a chained policy lies outside its value or not on
    /// character boundaries, so the host cannot rewrite it.
    #[error("a PII policy reported a span outside value {0} or inside a character")]
    BadSpan(u32),
}

/// Milliseconds added to the PII deadline per MiB of scanned text beyond
/// the first: `[plugins.pii.limits] deadline_ms` (50 ms by default) is
/// the budget of an ordinary message (at most 1 MiB), and a bulk
/// `context-share` of up to 16 MiB gets this much more per MiB. Set from
/// the measured scan rate of the default policy with a wide margin for
/// slower and busier machines (docs/benchmarks.md, "PII scan of bulk
/// payloads").
pub const DEADLINE_MS_PER_EXTRA_MIB: u64 = 60;

/// The PII deadline for `values`: `base_ms`, plus
/// [`DEADLINE_MS_PER_EXTRA_MIB`] for each MiB (or part) of text past the
/// first.
pub fn scan_deadline_ms(base_ms: u64, values: &[StringValue]) -> u64 {
    let bytes: u64 = values
        .iter()
        .map(|v| (v.value.len() + v.path.len()) as u64)
        .sum();
    deadline_for_bytes(base_ms, bytes)
}

/// A plugin call's deadline for an input of `bytes`: `base_ms` covers the
/// first MiB (every ordinary message), [`DEADLINE_MS_PER_EXTRA_MIB`] each
/// further MiB or part of one (bulk messages up to 16 MiB). Used for the
/// PII chain and the message handler, the two calls that see a payload.
pub fn deadline_for_bytes(base_ms: u64, bytes: u64) -> u64 {
    crate::limits::plus_per_extra_mib(base_ms, bytes, DEADLINE_MS_PER_EXTRA_MIB)
}

/// How strict an action is, for chains: `block` > `redact` > `hash` >
/// `pass`. Redaction is stricter than hashing because a hash still lets
/// the receiver correlate equal values.
pub fn strictness(action: PiiAction) -> u8 {
    match action {
        PiiAction::Pass => 0,
        PiiAction::Hash => 1,
        PiiAction::Redact => 2,
        PiiAction::Block => 3,
    }
}

/// Runs a PII chain (main policy first) over one request, all within
/// `deadline_ms` together: each policy gets what the ones before it left
/// of the deadline. One policy's answer is used as it is; the answers of
/// several are merged by [`merge`]. The error names the policy that
/// failed.
pub fn scan_chain(
    chain: &[Arc<LoadedPlugin>],
    request: &ScanRequest,
    deadline_ms: u64,
    hash: &mut dyn FnMut(&str) -> String,
) -> Result<ScanResult, (Arc<LoadedPlugin>, PluginError)> {
    let started = Instant::now();
    let mut results = Vec::with_capacity(chain.len());
    for plugin in chain {
        let spent = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let left = deadline_ms.saturating_sub(spent);
        if left == 0 {
            return Err((
                plugin.clone(),
                PluginError::Timeout {
                    plugin: plugin.label(),
                    deadline_ms,
                },
            ));
        }
        match plugin.scan_pii_within(request, left) {
            Ok(result) => results.push(result),
            Err(err) => return Err((plugin.clone(), err)),
        }
    }
    if results.len() == 1 {
        return Ok(results.pop().expect("one result"));
    }
    merge(&request.values, results, hash).map_err(|err| {
        let plugin = chain[0].clone();
        let label = plugin.label();
        (
            plugin,
            PluginError::Refused {
                plugin: label,
                reason: err.to_string(),
            },
        )
    })
}

/// Merges the answers of a PII chain over the same `values`:
///
/// * every detection counts; the same span and type reported by several
///   policies is kept once, with the strictest action;
/// * the message is blocked when any policy blocks it;
/// * otherwise the host writes the rewrites itself from the detections:
///   the `redact`/`hash` spans of a value that overlap (or touch nothing
///   but each other) are joined into one span, which takes the strictest
///   action among them and the type of the first detection with that
///   action, and is replaced by `[REDACTED:<type>]` or
///   `[HASH:<type>:<hash of the joined span>]` — the forms the WIT
///   contract defines. The policies' own rewritten values are not used.
pub fn merge(
    values: &[StringValue],
    results: Vec<ScanResult>,
    hash: &mut dyn FnMut(&str) -> String,
) -> Result<ScanResult, RewriteError> {
    let mut blocked = false;
    let mut detections: Vec<Detection> = Vec::new();
    // (value, start, end, type) → index in `detections`: a chain may
    // report tens of thousands of spans, so no quadratic search.
    let mut seen: std::collections::HashMap<(u32, u32, u32, String), usize> =
        std::collections::HashMap::new();
    for result in results {
        blocked |= result.blocked;
        for d in result.detections {
            let key = (
                d.value_index,
                d.start,
                d.end,
                d.pii_type.as_str().to_string(),
            );
            match seen.get(&key) {
                Some(&i) => {
                    let kept = &mut detections[i];
                    if strictness(d.action) > strictness(kept.action) {
                        kept.action = d.action;
                    }
                    kept.confidence = kept.confidence.max(d.confidence);
                }
                None => {
                    seen.insert(key, detections.len());
                    detections.push(d);
                }
            }
        }
    }
    blocked |= detections.iter().any(|d| d.action == PiiAction::Block);
    let mut rewritten = Vec::new();
    if !blocked {
        let mut spans: Vec<&Detection> = detections
            .iter()
            .filter(|d| matches!(d.action, PiiAction::Redact | PiiAction::Hash))
            .collect();
        spans.sort_by_key(|d| (d.value_index, d.start, d.end));
        let mut i = 0;
        while i < spans.len() {
            let index = spans[i].value_index;
            let value = &values
                .get(index as usize)
                .ok_or(RewriteError::UnknownIndex(index))?
                .value;
            let mut out = String::with_capacity(value.len() + 32);
            let mut at = 0usize;
            while i < spans.len() && spans[i].value_index == index {
                // One group: spans that overlap the first or one another.
                let (start, mut end) = (spans[i].start as usize, spans[i].end as usize);
                let mut strictest = spans[i];
                i += 1;
                while i < spans.len()
                    && spans[i].value_index == index
                    && (spans[i].start as usize) < end
                {
                    end = end.max(spans[i].end as usize);
                    if strictness(spans[i].action) > strictness(strictest.action) {
                        strictest = spans[i];
                    }
                    i += 1;
                }
                if start >= end
                    || end > value.len()
                    || !value.is_char_boundary(start)
                    || !value.is_char_boundary(end)
                {
                    return Err(RewriteError::BadSpan(index));
                }
                out.push_str(&value[at..start]);
                let kind = strictest.pii_type.as_str();
                match strictest.action {
                    PiiAction::Redact => {
                        out.push_str("[REDACTED:");
                        out.push_str(kind);
                        out.push(']');
                    }
                    _ => {
                        out.push_str("[HASH:");
                        out.push_str(kind);
                        out.push(':');
                        out.push_str(&hash(&value[start..end]));
                        out.push(']');
                    }
                }
                at = end;
            }
            out.push_str(&value[at..]);
            rewritten.push(RewrittenValue {
                value_index: index,
                value: out,
            });
        }
    }
    Ok(ScanResult {
        detections,
        rewritten,
        blocked,
    })
}

/// A PII policy's error text with every scanned value of four bytes or
/// more that it quotes replaced by `[scanned text]`: a panic message or a
/// refusal may echo the payload it choked on, and it goes to the log and
/// the audit trail.
pub fn scrub_error_text(text: &str, values: &[StringValue]) -> String {
    let mut out = text.to_string();
    for v in values.iter().filter(|v| v.value.len() >= 4) {
        if out.contains(v.value.as_str()) {
            out = out.replace(v.value.as_str(), "[scanned text]");
        }
    }
    out
}

/// The path prefix of an object key: `key:` + the pointer of the member
/// (`key:/user/bob@example.com`); the value is the key itself.
pub const KEY_PREFIX: &str = "key:";
/// The path prefix of a number: `number:` + its pointer
/// (`number:/card`); the value is the number as written in JSON.
pub const NUMBER_PREFIX: &str = "number:";

/// Whether `value` is an object key or a number rather than a string
/// value, which a rewrite cannot replace.
pub fn is_structural(value: &StringValue) -> bool {
    value.path.starts_with(KEY_PREFIX) || value.path.starts_with(NUMBER_PREFIX)
}

/// Whether `payload` has anything to scan: every payload but `null`,
/// `{}` and `[]` goes through the PII plugin.
pub fn has_content(payload: &Value) -> bool {
    match payload {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        _ => true,
    }
}

/// Why a payload's strings were not handed to the PII plugin: more values
/// or bytes than one call may carry. The caller refuses the message (a
/// half-scanned payload would let PII through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PAYLOAD_TOO_COMPLEX")]
pub struct ScanTooLarge;

/// Every string value of `payload` with its JSON Pointer, every object key
/// and every number (prefixed, see [`KEY_PREFIX`]), in document order
/// (a member's key before its value).
pub fn string_values(payload: &Value) -> Vec<StringValue> {
    string_values_capped(payload, usize::MAX, usize::MAX).unwrap_or_default()
}

/// [`string_values`], refusing as soon as there would be more than
/// `max_values` values or more than `max_bytes` bytes of paths and values
/// together: the request stays bounded whatever the payload (long keys
/// repeat in the path of every value under them).
pub fn string_values_capped(
    payload: &Value,
    max_values: usize,
    max_bytes: usize,
) -> Result<Vec<StringValue>, ScanTooLarge> {
    let mut out = Collected {
        values: Vec::new(),
        max_values,
        bytes_left: max_bytes,
    };
    collect(payload, &mut String::new(), &mut out)?;
    Ok(out.values)
}

struct Collected {
    values: Vec<StringValue>,
    max_values: usize,
    bytes_left: usize,
}

impl Collected {
    fn push(&mut self, path: String, value: String) -> Result<(), ScanTooLarge> {
        let bytes = path.len() + value.len();
        if self.values.len() >= self.max_values || bytes > self.bytes_left {
            return Err(ScanTooLarge);
        }
        self.bytes_left -= bytes;
        self.values.push(StringValue { path, value });
        Ok(())
    }
}

fn collect(value: &Value, path: &mut String, out: &mut Collected) -> Result<(), ScanTooLarge> {
    match value {
        Value::String(s) => out.push(path.clone(), s.clone())?,
        Value::Number(n) => out.push(format!("{NUMBER_PREFIX}{path}"), n.to_string())?,
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                collect(item, path, out)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                path.push('/');
                push_escaped(path, key);
                out.push(format!("{KEY_PREFIX}{path}"), key.clone())?;
                collect(item, path, out)?;
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

/// RFC 6901: `~` becomes `~0` and `/` becomes `~1`.
fn push_escaped(path: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Writes the plugin's rewrites into `payload`. All rewrites are checked
/// before any is applied, so an error leaves `payload` unchanged.
pub fn apply_rewrites(
    payload: &mut Value,
    values: &[StringValue],
    rewritten: &[RewrittenValue],
) -> Result<(), RewriteError> {
    for rewrite in rewritten {
        let original = values
            .get(rewrite.value_index as usize)
            .ok_or(RewriteError::UnknownIndex(rewrite.value_index))?;
        if is_structural(original) {
            return Err(RewriteError::Structural);
        }
        if !matches!(payload.pointer(&original.path), Some(Value::String(_))) {
            return Err(RewriteError::PathGone);
        }
    }
    for rewrite in rewritten {
        let path = &values[rewrite.value_index as usize].path;
        if let Some(slot) = payload.pointer_mut(path) {
            *slot = Value::String(rewrite.value.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deadline_grows_only_past_the_first_mib() {
        let value = |bytes: usize| StringValue {
            path: "/a".into(),
            value: "x".repeat(bytes),
        };
        let mib = 1024 * 1024;
        assert_eq!(scan_deadline_ms(50, &[]), 50);
        assert_eq!(scan_deadline_ms(50, &[value(mib - 2)]), 50);
        assert_eq!(
            scan_deadline_ms(50, &[value(mib)]),
            50 + DEADLINE_MS_PER_EXTRA_MIB
        );
        assert_eq!(
            scan_deadline_ms(50, &[value(16 * mib - 2)]),
            50 + 15 * DEADLINE_MS_PER_EXTRA_MIB
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn values_carry_json_pointers() {
        let payload = json!({
            "user": {"email": "bob@example.com", "age": 41},
            "notes": ["call 555-123-4567", null, "ok"],
            "a/b": "slash",
            "m~n": "tilde",
        });
        let all = string_values(&payload);
        let values: Vec<&StringValue> = all.iter().filter(|v| !is_structural(v)).collect();
        let pairs: Vec<(&str, &str)> = values
            .iter()
            .map(|v| (v.path.as_str(), v.value.as_str()))
            .collect();
        assert!(pairs.contains(&("/user/email", "bob@example.com")));
        assert!(pairs.contains(&("/notes/0", "call 555-123-4567")));
        assert!(pairs.contains(&("/notes/2", "ok")));
        assert!(pairs.contains(&("/a~1b", "slash")));
        assert!(pairs.contains(&("/m~0n", "tilde")));
        assert_eq!(values.len(), 5);
        for v in &values {
            assert_eq!(
                payload.pointer(&v.path),
                Some(&Value::String(v.value.clone()))
            );
        }
        // Keys and numbers are there too, marked as what they are.
        let marked: Vec<(&str, &str)> = all
            .iter()
            .filter(|v| is_structural(v))
            .map(|v| (v.path.as_str(), v.value.as_str()))
            .collect();
        assert!(marked.contains(&("key:/user", "user")));
        assert!(marked.contains(&("key:/user/email", "email")));
        assert!(marked.contains(&("number:/user/age", "41")));
        assert!(marked.contains(&("key:/a~1b", "a/b")));
        assert_eq!(marked.len(), 7, "{marked:?}");
    }

    #[test]
    fn keys_and_numbers_are_scanned_and_cannot_be_rewritten() {
        let mut payload = json!({"card": 4111111111111111u64, "bob@example.com": {"x": true}});
        let values = string_values(&payload);
        let number = values
            .iter()
            .position(|v| v.path == "number:/card")
            .unwrap();
        assert_eq!(values[number].value, "4111111111111111");
        let key = values
            .iter()
            .position(|v| v.path == "key:/bob@example.com")
            .unwrap();
        let before = payload.clone();
        for index in [number, key] {
            let rewrite = vec![RewrittenValue {
                value_index: index as u32,
                value: "[REDACTED]".into(),
            }];
            assert_eq!(
                apply_rewrites(&mut payload, &values, &rewrite),
                Err(RewriteError::Structural)
            );
            assert_eq!(payload, before);
        }
        assert!(has_content(&json!([true])));
        assert!(!has_content(&json!({})) && !has_content(&json!([])) && !has_content(&Value::Null));
    }

    #[test]
    fn capped_collection_refuses_instead_of_truncating() {
        // One key ("key:/k" + "k", 7 bytes) and three values ("/k/0" + 2).
        let payload = json!({"k": ["ab", "cd", "ef"]});
        assert_eq!(string_values_capped(&payload, 4, 1000).unwrap().len(), 4);
        assert_eq!(
            string_values_capped(&payload, 3, 1000).err(),
            Some(ScanTooLarge)
        );
        assert_eq!(string_values_capped(&payload, 10, 25).unwrap().len(), 4);
        assert_eq!(
            string_values_capped(&payload, 10, 24).err(),
            Some(ScanTooLarge)
        );
        // A long key counts once per value under it.
        let key = "x".repeat(1000);
        let payload = json!({ key: ["a", "a", "a"] });
        assert_eq!(
            string_values_capped(&payload, 10, 2500).err(),
            Some(ScanTooLarge)
        );
    }

    #[test]
    fn root_string_has_empty_pointer() {
        let values = string_values(&json!("hello"));
        assert_eq!(values[0].path, "");
    }

    #[test]
    fn rewrites_replace_whole_strings() {
        let mut payload = json!({"a": "mail bob@example.com", "b": ["x", "y"]});
        let values = string_values(&payload);
        let a = values.iter().position(|v| v.path == "/a").unwrap() as u32;
        let rewrites = vec![RewrittenValue {
            value_index: a,
            value: "mail [REDACTED:email] \"quoted\"".into(),
        }];
        apply_rewrites(&mut payload, &values, &rewrites).unwrap();
        assert_eq!(payload["a"], "mail [REDACTED:email] \"quoted\"");
        assert_eq!(payload["b"], json!(["x", "y"]));
    }

    #[test]
    fn bad_rewrite_changes_nothing() {
        let mut payload = json!({"a": "x", "b": "y"});
        let before = payload.clone();
        let values = string_values(&payload);
        let a = values.iter().position(|v| v.path == "/a").unwrap() as u32;
        let rewrites = vec![
            RewrittenValue {
                value_index: a,
                value: "changed".into(),
            },
            RewrittenValue {
                value_index: 7,
                value: "bad".into(),
            },
        ];
        assert_eq!(
            apply_rewrites(&mut payload, &values, &rewrites),
            Err(RewriteError::UnknownIndex(7))
        );
        assert_eq!(payload, before);
    }

    fn det(index: u32, t: PiiType, start: u32, end: u32, action: PiiAction) -> Detection {
        Detection {
            value_index: index,
            pii_type: t,
            start,
            end,
            confidence: 0.9,
            action,
        }
    }

    fn answer(detections: Vec<Detection>) -> ScanResult {
        let blocked = detections.iter().any(|d| d.action == PiiAction::Block);
        ScanResult {
            detections,
            rewritten: vec![],
            blocked,
        }
    }

    use crate::plugin::PiiType;

    #[test]
    fn a_chain_merges_spans_with_the_strictest_action() {
        let values = vec![
            StringValue {
                path: "/a".into(),
                value: "mail bob@example.com ssn 123-45-6789".into(),
            },
            StringValue {
                path: "/b".into(),
                value: "MRN 00123456 ok".into(),
            },
        ];
        let default = answer(vec![
            det(0, PiiType::Email, 5, 20, PiiAction::Hash),
            det(0, PiiType::Ssn, 25, 36, PiiAction::Hash),
            det(1, PiiType::Phone, 4, 12, PiiAction::Pass),
        ]);
        let team = answer(vec![
            // Same span and type: kept once, the stricter action.
            det(0, PiiType::Email, 5, 20, PiiAction::Redact),
            // Overlaps the SSN and reaches further: one joined span.
            det(
                0,
                PiiType::Other("case_id".into()),
                21,
                30,
                PiiAction::Redact,
            ),
            det(
                1,
                PiiType::Other("medical_record_number".into()),
                0,
                12,
                PiiAction::Redact,
            ),
        ]);
        let mut hash = |s: &str| format!("h{}", s.len());
        let merged = merge(&values, vec![default, team], &mut hash).unwrap();
        assert!(!merged.blocked);
        assert_eq!(merged.detections.len(), 5, "{:?}", merged.detections);
        let email = &merged.detections[0];
        assert_eq!(email.action, PiiAction::Redact);
        assert_eq!(merged.rewritten.len(), 2);
        assert_eq!(
            merged.rewritten[0].value,
            "mail [REDACTED:email] [REDACTED:case_id]"
        );
        assert_eq!(
            merged.rewritten[1].value,
            "[REDACTED:medical_record_number] ok"
        );

        // Hash alone is rendered with the hash of the span.
        let only_hash = answer(vec![det(0, PiiType::Ssn, 25, 36, PiiAction::Hash)]);
        let merged = merge(&values, vec![only_hash, answer(vec![])], &mut hash).unwrap();
        assert_eq!(
            merged.rewritten[0].value,
            "mail bob@example.com ssn [HASH:ssn:h11]"
        );

        // A block anywhere blocks the message and rewrites nothing.
        let blocks = answer(vec![det(1, PiiType::Ssn, 0, 3, PiiAction::Block)]);
        let merged = merge(
            &values,
            vec![
                answer(vec![det(0, PiiType::Email, 5, 20, PiiAction::Redact)]),
                blocks,
            ],
            &mut hash,
        )
        .unwrap();
        assert!(merged.blocked);
        assert!(merged.rewritten.is_empty());

        // A span off the value is the policy's fault: an error.
        let bad = answer(vec![det(1, PiiType::Ssn, 3, 99, PiiAction::Redact)]);
        assert_eq!(
            merge(&values, vec![bad, answer(vec![])], &mut hash).unwrap_err(),
            RewriteError::BadSpan(1)
        );
    }

    #[test]
    fn strictness_orders_block_redact_hash_pass() {
        let order = [
            PiiAction::Pass,
            PiiAction::Hash,
            PiiAction::Redact,
            PiiAction::Block,
        ];
        for pair in order.windows(2) {
            assert!(strictness(pair[0]) < strictness(pair[1]));
        }
    }

    #[test]
    fn error_texts_lose_the_payload_they_quote() {
        let values = vec![StringValue {
            path: "/a".into(),
            value: "123-45-6789".into(),
        }];
        assert_eq!(
            scrub_error_text("panicked on 123-45-6789 at 3", &values),
            "panicked on [scanned text] at 3"
        );
    }
}
