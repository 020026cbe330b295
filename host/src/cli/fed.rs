//! The federation verbs: `join`, `leave`, `sessions`, `query`,
//! `broadcast`, `inbox`. Each makes one control-API call to the daemon and
//! prints text (or the JSON result with `--json`).

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use clap::Args;
use serde_json::{Value, json};

use super::ops::parse_payload;
use super::{CliError, CliResult, message_types_help};
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
        Value::String(s) => super::printable(s).into_owned(),
        Value::Null => "-".into(),
        other => super::printable(&other.to_string()).into_owned(),
    }
}

/// `agentfed join` arguments.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The peer's endpoint, e.g. wss://192.0.2.10:9100.
    pub endpoint: String,
    /// Expected TLS certificate fingerprint of the peer: 64 hex digits (`:`
    /// allowed), shown as "tls fingerprint" by `init` and `manifest verify`
    /// and as `tls_fingerprint` in the manifest. Not the `sha256:…` identity
    /// fingerprint (to pin the identity key, use --public-key).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["public_key", "accept_new"])]
    pub fingerprint: Option<String>,
    /// Expected Ed25519 public key: standard base64 of 32 bytes (44
    /// characters), shown as "public key" by `init` and `manifest verify`
    /// and as `public_key` in the manifest.
    #[arg(long, value_name = "B64", conflicts_with = "accept_new")]
    pub public_key: Option<String>,
    /// Trust the certificate the peer's signed manifest names (first use);
    /// the fingerprint trusted is printed, to compare out of band.
    #[arg(long)]
    pub accept_new: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Checks `--fingerprint` locally: 64 hex digits (`:` allowed). A
/// `sha256:…` identity fingerprint is refused with what to use instead.
fn check_fingerprint(raw: &str) -> Result<(), CliError> {
    let trimmed = raw.trim();
    if trimmed
        .get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("sha256:"))
    {
        return Err(CliError::usage(anyhow!(
            "--fingerprint takes the peer's TLS certificate fingerprint (64 hex digits, shown as `tls fingerprint` by `agentfed init` and `agentfed manifest verify`, `tls_fingerprint` in its manifest); `sha256:…` is its identity key fingerprint, which join does not take (to pin the identity key, pass --public-key B64)"
        )));
    }
    let hex: String = trimmed.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::usage(anyhow!(
            "--fingerprint must be the peer's TLS certificate fingerprint: 64 hex digits (`:` allowed), shown as `tls fingerprint` by `agentfed init` and `agentfed manifest verify`"
        )));
    }
    Ok(())
}

/// Checks `--public-key` locally: standard padded base64 of 32 bytes.
fn check_public_key(raw: &str) -> Result<(), CliError> {
    crate::identity::decode_key32("public_key", raw.trim()).map_err(|_| {
        CliError::usage(anyhow!(
            "--public-key is not a valid Ed25519 public key: expected the standard base64 (padded, 44 characters) of 32 bytes, shown as `public key` by `agentfed init` and `agentfed manifest verify` and as `public_key` in the manifest"
        ))
    })?;
    Ok(())
}

/// `agentfed join`: exit 0 when a session came up; exit 1 when the peer
/// refused it (the output says what its operator must do).
pub fn join(home: &Path, args: JoinArgs) -> CliResult {
    if let Some(fp) = &args.fingerprint {
        check_fingerprint(fp)?;
    }
    if let Some(key) = &args.public_key {
        check_public_key(key)?;
    }
    let mut params = json!({"endpoint": args.endpoint, "accept_new": args.accept_new});
    if let Some(fp) = &args.fingerprint {
        params["fingerprint"] = json!(fp.trim());
    }
    if let Some(key) = &args.public_key {
        params["public_key"] = json!(key.trim());
    }
    let result = match client::call(home, "join", params) {
        Ok(result) => result,
        // `--json` callers get the refusal's structured details (what would
        // be trusted) on stdout, as for every other join outcome.
        Err(client::CallError::Remote(body)) if args.json => {
            print_json(&json!({"joined": false, "error": body}));
            return Err(client::CallError::Remote(body).into());
        }
        Err(e) => return Err(e.into()),
    };
    if result["joined"] == json!(true) {
        if args.json {
            print_json(&result);
            return Ok(());
        }
        println!(
            "joined {} (session {}, {}; trust level {})",
            text(&result["peer"]),
            text(&result["session"]["session_id"]),
            text(&result["session"]["role"]),
            text(&result["trust_level"]),
        );
        if args.accept_new {
            println!(
                "trusted TLS certificate fingerprint {} (compare it with the peer's operator out of band)",
                text(&result["tls_fingerprint"])
            );
        }
        return Ok(());
    }
    let peer = text(&result["peer"]);
    let code = text(&result["refused_by_peer"]);
    let hint = text(&result["hint"]);
    if args.json {
        print_json(&result);
    } else {
        println!("{peer} refused the session: {code}");
        println!("  {hint}");
    }
    Err(CliError::failed(anyhow!(
        "{peer} refused the session: {code}"
    )))
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
            super::ops::time_text(&s["expires_at_ms"])
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
    #[arg(value_name = "TYPE", help = message_types_help())]
    pub message_type: String,
    /// The payload: JSON text, @FILE, or @- for stdin (at most 16 MiB, the wire's limit; over 1 MiB only context-share and memory-response to a TRUSTED peer).
    #[arg(long, value_name = "JSON|@FILE|@-", default_value = "{}")]
    pub payload: String,
    /// How long to wait for the reply, ms: 1-600000 (default 10000).
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Makes a retry safe: within 24 h, a query with the same KEY and the
    /// same peer, type and payload that was answered is not sent again;
    /// the recorded answer is printed (JSON: "repeated": true). A query
    /// that got no answer records nothing, so its retry is sent afresh.
    /// The same KEY with anything else is IDEMPOTENCY_KEY_REUSED (exit 2).
    /// 1-128 printable ASCII characters, e.g. a UUID.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
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
    if let Some(key) = &args.idempotency_key {
        crate::coordinator::check_idempotency_key(key).map_err(CliError::usage)?;
        params["idempotency_key"] = json!(key);
    }
    let result = call(home, "query", params)?;
    if args.json {
        print_json(&result);
    } else {
        println!(
            "{}{} {}: {}",
            if result["repeated"] == true {
                "already answered (same idempotency key): "
            } else {
                ""
            },
            text(&result["peer"]),
            text(&result["status"]),
            match (&result["reply"], &result["reason"]) {
                (Value::Null, Value::Null) => "(no reply)".to_string(),
                (Value::Null, reason) => text(reason),
                (reply, _) => super::printable(&reply.to_string()).into_owned(),
            }
        );
    }
    Ok(())
}

/// `agentfed broadcast` arguments.
#[derive(Debug, Args)]
pub struct BroadcastArgs {
    /// Message type, e.g. status-broadcast.
    #[arg(value_name = "TYPE", help = message_types_help())]
    pub message_type: String,
    /// The payload: JSON text, @FILE, or @- for stdin (at most 16 MiB, the wire's limit; over 1 MiB only context-share and memory-response to a TRUSTED peer).
    #[arg(long, value_name = "JSON|@FILE|@-", default_value = "{}")]
    pub payload: String,
    /// How long to wait for each acknowledgement, ms: 1-600000 (default
    /// 10000).
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Makes a retry safe: within 24 h, a broadcast with the same KEY and
    /// the same type and payload sends nothing and prints the results
    /// recorded when the first one finished (JSON: each with "repeated":
    /// true). The same KEY with anything else is IDEMPOTENCY_KEY_REUSED
    /// (exit 2). 1-128 printable ASCII characters, e.g. a UUID.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
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
    if let Some(key) = &args.idempotency_key {
        crate::coordinator::check_idempotency_key(key).map_err(CliError::usage)?;
        params["idempotency_key"] = json!(key);
    }
    let result = call(home, "broadcast", params)?;
    let list = result.as_array().cloned().unwrap_or_default();
    let failed = list.iter().filter(|r| r["ok"] != json!(true)).count();
    if args.json {
        print_json(&result);
    } else if list.is_empty() {
        println!("no live sessions: nothing sent");
    } else {
        if list.iter().any(|r| r["repeated"] == true) {
            println!("already broadcast (same idempotency key); the recorded results:");
        }
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
    /// When no message is there yet, wait up to SECS seconds (1-60) for
    /// one to arrive before answering.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=60))]
    pub wait: Option<u64>,
    /// Keep printing messages as they arrive until interrupted: first those
    /// after --after (default 0: everything already there), then each new
    /// one; across daemon restarts it waits and goes on. With --json, one
    /// JSON object per line.
    #[arg(long, conflicts_with = "wait")]
    pub follow: bool,
    /// Instead of listing: remove the messages numbered up to and
    /// including SEQ, once they are processed (their receipt stays in the
    /// audit log; their numbers are never reused).
    #[arg(long, value_name = "SEQ", conflicts_with_all = ["after", "limit", "wait", "follow"])]
    pub remove_through: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How long each `inbox` call of `--follow` waits for a message: well
/// under the daemon's cap, so a stopped daemon is noticed soon, and short
/// enough that a reader that went away (`| head -1`) is noticed within a
/// second even when no message comes.
const FOLLOW_WAIT_MS: u64 = 1_000;

/// Whether nobody reads our standard output any more (the read end of a
/// pipe was closed): asked without writing, so `--follow` can end while
/// no message comes.
fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP),
        Err(_) => false,
    }
}

/// `agentfed inbox`.
pub fn inbox(home: &Path, args: InboxArgs) -> CliResult {
    if let Some(through) = args.remove_through {
        let result = call(home, "inbox.remove", json!({"through": through}))?;
        if args.json {
            print_json(&result);
        } else {
            println!(
                "removed {} inbox messages (through #{through})",
                text(&result["removed"])
            );
        }
        return Ok(());
    }
    if args.follow {
        return follow_inbox(home, &args);
    }
    // The client's response timeout (client::DEFAULT_TIMEOUT) is longer
    // than the longest wait the daemon allows.
    let wait_ms = args.wait.map_or(0, |secs| secs * 1000);
    let result = call(
        home,
        "inbox",
        json!({"after": args.after, "limit": args.limit, "wait_ms": wait_ms}),
    )?;
    if args.json {
        print_json(&result);
        return Ok(());
    }
    let list = result.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("inbox empty");
    }
    for m in &list {
        println!("{}", inbox_line(m));
    }
    Ok(())
}

/// `agentfed inbox --follow`: long-polls the inbox until interrupted,
/// printing each message once, in order. When the daemon goes away (say,
/// a restart) it waits for it to come back and goes on from the last
/// message printed; when whoever reads its output goes away (`| head`),
/// it ends quietly.
fn follow_inbox(home: &Path, args: &InboxArgs) -> CliResult {
    let mut client = client::Client::connect(home)?;
    let mut out = std::io::stdout().lock();
    let mut after = args.after;
    loop {
        let page = match client.call(
            "inbox",
            json!({"after": after, "limit": args.limit, "wait_ms": FOLLOW_WAIT_MS}),
        ) {
            Ok(page) => page,
            Err(
                e @ (client::CallError::Remote(_) | client::CallError::PermissionDenied { .. }),
            ) => {
                return Err(e.into());
            }
            Err(lost) => {
                eprintln!("agentfed: lost the daemon ({lost}); waiting for it to come back");
                client = reconnect(home)?;
                continue;
            }
        };
        for m in page.as_array().map(Vec::as_slice).unwrap_or_default() {
            let written = if args.json {
                writeln!(out, "{m}")
            } else {
                writeln!(out, "{}", inbox_line(m))
            };
            if written.is_err() {
                return Ok(()); // nobody reads any more
            }
            after = after.max(m["seq"].as_u64().unwrap_or(after));
        }
        // Whoever reads the pipe sees each message as it comes.
        if out.flush().is_err() || stdout_closed() {
            return Ok(());
        }
    }
}

/// Connects again once the daemon answers (every second until then).
fn reconnect(home: &Path) -> Result<client::Client, CliError> {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        match client::Client::connect(home) {
            Ok(client) => return Ok(client),
            Err(client::CallError::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn inbox_line(m: &Value) -> String {
    format!(
        "#{} from {} {} {}",
        text(&m["seq"]),
        text(&m["from"]),
        text(&m["message_type"]),
        super::printable(&m["payload"].to_string())
    )
}
