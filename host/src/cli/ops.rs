//! The CLI verbs that talk to a running daemon over the control socket:
//! each connects, makes one request and prints the result (a table or a
//! line for humans, the JSON result with `--json`).
//!
//! Exit codes: 0 ok; 1 the operation was refused or failed (e.g.
//! `PEER_SUSPENDED`, `AUDIT_TAMPERED`); 2 bad usage or input (nothing
//! changed); 3 no daemon is running for the home.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::{CliError, CliResult, printable};
use crate::control::client::{self, CallError};

/// Exit code when no daemon is running.
pub const EXIT_NOT_RUNNING: u8 = 3;

impl From<CallError> for CliError {
    fn from(e: CallError) -> Self {
        let code = match &e {
            CallError::NotRunning { .. } | CallError::NoHome { .. } => EXIT_NOT_RUNNING,
            CallError::Remote(body) if body.bad_input => 2,
            _ => 1,
        };
        CliError {
            code,
            error: anyhow::Error::new(e),
        }
    }
}

/// One control request to the home's daemon, as a CLI result.
pub(super) fn call(home: &Path, method: &str, params: Value) -> Result<Value, CliError> {
    Ok(client::call(home, method, params)?)
}

/// Prints `value` as pretty JSON.
pub(super) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Output switch shared by the verbs.
#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print the JSON result instead of text.
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

/// `agentfed status`.
pub fn status(home: &Path, out: JsonFlag) -> CliResult {
    let s = call(home, "status", json!({}))?;
    if out.json {
        print_json(&s);
        return Ok(());
    }
    println!("node          {}", text(&s["node_id"]));
    println!("version       {}", text(&s["version"]));
    println!("endpoint      {}", endpoint_text(&s["endpoint"]));
    println!("uptime        {}s", text(&s["uptime_secs"]));
    println!("clock         {}", time_text(&s["now_ms"]));
    println!("peers         {}", text(&s["peers"]));
    println!("  by trust    {}", counts(&s["by_trust_level"]));
    println!("  by breaker  {}", counts(&s["by_breaker_state"]));
    println!("audit records {}", text(&s["audit_records"]));
    println!("outbox        {}", text(&s["outbox"]));
    println!(
        "commits       {} batches carrying {} changes; {} made durable by the message log, {} checkpoints",
        text(&s["store_commits"]["commits"]),
        text(&s["store_commits"]["jobs"]),
        text(&s["store_commits"]["logged"]),
        text(&s["store_commits"]["checkpoints"])
    );
    println!(
        "signatures    {} verified in batches, {} alone",
        text(&s["signatures"]["batched"]),
        text(&s["signatures"]["alone"])
    );
    if let Some(plugins) = s["plugins"].as_array() {
        for p in plugins {
            let slot = match p["position"].as_u64() {
                Some(n) if n > 0 => format!("{}+{n}", text(&p["kind"])),
                _ => text(&p["kind"]),
            };
            println!(
                "plugin        {:<8} {} {} ({})",
                slot,
                text(&p["name"]),
                text(&p["version"]),
                text(&p["source"])
            );
        }
    }
    Ok(())
}

fn counts(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, n)| format!("{k}={}", text(n)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    }
}

// ---------------------------------------------------------------------------
// peers
// ---------------------------------------------------------------------------

/// `agentfed peers` arguments.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Add or remove a peer; without a subcommand, list peers.
    #[command(subcommand)]
    pub command: Option<PeersCommand>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `agentfed peers` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Add a peer out of band from its signed manifest (verified; the peer
    /// starts VERIFIED).
    Add {
        /// The manifest JSON file (`-` for stdin), as `agentfed manifest` prints it.
        manifest: PathBuf,
    },
    /// Forget a peer.
    Remove {
        /// Peer node id.
        peer: String,
    },
    /// Show one peer in full.
    Show {
        /// Peer node id.
        peer: String,
    },
}

/// `agentfed peers …`.
pub fn peers(home: &Path, args: PeersArgs) -> CliResult {
    match args.command {
        None => {
            let peers = call(home, "peers.list", json!({}))?;
            if args.json {
                print_json(&peers);
            } else {
                print_peers(&peers);
            }
            Ok(())
        }
        Some(PeersCommand::Add { manifest }) => {
            let bytes = read_input_file(&manifest, 1 << 20).map_err(CliError::usage)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| CliError::usage(anyhow!("{} is not UTF-8", manifest.display())))?;
            let peer = call(home, "peers.add", json!({"manifest": text}))?;
            if args.json {
                print_json(&peer);
            } else {
                println!(
                    "added peer {} ({}) at {}",
                    text_of(&peer, "node_id"),
                    text_of(&peer, "trust_level"),
                    endpoint_text(&peer["endpoint"])
                );
            }
            Ok(())
        }
        Some(PeersCommand::Remove { peer }) => {
            let result = call(home, "peers.remove", json!({"peer": peer}))?;
            if args.json {
                print_json(&result);
            } else {
                println!("removed peer {peer}");
            }
            Ok(())
        }
        Some(PeersCommand::Show { peer }) => {
            let p = call(home, "peers.show", json!({"peer": peer}))?;
            if args.json {
                print_json(&p);
                return Ok(());
            }
            let m = &p["metrics"];
            let lines = [
                ("peer", text(&p["node_id"])),
                ("endpoint", endpoint_text(&p["endpoint"])),
                (
                    "trust",
                    format!(
                        "{} since {}",
                        text(&p["trust_level"]),
                        time_text(&p["level_since_ms"])
                    ),
                ),
                ("pin", pin_text(&p["operator"])),
                ("score", score_text(&p["score"])),
                (
                    "evidence",
                    format!(
                        "{} counted ({} successes, {} failures), {} threats, {} signature failures, {} observed",
                        text(&m["interactions"]),
                        text(&m["successes"]),
                        text(&m["failures"]),
                        text(&m["threats"]),
                        text(&m["signature_failures"]),
                        text(&m["observed"])
                    ),
                ),
                (
                    "breaker",
                    format!(
                        "{} since {} ({})",
                        text(&p["breaker"]["state"]),
                        time_text(&p["breaker"]["since_ms"]),
                        text(&p["breaker"]["reason"])
                    ),
                ),
                (
                    "capabilities",
                    items(&p["capabilities"])
                        .iter()
                        .map(text)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("last seen", time_text(&p["last_seen_ms"])),
                ("added", time_text(&p["added_ms"])),
            ];
            for (key, value) in lines {
                println!("{key:<13} {value}");
            }
            Ok(())
        }
    }
}

fn print_peers(peers: &Value) {
    let rows: Vec<Vec<String>> = items(peers)
        .iter()
        .map(|p| {
            vec![
                text(&p["node_id"]),
                text(&p["trust_level"]),
                pin_text(&p["operator"]),
                score_text(&p["score"]),
                text(&p["metrics"]["interactions"]),
                text(&p["breaker"]["state"]),
                endpoint_text(&p["endpoint"]),
                time_text(&p["last_seen_ms"]),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "TRUST",
            "PIN",
            "SCORE",
            "INTERACTIONS",
            "BREAKER",
            "ENDPOINT",
            "LAST SEEN",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------------------
// trust
// ---------------------------------------------------------------------------

/// `agentfed trust` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust level, score and interaction counts of one peer or all. For
    /// one peer, also what stands between it and its next level: each
    /// condition met or missing, and the earliest time it could happen.
    Show {
        /// Peer node id (default: every peer).
        peer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a peer's trust level (operator bootstrap, audited with the
    /// reason). This is also how a PRIVILEGED recommendation is confirmed.
    ///
    /// The level is pinned: the trust plugin may demote the peer on new
    /// evidence but never promotes it above this level until you unpin it
    /// (`--unpin` here, or `agentfed trust unpin`). It is also the floor
    /// that decay stops at. Setting a level starts a new evidence period:
    /// the interaction, success, failure, threat and signature-failure
    /// counts the plugin scores restart from zero (earlier totals are kept
    /// under `archived` in `peers show`), so evidence older than your
    /// decision can neither undo it nor be spent on a promotion.
    Set {
        /// Peer node id.
        peer: String,
        /// UNTRUSTED, VERIFIED, ATTESTED, TRUSTED or PRIVILEGED (any case).
        level: String,
        /// Why (written to the audit log).
        #[arg(long)]
        reason: String,
        /// Do not pin: the peer may earn its way above this level.
        #[arg(long)]
        unpin: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release the pin `trust set` put on a peer: it keeps its level and
    /// may earn its way up again (the level stays the floor of decay).
    Unpin {
        /// Peer node id.
        peer: String,
        /// Why (written to the audit log).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the trust plugin to evaluate a peer now.
    Evaluate {
        /// Peer node id.
        peer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agentfed trust …`.
pub fn trust(home: &Path, command: TrustCommand) -> CliResult {
    match command {
        TrustCommand::Show { peer, json } => {
            let params = peer_filter(peer.as_deref());
            let views = call(home, "trust.show", params)?;
            if json {
                print_json(&views);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items(&views)
                .iter()
                .map(|v| {
                    vec![
                        text(&v["node_id"]),
                        text(&v["trust_level"]),
                        pin_text(&v["operator"]),
                        score_text(&v["score"]),
                        text(&v["interactions"]),
                        text(&v["successes"]),
                        text(&v["failures"]),
                        text(&v["threats"]),
                        if v["privileged_recommended"] == Value::Bool(true) {
                            "PRIVILEGED recommended".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "PEER",
                    "TRUST",
                    "PIN",
                    "SCORE",
                    "INTERACTIONS",
                    "SUCCESSES",
                    "FAILURES",
                    "THREATS",
                    "NOTE",
                ],
                &rows,
            );
            for view in items(&views) {
                print_next_step(view);
            }
            Ok(())
        }
        TrustCommand::Unpin { peer, reason, json } => {
            let view = call(home, "trust.unpin", json!({"peer": peer, "reason": reason}))?;
            if json {
                print_json(&view);
            } else {
                println!(
                    "{}: unpinned at {}; it may earn its way up again",
                    text_of(&view, "peer"),
                    text_of(&view, "level")
                );
            }
            Ok(())
        }
        TrustCommand::Set {
            peer,
            level,
            reason,
            unpin,
            json,
        } => {
            let change = call(
                home,
                "trust.set",
                json!({"peer": peer, "level": level, "reason": reason, "unpin": unpin}),
            )?;
            if json {
                print_json(&change);
            } else {
                println!(
                    "{}: {} -> {} ({}); {}",
                    text_of(&change, "peer"),
                    text_of(&change, "from"),
                    text_of(&change, "to"),
                    text_of(&change, "reason"),
                    if unpin {
                        "not pinned: it may earn its way up"
                    } else {
                        "pinned: no promotion above it until `agentfed trust unpin`"
                    }
                );
            }
            Ok(())
        }
        TrustCommand::Evaluate { peer, json } => {
            let outcome = call(home, "trust.evaluate", json!({"peer": peer}))?;
            if json {
                print_json(&outcome);
            } else {
                println!("{peer}: {}", outcome_text(&outcome));
            }
            Ok(())
        }
    }
}

/// `ATTESTED` (pinned), `ATTESTED (floor)` (set, not pinned) or empty.
fn pin_text(operator: &Value) -> String {
    match operator["pinned"].as_bool() {
        Some(true) => text(&operator["level"]),
        Some(false) => format!("{} (floor)", text(&operator["level"])),
        None => String::new(),
    }
}

/// The explanation `trust show PEER` prints under the table.
fn print_next_step(view: &Value) {
    let next = &view["next"];
    if next.is_null() {
        return;
    }
    println!();
    println!("{}: {}", text(&view["node_id"]), text(&next["summary"]));
    for r in items(&next["requirements"]) {
        let status = if r["met"] == Value::Bool(true) {
            "met    "
        } else {
            "missing"
        };
        let when = match r["earliest_ms"].as_u64() {
            Some(_) if r["met"] == Value::Bool(true) => String::new(),
            Some(_) => format!("; earliest {}", time_text(&r["earliest_ms"])),
            None if r["met"] == Value::Bool(true) => String::new(),
            None => "; not by waiting".to_string(),
        };
        println!(
            "  {status} {} (has: {}{when})",
            text(&r["rule"]),
            text(&r["have"])
        );
    }
    if next["earliest_ms"].is_u64() {
        println!("  earliest: {}", time_text(&next["earliest_ms"]));
    }
}

/// One line for a trust or breaker outcome.
fn outcome_text(o: &Value) -> String {
    match o["outcome"].as_str().unwrap_or("") {
        "changed" => format!(
            "{} -> {} by {} ({})",
            text(&o["from"]),
            text(&o["to"]),
            text(&o["actor"]),
            text(&o["reason"])
        ),
        "kept" => format!(
            "kept (score {}; {})",
            score_text(&o["score"]),
            text(&o["reason"])
        ),
        "unchanged" => format!("unchanged ({})", text(&o["state"])),
        "privileged_recommended" => format!(
            "PRIVILEGED recommended (score {}); confirm with: agentfed trust set PEER PRIVILEGED --reason …",
            score_text(&o["score"])
        ),
        "held" => format!(
            "held at its level (score {}; the plugin asks for {}, which waits for: {})",
            score_text(&o["score"]),
            text(&o["to"]),
            text(&o["waiting_for"])
        ),
        "refused" => format!("plugin decision refused: {}", text(&o["reason"])),
        "plugin_failed" => format!("plugin failed ({}); nothing changed", text(&o["code"])),
        _ => o.to_string(),
    }
}

// ---------------------------------------------------------------------------
// breaker, evict, reactivate
// ---------------------------------------------------------------------------

/// `agentfed breaker` subcommands.
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Breaker state of one peer or all: state, since when, why, whether
    /// an operator may reactivate it, and from when its spend windows count
    /// (an operator's reactivation starts them afresh: spend reported
    /// before it cannot trip the breaker again).
    Status {
        /// Peer node id (default: every peer).
        peer: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agentfed breaker …`.
pub fn breaker(home: &Path, command: BreakerCommand) -> CliResult {
    let BreakerCommand::Status { peer, json } = command;
    let params = peer_filter(peer.as_deref());
    let views = call(home, "breaker.status", params)?;
    if json {
        print_json(&views);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items(&views)
        .iter()
        .map(|v| {
            vec![
                text(&v["node_id"]),
                text(&v["state"]),
                time_text(&v["since_ms"]),
                if v["reactivate_eligible"] == Value::Bool(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                format!("{:.2}", v["usd_last_day"].as_f64().unwrap_or(0.0)),
                time_text(&v["counts_from_ms"]),
                format!(
                    "{}/{}",
                    text(&v["failures_last_hour"]),
                    text(&v["samples_last_hour"])
                ),
                text(&v["reason"]),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "STATE",
            "SINCE",
            "REACTIVATE OK",
            "USD 24H",
            "COUNTS FROM",
            "FAIL/SAMPLES 1H",
            "REASON",
        ],
        &rows,
    );
    Ok(())
}

/// `evict` / `reactivate` arguments.
#[derive(Debug, Args)]
pub struct BreakerChangeArgs {
    /// Peer node id.
    pub peer: String,
    /// Why (written to the audit log).
    #[arg(long)]
    pub reason: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed evict` (`to_active == false`) or `agentfed reactivate`.
pub fn breaker_change(home: &Path, args: BreakerChangeArgs, reactivate: bool) -> CliResult {
    let method = if reactivate {
        "breaker.reactivate"
    } else {
        "breaker.evict"
    };
    let change = call(
        home,
        method,
        json!({"peer": args.peer, "reason": args.reason}),
    )?;
    if args.json {
        print_json(&change);
    } else {
        println!(
            "{}: {} -> {} (correlation id {})",
            text_of(&change, "peer"),
            text_of(&change, "from"),
            text_of(&change, "to"),
            text_of(&change, "correlation_id")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// spend
// ---------------------------------------------------------------------------

/// `agentfed spend` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpendCommand {
    /// Report the cost of a completed call to a peer (counts as one
    /// interaction for trust; feeds the breaker).
    Report {
        /// The peer that did the work.
        peer: String,
        /// The task id.
        #[arg(long = "task", value_name = "ID")]
        task: String,
        /// Tokens spent (whole number).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        tokens: String,
        /// US dollars spent.
        #[arg(long, value_name = "X", allow_hyphen_values = true)]
        usd: String,
        /// The call failed.
        #[arg(long)]
        failed: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses a finite number from the command line (`NaN`, `inf` refused:
/// JSON cannot carry them, and they are never meaningful spend).
fn finite(flag: &str, raw: &str) -> Result<f64, CliError> {
    let value: f64 = raw
        .trim()
        .parse()
        .map_err(|_| CliError::usage(anyhow!("{flag} must be a number")))?;
    if !value.is_finite() {
        return Err(CliError::usage(anyhow!("{flag} must be a finite number")));
    }
    Ok(value)
}

/// `agentfed spend …`.
pub fn spend(home: &Path, command: SpendCommand) -> CliResult {
    let SpendCommand::Report {
        peer,
        task,
        tokens,
        usd,
        failed,
        json,
    } = command;
    let tokens = finite("--tokens", &tokens)?;
    let usd = finite("--usd", &usd)?;
    let outcome = call(
        home,
        "spend.report",
        json!({"peer": peer, "task_id": task, "tokens": tokens, "usd": usd, "success": !failed}),
    )?;
    if json {
        print_json(&outcome);
    } else {
        println!("recorded spend for {peer} (task {task})");
        println!("  breaker: {}", outcome_text(&outcome["breaker"]));
        println!("  trust:   {}", outcome_text(&outcome["trust"]));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// send
// ---------------------------------------------------------------------------

/// `agentfed send` arguments.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Target peer.
    pub peer: String,
    /// Message type, e.g. task-assignment.
    #[arg(value_name = "TYPE", help = super::message_types_help())]
    pub message_type: String,
    /// The payload: JSON text, @FILE, or @- for stdin (at most 16 MiB, the wire's limit; over 1 MiB only context-share and memory-response to a TRUSTED peer);
    /// `{}` when left out (e.g. for `ping` or `status`).
    #[arg(long, value_name = "JSON|@FILE|@-", default_value = "{}")]
    pub payload: String,
    /// Budget: most tokens the task may spend, a whole number from 0 to
    /// 1000000000 (default 1000000000).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_tokens: Option<String>,
    /// Budget: most US dollars the task may spend, from 0 to 1000000
    /// (default 1000000).
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub max_usd: Option<String>,
    /// Budget: most hops the envelope may travel, 0-64 (default 8). The
    /// delivery to PEER is the first hop: 1 lets PEER act but not delegate
    /// further; 0 allows no hop at all, so the send is refused with
    /// HOP_LIMIT_EXCEEDED.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_hops: Option<String>,
    /// Wait up to SECS (default 30) for the receiver's acknowledgement:
    /// exit 0 once it accepted (or replied), exit 1 with the receiver's
    /// code if it refused the message for good or rejected it, exit 1 with
    /// `TIMEOUT` (the message stays queued) if neither came in time.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "30")]
    pub wait: Option<u64>,
    /// Makes a retry safe (e.g. after the daemon was killed or the call
    /// cut off): within 24 h, a send with the same KEY and the same peer,
    /// type, payload and budget prints the original receipt and queues
    /// nothing; the same KEY with anything else is IDEMPOTENCY_KEY_REUSED
    /// (exit 2). 1-128 printable ASCII characters, e.g. a UUID.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed outbox` arguments.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    command: Option<OutboxCommand>,
    /// Only messages for this peer.
    #[arg(long)]
    peer: Option<String>,
    /// Show messages refused for good instead (by the receiver, cancelled,
    /// or dropped here), newest first, with their codes.
    #[arg(long)]
    failed: bool,
    /// At most this many (1-10000, default 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `agentfed outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Cancel a queued message: it is removed and never sent (audited).
    Cancel {
        /// Its envelope id (from `send` or `outbox`).
        envelope_id: String,
        /// Why (written to the audit log).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agentfed outbox …`: what is waiting to be delivered, what failed, and
/// cancelling.
pub fn outbox(home: &Path, args: OutboxArgs) -> CliResult {
    if let Some(OutboxCommand::Cancel {
        envelope_id,
        reason,
        json,
    }) = args.command
    {
        let view = call(
            home,
            "outbox.cancel",
            json!({"envelope_id": envelope_id, "reason": reason}),
        )?;
        if json {
            print_json(&view);
        } else {
            println!(
                "cancelled {} ({} for {})",
                text_of(&view, "envelope_id"),
                text_of(&view, "message_type"),
                text_of(&view, "peer")
            );
        }
        return Ok(());
    }
    let mut params = json!({});
    if let Some(peer) = &args.peer {
        params["peer"] = json!(peer);
    }
    if let Some(limit) = args.limit {
        params["limit"] = json!(limit);
    }
    let method = if args.failed {
        "outbox.failed"
    } else {
        "outbox.list"
    };
    let rows = call(home, method, params)?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    if items(&rows).is_empty() {
        println!(
            "{}",
            if args.failed {
                "no message was refused for good"
            } else {
                "outbox empty"
            }
        );
        return Ok(());
    }
    if args.failed {
        let rows: Vec<Vec<String>> = items(&rows)
            .iter()
            .map(|r| {
                vec![
                    text(&r["envelope_id"]),
                    text(&r["peer"]),
                    text(&r["code"]),
                    time_text(&r["at_ms"]),
                ]
            })
            .collect();
        table(&["ENVELOPE", "PEER", "CODE", "AT"], &rows);
    } else {
        let rows: Vec<Vec<String>> = items(&rows)
            .iter()
            .map(|r| {
                vec![
                    text(&r["envelope_id"]),
                    text(&r["peer"]),
                    text(&r["message_type"]),
                    crate::trust_ledger::duration_text(r["age_ms"].as_u64().unwrap_or(0)),
                    text(&r["attempts"]),
                    text(&r["last_error"]),
                ]
            })
            .collect();
        table(
            &["ENVELOPE", "PEER", "TYPE", "AGE", "ATTEMPTS", "LAST ERROR"],
            &rows,
        );
    }
    Ok(())
}

/// Polls what became of `envelope_id` until it is no longer queued or
/// `secs` have passed. Ok once the receiver accepted or replied; a
/// failure (exit 1) with its code otherwise.
fn wait_for_delivery(
    home: &Path,
    peer: &str,
    envelope_id: &str,
    secs: u64,
) -> Result<Value, CliError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let outcome = call(
            home,
            "outbox.outcome",
            json!({"peer": peer, "envelope_id": envelope_id}),
        )?;
        match outcome["state"].as_str() {
            Some("delivered") if outcome["status"] != "rejected" => return Ok(outcome),
            Some("delivered") => {
                return Err(CliError::failed(anyhow!(
                    "REJECTED: {peer} received {envelope_id} and its handler rejected it"
                )));
            }
            Some("refused") => {
                return Err(CliError::failed(anyhow!(
                    "{}: {peer} refused {envelope_id} for good; not retried (see `agentfed outbox --failed`)",
                    text(&outcome["code"])
                )));
            }
            Some("unknown") => {
                return Err(CliError::failed(anyhow!(
                    "UNKNOWN: {envelope_id} is neither queued nor recorded as delivered or refused"
                )));
            }
            _ => {}
        }
        if std::time::Instant::now() >= deadline {
            let last = outcome;
            let why = match last["last_error"].as_str() {
                Some(code) => format!("; last attempt: {code}"),
                None => String::new(),
            };
            return Err(CliError::failed(anyhow!(
                "TIMEOUT: {envelope_id} is still queued for {peer} after {secs} s ({} attempts{why}); it will be retried (`agentfed outbox cancel {envelope_id} --reason …` to stop)",
                text(&last["attempts"])
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A budget flag as a number within `0..=max`, checked before anything is
/// sent: the daemon's `INVALID_BUDGET` is a constant code that does not say
/// which field is wrong. `whole` also refuses fractions.
fn budget_value(flag: &str, raw: &str, max: f64, whole: bool) -> Result<f64, CliError> {
    let value = finite(flag, raw)?;
    let in_range = (0.0..=max).contains(&value) && (!whole || value.fract() == 0.0);
    if in_range {
        return Ok(value);
    }
    Err(CliError::usage(anyhow!(
        "INVALID_BUDGET: {flag} must be {} from 0 to {max}",
        if whole { "a whole number" } else { "a number" }
    )))
}

/// Parses `--payload`: JSON text, `@FILE` or `@-` (stdin), at most 16 MiB.
/// Shared by `send`, `query` and `broadcast`.
pub(super) fn parse_payload(raw: &str) -> Result<Value, CliError> {
    let text = read_json_arg("--payload", raw).map_err(CliError::usage)?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::usage(anyhow!(
            "--payload is not valid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// `agentfed send`.
pub fn send(home: &Path, args: SendArgs) -> CliResult {
    let payload = parse_payload(&args.payload)?;
    let mut params = json!({
        "peer": args.peer,
        "message_type": args.message_type,
        "payload": payload,
    });
    if args.max_tokens.is_some() || args.max_usd.is_some() || args.max_hops.is_some() {
        let mut budget = Map::new();
        use crate::budget::{MAX_HOPS_CEILING, MAX_TOKENS_CEILING, MAX_USD_CEILING};
        let tokens = match &args.max_tokens {
            Some(raw) => budget_value("--max-tokens", raw, MAX_TOKENS_CEILING as f64, true)?,
            None => MAX_TOKENS_CEILING as f64,
        };
        let usd = match &args.max_usd {
            Some(raw) => budget_value("--max-usd", raw, MAX_USD_CEILING, false)?,
            None => MAX_USD_CEILING,
        };
        budget.insert("max_tokens".into(), json!(tokens as u64));
        budget.insert("max_usd".into(), json!(usd));
        if let Some(raw) = &args.max_hops {
            let hops = budget_value("--max-hops", raw, f64::from(MAX_HOPS_CEILING), true)?;
            budget.insert("max_hops".into(), json!(hops as u64));
        }
        params["budget"] = Value::Object(budget);
    }
    if let Some(key) = &args.idempotency_key {
        crate::coordinator::check_idempotency_key(key).map_err(CliError::usage)?;
        params["idempotency_key"] = json!(key);
    }
    let receipt = call(home, "send", params)?;
    if let Some(secs) = args.wait {
        let envelope_id = text_of(&receipt, "envelope_id");
        let outcome = wait_for_delivery(home, &args.peer, &envelope_id, secs)?;
        if args.json {
            print_json(&json!({"receipt": receipt, "outcome": outcome}));
        } else {
            println!(
                "delivered {} to {} (envelope {}; {})",
                args.message_type,
                text_of(&receipt, "peer"),
                envelope_id,
                text(&outcome["status"])
            );
        }
        return Ok(());
    }
    if args.json {
        print_json(&receipt);
    } else {
        println!(
            "{} {} for {} (envelope {}, {} bytes)",
            if receipt["repeated"] == true {
                "already queued (same idempotency key):"
            } else {
                "queued"
            },
            args.message_type,
            text_of(&receipt, "peer"),
            text_of(&receipt, "envelope_id"),
            text_of(&receipt, "frame_bytes")
        );
        if let Some(pii) = receipt["pii"].as_object().filter(|m| !m.is_empty()) {
            println!("  PII handled: {}", counts(&Value::Object(pii.clone())));
        }
    }
    Ok(())
}

/// Largest `--payload` file: the wire's 16 MiB frame limit (the frame
/// adds the envelope, so a payload this large is refused by the gates
/// with a clear code rather than here).
pub const MAX_PAYLOAD_ARG_BYTES: u64 = 16 * 1024 * 1024;

/// Reads `JSON`, `@FILE` or `@-` (stdin), at most [`MAX_PAYLOAD_ARG_BYTES`].
fn read_json_arg(flag: &str, arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            let bytes = read_input_file(Path::new(path), MAX_PAYLOAD_ARG_BYTES)?;
            String::from_utf8(bytes).map_err(|_| anyhow!("{flag} file is not UTF-8"))
        }
        None => Ok(arg.to_string()),
    }
}

/// Reads a file (or stdin for `-`), refusing more than `limit` bytes.
fn read_input_file(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        if buf.len() as u64 > limit {
            return Err(anyhow!("stdin is larger than {limit} bytes"));
        }
        return Ok(buf);
    }
    super::node::read_limited(path, limit)
}

// ---------------------------------------------------------------------------
// audit
// ---------------------------------------------------------------------------

/// Audit filters, shared by `query` and `export`.
#[derive(Debug, Clone, Args)]
pub struct AuditFilterArgs {
    /// Event type, e.g. spend_reported (repeatable; any matches).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Minimum severity: debug, info, warning, error, critical.
    #[arg(long, value_name = "S")]
    pub severity: Option<String>,
    /// Category, e.g. breaker (repeatable; any matches).
    #[arg(long = "category", value_name = "C")]
    pub categories: Vec<String>,
    /// Only records about this peer.
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
    /// Records at or after this time: RFC 3339 or ms since the Unix epoch.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Records at or before this time: RFC 3339 or ms since the Unix epoch.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many records (query default 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Oldest first instead of newest first (query) — export is always
    /// oldest first unless --newest-first.
    #[arg(long, conflicts_with = "newest_first")]
    pub oldest_first: bool,
    /// Newest first.
    #[arg(long)]
    pub newest_first: bool,
}

impl AuditFilterArgs {
    fn to_params(&self) -> Result<Map<String, Value>, CliError> {
        let mut p = Map::new();
        if !self.types.is_empty() {
            p.insert("types".into(), json!(self.types));
        }
        if let Some(s) = &self.severity {
            p.insert("severity".into(), json!(s));
        }
        if !self.categories.is_empty() {
            p.insert("categories".into(), json!(self.categories));
        }
        if let Some(peer) = &self.peer {
            p.insert("peer".into(), json!(peer));
        }
        if let Some(t) = &self.since {
            p.insert("since_ms".into(), json!(parse_time("--since", t)?));
        }
        if let Some(t) = &self.until {
            p.insert("until_ms".into(), json!(parse_time("--until", t)?));
        }
        if let Some(n) = self.limit {
            p.insert("limit".into(), json!(n));
        }
        if self.oldest_first {
            p.insert("order".into(), json!("oldest"));
        }
        if self.newest_first {
            p.insert("order".into(), json!("newest"));
        }
        Ok(p)
    }
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// One JSON array.
    Json,
    /// One JSON record per line.
    Ndjson,
    /// CSV with a header row.
    Csv,
}

/// `agentfed audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, newest first.
    Query {
        /// Filters.
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export records (oldest first) as JSON, NDJSON or CSV.
    Export {
        /// Output format.
        #[arg(long, value_enum)]
        format: ExportFormatArg,
        /// Filters.
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Walk the hash chain and name the first edited, removed or
    /// reordered record. Works with the daemon stopped too.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the oldest audit records: those committed before --before.
    /// They are written to --output first (NDJSON, as `audit export`
    /// writes it; the file must not exist) unless --discard says to drop
    /// them. A checkpoint record (`audit_pruned`) carrying the hash of the
    /// last removed record is appended, so `audit verify` still checks the
    /// whole chain that is left. Refused if the chain does not verify.
    /// Works with the daemon stopped too.
    #[command(
        after_help = "Examples:\n  agentfed audit prune --before 2026-11-01T00:00:00Z --output audit-2026-10.ndjson\n  agentfed audit prune --before 2026-11-01T00:00:00Z --discard"
    )]
    Prune {
        /// Remove records committed before this time: RFC 3339
        /// (2026-11-01T00:00:00Z) or ms since the Unix epoch.
        #[arg(long, value_name = "TIME")]
        before: String,
        /// Write the removed records to FILE first (NDJSON, mode 0600,
        /// synced before anything is removed).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Remove the records without keeping a copy.
        #[arg(long, conflicts_with = "output")]
        discard: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the receipt the receiver signed for a delivered (or finally
    /// refused) envelope: proof of delivery that anyone with the
    /// receiver's public key can check. Works with the daemon stopped.
    /// With --verify FILE, check such a proof instead (no node needed).
    #[command(
        after_help = "Examples:\n  agentfed audit proof 0190a1b2c3d4e5f6a7b8c9d0e1f2a3b4 > proof.json\n  agentfed audit proof --verify proof.json --public-key 'RECEIVER_KEY_BASE64'"
    )]
    Proof {
        /// The envelope id (as `send` printed it).
        #[arg(required_unless_present = "verify", conflicts_with = "verify")]
        envelope_id: Option<String>,
        /// Check the proof in FILE (`-` for stdin) instead.
        #[arg(long, value_name = "FILE")]
        verify: Option<PathBuf>,
        /// The receiver's Ed25519 public key (base64, as in its manifest)
        /// to check with. Without it the key in the file is used, which
        /// only shows the file is self-consistent.
        #[arg(long, value_name = "KEY", requires = "verify")]
        public_key: Option<String>,
    },
}

/// `agentfed audit …`.
pub fn audit(home: &Path, command: AuditCommand) -> CliResult {
    match command {
        AuditCommand::Query { filter, json } => {
            let params = filter.to_params()?;
            let (records, _) = audit_call(home, "audit.query", Value::Object(params))?;
            if json {
                print_json(&records);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items(&records)
                .iter()
                .map(|r| {
                    vec![
                        text(&r["seq"]),
                        time_text(&r["ts_ms"]),
                        text(&r["event_type"]),
                        text(&r["severity"]),
                        text(&r["peer"]),
                        text(&r["actor"]),
                        text(&r["summary"]),
                    ]
                })
                .collect();
            table(
                &[
                    "SEQ", "TIME", "TYPE", "SEVERITY", "PEER", "ACTOR", "SUMMARY",
                ],
                &rows,
            );
            Ok(())
        }
        AuditCommand::Export {
            format,
            filter,
            output,
        } => {
            let mut params = filter.to_params()?;
            let name = match format {
                ExportFormatArg::Json => "json",
                ExportFormatArg::Ndjson => "ndjson",
                ExportFormatArg::Csv => "csv",
            };
            params.insert("format".into(), json!(name));
            let (result, _) = audit_call(home, "audit.export", Value::Object(params))?;
            let content = result["content"].as_str().unwrap_or("");
            match output {
                Some(path) => {
                    std::fs::write(&path, content)
                        .with_context(|| format!("cannot write {}", path.display()))
                        .map_err(CliError::failed)?;
                    eprintln!(
                        "exported {} records to {}",
                        text(&result["records"]),
                        path.display()
                    );
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(content.as_bytes())
                        .and_then(|()| stdout.flush())
                        .map_err(|e| CliError::failed(anyhow!("cannot write stdout: {e}")))?;
                }
            }
            Ok(())
        }
        AuditCommand::Verify { json } => verify(home, json),
        AuditCommand::Prune {
            output: None,
            discard: false,
            ..
        } => Err(CliError::usage(anyhow!(
            "prune removes records: pass --output FILE to keep a copy of them, or --discard to remove them without one"
        ))),
        AuditCommand::Prune {
            before,
            output,
            json,
            ..
        } => prune(home, &before, output.as_deref(), json),
        AuditCommand::Proof {
            verify: Some(file),
            public_key,
            ..
        } => verify_proof(&file, public_key.as_deref()),
        AuditCommand::Proof {
            envelope_id: Some(id),
            ..
        } => {
            let (result, _) = audit_call(home, "audit.proof", json!({"envelope_id": id}))?;
            print_json(&result["receipt"]);
            Ok(())
        }
        AuditCommand::Proof { .. } => Err(CliError::usage(anyhow!(
            "give an envelope id, or --verify FILE"
        ))),
    }
}

/// A proof as `audit proof` prints it: the receipt and the key on record.
#[derive(serde::Deserialize)]
struct ProofFile {
    #[serde(flatten)]
    receipt: crate::receipt::Receipt,
    #[serde(default)]
    public_key: Option<String>,
}

/// `audit proof --verify FILE`: checks a receipt with nothing but a key.
fn verify_proof(file: &Path, public_key: Option<&str>) -> CliResult {
    let raw = if file == Path::new("-") {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| CliError::failed(anyhow!("cannot read stdin: {e}")))?;
        buf
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))
            .map_err(CliError::failed)?
    };
    let proof: ProofFile = serde_json::from_str(&raw).map_err(|e| {
        CliError::usage(anyhow!(
            "{} is not a receipt as `agentfed audit proof` prints it: {e}",
            file.display()
        ))
    })?;
    let (key, from_file) = match (public_key, proof.public_key.as_deref()) {
        (Some(key), _) => (key.trim().to_string(), false),
        (None, Some(key)) => (key.to_string(), true),
        (None, None) => {
            return Err(CliError::usage(anyhow!(
                "the file names no public key: pass --public-key KEY (the receiver's, from its manifest)"
            )));
        }
    };
    let r = &proof.receipt;
    match r.verify_signature(&key) {
        Ok(()) => {
            let what = if r.reason.is_empty() {
                r.outcome.clone()
            } else {
                format!("{} ({})", r.outcome, printable(&r.reason))
            };
            println!(
                "valid receipt: {} received {} from {} at {}: {what}; envelope digest {}",
                printable(&r.receiver),
                if r.envelope_id.is_empty() {
                    "an unreadable envelope".to_string()
                } else {
                    printable(&r.envelope_id).into_owned()
                },
                printable(&r.sender),
                crate::clock::rfc3339(r.at_ms).unwrap_or_else(|| format!("{} ms", r.at_ms)),
                r.digest
            );
            if from_file {
                eprintln!(
                    "note: checked with the key written in the file; pass --public-key with the receiver's key from a source you trust"
                );
            }
            Ok(())
        }
        Err(e) => Err(CliError::failed(anyhow!("INVALID_RECEIPT: {e}"))),
    }
}

fn verify(home: &Path, json: bool) -> CliResult {
    let (result, offline) = audit_call(home, "audit.verify", json!({}))?;
    let records = result["records"].as_u64().unwrap_or(0);
    if json {
        print_json(&json!({"ok": true, "records": records, "offline": offline}));
    } else {
        let how = if offline {
            " (checked offline: no daemon running)"
        } else {
            ""
        };
        println!("audit chain intact: {records} records{how}");
    }
    Ok(())
}

/// `agentfed audit prune`: exports the records before the cut-off (unless
/// discarded), then removes exactly those (`through_seq`), so a record
/// committed meanwhile is never removed without being exported.
fn prune(home: &Path, before: &str, output: Option<&Path>, json: bool) -> CliResult {
    let before_ms = parse_time("--before", before)?;
    let mut params = json!({"before_ms": before_ms});
    let mut exported = None;
    if let Some(path) = output {
        let (result, _) = audit_call(
            home,
            "audit.export",
            json!({"format": "ndjson", "until_ms": before_ms.saturating_sub(1), "order": "oldest"}),
        )?;
        let content = result["content"].as_str().unwrap_or("");
        let records = result["records"].as_u64().unwrap_or(0);
        if records == 0 {
            return print_pruned(&json!({"pruned": 0}), None, json);
        }
        let last_seq = content
            .lines()
            .last()
            .and_then(|line| serde_json::from_str::<Value>(line).ok())
            .and_then(|r| r["seq"].as_u64())
            .ok_or_else(|| CliError::failed(anyhow!("the export has no last record seq")))?;
        write_new_private(path, content.as_bytes())?;
        params["through_seq"] = json!(last_seq);
        exported = Some((path, records));
    }
    let (report, _) = audit_call(home, "audit.prune", params)?;
    print_pruned(&report, exported, json)
}

fn print_pruned(report: &Value, exported: Option<(&Path, u64)>, json: bool) -> CliResult {
    if json {
        let mut out = report.clone();
        if let Some((path, records)) = exported {
            out["exported"] = json!({"path": path.display().to_string(), "records": records});
        }
        print_json(&out);
        return Ok(());
    }
    if let Some((path, records)) = exported {
        eprintln!("exported {records} records to {}", path.display());
    }
    match report["pruned"].as_u64().unwrap_or(0) {
        0 => println!("nothing to prune: no record was committed before the cut-off"),
        n => println!(
            "pruned {n} records ({}..{}); checkpoint record {} carries the hash of record {}",
            text(&report["first_seq"]),
            text(&report["through_seq"]),
            text(&report["checkpoint_seq"]),
            text(&report["through_seq"]),
        ),
    }
    Ok(())
}

/// Writes `content` to a new file at `path` (refusing to replace one),
/// readable by this user only, and syncs it: removed audit records exist
/// only there afterwards.
fn write_new_private(path: &Path, content: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never replaced)",
                path.display()
            )
        })
        .map_err(CliError::failed)?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(CliError::failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))
            .map_err(CliError::failed)?;
    }
    Ok(())
}

/// An audit request (`audit.query`, `audit.export`, `audit.verify`)
/// through the daemon, or, when none runs for the home, over the store
/// directly (`true` in the result): the audit log can be read with the
/// daemon stopped.
fn audit_call(home: &Path, method: &str, params: Value) -> Result<(Value, bool), CliError> {
    match client::call(home, method, params.clone()) {
        Ok(result) => Ok((result, false)),
        Err(CallError::NotRunning { .. }) => Ok((audit_offline(home, method, params)?, true)),
        Err(e) => Err(e.into()),
    }
}

/// Serves an audit request from the store with the daemon stopped: takes
/// the home lock first (so a live daemon's store is never opened), then
/// opens the store read-write (redb has no read-only mode); only
/// `audit.prune` changes anything.
fn audit_offline(home: &Path, method: &str, params: Value) -> Result<Value, CliError> {
    use crate::audit::{AuditConfig, AuditLog};
    use crate::store::{HomeLock, STATE_FILE, Store};
    super::check_home(home)?;
    let state = home.join(STATE_FILE);
    if !state.exists() {
        return Err(CliError::failed(anyhow!(
            "no state store at {}; no audit log to read (has the daemon ever run in this home?)",
            state.display()
        )));
    }
    let _lock = HomeLock::acquire(home).map_err(|e| {
        CliError::failed(anyhow!(
            "{e} (its control socket is missing; cannot read through it)"
        ))
    })?;
    let store = Store::open(&state).map_err(CliError::failed)?;
    let log = AuditLog::open(&store, AuditConfig::default()).map_err(CliError::failed)?;
    crate::control::server::audit_call(&log, method, params)
        .map_err(|body| CliError::from(CallError::Remote(body)))
}

/// Parses RFC 3339 (`2025-01-31T12:00:00Z`) or ms since the Unix epoch.
pub fn parse_time(flag: &str, raw: &str) -> Result<u64, CliError> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse()
            .map_err(|_| CliError::usage(anyhow!("{flag}: milliseconds out of range")));
    }
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            CliError::usage(anyhow!(
                "{flag} must be RFC 3339 (e.g. 2025-01-31T12:00:00Z) or milliseconds since the Unix epoch"
            ))
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| CliError::usage(anyhow!("{flag} is before 1970")))
}

// ---------------------------------------------------------------------------
// plugin reload
// ---------------------------------------------------------------------------

/// `agentfed plugin reload [KIND]`.
pub fn plugin_reload(home: &Path, kind: Option<String>, json: bool) -> CliResult {
    let params = match &kind {
        Some(k) => json!({"kind": k, "report": true}),
        None => json!({"report": true}),
    };
    let answer = call(home, "plugins.reload", params)?;
    let not_applied: Vec<String> = items(&answer["not_applied"]).iter().map(text).collect();
    let note = (!not_applied.is_empty()).then(|| {
        format!(
            "not applied: {} changed in {} since the daemon started; a plugin reload does not apply settings outside [plugins]: restart the daemon for them",
            not_applied.join(", "),
            crate::config::CONFIG_FILE
        )
    });
    if json {
        print_json(&answer["plugins"]);
        if let Some(note) = note {
            eprintln!("warning: {note}");
        }
        return Ok(());
    }
    for p in items(&answer["plugins"]) {
        let kind_name = text(&p["kind"]);
        if kind
            .as_deref()
            .is_none_or(|k| k.eq_ignore_ascii_case(&kind_name))
        {
            let position = p["position"].as_u64().unwrap_or(0);
            let slot = if position == 0 {
                kind_name.clone()
            } else {
                format!("{kind_name}+{position}")
            };
            println!(
                "reloaded {slot} plugin {} {} ({})",
                text(&p["name"]),
                text(&p["version"]),
                text(&p["source"])
            );
        }
    }
    if let Some(note) = note {
        println!("{note}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// formatting
// ---------------------------------------------------------------------------

/// A JSON scalar as plain text (`-` for null).
/// The elements of a JSON array (none for anything else).
fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Params selecting one peer, or all when `peer` is `None`.
fn peer_filter(peer: Option<&str>) -> Value {
    match peer {
        Some(p) => json!({"peer": p}),
        None => json!({}),
    }
}

/// An endpoint as shown: `null` is a dial-only node, never dialed.
fn endpoint_text(v: &Value) -> String {
    match v {
        Value::Null => "dial-only".into(),
        other => text(other),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => super::printable(s).into_owned(),
        other => super::printable(&other.to_string()).into_owned(),
    }
}

fn text_of(v: &Value, key: &str) -> String {
    text(&v[key])
}

fn score_text(v: &Value) -> String {
    v.as_f64()
        .map(|s| format!("{s:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds precision).
pub(super) fn time_text(v: &Value) -> String {
    let Some(ms) = v.as_u64() else {
        return "-".into();
    };
    if ms == 0 {
        return "-".into();
    }
    crate::clock::rfc3339(ms).unwrap_or_else(|| ms.to_string())
}

/// Prints an aligned table; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_ms() {
        assert_eq!(
            parse_time("--since", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("--since", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("--since", "2023-11-14T23:13:20.5+01:00").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(parse_time("--since", "yesterday").unwrap_err().code, 2);
        assert_eq!(
            parse_time("--since", "1969-12-31T23:59:59Z")
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            time_text(&json!(1_700_000_000_000u64)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn non_finite_numbers_are_usage_errors() {
        for raw in ["NaN", "inf", "-inf", "1e999", "abc"] {
            assert_eq!(finite("--usd", raw).unwrap_err().code, 2, "{raw}");
        }
        assert_eq!(finite("--usd", "-1.5").unwrap(), -1.5);
    }
}
