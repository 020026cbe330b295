//! The node's configuration file (`agentfed.toml` in the node home).
//!
//! Every field has a default, so a missing file or a missing section means
//! "use the defaults"; unknown keys are errors, so a typo is caught instead
//! of silently ignored. `agentfed init` writes the file with every default
//! spelled out and commented ([`NodeConfig::to_documented_toml`]); the text
//! is generated from these types, so it always parses back to the same
//! configuration.
//!
//! Sections:
//!
//! | section | what |
//! |---|---|
//! | `[node]` | node id, endpoint, agent types, advertised capabilities, mesh subnet |
//! | `[audit]` | compliance mode (`standard` or `hipaa`) |
//! | `[timers]` | periods of the trust and breaker evaluation timers |
//! | `[transport]` | listen address, plaintext opt-in, heartbeats, timeouts, new-peer admission, retry backoff, message types that need consensus, clock skew allowed |
//! | `[mesh]` | the WireGuard mesh: on/off, interface, port, backend, reconcile period, keepalive, firewall |
//! | `[plugins.<kind>]` | component path, sandbox limits, policy config (trust and spend thresholds live in `[plugins.trust.config]` / `[plugins.spend.config]`) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{MeshSubnet, NodeId};
use crate::model::{DAY_MS, HOUR_MS};
use crate::plugin::{Limits, PluginKind};
use crate::trust::Capability;
use crate::trust_ledger::{EarningRules, MAX_GATE_DAYS};

/// The name of the config file inside the node home.
pub const CONFIG_FILE: &str = "agentfed.toml";

/// Default federation endpoint written by `agentfed init`.
pub const DEFAULT_ENDPOINT: &str = "wss://127.0.0.1:9100";

/// The `[node] endpoint` value of a dial-only node (`agentfed init
/// --no-listen`): no listener, no endpoint in the manifest, never dialed by
/// peers (it dials them).
pub const NO_ENDPOINT: &str = "none";

/// Default period of the trust evaluation timer, in seconds.
pub const DEFAULT_TRUST_EVAL_SECS: u64 = 60;

/// Default period of the breaker evaluation timer, in seconds.
pub const DEFAULT_BREAKER_EVAL_SECS: u64 = 30;

/// Longest timer period accepted, in seconds (one day).
pub const MAX_TIMER_SECS: u64 = 86_400;

/// Errors reading the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has unknown or ill-typed keys, or a
    /// value breaks its rule.
    #[error("{path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line) or the rule broken.
        message: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`: who this node is and what it offers.
    pub node: NodeSection,
    /// `[audit]`: audit log settings.
    pub audit: AuditSection,
    /// `[timers]`: periodic evaluation.
    pub timers: TimersSection,
    /// `[trust]`: the host's earning rules, for every trust plugin.
    pub trust: TrustSection,
    /// `[transport]`: the federation listener, sessions and delivery.
    pub transport: TransportSection,
    /// `[mesh]`: the WireGuard mesh (off by default).
    pub mesh: MeshSection,
    /// Policy plugins, one section per kind.
    pub plugins: PluginsConfig,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node id (informational: the identity in `node.json` is
    /// authoritative; when set, it must match). Empty means unset.
    pub node_id: String,
    /// Federation endpoint URL peers connect to (`ws://` or `wss://`), or
    /// [`NO_ENDPOINT`] (`"none"`) for a dial-only node.
    pub endpoint: String,
    /// Agent types this node offers (tokens `[a-z0-9][a-z0-9-]*`).
    pub agent_types: Vec<String>,
    /// Capabilities advertised in the manifest (names from the trust
    /// ladder). Default: all of them; peers still gate by trust level.
    pub capabilities: Vec<String>,
    /// WireGuard mesh subnet the node's mesh IP is derived in.
    pub mesh_subnet: String,
    /// WireGuard UDP endpoint (`host:port`) published in the manifest;
    /// unset means none.
    pub wg_endpoint: Option<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            node_id: String::new(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            agent_types: Vec::new(),
            capabilities: Capability::ALL
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            mesh_subnet: crate::identity::DEFAULT_MESH_SUBNET.to_string(),
            wg_endpoint: None,
        }
    }
}

/// Audit compliance mode as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compliance {
    /// Keep summaries and details as given.
    #[default]
    Standard,
    /// Strip free text from records before hashing.
    Hipaa,
}

impl Compliance {
    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Compliance::Standard => "standard",
            Compliance::Hipaa => "hipaa",
        }
    }
}

impl From<Compliance> for crate::audit::ComplianceMode {
    fn from(c: Compliance) -> Self {
        match c {
            Compliance::Standard => crate::audit::ComplianceMode::Standard,
            Compliance::Hipaa => crate::audit::ComplianceMode::Hipaa,
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// `standard` or `hipaa`.
    pub compliance: Compliance,
}

/// How the mesh drives its WireGuard device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshBackend {
    /// A userspace implementation (wireguard-go, boringtun, gotatun) over
    /// its UAPI socket; works wherever a TUN device does.
    #[default]
    Userspace,
    /// Linux kernel WireGuard, through `ip` and wireguard-tools' `wg`.
    Kernel,
}

/// `[mesh]`: the WireGuard mesh governed by trust (docs/mesh.md). The
/// subnet and the published WireGuard endpoint are `[node] mesh_subnet`
/// and `[node] wg_endpoint`: they are part of the signed manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSection {
    /// Run the mesh: create the device, reconcile peers and firewall.
    pub enabled: bool,
    /// The WireGuard interface name (1-15 of `[A-Za-z0-9_.-]`).
    pub interface: String,
    /// The UDP port the device listens on.
    pub listen_port: u16,
    /// Userspace or kernel WireGuard.
    pub backend: MeshBackend,
    /// Where userspace implementations open `<interface>.sock`.
    pub uapi_dir: PathBuf,
    /// The userspace implementation started when its socket is missing
    /// (program and arguments; the interface name is appended).
    pub userspace_command: Vec<String>,
    /// Seconds between reconciles that look for drift (1..=86400); trust,
    /// breaker and manifest changes reconcile at once.
    pub reconcile_secs: u64,
    /// Persistent keepalive sent to peers, seconds (0 off; at most 3600).
    pub keepalive_secs: u16,
    /// Apply the trust-graded firewall (nftables table `inet agentfed`).
    pub firewall: bool,
    /// Seconds a WireGuard key replaced by `wg rotate` is kept (0600, in
    /// `wireguard.key.previous`) before it is destroyed (0..=86400).
    pub rotate_grace_secs: u64,
}

/// Default `[mesh] interface`.
pub const DEFAULT_MESH_INTERFACE: &str = "agentfed0";

impl Default for MeshSection {
    fn default() -> Self {
        MeshSection {
            enabled: false,
            interface: DEFAULT_MESH_INTERFACE.into(),
            listen_port: 51820,
            backend: MeshBackend::Userspace,
            uapi_dir: PathBuf::from("/var/run/wireguard"),
            userspace_command: vec!["wireguard-go".into()],
            reconcile_secs: 30,
            keepalive_secs: 25,
            firewall: true,
            rotate_grace_secs: 600,
        }
    }
}

/// Whether `name` is a usable Linux interface name.
pub fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[timers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimersSection {
    /// Seconds between trust evaluations of every peer (1..=86400).
    pub trust_eval_secs: u64,
    /// Seconds between breaker evaluations of every peer (1..=86400).
    pub breaker_eval_secs: u64,
}

impl Default for TimersSection {
    fn default() -> Self {
        TimersSection {
            trust_eval_secs: DEFAULT_TRUST_EVAL_SECS,
            breaker_eval_secs: DEFAULT_BREAKER_EVAL_SECS,
        }
    }
}

impl TimersSection {
    /// The daemon's tick period: the shorter of the two timers (one tick
    /// evaluates trust and breaker for every peer).
    pub fn tick_period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.trust_eval_secs.min(self.breaker_eval_secs).max(1))
    }
}

/// `[trust]`: what the host requires before any trust plugin may promote a
/// peer, how fast interactions count, and when silent peers decay
/// ([`crate::trust_ledger`]). These are host rules rather than keys of
/// `[plugins.trust.config]` because they hold for every trust plugin,
/// including ones a team writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustSection {
    /// Successes counted toward promotion per clock hour, at most (1..=100000).
    pub counted_per_hour: u32,
    /// Hours at VERIFIED before ATTESTED (0..=8760).
    pub attested_after_hours: u64,
    /// Distinct UTC days with counted interactions at VERIFIED before ATTESTED (0..=365).
    pub attested_active_days: u32,
    /// Days at ATTESTED before TRUSTED (0..=365).
    pub trusted_after_days: u64,
    /// Distinct UTC days with counted interactions at ATTESTED before TRUSTED (0..=365).
    pub trusted_active_days: u32,
    /// Days without a counted interaction after which a peer loses one
    /// earned level (0 = never; at most 3650).
    pub decay_after_days: u64,
}

impl Default for TrustSection {
    fn default() -> Self {
        let d = EarningRules::default();
        TrustSection {
            counted_per_hour: d.counted_per_hour,
            attested_after_hours: d.attested_after_ms / HOUR_MS,
            attested_active_days: d.attested_active_days,
            trusted_after_days: d.trusted_after_ms / DAY_MS,
            trusted_active_days: d.trusted_active_days,
            decay_after_days: d.decay_after_ms / DAY_MS,
        }
    }
}

impl TrustSection {
    /// The rules these settings describe.
    pub fn rules(&self) -> EarningRules {
        EarningRules {
            counted_per_hour: self.counted_per_hour,
            attested_after_ms: self.attested_after_hours * HOUR_MS,
            attested_active_days: self.attested_active_days,
            trusted_after_ms: self.trusted_after_days * DAY_MS,
            trusted_active_days: self.trusted_active_days,
            decay_after_ms: self.decay_after_days * DAY_MS,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let max_days = u64::from(MAX_GATE_DAYS);
        for (key, value, lo, hi) in [
            (
                "trust.counted_per_hour",
                u64::from(self.counted_per_hour),
                1,
                100_000,
            ),
            (
                "trust.attested_after_hours",
                self.attested_after_hours,
                0,
                8760,
            ),
            (
                "trust.attested_active_days",
                u64::from(self.attested_active_days),
                0,
                max_days,
            ),
            (
                "trust.trusted_after_days",
                self.trusted_after_days,
                0,
                max_days,
            ),
            (
                "trust.trusted_active_days",
                u64::from(self.trusted_active_days),
                0,
                max_days,
            ),
            ("trust.decay_after_days", self.decay_after_days, 0, 3650),
        ] {
            if value < lo || value > hi {
                return Err(format!("{key}: must be {lo}..={hi}"));
            }
        }
        Ok(())
    }
}

/// `[transport]`: how the daemon listens, keeps sessions and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSection {
    /// Listen address (`host:port`, an IP address); unset means the host
    /// and port of `[node] endpoint`.
    pub listen: Option<String>,
    /// Permit `ws://` (no TLS) endpoints, listening and dialing. Weaker:
    /// only inside an already encrypted network (e.g. a tailnet).
    pub allow_plaintext: bool,
    /// Seconds between heartbeats on a session (each answered heartbeat
    /// counts as a successful interaction for trust).
    pub heartbeat_secs: u64,
    /// Close a session on which nothing arrived for this many seconds.
    pub idle_timeout_secs: u64,
    /// Drop a connection whose TLS, WebSocket upgrade and handshake have
    /// not completed within this many seconds (half-open and slow peers).
    pub handshake_timeout_secs: u64,
    /// How long a delivery or query waits for the peer's acknowledgement
    /// (a delivery of a frame over 1 MiB gets 1 s more per further MiB).
    pub request_timeout_ms: u64,
    /// Admit unknown peers that complete the handshake (as VERIFIED).
    /// Off: unknown peers are only admitted through an explicit `join`.
    pub accept_new_peers: bool,
    /// At most this many peers admitted by `accept_new_peers` are known at
    /// once (1..=10000); further strangers are refused `PEER_LIMIT` at the
    /// handshake. Peers an operator added or joined do not count.
    pub max_accepted_peers: u64,
    /// Inbound envelopes accepted per second from one peer, sustained
    /// (bursts of two seconds' worth pass); more are refused
    /// `RATE_LIMITED` and retried by the sender.
    pub peer_envelopes_per_sec: u64,
    /// Inbound bytes accepted per second from one peer, sustained.
    pub peer_bytes_per_sec: u64,
    /// Messages one peer may have waiting in this node's inbox; more are
    /// refused `INBOX_FULL` until the local agent removes what it processed.
    pub peer_inbox_messages: u64,
    /// Bytes one peer may have waiting in this node's inbox.
    pub peer_inbox_bytes: u64,
    /// First retry delay (reconnects and redeliveries), ms; doubles per
    /// failed attempt.
    pub retry_base_ms: u64,
    /// Longest retry delay of a redelivery, ms.
    pub retry_max_ms: u64,
    /// Longest delay between redials of a peer that cannot be reached, ms
    /// (they start at `retry_base_ms` and double): an unreachable peer
    /// costs a dial every 10 minutes at most, not every minute.
    pub redial_max_ms: u64,
    /// Message types among [`CONSENSUS_OPTIONAL`] (`agent-handoff`,
    /// `claim-event`) that also need the consensus capability
    /// (`collaborative-task`, TRUSTED and above), whether this node sends
    /// or receives them. `trust-change` and `topology-change` always need
    /// it. Default: none.
    pub consensus_for: Vec<String>,
    /// How far an inbound envelope's timestamp may be from this node's
    /// clock, seconds (1 to [`MAX_CLOCK_SKEW_SECS`]); further is refused
    /// `STALE_TIMESTAMP`.
    pub max_clock_skew_secs: u64,
}

/// Default `[transport] max_clock_skew_secs`: ±5 minutes.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 300;

/// Largest `[transport] max_clock_skew_secs`: a day. The receiver's
/// de-duplication window must exceed twice the skew (a replay is then
/// either remembered or stale); it is a week.
pub const MAX_CLOCK_SKEW_SECS: u64 = 86_400;

/// The message types `[transport] consensus_for` may list.
pub const CONSENSUS_OPTIONAL: &[&str] = &["agent-handoff", "claim-event"];

impl Default for TransportSection {
    fn default() -> Self {
        TransportSection {
            listen: None,
            allow_plaintext: false,
            heartbeat_secs: 30,
            idle_timeout_secs: 90,
            handshake_timeout_secs: 10,
            request_timeout_ms: 10_000,
            accept_new_peers: false,
            max_accepted_peers: 64,
            // High enough for the delivery target (10,000 messages/s
            // between two nodes); an exposed node may lower them.
            peer_envelopes_per_sec: 20_000,
            peer_bytes_per_sec: 64 << 20,
            peer_inbox_messages: 100_000,
            peer_inbox_bytes: 512 << 20,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            redial_max_ms: 600_000,
            consensus_for: Vec::new(),
            max_clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
        }
    }
}

/// `[plugins.*]`: which component fills each slot, and how it is limited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.trust]`
    pub trust: PluginConfig,
    /// `[plugins.pii]`
    pub pii: PluginConfig,
    /// `[plugins.spend]`
    pub spend: PluginConfig,
    /// `[plugins.handler]`
    pub handler: PluginConfig,
}

impl PluginsConfig {
    /// Checks `replace_default` and `[[plugins.pii.add]]`: only the PII
    /// slot holds a chain, and a path there replaces the default only when
    /// the operator says so.
    fn validate_chains(&self) -> Result<(), String> {
        for kind in PluginKind::ALL {
            let section = self.get(kind);
            if kind != PluginKind::Pii && (section.replace_default || !section.add.is_empty()) {
                return Err(format!(
                    "plugins.{kind}: replace_default and [[plugins.{kind}.add]] are only for [plugins.pii] (the {kind} slot holds one plugin; `path` replaces its default)"
                ));
            }
        }
        let pii = &self.pii;
        match (&pii.path, pii.replace_default) {
            (Some(_), false) => {
                return Err("plugins.pii.path: a path here replaces the built-in PII detection (all fourteen categories); to add your policy after the default, move it to a [[plugins.pii.add]] section (path = ...), or set replace_default = true to replace the default on purpose".into());
            }
            (None, true) => {
                return Err(
                    "plugins.pii.replace_default: set path to the policy that replaces the default"
                        .into(),
                );
            }
            _ => {}
        }
        if pii.add.len() > MAX_PII_ADDITIONS {
            return Err(format!(
                "plugins.pii.add: at most {MAX_PII_ADDITIONS} policies (each scans every value within the one PII deadline)"
            ));
        }
        if pii.add.iter().any(|link| link.path.as_os_str().is_empty()) {
            return Err("plugins.pii.add: every entry needs a path".into());
        }
        Ok(())
    }

    /// The section of `kind`.
    pub fn get(&self, kind: PluginKind) -> &PluginConfig {
        match kind {
            PluginKind::Trust => &self.trust,
            PluginKind::Pii => &self.pii,
            PluginKind::Spend => &self.spend,
            PluginKind::Handler => &self.handler,
        }
    }
}

/// One plugin slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of a `.wasm` component (relative paths are relative to the
    /// node home); unset means the embedded default policy. In
    /// `[plugins.pii]` a path replaces the built-in detection, so it is
    /// only accepted together with `replace_default = true`.
    pub path: Option<PathBuf>,
    /// `[plugins.pii]` only: the operator's explicit choice that `path`
    /// replaces the embedded default PII policy instead of adding to it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replace_default: bool,
    /// Sandbox limits of every call (in `[plugins.pii]`, of the whole
    /// chain: its deadline is shared by all its policies).
    pub limits: Limits,
    /// Values the plugin reads with `host.config(key)`.
    pub config: BTreeMap<String, String>,
    /// `[[plugins.pii.add]]`: PII policies run after the slot's main
    /// policy (the default, or `path`), each with its own configuration;
    /// the strictest action per span wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<ChainLink>,
}

/// One `[[plugins.pii.add]]` entry: a policy added to the PII chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    /// Path of the `.wasm` component (relative to the node home).
    pub path: PathBuf,
    /// Values this policy reads with `host.config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Most policies `[[plugins.pii.add]]` may add after the main one: each
/// scans every value within the slot's one deadline.
pub const MAX_PII_ADDITIONS: usize = 7;

impl NodeConfig {
    /// Reads `home/agentfed.toml`; a missing file gives the defaults.
    pub fn load(home: &Path) -> Result<Self, ConfigError> {
        let path = home.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Whether `home/agentfed.toml` sets `[node] endpoint` itself (rather
    /// than leaving it to the default): only then does it move the node.
    pub fn sets_endpoint(home: &Path) -> Result<bool, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        Ok(table
            .get("node")
            .and_then(|node| node.get("endpoint"))
            .is_some())
    }

    /// Parses and validates config text; `path` is only used in error
    /// messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the values serde cannot: grammars, known names, ranges.
    /// The message names the key and the rule, never echoing the value.
    pub fn validate(&self) -> Result<(), String> {
        let node = &self.node;
        if !node.node_id.is_empty() {
            NodeId::parse(&node.node_id).map_err(|e| format!("node.node_id: {}", e.reason))?;
        }
        if node.endpoint != NO_ENDPOINT {
            crate::identity::validate_endpoint(&node.endpoint).map_err(|e| {
                format!(
                    "node.endpoint: {} (or \"{NO_ENDPOINT}\" for a dial-only node)",
                    e.reason
                )
            })?;
        }
        if node.agent_types.len() > crate::identity::MAX_AGENT_TYPES {
            return Err(format!(
                "node.agent_types: at most {} entries",
                crate::identity::MAX_AGENT_TYPES
            ));
        }
        if let Some(i) = node.agent_types.iter().position(|t| !is_token(t)) {
            return Err(format!(
                "node.agent_types[{i}]: must match ^[a-z0-9][a-z0-9-]{{0,31}}$"
            ));
        }
        // The manifest lists each entry once (its grammar refuses a
        // repeat): say so here, naming the entry, before anything starts.
        for (name, list) in [
            ("agent_types", &node.agent_types),
            ("capabilities", &node.capabilities),
        ] {
            if let Some(i) = (0..list.len()).find(|&i| list[..i].contains(&list[i])) {
                return Err(format!(
                    "node.{name}[{i}]: listed twice (each entry at most once)"
                ));
            }
        }
        if let Some(i) = node
            .capabilities
            .iter()
            .position(|c| c.parse::<Capability>().is_err())
        {
            let names: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
            return Err(format!(
                "node.capabilities[{i}]: unknown capability (expected some of {})",
                names.join(", ")
            ));
        }
        self.mesh_subnet()
            .map_err(|e| format!("node.mesh_subnet: {e}"))?;
        let mesh = &self.mesh;
        if !is_interface_name(&mesh.interface) {
            return Err("mesh.interface: 1-15 characters of [A-Za-z0-9_.-], not . or ..".into());
        }
        if mesh.listen_port == 0 {
            return Err("mesh.listen_port: must be 1-65535".into());
        }
        if !(1..=MAX_TIMER_SECS).contains(&mesh.reconcile_secs) {
            return Err(format!("mesh.reconcile_secs: must be 1-{MAX_TIMER_SECS}"));
        }
        if mesh.rotate_grace_secs > MAX_TIMER_SECS {
            return Err(format!("mesh.rotate_grace_secs: at most {MAX_TIMER_SECS}"));
        }
        if mesh.keepalive_secs > 3600 {
            return Err("mesh.keepalive_secs: at most 3600 (0 is off)".into());
        }
        if mesh.userspace_command.is_empty() || mesh.userspace_command[0].is_empty() {
            return Err("mesh.userspace_command: name a program, e.g. [\"wireguard-go\"]".into());
        }
        if !mesh.uapi_dir.is_absolute() {
            return Err("mesh.uapi_dir: must be an absolute path".into());
        }
        if let Some(wg) = &node.wg_endpoint {
            crate::identity::validate_host_port("wg_endpoint", wg)
                .map_err(|e| format!("node.wg_endpoint: {}", e.reason))?;
        }
        for (key, secs) in [
            ("timers.trust_eval_secs", self.timers.trust_eval_secs),
            ("timers.breaker_eval_secs", self.timers.breaker_eval_secs),
        ] {
            if secs == 0 || secs > MAX_TIMER_SECS {
                return Err(format!("{key}: must be 1..={MAX_TIMER_SECS} seconds"));
            }
        }
        self.trust.validate()?;
        self.plugins.validate_chains()?;
        for kind in PluginKind::ALL {
            let limits = &self.plugins.get(kind).limits;
            for (key, value, lo, hi) in [
                ("deadline_ms", limits.deadline_ms, 1, 60_000),
                ("memory_mib", limits.memory_mib, 1, 4096),
            ] {
                if value < lo || value > hi {
                    return Err(format!("plugins.{kind}.limits.{key}: must be {lo}..={hi}"));
                }
            }
        }
        let t = &self.transport;
        if let Some(listen) = &t.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err("transport.listen: must be IP:PORT (IPv6 in brackets)".into());
        }
        for (key, value, lo, hi) in [
            ("transport.heartbeat_secs", t.heartbeat_secs, 1, 3600),
            (
                "transport.idle_timeout_secs",
                t.idle_timeout_secs,
                1,
                86_400,
            ),
            (
                "transport.handshake_timeout_secs",
                t.handshake_timeout_secs,
                1,
                300,
            ),
            (
                "transport.request_timeout_ms",
                t.request_timeout_ms,
                10,
                600_000,
            ),
            ("transport.retry_base_ms", t.retry_base_ms, 1, 3_600_000),
            (
                "transport.max_accepted_peers",
                t.max_accepted_peers,
                1,
                10_000,
            ),
            (
                "transport.peer_envelopes_per_sec",
                t.peer_envelopes_per_sec,
                1,
                1_000_000,
            ),
            (
                "transport.peer_bytes_per_sec",
                t.peer_bytes_per_sec,
                1024,
                1 << 34,
            ),
            (
                "transport.peer_inbox_messages",
                t.peer_inbox_messages,
                1,
                100_000_000,
            ),
            (
                "transport.peer_inbox_bytes",
                t.peer_inbox_bytes,
                1 << 20,
                1 << 40,
            ),
            ("transport.retry_max_ms", t.retry_max_ms, 1, 86_400_000),
            ("transport.redial_max_ms", t.redial_max_ms, 1, 86_400_000),
            (
                "transport.max_clock_skew_secs",
                t.max_clock_skew_secs,
                1,
                MAX_CLOCK_SKEW_SECS,
            ),
        ] {
            if value < lo || value > hi {
                return Err(format!("{key}: must be {lo}..={hi}"));
            }
        }
        if t.retry_max_ms < t.retry_base_ms {
            return Err("transport.retry_max_ms: must be at least transport.retry_base_ms".into());
        }
        if t.redial_max_ms < t.retry_base_ms {
            return Err("transport.redial_max_ms: must be at least transport.retry_base_ms".into());
        }
        if t.idle_timeout_secs <= t.heartbeat_secs {
            return Err("transport.idle_timeout_secs: must exceed transport.heartbeat_secs".into());
        }
        for (i, message_type) in t.consensus_for.iter().enumerate() {
            if !CONSENSUS_OPTIONAL.contains(&message_type.as_str()) {
                return Err(format!(
                    "transport.consensus_for: entries must be {} (trust-change and topology-change always need consensus)",
                    CONSENSUS_OPTIONAL.join(" or ")
                ));
            }
            if t.consensus_for[..i].contains(message_type) {
                return Err("transport.consensus_for: an entry is listed twice".into());
            }
        }
        Ok(())
    }

    /// The endpoint `[node] endpoint` asks for: `None` for a dial-only
    /// node ([`NO_ENDPOINT`]).
    pub fn endpoint(&self) -> Option<&str> {
        (self.node.endpoint != NO_ENDPOINT).then_some(self.node.endpoint.as_str())
    }

    /// The parsed mesh subnet.
    pub fn mesh_subnet(&self) -> Result<MeshSubnet, crate::identity::MeshIpError> {
        self.node.mesh_subnet.parse()
    }

    /// The component path configured for `kind`, resolved against `home`.
    pub fn plugin_path(&self, home: &Path, kind: PluginKind) -> Option<PathBuf> {
        self.plugins
            .get(kind)
            .path
            .as_ref()
            .map(|p| resolve_in(home, p))
    }

    /// What fills the slot of `kind`, in call order: the main policy (the
    /// embedded default, or `path`) with `[plugins.<kind>.config]`, then
    /// each `[[plugins.pii.add]]` policy with its own configuration.
    pub fn plugin_chain(&self, home: &Path, kind: PluginKind) -> Vec<ChainEntry> {
        let section = self.plugins.get(kind);
        let mut chain = vec![ChainEntry {
            path: self.plugin_path(home, kind),
            config: section.config.clone(),
        }];
        chain.extend(section.add.iter().map(|link| ChainEntry {
            path: Some(resolve_in(home, &link.path)),
            config: link.config.clone(),
        }));
        chain
    }

    /// This configuration as a commented TOML document with every value
    /// written out. Parsing the text gives back `self`.
    pub fn to_documented_toml(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        line(w, "# agentfed node configuration.");
        line(
            w,
            "# Every key is shown with its value; delete a key to fall back to its default.",
        );
        line(w, "# Unknown keys are errors.");
        line(w, "");
        line(w, "[node]");
        line(
            w,
            "# This node's id (the identity in node.json is authoritative; if set, must match).",
        );
        kv(w, "node_id", &self.node.node_id);
        line(
            w,
            "# Federation endpoint peers connect to: ws:// or wss://host:port[/path];",
        );
        line(
            w,
            "# \"none\" = dial-only (no listener; peers never dial this node, it dials them).",
        );
        line(
            w,
            "# Changing it moves the node: the daemon applies it at its next start, and",
        );
        line(
            w,
            "# peers learn it from the next handshake (docs/operations.md).",
        );
        kv(w, "endpoint", &self.node.endpoint);
        line(
            w,
            "# Agent types this node offers, e.g. [\"coder\", \"tester\"].",
        );
        kv(w, "agent_types", &self.node.agent_types);
        line(
            w,
            "# Capabilities advertised in the signed manifest (peers still gate by trust level):",
        );
        let names: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        line(w, &format!("#   {}", names.join(", ")));
        kv(w, "capabilities", &self.node.capabilities);
        line(
            w,
            "# WireGuard mesh subnet (IPv4 CIDR, prefix at most /30); the mesh IP is derived from the node id.",
        );
        kv(w, "mesh_subnet", &self.node.mesh_subnet);
        line(
            w,
            "# WireGuard UDP endpoint (host:port) published in the manifest; unset = none.",
        );
        match &self.node.wg_endpoint {
            Some(wg) => kv(w, "wg_endpoint", wg),
            None => line(w, "# wg_endpoint = \"192.0.2.10:51820\""),
        }
        line(w, "");
        line(w, "[audit]");
        line(
            w,
            "# \"standard\" keeps summaries and details; \"hipaa\" strips free text before hashing.",
        );
        kv(w, "compliance", self.audit.compliance.as_str());
        line(w, "");
        line(w, "[timers]");
        line(
            w,
            "# Seconds between trust evaluations of every peer (the trust plugin decides).",
        );
        kv(w, "trust_eval_secs", &self.timers.trust_eval_secs);
        line(
            w,
            "# Seconds between breaker evaluations of every peer (the spend plugin decides).",
        );
        kv(w, "breaker_eval_secs", &self.timers.breaker_eval_secs);
        trust_section(w, &self.trust);
        let t = &self.transport;
        line(w, "");
        line(w, "[transport]");
        line(
            w,
            "# Listen address IP:PORT; unset = the host and port of [node] endpoint.",
        );
        match &t.listen {
            Some(listen) => kv(w, "listen", listen),
            None => line(w, "# listen = \"0.0.0.0:9100\""),
        }
        line(
            w,
            "# Permit ws:// (no TLS). Only inside an already encrypted network.",
        );
        kv(w, "allow_plaintext", &t.allow_plaintext);
        line(
            w,
            "# Seconds between heartbeats (they keep a peer seen; they never earn it trust).",
        );
        kv(w, "heartbeat_secs", &t.heartbeat_secs);
        line(
            w,
            "# Close a session on which nothing arrived for this long.",
        );
        kv(w, "idle_timeout_secs", &t.idle_timeout_secs);
        line(
            w,
            "# Drop connections that have not finished TLS + upgrade + handshake within this long.",
        );
        kv(w, "handshake_timeout_secs", &t.handshake_timeout_secs);
        line(
            w,
            "# How long a delivery or query waits for the acknowledgement, ms (+1 s per MiB past the first for a bulk delivery).",
        );
        kv(w, "request_timeout_ms", &t.request_timeout_ms);
        line(
            w,
            "# Admit unknown peers that complete the handshake (as VERIFIED); off = only via `join`.",
        );
        kv(w, "accept_new_peers", &t.accept_new_peers);
        line(
            w,
            "# At most this many peers admitted that way are known at once (PEER_LIMIT beyond);",
        );
        line(
            w,
            "# they are never redialed, and a peer an operator removed stays refused (PEER_REMOVED).",
        );
        kv(w, "max_accepted_peers", &t.max_accepted_peers);
        line(
            w,
            "# Per peer: inbound envelopes and bytes a second (sustained; RATE_LIMITED beyond),",
        );
        line(
            w,
            "# and messages and bytes waiting in this node's inbox (INBOX_FULL beyond).",
        );
        kv(w, "peer_envelopes_per_sec", &t.peer_envelopes_per_sec);
        kv(w, "peer_bytes_per_sec", &t.peer_bytes_per_sec);
        kv(w, "peer_inbox_messages", &t.peer_inbox_messages);
        kv(w, "peer_inbox_bytes", &t.peer_inbox_bytes);
        line(
            w,
            "# Retry delays (reconnects, redeliveries): first delay and cap, ms; doubles per failure.",
        );
        kv(w, "retry_base_ms", &t.retry_base_ms);
        kv(w, "retry_max_ms", &t.retry_max_ms);
        line(
            w,
            "# Longest delay between redials of an unreachable peer, ms (audited once per outage).",
        );
        kv(w, "redial_max_ms", &t.redial_max_ms);
        line(
            w,
            "# Message types that also need consensus (collaborative-task: TRUSTED and above),",
        );
        line(
            w,
            "# sent or received: any of \"agent-handoff\", \"claim-event\". Default none.",
        );
        kv(w, "consensus_for", &t.consensus_for);
        line(
            w,
            "# How far an inbound envelope's timestamp may be from this clock, seconds (1-86400).",
        );
        kv(w, "max_clock_skew_secs", &t.max_clock_skew_secs);
        mesh_section(w, &self.mesh);
        for kind in PluginKind::ALL {
            plugin_section(w, kind, self.plugins.get(kind));
        }
        out
    }
}

/// One policy of a slot's chain, as [`NodeConfig::plugin_chain`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEntry {
    /// The component file, resolved against the home; `None` is the
    /// embedded default policy.
    pub path: Option<PathBuf>,
    /// Its `host.config` values.
    pub config: BTreeMap<String, String>,
}

fn resolve_in(home: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        home.join(path)
    }
}

/// The `[mesh]` section of [`NodeConfig::to_documented_toml`].
fn mesh_section(w: &mut String, m: &MeshSection) {
    line(w, "");
    line(w, "[mesh]");
    line(
        w,
        "# The WireGuard mesh governed by trust (docs/mesh.md): tunnels and a firewall per peer,",
    );
    line(
        w,
        "# reconciled from trust and breaker state. Needs root (or CAP_NET_ADMIN). Subnet and",
    );
    line(
        w,
        "# published endpoint: [node] mesh_subnet, [node] wg_endpoint.",
    );
    kv(w, "enabled", &m.enabled);
    line(w, "# WireGuard interface name.");
    kv(w, "interface", &m.interface);
    line(w, "# UDP port the device listens on.");
    kv(w, "listen_port", &m.listen_port);
    line(
        w,
        "# \"userspace\" (wireguard-go & co. over their UAPI socket) or \"kernel\" (ip + wg).",
    );
    kv(w, "backend", &m.backend);
    line(
        w,
        "# Where userspace implementations open <interface>.sock.",
    );
    kv(w, "uapi_dir", &m.uapi_dir.display().to_string());
    line(
        w,
        "# Started when the socket is missing; the interface name is appended.",
    );
    kv(w, "userspace_command", &m.userspace_command);
    line(
        w,
        "# Seconds between reconciles that repair drift (changes reconcile at once).",
    );
    kv(w, "reconcile_secs", &m.reconcile_secs);
    line(w, "# Persistent keepalive to peers, seconds (0 = off).");
    kv(w, "keepalive_secs", &m.keepalive_secs);
    line(
        w,
        "# Apply the trust-graded firewall (nftables table inet agentfed).",
    );
    kv(w, "firewall", &m.firewall);
    line(
        w,
        "# Seconds a key replaced by `wg rotate` is kept before it is destroyed.",
    );
    kv(w, "rotate_grace_secs", &m.rotate_grace_secs);
}

/// The `[trust]` section of [`NodeConfig::to_documented_toml`].
fn trust_section(w: &mut String, t: &TrustSection) {
    line(w, "");
    line(w, "[trust]");
    line(
        w,
        "# Host rules every trust plugin is held to (docs/operations.md, \"Earned trust\").",
    );
    line(
        w,
        "# Only work this node asked of a peer and the peer fulfilled earns trust (delivered",
    );
    line(
        w,
        "# messages, answered queries, completed work reported with `spend`), at most this",
    );
    line(
        w,
        "# many per clock hour; failures and threats always count in full.",
    );
    kv(w, "counted_per_hour", &t.counted_per_hour);
    line(
        w,
        "# VERIFIED -> ATTESTED also needs this long at VERIFIED and counted interactions",
    );
    line(w, "# on this many distinct UTC days since then.");
    kv(w, "attested_after_hours", &t.attested_after_hours);
    kv(w, "attested_active_days", &t.attested_active_days);
    line(w, "# ATTESTED -> TRUSTED: the same, at ATTESTED.");
    kv(w, "trusted_after_days", &t.trusted_after_days);
    kv(w, "trusted_active_days", &t.trusted_active_days);
    line(
        w,
        "# A peer that earned nothing for this many days loses one earned level (never below",
    );
    line(w, "# VERIFIED or the level an operator set); 0 = never.");
    kv(w, "decay_after_days", &t.decay_after_days);
}

fn is_token(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

/// `key = value`, the value rendered by the TOML serializer (so quoting
/// and escaping are always right).
fn kv<T: Serialize + ?Sized>(out: &mut String, key: &str, value: &T) {
    let value = toml::Value::try_from(value).expect("config values are TOML values");
    let _ = writeln!(out, "{key} = {value}");
}

/// The first key of `config` the default policy of `kind` does not read,
/// if any (`action.<type>` and `action.<type>.<level>` stand for every
/// such key of the PII policy).
pub fn unknown_default_policy_key(
    kind: PluginKind,
    config: &BTreeMap<String, String>,
) -> Option<String> {
    let known = policy_keys(kind);
    config
        .keys()
        .find(|key| {
            !known.iter().any(|(pattern, _)| {
                if pattern.contains('<') {
                    // `action.<type>` / `action.<type>.<level>`: a prefix rule.
                    let prefix = &pattern[..pattern.find('<').unwrap_or(0)];
                    key.starts_with(prefix) && key.len() > prefix.len()
                } else {
                    *pattern == key.as_str()
                }
            })
        })
        .cloned()
}

/// The keys the default policy of `kind` reads, for messages.
pub fn default_policy_key_names(kind: PluginKind) -> String {
    let names: Vec<&str> = policy_keys(kind).iter().map(|(k, _)| *k).collect();
    if names.is_empty() {
        "no keys".into()
    } else {
        names.join(", ")
    }
}

/// What a plugin kind's default policy reads from `[plugins.<kind>.config]`.
fn policy_keys(kind: PluginKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        PluginKind::Trust => &[
            ("promote.attested.score", "0.70"),
            ("promote.attested.interactions", "50"),
            ("demote.attested.below", "0.50"),
            ("promote.trusted.score", "0.85"),
            ("promote.trusted.interactions", "500"),
            ("demote.trusted.below", "0.65"),
            ("promote.privileged.score", "0.95"),
            ("promote.privileged.interactions", "5000"),
            ("demote.privileged.below", "0.80"),
            ("threats.per-hour", "2"),
        ],
        PluginKind::Spend => &[
            ("max-usd-per-day", "5.0"),
            ("max-failure-ratio", "0.5"),
            ("min-samples", "50"),
            ("evict-after-failures", "10"),
            ("evict-after-secs", "86400"),
            ("cooldown-secs", "1800"),
        ],
        PluginKind::Pii => &[
            ("min_confidence", "<number 0-1; policy default>"),
            ("action.<type>", "<pass|redact|hash|block, every level>"),
            ("action.<type>.<level>", "<pass|redact|hash|block>"),
        ],
        PluginKind::Handler => &[],
    }
}

fn limit_comment(key: &str) -> &'static str {
    match key {
        "deadline_ms" => "wall-clock budget of one call, ms",
        "memory_mib" => "linear memory cap per instance, MiB",
        "max_instances" => "core instances a component may create",
        "max_tables" => "tables per instance",
        "max_table_elements" => "elements per table",
        "output_bytes" => "guest stdout/stderr bytes kept per call",
        "log_lines" => "host.log lines accepted per call",
        _ => "",
    }
}

fn plugin_section(out: &mut String, kind: PluginKind, section: &PluginConfig) {
    line(out, "");
    let _ = writeln!(out, "[plugins.{kind}]");
    match &section.path {
        Some(path) => {
            kv(out, "path", path);
            if section.replace_default {
                kv(out, "replace_default", &true);
            }
        }
        None if kind == PluginKind::Pii => {
            line(
                out,
                "# The embedded default policy (fourteen categories) runs first. Add your own",
            );
            line(
                out,
                "# policies after it with [[plugins.pii.add]] sections (path, [plugins.pii.add.config]);",
            );
            line(
                out,
                "# the strictest action per span wins. To replace the default instead, set both:",
            );
            let _ = writeln!(out, "# path = \"plugins/my_pii.wasm\"");
            let _ = writeln!(out, "# replace_default = true");
        }
        None => {
            line(
                out,
                "# Path of a .wasm component (relative to the node home); unset = embedded default.",
            );
            let _ = writeln!(out, "# path = \"plugins/my_{kind}.wasm\"");
        }
    }
    line(out, "");
    let _ = writeln!(out, "[plugins.{kind}.limits]");
    let limits = toml::Table::try_from(section.limits).expect("limits are a TOML table");
    for (key, value) in &limits {
        let comment = limit_comment(key);
        if comment.is_empty() {
            let _ = writeln!(out, "{key} = {value}");
        } else {
            let _ = writeln!(out, "{key} = {value}  # {comment}");
        }
    }
    line(out, "");
    let _ = writeln!(out, "[plugins.{kind}.config]");
    let keys = policy_keys(kind);
    if !keys.is_empty() {
        line(
            out,
            "# Keys the default policy reads (values are strings), shown with their defaults:",
        );
        for (key, default) in keys {
            if !section.config.contains_key(*key) {
                let _ = writeln!(out, "# \"{key}\" = \"{default}\"");
            }
        }
    }
    for (key, value) in &section.config {
        let key = toml::Value::String(key.clone());
        kv(out, &key.to_string(), value);
    }
    for link in &section.add {
        line(out, "");
        let _ = writeln!(out, "[[plugins.{kind}.add]]");
        kv(out, "path", &link.path);
        if !link.config.is_empty() {
            let _ = writeln!(out, "[plugins.{kind}.add.config]");
            for (key, value) in &link.config {
                let key = toml::Value::String(key.clone());
                kv(out, &key.to_string(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let config = NodeConfig::parse(Path::new("x"), "").unwrap();
        assert_eq!(config, NodeConfig::default());
        assert_eq!(config.plugins.pii.limits.deadline_ms, 50);
        assert_eq!(config.plugins.pii.limits.memory_mib, 64);
        assert_eq!(config.node.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(config.node.mesh_subnet, "10.50.0.0/16");
        assert_eq!(config.node.capabilities.len(), Capability::ALL.len());
        assert_eq!(config.audit.compliance, Compliance::Standard);
        assert_eq!(config.timers.trust_eval_secs, 60);
        assert_eq!(config.timers.breaker_eval_secs, 30);
        assert_eq!(config.timers.tick_period().as_secs(), 30);
    }

    #[test]
    fn plugin_sections_parse() {
        let text = r#"
            [plugins.trust]
            path = "plugins/allowlist_trust.wasm"
            [plugins.trust.limits]
            deadline_ms = 20
            [plugins.trust.config]
            allow = "lab-*,alice"
        "#;
        let config = NodeConfig::parse(Path::new("x"), text).unwrap();
        assert_eq!(config.plugins.trust.limits.deadline_ms, 20);
        assert_eq!(config.plugins.trust.limits.memory_mib, 64);
        assert_eq!(config.plugins.trust.config["allow"], "lab-*,alice");
        assert_eq!(
            config.plugin_path(Path::new("/home/n"), PluginKind::Trust),
            Some(PathBuf::from("/home/n/plugins/allowlist_trust.wasm"))
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = NodeConfig::parse(Path::new("cfg.toml"), "[plugins.trust]\npth = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg.toml"), "{err}");
        assert!(err.contains("pth"), "{err}");
        let err = NodeConfig::parse(Path::new("cfg.toml"), "[timers]\ntrust_secs = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust_secs"), "{err}");
    }

    #[test]
    fn documented_defaults_parse_back_to_defaults() {
        let text = NodeConfig::default().to_documented_toml();
        let parsed = NodeConfig::parse(Path::new("x"), &text).unwrap();
        assert_eq!(parsed, NodeConfig::default(), "{text}");
        // Every default is written out, not left implicit.
        for key in [
            "endpoint = \"wss://127.0.0.1:9100\"",
            "mesh_subnet = \"10.50.0.0/16\"",
            "compliance = \"standard\"",
            "trust_eval_secs = 60",
            "breaker_eval_secs = 30",
            "deadline_ms = 50",
            "memory_mib = 64",
            "\"remote-spawn\"",
            "[plugins.handler.limits]",
        ] {
            assert!(text.contains(key), "missing {key} in:\n{text}");
        }
    }

    #[test]
    fn documented_custom_config_round_trips() {
        let mut config = NodeConfig::default();
        config.node.node_id = "lab-1".into();
        config.node.endpoint = "ws://192.0.2.7:9100/fed".into();
        config.node.agent_types = vec!["coder".into(), "tester".into()];
        config.node.mesh_subnet = "198.18.0.0/15".into();
        config.node.wg_endpoint = Some("192.0.2.7:51820".into());
        config.audit.compliance = Compliance::Hipaa;
        config.timers.trust_eval_secs = 5;
        config.transport.consensus_for = vec!["claim-event".into(), "agent-handoff".into()];
        config.plugins.spend.path = Some(PathBuf::from("plugins/my \"spend\".wasm"));
        config
            .plugins
            .spend
            .config
            .insert("max-usd-per-day".into(), "2.5".into());
        config
            .plugins
            .trust
            .config
            .insert("weird key = \"x\"".into(), "line\nbreak".into());
        config.plugins.pii.add = vec![
            ChainLink {
                path: PathBuf::from("plugins/hipaa_pii.wasm"),
                config: BTreeMap::from([("action.npi".into(), "redact".into())]),
            },
            ChainLink {
                path: PathBuf::from("/opt/pii/codenames.wasm"),
                config: BTreeMap::new(),
            },
        ];
        let text = config.to_documented_toml();
        assert_eq!(NodeConfig::parse(Path::new("x"), &text).unwrap(), config);
        let chain = config.plugin_chain(Path::new("/home/n"), PluginKind::Pii);
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0].path, None);
        assert_eq!(
            chain[1].path,
            Some(PathBuf::from("/home/n/plugins/hipaa_pii.wasm"))
        );
        assert_eq!(chain[1].config["action.npi"], "redact");
        assert_eq!(
            chain[2].path,
            Some(PathBuf::from("/opt/pii/codenames.wasm"))
        );
    }

    #[test]
    fn replacing_the_default_pii_policy_is_explicit() {
        let parse = |text: &str| NodeConfig::parse(Path::new("cfg.toml"), text);
        let err = parse("[plugins.pii]\npath = \"p.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replace_default = true") && err.contains("[[plugins.pii.add]]"),
            "{err}"
        );
        let config = parse("[plugins.pii]\npath = \"p.wasm\"\nreplace_default = true\n").unwrap();
        assert!(config.plugins.pii.replace_default);
        let text = config.to_documented_toml();
        assert!(text.contains("replace_default = true"), "{text}");
        assert_eq!(parse(&text).unwrap(), config);
        let err = parse("[plugins.pii]\nreplace_default = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("set path"), "{err}");
        let err = parse("[[plugins.spend.add]]\npath = \"s.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only for [plugins.pii]"), "{err}");
        let err = parse("[[plugins.pii.add]]\npath = \"a.wasm\"\npth = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pth"), "{err}");
        let many = "[[plugins.pii.add]]\npath = \"a.wasm\"\n".repeat(MAX_PII_ADDITIONS + 1);
        let err = parse(&many).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }

    #[test]
    fn values_are_validated_without_echo() {
        for (text, key) in [
            ("[node]\nnode_id = \"Bad Id\"", "node.node_id"),
            ("[node]\nendpoint = \"http://x:1\"", "node.endpoint"),
            ("[node]\nagent_types = [\"OK\"]", "node.agent_types[0]"),
            ("[node]\ncapabilities = [\"root\"]", "node.capabilities[0]"),
            (
                "[node]\nagent_types = [\"coder\", \"tester\", \"coder\"]",
                "node.agent_types[2]: listed twice",
            ),
            (
                "[node]\ncapabilities = [\"ping\", \"ping\"]",
                "node.capabilities[1]: listed twice",
            ),
            ("[node]\nmesh_subnet = \"10.0.0.0/31\"", "node.mesh_subnet"),
            ("[node]\nwg_endpoint = \"x y\"", "node.wg_endpoint"),
            ("[timers]\ntrust_eval_secs = 0", "timers.trust_eval_secs"),
            ("[audit]\ncompliance = \"sox\"", "compliance"),
            (
                "[transport]\nmax_clock_skew_secs = 0",
                "transport.max_clock_skew_secs",
            ),
            (
                "[transport]\nmax_clock_skew_secs = 86401",
                "transport.max_clock_skew_secs",
            ),
            (
                "[transport]\nconsensus_for = [\"trust-change\"]",
                "transport.consensus_for",
            ),
            (
                "[transport]\nconsensus_for = [\"claim-event\", \"claim-event\"]",
                "transport.consensus_for",
            ),
            (
                "[plugins.pii.limits]\ndeadline_ms = 0",
                "plugins.pii.limits.deadline_ms",
            ),
            (
                "[plugins.trust.limits]\nmemory_mib = 0",
                "plugins.trust.limits.memory_mib",
            ),
            ("[trust]\ncounted_per_hour = 0", "trust.counted_per_hour"),
            (
                "[trust]\ntrusted_active_days = 400",
                "trust.trusted_active_days",
            ),
            (
                "[transport]\nmax_accepted_peers = 0",
                "transport.max_accepted_peers",
            ),
            (
                "[transport]\npeer_inbox_bytes = 10",
                "transport.peer_inbox_bytes",
            ),
        ] {
            let err = NodeConfig::parse(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
