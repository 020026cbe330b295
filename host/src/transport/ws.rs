//! WebSocket on top of TLS (or, only when allowed, plain TCP).
//!
//! The HTTP/1.1 upgrade is done here by hand (both sides) so that the
//! stream stays ours: the TLS exporter is taken from the rustls session
//! before the upgrade, the request head is bounded
//! ([`MAX_UPGRADE_HEAD`]), the path and subprotocol are fixed, and the
//! permessage-deflate parameters are ours. Framing, masking, compression
//! and the inflate cap are `yawc`'s: its `Options` bound every WebSocket
//! message, on the wire and after inflation, to [`MAX_WS_PAYLOAD`] bytes
//! (inflation stops at the cap, so a compression bomb costs at most that
//! much memory and closes the connection with 1009 / `MESSAGE_TOO_LARGE`).
//!
//! Ending a connection (`end`): the close frame owed to the peer (our
//! code, or the answer to its close frame), then TLS `close_notify` and
//! TCP FIN, then, on a detached task and for at most [`CLOSE_GRACE`],
//! reading and discarding whatever the peer still sends until it closes
//! too. yawc's own queue of control frames (its error closes, whose
//! reason is free text and whose code for a reserved opcode is 1003, and
//! the pong to a ping that broke the flood limit) is dropped, so what goes
//! out is always the constant code of `docs/protocol.md` §3.2.
//!
//! Negotiated extension (when both sides enable compression):
//! `permessage-deflate; server_no_context_takeover; client_no_context_takeover`:
//! every message is compressed independently, so per-connection deflate
//! memory stays constant and one bad message cannot poison the next.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin as StdPin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::SinkExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, WebSocket, WebSocketError};

use super::tls::{self, Pin, TlsBinding};
use super::{MAX_WS_MESSAGE, TransportConfig, TransportError, WS_PATH, WS_SUBPROTOCOL};
use crate::identity::validate_endpoint;

/// Largest HTTP upgrade request or response head, in bytes.
pub const MAX_UPGRADE_HEAD: usize = 8 * 1024;

/// How long ending a connection may take: sending the close frame and
/// `close_notify`, then reading what the peer still sends until it closes
/// too (each phase at most this long).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Hard cap of one WebSocket message's payload, on the wire or inflated:
/// [`MAX_WS_MESSAGE`] plus 1 KiB of slack for deflate's overhead on
/// incompressible data. Anything larger closes the connection.
pub const MAX_WS_PAYLOAD: usize = MAX_WS_MESSAGE + 1024;

/// The extension parameters this implementation offers and answers with.
pub const DEFLATE_EXTENSION: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Any byte stream the WebSocket can run on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A byte stream that first replays bytes read past the upgrade head.
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: Box<dyn Io>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        StdPin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        StdPin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        StdPin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A parsed federation endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `wss://` (true) or `ws://`.
    pub tls: bool,
    /// Host without IPv6 brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Request path: the URL's, or [`WS_PATH`] when it has none.
    pub path: String,
    /// `Host` header value (`host:port`, IPv6 in brackets).
    pub authority: String,
}

impl Endpoint {
    /// Parses and validates (see [`validate_endpoint`]) an endpoint URL.
    pub fn parse(url: &str) -> Result<Endpoint, TransportError> {
        validate_endpoint(url)
            .map_err(|_| TransportError::BadEndpoint("not a ws:// or wss:// host:port URL"))?;
        let (tls, rest) = match url.strip_prefix("wss://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("ws://").unwrap_or(url)),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (h, p) = inner
                .split_once("]:")
                .ok_or(TransportError::BadEndpoint("bad IPv6 authority"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or(TransportError::BadEndpoint("missing port"))?
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| TransportError::BadEndpoint("bad port"))?;
        let path = if path.is_empty() || path == "/" {
            WS_PATH.to_string()
        } else {
            path.to_string()
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            path,
            authority: authority.to_string(),
        })
    }
}

/// An open WebSocket after the upgrade and before (or instead of) the
/// agentfed handshake: binary messages in and out, and the TLS binding.
/// [`super::connect`] and the listener use it to run the handshake; tests
/// use it directly to play misbehaving peers.
pub struct WsConn {
    /// `None` once closed.
    pub(crate) ws: Option<WebSocket<Prefixed>>,
    /// The close frame owed to the peer once the WebSocket layer ended the
    /// conversation: the answer to the peer's close frame, or our 1009 /
    /// 1002 for a frame the WebSocket layer refused. [`WsConn::close`]
    /// sends it instead of its own code (no `REJECT` can follow either).
    pub(crate) owed_close: Option<Frame>,
    pub(crate) binding: Option<TlsBinding>,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) compression: bool,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("remote_addr", &self.remote_addr)
            .field("encrypted", &self.binding.is_some())
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl WsConn {
    /// `TLS-Exporter("EXPORTER-agentfed-v1", no context, 32)`, or `None`
    /// on plaintext.
    pub fn exporter(&self) -> Option<[u8; 32]> {
        self.binding.as_ref().map(|b| b.exporter)
    }

    /// Fingerprint of the certificate the server presented (client side
    /// over TLS only).
    pub fn peer_cert_fingerprint(&self) -> Option<&str> {
        self.binding
            .as_ref()
            .and_then(|b| b.peer_cert_fingerprint.as_deref())
    }

    /// Whether the connection runs over TLS.
    pub fn is_encrypted(&self) -> bool {
        self.binding.is_some()
    }

    /// Whether permessage-deflate was negotiated.
    pub fn compression_negotiated(&self) -> bool {
        self.compression
    }

    /// The peer's socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// Sends one binary message.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        if self.owed_close.is_some() {
            return Err(TransportError::ConnectionClosed("CLOSING".into()));
        }
        self.open()?
            .send(Frame::binary(Bytes::copy_from_slice(message)))
            .await
            .map_err(map_ws_error)
    }

    /// The next binary message (up to [`MAX_HANDSHAKE_PINGS`] pings and
    /// pongs before it are skipped; a close becomes
    /// [`TransportError::ConnectionClosed`] with the peer's code, and is
    /// answered by [`WsConn::close`]).
    pub async fn recv(&mut self) -> Result<Bytes, TransportError> {
        if self.owed_close.is_some() {
            return Err(TransportError::ConnectionClosed("CLOSING".into()));
        }
        let mut skipped = 0;
        loop {
            let frame = match self.open()?.next_frame().await {
                Ok(frame) => frame,
                Err(e) => {
                    if let Some(code) = ws_violation(&e) {
                        self.owed_close = Some(close_frame(code));
                    }
                    return Err(map_ws_error(e));
                }
            };
            match frame.opcode() {
                OpCode::Binary => return Ok(frame.into_payload()),
                // Each ping queues a pong that is written only with our
                // next message: a stream of them would grow without bound.
                OpCode::Ping | OpCode::Pong if skipped < MAX_HANDSHAKE_PINGS => {
                    skipped += 1;
                    continue;
                }
                OpCode::Ping | OpCode::Pong => {
                    return Err(TransportError::ProtocolError(
                        "too many WebSocket pings during the handshake",
                    ));
                }
                OpCode::Close => {
                    self.owed_close = Some(close_answer(&frame));
                    return Err(TransportError::ConnectionClosed(close_code_of(&frame)));
                }
                _ => {
                    return Err(TransportError::ProtocolError(
                        "text or stray WebSocket frame",
                    ));
                }
            }
        }
    }

    /// Whether the WebSocket layer ended the conversation (the peer closed,
    /// or sent a frame the WebSocket layer refused): only a close frame
    /// may follow, which [`WsConn::close`] sends.
    pub fn owes_close(&self) -> bool {
        self.owed_close.is_some()
    }

    /// Ends the connection (`end`): sends a close frame carrying the
    /// constant `code` (or, when one is owed, the answer to the peer's
    /// close or our refusal of its frame), then `close_notify`, then
    /// closes. Best effort, bounded by [`CLOSE_GRACE`].
    pub async fn close(&mut self, code: &str) {
        let frame = self.owed_close.take().unwrap_or_else(|| close_frame(code));
        if let Some(ws) = self.ws.take() {
            end(ws, Some(frame)).await;
        }
    }

    fn open(&mut self) -> Result<&mut WebSocket<Prefixed>, TransportError> {
        self.ws
            .as_mut()
            .ok_or_else(|| TransportError::ConnectionClosed("CLOSED".into()))
    }

    /// The WebSocket, for the established connection's driver.
    pub(crate) fn into_websocket(self) -> Option<WebSocket<Prefixed>> {
        self.ws
    }
}

/// Pings and pongs tolerated before each handshake message.
pub const MAX_HANDSHAKE_PINGS: usize = 4;

/// The WebSocket close code used for an agentfed close code.
pub(crate) fn close_numeric(code: &str) -> CloseCode {
    match code {
        "NORMAL" => CloseCode::Normal,
        "GOING_AWAY" => CloseCode::Away,
        "MESSAGE_TOO_LARGE" => CloseCode::Size,
        "PROTOCOL_ERROR" => CloseCode::Protocol,
        _ => CloseCode::Policy,
    }
}

/// The close frame carrying the constant `code`.
pub(crate) fn close_frame(code: &str) -> Frame {
    Frame::close(close_numeric(code), code.as_bytes())
}

/// The answer to a peer's close frame (RFC 6455 §5.5.1): its status code
/// echoed (1000 when it sent none), with the constant code it maps to as
/// reason, never the peer's own text.
pub(crate) fn close_answer(frame: &Frame) -> Frame {
    let code = close_code_of(frame);
    match frame.close_code() {
        Some(numeric) => Frame::close(numeric, code.as_bytes()),
        None => close_frame("NORMAL"),
    }
}

/// The constant code for a frame the WebSocket layer refused, when the
/// peer broke the WebSocket protocol (a close frame is then owed:
/// `MESSAGE_TOO_LARGE` → 1009, anything else `PROTOCOL_ERROR` → 1002);
/// `None` when the connection itself is gone.
pub(crate) fn ws_violation(e: &WebSocketError) -> Option<&'static str> {
    match e {
        WebSocketError::ConnectionClosed => None,
        // yawc reports corrupt deflate data as `InvalidInput`; the socket
        // and TLS never do (TLS failures are `InvalidData`).
        WebSocketError::IoError(io) if io.kind() == io::ErrorKind::InvalidInput => {
            Some("PROTOCOL_ERROR")
        }
        WebSocketError::IoError(_) => None,
        WebSocketError::FrameTooLarge => Some("MESSAGE_TOO_LARGE"),
        _ => Some("PROTOCOL_ERROR"),
    }
}

/// Ends a WebSocket connection in order: `frame` (if any) after the frames
/// already buffered, then TLS `close_notify` and TCP FIN (shutting the
/// stream down), within [`CLOSE_GRACE`]. Then a detached task reads and
/// discards what the peer still sends until it closes too, for at most
/// [`CLOSE_GRACE`]: closing a socket with unread data makes the kernel
/// send a reset, which can destroy our close frame before the peer reads
/// it. Frames yawc queued itself (pongs, its own error close) are
/// dropped.
pub(crate) async fn end(ws: WebSocket<Prefixed>, frame: Option<Frame>) {
    // SAFETY: `split_stream` is `unsafe` only as a contract that the parts
    // are not driven concurrently; the two halves are dropped at once and
    // the framed stream is used by this task alone.
    let (mut framed, _, _) = unsafe { ws.into_streaming().split_stream() };
    let sent = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(frame) = frame {
            framed.send(frame).await?;
        }
        // Flushes, then shuts the stream down: close_notify, then FIN.
        framed.close().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger(framed.into_inner());
    }
}

/// Reads and discards from `io` until the peer closes, for at most
/// [`CLOSE_GRACE`], on a detached task (see [`end`]).
fn linger(mut io: impl AsyncRead + Send + Unpin + 'static) {
    tokio::spawn(async move {
        let drain = async {
            let mut buf = [0u8; 4096];
            while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    });
}

/// The agentfed code of a received close frame: its reason when that is a
/// constant code (`[A-Z0-9_]{1,64}`), else derived from the numeric code.
pub(crate) fn close_code_of(frame: &Frame) -> String {
    if let Ok(Some(reason)) = frame.close_reason()
        && is_code(reason)
    {
        return reason.to_string();
    }
    match frame.close_code().map(u16::from) {
        Some(1000) | None => "NORMAL",
        Some(1001) => "GOING_AWAY",
        Some(1002) => "PROTOCOL_ERROR",
        Some(1009) => "MESSAGE_TOO_LARGE",
        Some(_) => "CLOSED",
    }
    .to_string()
}

/// Whether `s` is a constant code: `[A-Z0-9_]{1,64}`, starting with a letter.
pub(crate) fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Maps a yawc error to a constant transport error.
pub(crate) fn map_ws_error(e: WebSocketError) -> TransportError {
    match (ws_violation(&e), e) {
        (Some("MESSAGE_TOO_LARGE"), _) => TransportError::MessageTooLarge,
        (Some(_), _) => TransportError::ProtocolError("invalid WebSocket framing"),
        (None, WebSocketError::IoError(io)) => TransportError::Io(io.kind()),
        (None, _) => TransportError::ConnectionClosed("CONNECTION_LOST".into()),
    }
}

/// yawc options for `config`: size caps always; compression only if both
/// enabled locally and negotiated.
pub(crate) fn ws_options(config: &TransportConfig, deflate: bool) -> yawc::Options {
    let limit = MAX_WS_PAYLOAD + 1; // yawc's bound is exclusive
    let mut options = yawc::Options::default().with_limits(limit, limit);
    options.max_backpressure_write_boundary = Some(2 * MAX_WS_MESSAGE);
    if deflate {
        options = options
            .with_compression_level(yawc::CompressionLevel::new(config.compression_level.min(9)))
            .with_compression_threshold(config.compression_threshold)
            .server_no_context_takeover()
            .client_no_context_takeover();
    }
    options
}

/// Detail of the error for an upgrade head over [`MAX_UPGRADE_HEAD`].
const HEAD_TOO_LARGE: &str = "upgrade head too large";
/// Detail of the error for bytes that cannot start an HTTP head.
const NOT_HTTP: &str = "not an HTTP head";

/// Reads an HTTP head (through the blank line), at most
/// [`MAX_UPGRADE_HEAD`] bytes; returns it and any bytes read past it.
async fn read_head(io: &mut Box<dyn Io>) -> Result<(Vec<u8>, Vec<u8>), TransportError> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    loop {
        let n = io.read(&mut tmp).await?;
        if n == 0 {
            return Err(TransportError::ProtocolError(
                "connection closed during the WebSocket upgrade",
            ));
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&tmp[..n]);
        // An HTTP head starts with a method or "HTTP", in capitals. Anything
        // else (e.g. a TLS ClientHello sent to a plaintext listener) would
        // otherwise wait for a blank line that never comes.
        if !buf[0].is_ascii_uppercase() {
            return Err(TransportError::ProtocolError(NOT_HTTP));
        }
        if let Some(i) = buf[scan_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = scan_from + i + 4;
            if end > MAX_UPGRADE_HEAD {
                return Err(TransportError::ProtocolError(HEAD_TOO_LARGE));
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_UPGRADE_HEAD {
            return Err(TransportError::ProtocolError(HEAD_TOO_LARGE));
        }
    }
}

/// All values of header `name` (case-insensitive), as text.
fn header_values<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect()
}

/// Whether a comma-separated header `name` contains `token`
/// (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the extension offers / answers include permessage-deflate.
fn offers_deflate(headers: &[httparse::Header<'_>]) -> bool {
    header_values(headers, "sec-websocket-extensions")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|ext| {
            ext.split(';')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
        })
}

fn accept_key(key: &str) -> String {
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    B64.encode(sha.finalize())
}

/// Answers an upgrade request with an HTTP error and closes: the
/// response, `close_notify` and FIN within [`CLOSE_GRACE`], then the
/// lingering read of [`end`] (the request may not have been read whole).
async fn refuse(mut io: Box<dyn Io>, status: &str) {
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let sent = tokio::time::timeout(CLOSE_GRACE, async {
        io.write_all(response.as_bytes()).await?;
        io.flush().await?;
        io.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger(io);
    }
}

/// Server side of the upgrade on an accepted stream. Anything but a
/// well-formed `GET` upgrade to [`WS_PATH`] naming [`WS_SUBPROTOCOL`] is
/// answered with an HTTP error and refused with `PROTOCOL_ERROR`.
pub(crate) async fn server_upgrade(
    mut io: Box<dyn Io>,
    config: &TransportConfig,
) -> Result<(WebSocket<Prefixed>, bool), TransportError> {
    let (head, rest) = match read_head(&mut io).await {
        Ok(read) => read,
        Err(e @ TransportError::ProtocolError(HEAD_TOO_LARGE)) => {
            refuse(io, "431 Request Header Fields Too Large").await;
            return Err(e);
        }
        Err(e @ TransportError::ProtocolError(NOT_HTTP)) => {
            refuse(io, "400 Bad Request").await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = matches!(req.parse(&head), Ok(httparse::Status::Complete(_)));
    if !parsed || req.method != Some("GET") || req.version != Some(1) {
        refuse(io, "400 Bad Request").await;
        return Err(TransportError::ProtocolError("not an HTTP/1.1 GET request"));
    }
    if req.path != Some(WS_PATH) {
        refuse(io, "404 Not Found").await;
        return Err(TransportError::ProtocolError("wrong WebSocket path"));
    }
    let key = header_values(req.headers, "sec-websocket-key")
        .first()
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let key_ok = B64.decode(&key).map(|k| k.len() == 16).unwrap_or(false);
    let upgrade_ok = has_token(req.headers, "upgrade", "websocket")
        && has_token(req.headers, "connection", "upgrade")
        && header_values(req.headers, "sec-websocket-version")
            .first()
            .is_some_and(|v| v.trim() == "13")
        && key_ok;
    if !upgrade_ok {
        refuse(io, "400 Bad Request").await;
        return Err(TransportError::ProtocolError("not a WebSocket upgrade"));
    }
    if !has_token(req.headers, "sec-websocket-protocol", WS_SUBPROTOCOL) {
        refuse(io, "400 Bad Request").await;
        return Err(TransportError::ProtocolError(
            "missing agentfed subprotocol",
        ));
    }
    let deflate = config.compression && offers_deflate(req.headers);
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {WS_SUBPROTOCOL}\r\n",
        accept_key(&key)
    );
    if deflate {
        response.push_str(&format!(
            "Sec-WebSocket-Extensions: {DEFLATE_EXTENSION}\r\n"
        ));
    }
    response.push_str("\r\n");
    io.write_all(response.as_bytes()).await?;
    io.flush().await?;
    let stream = Prefixed {
        prefix: rest,
        pos: 0,
        inner: io,
    };
    let ws = WebSocket::from_stream_with_extensions(
        stream,
        yawc::Role::Server,
        deflate.then_some(DEFLATE_EXTENSION),
        ws_options(config, deflate),
    )
    .map_err(map_ws_error)?;
    Ok((ws, deflate))
}

/// Client side of the upgrade on an open stream.
pub(crate) async fn client_upgrade(
    mut io: Box<dyn Io>,
    endpoint: &Endpoint,
    config: &TransportConfig,
) -> Result<(WebSocket<Prefixed>, bool), TransportError> {
    let key = B64.encode(super::random_bytes::<16>()?);
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {WS_SUBPROTOCOL}\r\n",
        endpoint.path, endpoint.authority
    );
    if config.compression {
        request.push_str(&format!(
            "Sec-WebSocket-Extensions: {DEFLATE_EXTENSION}\r\n"
        ));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;

    let (head, rest) = read_head(&mut io).await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = matches!(resp.parse(&head), Ok(httparse::Status::Complete(_)));
    if !parsed || resp.code != Some(101) {
        return Err(TransportError::ProtocolError("WebSocket upgrade refused"));
    }
    let accept_ok = header_values(resp.headers, "sec-websocket-accept")
        .first()
        .is_some_and(|v| v.trim() == accept_key(&key));
    let ok = has_token(resp.headers, "upgrade", "websocket")
        && has_token(resp.headers, "connection", "upgrade")
        && accept_ok
        && header_values(resp.headers, "sec-websocket-protocol")
            .first()
            .is_some_and(|v| v.trim() == WS_SUBPROTOCOL);
    if !ok {
        return Err(TransportError::ProtocolError(
            "bad WebSocket upgrade response",
        ));
    }
    let answered: Vec<&str> = header_values(resp.headers, "sec-websocket-extensions");
    let deflate = match answered.as_slice() {
        [] => false,
        [one] if config.compression && offers_deflate(resp.headers) && !one.contains(',') => true,
        _ => {
            return Err(TransportError::ProtocolError(
                "server answered an extension that was not offered",
            ));
        }
    };
    let extension = if deflate {
        answered.first().map(|s| s.to_string())
    } else {
        None
    };
    let stream = Prefixed {
        prefix: rest,
        pos: 0,
        inner: io,
    };
    let ws = WebSocket::from_stream_with_extensions(
        stream,
        yawc::Role::Client,
        extension.as_deref(),
        ws_options(config, deflate),
    )
    .map_err(map_ws_error)?;
    Ok((ws, deflate))
}

/// Dials `endpoint`: TCP, TLS with `pin` (unless `ws://`, which needs
/// [`TransportConfig::allow_plaintext`]), then the WebSocket upgrade. No
/// agentfed handshake and no timeout (callers add one).
pub async fn dial(
    endpoint: &str,
    pin: &Pin,
    config: &TransportConfig,
) -> Result<WsConn, TransportError> {
    let ep = Endpoint::parse(endpoint)?;
    if !ep.tls && !config.allow_plaintext {
        return Err(TransportError::PlaintextNotAllowed);
    }
    if ep.tls {
        let tls_stream =
            tls::connect_tls_with(&ep.host, ep.port, pin, config.socket_buffer).await?;
        let remote_addr = tls_stream.get_ref().0.peer_addr()?;
        let binding = tls::client_binding(tls_stream.get_ref().1)?;
        let (ws, compression) = client_upgrade(Box::new(tls_stream), &ep, config).await?;
        Ok(WsConn {
            ws: Some(ws),
            owed_close: None,
            binding: Some(binding),
            remote_addr,
            compression,
        })
    } else {
        let tcp = tls::tcp_connect(&ep.host, ep.port, config.socket_buffer).await?;
        let remote_addr = tcp.peer_addr()?;
        let (ws, compression) = client_upgrade(Box::new(tcp), &ep, config).await?;
        Ok(WsConn {
            ws: Some(ws),
            owed_close: None,
            binding: None,
            remote_addr,
            compression,
        })
    }
}

/// Server side for an accepted TCP stream: TLS (when `acceptor` is given)
/// then the upgrade. No timeout (callers add one).
pub(crate) async fn accept(
    tcp: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    config: &TransportConfig,
) -> Result<WsConn, TransportError> {
    tcp.set_nodelay(true)?;
    let remote_addr = tcp.peer_addr()?;
    match acceptor {
        Some(acceptor) => {
            let tls_stream = acceptor.accept(tcp).await.map_err(tls::map_tls_error)?;
            let binding = tls::server_binding(tls_stream.get_ref().1)?;
            let (ws, compression) = server_upgrade(Box::new(tls_stream), config).await?;
            Ok(WsConn {
                ws: Some(ws),
                owed_close: None,
                binding: Some(binding),
                remote_addr,
                compression,
            })
        }
        None => {
            let (ws, compression) = server_upgrade(Box::new(tcp), config).await?;
            Ok(WsConn {
                ws: Some(ws),
                owed_close: None,
                binding: None,
                remote_addr,
                compression,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let ep = Endpoint::parse("wss://127.0.0.1:9100").ok();
        assert_eq!(
            ep,
            Some(Endpoint {
                tls: true,
                host: "127.0.0.1".into(),
                port: 9100,
                path: WS_PATH.into(),
                authority: "127.0.0.1:9100".into(),
            })
        );
        let ep = Endpoint::parse("ws://[::1]:80/custom/path").ok();
        assert_eq!(ep.as_ref().map(|e| e.host.as_str()), Some("::1"));
        assert_eq!(ep.as_ref().map(|e| e.path.as_str()), Some("/custom/path"));
        assert_eq!(ep.as_ref().map(|e| e.tls), Some(false));
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("wss://x").is_err());
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn codes_are_recognised() {
        assert!(is_code("PEER_SUSPENDED"));
        assert!(is_code("A1"));
        assert!(!is_code(""));
        assert!(!is_code("lower"));
        assert!(!is_code("1ABC"));
        assert!(!is_code(&"A".repeat(65)));
        assert!(!is_code("WITH SPACE"));
    }
}
