//! The wire over real TLS on 127.0.0.1 with real node identities: the
//! mutual handshake, pinning, refusals of misbehaving peers (raw clients
//! where needed), size caps, the compression-bomb cap, stream priorities
//! and session renewal. Every wait has a named timeout; every connection
//! and listener is closed at the end of its test.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentfed::clock::{Clock, ManualClock, SystemClock};
use agentfed::identity::{Identity, ManifestParams, NodeId, SignedManifest};
use agentfed::transport::handshake::{HandshakeMessage, PEER_SUSPENDED, UNTRUSTED, transcript};
use agentfed::transport::ws::{self, MAX_WS_PAYLOAD, WsConn};
use agentfed::transport::{
    AcceptAll, Accepted, Connection, EventKind, HandshakeFailure, HandshakePolicy, Listener,
    LocalNode, PeerContext, Pin, PinOutcome, Priority, RejectCode, Rejection, Role,
    TransportConfig, TransportError, WS_PATH, connect, tls,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Generous bound for any single wait on a loaded 2-core machine.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn identity(name: &str) -> Arc<Identity> {
    let id = NodeId::parse(name).expect("node id");
    Arc::new(Identity::generate(&id, "wss://127.0.0.1:9100").expect("identity"))
}

fn manifest_of(id: &Identity) -> SignedManifest {
    id.signed_manifest(
        &ManifestParams::new(Ipv4Addr::new(198, 18, 0, 7)),
        SystemClock.now_ms(),
    )
    .expect("manifest")
}

pub(crate) fn node(name: &str) -> LocalNode {
    let id = identity(name);
    let manifest = manifest_of(&id);
    LocalNode::new(id, manifest).expect("local node")
}

/// Re-signs `edit(manifest)` with the node's real key, bypassing
/// validation: a peer lying in a correctly signed manifest.
fn lying_node(
    id: Arc<Identity>,
    edit: impl FnOnce(&mut agentfed::identity::Manifest),
) -> LocalNode {
    let mut manifest = manifest_of(&id).manifest;
    edit(&mut manifest);
    let bytes = manifest.canonical_bytes().expect("canonical bytes");
    let signature = B64.encode(id.sign(&bytes).to_bytes());
    LocalNode::new_unchecked(
        id,
        SignedManifest {
            manifest,
            signature,
        },
    )
}

pub(crate) fn pin_of(n: &LocalNode) -> Pin {
    Pin::Fingerprint(n.identity().tls_fingerprint().to_string())
}

pub(crate) fn config() -> TransportConfig {
    TransportConfig {
        handshake_timeout: Duration::from_secs(10),
        ..TransportConfig::default()
    }
}

pub(crate) async fn listen(
    n: &LocalNode,
    config: TransportConfig,
    policy: Arc<dyn HandshakePolicy>,
) -> Listener {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Listener::bind(addr, n.clone(), config, policy)
        .await
        .expect("listener binds")
}

pub(crate) fn wss(l: &Listener) -> String {
    format!("wss://{}", l.local_addr())
}

pub(crate) async fn established(l: &mut Listener) -> Connection {
    match within("listener result", l.next()).await {
        Some(Accepted::Established(c)) => c,
        Some(Accepted::Failed(f)) => panic!("expected a session, got failure {f:?}"),
        None => panic!("listener closed"),
    }
}

pub(crate) async fn failure(l: &mut Listener) -> HandshakeFailure {
    match within("listener failure", l.next()).await {
        Some(Accepted::Failed(f)) => f,
        Some(Accepted::Established(c)) => panic!("expected a failure, got {c:?}"),
        None => panic!("listener closed"),
    }
}

async fn close_all(conns: &[&Connection]) {
    for c in conns {
        c.close("NORMAL");
    }
    for c in conns {
        within("connection close", c.closed()).await;
    }
}

async fn pair(
    server_cfg: TransportConfig,
    client_cfg: TransportConfig,
) -> (Listener, Connection, Connection) {
    let server = node("server");
    let client = node("client");
    let mut listener = listen(&server, server_cfg, Arc::new(AcceptAll)).await;
    let (c, s) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &client, client_cfg.clone()),
        established(&mut listener)
    );
    (listener, c.expect("client connects"), s)
}

/// `connect` with owned arguments (so it can be joined with a borrow of
/// the listener).
async fn dial(
    url: String,
    pin: Pin,
    me: &LocalNode,
    cfg: TransportConfig,
) -> Result<Connection, TransportError> {
    connect(&url, pin, me, &cfg, &AcceptAll).await
}

/// Reads until EOF or error; returns what was read.
pub(crate) async fn read_to_close(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A well-behaved client still gets a session from `listener` (after a
/// misbehaving one was refused).
pub(crate) async fn assert_still_serving(
    server: &LocalNode,
    client: &LocalNode,
    listener: &mut Listener,
) {
    let (c, s) = tokio::join!(
        dial(wss(listener), pin_of(server), client, config()),
        established(listener)
    );
    let c = c.expect("a well-behaved client is still served");
    close_all(&[&c, &s]).await;
}

/// Runs the client side of the handshake by hand over a raw WebSocket,
/// with a fixed nonce; returns the AUTH signature it sent and the reply
/// after it.
async fn manual_handshake(
    ws: &mut WsConn,
    me: &LocalNode,
    nonce: [u8; 32],
) -> ([u8; 64], HandshakeMessage) {
    let hello = HandshakeMessage::Hello {
        version: 1,
        nonce,
        manifest_json: me.manifest_json().to_vec(),
    };
    ws.send(&hello.encode()).await.expect("send hello");
    let reply = ws.recv().await.expect("server hello");
    let Ok(HandshakeMessage::Hello {
        nonce: server_nonce,
        manifest_json: server_json,
        ..
    }) = HandshakeMessage::decode(&reply)
    else {
        panic!("expected HELLO");
    };
    let exporter = ws.exporter().expect("TLS exporter");
    let t = transcript(
        Role::Client,
        &exporter,
        &server_nonce,
        &me.manifest_json(),
        &server_json,
    );
    let signature = me.identity().sign(&t).to_bytes();
    ws.send(&HandshakeMessage::Auth { signature }.encode())
        .await
        .expect("send auth");
    let next = ws.recv().await.expect("reply to auth");
    (signature, HandshakeMessage::decode(&next).expect("decodes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_handshake_agrees_on_session_and_carries_messages_both_ways() {
    let server = node("server");
    let client = node("client");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let cfg = config();

    // Pinned by fingerprint.
    let (c, s) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &client, cfg.clone()),
        established(&mut listener)
    );
    let mut c = c.expect("client connects");
    let mut s = s;
    let (cs, ss) = (c.session(), s.session());
    assert_eq!(cs.session_id, ss.session_id);
    assert_eq!(cs.session_id.len(), 32);
    assert_eq!(cs.expires_at_ms, ss.expires_at_ms);
    assert_eq!(cs.max_expires_at_ms, ss.max_expires_at_ms);
    assert_eq!(ss.max_expires_at_ms - ss.created_at_ms, 24 * 3600 * 1000);
    assert_eq!(ss.expires_at_ms - ss.created_at_ms, 3600 * 1000);
    assert_eq!((cs.role, ss.role), (Role::Client, Role::Server));
    assert_eq!(cs.peer.manifest.node_id, "server");
    assert_eq!(ss.peer.manifest.node_id, "client");
    assert_eq!(
        cs.peer_cert_fingerprint.as_deref(),
        Some(server.identity().tls_fingerprint())
    );
    assert_eq!(cs.pin, PinOutcome::Fingerprint);
    assert_eq!(ss.pin, PinOutcome::Inbound);
    assert!(cs.encrypted && ss.encrypted && cs.compression && ss.compression);
    assert_eq!(&*ss.peer_manifest_json, &*client.manifest_json());

    // Messages both ways.
    c.send_message(Priority::Interactive, b"to server".to_vec())
        .await
        .expect("send");
    let m = within("server receives", s.recv()).await.expect("message");
    assert_eq!(
        (m.data.as_slice(), m.priority, m.stream_id % 2),
        (&b"to server"[..], Priority::Interactive, 1)
    );
    s.send_message(Priority::Bulk, vec![7u8; 200_000])
        .await
        .expect("send");
    let m = within("client receives", c.recv()).await.expect("message");
    assert_eq!(
        (m.data.len(), m.priority, m.stream_id % 2),
        (200_000, Priority::Bulk, 0)
    );

    // Requests both ways, answered by the other side's reader.
    let (sh, mut s_in) = s.into_parts();
    let server_echo = tokio::spawn(async move {
        while let Some(mut msg) = s_in.recv().await {
            if let Some(r) = msg.take_responder() {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&msg.data);
                let _ = r.reply(reply).await;
            }
        }
    });
    let reply = c
        .request(Priority::Interactive, b"ping".to_vec(), WAIT)
        .await
        .expect("reply");
    assert_eq!(reply, b"echo:ping");
    let big = vec![3u8; 1_000_000]; // many frames, compressible
    let reply = c
        .request(Priority::Bulk, big.clone(), WAIT)
        .await
        .expect("big reply");
    assert_eq!(reply.len(), 5 + big.len());

    let client_echo = tokio::spawn(async move {
        if let Some(mut msg) = c.recv().await
            && let Some(r) = msg.take_responder()
        {
            let _ = r.reply(b"pong".to_vec()).await;
        }
        c
    });
    let reply = sh
        .request(Priority::Control, b"ping".to_vec(), WAIT)
        .await
        .expect("reply");
    assert_eq!(reply, b"pong");
    let c = within("client echo task", client_echo).await.expect("task");

    // Public-key pin and trust on first use, against the same server.
    let (c2, s2) = tokio::join!(
        dial(
            wss(&listener),
            Pin::PublicKey(server.identity().verifying_key().to_bytes()),
            &client,
            cfg.clone()
        ),
        established(&mut listener)
    );
    let c2 = c2.expect("public-key pin connects");
    assert_eq!(c2.session().pin, PinOutcome::PublicKey);
    let (c3, s3) = tokio::join!(
        dial(wss(&listener), Pin::AcceptNew, &client, cfg.clone()),
        established(&mut listener)
    );
    let c3 = c3.expect("accept-new connects");
    assert_eq!(
        c3.session().pin,
        PinOutcome::NewPeer {
            fingerprint: server.identity().tls_fingerprint().to_string()
        }
    );

    // A close is seen by the other side with its code.
    c.close("NORMAL");
    let seen = within("server sees close", sh.closed()).await;
    assert_eq!(seen.code, "NORMAL");
    assert!(seen.by_peer);
    within("server echo task", server_echo).await.expect("task");
    drop(c);
    close_all(&[&c2, &s2, &c3, &s3]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_matching_the_pin_is_refused() {
    let server = node("server");
    let client = node("client");
    let stranger = identity("stranger");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let wrong = Pin::Fingerprint(stranger.tls_fingerprint().to_string());
    let (res, fail) = tokio::join!(
        dial(wss(&listener), wrong, &client, config()),
        failure(&mut listener)
    );
    assert_eq!(res.err(), Some(TransportError::PinMismatch));
    assert_eq!(fail.error.code(), "TLS_ERROR");
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_pin_with_another_key_is_refused() {
    let server = node("server");
    let client = node("client");
    let stranger = identity("stranger");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let wrong = Pin::PublicKey(stranger.verifying_key().to_bytes());
    let (res, fail) = tokio::join!(
        dial(wss(&listener), wrong, &client, config()),
        failure(&mut listener)
    );
    assert_eq!(res.err(), Some(TransportError::PinMismatch));
    assert_eq!(
        fail.error,
        TransportError::Rejected {
            code: RejectCode::new("PIN_MISMATCH").expect("code"),
            by_peer: true
        }
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_naming_another_certificate_is_refused_under_every_pin() {
    let real = identity("server");
    let other = identity("other");
    let liar = lying_node(real.clone(), |m| {
        m.tls_fingerprint = other.tls_fingerprint().into()
    });
    let client = node("client");
    let mut listener = listen(&liar, config(), Arc::new(AcceptAll)).await;
    let pins = [
        Pin::AcceptNew,
        Pin::PublicKey(real.verifying_key().to_bytes()),
        Pin::Fingerprint(real.tls_fingerprint().to_string()),
    ];
    for pin in pins {
        let (res, fail) = tokio::join!(
            dial(wss(&listener), pin.clone(), &client, config()),
            failure(&mut listener)
        );
        assert_eq!(res.err(), Some(TransportError::CertMismatch), "{pin:?}");
        assert_eq!(fail.error.code(), "REJECTED", "{pin:?}");
        // The client refused before its AUTH: its node id is unproven.
        assert_eq!(fail.peer_node_id, None);
    }
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_signature_or_field_is_refused() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;

    // A flipped signature bit.
    let id = identity("forger");
    let mut manifest = manifest_of(&id);
    let mut raw = B64.decode(&manifest.signature).expect("b64");
    raw[5] ^= 1;
    manifest.signature = B64.encode(&raw);
    let forger = LocalNode::new_unchecked(id, manifest);
    let (res, fail) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &forger, config()),
        failure(&mut listener)
    );
    assert_eq!(
        res.err(),
        Some(TransportError::Rejected {
            code: RejectCode::new("BAD_SIGNATURE").expect("code"),
            by_peer: true
        })
    );
    assert_eq!(fail.error, TransportError::BadSignature);
    assert_eq!(fail.peer_node_id, None);

    // A correctly signed manifest breaking a field grammar.
    let bad_field = lying_node(identity("sloppy"), |m| {
        m.endpoint = Some("http://example.invalid".into())
    });
    let (res, fail) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &bad_field, config()),
        failure(&mut listener)
    );
    assert_eq!(
        res.err().map(|e| e.to_string()),
        Some("REJECTED(BAD_MANIFEST)".into())
    );
    assert_eq!(fail.error.code(), "BAD_MANIFEST");
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replayed_on_another_tls_session_is_refused() {
    let server = node("server");
    let client = node("client");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let nonce = [42u8; 32];

    // A valid handshake, done by hand, to capture the client's AUTH.
    let mut first = within(
        "dial",
        ws::dial(&wss(&listener), &pin_of(&server), &config()),
    )
    .await
    .expect("dial");
    let (captured, reply) = within(
        "manual handshake",
        manual_handshake(&mut first, &client, nonce),
    )
    .await;
    assert!(matches!(reply, HandshakeMessage::Auth { .. }), "{reply:?}");
    let session =
        HandshakeMessage::decode(&within("session", first.recv()).await.expect("session"));
    assert!(matches!(session, Ok(HandshakeMessage::Session { .. })));
    let s1 = established(&mut listener).await;

    // The same HELLO and the captured AUTH on a new TLS session.
    let mut second = within(
        "dial",
        ws::dial(&wss(&listener), &pin_of(&server), &config()),
    )
    .await
    .expect("dial");
    let hello = HandshakeMessage::Hello {
        version: 1,
        nonce,
        manifest_json: client.manifest_json().to_vec(),
    };
    second.send(&hello.encode()).await.expect("hello");
    let _server_hello = within("hello", second.recv()).await.expect("server hello");
    assert_ne!(first.exporter(), second.exporter());
    second
        .send(
            &HandshakeMessage::Auth {
                signature: captured,
            }
            .encode(),
        )
        .await
        .expect("replay auth");
    let answer = HandshakeMessage::decode(&within("refusal", second.recv()).await.expect("answer"));
    assert_eq!(
        answer.ok(),
        Some(HandshakeMessage::Reject {
            code: RejectCode::new("BAD_SIGNATURE").expect("code")
        })
    );
    let fail = failure(&mut listener).await;
    assert_eq!(fail.error, TransportError::BadSignature);
    // A replayed HELLO + AUTH must not pin the failure on the real client.
    assert_eq!(fail.peer_node_id, None);

    first.close("NORMAL").await;
    within("server session ends", s1.closed()).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_refuse_peers_with_constant_codes() {
    let server = node("server");
    let client = node("mallory");
    let suspended = |peer: &PeerContext<'_>| {
        if peer.manifest.manifest.node_id == "mallory" {
            Err(Rejection::new(PEER_SUSPENDED))
        } else {
            Ok(())
        }
    };
    let mut listener = listen(&server, config(), Arc::new(suspended)).await;
    let (res, fail) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &client, config()),
        failure(&mut listener)
    );
    let code = RejectCode::new(PEER_SUSPENDED).expect("code");
    assert_eq!(
        res.err(),
        Some(TransportError::Rejected {
            code: code.clone(),
            by_peer: true
        })
    );
    assert_eq!(
        fail.error,
        TransportError::Rejected {
            code,
            by_peer: false
        }
    );
    assert_eq!(fail.peer_node_id.as_deref(), Some("mallory"));
    listener.shutdown().await;

    // The client refuses the server.
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let untrusted = |_: &PeerContext<'_>| Err(Rejection::new(UNTRUSTED));
    let (url, alice, cfg) = (wss(&listener), node("alice"), config());
    let (res, fail) = tokio::join!(
        connect(&url, pin_of(&server), &alice, &cfg, &untrusted),
        failure(&mut listener)
    );
    let code = RejectCode::new(UNTRUSTED).expect("code");
    assert_eq!(
        res.err(),
        Some(TransportError::Rejected {
            code: code.clone(),
            by_peer: false
        })
    );
    assert_eq!(
        fail.error,
        TransportError::Rejected {
            code,
            by_peer: true
        }
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_non_websocket_traffic_is_dropped_and_the_listener_keeps_serving() {
    let server = node("server");
    let client = node("client");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let addr = listener.local_addr();

    // Random bytes instead of TLS.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = tcp.write_all(&garbage).await;
    within("garbage dropped", read_to_close(&mut tcp)).await;
    assert_eq!(failure(&mut listener).await.error.code(), "TLS_ERROR");

    // Plain HTTP to the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    within("plain http dropped", read_to_close(&mut tcp)).await;
    assert_eq!(failure(&mut listener).await.error.code(), "TLS_ERROR");

    // TLS, then HTTP that is not a WebSocket upgrade, and a wrong path.
    let not_upgrade = format!("GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n\r\n");
    for (request, status) in [
        (not_upgrade.as_str(), "HTTP/1.1 400"),
        (
            "GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "HTTP/1.1 404",
        ),
        ("\x16\x03garbage after TLS\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let mut tls_stream = tls::connect_tls("127.0.0.1", addr.port(), &pin_of(&server))
            .await
            .expect("tls");
        tls_stream
            .write_all(request.as_bytes())
            .await
            .expect("write");
        let answer = within("http refusal", read_to_close(&mut tls_stream)).await;
        assert!(
            String::from_utf8_lossy(&answer).starts_with(status),
            "{request:?}"
        );
        assert_eq!(failure(&mut listener).await.error.code(), "PROTOCOL_ERROR");
    }

    // A WebSocket whose first message is garbage.
    let mut raw = ws::dial(&wss(&listener), &pin_of(&server), &config())
        .await
        .expect("dial");
    raw.send(b"\x01\x01not a nonce").await.expect("send");
    let answer = within("reject", raw.recv()).await.expect("answer");
    assert_eq!(
        HandshakeMessage::decode(&answer).ok(),
        Some(HandshakeMessage::Reject {
            code: RejectCode::new("PROTOCOL_ERROR").expect("code")
        })
    );
    assert_eq!(failure(&mut listener).await.error.code(), "PROTOCOL_ERROR");

    assert_still_serving(&server, &client, &mut listener).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_dropped_at_the_handshake_timeout() {
    let server = node("server");
    let client = node("client");
    let timeout = Duration::from_millis(2500);
    let cfg = TransportConfig {
        handshake_timeout: timeout,
        ..config()
    };
    let mut listener = listen(&server, cfg, Arc::new(AcceptAll)).await;
    let addr = listener.local_addr();
    let started = Instant::now();

    let silent = tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        read_to_close(&mut tcp).await;
        Instant::now()
    });
    let slow = tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        // The start of a TLS record, one byte a second.
        let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        let mut buf = [0u8; 64];
        for b in hello.iter().cycle() {
            tokio::select! {
                r = tcp.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if tcp.write_all(&[*b]).await.is_err() { break }
                }
            }
        }
        Instant::now()
    });

    // A well-behaved client is served meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (c, s) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &client, config()),
        established(&mut listener)
    );
    let c = c.expect("served while others stall");

    let silent_end = within("silent client dropped", silent).await.expect("task");
    let slow_end = within("slow client dropped", slow).await.expect("task");
    for end in [silent_end, slow_end] {
        let took = end - started;
        assert!(took >= timeout - Duration::from_millis(300), "{took:?}");
        assert!(took < timeout + Duration::from_secs(5), "{took:?}");
    }
    for _ in 0..2 {
        assert_eq!(
            failure(&mut listener).await.error,
            TransportError::HandshakeTimeout
        );
    }
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_message_too_large() {
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    let server_cfg = TransportConfig {
        max_message_size: 1 << 20,
        on_event: Some(Arc::new(move |e| {
            if let EventKind::StreamRefused { code, .. } = e.kind {
                seen.lock().expect("lock").push(code);
            }
        })),
        ..config()
    };
    let client_cfg = TransportConfig {
        max_message_size: 4 << 20,
        ..config()
    };
    let (listener, c, mut s) = pair(server_cfg, client_cfg).await;

    // The receiver refuses a message over its cap; the connection lives on.
    let err = c.request(Priority::Bulk, vec![1u8; 2 << 20], WAIT).await;
    assert_eq!(err.err(), Some(TransportError::MessageTooLarge));
    assert_eq!(
        refused.lock().expect("lock").as_slice(),
        &["MESSAGE_TOO_LARGE"]
    );
    c.send_message(Priority::Interactive, b"still here".to_vec())
        .await
        .expect("send");
    let m = within("message after refusal", s.recv())
        .await
        .expect("message");
    assert_eq!(m.data, b"still here");

    // The sender refuses before sending anything.
    assert_eq!(
        s.send_message(Priority::Bulk, vec![0u8; (1 << 20) + 1])
            .await
            .err(),
        Some(TransportError::MessageTooLarge)
    );
    let mut tx = s.open_stream(Priority::Bulk).await.expect("stream");
    tx.write(&vec![0u8; 1 << 20]).await.expect("up to the cap");
    assert_eq!(
        tx.write(b"x").await.err(),
        Some(TransportError::MessageTooLarge)
    );
    close_all(&[&c, &s]).await;

    // A raw WebSocket message over the frame cap closes the connection.
    let server = node("big");
    let mut listener2 = listen(&server, config(), Arc::new(AcceptAll)).await;
    let mut raw = ws::dial(&wss(&listener2), &pin_of(&server), &config())
        .await
        .expect("dial");
    let _ = raw.send(&vec![1u8; MAX_WS_PAYLOAD + 1]).await;
    let answer = within("close", raw.recv()).await;
    assert_eq!(
        answer.err(),
        Some(TransportError::ConnectionClosed("MESSAGE_TOO_LARGE".into()))
    );
    assert_eq!(
        failure(&mut listener2).await.error,
        TransportError::MessageTooLarge
    );
    listener.shutdown().await;
    listener2.shutdown().await;
}

/// A WebSocket frame (client to server: masked) with RSV1 set when
/// `compressed`.
pub(crate) fn ws_frame(opcode: u8, compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | if compressed { 0x40 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_bomb_is_refused_at_the_inflate_cap() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let (mut stream, head) = raw_upgraded_with(
        &server,
        &listener,
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
    )
    .await;
    assert!(head.contains("permessage-deflate"), "{head}");

    // 16 MiB of zeros deflate to a few KiB: far below the frame cap on the
    // wire, far above it inflated.
    let inflated = vec![0u8; 16 << 20];
    let mut deflater = flate2::Compress::new(flate2::Compression::best(), false);
    let mut bomb = Vec::with_capacity(1 << 20);
    deflater
        .compress_vec(&inflated, &mut bomb, flate2::FlushCompress::Sync)
        .expect("deflate");
    assert!(bomb.ends_with(&[0, 0, 0xff, 0xff]));
    bomb.truncate(bomb.len() - 4);
    assert!(bomb.len() < MAX_WS_PAYLOAD / 2, "{}", bomb.len());
    stream
        .write_all(&ws_frame(0x2, true, &bomb))
        .await
        .expect("bomb");

    let answer = within("connection closed", read_to_close(&mut stream)).await;
    // The server's close frame: opcode 8, status 1009 (message too big).
    assert!(answer.len() >= 4 && answer[0] == 0x88, "{answer:?}");
    assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), 1009);
    assert_eq!(
        failure(&mut listener).await.error,
        TransportError::MessageTooLarge
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_in_flight_does_not_hold_back_pings() {
    // Without compression: deflating 16 MiB of noise in a debug build only
    // slows the test (the first test covers compressed multi-frame traffic).
    let plain = TransportConfig {
        compression: false,
        ..config()
    };
    let (listener, c, s) = pair(config(), plain).await;
    assert!(!c.session().compression);
    let (sh, mut incoming) = s.into_parts();
    let arrivals = tokio::spawn(async move {
        let mut order = Vec::new();
        while order.len() < 21 {
            match incoming.recv().await {
                Some(m) => order.push((m.priority, m.data.len(), Instant::now())),
                None => break,
            }
        }
        (order, incoming)
    });

    // Pseudo-random (barely compressible) bulk data, 16 MiB.
    const BULK: usize = 16 << 20;
    let mut state = 0x1234_5678_9abc_def0u64;
    let bulk: Vec<u8> = (0..BULK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut tx = c.open_stream(Priority::Bulk).await.expect("bulk stream");
    tx.write(&bulk[..1 << 20]).await.expect("first MiB queued");
    let rest = bulk[1 << 20..].to_vec();
    let bulk_task = tokio::spawn(async move {
        tx.write(&rest).await.expect("rest queued");
        tx.finish().await.expect("finish");
    });
    let started = Instant::now();
    for i in 0..20u8 {
        c.send_message(Priority::Interactive, vec![i; 16])
            .await
            .expect("ping");
    }
    let (order, incoming) = within("all messages", arrivals).await.expect("task");
    within("bulk queued", bulk_task).await.expect("task");
    assert_eq!(order.len(), 21);
    for (i, (prio, len, _)) in order.iter().take(20).enumerate() {
        assert_eq!((*prio, *len), (Priority::Interactive, 16), "message {i}");
    }
    let (prio, len, bulk_done) = order[20];
    assert_eq!((prio, len), (Priority::Bulk, BULK));
    let last_ping = order[19].2;
    eprintln!(
        "20 pings done {:?} after start, bulk done {:?} after start",
        last_ping - started,
        bulk_done - started
    );
    assert!(last_ping < bulk_done);
    drop(incoming);
    close_all(&[&c]).await;
    within("server closes", sh.closed()).await;
    listener.shutdown().await;
}

/// The query case of the same rule: a node answering a query while it is
/// itself sending a 16 MiB context-share to the asker. The reply travels
/// the same way as the bulk transfer, and still arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_overtakes_a_bulk_transfer_going_the_same_way() {
    let plain = TransportConfig {
        compression: false,
        ..config()
    };
    let (listener, c, s) = pair(plain.clone(), plain).await;
    let (sh, mut server_incoming) = s.into_parts();
    let answering = tokio::spawn(async move {
        while let Some(mut m) = server_incoming.recv().await {
            if let Some(r) = m.take_responder() {
                let _ = r.reply(b"pong".to_vec()).await;
            }
        }
    });
    let (ch, mut client_incoming) = c.into_parts();

    const BULK: usize = 16 << 20;
    let bulk = vec![0x5a_u8; BULK];
    // The first MiB is queued before the query is asked: the bulk
    // transfer is under way.
    let mut tx = sh.open_stream(Priority::Bulk).await.expect("bulk stream");
    tx.write(&bulk[..1 << 20]).await.expect("first MiB queued");
    let rest = bulk[1 << 20..].to_vec();
    let bulk_task = tokio::spawn(async move {
        tx.write(&rest).await.expect("rest queued");
        tx.finish().await.expect("finish");
    });
    let bulk_arrival = tokio::spawn(async move {
        let m = client_incoming.recv().await.expect("the bulk message");
        (m.data.len(), Instant::now(), client_incoming)
    });
    let reply = ch
        .request(Priority::Interactive, b"ping".to_vec(), WAIT)
        .await
        .expect("reply");
    let replied_at = Instant::now();
    assert_eq!(reply, b"pong");
    let (len, bulk_at, client_incoming) = within("the bulk message", bulk_arrival)
        .await
        .expect("task");
    within("bulk queued", bulk_task).await.expect("task");
    assert_eq!(len, BULK);
    assert!(
        replied_at < bulk_at,
        "the reply waited for the bulk transfer"
    );
    drop(client_incoming);
    ch.close("NORMAL");
    within("client closes", ch.closed()).await;
    within("server closes", sh.closed()).await;
    answering.abort();
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_concurrently_at_every_priority_are_all_delivered() {
    let (listener, c, s) = pair(config(), config()).await;
    let (sh, mut incoming) = s.into_parts();
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 1 + 60 + 60 {
            let Some(mut m) = incoming.recv().await else {
                break;
            };
            if let Some(r) = m.take_responder() {
                let _ = r.reply(m.data.clone()).await;
            }
            got.push(m.data);
        }
        (got, incoming)
    });

    // A stream opened first but written last gets its id when its first
    // frame goes out, so ids stay increasing on the wire.
    let mut late = c.open_stream(Priority::Bulk).await.expect("stream");
    assert_eq!(late.id(), None);
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let h = c.handle();
        let prio = Priority::ALL[(i % 3) as usize];
        tasks.push(tokio::spawn(async move {
            let body = vec![i as u8; 1 + (i as usize * 7919) % 150_000];
            h.send_message(prio, body.clone()).await.expect("send");
            let echo = h.request(prio, body.clone(), WAIT).await.expect("request");
            assert_eq!(echo, body);
        }));
    }
    for t in tasks {
        within("sender task", t).await.expect("task");
    }
    late.write(b"late").await.expect("write");
    late.finish().await.expect("finish");
    let (got, incoming) = within("all messages", server).await.expect("server task");
    assert_eq!(got.len(), 121);
    assert!(got.iter().any(|m| m == b"late"));
    assert!(!c.is_closed() && !sh.is_closed());
    drop(incoming);
    close_all(&[&c]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_renewal_never_passes_the_24_hour_cap() {
    const HOUR: u64 = 3600 * 1000;
    let start = 1_800_000_000_000u64;
    let clock = Arc::new(ManualClock::new(start));
    let cfg = TransportConfig {
        clock: clock.clone(),
        ..config()
    };
    let (listener, c, s) = pair(cfg.clone(), cfg).await;
    assert_eq!(c.expires_at_ms(), start + HOUR);
    assert_eq!(c.session().max_expires_at_ms, start + 24 * HOUR);

    let mut now = start;
    loop {
        clock.advance(50 * 60 * 1000);
        now += 50 * 60 * 1000;
        let granted = within("renewal", c.renew()).await.expect("renew");
        assert_eq!(granted, (now + HOUR).min(start + 24 * HOUR));
        assert_eq!(c.expires_at_ms(), granted);
        assert_eq!(s.expires_at_ms(), granted);
        if granted == start + 24 * HOUR {
            break;
        }
    }
    assert!(now < start + 24 * HOUR);
    // Further renewals, by either side, stay at the cap.
    assert_eq!(
        within("renewal", c.renew()).await.ok(),
        Some(start + 24 * HOUR)
    );
    assert_eq!(
        within("renewal", s.renew()).await.ok(),
        Some(start + 24 * HOUR)
    );

    // Past the cap the session is over.
    clock.advance(start + 24 * HOUR - now);
    assert_eq!(
        c.send_message(Priority::Interactive, b"late".to_vec())
            .await
            .err(),
        Some(TransportError::SessionExpired)
    );
    assert_eq!(
        within("client closes", c.closed()).await.code,
        "SESSION_EXPIRED"
    );
    let seen = within("server sees expiry", s.closed()).await;
    assert_eq!(
        (seen.code.as_str(), seen.by_peer),
        ("SESSION_EXPIRED", true)
    );
    assert_eq!(
        c.renew().await.err().map(|e| e.code()),
        Some("CONNECTION_CLOSED")
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_needs_explicit_opt_in() {
    let server = node("server");
    let client = node("client");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    assert_eq!(
        Listener::bind_plaintext(addr, server.clone(), config(), Arc::new(AcceptAll))
            .await
            .err(),
        Some(TransportError::PlaintextNotAllowed)
    );
    let open = TransportConfig {
        allow_plaintext: true,
        ..config()
    };
    let mut listener =
        Listener::bind_plaintext(addr, server.clone(), open.clone(), Arc::new(AcceptAll))
            .await
            .expect("plaintext listener");
    let url = format!("ws://{}", listener.local_addr());
    assert_eq!(
        dial(url.clone(), pin_of(&server), &client, config())
            .await
            .err(),
        Some(TransportError::PlaintextNotAllowed)
    );
    let (c, s) = tokio::join!(
        dial(url.clone(), pin_of(&server), &client, open.clone()),
        established(&mut listener)
    );
    let c = c.expect("plaintext connects when allowed");
    assert!(!c.session().encrypted && !s.session().encrypted);
    assert_eq!(c.session().peer_cert_fingerprint, None);
    // Without TLS the fingerprint pin is checked against the manifest.
    let stranger = identity("stranger");
    let (bad, fail) = tokio::join!(
        dial(
            url.clone(),
            Pin::Fingerprint(stranger.tls_fingerprint().to_string()),
            &client,
            open.clone()
        ),
        failure(&mut listener)
    );
    assert_eq!(bad.err(), Some(TransportError::PinMismatch));
    assert_eq!(fail.error.code(), "REJECTED");
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_reported_and_silent_peers_hit_the_idle_timeout() {
    let beats = Arc::new(AtomicUsize::new(0));
    let counter = beats.clone();
    let cfg = TransportConfig {
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(800),
        on_event: Some(Arc::new(move |e| {
            if matches!(e.kind, EventKind::Heartbeat { .. }) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })),
        ..config()
    };
    let server = node("server");
    let client = node("client");
    let mut listener = listen(&server, cfg.clone(), Arc::new(AcceptAll)).await;

    // A live peer answers pings: heartbeats are counted, nothing times out.
    let (c, s) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &client, config()),
        established(&mut listener)
    );
    let c = c.expect("connects");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!s.is_closed(), "{:?}", s.close_reason());
    let counted = beats.load(Ordering::SeqCst);
    assert!(counted >= 5, "{counted} heartbeats");

    // A peer that completes the handshake, then never reads again.
    let mut raw = ws::dial(&wss(&listener), &pin_of(&server), &config())
        .await
        .expect("dial");
    let (_, reply) = manual_handshake(&mut raw, &client, [1; 32]).await;
    assert!(matches!(reply, HandshakeMessage::Auth { .. }));
    let silent = established(&mut listener).await;
    let began = Instant::now();
    let reason = within("idle close", silent.closed()).await;
    assert_eq!(
        (reason.code.as_str(), reason.by_peer),
        ("IDLE_TIMEOUT", false)
    );
    assert!(began.elapsed() < Duration::from_secs(5));
    drop(raw);
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_are_refused_or_time_out() {
    let (listener, c, mut s) = pair(config(), config()).await;

    // The receiver drops the responder: the requester hears REFUSED.
    let dropper = async {
        let m = within("request 1", s.recv()).await.expect("message");
        assert!(m.expects_reply());
        drop(m);
    };
    let (r, ()) = tokio::join!(
        c.request(Priority::Interactive, b"q1".to_vec(), WAIT),
        dropper
    );
    assert_eq!(r.err(), Some(TransportError::StreamReset("REFUSED")));

    // The receiver holds the responder: the requester times out.
    let (r, held) = tokio::join!(
        c.request(
            Priority::Interactive,
            b"q3".to_vec(),
            Duration::from_millis(300)
        ),
        async { within("request 3", s.recv()).await.expect("message") }
    );
    assert_eq!(r.err(), Some(TransportError::RequestTimeout));
    drop(held);
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

/// TLS and the WebSocket upgrade by hand (no handshake messages yet): a
/// raw stream to misbehave on.
pub(crate) async fn raw_upgraded(
    server: &LocalNode,
    listener: &Listener,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_upgraded_with(server, listener, "").await.0
}

/// [`raw_upgraded`] with `extra_headers` (each ending in CRLF) in the
/// upgrade request; also returns the server's response head.
pub(crate) async fn raw_upgraded_with(
    server: &LocalNode,
    listener: &Listener,
    extra_headers: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    let addr = listener.local_addr();
    let mut stream = tls::connect_tls("127.0.0.1", addr.port(), &pin_of(server))
        .await
        .expect("tls");
    let request = format!(
        "GET {WS_PATH} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: agentfed.v1\r\n{extra_headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        within("upgrade response", stream.read_exact(&mut b))
            .await
            .expect("read");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_before_the_handshake_is_refused_at_once() {
    let server = node("server");
    let mut listener = listen(&server, config(), Arc::new(AcceptAll)).await;
    let mut stream = raw_upgraded(&server, &listener).await;
    // Each ping would queue a pong the server never writes during the
    // handshake; past a few the attempt fails, long before its timeout.
    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.extend_from_slice(&ws_frame(0x9, false, b""));
    }
    stream.write_all(&flood).await.expect("pings");
    let fail = failure(&mut listener).await;
    assert_eq!(fail.error.code(), "PROTOCOL_ERROR", "{fail:?}");
    assert_eq!(fail.peer_node_id, None);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stream);

    assert_still_serving(&server, &node("client"), &mut listener).await;
    listener.shutdown().await;
}

/// A server config that counts the renewals it grants.
fn counting_renewals() -> (Arc<AtomicUsize>, TransportConfig) {
    let renewals = Arc::new(AtomicUsize::new(0));
    let seen = renewals.clone();
    let cfg = TransportConfig {
        on_event: Some(Arc::new(move |e| {
            if let EventKind::Renewed { .. } = e.kind {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })),
        ..config()
    };
    (renewals, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_flood_closes_the_session_with_flood() {
    use agentfed::transport::session::MAX_RENEWALS_PER_WINDOW;
    let (renewals, server_cfg) = counting_renewals();
    // The flooding client's clock runs fast, so its own debounce (asks
    // within 10 s of the last renewal are answered locally) lets every
    // ask through; the server counts them on its real clock.
    let fast = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let client_cfg = TransportConfig {
        clock: fast.clone(),
        ..config()
    };
    let (listener, c, s) = pair(server_cfg, client_cfg).await;
    // An honest client renews about once an hour; these all count.
    for _ in 0..MAX_RENEWALS_PER_WINDOW {
        within("renewal", c.renew()).await.expect("renewal granted");
        fast.advance(11_000);
    }
    // One more within the window: the server closes the session instead
    // of answering (and auditing) without end.
    assert!(within("flooding renewal", c.renew()).await.is_err());
    let server_end = within("server closes", s.closed()).await;
    assert_eq!(
        (server_end.code.as_str(), server_end.by_peer),
        ("FLOOD", false)
    );
    let client_end = within("client sees the close", c.closed()).await;
    assert_eq!(client_end.code, "FLOOD");
    assert_eq!(
        renewals.load(Ordering::SeqCst),
        MAX_RENEWALS_PER_WINDOW as usize
    );
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_messages_not_yet_taken_hold_back_reading_at_the_byte_limit() {
    let server_cfg = TransportConfig {
        max_message_size: 1 << 20,
        max_inbound_buffered: 3 << 20,
        ..config()
    };
    let (listener, mut c, mut s) = pair(server_cfg, config()).await;
    // Nobody takes messages on the server side: three complete 1 MiB
    // messages fill its 3 MiB limit though none of them is partial.
    let big = vec![7u8; 1 << 20];
    for _ in 0..3 {
        c.send_message(Priority::Interactive, big.clone())
            .await
            .expect("within the limit");
    }
    let client = tokio::spawn(async move {
        // Answers the server's request below, and sends one more message.
        let m = within("server's request", c.recv()).await.expect("request");
        let mut m = m;
        let r = m.take_responder().expect("a request");
        r.reply(b"answer".to_vec()).await.expect("reply queued");
        c.send_message(Priority::Bulk, vec![8u8; 1 << 20])
            .await
            .expect("queued");
        c
    });
    // The server stops reading the socket instead of refusing streams or
    // growing: even the reply to its own request waits.
    let held_back = s
        .request(
            Priority::Interactive,
            b"question".to_vec(),
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(held_back.err(), Some(TransportError::RequestTimeout));
    // Taking the messages frees the room: reading resumes and the next
    // message arrives, nothing was refused.
    for _ in 0..3 {
        let m = within("queued message", s.recv()).await.expect("message");
        assert_eq!(m.into_parts().2, big);
    }
    let next = within("message after room", s.recv())
        .await
        .expect("message");
    assert_eq!(next.data, vec![8u8; 1 << 20]);
    let c = client.await.expect("client task");
    // And a fresh request round trip works again.
    let (reply, c) = tokio::join!(
        s.request(Priority::Interactive, b"again".to_vec(), WAIT),
        async {
            let mut c = c;
            let mut m = within("second request", c.recv()).await.expect("request");
            m.take_responder()
                .expect("a request")
                .reply(b"ok".to_vec())
                .await
                .expect("reply");
            c
        }
    );
    assert_eq!(reply.expect("reply"), b"ok");
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renewals_share_one_renew_frame() {
    use agentfed::transport::session::MAX_RENEWALS_PER_WINDOW;
    let (renewals, server_cfg) = counting_renewals();
    let (listener, c, s) = pair(server_cfg, config()).await;
    // Far more asks than the server allows per window (e.g. a maintenance
    // pass asking every second while the server is slow to answer): they
    // wait for one answer instead of each sending a RENEW.
    let asks = (0..3 * MAX_RENEWALS_PER_WINDOW).map(|_| c.renew());
    let granted = within("renewals", futures::future::join_all(asks)).await;
    assert!(granted.iter().all(Result::is_ok), "{granted:?}");
    assert!(renewals.load(Ordering::SeqCst) <= MAX_RENEWALS_PER_WINDOW as usize);
    // Asks that come just after an answer are answered from it.
    let before = renewals.load(Ordering::SeqCst);
    for _ in 0..3 * MAX_RENEWALS_PER_WINDOW {
        within("late renewal", c.renew()).await.expect("answered");
    }
    assert_eq!(renewals.load(Ordering::SeqCst), before);
    assert!(!s.is_closed());
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_reply_of_a_cancelled_request_is_dropped_with_it() {
    // The requester may buffer 1.5 MiB of inbound data in all.
    let client_cfg = TransportConfig {
        max_message_size: 2 << 20,
        max_inbound_buffered: 3 << 19,
        ..config()
    };
    let (listener, c, mut s) = pair(config(), client_cfg).await;
    let server = tokio::spawn(async move {
        // First request: 1 MiB of the reply, then nothing more (a slow or
        // hostile peer), until the requester has given up.
        let mut m = within("first request", s.recv()).await.expect("request");
        let mut tx = m
            .take_responder()
            .expect("a request")
            .stream()
            .await
            .expect("reply stream");
        tx.write(&vec![1u8; 1 << 20]).await.expect("half a reply");
        // Second request: a whole 1 MiB reply.
        let mut m = within("second request", s.recv()).await.expect("request");
        m.take_responder()
            .expect("a request")
            .reply(vec![2u8; 1 << 20])
            .await
            .expect("reply");
        drop(tx);
        s
    });
    let first = c
        .request(
            Priority::Interactive,
            b"slow".to_vec(),
            Duration::from_millis(800),
        )
        .await;
    assert_eq!(first.err(), Some(TransportError::RequestTimeout));
    // The cancelled request's megabyte no longer counts: the next 1 MiB
    // reply fits in the 1.5 MiB limit.
    let second = c
        .request(Priority::Interactive, b"next".to_vec(), WAIT)
        .await
        .expect("the second reply is not refused for lack of room");
    assert_eq!(second, vec![2u8; 1 << 20]);
    let s = server.await.expect("server task");
    close_all(&[&c, &s]).await;
    listener.shutdown().await;
}

/// Two connections sharing one inbound pool: bytes one peer has in flight
/// count against the other. A stream growing past one frame's size while
/// the pool is full is reset with `RESOURCE_EXHAUSTED` (the connection
/// lives on); a message of one frame still gets through; once the
/// application takes the held message, the pool has room again. And a
/// per-connection limit below the configured maximum resets larger
/// streams as they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sharing_an_inbound_pool_are_bounded_together() {
    const POOL: usize = 512 * 1024;
    let pool = agentfed::transport::InboundPool::new(POOL);
    let server_cfg = TransportConfig {
        inbound_pool: Some(pool.clone()),
        ..config()
    };
    let server = node("pool-server");
    let mut listener = listen(&server, server_cfg, Arc::new(AcceptAll)).await;
    let one = node("pool-one");
    let two = node("pool-two");
    let (c1, s1) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &one, config()),
        established(&mut listener)
    );
    let (c2, s2) = tokio::join!(
        dial(wss(&listener), pin_of(&server), &two, config()),
        established(&mut listener)
    );
    let (c1, c2) = (c1.expect("first connects"), c2.expect("second connects"));
    let (s1h, mut in1) = s1.into_parts();
    let (s2h, mut in2) = s2.into_parts();

    // The first peer's message fills most of the pool and is not taken.
    c1.send_message(Priority::Bulk, vec![1u8; 400 * 1024])
        .await
        .expect("send");
    let held = within("the first message", in1.recv())
        .await
        .expect("message");
    assert_eq!(pool.used(), 400 * 1024);

    // The second peer's large message does not fit: reset, not buffered.
    let err = c2
        .request(Priority::Bulk, vec![2u8; 300 * 1024], WAIT)
        .await
        .expect_err("refused while the pool is full");
    assert_eq!(err, TransportError::StreamReset("RESOURCE_EXHAUSTED"));
    // One frame's worth still gets through (pings, acknowledgements).
    c2.send_message(Priority::Interactive, vec![3u8; 1024])
        .await
        .expect("send");
    let small = within("the small message", in2.recv())
        .await
        .expect("message");
    assert_eq!(small.data.len(), 1024);
    drop(small);

    // Taken by the application: the pool is free again.
    let (_, _, data) = held.into_parts();
    assert_eq!(data.len(), 400 * 1024);
    assert_eq!(pool.used(), 0);
    c2.send_message(Priority::Bulk, vec![2u8; 300 * 1024])
        .await
        .expect("send");
    let big = within("the retried message", in2.recv())
        .await
        .expect("message");
    assert_eq!(big.data.len(), 300 * 1024);
    drop(big);
    assert_eq!(pool.used(), 0);

    // A per-connection limit: larger streams are reset as they arrive.
    s1h.set_inbound_message_limit(8 * 1024);
    assert_eq!(s1h.inbound_message_limit(), 8 * 1024);
    let err = c1
        .request(Priority::Interactive, vec![4u8; 8 * 1024 + 1], WAIT)
        .await
        .expect_err("over the connection's limit");
    assert!(
        matches!(
            err,
            TransportError::MessageTooLarge | TransportError::StreamReset("MESSAGE_TOO_LARGE")
        ),
        "{err:?}"
    );
    c1.send_message(Priority::Interactive, vec![5u8; 8 * 1024])
        .await
        .expect("send");
    let fits = within("a message at the limit", in1.recv())
        .await
        .expect("message");
    assert_eq!(fits.data.len(), 8 * 1024);
    drop(fits);
    assert_eq!(pool.used(), 0);

    drop((in1, in2));
    close_all(&[&c1, &c2]).await;
    within("server side closes", s1h.closed()).await;
    within("server side closes", s2h.closed()).await;
    listener.shutdown().await;
}
