//! TLS 1.3 with pinned self-signed certificates (rustls, ring provider).
//!
//! There is no certificate authority: a node's certificate is trusted
//! because its SHA-256 fingerprint (lowercase hex of the DER, as
//! [`crate::identity::tls_fingerprint`] computes it) is pinned — from a
//! known manifest, given out of band, or bound to an out-of-band Ed25519
//! key through the peer's signed manifest. Pinning replaces chain
//! validation only: the TLS 1.3 `CertificateVerify` signature is checked
//! with rustls' `verify_tls13_signature` against the presented
//! certificate's key, so the peer must hold the certificate's private key.
//! Validity dates and names are not checked (the pin is the trust anchor,
//! as with SSH host keys).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as RustlsError, ServerConfig,
    SignatureScheme,
};

use super::{EXPORTER_LABEL, TransportError};
use crate::identity::{Identity, tls_fingerprint};

/// How the client decides to trust the server it dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Exactly this certificate fingerprint (64 lowercase hex characters):
    /// from a known peer's manifest or `join --fingerprint`. Any other
    /// certificate fails the TLS handshake with `PIN_MISMATCH`.
    Fingerprint(String),
    /// An Ed25519 public key given out of band (`join --public-key`): the
    /// certificate is accepted provisionally; after `hello` the peer's
    /// verified manifest must carry this key (else `PIN_MISMATCH`) and name
    /// the presented certificate (else `CERT_MISMATCH`).
    PublicKey([u8; 32]),
    /// Trust on first use (`join --accept-new`): any certificate, provided
    /// the peer's verified manifest names it. The session reports the
    /// fingerprint trusted ([`super::PinOutcome::NewPeer`]).
    AcceptNew,
}

impl Pin {
    /// A fingerprint pin from user input: 64 hex digits, optionally
    /// separated by `:`, any case. Normalised to lowercase hex.
    pub fn fingerprint(input: &str) -> Result<Pin, TransportError> {
        let hex: String = input
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Pin::Fingerprint(hex))
        } else {
            Err(TransportError::Config(
                "fingerprint must be 64 hex digits (SHA-256 of the certificate DER)",
            ))
        }
    }

    /// A public-key pin from standard padded base64 (as in manifests).
    pub fn public_key_b64(input: &str) -> Result<Pin, TransportError> {
        crate::identity::decode_key32("public_key", input)
            .map(Pin::PublicKey)
            .map_err(|_| TransportError::Config("public key must be base64 of 32 bytes"))
    }
}

/// The ring crypto provider, shared.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Server configuration from the node's certificate and key: TLS 1.3
/// only, no client certificates (clients authenticate in the handshake).
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TransportError> {
    let cert = CertificateDer::from(identity.tls_cert_der().to_vec());
    let key = PrivateKeyDer::from_pem_slice(identity.tls_key_pem().as_bytes())
        .map_err(|_| TransportError::Config("TLS key is not a PEM private key"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| TransportError::Config("TLS 1.3 unsupported by the provider"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|_| TransportError::Config("TLS certificate and key do not match"))?;
    // No resumption: a resumed session presents no certificate, and every
    // connection must show the one its manifest names (protocol.md §1).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Client configuration that enforces `pin` at the TLS layer (TLS 1.3
/// only). For [`Pin::PublicKey`] and [`Pin::AcceptNew`] the certificate
/// is accepted here and checked against the manifest after `hello`.
pub fn client_config(pin: &Pin) -> Result<Arc<ClientConfig>, TransportError> {
    let pinned = match pin {
        Pin::Fingerprint(hex_fp) => {
            let raw = hex::decode(hex_fp)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(TransportError::Config(
                    "fingerprint must be 64 hex digits (SHA-256 of the certificate DER)",
                ))?;
            Some(raw)
        }
        Pin::PublicKey(_) | Pin::AcceptNew => None,
    };
    let verifier = PinVerifier {
        pinned,
        provider: provider(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| TransportError::Config("TLS 1.3 unsupported by the provider"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts exactly one end-entity certificate by SHA-256 (or, with no
/// pin, any), and verifies TLS 1.3 handshake signatures properly.
#[derive(Debug)]
struct PinVerifier {
    pinned: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        use sha2::Digest as _;
        let Some(pinned) = self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let presented: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if constant_time_eq(&presented, &pinned) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(RustlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        // Unreachable with a TLS 1.3-only config; verified properly anyway.
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Compares equal-length byte strings without an early exit.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Maps an error from a TLS handshake: a pin failure becomes
/// [`TransportError::PinMismatch`], other rustls errors
/// [`TransportError::Tls`], socket errors [`TransportError::Io`].
pub(crate) fn map_tls_error(e: std::io::Error) -> TransportError {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<RustlsError>());
    match rustls_err {
        Some(RustlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            TransportError::PinMismatch
        }
        Some(other) => TransportError::Tls(other.to_string()),
        None if e.kind() == std::io::ErrorKind::InvalidData => {
            TransportError::Tls("invalid TLS data".into())
        }
        None => TransportError::Io(e.kind()),
    }
}

/// What the TLS layer hands to the handshake: the exporter value and the
/// fingerprint of the certificate the server presented (client side).
#[derive(Debug, Clone)]
pub(crate) struct TlsBinding {
    /// `TLS-Exporter("EXPORTER-agentfed-v1", no context, 32)`.
    pub exporter: [u8; 32],
    /// Lowercase hex SHA-256 of the presented end-entity certificate
    /// (client side only).
    pub peer_cert_fingerprint: Option<String>,
}

/// Exporter and presented certificate of an established client session.
pub(crate) fn client_binding(
    conn: &rustls::ClientConnection,
) -> Result<TlsBinding, TransportError> {
    let exporter = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TransportError::Tls("no server certificate".into()))?;
    Ok(TlsBinding {
        exporter,
        peer_cert_fingerprint: Some(tls_fingerprint(cert.as_ref())),
    })
}

/// Exporter of an established server session.
pub(crate) fn server_binding(
    conn: &rustls::ServerConnection,
) -> Result<TlsBinding, TransportError> {
    let exporter = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(TlsBinding {
        exporter,
        peer_cert_fingerprint: None,
    })
}

/// Opens a TLS 1.3 session to `host:port` over a fresh TCP connection,
/// enforcing `pin` (no WebSocket, no handshake): the building block of
/// [`super::connect`], public for raw-client tests.
pub async fn connect_tls(
    host: &str,
    port: u16,
    pin: &Pin,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TransportError> {
    connect_tls_with(host, port, pin, None).await
}

/// [`connect_tls`] with an explicit socket buffer size.
pub(crate) async fn connect_tls_with(
    host: &str,
    port: u16,
    pin: &Pin,
    socket_buffer: Option<u32>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, TransportError> {
    let tcp = tcp_connect(host, port, socket_buffer).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(pin)?);
    connector
        .connect(server_name(host)?, tcp)
        .await
        .map_err(map_tls_error)
}

/// Opens a TCP connection (no delay; buffers sized when asked), trying
/// each resolved address in turn.
pub(crate) async fn tcp_connect(
    host: &str,
    port: u16,
    socket_buffer: Option<u32>,
) -> Result<tokio::net::TcpStream, TransportError> {
    let mut last = TransportError::Io(std::io::ErrorKind::NotFound);
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(size) = socket_buffer {
            socket.set_send_buffer_size(size)?;
            socket.set_recv_buffer_size(size)?;
        }
        match socket.connect(addr).await {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// The TLS server name for `host` (an IP address or DNS name). Pinning
/// ignores it; it only feeds SNI.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TransportError::BadEndpoint("host is not a valid TLS server name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_pins_are_normalised_and_checked() {
        let fp = "AB".repeat(32);
        assert_eq!(
            Pin::fingerprint(&fp).ok(),
            Some(Pin::Fingerprint("ab".repeat(32)))
        );
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(
            Pin::fingerprint(&colons).ok(),
            Some(Pin::Fingerprint("ab".repeat(32)))
        );
        assert!(Pin::fingerprint("abc").is_err());
        assert!(Pin::fingerprint(&"zz".repeat(32)).is_err());
        assert!(Pin::public_key_b64("AAAA").is_err());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
