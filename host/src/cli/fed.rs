//! The federation verbs: `join`, `leave`, `sessions`, `query`,
//! `broadcast`, `inbox`. Each makes one control-API call to the daemon and
//! prints text (or the JSON result with `--json`).

use std::path::Path;

use anyhow::anyhow;
use clap::Args;
use serde_json::{Value, json};

use super::{CliError, CliResult};
use crate::control::client;

fn call(home: &Path, method: &str, params: Value) -> Result<Value, CliError> {
    Ok(client::call(home, method, params)?)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn parse_payload(raw: &str) -> Result<Value, CliError> {
    let text = match raw.strip_prefix('@') {
        Some(path) => {
            let bytes =
                super::node::read_limited(Path::new(path), 1 << 20).map_err(CliError::usage)?;
            String::from_utf8(bytes)
                .map_err(|_| CliError::usage(anyhow!("--payload file is not UTF-8")))?
        }
        None => raw.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::usage(anyhow!(
            "--payload is not valid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// `agentfed join` arguments.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The peer's endpoint, e.g. wss://192.0.2.10:9100.
    pub endpoint: String,
    /// Expected TLS certificate fingerprint (64 hex digits; `:` allowed).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["public_key", "accept_new"])]
    pub fingerprint: Option<String>,
    /// Expected Ed25519 public key (base64, as in the peer's manifest).
    #[arg(long, value_name = "B64", conflicts_with = "accept_new")]
    pub public_key: Option<String>,
    /// Trust the certificate the peer's signed manifest names (first use).
    #[arg(long)]
    pub accept_new: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed join`.
pub fn join(home: &Path, args: JoinArgs) -> CliResult {
    let mut params = json!({"endpoint": args.endpoint, "accept_new": args.accept_new});
    if let Some(fp) = &args.fingerprint {
        params["fingerprint"] = json!(fp);
    }
    if let Some(key) = &args.public_key {
        params["public_key"] = json!(key);
    }
    let result = call(home, "join", params)?;
    if args.json {
        print_json(&result);
    } else if result["joined"] == json!(true) {
        println!(
            "joined {} (session {}, {}; trust level {})",
            text(&result["peer"]),
            text(&result["session"]["session_id"]),
            text(&result["session"]["role"]),
            text(&result["trust_level"]),
        );
    } else {
        println!(
            "{} refused the session: {}",
            text(&result["peer"]),
            text(&result["refused_by_peer"])
        );
        println!("  {}", text(&result["hint"]));
    }
    Ok(())
}

/// `agentfed leave` arguments.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The peer's node id.
    pub peer: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed leave`.
pub fn leave(home: &Path, args: LeaveArgs) -> CliResult {
    let result = call(home, "leave", json!({"peer": args.peer}))?;
    if args.json {
        print_json(&result);
    } else {
        match result["session_closed"].as_str() {
            Some(id) => println!("left {} (session {id} closed)", args.peer),
            None => println!("left {} (no session was open)", args.peer),
        }
    }
    Ok(())
}

/// `agentfed sessions`.
pub fn sessions(home: &Path, json_out: bool) -> CliResult {
    let result = call(home, "sessions", json!({}))?;
    if json_out {
        print_json(&result);
        return Ok(());
    }
    let list = result.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no live sessions");
        return Ok(());
    }
    println!(
        "{:<24} {:<33} {:<7} {:<22} EXPIRES",
        "PEER", "SESSION", "ROLE", "REMOTE"
    );
    for s in list {
        println!(
            "{:<24} {:<33} {:<7} {:<22} {}",
            text(&s["peer"]),
            text(&s["session_id"]),
            text(&s["role"]),
            text(&s["remote_addr"]),
            text(&s["expires_at_ms"])
        );
    }
    Ok(())
}

/// `agentfed query` arguments.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Target peer (needs a live session).
    pub peer: String,
    /// Message type, e.g. ping.
    #[arg(value_name = "TYPE")]
    pub message_type: String,
    /// The payload: JSON text, or @FILE.
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    pub payload: String,
    /// How long to wait for the reply, ms.
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed query`.
pub fn query(home: &Path, args: QueryArgs) -> CliResult {
    let payload = parse_payload(&args.payload)?;
    let mut params =
        json!({"peer": args.peer, "message_type": args.message_type, "payload": payload});
    if let Some(ms) = args.timeout_ms {
        params["timeout_ms"] = json!(ms);
    }
    let result = call(home, "query", params)?;
    if args.json {
        print_json(&result);
    } else {
        println!(
            "{} {}: {}",
            text(&result["peer"]),
            text(&result["status"]),
            match (&result["reply"], &result["reason"]) {
                (Value::Null, Value::Null) => "(no reply)".to_string(),
                (Value::Null, reason) => text(reason),
                (reply, _) => reply.to_string(),
            }
        );
    }
    Ok(())
}

/// `agentfed broadcast` arguments.
#[derive(Debug, Args)]
pub struct BroadcastArgs {
    /// Message type, e.g. status-broadcast.
    #[arg(value_name = "TYPE")]
    pub message_type: String,
    /// The payload: JSON text, or @FILE.
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    pub payload: String,
    /// How long to wait for each acknowledgement, ms.
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed broadcast`: exit 1 if any peer failed.
pub fn broadcast(home: &Path, args: BroadcastArgs) -> CliResult {
    let payload = parse_payload(&args.payload)?;
    let mut params = json!({"message_type": args.message_type, "payload": payload});
    if let Some(ms) = args.timeout_ms {
        params["timeout_ms"] = json!(ms);
    }
    let result = call(home, "broadcast", params)?;
    let list = result.as_array().cloned().unwrap_or_default();
    let failed = list.iter().filter(|r| r["ok"] != json!(true)).count();
    if args.json {
        print_json(&result);
    } else if list.is_empty() {
        println!("no live sessions: nothing sent");
    } else {
        for r in &list {
            if r["ok"] == json!(true) {
                println!("{}: {}", text(&r["peer"]), text(&r["result"]["status"]));
            } else {
                println!(
                    "{}: failed: {}",
                    text(&r["peer"]),
                    text(&r["error"]["message"])
                );
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(anyhow!(
            "broadcast failed for {failed} of {} peers",
            list.len()
        )));
    }
    Ok(())
}

/// `agentfed inbox` arguments.
#[derive(Debug, Args)]
pub struct InboxArgs {
    /// Only messages with a sequence number greater than N.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
    /// At most N messages (1-10000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed inbox`.
pub fn inbox(home: &Path, args: InboxArgs) -> CliResult {
    let result = call(
        home,
        "inbox",
        json!({"after": args.after, "limit": args.limit}),
    )?;
    if args.json {
        print_json(&result);
        return Ok(());
    }
    let list = result.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("inbox empty");
    }
    for m in list {
        println!(
            "#{} from {} {} {}",
            text(&m["seq"]),
            text(&m["from"]),
            text(&m["message_type"]),
            m["payload"]
        );
    }
    Ok(())
}
