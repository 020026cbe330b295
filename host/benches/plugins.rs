//! Plugin runtime benchmarks: a bench binary that prints its numbers.
//!
//!     cargo bench -p agentfed --bench plugins
//!
//! Measures, on the embedded default policies (warm = instance reused):
//! * PII scan of the reference text (1.3 KB) at ATTESTED, per call,
//!   including the host↔guest boundary;
//! * trust and spend decisions per call;
//! * first compile of each policy, and loading it from the artifact cache;
//! * resident memory per loaded plugin (one warm instance each).

use std::time::{Duration, Instant};

use agentfed::plugin::{
    BreakerState, BreakerView, Direction, HostContext, InteractionMetrics, Limits, PeerSnapshot,
    PluginKind, PluginRuntime, PluginSource, RuntimeOptions, ScanRequest, SpendRequest,
    SpendWindow, StringValue, TrustLevel,
};

use agentfed::trust_ledger::{EarnedLedger, EarningRules, promotion_gates};

const REFERENCE: &str = "contact me at bob@example.com or 555-123-4567, ssn 123-45-6789 ";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // only wants to know the binary runs.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 200 } else { 20_000 };

    // Private: the cache refuses a directory group or others may read.
    let cache = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        cache.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod 0700");
    compile_and_cache(cache.path(), quick);

    let runtime = runtime(Some(cache.path()));
    let load = |kind| {
        let source = PluginSource::Embedded(agentfed::embedded::default_name(kind));
        let host = HostContext::standalone("bench", Default::default(), [9; 32]);
        runtime
            .load(kind, source, host, Limits::default())
            .expect("load")
    };

    let pii = load(PluginKind::Pii);
    let request = ScanRequest {
        direction: Direction::Outbound,
        peer_level: TrustLevel::Attested,
        message_type: "task-assignment".into(),
        values: vec![StringValue {
            path: "/text".into(),
            value: REFERENCE.repeat(20),
        }],
    };
    let result = pii.scan_pii(&request).expect("scan");
    assert_eq!(
        result.detections.len(),
        60,
        "the reference text has 60 findings"
    );
    report(
        "pii scan, reference text 1.3 KB, ATTESTED, warm",
        per_call(rounds, || {
            pii.scan_pii(&request).expect("scan");
        }),
        Some(Duration::from_micros(18)),
    );

    // Bulk payloads: how the scan grows with size, which sets the PII
    // deadline's per-MiB allowance (docs/benchmarks.md). The deadline is
    // lifted for this measurement only.
    let pii_unbounded = {
        let source = PluginSource::Embedded(agentfed::embedded::default_name(PluginKind::Pii));
        let host = HostContext::standalone("bench", Default::default(), [9; 32]);
        let limits = Limits {
            deadline_ms: 60_000,
            ..Limits::default()
        };
        runtime
            .load(PluginKind::Pii, source, host, limits)
            .expect("load")
    };
    for mib in [1usize, 4, 16] {
        // Strings of ~1 KB of prose with a finding every 16 KiB: the
        // shape of a large context-share.
        let chunk = "the quarterly summary discusses throughput, latency and cost across regions; "
            .repeat(13);
        let count = mib * 1024;
        let values: Vec<StringValue> = (0..count)
            .map(|i| StringValue {
                path: format!("/docs/{i}"),
                value: if i % 16 == 0 {
                    format!("{chunk} contact ops{i}@example.com")
                } else {
                    chunk.clone()
                },
            })
            .collect();
        let request = ScanRequest {
            direction: Direction::Outbound,
            peer_level: TrustLevel::Trusted,
            message_type: "context-share".into(),
            values,
        };
        let runs = if quick { 1 } else { 5 };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                pii_unbounded.scan_pii(&request).expect("scan");
                started.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "pii scan, {mib} MiB in {count} strings of ~1 KB, warm: min {:.1} ms, max {:.1} ms ({runs} runs)",
            times[0].as_secs_f64() * 1e3,
            times[runs - 1].as_secs_f64() * 1e3,
        );
    }

    let trust = load(PluginKind::Trust);
    let peer = PeerSnapshot {
        node_id: "peer-1".into(),
        level: TrustLevel::Verified,
        level_since_ms: 0,
        metrics: InteractionMetrics {
            interactions: 80,
            successes: 78,
            failures: 2,
            threats: 0,
            signature_failures: 0,
            uptime: 0.99,
            integrity: 1.0,
            threats_last_hour: 0,
            first_seen_ms: 0,
            last_seen_ms: 0,
        },
        now_ms: 1_000_000,
    };
    report(
        "trust decision, warm",
        per_call(rounds, || {
            trust.evaluate_trust(&peer).expect("trust");
        }),
        Some(Duration::from_micros(5)),
    );
    // What the host adds to a promotion: its earning rules over a peer with
    // a full ledger (400 active days), and the plugin call together.
    let rules = EarningRules::default();
    let mut ledger = EarnedLedger::default();
    for day in 0..400u64 {
        ledger.credit(day * 86_400_000, 30, rules.counted_per_hour);
    }
    let now = 400 * 86_400_000;
    report(
        "trust decision with the host's earning rules, warm",
        per_call(rounds, || {
            trust.evaluate_trust(&peer).expect("trust");
            std::hint::black_box(promotion_gates(
                &rules,
                agentfed::model::TrustLevel::Attested,
                now - 8 * 86_400_000,
                &ledger,
                None,
                now,
            ));
        }),
        Some(Duration::from_micros(5)),
    );

    let spend = load(PluginKind::Spend);
    let window = |window_ms, samples, usd| SpendWindow {
        window_ms,
        samples,
        failures: 3,
        tokens: 10_000,
        usd,
    };
    let spend_request = SpendRequest {
        node_id: "peer-1".into(),
        breaker: BreakerView {
            state: BreakerState::Active,
            since_ms: 0,
            reason: None,
            failures_since_suspend: 0,
        },
        last_hour: window(3_600_000, 60, 0.5),
        last_day: window(86_400_000, 400, 3.2),
        now_ms: 1_000_000,
    };
    report(
        "spend decision, warm",
        per_call(rounds, || {
            spend.evaluate_spend(&spend_request).expect("spend");
        }),
        Some(Duration::from_micros(5)),
    );

    resident_memory_per_plugin(&runtime, if quick { 2 } else { 16 });
}

fn runtime(cache: Option<&std::path::Path>) -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        cache_dir: cache.map(|p| p.to_path_buf()),
    })
    .expect("runtime")
}

/// First compile of each default policy (into an empty cache), then a
/// load from the cache by a fresh runtime (as a restarted daemon would).
fn compile_and_cache(cache: &std::path::Path, quick: bool) {
    for kind in PluginKind::ALL {
        let name = agentfed::embedded::default_name(kind);
        let bytes = agentfed::embedded::bytes(name).expect("embedded");
        let first = runtime(Some(cache));
        let started = Instant::now();
        first.compile(name, bytes).expect("compile");
        let compile = started.elapsed();

        let rounds = if quick { 1 } else { 10 };
        let mut loads = Vec::new();
        for _ in 0..rounds {
            let fresh = runtime(Some(cache));
            let started = Instant::now();
            let source = PluginSource::Embedded(name);
            let host = HostContext::standalone("bench", Default::default(), [9; 32]);
            let plugin = fresh
                .load(kind, source, host, Limits::default())
                .expect("load");
            loads.push(started.elapsed());
            assert_eq!(plugin.cache_outcome(), agentfed::plugin::CacheOutcome::Hit);
        }
        loads.sort();
        println!(
            "{name:<16} size {:>7} B   first compile {:>8.1} ms   load from cache (median of {rounds}, incl. instantiate + metadata call) {:>6.2} ms{}",
            bytes.len(),
            ms(compile),
            ms(loads[loads.len() / 2]),
            verdict(loads[loads.len() / 2], Duration::from_millis(20)),
        );
    }
}

/// Median per-call time over batches of calls.
fn per_call(rounds: u32, mut call: impl FnMut()) -> Duration {
    for _ in 0..rounds.min(1_000) {
        call();
    }
    let batch = 100;
    let mut samples = Vec::new();
    for _ in 0..(rounds / batch).max(1) {
        let started = Instant::now();
        for _ in 0..batch {
            call();
        }
        samples.push(started.elapsed() / batch);
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn report(what: &str, per_call: Duration, target: Option<Duration>) {
    let verdict = target.map(|t| verdict(per_call, t)).unwrap_or_default();
    println!(
        "{what:<52} {:>8.2} µs/call{verdict}",
        per_call.as_secs_f64() * 1e6
    );
}

fn verdict(measured: Duration, target: Duration) -> String {
    let ok = if measured <= target { "ok" } else { "OVER" };
    format!("   (target ≤ {target:?}: {ok})")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Loads `n` copies of each default policy (each with one warm instance
/// after its metadata call and one scan/decision) and reports the growth
/// of resident memory per loaded plugin.
fn resident_memory_per_plugin(runtime: &PluginRuntime, n: usize) {
    for kind in PluginKind::ALL {
        let before = resident_bytes();
        let mut keep = Vec::new();
        for _ in 0..n {
            let source = PluginSource::Embedded(agentfed::embedded::default_name(kind));
            let host = HostContext::standalone("bench", Default::default(), [9; 32]);
            keep.push(
                runtime
                    .load(kind, source, host, Limits::default())
                    .expect("load"),
            );
        }
        let after = resident_bytes();
        println!(
            "{:<16} resident memory per loaded plugin (1 warm instance): {:>6.0} KiB",
            agentfed::embedded::default_name(kind),
            (after.saturating_sub(before)) as f64 / n as f64 / 1024.0
        );
    }
}
