//! Native benchmark of the default PII policy: prints ns per `scan` call.
//!
//! `cargo bench -p agentfed-policy-pii --bench scan`
//!
//! The reference case is the host benchmark's: the sentence below repeated
//! 20 times (~1.3 KB, one value) at ATTESTED, policy reused (warm).

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentfed_guest::pii::{Direction, ScanRequest, StringValue, TrustLevel};
use agentfed_policy_pii::Policy;

fn request(values: Vec<(&str, String)>, level: TrustLevel) -> ScanRequest {
    ScanRequest {
        direction: Direction::Outbound,
        peer_level: level,
        message_type: "task-assignment".into(),
        values: values
            .into_iter()
            .map(|(path, value)| StringValue {
                path: path.into(),
                value,
            })
            .collect(),
    }
}

/// Median ns per call over several timed batches.
fn bench(name: &str, policy: &Policy, req: &ScanRequest) {
    if let Ok(filter) = std::env::var("PII_BENCH")
        && !name.contains(filter.as_str())
    {
        return;
    }
    let mut hash = |s: &str| format!("{:016x}", s.len() as u64 * 0x9e37_79b9_7f4a_7c15);
    // Fixed iteration count, no timing: for `perf stat` (cycles per call
    // do not depend on how busy the machine is).
    if let Some(n) = std::env::var("PII_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        for _ in 0..n {
            black_box(policy.scan(black_box(req), &mut hash).expect("scan"));
        }
        return;
    }
    // Warm up and size the batch to ~20 ms.
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(policy.scan(black_box(req), &mut hash).expect("scan"));
        }
        if t.elapsed() > Duration::from_millis(20) {
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(policy.scan(black_box(req), &mut hash).expect("scan"));
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let bytes: usize = req.values.iter().map(|v| v.value.len()).sum();
    let result = policy.scan(req, &mut hash).expect("scan");
    println!(
        "{name:<44} {:>9.0} ns/call  (min {:>7.0}, {bytes} B, {} detections, blocked={})",
        samples[samples.len() / 2],
        samples[0],
        result.detections.len(),
        result.blocked
    );
}

fn main() {
    let policy = Policy::default();
    let reference = "contact me at bob@example.com or 555-123-4567, ssn 123-45-6789 ".repeat(20);
    bench(
        "reference (20x, ATTESTED)",
        &policy,
        &request(vec![("/text", reference.clone())], TrustLevel::Attested),
    );
    bench(
        "reference (20x, PRIVILEGED, rewrites)",
        &policy,
        &request(vec![("/text", reference)], TrustLevel::Privileged),
    );
    let prose = "The quarterly report is attached. Revenue grew 12% to $1,234.56 per unit \
                 in Q3 2024; see ticket #48213 and commit 3f2a9c1d for the details. \
                 Version 2.10.4 ships on 2024-06-01T12:00:00Z with build 1.2.3.4. "
        .repeat(6);
    bench(
        "clean prose (~1.3 KB, ATTESTED)",
        &policy,
        &request(vec![("/text", prose)], TrustLevel::Attested),
    );
    let config = "DATABASE_URL=postgres://app:Zx9qLm2Pw@db.internal:5432/app\n\
                  OPENAI_API_KEY=sk-proj-Abc123Def456Ghi789Jkl012Mno345\n\
                  GITHUB_TOKEN=ghp_0123456789abcdefghijABCDEFGHIJ012345\n\
                  password = \"hunter2\"\nserver 192.0.2.10 owner Dr. Jane Smith\n"
        .repeat(5);
    bench(
        "secrets config (~1.3 KB, PRIVILEGED)",
        &policy,
        &request(vec![("/config", config)], TrustLevel::Privileged),
    );
    let many: Vec<(&str, String)> = (0..50)
        .map(|i| {
            (
                "/items/0/note",
                format!("item {i}: call Mr. Bob Jones at 555-010-{i:04}"),
            )
        })
        .collect();
    bench(
        "50 short values (TRUSTED, hashes)",
        &policy,
        &request(many, TrustLevel::Trusted),
    );
}
