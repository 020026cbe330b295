//! The cross-platform WireGuard userspace API: the line protocol served on
//! `<dir>/<interface>.sock` by wireguard-go, boringtun and gotatun
//! (<https://www.wireguard.com/xplatform/>).
//!
//! Only typed values are ever written: keys are 32-byte arrays (sent as
//! hex), endpoints socket addresses, allowed IPs addresses with a prefix.
//! No peer-supplied string reaches the socket, so nothing can smuggle a
//! line into a request.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one request may take before the device is called unresponsive.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from a device (a device with 10,000 peers answers
/// a few MiB; anything larger is not a WireGuard device).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A failure talking to a userspace WireGuard device.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// The socket could not be opened or used.
    #[error("WireGuard device socket {path}: {source}", path = path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device answered with a non-zero `errno`.
    #[error("WireGuard device {path} refused the request: errno {errno}", path = path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The errno the device reported.
        errno: i64,
    },
    /// The answer did not follow the protocol.
    #[error("WireGuard device {path} answered outside the protocol: {reason}", path = path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong (never echoes key material).
        reason: String,
    },
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePeer {
    /// The peer's X25519 public key.
    pub public_key: [u8; 32],
    /// Where the device sends the peer's packets, if known.
    pub endpoint: Option<SocketAddr>,
    /// The addresses routed to this peer, `(address, prefix)`.
    pub allowed_ips: Vec<(Ipv4Addr, u8)>,
    /// Seconds between keepalives; 0 is off.
    pub persistent_keepalive: u16,
    /// Unix time of the last handshake, seconds; 0 is never.
    pub last_handshake_secs: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// The device as it reports itself (the private key is never kept).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// The public key of its private key, when it has one (the private
    /// key itself is not kept).
    pub public_key: Option<[u8; 32]>,
    /// Its peers, by public key.
    pub peers: BTreeMap<[u8; 32], DevicePeer>,
}

/// One change to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Set the device's private key and listen port.
    Interface {
        /// The X25519 private key (zeroised by the caller's buffer).
        private_key: [u8; 32],
        /// The UDP listen port.
        listen_port: u16,
    },
    /// Add the peer, or replace its endpoint, keepalive and allowed IPs.
    UpsertPeer {
        /// The peer's public key.
        public_key: [u8; 32],
        /// Its endpoint, if it has one.
        endpoint: Option<SocketAddr>,
        /// Keepalive seconds (0 off).
        persistent_keepalive: u16,
        /// The complete allowed-IP list (replaces the device's).
        allowed_ips: Vec<(Ipv4Addr, u8)>,
    },
    /// Remove the peer.
    RemovePeer {
        /// The peer's public key.
        public_key: [u8; 32],
    },
}

/// A client of one device's UAPI socket.
#[derive(Debug, Clone)]
pub struct UapiDevice {
    socket: PathBuf,
}

impl UapiDevice {
    /// The device `interface` whose socket lives in `dir`
    /// (`/var/run/wireguard` for wireguard-go).
    pub fn new(dir: &Path, interface: &str) -> UapiDevice {
        UapiDevice {
            socket: dir.join(format!("{interface}.sock")),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the device's socket exists.
    pub fn exists(&self) -> bool {
        self.socket.exists()
    }

    /// Reads the device's state (`get=1`).
    pub fn get(&self) -> Result<DeviceState, UapiError> {
        let lines = self.request(b"get=1\n\n")?;
        parse_get(&self.socket, &lines)
    }

    /// Applies `changes` in one `set=1` request: the device applies them
    /// in order, all from one read of the request.
    pub fn set(&self, changes: &[DeviceChange]) -> Result<(), UapiError> {
        if changes.is_empty() {
            return Ok(());
        }
        let request = zeroize::Zeroizing::new(render_set(changes));
        self.request(request.as_bytes()).map(|_| ())
    }

    /// Sends one request and reads the answer up to its blank line,
    /// checking `errno`. Returns the answer's `key=value` lines before it.
    fn request(&self, request: &[u8]) -> Result<Vec<(String, String)>, UapiError> {
        let io = |source| UapiError::Io {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(io)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.write_all(request).map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        let mut read = 0usize;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).map_err(io)?;
            read += n;
            if n == 0 || read > MAX_ANSWER_BYTES {
                return Err(self.protocol("the answer ended without errno"));
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                return Err(self.protocol("a blank line before errno"));
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(self.protocol("a line without '='"));
            };
            if key == "errno" {
                let errno: i64 = value
                    .parse()
                    .map_err(|_| self.protocol("errno is not a number"))?;
                if errno != 0 {
                    return Err(UapiError::Refused {
                        path: self.socket.clone(),
                        errno,
                    });
                }
                return Ok(lines);
            }
            lines.push((key.to_string(), value.to_string()));
        }
    }

    fn protocol(&self, reason: &str) -> UapiError {
        UapiError::Protocol {
            path: self.socket.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The text of a `set=1` request for `changes`.
fn render_set(changes: &[DeviceChange]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("set=1\n");
    for change in changes {
        // Writing to a String cannot fail.
        let _ = match change {
            DeviceChange::Interface {
                private_key,
                listen_port,
            } => writeln!(
                out,
                "private_key={}\nlisten_port={listen_port}",
                hex::encode(private_key)
            ),
            DeviceChange::UpsertPeer {
                public_key,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => {
                let _ = writeln!(out, "public_key={}", hex::encode(public_key));
                if let Some(endpoint) = endpoint {
                    let _ = writeln!(out, "endpoint={endpoint}");
                }
                let _ = writeln!(
                    out,
                    "persistent_keepalive_interval={persistent_keepalive}\nreplace_allowed_ips=true"
                );
                for (ip, prefix) in allowed_ips {
                    let _ = writeln!(out, "allowed_ip={ip}/{prefix}");
                }
                Ok(())
            }
            DeviceChange::RemovePeer { public_key } => {
                writeln!(out, "public_key={}\nremove=true", hex::encode(public_key))
            }
        };
    }
    out.push('\n');
    out
}

/// Parses the lines of a `get=1` answer.
fn parse_get(socket: &Path, lines: &[(String, String)]) -> Result<DeviceState, UapiError> {
    let bad = |reason: String| UapiError::Protocol {
        path: socket.to_path_buf(),
        reason,
    };
    let mut state = DeviceState::default();
    let mut current: Option<DevicePeer> = None;
    for (key, value) in lines {
        match key.as_str() {
            "private_key" => state.public_key = public_key_of(value),
            "listen_port" => {
                state.listen_port = value
                    .parse()
                    .map_err(|_| bad("listen_port is not a port".into()))?
            }
            "public_key" => {
                if let Some(peer) = current.take() {
                    state.peers.insert(peer.public_key, peer);
                }
                current = Some(DevicePeer {
                    public_key: hex_key(value)
                        .ok_or_else(|| bad("a peer key is not 32 hex bytes".into()))?,
                    ..DevicePeer::default()
                });
            }
            _ => {
                let Some(peer) = current.as_mut() else {
                    // Device-level keys agentfed does not use (fwmark, …).
                    continue;
                };
                apply_peer_key(peer, key, value).map_err(bad)?;
            }
        }
    }
    if let Some(peer) = current.take() {
        state.peers.insert(peer.public_key, peer);
    }
    Ok(state)
}

fn apply_peer_key(peer: &mut DevicePeer, key: &str, value: &str) -> Result<(), String> {
    let number = |what: &str| format!("{what} is not a number");
    match key {
        "endpoint" => {
            peer.endpoint = Some(
                value
                    .parse()
                    .map_err(|_| "endpoint is not ip:port".to_string())?,
            )
        }
        "allowed_ip" => {
            let (ip, prefix) = value
                .split_once('/')
                .ok_or_else(|| "allowed_ip has no prefix".to_string())?;
            // IPv6 entries are not agentfed's; a mesh is IPv4 (kept out of
            // the state, so a reconcile replaces the list).
            if let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) {
                peer.allowed_ips.push((ip, prefix));
            } else if !ip.contains(':') {
                return Err("allowed_ip is not an address/prefix".into());
            }
        }
        "persistent_keepalive_interval" => {
            peer.persistent_keepalive = value.parse().map_err(|_| number(key))?
        }
        "last_handshake_time_sec" => {
            peer.last_handshake_secs = value.parse().map_err(|_| number(key))?
        }
        "rx_bytes" => peer.rx_bytes = value.parse().map_err(|_| number(key))?,
        "tx_bytes" => peer.tx_bytes = value.parse().map_err(|_| number(key))?,
        // preshared_key, protocol_version, last_handshake_time_nsec.
        _ => {}
    }
    Ok(())
}

/// The X25519 public key of a hex private key; `None` for the all-zero
/// key a device without a key reports.
fn public_key_of(private_hex: &str) -> Option<[u8; 32]> {
    let private = zeroize::Zeroizing::new(hex_key(private_hex)?);
    if private.iter().all(|b| *b == 0) {
        return None;
    }
    let secret = x25519_dalek::StaticSecret::from(*private);
    Some(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

fn hex_key(value: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(value).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_request_is_typed_lines_ending_in_a_blank_line() {
        let text = render_set(&[
            DeviceChange::UpsertPeer {
                public_key: [0xab; 32],
                endpoint: Some("192.0.2.7:51820".parse().unwrap()),
                persistent_keepalive: 25,
                allowed_ips: vec![(Ipv4Addr::new(198, 18, 0, 7), 32)],
            },
            DeviceChange::UpsertPeer {
                public_key: [0xcd; 32],
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: vec![],
            },
            DeviceChange::RemovePeer {
                public_key: [0xef; 32],
            },
        ]);
        let expected = format!(
            "set=1\npublic_key={}\nendpoint=192.0.2.7:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=198.18.0.7/32\n\
public_key={}\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n\
public_key={}\nremove=true\n\n",
            "ab".repeat(32),
            "cd".repeat(32),
            "ef".repeat(32)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn a_get_answer_parses_peers_and_never_keeps_the_private_key() {
        let private = [7u8; 32];
        let lines: Vec<(String, String)> = [
            ("private_key", hex::encode(private)),
            ("listen_port", "51820".into()),
            ("public_key", "ab".repeat(32)),
            ("endpoint", "192.0.2.9:51820".into()),
            ("last_handshake_time_sec", "1700000000".into()),
            ("rx_bytes", "5".into()),
            ("tx_bytes", "6".into()),
            ("persistent_keepalive_interval", "25".into()),
            ("allowed_ip", "198.18.0.9/32".into()),
            ("allowed_ip", "fd00::1/128".into()),
            ("public_key", "cd".repeat(32)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let state = parse_get(Path::new("x.sock"), &lines).expect("parses");
        let expected_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes();
        assert_eq!(state.public_key, Some(expected_public));
        assert_eq!(state.listen_port, 51820);
        assert_eq!(state.peers.len(), 2);
        let a = &state.peers[&[0xab; 32]];
        assert_eq!(a.allowed_ips, vec![(Ipv4Addr::new(198, 18, 0, 9), 32)]);
        assert_eq!((a.rx_bytes, a.tx_bytes, a.persistent_keepalive), (5, 6, 25));
        assert!(state.peers[&[0xcd; 32]].allowed_ips.is_empty());
        let zero = vec![("private_key".to_string(), "00".repeat(32))];
        assert_eq!(
            parse_get(Path::new("x.sock"), &zero).unwrap().public_key,
            None
        );
        let bad = vec![("public_key".to_string(), "zz".into())];
        assert!(parse_get(Path::new("x.sock"), &bad).is_err());
    }
}
