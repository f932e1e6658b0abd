//! `collect --owners`: who holds each listening port and established
//! connection, for a person at a terminal (a table) or a script (JSON).
//!
//! One sample of this machine with attribution on, whatever
//! `collect.attribution` says (asking for owners is asking for
//! attribution); no plugins and no report. The JSON is the
//! [`crate::sample::Owners`] side table as it travels in the pipeline.

use std::io::{self, Write};

use crate::collect::Collector;
use crate::config::Config;
use crate::sample::{Owners, SocketOwner};
use crate::state::now_ms;

/// The owners of this machine's ports and connections, now.
pub fn collect_owners(config: &Config) -> anyhow::Result<Owners> {
    let mut collect = config.collect.clone();
    collect.attribution = true;
    let collected = Collector::new(&collect).sample("owners", now_ms(), None);
    for warning in &collected.warnings {
        tracing::warn!(%warning, "partial sample");
    }
    collected.owners.ok_or_else(|| {
        anyhow::anyhow!(
            "{} lists no processes, so no socket can be attributed (a captured tree needs its <pid> folders)",
            collect.proc_root.display()
        )
    })
}

/// One line per (entry, owner): protocol, local end, remote end, then the
/// process or why there is none.
pub fn write_table(owners: &Owners, out: &mut dyn Write) -> io::Result<()> {
    let mut rows: Vec<[String; 8]> = vec![[
        "PROTO".into(),
        "LOCAL".into(),
        "REMOTE".into(),
        "PID".into(),
        "USER".into(),
        "PROGRAM".into(),
        "UNIT".into(),
        "COMPONENT".into(),
    ]];
    let local = |interface: &Option<String>, port: u16| {
        format!("{}:{port}", interface.as_deref().unwrap_or("*"))
    };
    let mut add = |proto: &str, local: String, remote: String, entry_owners: &[SocketOwner]| {
        for owner in entry_owners {
            let row = match owner {
                SocketOwner::Process(pid) => {
                    let process = owners.process(*pid);
                    let text = |f: fn(&crate::sample::Process) -> Option<String>| {
                        process.and_then(f).unwrap_or_else(|| "-".to_owned())
                    };
                    [
                        proto.to_owned(),
                        local.clone(),
                        remote.clone(),
                        pid.to_string(),
                        text(|p| p.user.clone().or(p.uid.map(|u| u.to_string()))),
                        text(|p| p.exe.clone().or(Some(p.name.clone()))),
                        text(|p| p.unit.clone()),
                        text(|p| p.component.clone()),
                    ]
                }
                SocketOwner::Unattributed(u) => [
                    proto.to_owned(),
                    local.clone(),
                    remote.clone(),
                    "-".to_owned(),
                    u.user
                        .clone()
                        .or(u.uid.map(|uid| uid.to_string()))
                        .unwrap_or_else(|| "-".to_owned()),
                    format!("unattributed ({})", u.reason.as_str()),
                    "-".to_owned(),
                    "-".to_owned(),
                ],
            };
            rows.push(row);
        }
    };
    for row in &owners.listening_tcp_ports {
        let end = local(&row.port.interface, row.port.port);
        add("tcp", end, "-".to_owned(), &row.owners);
    }
    for row in &owners.listening_udp_ports {
        let end = local(&row.port.interface, row.port.port);
        add("udp", end, "-".to_owned(), &row.owners);
    }
    for row in &owners.established_connections {
        let c = &row.connection;
        let end = local(&c.local_interface, c.local_port);
        add("tcp", end, c.remote_addr.to_string(), &row.owners);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    if owners.unreadable_processes > 0 {
        writeln!(
            out,
            "\n{} processes could not be read: owners they hold are unattributed (not_permitted). \
             Full attribution needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (docs/DEPLOY.md).",
            owners.unreadable_processes
        )?;
    }
    Ok(())
}
