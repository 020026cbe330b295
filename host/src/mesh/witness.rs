//! The witness chain: an append-only, hash-linked, Ed25519-signed record of
//! every change this node made to its mesh (docs/mesh.md, "Witness
//! chain"). Anyone with the node's public key can check an exported chain;
//! one edited byte breaks it at the entry that holds the byte.
//!
//! Entry `n`'s signed bytes ([`canonical_bytes`]):
//!
//! ```text
//! "agentfed-witness-v1\n"
//! ‖ u64 BE seq ‖ u64 BE ts_ms
//! ‖ u32 BE len ‖ node_id ‖ u32 BE len ‖ kind ‖ u32 BE len ‖ details (JSON text)
//! ‖ prev_hash (32 bytes; zeros for seq 1)
//! ```
//!
//! `hash = SHA-256(signed bytes ‖ signature)`, and the next entry's
//! `prev_hash` is this `hash`. `details` is kept as the exact JSON text
//! that was signed, so a verifier never re-serialises anything.
//!
//! The chain lives in `<home>/witness.redb`, apart from the state file:
//! the daemon keeps that one open for its whole life, and the witness
//! must be readable offline too. Each append is its own durable commit,
//! made **before** the mutation it records (intent first): a crash in
//! between leaves an entry whose change the next reconcile makes (the
//! desired state is derived again from the same peers), never a change
//! without an entry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::coordinator::Coordinator;

use super::diff::ChangeKind;

/// The file the chain lives in, inside the node home.
pub const WITNESS_FILE: &str = "witness.redb";

/// Domain separation for the signed bytes.
pub const WITNESS_DOMAIN: &[u8] = b"agentfed-witness-v1\n";

/// The export format's name (first line of an export).
pub const EXPORT_FORMAT: &str = "agentfed-witness-v1";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("witness");

/// Longest operator note in an attestation.
pub const MAX_NOTE_CHARS: usize = 1024;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitnessKind {
    /// A peer put on the device.
    PeerAdded,
    /// A peer's allowed IPs emptied (SUSPENDED).
    AllowedIpsCleared,
    /// A peer's allowed IPs given back.
    AllowedIpsRestored,
    /// A peer's endpoint or keepalive changed.
    PeerUpdated,
    /// A peer taken off the device.
    PeerRemoved,
    /// The firewall replaced.
    FirewallApplied,
    /// A change made behind the daemon's back, reverted.
    DriftRepaired,
    /// The node's WireGuard key replaced.
    KeyRotated,
    /// A replaced WireGuard key destroyed (its grace period over, or a
    /// newer rotation superseded it).
    KeyDestroyed,
    /// An operator's note.
    OperatorAttestation,
}

impl WitnessKind {
    /// The snake_case name that is signed.
    pub fn as_str(self) -> &'static str {
        match self {
            WitnessKind::PeerAdded => "peer_added",
            WitnessKind::AllowedIpsCleared => "allowed_ips_cleared",
            WitnessKind::AllowedIpsRestored => "allowed_ips_restored",
            WitnessKind::PeerUpdated => "peer_updated",
            WitnessKind::PeerRemoved => "peer_removed",
            WitnessKind::FirewallApplied => "firewall_applied",
            WitnessKind::DriftRepaired => "drift_repaired",
            WitnessKind::KeyRotated => "key_rotated",
            WitnessKind::KeyDestroyed => "key_destroyed",
            WitnessKind::OperatorAttestation => "operator_attestation",
        }
    }
}

impl From<ChangeKind> for WitnessKind {
    fn from(kind: ChangeKind) -> WitnessKind {
        match kind {
            ChangeKind::PeerAdded => WitnessKind::PeerAdded,
            ChangeKind::AllowedIpsCleared => WitnessKind::AllowedIpsCleared,
            ChangeKind::AllowedIpsRestored => WitnessKind::AllowedIpsRestored,
            ChangeKind::PeerUpdated => WitnessKind::PeerUpdated,
            ChangeKind::PeerRemoved => WitnessKind::PeerRemoved,
        }
    }
}

/// One entry, as stored and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was written, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The node that wrote it.
    pub node_id: String,
    /// What it records ([`WitnessKind::as_str`]).
    pub kind: String,
    /// The details, as the exact JSON text signed.
    pub details: String,
    /// The previous entry's hash (64 hex digits; zeros for seq 1).
    pub prev_hash: String,
    /// SHA-256 of the signed bytes and the signature (64 hex digits).
    pub hash: String,
    /// Ed25519 signature over the signed bytes (standard base64).
    pub signature: String,
}

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The node whose chain follows.
    pub node_id: String,
    /// Its Ed25519 public key (standard base64), for information: a
    /// verifier uses the key it trusts, not this one.
    pub public_key: String,
}

/// A failure of the witness log.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The file could not be opened or written.
    #[error("witness chain {path}: {reason}", path = path.display())]
    Storage {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An entry breaks the chain.
    #[error("witness entry {seq} (line {line}) is bad: {reason}")]
    Broken {
        /// Its sequence number as written (0 when unreadable).
        seq: u64,
        /// Its line in the export (1 is the header).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Bad input (a note, a header).
    #[error("{0}")]
    Invalid(String),
}

/// The exact bytes an entry's signature covers.
pub fn canonical_bytes(
    seq: u64,
    ts_ms: u64,
    node_id: &str,
    kind: &str,
    details: &str,
    prev_hash: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(WITNESS_DOMAIN.len() + 64 + details.len());
    out.extend_from_slice(WITNESS_DOMAIN);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts_ms.to_be_bytes());
    for field in [node_id, kind, details] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(prev_hash);
    out
}

fn entry_hash(signed: &[u8], signature: &[u8; 64]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(signed);
    h.update(signature);
    h.finalize().into()
}

/// The witness chain's file, opened on first use and shared by everything
/// in the daemon that reads or appends (a redb file is opened once per
/// process). The coordinator owns it ([`Coordinator::witness_file`]).
pub struct WitnessFile {
    path: PathBuf,
    db: Mutex<Option<Database>>,
}

impl std::fmt::Debug for WitnessFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessFile")
            .field("path", &self.path)
            .finish()
    }
}

impl WitnessFile {
    /// The chain at `path` (nothing is opened yet).
    pub fn new(path: PathBuf) -> WitnessFile {
        WitnessFile {
            path,
            db: Mutex::new(None),
        }
    }

    fn storage(&self, e: impl std::fmt::Display) -> WitnessError {
        WitnessError::Storage {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, WitnessError>,
    ) -> Result<T, WitnessError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if db.is_none() {
            *db = Some(open(&self.path)?);
        }
        f(db.as_ref().expect("opened above"))
    }

    /// Up to `limit` entries after `after_seq`, oldest first, and the
    /// chain's length. A chain never written reads as empty (and is not
    /// created).
    pub fn page(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<WitnessEntry>, u64), WitnessError> {
        if !self.path.exists() && self.db.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Ok((Vec::new(), 0));
        }
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.storage(e))?;
            let table = tx.open_table(ENTRIES).map_err(|e| self.storage(e))?;
            let head = table
                .last()
                .map_err(|e| self.storage(e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            let mut out = Vec::new();
            for item in table
                .range(after_seq.saturating_add(1)..)
                .map_err(|e| self.storage(e))?
                .take(limit)
            {
                let (_, v) = item.map_err(|e| self.storage(e))?;
                out.push(serde_json::from_slice(v.value()).map_err(|e| self.storage(e))?);
            }
            Ok((out, head))
        })
    }
}

/// The node's witness chain: appends signed by the node's identity.
pub struct WitnessLog {
    coordinator: Arc<Coordinator>,
    file: Arc<WitnessFile>,
}

impl std::fmt::Debug for WitnessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessLog")
            .field("file", &self.file)
            .finish()
    }
}

impl WitnessLog {
    /// The chain of the coordinator's node.
    pub fn new(coordinator: Arc<Coordinator>) -> WitnessLog {
        WitnessLog {
            file: Arc::clone(coordinator.witness_file()),
            coordinator,
        }
    }

    fn storage(&self, e: impl std::fmt::Display) -> WitnessError {
        self.file.storage(e)
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, WitnessError>,
    ) -> Result<T, WitnessError> {
        self.file.with_db(f)
    }

    /// Appends a signed entry, durably, and returns it.
    pub fn append(
        &self,
        kind: WitnessKind,
        details: serde_json::Value,
    ) -> Result<WitnessEntry, WitnessError> {
        let details = details.to_string();
        let identity = self.coordinator.identity();
        let node_id = identity.node_id().to_string();
        let now = self.coordinator.clock().now_ms();
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| self.storage(e))?;
            let entry = {
                let mut table = tx.open_table(ENTRIES).map_err(|e| self.storage(e))?;
                let last = table
                    .last()
                    .map_err(|e| self.storage(e))?
                    .map(|(_, v)| serde_json::from_slice::<WitnessEntry>(v.value()))
                    .transpose()
                    .map_err(|e| self.storage(e))?;
                let (seq, prev, ts) = match &last {
                    Some(l) => (
                        l.seq + 1,
                        decode_hash(&l.hash).unwrap_or([0; 32]),
                        now.max(l.ts_ms),
                    ),
                    None => (1, [0; 32], now),
                };
                let signed = canonical_bytes(seq, ts, &node_id, kind.as_str(), &details, &prev);
                let signature = identity.sign(&signed).to_bytes();
                let entry = WitnessEntry {
                    seq,
                    ts_ms: ts,
                    node_id: node_id.clone(),
                    kind: kind.as_str().to_string(),
                    details: details.clone(),
                    prev_hash: hex::encode(prev),
                    hash: hex::encode(entry_hash(&signed, &signature)),
                    signature: base64::engine::general_purpose::STANDARD.encode(signature),
                };
                let bytes = serde_json::to_vec(&entry).map_err(|e| self.storage(e))?;
                table
                    .insert(seq, bytes.as_slice())
                    .map_err(|e| self.storage(e))?;
                entry
            };
            tx.commit().map_err(|e| self.storage(e))?;
            Ok(entry)
        })
    }

    /// Appends an operator's note after checking it (non-empty, at most
    /// [`MAX_NOTE_CHARS`] characters, no control characters).
    pub fn attest(&self, note: &str, actor: &str) -> Result<WitnessEntry, WitnessError> {
        check_note(note)?;
        self.append(
            WitnessKind::OperatorAttestation,
            serde_json::json!({"note": note, "actor": actor}),
        )
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Result<Vec<WitnessEntry>, WitnessError> {
        self.with_db(|db| read_all(db).map_err(|e| self.storage(e)))
    }

    /// How many entries the chain has.
    pub fn len(&self) -> Result<u64, WitnessError> {
        Ok(self.entries()?.last().map(|e| e.seq).unwrap_or(0))
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> Result<bool, WitnessError> {
        Ok(self.len()? == 0)
    }

    /// The chain as an export: a header line, then one entry per line.
    pub fn export(&self) -> Result<String, WitnessError> {
        let identity = self.coordinator.identity();
        export_text(
            identity.node_id().as_str(),
            &identity.public_key_b64(),
            &self.entries()?,
        )
    }
}

/// Reads the chain in `home` without a daemon (for `wg witness export`
/// with the daemon stopped).
pub fn export_offline(
    home: &Path,
    node_id: &str,
    public_key: &str,
) -> Result<String, WitnessError> {
    let path = home.join(WITNESS_FILE);
    let entries = if path.exists() {
        let db = open(&path)?;
        read_all(&db).map_err(|e| WitnessError::Storage {
            path: path.clone(),
            reason: e,
        })?
    } else {
        Vec::new()
    };
    export_text(node_id, public_key, &entries)
}

/// The export text of `entries`: the header line, then one entry per line.
pub fn export_text(
    node_id: &str,
    public_key: &str,
    entries: &[WitnessEntry],
) -> Result<String, WitnessError> {
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        node_id: node_id.into(),
        public_key: public_key.into(),
    };
    let mut out =
        serde_json::to_string(&header).map_err(|e| WitnessError::Invalid(e.to_string()))?;
    out.push('\n');
    for entry in entries {
        out.push_str(
            &serde_json::to_string(entry).map_err(|e| WitnessError::Invalid(e.to_string()))?,
        );
        out.push('\n');
    }
    Ok(out)
}

fn open(path: &Path) -> Result<Database, WitnessError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let storage = |e: &dyn std::fmt::Display| WitnessError::Storage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| storage(&e))?;
    let db = Database::create(path).map_err(|e| storage(&e))?;
    let tx = db.begin_write().map_err(|e| storage(&e))?;
    tx.open_table(ENTRIES).map_err(|e| storage(&e))?;
    tx.commit().map_err(|e| storage(&e))?;
    Ok(db)
}

fn read_all(db: &Database) -> Result<Vec<WitnessEntry>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let table = tx.open_table(ENTRIES).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (_, v) = item.map_err(|e| e.to_string())?;
        out.push(serde_json::from_slice(v.value()).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

/// Checks an attestation note.
pub fn check_note(note: &str) -> Result<(), WitnessError> {
    if note.trim().is_empty() {
        return Err(WitnessError::Invalid("note: must not be empty".into()));
    }
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(WitnessError::Invalid(format!(
            "note: at most {MAX_NOTE_CHARS} characters"
        )));
    }
    if note.chars().any(char::is_control) {
        return Err(WitnessError::Invalid(
            "note: no control characters (newlines included)".into(),
        ));
    }
    Ok(())
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The node whose chain it is.
    pub node_id: String,
    /// How many entries.
    pub entries: u64,
    /// The last entry's hash (the chain's head), if any.
    pub head: Option<String>,
}

/// Verifies an export with nothing but the node's Ed25519 public key:
/// every line parses, sequence numbers run 1, 2, …, each `prev_hash` is the
/// previous `hash`, each `hash` and signature check, node ids match the
/// header, times never go back. Names the first bad entry.
pub fn verify_export(text: &str, public_key: &[u8; 32]) -> Result<Verified, WitnessError> {
    let mut lines = text.split('\n');
    let header_line = lines.next().unwrap_or("");
    let header: ExportHeader = serde_json::from_str(header_line).map_err(|_| {
        WitnessError::Invalid("line 1: not an agentfed witness export header".into())
    })?;
    if header.format != EXPORT_FORMAT {
        return Err(WitnessError::Invalid(format!(
            "line 1: format is not {EXPORT_FORMAT}"
        )));
    }
    let mut prev = [0u8; 32];
    let mut last_ts = 0u64;
    let mut count = 0u64;
    let mut ended = false;
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        if line.is_empty() {
            ended = true;
            continue;
        }
        let broken = |seq: u64, reason: &str| WitnessError::Broken {
            seq,
            line: line_no,
            reason: reason.to_string(),
        };
        if ended {
            return Err(broken(0, "text after the end of the chain"));
        }
        let entry: WitnessEntry =
            serde_json::from_str(line).map_err(|_| broken(0, "not a witness entry"))?;
        let seq = entry.seq;
        if seq != count + 1 {
            return Err(broken(
                seq,
                &format!("sequence number {seq} where {} was due", count + 1),
            ));
        }
        if decode_hash(&entry.prev_hash) != Some(prev) {
            return Err(broken(seq, "prev_hash is not the previous entry's hash"));
        }
        if entry.node_id != header.node_id {
            return Err(broken(seq, "written by another node id than the header's"));
        }
        if entry.ts_ms < last_ts {
            return Err(broken(seq, "its time is before the previous entry's"));
        }
        let signed = canonical_bytes(
            seq,
            entry.ts_ms,
            &entry.node_id,
            &entry.kind,
            &entry.details,
            &prev,
        );
        let signature: [u8; 64] = base64::engine::general_purpose::STANDARD
            .decode(&entry.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| broken(seq, "signature is not base64 of 64 bytes"))?;
        if !crate::identity::verify_ed25519(public_key, &signed, &signature) {
            return Err(broken(
                seq,
                "signature does not verify with the given public key",
            ));
        }
        let hash = entry_hash(&signed, &signature);
        if decode_hash(&entry.hash) != Some(hash) {
            return Err(broken(seq, "hash does not match the entry"));
        }
        prev = hash;
        last_ts = entry.ts_ms;
        count += 1;
    }
    Ok(Verified {
        node_id: header.node_id,
        entries: count,
        head: (count > 0).then(|| hex::encode(prev)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_length_prefixed_and_fixed() {
        let bytes = canonical_bytes(1, 2, "ab", "k", "{}", &[7; 32]);
        let mut expected = WITNESS_DOMAIN.to_vec();
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[
            0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'k', 0, 0, 0, 2, b'{', b'}',
        ]);
        expected.extend_from_slice(&[7; 32]);
        assert_eq!(bytes, expected);
        // Moving a byte between fields changes the bytes.
        assert_ne!(canonical_bytes(1, 2, "a", "bk", "{}", &[7; 32]), bytes);
    }

    /// A validly signed chain of `n` entries, with the times given.
    fn chain(key: &ed25519_dalek::SigningKey, times: &[u64]) -> Vec<WitnessEntry> {
        use ed25519_dalek::Signer as _;
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for (i, ts) in times.iter().enumerate() {
            let seq = i as u64 + 1;
            let details = format!("{{\"n\":{seq}}}");
            let signed = canonical_bytes(seq, *ts, "beta", "peer_added", &details, &prev);
            let signature = key.sign(&signed).to_bytes();
            let hash = entry_hash(&signed, &signature);
            out.push(WitnessEntry {
                seq,
                ts_ms: *ts,
                node_id: "beta".into(),
                kind: "peer_added".into(),
                details,
                prev_hash: hex::encode(prev),
                hash: hex::encode(hash),
                signature: base64::engine::general_purpose::STANDARD.encode(signature),
            });
            prev = hash;
        }
        out
    }

    fn broken_at(text: &str, key: &[u8; 32]) -> Option<u64> {
        match verify_export(text, key) {
            Err(WitnessError::Broken { seq, .. }) => Some(seq),
            Ok(_) => None,
            Err(e) => panic!("not a broken entry: {e}"),
        }
    }

    #[test]
    fn every_breakage_is_named_at_its_entry() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let entries = chain(&key, &[10, 20, 30, 40, 50]);
        let text = |e: &[WitnessEntry]| export_text("beta", "k", e).expect("export");
        let good = text(&entries);
        let verified = verify_export(&good, &public).expect("verifies");
        assert_eq!(verified.entries, 5);
        assert_eq!(verified.head.as_deref(), Some(entries[4].hash.as_str()));

        let edit = |i: usize, f: &dyn Fn(&mut WitnessEntry)| {
            let mut copy = entries.clone();
            f(&mut copy[i]);
            text(&copy)
        };
        // Every signed field, the hash and the link, edited in entry 3.
        assert_eq!(
            broken_at(&edit(2, &|e| e.details = "{\"n\":9}".into()), &public),
            Some(3)
        );
        assert_eq!(
            broken_at(&edit(2, &|e| e.kind = "peer_removed".into()), &public),
            Some(3)
        );
        assert_eq!(broken_at(&edit(2, &|e| e.ts_ms += 1), &public), Some(3));
        assert_eq!(
            broken_at(&edit(2, &|e| e.hash = "00".repeat(32)), &public),
            Some(3)
        );
        assert_eq!(
            broken_at(&edit(2, &|e| e.prev_hash = "11".repeat(32)), &public),
            Some(3)
        );
        assert_eq!(
            broken_at(&edit(2, &|e| e.node_id = "gamma".into()), &public),
            Some(3)
        );
        assert_eq!(broken_at(&edit(2, &|e| e.seq = 4), &public), Some(4));
        assert_eq!(
            broken_at(
                &edit(2, &|e| e.signature = entries[1].signature.clone()),
                &public
            ),
            Some(3)
        );
        // Removed, reordered, replayed.
        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(broken_at(&text(&removed), &public), Some(3));
        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        assert_eq!(broken_at(&text(&swapped), &public), Some(3));
        let mut doubled = entries.clone();
        doubled.push(entries[4].clone());
        assert_eq!(broken_at(&text(&doubled), &public), Some(5));
        // Another key fails at the first entry.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32])
            .verifying_key()
            .to_bytes();
        assert_eq!(broken_at(&good, &other), Some(1));
        // Time going back, even validly signed, is named.
        let back = chain(&key, &[10, 20, 15]);
        assert_eq!(broken_at(&text(&back), &public), Some(3));
        // Text after the chain's end, and a line that is not an entry.
        assert_eq!(broken_at(&format!("{good}\n{}\n", "{}"), &public), Some(0));
        let mut lines: Vec<&str> = good.lines().collect();
        lines[2] = "not json";
        assert_eq!(broken_at(&(lines.join("\n") + "\n"), &public), Some(0));
        // A header of another node: entry 1 is not its.
        let other_header = good.replacen("\"node_id\":\"beta\"", "\"node_id\":\"gamma\"", 1);
        assert_eq!(broken_at(&other_header, &public), Some(1));
    }

    #[test]
    fn notes_are_checked() {
        assert!(check_note("rotated keys after the audit").is_ok());
        assert!(check_note("  ").is_err());
        assert!(check_note("a\nb").is_err());
        assert!(check_note(&"x".repeat(MAX_NOTE_CHARS + 1)).is_err());
    }
}
