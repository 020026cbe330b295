//! The message log under the state file: acknowledged message-path writes
//! survive a crash before the state file's checkpoint, a torn log tail is
//! cut and reported, and a home from the previous release opens.

use std::path::Path;

use agentfed::audit::{AuditConfig, AuditEvent, AuditLog, AuditQuery, EventType};
use agentfed::store::{InboundCommit, OutboxEntry, STATE_FILE, Store, message_log_dir};

use crate::harness::{Node, free_port};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn entry(n: u32) -> OutboxEntry {
    OutboxEntry {
        envelope_id: format!("envelope-{n}"),
        target: "beta".into(),
        bytes: format!("{{\"frame\":{n}}}").into_bytes().into(),
        attempts: 0,
        next_attempt_ms: u64::from(n),
    }
}

/// What a reader sees of the message path and the audit chain.
#[derive(Debug, PartialEq)]
struct Seen {
    outbox: Vec<OutboxEntry>,
    inbox: Vec<(u64, Vec<u8>)>,
    seen_one: bool,
    ack_one: Option<Vec<u8>>,
    audit: Vec<(u64, String, String)>,
    verified: u64,
}

fn seen(store: &Store, audit: &AuditLog) -> Result<Seen, Box<dyn std::error::Error>> {
    Ok(Seen {
        outbox: store.outbox_list(None, 100)?,
        inbox: store.inbox_list(0, 100)?,
        seen_one: store.dedupe_contains("beta", "in-1")?,
        ack_one: store.inbound_ack("beta", "in-1")?,
        audit: {
            let mut records: Vec<_> = audit
                .query(&AuditQuery::default())?
                .into_iter()
                .map(|r| (r.seq, r.event_type.as_str().to_string(), r.hash))
                .collect();
            records.sort();
            records
        },
        verified: audit.verify()?,
    })
}

/// Builds a crash image: the state file as of its last durable commit,
/// and the message log holding everything acknowledged since. Returns the
/// image's state-file path and what the live store showed.
fn crash_image(dir: &Path) -> Result<(std::path::PathBuf, Seen), Box<dyn std::error::Error>> {
    let live = dir.join("live");
    std::fs::create_dir_all(&live)?;
    let store = Store::open(&live.join(STATE_FILE))?;
    let audit = AuditLog::open(&store, AuditConfig::default())?;
    audit.append(AuditEvent::new(
        EventType::OperatorAction,
        "before the snapshot",
    ))?;
    // A durable commit of the state file (a state change), then a copy
    // of the file: what survives of it in a crash from here on.
    store.clear_removed("nobody")?;
    let image = dir.join("image");
    std::fs::create_dir_all(&image)?;
    std::fs::copy(live.join(STATE_FILE), image.join(STATE_FILE))?;

    // Message-path writes, each acknowledged (durable in the log only).
    for n in 1..=3 {
        store.outbox_put(&entry(n))?;
    }
    assert_eq!(
        store.commit_inbound("beta", "in-1", 10, Some(b"{\"hello\":1}"), b"{\"ack\":1}")?,
        InboundCommit::Fresh { inbox_seq: Some(1) }
    );
    store.commit_inbound("beta", "in-2", 11, Some(b"{\"hello\":2}"), b"{\"ack\":2}")?;
    store.outbox_remove("envelope-2")?;
    store.inbox_remove(2)?;
    audit
        .append(AuditEvent::new(EventType::MessageSent, "after the snapshot").with_peer("beta"))?;
    let expected = seen(&store, &audit)?;
    assert!(
        store.commit_stats().logged > 0,
        "the message path did not go through the log: {:?}",
        store.commit_stats()
    );
    // The log as it is on disk now (every append above was synced).
    copy_dir(
        &message_log_dir(&live.join(STATE_FILE)),
        &message_log_dir(&image.join(STATE_FILE)),
    )?;
    drop(audit);
    drop(store);
    Ok((image.join(STATE_FILE), expected))
}

#[test]
fn acknowledged_message_path_writes_survive_a_crash_before_the_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (image, expected) = crash_image(dir.path())?;
    let store = Store::open(&image)?;
    let replay = store.log_replay().clone();
    assert!(replay.replayed >= 8, "{replay:?}");
    assert_eq!(replay.cut, None);
    let audit = AuditLog::open(&store, AuditConfig::default())?;
    assert_eq!(seen(&store, &audit)?, expected);
    // The chain goes on from the replayed head.
    let next = audit.append(AuditEvent::new(
        EventType::OperatorAction,
        "after the crash",
    ))?;
    assert_eq!(next.seq, expected.audit.last().map_or(0, |r| r.0) + 1);
    assert_eq!(audit.verify()?, expected.verified + 1);
    Ok(())
}

#[test]
fn a_torn_log_tail_loses_only_the_unacknowledged_last_record_and_is_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (image, expected) = crash_image(dir.path())?;
    // Tear the last record (the final audit append) as a crash mid-write
    // would.
    let log = message_log_dir(&image);
    let segment = std::fs::read_dir(&log)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .max()
        .ok_or("a segment")?;
    let len = std::fs::metadata(&segment)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(len - 5)?;

    let store = Store::open(&image)?;
    let cut = store
        .log_replay()
        .cut
        .clone()
        .ok_or("the cut is not reported")?;
    assert_eq!(cut.segment, segment);
    let audit = AuditLog::open(&store, AuditConfig::default())?;
    let now = seen(&store, &audit)?;
    // Everything but the torn audit record is there, and the chain
    // verifies without it.
    assert_eq!(now.outbox, expected.outbox);
    assert_eq!(now.inbox, expected.inbox);
    assert_eq!(now.audit.len() + 1, expected.audit.len());
    assert_eq!(now.audit[..], expected.audit[..expected.audit.len() - 1]);
    assert_eq!(now.verified + 1, expected.verified);
    Ok(())
}

#[test]
fn a_clean_close_leaves_the_state_file_whole_and_the_log_empty() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(STATE_FILE);
    {
        let store = Store::open(&path)?;
        for n in 1..=50 {
            store.outbox_put(&entry(n))?;
        }
    }
    let store = Store::open(&path)?;
    assert_eq!(store.log_replay().replayed, 0, "{:?}", store.log_replay());
    assert_eq!(store.outbox_len()?, 50);
    assert_eq!(store.log_stats().live_records, 0);
    Ok(())
}

#[test]
fn a_home_from_the_previous_release_opens_and_its_audit_chain_verifies() {
    let mut node = Node::from_archive("alpha-6c79191.tar.gz", "a");
    let port = free_port().to_string();
    for file in ["agentfed.toml", "node.json"] {
        let path = node.home.join(file);
        let text = std::fs::read_to_string(&path).expect("reading the old config");
        std::fs::write(&path, text.replace("39611", &port)).expect("moving the old node's port");
    }
    let verified = node.run(&["audit", "verify"]).ok().to_string();
    assert!(verified.contains("intact: 25 records"), "{verified}");

    node.start(&[]);
    let outbox = node.run(&["outbox", "--json"]).json();
    assert!(
        outbox
            .to_string()
            .contains("01a246d5f874784d92ca034940c4ed89"),
        "the queued envelope is gone: {outbox}"
    );
    let inbox = node.run(&["inbox", "--json"]).json();
    assert!(inbox.to_string().contains("reply from beta"), "{inbox}");
    assert!(node.peers().to_string().contains("beta"));
    node.run(&["audit", "verify"]).ok();
    node.stop();

    let verified = node.run(&["audit", "verify"]).ok().to_string();
    assert!(
        !verified.contains("intact: 25 records"),
        "the new daemon recorded nothing: {verified}"
    );
    assert!(message_log_dir(&node.home.join(STATE_FILE)).is_dir());
}

#[test]
fn a_log_record_this_build_cannot_read_refuses_to_open_and_names_it() -> TestResult {
    use agentfed::seglog::{LogError, LogOptions, SegmentLog};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(STATE_FILE);
    drop(Store::open(&path)?);
    {
        // A record whose frame checks but whose contents are not redo
        // operations this build knows (say, from a newer release).
        let (log, _) = SegmentLog::open(&message_log_dir(&path), LogOptions::default(), |_, _| {
            Ok::<(), LogError>(())
        })?;
        log.append_durable(b"\x09not a redo record".to_vec())?;
    }
    let text = Store::open(&path)
        .err()
        .ok_or("a log it cannot read was opened")?
        .to_string();
    assert!(
        text.contains(".seg") && text.contains("record 1") && text.contains("does not decode"),
        "{text}"
    );
    Ok(())
}
