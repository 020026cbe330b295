//! The session manager the daemon runs: the federation listener, one
//! authenticated session per peer, the delivery worker that empties the
//! durable outbox, and the synchronous calls of the control API (`join`,
//! `leave`, `sessions`, `query`, `broadcast`).
//!
//! Rules (normative text in `docs/protocol.md`, "Acknowledgements and
//! retries"):
//! * **Admission.** A handshake partner is admitted when the coordinator
//!   knows it in good standing ([`Coordinator::admit`]); an unknown peer
//!   only through an explicit `join` on this node or with `[transport]
//!   accept_new_peers`. Known peers are dialed with their manifest's TLS
//!   fingerprint pinned. A peer that `leave` dropped is refused
//!   (`SESSION_LEFT`) until it is joined again.
//! * **One session per peer.** When both sides dial at once, both keep the
//!   connection whose client has the lexicographically smaller node id;
//!   the other is closed with `DUPLICATE_SESSION`.
//! * **Inbound.** Every request on a session is an envelope frame; it goes
//!   to [`Coordinator::receive`] on the blocking pool (which commits before
//!   it returns), and the reply is a [`WireReply`]: the stored `Ack`, or the
//!   refusal code.
//! * **Delivery.** The worker sends each due outbox entry as a request on
//!   the target's session and removes it only after an acknowledgement (any
//!   status) or a final refusal; timeouts, lost connections and transient
//!   refusals reschedule it with capped exponential backoff. Entries for a
//!   peer without a session wait (untouched) until a session exists.
//! * **Standing.** After every inbound message, every heartbeat and every
//!   maintenance pass, a peer that became SUSPENDED, EVICTED or UNTRUSTED
//!   loses its session.
//!
//! Every session step is audited: handshake initiated / completed / failed
//! / rejected, session created / renewed / expired / terminated.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::audit::{AuditEvent, EventType};
use crate::config::{NodeConfig, TransportSection};
use crate::control::ErrorBody;
use crate::coordinator::{Ack, AckStatus, Admission, Coordinator, Interaction, SendRequest};
use crate::identity::{Identity, SignedManifest};
use crate::receipt::{Expected, Receipt};
use crate::store::OutboxEntry;
use crate::transport::handshake::UNKNOWN_PEER;
use crate::transport::{
    Accepted, Backoff, ConnectionHandle, EventKind, HandshakePolicy, Incoming, IncomingMessage,
    Listener, LocalNode, PeerContext, Pin, PinOutcome, Priority, Rejection, Role, TransportConfig,
    TransportError, connect,
};

/// Refusal code of a handshake with a peer this node left (`leave`).
pub const SESSION_LEFT: &str = "SESSION_LEFT";
/// Close code when a second connection to the same peer loses the
/// tie-break.
pub const DUPLICATE_SESSION: &str = "DUPLICATE_SESSION";
/// Close code of `leave`.
pub const LEFT: &str = "LEFT";
/// Close code when the operator removes the peer (`peers remove`).
pub const PEER_REMOVED: &str = "PEER_REMOVED";
/// Close code when a peer's reply to a delivery carries no receipt, or one
/// that does not prove it (protocol §10.4).
pub const BAD_RECEIPT: &str = "BAD_RECEIPT";
/// Close code when a peer's breaker or trust no longer allows a session.
pub const STANDING_REVOKED: &str = "STANDING_REVOKED";

/// How long a session lingers after a final refusal was written, before
/// it is dropped for the peer's lost standing.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);
/// Close code when the daemon stops.
pub const SHUTDOWN: &str = "SHUTDOWN";
/// Close code when this node's manifest changed (`wg rotate`): the
/// session is opened again so that the peer sees the new one.
pub const MANIFEST_CHANGED: &str = "MANIFEST_CHANGED";
/// Reject code of a `join` probe (no pin given): this side refuses after
/// reading the peer's manifest, to show the operator what it would trust.
pub const JOIN_NOT_CONFIRMED: &str = "JOIN_NOT_CONFIRMED";

/// Frames larger than this are delivered on the bulk priority class.
pub const BULK_THRESHOLD: usize = 64 * 1024;
/// Most deliveries in flight at once (all peers). Deep enough that the
/// receiver's group commits see many envelopes per `fdatasync`.
pub const DELIVERY_WINDOW: usize = 256;
/// Most inbound envelopes processed at once per session.
pub const INBOUND_CONCURRENCY: usize = 256;
/// Most inbound envelopes handled together in one blocking hand-off (those
/// that arrived while the previous burst was being taken).
pub const INBOUND_BURST: usize = 32;
/// Most inbound envelope bytes processed at once per session, in KiB
/// (every envelope counts at least 1 KiB): many small envelopes run
/// concurrently, a few large ones are enough to fill it.
pub const INBOUND_BUDGET_KIB: usize = 64 * 1024;
/// Failed inbound handshakes recorded one by one per source and failure
/// code in each [`FAILURE_AUDIT_WINDOW`]; the rest are counted and
/// recorded as one summary when the window ends. A source is an IPv4
/// address or an IPv6 /64 (one host commonly holds a whole /64, so keying
/// on the full IPv6 address would give it 2^64 bursts).
pub const FAILURE_AUDIT_BURST: u32 = 10;
/// Failed inbound handshakes recorded one by one in each
/// [`FAILURE_AUDIT_WINDOW`] from all sources together; past it, failures
/// are only counted (a scan from many sources cannot fill the audit log).
pub const FAILURE_AUDIT_GLOBAL: u32 = 100;
/// Sources summarised one by one when a window ends; the failures of the
/// others are summarised together per code (as from the unspecified
/// address), so the summaries are bounded too.
const FAILURE_AUDIT_SUMMARIES: usize = 32;
/// See [`FAILURE_AUDIT_BURST`].
pub const FAILURE_AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Most (address, code) windows tracked; beyond it, new addresses share
/// one window (the unspecified address), so memory stays bounded under a
/// scan from many addresses.
const FAILURE_AUDIT_TRACKED: usize = 4096;

/// Fresh entries waiting for the delivery worker; beyond it, the outbox
/// scan picks them up.
const FRESH_QUEUE: usize = 4096;
/// Period of the outbox scan (retries, entries queued without a session).
const OUTBOX_SCAN_PERIOD: Duration = Duration::from_millis(500);

/// Most delivery outcomes recorded together in one blocking hand-off (as
/// many as can be in flight).
const SETTLE_BURST: usize = DELIVERY_WINDOW;

/// Bursts of delivery outcomes being recorded at once. While they wait for
/// their commits, the next outcomes gather into one larger burst instead
/// of each taking a blocking thread (and its wake-ups) of its own.
const SETTLE_CONCURRENCY: usize = 2;
/// Outbox entries read per delivery pass.
const OUTBOX_BATCH: usize = 4096;
/// Period of the maintenance pass (reconnects, renewals, standing).
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(1);
/// A client renews its session when less than this remains.
const RENEW_BEFORE_MS: u64 = 5 * 60_000;
/// The file (in the node home) listing peers to keep a session with.
pub const WANTED_FILE: &str = "federation-peers.json";

/// Refusal codes after which a delivery is never retried: the same bytes
/// would be refused again.
pub const FINAL_REFUSALS: &[&str] = &[
    "MALFORMED_FRAME",
    "MESSAGE_TOO_LARGE",
    "PAYLOAD_TOO_COMPLEX",
    "BAD_SIGNATURE",
    "WRONG_ADDRESS",
    "STALE_TIMESTAMP",
    "UNKNOWN_MESSAGE_TYPE",
    "CAPABILITY_DENIED",
    "HOP_LIMIT_EXCEEDED",
    "PII_BLOCKED",
];

/// The reply to an envelope request on a session: JSON
/// `{"ack":{…}}` or `{"refused":"CODE"}`, either possibly beside a
/// `"receipt"` (see [`ReplyFrame`], which this reads leniently).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "ReplyFields")]
pub enum WireReply {
    /// The receiver processed (or had already processed) the envelope and
    /// committed this acknowledgement before sending it.
    Ack(Ack),
    /// Refused before processing, with a constant code (see
    /// [`crate::coordinator::InboundRefusal`]; `INTERNAL_ERROR` when the
    /// receiver failed, which the sender retries).
    Refused(String),
}

/// A reply as it travels: the [`WireReply`] and, to a peer whose
/// manifest announces signed receipts, the receiver's signed
/// [`Receipt`] beside it (protocol §10.4):
/// `{"ack":{…},"receipt":{…}}` or `{"refused":"CODE","receipt":{…}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyFrame {
    /// What the receiver answered.
    pub reply: WireReply,
    /// Its signed statement of the outcome, if it signs receipts.
    pub receipt: Option<Receipt>,
}

/// The JSON object of a reply, field by field.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<Ack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<Receipt>,
}

impl TryFrom<ReplyFields> for WireReply {
    type Error = &'static str;

    fn try_from(fields: ReplyFields) -> Result<WireReply, &'static str> {
        match (fields.ack, fields.refused) {
            (Some(ack), None) => Ok(WireReply::Ack(ack)),
            (None, Some(code)) => Ok(WireReply::Refused(code)),
            _ => Err("a reply has exactly one of \"ack\" and \"refused\""),
        }
    }
}

impl ReplyFrame {
    /// The reply's bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut fields = ReplyFields {
            receipt: self.receipt.clone(),
            ..ReplyFields::default()
        };
        match &self.reply {
            WireReply::Ack(ack) => fields.ack = Some(ack.clone()),
            WireReply::Refused(code) => fields.refused = Some(code.clone()),
        }
        serde_json::to_vec(&fields).unwrap_or_default()
    }

    /// Reads a reply; `None` when it is no reply at all.
    pub fn parse(bytes: &[u8]) -> Option<ReplyFrame> {
        let mut fields: ReplyFields = serde_json::from_slice(bytes).ok()?;
        let receipt = fields.receipt.take();
        let reply = WireReply::try_from(fields).ok()?;
        Some(ReplyFrame { reply, receipt })
    }

    /// The outcome and reason a receipt for this reply must state.
    fn outcome(&self) -> (&'static str, String) {
        match &self.reply {
            WireReply::Ack(ack) => (
                match ack.status {
                    AckStatus::Accepted => "accepted",
                    AckStatus::Replied => "replied",
                    AckStatus::Rejected => "rejected",
                },
                ack.reason.clone().unwrap_or_default(),
            ),
            WireReply::Refused(code) => ("refused", code.clone()),
        }
    }
}

/// Signs a receipt for each reply to `sender`'s frames (protocol §10.4).
fn sign_receipts(
    c: &Coordinator,
    sender: &str,
    frames: &[Vec<u8>],
    replies: Vec<WireReply>,
) -> Vec<ReplyFrame> {
    let now = c.clock().now_ms();
    replies
        .into_iter()
        .zip(frames)
        .map(|(reply, frame)| {
            let mut out = ReplyFrame {
                reply,
                receipt: None,
            };
            let (outcome, reason) = out.outcome();
            let envelope_id = match &out.reply {
                WireReply::Ack(ack) => ack.envelope_id.clone(),
                WireReply::Refused(_) => frame_envelope_id(frame).unwrap_or_default(),
            };
            out.receipt = Some(Receipt::sign(
                c.identity(),
                sender,
                &envelope_id,
                frame,
                outcome,
                &reason,
                now,
            ));
            out
        })
        .collect()
}

/// The `id` of the envelope in `frame`, when it can be read (a refused
/// frame may be unreadable: its receipt then names it by digest alone).
fn frame_envelope_id(frame: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let json = frame.get(65..)?;
    serde_json::from_slice::<Id>(json)
        .ok()
        .map(|i| i.id)
        .filter(|id| id.len() <= 128)
}

/// `join` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The peer's endpoint, `wss://host:port[/path]`.
    pub endpoint: String,
    /// Expected TLS certificate fingerprint (64 hex digits, `:` allowed).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Expected Ed25519 public key (standard base64 of 32 bytes).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Trust the certificate the peer's signed manifest names (first use).
    #[serde(default)]
    pub accept_new: bool,
}

/// One live session, as `sessions` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    /// Peer node id.
    pub peer: String,
    /// Session id.
    pub session_id: String,
    /// `client` (this node dialed) or `server`.
    pub role: String,
    /// Peer socket address.
    pub remote_addr: String,
    /// TLS or plaintext.
    pub encrypted: bool,
    /// permessage-deflate negotiated.
    pub compression: bool,
    /// When the session was created (ms since the epoch).
    pub created_at_ms: u64,
    /// Current expiry (ms since the epoch).
    pub expires_at_ms: u64,
}

struct Live {
    handle: ConnectionHandle,
    session_id: String,
    /// Node id of the side that dialed.
    client: String,
}

/// Per-peer reconnect state.
struct Redial {
    backoff: Backoff,
    next: Instant,
    /// The failure code of the current outage and the failed attempts in
    /// it: an outage is audited when it starts (or its code changes) and
    /// when it ends, not once per attempt.
    outage: Option<(String, u32)>,
}

/// The daemon's federation layer. Share it in an `Arc`.
pub struct Federation {
    coordinator: Arc<Coordinator>,
    node: LocalNode,
    transport: TransportConfig,
    settings: TransportSection,
    me: String,
    sessions: Mutex<HashMap<String, Live>>,
    dialing: Mutex<HashSet<String>>,
    redial: Mutex<HashMap<String, Redial>>,
    left: Arc<Mutex<HashSet<String>>>,
    wanted: Mutex<HashSet<String>>,
    wanted_path: PathBuf,
    /// Outbox entries handed to the delivery worker (queued for it or in
    /// flight): the periodic outbox scan skips them.
    in_flight: Mutex<HashSet<String>>,
    window: Arc<Semaphore>,
    /// Inbound envelope KiB being processed by all sessions together
    /// ([`crate::limits::INBOUND_GLOBAL_BUDGET_KIB`]): when it is spent, a
    /// session's reader waits for it before taking more messages from the
    /// transport, whose reading then stops (backpressure) instead of
    /// allocating.
    inbound_budget: Arc<Semaphore>,
    outbox_wake: Notify,
    /// Fresh entries from `send`, delivered without scanning the outbox.
    fresh_tx: tokio::sync::mpsc::Sender<OutboxEntry>,
    fresh_rx: Mutex<Option<tokio::sync::mpsc::Receiver<OutboxEntry>>>,
    /// Delivery outcomes on their way to be recorded.
    settle_tx: tokio::sync::mpsc::UnboundedSender<Settlement>,
    settle_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Settlement>>>,
    listen_addr: Mutex<Option<SocketAddr>>,
    /// Bounds what failed inbound handshakes may write to the audit log.
    failure_audit: Mutex<FailureThrottle>,
    /// Idempotency keys of the queries and broadcasts in progress: a call
    /// with a key another call is using waits for it to end, then finds
    /// its recorded result ([`Federation::keyed_turn`]).
    keyed_calls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A query's or broadcast's turn with its idempotency key; the key is
/// forgotten when the last call waiting for it is done.
struct KeyedTurn<'a> {
    calls: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: String,
    slot: Arc<tokio::sync::Mutex<()>>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for KeyedTurn<'_> {
    fn drop(&mut self) {
        let mut calls = lock(self.calls);
        // The map's, this turn's and its guard's: nobody else waits.
        if Arc::strong_count(&self.slot) <= 3 {
            calls.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("node", &self.me)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(code: &str, message: impl Into<String>, bad_input: bool) -> ErrorBody {
    ErrorBody::new(code, message, bad_input)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    err("INTERNAL", format!("federation: {e}"), false)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
    }
}

fn pin_name(pin: &PinOutcome) -> &'static str {
    match pin {
        PinOutcome::Fingerprint => "fingerprint",
        PinOutcome::PublicKey => "public_key",
        PinOutcome::NewPeer { .. } => "accept_new",
        PinOutcome::Inbound => "inbound",
    }
}

/// The server-side (and reconnect) admission policy, backed by the
/// coordinator.
struct Policy {
    coordinator: Arc<Coordinator>,
    accept_new: bool,
    /// `[transport] max_accepted_peers`.
    max_accepted: u64,
    left: Arc<Mutex<HashSet<String>>>,
}

impl HandshakePolicy for Policy {
    fn authorize(&self, peer: &PeerContext<'_>) -> Result<(), Rejection> {
        if lock(&self.left).contains(&peer.manifest.manifest.node_id) {
            return Err(Rejection::new(SESSION_LEFT));
        }
        match self.coordinator.admit(peer.manifest) {
            Ok(Admission::Known) => Ok(()),
            Ok(Admission::Unknown) if self.accept_new => {
                match self.coordinator.accepted_new_peers() {
                    Ok(n) if (n as u64) < self.max_accepted => Ok(()),
                    Ok(_) => Err(Rejection::new(crate::coordinator::ADMIT_PEER_LIMIT)),
                    Err(_) => Err(Rejection::new("INTERNAL_ERROR")),
                }
            }
            Ok(Admission::Unknown) => Err(Rejection::new(UNKNOWN_PEER)),
            Ok(Admission::Refused(code)) => Err(Rejection::new(code)),
            Err(_) => Err(Rejection::new("INTERNAL_ERROR")),
        }
    }
}

/// The client-side policy of an explicit `join`: admits an unknown peer
/// (the operator asked for it), refuses one in bad standing, and keeps the
/// verified manifest it saw. In probe mode it always refuses after reading
/// the manifest.
struct JoinPolicy {
    coordinator: Arc<Coordinator>,
    probe: bool,
    seen: Mutex<Option<(SignedManifest, Option<String>)>>,
}

impl HandshakePolicy for JoinPolicy {
    fn authorize(&self, peer: &PeerContext<'_>) -> Result<(), Rejection> {
        *lock(&self.seen) = Some((
            peer.manifest.clone(),
            peer.cert_fingerprint.map(str::to_string),
        ));
        if self.probe {
            return Err(Rejection::new(JOIN_NOT_CONFIRMED));
        }
        match self.coordinator.admit_for_join(peer.manifest) {
            Ok(Admission::Known | Admission::Unknown) => Ok(()),
            Ok(Admission::Refused(code)) => Err(Rejection::new(code)),
            Err(_) => Err(Rejection::new("INTERNAL_ERROR")),
        }
    }
}

/// What the operator of `peer`, which refused this node's `join` with
/// `code`, must do (the command last, so it can be copied as it is);
/// `added` says whether `join` just added `peer` here.
fn refusal_hint(peer: &str, code: &str, added: bool, ours: &crate::identity::Manifest) -> String {
    let (me, tls) = (&ours.node_id, &ours.tls_fingerprint);
    // How the other operator admits this node: a dial-only node cannot be
    // joined (it has no endpoint); its manifest is added instead.
    let admit = match &ours.endpoint {
        Some(endpoint) => format!("agentfed join {endpoint} --fingerprint {tls}"),
        None => format!(
            "agentfed peers add {me}.manifest.json (this node is dial-only; give them the output of `agentfed manifest`)"
        ),
    };
    let known = if added {
        format!("{peer} is known here now (its manifest was verified).")
    } else {
        format!("{peer} was already known here.")
    };
    let retrying = if code == SESSION_LEFT {
        format!("{peer} left this node, so this node does not redial it.")
    } else {
        "This node keeps retrying.".to_string()
    };
    let todo = match code {
        "PEER_EVICTED" | "PEER_SUSPENDED" => format!(
            "{peer} has this node ({me}) {}; its operator must reactivate it there: agentfed reactivate {me} --reason \"…\"",
            if code == "PEER_EVICTED" {
                "EVICTED"
            } else {
                "SUSPENDED"
            }
        ),
        "KEY_MISMATCH" => format!(
            "{peer} has a node {me} on record with another identity key (was this node re-initialised?); its operator must remove that record first: agentfed peers remove {me}, then: {admit}"
        ),
        "UNTRUSTED" => format!(
            "{peer} has this node ({me}) at UNTRUSTED; its operator must raise it: agentfed trust set {me} verified --reason \"…\""
        ),
        _ => format!(
            "{peer} does not admit this node yet ({code}); ask its operator to run: {admit}"
        ),
    };
    format!("{known} {retrying} {todo}")
}

/// Where the listener binds: `[transport] listen`, else the host and port
/// of the endpoint (resolved if it is a name; this may block on DNS).
pub fn listen_address(config: &NodeConfig, endpoint: &str) -> Option<SocketAddr> {
    if let Some(listen) = &config.transport.listen {
        return listen.parse().ok();
    }
    let rest = endpoint
        .strip_prefix("wss://")
        .or_else(|| endpoint.strip_prefix("ws://"))?;
    let authority = rest.split('/').next()?;
    if let Ok(addr) = authority.parse() {
        return Some(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()?
        .next()
}

impl Federation {
    /// Starts the federation layer: the listener on the node's endpoint
    /// (a failure to bind is logged here; the daemon checks the address
    /// before it starts and refuses to run without it, see
    /// [`crate::daemon`]), the delivery worker, the maintenance pass and the event
    /// handler. Everything stops when `stop` turns true.
    pub async fn start(
        home: &Path,
        coordinator: Arc<Coordinator>,
        config: &NodeConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Federation>, ErrorBody> {
        let identity = Arc::new(Identity::load(home).map_err(internal)?);
        let manifest = {
            let c = coordinator.clone();
            tokio::task::spawn_blocking(move || c.manifest())
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let node = LocalNode::new(identity, manifest).map_err(internal)?;
        let settings = config.transport.clone();
        let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel();
        let transport = TransportConfig {
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
            heartbeat_interval: Duration::from_secs(settings.heartbeat_secs),
            handshake_timeout: Duration::from_secs(settings.handshake_timeout_secs),
            allow_plaintext: settings.allow_plaintext,
            // What all peers together may have in flight towards us.
            inbound_pool: Some(crate::transport::InboundPool::new(
                crate::limits::INBOUND_TRANSPORT_POOL_BYTES,
            )),
            clock: coordinator.clock().clone(),
            on_event: Some(Arc::new(
                move |event: &crate::transport::ConnectionEvent| {
                    let _ = event_tx.send(event.clone());
                },
            )),
            ..TransportConfig::default()
        };
        let wanted_path = home.join(WANTED_FILE);
        let wanted: HashSet<String> = std::fs::read(&wanted_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let me = coordinator.node_id().to_string();
        let (fresh_tx, fresh_rx) = tokio::sync::mpsc::channel(FRESH_QUEUE);
        let (settle_tx, settle_rx) = tokio::sync::mpsc::unbounded_channel();
        let fed = Arc::new(Federation {
            coordinator: coordinator.clone(),
            node,
            transport,
            settings,
            me,
            sessions: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            redial: Mutex::new(HashMap::new()),
            left: Arc::new(Mutex::new(HashSet::new())),
            wanted: Mutex::new(wanted),
            wanted_path,
            in_flight: Mutex::new(HashSet::new()),
            window: Arc::new(Semaphore::new(DELIVERY_WINDOW)),
            inbound_budget: Arc::new(Semaphore::new(crate::limits::INBOUND_GLOBAL_BUDGET_KIB)),
            outbox_wake: Notify::new(),
            fresh_tx,
            fresh_rx: Mutex::new(Some(fresh_rx)),
            settle_tx,
            settle_rx: Mutex::new(Some(settle_rx)),
            listen_addr: Mutex::new(None),
            failure_audit: Mutex::new(FailureThrottle::default()),
            keyed_calls: Mutex::new(HashMap::new()),
        });

        let endpoint = coordinator.identity().endpoint().map(str::to_string);
        let plaintext = endpoint.as_deref().is_some_and(|e| e.starts_with("ws://"));
        let listen = match &endpoint {
            // Dial-only: no listener at all.
            None => None,
            Some(endpoint) => {
                let (config, endpoint) = (config.clone(), endpoint.clone());
                tokio::task::spawn_blocking(move || listen_address(&config, &endpoint))
                    .await
                    .ok()
                    .flatten()
            }
        };
        match listen {
            None if endpoint.is_none() => {
                tracing::info!("dial-only node ([node] endpoint = \"none\"): not listening")
            }
            None => tracing::warn!(
                endpoint = endpoint.as_deref().unwrap_or_default(),
                "no listen address for the endpoint; not listening"
            ),
            Some(_) if plaintext && !fed.settings.allow_plaintext => tracing::warn!(
                "endpoint is ws:// but [transport] allow_plaintext is false; not listening"
            ),
            Some(addr) => {
                let policy: Arc<dyn HandshakePolicy> = Arc::new(fed.policy());
                let bound = if plaintext {
                    Listener::bind_plaintext(addr, fed.node.clone(), fed.transport.clone(), policy)
                        .await
                } else {
                    Listener::bind(addr, fed.node.clone(), fed.transport.clone(), policy).await
                };
                match bound {
                    Ok(listener) => {
                        *lock(&fed.listen_addr) = Some(listener.local_addr());
                        tracing::info!(addr = %listener.local_addr(), "federation listener ready");
                        tokio::spawn(fed.clone().accept_loop(listener, stop.clone()));
                    }
                    Err(e) => tracing::warn!(
                        %addr,
                        code = e.code(),
                        "cannot listen for peers; this node can only dial out"
                    ),
                }
            }
        }

        {
            let fed = fed.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        event = event_rx.recv() => match event {
                            Some(event) => fed.clone().on_event(event).await,
                            None => return,
                        },
                        _ = crate::control::server::stopped(&mut stop) => return,
                    }
                }
            });
        }
        tokio::spawn(fed.clone().delivery_loop(stop.clone()));
        tokio::spawn(fed.clone().settle_loop(stop.clone()));
        tokio::spawn(fed.clone().maintenance_loop(stop));
        Ok(fed)
    }

    fn policy(&self) -> Policy {
        Policy {
            coordinator: self.coordinator.clone(),
            accept_new: self.settings.accept_new_peers,
            max_accepted: self.settings.max_accepted_peers,
            left: self.left.clone(),
        }
    }

    /// The address the listener is bound to, if any.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        *lock(&self.listen_addr)
    }

    /// Wakes the delivery worker to scan the outbox (e.g. when a session
    /// comes up).
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// Hands an entry that `send` just committed to the outbox to the
    /// delivery worker, which sends it at once when its target has a
    /// session (otherwise the outbox scan finds it later).
    pub fn enqueue(&self, entry: OutboxEntry) {
        if lock(&self.in_flight).insert(entry.envelope_id.clone()) {
            let id = entry.envelope_id.clone();
            // Full (the peer is slow to acknowledge): the entry is durable
            // in the outbox, and the scan delivers it later; memory stays
            // bounded however fast clients send.
            if self.fresh_tx.try_send(entry).is_err() {
                lock(&self.in_flight).remove(&id);
            }
        }
    }

    fn live_handle(&self, peer: &str) -> Option<ConnectionHandle> {
        lock(&self.sessions)
            .get(peer)
            .filter(|l| !l.handle.is_closed())
            .map(|l| l.handle.clone())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Coordinator) -> T + Send + 'static,
    ) -> Result<T, ErrorBody> {
        let c = self.coordinator.clone();
        tokio::task::spawn_blocking(move || f(&c))
            .await
            .map_err(internal)
    }

    async fn audit(&self, event: AuditEvent) {
        let result = self.blocking(move |c| c.audit_event(event)).await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!("cannot write a federation audit record");
        }
    }

    fn save_wanted(&self) {
        let list: Vec<String> = {
            let mut v: Vec<String> = lock(&self.wanted).iter().cloned().collect();
            v.sort();
            v
        };
        let ok = serde_json::to_vec(&list)
            .ok()
            .and_then(|bytes| crate::home::write_private(&self.wanted_path, &bytes).ok());
        if ok.is_none() {
            tracing::warn!(path = %self.wanted_path.display(), "cannot save the peers to reconnect to");
        }
    }

    fn want(&self, peer: &str, yes: bool) {
        let changed = {
            let mut wanted = lock(&self.wanted);
            if yes {
                wanted.insert(peer.to_string())
            } else {
                wanted.remove(peer)
            }
        };
        if changed {
            self.save_wanted();
        }
    }

    // ---- sessions ----

    async fn accept_loop(self: Arc<Self>, mut listener: Listener, mut stop: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                a = listener.next() => a,
                _ = crate::control::server::stopped(&mut stop) => break,
            };
            match accepted {
                None => break,
                Some(Accepted::Established(conn)) => {
                    let fed = self.clone();
                    tokio::spawn(async move {
                        let _ = fed.register(conn).await;
                    });
                }
                Some(Accepted::Failed(failure)) => {
                    let code = failure.error.code();
                    // A scan or a flood of garbage must not fill the audit
                    // log: past a burst per address and kind, failures are
                    // counted and summarised (see `FailureThrottle`).
                    let admitted = lock(&self.failure_audit).admit(
                        failure.remote_addr.ip(),
                        code,
                        Instant::now(),
                    );
                    if !admitted {
                        continue;
                    }
                    let event_type = match &failure.error {
                        TransportError::Rejected { .. } => EventType::HandshakeRejected,
                        _ => EventType::HandshakeFailed,
                    };
                    let reason = match &failure.error {
                        TransportError::Rejected { code, .. } => code.to_string(),
                        other => other.code().to_string(),
                    };
                    let mut event = AuditEvent::new(
                        event_type,
                        format!(
                            "inbound handshake from {} failed: {reason}",
                            failure.remote_addr
                        ),
                    )
                    .with_details(json!({
                        "remote_addr": failure.remote_addr.to_string(),
                        "code": code,
                        "reason": reason,
                    }));
                    if let Some(peer) = &failure.peer_node_id {
                        event = event.with_peer(peer);
                    }
                    self.audit(event).await;
                }
            }
        }
        listener.shutdown().await;
    }

    /// Bookkeeping for an established connection: coordinator admission
    /// and audit, the tie-break, then the reader and close watcher.
    async fn register(
        self: &Arc<Self>,
        conn: crate::transport::Connection,
    ) -> Result<SessionView, ErrorBody> {
        let session = conn.session();
        let peer = session.peer.manifest.node_id.clone();
        let role = session.role;
        let manifest = session.peer.clone();
        let session_id = session.session_id.clone();
        let pin = pin_name(&session.pin);
        let verdict = {
            let (m, s) = (manifest.clone(), session_id.clone());
            self.blocking(move |c| c.peer_connected(&m, &s, role_name(role), pin))
                .await?
        };
        match verdict {
            Ok(Ok(_)) => {}
            Ok(Err(code)) => {
                // The handshake policy admitted it at step 7; its standing
                // changed in the moment since (§10.3).
                conn.close(STANDING_REVOKED);
                return Err(err(
                    code,
                    format!("session with {peer} refused: {code}"),
                    false,
                ));
            }
            Err(e) => {
                conn.close("INTERNAL_ERROR");
                return Err(e.into());
            }
        }
        let client = match role {
            Role::Client => self.me.clone(),
            Role::Server => peer.clone(),
        };
        let preferred = std::cmp::min(self.me.clone(), peer.clone());
        let (handle, incoming) = conn.into_parts();
        // Streams larger than the peer may send at its level are refused
        // by the transport as they arrive, not buffered whole first.
        let p = peer.clone();
        if let Ok(limit) = self.blocking(move |c| c.inbound_message_limit(&p)).await {
            handle.set_inbound_message_limit(limit);
        }
        let view = self.view(&peer, &handle);
        let loser = {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&peer) {
                Some(existing)
                    if !existing.handle.is_closed()
                        && existing.client != client
                        && existing.client == preferred =>
                {
                    Some(handle.clone())
                }
                _ => {
                    let old = sessions.insert(
                        peer.clone(),
                        Live {
                            handle: handle.clone(),
                            session_id: session_id.clone(),
                            client,
                        },
                    );
                    old.map(|o| o.handle)
                }
            }
        };
        let kept_new = loser
            .as_ref()
            .is_none_or(|l| l.session_id() != handle.session_id());
        if let Some(loser) = loser {
            self.terminate(&peer, &loser, DUPLICATE_SESSION, false)
                .await;
        }
        if !kept_new {
            let existing = self.live_handle(&peer);
            return Ok(existing.map(|h| self.view(&peer, &h)).unwrap_or(view));
        }
        if role == Role::Server {
            self.check_claimed_endpoint(&peer, &manifest);
        }
        lock(&self.left).remove(&peer);
        // Keep a session with it on our own only if an operator added or
        // joined it: a stranger admitted by `accept_new_peers` reconnects
        // by itself or not at all.
        let p = peer.clone();
        if role == Role::Client || self.blocking(move |c| c.redials(&p)).await?? {
            self.want(&peer, true);
        }
        let ended_outage = lock(&self.redial).get_mut(&peer).and_then(|r| {
            r.backoff.reset();
            r.outage.take()
        });
        if let Some((code, attempts)) = ended_outage {
            // The outage's end is the session_created record just written;
            // the log says how long it lasted.
            tracing::info!(%peer, attempts, last_code = %code, "reachable again");
        }
        tokio::spawn(self.clone().reader(peer.clone(), incoming));
        tokio::spawn(self.clone().watcher(peer.clone(), handle));
        self.wake_outbox();
        Ok(view)
    }

    /// A known peer that connected to this node presenting an endpoint
    /// other than the one on record: dial that endpoint, pinned to the
    /// stored certificate, and adopt the manifest only if the same node
    /// answers there with it. Until then the redial target stays where it
    /// was, so a peer cannot aim this node's connections elsewhere by
    /// claiming to have moved.
    fn check_claimed_endpoint(self: &Arc<Self>, peer: &str, presented: &SignedManifest) {
        let this = Arc::clone(self);
        let peer = peer.to_string();
        let presented = presented.clone();
        tokio::spawn(async move {
            let p = peer.clone();
            let Ok(Ok(stored)) = this.blocking(move |c| c.store().get_peer(&p)).await else {
                return;
            };
            let Some(stored) = stored else { return };
            let stored = &stored.manifest.manifest;
            let claimed = &presented.manifest;
            if stored.endpoint == claimed.endpoint
                || stored.tls_fingerprint != claimed.tls_fingerprint
            {
                return;
            }
            // No endpoint claimed (the peer became dial-only): nothing to
            // probe; the coordinator adopted that manifest already.
            let Some(claimed_endpoint) = claimed.endpoint.clone() else {
                return;
            };
            let Ok(pin) = Pin::fingerprint(&stored.tls_fingerprint) else {
                return;
            };
            let probe = JoinPolicy {
                coordinator: this.coordinator.clone(),
                probe: true,
                seen: Mutex::new(None),
            };
            let result = tokio::time::timeout(
                Duration::from_secs(this.settings.handshake_timeout_secs.max(1)),
                connect(&claimed_endpoint, pin, &this.node, &this.transport, &probe),
            )
            .await;
            let seen = lock(&probe.seen).take();
            let proven = matches!(
                result,
                Ok(Err(TransportError::Rejected { ref code, by_peer: false }))
                    if code.as_str() == JOIN_NOT_CONFIRMED
            ) && seen.as_ref().is_some_and(|(m, _)| {
                m.manifest.node_id == claimed.node_id
                    && m.manifest.public_key == claimed.public_key
                    && m.manifest.endpoint == claimed.endpoint
            });
            if proven {
                let (manifest, _) = seen.expect("checked");
                let adopted = this
                    .blocking(move |c| c.adopt_manifest_proven_at_endpoint(&manifest))
                    .await;
                if let Ok(Err(e)) = adopted {
                    tracing::warn!(%peer, "cannot adopt the proven manifest: {e}");
                }
            } else {
                tracing::info!(%peer, "the endpoint it claims did not prove its identity; keeping the stored one");
            }
        });
    }

    fn view(&self, peer: &str, handle: &ConnectionHandle) -> SessionView {
        let s = handle.session();
        SessionView {
            peer: peer.to_string(),
            session_id: s.session_id,
            role: role_name(s.role).to_string(),
            remote_addr: s.remote_addr.to_string(),
            encrypted: s.encrypted,
            compression: s.compression,
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
        }
    }

    /// Closes `handle` with `code` and audits `session_terminated` (the
    /// session must already be out of the map, so the watcher stays
    /// quiet).
    async fn terminate(&self, peer: &str, handle: &ConnectionHandle, code: &str, operator: bool) {
        handle.close(code);
        let mut event = AuditEvent::new(
            EventType::SessionTerminated,
            format!("session {} with {peer} closed: {code}", handle.session_id()),
        )
        .with_peer(peer)
        .with_details(json!({"session_id": handle.session_id(), "code": code, "by_peer": false}));
        if operator {
            event = event.with_actor(crate::audit::ACTOR_OPERATOR);
        }
        self.audit(event).await;
    }

    /// Removes `peer`'s session from the map if it is `session_id`;
    /// returns the handle when it did.
    fn take_session(&self, peer: &str, session_id: Option<&str>) -> Option<ConnectionHandle> {
        let mut sessions = lock(&self.sessions);
        let matches = sessions
            .get(peer)
            .is_some_and(|l| session_id.is_none_or(|id| l.session_id == id));
        if matches {
            sessions.remove(peer).map(|l| l.handle)
        } else {
            None
        }
    }

    async fn watcher(self: Arc<Self>, peer: String, handle: ConnectionHandle) {
        let reason = handle.closed().await;
        if self
            .take_session(&peer, Some(handle.session_id()))
            .is_none()
        {
            return; // closed by us; already audited
        }
        let event_type = match reason.code.as_str() {
            "SESSION_EXPIRED" | "IDLE_TIMEOUT" => EventType::SessionExpired,
            _ => EventType::SessionTerminated,
        };
        self.audit(
            AuditEvent::new(
                event_type,
                format!(
                    "session {} with {peer} ended: {}",
                    handle.session_id(),
                    reason.code
                ),
            )
            .with_peer(&peer)
            .with_details(json!({
                "session_id": handle.session_id(),
                "code": reason.code,
                "by_peer": reason.by_peer,
            })),
        )
        .await;
    }

    async fn reader(self: Arc<Self>, peer: String, mut incoming: Incoming) {
        let slots = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
        let budget = Arc::new(Semaphore::new(INBOUND_BUDGET_KIB));
        let mut carried: Option<IncomingMessage> = None;
        loop {
            let first = match carried.take() {
                Some(message) => message,
                None => match incoming.recv().await {
                    Some(message) => message,
                    None => return,
                },
            };
            // Small envelopes that have already arrived are processed with
            // it: one blocking hand-off and one commit wait per burst. A
            // large one (bulk) goes alone, so a ping never waits behind
            // the PII scan of a big context-share.
            let is_bulk = |m: &IncomingMessage| m.data.len() > BULK_THRESHOLD;
            let mut kib = first.data.len().div_ceil(1024).max(1);
            let alone = is_bulk(&first);
            let mut burst = vec![first];
            while !alone && burst.len() < INBOUND_BURST {
                let Some(next) = incoming.try_recv() else {
                    break;
                };
                if is_bulk(&next) {
                    carried = Some(next);
                    break;
                }
                kib += next.data.len().div_ceil(1024).max(1);
                burst.push(next);
            }
            // The session's share first, then the node's: a session never
            // holds the node's budget while waiting for its own, and a
            // message larger than a budget takes all of it.
            let session_kib = kib.min(INBOUND_BUDGET_KIB) as u32;
            let node_kib = kib.min(crate::limits::INBOUND_GLOBAL_BUDGET_KIB) as u32;
            let (Ok(permit), Ok(bytes_permit)) = (
                slots.clone().acquire_many_owned(burst.len() as u32).await,
                budget.clone().acquire_many_owned(session_kib).await,
            ) else {
                return;
            };
            let Ok(node_permit) = self
                .inbound_budget
                .clone()
                .acquire_many_owned(node_kib)
                .await
            else {
                return;
            };
            let (responders, frames): (Vec<_>, Vec<_>) = burst
                .into_iter()
                .map(|mut message| {
                    let responder = message.take_responder();
                    (responder, message.into_parts().2)
                })
                .unzip();
            let fed = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                let p = peer.clone();
                let count = frames.len();
                let outcome = fed
                    .blocking(move |c| {
                        let replies: Vec<WireReply> = c
                            .receive_many(&p, &frames)
                            .into_iter()
                            .map(|result| match result {
                                Ok(Ok(ack)) => WireReply::Ack(ack),
                                Ok(Err(refusal)) => WireReply::Refused(refusal.to_string()),
                                Err(e) => {
                                    tracing::warn!(code = e.code(), "inbound envelope failed: {e}");
                                    WireReply::Refused("INTERNAL_ERROR".into())
                                }
                            })
                            .collect();
                        // Only a refusal (bad signature, blocked PII) can
                        // cost the sender its standing here; other changes
                        // are caught by the maintenance pass.
                        let refused = replies.iter().any(|r| matches!(r, WireReply::Refused(_)));
                        let standing = if refused { standing(c, &p) } else { None };
                        // A sender that announces signed receipts gets one
                        // with every reply (§10.4); an older one does not.
                        let replies: Vec<Vec<u8>> = match c.receipt_key(&p) {
                            Ok(Some(_)) => sign_receipts(c, &p, &frames, replies)
                                .iter()
                                .map(ReplyFrame::to_bytes)
                                .collect(),
                            _ => replies
                                .iter()
                                .map(|r| serde_json::to_vec(r).unwrap_or_default())
                                .collect(),
                        };
                        (replies, standing)
                    })
                    .await;
                let (replies, standing) = match outcome {
                    Ok(pair) => pair,
                    Err(_) => (
                        vec![
                            serde_json::to_vec(&WireReply::Refused("INTERNAL_ERROR".into()))
                                .unwrap_or_default();
                            count
                        ],
                        None,
                    ),
                };
                let mut replied = false;
                for (responder, bytes) in responders.into_iter().zip(replies) {
                    if let Some(responder) = responder {
                        replied |= responder.reply(bytes).await.is_ok();
                    }
                }
                if let Some(code) = standing {
                    // Closing drops frames still queued for the writer: let
                    // the refusal (e.g. BAD_SIGNATURE) reach the peer first.
                    if replied {
                        tokio::time::sleep(REFUSAL_LINGER).await;
                    }
                    fed.revoke(&peer, code).await;
                }
                drop((permit, bytes_permit, node_permit));
            });
        }
    }

    /// Drops `peer`'s session because its standing changed.
    async fn revoke(&self, peer: &str, code: &'static str) {
        if let Some(handle) = self.take_session(peer, None) {
            tracing::info!(%peer, code, "dropping the session: peer no longer in good standing");
            self.terminate(peer, &handle, STANDING_REVOKED, false).await;
        }
    }

    async fn on_event(self: Arc<Self>, event: crate::transport::ConnectionEvent) {
        let peer = event.peer_node_id.clone();
        match event.kind {
            EventKind::Heartbeat { rtt } => {
                let p = peer.clone();
                let outcome = self
                    .blocking(move |c| {
                        // An answered heartbeat keeps the peer seen; it
                        // never earns trust (only work we ask for does).
                        c.note_observed(&p);
                        standing(c, &p)
                    })
                    .await;
                tracing::trace!(%peer, rtt_us = rtt.as_micros() as u64, "heartbeat");
                if let Ok(Some(code)) = outcome {
                    self.revoke(&peer, code).await;
                }
            }
            EventKind::Renewed { expires_at_ms } => {
                self.audit(
                    AuditEvent::new(
                        EventType::SessionRenewed,
                        format!("session {} with {peer} renewed", event.session_id),
                    )
                    .with_peer(&peer)
                    .with_details(
                        json!({"session_id": event.session_id, "expires_at_ms": expires_at_ms}),
                    ),
                )
                .await;
            }
            EventKind::StreamRefused {
                stream_id,
                code,
                unreported,
            } => {
                self.audit(
                    AuditEvent::new(
                        EventType::MessageRejected,
                        format!("inbound stream from {peer} refused: {code}"),
                    )
                    .with_peer(&peer)
                    .with_details(json!({
                        "session_id": event.session_id,
                        "stream_id": stream_id,
                        "reason": code,
                        "unreported_refusals": unreported,
                    })),
                )
                .await;
            }
            EventKind::RefusalsUnreported { count } => {
                self.audit(
                    AuditEvent::new(
                        EventType::MessageRejected,
                        format!(
                            "{count} more inbound streams from {peer} were refused; not recorded one by one"
                        ),
                    )
                    .with_peer(&peer)
                    .with_details(json!({
                        "session_id": event.session_id,
                        "unreported_refusals": count,
                    })),
                )
                .await;
            }
            EventKind::Closed(_) => {}
        }
    }

    // ---- dialing ----

    /// Dials a known peer with its manifest's fingerprint pinned.
    async fn dial_known(self: Arc<Self>, peer: String) {
        let record = {
            let p = peer.clone();
            self.blocking(move |c| c.peer(&p)).await
        };
        let Ok(Ok(view)) = record else {
            lock(&self.dialing).remove(&peer);
            return;
        };
        // Dial-only since the tick chose it: nothing to dial.
        let Some(endpoint) = view.endpoint.clone() else {
            lock(&self.dialing).remove(&peer);
            return;
        };
        let fingerprint = {
            let p = peer.clone();
            self.blocking(move |c| c.store().get_peer(&p)).await
        };
        let Ok(Ok(Some(record))) = fingerprint else {
            lock(&self.dialing).remove(&peer);
            return;
        };
        let pin = Pin::Fingerprint(record.manifest.manifest.tls_fingerprint.clone());
        let in_outage = lock(&self.redial)
            .get(&peer)
            .is_some_and(|r| r.outage.is_some());
        if in_outage {
            tracing::debug!(%peer, %endpoint, "redialing an unreachable peer");
        } else {
            self.audit(
                AuditEvent::new(
                    EventType::HandshakeInitiated,
                    format!("dialing {peer} at {endpoint}"),
                )
                .with_peer(&peer)
                .with_details(json!({"endpoint": endpoint, "reason": "reconnect"})),
            )
            .await;
        }
        let policy = self.policy();
        let result = connect(&endpoint, pin, &self.node, &self.transport, &policy).await;
        match result {
            Ok(conn) => {
                let _ = self.register(conn).await;
            }
            // The peer's operator left this node: redialing cannot succeed
            // until they join it again, which dials from their side.
            Err(
                ref e @ TransportError::Rejected {
                    ref code,
                    by_peer: true,
                },
            ) if code.as_str() == SESSION_LEFT => {
                self.want(&peer, false);
                lock(&self.redial).remove(&peer);
                self.audit_dial_failure(&peer, &endpoint, e, None).await;
            }
            Err(e) => {
                let (delay, new_outage, attempts) = {
                    let mut redial = lock(&self.redial);
                    let r = redial.entry(peer.clone()).or_insert_with(|| Redial {
                        backoff: self.backoff(),
                        next: Instant::now(),
                        outage: None,
                    });
                    let delay = r.backoff.next_delay();
                    r.next = Instant::now() + delay;
                    let code = e.code();
                    let new_outage = r.outage.as_ref().is_none_or(|(c, _)| c != code);
                    let attempts = match &mut r.outage {
                        Some((c, n)) if c == code => {
                            *n += 1;
                            *n
                        }
                        _ => {
                            r.outage = Some((code.to_string(), 1));
                            1
                        }
                    };
                    (delay, new_outage, attempts)
                };
                if new_outage {
                    self.audit_dial_failure(&peer, &endpoint, &e, Some(delay))
                        .await;
                } else {
                    tracing::debug!(%peer, attempts, code = e.code(), retry_in_ms = delay.as_millis() as u64, "still unreachable");
                }
            }
        }
        lock(&self.dialing).remove(&peer);
    }

    /// The redial backoff: from `retry_base_ms`, doubling, up to
    /// `redial_max_ms`.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.settings.retry_base_ms),
            Duration::from_millis(self.settings.redial_max_ms),
        )
    }

    async fn audit_dial_failure(
        &self,
        peer: &str,
        endpoint: &str,
        e: &TransportError,
        retry_in: Option<Duration>,
    ) {
        let (event_type, reason) = match e {
            TransportError::Rejected { code, by_peer } => (
                EventType::HandshakeRejected,
                format!("{code}{}", if *by_peer { " (by peer)" } else { "" }),
            ),
            other => (EventType::HandshakeFailed, other.code().to_string()),
        };
        self.audit(
            AuditEvent::new(
                event_type,
                format!("handshake with {peer} at {endpoint} failed: {reason}"),
            )
            .with_peer(peer)
            .with_details(json!({
                "endpoint": endpoint,
                "code": e.code(),
                "reason": reason,
                "retry_in_ms": retry_in.map(|d| d.as_millis() as u64),
            })),
        )
        .await;
    }

    async fn maintenance_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(MAINTENANCE_PERIOD);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = crate::control::server::stopped(&mut stop) => return,
            }
            self.clone().maintain().await;
        }
    }

    async fn maintain(self: Arc<Self>) {
        // Successes counted since the last pass reach the peer records
        // (and the trust plugin) before standing is checked.
        let _ = self.blocking(|c| c.apply_pending_successes()).await;
        // Failed inbound handshakes that were counted, not recorded.
        let suppressed = lock(&self.failure_audit).expire(Instant::now());
        for (ip, code, count) in suppressed {
            let source = source_label(ip);
            self.audit(
                AuditEvent::new(
                    EventType::HandshakeFailed,
                    format!(
                        "{count} more inbound handshakes from {source} failed ({code}); not recorded one by one"
                    ),
                )
                .with_details(json!({
                    "remote_addr": source,
                    "code": code,
                    "suppressed": count,
                    "window_secs": FAILURE_AUDIT_WINDOW.as_secs(),
                })),
            )
            .await;
        }
        // Standing and renewal of live sessions.
        let live: Vec<(String, ConnectionHandle)> = lock(&self.sessions)
            .iter()
            .map(|(p, l)| (p.clone(), l.handle.clone()))
            .collect();
        let now = self.coordinator.clock().now_ms();
        for (peer, handle) in &live {
            let p = peer.clone();
            let checked = self
                .blocking(move |c| (standing(c, &p), c.inbound_message_limit(&p)))
                .await;
            if let Ok((Some(code), _)) = checked {
                self.revoke(peer, code).await;
                continue;
            }
            // Trust changes reach the transport's message limit here,
            // within a maintenance period.
            if let Ok((None, limit)) = checked {
                handle.set_inbound_message_limit(limit);
            }
            let s = handle.session();
            if s.role == Role::Client
                && s.expires_at_ms.saturating_sub(now) < RENEW_BEFORE_MS
                && s.expires_at_ms < s.max_expires_at_ms
            {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = handle.renew().await;
                });
            }
        }
        // Reconnect to wanted peers without a session.
        let wanted: Vec<String> = lock(&self.wanted).iter().cloned().collect();
        for peer in wanted {
            if self.live_handle(&peer).is_some() || lock(&self.left).contains(&peer) {
                continue;
            }
            let due = lock(&self.redial)
                .get(&peer)
                .is_none_or(|r| r.next <= Instant::now());
            if !due || !lock(&self.dialing).insert(peer.clone()) {
                continue;
            }
            let p = peer.clone();
            // A dial-only peer (no endpoint) is never dialed: it connects
            // by itself, and what is queued for it waits until then.
            let ok = matches!(
                self.blocking(move |c| c.peer(&p)).await,
                Ok(Ok(ref v)) if v.breaker.state == crate::model::BreakerState::Active
                    && v.trust_level >= crate::model::TrustLevel::Verified
                    && v.endpoint.is_some()
            );
            // A stranger admitted by `accept_new_peers` (listed by an
            // older version) is never a redial target.
            let p = peer.clone();
            if !matches!(self.blocking(move |c| c.redials(&p)).await, Ok(Ok(true))) {
                lock(&self.dialing).remove(&peer);
                self.want(&peer, false);
                continue;
            }
            if !ok {
                lock(&self.dialing).remove(&peer);
                continue;
            }
            tokio::spawn(self.clone().dial_known(peer));
        }
    }

    /// After this node's manifest changed (`wg rotate` replaced its
    /// WireGuard key): presents the re-signed manifest in every handshake
    /// from now on and closes every session with `MANIFEST_CHANGED`, so
    /// that each is opened again and the peer adopts the new manifest
    /// (protocol §4.3). The peers this node dials are redialed at once;
    /// the others dial back on their own. Returns how many sessions were
    /// closed.
    pub async fn present_new_manifest(self: Arc<Self>) -> Result<usize, ErrorBody> {
        let manifest = self.blocking(|c| c.manifest()).await?.map_err(internal)?;
        self.node.replace_manifest(manifest).map_err(internal)?;
        let all: Vec<(String, ConnectionHandle)> = lock(&self.sessions)
            .drain()
            .map(|(p, l)| (p, l.handle))
            .collect();
        for (peer, handle) in &all {
            self.terminate(peer, handle, MANIFEST_CHANGED, true).await;
            lock(&self.redial).remove(peer);
        }
        for (_, handle) in &all {
            let _ = tokio::time::timeout(Duration::from_secs(2), handle.closed()).await;
        }
        self.clone().maintain().await;
        Ok(all.len())
    }

    /// Closes every session (daemon shutdown), auditing each.
    pub async fn shutdown(&self) {
        let all: Vec<(String, ConnectionHandle)> = lock(&self.sessions)
            .drain()
            .map(|(p, l)| (p, l.handle))
            .collect();
        for (peer, handle) in all {
            self.terminate(&peer, &handle, SHUTDOWN, false).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), handle.closed()).await;
        }
    }

    // ---- delivery ----

    async fn delivery_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut fresh) = lock(&self.fresh_rx).take() else {
            return;
        };
        // One timer for the whole loop: a steady stream of fresh entries
        // must not keep postponing the scan that finds retries and entries
        // whose peer had no session.
        let mut scan_timer = tokio::time::interval(OUTBOX_SCAN_PERIOD);
        scan_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let scan = tokio::select! {
                entry = fresh.recv() => match entry {
                    Some(entry) => {
                        // Already marked in flight by `enqueue`.
                        match self.live_handle(&entry.target) {
                            Some(handle) => {
                                if !self.clone().dispatch(entry, handle).await {
                                    return;
                                }
                            }
                            None => {
                                // No session: the outbox scan takes it later.
                                lock(&self.in_flight).remove(&entry.envelope_id);
                            }
                        }
                        false
                    }
                    None => return,
                },
                _ = self.outbox_wake.notified() => true,
                _ = scan_timer.tick() => true,
                _ = crate::control::server::stopped(&mut stop) => return,
            };
            if !scan {
                continue;
            }
            let now = self.coordinator.clock().now_ms();
            // Only entries that can go now are read: not in flight (the
            // fresh path or an earlier scan has them) and for a peer with
            // a session.
            let live: HashSet<String> = lock(&self.sessions)
                .iter()
                .filter(|(_, l)| !l.handle.is_closed())
                .map(|(peer, _)| peer.clone())
                .collect();
            let fed = Arc::clone(&self);
            let due = match self
                .blocking(move |c| {
                    let due = c.store().outbox_due_where(
                        now,
                        OUTBOX_BATCH,
                        |target| live.contains(target),
                        |id| !lock(&fed.in_flight).contains(id),
                    )?;
                    // Queued for a level the peer has since lost: dropped
                    // with a record, not delivered past today's gate.
                    let mut deliverable = Vec::with_capacity(due.len());
                    for entry in due {
                        if c.queued_before_demotion(&entry)? {
                            c.refused_for_good(&entry, crate::coordinator::LEVEL_LOWERED)?;
                        } else {
                            deliverable.push(entry);
                        }
                    }
                    Ok::<_, crate::coordinator::CoordError>(deliverable)
                })
                .await
            {
                Ok(Ok(due)) => due,
                _ => continue,
            };
            for entry in due {
                if *stop.borrow() {
                    return;
                }
                let Some(handle) = self.live_handle(&entry.target) else {
                    continue; // waits for a session; untouched
                };
                if !lock(&self.in_flight).insert(entry.envelope_id.clone()) {
                    continue;
                }
                if !self.clone().dispatch(entry, handle).await {
                    return;
                }
            }
        }
    }

    /// Starts delivering `entry` (already marked in flight) once the
    /// window has room; `false` when the federation is shutting down.
    async fn dispatch(self: Arc<Self>, entry: OutboxEntry, handle: ConnectionHandle) -> bool {
        let Ok(permit) = self.window.clone().acquire_owned().await else {
            return false;
        };
        tokio::spawn(self.deliver(entry, handle, permit));
        true
    }

    /// Sends one entry and hands the outcome to the settlement worker (the
    /// window slot travels with it until the outcome is recorded).
    async fn deliver(
        self: Arc<Self>,
        entry: OutboxEntry,
        handle: ConnectionHandle,
        permit: OwnedSemaphorePermit,
    ) {
        let priority = if entry.bytes.len() > BULK_THRESHOLD {
            Priority::Bulk
        } else {
            Priority::Interactive
        };
        let timeout = Duration::from_millis(delivery_timeout_ms(
            self.settings.request_timeout_ms,
            entry.bytes.len(),
        ));
        let result = handle.request(priority, entry.bytes.clone(), timeout).await;
        let id = entry.envelope_id.clone();
        let settlement = Settlement {
            entry,
            result,
            permit,
        };
        if self.settle_tx.send(settlement).is_err() {
            // Shutting down: the entry stays in the outbox for next time.
            lock(&self.in_flight).remove(&id);
        }
    }

    /// Records delivery outcomes as they come in, a burst at a time: one
    /// blocking hand-off per burst, whose outbox removals share commits.
    async fn settle_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = lock(&self.settle_rx).take() else {
            return;
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(SETTLE_CONCURRENCY));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let first = tokio::select! {
                settlement = rx.recv() => match settlement {
                    Some(settlement) => settlement,
                    None => return,
                },
                _ = crate::control::server::stopped(&mut stop) => return,
            };
            let mut burst = vec![first];
            while burst.len() < SETTLE_BURST {
                match rx.try_recv() {
                    Ok(settlement) => burst.push(settlement),
                    Err(_) => break,
                }
            }
            let fed = self.clone();
            tokio::spawn(async move {
                fed.settle_burst(burst).await;
                drop(slot);
            });
        }
    }

    async fn settle_burst(self: Arc<Self>, burst: Vec<Settlement>) {
        let mut permits = Vec::with_capacity(burst.len());
        let mut outcomes = Vec::with_capacity(burst.len());
        for Settlement {
            entry,
            result,
            permit,
        } in burst
        {
            permits.push(permit);
            outcomes.push((entry, result));
        }
        let ids: Vec<String> = outcomes
            .iter()
            .map(|(e, _)| e.envelope_id.clone())
            .collect();
        let settings = self.settings.clone();
        let Settled {
            failed,
            bad_receipts,
        } = self
            .blocking(move |c| settle_many(c, &settings, outcomes))
            .await
            .unwrap_or_else(|_| Settled {
                failed: ids.clone(),
                bad_receipts: Vec::new(),
            });
        // A peer whose receipts do not prove its acknowledgements is not
        // spoken to on that session again (§10.4).
        for peer in &bad_receipts {
            if let Some(handle) = self.take_session(peer, None) {
                self.terminate(peer, &handle, BAD_RECEIPT, false).await;
            }
        }
        for id in &failed {
            tracing::warn!(envelope = %id, "cannot record a delivery outcome; it will be retried");
        }
        let mut in_flight = lock(&self.in_flight);
        for id in &ids {
            in_flight.remove(id);
        }
        drop(in_flight);
        drop(permits);
    }

    // ---- control API ----

    /// `join`: connect to `endpoint` (pinned by fingerprint or public key,
    /// or trusting the manifest's certificate with `accept_new`); without
    /// any of them, read the peer's manifest, refuse, and return what would
    /// be trusted (`CONFIRMATION_REQUIRED`).
    pub async fn join(self: &Arc<Self>, request: JoinRequest) -> Result<Value, ErrorBody> {
        crate::identity::validate_endpoint(&request.endpoint)
            .map_err(|e| err("INVALID_INPUT", format!("endpoint: {}", e.reason), true))?;
        let given = [
            request.fingerprint.is_some(),
            request.public_key.is_some(),
            request.accept_new,
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given > 1 {
            return Err(err(
                "INVALID_INPUT",
                "give at most one of fingerprint, public_key and accept_new",
                true,
            ));
        }
        let bad_pin = |e: TransportError| err("INVALID_INPUT", e.to_string(), true);
        let (pin, probe) = if let Some(fp) = &request.fingerprint {
            (
                Pin::fingerprint(fp).map_err(|_| {
                    err(
                        "INVALID_INPUT",
                        "fingerprint must be 64 hex digits (SHA-256 of the certificate DER)",
                        true,
                    )
                })?,
                false,
            )
        } else if let Some(key) = &request.public_key {
            (Pin::public_key_b64(key).map_err(bad_pin)?, false)
        } else {
            (Pin::AcceptNew, !request.accept_new)
        };
        let policy = JoinPolicy {
            coordinator: self.coordinator.clone(),
            probe,
            seen: Mutex::new(None),
        };
        if !probe {
            self.audit(
                AuditEvent::new(
                    EventType::HandshakeInitiated,
                    format!("joining {}", request.endpoint),
                )
                .with_actor(crate::audit::ACTOR_OPERATOR)
                .with_details(json!({"endpoint": request.endpoint, "reason": "join"})),
            )
            .await;
        }
        let result = connect(&request.endpoint, pin, &self.node, &self.transport, &policy).await;
        let seen = lock(&policy.seen).take();
        match result {
            Ok(conn) => {
                // What the operator can compare out of band (protocol.md
                // §8), above all after `--accept-new`.
                let session = conn.handle().session();
                let tls_fingerprint = session
                    .peer_cert_fingerprint
                    .unwrap_or_else(|| session.peer.manifest.tls_fingerprint.clone());
                let view = self.register(conn).await?;
                let peer = view.peer.clone();
                let p = peer.clone();
                let level = self
                    .blocking(move |c| c.peer(&p).map(|v| v.trust_level))
                    .await?
                    .ok()
                    .map(|l| l.to_string());
                Ok(json!({
                    "peer": peer,
                    "joined": true,
                    "session": view,
                    "trust_level": level,
                    "tls_fingerprint": tls_fingerprint,
                }))
            }
            Err(TransportError::Rejected {
                code,
                by_peer: false,
            }) if probe && code.as_str() == JOIN_NOT_CONFIRMED => {
                let Some((manifest, cert)) = seen else {
                    return Err(internal("probe saw no manifest"));
                };
                let m = &manifest.manifest;
                if let Some(conflict) = self.join_conflict(&request.endpoint, m).await {
                    return Err(conflict);
                }
                let fingerprint = cert.unwrap_or_else(|| m.tls_fingerprint.clone());
                Err(err(
                    "CONFIRMATION_REQUIRED",
                    format!(
                        "{} presents node id {}, certificate fingerprint {}, public key {}; nothing was trusted. If that is the node you expect, rerun with --fingerprint {} (or --public-key {}, or --accept-new)",
                        request.endpoint, m.node_id, fingerprint, m.public_key, fingerprint, m.public_key
                    ),
                    false,
                )
                .with_details(json!({
                    "node_id": m.node_id,
                    "fingerprint": fingerprint,
                    "public_key": m.public_key,
                    "endpoint": m.endpoint,
                })))
            }
            Err(TransportError::Rejected {
                code,
                by_peer: true,
            }) if seen.is_some() => {
                // The peer does not admit us (yet), but we verified its
                // signed manifest over a pinned TLS session: remember it,
                // as `peers add` would, and keep dialing it.
                let (manifest, _) = seen.expect("checked");
                let peer = manifest.manifest.node_id.clone();
                let json_text = String::from_utf8(manifest.to_json()).unwrap_or_default();
                let added = self
                    .blocking(move |c| match c.add_peer(&json_text) {
                        Ok(_) => Ok(true),
                        Err(crate::coordinator::CoordError::PeerExists(_)) => Ok(false),
                        Err(e) => Err(e),
                    })
                    .await??;
                lock(&self.left).remove(&peer);
                // A peer that left this node refuses every redial until its
                // operator joins again (from their side): keep dialing the
                // others only.
                if code.as_str() != SESSION_LEFT {
                    self.want(&peer, true);
                    lock(&self.redial).insert(
                        peer.clone(),
                        Redial {
                            backoff: self.backoff(),
                            next: Instant::now()
                                + Duration::from_millis(self.settings.retry_base_ms),
                            outage: None,
                        },
                    );
                }
                self.audit_dial_failure(
                    &peer,
                    &request.endpoint,
                    &TransportError::Rejected {
                        code: code.clone(),
                        by_peer: true,
                    },
                    None,
                )
                .await;
                Ok(json!({
                    "peer": peer,
                    "joined": false,
                    "added": added,
                    "refused_by_peer": code.to_string(),
                    "hint": refusal_hint(&peer, code.as_str(), added, &self.node.manifest().manifest),
                }))
            }
            Err(TransportError::PinMismatch) => {
                let e = TransportError::PinMismatch;
                self.audit_dial_failure("-", &request.endpoint, &e, None)
                    .await;
                Err(self.pin_mismatch(&request).await)
            }
            Err(e) => {
                self.audit_dial_failure("-", &request.endpoint, &e, None)
                    .await;
                // Our own admission refused the node we reached: say why
                // in the operator's terms.
                if let (TransportError::Rejected { by_peer: false, .. }, Some((manifest, _))) =
                    (&e, &seen)
                    && let Some(conflict) = self
                        .join_conflict(&request.endpoint, &manifest.manifest)
                        .await
                {
                    return Err(conflict);
                }
                let detail = e.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                Err(err(
                    e.code(),
                    format!("join {} failed: {e}{detail}", request.endpoint),
                    false,
                ))
            }
        }
    }

    /// The `PIN_MISMATCH` of a join, with what the endpoint presents
    /// instead, as OpenSSH shows the key a changed host sent: the node is
    /// asked again without a pin (a probe that trusts nothing, as a join
    /// without a pin does), and its node id, certificate fingerprint and
    /// public key go into the message and the details.
    async fn pin_mismatch(&self, request: &JoinRequest) -> ErrorBody {
        let pinned = match (&request.fingerprint, &request.public_key) {
            (Some(fp), _) => format!("certificate fingerprint {}", fp.to_ascii_lowercase()),
            (None, Some(key)) => format!("public key {key}"),
            (None, None) => "pin".to_string(),
        };
        let policy = JoinPolicy {
            coordinator: self.coordinator.clone(),
            probe: true,
            seen: Mutex::new(None),
        };
        let _ = connect(
            &request.endpoint,
            Pin::AcceptNew,
            &self.node,
            &self.transport,
            &policy,
        )
        .await;
        let Some((manifest, cert)) = lock(&policy.seen).take() else {
            return err(
                "PIN_MISMATCH",
                format!(
                    "join {} failed: PIN_MISMATCH: it does not present the pinned {pinned}, and asking it again without the pin showed nothing (it did not complete a handshake); nothing was trusted",
                    request.endpoint
                ),
                false,
            );
        };
        let m = &manifest.manifest;
        let fingerprint = cert.unwrap_or_else(|| m.tls_fingerprint.clone());
        err(
            "PIN_MISMATCH",
            format!(
                "join {} failed: PIN_MISMATCH: the pinned {pinned} does not match; the node there presents node id {}, certificate fingerprint {}, public key {}. Nothing was trusted. Someone may be intercepting the connection, or the node was re-initialised: check the fingerprint with its operator out of band, and only then rerun with --fingerprint {}",
                request.endpoint, m.node_id, fingerprint, m.public_key, fingerprint
            ),
            false,
        )
        .with_details(json!({
            "pinned": pinned,
            "node_id": m.node_id,
            "fingerprint": fingerprint,
            "public_key": m.public_key,
            "endpoint": m.endpoint,
        }))
    }

    /// Why joining the node that presented `m` at `endpoint` cannot work
    /// as asked: it is this node, or a node on record here with another
    /// key (re-initialised, or an impostor). `None` when neither.
    async fn join_conflict(
        &self,
        endpoint: &str,
        m: &crate::identity::Manifest,
    ) -> Option<ErrorBody> {
        if m.node_id == self.node.manifest().manifest.node_id {
            return Some(err(
                "INVALID_INPUT",
                format!(
                    "{endpoint} is this node's own endpoint (node id {}); join another node",
                    m.node_id
                ),
                true,
            ));
        }
        let p = m.node_id.clone();
        let known = self
            .blocking(move |c| c.store().get_peer(&p))
            .await
            .ok()?
            .ok()??;
        let on_record = &known.manifest.manifest.public_key;
        (on_record != &m.public_key).then(|| {
            err(
                "KEY_MISMATCH",
                format!(
                    "{endpoint} presents node id {} with public key {}, but {} is on record here with public key {on_record}; nothing was changed. If its operator re-initialised it, run `agentfed peers remove {}` and join again; otherwise this is not the node you know",
                    m.node_id, m.public_key, m.node_id, m.node_id
                ),
                false,
            )
            .with_details(json!({
                "node_id": m.node_id,
                "public_key": m.public_key,
                "public_key_on_record": on_record,
            }))
        })
    }

    /// `leave`: closes the session with `peer` (audited as an operator
    /// action) and stops reconnecting; the peer stays known, and its
    /// handshakes are refused with `SESSION_LEFT` until it is joined again.
    pub async fn leave(&self, peer: &str) -> Result<Value, ErrorBody> {
        let p = peer.to_string();
        self.blocking(move |c| c.peer(&p)).await??;
        lock(&self.left).insert(peer.to_string());
        self.want(peer, false);
        let closed = self.close_by_operator(peer, LEFT).await;
        Ok(json!({"peer": peer, "session_closed": closed}))
    }

    /// `peers.remove`: forgets `peer`, closes its session (a peer no
    /// longer known keeps none) and stops redialing it. Forgetting comes
    /// first, so a redial racing with this finds the peer unknown.
    pub async fn forget(&self, peer: &str) -> Result<Value, ErrorBody> {
        let p = peer.to_string();
        self.blocking(move |c| c.remove_peer(&p)).await??;
        self.want(peer, false);
        let closed = self.close_by_operator(peer, PEER_REMOVED).await;
        Ok(json!({"removed": peer, "session_closed": closed}))
    }

    /// Closes `peer`'s session, if any, with `code` as an operator action
    /// (audited) and waits briefly for it to end; its id.
    async fn close_by_operator(&self, peer: &str, code: &str) -> Option<String> {
        let handle = self.take_session(peer, None)?;
        let id = handle.session_id().to_string();
        self.terminate(peer, &handle, code, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), handle.closed()).await;
        Some(id)
    }

    /// `sessions`: the live sessions, by peer.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = lock(&self.sessions)
            .iter()
            .filter(|(_, l)| !l.handle.is_closed())
            .map(|(p, l)| self.view(p, &l.handle))
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// `query`: sends one envelope synchronously over the live session
    /// (every outbound gate applies) and returns the acknowledgement with
    /// the handler's reply.
    ///
    /// With an idempotency key: a query answered under the key in the
    /// last 24 h is not sent again; its recorded result comes back with
    /// `"repeated": true` (or `IDEMPOTENCY_KEY_REUSED` for another
    /// request). The result is recorded once the peer answered; a query
    /// that got no answer (or a refusal) records nothing, so its retry is
    /// sent afresh.
    pub async fn query_keyed(
        &self,
        peer: &str,
        message_type: &str,
        payload: Value,
        timeout: Duration,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ErrorBody> {
        let Some(key) = idempotency_key else {
            return self.query(peer, message_type, payload, timeout).await;
        };
        let digest = crate::coordinator::query_digest(peer, message_type, &payload);
        let asked = self.query(peer, message_type, payload, timeout);
        self.run_keyed(key, digest, |seen| seen["repeated"] = json!(true), asked)
            .await
    }

    /// A keyed call: waits for its turn with `key`; returns the result
    /// recorded under it (marked by `mark_repeated`) if `digest`'s request
    /// has one, otherwise runs `call` and records its result (a failed
    /// call records nothing, so its retry runs afresh).
    async fn run_keyed(
        &self,
        key: &str,
        digest: String,
        mark_repeated: impl FnOnce(&mut Value),
        call: impl std::future::Future<Output = Result<Value, ErrorBody>>,
    ) -> Result<Value, ErrorBody> {
        let _turn = self.keyed_turn(key).await;
        let (k, d) = (key.to_string(), digest.clone());
        if let Some(mut seen) = self
            .blocking(move |c| c.idempotent_result(&k, &d))
            .await??
        {
            mark_repeated(&mut seen);
            return Ok(seen);
        }
        let result = call.await?;
        let k = key.to_string();
        let kept = self
            .blocking(move |c| c.remember_result(&k, &digest, result))
            .await??;
        Ok(kept)
    }

    /// Waits until no other query or broadcast of this daemon uses `key`:
    /// concurrent retries run one after the other, so a retry sent while
    /// the first call is in flight gets its recorded answer instead of
    /// asking again.
    async fn keyed_turn(&self, key: &str) -> KeyedTurn<'_> {
        let slot = Arc::clone(lock(&self.keyed_calls).entry(key.to_string()).or_default());
        let turn = Arc::clone(&slot).lock_owned().await;
        KeyedTurn {
            calls: &self.keyed_calls,
            key: key.to_string(),
            slot,
            _turn: turn,
        }
    }

    /// `query` without an idempotency key ([`Federation::query_keyed`]).
    pub async fn query(
        &self,
        peer: &str,
        message_type: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, ErrorBody> {
        let p = peer.to_string();
        // A suspended or evicted peer has no session for a reason: say
        // that, not "join it first".
        self.blocking(move |c| c.check_breaker(&p)).await??;
        let handle = self.live_handle(peer).ok_or_else(|| {
            err(
                "NO_SESSION",
                format!("no live session with {peer}; join it first (agentfed join ENDPOINT)"),
                false,
            )
        })?;
        let request = SendRequest {
            peer: peer.to_string(),
            message_type: message_type.to_string(),
            payload,
            budget: None,
            idempotency_key: None,
        };
        let session_id = handle.session_id().to_string();
        let (receipt, frame) = self
            .blocking(move |c| c.prepare_envelope_in(request, Some(session_id)))
            .await??;
        let priority = if frame.len() > BULK_THRESHOLD {
            Priority::Bulk
        } else {
            Priority::Interactive
        };
        let result = handle.request(priority, frame, timeout).await;
        let peer_s = peer.to_string();
        let id = receipt.envelope_id.clone();
        let mtype = message_type.to_string();
        let reply = match result {
            Ok(bytes) => serde_json::from_slice::<WireReply>(&bytes)
                .unwrap_or(WireReply::Refused("MALFORMED_REPLY".into())),
            Err(e) => {
                let code = e.code();
                let timed_out = matches!(e, TransportError::RequestTimeout);
                let _ = self
                    .blocking(move |c| {
                        if timed_out {
                            let _ = c.record_interaction(&peer_s, Interaction::Failure);
                        }
                        c.audit_event(
                            AuditEvent::new(
                                EventType::MessageTimeout,
                                format!("{mtype} query to {peer_s} failed: {code}"),
                            )
                            .with_peer(&peer_s)
                            .with_details(
                                json!({"envelope_id": id, "message_type": mtype, "code": code}),
                            ),
                        )
                    })
                    .await;
                return Err(err(code, format!("query to {peer} failed: {e}"), false));
            }
        };
        match reply {
            WireReply::Ack(ack) => {
                let status = ack.status;
                // The reply and reason are the peer's text: checked like
                // any inbound payload before the caller sees them.
                let checked = self
                    .blocking(move |c| {
                        let checked = c.check_reply(&peer_s, &mtype, ack.reply, ack.reason);
                        let fulfilled = checked.is_ok() && status != crate::coordinator::AckStatus::Rejected;
                        if fulfilled {
                            let _ = c.record_interaction(&peer_s, Interaction::Success);
                        }
                        let _ = c.audit_event(
                            AuditEvent::new(
                                EventType::MessageSent,
                                format!("{mtype} query answered by {peer_s}"),
                            )
                            .with_peer(&peer_s)
                            .with_details(json!({"envelope_id": id, "message_type": mtype, "state": "answered", "status": status})),
                        );
                        checked
                    })
                    .await?;
                let (reply, reason) = checked
                    .map_err(|e| err(e.code(), format!("the reply from {peer}: {e}"), false))?;
                Ok(json!({
                    "peer": peer,
                    "envelope_id": receipt.envelope_id,
                    "status": status,
                    "reply": reply,
                    "reason": reason,
                    "pii": receipt.pii,
                }))
            }
            WireReply::Refused(code) => {
                // Validated before anything records it: a peer's refusal
                // code is a constant of the protocol or nothing.
                let code = crate::transport::handshake::RejectCode::new(&code)
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| "REFUSED".into());
                let c2 = code.clone();
                let _ = self
                    .blocking(move |c| {
                        c.audit_event(
                            AuditEvent::new(
                                EventType::MessageRejected,
                                format!("{mtype} query refused by {peer_s}: {c2}"),
                            )
                            .with_peer(&peer_s)
                            .with_details(
                                json!({"envelope_id": id, "message_type": mtype, "reason": c2}),
                            ),
                        )
                    })
                    .await;
                Err(err(
                    &code,
                    format!("{peer} refused the query: {code}"),
                    false,
                ))
            }
        }
    }

    /// `wg.witness.fetch`: `peer`'s whole witness chain, page by page
    /// over the live session (`witness-request`, protocol §9.6), verified
    /// with the Ed25519 key of its manifest on record here. Returns the
    /// export text and what verified; a chain that does not verify is an
    /// error naming the first bad entry.
    pub async fn fetch_witness(&self, peer: &str, timeout: Duration) -> Result<Value, ErrorBody> {
        use crate::mesh::fetch::{
            DEFAULT_PAGE_ENTRIES, MAX_FETCH_ENTRIES, WitnessRequest, parse_page, verified_export,
        };
        let p = peer.to_string();
        let public_key_b64 = self
            .blocking(move |c| c.store().get_peer(&p))
            .await?
            .map_err(internal)?
            .map(|r| r.manifest.manifest.public_key)
            .ok_or_else(|| err("UNKNOWN_PEER", format!("{peer} is not a known peer"), true))?;
        let public_key = crate::identity::decode_key32("public_key", &public_key_b64)
            .map_err(|e| internal(e.reason))?;
        let bad_page = |reason: String| {
            err(
                "BAD_WITNESS_PAGE",
                format!("{peer} answered with a bad witness page: {reason}"),
                false,
            )
        };
        let mut entries = Vec::new();
        loop {
            let request = WitnessRequest {
                after_seq: entries.len() as u64,
                limit: DEFAULT_PAGE_ENTRIES,
            };
            let answer = self
                .query(
                    peer,
                    crate::envelope::WITNESS_REQUEST,
                    request.to_payload(),
                    timeout,
                )
                .await?;
            if answer["status"] != "replied" {
                let reason = answer["reason"].as_str().unwrap_or("no reason given");
                return Err(err(
                    "WITNESS_REFUSED",
                    format!(
                        "{peer} did not send its witness chain: {}",
                        crate::coordinator::clip(reason)
                    ),
                    false,
                ));
            }
            let page = parse_page(&answer["reply"], peer, request).map_err(bad_page)?;
            let done = page.entries.is_empty()
                || page.entries.last().is_some_and(|e| e.seq >= page.head_seq);
            entries.extend(page.entries);
            if entries.len() > MAX_FETCH_ENTRIES {
                return Err(bad_page(format!("more than {MAX_FETCH_ENTRIES} entries")));
            }
            if done {
                break;
            }
        }
        let (export, verified) = verified_export(peer, &public_key_b64, &public_key, &entries)
            .map_err(|e| {
                err(
                    "INVALID_WITNESS",
                    format!("{peer}'s witness chain does not verify with its manifest key: {e}"),
                    false,
                )
            })?;
        Ok(json!({
            "peer": peer,
            "public_key": public_key_b64,
            "entries": verified.entries,
            "head": verified.head,
            "export": export,
        }))
    }

    /// `broadcast`: a `query` to every peer with a live session; one result
    /// per peer (`ok` with the acknowledgement, or the error).
    ///
    /// With an idempotency key: the whole list of results is recorded
    /// under the key once every peer answered or failed; a retry within
    /// 24 h sends nothing and gets that list back, each result with
    /// `"repeated": true` (`IDEMPOTENCY_KEY_REUSED` for another request).
    pub async fn broadcast_keyed(
        &self,
        message_type: &str,
        payload: Value,
        timeout: Duration,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ErrorBody> {
        let Some(key) = idempotency_key else {
            return Ok(self.broadcast(message_type, payload, timeout).await);
        };
        let digest = crate::coordinator::broadcast_digest(message_type, &payload);
        let mark = |seen: &mut Value| {
            for result in seen.as_array_mut().into_iter().flatten() {
                result["repeated"] = json!(true);
            }
        };
        let asked = async { Ok(self.broadcast(message_type, payload, timeout).await) };
        self.run_keyed(key, digest, mark, asked).await
    }

    /// `broadcast` without an idempotency key
    /// ([`Federation::broadcast_keyed`]).
    pub async fn broadcast(&self, message_type: &str, payload: Value, timeout: Duration) -> Value {
        let peers: Vec<String> = self.sessions().into_iter().map(|s| s.peer).collect();
        let calls = peers.iter().map(|peer| {
            let payload = payload.clone();
            async move {
                match self.query(peer, message_type, payload, timeout).await {
                    Ok(result) => json!({"peer": peer, "ok": true, "result": result}),
                    Err(e) => json!({"peer": peer, "ok": false, "error": e}),
                }
            }
        });
        Value::Array(futures::future::join_all(calls).await)
    }
}

/// The refusal code if `peer` may no longer hold a session.
fn standing(c: &Coordinator, peer: &str) -> Option<&'static str> {
    let record = c.store().get_peer(peer).ok()??;
    match c.admit(&record.manifest) {
        Ok(Admission::Refused(code)) => Some(code),
        _ => None,
    }
}

/// Rate limit for auditing failed inbound handshakes (see
/// [`FAILURE_AUDIT_BURST`] and [`FAILURE_AUDIT_GLOBAL`]).
#[derive(Default)]
struct FailureThrottle {
    windows: HashMap<(std::net::IpAddr, &'static str), FailureWindow>,
    /// Failures recorded one by one in the current global window, and
    /// when it started (`None`: nothing recorded yet).
    global_recorded: u32,
    global_started: Option<Instant>,
}

/// The source a failure is throttled under: an IPv4 address (also when
/// written IPv4-mapped), or the /64 an IPv6 address is in (as its first
/// address).
fn failure_source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// How a source is named in a summary: `192.0.2.7`, `2001:db8::/64`.
fn source_label(source: std::net::IpAddr) -> String {
    match source {
        std::net::IpAddr::V6(v6) if !v6.is_unspecified() => format!("{v6}/64"),
        std::net::IpAddr::V6(_) => "other sources".to_string(),
        v4 => v4.to_string(),
    }
}

struct FailureWindow {
    started: Instant,
    recorded: u32,
    suppressed: u32,
}

impl FailureThrottle {
    /// Whether this failure is recorded in full (`false`: counted only).
    fn admit(&mut self, ip: std::net::IpAddr, code: &'static str, now: Instant) -> bool {
        let ip = failure_source(ip);
        let global_started = *self.global_started.get_or_insert(now);
        if now.saturating_duration_since(global_started) >= FAILURE_AUDIT_WINDOW {
            self.global_started = Some(now);
            self.global_recorded = 0;
        }
        let key = if self.windows.len() >= FAILURE_AUDIT_TRACKED
            && !self.windows.contains_key(&(ip, code))
        {
            (std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), code)
        } else {
            (ip, code)
        };
        let window = self.windows.entry(key).or_insert(FailureWindow {
            started: now,
            recorded: 0,
            suppressed: 0,
        });
        if window.recorded < FAILURE_AUDIT_BURST && self.global_recorded < FAILURE_AUDIT_GLOBAL {
            window.recorded += 1;
            self.global_recorded += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Ends the windows older than [`FAILURE_AUDIT_WINDOW`]; returns the
    /// failures each of them counted without recording.
    /// At most [`FAILURE_AUDIT_SUMMARIES`] sources are named; the rest are
    /// added up per code under the unspecified address.
    fn expire(&mut self, now: Instant) -> Vec<(std::net::IpAddr, &'static str, u32)> {
        let mut ended = Vec::new();
        self.windows.retain(|(ip, code), w| {
            if now.saturating_duration_since(w.started) < FAILURE_AUDIT_WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                ended.push((*ip, *code, w.suppressed));
            }
            false
        });
        // The busiest sources are the ones worth naming.
        ended.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let others = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        let mut summaries: Vec<(std::net::IpAddr, &'static str, u32)> = Vec::new();
        let mut named = 0;
        for (ip, code, count) in ended {
            if ip != others && named < FAILURE_AUDIT_SUMMARIES {
                named += 1;
                summaries.push((ip, code, count));
            } else if let Some(sum) = summaries
                .iter_mut()
                .find(|(i, c, _)| *i == others && *c == code)
            {
                sum.2 = sum.2.saturating_add(count);
            } else {
                summaries.push((others, code, count));
            }
        }
        summaries
    }
}

/// A delivery attempt's outcome on its way to be recorded.
struct Settlement {
    entry: OutboxEntry,
    result: Result<Vec<u8>, TransportError>,
    permit: OwnedSemaphorePermit,
}

/// Records a burst of delivery outcomes; the ids whose outcome could not
/// be recorded (they stay in the outbox and are retried).
fn settle_many(
    c: &Coordinator,
    settings: &TransportSection,
    outcomes: Vec<(OutboxEntry, Result<Vec<u8>, TransportError>)>,
) -> Settled {
    let mut failed = Vec::new();
    let mut acked = Vec::new();
    let mut bad_receipts = Vec::new();
    for (entry, result) in outcomes {
        match settle(c, settings, &entry, result) {
            Ok(Settle::Acknowledged(status, receipt)) => acked.push((entry, status, receipt)),
            Ok(Settle::Recorded) => {}
            Ok(Settle::BadReceipt) => {
                if !bad_receipts.contains(&entry.target) {
                    bad_receipts.push(entry.target.clone());
                }
            }
            Err(_) => failed.push(entry.envelope_id),
        }
    }
    for ((entry, _, _), result) in acked.iter().zip(c.delivered_many(&acked)) {
        if result.is_err() {
            failed.push(entry.envelope_id.clone());
        }
    }
    Settled {
        failed,
        bad_receipts,
    }
}

/// What recording a burst of delivery outcomes left to do.
#[derive(Debug, Default)]
struct Settled {
    /// Envelopes whose outcome could not be recorded (retried).
    failed: Vec<String>,
    /// Peers that answered with a missing or invalid receipt: their
    /// sessions are closed with [`BAD_RECEIPT`].
    bad_receipts: Vec<String>,
}

/// One delivery attempt's outcome, as [`settle`] recorded it.
enum Settle {
    /// Acknowledged, with the receipt if the peer signs them: the caller
    /// removes the entry.
    Acknowledged(AckStatus, Option<Receipt>),
    /// Recorded (final refusal, or rescheduled).
    Recorded,
    /// The reply's receipt does not prove it: rescheduled, and the
    /// session must go.
    BadReceipt,
}

/// Checks the receipt of a reply that would end an outbox entry
/// (an ack, or a final refusal) against the receiver's key, when the
/// receiver signs receipts (§10.4). `Ok(None)`: an older peer, unsigned.
fn check_receipt(
    c: &Coordinator,
    entry: &OutboxEntry,
    frame: &ReplyFrame,
) -> Result<Option<Receipt>, crate::receipt::ReceiptError> {
    let Ok(Some(key)) = c.receipt_key(&entry.target) else {
        return Ok(None);
    };
    let receipt = frame
        .receipt
        .as_ref()
        .ok_or(crate::receipt::ReceiptError::Missing)?;
    let (outcome, reason) = frame.outcome();
    let me = c.identity().node_id().as_str();
    // A refusal of a frame the receiver could not read names it by its
    // digest alone.
    let envelope_id = if outcome == "refused" && receipt.envelope_id.is_empty() {
        ""
    } else {
        entry.envelope_id.as_str()
    };
    receipt.check(
        &Expected {
            receiver: &entry.target,
            sender: me,
            envelope_id,
            frame: &entry.bytes,
            outcome,
            reason: &reason,
        },
        &key,
    )?;
    Ok(Some(receipt.clone()))
}

/// Records that `entry`'s reply carried no valid receipt: the entry stays
/// and is retried; the record says why.
fn bad_receipt(
    c: &Coordinator,
    settings: &TransportSection,
    entry: &OutboxEntry,
    error: &crate::receipt::ReceiptError,
) -> crate::coordinator::Result<Settle> {
    tracing::warn!(peer = %entry.target, envelope_id = %entry.envelope_id, "{error}; the message stays queued");
    c.audit_event(
        AuditEvent::new(
            EventType::SignatureInvalid,
            format!(
                "{} to {}: {error}; the message stays queued and the session is closed ({BAD_RECEIPT})",
                entry.envelope_id, entry.target
            ),
        )
        .with_peer(&entry.target)
        .with_details(json!({
            "envelope_id": entry.envelope_id,
            "what": "receipt",
            "code": BAD_RECEIPT,
            "reason": error.to_string(),
        })),
    )?;
    retry(c, settings, entry, BAD_RECEIPT)?;
    Ok(Settle::BadReceipt)
}

/// Records a delivery attempt's outcome in the outbox and the audit log,
/// except an acknowledgement, whose status is returned for
/// [`Coordinator::delivered_many`].
fn settle(
    c: &Coordinator,
    settings: &TransportSection,
    entry: &OutboxEntry,
    result: Result<Vec<u8>, TransportError>,
) -> crate::coordinator::Result<Settle> {
    let peer = entry.target.as_str();
    let frame = match result {
        Ok(bytes) => ReplyFrame::parse(&bytes).unwrap_or(ReplyFrame {
            reply: WireReply::Refused("MALFORMED_REPLY".into()),
            receipt: None,
        }),
        Err(e) => {
            if matches!(e, TransportError::RequestTimeout) {
                let _ = c.record_interaction(peer, Interaction::Failure);
            }
            return retry(c, settings, entry, e.code()).map(|()| Settle::Recorded);
        }
    };
    let ends_entry = match &frame.reply {
        WireReply::Ack(_) => true,
        WireReply::Refused(code) => FINAL_REFUSALS.contains(&code.as_str()),
    };
    // Only a reply that would end the entry must prove itself: a retry
    // changes nothing a forger could exploit.
    let receipt = if ends_entry {
        match check_receipt(c, entry, &frame) {
            Ok(receipt) => receipt,
            Err(e) => return bad_receipt(c, settings, entry, &e),
        }
    } else {
        None
    };
    match frame.reply {
        WireReply::Ack(ack) => Ok(Settle::Acknowledged(ack.status, receipt)),
        WireReply::Refused(code) if ends_entry => {
            c.refused_for_good_with(entry, &code, receipt.as_ref())?;
            Ok(Settle::Recorded)
        }
        WireReply::Refused(code) => {
            let code = crate::transport::handshake::RejectCode::new(&code)
                .map(|c| c.as_str().to_string())
                .unwrap_or_else(|| "REFUSED".into());
            retry(c, settings, entry, &code).map(|()| Settle::Recorded)
        }
    }
}

/// Milliseconds a delivery waits for its acknowledgement, per MiB of frame
/// past the first, on top of `[transport] request_timeout_ms`: a bulk frame
/// takes longer to transfer, and the receiver's PII scan and handler get
/// more time for it too ([`crate::pii::deadline_for_bytes`]). Without this
/// a 16 MiB share on a slow link or a busy receiver would time out, count
/// as the peer's failure and be sent again from the start.
pub const DELIVERY_MS_PER_EXTRA_MIB: u64 = 1_000;

/// How long a delivery of a `frame_bytes` frame waits for its
/// acknowledgement: `base_ms`, plus [`DELIVERY_MS_PER_EXTRA_MIB`] for each
/// MiB (or part) past the first.
pub fn delivery_timeout_ms(base_ms: u64, frame_bytes: usize) -> u64 {
    crate::limits::plus_per_extra_mib(base_ms, frame_bytes as u64, DELIVERY_MS_PER_EXTRA_MIB)
}

/// Reschedules with capped exponential backoff; audits `message_timeout`
/// when the attempt count reaches a power of two (once per escalation).
fn retry(
    c: &Coordinator,
    settings: &TransportSection,
    entry: &OutboxEntry,
    code: &str,
) -> crate::coordinator::Result<()> {
    let (base, max) = (settings.retry_base_ms, settings.retry_max_ms);
    let now = c.clock().now_ms();
    let backoff = move |attempts: u32| {
        base.saturating_mul(1u64 << (attempts.max(1) - 1).min(30))
            .min(max)
    };
    // The new count and its `message_timeout` record (when the count
    // reaches a power of two: once per escalation) commit together.
    let event_for = |attempts: u32, next: u64| {
        let delay = next.saturating_sub(now);
        attempts.is_power_of_two().then(|| {
            AuditEvent::new(
                EventType::MessageTimeout,
                format!(
                    "{} to {} not acknowledged ({code}); attempt {attempts}, retrying in {delay} ms",
                    entry.envelope_id, entry.target
                ),
            )
            .with_peer(&entry.target)
            .with_details(json!({
                "envelope_id": entry.envelope_id,
                "code": code,
                "attempts": attempts,
                "retry_in_ms": delay,
            }))
        })
    };
    let rescheduled = c.store().outbox_reschedule_recorded(
        c.audit().recorder(),
        &entry.envelope_id,
        move |attempts| now.saturating_add(backoff(attempts)),
        event_for,
    )?;
    if rescheduled.is_some() {
        c.note_delivery_error(&entry.envelope_id, code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn a_bulk_delivery_waits_longer_for_its_acknowledgement() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(delivery_timeout_ms(10_000, 2_000), 10_000);
        assert_eq!(delivery_timeout_ms(10_000, MIB), 10_000);
        assert_eq!(delivery_timeout_ms(10_000, MIB + 1), 11_000);
        assert_eq!(delivery_timeout_ms(10_000, 16 * MIB + 4096), 26_000);
    }

    #[test]
    fn failed_handshakes_past_the_burst_are_counted_then_summarised() {
        let mut throttle = FailureThrottle::default();
        let start = Instant::now();
        let scanner = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
        let recorded = (0..25)
            .filter(|_| throttle.admit(scanner, "TLS_ERROR", start))
            .count();
        assert_eq!(recorded as u32, FAILURE_AUDIT_BURST);
        // Another kind of failure, or another address, has its own burst.
        assert!(throttle.admit(scanner, "HANDSHAKE_TIMEOUT", start));
        assert!(throttle.admit(other, "TLS_ERROR", start));
        // Nothing to summarise before the window ends.
        assert!(throttle.expire(start + Duration::from_secs(1)).is_empty());
        let later = start + FAILURE_AUDIT_WINDOW;
        assert_eq!(throttle.expire(later), vec![(scanner, "TLS_ERROR", 15)]);
        // A new window starts from scratch.
        assert!(throttle.admit(scanner, "TLS_ERROR", later));
    }

    /// One IPv6 host holds a /64: its addresses share one burst (keyed on
    /// the full address, each would get its own).
    #[test]
    fn an_ipv6_scan_from_one_slash_64_gets_one_burst() {
        let mut throttle = FailureThrottle::default();
        let now = Instant::now();
        let base: u128 = 0x2001_0db8_0000_0007_0000_0000_0000_0000;
        let recorded = (0..1_000u128)
            .filter(|i| {
                let ip = IpAddr::V6(std::net::Ipv6Addr::from(base + i * 7919 + 1));
                throttle.admit(ip, "TLS_ERROR", now)
            })
            .count();
        assert_eq!(recorded as u32, FAILURE_AUDIT_BURST);
        // The next /64 is another source.
        let next = IpAddr::V6(std::net::Ipv6Addr::from(base + (1 << 64)));
        assert!(throttle.admit(next, "TLS_ERROR", now));
        // An IPv4-mapped address is its IPv4 address.
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        for _ in 0..FAILURE_AUDIT_BURST {
            assert!(throttle.admit(v4, "TLS_ERROR", now));
        }
        assert!(!throttle.admit(mapped, "TLS_ERROR", now));
        let summaries = throttle.expire(now + FAILURE_AUDIT_WINDOW);
        let source = failure_source(IpAddr::V6(std::net::Ipv6Addr::from(base + 5)));
        assert!(summaries.contains(&(source, "TLS_ERROR", 1_000 - FAILURE_AUDIT_BURST)));
        assert_eq!(source_label(source), "2001:db8:0:7::/64");
    }

    /// Many sources together record at most the global cap per window;
    /// every other failure is counted, and the summaries are bounded.
    #[test]
    fn failures_from_many_sources_are_capped_globally() {
        let mut throttle = FailureThrottle::default();
        let now = Instant::now();
        let sources = 2_000u32;
        let recorded = (0..sources)
            .filter(|i| {
                let ip = IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i));
                throttle.admit(ip, "TLS_ERROR", now)
            })
            .count();
        assert_eq!(recorded as u32, FAILURE_AUDIT_GLOBAL);
        let summaries = throttle.expire(now + FAILURE_AUDIT_WINDOW);
        assert!(
            summaries.len() <= FAILURE_AUDIT_SUMMARIES + 1,
            "{}",
            summaries.len()
        );
        let counted: u32 = summaries.iter().map(|s| s.2).sum();
        assert_eq!(counted, sources - FAILURE_AUDIT_GLOBAL);
        // The next window records again.
        let later = now + FAILURE_AUDIT_WINDOW;
        assert!(throttle.admit(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), "TLS_ERROR", later));
    }

    #[test]
    fn tracked_windows_are_bounded_under_a_scan_from_many_addresses() {
        let mut throttle = FailureThrottle::default();
        let now = Instant::now();
        for i in 0..(FAILURE_AUDIT_TRACKED as u32 + 5_000) {
            // A different /64 each.
            let ip = IpAddr::V6(std::net::Ipv6Addr::from((u128::from(i) + 1) << 64));
            throttle.admit(ip, "TLS_ERROR", now);
        }
        assert_eq!(throttle.windows.len(), FAILURE_AUDIT_TRACKED + 1);
        let summaries = throttle.expire(now + FAILURE_AUDIT_WINDOW);
        // The global cap recorded the first ones; everything else is
        // counted, in a bounded number of summaries.
        assert!(summaries.len() <= FAILURE_AUDIT_SUMMARIES + 1);
        let counted: u32 = summaries.iter().map(|s| s.2).sum();
        assert_eq!(
            counted,
            FAILURE_AUDIT_TRACKED as u32 + 5_000 - FAILURE_AUDIT_GLOBAL
        );
        assert!(throttle.windows.is_empty());
    }
}
