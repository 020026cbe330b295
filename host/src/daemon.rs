//! `agentfed daemon`: one long-running node process per home.
//!
//! Start-up, in order:
//! 0. set the umask to 077 and refuse a home that is not a 0700 directory
//!    owned by the daemon's user ([`crate::home::check`]);
//! 1. take the single-daemon lock (`daemon.lock`, an `flock`; a second
//!    daemon is refused with the holder's pid, a crashed one leaves no
//!    lock behind);
//! 2. open the coordinator (config, identity — refused if a key file is
//!    group/world readable —, store, audit log, plugins);
//! 3. remove a stale `control.sock` (safe: we hold the lock) and bind a
//!    fresh one, mode 0600; the socket existing means "ready";
//! 4. start the federation layer ([`crate::federation`]: listener on the
//!    node's endpoint, sessions, delivery worker). A listen address that
//!    cannot be bound stops the daemon (exit 1, naming the address and the
//!    OS error); it is checked before anything else opens. The one
//!    exception is an endpoint address that is not on this host (e.g. a
//!    public address behind NAT, without `[transport] listen`): that is
//!    logged and the node only dials out;
//! 5. run the timer (trust and breaker evaluation, `[timers]`) and serve
//!    the control API until SIGINT or SIGTERM.
//!
//! Shutdown: stop accepting, let in-flight requests finish, stop the timer
//! after its current tick, audit `daemon_stopped`, drop the coordinator
//! (the audit writer drains and exits), remove the socket, release the
//! lock, exit 0. After `kill -9` nothing needs repair: the lock dies with
//! the process, redb recovers its last committed transaction, and every
//! acknowledged operation was committed before it was acknowledged.
//!
//! Coordinator calls are synchronous (an fsync, a plugin call): they run
//! on tokio's blocking pool, sharing one `Arc<Coordinator>`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::{AuditEvent, EventType};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ConfigError, NodeConfig};
use crate::control::server::{self, Dispatcher};
use crate::control::socket_path;
use crate::coordinator::{CoordError, Coordinator, CoordinatorOptions};
use crate::store::{HomeLock, LockError};

/// Daemon options from the command line.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Run on a manual clock starting at this time (ms since the Unix
    /// epoch) and enable the `clock.advance` control method. For tests.
    pub fake_clock_ms: Option<u64>,
    /// Also stop when this turns true (besides SIGINT/SIGTERM): how
    /// `agentfed mcp` runs the node in-process for the length of an MCP
    /// session and shuts it down cleanly when the session ends.
    pub stop: Option<watch::Receiver<bool>>,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the home lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The config file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The coordinator could not open (identity, store, plugins…).
    #[error(transparent)]
    Coordinator(#[from] CoordError),
    /// The home is not private to this user (mode or owner).
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// The home does not exist.
    #[error(
        "node home {home} does not exist; create a node with: agentfed --home {home} init --node-id NAME",
        home = .0.display()
    )]
    NoHome(PathBuf),
    /// The endpoint is `ws://` but the configuration does not allow
    /// plaintext: the node could neither listen nor be dialed, so it does
    /// not start.
    #[error(
        "the endpoint {endpoint} is plaintext ws://, which needs [transport] allow_plaintext = true in agentfed.toml (only on an already-private network); set it, or use a wss:// endpoint"
    )]
    PlaintextEndpoint {
        /// The node's endpoint.
        endpoint: String,
    },
    /// The federation listener cannot bind its address.
    #[error(
        "cannot listen for peers on {addr}: {source} (free the port, or change the endpoint or [transport] listen in agentfed.toml)"
    )]
    Listen {
        /// The address the listener was to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `[mesh] enabled` but the mesh cannot be set up.
    #[error("the WireGuard mesh cannot start: {0} (fix it, or set [mesh] enabled = false)")]
    Mesh(#[from] crate::mesh::runtime::MeshError),
    /// Socket or runtime failure.
    #[error("{action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl DaemonError {
    /// Bad configuration or input (CLI exit 2) rather than a refusal or
    /// failure (exit 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            DaemonError::Config(_)
                | DaemonError::PlaintextEndpoint { .. }
                | DaemonError::Coordinator(CoordError::Config(_))
        )
    }
}

/// Runs the daemon in the foreground until SIGINT/SIGTERM.
pub fn run(home: &Path, options: DaemonOptions) -> Result<(), DaemonError> {
    if !home.is_dir() {
        return Err(DaemonError::NoHome(home.to_path_buf()));
    }
    // Everything the daemon creates (the store, the lock, cache entries,
    // files libraries create with default modes) is private from birth.
    crate::home::private_umask();
    // Refused before the lock file is created: nothing changes.
    crate::home::check(home)?;
    let lock = HomeLock::acquire(home)?;
    // Validate the config first: a clear message, before plugins compile.
    let config = NodeConfig::load(home)?;
    let endpoints = check_identity_matches(home, &config)?;
    // The endpoint's scheme decides whether the listener speaks TLS; a
    // ws:// node without the opt-in would start deaf (and dial nobody
    // over ws://), which is a configuration error, not a state to run in.
    if let Some(endpoint) = endpoints.effective()
        && endpoint.starts_with("ws://")
        && !config.transport.allow_plaintext
    {
        return Err(DaemonError::PlaintextEndpoint {
            endpoint: endpoint.to_string(),
        });
    }
    // Refuse a listen address that cannot be bound before opening anything
    // (nothing served, nothing audited, the node not moved). A dial-only
    // node listens nowhere.
    let listen = match endpoints
        .effective()
        .and_then(|endpoint| listen_target(&config, endpoint))
    {
        Some(target) => check_listen(target)?,
        None => None,
    };
    let fake_clock = options.fake_clock_ms.is_some();
    let clock: Arc<dyn Clock> = match options.fake_clock_ms {
        Some(start) => Arc::new(ManualClock::new(start)),
        None => Arc::new(SystemClock),
    };
    if let Some(to) = &endpoints.moving_to {
        move_endpoint(
            home,
            &config,
            &clock,
            endpoints.current.as_deref(),
            to.as_deref(),
        )?;
    }
    let coordinator = Arc::new(Coordinator::open(
        home,
        CoordinatorOptions {
            clock,
            ..CoordinatorOptions::default()
        },
    )?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agentfed-daemon")
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            action: "starting the async runtime for",
            path: home.to_path_buf(),
            source,
        })?;
    let socket = socket_path(home);
    let result = runtime.block_on(serve(
        home,
        &socket,
        Arc::clone(&coordinator),
        &config,
        fake_clock,
        listen,
        options.stop,
    ));
    // Every task is done; the blocking pool may still hold a finished
    // job's clone for a moment, so shut the runtime down first.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = std::fs::remove_file(&socket);
    match Arc::try_unwrap(coordinator) {
        Ok(coordinator) => {
            if let Err(e) = coordinator.audit().append(
                AuditEvent::new(EventType::DaemonStopped, "daemon stopped")
                    .with_actor(crate::audit::ACTOR_SYSTEM),
            ) {
                tracing::warn!("cannot audit daemon_stopped: {e}");
            }
            // Dropping joins the audit writer after it drained its queue.
            drop(coordinator);
        }
        Err(_) => tracing::warn!(
            "coordinator still referenced at shutdown; its writes were committed already"
        ),
    }
    drop(lock);
    if result.is_ok() {
        tracing::info!("daemon stopped cleanly");
    }
    result
}

/// The endpoint in `node.json`, and the one the config moves the node to.
/// An endpoint of `None` is a dial-only node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    /// `node.json`'s endpoint (what the manifest says now).
    current: Option<String>,
    /// The config's `[node] endpoint`, when it sets one that differs
    /// (`Some(None)`: the node becomes dial-only).
    moving_to: Option<Option<String>>,
}

impl Endpoints {
    /// The endpoint the daemon runs with; `None` for a dial-only node.
    fn effective(&self) -> Option<&str> {
        match &self.moving_to {
            Some(to) => to.as_deref(),
            None => self.current.as_deref(),
        }
    }
}

/// `node.json` (written by `init`, signed into the manifest) holds the
/// node id and endpoint. A config naming another node id is refused. A
/// config that sets `[node] endpoint` to another endpoint moves the node
/// ([`move_endpoint`], once the new address is known to be usable); a
/// config without the key (the default endpoint) changes nothing. Reads
/// only.
fn check_identity_matches(home: &Path, config: &NodeConfig) -> Result<Endpoints, DaemonError> {
    let identity = crate::identity::Identity::load(home)
        .map_err(|e| DaemonError::Coordinator(CoordError::Identity(e)))?;
    let path = home.join(crate::config::CONFIG_FILE);
    if !config.node.node_id.is_empty() && config.node.node_id != identity.node_id().as_str() {
        return Err(DaemonError::Config(ConfigError::Invalid {
            path,
            message: format!(
                "[node] node_id differs from the identity in {} ({}), which is authoritative; make them agree or re-run init",
                crate::identity::NODE_FILE,
                identity.node_id()
            ),
        }));
    }
    let current = identity.endpoint().map(str::to_string);
    if config.endpoint() == current.as_deref() {
        return Ok(Endpoints {
            current,
            moving_to: None,
        });
    }
    if !NodeConfig::sets_endpoint(home)? {
        tracing::warn!(
            node_json = current.as_deref().unwrap_or(crate::config::NO_ENDPOINT),
            "agentfed.toml does not set [node] endpoint; using the one in node.json"
        );
        return Ok(Endpoints {
            current,
            moving_to: None,
        });
    }
    Ok(Endpoints {
        current,
        moving_to: Some(config.endpoint().map(str::to_string)),
    })
}

/// Moves the node from `from` to `to`: audits `manifest_published` first
/// (durably, with the previous endpoint), then rewrites `node.json`. In
/// that order a crash or failure in between leaves a record of a move
/// that the next start completes (and records again), never a move
/// without a record. Peers learn the endpoint from the manifest of the
/// next handshake (docs/protocol.md §10.3).
fn move_endpoint(
    home: &Path,
    config: &NodeConfig,
    clock: &Arc<dyn Clock>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(), DaemonError> {
    let shown = |e: Option<&str>| e.unwrap_or(crate::config::NO_ENDPOINT).to_string();
    let opened = |e| DaemonError::Coordinator(CoordError::from(e));
    let store = crate::store::Store::open_in_home(home).map_err(opened)?;
    let audit = crate::audit::AuditLog::open(
        &store,
        crate::audit::AuditConfig {
            compliance: config.audit.compliance.into(),
            clock: Some(clock.clone()),
        },
    )
    .map_err(|e| DaemonError::Coordinator(CoordError::from(e)))?;
    audit
        .append(
            AuditEvent::new(
                EventType::ManifestPublished,
                format!(
                    "endpoint changed from {} to {} (agentfed.toml)",
                    shown(from),
                    shown(to)
                ),
            )
            .with_actor(crate::audit::ACTOR_OPERATOR)
            .with_details(serde_json::json!({"endpoint": to, "previous_endpoint": from})),
        )
        .map_err(|e| DaemonError::Coordinator(CoordError::from(e)))?;
    drop((audit, store));
    crate::identity::Identity::set_endpoint(home, to)
        .map_err(|e| DaemonError::Coordinator(CoordError::Identity(e)))?;
    tracing::info!(
        from = %shown(from),
        to = %shown(to),
        "[node] endpoint changed in agentfed.toml: node.json updated; peers learn it at their next handshake with this node"
    );
    Ok(())
}

/// The address the federation listener will bind, and whether a failure
/// to bind it must stop the daemon.
#[derive(Debug, Clone, Copy)]
struct ListenTarget {
    addr: SocketAddr,
    /// From `[transport] listen` (every bind failure is fatal) rather than
    /// from the endpoint (an address that is not on this host is not).
    explicit: bool,
}

/// Where the federation layer will listen, decided as it does: `[transport]
/// listen`, else the host and port of the endpoint (resolved if it is a
/// name). `None` when it will not listen at all (an endpoint that does not
/// resolve); the federation layer logs that case. (A `ws://` endpoint
/// without `allow_plaintext` never gets here: [`run`] refuses it.)
fn listen_target(config: &NodeConfig, endpoint: &str) -> Option<ListenTarget> {
    Some(ListenTarget {
        addr: crate::federation::listen_address(config, endpoint)?,
        explicit: config.transport.listen.is_some(),
    })
}

/// Binds (and releases) the listen address to find out early whether the
/// federation listener can use it: `Some(addr)` when it can (the listener
/// must then come up), an error naming the address and the OS error when
/// it cannot. An endpoint address that is not on this host is only logged
/// (`None`: the node then only dials out).
fn check_listen(target: ListenTarget) -> Result<Option<SocketAddr>, DaemonError> {
    match std::net::TcpListener::bind(target.addr) {
        Ok(_) => Ok(Some(target.addr)),
        Err(e) if !target.explicit && e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            tracing::warn!(
                addr = %target.addr,
                "the endpoint's address is not on this host ({e}); not listening for peers, this node can only dial out (set [transport] listen to listen on a local address)"
            );
            Ok(None)
        }
        Err(source) => Err(DaemonError::Listen {
            addr: target.addr,
            source,
        }),
    }
}

async fn serve(
    home: &Path,
    socket: &Path,
    coordinator: Arc<Coordinator>,
    config: &NodeConfig,
    fake_clock: bool,
    listen: Option<SocketAddr>,
    external_stop: Option<watch::Receiver<bool>>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Io {
            action,
            path,
            source,
        }
    };
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler for", home))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler for", home))?;

    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing stale socket", socket)(e)),
    }
    let listener = server::bind(socket).map_err(io("binding control socket", socket))?;
    let uid = rustix::process::getuid().as_raw();

    {
        let c = Arc::clone(&coordinator);
        let pid = std::process::id();
        let started = tokio::task::spawn_blocking(move || {
            c.audit().append(
                AuditEvent::new(
                    EventType::DaemonStarted,
                    format!("daemon started (pid {pid})"),
                )
                .with_actor(crate::audit::ACTOR_SYSTEM)
                .with_details(serde_json::json!({"pid": pid, "fake_clock": fake_clock})),
            )
        })
        .await;
        if let Ok(Err(e)) = started {
            tracing::warn!("cannot audit daemon_started: {e}");
        }
        audit_storage_recovery(&coordinator).await;
    }

    if config.mesh.enabled {
        // A rotation cut short by a crash is finished (or dropped) before
        // the key is presented in a manifest or put on the device.
        let c = Arc::clone(&coordinator);
        let home_dir = home.to_path_buf();
        let recovered = tokio::task::spawn_blocking(move || {
            let witness = crate::mesh::witness::WitnessLog::new(Arc::clone(&c));
            crate::mesh::rotation::recover(&home_dir, c.identity(), &witness)
        })
        .await
        .map_err(|e| DaemonError::Mesh(crate::mesh::runtime::MeshError::State(e.to_string())))?
        .map_err(|e| DaemonError::Mesh(crate::mesh::runtime::MeshError::State(e.to_string())))?;
        if let Some(key) = recovered {
            tracing::warn!(public_key = %key, "finished a WireGuard key rotation interrupted by a crash");
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut dispatcher = Dispatcher::new(Arc::clone(&coordinator), fake_clock);
    let federation = match crate::federation::Federation::start(
        home,
        Arc::clone(&coordinator),
        config,
        stop_rx.clone(),
    )
    .await
    {
        Ok(federation) => {
            // The address was free at start-up; if the listener still did
            // not come up (taken since), stop rather than run deaf.
            if let Some(addr) = listen
                && federation.listen_addr().is_none()
            {
                let source = std::io::Error::other(
                    "taken since the start-up check; the federation listener did not start (see the log above)",
                );
                let _ = stop_tx.send(true);
                federation.shutdown().await;
                return Err(DaemonError::Listen { addr, source });
            }
            dispatcher = dispatcher.with_federation(Arc::clone(&federation));
            Some(federation)
        }
        Err(e) => {
            tracing::warn!("federation layer not started: {e}");
            None
        }
    };
    let mesh = match start_mesh(&coordinator, config).await {
        Ok(mesh) => mesh,
        Err(e) => {
            let _ = stop_tx.send(true);
            if let Some(federation) = &federation {
                federation.shutdown().await;
            }
            return Err(e);
        }
    };
    let mesh_task = mesh.as_ref().map(|mesh| {
        dispatcher = dispatcher.clone().with_mesh(Arc::clone(mesh));
        tokio::spawn(crate::mesh::runtime::run(
            Arc::clone(mesh),
            Duration::from_secs(config.mesh.reconcile_secs),
            stop_rx.clone(),
        ))
    });
    let server = tokio::spawn(server::serve(listener, dispatcher, uid, stop_rx.clone()));
    let period = config.timers.tick_period();
    let timer = tokio::spawn(timer(Arc::clone(&coordinator), period, stop_rx));
    tracing::info!(
        node = %coordinator.node_id(),
        socket = %socket.display(),
        pid = std::process::id(),
        tick_secs = period.as_secs(),
        fake_clock,
        "agentfed daemon ready"
    );

    let stop_requested = async {
        match external_stop {
            Some(mut stop) => server::stopped(&mut stop).await,
            None => std::future::pending().await,
        }
    };
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        _ = stop_requested => "stop request",
    };
    tracing::info!("{signal} received; shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = timer.await;
    if let Some(task) = mesh_task {
        let _ = task.await;
    }
    if let Some(federation) = federation {
        federation.shutdown().await;
    }
    Ok(())
}

/// Sets the mesh up when `[mesh] enabled`: the device, its peers and the
/// firewall, reconciled once before the daemon reports ready. The device
/// and firewall stay as last reconciled when the daemon stops; the next
/// start reconciles them again.
async fn start_mesh(
    coordinator: &Arc<Coordinator>,
    config: &NodeConfig,
) -> Result<Option<Arc<crate::mesh::runtime::MeshRuntime>>, DaemonError> {
    if !config.mesh.enabled {
        return Ok(None);
    }
    let mesh = Arc::new(crate::mesh::runtime::MeshRuntime::new(
        Arc::clone(coordinator),
        config,
    )?);
    let m = Arc::clone(&mesh);
    let first = tokio::task::spawn_blocking(move || m.reconcile(true))
        .await
        .map_err(|e| DaemonError::Mesh(crate::mesh::runtime::MeshError::State(e.to_string())))??;
    tracing::info!(
        interface = mesh.interface(),
        applied = ?first.applied,
        excluded = first.excluded,
        "WireGuard mesh up"
    );
    Ok(Some(mesh))
}

/// Runs `coordinator.tick()` every `period` until `stop`; a tick in
/// progress finishes first.
async fn timer(coordinator: Arc<Coordinator>, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = server::stopped(&mut stop) => return,
        }
        let c = Arc::clone(&coordinator);
        match tokio::task::spawn_blocking(move || c.tick()).await {
            Ok(Ok(report)) => tracing::debug!(
                peers = report.peers,
                trust_changes = report.trust_changes,
                breaker_changes = report.breaker_changes,
                "timer tick"
            ),
            Ok(Err(e)) => tracing::warn!(code = e.code(), "timer tick failed: {e}"),
            Err(e) => tracing::error!("timer tick panicked: {e}"),
        }
    }
}

/// Audits what opening the message log did, when it did anything: records
/// replayed into the state file (the node had not shut down cleanly) and a
/// torn tail cut off (records that were never acknowledged).
async fn audit_storage_recovery(coordinator: &Arc<Coordinator>) {
    let replay = coordinator.store().log_replay().clone();
    if replay.replayed == 0 && replay.cut.is_none() {
        return;
    }
    let summary = match &replay.cut {
        Some(cut) => format!(
            "message log recovered: {} records replayed, a torn tail of {} bytes cut at record {}",
            replay.replayed, cut.dropped_bytes, cut.first_lost_lsn
        ),
        None => format!(
            "message log recovered: {} records replayed into the state file",
            replay.replayed
        ),
    };
    let details = serde_json::json!({
        "records": replay.records,
        "replayed": replay.replayed,
        "elapsed_ms": replay.elapsed_ms,
        "cut": replay.cut.as_ref().map(|cut| serde_json::json!({
            "segment": cut.segment.display().to_string(),
            "offset": cut.offset,
            "first_lost_record": cut.first_lost_lsn,
            "dropped_bytes": cut.dropped_bytes,
            "reason": cut.reason,
        })),
    });
    let c = Arc::clone(coordinator);
    let recorded = tokio::task::spawn_blocking(move || {
        c.audit().append(
            AuditEvent::new(EventType::StorageRecovered, summary)
                .with_actor(crate::audit::ACTOR_SYSTEM)
                .with_details(details),
        )
    })
    .await;
    if let Ok(Err(e)) = recorded {
        tracing::warn!("cannot audit storage_recovered: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, NodeId};

    const FIRST: &str = "wss://192.0.2.1:9100";
    const MOVED: &str = "wss://192.0.2.2:9200";

    fn home_with_config(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        // A node home must be private (tempfile's directories follow the
        // umask).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod 700");
        let node = NodeId::parse("alpha").expect("node id");
        Identity::init(dir.path(), &node, Some(FIRST), false).expect("init");
        std::fs::write(dir.path().join(crate::config::CONFIG_FILE), config).expect("config");
        dir
    }

    #[test]
    fn an_endpoint_set_in_the_config_moves_the_node() {
        let dir = home_with_config(&format!("[node]\nendpoint = \"{MOVED}\"\n"));
        let config = NodeConfig::load(dir.path()).expect("config");
        let endpoints = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(endpoints.current.as_deref(), Some(FIRST));
        assert_eq!(endpoints.effective(), Some(MOVED));
        // Checking moves nothing; moving audits, then rewrites node.json.
        assert_eq!(
            Identity::load(dir.path()).expect("load").endpoint(),
            Some(FIRST)
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        move_endpoint(dir.path(), &config, &clock, Some(FIRST), Some(MOVED)).expect("moved");
        assert_eq!(
            Identity::load(dir.path()).expect("load").endpoint(),
            Some(MOVED)
        );
        let store = crate::store::Store::open_in_home(dir.path()).expect("store");
        let audit = crate::audit::AuditLog::open(&store, Default::default()).expect("audit");
        let records = audit.query(&Default::default()).expect("query");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event_type, EventType::ManifestPublished);
        assert_eq!(records[0].details["previous_endpoint"], FIRST);
        drop((audit, store));
        // Applied once: the next start finds them agreeing.
        let again = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(again.moving_to, None);
    }

    #[test]
    fn a_config_without_an_endpoint_leaves_node_json_alone() {
        let dir = home_with_config("[node]\n");
        let config = NodeConfig::load(dir.path()).expect("config");
        assert_ne!(config.node.endpoint, FIRST, "the default differs");
        let endpoints = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(endpoints.effective(), Some(FIRST));
        assert_eq!(endpoints.moving_to, None);
        assert_eq!(
            Identity::load(dir.path()).expect("load").endpoint(),
            Some(FIRST)
        );
    }

    #[test]
    fn endpoint_none_makes_a_listening_node_dial_only_and_back() {
        let dir = home_with_config("[node]\nendpoint = \"none\"\n");
        let config = NodeConfig::load(dir.path()).expect("config");
        let endpoints = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(endpoints.effective(), None);
        assert_eq!(endpoints.moving_to, Some(None));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        move_endpoint(dir.path(), &config, &clock, Some(FIRST), None).expect("moved");
        assert_eq!(Identity::load(dir.path()).expect("load").endpoint(), None);
        let store = crate::store::Store::open_in_home(dir.path()).expect("store");
        let audit = crate::audit::AuditLog::open(&store, Default::default()).expect("audit");
        let records = audit.query(&Default::default()).expect("query");
        assert_eq!(records[0].details["endpoint"], serde_json::Value::Null);
        assert_eq!(records[0].details["previous_endpoint"], FIRST);
        drop((audit, store));
        let again = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(again.moving_to, None, "applied once");
        // And back: a config with an endpoint gives the node a listener.
        std::fs::write(
            dir.path().join(crate::config::CONFIG_FILE),
            format!("[node]\nendpoint = \"{MOVED}\"\n"),
        )
        .expect("config");
        let config = NodeConfig::load(dir.path()).expect("config");
        let endpoints = check_identity_matches(dir.path(), &config).expect("checked");
        assert_eq!(endpoints.current, None);
        assert_eq!(endpoints.effective(), Some(MOVED));
    }
}
