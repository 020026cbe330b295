//! Persistent node state in one redb file (`state.redb` in the node home),
//! plus the single-daemon lock (`daemon.lock`).
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | bytes (`schema_version`: u64 big-endian; `audit_head`: see [`crate::audit`]) |
//! | `peers` | node id | JSON [`PeerRecord`] |
//! | `spend` | (node id, ts_ms, seq) | JSON [`SpendSample`] |
//! | `spend_index` | node id | (sample count, next seq) |
//! | `outbox` | envelope id | (attempts, next_attempt_ms, target node id, envelope bytes) |
//! | `dedupe` | (sender, envelope id) | seen_ms |
//! | `dedupe_by_time` | (seen_ms, sender, envelope id) | () |
//! | `audit` | seq | audit record bytes ([`crate::audit`]) |
//! | `inbox` | seq | message bytes |
//!
//! Structured values are JSON (serde_json): records evolve by adding
//! `#[serde(default)]` fields, which old rows still decode into, and a raw
//! row stays readable when debugging; a compact format such as postcard is
//! not self-describing, so every added field would need a migration. Hot
//! binary data (outbox envelopes) uses redb's native tuple encoding.
//!
//! Every mutating method hands its change to the store's writer thread
//! ([`super::journal`]), which group-commits the changes of concurrent
//! callers in one redb write transaction; the method returns once the
//! change is durable: once it returns `Ok`, the change is on disk.
//!
//! # The message log
//!
//! The message path (outbox, inbox, dedupe, stored acknowledgements,
//! idempotency keys and the audit records that go with them) is made
//! durable by the message log beside the state file (`state.log/`, see
//! [`super::seglog`]) rather than by a durable redb commit: its changes
//! write through a `redo::Tx`, each job's writes become one log record,
//! a batch costs one append and one `fdatasync`, and the redb transaction
//! is committed without syncing. A checkpoint (a durable redb commit, at
//! least every [`super::journal::CHECKPOINT_INTERVAL`] while the log is
//! ahead, and whenever a batch holds any other change) makes the state
//! file catch up and releases the log's records; `meta` keeps the last
//! record the state file holds (`message_log_applied`). On open, every
//! record past it is replayed, so the tables here are always whole once
//! [`Store::open`] returns; they are indexes the log can rebuild.
//!
//! The `*_in` functions are the same changes applied to a caller's
//! transaction, for jobs that combine them (e.g. with audit records).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageError, WriteTransaction,
};

use serde::{Deserialize, Serialize};

use super::journal::{Journal, Persist, TypedTicket};
use super::record::{AuditError, AuditEvent, Recorder, journal_error};
use super::redo::{self, Redo, Tx};
use super::seglog::{LogOptions, SegmentLog, TailCut};
use crate::model::{PeerRecord, SpendSample, SpendWindow};

use super::tables::*;
pub use super::tables::{
    LOCK_FILE, MAX_KEY_BYTES, SCHEMA_VERSION, SPEND_RING_CAPACITY, STATE_FILE, StoreError,
};

const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A queued outbound envelope (at-least-once delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Envelope id (the key).
    pub envelope_id: String,
    /// Target node id.
    pub target: String,
    /// The exact signed bytes to send (shared, not copied, between the
    /// outbox write, the delivery worker and the transport).
    pub bytes: bytes::Bytes,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (ms since the Unix epoch).
    pub next_attempt_ms: u64,
}

/// The node's state database.
pub struct Store {
    db: Arc<Database>,
    journal: Arc<Journal>,
    log: Arc<SegmentLog>,
    /// What opening the message log found and replayed.
    log_recovery: LogReplay,
    path: PathBuf,
    audit_claimed: Arc<AtomicBool>,
    peers: PeerCache,
    outbox: Arc<OutboxIndex>,
    inbox_tip: Arc<tokio::sync::watch::Sender<u64>>,
    /// Messages and bytes each sender has in the inbox (per-peer quotas).
    inbox_usage: Arc<InboxUsage>,
}

/// How many messages, and how many bytes, each sender has in the inbox:
/// what the per-peer inbox quota is checked against. Built from the table
/// when the store opens; afterwards changed by commit hooks (a message
/// stored) and by removals.
#[derive(Debug, Default)]
pub(crate) struct InboxUsage {
    by_sender: std::sync::Mutex<HashMap<String, (u64, u64)>>,
}

impl InboxUsage {
    fn add(&self, sender: &str, bytes: u64) {
        let mut map = self.by_sender.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(sender.to_string()).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }

    fn sub(&self, sender: &str, bytes: u64) {
        let mut map = self.by_sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(sender) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(bytes);
            if entry.0 == 0 {
                map.remove(sender);
            }
        }
    }

    fn get(&self, sender: &str) -> (u64, u64) {
        let map = self.by_sender.lock().unwrap_or_else(|p| p.into_inner());
        map.get(sender).copied().unwrap_or_default()
    }
}

/// The sender of a stored inbox message (its JSON's `from`).
fn inbox_sender(message: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct From {
        from: String,
    }
    serde_json::from_slice::<From>(message).ok().map(|f| f.from)
}

fn index_inbox(db: &Database) -> Result<InboxUsage> {
    let usage = InboxUsage::default();
    let txn = db.begin_read()?;
    let inbox = txn.open_table(INBOX)?;
    for row in inbox.iter()? {
        let (_, v) = row?;
        if let Some(sender) = inbox_sender(v.value()) {
            usage.add(&sender, v.value().len() as u64);
        }
    }
    Ok(usage)
}

/// Which outbox entries are committed, for which peer, and when each is
/// next due. The delivery worker's periodic scan looks here and then reads
/// only the entries it will send: reading every queued envelope twice a
/// second made a backlog of tens of thousands most of a sender's CPU.
/// Built from the table when the store opens; afterwards changed only by
/// commit hooks ([`super::journal::OnCommit`]), which run in commit order,
/// so it follows the committed table exactly (a moment behind).
#[derive(Default)]
pub(crate) struct OutboxIndex {
    state: std::sync::Mutex<OutboxIndexState>,
}

#[derive(Default)]
struct OutboxIndexState {
    /// Per target, `(next_attempt_ms, envelope id)`, earliest first: a scan
    /// walks only the peers it can deliver to now, so a backlog for an
    /// absent peer costs nothing.
    by_target: std::collections::HashMap<String, std::collections::BTreeSet<(u64, String)>>,
    /// Envelope id → (next_attempt_ms, target).
    entries: std::collections::HashMap<String, (u64, String)>,
}

impl OutboxIndexState {
    fn unlink(&mut self, envelope_id: &str, due: u64, target: &str) {
        if let Some(set) = self.by_target.get_mut(target) {
            set.remove(&(due, envelope_id.to_string()));
            if set.is_empty() {
                self.by_target.remove(target);
            }
        }
    }

    fn link(&mut self, envelope_id: &str, due: u64, target: &str) {
        self.by_target
            .entry(target.to_string())
            .or_default()
            .insert((due, envelope_id.to_string()));
    }
}

impl OutboxIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxIndexState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An entry was committed (inserted or replaced).
    pub(crate) fn put(&self, envelope_id: &str, next_attempt_ms: u64, target: &str) {
        let mut state = self.lock();
        if let Some((due, old_target)) = state.entries.insert(
            envelope_id.to_string(),
            (next_attempt_ms, target.to_string()),
        ) {
            state.unlink(envelope_id, due, &old_target);
        }
        state.link(envelope_id, next_attempt_ms, target);
    }

    /// An existing entry was rescheduled.
    fn reschedule(&self, envelope_id: &str, next_attempt_ms: u64) {
        let mut state = self.lock();
        let Some((due, target)) = state.entries.get_mut(envelope_id).map(|entry| {
            let old = std::mem::replace(&mut entry.0, next_attempt_ms);
            (old, entry.1.clone())
        }) else {
            return;
        };
        state.unlink(envelope_id, due, &target);
        state.link(envelope_id, next_attempt_ms, &target);
    }

    /// An entry was removed.
    pub(crate) fn remove(&self, envelope_id: &str) {
        let mut state = self.lock();
        if let Some((due, target)) = state.entries.remove(envelope_id) {
            state.unlink(envelope_id, due, &target);
        }
    }

    /// Ids of up to `limit` entries due at `now_ms` whose target passes
    /// `deliverable` and whose id passes `wanted`, earliest due first.
    fn due(
        &self,
        now_ms: u64,
        limit: usize,
        deliverable: impl Fn(&str) -> bool,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let state = self.lock();
        let mut picked: Vec<(u64, String)> = Vec::new();
        for (_, queued) in state
            .by_target
            .iter()
            .filter(|(target, _)| deliverable(target))
        {
            picked.extend(
                queued
                    .iter()
                    .take_while(|(due, _)| *due <= now_ms)
                    .filter(|(_, id)| wanted(id))
                    .take(limit)
                    .cloned(),
            );
        }
        drop(state);
        picked.sort_unstable();
        picked.truncate(limit);
        picked.into_iter().map(|(_, id)| id).collect()
    }

    /// `(id, next_attempt_ms, target)` of every entry, in id order.
    #[cfg(test)]
    fn snapshot(&self) -> Vec<(String, u64, String)> {
        let mut all: Vec<_> = self
            .lock()
            .entries
            .iter()
            .map(|(id, (due, target))| (id.clone(), *due, target.clone()))
            .collect();
        all.sort();
        all
    }
}

/// Decoded peer records, so the per-message path (every envelope reads
/// its sender's record) does not decode JSON each time. Every write of a
/// peer goes through [`Store`], which announces it before queueing it and
/// drops the entry once its commit is over. A reader caches what it read
/// only if no peer write was in progress and none ended since it started:
/// its snapshot may predate a commit whose entry was not dropped yet, and
/// caching it would let a later reader see an older record than an
/// earlier one did.
#[derive(Default)]
struct PeerCache {
    state: std::sync::Mutex<PeerCacheState>,
}

#[derive(Default)]
struct PeerCacheState {
    entries: std::collections::HashMap<String, PeerRecord>,
    /// Peer writes announced and not yet over.
    writing: u64,
    /// Peer writes over so far.
    generation: u64,
}

impl PeerCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, PeerCacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, node_id: &str) -> Option<PeerRecord> {
        self.lock().entries.get(node_id).cloned()
    }

    /// Taken by a reader before it opens its read transaction.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches what a reader read (see the type's docs for when).
    fn fill(&self, generation: u64, record: &PeerRecord) {
        let mut state = self.lock();
        if state.writing == 0 && state.generation == generation {
            state
                .entries
                .insert(record.node_id().to_string(), record.clone());
        }
    }

    /// Before a write of a peer is queued.
    fn begin_write(&self) {
        self.lock().writing += 1;
    }

    /// After a write of `node_id` (committed or failed).
    fn end_write(&self, node_id: &str) {
        let mut state = self.lock();
        state.writing -= 1;
        state.generation += 1;
        state.entries.remove(node_id);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens `home/state.redb`, creating it if missing.
    pub fn open_in_home(home: &Path) -> Result<Store> {
        Store::open(&home.join(STATE_FILE))
    }

    /// Creates or opens the store at `path`: verifies every page checksum on
    /// open (a damaged or foreign file is refused with
    /// [`StoreError::Corrupt`], never a panic), creates missing tables,
    /// records [`SCHEMA_VERSION`] in `meta` and refuses a newer one.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Arc::new(open_database(path)?);
        init_schema(&db, path)?;
        let (log, log_recovery) = replay_message_log(&db, &message_log_dir(path))?;
        let log = Arc::new(log);
        let outbox = Arc::new(index_outbox(&db)?);
        let inbox_tip = Arc::new(tokio::sync::watch::Sender::new(last_inbox_seq(&db)?));
        let inbox_usage = Arc::new(index_inbox(&db)?);
        Ok(Store {
            inbox_tip,
            inbox_usage,
            journal: Arc::new(Journal::start(Arc::clone(&db), Some(Arc::clone(&log)))?),
            log,
            log_recovery,
            db,
            path: path.to_path_buf(),
            audit_claimed: Arc::new(AtomicBool::new(false)),
            peers: PeerCache::default(),
            outbox,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening the message log found: records replayed into the
    /// state file, and a torn tail cut off (to be audited).
    pub fn log_replay(&self) -> &LogReplay {
        &self.log_recovery
    }

    /// The message log's counters and sizes.
    pub fn log_stats(&self) -> super::seglog::LogStats {
        self.log.stats()
    }
}

/// The message log's directory for the state file at `path`
/// (`state.redb` → `state.log/`).
pub fn message_log_dir(path: &Path) -> PathBuf {
    path.with_extension("log")
}

/// What [`Store::open`] did with the message log.
#[derive(Debug, Clone, Default)]
pub struct LogReplay {
    /// Records found in the log.
    pub records: u64,
    /// Records past the last checkpoint, applied to the state file.
    pub replayed: u64,
    /// A torn tail that was cut off (records never acknowledged).
    pub cut: Option<TailCut>,
    /// How long opening and replaying took, in milliseconds.
    pub elapsed_ms: u64,
}

/// The last message-log record the state file holds.
fn log_applied(db: &Database) -> Result<u64> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let applied = match meta.get(super::journal::LOG_APPLIED_KEY)? {
        Some(v) => decode_u64(v.value()).ok_or(StoreError::Decode { table: "meta" })?,
        None => 0,
    };
    Ok(applied)
}

/// Opens the message log in `dir` and applies every record the state file
/// does not hold yet (one durable commit), then releases them all.
fn replay_message_log(db: &Database, dir: &Path) -> Result<(SegmentLog, LogReplay)> {
    let started = std::time::Instant::now();
    let applied = log_applied(db)?;
    let txn = begin_durable_write(db)?;
    let mut seen: Option<(u64, u64)> = None;
    let mut replayed = 0u64;
    let options = LogOptions {
        next_lsn_floor: applied + 1,
        ..LogOptions::default()
    };
    let (log, recovery) = SegmentLog::open(dir, options, |pos, payload| {
        seen = Some((seen.map_or(pos.lsn, |(first, _)| first), pos.lsn));
        if pos.lsn <= applied {
            return Ok(());
        }
        let ops = redo::decode(payload).map_err(|why| redo::undecodable(dir, pos, why))?;
        for op in &ops {
            redo::apply(&txn, op)?;
        }
        replayed += 1;
        Ok::<(), StoreError>(())
    })?;
    if let Some((_, last)) = seen.filter(|(_, last)| *last > applied) {
        super::journal::put_log_applied(&txn, last)?;
    }
    txn.commit()?;
    if let Some((first, last)) = seen
        && last < log.next_lsn()
    {
        log.release_all(first..=last)?;
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            "message log: replayed records past the last checkpoint into the state file"
        );
    }
    Ok((
        log,
        LogReplay {
            records: recovery.records,
            replayed,
            cut: recovery.cut,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
    ))
}

/// The outbox index of what is committed (before the writer thread starts).
fn index_outbox(db: &Database) -> Result<OutboxIndex> {
    let index = OutboxIndex::default();
    let txn = db.begin_read()?;
    for row in txn.open_table(OUTBOX)?.iter()? {
        let (k, v) = row?;
        let (_, next_attempt_ms, target, _) = v.value();
        index.put(k.value(), next_attempt_ms, target);
    }
    Ok(index)
}

/// Creates missing tables and checks the schema version (before the
/// writer thread starts).
fn init_schema(db: &Database, path: &Path) -> Result<()> {
    let txn = begin_durable_write(db)?;
    let found = {
        let mut meta = txn.open_table(META)?;
        let found = match meta.get(SCHEMA_KEY)? {
            Some(v) => Some(decode_u64(v.value()).ok_or(StoreError::Decode { table: "meta" })?),
            None => None,
        };
        if found.is_none() {
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
        }
        found
    };
    if let Some(found) = found.filter(|&v| v > SCHEMA_VERSION) {
        txn.abort()?;
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    txn.open_table(PEERS)?;
    txn.open_table(SPEND)?;
    txn.open_table(SPEND_INDEX)?;
    txn.open_table(OUTBOX)?;
    txn.open_table(DEDUPE)?;
    txn.open_table(DEDUPE_BY_TIME)?;
    txn.open_table(AUDIT)?;
    txn.open_table(INBOX)?;
    txn.open_table(INBOUND_ACKS)?;
    txn.open_table(REMOVED_PEERS)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(IDEMPOTENCY_BY_TIME)?;
    txn.commit()?;
    Ok(())
}

impl Store {
    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta
            .get(SCHEMA_KEY)?
            .ok_or(StoreError::Decode { table: "meta" })?;
        decode_u64(v.value()).ok_or(StoreError::Decode { table: "meta" })
    }

    /// The shared database handle (for [`crate::audit::AuditLog`]).
    pub(crate) fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Claims the single audit writer of this store: `None` if an
    /// [`crate::audit::AuditLog`] is already open on it (two writers would
    /// fork the hash chain). The claim ends when the returned flag is reset.
    pub(crate) fn claim_audit_writer(&self) -> Option<Arc<AtomicBool>> {
        self.audit_claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Arc::clone(&self.audit_claimed))
    }

    /// The store's writer thread (group commit), for jobs that combine
    /// state changes with audit records.
    pub(crate) fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Group-commit counters since the store opened.
    pub fn commit_stats(&self) -> super::journal::CommitStats {
        self.journal.stats()
    }

    /// Applies `change` in the next group commit and returns its value
    /// once the commit is durable. `change` may run more than once (see
    /// [`super::journal`]) and must touch nothing but the transaction.
    fn write<R, F>(&self, mut change: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<R> + Send + 'static,
    {
        let (value, _) = self
            .journal
            .write(move |txn| Ok((change(txn)?, false)), Vec::new())?;
        Ok(value)
    }

    /// [`Store::write`], running `on_commit` with the value once the
    /// change is committed (see [`super::journal::OnCommit`]).
    fn write_hooked<R, F, H>(&self, on_commit: H, mut change: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<R> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let (value, _) = self
            .journal
            .submit_typed_hooked(
                move |txn| Ok((change(txn)?, false)),
                Vec::new(),
                Some(on_commit),
                super::journal::Persist::Durable,
            )?
            .wait()?;
        Ok(value)
    }

    /// [`Store::write_hooked`] for a message-path change: its writes go
    /// through a [`Tx`] and are made durable by the message log.
    fn write_logged_hooked<R, F, H>(&self, on_commit: H, mut change: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<R> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let (value, _) = self
            .journal
            .submit_logged_hooked(
                move |tx| Ok((change(tx)?, false)),
                Vec::new(),
                Some(on_commit),
                super::journal::Persist::Durable,
            )?
            .wait()?;
        Ok(value)
    }

    /// [`Store::write_logged_hooked`] without a hook.
    fn write_logged<R, F>(&self, change: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<R> + Send + 'static,
    {
        self.write_logged_hooked(|_: &R| {}, change)
    }

    /// Queues `change` with `events` (prepared by `recorder`, see
    /// [`crate::audit::AuditLog::recorder`]) as one journal job: the change
    /// and its records commit together, group-committed with concurrent
    /// callers; the ticket yields `change`'s value and the committed
    /// records. `change` returns whether the events are to be recorded at
    /// all (e.g. not for a duplicate); it may run more than once and must
    /// touch nothing but the transaction (see [`super::journal`]). A thread
    /// can queue many changes and wait for them together (they share
    /// commits). `on_commit` runs with the change's value once it is
    /// committed; `persist` says how soon.
    pub(crate) fn submit_recorded<R, F, H>(
        &self,
        recorder: Recorder,
        change: F,
        events: Vec<AuditEvent>,
        on_commit: Option<H>,
        persist: Persist,
    ) -> std::result::Result<TypedTicket<R>, AuditError>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<(R, bool)> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let prepared = recorder.prepare_all(events)?;
        self.journal
            .submit_typed_hooked(change, prepared, on_commit, persist)
            .map_err(journal_error)
    }

    /// [`Store::submit_recorded`] for a message-path change (outbox,
    /// inbox, dedupe), which writes through a [`Tx`] so the change and its
    /// records are durable in the message log.
    pub(crate) fn submit_logged_recorded<R, F, H>(
        &self,
        recorder: Recorder,
        change: F,
        events: Vec<AuditEvent>,
        on_commit: Option<H>,
        persist: Persist,
    ) -> std::result::Result<TypedTicket<R>, AuditError>
    where
        R: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<(R, bool)> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let prepared = recorder.prepare_all(events)?;
        self.journal
            .submit_logged_hooked(change, prepared, on_commit, persist)
            .map_err(journal_error)
    }

    // --- peers -------------------------------------------------------------

    /// Inserts or replaces the record of `record.node_id()`.
    pub fn upsert_peer(&self, record: &PeerRecord) -> Result<()> {
        let id = record.node_id().to_string();
        check_key(&id)?;
        let bytes = serde_json::to_vec(record)
            .map_err(|_| StoreError::InvalidValue("peer record does not serialize"))?;
        let key = id.clone();
        self.peers.begin_write();
        let written = self.write(move |txn| {
            txn.open_table(PEERS)?
                .insert(id.as_str(), bytes.as_slice())?;
            Ok(())
        });
        self.peers.end_write(&key);
        written
    }

    /// The record of `node_id`, if known.
    pub fn get_peer(&self, node_id: &str) -> Result<Option<PeerRecord>> {
        if let Some(record) = self.peers.get(node_id) {
            return Ok(Some(record));
        }
        let generation = self.peers.generation();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let row = table.get(node_id)?;
        let record: Option<PeerRecord> =
            row.map(|v| decode_json(v.value(), "peers")).transpose()?;
        if let Some(record) = &record {
            self.peers.fill(generation, record);
        }
        Ok(record)
    }

    /// A counter that grows with every peer write (trust, breaker,
    /// manifest, last seen): the WireGuard mesh polls it to reconcile
    /// right after a change.
    pub fn peer_generation(&self) -> u64 {
        self.peers.generation()
    }

    /// Every peer record, ordered by node id.
    pub fn list_peers(&self) -> Result<Vec<PeerRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode_json(v.value(), "peers")?);
        }
        Ok(out)
    }

    /// Reads, modifies and writes back the record of `node_id` in one
    /// transaction. Returns the updated record, or `None` if unknown (then
    /// nothing is written). `f` must not change the node id.
    pub fn update_peer<F>(&self, node_id: &str, mut f: F) -> Result<Option<PeerRecord>>
    where
        F: FnMut(&mut PeerRecord) + Send + 'static,
    {
        let key = node_id.to_string();
        self.peers.begin_write();
        let updated = self.write(move |txn| update_peer_in(txn, &key, &mut f));
        self.peers.end_write(node_id);
        updated
    }

    /// [`Store::update_peer`] with `events` recorded in `audit` in the same
    /// transaction (group-committed): after a crash the change and its
    /// records are both there or neither is. The events are recorded only
    /// if the peer is known.
    pub(crate) fn update_peer_recorded<F>(
        &self,
        recorder: Recorder,
        node_id: &str,
        mut f: F,
        events: Vec<AuditEvent>,
    ) -> std::result::Result<Option<PeerRecord>, AuditError>
    where
        F: FnMut(&mut PeerRecord) + Send + 'static,
    {
        let key = node_id.to_string();
        self.peers.begin_write();
        let updated = self
            .submit_recorded(
                recorder,
                move |txn| {
                    let updated = update_peer_in(txn, &key, &mut f)?;
                    let known = updated.is_some();
                    Ok((updated, known))
                },
                events,
                None::<fn(&Option<PeerRecord>)>,
                super::journal::Persist::Durable,
            )
            .and_then(|ticket| {
                ticket
                    .wait()
                    .map(|(updated, _)| updated)
                    .map_err(journal_error)
            });
        self.peers.end_write(node_id);
        updated
    }

    /// [`Store::upsert_peer`] with `events` in the same commit (and, with
    /// `readmit`, the peer taken off the removed list): the peer and its
    /// `peer_added` record are both there or neither is.
    pub(crate) fn upsert_peer_recorded(
        &self,
        recorder: Recorder,
        record: &PeerRecord,
        readmit: bool,
        events: Vec<AuditEvent>,
    ) -> std::result::Result<(), AuditError> {
        let id = record.node_id().to_string();
        check_key(&id)?;
        let bytes = serde_json::to_vec(record)
            .map_err(|_| StoreError::InvalidValue("peer record does not serialize"))?;
        let key = id.clone();
        self.peers.begin_write();
        let written = self
            .submit_recorded(
                recorder,
                move |txn| {
                    if readmit {
                        txn.open_table(REMOVED_PEERS)?.remove(id.as_str())?;
                    }
                    txn.open_table(PEERS)?
                        .insert(id.as_str(), bytes.as_slice())?;
                    Ok(((), true))
                },
                events,
                None::<fn(&())>,
                super::journal::Persist::Durable,
            )
            .and_then(|ticket| ticket.wait().map_err(journal_error));
        self.peers.end_write(&key);
        written.map(|_| ())
    }

    /// Removes a peer and its spend samples. Returns whether it existed.
    pub fn remove_peer(&self, node_id: &str, now_ms: u64) -> Result<Option<RemovedPeer>> {
        let key = node_id.to_string();
        self.peers.begin_write();
        let removed = self.write_hooked(self.unindex_removed(), move |txn| {
            remove_peer_in(txn, &key, now_ms, None)
        });
        self.peers.end_write(node_id);
        removed.map(|outcome| outcome.removed())
    }

    /// [`Store::remove_peer`] with the record `event_for` makes of what
    /// was removed, in the same commit: the peer is gone and its
    /// `peer_removed` record (naming the dropped envelopes) is there, or
    /// neither. The dropped envelopes are read first and checked again
    /// inside the commit; if a send changed them meanwhile, it starts over.
    pub(crate) fn remove_peer_recorded(
        &self,
        recorder: Recorder,
        node_id: &str,
        now_ms: u64,
        event_for: impl Fn(&RemovedPeer) -> AuditEvent,
    ) -> std::result::Result<Option<RemovedPeer>, AuditError> {
        loop {
            if self.get_peer(node_id)?.is_none() {
                return Ok(None);
            }
            let expected = RemovedPeer {
                dropped_envelopes: self.outbox_ids_for(node_id)?,
            };
            let event = event_for(&expected);
            let key = node_id.to_string();
            self.peers.begin_write();
            let outcome = self
                .submit_recorded(
                    recorder,
                    move |txn| {
                        let outcome =
                            remove_peer_in(txn, &key, now_ms, Some(&expected.dropped_envelopes))?;
                        let removed = matches!(outcome, PeerRemoval::Removed(_));
                        Ok((outcome, removed))
                    },
                    vec![event],
                    Some(self.unindex_removed()),
                    super::journal::Persist::Durable,
                )
                .and_then(|ticket| ticket.wait().map_err(journal_error));
            self.peers.end_write(node_id);
            match outcome?.0 {
                PeerRemoval::Changed => continue,
                outcome => return Ok(outcome.removed()),
            }
        }
    }

    /// Ids of the queued outbox entries for `node_id`.
    fn outbox_ids_for(&self, node_id: &str) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        outbox_ids_in(&txn.open_table(OUTBOX)?, node_id)
    }

    /// The commit hook that takes a removed peer's dropped entries out of
    /// the delivery worker's index.
    fn unindex_removed(&self) -> impl FnOnce(&PeerRemoval) + Send + use<> {
        let index = Arc::clone(&self.outbox);
        move |outcome: &PeerRemoval| {
            if let PeerRemoval::Removed(removed) = outcome {
                for id in &removed.dropped_envelopes {
                    index.remove(id);
                }
            }
        }
    }

    /// When an operator removed `node_id`, if it is on the removed list.
    pub fn removed_at(&self, node_id: &str) -> Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REMOVED_PEERS)?;
        Ok(table.get(node_id)?.map(|v| v.value()))
    }

    /// Takes `node_id` off the removed list (an operator added or joined it
    /// again). Returns whether it was on it.
    pub fn clear_removed(&self, node_id: &str) -> Result<bool> {
        let key = node_id.to_string();
        self.write(move |txn| {
            Ok(txn
                .open_table(REMOVED_PEERS)?
                .remove(key.as_str())?
                .is_some())
        })
    }

    // --- spend ---------------------------------------------------------------

    /// Appends a spend sample for `peer`, dropping the oldest samples beyond
    /// [`SPEND_RING_CAPACITY`]. The sample is stored as reported (negative
    /// values kept); `usd` must be finite.
    pub fn record_spend(&self, peer: &str, sample: &SpendSample) -> Result<()> {
        let bytes = encode_spend(peer, sample)?;
        let peer = peer.to_string();
        let ts_ms = sample.ts_ms;
        self.write(move |txn| record_spend_in(txn, &peer, ts_ms, &bytes))
    }

    /// [`Store::record_spend`] and, with `count_failure` (a failure
    /// reported while the peer's breaker is SUSPENDED), one more failure
    /// since the suspension on the peer's record, with `events` (its
    /// `spend_reported`) recorded in `audit` in the same commit. Nothing is
    /// written or recorded for an unknown peer; whether it was known.
    pub(crate) fn record_spend_recorded(
        &self,
        recorder: Recorder,
        peer: &str,
        sample: &SpendSample,
        count_failure: bool,
        events: Vec<AuditEvent>,
    ) -> std::result::Result<bool, AuditError> {
        let bytes = encode_spend(peer, sample).map_err(journal_error)?;
        let key = peer.to_string();
        let ts_ms = sample.ts_ms;
        if count_failure {
            self.peers.begin_write();
        }
        let known = self
            .submit_recorded(
                recorder,
                move |txn| {
                    let known = if count_failure {
                        update_peer_in(txn, &key, &mut |r| r.breaker.failures_since_suspend += 1)?
                            .is_some()
                    } else {
                        txn.open_table(PEERS)?.get(key.as_str())?.is_some()
                    };
                    if known {
                        record_spend_in(txn, &key, ts_ms, &bytes)?;
                    }
                    Ok((known, known))
                },
                events,
                None::<fn(&bool)>,
                super::journal::Persist::Durable,
            )
            .and_then(|ticket| ticket.wait().map(|(known, _)| known).map_err(journal_error));
        if count_failure {
            self.peers.end_write(peer);
        }
        known
    }

    /// Spend samples of `peer` with `ts_ms >= since_ms`, oldest first.
    pub fn spend_samples(&self, peer: &str, since_ms: u64) -> Result<Vec<SpendSample>> {
        self.spend_samples_from(peer, since_ms, 0)
    }

    /// [`Store::spend_samples`] with a report sequence number of at least
    /// `from_seq`.
    fn spend_samples_from(
        &self,
        peer: &str,
        since_ms: u64,
        from_seq: u64,
    ) -> Result<Vec<SpendSample>> {
        let txn = self.db.begin_read()?;
        let spend = txn.open_table(SPEND)?;
        let mut out = Vec::new();
        for row in spend.range((peer, since_ms, 0u64)..=(peer, u64::MAX, u64::MAX))? {
            let (k, v) = row?;
            if k.value().2 >= from_seq {
                out.push(decode_json(v.value(), "spend")?);
            }
        }
        Ok(out)
    }

    /// Aggregates `peer`'s samples with `ts_ms >= since_ms` and a report
    /// sequence number of at least `from_seq` ([`Store::spend_next_seq`]
    /// at an operator's reactivation; 0 for all); each sample's tokens and
    /// USD are clamped to `>= 0` before summing (no credit inflation by
    /// negative reports).
    pub fn spend_window(&self, peer: &str, since_ms: u64, from_seq: u64) -> Result<SpendWindow> {
        let mut window = SpendWindow::default();
        for s in self.spend_samples_from(peer, since_ms, from_seq)? {
            window.samples += 1;
            if !s.success {
                window.failures += 1;
            }
            window.tokens = window.tokens.saturating_add(s.tokens.max(0).unsigned_abs());
            if s.usd > 0.0 {
                window.usd += s.usd;
            }
        }
        Ok(window)
    }

    /// The sequence number `peer`'s next spend report will get: reports
    /// from now on have at least this one.
    pub fn spend_next_seq(&self, peer: &str) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(SPEND_INDEX)?;
        Ok(index.get(peer)?.map(|v| v.value().1).unwrap_or(0))
    }

    /// Number of samples kept for `peer`.
    pub fn spend_sample_count(&self, peer: &str) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(SPEND_INDEX)?;
        Ok(index.get(peer)?.map(|v| v.value().0).unwrap_or(0))
    }

    // --- outbox --------------------------------------------------------------

    /// Inserts or replaces an outbox entry.
    pub fn outbox_put(&self, entry: &OutboxEntry) -> Result<()> {
        check_outbox_entry(entry)?;
        let hook = self.outbox_put_hook(entry);
        let entry = entry.clone();
        self.write_logged_hooked(hook, move |tx| outbox_put_in(tx, &entry))
    }

    /// The commit hook that indexes `entry` once its insertion commits
    /// (for jobs that put outbox entries together with audit records).
    pub(crate) fn outbox_put_hook(&self, entry: &OutboxEntry) -> impl FnOnce(&()) + Send + use<> {
        let index = Arc::clone(&self.outbox);
        let (id, due, target) = (
            entry.envelope_id.clone(),
            entry.next_attempt_ms,
            entry.target.clone(),
        );
        move |_: &()| index.put(&id, due, &target)
    }

    /// The commit hook that unindexes `envelope_id` once its removal
    /// commits.
    pub(crate) fn outbox_remove_hook(
        &self,
        envelope_id: &str,
    ) -> impl FnOnce(&bool) + Send + use<> {
        let index = Arc::clone(&self.outbox);
        let id = envelope_id.to_string();
        move |_: &bool| index.remove(&id)
    }

    /// The outbox entry for `envelope_id`.
    pub fn outbox_get(&self, envelope_id: &str) -> Result<Option<OutboxEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let row = table.get(envelope_id)?;
        Ok(row.map(|v| outbox_entry(envelope_id, v.value())))
    }

    /// Removes an entry (on acknowledgement). Returns whether it existed.
    pub fn outbox_remove(&self, envelope_id: &str) -> Result<bool> {
        let hook = self.outbox_remove_hook(envelope_id);
        let envelope_id = envelope_id.to_string();
        self.write_logged_hooked(hook, move |tx| outbox_remove_in(tx, &envelope_id))
    }

    /// Up to `limit` entries whose `next_attempt_ms <= now_ms`, earliest due first.
    pub fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        self.outbox_due_where(now_ms, limit, |_| true, |_| true)
    }

    /// [`Store::outbox_due`] restricted to entries whose target passes
    /// `deliverable` (say, has a session) and whose id passes `wanted`
    /// (say, is not already in flight). Decided from the in-memory index,
    /// so only the entries returned are read from the table, and entries
    /// for other targets are not even looked at.
    pub fn outbox_due_where(
        &self,
        now_ms: u64,
        limit: usize,
        deliverable: impl Fn(&str) -> bool,
        wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<OutboxEntry>> {
        let ids = self.outbox.due(now_ms, limit, deliverable, wanted);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut due = Vec::with_capacity(ids.len());
        for id in ids {
            // Gone or rescheduled since the index was read: its commit
            // hook is about to update the index.
            if let Some(row) = table.get(id.as_str())?
                && row.value().1 <= now_ms
            {
                due.push(outbox_entry(&id, row.value()));
            }
        }
        Ok(due)
    }

    /// Counts a failed attempt of a queued entry and schedules the next
    /// one at `next_attempt(attempts)`, where `attempts` is the stored
    /// count after this failure (so the backoff follows the table, not a
    /// possibly stale in-memory copy), with the record `event_for` makes of
    /// the new count and next attempt time (e.g. `message_timeout`, or
    /// none) in the same commit. The count is read first and checked again
    /// inside the commit; if it moved meanwhile, it starts over. Returns
    /// `(attempts, next attempt ms)`, or `None` (nothing changed) when the
    /// entry is gone.
    pub(crate) fn outbox_reschedule_recorded(
        &self,
        recorder: Recorder,
        envelope_id: &str,
        next_attempt: impl Fn(u32) -> u64 + Send + Sync + 'static,
        event_for: impl Fn(u32, u64) -> Option<AuditEvent>,
    ) -> std::result::Result<Option<(u32, u64)>, AuditError> {
        let next_attempt = Arc::new(next_attempt);
        loop {
            let Some(current) = self.outbox_get(envelope_id)? else {
                return Ok(None);
            };
            let attempts = current.attempts.saturating_add(1);
            let next_attempt_ms = next_attempt(attempts);
            let event = event_for(attempts, next_attempt_ms);
            let recorded = event.is_some();
            let index = Arc::clone(&self.outbox);
            let hook_id = envelope_id.to_string();
            let hook = move |scheduled: &Option<Option<(u32, u64)>>| {
                if let Some(Some((_, next_attempt_ms))) = scheduled {
                    index.reschedule(&hook_id, *next_attempt_ms);
                }
            };
            let id = envelope_id.to_string();
            let (outcome, _) = self
                .submit_logged_recorded(
                    recorder,
                    move |tx| {
                        let row = tx.txn().open_table(OUTBOX)?.get(id.as_str())?.map(|v| {
                            let (attempts, _, target, bytes) = v.value();
                            (
                                attempts,
                                target.to_string(),
                                bytes::Bytes::copy_from_slice(bytes),
                            )
                        });
                        // `None`: the count moved (start over); `Some(None)`:
                        // the entry is gone.
                        Ok(match row {
                            None => (Some(None), false),
                            Some((stored, _, _)) if stored.saturating_add(1) != attempts => {
                                (None, false)
                            }
                            Some((_, target, frame)) => {
                                tx.write(Redo::OutboxPut {
                                    id: id.clone(),
                                    attempts,
                                    next_attempt_ms,
                                    target,
                                    frame,
                                })?;
                                (Some(Some((attempts, next_attempt_ms))), recorded)
                            }
                        })
                    },
                    event.into_iter().collect(),
                    Some(hook),
                    super::journal::Persist::Durable,
                )?
                .wait()
                .map_err(journal_error)?;
            if let Some(scheduled) = outcome {
                return Ok(scheduled);
            }
        }
    }

    /// Up to `limit` queued entries (for `peer` only, if given), earliest
    /// due first.
    pub fn outbox_list(&self, peer: Option<&str>, limit: usize) -> Result<Vec<OutboxEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let value = v.value();
            if peer.is_none_or(|p| p == value.2) {
                out.push(outbox_entry(k.value(), value));
            }
        }
        out.sort_by(|a, b| {
            (a.next_attempt_ms, &a.envelope_id).cmp(&(b.next_attempt_ms, &b.envelope_id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Number of queued entries.
    pub fn outbox_len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX)?.len()?)
    }

    // --- dedupe --------------------------------------------------------------

    /// Records that `(sender, envelope_id)` was seen at `seen_ms`. Returns
    /// `true` the first time, `false` for a replay (the stored time is kept).
    pub fn dedupe_insert(&self, sender: &str, envelope_id: &str, seen_ms: u64) -> Result<bool> {
        check_key(sender)?;
        check_key(envelope_id)?;
        let (sender, envelope_id) = (sender.to_string(), envelope_id.to_string());
        self.write_logged(move |tx| {
            let key = (sender.as_str(), envelope_id.as_str());
            if tx.txn().open_table(DEDUPE)?.get(key)?.is_some() {
                return Ok(false);
            }
            tx.write(Redo::DedupePut {
                sender: sender.clone(),
                id: envelope_id.clone(),
                seen_ms,
            })?;
            Ok(true)
        })
    }

    /// Whether `(sender, envelope_id)` was seen (and not yet pruned).
    pub fn dedupe_contains(&self, sender: &str, envelope_id: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(DEDUPE)?
            .get((sender, envelope_id))?
            .is_some())
    }

    /// Forgets at most `limit` entries seen strictly before `cutoff_ms`
    /// (oldest first), with their stored acknowledgements, in one
    /// transaction. Returns how many.
    pub fn dedupe_prune_older_than(&self, cutoff_ms: u64, limit: usize) -> Result<u64> {
        self.write_logged(move |tx| {
            let old: Vec<(u64, String, String)> = tx
                .txn()
                .open_table(DEDUPE_BY_TIME)?
                .range(..(cutoff_ms, "", ""))?
                .take(limit)
                .map(|row| {
                    row.map(|(k, _)| {
                        let (t, s, e) = k.value();
                        (t, s.to_string(), e.to_string())
                    })
                })
                .collect::<std::result::Result<_, _>>()?;
            let count = old.len() as u64;
            for (seen_ms, sender, id) in old {
                tx.write(Redo::DedupeRemove {
                    sender,
                    id,
                    seen_ms,
                })?;
            }
            Ok(count)
        })
    }

    /// The record of idempotency key `key`, if any (read-only).
    pub fn idempotency_get(&self, key: &str) -> Result<Option<IdempotencyRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let row = table.get(key)?;
        Ok(row.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Records `record` under idempotency key `key` unless a record of it
    /// younger than `window_ms` is already there; returns the record kept
    /// (the one already there, or `record`). Durable on return.
    pub fn idempotency_put_if_absent(
        &self,
        key: &str,
        record: IdempotencyRecord,
        window_ms: u64,
    ) -> Result<IdempotencyRecord> {
        check_key(key)?;
        let key = key.to_string();
        self.write_logged(move |tx| {
            if let Some(seen) = idempotency_get_in(tx.txn(), &key)?
                .filter(|seen| seen.live_at(record.created_ms, window_ms))
            {
                return Ok(seen);
            }
            idempotency_put_in(tx, &key, &record)?;
            Ok(record.clone())
        })
    }

    /// Forgets up to `limit` idempotency keys first used before
    /// `cutoff_ms`; how many.
    pub fn idempotency_prune_older_than(&self, cutoff_ms: u64, limit: usize) -> Result<u64> {
        self.write_logged(move |tx| {
            let old: Vec<(u64, String)> = tx
                .txn()
                .open_table(IDEMPOTENCY_BY_TIME)?
                .range(..(cutoff_ms, ""))?
                .take(limit)
                .map(|row| {
                    row.map(|(k, _)| {
                        let (t, key) = k.value();
                        (t, key.to_string())
                    })
                })
                .collect::<std::result::Result<_, _>>()?;
            let count = old.len() as u64;
            for (created_ms, key) in old {
                tx.write(Redo::IdempotencyRemove { key, created_ms })?;
            }
            Ok(count)
        })
    }

    /// Records a processed inbound envelope in one transaction: the dedupe
    /// entry, the message in the inbox (when it was accepted) and the
    /// acknowledgement to send. A retransmission of an envelope already
    /// recorded changes nothing and returns the stored acknowledgement, so
    /// each envelope is processed exactly once across restarts.
    pub fn commit_inbound(
        &self,
        sender: &str,
        envelope_id: &str,
        seen_ms: u64,
        inbox_message: Option<&[u8]>,
        ack: &[u8],
    ) -> Result<InboundCommit> {
        let record = InboundRecord::new(sender, envelope_id, seen_ms, inbox_message, ack)?;
        let hook = self.inbound_commit_hook(sender, inbox_message.map_or(0, |m| m.len() as u64));
        self.write_logged_hooked(hook, move |tx| commit_inbound_in(tx, &record))
    }

    /// The acknowledgement stored for an inbound envelope, if it was
    /// processed and not yet pruned.
    pub fn inbound_ack(&self, sender: &str, envelope_id: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(INBOUND_ACKS)?
            .get((sender, envelope_id))?
            .map(|v| v.value().to_vec()))
    }

    // --- inbox ---------------------------------------------------------------

    /// Appends a message; returns its sequence number (1, 2, …). Numbers
    /// are never reused, even after the newest message is removed (the
    /// floor below which numbers are taken lives in `meta` under `inbox_next_seq`).
    pub fn inbox_push(&self, message: &[u8]) -> Result<u64> {
        let message = bytes::Bytes::copy_from_slice(message);
        let tip = Arc::clone(&self.inbox_tip);
        self.write_logged_hooked(
            move |seq: &u64| raise_inbox_tip(&tip, *seq),
            move |tx: &mut Tx<'_>| push_inbox(tx, message.clone()),
        )
    }

    /// Watches the number of the newest committed inbox message: it
    /// changes once a message is committed (never before, so a reader woken
    /// by it finds the message). Long-polling `inbox` waits on this.
    pub fn inbox_tip(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inbox_tip.subscribe()
    }

    /// The commit hook that announces an inbound record's inbox message
    /// (see [`Store::inbox_tip`]).
    pub(crate) fn inbound_commit_hook(
        &self,
        sender: &str,
        inbox_bytes: u64,
    ) -> impl FnOnce(&InboundCommit) + Send + use<> {
        let tip = Arc::clone(&self.inbox_tip);
        let usage = Arc::clone(&self.inbox_usage);
        let sender = sender.to_string();
        move |outcome: &InboundCommit| {
            if let InboundCommit::Fresh {
                inbox_seq: Some(seq),
            } = outcome
            {
                usage.add(&sender, inbox_bytes);
                raise_inbox_tip(&tip, *seq);
            }
        }
    }

    /// Messages and bytes `sender` has in the inbox now.
    pub fn inbox_usage(&self, sender: &str) -> (u64, u64) {
        self.inbox_usage.get(sender)
    }

    /// Up to `limit` messages with `seq > after_seq`, in order.
    pub fn inbox_list(&self, after_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let inbox = txn.open_table(INBOX)?;
        let mut out = Vec::new();
        for row in inbox.range(after_seq.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Removes message `seq`. Returns whether it existed.
    pub fn inbox_remove(&self, seq: u64) -> Result<bool> {
        self.write_logged(move |tx| remove_inbox(tx, seq))
    }

    /// Removes every message numbered up to `through_seq` in one
    /// transaction; their numbers are never handed out again. Returns how
    /// many were removed.
    pub fn inbox_remove_through(&self, through_seq: u64) -> Result<u64> {
        let usage = Arc::clone(&self.inbox_usage);
        // The senders' quotas are freed once the removal commits.
        let release = move |removed: &(u64, Vec<(String, u64)>)| {
            for (sender, bytes) in &removed.1 {
                usage.sub(sender, *bytes);
            }
        };
        let removed = self.write_logged_hooked(release, move |tx| {
            let rows: Vec<(u64, Option<String>, u64)> = tx
                .txn()
                .open_table(INBOX)?
                .range(..=through_seq)?
                .map(|row| {
                    row.map(|(k, v)| (k.value(), inbox_sender(v.value()), v.value().len() as u64))
                })
                .collect::<std::result::Result<_, _>>()?;
            for (seq, _, _) in &rows {
                tx.write(Redo::InboxRemove { seq: *seq })?;
            }
            if let Some((last, _, _)) = rows.last() {
                raise_inbox_floor_past(tx, *last)?;
            }
            let count = rows.len() as u64;
            let senders = rows
                .into_iter()
                .filter_map(|(_, sender, bytes)| sender.map(|s| (s, bytes)))
                .collect::<Vec<_>>();
            Ok((count, senders))
        })?;
        Ok(removed.0)
    }
}

// ---------------------------------------------------------------------------
// Changes inside a caller's transaction (for combined journal jobs)
// ---------------------------------------------------------------------------

/// A spend sample checked and encoded for [`record_spend_in`].
fn encode_spend(peer: &str, sample: &SpendSample) -> Result<Vec<u8>> {
    check_key(peer)?;
    if !sample.usd.is_finite() {
        return Err(StoreError::InvalidValue("spend usd must be finite"));
    }
    if sample.task_id.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidValue("task id longer than 256 bytes"));
    }
    serde_json::to_vec(sample)
        .map_err(|_| StoreError::InvalidValue("spend sample does not serialize"))
}

/// Appends an encoded spend sample of `peer` inside `txn`, dropping the
/// oldest beyond [`SPEND_RING_CAPACITY`].
fn record_spend_in(txn: &WriteTransaction, peer: &str, ts_ms: u64, bytes: &[u8]) -> Result<()> {
    let mut index = txn.open_table(SPEND_INDEX)?;
    let (mut count, next_seq) = index.get(peer)?.map(|v| v.value()).unwrap_or((0, 0));
    let mut spend = txn.open_table(SPEND)?;
    spend.insert((peer, ts_ms, next_seq), bytes)?;
    count += 1;
    while count > SPEND_RING_CAPACITY {
        let oldest = spend
            .range((peer, 0u64, 0u64)..=(peer, u64::MAX, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| (k.value().1, k.value().2));
        let Some((ts, seq)) = oldest else { break };
        spend.remove((peer, ts, seq))?;
        count -= 1;
    }
    index.insert(peer, (count, next_seq.wrapping_add(1)))?;
    Ok(())
}

/// Reads, modifies and writes back a peer record inside `txn`
/// ([`Store::update_peer`]).
pub(crate) fn update_peer_in(
    txn: &WriteTransaction,
    node_id: &str,
    f: &mut dyn FnMut(&mut PeerRecord),
) -> Result<Option<PeerRecord>> {
    let mut table = txn.open_table(PEERS)?;
    let current: Option<PeerRecord> = match table.get(node_id)? {
        Some(v) => Some(decode_json(v.value(), "peers")?),
        None => None,
    };
    let Some(mut record) = current else {
        return Ok(None);
    };
    f(&mut record);
    if record.node_id() != node_id {
        return Err(StoreError::InvalidValue(
            "update_peer must not change the node id",
        ));
    }
    let bytes = serde_json::to_vec(&record)
        .map_err(|_| StoreError::InvalidValue("peer record does not serialize"))?;
    table.insert(node_id, bytes.as_slice())?;
    Ok(Some(record))
}

/// Refuses an outbox entry whose keys are out of bounds (before queueing
/// it for the writer).
pub(crate) fn check_outbox_entry(entry: &OutboxEntry) -> Result<()> {
    check_key(&entry.envelope_id)?;
    check_key(&entry.target)
}

/// Inserts or replaces an outbox entry inside `tx` (checked first with
/// [`check_outbox_entry`]).
pub(crate) fn outbox_put_in(tx: &mut Tx<'_>, entry: &OutboxEntry) -> Result<()> {
    tx.write(Redo::OutboxPut {
        id: entry.envelope_id.clone(),
        attempts: entry.attempts,
        next_attempt_ms: entry.next_attempt_ms,
        target: entry.target.clone(),
        frame: entry.bytes.clone(),
    })
}

/// What a send's idempotency key stands for: the request it came with
/// (by digest) and the receipt it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the request as the caller sent it.
    pub digest: String,
    /// When the key was first used, ms since the Unix epoch.
    pub created_ms: u64,
    /// The original receipt (JSON), returned to every retry.
    pub receipt: serde_json::Value,
}

impl IdempotencyRecord {
    /// Whether the key still holds at `now_ms`, `window_ms` after its
    /// first use.
    pub fn live_at(&self, now_ms: u64, window_ms: u64) -> bool {
        self.created_ms.saturating_add(window_ms) > now_ms
    }
}

/// The record of `key` inside `txn`, if any.
pub(crate) fn idempotency_get_in(
    txn: &WriteTransaction,
    key: &str,
) -> Result<Option<IdempotencyRecord>> {
    let table = txn.open_table(IDEMPOTENCY)?;
    let row = table.get(key)?;
    Ok(row.and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Records `key` inside `tx` (replacing an expired record of it).
pub(crate) fn idempotency_put_in(
    tx: &mut Tx<'_>,
    key: &str,
    record: &IdempotencyRecord,
) -> Result<()> {
    let replaced_ms = idempotency_get_in(tx.txn(), key)?.map(|old| old.created_ms);
    let bytes = serde_json::to_vec(record).expect("idempotency records serialise");
    tx.write(Redo::IdempotencyPut {
        key: key.to_string(),
        created_ms: record.created_ms,
        record: bytes,
        replaced_ms,
    })
}

/// Removes an outbox entry inside `tx`; whether it existed.
pub(crate) fn outbox_remove_in(tx: &mut Tx<'_>, envelope_id: &str) -> Result<bool> {
    let existed = tx.txn().open_table(OUTBOX)?.get(envelope_id)?.is_some();
    if existed {
        tx.write(Redo::OutboxRemove {
            id: envelope_id.to_string(),
        })?;
    }
    Ok(existed)
}

/// What [`Store::remove_peer`] removed with a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedPeer {
    /// Ids of the outbox entries for the peer that were dropped.
    pub dropped_envelopes: Vec<String>,
}

/// What removing a peer inside a transaction found.
pub(crate) enum PeerRemoval {
    /// The peer is not known.
    Unknown,
    /// Its queued envelopes are not the ones expected: nothing changed.
    Changed,
    /// Removed, with what went with it.
    Removed(RemovedPeer),
}

impl PeerRemoval {
    fn removed(self) -> Option<RemovedPeer> {
        match self {
            PeerRemoval::Removed(removed) => Some(removed),
            PeerRemoval::Unknown | PeerRemoval::Changed => None,
        }
    }
}

/// Ids of the outbox entries queued for `node_id` in `outbox`.
fn outbox_ids_in(
    outbox: &impl ReadableTable<&'static str, (u32, u64, &'static str, &'static [u8])>,
    node_id: &str,
) -> Result<Vec<String>> {
    outbox
        .iter()?
        .filter_map(|row| match row {
            Ok((k, v)) if v.value().2 == node_id => Some(Ok(k.value().to_string())),
            Ok(_) => None,
            Err(e) => Some(Err(e.into())),
        })
        .collect()
}

/// Removes `node_id` inside `txn`: its record, its queued envelopes (they
/// were gated and scanned for the peer as it was, and must not reach
/// whoever holds this node id next), its spend samples; puts it on the
/// removed list. With `expected`, nothing changes unless the queued
/// envelopes are exactly those.
fn remove_peer_in(
    txn: &WriteTransaction,
    node_id: &str,
    now_ms: u64,
    expected: Option<&[String]>,
) -> Result<PeerRemoval> {
    if txn.open_table(PEERS)?.get(node_id)?.is_none() {
        return Ok(PeerRemoval::Unknown);
    }
    let mut outbox = txn.open_table(OUTBOX)?;
    let dropped = outbox_ids_in(&outbox, node_id)?;
    if expected.is_some_and(|expected| expected != dropped.as_slice()) {
        return Ok(PeerRemoval::Changed);
    }
    for id in &dropped {
        outbox.remove(id.as_str())?;
    }
    drop(outbox);
    txn.open_table(PEERS)?.remove(node_id)?;
    txn.open_table(REMOVED_PEERS)?.insert(node_id, now_ms)?;
    let mut spend = txn.open_table(SPEND)?;
    let keys: Vec<(u64, u64)> = spend
        .range((node_id, 0u64, 0u64)..=(node_id, u64::MAX, u64::MAX))?
        .map(|row| row.map(|(k, _)| (k.value().1, k.value().2)))
        .collect::<std::result::Result<_, _>>()?;
    for (ts, seq) in keys {
        spend.remove((node_id, ts, seq))?;
    }
    txn.open_table(SPEND_INDEX)?.remove(node_id)?;
    Ok(PeerRemoval::Removed(RemovedPeer {
        dropped_envelopes: dropped,
    }))
}

/// What [`commit_inbound_in`] records (owned, so a journal job can keep it).
#[derive(Debug, Clone)]
pub(crate) struct InboundRecord {
    sender: String,
    envelope_id: String,
    seen_ms: u64,
    inbox_message: Option<bytes::Bytes>,
    ack: Vec<u8>,
}

impl InboundRecord {
    /// Checks the keys and copies the values.
    pub(crate) fn new(
        sender: &str,
        envelope_id: &str,
        seen_ms: u64,
        inbox_message: Option<&[u8]>,
        ack: &[u8],
    ) -> Result<InboundRecord> {
        check_key(sender)?;
        check_key(envelope_id)?;
        Ok(InboundRecord {
            sender: sender.to_string(),
            envelope_id: envelope_id.to_string(),
            seen_ms,
            inbox_message: inbox_message.map(bytes::Bytes::copy_from_slice),
            ack: ack.to_vec(),
        })
    }
}

/// [`Store::commit_inbound`] inside `tx`.
pub(crate) fn commit_inbound_in(tx: &mut Tx<'_>, record: &InboundRecord) -> Result<InboundCommit> {
    let key = (record.sender.as_str(), record.envelope_id.as_str());
    if tx.txn().open_table(DEDUPE)?.get(key)?.is_some() {
        let stored = tx
            .txn()
            .open_table(INBOUND_ACKS)?
            .get(key)?
            .map(|v| v.value().to_vec());
        return Ok(InboundCommit::Duplicate { ack: stored });
    }
    tx.write(Redo::DedupePut {
        sender: record.sender.clone(),
        id: record.envelope_id.clone(),
        seen_ms: record.seen_ms,
    })?;
    tx.write(Redo::AckPut {
        sender: record.sender.clone(),
        id: record.envelope_id.clone(),
        ack: record.ack.clone(),
    })?;
    let inbox_seq = match &record.inbox_message {
        Some(message) => Some(push_inbox(tx, message.clone())?),
        None => None,
    };
    Ok(InboundCommit::Fresh { inbox_seq })
}

/// Begins a write transaction that commits with `Durability::Immediate`.
pub(crate) fn begin_durable_write(db: &Database) -> Result<WriteTransaction> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

fn open_database(path: &Path) -> Result<Database> {
    // The store holds inbox payloads, outbox frames and the audit log:
    // create it 0600 whatever the process umask (redb would use 0666 minus
    // the umask). redb initialises an empty file like a missing one.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            action: "creating",
            path: path.to_path_buf(),
            source,
        })?;
    let mut builder = Database::builder();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    // redb reports damage as an error with integrity checking on; the
    // catch_unwind is a second line of defence for a file damaged in a way
    // redb does not anticipate (it would otherwise panic in this thread).
    let opened = catch_unwind(AssertUnwindSafe(|| builder.create(path)));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(map_open_error(path, e)),
        Err(_) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "redb panicked while opening the file".into(),
        }),
    }
}

fn map_open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
        DatabaseError::Storage(StorageError::Corrupted(detail)) => {
            StoreError::Corrupt { path, detail }
        }
        DatabaseError::UpgradeRequired(v) => StoreError::Corrupt {
            path,
            detail: format!("redb file format version {v} is not supported"),
        },
        DatabaseError::Storage(StorageError::Io(source))
            if matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Corrupt {
                path,
                detail: source.to_string(),
            }
        }
        DatabaseError::Storage(StorageError::Io(source)) => StoreError::Io {
            action: "opening",
            path,
            source,
        },
        other => StoreError::Db(redb::Error::from(other)),
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        Err(StoreError::InvalidValue("id must be 1-256 bytes"))
    } else {
        Ok(())
    }
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8], table: &'static str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Decode { table })
}

fn outbox_entry(id: &str, (attempts, next, target, bytes): (u32, u64, &str, &[u8])) -> OutboxEntry {
    OutboxEntry {
        envelope_id: id.to_string(),
        target: target.to_string(),
        bytes: bytes::Bytes::copy_from_slice(bytes),
        attempts,
        next_attempt_ms: next,
    }
}

// ---------------------------------------------------------------------------
// Single-daemon lock
// ---------------------------------------------------------------------------

/// What [`Store::commit_inbound`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCommit {
    /// First sight: recorded (with its inbox sequence number when the
    /// message was accepted into the inbox).
    Fresh {
        /// Inbox sequence number, if stored in the inbox.
        inbox_seq: Option<u64>,
    },
    /// Already processed: nothing changed; this is the acknowledgement
    /// stored the first time (none if it was pruned).
    Duplicate {
        /// The stored acknowledgement.
        ack: Option<Vec<u8>>,
    },
}

/// Appends to the inbox inside `txn`; sequence numbers are never reused.
///
/// The next number is the larger of the newest key + 1 and the floor kept
/// in `meta` (`inbox_next_seq`), which only a removal of the newest
/// message has to raise; pushing does not write `meta` (one B-tree update
/// less per inbound message).
fn push_inbox(tx: &mut Tx<'_>, message: bytes::Bytes) -> Result<u64> {
    let floor = inbox_floor(tx.txn())?;
    let after_last = tx
        .txn()
        .open_table(INBOX)?
        .last()?
        .map_or(1, |(k, _)| k.value() + 1);
    let seq = floor.max(after_last);
    tx.write(Redo::InboxPut { seq, message })?;
    Ok(seq)
}

/// Raises the announced inbox tip to `seq` (hooks run in commit order,
/// but a tip never moves back).
fn raise_inbox_tip(tip: &tokio::sync::watch::Sender<u64>, seq: u64) {
    tip.send_if_modified(|current| {
        let raised = seq > *current;
        if raised {
            *current = seq;
        }
        raised
    });
}

/// The number of the newest inbox message (0 when the inbox is empty).
fn last_inbox_seq(db: &Database) -> Result<u64> {
    let txn = db.begin_read()?;
    let inbox = txn.open_table(INBOX)?;
    Ok(inbox.last()?.map_or(0, |(k, _)| k.value()))
}

/// The lowest inbox number not yet handed out as far as removals know.
fn inbox_floor(txn: &WriteTransaction) -> Result<u64> {
    let meta = txn.open_table(META)?;
    let stored = match meta.get(INBOX_NEXT_KEY)? {
        Some(v) => decode_u64(v.value()).ok_or(StoreError::Decode { table: "meta" })?,
        None => 1,
    };
    Ok(stored)
}

/// Removes inbox message `seq` inside `txn`, raising the floor past it so
/// its number is never handed out again.
fn remove_inbox(tx: &mut Tx<'_>, seq: u64) -> Result<bool> {
    let existed = tx.txn().open_table(INBOX)?.get(seq)?.is_some();
    if existed {
        tx.write(Redo::InboxRemove { seq })?;
        raise_inbox_floor_past(tx, seq)?;
    }
    Ok(existed)
}

/// Makes sure inbox number `seq` (removed) is never handed out again, even
/// when it was the newest.
fn raise_inbox_floor_past(tx: &mut Tx<'_>, seq: u64) -> Result<()> {
    if seq >= inbox_floor(tx.txn())? {
        tx.write(Redo::MetaPut {
            key: INBOX_NEXT_KEY.to_string(),
            value: (seq + 1).to_be_bytes().to_vec(),
        })?;
    }
    Ok(())
}

/// Failure to take the daemon lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "another agentfed daemon ({holder}) holds {path}; stop it before starting a new one",
        holder = match pid { Some(p) => format!("pid {p}"), None => "pid unknown".to_string() },
        path = path.display()
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as written in the file, if readable.
        pid: Option<u32>,
    },
    /// Filesystem failure.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
}

/// An exclusive `flock` on `home/daemon.lock`, which holds the holder's pid.
///
/// The kernel releases the lock when the holder's file descriptor closes,
/// including when the process crashes, so a stale lock file never blocks a
/// restart. Dropping the guard releases the lock.
#[derive(Debug)]
pub struct HomeLock {
    file: File,
    path: PathBuf,
}

impl HomeLock {
    /// Takes the lock without waiting, writing this process's pid into the
    /// file; fails with [`LockError::Held`] naming the holder's pid.
    pub fn acquire(home: &Path) -> Result<HomeLock, LockError> {
        let path = home.join(LOCK_FILE);
        let io_err = |action| {
            let path = path.clone();
            move |source| LockError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = read_pid(&mut file);
                return Err(LockError::Held { path, pid });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking")(e)),
        }
        file.set_len(0).map_err(io_err("truncating"))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err("seeking"))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("writing"))?;
        file.sync_all().map_err(io_err("syncing"))?;
        Ok(HomeLock { file, path })
    }

    /// The lock file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HomeLock {
    fn drop(&mut self) {
        // Best effort: clear the pid so a reader never sees a stale one;
        // the lock itself is released when `file` closes.
        let _ = self.file.set_len(0);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut buf = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut buf).ok()?;
    buf.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, ManifestParams, NodeId, SignedManifest};
    use crate::model::{BreakerState, TrustLevel};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// Records under the standard compliance mode (for changes that make none).
    const PLAIN: Recorder = Recorder {
        compliance: crate::audit::ComplianceMode::Standard,
    };

    fn manifest(id: &str) -> std::result::Result<SignedManifest, Box<dyn std::error::Error>> {
        let identity = Identity::generate(&NodeId::parse(id)?, "wss://192.0.2.5:9100")?;
        let ip = identity.mesh_ip(&"198.18.0.0/15".parse()?, &|_| false)?;
        Ok(identity.signed_manifest(&ManifestParams::new(ip), 1)?)
    }

    fn sample(ts_ms: u64, tokens: i64, usd: f64, success: bool) -> SpendSample {
        SpendSample {
            ts_ms,
            task_id: format!("task-{ts_ms}"),
            tokens,
            usd,
            success,
        }
    }

    #[test]
    fn open_creates_and_reopens_with_schema_version() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        assert_eq!(store.schema_version()?, SCHEMA_VERSION);
        drop(store);
        let store = Store::open_in_home(dir.path())?;
        assert_eq!(store.schema_version()?, SCHEMA_VERSION);
        Ok(())
    }

    #[test]
    fn newer_schema_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(STATE_FILE);
        drop(Store::open(&path)?);
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert(SCHEMA_KEY, (SCHEMA_VERSION + 1).to_be_bytes().as_slice())?;
            txn.commit()?;
        }
        let err = Store::open(&path).err();
        assert!(
            matches!(err, Some(StoreError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("newer") && msg.contains("upgrade"), "{msg}");
        Ok(())
    }

    #[test]
    fn non_redb_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"this is a text file, not a database\n".repeat(200))?;
        let err = Store::open(&path).err();
        assert!(matches!(err, Some(StoreError::Corrupt { .. })), "{err:?}");
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("state.redb") && msg.contains("not a readable"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn corrupted_redb_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(STATE_FILE);
        {
            let store = Store::open(&path)?;
            for i in 0..200u64 {
                store.inbox_push(
                    format!("message number {i} with some padding to fill pages").as_bytes(),
                )?;
            }
        }
        // Scribble over everything after the 4 KiB header region.
        let mut bytes = std::fs::read(&path)?;
        for b in bytes.iter_mut().skip(4096) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes)?;
        let err = Store::open(&path).err();
        assert!(matches!(err, Some(StoreError::Corrupt { .. })), "{err:?}");

        // A truncated header is refused too.
        std::fs::write(&path, &bytes[..100])?;
        let err = Store::open(&path).err();
        assert!(matches!(err, Some(StoreError::Corrupt { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn peers_round_trip_update_and_remove() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let mut alpha = PeerRecord::new(manifest("alpha")?, 10);
        alpha.trust_level = TrustLevel::Verified;
        alpha.metrics.record_threat(10);
        store.upsert_peer(&alpha)?;
        store.upsert_peer(&PeerRecord::new(manifest("beta")?, 20))?;
        assert_eq!(store.get_peer("alpha")?, Some(alpha.clone()));
        assert_eq!(store.get_peer("gamma")?, None);
        let ids: Vec<String> = store
            .list_peers()?
            .iter()
            .map(|p| p.node_id().to_string())
            .collect();
        assert_eq!(ids, ["alpha", "beta"]);

        let updated = store.update_peer("alpha", |p| {
            p.breaker.state = BreakerState::Suspended;
            p.breaker.reason = Some("cost".into());
        })?;
        assert_eq!(
            updated.map(|p| p.breaker.state),
            Some(BreakerState::Suspended)
        );
        assert_eq!(
            store.get_peer("alpha")?.map(|p| p.breaker.state),
            Some(BreakerState::Suspended)
        );
        assert_eq!(store.update_peer("gamma", |_| {})?, None);

        let bad = store.update_peer("beta", |p| p.manifest.manifest.node_id = "other".into());
        assert!(matches!(bad, Err(StoreError::InvalidValue(_))));
        assert_eq!(
            store.get_peer("beta")?.map(|p| p.node_id().to_string()),
            Some("beta".into())
        );

        store.record_spend("alpha", &sample(1, 5, 0.1, true))?;
        assert!(store.remove_peer("alpha", 5)?.is_some());
        assert!(store.remove_peer("alpha", 6)?.is_none());
        assert_eq!(store.removed_at("alpha")?, Some(5));
        assert!(store.clear_removed("alpha")?);
        assert_eq!(store.removed_at("alpha")?, None);
        assert_eq!(store.get_peer("alpha")?, None);
        assert_eq!(store.spend_sample_count("alpha")?, 0);
        assert!(store.spend_samples("alpha", 0)?.is_empty());
        Ok(())
    }

    #[test]
    fn cached_peer_reads_never_go_back_in_time_under_concurrent_updates() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        store.upsert_peer(&PeerRecord::new(manifest("alpha")?, 10))?;
        let (writers, updates) = (4u64, 50u64);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| -> TestResult {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        let mut last = 0;
                        while !done.load(Ordering::Acquire) {
                            let seen = store
                                .get_peer("alpha")
                                .map_err(|e| e.to_string())?
                                .map_or(0, |p| p.metrics.interactions);
                            if seen < last {
                                return Err(format!("read {seen} after {last}"));
                            }
                            last = seen;
                        }
                        Ok(())
                    })
                })
                .collect();
            let writers: Vec<_> = (0..writers)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..updates {
                            store.update_peer("alpha", |p| p.metrics.interactions += 1)?;
                        }
                        Ok::<(), StoreError>(())
                    })
                })
                .collect();
            for w in writers {
                w.join().expect("writer thread")?;
            }
            done.store(true, Ordering::Release);
            for r in readers {
                r.join().expect("reader thread")?;
            }
            Ok(())
        })?;
        let interactions = store.get_peer("alpha")?.map(|p| p.metrics.interactions);
        assert_eq!(interactions, Some(writers * updates));
        Ok(())
    }

    #[test]
    fn state_survives_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open_in_home(dir.path())?;
            store.upsert_peer(&PeerRecord::new(manifest("alpha")?, 10))?;
            store.record_spend("alpha", &sample(5, 7, 0.5, false))?;
            store.dedupe_insert("alpha", "env-1", 100)?;
            store.outbox_put(&OutboxEntry {
                envelope_id: "env-9".into(),
                target: "alpha".into(),
                bytes: vec![1, 2, 3].into(),
                attempts: 0,
                next_attempt_ms: 50,
            })?;
            store.inbox_push(b"hello")?;
        }
        let store = Store::open_in_home(dir.path())?;
        assert!(store.get_peer("alpha")?.is_some());
        assert_eq!(store.spend_window("alpha", 0, 0)?.failures, 1);
        assert!(store.dedupe_contains("alpha", "env-1")?);
        assert_eq!(
            store.outbox_get("env-9")?.map(|e| e.bytes.to_vec()),
            Some(vec![1, 2, 3])
        );
        assert_eq!(store.inbox_list(0, 10)?, vec![(1, b"hello".to_vec())]);
        Ok(())
    }

    #[test]
    fn spend_window_clamps_negatives_and_filters_by_time() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        store.record_spend("p", &sample(100, 1000, 1.5, true))?;
        store.record_spend("p", &sample(200, -500, -3.0, false))?;
        store.record_spend("p", &sample(300, 10, 0.25, false))?;
        store.record_spend("q", &sample(300, 99, 9.0, false))?;
        let all = store.spend_window("p", 0, 0)?;
        assert_eq!(all.samples, 3);
        assert_eq!(all.failures, 2);
        assert_eq!(all.tokens, 1010);
        assert!((all.usd - 1.75).abs() < 1e-12);
        // Counting from a report sequence number (an operator's
        // reactivation) leaves out the earlier reports.
        let next = store.spend_next_seq("p")?;
        assert_eq!(next, 3);
        assert_eq!(store.spend_window("p", 0, 2)?.samples, 1);
        assert_eq!(store.spend_window("p", 0, next)?.samples, 0);
        let recent = store.spend_window("p", 200, 0)?;
        assert_eq!((recent.samples, recent.failures, recent.tokens), (2, 2, 10));
        assert!((recent.usd - 0.25).abs() < 1e-12);
        // Raw values are kept as reported.
        assert_eq!(store.spend_samples("p", 200)?[0].tokens, -500);
        assert!(matches!(
            store.record_spend("p", &sample(1, 1, f64::NAN, true)),
            Err(StoreError::InvalidValue(_))
        ));
        assert!(matches!(
            store.record_spend("p", &sample(1, 1, f64::INFINITY, true)),
            Err(StoreError::InvalidValue(_))
        ));
        Ok(())
    }

    #[test]
    fn spend_ring_drops_oldest_beyond_capacity() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let total = SPEND_RING_CAPACITY + 5;
        // Batch through the public API would take 10k commits; write the
        // first CAPACITY rows through one transaction with the same layout.
        store.write(|txn| {
            let mut spend = txn.open_table(SPEND)?;
            for i in 0..SPEND_RING_CAPACITY {
                let bytes = serde_json::to_vec(&sample(i, 1, 0.0, true))
                    .map_err(|_| StoreError::InvalidValue("sample"))?;
                spend.insert(("p", i, i), bytes.as_slice())?;
            }
            txn.open_table(SPEND_INDEX)?
                .insert("p", (SPEND_RING_CAPACITY, SPEND_RING_CAPACITY))?;
            Ok(())
        })?;
        for i in SPEND_RING_CAPACITY..total {
            store.record_spend("p", &sample(i, 1, 0.0, true))?;
        }
        assert_eq!(store.spend_sample_count("p")?, SPEND_RING_CAPACITY);
        let samples = store.spend_samples("p", 0)?;
        assert_eq!(samples.len() as u64, SPEND_RING_CAPACITY);
        assert_eq!(samples.first().map(|s| s.ts_ms), Some(5));
        assert_eq!(samples.last().map(|s| s.ts_ms), Some(total - 1));
        Ok(())
    }

    /// `(id, next_attempt_ms, target)` of an outbox entry.
    type OutboxRow = (String, u64, String);

    /// Every outbox row, in id order.
    fn outbox_rows(store: &Store) -> Result<Vec<OutboxRow>, Box<dyn std::error::Error>> {
        let txn = store.db.begin_read()?;
        let mut rows = Vec::new();
        for row in txn.open_table(OUTBOX)?.iter()? {
            let (k, v) = row?;
            let (_, due, target, _) = v.value();
            rows.push((k.value().to_string(), due, target.to_string()));
        }
        Ok(rows)
    }

    #[test]
    fn the_outbox_index_follows_the_table_and_is_rebuilt_on_open() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open_in_home(dir.path())?;
            for (id, next, target) in [
                ("e1", 300, "beta"),
                ("e2", 100, "gamma"),
                ("e3", 900, "beta"),
            ] {
                store.outbox_put(&OutboxEntry {
                    envelope_id: id.into(),
                    target: target.into(),
                    bytes: id.as_bytes().to_vec().into(),
                    attempts: 0,
                    next_attempt_ms: next,
                })?;
            }
            assert_eq!(store.outbox.snapshot(), outbox_rows(&store)?);
            assert_eq!(
                store.outbox_reschedule_recorded(PLAIN, "e2", |_| 1000, |_, _| None)?,
                Some((1, 1000))
            );
            assert!(store.outbox_remove("e1")?);
            assert_eq!(
                store.outbox_reschedule_recorded(PLAIN, "e1", |_| 5, |_, _| None)?,
                None
            );
            assert!(!store.outbox_remove("e1")?);
            let rows = outbox_rows(&store)?;
            assert_eq!(rows.len(), 2);
            assert_eq!(store.outbox.snapshot(), rows);
            let ids = |due: Vec<OutboxEntry>| -> Vec<String> {
                due.into_iter().map(|e| e.envelope_id).collect()
            };
            assert_eq!(ids(store.outbox_due(1000, 10)?), ["e3", "e2"]);
            assert_eq!(
                ids(store.outbox_due_where(1000, 10, |target| target == "gamma", |_| true)?),
                ["e2"]
            );
            assert_eq!(
                ids(store.outbox_due_where(1000, 10, |_| true, |id| id != "e3")?),
                ["e2"]
            );
            assert_eq!(
                ids(store.outbox_due_where(1000, 1, |_| true, |_| true)?),
                ["e3"]
            );
            assert!(store.outbox_due(99, 10)?.is_empty());
        }
        let store = Store::open_in_home(dir.path())?;
        assert_eq!(store.outbox.snapshot(), outbox_rows(&store)?);
        assert_eq!(store.outbox.snapshot().len(), 2);
        Ok(())
    }

    #[test]
    fn outbox_schedule_and_ack() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        for (id, next) in [("e1", 300), ("e2", 100), ("e3", 900)] {
            store.outbox_put(&OutboxEntry {
                envelope_id: id.into(),
                target: "beta".into(),
                bytes: id.as_bytes().to_vec().into(),
                attempts: 0,
                next_attempt_ms: next,
            })?;
        }
        let due: Vec<String> = store
            .outbox_due(500, 10)?
            .into_iter()
            .map(|e| e.envelope_id)
            .collect();
        assert_eq!(due, ["e2", "e1"]);
        assert_eq!(store.outbox_due(500, 1)?.len(), 1);
        assert_eq!(
            store.outbox_reschedule_recorded(PLAIN, "e2", |_| 1000, |_, _| None)?,
            Some((1, 1000))
        );
        assert_eq!(
            store.outbox_reschedule_recorded(PLAIN, "e2", |n| 1000 * u64::from(n), |_, _| None)?,
            Some((2, 2000))
        );
        assert_eq!(
            store.outbox_reschedule_recorded(PLAIN, "nope", |_| 1, |_, _| None)?,
            None
        );
        let e2 = store.outbox_get("e2")?;
        assert_eq!(
            e2.as_ref().map(|e| (e.attempts, e.next_attempt_ms)),
            Some((2, 2000))
        );
        assert_eq!(e2.map(|e| e.bytes.to_vec()), Some(b"e2".to_vec()));
        assert!(store.outbox_remove("e1")?);
        assert!(!store.outbox_remove("e1")?);
        assert_eq!(store.outbox_len()?, 2);
        Ok(())
    }

    #[test]
    fn dedupe_detects_replays_and_prunes_by_age() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        assert!(store.dedupe_insert("alpha", "e1", 100)?);
        assert!(!store.dedupe_insert("alpha", "e1", 150)?);
        assert!(store.dedupe_insert("beta", "e1", 200)?);
        assert!(store.dedupe_insert("alpha", "e2", 300)?);
        assert_eq!(store.dedupe_prune_older_than(200, 100)?, 1);
        assert!(!store.dedupe_contains("alpha", "e1")?);
        assert!(store.dedupe_contains("beta", "e1")?);
        assert!(store.dedupe_contains("alpha", "e2")?);
        // At most `limit` per call, oldest first.
        assert_eq!(store.dedupe_prune_older_than(1_000, 1)?, 1);
        assert!(!store.dedupe_contains("beta", "e1")?);
        assert!(store.dedupe_contains("alpha", "e2")?);
        assert_eq!(store.dedupe_prune_older_than(1_000, 100)?, 1);
        assert_eq!(store.dedupe_prune_older_than(1_000, 100)?, 0);
        assert!(store.dedupe_insert("alpha", "e1", 1_000)?);
        assert!(matches!(
            store.dedupe_insert("", "e", 1),
            Err(StoreError::InvalidValue(_))
        ));
        assert!(matches!(
            store.dedupe_insert("a", &"x".repeat(300), 1),
            Err(StoreError::InvalidValue(_))
        ));
        Ok(())
    }

    #[test]
    fn inbox_sequence() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let tip = store.inbox_tip();
        assert_eq!(*tip.borrow(), 0);
        assert_eq!(store.inbox_push(b"a")?, 1);
        assert_eq!(store.inbox_push(b"b")?, 2);
        assert_eq!(store.inbox_push(b"c")?, 3);
        // Announced once committed (before the push returns).
        assert!(tip.has_changed()?);
        assert_eq!(*tip.borrow(), 3);
        assert_eq!(store.inbox_list(1, 1)?, vec![(2, b"b".to_vec())]);
        assert!(store.inbox_remove(2)?);
        let seqs: Vec<u64> = store
            .inbox_list(0, 10)?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(store.inbox_push(b"d")?, 4);
        // Removing the newest message does not make its number reusable.
        assert!(store.inbox_remove(4)?);
        assert_eq!(store.inbox_push(b"e")?, 5);
        drop((tip, store));
        let store = Store::open_in_home(dir.path())?;
        // The tip starts at the newest message kept.
        assert_eq!(*store.inbox_tip().borrow(), 5);
        assert_eq!(store.inbox_push(b"f")?, 6);
        // Removing through a number clears everything up to it, and the
        // numbers stay used even when the newest went too.
        assert_eq!(store.inbox_remove_through(5)?, 3);
        let seqs: Vec<u64> = store
            .inbox_list(0, 10)?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, [6]);
        assert_eq!(store.inbox_remove_through(100)?, 1);
        assert_eq!(store.inbox_remove_through(100)?, 0);
        assert!(store.inbox_list(0, 10)?.is_empty());
        assert_eq!(store.inbox_push(b"g")?, 7);
        Ok(())
    }

    #[test]
    fn second_open_of_same_file_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let _first = Store::open_in_home(dir.path())?;
        let err = Store::open_in_home(dir.path()).err();
        assert!(
            matches!(err, Some(StoreError::AlreadyOpen { .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn second_lock_is_refused_naming_the_pid() -> TestResult {
        let dir = tempfile::tempdir()?;
        let lock = HomeLock::acquire(dir.path())?;
        let content = std::fs::read_to_string(lock.path())?;
        assert_eq!(content.trim(), std::process::id().to_string());
        let err = HomeLock::acquire(dir.path()).err();
        assert!(
            matches!(err, Some(LockError::Held { pid: Some(p), .. }) if p == std::process::id()),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("daemon.lock"), "{msg}");
        drop(lock);
        let again = HomeLock::acquire(dir.path())?;
        drop(again);
        Ok(())
    }

    #[test]
    fn lock_held_by_another_process_names_it_and_is_freed_when_it_dies() -> TestResult {
        if !Path::new("/usr/bin/flock").exists() && !Path::new("/bin/flock").exists() {
            eprintln!("skipping: util-linux flock(1) not installed");
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOCK_FILE);
        // A separate process takes the same flock and writes its pid, as a
        // daemon would; `exec sleep` keeps the locked descriptor open.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "exec 9>>\"$1\"; flock -x 9; echo $$ > \"$1\"; exec sleep 60",
                "sh",
            ])
            .arg(&path)
            .spawn()?;
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default().trim() != pid.to_string() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("lock holder did not start".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let err = HomeLock::acquire(dir.path()).err();
        let held = matches!(err, Some(LockError::Held { pid: Some(p), .. }) if p == pid);
        // Crash the holder: the kernel drops its flock with its descriptors.
        child.kill()?;
        child.wait()?;
        assert!(held, "{err:?}");
        let lock = HomeLock::acquire(dir.path())?;
        let content = std::fs::read_to_string(lock.path())?;
        assert_eq!(content.trim(), std::process::id().to_string());
        Ok(())
    }

    #[test]
    fn stale_lock_file_from_dead_holder_does_not_block() -> TestResult {
        let dir = tempfile::tempdir()?;
        // A lock file left behind by a crashed daemon: content but no flock.
        std::fs::write(dir.path().join(LOCK_FILE), "999999\n")?;
        let lock = HomeLock::acquire(dir.path())?;
        let content = std::fs::read_to_string(lock.path())?;
        assert_eq!(content.trim(), std::process::id().to_string());
        Ok(())
    }

    fn summaries(
        log: &crate::audit::AuditLog,
    ) -> std::result::Result<Vec<String>, Box<dyn std::error::Error>> {
        Ok(log
            .query(&crate::audit::AuditQuery::default())?
            .into_iter()
            .map(|r| r.summary)
            .collect())
    }

    fn note(summary: &str) -> AuditEvent {
        AuditEvent::new(crate::audit::EventType::OperatorAction, summary.to_string())
    }

    #[test]
    fn a_reschedule_commits_with_the_timeout_record_it_makes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let log = crate::audit::AuditLog::open(&store, crate::audit::AuditConfig::default())?;
        store.outbox_put(&OutboxEntry {
            envelope_id: "env-1".into(),
            target: "alpha".into(),
            bytes: bytes::Bytes::from_static(b"signed"),
            attempts: 0,
            next_attempt_ms: 0,
        })?;
        // A record at every power of two, made from the new count.
        let timeout = |attempts: u32, next: u64| {
            attempts
                .is_power_of_two()
                .then(|| note(&format!("attempt {attempts}, next at {next}")))
        };
        for expected in 1..=3u32 {
            let before = store.commit_stats();
            let scheduled = store.outbox_reschedule_recorded(
                log.recorder(),
                "env-1",
                |n| 100 * u64::from(n),
                timeout,
            )?;
            assert_eq!(scheduled, Some((expected, 100 * u64::from(expected))));
            assert_eq!(store.commit_stats().jobs - before.jobs, 1);
        }
        assert_eq!(store.outbox_get("env-1")?.map(|e| e.attempts), Some(3));
        assert_eq!(
            summaries(&log)?,
            vec![
                "attempt 2, next at 200".to_string(),
                "attempt 1, next at 100".to_string()
            ]
        );
        // No longer queued: nothing written, nothing recorded.
        assert!(store.outbox_remove("env-1")?);
        assert_eq!(
            store.outbox_reschedule_recorded(log.recorder(), "env-1", |_| 1, timeout)?,
            None
        );
        assert_eq!(log.len()?, 2);
        assert_eq!(log.verify()?, 2);
        Ok(())
    }
}
