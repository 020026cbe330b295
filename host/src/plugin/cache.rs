//! On-disk cache of precompiled plugin code.
//!
//! Compiling a component costs about a second; loading precompiled code
//! costs milliseconds. Artifacts are keyed by the SHA-256 of the component
//! and the engine's compatibility hash (wasmtime version, target, and every
//! codegen setting), so a changed plugin or a changed engine never loads
//! stale code.
//!
//! # Authentication
//!
//! `Component::deserialize` trusts its input: loading a file someone else
//! wrote is running their native code outside the sandbox. A checksum
//! next to the artifact does not help (whoever writes one writes both), so
//! every artifact carries an HMAC-SHA256 under a secret only this user can
//! read, over the artifact's file name (which names the component and the
//! engine) and its bytes, checked in constant time before anything is
//! deserialised. An artifact whose MAC does not verify — altered, written
//! under another key, or copied from another entry — is ignored with a
//! warning, recompiled and rewritten.
//!
//! The secret is per cache directory: `cache.key`, 32 random bytes created
//! 0600 (exclusively, never overwritten) in the cache directory, which is
//! created 0700. Both are checked on every use: the directory and the key
//! must be owned by this process's effective uid and have no group or other
//! permission bits, and the key must be a regular file (not a symlink);
//! otherwise the cache is not used at all (compiled, not cached). This is
//! as strong as deriving the key from the node's secrets: those live in
//! files with exactly the same protection (0600, owned by the user, in a
//! 0700 home), and anyone who can read `cache.key` is already this user
//! (or root) and could read `hash.key` or replace the binary as well. It
//! reuses no node key for a second purpose, and it lets caches outside a
//! home work — `agentfed plugin run` on a home, or the test suite's cache
//! that many node homes share — without recompiling per node. The MAC key
//! is derived from the secret with a domain-separation label
//! ([`MAC_KEY_LABEL`]), so the file could never serve as a MAC key for
//! anything else by accident.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Name of the per-directory secret inside the cache directory.
pub const CACHE_KEY_FILE: &str = "cache.key";

/// Domain-separation label of the MAC key derived from `cache.key`.
pub const MAC_KEY_LABEL: &[u8] = b"agentfed plugin-cache artifact-mac v1";

/// First bytes of every artifact file, before the MAC and the code.
const MAGIC: &[u8; 16] = b"agentfed-cwasm-2";

/// Bytes of the MAC after [`MAGIC`].
const MAC_LEN: usize = 32;

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Loaded from a verified cached artifact.
    Hit,
    /// Compiled now and written to the cache.
    Compiled,
    /// Compiled now; no cache is configured, or it is unusable (bad
    /// ownership or permissions), or writing it failed.
    CompiledUncached,
}

/// Why the cache directory or its key cannot be used. Never fatal: the
/// plugin is compiled without the cache and the reason is logged.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Filesystem failure.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory or key is not private to this user.
    #[error(
        "{path} is not private to this user (owner uid {owner}, mode {mode:04o}; must be owned by uid {uid} with no group or other permissions); not using the plugin cache",
        path = path.display()
    )]
    NotPrivate {
        /// The directory or key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// The key file is not a 32-byte regular file.
    #[error("{path} is not a 32-byte regular file; not using the plugin cache", path = path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
}

/// A directory of precompiled artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first use, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact path for a component digest under this engine.
    fn artifact_path(&self, engine: &Engine, component_digest: &[u8; 32]) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.0.update(component_digest);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = hex::encode(&hasher.0.finalize()[..20]);
        // `-2`: the authenticated format; files of the old checksummed
        // format are simply never looked at.
        self.dir.join(format!("{key}-2.cwasm"))
    }

    /// Loads the compiled component from the cache, or compiles `bytes`
    /// and stores the result. Cache problems are logged and fall back to
    /// compiling; only an invalid component is an error.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        component_digest: &[u8; 32],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.artifact_path(engine, component_digest);
        let mac_key = match self.mac_key() {
            Ok(key) => Some(key),
            Err(err) => {
                tracing::warn!("{err}");
                None
            }
        };
        if let Some(key) = &mac_key
            && let Some(component) = try_load(engine, key, &path)
        {
            return Ok((component, CacheOutcome::Hit));
        }
        let serialized = engine.precompile_component(bytes)?;
        // SAFETY: these bytes were produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &serialized)? };
        let Some(key) = mac_key else {
            return Ok((component, CacheOutcome::CompiledUncached));
        };
        let outcome = match store(&key, &path, &serialized) {
            Ok(()) => CacheOutcome::Compiled,
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot write plugin cache: {err}");
                CacheOutcome::CompiledUncached
            }
        };
        Ok((component, outcome))
    }

    /// Creates or checks the directory, then reads (or creates) the
    /// directory's secret and derives the MAC key from it.
    fn mac_key(&self) -> Result<Zeroizing<[u8; 32]>, CacheError> {
        create_private_dir(&self.dir)?;
        let meta = fs::metadata(&self.dir).map_err(io_err("reading", &self.dir))?;
        check_private(&self.dir, &meta)?;
        let secret = read_or_create_secret(&self.dir.join(CACHE_KEY_FILE))?;
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&secret[..])
            .expect("HMAC takes keys of any length");
        mac.update(MAC_KEY_LABEL);
        Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
    }
}

/// The MAC of an artifact: over its file name (so an entry copied under
/// another component's name does not verify) and its bytes.
fn artifact_mac(key: &[u8; 32], path: &Path) -> HmacSha256 {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&(name.len() as u64).to_be_bytes());
    mac.update(name);
    mac
}

fn try_load(engine: &Engine, key: &[u8; 32], path: &Path) -> Option<Component> {
    let bytes = match read_nofollow(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), "cannot read cached plugin artifact ({err}); recompiling");
            return None;
        }
    };
    let verified = bytes.len() >= MAGIC.len() + MAC_LEN && bytes.starts_with(MAGIC) && {
        let (tag, code) = bytes[MAGIC.len()..].split_at(MAC_LEN);
        let mut mac = artifact_mac(key, path);
        mac.update(code);
        mac.verify_slice(tag).is_ok()
    };
    if !verified {
        tracing::warn!(path = %path.display(), "cached plugin artifact is not authenticated by this cache's key (altered, or written by someone else); not loading it, recompiling");
        return None;
    }
    let code = &bytes[MAGIC.len() + MAC_LEN..];
    // SAFETY: the MAC verified: this user's host wrote these bytes with
    // `store` under this name, and the name includes the engine's
    // compatibility hash, so a compatible engine produced them.
    match unsafe { Component::deserialize(engine, code) } {
        Ok(component) => Some(component),
        Err(err) => {
            tracing::warn!(path = %path.display(), "cannot load cached plugin artifact ({err}); recompiling");
            None
        }
    }
}

/// Writes atomically: a reader sees the old state or the whole new one.
fn store(key: &[u8; 32], path: &Path, serialized: &[u8]) -> io::Result<()> {
    let mut mac = artifact_mac(key, path);
    mac.update(serialized);
    let tag = mac.finalize().into_bytes();
    let mut contents = Vec::with_capacity(MAGIC.len() + MAC_LEN + serialized.len());
    contents.extend_from_slice(MAGIC);
    contents.extend_from_slice(&tag);
    contents.extend_from_slice(serialized);
    let tmp = unique_tmp(path);
    let written = write_new(&tmp, &contents).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), CacheError> {
    let uid = crate::home::current_uid();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != uid || mode & 0o077 != 0 {
        return Err(CacheError::NotPrivate {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode,
            uid,
        });
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating", dir))
}

/// Reads the 32-byte secret at `path`, creating it if missing. Creation
/// writes a temp file and hard-links it into place, which fails rather
/// than replaces if another process got there first: the loser reads the
/// winner's complete key, and a key is never overwritten.
fn read_or_create_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, CacheError> {
    match read_secret(path) {
        Err(CacheError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut fresh = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut fresh[..]).map_err(|e| CacheError::Io {
        action: "generating a key for",
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    let tmp = unique_tmp(path);
    write_new(&tmp, &fresh[..]).map_err(io_err("creating", &tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(path),
        Err(e) => Err(io_err("creating", path)(e)),
    }
}

fn read_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, CacheError> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    if !meta.is_file() || meta.len() != 32 {
        return Err(CacheError::BadKey {
            path: path.to_path_buf(),
        });
    }
    check_private(path, &meta)?;
    let mut key = Zeroizing::new([0u8; 32]);
    file.read_exact(&mut key[..])
        .map_err(io_err("reading", path))?;
    Ok(key)
}

/// Reads a file without following a symlink at its last component.
fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates `path` exclusively with mode 0600 and writes `bytes`, synced.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A temp name next to `path`, unique per process and call (threads of one
/// process may write the same entry at once).
fn unique_tmp(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash
/// becomes stable bytes for a file name.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    /// Unused: callers read the SHA-256 digest instead.
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
