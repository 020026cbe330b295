//! Wire conformance of the WebSocket layer, black box: a raw client that
//! writes hand-made bytes over real TLS on 127.0.0.1 against the real
//! listener, and reads the server's frames byte by byte (the way an
//! independent implementation written from `docs/protocol.md` sees them).
//! Covers the closing handshake (the close code for every kind of refused
//! frame, then TLS `close_notify`; a peer's close frame answered), the
//! 431 for an oversized upgrade head, the ping limit of §3.2 and a TLS
//! client refused at once by a plaintext listener (§1.3).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentfed::transport::handshake::{HandshakeMessage, transcript};
use agentfed::transport::session::MAX_PINGS_PER_WINDOW;
use agentfed::transport::ws::MAX_WS_PAYLOAD;
use agentfed::transport::{
    AcceptAll, Connection, EXPORTER_LABEL, Listener, LocalNode, Role, TransportConfig, WS_PATH, tls,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::transport::{
    assert_still_serving, config, established, failure, listen, node, pin_of, raw_upgraded,
    read_to_close, within, ws_frame,
};

type RawStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One server frame: the first header byte (FIN, RSV, opcode) and the
/// payload. Server frames are never masked.
async fn read_frame(stream: &mut RawStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("length")];
    stream.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

/// What the server sent until it closed: the pongs it answered, its close
/// frame's status code and reason, and whether the TLS stream then ended
/// cleanly (`close_notify`; a bare TCP close reads as an unexpected EOF).
#[derive(Debug)]
struct Ending {
    pongs: usize,
    close: Option<(u16, String)>,
    close_notify: bool,
}

async fn read_ending(stream: &mut RawStream) -> Ending {
    let mut pongs = 0;
    loop {
        match read_frame(stream).await {
            Ok((0x8A, _)) => pongs += 1,
            Ok((0x88, payload)) => {
                assert!(payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                let mut rest = [0u8; 64];
                let close_notify = matches!(stream.read(&mut rest).await, Ok(0));
                return Ending {
                    pongs,
                    close: Some((code, reason)),
                    close_notify,
                };
            }
            Ok((other, _)) => panic!("unexpected frame {other:#04x} before the close"),
            Err(e) => {
                return Ending {
                    pongs,
                    close: None,
                    close_notify: e.kind() != io::ErrorKind::UnexpectedEof
                        && e.kind() != io::ErrorKind::ConnectionReset,
                };
            }
        }
    }
}

/// A frame from client to server with every header bit chosen by hand:
/// `first` is the whole first byte (FIN, RSV1-3, opcode); masked unless
/// `unmasked`.
fn raw_frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = ws_frame(first & 0x0f, false, payload);
    out[0] = first;
    if unmasked {
        out[1] &= 0x7f;
        let header = out.len() - payload.len() - 4;
        out.drain(header..header + 4);
        out.truncate(header);
        out.extend_from_slice(payload);
    }
    out
}

/// A session whose client is a raw TLS stream: the handshake is run by
/// hand over hand-made frames, so the test can then write any bytes at
/// all. Returns the stream and the server's side of the session.
async fn raw_session(server: &LocalNode, listener: &mut Listener) -> (RawStream, Connection) {
    let me = node("rawclient");
    let mut stream = raw_upgraded(server, listener).await;
    let hello = HandshakeMessage::Hello {
        version: 1,
        nonce: [9u8; 32],
        manifest_json: me.manifest_json().to_vec(),
    };
    stream
        .write_all(&ws_frame(0x2, false, &hello.encode()))
        .await
        .expect("hello");
    let (op, reply) = within("server hello", read_frame(&mut stream))
        .await
        .expect("hello frame");
    assert_eq!(op, 0x82);
    let Ok(HandshakeMessage::Hello {
        nonce: server_nonce,
        manifest_json: server_json,
        ..
    }) = HandshakeMessage::decode(&reply)
    else {
        panic!("expected HELLO");
    };
    let exporter = stream
        .get_ref()
        .1
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .expect("exporter");
    let t = transcript(
        Role::Client,
        &exporter,
        &server_nonce,
        &me.manifest_json(),
        &server_json,
    );
    let signature = me.identity().sign(&t).to_bytes();
    stream
        .write_all(&ws_frame(
            0x2,
            false,
            &HandshakeMessage::Auth { signature }.encode(),
        ))
        .await
        .expect("auth");
    for want in ["AUTH", "SESSION"] {
        let (op, msg) = within("server auth and session", read_frame(&mut stream))
            .await
            .expect("frame");
        assert_eq!(op, 0x82, "{want}");
        let msg = HandshakeMessage::decode(&msg).expect("decodes");
        assert!(
            matches!(
                (&msg, want),
                (HandshakeMessage::Auth { .. }, "AUTH")
                    | (HandshakeMessage::Session { .. }, "SESSION")
            ),
            "expected {want}, got {msg:?}"
        );
    }
    let conn = established(listener).await;
    (stream, conn)
}

/// Frames the WebSocket layer refuses, each with the close code it must
/// earn (`docs/protocol.md` §3.2: 1009 for size, 1002 for the rest).
fn refused_frames() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let mut over_cap_header = vec![0x82, 0x80 | 127];
    over_cap_header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    over_cap_header.extend_from_slice(&[1, 2, 3, 4]);
    let half = vec![7u8; MAX_WS_PAYLOAD / 2 + 16];
    let mut fragmented = raw_frame(0x02, &half, false); // binary, no FIN
    fragmented.extend(raw_frame(0x80, &half, false)); // continuation, FIN
    vec![
        (
            "message over the cap",
            ws_frame(0x2, false, &vec![1u8; MAX_WS_PAYLOAD + 1]),
            1009,
            "MESSAGE_TOO_LARGE",
        ),
        (
            "header claiming 2^62 bytes",
            over_cap_header,
            1009,
            "MESSAGE_TOO_LARGE",
        ),
        (
            "fragmented message over the cap",
            fragmented,
            1009,
            "MESSAGE_TOO_LARGE",
        ),
        (
            "reserved data opcode",
            raw_frame(0x83, b"x", false),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "reserved control opcode",
            raw_frame(0x8B, b"x", false),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "RSV2 set",
            raw_frame(0xA2, b"x", false),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "RSV1 without permessage-deflate",
            raw_frame(0xC2, b"x", false),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "unmasked client frame",
            raw_frame(0x82, b"unmasked", true),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "random bytes",
            b"\x7f\x13\xa5\x00\x9c\x41garbage".to_vec(),
            1002,
            "PROTOCOL_ERROR",
        ),
        (
            "text message",
            ws_frame(0x1, false, b"text"),
            1002,
            "PROTOCOL_ERROR",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_on_a_session_get_their_close_code_then_close_notify() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    for (what, bytes, code, reason) in refused_frames() {
        let (mut stream, s) = raw_session(&server, &mut listener).await;
        // The write may fail half-way once the server has closed.
        let _ = stream.write_all(&bytes).await;
        let ending = within(what, read_ending(&mut stream)).await;
        assert_eq!(
            ending.close,
            Some((code, reason.to_string())),
            "{what}: {ending:?}"
        );
        assert!(ending.close_notify, "{what}: no close_notify: {ending:?}");
        let end = within("server side closes", s.closed()).await;
        assert_eq!((end.code.as_str(), end.by_peer), (reason, false), "{what}");
    }
    assert_still_serving(&server, &node("client"), &mut listener).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_during_the_handshake_get_their_close_code_and_no_reject() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    for (what, bytes, code, reason) in refused_frames() {
        if what == "text message" {
            // Not the WebSocket layer's refusal: a handshake failure
            // (REJECT(PROTOCOL_ERROR), then 1008), tested elsewhere.
            continue;
        }
        let mut stream = raw_upgraded(&server, &listener).await;
        let _ = stream.write_all(&bytes).await;
        // The close frame comes first: no REJECT may follow a refused
        // frame (the WebSocket conversation is over).
        let ending = within(what, read_ending(&mut stream)).await;
        assert_eq!(
            ending.close,
            Some((code, reason.to_string())),
            "{what}: {ending:?}"
        );
        assert!(ending.close_notify, "{what}: no close_notify: {ending:?}");
        assert_eq!(failure(&mut listener).await.error.code(), reason, "{what}");
    }
    assert_still_serving(&server, &node("client"), &mut listener).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_close_frame_is_answered_with_its_code() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;

    // On an established session: the reason is the peer's constant code.
    let (mut stream, s) = raw_session(&server, &mut listener).await;
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"GOING_AWAY");
    stream
        .write_all(&raw_frame(0x88, &close, false))
        .await
        .expect("close");
    let ending = within("answer to close", read_ending(&mut stream)).await;
    assert_eq!(
        ending.close,
        Some((1001, "GOING_AWAY".into())),
        "{ending:?}"
    );
    assert!(ending.close_notify, "{ending:?}");
    let end = within("server side closes", s.closed()).await;
    assert_eq!((end.code.as_str(), end.by_peer), ("GOING_AWAY", true));

    // During the handshake, with free text as reason: the code is echoed,
    // the text is not (the reason is the constant code it maps to).
    let mut stream = raw_upgraded(&server, &listener).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye now");
    stream
        .write_all(&raw_frame(0x88, &close, false))
        .await
        .expect("close");
    let ending = within("answer to close", read_ending(&mut stream)).await;
    assert_eq!(ending.close, Some((1000, "NORMAL".into())), "{ending:?}");
    assert!(ending.close_notify, "{ending:?}");
    assert_eq!(
        failure(&mut listener).await.error.code(),
        "CONNECTION_CLOSED"
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_120_pings_per_window_are_answered_then_flood() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let (mut stream, s) = raw_session(&server, &mut listener).await;
    let mut pings = Vec::new();
    for i in 0..=u64::from(MAX_PINGS_PER_WINDOW) {
        pings.extend(ws_frame(0x9, false, &i.to_be_bytes()));
    }
    stream.write_all(&pings).await.expect("pings");
    let ending = within("flood close", read_ending(&mut stream)).await;
    assert_eq!(ending.pongs, MAX_PINGS_PER_WINDOW as usize, "{ending:?}");
    assert_eq!(ending.close, Some((1008, "FLOOD".into())), "{ending:?}");
    assert!(ending.close_notify, "{ending:?}");
    let end = within("server side closes", s.closed()).await;
    assert_eq!((end.code.as_str(), end.by_peer), ("FLOOD", false));
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_head_over_8_kib_is_answered_431() {
    use agentfed::transport::ws::MAX_UPGRADE_HEAD;
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let port = listener.local_addr().port();
    let head = |pad: usize| {
        format!(
            "GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: agentfed.v1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let base = head(0).len();

    // One byte over the limit, and far over it (sent without waiting for
    // the answer, as a client that does not know the limit would).
    for pad in [MAX_UPGRADE_HEAD + 1 - base, 64 * 1024] {
        let request = head(pad);
        assert!(request.len() > MAX_UPGRADE_HEAD);
        let mut stream = tls::connect_tls("127.0.0.1", port, &pin_of(&server))
            .await
            .expect("tls");
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = within("431", read_to_close(&mut stream)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{pad}: {answer}");
        assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
        assert_eq!(failure(&mut listener).await.error.code(), "PROTOCOL_ERROR");
    }

    // At the limit exactly, the upgrade goes through.
    let request = head(MAX_UPGRADE_HEAD - base);
    assert_eq!(request.len(), MAX_UPGRADE_HEAD);
    let mut stream = tls::connect_tls("127.0.0.1", port, &pin_of(&server))
        .await
        .expect("tls");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = [0u8; 12];
    within("101", stream.read_exact(&mut answer))
        .await
        .expect("read");
    assert_eq!(&answer, b"HTTP/1.1 101");
    drop(stream);
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_hello_to_a_plaintext_listener_is_refused_at_once() {
    let server = node("server");
    // A long handshake timeout: the refusal must not come from it.
    let open = TransportConfig {
        allow_plaintext: true,
        handshake_timeout: Duration::from_secs(60),
        ..config()
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut listener = Listener::bind_plaintext(addr, server.clone(), open, Arc::new(AcceptAll))
        .await
        .expect("plaintext listener");
    let port = listener.local_addr().port();
    let soon = Duration::from_secs(10);

    // A real TLS client: its ClientHello gets an HTTP 400, not TLS.
    let dialed = tokio::time::timeout(soon, tls::connect_tls("127.0.0.1", port, &pin_of(&server)))
        .await
        .expect("refused at once, not at the handshake timeout");
    assert!(dialed.is_err());
    let fail = tokio::time::timeout(soon, failure(&mut listener))
        .await
        .expect("failure reported at once");
    assert_eq!(fail.error.code(), "PROTOCOL_ERROR");

    // The same seen raw: the start of a TLS record is answered 400.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4])
        .await
        .expect("record start");
    let answer = tokio::time::timeout(soon, read_to_close(&mut tcp))
        .await
        .expect("answered at once");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer}");
    assert_eq!(failure(&mut listener).await.error.code(), "PROTOCOL_ERROR");
    listener.shutdown().await;
}
