//! Shared helpers for the integration tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentfed::plugin::{
    HostContext, InteractionMetrics, Limits, LoadedPlugin, PeerSnapshot, PluginKind, PluginRuntime,
    PluginSource, RuntimeOptions, TrustLevel,
};

/// A temp dir private to this user (0700), as a node home must be
/// (tempfile's directories follow the umask).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("temp dir")
}

/// A runtime whose artifact cache lives in `cache` (or none).
pub fn runtime(cache: Option<&Path>) -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        cache_dir: cache.map(Path::to_path_buf),
    })
    .expect("runtime starts")
}

/// A host context with a fixed key and the given config.
pub fn host(config: &[(&str, &str)]) -> HostContext {
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HostContext::standalone("test", config, [7; 32])
}

/// Limits for tests that are not about deadlines: the default memory cap,
/// and a deadline generous enough that a loaded 2-core CI machine cannot
/// turn a slow schedule into a spurious timeout.
pub fn relaxed_limits() -> Limits {
    Limits {
        deadline_ms: 10_000,
        ..Limits::default()
    }
}

/// Loads a component file into a slot of `kind`.
pub fn load_file(runtime: &PluginRuntime, kind: PluginKind, path: &str) -> Arc<LoadedPlugin> {
    load_with(
        runtime,
        kind,
        PluginSource::File(path.into()),
        host(&[]),
        relaxed_limits(),
    )
}

/// Loads the embedded default of `kind`.
pub fn load_default(runtime: &PluginRuntime, kind: PluginKind) -> Arc<LoadedPlugin> {
    let source = PluginSource::Embedded(agentfed::embedded::default_name(kind));
    load_with(runtime, kind, source, host(&[]), relaxed_limits())
}

/// Loads with everything explicit; panics with the error on failure.
pub fn load_with(
    runtime: &PluginRuntime,
    kind: PluginKind,
    source: PluginSource,
    host: HostContext,
    limits: Limits,
) -> Arc<LoadedPlugin> {
    runtime
        .load(kind, source, host, limits)
        .unwrap_or_else(|e| panic!("loading {kind} plugin: {e}"))
}

/// A peer snapshot for trust calls.
pub fn peer(node_id: &str, level: TrustLevel, interactions: u64, successes: u64) -> PeerSnapshot {
    PeerSnapshot {
        node_id: node_id.into(),
        level,
        level_since_ms: 0,
        metrics: InteractionMetrics {
            interactions,
            successes,
            failures: interactions - successes,
            threats: 0,
            signature_failures: 0,
            uptime: 1.0,
            integrity: 1.0,
            threats_last_hour: 0,
            first_seen_ms: 0,
            last_seen_ms: 0,
        },
        now_ms: 1_000_000,
    }
}

/// Runs `f` on a thread and fails the test, naming `what`, if it does not
/// finish within `limit`.
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}
