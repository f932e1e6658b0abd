//! The `defender-edge` command line: parse, load configuration, wire the
//! pipeline, map outcomes to exit codes. No logic of its own.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use defender_edge::config::Config;
use defender_edge::publish::ipc::{ComponentState, IpcClient, IpcConfig, IpcEndpoint, IpcOptions};
use defender_edge::report::Format;
use defender_edge::status::Status;
use defender_edge::{pipeline, run, status};

/// On-device security monitor for AWS IoT Greengrass fleets.
///
/// Reads the device's listening ports, established connections and traffic
/// from /proc, lets WebAssembly plugins filter and enrich what it saw, judges
/// it against Device Defender security profiles on the device, and delivers
/// Device Defender metrics reports (Greengrass IPC or MQTT) and Splunk HEC
/// events (Amazon Data Firehose).
#[derive(Debug, Parser)]
#[command(
    name = "defender-edge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Collect(CollectArgs),
    Run(RunArgs),
    Status(StatusArgs),
    #[command(subcommand)]
    Plugin(defender_edge::plugin::cli::PluginCommand),
}

/// Print one validated Device Defender report of this machine to stdout.
///
/// Network deltas are taken against the counters saved by the previous
/// `collect` in the state directory; without them network_stats is left out
/// rather than invented. `collect` never sleeps unless --delta-window is given.
/// CBOR is written as raw bytes.
#[derive(Debug, Args)]
struct CollectArgs {
    /// Encoding of the report.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Indent JSON output for people (the bytes published are never indented).
    #[arg(long)]
    pretty: bool,
    /// Root of the proc file system to read [default: /proc, or collect.procRoot].
    #[arg(long, value_name = "DIR")]
    proc_root: Option<PathBuf>,
    /// Thing name [default: thingName, AWS_IOT_THING_NAME, then the host name].
    #[arg(long, value_name = "NAME")]
    thing: Option<String>,
    /// Configuration file (JSON; see docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory [default: stateDir, ./defender-edge-state].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Run the plugins in this directory over the sample (overrides plugins.dir).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Sample twice, this far apart (e.g. 5s, 500ms), and report the traffic
    /// in between instead of since the previous `collect`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    delta_window: Option<Duration>,
    /// Size budget of the encoded report in bytes (overrides report.maxBytes).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<usize>,
    /// Instead of the report, print who holds each listening port and
    /// established connection: pid, user, program, systemd unit, Greengrass
    /// component, or why it is unattributed. `--owners json` prints the
    /// owner table as JSON (with --pretty, indented).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        default_missing_value = "table",
        conflicts_with_all = ["format", "plugins", "delta_window", "max_bytes"]
    )]
    owners: Option<OwnersFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OwnersFormat {
    Table,
    Json,
}

/// Run the component: sample, run plugins and detection, publish.
///
/// Inside Greengrass (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and
/// SVCUID set) reports go over Greengrass IPC and the configuration is read
/// over IPC and followed live; elsewhere the transport is chosen by
/// publish.transport. Each report is also written as an NDJSON line to
/// output.ndjson. SIGTERM and SIGINT stop it cleanly, flushing what it holds.
///
/// Exit status: 0 done (with --once: the report was acknowledged); 1 error;
/// 2 invalid command line or configuration; 3 (--once) the peer could not be
/// reached and the report is safe in the outbox, to be sent by the next run.
#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (JSON; see docs/CONFIGURATION.md). Without it the
    /// embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Publish one report and exit.
    #[arg(long)]
    once: bool,
    /// Plugin directory (overrides plugins.dir).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// State directory (overrides stateDir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// With --once: seconds to wait for the transport's acknowledgement
    /// before leaving the report in the outbox (exit status 3).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    wait: u64,
}

/// Show the counters of the running (or last) `run`, from its state directory.
#[derive(Debug, Args)]
struct StatusArgs {
    /// State directory [default: ./defender-edge-state].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file whose stateDir to read.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Collect(args) => collect(args),
        Command::Run(args) => run(args),
        Command::Status(args) => show_status(args),
        Command::Plugin(cmd) => plugin(cmd),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("defender-edge: {error:#}");
        let config_error = error.chain().any(|e| {
            e.downcast_ref::<defender_edge::config::ConfigError>()
                .is_some()
        });
        ExitCode::from(if config_error { 2 } else { 1 })
    })
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

/// Changes the log filter after start, when the configuration arrives later
/// (over Greengrass IPC). `RUST_LOG` still wins.
struct LogLevel(Option<SetLevel>);

type SetLevel = Box<dyn Fn(&str)>;

impl LogLevel {
    fn set_level(&self, level: &str) {
        if let Some(set) = &self.0 {
            set(level);
        }
    }
}

fn init_logging(default_level: &str) -> LogLevel {
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env
        .or_else(|| tracing_subscriber::EnvFilter::try_new(default_level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries reports. Greengrass logs stderr at WARN.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in Greengrass's
        // log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_err() || fixed {
        return LogLevel(None);
    }
    LogLevel(Some(Box::new(
        move |level: &str| match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(filter) => {
                let _ = handle.reload(filter);
            }
            Err(error) => {
                tracing::warn!(%level, %error, "key `logLevel`: not a log filter; keeping the current one")
            }
        },
    )))
}

fn collect(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(args.config.as_ref())?;
    init_logging(&config.log_level);
    if let Some(dir) = args.proc_root {
        config.collect.proc_root = dir;
    }
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(dir) = args.plugins {
        config.plugins.dir = Some(dir);
    }
    if let Some(bytes) = args.max_bytes {
        config.report.max_bytes = bytes;
    }
    if args.thing.is_some() {
        config.thing_name = args.thing;
    }
    if let Some(format) = args.owners {
        let owners = defender_edge::owners::collect_owners(&config)?;
        let mut out = std::io::stdout().lock();
        match format {
            OwnersFormat::Table => defender_edge::owners::write_table(&owners, &mut out)?,
            OwnersFormat::Json if args.pretty => serde_json::to_writer_pretty(&mut out, &owners)?,
            OwnersFormat::Json => serde_json::to_writer(&mut out, &owners)?,
        }
        if format == OwnersFormat::Json {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    // The report does not use attribution, and a one-shot collect has no
    // earlier scan to build on, so it would pay a full process scan for
    // nothing.
    config.collect.attribution = false;
    let report = pipeline::collect_once(&config, args.format, args.delta_window)?;
    let mut out = std::io::stdout().lock();
    if args.pretty && args.format != Format::Cbor {
        let value: serde_json::Value =
            serde_json::from_slice(&report).context("re-reading the report for --pretty")?;
        serde_json::to_writer_pretty(&mut out, &value)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(&report)?;
        if args.format != Format::Cbor {
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn plugin(cmd: defender_edge::plugin::cli::PluginCommand) -> anyhow::Result<ExitCode> {
    // The plugin commands take the plugins section and the cache of the
    // default configuration; `plugin compile` fills the cache `run` uses.
    let config = match std::env::var_os("DEFENDER_EDGE_CONFIG") {
        Some(path) => Config::load(std::path::Path::new(&path))?,
        None => Config::default(),
    };
    init_logging(&config.log_level);
    // Only `compile --dir` uses the cache: the others (and precompiling for
    // a device on a build machine) leave no state folder behind.
    let uses_cache = matches!(
        cmd,
        defender_edge::plugin::cli::PluginCommand::Compile { file: None, .. }
    );
    let cache = if uses_cache {
        defender_edge::state::StateDir::open(&config.state_dir)?.subdir("plugin-cache")?
    } else {
        std::path::PathBuf::new()
    };
    let mut out = std::io::stdout().lock();
    defender_edge::plugin::cli::run(cmd, &config.plugins, &cache, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let file_config = args.config.as_deref().map(Config::load).transpose()?;
    let log = init_logging(
        file_config
            .as_ref()
            .map_or("info", |config| config.log_level.as_str()),
    );
    let overrides = run::Overrides {
        plugins_dir: args.plugins,
        state_dir: args.state_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let status = Status::new();
        // Inside Greengrass the nucleus is the first peer: it holds the
        // configuration (unless a file was given) and carries reports.
        let ipc = match IpcEndpoint::from_env() {
            Some(endpoint) => {
                let options = IpcOptions {
                    status: Some(status.clone()),
                    ..IpcOptions::default()
                };
                Some(
                    IpcClient::connect(&endpoint.socket_path, &endpoint.svcuid, options)
                        .await
                        .context("connecting to the Greengrass nucleus")?,
                )
            }
            None => None,
        };
        let live_configuration = file_config.is_none() && ipc.is_some();
        let mut config = match (file_config, &ipc) {
            (Some(config), _) => config,
            (None, Some(ipc)) => match run::greengrass_configuration(ipc).await {
                Ok(config) => {
                    log.set_level(&config.log_level);
                    config
                }
                Err(error) => {
                    let _ = ipc.update_state(ComponentState::Errored).await;
                    return Err(error);
                }
            },
            (None, None) => Config::default(),
        };
        overrides.apply(&mut config);
        // The first connection used the default client settings, because
        // the configuration was not known yet; reconnect when it sets others.
        let ipc = match (ipc, IpcEndpoint::from_env()) {
            (Some(_), Some(endpoint)) if config.publish.ipc != IpcConfig::default() => {
                let options = IpcOptions {
                    status: Some(status.clone()),
                    ..config.publish.ipc.options()
                };
                Some(
                    IpcClient::connect(&endpoint.socket_path, &endpoint.svcuid, options)
                        .await
                        .context("connecting to the Greengrass nucleus")?,
                )
            }
            (ipc, _) => ipc,
        };
        let options = run::RunOptions {
            once: args.once,
            once_wait: Duration::from_secs(args.wait),
            overrides,
            live_configuration,
        };
        run::run(config, ipc, status, options).await
    })?;
    Ok(ExitCode::from(outcome.exit_code()))
}

fn show_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_ref())?;
    let dir = args.state_dir.unwrap_or(config.state_dir);
    let snapshot = match status::read(&dir) {
        Ok(snapshot) => snapshot,
        Err(message) => {
            bail!("{message}; has `defender-edge run` been started with this state directory?")
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &snapshot)?;
        writeln!(out)?;
    } else {
        out.write_all(status::render_table(&snapshot, defender_edge::state::now_ms()).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}
