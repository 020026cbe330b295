//! Hostile plugins, built as real components from `tests/fixtures/`: each
//! misbehaviour is stopped, reported as a typed error, and the very next
//! call on the same plugin is answered normally.

use std::time::{Duration, Instant};

use agentfed::plugin::{
    BreakerState, BreakerView, Direction, Limits, MessageView, PluginError, PluginKind,
    PluginSource, ScanRequest, SpendDecision, SpendRequest, SpendWindow, StringValue, TrustAction,
    TrustLevel,
};
use agentfed_test_artifacts as artifacts;

use crate::support::{host, load_file, load_with, peer, runtime, within};

fn well_behaved_call_works(plugin: &agentfed::plugin::LoadedPlugin) {
    let decision = plugin
        .evaluate_trust(&peer("fine", TrustLevel::Verified, 1, 1))
        .expect("the next call is answered normally");
    assert!(matches!(decision.action, TrustAction::Keep));
    assert_eq!(decision.reason, "well-behaved call");
}

#[test]
fn endless_loop_is_stopped_at_the_deadline() {
    let rt = runtime(None);
    let limits = Limits {
        deadline_ms: 50,
        ..Limits::default()
    };
    let plugin = load_with(
        &rt,
        PluginKind::Trust,
        PluginSource::File(artifacts::ENDLESS_LOOP.into()),
        host(&[]),
        limits,
    );
    let started = Instant::now();
    let err = within(
        "the looping call to be interrupted",
        Duration::from_secs(10),
        {
            let plugin = plugin.clone();
            move || {
                plugin
                    .evaluate_trust(&peer("loop", TrustLevel::Verified, 1, 1))
                    .unwrap_err()
            }
        },
    );
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            PluginError::Timeout {
                deadline_ms: 50,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), "PLUGIN_TIMEOUT");
    assert!(
        elapsed >= Duration::from_millis(50),
        "stopped early: {elapsed:?}"
    );
    well_behaved_call_works(&plugin);
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let rt = runtime(None);
    let limits = Limits {
        memory_mib: 16,
        deadline_ms: 5_000,
        ..Limits::default()
    };
    let plugin = load_with(
        &rt,
        PluginKind::Trust,
        PluginSource::File(artifacts::MEMORY_HOG.into()),
        host(&[]),
        limits,
    );
    let err = plugin
        .evaluate_trust(&peer("hog", TrustLevel::Verified, 1, 1))
        .unwrap_err();
    assert!(
        matches!(err, PluginError::OutOfMemory { limit_mib: 16, .. }),
        "{err}"
    );
    well_behaved_call_works(&plugin);
}

#[test]
fn panic_is_a_trap_with_its_message() {
    let rt = runtime(None);
    let plugin = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    let err = plugin
        .evaluate_trust(&peer("panic", TrustLevel::Verified, 1, 1))
        .unwrap_err();
    match &err {
        PluginError::Panic { message, .. } => assert_eq!(
            message.as_deref(),
            Some("deliberate panic in a hostile fixture")
        ),
        other => panic!("expected a panic, got {other}"),
    }
    well_behaved_call_works(&plugin);
}

fn scan_request(first_value: &str) -> ScanRequest {
    ScanRequest {
        direction: Direction::Outbound,
        peer_level: TrustLevel::Attested,
        message_type: "task-assignment".into(),
        values: vec![StringValue {
            path: "/path".into(),
            value: first_value.into(),
        }],
    }
}

#[test]
fn files_are_not_reachable() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "top secret").unwrap();
    let rt = runtime(None);
    let plugin = load_file(&rt, PluginKind::Pii, artifacts::READS_FILES);
    for path in [secret.path().to_str().unwrap(), "/etc/passwd", "."] {
        let err = plugin.scan_pii(&scan_request(path)).unwrap_err();
        let PluginError::Refused { reason, .. } = &err else {
            panic!("expected the fixture's report, got {err}");
        };
        assert!(
            reason.starts_with("file: denied"),
            "file read was not denied: {reason}"
        );
        assert!(
            reason.contains("dir: denied"),
            "directory listing was not denied: {reason}"
        );
    }
}

#[test]
fn environment_and_arguments_are_empty() {
    // SAFETY: this test binary's other tests do not read this variable.
    unsafe { std::env::set_var("AGENTFED_TEST_SECRET", "should-not-leak") };
    let rt = runtime(None);
    let plugin = load_file(&rt, PluginKind::Pii, artifacts::READS_ENV);
    let err = plugin.scan_pii(&scan_request("x")).unwrap_err();
    let PluginError::Refused { reason, .. } = &err else {
        panic!("expected the fixture's report, got {err}");
    };
    assert!(reason.starts_with("vars=0 args=0"), "{reason}");
}

#[test]
fn sockets_and_name_lookups_are_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let rt = runtime(None);
    let plugin = load_file(&rt, PluginKind::Handler, artifacts::OPENS_SOCKET);
    let message = MessageView {
        id: "m-1".into(),
        source: "peer".into(),
        message_type: "ping".into(),
        payload_json: format!("\"{target}\""),
        sender_level: TrustLevel::Attested,
        hop_count: 0,
        sent_at_ms: 0,
    };
    let decision = plugin
        .handle_message(&message)
        .expect("the fixture answers");
    let agentfed::plugin::HandlerDecision::Reject(report) = decision else {
        panic!("expected the fixture's report, got {decision:?}");
    };
    for part in ["tcp=denied", "listen=denied", "udp=denied", "dns=denied"] {
        assert!(report.contains(part), "{part} missing in: {report}");
    }
    assert!(
        listener.accept().is_err(),
        "the plugin reached the test's loopback listener"
    );
}

#[test]
fn guest_output_is_bounded_and_the_call_succeeds() {
    let rt = runtime(None);
    let limits = Limits {
        deadline_ms: 10_000,
        ..Limits::default()
    };
    let plugin = load_with(
        &rt,
        PluginKind::Spend,
        PluginSource::File(artifacts::STDOUT_FLOOD.into()),
        host(&[]),
        limits,
    );
    let window = |window_ms| SpendWindow {
        window_ms,
        samples: 0,
        failures: 0,
        tokens: 0,
        usd: 0.0,
    };
    let request = SpendRequest {
        node_id: "peer".into(),
        breaker: BreakerView {
            state: BreakerState::Active,
            since_ms: 0,
            reason: None,
            failures_since_suspend: 0,
        },
        last_hour: window(3_600_000),
        last_day: window(86_400_000),
        now_ms: 0,
    };
    assert!(matches!(
        plugin.evaluate_spend(&request).unwrap(),
        SpendDecision::None
    ));
}
