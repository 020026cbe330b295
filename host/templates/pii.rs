//! {{name}}: a PII policy for agentfed.
//!
//! Blocks any message with a value containing a project code name listed
//! in the `codenames` config key (comma-separated; default "bluebird"),
//! and redacts ticket references like `TICKET-1234` below TRUSTED.
//!
//! It only handles its own categories: loaded with `[[plugins.pii.add]]`
//! it runs after agentfed's default policy, which keeps handling e-mail
//! addresses, SSNs, card numbers and the rest of its fourteen categories.
//! Per span the strictest action of the two wins (block > redact > hash >
//! pass), and the host writes the rewrites. See README.md.
use agentfed_guest::pii::*;

/// The plugin type, exported below.
pub struct Policy;

/// Finds the spans this policy cares about in one value.
pub fn find(value: &str, codenames: &[String]) -> Vec<(usize, usize, &'static str)> {
    let mut found = Vec::new();
    let lower = value.to_ascii_lowercase();
    for name in codenames.iter().filter(|n| !n.is_empty()) {
        let mut from = 0;
        while let Some(at) = lower[from..].find(name.as_str()) {
            found.push((from + at, from + at + name.len(), "codename"));
            from += at + name.len();
        }
    }
    let mut from = 0;
    while let Some(at) = value[from..].find("TICKET-") {
        let start = from + at;
        let digits = value[start + 7..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            found.push((start, start + 7 + digits, "ticket"));
        }
        from = start + 7;
    }
    found
}

/// The whole decision for one request, as a pure function.
pub fn decide(request: &ScanRequest, codenames: &[String]) -> ScanResult {
    let mut detections = Vec::new();
    let mut rewritten = Vec::new();
    for (index, item) in request.values.iter().enumerate() {
        let mut spans = find(&item.value, codenames);
        spans.sort();
        let mut out = String::new();
        let mut last = 0;
        for (start, end, kind) in spans {
            if start < last {
                continue;
            }
            let action = match kind {
                "codename" => PiiAction::Block,
                _ if request.peer_level.rank() >= TrustLevel::Trusted.rank() => PiiAction::Pass,
                _ => PiiAction::Redact,
            };
            if action == PiiAction::Redact {
                out.push_str(&item.value[last..start]);
                out.push_str(&format!("[REDACTED:{kind}]"));
                last = end;
            }
            detections.push(Detection {
                value_index: index as u32, pii_type: PiiType::from_name(kind),
                start: start as u32, end: end as u32, confidence: 0.9, action,
            });
        }
        if last > 0 {
            out.push_str(&item.value[last..]);
            rewritten.push(RewrittenValue { value_index: index as u32, value: out });
        }
    }
    let blocked = detections.iter().any(|d| d.action == PiiAction::Block);
    ScanResult { detections, rewritten, blocked }
}

impl PiiPolicy for Policy {
    const DESCRIPTION: &'static str = "{{name}}: blocks code names, redacts ticket ids";

    fn scan(request: ScanRequest) -> Result<ScanResult, String> {
        let names = host::config("codenames").unwrap_or_else(|| "bluebird".into());
        let names: Vec<String> = names.split(',').map(|n| n.trim().to_ascii_lowercase()).collect();
        Ok(decide(&request, &names))
    }
}

agentfed_guest::export_pii_policy!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(level: TrustLevel, text: &str) -> ScanRequest {
        ScanRequest {
            direction: Direction::Outbound, peer_level: level, message_type: "task-assignment".into(),
            values: vec![StringValue { path: "/note".into(), value: text.into() }],
        }
    }

    #[test]
    fn codenames_block() {
        let r = decide(&request(TrustLevel::Privileged, "status of Bluebird?"), &["bluebird".into()]);
        assert!(r.blocked);
    }

    #[test]
    fn tickets_are_redacted_below_trusted() {
        let r = decide(&request(TrustLevel::Attested, "see TICKET-42 now"), &[]);
        assert!(!r.blocked);
        assert_eq!(r.rewritten[0].value, "see [REDACTED:ticket] now");
        let r = decide(&request(TrustLevel::Trusted, "see TICKET-42 now"), &[]);
        assert!(r.rewritten.is_empty());
    }
}
