//! The pipeline, wired: collect → detect (device metrics) → plugins → detect
//! (custom metrics) → report and SIEM events → publish. The stages know
//! nothing of each other; this module is the only place that calls them in
//! order, for the `collect` command and for the `run` loop.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::collect::{Collected, Collector, Counters};
use crate::config::Config;
use crate::report::{self, Format};
use crate::sample::{NetworkStats, Sample};
use crate::state::{StateDir, now_ms};
use crate::status::Status;

/// The state file holding `collect`'s network baseline. `run` keeps its own
/// (see [`RUN_NETWORK_STATE`]), so a `collect` by hand never shifts the
/// deltas that `run` reports.
const COLLECT_BASELINE: &str = "net-collect.json";

/// `run`'s network state: the last sample's counters and the traffic summed
/// since the last report.
const RUN_NETWORK_STATE: &str = "net-run.json";

/// The thing name: configuration, then `AWS_IOT_THING_NAME` (set by
/// Greengrass), then the host name.
pub fn thing_name(config: &Config) -> anyhow::Result<String> {
    let name = match &config.thing_name {
        Some(name) => name.clone(),
        None => match std::env::var("AWS_IOT_THING_NAME") {
            Ok(name) if !name.is_empty() => name,
            _ => host_name().context(
                "no thing name configured (thingName, AWS_IOT_THING_NAME) and no host name",
            )?,
        },
    };
    report::validate::thing_name(&name).with_context(|| format!("thing name {name:?}"))?;
    Ok(name)
}

fn host_name() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname writes
    // at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(
        rc == 0,
        "gethostname failed: {}",
        std::io::Error::last_os_error()
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn log_collect_problems(collected: &Collected, status: &Status) {
    for warning in &collected.warnings {
        tracing::warn!(%warning, "partial sample");
    }
    if collected.malformed_lines > 0 {
        tracing::warn!(
            lines = collected.malformed_lines,
            "skipped malformed proc lines"
        );
        status.add("collect.malformed_lines", collected.malformed_lines);
    }
    status.add("collect.warnings", collected.warnings.len() as u64);
}

/// One report of this machine for the `collect` command: the encoded bytes.
pub fn collect_once(
    config: &Config,
    format: Format,
    delta_window: Option<Duration>,
) -> anyhow::Result<Vec<u8>> {
    let state = StateDir::open(&config.state_dir)?;
    let thing = thing_name(config)?;
    let status = Status::new();
    let collector = Collector::new(&config.collect);
    let baseline: Option<Counters> = match delta_window {
        Some(window) => {
            let first = collector.sample(&thing, now_ms(), None);
            std::thread::sleep(window);
            Some(first.counters)
        }
        None => state.load(COLLECT_BASELINE),
    };
    let collected = collector.sample(&thing, now_ms(), baseline.as_ref());
    log_collect_problems(&collected, &status);
    if let Err(error) = state.save(COLLECT_BASELINE, &collected.counters) {
        tracing::warn!(%error, "cannot save the network baseline; the next collect reports no network_stats");
    }
    let mut sample = collected.sample;
    if config.plugins.dir.is_some() {
        let host = crate::plugin::PluginHost::start(
            &config.plugins,
            &state.subdir("plugin-cache")?,
            status.clone(),
        )?;
        match host.process(sample) {
            crate::plugin::Processed::Pass(changed) => sample = changed,
            crate::plugin::Processed::Held { plugin, reason } => {
                anyhow::bail!(
                    "plugin {plugin} failed and its policy is fail-closed, so no report is printed: {reason}"
                )
            }
            crate::plugin::Processed::Dropped { plugin } => {
                anyhow::bail!("plugin {plugin} dropped this report")
            }
        }
    }
    let id = state.next_report_id(now_ms())?;
    let prepared = report::prepare(&sample, id, format, config.report.max_bytes)
        .with_context(|| format!("the report for {thing} is invalid"))?;
    if prepared.trimmed.total() > 0 {
        tracing::warn!(trimmed = ?prepared.trimmed, budget = config.report.max_bytes, "report over budget; entries trimmed");
    }
    Ok(prepared.bytes)
}

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Stopped by a signal, or `--once` with the report acknowledged.
    Done,
    /// `--once`: the peer could not be reached; the report waits in the outbox.
    Queued,
}

impl RunOutcome {
    /// The process exit status documented in `run --help`.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Done => 0,
            RunOutcome::Queued => 3,
        }
    }
}

/// `run`'s network bookkeeping, persisted after every sample so that deltas
/// and the traffic owed to the next report survive restarts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct NetworkState {
    counters: Option<Counters>,
    /// Traffic since the last report; `None` once any sample in the window had
    /// no honest delta (reset, reboot), so the report says nothing rather than
    /// a partial sum.
    since_report: Option<NetworkStats>,
    /// False until the first delta after a report, so the first report after
    /// a fresh start omits network_stats.
    window_valid: bool,
}

impl NetworkState {
    fn absorb(&mut self, delta: Option<NetworkStats>) {
        match (delta, self.since_report) {
            (Some(d), Some(sum)) if self.window_valid => {
                self.since_report = Some(NetworkStats {
                    bytes_in: sum.bytes_in.saturating_add(d.bytes_in),
                    bytes_out: sum.bytes_out.saturating_add(d.bytes_out),
                    packets_in: sum.packets_in.saturating_add(d.packets_in),
                    packets_out: sum.packets_out.saturating_add(d.packets_out),
                })
            }
            _ => {
                self.since_report = None;
                self.window_valid = false;
            }
        }
    }

    /// Hands the window's traffic to a report and opens a new window.
    fn take_for_report(&mut self) -> Option<NetworkStats> {
        let taken = if self.window_valid {
            self.since_report
        } else {
            None
        };
        self.since_report = Some(NetworkStats::default());
        self.window_valid = true;
        taken
    }
}

/// The long-running component.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    once: bool,
) -> anyhow::Result<RunOutcome> {
    let _ = config_path;
    let state = StateDir::open(&config.state_dir)?;
    let thing = thing_name(&config)?;
    let status = Status::new();
    status.set_text("run.thing", thing.clone());
    let collector = Collector::new(&config.collect);
    let plugins = match config.plugins.dir {
        Some(_) => Some(crate::plugin::PluginHost::start(
            &config.plugins,
            &state.subdir("plugin-cache")?,
            status.clone(),
        )?),
        None => None,
    };
    let mut output = crate::output::NdjsonOutput::open(config.output.ndjson.as_deref())?;
    let mut network: NetworkState = state.load(RUN_NETWORK_STATE).unwrap_or_default();
    let report_every = Duration::from_secs(config.report.interval_seconds);
    let mut next_report = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(report_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = Box::pin(crate::signals::stopped());
    tracing::info!(%thing, interval_s = report_every.as_secs(), "defender-edge running");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            signal = &mut stop => {
                tracing::info!(%signal, "stopping");
                break;
            }
        }
        let collected = collector.sample(&thing, now_ms(), network.counters.as_ref());
        log_collect_problems(&collected, &status);
        status.add("collect.samples", 1);
        network.absorb(collected.sample.network_stats);
        network.counters = Some(collected.counters);
        let mut sample: Sample = collected.sample;
        let report_due = tokio::time::Instant::now() >= next_report;
        if report_due {
            sample.network_stats = network.take_for_report();
        }
        if let Err(error) = state.save(RUN_NETWORK_STATE, &network) {
            tracing::warn!(%error, "cannot persist network counters");
        }
        if let Some(host) = &plugins {
            match host.process_async(sample).await {
                crate::plugin::Processed::Pass(changed) => sample = changed,
                crate::plugin::Processed::Held { plugin, reason } => {
                    tracing::warn!(%plugin, %reason, "report held back by a fail-closed plugin");
                    status.add("report.held", 1);
                    continue;
                }
                crate::plugin::Processed::Dropped { plugin } => {
                    tracing::info!(%plugin, "report dropped by plugin");
                    status.add("report.dropped_by_plugin", 1);
                    continue;
                }
            }
        }
        if report_due {
            next_report += report_every;
            let id = state.next_report_id(now_ms())?;
            match report::prepare(&sample, id, config.report.format, config.report.max_bytes) {
                Ok(prepared) => {
                    status.add("report.built", 1);
                    let trimmed = prepared.trimmed.total();
                    if trimmed > 0 {
                        tracing::warn!(report_id = id, trimmed = ?prepared.trimmed, "report over budget; entries trimmed");
                        status.add("report.trimmed_entries", trimmed);
                    }
                    output.write(&prepared.report, config.report.format)?;
                }
                Err(error) => {
                    tracing::error!(report_id = id, %error, "report failed validation; not sent");
                    status.add("report.validation_failures", 1);
                }
            }
        }
        if let Err(error) = status.write(state.path(), now_ms()) {
            tracing::warn!(%error, "cannot write the status file");
        }
        if once && report_due {
            break;
        }
    }
    output.flush()?;
    status
        .write(state.path(), now_ms())
        .context("writing the status file")?;
    Ok(RunOutcome::Done)
}
