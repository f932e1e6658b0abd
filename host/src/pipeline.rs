//! The pipeline, wired: collect → detect (device metrics) → plugins → detect
//! (custom metrics) → report and SIEM events → publish. The stages know
//! nothing of each other; this module is the only place that calls them in
//! order for the `collect` command, and holds what `run` (crate::run) shares
//! with it.

use std::time::Duration;

use anyhow::Context;

use crate::collect::{Collected, Collector, Counters};
use crate::config::Config;
use crate::report::{self, Format};
use crate::sample::NetworkStats;
use crate::state::{StateDir, now_ms};
use crate::status::Status;

/// The state file holding `collect`'s network baseline. `run` keeps its own
/// (see [`RUN_NETWORK_STATE`]), so a `collect` by hand never shifts the
/// deltas that `run` reports.
const COLLECT_BASELINE: &str = "net-collect.json";

/// `run`'s network state: the last sample's counters and the traffic summed
/// since the last report.
pub(crate) const RUN_NETWORK_STATE: &str = "net-run.json";

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

pub(crate) fn log_collect_problems(collected: &Collected, status: &Status) {
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
    if collected.unresolved_addresses > 0 {
        tracing::debug!(
            sockets = collected.unresolved_addresses,
            "sockets bound to an address of no known interface"
        );
        status.add(
            "collect.unresolved_addresses",
            collected.unresolved_addresses,
        );
    }
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

/// `run`'s network bookkeeping, persisted after every sample so that deltas
/// and the traffic owed to the next report survive restarts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct NetworkState {
    pub(crate) counters: Option<Counters>,
    /// Traffic since the last report; `None` once any sample in the window had
    /// no honest delta (reset, reboot), so the report says nothing rather than
    /// a partial sum.
    since_report: Option<NetworkStats>,
    /// False until the first delta after a report, so the first report after
    /// a fresh start omits network_stats.
    window_valid: bool,
}

impl NetworkState {
    pub(crate) fn absorb(&mut self, delta: Option<NetworkStats>) {
        match (delta, self.since_report) {
            (Some(d), Some(sum)) if self.window_valid => self.since_report = Some(sum.plus(d)),
            _ => {
                self.since_report = None;
                self.window_valid = false;
            }
        }
    }

    /// Hands the window's traffic to a report and opens a new window.
    pub(crate) fn take_for_report(&mut self) -> Option<NetworkStats> {
        let taken = if self.window_valid {
            self.since_report
        } else {
            None
        };
        self.since_report = Some(NetworkStats::default());
        self.window_valid = true;
        taken
    }

    /// Returns a window taken for a report that was not built (held back
    /// by a plugin, invalid), so its traffic goes to the next report rather
    /// than vanishing.
    pub(crate) fn give_back(&mut self, window: Option<NetworkStats>) {
        let current = self.since_report.filter(|_| self.window_valid);
        match (window, current) {
            (Some(w), Some(c)) => self.since_report = Some(w.plus(c)),
            _ => {
                self.since_report = None;
                self.window_valid = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: u64) -> Option<NetworkStats> {
        Some(NetworkStats {
            bytes_in: n,
            bytes_out: n,
            packets_in: n,
            packets_out: n,
        })
    }

    #[test]
    fn a_window_given_back_goes_to_the_next_report() {
        let mut state = NetworkState::default();
        state.absorb(stats(5)); // first delta after start: not honest yet
        assert_eq!(state.take_for_report(), None);
        state.absorb(stats(10));
        let window = state.take_for_report();
        assert_eq!(window, stats(10));
        state.give_back(window);
        state.absorb(stats(1));
        assert_eq!(state.take_for_report(), stats(11));
    }

    #[test]
    fn a_dishonest_window_given_back_spoils_the_next() {
        let mut state = NetworkState::default();
        state.take_for_report();
        state.absorb(None); // counter reset
        let window = state.take_for_report();
        assert_eq!(window, None);
        state.give_back(window);
        state.absorb(stats(3));
        assert_eq!(state.take_for_report(), None);
    }
}
