//! The message log (`agentfed::seglog`) beside a redb commit of the same
//! work, on the same disk: the numbers behind the storage decision.
//!
//! ```text
//! cargo bench -p agentfed --bench seglog
//! AGENTFED_BENCH_RECORDS=1000000 cargo bench -p agentfed --bench seglog   # the default
//! AGENTFED_BENCH_DIR=/some/disk cargo bench -p agentfed --bench seglog    # another disk
//! ```
//!
//! Every append counted is durable when it is answered (`fdatasync` for
//! the log, `Durability::Immediate` for redb). Scenarios:
//!
//! * `durable commit x1`: one writer, one record per commit: the latency
//!   floor (log append + `fdatasync` against a one-row redb commit).
//! * `paced 1000/s`: one writer at 1,000 records/s: the p50/p99 a send
//!   waits for its record to be durable at the wire bench's rate.
//! * `group T writers`: T threads appending as fast as they can: records
//!   per second and records per `fdatasync`.
//! * `recovery`: a log of N records (default 1,000,000, 300-byte
//!   payloads) reopened: the scan, every checksum, every record handed to
//!   the caller.
//! * `retention`: N records, each released 1,000 records after it was
//!   written (messages acknowledged or drained): the log's steady size.
//! * `message path`: M messages (default 1,000,000, 1 KB payloads)
//!   through a sender's store (outbox put, `message_sent` record, outbox
//!   removal on acknowledgement, `delivered` record) and a receiver's
//!   (dedupe + inbox + stored ack, `message_received` record, inbox drained
//!   every 1,000): bytes on disk per message, and the state file and log
//!   sizes afterwards (`AGENTFED_BENCH_MESSAGES` sets M).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use agentfed::audit::{AuditConfig, AuditEvent, AuditLog, EventType};
use agentfed::seglog::{LogError, LogOptions, SegmentLog};
use agentfed::store::{OutboxEntry, STATE_FILE, Store, message_log_dir};
use redb::{Database, Durability, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("bench");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("AGENTFED_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn open_log(dir: &Path) -> SegmentLog {
    let (log, _) = SegmentLog::open(dir, LogOptions::default(), |_, _| -> Result<(), LogError> {
        Ok(())
    })
    .expect("opening the log");
    log
}

fn body(size: usize, n: u64) -> Vec<u8> {
    let mut body = format!("{n:016}").into_bytes();
    body.resize(size, b'm');
    body
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  ({} samples)",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
        samples.len()
    );
}

fn single_commits(count: u64) {
    let dir = bench_dir();
    let log = open_log(dir.path());
    let samples = (0..count)
        .map(|n| {
            let started = Instant::now();
            log.append_durable(body(600, n)).expect("append");
            started.elapsed()
        })
        .collect();
    report("log: durable commit x1", samples);

    let db = Database::create(dir.path().join("bench.redb")).expect("redb");
    let samples = (0..count)
        .map(|n| {
            let started = Instant::now();
            let mut txn = db.begin_write().expect("txn");
            txn.set_durability(Durability::Immediate)
                .expect("durability");
            txn.open_table(TABLE)
                .expect("table")
                .insert(n, body(600, n).as_slice())
                .expect("insert");
            txn.commit().expect("commit");
            started.elapsed()
        })
        .collect();
    report("redb: durable commit x1", samples);

    // What the state file still costs a batch once the log makes it
    // durable: the same commit without its sync.
    let samples = (count..count * 2)
        .map(|n| {
            let started = Instant::now();
            let mut txn = db.begin_write().expect("txn");
            txn.set_durability(Durability::None).expect("durability");
            txn.open_table(TABLE)
                .expect("table")
                .insert(n, body(600, n).as_slice())
                .expect("insert");
            txn.commit().expect("commit");
            started.elapsed()
        })
        .collect();
    report("redb: unsynced commit x1", samples);
}

fn paced(rate: u64, seconds: u64) {
    let dir = bench_dir();
    let log = Arc::new(open_log(dir.path()));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut waiters = Vec::new();
    for n in 0..rate * seconds {
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let log = log.clone();
        // Each send waits on its own, as concurrent senders do.
        let queued = Instant::now();
        let ticket = log.append(body(600, n)).expect("append");
        waiters.push(std::thread::spawn(move || {
            ticket.wait().expect("durable");
            queued.elapsed()
        }));
    }
    let samples = waiters
        .into_iter()
        .map(|w| w.join().expect("waiter"))
        .collect();
    report(&format!("log: paced {rate}/s"), samples);
}

fn group(threads: usize, per_thread: u64) {
    let dir = bench_dir();
    let log = Arc::new(open_log(dir.path()));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (log, barrier) = (log.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for n in 0..per_thread {
                    log.append_durable(body(600, t as u64 * per_thread + n))
                        .expect("append");
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for worker in workers {
        worker.join().expect("worker");
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    println!(
        "log: group {threads:>3} writers            {:>9.0} records/s  {:>6.1} records per fdatasync",
        stats.records as f64 / elapsed.as_secs_f64(),
        stats.records as f64 / stats.batches as f64
    );
}

/// Writes `records` records from 16 threads (so batches are realistic),
/// releasing each once 1,000 newer ones exist when `release` is set.
fn fill(dir: &Path, records: u64, release: bool) -> SegmentLog {
    let log = Arc::new(open_log(dir));
    let threads = 16u64;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tickets = std::collections::VecDeque::new();
                for n in (t..records).step_by(threads as usize) {
                    tickets.push_back(log.append(body(300, n)).expect("append"));
                    if tickets.len() >= 64 {
                        let pos = tickets.pop_front().map(|t| t.wait().expect("durable"));
                        if let (true, Some(pos)) = (release, pos)
                            && pos.lsn > 1_000
                        {
                            log.release_all(pos.lsn - 1_000..=pos.lsn - 1_000)
                                .expect("release");
                        }
                    }
                }
                for ticket in tickets {
                    ticket.wait().expect("durable");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    Arc::into_inner(log).expect("the only handle")
}

fn recovery(records: u64) {
    let dir = bench_dir();
    let started = Instant::now();
    let log = fill(dir.path(), records, false);
    let wrote = started.elapsed();
    let stats = log.stats();
    drop(log);
    println!(
        "log: wrote {records} records of 300 B in {:.1} s; {:.1} bytes on disk per record ({} segments)",
        wrote.as_secs_f64(),
        stats.bytes_on_disk as f64 / records as f64,
        stats.segments
    );
    for run in 1..=3 {
        let mut seen = 0u64;
        let mut sum = 0u64;
        let started = Instant::now();
        let (log, report) =
            SegmentLog::open(dir.path(), LogOptions::default(), |pos, body: &[u8]| {
                seen += 1;
                sum = sum.wrapping_add(pos.lsn ^ u64::from(body[0]));
                Ok::<(), LogError>(())
            })
            .expect("reopen");
        let elapsed = started.elapsed();
        assert_eq!(seen, records, "every record handed back");
        assert!(report.cut.is_none());
        println!(
            "log: recovery of {records} records, run {run}: {:.3} s ({:.0} records/s, {:.0} MB/s)",
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64(),
            report.bytes as f64 / elapsed.as_secs_f64() / 1e6
        );
        drop(log);
    }
}

fn retention(records: u64) {
    let dir = bench_dir();
    let log = fill(dir.path(), records, true);
    let stats = log.stats();
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log: retention after {records} records released 1,000 behind: {:.1} MiB on disk in {} segments ({} deleted), {} live records",
        on_disk as f64 / (1 << 20) as f64,
        stats.segments,
        stats.segments_deleted,
        stats.live_records
    );
}

fn dir_bytes(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| dir_bytes(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

fn message_path(messages: u64) {
    let dir = bench_dir();
    let sender_path = dir.path().join("sender").join(STATE_FILE);
    let receiver_path = dir.path().join("receiver").join(STATE_FILE);
    for path in [&sender_path, &receiver_path] {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("home");
    }
    let sender = Arc::new(Store::open(&sender_path).expect("sender store"));
    let receiver = Arc::new(Store::open(&receiver_path).expect("receiver store"));
    let sender_audit = Arc::new(AuditLog::open(&sender, AuditConfig::default()).expect("audit"));
    let receiver_audit =
        Arc::new(AuditLog::open(&receiver, AuditConfig::default()).expect("audit"));
    let payload = body(1024, 0);
    let threads = 16u64;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (sender, receiver) = (sender.clone(), receiver.clone());
            let (sender_audit, receiver_audit) = (sender_audit.clone(), receiver_audit.clone());
            let payload = payload.clone();
            std::thread::spawn(move || {
                for n in (t..messages).step_by(threads as usize) {
                    let id = format!("{n:032x}");
                    sender
                        .outbox_put(&OutboxEntry {
                            envelope_id: id.clone(),
                            target: "receiver".into(),
                            bytes: payload.clone().into(),
                            attempts: 0,
                            next_attempt_ms: n,
                        })
                        .expect("outbox put");
                    sender_audit
                        .submit(
                            AuditEvent::new(EventType::MessageSent, format!("{id} queued"))
                                .with_peer("receiver"),
                        )
                        .expect("audit");
                    receiver
                        .commit_inbound(
                            "sender",
                            &id,
                            n,
                            Some(&payload),
                            b"{\"status\":\"accepted\"}",
                        )
                        .expect("inbound");
                    receiver_audit
                        .submit(
                            AuditEvent::new(EventType::MessageReceived, format!("{id} received"))
                                .with_peer("sender"),
                        )
                        .expect("audit");
                    sender.outbox_remove(&id).expect("outbox remove");
                    sender_audit
                        .submit(
                            AuditEvent::new(EventType::MessageSent, format!("{id} delivered"))
                                .with_peer("receiver"),
                        )
                        .expect("audit");
                    if t == 0 && n % 1_000 == 0 {
                        receiver.inbox_remove_through(u64::MAX).expect("drain");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    receiver.inbox_remove_through(u64::MAX).expect("drain");
    let elapsed = started.elapsed();
    let (sender_stats, receiver_stats) = (sender.commit_stats(), receiver.commit_stats());
    let live_log =
        dir_bytes(&message_log_dir(&sender_path)) + dir_bytes(&message_log_dir(&receiver_path));
    drop((sender_audit, receiver_audit));
    drop((sender, receiver));
    let redb = dir_bytes(&sender_path) + dir_bytes(&receiver_path);
    let log =
        dir_bytes(&message_log_dir(&sender_path)) + dir_bytes(&message_log_dir(&receiver_path));
    println!(
        "store: {messages} messages of 1 KB through a sender's and a receiver's store in {:.1} s ({:.0} messages/s; \
         {} / {} batches, {} / {} by the log, {} / {} checkpoints)",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        sender_stats.commits,
        receiver_stats.commits,
        sender_stats.logged,
        receiver_stats.logged,
        sender_stats.checkpoints,
        receiver_stats.checkpoints,
    );
    println!(
        "store: on disk after, inboxes drained: state files {:.1} MiB ({:.0} bytes per message: audit records, \
         the 7-day dedupe window and acks), message logs {:.1} MiB while running, {:.1} MiB after a clean stop",
        redb as f64 / (1 << 20) as f64,
        redb as f64 / messages as f64,
        live_log as f64 / (1 << 20) as f64,
        log as f64 / (1 << 20) as f64,
    );
}

fn main() {
    // `cargo test --benches` runs this with `--test`: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let records = std::env::var("AGENTFED_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    println!("message log bench ({records} records for recovery and retention)");
    single_commits(if quick { 50 } else { 500 });
    paced(1_000, if quick { 1 } else { 5 });
    for threads in [4, 16, 64] {
        group(threads, if quick { 50 } else { 2_000 });
    }
    recovery(records);
    retention(records);
    let messages = std::env::var("AGENTFED_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5_000 } else { 1_000_000 });
    message_path(messages);
}
