//! Fetching another node's witness chain over the federation session
//! (`agentfed wg witness fetch PEER`, protocol §9.6): the request and page
//! formats, and the checks a fetched chain passes before anything of it
//! is shown. The chain is verified with the Ed25519 key of the peer's
//! manifest on record here, never with a key the peer sends.

use serde_json::{Value, json};

use super::witness::{WitnessEntry, WitnessError, export_text, verify_export};

/// The `type` of a `witness-request` reply.
pub const WITNESS_PAGE: &str = "witness-page";

/// Entries per page when the request names no `limit`.
pub const DEFAULT_PAGE_ENTRIES: usize = 64;

/// Most entries a page may hold (a page stays far below the 1 MiB reply
/// limit: an entry is at most about 2.5 KiB).
pub const MAX_PAGE_ENTRIES: usize = 128;

/// Most entries one fetch collects.
pub const MAX_FETCH_ENTRIES: usize = 1_000_000;

/// A `witness-request` payload: `{"after_seq": N, "limit": L}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessRequest {
    /// Entries with a greater sequence number are wanted (0: from the
    /// start).
    pub after_seq: u64,
    /// At most this many (1..=[`MAX_PAGE_ENTRIES`]).
    pub limit: usize,
}

impl WitnessRequest {
    /// Reads a request payload; the reason names the bad member.
    pub fn parse(payload: &Value) -> Result<WitnessRequest, String> {
        let Some(object) = payload.as_object() else {
            return Err("the payload must be an object".into());
        };
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "after_seq" | "limit"))
        {
            return Err(format!(
                "unknown member `{}`",
                crate::coordinator::clip(key)
            ));
        }
        let after_seq = match object.get("after_seq") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or("after_seq must be a non-negative integer")?,
        };
        let limit = match object.get("limit") {
            None => DEFAULT_PAGE_ENTRIES,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_PAGE_ENTRIES as u64).contains(&n) => n as usize,
                _ => return Err(format!("limit must be an integer 1-{MAX_PAGE_ENTRIES}")),
            },
        };
        Ok(WitnessRequest { after_seq, limit })
    }

    /// The payload sent.
    pub fn to_payload(self) -> Value {
        json!({"after_seq": self.after_seq, "limit": self.limit})
    }
}

/// One page as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The length of the peer's chain when it answered.
    pub head_seq: u64,
    /// The entries, oldest first.
    pub entries: Vec<WitnessEntry>,
}

/// Reads a page `peer` sent in answer to `request`: the right type and
/// node, at most the entries asked for, numbered from `after_seq + 1`
/// without a gap. Signatures are checked on the whole chain
/// ([`verified_export`]).
pub fn parse_page(reply: &Value, peer: &str, request: WitnessRequest) -> Result<Page, String> {
    let object = reply.as_object().ok_or("the reply is not an object")?;
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "node" | "head_seq" | "entries"))
    {
        return Err(format!(
            "unknown member `{}`",
            crate::coordinator::clip(key)
        ));
    }
    if object.get("type").and_then(Value::as_str) != Some(WITNESS_PAGE) {
        return Err(format!("the reply's type is not {WITNESS_PAGE}"));
    }
    if object.get("node").and_then(Value::as_str) != Some(peer) {
        return Err("the page names another node".into());
    }
    let head_seq = object
        .get("head_seq")
        .and_then(Value::as_u64)
        .ok_or("head_seq must be a non-negative integer")?;
    let raw = object
        .get("entries")
        .and_then(Value::as_array)
        .ok_or("entries must be an array")?;
    if raw.len() > request.limit {
        return Err(format!(
            "{} entries where at most {} were asked for",
            raw.len(),
            request.limit
        ));
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let entry: WitnessEntry = serde_json::from_value(value.clone())
            .map_err(|_| format!("entry {} of the page is not a witness entry", i + 1))?;
        let due = request.after_seq + 1 + i as u64;
        if entry.seq != due {
            return Err(format!(
                "entry {} of the page has sequence number {} where {due} was due",
                i + 1,
                entry.seq
            ));
        }
        entries.push(entry);
    }
    if entries.last().is_some_and(|e| e.seq > head_seq) {
        return Err("an entry lies beyond the page's head_seq".into());
    }
    Ok(Page { head_seq, entries })
}

/// The fetched chain as an export (the format `wg witness export`
/// writes), verified with `public_key`, the key of the peer's manifest on
/// record: the same check as `wg witness verify`, naming the first bad
/// entry.
pub fn verified_export(
    node_id: &str,
    public_key_b64: &str,
    public_key: &[u8; 32],
    entries: &[WitnessEntry],
) -> Result<(String, super::witness::Verified), WitnessError> {
    let text = export_text(node_id, public_key_b64, entries)?;
    let verified = verify_export(&text, public_key)?;
    Ok((text, verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_strictly() {
        assert_eq!(
            WitnessRequest::parse(&json!({})),
            Ok(WitnessRequest {
                after_seq: 0,
                limit: DEFAULT_PAGE_ENTRIES
            })
        );
        assert_eq!(
            WitnessRequest::parse(&json!({"after_seq": 5, "limit": 2})),
            Ok(WitnessRequest {
                after_seq: 5,
                limit: 2
            })
        );
        for bad in [
            json!([]),
            json!({"after_seq": -1}),
            json!({"after_seq": "1"}),
            json!({"limit": 0}),
            json!({"limit": MAX_PAGE_ENTRIES + 1}),
            json!({"limit": 1.5}),
            json!({"from": 1}),
        ] {
            assert!(WitnessRequest::parse(&bad).is_err(), "{bad}");
        }
    }

    fn entry(seq: u64) -> Value {
        json!({"seq": seq, "ts_ms": 1, "node_id": "beta", "kind": "peer_added", "details": "{}",
               "prev_hash": "00".repeat(32), "hash": "00".repeat(32), "signature": "AA=="})
    }

    #[test]
    fn pages_must_be_contiguous_and_named() {
        let request = WitnessRequest {
            after_seq: 2,
            limit: 2,
        };
        let good = json!({"type": WITNESS_PAGE, "node": "beta", "head_seq": 9, "entries": [entry(3), entry(4)]});
        assert_eq!(
            parse_page(&good, "beta", request).map(|p| p.entries.len()),
            Ok(2)
        );
        let cases = [
            json!({"type": WITNESS_PAGE, "node": "gamma", "head_seq": 9, "entries": []}),
            json!({"type": "pong", "node": "beta", "head_seq": 9, "entries": []}),
            json!({"type": WITNESS_PAGE, "node": "beta", "head_seq": 9, "entries": [entry(4)]}),
            json!({"type": WITNESS_PAGE, "node": "beta", "head_seq": 9, "entries": [entry(3), entry(4), entry(5)]}),
            json!({"type": WITNESS_PAGE, "node": "beta", "head_seq": 3, "entries": [entry(3), entry(4)]}),
            json!({"type": WITNESS_PAGE, "node": "beta", "head_seq": 9, "entries": [entry(3)], "extra": 1}),
        ];
        for bad in cases {
            assert!(parse_page(&bad, "beta", request).is_err(), "{bad}");
        }
    }
}
