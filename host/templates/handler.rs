//! {{name}}: a message handler for agentfed.
//!
//! Answers `ping`, accepts `task-assignment` and `context-share` into the
//! inbox, and rejects everything else.
use agentfed_guest::handler::*;

/// The plugin type, exported below.
pub struct Handler;

/// The decision, as a pure function (`now_ms` passed in for tests).
pub fn decide(message: &MessageView, now_ms: u64) -> HandlerDecision {
    match message.message_type.as_str() {
        "ping" => HandlerDecision::Reply(format!("{{\"type\":\"pong\",\"at_ms\":{now_ms}}}")),
        "task-assignment" | "context-share" => HandlerDecision::Accept,
        _ => HandlerDecision::Reject("message type not handled here".into()),
    }
}

impl MessageHandler for Handler {
    const DESCRIPTION: &'static str = "{{name}}: pings, tasks and context only";

    fn handle(message: MessageView) -> Result<HandlerDecision, String> {
        Ok(decide(&message, host::now_ms()))
    }
}

agentfed_guest::export_message_handler!(Handler);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(message_type: &str) -> MessageView {
        MessageView {
            id: "m-1".into(), source: "peer-1".into(), message_type: message_type.into(),
            payload_json: "{}".into(), sender_level: TrustLevel::Attested, hop_count: 0, sent_at_ms: 0,
        }
    }

    #[test]
    fn answers_ping() {
        assert!(matches!(decide(&message("ping"), 7), HandlerDecision::Reply(r) if r.contains("pong")));
    }

    #[test]
    fn accepts_tasks_rejects_the_rest() {
        assert!(matches!(decide(&message("task-assignment"), 0), HandlerDecision::Accept));
        assert!(matches!(decide(&message("agent-spawn"), 0), HandlerDecision::Reject(_)));
    }
}
