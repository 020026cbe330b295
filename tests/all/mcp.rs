//! `agentfed mcp` driven as a real child process by rmcp's MCP client,
//! over stdio, against real daemons (a live two-node federation) and the
//! in-process node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion, ReadResourceRequestParams, ResourceUpdatedNotificationParam,
    SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};

use crate::harness::{self, Node, fed_node, fingerprint, session_peers, wait_until};

/// How long one MCP call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long federation state may take to settle.
const SETTLE: Duration = Duration::from_secs(60);
/// The client name the bridge sees.
const CLIENT_NAME: &str = "agentfed-test";

/// The test client: records resource updates.
#[derive(Clone, Default)]
struct Recorder {
    updated: Arc<Mutex<Vec<String>>>,
    progress: Arc<Mutex<Vec<f64>>>,
    /// Speak the newest protocol version (2026-07-28) instead.
    latest: bool,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        let config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(CLIENT_NAME, "1.0.0"),
        );
        if self.latest {
            return config.with_protocol_version(ProtocolVersion::LATEST);
        }
        // The version Claude Code speaks: resources/subscribe is part of it.
        config.with_protocol_version(ProtocolVersion::V_2025_06_18)
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.updated.lock().unwrap().push(params.uri);
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params.progress);
    }
}

/// A running `agentfed mcp` and the MCP client connected to it.
struct Bridge {
    rt: tokio::runtime::Runtime,
    client: Option<RunningService<RoleClient, Recorder>>,
    child: Option<tokio::process::Child>,
    recorder: Recorder,
    log: PathBuf,
}

impl Bridge {
    /// Spawns `agentfed --home HOME mcp ARGS` and completes the handshake.
    fn spawn(home: &Path, log_dir: &Path, args: &[&str]) -> Bridge {
        Bridge::spawn_as(home, log_dir, args, Recorder::default())
    }

    /// [`Bridge::spawn`] with a given client.
    fn spawn_as(home: &Path, log_dir: &Path, args: &[&str], recorder: Recorder) -> Bridge {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let log = log_dir.join(format!("mcp-{}.log", rand_suffix()));
        let (client, child) = rt.block_on(async {
            let mut cmd = tokio::process::Command::new(harness::bin());
            cmd.arg("--home")
                .arg(home)
                .arg("-v")
                .arg("mcp")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .env_remove("RUST_LOG")
                .kill_on_drop(true);
            let mut child = cmd.spawn().expect("spawning agentfed mcp");
            let stdout = child.stdout.take().expect("stdout");
            let stdin = child.stdin.take().expect("stdin");
            let handshake = async {
                if recorder.latest {
                    // The 2026-07-28 lifecycle: server/discover and
                    // self-contained requests, no initialize.
                    let lifecycle = rmcp::ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::LATEST],
                    };
                    rmcp::serve_client_with_lifecycle(recorder.clone(), (stdout, stdin), lifecycle)
                        .await
                } else {
                    recorder.clone().serve((stdout, stdin)).await
                }
            };
            let client = tokio::time::timeout(CALL_TIMEOUT, handshake)
                .await
                .expect("timed out waiting for the MCP handshake")
                .expect("MCP handshake");
            (client, child)
        });
        Bridge {
            rt,
            client: Some(client),
            child: Some(child),
            recorder,
            log,
        }
    }

    /// Spawns `agentfed --home HOME mcp --http 127.0.0.1:PORT ARGS` and
    /// connects over streamable HTTP with the home's token.
    fn spawn_http(home: &Path, log_dir: &Path, args: &[&str]) -> (Bridge, u16, String) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let port = harness::free_port();
        let log = log_dir.join(format!("mcp-http-{port}.log"));
        let out = log_dir.join(format!("mcp-http-{port}.out"));
        let mut cmd = tokio::process::Command::new(harness::bin());
        cmd.arg("--home")
            .arg(home)
            .arg("-v")
            .arg("mcp")
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        let child = rt
            .block_on(async { cmd.spawn() })
            .expect("spawning agentfed mcp --http");
        wait_until("agentfed mcp --http to listen", SETTLE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let token = std::fs::read_to_string(home.join("mcp.token")).expect("token file");
        let recorder = Recorder::default();
        let client = Bridge::http_client(&rt, &recorder, port, &token);
        let bridge = Bridge {
            rt,
            client: Some(client),
            child: Some(child),
            recorder,
            log,
        };
        (bridge, port, token)
    }

    /// An MCP client session over streamable HTTP.
    fn http_client(
        rt: &tokio::runtime::Runtime,
        recorder: &Recorder,
        port: u16,
        token: &str,
    ) -> RunningService<RoleClient, Recorder> {
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        let config =
            StreamableHttpClientTransportConfig::with_uri(format!("http://127.0.0.1:{port}/"))
                .auth_header(token.to_string());
        rt.block_on(async {
            let transport = StreamableHttpClientTransport::from_config(config);
            tokio::time::timeout(CALL_TIMEOUT, recorder.clone().serve(transport))
                .await
                .expect("timed out waiting for the MCP handshake over HTTP")
                .expect("MCP handshake over HTTP")
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> &RunningService<RoleClient, Recorder> {
        self.client.as_ref().expect("client connected")
    }

    /// The bridge's server instructions.
    fn instructions(&self) -> String {
        self.client()
            .peer_info()
            .and_then(|info| info.instructions.clone())
            .unwrap_or_default()
    }

    /// The listed tools' names.
    fn tool_names(&self) -> Vec<String> {
        let tools = self
            .rt
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, self.client().list_all_tools()).await
            })
            .expect("timed out listing tools")
            .expect("tools/list");
        tools.into_iter().map(|t| t.name.to_string()).collect()
    }

    /// The listed tools.
    fn tools(&self) -> Vec<rmcp::model::Tool> {
        self.rt
            .block_on(self.client().list_all_tools())
            .expect("tools/list")
    }

    /// Calls `tool` with `args` (an object).
    fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let Value::Object(args) = args else {
            panic!("arguments must be an object")
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        self.rt
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, self.client().call_tool(params)).await
            })
            .unwrap_or_else(|_| panic!("timed out calling {tool}; log:\n{}", self.log()))
            .unwrap_or_else(|e| panic!("{tool}: protocol error {e}; log:\n{}", self.log()))
    }

    /// Calls `tool` and expects success: its structured `result`.
    fn ok(&self, tool: &str, args: Value) -> Value {
        let result = self.call(tool, args.clone());
        assert_ne!(
            result.is_error,
            Some(true),
            "{tool} {args} failed: {}",
            text(&result)
        );
        let structured = result
            .structured_content
            .clone()
            .unwrap_or_else(|| panic!("{tool}: no structured content"));
        assert!(
            !text(&result).is_empty(),
            "{tool}: no human text beside the structured content"
        );
        structured["result"].clone()
    }

    /// Calls `tool` and expects a tool error starting with `code`.
    fn fails(&self, tool: &str, args: Value, code: &str) -> String {
        let result = self.call(tool, args.clone());
        let line = text(&result);
        assert_eq!(
            result.is_error,
            Some(true),
            "{tool} {args} should fail with {code}: {line}"
        );
        assert!(
            line.starts_with(&format!("{code}: ")),
            "{tool} {args}: expected {code}, got: {line}"
        );
        line
    }

    /// Subscribes to `uri`.
    #[allow(deprecated)]
    fn subscribe(&self, uri: &str) {
        self.rt
            .block_on(
                self.client()
                    .subscribe(SubscribeRequestParams::new(uri.to_string())),
            )
            .expect("resources/subscribe");
    }

    /// Reads `uri` as JSON.
    fn read(&self, uri: &str) -> Value {
        let result = self
            .rt
            .block_on(
                self.client()
                    .read_resource(ReadResourceRequestParams::new(uri.to_string())),
            )
            .expect("resources/read");
        match &result.contents[0] {
            rmcp::model::ResourceContents::TextResourceContents { text, .. } => {
                serde_json::from_str(text).expect("resource JSON")
            }
            other => panic!("unexpected contents {other:?}"),
        }
    }

    /// Closes the client's end (the bridge's stdin) and waits for the
    /// bridge to exit; its exit status.
    fn close(mut self) -> std::process::ExitStatus {
        let client = self.client.take().expect("client");
        let mut child = self.child.take().expect("child");
        let over_http = self.log.to_string_lossy().contains("mcp-http-");
        self.rt.block_on(async {
            let _ = tokio::time::timeout(CALL_TIMEOUT, client.cancel()).await;
            if over_http {
                // No stdin to close: the HTTP server stops on SIGTERM.
                let pid = child.id().expect("pid");
                let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
                rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
            }
            tokio::time::timeout(CALL_TIMEOUT, child.wait())
                .await
                .expect("timed out waiting for agentfed mcp to exit after stdin closed")
                .expect("waiting for agentfed mcp")
        })
    }

    /// SIGKILLs the bridge (mid-call, say).
    fn kill9(mut self) {
        let mut child = self.child.take().expect("child");
        self.rt.block_on(async {
            child.start_kill().expect("kill");
            let _ = child.wait().await;
        });
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = self.rt.block_on(child.wait());
        }
    }
}

fn rand_suffix() -> u64 {
    crate::harness::Rng::new().next() % 1_000_000
}

/// The text content of a result.
fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The operator tools of the user guide.
const OPERATOR_TOOLS: &[&str] = &[
    "federation_audit",
    "federation_evict",
    "federation_reactivate",
    "federation_wg_attest",
    "federation_wg_keyrotate",
];

/// Every tool of the user guide, and those the agent needs beside them.
const ALL_TOOLS: &[&str] = &[
    "federation_init",
    "federation_join",
    "federation_peers",
    "federation_send",
    "federation_query",
    "federation_status",
    "federation_trust",
    "federation_audit",
    "federation_breaker_status",
    "federation_evict",
    "federation_reactivate",
    "federation_report_spend",
    "federation_consensus",
    "federation_wg_status",
    "federation_wg_attest",
    "federation_wg_keyrotate",
    "federation_wg_witness_fetch",
    "federation_inbox",
    "federation_inbox_remove",
    "federation_outbox",
    "federation_outbox_cancel",
    "federation_leave",
    "federation_sessions",
    "federation_broadcast",
    "federation_audit_verify",
    "federation_audit_proof",
    "federation_plugins",
];

/// Arguments each tool decodes (for the schema checks).
fn valid_args(tool: &str) -> Value {
    match tool {
        "federation_join" => json!({"endpoint": "wss://127.0.0.1:1"}),
        "federation_send" => json!({"peer": "p", "message_type": "ping", "payload": {}}),
        "federation_query" => json!({"peer": "p", "message_type": "ping"}),
        "federation_evict" | "federation_reactivate" => json!({"peer": "p", "reason": "r"}),
        "federation_report_spend" => {
            json!({"peer": "p", "task_id": "t", "tokens": 1.0, "usd": 0.1})
        }
        "federation_consensus" => json!({"proposal": {}}),
        "federation_wg_attest" => json!({"note": "n"}),
        "federation_inbox_remove" => json!({"through": 0}),
        "federation_outbox_cancel" => json!({"envelope_id": "e", "reason": "r"}),
        "federation_audit_proof" => json!({"envelope_id": "e"}),
        "federation_leave" => json!({"peer": "p"}),
        "federation_broadcast" => json!({"message_type": "status-broadcast"}),
        _ => json!({}),
    }
}

/// A value of the wrong type for a property whose schema is `schema`.
fn wrong_value(schema: &Value) -> Option<Value> {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None, // any JSON (a payload)
    };
    if types.contains(&"string") {
        return Some(json!(12345));
    }
    if types
        .iter()
        .any(|t| matches!(*t, "integer" | "number" | "boolean" | "array"))
    {
        return Some(json!({"not": "this"}));
    }
    None
}

#[test]
fn tools_roles_errors_and_inbox_push_over_stdio_against_a_live_federation() {
    let (alpha, _) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    let logs = alpha.dir.path();
    let agent = Bridge::spawn(&alpha.home, logs, &[]);
    let operator = Bridge::spawn(&alpha.home, logs, &["--role", "operator"]);
    federation_tour(&alpha, &beta, &beta_ep, &agent, &operator);
    assert!(agent.close().success());
    assert!(operator.close().success());
}

#[test]
fn tools_roles_errors_and_inbox_push_over_streamable_http() {
    let (alpha, _) = fed_node("alpha");
    let (beta, beta_ep) = fed_node("beta");
    let logs = alpha.dir.path();
    let (agent, port, token) = Bridge::spawn_http(&alpha.home, logs, &[]);
    let (operator, _, _) = Bridge::spawn_http(&alpha.home, logs, &["--role", "operator"]);
    // The token was generated once, 0600, and printed once.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(alpha.home.join("mcp.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let printed: Vec<String> = std::fs::read_dir(logs)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter(|text| text.contains(&token))
        .collect();
    assert_eq!(
        printed.len(),
        1,
        "the token is printed exactly once (stdout), never logged"
    );

    // Without the token, with a wrong one, or from a foreign Origin:
    // refused before any MCP processing.
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let good = format!("Bearer {token}");
    assert_eq!(raw_post(port, None, None, initialize).0, 401);
    assert_eq!(
        raw_post(port, Some("Bearer not-the-token"), None, initialize).0,
        401
    );
    let wrong = format!("Bearer {}", "0".repeat(token.len()));
    assert_eq!(raw_post(port, Some(&wrong), None, initialize).0, 401);
    let (status, _) = raw_post(port, Some(&good), Some("http://evil.example"), initialize);
    assert_eq!(status, 403, "a foreign Origin must be refused");
    let (status, body) = raw_post(port, Some(&good), None, initialize);
    assert_eq!(status, 200, "{body}");
    let own = format!("http://127.0.0.1:{port}");
    let (status, _) = raw_post(port, Some(&good), Some(&own), initialize);
    assert_eq!(status, 200, "the server's own Origin is served");

    // Several sessions at once.
    let second = Bridge::http_client(&agent.rt, &agent.recorder, port, &token);
    let params = CallToolRequestParams::new("federation_status");
    let (one, two) = agent.rt.block_on(async {
        tokio::join!(
            agent.client().call_tool(params.clone()),
            second.call_tool(params.clone())
        )
    });
    assert_eq!(
        one.unwrap().structured_content.unwrap()["result"]["node_id"],
        "alpha"
    );
    assert_eq!(
        two.unwrap().structured_content.unwrap()["result"]["node_id"],
        "alpha"
    );
    agent.rt.block_on(async { second.cancel().await }).ok();

    federation_tour(&alpha, &beta, &beta_ep, &agent, &operator);
    assert!(agent.close().success());
    assert!(operator.close().success());
}

#[test]
fn beyond_loopback_mcp_is_served_over_tls_with_the_node_certificate() {
    let node = Node::init("solo");
    let port = harness::free_port();
    let log = node.dir.path().join("mcp-remote.log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let spawned = std::process::Command::new(harness::bin())
        .arg("--home")
        .arg(&node.home)
        .arg("mcp")
        .arg("--http")
        .arg(format!("0.0.0.0:{port}"))
        .arg("--allow-remote")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawning agentfed mcp --allow-remote");
    // Killed and reaped on drop, also when an assertion fails.
    let mut child = Kill(spawned);
    wait_until("agentfed mcp --allow-remote to listen", SETTLE, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let token = std::fs::read_to_string(node.home.join("mcp.token")).expect("token");
    // Plain HTTP gets no HTTP answer: the port speaks TLS only.
    {
        use std::io::{Read, Write};
        let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = plain.write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plaintext was served: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // TLS pinned to the node's certificate, with the token: served.
    let fp = fingerprint(&node);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let head = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pin = agentfed::transport::tls::Pin::fingerprint(&fp).expect("pin");
        let config = agentfed::transport::tls::client_config(&pin).expect("client config");
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake with the node's certificate");
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(CALL_TIMEOUT, tls.read(&mut buf))
            .await
            .expect("timed out reading the TLS answer")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + CALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agentfed mcp did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `(status, body)` of a raw HTTP/1.1 POST to the MCP endpoint.
fn raw_post(port: u16, auth: Option<&str>, origin: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the head (and whatever body came with it); SSE bodies stay open.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&response).contains("\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

/// Every tool, its errors and the inbox push, against alpha (the bridges'
/// node) and beta.
fn federation_tour(alpha: &Node, beta: &Node, beta_ep: &str, agent: &Bridge, operator: &Bridge) {
    // --- The tools in each role.
    let agent_tools = agent.tool_names();
    let operator_tools = operator.tool_names();
    for tool in ALL_TOOLS {
        assert!(
            operator_tools.iter().any(|t| t == tool),
            "operator lacks {tool}"
        );
        let listed = agent_tools.iter().any(|t| t == tool);
        assert_eq!(
            listed,
            !OPERATOR_TOOLS.contains(tool),
            "agent role and {tool}"
        );
    }
    assert_eq!(operator_tools.len(), ALL_TOOLS.len());
    for tool in operator.tools() {
        let schema = Value::Object((*tool.input_schema).clone());
        assert_eq!(schema["type"], "object", "{}", tool.name);
        assert!(
            tool.output_schema.is_some(),
            "{} has no output schema",
            tool.name
        );
        assert!(
            tool.description.as_ref().is_some_and(|d| d.len() > 40),
            "{}",
            tool.name
        );
        let annotations = tool.annotations.clone().expect("annotations");
        let name = tool.name.as_ref();
        if [
            "federation_status",
            "federation_peers",
            "federation_inbox",
            "federation_audit",
        ]
        .contains(&name)
        {
            assert_eq!(annotations.read_only_hint, Some(true), "{name}");
        }
        if ["federation_evict", "federation_wg_keyrotate"].contains(&name) {
            assert_eq!(annotations.destructive_hint, Some(true), "{name}");
        }
    }
    for tool in OPERATOR_TOOLS {
        agent.fails(tool, valid_args(tool), "OPERATOR_ONLY");
    }
    assert!(
        agent.instructions().contains("Role: agent"),
        "{}",
        agent.instructions()
    );

    // --- Status: the node, and how the bridge runs.
    let status = agent.call("federation_status", json!({}));
    let structured = status.structured_content.clone().expect("structured");
    assert_eq!(structured["result"]["node_id"], "alpha");
    assert_eq!(structured["bridge"]["daemon"], "external");
    assert_eq!(structured["bridge"]["role"], "agent");
    let init = agent.ok("federation_init", json!({"nodeId": "other"}));
    assert_eq!(init["created"], false);
    assert_eq!(init["manifest"]["manifest"]["node_id"], "alpha");
    assert!(
        init["note"]
            .as_str()
            .unwrap()
            .contains("nothing was changed")
    );

    // --- Join: beta does not know alpha yet (the daemon's code passes
    // through); then beta joins alpha and the session is up.
    let beta_fp = fingerprint(beta);
    agent.fails(
        "federation_join",
        json!({"endpoint": beta_ep, "fingerprint": beta_fp}),
        "UNKNOWN_PEER",
    );
    let alpha_fp = fingerprint(alpha);
    let alpha_ep = harness::manifest_field(alpha, "endpoint");
    beta.run(&["join", &alpha_ep, "--fingerprint", &alpha_fp])
        .ok();
    wait_until("alpha's session with beta", SETTLE, || {
        session_peers(alpha).iter().any(|p| p == "beta")
    });
    let sessions = agent.ok("federation_sessions", json!({}));
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["peer"] == "beta")
    );
    let peers = agent.ok("federation_peers", json!({}));
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node_id"] == "beta")
    );
    assert_eq!(
        agent.ok("federation_peers", json!({"peer": "beta"}))["node_id"],
        "beta"
    );
    agent.fails(
        "federation_peers",
        json!({"peer": "nobody"}),
        "UNKNOWN_PEER",
    );

    // --- Trust: agents view, operators set (audited as mcp:operator with
    // the client's name).
    let view = agent.ok("federation_trust", json!({"peer": "beta"}));
    assert_eq!(view[0]["node_id"], "beta");
    agent.fails(
        "federation_trust",
        json!({"peer": "beta", "level": "ATTESTED", "reason": "agent tries"}),
        "OPERATOR_ONLY",
    );
    operator.ok(
        "federation_trust",
        json!({"peer": "beta", "level": "ATTESTED", "reason": "mcp test"}),
    );
    assert_eq!(alpha.peer("beta")["trust_level"], "ATTESTED");
    let set = alpha
        .audit_records()
        .into_iter()
        .rev()
        .find(|r| r["event_type"] == "trust_level_changed" && r["peer"] == "beta")
        .expect("trust change audited");
    assert_eq!(set["actor"], "mcp:operator", "{set}");
    assert_eq!(set["details"]["mcp_client"], CLIENT_NAME, "{set}");
    beta.run(&["trust", "set", "alpha", "attested", "--reason", "mcp test"])
        .ok();

    // --- Push: a subscribed session is told when a message arrives.
    agent.subscribe("agentfed://inbox");
    std::thread::sleep(Duration::from_millis(300));
    beta.run(&[
        "send",
        "alpha",
        "task-assignment",
        "--payload",
        r#"{"task":"analyze the failing test"}"#,
        "--wait",
        "30",
    ])
    .ok();
    wait_until(
        "notifications/resources/updated for the inbox",
        SETTLE,
        || {
            agent
                .recorder
                .updated
                .lock()
                .unwrap()
                .iter()
                .any(|u| u == "agentfed://inbox")
        },
    );
    let inbox = agent.ok("federation_inbox", json!({}));
    let message = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["message_type"] == "task-assignment")
        .expect("the task in the inbox")
        .clone();
    assert_eq!(message["from"], "beta");
    assert_eq!(message["payload"]["task"], "analyze the failing test");
    let resource = agent.read("agentfed://inbox");
    assert!(
        resource
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["seq"] == message["seq"])
    );
    assert_eq!(agent.read("agentfed://status")["node_id"], "alpha");
    assert_eq!(
        agent.read("agentfed://manifest")["manifest"]["node_id"],
        "alpha"
    );
    let removed = agent.ok(
        "federation_inbox_remove",
        json!({"through": message["seq"]}),
    );
    assert!(removed["removed"].as_u64().unwrap() >= 1);
    // A wait that ends with the next message.
    let after = message["seq"].as_u64().unwrap();
    let sender = {
        let home = beta.home.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            harness::agentfed(
                &home,
                &[
                    "send",
                    "alpha",
                    "task-assignment",
                    "--payload",
                    r#"{"task":"second"}"#,
                    "--wait",
                    "30",
                ],
            )
            .ok()
            .to_string()
        })
    };
    let waited = agent.ok(
        "federation_inbox",
        json!({"after": after, "wait_ms": 30000}),
    );
    harness::within_thread(sender, "beta's second task");
    assert_eq!(waited[0]["payload"]["task"], "second", "{waited}");

    // --- Send: queued, waited for, and its refusals.
    let receipt = agent.ok(
        "federation_send",
        json!({"peer": "beta", "message_type": "task-assignment", "payload": {"task": "x"}}),
    );
    assert!(receipt["envelope_id"].is_string(), "{receipt}");
    let queued = alpha
        .audit_records()
        .into_iter()
        .find(|r| {
            r["event_type"] == "message_sent"
                && r["details"]["envelope_id"] == receipt["envelope_id"]
        })
        .expect("the send audited");
    assert_eq!(queued["actor"], "mcp:agent", "{queued}");
    assert_eq!(queued["details"]["mcp_client"], CLIENT_NAME, "{queued}");
    let delivered = agent.ok(
        "federation_send",
        json!({"peer": "beta", "message_type": "task-assignment", "payload": {"task": "y"}, "wait_secs": 30}),
    );
    assert_eq!(delivered["outcome"]["state"], "delivered", "{delivered}");
    // The delivery is provable: beta signed a receipt for those bytes.
    let proof = agent.ok(
        "federation_audit_proof",
        json!({"envelope_id": delivered["receipt"]["envelope_id"]}),
    );
    assert_eq!(
        (
            proof["receipt"]["receiver"].as_str(),
            proof["receipt"]["outcome"].as_str()
        ),
        (Some("beta"), Some("accepted")),
        "{proof}"
    );
    agent.fails(
        "federation_audit_proof",
        json!({"envelope_id": "0123456789abcdef0123456789abcdef"}),
        "NOT_FOUND",
    );
    let outbox_before = agent
        .ok("federation_outbox", json!({}))
        .as_array()
        .unwrap()
        .len();
    agent.fails(
        "federation_send",
        json!({"peer": "nobody", "message_type": "ping", "payload": {}}),
        "UNKNOWN_PEER",
    );
    let pii = agent.fails(
        "federation_send",
        json!({"peer": "beta", "message_type": "task-assignment", "payload": {"note": "ssn 123-45-6789"}}),
        "PII_BLOCKED",
    );
    assert!(!pii.contains("6789"), "{pii}");
    assert_eq!(
        agent
            .ok("federation_outbox", json!({}))
            .as_array()
            .unwrap()
            .len(),
        outbox_before,
        "a refused send queued nothing"
    );
    agent.ok("federation_outbox", json!({"failed": true, "peer": "beta"}));
    agent.fails(
        "federation_outbox_cancel",
        json!({"envelope_id": "no-such-envelope", "reason": "test"}),
        "INVALID_INPUT",
    );

    // --- Query and broadcast over the live session.
    let reply = agent.ok(
        "federation_query",
        json!({"peer": "beta", "message_type": "ping", "timeout_ms": 20000}),
    );
    assert!(reply.is_object(), "{reply}");
    let broadcast = agent.ok(
        "federation_broadcast",
        json!({"message_type": "status-broadcast", "payload": {"state": "ok"}}),
    );
    assert!(broadcast.to_string().contains("beta"), "{broadcast}");

    // --- Spend, breaker: a suspended peer's sends are refused.
    let gamma = harness::peer_manifest("gamma");
    let path = alpha.write_file("gamma.json", &gamma.to_json());
    alpha.run(&["peers", "add", path.to_str().unwrap()]).ok();
    operator.ok(
        "federation_trust",
        json!({"peer": "gamma", "level": "ATTESTED", "reason": "mcp test"}),
    );
    for i in 0..50 {
        agent.ok(
            "federation_report_spend",
            json!({"peer": "gamma", "task_id": format!("t{i}"), "tokens": 10.0, "usd": 0.01, "success": i % 4 == 0}),
        );
    }
    let breaker = agent.ok("federation_breaker_status", json!({"peer": "gamma"}));
    assert!(breaker.to_string().contains("SUSPENDED"), "{breaker}");
    agent.fails(
        "federation_send",
        json!({"peer": "gamma", "message_type": "task-assignment", "payload": {"task": "x"}}),
        "PEER_SUSPENDED",
    );
    operator.ok(
        "federation_evict",
        json!({"peer": "gamma", "reason": "mcp test"}),
    );
    agent.fails(
        "federation_send",
        json!({"peer": "gamma", "message_type": "task-assignment", "payload": {"task": "x"}}),
        "PEER_EVICTED",
    );
    operator.ok(
        "federation_reactivate",
        json!({"peer": "gamma", "reason": "mcp test"}),
    );
    let records = operator.ok(
        "federation_audit",
        json!({"types": ["breaker_evicted"], "limit": 5}),
    );
    let evicted = &records.as_array().unwrap()[0];
    assert_eq!(evicted["actor"], "mcp:operator", "{evicted}");

    // --- Reads.
    assert_eq!(agent.ok("federation_audit_verify", json!({}))["ok"], true);
    assert!(
        !agent
            .ok("federation_plugins", json!({}))
            .as_array()
            .unwrap()
            .is_empty()
    );

    // --- Capabilities not built yet: a clear code, never a fake success.
    agent.fails("federation_wg_status", json!({}), "NOT_AVAILABLE");
    agent.fails(
        "federation_consensus",
        json!({"proposal": {"x": 1}}),
        "NOT_AVAILABLE",
    );
    operator.fails(
        "federation_wg_attest",
        json!({"note": "witness"}),
        "NOT_AVAILABLE",
    );
    operator.fails(
        "federation_wg_keyrotate",
        json!({}),
        "CONFIRMATION_REQUIRED",
    );
    operator.fails(
        "federation_wg_keyrotate",
        json!({"confirm": false}),
        "CONFIRMATION_REQUIRED",
    );
    let line = operator.fails(
        "federation_wg_keyrotate",
        json!({"confirm": true}),
        "NOT_AVAILABLE",
    );
    assert!(line.contains("WireGuard"), "{line}");
    // Fetching a peer's witness chain needs it TRUSTED (beta is not).
    agent.fails(
        "federation_wg_witness_fetch",
        json!({"peer": "beta"}),
        "CAPABILITY_DENIED",
    );

    // --- Leave.
    agent.ok("federation_leave", json!({"peer": "beta"}));
    wait_until("alpha to close the session with beta", SETTLE, || {
        !session_peers(alpha).iter().any(|p| p == "beta")
    });
}

#[test]
fn inbox_push_through_subscriptions_listen_on_the_newest_protocol() {
    let (alpha, alpha_ep) = fed_node("alpha");
    let (beta, _) = fed_node("beta");
    alpha
        .run(&[
            "peers",
            "add",
            beta.manifest_file("beta.json").to_str().unwrap(),
        ])
        .ok();
    beta.run(&["join", &alpha_ep, "--fingerprint", &fingerprint(&alpha)])
        .ok();
    alpha
        .run(&["trust", "set", "beta", "attested", "--reason", "mcp test"])
        .ok();
    beta.run(&["trust", "set", "alpha", "attested", "--reason", "mcp test"])
        .ok();
    let recorder = Recorder {
        latest: true,
        ..Recorder::default()
    };
    let bridge = Bridge::spawn_as(&alpha.home, alpha.dir.path(), &[], recorder);
    let filter = rmcp::model::SubscriptionFilter::builder()
        .resource_subscription("agentfed://inbox")
        .build();
    let mut subscription = bridge
        .rt
        .block_on(async { bridge.client().peer().listen(filter).await })
        .expect("subscriptions/listen");
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec!["agentfed://inbox".to_string()])
    );
    std::thread::sleep(Duration::from_millis(300));
    beta.run(&[
        "send",
        "alpha",
        "task-assignment",
        "--payload",
        r#"{"task":"t"}"#,
        "--wait",
        "30",
    ])
    .ok();
    let notification = bridge
        .rt
        .block_on(async { tokio::time::timeout(SETTLE, subscription.next()).await })
        .expect("timed out waiting for the inbox update")
        .expect("subscription stream")
        .expect("a notification");
    match notification {
        rmcp::model::ServerNotification::ResourceUpdatedNotification(update) => {
            assert_eq!(update.params.uri, "agentfed://inbox");
        }
        other => panic!("unexpected notification {other:?}"),
    }
    drop(subscription);
    assert!(bridge.close().success());
}

#[test]
fn every_input_schema_refuses_wrong_types_missing_and_unknown_fields_changing_nothing() {
    let (alpha, _) = fed_node("alpha");
    let operator = Bridge::spawn(&alpha.home, alpha.dir.path(), &["--role", "operator"]);
    let before = alpha.audit_records().len();
    let mut checked = 0;
    for tool in operator.tools() {
        let name = tool.name.to_string();
        let schema = Value::Object((*tool.input_schema).clone());
        assert_eq!(
            schema["additionalProperties"], false,
            "{name} admits unknown fields"
        );
        let valid = valid_args(&name);
        // An unknown field.
        let mut unknown = valid.clone();
        unknown["zz_not_a_field"] = json!(1);
        let line = operator.fails(&name, unknown, "INVALID_PARAMS");
        assert!(line.contains("unknown field"), "{name}: {line}");
        // Each required field missing.
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            let mut missing = valid.clone();
            missing.as_object_mut().unwrap().remove(field);
            let line = operator.fails(&name, missing, "INVALID_PARAMS");
            assert!(
                line.contains("missing field"),
                "{name} without {field}: {line}"
            );
            checked += 1;
        }
        // A wrong type, for each typed property.
        let properties: Map<String, Value> = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (field, property) in properties {
            let property = match property.get("$ref") {
                Some(_) => continue,
                None => property,
            };
            let Some(wrong) = wrong_value(&property) else {
                continue;
            };
            let mut bad = valid.clone();
            bad[&field] = wrong;
            let line = operator.fails(&name, bad, "INVALID_PARAMS");
            assert!(line.contains("invalid type"), "{name}.{field}: {line}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} checks ran");
    // Nothing changed: no record written (status and reads write none).
    assert_eq!(
        alpha.audit_records().len(),
        before,
        "a refused call changed the audit log"
    );
    assert!(operator.close().success());
}

#[test]
fn without_a_daemon_the_bridge_runs_the_node_and_stops_it_when_stdin_closes() {
    let mut node = Node::init("solo");
    let bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    assert!(
        bridge.instructions().contains("in-process"),
        "{}",
        bridge.instructions()
    );
    let status = bridge.call("federation_status", json!({}));
    let structured = status.structured_content.expect("structured");
    assert_eq!(structured["bridge"]["daemon"], "in-process");
    assert_eq!(structured["result"]["node_id"], "solo");
    // The node serves the CLI too, and holds the home's lock.
    assert_eq!(node.run(&["status", "--json"]).json()["node_id"], "solo");
    let second = node.run(&["daemon"]);
    assert_ne!(
        second.code, 0,
        "a second daemon started beside the bridge's node"
    );
    // stdin closes: the bridge exits 0, its node stopped, lock released.
    let log_path = bridge.log.clone();
    let status = bridge.close();
    assert!(
        status.success(),
        "{status}; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(!node.socket().exists(), "control socket left behind");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("in-process node stopped"), "{log}");
    node.start(&[]);
    let stopped = node
        .audit_records()
        .iter()
        .filter(|r| r["event_type"] == "daemon_stopped")
        .count();
    assert!(stopped >= 1, "the in-process node did not audit its stop");
    node.stop();
}

#[test]
fn long_waits_report_progress_to_a_client_that_asked() {
    let node = Node::init("solo");
    let bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    let mut params = CallToolRequestParams::new("federation_inbox")
        .with_arguments(json!({"wait_ms": 2500}).as_object().unwrap().clone());
    params.meta = Some(rmcp::model::RequestMetaObject::with_progress_token(
        rmcp::model::ProgressToken(rmcp::model::NumberOrString::Number(7)),
    ));
    let result = bridge
        .rt
        .block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, bridge.client().call_tool(params)).await
        })
        .expect("timed out")
        .expect("tools/call");
    assert_eq!(result.structured_content.unwrap()["result"], json!([]));
    let progress = bridge.recorder.progress.lock().unwrap().clone();
    assert!(
        !progress.is_empty(),
        "no progress notification during a 2.5 s wait"
    );
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert!(bridge.close().success());
}

#[test]
fn a_client_gone_mid_call_stops_the_bridge_and_its_node_cleanly() {
    let mut node = Node::init("solo");
    let mut bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    bridge.ok("federation_status", json!({}));
    // A minute-long wait in flight when the client disappears (its end of
    // the pipes closes).
    let params = CallToolRequestParams::new("federation_inbox")
        .with_arguments(json!({"wait_ms": 60000}).as_object().unwrap().clone());
    let peer = bridge.client().peer().clone();
    let pending = bridge.rt.spawn(async move { peer.call_tool(params).await });
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let client = bridge.client.take().expect("client");
    let mut child = bridge.child.take().expect("child");
    let status = bridge.rt.block_on(async {
        drop(client); // closes the bridge's stdin and stdout
        pending.abort();
        tokio::time::timeout(CALL_TIMEOUT, child.wait())
            .await
            .expect("timed out waiting for the bridge to exit")
            .expect("wait")
    });
    assert!(status.success(), "{status}; log:\n{}", bridge.log());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the bridge waited out the call ({:?})",
        started.elapsed()
    );
    assert!(!node.socket().exists(), "control socket left behind");
    node.start(&[]);
    node.run(&["audit", "verify"]).ok();
    node.stop();
}

#[test]
fn a_cancelled_wait_ends_at_once() {
    let node = Node::init("solo");
    let bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    bridge.ok("federation_status", json!({}));
    let params = CallToolRequestParams::new("federation_inbox")
        .with_arguments(json!({"wait_ms": 60000}).as_object().unwrap().clone());
    let request =
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
    let started = std::time::Instant::now();
    bridge.rt.block_on(async {
        let handle = bridge
            .client()
            .peer()
            .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
            .await
            .expect("tools/call sent");
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle
            .cancel(Some("test".into()))
            .await
            .expect("cancel sent");
    });
    wait_until("the bridge to drop the cancelled wait", SETTLE, || {
        bridge.log().contains("tool call cancelled by the client")
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // The session goes on.
    assert_eq!(bridge.ok("federation_status", json!({}))["node_id"], "solo");
    assert!(bridge.close().success());
}

#[test]
fn sigterm_ends_the_session_and_stops_the_in_process_node() {
    let node = Node::init("solo");
    let mut bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    bridge.ok("federation_status", json!({}));
    assert!(node.socket().exists());
    let mut child = bridge.child.take().expect("child");
    let status = bridge.rt.block_on(async {
        let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        tokio::time::timeout(CALL_TIMEOUT, child.wait())
            .await
            .expect("timed out waiting for the bridge to exit on SIGTERM")
            .expect("wait")
    });
    assert!(status.success(), "{status}; log:\n{}", bridge.log());
    assert!(!node.socket().exists(), "control socket left behind");
    assert!(
        bridge.log().contains("in-process node stopped"),
        "{}",
        bridge.log()
    );
}

#[test]
fn killing_the_bridge_mid_call_leaves_the_node_consistent() {
    let mut node = Node::init("solo");
    let bridge = Bridge::spawn(&node.home, node.dir.path(), &[]);
    bridge.ok("federation_status", json!({}));
    // A long wait in flight, then SIGKILL.
    let params = CallToolRequestParams::new("federation_inbox")
        .with_arguments(json!({"wait_ms": 60000}).as_object().unwrap().clone());
    let peer = bridge.client().peer().clone();
    let pending = bridge.rt.spawn(async move { peer.call_tool(params).await });
    std::thread::sleep(Duration::from_millis(300));
    let rt_handle = bridge.rt.handle().clone();
    bridge.kill9();
    let _ = rt_handle;
    drop(pending);
    // The lock died with the process: a daemon starts, the audit chain
    // verifies, and the store is readable.
    node.start(&[]);
    node.run(&["audit", "verify"]).ok();
    assert_eq!(node.run(&["status", "--json"]).json()["node_id"], "solo");
    node.stop();
}

#[test]
fn no_daemon_flag_and_init_through_the_bridge() {
    // --no-daemon: nothing runs, the tools say so, the instructions too.
    let node = Node::init("idle");
    let bridge = Bridge::spawn(&node.home, node.dir.path(), &["--no-daemon"]);
    assert!(
        bridge.instructions().contains("--no-daemon"),
        "{}",
        bridge.instructions()
    );
    bridge.fails("federation_status", json!({}), "NOT_RUNNING");
    assert!(!node.socket().exists());
    assert!(bridge.close().success());

    // --http beyond loopback needs --allow-remote; refused, nothing made.
    let remote = node.run(&["mcp", "--http", "0.0.0.0:8765"]);
    remote.fails(2, &["--allow-remote"]);
    assert!(!node.home.join("mcp.token").exists());
    let missing = node.home.join("absent");
    harness::agentfed(&missing, &["mcp", "--http", "127.0.0.1:1"]).fails(2, &["init"]);
    assert!(!missing.exists());

    // A home that does not exist: federation_init creates it (the CLI's
    // defaults), then the bridge runs it.
    let dir = crate::support::private_tempdir();
    let home = dir.path().join("new-node");
    let bridge = Bridge::spawn(&home, dir.path(), &[]);
    bridge.fails("federation_status", json!({}), "NO_HOME");
    bridge.fails("federation_init", json!({}), "INVALID_PARAMS");
    bridge.fails(
        "federation_init",
        json!({"nodeId": "Not Valid"}),
        "INVALID_PARAMS",
    );
    assert!(
        !home.join("identity.key").exists(),
        "a refused init created keys"
    );
    let created = bridge.ok(
        "federation_init",
        json!({"nodeId": "fresh", "endpoint": "wss://127.0.0.1:1", "agentTypes": ["coder"]}),
    );
    assert_eq!(created["created"], true);
    assert_eq!(created["node_id"], "fresh");
    assert_eq!(created["daemon"], "in-process");
    let status = bridge.ok("federation_status", json!({}));
    assert_eq!(status["node_id"], "fresh");
    let again = bridge.ok("federation_init", json!({"nodeId": "fresh"}));
    assert_eq!(again["created"], false);
    assert!(bridge.close().success());
    assert!(!home.join("control.sock").exists());
}

#[test]
fn a_15_mib_context_share_sent_through_the_mcp_bridge_is_delivered() {
    // As the CLI test in federation.rs, but the payload travels as a JSON
    // value in one MCP tool call: stdio frame → bridge → control socket.
    let node = |name: &str| {
        let endpoint = format!("wss://127.0.0.1:{}", harness::free_port());
        let mut node = Node::init_at(name, &endpoint);
        harness::fast_retries(&node);
        harness::set_payload_plugin_deadlines(&node, 1000);
        // On two cores shared with the whole suite a 15 MiB delivery can
        // outlast the default wait; a timeout would count against beta's
        // trust and drop the share (LEVEL_LOWERED), which is not what
        // this test is about.
        let path = node.home.join("agentfed.toml");
        let config = std::fs::read_to_string(&path).expect("config");
        let patient = config.replace("request_timeout_ms = 10000", "request_timeout_ms = 120000");
        assert_ne!(patient, config, "the config names request_timeout_ms");
        std::fs::write(&path, patient).expect("config");
        node.start(&[]);
        (node, endpoint)
    };
    let (alpha, alpha_ep) = node("alpha");
    let (beta, beta_ep) = node("beta");
    crate::federation::join_pair((&alpha, "alpha", &alpha_ep), (&beta, "beta", &beta_ep));
    for (node, peer) in [(&alpha, "beta"), (&beta, "alpha")] {
        node.run(&["trust", "set", peer, "trusted", "--reason", "bulk test"])
            .ok();
    }
    let payload: Value =
        serde_json::from_str(&crate::federation::bulk_payload(15)).expect("payload");
    let agent = Bridge::spawn(&alpha.home, alpha.dir.path(), &[]);
    let sent = agent.call(
        "federation_send",
        json!({
            "peer": "beta",
            "message_type": "context-share",
            "payload": payload,
            "wait_secs": 120,
        }),
    );
    assert_ne!(sent.is_error, Some(true), "{}", text(&sent));
    let sent = sent.structured_content.clone().expect("structured")["result"].clone();
    assert_eq!(sent["outcome"]["state"], "delivered", "{}", sent["outcome"]);
    assert!(
        sent["receipt"]["frame_bytes"].as_u64().unwrap() > 14_000_000,
        "{}",
        sent["receipt"]
    );
    // A ping through the same bridge right after.
    let pong = agent.ok(
        "federation_query",
        json!({"peer": "beta", "message_type": "ping", "timeout_ms": 10000}),
    );
    assert_eq!(pong["status"], "replied", "{pong}");
    let received = crate::federation::inbox_all(&beta);
    let shared = received
        .iter()
        .find(|m| m["message_type"] == "context-share")
        .expect("the share in beta's inbox");
    assert_eq!(
        shared["payload"]["docs"].as_array().map(Vec::len),
        Some(15_000)
    );
    assert!(agent.close().success());
}
