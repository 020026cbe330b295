//! The `agentfed` command line.
//!
//! Exit codes: 0 success; 1 the operation ran and failed or was refused
//! (e.g. a plugin trapped, `PEER_SUSPENDED`, a tampered audit chain); 2 bad
//! usage or bad input (nothing was changed); 3 no daemon is running for the
//! home (verbs that talk to the daemon; the message says how to start it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod fed;
pub(crate) mod node;
mod ops;
mod plugin;
mod wg;

/// agentfed: federate AI-agent installations with graded trust, bounded
/// cost, PII protection and a tamper-evident audit trail.
#[derive(Debug, Parser)]
#[command(name = "agentfed", version, about, long_about = None)]
pub struct Cli {
    /// Node home directory (keys, config, state, cache).
    /// Defaults to $AGENTFED_HOME, else ~/.agentfed.
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output, one level per -v above the command's default (warn
    /// for one-shot commands, info for the daemon): -v is info for a
    /// command and debug for the daemon. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node: keys (0600), TLS certificate, node.json and a
    /// documented agentfed.toml with every default written out.
    Init(node::InitArgs),
    /// Print this node's signed manifest (JSON), or verify one.
    Manifest(node::ManifestArgs),
    /// Run the node: serve the control socket, run the timers. Stops
    /// cleanly on SIGINT/SIGTERM.
    Daemon(node::DaemonArgs),
    /// The node at a glance (via the daemon).
    Status(ops::JsonFlag),
    /// List peers (table; --json), or add/remove/show one.
    Peers(ops::PeersArgs),
    /// Show or set trust levels.
    #[command(subcommand)]
    Trust(ops::TrustCommand),
    /// Circuit-breaker state per peer.
    #[command(subcommand)]
    Breaker(ops::BreakerCommand),
    /// Evict a peer (operator; from ACTIVE or SUSPENDED).
    Evict(ops::BreakerChangeArgs),
    /// Reactivate a SUSPENDED or EVICTED peer (operator only).
    Reactivate(ops::BreakerChangeArgs),
    /// Report spend of completed work.
    #[command(subcommand)]
    Spend(ops::SpendCommand),
    /// Send a typed message to a peer (gates, budget, PII, signature,
    /// durable outbox); --wait waits for the receiver's answer.
    Send(ops::SendArgs),
    /// Messages waiting to be delivered (peer, type, age, attempts, last
    /// error), messages refused for good (--failed), and cancelling one.
    Outbox(ops::OutboxArgs),
    /// A narrated tour: three nodes on loopback in temporary homes join,
    /// raise trust, exchange messages (PII handled per trust level), run a
    /// query, hit a budget and a breaker, and verify their audit logs.
    /// Everything is cleaned up afterwards. The demo always creates its own
    /// temporary homes: it never touches a real node, and `--home` is
    /// refused (exit 2).
    Demo {
        /// Keep the node homes (the daemons are still stopped).
        #[arg(long)]
        keep: bool,
    },
    /// Connect to a peer and start a session (pinned by --fingerprint or
    /// --public-key, or --accept-new; without them, show what would be
    /// trusted and change nothing).
    Join(fed::JoinArgs),
    /// Close the session with a peer and stop reconnecting (it stays known).
    Leave(fed::LeaveArgs),
    /// Live sessions.
    Sessions(ops::JsonFlag),
    /// Send a message over the live session and wait for the reply.
    Query(fed::QueryArgs),
    /// Send a message to every peer with a live session.
    Broadcast(fed::BroadcastArgs),
    /// Messages received and accepted by this node.
    Inbox(fed::InboxArgs),
    /// Query, export and verify the audit log.
    #[command(subcommand)]
    Audit(ops::AuditCommand),
    /// Policy plugins: list, inspect, try out, reload and scaffold new ones.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Serve the federation tools to an AI agent over MCP (stdio, or
    /// streamable HTTP with --http). Talks to the home's daemon; when none
    /// runs, runs the node in-process while the session lasts (unless
    /// --no-daemon). See docs/mcp.md.
    Mcp(McpArgs),
    /// The WireGuard mesh governed by trust: status, plan, attest, the
    /// witness chain, mesh IPs (docs/mesh.md).
    #[command(subcommand)]
    Wg(wg::WgCommand),
}

/// `agentfed mcp` arguments.
#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// agent (default): operator tools are hidden and refused; operator:
    /// every tool.
    #[arg(long, value_enum, default_value_t = crate::mcp::Role::Agent)]
    pub role: crate::mcp::Role,
    /// Never run the node in-process: without a running daemon, tools
    /// answer NOT_RUNNING.
    #[arg(long)]
    pub no_daemon: bool,
    /// Serve streamable HTTP on ADDR (e.g. 127.0.0.1:8765) instead of
    /// stdio. Needs a bearer token, generated into the home (mcp.token,
    /// 0600) and printed once.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Allow a non-loopback --http address (served over TLS with the
    /// node's certificate).
    #[arg(long, requires = "http")]
    pub allow_remote: bool,
}

/// `--help` text of the message-type argument of `send`, `query` and
/// `broadcast`, from [`crate::envelope::MESSAGE_TYPES`].
pub fn message_types_help() -> String {
    let names: Vec<&str> = crate::envelope::MESSAGE_TYPES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    format!(
        "Message type, one of: {} (each needs a trust level that allows it)",
        names.join(", ")
    )
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// 1 = operation failed, 2 = bad usage or input, 3 = no daemon running.
    pub code: u8,
    /// The message, printed as one line.
    pub error: anyhow::Error,
}

impl CliError {
    /// Bad usage or input: exit 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: 2,
            error: error.into(),
        }
    }

    /// The operation failed: exit 1.
    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: 1,
            error: error.into(),
        }
    }
}

/// Result of a command.
pub type CliResult = Result<(), CliError>;

/// Parses arguments, runs the command, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its life cycle at info; one-shot commands stay quiet.
    let default_level = match cli.command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, cli.verbose, default_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", printable(&error_line(&err.error)));
            ExitCode::from(err.code)
        }
    }
}

/// `text` safe to print on a terminal: every control character (C0, DEL
/// and C1, which includes the 8-bit CSI) is written as a Rust escape
/// (`\u{1b}`, `\n`), so text a peer supplied cannot move the cursor,
/// recolour or rewrite what the operator sees. Human-readable output passes
/// every peer-supplied string through this; `--json` output stays exact
/// (JSON escapes C0 itself, and a JSON reader is not a terminal).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The error and its causes on one line (`outer: cause: …`), leaving out a
/// cause whose text the message before it already contains (errors that
/// wrap another with `#[error("{0}")]` would otherwise print it twice).
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line.push_str(&text);
        } else if !text.is_empty() && !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

/// Whether `command` opens the home itself (rather than asking the daemon
/// over the control socket): those commands check the home
/// ([`check_home`]) and may create files in it.
fn opens_home(command: &Command) -> bool {
    match command {
        Command::Init(_) | Command::Daemon(_) | Command::Mcp(_) => true,
        Command::Manifest(args) => args.command.is_none(),
        // Offline verification opens the store when no daemon runs.
        Command::Audit(ops::AuditCommand::Verify { .. } | ops::AuditCommand::Prune { .. }) => true,
        // They read the config and read and write the plugin cache.
        Command::Plugin(
            plugin::PluginCommand::List { .. }
            | plugin::PluginCommand::Inspect { .. }
            | plugin::PluginCommand::Run { .. },
        ) => true,
        _ => false,
    }
}

/// Refuses a home that is not private to this user (exit 1, nothing
/// changed); see [`crate::home::check`].
pub(crate) fn check_home(home: &std::path::Path) -> CliResult {
    crate::home::check(home).map_err(CliError::failed)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let home = crate::home::resolve(cli.home.as_deref());
    if opens_home(&cli.command) {
        // Whatever these create in the home (the store, locks, cache
        // entries, temp files) is private from its creation on, even where
        // a library picks the mode. Commands that write the operator's own
        // files (`plugin new`, `audit export --output`) keep the umask
        // (`audit prune --output` makes its file private itself).
        crate::home::private_umask();
    }
    match cli.command {
        Command::Init(args) => node::init(&home, args),
        Command::Manifest(args) => node::manifest(&home, args),
        Command::Daemon(args) => node::daemon(&home, args),
        Command::Status(out) => ops::status(&home, out),
        Command::Peers(args) => ops::peers(&home, args),
        Command::Trust(command) => ops::trust(&home, command),
        Command::Breaker(command) => ops::breaker(&home, command),
        Command::Evict(args) => ops::breaker_change(&home, args, false),
        Command::Reactivate(args) => ops::breaker_change(&home, args, true),
        Command::Spend(command) => ops::spend(&home, command),
        Command::Send(args) => ops::send(&home, args),
        Command::Outbox(args) => ops::outbox(&home, args),
        Command::Audit(command) => ops::audit(&home, command),
        Command::Demo { .. } if cli.home.is_some() => Err(CliError::usage(anyhow::anyhow!(
            "demo always runs in fresh temporary homes and never uses --home (add --keep to keep them afterwards)"
        ))),
        Command::Demo { keep } => crate::demo::run(keep).map_err(CliError::failed),
        Command::Join(args) => fed::join(&home, args),
        Command::Leave(args) => fed::leave(&home, args),
        Command::Sessions(out) => fed::sessions(&home, out.json),
        Command::Query(args) => fed::query(&home, args),
        Command::Broadcast(args) => fed::broadcast(&home, args),
        Command::Inbox(args) => fed::inbox(&home, args),
        Command::Plugin(plugin::PluginCommand::Reload { kind, json }) => {
            ops::plugin_reload(&home, kind, json)
        }
        Command::Plugin(command) => plugin::run(&home, command),
        Command::Wg(command) => wg::run(&home, command),
        Command::Mcp(args) => crate::mcp::run(
            &home,
            crate::mcp::McpOptions {
                role: args.role,
                no_daemon: args.no_daemon,
                http: args.http,
                allow_remote: args.allow_remote,
            },
        )
        .map_err(|e| match e {
            crate::mcp::McpError::Usage(_) => CliError::usage(e),
            _ => CliError::failed(e),
        }),
    }
}

fn init_logging(format: LogFormat, verbose: u8, quiet_level: &str) {
    use tracing_subscriber::EnvFilter;
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = LEVELS.iter().position(|l| *l == quiet_level).unwrap_or(1);
    let default = LEVELS[(base + usize::from(verbose)).min(LEVELS.len() - 1)];
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_help_lists_every_message_type() {
        for (name, _) in crate::envelope::MESSAGE_TYPES {
            let listed = message_types_help()
                .split(|c: char| c == ',' || c == ':' || c.is_whitespace())
                .any(|word| word == *name);
            assert!(listed, "{name} missing from message_types_help()");
        }
    }

    #[test]
    fn error_line_does_not_repeat_a_wrapped_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("key file x is readable; chmod 600 x")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Outer(#[from] Inner);
        let err = anyhow::Error::new(Outer(Inner));
        assert_eq!(error_line(&err), "key file x is readable; chmod 600 x");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(io).context("cannot read y");
        assert_eq!(error_line(&err), "cannot read y: no such file");
    }

    #[test]
    fn peer_text_is_printable_with_every_control_character_written_out() {
        assert_eq!(printable("plain text, ümlaut"), "plain text, ümlaut");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\r\ny\t"), "x\\r\\ny\\t");
        assert_eq!(printable("\u{7f}\u{9b}31m"), "\\u{7f}\\u{9b}31m");
        assert!(!printable("\u{0}\u{85}\u{8d}").chars().any(char::is_control));
    }
}
