//! Group commit for the state store: the one thread that writes
//! `state.redb`.
//!
//! redb admits one write transaction at a time and every durable commit
//! costs an `fdatasync`. Committing each change on its own would cap a
//! node at a few hundred durable changes per second and make concurrent
//! callers queue behind each other's flushes. Instead every change to the
//! store ([`crate::store::Store`]'s mutating methods, state changes made
//! together with their audit records, and plain audit appends from
//! [`crate::audit::AuditLog`]) becomes a *job* on one writer thread:
//!
//! 1. the writer takes everything queued (at most [`MAX_BATCH_JOBS`]);
//! 2. applies each job's state change to one write transaction, then
//!    chains and writes the job's audit records (if the change asked for
//!    them) — so a state change and its audit records are atomic;
//! 3. commits with `Durability::Immediate` (one `fdatasync` for the whole
//!    batch) and hands the batch to a notifier thread, which wakes every
//!    waiter while the writer already applies the next batch.
//!
//! A job whose change fails (say, an undecodable row) or panics is answered
//! with an error and the transaction is rolled back and redone without it,
//! so one bad job never takes its neighbours (or the writer thread) down
//! and never leaves a partial write. Changes are therefore `FnMut`: they may run more than once and
//! must touch nothing but the transaction. A failed commit answers every
//! job of the batch with the error; nothing of it is on disk and the audit
//! chain head does not advance. A job that returned `Ok` is on disk.
//!
//! A change runs on the writer thread, so it must never wait for another
//! job (that would deadlock the writer).
//!
//! Two refinements:
//!
//! * A job may carry a commit hook (`OnCommit`), run on the notifier
//!   thread in commit order once the job is committed, whether or not
//!   anybody waits for it. In-memory mirrors of a table (the outbox index in
//!   [`crate::store`]) are kept this way, so they follow the committed
//!   state exactly.
//! * A job may be `Persist::Lazy`: it waits (at most [`LAZY_FLUSH`]) to
//!   ride the next batch that holds a durable job instead of causing a
//!   commit of its own. It is still durable when its ticket resolves. A
//!   sender's outbox removals are lazy, so its deliveries add almost no
//!   commits to the ones its `send`s need.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability, WriteTransaction};

use super::record::{self as audit, AuditRecord, ChainHead, PreparedEvent, Sealed};
use super::redo::{self, Redo, Tx};
use super::seglog::SegmentLog;
use super::tables::StoreError;
use crate::clock::Clock;

/// Most jobs committed in one transaction.
pub const MAX_BATCH_JOBS: usize = 8192;

/// Longest a `Persist::Lazy` job waits for a durable job to share its
/// commit before it is committed on its own: long enough for the next
/// `send` at any useful rate to come along, short enough that a delivery
/// window whose slots wait for these commits turns over quickly when only
/// acknowledgements are being recorded.
pub const LAZY_FLUSH: std::time::Duration = std::time::Duration::from_millis(5);

/// How soon a job must be committed. Either way it is durable when its
/// ticket resolves; the difference is whom it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persist {
    /// Committed with the next batch.
    Durable,
    /// Rides the next batch that holds a durable job, or is committed
    /// [`LAZY_FLUSH`] after it was queued. For work nobody is waiting on
    /// with a deadline, such as removing an acknowledged outbox entry:
    /// a sender's deliveries then add no commits (and `fdatasync`s) of
    /// their own to the ones its `send`s need.
    Lazy,
}

/// Longest the state file goes without a durable commit while the
/// message log holds records it has not caught up with (a checkpoint).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Message-log bytes after which a checkpoint is due sooner.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// A batch of message-path changes larger than this is made durable by a
/// commit of the state file, not by the log (which would write it twice):
/// bulk payloads (a 16 MiB context-share) cost one write, not two.
pub const LOG_AT_MOST_BYTES: usize = 1 << 20;

/// The `meta` key of the last message-log record the state file holds.
pub(crate) const LOG_APPLIED_KEY: &str = "message_log_applied";

/// A state change: applied to the batch's transaction; returns its value
/// and whether the job's audit records are to be written with it.
pub(crate) type Change =
    Box<dyn FnMut(&WriteTransaction) -> Result<(Box<dyn Any + Send>, bool), StoreError> + Send>;

/// A message-path change: writes through a [`Tx`], so its writes are
/// logged (see [`crate::storage::redo`]).
pub(crate) type LoggedChange =
    Box<dyn FnMut(&mut Tx<'_>) -> Result<(Box<dyn Any + Send>, bool), StoreError> + Send>;

/// What a job changes besides its audit records.
pub(crate) enum ChangeKind {
    /// Peers, trust, spend, …: the batch commits durably to the state
    /// file.
    State(Change),
    /// The message path: durable in the message log, the state file
    /// catches up at the next checkpoint.
    Logged(LoggedChange),
}

/// Runs once a job's change is committed, with the change's value, before
/// its waiter is woken. Hooks run on the notifier thread in commit order,
/// whether or not anybody waits for the job, so in-memory mirrors of a
/// table (the outbox index) follow the committed state exactly.
pub(crate) type OnCommit = Box<dyn FnOnce(&(dyn Any + Send)) + Send>;

enum Job {
    /// Apply `change` (if any) and append `events` (if asked to).
    Write {
        change: Option<ChangeKind>,
        events: Vec<PreparedEvent>,
        on_commit: Option<OnCommit>,
        persist: Persist,
        reply: mpsc::SyncSender<Reply>,
    },
    /// The audit log opened: continue the chain from `head`, stamping
    /// records with `clock` (the system clock when `None`).
    InstallHead(ChainHead, Option<Arc<dyn Clock>>),
}

/// What a job produced.
pub(crate) struct Done {
    /// The change's value (`None` for a pure audit append).
    pub value: Option<Box<dyn Any + Send>>,
    /// The committed audit records (empty when the change declined them).
    pub records: Vec<AuditRecord>,
}

type Reply = Result<Done, StoreError>;

/// A queued job; [`Ticket::wait`] blocks until it is committed.
pub(crate) struct Ticket {
    rx: mpsc::Receiver<Reply>,
}

impl Ticket {
    /// Blocks until the job is durably committed (or failed).
    pub(crate) fn wait(self) -> Result<Done, StoreError> {
        self.rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// How much group commit has happened since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitStats {
    /// Durable transactions committed (one `fdatasync` each).
    pub commits: u64,
    /// Jobs (state changes and audit appends) they carried.
    pub jobs: u64,
    /// Time spent applying and committing batches, in microseconds.
    pub busy_us: u64,
    /// Batches made durable by the message log (one `fdatasync` each)
    /// rather than by a durable commit of the state file.
    #[serde(default)]
    pub logged: u64,
    /// Durable commits of the state file that were checkpoints (the
    /// state file catching up with the message log).
    #[serde(default)]
    pub checkpoints: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    busy_us: AtomicU64,
    logged: AtomicU64,
    checkpoints: AtomicU64,
}

/// A queued change whose value has type `R`.
pub(crate) struct TypedTicket<R> {
    ticket: Ticket,
    _value: std::marker::PhantomData<fn() -> R>,
}

impl<R: 'static> TypedTicket<R> {
    /// Blocks until the change is durably committed (or failed); its value
    /// and the audit records committed with it.
    pub(crate) fn wait(self) -> Result<(R, Vec<AuditRecord>), StoreError> {
        let done = self.ticket.wait()?;
        let value = done
            .value
            .and_then(|v| v.downcast::<R>().ok())
            .ok_or(StoreError::Closed)?;
        Ok((*value, done.records))
    }
}

/// The writer thread of one database (see the module docs).
pub(crate) struct Journal {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl Journal {
    /// Starts the writer and notifier threads for `db`, making
    /// message-path jobs durable in `log` when there is one (without, every
    /// batch is a durable commit of `db`).
    pub(crate) fn start(
        db: Arc<Database>,
        log: Option<Arc<SegmentLog>>,
    ) -> Result<Journal, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Completion>();
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| StoreError::Thread { source })
        };
        // Linux keeps 15 bytes of a thread's name (top, perf, /proc show
        // those): the two names must differ within them.
        let notifier = spawn("agentfed-notify", Box::new(move || notifier_loop(&done_rx)))?;
        let writer = spawn(
            "agentfed-commit",
            Box::new(move || writer_loop(&db, log, &rx, &done_tx, &writer_counters)),
        )?;
        Ok(Journal {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![writer, notifier]),
            counters,
        })
    }

    /// Commits and jobs so far.
    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            busy_us: self.counters.busy_us.load(Ordering::Relaxed),
            logged: self.counters.logged.load(Ordering::Relaxed),
            checkpoints: self.counters.checkpoints.load(Ordering::Relaxed),
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a job without waiting for its commit.
    pub(crate) fn submit(
        &self,
        change: Option<ChangeKind>,
        events: Vec<PreparedEvent>,
    ) -> Result<Ticket, StoreError> {
        self.submit_hooked(change, events, None, Persist::Durable)
    }

    /// [`Journal::submit`] with a hook run once the change is committed.
    pub(crate) fn submit_hooked(
        &self,
        change: Option<ChangeKind>,
        events: Vec<PreparedEvent>,
        on_commit: Option<OnCommit>,
        persist: Persist,
    ) -> Result<Ticket, StoreError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Job::Write {
            change,
            events,
            on_commit,
            persist,
            reply,
        })?;
        Ok(Ticket { rx })
    }

    /// Queues `change` for the next group commit without waiting; its
    /// `bool` says whether `events` are appended to the audit log with it.
    pub(crate) fn submit_typed<R, F>(
        &self,
        change: F,
        events: Vec<PreparedEvent>,
    ) -> Result<TypedTicket<R>, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<(R, bool), StoreError> + Send + 'static,
    {
        self.submit_typed_hooked(change, events, None::<fn(&R)>, Persist::Durable)
    }

    /// [`Journal::submit_typed`] with `on_commit` run (on the notifier
    /// thread, in commit order) with the change's value once it is
    /// committed (see [`OnCommit`]), and the given [`Persist`].
    pub(crate) fn submit_typed_hooked<R, F, H>(
        &self,
        mut change: F,
        events: Vec<PreparedEvent>,
        on_commit: Option<H>,
        persist: Persist,
    ) -> Result<TypedTicket<R>, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<(R, bool), StoreError> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let boxed: Change = Box::new(move |txn| {
            let (value, audit) = change(txn)?;
            Ok((Box::new(value) as Box<dyn Any + Send>, audit))
        });
        self.submit_kind(ChangeKind::State(boxed), events, on_commit, persist)
    }

    /// [`Journal::submit_typed_hooked`] for a message-path change, which
    /// writes through a [`Tx`] (see [`ChangeKind::Logged`]).
    pub(crate) fn submit_logged_hooked<R, F, H>(
        &self,
        mut change: F,
        events: Vec<PreparedEvent>,
        on_commit: Option<H>,
        persist: Persist,
    ) -> Result<TypedTicket<R>, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<(R, bool), StoreError> + Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let boxed: LoggedChange = Box::new(move |tx| {
            let (value, audit) = change(tx)?;
            Ok((Box::new(value) as Box<dyn Any + Send>, audit))
        });
        self.submit_kind(ChangeKind::Logged(boxed), events, on_commit, persist)
    }

    fn submit_kind<R, H>(
        &self,
        change: ChangeKind,
        events: Vec<PreparedEvent>,
        on_commit: Option<H>,
        persist: Persist,
    ) -> Result<TypedTicket<R>, StoreError>
    where
        R: Send + 'static,
        H: FnOnce(&R) + Send + 'static,
    {
        let hook = on_commit.map(|hook| -> OnCommit {
            Box::new(move |value: &(dyn Any + Send)| {
                if let Some(value) = value.downcast_ref::<R>() {
                    hook(value);
                }
            })
        });
        Ok(TypedTicket {
            ticket: self.submit_hooked(Some(change), events, hook, persist)?,
            _value: std::marker::PhantomData,
        })
    }

    /// [`Journal::submit_typed`], then waits for the commit.
    pub(crate) fn write<R, F>(
        &self,
        change: F,
        events: Vec<PreparedEvent>,
    ) -> Result<(R, Vec<AuditRecord>), StoreError>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<(R, bool), StoreError> + Send + 'static,
    {
        self.submit_typed(change, events)?.wait()
    }

    /// Continues the audit chain from `head` (called when the audit log
    /// opens, after it recovered the head from the table).
    pub(crate) fn install_head(
        &self,
        head: ChainHead,
        clock: Option<Arc<dyn Clock>>,
    ) -> Result<(), StoreError> {
        self.send(Job::InstallHead(head, clock))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and
        // exit; it then drops the completion sender and the notifier exits.
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        for thread in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = thread.join();
        }
    }
}

/// A write job as the writer holds it.
struct Pending {
    change: Option<ChangeKind>,
    events: Vec<PreparedEvent>,
    on_commit: Option<OnCommit>,
    persist: Persist,
    reply: mpsc::SyncSender<Reply>,
}

/// A job applied in the current attempt: its value and its records' seals.
type Applied = (Option<Box<dyn Any + Send>>, Vec<Sealed>);

/// One job's result inside a committed batch.
enum Outcome {
    Applied {
        value: Option<Box<dyn Any + Send>>,
        sealed: Vec<Sealed>,
    },
    Failed(StoreError),
}

/// A committed (or failed) batch on its way to the notifier thread.
struct Completion {
    batch: Vec<Pending>,
    outcome: Result<Vec<Outcome>, Arc<StoreError>>,
}

fn writer_loop(
    db: &Database,
    log: Option<Arc<SegmentLog>>,
    rx: &mpsc::Receiver<Job>,
    done: &mpsc::Sender<Completion>,
    counters: &Counters,
) {
    let mut writer = Writer {
        db,
        log,
        done,
        counters,
        head: None,
        clock: None,
        deferred: Vec::new(),
        deferred_since: None,
        unchecked: None,
        last_checkpoint: std::time::Instant::now(),
        broken: None,
    };
    loop {
        // Deferred jobs wait for company at most until LAZY_FLUSH is over;
        // log records the state file has not caught up with, at most until
        // the next checkpoint is due.
        let wait = match (writer.deferred_since, writer.unchecked.is_some()) {
            (Some(since), _) => Some(LAZY_FLUSH.saturating_sub(since.elapsed())),
            (None, true) => {
                Some(CHECKPOINT_INTERVAL.saturating_sub(writer.last_checkpoint.elapsed()))
            }
            (None, false) => None,
        };
        let first = match wait {
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !writer.commit(Vec::new()) {
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::InstallHead(h, c) => {
                    // Jobs queued before the install are committed first.
                    if !writer.commit(std::mem::take(&mut batch)) {
                        return;
                    }
                    writer.head = Some(h);
                    writer.clock = c;
                }
                Job::Write {
                    change,
                    events,
                    on_commit,
                    persist,
                    reply,
                } => batch.push(Pending {
                    change,
                    events,
                    on_commit,
                    persist,
                    reply,
                }),
            }
            if batch.len() < MAX_BATCH_JOBS {
                next = rx.try_recv().ok();
            }
        }
        let lazy = batch.iter().all(|job| job.persist == Persist::Lazy);
        let fits = batch.len() + writer.deferred.len() <= MAX_BATCH_JOBS;
        if lazy && fits {
            writer.defer(batch);
            // A steady trickle of lazy jobs must not postpone the oldest
            // past its deadline (the timeout above only fires when idle).
            if writer
                .deferred_since
                .is_some_and(|since| since.elapsed() >= LAZY_FLUSH)
                && !writer.commit(Vec::new())
            {
                return;
            }
        } else {
            // Deferred jobs first, on their own if both would exceed a batch.
            if !fits && !writer.commit(Vec::new()) {
                return;
            }
            if !writer.commit(batch) {
                return;
            }
        }
    }
    // Closing: deferred jobs are committed, and the state file catches up
    // with the message log, before the thread ends.
    writer.commit(Vec::new());
    if writer.unchecked.is_some() {
        writer.checkpoint();
    }
}

/// Message-log records the state file holds only in commits that were not
/// yet synced.
#[derive(Debug, Clone, Copy)]
struct Unchecked {
    /// The first such record.
    first_lsn: u64,
    /// Their bytes.
    bytes: u64,
}

/// The writer thread's state between batches.
struct Writer<'a> {
    db: &'a Database,
    log: Option<Arc<SegmentLog>>,
    done: &'a mpsc::Sender<Completion>,
    counters: &'a Counters,
    head: Option<ChainHead>,
    clock: Option<Arc<dyn Clock>>,
    /// [`Persist::Lazy`] jobs waiting to ride the next commit, oldest first.
    deferred: Vec<Pending>,
    /// When the oldest deferred job arrived.
    deferred_since: Option<std::time::Instant>,
    /// Log records not yet covered by a durable commit of the state file.
    unchecked: Option<Unchecked>,
    /// When the state file was last committed durably.
    last_checkpoint: std::time::Instant,
    /// Set when the message log and the state file may disagree (a commit
    /// failed after its log records were durable): nothing more is
    /// written until a restart replays the log.
    broken: Option<String>,
}

impl Writer<'_> {
    fn defer(&mut self, batch: Vec<Pending>) {
        if !batch.is_empty() {
            self.deferred_since
                .get_or_insert_with(std::time::Instant::now);
            self.deferred.extend(batch);
        }
    }

    /// Whether the next commit must be durable to bound the log's lead.
    fn checkpoint_due(&self) -> bool {
        self.unchecked.is_some_and(|u| {
            u.bytes >= CHECKPOINT_BYTES || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        })
    }

    /// Commits the deferred jobs, then `batch`, in one transaction (a
    /// checkpoint when nothing is queued but one is due); `false` once the
    /// notifier is gone.
    fn commit(&mut self, batch: Vec<Pending>) -> bool {
        let mut all = std::mem::take(&mut self.deferred);
        self.deferred_since = None;
        all.extend(batch);
        if all.is_empty() {
            if self.checkpoint_due() {
                self.checkpoint();
            }
            return true;
        }
        let started = std::time::Instant::now();
        let outcome = self.commit_batch(&mut all).map_err(Arc::new);
        let busy = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters.busy_us.fetch_add(busy, Ordering::Relaxed);
        if outcome.is_ok() {
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters
                .jobs
                .fetch_add(all.len() as u64, Ordering::Relaxed);
        }
        self.done
            .send(Completion {
                batch: all,
                outcome,
            })
            .is_ok()
    }

    /// A durable commit with no job: the state file catches up with the
    /// log, whose records up to here are then released.
    fn checkpoint(&mut self) {
        if let Err(e) = self.commit_batch(&mut []) {
            tracing::warn!("state file checkpoint failed (the message log keeps the records): {e}");
        }
    }

    /// Applies and commits one batch (module docs). The chain head advances
    /// only when the commit succeeds.
    fn commit_batch(&mut self, batch: &mut [Pending]) -> Result<Vec<Outcome>, StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::MessageLog(super::seglog::LogError::Poisoned(
                why.clone(),
            )));
        }
        // A batch with a state change, or no log, commits the state file
        // durably; a batch of message-path jobs is made durable by the log.
        let durable = self.log.is_none()
            || batch.is_empty()
            || self.checkpoint_due()
            || batch
                .iter()
                .any(|job| matches!(job.change, Some(ChangeKind::State(_))));
        let mut failed: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
        'attempt: loop {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let mut chain = self.head.clone();
            let now = self
                .clock
                .as_deref()
                .map_or_else(audit::now_ms, |c| c.now_ms());
            let ts_ms = now.max(chain.as_ref().map_or(0, |h| h.ts_ms));
            let mut results: Vec<Option<Applied>> = Vec::with_capacity(batch.len());
            let mut logged: Vec<Vec<Redo>> = Vec::new();
            let mut logged_bytes = 0usize;
            for (job, failure) in batch.iter_mut().zip(failed.iter_mut()) {
                if failure.is_some() {
                    results.push(None);
                    continue;
                }
                let mut tx = Tx::new(&txn);
                let applied = match job.change.as_mut() {
                    None => Ok((None, true)),
                    // A panicking change fails its own job only: the writer
                    // thread must outlive it, or every later write would fail.
                    Some(change) => {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match change {
                            ChangeKind::State(change) => change(&txn),
                            ChangeKind::Logged(change) => change(&mut tx),
                        }))
                        .unwrap_or(Err(StoreError::InvalidValue("a state change panicked")))
                        .map(|(value, audit)| (Some(value), audit))
                    }
                };
                let (value, audit) = match applied {
                    Ok(applied) => applied,
                    Err(e) => {
                        *failure = Some(e);
                        drop(tx);
                        let _ = txn.abort();
                        continue 'attempt;
                    }
                };
                let sealed = if audit && !job.events.is_empty() {
                    let Some(chain) = chain.as_mut() else {
                        *failure = Some(StoreError::AuditNotOpen);
                        drop(tx);
                        let _ = txn.abort();
                        continue 'attempt;
                    };
                    let mut rows = Vec::new();
                    let sealed = audit::write_chained(
                        &txn,
                        chain,
                        &job.events,
                        ts_ms,
                        (!durable).then_some(&mut rows),
                    )?;
                    if !durable {
                        for (seq, row) in rows {
                            tx.note(Redo::AuditPut { seq, row });
                        }
                        tx.note(Redo::MetaPut {
                            key: audit::HEAD_KEY.to_string(),
                            value: audit::head_bytes(chain),
                        });
                    }
                    sealed
                } else {
                    Vec::new()
                };
                let redo = tx.into_redo();
                if !durable && !redo.is_empty() {
                    logged_bytes += redo::encoded_size(&redo);
                    logged.push(redo);
                }
                results.push(Some((value, sealed)));
            }
            if let Some(chain) = chain.as_ref()
                && chain.seq != self.head.as_ref().map_or(0, |h| h.seq)
            {
                audit::write_head(&txn, chain)?;
            }
            // A batch this large would be written twice (log, then state
            // file): one durable commit of the state file writes it once.
            let durable = if !durable && logged_bytes > LOG_AT_MOST_BYTES {
                txn.set_durability(Durability::Immediate)?;
                true
            } else {
                durable
            };
            if let Some(log) = self.log.clone() {
                if durable {
                    // Everything logged so far is in this durable state.
                    let through = log.next_lsn().saturating_sub(1);
                    put_log_applied(&txn, through)?;
                    txn.commit().map_err(|e| self.break_on(e.into()))?;
                    self.after_checkpoint(&log, through);
                } else {
                    // The records are durable before the state file commit
                    // (which is not synced): a crash replays them.
                    let records: Vec<Vec<u8>> =
                        logged.iter().map(|redo| redo::encode(redo)).collect();
                    let bytes = records.iter().map(|r| r.len() as u64).sum::<u64>();
                    let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
                    let positions = log.append_batch(&payloads)?;
                    if let (Some(first), Some(last)) = (
                        positions.first().map(|p| p.lsn),
                        positions.last().map(|p| p.lsn),
                    ) {
                        put_log_applied(&txn, last)?;
                        let unchecked = self.unchecked.get_or_insert(Unchecked {
                            first_lsn: first,
                            bytes: 0,
                        });
                        unchecked.bytes += bytes;
                    }
                    txn.commit().map_err(|e| self.break_on(e.into()))?;
                    self.counters.logged.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                txn.commit()?;
            }
            self.head = chain;
            return Ok(results
                .into_iter()
                .zip(failed)
                .map(|(result, failure)| match (result, failure) {
                    (Some((value, sealed)), _) => Outcome::Applied { value, sealed },
                    (None, Some(e)) => Outcome::Failed(e),
                    (None, None) => Outcome::Failed(StoreError::Closed),
                })
                .collect());
        }
    }

    /// A commit failed after log records may have been made durable: the
    /// log and the state file may now disagree until a restart replays
    /// the log, so nothing more is written.
    fn break_on(&mut self, e: StoreError) -> StoreError {
        let why = format!("a state file commit failed: {e}");
        tracing::error!("{why}; restart the node to replay the message log");
        self.broken = Some(why);
        e
    }

    /// The state file now holds every log record up to `through`: they are
    /// released (and segments holding only them deleted).
    fn after_checkpoint(&mut self, log: &SegmentLog, through: u64) {
        self.last_checkpoint = std::time::Instant::now();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        if let Some(unchecked) = self.unchecked.take()
            && let Err(e) = log.release_all(unchecked.first_lsn..=through)
        {
            tracing::warn!("releasing checkpointed message-log records: {e}");
        }
    }
}

/// Records in `txn` that the state file holds the log up to `lsn`.
pub(crate) fn put_log_applied(txn: &WriteTransaction, lsn: u64) -> Result<(), StoreError> {
    txn.open_table(super::tables::META)?
        .insert(LOG_APPLIED_KEY, lsn.to_be_bytes().as_slice())?;
    Ok(())
}

fn notifier_loop(rx: &mpsc::Receiver<Completion>) {
    while let Ok(Completion { batch, outcome }) = rx.recv() {
        match outcome {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let reply = match outcome {
                        Outcome::Applied { value, sealed } => {
                            if let (Some(hook), Some(value)) = (job.on_commit, value.as_deref()) {
                                // A panicking hook must not take the
                                // notifier (and every later waiter) down.
                                let _ =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        hook(value)
                                    }));
                            }
                            Ok(Done {
                                value,
                                records: job
                                    .events
                                    .into_iter()
                                    .zip(sealed)
                                    .map(|(event, seal)| event.into_record(seal))
                                    .collect(),
                            })
                        }
                        Outcome::Failed(e) => Err(e),
                    };
                    // A waiter that gave up is fine: the job is committed.
                    let _ = job.reply.send(reply);
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Batch(Arc::clone(&e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redb::{ReadableDatabase, TableDefinition};

    use super::*;
    use crate::audit::{AuditConfig, AuditEvent, AuditLog, AuditQuery, EventType};
    use crate::store::Store;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const SCRATCH: TableDefinition<u64, u64> = TableDefinition::new("journal_test_scratch");

    fn put(key: u64) -> ChangeKind {
        ChangeKind::State(Box::new(move |txn| {
            txn.open_table(SCRATCH)?.insert(key, key)?;
            Ok((Box::new(key) as Box<dyn Any + Send>, true))
        }))
    }

    fn keys(store: &Store) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
        let txn = store.database().begin_read()?;
        let table = match txn.open_table(SCRATCH) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in redb::ReadableTable::iter(&table)? {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// Holds the writer in a change (returning once it is held) so the
    /// next jobs queue up and land in one batch together.
    fn stall(journal: &Journal) -> Result<Ticket, StoreError> {
        let (started_tx, started) = mpsc::channel();
        let ticket = journal.submit(
            Some(ChangeKind::State(Box::new(move |_txn| {
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_millis(300));
                Ok((Box::new(()) as Box<dyn Any + Send>, false))
            }))),
            Vec::new(),
        )?;
        started.recv().map_err(|_| StoreError::Closed)?;
        Ok(ticket)
    }

    #[test]
    fn a_failing_change_is_rolled_back_alone_and_its_batch_commits() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let journal = Arc::clone(store.journal());
        let before = journal.stats();
        let stalled = stall(&journal)?;
        let first = journal.submit(Some(put(1)), Vec::new())?;
        // Writes, then fails: its write must not survive.
        let failing = journal.submit(
            Some(ChangeKind::State(Box::new(|txn| {
                txn.open_table(SCRATCH)?.insert(99, 99)?;
                Err(StoreError::InvalidValue("refused on purpose"))
            }))),
            Vec::new(),
        )?;
        let third = journal.submit(Some(put(3)), Vec::new())?;
        stalled.wait()?;
        assert_eq!(
            first
                .wait()?
                .value
                .and_then(|v| v.downcast::<u64>().ok())
                .map(|v| *v),
            Some(1)
        );
        assert!(matches!(failing.wait(), Err(StoreError::InvalidValue(_))));
        assert!(third.wait().is_ok());
        assert_eq!(keys(&store)?, vec![1, 3]);
        // The stall, then one batch for the other three jobs.
        let after = journal.stats();
        assert_eq!(after.commits - before.commits, 2, "{before:?} -> {after:?}");
        assert_eq!(after.jobs - before.jobs, 4);
        Ok(())
    }

    #[test]
    fn commit_hooks_run_in_commit_order_only_for_committed_jobs() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let journal = Arc::clone(store.journal());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook = |seen: &Arc<Mutex<Vec<u64>>>| {
            let seen = Arc::clone(seen);
            Some(move |v: &u64| seen.lock().unwrap_or_else(|p| p.into_inner()).push(*v))
        };
        let stalled = stall(&journal)?;
        // Nobody waits for these two: their hooks run all the same.
        drop(put_typed(&journal, 5, hook(&seen), Persist::Durable)?);
        let failing = journal.submit_typed_hooked(
            |_txn| Err::<(u64, bool), _>(StoreError::InvalidValue("refused on purpose")),
            Vec::new(),
            hook(&seen),
            Persist::Durable,
        )?;
        drop(put_typed(&journal, 6, hook(&seen), Persist::Durable)?);
        stalled.wait()?;
        assert!(failing.wait().is_err());
        // A later job's reply comes after the earlier hooks ran.
        journal.submit(Some(put(7)), Vec::new())?.wait()?;
        assert_eq!(*seen.lock().unwrap_or_else(|p| p.into_inner()), vec![5, 6]);
        assert_eq!(keys(&store)?, vec![5, 6, 7]);
        Ok(())
    }

    /// Queues an insert of `key` into the scratch table, yielding `key`.
    fn put_typed(
        journal: &Journal,
        key: u64,
        hook: Option<impl FnOnce(&u64) + Send + 'static>,
        persist: Persist,
    ) -> Result<TypedTicket<u64>, StoreError> {
        journal.submit_typed_hooked(
            move |txn| {
                txn.open_table(SCRATCH)?.insert(key, key)?;
                Ok((key, false))
            },
            Vec::new(),
            hook,
            persist,
        )
    }

    fn lazy_put(journal: &Journal, key: u64) -> Result<TypedTicket<u64>, StoreError> {
        put_typed(journal, key, None::<fn(&u64)>, Persist::Lazy)
    }

    #[test]
    fn lazy_jobs_ride_the_next_durable_commit_or_wait_at_most_the_flush_delay() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let journal = Arc::clone(store.journal());
        // Alone: committed on its own once LAZY_FLUSH is over.
        let before = journal.stats();
        let started = std::time::Instant::now();
        lazy_put(&journal, 1)?.wait()?;
        assert!(
            started.elapsed() >= LAZY_FLUSH / 2,
            "{:?}",
            started.elapsed()
        );
        let alone = journal.stats();
        assert_eq!(
            (alone.commits - before.commits, alone.jobs - before.jobs),
            (1, 1)
        );
        // With a durable job behind it: one commit for both (queued while
        // the writer is held, so they are picked up together).
        let stalled = stall(&journal)?;
        let held = journal.stats();
        let lazy = lazy_put(&journal, 2)?;
        let durable = journal.submit(Some(put(3)), Vec::new())?;
        stalled.wait()?;
        durable.wait()?;
        lazy.wait()?;
        let after = journal.stats();
        assert_eq!(
            (after.commits - held.commits, after.jobs - held.jobs),
            (2, 3),
            "the stall, then one commit for both: {held:?} -> {after:?}"
        );
        assert_eq!(keys(&store)?, vec![1, 2, 3]);
        Ok(())
    }

    #[test]
    fn closing_the_store_commits_deferred_jobs() -> TestResult {
        let dir = tempfile::tempdir()?;
        {
            let store = Store::open_in_home(dir.path())?;
            // Nobody waits: closing must not drop it.
            drop(lazy_put(store.journal(), 9)?);
        }
        let store = Store::open_in_home(dir.path())?;
        assert_eq!(keys(&store)?, vec![9]);
        Ok(())
    }

    #[test]
    fn a_panicking_change_fails_alone_and_the_writer_lives_on() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let journal = Arc::clone(store.journal());
        let stalled = stall(&journal)?;
        let panicking = journal.submit(
            Some(ChangeKind::State(Box::new(|txn| {
                txn.open_table(SCRATCH)?.insert(13, 13)?;
                panic!("a bug in a state change");
            }))),
            Vec::new(),
        )?;
        let neighbour = journal.submit(Some(put(2)), Vec::new())?;
        stalled.wait()?;
        assert!(matches!(panicking.wait(), Err(StoreError::InvalidValue(_))));
        assert!(neighbour.wait().is_ok());
        // Later jobs still commit.
        journal.submit(Some(put(4)), Vec::new())?.wait()?;
        assert_eq!(keys(&store)?, vec![2, 4]);
        Ok(())
    }

    #[test]
    fn a_change_commits_with_its_audit_records_or_declines_them() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let log = AuditLog::open(&store, AuditConfig::default())?;
        let event = |s: &str| AuditEvent::new(EventType::MessageReceived, s.to_string());
        let (value, records) = store
            .submit_recorded(
                log.recorder(),
                |txn| {
                    txn.open_table(SCRATCH)?.insert(7, 7)?;
                    Ok((7u64, true))
                },
                vec![event("kept")],
                None::<fn(&u64)>,
                Persist::Durable,
            )?
            .wait()?;
        assert_eq!(value, 7);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].summary, "kept");
        let (_, declined) = store
            .submit_recorded(
                log.recorder(),
                |txn| {
                    txn.open_table(SCRATCH)?.insert(8, 8)?;
                    Ok(((), false))
                },
                vec![event("declined")],
                None::<fn(&())>,
                Persist::Durable,
            )?
            .wait()?;
        assert!(declined.is_empty());
        assert_eq!(keys(&store)?, vec![7, 8]);
        let summaries: Vec<String> = log
            .query(&AuditQuery::default())?
            .into_iter()
            .map(|r| r.summary)
            .collect();
        assert_eq!(summaries, vec!["kept".to_string()]);
        assert_eq!(log.verify()?, 1);
        Ok(())
    }

    #[test]
    fn audit_records_without_an_open_log_are_refused_not_written() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open_in_home(dir.path())?;
        let prepared = crate::audit::prepare(
            AuditEvent::new(EventType::MessageReceived, "x"),
            crate::audit::ComplianceMode::Standard,
        )?;
        let outcome = store.journal().submit(Some(put(5)), vec![prepared])?.wait();
        assert!(
            matches!(outcome, Err(StoreError::AuditNotOpen)),
            "{:?}",
            outcome.err()
        );
        assert!(keys(&store)?.is_empty());
        Ok(())
    }
}
