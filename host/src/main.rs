//! The `defender-edge` command line: parse, load configuration, wire the
//! pipeline, map outcomes to exit codes. No logic of its own.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use defender_edge::config::Config;
use defender_edge::greengrass::Nucleus;
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
    // `plugin compile --config` and the help's word on DEFENDER_EDGE_CONFIG
    // are added here because plugin/cli.rs is being reworked on another
    // branch; they belong in its `Compile` variant once that lands.
    #[command(
        subcommand,
        after_help = PLUGIN_CONFIG_HELP,
        mut_subcommand("compile", |c| c
            .arg(
                clap::Arg::new(PLUGIN_CONFIG_ARG)
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .env("DEFENDER_EDGE_CONFIG")
                    .help("Configuration file whose plugins section and stateDir to use (JSON; docs/CONFIGURATION.md)"),
            )
            .after_help(PLUGIN_CONFIG_HELP)),
        mut_subcommand("check", |c| c.after_help(PLUGIN_CONFIG_HELP)),
        mut_subcommand("test", |c| c.after_help(PLUGIN_CONFIG_HELP)),
    )]
    Plugin(defender_edge::plugin::cli::PluginCommand),
    #[command(subcommand)]
    Config(ConfigCommand),
    Baseline(BaselineArgs),
}

/// Turn a profile's statistical thresholds into the fleet's percentiles.
///
/// Device Defender ranked a device's datapoint against every device's;
/// on the device a statisticalThreshold is a percentile of the device's own
/// history. This reads the events the fleet already sends, forms each
/// device's datapoints as the detector does (one per report period; traffic
/// summed over durationSeconds in whole periods), and writes the profile
/// with each statistical behavior's percentile over the fleet as a fixed
/// value (count, or number for a custom metric), same operator, duration and
/// datapoints. Other behaviors are copied; the description says where the
/// thresholds came from. Deploy the result as detection.profiles or
/// profilePaths (docs/DETECTION.md, section 4).
///
/// Events: HEC events as Firehose delivers them to S3 (newline-separated or
/// concatenated, not gzip), and Device Defender reports (output.ndjson,
/// `collect`), whose file names their thing (edge-01.ndjson). A behavior
/// the events give no datapoint for stays statistical, with a warning.
///
/// Exit status: 0 written; 1 error; 2 invalid profile or events (the file
/// and line), empty input, or no statistical behavior with data.
#[derive(Debug, Args)]
struct BaselineArgs {
    /// The security profile (AWS's JSON format) whose statistical behaviors to resolve.
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// Event files, or folders read recursively (an S3 prefix synced to disk).
    /// Repeatable. Without it, standard input is read.
    #[arg(long, value_name = "FILE|DIR", num_args = 1..)]
    events: Vec<PathBuf>,
    /// The fleet's report.intervalSeconds: how many reports one traffic datapoint sums.
    #[arg(long, value_name = "SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    report_interval: u64,
    /// Write the profile here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Check the configuration.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check(ConfigCheckArgs),
}

/// Check a configuration the way `run` would start it, without running:
/// the document (every key), the thing name, the proc root, the security
/// profiles, and every plugin in the plugin folder (compiled and
/// initialised with its settings, nothing cached).
///
/// The configuration is --config FILE, else the file DEFENDER_EDGE_CONFIG
/// names, else, as a Greengrass component (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT
/// and SVCUID set), the component configuration, else the embedded defaults.
/// Prints one line per check. Exit status: 0 valid; 2 invalid (the first
/// problem in the document, or every plugin that does not load); 1 error.
#[derive(Debug, Args)]
struct ConfigCheckArgs {
    /// Configuration file (JSON; see docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE", env = "DEFENDER_EDGE_CONFIG")]
    config: Option<PathBuf>,
}

/// Print one validated Device Defender report of this machine to stdout,
/// or with `--format sample` the sample plugins work on (`plugin test
/// --sample` takes either).
///
/// Network deltas are taken against the counters saved by the previous
/// `collect` in the state directory; without them network_stats is left out
/// rather than invented. `collect` never sleeps unless --delta-window is given.
/// CBOR is written as raw bytes. With security profiles configured the
/// sample is judged too and alarms are logged on stderr (docs/DETECTION.md);
/// nothing of detection is saved.
///
/// Exit status: 0 printed; 1 error; 2 invalid configuration, security
/// profile, plugin folder or proc root.
#[derive(Debug, Args)]
struct CollectArgs {
    /// Encoding of the report.
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
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

/// What `collect` prints: a report format, or the sample. The report module
/// knows nothing of the command line; this says its formats the way clap
/// lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormatArg {
    Report(Format),
    Sample,
}

impl clap::ValueEnum for FormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            FormatArg::Report(Format::Json),
            FormatArg::Report(Format::JsonShort),
            FormatArg::Report(Format::Cbor),
            FormatArg::Sample,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            FormatArg::Report(format) => {
                clap::builder::PossibleValue::new(format.name()).help(format.description())
            }
            FormatArg::Sample => clap::builder::PossibleValue::new("sample").help(
                "Not a report: the sample as the pipeline ends with it (after the plugins, \
                 with annotations and alerts), JSON, as `plugin test --sample` takes it",
            ),
        })
    }
}

/// Run the component: sample, run plugins and detection, publish.
///
/// Inside Greengrass (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and
/// SVCUID set) reports go over Greengrass IPC and the configuration is read
/// over IPC and followed live; elsewhere the transport is chosen by
/// publish.transport. Each report is also written as an NDJSON line to
/// output.ndjson (standard output by default), and every alarm, clear, plugin
/// alert and change of annotations as an NDJSON line with a `type` field to
/// output.events (standard output by default; docs/CONFIGURATION.md). On a
/// terminal, or with --human, standard output gets one readable line each
/// instead. SIGTERM and SIGINT stop it cleanly, flushing what it holds.
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
    /// One readable line per alarm, clear, alert and report on standard
    /// output, even when it is not a terminal (the default on a terminal).
    #[arg(long)]
    human: bool,
}

/// Show whether `run` is running, its open alarms and its counters, from
/// its state directory.
///
/// The first lines say whether the process that wrote the status file still
/// runs (its pid is checked) and how old the file is; `run` rewrites it
/// after every sample. Exit status: 0 shown; 1 no status file.
#[derive(Debug, Args)]
struct StatusArgs {
    /// State directory [default: stateDir of --config, ./defender-edge-state].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file whose stateDir to read.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Show it again every SECONDS (2 when no value is given) until
    /// interrupted, like `top`.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2", value_parser = parse_duration)]
    watch: Option<Duration>,
}

/// The id of `plugin compile --config`.
const PLUGIN_CONFIG_ARG: &str = "config_file";

const PLUGIN_CONFIG_HELP: &str = "Environment: DEFENDER_EDGE_CONFIG=FILE gives the plugin commands a configuration \
file (its plugins section: settings, limits, grants, plugins.dir; and stateDir, whose plugin-cache \
`compile --dir` fills). Without it the embedded defaults apply.";

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let plugin_config = matches
        .subcommand_matches("plugin")
        .and_then(|m| m.subcommand_matches("compile"))
        .and_then(|m| m.get_one::<PathBuf>(PLUGIN_CONFIG_ARG))
        .cloned();
    let outcome = match cli.command {
        Command::Collect(args) => collect(args),
        Command::Run(args) => run(args),
        Command::Status(args) => show_status(args),
        Command::Plugin(cmd) => plugin(cmd, plugin_config),
        Command::Config(ConfigCommand::Check(args)) => config_check(args),
        Command::Baseline(args) => baseline(args),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("defender-edge: {}", one_message(&error));
        ExitCode::from(if invalid_input(&error) { 2 } else { 1 })
    })
}

/// The error and its causes on one line, each said once: a cause whose text
/// the message already holds (an error that prints its source) is skipped.
fn one_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Whether the error is the user's input (exit status 2): the configuration,
/// a security profile, the plugin folder, the proc root.
fn invalid_input(error: &anyhow::Error) -> bool {
    use defender_edge::detect::DetectError;
    use defender_edge::plugin::PluginError;
    error.chain().any(|e| {
        e.is::<defender_edge::config::ConfigError>()
            || e.is::<defender_edge::collect::ProcRootError>()
            || e.is::<defender_edge::detect::baseline::BaselineError>()
            || matches!(
                e.downcast_ref::<DetectError>(),
                Some(
                    DetectError::Read { .. }
                        | DetectError::Invalid(_)
                        | DetectError::DuplicateProfile { .. }
                )
            )
            || matches!(
                e.downcast_ref::<PluginError>(),
                Some(PluginError::Dir { .. })
            )
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
    let format = match args.format {
        FormatArg::Report(format) => format,
        FormatArg::Sample => {
            let sample = pipeline::collect_sample(&config, args.delta_window)?;
            let mut out = std::io::stdout().lock();
            if args.pretty {
                serde_json::to_writer_pretty(&mut out, &sample)?;
            } else {
                serde_json::to_writer(&mut out, &sample)?;
            }
            out.write_all(b"\n")?;
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let report = pipeline::collect_once(&config, format, args.delta_window)?;
    let mut out = std::io::stdout().lock();
    if args.pretty && format != Format::Cbor {
        let value: serde_json::Value =
            serde_json::from_slice(&report).context("re-reading the report for --pretty")?;
        serde_json::to_writer_pretty(&mut out, &value)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(&report)?;
        if format != Format::Cbor {
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn plugin(
    cmd: defender_edge::plugin::cli::PluginCommand,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    // The plugin commands take the plugins section and the cache of the
    // configuration (`compile --config`, DEFENDER_EDGE_CONFIG, else the
    // defaults); `plugin compile` fills the cache `run` uses.
    let config_file =
        config_file.or_else(|| std::env::var_os("DEFENDER_EDGE_CONFIG").map(PathBuf::from));
    let config = load_config(config_file.as_ref())?;
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

fn config_check(args: ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = match &args.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match runtime.block_on(Nucleus::read_configuration(&Status::new()))? {
                Some(config) => (config, "the Greengrass component configuration".to_owned()),
                None => (Config::default(), "the embedded defaults".to_owned()),
            }
        }
    };
    // Every problem is printed below, once; RUST_LOG shows the log.
    init_logging("off");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ok  configuration: {origin}")?;
    let thing = pipeline::thing_name(&config)?;
    writeln!(out, "ok  thing name: {thing}")?;
    defender_edge::collect::check_proc_root(&config.collect.proc_root)?;
    writeln!(out, "ok  proc root: {}", config.collect.proc_root.display())?;
    let status = Status::new();
    let scratch = Scratch::new()?;
    defender_edge::detect::Detector::new(
        &config.detection,
        scratch.path(),
        &status,
        std::time::Duration::from_secs(config.report.interval_seconds),
    )
    .context("loading the security profiles (detection)")?;
    writeln!(
        out,
        "ok  security profiles: {} ({} behaviors judged on the device, {} skipped)",
        status.number("detect.profiles"),
        status.number("detect.behaviors"),
        status.number("detect.behaviors_skipped")
    )?;
    let Some(dir) = &config.plugins.dir else {
        writeln!(out, "ok  plugins: none (plugins.dir is not set)")?;
        return Ok(ExitCode::SUCCESS);
    };
    let plugins = defender_edge::plugin::PluginsConfig {
        hot_reload: false,
        ..config.plugins.clone()
    };
    let host = defender_edge::plugin::PluginHost::start(&plugins, scratch.path(), status)?;
    let mut failed = 0;
    for (name, state) in host.plugins() {
        if state == "running" {
            writeln!(out, "ok  plugin {name}")?;
        } else {
            failed += 1;
            writeln!(out, "BAD plugin {name}: {state}")?;
        }
    }
    writeln!(out, "    plugin folder: {}", dir.display())?;
    Ok(ExitCode::from(if failed == 0 { 0 } else { 2 }))
}

fn baseline(args: BaselineArgs) -> anyhow::Result<ExitCode> {
    let result = defender_edge::detect::baseline::compute(
        &args.profile,
        &args.events,
        args.report_interval,
    )?;
    for line in result.summary() {
        eprintln!("{line}");
    }
    let mut text = serde_json::to_vec_pretty(&result.profile)?;
    text.push(b'\n');
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the profile to {}", path.display()))?,
        None => std::io::stdout().lock().write_all(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A folder of `config check`'s own, removed when it ends: profiles and
/// plugins are checked without touching the state directory or its cache.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("defender-edge-check-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the scratch folder {}", path.display()))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        let mut start = Nucleus::start(file_config, &status).await?;
        if start.live_configuration {
            log.set_level(&start.config.log_level);
        }
        overrides.apply(&mut start.config);
        let options = run::RunOptions {
            once: args.once,
            once_wait: Duration::from_secs(args.wait),
            overrides,
            live_configuration: start.live_configuration,
            human: args.human || std::io::stdout().is_terminal(),
        };
        run::run(start.config, start.nucleus, status, options).await
    })?;
    Ok(ExitCode::from(outcome.exit_code()))
}

fn show_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_ref())?;
    let dir = args.state_dir.unwrap_or(config.state_dir);
    let Some(every) = args.watch else {
        let mut out = std::io::stdout().lock();
        out.write_all(&status_view(&dir, args.json)?)?;
        return Ok(ExitCode::SUCCESS);
    };
    // On a terminal each view replaces the last; piped, views follow each
    // other, separated by a blank line.
    let terminal = std::io::stdout().is_terminal();
    loop {
        let view = match status_view(&dir, args.json) {
            Ok(view) => view,
            Err(error) => format!("{error:#}\n").into_bytes(),
        };
        let mut out = std::io::stdout().lock();
        if terminal {
            out.write_all(b"\x1b[H\x1b[2J")?;
        }
        out.write_all(&view)?;
        if !terminal {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(every);
    }
}

/// What `status` prints once.
fn status_view(dir: &std::path::Path, json: bool) -> anyhow::Result<Vec<u8>> {
    let snapshot = match status::read(dir) {
        Ok(snapshot) => snapshot,
        Err(message) => {
            bail!("{message}; has `defender-edge run` been started with this state directory?")
        }
    };
    if json {
        let mut out = serde_json::to_vec_pretty(&snapshot)?;
        out.push(b'\n');
        return Ok(out);
    }
    let alive = status::liveness(&snapshot, std::path::Path::new("/proc"));
    Ok(status::render_table(&snapshot, defender_edge::state::now_ms(), alive).into_bytes())
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
