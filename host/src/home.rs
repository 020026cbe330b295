//! Where a node keeps its files, and who may touch them.
//!
//! The home holds the node's keys, its config (which decides, e.g.,
//! whether unknown peers are accepted), the state store (inbox payloads,
//! outbox frames, the audit log) and precompiled plugin code. Whoever can
//! read it sees the node's traffic; whoever can write it is the node. So,
//! like OpenSSH with `~/.ssh`, every command that opens a home first
//! checks it ([`check`]): it must be a directory owned by the user running
//! agentfed (the effective uid) with no group or other permission bits
//! (0700). Anything else is refused with the one command that fixes it.
//! Files are created 0600 ([`private_umask`], [`write_private`]), so they
//! stay private even if the home's mode is later loosened.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home.
pub const HOME_ENV: &str = "AGENTFED_HOME";

/// The node home: `--home`, else `$AGENTFED_HOME`, else `~/.agentfed`.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".agentfed")
}

/// The precompiled plugin cache inside a home.
pub fn plugin_cache_dir(home: &Path) -> PathBuf {
    home.join("cache").join("plugins")
}

/// Why a node home (or another private directory) is refused.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// The directory cannot be read or created.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path exists but is not a directory.
    #[error("node home {path} is not a directory", path = path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Group or others have some access to the directory.
    #[error(
        "bad permissions: node home {path} is accessible by group or others (mode {mode:04o}); refusing to use it. Fix with: chmod 700 {path}",
        path = path.display()
    )]
    BadPermissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory belongs to another user.
    #[error(
        "bad ownership: node home {path} is owned by uid {owner}, not by this user (uid {uid}); refusing to use it. Fix with: chown -R {uid} {path} (as root), or run agentfed as uid {owner}",
        path = path.display()
    )]
    BadOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The effective uid of this process.
        uid: u32,
    },
}

/// The user agentfed acts as (the effective uid).
pub fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses a home that is not a directory, is owned by someone other than
/// this process's effective uid, or grants group or others any access.
/// Follows a symlink (the directory it names is what must be private).
/// Changes nothing.
pub fn check(home: &Path) -> Result<(), HomeError> {
    let meta = fs::metadata(home).map_err(|source| HomeError::Io {
        action: "reading",
        path: home.to_path_buf(),
        source,
    })?;
    check_metadata(home, &meta)
}

fn check_metadata(home: &Path, meta: &fs::Metadata) -> Result<(), HomeError> {
    if !meta.is_dir() {
        return Err(HomeError::NotADirectory {
            path: home.to_path_buf(),
        });
    }
    // Ownership first: chmod-ing a directory someone else owns would not
    // help (they can chmod it back, and own everything created before).
    let uid = current_uid();
    if meta.uid() != uid {
        return Err(HomeError::BadOwner {
            path: home.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(HomeError::BadPermissions {
            path: home.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `home` (and missing parents) with mode 0700 if it does not
/// exist, then [`check`]s it: an existing home is never chmod-ed, so a
/// loose one is refused rather than silently repaired.
pub fn create(home: &Path) -> Result<(), HomeError> {
    if fs::symlink_metadata(home).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|source| HomeError::Io {
                action: "creating directory",
                path: home.to_path_buf(),
                source,
            })?;
    }
    check(home)
}

/// Sets the process umask to 077, so every file and directory this
/// process creates (the redb store, locks, caches, temp files, whatever a
/// library creates with default modes) has no group or other bits. The
/// daemon and every command that writes into a home call it first.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Writes `contents` to `path` atomically with mode 0600: a fresh
/// `<name>.tmp` created with that mode (never chmod-ed later, so there is
/// no window in which it is readable), fsynced, then renamed over `path`.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn check_accepts_0700_and_refuses_any_group_or_other_bit() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = dir.path().join("home");
        create(&home)?;
        assert_eq!(fs::metadata(&home)?.permissions().mode() & 0o777, 0o700);
        for mode in [0o750, 0o705, 0o710, 0o701, 0o755, 0o777] {
            fs::set_permissions(&home, fs::Permissions::from_mode(mode))?;
            let err = check(&home).expect_err("loose home accepted");
            assert!(
                matches!(err, HomeError::BadPermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with("bad permissions"), "{msg}");
            assert!(
                msg.contains(&format!("chmod 700 {}", home.display())),
                "{msg}"
            );
            // `create` refuses an existing loose home rather than fixing it.
            assert!(create(&home).is_err());
            assert_eq!(fs::metadata(&home)?.permissions().mode() & 0o777, mode);
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
        check(&home)?;
        Ok(())
    }

    #[test]
    fn check_refuses_a_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("file");
        fs::write(&path, b"x")?;
        assert!(matches!(check(&path), Err(HomeError::NotADirectory { .. })));
        Ok(())
    }

    #[test]
    fn write_private_creates_0600_whatever_the_umask() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.json");
        fs::write(&path, b"old")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        write_private(&path, b"new")?;
        assert_eq!(fs::read(&path)?, b"new");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }
}
