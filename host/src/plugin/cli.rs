//! `defender-edge plugin ...`: scaffold, check, try and precompile plugins.
//! The binary hooks [`PluginCommand`] in as a subcommand and calls [`run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::cache::CompileCache;
use super::runtime::{self, Runtime, WIT_PACKAGE, WIT_VERSION};
use super::{Grants, PluginHost, PluginSettings, PluginsConfig, Processed};
use crate::sample::Sample;
use crate::status::Status;

/// `defender-edge plugin <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Create a plugin project from the SDK template, in `<dir>/<name>`
    New {
        /// Plugin name: lowercase letters, digits and dashes
        name: String,
        /// Where to create the project folder
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The language to write the plugin in
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Use the SDK in this folder (plugins/sdk or plugins/sdk-python of
        /// a defender-edge checkout) by path, for work on the SDK itself.
        /// Without it the project gets its own copy of the SDK this binary
        /// carries, in `<name>/sdk`, for this host's interface version, and
        /// builds anywhere
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Tell whether a .wasm file is a plugin this host can load, and list
    /// what it imports and exports
    Check {
        /// The plugin (a WebAssembly component)
        file: PathBuf,
    },
    /// Run a plugin once on a sample and print a summary: the outcome, the
    /// time, the alerts raised and what changed (entries dropped or added
    /// per list, custom metrics, annotations)
    Test {
        /// The plugin: a WebAssembly component (.wasm), or one precompiled
        /// for this host by `plugin compile` (.cwasm; naming it here trusts it)
        file: PathBuf,
        /// The sample: what `defender-edge collect --format sample` prints,
        /// or a Device Defender report as `collect` prints it (json,
        /// json-short or cbor; a report carries no thing name, annotations
        /// or alerts, docs/PLUGINS.md)
        #[arg(long)]
        sample: PathBuf,
        /// Print the resulting sample after the summary
        #[arg(long)]
        full: bool,
        /// Print one JSON object (summary and resulting sample) instead, for
        /// tools; its fields are listed in docs/PLUGINS.md
        #[arg(long, conflicts_with = "full")]
        json: bool,
        /// A configuration entry for the plugin's init, repeatable
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// Grant read-only access to a host directory, repeatable
        #[arg(long = "grant-dir", value_name = "GUEST=HOST", value_parser = key_value)]
        grant_dirs: Vec<(String, String)>,
    },
    /// Precompile one plugin for a device (FILE, --target, -o), or compile
    /// every plugin in the plugin directory into this host's cache (--dir)
    Compile {
        /// A plugin (.wasm) to precompile into a .cwasm artifact for the
        /// device given by --target; a host loads it only with
        /// `plugins.trustPrecompiled: true`
        #[arg(conflicts_with = "dir")]
        file: Option<PathBuf>,
        /// The device's architecture; defaults to this machine (and its CPU's
        /// features)
        #[arg(long, value_enum, requires = "file")]
        target: Option<Target>,
        /// Where to write the artifact; defaults to FILE with the extension
        /// .cwasm
        #[arg(short, long, requires = "file")]
        output: Option<PathBuf>,
        /// The plugin directory to compile into the cache; defaults to
        /// `plugins.dir` of the configuration
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Compile the component on standard input into the compile cache at
    /// --cache. The running host starts this to compile in a process whose
    /// memory goes back to the system when it exits; not for people.
    #[command(hide = true)]
    CompileIntoCache {
        #[arg(long)]
        cache: PathBuf,
    },
}

/// A device architecture to precompile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// 64-bit x86 (Cranelift, baseline CPU features)
    #[value(name = "x86_64")]
    X86_64,
    /// 64-bit ARM: Raspberry Pi OS 64-bit, Pi 3/4/5 (Cranelift)
    Aarch64,
    /// 32-bit ARM: Raspberry Pi OS 32-bit (the Pulley interpreter, as the
    /// armv7 host runs it: Cranelift has no 32-bit ARM backend)
    Armv7,
}

impl Target {
    /// The wasmtime target the device's host engine uses.
    pub fn wasmtime_target(self) -> &'static str {
        match self {
            Target::X86_64 => "x86_64-unknown-linux-gnu",
            Target::Aarch64 => "aarch64-unknown-linux-gnu",
            // Little-endian 32-bit Pulley bytecode: what wasmtime picks by
            // default on armv7 (`Triple::pulley_host()`).
            Target::Armv7 => "pulley32",
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, found {s:?}"))
}

/// Runs a plugin command, writing its report to `out`. `config` is the
/// `plugins` section (for `compile`: the directory and nothing else), and
/// `cache_dir` the host's compile cache (under the state directory).
pub fn run(
    cmd: PluginCommand,
    config: &PluginsConfig,
    cache_dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New {
            name,
            dir,
            lang,
            sdk,
        } => new(&name, &dir, lang, sdk.as_deref(), out),
        PluginCommand::Check { file } => check(&file, out),
        PluginCommand::Test {
            file,
            sample,
            full,
            json,
            config,
            grant_dirs,
        } => {
            let view = match (full, json) {
                (_, true) => View::Json,
                (true, false) => View::Full,
                (false, false) => View::Summary,
            };
            test(&file, &sample, config, grant_dirs, view, out)
        }
        PluginCommand::Compile {
            file: Some(file),
            target,
            output,
            dir: _,
        } => {
            let output = output.unwrap_or_else(|| file.with_extension("cwasm"));
            precompile(&file, target, &output, out)
        }
        PluginCommand::CompileIntoCache { cache } => {
            let mut wasm = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut wasm)
                .context("reading the component from standard input")?;
            let cache = CompileCache::open(&cache)
                .with_context(|| format!("compile cache {}", cache.display()))?;
            let path = runtime::compile_into_cache(&wasm, &cache).map_err(anyhow::Error::msg)?;
            writeln!(out, "{}", path.display())?;
            Ok(())
        }
        PluginCommand::Compile {
            file: None, dir, ..
        } => {
            let dir = dir.or_else(|| config.dir.clone()).context(
                "no plugin directory: pass --dir or set plugins.dir in the configuration",
            )?;
            compile(&dir, cache_dir, out)
        }
    }
}

const TEMPLATE: [(&str, &str); 5] = [
    (
        "Cargo.toml",
        include_str!("../../../plugins/template/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/template/src/lib.rs.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/template/README.md.tmpl"),
    ),
    (
        "sample.json",
        include_str!("../../../plugins/template/sample.json.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugins/template/gitignore.tmpl"),
    ),
];

/// A plugin language `plugin new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A cdylib crate on plugins/sdk, built with cargo for wasm32-wasip2
    Rust,
    /// An app module on plugins/sdk-python, built with componentize-py
    Python,
}

/// The Rust SDK as this binary carries it, written into a new project's
/// `sdk/` folder (its Cargo.toml is made from the checkout's by
/// [`standalone_sdk_manifest`]). The WIT is the host's own, so the plugin
/// is built for the interface version this host loads.
const RUST_SDK: [(&str, &str); 6] = [
    (
        "sdk/README.md",
        include_str!("../../../plugins/sdk/README.md"),
    ),
    (
        "sdk/src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "sdk/src/types.rs",
        include_str!("../../../plugins/sdk/src/types.rs"),
    ),
    (
        "sdk/src/guest.rs",
        include_str!("../../../plugins/sdk/src/guest.rs"),
    ),
    (
        "sdk/src/log.rs",
        include_str!("../../../plugins/sdk/src/log.rs"),
    ),
    (
        "sdk/wit/plugin.wit",
        include_str!("../../../wit/plugin.wit"),
    ),
];

/// The Rust SDK's manifest in the checkout (workspace-inherited fields).
const RUST_SDK_MANIFEST: &str = include_str!("../../../plugins/sdk/Cargo.toml");

/// The Python SDK as this binary carries it, for a new project's `sdk/`.
const PYTHON_SDK: [(&str, &str); 5] = [
    (
        "sdk/defender_plugin/__init__.py",
        include_str!("../../../plugins/sdk-python/defender_plugin/__init__.py"),
    ),
    (
        "sdk/defender_plugin/_export.py",
        include_str!("../../../plugins/sdk-python/defender_plugin/_export.py"),
    ),
    (
        "sdk/defender_plugin/_types.py",
        include_str!("../../../plugins/sdk-python/defender_plugin/_types.py"),
    ),
    (
        "sdk/defender_plugin/log.py",
        include_str!("../../../plugins/sdk-python/defender_plugin/log.py"),
    ),
    (
        "sdk/wit/plugin.wit",
        include_str!("../../../wit/plugin.wit"),
    ),
];

/// The SDK's Cargo.toml for a copy outside the defender-edge workspace:
/// the workspace-inherited fields get this release's values (the workspace
/// and the host share them), so the copy's version is the host's.
fn standalone_sdk_manifest() -> String {
    RUST_SDK_MANIFEST
        .lines()
        .map(|line| match line.trim() {
            "version.workspace = true" => format!("version = \"{}\"", env!("CARGO_PKG_VERSION")),
            "edition.workspace = true" => format!("edition = \"{SDK_EDITION}\""),
            "rust-version.workspace = true" => {
                format!("rust-version = \"{}\"", env!("CARGO_PKG_RUST_VERSION"))
            }
            "license.workspace = true" => format!("license = \"{}\"", env!("CARGO_PKG_LICENSE")),
            _ => line.to_owned(),
        })
        .chain(std::iter::once(String::new()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The workspace's edition (Cargo.toml `[workspace.package]`); a test
/// checks the two agree.
const SDK_EDITION: &str = "2024";

/// The componentize-py release the Python SDK is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const PYTHON_TEMPLATE: [(&str, &str); 6] = [
    (
        "app.py",
        include_str!("../../../plugins/sdk-python/template/app.py.tmpl"),
    ),
    (
        "test_app.py",
        include_str!("../../../plugins/sdk-python/template/test_app.py.tmpl"),
    ),
    (
        "build.sh",
        include_str!("../../../plugins/sdk-python/template/build.sh.tmpl"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/sdk-python/template/README.md.tmpl"),
    ),
    (
        "sample.json",
        include_str!("../../../plugins/template/sample.json.tmpl"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugins/sdk-python/template/gitignore.tmpl"),
    ),
];

fn new(
    name: &str,
    parent: &Path,
    lang: Lang,
    sdk: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "plugin name {name:?} must start with a-z and use only a-z, 0-9 and -, at most 64 characters"
        );
    }
    let (marker, template, carried, next) = match lang {
        Lang::Rust => (
            "Cargo.toml",
            &TEMPLATE[..],
            &RUST_SDK[..],
            "cargo test && cargo build --target wasm32-wasip2 --release",
        ),
        Lang::Python => (
            "defender_plugin/__init__.py",
            &PYTHON_TEMPLATE[..],
            &PYTHON_SDK[..],
            "./build.sh test && ./build.sh",
        ),
    };
    // `--sdk` points at a checkout's SDK (absolute, for work on the SDK);
    // otherwise the project carries its own copy, referred to relatively.
    let sdk = match sdk {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("--sdk {}", path.display()))?;
            if !path.join(marker).is_file() {
                bail!("--sdk {}: no {marker} there", path.display());
            }
            Some(path)
        }
        None => None,
    };
    let root = parent.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let sdk_path = sdk
        .as_ref()
        .map_or_else(|| "sdk".to_owned(), |p| p.display().to_string());
    let mut files: Vec<(&str, String)> = template
        .iter()
        .map(|&(rel, text)| (rel, text.to_owned()))
        .collect();
    if sdk.is_none() {
        files.extend(carried.iter().map(|&(rel, text)| (rel, text.to_owned())));
        if lang == Lang::Rust {
            files.push(("sdk/Cargo.toml", standalone_sdk_manifest()));
        }
    }
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{type_name}}", &type_name)
            .replace("{{sdk_path}}", &sdk_path)
            .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        #[cfg(unix)]
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    match &sdk {
        Some(path) => writeln!(out, "created {} (SDK: {})", root.display(), path.display())?,
        None => writeln!(
            out,
            "created {} (SDK {} in {}/sdk, interface {WIT_PACKAGE}@{WIT_VERSION})",
            root.display(),
            env!("CARGO_PKG_VERSION"),
            root.display(),
        )?,
    }
    writeln!(out, "next: cd {} && {next}", root.display())?;
    Ok(())
}

fn check(file: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rt = Runtime::new().map_err(|e| anyhow::anyhow!("cannot create the engine: {e:#}"))?;
    writeln!(
        out,
        "file:     {} ({} bytes, sha256 {:x})",
        file.display(),
        wasm.len(),
        Sha256::digest(&wasm)
    )?;
    let (component, inspection) = runtime::inspect(&rt.engine, &wasm)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    writeln!(out, "imports:")?;
    for name in &inspection.imports {
        let note = if name.starts_with("wasi:") {
            "  (WASI: nothing granted unless configured)"
        } else {
            ""
        };
        writeln!(out, "  {name}{note}")?;
    }
    writeln!(out, "exports:")?;
    for name in &inspection.exports {
        writeln!(out, "  {name}")?;
    }
    runtime::check_world(&rt.engine, &component)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    rt.linker.instantiate_pre(&component).map_err(|e| {
        anyhow::anyhow!(
            "{}: imports something this host does not provide: {e:#}",
            file.display()
        )
    })?;
    writeln!(
        out,
        "ok: a {WIT_PACKAGE} plugin this host ({WIT_PACKAGE}@{WIT_VERSION}) can load"
    )?;
    Ok(())
}

/// What `plugin test` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Summary,
    Full,
    Json,
}

fn test(
    file: &Path,
    sample: &Path,
    config: Vec<(String, String)>,
    grant_dirs: Vec<(String, String)>,
    view: View,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(sample).with_context(|| format!("cannot read {}", sample.display()))?;
    let (input, read_as) = read_sample(&bytes).with_context(|| sample.display().to_string())?;
    let name = file
        .file_stem()
        .map(|s| super::plugin_name_of(&s.to_string_lossy()))
        .unwrap_or_else(|| "plugin".into());
    let settings = PluginSettings {
        config: config.into_iter().collect(),
        grants: Grants {
            read_dirs: grant_dirs
                .into_iter()
                .map(|(g, h)| (g, PathBuf::from(h)))
                .collect(),
            clock: false,
        },
        ..PluginSettings::default()
    };
    let status = Status::new();
    let started = Instant::now();
    let host = PluginHost::single(&name, file, settings, status.clone())?;
    let loaded = started.elapsed();
    let started = Instant::now();
    let processed = host.process(input.clone());
    let took = started.elapsed();
    let counters = status.snapshot(0).values;
    // "precompiled" for a .cwasm, "compiled" for a .wasm: tells a partner
    // whether the device would pay the compile.
    let from = match counters.get(&format!("plugin.{name}.loaded_from")) {
        Some(crate::status::Value::Text(t)) => t.clone(),
        _ => "not loaded".to_owned(),
    };
    let failure = counters
        .iter()
        .find(|(k, _)| k.ends_with(".last_error"))
        .map(|(_, v)| match v {
            crate::status::Value::Text(t) => t.clone(),
            other => format!("{other:?}"),
        });
    let rejected = counters.keys().any(|k| k.ends_with(".rejected"));
    let (outcome, detail, output) = match processed {
        Processed::Pass(sample) => match (failure, rejected) {
            (Some(f), _) => ("failed", Some(f), Some(sample)),
            (None, true) => ("rejected", None, Some(sample)),
            (None, false) => ("pass", None, Some(sample)),
        },
        Processed::Dropped { .. } => ("dropped", None, None),
        Processed::Held { reason, .. } => ("held", Some(reason), None),
    };
    let changes = output.as_ref().map(|after| Changes::between(&input, after));
    if view == View::Json {
        let value = serde_json::json!({
            "plugin": name,
            "loaded_from": from,
            "load_ms": loaded.as_millis() as u64,
            "run_us": took.as_micros() as u64,
            "input": read_as,
            "outcome": outcome,
            "error": detail,
            "alerts": changes.as_ref().map_or(&[][..], |c| &c.alerts[..]),
            "changes": changes,
            "sample": output,
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "plugin:  {name} ({from}, loaded in {} ms, ran in {} µs)",
        loaded.as_millis(),
        took.as_micros()
    )?;
    if read_as != "sample" {
        writeln!(
            out,
            "input:   a {read_as} report, read as a sample (no thing name, annotations or alerts)"
        )?;
    }
    match (outcome, &detail) {
        ("failed", Some(f)) => writeln!(
            out,
            "outcome: failed, sample passed on unchanged (fail-open): {f}"
        )?,
        ("rejected", _) => writeln!(
            out,
            "outcome: output rejected, sample passed on unchanged (see log)"
        )?,
        ("dropped", _) => writeln!(out, "outcome: report dropped by the plugin")?,
        ("held", Some(reason)) => writeln!(out, "outcome: report held: {reason}")?,
        _ => writeln!(out, "outcome: {outcome}")?,
    }
    let (Some(changes), Some(sample)) = (changes, output) else {
        return Ok(());
    };
    writeln!(out, "alerts:  {}", changes.alerts.len())?;
    for a in &changes.alerts {
        writeln!(out, "  [{}] {}: {}", a.severity.as_str(), a.name, a.message)?;
    }
    writeln!(out, "lists:")?;
    for (list, change) in &changes.lists {
        let mut line = format!("{list}: {} of {} dropped", change.dropped, change.before);
        if change.added > 0 {
            line += &format!(", {} added", change.added);
        }
        writeln!(out, "  {line}")?;
    }
    let names = |m: &Vec<String>| m.join(", ");
    let mut metrics = Vec::new();
    for (what, list) in [
        ("added", &changes.metrics_added),
        ("changed", &changes.metrics_changed),
        ("removed", &changes.metrics_removed),
    ] {
        if !list.is_empty() {
            metrics.push(format!("{} {what} ({})", list.len(), names(list)));
        }
    }
    writeln!(
        out,
        "metrics: {}",
        if metrics.is_empty() {
            "none added".to_owned()
        } else {
            metrics.join(", ")
        }
    )?;
    let mut annotations: Vec<String> = changes
        .annotations_set
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    annotations.extend(changes.annotations_removed.iter().map(|k| format!("-{k}")));
    writeln!(
        out,
        "annotations: {}",
        if annotations.is_empty() {
            "none set".to_owned()
        } else {
            annotations.join(", ")
        }
    )?;
    if changes.network_stats_changed {
        writeln!(out, "network_stats: changed")?;
    }
    if view == View::Full {
        writeln!(out, "sample:")?;
        serde_json::to_writer_pretty(&mut *out, &sample)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "(--full prints the resulting sample, --json all of it for tools)"
        )?;
    }
    Ok(())
}

/// What a plugin did to a sample, for `plugin test`'s summary and `--json`.
#[derive(Debug, serde::Serialize)]
struct Changes {
    /// Per list: its entries before, how many the plugin dropped and added.
    lists: std::collections::BTreeMap<&'static str, ListChange>,
    metrics_added: Vec<String>,
    metrics_changed: Vec<String>,
    metrics_removed: Vec<String>,
    annotations_set: std::collections::BTreeMap<String, String>,
    annotations_removed: Vec<String>,
    network_stats_changed: bool,
    #[serde(skip)]
    alerts: Vec<crate::sample::Alert>,
}

#[derive(Debug, serde::Serialize)]
struct ListChange {
    before: usize,
    after: usize,
    dropped: usize,
    added: usize,
}

impl ListChange {
    fn of<T: PartialEq>(before: &[T], after: &[T]) -> ListChange {
        ListChange {
            before: before.len(),
            after: after.len(),
            dropped: before.iter().filter(|e| !after.contains(e)).count(),
            added: after.iter().filter(|e| !before.contains(e)).count(),
        }
    }
}

impl Changes {
    fn between(before: &Sample, after: &Sample) -> Changes {
        let lists = [
            (
                "listening_tcp_ports",
                ListChange::of(&before.listening_tcp_ports, &after.listening_tcp_ports),
            ),
            (
                "listening_udp_ports",
                ListChange::of(&before.listening_udp_ports, &after.listening_udp_ports),
            ),
            (
                "established_connections",
                ListChange::of(
                    &before.established_connections,
                    &after.established_connections,
                ),
            ),
        ]
        .into_iter()
        .collect();
        Changes {
            lists,
            metrics_added: after
                .custom_metrics
                .keys()
                .filter(|k| !before.custom_metrics.contains_key(*k))
                .cloned()
                .collect(),
            metrics_changed: after
                .custom_metrics
                .iter()
                .filter(|(k, v)| before.custom_metrics.get(*k).is_some_and(|b| b != *v))
                .map(|(k, _)| k.clone())
                .collect(),
            metrics_removed: before
                .custom_metrics
                .keys()
                .filter(|k| !after.custom_metrics.contains_key(*k))
                .cloned()
                .collect(),
            annotations_set: after
                .annotations
                .iter()
                .filter(|(k, v)| before.annotations.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            annotations_removed: before
                .annotations
                .keys()
                .filter(|k| !after.annotations.contains_key(*k))
                .cloned()
                .collect(),
            network_stats_changed: before.network_stats != after.network_stats,
            alerts: after.alerts[before.alerts.len().min(after.alerts.len())..].to_vec(),
        }
    }
}

/// The sample in `bytes` and what it was read as: a sample (JSON, as
/// `collect --format sample` prints it), or a Device Defender report in
/// any format `collect` writes ("json", "json-short", "cbor").
fn read_sample(bytes: &[u8]) -> anyhow::Result<(Sample, &'static str)> {
    use crate::report::{self, Format};
    let text = std::str::from_utf8(bytes).ok();
    let Some(text) = text.filter(|t| t.trim_start().starts_with('{')) else {
        let report = report::decode(bytes, Format::Cbor).map_err(|e| {
            anyhow::anyhow!("neither a sample (JSON) nor a Device Defender report (CBOR: {e})")
        })?;
        return Ok((report::to_sample(&report)?, "cbor"));
    };
    let as_sample = match serde_json::from_str::<Sample>(text) {
        Ok(sample) => return Ok((sample, "sample")),
        Err(e) => e,
    };
    let report = report::decode(bytes, Format::Json).map_err(|e| {
        anyhow::anyhow!("neither a sample ({as_sample}) nor a Device Defender report ({e})")
    })?;
    let short = text.contains("\"hed\"");
    Ok((
        report::to_sample(&report)?,
        if short { "json-short" } else { "json" },
    ))
}

/// Precompiles `file` for `target` into `output` (temp file + rename, so a
/// watching host never sees half an artifact). For this machine the result
/// is loaded back, which checks it end to end; a cross-target artifact is
/// checked by the device's host when it loads it.
fn precompile(
    file: &Path,
    target: Option<Target>,
    output: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if output.extension().is_none_or(|e| e != "cwasm") {
        bail!(
            "-o {}: a precompiled plugin must end in .cwasm, which is how the host recognises it",
            output.display()
        );
    }
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let started = Instant::now();
    let bytes = runtime::precompile_for(target.map(Target::wasmtime_target), &wasm)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    let took = started.elapsed();
    let tmp = output.with_extension(format!("cwasm.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))?;
    let target_name = match target {
        Some(t) => t.wasmtime_target().to_owned(),
        None => "this machine".to_owned(),
    };
    writeln!(
        out,
        "{}: {} bytes for {target_name} (wasmtime {}) in {} ms",
        output.display(),
        bytes.len(),
        runtime::WASMTIME_VERSION,
        took.as_millis()
    )?;
    if target.is_none() {
        let rt = Runtime::new().map_err(|e| anyhow::anyhow!("cannot create the engine: {e:#}"))?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        rt.load_precompiled(&name, output)?;
        writeln!(out, "ok: loads on this host")?;
    }
    Ok(())
}

fn compile(dir: &Path, cache_dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = Runtime::new().map_err(|e| anyhow::anyhow!("cannot create the engine: {e:#}"))?;
    let cache = CompileCache::open(cache_dir)
        .with_context(|| format!("compile cache {}", cache_dir.display()))?;
    let files = super::plugin_files(dir)
        .with_context(|| format!("plugin directory {}", dir.display()))?
        .into_iter()
        .filter(|(_, path)| path.extension().is_some_and(|e| e == "wasm"));
    let mut failed = Vec::new();
    for (name, path) in files {
        let wasm =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let started = Instant::now();
        match rt.load(&name, &wasm, Some(&cache)) {
            Ok(_) => writeln!(
                out,
                "{name}: {} ({} ms)",
                cache
                    .get(&rt.cache_key(&wasm))
                    .map_or_else(|| "not cached".to_owned(), |(p, _)| p.display().to_string()),
                started.elapsed().as_millis()
            )?,
            Err(e) => {
                writeln!(out, "{e}")?;
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} plugin(s) failed to compile: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy's manifest stands alone, with the workspace's values.
    #[test]
    fn the_carried_sdk_manifest_inherits_nothing() {
        let manifest = standalone_sdk_manifest();
        assert!(!manifest.contains(".workspace"), "{manifest}");
        assert!(
            manifest.contains(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))),
            "{manifest}"
        );
        let workspace = include_str!("../../../Cargo.toml");
        assert!(
            workspace.contains(&format!("edition = \"{SDK_EDITION}\"")),
            "SDK_EDITION must be the workspace's edition"
        );
    }
}
