//! The federation wire: TLS 1.3 with pinned self-signed certificates,
//! WebSocket (with permessage-deflate) on top, a mutual handshake bound to
//! the TLS session, and prioritised multiplexed streams.
//!
//! Layers, bottom up (each in its own file; `docs/protocol.md` is the
//! normative description for independent implementations):
//!
//! * [`tls`]: rustls configurations (TLS 1.3 only, ring provider), the
//!   [`Pin`] rules and the exporter used for channel binding.
//! * [`ws`]: the HTTP/1.1 upgrade to WebSocket on path [`WS_PATH`],
//!   permessage-deflate negotiation and size caps, and a raw WebSocket
//!   connection ([`ws::WsConn`]) used by the handshake and by adversarial
//!   tests.
//! * [`handshake`]: the `hello` / `auth` / `session` exchange, the exact
//!   signed transcript, and the [`HandshakePolicy`] hook through which the
//!   caller admits or refuses a peer.
//! * [`mux`]: frame layout and priority classes of the multiplexed streams.
//! * [`session`]: an established [`Connection`]: sending, receiving,
//!   requests with replies, renewal, heartbeats, idle and expiry handling.
//! * [`Listener`] and [`connect`]: accepting and dialing.
//!
//! Every failure is a [`TransportError`] whose [`TransportError::code`] is
//! a constant string (suitable for audit records and for sending to the
//! peer); no error text ever echoes peer input.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::identity::{Identity, ManifestError, SignedManifest};

mod endpoint;
pub mod handshake;
pub mod mux;
pub mod session;
pub mod tls;
pub mod ws;

pub use endpoint::{Accepted, Backoff, HandshakeFailure, Listener, connect};
pub use handshake::{
    AcceptAll, HandshakePolicy, PeerContext, PinOutcome, RejectCode, Rejection, Session,
};
pub use mux::Priority;
pub use session::{
    CloseReason, Connection, ConnectionEvent, ConnectionHandle, EventKind, Incoming,
    IncomingMessage, Responder, StreamTx,
};
pub use tls::Pin;

/// The WebSocket path every node serves.
pub const WS_PATH: &str = "/agentfed/v1";

/// The WebSocket subprotocol token both sides must name.
pub const WS_SUBPROTOCOL: &str = "agentfed.v1";

/// Label of the TLS exporter (RFC 8446 §7.5) that binds the handshake
/// signatures to one TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-agentfed-v1";

/// Default largest logical message (one stream), in bytes: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Largest payload of one stream frame, in bytes: 64 KiB.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Largest WebSocket message accepted, compressed or inflated: a stream
/// frame header plus [`MAX_CHUNK`]. Larger frames (and compressed frames
/// that inflate past it) close the connection with `MESSAGE_TOO_LARGE`.
pub const MAX_WS_MESSAGE: usize = mux::HEADER_LEN + MAX_CHUNK;

/// Default size from which stream frames are compressed, in bytes (see
/// `docs/protocol.md` for the measurement behind it).
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 8 * 1024;

/// Default socket send and receive buffer size, in bytes: 256 KiB.
pub const DEFAULT_SOCKET_BUFFER: u32 = 256 * 1024;

/// Session lifetime granted at the handshake and by each renewal: 1 h.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;

/// Hard cap of a session's life from its creation: 24 h.
pub const SESSION_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// A byte budget shared by connections for what peers send them: the
/// per-connection limits (`max_inbound_buffered`) bound one peer, this
/// bounds all of them together. Every byte of a peer-initiated message
/// counts from its arrival until the application takes the message. Once
/// the pool is full, a stream that grows past [`MAX_CHUNK`] is reset with
/// `RESOURCE_EXHAUSTED` (the sender retries later); messages of one
/// frame's size are still accepted and counted, so pings and
/// acknowledgements get through while bulk transfers wait. Refusing,
/// rather than pausing the socket, cannot deadlock: paused connections
/// holding partial messages could fill the pool with messages none of
/// which can complete.
#[derive(Debug)]
pub struct InboundPool {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl InboundPool {
    /// A pool of `limit` bytes.
    pub fn new(limit: usize) -> Arc<InboundPool> {
        Arc::new(InboundPool {
            used: std::sync::atomic::AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The pool's size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts `bytes` more, if they fit or `force`.
    pub(crate) fn reserve(&self, bytes: usize, force: bool) -> bool {
        use std::sync::atomic::Ordering;
        if force {
            self.used.fetch_add(bytes, Ordering::SeqCst);
            return true;
        }
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok()
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Called for connection events (heartbeats, renewals, refusals, close).
/// Runs on the connection's task: keep it short and non-blocking.
pub type EventCallback = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// Tunables of listeners, dialers and connections.
#[derive(Clone)]
pub struct TransportConfig {
    /// Largest logical message (a whole stream) accepted or sent.
    pub max_message_size: usize,
    /// Payload bytes per stream frame (1..=[`MAX_CHUNK`]).
    pub chunk_size: usize,
    /// Offer / accept permessage-deflate.
    pub compression: bool,
    /// Frames smaller than this travel uncompressed.
    pub compression_threshold: usize,
    /// Deflate level (0-9).
    pub compression_level: u32,
    /// Close a connection on which nothing arrived for this long.
    pub idle_timeout: Duration,
    /// Interval of WebSocket pings (each answered pong is reported as
    /// [`EventKind::Heartbeat`]).
    pub heartbeat_interval: Duration,
    /// Deadline for TCP + TLS + WebSocket upgrade + handshake, per
    /// connection; slower peers are dropped.
    pub handshake_timeout: Duration,
    /// Session lifetime per grant (handshake or renewal), ms.
    pub session_ttl_ms: u64,
    /// Cap of a session's life from creation, ms.
    pub session_max_ms: u64,
    /// Permit `ws://` (no TLS). Weaker: see `docs/protocol.md`.
    pub allow_plaintext: bool,
    /// Most peer-initiated streams being received at once.
    pub max_inbound_streams: usize,
    /// Most bytes held in partial inbound messages at once.
    pub max_inbound_buffered: usize,
    /// Most locally opened streams (and replies) in flight at once;
    /// further opens wait.
    pub max_outbound_streams: usize,
    /// Frames queued per outbound stream before its writer waits.
    pub stream_queue_frames: usize,
    /// Complete inbound messages buffered for the application before the
    /// connection stops reading.
    pub incoming_queue: usize,
    /// Most handshakes in progress per listener; more connections are
    /// dropped at once.
    pub max_pending_handshakes: usize,
    /// `SO_SNDBUF` and `SO_RCVBUF` for every connection (listener and
    /// dialer), or `None` for the kernel's autotuning. Small buffers keep
    /// a bulk transfer from queueing megabytes in the kernel ahead of a
    /// ping (priorities act only on what is not yet in the socket); they
    /// also cap one connection's throughput near buffer / RTT. See
    /// `docs/protocol.md` §7 for the measurement.
    pub socket_buffer: Option<u32>,
    /// Bytes of inbound messages (being received, or complete and not yet
    /// taken by the application) that all connections sharing this pool
    /// may hold together, or `None` for per-connection limits only.
    pub inbound_pool: Option<Arc<InboundPool>>,
    /// Time source for session timestamps and expiry.
    pub clock: Arc<dyn Clock>,
    /// Event callback, if any.
    pub on_event: Option<EventCallback>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_size: DEFAULT_MAX_MESSAGE,
            chunk_size: MAX_CHUNK,
            compression: true,
            compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
            compression_level: 1,
            idle_timeout: Duration::from_secs(90),
            heartbeat_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            session_ttl_ms: SESSION_TTL_MS,
            session_max_ms: SESSION_MAX_MS,
            allow_plaintext: false,
            max_inbound_streams: 256,
            max_inbound_buffered: 64 * 1024 * 1024,
            max_outbound_streams: 256,
            stream_queue_frames: 4,
            incoming_queue: 256,
            max_pending_handshakes: 64,
            socket_buffer: Some(DEFAULT_SOCKET_BUFFER),
            inbound_pool: None,
            clock: Arc::new(SystemClock),
            on_event: None,
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("max_message_size", &self.max_message_size)
            .field("chunk_size", &self.chunk_size)
            .field("compression", &self.compression)
            .field("compression_threshold", &self.compression_threshold)
            .field("compression_level", &self.compression_level)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("session_ttl_ms", &self.session_ttl_ms)
            .field("session_max_ms", &self.session_max_ms)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("max_inbound_streams", &self.max_inbound_streams)
            .field("max_inbound_buffered", &self.max_inbound_buffered)
            .field("max_outbound_streams", &self.max_outbound_streams)
            .field("stream_queue_frames", &self.stream_queue_frames)
            .field("incoming_queue", &self.incoming_queue)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("socket_buffer", &self.socket_buffer)
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    /// The chunk size actually used (clamped to 1..=[`MAX_CHUNK`]).
    pub(crate) fn chunk(&self) -> usize {
        self.chunk_size.clamp(1, MAX_CHUNK)
    }
}

/// Which end of a connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Dialed the connection; opens odd-numbered streams.
    Client,
    /// Accepted the connection; opens even-numbered streams.
    Server,
}

impl Role {
    /// The role byte in the handshake transcript: `C` (0x43) or `S` (0x53).
    pub fn transcript_byte(self) -> u8 {
        match self {
            Role::Client => b'C',
            Role::Server => b'S',
        }
    }

    /// The other end's role.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// This node as the transport presents it: its keys and its signed
/// manifest (whose exact JSON bytes are what the peer hashes).
///
/// Clones share the manifest: [`LocalNode::replace_manifest`] (after `wg
/// rotate` re-signed it) changes what every listener and dialer presents
/// from the next handshake on. A handshake takes one [`LocalNode::snapshot`]
/// so that it hashes the bytes it sent.
#[derive(Clone)]
pub struct LocalNode {
    identity: Arc<Identity>,
    presented: Arc<std::sync::RwLock<Presented>>,
}

/// One signed manifest and its exact JSON bytes.
#[derive(Clone)]
struct Presented {
    manifest: SignedManifest,
    json: Arc<[u8]>,
}

impl fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalNode")
            .field("node_id", &self.manifest().manifest.node_id)
            .finish_non_exhaustive()
    }
}

impl LocalNode {
    /// Pairs `identity` with its signed manifest, checking that the
    /// manifest verifies and names this identity's Ed25519 key and TLS
    /// certificate (a node never presents a manifest its peers would
    /// refuse).
    pub fn new(identity: Arc<Identity>, manifest: SignedManifest) -> Result<Self, TransportError> {
        check_own_manifest(&identity, &manifest)?;
        Ok(Self::new_unchecked(identity, manifest))
    }

    /// Like [`LocalNode::new`] without any check: the manifest is sent as
    /// is. Only for tests that play a lying or broken peer.
    pub fn new_unchecked(identity: Arc<Identity>, manifest: SignedManifest) -> Self {
        let json: Arc<[u8]> = manifest.to_json().into();
        LocalNode {
            identity,
            presented: Arc::new(std::sync::RwLock::new(Presented { manifest, json })),
        }
    }

    /// Presents `manifest` from the next handshake on, in this node and
    /// every clone of it, after the same checks as [`LocalNode::new`].
    pub fn replace_manifest(&self, manifest: SignedManifest) -> Result<(), TransportError> {
        check_own_manifest(&self.identity, &manifest)?;
        let json: Arc<[u8]> = manifest.to_json().into();
        *self.presented.write().unwrap_or_else(|p| p.into_inner()) = Presented { manifest, json };
        Ok(())
    }

    /// A copy that keeps presenting today's manifest whatever
    /// [`LocalNode::replace_manifest`] does later (one per handshake).
    pub fn snapshot(&self) -> LocalNode {
        LocalNode {
            identity: Arc::clone(&self.identity),
            presented: Arc::new(std::sync::RwLock::new(self.current())),
        }
    }

    fn current(&self) -> Presented {
        self.presented
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The identity (keys, certificate).
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The signed manifest presented now.
    pub fn manifest(&self) -> SignedManifest {
        self.current().manifest
    }

    /// The exact manifest JSON bytes sent in `hello` now.
    pub fn manifest_json(&self) -> Arc<[u8]> {
        self.current().json
    }
}

/// Checks that `manifest` verifies and names `identity`'s Ed25519 key and
/// TLS certificate.
fn check_own_manifest(
    identity: &Identity,
    manifest: &SignedManifest,
) -> Result<(), TransportError> {
    manifest.verify().map_err(TransportError::from_manifest)?;
    if manifest.manifest.public_key != identity.public_key_b64()
        || manifest.manifest.tls_fingerprint != identity.tls_fingerprint()
    {
        return Err(TransportError::BadManifest(ManifestError::InvalidField {
            field: "public_key",
            reason: "manifest does not belong to this identity",
        }));
    }
    Ok(())
}

/// Every way the transport fails. `Display` is the constant
/// [`TransportError::code`] (plus the peer's or policy's constant code for
/// rejections); nothing echoes peer input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The presented certificate does not match the pinned fingerprint, or
    /// the peer's manifest key does not match the pinned public key.
    #[error("PIN_MISMATCH")]
    PinMismatch,
    /// The peer's manifest names a TLS fingerprint other than the
    /// certificate it presented.
    #[error("CERT_MISMATCH")]
    CertMismatch,
    /// The peer's manifest is malformed or breaks a field grammar.
    #[error("BAD_MANIFEST")]
    BadManifest(ManifestError),
    /// A manifest or handshake signature does not verify.
    #[error("BAD_SIGNATURE")]
    BadSignature,
    /// The connection did not complete its handshake in time.
    #[error("HANDSHAKE_TIMEOUT")]
    HandshakeTimeout,
    /// A handshake policy refused: ours (`by_peer == false`) or the peer's.
    #[error("REJECTED({code})")]
    Rejected {
        /// The constant reason code.
        code: RejectCode,
        /// Whether the peer sent the refusal.
        by_peer: bool,
    },
    /// The peer broke the protocol; the detail is a constant.
    #[error("PROTOCOL_ERROR")]
    ProtocolError(&'static str),
    /// The peer speaks another protocol version.
    #[error("UNSUPPORTED_VERSION")]
    UnsupportedVersion,
    /// A message or frame exceeds its size cap (including compressed
    /// frames that inflate past it).
    #[error("MESSAGE_TOO_LARGE")]
    MessageTooLarge,
    /// `ws://` without [`TransportConfig::allow_plaintext`].
    #[error("PLAINTEXT_NOT_ALLOWED")]
    PlaintextNotAllowed,
    /// The endpoint URL is not usable; the detail is a constant.
    #[error("BAD_ENDPOINT")]
    BadEndpoint(&'static str),
    /// TLS failed (other than a pin mismatch); rustls' constant description.
    #[error("TLS_ERROR")]
    Tls(String),
    /// A socket error.
    #[error("IO_ERROR")]
    Io(std::io::ErrorKind),
    /// The connection is closed; the code says why (see [`CloseReason`]).
    #[error("CONNECTION_CLOSED({0})")]
    ConnectionClosed(String),
    /// Nothing arrived for the idle timeout.
    #[error("IDLE_TIMEOUT")]
    IdleTimeout,
    /// The session's lifetime is over.
    #[error("SESSION_EXPIRED")]
    SessionExpired,
    /// A request got no reply in time.
    #[error("REQUEST_TIMEOUT")]
    RequestTimeout,
    /// The peer (or this side) reset the stream; the code is constant.
    #[error("STREAM_RESET({0})")]
    StreamReset(&'static str),
    /// No more stream ids on this connection (reconnect).
    #[error("STREAM_IDS_EXHAUSTED")]
    StreamIdsExhausted,
    /// Too many handshakes in progress on the listener.
    #[error("TOO_MANY_HANDSHAKES")]
    TooManyHandshakes,
    /// Local configuration or key material is unusable; constant detail.
    #[error("CONFIG_ERROR")]
    Config(&'static str),
}

impl TransportError {
    /// The constant code of this error (what audit records and peers see).
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::PinMismatch => "PIN_MISMATCH",
            TransportError::CertMismatch => "CERT_MISMATCH",
            TransportError::BadManifest(_) => "BAD_MANIFEST",
            TransportError::BadSignature => "BAD_SIGNATURE",
            TransportError::HandshakeTimeout => "HANDSHAKE_TIMEOUT",
            TransportError::Rejected { .. } => "REJECTED",
            TransportError::ProtocolError(_) => "PROTOCOL_ERROR",
            TransportError::UnsupportedVersion => "UNSUPPORTED_VERSION",
            TransportError::MessageTooLarge => "MESSAGE_TOO_LARGE",
            TransportError::PlaintextNotAllowed => "PLAINTEXT_NOT_ALLOWED",
            TransportError::BadEndpoint(_) => "BAD_ENDPOINT",
            TransportError::Tls(_) => "TLS_ERROR",
            TransportError::Io(_) => "IO_ERROR",
            TransportError::ConnectionClosed(_) => "CONNECTION_CLOSED",
            TransportError::IdleTimeout => "IDLE_TIMEOUT",
            TransportError::SessionExpired => "SESSION_EXPIRED",
            TransportError::RequestTimeout => "REQUEST_TIMEOUT",
            TransportError::StreamReset(_) => "STREAM_RESET",
            TransportError::StreamIdsExhausted => "STREAM_IDS_EXHAUSTED",
            TransportError::TooManyHandshakes => "TOO_MANY_HANDSHAKES",
            TransportError::Config(_) => "CONFIG_ERROR",
        }
    }

    /// What an operator needs beyond the code, for the errors whose code
    /// alone does not say it (e.g. `IO_ERROR` → "connection refused"):
    /// the OS error kind or the constant detail. Never peer-supplied text.
    pub fn detail(&self) -> Option<String> {
        match self {
            TransportError::Io(kind) => Some(kind.to_string()),
            TransportError::Tls(detail) => Some(detail.clone()),
            TransportError::BadEndpoint(detail) | TransportError::ProtocolError(detail) => {
                Some((*detail).to_string())
            }
            _ => None,
        }
    }

    /// Maps a manifest verification failure: signature failures become
    /// [`TransportError::BadSignature`], everything else
    /// [`TransportError::BadManifest`].
    pub fn from_manifest(e: ManifestError) -> Self {
        match e {
            ManifestError::BadSignature => TransportError::BadSignature,
            other => TransportError::BadManifest(other),
        }
    }
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io(e.kind())
    }
}

/// `N` bytes from the OS random number generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], TransportError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| TransportError::Config("OS randomness unavailable"))?;
    Ok(out)
}
