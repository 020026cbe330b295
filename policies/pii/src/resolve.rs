//! Choosing actions, resolving overlaps and rewriting values.

use agentfed_guest::pii::{PiiAction, TrustLevel};

use crate::actions::{ActionTable, severity};
use crate::finding::Finding;

/// A finding with the action the policy chose for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// What was found.
    pub finding: Finding,
    /// What happens to it.
    pub action: PiiAction,
}

type Cmp = fn(&Decision, &Decision) -> std::cmp::Ordering;

/// Both sorts share one instantiation of the sort code (smaller wasm).
const CMP_POSITION: Cmp = |a, b| {
    (
        a.finding.start,
        a.finding.end,
        a.finding.pii_type,
        a.finding.rule,
    )
        .cmp(&(
            b.finding.start,
            b.finding.end,
            b.finding.pii_type,
            b.finding.rule,
        ))
        .then(b.finding.confidence.total_cmp(&a.finding.confidence))
};

/// The overlap ranking: more protective action, longer span, earlier
/// start, higher confidence, then names (a total order: deterministic).
const CMP_RANK: Cmp = |a, b| {
    let (fa, fb) = (&a.finding, &b.finding);
    severity(b.action)
        .cmp(&severity(a.action))
        .then(fb.len().cmp(&fa.len()))
        .then(fa.start.cmp(&fb.start))
        .then(fb.confidence.total_cmp(&fa.confidence))
        .then(fa.pii_type.cmp(fb.pii_type))
        .then(fa.rule.cmp(fb.rule))
};

/// Assigns each finding its action from `table` at `level` and keeps a
/// non-overlapping subset, sorted by start.
///
/// Overlaps are resolved greedily in a fixed order, so the result is
/// deterministic: the more protective action first (block > redact >
/// hash > pass), then the longer span, then the earlier start, then the
/// higher confidence, then the type and rule names.
pub fn resolve(findings: &[Finding], table: &ActionTable, level: TrustLevel) -> Vec<Decision> {
    let mut out = Vec::new();
    resolve_into(findings, table, level, 0.0, &mut Vec::new(), &mut out);
    out
}

/// [`resolve`] that drops findings below `min_confidence` and appends to
/// `out`, using `cands` as scratch space.
pub(crate) fn resolve_into(
    findings: &[Finding],
    table: &ActionTable,
    level: TrustLevel,
    min_confidence: f32,
    cands: &mut Vec<Decision>,
    out: &mut Vec<Decision>,
) {
    cands.clear();
    cands.reserve(findings.len());
    // A few types per value, in runs or cycles: cache lookups by address.
    let mut cache: [(usize, usize, PiiAction); 8] = [(0, 0, PiiAction::Block); 8];
    let mut cached = 0;
    let (mut ordered, mut disjoint) = (true, true);
    let (mut prev_start, mut prev_end) = (0, 0);
    for &finding in findings {
        if finding.confidence < min_confidence || finding.is_empty() {
            continue;
        }
        let key = (finding.pii_type.as_ptr() as usize, finding.pii_type.len());
        let action = match cache[..cached].iter().find(|c| (c.0, c.1) == key) {
            Some(c) => c.2,
            None => {
                let a = table.action(finding.pii_type, level);
                if cached < cache.len() {
                    cache[cached] = (key.0, key.1, a);
                    cached += 1;
                }
                a
            }
        };
        if !cands.is_empty() {
            ordered &= (prev_start, prev_end) <= (finding.start, finding.end);
            disjoint &= finding.start >= prev_end;
        }
        (prev_start, prev_end) = (finding.start, finding.end);
        cands.push(Decision { finding, action });
    }
    // Common case: in order and nothing overlaps, so nothing to rank.
    if ordered && disjoint {
        out.extend_from_slice(cands);
        return;
    }
    if !ordered {
        cands.sort_unstable_by(CMP_POSITION);
    }
    // Greedy selection is independent between clusters of mutually
    // overlapping findings: rank only inside each cluster.
    let mut i = 0;
    while i < cands.len() {
        let mut j = i + 1;
        let mut end = cands[i].finding.end;
        while j < cands.len() && cands[j].finding.start < end {
            end = end.max(cands[j].finding.end);
            j += 1;
        }
        if j == i + 1 {
            out.push(cands[i]);
        } else {
            let cluster = &mut cands[i..j];
            cluster.sort_unstable_by(CMP_RANK);
            let base = out.len();
            for &d in cluster.iter() {
                let accepted = &out[base..];
                let pos = accepted.partition_point(|x| x.finding.start < d.finding.start);
                let clash_before = pos > 0 && accepted[pos - 1].finding.end > d.finding.start;
                let clash_after =
                    pos < accepted.len() && accepted[pos].finding.start < d.finding.end;
                if !clash_before && !clash_after {
                    out.insert(base + pos, d);
                }
            }
        }
        i = j;
    }
}

/// Rewrites `value` according to `decisions` (sorted by start, not
/// overlapping, as [`resolve`] returns them): `redact` replaces a span with
/// `[REDACTED:<type>]`, `hash` with `[HASH:<type>:<h>]` where `h` is
/// `hash(span)`, `pass` and `block` leave it. Returns `None` when nothing
/// changed.
///
/// `hash` is the host's keyed hash in a plugin and any function in tests.
/// Its output must be 1–128 ASCII letters or digits and must not be a
/// prefix of the span (a hash that leaks the value is refused): anything
/// else is an error, which the host treats as a blocked message.
pub fn apply(
    value: &str,
    decisions: &[Decision],
    hash: &mut dyn FnMut(&str) -> String,
) -> Result<Option<String>, String> {
    if !decisions
        .iter()
        .any(|d| matches!(d.action, PiiAction::Redact | PiiAction::Hash))
    {
        return Ok(None);
    }
    let mut out = String::with_capacity(value.len() + 32);
    let mut at = 0;
    for d in decisions {
        let f = &d.finding;
        if f.start < at || f.end > value.len() || f.start >= f.end {
            return Err("PII decisions overlap or fall outside the value".into());
        }
        let Some(span) = value.get(f.start..f.end) else {
            return Err("PII decision is not on a character boundary".into());
        };
        match d.action {
            PiiAction::Pass | PiiAction::Block => continue,
            PiiAction::Redact => {
                out.push_str(&value[at..f.start]);
                out.push_str("[REDACTED:");
                out.push_str(f.pii_type);
                out.push(']');
            }
            PiiAction::Hash => {
                let h = hash(span);
                if h.is_empty() || h.len() > 128 || !h.bytes().all(|c| c.is_ascii_alphanumeric()) {
                    return Err("the keyed hash is malformed".into());
                }
                if span.starts_with(h.as_str()) {
                    return Err("the keyed hash would reveal a prefix of the value".into());
                }
                out.push_str(&value[at..f.start]);
                out.push_str("[HASH:");
                out.push_str(f.pii_type);
                out.push(':');
                out.push_str(&h);
                out.push(']');
            }
        }
        at = f.end;
    }
    out.push_str(&value[at..]);
    Ok(Some(out))
}
