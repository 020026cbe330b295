//! Which daemon serves the bridge. When one already runs for the home the
//! bridge is its client. When none runs, the bridge runs the node itself,
//! in-process (the same code as `agentfed daemon`, on a thread of its
//! own), for as long as the MCP session lives, and stops it cleanly when
//! the session ends (lock released, socket removed), unless `--no-daemon`.
//! A home that does not exist yet gets its node once `federation_init`
//! created it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use crate::daemon::{DaemonError, DaemonOptions};
use crate::store::LockError;

/// Longest wait for an in-process node to serve its socket (first starts
/// compile the policy plugins).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How the node is reached.
#[derive(Debug)]
enum State {
    /// A daemon of its own serves the home.
    External,
    /// This process runs the node.
    InProcess {
        stop: watch::Sender<bool>,
        thread: std::thread::JoinHandle<Result<(), DaemonError>>,
    },
    /// No daemon: why.
    Absent(String),
}

/// The node behind the bridge.
#[derive(Debug)]
pub struct Node {
    home: PathBuf,
    no_daemon: bool,
    state: Mutex<State>,
}

impl Node {
    /// The node of `home`; nothing is started yet.
    pub fn new(home: &Path, no_daemon: bool) -> Node {
        Node {
            home: home.to_path_buf(),
            no_daemon,
            state: Mutex::new(State::Absent("not started yet".into())),
        }
    }

    /// Finds a running daemon, or starts the node in-process (unless
    /// `--no-daemon`, or the home has no node yet).
    pub async fn start(&self) {
        let mut state = self.state.lock().await;
        self.ensure(&mut state).await;
    }

    /// Re-checks after a call found no daemon (or after `federation_init`
    /// created the home): starts the node if it may. Whether it runs now.
    pub async fn revive(&self) -> bool {
        let mut state = self.state.lock().await;
        if let State::InProcess { thread, .. } = &*state
            && !thread.is_finished()
        {
            return true;
        }
        if matches!(&*state, State::InProcess { .. }) {
            let old = std::mem::replace(&mut *state, State::Absent(String::new()));
            *state = State::Absent(finished(old));
        }
        self.ensure(&mut state).await;
        !matches!(&*state, State::Absent(_))
    }

    async fn ensure(&self, state: &mut State) {
        if socket_answers(&self.home).await {
            if !matches!(state, State::InProcess { .. }) {
                *state = State::External;
            }
            return;
        }
        if matches!(state, State::InProcess { .. }) {
            return;
        }
        if self.no_daemon {
            *state = State::Absent(format!(
                "no daemon runs for {} and --no-daemon was given",
                self.home.display()
            ));
            return;
        }
        if !self.home.join(crate::config::CONFIG_FILE).exists() {
            *state = State::Absent(format!(
                "no node at {} yet; create it with federation_init",
                self.home.display()
            ));
            return;
        }
        *state = self.spawn().await;
    }

    async fn spawn(&self) -> State {
        let (stop, stop_rx) = watch::channel(false);
        let home = self.home.clone();
        let options = DaemonOptions {
            fake_clock_ms: None,
            stop: Some(stop_rx),
        };
        let thread = match std::thread::Builder::new()
            .name("agentfed-node".into())
            .spawn(move || crate::daemon::run(&home, options))
        {
            Ok(thread) => thread,
            Err(e) => return State::Absent(format!("cannot start the node thread: {e}")),
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if thread.is_finished() {
                let held = matches!(
                    thread.join(),
                    Ok(Err(DaemonError::Lock(LockError::Held { .. })))
                );
                // Another daemon took the home meanwhile: use it.
                if held && wait_for_socket(&self.home, Duration::from_secs(30)).await {
                    return State::External;
                }
                return State::Absent(format!(
                    "the node could not start in-process for {} (see the log on stderr)",
                    self.home.display()
                ));
            }
            if socket_answers(&self.home).await {
                tracing::info!(home = %self.home.display(), "node running in-process for this MCP session");
                return State::InProcess { stop, thread };
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = stop.send(true);
                return State::Absent(format!(
                    "the in-process node did not serve its control socket within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `external`, `in-process` or `none`, and a sentence.
    pub async fn mode(&self) -> (&'static str, String) {
        match &*self.state.lock().await {
            State::External => (
                "external",
                format!("the daemon already running for {}", self.home.display()),
            ),
            State::InProcess { .. } => (
                "in-process",
                format!(
                    "this bridge runs the node of {} in-process for as long as the MCP session lives (no daemon was running)",
                    self.home.display()
                ),
            ),
            State::Absent(why) => ("none", why.clone()),
        }
    }

    /// Stops the in-process node (if any) and waits for it: its lock is
    /// released and its socket removed when this returns.
    pub async fn stop(&self) {
        let old = std::mem::replace(
            &mut *self.state.lock().await,
            State::Absent("stopped".into()),
        );
        if let State::InProcess { stop, thread } = old {
            let _ = stop.send(true);
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            match joined {
                Ok(Ok(Ok(()))) => tracing::info!("in-process node stopped"),
                Ok(Ok(Err(e))) => tracing::warn!("in-process node stopped with an error: {e}"),
                _ => tracing::warn!("in-process node thread failed"),
            }
        }
    }
}

/// Why an in-process node that finished finished.
fn finished(state: State) -> String {
    match state {
        State::InProcess { thread, .. } => match thread.join() {
            Ok(Err(e)) => format!("the in-process node stopped: {e}"),
            _ => "the in-process node stopped".into(),
        },
        _ => "no daemon".into(),
    }
}

async fn socket_answers(home: &Path) -> bool {
    tokio::net::UnixStream::connect(crate::control::socket_path(home))
        .await
        .is_ok()
}

async fn wait_for_socket(home: &Path, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if socket_answers(home).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
