//! An established connection: one task (the driver) owns the WebSocket,
//! reads and reassembles frames, schedules writes by priority, sends
//! heartbeats, watches idleness and session expiry; handles talk to it
//! through channels.
//!
//! Flow control: each outbound stream has a bounded queue
//! ([`TransportConfig::stream_queue_frames`] frames), so a writer waits
//! while its stream is backed up; at most
//! [`TransportConfig::max_outbound_streams`] outbound streams are in flight
//! (further opens wait); the driver writes one frame at a time and flushes
//! once 64 KiB are buffered, so a frame chosen for sending is at most one
//! frame behind. Inbound, complete messages wait in a bounded queue
//! ([`TransportConfig::incoming_queue`]); when it is full the driver stops
//! reading, and TCP pushes back on the peer. Consume [`Incoming`]
//! concurrently with awaiting replies.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future as _, poll_fn};
use std::ops::Deref;
use std::pin::Pin as StdPin;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::SinkExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::PollSender;
use yawc::{Frame, OpCode, WebSocket, WebSocketError};

use super::handshake::Session;
use super::mux::{FLAG_END, FLAG_OPEN, FLAG_REQUEST, MuxFrame, Priority, ResetCode};
use super::ws::{self, Prefixed, WsConn, close_answer, close_code_of, close_frame, is_code};
use super::{InboundPool, MAX_CHUNK, Role, TransportConfig, TransportError};
use crate::identity::SignedManifest;

/// Bytes written to the WebSocket before the driver flushes and picks the
/// next frame only after the flush.
const FLUSH_BATCH: usize = 64 * 1024;

/// Client: renewal asks within this long (session clock) of the last
/// extension are answered with it instead of a new RENEW, so asks that
/// straggle in just after an answer cannot add up to a `FLOOD`.
const RENEW_DEBOUNCE_MS: u64 = 10_000;

/// Progress steps per poll before the driver yields to other tasks.
const POLL_BUDGET: usize = 64;

/// Length of the windows in which a peer's control traffic is counted.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(60);
/// Session renewals (server) or session updates (client) a peer may cause
/// per [`FLOOD_WINDOW`]; each costs a reply and an audit record, and an
/// honest client renews about once an hour. Past it the connection closes
/// with `FLOOD`.
pub const MAX_RENEWALS_PER_WINDOW: u32 = 10;
/// WebSocket pings a peer may send per [`FLOOD_WINDOW`] (each queues a
/// pong; agentfed pings every 30 s). Past it the connection closes with
/// `FLOOD`.
pub const MAX_PINGS_PER_WINDOW: u32 = 120;
/// Refused inbound streams reported (and so audited) one by one per
/// [`FLOOD_WINDOW`]; the rest are counted into the next report.
pub const MAX_REFUSALS_REPORTED_PER_WINDOW: u32 = 16;
/// Frames the driver itself owes the peer (resets, session updates, its
/// own pings) that may wait unwritten; past it the driver stops reading
/// until the peer reads them (a peer that never does then hits the idle
/// timeout).
pub const MAX_QUEUED_CONTROL_FRAMES: usize = 1024;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// Constant code: `NORMAL`, `IDLE_TIMEOUT`, `SESSION_EXPIRED`,
    /// `PROTOCOL_ERROR`, `MESSAGE_TOO_LARGE`, `CONNECTION_LOST`, or the
    /// peer's code.
    pub code: String,
    /// Whether the peer closed (or the transport failed under us).
    pub by_peer: bool,
}

/// Something that happened on a connection, for the integration layer
/// (auditing, counting heartbeats as interactions).
#[derive(Debug, Clone)]
pub struct ConnectionEvent {
    /// The session.
    pub session_id: String,
    /// The peer's node id.
    pub peer_node_id: String,
    /// What happened.
    pub kind: EventKind,
}

/// Kinds of [`ConnectionEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A heartbeat ping was answered.
    Heartbeat {
        /// Round trip time.
        rtt: Duration,
    },
    /// The session was renewed.
    Renewed {
        /// New expiry, ms since the epoch.
        expires_at_ms: u64,
    },
    /// An inbound stream was refused (reset) with a constant code
    /// (`MESSAGE_TOO_LARGE`, `TOO_MANY_STREAMS`, `RESOURCE_EXHAUSTED`).
    StreamRefused {
        /// The stream.
        stream_id: u32,
        /// Why.
        code: &'static str,
        /// Refusals on this connection not reported since the previous
        /// report (at most [`MAX_REFUSALS_REPORTED_PER_WINDOW`] are
        /// reported per [`FLOOD_WINDOW`]).
        unreported: u32,
    },
    /// The connection closed with refusals that were counted but not yet
    /// reported one by one (see [`EventKind::StreamRefused`]); sent just
    /// before [`EventKind::Closed`].
    RefusalsUnreported {
        /// How many.
        count: u32,
    },
    /// The connection closed.
    Closed(CloseReason),
}

/// A complete inbound message.
pub struct IncomingMessage {
    /// The stream it came on.
    pub stream_id: u32,
    /// The sender's priority class for it.
    pub priority: Priority,
    /// The message bytes.
    pub data: Vec<u8>,
    responder: Option<Responder>,
    /// Counts `data` against the connection's inbound byte limit until the
    /// consumer takes the bytes ([`IncomingMessage::into_parts`]).
    _held: HeldBytes,
    /// And against the shared pool, if any.
    _pooled: Option<PoolBytes>,
}

/// Bytes counted in an [`InboundPool`]; released on drop.
struct PoolBytes {
    pool: Arc<InboundPool>,
    bytes: usize,
}

impl Drop for PoolBytes {
    fn drop(&mut self) {
        self.pool.release(self.bytes);
    }
}

/// Bytes of complete inbound messages the consumer has not taken yet, and
/// the driver to wake when they fall (it stops reading the socket while
/// they are at the limit).
#[derive(Default)]
struct Held {
    bytes: AtomicUsize,
    driver: futures::task::AtomicWaker,
}

/// One message's share of [`Held`]; released on drop.
struct HeldBytes {
    held: Arc<Held>,
    bytes: usize,
}

impl HeldBytes {
    fn new(held: &Arc<Held>, bytes: usize) -> HeldBytes {
        held.bytes.fetch_add(bytes, Ordering::SeqCst);
        HeldBytes {
            held: held.clone(),
            bytes,
        }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.held.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        self.held.driver.wake();
    }
}

/// Counts events of one kind in [`FLOOD_WINDOW`]s of the connection's
/// clock.
#[derive(Default)]
struct WindowCount {
    started_ms: Option<u64>,
    count: u32,
}

impl WindowCount {
    /// Counts one event at `now_ms`; returns how many fell in the current
    /// window, this one included.
    fn note(&mut self, now_ms: u64) -> u32 {
        let window_ms = FLOOD_WINDOW.as_millis() as u64;
        if self
            .started_ms
            .is_none_or(|started| now_ms.saturating_sub(started) >= window_ms)
        {
            self.started_ms = Some(now_ms);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count
    }
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("stream_id", &self.stream_id)
            .field("priority", &self.priority)
            .field("len", &self.data.len())
            .field("expects_reply", &self.responder.is_some())
            .finish()
    }
}

impl IncomingMessage {
    /// Whether the sender awaits a reply ([`ConnectionHandle::request`]).
    pub fn expects_reply(&self) -> bool {
        self.responder.is_some()
    }

    /// The reply handle, once. Dropping it unanswered resets the stream
    /// with `REFUSED`, so the requester does not wait for its timeout.
    pub fn take_responder(&mut self) -> Option<Responder> {
        self.responder.take()
    }

    /// `(stream_id, priority, data)`; the bytes stop counting against the
    /// connection's inbound limit.
    pub fn into_parts(self) -> (u32, Priority, Vec<u8>) {
        (self.stream_id, self.priority, self.data)
    }
}

struct OutState {
    /// 0 = live; otherwise the reset code.
    reset: AtomicU16,
    /// The stream id; 0 until the writer assigns one with the first frame.
    id: AtomicU32,
}

struct OutChunk {
    flags: u8,
    payload: Bytes,
}

struct OutStream {
    /// 0 until assigned (new streams); the request's id for replies.
    id: u32,
    priority: Priority,
    rx: mpsc::Receiver<OutChunk>,
    state: Arc<OutState>,
    /// An OPEN frame of this stream has been handed to the WebSocket.
    opened: bool,
    /// Where the reply goes (requests): registered under the id when the
    /// id is assigned.
    reply: Option<ReplySender>,
    _permit: OwnedSemaphorePermit,
}

enum Command {
    Renew(oneshot::Sender<Result<u64, TransportError>>),
    Close(String),
}

type ReplySender = oneshot::Sender<Result<Vec<u8>, TransportError>>;

struct Shared {
    session: Session,
    config: TransportConfig,
    expires_at_ms: AtomicU64,
    /// Largest message the peer may open a stream for (replies to our
    /// requests are held to `config.max_message_size` instead); lowered
    /// by the layer above to what the peer may send at all
    /// ([`ConnectionHandle::set_inbound_message_limit`]).
    inbound_message_limit: AtomicUsize,
    outbound_slots: Arc<Semaphore>,
    new_streams: mpsc::UnboundedSender<OutStream>,
    control: mpsc::UnboundedSender<MuxFrame>,
    commands: mpsc::UnboundedSender<Command>,
    pending: Mutex<HashMap<u32, ReplySender>>,
    closed: watch::Sender<Option<CloseReason>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn role(&self) -> Role {
        self.session.role
    }

    /// Whether `id` is in this side's id space (odd for clients).
    fn is_own(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role() == Role::Client)
    }

    fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    fn expired(&self) -> bool {
        self.now_ms() >= self.expires_at_ms.load(Ordering::SeqCst)
    }

    fn close_error(&self) -> TransportError {
        let code = self
            .closed
            .borrow()
            .as_ref()
            .map(|r| r.code.clone())
            .unwrap_or_else(|| "CLOSING".into());
        TransportError::ConnectionClosed(code)
    }

    /// Fails fast on a closed connection or an expired session (and
    /// closes the connection in the latter case).
    fn check_live(&self) -> Result<(), TransportError> {
        if self.closed.borrow().is_some() {
            return Err(self.close_error());
        }
        if self.expired() {
            let _ = self.commands.send(Command::Close("SESSION_EXPIRED".into()));
            return Err(TransportError::SessionExpired);
        }
        Ok(())
    }

    /// Registers an outbound stream with the writer. `id` is 0 for a new
    /// stream (the writer assigns the next id when it sends the first
    /// frame, so ids appear on the wire in increasing order whatever the
    /// priorities), or the request's id for a reply.
    async fn open(
        self: &Arc<Self>,
        id: u32,
        priority: Priority,
        first_flags: u8,
        reply: Option<ReplySender>,
    ) -> Result<StreamTx, TransportError> {
        let permit = self
            .outbound_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.close_error())?;
        let (tx, rx) = mpsc::channel(self.config.stream_queue_frames.max(1));
        let state = Arc::new(OutState {
            reset: AtomicU16::new(0),
            id: AtomicU32::new(id),
        });
        self.new_streams
            .send(OutStream {
                id,
                priority,
                rx,
                state: state.clone(),
                opened: false,
                reply,
                _permit: permit,
            })
            .map_err(|_| self.close_error())?;
        Ok(StreamTx {
            priority,
            tx: Some(tx),
            state,
            shared: self.clone(),
            buf: BytesMut::new(),
            first_flags,
            opened: false,
            written: 0,
        })
    }

    fn emit(&self, kind: EventKind) {
        if let Some(cb) = &self.config.on_event {
            cb(&ConnectionEvent {
                session_id: self.session.session_id.clone(),
                peer_node_id: self.session.peer.manifest.node_id.clone(),
                kind,
            });
        }
    }
}

/// The sending half of one outbound stream: write the message in pieces,
/// then [`StreamTx::finish`]. Dropping it unfinished resets the stream
/// (`CANCELLED`).
pub struct StreamTx {
    priority: Priority,
    tx: Option<mpsc::Sender<OutChunk>>,
    state: Arc<OutState>,
    shared: Arc<Shared>,
    buf: BytesMut,
    first_flags: u8,
    opened: bool,
    written: usize,
}

impl fmt::Debug for StreamTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTx")
            .field("id", &self.id())
            .field("priority", &self.priority)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl StreamTx {
    /// The stream id, once the writer has sent the stream's first frame
    /// (ids are assigned in sending order).
    pub fn id(&self) -> Option<u32> {
        match self.state.id.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// The stream's priority class.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Appends to the message; full chunks are queued (waiting while the
    /// stream's queue is full). Past the maximum message size the stream
    /// is reset and `MESSAGE_TOO_LARGE` returned.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.written = self.written.saturating_add(data.len());
        if self.written > self.shared.config.max_message_size {
            self.abort(ResetCode::MESSAGE_TOO_LARGE);
            return Err(TransportError::MessageTooLarge);
        }
        self.buf.extend_from_slice(data);
        let chunk = self.shared.config.chunk();
        while self.buf.len() > chunk {
            let piece = self.buf.split_to(chunk).freeze();
            self.push(piece, 0).await?;
        }
        Ok(())
    }

    /// Queues the rest of the message with END.
    pub async fn finish(mut self) -> Result<(), TransportError> {
        let rest = std::mem::take(&mut self.buf).freeze();
        self.push(rest, FLAG_END).await
    }

    /// Abandons the message: the peer sees `RESET(CANCELLED)`.
    pub fn reset(mut self) {
        self.abort(ResetCode::CANCELLED);
    }

    fn abort(&mut self, code: ResetCode) {
        // The writer sees the code, drops what is queued and, if the
        // stream was opened on the wire, sends RESET(code).
        let _ = self
            .state
            .reset
            .compare_exchange(0, code.0, Ordering::SeqCst, Ordering::SeqCst);
        // Closing the queue wakes the writer, which then sees the code.
        self.tx = None;
    }

    /// Queues a whole message (zero-copy chunks of `data`) and ends it.
    async fn send_all(mut self, data: Bytes) -> Result<(), TransportError> {
        let chunk = self.shared.config.chunk();
        let mut offset = 0;
        loop {
            let end = (offset + chunk).min(data.len());
            let last = end == data.len();
            let flags = if last { FLAG_END } else { 0 };
            self.push(data.slice(offset..end), flags).await?;
            if last {
                return Ok(());
            }
            offset = end;
        }
    }

    async fn push(&mut self, payload: Bytes, mut flags: u8) -> Result<(), TransportError> {
        if !self.opened {
            flags |= FLAG_OPEN | self.first_flags;
            self.opened = true;
        }
        let Some(tx) = self.tx.as_ref() else {
            return Err(self.error());
        };
        if self.state.reset.load(Ordering::SeqCst) != 0 {
            return Err(self.error());
        }
        tx.send(OutChunk { flags, payload })
            .await
            .map_err(|_| self.error())
    }

    fn error(&self) -> TransportError {
        match self.state.reset.load(Ordering::SeqCst) {
            0 => self.shared.close_error(),
            code => ResetCode(code).to_error(),
        }
    }
}

/// Answers one request ([`IncomingMessage::take_responder`]).
pub struct Responder {
    id: u32,
    priority: Priority,
    shared: Arc<Shared>,
    done: bool,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("stream_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// The request's stream id.
    pub fn stream_id(&self) -> u32 {
        self.id
    }

    /// Sends the reply (same priority as the request).
    pub async fn reply(mut self, data: impl Into<Bytes>) -> Result<(), TransportError> {
        let data = data.into();
        if data.len() > self.shared.config.max_message_size {
            return Err(TransportError::MessageTooLarge);
        }
        self.done = true;
        let tx = self.shared.open(self.id, self.priority, 0, None).await?;
        tx.send_all(data).await
    }

    /// Opens the reply as a stream, for a reply written piece by piece
    /// ([`StreamTx::write`], then [`StreamTx::finish`]); the requester
    /// receives it whole, within its message size limit.
    pub async fn stream(mut self) -> Result<StreamTx, TransportError> {
        self.done = true;
        self.shared.open(self.id, self.priority, 0, None).await
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.shared.control.send(MuxFrame::Reset {
                stream_id: self.id,
                code: ResetCode::REFUSED,
            });
        }
    }
}

/// Closes the connection with `NORMAL` when the last user handle (every
/// [`ConnectionHandle`] clone and the [`Incoming`]) is dropped.
struct HandleGuard {
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close("NORMAL".into()));
    }
}

/// A cloneable handle for sending on a connection and managing it.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
    _guard: Arc<HandleGuard>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("session_id", &self.shared.session.session_id)
            .field("peer", &self.shared.session.peer.manifest.node_id)
            .finish_non_exhaustive()
    }
}

/// Cancels a request whose caller stopped waiting: before the id is
/// assigned the writer drops the stream unsent; after, the pending reply is
/// removed and the peer told `RESET(CANCELLED)`. Both sides of that race
/// decide under the `pending` lock.
struct PendingGuard {
    state: Arc<OutState>,
    shared: Arc<Shared>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        let id = self.state.id.load(Ordering::SeqCst);
        if id == 0 {
            let _ = self.state.reset.compare_exchange(
                0,
                ResetCode::CANCELLED.0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        } else if pending.remove(&id).is_some() {
            let _ = self.shared.control.send(MuxFrame::Reset {
                stream_id: id,
                code: ResetCode::CANCELLED,
            });
        }
    }
}

impl ConnectionHandle {
    /// The session, with its current expiry.
    pub fn session(&self) -> Session {
        let mut s = self.shared.session.clone();
        s.expires_at_ms = self.shared.expires_at_ms.load(Ordering::SeqCst);
        s
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.shared.session.session_id
    }

    /// The peer's verified manifest.
    pub fn peer(&self) -> &SignedManifest {
        &self.shared.session.peer
    }

    /// Limits the messages the peer may send on its own streams to
    /// `bytes` (at most the configured maximum message size); larger ones
    /// are reset with `MESSAGE_TOO_LARGE` as their bytes arrive, before
    /// they are buffered whole. Replies to our requests keep the
    /// configured maximum. Streams already being received are held to the
    /// new limit from their next frame.
    pub fn set_inbound_message_limit(&self, bytes: usize) {
        self.shared.inbound_message_limit.store(
            bytes.min(self.shared.config.max_message_size),
            Ordering::Relaxed,
        );
    }

    /// The current limit of [`ConnectionHandle::set_inbound_message_limit`].
    pub fn inbound_message_limit(&self) -> usize {
        self.shared.inbound_message_limit.load(Ordering::Relaxed)
    }

    /// Current expiry, ms since the epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.shared.expires_at_ms.load(Ordering::SeqCst)
    }

    /// Opens an outbound stream for one message written in pieces.
    pub async fn open_stream(&self, priority: Priority) -> Result<StreamTx, TransportError> {
        self.shared.check_live()?;
        self.shared.open(0, priority, 0, None).await
    }

    /// Sends one message on a new stream; returns once every frame is
    /// queued (not when the peer has it: acknowledgements are the layer
    /// above's). Larger than the maximum message size: `MESSAGE_TOO_LARGE`
    /// without sending anything.
    pub async fn send_message(
        &self,
        priority: Priority,
        data: impl Into<Bytes>,
    ) -> Result<(), TransportError> {
        let data = data.into();
        if data.len() > self.shared.config.max_message_size {
            return Err(TransportError::MessageTooLarge);
        }
        let tx = self.open_stream(priority).await?;
        tx.send_all(data).await
    }

    /// Sends a request and waits up to `timeout` (sending included) for
    /// the reply. A peer that refuses or resets the stream gives
    /// `STREAM_RESET(code)` (`MESSAGE_TOO_LARGE` for oversized requests).
    pub async fn request(
        &self,
        priority: Priority,
        data: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let data = data.into();
        if data.len() > self.shared.config.max_message_size {
            return Err(TransportError::MessageTooLarge);
        }
        self.shared.check_live()?;
        let shared = self.shared.clone();
        let work = async move {
            let (reply_tx, reply_rx) = oneshot::channel();
            let tx = shared
                .open(0, priority, FLAG_REQUEST, Some(reply_tx))
                .await?;
            let _guard = PendingGuard {
                state: tx.state.clone(),
                shared: shared.clone(),
            };
            tx.send_all(data).await?;
            match reply_rx.await {
                Ok(result) => result,
                Err(_) => Err(shared.close_error()),
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(TransportError::RequestTimeout))
    }

    /// Renews the session: the server grants `min(now + TTL, creation +
    /// 24 h)`. Returns the new expiry. Client side this is a round trip
    /// (RENEW → SESSION_UPDATE); server side the server grants and
    /// announces it.
    pub async fn renew(&self) -> Result<u64, TransportError> {
        self.shared.check_live()?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Renew(tx))
            .map_err(|_| self.shared.close_error())?;
        rx.await.unwrap_or_else(|_| Err(self.shared.close_error()))
    }

    /// Asks the connection to close with the constant `code` (an invalid
    /// code becomes `NORMAL`). Use [`ConnectionHandle::closed`] to wait.
    pub fn close(&self, code: &str) {
        let code = if is_code(code) { code } else { "NORMAL" };
        let _ = self.shared.commands.send(Command::Close(code.to_string()));
    }

    /// Waits until the connection has closed, and says why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_else(|| CloseReason {
                code: "CLOSED".into(),
                by_peer: false,
            }),
            Err(_) => CloseReason {
                code: "CLOSED".into(),
                by_peer: false,
            },
        }
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closed.borrow().clone()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }
}

/// Complete inbound messages, in arrival order of their last frame.
pub struct Incoming {
    rx: mpsc::Receiver<IncomingMessage>,
    _guard: Arc<HandleGuard>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next message; `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.rx.recv().await
    }

    /// A message that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<IncomingMessage> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Incoming {
    type Item = IncomingMessage;

    fn poll_next(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// An established, authenticated connection: a [`ConnectionHandle`] (via
/// `Deref`) plus the inbound messages.
pub struct Connection {
    handle: ConnectionHandle,
    incoming: Incoming,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl Deref for Connection {
    type Target = ConnectionHandle;
    fn deref(&self) -> &ConnectionHandle {
        &self.handle
    }
}

impl Connection {
    /// A cloneable handle for sending.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }

    /// The next inbound message; `None` once closed.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.incoming.recv().await
    }

    /// Splits into the sending handle and the inbound messages.
    pub fn into_parts(self) -> (ConnectionHandle, Incoming) {
        (self.handle, self.incoming)
    }
}

/// Starts the driver for a connection whose handshake completed.
///
/// # Panics
///
/// If `ws` was closed (the handshake never returns a session then).
pub(crate) fn spawn(ws: WsConn, session: Session, config: TransportConfig) -> Connection {
    let ws = ws
        .into_websocket()
        .expect("a completed handshake leaves the WebSocket open");
    let (new_tx, new_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::channel(config.incoming_queue.max(1));
    let (closed_tx, _) = watch::channel(None);
    let first_id = match session.role {
        Role::Client => 1,
        Role::Server => 2,
    };
    let heartbeat_period = config.heartbeat_interval.max(Duration::from_millis(10));
    let idle_timeout = config.idle_timeout;
    let shared = Arc::new(Shared {
        expires_at_ms: AtomicU64::new(session.expires_at_ms),
        inbound_message_limit: AtomicUsize::new(config.max_message_size),
        outbound_slots: Arc::new(Semaphore::new(config.max_outbound_streams.max(1))),
        new_streams: new_tx,
        control: control_tx,
        commands: cmd_tx.clone(),
        pending: Mutex::new(HashMap::new()),
        closed: closed_tx,
        session,
        config,
    });
    let guard = Arc::new(HandleGuard { commands: cmd_tx });
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + heartbeat_period, heartbeat_period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let now = Instant::now();
    let driver = Driver {
        ws: Some(ws),
        shared: shared.clone(),
        sched: Scheduler {
            classes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            new_rx,
            next_id: Some(first_id),
        },
        control_rx,
        commands: cmd_rx,
        raw_out: VecDeque::new(),
        internal: VecDeque::new(),
        unflushed: 0,
        needs_flush: false,
        inbound: HashMap::new(),
        peer_partials: 0,
        buffered: 0,
        held: Arc::new(Held::default()),
        renewals: WindowCount::default(),
        pings: WindowCount::default(),
        refusals: WindowCount::default(),
        unreported_refusals: 0,
        max_peer_id: 0,
        pending_delivery: None,
        incoming: PollSender::new(in_tx),
        incoming_closed: false,
        heartbeat,
        ping_seq: 0,
        ping_outstanding: None,
        idle: Box::pin(tokio::time::sleep(idle_timeout)),
        last_rx: now,
        renew_waiters: VecDeque::new(),
        last_renewed_ms: None,
    };
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let (reason, ws, close) = driver.run().await;
        // The close frame, close_notify and FIN go out before anyone
        // hears that the connection closed (bounded by CLOSE_GRACE).
        if let (Some(ws), Some(frame)) = (ws, close) {
            ws::end(ws, Some(frame)).await;
        }
        finish(&task_shared, reason);
    });
    Connection {
        handle: ConnectionHandle {
            shared,
            _guard: guard.clone(),
        },
        incoming: Incoming {
            rx: in_rx,
            _guard: guard,
        },
    }
}

fn finish(shared: &Shared, reason: CloseReason) {
    shared.closed.send_replace(Some(reason.clone()));
    shared.outbound_slots.close();
    let pending: Vec<ReplySender> = lock(&shared.pending).drain().map(|(_, tx)| tx).collect();
    for tx in pending {
        let _ = tx.send(Err(TransportError::ConnectionClosed(reason.code.clone())));
    }
    tracing::debug!(
        session = %shared.session.session_id,
        code = %reason.code,
        by_peer = reason.by_peer,
        "transport connection closed"
    );
    shared.emit(EventKind::Closed(reason));
}

/// Outbound streams by class; round-robin within a class.
struct Scheduler {
    classes: [VecDeque<OutStream>; 3],
    new_rx: mpsc::UnboundedReceiver<OutStream>,
    /// Next id for a new stream (`None` once the id space is used up).
    next_id: Option<u32>,
}

impl Scheduler {
    fn absorb_ready(&mut self) {
        while let Ok(s) = self.new_rx.try_recv() {
            self.classes[s.priority.index()].push_back(s);
        }
    }

    /// The next frame to write: the first stream with a queued chunk in
    /// the highest non-empty class, continuing after the stream served
    /// last in that class.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        pending: &Mutex<HashMap<u32, ReplySender>>,
    ) -> Poll<MuxFrame> {
        while let Poll::Ready(Some(s)) = self.new_rx.poll_recv(cx) {
            self.classes[s.priority.index()].push_back(s);
        }
        for class in 0..self.classes.len() {
            let mut remaining = self.classes[class].len();
            while remaining > 0 {
                remaining -= 1;
                let Some(mut s) = self.classes[class].pop_front() else {
                    break;
                };
                let local_reset = s.state.reset.load(Ordering::SeqCst);
                if local_reset != 0 {
                    if s.opened {
                        return Poll::Ready(MuxFrame::Reset {
                            stream_id: s.id,
                            code: ResetCode(local_reset),
                        });
                    }
                    continue;
                }
                match s.rx.poll_recv(cx) {
                    Poll::Ready(Some(chunk)) => {
                        if s.id == 0 && !self.assign_id(&mut s, pending) {
                            continue;
                        }
                        s.opened |= chunk.flags & FLAG_OPEN != 0;
                        let frame = MuxFrame::Data {
                            stream_id: s.id,
                            priority: s.priority,
                            flags: chunk.flags,
                            payload: chunk.payload,
                        };
                        if chunk.flags & FLAG_END == 0 {
                            self.classes[class].push_back(s);
                        }
                        return Poll::Ready(frame);
                    }
                    Poll::Ready(None) => {
                        // Dropped before END.
                        if s.opened {
                            return Poll::Ready(MuxFrame::Reset {
                                stream_id: s.id,
                                code: ResetCode::CANCELLED,
                            });
                        }
                    }
                    Poll::Pending => self.classes[class].push_back(s),
                }
            }
        }
        Poll::Pending
    }

    /// Gives a new stream the next id as its first frame goes out, and
    /// registers its pending reply; `false` if the stream must be dropped
    /// unsent (cancelled meanwhile, or no ids left).
    fn assign_id(&mut self, s: &mut OutStream, pending: &Mutex<HashMap<u32, ReplySender>>) -> bool {
        let mut pending = lock(pending);
        if s.state.reset.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let Some(id) = self.next_id else {
            s.state
                .reset
                .store(ResetCode::IDS_EXHAUSTED.0, Ordering::SeqCst);
            if let Some(reply) = s.reply.take() {
                let _ = reply.send(Err(TransportError::StreamIdsExhausted));
            }
            return false;
        };
        self.next_id = id.checked_add(2);
        s.id = id;
        s.state.id.store(id, Ordering::SeqCst);
        if let Some(reply) = s.reply.take() {
            pending.insert(id, reply);
        }
        true
    }

    /// Drops an outbound stream the peer reset; its writer sees `code`.
    fn remove(&mut self, id: u32, code: ResetCode) {
        self.absorb_ready();
        for class in &mut self.classes {
            class.retain(|s| {
                if s.id == id {
                    s.state.reset.store(code.0, Ordering::SeqCst);
                    false
                } else {
                    true
                }
            });
        }
    }
}

struct Partial {
    priority: Priority,
    data: Vec<u8>,
    request: bool,
    /// `data`'s share of the shared inbound pool (peer streams only).
    pooled: Option<PoolBytes>,
}

struct Fail {
    code: String,
    by_peer: bool,
    /// The close frame to send before closing; `None` when the transport
    /// is gone.
    close: Option<Frame>,
}

impl Fail {
    fn local(code: &str) -> Fail {
        Fail {
            code: code.to_string(),
            by_peer: false,
            close: Some(close_frame(code)),
        }
    }

    fn from_error(e: &TransportError) -> Fail {
        Fail::local(e.code())
    }

    /// A frame the WebSocket layer refused is answered with 1009 / 1002
    /// (`docs/protocol.md` §3.2); a lost transport is just dropped.
    fn from_ws(e: WebSocketError) -> Fail {
        match ws::ws_violation(&e) {
            Some(code) => Fail::local(code),
            None => Fail {
                code: "CONNECTION_LOST".into(),
                by_peer: true,
                close: None,
            },
        }
    }
}

struct Driver {
    /// Taken by [`Driver::run`] when the connection ends, to close it.
    ws: Option<WebSocket<Prefixed>>,
    shared: Arc<Shared>,
    sched: Scheduler,
    control_rx: mpsc::UnboundedReceiver<MuxFrame>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// WebSocket control frames to send (pings).
    raw_out: VecDeque<Frame>,
    /// Stream-layer frames the driver itself sends (resets, session).
    internal: VecDeque<MuxFrame>,
    unflushed: usize,
    needs_flush: bool,
    inbound: HashMap<u32, Partial>,
    peer_partials: usize,
    /// Bytes of partial inbound messages.
    buffered: usize,
    /// Bytes of complete inbound messages not yet taken by the consumer.
    held: Arc<Held>,
    renewals: WindowCount,
    pings: WindowCount,
    refusals: WindowCount,
    unreported_refusals: u32,
    max_peer_id: u32,
    pending_delivery: Option<IncomingMessage>,
    incoming: PollSender<IncomingMessage>,
    incoming_closed: bool,
    heartbeat: Interval,
    ping_seq: u64,
    ping_outstanding: Option<(u64, Instant)>,
    idle: StdPin<Box<Sleep>>,
    last_rx: Instant,
    renew_waiters: VecDeque<oneshot::Sender<Result<u64, TransportError>>>,
    /// Client: when (session clock, ms) the server last extended the
    /// session; asks within [`RENEW_DEBOUNCE_MS`] of it are answered from
    /// it instead of sending another RENEW.
    last_renewed_ms: Option<u64>,
}

impl Driver {
    /// Drives the connection until it fails or is closed; returns why,
    /// the WebSocket and the close frame owed to the peer (`None` when the
    /// transport is gone).
    async fn run(mut self) -> (CloseReason, Option<WebSocket<Prefixed>>, Option<Frame>) {
        let fail = poll_fn(|cx| self.poll_run(cx)).await;
        let reason = CloseReason {
            code: fail.code,
            by_peer: fail.by_peer,
        };
        if self.unreported_refusals > 0 {
            self.shared.emit(EventKind::RefusalsUnreported {
                count: self.unreported_refusals,
            });
        }
        for waiter in self.renew_waiters.drain(..) {
            let _ = waiter.send(Err(TransportError::ConnectionClosed(reason.code.clone())));
        }
        (reason, self.ws.take(), fail.close)
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Fail> {
        for _ in 0..POLL_BUDGET {
            match self.step(cx) {
                Ok(true) => continue,
                Ok(false) => return Poll::Pending,
                // Nothing more is read or written through yawc: what it
                // queued itself (a pong to the ping that broke the limit,
                // its own error close) never goes out.
                Err(fail) => return Poll::Ready(fail),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn ws(&mut self) -> Result<&mut WebSocket<Prefixed>, Fail> {
        self.ws.as_mut().ok_or(Fail {
            code: "CLOSED".into(),
            by_peer: false,
            close: None,
        })
    }

    fn touch(&mut self) {
        self.last_rx = Instant::now();
    }

    /// One round over every source; `Ok(true)` if anything happened.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<bool, Fail> {
        let mut progress = false;

        while let Poll::Ready(Some(cmd)) = self.commands.poll_recv(cx) {
            self.on_command(cmd)?;
            progress = true;
        }

        if self.heartbeat.poll_tick(cx).is_ready() {
            self.on_heartbeat()?;
            progress = true;
        }

        if self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_rx + self.shared.config.idle_timeout;
            // Not reading because our consumer is behind is not the
            // peer's silence.
            if self.pending_delivery.is_none()
                && !self.consumer_behind()
                && Instant::now() >= deadline
            {
                return Err(Fail::local("IDLE_TIMEOUT"));
            }
            let next = deadline.max(Instant::now() + Duration::from_millis(10));
            self.idle.as_mut().reset(next);
            progress = true;
        }

        if self.pending_delivery.is_some() {
            match self.incoming.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(msg) = self.pending_delivery.take() {
                        let _ = self.incoming.send_item(msg);
                    }
                    self.touch();
                    progress = true;
                }
                Poll::Ready(Err(_)) => {
                    self.pending_delivery = None;
                    self.incoming_closed = true;
                    progress = true;
                }
                Poll::Pending => {}
            }
        }

        if self.pending_delivery.is_none() && self.may_read(cx) {
            match self.ws()?.poll_next_frame(cx) {
                Poll::Ready(Ok(frame)) => {
                    self.touch();
                    self.on_frame(frame)?;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(Fail::from_ws(e)),
                Poll::Pending => {}
            }
        }

        if self.needs_flush {
            match self.ws()?.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    self.unflushed = 0;
                }
                Poll::Ready(Err(e)) => return Err(Fail::from_ws(e)),
                Poll::Pending => {}
            }
        }
        if self.unflushed < FLUSH_BATCH {
            match self.ws()?.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(frame) = self.next_outgoing(cx) {
                        let len = frame.payload().len().max(1);
                        self.ws()?.start_send_unpin(frame).map_err(Fail::from_ws)?;
                        self.unflushed += len;
                        self.needs_flush = true;
                        progress = true;
                    }
                }
                Poll::Ready(Err(e)) => return Err(Fail::from_ws(e)),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    fn next_outgoing(&mut self, cx: &mut Context<'_>) -> Option<Frame> {
        if let Some(frame) = self.raw_out.pop_front() {
            return Some(frame);
        }
        if let Some(m) = self.internal.pop_front() {
            return Some(Frame::binary(m.encode()));
        }
        if let Poll::Ready(Some(m)) = self.control_rx.poll_recv(cx) {
            // A cancelled request of ours: what arrived of its reply is
            // dropped with it, so it cannot pin the connection's buffer.
            if let MuxFrame::Reset { stream_id, .. } = &m
                && self.shared.is_own(*stream_id)
            {
                self.drop_partial(*stream_id);
            }
            return Some(Frame::binary(m.encode()));
        }
        match self.sched.poll_next(cx, &self.shared.pending) {
            Poll::Ready(m) => Some(Frame::binary(m.encode())),
            Poll::Pending => None,
        }
    }

    fn on_command(&mut self, cmd: Command) -> Result<(), Fail> {
        match cmd {
            Command::Close(code) => Err(Fail::local(&code)),
            Command::Renew(tx) => {
                if self.shared.expired() {
                    let _ = tx.send(Err(TransportError::SessionExpired));
                    return Err(Fail::local("SESSION_EXPIRED"));
                }
                match self.shared.role() {
                    Role::Client => {
                        // Just renewed: that answer serves this ask too.
                        let now = self.shared.now_ms();
                        if self
                            .last_renewed_ms
                            .is_some_and(|at| now.saturating_sub(at) < RENEW_DEBOUNCE_MS)
                        {
                            let _ = tx.send(Ok(self.shared.expires_at_ms.load(Ordering::SeqCst)));
                            return Ok(());
                        }
                        // One RENEW at a time: its answer serves every
                        // waiter (repeated asks must not look like a flood).
                        if self.renew_waiters.is_empty() {
                            self.internal.push_back(MuxFrame::Renew);
                        }
                        self.renew_waiters.push_back(tx);
                    }
                    Role::Server => {
                        let expires_at_ms = self.grant();
                        let _ = tx.send(Ok(expires_at_ms));
                    }
                }
                Ok(())
            }
        }
    }

    /// Server: extends the session by the TTL, never past its cap, and
    /// announces the new expiry.
    fn grant(&mut self) -> u64 {
        let s = &self.shared;
        let max = s.session.max_expires_at_ms;
        let current = s.expires_at_ms.load(Ordering::SeqCst);
        let granted = s
            .now_ms()
            .saturating_add(s.config.session_ttl_ms)
            .min(max)
            .max(current);
        s.expires_at_ms.store(granted, Ordering::SeqCst);
        self.internal.push_back(MuxFrame::SessionUpdate {
            expires_at_ms: granted,
        });
        s.emit(EventKind::Renewed {
            expires_at_ms: granted,
        });
        granted
    }

    /// Whether complete inbound messages the consumer has not taken fill
    /// the inbound byte limit.
    fn consumer_behind(&self) -> bool {
        self.held.bytes.load(Ordering::SeqCst) >= self.shared.config.max_inbound_buffered
    }

    /// Whether to read the next frame now. Reading pauses (TCP flow
    /// control then holds the peer back) while the consumer has not taken
    /// a limit's worth of complete messages, and while the peer has not
    /// read the control frames we owe it: each frame read may add to them.
    fn may_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.internal.len() + self.raw_out.len() > MAX_QUEUED_CONTROL_FRAMES {
            return false; // woken when the socket takes our frames
        }
        if !self.consumer_behind() {
            return true;
        }
        self.held.driver.register(cx.waker());
        // Taken meanwhile: its wake-up may have come before the register.
        !self.consumer_behind()
    }

    fn on_heartbeat(&mut self) -> Result<(), Fail> {
        if self.shared.expired() {
            return Err(Fail::local("SESSION_EXPIRED"));
        }
        self.ping_seq += 1;
        self.raw_out.push_back(Frame::ping(Bytes::copy_from_slice(
            &self.ping_seq.to_be_bytes(),
        )));
        self.ping_outstanding = Some((self.ping_seq, Instant::now()));
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), Fail> {
        match frame.opcode() {
            OpCode::Binary => {
                let mux =
                    MuxFrame::decode(frame.into_payload()).map_err(|e| Fail::from_error(&e))?;
                self.on_mux(mux)
            }
            // yawc queues the pong itself; the one past the limit is
            // dropped with yawc's queue when the connection ends (`run`).
            OpCode::Ping => {
                if self.pings.note(self.shared.now_ms()) > MAX_PINGS_PER_WINDOW {
                    return Err(Fail::local("FLOOD"));
                }
                Ok(())
            }
            OpCode::Pong => {
                if let Some((seq, sent)) = self.ping_outstanding
                    && frame.payload().as_ref() == seq.to_be_bytes()
                {
                    self.ping_outstanding = None;
                    self.shared.emit(EventKind::Heartbeat {
                        rtt: sent.elapsed(),
                    });
                }
                Ok(())
            }
            // Answered (RFC 6455 §5.5.1) with its status code echoed.
            OpCode::Close => Err(Fail {
                code: close_code_of(&frame),
                by_peer: true,
                close: Some(close_answer(&frame)),
            }),
            _ => Err(Fail::local("PROTOCOL_ERROR")),
        }
    }

    fn refuse(&mut self, stream_id: u32, code: ResetCode) {
        self.internal.push_back(MuxFrame::Reset { stream_id, code });
        if self.refusals.note(self.shared.now_ms()) > MAX_REFUSALS_REPORTED_PER_WINDOW {
            self.unreported_refusals = self.unreported_refusals.saturating_add(1);
            return;
        }
        self.shared.emit(EventKind::StreamRefused {
            stream_id,
            code: code.name(),
            unreported: std::mem::take(&mut self.unreported_refusals),
        });
    }

    /// Counts `len` more bytes of peer stream `id` (holding `current`) in
    /// the shared pool: refused when the pool is full, unless the message
    /// is still within one frame's size (see [`InboundPool`]).
    fn pool_admits(&mut self, id: u32, current: usize, len: usize) -> bool {
        let Some(pooled) = self.inbound.get_mut(&id).and_then(|p| p.pooled.as_mut()) else {
            return true;
        };
        let small = current + len <= MAX_CHUNK;
        if !pooled.pool.reserve(len, small) {
            return false;
        }
        pooled.bytes += len;
        true
    }

    fn drop_partial(&mut self, id: u32) -> Option<Partial> {
        let partial = self.inbound.remove(&id)?;
        self.buffered = self.buffered.saturating_sub(partial.data.len());
        if !self.shared.is_own(id) {
            self.peer_partials = self.peer_partials.saturating_sub(1);
        }
        Some(partial)
    }

    fn on_mux(&mut self, frame: MuxFrame) -> Result<(), Fail> {
        match frame {
            MuxFrame::Data {
                stream_id,
                priority,
                flags,
                payload,
            } => self.on_data(stream_id, priority, flags, payload),
            MuxFrame::Reset { stream_id, code } => {
                self.drop_partial(stream_id);
                self.sched.remove(stream_id, code);
                if self.shared.is_own(stream_id)
                    && let Some(tx) = lock(&self.shared.pending).remove(&stream_id)
                {
                    let _ = tx.send(Err(code.to_error()));
                }
                Ok(())
            }
            MuxFrame::Renew => {
                if self.shared.role() != Role::Server {
                    return Err(Fail::local("PROTOCOL_ERROR"));
                }
                if self.shared.expired() {
                    return Err(Fail::local("SESSION_EXPIRED"));
                }
                if self.renewals.note(self.shared.now_ms()) > MAX_RENEWALS_PER_WINDOW {
                    return Err(Fail::local("FLOOD"));
                }
                self.grant();
                Ok(())
            }
            MuxFrame::SessionUpdate { expires_at_ms } => {
                if self.shared.role() != Role::Client {
                    return Err(Fail::local("PROTOCOL_ERROR"));
                }
                if self.renewals.note(self.shared.now_ms()) > MAX_RENEWALS_PER_WINDOW {
                    return Err(Fail::local("FLOOD"));
                }
                // Never more than our own TTL from now, nor past the cap
                // (as clamped at the handshake).
                let expires_at_ms = super::handshake::client_expiry(
                    &self.shared.config,
                    self.shared.now_ms(),
                    expires_at_ms,
                    self.shared.session.max_expires_at_ms,
                );
                self.shared
                    .expires_at_ms
                    .store(expires_at_ms, Ordering::SeqCst);
                self.last_renewed_ms = Some(self.shared.now_ms());
                for waiter in self.renew_waiters.drain(..) {
                    let _ = waiter.send(Ok(expires_at_ms));
                }
                self.shared.emit(EventKind::Renewed { expires_at_ms });
                Ok(())
            }
        }
    }

    fn on_data(
        &mut self,
        id: u32,
        priority: Priority,
        flags: u8,
        payload: Bytes,
    ) -> Result<(), Fail> {
        let own = self.shared.is_own(id);
        if flags & FLAG_OPEN != 0 {
            if self.shared.expired() {
                return Err(Fail::local("SESSION_EXPIRED"));
            }
            if self.inbound.contains_key(&id) {
                return Err(Fail::local("PROTOCOL_ERROR"));
            }
            if own {
                // A reply: only to a request still waiting.
                if flags & FLAG_REQUEST != 0 {
                    return Err(Fail::local("PROTOCOL_ERROR"));
                }
                if !lock(&self.shared.pending).contains_key(&id) {
                    return Ok(());
                }
            } else {
                if id <= self.max_peer_id {
                    return Err(Fail::local("PROTOCOL_ERROR"));
                }
                self.max_peer_id = id;
                if self.peer_partials >= self.shared.config.max_inbound_streams {
                    self.refuse(id, ResetCode::TOO_MANY_STREAMS);
                    return Ok(());
                }
                self.peer_partials += 1;
            }
            self.inbound.insert(
                id,
                Partial {
                    priority,
                    data: Vec::new(),
                    request: flags & FLAG_REQUEST != 0,
                    pooled: (!own)
                        .then(|| self.shared.config.inbound_pool.clone())
                        .flatten()
                        .map(|pool| PoolBytes { pool, bytes: 0 }),
                },
            );
        } else if !self.inbound.contains_key(&id) {
            // Data of a stream already refused, reset or answered is
            // dropped; data before any OPEN is a violation.
            if !own && id > self.max_peer_id {
                return Err(Fail::local("PROTOCOL_ERROR"));
            }
            return Ok(());
        } else if own && !lock(&self.shared.pending).contains_key(&id) {
            // More of a reply whose request was cancelled meanwhile.
            self.drop_partial(id);
            return Ok(());
        }

        let max_message = if own {
            self.shared.config.max_message_size
        } else {
            self.shared.inbound_message_limit.load(Ordering::Relaxed)
        };
        let max_buffered = self.shared.config.max_inbound_buffered;
        let current = self.inbound.get(&id).map_or(0, |p| p.data.len());
        let refusal = if current + payload.len() > max_message {
            Some(ResetCode::MESSAGE_TOO_LARGE)
        } else if self.buffered + payload.len() > max_buffered
            // Reserves in the shared pool when it admits the bytes.
            || !self.pool_admits(id, current, payload.len())
        {
            Some(ResetCode::RESOURCE_EXHAUSTED)
        } else {
            None
        };
        if let Some(code) = refusal {
            self.drop_partial(id);
            self.refuse(id, code);
            if own && let Some(tx) = lock(&self.shared.pending).remove(&id) {
                let _ = tx.send(Err(code.to_error()));
            }
            return Ok(());
        }
        self.buffered += payload.len();
        if let Some(partial) = self.inbound.get_mut(&id) {
            partial.data.extend_from_slice(&payload);
        }
        if flags & FLAG_END == 0 {
            return Ok(());
        }
        let Some(partial) = self.drop_partial(id) else {
            return Ok(());
        };
        if own {
            if let Some(tx) = lock(&self.shared.pending).remove(&id) {
                let _ = tx.send(Ok(partial.data));
            }
            return Ok(());
        }
        let Partial {
            priority,
            data,
            request,
            pooled,
        } = partial;
        let responder = request.then(|| Responder {
            id,
            priority,
            shared: self.shared.clone(),
            done: false,
        });
        let msg = IncomingMessage {
            stream_id: id,
            priority,
            _held: HeldBytes::new(&self.held, data.len()),
            _pooled: pooled,
            data,
            responder,
        };
        if !self.incoming_closed {
            self.pending_delivery = Some(msg);
        }
        Ok(())
    }
}
