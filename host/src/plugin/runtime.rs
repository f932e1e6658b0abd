//! The wasmtime side: one engine with an epoch ticker, the linker, the
//! on-disk compile cache, and instances with their limits.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::config::PluginSettings;
use super::error::{LoadError, LoadStage};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});

pub(crate) use defender::plugin::types as wit;

/// The WIT package the host implements; a plugin must export
/// `defender:plugin/processor@0.1.x`.
pub const WIT_PACKAGE: &str = "defender:plugin";
/// The WIT package version the host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// The wasmtime release the host is built with, for messages about
/// precompiled artifacts (which only load into the same release).
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";

/// How often the ticker advances the engine's epoch; deadlines are counted
/// in these ticks.
const TICK: Duration = Duration::from_millis(10);
/// Longest log line kept from a plugin; Redpanda caps at 1 KiB too.
const MAX_LOG_LINE: usize = 1024;
/// Log lines a plugin may write in one call before the rest are counted only.
const MAX_LOG_LINES_PER_CALL: u32 = 100;

/// The shared engine and linker, and the ticker thread that drives epochs.
pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<State>,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new() -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&engine_config(None)?)?;
        let mut linker = Linker::new(&engine);
        // std guests import WASI; the context below grants nothing unless
        // the configuration says so.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(wasmtime::Error::from)?;
        Ok(Runtime {
            engine,
            linker,
            stop,
        })
    }

    /// Compiles `wasm` or loads it from the cache, and links it.
    pub fn load(
        &self,
        name: &str,
        wasm: &[u8],
        cache_dir: Option<&Path>,
    ) -> Result<(PluginPre<State>, Origin), LoadError> {
        let fail = |stage, message: String| LoadError {
            plugin: name.to_owned(),
            stage,
            message,
        };
        check_header(wasm).map_err(|m| fail(LoadStage::Compile, m))?;
        let (component, origin) = match cache_dir {
            Some(dir) => self.cached_component(wasm, dir),
            None => Component::new(&self.engine, wasm).map(|c| (c, Origin::Compiled)),
        }
        .map_err(|e| fail(LoadStage::Compile, format!("{e:#}")))?;
        Ok((self.link(name, &component)?, origin))
    }

    /// Loads a component precompiled by `defender-edge plugin compile
    /// --target`, without compiling. Only for files the configuration trusts
    /// (`plugins.trustPrecompiled`): wasmtime does not validate precompiled
    /// code, so whoever wrote the file can run native code in the host.
    pub fn load_precompiled(&self, name: &str, path: &Path) -> Result<PluginPre<State>, LoadError> {
        let refuse = |why: String| LoadError {
            plugin: name.to_owned(),
            stage: LoadStage::Precompiled,
            message: format!(
                "{} cannot be used by this host (target {}, wasmtime {}): {why}; \
                 rebuild it with `defender-edge plugin compile {name}.wasm --target <device>` \
                 from this release, or remove it",
                path.display(),
                host_target(),
                WASMTIME_VERSION,
            ),
        };
        if let Err(e) = std::fs::File::open(path) {
            return Err(LoadError {
                plugin: name.to_owned(),
                stage: LoadStage::Read,
                message: format!("cannot read {}: {e}", path.display()),
            });
        }
        match Engine::detect_precompiled_file(path) {
            Ok(Some(wasmtime::Precompiled::Component)) => {}
            Ok(Some(wasmtime::Precompiled::Module)) => {
                return Err(refuse("a precompiled core module, not a component".into()));
            }
            // A file too short for the header is an error rather than `None`.
            Ok(None) | Err(_) => {
                return Err(refuse("not a wasmtime precompiled artifact".into()));
            }
        }
        // SAFETY: wasmtime checks the artifact's engine section (wasmtime
        // version, target, compiler flags, tunables, features) against this
        // engine and refuses a mismatch; what it cannot check is that the
        // code is what the compiler produced. The caller loads only files
        // the operator declared trusted (the deployment verified their
        // digests), as documented for `plugins.trustPrecompiled`.
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| refuse(format!("{e:#}")))?;
        self.link(name, &component)
    }

    /// Checks the interface version and links the imports.
    fn link(&self, name: &str, component: &Component) -> Result<PluginPre<State>, LoadError> {
        let fail = |stage, message: String| LoadError {
            plugin: name.to_owned(),
            stage,
            message,
        };
        check_world(&self.engine, component).map_err(|m| fail(LoadStage::Version, m))?;
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| fail(LoadStage::Link, format!("{e:#}")))?;
        PluginPre::new(pre).map_err(|e| fail(LoadStage::Link, format!("{e:#}")))
    }

    /// The cache key: the wasm's sha256, the engine's compatibility hash and
    /// the host version, so a wasmtime upgrade or different CPU features
    /// never load a stale artifact.
    pub fn cache_path(&self, wasm: &[u8], dir: &Path) -> PathBuf {
        let mut compat = HashToSha(Sha256::new());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        compat.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        let compat = compat.0.finalize();
        dir.join(format!(
            "{}-{}.cwasm",
            hex(&Sha256::digest(wasm)),
            hex(&compat[..8])
        ))
    }

    fn cached_component(&self, wasm: &[u8], dir: &Path) -> wasmtime::Result<(Component, Origin)> {
        let path = self.cache_path(wasm, dir);
        if path.is_file() {
            // SAFETY: the file lives in the host's own cache directory
            // (0700, written only by `precompile` below via temp + rename),
            // never in the plugin directory, so it was produced by this
            // engine configuration; `detect_precompiled_file` rejects files
            // of another kind, and the key includes the compatibility hash.
            let loaded = match Engine::detect_precompiled_file(&path) {
                Ok(Some(wasmtime::Precompiled::Component)) => unsafe {
                    Component::deserialize_file(&self.engine, &path)
                },
                Ok(_) => Err(wasmtime::Error::msg("not a precompiled component")),
                Err(e) => Err(e),
            };
            match loaded {
                Ok(c) => return Ok((c, Origin::Cache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "discarding unusable compile cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let bytes = self.engine.precompile_component(wasm)?;
        if let Err(error) = write_cache(dir, &path, &bytes) {
            // The cache only saves time; a read-only disk must not stop plugins.
            tracing::warn!(path = %path.display(), %error, "cannot write compile cache");
        }
        // SAFETY: these bytes were produced a moment ago by this engine.
        unsafe { Component::deserialize(&self.engine, &bytes) }.map(|c| (c, Origin::Compiled))
    }

    /// A new store with the plugin's limits and grants.
    pub fn store(&self, name: &str, settings: &PluginSettings) -> wasmtime::Result<Store<State>> {
        let mut wasi = WasiCtx::builder();
        // Denied by default in wasmtime-wasi 48 already; said again here so
        // the invariant does not hang on a library default.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (guest, host) in &settings.grants.read_dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
                .map_err(|e| {
                    e.context(format!(
                        "grants.readDirs {guest:?}: cannot open {}",
                        host.display()
                    ))
                })?;
        }
        if !settings.grants.clock {
            wasi.wall_clock(ZeroClock);
            wasi.monotonic_clock(ZeroClock);
        }
        let state = State {
            plugin: name.to_owned(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: settings.limits.memory_bytes(),
                memory_exceeded: false,
                peak_bytes: 0,
            },
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(settings.limits.hostcall_bytes);
        Ok(store)
    }
}

/// The one engine configuration, for this host (`target` `None`) or, when
/// precompiling, for a device's host. Both must come from here: wasmtime
/// refuses an artifact whose tunables or features differ from the loading
/// engine's, so a setting added here applies to both sides at once.
fn engine_config(target: Option<&str>) -> wasmtime::Result<Config> {
    let mut config = Config::new();
    if let Some(target) = target {
        config.target(target)?;
    }
    // Epochs rather than fuel: fuel costs 2-3 times more per instruction.
    config.epoch_interruption(true);
    config.max_wasm_stack(512 * 1024);
    // Plugins are small; a 4 GiB reservation per memory would exhaust the
    // address space of a 32-bit Pi with a handful of plugins. Set explicitly
    // (not left to per-target defaults) so artifacts built on a 64-bit
    // machine match a 32-bit host.
    config.memory_reservation(64 << 20);
    config.memory_guard_size(2 << 20);
    Ok(config)
}

/// Compiles `wasm` ahead of time for the wasmtime target `target`
/// (`aarch64-unknown-linux-gnu`, `pulley32`...), with the configuration the
/// host on that device uses. The result is loaded by a host that trusts
/// precompiled plugins ([`Runtime::load_precompiled`]).
/// `None` compiles for this machine, with its CPU's features.
pub(crate) fn precompile_for(target: Option<&str>, wasm: &[u8]) -> Result<Vec<u8>, String> {
    check_header(wasm)?;
    let engine = engine_config(target)
        .and_then(|c| Engine::new(&c))
        .map_err(|e| {
            format!(
                "cannot create an engine for {}: {e:#} (a build without the cross-compile \
                 feature compiles only for the machine it runs on)",
                target.unwrap_or("this machine")
            )
        })?;
    engine
        .precompile_component(wasm)
        .map_err(|e| format!("{e:#}"))
}

/// This host's target in `plugin compile --target` terms: its CPU
/// architecture, and for 32-bit ARM (no Cranelift backend) the Pulley
/// bytecode wasmtime runs there.
pub(crate) fn host_target() -> &'static str {
    if cfg!(target_arch = "arm") {
        "armv7 (pulley32)"
    } else {
        std::env::consts::ARCH
    }
}

/// How a plugin's compiled code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Compiled now (and written to the cache, when there is one).
    Compiled,
    /// Loaded from the host's own compile cache.
    Cache,
    /// A precompiled artifact from the plugin directory, trusted by the
    /// configuration.
    Precompiled,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Compiled => "compiled",
            Origin::Cache => "cache",
            Origin::Precompiled => "precompiled",
        }
    }
}

/// Recognises files that are not components before wasmtime gives a less
/// helpful message.
pub(crate) fn check_header(wasm: &[u8]) -> Result<(), String> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(
            "is a core WebAssembly module, not a component: build it with --target wasm32-wasip2"
                .into(),
        ),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err("not a WebAssembly file (bad magic number)".into()),
    }
}

/// What a component imports and exports, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inspection {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Compiles `wasm` (no cache) and lists its imports and exports.
pub(crate) fn inspect(engine: &Engine, wasm: &[u8]) -> Result<(Component, Inspection), String> {
    check_header(wasm)?;
    let component = Component::new(engine, wasm).map_err(|e| format!("{e:#}"))?;
    let ty = component.component_type();
    let inspection = Inspection {
        imports: ty.imports(engine).map(|(n, _)| n.to_owned()).collect(),
        exports: ty.exports(engine).map(|(n, _)| n.to_owned()).collect(),
    };
    Ok((component, inspection))
}

/// Checks that the component exports the processor interface of a
/// compatible package version, so the error names the version rather than
/// a missing export.
pub(crate) fn check_world(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let prefix = format!("{WIT_PACKAGE}/processor@");
    let exported: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let Some(found) = exported.iter().find(|n| n.starts_with(&prefix)) else {
        return Err(format!(
            "does not export {prefix}{WIT_VERSION} (exports: {}); build it with the defender-edge plugin SDK",
            if exported.is_empty() {
                "none".to_owned()
            } else {
                exported.join(", ")
            }
        ));
    };
    let version = &found[prefix.len()..];
    if compatible(version, WIT_VERSION) {
        Ok(())
    } else {
        Err(format!(
            "was built for {WIT_PACKAGE}@{version}; this host implements {WIT_PACKAGE}@{WIT_VERSION} \
             (compatible: the same major, or the same 0.minor)"
        ))
    }
}

/// Semver compatibility as cargo defines it: same major, or for 0.x the same
/// minor; a plugin may not need a newer minor than the host has.
pub(crate) fn compatible(plugin: &str, host: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    match (parse(plugin), parse(host)) {
        (Some((pm, pn, _)), Some((hm, hn, _))) => {
            if hm == 0 {
                pm == 0 && pn == hn
            } else {
                pm == hm && pn <= hn
            }
        }
        _ => false,
    }
}

/// Entries kept in the compile cache; older ones (by modification time) are
/// removed when a new one is written, so development reloads do not fill
/// the disk. Far more than the plugins one device runs.
const CACHE_ENTRIES: usize = 32;

fn write_cache(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    evict(dir, CACHE_ENTRIES)
}

/// Removes the oldest `.cwasm` files beyond `keep`.
fn evict(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if entries.len() <= keep {
        return Ok(());
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() - keep] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Creates the cache directory readable by the host's user only: anyone who
/// can write a `.cwasm` there can run native code in the host.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Feeds `Hash` output into sha256: unlike `DefaultHasher`, stable across
/// Rust releases, so the cache survives a host rebuild with the same engine.
struct HashToSha(Sha256);

impl std::hash::Hasher for HashToSha {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// What a plugin's store holds.
pub(crate) struct State {
    pub plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    /// Log lines written during the current call.
    pub log_lines: u32,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// The types interface has no functions; it is imported only for its types.
impl defender::plugin::types::Host for State {}

impl defender::plugin::log::Host for State {
    fn log(&mut self, level: defender::plugin::log::Level, message: String) {
        use defender::plugin::log::Level;
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        let plugin = &self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin = %plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin = %plugin, "{message}"),
            Level::Info => tracing::info!(plugin = %plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin = %plugin, "{message}"),
            Level::Error => tracing::error!(plugin = %plugin, "{message}"),
        }
    }
}

/// The memory cap, remembering whether the plugin hit it so the failure is
/// reported as out of memory rather than as a bare trap.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub memory_exceeded: bool,
    pub peak_bytes: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            // An error (not `false`) traps at once, instead of handing the
            // guest allocator a -1 it may ignore.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB exceeded (wanted {} MiB)",
                self.memory_bytes >> 20,
                desired.div_ceil(1 << 20)
            )));
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        100
    }
    fn tables(&self) -> usize {
        100
    }
    fn memories(&self) -> usize {
        100
    }
}

/// A clock stuck at zero, for plugins not granted the clock.
struct ZeroClock;

impl wasmtime_wasi::HostWallClock for ZeroClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for ZeroClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Epoch ticks for a CPU budget, rounded up, plus one because the current
/// tick may be about to end.
pub(crate) fn deadline_ticks(budget_ms: u64) -> u64 {
    budget_ms.div_ceil(TICK.as_millis() as u64).max(1) + 1
}

/// How a failed call ended, for counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Timeout,
    OutOfMemory,
    /// More bytes crossed to the host than `hostcallBytes` allows.
    OutputTooLarge,
    Trap,
}

impl FailureKind {
    pub fn counter(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeouts",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::Trap => "traps",
        }
    }
}

/// Classifies the error of a call that trapped.
pub(crate) fn classify(error: &wasmtime::Error, memory_exceeded: bool) -> FailureKind {
    if memory_exceeded {
        FailureKind::OutOfMemory
    } else if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        FailureKind::Timeout
    } else if error
        .chain()
        .any(|e| e.to_string().contains("fuel allocated for hostcalls"))
    {
        // wasmtime's error type for this is private; its message is the
        // only handle. Lifting a result counts against the same fuel, so
        // this is how an oversized output shows up.
        FailureKind::OutputTooLarge
    } else {
        FailureKind::Trap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility_follows_cargo_semver() {
        for (plugin, host, ok) in [
            ("0.1.0", "0.1.0", true),
            ("0.1.0", "0.1.3", true),
            ("0.1.5", "0.1.3", true),
            ("0.2.0", "0.1.0", false),
            ("1.0.0", "0.1.0", false),
            ("9.0.0", "0.1.0", false),
            ("1.1.0", "1.2.0", true),
            ("1.3.0", "1.2.0", false),
            ("2.0.0", "1.2.0", false),
            ("x", "0.1.0", false),
        ] {
            assert_eq!(compatible(plugin, host), ok, "{plugin} on {host}");
        }
    }

    #[test]
    fn cache_keeps_the_newest_entries() {
        let dir = std::env::temp_dir().join(format!("plugin-evict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for i in 0..5 {
            std::fs::write(dir.join(format!("{i}.cwasm")), b"x").expect("write");
            // Distinct modification times even on coarse file systems.
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(dir.join("other.txt"), b"x").expect("write");
        evict(&dir, 2).expect("evict");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(left, ["3.cwasm", "4.cwasm", "other.txt"]);
    }

    /// The smallest valid component: a header and nothing else. It compiles
    /// and loads, and then fails the interface check, which tells a load
    /// that got past the precompiled checks from one that did not.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    /// Precompiles the empty component for `target` into a temp file and
    /// loads it as a trusted artifact.
    fn load_artifact(target: Option<&str>) -> LoadError {
        let dir = tempfile_dir("precompiled");
        let path = dir.join("p.cwasm");
        let bytes = precompile_for(target, EMPTY_COMPONENT).expect("precompile");
        std::fs::write(&path, bytes).expect("write");
        let rt = Runtime::new().expect("runtime");
        let result = rt.load_precompiled("p", &path);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(_) => panic!("the empty component has no processor export"),
            Err(e) => e,
        }
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "plugin-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn artifacts_for_this_host_load_without_compiling() {
        let e = load_artifact(None);
        assert_eq!(e.stage, LoadStage::Version, "{e}");
        #[cfg(target_arch = "x86_64")]
        {
            // The explicit target has baseline CPU features, which any
            // x86_64 host supports.
            let e = load_artifact(Some("x86_64-unknown-linux-gnu"));
            assert_eq!(e.stage, LoadStage::Version, "{e}");
        }
    }

    #[test]
    fn artifacts_for_another_target_are_refused_naming_file_and_mismatch() {
        let other = if cfg!(target_arch = "aarch64") {
            "x86_64-unknown-linux-gnu"
        } else {
            "aarch64-unknown-linux-gnu"
        };
        let arch = other.split('-').next().expect("arch");
        for (target, arch) in [(other, arch), ("pulley32", "pulley32")] {
            let e = load_artifact(Some(target));
            assert_eq!(e.stage, LoadStage::Precompiled, "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with("plugin p: precompiled load failed: ")
                    && text.contains("p.cwasm cannot be used by this host (target ")
                    && text.contains(&format!("Module was compiled for architecture '{arch}'"))
                    && text.contains("plugin compile p.wasm --target"),
                "{text}"
            );
        }
    }

    #[test]
    fn files_that_are_not_artifacts_are_refused() {
        let dir = tempfile_dir("not-artifact");
        let path = dir.join("p.cwasm");
        std::fs::write(&path, EMPTY_COMPONENT).expect("write");
        let rt = Runtime::new().expect("runtime");
        let e = rt.load_precompiled("p", &path).err().expect("refused");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(e.stage, LoadStage::Precompiled);
        assert!(
            e.message.contains("not a wasmtime precompiled artifact"),
            "{e}"
        );
    }

    #[test]
    fn wasmtime_version_matches_the_lock_file() {
        let lock = include_str!("../../../Cargo.lock");
        let entry = format!("name = \"wasmtime\"\nversion = \"{WASMTIME_VERSION}\"\n");
        assert!(
            lock.contains(&entry),
            "WASMTIME_VERSION is stale: update it to the wasmtime version in Cargo.lock"
        );
    }

    #[test]
    fn deadlines_round_up_to_ticks() {
        assert_eq!(deadline_ticks(100), 11);
        assert_eq!(deadline_ticks(1), 2);
        assert_eq!(deadline_ticks(0), 2);
    }

    #[test]
    fn headers_are_recognised() {
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert_eq!(
            check_header(b"\0asm\x01\0\0\0").expect_err("a core module"),
            "is a core WebAssembly module, not a component: build it with --target wasm32-wasip2"
        );
        assert!(check_header(b"ELF").is_err());
    }
}
