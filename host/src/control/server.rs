//! The daemon side of the control API: request parsing and dispatch onto
//! the [`Coordinator`] (synchronous, run on a blocking thread), and the
//! async socket loop with peer-credential checks and graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::audit::AuditEvent;

use super::{
    AddPeerParams, AdvanceParams, AuditFilter, DEFAULT_AUDIT_QUERY_LIMIT, ErrorBody, ExportParams,
    ExportResult, MAX_AUDIT_LIMIT, MAX_ID_BYTES, MAX_REQUEST_BYTES, NoParams, OptionalPeerParams,
    PROTOCOL_VERSION, PeerParams, ReasonParams, ReloadParams, Response, SendParams, SpendParams,
    TrustSetParams, VerifyResult, clip, codes,
};
use super::{BroadcastParams, InboxParams, InboxRemoveParams, MAX_INBOX_WAIT_MS, QueryParams};
use super::{OutboxCancelParams, OutboxListParams, OutboxOutcomeParams};
use crate::audit::{AuditError, AuditQuery, Category, EventType, ExportFormat, Order, Severity};
use crate::coordinator::{CoordError, Coordinator, PeerView, SendRequest, SpendReport};
use crate::federation::{Federation, JoinRequest};
use crate::plugin::PluginKind;

/// Longest serde error text passed back in `INVALID_PARAMS`.
const MAX_PARAMS_ERROR: usize = 300;

/// Longest a shutting-down daemon waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A handler's failure.
type ApiResult = Result<Value, ErrorBody>;

impl From<CoordError> for ErrorBody {
    fn from(e: CoordError) -> Self {
        ErrorBody::new(e.code(), e.to_string(), e.is_bad_input())
    }
}

/// Maps requests onto coordinator calls. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    coordinator: Arc<Coordinator>,
    fake_clock: bool,
    federation: Option<Arc<Federation>>,
    mesh: Option<Arc<crate::mesh::runtime::MeshRuntime>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("fake_clock", &self.fake_clock)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `coordinator`. `fake_clock` enables
    /// `clock.advance` (the daemon's hidden `--fake-clock-ms` mode).
    pub fn new(coordinator: Arc<Coordinator>, fake_clock: bool) -> Dispatcher {
        Dispatcher {
            coordinator,
            fake_clock,
            federation: None,
            mesh: None,
        }
    }

    /// Serves the `wg.*` methods with `mesh`; without it they answer
    /// `NOT_AVAILABLE`.
    pub fn with_mesh(mut self, mesh: Arc<crate::mesh::runtime::MeshRuntime>) -> Dispatcher {
        self.mesh = Some(mesh);
        self
    }

    /// The `wg.*` methods of a node whose mesh runs.
    fn call_mesh(
        &self,
        mesh: &crate::mesh::runtime::MeshRuntime,
        method: &str,
        params: Value,
    ) -> ApiResult {
        let failed = |e: &dyn std::fmt::Display| ErrorBody::new("MESH_ERROR", e.to_string(), false);
        match method {
            "wg.status" => {
                no_params(method, params)?;
                mesh.status().map_err(|e| failed(&e))
            }
            "wg.plan" => {
                no_params(method, params)?;
                let lines = mesh.plan_lines().map_err(|e| failed(&e))?;
                Ok(json!({"interface": mesh.interface(), "commands": lines}))
            }
            "wg.attest" => {
                let p: super::NoteParams = decode(method, params)?;
                crate::mesh::witness::check_note(&p.note)
                    .map_err(|e| ErrorBody::new(codes::INVALID_PARAMS, e.to_string(), true))?;
                let actor = crate::audit::local_actor();
                let entry = mesh
                    .witness()
                    .attest(&p.note, &actor)
                    .map_err(|e| failed(&e))?;
                self.coordinator
                    .audit()
                    .append(
                        AuditEvent::new(
                            EventType::WireguardMutation,
                            format!("operator attestation recorded as witness entry {}", entry.seq),
                        )
                        .with_actor(crate::audit::ACTOR_OPERATOR)
                        .with_details(json!({"change": "operator_attestation", "witness_seq": entry.seq, "note": p.note})),
                    )
                    .map_err(|e| failed(&e))?;
                to_value(entry)
            }
            "wg.rotate" => {
                let p: super::ConfirmParams = decode(method, params)?;
                if !p.confirm {
                    return Err(ErrorBody::new(
                        "CONFIRMATION_REQUIRED",
                        "wg.rotate replaces this node's WireGuard key: the mesh to each peer pauses until it has the new manifest (connected peers get it at once); send {\"confirm\": true}",
                        false,
                    ));
                }
                let rotation = mesh.rotate().map_err(|e| failed(&e))?;
                // Connected peers get the re-signed manifest now: every
                // session is opened again with it.
                let reconnected = match self.federation() {
                    Ok((federation, handle)) => {
                        let federation = Arc::clone(federation);
                        handle
                            .block_on(async move { federation.present_new_manifest().await })
                            .map_err(|e| failed(&e.message))?
                    }
                    Err(_) => 0,
                };
                let mut out = to_value(rotation)?;
                out["sessions_reopened"] = json!(reconnected);
                Ok(out)
            }
            "wg.witness.export" => {
                no_params(method, params)?;
                let text = mesh.witness().export().map_err(|e| failed(&e))?;
                Ok(json!({"export": text}))
            }
            m => Err(ErrorBody::new(
                codes::NOT_AVAILABLE,
                format!("this daemon's mesh has no `{}` yet", clip(m, 64)),
                false,
            )),
        }
    }

    /// Serves the federation methods (`join`, `leave`, `sessions`,
    /// `query`, `broadcast`) with `federation`; without it they fail with
    /// `FEDERATION_UNAVAILABLE`.
    pub fn with_federation(mut self, federation: Arc<Federation>) -> Dispatcher {
        self.federation = Some(federation);
        self
    }

    /// The federation layer and a runtime handle to wait on it from this
    /// (blocking) thread.
    fn federation(&self) -> Result<(&Arc<Federation>, tokio::runtime::Handle), ErrorBody> {
        let unavailable = || {
            ErrorBody::new(
                "FEDERATION_UNAVAILABLE",
                "the federation layer is not running in this daemon (see its log)",
                false,
            )
        };
        let federation = self.federation.as_ref().ok_or_else(unavailable)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| unavailable())?;
        Ok((federation, handle))
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Handles one request line (without its newline). Blocking: call it
    /// from a blocking thread.
    pub fn handle_line(&self, line: &[u8]) -> Response {
        self.handle_parsed(parse_request(line))
    }

    fn handle_parsed(&self, request: Parsed) -> Response {
        let (id, method, params, caller) = match request {
            Ok(request) => request,
            Err((id, error)) => return Response::err(id, error),
        };
        let started = std::time::Instant::now();
        let outcome = match &caller {
            Some(caller) => {
                crate::audit::as_local_actor(&caller.actor, caller.client.as_deref(), || {
                    self.call(&method, params)
                })
            }
            None => self.call(&method, params),
        };
        respond(id, &method, outcome, started)
    }

    /// Handles a run of pipelined `send` requests (`(id, params)` each):
    /// every envelope is checked, scanned, signed and queued first, then
    /// their commits are awaited together, so the run shares group commits
    /// and one blocking hand-off. Answers in request order.
    fn handle_send_burst(&self, sends: Vec<(Value, Value)>) -> Vec<Response> {
        let started = std::time::Instant::now();
        let (ids, params): (Vec<Value>, Vec<Value>) = sends.into_iter().unzip();
        ids.into_iter()
            .zip(self.send_many(params))
            .map(|(id, outcome)| respond(id, "send", outcome, started))
            .collect()
    }

    /// `send` for each of `params`: all queued first, then all awaited.
    fn send_many(&self, params: Vec<Value>) -> Vec<ApiResult> {
        let c = &*self.coordinator;
        let queued: Vec<_> = params
            .into_iter()
            .map(|params| {
                let p: SendParams = decode("send", params)?;
                Ok(c.queue_submit(SendRequest {
                    peer: p.peer,
                    message_type: p.message_type,
                    payload: p.payload,
                    budget: p.budget,
                    idempotency_key: p.idempotency_key,
                })?)
            })
            .collect::<Vec<Result<_, ErrorBody>>>();
        queued
            .into_iter()
            .map(|queued| {
                let (receipt, entry, ticket) = queued?;
                if let Some(original) = ticket.wait()? {
                    // A retry of a committed idempotency key: nothing new
                    // was queued.
                    let mut out = to_value(original)?;
                    out["repeated"] = json!(true);
                    return Ok(out);
                }
                if let (Some(federation), Some(entry)) = (&self.federation, entry) {
                    federation.enqueue(entry);
                }
                to_value(receipt)
            })
            .collect()
    }

    /// Runs `method` with `params`.
    pub fn call(&self, method: &str, params: Value) -> ApiResult {
        let c = &*self.coordinator;
        match method {
            "status" => {
                no_params(method, params)?;
                to_value(c.status()?)
            }
            "peers.list" => {
                no_params(method, params)?;
                to_value(c.peers()?)
            }
            "peers.show" => {
                let p: PeerParams = decode(method, params)?;
                to_value(c.peer(&p.peer)?)
            }
            "peers.add" => {
                let p: AddPeerParams = decode(method, params)?;
                let text = match p.manifest {
                    Value::String(text) => text,
                    Value::Object(_) => p.manifest.to_string(),
                    _ => {
                        return Err(invalid_params(
                            method,
                            "manifest must be a JSON object or its JSON text",
                        ));
                    }
                };
                to_value(c.add_peer(&text)?)
            }
            "peers.remove" => {
                let p: PeerParams = decode(method, params)?;
                match self.federation() {
                    Ok((f, rt)) => rt.block_on(f.forget(&p.peer)),
                    // No federation layer, so no session to close.
                    Err(_) => {
                        c.remove_peer(&p.peer)?;
                        Ok(json!({"removed": p.peer, "session_closed": null}))
                    }
                }
            }
            "trust.show" => {
                let p: OptionalPeerParams = decode(method, params)?;
                match &p.peer {
                    // One peer: also what stands between it and its next level.
                    Some(peer) => {
                        let mut view = trust_view(&c.peer(peer)?);
                        view["next"] = to_value(c.trust_next_step(peer)?)?;
                        Ok(Value::Array(vec![view]))
                    }
                    None => Ok(Value::Array(c.peers()?.iter().map(trust_view).collect())),
                }
            }
            "trust.set" => {
                let p: TrustSetParams = decode(method, params)?;
                to_value(c.set_trust(&p.peer, &p.level, &p.reason, !p.unpin)?)
            }
            "trust.unpin" => {
                let p: ReasonParams = decode(method, params)?;
                to_value(c.unpin_trust(&p.peer, &p.reason)?)
            }
            "trust.evaluate" => {
                let p: PeerParams = decode(method, params)?;
                to_value(c.evaluate_trust(&p.peer)?)
            }
            "breaker.status" => {
                let p: OptionalPeerParams = decode(method, params)?;
                to_value(c.breaker_status(p.peer.as_deref())?)
            }
            "breaker.evict" => {
                let p: ReasonParams = decode(method, params)?;
                to_value(c.evict(&p.peer, &p.reason)?)
            }
            "breaker.reactivate" => {
                let p: ReasonParams = decode(method, params)?;
                to_value(c.reactivate(&p.peer, &p.reason)?)
            }
            "spend.report" => {
                let p: SpendParams = decode(method, params)?;
                to_value(c.report_spend(SpendReport {
                    peer: p.peer,
                    task_id: p.task_id,
                    tokens: p.tokens,
                    usd: p.usd,
                    success: p.success,
                })?)
            }
            "send" => self
                .send_many(vec![params])
                .pop()
                .unwrap_or_else(|| Err(ErrorBody::new(codes::INTERNAL, "no answer", false))),
            "join" => {
                let p: JoinRequest = decode(method, params)?;
                let (f, rt) = self.federation()?;
                rt.block_on(f.join(p))
            }
            "leave" => {
                let p: PeerParams = decode(method, params)?;
                let (f, rt) = self.federation()?;
                rt.block_on(f.leave(&p.peer))
            }
            "sessions" => {
                no_params(method, params)?;
                let (f, _) = self.federation()?;
                to_value(f.sessions())
            }
            "query" => {
                let p: QueryParams = decode(method, params)?;
                let timeout = request_timeout(method, p.timeout_ms)?;
                let (f, rt) = self.federation()?;
                rt.block_on(f.query_keyed(
                    &p.peer,
                    &p.message_type,
                    p.payload,
                    timeout,
                    p.idempotency_key.as_deref(),
                ))
            }
            "broadcast" => {
                let p: BroadcastParams = decode(method, params)?;
                let timeout = request_timeout(method, p.timeout_ms)?;
                let (f, rt) = self.federation()?;
                rt.block_on(f.broadcast_keyed(
                    &p.message_type,
                    p.payload,
                    timeout,
                    p.idempotency_key.as_deref(),
                ))
            }
            "inbox" => {
                let p: InboxParams = decode(method, params)?;
                let limit = match p.limit {
                    None => 100,
                    Some(n) if (1..=10_000).contains(&n) => n,
                    Some(_) => return Err(invalid_params(method, "limit must be 1..=10000")),
                };
                // The waiting itself happens in `wait_for_inbox`, off the
                // blocking pool; here it is only checked.
                if p.wait_ms.is_some_and(|ms| ms > MAX_INBOX_WAIT_MS) {
                    return Err(invalid_params(
                        method,
                        &format!("wait_ms must be 0..={MAX_INBOX_WAIT_MS}"),
                    ));
                }
                to_value(c.inbox(p.after, limit)?)
            }
            "outbox.list" => {
                let p: OutboxListParams = decode(method, params)?;
                let limit = match p.limit {
                    None => 100,
                    Some(n) if (1..=10_000).contains(&n) => n,
                    Some(_) => return Err(invalid_params(method, "limit must be 1..=10000")),
                };
                to_value(c.outbox(p.peer.as_deref(), limit)?)
            }
            "outbox.cancel" => {
                let p: OutboxCancelParams = decode(method, params)?;
                to_value(c.cancel_outbox(&p.envelope_id, &p.reason)?)
            }
            "outbox.outcome" => {
                let p: OutboxOutcomeParams = decode(method, params)?;
                to_value(c.delivery_outcome(&p.peer, &p.envelope_id)?)
            }
            "outbox.failed" => {
                let p: OutboxListParams = decode(method, params)?;
                let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
                let query = crate::audit::AuditQuery {
                    event_types: vec![EventType::MessageRejected],
                    peer: p.peer.clone(),
                    order: Order::NewestFirst,
                    ..Default::default()
                };
                let failed: Vec<Value> = c
                    .audit()
                    .query(&query)
                    .map_err(audit_error)?
                    .into_iter()
                    .filter(|r| r.details["final"] == true)
                    .take(limit)
                    .map(|r| {
                        json!({
                            "envelope_id": r.details["envelope_id"],
                            "peer": r.peer,
                            "code": r.details["reason"],
                            "at_ms": r.ts_ms,
                            "summary": r.summary,
                        })
                    })
                    .collect();
                Ok(Value::Array(failed))
            }
            "inbox.remove" => {
                let p: InboxRemoveParams = decode(method, params)?;
                Ok(json!({"removed": c.inbox_remove_through(p.through)?}))
            }
            "audit.query" | "audit.export" | "audit.verify" | "audit.proof" | "audit.prune" => {
                audit_call(c.audit(), method, params)
            }
            "plugins.list" => {
                no_params(method, params)?;
                to_value(c.plugins())
            }
            "plugins.reload" => {
                let p: ReloadParams = decode(method, params)?;
                let kind = match p.kind.as_deref() {
                    None => None,
                    Some(name) => Some(name.parse::<PluginKind>().map_err(|_| {
                        invalid_params(method, "kind must be trust, pii, spend or handler")
                    })?),
                };
                let plugins = c.reload_plugins(kind)?;
                if p.report {
                    Ok(json!({
                        "plugins": to_value(plugins)?,
                        "not_applied": c.unapplied_settings()?,
                    }))
                } else {
                    to_value(plugins)
                }
            }
            "manifest" => {
                no_params(method, params)?;
                to_value(c.manifest()?)
            }
            "clock.advance" if self.fake_clock => {
                let p: AdvanceParams = decode(method, params)?;
                if p.ms > 10 * 365 * 86_400_000 {
                    return Err(invalid_params(method, "ms must be at most ten years"));
                }
                c.clock().advance(p.ms);
                let tick = if p.tick { Some(c.tick()?) } else { None };
                Ok(json!({"now_ms": c.clock().now_ms(), "tick": tick}))
            }
            // Known to the API, not built in this daemon yet: a clear
            // refusal (the MCP bridge maps its tools onto these names and
            // lights up when they exist).
            // What `wg stage` builds its bundle from; needs no mesh here.
            "wg.peers" => {
                no_params(method, params)?;
                let peers = self.coordinator.store().list_peers().map_err(|e| {
                    ErrorBody::new(
                        codes::INTERNAL,
                        format!("cannot read the peers: {e}"),
                        false,
                    )
                })?;
                let rows: Vec<Value> = crate::mesh::desired::mesh_fields(&peers)
                    .iter()
                    .map(crate::mesh::desired::PeerFields::to_json)
                    .collect();
                Ok(json!({"peers": rows}))
            }
            // Reading a peer's chain needs no mesh here.
            "wg.witness.fetch" => {
                let p: super::WitnessFetchParams = decode(method, params)?;
                let timeout = request_timeout(method, p.timeout_ms)?;
                let (f, rt) = self.federation()?;
                rt.block_on(f.fetch_witness(&p.peer, timeout))
            }
            m if m.starts_with("wg.") && self.mesh.is_some() => {
                let mesh = Arc::clone(self.mesh.as_ref().expect("checked"));
                self.call_mesh(&mesh, m, params)
            }
            m if m.starts_with("wg.") => Err(ErrorBody::new(
                codes::NOT_AVAILABLE,
                format!(
                    "the WireGuard mesh is not enabled on this node ([mesh] enabled = false in agentfed.toml; `{}` needs it)",
                    clip(m, 64)
                ),
                false,
            )),
            m if m.starts_with("consensus.") => Err(ErrorBody::new(
                codes::NOT_AVAILABLE,
                format!(
                    "federated consensus is not built on this node (this daemon has no `{}` yet)",
                    clip(m, 64)
                ),
                false,
            )),
            _ => Err(ErrorBody::new(
                codes::UNKNOWN_METHOD,
                format!("unknown method `{}`", clip(method, 64)),
                true,
            )),
        }
    }
}

/// The receipt the receiver signed for `envelope_id`'s delivery or final
/// refusal, as its `message_sent` / `message_rejected` record keeps it,
/// with the record's sequence number and the receiver's key.
fn delivery_proof(log: &crate::audit::AuditLog, envelope_id: &str) -> ApiResult {
    let query = AuditQuery {
        event_types: vec![EventType::MessageSent, EventType::MessageRejected],
        order: Order::NewestFirst,
        ..AuditQuery::default()
    };
    let records = log.query(&query).map_err(audit_error)?;
    let mut unsigned = None;
    for record in &records {
        if record.details["envelope_id"] != envelope_id {
            continue;
        }
        let receipt = &record.details["receipt"];
        if receipt.is_object() {
            return Ok(json!({"seq": record.seq, "receipt": receipt}));
        }
        let ended = record.details["state"] == "delivered" || record.details["final"] == true;
        if ended && unsigned.is_none() {
            unsigned = Some(record.seq);
        }
    }
    let id = clip(envelope_id, 80);
    Err(match unsigned {
        Some(seq) => ErrorBody::new(
            "NO_RECEIPT",
            format!(
                "{id} ended (audit record {seq}) without a signed receipt: the receiver speaks protocol version 1, which does not sign them"
            ),
            false,
        ),
        None => ErrorBody::new(
            "NOT_FOUND",
            format!(
                "no delivery or final refusal of {id} is recorded (is it still in the outbox? agentfed outbox)"
            ),
            true,
        ),
    })
}

/// The audit requests (`audit.query`, `audit.export`, `audit.verify`,
/// `audit.proof`, `audit.prune`)
/// over `log`: served by the daemon, and by the CLI from the store
/// directly when no daemon runs ([`crate::cli`]'s offline reading).
pub fn audit_call(log: &crate::audit::AuditLog, method: &str, params: Value) -> ApiResult {
    match method {
        "audit.query" => {
            let p: AuditFilter = decode(method, params)?;
            let query = audit_query(
                method,
                &p,
                Order::NewestFirst,
                Some(DEFAULT_AUDIT_QUERY_LIMIT),
            )?;
            to_value(log.query(&query).map_err(audit_error)?)
        }
        "audit.export" => {
            let p: ExportParams = decode(method, params)?;
            let format = match p.format.to_ascii_lowercase().as_str() {
                "json" => ExportFormat::Json,
                "ndjson" => ExportFormat::Ndjson,
                "csv" => ExportFormat::Csv,
                _ => {
                    return Err(invalid_params(method, "format must be json, ndjson or csv"));
                }
            };
            let query = audit_query(method, &p.filter, Order::OldestFirst, None)?;
            let records = log.query(&query).map_err(audit_error)?;
            let mut out = Vec::new();
            crate::audit::export(&records, format, &mut out).map_err(audit_error)?;
            let content = String::from_utf8(out)
                .map_err(|_| ErrorBody::new(codes::INTERNAL, "export is not UTF-8", false))?;
            to_value(ExportResult {
                format: p.format.to_ascii_lowercase(),
                records: records.len(),
                content,
            })
        }
        "audit.verify" => {
            no_params(method, params)?;
            let records = log.verify().map_err(audit_error)?;
            to_value(VerifyResult { ok: true, records })
        }
        "audit.proof" => {
            let p: super::ProofParams = decode(method, params)?;
            delivery_proof(log, &p.envelope_id)
        }
        "audit.prune" => {
            let p: super::PruneParams = decode(method, params)?;
            let report = log
                .prune(p.before_ms, p.through_seq, crate::audit::ACTOR_OPERATOR)
                .map_err(audit_error)?;
            to_value(report)
        }
        _ => Err(ErrorBody::new(
            codes::UNKNOWN_METHOD,
            format!("unknown method `{}`", clip(method, 64)),
            true,
        )),
    }
}

/// A parsed request line: `(id, method, params, caller)`, or the id to
/// answer with and the error.
type Parsed = Result<(Value, String, Value, Option<Caller>), (Value, ErrorBody)>;

/// Who a request acts for, when it says (the envelope's `actor` and
/// `client`): operator events it causes are audited under that actor.
#[derive(Debug, Clone, PartialEq)]
struct Caller {
    actor: String,
    client: Option<String>,
}

/// The `actor` values a request may declare.
const CALLER_ACTORS: &[&str] = &[
    crate::audit::ACTOR_MCP_AGENT,
    crate::audit::ACTOR_MCP_OPERATOR,
];

/// The response to a handled request, logged.
fn respond(id: Value, method: &str, outcome: ApiResult, started: std::time::Instant) -> Response {
    let elapsed_us = started.elapsed().as_micros() as u64;
    match outcome {
        Ok(result) => {
            tracing::debug!(method = %method, elapsed_us, "control request ok");
            Response::ok(id, result)
        }
        Err(error) => {
            tracing::info!(method = %method, code = %error.code, elapsed_us, "control request failed: {}", error.message);
            Response::err(id, error)
        }
    }
}

/// Parses the request envelope; on failure, the id to answer with (if one
/// could be read) and the error.
fn parse_request(line: &[u8]) -> Parsed {
    let invalid = |id: Value, msg: String| (id, ErrorBody::new(codes::INVALID_REQUEST, msg, true));
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        invalid(
            Value::Null,
            format!(
                "request is not valid JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(invalid(Value::Null, "request must be a JSON object".into()));
    };
    let id = match map.remove("id") {
        Some(id @ Value::Number(_)) => id,
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES => Value::String(s),
        Some(_) => {
            return Err(invalid(
                Value::Null,
                format!("id must be a number or a string of at most {MAX_ID_BYTES} bytes"),
            ));
        }
        None => return Err(invalid(Value::Null, "request has no id".into())),
    };
    match map.remove("v") {
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            let shown = match v.as_u64() {
                Some(n) => n.to_string(),
                None => "that".to_string(),
            };
            return Err((
                id,
                ErrorBody::new(
                    codes::UNSUPPORTED_VERSION,
                    format!(
                        "protocol version {shown} is not supported; this daemon speaks version {PROTOCOL_VERSION}"
                    ),
                    true,
                )
                .with_details(json!({"supported": [PROTOCOL_VERSION]})),
            ));
        }
        None => return Err(invalid(id, "request has no v (protocol version)".into())),
    }
    let method = match map.remove("method") {
        Some(Value::String(method)) => method,
        _ => return Err(invalid(id, "request has no method string".into())),
    };
    let params = map.remove("params").unwrap_or(Value::Null);
    let caller = match (map.remove("actor"), map.remove("client")) {
        (None, None) => None,
        (Some(Value::String(actor)), client) if CALLER_ACTORS.contains(&actor.as_str()) => {
            let client = match client {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) => Some(clip(&name, MAX_ID_BYTES)),
                Some(_) => return Err(invalid(id, "client must be a string".into())),
            };
            Some(Caller { actor, client })
        }
        (None, Some(_)) => return Err(invalid(id, "client needs an actor".into())),
        (Some(_), _) => {
            return Err(invalid(
                id,
                format!("actor must be one of {}", CALLER_ACTORS.join(", ")),
            ));
        }
    };
    if let Some(key) = map.keys().next() {
        return Err(invalid(
            id,
            format!("unknown request field `{}`", clip(key, 32)),
        ));
    }
    Ok((id, method, params, caller))
}

fn decode<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, ErrorBody> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        Value::Object(map) => Value::Object(map),
        _ => return Err(invalid_params(method, "params must be a JSON object")),
    };
    serde_json::from_value(params).map_err(|e| invalid_params(method, &e.to_string()))
}

/// A request timeout from `timeout_ms` (default 10 s, 1 ms..=600 s).
fn request_timeout(method: &str, timeout_ms: Option<u64>) -> Result<Duration, ErrorBody> {
    match timeout_ms {
        None => Ok(Duration::from_secs(10)),
        Some(ms) if (1..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(invalid_params(method, "timeout_ms must be 1..=600000")),
    }
}

fn no_params(method: &str, params: Value) -> Result<(), ErrorBody> {
    decode::<NoParams>(method, params).map(|_| ())
}

fn invalid_params(method: &str, why: &str) -> ErrorBody {
    ErrorBody::new(
        codes::INVALID_PARAMS,
        format!("{method}: {}", clip(why, MAX_PARAMS_ERROR)),
        true,
    )
}

fn to_value<T: Serialize>(value: T) -> ApiResult {
    serde_json::to_value(value).map_err(|e| {
        ErrorBody::new(
            codes::INTERNAL,
            format!("result does not serialize: {e}"),
            false,
        )
    })
}

fn audit_error(e: AuditError) -> ErrorBody {
    match e {
        AuditError::Tampered(brk) => ErrorBody::new(
            codes::AUDIT_TAMPERED,
            format!("audit chain broken: {brk}"),
            false,
        )
        .with_details(json!({"seq": brk.seq})),
        other => ErrorBody::new("AUDIT", other.to_string(), false),
    }
}

/// The trust-related fields of a peer (`trust.show`).
fn trust_view(p: &PeerView) -> Value {
    json!({
        "node_id": p.node_id,
        "trust_level": p.trust_level,
        "level_since_ms": p.level_since_ms,
        "score": p.score,
        "score_components": p.score_components,
        "interactions": p.metrics.interactions,
        "successes": p.metrics.successes,
        "failures": p.metrics.failures,
        "threats": p.metrics.threats,
        "signature_failures": p.metrics.signature_failures,
        "observed": p.metrics.observed,
        "over_cap": p.metrics.earned.over_cap,
        "operator": p.operator,
        "capabilities": p.capabilities,
        "privileged_recommended": p.privileged_recommended,
    })
}

/// Builds an [`AuditQuery`] from filter params, with friendly errors for
/// unknown names.
fn audit_query(
    method: &str,
    f: &AuditFilter,
    default_order: Order,
    default_limit: Option<usize>,
) -> Result<AuditQuery, ErrorBody> {
    let event_types = f
        .types
        .iter()
        .map(|t| {
            parse_name::<EventType>(t).ok_or_else(|| {
                invalid_params(
                    method,
                    &format!(
                        "unknown event type `{}` (expected one of {})",
                        clip(t, 40),
                        EventType::ALL
                            .iter()
                            .map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let categories = f
        .categories
        .iter()
        .map(|c| {
            parse_name::<Category>(c).ok_or_else(|| {
                invalid_params(
                    method,
                    &format!(
                        "unknown category `{}` (expected identity, trust, messaging, pii, breaker, spend, consensus, plugin, wireguard, operator or system)",
                        clip(c, 40)
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let min_severity = match &f.severity {
        None => None,
        Some(s) => Some(parse_name::<Severity>(s).ok_or_else(|| {
            invalid_params(
                method,
                "severity must be debug, info, warning, error or critical",
            )
        })?),
    };
    let order = match f.order.as_deref() {
        None => default_order,
        Some(o) if o.eq_ignore_ascii_case("newest") => Order::NewestFirst,
        Some(o) if o.eq_ignore_ascii_case("oldest") => Order::OldestFirst,
        Some(_) => return Err(invalid_params(method, "order must be newest or oldest")),
    };
    if let (Some(since), Some(until)) = (f.since_ms, f.until_ms)
        && since > until
    {
        return Err(invalid_params(method, "since_ms is after until_ms"));
    }
    let limit = match f.limit {
        Some(0) => return Err(invalid_params(method, "limit must be at least 1")),
        Some(n) if n > MAX_AUDIT_LIMIT => {
            return Err(invalid_params(
                method,
                &format!("limit must be at most {MAX_AUDIT_LIMIT}"),
            ));
        }
        Some(n) => Some(n),
        None => default_limit,
    };
    Ok(AuditQuery {
        event_types,
        min_severity,
        categories,
        peer: f.peer.clone(),
        from_ms: f.since_ms,
        to_ms: f.until_ms,
        limit,
        order,
    })
}

/// Parses a snake_case enum name (any letter case) through serde.
fn parse_name<T: DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.trim().to_ascii_lowercase())).ok()
}

// ---------------------------------------------------------------------------
// The socket loop
// ---------------------------------------------------------------------------

/// Creates the control socket at `path` with mode 0600 (a stale file must
/// already have been removed by the caller, who holds the home lock).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use rustix::fs::Mode;
    use std::os::unix::fs::PermissionsExt;
    // The umask makes the socket 0600 from its creation; there is no window
    // in which another user could connect. Restored right after.
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `listener` until `shutdown` turns true, then stops accepting,
/// lets every in-flight request finish (at most [`DRAIN_TIMEOUT`]) and
/// returns. Only processes running as `allowed_uid` are served.
pub async fn serve(
    listener: UnixListener,
    dispatcher: Dispatcher,
    allowed_uid: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let for_connections = shutdown.clone();
    let running = Arc::new(tokio::sync::Semaphore::new(CONTROL_CONCURRENCY));
    let large = Arc::new(tokio::sync::Semaphore::new(super::LARGE_REQUEST_SLOTS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let dispatcher = dispatcher.clone();
                    let shutdown = for_connections.clone();
                    let running = running.clone();
                    let budget = LineBudget::new(large.clone());
                    connections.spawn(async move {
                        connection(stream, dispatcher, allowed_uid, shutdown, running, budget).await;
                    });
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "waiting for in-flight control requests");
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight control requests did not finish in time; abandoning them");
        connections.abort_all();
    }
}

async fn connection(
    stream: UnixStream,
    dispatcher: Dispatcher,
    allowed_uid: u32,
    mut shutdown: watch::Receiver<bool>,
    running: Arc<tokio::sync::Semaphore>,
    mut budget: LineBudget,
) {
    let (read, mut write) = stream.into_split();
    let peer = match write.as_ref().peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!("cannot read control client credentials, refusing: {e}");
            return;
        }
    };
    if peer.uid() != allowed_uid {
        tracing::warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "refused control connection from another user"
        );
        let error = ErrorBody::new(
            codes::PERMISSION_DENIED,
            format!(
                "this daemon only serves its own user (uid {allowed_uid}); connection from uid {} refused",
                peer.uid()
            ),
            false,
        );
        let _ = write
            .write_all(&Response::err(Value::Null, error).to_line())
            .await;
        let _ = write.shutdown().await;
        return;
    }
    // Requests run concurrently (up to PIPELINE_DEPTH per connection);
    // the writer answers them strictly in request order.
    let (pending_tx, mut pending_rx) = tokio::sync::mpsc::channel::<Pending>(PIPELINE_DEPTH);
    let writer = tokio::spawn(async move {
        let failed = |e: tokio::task::JoinError| {
            tracing::error!("control handler failed: {e}");
            Response::err(
                Value::Null,
                ErrorBody::new(codes::INTERNAL, "the request handler failed", false),
            )
        };
        while let Some(pending) = pending_rx.recv().await {
            let responses = match pending {
                Pending::Ready(response) => vec![response],
                Pending::Running(task) => vec![task.await.unwrap_or_else(failed)],
                Pending::Burst(count, task) => task.await.unwrap_or_else(|e| {
                    let response = failed(e);
                    vec![response; count]
                }),
            };
            let mut out = Vec::with_capacity(responses.len() * 128);
            for response in &responses {
                out.extend_from_slice(&response.to_line());
            }
            if let Err(e) = write.write_all(&out).await {
                tracing::debug!("control connection write failed: {e}");
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    // Large enough to hold a few dozen pipelined 1 KB requests, which are
    // then gathered into one burst.
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut line = Vec::with_capacity(1024);
        // A large line's slot is held until the next line is read.
        budget.release();
        let read = tokio::select! {
            read = read_line(&mut reader, &mut line, &mut budget) => read,
            _ = stopped(&mut shutdown) => break,
        };
        let pending = match read {
            Ok(LineRead::Eof) => break,
            Ok(LineRead::TooLarge) => {
                let error = ErrorBody::new(
                    codes::REQUEST_TOO_LARGE,
                    format!(
                        "request line exceeds {} bytes",
                        super::MAX_LARGE_REQUEST_BYTES
                    ),
                    true,
                );
                let _ = pending_tx
                    .send(Pending::Ready(Response::err(Value::Null, error)))
                    .await;
                break;
            }
            Ok(LineRead::Line) => {
                // A slot among all connections' running handlers first: they
                // run on tokio's blocking pool, which federation calls also
                // need (see `CONTROL_CONCURRENCY`).
                let Ok(slot) = running.clone().acquire_owned().await else {
                    break;
                };
                let parsed = parse_request(trim_newline(&line));
                let worker = dispatcher.clone();
                if let Some(wait) = inbox_wait(&parsed) {
                    // Waits without a handler slot; takes one per read.
                    drop(slot);
                    let waiting =
                        wait_for_inbox(worker, parsed, wait, running.clone(), shutdown.clone());
                    if pending_tx
                        .send(Pending::Running(tokio::spawn(waiting)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                match into_send(parsed) {
                    Ok(first) => {
                        // `send` requests already buffered behind this one
                        // join it (see `Dispatcher::handle_send_burst`).
                        let mut sends = vec![first];
                        while sends.len() < SEND_BURST {
                            let Some(end) = memchr_newline(reader.buffer()) else {
                                break;
                            };
                            let next = parse_request(trim_newline(&reader.buffer()[..=end]));
                            let Ok(send) = into_send(next) else {
                                break; // left in the buffer for the next round
                            };
                            sends.push(send);
                            std::pin::Pin::new(&mut reader).consume(end + 1);
                        }
                        let count = sends.len();
                        Pending::Burst(
                            count,
                            tokio::task::spawn_blocking(move || {
                                let _slot = slot;
                                worker.handle_send_burst(sends)
                            }),
                        )
                    }
                    Err(parsed) => Pending::Running(tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        worker.handle_parsed(*parsed)
                    })),
                }
            }
            Err(e) => {
                tracing::debug!("control connection read failed: {e}");
                break;
            }
        };
        if pending_tx.send(pending).await.is_err() {
            break; // the writer is gone (client stopped reading)
        }
    }
    drop(pending_tx);
    let _ = writer.await;
}

/// How long an `inbox` request asks to wait for a message (`wait_ms`),
/// when it is a well-formed long-poll; anything else is answered by the
/// ordinary path (which also reports a bad `wait_ms`).
fn inbox_wait(parsed: &Parsed) -> Option<Duration> {
    let Ok((_, method, params, _)) = parsed else {
        return None;
    };
    if method != "inbox" {
        return None;
    }
    let ms = params.get("wait_ms")?.as_u64()?;
    (1..=MAX_INBOX_WAIT_MS)
        .contains(&ms)
        .then(|| Duration::from_millis(ms))
}

/// Answers an `inbox` long-poll: at once when messages are there, else
/// once one is committed ([`crate::store::Store::inbox_tip`]), the wait is
/// over or the daemon stops. While it waits it holds neither a blocking
/// thread nor a handler slot, so followers cannot starve other requests.
async fn wait_for_inbox(
    dispatcher: Dispatcher,
    request: Parsed,
    wait: Duration,
    running: Arc<tokio::sync::Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) -> Response {
    let deadline = tokio::time::Instant::now() + wait;
    let id = request
        .as_ref()
        .map_or(Value::Null, |(id, _, _, _)| id.clone());
    // Subscribed before the first read: a message committed between the
    // read and the wait still wakes it.
    let mut tip = dispatcher.coordinator().store().inbox_tip();
    loop {
        tip.borrow_and_update();
        let Ok(slot) = running.clone().acquire_owned().await else {
            let error = ErrorBody::new(codes::INTERNAL, "the daemon is stopping", true);
            return Response::err(id, error);
        };
        let (worker, read) = (dispatcher.clone(), request.clone());
        let response = match tokio::task::spawn_blocking(move || {
            let _slot = slot;
            worker.handle_parsed(read)
        })
        .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::error!("control handler failed: {e}");
                let error = ErrorBody::new(codes::INTERNAL, "the request handler failed", false);
                return Response::err(id, error);
            }
        };
        let empty = response.ok
            && response
                .result
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
        if !empty || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            return response;
        }
        tokio::select! {
            changed = tip.changed() => if changed.is_err() {
                return response;
            },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stopped(&mut shutdown) => return response,
        }
    }
}

/// Most requests of one connection in progress at once (pipelining).
pub const PIPELINE_DEPTH: usize = 64;

/// Most control handlers running at once over all connections. Handlers
/// run on tokio's blocking pool (512 threads), and some (`join`, `query`,
/// `broadcast`) wait for federation work that needs a blocking thread of
/// its own: capping handlers well below the pool keeps threads free for
/// that work however many requests clients pipeline.
pub const CONTROL_CONCURRENCY: usize = 128;

/// Most pipelined `send` requests handled as one burst.
const SEND_BURST: usize = 32;

/// A response (or, for a burst, responses) in the making, in request order.
enum Pending {
    Ready(Response),
    Running(tokio::task::JoinHandle<Response>),
    /// A run of `send` requests: how many, and their answers.
    Burst(usize, tokio::task::JoinHandle<Vec<Response>>),
}

/// `(id, params)` of a well-formed `send` request; anything else back.
fn into_send(parsed: Parsed) -> Result<(Value, Value), Box<Parsed>> {
    match parsed {
        Ok((id, method, params, None)) if method == "send" => Ok((id, params)),
        other => Err(Box::new(other)),
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

enum LineRead {
    Line,
    Eof,
    TooLarge,
}

/// The daemon-wide allowance for request lines over [`MAX_REQUEST_BYTES`]
/// ([`super::LARGE_REQUEST_SLOTS`] at once), as one connection holds it.
pub(crate) struct LineBudget {
    large: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LineBudget {
    fn new(large: Arc<tokio::sync::Semaphore>) -> LineBudget {
        LineBudget { large, held: None }
    }

    /// Gives the slot back (the line it was for has been handed on).
    fn release(&mut self) {
        self.held = None;
    }

    /// Waits for a slot unless one is held; `false` if there will be none.
    async fn acquire(&mut self) -> bool {
        if self.held.is_none() {
            self.held = self.large.clone().acquire_owned().await.ok();
        }
        self.held.is_some()
    }
}

/// Reads up to and including a newline into `buf`, refusing lines longer
/// than [`super::MAX_LARGE_REQUEST_BYTES`]; a line passing
/// [`MAX_REQUEST_BYTES`] waits for a large-line slot first. A final line
/// without a newline counts.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    budget: &mut LineBudget,
) -> std::io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.iter().all(u8::is_ascii_whitespace) {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match memchr_newline(available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > super::MAX_LARGE_REQUEST_BYTES {
            return Ok(LineRead::TooLarge);
        }
        if buf.len() + take > MAX_REQUEST_BYTES && !budget.acquire().await {
            return Ok(LineRead::TooLarge);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            if buf.iter().all(u8::is_ascii_whitespace) {
                // Blank line: ignore it and read the next one.
                buf.clear();
                continue;
            }
            return Ok(LineRead::Line);
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_are_specific() {
        let err = |line: &str| parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(err("{not json").1.code, codes::INVALID_REQUEST);
        assert_eq!(err("[1]").1.code, codes::INVALID_REQUEST);
        assert_eq!(
            err(r#"{"v":1,"method":"status"}"#).1.code,
            codes::INVALID_REQUEST
        );
        let (id, e) = err(r#"{"v":2,"id":5,"method":"status"}"#);
        assert_eq!(
            (id, e.code.as_str()),
            (json!(5), codes::UNSUPPORTED_VERSION)
        );
        let (id, e) = err(r#"{"v":1,"id":"x","method":"status","extra":1}"#);
        assert_eq!((id, e.code.as_str()), (json!("x"), codes::INVALID_REQUEST));
        let long_id = format!(r#"{{"v":1,"id":"{}","method":"status"}}"#, "a".repeat(65));
        assert_eq!(err(&long_id).0, Value::Null);
        let ok = parse_request(br#"{"v":1,"id":3,"method":"peers.list"}"#).unwrap();
        assert_eq!(ok, (json!(3), "peers.list".to_string(), Value::Null, None));
        let (_, _, _, caller) = parse_request(
            br#"{"v":1,"id":4,"method":"status","actor":"mcp:agent","client":"claude-code"}"#,
        )
        .unwrap();
        assert_eq!(
            caller,
            Some(Caller {
                actor: "mcp:agent".into(),
                client: Some("claude-code".into())
            })
        );
        assert_eq!(
            err(r#"{"v":1,"id":4,"method":"status","actor":"root"}"#)
                .1
                .code,
            codes::INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"v":1,"id":4,"method":"status","client":"x"}"#)
                .1
                .code,
            codes::INVALID_REQUEST
        );
    }

    #[test]
    fn params_errors_do_not_echo_huge_input() {
        let huge = "x".repeat(100_000);
        let e = decode::<PeerParams>("peers.show", json!({"peer": 1, "junk": huge})).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(e.message.len() < 400, "{}", e.message.len());
        let e = decode::<NoParams>("status", json!([1])).unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{}", e.message);
        assert!(decode::<NoParams>("status", Value::Null).is_ok());
    }

    #[test]
    fn audit_filters_parse_names_in_any_case() {
        let f = AuditFilter {
            types: vec!["SPEND_REPORTED".into()],
            severity: Some("Warning".into()),
            categories: vec!["breaker".into()],
            order: Some("oldest".into()),
            ..AuditFilter::default()
        };
        let q = audit_query("audit.query", &f, Order::NewestFirst, Some(100)).unwrap();
        assert_eq!(q.event_types, vec![EventType::SpendReported]);
        assert_eq!(q.min_severity, Some(Severity::Warning));
        assert_eq!(q.categories, vec![Category::Breaker]);
        assert_eq!(q.order, Order::OldestFirst);
        assert_eq!(q.limit, Some(100));
        let bad = AuditFilter {
            types: vec!["nope".into()],
            ..AuditFilter::default()
        };
        let e = audit_query("audit.query", &bad, Order::NewestFirst, None).unwrap_err();
        assert!(
            e.message.contains("unknown event type `nope`"),
            "{}",
            e.message
        );
        let bad = AuditFilter {
            limit: Some(0),
            ..AuditFilter::default()
        };
        assert!(audit_query("audit.query", &bad, Order::NewestFirst, None).is_err());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let mut budget = LineBudget::new(slots.clone());
        let mut input: &[u8] = b"\n\n{\"a\":1}\nrest";
        let mut reader = BufReader::new(&mut input);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf, &mut budget).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"{\"a\":1}\n");
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf, &mut budget).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"rest");
        buf.clear();
        assert!(matches!(
            read_line(&mut reader, &mut buf, &mut budget).await.unwrap(),
            LineRead::Eof
        ));
        assert_eq!(slots.available_permits(), 1, "small lines take no slot");
        // Over 1 MiB: read with a slot, held until released.
        let mut large = vec![b'x'; MAX_REQUEST_BYTES + 10];
        large.push(b'\n');
        let mut slice: &[u8] = &large;
        let mut reader = BufReader::new(&mut slice);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf, &mut budget).await.unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf.len(), large.len());
        assert_eq!(slots.available_permits(), 0);
        // Another connection waits for the slot.
        let mut other = LineBudget::new(slots.clone());
        let waiting = tokio::time::timeout(Duration::from_millis(50), other.acquire()).await;
        assert!(waiting.is_err(), "the slot is taken");
        budget.release();
        assert!(other.acquire().await);
        other.release();
        // Over the large limit: refused.
        let big = vec![b'x'; crate::control::MAX_LARGE_REQUEST_BYTES + 10];
        let mut slice: &[u8] = &big;
        let mut reader = BufReader::new(&mut slice);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line(&mut reader, &mut buf, &mut budget).await.unwrap(),
            LineRead::TooLarge
        ));
    }
}
