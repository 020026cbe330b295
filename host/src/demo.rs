//! `agentfed demo`: three nodes on loopback, narrated for a newcomer.
//!
//! The demo drives real `agentfed daemon` processes in temporary homes
//! with the same CLI commands an operator would type, and prints each
//! command with what it answered. Everything it starts it stops, and the
//! homes are removed afterwards (also on failure), unless `--keep`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// One demo node: its name, home, endpoint and daemon process.
struct DemoNode {
    name: &'static str,
    home: PathBuf,
    endpoint: String,
    daemon: Option<Child>,
}

/// The three nodes; stops the daemons and removes the homes on drop.
struct Cluster {
    root: PathBuf,
    nodes: Vec<DemoNode>,
    keep: bool,
    exe: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.daemon.take() {
                stop_daemon(&mut child);
            }
        }
        if self.keep {
            println!("\nkept the node homes in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// SIGTERM (the daemon flushes and exits), then SIGKILL if it lingers.
fn stop_daemon(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    fn node(&self, name: &str) -> &DemoNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("demo node exists")
    }

    /// Runs `agentfed --home <node> args…` and returns its output.
    fn run(&self, name: &str, args: &[&str]) -> Result<Output> {
        let home = &self.node(name).home;
        Command::new(&self.exe)
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .with_context(|| format!("running agentfed {}", args.join(" ")))
    }

    /// Runs a command, prints it with its output, and fails the demo if
    /// its success does not match `expect_ok`.
    fn show(&self, name: &str, args: &[&str], expect_ok: bool) -> Result<String> {
        println!(
            "  {name}$ agentfed {}",
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = self.run(name, args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        for line in stdout.lines().chain(stderr.lines()).take(24) {
            println!("      {line}");
        }
        if out.status.success() != expect_ok {
            bail!(
                "`agentfed {}` on {name} {} (exit {:?})",
                args.join(" "),
                if expect_ok {
                    "failed"
                } else {
                    "unexpectedly succeeded"
                },
                out.status.code()
            );
        }
        Ok(stdout)
    }

    /// Like [`show`](Self::show) with `--json`, parsed.
    fn json(&self, name: &str, args: &[&str]) -> Result<Value> {
        let out = self.run(name, args)?;
        if !out.status.success() {
            bail!(
                "`agentfed {}` on {name} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing the output of agentfed {}", args.join(" ")))
    }

    fn wait_ready(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.run(name, &["status", "--json"])?.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.node(name).home.join("daemon.log"))
                    .unwrap_or_default();
                bail!("the {name} daemon did not start within 60 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn step(n: u32, title: &str, explanation: &str) {
    println!("\n── {n}. {title} ──");
    for line in explanation.lines() {
        println!("{line}");
    }
}

/// Runs the demo. `keep` leaves the homes (and stops the daemons).
pub fn run(keep: bool) -> Result<()> {
    let exe = std::env::current_exe().context("locating the agentfed binary")?;
    let root = std::env::temp_dir().join(format!("agentfed-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut cluster = Cluster {
        root: root.clone(),
        nodes: Vec::new(),
        keep,
        exe,
    };
    for name in ["alice", "bob", "carol"] {
        let port = free_port()?;
        cluster.nodes.push(DemoNode {
            name,
            home: root.join(name),
            endpoint: format!("wss://127.0.0.1:{port}"),
            daemon: None,
        });
    }
    println!(
        "agentfed demo: three nodes (alice, bob, carol) on 127.0.0.1, homes in {}",
        root.display()
    );

    step(
        1,
        "Create three nodes",
        "Each node gets an Ed25519 identity key, an X25519 WireGuard key (files mode 0600),\na self-signed TLS certificate, a documented config and a signed manifest.",
    );
    for i in 0..cluster.nodes.len() {
        let (name, endpoint) = (cluster.nodes[i].name, cluster.nodes[i].endpoint.clone());
        cluster.show(
            name,
            &["init", "--node-id", name, "--endpoint", &endpoint],
            true,
        )?;
    }

    step(
        2,
        "Start the daemons",
        "Each daemon loads its plugins (the embedded default policies), opens its redb store\nand audit chain, listens for peers over TLS and serves its control socket.",
    );
    for i in 0..cluster.nodes.len() {
        let home = cluster.nodes[i].home.clone();
        let log = std::fs::File::create(home.join("daemon.log"))?;
        let child = Command::new(&cluster.exe)
            .arg("--home")
            .arg(&home)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a daemon")?;
        cluster.nodes[i].daemon = Some(child);
    }
    for name in ["alice", "bob", "carol"] {
        cluster.wait_ready(name)?;
        println!("  {name}: daemon up on {}", cluster.node(name).endpoint);
    }

    step(
        3,
        "Exchange manifests out of band",
        "Trust is bootstrapped by the operators: each node is given the others' signed\nmanifests (in real life: over a channel you already trust). A verified manifest makes\na peer VERIFIED; its TLS fingerprint pins every later connection.",
    );
    let mut manifests = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let manifest = cluster.run(name, &["manifest"])?;
        let path = root.join(format!("{name}.manifest.json"));
        std::fs::write(&path, &manifest.stdout)?;
        manifests.push((name, path));
    }
    for (name, _) in &manifests {
        for (other, path) in &manifests {
            if name != other {
                cluster.show(
                    name,
                    &["peers", "add", path.to_str().unwrap_or_default()],
                    true,
                )?;
            }
        }
    }

    step(
        4,
        "Join over the wire",
        "alice dials bob and carol, bob dials carol: TLS 1.3 pinned to the manifest's\nfingerprint, then a mutual Ed25519 handshake bound to the TLS session.",
    );
    for (from, to) in [("alice", "bob"), ("alice", "carol"), ("bob", "carol")] {
        let fingerprint = peer_fingerprint(&root, to)?;
        let endpoint = cluster.node(to).endpoint.clone();
        cluster.show(
            from,
            &["join", &endpoint, "--fingerprint", &fingerprint],
            true,
        )?;
    }

    step(
        5,
        "Raise trust with operator reasons",
        "Peers start VERIFIED (status and ping only). Operators raise them, with a reason\nthat goes to the audit log: bob and alice ATTESTED each other, carol and alice TRUSTED.\nA level an operator sets is pinned (no plugin promotes above it) unless --unpin says\nthe peer may earn more, as alice says of bob.",
    );
    cluster.show(
        "alice",
        &[
            "trust",
            "set",
            "bob",
            "attested",
            "--unpin",
            "--reason",
            "demo: bob is the team build server",
        ],
        true,
    )?;
    cluster.show(
        "bob",
        &[
            "trust",
            "set",
            "alice",
            "attested",
            "--reason",
            "demo: alice is a teammate",
        ],
        true,
    )?;
    cluster.show(
        "alice",
        &[
            "trust",
            "set",
            "carol",
            "trusted",
            "--reason",
            "demo: carol is my own laptop",
        ],
        true,
    )?;
    cluster.show(
        "carol",
        &[
            "trust",
            "set",
            "alice",
            "trusted",
            "--reason",
            "demo: alice is my own server",
        ],
        true,
    )?;
    cluster.show("alice", &["peers"], true)?;
    println!(
        "\n  How would bob earn TRUSTED in alice's view? Only by doing work alice asks of it\n  (deliveries it acknowledges, queries it answers), at most 60 counted an hour, on 5\n  distinct days, after 7 days at ATTESTED; messages bob sends and heartbeats earn\n  nothing. `trust show` says what is met and the earliest it could happen:"
    );
    cluster.show("alice", &["trust", "show", "bob"], true)?;

    step(
        6,
        "PII handling depends on trust",
        "alice sends the same task to bob (ATTESTED) and carol (TRUSTED). The PII policy runs\non string values before signing: emails are redacted for ATTESTED and hashed (keyed,\nper node) for TRUSTED. An SSN blocks the message at every level.",
    );
    let payload =
        r#"{"task":"review the failing test","contact":"bob@example.com","phone":"555-123-4567"}"#;
    cluster.show(
        "alice",
        &["send", "bob", "task-assignment", "--payload", payload],
        true,
    )?;
    cluster.show(
        "alice",
        &["send", "carol", "task-assignment", "--payload", payload],
        true,
    )?;
    cluster.show(
        "alice",
        &[
            "send",
            "bob",
            "task-assignment",
            "--payload",
            r#"{"note":"ssn 123-45-6789"}"#,
        ],
        false,
    )?;
    wait_for_inbox(&cluster, "bob", 1)?;
    wait_for_inbox(&cluster, "carol", 1)?;
    cluster.show("bob", &["inbox"], true)?;
    cluster.show("carol", &["inbox"], true)?;

    step(
        7,
        "Query and response",
        "A query travels the same pipeline and waits for the receiver's handler plugin,\nwhich answers ping and status itself.",
    );
    cluster.show("alice", &["query", "bob", "ping", "--payload", "{}"], true)?;
    cluster.show(
        "bob",
        &["query", "carol", "status", "--payload", "{}"],
        true,
    )?;

    step(
        8,
        "Budgets",
        "Every envelope carries a budget. max_hops 0 means \"no remote delegation\"; bad\nnumbers are refused with constant errors that never echo the budget.",
    );
    cluster.show(
        "alice",
        &[
            "send",
            "bob",
            "task-assignment",
            "--payload",
            r#"{"task":"delegate"}"#,
            "--max-hops",
            "0",
        ],
        false,
    )?;
    cluster.show(
        "alice",
        &[
            "send",
            "bob",
            "task-assignment",
            "--payload",
            r#"{"task":"x"}"#,
            "--max-usd",
            "-1",
        ],
        false,
    )?;

    step(
        9,
        "The circuit breaker",
        "An integrator reports what bob's work cost. Over the $5/day limit, the spend policy\nsuspends bob: sends are refused with PEER_SUSPENDED before any other work. The\nbreaker never reactivates by itself; the operator does, with a reason.",
    );
    cluster.show(
        "alice",
        &[
            "spend", "report", "bob", "--task", "demo-1", "--tokens", "120000", "--usd", "6.20",
        ],
        true,
    )?;
    cluster.show("alice", &["breaker", "status"], true)?;
    cluster.show(
        "alice",
        &[
            "send",
            "bob",
            "task-assignment",
            "--payload",
            r#"{"task":"more work"}"#,
        ],
        false,
    )?;
    cluster.show(
        "alice",
        &[
            "reactivate",
            "bob",
            "--reason",
            "demo: budget raised, health probe passed",
        ],
        true,
    )?;
    println!(
        "\n  The reactivation holds: spend windows now count from it (COUNTS FROM), so the $6.20\n  reported before cannot suspend bob again at the next tick; only new spend can."
    );
    cluster.show("alice", &["breaker", "status", "bob"], true)?;
    cluster.show(
        "alice",
        &[
            "send",
            "bob",
            "task-assignment",
            "--payload",
            r#"{"task":"more work"}"#,
        ],
        true,
    )?;

    step(
        10,
        "Audit",
        "Every step above is in each node's hash-chained audit log; verification recomputes\nthe chain and would name the first edited, removed or reordered record.",
    );
    cluster.show("alice", &["audit", "query", "--limit", "8"], true)?;
    for name in ["alice", "bob", "carol"] {
        cluster.show(name, &["audit", "verify"], true)?;
    }

    println!(
        "\nDone: three nodes federated, trust raised, PII handled per trust level, a query answered,"
    );
    println!("a budget refused, a breaker tripped and reset, and every audit chain verified.");
    Ok(())
}

fn peer_fingerprint(root: &Path, name: &str) -> Result<String> {
    let text = std::fs::read_to_string(root.join(format!("{name}.manifest.json")))?;
    let json: Value = serde_json::from_str(&text)?;
    json["manifest"]["tls_fingerprint"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{name}'s manifest has no tls_fingerprint"))
}

/// Delivery is asynchronous (the outbox worker sends and waits for the
/// acknowledgement): wait until `name`'s inbox holds `count` messages.
fn wait_for_inbox(cluster: &Cluster, name: &str, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inbox = cluster.json(name, &["inbox", "--json"])?;
        let n = inbox
            .as_array()
            .or_else(|| inbox["messages"].as_array())
            .map_or(0, Vec::len);
        if n >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name}'s inbox still has {n} of {count} messages after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
