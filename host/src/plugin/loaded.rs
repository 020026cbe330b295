//! A loaded plugin: its pre-instantiated component, a pool of warm
//! instances, and the typed calls of its world.

use std::sync::{Arc, Mutex};

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, Trap};

use super::PluginKind;
use super::bindings::{
    HandlerDecision, MessageView, PeerSnapshot, PluginMetadata, ScanRequest, ScanResult,
    SpendDecision, SpendRequest, TrustDecision, handler, pii, spend, trust,
};
use super::cache::CacheOutcome;
use super::error::PluginError;
use super::runtime::{EPOCH_TICK, EpochDemand, PluginSource};
use super::sandbox::{self, HostContext, Limits, StoreState};

/// The pre-instantiated component of one world.
pub(crate) enum WorldPre {
    Trust(trust::TrustPre<StoreState>),
    Pii(pii::PiiPre<StoreState>),
    Spend(spend::SpendPre<StoreState>),
    Handler(handler::HandlerPre<StoreState>),
}

impl WorldPre {
    /// Checks the component's exports against the world's types.
    pub(crate) fn new(kind: PluginKind, pre: InstancePre<StoreState>) -> wasmtime::Result<Self> {
        Ok(match kind {
            PluginKind::Trust => WorldPre::Trust(trust::TrustPre::new(pre)?),
            PluginKind::Pii => WorldPre::Pii(pii::PiiPre::new(pre)?),
            PluginKind::Spend => WorldPre::Spend(spend::SpendPre::new(pre)?),
            PluginKind::Handler => WorldPre::Handler(handler::HandlerPre::new(pre)?),
        })
    }

    fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<World> {
        Ok(match self {
            WorldPre::Trust(pre) => World::Trust(pre.instantiate(store)?),
            WorldPre::Pii(pre) => World::Pii(pre.instantiate(store)?),
            WorldPre::Spend(pre) => World::Spend(pre.instantiate(store)?),
            WorldPre::Handler(pre) => World::Handler(pre.instantiate(store)?),
        })
    }
}

/// An instantiated world's exports.
enum World {
    Trust(trust::Trust),
    Pii(pii::Pii),
    Spend(spend::Spend),
    Handler(handler::Handler),
}

impl World {
    fn metadata(&self, store: &mut Store<StoreState>) -> wasmtime::Result<PluginMetadata> {
        match self {
            World::Trust(w) => w.call_metadata(store),
            World::Pii(w) => w.call_metadata(store),
            World::Spend(w) => w.call_metadata(store),
            World::Handler(w) => w.call_metadata(store),
        }
    }
}

/// A warm instance: its store and its exports.
struct Instance {
    store: Store<StoreState>,
    world: World,
}

/// A plugin loaded into a slot, ready to be called from many threads.
pub struct LoadedPlugin {
    kind: PluginKind,
    source: PluginSource,
    sha256: String,
    cache_outcome: CacheOutcome,
    metadata: PluginMetadata,
    pre: WorldPre,
    engine: Engine,
    epoch: Arc<EpochDemand>,
    host: HostContext,
    limits: Limits,
    idle: Mutex<Vec<Instance>>,
    max_idle: usize,
}

/// Largest linear memory of an instance kept warm after a call, bytes;
/// larger ones are dropped (their next call instantiates afresh, ~tens of
/// microseconds, which a call large enough to need the memory dwarfs).
const KEEP_WARM_MEMORY_BYTES: usize = 8 * 1024 * 1024;

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("metadata", &self.metadata)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kind: PluginKind,
        source: PluginSource,
        sha256: String,
        cache_outcome: CacheOutcome,
        pre: WorldPre,
        engine: Engine,
        epoch: Arc<EpochDemand>,
        host: HostContext,
        limits: Limits,
    ) -> Result<Self, PluginError> {
        let max_idle = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
        let mut plugin = LoadedPlugin {
            kind,
            metadata: PluginMetadata {
                name: source.to_string(),
                version: String::new(),
                description: String::new(),
            },
            source,
            sha256,
            cache_outcome,
            pre,
            engine,
            epoch,
            host,
            limits,
            idle: Mutex::new(Vec::new()),
            max_idle,
        };
        // Calling `metadata` once proves the plugin instantiates and runs,
        // and leaves one warm instance in the pool.
        let load_deadline = plugin.load_deadline_ticks();
        plugin.metadata =
            plugin.with_instance(load_deadline, |store, world| world.metadata(store))?;
        Ok(plugin)
    }

    /// The slot kind.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &PluginSource {
        &self.source
    }

    /// SHA-256 of the component bytes, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Whether its code came from the artifact cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache_outcome
    }

    /// The plugin's own name, version and description.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// `name@version`, for logs and errors.
    pub fn label(&self) -> String {
        if self.metadata.version.is_empty() {
            self.metadata.name.clone()
        } else {
            format!("{}@{}", self.metadata.name, self.metadata.version)
        }
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Warm instances waiting in the pool.
    pub fn idle_instances(&self) -> usize {
        self.lock_idle().len()
    }

    /// Trust world: evaluates a peer.
    pub fn evaluate_trust(&self, peer: &PeerSnapshot) -> Result<TrustDecision, PluginError> {
        let answer = self.with_instance(self.deadline_ticks(), |store, world| match world {
            World::Trust(w) => w.agentfed_plugin_trust_policy().call_evaluate(store, peer),
            _ => unreachable!("a trust slot only holds trust instances"),
        })?;
        self.accept(answer)
    }

    /// PII world: scans one message.
    pub fn scan_pii(&self, request: &ScanRequest) -> Result<ScanResult, PluginError> {
        let answer = self.with_instance(self.deadline_ticks(), |store, world| match world {
            World::Pii(w) => w.agentfed_plugin_pii_policy().call_scan(store, request),
            _ => unreachable!("a pii slot only holds pii instances"),
        })?;
        self.accept(answer)
    }

    /// PII world: scans one message within `budget_ms` (at most the
    /// plugin's own deadline, grown with the text's size by
    /// [`crate::pii::scan_deadline_ms`]), the share of a chain's deadline
    /// the policies before it left.
    pub fn scan_pii_within(
        &self,
        request: &ScanRequest,
        budget_ms: u64,
    ) -> Result<ScanResult, PluginError> {
        let own = crate::pii::scan_deadline_ms(self.limits.deadline_ms, &request.values);
        let ticks = ms_to_ticks(budget_ms.min(own));
        // What the policy prints (a panic message too) may quote the
        // payload: it reaches the log without the scanned text.
        let scrub = |text: &str| crate::pii::scrub_error_text(text, &request.values);
        let answer =
            self.with_instance_scrubbed(ticks, Some(&scrub), |store, world| match world {
                World::Pii(w) => w.agentfed_plugin_pii_policy().call_scan(store, request),
                _ => unreachable!("a pii slot only holds pii instances"),
            })?;
        self.accept(answer)
    }

    /// Spend world: evaluates a peer's breaker.
    pub fn evaluate_spend(&self, request: &SpendRequest) -> Result<SpendDecision, PluginError> {
        let answer = self.with_instance(self.deadline_ticks(), |store, world| match world {
            World::Spend(w) => w
                .agentfed_plugin_spend_policy()
                .call_evaluate(store, request),
            _ => unreachable!("a spend slot only holds spend instances"),
        })?;
        self.accept(answer)
    }

    /// Handler world: handles one inbound message.
    pub fn handle_message(&self, message: &MessageView) -> Result<HandlerDecision, PluginError> {
        // A bulk payload gets more time, as its PII scan does.
        let ms = crate::pii::deadline_for_bytes(
            self.limits.deadline_ms,
            message.payload_json.len() as u64,
        );
        let answer = self.with_instance(ms_to_ticks(ms), |store, world| match world {
            World::Handler(w) => w
                .agentfed_plugin_message_handler()
                .call_handle(store, message),
            _ => unreachable!("a handler slot only holds handler instances"),
        })?;
        self.accept(answer)
    }

    fn accept<T>(&self, answer: Result<T, String>) -> Result<T, PluginError> {
        answer.map_err(|reason| PluginError::Refused {
            plugin: self.label(),
            reason: super::host_api::truncate_on_char_boundary(&reason, 1024).to_string(),
        })
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `call` on a warm instance (or a new one), under the deadline.
    /// A clean instance goes back to the pool; one that trapped is dropped,
    /// because its memory may be in any state.
    fn with_instance<R>(
        &self,
        deadline_ticks: u64,
        call: impl FnOnce(&mut Store<StoreState>, &World) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.with_instance_scrubbed(deadline_ticks, None, call)
    }

    /// [`Self::with_instance`], passing what the guest printed through
    /// `scrub` before it is logged or becomes a panic message.
    fn with_instance_scrubbed<R>(
        &self,
        deadline_ticks: u64,
        scrub: Option<&dyn Fn(&str) -> String>,
        call: impl FnOnce(&mut Store<StoreState>, &World) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let pooled = self.lock_idle().pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        instance.store.data_mut().begin_call();
        let running = self.epoch.enter();
        instance.store.set_epoch_deadline(deadline_ticks);
        let result = call(&mut instance.store, &instance.world);
        drop(running);
        let panic_message = self.forward_guest_output(&instance.store, scrub);
        match result {
            Ok(value) => {
                // Linear memory never shrinks: an instance that grew for
                // one large payload would hold that memory for as long as
                // it stays warm (up to `max_idle` of them per plugin).
                if instance.store.data().limiter.largest_memory <= KEEP_WARM_MEMORY_BYTES {
                    let mut idle = self.lock_idle();
                    if idle.len() < self.max_idle {
                        idle.push(instance);
                    }
                }
                Ok(value)
            }
            Err(err) => Err(self.classify(err, &instance.store, panic_message)),
        }
    }

    fn instantiate(&self) -> Result<Instance, PluginError> {
        let mut store = Store::new(
            &self.engine,
            StoreState::new(self.host.clone(), &self.limits),
        );
        store.limiter(sandbox::limiter);
        let _running = self.epoch.enter();
        store.set_epoch_deadline(self.load_deadline_ticks());
        match self.pre.instantiate(&mut store) {
            Ok(world) => Ok(Instance { store, world }),
            Err(err) => {
                let panic_message = self.forward_guest_output(&store, None);
                Err(match self.classify(err, &store, panic_message) {
                    PluginError::Trap { plugin, reason } => {
                        PluginError::Instantiate { plugin, reason }
                    }
                    other => other,
                })
            }
        }
    }

    fn deadline_ticks(&self) -> u64 {
        ms_to_ticks(self.limits.deadline_ms)
    }

    /// Instantiation (data initialisation, start functions) and the
    /// `metadata` call at load time are not on any request's path, so they
    /// get ten times the call deadline, at least a second: still bounded,
    /// but not at the mercy of a busy scheduler.
    fn load_deadline_ticks(&self) -> u64 {
        ms_to_ticks(self.limits.deadline_ms.saturating_mul(10).max(1_000))
    }

    /// Turns a wasmtime error into the typed reason callers fail closed on.
    fn classify(
        &self,
        err: wasmtime::Error,
        store: &Store<StoreState>,
        panic_message: Option<String>,
    ) -> PluginError {
        let plugin = self.label();
        let refused_memory = store.data().limiter.refused_memory;
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout {
                plugin,
                deadline_ms: self.limits.deadline_ms,
            },
            _ if refused_memory => PluginError::OutOfMemory {
                plugin,
                limit_mib: self.limits.memory_mib,
            },
            Some(Trap::UnreachableCodeReached) => PluginError::Panic {
                plugin,
                message: panic_message,
            },
            Some(trap) => PluginError::Trap {
                plugin,
                reason: trap.to_string(),
            },
            None => PluginError::Trap {
                plugin,
                reason: super::host_api::truncate_on_char_boundary(&format!("{err:#}"), 400)
                    .to_string(),
            },
        }
    }

    /// Sends what the guest printed to the host log, line by line, and
    /// returns the message of a panic it printed, if any.
    fn forward_guest_output(
        &self,
        store: &Store<StoreState>,
        scrub: Option<&dyn Fn(&str) -> String>,
    ) -> Option<String> {
        let (text, dropped) = store.data().output.take();
        let text = match scrub {
            Some(scrub) if !text.is_empty() => scrub(&text),
            _ => text,
        };
        let logs_dropped = store.data().log_lines_dropped;
        if text.is_empty() && dropped == 0 && logs_dropped == 0 {
            return None; // the common case: nothing to forward
        }
        let label = self.label();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(target: "agentfed::plugin", plugin = %label, "guest output: {line}");
        }
        if dropped > 0 {
            tracing::debug!(target: "agentfed::plugin", plugin = %label, dropped, "guest output truncated");
        }
        if logs_dropped > 0 {
            tracing::debug!(target: "agentfed::plugin", plugin = %label, logs_dropped, "plugin log lines dropped");
        }
        // Rust prints "panicked at <location>:" and the message on the
        // next line.
        let mut lines = text.lines().skip_while(|l| !l.contains("panicked at"));
        let location = lines.next()?;
        let message = lines.next().unwrap_or(location).trim();
        Some(super::host_api::truncate_on_char_boundary(message, 400).to_string())
    }
}

fn ms_to_ticks(ms: u64) -> u64 {
    let tick = EPOCH_TICK.as_millis().max(1) as u64;
    ms.div_ceil(tick).max(1)
}
