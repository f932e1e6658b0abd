//! Custom metrics the Device Defender agent does not collect:
//! - `process_count` and `memory_used_percent`, from `loadavg` and `meminfo`
//!   in a granted copy of `/proc` (config `procDir`, e.g. `/proc` with the
//!   grant `readDirs: {"/proc": "/proc"}`);
//! - `ssh_failed_logins`, failed SSH logins since the previous sample, from a
//!   granted log file (config `authLog`, e.g. `/logs/auth.log` with the grant
//!   `readDirs: {"/logs": "/var/log"}`);
//! - `remote_ips`, the distinct peers of established connections (from the
//!   sample itself, no grant needed).
//!
//! It keeps the read offset of the log between calls; after a restart it
//! starts again from the end of the file, so old lines are never counted.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};

use defender_plugin_sdk::{Config, MetricValue, Plugin, Sample, Verdict, log};

pub struct SystemMetrics {
    proc_dir: Option<String>,
    auth_log: Option<String>,
    /// Where the previous call stopped reading the log.
    log_offset: Option<u64>,
}

impl Plugin for SystemMetrics {
    fn init(config: &Config) -> Result<Self, String> {
        let mut plugin = SystemMetrics {
            proc_dir: config.get("procDir").map(str::to_owned),
            auth_log: config.get("authLog").map(str::to_owned),
            log_offset: None,
        };
        if let Some(path) = &plugin.auth_log {
            let len = std::fs::metadata(path)
                .map_err(|e| {
                    format!(
                        "config key authLog: cannot read {path}: {e} (is its directory granted?)"
                    )
                })?
                .len();
            plugin.log_offset = Some(len);
        }
        Ok(plugin)
    }

    fn process(&mut self, sample: &mut Sample) -> Result<Verdict, String> {
        let remotes: BTreeSet<String> = sample
            .established_connections
            .iter()
            .filter_map(|c| c.remote_ip())
            .map(|ip| ip.to_string())
            .collect();
        sample.custom_metrics.insert(
            "remote_ips".into(),
            MetricValue::IpList(remotes.into_iter().collect()),
        );
        if let Some(dir) = &self.proc_dir {
            match read_proc(dir) {
                Ok((processes, used_percent)) => {
                    sample
                        .custom_metrics
                        .insert("process_count".into(), MetricValue::Number(processes));
                    sample.custom_metrics.insert(
                        "memory_used_percent".into(),
                        MetricValue::Number(used_percent),
                    );
                }
                // A missing reading is not worth losing the other metrics.
                Err(e) => log::warn(&e),
            }
        }
        if let Some(path) = self.auth_log.clone() {
            match self.failed_logins(&path) {
                Ok(n) => {
                    sample
                        .custom_metrics
                        .insert("ssh_failed_logins".into(), MetricValue::Number(n as f64));
                }
                Err(e) => log::warn(&e),
            }
        }
        Ok(Verdict::Keep)
    }
}

impl SystemMetrics {
    /// Failed SSH logins in the lines appended since the previous call.
    fn failed_logins(&mut self, path: &str) -> Result<u64, String> {
        let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot stat {path}: {e}"))?
            .len();
        let mut from = self.log_offset.unwrap_or(0);
        if len < from {
            // Rotated or truncated: start over.
            from = 0;
        }
        file.seek(SeekFrom::Start(from))
            .map_err(|e| format!("cannot seek {path}: {e}"))?;
        let mut text = String::new();
        file.take(len - from)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        // Count complete lines only; a half-written line is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.log_offset = Some(from + complete as u64);
        Ok(count_failed_logins(text.get(..complete).unwrap_or("")))
    }
}

/// Lines sshd writes for a failed login attempt.
pub fn count_failed_logins(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.contains("sshd") && (l.contains("Failed password") || l.contains("Invalid user"))
        })
        .count() as u64
}

/// `(process count, memory used %)` from `loadavg` and `meminfo` in `dir`.
fn read_proc(dir: &str) -> Result<(f64, f64), String> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{dir}/{name}"))
            .map_err(|e| format!("cannot read {dir}/{name}: {e}"))
    };
    let loadavg = read("loadavg")?;
    // "0.00 0.01 0.05 1/123 4567": the fourth field is running/total.
    let processes = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| format!("{dir}/loadavg: no process count in {loadavg:?}"))?;
    let meminfo = read("meminfo")?;
    let field = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .ok_or_else(|| format!("{dir}/meminfo: no {key}"))
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    let used = if total > 0.0 {
        // One decimal: Device Defender keeps 15 significant digits at most.
        ((total - available) / total * 1000.0).round() / 10.0
    } else {
        0.0
    };
    Ok((processes, used))
}

defender_plugin_sdk::export_plugin!(SystemMetrics);

#[cfg(test)]
mod tests {
    use super::*;
    use defender_plugin_sdk::Connection;

    #[test]
    fn counts_failed_ssh_logins() {
        let log = "Nov 23 sshd[1]: Failed password for root from 203.0.113.9 port 50000 ssh2\n\
                   Nov 23 sshd[1]: Accepted publickey for pi from 10.0.0.2\n\
                   Nov 23 sshd[2]: Invalid user admin from 203.0.113.9\n\
                   Nov 23 sudo: Failed password nonsense\n";
        assert_eq!(count_failed_logins(log), 2);
    }

    #[test]
    fn reads_proc_files() -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("system-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("loadavg"), "0.10 0.20 0.30 2/187 999\n")
            .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("meminfo"),
            "MemTotal:  1000 kB\nMemFree: 1 kB\nMemAvailable:  250 kB\n",
        )
        .map_err(|e| e.to_string())?;
        let got = read_proc(&dir.to_string_lossy());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got?, (187.0, 75.0));
        Ok(())
    }

    #[test]
    fn remote_ips_are_distinct() -> Result<(), String> {
        let mut plugin = SystemMetrics::init(&Config::default())?;
        let conn = |a: &str| Connection {
            remote_addr: a.into(),
            local_port: 1,
            local_interface: None,
        };
        let mut sample = Sample {
            established_connections: vec![
                conn("10.0.0.1:1"),
                conn("10.0.0.1:2"),
                conn("[2001:db8::1]:3"),
            ],
            ..Sample::default()
        };
        plugin.process(&mut sample)?;
        assert_eq!(
            sample.custom_metrics.get("remote_ips"),
            Some(&MetricValue::IpList(vec![
                "10.0.0.1".into(),
                "2001:db8::1".into()
            ]))
        );
        Ok(())
    }
}
