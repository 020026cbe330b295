//! The mesh inside the daemon: one reconciler that makes the WireGuard
//! device and the firewall match what trust, breaker state and validated
//! manifests call for, the way innernet, Tailscale's wgcfg and netbird do
//! it (desired state, read the actual state, apply the difference).
//!
//! It runs right after any peer change (it watches the store's peer write
//! counter) and every `[mesh] reconcile_secs`. A difference found while
//! the desired state has not changed since the last reconcile was made
//! behind the daemon's back (a hand-made `wg set`, an `nft flush`): it is
//! reverted and recorded as drift.
//!
//! Every mutation is recorded in the witness chain before it is applied
//! (intent first: after a crash between the two, the next reconcile
//! re-derives the same state and the entry stands for what was intended),
//! and in the audit log (`wireguard_mutation`) once applied.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::audit::{AuditEvent, EventType, Severity};
use crate::config::{MeshBackend, NodeConfig};
use crate::coordinator::Coordinator;

use super::desired::{DesiredMesh, LocalNode, desired};
use super::device::{
    DeviceError, InterfaceSpec, KernelDevice, UserspaceDevice, WgDevice, run_with_stdin,
};
use super::diff::{PlannedChange, plan};
use super::render::{NFT_TABLE, nft_ruleset, wg_set_line};
use super::rotation::{self, Rotation};
use super::witness::{WitnessKind, WitnessLog};

/// How often the reconciler looks for peer changes.
const CHANGE_POLL: Duration = Duration::from_millis(200);

/// A failure of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The configuration cannot drive a mesh.
    #[error("mesh configuration: {0}")]
    Config(String),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The state file or audit log failed.
    #[error("mesh state: {0}")]
    State(String),
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Device changes applied, as `kind node_id`.
    pub applied: Vec<String>,
    /// Whether the firewall was (re)applied.
    pub firewall_applied: bool,
    /// Whether the changes repaired drift.
    pub drift: bool,
    /// Peers left out for a bad field.
    pub excluded: usize,
}

/// What was last applied, to tell drift from change.
#[derive(Default)]
struct Applied {
    desired: Option<DesiredMesh>,
    /// The ruleset JSON last applied.
    firewall: Option<String>,
    /// `nft -j list table` right after that apply.
    firewall_listing: Option<String>,
    /// Exclusions already recorded, `(node, field, reason)`.
    excluded: BTreeSet<(String, String, String)>,
}

/// The mesh of one daemon.
pub struct MeshRuntime {
    coordinator: Arc<Coordinator>,
    device: Box<dyn WgDevice>,
    /// The interface, keys zeroed: they are read from the identity at
    /// each use ([`MeshRuntime::spec`]), since `wg rotate` replaces them.
    spec: InterfaceSpec,
    /// This node in the mesh, key zeroed likewise ([`MeshRuntime::local`]).
    local: LocalNode,
    home: PathBuf,
    rotate_grace_secs: u64,
    firewall: bool,
    witness: WitnessLog,
    applied: Mutex<Applied>,
}

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl MeshRuntime {
    /// The mesh `config` describes for the coordinator's node (nothing is
    /// touched until [`MeshRuntime::reconcile`]).
    pub fn new(
        coordinator: Arc<Coordinator>,
        config: &NodeConfig,
    ) -> Result<MeshRuntime, MeshError> {
        let m = &config.mesh;
        let subnet = config
            .mesh_subnet()
            .map_err(|e| MeshError::Config(format!("[node] mesh_subnet: {e}")))?;
        let identity = coordinator.identity();
        let mesh_ip = identity
            .mesh_ip(&subnet, &|_| false)
            .map_err(|e| MeshError::Config(e.to_string()))?;
        let device: Box<dyn WgDevice> = match m.backend {
            MeshBackend::Userspace => Box::new(UserspaceDevice::new(
                &m.uapi_dir,
                &m.interface,
                m.userspace_command.clone(),
            )),
            MeshBackend::Kernel => Box::new(KernelDevice::new(&m.interface)),
        };
        let witness = WitnessLog::new(Arc::clone(&coordinator));
        Ok(MeshRuntime {
            home: coordinator.home().to_path_buf(),
            rotate_grace_secs: m.rotate_grace_secs,
            // The keys are filled in at each use ([`MeshRuntime::spec`]):
            // none is kept here to outlive a rotation.
            spec: InterfaceSpec {
                name: m.interface.clone(),
                private_key: zeroize::Zeroizing::new([0; 32]),
                public_key: [0; 32],
                listen_port: m.listen_port,
                address: mesh_ip,
                prefix: subnet.prefix(),
            },
            local: LocalNode {
                subnet,
                mesh_ip,
                public_key: [0; 32],
                keepalive_secs: m.keepalive_secs,
            },
            firewall: m.firewall,
            device,
            witness,
            coordinator,
            applied: Mutex::new(Applied::default()),
        })
    }

    /// The witness chain of this node.
    pub fn witness(&self) -> &WitnessLog {
        &self.witness
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.spec.name
    }

    /// The interface with the node's WireGuard key as it is now.
    fn spec(&self) -> InterfaceSpec {
        let (private_key, public_key) = self.coordinator.identity().wg_key_bytes();
        InterfaceSpec {
            private_key,
            public_key,
            ..self.spec.clone()
        }
    }

    /// This node in the mesh, with its WireGuard key as it is now.
    fn local(&self) -> LocalNode {
        LocalNode {
            public_key: self.coordinator.identity().wg_key_bytes().1,
            ..self.local.clone()
        }
    }

    /// The desired mesh now.
    pub fn desired(&self) -> Result<DesiredMesh, MeshError> {
        let peers = self
            .coordinator
            .store()
            .list_peers()
            .map_err(|e| MeshError::State(e.to_string()))?;
        Ok(desired(&self.local(), &peers, &resolve))
    }

    /// `wg rotate`: replaces the node's WireGuard key
    /// ([`super::rotation::rotate`]) and puts it on the device at once.
    /// The caller presents the re-signed manifest to the peers.
    pub fn rotate(&self) -> Result<Rotation, MeshError> {
        let now = self.coordinator.clock().now_ms();
        let rotation = {
            // No reconcile runs between the key change and its apply.
            let _applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            rotation::rotate(
                &self.home,
                self.coordinator.identity(),
                &self.witness,
                now,
                self.rotate_grace_secs,
            )
            .map_err(|e| MeshError::State(e.to_string()))?
        };
        self.audit(
            AuditEvent::new(
                EventType::WireguardMutation,
                format!(
                    "WireGuard key rotated (witness entry {}); the old key is destroyed in {} s",
                    rotation.witness_seq, self.rotate_grace_secs
                ),
            )
            .with_actor(crate::audit::ACTOR_OPERATOR)
            .with_details(json!({
                "change": "key_rotated",
                "old_public_key": rotation.old_public_key,
                "new_public_key": rotation.new_public_key,
                "destroy_at_ms": rotation.destroy_at_ms,
                "witness_seq": rotation.witness_seq,
                "superseded": rotation.superseded,
            })),
        )?;
        self.reconcile(false)?;
        Ok(rotation)
    }

    /// Destroys the key a rotation replaced once its grace period is over.
    pub fn destroy_old_key_if_due(&self) -> Result<Option<String>, MeshError> {
        if !self.home.join(rotation::PREVIOUS_KEY_FILE).exists() {
            return Ok(None);
        }
        let now = self.coordinator.clock().now_ms();
        let destroyed = rotation::destroy_if_due(&self.home, &self.witness, now)
            .map_err(|e| MeshError::State(e.to_string()))?;
        if let Some(public_key) = &destroyed {
            self.audit(
                AuditEvent::new(
                    EventType::WireguardMutation,
                    "the WireGuard key replaced by the last rotation was destroyed (grace period over)",
                )
                .with_details(json!({"change": "key_destroyed", "public_key": public_key})),
            )?;
        }
        Ok(destroyed)
    }

    /// Brings the device and firewall to the desired state; `periodic`
    /// reconciles also look for drift in the firewall.
    pub fn reconcile(&self, periodic: bool) -> Result<ReconcileReport, MeshError> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReconcileReport::default();
        if self.device.ensure_up(&self.spec())? && applied.desired.is_some() {
            // The device went away under us (its process killed): it was
            // re-created, which is drift too.
            report.drift = true;
        }
        let desired = self.desired()?;
        self.record_exclusions(&desired, &mut applied)?;
        report.excluded = desired.excluded.len();
        let actual = self.device.state()?;
        let changes = plan(&desired.peers, &actual);
        let unchanged = applied.desired.as_ref() == Some(&desired);
        let drift = unchanged && !changes.is_empty();
        report.drift |= drift;
        for change in &changes {
            self.witness_change(change, drift)?;
        }
        self.device
            .apply(&changes.iter().map(|c| c.change.clone()).collect::<Vec<_>>())?;
        for change in &changes {
            self.audit_change(change, drift)?;
            report.applied.push(format!(
                "{} {}",
                change.kind.as_str(),
                change.node_id.as_deref().unwrap_or("-")
            ));
        }
        if self.firewall {
            report.firewall_applied = self.reconcile_firewall(&desired, periodic, &mut applied)?;
        }
        applied.desired = Some(desired);
        Ok(report)
    }

    /// What a reconcile would do now, as the commands that would run;
    /// changes nothing.
    pub fn plan_lines(&self) -> Result<Vec<String>, MeshError> {
        let desired = self.desired()?;
        let actual = self.device.state()?;
        let mut lines: Vec<String> = plan(&desired.peers, &actual)
            .iter()
            .map(|c| wg_set_line(&self.spec.name, &c.change))
            .collect();
        if self.firewall {
            let ruleset = nft_ruleset(&self.spec.name, &desired.grants).to_string();
            let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            if applied.firewall.as_deref() != Some(ruleset.as_str()) {
                lines.push(format!(
                    "nft -j -f agentfed.nft.json   # table inet {NFT_TABLE}, {} grants",
                    desired.grants.len()
                ));
            }
        }
        Ok(lines)
    }

    /// `wg status`: the device's peers with trust, breaker, handshake and
    /// traffic columns.
    pub fn status(&self) -> Result<serde_json::Value, MeshError> {
        let desired = self.desired()?;
        let actual = self.device.state()?;
        let peers = self
            .coordinator
            .store()
            .list_peers()
            .map_err(|e| MeshError::State(e.to_string()))?;
        let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
        let mut rows = Vec::new();
        for want in &desired.peers {
            let record = peers.iter().find(|p| p.node_id() == want.node_id);
            let have = actual.peers.get(&want.public_key);
            rows.push(json!({
                "node_id": want.node_id,
                "public_key": b64(&want.public_key),
                "trust_level": record.map(|r| r.trust_level.to_string()),
                "breaker": record.map(|r| r.breaker.state.to_string()),
                "allowed_ips": have.map(|h| h.allowed_ips.iter().map(|(ip, p)| format!("{ip}/{p}")).collect::<Vec<_>>()),
                "endpoint": have.and_then(|h| h.endpoint).map(|e| e.to_string()),
                "latest_handshake_secs": have.map(|h| h.last_handshake_secs),
                "rx_bytes": have.map(|h| h.rx_bytes),
                "tx_bytes": have.map(|h| h.tx_bytes),
                "on_device": have.is_some(),
            }));
        }
        let unknown: Vec<String> = actual
            .peers
            .keys()
            .filter(|k| !desired.peers.iter().any(|p| &p.public_key == *k))
            .map(b64)
            .collect();
        Ok(json!({
            "interface": self.spec.name,
            "backend": self.device.backend(),
            "public_key": b64(&self.spec().public_key),
            "previous_key": rotation::previous_key(&self.home)
                .map_err(|e| MeshError::State(e.to_string()))?
                .map(|(key, destroy_at_ms)| json!({"public_key": key, "destroy_at_ms": destroy_at_ms})),
            "listen_port": actual.listen_port,
            "mesh_ip": self.local.mesh_ip.to_string(),
            "subnet": self.local.subnet.to_string(),
            "peers": rows,
            "unknown_peers": unknown,
            "excluded": desired.excluded.iter().map(|e| json!({"node_id": e.node_id, "field": e.field, "reason": e.reason})).collect::<Vec<_>>(),
            "witness_entries": self.witness.len().map_err(|e| MeshError::State(e.to_string()))?,
        }))
    }

    fn record_exclusions(
        &self,
        desired: &DesiredMesh,
        applied: &mut Applied,
    ) -> Result<(), MeshError> {
        let now: BTreeSet<(String, String, String)> = desired
            .excluded
            .iter()
            .map(|e| (e.node_id.clone(), e.field.to_string(), e.reason.clone()))
            .collect();
        for (node, field, reason) in now.difference(&applied.excluded) {
            self.audit(
                AuditEvent::new(
                    EventType::PeerExcluded,
                    format!("{node} kept out of the WireGuard mesh: {field} {reason}"),
                )
                .with_peer(node)
                .with_severity(Severity::Warning)
                .with_details(json!({"scope": "mesh", "field": field, "reason": reason})),
            )?;
        }
        applied.excluded = now;
        Ok(())
    }

    fn witness_change(&self, change: &PlannedChange, drift: bool) -> Result<(), MeshError> {
        let kind = if drift {
            WitnessKind::DriftRepaired
        } else {
            WitnessKind::from(change.kind)
        };
        self.witness
            .append(kind, change_details(change, drift))
            .map(|_| ())
            .map_err(|e| MeshError::State(e.to_string()))
    }

    fn audit_change(&self, change: &PlannedChange, drift: bool) -> Result<(), MeshError> {
        let peer = change.node_id.as_deref().unwrap_or("-");
        let summary = if drift {
            format!("mesh drift repaired: {} {peer}", change.kind.as_str())
        } else {
            format!("mesh: {} {peer}", change.kind.as_str())
        };
        let mut event = AuditEvent::new(EventType::WireguardMutation, summary)
            .with_details(change_details(change, drift));
        if let Some(node) = &change.node_id {
            event = event.with_peer(node);
        }
        if drift {
            event = event.with_severity(Severity::Warning);
        }
        self.audit(event)
    }

    /// Applies the ruleset when it changed, or (periodically) when the
    /// live table no longer matches what was applied.
    fn reconcile_firewall(
        &self,
        desired: &DesiredMesh,
        periodic: bool,
        applied: &mut Applied,
    ) -> Result<bool, MeshError> {
        let ruleset = nft_ruleset(&self.spec.name, &desired.grants).to_string();
        let digest = hex::encode(Sha256::digest(ruleset.as_bytes()));
        if applied.firewall.is_none()
            && self.last_witnessed_firewall().as_deref() == Some(digest.as_str())
            && let Ok(listing) = list_table()
        {
            // A restart: the ruleset the chain says was applied last is the
            // one wanted now, and the table is there. Not applied (and not
            // witnessed) again; drift while the daemon was down is not
            // seen, drift from now on is.
            applied.firewall = Some(ruleset);
            applied.firewall_listing = Some(listing);
            return Ok(false);
        }
        let changed = applied.firewall.as_deref() != Some(ruleset.as_str());
        let drifted = !changed && periodic && list_table().ok() != applied.firewall_listing;
        if !changed && !drifted {
            return Ok(false);
        }
        let kind = if drifted {
            WitnessKind::DriftRepaired
        } else {
            WitnessKind::FirewallApplied
        };
        let details = json!({"firewall": "nftables", "table": format!("inet {NFT_TABLE}"), "sha256": digest, "grants": desired.grants.len(), "drift": drifted});
        self.witness
            .append(kind, details.clone())
            .map_err(|e| MeshError::State(e.to_string()))?;
        let mut cmd = std::process::Command::new("nft");
        cmd.args(["-j", "-f", "-"]);
        run_with_stdin(cmd, ruleset.as_bytes())?;
        applied.firewall = Some(ruleset);
        applied.firewall_listing = list_table().ok();
        let mut event = AuditEvent::new(
            EventType::WireguardMutation,
            if drifted {
                "mesh drift repaired: firewall re-applied".to_string()
            } else {
                format!("mesh firewall applied ({} grants)", desired.grants.len())
            },
        )
        .with_details(details);
        if drifted {
            event = event.with_severity(Severity::Warning);
        }
        self.audit(event)?;
        Ok(true)
    }

    /// The ruleset digest of the chain's last firewall entry.
    fn last_witnessed_firewall(&self) -> Option<String> {
        let entries = self.witness.entries().ok()?;
        entries.iter().rev().find_map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details).ok()?;
            (details["firewall"] == "nftables")
                .then(|| details["sha256"].as_str().map(str::to_string))
                .flatten()
        })
    }

    fn audit(&self, event: AuditEvent) -> Result<(), MeshError> {
        self.coordinator
            .audit()
            .append(event)
            .map(|_| ())
            .map_err(|e| MeshError::State(e.to_string()))
    }
}

/// The details of a device change, for the witness and the audit log (no
/// secrets: public keys and addresses only).
fn change_details(change: &PlannedChange, drift: bool) -> serde_json::Value {
    use super::uapi::DeviceChange;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let (key, allowed, endpoint) = match &change.change {
        DeviceChange::UpsertPeer {
            public_key,
            allowed_ips,
            endpoint,
            ..
        } => (
            b64(public_key),
            allowed_ips
                .iter()
                .map(|(ip, p)| format!("{ip}/{p}"))
                .collect::<Vec<_>>(),
            endpoint.map(|e| e.to_string()),
        ),
        DeviceChange::RemovePeer { public_key } => (b64(public_key), Vec::new(), None),
        DeviceChange::Interface { .. } => (String::new(), Vec::new(), None),
    };
    json!({
        "change": change.kind.as_str(),
        "peer": change.node_id,
        "wg_public_key": key,
        "allowed_ips": allowed,
        "endpoint": endpoint,
        "drift": drift,
    })
}

/// The live table, as nft lists it (to notice a flush or an edit).
fn list_table() -> Result<String, DeviceError> {
    let mut cmd = std::process::Command::new("nft");
    cmd.args(["-j", "list", "table", "inet", NFT_TABLE]);
    super::device::run(cmd)
}

/// Resolves a checked WireGuard `host:port` (IPv4 only: the mesh is IPv4).
pub fn resolve(endpoint: &str) -> Option<SocketAddr> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Some(addr);
    }
    endpoint.to_socket_addrs().ok()?.find(SocketAddr::is_ipv4)
}

/// Reconciles at once, then after every peer change and every `period`,
/// until `stop`. Failures are logged and retried at the next trigger.
pub async fn run(mesh: Arc<MeshRuntime>, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut seen = u64::MAX;
    let mut last_full = tokio::time::Instant::now();
    let mut poll = tokio::time::interval(CHANGE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = crate::control::server::stopped(&mut stop) => return,
        }
        let generation = mesh.coordinator.store().peer_generation();
        let periodic = last_full.elapsed() >= period;
        if generation == seen && !periodic {
            continue;
        }
        if periodic {
            last_full = tokio::time::Instant::now();
        }
        seen = generation;
        let m = Arc::clone(&mesh);
        match tokio::task::spawn_blocking({
            let m = Arc::clone(&mesh);
            move || m.destroy_old_key_if_due()
        })
        .await
        {
            Ok(Ok(Some(key))) => {
                tracing::info!(public_key = %key, "replaced WireGuard key destroyed")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("cannot destroy the replaced WireGuard key: {e}"),
            Err(e) => tracing::error!("key destruction panicked: {e}"),
        }
        match tokio::task::spawn_blocking(move || m.reconcile(periodic)).await {
            Ok(Ok(report)) if !report.applied.is_empty() || report.firewall_applied => {
                tracing::info!(applied = ?report.applied, firewall = report.firewall_applied, drift = report.drift, "mesh reconciled")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("mesh reconcile failed: {e}"),
            Err(e) => tracing::error!("mesh reconcile panicked: {e}"),
        }
    }
}
