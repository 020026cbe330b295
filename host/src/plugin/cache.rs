//! On-disk cache of precompiled plugin code.
//!
//! Compiling a component costs about a second; loading precompiled code
//! costs milliseconds. Artifacts are keyed by the SHA-256 of the component
//! and the engine's compatibility hash (wasmtime version, target, and every
//! codegen setting), so a changed plugin or a changed engine never loads
//! stale code.
//!
//! `Component::deserialize` trusts its input, so the cache only loads what
//! this host wrote: each artifact has a sidecar with the SHA-256 of its
//! bytes, checked before deserialising. A missing, truncated or altered
//! artifact is recompiled, never loaded.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Loaded from a verified cached artifact.
    Hit,
    /// Compiled now and written to the cache.
    Compiled,
    /// Compiled now; no cache is configured or writing it failed.
    CompiledUncached,
}

/// A directory of precompiled artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write, mode 0700).
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
        self.dir.join(format!("{key}.cwasm"))
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
        if let Some(component) = self.try_load(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let serialized = engine.precompile_component(bytes)?;
        // SAFETY: these bytes were produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &serialized)? };
        let outcome = match self.store(&path, &serialized) {
            Ok(()) => CacheOutcome::Compiled,
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot write plugin cache: {err}");
                CacheOutcome::CompiledUncached
            }
        };
        Ok((component, outcome))
    }

    fn try_load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = fs::read(path).ok()?;
        let expected = fs::read_to_string(checksum_path(path)).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(path = %path.display(), "cached plugin artifact does not match its checksum; recompiling");
            return None;
        }
        // SAFETY: the artifact was written by `store` below (its checksum
        // matches the one we recorded), and its key includes the engine's
        // compatibility hash, so it was produced by a compatible engine.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot load cached plugin artifact ({err}); recompiling");
                None
            }
        }
    }

    /// Writes atomically: a reader sees the old state or the whole new one.
    fn store(&self, path: &Path, serialized: &[u8]) -> std::io::Result<()> {
        create_private_dir(&self.dir)?;
        write_atomically(path, serialized)?;
        write_atomically(
            &checksum_path(path),
            hex::encode(Sha256::digest(serialized)).as_bytes(),
        )
    }
}

fn checksum_path(artifact: &Path) -> PathBuf {
    artifact.with_extension("sha256")
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
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
