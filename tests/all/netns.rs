//! Network namespaces that a test creates, and removes again (also when
//! the test fails): one per simulated host, joined by veth links on the
//! underlay 192.0.2.0/24. Tests that need them fail on a machine that
//! cannot create them, unless `AGENTFED_SKIP_NETNS=1` is set, in which case
//! they say loudly that they were skipped.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The directory wireguard-go opens its UAPI sockets in. It is not
/// per-namespace, so interface names must be unique per test run.
pub const UAPI_DIR: &str = "/var/run/wireguard";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, `<prefix><pid><n>`, at
/// most 15 bytes (an interface name's limit).
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

/// Whether namespace tests are to be skipped; says so loudly when they are.
pub fn skipped(test: &str) -> bool {
    if std::env::var("AGENTFED_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!(
            "\n!!! SKIPPED {test}: AGENTFED_SKIP_NETNS=1 is set, so no network namespace, \
             WireGuard device or firewall was tested !!!\n"
        );
        return true;
    }
    false
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn must(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One network namespace, deleted on drop with every process in it.
pub struct Netns {
    /// The namespace's name (`ip netns`).
    pub name: String,
    children: Vec<Child>,
    /// UAPI sockets of devices started in it, removed on drop.
    sockets: Vec<String>,
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn new() -> Netns {
        let name = unique_name("afns");
        must(
            Command::new("ip").args(["netns", "add", &name]),
            "creating a network namespace (needs root and CAP_SYS_ADMIN; set AGENTFED_SKIP_NETNS=1 to skip, loudly)",
        );
        let ns = Netns {
            name,
            children: Vec::new(),
            sockets: Vec::new(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace; panics if it fails.
    pub fn run(&self, argv: &[&str]) -> Output {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        must(&mut cmd, &format!("in {}", self.name))
    }

    /// Runs `argv` inside the namespace; whether it exited 0.
    pub fn succeeds(&self, argv: &[&str]) -> bool {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Removes the UAPI socket of `interface` on drop (a device a daemon
    /// started in this namespace; a killed one leaves its socket behind).
    pub fn owns_device(&mut self, interface: &str) {
        self.sockets.push(format!("{UAPI_DIR}/{interface}.sock"));
    }

    /// Keeps `child` (started in this namespace) to kill on drop.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Starts wireguard-go in the foreground for `interface` and waits for
    /// its UAPI socket.
    pub fn start_wireguard_go(&mut self, interface: &str) {
        let child = self
            .command("wireguard-go")
            .args(["-f", interface])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wireguard-go (apt-get install wireguard-go)");
        self.adopt(child);
        let socket = format!("{UAPI_DIR}/{interface}.sock");
        self.sockets.push(socket.clone());
        crate::harness::wait_until(
            "wireguard-go opens its UAPI socket",
            std::time::Duration::from_secs(10),
            || std::path::Path::new(&socket).exists(),
        );
    }
}

/// An underlay LAN: a bridge in a namespace of its own, which host
/// namespaces join with a veth pair each (192.0.2.0/24).
pub struct Lan {
    ns: Netns,
}

impl Lan {
    /// A LAN with no hosts yet.
    pub fn new() -> Lan {
        let ns = Netns::new();
        ns.run(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.run(&["ip", "link", "set", "br0", "up"]);
        Lan { ns }
    }

    /// Plugs `host` into the LAN with underlay address `address` (/24).
    pub fn attach(&self, host: &Netns, address: &str) {
        let (outside, inside) = (unique_name("afv"), unique_name("afv"));
        must(
            Command::new("ip").args([
                "link",
                "add",
                &inside,
                "netns",
                &host.name,
                "type",
                "veth",
                "peer",
                "name",
                &outside,
                "netns",
                &self.ns.name,
            ]),
            "creating a veth pair",
        );
        self.ns
            .run(&["ip", "link", "set", &outside, "master", "br0"]);
        self.ns.run(&["ip", "link", "set", &outside, "up"]);
        host.run(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &inside,
        ]);
        host.run(&["ip", "link", "set", &inside, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still running in it (a daemon's wireguard-go).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}
