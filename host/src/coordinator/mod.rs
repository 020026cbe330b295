//! The coordinator: one node's business logic, over its store, audit log
//! and plugins. The daemon, the CLI and (later) the wire and MCP call it;
//! it owns no sockets.
//!
//! Rules it enforces itself, whatever a plugin says:
//! * trust: a plugin may promote one level (never from UNTRUSTED, never to
//!   PRIVILEGED), demote to any lower level, or recommend PRIVILEGED for an
//!   operator to confirm; two threats within an hour or any signature
//!   failure drop a peer to UNTRUSTED at once;
//! * breaker: only legal edges ([`crate::breaker::transition`]); no
//!   automatic reactivation; EVICTED is only left by an operator;
//! * sends: breaker gate first, then capability gate, budget, PII;
//! * every state change commits with its audit records (one job of the
//!   store's journal) before the call returns; a plugin failure changes
//!   nothing, is audited, and fails closed.
//!
//! # Layout
//!
//! One [`Coordinator`] owns the state; each concern is a module of its own
//! `impl Coordinator` block:
//! * `outbound`: the send pipeline, gates → budget → PII → sign → log,
//!   and the delivery outcomes reported back;
//! * `inbound`: the receive pipeline, verify → dedupe → gates → PII →
//!   handler → log → ack, and the inbox;
//! * `gates`: the breaker and capability gates both directions share;
//! * `pii`: the PII plugin's scans;
//! * `trust_levels`: trust evaluation, threats, operator changes;
//! * `spend_breaker`: spend reports and the circuit breaker;
//! * `peers`: adding and removing peers;
//! * `sessions`: admission of handshake partners and manifest updates.
//!
//! `types` holds what callers send and get back, `error` the failures;
//! this file holds construction, status, plugins and the periodic tick.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{
    AuditConfig, AuditError, AuditEvent, AuditLog, EventType, PiiOutcome, Severity,
};
use crate::breaker::{self, Actor, GateError};
use crate::budget::{Budget, BudgetError};
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, NodeConfig};
use crate::envelope::{self, Envelope};
use crate::identity::{
    Identity, IdentityError, Manifest, ManifestError, ManifestParams, MeshSubnet, SignedManifest,
};
use crate::journal::Persist;
use crate::model::{
    BreakerInfo, BreakerState, DAY_MS, HOUR_MS, InteractionMetrics, PeerOrigin, PeerRecord,
    ScoreComponents, SpendSample, TrustLevel,
};
use crate::plugin::{
    self, HostContext, Limits, LoadedPlugin, NodeStatus, NodeStatusSource, PluginError, PluginKind,
    PluginRuntime, PluginSet, PluginSlot, PluginSource, RuntimeOptions,
};
use crate::store::{
    InboundCommit, InboundRecord, OutboxEntry, Store, StoreError, commit_inbound_in, outbox_put_in,
    outbox_remove_in,
};
use crate::trust::{self, Capability};
use crate::trust_ledger::{self, EarningRules, OperatorLevel};

mod error;
mod gates;
mod inbound;
mod outbound;
mod peers;
mod pii;
mod sessions;
mod spend_breaker;
mod trust_levels;
mod types;

// The stages' own items, for each other and for the crate's callers.
pub use self::error::*;
pub use self::inbound::*;
pub use self::outbound::*;
pub use self::sessions::*;
pub use self::types::*;
#[allow(unused_imports)]
use self::{gates::*, peers::*, pii::*, spend_breaker::*, trust_levels::*};

/// Longest operator reason kept.
pub const MAX_REASON_BYTES: usize = 512;
/// Largest tokens in one spend report.
pub const MAX_REPORT_TOKENS: f64 = 1e9;
/// Largest USD in one spend report.
pub const MAX_REPORT_USD: f64 = 1e6;

/// Peer counts shared with the handler plugins' `node.status` import.
struct LiveStatus {
    node_id: String,
    started: Instant,
    known_peers: AtomicU32,
    active_peers: AtomicU32,
}

impl NodeStatusSource for LiveStatus {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            active_peers: self.active_peers.load(Ordering::Relaxed),
            known_peers: self.known_peers.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

/// One node's business logic. `Send + Sync`: share it in an `Arc`.
pub struct Coordinator {
    home: PathBuf,
    identity: Identity,
    config: NodeConfig,
    store: Store,
    audit: AuditLog,
    runtime: PluginRuntime,
    plugins: PluginSet,
    clock: Arc<dyn Clock>,
    live: Arc<LiveStatus>,
    /// Serialises read-modify-write sequences on one node's state (trust
    /// and breaker evaluation read, ask a plugin, then write).
    decisions: std::sync::Mutex<()>,
    /// Evidence noted per peer and not yet applied
    /// ([`Coordinator::note_fulfilled`] and its siblings).
    pending_evidence: std::sync::Mutex<HashMap<String, PendingEvidence>>,
    /// The host's earning rules (`[trust]`).
    earning: EarningRules,
    /// Decompressed peer keys by their manifest encoding: decompressing an
    /// Ed25519 key costs about as much as a third of a verification, and
    /// every inbound envelope needs its sender's.
    peer_keys: std::sync::Mutex<HashMap<String, ed25519_dalek::VerifyingKey>>,
    /// `(sender, envelope id)` of inbound envelopes past their checks and
    /// not yet committed: a copy arriving meanwhile waits for their ack.
    inbound_pending: PendingSet,
    /// Per sender, how many duplicates were audited in the current window
    /// ([`Coordinator::audit_duplicate`]).
    audit_throttle: AuditThrottle,
    /// Per-peer inbound envelope and byte rates ([`RateLimiter`]).
    inbound_rates: RateLimiter,
    /// The last delivery error of each queued envelope since the daemon
    /// started (`outbox` shows it); forgotten when the entry leaves.
    delivery_errors: std::sync::Mutex<HashMap<String, String>>,
    /// Outbox messages refused for good (or dropped) since the daemon
    /// started (`status`).
    refused_for_good: AtomicU64,
    /// What an inbound refusal's audit record should say beyond its code
    /// (the message type, the missing capability, a plugin's error), per
    /// sender and code, in the order the refusals were made; taken by
    /// [`Coordinator::audit_refusal`].
    refusal_context:
        std::sync::Mutex<HashMap<(String, &'static str), std::collections::VecDeque<Value>>>,
    /// Inbound signatures verified in batches and alone ([`SignatureStats`]).
    verified_batched: AtomicU64,
    verified_alone: AtomicU64,
    /// The mesh's witness chain file, opened on first use: the mesh
    /// appends to it and peers at TRUSTED may read it (`witness-request`).
    witness: Arc<crate::mesh::witness::WitnessFile>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("node_id", &self.identity.node_id().to_string())
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens a node home: config, identity (refusing loose key
    /// permissions), store, audit log and plugins. The caller takes the
    /// home lock first (the daemon does).
    pub fn open(home: &Path, options: CoordinatorOptions) -> Result<Coordinator> {
        let config = NodeConfig::load(home)?;
        let identity = Identity::load(home)?;
        let store = Store::open_in_home(home)?;
        let audit = AuditLog::open(
            &store,
            AuditConfig {
                compliance: config.audit.compliance.into(),
                clock: Some(options.clock.clone()),
            },
        )?;
        let cache_dir = options
            .plugin_cache_dir
            .clone()
            .unwrap_or_else(|| crate::home::plugin_cache_dir(home));
        let runtime = PluginRuntime::new(RuntimeOptions {
            cache_dir: Some(cache_dir),
        })?;
        let live = Arc::new(LiveStatus {
            node_id: identity.node_id().to_string(),
            started: Instant::now(),
            known_peers: AtomicU32::new(0),
            active_peers: AtomicU32::new(0),
        });
        let load = |kind| {
            load_plugin(
                &runtime,
                home,
                &config,
                &identity,
                &options.clock,
                &live,
                kind,
            )
        };
        let plugins = PluginSet {
            trust: PluginSlot::with_chain(PluginKind::Trust, load(PluginKind::Trust)?)?,
            pii: PluginSlot::with_chain(PluginKind::Pii, load(PluginKind::Pii)?)?,
            spend: PluginSlot::with_chain(PluginKind::Spend, load(PluginKind::Spend)?)?,
            handler: PluginSlot::with_chain(PluginKind::Handler, load(PluginKind::Handler)?)?,
        };
        let earning = config.trust.rules();
        let coordinator = Coordinator {
            home: home.to_path_buf(),
            identity,
            config,
            store,
            audit,
            runtime,
            plugins,
            clock: options.clock,
            live,
            decisions: std::sync::Mutex::new(()),
            pending_evidence: std::sync::Mutex::new(HashMap::new()),
            earning,
            peer_keys: std::sync::Mutex::new(HashMap::new()),
            inbound_pending: Arc::default(),
            audit_throttle: AuditThrottle::default(),
            inbound_rates: RateLimiter::default(),
            delivery_errors: std::sync::Mutex::new(HashMap::new()),
            refused_for_good: AtomicU64::new(0),
            refusal_context: std::sync::Mutex::default(),
            verified_batched: AtomicU64::new(0),
            verified_alone: AtomicU64::new(0),
            witness: Arc::new(crate::mesh::witness::WitnessFile::new(
                home.join(crate::mesh::witness::WITNESS_FILE),
            )),
        };
        for info in coordinator.plugins() {
            coordinator.record(
                AuditEvent::new(
                    EventType::PluginLoaded,
                    format!("{} plugin {} {} loaded", info.kind, info.name, info.version),
                )
                .with_details(json!({"kind": info.kind, "name": info.name, "version": info.version, "sha256": info.sha256, "position": info.position})),
            )?;
        }
        coordinator.refresh_live_counts()?;
        Ok(coordinator)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.identity.node_id().as_str()
    }

    /// The time source.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Appends to the audit log, waiting until the record is durable.
    fn record(&self, event: AuditEvent) -> Result<()> {
        self.audit.append(event)?;
        Ok(())
    }
}

/// Loads the configured plugin chain of `kind` (the embedded default or
/// `path`, then any `[[plugins.pii.add]]` policies) with the node's hash
/// key, clock and live status. Every policy is probed with its own
/// configuration; the first that fails refuses the whole chain.
fn load_plugin(
    runtime: &PluginRuntime,
    home: &Path,
    config: &NodeConfig,
    identity: &Identity,
    clock: &Arc<dyn Clock>,
    live: &Arc<LiveStatus>,
    kind: PluginKind,
) -> Result<Vec<Arc<LoadedPlugin>>, PluginError> {
    let section = config.plugins.get(kind);
    let hash_key = HostContext::share_hash_key(identity.hash_secret());
    let mut chain = Vec::new();
    for (position, entry) in config.plugin_chain(home, kind).into_iter().enumerate() {
        let source = match entry.path {
            Some(path) => PluginSource::File(path),
            None => PluginSource::Embedded(crate::embedded::default_name(kind)),
        };
        let table = if position == 0 {
            format!("[plugins.{kind}.config]")
        } else {
            format!("the config of [[plugins.{kind}.add]] number {position}")
        };
        check_default_keys(kind, &source, &entry.config, &table)?;
        let host = HostContext {
            plugin_label: Arc::from(source.to_string().as_str()),
            config: Arc::new(entry.config),
            hash_key: hash_key.clone(),
            clock: clock.clone(),
            node_status: live.clone(),
        };
        let plugin = runtime.load(kind, source, host, section.limits)?;
        probe_configuration(&plugin, kind, clock.now_ms())?;
        chain.push(plugin);
    }
    Ok(chain)
}

/// The dotted keys under `prefix` where `a` and `b` differ.
fn diff_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff_keys(
                    &path,
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// `err` with any payload text its plugin-written parts quote removed
/// ([`crate::pii::scrub_error_text`]), for the log and the audit trail.
fn scrub_plugin_error(err: &PluginError, values: &[plugin::StringValue]) -> PluginError {
    let scrub = |text: &str| crate::pii::scrub_error_text(text, values);
    match err {
        PluginError::Panic { plugin, message } => PluginError::Panic {
            plugin: plugin.clone(),
            message: message.as_deref().map(scrub),
        },
        PluginError::Refused { plugin, reason } => PluginError::Refused {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        PluginError::Trap { plugin, reason } => PluginError::Trap {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        PluginError::Timeout {
            plugin,
            deadline_ms,
        } => PluginError::Timeout {
            plugin: plugin.clone(),
            deadline_ms: *deadline_ms,
        },
        PluginError::OutOfMemory { plugin, limit_mib } => PluginError::OutOfMemory {
            plugin: plugin.clone(),
            limit_mib: *limit_mib,
        },
        PluginError::Instantiate { plugin, reason } => PluginError::Instantiate {
            plugin: plugin.clone(),
            reason: scrub(reason),
        },
        // Load-time errors (no call, no payload): their text as it is.
        other => PluginError::Refused {
            plugin: "pii policy".into(),
            reason: other.to_string(),
        },
    }
}

/// Refuses a key the embedded default policy of `kind` does not read (a
/// misspelling), naming the keys it reads; `table` names where the key was.
pub(crate) fn check_default_keys(
    kind: PluginKind,
    source: &PluginSource,
    config: &BTreeMap<String, String>,
    table: &str,
) -> Result<(), PluginError> {
    if let PluginSource::Embedded(name) = source
        && let Some(unknown) = crate::config::unknown_default_policy_key(kind, config)
    {
        return Err(PluginError::Refused {
            plugin: name.to_string(),
            reason: format!(
                "unknown configuration key `{}` in {table} (the default {kind} policy reads: {})",
                clip(&unknown),
                crate::config::default_policy_key_names(kind)
            ),
        });
    }
    Ok(())
}

/// Calls a freshly loaded plugin once with a harmless request, so a
/// configuration it cannot use (a bad value: policies read and check
/// their configuration on a call) is refused at load time, with the
/// plugin's own message, instead of failing every later call. The WIT
/// contract has no `validate-config` export yet (`wit/PENDING_CHANGES.md`).
pub(crate) fn probe_configuration(
    plugin: &LoadedPlugin,
    kind: PluginKind,
    now_ms: u64,
) -> Result<(), PluginError> {
    match kind {
        PluginKind::Trust => plugin
            .evaluate_trust(&plugin::PeerSnapshot {
                node_id: "config-probe".into(),
                level: plugin::TrustLevel::Verified,
                level_since_ms: now_ms,
                metrics: plugin::InteractionMetrics {
                    interactions: 0,
                    successes: 0,
                    failures: 0,
                    threats: 0,
                    signature_failures: 0,
                    uptime: 1.0,
                    integrity: 1.0,
                    threats_last_hour: 0,
                    first_seen_ms: now_ms,
                    last_seen_ms: now_ms,
                },
                now_ms,
            })
            .map(drop),
        PluginKind::Spend => {
            let window = |window_ms| plugin::SpendWindow {
                window_ms,
                samples: 0,
                failures: 0,
                tokens: 0,
                usd: 0.0,
            };
            plugin
                .evaluate_spend(&plugin::SpendRequest {
                    node_id: "config-probe".into(),
                    breaker: plugin::BreakerView {
                        state: plugin::BreakerState::Active,
                        since_ms: now_ms,
                        reason: None,
                        failures_since_suspend: 0,
                    },
                    last_hour: window(HOUR_MS),
                    last_day: window(DAY_MS),
                    now_ms,
                })
                .map(drop)
        }
        PluginKind::Pii => plugin
            .scan_pii(&plugin::ScanRequest {
                direction: Direction::Outbound,
                peer_level: plugin::TrustLevel::Attested,
                message_type: "task-assignment".into(),
                values: vec![plugin::StringValue {
                    path: "/probe".into(),
                    value: "configuration probe".into(),
                }],
            })
            .map(drop),
        // The handler world reads no configuration of its own.
        PluginKind::Handler => Ok(()),
    }
}

// ---- conversions between the store's model and the plugin contract ----

fn to_wit_level(level: TrustLevel) -> plugin::TrustLevel {
    match level {
        TrustLevel::Untrusted => plugin::TrustLevel::Untrusted,
        TrustLevel::Verified => plugin::TrustLevel::Verified,
        TrustLevel::Attested => plugin::TrustLevel::Attested,
        TrustLevel::Trusted => plugin::TrustLevel::Trusted,
        TrustLevel::Privileged => plugin::TrustLevel::Privileged,
    }
}

fn from_wit_level(level: plugin::TrustLevel) -> TrustLevel {
    match level {
        plugin::TrustLevel::Untrusted => TrustLevel::Untrusted,
        plugin::TrustLevel::Verified => TrustLevel::Verified,
        plugin::TrustLevel::Attested => TrustLevel::Attested,
        plugin::TrustLevel::Trusted => TrustLevel::Trusted,
        plugin::TrustLevel::Privileged => TrustLevel::Privileged,
    }
}

fn to_wit_breaker(state: BreakerState) -> plugin::BreakerState {
    match state {
        BreakerState::Active => plugin::BreakerState::Active,
        BreakerState::Suspended => plugin::BreakerState::Suspended,
        BreakerState::Evicted => plugin::BreakerState::Evicted,
    }
}

fn snapshot(record: &PeerRecord, now_ms: u64) -> plugin::PeerSnapshot {
    let m = &record.metrics;
    let recent = m
        .recent_threats_ms
        .iter()
        .filter(|&&t| t + HOUR_MS >= now_ms)
        .count();
    plugin::PeerSnapshot {
        node_id: record.node_id().to_string(),
        level: to_wit_level(record.trust_level),
        level_since_ms: record.level_since_ms,
        metrics: plugin::InteractionMetrics {
            interactions: m.interactions,
            successes: m.successes,
            failures: m.failures,
            threats: m.threats,
            signature_failures: m.signature_failures_since_level,
            uptime: m.uptime,
            integrity: m.integrity,
            threats_last_hour: recent as u32,
            first_seen_ms: record.added_ms,
            last_seen_ms: record.last_seen_ms,
        },
        now_ms,
    }
}

fn plugin_actor(plugin: &LoadedPlugin) -> String {
    crate::audit::plugin_actor(&plugin.metadata().name)
}

fn validate_reason(reason: &str) -> Result<String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(CoordError::InvalidInput(
            "a reason is required (it is written to the audit log)".into(),
        ));
    }
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(CoordError::InvalidInput(format!(
            "the reason must be one line of at most {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(reason.to_string())
}

fn validate_task_id(task_id: &str) -> Result<()> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CoordError::InvalidInput(
            "task id must be 1-128 characters of letters, digits and . _ : - /".into(),
        ))
    }
}

fn correlation_id() -> String {
    envelope::random_id()[..16].to_string()
}

fn peer_view(record: &PeerRecord, now_ms: u64) -> PeerView {
    PeerView {
        node_id: record.node_id().to_string(),
        endpoint: record.manifest.manifest.endpoint.clone(),
        trust_level: record.trust_level,
        level_since_ms: record.level_since_ms,
        score: record.score,
        score_components: record.score_components,
        metrics: record.metrics.clone(),
        breaker: record.breaker.clone(),
        capabilities: trust::capabilities(record.trust_level),
        reactivate_eligible: breaker::reactivate_eligible(&record.breaker, now_ms),
        privileged_recommended: record.privileged_recommended,
        operator: record.operator,
        last_seen_ms: record.last_seen_ms,
        added_ms: record.added_ms,
    }
}

impl Coordinator {
    // ---- identity and status ----

    /// Appends an audit record on behalf of the federation layer, waiting
    /// until it is durable.
    pub fn audit_event(&self, event: AuditEvent) -> Result<()> {
        self.record(event)
    }

    /// The answer to a `witness-request` (protocol §9.6): a page of this
    /// node's witness chain, or a rejection naming what was wrong with the
    /// request.
    fn answer_witness_request(&self, envelope: &Envelope) -> Ack {
        let rejected = |reason: &str| Ack {
            envelope_id: envelope.id.clone(),
            status: AckStatus::Rejected,
            reply: None,
            reason: Some(reason.to_string()),
        };
        let request = match crate::mesh::fetch::WitnessRequest::parse(&envelope.payload) {
            Ok(request) => request,
            Err(reason) => return rejected(&format!("BAD_WITNESS_REQUEST: {reason}")),
        };
        match self.witness.page(request.after_seq, request.limit) {
            Ok((entries, head_seq)) => Ack {
                envelope_id: envelope.id.clone(),
                status: AckStatus::Replied,
                reply: Some(json!({
                    "type": crate::mesh::fetch::WITNESS_PAGE,
                    "node": self.node_id(),
                    "head_seq": head_seq,
                    "entries": entries,
                })),
                reason: None,
            },
            Err(e) => {
                tracing::warn!("cannot answer a witness request: {e}");
                rejected("WITNESS_UNAVAILABLE: this node cannot read its witness chain now")
            }
        }
    }

    /// The node home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The node's witness chain file (docs/mesh.md, "Witness chain").
    pub fn witness_file(&self) -> &Arc<crate::mesh::witness::WitnessFile> {
        &self.witness
    }

    /// This node's manifest, signed now.
    pub fn manifest(&self) -> Result<SignedManifest> {
        let subnet: MeshSubnet = self
            .config
            .node
            .mesh_subnet
            .parse()
            .map_err(|e| CoordError::InvalidInput(format!("[node] mesh_subnet: {e}")))?;
        let mesh_ip = self
            .identity
            .mesh_ip(&subnet, &|_| false)
            .map_err(|e| CoordError::InvalidInput(e.to_string()))?;
        let params = ManifestParams {
            agent_types: self.config.node.agent_types.clone(),
            capabilities: self.config.node.capabilities.clone(),
            mesh_ip,
            wg_endpoint: self.config.node.wg_endpoint.clone(),
            protocol_version: crate::identity::PROTOCOL_VERSION,
        };
        Ok(self.identity.signed_manifest(&params, self.now())?)
    }

    /// The node at a glance.
    pub fn status(&self) -> Result<StatusView> {
        drop(self.lock_decisions());
        let peers = self.store.list_peers()?;
        let mut by_trust_level = BTreeMap::new();
        let mut by_breaker_state = BTreeMap::new();
        for peer in &peers {
            *by_trust_level
                .entry(peer.trust_level.to_string())
                .or_insert(0) += 1;
            *by_breaker_state
                .entry(peer.breaker.state.to_string())
                .or_insert(0) += 1;
        }
        Ok(StatusView {
            node_id: self.node_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            endpoint: self.identity.endpoint().map(str::to_string),
            uptime_secs: self.live.started.elapsed().as_secs(),
            now_ms: self.now(),
            peers: peers.len(),
            by_trust_level,
            by_breaker_state,
            audit_records: self.audit.len()?,
            outbox: self.store.outbox_len()?,
            store_commits: self.store.commit_stats(),
            signatures: SignatureStats {
                batched: self.verified_batched.load(Ordering::Relaxed),
                alone: self.verified_alone.load(Ordering::Relaxed),
            },
            refused_for_good: self.refused_for_good.load(Ordering::Relaxed),
            plugins: self.plugins(),
        })
    }

    fn refresh_live_counts(&self) -> Result<()> {
        let peers = self.store.list_peers()?;
        let active = peers
            .iter()
            .filter(|p| {
                p.breaker.state == BreakerState::Active && p.trust_level >= TrustLevel::Verified
            })
            .count();
        self.live
            .known_peers
            .store(peers.len() as u32, Ordering::Relaxed);
        self.live
            .active_peers
            .store(active as u32, Ordering::Relaxed);
        Ok(())
    }
}

impl Coordinator {
    // ---- plugins ----

    /// The plugins in each slot, a chain's policies in call order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        PluginKind::ALL
            .into_iter()
            .flat_map(|kind| {
                let chain = self.plugins.slot(kind).chain();
                (0..chain.len())
                    .map(|position| {
                        let plugin = &chain[position];
                        let limits: Limits = plugin.limits();
                        PluginInfo {
                            kind,
                            position,
                            name: plugin.metadata().name.clone(),
                            version: plugin.metadata().version.clone(),
                            source: plugin.source().to_string(),
                            embedded: matches!(plugin.source(), PluginSource::Embedded(_)),
                            sha256: plugin.sha256().to_string(),
                            deadline_ms: limits.deadline_ms,
                            memory_mib: limits.memory_mib,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Re-reads the config and reloads one slot or all. A plugin that
    /// fails to load leaves the previous one in place (audited, and the
    /// error is returned). Calls in flight finish on the old plugin.
    pub fn reload_plugins(&self, kind: Option<PluginKind>) -> Result<Vec<PluginInfo>> {
        let config = NodeConfig::load(&self.home)?;
        let kinds: Vec<PluginKind> = kind
            .map(|k| vec![k])
            .unwrap_or_else(|| PluginKind::ALL.to_vec());
        for kind in kinds {
            match load_plugin(
                &self.runtime,
                &self.home,
                &config,
                &self.identity,
                &self.clock,
                &self.live,
                kind,
            ) {
                Ok(chain) => {
                    let label = chain
                        .iter()
                        .map(|p| p.label())
                        .collect::<Vec<_>>()
                        .join(" + ");
                    let sha = chain[0].sha256().to_string();
                    self.plugins.slot(kind).replace_chain(chain)?;
                    self.record(
                        AuditEvent::new(
                            EventType::PluginReloaded,
                            format!("{kind} plugin reloaded: {label}"),
                        )
                        .with_actor(crate::audit::ACTOR_OPERATOR)
                        .with_details(json!({"kind": kind, "plugin": label, "sha256": sha})),
                    )?;
                }
                Err(err) => {
                    self.record(
                        AuditEvent::new(
                            EventType::PluginFailed,
                            format!("{kind} plugin reload failed; keeping the previous one: {err}"),
                        )
                        .with_severity(Severity::Error)
                        .with_details(json!({"kind": kind, "code": err.code()})),
                    )?;
                    return Err(CoordError::ReloadRefused { kind, error: err });
                }
            }
        }
        Ok(self.plugins())
    }

    /// The settings outside `[plugins]` whose value in the config on disk
    /// differs from the one this node runs with, as dotted keys
    /// (`transport.retry_base_ms`, `node.endpoint`, …): a plugin reload
    /// does not apply them, a daemon restart does.
    pub fn unapplied_settings(&self) -> Result<Vec<String>> {
        let on_disk = NodeConfig::load(&self.home)?;
        let strip = |c: &NodeConfig| {
            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
            if let Some(map) = v.as_object_mut() {
                map.remove("plugins");
            }
            v
        };
        let mut keys = Vec::new();
        diff_keys("", &strip(&self.config), &strip(&on_disk), &mut keys);
        Ok(keys)
    }

    // ---- timers ----

    /// Periodic work: trust and breaker evaluation for every peer, and
    /// forgetting envelope ids that left the dedupe window.
    pub fn tick(&self) -> Result<TickReport> {
        let peers = self.store.list_peers()?;
        let mut report = TickReport {
            peers: peers.len(),
            ..TickReport::default()
        };
        for peer in peers {
            let _guard = self.lock_decisions();
            if self.decay_locked(peer.node_id())?.is_some() {
                report.trust_changes += 1;
            }
            if let TrustOutcome::Changed(_) = self.evaluate_trust_locked(peer.node_id())? {
                report.trust_changes += 1;
            }
            if let BreakerOutcome::Changed(_) = self.evaluate_breaker_locked(peer.node_id())? {
                report.breaker_changes += 1;
            }
        }
        report.dedupe_pruned = self.prune_dedupe()?;
        // Keys past their window are forgotten (a batch per tick; a retry
        // after the window is a new send, as documented).
        let cutoff = self.now().saturating_sub(IDEMPOTENCY_WINDOW_MS);
        report.idempotency_pruned = self.store.idempotency_prune_older_than(cutoff, 10_000)?;
        self.flush_audit_summaries()?;
        Ok(report)
    }
}

/// Levenshtein distance of two short strings (node ids are at most 64
/// characters); inputs past 64 characters are not compared.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Echo at most 64 characters of caller input in an error.
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(64).collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn clip_reason(reason: &str) -> String {
    let clean: String = reason.chars().filter(|c| !c.is_control()).collect();
    crate::plugin::truncate(&clean, MAX_REASON_BYTES).to_string()
}
