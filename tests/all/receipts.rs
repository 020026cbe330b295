//! Signed delivery receipts (protocol §10.4), black box: a real daemon
//! delivers to a hand-made peer that answers with no receipt, a forged
//! one, then a valid one; an old peer (protocol version 1) gets and gives
//! unsigned acknowledgements; two real daemons produce a receipt that
//! `agentfed audit proof` prints and anyone with the receiver's key checks
//! offline.

use std::time::Duration;

use agentfed::identity::{Identity, NodeId};
use agentfed::receipt::{Expected, Receipt};
use agentfed::transport::Connection;
use serde_json::{Value, json};

use crate::adversarial::{Arena, Raw, block, envelope_id, now_ms, runtime};
use crate::harness::{Node, manifest_field, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// Makes a reply to a delivered frame.
type Answer<'a> = dyn Fn(&[u8]) -> Value + 'a;

/// How many messages `node` has queued.
fn queued(node: &Node) -> u64 {
    node.run(&["status", "--json"]).json()["outbox"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the daemon to deliver one envelope on `conn`, answers it with
/// what `answer` makes of the frame, and returns the frame.
fn answer_one(
    rt: &tokio::runtime::Runtime,
    conn: Connection,
    answer: impl FnOnce(&[u8]) -> Value,
) -> (Vec<u8>, agentfed::transport::ConnectionHandle) {
    let (handle, mut incoming) = conn.into_parts();
    let frame = block(rt, "the daemon's delivery", async move {
        let mut message = incoming.recv().await.expect("a delivery");
        let responder = message
            .take_responder()
            .expect("a delivery expects a reply");
        let (_, _, frame) = message.into_parts();
        let reply = serde_json::to_vec(&answer(&frame)).expect("reply JSON");
        let _ = responder.reply(reply).await;
        // Keep reading so the session's end is seen.
        tokio::spawn(async move { while incoming.recv().await.is_some() {} });
        frame
    });
    (frame, handle)
}

#[test]
fn missing_or_forged_receipts_keep_the_message_queued_and_a_valid_one_ends_it() {
    let arena = Arena::new();
    let rt = runtime();
    let raw = Raw::new("mallory-receipts");
    raw.introduce(&arena, "attested");
    let sent = arena
        .target
        .run(&[
            "send",
            "mallory-receipts",
            "task-assignment",
            "--payload",
            r#"{"task":"prove it"}"#,
            "--json",
        ])
        .json();
    let id = sent["envelope_id"]
        .as_str()
        .expect("envelope id")
        .to_string();
    assert_eq!(queued(&arena.target), 1);

    // Someone else's key, claiming to be the receiver.
    let forger = Identity::generate(
        &NodeId::parse("mallory-receipts").expect("node id"),
        "wss://127.0.0.1:1",
    )
    .expect("identity");
    let unsigned =
        |frame: &[u8]| json!({"ack": {"envelope_id": envelope_id(frame), "status": "accepted"}});
    let forged = |frame: &[u8]| {
        let id = envelope_id(frame);
        let receipt = Receipt::sign(&forger, "alpha", &id, frame, "accepted", "", now_ms());
        json!({"ack": {"envelope_id": id, "status": "accepted"}, "receipt": receipt})
    };
    let answers: [(&str, &Answer<'_>, &str); 2] = [
        ("no receipt", &unsigned, "carries no receipt"),
        ("a forged receipt", &forged, "does not verify"),
    ];
    for (what, answer, reason) in answers {
        let mark = arena.audit_mark();
        let conn = block(
            &rt,
            "raw session",
            raw.connect(&arena.endpoint, arena.pin.clone()),
        )
        .expect("session");
        let (frame, handle) = answer_one(&rt, conn, answer);
        assert_eq!(envelope_id(&frame), id);
        let record = arena.audited(mark, "signature_invalid", |r| {
            r["peer"] == "mallory-receipts" && r["details"]["what"] == "receipt"
        });
        assert!(
            record["details"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason)),
            "{what}: {record}"
        );
        let end = block(&rt, "the daemon closes the session", handle.closed());
        assert_eq!(
            (end.code.as_str(), end.by_peer),
            ("BAD_RECEIPT", true),
            "{what}"
        );
        assert_eq!(queued(&arena.target), 1, "{what}: the message stays queued");
    }

    // The receiver's own signature over what it received ends delivery.
    let conn = block(
        &rt,
        "raw session",
        raw.connect(&arena.endpoint, arena.pin.clone()),
    )
    .expect("session");
    let identity = raw.node.identity().clone();
    let (frame, handle) = answer_one(&rt, conn, |frame| {
        let id = envelope_id(frame);
        let receipt = Receipt::sign(&identity, "alpha", &id, frame, "accepted", "", now_ms());
        json!({"ack": {"envelope_id": id, "status": "accepted"}, "receipt": receipt})
    });
    wait_until("the outbox entry to go", SETTLE, || {
        queued(&arena.target) == 0
    });
    assert!(!handle.is_closed(), "a valid receipt keeps the session");
    handle.close("NORMAL");

    // The sender can prove the delivery to anyone with the receiver's key.
    let proof = arena.target.run(&["audit", "proof", &id]).json();
    assert_eq!(proof["receiver"], "mallory-receipts", "{proof}");
    assert_eq!(proof["sender"], "alpha");
    assert_eq!(proof["outcome"], "accepted");
    assert_eq!(proof["digest"], agentfed::receipt::frame_digest(&frame));
    let key = raw.node.manifest().manifest.public_key.clone();
    assert_eq!(proof["public_key"], key);
    let file = arena
        .target
        .write_file("proof.json", proof.to_string().as_bytes());
    let file = file.to_str().expect("path");
    let checked = arena
        .target
        .run(&["audit", "proof", "--verify", file, "--public-key", &key]);
    assert!(checked.ok().contains("valid receipt"), "{}", checked.stdout);
    // Edited, or checked with another key, it proves nothing.
    let mut edited = proof.clone();
    edited["outcome"] = json!("rejected");
    let edited_file = arena
        .target
        .write_file("edited.json", edited.to_string().as_bytes());
    arena
        .target
        .run(&[
            "audit",
            "proof",
            "--verify",
            edited_file.to_str().unwrap(),
            "--public-key",
            &key,
        ])
        .fails(1, &["INVALID_RECEIPT"]);
    arena
        .target
        .run(&[
            "audit",
            "proof",
            "--verify",
            file,
            "--public-key",
            &forger.public_key_b64(),
        ])
        .fails(1, &["INVALID_RECEIPT"]);
    arena
        .target
        .run(&["audit", "proof", "0123456789abcdef0123456789abcdef"])
        .fails(2, &["NOT_FOUND"]);
    arena.still_serves("receipts");
}

#[test]
fn an_old_peer_gets_and_gives_unsigned_acknowledgements_and_a_new_one_gets_receipts() {
    let arena = Arena::new();
    let rt = runtime();
    let alpha_key = manifest_field(&arena.target, "public_key");

    // A current peer's envelopes are acknowledged with alpha's receipt.
    let new = Raw::new("new-peer");
    new.introduce(&arena, "attested");
    let conn = block(
        &rt,
        "new session",
        new.connect(&arena.endpoint, arena.pin.clone()),
    )
    .expect("session");
    let frame = new.frame(
        Some(conn.session_id().to_string()),
        now_ms(),
        json!({"n": 1}),
    );
    let reply = raw_reply(&rt, &conn, frame.clone());
    let receipt: Receipt = serde_json::from_value(reply["receipt"].clone()).expect("a receipt");
    let id = envelope_id(&frame);
    receipt
        .check(
            &Expected {
                receiver: "alpha",
                sender: "new-peer",
                envelope_id: &id,
                frame: &frame,
                outcome: "accepted",
                reason: "",
            },
            &alpha_key,
        )
        .expect("alpha's receipt checks");
    conn.close("NORMAL");

    // A peer whose manifest says protocol version 1 gets none...
    let old = Raw::speaking("old-peer", 1);
    old.introduce(&arena, "attested");
    let conn = block(
        &rt,
        "old session",
        old.connect(&arena.endpoint, arena.pin.clone()),
    )
    .expect("an old peer is still admitted");
    let frame = old.frame(
        Some(conn.session_id().to_string()),
        now_ms(),
        json!({"n": 2}),
    );
    let reply = raw_reply(&rt, &conn, frame);
    assert!(
        reply["ack"].is_object() && reply.get("receipt").is_none(),
        "{reply}"
    );

    // ...and its unsigned acknowledgement still ends delivery to it.
    let sent = arena
        .target
        .run(&[
            "send",
            "old-peer",
            "task-assignment",
            "--payload",
            r#"{"n":3}"#,
            "--json",
        ])
        .json();
    let sent_id = sent["envelope_id"].as_str().expect("id").to_string();
    let (_, handle) = answer_one(
        &rt,
        conn,
        |frame| json!({"ack": {"envelope_id": envelope_id(frame), "status": "accepted"}}),
    );
    wait_until("delivery to the old peer", SETTLE, || {
        queued(&arena.target) == 0
    });
    assert!(!handle.is_closed());
    arena
        .target
        .run(&["audit", "proof", &sent_id])
        .fails(1, &["NO_RECEIPT", "protocol version 1"]);
    handle.close("NORMAL");
}

#[test]
fn two_daemons_prove_a_delivery_with_the_receiver_s_key() {
    let arena = Arena::new();
    let (alpha, beta) = (&arena.target, &arena.legit);
    for (node, peer) in [(alpha, "beta"), (beta, "alpha")] {
        node.run(&[
            "trust",
            "set",
            peer,
            "attested",
            "--reason",
            "receipts test",
        ])
        .ok();
    }
    let sent = alpha
        .run(&[
            "send",
            "beta",
            "task-assignment",
            "--payload",
            r#"{"task":"deliver with proof"}"#,
            "--wait",
            "30",
            "--json",
        ])
        .json();
    let id = sent["receipt"]["envelope_id"]
        .as_str()
        .expect("id")
        .to_string();
    let proof = alpha.run(&["audit", "proof", &id]).json();
    assert_eq!(
        (proof["receiver"].as_str(), proof["outcome"].as_str()),
        (Some("beta"), Some("accepted")),
        "{proof}"
    );
    let file = alpha.write_file("beta-proof.json", proof.to_string().as_bytes());
    let beta_key = manifest_field(beta, "public_key");
    alpha
        .run(&[
            "audit",
            "proof",
            "--verify",
            file.to_str().unwrap(),
            "--public-key",
            &beta_key,
        ])
        .ok();
    // Offline too: the proof is read from the stopped daemon's store.
    let mut alpha_home = arena;
    alpha_home.target.stop();
    let again = alpha_home.target.run(&["audit", "proof", &id]).json();
    assert_eq!(again, proof);
}

/// Sends `frame` on `conn` and returns the daemon's reply as JSON.
fn raw_reply(rt: &tokio::runtime::Runtime, conn: &Connection, frame: Vec<u8>) -> Value {
    let bytes = block(
        rt,
        "the daemon's reply",
        conn.request(
            agentfed::transport::Priority::Interactive,
            frame,
            Duration::from_secs(30),
        ),
    )
    .expect("reply");
    serde_json::from_slice(&bytes).expect("reply JSON")
}
