//! `agentfed demo`, end to end: three real daemons on loopback, narrated.

use std::process::Command;

#[test]
fn demo_runs_every_step_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentfed"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("running agentfed demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[REDACTED:email]",
        "[HASH:email:",
        "PII_BLOCKED",
        "\"type\":\"pong\"",
        "HOP_LIMIT_EXCEEDED",
        "ACTIVE -> SUSPENDED",
        "PEER_SUSPENDED",
        "SUSPENDED -> ACTIVE",
        "audit chain intact",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    let inbox_lines = stdout.lines().filter(|l| l.trim_start().starts_with('#'));
    for line in inbox_lines {
        assert!(
            !line.contains("123-45-6789"),
            "an SSN reached an inbox: {line}"
        );
        assert!(
            !line.contains("bob@example.com"),
            "an email passed unhandled: {line}"
        );
    }
    // The homes are gone.
    let root = stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit("homes in ").next())
        .expect("the first line names the homes")
        .trim()
        .to_string();
    assert!(
        !std::path::Path::new(&root).exists(),
        "{root} was not removed"
    );
}
