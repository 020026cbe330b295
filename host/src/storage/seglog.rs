//! An append-only segment log with group commit: the storage for the
//! message path (outbox, inbox, dedupe and their audit records).
//!
//! Why not redb for these: a redb durable commit rewrites about 22 pages
//! and syncs them (1–3.5 ms); appending a batch to a file and one
//! `fdatasync` costs a quarter of that on the same disk, and concurrent
//! writers share it. See `docs/storage.md` for the decision and its
//! numbers.
//!
//! What this module guarantees:
//!
//! * **Group commit.** [`SegmentLog::append`] queues one record; one
//!   writer thread takes everything queued, writes it with one `pwrite`
//!   and makes it durable with one `fdatasync`, then answers every ticket
//!   of the batch. A ticket answers only once its record is durable. One
//!   record is the unit of atomicity: callers put a state change and its
//!   audit record in the same record.
//! * **Framing.** Every record carries its length, its sequence number
//!   (LSN), its place in its batch and a CRC32C over all of it
//!   ([`frame`]).
//! * **Recovery.** [`SegmentLog::open`] scans every segment and hands each
//!   record to the caller in order. A torn or damaged tail (only the last
//!   batch can be torn, because a batch is written only after the one
//!   before it is durable) is cut at its first bad record and reported in
//!   [`Recovery::cut`]. A damaged record that some later batch follows had
//!   been durable: that is a loud [`LogError::Corrupt`] naming the segment,
//!   the byte offset and the LSN, never a silent skip. So is a missing
//!   segment in the middle.
//! * **Directory syncs.** A new segment is written, synced and then its
//!   directory entry is synced before any record goes into it; removals
//!   are followed by a directory sync.
//! * **Retention.** Callers [`SegmentLog::release`] records whose data no
//!   longer matters; a segment whose records are all released is deleted
//!   once every older segment is (deleting only a prefix means a later
//!   record that cancels an earlier one can never outlive it on disk).
//!
//! A failed write or sync *poisons* the log: the state of the file is
//! unknown, so every later append fails until the node restarts and
//! recovery reads back what is really on disk (PostgreSQL's lesson from
//! "fsyncgate").

pub mod frame;
pub mod fs;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frame::{FRAME_LEN, FrameHead, HEADER_LEN};
use fs::{LogFile, LogFs, OsFs};

/// The LSN of a new log's first record.
pub const FIRST_LSN: u64 = 1;

/// Appends that may wait for the writer before `append` blocks.
const MAX_QUEUED: usize = 16_384;

/// Sizes of the log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one begun once it is this large
    /// (checked before each batch, so a segment may exceed it by one
    /// batch).
    pub segment_bytes: u64,
    /// The largest record payload (16 MiB messages plus what a caller
    /// wraps around them).
    pub max_record_bytes: u32,
    /// A batch stops taking records past this many payload bytes (it
    /// always takes at least one).
    pub max_batch_bytes: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// The log's next LSN is at least this: a caller that already holds
    /// every record below it (the state file, after a checkpoint) sets it,
    /// so a log lost or removed by hand never hands out an LSN the caller
    /// would take for one it holds. When every record is below it (say,
    /// after a clean stop), the segments are removed at open and the log
    /// starts afresh at it.
    pub next_lsn_floor: u64,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: 16 << 20,
            max_record_bytes: 24 << 20,
            max_batch_bytes: 32 << 20,
            max_batch_records: 8192,
            next_lsn_floor: FIRST_LSN,
        }
    }
}

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file-system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record that had been durable is damaged, or a segment is
    /// missing: the log refuses to open rather than skip it.
    #[error(
        "message log damaged: {segment}, byte {offset}, record {lsn}: {reason}; the node will not \
         start over a damaged log (restore that segment from a backup, or move it aside to give \
         up its records)"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// The LSN expected there.
        lsn: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record over [`LogOptions::max_record_bytes`].
    #[error("a record of {len} bytes is over the message log's limit of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// An earlier write or sync failed; nothing more is written.
    #[error(
        "the message log stopped after a failed write or sync ({0}); restart the node so \
         recovery reads back what is on disk"
    )]
    Poisoned(String),
    /// The log is shut down.
    #[error("the message log is closed")]
    Closed,
    /// A record that is not (yet, or any longer) in the log.
    #[error("record {0} is not in the message log")]
    UnknownRecord(u64),
}

/// Where a durable record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordPos {
    /// The record's sequence number.
    pub lsn: u64,
    /// The first LSN of its segment (names the file).
    pub segment: u64,
    /// The byte offset of its frame in the segment.
    pub offset: u64,
    /// The payload's length.
    pub len: u32,
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment that was cut (or removed, if only its header had been
    /// begun).
    pub segment: PathBuf,
    /// Where the cut is: the first bad record's offset.
    pub offset: u64,
    /// The LSN the first bad record would have had.
    pub first_lost_lsn: u64,
    /// How many bytes were dropped.
    pub dropped_bytes: u64,
    /// What was wrong with the first bad record.
    pub reason: String,
}

/// What [`SegmentLog::open`] found.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Records read (and handed to the caller).
    pub records: u64,
    /// Bytes of the segments read.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The torn tail cut off, if any.
    pub cut: Option<TailCut>,
    /// How long the scan took.
    pub elapsed: Duration,
}

/// Counters since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Batches written (one `fdatasync` each).
    pub batches: u64,
    /// Bytes written, framing included.
    pub bytes_written: u64,
    /// Segment files now.
    pub segments: usize,
    /// Bytes of all segment files now.
    pub bytes_on_disk: u64,
    /// Records in the log not yet released.
    pub live_records: u64,
    /// Segments deleted because all their records were released.
    pub segments_deleted: u64,
}

/// The log: see the module docs.
pub struct SegmentLog {
    shared: Arc<Shared>,
    jobs: Option<mpsc::SyncSender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct Shared {
    fs: Arc<dyn LogFs>,
    dir: PathBuf,
    options: LogOptions,
    state: Mutex<State>,
    /// Held while a batch is written: the writer thread and
    /// [`SegmentLog::append_batch`] callers take turns. Holds the encoding
    /// buffer, reused between batches.
    writing: Mutex<Vec<u8>>,
    poisoned: Mutex<Option<String>>,
    records: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    segments_deleted: AtomicU64,
}

struct State {
    segments: VecDeque<Segment>,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<dyn LogFile>,
    /// One past the last durable record.
    next: u64,
    /// Durable length of the file.
    bytes: u64,
    /// One bit per record: released.
    released: Vec<u64>,
    released_count: u64,
}

impl Segment {
    fn records(&self) -> u64 {
        self.next - self.first
    }

    fn all_released(&self) -> bool {
        self.released_count == self.records()
    }

    fn release(&mut self, lsn: u64) {
        let index = (lsn - self.first) as usize;
        let (word, bit) = (index / 64, index % 64);
        if self.released.len() <= word {
            self.released.resize(word + 1, 0);
        }
        if self.released[word] & (1 << bit) == 0 {
            self.released[word] |= 1 << bit;
            self.released_count += 1;
        }
    }
}

/// A segment's durable extent, taken under the lock for reading after it.
struct SegmentView {
    first: u64,
    next: u64,
    bytes: u64,
    path: PathBuf,
    file: Arc<dyn LogFile>,
}

struct Job {
    payload: Vec<u8>,
    reply: mpsc::SyncSender<Result<RecordPos, LogError>>,
}

/// A queued append; [`AppendTicket::wait`] blocks until it is durable.
#[derive(Debug)]
pub struct AppendTicket {
    reply: mpsc::Receiver<Result<RecordPos, LogError>>,
}

impl AppendTicket {
    /// Waits until the record is durable (or the batch failed).
    pub fn wait(self) -> Result<RecordPos, LogError> {
        self.reply.recv().unwrap_or(Err(LogError::Closed))
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io {
        action,
        path,
        source,
    }
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir` on the real file system,
    /// handing every record to `visit` in LSN order.
    pub fn open<F, E>(
        dir: &Path,
        options: LogOptions,
        visit: F,
    ) -> Result<(SegmentLog, Recovery), E>
    where
        F: FnMut(RecordPos, &[u8]) -> Result<(), E>,
        E: From<LogError>,
    {
        SegmentLog::open_on(Arc::new(OsFs), dir, options, visit)
    }

    /// [`SegmentLog::open`] over any [`LogFs`] (tests use
    /// [`fs::SimFs`]).
    pub fn open_on<F, E>(
        fs: Arc<dyn LogFs>,
        dir: &Path,
        options: LogOptions,
        visit: F,
    ) -> Result<(SegmentLog, Recovery), E>
    where
        F: FnMut(RecordPos, &[u8]) -> Result<(), E>,
        E: From<LogError>,
    {
        let started = Instant::now();
        fs.create_dir_all(dir).map_err(io_error("creating", dir))?;
        let mut recovery = Recovery {
            records: 0,
            bytes: 0,
            segments: 0,
            cut: None,
            elapsed: Duration::ZERO,
        };
        let mut segments = recover(fs.as_ref(), dir, &options, &mut recovery, visit)?;
        if segments.back().is_some_and(|last| {
            let floor = options.next_lsn_floor;
            last.next < floor || (last.next == floor && last.first < floor)
        }) {
            for segment in segments.drain(..) {
                fs.remove(&segment.path)
                    .map_err(io_error("removing", &segment.path))?;
            }
            fs.sync_dir(dir).map_err(io_error("syncing", dir))?;
        }
        if segments.is_empty() {
            let next = recovery
                .cut
                .as_ref()
                .map_or(FIRST_LSN, |cut| cut.first_lost_lsn)
                .max(options.next_lsn_floor);
            segments.push_back(create_segment(fs.as_ref(), dir, next)?);
        }
        recovery.segments = segments.len();
        recovery.elapsed = started.elapsed();
        let shared = Arc::new(Shared {
            fs,
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(State { segments }),
            writing: Mutex::new(Vec::new()),
            poisoned: Mutex::new(None),
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            segments_deleted: AtomicU64::new(0),
        });
        let (jobs, queue) = mpsc::sync_channel(MAX_QUEUED);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("agentfed-log-writer".into())
            .spawn(move || writer_loop(&writer_shared, &queue))
            .map_err(io_error("starting the writer of", dir))?;
        Ok((
            SegmentLog {
                shared,
                jobs: Some(jobs),
                writer: Some(writer),
            },
            recovery,
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Queues one record; it is durable when the ticket answers.
    pub fn append(&self, payload: Vec<u8>) -> Result<AppendTicket, LogError> {
        let max = self.shared.options.max_record_bytes;
        if payload.len() > max as usize {
            return Err(LogError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        if let Some(why) = self.shared.poison_reason() {
            return Err(LogError::Poisoned(why));
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or(LogError::Closed)?
            .send(Job { payload, reply })
            .map_err(|_| LogError::Closed)?;
        Ok(AppendTicket { reply: answer })
    }

    /// Appends one record and waits until it is durable.
    pub fn append_durable(&self, payload: Vec<u8>) -> Result<RecordPos, LogError> {
        self.append(payload)?.wait()
    }

    /// Writes `payloads` as one batch (one write, one `fdatasync`) on the
    /// calling thread, between the writer thread's batches: for a caller
    /// that does its own grouping (the store's journal), saving the hand-off
    /// to the writer thread and back. Durable when it returns `Ok`.
    pub fn append_batch(&self, payloads: &[&[u8]]) -> Result<Vec<RecordPos>, LogError> {
        let max = self.shared.options.max_record_bytes;
        if let Some(big) = payloads.iter().find(|p| p.len() > max as usize) {
            return Err(LogError::TooLarge {
                len: big.len(),
                max,
            });
        }
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let mut buffer = self.shared.lock_writing();
        let positions = write_batch(&self.shared, payloads, &mut buffer);
        if buffer.capacity() > 4 << 20 {
            *buffer = Vec::new();
        }
        positions
    }

    /// Reads a durable record back.
    pub fn read(&self, pos: &RecordPos) -> Result<Vec<u8>, LogError> {
        let (file, path) = {
            let state = self.shared.lock_state();
            let segment = state
                .segments
                .iter()
                .find(|s| s.first == pos.segment && pos.lsn < s.next)
                .ok_or(LogError::UnknownRecord(pos.lsn))?;
            (segment.file.clone(), segment.path.clone())
        };
        let mut frame = vec![0u8; FRAME_LEN as usize + pos.len as usize];
        file.read_exact_at(&mut frame, pos.offset)
            .map_err(io_error("reading", &path))?;
        let head = FrameHead::parse(&frame).ok_or(LogError::UnknownRecord(pos.lsn))?;
        if head.lsn != pos.lsn || !head.checks(&frame) {
            return Err(LogError::Corrupt {
                segment: path,
                offset: pos.offset,
                lsn: pos.lsn,
                reason: "the record no longer checks".into(),
            });
        }
        frame.drain(..FRAME_LEN as usize);
        Ok(frame)
    }

    /// Hands every durable record from `from_lsn` on to `visit`, in order.
    /// Damage found here is a [`LogError::Corrupt`]: these records were
    /// durable when the scan began.
    pub fn scan<F, E>(&self, from_lsn: u64, mut visit: F) -> Result<(), E>
    where
        F: FnMut(RecordPos, &[u8]) -> Result<(), E>,
        E: From<LogError>,
    {
        let segments: Vec<SegmentView> = {
            let state = self.shared.lock_state();
            state
                .segments
                .iter()
                .filter(|s| s.next > from_lsn)
                .map(|s| SegmentView {
                    first: s.first,
                    next: s.next,
                    bytes: s.bytes,
                    path: s.path.clone(),
                    file: s.file.clone(),
                })
                .collect()
        };
        for SegmentView {
            first,
            next,
            bytes,
            path,
            file,
        } in segments
        {
            let mut data = vec![0u8; bytes as usize];
            file.read_exact_at(&mut data, 0)
                .map_err(io_error("reading", &path))?;
            let max = self.shared.options.max_record_bytes;
            let end = scan_records(&data, first, max, |pos, payload| -> Result<(), E> {
                if pos.lsn >= from_lsn && pos.lsn < next {
                    visit(pos, payload)?;
                }
                Ok(())
            })?;
            if let ScanEnd::Bad {
                offset,
                lsn,
                reason,
            } = end
            {
                return Err(LogError::Corrupt {
                    segment: path,
                    offset,
                    lsn,
                    reason,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Marks a record as no longer needed. Segments whose records are all
    /// released are deleted, oldest first (never the one being written).
    /// Releasing twice, or a record already deleted, does nothing.
    pub fn release(&self, lsn: u64) -> Result<(), LogError> {
        self.release_all(std::iter::once(lsn))
    }

    /// [`SegmentLog::release`] for many records, with one directory sync.
    pub fn release_all(&self, lsns: impl IntoIterator<Item = u64>) -> Result<(), LogError> {
        let doomed = {
            let mut state = self.shared.lock_state();
            let end = state.segments.back().map_or(FIRST_LSN, |s| s.next);
            for lsn in lsns {
                if lsn >= end {
                    return Err(LogError::UnknownRecord(lsn));
                }
                let index = state.segments.partition_point(|s| s.first <= lsn);
                if index == 0 {
                    continue;
                }
                state.segments[index - 1].release(lsn);
            }
            let mut doomed = Vec::new();
            while state.segments.len() > 1
                && state.segments.front().is_some_and(Segment::all_released)
            {
                if let Some(segment) = state.segments.pop_front() {
                    doomed.push(segment.path);
                }
            }
            doomed
        };
        if doomed.is_empty() {
            return Ok(());
        }
        for path in &doomed {
            self.shared
                .fs
                .remove(path)
                .map_err(io_error("removing", path))?;
        }
        self.shared
            .fs
            .sync_dir(&self.shared.dir)
            .map_err(io_error("syncing", &self.shared.dir))?;
        self.shared
            .segments_deleted
            .fetch_add(doomed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The next LSN to be given out.
    pub fn next_lsn(&self) -> u64 {
        self.shared
            .lock_state()
            .segments
            .back()
            .map_or(FIRST_LSN, |s| s.next)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> LogStats {
        let state = self.shared.lock_state();
        LogStats {
            records: self.shared.records.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
            segments: state.segments.len(),
            bytes_on_disk: state.segments.iter().map(|s| s.bytes).sum(),
            live_records: state
                .segments
                .iter()
                .map(|s| s.records() - s.released_count)
                .sum(),
            segments_deleted: self.shared.segments_deleted.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and end.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writing(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poison_reason(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poison(&self, why: String) -> LogError {
        tracing::error!("message log: {why}; no more records are written until restart");
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        LogError::Poisoned(why)
    }
}

fn writer_loop(shared: &Shared, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < shared.options.max_batch_records
            && bytes < shared.options.max_batch_bytes
        {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.payload.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|job| job.payload.as_slice()).collect();
        let mut buffer = shared.lock_writing();
        let written = write_batch(shared, &payloads, &mut buffer);
        // Large batches leave a large buffer behind; do not keep it.
        if buffer.capacity() > 4 << 20 {
            *buffer = Vec::new();
        }
        drop(buffer);
        match written {
            Ok(positions) => {
                for (job, pos) in batch.into_iter().zip(positions) {
                    let _ = job.reply.send(Ok(pos));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(LogError::Poisoned(why.clone())));
                }
            }
        }
    }
}

/// Writes one batch at the end of the active segment and syncs it (the
/// caller holds [`Shared::writing`], whose buffer is `buffer`).
fn write_batch(
    shared: &Shared,
    batch: &[&[u8]],
    buffer: &mut Vec<u8>,
) -> Result<Vec<RecordPos>, LogError> {
    if let Some(why) = shared.poison_reason() {
        return Err(LogError::Poisoned(why));
    }
    roll_if_full(shared)?;
    let (file, path, segment, offset, first_lsn) = {
        let state = shared.lock_state();
        let active = state.segments.back().ok_or(LogError::Closed)?;
        (
            active.file.clone(),
            active.path.clone(),
            active.first,
            active.bytes,
            active.next,
        )
    };
    buffer.clear();
    let mut positions = Vec::with_capacity(batch.len());
    for (index, payload) in batch.iter().enumerate() {
        let lsn = first_lsn + index as u64;
        positions.push(RecordPos {
            lsn,
            segment,
            offset: offset + buffer.len() as u64,
            len: payload.len() as u32,
        });
        frame::encode_record(buffer, lsn, index as u32, payload);
    }
    file.write_all_at(buffer, offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| shared.poison(format!("writing {}: {e}", path.display())))?;
    {
        let mut state = shared.lock_state();
        if let Some(active) = state.segments.back_mut() {
            active.next += batch.len() as u64;
            active.bytes += buffer.len() as u64;
        }
    }
    shared
        .records
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .bytes_written
        .fetch_add(buffer.len() as u64, Ordering::Relaxed);
    Ok(positions)
}

/// Begins a new segment if the active one is full.
fn roll_if_full(shared: &Shared) -> Result<(), LogError> {
    let next = {
        let state = shared.lock_state();
        match state.segments.back() {
            Some(active)
                if active.bytes < shared.options.segment_bytes || active.records() == 0 =>
            {
                return Ok(());
            }
            Some(active) => active.next,
            None => FIRST_LSN,
        }
    };
    let segment = create_segment(shared.fs.as_ref(), &shared.dir, next)
        .map_err(|e| shared.poison(e.to_string()))?;
    shared.lock_state().segments.push_back(segment);
    Ok(())
}

/// Creates a segment whose first record will be `first`: header written
/// and synced, then the directory synced, before anything goes in.
fn create_segment(fs: &dyn LogFs, dir: &Path, first: u64) -> Result<Segment, LogError> {
    let path = dir.join(frame::segment_name(first));
    let file = fs.create_new(&path).map_err(io_error("creating", &path))?;
    file.write_all_at(&frame::encode_header(first), 0)
        .and_then(|()| file.sync_data())
        .map_err(io_error("writing", &path))?;
    fs.sync_dir(dir).map_err(io_error("syncing", dir))?;
    Ok(Segment {
        first,
        path,
        file,
        next: first,
        bytes: HEADER_LEN,
        released: Vec::new(),
        released_count: 0,
    })
}

/// How a scan of one segment's records ended.
enum ScanEnd {
    /// Every byte was a good record.
    Clean,
    /// The record at `offset` (which should have been `lsn`) is bad.
    Bad {
        offset: u64,
        lsn: u64,
        reason: String,
    },
}

/// Walks the records of one segment's bytes (header included), handing
/// each good one to `visit`, until the end or the first bad record.
fn scan_records<F, E>(data: &[u8], first: u64, max_record: u32, mut visit: F) -> Result<ScanEnd, E>
where
    F: FnMut(RecordPos, &[u8]) -> Result<(), E>,
{
    let mut offset = HEADER_LEN as usize;
    let mut lsn = first;
    while offset < data.len() {
        match check_record(&data[offset..], lsn, first, max_record) {
            Ok(head) => {
                let start = offset + FRAME_LEN as usize;
                let payload = &data[start..start + head.len as usize];
                visit(
                    RecordPos {
                        lsn,
                        segment: first,
                        offset: offset as u64,
                        len: head.len,
                    },
                    payload,
                )?;
                offset = start + head.len as usize;
                lsn += 1;
            }
            Err(reason) => {
                return Ok(ScanEnd::Bad {
                    offset: offset as u64,
                    lsn,
                    reason,
                });
            }
        }
    }
    Ok(ScanEnd::Clean)
}

/// Checks the record at the start of `rest`, which should be `lsn` in the
/// segment starting at `first`.
fn check_record(rest: &[u8], lsn: u64, first: u64, max_record: u32) -> Result<FrameHead, String> {
    let head = FrameHead::parse(rest)
        .ok_or_else(|| format!("{} bytes left, too few for a record's framing", rest.len()))?;
    if head.len > max_record {
        return Err(format!("length {} is over the limit", head.len));
    }
    let frame_len = FRAME_LEN as usize + head.len as usize;
    if rest.len() < frame_len {
        return Err(format!(
            "record of {} bytes is cut short ({} bytes left)",
            head.len,
            rest.len() - FRAME_LEN as usize
        ));
    }
    if !head.checks(&rest[..frame_len]) {
        return Err("checksum mismatch".into());
    }
    if head.lsn != lsn {
        return Err(format!("holds record {} where {lsn} belongs", head.lsn));
    }
    if head.batch_first().is_none_or(|b| b < first) {
        return Err("names a batch that begins before its segment".into());
    }
    Ok(head)
}

/// Whether a good record of a *later* batch than the one `lsn` belongs to
/// lies after `from`: then the bad record at `from` had been durable.
fn later_batch_after(data: &[u8], from: usize, lsn: u64, max_record: u32) -> Option<u64> {
    let span = (data.len() - from) as u64;
    let last = data.len().checked_sub(FRAME_LEN as usize)?;
    (from + 1..=last).find_map(|at| {
        let head = FrameHead::parse(&data[at..])?;
        let plausible = head.lsn > lsn
            && head.lsn <= lsn + span
            && head.batch_first().is_some_and(|b| b > lsn)
            && head.len <= max_record
            && at + FRAME_LEN as usize + head.len as usize <= data.len();
        (plausible && head.checks(&data[at..at + FRAME_LEN as usize + head.len as usize]))
            .then_some(head.lsn)
    })
}

/// Reads every segment in `dir`, handing records to `visit`; cuts a torn
/// tail; refuses damage anywhere else.
fn recover<F, E>(
    fs: &dyn LogFs,
    dir: &Path,
    options: &LogOptions,
    recovery: &mut Recovery,
    mut visit: F,
) -> Result<VecDeque<Segment>, E>
where
    F: FnMut(RecordPos, &[u8]) -> Result<(), E>,
    E: From<LogError>,
{
    let mut firsts: Vec<u64> = fs
        .list(dir)
        .map_err(io_error("listing", dir))?
        .iter()
        .filter_map(|name| frame::parse_segment_name(name))
        .collect();
    firsts.sort_unstable();
    let mut segments = VecDeque::with_capacity(firsts.len());
    for (index, &first) in firsts.iter().enumerate() {
        let is_last = index + 1 == firsts.len();
        let path = dir.join(frame::segment_name(first));
        let corrupt = |offset: u64, lsn: u64, reason: String| LogError::Corrupt {
            segment: path.clone(),
            offset,
            lsn,
            reason,
        };
        if let Some(previous) = segments.back().map(|s: &Segment| s.next)
            && previous != first
        {
            return Err(corrupt(
                0,
                previous,
                format!("the segment starts at record {first}, but the one before ends before {previous}: records are missing"),
            )
            .into());
        }
        let file = fs.open(&path).map_err(io_error("opening", &path))?;
        let len = file.len().map_err(io_error("reading", &path))?;
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0)
            .map_err(io_error("reading", &path))?;
        recovery.bytes += len;
        match frame::decode_header(&data) {
            Ok(named) if named == first => {}
            // Only the newest segment can be half-made, and only before
            // any record went in.
            Err(reason) if is_last && len <= HEADER_LEN => {
                fs.remove(&path).map_err(io_error("removing", &path))?;
                fs.sync_dir(dir).map_err(io_error("syncing", dir))?;
                log_cut(&path, 0, first, len, reason);
                recovery.cut = Some(TailCut {
                    segment: path,
                    offset: 0,
                    first_lost_lsn: first,
                    dropped_bytes: len,
                    reason: reason.to_string(),
                });
                break;
            }
            Ok(named) => {
                return Err(corrupt(0, first, format!("the header names record {named}")).into());
            }
            Err(reason) => return Err(corrupt(0, first, reason.to_string()).into()),
        }
        let mut next = first;
        let end = scan_records(&data, first, options.max_record_bytes, |pos, payload| {
            next = pos.lsn + 1;
            recovery.records += 1;
            visit(pos, payload)
        })?;
        let mut bytes = len;
        if let ScanEnd::Bad {
            offset,
            lsn,
            reason,
        } = end
        {
            if !is_last {
                return Err(corrupt(offset, lsn, reason).into());
            }
            if let Some(later) =
                later_batch_after(&data, offset as usize, lsn, options.max_record_bytes)
            {
                let reason = format!(
                    "{reason}; record {later} of a later batch follows, so it had been durable"
                );
                return Err(corrupt(offset, lsn, reason).into());
            }
            file.set_len(offset)
                .and_then(|()| file.sync_data())
                .map_err(io_error("cutting the torn tail of", &path))?;
            log_cut(&path, offset, lsn, len - offset, &reason);
            recovery.cut = Some(TailCut {
                segment: path.clone(),
                offset,
                first_lost_lsn: lsn,
                dropped_bytes: len - offset,
                reason,
            });
            bytes = offset;
        }
        segments.push_back(Segment {
            first,
            path,
            file,
            next,
            bytes,
            released: Vec::new(),
            released_count: 0,
        });
    }
    Ok(segments)
}

fn log_cut(path: &Path, offset: u64, lsn: u64, dropped: u64, reason: &str) {
    tracing::warn!(
        segment = %path.display(),
        offset,
        first_lost_record = lsn,
        dropped_bytes = dropped,
        "message log: cut a torn tail ({reason}); those records had not been acknowledged"
    );
}

#[cfg(test)]
mod tests;
