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
    /// The plugin rewrote an object key or a number (the caller blocks the
    /// message: a rewrite there would change the document's shape).
    #[error("the PII plugin rewrote an object key or a number")]
    Structural,
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
}
