//! The WebAssembly plugin runtime. The only module that knows wasmtime exists.
//!
//! Plugins are WebAssembly components targeting the `defender:plugin` world
//! in `wit/`. Each gets its own store (own memory, limits, WASI context that
//! grants nothing unless configured) and runs on every sample in the
//! configured order; see docs/PLUGINS.md for the partner's view.
//!
//! Design choices:
//! - **State persists between calls**: one warm instance per plugin, so a
//!   plugin may keep counters or previous values. The instance is dropped and
//!   re-created (and `init` runs again) after any trap, timeout or
//!   out-of-memory, and on reload; a store is never reused after a trap.
//! - **Faults are contained**: a failing plugin costs its own output, never
//!   the report: fail-open passes the sample from before the plugin on,
//!   fail-closed holds the report back. Restarts back off (1 s doubling to
//!   30 s); too many failures in a window disable the plugin until reloaded.
//! - **Every call ends in time, whatever the plugin does**: running code
//!   stops at its CPU budget (`callTimeoutMs`, `initTimeoutMs`), a wait in a
//!   host call (sleep, `poll`) at the budget plus a small margin (see
//!   `call`). [`PluginHost::process`] blocks its thread for at most the sum
//!   of those (`run` calls it inside `block_in_place`). Nothing is armed
//!   between calls.
//! - **Memory is capped per plugin**: `memoryMib` bounds all its linear
//!   memories and tables together; wasm threads and shared memories are off.
//! - **Compiled code is cached** under the host's own cache directory, keyed
//!   by the wasm's sha256 and the engine's compatibility hash, and verified
//!   (owner, mode, digest) before use (see `cache`). Artifacts are read into
//!   memory, never mapped, so rewriting a file cannot change running code.
//! - **Hot reload acts on content**: a finished write, rename or removal in
//!   the plugin folder (see `watch`) reloads a plugin only when its bytes
//!   changed; reading a file or writing the same bytes keeps the instance.
//! - **Precompiled artifacts** (`<name>.cwasm`, built on a developer machine
//!   with `plugin compile --target`) are loaded from the plugin directory
//!   only when `plugins.trustPrecompiled` says the deployment vouches for
//!   them; one built for another engine is refused by name, and the plugin
//!   falls back to compiling its `.wasm` when there is one.

mod cache;
mod call;
pub mod cli;
mod config;
mod convert;
mod error;
mod runtime;
mod watch;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

// For the plugin bench, which measures the call path against the one it
// replaced (host/benches/support/call_path.rs); not an API.
#[doc(hidden)]
pub use call::Calls;
pub use config::{FailurePolicy, Grants, Limits, PluginSettings, PluginsConfig};
pub use convert::OutputError;
pub use error::{LoadError, LoadStage, PluginError};
pub use runtime::{WIT_PACKAGE, WIT_VERSION};

use crate::sample::Sample;
use crate::status::Status;
use cache::CompileCache;
use runtime::{FailureKind, Origin, Plugin, PluginPre, Runtime, State};
use watch::DirWatcher;

/// A backoff is reset to its base after this long without failures.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What became of a sample after all plugins ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Report this sample (possibly changed, with plugins' alerts appended).
    Pass(Sample),
    /// A fail-closed plugin failed or is unavailable: hold the report back.
    Held {
        /// The plugin that failed.
        plugin: String,
        /// What went wrong, e.g. `ran longer than callTimeoutMs (100 ms)`.
        reason: String,
    },
    /// A plugin asked for no report for this sample.
    Dropped {
        /// The plugin that dropped it.
        plugin: String,
    },
}

/// The loaded plugins. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.plugins())
            .finish()
    }
}

struct Inner {
    runtime: Runtime,
    config: PluginsConfig,
    /// `None` for one-off runs (`plugin test`), which leave no trace, and
    /// when the cache directory cannot be trusted.
    cache: Option<CompileCache>,
    status: Status,
    /// Sorted by (order, name).
    slots: RwLock<Vec<Arc<Slot>>>,
    watcher: Mutex<Option<DirWatcher>>,
}

/// One plugin name, loaded or not.
struct Slot {
    name: String,
    settings: PluginSettings,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The compiled version in use; `None` when the file is missing or never
    /// loaded.
    version: Option<Version>,
    /// The content of the last load that failed, so that events on the same
    /// bad file log one error rather than one per event.
    failed: Option<Sha>,
    /// The warm instance; `None` after a failure until re-instantiated.
    live: Option<Live>,
    failures: VecDeque<Instant>,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_failure: Option<Instant>,
    disabled: Option<String>,
}

struct Version {
    pre: PluginPre<State>,
    /// What it was loaded from (see [`Bytes::digest`]).
    digest: Sha,
}

type Sha = [u8; 32];

/// The files one plugin may be loaded from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `<name>.wasm`; need not exist when `precompiled` does.
    wasm: PathBuf,
    /// `<name>.cwasm`, when it exists and the configuration trusts it.
    precompiled: Option<PathBuf>,
}

/// A plugin's files, read once per load: what is compiled is what the
/// digest describes, however the files change meanwhile.
struct Bytes {
    /// `None` when only a trusted precompiled artifact exists.
    wasm: Option<Vec<u8>>,
    precompiled: Option<Vec<u8>>,
    /// sha256 over both, to tell a real change from a rewrite of the same
    /// bytes.
    digest: Sha,
}

struct Live {
    store: wasmtime::Store<State>,
    bindings: Plugin,
}

enum Step {
    Next(Sample),
    Held(String),
    Dropped,
}

impl PluginHost {
    /// Loads every `*.wasm` in `config.dir` (compiling into, or loading from,
    /// `cache_dir`) and starts the directory watcher when `hot_reload` is on.
    /// A plugin that fails to load is logged and counted
    /// (`plugin.<name>.load_errors`, `plugin.<name>.state`) but does not fail
    /// the start; its failure policy applies to every sample until a good
    /// version arrives.
    pub fn start(
        config: &PluginsConfig,
        cache_dir: &Path,
        status: Status,
    ) -> Result<PluginHost, PluginError> {
        let mut runtime = Runtime::new().map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        // A long-running host compiles in a child process, so that what the
        // compiler used goes back to the system (see `runtime`).
        runtime.compile_in_child = true;
        note_trust(config, &status);
        let cache = match config.dir {
            Some(_) => CompileCache::open(cache_dir)
                .inspect_err(|error| {
                    warn!(%error, "compile cache unusable; compiling plugins at every start");
                })
                .ok(),
            None => None,
        };
        let inner = Arc::new(Inner {
            runtime,
            config: config.clone(),
            cache,
            status,
            slots: RwLock::new(Vec::new()),
            watcher: Mutex::new(None),
        });
        let Some(dir) = &config.dir else {
            return Ok(PluginHost { inner });
        };
        let files = plugin_files(dir).map_err(|source| PluginError::Dir {
            path: dir.clone(),
            source,
        })?;
        let mut names = BTreeSet::new();
        for (name, path) in &files {
            if is_precompiled(path) && !config.trust_precompiled {
                warn!(plugin = %name, path = %path.display(), "ignoring precompiled artifact: plugins.trustPrecompiled is false");
                continue;
            }
            names.insert(name.clone());
        }
        names.extend(config.settings.keys().cloned());
        for name in names {
            let settings = config.settings.get(&name).cloned().unwrap_or_default();
            if !settings.enabled {
                inner
                    .status
                    .set_text(&key(&name, "state"), "off (enabled: false)");
                continue;
            }
            let slot = inner.slot(&name, settings);
            match inner.source(&name) {
                Some(source) => inner.load(&slot, &source),
                None => {
                    let present: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
                    warn!(plugin = %name, dir = %dir.display(), present = %present.join(", "), "plugins.settings names a plugin with no .wasm file in the plugin folder: its settings apply to nothing (plugin names are file stems, `_` read as `-`)");
                    inner.status.set_text(&key(&name, "state"), "missing");
                }
            }
        }
        if config.hot_reload {
            inner.watch(dir)?;
        }
        Ok(PluginHost { inner })
    }

    /// Runs every plugin on the sample, in order. Never panics and never
    /// loses the sample: failures follow each plugin's failure policy.
    pub fn process(&self, sample: Sample) -> Processed {
        let slots = self.inner.slots().clone();
        let mut sample = sample;
        for slot in slots {
            match self.inner.run(&slot, sample) {
                Step::Next(s) => sample = s,
                Step::Held(reason) => {
                    return Processed::Held {
                        plugin: slot.name.clone(),
                        reason,
                    };
                }
                Step::Dropped => {
                    return Processed::Dropped {
                        plugin: slot.name.clone(),
                    };
                }
            }
        }
        Processed::Pass(sample)
    }

    /// Names of the plugins in run order, with their state (`running`,
    /// `disabled: ...`, `missing`...).
    pub fn plugins(&self) -> Vec<(String, String)> {
        self.inner
            .slots()
            .iter()
            .map(|s| {
                let state = self
                    .inner
                    .status
                    .get(&key(&s.name, "state"))
                    .map(|v| match v {
                        crate::status::Value::Text(t) => t,
                        crate::status::Value::Number(n) => n.to_string(),
                    })
                    .unwrap_or_default();
                (s.name.clone(), state)
            })
            .collect()
    }

    /// One plugin from any file, without the compile cache or watcher: for
    /// `plugin test`. Load failures are returned rather than only logged. A
    /// `.cwasm` file is loaded as a precompiled artifact: naming it on the
    /// command line is the trust.
    pub(crate) fn single(
        name: &str,
        path: &Path,
        settings: PluginSettings,
        status: Status,
    ) -> Result<PluginHost, PluginError> {
        let runtime = Runtime::new().map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut config = PluginsConfig::default();
        config.settings.insert(name.to_owned(), settings.clone());
        let inner = Arc::new(Inner {
            runtime,
            config,
            cache: None,
            status,
            slots: RwLock::new(Vec::new()),
            watcher: Mutex::new(None),
        });
        let slot = inner.slot(name, settings);
        let source = if is_precompiled(path) {
            Source {
                wasm: path.with_extension("wasm"),
                precompiled: Some(path.to_owned()),
            }
        } else {
            Source {
                wasm: path.to_owned(),
                precompiled: None,
            }
        };
        inner.try_load(&slot, &source)?;
        Ok(PluginHost { inner })
    }

    /// Loads (or reloads) `<dir>/<name>.wasm` (or the trusted `<name>.cwasm`)
    /// now, as the watcher would; a disabled plugin is enabled again. The
    /// previous version stays when the new one fails.
    pub fn reload(&self, name: &str) -> Result<(), LoadError> {
        let Some(dir) = &self.inner.config.dir else {
            return Err(LoadError {
                plugin: name.to_owned(),
                stage: LoadStage::Read,
                message: "no plugin directory configured".into(),
            });
        };
        let source = self.inner.source(name).unwrap_or_else(|| Source {
            wasm: dir.join(format!("{name}.wasm")),
            precompiled: None,
        });
        let settings = self.inner.settings_for(name);
        let slot = self.inner.slot(name, settings);
        self.inner.try_load(&slot, &source)
    }
}

/// `plugin.<name>.<what>`
fn key(name: &str, what: &str) -> String {
    format!("plugin.{name}.{what}")
}

/// Status key remembering whether `plugins.trustPrecompiled` was on, so a
/// configuration update that turns it on is noticed (the status registry
/// outlives sessions).
const TRUST_KEY: &str = "plugin.trust_precompiled";

/// Logs a change of `plugins.trustPrecompiled`. Turning it on lets whoever
/// can write the plugin folder run native code in the host, so an update
/// that does it is a warning, not news.
fn note_trust(config: &PluginsConfig, status: &Status) {
    let was_off =
        matches!(status.get(TRUST_KEY), Some(crate::status::Value::Text(t)) if t == "off");
    if config.trust_precompiled {
        let dir = config.dir.as_deref().unwrap_or(Path::new("(none)"));
        if was_off {
            warn!(dir = %dir.display(), "a configuration update turned plugins.trustPrecompiled on: \
                .cwasm files in the plugin folder now run as native code without being compiled here; \
                only the deployment may write that folder (docs/DEPLOY.md)");
        } else {
            info!(dir = %dir.display(), "plugins.trustPrecompiled is on: .cwasm files in the plugin folder run without being compiled here");
        }
    }
    status.set_text(
        TRUST_KEY,
        if config.trust_precompiled {
            "on"
        } else {
            "off"
        },
    );
}

/// `(name, path)` of every `*.wasm` and `*.cwasm` file in `dir`, sorted.
pub(crate) fn plugin_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(name) = plugin_name(&path)
            && path.is_file()
        {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// The plugin name of `path`, if it is a `.wasm` or `.cwasm` file that is
/// not hidden (editors and atomic writers use hidden temporaries): its file
/// stem, read by [`plugin_name_of`].
fn plugin_name(path: &Path) -> Option<String> {
    let ext = path.extension()?;
    if ext != "wasm" && ext != "cwasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty() && !stem.starts_with('.')).then(|| plugin_name_of(stem))
}

/// The one rule for plugin names: `_` reads as `-`. Cargo writes
/// `conn_limit.wasm` for the crate `conn-limit`; the folder, `plugin test`,
/// `plugins.settings` and scripts/package.sh all call it `conn-limit`.
pub fn plugin_name_of(stem: &str) -> String {
    stem.replace('_', "-")
}

/// The file in `dir` with extension `ext` that plugin `name` loads from.
/// When two files name the same plugin (`conn_limit.wasm` and
/// `conn-limit.wasm`), the one spelled like the name wins, with a warning
/// naming both.
fn plugin_file(dir: &Path, name: &str, ext: &str) -> Option<PathBuf> {
    let exact = dir.join(format!("{name}.{ext}"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|e| e == ext)
                && plugin_name(path).as_deref() == Some(name)
                && path.is_file()
        })
        .collect();
    found.sort();
    if found.len() > 1 {
        let files: Vec<String> = found
            .iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect();
        warn!(plugin = %name, files = %files.join(", "), "several files name this plugin (`_` reads as `-`); loading {name}.{ext}: remove the others");
    }
    if found.contains(&exact) {
        return Some(exact);
    }
    found.into_iter().next()
}

/// Whether `path` names a precompiled artifact rather than a component.
fn is_precompiled(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "cwasm")
}

impl Inner {
    /// Where plugin `name` loads from, or `None` when the plugin directory
    /// holds nothing for it (an untrusted `.cwasm` counts as nothing).
    fn source(&self, name: &str) -> Option<Source> {
        let dir = self.config.dir.as_ref()?;
        let wasm = plugin_file(dir, name, "wasm");
        let precompiled = self
            .config
            .trust_precompiled
            .then(|| plugin_file(dir, name, "cwasm"))
            .flatten();
        (precompiled.is_some() || wasm.is_some()).then(|| Source {
            wasm: wasm.unwrap_or_else(|| dir.join(format!("{name}.wasm"))),
            precompiled,
        })
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn settings_for(&self, name: &str) -> PluginSettings {
        self.config.settings.get(name).cloned().unwrap_or_default()
    }

    /// The slot for `name`, created (in order) if new.
    fn slot(&self, name: &str, settings: PluginSettings) -> Arc<Slot> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.iter().find(|s| s.name == name) {
            return s.clone();
        }
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            settings,
            state: Mutex::new(SlotState::default()),
        });
        slots.push(slot.clone());
        slots.sort_by(|a, b| (a.settings.order, &a.name).cmp(&(b.settings.order, &b.name)));
        self.status.set("plugin.loaded", slots.len() as u64);
        slot
    }

    /// Loads a plugin into a slot, logging and counting a failure.
    fn load(&self, slot: &Slot, source: &Source) {
        if let Err(e) = self.try_load(slot, source) {
            error!(plugin = %slot.name, stage = %e.stage, error = %e.message, "plugin failed to load; keeping the previous version if any");
        }
    }

    /// Reads the plugin's files once. A missing `.wasm` is fine when a
    /// trusted precompiled artifact is there.
    fn read(&self, name: &str, source: &Source) -> Result<Bytes, LoadError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| LoadError {
                plugin: name.to_owned(),
                stage: LoadStage::Read,
                message: format!("cannot read {}: {e}", path.display()),
            })
        };
        let precompiled = source.precompiled.as_deref().map(read).transpose()?;
        let wasm = match (&precompiled, read(&source.wasm)) {
            (_, Ok(bytes)) => Some(bytes),
            (Some(_), Err(_)) => None,
            (None, Err(e)) => return Err(e),
        };
        let mut digest = Sha256::new();
        for part in [&wasm, &precompiled] {
            digest.update([u8::from(part.is_some())]);
            digest.update(part.as_deref().unwrap_or_default());
        }
        Ok(Bytes {
            wasm,
            precompiled,
            digest: digest.finalize().into(),
        })
    }

    /// The plugin's compiled code: the trusted precompiled artifact, or else
    /// the `.wasm` compiled or taken from the cache. A refused artifact falls
    /// back to the `.wasm` when there is one (a monitor that keeps running
    /// beats one that waits for a fixed artifact), loudly and counted.
    fn code(
        &self,
        name: &str,
        source: &Source,
        bytes: &Bytes,
    ) -> Result<(PluginPre<State>, Origin, String), LoadError> {
        if let (Some(artifact), Some(path)) = (&bytes.precompiled, &source.precompiled) {
            match self.runtime.load_precompiled_bytes(name, path, artifact) {
                Ok(pre) => return Ok((pre, Origin::Precompiled, path.display().to_string())),
                Err(e) if bytes.wasm.is_some() => {
                    warn!(plugin = %name, error = %e.message, wasm = %source.wasm.display(), "precompiled artifact refused; compiling the .wasm instead");
                    self.status.add(&key(name, "precompiled_refused"), 1);
                    self.status
                        .set_text(&key(name, "last_error"), e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let Some(wasm) = &bytes.wasm else {
            return Err(LoadError {
                plugin: name.to_owned(),
                stage: LoadStage::Read,
                message: format!("{} does not exist", source.wasm.display()),
            });
        };
        let (pre, origin) = self.runtime.load(name, wasm, self.cache.as_ref())?;
        let sha256 = format!("{:x}", Sha256::digest(wasm));
        Ok((pre, origin, format!("sha256 {}", &sha256[..12])))
    }

    /// Reads, compiles, links and initialises the plugin; on success the new
    /// version replaces the old one, otherwise the old one stays.
    fn try_load(&self, slot: &Slot, source: &Source) -> Result<(), LoadError> {
        let bytes = self.read(&slot.name, source).inspect_err(|e| {
            self.count_load_error(slot, e);
        })?;
        self.try_load_bytes(slot, source, &bytes)
    }

    fn try_load_bytes(&self, slot: &Slot, source: &Source, bytes: &Bytes) -> Result<(), LoadError> {
        let name = &slot.name;
        let result =
            (|| -> Result<(PluginPre<State>, Live, Duration, Origin, String), LoadError> {
                let started = Instant::now();
                let (pre, origin, id) = self.code(name, source, bytes)?;
                let compiled = started.elapsed();
                let live = self.instantiate(slot, &pre)?;
                Ok((pre, live, compiled, origin, id))
            })();
        let (pre, live, compiled, origin, id) = match result {
            Ok(v) => v,
            Err(e) => {
                slot.lock().failed = Some(bytes.digest);
                self.count_load_error(slot, &e);
                return Err(e);
            }
        };
        let mut st = slot.lock();
        let replaced = st.version.is_some();
        info!(
            plugin = %name,
            from = origin.as_str(),
            %id,
            load_ms = compiled.as_millis() as u64,
            replaced,
            "plugin loaded"
        );
        if origin == Origin::Compiled {
            self.status.add(&key(name, "compiles"), 1);
        }
        self.status
            .set_text(&key(name, "loaded_from"), origin.as_str());
        *st = SlotState {
            version: Some(Version {
                pre,
                digest: bytes.digest,
            }),
            live: Some(live),
            ..SlotState::default()
        };
        if replaced {
            self.status.add(&key(name, "reloads"), 1);
        }
        self.status.set_text(&key(name, "state"), "running");
        Ok(())
    }

    fn count_load_error(&self, slot: &Slot, e: &LoadError) {
        let name = &slot.name;
        self.status.add(&key(name, "load_errors"), 1);
        self.status
            .set_text(&key(name, "last_error"), e.to_string());
        if slot.lock().version.is_none() {
            self.status
                .set_text(&key(name, "state"), format!("failed: {e}"));
        }
    }

    /// Takes a plugin out of the pipeline because its file was removed.
    fn unload(&self, name: &str) {
        let slot = self.slots().iter().find(|s| s.name == name).cloned();
        let Some(slot) = slot else { return };
        *slot.lock() = SlotState::default();
        if self.config.settings.contains_key(name) {
            // A configured plugin keeps its slot so a fail-closed plugin keeps
            // holding reports while its file is missing.
            self.status.set_text(&key(name, "state"), "missing");
        } else {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            slots.retain(|s| s.name != name);
            self.status.set("plugin.loaded", slots.len() as u64);
            self.status.set_text(&key(name, "state"), "unloaded");
        }
        info!(plugin = %name, "plugin file removed; plugin unloaded");
    }

    /// A fresh store and instance, with `init` run under the init budget.
    fn instantiate(&self, slot: &Slot, pre: &PluginPre<State>) -> Result<Live, LoadError> {
        let fail = |stage, message: String| LoadError {
            plugin: slot.name.clone(),
            stage,
            message,
        };
        let limits = &slot.settings.limits;
        let mut store = self
            .runtime
            .store(&slot.name, &slot.settings)
            .map_err(|e| fail(LoadStage::Grants, format!("{e:#}")))?;
        let config: Vec<(String, String)> = slot
            .settings
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deadline = runtime::arm(&mut store, Duration::from_millis(limits.init_timeout_ms));
        let outcome = self.runtime.calls.run(deadline, async {
            let bindings = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Err(fail(LoadStage::Link, format!("{e:#}"))))?;
            match bindings
                .defender_plugin_processor()
                .call_init(&mut store, &config)
                .await
            {
                Ok(Ok(())) => Ok(bindings),
                Ok(Err(message)) => Err(Err(fail(
                    LoadStage::Init,
                    format!("init returned an error: {}", runtime::clip(message)),
                ))),
                Err(trap) => Err(Ok(trap)),
            }
        });
        let trap = match outcome {
            Some(Ok(bindings)) => return Ok(Live { store, bindings }),
            Some(Err(Err(load_error))) => return Err(load_error),
            Some(Err(Ok(trap))) => Some(trap),
            None => None,
        };
        let what = match trap {
            None => format!(
                "init waited in a host call (a sleep or poll) longer than initTimeoutMs ({} ms)",
                limits.init_timeout_ms
            ),
            Some(e) => match runtime::classify(&e, store.data().limiter.memory_exceeded) {
                FailureKind::Timeout => format!(
                    "init ran longer than initTimeoutMs ({} ms)",
                    limits.init_timeout_ms
                ),
                FailureKind::OutOfMemory => {
                    format!("init ran out of memory: {}", runtime::describe(&e))
                }
                FailureKind::OutputTooLarge => format!(
                    "init handed the host more than hostcallBytes ({} bytes)",
                    limits.hostcall_bytes
                ),
                FailureKind::Trap => format!("init trapped: {}", runtime::describe(&e)),
            },
        };
        Err(fail(LoadStage::Init, runtime::clip(what)))
    }

    /// Runs one plugin on the sample.
    fn run(&self, slot: &Slot, sample: Sample) -> Step {
        let name = &slot.name;
        let mut st = slot.lock();
        let Some(version) = &st.version else {
            return self.unavailable(slot, sample, "not loaded".into());
        };
        if let Some(reason) = &st.disabled {
            let reason = format!("disabled: {reason}");
            return self.unavailable(slot, sample, reason);
        }
        if st.live.is_none() {
            if st.retry_at.is_some_and(|t| Instant::now() < t) {
                return self.unavailable(slot, sample, "restarting after a failure".into());
            }
            match self.instantiate(slot, &version.pre) {
                Ok(live) => {
                    st.live = Some(live);
                    self.status.add(&key(name, "restarts"), 1);
                    self.status.set_text(&key(name, "state"), "running");
                    info!(plugin = %name, "plugin re-instantiated");
                }
                Err(e) => {
                    let reason = e.message.clone();
                    self.record_failure(slot, &mut st, FailureKind::Trap, &reason);
                    return self.fail(slot, sample, reason);
                }
            }
        }
        self.status.add(&key(name, "calls"), 1);
        let Some(live) = st.live.as_mut() else {
            return self.unavailable(slot, sample, "not instantiated".into());
        };
        let limits = &slot.settings.limits;
        let input = convert::to_wit(&sample);
        live.store.data_mut().log_lines = 0;
        live.store.data_mut().limiter.memory_exceeded = false;
        // What the host hands over may come back (an echoed sample): only
        // what the plugin adds counts against hostcallBytes.
        live.store.set_hostcall_fuel(
            limits
                .hostcall_bytes
                .saturating_add(convert::lifted_bytes(&input)),
        );
        let deadline = runtime::arm(
            &mut live.store,
            Duration::from_millis(limits.call_timeout_ms),
        );
        let result = self.runtime.calls.run(
            deadline,
            live.bindings
                .defender_plugin_processor()
                .call_process(&mut live.store, &input),
        );
        drop(input);
        let dropped_lines = live.store.data().log_lines.saturating_sub(100);
        if dropped_lines > 0 {
            self.status
                .add(&key(name, "log_lines_dropped"), u64::from(dropped_lines));
        }
        self.status.set(
            &key(name, "memory_peak_bytes"),
            live.store.data().limiter.peak_bytes as u64,
        );
        let output = match result {
            Some(Ok(Ok(output))) => output,
            Some(Ok(Err(message))) => {
                let reason = format!("returned an error: {}", runtime::clip(message));
                warn!(plugin = %name, %reason, "plugin failed");
                self.count_failure(slot, &mut st, "errors", &reason);
                return self.fail(slot, sample, reason);
            }
            Some(Err(e)) => {
                let kind = runtime::classify(&e, live.store.data().limiter.memory_exceeded);
                let reason = match kind {
                    FailureKind::Timeout => format!(
                        "ran longer than callTimeoutMs ({} ms)",
                        limits.call_timeout_ms
                    ),
                    FailureKind::OutOfMemory => {
                        format!("ran out of memory: {}", runtime::describe(&e))
                    }
                    FailureKind::OutputTooLarge => format!(
                        "handed the host more than hostcallBytes ({} bytes)",
                        limits.hostcall_bytes
                    ),
                    FailureKind::Trap => format!("trapped: {}", runtime::describe(&e)),
                };
                let reason = runtime::clip(reason);
                // A trapped store must never be entered again.
                self.record_failure(slot, &mut st, kind, &reason);
                return self.fail(slot, sample, reason);
            }
            None => {
                let reason = format!(
                    "waited in a host call (a sleep or poll) longer than callTimeoutMs ({} ms)",
                    limits.call_timeout_ms
                );
                // The call was abandoned half-way: its store is unusable.
                self.record_failure(slot, &mut st, FailureKind::Timeout, &reason);
                return self.fail(slot, sample, reason);
            }
        };
        if st.last_failure.is_some_and(|t| t.elapsed() > HEALTHY_AFTER) {
            st.backoff = Duration::ZERO;
            st.last_failure = None;
        }
        drop(st);
        match output.verdict {
            runtime::wit::Verdict::DropReport => {
                self.status.add(&key(name, "dropped_reports"), 1);
                Step::Dropped
            }
            runtime::wit::Verdict::Keep(out) => {
                match convert::from_wit(name, out, output.alerts, &sample, limits) {
                    Ok(next) => {
                        let raised = next.alerts.len() - sample.alerts.len();
                        if raised > 0 {
                            self.status.add(&key(name, "alerts"), raised as u64);
                        }
                        Step::Next(next)
                    }
                    Err(e) => {
                        warn!(plugin = %name, field = %e.field, error = %e.message, "plugin output rejected");
                        let reason = format!("output rejected: {e}");
                        self.count_failure(slot, &mut slot.lock(), "rejected", &reason);
                        self.fail(slot, sample, reason)
                    }
                }
            }
        }
    }

    /// Counts a failure toward disabling the plugin (`maxFailures` within
    /// `failureWindowSecs`), and disables it when that many came. Returns
    /// whether it is now disabled.
    fn count_failure(&self, slot: &Slot, st: &mut SlotState, counter: &str, reason: &str) -> bool {
        let name = &slot.name;
        let limits = &slot.settings.limits;
        let now = Instant::now();
        self.status.add(&key(name, counter), 1);
        self.status.add(&key(name, "failures"), 1);
        self.status.set_text(&key(name, "last_error"), reason);
        st.failures.push_back(now);
        while st
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > limits.failure_window())
        {
            st.failures.pop_front();
        }
        if (st.failures.len() as u64) < limits.max_failures {
            return false;
        }
        let why = format!(
            "{} failures in {} s, last: {reason}",
            st.failures.len(),
            limits.failure_window_secs
        );
        error!(plugin = %name, reason = %why, "plugin disabled until reloaded");
        self.status.add(&key(name, "disabled"), 1);
        self.status
            .set_text(&key(name, "state"), format!("disabled: {why}"));
        st.disabled = Some(why);
        st.live = None;
        true
    }

    /// A trap-like failure: the instance is gone. Counts it and schedules the
    /// restart, unless the plugin is now disabled.
    fn record_failure(&self, slot: &Slot, st: &mut SlotState, kind: FailureKind, reason: &str) {
        st.live = None;
        st.last_failure = Some(Instant::now());
        if self.count_failure(slot, st, kind.counter(), reason) {
            return;
        }
        let limits = &slot.settings.limits;
        let base = Duration::from_millis(limits.restart_backoff_ms);
        st.backoff = if st.backoff.is_zero() {
            base
        } else {
            (st.backoff * 2).min(Duration::from_millis(limits.max_restart_backoff_ms))
        };
        st.retry_at = Some(Instant::now() + st.backoff);
        warn!(plugin = %slot.name, kind = kind.counter(), %reason, retry_in_ms = st.backoff.as_millis() as u64, "plugin failed; instance dropped");
        self.status.set_text(
            &key(&slot.name, "state"),
            format!("restarting in {} ms", st.backoff.as_millis()),
        );
    }

    /// The plugin failed on this sample: apply its failure policy.
    fn fail(&self, slot: &Slot, sample: Sample, reason: String) -> Step {
        match slot.settings.on_failure {
            FailurePolicy::Open => {
                self.status.add(&key(&slot.name, "passed_on_failure"), 1);
                Step::Next(sample)
            }
            FailurePolicy::Closed => {
                self.status.add(&key(&slot.name, "held"), 1);
                Step::Held(reason)
            }
        }
    }

    /// The plugin cannot run now (missing, disabled, backing off).
    fn unavailable(&self, slot: &Slot, sample: Sample, reason: String) -> Step {
        match slot.settings.on_failure {
            // A fail-open plugin that is not there is simply skipped.
            FailurePolicy::Open => {
                self.status.add(&key(&slot.name, "skipped"), 1);
                Step::Next(sample)
            }
            FailurePolicy::Closed => self.fail(slot, sample, reason),
        }
    }

    /// Starts the watcher on the plugin directory. It holds only a weak
    /// reference, so dropping the last `PluginHost` stops it.
    fn watch(self: &Arc<Self>, dir: &Path) -> Result<(), PluginError> {
        let weak: Weak<Inner> = Arc::downgrade(self);
        let watcher = DirWatcher::start(
            dir,
            |path| plugin_name(path).is_some(),
            move |path| match weak.upgrade() {
                Some(inner) => {
                    inner.changed(path);
                    true
                }
                None => false,
            },
        )
        .map_err(|message| PluginError::Watch {
            path: dir.to_owned(),
            message,
        })?;
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
        info!(dir = %dir.display(), "watching plugin directory for changes");
        Ok(())
    }

    /// A `.wasm` or `.cwasm` file in the plugin directory was written,
    /// renamed or removed: load the plugin again if what it would load from
    /// changed, or unload it when nothing is left to load.
    fn changed(&self, path: &Path) {
        let Some(name) = plugin_name(path) else {
            return;
        };
        if is_precompiled(path) && !self.config.trust_precompiled {
            return;
        }
        let settings = self.settings_for(&name);
        if !settings.enabled {
            return;
        }
        let Some(source) = self.source(&name) else {
            self.unload(&name);
            return;
        };
        let slot = self.slot(&name, settings);
        let bytes = match self.read(&name, &source) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.count_load_error(&slot, &e);
                error!(plugin = %name, stage = %e.stage, error = %e.message, "plugin failed to load; keeping the previous version if any");
                return;
            }
        };
        {
            let st = slot.lock();
            let running = st
                .version
                .as_ref()
                .is_some_and(|v| v.digest == bytes.digest);
            if running || st.failed == Some(bytes.digest) {
                debug!(plugin = %name, path = %path.display(), "plugin file touched without a change of content; nothing to do");
                return;
            }
        }
        if let Err(e) = self.try_load_bytes(&slot, &source, &bytes) {
            error!(plugin = %name, stage = %e.stage, error = %e.message, "plugin failed to load; keeping the previous version if any");
        }
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves at worst a stale instance,
        // which the next failure replaces.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
