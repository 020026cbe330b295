//! The log tested like a database: exhaustive truncation and bit flips
//! of its last records, power cuts that drop everything unsynced, damage
//! in the middle, retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::{self, FRAME_LEN, FrameHead, HEADER_LEN};
use super::fs::{LogFs, SimFs, Survivors};
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Opened = Result<(SegmentLog, Recovery, Vec<(RecordPos, Vec<u8>)>), LogError>;

fn dir() -> PathBuf {
    PathBuf::from("/sim/log")
}

/// Opens the log on `fs`, collecting every record.
fn open_sim(fs: &SimFs, options: LogOptions) -> Opened {
    let mut records = Vec::new();
    let (log, recovery) = SegmentLog::open_on(
        Arc::new(fs.clone()) as Arc<dyn LogFs>,
        &dir(),
        options,
        |pos, payload: &[u8]| -> Result<(), LogError> {
            records.push((pos, payload.to_vec()));
            Ok(())
        },
    )?;
    Ok((log, recovery, records))
}

fn payload(n: u64) -> Vec<u8> {
    // Varied lengths, so record boundaries fall everywhere.
    format!("record {n} {}", "x".repeat((n % 23) as usize)).into_bytes()
}

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 512,
        ..LogOptions::default()
    }
}

#[test]
fn concurrent_appends_share_syncs_and_come_back_in_order_after_reopen() -> TestResult {
    let fs = SimFs::new();
    let (log, recovery, records) = open_sim(&fs, small_segments())?;
    assert_eq!((recovery.records, records.len()), (0, 0));
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || -> Result<Vec<(u64, Vec<u8>)>, LogError> {
                // Queue several before waiting, as concurrent callers do.
                let tickets: Vec<_> = (0..200)
                    .map(|i| {
                        let body = payload(t * 1000 + i);
                        log.append(body.clone()).map(|ticket| (ticket, body))
                    })
                    .collect::<Result<_, _>>()?;
                tickets
                    .into_iter()
                    .map(|(ticket, body)| Ok((ticket.wait()?.lsn, body)))
                    .collect()
            })
        })
        .collect();
    let mut written = BTreeMap::new();
    for thread in threads {
        for (lsn, body) in thread.join().map_err(|_| "appender panicked")?? {
            assert!(written.insert(lsn, body).is_none(), "LSN {lsn} given twice");
        }
    }
    let stats = log.stats();
    assert_eq!(stats.records, 1600);
    assert!(
        stats.batches < stats.records,
        "no two appends shared a sync: {stats:?}"
    );
    // (Whether segments rolled depends on how the appends fell into
    // batches: a segment rolls only between batches. Rolling is checked
    // where batches are known, in the retention test.)
    drop(log);
    let (_log, recovery, records) = open_sim(&fs, small_segments())?;
    assert_eq!(recovery.cut, None);
    let reread: BTreeMap<u64, Vec<u8>> = records.into_iter().map(|(p, b)| (p.lsn, b)).collect();
    assert_eq!(reread, written);
    assert_eq!(
        reread.keys().copied().collect::<Vec<_>>(),
        (1..=1600).collect::<Vec<_>>()
    );
    Ok(())
}

/// One hand-built segment: batches of the given sizes, synced. Returns
/// the segment's path and each record's (offset, lsn, batch first).
fn build_segment(fs: &SimFs, batches: &[u32]) -> (PathBuf, Vec<(usize, u64, u64)>) {
    fs.create_dir_all(&dir()).expect("dir");
    let path = dir().join(frame::segment_name(1));
    let file = fs.create_new(&path).expect("segment");
    let mut bytes = frame::encode_header(1).to_vec();
    let mut layout = Vec::new();
    let mut lsn = 1;
    for &size in batches {
        let first = lsn;
        for offset in 0..size {
            layout.push((bytes.len(), lsn, first));
            frame::encode_record(&mut bytes, lsn, offset, &payload(lsn));
            lsn += 1;
        }
    }
    file.write_all_at(&bytes, 0).expect("write");
    file.sync_data().expect("sync");
    fs.sync_dir(&dir()).expect("sync dir");
    (path, layout)
}

/// Every record before the first bad one comes back unchanged, nothing
/// after it, and the cut is reported where it is.
fn assert_cut_at(outcome: Opened, first_bad: u64, offset: usize, what: &str) {
    let (log, recovery, records) = outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
    let lsns: Vec<u64> = records.iter().map(|(p, _)| p.lsn).collect();
    assert_eq!(lsns, (1..first_bad).collect::<Vec<_>>(), "{what}");
    for (pos, body) in &records {
        assert_eq!(
            body,
            &payload(pos.lsn),
            "{what}: record {} changed",
            pos.lsn
        );
    }
    let cut = recovery
        .cut
        .unwrap_or_else(|| panic!("{what}: no cut reported"));
    assert_eq!(
        (cut.first_lost_lsn, cut.offset),
        (first_bad, offset as u64),
        "{what}"
    );
    assert_eq!(log.next_lsn(), first_bad, "{what}");
}

#[test]
fn truncation_at_every_byte_of_the_last_records_keeps_each_complete_record() -> TestResult {
    let fs = SimFs::new();
    let (path, layout) = build_segment(&fs, &[2, 1, 3, 4, 3]);
    let end = fs.contents(&path).ok_or("segment")?.len();
    // The last 10 records, byte by byte.
    let start = layout[layout.len() - 10].0;
    for cut in start..end {
        let case = fs.snapshot();
        case.truncate(&path, cut as u64);
        let outcome = open_sim(&case, LogOptions::default());
        let mut whole = layout.iter().filter(|(offset, _, _)| *offset < cut);
        let (last_offset, last_lsn, _) = *whole.next_back().ok_or("a record")?;
        if layout.iter().any(|(offset, _, _)| *offset == cut) {
            // On a record boundary: nothing torn, nothing to report.
            let (_, recovery, records) = outcome?;
            assert_eq!(recovery.cut, None, "cut at {cut}");
            assert_eq!(records.len() as u64, last_lsn, "cut at {cut}");
        } else {
            assert_cut_at(
                outcome,
                last_lsn,
                last_offset,
                &format!("truncated at {cut}"),
            );
        }
    }
    // A truncated log is written on after the cut.
    let case = fs.snapshot();
    case.truncate(&path, end as u64 - 3);
    let (log, _, _) = open_sim(&case, LogOptions::default())?;
    let pos = log.append_durable(b"after the cut".to_vec())?;
    assert_eq!(pos.lsn, layout.last().ok_or("a record")?.1);
    drop(log);
    let (_, recovery, records) = open_sim(&case, LogOptions::default())?;
    assert_eq!(recovery.cut, None);
    assert_eq!(
        records.last().map(|(_, b)| b.as_slice()),
        Some(&b"after the cut"[..])
    );
    Ok(())
}

#[test]
fn a_flipped_bit_in_the_last_batch_is_cut_and_in_an_earlier_one_is_a_loud_error() -> TestResult {
    let fs = SimFs::new();
    let (path, layout) = build_segment(&fs, &[2, 1, 3, 4, 3]);
    let original = fs.contents(&path).ok_or("segment")?;
    let start = layout[layout.len() - 10].0;
    let (mut cuts, mut errors) = (0, 0);
    for (byte, &value) in original.iter().enumerate().skip(start) {
        // The record the byte is in, and whether a later batch follows it.
        let (offset, lsn, _) = *layout
            .iter()
            .rev()
            .find(|(offset, _, _)| *offset <= byte)
            .ok_or("a record")?;
        let later_batch = layout.iter().any(|(_, l, first)| *l > lsn && *first > lsn);
        for bit in 0..8 {
            let case = fs.snapshot();
            case.corrupt(&path, byte as u64, &[value ^ (1 << bit)]);
            let outcome = open_sim(&case, LogOptions::default());
            let what = format!("bit {bit} of byte {byte} (record {lsn})");
            if later_batch {
                errors += 1;
                match outcome {
                    Err(LogError::Corrupt {
                        segment,
                        offset: at,
                        lsn: named,
                        ..
                    }) => {
                        assert_eq!(
                            (segment, at, named),
                            (path.clone(), offset as u64, lsn),
                            "{what}"
                        );
                    }
                    Err(e) => panic!("{what}: wrong error {e}"),
                    Ok(_) => panic!("{what}: a damaged durable record was not refused"),
                }
            } else {
                cuts += 1;
                assert_cut_at(outcome, lsn, offset, &what);
            }
        }
    }
    assert!(
        cuts > 0 && errors > 0,
        "both kinds covered: {cuts} cuts, {errors} errors"
    );
    Ok(())
}

#[test]
fn damage_in_an_older_segment_or_a_missing_segment_refuses_to_open() -> TestResult {
    let fs = SimFs::new();
    let (log, _, _) = open_sim(&fs, small_segments())?;
    for n in 1..=40 {
        log.append_durable(payload(n))?;
    }
    drop(log);
    let mut names = fs.list(&dir())?;
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let second = dir().join(&names[1]);

    let case = fs.snapshot();
    let offset = HEADER_LEN + FRAME_LEN + 2;
    let byte = case.contents(&second).ok_or("segment")?[offset as usize];
    case.corrupt(&second, offset, &[byte ^ 0x10]);
    match open_sim(&case, small_segments()) {
        Err(LogError::Corrupt {
            segment,
            offset: at,
            ..
        }) => assert_eq!((segment, at), (second.clone(), HEADER_LEN)),
        other => panic!("damage in an older segment: {:?}", other.map(|o| o.1)),
    }

    let case = fs.snapshot();
    case.remove(&second)?;
    let err = open_sim(&case, small_segments())
        .err()
        .ok_or("a missing segment opened")?;
    assert!(err.to_string().contains("records are missing"), "{err}");
    Ok(())
}

#[test]
fn power_cuts_lose_no_acknowledged_record_whatever_part_of_the_tail_survives() -> TestResult {
    for (round, survivors) in [
        Survivors::None,
        Survivors::Prefix(1),
        Survivors::Prefix(17),
        Survivors::Prefix(100),
        Survivors::Prefix(5000),
    ]
    .into_iter()
    .enumerate()
    {
        let fs = SimFs::new();
        let (log, _, _) = open_sim(&fs, small_segments())?;
        let log = Arc::new(log);
        let (acked_tx, acked_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (log, acked) = (log.clone(), acked_tx.clone());
                std::thread::spawn(move || {
                    for i in 0.. {
                        let body = payload(t * 100_000 + i);
                        let Ok(ticket) = log.append(body.clone()) else {
                            break;
                        };
                        match ticket.wait() {
                            Ok(pos) => {
                                let _ = acked.send((pos.lsn, body));
                            }
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        drop(acked_tx);
        // Let some batches through, then pull the plug mid-stream.
        let mut acked = BTreeMap::new();
        for (lsn, body) in acked_rx.iter().take(300 + round * 97) {
            acked.insert(lsn, body);
        }
        fs.power_cut(survivors);
        for thread in threads {
            thread.join().map_err(|_| "appender panicked")?;
        }
        acked.extend(acked_rx.try_iter());
        assert!(
            matches!(log.append(b"late".to_vec()), Err(LogError::Poisoned(_))),
            "the log goes on writing after a failed sync"
        );
        drop(log);
        fs.power_on();
        let (_log, _recovery, records) = open_sim(&fs, small_segments())?;
        let recovered: BTreeMap<u64, Vec<u8>> =
            records.into_iter().map(|(p, b)| (p.lsn, b)).collect();
        let n = recovered.len() as u64;
        assert_eq!(
            recovered.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "round {round}: recovered records have a gap"
        );
        for (lsn, body) in &acked {
            assert_eq!(
                recovered.get(lsn),
                Some(body),
                "round {round} ({survivors:?}): acknowledged record {lsn} lost or changed"
            );
        }
    }
    Ok(())
}

#[test]
fn a_segment_whose_header_never_became_durable_is_removed_and_reported() -> TestResult {
    let fs = SimFs::new();
    let (log, _, _) = open_sim(&fs, LogOptions::default())?;
    log.append_durable(payload(1))?;
    drop(log);
    // A crash between creating the next segment and syncing its header.
    let half = dir().join(frame::segment_name(2));
    let file = fs.create_new(&half)?;
    file.write_all_at(&frame::encode_header(2)[..10], 0)?;
    fs.sync_dir(&dir())?;
    let (log, recovery, records) = open_sim(&fs, LogOptions::default())?;
    assert_eq!(records.len(), 1);
    let cut = recovery.cut.ok_or("no cut reported")?;
    assert_eq!((cut.segment, cut.first_lost_lsn), (half.clone(), 2));
    assert!(
        fs.contents(&half).is_none(),
        "half-made segment left behind"
    );
    assert_eq!(log.append_durable(payload(2))?.lsn, 2);
    Ok(())
}

#[test]
fn released_segments_are_deleted_oldest_first_and_never_the_active_one() -> TestResult {
    let fs = SimFs::new();
    let (log, _, _) = open_sim(&fs, small_segments())?;
    let positions: Vec<RecordPos> = (1..=60)
        .map(|n| log.append_durable(payload(n)))
        .collect::<Result<_, _>>()?;
    let before = log.stats();
    assert!(before.segments >= 4, "{before:?}");
    // Releasing everything but record 1 deletes nothing: it pins the
    // oldest segment, and only a prefix of segments goes.
    log.release_all(positions.iter().skip(1).map(|p| p.lsn))?;
    assert_eq!(log.stats().segments, before.segments);
    assert_eq!(log.stats().live_records, 1);
    log.release(1)?;
    log.release(1)?; // twice is harmless
    let after = log.stats();
    assert_eq!(after.segments, 1, "{after:?}");
    assert_eq!(after.segments_deleted as usize, before.segments - 1);
    assert_eq!(fs.list(&dir())?.len(), 1);
    assert!(matches!(
        log.release(10_000),
        Err(LogError::UnknownRecord(10_000))
    ));
    // Reading a released record of a deleted segment is refused.
    assert!(log.read(&positions[0]).is_err());
    // The reopened log starts where it left off.
    drop(log);
    let (log, _, records) = open_sim(&fs, small_segments())?;
    assert!(records.iter().all(|(p, _)| p.lsn > 1));
    assert_eq!(log.append_durable(payload(61))?.lsn, 61);
    Ok(())
}

#[test]
fn records_read_back_by_position_and_scanned_from_an_lsn() -> TestResult {
    let fs = SimFs::new();
    let (log, _, _) = open_sim(&fs, small_segments())?;
    let positions: Vec<RecordPos> = (1..=30)
        .map(|n| log.append_durable(payload(n)))
        .collect::<Result<_, _>>()?;
    for pos in &positions {
        assert_eq!(log.read(pos)?, payload(pos.lsn));
    }
    let mut seen = Vec::new();
    log.scan(25, |pos, body: &[u8]| -> Result<(), LogError> {
        seen.push((pos.lsn, body.to_vec()));
        Ok(())
    })?;
    assert_eq!(seen, (25..=30).map(|n| (n, payload(n))).collect::<Vec<_>>());
    assert!(matches!(
        log.append(vec![
            0;
            (LogOptions::default().max_record_bytes + 1) as usize
        ]),
        Err(LogError::TooLarge { .. })
    ));
    Ok(())
}

#[test]
fn on_a_real_disk_the_log_is_private_and_a_torn_tail_is_cut() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir()?;
    let dir = home.path().join("log");
    let open = |dir: &Path| {
        let mut records = Vec::new();
        SegmentLog::open(
            dir,
            LogOptions::default(),
            |_, body: &[u8]| -> Result<(), LogError> {
                records.push(body.to_vec());
                Ok(())
            },
        )
        .map(|(log, recovery)| (log, recovery, records))
    };
    let (log, _, _) = open(&dir)?;
    for n in 1..=5 {
        log.append_durable(payload(n))?;
    }
    drop(log);
    let segment = dir.join(frame::segment_name(1));
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(&segment)?.permissions().mode() & 0o777,
        0o600
    );
    let len = std::fs::metadata(&segment)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(len - 4)?;
    let (_log, recovery, records) = open(&dir)?;
    assert_eq!(records, (1..=4).map(payload).collect::<Vec<_>>());
    let cut = recovery.cut.ok_or("no cut")?;
    assert_eq!(cut.first_lost_lsn, 5);
    let head = FrameHead::parse(&std::fs::read(&segment)?[cut.offset as usize..]);
    assert_eq!(head, None, "the torn record is gone from the file");
    Ok(())
}

#[test]
fn a_floor_above_every_record_starts_the_log_afresh_there() -> TestResult {
    let fs = SimFs::new();
    let (log, _, _) = open_sim(&fs, small_segments())?;
    for n in 1..=30 {
        log.append_durable(payload(n))?;
    }
    drop(log);
    // The caller holds records up to 30: the old segments go.
    let floor = LogOptions {
        next_lsn_floor: 31,
        ..small_segments()
    };
    let (log, _, records) = open_sim(&fs, floor.clone())?;
    assert_eq!(records.len(), 30, "records are still handed over first");
    assert_eq!(fs.list(&dir())?, vec![frame::segment_name(31)]);
    assert_eq!(log.append_durable(payload(31))?.lsn, 31);
    drop(log);
    // A log lost by hand never reuses a number the caller holds.
    for name in fs.list(&dir())? {
        fs.remove(&dir().join(name))?;
    }
    let floor = LogOptions {
        next_lsn_floor: 500,
        ..small_segments()
    };
    let (log, _, _) = open_sim(&fs, floor)?;
    assert_eq!(log.append_durable(payload(500))?.lsn, 500);
    Ok(())
}
