//! The wasmtime side: one engine, the linker, loading from the compile
//! cache or from bytes, and stores with their limits and deadlines.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::cache::{CompileCache, hex};
use super::call::Calls;
use super::config::PluginSettings;
use super::error::{LoadError, LoadStage};

// Exports are called asynchronously so that a call waiting in a WASI host
// function (poll, a sleep) is a future that `call::Calls` can abandon.
wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    exports: { default: async },
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

/// Longest log line or error message kept from a plugin; Redpanda caps at
/// 1 KiB too.
pub(crate) const MAX_LOG_LINE: usize = 1024;
/// Log lines a plugin may write in one call before the rest are counted only.
const MAX_LOG_LINES_PER_CALL: u32 = 100;

/// The shared engine and linker, and what bounds every call.
pub(crate) struct Runtime {
    pub engine: Engine,
    pub linker: Linker<State>,
    pub calls: Calls,
    /// Compile in a child process (see [`compile_elsewhere`]) when the
    /// cache misses: set for the long-running host.
    pub compile_in_child: bool,
}

impl Runtime {
    pub fn new() -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&engine_config(None)?)?;
        let mut linker = Linker::new(&engine);
        // std guests import WASI; the context below grants nothing unless
        // the configuration says so. Linked asynchronously: see `call`.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        let calls = Calls::new(&engine).map_err(wasmtime::Error::from)?;
        Ok(Runtime {
            engine,
            linker,
            calls,
            compile_in_child: false,
        })
    }

    /// Compiles `wasm` or loads it from the cache, and links it.
    pub fn load(
        &self,
        name: &str,
        wasm: &[u8],
        cache: Option<&CompileCache>,
    ) -> Result<(PluginPre<State>, Origin), LoadError> {
        let fail = |stage, message: String| LoadError {
            plugin: name.to_owned(),
            stage,
            message,
        };
        check_header(wasm).map_err(|m| fail(LoadStage::Compile, m))?;
        let (component, origin) = match cache {
            Some(cache) => self.cached_component(wasm, cache),
            None => Component::new(&self.engine, wasm).map(|c| (c, Origin::Compiled)),
        }
        .map_err(|e| fail(LoadStage::Compile, format!("{e:#}")))?;
        Ok((self.link(name, &component)?, origin))
    }

    /// Loads a component precompiled by `defender-edge plugin compile
    /// --target` from `path`, without compiling. Only for files the
    /// configuration trusts (`plugins.trustPrecompiled`): wasmtime does not
    /// validate precompiled code, so whoever wrote the file can run native
    /// code in the host.
    pub fn load_precompiled(&self, name: &str, path: &Path) -> Result<PluginPre<State>, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError {
            plugin: name.to_owned(),
            stage: LoadStage::Read,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        self.load_precompiled_bytes(name, path, &bytes)
    }

    /// [`Runtime::load_precompiled`] on bytes read from `path` before. The
    /// file is never mapped: another process may rewrite it while the
    /// plugin runs, which would change code under the host's feet.
    pub fn load_precompiled_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<PluginPre<State>, LoadError> {
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
        match Engine::detect_precompiled(bytes) {
            Some(wasmtime::Precompiled::Component) => {}
            Some(wasmtime::Precompiled::Module) => {
                return Err(refuse("a precompiled core module, not a component".into()));
            }
            None => return Err(refuse("not a wasmtime precompiled artifact".into())),
        }
        // SAFETY: wasmtime checks the artifact's engine section (wasmtime
        // version, target, compiler flags, tunables, features) against this
        // engine and refuses a mismatch; what it cannot check is that the
        // code is what the compiler produced. The caller loads only files
        // the operator declared trusted (the deployment verified their
        // digests), as documented for `plugins.trustPrecompiled`. The bytes
        // are the host's own copy, so nobody can change them afterwards.
        let component = unsafe { Component::deserialize(&self.engine, bytes) }
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
    pub fn cache_key(&self, wasm: &[u8]) -> String {
        let mut compat = HashToSha(Sha256::new());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        compat.0.update(env!("CARGO_PKG_VERSION").as_bytes());
        let compat = compat.0.finalize();
        format!("{}-{}", hex(&Sha256::digest(wasm)), hex(&compat[..8]))
    }

    fn cached_component(
        &self,
        wasm: &[u8],
        cache: &CompileCache,
    ) -> wasmtime::Result<(Component, Origin)> {
        let key = self.cache_key(wasm);
        if let Some((path, bytes)) = cache.get(&key) {
            let loaded = match Engine::detect_precompiled(&bytes) {
                // SAFETY: the entry passed the cache's checks (a regular file
                // owned by this user, writable by no one else, holding the
                // bytes this host wrote: see `cache`), and its key includes
                // the engine's compatibility hash. It is loaded from the
                // host's own copy of the bytes, never mapped.
                Some(wasmtime::Precompiled::Component) => unsafe {
                    Component::deserialize(&self.engine, &bytes)
                },
                _ => Err(wasmtime::Error::msg("not a precompiled component")),
            };
            match loaded {
                Ok(c) => return Ok((c, Origin::Cache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "discarding unusable compile cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let bytes = match self
            .compile_in_child
            .then(|| compile_elsewhere(wasm, cache, &key))
        {
            Some(Some(bytes)) => bytes,
            _ => {
                let bytes = self.engine.precompile_component(wasm)?;
                if let Err(error) = cache.put(&key, &bytes) {
                    // The cache only saves time; a read-only disk must not
                    // stop plugins.
                    tracing::warn!(dir = %cache.dir().display(), %error, "cannot write compile cache");
                }
                // Compiling here left the allocator holding memory the
                // running host does not need.
                release_memory();
                bytes
            }
        };
        // SAFETY: these bytes were produced a moment ago by this engine
        // (here, or by this same binary in a child and read back verified).
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
            limiter: Limiter::new(settings.limits.memory_bytes()),
            log_lines: 0,
            deadline: Instant::now(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(settings.limits.hostcall_bytes);
        // The engine's epoch advances only when some call's deadline passes
        // (`call::Watchdog`), possibly another plugin's: the clock decides
        // whether this store's own call is over.
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        Ok(store)
    }
}

/// Starts a call on `store` with `budget` of running time; returns the
/// deadline to hand to [`Calls::run`].
pub(crate) fn arm(store: &mut Store<State>, budget: Duration) -> Instant {
    let deadline = Instant::now() + budget;
    store.data_mut().deadline = deadline;
    // Interrupt at the next epoch advance, where the callback above decides.
    store.set_epoch_deadline(1);
    deadline
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
    // No wasm threads: an atomic wait would block inside the engine where
    // no deadline reaches, and shared memories escape the memory limiter.
    // A plugin using them is refused when it is compiled, by name.
    config.wasm_threads(false);
    config.shared_memory(false);
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
    /// When the current call's running time is over (see [`arm`]).
    deadline: Instant,
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
        let message = clip(message);
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

/// Bytes counted per table element: wasmtime stores a function reference
/// as a pointer and some metadata; 16 bytes errs on the side of the host.
const TABLE_ELEMENT_BYTES: usize = 16;

/// The memory cap of one plugin: its linear memories and tables together,
/// however many there are. Remembers whether the plugin hit it, so the
/// failure is reported as out of memory rather than as a bare trap.
pub(crate) struct Limiter {
    memory_bytes: usize,
    /// Bytes of all memories and tables of the store now.
    used: usize,
    pub memory_exceeded: bool,
    pub peak_bytes: usize,
}

impl Limiter {
    fn new(memory_bytes: usize) -> Limiter {
        Limiter {
            memory_bytes,
            used: 0,
            memory_exceeded: false,
            peak_bytes: 0,
        }
    }

    /// Accounts a memory or table going from `current` to `desired` bytes.
    fn grow(&mut self, what: &str, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let after = (self.used - current.min(self.used)).saturating_add(desired);
        if after > self.memory_bytes {
            self.memory_exceeded = true;
            // An error (not `false`) traps at once, instead of handing the
            // guest allocator a -1 it may ignore.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB exceeded: growing a {what} would take the plugin's \
                 memories and tables to {} MiB",
                self.memory_bytes >> 20,
                after.div_ceil(1 << 20)
            )));
        }
        self.used = after;
        self.peak_bytes = self.peak_bytes.max(after);
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow("memory", current, desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            "table",
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    // Counts, so that many tiny memories cannot each reserve address space
    // (64 MiB apiece): a Rust plugin uses one memory and a few instances,
    // a Python one (componentize-py) some dozens of instances and tables.
    fn instances(&self) -> usize {
        INSTANCES
    }
    fn tables(&self) -> usize {
        TABLES
    }
    fn memories(&self) -> usize {
        MEMORIES
    }
}

const INSTANCES: usize = 64;
const TABLES: usize = 64;
const MEMORIES: usize = 8;

/// The binary's name, by which [`compile_elsewhere`] knows it may run
/// itself (tests and benches embed the host in other binaries).
const BINARY: &str = "defender-edge";

/// Compiles `wasm` into `cache` in a child process, `defender-edge plugin
/// compile-into-cache`, and returns the verified entry; `None` when that is
/// not possible (not running as the `defender-edge` binary, the child
/// failed), and the caller compiles in this process instead.
///
/// Why: Cranelift touches megabytes of the binary's code and allocates tens
/// of megabytes on several threads; in this process that stays resident
/// (13 MB more after start, docs/BENCHMARKS.md). A child gives all of it
/// back when it exits, so the host is the same size whether it compiled or
/// found its plugins in the cache. The child is this same binary, so it
/// builds the same engine and writes under the same key.
fn compile_elsewhere(wasm: &[u8], cache: &CompileCache, key: &str) -> Option<Vec<u8>> {
    use std::io::Write;
    let exe = std::env::current_exe().ok()?;
    if !exe.file_name()?.to_str()?.starts_with(BINARY) {
        return None;
    }
    let mut child = std::process::Command::new(&exe)
        .args(["plugin", "compile-into-cache", "--cache"])
        .arg(cache.dir())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .inspect_err(|error| tracing::warn!(exe = %exe.display(), %error, "cannot start a compiler process; compiling in the host"))
        .ok()?;
    // The child reads all of its input before it writes anything.
    let fed = child.stdin.take().map(|mut stdin| stdin.write_all(wasm));
    let output = child.wait_with_output().ok()?;
    if !output.status.success() || !matches!(fed, Some(Ok(()))) {
        let stderr = clip(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        tracing::warn!(status = %output.status, %stderr, "compiler process failed; compiling in the host");
        return None;
    }
    cache.get(key).map(|(_, bytes)| bytes)
}

/// What `plugin compile-into-cache` does in the child: compile with this
/// host's engine configuration and store the artifact under its key.
pub(crate) fn compile_into_cache(
    wasm: &[u8],
    cache: &CompileCache,
) -> Result<std::path::PathBuf, String> {
    check_header(wasm)?;
    let rt = Runtime::new().map_err(|e| format!("cannot create the engine: {e:#}"))?;
    let bytes = rt
        .engine
        .precompile_component(wasm)
        .map_err(|e| format!("{e:#}"))?;
    cache
        .put(&rt.cache_key(wasm), &bytes)
        .map_err(|e| format!("cannot write {}: {e}", cache.dir().display()))
}

/// Gives the heap memory freed after compiling back to the system.
/// Cranelift allocates tens of megabytes while compiling a plugin, on
/// several threads, and glibc keeps what was freed in its per-thread arenas:
/// without this, a host that compiled its plugins stays twice the size of
/// one that loaded them from the cache.
pub(crate) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `text` cut to [`MAX_LOG_LINE`] bytes (at a character boundary) with
/// `...` appended when cut: a plugin's log line or error message cannot
/// flood the log, the status file or the reason a report was held.
pub(crate) fn clip(mut text: String) -> String {
    if text.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// A plugin failure for people: what went wrong first (the root cause, e.g.
/// the memory limit or the trap), then where (wasmtime's wasm backtrace). In
/// the other order a long backtrace (a Python plugin's is kilobytes) pushes
/// the cause past [`clip`]'s cut.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let mut chain: Vec<String> = error.chain().map(ToString::to_string).collect();
    let Some(root) = chain.pop() else {
        return error.to_string();
    };
    match chain.is_empty() {
        true => root,
        false => format!("{root}; {}", chain.join(": ")),
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
    use std::path::PathBuf;

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

    /// A core module whose `spin` export counts down from its argument and
    /// never ends for -1.
    const SPIN: &str = r#"(module (func (export "spin") (param i32)
        (loop (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
              (br_if 0 (local.get 0)))))"#;

    #[test]
    fn other_calls_deadlines_do_not_interrupt_a_call_but_its_own_does() {
        let rt = Runtime::new().expect("runtime");
        let module =
            wasmtime::Module::new(&rt.engine, wat::parse_str(SPIN).expect("wat")).expect("module");
        let mut store = rt.store("spin", &PluginSettings::default()).expect("store");
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
        let spin = instance
            .get_typed_func::<i32, ()>(&mut store, "spin")
            .expect("export");
        // Another plugin's deadlines passing all the time, as the watchdog
        // advances the shared epoch for them.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (engine, flag) = (rt.engine.clone(), stop.clone());
        let bumper = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                engine.increment_epoch();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for _ in 0..50 {
            let deadline = arm(&mut store, Duration::from_secs(10));
            let result = rt.calls.run(deadline, spin.call_async(&mut store, 200_000));
            assert!(
                matches!(result, Some(Ok(()))),
                "interrupted by others: {result:?}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        bumper.join().expect("bumper");

        // Alone, a loop is stopped at its own deadline by the watchdog.
        let started = std::time::Instant::now();
        let deadline = arm(&mut store, Duration::from_millis(50));
        let error = match rt.calls.run(deadline, spin.call_async(&mut store, -1)) {
            Some(Err(e)) => e,
            other => panic!("the loop was not interrupted: {other:?}"),
        };
        assert_eq!(classify(&error, false), FailureKind::Timeout, "{error:#}");
        assert!(started.elapsed() >= Duration::from_millis(50));
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
    fn headers_are_recognised() {
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert_eq!(
            check_header(b"\0asm\x01\0\0\0").expect_err("a core module"),
            "is a core WebAssembly module, not a component: build it with --target wasm32-wasip2"
        );
        assert!(check_header(b"ELF").is_err());
    }
}
