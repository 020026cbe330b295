//! Resources: `agentfed://inbox` (subscribable: a subscribed session gets
//! `notifications/resources/updated` whenever a message is committed to
//! the inbox), `agentfed://status` and `agentfed://manifest`.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    ReadResourceResult, Resource, ResourceContents, ResourceUpdatedNotificationParam,
};
use rmcp::{ErrorData, Peer, RoleServer};
use serde_json::{Value, json};

use super::handler::Shared;

/// The inbox resource.
pub const INBOX_URI: &str = "agentfed://inbox";
/// The status resource.
pub const STATUS_URI: &str = "agentfed://status";
/// The manifest resource.
pub const MANIFEST_URI: &str = "agentfed://manifest";

/// How long one inbox long-poll of the watcher waits.
const WATCH_WAIT_MS: u64 = 30_000;

/// The resources.
pub fn list() -> Vec<Resource> {
    vec![
        Resource::new(INBOX_URI, "inbox")
            .with_description("Messages received and accepted by this node (the oldest 100 not yet removed). Subscribe to be told when one arrives.")
            .with_mime_type("application/json"),
        Resource::new(STATUS_URI, "status")
            .with_description("This node at a glance (as federation_status).")
            .with_mime_type("application/json"),
        Resource::new(MANIFEST_URI, "manifest")
            .with_description("This node's signed manifest: what peers add to know it.")
            .with_mime_type("application/json"),
    ]
}

/// The control request behind `uri`.
fn method_of(uri: &str) -> Option<(&'static str, Value)> {
    match uri {
        INBOX_URI => Some(("inbox", json!({"after": 0, "limit": 100}))),
        STATUS_URI => Some(("status", json!({}))),
        MANIFEST_URI => Some(("manifest", json!({}))),
        _ => None,
    }
}

fn unknown(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!(
            "no resource `{}` (agentfed://inbox, agentfed://status, agentfed://manifest)",
            crate::control::clip(uri, 100)
        ),
        None,
    )
}

/// Reads `uri`.
pub async fn read(
    shared: &Shared,
    uri: &str,
    client: Option<&str>,
) -> Result<ReadResourceResult, ErrorData> {
    let (method, params) = method_of(uri).ok_or_else(|| unknown(uri))?;
    let value = shared
        .call(method, params, client)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let contents = ResourceContents::TextResourceContents {
        uri: uri.to_string(),
        mime_type: Some("application/json".into()),
        text,
        meta: None,
    };
    Ok(ReadResourceResult::new(vec![contents]))
}

/// Refuses subscriptions to anything but a known resource.
pub fn check_subscribable(uri: &str) -> Result<(), ErrorData> {
    method_of(uri).map(|_| ()).ok_or_else(|| unknown(uri))
}

/// The highest inbox sequence number now (0 when empty).
async fn inbox_tip(shared: &Shared, client: Option<&str>) -> Option<u64> {
    let mut after = 0;
    loop {
        let page = shared
            .call("inbox", json!({"after": after, "limit": 10_000}), client)
            .await
            .ok()?;
        let items = page.as_array()?;
        match items.last().and_then(|m| m["seq"].as_u64()) {
            Some(seq) => after = seq,
            None => return Some(after),
        }
        if items.len() < 10_000 {
            return Some(after);
        }
    }
}

/// Long-polls the daemon's inbox and tells `peer` about every new
/// message while `subscribed()` says the session wants it; returns when
/// the session is gone or the client stopped listening.
pub async fn watch_inbox(
    shared: Arc<Shared>,
    peer: Peer<RoleServer>,
    subscribed: impl Fn() -> Option<bool> + Send + Sync + 'static,
    client: Option<String>,
) {
    watch(&shared, subscribed, client.as_deref(), Notifier::Peer(peer)).await;
}

/// The same for a `subscriptions/listen` stream (protocol 2026-07-28):
/// updates go through its sink until the client cancels it.
pub async fn listen_inbox(
    shared: Arc<Shared>,
    context: &rmcp::service::SubscriptionContext,
    client: Option<String>,
) {
    let notify = Notifier::Sink(context.sink());
    tokio::select! {
        _ = watch(&shared, || Some(true), client.as_deref(), notify) => {}
        _ = context.cancelled() => {}
    }
}

/// Where inbox updates go.
enum Notifier<'a> {
    /// A legacy `resources/subscribe` session.
    Peer(Peer<RoleServer>),
    /// A `subscriptions/listen` stream.
    Sink(&'a rmcp::service::SubscriptionSink),
}

impl Notifier<'_> {
    /// Sends `notifications/resources/updated` for the inbox; whether the
    /// client is still there.
    async fn notify(&self) -> bool {
        match self {
            Notifier::Peer(peer) => peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(INBOX_URI))
                .await
                .is_ok(),
            Notifier::Sink(sink) => sink.notify_resource_updated(INBOX_URI).await.is_ok(),
        }
    }
}

/// Long-polls the inbox; calls `notify` after each new message while
/// `subscribed()` says so; returns when the session is gone (`None`) or
/// `notify` fails.
async fn watch(
    shared: &Shared,
    subscribed: impl Fn() -> Option<bool>,
    client: Option<&str>,
    notify: Notifier<'_>,
) {
    let mut tip = loop {
        if let Some(tip) = inbox_tip(shared, client).await {
            break tip;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    loop {
        let Some(wanted) = subscribed() else { return };
        let polled = shared
            .call(
                "inbox",
                json!({"after": tip, "limit": 1000, "wait_ms": WATCH_WAIT_MS}),
                client,
            )
            .await;
        match polled {
            Ok(Value::Array(items)) if !items.is_empty() => {
                if let Some(seq) = items.iter().filter_map(|m| m["seq"].as_u64()).max() {
                    tip = seq;
                }
                if wanted && subscribed() == Some(true) && !notify.notify().await {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("inbox watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
