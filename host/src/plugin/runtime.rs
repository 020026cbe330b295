//! The shared engine, linkers and epoch ticker, and loading components.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::PluginKind;
use super::bindings::{PluginMetadata, handler, pii, spend, trust};
use super::cache::{ArtifactCache, CacheOutcome};
use super::error::PluginError;
use super::loaded::{LoadedPlugin, WorldPre};
use super::sandbox::{HostContext, Limits, StoreState};

/// How often the epoch advances. A call's deadline is rounded up to whole
/// ticks, so a 50 ms deadline fires between 50 and 51 ms.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Where a plugin's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A default policy compiled into this binary, by name.
    Embedded(&'static str),
    /// A component file.
    File(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Embedded(name) => write!(f, "{name} (embedded)"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Options of the runtime.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Directory for precompiled artifacts; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
}

/// What `agentfed plugin inspect` reports about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentInfo {
    /// The plugin kind it can fill, if it exports a known world.
    pub kind: Option<PluginKind>,
    /// That kind's world.
    pub world: Option<&'static str>,
    /// The plugin's own metadata (calls its `metadata` export in the
    /// sandbox), when it is a plugin.
    pub metadata: Option<PluginMetadata>,
    /// SHA-256 of the component bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Names of everything it imports.
    pub imports: Vec<String>,
    /// Names of everything it exports.
    pub exports: Vec<String>,
}

/// Ticks the ticker goes on after the last Wasm execution ended before it
/// parks: waking it costs the next call a thread wake-up (two interleaved
/// runs on the 2-core VM showed ~0.5 ms more per `query ping` when it
/// parked at once), so steady traffic keeps it running and only a node
/// idle for this long lets it sleep.
const EPOCH_LINGER_TICKS: u32 = 100;

/// How many Wasm executions (calls, instantiations) are in progress. The
/// ticker advances the epoch only while there is one (or there was one in
/// the last [`EPOCH_LINGER_TICKS`] ticks): an idle node must not wake a
/// thread a thousand times a second (laptops, battery).
#[derive(Default)]
pub(crate) struct EpochDemand {
    running: AtomicUsize,
    ticker: std::sync::OnceLock<std::thread::Thread>,
    /// Epoch increments so far (what the tests observe).
    ticks: std::sync::atomic::AtomicU64,
}

impl EpochDemand {
    /// Marks a Wasm execution in progress until the guard drops. Deadlines
    /// are set after this (relative to the epoch at that moment), so time
    /// spent parked never counts against a call.
    pub(crate) fn enter(&self) -> EpochGuard<'_> {
        if self.running.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(ticker) = self.ticker.get()
        {
            ticker.unpark();
        }
        EpochGuard(self)
    }
}

/// See [`EpochDemand::enter`].
pub(crate) struct EpochGuard<'a>(&'a EpochDemand);

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Advances the engine's epoch on a background thread while Wasm runs
/// ([`EpochDemand`]); stops on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, demand: Arc<EpochDemand>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let waiting = demand.clone();
        let thread = std::thread::Builder::new()
            .name("agentfed-epoch".into())
            .spawn(move || {
                let mut idle_ticks = EPOCH_LINGER_TICKS;
                while !flag.load(Ordering::Relaxed) {
                    if waiting.running.load(Ordering::SeqCst) == 0 {
                        idle_ticks += 1;
                        if idle_ticks > EPOCH_LINGER_TICKS {
                            // An `unpark` between the check and `park` is
                            // not lost: `park` then returns at once.
                            std::thread::park();
                            idle_ticks = 0;
                            continue;
                        }
                    } else {
                        idle_ticks = 0;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    waiting.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the epoch thread");
        let _ = demand.ticker.set(thread.thread().clone());
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// One per process: the engine, a linker per kind, the ticker, the cache.
pub struct PluginRuntime {
    engine: Engine,
    linkers: [Linker<StoreState>; 4],
    cache: Option<ArtifactCache>,
    epoch_demand: Arc<EpochDemand>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Creates the engine (epoch interruption on, optimised codegen) and
    /// links the host imports and a deny-by-default WASI for every world.
    pub fn new(options: RuntimeOptions) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let linkers = [
            Self::linker(&engine, PluginKind::Trust)?,
            Self::linker(&engine, PluginKind::Pii)?,
            Self::linker(&engine, PluginKind::Spend)?,
            Self::linker(&engine, PluginKind::Handler)?,
        ];
        let epoch_demand = Arc::new(EpochDemand::default());
        Ok(PluginRuntime {
            _ticker: EpochTicker::start(engine.clone(), epoch_demand.clone()),
            epoch_demand,
            engine,
            linkers,
            cache: options.cache_dir.map(ArtifactCache::new),
        })
    }

    fn linker(engine: &Engine, kind: PluginKind) -> Result<Linker<StoreState>, PluginError> {
        let mut linker = Linker::new(engine);
        let linked = wasmtime_wasi::p2::add_to_linker_sync(&mut linker).and_then(|()| match kind {
            PluginKind::Trust => trust::Trust::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
            PluginKind::Pii => pii::Pii::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
            PluginKind::Spend => spend::Spend::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
            PluginKind::Handler => {
                handler::Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            }
        });
        linked.map_err(|e| PluginError::Engine(format!("linking {kind} imports: {e:#}")))?;
        Ok(linker)
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The artifact cache, if configured.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    /// Reads a plugin's bytes.
    pub fn read_source(source: &PluginSource) -> Result<Vec<u8>, PluginError> {
        match source {
            PluginSource::Embedded(name) => crate::embedded::bytes(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| PluginError::NotAComponent {
                    source_label: source.to_string(),
                    reason: "no embedded policy has this name".into(),
                }),
            PluginSource::File(path) => std::fs::read(path).map_err(|source| PluginError::Read {
                path: path.clone(),
                source,
            }),
        }
    }

    /// Compiles (or loads from the cache) a component.
    pub fn compile(
        &self,
        label: &str,
        bytes: &[u8],
    ) -> Result<(Component, [u8; 32], CacheOutcome), PluginError> {
        if !looks_like_component(bytes) {
            return Err(PluginError::NotAComponent {
                source_label: label.to_string(),
                reason: describe_non_component(bytes),
            });
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let compiled = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, bytes, &digest),
            None => {
                Component::new(&self.engine, bytes).map(|c| (c, CacheOutcome::CompiledUncached))
            }
        };
        let (component, outcome) = compiled.map_err(|e| PluginError::NotAComponent {
            source_label: label.to_string(),
            reason: first_line(&format!("{e:#}")),
        })?;
        Ok((component, digest, outcome))
    }

    /// Loads a plugin into a slot of `kind`: reads and compiles it, checks
    /// that it exports the kind's world, links and pre-instantiates it,
    /// and calls its `metadata` export once in the sandbox.
    pub fn load(
        &self,
        kind: PluginKind,
        source: PluginSource,
        host: HostContext,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let bytes = Self::read_source(&source)?;
        self.load_bytes(kind, source, &bytes, host, limits)
    }

    /// Like [`load`](Self::load), from bytes already in memory.
    pub fn load_bytes(
        &self,
        kind: PluginKind,
        source: PluginSource,
        bytes: &[u8],
        host: HostContext,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let label = source.to_string();
        let (component, digest, cache_outcome) = self.compile(&label, bytes)?;
        self.load_compiled(
            kind,
            source,
            &component,
            digest,
            cache_outcome,
            host,
            limits,
        )
    }

    /// Checks, links and pre-instantiates an already compiled component.
    #[allow(clippy::too_many_arguments)]
    fn load_compiled(
        &self,
        kind: PluginKind,
        source: PluginSource,
        component: &Component,
        digest: [u8; 32],
        cache_outcome: CacheOutcome,
        host: HostContext,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let label = source.to_string();
        self.check_world(kind, &label, component)?;
        let linker = &self.linkers[kind as usize];
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link {
                source_label: label.clone(),
                reason: first_line(&format!("{e:#}")),
            })?;
        let pre = WorldPre::new(kind, instance_pre).map_err(|e| PluginError::WrongWorld {
            source_label: label.clone(),
            kind,
            expected: kind.export_interface(),
            found: format!(" ({})", first_line(&format!("{e:#}"))),
        })?;
        let plugin = LoadedPlugin::new(
            kind,
            source,
            hex::encode(digest),
            cache_outcome,
            pre,
            self.engine.clone(),
            self.epoch_demand.clone(),
            host,
            limits,
        )?;
        Ok(Arc::new(plugin))
    }

    fn check_world(
        &self,
        kind: PluginKind,
        label: &str,
        component: &Component,
    ) -> Result<(), PluginError> {
        let exports = export_names(&self.engine, component);
        if exports.iter().any(|e| e == kind.export_interface()) {
            return Ok(());
        }
        let found = match PluginKind::from_exports(exports.iter().map(String::as_str)) {
            Some(other) => format!(" (it is a {other} plugin)"),
            None if exports.is_empty() => " (it exports nothing)".to_string(),
            None => format!(" (it exports {})", exports.join(", ")),
        };
        Err(PluginError::WrongWorld {
            source_label: label.to_string(),
            kind,
            expected: kind.export_interface(),
            found,
        })
    }

    /// Describes a component without loading it into a slot. When it is a
    /// plugin, its `metadata` export is called in the sandbox.
    pub fn inspect(&self, label: &str, bytes: &[u8]) -> Result<ComponentInfo, PluginError> {
        let (component, digest, cache_outcome) = self.compile(label, bytes)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = export_names(&self.engine, &component);
        let kind = PluginKind::from_exports(exports.iter().map(String::as_str));
        let metadata = match kind {
            Some(kind) => {
                let host = HostContext::inert(label);
                let source = PluginSource::File(PathBuf::from(label));
                let plugin = self.load_compiled(
                    kind,
                    source,
                    &component,
                    digest,
                    cache_outcome,
                    host,
                    Limits::default(),
                )?;
                Some(plugin.metadata().clone())
            }
            None => None,
        };
        Ok(ComponentInfo {
            kind,
            world: kind.map(PluginKind::world),
            metadata,
            sha256: hex::encode(digest),
            size: bytes.len(),
            imports,
            exports,
        })
    }
}

fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A component starts with the wasm magic and a layer/version of 0x0d 0x00
/// 0x01 0x00; a core module has version 1 and layer 0.
fn looks_like_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

fn describe_non_component(bytes: &[u8]) -> String {
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
        "it is a core WebAssembly module, not a component (build for wasm32-wasip2, or wrap it with `wasm-tools component new`)".into()
    } else if bytes.is_empty() {
        "the file is empty".into()
    } else {
        "it does not start with the WebAssembly component header".into()
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    super::host_api::truncate_on_char_boundary(line, 400).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn ticks(demand: &EpochDemand) -> u64 {
        demand.ticks.load(Ordering::Relaxed)
    }

    #[test]
    fn the_epoch_ticks_only_while_wasm_runs() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let demand = Arc::new(EpochDemand::default());
        let ticker = EpochTicker::start(engine, demand.clone());
        // Idle: parked, not one tick (it used to tick every millisecond).
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ticks(&demand), 0);
        // A call in progress: ticking.
        let running = demand.enter();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticks(&demand) < 5 {
            assert!(Instant::now() < deadline, "no ticks while wasm runs");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(running);
        // Idle again: it lingers for EPOCH_LINGER_TICKS, then parks.
        std::thread::sleep(EPOCH_TICK * EPOCH_LINGER_TICKS * 3);
        let after = ticks(&demand);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            ticks(&demand) <= after + 1,
            "{} > {after} + 1",
            ticks(&demand)
        );
        // Dropping the ticker stops its thread even while parked.
        drop(ticker);
    }
}
