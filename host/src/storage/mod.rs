//! Storage: everything that makes node state durable, in layers that only
//! look down:
//!
//! | module | owns | builds on |
//! |---|---|---|
//! | [`seglog`] | the append-only segment log (framing, group commit, recovery, retention) | — |
//! | `tables` | the state file's redb tables, `meta` keys, [`StoreError`] | `seglog` (its error) |
//! | `record` | the audit record: vocabulary, bounds, compliance, encoding, hash chain | `tables` |
//! | `redo` | message-path writes as log records, and their replay | `tables`, `seglog` |
//! | [`journal`] | the writer thread: group commit of state changes with their audit records | `record`, `redo`, `tables`, `seglog` |
//! | [`store`] | typed reads and writes of node state (peers, spend, outbox, inbox, dedupe, keys) | `journal`, `redo`, `tables`, `record` |
//! | [`audit`] | the audit log: append, query, verify, prune, export | `store`, `journal`, `record` |
//!
//! The crate root re-exports [`audit`], [`journal`], [`seglog`] and
//! [`store`] at their old paths (`crate::audit`, ...).

pub mod audit;
pub mod journal;
mod record;
pub(crate) mod redo;
pub mod seglog;
pub mod store;
mod tables;

pub use tables::StoreError;
