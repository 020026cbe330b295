//! Tamper-evident, append-only audit log in the state store's `audit` table.
//!
//! Records, their hash chain, compliance filtering and bounds are
//! defined in the storage layer's `record` module (re-exported here).
//!
//! [`AuditLog::verify`] walks the chain and names the first bad record.
//!
//! # Pruning
//!
//! [`AuditLog::prune`] removes a prefix of the chain (the records before a
//! time). In the same commit it writes `audit_anchor` in `meta` =
//! `u64be(last removed seq) || its hash`, and appends an `audit_pruned`
//! checkpoint record whose details name that seq and hash. Verification
//! then starts from the anchor (first seq = anchor seq + 1, first
//! `prev_hash` = anchor hash) instead of genesis, and checks that the
//! newest `audit_pruned` record names the anchor, so the anchor, which is
//! outside the chain, cannot be moved by hand unnoticed.
//! The chain is unkeyed: someone able to rewrite `state.redb` *and*
//! recompute every later hash and the head is not detected (anchoring the
//! head, e.g. in the signed witness chain, closes that).
//!
//! # Group commit
//!
//! Records are written by the store's writer thread ([`crate::journal`]).
//! [`AuditLog::append`] queues the event and blocks until the record is
//! durably committed; the writer chains and writes everything queued —
//! audit records and the state changes of other callers — in one redb
//! write transaction with `Durability::Immediate`. An append that returns
//! `Ok` is on disk; if a commit fails, every waiter in that batch gets the
//! error and the chain head does not advance.
//! [`AuditLog::submit`] queues without waiting and returns an
//! [`AppendTicket`], so one thread can keep many appends in flight.
//! A state change commits with its records through the store
//! (`Store::submit_recorded`, crate-internal, with `AuditLog::recorder`),
//! so the two cannot disagree after a crash.
//!

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::journal::{Journal, Persist, Ticket};
pub use super::record::*;
use super::store::Store;
use super::tables::{AUDIT, META, StoreError};
use crate::clock::Clock;

// ---------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------

/// Audit log settings.
#[derive(Clone, Default)]
pub struct AuditConfig {
    /// Compliance filtering.
    pub compliance: ComplianceMode,
    /// Where record timestamps come from (the node's clock, so a daemon
    /// on a fake clock stamps its records with it); the system clock when
    /// `None`. Timestamps never go backwards along the chain either way.
    pub clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig")
            .field("compliance", &self.compliance)
            .field("clock", &self.clock.as_ref().map(|_| "node clock"))
            .finish()
    }
}

/// A queued append; [`AppendTicket::wait`] blocks until it is committed.
pub struct AppendTicket {
    ticket: Ticket,
}

impl fmt::Debug for AppendTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendTicket").finish_non_exhaustive()
    }
}

impl AppendTicket {
    /// Blocks until the record is durably committed (or the commit failed).
    pub fn wait(self) -> Result<AuditRecord, AuditError> {
        let done = self.ticket.wait().map_err(journal_error)?;
        done.records.into_iter().next().ok_or(AuditError::Closed)
    }
}

/// The audit log: appends go through the store's group commit
/// ([`crate::journal`]); reads use their own transactions.
///
/// `append` blocks; from async code call it on a blocking thread.
pub struct AuditLog {
    db: Arc<Database>,
    journal: Arc<Journal>,
    config: AuditConfig,
    claim: Arc<AtomicBool>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log in `store`, recovering the chain head (last seq and
    /// hash) from the `audit` table and handing it to the store's writer.
    /// At most one `AuditLog` may be open per store
    /// ([`AuditError::AlreadyOpen`]).
    pub fn open(store: &Store, config: AuditConfig) -> Result<AuditLog, AuditError> {
        let claim = store.claim_audit_writer().ok_or(AuditError::AlreadyOpen)?;
        let release = |e: AuditError| {
            claim.store(false, Ordering::Release);
            e
        };
        let db = store.database();
        let head = recover_head(&db).map_err(release)?;
        let journal = Arc::clone(store.journal());
        journal
            .install_head(head, config.clock.clone())
            .map_err(journal_error)
            .map_err(release)?;
        Ok(AuditLog {
            db,
            journal,
            config,
            claim,
        })
    }

    /// Appends `event` and blocks until it is durably committed.
    pub fn append(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        self.submit(event)?.wait()
    }

    /// Queues `event` without waiting for the commit.
    pub fn submit(&self, event: AuditEvent) -> Result<AppendTicket, AuditError> {
        let prepared = prepare(event, self.config.compliance)?;
        let ticket = self
            .journal
            .submit(None, vec![prepared])
            .map_err(journal_error)?;
        Ok(AppendTicket { ticket })
    }

    /// Checks and encodes `events` for this log's compliance mode.
    fn prepare_all(&self, events: Vec<AuditEvent>) -> Result<Vec<PreparedEvent>, AuditError> {
        self.recorder().prepare_all(events)
    }

    /// What the store needs to commit a state change with its records
    /// (`Store::*_recorded`) under this log's compliance mode.
    pub(crate) fn recorder(&self) -> Recorder {
        Recorder {
            compliance: self.config.compliance,
        }
    }

    /// Records matching `query` (see [`AuditQuery`]).
    pub fn query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let rows = table.iter()?;
        let rows: Box<dyn Iterator<Item = _>> = match query.order {
            Order::NewestFirst => Box::new(rows.rev()),
            Order::OldestFirst => Box::new(rows),
        };
        for row in rows {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let record = decode_row(k.value(), v.value())?.to_record()?;
            if query.past_range(&record) {
                break;
            }
            if query.matches(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Walks the whole chain. `Ok(n)` when all `n` records are intact;
    /// otherwise [`AuditError::Tampered`] naming the first bad record.
    pub fn verify(&self) -> Result<u64, AuditError> {
        verify_chain(&self.db)
    }

    /// Removes the oldest records: those committed before `before_ms`
    /// (and, with `through_seq`, none after that seq). Records' times never
    /// decrease along the chain, so this is a prefix. In the same commit it
    /// stores the last removed record's seq and hash as the chain's anchor
    /// and appends an `audit_pruned` checkpoint record (by `actor`) naming
    /// them, so [`AuditLog::verify`] still checks the whole remaining chain
    /// and finds a removed or edited anchor. Refuses (changing nothing) if
    /// the chain does not verify: pruning must not hide damage. Export the
    /// records first; they are gone from the store afterwards.
    pub fn prune(
        &self,
        before_ms: u64,
        through_seq: Option<u64>,
        actor: &str,
    ) -> Result<PruneReport, AuditError> {
        loop {
            verify_chain(&self.db)?;
            let Some(plan) = self.prune_plan(before_ms, through_seq)? else {
                return Ok(PruneReport {
                    pruned: 0,
                    first_seq: 0,
                    through_seq: 0,
                    through_hash: String::new(),
                    checkpoint_seq: None,
                });
            };
            let event = AuditEvent::new(
                EventType::AuditPruned,
                format!(
                    "audit records {}..{} ({}) pruned: committed before {before_ms} ms",
                    plan.first, plan.last.seq, plan.count
                ),
            )
            .with_actor(actor)
            .with_details(json!({
                "pruned_from_seq": plan.first,
                "pruned_through_seq": plan.last.seq,
                "pruned_through_hash": plan.last.hash,
                "pruned_records": plan.count,
                "before_ms": before_ms,
            }));
            let change_plan = plan.clone();
            let prepared = self.prepare_all(vec![event])?;
            let (done, records) = self
                .journal
                .submit_typed_hooked(
                    move |txn| {
                        let plan = &change_plan;
                        let mut meta = txn.open_table(META)?;
                        let current = read_anchor(&meta).map_err(|_| {
                            StoreError::InvalidValue("the audit anchor is not readable")
                        })?;
                        // Another prune got there first: plan again.
                        if current != plan.anchor {
                            return Ok((false, false));
                        }
                        let mut table = txn.open_table(AUDIT)?;
                        for seq in plan.first..=plan.last.seq {
                            table.remove(seq)?;
                        }
                        meta.insert(ANCHOR_KEY, anchor_bytes(&plan.last).as_slice())?;
                        Ok((true, true))
                    },
                    prepared,
                    None::<fn(&bool)>,
                    Persist::Durable,
                )
                .map_err(journal_error)?
                .wait()
                .map_err(journal_error)?;
            if done {
                return Ok(PruneReport {
                    pruned: plan.count,
                    first_seq: plan.first,
                    through_seq: plan.last.seq,
                    through_hash: plan.last.hash,
                    checkpoint_seq: records.first().map(|r| r.seq),
                });
            }
        }
    }

    /// The prefix [`AuditLog::prune`] would remove, if any.
    fn prune_plan(
        &self,
        before_ms: u64,
        through_seq: Option<u64>,
    ) -> Result<Option<PrunePlan>, AuditError> {
        let txn = self.db.begin_read()?;
        let anchor = read_anchor(&txn.open_table(META)?)?;
        let table = txn.open_table(AUDIT)?;
        let mut plan: Option<PrunePlan> = None;
        for row in table.iter()? {
            let (k, v) = row?;
            let rec = decode_row(k.value(), v.value())?;
            if rec.ts_ms >= before_ms || through_seq.is_some_and(|t| rec.seq > t) {
                break;
            }
            let last = Anchor {
                seq: rec.seq,
                hash: rec.hash,
            };
            match plan.as_mut() {
                Some(p) => {
                    p.last = last;
                    p.count += 1;
                }
                None => {
                    plan = Some(PrunePlan {
                        anchor: anchor.clone(),
                        first: rec.seq,
                        last,
                        count: 1,
                    })
                }
            }
        }
        Ok(plan)
    }

    /// Number of records.
    pub fn len(&self) -> Result<u64, AuditError> {
        let txn = self.db.begin_read()?;
        Ok(redb::ReadableTableMetadata::len(&txn.open_table(AUDIT)?)?)
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Appends queued by this log are committed before another log may
        // open on the store (it recovers the chain head from the table).
        if let Ok(barrier) = self.journal.submit(None, Vec::new()) {
            let _ = barrier.wait();
        }
        self.claim.store(false, Ordering::Release);
    }
}

fn recover_head(db: &Database) -> Result<ChainHead, AuditError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(AUDIT)?;
    match table.last()? {
        None => Ok(ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
            ts_ms: 0,
        }),
        Some((k, v)) => {
            let rec = decode_row(k.value(), v.value())?;
            Ok(ChainHead {
                seq: k.value(),
                hash: rec.hash,
                ts_ms: rec.ts_ms,
            })
        }
    }
}

fn verify_chain(db: &Database) -> Result<u64, AuditError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(AUDIT)?;
    let meta = txn.open_table(META)?;
    let broken = |seq, kind| Err(AuditError::Tampered(ChainBreak { seq, kind }));
    // After a prune the chain starts from the anchor, not from genesis.
    let anchor = read_anchor(&meta)?;
    let (first, mut prev_hash) = match &anchor {
        Some(a) => (a.seq + 1, a.hash.clone()),
        None => (1, GENESIS_HASH.to_string()),
    };
    let mut expected = first;
    let mut newest_checkpoint: Option<String> = None;
    for row in table.iter()? {
        let (k, v) = row?;
        let key = k.value();
        let Ok(rec) = decode_row(key, v.value()) else {
            return broken(key, BreakKind::Undecodable);
        };
        if rec.seq != key {
            return broken(key, BreakKind::SeqMismatch { stored: rec.seq });
        }
        if key != expected {
            return broken(key, BreakKind::SeqGap { expected });
        }
        if rec.compute_hash() != rec.hash {
            return broken(key, BreakKind::HashMismatch);
        }
        if rec.prev_hash != prev_hash {
            return broken(key, BreakKind::PrevHashMismatch);
        }
        if rec.event_type == EventType::AuditPruned.as_str() {
            newest_checkpoint = Some(rec.details);
        }
        prev_hash = rec.hash;
        expected += 1;
    }
    let last = expected - 1;
    if let Some(head) = meta.get(HEAD_KEY)? {
        let bytes = head.value();
        let head_seq = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let head_hash = bytes.get(8..).unwrap_or_default();
        if head_seq > last {
            return broken(last + 1, BreakKind::TailRemoved { head_seq });
        }
        if head_seq != last || head_hash != prev_hash.as_bytes() {
            return broken(last, BreakKind::HeadMismatch);
        }
    }
    // The anchor is outside the chain; the checkpoint record that names
    // it is inside, so an edited anchor (or a prefix removed by hand with
    // an anchor written for it) shows.
    if let Some(anchor) = anchor {
        let named = newest_checkpoint
            .and_then(|details| serde_json::from_str::<Value>(&details).ok())
            .is_some_and(|d| {
                d["pruned_through_seq"] == anchor.seq && d["pruned_through_hash"] == anchor.hash
            });
        if !named {
            return broken(
                anchor.seq + 1,
                BreakKind::AnchorMismatch {
                    anchor_seq: anchor.seq,
                },
            );
        }
    }
    Ok(last + 1 - first)
}

/// The last pruned record: where the chain starts after a prune.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Anchor {
    seq: u64,
    hash: String,
}

fn read_anchor(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Anchor>, AuditError> {
    let Some(value) = meta.get(ANCHOR_KEY)? else {
        return Ok(None);
    };
    let bytes = value.value();
    let seq = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes);
    let hash = bytes
        .get(8..)
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| h.len() == 64);
    match (seq, hash) {
        (Some(seq), Some(hash)) => Ok(Some(Anchor {
            seq,
            hash: hash.to_string(),
        })),
        _ => Err(AuditError::Tampered(ChainBreak {
            seq: 1,
            kind: BreakKind::AnchorMismatch { anchor_seq: 0 },
        })),
    }
}

fn anchor_bytes(anchor: &Anchor) -> Vec<u8> {
    let mut bytes = anchor.seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(anchor.hash.as_bytes());
    bytes
}

/// What [`AuditLog::prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Records removed (0: nothing was older than the cut-off).
    pub pruned: u64,
    /// First removed seq (0 when none).
    pub first_seq: u64,
    /// Last removed seq (0 when none): the chain now starts after it.
    pub through_seq: u64,
    /// Hash of the last removed record, carried by the checkpoint record.
    pub through_hash: String,
    /// Seq of the `audit_pruned` checkpoint record (none when nothing was
    /// removed).
    pub checkpoint_seq: Option<u64>,
}

/// The prefix a prune would remove: `first..=last` and `last`'s hash.
#[derive(Debug, Clone)]
struct PrunePlan {
    anchor: Option<Anchor>,
    first: u64,
    last: Anchor,
    count: u64,
}

// ---------------------------------------------------------------------------
// Query and export
// ---------------------------------------------------------------------------

/// Result order of [`AuditLog::query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Highest seq first (default).
    #[default]
    NewestFirst,
    /// Lowest seq first.
    OldestFirst,
}

/// Filters for [`AuditLog::query`]. Empty lists and `None` match anything.
/// `limit` applies after filtering, in the chosen `order`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Match any of these event types.
    pub event_types: Vec<EventType>,
    /// Match severity at or above this.
    pub min_severity: Option<Severity>,
    /// Match any of these categories.
    pub categories: Vec<Category>,
    /// Match this peer exactly.
    pub peer: Option<String>,
    /// Match `ts_ms >= from_ms`.
    pub from_ms: Option<u64>,
    /// Match `ts_ms <= to_ms`.
    pub to_ms: Option<u64>,
    /// At most this many records.
    pub limit: Option<usize>,
    /// Result order.
    pub order: Order,
}

impl AuditQuery {
    /// Whether `r` passes every filter.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&r.event_type))
            && self.min_severity.is_none_or(|s| r.severity >= s)
            && (self.categories.is_empty() || self.categories.contains(&r.category))
            && self
                .peer
                .as_ref()
                .is_none_or(|p| r.peer.as_ref() == Some(p))
            && self.from_ms.is_none_or(|t| r.ts_ms >= t)
            && self.to_ms.is_none_or(|t| r.ts_ms <= t)
    }

    /// Timestamps never decrease along the chain, so once a record lies
    /// beyond the time range in the scan direction, no later one matches.
    fn past_range(&self, r: &AuditRecord) -> bool {
        match self.order {
            Order::NewestFirst => self.from_ms.is_some_and(|t| r.ts_ms < t),
            Order::OldestFirst => self.to_ms.is_some_and(|t| r.ts_ms > t),
        }
    }
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON array of records.
    Json,
    /// One JSON record per line.
    Ndjson,
    /// CSV with the header [`CSV_HEADER`]; `details` as compact JSON.
    Csv,
}

/// Column order of CSV exports.
pub const CSV_HEADER: [&str; 11] = [
    "seq",
    "ts_ms",
    "event_type",
    "severity",
    "category",
    "peer",
    "actor",
    "summary",
    "details",
    "prev_hash",
    "hash",
];

/// Writes `records` to `out` in `format`. In CSV, text cells starting with
/// `=`, `+`, `-`, `@`, tab or carriage return get a leading `'` so
/// spreadsheets do not evaluate them as formulas.
pub fn export<W: Write>(
    records: &[AuditRecord],
    format: ExportFormat,
    mut out: W,
) -> Result<(), AuditError> {
    let io = |e: std::io::Error| AuditError::Export(e.to_string());
    let js = |e: serde_json::Error| AuditError::Export(e.to_string());
    match format {
        ExportFormat::Json => {
            serde_json::to_writer(&mut out, records).map_err(js)?;
            out.write_all(b"\n").map_err(io)?;
        }
        ExportFormat::Ndjson => {
            for r in records {
                serde_json::to_writer(&mut out, r).map_err(js)?;
                out.write_all(b"\n").map_err(io)?;
            }
        }
        ExportFormat::Csv => write_csv(records, &mut out)?,
    }
    out.flush().map_err(io)
}

fn write_csv<W: Write>(records: &[AuditRecord], out: W) -> Result<(), AuditError> {
    let err = |e: csv::Error| AuditError::Export(e.to_string());
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out);
    w.write_record(CSV_HEADER).map_err(err)?;
    for r in records {
        let details = canonical_json(&r.details)?;
        let row = [
            r.seq.to_string(),
            r.ts_ms.to_string(),
            r.event_type.as_str().to_string(),
            r.severity.as_str().to_string(),
            r.category.as_str().to_string(),
            defuse_formula(r.peer.as_deref().unwrap_or("")),
            defuse_formula(&r.actor),
            defuse_formula(&r.summary),
            defuse_formula(&details),
            r.prev_hash.clone(),
            r.hash.clone(),
        ];
        w.write_record(&row).map_err(err)?;
    }
    w.flush().map_err(|e| AuditError::Export(e.to_string()))
}

fn defuse_formula(s: &str) -> String {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Actor as BreakerActor;
    use crate::model::{BreakerState, TrustLevel};
    use sha2::{Digest as _, Sha256};

    #[test]
    fn a_named_local_actor_relabels_operator_and_system_events_only_while_it_runs() {
        let prepared = |actor: &str| {
            prepare(
                AuditEvent::new(EventType::MessageSent, "x").with_actor(actor),
                ComplianceMode::Standard,
            )
            .unwrap()
        };
        as_local_actor(ACTOR_MCP_AGENT, Some("claude-code"), || {
            for actor in [ACTOR_OPERATOR, ACTOR_SYSTEM] {
                let event = prepared(actor);
                assert_eq!(event.actor, ACTOR_MCP_AGENT);
                assert_eq!(event.details["mcp_client"], "claude-code");
            }
            let plugin = prepared(&plugin_actor("trust"));
            assert_eq!(plugin.actor, "plugin:trust");
            assert!(plugin.details.get("mcp_client").is_none());
        });
        assert_eq!(prepared(ACTOR_OPERATOR).actor, ACTOR_OPERATOR);
    }
    use crate::store::STATE_FILE;
    use std::path::Path;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn open(dir: &Path) -> Result<(Store, AuditLog), Box<dyn std::error::Error>> {
        open_with(dir, AuditConfig::default())
    }

    fn open_with(
        dir: &Path,
        config: AuditConfig,
    ) -> Result<(Store, AuditLog), Box<dyn std::error::Error>> {
        let store = Store::open_in_home(dir)?;
        let log = AuditLog::open(&store, config)?;
        Ok((store, log))
    }

    fn event(i: u64) -> AuditEvent {
        AuditEvent::new(EventType::MessageSent, format!("message {i}"))
            .with_peer(if i.is_multiple_of(2) { "alpha" } else { "beta" })
            .with_details(json!({ "n": i, "envelope_id": format!("env-{i}") }))
    }

    fn fill(log: &AuditLog, n: u64) -> Result<(), AuditError> {
        for i in 1..=n {
            log.append(event(i))?;
        }
        Ok(())
    }

    /// Edits the raw redb file with plain redb calls, outside the log.
    fn with_raw_table(dir: &Path, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) -> TestResult {
        let db = Database::create(dir.join(STATE_FILE))?;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(AUDIT)?;
            f(&mut table);
        }
        txn.commit()?;
        Ok(())
    }

    fn raw_get(table: &redb::Table<u64, &[u8]>, seq: u64) -> Vec<u8> {
        table
            .get(seq)
            .ok()
            .flatten()
            .map(|v| v.value().to_vec())
            .unwrap_or_default()
    }

    fn verify_reopened(dir: &Path) -> Result<Result<u64, AuditError>, Box<dyn std::error::Error>> {
        let (_store, log) = open(dir)?;
        Ok(log.verify())
    }

    fn expect_break(result: Result<u64, AuditError>) -> ChainBreak {
        match result {
            Err(AuditError::Tampered(b)) => b,
            other => panic!("expected a chain break, got {other:?}"),
        }
    }

    #[test]
    fn append_chains_records_from_genesis() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        let first = log.append(event(1))?;
        let second = log.append(event(2))?;
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev_hash, GENESIS_HASH);
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(first.hash.len(), 64);
        assert!(second.ts_ms >= first.ts_ms);
        assert_eq!(first.category, Category::Messaging);
        assert_eq!(first.severity, Severity::Debug);
        assert_eq!(log.verify()?, 2);
        Ok(())
    }

    #[test]
    fn hash_follows_the_documented_encoding() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        let r = log.append(
            AuditEvent::new(EventType::PeerAdded, "added")
                .with_peer("alpha")
                .with_details(json!({"b": 1, "a": [true, null, "x"]})),
        )?;
        let mut input = HASH_DOMAIN.to_vec();
        input.extend(1u64.to_be_bytes());
        input.extend(r.ts_ms.to_be_bytes());
        let lp = |s: &str, v: &mut Vec<u8>| {
            v.extend((s.len() as u32).to_be_bytes());
            v.extend(s.as_bytes());
        };
        lp("peer_added", &mut input);
        lp("info", &mut input);
        lp("identity", &mut input);
        input.push(1);
        lp("alpha", &mut input);
        lp("system", &mut input);
        lp("added", &mut input);
        lp(r#"{"a":[true,null,"x"],"b":1}"#, &mut input);
        lp(GENESIS_HASH, &mut input);
        assert_eq!(r.hash, hex::encode(Sha256::digest(&input)));
        Ok(())
    }

    #[test]
    fn head_is_recovered_on_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let last = {
            let (_store, log) = open(dir.path())?;
            fill(&log, 5)?;
            log.query(&AuditQuery {
                limit: Some(1),
                ..Default::default()
            })?
        };
        let (_store, log) = open(dir.path())?;
        let next = log.append(event(6))?;
        assert_eq!(next.seq, 6);
        assert_eq!(Some(&next.prev_hash), last.first().map(|r| &r.hash));
        assert_eq!(log.verify()?, 6);
        Ok(())
    }

    #[test]
    fn group_commit_8_threads_x_2000_all_present_and_chain_valid() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        let threads = 8u64;
        let per = 2000u64;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let log = &log;
                    s.spawn(move || -> Result<Vec<u64>, AuditError> {
                        let mut seqs = Vec::new();
                        for i in 0..per {
                            let r = log.append(
                                AuditEvent::new(EventType::MessageReceived, "m")
                                    .with_details(json!({"thread": t, "i": i})),
                            )?;
                            seqs.push(r.seq);
                        }
                        Ok(seqs)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(Ok(seqs)) => all.extend(seqs),
                    other => panic!("appender failed: {other:?}"),
                }
            }
            all.sort_unstable();
            let expect: Vec<u64> = (1..=threads * per).collect();
            assert_eq!(all, expect, "every acknowledged append has a unique seq");
        });
        assert_eq!(log.verify()?, threads * per);
        let records = log.query(&AuditQuery {
            order: Order::OldestFirst,
            ..Default::default()
        })?;
        let mut seen: Vec<(u64, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.details["thread"].as_u64().unwrap_or(99),
                    r.details["i"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len() as u64, threads * per);
        Ok(())
    }

    #[test]
    fn acknowledged_appends_survive_reopen() -> TestResult {
        let dir = tempfile::tempdir()?;
        let tickets_done = {
            let (_store, log) = open(dir.path())?;
            let tickets: Vec<AppendTicket> = (1..=300)
                .map(|i| log.submit(event(i)))
                .collect::<Result<_, _>>()?;
            tickets
                .into_iter()
                .map(AppendTicket::wait)
                .collect::<Result<Vec<_>, _>>()?
        };
        assert_eq!(tickets_done.len(), 300);
        let (_store, log) = open(dir.path())?;
        assert_eq!(log.verify()?, 300);
        assert_eq!(log.len()?, 300);
        Ok(())
    }

    #[test]
    fn verify_detects_an_edited_record() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 10)?;
        }
        with_raw_table(dir.path(), |t| {
            let raw = raw_get(t, 5);
            let mut v: Value = serde_json::from_slice(&raw).unwrap_or_default();
            v["summary"] = json!("nothing to see here");
            let edited = serde_json::to_vec(&v).unwrap_or_default();
            let _ = t.insert(5, edited.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 5,
                kind: BreakKind::HashMismatch
            }
        );
        assert!(b.to_string().contains("record 5") && b.to_string().contains("edited"));
        Ok(())
    }

    #[test]
    fn verify_detects_edited_details_and_raw_byte_damage() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 6)?;
        }
        with_raw_table(dir.path(), |t| {
            let raw = String::from_utf8(raw_get(t, 3)).unwrap_or_default();
            let edited = raw.replace(r#"\"n\":3"#, r#"\"n\":4"#);
            assert_ne!(raw, edited);
            let _ = t.insert(3, edited.as_bytes());
            let _ = t.insert(4, b"\x00garbage".as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 3,
                kind: BreakKind::HashMismatch
            }
        );
        Ok(())
    }

    #[test]
    fn verify_detects_undecodable_record() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 4)?;
        }
        with_raw_table(dir.path(), |t| {
            let mut raw = raw_get(t, 2);
            raw[0] = b'[';
            let _ = t.insert(2, raw.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 2,
                kind: BreakKind::Undecodable
            }
        );
        Ok(())
    }

    #[test]
    fn verify_detects_a_removed_record() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 10)?;
        }
        with_raw_table(dir.path(), |t| {
            let _ = t.remove(4);
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 5,
                kind: BreakKind::SeqGap { expected: 4 }
            }
        );
        assert!(b.to_string().contains("removed"));
        Ok(())
    }

    #[test]
    fn verify_detects_removal_with_renumbering() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 6)?;
        }
        // Remove record 3 and shift 4.. down so the seqs look contiguous.
        with_raw_table(dir.path(), |t| {
            for seq in 3..6 {
                let mut v: Value = serde_json::from_slice(&raw_get(t, seq + 1)).unwrap_or_default();
                v["seq"] = json!(seq);
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                let _ = t.insert(seq, bytes.as_slice());
            }
            let _ = t.remove(6);
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(b.seq, 3);
        assert_eq!(b.kind, BreakKind::HashMismatch);
        Ok(())
    }

    #[test]
    fn verify_detects_removal_from_the_tail() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 5)?;
        }
        with_raw_table(dir.path(), |t| {
            let _ = t.remove(5);
            let _ = t.remove(4);
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 4,
                kind: BreakKind::TailRemoved { head_seq: 5 }
            }
        );
        Ok(())
    }

    /// Edits the raw `meta` table with plain redb calls, outside the log.
    fn with_raw_meta(dir: &Path, f: impl FnOnce(&mut redb::Table<&str, &[u8]>)) -> TestResult {
        let db = Database::create(dir.join(STATE_FILE))?;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(META)?;
            f(&mut table);
        }
        txn.commit()?;
        Ok(())
    }

    fn hash_of(log: &AuditLog, seq: u64) -> Result<String, Box<dyn std::error::Error>> {
        let all = log.query(&AuditQuery::default())?;
        Ok(all
            .into_iter()
            .find(|r| r.seq == seq)
            .ok_or("no such record")?
            .hash)
    }

    #[test]
    fn prune_removes_a_prefix_and_the_chain_still_verifies() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 10)?;
            let hash6 = hash_of(&log, 6)?;
            let report = log.prune(u64::MAX, Some(6), ACTOR_OPERATOR)?;
            assert_eq!(
                report,
                PruneReport {
                    pruned: 6,
                    first_seq: 1,
                    through_seq: 6,
                    through_hash: hash6.clone(),
                    checkpoint_seq: Some(11),
                }
            );
            // 7..=10 and the checkpoint.
            assert_eq!(log.len()?, 5);
            assert_eq!(log.verify()?, 5);
            let checkpoint = &log.query(&AuditQuery::default())?[0];
            assert_eq!(checkpoint.event_type, EventType::AuditPruned);
            assert_eq!(checkpoint.actor, ACTOR_OPERATOR);
            assert_eq!(checkpoint.details["pruned_through_hash"], hash6.as_str());
            assert_eq!(checkpoint.details["pruned_records"], 6);
            log.append(event(12))?;
        }
        // Reopened: the head and anchor agree; a second prune moves the
        // anchor past the first checkpoint, which a new one replaces.
        let (_store, log) = open(dir.path())?;
        assert_eq!(log.verify()?, 6);
        let report = log.prune(u64::MAX, Some(11), ACTOR_OPERATOR)?;
        assert_eq!((report.first_seq, report.through_seq), (7, 11));
        assert_eq!(report.checkpoint_seq, Some(13));
        assert_eq!(log.verify()?, 2);
        // Nothing older than the cut-off: nothing changes.
        let before = log.len()?;
        let nothing = log.prune(0, None, ACTOR_OPERATOR)?;
        assert_eq!((nothing.pruned, nothing.checkpoint_seq), (0, None));
        assert_eq!(log.len()?, before);
        Ok(())
    }

    #[test]
    fn prune_by_time_stops_at_the_first_record_at_or_after_the_cut_off() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        fill(&log, 3)?;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cut = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        fill(&log, 2)?;
        let report = log.prune(cut, None, ACTOR_OPERATOR)?;
        assert_eq!((report.first_seq, report.through_seq), (1, 3));
        let left = log.query(&AuditQuery::default())?;
        assert!(left.iter().all(|r| r.seq > 3));
        assert!(left.iter().all(|r| r.ts_ms >= cut));
        assert_eq!(log.verify()?, 3);
        Ok(())
    }

    #[test]
    fn prune_refuses_a_chain_that_does_not_verify() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 4)?;
        }
        with_raw_table(dir.path(), |t| {
            let edited = String::from_utf8(raw_get(t, 2))
                .unwrap_or_default()
                .replace("message 2", "message X");
            let _ = t.insert(2, edited.as_bytes());
        })?;
        let (_store, log) = open(dir.path())?;
        let refused = log.prune(u64::MAX, None, ACTOR_OPERATOR);
        assert!(matches!(
            refused,
            Err(AuditError::Tampered(ChainBreak { seq: 2, .. }))
        ));
        assert_eq!(log.len()?, 4);
        Ok(())
    }

    #[test]
    fn verify_detects_an_edited_or_removed_anchor() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 6)?;
            log.prune(u64::MAX, Some(3), ACTOR_OPERATOR)?;
        }
        // An anchor pointing further on (more records removed by hand).
        let (wider, hash5) = {
            let (_store, log) = open(dir.path())?;
            (log.len()?, hash_of(&log, 5)?)
        };
        assert_eq!(wider, 4);
        with_raw_table(dir.path(), |t| {
            let _ = t.remove(4);
            let _ = t.remove(5);
        })?;
        with_raw_meta(dir.path(), |m| {
            let forged = anchor_bytes(&Anchor {
                seq: 5,
                hash: hash5.clone(),
            });
            let _ = m.insert(ANCHOR_KEY, forged.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 6,
                kind: BreakKind::AnchorMismatch { anchor_seq: 5 }
            }
        );
        // No anchor at all: the records before the first one are missing.
        with_raw_meta(dir.path(), |m| {
            let _ = m.remove(ANCHOR_KEY);
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 6,
                kind: BreakKind::SeqGap { expected: 1 }
            }
        );
        Ok(())
    }

    #[test]
    fn verify_detects_a_prefix_removed_by_hand_with_a_forged_anchor() -> TestResult {
        let dir = tempfile::tempdir()?;
        let hash3 = {
            let (_store, log) = open(dir.path())?;
            fill(&log, 5)?;
            hash_of(&log, 3)?
        };
        with_raw_table(dir.path(), |t| {
            for seq in 1..=3 {
                let _ = t.remove(seq);
            }
        })?;
        with_raw_meta(dir.path(), |m| {
            let forged = anchor_bytes(&Anchor {
                seq: 3,
                hash: hash3.clone(),
            });
            let _ = m.insert(ANCHOR_KEY, forged.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 4,
                kind: BreakKind::AnchorMismatch { anchor_seq: 3 }
            }
        );
        Ok(())
    }

    #[test]
    fn verify_detects_two_swapped_records() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 8)?;
        }
        with_raw_table(dir.path(), |t| {
            let a = raw_get(t, 3);
            let b = raw_get(t, 4);
            let _ = t.insert(3, b.as_slice());
            let _ = t.insert(4, a.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 3,
                kind: BreakKind::SeqMismatch { stored: 4 }
            }
        );
        assert!(b.to_string().contains("reordered"));
        Ok(())
    }

    #[test]
    fn verify_detects_swap_with_renumbered_seqs() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 8)?;
        }
        with_raw_table(dir.path(), |t| {
            let mut a: Value = serde_json::from_slice(&raw_get(t, 3)).unwrap_or_default();
            let mut b: Value = serde_json::from_slice(&raw_get(t, 4)).unwrap_or_default();
            a["seq"] = json!(4);
            b["seq"] = json!(3);
            let (a, b) = (
                serde_json::to_vec(&a).unwrap_or_default(),
                serde_json::to_vec(&b).unwrap_or_default(),
            );
            let _ = t.insert(3, b.as_slice());
            let _ = t.insert(4, a.as_slice());
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 3,
                kind: BreakKind::HashMismatch
            }
        );
        Ok(())
    }

    #[test]
    fn verify_detects_swap_with_recomputed_hashes_via_prev_hash() -> TestResult {
        // An attacker who swaps records 3 and 4 and recomputes their own
        // hashes (but not the rest of the chain) is caught by prev_hash.
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            fill(&log, 8)?;
        }
        with_raw_table(dir.path(), |t| {
            let decode = |b: Vec<u8>| serde_json::from_slice::<StoredRecord>(&b).ok();
            if let (Some(mut a), Some(mut b)) = (decode(raw_get(t, 3)), decode(raw_get(t, 4))) {
                std::mem::swap(&mut a.seq, &mut b.seq);
                a.hash = a.compute_hash();
                b.hash = b.compute_hash();
                let (a, b) = (
                    serde_json::to_vec(&a).unwrap_or_default(),
                    serde_json::to_vec(&b).unwrap_or_default(),
                );
                let _ = t.insert(3, b.as_slice());
                let _ = t.insert(4, a.as_slice());
            }
        })?;
        let b = expect_break(verify_reopened(dir.path())?);
        assert_eq!(
            b,
            ChainBreak {
                seq: 3,
                kind: BreakKind::PrevHashMismatch
            }
        );
        Ok(())
    }

    #[test]
    fn query_filters_and_orders() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        fill(&log, 6)?;
        log.append(AuditEvent::new(EventType::BreakerSuspended, "cost").with_peer("alpha"))?;
        log.append(
            AuditEvent::new(EventType::PluginFailed, "trap").with_actor(plugin_actor("trust")),
        )?;
        log.append(AuditEvent::pii(
            PiiOutcome::Blocked,
            Some("beta"),
            &[("ssn", 1)],
        ))?;

        let all = log.query(&AuditQuery::default())?;
        assert_eq!(all.len(), 9);
        assert_eq!(
            all.first().map(|r| r.seq),
            Some(9),
            "newest first by default"
        );
        let oldest = log.query(&AuditQuery {
            order: Order::OldestFirst,
            limit: Some(2),
            ..Default::default()
        })?;
        assert_eq!(oldest.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);

        let warn = log.query(&AuditQuery {
            min_severity: Some(Severity::Warning),
            ..Default::default()
        })?;
        assert_eq!(
            warn.iter().map(|r| r.event_type).collect::<Vec<_>>(),
            [
                EventType::PiiBlocked,
                EventType::PluginFailed,
                EventType::BreakerSuspended
            ]
        );
        let errors = log.query(&AuditQuery {
            min_severity: Some(Severity::Error),
            ..Default::default()
        })?;
        assert_eq!(errors.len(), 1);

        let alpha = log.query(&AuditQuery {
            peer: Some("alpha".into()),
            ..Default::default()
        })?;
        assert_eq!(alpha.len(), 4);
        let types = log.query(&AuditQuery {
            event_types: vec![EventType::BreakerSuspended, EventType::PiiBlocked],
            ..Default::default()
        })?;
        assert_eq!(types.len(), 2);
        let cats = log.query(&AuditQuery {
            categories: vec![Category::Plugin],
            ..Default::default()
        })?;
        assert_eq!(cats.len(), 1);
        let combined = log.query(&AuditQuery {
            peer: Some("beta".into()),
            categories: vec![Category::Messaging],
            limit: Some(2),
            ..Default::default()
        })?;
        assert_eq!(combined.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 3]);
        Ok(())
    }

    #[test]
    fn query_time_range() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        let a = log.append(event(1))?;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = log.append(event(2))?;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let c = log.append(event(3))?;
        assert!(a.ts_ms < b.ts_ms && b.ts_ms < c.ts_ms);
        let mid = AuditQuery {
            from_ms: Some(b.ts_ms),
            to_ms: Some(b.ts_ms),
            ..Default::default()
        };
        assert_eq!(
            log.query(&mid)?.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2]
        );
        let mid_old = AuditQuery {
            order: Order::OldestFirst,
            ..mid.clone()
        };
        assert_eq!(
            log.query(&mid_old)?
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [2]
        );
        let from = AuditQuery {
            from_ms: Some(b.ts_ms),
            ..Default::default()
        };
        assert_eq!(
            log.query(&from)?.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 2]
        );
        let to = AuditQuery {
            to_ms: Some(b.ts_ms),
            order: Order::OldestFirst,
            ..Default::default()
        };
        assert_eq!(
            log.query(&to)?.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        Ok(())
    }

    #[test]
    fn export_json_ndjson_csv() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        log.append(
            AuditEvent::new(EventType::OperatorAction, "said \"hi\", then\nleft")
                .with_actor(ACTOR_OPERATOR)
                .with_details(json!({"z": 1, "a": "x,y"})),
        )?;
        log.append(
            AuditEvent::new(EventType::PeerAdded, "=HYPERLINK(\"evil\")").with_peer("alpha"),
        )?;
        let records = log.query(&AuditQuery {
            order: Order::OldestFirst,
            ..Default::default()
        })?;

        let mut json_out = Vec::new();
        export(&records, ExportFormat::Json, &mut json_out)?;
        let parsed: Vec<AuditRecord> = serde_json::from_slice(&json_out)?;
        assert_eq!(parsed, records);
        assert!(std::str::from_utf8(&json_out)?.contains("\"event_type\":\"operator_action\""));

        let mut nd = Vec::new();
        export(&records, ExportFormat::Ndjson, &mut nd)?;
        let lines: Vec<&str> = std::str::from_utf8(&nd)?.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(serde_json::from_str::<AuditRecord>(lines[1])?, records[1]);

        let mut csv_out = Vec::new();
        export(&records, ExportFormat::Csv, &mut csv_out)?;
        let text = std::str::from_utf8(&csv_out)?;
        assert!(text.starts_with(
            "seq,ts_ms,event_type,severity,category,peer,actor,summary,details,prev_hash,hash\n"
        ));
        let mut reader = csv::Reader::from_reader(csv_out.as_slice());
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][7], "said \"hi\", then\nleft");
        assert_eq!(&rows[0][8], r#"{"a":"x,y","z":1}"#);
        assert_eq!(&rows[1][7], "'=HYPERLINK(\"evil\")");
        assert_eq!(&rows[1][5], "alpha");
        assert_eq!(&rows[1][10], records[1].hash.as_str());
        Ok(())
    }

    #[test]
    fn hipaa_mode_strips_free_text_before_hashing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let config = AuditConfig {
            compliance: ComplianceMode::Hipaa,
            clock: None,
        };
        let (_store, log) = open_with(dir.path(), config)?;
        let r = log.append(
            AuditEvent::new(
                EventType::MessageRejected,
                "patient John Smith SSN 123-45-6789 rejected",
            )
            .with_peer("clinic-1")
            .with_details(json!({
                "envelope_id": "env-42",
                "message_type": "agent-handoff",
                "payload_excerpt": "John Smith, DOB 1970-01-01",
                "reason": "contains diagnosis for John",
                "bytes": 1234,
                "blocked": true,
                "types": ["ssn", "name"],
                "nested": { "id": "abc", "note": "free text here", "count": 2 },
                "id": "has spaces so dropped",
                "John Smith": 1,
            })),
        )?;
        assert_eq!(r.summary, "message_rejected");
        let d = &r.details;
        assert_eq!(d["envelope_id"], "env-42");
        assert_eq!(d["message_type"], "agent-handoff");
        assert_eq!(d["bytes"], 1234);
        assert_eq!(d["blocked"], true);
        assert_eq!(d["types"], json!(["ssn", "name"]));
        assert_eq!(d["nested"], json!({"id": "abc", "count": 2}));
        assert!(d.get("payload_excerpt").is_none());
        assert!(d.get("reason").is_none());
        assert!(d.get("id").is_none());
        assert!(d.get("John Smith").is_none());
        assert_eq!(d["hipaa_stripped"], 5);
        let text = serde_json::to_string(&r)?;
        assert!(!text.contains("John") && !text.contains("123-45"), "{text}");
        assert_eq!(log.verify()?, 1);
        Ok(())
    }

    #[test]
    fn pii_events_carry_types_and_counts_only() -> TestResult {
        let e = AuditEvent::pii(
            PiiOutcome::Detected,
            Some("alpha"),
            &[("email", 2), ("phone", 1), ("email", 1)],
        );
        assert_eq!(e.event_type, EventType::PiiDetected);
        assert_eq!(
            e.details,
            json!({"types": {"email": 3, "phone": 1}, "total": 4})
        );
        assert_eq!(e.summary, "pii_detected: email, phone");
        assert_eq!(e.category, Category::Pii);
        Ok(())
    }

    #[test]
    fn pii_type_names_must_be_tokens() {
        let e = AuditEvent::pii(
            PiiOutcome::Blocked,
            None,
            &[("john@example.com is here", 1), ("ssn", 1)],
        );
        assert_eq!(
            e.details,
            json!({"types": {"invalid_type": 1, "ssn": 1}, "total": 2})
        );
        assert!(!e.summary.contains("john"));
    }

    #[test]
    fn only_one_log_per_store() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let log = AuditLog::open(&store, AuditConfig::default())?;
        assert!(matches!(
            AuditLog::open(&store, AuditConfig::default()),
            Err(AuditError::AlreadyOpen)
        ));
        log.append(event(1))?;
        drop(log);
        let log = AuditLog::open(&store, AuditConfig::default())?;
        assert_eq!(log.append(event(2))?.seq, 2);
        Ok(())
    }

    #[test]
    fn typed_constructors() -> TestResult {
        let t = AuditEvent::trust_level_changed(
            "alpha",
            TrustLevel::Verified,
            TrustLevel::Attested,
            BreakerActor::Operator,
            "bootstrap",
        );
        assert_eq!(t.actor, "operator");
        assert_eq!(t.category, Category::Operator);
        assert_eq!(t.details["to"], "ATTESTED");
        let p = AuditEvent::trust_level_changed(
            "a",
            TrustLevel::Attested,
            TrustLevel::Verified,
            BreakerActor::Plugin,
            "score",
        );
        assert_eq!(p.category, Category::Trust);
        let b = AuditEvent::breaker(
            "alpha",
            BreakerState::Evicted,
            BreakerActor::Plugin,
            "failures",
            "corr-1",
        );
        assert_eq!(b.event_type, EventType::BreakerEvicted);
        assert_eq!(b.severity, Severity::Error);
        let s = AuditEvent::spend_reported("alpha", "t1", -5, -0.5, false);
        assert_eq!(s.details["tokens"], -5);
        assert_eq!(s.details["usd"], -0.5);
        Ok(())
    }

    #[test]
    fn event_names_are_snake_case_and_unique() -> TestResult {
        let mut names = std::collections::HashSet::new();
        for t in EventType::ALL {
            let json = serde_json::to_string(t)?;
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert!(
                t.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(names.insert(t.as_str()));
        }
        assert_eq!(serde_json::to_string(&Severity::Warning)?, "\"warning\"");
        assert_eq!(
            serde_json::to_string(&Category::Wireguard)?,
            "\"wireguard\""
        );
        assert!(Severity::Debug < Severity::Info && Severity::Error < Severity::Critical);
        Ok(())
    }

    #[test]
    fn oversized_fields_are_bounded() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        let r = log.append(
            AuditEvent::new(EventType::MessageReceived, "é".repeat(5000))
                .with_peer("p".repeat(1000))
                .with_details(json!({ "blob": "x".repeat(100_000) })),
        )?;
        assert!(r.summary.len() <= MAX_SUMMARY_BYTES);
        assert_eq!(r.peer.as_ref().map(String::len), Some(MAX_ID_BYTES));
        assert_eq!(r.details["details_truncated"], true);
        assert_eq!(log.verify()?, 1);
        Ok(())
    }

    #[test]
    fn float_details_verify_exactly() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let (_store, log) = open(dir.path())?;
            for x in [
                0.1,
                1.0 / 3.0,
                2.2250738585072014e-308,
                123456.789e200,
                -0.0,
            ] {
                log.append(
                    AuditEvent::new(EventType::SpendReported, "f")
                        .with_details(json!({ "usd": x })),
                )?;
            }
        }
        let (_store, log) = open(dir.path())?;
        assert_eq!(log.verify()?, 5);
        Ok(())
    }

    /// Throughput with many concurrent appenders. Run with
    /// `cargo test --release -- --ignored --nocapture audit_throughput`.
    #[test]
    #[ignore]
    fn audit_throughput() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (_store, log) = open(dir.path())?;
        for (threads, in_flight) in [(8usize, 1usize), (64, 1), (256, 1), (8, 64)] {
            let per_thread = 40_000 / threads;
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let log = &log;
                    s.spawn(move || {
                        let mut pending = std::collections::VecDeque::new();
                        for i in 0..per_thread {
                            let ev = AuditEvent::new(EventType::MessageSent, "bench")
                                .with_peer("bench-peer")
                                .with_details(
                                    json!({"t": t, "i": i, "envelope_id": "env-0123456789"}),
                                );
                            match log.submit(ev) {
                                Ok(ticket) => pending.push_back(ticket),
                                Err(e) => panic!("submit: {e}"),
                            }
                            if pending.len() >= in_flight
                                && let Some(ticket) = pending.pop_front()
                                && let Err(e) = ticket.wait()
                            {
                                panic!("append: {e}");
                            }
                        }
                        for ticket in pending {
                            if let Err(e) = ticket.wait() {
                                panic!("append: {e}");
                            }
                        }
                    });
                }
            });
            let n = (per_thread * threads) as f64;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "threads={threads} in_flight/thread={in_flight}: {n} appends in {secs:.3}s = {:.0}/s durable",
                n / secs
            );
        }
        let t = std::time::Instant::now();
        let n = log.verify()?;
        println!("verify {n} records in {:.3}s", t.elapsed().as_secs_f64());
        Ok(())
    }
}
