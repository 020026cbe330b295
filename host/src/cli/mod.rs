//! The `agentfed` command line.
//!
//! Exit codes: 0 success; 1 the operation ran and failed (e.g. a plugin
//! trapped or refused, which the node would treat as fail-closed); 2 bad
//! usage or bad input (nothing was changed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod plugin;

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

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
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
    /// Policy plugins: list, inspect, try out, and scaffold new ones.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// 1 = operation failed, 2 = bad usage or input.
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
    init_logging(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {:#}", err.error);
            ExitCode::from(err.code)
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let home = crate::home::resolve(cli.home.as_deref());
    match cli.command {
        Command::Plugin(command) => plugin::run(&home, command),
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
