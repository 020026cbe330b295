//! What the message log records: the message path's writes to the state
//! file, as redo operations.
//!
//! A message-path change (outbox, inbox, dedupe, stored acks, idempotency
//! keys, and the audit records that go with them) does not wait for a
//! durable redb commit. It runs against a [`Tx`], which applies each write
//! to the batch's transaction *and* keeps it as a [`Redo`]; the journal
//! appends the job's redo list to the message log (one record per job, so
//! a change and its audit records are durable together, with one
//! `fdatasync` per batch) and then commits the transaction without
//! syncing it. A later durable commit (a checkpoint) makes the state file
//! catch up; after a crash, [`crate::store::Store::open`] replays every
//! record past the last checkpoint. Replaying an operation writes exactly
//! what the original write did, so replay is deterministic.
//!
//! Encoding (little-endian): a version byte, the operation count (u32),
//! then each operation as a tag byte and its fields; strings and byte
//! strings are a u32 length and the bytes.

use redb::WriteTransaction;

use super::tables::{
    AUDIT, DEDUPE, DEDUPE_BY_TIME, IDEMPOTENCY, IDEMPOTENCY_BY_TIME, INBOUND_ACKS, INBOX, META,
    OUTBOX, Result, StoreError,
};

const VERSION: u8 = 1;

/// One write to a message-path table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redo {
    /// Inserts or replaces an outbox entry.
    OutboxPut {
        id: String,
        attempts: u32,
        next_attempt_ms: u64,
        target: String,
        /// Shared with the caller's entry, not copied.
        frame: bytes::Bytes,
    },
    /// Removes an outbox entry.
    OutboxRemove { id: String },
    /// Records an inbound envelope as seen (dedupe and its time index).
    DedupePut {
        sender: String,
        id: String,
        seen_ms: u64,
    },
    /// Forgets a seen envelope and its stored acknowledgement.
    DedupeRemove {
        sender: String,
        id: String,
        seen_ms: u64,
    },
    /// Stores the acknowledgement sent for an inbound envelope.
    AckPut {
        sender: String,
        id: String,
        ack: Vec<u8>,
    },
    /// Puts a message in the inbox.
    InboxPut { seq: u64, message: bytes::Bytes },
    /// Removes an inbox message.
    InboxRemove { seq: u64 },
    /// Sets a `meta` value (the inbox floor, the audit chain head).
    MetaPut { key: String, value: Vec<u8> },
    /// Records an idempotency key (replacing an expired record of it,
    /// first used at `replaced_ms`).
    IdempotencyPut {
        key: String,
        created_ms: u64,
        record: Vec<u8>,
        replaced_ms: Option<u64>,
    },
    /// Forgets an idempotency key.
    IdempotencyRemove { key: String, created_ms: u64 },
    /// Writes an audit record (already chained and encoded).
    AuditPut { seq: u64, row: Vec<u8> },
}

/// A message-path change's view of the batch transaction: reads go to
/// [`Tx::txn`], writes through [`Tx::write`] so they are logged.
pub(crate) struct Tx<'a> {
    txn: &'a WriteTransaction,
    redo: Vec<Redo>,
}

impl<'a> Tx<'a> {
    /// A recorder over `txn`.
    pub(crate) fn new(txn: &'a WriteTransaction) -> Tx<'a> {
        Tx {
            txn,
            redo: Vec::new(),
        }
    }

    /// The transaction, for reads only: a write made here directly would
    /// not be logged and would be lost in a crash before the next
    /// checkpoint. (Drop a table opened for reading before writing to it.)
    pub(crate) fn txn(&self) -> &'a WriteTransaction {
        self.txn
    }

    /// Applies `op` and logs it.
    pub(crate) fn write(&mut self, op: Redo) -> Result<()> {
        apply(self.txn, &op)?;
        self.redo.push(op);
        Ok(())
    }

    /// Logs `op`, which the caller already applied (audit records written
    /// by the chain writer).
    pub(crate) fn note(&mut self, op: Redo) {
        self.redo.push(op);
    }

    /// The logged writes, in order.
    pub(crate) fn into_redo(self) -> Vec<Redo> {
        self.redo
    }
}

/// Performs `op` on `txn`.
pub(crate) fn apply(txn: &WriteTransaction, op: &Redo) -> Result<()> {
    match op {
        Redo::OutboxPut {
            id,
            attempts,
            next_attempt_ms,
            target,
            frame,
        } => {
            txn.open_table(OUTBOX)?.insert(
                id.as_str(),
                (*attempts, *next_attempt_ms, target.as_str(), &frame[..]),
            )?;
        }
        Redo::OutboxRemove { id } => {
            txn.open_table(OUTBOX)?.remove(id.as_str())?;
        }
        Redo::DedupePut {
            sender,
            id,
            seen_ms,
        } => {
            txn.open_table(DEDUPE)?
                .insert((sender.as_str(), id.as_str()), *seen_ms)?;
            txn.open_table(DEDUPE_BY_TIME)?
                .insert((*seen_ms, sender.as_str(), id.as_str()), ())?;
        }
        Redo::DedupeRemove {
            sender,
            id,
            seen_ms,
        } => {
            let key = (sender.as_str(), id.as_str());
            txn.open_table(DEDUPE)?.remove(key)?;
            txn.open_table(DEDUPE_BY_TIME)?
                .remove((*seen_ms, key.0, key.1))?;
            txn.open_table(INBOUND_ACKS)?.remove(key)?;
        }
        Redo::AckPut { sender, id, ack } => {
            txn.open_table(INBOUND_ACKS)?
                .insert((sender.as_str(), id.as_str()), ack.as_slice())?;
        }
        Redo::InboxPut { seq, message } => {
            txn.open_table(INBOX)?.insert(*seq, &message[..])?;
        }
        Redo::InboxRemove { seq } => {
            txn.open_table(INBOX)?.remove(*seq)?;
        }
        Redo::MetaPut { key, value } => {
            txn.open_table(META)?
                .insert(key.as_str(), value.as_slice())?;
        }
        Redo::IdempotencyPut {
            key,
            created_ms,
            record,
            replaced_ms,
        } => {
            let mut by_time = txn.open_table(IDEMPOTENCY_BY_TIME)?;
            if let Some(old) = replaced_ms {
                by_time.remove((*old, key.as_str()))?;
            }
            by_time.insert((*created_ms, key.as_str()), ())?;
            txn.open_table(IDEMPOTENCY)?
                .insert(key.as_str(), record.as_slice())?;
        }
        Redo::IdempotencyRemove { key, created_ms } => {
            txn.open_table(IDEMPOTENCY_BY_TIME)?
                .remove((*created_ms, key.as_str()))?;
            txn.open_table(IDEMPOTENCY)?.remove(key.as_str())?;
        }
        Redo::AuditPut { seq, row } => {
            txn.open_table(AUDIT)?.insert(*seq, row.as_slice())?;
        }
    }
    Ok(())
}

// --- encoding -----------------------------------------------------------------

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    put_u32(out, v.len() as u32);
    out.extend_from_slice(v);
}

/// About how many bytes [`encode`] makes of `ops` (at least as many).
pub(crate) fn encoded_size(ops: &[Redo]) -> usize {
    5 + ops
        .iter()
        .map(|op| match op {
            Redo::OutboxPut { frame, .. } => frame.len() + 128,
            Redo::InboxPut { message, .. } => message.len() + 32,
            Redo::AckPut { ack, .. } => ack.len() + 128,
            Redo::AuditPut { row, .. } => row.len() + 16,
            Redo::IdempotencyPut { record, .. } => record.len() + 300,
            _ => 128,
        })
        .sum::<usize>()
}

/// The log record for one job's writes.
pub(crate) fn encode(ops: &[Redo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_size(ops));
    out.push(VERSION);
    put_u32(&mut out, ops.len() as u32);
    for op in ops {
        match op {
            Redo::OutboxPut {
                id,
                attempts,
                next_attempt_ms,
                target,
                frame,
            } => {
                out.push(1);
                put_bytes(&mut out, id.as_bytes());
                put_u32(&mut out, *attempts);
                put_u64(&mut out, *next_attempt_ms);
                put_bytes(&mut out, target.as_bytes());
                put_bytes(&mut out, frame);
            }
            Redo::OutboxRemove { id } => {
                out.push(2);
                put_bytes(&mut out, id.as_bytes());
            }
            Redo::DedupePut {
                sender,
                id,
                seen_ms,
            } => {
                out.push(3);
                put_bytes(&mut out, sender.as_bytes());
                put_bytes(&mut out, id.as_bytes());
                put_u64(&mut out, *seen_ms);
            }
            Redo::DedupeRemove {
                sender,
                id,
                seen_ms,
            } => {
                out.push(4);
                put_bytes(&mut out, sender.as_bytes());
                put_bytes(&mut out, id.as_bytes());
                put_u64(&mut out, *seen_ms);
            }
            Redo::AckPut { sender, id, ack } => {
                out.push(5);
                put_bytes(&mut out, sender.as_bytes());
                put_bytes(&mut out, id.as_bytes());
                put_bytes(&mut out, ack);
            }
            Redo::InboxPut { seq, message } => {
                out.push(6);
                put_u64(&mut out, *seq);
                put_bytes(&mut out, message);
            }
            Redo::InboxRemove { seq } => {
                out.push(7);
                put_u64(&mut out, *seq);
            }
            Redo::MetaPut { key, value } => {
                out.push(8);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            Redo::IdempotencyPut {
                key,
                created_ms,
                record,
                replaced_ms,
            } => {
                out.push(9);
                put_bytes(&mut out, key.as_bytes());
                put_u64(&mut out, *created_ms);
                put_bytes(&mut out, record);
                match replaced_ms {
                    Some(old) => {
                        out.push(1);
                        put_u64(&mut out, *old);
                    }
                    None => out.push(0),
                }
            }
            Redo::IdempotencyRemove { key, created_ms } => {
                out.push(10);
                put_bytes(&mut out, key.as_bytes());
                put_u64(&mut out, *created_ms);
            }
            Redo::AuditPut { seq, row } => {
                out.push(11);
                put_u64(&mut out, *seq);
                put_bytes(&mut out, row);
            }
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("{} bytes short", n - self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> std::result::Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        String::from_utf8(self.bytes()?).map_err(|_| "a key is not UTF-8".to_string())
    }
}

/// The writes of one log record; why not, for a record this version
/// cannot read.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Vec<Redo>, String> {
    let mut r = Reader { bytes };
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!(
            "record format {version}, this build reads {VERSION}"
        ));
    }
    let count = r.u32()?;
    let mut ops = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let op = match r.u8()? {
            1 => Redo::OutboxPut {
                id: r.string()?,
                attempts: r.u32()?,
                next_attempt_ms: r.u64()?,
                target: r.string()?,
                frame: r.bytes()?.into(),
            },
            2 => Redo::OutboxRemove { id: r.string()? },
            3 => Redo::DedupePut {
                sender: r.string()?,
                id: r.string()?,
                seen_ms: r.u64()?,
            },
            4 => Redo::DedupeRemove {
                sender: r.string()?,
                id: r.string()?,
                seen_ms: r.u64()?,
            },
            5 => Redo::AckPut {
                sender: r.string()?,
                id: r.string()?,
                ack: r.bytes()?,
            },
            6 => Redo::InboxPut {
                seq: r.u64()?,
                message: r.bytes()?.into(),
            },
            7 => Redo::InboxRemove { seq: r.u64()? },
            8 => Redo::MetaPut {
                key: r.string()?,
                value: r.bytes()?,
            },
            9 => Redo::IdempotencyPut {
                key: r.string()?,
                created_ms: r.u64()?,
                record: r.bytes()?,
                replaced_ms: match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    other => return Err(format!("bad option tag {other}")),
                },
            },
            10 => Redo::IdempotencyRemove {
                key: r.string()?,
                created_ms: r.u64()?,
            },
            11 => Redo::AuditPut {
                seq: r.u64()?,
                row: r.bytes()?,
            },
            tag => return Err(format!("unknown operation {tag}")),
        };
        ops.push(op);
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the last operation", r.bytes.len()));
    }
    Ok(ops)
}

/// A log record that does not decode: the log is from a newer build, or
/// damaged in a way its checksum did not catch.
pub(crate) fn undecodable(
    dir: &std::path::Path,
    pos: super::seglog::RecordPos,
    why: String,
) -> StoreError {
    StoreError::MessageLog(super::seglog::LogError::Corrupt {
        segment: dir.join(super::seglog::frame::segment_name(pos.segment)),
        offset: pos.offset,
        lsn: pos.lsn,
        reason: format!("the record does not decode: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_round_trips_and_a_cut_record_is_refused() {
        let ops = vec![
            Redo::OutboxPut {
                id: "e1".into(),
                attempts: 2,
                next_attempt_ms: 9,
                target: "peer".into(),
                frame: vec![1, 2, 3].into(),
            },
            Redo::OutboxRemove { id: "e1".into() },
            Redo::DedupePut {
                sender: "s".into(),
                id: "e2".into(),
                seen_ms: 5,
            },
            Redo::DedupeRemove {
                sender: "s".into(),
                id: "e2".into(),
                seen_ms: 5,
            },
            Redo::AckPut {
                sender: "s".into(),
                id: "e2".into(),
                ack: b"{}".to_vec(),
            },
            Redo::InboxPut {
                seq: 7,
                message: b"hello".to_vec().into(),
            },
            Redo::InboxRemove { seq: 7 },
            Redo::MetaPut {
                key: "k".into(),
                value: vec![0; 8],
            },
            Redo::IdempotencyPut {
                key: "key".into(),
                created_ms: 3,
                record: b"{}".to_vec(),
                replaced_ms: Some(1),
            },
            Redo::IdempotencyPut {
                key: "key2".into(),
                created_ms: 3,
                record: b"{}".to_vec(),
                replaced_ms: None,
            },
            Redo::IdempotencyRemove {
                key: "key".into(),
                created_ms: 3,
            },
            Redo::AuditPut {
                seq: 1,
                row: b"row".to_vec(),
            },
        ];
        let bytes = encode(&ops);
        assert_eq!(decode(&bytes), Ok(ops));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(decode(&newer).is_err());
    }
}
