//! The processes of a proc tree and the sockets each holds, kept between
//! samples so that a sample only looks at what changed.
//!
//! The kernel links a socket to its processes only through their open
//! descriptors: `/proc/<pid>/fd/<n>` is a symbolic link reading
//! `socket:[<inode>]`. `ss -p` reads every link of every process on every
//! call. Here the links of a process are read when it is new, and again only
//! when a socket the table does not know turns up and that process may hold
//! it (see `owners.rs` for the order); otherwise a sample costs one listing
//! of the proc root and one `stat` file per process that owns a listed socket
//! (the start time check below).
//!
//! Pids are reused, so a pid alone does not name a process: each entry keeps
//! the process's start time (`/proc/<pid>/stat` field 22), and an entry whose
//! pid shows another start time is dropped and read again as a new process.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::sample::Process;

/// `PF_KTHREAD` in the flags of `/proc/<pid>/stat`: a kernel thread, which
/// holds no descriptors; one we may not read does not make anything
/// unattributable.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What a sample's work on the process table cost; tests and benchmarks use
/// it to show that a steady state reads nothing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCounts {
    /// Processes in the proc root.
    pub processes: u32,
    /// Processes whose descriptors were read (new, changed, or searched).
    pub scanned: u32,
    /// Descriptor links read.
    pub links_read: u64,
    /// Processes whose start time was checked (they hold a listed socket).
    pub verified: u32,
    /// Whether a search through every process was needed.
    pub full_search: bool,
}

/// One process as last seen.
#[derive(Debug)]
struct Known {
    start_time: u64,
    /// `comm` at the last check; a change means the process ran `execve`,
    /// so its details are read again.
    name: String,
    /// The size of `/proc/<pid>/fd` at the last scan: the number of open
    /// descriptors on Linux 6.2 and later, 0 before.
    fd_count: u64,
    /// Socket inodes among its descriptors at the last scan, sorted.
    sockets: Vec<u64>,
    /// Whether its descriptors could be read.
    readable: bool,
    kernel_thread: bool,
    /// The generation of the last scan and of the last start time check.
    scanned: u64,
    verified: u64,
    /// Details, read once the process holds a listed socket.
    details: Option<Process>,
    details_checked: u64,
}

/// The start of `/proc/<pid>/stat`, the part used here.
struct Stat {
    name: String,
    start_time: u64,
    kernel_thread: bool,
}

/// uid → user name from a passwd file, read again when the file changes.
#[derive(Debug, Default)]
struct Users {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    names: HashMap<u32, String>,
}

impl Users {
    fn refresh(&mut self) {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        self.names.clear();
        let Ok(text) = std::fs::read(&self.path) else {
            return;
        };
        for line in text.split(|b| *b == b'\n') {
            let mut fields = line.split(|b| *b == b':');
            let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(name), Some(uid)) = (
                std::str::from_utf8(name),
                std::str::from_utf8(uid).ok().and_then(|u| u.parse().ok()),
            ) else {
                continue;
            };
            // The first entry of a uid wins, as getpwuid does.
            self.names.entry(uid).or_insert_with(|| name.to_owned());
        }
    }

    fn name(&self, uid: u32) -> Option<String> {
        self.names.get(&uid).cloned()
    }
}

/// The processes of one proc root.
#[derive(Debug)]
pub(crate) struct ProcessTable {
    root: PathBuf,
    users: Users,
    /// `<root>/work` directories of the Greengrass Java nucleus.
    greengrass_work: Vec<PathBuf>,
    generation: u64,
    procs: HashMap<u32, Known>,
    /// Socket inode → the pids whose last scan showed it.
    holders: HashMap<u64, Vec<u32>>,
    counts: ScanCounts,
    /// Reused between reads.
    buf: Vec<u8>,
    pids: Vec<u32>,
}

impl ProcessTable {
    /// A table of the processes under `root`; user names come from
    /// `passwd`, and a process whose working directory is
    /// `<greengrass root>/work/<component>` belongs to that component.
    pub(crate) fn new(root: &Path, passwd: PathBuf, greengrass_roots: &[PathBuf]) -> ProcessTable {
        ProcessTable {
            root: root.to_owned(),
            users: Users {
                path: passwd,
                ..Users::default()
            },
            greengrass_work: greengrass_roots.iter().map(|r| r.join("work")).collect(),
            generation: 0,
            procs: HashMap::new(),
            holders: HashMap::new(),
            counts: ScanCounts::default(),
            buf: Vec::with_capacity(4096),
            pids: Vec::new(),
        }
    }

    /// Starts a sample: lists the processes, forgets those that are gone and
    /// reads the new ones. Returns false when the root lists no process at
    /// all (a captured tree of `net/` files only).
    pub(crate) fn begin(&mut self) -> bool {
        self.generation += 1;
        self.counts = ScanCounts::default();
        self.users.refresh();
        let mut pids = std::mem::take(&mut self.pids);
        pids.clear();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if let Some(pid) = parse_pid(entry.file_name().as_bytes()) {
                    pids.push(pid);
                }
            }
        }
        pids.sort_unstable();
        self.counts.processes = pids.len() as u32;
        let gone: Vec<u32> = self
            .procs
            .keys()
            .filter(|pid| pids.binary_search(pid).is_err())
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        for &pid in &pids {
            if !self.procs.contains_key(&pid) {
                self.read_new(pid);
            }
        }
        let any = !pids.is_empty();
        self.pids = pids;
        any
    }

    pub(crate) fn counts(&self) -> ScanCounts {
        self.counts
    }

    /// Processes (not kernel threads) whose descriptors could not be read.
    pub(crate) fn unreadable(&self) -> u32 {
        self.procs
            .values()
            .filter(|k| !k.readable && !k.kernel_thread)
            .count() as u32
    }

    /// The pids that held `inode` at their last scan. Call
    /// [`ProcessTable::verify`] on them first.
    pub(crate) fn holders(&self, inode: u64) -> &[u32] {
        self.holders.get(&inode).map_or(&[], Vec::as_slice)
    }

    /// Checks, once per sample, that `pid` is still the process that was
    /// scanned (not a new one that got its pid); reads it afresh if not.
    pub(crate) fn verify(&mut self, pid: u32) {
        let generation = self.generation;
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        if known.verified == generation {
            return;
        }
        let start_time = known.start_time;
        self.counts.verified += 1;
        match self.read_stat(pid) {
            Some(stat) if stat.start_time == start_time => {
                let known = self.procs.get_mut(&pid).expect("checked above");
                known.verified = generation;
                if stat.name != known.name {
                    // It ran execve: same process, new program.
                    known.name = stat.name;
                    known.details = None;
                }
            }
            Some(_) => {
                self.forget(pid);
                self.read_new(pid);
            }
            None => self.forget(pid),
        }
    }

    /// Reads the descriptors again of every readable process not read in
    /// this sample whose descriptor count changed.
    pub(crate) fn rescan_changed(&mut self) {
        let generation = self.generation;
        let candidates: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, k)| k.readable && k.scanned != generation && !k.kernel_thread)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in candidates {
            let count = self.fd_count(pid);
            if count.is_some_and(|c| Some(c) != self.procs.get(&pid).map(|k| k.fd_count)) {
                self.rescan(pid);
            }
        }
    }

    /// Reads the descriptors of `pid` again unless done in this sample.
    pub(crate) fn rescan(&mut self, pid: u32) {
        let generation = self.generation;
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        if known.scanned == generation || !known.readable || known.kernel_thread {
            return;
        }
        self.verify(pid);
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        if known.scanned == generation {
            // verify() found a new process in that pid and read it.
            return;
        }
        let fd_count = self.fd_count(pid).unwrap_or(0);
        let sockets = self.read_sockets(pid);
        self.set_sockets(pid, fd_count, sockets);
    }

    /// Reads the descriptors of every process not read in this sample.
    pub(crate) fn rescan_all(&mut self) {
        self.counts.full_search = true;
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.rescan(pid);
        }
    }

    /// The details of `pid`, read when first needed and kept while it runs
    /// the same program; its user is read again every sample (a daemon that
    /// binds as root and then drops to another user).
    pub(crate) fn details(&mut self, pid: u32) -> Option<Process> {
        let generation = self.generation;
        let known = self.procs.get(&pid)?;
        if known.details.is_some() && known.details_checked == generation {
            return known.details.clone();
        }
        // An unreadable status means the process is gone: it is not named.
        let uid = self.read_uid(pid)?;
        let known = self.procs.get(&pid)?;
        let (cached, start_time, name) =
            (known.details.clone(), known.start_time, known.name.clone());
        let mut details = match cached {
            Some(d) => d,
            None => {
                let base = self.root.join(pid.to_string());
                let cwd = read_link_text(&base.join("cwd"));
                let unit = self
                    .read_text(&base.join("cgroup"))
                    .and_then(|t| unit_of_cgroup(&t));
                let component = unit
                    .as_deref()
                    .and_then(component_of_unit)
                    .or_else(|| cwd.as_deref().and_then(|c| self.component_of_cwd(c)));
                Process {
                    pid,
                    start_time,
                    name,
                    exe: read_link_text(&base.join("exe")),
                    command_line: self.read_command_line(&base.join("cmdline")),
                    uid: None,
                    user: None,
                    unit,
                    component,
                }
            }
        };
        details.uid = Some(uid);
        details.user = self.users.name(uid);
        let known = self.procs.get_mut(&pid)?;
        known.details = Some(details.clone());
        known.details_checked = generation;
        Some(details)
    }

    /// The name of a uid in the passwd file of the system sampled.
    pub(crate) fn user_name(&self, uid: u32) -> Option<String> {
        self.users.name(uid)
    }

    fn forget(&mut self, pid: u32) {
        if let Some(known) = self.procs.remove(&pid) {
            self.unregister(pid, &known.sockets);
        }
    }

    fn unregister(&mut self, pid: u32, sockets: &[u64]) {
        for inode in sockets {
            if let Some(pids) = self.holders.get_mut(inode) {
                pids.retain(|p| *p != pid);
                if pids.is_empty() {
                    self.holders.remove(inode);
                }
            }
        }
    }

    fn set_sockets(&mut self, pid: u32, fd_count: u64, sockets: Option<Vec<u64>>) {
        let generation = self.generation;
        let Some(known) = self.procs.get_mut(&pid) else {
            return;
        };
        known.scanned = generation;
        known.fd_count = fd_count;
        let old = std::mem::take(&mut known.sockets);
        match sockets {
            Some(new) => {
                known.sockets = new.clone();
                known.readable = true;
                self.unregister(pid, &old);
                for inode in new {
                    let pids = self.holders.entry(inode).or_default();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
            None => {
                known.readable = false;
                self.unregister(pid, &old);
            }
        }
    }

    /// Reads a process seen for the first time in its pid.
    fn read_new(&mut self, pid: u32) {
        let Some(stat) = self.read_stat(pid) else {
            return; // Gone already.
        };
        let generation = self.generation;
        self.procs.insert(
            pid,
            Known {
                start_time: stat.start_time,
                name: stat.name,
                fd_count: 0,
                sockets: Vec::new(),
                readable: !stat.kernel_thread,
                kernel_thread: stat.kernel_thread,
                scanned: 0,
                verified: generation,
                details: None,
                details_checked: 0,
            },
        );
        if stat.kernel_thread {
            return;
        }
        let fd_count = self.fd_count(pid).unwrap_or(0);
        let sockets = self.read_sockets(pid);
        self.set_sockets(pid, fd_count, sockets);
    }

    fn fd_count(&self, pid: u32) -> Option<u64> {
        let path = self.root.join(pid.to_string()).join("fd");
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// The socket inodes among the descriptors of `pid`, sorted; `None` when
    /// its descriptors cannot be read (not permitted). A process that exits
    /// while it is read gives what was read.
    fn read_sockets(&mut self, pid: u32) -> Option<Vec<u64>> {
        self.counts.scanned += 1;
        let path = self.root.join(pid.to_string()).join("fd");
        let mut sockets = Vec::new();
        let mut denied = false;
        let mut links = 0u64;
        let listed = read_links(&path, |target| {
            links += 1;
            match target {
                Ok(target) => {
                    if let Some(inode) = socket_inode(target) {
                        sockets.push(inode);
                    }
                    true
                }
                // Listing needs read access to the directory; reading the
                // links needs ptrace access to the process besides.
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    denied = true;
                    false
                }
                Err(_) => true, // Closed meanwhile.
            }
        });
        self.counts.links_read += links;
        match listed {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return None,
            Err(_) => return Some(Vec::new()), // Gone meanwhile.
            Ok(()) if denied => return None,
            Ok(()) => {}
        }
        sockets.sort_unstable();
        sockets.dedup();
        Some(sockets)
    }

    fn read_stat(&mut self, pid: u32) -> Option<Stat> {
        let path = self.root.join(pid.to_string()).join("stat");
        read_into(&path, &mut self.buf, 4096).ok()?;
        parse_stat(&self.buf)
    }

    /// The effective uid from `/proc/<pid>/status`.
    fn read_uid(&mut self, pid: u32) -> Option<u32> {
        let path = self.root.join(pid.to_string()).join("status");
        read_into(&path, &mut self.buf, 8192).ok()?;
        parse_status_uid(&self.buf)
    }

    fn read_text(&mut self, path: &Path) -> Option<String> {
        read_into(path, &mut self.buf, 8192).ok()?;
        Some(String::from_utf8_lossy(&self.buf).into_owned())
    }

    fn read_command_line(&mut self, path: &Path) -> Option<String> {
        // Two bytes more than kept: the terminating NUL, and one to know
        // whether anything was cut.
        read_into(path, &mut self.buf, Process::COMMAND_LINE_BYTES + 2).ok()?;
        command_line(&self.buf)
    }

    fn component_of_cwd(&self, cwd: &str) -> Option<String> {
        let cwd = Path::new(cwd);
        let parent = cwd.parent()?;
        if !self.greengrass_work.iter().any(|w| w == parent) {
            return None;
        }
        cwd.file_name()
            .and_then(OsStr::to_str)
            .map(str::to_owned)
            .filter(|c| !c.is_empty())
    }
}

/// Calls `on_link` with the target of every link in the directory `path`
/// until it returns false. `readdir` and `readlinkat` on the open
/// directory, so that a process with thousands of descriptors costs no path
/// building or allocation per link.
fn read_links(path: &Path, mut on_link: impl FnMut(io::Result<&[u8]>) -> bool) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid C string; the result is checked.
    let dir = unsafe { libc::opendir(path.as_ptr()) };
    let Some(dir) = std::ptr::NonNull::new(dir) else {
        return Err(io::Error::last_os_error());
    };
    struct Close(std::ptr::NonNull<libc::DIR>);
    impl Drop for Close {
        fn drop(&mut self) {
            // SAFETY: the stream was opened by opendir and is closed once.
            unsafe { libc::closedir(self.0.as_ptr()) };
        }
    }
    let dir = Close(dir);
    // SAFETY: the stream is open, so its descriptor is valid.
    let fd = unsafe { libc::dirfd(dir.0.as_ptr()) };
    let mut target = [0u8; 64];
    loop {
        // SAFETY: the stream is open and used by this thread only.
        let entry = unsafe { libc::readdir(dir.0.as_ptr()) };
        if entry.is_null() {
            return Ok(());
        }
        // SAFETY: readdir returned a valid entry whose d_name is a
        // NUL-terminated string, valid until the next readdir call.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes().first() == Some(&b'.') {
            continue; // `.` and `..`; descriptor names are digits.
        }
        // SAFETY: `name` is a C string and `target` is writable for its
        // length.
        let n = unsafe {
            libc::readlinkat(fd, name.as_ptr(), target.as_mut_ptr().cast(), target.len())
        };
        let result = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(&target[..n as usize])
        };
        if !on_link(result) {
            return Ok(());
        }
    }
}

fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// `socket:[12345]` → 12345.
fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    super::parse::dec_u64(digits)
}

/// Reads at most `limit` bytes of `path` into `buf`.
fn read_into(path: &Path, buf: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?
        .take(limit as u64)
        .read_to_end(buf)
        .map(|_| ())
}

fn read_link_text(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let text = target.to_string_lossy();
    // A deleted executable or directory reads "<path> (deleted)".
    Some(text.strip_suffix(" (deleted)").unwrap_or(&text).to_owned())
}

/// `pid (comm) state ppid ...`: the name is between the first `(` and the
/// last `)`, since it may hold both; the fields after it are numbered from 3.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = text.iter().position(|b| *b == b'(')?;
    let close = text.iter().rposition(|b| *b == b')')?;
    let name = String::from_utf8_lossy(text.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        name,
        start_time: field(22)?,
        kernel_thread: field(9).is_some_and(|flags| flags & PF_KTHREAD != 0),
    })
}

/// The effective uid: the second number of the `Uid:` line.
fn parse_status_uid(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The NUL-separated arguments as one line of at most
/// [`Process::COMMAND_LINE_BYTES`] bytes; `None` for an empty command line
/// (a kernel thread, a zombie).
fn command_line(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let cut = raw.len() > Process::COMMAND_LINE_BYTES;
    let raw = &raw[..raw.len().min(Process::COMMAND_LINE_BYTES)];
    let mut text: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.truncate(text.trim_end().len());
    if text.is_empty() {
        return None;
    }
    if cut {
        // Cutting at a byte count may split a character; the lossy
        // conversion above turned that into U+FFFD, which the ellipsis
        // replaces.
        text = text.trim_end_matches('\u{FFFD}').to_owned();
        text.push('…');
    }
    Some(text)
}

/// The innermost systemd unit of a `/proc/<pid>/cgroup`: from the unified
/// (v2) line `0::/system.slice/vsftpd.service`, else the v1 `name=systemd`
/// hierarchy.
fn unit_of_cgroup(text: &str) -> Option<String> {
    let path = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix));
    let path = path("0::").or_else(|| {
        text.lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
    })?;
    path.rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_owned)
}

/// Nucleus lite runs a component in the unit `ggl.<component>.service`.
fn component_of_unit(unit: &str) -> Option<String> {
    unit.strip_prefix("ggl.")?
        .strip_suffix(".service")
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let line = b"812 (vsftpd) S 1 812 812 0 -1 4194624 160 0 0 0 0 0 0 0 20 0 1 0 1234 6000000 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).expect("stat");
        assert_eq!(
            (s.name.as_str(), s.start_time, s.kernel_thread),
            ("vsftpd", 1234, false)
        );
        // A name with spaces and parentheses.
        let odd = b"9 (a) b (c)) R 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(odd).expect("stat");
        assert_eq!(
            (s.name.as_str(), s.start_time, s.kernel_thread),
            ("a) b (c)", 77, true)
        );
        assert!(parse_stat(b"12 (cut").is_none());
        assert!(parse_stat(b"12 (short) S 1 2 3").is_none());
    }

    #[test]
    fn status_gives_the_effective_uid() {
        let status = b"Name:\tvsftpd\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t65534\t0\t65534\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_uid(status), Some(65534));
        assert_eq!(parse_status_uid(b"Name:\tx\n"), None);
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(b"socket:[48827]"), Some(48827));
        assert_eq!(socket_inode(b"pipe:[48827]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12x]"), None);
    }

    #[test]
    fn command_lines_are_bounded() {
        assert_eq!(
            command_line(b"/usr/sbin/vsftpd\0/etc/vsftpd.conf\0").as_deref(),
            Some("/usr/sbin/vsftpd /etc/vsftpd.conf")
        );
        assert_eq!(command_line(b""), None);
        assert_eq!(command_line(b"\0"), None);
        // A control character cannot break a log line.
        assert_eq!(command_line(b"a\nb\0").as_deref(), Some("a b"));
        let long = vec![b'x'; Process::COMMAND_LINE_BYTES + 1];
        let text = command_line(&long).expect("a command line");
        assert!(text.ends_with('…'));
        assert_eq!(text.len(), Process::COMMAND_LINE_BYTES + '…'.len_utf8());
        // A multi-byte character cut in half is dropped, not mangled.
        let mut cut = vec![b'y'; Process::COMMAND_LINE_BYTES - 1];
        cut.extend_from_slice("é".as_bytes());
        let text = command_line(&cut).expect("a command line");
        assert_eq!(
            text,
            format!("{}…", "y".repeat(Process::COMMAND_LINE_BYTES - 1))
        );
    }

    #[test]
    fn units_and_components() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                "0::/system.slice/vsftpd.service\n",
                Some("vsftpd.service"),
                None,
            ),
            (
                "0::/system.slice/ggl.com.example.Ftp.service\n",
                Some("ggl.com.example.Ftp.service"),
                Some("com.example.Ftp"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n",
                Some("foo.service"),
                None,
            ),
            (
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                Some("session-3.scope"),
                None,
            ),
            // cgroup v1: the name=systemd hierarchy.
            (
                "12:pids:/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service\n",
                Some("ssh.service"),
                None,
            ),
            ("0::/\n", None, None),
            ("0::/init.scope\n", Some("init.scope"), None),
            ("0::/system.slice\n", None, None),
            ("9:name=systemd:/\n0::/\n", None, None),
        ];
        for (text, unit, component) in cases {
            let got = unit_of_cgroup(text);
            assert_eq!(got.as_deref(), *unit, "{text:?}");
            assert_eq!(
                got.as_deref().and_then(component_of_unit).as_deref(),
                *component
            );
        }
        assert_eq!(component_of_unit("ggl..service"), None);
        assert_eq!(component_of_unit("greengrass.service"), None);
    }
}
