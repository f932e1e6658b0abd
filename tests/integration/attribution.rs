//! Process attribution: real processes started by the tests (under another
//! user, in a cgroup named like a nucleus lite component, in a Java nucleus
//! work folder), `collect --owners` run as root, as nobody, and as nobody
//! with the capabilities docs/DEPLOY.md names; the captured tree with
//! processes; what a sample re-reads when little changed; plugins that
//! filter the lists.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use defender_edge::collect::{CollectConfig, Collected, Collector};
use defender_edge::sample::{
    EstablishedConnection, ListeningPort, Owners, Process, SocketOwner, Unattributed,
    UnattributedReason,
};

use crate::support;

/// The system Python, which every user may run (a pyenv or venv one under
/// /root may not be).
fn system_python() -> &'static str {
    const PYTHON: &str = "/usr/bin/python3";
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3"
    );
    PYTHON
}

/// Listens on 127.0.0.1, connects to itself, binds a UDP socket, prints
/// what it holds as JSON and waits for its stdin to close.
const HOLDER: &str = r#"
import json, os, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print(json.dumps({"pid": os.getpid(), "tcp": l.getsockname()[1],
                  "client": c.getsockname()[1], "udp": u.getsockname()[1]}), flush=True)
sys.stdin.read()
"#;

/// A child process holding sockets.
struct Holder {
    child: Child,
    pid: u32,
    tcp: u16,
    client: u16,
    udp: u16,
}

impl Holder {
    /// Starts [`HOLDER`] as `nobody`, in `cwd`, and in the cgroup whose
    /// `cgroup.procs` is given (entered before exec, so the process never
    /// runs outside it).
    fn start(cwd: &Path, cgroup_procs: Option<&Path>) -> Holder {
        let mut command = Command::new(support::require_program("setpriv", "util-linux"));
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args([system_python(), "-c", HOLDER])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(procs) = cgroup_procs {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(procs)
                .unwrap_or_else(|e| panic!("open {}: {e}", procs.display()));
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: the closure only calls write(2), which is
            // async-signal-safe; "0" moves the writing process itself. The
            // file stays open in the parent until spawn returns.
            unsafe {
                command.pre_exec(move || {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = command.spawn().expect("start the holder");
            drop(file);
            return Holder::ready(child);
        }
        Holder::ready(command.spawn().expect("start the holder"))
    }

    fn ready(mut child: Child) -> Holder {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read the holder's line");
        let info: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("holder printed {line:?}: {e}"));
        let number = |key: &str| info[key].as_u64().expect("a number");
        Holder {
            pid: number("pid") as u32,
            tcp: number("tcp") as u16,
            client: number("client") as u16,
            udp: number("udp") as u16,
            child,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup v2 group named like the unit nucleus lite runs a component in,
/// under a parent of its own; removed when dropped (after its processes).
struct ComponentGroup {
    parent: PathBuf,
    group: PathBuf,
}

impl ComponentGroup {
    fn create(component: &str) -> ComponentGroup {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
            .expect(
                "no cgroup v2 hierarchy: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)",
            );
        let parent = root.join(format!("defender-edge-test-{}", std::process::id()));
        let group = parent.join(format!("ggl.{component}.service"));
        std::fs::create_dir_all(&group).unwrap_or_else(|e| {
            panic!(
                "cannot create {} ({e}): the attribution tests run as root with a writable cgroup v2 hierarchy",
                group.display()
            )
        });
        ComponentGroup { parent, group }
    }

    fn procs(&self) -> PathBuf {
        self.group.join("cgroup.procs")
    }
}

impl Drop for ComponentGroup {
    fn drop(&mut self) {
        // A group empties a moment after its last process is reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.group).is_ok() || !self.group.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// A temporary folder every user may enter.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// `defender-edge collect --owners json`, run as `command` prepares it.
fn owners_from(mut command: Command) -> Owners {
    let out = command
        .args(["collect", "--owners", "json"])
        .current_dir("/")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run collect --owners");
    assert!(
        out.status.success(),
        "collect --owners failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "collect --owners printed no owner table ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What `defender-edge collect --owners ARGS` prints, run as root.
fn collect_owners_output(args: &[&str]) -> String {
    let out = Command::new(support::bin())
        .args(["collect", "--owners"])
        .args(args)
        .output()
        .expect("run collect --owners");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The same, as `nobody` (with whatever file capabilities `binary` has).
fn owners_as_nobody(binary: &Path) -> Owners {
    let mut command = Command::new(support::require_program("setpriv", "util-linux"));
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(binary);
    owners_from(command)
}

fn port(port: u16, interface: Option<&str>) -> ListeningPort {
    ListeningPort {
        port,
        interface: interface.map(str::to_owned),
    }
}

fn lo_connection(remote_port: u16, local_port: u16) -> EstablishedConnection {
    EstablishedConnection {
        remote_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, remote_port)),
        local_port,
        local_interface: Some("lo".to_owned()),
    }
}

fn process_owner<'a>(owners: &'a Owners, found: Option<&[SocketOwner]>, what: &str) -> &'a Process {
    match found {
        Some([SocketOwner::Process(pid)]) => owners
            .process(*pid)
            .unwrap_or_else(|| panic!("{what}: pid {pid} is not in the process list")),
        other => panic!("{what}: expected one process, got {other:?}"),
    }
}

#[test]
fn owners_of_real_processes_under_another_user() {
    let group = ComponentGroup::create("com.example.Attr");
    let lite = Holder::start(Path::new("/"), Some(&group.procs()));
    // The Java nucleus starts a component in <root>/work/<component> and
    // names <root>/ipc.socket to it.
    let gg = open_tempdir();
    let work = gg.path().join("work").join("com.example.Java");
    std::fs::create_dir_all(&work).expect("work folder");
    std::fs::set_permissions(
        gg.path().join("work"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let java = Holder::start(&work, None);

    let mut command = Command::new(support::bin());
    command.env(
        "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
        gg.path().join("ipc.socket"),
    );
    let owners = owners_from(command);

    let listener = process_owner(
        &owners,
        owners.tcp_port(&port(lite.tcp, Some("lo"))),
        "the nobody listener",
    );
    assert_eq!(listener.pid, lite.pid);
    assert_eq!(listener.name, "python3");
    let exe = std::fs::canonicalize(system_python()).expect("python path");
    assert_eq!(listener.exe.as_deref(), Some(exe.to_str().expect("utf-8")));
    assert_eq!(
        (listener.uid, listener.user.as_deref()),
        (Some(65534), Some("nobody"))
    );
    assert_eq!(
        listener.unit.as_deref(),
        Some("ggl.com.example.Attr.service")
    );
    assert_eq!(listener.component.as_deref(), Some("com.example.Attr"));
    let command_line = listener.command_line.as_deref().expect("a command line");
    assert!(
        command_line.starts_with(&format!("{} -c", system_python())),
        "{command_line}"
    );
    assert!(command_line.len() <= Process::COMMAND_LINE_BYTES + '…'.len_utf8());

    // Both ends of its connection and its UDP socket are its own.
    for (found, what) in [
        (
            owners.connection(&lo_connection(lite.tcp, lite.client)),
            "client end",
        ),
        (
            owners.connection(&lo_connection(lite.client, lite.tcp)),
            "server end",
        ),
        (owners.udp_port(&port(lite.udp, Some("lo"))), "UDP socket"),
    ] {
        assert_eq!(process_owner(&owners, found, what).pid, lite.pid, "{what}");
    }

    let component = process_owner(
        &owners,
        owners.tcp_port(&port(java.tcp, Some("lo"))),
        "the Java nucleus component",
    );
    assert_eq!(component.pid, java.pid);
    assert_eq!(component.component.as_deref(), Some("com.example.Java"));

    // The table for people says the same.
    let table = collect_owners_output(&[]);
    let line = table
        .lines()
        .find(|l| l.contains(&format!("lo:{} ", lite.tcp)))
        .unwrap_or_else(|| panic!("no line for port {}:\n{table}", lite.tcp));
    for word in [
        "tcp",
        &lite.pid.to_string(),
        "nobody",
        exe.to_str().expect("utf-8"),
        "ggl.com.example.Attr.service",
        "com.example.Attr",
    ] {
        assert!(
            line.split_whitespace().any(|w| w == word),
            "{word:?} missing from {line:?}"
        );
    }
    drop((lite, java));
}

#[test]
fn an_unprivileged_collector_says_not_permitted_and_never_guesses() {
    let root_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let root_port = root_listener.local_addr().expect("address").port();
    let own = Holder::start(Path::new("/"), None);

    let owners = owners_as_nobody(&support::bin());
    assert_eq!(
        owners.tcp_port(&port(root_port, Some("lo"))),
        Some(
            &[SocketOwner::Unattributed(Unattributed {
                reason: UnattributedReason::NotPermitted,
                uid: Some(0),
                user: Some("root".to_owned()),
            })][..]
        ),
        "a root socket seen by nobody"
    );
    assert!(owners.unreadable_processes > 0);
    // nobody may read nobody's own processes.
    let mine = process_owner(
        &owners,
        owners.tcp_port(&port(own.tcp, Some("lo"))),
        "nobody's own listener",
    );
    assert_eq!(mine.pid, own.pid);
    // Without privileges only nobody's own processes can be read, so every
    // process named is one of them: nothing is guessed from the socket uid.
    for process in owners.processes.values() {
        assert_eq!(process.uid, Some(65534), "{process:?}");
    }
    drop(root_listener);
}

/// The recipe's way to full attribution as ggc_user (docs/DEPLOY.md): file
/// capabilities CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH on the binary.
#[test]
fn the_documented_capabilities_give_full_attribution_as_nobody() {
    let setcap = support::require_program("setcap", "libcap2-bin");
    let dir = open_tempdir();
    let binary = dir.path().join("defender-edge");
    std::fs::copy(support::bin(), &binary).expect("copy the binary");
    let status = Command::new(setcap)
        .args(["cap_sys_ptrace,cap_dac_read_search+ep"])
        .arg(&binary)
        .status()
        .expect("run setcap");
    assert!(status.success(), "setcap failed");

    let root_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let root_port = root_listener.local_addr().expect("address").port();
    let owners = owners_as_nobody(&binary);
    let holder = process_owner(
        &owners,
        owners.tcp_port(&port(root_port, Some("lo"))),
        "a root listener seen by nobody with capabilities",
    );
    assert_eq!(holder.pid, std::process::id());
    assert_eq!(holder.user.as_deref(), Some("root"));
    assert!(
        holder.exe.is_some(),
        "exe needs CAP_SYS_PTRACE and was read"
    );
    drop(root_listener);
}

// ---------------------------------------------------------------------------
// The captured tree with processes.

/// `tests/fixtures/proc/attributed/proc`: see capture_processes.py.
fn attributed_root() -> PathBuf {
    support::fixture("proc").join("attributed").join("proc")
}

fn collect(root: &Path, attribution: bool) -> Collected {
    Collector::new(&CollectConfig {
        proc_root: root.to_owned(),
        attribution,
        ..CollectConfig::default()
    })
    .sample("fixture-thing", 1_767_225_600_000, None)
}

/// The first process holding the wildcard `transport` port.
fn pid_of(owners: &Owners, number: u16, transport: &str) -> u32 {
    let key = port(number, None);
    let found = match transport {
        "tcp" => owners.tcp_port(&key),
        _ => owners.udp_port(&key),
    };
    match found {
        Some([SocketOwner::Process(pid), ..]) => *pid,
        other => panic!("{transport} port {number}: {other:?}"),
    }
}

#[test]
fn fixture_with_processes() {
    let c = crate::collect::check_fixture("attributed/proc");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let owners = c.owners.as_ref().expect("the tree has processes");

    // ftp: nobody, nucleus lite component, the listener shared with a
    // forked worker.
    let ftp = owners.tcp_port(&port(2121, None)).expect("port 2121");
    assert_eq!(ftp.len(), 2, "parent and worker: {ftp:?}");
    for owner in ftp {
        let SocketOwner::Process(pid) = owner else {
            panic!("{owner:?}");
        };
        let p = owners.process(*pid).expect("listed");
        assert_eq!(p.user.as_deref(), Some("nobody"));
        assert_eq!(p.unit.as_deref(), Some("ggl.com.example.Ftp.service"));
        assert_eq!(p.component.as_deref(), Some("com.example.Ftp"));
    }
    // ssh: root, a plain unit, over IPv6.
    let ssh = owners.process(pid_of(owners, 2222, "tcp")).expect("listed");
    assert_eq!(ssh.user.as_deref(), Some("root"));
    assert_eq!(
        (ssh.unit.as_deref(), ssh.component.as_deref()),
        (Some("ssh.service"), None)
    );
    assert_eq!(
        ssh.describe(),
        format!(
            "/usr/bin/python3.11 (pid {}) as root, unit ssh.service",
            ssh.pid
        )
    );
    // java: the Java nucleus component, by its work folder.
    let java_connection = owners
        .established_connections
        .iter()
        .find(|row| row.connection.remote_addr.port() == 2121)
        .expect("the connection to the ftp server");
    let java = process_owner(owners, Some(&java_connection.owners), "java client");
    assert_eq!(java.component.as_deref(), Some("com.example.Java"));
    assert_eq!(java.unit, None);
    // gone: its listener outlived its /proc entry in the capture.
    let gone: Vec<&Unattributed> = owners
        .listening_tcp_ports
        .iter()
        .flat_map(|row| &row.owners)
        .filter_map(|o| match o {
            SocketOwner::Unattributed(u) => Some(u),
            SocketOwner::Process(_) => None,
        })
        .collect();
    assert_eq!(
        gone,
        vec![&Unattributed {
            reason: UnattributedReason::ProcessGone,
            uid: Some(0),
            user: Some("root".to_owned()),
        }]
    );
}

/// Attribution changes nothing in the report: the same bytes with it on and
/// off, and no process detail in them.
#[test]
fn attribution_never_reaches_the_report() {
    let on = collect(&attributed_root(), true);
    let off = collect(&attributed_root(), false);
    assert!(on.owners.is_some() && off.owners.is_none());
    assert_eq!(on.sample, off.sample);
    for format in [
        defender_edge::report::Format::Json,
        defender_edge::report::Format::Cbor,
    ] {
        let bytes = |c: &Collected| {
            defender_edge::report::prepare(&c.sample, 7, format, 131_072)
                .expect("a valid report")
                .bytes
        };
        assert_eq!(bytes(&on), bytes(&off));
    }
    let json =
        defender_edge::report::prepare(&on.sample, 7, defender_edge::report::Format::Json, 131_072)
            .expect("a valid report")
            .bytes;
    let text = String::from_utf8(json).expect("utf-8");
    for word in ["python", "nobody", "pid", "ggl.", "unattributed"] {
        assert!(!text.contains(word), "{word} in the report: {text}");
    }
}

/// A copy of the captured tree to change between samples.
fn tree_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(support::fixture("proc").join("attributed"))
        .arg(tmp.path().join("root"))
        .status()
        .expect("run cp");
    assert!(status.success());
    tmp
}

fn append_line(path: &Path, line: &str) {
    let mut text = std::fs::read_to_string(path).expect("read");
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

/// One collector over a changing tree: a steady sample reads no descriptor
/// again; a connection the ftp server accepted is found in the server alone;
/// a reused pid, an exited process and a kernel socket are told apart.
#[test]
fn later_samples_read_only_what_changed() {
    let tmp = tree_copy();
    let root = tmp.path().join("root").join("proc");
    let collector = Collector::new(&CollectConfig {
        proc_root: root.clone(),
        ..CollectConfig::default()
    });
    let sample = || collector.sample("t", 0, None);

    let first = sample();
    let owners = first.owners.clone().expect("owners");
    assert_eq!(first.attribution.scanned, 4, "{:?}", first.attribution);
    // The listener of the exited process was searched for everywhere once.
    assert!(first.attribution.full_search);

    let steady = sample();
    assert_eq!(steady.owners.as_ref(), Some(&owners));
    assert_eq!(
        (
            steady.attribution.scanned,
            steady.attribution.links_read,
            steady.attribution.full_search
        ),
        (0, 0, false),
        "a steady sample read descriptors again: {:?}",
        steady.attribution
    );

    // The ftp server accepts a connection: the new socket is in its
    // descriptors, found without reading every process.
    let ftp = pid_of(&owners, 2121, "tcp");
    let inode = 999_001;
    append_line(
        &root.join("net/tcp"),
        &format!(
            "  90: 0100007F:0849 0100007F:C350 01 00000000:00000000 00:00000000 00000000 65534        0 {inode} 1 0000000000000000 20 0 0 10 -1"
        ),
    );
    std::os::unix::fs::symlink(
        format!("socket:[{inode}]"),
        root.join(format!("{ftp}/fd/90")),
    )
    .expect("add the descriptor");
    let accepted = sample();
    let owners = accepted.owners.clone().expect("owners");
    assert_eq!(
        owners.connection(&lo_connection(50000, 2121)),
        Some(&[SocketOwner::Process(ftp)][..])
    );
    assert!(
        !accepted.attribution.full_search,
        "{:?}",
        accepted.attribution
    );
    assert!(
        accepted.attribution.scanned <= 2,
        "{:?}",
        accepted.attribution
    );

    // The ssh pid now belongs to another program started later.
    let ssh = pid_of(&owners, 2222, "tcp");
    let stat_path = root.join(format!("{ssh}/stat"));
    let stat = std::fs::read_to_string(&stat_path).expect("stat");
    let close = stat.rfind(')').expect("comm");
    let mut fields: Vec<String> = stat[close + 2..].split(' ').map(str::to_owned).collect();
    let started: u64 = fields[19].parse().expect("start time");
    fields[19] = (started + 100).to_string();
    std::fs::write(&stat_path, format!("{ssh} (sshd) {}", fields.join(" "))).expect("write stat");
    // The java process exits.
    let java_row = owners
        .established_connections
        .iter()
        .find(|row| row.connection.remote_addr.port() == 2121)
        .expect("java connection")
        .clone();
    let SocketOwner::Process(java) = java_row.owners[0] else {
        panic!("{java_row:?}");
    };
    std::fs::remove_dir_all(root.join(java.to_string())).expect("remove the java process");
    // And the kernel holds a UDP socket of its own.
    append_line(
        &root.join("net/udp"),
        "  91: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0",
    );

    let later = sample();
    let owners = later.owners.expect("owners");
    let reused = process_owner(&owners, owners.tcp_port(&port(2222, None)), "reused pid");
    assert_eq!(
        (reused.name.as_str(), reused.start_time),
        ("sshd", started + 100)
    );
    assert_eq!(
        owners.connection(&java_row.connection),
        Some(
            &[SocketOwner::Unattributed(Unattributed {
                reason: UnattributedReason::ProcessGone,
                uid: Some(0),
                user: Some("root".to_owned()),
            })][..]
        )
    );
    assert_eq!(
        owners.udp_port(&port(0xCA6C, None)),
        Some(
            &[SocketOwner::Unattributed(Unattributed {
                reason: UnattributedReason::Kernel,
                uid: Some(0),
                user: Some("root".to_owned()),
            })][..]
        )
    );
    assert!(!owners.processes.contains_key(&java));
}

/// A plugin that drops entries cannot mis-assign the owners of those it
/// keeps: rows are looked up by entry, and retain_listed drops the rest.
#[test]
fn owners_survive_a_plugin_that_filters_the_lists() {
    let c = collect(&attributed_root(), true);
    let owners = c.owners.clone().expect("owners");

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).expect("plugin dir");
    std::fs::copy(
        crate::plugins::wasm("port-allowlist"),
        dir.join("port-allowlist.wasm"),
    )
    .expect("install the plugin");
    let config: defender_edge::plugin::PluginsConfig = serde_json::from_value(serde_json::json!({
        "dir": dir,
        "settings": {"port-allowlist": {"config": {"tcp": "2121,2222", "dropEphemeralFrom": "32768"}}}
    }))
    .expect("plugin config");
    let host = defender_edge::plugin::PluginHost::start(
        &config,
        &tmp.path().join("cache"),
        defender_edge::status::Status::new(),
    )
    .expect("start the plugin host");
    let after = match host.process(c.sample.clone()) {
        defender_edge::plugin::Processed::Pass(s) => s,
        other => panic!("{other:?}"),
    };
    assert!(after.listening_tcp_ports.len() < c.sample.listening_tcp_ports.len());

    let mut kept = owners.clone();
    kept.retain_listed(&after);
    assert_eq!(
        kept.listening_tcp_ports.len(),
        after.listening_tcp_ports.len()
    );
    for port in &after.listening_tcp_ports {
        assert_eq!(kept.tcp_port(port), owners.tcp_port(port), "{port:?}");
        assert!(kept.tcp_port(port).is_some());
    }
    for dropped in c
        .sample
        .listening_tcp_ports
        .iter()
        .filter(|p| !after.listening_tcp_ports.contains(p))
    {
        assert_eq!(kept.tcp_port(dropped), None, "{dropped:?} kept a row");
    }
    // Processes only named by dropped rows are gone too.
    for pid in kept.processes.keys() {
        let named = kept
            .listening_tcp_ports
            .iter()
            .chain(&kept.listening_udp_ports)
            .flat_map(|r| &r.owners)
            .chain(kept.established_connections.iter().flat_map(|r| &r.owners))
            .any(|o| *o == SocketOwner::Process(*pid));
        assert!(named, "pid {pid} named by no row");
    }
}

#[test]
fn owners_of_a_tree_without_processes_is_an_error_naming_it() {
    let root = support::fixture("proc").join("captured");
    let out = Command::new(support::bin())
        .args(["collect", "--owners", "--proc-root"])
        .arg(&root)
        .output()
        .expect("run collect --owners");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&root.display().to_string()) && stderr.contains("lists no processes"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_collect_source_is_a_configuration_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = tmp.path().join("config.json");
    std::fs::write(&config, r#"{"collect": {"source": "ebpf"}}"#).expect("write");
    let out = Command::new(support::bin())
        .args(["collect", "--config"])
        .arg(&config)
        .output()
        .expect("run collect");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("collect.source"), "{stderr}");
}

/// The table docs/REPORT.md shows is what `collect --owners` prints for the
/// captured tree, and `--owners json --pretty` is the same owner table the
/// library gives.
#[test]
fn the_documented_owner_table_is_what_collect_prints() {
    let root = attributed_root();
    let root_text = root.to_str().expect("a UTF-8 path");
    let run = |args: &[&str]| collect_owners_output(&[args, &["--proc-root", root_text]].concat());
    let doc = std::fs::read_to_string(support::repo().join("docs/REPORT.md")).expect("REPORT.md");
    let shown = doc
        .split("The captured tree gives")
        .nth(1)
        .and_then(|rest| rest.split("```\n").nth(1))
        .expect("the table block in docs/REPORT.md");
    assert_eq!(run(&[]), shown, "docs/REPORT.md shows another table");

    let json: Owners = serde_json::from_str(&run(&["json", "--pretty"])).expect("owner JSON");
    assert_eq!(Some(json), collect(&root, true).owners);
}

/// Netlink refused (here by a seccomp filter that fails `socket(AF_NETLINK,
/// ...)` with EPERM, as a hardened unit may): the collector says so once
/// and reads the proc files, so the report and the owners lose nothing.
#[test]
fn refused_netlink_falls_back_to_the_proc_files() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let listening = listener.local_addr().expect("address").port();
    let without_netlink = |args: &[&str]| {
        let mut command = Command::new(support::bin());
        command.args(args).current_dir("/").env("RUST_LOG", "warn");
        refuse_netlink(&mut command);
        let out = command.output().expect("run defender-edge");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).expect("utf-8"),
            String::from_utf8(out.stderr).expect("utf-8"),
        )
    };
    let state = tempfile::tempdir().expect("state dir");
    let state = state.path().to_str().expect("utf-8").to_owned();
    let (report, log) = without_netlink(&["collect", "--thing", "t", "--state-dir", &state]);
    assert!(
        log.contains("netlink sock_diag unavailable") && log.contains("/proc/net"),
        "{log}"
    );
    let report = defender_edge::report::decode(
        report.trim().as_bytes(),
        defender_edge::report::Format::Json,
    )
    .expect("a report");
    let ports = &report.metrics.expect("metrics").listening_tcp_ports.ports;
    assert!(
        ports.iter().any(|p| p.port == u32::from(listening)),
        "{ports:?}"
    );

    let (owners, _) = without_netlink(&["collect", "--owners", "json"]);
    let owners: Owners = serde_json::from_str(&owners).expect("owner JSON");
    let holder = process_owner(
        &owners,
        owners.tcp_port(&port(listening, Some("lo"))),
        "our listener",
    );
    assert_eq!(holder.pid, std::process::id());
    drop(listener);
}

/// Installs, in the child before exec, a seccomp filter under which
/// `socket(AF_NETLINK, ...)` fails with EPERM and everything else is allowed.
fn refuse_netlink(command: &mut Command) {
    // Offsets in struct seccomp_data: nr at 0, args[0] at 16 (its low half
    // on a little-endian machine).
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let program: &'static mut [libc::sock_filter] = Box::leak(Box::new([
        stmt(load, 0),
        jump(libc::SYS_socket as u32, 0, 3),
        stmt(load, 16),
        jump(libc::AF_NETLINK as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ]));
    let fprog: &'static libc::sock_fprog = Box::leak(Box::new(libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    }));
    // An address, since raw pointers may not cross into the closure.
    let fprog = std::ptr::from_ref(fprog) as usize;
    // SAFETY: only prctl(2) calls in the child, which are async-signal-safe;
    // the program lives for the rest of the test process.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Issue 15 §2, end to end: `run` announces a listener a real process opens
/// (as `nobody`) with that process, and its closing with the same process,
/// as `change` lines of its event output; the device as it was at start is
/// the baseline and announces nothing.
#[test]
fn run_announces_a_new_listener_and_its_closing_with_the_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let events = dir.path().join("events.ndjson");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "thingName": "edge-changes",
            "stateDir": state,
            "output": {"ndjson": null, "events": events},
            "report": {"intervalSeconds": 1},
            "publish": {"transport": "none", "deviceDefender": {"minIntervalSeconds": 1}}
        })
        .to_string(),
    )
    .expect("config");
    struct Run(Child);
    impl Drop for Run {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut run = Run(Command::new(support::bin())
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .env_remove("SVCUID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start run"));
    let changes = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .filter(|l: &serde_json::Value| l["type"] == "change")
            .collect()
    };
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !check() {
            assert!(
                std::time::Instant::now() < until,
                "no {what}: {:?}",
                changes()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // The first report saved the baseline.
    wait("baseline", &|| state.join("changes.json").exists());
    assert!(changes().is_empty(), "the baseline announces nothing");

    let cwd = open_tempdir();
    let holder = Holder::start(cwd.path(), None);
    let (pid, tcp) = (holder.pid, holder.tcp);
    let about = |kind: &str| {
        changes()
            .into_iter()
            .find(|c| c["kind"] == kind && c["transport"] == "tcp" && c["port"] == u64::from(tcp))
    };
    wait("the opened listener", &|| {
        about("listener-opened").is_some()
    });
    let opened = about("listener-opened").expect("opened");
    let process = format!("(pid {pid}) as nobody");
    assert!(
        opened["processes"].to_string().contains(&process),
        "{opened}"
    );
    assert_eq!(opened["thing"], "edge-changes");
    assert_eq!(opened["interface"], "lo", "{opened}");

    drop(holder);
    wait("the closed listener", &|| {
        about("listener-closed").is_some()
    });
    let closed = about("listener-closed").expect("closed");
    assert!(
        closed["processes"].to_string().contains(&process),
        "the closing names who held it: {closed}"
    );
    let _ = run.0.kill();
}
