//! Node identity: keys on disk, the self-signed TLS certificate, the signed
//! manifest, peer-field grammars and mesh-IP derivation.
//!
//! # Files under the node home
//!
//! | file | contents | mode |
//! |---|---|---|
//! | `identity.key` | Ed25519 32-byte seed, standard base64 (padded) + `\n` | 0600 |
//! | `wireguard.key` | X25519 private key, standard base64 + `\n` (the `wg genkey` format, clamped) | 0600 |
//! | `hash.key` | 32 random bytes for keyed hashing (HMAC), standard base64 + `\n` | 0600 |
//! | `tls.key` | TLS private key (ECDSA P-256), PKCS#8 PEM | 0600 |
//! | `tls.crt` | self-signed TLS certificate, PEM; SANs = node id and `localhost` | 0600 |
//! | `node.json` | `{"node_id": …, "endpoint": …}` | 0600 |
//!
//! The public files are 0600 as well: nothing in a home is anyone else's
//! business (docs/operations.md, "Permissions and access"); they are only
//! refused when group or others may write them.
//!
//! The home directory is created with mode 0700. Secret files are created
//! with `OpenOptions::mode(0o600)` (written to `<name>.tmp`, fsynced, then
//! renamed into place), never chmod-ed afterwards. [`Identity::load`]
//! refuses a secret file that group or others may access, like OpenSSH,
//! and a home that is not private to this user ([`crate::home::check`]).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Wire protocol version this host speaks and puts in its manifest.
pub const PROTOCOL_VERSION: u32 = 2;

/// Domain-separation prefix of the bytes a manifest signature covers.
pub const MANIFEST_DOMAIN: &[u8] = b"agentfed-manifest-v1\n";

/// Largest signed-manifest JSON accepted from a peer, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024;

/// Most agent types a manifest may list.
pub const MAX_AGENT_TYPES: usize = 32;

/// Most capabilities a manifest may list.
pub const MAX_CAPABILITIES: usize = 64;

/// Longest endpoint URL or `host:port` accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// Default WireGuard mesh subnet (the reference implementation's).
pub const DEFAULT_MESH_SUBNET: &str = "10.50.0.0/16";

/// Most mesh-IP candidates tried (probe 0 plus 1023 re-hashes).
pub const MAX_MESH_PROBES: u32 = 1024;

/// Ed25519 identity seed file.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// WireGuard (X25519) private key file.
pub const WIREGUARD_KEY_FILE: &str = "wireguard.key";
/// Keyed-hash secret file.
pub const HASH_KEY_FILE: &str = "hash.key";
/// TLS private key file (PEM).
pub const TLS_KEY_FILE: &str = "tls.key";
/// TLS certificate file (PEM).
pub const TLS_CERT_FILE: &str = "tls.crt";
/// Node id and endpoint file (JSON).
pub const NODE_FILE: &str = "node.json";

/// Largest key or certificate file read from disk, in bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Documented grammar of node ids.
pub const NODE_ID_RULE: &str = "must match ^[a-z0-9][a-z0-9._-]{0,62}$ (1-63 chars: lowercase letters, digits, '.', '_', '-'; starting with a letter or digit)";

const TOKEN_RULE: &str = "each entry must match ^[a-z0-9][a-z0-9-]{0,31}$";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A peer- or operator-supplied field that breaks its grammar. The reason is
/// a constant naming the rule; the offending value is never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    /// Which field (manifest field name).
    pub field: &'static str,
    /// The rule it broke.
    pub reason: &'static str,
}

impl FieldError {
    const fn new(field: &'static str, reason: &'static str) -> Self {
        FieldError { field, reason }
    }
}

/// Why a signed manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The Ed25519 signature does not verify against the embedded public key.
    #[error("manifest signature does not verify")]
    BadSignature,
    /// A field breaks its grammar (see [`FieldError`]).
    #[error("invalid manifest field {field}: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// The rule it broke.
        reason: &'static str,
    },
    /// Not a signed manifest at all (bad JSON, wrong shape, too large).
    /// The reason names the problem and position, never the input.
    #[error("malformed manifest: {0}")]
    Malformed(String),
}

impl From<FieldError> for ManifestError {
    fn from(e: FieldError) -> Self {
        ManifestError::InvalidField {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Failures creating or loading a node identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Filesystem failure on `path`.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A secret file is accessible by group or others.
    #[error(
        "key file {path} is accessible by group or others (mode {mode:04o}); refusing to use it. Fix with: chmod 600 {path}",
        path = path.display()
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A public identity file (certificate, node file) is writable by group or others.
    #[error(
        "{path} is writable by group or others (mode {mode:04o}); refusing to use it. Fix with: chmod 600 {path}",
        path = path.display()
    )]
    WritableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The node home is not private to this user ([`crate::home::check`]).
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// `init` found existing identity files and `force` was not given.
    #[error(
        "{path} already exists; refusing to overwrite node keys (re-run init with force to replace them)",
        path = path.display()
    )]
    AlreadyInitialized {
        /// The first existing file found.
        path: PathBuf,
    },
    /// A required identity file is missing.
    #[error("{path} is missing; initialise the node first", path = path.display())]
    NotInitialized {
        /// The missing file.
        path: PathBuf,
    },
    /// A key, certificate or node file has the wrong content.
    #[error("{path}: {reason}", path = path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (constant text).
        reason: &'static str,
    },
    /// The node id or endpoint breaks its grammar.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    /// The OS random number generator failed.
    #[error("OS randomness unavailable: {0}")]
    Random(String),
    /// Building the TLS certificate failed.
    #[error("TLS certificate generation failed: {0}")]
    Tls(String),
    /// Building the manifest failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Failures deriving a mesh IP or parsing a mesh subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshIpError {
    /// The subnet is not `a.b.c.d/prefix` with a prefix of 0..=30.
    #[error("invalid mesh subnet CIDR: {0}")]
    InvalidCidr(&'static str),
    /// Every probe landed on a taken address.
    #[error(
        "mesh subnet {subnet} exhausted: no free address after {probes} probes; use a wider subnet"
    )]
    SubnetExhausted {
        /// The subnet, as `network/prefix`.
        subnet: String,
        /// Probes tried.
        probes: u32,
    },
}

// ---------------------------------------------------------------------------
// Node id and grammars
// ---------------------------------------------------------------------------

/// A validated node id: `^[a-z0-9][a-z0-9._-]{0,62}$` (see [`NODE_ID_RULE`]).
///
/// The grammar keeps node ids safe to place in file names, TLS SANs,
/// WireGuard comments, firewall rule comments and log lines.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates `s` against the node-id grammar.
    pub fn parse(s: &str) -> Result<NodeId, FieldError> {
        validate_node_id(s)?;
        Ok(NodeId(s.to_string()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl FromStr for NodeId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate_node_id(&s)?;
        Ok(NodeId(s))
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks the node-id grammar `^[a-z0-9][a-z0-9._-]{0,62}$`.
pub fn validate_node_id(s: &str) -> Result<(), FieldError> {
    let err = FieldError::new("node_id", NODE_ID_RULE);
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(err);
    };
    let first_ok = first.is_ascii_lowercase() || first.is_ascii_digit();
    let rest_ok = bytes[1..]
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if bytes.len() <= 63 && first_ok && rest_ok {
        Ok(())
    } else {
        Err(err)
    }
}

/// Checks a federation endpoint URL: `ws://` or `wss://` (lowercase), then
/// `host:port` (see [`validate_host_port`]), then an optional path of
/// `[A-Za-z0-9._~/-]` starting with `/`. No user info, query or fragment;
/// at most [`MAX_ENDPOINT_LEN`] bytes.
pub fn validate_endpoint(s: &str) -> Result<(), FieldError> {
    const F: &str = "endpoint";
    if s.len() > MAX_ENDPOINT_LEN {
        return Err(FieldError::new(F, "longer than 255 bytes"));
    }
    let rest = s
        .strip_prefix("wss://")
        .or_else(|| s.strip_prefix("ws://"))
        .ok_or(FieldError::new(F, "must start with ws:// or wss://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'/' | b'-'));
    if !path_ok {
        return Err(FieldError::new(
            F,
            "path may contain only [A-Za-z0-9._~/-] (no query, fragment or user info)",
        ));
    }
    check_host_port(authority).map_err(|reason| FieldError::new(F, reason))
}

/// Checks a `host:port` pair (e.g. a WireGuard endpoint). Host: a DNS name
/// (labels of `[A-Za-z0-9-]`, 1-63 bytes, not starting or ending with `-`,
/// at most 253 bytes in all), a dotted-quad IPv4 address, or an IPv6
/// address in brackets (no zone id). Port: decimal 1-65535, no sign or
/// leading zero. At most [`MAX_ENDPOINT_LEN`] bytes.
pub fn validate_host_port(field: &'static str, s: &str) -> Result<(), FieldError> {
    if s.len() > MAX_ENDPOINT_LEN {
        return Err(FieldError::new(field, "longer than 255 bytes"));
    }
    check_host_port(s).map_err(|reason| FieldError::new(field, reason))
}

fn check_host_port(s: &str) -> Result<(), &'static str> {
    const NEED_PORT: &str = "must be host:port with a port of 1-65535";
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or("unclosed '[' in IPv6 host")?;
        Ipv6Addr::from_str(v6).map_err(|_| "bracketed host is not an IPv6 address")?;
        (None, after.strip_prefix(':').ok_or(NEED_PORT)?)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or(NEED_PORT)?;
        (Some(host), port)
    };
    check_port(port).ok_or(NEED_PORT)?;
    match host {
        Some(h) => check_host(h),
        None => Ok(()),
    }
}

fn check_port(port: &str) -> Option<u16> {
    let ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0');
    if !ok {
        return None;
    }
    port.parse::<u16>().ok().filter(|&p| p != 0)
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("host is empty");
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ipv4Addr::from_str(host)
            .map(|_| ())
            .map_err(|_| "numeric host is not a dotted-quad IPv4 address");
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err("host must be a DNS name ([A-Za-z0-9-] labels), IPv4 address or [IPv6] address")
    }
}

/// Checks a short token list (agent types, capabilities): at most `max`
/// entries, each `^[a-z0-9][a-z0-9-]{0,31}$`, none twice. The list is a
/// set: a repeated entry means nothing, and refusing it leaves one way to
/// write each set (up to order, which the signer chooses and the
/// signature covers).
fn validate_tokens(field: &'static str, items: &[String], max: usize) -> Result<(), FieldError> {
    if items.len() > max {
        return Err(FieldError::new(field, "too many entries"));
    }
    if items
        .iter()
        .enumerate()
        .any(|(i, t)| items[..i].contains(t))
    {
        return Err(FieldError::new(field, "an entry is listed twice"));
    }
    let token_ok = |t: &str| {
        let b = t.as_bytes();
        !b.is_empty()
            && b.len() <= 32
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    };
    if items.iter().all(|t| token_ok(t)) {
        Ok(())
    } else {
        Err(FieldError::new(field, TOKEN_RULE))
    }
}

/// Decodes standard padded base64 of exactly 32 bytes (44 characters), as
/// WireGuard and this manifest encode keys.
pub fn decode_key32(field: &'static str, s: &str) -> Result<[u8; 32], FieldError> {
    const REASON: &str = "must be standard base64 (padded, 44 chars) of 32 bytes";
    if s.len() != 44 {
        return Err(FieldError::new(field, REASON));
    }
    let bytes = B64.decode(s).map_err(|_| FieldError::new(field, REASON))?;
    bytes.try_into().map_err(|_| FieldError::new(field, REASON))
}

fn validate_fingerprint(s: &str) -> Result<(), FieldError> {
    let ok = s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "tls_fingerprint",
            "must be 64 lowercase hex characters (SHA-256 of the certificate DER)",
        ))
    }
}

fn validate_mesh_ip(s: &str) -> Result<Ipv4Addr, FieldError> {
    let ip = Ipv4Addr::from_str(s)
        .map_err(|_| FieldError::new("mesh_ip", "must be a dotted-quad IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(FieldError::new(
            "mesh_ip",
            "must be a unicast, non-loopback IPv4 address",
        ));
    }
    Ok(ip)
}

// ---------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------

/// What a node publishes about itself. Every field is validated by
/// [`SignedManifest::verify`] against a narrow grammar:
///
/// * `node_id`: [`NODE_ID_RULE`].
/// * `public_key`: Ed25519 public key, standard padded base64 (44 chars).
/// * `endpoint`: [`validate_endpoint`] (`ws://` / `wss://` host:port URL).
/// * `tls_fingerprint`: SHA-256 of the TLS certificate DER, 64 lowercase hex.
/// * `agent_types`: at most 32 tokens, `capabilities`: at most 64 tokens;
///   each token `^[a-z0-9][a-z0-9-]{0,31}$`.
/// * `protocol_version`: at least 1.
/// * `wg_public_key`: X25519 public key, standard padded base64 (as `wg` prints it).
/// * `mesh_ip`: dotted-quad IPv4, unicast, not loopback (no `/32` suffix).
/// * `wg_endpoint`: optional UDP `host:port` ([`validate_host_port`]).
/// * `timestamp_ms`: signing time, ms since the Unix epoch (freshness is the
///   handshake's concern).
///
/// Field order matters: it is the order of the canonical signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Node id.
    pub node_id: String,
    /// Ed25519 public key, standard padded base64.
    pub public_key: String,
    /// Federation endpoint URL; `None` (JSON `null`) for a dial-only
    /// node, which opens no listener and is never dialed.
    pub endpoint: Option<String>,
    /// TLS certificate fingerprint (lowercase hex SHA-256 of the DER).
    pub tls_fingerprint: String,
    /// Agent types offered.
    pub agent_types: Vec<String>,
    /// Capabilities offered.
    pub capabilities: Vec<String>,
    /// Protocol version spoken.
    pub protocol_version: u32,
    /// WireGuard public key, standard padded base64.
    pub wg_public_key: String,
    /// Mesh IPv4 address.
    pub mesh_ip: String,
    /// WireGuard UDP endpoint, if reachable.
    pub wg_endpoint: Option<String>,
    /// Signing time, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Manifest {
    /// The exact bytes the signature covers:
    /// [`MANIFEST_DOMAIN`] (`"agentfed-manifest-v1\n"`) followed by
    /// `serde_json::to_vec(self)`: a JSON object with the fields in the
    /// struct's declared order, no whitespace, `wg_endpoint` as `null` when
    /// absent. serde_json output for a struct is deterministic (fixed field
    /// order, fixed escaping; every field is ASCII after validation).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let mut out = MANIFEST_DOMAIN.to_vec();
        serde_json::to_writer(&mut out, self)
            .map_err(|_| ManifestError::Malformed("manifest does not serialize".into()))?;
        Ok(out)
    }

    /// Validates every field against its grammar (see the type docs).
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_node_id(&self.node_id)?;
        self.verifying_key()?;
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        validate_fingerprint(&self.tls_fingerprint)?;
        validate_tokens("agent_types", &self.agent_types, MAX_AGENT_TYPES)?;
        validate_tokens("capabilities", &self.capabilities, MAX_CAPABILITIES)?;
        if self.protocol_version == 0 {
            return Err(FieldError::new("protocol_version", "must be at least 1").into());
        }
        decode_key32("wg_public_key", &self.wg_public_key)?;
        validate_mesh_ip(&self.mesh_ip)?;
        if let Some(ep) = &self.wg_endpoint {
            validate_host_port("wg_endpoint", ep)?;
        }
        Ok(())
    }

    /// The embedded Ed25519 public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, ManifestError> {
        let raw = decode_key32("public_key", &self.public_key)?;
        VerifyingKey::from_bytes(&raw)
            .map_err(|_| FieldError::new("public_key", "is not a valid Ed25519 public key").into())
    }

    /// The mesh IP as an address (after validation it always parses).
    pub fn mesh_ipv4(&self) -> Result<Ipv4Addr, ManifestError> {
        Ok(validate_mesh_ip(&self.mesh_ip)?)
    }

    /// The WireGuard public key as raw bytes.
    pub fn wg_public_key_bytes(&self) -> Result<[u8; 32], ManifestError> {
        Ok(decode_key32("wg_public_key", &self.wg_public_key)?)
    }
}

/// A manifest plus the Ed25519 signature (standard padded base64 of the 64
/// signature bytes) over [`Manifest::canonical_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The signed content.
    pub manifest: Manifest,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

impl SignedManifest {
    /// Signs `manifest` with `key`, after validating the manifest's fields
    /// (a node never publishes a manifest its peers would refuse).
    pub fn sign(manifest: Manifest, key: &SigningKey) -> Result<SignedManifest, ManifestError> {
        manifest.validate()?;
        let signature = key.sign(&manifest.canonical_bytes()?);
        Ok(SignedManifest {
            manifest,
            signature: B64.encode(signature.to_bytes()),
        })
    }

    /// Verifies a peer's manifest: first every field against its grammar
    /// ([`ManifestError::InvalidField`]), then the signature with
    /// `verify_strict` against the embedded public key
    /// ([`ManifestError::BadSignature`]).
    pub fn verify(&self) -> Result<(), ManifestError> {
        self.manifest.validate()?;
        let key = self.manifest.verifying_key()?;
        let sig = decode_signature(&self.signature)?;
        key.verify_strict(&self.manifest.canonical_bytes()?, &sig)
            .map_err(|_| ManifestError::BadSignature)
    }

    /// Parses peer-supplied JSON (at most [`MAX_MANIFEST_BYTES`]; unknown
    /// fields refused) without verifying it; call [`SignedManifest::verify`].
    pub fn from_json(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Malformed(format!(
                "larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            ManifestError::Malformed(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    /// Serializes to JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn decode_signature(s: &str) -> Result<Signature, ManifestError> {
    const REASON: &str = "must be standard base64 (padded, 88 chars) of 64 bytes";
    let bad = || ManifestError::InvalidField {
        field: "signature",
        reason: REASON,
    };
    if s.len() != 88 {
        return Err(bad());
    }
    let raw: [u8; 64] = B64
        .decode(s)
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    Ok(Signature::from_bytes(&raw))
}

/// Verifies a detached Ed25519 signature (`verify_strict`).
pub fn verify_ed25519(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public_key)
        .and_then(|k| k.verify_strict(message, &Signature::from_bytes(signature)))
        .is_ok()
}

/// Lowercase hex SHA-256 of a certificate's DER: the pinned fingerprint.
pub fn tls_fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

// ---------------------------------------------------------------------------
// Mesh IP derivation
// ---------------------------------------------------------------------------

/// An IPv4 mesh subnet, `a.b.c.d/prefix` with prefix 0..=30 (as the
/// reference implementation; host bits in the address are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshSubnet {
    network: u32,
    prefix: u8,
}

impl MeshSubnet {
    /// A subnet from an address and prefix length (0..=30).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<MeshSubnet, MeshIpError> {
        if prefix > 30 {
            return Err(MeshIpError::InvalidCidr(
                "prefix must be at most /30 (too small for mesh IPs)",
            ));
        }
        let mask = host_mask(prefix);
        Ok(MeshSubnet {
            network: u32::from(addr) & !mask,
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !host_mask(self.prefix) == self.network
    }
}

impl Default for MeshSubnet {
    /// `10.50.0.0/16`.
    fn default() -> Self {
        MeshSubnet {
            network: u32::from(Ipv4Addr::new(10, 50, 0, 0)),
            prefix: 16,
        }
    }
}

impl fmt::Display for MeshSubnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for MeshSubnet {
    type Err = MeshIpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or(MeshIpError::InvalidCidr("expected a.b.c.d/prefix"))?;
        let addr = Ipv4Addr::from_str(addr)
            .map_err(|_| MeshIpError::InvalidCidr("address is not a dotted-quad IPv4 address"))?;
        let ok =
            !prefix.is_empty() && prefix.len() <= 2 && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|_| ok)
            .ok_or(MeshIpError::InvalidCidr("prefix must be a number 0-32"))?;
        if prefix > 32 {
            return Err(MeshIpError::InvalidCidr("prefix must be a number 0-32"));
        }
        MeshSubnet::new(addr, prefix)
    }
}

fn host_mask(prefix: u8) -> u32 {
    let host_bits = 32 - u32::from(prefix);
    if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    }
}

/// Derives the mesh IP of `node_id`, byte-for-byte as the reference
/// implementation:
///
/// 1. probe 0 hashes the node id; probe `n >= 1` hashes the node id, a NUL
///    byte, then `n` in decimal ASCII (`"node\u{0}1"`, `"node\u{0}2"`, …);
/// 2. the first four bytes of SHA-256 of that input, big-endian, masked to
///    the subnet's host bits, OR-ed onto the network address;
/// 3. a last octet of 0 becomes 1 and of 255 becomes 254;
/// 4. if `taken(candidate)` the next probe is tried; after
///    [`MAX_MESH_PROBES`] candidates (probes 0..=1023) the subnet is
///    reported exhausted.
pub fn derive_mesh_ip(
    node_id: &NodeId,
    subnet: &MeshSubnet,
    taken: &dyn Fn(Ipv4Addr) -> bool,
) -> Result<Ipv4Addr, MeshIpError> {
    let mask = host_mask(subnet.prefix);
    for probe in 0..MAX_MESH_PROBES {
        let candidate = mesh_candidate(node_id.as_str(), probe, subnet.network, mask);
        if !taken(candidate) {
            return Ok(candidate);
        }
    }
    Err(MeshIpError::SubnetExhausted {
        subnet: subnet.to_string(),
        probes: MAX_MESH_PROBES,
    })
}

fn mesh_candidate(node_id: &str, probe: u32, network: u32, mask: u32) -> Ipv4Addr {
    let mut hasher = Sha256::new();
    hasher.update(node_id.as_bytes());
    if probe > 0 {
        hasher.update([0u8]);
        hasher.update(probe.to_string().as_bytes());
    }
    let digest = hasher.finalize();
    let host = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut candidate = network | (host & mask);
    match candidate & 0xff {
        0 => candidate |= 1,
        255 => candidate &= !1,
        _ => {}
    }
    Ipv4Addr::from(candidate)
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

/// Inputs for [`Identity::signed_manifest`] that are not part of the key
/// material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestParams {
    /// Agent types offered.
    pub agent_types: Vec<String>,
    /// Capabilities offered.
    pub capabilities: Vec<String>,
    /// Mesh IP, from [`Identity::mesh_ip`] in the configured subnet.
    pub mesh_ip: Ipv4Addr,
    /// WireGuard UDP endpoint.
    pub wg_endpoint: Option<String>,
    /// The protocol version announced: [`PROTOCOL_VERSION`], unless a
    /// test plays an older node.
    pub protocol_version: u32,
}

impl ManifestParams {
    /// Parameters with the given mesh IP and no agent types, capabilities
    /// or WireGuard endpoint.
    pub fn new(mesh_ip: Ipv4Addr) -> ManifestParams {
        ManifestParams {
            agent_types: Vec::new(),
            capabilities: Vec::new(),
            mesh_ip,
            wg_endpoint: None,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}

struct TlsMaterial {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: Zeroizing<String>,
    fingerprint: String,
}

/// A node's keys and certificate. `Debug` prints only public parts.
pub struct Identity {
    node_id: NodeId,
    /// `None` for a dial-only node.
    endpoint: Option<String>,
    signing_key: SigningKey,
    /// Behind a lock: `wg rotate` replaces it in a running daemon.
    wg_secret: std::sync::RwLock<x25519_dalek::StaticSecret>,
    hash_secret: Zeroizing<[u8; 32]>,
    tls: TlsMaterial,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node_id: String,
    /// `null` for a dial-only node (written by `init --no-listen`).
    endpoint: Option<String>,
}

impl Identity {
    /// Generates fresh keys and a certificate in memory (nothing written)
    /// for a node listening at `endpoint`.
    pub fn generate(node_id: &NodeId, endpoint: &str) -> Result<Identity, IdentityError> {
        Identity::generate_with(node_id, Some(endpoint))
    }

    /// Generates fresh keys and a certificate in memory (nothing written);
    /// `endpoint` `None` makes a dial-only node. The certificate exists
    /// either way: its fingerprint is in the manifest, and it is what the
    /// node serves if it is later given an endpoint.
    pub fn generate_with(
        node_id: &NodeId,
        endpoint: Option<&str>,
    ) -> Result<Identity, IdentityError> {
        if let Some(endpoint) = endpoint {
            validate_endpoint(endpoint)?;
        }
        let seed = random_32()?;
        let mut wg = random_32()?;
        clamp_x25519(&mut wg);
        let hash_secret = random_32()?;
        Ok(Identity {
            node_id: node_id.clone(),
            endpoint: endpoint.map(str::to_string),
            signing_key: SigningKey::from_bytes(&seed),
            wg_secret: std::sync::RwLock::new(x25519_dalek::StaticSecret::from(*wg)),
            hash_secret,
            tls: generate_tls(node_id)?,
        })
    }

    /// Creates the node home (mode 0700) and writes fresh keys, certificate
    /// and `node.json` into it (`endpoint` `None`: a dial-only node). Refuses
    /// if any identity file already exists, unless `force`.
    pub fn init(
        home: &Path,
        node_id: &NodeId,
        endpoint: Option<&str>,
        force: bool,
    ) -> Result<Identity, IdentityError> {
        if let Some(endpoint) = endpoint {
            validate_endpoint(endpoint)?;
        }
        ensure_home(home)?;
        if !force {
            refuse_existing(home)?;
        }
        let identity = Identity::generate_with(node_id, endpoint)?;
        identity.persist(home)?;
        Ok(identity)
    }

    /// Loads the identity from `home`, refusing group/other-accessible key
    /// files and a group/other-writable home.
    pub fn load(home: &Path) -> Result<Identity, IdentityError> {
        check_home(home)?;
        let node_path = home.join(NODE_FILE);
        let node_raw = read_file(&node_path, false)?;
        let node: NodeFile =
            serde_json::from_slice(&node_raw).map_err(|_| IdentityError::BadFile {
                path: node_path.clone(),
                reason: "expected {\"node_id\": ..., \"endpoint\": ...}",
            })?;
        let node_id = NodeId::parse(&node.node_id)?;
        if let Some(endpoint) = &node.endpoint {
            validate_endpoint(endpoint)?;
        }
        let seed = read_key32(&home.join(IDENTITY_KEY_FILE))?;
        let wg = read_key32(&home.join(WIREGUARD_KEY_FILE))?;
        let hash_secret = read_key32(&home.join(HASH_KEY_FILE))?;
        let tls = load_tls(home)?;
        Ok(Identity {
            node_id,
            endpoint: node.endpoint,
            signing_key: SigningKey::from_bytes(&seed),
            wg_secret: std::sync::RwLock::new(x25519_dalek::StaticSecret::from(*wg)),
            hash_secret,
            tls,
        })
    }

    fn persist(&self, home: &Path) -> Result<(), IdentityError> {
        let seed = Zeroizing::new(self.signing_key.to_bytes());
        write_file(
            &home.join(IDENTITY_KEY_FILE),
            key_file_text(&seed).as_bytes(),
        )?;
        let wg = Zeroizing::new(self.wg_secret().to_bytes());
        write_file(
            &home.join(WIREGUARD_KEY_FILE),
            key_file_text(&wg).as_bytes(),
        )?;
        write_file(
            &home.join(HASH_KEY_FILE),
            key_file_text(&self.hash_secret).as_bytes(),
        )?;
        write_file(&home.join(TLS_KEY_FILE), self.tls.key_pem.as_bytes())?;
        write_file(&home.join(TLS_CERT_FILE), self.tls.cert_pem.as_bytes())?;
        self.write_node_file(home)?;
        sync_dir(home)
    }

    /// Moves the node to `endpoint` (`None`: dial-only): rewrites
    /// `node.json` with it (atomically). Keys and certificate stay, so peers
    /// keep trusting the node; they learn the endpoint from its next signed
    /// manifest.
    pub fn set_endpoint(home: &Path, endpoint: Option<&str>) -> Result<Identity, IdentityError> {
        if let Some(endpoint) = endpoint {
            validate_endpoint(endpoint)?;
        }
        let mut identity = Identity::load(home)?;
        identity.endpoint = endpoint.map(str::to_string);
        identity.write_node_file(home)?;
        sync_dir(home)?;
        Ok(identity)
    }

    fn write_node_file(&self, home: &Path) -> Result<(), IdentityError> {
        let node = NodeFile {
            node_id: self.node_id.to_string(),
            endpoint: self.endpoint.clone(),
        };
        let json = serde_json::to_vec_pretty(&node).map_err(|_| IdentityError::BadFile {
            path: home.join(NODE_FILE),
            reason: "node file does not serialize",
        })?;
        write_file(&home.join(NODE_FILE), &json)
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// This node's federation endpoint URL; `None` for a dial-only node.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// The Ed25519 public key, standard padded base64 (as in the manifest).
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.verifying_key().to_bytes())
    }

    /// Signs `message` with the identity key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing_key.sign(message)
    }

    /// The WireGuard public key, standard padded base64 (as `wg pubkey`).
    pub fn wg_public_key_b64(&self) -> String {
        B64.encode(x25519_dalek::PublicKey::from(&*self.wg_secret()).as_bytes())
    }

    /// The WireGuard key pair as bytes, for driving a device. Zeroized on
    /// drop; never log the private half.
    pub fn wg_key_bytes(&self) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
        let secret = self.wg_secret();
        (
            Zeroizing::new(secret.to_bytes()),
            *x25519_dalek::PublicKey::from(&*secret).as_bytes(),
        )
    }

    /// The WireGuard private key, base64, for emitting `wg` configuration.
    /// Zeroized on drop; never log it.
    pub fn wg_private_key_b64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.wg_secret().as_bytes()))
    }

    fn wg_secret(&self) -> std::sync::RwLockReadGuard<'_, x25519_dalek::StaticSecret> {
        self.wg_secret.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the WireGuard key in memory (after `wg rotate` made the
    /// new key the one on disk, see [`crate::mesh::rotation`]).
    pub fn replace_wg_key(&self, private_key: &[u8; 32]) {
        *self.wg_secret.write().unwrap_or_else(|p| p.into_inner()) =
            x25519_dalek::StaticSecret::from(*private_key);
    }

    /// The per-node secret for keyed hashing (e.g. HMAC-SHA256 of PII).
    pub fn hash_secret(&self) -> &[u8; 32] {
        &self.hash_secret
    }

    /// The TLS certificate, PEM.
    pub fn tls_cert_pem(&self) -> &str {
        &self.tls.cert_pem
    }

    /// The TLS certificate, DER.
    pub fn tls_cert_der(&self) -> &[u8] {
        &self.tls.cert_der
    }

    /// The TLS private key, PKCS#8 PEM. Never log it.
    pub fn tls_key_pem(&self) -> &str {
        &self.tls.key_pem
    }

    /// Lowercase hex SHA-256 of the certificate DER.
    pub fn tls_fingerprint(&self) -> &str {
        &self.tls.fingerprint
    }

    /// The mesh IP of this node in `subnet`, given addresses already taken.
    pub fn mesh_ip(
        &self,
        subnet: &MeshSubnet,
        taken: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Result<Ipv4Addr, MeshIpError> {
        derive_mesh_ip(&self.node_id, subnet, taken)
    }

    /// Builds and signs this node's manifest at `timestamp_ms` (validating
    /// it first, like a peer would).
    pub fn signed_manifest(
        &self,
        params: &ManifestParams,
        timestamp_ms: u64,
    ) -> Result<SignedManifest, ManifestError> {
        let manifest = Manifest {
            node_id: self.node_id.to_string(),
            public_key: self.public_key_b64(),
            endpoint: self.endpoint.clone(),
            tls_fingerprint: self.tls.fingerprint.clone(),
            agent_types: params.agent_types.clone(),
            capabilities: params.capabilities.clone(),
            protocol_version: params.protocol_version,
            wg_public_key: self.wg_public_key_b64(),
            mesh_ip: params.mesh_ip.to_string(),
            wg_endpoint: params.wg_endpoint.clone(),
            timestamp_ms,
        };
        SignedManifest::sign(manifest, &self.signing_key)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id.as_str())
            .field("endpoint", &self.endpoint)
            .field("public_key", &self.public_key_b64())
            .field("wg_public_key", &self.wg_public_key_b64())
            .field("tls_fingerprint", &self.tls.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A fresh X25519 private key, clamped as `wg genkey` makes it (for `wg
/// rotate`).
pub fn generate_wg_private_key() -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mut key = random_32()?;
    clamp_x25519(&mut key);
    Ok(key)
}

/// The X25519 public key of `private_key`.
pub fn wg_public_key_of(private_key: &[u8; 32]) -> [u8; 32] {
    *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private_key)).as_bytes()
}

/// Writes a 32-byte key file as the node home keeps them (standard
/// base64 and a newline, mode 0600, written to a temporary file, synced,
/// renamed into place). The caller syncs the directory ([`sync_home`]).
pub fn write_key_file(path: &Path, key: &[u8; 32]) -> Result<(), IdentityError> {
    write_file(path, key_file_text(key).as_bytes())
}

/// Reads a 32-byte key file written by [`write_key_file`], refusing one
/// that group or others may read.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    read_key32(path)
}

/// Makes renames and removals in `home` durable (`fsync` of the directory).
pub fn sync_home(home: &Path) -> Result<(), IdentityError> {
    sync_dir(home)
}

fn random_32() -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mut out = Zeroizing::new([0u8; 32]);
    getrandom::fill(out.as_mut()).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(out)
}

/// Clamps an X25519 private key as `wg genkey` does.
fn clamp_x25519(key: &mut [u8; 32]) {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
}

fn key_file_text(key: &[u8; 32]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(B64.encode(key));
    s.push('\n');
    s
}

fn generate_tls(node_id: &NodeId) -> Result<TlsMaterial, IdentityError> {
    let tls_err = |e: rcgen::Error| IdentityError::Tls(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec![node_id.to_string(), "localhost".to_string()])
            .map_err(tls_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, node_id.as_str());
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    let cert_der = cert.der().to_vec();
    Ok(TlsMaterial {
        cert_pem: cert.pem(),
        fingerprint: tls_fingerprint(&cert_der),
        cert_der,
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn load_tls(home: &Path) -> Result<TlsMaterial, IdentityError> {
    let cert_path = home.join(TLS_CERT_FILE);
    let key_path = home.join(TLS_KEY_FILE);
    let cert_pem_raw = read_file(&cert_path, false)?;
    let cert_der = CertificateDer::from_pem_slice(&cert_pem_raw)
        .map_err(|_| IdentityError::BadFile {
            path: cert_path.clone(),
            reason: "expected a PEM certificate",
        })?
        .to_vec();
    let cert_pem = String::from_utf8(cert_pem_raw).map_err(|_| IdentityError::BadFile {
        path: cert_path.clone(),
        reason: "expected a PEM certificate",
    })?;
    let key_raw = Zeroizing::new(read_file(&key_path, true)?);
    let key_pem = Zeroizing::new(String::from_utf8(key_raw.to_vec()).map_err(|_| {
        IdentityError::BadFile {
            path: key_path.clone(),
            reason: "expected a PKCS#8 PEM private key",
        }
    })?);
    let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|_| IdentityError::BadFile {
        path: key_path.clone(),
        reason: "expected a PKCS#8 PEM private key",
    })?;
    if !contains_subslice(&cert_der, key.public_key_raw()) {
        return Err(IdentityError::BadFile {
            path: key_path,
            reason: "private key does not match tls.crt",
        });
    }
    Ok(TlsMaterial {
        fingerprint: tls_fingerprint(&cert_der),
        cert_pem,
        cert_der,
        key_pem,
    })
}

fn contains_subslice(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

/// Creates `home` with mode 0700 if missing, then checks that it is
/// private to this user.
fn ensure_home(home: &Path) -> Result<(), IdentityError> {
    Ok(crate::home::create(home)?)
}

fn check_home(home: &Path) -> Result<(), IdentityError> {
    Ok(crate::home::check(home)?)
}

fn refuse_existing(home: &Path) -> Result<(), IdentityError> {
    let files = [
        IDENTITY_KEY_FILE,
        WIREGUARD_KEY_FILE,
        HASH_KEY_FILE,
        TLS_KEY_FILE,
        TLS_CERT_FILE,
        NODE_FILE,
    ];
    for name in files {
        let path = home.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(IdentityError::AlreadyInitialized { path });
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with mode 0600
/// ([`crate::home::write_private`]).
fn write_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    crate::home::write_private(path, contents).map_err(io_err("writing", path))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Reads a small file; if `secret`, refuses it unless it is a regular file
/// with no group/other permission bits (checked on the opened handle).
fn read_file(path: &Path, secret: bool) -> Result<Vec<u8>, IdentityError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            IdentityError::NotInitialized {
                path: path.to_path_buf(),
            }
        } else {
            io_err("opening", path)(e)
        }
    })?;
    let meta = file
        .metadata()
        .map_err(io_err("reading metadata of", path))?;
    if !meta.is_file() {
        return Err(IdentityError::BadFile {
            path: path.to_path_buf(),
            reason: "not a regular file",
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if secret && mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !secret && mode & 0o022 != 0 {
        return Err(IdentityError::WritableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    if buf.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(IdentityError::BadFile {
            path: path.to_path_buf(),
            reason: "file is too large",
        });
    }
    Ok(buf)
}

fn read_key32(path: &Path) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let raw = Zeroizing::new(read_file(path, true)?);
    let bad = || IdentityError::BadFile {
        path: path.to_path_buf(),
        reason: "expected standard base64 of 32 bytes followed by a newline",
    };
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?.trim_end();
    let mut decoded = Zeroizing::new(Vec::with_capacity(32));
    B64.decode_vec(text, &mut decoded).map_err(|_| bad())?;
    let mut key = Zeroizing::new([0u8; 32]);
    if decoded.len() != 32 {
        return Err(bad());
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap_or_else(|e| panic!("test node id {s}: {e}"))
    }

    fn home_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("home")
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    fn test_identity(id: &str) -> Identity {
        Identity::generate(&node(id), "wss://192.0.2.10:9100")
            .unwrap_or_else(|e| panic!("generate: {e}"))
    }

    fn params() -> ManifestParams {
        ManifestParams {
            agent_types: vec!["coder".into(), "tester".into()],
            capabilities: vec!["send".into(), "query-redacted".into()],
            mesh_ip: Ipv4Addr::new(198, 18, 3, 4),
            wg_endpoint: Some("192.0.2.10:51820".into()),
            protocol_version: PROTOCOL_VERSION,
        }
    }

    // --- node id -----------------------------------------------------------

    #[test]
    fn node_id_grammar() {
        for ok in ["a", "0", "my-mac", "node.example_1", &"a".repeat(63)] {
            assert!(NodeId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "A",
            "aB",
            "a b",
            "a/b",
            "a:b",
            "é",
            &"a".repeat(64),
            "a\n",
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_id_error_names_rule_not_input() {
        let huge = "X".repeat(10_000);
        let err = NodeId::parse(&huge)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("^[a-z0-9][a-z0-9._-]{0,62}$"), "{err}");
        assert!(!err.contains("XXXX"));
        assert!(err.len() < 300);
    }

    #[test]
    fn node_id_serde_validates() {
        assert!(serde_json::from_str::<NodeId>("\"ok-node\"").is_ok());
        assert!(serde_json::from_str::<NodeId>("\"Bad Node\"").is_err());
    }

    // --- files and permissions --------------------------------------------

    #[test]
    fn init_writes_private_files_and_load_round_trips() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = home_in(&dir);
        let created = Identity::init(&home, &node("alpha"), Some("wss://192.0.2.1:9100"), false)?;
        assert_eq!(mode_of(&home), 0o700);
        for f in [
            IDENTITY_KEY_FILE,
            WIREGUARD_KEY_FILE,
            HASH_KEY_FILE,
            TLS_KEY_FILE,
            TLS_CERT_FILE,
            NODE_FILE,
        ] {
            assert_eq!(mode_of(&home.join(f)), 0o600, "{f}");
        }
        let loaded = Identity::load(&home)?;
        assert_eq!(loaded.node_id().as_str(), "alpha");
        assert_eq!(loaded.endpoint(), Some("wss://192.0.2.1:9100"));
        assert_eq!(loaded.public_key_b64(), created.public_key_b64());
        assert_eq!(loaded.wg_public_key_b64(), created.wg_public_key_b64());
        assert_eq!(loaded.hash_secret(), created.hash_secret());
        assert_eq!(loaded.tls_fingerprint(), created.tls_fingerprint());
        assert_eq!(loaded.tls_cert_der(), created.tls_cert_der());
        let sig = loaded.sign(b"hello");
        assert!(verify_ed25519(
            &created.verifying_key().to_bytes(),
            b"hello",
            &sig.to_bytes()
        ));
        Ok(())
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = home_in(&dir);
        let first = Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false)?;
        let again = Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false);
        let msg = again.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("already exists") && msg.contains("force"),
            "{msg}"
        );
        // Still the original keys on disk.
        assert_eq!(
            Identity::load(&home)?.public_key_b64(),
            first.public_key_b64()
        );
        let forced = Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), true)?;
        assert_ne!(forced.public_key_b64(), first.public_key_b64());
        assert_eq!(
            Identity::load(&home)?.public_key_b64(),
            forced.public_key_b64()
        );
        assert_eq!(mode_of(&home.join(IDENTITY_KEY_FILE)), 0o600);
        Ok(())
    }

    #[test]
    fn load_refuses_group_or_world_readable_keys_naming_file_and_fix() -> TestResult {
        for file in [
            IDENTITY_KEY_FILE,
            WIREGUARD_KEY_FILE,
            HASH_KEY_FILE,
            TLS_KEY_FILE,
        ] {
            let dir = tempfile::tempdir()?;
            let home = home_in(&dir);
            Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false)?;
            let path = home.join(file);
            for mode in [0o644, 0o640, 0o604, 0o660] {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                let err = Identity::load(&home).err();
                assert!(
                    matches!(err, Some(IdentityError::InsecurePermissions { .. })),
                    "{file} {mode:o}: {err:?}"
                );
                let msg = err.map(|e| e.to_string()).unwrap_or_default();
                let shown = path.display().to_string();
                assert!(msg.contains(&shown), "{msg}");
                assert!(msg.contains(&format!("chmod 600 {shown}")), "{msg}");
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o400))?;
            assert!(Identity::load(&home).is_ok(), "0400 is fine");
        }
        Ok(())
    }

    #[test]
    fn load_refuses_writable_public_files() -> TestResult {
        for file in [TLS_CERT_FILE, NODE_FILE] {
            let dir = tempfile::tempdir()?;
            let home = home_in(&dir);
            Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false)?;
            assert_eq!(mode_of(&home.join(file)) & 0o022, 0, "{file}");
            let path = home.join(file);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
            let msg = Identity::load(&home)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        Ok(())
    }

    #[test]
    fn load_refuses_world_writable_home() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = home_in(&dir);
        Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o777))?;
        let err = Identity::load(&home).err();
        assert!(matches!(err, Some(IdentityError::Home(_))), "{err:?}");
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("chmod 700"), "{msg}");
        Ok(())
    }

    #[test]
    fn load_reports_missing_and_malformed_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = home_in(&dir);
        fs::create_dir(&home)?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
        let err = Identity::load(&home).err();
        assert!(
            matches!(err, Some(IdentityError::NotInitialized { .. })),
            "{err:?}"
        );

        Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), true)?;
        let key = home.join(WIREGUARD_KEY_FILE);
        fs::remove_file(&key)?;
        crate::home::write_private(&key, b"not base64 at all\n")?;
        let err = Identity::load(&home).err();
        assert!(
            matches!(err, Some(IdentityError::BadFile { .. })),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("wireguard.key") && !msg.contains("not base64"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn load_refuses_tls_key_not_matching_certificate() -> TestResult {
        let dir = tempfile::tempdir()?;
        let home = home_in(&dir);
        Identity::init(&home, &node("alpha"), Some("ws://127.0.0.1:9100"), false)?;
        let other = test_identity("beta");
        write_file(&home.join(TLS_KEY_FILE), other.tls_key_pem().as_bytes())?;
        let err = Identity::load(&home).err();
        assert!(
            matches!(err, Some(IdentityError::BadFile { .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn debug_prints_public_parts_only() -> TestResult {
        let id = test_identity("alpha");
        let dbg = format!("{id:?}");
        assert!(dbg.contains(&id.public_key_b64()));
        assert!(dbg.contains(&id.wg_public_key_b64()));
        assert!(!dbg.contains(id.wg_private_key_b64().as_str()));
        assert!(!dbg.contains(&B64.encode(id.signing_key.to_bytes())));
        assert!(!dbg.contains(&B64.encode(id.hash_secret())));
        assert!(!dbg.contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn wireguard_key_is_clamped_and_public_key_matches() {
        let id = test_identity("alpha");
        let private = id.wg_secret().to_bytes();
        assert_eq!(private[0] & 7, 0);
        assert_eq!(private[31] & 0x80, 0);
        assert_eq!(private[31] & 0x40, 0x40);
        let public = x25519_dalek::x25519(private, x25519_dalek::X25519_BASEPOINT_BYTES);
        assert_eq!(B64.encode(public), id.wg_public_key_b64());
        assert_eq!(id.wg_public_key_b64().len(), 44);
    }

    #[test]
    fn tls_certificate_has_sans_and_fingerprint() {
        let id = test_identity("node-7.lab");
        assert_eq!(id.tls_fingerprint(), tls_fingerprint(id.tls_cert_der()));
        assert_eq!(id.tls_fingerprint().len(), 64);
        assert!(
            id.tls_fingerprint()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(id.tls_cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(id.tls_key_pem().contains("PRIVATE KEY"));
        assert!(contains_subslice(id.tls_cert_der(), b"node-7.lab"));
        assert!(contains_subslice(id.tls_cert_der(), b"localhost"));
    }

    // --- manifest ----------------------------------------------------------

    #[test]
    fn manifest_signs_verifies_and_round_trips() -> TestResult {
        let id = test_identity("alpha");
        let signed = id.signed_manifest(&params(), 1_700_000_000_000)?;
        signed.verify()?;
        let parsed = SignedManifest::from_json(&signed.to_json())?;
        assert_eq!(parsed, signed);
        parsed.verify()?;
        assert_eq!(parsed.manifest.public_key, id.public_key_b64());
        assert_eq!(parsed.manifest.tls_fingerprint, id.tls_fingerprint());
        Ok(())
    }

    #[test]
    fn canonical_bytes_are_domain_prefix_plus_compact_json_in_field_order() -> TestResult {
        let id = test_identity("alpha");
        let signed = id.signed_manifest(&ManifestParams::new(Ipv4Addr::new(198, 18, 0, 9)), 5)?;
        let bytes = signed.manifest.canonical_bytes()?;
        let text = std::str::from_utf8(&bytes)?;
        assert!(text.starts_with("agentfed-manifest-v1\n{\"node_id\":\"alpha\",\"public_key\":"));
        assert!(text.ends_with(",\"wg_endpoint\":null,\"timestamp_ms\":5}"));
        assert!(!text[MANIFEST_DOMAIN.len()..].contains(' '));
        Ok(())
    }

    #[test]
    fn a_dial_only_manifest_signs_endpoint_null_and_verifies() -> TestResult {
        let node = NodeId::parse("laptop")?;
        let id = Identity::generate_with(&node, None)?;
        assert_eq!(id.endpoint(), None);
        let signed = id.signed_manifest(&ManifestParams::new(Ipv4Addr::new(198, 18, 0, 9)), 5)?;
        let bytes = signed.manifest.canonical_bytes()?;
        let text = std::str::from_utf8(&bytes)?;
        assert!(
            text.contains(",\"endpoint\":null,\"tls_fingerprint\":"),
            "{text}"
        );
        let parsed = SignedManifest::from_json(&signed.to_json())?;
        parsed.verify()?;
        assert_eq!(parsed.manifest.endpoint, None);
        // Absent reads as null, like wg_endpoint; the signature still holds.
        let mut json: serde_json::Value = serde_json::from_slice(&signed.to_json())?;
        json["manifest"]
            .as_object_mut()
            .ok_or("manifest object")?
            .remove("endpoint");
        SignedManifest::from_json(&serde_json::to_vec(&json)?)?.verify()?;
        // Giving it an endpoint after signing breaks the signature.
        let mut moved = signed.clone();
        moved.manifest.endpoint = Some("wss://192.0.2.9:9100".into());
        assert!(matches!(moved.verify(), Err(ManifestError::BadSignature)));
        Ok(())
    }

    #[test]
    fn manifest_carries_the_derived_mesh_ip() -> TestResult {
        let id = test_identity("ruvultra");
        let net: MeshSubnet = "198.18.0.0/15".parse()?;
        let ip = id.mesh_ip(&net, &|_| false)?;
        assert_eq!(ip, Ipv4Addr::new(198, 19, 242, 138));
        let signed = id.signed_manifest(&ManifestParams::new(ip), 1)?;
        assert_eq!(signed.manifest.mesh_ip, "198.19.242.138");
        assert_eq!(signed.manifest.mesh_ipv4()?, ip);
        signed.verify()?;
        Ok(())
    }

    fn assert_bad_signature(signed: &SignedManifest, what: &str) {
        assert_eq!(signed.verify(), Err(ManifestError::BadSignature), "{what}");
    }

    #[test]
    fn manifest_tamper_is_detected() -> TestResult {
        let id = test_identity("alpha");
        let signed = id.signed_manifest(&params(), 1_700_000_000_000)?;
        let other = test_identity("beta");

        let mut t = signed.clone();
        t.manifest.endpoint = Some("wss://192.0.2.99:9100".into());
        assert_bad_signature(&t, "endpoint");
        let mut t = signed.clone();
        t.manifest.node_id = "alphb".into();
        assert_bad_signature(&t, "node_id");
        let mut t = signed.clone();
        t.manifest.tls_fingerprint = other.tls_fingerprint().into();
        assert_bad_signature(&t, "fingerprint");
        let mut t = signed.clone();
        t.manifest.capabilities.push("remote-spawn".into());
        assert_bad_signature(&t, "capabilities");
        let mut t = signed.clone();
        t.manifest.wg_public_key = other.wg_public_key_b64();
        assert_bad_signature(&t, "wg key");
        let mut t = signed.clone();
        t.manifest.mesh_ip = "198.18.3.5".into();
        assert_bad_signature(&t, "mesh ip");
        let mut t = signed.clone();
        t.manifest.wg_endpoint = None;
        assert_bad_signature(&t, "wg endpoint");
        let mut t = signed.clone();
        t.manifest.timestamp_ms += 1;
        assert_bad_signature(&t, "timestamp");
        let mut t = signed.clone();
        t.manifest.public_key = other.public_key_b64();
        assert_bad_signature(&t, "public key swapped");
        // A signature by another key over the same content.
        let mut t = signed.clone();
        let forged = other.sign(&signed.manifest.canonical_bytes()?);
        t.signature = B64.encode(forged.to_bytes());
        assert_bad_signature(&t, "foreign signature");
        // A flipped signature bit.
        let mut raw = B64.decode(&signed.signature)?;
        raw[10] ^= 1;
        let mut t = signed.clone();
        t.signature = B64.encode(&raw);
        assert_bad_signature(&t, "flipped bit");
        Ok(())
    }

    /// Signs an arbitrary (possibly invalid) manifest with a real key,
    /// bypassing `SignedManifest::sign`'s validation, so only the field
    /// grammar can reject it.
    fn sign_raw(id: &Identity, manifest: Manifest) -> SignedManifest {
        let bytes = manifest.canonical_bytes().unwrap_or_default();
        SignedManifest {
            manifest,
            signature: B64.encode(id.sign(&bytes).to_bytes()),
        }
    }

    fn expect_invalid(
        id: &Identity,
        base: &Manifest,
        field: &'static str,
        edit: impl Fn(&mut Manifest),
    ) {
        let mut m = base.clone();
        edit(&mut m);
        let signed = sign_raw(id, m);
        match signed.verify() {
            Err(ManifestError::InvalidField { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidField({field}), got {other:?} for {signed:?}"),
        }
    }

    #[test]
    fn every_invalid_manifest_field_is_rejected() -> TestResult {
        let id = test_identity("alpha");
        let base = id.signed_manifest(&params(), 1)?.manifest;
        sign_raw(&id, base.clone()).verify()?;

        for bad in ["", "Alpha", "-x", "a b", "a;rm -rf", &"a".repeat(64)] {
            expect_invalid(&id, &base, "node_id", |m| m.node_id = bad.into());
        }
        for bad in [
            "",
            "abc",
            &B64.encode([1u8; 31]),
            &B64.encode([1u8; 33]),
            &hex::encode([1u8; 32]),
        ] {
            expect_invalid(&id, &base, "public_key", |m| m.public_key = bad.into());
        }
        for bad in [
            "",
            "http://192.0.2.1:9100",
            "WSS://192.0.2.1:9100",
            "wss://192.0.2.1",
            "wss://192.0.2.1:0",
            "wss://192.0.2.1:70000",
            "wss://192.0.2.1:09100",
            "wss://192.0.2.1:+91",
            "wss://user@192.0.2.1:9100",
            "wss://192.0.2.1:9100/?q=1",
            "wss://192.0.2.1:9100/#frag",
            "wss://192.0.2.1:9100/a b",
            "wss://bad host:9100",
            "wss://-bad.example:9100",
            "wss://1.2.3:9100",
            "wss://[::1:9100",
            "wss://[fe80::1%eth0]:9100",
            "wss://a..b:9100",
            &format!("wss://{}.example:9100", "a".repeat(64)),
            &format!("wss://h:9100/{}", "p".repeat(300)),
        ] {
            expect_invalid(&id, &base, "endpoint", |m| m.endpoint = Some(bad.into()));
        }
        for bad in [
            "",
            "ab",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            expect_invalid(&id, &base, "tls_fingerprint", |m| {
                m.tls_fingerprint = bad.into()
            });
        }
        for bad in ["", "Coder", "co der", "-coder", &"a".repeat(33), "c_o"] {
            expect_invalid(&id, &base, "agent_types", |m| {
                m.agent_types = vec![bad.into()]
            });
            expect_invalid(&id, &base, "capabilities", |m| {
                m.capabilities = vec![bad.into()]
            });
        }
        expect_invalid(&id, &base, "agent_types", |m| {
            m.agent_types = vec!["a".into(); MAX_AGENT_TYPES + 1]
        });
        expect_invalid(&id, &base, "capabilities", |m| {
            m.capabilities = vec!["a".into(); MAX_CAPABILITIES + 1]
        });
        // Each list is a set: a repeat is refused, any order is accepted.
        expect_invalid(&id, &base, "agent_types", |m| {
            m.agent_types = vec!["coder".into(), "tester".into(), "coder".into()]
        });
        expect_invalid(&id, &base, "capabilities", |m| {
            m.capabilities = vec!["ping".into(), "ping".into()]
        });
        let mut unordered = base.clone();
        unordered.agent_types = vec!["tester".into(), "coder".into()];
        sign_raw(&id, unordered).verify()?;
        expect_invalid(&id, &base, "protocol_version", |m| m.protocol_version = 0);
        for bad in [
            "",
            "not-a-key",
            &B64.encode([1u8; 31]),
            &B64.encode([1u8; 32])[..43],
        ] {
            expect_invalid(&id, &base, "wg_public_key", |m| {
                m.wg_public_key = bad.into()
            });
        }
        for bad in [
            "",
            "198.18.1",
            "256.1.1.1",
            "198.018.0.1",
            "::1",
            "198.18.0.1/32",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            " 198.18.0.1",
        ] {
            expect_invalid(&id, &base, "mesh_ip", |m| m.mesh_ip = bad.into());
        }
        for bad in [
            "",
            "192.0.2.1",
            "192.0.2.1:0",
            "wss://192.0.2.1:51820",
            "host:port",
            "[::1]",
        ] {
            expect_invalid(&id, &base, "wg_endpoint", |m| {
                m.wg_endpoint = Some(bad.into())
            });
        }
        Ok(())
    }

    #[test]
    fn valid_endpoint_forms_are_accepted() {
        for ok in [
            "ws://127.0.0.1:9100",
            "wss://my-mac.tailnet:9100",
            "wss://[::1]:9100",
            "wss://[2001:db8::1]:443/federation",
            "wss://host.example:65535/a/b_c.d~e-f",
        ] {
            assert_eq!(validate_endpoint(ok), Ok(()), "{ok}");
        }
        for ok in ["192.0.2.1:51820", "[2001:db8::1]:51820", "wg.example:1"] {
            assert_eq!(validate_host_port("wg_endpoint", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn bad_signature_encoding_is_invalid_field() -> TestResult {
        let id = test_identity("alpha");
        let mut signed = id.signed_manifest(&params(), 1)?;
        signed.signature = "AAAA".into();
        assert!(matches!(
            signed.verify(),
            Err(ManifestError::InvalidField {
                field: "signature",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn malformed_manifest_json_is_refused_without_echo() -> TestResult {
        let id = test_identity("alpha");
        let signed = id.signed_manifest(&params(), 1)?;
        assert!(matches!(
            SignedManifest::from_json(b"{not json"),
            Err(ManifestError::Malformed(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&signed.to_json())?;
        v["manifest"]["secret_extra_field"] = serde_json::json!(1);
        let err = SignedManifest::from_json(&serde_json::to_vec(&v)?);
        assert!(matches!(err, Err(ManifestError::Malformed(_))), "{err:?}");
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!msg.contains("secret_extra_field"), "{msg}");
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            SignedManifest::from_json(&huge),
            Err(ManifestError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn signing_refuses_an_invalid_own_manifest() {
        let id = test_identity("alpha");
        let p = ManifestParams {
            agent_types: vec!["Not A Token".into()],
            ..params()
        };
        assert!(matches!(
            id.signed_manifest(&p, 1),
            Err(ManifestError::InvalidField {
                field: "agent_types",
                ..
            })
        ));
    }

    // --- mesh IP -------------------------------------------------------------

    fn subnet(s: &str) -> MeshSubnet {
        s.parse().unwrap_or_else(|e| panic!("subnet {s}: {e}"))
    }

    fn derive(id: &str, net: &str) -> Ipv4Addr {
        derive_mesh_ip(&node(id), &subnet(net), &|_| false)
            .unwrap_or_else(|e| panic!("derive {id}: {e}"))
    }

    /// Vectors computed independently from the reference algorithm.
    #[test]
    fn mesh_ip_matches_reference_vectors() {
        let cases = [
            ("ruvultra", "198.18.0.0/15", "198.19.242.138"),
            ("ruvultra", "198.18.0.0/16", "198.18.242.138"),
            ("ruvultra", "198.19.7.0/24", "198.19.7.138"),
            ("macbook-1", "198.18.0.0/15", "198.19.183.98"),
            ("alpha", "198.18.0.0/15", "198.19.246.173"),
            ("node-x", "198.18.0.0/16", "198.18.60.1"),
            ("collision-test", "198.18.0.0/15", "198.19.118.80"),
            // Last octet 0 -> 1 and 255 -> 254.
            ("n157", "198.18.0.0/15", "198.18.90.1"),
            ("n867", "198.18.0.0/15", "198.19.5.254"),
            ("n903", "198.18.0.0/15", "198.18.42.254"),
        ];
        for (id, net, want) in cases {
            assert_eq!(derive(id, net).to_string(), want, "{id} in {net}");
        }
    }

    #[test]
    fn mesh_ip_probes_on_collision_like_reference() -> TestResult {
        let net = subnet("198.18.0.0/15");
        let id = node("collision-test");
        let mut taken = HashSet::new();
        let first = derive_mesh_ip(&id, &net, &|ip| taken.contains(&ip))?;
        taken.insert(first);
        let second = derive_mesh_ip(&id, &net, &|ip| taken.contains(&ip))?;
        assert_eq!(second, Ipv4Addr::new(198, 18, 69, 10));
        taken.insert(second);
        let third = derive_mesh_ip(&id, &net, &|ip| taken.contains(&ip))?;
        assert_eq!(third, Ipv4Addr::new(198, 19, 98, 136));
        Ok(())
    }

    #[test]
    fn mesh_ip_stays_in_subnet_and_avoids_0_and_255() {
        let net = subnet("198.18.0.0/15");
        for i in 0..500 {
            let ip = derive(&format!("probe-{i}"), "198.18.0.0/15");
            assert!(net.contains(ip), "{ip}");
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255, "{ip}");
        }
    }

    #[test]
    fn mesh_ip_exhaustion_is_a_clear_error() {
        let net = subnet("198.18.0.0/24");
        let calls = std::cell::Cell::new(0u32);
        let err = derive_mesh_ip(&node("y"), &net, &|_| {
            calls.set(calls.get() + 1);
            true
        });
        assert_eq!(calls.get(), MAX_MESH_PROBES);
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("exhausted") && msg.contains("198.18.0.0/24"),
            "{msg}"
        );
    }

    #[test]
    fn mesh_subnet_parsing() {
        assert_eq!(MeshSubnet::default().to_string(), DEFAULT_MESH_SUBNET);
        assert_eq!(subnet("198.18.5.7/16").to_string(), "198.18.0.0/16");
        assert_eq!(subnet("198.18.0.0/30").prefix(), 30);
        for bad in [
            "not-a-cidr",
            "198.18.0.0/31",
            "198.18.0.0/33",
            "256.1.1.1/16",
            "198.18.0.0",
            "198.18.0.0/",
            "198.18.0.0/+8",
            "198.18.0.0/008",
        ] {
            assert!(bad.parse::<MeshSubnet>().is_err(), "{bad}");
        }
    }
}
