//! A blocking control-API client (what the CLI verbs use).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ErrorBody, PROTOCOL_VERSION, Response, socket_path};

/// How long the client waits for one response before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No daemon listens on the home's socket.
    #[error(
        "no agentfed daemon is running for {home} (nothing listening on {socket}); start one with: agentfed --home {home} daemon",
        home = home.display(),
        socket = socket.display()
    )]
    NotRunning {
        /// The node home.
        home: PathBuf,
        /// The socket path tried.
        socket: PathBuf,
    },
    /// The home itself does not exist (a mistyped `--home`?).
    #[error(
        "no node at {home}: the directory does not exist (a mistyped --home or AGENTFED_HOME?); create a node there with: agentfed --home {home} init",
        home = home.display()
    )]
    NoHome {
        /// The node home.
        home: PathBuf,
    },
    /// The socket exists but this user may not open it.
    #[error(
        "permission denied opening {socket}: the control socket only admits the daemon's own user",
        socket = socket.display()
    )]
    PermissionDenied {
        /// The socket path.
        socket: PathBuf,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {socket}: {source}", socket = socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon answered with something that is not a response.
    #[error("the daemon sent an unreadable response: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(ErrorBody),
}

/// A connection to a daemon's control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: PathBuf,
    next_id: u64,
}

impl Client {
    /// Connects to the daemon of `home`.
    pub fn connect(home: &Path) -> Result<Client, CallError> {
        Client::connect_socket(home, &socket_path(home))
    }

    /// Connects to `socket` (errors mention `home`).
    pub fn connect_socket(home: &Path, socket: &Path) -> Result<Client, CallError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if !home.exists() => CallError::NoHome {
                home: home.to_path_buf(),
            },
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                CallError::NotRunning {
                    home: home.to_path_buf(),
                    socket: socket.to_path_buf(),
                }
            }
            std::io::ErrorKind::PermissionDenied => CallError::PermissionDenied {
                socket: socket.to_path_buf(),
            },
            _ => CallError::Io {
                socket: socket.to_path_buf(),
                source: e,
            },
        })?;
        let io = |source| CallError::Io {
            socket: socket.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            socket: socket.to_path_buf(),
            next_id: 1,
        })
    }

    /// Changes the response timeout (`None` waits forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), CallError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> CallError {
        CallError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&json!({
            "v": PROTOCOL_VERSION,
            "id": id,
            "method": method,
            "params": params,
        }))
        .map_err(|e| CallError::Protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(source) = self.writer.write_all(&line) {
            // The daemon may have answered and closed first (e.g. a
            // refused connection): prefer its answer to the write error.
            return match self.read_response() {
                Ok(Response {
                    error: Some(error), ..
                }) => Err(CallError::Remote(error)),
                _ => Err(self.io(source)),
            };
        }
        let response = self.read_response()?;
        match response {
            Response {
                ok: true,
                result: Some(result),
                ..
            } => Ok(result),
            Response {
                ok: false,
                error: Some(error),
                ..
            } => Err(CallError::Remote(error)),
            _ => Err(CallError::Protocol(
                "response has neither result nor error".into(),
            )),
        }
    }

    /// Reads one response line.
    pub fn read_response(&mut self) -> Result<Response, CallError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(CallError::Protocol(
                "the daemon closed the connection without answering".into(),
            ));
        }
        serde_json::from_str(&line).map_err(|e| CallError::Protocol(e.to_string()))
    }

    /// Writes raw bytes (for tests of the framing).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), CallError> {
        self.writer
            .write_all(bytes)
            .map_err(|source| self.io(source))
    }
}

/// Connects to `home`'s daemon and makes one call.
pub fn call(home: &Path, method: &str, params: Value) -> Result<Value, CallError> {
    Client::connect(home)?.call(method, params)
}
