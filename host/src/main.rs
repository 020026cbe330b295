//! The `agentfed` command.

fn main() -> std::process::ExitCode {
    agentfed::cli::main()
}
