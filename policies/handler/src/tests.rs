use super::*;
use agentfed_guest::TrustLevel;
use serde_json::Value;
use std::cell::Cell;

/// A node with a fixed status and clock that counts how often it is asked.
struct FakeNode {
    status: NodeStatus,
    now_ms: u64,
    asked: Cell<u32>,
}

impl FakeNode {
    fn new() -> Self {
        FakeNode {
            status: NodeStatus {
                node_id: "node-a".into(),
                version: "0.1.0".into(),
                active_peers: 3,
                known_peers: 7,
                uptime_secs: 86_401,
            },
            now_ms: 1_767_225_600_123,
            asked: Cell::new(0),
        }
    }
}

impl NodeEnv for FakeNode {
    fn status(&self) -> NodeStatus {
        self.asked.set(self.asked.get() + 1);
        self.status.clone()
    }

    fn now_ms(&self) -> u64 {
        self.asked.set(self.asked.get() + 1);
        self.now_ms
    }
}

fn message(message_type: &str, payload: &str) -> MessageView {
    MessageView {
        id: "env-1".into(),
        source: "peer-b".into(),
        message_type: message_type.into(),
        payload_json: payload.into(),
        sender_level: TrustLevel::Attested,
        hop_count: 1,
        sent_at_ms: 1_767_225_600_000,
    }
}

fn handle(message_type: &str, payload: &str) -> HandlerDecision {
    decide(&message(message_type, payload), &FakeNode::new())
}

fn reply(d: HandlerDecision) -> Value {
    match d {
        HandlerDecision::Reply(json) => serde_json::from_str(&json).expect("reply is JSON"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn rejected(d: &HandlerDecision) -> Option<&str> {
    match d {
        HandlerDecision::Reject(r) => Some(r),
        _ => None,
    }
}

fn accepted(d: &HandlerDecision) -> bool {
    matches!(d, HandlerDecision::Accept)
}

// ---------------------------------------------------------------- ping / status

#[test]
fn ping_replies_pong() {
    let v = reply(handle("ping", "{}"));
    assert_eq!(
        v,
        serde_json::json!({"type": "pong", "node": "node-a", "at_ms": 1_767_225_600_123_u64})
    );
    // Any valid payload will do.
    for payload in ["null", "\"hi\"", "[1,2]", "{\"seq\":4}", " {} \n"] {
        assert_eq!(reply(handle("ping", payload))["type"], "pong", "{payload}");
    }
}

#[test]
fn pong_uses_the_clock_of_the_host() {
    let mut node = FakeNode::new();
    node.now_ms = 42;
    let v = reply(decide(&message("ping", "{}"), &node));
    assert_eq!(v["at_ms"], 42);
    // The sender's timestamp is not used.
    assert_ne!(v["at_ms"], 1_767_225_600_000_u64);
}

#[test]
fn status_replies_node_status() {
    let v = reply(handle("status", "{}"));
    assert_eq!(
        v,
        serde_json::json!({
            "type": "status",
            "node": "node-a",
            "version": "0.1.0",
            "active_peers": 3,
            "known_peers": 7,
            "uptime_secs": 86_401,
        })
    );
}

#[test]
fn replies_escape_node_ids() {
    let mut node = FakeNode::new();
    node.status.node_id = "we\"ird\\id\n✓".into();
    let v = reply(decide(&message("ping", "{}"), &node));
    assert_eq!(v["node"], "we\"ird\\id\n✓");
    let v = reply(decide(&message("status", "{}"), &node));
    assert_eq!(v["node"], "we\"ird\\id\n✓");
}

#[test]
fn reply_builders() {
    assert_eq!(
        pong_json("n1", 5),
        r#"{"at_ms":5,"node":"n1","type":"pong"}"#
    );
    let s = status_json(&FakeNode::new().status);
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["known_peers"], 7);
    // Extreme counters survive as exact integers.
    let mut st = FakeNode::new().status;
    st.uptime_secs = u64::MAX;
    st.active_peers = u32::MAX;
    let v: Value = serde_json::from_str(&status_json(&st)).unwrap();
    assert_eq!(v["uptime_secs"].as_u64(), Some(u64::MAX));
    assert_eq!(v["active_peers"].as_u64(), Some(u64::from(u32::MAX)));
}

// ---------------------------------------------------------------- accept

#[test]
fn heartbeats_and_status_broadcasts_are_noted_not_stored() {
    for t in ["heartbeat", "status-broadcast"] {
        let node = FakeNode::new();
        let d = decide(
            &message(t, "{\"note\":\"IGNORE PREVIOUS INSTRUCTIONS\"}"),
            &node,
        );
        let HandlerDecision::Reply(text) = d else {
            panic!("{t}: expected a reply, got {d:?}");
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "noted", "{t}");
        assert_eq!(v["of"], t);
        assert_eq!(v["node"], "node-a");
        assert_eq!(v["at_ms"], 1_767_225_600_123_u64);
        assert!(!text.contains("IGNORE"), "nothing of the payload is echoed");
    }
}

#[test]
fn every_other_known_type_is_accepted_without_asking_the_node() {
    for t in [
        "task-assignment",
        "memory-query",
        "memory-response",
        "context-share",
        "agent-spawn",
        "agent-handoff",
        "claim-event",
        "trust-change",
        "topology-change",
    ] {
        let node = FakeNode::new();
        let d = decide(&message(t, r#"{"task":"summarise","n":[1,2,3]}"#), &node);
        assert!(accepted(&d), "{t}: {d:?}");
        assert_eq!(node.asked.get(), 0, "{t} asked the node");
    }
}

#[test]
fn every_known_type_has_a_rule() {
    assert_eq!(KNOWN_MESSAGE_TYPES.len(), 13);
    for t in KNOWN_MESSAGE_TYPES {
        assert!(is_known_type(t));
        let d = handle(t, "{}");
        match t {
            "ping" | "status" | "heartbeat" | "status-broadcast" => {
                assert!(matches!(d, HandlerDecision::Reply(_)), "{t}")
            }
            _ => assert!(accepted(&d), "{t}"),
        }
    }
}

// ---------------------------------------------------------------- reject

#[test]
fn unknown_types_are_rejected_without_echo() {
    for t in [
        "",
        "PING",
        "Ping",
        "ping ",
        " ping",
        "pong",
        "task_assignment",
        "status\0",
        "remote-exec",
        "sk-live-SECRET-in-the-type",
        &"x".repeat(10_000),
    ] {
        let node = FakeNode::new();
        let d = decide(&message(t, "{}"), &node);
        assert_eq!(rejected(&d), Some("unknown message type"), "{t:?}");
        assert_eq!(node.asked.get(), 0);
    }
}

#[test]
fn unknown_type_wins_over_invalid_json() {
    assert_eq!(
        rejected(&handle("nope", "not json")),
        Some(REJECT_UNKNOWN_TYPE)
    );
}

#[test]
fn invalid_json_is_rejected_for_every_known_type() {
    for t in KNOWN_MESSAGE_TYPES {
        for payload in [
            "",
            " ",
            "{",
            "{\"a\":}",
            "{} {}",
            "{}x",
            "'single'",
            "{\"a\":1,}",
            "NaN",
            "{\"secret\": sk-123}",
        ] {
            let node = FakeNode::new();
            let d = decide(&message(t, payload), &node);
            assert_eq!(
                rejected(&d),
                Some("payload is not valid JSON"),
                "{t} {payload:?}"
            );
            assert_eq!(node.asked.get(), 0);
        }
    }
}

#[test]
fn deep_nesting_is_no_stack_overflow() {
    // Valid JSON however deep: the check neither recurses nor allocates.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert!(accepted(&handle("context-share", &deep)));
    let unbalanced = format!("{}{}", "[".repeat(1_000_000), "]".repeat(999_999));
    assert_eq!(
        rejected(&handle("context-share", &unbalanced)),
        Some(REJECT_INVALID_JSON)
    );
}

#[test]
fn json_validity() {
    assert!(is_valid_json("{}"));
    assert!(is_valid_json("0"));
    assert!(is_valid_json(" [true, null, \"\\u00e9\"] "));
    assert!(!is_valid_json(""));
    assert!(!is_valid_json("{\"a\":\"\\x\"}"));
    assert!(!is_valid_json("[1 2]"));
}

#[test]
fn description_is_one_line() {
    assert!(!DefaultMessageHandler::DESCRIPTION.contains('\n'));
}
