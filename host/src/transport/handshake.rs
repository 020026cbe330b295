//! The mutual handshake, run over the WebSocket before any stream frame.
//!
//! ```text
//! client                                             server
//!   HELLO(version 1, nonce_c, manifest_c)  ──────────►  verify manifest_c
//!   verify manifest_s, pin, cert binding   ◄──────────  HELLO(1, nonce_s, manifest_s)
//!   policy(server)
//!   AUTH(sig_c over transcript('C', nonce_s)) ───────►  verify sig_c; policy(client)
//!   verify sig_s                           ◄──────────  AUTH(sig_s over transcript('S', nonce_c))
//!                                          ◄──────────  SESSION(id, expires_at_ms, max_expires_at_ms)
//! ```
//!
//! Either side may answer any step with `REJECT(code)` and close. The
//! transcript each signature covers is, byte for byte ([`transcript`]):
//!
//! ```text
//! "agentfed-handshake-v1\n"       22 bytes
//! role of the signer              1 byte: 'C' (0x43) or 'S' (0x53)
//! exporter                        32 bytes: TLS-Exporter("EXPORTER-agentfed-v1", no context, 32)
//! the OTHER side's nonce          32 bytes
//! SHA-256(client manifest JSON)   32 bytes (the exact bytes sent in the client's HELLO)
//! SHA-256(server manifest JSON)   32 bytes (the exact bytes sent in the server's HELLO)
//! ```
//!
//! The exporter differs for every TLS session, so a signature captured on
//! one connection (a relay, a replay) never verifies on another.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::tls::Pin;
use super::ws::{WsConn, is_code};
use super::{LocalNode, Role, TransportConfig, TransportError, random_bytes};
use crate::identity::{MAX_MANIFEST_BYTES, SignedManifest, verify_ed25519};

/// Handshake protocol version carried in `HELLO`.
pub const HANDSHAKE_VERSION: u8 = 1;

/// Domain-separation prefix of the signed transcript.
pub const HANDSHAKE_DOMAIN: &[u8] = b"agentfed-handshake-v1\n";

/// Domain-separation prefix of the plaintext (`ws://`) binding.
pub const PLAINTEXT_BINDING_DOMAIN: &[u8] = b"agentfed-plaintext-binding-v1\n";

/// `HELLO`: version, 32-byte nonce, signed manifest JSON.
pub const MSG_HELLO: u8 = 0x01;
/// `AUTH`: 64-byte Ed25519 signature over the transcript.
pub const MSG_AUTH: u8 = 0x02;
/// `SESSION`: 16-byte id, expiry, cap (server to client).
pub const MSG_SESSION: u8 = 0x03;
/// `REJECT`: a constant reason code.
pub const MSG_REJECT: u8 = 0x04;

/// Length of the signed transcript in bytes.
pub const TRANSCRIPT_LEN: usize = 22 + 1 + 32 + 32 + 32 + 32;

/// Reject code: the peer is unknown and this node does not accept new peers.
pub const UNKNOWN_PEER: &str = "UNKNOWN_PEER";
/// Reject code: the peer is suspended by the breaker.
pub const PEER_SUSPENDED: &str = "PEER_SUSPENDED";
/// Reject code: the peer is evicted.
pub const PEER_EVICTED: &str = "PEER_EVICTED";
/// Reject code: the peer's trust does not allow a session.
pub const UNTRUSTED: &str = "UNTRUSTED";

/// A constant reason code (`[A-Z][A-Z0-9_]{0,63}`) in a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RejectCode(String);

impl RejectCode {
    /// Validates a code.
    pub fn new(code: &str) -> Option<RejectCode> {
        is_code(code).then(|| RejectCode(code.to_string()))
    }

    /// A code from a constant; an invalid constant becomes `REJECTED`.
    pub fn from_static(code: &'static str) -> RejectCode {
        RejectCode::new(code).unwrap_or_else(|| RejectCode("REJECTED".into()))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy's refusal of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Sent to the peer and returned as [`TransportError::Rejected`].
    pub code: RejectCode,
}

impl Rejection {
    /// A refusal with a constant code (e.g. [`PEER_SUSPENDED`]).
    pub fn new(code: &'static str) -> Rejection {
        Rejection {
            code: RejectCode::from_static(code),
        }
    }
}

/// How the client came to trust the server (or, server side, that the
/// client was authenticated by its Ed25519 signature alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// The certificate matched the pinned fingerprint.
    Fingerprint,
    /// The manifest carried the pinned Ed25519 key and names the
    /// presented certificate.
    PublicKey,
    /// Trust on first use: this certificate fingerprint was accepted
    /// because the peer's manifest names it.
    NewPeer {
        /// The fingerprint now trusted.
        fingerprint: String,
    },
    /// Server side: the client proved its manifest key over this TLS
    /// session (there are no client certificates).
    Inbound,
}

/// What a [`HandshakePolicy`] sees about the peer. The manifest has been
/// verified (signature and field grammars). On the client the server is
/// proven by its certificate (pinned, or bound by its manifest); on the
/// server the client has proven its key by the `AUTH` signature.
#[derive(Debug)]
pub struct PeerContext<'a> {
    /// This node's role.
    pub local_role: Role,
    /// The peer's verified manifest.
    pub manifest: &'a SignedManifest,
    /// The certificate the server presented (client side, TLS only).
    pub cert_fingerprint: Option<&'a str>,
    /// How trust was established.
    pub pin: &'a PinOutcome,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// Whether the connection runs over TLS.
    pub encrypted: bool,
}

/// Admits or refuses a peer during the handshake, with a constant code
/// (unknown and not accepting new peers, suspended, evicted, untrusted…).
/// Called on the client after the server's `HELLO` verified, on the server
/// after the client's `AUTH` verified. Runs on the connection task: keep
/// it quick.
pub trait HandshakePolicy: Send + Sync {
    /// `Ok` admits the peer; `Err` refuses it with the rejection's code.
    fn authorize(&self, peer: &PeerContext<'_>) -> Result<(), Rejection>;
}

impl<F> HandshakePolicy for F
where
    F: Fn(&PeerContext<'_>) -> Result<(), Rejection> + Send + Sync,
{
    fn authorize(&self, peer: &PeerContext<'_>) -> Result<(), Rejection> {
        self(peer)
    }
}

/// A policy that admits every authenticated peer.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl HandshakePolicy for AcceptAll {
    fn authorize(&self, _peer: &PeerContext<'_>) -> Result<(), Rejection> {
        Ok(())
    }
}

/// The result of a completed handshake.
#[derive(Debug, Clone)]
pub struct Session {
    /// 16 random bytes chosen by the server, lowercase hex.
    pub session_id: String,
    /// This node's role.
    pub role: Role,
    /// The peer's verified manifest.
    pub peer: SignedManifest,
    /// The exact manifest bytes the peer sent.
    pub peer_manifest_json: Arc<[u8]>,
    /// Fingerprint of the certificate the server presented (client side
    /// over TLS; `None` on the server and on plaintext).
    pub peer_cert_fingerprint: Option<String>,
    /// How the peer came to be trusted.
    pub pin: PinOutcome,
    /// Server side: creation time on the server's clock; client side: when
    /// the client received `SESSION`, on its clock (ms since the epoch).
    pub created_at_ms: u64,
    /// Expiry (server's clock), ms since the epoch; renewals move it.
    pub expires_at_ms: u64,
    /// Renewals never move the expiry past this (creation + 24 h).
    pub max_expires_at_ms: u64,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// Whether the connection runs over TLS.
    pub encrypted: bool,
    /// Whether permessage-deflate was negotiated.
    pub compression: bool,
}

/// One handshake message (a binary WebSocket message; first byte = type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeMessage {
    /// `0x01 | version u8 | nonce [32] | manifest JSON (1..=16384 bytes)`.
    Hello {
        /// Protocol version ([`HANDSHAKE_VERSION`]).
        version: u8,
        /// Fresh random nonce.
        nonce: [u8; 32],
        /// Signed manifest JSON, exact bytes.
        manifest_json: Vec<u8>,
    },
    /// `0x02 | signature [64]`.
    Auth {
        /// Ed25519 signature over [`transcript`].
        signature: [u8; 64],
    },
    /// `0x03 | id [16] | expires_at_ms u64 BE | max_expires_at_ms u64 BE`.
    Session {
        /// Session id (raw).
        id: [u8; 16],
        /// Expiry, ms since the epoch.
        expires_at_ms: u64,
        /// Cap for renewals, ms since the epoch.
        max_expires_at_ms: u64,
    },
    /// `0x04 | ASCII code ([A-Z][A-Z0-9_]{0,63})`.
    Reject {
        /// Why.
        code: RejectCode,
    },
}

impl HandshakeMessage {
    /// Serialises to the wire layout (see the variants).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            HandshakeMessage::Hello {
                version,
                nonce,
                manifest_json,
            } => {
                let mut out = Vec::with_capacity(34 + manifest_json.len());
                out.push(MSG_HELLO);
                out.push(*version);
                out.extend_from_slice(nonce);
                out.extend_from_slice(manifest_json);
                out
            }
            HandshakeMessage::Auth { signature } => {
                let mut out = Vec::with_capacity(65);
                out.push(MSG_AUTH);
                out.extend_from_slice(signature);
                out
            }
            HandshakeMessage::Session {
                id,
                expires_at_ms,
                max_expires_at_ms,
            } => {
                let mut out = Vec::with_capacity(33);
                out.push(MSG_SESSION);
                out.extend_from_slice(id);
                out.extend_from_slice(&expires_at_ms.to_be_bytes());
                out.extend_from_slice(&max_expires_at_ms.to_be_bytes());
                out
            }
            HandshakeMessage::Reject { code } => {
                let mut out = vec![MSG_REJECT];
                out.extend_from_slice(code.as_str().as_bytes());
                out
            }
        }
    }

    /// Parses peer bytes; never panics. Wrong lengths and unknown types
    /// are `PROTOCOL_ERROR`; an over-long manifest is `MESSAGE_TOO_LARGE`.
    pub fn decode(bytes: &[u8]) -> Result<HandshakeMessage, TransportError> {
        let (&tag, body) = bytes
            .split_first()
            .ok_or(TransportError::ProtocolError("empty handshake message"))?;
        match tag {
            MSG_HELLO => {
                if body.len() < 1 + 32 + 1 {
                    return Err(TransportError::ProtocolError("short HELLO"));
                }
                let manifest_json = &body[33..];
                if manifest_json.len() > MAX_MANIFEST_BYTES {
                    return Err(TransportError::MessageTooLarge);
                }
                let mut nonce = [0u8; 32];
                nonce.copy_from_slice(&body[1..33]);
                Ok(HandshakeMessage::Hello {
                    version: body[0],
                    nonce,
                    manifest_json: manifest_json.to_vec(),
                })
            }
            MSG_AUTH => {
                let signature: [u8; 64] = body
                    .try_into()
                    .map_err(|_| TransportError::ProtocolError("AUTH must carry 64 bytes"))?;
                Ok(HandshakeMessage::Auth { signature })
            }
            MSG_SESSION => {
                if body.len() != 32 {
                    return Err(TransportError::ProtocolError("SESSION must carry 32 bytes"));
                }
                let mut id = [0u8; 16];
                id.copy_from_slice(&body[..16]);
                let mut exp = [0u8; 8];
                exp.copy_from_slice(&body[16..24]);
                let mut max = [0u8; 8];
                max.copy_from_slice(&body[24..32]);
                Ok(HandshakeMessage::Session {
                    id,
                    expires_at_ms: u64::from_be_bytes(exp),
                    max_expires_at_ms: u64::from_be_bytes(max),
                })
            }
            MSG_REJECT => {
                let code = std::str::from_utf8(body)
                    .ok()
                    .and_then(RejectCode::new)
                    .ok_or(TransportError::ProtocolError(
                        "REJECT code is not a constant",
                    ))?;
                Ok(HandshakeMessage::Reject { code })
            }
            _ => Err(TransportError::ProtocolError(
                "unknown handshake message type",
            )),
        }
    }

    fn name(&self) -> u8 {
        match self {
            HandshakeMessage::Hello { .. } => MSG_HELLO,
            HandshakeMessage::Auth { .. } => MSG_AUTH,
            HandshakeMessage::Session { .. } => MSG_SESSION,
            HandshakeMessage::Reject { .. } => MSG_REJECT,
        }
    }
}

/// The exact bytes the `signer` signs in `AUTH` (see the module docs).
pub fn transcript(
    signer: Role,
    exporter: &[u8; 32],
    other_nonce: &[u8; 32],
    client_manifest_json: &[u8],
    server_manifest_json: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(TRANSCRIPT_LEN);
    out.extend_from_slice(HANDSHAKE_DOMAIN);
    out.push(signer.transcript_byte());
    out.extend_from_slice(exporter);
    out.extend_from_slice(other_nonce);
    out.extend_from_slice(&Sha256::digest(client_manifest_json));
    out.extend_from_slice(&Sha256::digest(server_manifest_json));
    out
}

/// The exporter stand-in on plaintext connections:
/// `SHA-256("agentfed-plaintext-binding-v1\n" || nonce_c || nonce_s)`.
/// It binds nothing to the channel: an active relay can pass. Only for
/// `ws://` inside an already-private network.
pub fn plaintext_binding(client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(PLAINTEXT_BINDING_DOMAIN);
    h.update(client_nonce);
    h.update(server_nonce);
    h.finalize().into()
}

async fn expect(ws: &mut WsConn, want: u8) -> Result<HandshakeMessage, TransportError> {
    let bytes = ws.recv().await?;
    match HandshakeMessage::decode(&bytes)? {
        HandshakeMessage::Reject { code } => Err(TransportError::Rejected {
            code,
            by_peer: true,
        }),
        msg if msg.name() == want => Ok(msg),
        _ => Err(TransportError::ProtocolError(
            "unexpected handshake message",
        )),
    }
}

/// Tells the peer why (unless it refused us), then returns the error.
/// When the WebSocket layer ended the conversation (the peer's close
/// frame, or a frame it refused) no `REJECT` can follow: only the owed
/// close frame goes out (the answer to the peer's close, or 1009 / 1002).
async fn fail<T>(ws: &mut WsConn, err: TransportError) -> Result<T, TransportError> {
    if ws.owes_close() {
        ws.close("HANDSHAKE_FAILED").await;
        return Err(err);
    }
    let code = match &err {
        TransportError::Rejected { by_peer: true, .. } => None,
        TransportError::Rejected { code, .. } => Some(code.clone()),
        TransportError::Io(_) | TransportError::ConnectionClosed(_) => None,
        other => RejectCode::new(other.code()),
    };
    if let Some(code) = code {
        let _ = ws.send(&HandshakeMessage::Reject { code }.encode()).await;
        ws.close("HANDSHAKE_FAILED").await;
    }
    Err(err)
}

fn parse_manifest(json: &[u8]) -> Result<SignedManifest, TransportError> {
    let manifest = SignedManifest::from_json(json).map_err(TransportError::from_manifest)?;
    manifest.verify().map_err(TransportError::from_manifest)?;
    Ok(manifest)
}

fn peer_key(manifest: &SignedManifest) -> Result<[u8; 32], TransportError> {
    manifest
        .manifest
        .verifying_key()
        .map(|k| k.to_bytes())
        .map_err(TransportError::from_manifest)
}

/// Client side: returns the session, or the error (after telling the
/// server the code, when the refusal is ours).
pub(crate) async fn client_handshake(
    ws: &mut WsConn,
    local: &LocalNode,
    pin: &Pin,
    config: &TransportConfig,
    policy: &dyn HandshakePolicy,
) -> Result<Session, TransportError> {
    // One manifest for the whole handshake, even if `wg rotate` replaces
    // it meanwhile: the transcript hashes the bytes sent.
    let local = &local.snapshot();
    let client_nonce = random_bytes::<32>()?;
    let hello = HandshakeMessage::Hello {
        version: HANDSHAKE_VERSION,
        nonce: client_nonce,
        manifest_json: local.manifest_json().to_vec(),
    };
    ws.send(&hello.encode()).await?;
    let (server_nonce, server_json, server_manifest) = match expect(ws, MSG_HELLO).await {
        Ok(HandshakeMessage::Hello {
            version,
            nonce,
            manifest_json,
        }) => {
            if version != HANDSHAKE_VERSION {
                return fail(ws, TransportError::UnsupportedVersion).await;
            }
            match parse_manifest(&manifest_json) {
                Ok(m) => (nonce, manifest_json, m),
                Err(e) => return fail(ws, e).await,
            }
        }
        Ok(_) => return fail(ws, TransportError::ProtocolError("expected HELLO")).await,
        Err(e) => return fail(ws, e).await,
    };

    // Pin rules, then the manifest must name the presented certificate.
    let presented = ws.peer_cert_fingerprint().map(str::to_string);
    let claimed = server_manifest.manifest.tls_fingerprint.as_str();
    let outcome = match pin {
        Pin::Fingerprint(fp) => {
            // Over TLS the verifier already enforced presented == fp.
            if presented.is_none() && claimed != fp {
                return fail(ws, TransportError::PinMismatch).await;
            }
            PinOutcome::Fingerprint
        }
        Pin::PublicKey(key) => {
            let key_ok = match peer_key(&server_manifest) {
                Ok(k) => super::tls::constant_time_eq(&k, key),
                Err(e) => return fail(ws, e).await,
            };
            if !key_ok {
                return fail(ws, TransportError::PinMismatch).await;
            }
            PinOutcome::PublicKey
        }
        Pin::AcceptNew => PinOutcome::NewPeer {
            fingerprint: presented.clone().unwrap_or_else(|| claimed.to_string()),
        },
    };
    if let Some(presented) = &presented
        && presented != claimed
    {
        return fail(ws, TransportError::CertMismatch).await;
    }
    let ctx = PeerContext {
        local_role: Role::Client,
        manifest: &server_manifest,
        cert_fingerprint: presented.as_deref(),
        pin: &outcome,
        remote_addr: ws.remote_addr(),
        encrypted: ws.is_encrypted(),
    };
    if let Err(rejection) = policy.authorize(&ctx) {
        let err = TransportError::Rejected {
            code: rejection.code,
            by_peer: false,
        };
        return fail(ws, err).await;
    }

    let exporter = ws
        .exporter()
        .unwrap_or_else(|| plaintext_binding(&client_nonce, &server_nonce));
    let client_json = local.manifest_json();
    let mine = transcript(
        Role::Client,
        &exporter,
        &server_nonce,
        &client_json,
        &server_json,
    );
    let signature = local.identity().sign(&mine).to_bytes();
    ws.send(&HandshakeMessage::Auth { signature }.encode())
        .await?;

    let server_sig = match expect(ws, MSG_AUTH).await {
        Ok(HandshakeMessage::Auth { signature }) => signature,
        Ok(_) => return fail(ws, TransportError::ProtocolError("expected AUTH")).await,
        Err(e) => return fail(ws, e).await,
    };
    let theirs = transcript(
        Role::Server,
        &exporter,
        &client_nonce,
        &client_json,
        &server_json,
    );
    let key = match peer_key(&server_manifest) {
        Ok(k) => k,
        Err(e) => return fail(ws, e).await,
    };
    if !verify_ed25519(&key, &theirs, &server_sig) {
        return fail(ws, TransportError::BadSignature).await;
    }

    let (id, expires_at_ms, max_expires_at_ms) = match expect(ws, MSG_SESSION).await {
        Ok(HandshakeMessage::Session {
            id,
            expires_at_ms,
            max_expires_at_ms,
        }) => (id, expires_at_ms, max_expires_at_ms),
        Ok(_) => return fail(ws, TransportError::ProtocolError("expected SESSION")).await,
        Err(e) => return fail(ws, e).await,
    };
    if expires_at_ms > max_expires_at_ms {
        return fail(
            ws,
            TransportError::ProtocolError("session expiry past its cap"),
        )
        .await;
    }
    // The server's clock may differ from ours, but not by more than the
    // skew envelopes tolerate: a server granting more than our own limits
    // (e.g. a cap of u64::MAX, so the session would never need a fresh
    // handshake and trust check) is clamped to them.
    let now = config.clock.now_ms();
    let max_expires_at_ms = max_expires_at_ms
        .min(now.saturating_add(config.session_max_ms + SERVER_CLOCK_ALLOWANCE_MS));
    let expires_at_ms = client_expiry(config, now, expires_at_ms, max_expires_at_ms);
    Ok(Session {
        session_id: hex::encode(id),
        role: Role::Client,
        peer: server_manifest,
        peer_manifest_json: server_json.into(),
        peer_cert_fingerprint: presented,
        pin: outcome,
        created_at_ms: config.clock.now_ms(),
        expires_at_ms,
        max_expires_at_ms,
        remote_addr: ws.remote_addr(),
        encrypted: ws.is_encrypted(),
        compression: ws.compression_negotiated(),
    })
}

/// How far a server's session times may run ahead of this client's own
/// limits (clock difference), as for envelope timestamps.
const SERVER_CLOCK_ALLOWANCE_MS: u64 = 5 * 60_000;

/// The expiry a client accepts from its server at `now_ms`: at most its
/// own TTL from now (plus the clock allowance) and at most the (clamped)
/// cap.
pub(crate) fn client_expiry(
    config: &TransportConfig,
    now_ms: u64,
    granted_ms: u64,
    max_expires_at_ms: u64,
) -> u64 {
    granted_ms
        .min(now_ms.saturating_add(config.session_ttl_ms + SERVER_CLOCK_ALLOWANCE_MS))
        .min(max_expires_at_ms)
}

/// A server-side failure, with the peer's node id once its AUTH verified.
pub(crate) struct ServerFailure {
    pub error: TransportError,
    pub peer_node_id: Option<String>,
}

/// Server side: returns the session, or the error (after telling the
/// client the code).
pub(crate) async fn server_handshake(
    ws: &mut WsConn,
    local: &LocalNode,
    config: &TransportConfig,
    policy: &dyn HandshakePolicy,
) -> Result<Session, ServerFailure> {
    let mut peer_node_id = None;
    let local = &local.snapshot();
    let result = server_steps(ws, local, config, policy, &mut peer_node_id).await;
    result.map_err(|error| ServerFailure {
        error,
        peer_node_id,
    })
}

async fn server_steps(
    ws: &mut WsConn,
    local: &LocalNode,
    config: &TransportConfig,
    policy: &dyn HandshakePolicy,
    peer_node_id: &mut Option<String>,
) -> Result<Session, TransportError> {
    let (client_nonce, client_json, client_manifest) = match expect(ws, MSG_HELLO).await {
        Ok(HandshakeMessage::Hello {
            version,
            nonce,
            manifest_json,
        }) => {
            if version != HANDSHAKE_VERSION {
                return fail(ws, TransportError::UnsupportedVersion).await;
            }
            match parse_manifest(&manifest_json) {
                Ok(m) => (nonce, manifest_json, m),
                Err(e) => return fail(ws, e).await,
            }
        }
        Ok(_) => return fail(ws, TransportError::ProtocolError("expected HELLO")).await,
        Err(e) => return fail(ws, e).await,
    };

    let server_nonce = random_bytes::<32>()?;
    let server_json = local.manifest_json();
    let hello = HandshakeMessage::Hello {
        version: HANDSHAKE_VERSION,
        nonce: server_nonce,
        manifest_json: server_json.to_vec(),
    };
    ws.send(&hello.encode()).await?;

    let client_sig = match expect(ws, MSG_AUTH).await {
        Ok(HandshakeMessage::Auth { signature }) => signature,
        Ok(_) => return fail(ws, TransportError::ProtocolError("expected AUTH")).await,
        Err(e) => return fail(ws, e).await,
    };
    let exporter = ws
        .exporter()
        .unwrap_or_else(|| plaintext_binding(&client_nonce, &server_nonce));
    let theirs = transcript(
        Role::Client,
        &exporter,
        &server_nonce,
        &client_json,
        &server_json,
    );
    let key = match peer_key(&client_manifest) {
        Ok(k) => k,
        Err(e) => return fail(ws, e).await,
    };
    if !verify_ed25519(&key, &theirs, &client_sig) {
        return fail(ws, TransportError::BadSignature).await;
    }
    // Only now is the node id proven: anyone can replay a public manifest
    // in HELLO, so failures before this point name no peer.
    *peer_node_id = Some(client_manifest.manifest.node_id.clone());
    let outcome = PinOutcome::Inbound;
    let ctx = PeerContext {
        local_role: Role::Server,
        manifest: &client_manifest,
        cert_fingerprint: None,
        pin: &outcome,
        remote_addr: ws.remote_addr(),
        encrypted: ws.is_encrypted(),
    };
    if let Err(rejection) = policy.authorize(&ctx) {
        let err = TransportError::Rejected {
            code: rejection.code,
            by_peer: false,
        };
        return fail(ws, err).await;
    }

    let mine = transcript(
        Role::Server,
        &exporter,
        &client_nonce,
        &client_json,
        &server_json,
    );
    let signature = local.identity().sign(&mine).to_bytes();
    ws.send(&HandshakeMessage::Auth { signature }.encode())
        .await?;

    let id = random_bytes::<16>()?;
    let now = config.clock.now_ms();
    let max_expires_at_ms = now.saturating_add(config.session_max_ms);
    let expires_at_ms = now
        .saturating_add(config.session_ttl_ms)
        .min(max_expires_at_ms);
    let session_msg = HandshakeMessage::Session {
        id,
        expires_at_ms,
        max_expires_at_ms,
    };
    ws.send(&session_msg.encode()).await?;
    Ok(Session {
        session_id: hex::encode(id),
        role: Role::Server,
        peer: client_manifest,
        peer_manifest_json: client_json.into(),
        peer_cert_fingerprint: None,
        pin: outcome,
        created_at_ms: now,
        expires_at_ms,
        max_expires_at_ms,
        remote_addr: ws.remote_addr(),
        encrypted: ws.is_encrypted(),
        compression: ws.compression_negotiated(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_layout_is_exact() {
        let exporter = [1u8; 32];
        let nonce = [2u8; 32];
        let t = transcript(Role::Client, &exporter, &nonce, b"client", b"server");
        assert_eq!(t.len(), TRANSCRIPT_LEN);
        assert_eq!(&t[..22], b"agentfed-handshake-v1\n");
        assert_eq!(t[22], b'C');
        assert_eq!(&t[23..55], &exporter);
        assert_eq!(&t[55..87], &nonce);
        assert_eq!(&t[87..119], Sha256::digest(b"client").as_slice());
        assert_eq!(&t[119..151], Sha256::digest(b"server").as_slice());
        let s = transcript(Role::Server, &exporter, &nonce, b"client", b"server");
        assert_eq!(s[22], b'S');
        assert_ne!(s, t);
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            HandshakeMessage::Hello {
                version: 1,
                nonce: [9; 32],
                manifest_json: b"{}".to_vec(),
            },
            HandshakeMessage::Auth { signature: [7; 64] },
            HandshakeMessage::Session {
                id: [3; 16],
                expires_at_ms: 5,
                max_expires_at_ms: 6,
            },
            HandshakeMessage::Reject {
                code: RejectCode::from_static(PEER_SUSPENDED),
            },
        ];
        for m in msgs {
            assert_eq!(HandshakeMessage::decode(&m.encode()).ok(), Some(m));
        }
    }

    #[test]
    fn garbage_never_panics_and_is_refused() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = HandshakeMessage::decode(&bytes);
        }
        assert!(HandshakeMessage::decode(&[]).is_err());
        assert!(HandshakeMessage::decode(&[MSG_AUTH, 1, 2]).is_err());
        assert!(HandshakeMessage::decode(&[MSG_REJECT]).is_err());
        assert!(HandshakeMessage::decode(b"\x04lower").is_err());
        assert!(HandshakeMessage::decode(&[0x7f]).is_err());
        let mut big = vec![MSG_HELLO, 1];
        big.extend_from_slice(&[0; 32]);
        big.extend(std::iter::repeat_n(b' ', MAX_MANIFEST_BYTES + 1));
        assert_eq!(
            HandshakeMessage::decode(&big),
            Err(TransportError::MessageTooLarge)
        );
    }

    #[test]
    fn reject_codes_are_validated() {
        assert_eq!(RejectCode::from_static("not valid").as_str(), "REJECTED");
        assert_eq!(Rejection::new(PEER_EVICTED).code.as_str(), "PEER_EVICTED");
    }
}
