//! Helpers shared by the integration tests: where the binary and the fixtures
//! are, the Python virtual environment the test script creates, and the one
//! security profile the detection tests run.

use std::path::PathBuf;

/// The `defender-edge` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_defender-edge"))
}

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests").join("fixtures").join(rel)
}

/// The Python interpreter of the test virtual environment, which
/// `scripts/test.sh` creates with every Python test prerequisite. Panics with
/// instructions when it is missing: a test never skips silently.
pub fn python() -> PathBuf {
    let path = std::env::var_os("DEFENDER_EDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv").join("bin").join("python"));
    assert!(
        path.exists(),
        "Python test environment missing at {}: run scripts/test.sh once (it creates .venv with moto, awsiotsdk, cbor2 \
         and AWSIoTDeviceDefenderAgentSDK), or set DEFENDER_EDGE_PYTHON",
        path.display()
    );
    path
}

/// Fails with an install hint when a system program the test needs is absent.
pub fn require_program(name: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run scripts/test.sh, or `apt-get install {debian_package}`"
        )
    })
}

/// A small file system made for one test, for disk faults on a real kernel
/// path: a size-limited tmpfs on a fresh directory. It is unmounted when
/// dropped, also when the test fails (lazily, so a file still open cannot
/// keep it mounted). Mounting needs root; CI runs as root.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// A tmpfs of `bytes` bytes (rounded up to pages by the kernel).
    pub fn tmpfs(bytes: u64) -> SmallFs {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a small file system to make the disk full or read-only, which needs root: \
             run the suite as root (CI does), e.g. `sudo -E scripts/test.sh`"
        );
        let mount = require_program("mount", "mount");
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = SmallFs { dir };
        fs.run(
            &mount,
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ],
        );
        fs
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `mount -o remount,ro`, as the kernel does to a failing SD card. Fails
    /// (EBUSY) while any file on it is open for writing.
    pub fn remount_read_only(&self) {
        self.run(&require_program("mount", "mount"), &["-o", "remount,ro"]);
    }

    /// `mount -o remount,rw`: the card is writable again.
    pub fn remount_writable(&self) {
        self.run(&require_program("mount", "mount"), &["-o", "remount,rw"]);
    }

    /// Fills the file system with `name` until the kernel says `ENOSPC`.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .expect("filler file");
        for chunk in [65_536usize, 4096, 512, 1] {
            let block = vec![0x5a; chunk];
            loop {
                match file.write(&block) {
                    Ok(n) if n == chunk => continue,
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }

    fn run(&self, program: &std::path::Path, args: &[&str]) {
        let output = std::process::Command::new(program)
            .args(args)
            .arg(self.path())
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "{} {} {}: {}",
            program.display(),
            args.join(" "),
            self.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .output();
    }
}

/// The security profile the end-to-end detection tests run: a listening TCP
/// port `port` is an alarm after one datapoint and clears after
/// `datapoints_to_clear` without it.
pub fn rogue_listener_profile(port: u16, datapoints_to_clear: u32) -> serde_json::Value {
    serde_json::json!({
        "securityProfileName": "NoRogueListener",
        "behaviors": [{
            "name": "RoguePortClosed",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "not-in-port-set",
                "value": {"ports": [port]},
                "consecutiveDatapointsToAlarm": 1,
                "consecutiveDatapointsToClear": datapoints_to_clear}
        }]
    })
}
