//! WireGuard key rotation over a real home (real key files, a real
//! witness chain), at every point a crash can interrupt it: the staged
//! key, the intent entry, the install, the destruction after the grace
//! period.

use std::path::Path;
use std::sync::Arc;

use agentfed::clock::ManualClock;
use agentfed::coordinator::{Coordinator, CoordinatorOptions};
use agentfed::identity::{
    Identity, NodeId, WIREGUARD_KEY_FILE, generate_wg_private_key, read_key_file, wg_public_key_of,
    write_key_file,
};
use agentfed::mesh::rotation::{
    NEXT_KEY_FILE, PREVIOUS_KEY_FILE, destroy_if_due, previous_key, recover, rotate,
};
use agentfed::mesh::witness::{WitnessKind, WitnessLog, verify_export};
use base64::Engine as _;
use serde_json::json;

const START_MS: u64 = 1_800_000_000_000;

struct Home {
    dir: tempfile::TempDir,
    coordinator: Arc<Coordinator>,
}

impl Home {
    fn new() -> Home {
        let dir = crate::support::private_tempdir();
        Identity::init(
            dir.path(),
            &NodeId::parse("alpha").expect("id"),
            Some("wss://127.0.0.1:9100"),
            false,
        )
        .expect("init");
        let clock = Arc::new(ManualClock::new(START_MS));
        let coordinator = Arc::new(
            Coordinator::open(
                dir.path(),
                CoordinatorOptions {
                    clock,
                    plugin_cache_dir: Some(
                        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache"),
                    ),
                },
            )
            .expect("open"),
        );
        Home { dir, coordinator }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn witness(&self) -> WitnessLog {
        WitnessLog::new(Arc::clone(&self.coordinator))
    }

    fn kinds(&self) -> Vec<String> {
        self.witness()
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    fn key_on_disk(&self) -> [u8; 32] {
        wg_public_key_of(&read_key_file(&self.path().join(WIREGUARD_KEY_FILE)).expect("key"))
    }

    fn key_in_memory(&self) -> [u8; 32] {
        self.coordinator.identity().wg_key_bytes().1
    }
}

fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[test]
fn a_rotation_installs_the_new_key_and_destroys_the_old_one_after_its_grace() {
    let home = Home::new();
    let old = home.key_in_memory();
    let r = rotate(
        home.path(),
        home.coordinator.identity(),
        &home.witness(),
        START_MS,
        60,
    )
    .expect("rotate");
    assert_eq!(r.old_public_key, b64(&old));
    assert_eq!(r.new_public_key, b64(&home.key_in_memory()));
    assert_eq!(home.key_on_disk(), home.key_in_memory());
    assert_ne!(home.key_in_memory(), old);
    assert!(!home.path().join(NEXT_KEY_FILE).exists());
    let mode = |name: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(home.path().join(name))
                .expect("file")
                .permissions(),
        ) & 0o777
    };
    assert_eq!(mode(WIREGUARD_KEY_FILE), 0o600);
    assert_eq!(mode(PREVIOUS_KEY_FILE), 0o600);
    assert_eq!(
        previous_key(home.path()).expect("read"),
        Some((b64(&old), START_MS + 60_000))
    );
    // The manifest carries the new key.
    let manifest = home.coordinator.manifest().expect("manifest");
    assert_eq!(manifest.manifest.wg_public_key, r.new_public_key);

    // Not before the grace period ends.
    assert_eq!(
        destroy_if_due(home.path(), &home.witness(), START_MS + 59_999).expect("early"),
        None
    );
    assert!(home.path().join(PREVIOUS_KEY_FILE).exists());
    assert_eq!(
        destroy_if_due(home.path(), &home.witness(), START_MS + 60_000).expect("due"),
        Some(b64(&old))
    );
    assert!(!home.path().join(PREVIOUS_KEY_FILE).exists());
    assert_eq!(home.kinds(), ["key_rotated", "key_destroyed"]);
    let entries = home.witness().entries().expect("entries");
    let details: serde_json::Value = serde_json::from_str(&entries[0].details).expect("json");
    assert_eq!(details["old_public_key"], b64(&old).as_str());
    assert_eq!(details["destroy_at_ms"], START_MS + 60_000);
    // No private key in the chain, and it verifies.
    let export = home.witness().export().expect("export");
    let public = home.coordinator.identity().verifying_key().to_bytes();
    assert_eq!(
        verify_export(&export, &public).expect("verifies").entries,
        2
    );
}

#[test]
fn a_second_rotation_in_the_grace_period_destroys_the_older_key_first() {
    let home = Home::new();
    let first = home.key_in_memory();
    rotate(
        home.path(),
        home.coordinator.identity(),
        &home.witness(),
        START_MS,
        600,
    )
    .expect("first");
    let second = home.key_in_memory();
    let r = rotate(
        home.path(),
        home.coordinator.identity(),
        &home.witness(),
        START_MS + 1,
        600,
    )
    .expect("second");
    assert_eq!(r.superseded, Some(b64(&first)));
    assert_eq!(r.old_public_key, b64(&second));
    assert_eq!(
        home.kinds(),
        ["key_rotated", "key_destroyed", "key_rotated"]
    );
    assert_eq!(
        previous_key(home.path()).expect("read").map(|(k, _)| k),
        Some(b64(&second))
    );
}

#[test]
fn a_staged_key_without_its_witness_entry_is_dropped_at_start() {
    let home = Home::new();
    let before = home.key_in_memory();
    // A crash after step 1: the staged key, no entry.
    let staged = generate_wg_private_key().expect("key");
    write_key_file(&home.path().join(NEXT_KEY_FILE), &staged).expect("stage");
    assert_eq!(
        recover(home.path(), home.coordinator.identity(), &home.witness()).expect("recover"),
        None
    );
    assert!(!home.path().join(NEXT_KEY_FILE).exists());
    assert_eq!(home.key_in_memory(), before);
    assert_eq!(home.key_on_disk(), before);
    assert!(home.kinds().is_empty());
}

#[test]
fn a_staged_key_its_witness_entry_names_is_installed_at_start() {
    let home = Home::new();
    let before = home.key_in_memory();
    // A crash after step 2: the staged key and its entry, not installed.
    let staged = generate_wg_private_key().expect("key");
    let staged_public = wg_public_key_of(&staged);
    write_key_file(&home.path().join(NEXT_KEY_FILE), &staged).expect("stage");
    home.witness()
        .append(
            WitnessKind::KeyRotated,
            json!({"old_public_key": b64(&before), "new_public_key": b64(&staged_public),
                   "grace_secs": 600, "destroy_at_ms": START_MS + 600_000}),
        )
        .expect("entry");
    let recovered =
        recover(home.path(), home.coordinator.identity(), &home.witness()).expect("recover");
    assert_eq!(recovered, Some(b64(&staged_public)));
    assert_eq!(home.key_in_memory(), staged_public);
    assert_eq!(home.key_on_disk(), staged_public);
    assert_eq!(
        previous_key(home.path()).expect("read"),
        Some((b64(&before), START_MS + 600_000))
    );
    // Nothing is written twice: the chain still has the one entry.
    assert_eq!(home.kinds(), ["key_rotated"]);
    // A second start finds nothing to do.
    assert_eq!(
        recover(home.path(), home.coordinator.identity(), &home.witness()).expect("again"),
        None
    );
}

#[test]
fn a_crash_between_key_destroyed_and_the_removal_writes_no_second_entry() {
    let home = Home::new();
    rotate(
        home.path(),
        home.coordinator.identity(),
        &home.witness(),
        START_MS,
        1,
    )
    .expect("rotate");
    let kept = std::fs::read(home.path().join(PREVIOUS_KEY_FILE)).expect("previous");
    destroy_if_due(home.path(), &home.witness(), START_MS + 5_000)
        .expect("destroy")
        .expect("destroyed");
    // As if the removal had not happened: the file is back.
    std::fs::write(home.path().join(PREVIOUS_KEY_FILE), &kept).expect("restore");
    assert!(
        destroy_if_due(home.path(), &home.witness(), START_MS + 6_000)
            .expect("destroy again")
            .is_some()
    );
    assert!(!home.path().join(PREVIOUS_KEY_FILE).exists());
    assert_eq!(home.kinds(), ["key_rotated", "key_destroyed"]);
}
