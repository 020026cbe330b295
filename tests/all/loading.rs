//! Loading components: validation with clear errors, the artifact cache,
//! hot reload, and concurrent calls.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentfed::plugin::{
    CACHE_KEY_FILE, CacheOutcome, Limits, PluginError, PluginKind, PluginSlot, PluginSource,
    TrustAction, TrustLevel,
};
use agentfed_test_artifacts as artifacts;

use crate::support::{host, load_default, load_file, load_with, peer, runtime, within};

fn load_err(kind: PluginKind, bytes: &[u8]) -> PluginError {
    let rt = runtime(None);
    rt.load_bytes(
        kind,
        PluginSource::File("input.wasm".into()),
        bytes,
        host(&[]),
        Limits::default(),
    )
    .expect_err("loading must fail")
}

#[test]
fn garbage_is_not_a_component() {
    let err = load_err(PluginKind::Trust, b"definitely not wasm");
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("input.wasm is not a valid WebAssembly component")
    );
    let err = load_err(PluginKind::Trust, b"");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn core_module_is_explained() {
    // The smallest core module: magic and version 1.
    let err = load_err(PluginKind::Pii, b"\0asm\x01\0\0\0");
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
}

#[test]
fn truncated_component_is_rejected() {
    let bytes = std::fs::read(artifacts::PANICS).unwrap();
    let err = load_err(PluginKind::Trust, &bytes[..bytes.len() / 2]);
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
}

#[test]
fn wrong_world_names_both_kinds() {
    let bytes = std::fs::read(artifacts::PANICS).unwrap(); // a trust plugin
    let err = load_err(PluginKind::Pii, &bytes);
    assert!(
        matches!(
            err,
            PluginError::WrongWorld {
                kind: PluginKind::Pii,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("agentfed:plugin/pii-policy@0.1.0"), "{text}");
    assert!(text.contains("it is a trust plugin"), "{text}");
}

#[test]
fn missing_file_is_a_read_error() {
    let rt = runtime(None);
    let err = rt
        .load(
            PluginKind::Trust,
            PluginSource::File("/nonexistent/x.wasm".into()),
            host(&[]),
            Limits::default(),
        )
        .unwrap_err();
    assert!(matches!(err, PluginError::Read { .. }), "{err}");
}

/// The cache directory inside a fresh temp dir (created by the cache
/// itself, 0700) and the temp dir that holds it.
fn cache_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugins");
    (dir, cache)
}

/// The artifact files in `cache` (everything but the key).
fn artifacts_in(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// Hex characters of an entry's key at the start of its file names.
const ENTRY_KEY_LEN: usize = 40;

/// Cache entries: every file (artifact, sidecar) by the entry key its name
/// starts with.
fn entries(cache: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut found: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.len() > ENTRY_KEY_LEN
            && name[..ENTRY_KEY_LEN].bytes().all(|b| b.is_ascii_hexdigit())
        {
            found
                .entry(name[..ENTRY_KEY_LEN].to_string())
                .or_default()
                .push(path);
        }
    }
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn precompiled_artifacts_are_cached_private_and_authenticated() {
    let (_dir, cache) = cache_dir();
    let first = runtime(Some(&cache));
    let plugin = load_file(&first, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Compiled);
    drop(first);
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join(CACHE_KEY_FILE)), 0o600);
    for artifact in artifacts_in(&cache) {
        assert_eq!(mode(&artifact), 0o600, "{}", artifact.display());
    }

    let second = runtime(Some(&cache));
    let plugin = load_file(&second, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit);

    // Tamper with every artifact: the cache must refuse it and recompile.
    for path in artifacts_in(&cache) {
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let third = runtime(Some(&cache));
    let plugin = load_file(&third, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Compiled);
    plugin
        .evaluate_trust(&peer("fine", TrustLevel::Verified, 1, 1))
        .expect("recompiled plugin works");
}

/// What someone who can write cache files but not read the key can do:
/// put another valid, host-written artifact (with everything that goes
/// with it) in place of the one a plugin loads. A checksum would match;
/// the MAC, which covers the entry's name, does not, so the other code is
/// never deserialised and the right plugin is compiled.
#[test]
fn an_artifact_moved_to_another_entry_is_not_deserialised() {
    let (_dir, cache) = cache_dir();
    let rt = runtime(Some(&cache));
    let panics = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    let panics_entry = entries(&cache).into_keys().next().unwrap();
    let allowlist = load_file(&rt, PluginKind::Trust, artifacts::ALLOWLIST_TRUST);
    assert_ne!(panics.metadata().name, allowlist.metadata().name);
    drop(rt);
    let all = entries(&cache);
    let (_, allowlist_files) = all.iter().find(|(k, _)| **k != panics_entry).unwrap();
    // Every file of the entry (artifact and any sidecar), renamed.
    for file in allowlist_files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let target = cache.join(format!("{panics_entry}{}", &name[ENTRY_KEY_LEN..]));
        std::fs::copy(file, target).unwrap();
    }

    let rt = runtime(Some(&cache));
    let loaded = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(loaded.cache_outcome(), CacheOutcome::Compiled);
    assert_eq!(loaded.metadata().name, panics.metadata().name);
    // Rewritten with its own code: the next load is a hit again.
    drop(rt);
    let rt = runtime(Some(&cache));
    let loaded = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(loaded.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(loaded.metadata().name, panics.metadata().name);
}

#[test]
fn entries_under_another_key_are_recompiled_and_a_loose_cache_is_not_used() {
    let (_dir, cache) = cache_dir();
    let rt = runtime(Some(&cache));
    load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    drop(rt);
    // Another cache's key (e.g. entries copied from elsewhere).
    let key = cache.join(CACHE_KEY_FILE);
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, [0x5a; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rt = runtime(Some(&cache));
    let plugin = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Compiled);
    drop(rt);

    // A key others can read, or a directory others can reach, makes the
    // cache unusable: compiled, neither read nor written.
    for (path, loose) in [(&key, 0o644), (&cache, 0o755)] {
        let tight = mode(path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(loose)).unwrap();
        let before = std::fs::read(&artifacts_in(&cache)[0]).unwrap();
        let rt = runtime(Some(&cache));
        let plugin = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
        assert_eq!(
            plugin.cache_outcome(),
            CacheOutcome::CompiledUncached,
            "{} {loose:o}",
            path.display()
        );
        assert_eq!(std::fs::read(&artifacts_in(&cache)[0]).unwrap(), before);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight)).unwrap();
    }
    let rt = runtime(Some(&cache));
    let plugin = load_file(&rt, PluginKind::Trust, artifacts::PANICS);
    assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit);
}

#[test]
fn concurrent_calls_use_separate_instances() {
    let rt = runtime(None);
    let plugin = load_default(&rt, PluginKind::Trust);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let plugin = plugin.clone();
            std::thread::spawn(move || {
                for n in 0..50u64 {
                    let d = plugin
                        .evaluate_trust(&peer(&format!("p{i}"), TrustLevel::Verified, n, n))
                        .unwrap();
                    assert!((0.0..=1.0).contains(&d.score));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(plugin.idle_instances() >= 1);
}

#[test]
fn a_slow_call_does_not_block_other_callers() {
    // One caller is stuck in an endless loop until its deadline; others
    // must be answered meanwhile by other instances of the same plugin.
    let rt = runtime(None);
    let limits = Limits {
        deadline_ms: 2_000,
        ..Limits::default()
    };
    let plugin = load_with(
        &rt,
        PluginKind::Trust,
        PluginSource::File(artifacts::ENDLESS_LOOP.into()),
        host(&[]),
        limits,
    );
    let stuck = {
        let plugin = plugin.clone();
        std::thread::spawn(move || plugin.evaluate_trust(&peer("loop", TrustLevel::Verified, 1, 1)))
    };
    std::thread::sleep(Duration::from_millis(100));
    let quick = within("a call beside a stuck one", Duration::from_millis(1_500), {
        let plugin = plugin.clone();
        move || plugin.evaluate_trust(&peer("fine", TrustLevel::Verified, 1, 1))
    });
    assert!(quick.is_ok());
    assert!(matches!(
        stuck.join().unwrap(),
        Err(PluginError::Timeout { .. })
    ));
}

#[test]
fn hot_reload_swaps_without_dropping_calls_in_flight() {
    let rt = Arc::new(runtime(None));
    let slot = Arc::new(
        PluginSlot::new(
            PluginKind::Trust,
            load_file(&rt, PluginKind::Trust, artifacts::PANICS),
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (slot, stop) = (slot.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let plugin = slot.get();
                    plugin
                        .evaluate_trust(&peer("fine", TrustLevel::Verified, 60, 60))
                        .expect("no call fails during reloads");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for i in 0..6 {
        let next = if i % 2 == 0 {
            load_default(&rt, PluginKind::Trust)
        } else {
            load_file(&rt, PluginKind::Trust, artifacts::PANICS)
        };
        slot.replace(next).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    let total: u32 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(total > 0);
    // The last swap installed the fixture again.
    let d = slot
        .get()
        .evaluate_trust(&peer("fine", TrustLevel::Verified, 60, 60))
        .unwrap();
    assert!(matches!(d.action, TrustAction::Keep));
}

#[test]
fn slots_refuse_plugins_of_another_kind() {
    let rt = runtime(None);
    let slot = PluginSlot::new(PluginKind::Trust, load_default(&rt, PluginKind::Trust)).unwrap();
    let spend = load_default(&rt, PluginKind::Spend);
    let err = slot.replace(spend).unwrap_err();
    assert!(err.to_string().contains("it is a spend plugin"), "{err}");
}

/// Linear memory never shrinks: an instance that grew for one large call
/// is dropped rather than kept warm, while instances of ordinary calls
/// stay in the pool (so small calls do not pay for instantiation).
#[test]
fn an_instance_that_grew_for_a_large_call_is_not_kept_warm() {
    use agentfed::plugin::{Direction, ScanRequest, StringValue};
    let rt = runtime(None);
    // The default memory limit, a deadline a debug build meets.
    let limits = Limits {
        deadline_ms: 5_000,
        ..Limits::default()
    };
    let source = PluginSource::Embedded(agentfed::embedded::default_name(PluginKind::Pii));
    let plugin = load_with(&rt, PluginKind::Pii, source, host(&[]), limits);
    let scan = |text: String| {
        plugin
            .scan_pii(&ScanRequest {
                direction: Direction::Inbound,
                peer_level: TrustLevel::Trusted,
                message_type: "context-share".into(),
                values: vec![StringValue {
                    path: "/text".into(),
                    value: text,
                }],
            })
            .expect("scan")
    };
    scan("mail bob@example.com".into());
    let warm = plugin.idle_instances();
    assert!(warm >= 1, "an ordinary call keeps its instance warm");
    scan("call 555-123-4567 ".repeat(4096));
    assert_eq!(plugin.idle_instances(), warm, "a 70 KB scan stays warm");
    scan("s".repeat(16 << 20));
    assert_eq!(
        plugin.idle_instances(),
        warm - 1,
        "the instance of a 16 MiB scan is dropped"
    );
    scan("mail bob@example.com".into());
    assert_eq!(plugin.idle_instances(), warm);
}
