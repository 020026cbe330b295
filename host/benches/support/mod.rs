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
