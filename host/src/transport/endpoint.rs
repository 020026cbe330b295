//! Dialing and listening: TCP, TLS, WebSocket upgrade and handshake, all
//! under one deadline ([`TransportConfig::handshake_timeout`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::handshake::{self, HandshakePolicy};
use super::session::{self, Connection};
use super::tls::{self, Pin};
use super::{LocalNode, TransportConfig, TransportError, ws};

/// Dials `endpoint` (`wss://host:port[/path]`; `ws://` only with
/// [`TransportConfig::allow_plaintext`]), enforces `pin`, runs the
/// handshake as client with `policy` deciding on the server, and returns
/// the established connection. Everything, TCP connect included, must
/// finish within [`TransportConfig::handshake_timeout`].
pub async fn connect(
    endpoint: &str,
    pin: Pin,
    node: &LocalNode,
    config: &TransportConfig,
    policy: &dyn HandshakePolicy,
) -> Result<Connection, TransportError> {
    let attempt = async {
        let mut conn = ws::dial(endpoint, &pin, config).await?;
        let session = handshake::client_handshake(&mut conn, node, &pin, config, policy).await?;
        Ok::<_, TransportError>((conn, session))
    };
    let (conn, session) = tokio::time::timeout(config.handshake_timeout, attempt)
        .await
        .map_err(|_| TransportError::HandshakeTimeout)??;
    Ok(session::spawn(conn, session, config.clone()))
}

/// A connection attempt that did not produce a session.
#[derive(Debug, Clone)]
pub struct HandshakeFailure {
    /// Where it came from.
    pub remote_addr: SocketAddr,
    /// Why it failed (constant code via [`TransportError::code`]).
    pub error: TransportError,
    /// The peer's node id, when the failure came after its `AUTH`
    /// signature verified (e.g. a policy refusal); a failure before that
    /// names no node, since a `HELLO` can carry a replayed manifest.
    pub peer_node_id: Option<String>,
}

/// What a listener produces: an authenticated connection, or a refused
/// attempt (for the audit log).
#[derive(Debug)]
pub enum Accepted {
    /// Handshake completed and the policy admitted the peer.
    Established(Connection),
    /// The attempt failed; the listener keeps serving others.
    Failed(HandshakeFailure),
}

/// Accepts connections on a TCP port: each one gets TLS, the WebSocket
/// upgrade and the server handshake concurrently, under the handshake
/// deadline and a cap on handshakes in progress.
pub struct Listener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<Accepted>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// How many results wait for [`Listener::next`] before established
/// connections hold back (failures beyond it are dropped, not queued).
const ACCEPT_QUEUE: usize = 64;

impl Listener {
    /// Listens on `addr` for `wss://` (TLS with the node's certificate).
    pub async fn bind(
        addr: SocketAddr,
        node: LocalNode,
        config: TransportConfig,
        policy: Arc<dyn HandshakePolicy>,
    ) -> Result<Listener, TransportError> {
        let acceptor = TlsAcceptor::from(tls::server_config(node.identity())?);
        Self::start(addr, Some(acceptor), node, config, policy).await
    }

    /// Listens on `addr` for plain `ws://`; refused unless
    /// [`TransportConfig::allow_plaintext`]. Handshake signatures are then
    /// bound to both nonces only: a relay can pass (see `docs/protocol.md`).
    pub async fn bind_plaintext(
        addr: SocketAddr,
        node: LocalNode,
        config: TransportConfig,
        policy: Arc<dyn HandshakePolicy>,
    ) -> Result<Listener, TransportError> {
        if !config.allow_plaintext {
            return Err(TransportError::PlaintextNotAllowed);
        }
        Self::start(addr, None, node, config, policy).await
    }

    async fn start(
        addr: SocketAddr,
        acceptor: Option<TlsAcceptor>,
        node: LocalNode,
        config: TransportConfig,
        policy: Arc<dyn HandshakePolicy>,
    ) -> Result<Listener, TransportError> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Some(size) = config.socket_buffer {
            // Inherited by accepted sockets (and sized before the window
            // scale is negotiated).
            socket.set_send_buffer_size(size)?;
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(addr)?;
        let tcp: TcpListener = socket.listen(1024)?;
        let local_addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            tcp,
            acceptor,
            Arc::new(node),
            Arc::new(config),
            policy,
            tx,
            shutdown_rx,
        ));
        Ok(Listener {
            local_addr,
            rx,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next established connection or failed attempt; `None` after
    /// shutdown.
    pub async fn next(&mut self) -> Option<Accepted> {
        self.rx.recv().await
    }

    /// Stops accepting, aborts handshakes in progress and waits for the
    /// accept task. Established connections are not affected.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: Option<TlsAcceptor>,
    node: Arc<LocalNode>,
    config: Arc<TransportConfig>,
    policy: Arc<dyn HandshakePolicy>,
    tx: mpsc::Sender<Accepted>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(config.max_pending_handshakes.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, remote_addr)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        drop(stream);
                        let _ = tx.try_send(Accepted::Failed(HandshakeFailure {
                            remote_addr,
                            error: TransportError::TooManyHandshakes,
                            peer_node_id: None,
                        }));
                        continue;
                    };
                    let (acceptor, node, config, policy, tx) = (
                        acceptor.clone(),
                        node.clone(),
                        config.clone(),
                        policy.clone(),
                        tx.clone(),
                    );
                    tasks.spawn(async move {
                        let result = serve_one(stream, remote_addr, acceptor, &node, &config, policy.as_ref()).await;
                        drop(permit);
                        match result {
                            Ok(conn) => {
                                let _ = tx.send(Accepted::Established(conn)).await;
                            }
                            Err(failure) => {
                                tracing::debug!(
                                    remote = %failure.remote_addr,
                                    code = failure.error.code(),
                                    "handshake failed"
                                );
                                let _ = tx.try_send(Accepted::Failed(failure));
                            }
                        }
                    });
                }
                Err(_) => {
                    // Out of descriptors or similar: back off briefly.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
        }
    }
    tasks.shutdown().await;
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    remote_addr: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    node: &LocalNode,
    config: &TransportConfig,
    policy: &dyn HandshakePolicy,
) -> Result<Connection, HandshakeFailure> {
    let mut peer_node_id = None;
    let attempt = async {
        let mut conn = ws::accept(stream, acceptor.as_ref(), config)
            .await
            .map_err(|error| (error, None))?;
        match handshake::server_handshake(&mut conn, node, config, policy).await {
            Ok(session) => Ok((conn, session)),
            Err(f) => Err((f.error, f.peer_node_id)),
        }
    };
    let result = tokio::time::timeout(config.handshake_timeout, attempt).await;
    let error = match result {
        Ok(Ok((conn, session))) => return Ok(session::spawn(conn, session, config.clone())),
        Ok(Err((error, node_id))) => {
            peer_node_id = node_id;
            error
        }
        Err(_) => TransportError::HandshakeTimeout,
    };
    Err(HandshakeFailure {
        remote_addr,
        error,
        peer_node_id,
    })
}

/// Capped exponential backoff with jitter for reconnecting: the n-th delay
/// is uniformly random in `[d/2, d]` with `d = min(base · 2ⁿ, max)`.
/// Call [`Backoff::reset`] after a connection succeeded.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 500 ms doubling up to 60 s.
    fn default() -> Self {
        Backoff::new(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// Backoff from `base` doubling up to `max`.
    pub fn new(base: std::time::Duration, max: std::time::Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let random = super::random_bytes::<4>()
            .map(u32::from_le_bytes)
            .unwrap_or(u32::MAX);
        let fraction = 0.5 + 0.5 * (f64::from(random) / f64::from(u32::MAX));
        ceiling.mul_f64(fraction)
    }

    /// Starts over (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        for d in &delays[4..] {
            assert!(
                *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
