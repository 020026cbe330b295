//! The MCP server: tools (role-filtered), resources with subscriptions,
//! cancellation and progress for long waits. One [`Bridge`] per MCP
//! session; [`Shared`] is what sessions share (the node, the role, the
//! control client).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::control::Control;
use super::node::Node;
use super::roles::{self, Role};
use super::tools::{self, ToolSpec};
use super::{McpError, ToolError, resources};

/// What every session of one bridge shares.
#[derive(Debug)]
pub struct Shared {
    /// The node home.
    pub home: std::path::PathBuf,
    /// The bridge's role.
    pub role: Role,
    /// The node behind the bridge.
    pub node: Arc<Node>,
    /// The control client.
    pub control: Control,
}

impl Shared {
    /// The shared state of a bridge in `role` over `node`.
    pub fn new(home: &std::path::Path, role: Role, node: Arc<Node>) -> Shared {
        Shared {
            home: home.to_path_buf(),
            role,
            node,
            control: Control::new(home, role.actor()),
        }
    }

    /// A control call; when no daemon answers, the node is (re)started if
    /// the bridge may, and the call made once more.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        client: Option<&str>,
    ) -> Result<Value, ToolError> {
        match self.control.call(method, params.clone(), client).await {
            Err(e) if e.code == "NOT_RUNNING" || e.code == "NO_HOME" => {
                if self.node.revive().await {
                    self.control.reset();
                    self.control.call(method, params, client).await
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }
}

/// One MCP session.
#[derive(Debug, Clone)]
pub struct Bridge {
    shared: Arc<Shared>,
    session: Arc<Session>,
}

/// Per-session state: the client's declared name, subscriptions and the
/// inbox watcher (stopped when the session ends).
#[derive(Debug, Default)]
struct Session {
    client: OnceLock<String>,
    subscribed: Mutex<HashSet<String>>,
    watcher: CancellationToken,
    watching: std::sync::atomic::AtomicBool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.cancel();
    }
}

impl Bridge {
    /// A new session over `shared`.
    pub fn new(shared: Arc<Shared>) -> Bridge {
        Bridge {
            shared,
            session: Arc::new(Session::default()),
        }
    }

    fn client_name(&self, context: &RequestContext<RoleServer>) -> Option<String> {
        if let Some(name) = self.session.client.get() {
            return Some(name.clone());
        }
        let name = context.client_info().map(|info| info.name)?;
        let _ = self.session.client.set(name.clone());
        Some(name)
    }

    async fn instructions(&self) -> String {
        let (mode, why) = self.shared.node.mode().await;
        let role = match self.shared.role {
            Role::Agent => {
                "Role: agent (operator tools such as federation_evict and federation_audit are not available)."
            }
            Role::Operator => "Role: operator (every tool is available).",
        };
        format!(
            "agentfed federation node at {home}. Node: {mode} ({why}). {role} \
             Tool errors start with a constant code (UNKNOWN_PEER, PEER_SUSPENDED, PII_BLOCKED, TRUST_TOO_LOW, NOT_AVAILABLE, …): branch on it. \
             Read received messages with federation_inbox (wait_ms to wait for one) or subscribe to the resource agentfed://inbox; remove processed ones with federation_inbox_remove.",
            home = self.shared.home.display()
        )
    }

    /// Runs `spec` with `args`.
    async fn run_tool(
        &self,
        spec: &'static ToolSpec,
        args: &Map<String, Value>,
        client: Option<&str>,
    ) -> Result<Value, ToolError> {
        let s = &self.shared;
        let name = spec.name;
        let call = |method: &'static str, params: Value| s.call(method, params, client);
        use crate::control::{
            AuditFilter, BroadcastParams, InboxParams, InboxRemoveParams, NoParams,
            OptionalPeerParams, OutboxCancelParams, PeerParams, QueryParams, ReasonParams,
            SpendParams,
        };
        use tools::{decode, params};
        match name {
            "federation_init" => {
                let a: tools::InitArgs = decode(name, args)?;
                self.init(a, client).await
            }
            "federation_join" => {
                let a: crate::federation::JoinRequest = decode(name, args)?;
                let result = call("join", params(&a)).await?;
                // As `agentfed join`: a session the peer refused is a
                // failure with the peer's code (the peer is known now).
                match result["refused_by_peer"].as_str() {
                    Some(code) if result["joined"] != json!(true) => Err(ToolError {
                        code: code.to_string(),
                        message: format!(
                            "{} refused the session: {code}. {}",
                            result["peer"].as_str().unwrap_or("the peer"),
                            result["hint"].as_str().unwrap_or_default()
                        ),
                        details: Some(result),
                    }),
                    _ => Ok(result),
                }
            }
            "federation_peers" => {
                let a: OptionalPeerParams = decode(name, args)?;
                match a.peer {
                    Some(peer) => call("peers.show", json!({"peer": peer})).await,
                    None => call("peers.list", json!({})).await,
                }
            }
            "federation_send" => {
                let a: tools::SendArgs = decode(name, args)?;
                self.send(a, client).await
            }
            "federation_query" => {
                let a: QueryParams = decode(name, args)?;
                call("query", params(&a)).await
            }
            "federation_status" => {
                let _: NoParams = decode(name, args)?;
                call("status", json!({})).await
            }
            "federation_trust" => {
                let a: tools::TrustArgs = decode(name, args)?;
                match a.level {
                    None => {
                        if a.reason.is_some() || a.unpin {
                            return Err(ToolError::new(
                                "INVALID_PARAMS",
                                "federation_trust: reason and unpin go with level (setting a level)",
                            ));
                        }
                        call("trust.show", json!({"peer": a.peer})).await
                    }
                    Some(level) => {
                        if !s.role.allows(Role::Operator) {
                            return Err(ToolError::new(
                                roles::OPERATOR_ONLY,
                                "setting a trust level is an operator action; this bridge runs in the agent role (start it with --role operator)",
                            ));
                        }
                        let (Some(peer), Some(reason)) = (a.peer, a.reason) else {
                            return Err(ToolError::new(
                                "INVALID_PARAMS",
                                "federation_trust: setting a level needs peer and reason",
                            ));
                        };
                        call(
                            "trust.set",
                            json!({"peer": peer, "level": level, "reason": reason, "unpin": a.unpin}),
                        )
                        .await
                    }
                }
            }
            "federation_audit" => {
                let a: AuditFilter = decode(name, args)?;
                call("audit.query", params(&a)).await
            }
            "federation_audit_verify" => {
                let _: NoParams = decode(name, args)?;
                call("audit.verify", json!({})).await
            }
            "federation_audit_proof" => {
                let a: crate::control::ProofParams = decode(name, args)?;
                call("audit.proof", params(&a)).await
            }
            "federation_breaker_status" => {
                let a: OptionalPeerParams = decode(name, args)?;
                call("breaker.status", params(&a)).await
            }
            "federation_evict" => {
                let a: ReasonParams = decode(name, args)?;
                call("breaker.evict", params(&a)).await
            }
            "federation_reactivate" => {
                let a: ReasonParams = decode(name, args)?;
                call("breaker.reactivate", params(&a)).await
            }
            "federation_report_spend" => {
                let a: SpendParams = decode(name, args)?;
                call("spend.report", params(&a)).await
            }
            "federation_consensus" => {
                let a: tools::ConsensusArgs = decode(name, args)?;
                let mut params = json!({"proposal": a.proposal});
                if let Some(peers) = a.peers {
                    params["peers"] = json!(peers);
                }
                if let Some(ms) = a.timeout_ms {
                    params["timeout_ms"] = json!(ms);
                }
                call("consensus.propose", params).await
            }
            "federation_wg_status" => {
                let _: NoParams = decode(name, args)?;
                call("wg.status", json!({})).await
            }
            "federation_wg_attest" => {
                let a: tools::WgAttestArgs = decode(name, args)?;
                call("wg.attest", json!({"note": a.note})).await
            }
            "federation_wg_witness_fetch" => {
                let a: tools::WgWitnessFetchArgs = decode(name, args)?;
                let mut params = json!({"peer": a.peer});
                if let Some(ms) = a.timeout_ms {
                    params["timeout_ms"] = json!(ms);
                }
                call("wg.witness.fetch", params).await
            }
            "federation_wg_keyrotate" => {
                let a: tools::WgKeyrotateArgs = decode(name, args)?;
                if !a.confirm {
                    return Err(ToolError::new(
                        "CONFIRMATION_REQUIRED",
                        "federation_wg_keyrotate replaces this node's WireGuard key (peers lose the mesh until they have the new manifest); call it again with confirm: true",
                    ));
                }
                call("wg.rotate", json!({"confirm": true})).await
            }
            "federation_inbox" => {
                let a: InboxParams = decode(name, args)?;
                call("inbox", params(&a)).await
            }
            "federation_inbox_remove" => {
                let a: InboxRemoveParams = decode(name, args)?;
                call("inbox.remove", params(&a)).await
            }
            "federation_outbox" => {
                let a: tools::OutboxArgs = decode(name, args)?;
                let method = if a.failed {
                    "outbox.failed"
                } else {
                    "outbox.list"
                };
                call(method, json!({"peer": a.peer, "limit": a.limit})).await
            }
            "federation_outbox_cancel" => {
                let a: OutboxCancelParams = decode(name, args)?;
                call("outbox.cancel", params(&a)).await
            }
            "federation_leave" => {
                let a: PeerParams = decode(name, args)?;
                call("leave", params(&a)).await
            }
            "federation_sessions" => {
                let _: NoParams = decode(name, args)?;
                call("sessions", json!({})).await
            }
            "federation_broadcast" => {
                let a: BroadcastParams = decode(name, args)?;
                call("broadcast", params(&a)).await
            }
            "federation_plugins" => {
                let _: NoParams = decode(name, args)?;
                call("plugins.list", json!({})).await
            }
            other => Err(ToolError::new(
                "INTERNAL",
                format!("tool {other} has no mapping"),
            )),
        }
    }

    /// `federation_init`: creates the home when it has no node (then
    /// starts it in-process unless `--no-daemon`), else reports it.
    async fn init(&self, a: tools::InitArgs, client: Option<&str>) -> Result<Value, ToolError> {
        let home = self.shared.home.clone();
        let exists = home.join(crate::config::CONFIG_FILE).exists()
            || home.join(crate::identity::IDENTITY_KEY_FILE).exists();
        if !exists {
            let Some(node_id) = a.node_id else {
                return Err(ToolError::new(
                    "INVALID_PARAMS",
                    format!(
                        "federation_init: no node at {} yet; nodeId is required to create one",
                        home.display()
                    ),
                ));
            };
            if a.no_listen && a.endpoint.is_some() {
                return Err(ToolError::new(
                    "INVALID_PARAMS",
                    "federation_init: endpoint and noListen exclude each other (a dial-only node has no endpoint)",
                ));
            }
            let args = crate::cli::node::InitArgs {
                node_id,
                endpoint: a
                    .endpoint
                    .unwrap_or_else(|| crate::config::DEFAULT_ENDPOINT.to_string()),
                agent_types: a.agent_types,
                mesh_subnet: crate::identity::DEFAULT_MESH_SUBNET.to_string(),
                no_listen: a.no_listen,
                force: false,
            };
            let created = tokio::task::spawn_blocking(move || {
                crate::home::private_umask();
                crate::cli::node::create(&home, args)
            })
            .await
            .map_err(|e| ToolError::new("INTERNAL", format!("init failed: {e}")))?
            .map_err(|e| {
                let code = if e.code == 2 {
                    "INVALID_PARAMS"
                } else {
                    "INIT_FAILED"
                };
                ToolError::new(code, crate::cli::error_line(&e.error))
            })?;
            self.shared.node.revive().await;
            let (daemon, _) = self.shared.node.mode().await;
            let mut out = serde_json::to_value(&created).unwrap_or(Value::Null);
            out["created"] = json!(true);
            out["daemon"] = json!(daemon);
            return Ok(out);
        }
        // It exists: report it; what was asked to differ is said, not done.
        let manifest = self.shared.call("manifest", json!({}), client).await?;
        let mut out = json!({
            "created": false,
            "home": self.shared.home,
            "manifest": manifest,
        });
        let asked =
            a.node_id.is_some() || a.endpoint.is_some() || a.no_listen || !a.agent_types.is_empty();
        if asked {
            out["note"] = json!(
                "the node exists; nothing was changed (keys are never overwritten; edit agentfed.toml or run `agentfed init --force` to change it)"
            );
        }
        Ok(out)
    }

    /// `federation_send`, waiting for the outcome when asked (the same
    /// outcome codes as `agentfed send --wait`).
    async fn send(&self, a: tools::SendArgs, client: Option<&str>) -> Result<Value, ToolError> {
        if let Some(secs) = a.wait_secs
            && !(1..=600).contains(&secs)
        {
            return Err(ToolError::new(
                "INVALID_PARAMS",
                "federation_send: wait_secs must be 1..=600",
            ));
        }
        let mut params = json!({
            "peer": a.peer,
            "message_type": a.message_type,
            "payload": a.payload,
        });
        if let Some(budget) = a.budget {
            params["budget"] = budget;
        }
        if let Some(key) = a.idempotency_key {
            params["idempotency_key"] = json!(key);
        }
        let receipt = self.shared.call("send", params, client).await?;
        let Some(secs) = a.wait_secs else {
            return Ok(receipt);
        };
        let envelope_id = receipt["envelope_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let outcome = self
                .shared
                .call(
                    "outbox.outcome",
                    json!({"peer": a.peer, "envelope_id": envelope_id}),
                    client,
                )
                .await?;
            match outcome["state"].as_str() {
                Some("delivered") if outcome["status"] != "rejected" => {
                    return Ok(json!({"receipt": receipt, "outcome": outcome}));
                }
                Some("delivered") => {
                    return Err(ToolError::new(
                        "REJECTED",
                        format!(
                            "{} received {envelope_id} and its handler rejected it",
                            a.peer
                        ),
                    ));
                }
                Some("refused") => {
                    let code = outcome["code"].as_str().unwrap_or("REFUSED").to_string();
                    return Err(ToolError::new(
                        &code,
                        format!(
                            "{} refused {envelope_id} for good; not retried (see federation_outbox with failed: true)",
                            a.peer
                        ),
                    ));
                }
                Some("unknown") => {
                    return Err(ToolError::new(
                        "UNKNOWN",
                        format!(
                            "{envelope_id} is neither queued nor recorded as delivered or refused"
                        ),
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ToolError::new(
                    "TIMEOUT",
                    format!(
                        "{envelope_id} is still queued for {} after {secs} s ({} attempts); it will be retried (federation_outbox_cancel to stop)",
                        a.peer, outcome["attempts"]
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `spec` with `args` may wait long (progress is reported).
    fn waits(spec: &ToolSpec, args: &Map<String, Value>) -> bool {
        match spec.name {
            "federation_query" | "federation_broadcast" | "federation_join" => true,
            "federation_send" => args.get("wait_secs").is_some_and(|v| !v.is_null()),
            "federation_inbox" => args
                .get("wait_ms")
                .and_then(Value::as_u64)
                .is_some_and(|ms| ms > 0),
            _ => false,
        }
    }

    /// Starts the inbox watcher of this session (once).
    fn watch_inbox(&self, peer: rmcp::Peer<RoleServer>) {
        use std::sync::atomic::Ordering;
        if self.session.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let session = Arc::downgrade(&self.session);
        let stop = self.session.watcher.clone();
        let client = self.session.client.get().cloned();
        tokio::spawn(async move {
            tokio::select! {
                _ = resources::watch_inbox(shared, peer, session_subscribed(session), client) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Whether the session (while it lives) is subscribed to the inbox.
fn session_subscribed(
    session: std::sync::Weak<Session>,
) -> impl Fn() -> Option<bool> + Send + Sync + 'static {
    move || {
        let session = session.upgrade()?;
        let subscribed = session
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(resources::INBOX_URI);
        Some(subscribed)
    }
}

/// A tool result: `{"result": …}` as structured content, and a short text
/// with the JSON beside it.
fn success(spec: &ToolSpec, value: Value, bridge: Option<Value>) -> CallToolResult {
    let summary = summarize(spec, &value);
    let mut structured = json!({"result": value});
    if let Some(bridge) = bridge {
        structured["bridge"] = bridge;
    }
    let text = format!(
        "{summary}\n{}",
        serde_json::to_string(&structured).unwrap_or_default()
    );
    let mut result = CallToolResult::structured(structured);
    result.content = vec![ContentBlock::text(text)];
    result
}

/// One line about a result.
fn summarize(spec: &ToolSpec, value: &Value) -> String {
    match value {
        Value::Array(items) => format!("{}: {} item(s)", spec.name, items.len()),
        _ if spec.name == "federation_send" => match value.get("outcome") {
            Some(outcome) => format!(
                "delivered {} ({})",
                value["receipt"]["envelope_id"], outcome["status"]
            ),
            None => format!(
                "queued envelope {} for {}",
                value["envelope_id"], value["peer"]
            ),
        },
        _ => format!("{}: ok", spec.name),
    }
}

fn failure(error: &ToolError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("agentfed", env!("CARGO_PKG_VERSION")))
    }

    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, ErrorData> {
        let _ = self.session.client.set(request.client_info.name.clone());
        context.peer.set_peer_info(request.clone());
        let instructions = self.instructions().await;
        Ok(self
            .negotiate_initialize(&request)?
            .with_instructions(instructions))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let role = self.shared.role;
        let tools = tools::TOOLS
            .iter()
            .filter(|spec| role.allows(spec.role))
            .map(tools::describe)
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(spec) = tools::find(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{}`", crate::control::clip(&request.name, 64)),
                None,
            ));
        };
        if !self.shared.role.allows(spec.role) {
            let error = ToolError::new(roles::OPERATOR_ONLY, roles::operator_only(spec.name));
            return Ok(failure(&error).into());
        }
        let args = request.arguments.unwrap_or_default();
        let client = self.client_name(&context);
        let progress = context
            .meta
            .get_progress_token()
            .filter(|_| Self::waits(spec, &args));
        let ticker = progress.map(|token| {
            let peer = context.peer.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(tools::PROGRESS_EVERY).await;
                    let secs = started.elapsed().as_secs_f64().floor();
                    let mut param = ProgressNotificationParam::new(token.clone(), secs);
                    param.message = Some(format!("waiting ({secs} s)"));
                    if peer.notify_progress(param).await.is_err() {
                        return;
                    }
                }
            })
        });
        let outcome = tokio::select! {
            outcome = self.run_tool(spec, &args, client.as_deref()) => outcome,
            _ = context.ct.cancelled() => {
                tracing::info!(tool = spec.name, "tool call cancelled by the client");
                Err(ToolError::new("CANCELLED", "the client cancelled the call"))
            }
        };
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        let result = match outcome {
            Ok(value) => {
                let bridge = if spec.name == "federation_status" {
                    let (daemon, why) = self.shared.node.mode().await;
                    Some(json!({"role": self.shared.role, "daemon": daemon, "detail": why}))
                } else {
                    None
                };
                success(spec, value, bridge)
            }
            Err(error) => failure(&error),
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(resources::list()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let client = self.client_name(&context);
        resources::read(&self.shared, &request.uri, client.as_deref())
            .await
            .map(Into::into)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        // Of the resources, only the inbox changes by itself.
        let mut accepted = rmcp::model::SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|uri| *uri == resources::INBOX_URI)
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let wants_inbox = context
            .accepted()
            .resource_subscriptions
            .as_ref()
            .is_some_and(|uris| uris.iter().any(|uri| uri == resources::INBOX_URI));
        if wants_inbox {
            let client = self.session.client.get().cloned();
            resources::listen_inbox(Arc::clone(&self.shared), &context, client).await;
        } else {
            context.cancelled().await;
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        resources::check_subscribable(&request.uri)?;
        self.session
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.uri.clone());
        if request.uri == resources::INBOX_URI {
            self.client_name(&context);
            self.watch_inbox(context.peer.clone());
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.session
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.uri);
        Ok(())
    }
}

/// Serves one session over stdin/stdout until stdin closes or the
/// process gets SIGINT/SIGTERM (which would otherwise reach only an
/// in-process node's own handlers and stop the node under the session).
pub async fn serve_stdio(shared: Arc<Shared>) -> Result<(), McpError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| McpError::Transport(format!("installing SIGTERM handler: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| McpError::Transport(format!("installing SIGINT handler: {e}")))?;
    let bridge = Bridge::new(shared);
    let service = bridge
        .serve(rmcp::transport::io::stdio_pipes())
        .await
        .map_err(|e| McpError::Transport(format!("MCP session did not start: {e}")))?;
    tokio::select! {
        ended = service.waiting() => {
            ended.map_err(|e| McpError::Transport(format!("MCP session failed: {e}")))?;
        }
        _ = sigterm.recv() => tracing::info!("SIGTERM: ending the MCP session"),
        _ = sigint.recv() => tracing::info!("SIGINT: ending the MCP session"),
    }
    Ok(())
}
