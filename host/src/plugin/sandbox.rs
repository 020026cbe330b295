//! The sandbox every plugin call runs in: resource limits, a WASI context
//! that grants nothing, bounded capture of guest output, and the state the
//! host imports read.
//!
//! All limits live here, next to each other, so a reader can see at once
//! what a plugin is allowed to consume.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::NodeStatus;
pub use crate::clock::{Clock, SystemClock};

/// Per-call resource limits of a plugin. Defaults follow the design brief.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock budget of one call, in milliseconds (epoch interruption).
    /// Default 50.
    pub deadline_ms: u64,
    /// Linear memory a plugin instance may hold, all its memories together,
    /// in MiB. Default 64.
    pub memory_mib: u64,
    /// Core instances a component may create (a component is several).
    pub max_instances: usize,
    /// Tables, and elements per table.
    pub max_tables: usize,
    /// Elements per table.
    pub max_table_elements: usize,
    /// Guest stdout/stderr bytes kept per call; the rest is counted and
    /// dropped.
    pub output_bytes: usize,
    /// `host.log` lines accepted per call; the rest are counted and dropped.
    pub log_lines: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 50,
            memory_mib: 64,
            max_instances: 32,
            max_tables: 32,
            max_table_elements: 100_000,
            output_bytes: 4096,
            log_lines: 64,
        }
    }
}

impl Limits {
    /// The deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// Answers the handler world's `node.status` import.
pub trait NodeStatusSource: Send + Sync {
    /// The node's current status.
    fn status(&self) -> NodeStatus;
}

/// The `host.keyed-hash` secret: zeroed on drop, so a reload or shutdown
/// leaves no copy of it in freed memory.
pub type HashKey = zeroize::Zeroizing<[u8; 32]>;

/// What the host imports of one loaded plugin see: its name (for log
/// lines), its configuration, the node's keyed-hash secret, the clock and
/// the node status. Shared by every instance of the plugin.
#[derive(Clone)]
pub struct HostContext {
    /// `name@version` of the plugin, prefixed to its log lines.
    pub plugin_label: Arc<str>,
    /// `[plugins.<kind>.config]` from the node config.
    pub config: Arc<BTreeMap<String, String>>,
    /// Secret key of `host.keyed-hash` (HMAC-SHA256). Never leaves the
    /// host; zeroed when the last instance using it is dropped.
    pub hash_key: Arc<HashKey>,
    /// Clock for `host.now-ms`.
    pub clock: Arc<dyn Clock>,
    /// Source for `node.status`.
    pub node_status: Arc<dyn NodeStatusSource>,
}

impl std::fmt::Debug for HostContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash key is deliberately not printed.
        f.debug_struct("HostContext")
            .field("plugin_label", &self.plugin_label)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Memory limiter that also remembers whether it refused a grow, so a trap
/// that follows can be reported as out-of-memory rather than a panic.
///
/// The cap is on the instance's total: a component may hold up to
/// `max_instances` linear memories (one per core instance, or several with
/// multi-memory), and a per-memory cap would let it take that many times
/// the limit. wasmtime reports every memory's creation (from 0) and growth
/// here, and memories never shrink, so a running sum is exact.
pub(crate) struct Limiter {
    memory_bytes: usize,
    /// Bytes of linear memory the store's memories hold together.
    memory_total: usize,
    /// The increase granted by the last successful `memory_growing`, taken
    /// back if wasmtime then fails to grow (`memory_grow_failed`).
    memory_last_grant: usize,
    max_instances: usize,
    max_tables: usize,
    max_table_elements: usize,
    pub(crate) refused_memory: bool,
    /// The largest linear memory this store grew to (bytes): an instance
    /// that grew large for one big call is not kept warm
    /// (`LoadedPlugin::with_instance`), so its memory goes back.
    pub(crate) largest_memory: usize,
}

impl Limiter {
    fn new(limits: &Limits) -> Self {
        Limiter {
            memory_bytes: (limits.memory_mib as usize).saturating_mul(1 << 20),
            memory_total: 0,
            memory_last_grant: 0,
            max_instances: limits.max_instances,
            max_tables: limits.max_tables,
            max_table_elements: limits.max_table_elements,
            refused_memory: false,
            largest_memory: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let increase = desired.saturating_sub(current);
        let total = self.memory_total.saturating_add(increase);
        let allowed = total <= self.memory_bytes;
        if allowed {
            self.memory_total = total;
            self.memory_last_grant = increase;
            self.largest_memory = self.largest_memory.max(desired);
        } else {
            self.refused_memory = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_total = self.memory_total.saturating_sub(self.memory_last_grant);
        self.memory_last_grant = 0;
        tracing::debug!("plugin memory growth failed after the limiter allowed it: {error:#}");
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        self.max_instances
    }
}

/// Everything a plugin's `Store` holds.
pub struct StoreState {
    pub(crate) host: HostContext,
    pub(crate) limiter: Limiter,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) output: GuestOutput,
    pub(crate) log_lines_left: u32,
    pub(crate) log_lines_dropped: u32,
    log_lines_per_call: u32,
}

impl StoreState {
    /// A fresh state: WASI with no filesystem, network, environment,
    /// arguments or stdin; stdout and stderr captured in a bounded buffer.
    pub(crate) fn new(host: HostContext, limits: &Limits) -> Self {
        let output = GuestOutput::new(limits.output_bytes);
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        StoreState {
            host,
            limiter: Limiter::new(limits),
            wasi,
            table: ResourceTable::new(),
            output,
            log_lines_left: limits.log_lines,
            log_lines_dropped: 0,
            log_lines_per_call: limits.log_lines,
        }
    }

    /// Resets the per-call budgets before a call.
    pub(crate) fn begin_call(&mut self) {
        self.limiter.refused_memory = false;
        self.log_lines_left = self.log_lines_per_call;
        self.log_lines_dropped = 0;
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Built a `Store` limiter accessor; kept as a function so the runtime and
/// tests configure stores the same way.
pub(crate) fn limiter(state: &mut StoreState) -> &mut dyn ResourceLimiter {
    &mut state.limiter
}

/// Bounded capture of a guest's stdout and stderr. Writes never fail (a
/// guest that prints too much must not trap because of it); bytes past the
/// capacity are counted and dropped. The host drains it after each call
/// into its own log.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<OutputBuffer>>,
}

struct OutputBuffer {
    kept: Vec<u8>,
    dropped: u64,
    capacity: usize,
}

impl GuestOutput {
    fn new(capacity: usize) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputBuffer {
                kept: Vec::new(),
                dropped: 0,
                capacity,
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = buf.capacity.saturating_sub(buf.kept.len());
        let keep = room.min(bytes.len());
        buf.kept.extend_from_slice(&bytes[..keep]);
        buf.dropped += (bytes.len() - keep) as u64;
    }

    /// Takes what was captured since the last call: (text, bytes dropped).
    pub(crate) fn take(&self) -> (String, u64) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&buf.kept).into_owned();
        let dropped = buf.dropped;
        buf.kept.clear();
        buf.dropped = 0;
        (text, dropped)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest write the guest may attempt at once; it is always accepted.
const OUTPUT_PERMIT: usize = 64 * 1024;

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(OUTPUT_PERMIT)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Node status used where no daemon is running (`agentfed plugin run`).
#[derive(Debug, Clone)]
pub struct StaticNodeStatus(pub NodeStatus);

impl NodeStatusSource for StaticNodeStatus {
    fn status(&self) -> NodeStatus {
        self.0.clone()
    }
}

impl HostContext {
    /// A context with an empty configuration, the system clock, the given
    /// hash key and a node status for a node that is not running.
    pub fn standalone(
        plugin_label: &str,
        config: BTreeMap<String, String>,
        hash_key: [u8; 32],
    ) -> Self {
        HostContext {
            plugin_label: Arc::from(plugin_label),
            config: Arc::new(config),
            hash_key: HostContext::share_hash_key(&hash_key),
            clock: Arc::new(SystemClock),
            node_status: Arc::new(StaticNodeStatus(NodeStatus {
                node_id: "standalone".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                active_peers: 0,
                known_peers: 0,
                uptime_secs: 0,
            })),
        }
    }

    /// Copies `secret` straight into a shared, zeroizing heap buffer (no
    /// intermediate copy on the stack that would outlive this call).
    pub fn share_hash_key(secret: &[u8; 32]) -> Arc<HashKey> {
        let mut key = Arc::new(HashKey::new([0; 32]));
        if let Some(buffer) = Arc::get_mut(&mut key) {
            buffer.copy_from_slice(secret);
        }
        key
    }

    /// A context for inspecting a component: nothing configured and an
    /// all-zero hash key (inspection never hashes real data).
    pub fn inert(plugin_label: &str) -> Self {
        Self::standalone(plugin_label, BTreeMap::new(), [0; 32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module declaring `count` linear memories of 40 MiB (640
    /// pages) each; multi-memory is on by default in wasmtime.
    fn module_with_memories(count: u8) -> Vec<u8> {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        let mut section = vec![count];
        for _ in 0..count {
            section.extend([0x00, 0x80, 0x05]); // no maximum, min 640 pages
        }
        bytes.push(5); // memory section
        bytes.push(section.len() as u8);
        bytes.extend(section);
        bytes
    }

    fn instantiate(count: u8) -> (Result<(), wasmtime::Error>, bool) {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, module_with_memories(count)).expect("module");
        let limits = Limits::default(); // 64 MiB
        let mut store = wasmtime::Store::new(
            &engine,
            StoreState::new(HostContext::inert("memories"), &limits),
        );
        store.limiter(limiter);
        let result = wasmtime::Instance::new(&mut store, &module, &[]).map(|_| ());
        (result, store.data().limiter.refused_memory)
    }

    /// Two memories of 40 MiB are each under the 64 MiB cap but together
    /// over it: the instance is refused, as out of memory (what
    /// `LoadedPlugin` reports as PLUGIN_OUT_OF_MEMORY).
    #[test]
    fn the_memory_cap_is_on_all_of_an_instance_s_memories_together() {
        let (one, refused) = instantiate(1);
        assert!(one.is_ok() && !refused, "one 40 MiB memory fits: {one:?}");
        let (two, refused) = instantiate(2);
        assert!(two.is_err(), "two 40 MiB memories exceed 64 MiB together");
        assert!(refused, "reported as the memory limit: {two:?}");
    }

    #[test]
    fn growth_counts_against_the_total_and_a_failed_grow_is_given_back() {
        const MIB: usize = 1 << 20;
        let mut limiter = Limiter::new(&Limits::default());
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        // The first memory grows by 4 MiB to 34: 64 in all, still allowed.
        assert!(limiter.memory_growing(30 * MIB, 34 * MIB, None).unwrap());
        assert!(!limiter.memory_growing(30 * MIB, 31 * MIB, None).unwrap());
        assert!(limiter.refused_memory);
        // A granted grow that then failed does not count.
        let mut limiter = Limiter::new(&Limits::default());
        assert!(limiter.memory_growing(0, 60 * MIB, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::Error::msg("mmap failed"))
            .unwrap();
        assert!(limiter.memory_growing(0, 60 * MIB, None).unwrap());
    }

    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}

    /// The key the plugins' `host.keyed-hash` uses lives in a buffer that
    /// zeroes itself on drop (a compile-time check on the field's type),
    /// holding exactly the node's secret.
    #[test]
    fn the_keyed_hash_key_is_a_zeroizing_copy_of_the_secret() {
        let context = HostContext::standalone("t", BTreeMap::new(), [9; 32]);
        zeroized_on_drop(&*context.hash_key);
        assert_eq!(**context.hash_key, [9; 32]);
        let shared = HostContext::share_hash_key(&[3; 32]);
        zeroized_on_drop(&*shared);
        assert_eq!(**shared, [3; 32]);
    }
}
