//! What the daemon benchmarks share: running the `agentfed` binary and
//! stopping the daemons they start.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A daemon process, stopped with SIGTERM (then SIGKILL after 30 s) when
/// dropped, so a panicking benchmark leaves nothing running.
pub struct DaemonGuard(pub Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agentfed --home HOME` (release build of this package, or the binary
/// named by `AGENTFED_BENCH_BIN` to compare another build on the same
/// machine state), quiet logs.
pub fn agentfed(home: &Path) -> Command {
    let bin = std::env::var_os("AGENTFED_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_agentfed").into());
    let mut cmd = Command::new(bin);
    cmd.arg("--home").arg(home).env_remove("RUST_LOG");
    cmd
}

/// Runs `agentfed --home HOME ARGS…` to completion; its stdout. Panics
/// with its stderr if it fails.
#[allow(dead_code)] // not every bench runs CLI commands
pub fn cli(home: &Path, args: &[&str]) -> String {
    let out = agentfed(home)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running agentfed");
    assert!(
        out.status.success(),
        "agentfed {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port.
#[allow(dead_code)] // not every bench listens
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("ephemeral port");
    l.local_addr().expect("local addr").port()
}
