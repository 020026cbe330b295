//! Real node homes and real daemon processes for the node and daemon
//! tests. Every wait has a named timeout; every process is killed and every
//! temp dir removed on drop, also when a test fails.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use agentfed::identity::{Identity, ManifestParams, NodeId, SignedManifest};
use serde_json::Value;

/// How long a CLI call may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to start (plugins may need compiling).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a daemon may take to stop after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Start of the fake clock in tests: 2023-11-14T22:13:20Z.
pub const FAKE_START_MS: u64 = 1_700_000_000_000;

/// The agentfed binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentfed")
}

/// Plugin artifacts shared by every test home (compiling the four default
/// policies costs seconds; loading them milliseconds).
fn shared_cache() -> PathBuf {
    private_test_dir("agentfed-test-plugin-cache")
}

/// A directory under the test target dir, readable only by this user:
/// the plugin cache refuses (and then bypasses) a directory others can
/// read, which would make every test daemon compile the policies again.
pub fn private_test_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("creating a shared test dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .expect("making a shared test dir private");
    dir
}

/// Runs `cmd`, failing the test (and killing the process) if it takes
/// longer than `limit`.
pub fn run_with_timeout(mut cmd: Command, what: &str, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // The waiting thread reaps the child; on timeout we kill it by pid.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("timed out after {limit:?} waiting for {what}");
        }
    }
}

/// Result of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success, got exit {}: {}",
            self.code, self.stderr
        );
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Asserts a failure with `code` and exactly one `error:` line on stderr
    /// containing every `needle`; returns the line.
    #[track_caller]
    pub fn fails(&self, code: i32, needles: &[&str]) -> String {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {} (stdout: {}; stderr: {})",
            self.code, self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got: {}",
            self.stderr
        );
        let line = lines[0];
        assert!(line.starts_with("error: "), "{line}");
        assert!(!line.contains("panicked"), "{line}");
        for needle in needles {
            assert!(line.contains(needle), "`{needle}` not in: {line}");
        }
        line.to_string()
    }
}

/// Runs `agentfed --home HOME args…`.
pub fn agentfed(home: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--home").arg(home).args(args);
    let what = format!("agentfed {}", args.join(" "));
    let out = run_with_timeout(cmd, &what, CLI_TIMEOUT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running daemon; killed (SIGKILL) on drop unless stopped first.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("daemon pid");
        rustix::process::kill_process(pid, signal).expect("signalling the daemon");
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaping the daemon");
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait_exit("the daemon to stop after SIGTERM", STOP_TIMEOUT);
        (status, self.log())
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, what: &str, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("daemon running");
        loop {
            if let Some(status) = child.try_wait().expect("polling the daemon") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node home in a temp dir, with its daemon (if started). The daemon is
/// dropped (killed) before the directory is removed.
pub struct Node {
    /// The running daemon, if any.
    pub daemon: Option<Daemon>,
    /// The node home.
    pub home: PathBuf,
    /// Keeps the temp dir alive; removed on drop.
    pub dir: tempfile::TempDir,
    logs: u32,
}

impl Node {
    /// `agentfed init --node-id ID` in a fresh temp home, sharing the test
    /// plugin cache.
    pub fn init(node_id: &str) -> Node {
        Node::init_at(node_id, "wss://192.0.2.10:9100")
    }

    /// Like [`Node::init`] with the federation endpoint `endpoint` (e.g.
    /// `wss://127.0.0.1:PORT` for tests that run real sessions).
    pub fn init_at(node_id: &str, endpoint: &str) -> Node {
        Node::init_with(node_id, &["--endpoint", endpoint])
    }

    /// `agentfed init --node-id ID --mesh-subnet 198.18.0.0/15` plus
    /// `args` (e.g. `["--no-listen"]`) in a fresh temp home.
    pub fn init_with(node_id: &str, args: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let node = Node {
            daemon: None,
            home,
            dir,
            logs: 0,
        };
        let mut init = vec![
            "init",
            "--node-id",
            node_id,
            "--mesh-subnet",
            "198.18.0.0/15",
        ];
        init.extend_from_slice(args);
        node.run(&init).ok();
        std::os::unix::fs::symlink(shared_cache(), node.home.join("cache"))
            .expect("linking the shared plugin cache");
        node
    }

    /// A node home unpacked from `tests/homes/<archive>` (a `.tar.gz`
    /// holding one home directory named `name`), sharing the test plugin
    /// cache: homes made by earlier releases, for upgrade tests.
    pub fn from_archive(archive: &str, name: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/homes")
            .join(archive);
        let out = Command::new("tar")
            .arg("xzf")
            .arg(&source)
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("running tar");
        assert!(out.status.success(), "unpacking {archive}: {out:?}");
        let home = dir.path().join("home");
        std::fs::rename(dir.path().join(name), &home).expect("naming the home");
        std::os::unix::fs::symlink(shared_cache(), home.join("cache"))
            .expect("linking the shared plugin cache");
        Node {
            daemon: None,
            home,
            dir,
            logs: 0,
        }
    }

    /// Runs the CLI against this home.
    pub fn run(&self, args: &[&str]) -> Run {
        agentfed(&self.home, args)
    }

    /// Spawns `agentfed daemon` with `extra` arguments without waiting.
    pub fn spawn_daemon(&mut self, extra: &[&str]) -> Daemon {
        self.spawn_daemon_in(None, extra)
    }

    /// Spawns `agentfed daemon` inside network namespace `netns` (via
    /// `ip netns exec`, which execs it: the pid is the daemon's).
    pub fn spawn_daemon_in(&mut self, netns: Option<&str>, extra: &[&str]) -> Daemon {
        self.logs += 1;
        let log = self.dir.path().join(format!("daemon-{}.log", self.logs));
        let mut cmd = match netns {
            None => Command::new(bin()),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, bin()]);
                cmd
            }
        };
        cmd.arg("--home")
            .arg(&self.home)
            .arg("-v")
            .arg("daemon")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("daemon log file"))
            .env_remove("RUST_LOG");
        let child = cmd.spawn().expect("spawning the daemon");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// Starts the daemon and waits until `status` answers.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_in(None, extra)
    }

    /// Starts the daemon inside network namespace `netns` (or here) and
    /// waits until `status` answers.
    pub fn start_in(&mut self, netns: Option<&str>, extra: &[&str]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let mut daemon = self.spawn_daemon_in(netns, extra);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "daemon exited during start-up ({status}); log:\n{}",
                    daemon.log()
                );
            }
            if self.socket().exists() && self.run(&["status", "--json"]).code == 0 {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {START_TIMEOUT:?} waiting for the daemon to answer status; log:\n{}",
                    daemon.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.daemon = Some(daemon);
    }

    /// Starts the daemon on the fake clock.
    pub fn start_fake_clock(&mut self) {
        let start = FAKE_START_MS.to_string();
        self.start(&["--fake-clock-ms", &start]);
    }

    /// SIGTERM and wait; asserts a clean exit 0.
    pub fn stop(&mut self) -> String {
        let daemon = self.daemon.take().expect("daemon running");
        let (status, log) = daemon.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "daemon did not exit 0: {status}; log:\n{log}"
        );
        log
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.daemon.take().expect("daemon running").kill9();
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.home.join("control.sock")
    }

    /// Writes this node's manifest to `<tempdir>/<name>` and returns the path.
    pub fn manifest_file(&self, name: &str) -> PathBuf {
        let text = self.run(&["manifest"]).ok().to_string();
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing the manifest");
        path
    }

    /// Writes `manifest` to `<tempdir>/<name>`.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("writing a test file");
        path
    }

    /// `peers --json`.
    pub fn peers(&self) -> Value {
        self.run(&["peers", "--json"]).json()
    }

    /// Every audit record, oldest first.
    pub fn audit_records(&self) -> Vec<Value> {
        let records = self
            .run(&[
                "audit",
                "query",
                "--json",
                "--limit",
                "1000000",
                "--oldest-first",
            ])
            .json();
        records.as_array().cloned().expect("records array")
    }

    /// One peer's view from `peers --json`.
    pub fn peer(&self, node_id: &str) -> Value {
        self.run(&["peers", "show", node_id, "--json"]).json()
    }
}

/// A signed manifest of a fresh identity (not written anywhere), for
/// adding many peers cheaply.
pub fn peer_manifest(node_id: &str) -> SignedManifest {
    let id = NodeId::parse(node_id).expect("valid node id");
    let identity = Identity::generate(&id, "wss://192.0.2.20:9100").expect("identity");
    let subnet = "198.18.0.0/15".parse().expect("subnet");
    let ip = identity.mesh_ip(&subnet, &|_| false).expect("mesh ip");
    identity
        .signed_manifest(&ManifestParams::new(ip), FAKE_START_MS)
        .expect("manifest")
}

/// A small deterministic PRNG (xorshift64*), seeded from the clock and pid
/// so runs differ; the seed is printed for reproduction.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `AGENTFED_TEST_SEED` or the clock.
    pub fn new() -> Rng {
        let seed = std::env::var("AGENTFED_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                t ^ u64::from(std::process::id()).rotate_left(32)
            });
        eprintln!("random seed: {seed} (set AGENTFED_TEST_SEED to reproduce)");
        Rng(seed | 1)
    }

    /// Next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// Joins `handle`, failing the test (naming `what`) if the thread does not
/// finish within [`CLI_TIMEOUT`]; a panic in the thread is re-raised.
pub fn within_thread<T>(handle: std::thread::JoinHandle<T>, what: &str) -> T {
    let deadline = Instant::now() + CLI_TIMEOUT;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            panic!("timed out after {CLI_TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls `ok` every 50 ms until it holds; panics naming `what` after
/// `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A node on a loopback endpoint with fast retries, daemon started.
pub fn fed_node(name: &str) -> (Node, String) {
    let endpoint = format!("wss://127.0.0.1:{}", free_port());
    let mut node = Node::init_at(name, &endpoint);
    fast_retries(&node);
    node.start(&[]);
    (node, endpoint)
}

/// Retries every 100 ms to 1 s instead of 500 ms to 60 s (outbox) and
/// 10 minutes (redials), so tests do not wait on backoff.
pub fn fast_retries(node: &Node) {
    let path = node.home.join("agentfed.toml");
    let config = std::fs::read_to_string(&path).expect("reading the config");
    let config = config
        .replace("retry_base_ms = 500", "retry_base_ms = 100")
        .replace("retry_max_ms = 60000", "retry_max_ms = 1000")
        .replace("redial_max_ms = 600000", "redial_max_ms = 1000");
    assert!(config.contains("retry_max_ms = 1000"), "{config}");
    assert!(config.contains("redial_max_ms = 1000"), "{config}");
    assert!(
        config.contains("accept_new_peers = false"),
        "unknown peers must not be admitted by default: {config}"
    );
    std::fs::write(&path, config).expect("writing the config");
}

/// A field of the node's signed manifest (`agentfed manifest`).
pub fn manifest_field(node: &Node, field: &str) -> String {
    let manifest: Value = serde_json::from_str(node.run(&["manifest"]).ok()).expect("manifest");
    manifest["manifest"][field]
        .as_str()
        .expect("manifest field")
        .to_string()
}

/// The node's TLS certificate fingerprint, as `join --fingerprint` takes it.
pub fn fingerprint(node: &Node) -> String {
    manifest_field(node, "tls_fingerprint")
}

/// The peers the node has a live session with.
pub fn session_peers(node: &Node) -> Vec<String> {
    let sessions = node.run(&["sessions", "--json"]).json();
    sessions
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| s["peer"].as_str().unwrap().to_string())
        .collect()
}

/// Gives the PII and handler plugins a base deadline of `ms` (the node's
/// config must still have the default 50 ms): for tests that run bulk
/// payloads on a machine shared with the whole suite.
pub fn set_payload_plugin_deadlines(node: &Node, ms: u64) {
    let path = node.home.join("agentfed.toml");
    let mut config = std::fs::read_to_string(&path).expect("config");
    for kind in ["pii", "handler"] {
        let section = format!("[plugins.{kind}.limits]\ndeadline_ms = 50");
        assert!(config.contains(&section), "the {kind} limits section moved");
        config = config.replacen(
            &section,
            &format!("[plugins.{kind}.limits]\ndeadline_ms = {ms}"),
            1,
        );
    }
    std::fs::write(&path, config).expect("config");
}
