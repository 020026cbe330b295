//! The WireGuard device the reconciler drives, behind one small interface
//! with two backends:
//!
//! * [`UserspaceDevice`]: any implementation of the cross-platform
//!   userspace API (wireguard-go, boringtun, gotatun), spoken directly on
//!   its UAPI socket ([`super::uapi`]). agentfed starts the implementation
//!   itself (`[mesh] userspace_command`, default `wireguard-go`) when the
//!   socket is missing.
//! * [`KernelDevice`]: Linux kernel WireGuard, created with `ip link add …
//!   type wireguard` and driven through wireguard-tools' `wg` (netlink).
//!
//! Addresses and link state go through `ip` on both. Every argument given
//! to a command is built from typed values (keys, socket addresses,
//! addresses with a prefix) and passed as a separate argv entry: no shell,
//! and no peer-supplied text.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

pub use super::uapi::{DeviceChange, DevicePeer, DeviceState};
use super::uapi::{UapiDevice, UapiError};

/// How long a freshly started userspace implementation may take to open
/// its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure setting up or driving the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The userspace API failed.
    #[error(transparent)]
    Uapi(#[from] UapiError),
    /// A command (`ip`, `wg`, the userspace implementation) failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line, without secrets.
        command: String,
        /// Its exit status and first line of stderr.
        reason: String,
    },
    /// The userspace implementation did not open its socket in time.
    #[error("the WireGuard device {interface} did not open {socket} within {secs}s after `{command}` started", socket = socket.display())]
    NoSocket {
        /// The interface.
        interface: String,
        /// The socket waited for.
        socket: PathBuf,
        /// The command that was started.
        command: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The device's own state could not be read.
    #[error("the WireGuard device {interface} reported an unreadable state: {reason}")]
    BadState {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
}

/// What the interface itself needs: its key, port and address.
#[derive(Clone)]
pub struct InterfaceSpec {
    /// The interface name (validated by the config).
    pub name: String,
    /// The node's X25519 private key.
    pub private_key: Zeroizing<[u8; 32]>,
    /// Its public key (what the device must report).
    pub public_key: [u8; 32],
    /// The UDP listen port.
    pub listen_port: u16,
    /// The node's mesh address.
    pub address: Ipv4Addr,
    /// The mesh subnet's prefix length.
    pub prefix: u8,
}

impl std::fmt::Debug for InterfaceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterfaceSpec")
            .field("name", &self.name)
            .field("listen_port", &self.listen_port)
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A WireGuard device the reconciler can read and change.
pub trait WgDevice: Send + Sync {
    /// Which backend this is (`userspace` or `kernel`), for status output.
    fn backend(&self) -> &'static str;
    /// Creates the device if needed and makes its key, port, address and
    /// link state match `spec`; idempotent. Returns whether anything
    /// changed.
    fn ensure_up(&self, spec: &InterfaceSpec) -> Result<bool, DeviceError>;
    /// The device's peers and settings as it reports them now.
    fn state(&self) -> Result<DeviceState, DeviceError>;
    /// Applies `changes` in order.
    fn apply(&self, changes: &[DeviceChange]) -> Result<(), DeviceError>;
}

/// A userspace implementation reached over its UAPI socket.
#[derive(Debug)]
pub struct UserspaceDevice {
    uapi: UapiDevice,
    interface: String,
    /// The implementation to start when the socket is missing, e.g.
    /// `["wireguard-go"]`; the interface name is appended.
    command: Vec<String>,
}

impl UserspaceDevice {
    /// The device `interface` with its socket in `uapi_dir`, started with
    /// `command` (program and arguments; the interface name is appended)
    /// when the socket is missing.
    pub fn new(uapi_dir: &Path, interface: &str, command: Vec<String>) -> UserspaceDevice {
        UserspaceDevice {
            uapi: UapiDevice::new(uapi_dir, interface),
            interface: interface.to_string(),
            command,
        }
    }

    /// Starts the implementation (it detaches itself, as wireguard-go does
    /// by default) and waits for its socket.
    fn start(&self) -> Result<(), DeviceError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(DeviceError::Command {
                command: String::new(),
                reason: "[mesh] userspace_command is empty".into(),
            });
        };
        let mut cmd = Command::new(program);
        cmd.args(args).arg(&self.interface);
        run(cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.uapi.exists() {
            if Instant::now() > deadline {
                return Err(DeviceError::NoSocket {
                    interface: self.interface.clone(),
                    socket: self.uapi.socket().to_path_buf(),
                    command: self.command.join(" "),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl WgDevice for UserspaceDevice {
    fn backend(&self) -> &'static str {
        "userspace"
    }

    fn ensure_up(&self, spec: &InterfaceSpec) -> Result<bool, DeviceError> {
        let mut changed = false;
        if !self.uapi.exists() {
            self.start()?;
            changed = true;
        }
        let state = self.uapi.get()?;
        if state.public_key != Some(spec.public_key) || state.listen_port != spec.listen_port {
            self.uapi.set(&[DeviceChange::Interface {
                private_key: *spec.private_key,
                listen_port: spec.listen_port,
            }])?;
            changed = true;
        }
        changed |= ensure_address_and_link(&spec.name, spec.address, spec.prefix)?;
        Ok(changed)
    }

    fn state(&self) -> Result<DeviceState, DeviceError> {
        Ok(self.uapi.get()?)
    }

    fn apply(&self, changes: &[DeviceChange]) -> Result<(), DeviceError> {
        Ok(self.uapi.set(changes)?)
    }
}

/// Linux kernel WireGuard, through `ip` and `wg`.
#[derive(Debug)]
pub struct KernelDevice {
    interface: String,
}

impl KernelDevice {
    /// The kernel device `interface`.
    pub fn new(interface: &str) -> KernelDevice {
        KernelDevice {
            interface: interface.to_string(),
        }
    }
}

impl WgDevice for KernelDevice {
    fn backend(&self) -> &'static str {
        "kernel"
    }

    fn ensure_up(&self, spec: &InterfaceSpec) -> Result<bool, DeviceError> {
        let mut changed = false;
        if !link_exists(&self.interface) {
            let mut cmd = Command::new("ip");
            cmd.args(["link", "add", "dev", &self.interface, "type", "wireguard"]);
            run(cmd)?;
            changed = true;
        }
        let state = self.state()?;
        if state.public_key != Some(spec.public_key) || state.listen_port != spec.listen_port {
            // The key goes in on stdin, never on a command line.
            let mut cmd = Command::new("wg");
            cmd.args(["set", &self.interface, "listen-port"])
                .arg(spec.listen_port.to_string())
                .args(["private-key", "/dev/stdin"]);
            let key = Zeroizing::new(format!(
                "{}\n",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    *spec.private_key
                )
            ));
            run_with_stdin(cmd, key.as_bytes())?;
            changed = true;
        }
        changed |= ensure_address_and_link(&spec.name, spec.address, spec.prefix)?;
        Ok(changed)
    }

    fn state(&self) -> Result<DeviceState, DeviceError> {
        let mut cmd = Command::new("wg");
        cmd.args(["show", &self.interface, "dump"]);
        let out = run(cmd)?;
        parse_dump(&out).map_err(|reason| DeviceError::BadState {
            interface: self.interface.clone(),
            reason,
        })
    }

    fn apply(&self, changes: &[DeviceChange]) -> Result<(), DeviceError> {
        for change in changes {
            let mut cmd = Command::new("wg");
            cmd.args(["set", &self.interface]);
            match change {
                DeviceChange::Interface { .. } => {
                    // Only ensure_up sets the key (on stdin); the
                    // reconciler never asks for it here.
                    continue;
                }
                DeviceChange::UpsertPeer {
                    public_key,
                    endpoint,
                    persistent_keepalive,
                    allowed_ips,
                } => {
                    cmd.args(["peer", &b64(public_key)]);
                    if let Some(endpoint) = endpoint {
                        cmd.args(["endpoint", &endpoint.to_string()]);
                    }
                    cmd.args(["persistent-keepalive", &persistent_keepalive.to_string()]);
                    let ips: Vec<String> = allowed_ips
                        .iter()
                        .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                        .collect();
                    cmd.args(["allowed-ips", &ips.join(",")]);
                }
                DeviceChange::RemovePeer { public_key } => {
                    cmd.args(["peer", &b64(public_key), "remove"]);
                }
            }
            run(cmd)?;
        }
        Ok(())
    }
}

fn b64(key: &[u8; 32]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
}

/// Parses `wg show IF dump`: a first line for the interface (private key,
/// public key, listen port, fwmark), then one tab-separated line per peer
/// (public key, preshared key, endpoint, allowed ips, latest handshake,
/// rx, tx, keepalive).
fn parse_dump(text: &str) -> Result<DeviceState, String> {
    let mut lines = text.lines();
    let first = lines.next().ok_or("empty dump")?;
    let fields: Vec<&str> = first.split('\t').collect();
    if fields.len() < 3 {
        return Err("short interface line".into());
    }
    let key = |s: &str| -> Option<[u8; 32]> {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s)
            .ok()?
            .try_into()
            .ok()
    };
    let mut state = DeviceState {
        listen_port: fields[2].parse().map_err(|_| "listen port")?,
        public_key: key(fields[1]),
        ..DeviceState::default()
    };
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            return Err("short peer line".into());
        }
        let public_key = key(f[0]).ok_or("peer key")?;
        let mut allowed_ips = Vec::new();
        for entry in f[3].split(',').filter(|e| !e.is_empty() && *e != "(none)") {
            let (ip, prefix) = entry.split_once('/').ok_or("allowed ip")?;
            if let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) {
                allowed_ips.push((ip, prefix));
            }
        }
        let peer = DevicePeer {
            public_key,
            endpoint: f[2].parse::<SocketAddr>().ok(),
            allowed_ips,
            last_handshake_secs: f[4].parse().unwrap_or(0),
            rx_bytes: f[5].parse().unwrap_or(0),
            tx_bytes: f[6].parse().unwrap_or(0),
            persistent_keepalive: f[7].parse().unwrap_or(0),
        };
        state.peers.insert(public_key, peer);
    }
    Ok(state)
}

fn link_exists(interface: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", interface])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Gives `interface` exactly the address `address/prefix` (IPv4) and sets
/// it up. Returns whether anything changed.
fn ensure_address_and_link(
    interface: &str,
    address: Ipv4Addr,
    prefix: u8,
) -> Result<bool, DeviceError> {
    let mut cmd = Command::new("ip");
    cmd.args(["-4", "-o", "addr", "show", "dev", interface]);
    let shown = run(cmd)?;
    let wanted = format!("{address}/{prefix}");
    let mut changed = false;
    // `N: if    inet A/P scope …`: every IPv4 address on the device.
    let present: Vec<&str> = shown
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()
        })
        .collect();
    for other in present.iter().filter(|a| **a != wanted) {
        let mut cmd = Command::new("ip");
        cmd.args(["-4", "addr", "del", other, "dev", interface]);
        run(cmd)?;
        changed = true;
    }
    if !present.contains(&wanted.as_str()) {
        let mut cmd = Command::new("ip");
        cmd.args(["-4", "addr", "add", &wanted, "dev", interface]);
        run(cmd)?;
        changed = true;
    }
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "link", "show", "dev", interface]);
    let link = run(cmd)?;
    if !link.contains(",UP") && !link.contains("<UP") {
        let mut cmd = Command::new("ip");
        cmd.args(["link", "set", "dev", interface, "up"]);
        run(cmd)?;
        changed = true;
    }
    Ok(changed)
}

/// Runs `cmd`, returning its stdout, or an error with its status and the
/// first line of its stderr.
pub(crate) fn run(cmd: Command) -> Result<String, DeviceError> {
    run_with_stdin(cmd, &[])
}

/// Runs `cmd` with `input` on its stdin.
pub(crate) fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Result<String, DeviceError> {
    use std::io::Write as _;
    let shown = describe(&cmd);
    let failed = |reason: String| DeviceError::Command {
        command: shown.clone(),
        reason,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(failed(format!("{}: {first}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as shown in errors (agentfed never passes secrets as
/// arguments, so it can be shown whole).
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wg_dump_parses_into_the_device_state() {
        let dump = "cHJpdmF0ZXByaXZhdGVwcml2YXRlcHJpdmF0ZXByaXY=\tAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\t51820\toff\n\
AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\t(none)\t192.0.2.7:51820\t198.18.0.7/32\t1700000000\t10\t20\t25\n\
AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let state = parse_dump(dump).expect("parses");
        assert_eq!(state.listen_port, 51820);
        assert_eq!(state.public_key, Some([1; 32]));
        let a = &state.peers[&[2; 32]];
        assert_eq!(a.endpoint, Some("192.0.2.7:51820".parse().unwrap()));
        assert_eq!(a.allowed_ips, vec![(Ipv4Addr::new(198, 18, 0, 7), 32)]);
        assert_eq!(
            (a.last_handshake_secs, a.rx_bytes, a.tx_bytes),
            (1_700_000_000, 10, 20)
        );
        assert_eq!(a.persistent_keepalive, 25);
        let b = &state.peers[&[3; 32]];
        assert!(b.allowed_ips.is_empty() && b.endpoint.is_none());
        assert_eq!(b.persistent_keepalive, 0);
    }

    #[test]
    fn a_short_dump_is_an_error_not_an_empty_device() {
        assert!(parse_dump("").is_err());
        assert!(parse_dump("a\tb\n").is_err());
        assert!(
            parse_dump("k\tAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\t1\toff\nshort\n").is_err()
        );
    }
}
