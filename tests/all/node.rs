//! `agentfed init` and `agentfed manifest`, run as real processes.

use std::os::unix::fs::PermissionsExt;

use agentfed::config::NodeConfig;
use agentfed::identity::SignedManifest;

use crate::harness::{Node, agentfed};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_creates_keys_config_and_a_verifiable_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n");
    let out = agentfed(
        &home,
        &[
            "init",
            "--node-id",
            "lab-1",
            "--endpoint",
            "wss://192.0.2.1:9100",
            "--agent-type",
            "coder",
            "--agent-type",
            "tester",
            "--mesh-subnet",
            "198.18.0.0/15",
        ],
    );
    let text = out.ok().to_string();
    assert_eq!(mode(&home), 0o700);
    for key in ["identity.key", "wireguard.key", "hash.key", "tls.key"] {
        assert_eq!(mode(&home.join(key)), 0o600, "{key}");
        assert!(text.contains(key), "init output names {key}: {text}");
    }
    // The config parses to the defaults plus what init set.
    let config = NodeConfig::load(&home).unwrap();
    let mut expected = NodeConfig::default();
    expected.node.node_id = "lab-1".into();
    expected.node.endpoint = "wss://192.0.2.1:9100".into();
    expected.node.agent_types = vec!["coder".into(), "tester".into()];
    expected.node.mesh_subnet = "198.18.0.0/15".into();
    assert_eq!(config, expected);
    let raw = std::fs::read_to_string(home.join("agentfed.toml")).unwrap();
    assert!(raw.contains("trust_eval_secs = 60"), "{raw}");
    assert!(raw.contains("breaker_eval_secs = 30"), "{raw}");
    assert!(raw.contains("compliance = \"standard\""), "{raw}");

    // `manifest` prints a signed manifest that `manifest verify` accepts,
    // with the fingerprint init printed.
    let manifest_text = agentfed(&home, &["manifest"]).ok().to_string();
    let manifest = SignedManifest::from_json(manifest_text.as_bytes()).unwrap();
    manifest.verify().unwrap();
    assert_eq!(manifest.manifest.node_id, "lab-1");
    assert_eq!(manifest.manifest.agent_types, ["coder", "tester"]);
    assert_eq!(manifest.manifest.capabilities.len(), 10);
    let file = dir.path().join("m.json");
    std::fs::write(&file, &manifest_text).unwrap();
    let verified = agentfed(&home, &["manifest", "verify", file.to_str().unwrap()]);
    let out = verified.ok().to_string();
    let line = out.lines().next().unwrap_or_default().trim().to_string();
    assert!(line.contains("node lab-1"), "{line}");
    let fingerprint = line.rsplit(' ').next().unwrap();
    assert!(fingerprint.starts_with("sha256:"), "{line}");
    assert!(
        text.contains(fingerprint),
        "init printed {text}, verify {line}"
    );
    // Verify also shows the TLS fingerprint (what `join --fingerprint`
    // takes), exactly as init printed it.
    let tls = format!("tls fingerprint {}", manifest.manifest.tls_fingerprint);
    assert!(out.contains(&tls), "verify printed {out}");
    assert!(text.contains(&tls), "init printed {text}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let node = Node::init("keeper");
    let key = std::fs::read(node.home.join("identity.key")).unwrap();
    let again = node.run(&["init", "--node-id", "other"]);
    again.fails(1, &["already exists", "--force"]);
    assert_eq!(std::fs::read(node.home.join("identity.key")).unwrap(), key);
    assert_eq!(NodeConfig::load(&node.home).unwrap().node.node_id, "keeper");
    let forced = node.run(&["init", "--node-id", "other", "--force"]);
    assert!(
        !forced.ok().contains("kept "),
        "no state yet: {}",
        forced.stdout
    );
    assert_ne!(std::fs::read(node.home.join("identity.key")).unwrap(), key);
    assert_eq!(NodeConfig::load(&node.home).unwrap().node.node_id, "other");
    // Once a daemon has run, --force says that the state store stays.
    let mut node = node;
    node.start(&[]);
    node.stop();
    let forced = node.run(&["init", "--node-id", "third", "--force"]);
    assert!(forced.ok().contains("kept "), "{}", forced.stdout);
    assert!(
        forced
            .stdout
            .contains("audit chain stay with the new identity")
    );
}

#[test]
fn bad_init_options_are_usage_errors_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n");
    for (args, needle) in [
        (vec!["--node-id", "Has Spaces"], "--node-id"),
        (
            vec!["--node-id", "ok", "--endpoint", "http://x:1"],
            "node.endpoint",
        ),
        (
            vec!["--node-id", "ok", "--mesh-subnet", "10.0.0.0/31"],
            "node.mesh_subnet",
        ),
        (
            vec!["--node-id", "ok", "--agent-type", "Bad Type"],
            "node.agent_types",
        ),
    ] {
        let mut full = vec!["init"];
        full.extend(args);
        agentfed(&home, &full).fails(2, &[needle]);
        assert!(!home.exists(), "{full:?} created the home");
    }
}

#[test]
fn manifest_verify_rejects_tampered_and_malformed_manifests() {
    let node = Node::init("signer");
    let good = node.manifest_file("good.json");
    let text = std::fs::read_to_string(&good).unwrap();
    let tampered = node.write_file(
        "tampered.json",
        text.replace("wss://192.0.2.10:9100", "wss://192.0.2.66:9100")
            .as_bytes(),
    );
    let verify = |path: &std::path::Path| node.run(&["manifest", "verify", path.to_str().unwrap()]);
    verify(&tampered).fails(2, &["signature does not verify"]);
    let malformed = node.write_file("malformed.json", b"{\"manifest\": 3");
    verify(&malformed).fails(2, &["malformed manifest"]);
    let bad_field = node.write_file(
        "bad-field.json",
        text.replace("\"signer\"", "\"Not A Node Id\"").as_bytes(),
    );
    verify(&bad_field).fails(2, &["invalid manifest field node_id"]);
    let missing = node.dir.path().join("missing.json");
    verify(&missing).fails(2, &["cannot read"]);
    verify(&good).ok();
}

#[test]
fn loose_key_permissions_are_refused_naming_the_file_and_fix() {
    let mut node = Node::init("loose");
    let key = node.home.join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut daemon = node.spawn_daemon(&[]);
    let status = daemon.wait_exit(
        "the daemon to refuse loose key permissions",
        crate::harness::START_TIMEOUT,
    );
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log());
    let log = daemon.log();
    let path = key.display().to_string();
    assert!(log.contains(&path), "{log}");
    assert!(log.contains(&format!("chmod 600 {path}")), "{log}");
    // Said once, not repeated by the error's cause.
    assert_eq!(log.matches("Fix with: chmod 600").count(), 1, "{log}");
    assert!(!node.socket().exists());
    // Every command that loads the identity refuses too.
    node.run(&["manifest"]).fails(1, &[&path, "chmod 600"]);
    // Fixing the mode fixes the node.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    node.start(&[]);
    node.stop();
}

#[test]
fn the_daemon_refuses_a_bad_or_mismatched_config_with_exit_2() {
    let mut node = Node::init("configured");
    let path = node.home.join("agentfed.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    for (text, needle) in [
        (
            original.replace("node_id = \"configured\"", "node_id = \"someone-else\""),
            "node_id differs",
        ),
        (
            original.replace("trust_eval_secs = 60", "trust_eval_secs = 0"),
            "timers.trust_eval_secs",
        ),
        (format!("{original}\n[bogus]\nx = 1\n"), "bogus"),
    ] {
        std::fs::write(&path, text).unwrap();
        let mut daemon = node.spawn_daemon(&[]);
        let status = daemon.wait_exit(
            "the daemon to refuse its config",
            crate::harness::START_TIMEOUT,
        );
        assert_eq!(status.code(), Some(2), "log:\n{}", daemon.log());
        assert!(daemon.log().contains(needle), "{needle}: {}", daemon.log());
        assert!(!node.socket().exists());
    }
    std::fs::write(&path, original).unwrap();
    node.start(&[]);
    node.stop();
}
