//! The host half of the PII pipeline: turning a JSON payload into the
//! string values the PII plugin scans, and writing its rewrites back.
//!
//! Only string values are scanned, each with its RFC 6901 JSON Pointer, so
//! a redaction replaces a whole JSON string and can never corrupt the
//! document's structure.

use serde_json::Value;

use crate::plugin::{RewrittenValue, StringValue};

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
}

/// Why a payload's strings were not handed to the PII plugin: more values
/// or bytes than one call may carry. The caller refuses the message (a
/// half-scanned payload would let PII through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PAYLOAD_TOO_COMPLEX")]
pub struct ScanTooLarge;

/// Every string value of `payload` with its JSON Pointer, in document
/// order (object keys in the order serde_json keeps them).
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

fn collect(value: &Value, path: &mut String, out: &mut Collected) -> Result<(), ScanTooLarge> {
    match value {
        Value::String(s) => {
            let bytes = path.len() + s.len();
            if out.values.len() >= out.max_values || bytes > out.bytes_left {
                return Err(ScanTooLarge);
            }
            out.bytes_left -= bytes;
            out.values.push(StringValue {
                path: path.clone(),
                value: s.clone(),
            });
        }
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
                collect(item, path, out)?;
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
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
        let values = string_values(&payload);
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
    }

    #[test]
    fn capped_collection_refuses_instead_of_truncating() {
        let payload = json!({"k": ["ab", "cd", "ef"]});
        assert_eq!(string_values_capped(&payload, 3, 1000).unwrap().len(), 3);
        assert_eq!(
            string_values_capped(&payload, 2, 1000).err(),
            Some(ScanTooLarge)
        );
        // Each value costs its path ("/k/0", 4 bytes) plus itself (2).
        assert_eq!(string_values_capped(&payload, 10, 18).unwrap().len(), 3);
        assert_eq!(
            string_values_capped(&payload, 10, 17).err(),
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
        let rewrites = vec![RewrittenValue {
            value_index: 0,
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
        let rewrites = vec![
            RewrittenValue {
                value_index: 0,
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
}
