//! The state file's schema: its redb tables (the table of contents is in
//! [`super::store`]'s docs), the keys `meta` holds, and the store's error
//! type. Every other storage module builds on this one.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use redb::TableDefinition;

/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: u64 = 1;

/// State file name inside the node home.
pub const STATE_FILE: &str = "state.redb";

/// Daemon lock file name inside the node home.
pub const LOCK_FILE: &str = "daemon.lock";

/// Most spend samples kept per peer; the oldest (smallest ts) is dropped.
pub const SPEND_RING_CAPACITY: u64 = 10_000;

/// Longest id (node id, envelope id, task id) accepted as a key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
pub(crate) const SPEND: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("spend");
pub(crate) const SPEND_INDEX: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("spend_index");
pub(crate) const OUTBOX: TableDefinition<&str, (u32, u64, &str, &[u8])> =
    TableDefinition::new("outbox");
pub(crate) const DEDUPE: TableDefinition<(&str, &str), u64> = TableDefinition::new("dedupe");
pub(crate) const DEDUPE_BY_TIME: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("dedupe_by_time");
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub(crate) const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// The acknowledgement sent for each processed inbound envelope, so a
/// retransmission gets the same answer without being processed again.
pub(crate) const INBOUND_ACKS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("inbound_acks");
/// Peers an operator removed, and when: refused at the handshake until an
/// operator adds or joins them again (a removed peer cannot simply
/// reconnect, even with `accept_new_peers`).
pub(crate) const REMOVED_PEERS: TableDefinition<&str, u64> = TableDefinition::new("removed_peers");
/// Caller-chosen idempotency keys of sends: key → [`IdempotencyRecord`]
/// (JSON). Written in the same commit as the outbox entry it names.
pub(crate) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// The same keys by time, for pruning: (created_ms, key).
pub(crate) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("idempotency_by_time");

pub(crate) const SCHEMA_KEY: &str = "schema_version";
pub(crate) const INBOX_NEXT_KEY: &str = "inbox_next_seq";

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem failure.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The file is not a redb database, or it is damaged.
    #[error(
        "{path} is not a readable agentfed state store (not a redb database, or corrupted: {detail}); move it aside or restore a backup",
        path = path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// redb's description.
        detail: String,
    },
    /// The store was written by a newer agentfed.
    #[error(
        "{path} has schema version {found}, newer than this build supports ({supported}); upgrade agentfed",
        path = path.display()
    )]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u64,
        /// Newest version this build supports.
        supported: u64,
    },
    /// Another handle or process has the database open.
    #[error("{path} is already open by another agentfed process", path = path.display())]
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// Any other redb failure.
    #[error("state store: {0}")]
    Db(#[from] redb::Error),
    /// A stored value does not decode.
    #[error("state store: undecodable {table} row")]
    Decode {
        /// Table name.
        table: &'static str,
    },
    /// A value refused before writing (e.g. non-finite USD, oversize key).
    #[error("state store: invalid value: {0}")]
    InvalidValue(&'static str),
    /// The store's writer thread is gone (store closed, or it panicked).
    #[error("state store is closed")]
    Closed,
    /// The writer thread could not be started.
    #[error("cannot start the state store's writer thread: {source}")]
    Thread {
        /// OS error.
        source: io::Error,
    },
    /// Audit records were written before an audit log was opened.
    #[error("state store: no audit log is open on this store")]
    AuditNotOpen,
    /// The group commit this change was part of failed.
    #[error("{0}")]
    Batch(Arc<StoreError>),
    /// The message log failed (see [`super::seglog`]).
    #[error("{0}")]
    MessageLog(#[from] super::seglog::LogError),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;
