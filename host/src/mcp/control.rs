//! The bridge's async control-API client: one request line out, one
//! response line back, over the node's control socket. Idle connections
//! are kept for reuse; a call that is cancelled (the MCP request was
//! cancelled, or its client went away) drops its connection, and the
//! daemon finishes or abandons that request on its own.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::ToolError;
use crate::control::{PROTOCOL_VERSION, Response, socket_path};

/// Most idle connections kept for reuse.
const MAX_IDLE: usize = 8;

/// A control-API client acting for one MCP role.
#[derive(Debug)]
pub struct Control {
    home: PathBuf,
    socket: PathBuf,
    actor: &'static str,
    idle: Mutex<Vec<BufReader<UnixStream>>>,
}

impl Control {
    /// A client of `home`'s daemon whose requests act for `actor`
    /// (`mcp:agent` or `mcp:operator`).
    pub fn new(home: &Path, actor: &'static str) -> Control {
        Control {
            home: home.to_path_buf(),
            socket: socket_path(home),
            actor,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether a daemon answers on the socket now.
    pub async fn reachable(&self) -> bool {
        UnixStream::connect(&self.socket).await.is_ok()
    }

    /// Forgets idle connections (after the daemon behind them changed).
    pub fn reset(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Calls `method` with `params`; `client` is the MCP client's declared
    /// name, recorded with operator events the call causes.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        client: Option<&str>,
    ) -> Result<Value, ToolError> {
        let mut line = serde_json::to_vec(&json!({
            "v": PROTOCOL_VERSION,
            "id": 1,
            "method": method,
            "params": params,
            "actor": self.actor,
            "client": client,
        }))
        .map_err(|e| ToolError::new("INTERNAL", format!("request does not serialize: {e}")))?;
        line.push(b'\n');
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(mut conn) => {
                // A kept connection may have been closed by a restarted
                // daemon: nothing was sent then, so a fresh one is safe.
                if conn.get_mut().write_all(&line).await.is_ok() {
                    conn
                } else {
                    self.fresh(&line).await?
                }
            }
            None => self.fresh(&line).await?,
        };
        let mut answer = String::new();
        let n = conn
            .read_line(&mut answer)
            .await
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(ToolError::new(
                "DAEMON_GONE",
                "the daemon closed the connection without answering (it may have stopped); the request may or may not have taken effect",
            ));
        }
        let response: Response = serde_json::from_str(&answer).map_err(|e| {
            ToolError::new(
                "INTERNAL",
                format!("the daemon sent an unreadable response: {e}"),
            )
        })?;
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        match response {
            Response {
                ok: true,
                result: Some(result),
                ..
            } => Ok(result),
            Response {
                error: Some(error), ..
            } => Err(ToolError::from_body(error)),
            _ => Err(ToolError::new(
                "INTERNAL",
                "the daemon's response has neither result nor error",
            )),
        }
    }

    async fn fresh(&self, line: &[u8]) -> Result<BufReader<UnixStream>, ToolError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let mut conn = BufReader::new(stream);
        conn.get_mut()
            .write_all(line)
            .await
            .map_err(|e| self.io_error(e))?;
        Ok(conn)
    }

    fn connect_error(&self, e: std::io::Error) -> ToolError {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::NotFound if !self.home.exists() => ToolError::new(
                "NO_HOME",
                format!(
                    "no node at {}: the directory does not exist; create one with federation_init",
                    self.home.display()
                ),
            ),
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => ToolError::new(
                "NOT_RUNNING",
                format!(
                    "no agentfed daemon is running for {}; start one with: agentfed --home {} daemon (or run the bridge without --no-daemon)",
                    self.home.display(),
                    self.home.display()
                ),
            ),
            ErrorKind::PermissionDenied => ToolError::new(
                "PERMISSION_DENIED",
                format!(
                    "permission denied opening {}: the control socket only admits the daemon's own user",
                    self.socket.display()
                ),
            ),
            _ => self.io_error(e),
        }
    }

    fn io_error(&self, e: std::io::Error) -> ToolError {
        ToolError::new(
            "CONTROL_IO",
            format!("control socket {}: {e}", self.socket.display()),
        )
    }
}
