//! The node home is private (issue 16, item 7): every file a node creates
//! is 0600 and every directory 0700, and a home that group or others can
//! access, or that another user owns, is refused by every command that
//! opens it, with the command that fixes it, before anything changes.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::federation::{attested_pair, send_n};
use crate::harness::{Node, agentfed, wait_until};

/// Every entry under `root` (not following symlinks: the harness links the
/// shared plugin cache in, and a link's own mode means nothing), with its
/// mode bits, file type and owner.
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading a home directory") {
            let path = entry.expect("directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                todo.push(path.clone());
            }
            out.push((path, meta));
        }
    }
    out
}

/// Names, sizes, modification times and contents of everything in the
/// home: equal snapshots mean nothing was created, removed or written.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, i64, Vec<u8>)> {
    walk(root)
        .into_iter()
        .map(|(path, meta)| {
            let contents = if meta.is_file() {
                std::fs::read(&path).expect("reading a home file")
            } else {
                Vec::new()
            };
            let key = (
                meta.mode(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                contents,
            );
            (path, key)
        })
        .collect()
}

fn assert_private(home: &Path) {
    let home_mode = std::fs::metadata(home).unwrap().permissions().mode() & 0o7777;
    assert_eq!(home_mode, 0o700, "{}", home.display());
    let entries = walk(home);
    assert!(entries.len() > 8, "a used home has files: {entries:?}");
    for (path, meta) in entries {
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        let expected = if kind.is_dir() { 0o700 } else { 0o600 };
        assert!(
            kind.is_dir() || kind.is_file() || kind.is_socket(),
            "{}: unexpected file type",
            path.display()
        );
        assert_eq!(mode, expected, "{} is {mode:04o}", path.display());
    }
}

#[test]
fn every_file_in_a_used_home_is_private() {
    let (mut alpha, _, mut beta, _) = attested_pair();
    send_n(&alpha, "beta", 1);
    wait_until(
        "beta to receive the message",
        Duration::from_secs(60),
        || {
            let inbox = beta.run(&["inbox", "--json"]).json();
            inbox.as_array().is_some_and(|m| !m.is_empty())
        },
    );
    // While the daemons run (the control socket, the lock, the store)…
    assert_private(&alpha.home);
    assert_private(&beta.home);
    alpha.stop();
    beta.stop();
    // …and after offline commands that open the home.
    for node in [&alpha, &beta] {
        node.run(&["audit", "verify"]).ok();
        node.run(&["manifest"]).ok();
        node.run(&["plugin", "list"]).ok();
        assert_private(&node.home);
        for file in [
            "state.redb",
            "agentfed.toml",
            "node.json",
            "tls.crt",
            "daemon.lock",
            "federation-peers.json",
        ] {
            assert!(node.home.join(file).is_file(), "{file} exists");
        }
    }
}

/// The commands that open a home themselves, each with the arguments it
/// needs; all must refuse a home that is not private.
const OPENING_COMMANDS: &[&[&str]] = &[
    &["daemon"],
    &["manifest"],
    &["audit", "verify"],
    &["plugin", "list"],
    &["init", "--node-id", "other", "--force"],
];

#[test]
fn a_home_group_or_world_can_access_is_refused_with_the_fix_and_left_alone() {
    let mut node = Node::init("loose");
    // An old home: created 0755 by an earlier version, used by a daemon.
    node.start(&[]);
    node.stop();
    for mode in [0o755, 0o750, 0o701] {
        std::fs::set_permissions(&node.home, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = snapshot(&node.home);
        let fix = format!("chmod 700 {}", node.home.display());
        for args in OPENING_COMMANDS {
            node.run(args).fails(1, &["bad permissions", &fix]);
        }
        assert_eq!(
            snapshot(&node.home),
            before,
            "mode {mode:o}: nothing changed"
        );
    }
    // The command the message names is the whole fix.
    std::fs::set_permissions(&node.home, std::fs::Permissions::from_mode(0o700)).unwrap();
    node.start(&[]);
    node.stop();

    // init refuses an existing loose directory and creates nothing in it.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("shared");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    agentfed(&home, &["init", "--node-id", "fresh"]).fails(
        1,
        &["bad permissions", &format!("chmod 700 {}", home.display())],
    );
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0);
}

/// Gives a path back to its owner when dropped, also when the test fails.
struct Chowned {
    path: PathBuf,
    uid: u32,
    gid: u32,
}

impl Drop for Chowned {
    fn drop(&mut self) {
        let _ = std::os::unix::fs::chown(&self.path, Some(self.uid), Some(self.gid));
    }
}

#[test]
fn a_home_owned_by_another_user_is_refused() {
    let uid = rustix::process::geteuid().as_raw();
    let other = 65534; // nobody
    assert_ne!(
        uid, other,
        "the test needs to run as a user other than nobody"
    );
    let node = Node::init("foreign");
    let meta = std::fs::metadata(&node.home).unwrap();
    std::os::unix::fs::chown(&node.home, Some(other), None)
        .expect("chown needs root (the integration tests run as root)");
    let _restore = Chowned {
        path: node.home.clone(),
        uid: meta.uid(),
        gid: meta.gid(),
    };
    // Still 0700: only the owner is wrong.
    assert_eq!(
        std::fs::metadata(&node.home).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let before = snapshot(&node.home);
    let fix = format!("chown -R {uid} {}", node.home.display());
    for args in OPENING_COMMANDS {
        node.run(args)
            .fails(1, &["bad ownership", "owned by uid 65534", &fix]);
    }
    assert_eq!(snapshot(&node.home), before, "nothing changed");
}
