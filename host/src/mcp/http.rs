//! `agentfed mcp --http ADDR`: the streamable HTTP transport, for MCP
//! clients that cannot spawn a process.
//!
//! * Loopback only unless `--allow-remote`; a non-loopback address is
//!   served over TLS with the node's own certificate (clients pin its
//!   fingerprint, as peers do).
//! * Every request needs `Authorization: Bearer <token>`. The token is
//!   generated into the node home (`mcp.token`, 0600) the first time and
//!   printed once on stdout; it never reaches a log.
//! * `Host` and `Origin` are validated against DNS rebinding (rmcp's
//!   checks: loopback hosts and the bound address; a present `Origin` must
//!   be this server's own).
//! * Each MCP session gets its own [`Bridge`]; many run at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::handler::{Bridge, Shared};
use super::{McpError, McpOptions};

/// The token file in the node home.
pub const TOKEN_FILE: &str = "mcp.token";

/// Refuses a non-loopback address without `--allow-remote`.
pub fn check_address(addr: SocketAddr, options: &McpOptions) -> Result<(), McpError> {
    if !addr.ip().is_loopback() && !options.allow_remote {
        return Err(McpError::Usage(format!(
            "--http {addr} is not a loopback address; serving MCP beyond this host needs --allow-remote (it is then served over TLS with the node's certificate)"
        )));
    }
    Ok(())
}

/// The bearer token: read from the home, or generated (0600) and printed
/// once.
pub fn token(home: &Path) -> Result<String, McpError> {
    let path = home.join(TOKEN_FILE);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| McpError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_string()),
        Ok(_) => {
            return Err(McpError::Usage(format!(
                "{} is not a token (at least 32 characters); remove it to have a new one generated",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path)(e)),
    }
    if !home.is_dir() {
        return Err(McpError::Usage(format!(
            "no node at {home}: create one first with: agentfed --home {home} init --node-id NAME",
            home = home.display()
        )));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| io("generating a token for", &path)(std::io::Error::other(e.to_string())))?;
    let token = hex::encode(raw);
    crate::home::write_private(&path, token.as_bytes()).map_err(io("writing", &path))?;
    // Printed once, on stdout (the HTTP transport keeps stdout free of
    // protocol); never logged.
    println!(
        "agentfed mcp: bearer token (saved in {}, mode 0600; printed only now): {token}",
        path.display()
    );
    Ok(token)
}

/// Whether `header` is `Bearer <token>` (compared in constant time).
fn authorized(header: Option<&http::HeaderValue>, token: &str) -> bool {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Serves MCP over streamable HTTP on `addr` until SIGINT/SIGTERM.
pub async fn serve(shared: Arc<Shared>, addr: SocketAddr) -> Result<(), McpError> {
    let home: PathBuf = shared.home.clone();
    let token = Arc::new(token(&home)?);
    let tls = if addr.ip().is_loopback() {
        None
    } else {
        let identity = crate::identity::Identity::load(&home).map_err(|e| {
            McpError::Usage(format!(
                "--allow-remote needs the node's TLS certificate: {e}"
            ))
        })?;
        let config = crate::transport::tls::server_config(&identity)
            .map_err(|e| McpError::Transport(format!("TLS: {e}")))?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| McpError::Transport(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| McpError::Transport(format!("listener address: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let port = bound.port();
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    let mut origins = vec![
        format!("{scheme}://localhost:{port}"),
        format!("{scheme}://127.0.0.1:{port}"),
        format!("{scheme}://[::1]:{port}"),
    ];
    if !bound.ip().is_loopback() {
        hosts.push(bound.ip().to_string());
        hosts.push(bound.to_string());
        origins.push(format!("{scheme}://{bound}"));
    }
    let stop = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_cancellation_token(stop.child_token());
    let for_sessions = Arc::clone(&shared);
    let service = StreamableHttpService::new(
        move || Ok(Bridge::new(Arc::clone(&for_sessions))),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    eprintln!(
        "agentfed mcp: serving MCP on {scheme}://{bound}/ (bearer token in {})",
        home.join(TOKEN_FILE).display()
    );
    tracing::info!(%bound, role = shared.role.as_str(), "MCP over streamable HTTP");

    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| McpError::Transport(format!("installing SIGTERM handler: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| McpError::Transport(format!("installing SIGINT handler: {e}")))?;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("MCP HTTP accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let service = service.clone();
        let token = Arc::clone(&token);
        let tls = tls.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                let token = Arc::clone(&token);
                async move {
                    if !authorized(request.headers().get(http::header::AUTHORIZATION), &token) {
                        return Ok::<_, Infallible>(plain(
                            StatusCode::UNAUTHORIZED,
                            "UNAUTHORIZED: a bearer token is required (Authorization: Bearer <token from mcp.token in the node home>)\n",
                        ));
                    }
                    Ok(service.handle(request).await)
                }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), handler);
                    run_connection(conn, stop).await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let conn = builder.serve_connection(TokioIo::new(stream), handler);
                        run_connection(conn, stop).await
                    }
                    Err(e) => Err(format!("TLS handshake: {e}")),
                },
            };
            if let Err(e) = served {
                tracing::debug!("MCP HTTP connection: {e}");
            }
        });
    }
    stop.cancel();
    connections.shutdown().await;
    Ok(())
}

/// Serves one connection until it ends or the server stops.
async fn run_connection<C>(conn: C, stop: CancellationToken) -> Result<(), String>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        served = conn => served.map_err(|e| e.to_string()),
        _ = stop.cancelled() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = "a".repeat(64);
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert!(authorized(
            Some(&header(&format!("Bearer {token}"))),
            &token
        ));
        assert!(!authorized(None, &token));
        assert!(!authorized(Some(&header(&token)), &token));
        assert!(!authorized(
            Some(&header(&format!("Basic {token}"))),
            &token
        ));
        assert!(!authorized(
            Some(&header(&format!("Bearer {}", "a".repeat(63)))),
            &token
        ));
        assert!(!authorized(
            Some(&header(&format!("Bearer {}b", "a".repeat(63)))),
            &token
        ));
    }

    #[test]
    fn a_token_is_generated_once_private_and_then_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join(TOKEN_FILE), "short").unwrap();
        assert!(matches!(token(dir.path()), Err(McpError::Usage(_))));
        assert!(matches!(
            token(&dir.path().join("absent")),
            Err(McpError::Usage(_))
        ));
    }
}
