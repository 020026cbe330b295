//! WireGuard key rotation (`agentfed wg rotate --confirm`, docs/mesh.md
//! "Key rotation"): the files it moves, in an order that a crash at any
//! point leaves either the old key or the new one in force, with the
//! witness chain saying which.
//!
//! 1. The new key is written to `wireguard.key.next` (0600, synced).
//! 2. The witness entry `key_rotated` (old and new public keys, when the
//!    old one is destroyed) is appended: the intent, durable.
//! 3. The old key goes to `wireguard.key.previous` (JSON, 0600) and the
//!    new one is renamed over `wireguard.key`; the directory is synced.
//!
//! A crash before 2 leaves a `.next` file no entry names: it is removed at
//! the next start and nothing happened. A crash after 2 leaves a `.next`
//! file the chain's last `key_rotated` entry names: step 3 is finished at
//! the next start ([`recover`]). The old key is kept for the grace period
//! (`[mesh] rotate_grace_secs`, 10 minutes by default) and then destroyed
//! (overwritten, synced, removed) after a `key_destroyed` entry
//! ([`destroy_if_due`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::identity::{
    Identity, WIREGUARD_KEY_FILE, generate_wg_private_key, read_key_file, sync_home,
    wg_public_key_of, write_key_file,
};

use super::witness::{WitnessError, WitnessKind, WitnessLog};

/// The staged new key (step 1).
pub const NEXT_KEY_FILE: &str = "wireguard.key.next";

/// The replaced key during its grace period (JSON).
pub const PREVIOUS_KEY_FILE: &str = "wireguard.key.previous";

/// A failure of a rotation step.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A key file could not be written, read or removed.
    #[error("{0}")]
    Files(String),
    /// The witness chain could not be appended or read.
    #[error(transparent)]
    Witness(#[from] WitnessError),
}

fn files(e: impl std::fmt::Display) -> RotationError {
    RotationError::Files(e.to_string())
}

/// What a rotation did (public keys only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The key replaced (standard base64).
    pub old_public_key: String,
    /// The key in force now.
    pub new_public_key: String,
    /// When the old key is destroyed, ms since the Unix epoch.
    pub destroy_at_ms: u64,
    /// The `key_rotated` witness entry.
    pub witness_seq: u64,
    /// An older key still in its grace period, destroyed first.
    pub superseded: Option<String>,
}

/// The replaced key as `wireguard.key.previous` keeps it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousKey {
    /// Standard base64 of the private key.
    private_key: String,
    /// Standard base64 of its public key.
    public_key: String,
    rotated_at_ms: u64,
    destroy_at_ms: u64,
}

fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Replaces the node's WireGuard key: the steps of the module comment,
/// then the in-memory key of `identity`. The caller re-signs and presents
/// the manifest, and reconciles the device.
pub fn rotate(
    home: &Path,
    identity: &Identity,
    witness: &WitnessLog,
    now_ms: u64,
    grace_secs: u64,
) -> Result<Rotation, RotationError> {
    let superseded = destroy(home, witness, "superseded by a newer rotation")?;
    let (old_private, old_public) = identity.wg_key_bytes();
    let new_private = generate_wg_private_key().map_err(files)?;
    let new_public = wg_public_key_of(&new_private);
    write_key_file(&home.join(NEXT_KEY_FILE), &new_private).map_err(files)?;
    sync_home(home).map_err(files)?;
    let destroy_at_ms = now_ms.saturating_add(grace_secs.saturating_mul(1000));
    let entry = witness.append(
        WitnessKind::KeyRotated,
        json!({
            "old_public_key": b64(&old_public),
            "new_public_key": b64(&new_public),
            "grace_secs": grace_secs,
            "destroy_at_ms": destroy_at_ms,
        }),
    )?;
    promote(home, &old_private, now_ms, destroy_at_ms)?;
    identity.replace_wg_key(&new_private);
    Ok(Rotation {
        old_public_key: b64(&old_public),
        new_public_key: b64(&new_public),
        destroy_at_ms,
        witness_seq: entry.seq,
        superseded,
    })
}

/// Step 3: the old key to `.previous`, the staged `.next` over the key
/// file.
fn promote(
    home: &Path,
    old_private: &[u8; 32],
    rotated_at_ms: u64,
    destroy_at_ms: u64,
) -> Result<(), RotationError> {
    let previous = PreviousKey {
        private_key: b64(old_private),
        public_key: b64(&wg_public_key_of(old_private)),
        rotated_at_ms,
        destroy_at_ms,
    };
    let text = Zeroizing::new(serde_json::to_vec(&previous).map_err(files)?);
    drop(previous);
    crate::home::write_private(&home.join(PREVIOUS_KEY_FILE), &text)
        .map_err(|e| files(format!("writing {PREVIOUS_KEY_FILE}: {e}")))?;
    // Renaming the staged key over the key file is atomic.
    std::fs::rename(home.join(NEXT_KEY_FILE), home.join(WIREGUARD_KEY_FILE))
        .map_err(|e| files(format!("installing the new {WIREGUARD_KEY_FILE}: {e}")))?;
    sync_home(home).map_err(files)
}

/// At start, before the key is used: finishes a rotation whose witness
/// entry was written before a crash, or drops a staged key no entry
/// names. Returns the key rotation finished, if any.
pub fn recover(
    home: &Path,
    identity: &Identity,
    witness: &WitnessLog,
) -> Result<Option<String>, RotationError> {
    let next_path = home.join(NEXT_KEY_FILE);
    if !next_path.exists() {
        return Ok(None);
    }
    let next = read_key_file(&next_path).map_err(files)?;
    let next_public = b64(&wg_public_key_of(&next));
    let (old_private, old_public) = identity.wg_key_bytes();
    let intended = witness.entries()?.into_iter().rev().find_map(|e| {
        (e.kind == WitnessKind::KeyRotated.as_str())
            .then(|| serde_json::from_str::<serde_json::Value>(&e.details).ok())
            .flatten()
    });
    let finishes = intended.as_ref().is_some_and(|d| {
        d["new_public_key"] == next_public.as_str() && d["old_public_key"] == b64(&old_public)
    });
    if !finishes {
        std::fs::remove_file(&next_path)
            .map_err(|e| files(format!("removing {NEXT_KEY_FILE}: {e}")))?;
        sync_home(home).map_err(files)?;
        return Ok(None);
    }
    let details = intended.expect("checked above");
    let destroy_at_ms = details["destroy_at_ms"].as_u64().unwrap_or(0);
    let grace_ms = details["grace_secs"]
        .as_u64()
        .unwrap_or(0)
        .saturating_mul(1000);
    promote(
        home,
        &old_private,
        destroy_at_ms.saturating_sub(grace_ms),
        destroy_at_ms,
    )?;
    identity.replace_wg_key(&next);
    Ok(Some(next_public))
}

/// The replaced key's public half and destruction time, if one is kept.
pub fn previous_key(home: &Path) -> Result<Option<(String, u64)>, RotationError> {
    let path = home.join(PREVIOUS_KEY_FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => Zeroizing::new(raw),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(files(format!("reading {PREVIOUS_KEY_FILE}: {e}"))),
    };
    let previous: PreviousKey = serde_json::from_slice(&raw)
        .map_err(|_| files(format!("{PREVIOUS_KEY_FILE} is not a replaced-key record")))?;
    Ok(Some((previous.public_key.clone(), previous.destroy_at_ms)))
}

/// Destroys the replaced key once its grace period is over (witness entry
/// first). Returns its public key when it did.
pub fn destroy_if_due(
    home: &Path,
    witness: &WitnessLog,
    now_ms: u64,
) -> Result<Option<String>, RotationError> {
    match previous_key(home)? {
        Some((_, destroy_at)) if destroy_at <= now_ms => {
            destroy(home, witness, "grace period over")
        }
        _ => Ok(None),
    }
}

/// Destroys the replaced key now, if there is one: a `key_destroyed` entry
/// (unless the chain's last one already names it: a crash came between
/// the entry and the removal), then the file overwritten, synced and
/// removed.
fn destroy(
    home: &Path,
    witness: &WitnessLog,
    reason: &str,
) -> Result<Option<String>, RotationError> {
    let Some((public_key, _)) = previous_key(home)? else {
        return Ok(None);
    };
    let recorded = witness.entries()?.iter().rev().any(|e| {
        e.kind == WitnessKind::KeyDestroyed.as_str()
            && serde_json::from_str::<serde_json::Value>(&e.details)
                .is_ok_and(|d| d["public_key"] == public_key.as_str())
    });
    if !recorded {
        witness.append(
            WitnessKind::KeyDestroyed,
            json!({"public_key": public_key, "reason": reason}),
        )?;
    }
    shred(&home.join(PREVIOUS_KEY_FILE))?;
    sync_home(home).map_err(files)?;
    Ok(Some(public_key))
}

/// Overwrites a secret file with zeros, syncs it and removes it.
fn shred(path: &PathBuf) -> Result<(), RotationError> {
    use std::io::Write as _;
    let len = std::fs::metadata(path).map_err(files)?.len() as usize;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(files)?;
    file.write_all(&vec![0u8; len]).map_err(files)?;
    file.sync_all().map_err(files)?;
    drop(file);
    std::fs::remove_file(path).map_err(files)
}
