//! The compile cache: plugins compiled by this host, kept under its state
//! directory so a restart does not compile again.
//!
//! wasmtime runs cached native code without checking it, so whoever can
//! write an entry can run code in the host. An entry is therefore used only
//! when all of these hold, and is otherwise removed and compiled again:
//! - it is a regular file, not a symbolic link (opened with `O_NOFOLLOW`);
//! - it is owned by the user the host runs as, and neither group- nor
//!   other-writable (the directory too);
//! - its content has the sha256 recorded in its name when it was written.
//!
//! Entries are named `<wasm sha256>-<engine>-<artifact sha256>.cwasm`: the
//! first two parts are the key (the component and the engine that compiled
//! it), the last one the artifact's own digest. Writes are atomic (temp
//! file, fsync, rename, fsync of the directory) with mode 0600.
//!
//! The checks guard against corruption and against other users; they cannot
//! tell the host's own user from a process running as the same user, which
//! is why docs/DEPLOY.md gives the host a user of its own.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

/// Entries kept; older ones (by modification time) are removed when a new
/// one is written, so development reloads do not fill the disk. Far more
/// than the plugins one device runs.
const ENTRIES: usize = 32;

/// The cache directory, checked once when opened.
#[derive(Debug, Clone)]
pub(crate) struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Creates `dir` (mode 0700) if needed and checks that only this user
    /// can write it.
    pub fn open(dir: &Path) -> std::io::Result<CompileCache> {
        create_private_dir(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if let Some(why) = untrusted(&meta) {
            return Err(std::io::Error::other(format!(
                "{}: {why}; not using it as the compile cache",
                dir.display()
            )));
        }
        Ok(CompileCache {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact stored under `key`, verified. An entry that fails a
    /// check is logged, removed and skipped.
    pub fn get(&self, key: &str) -> Option<(PathBuf, Vec<u8>)> {
        for path in self.entries(key) {
            match read_verified(&path) {
                Ok(bytes) => return Some((path, bytes)),
                Err(why) => {
                    warn!(path = %path.display(), reason = %why, "refusing compile cache entry; compiling again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        None
    }

    /// Stores `bytes` under `key`, replacing other entries of that key.
    pub fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self
            .dir
            .join(format!("{key}-{}.cwasm", hex(&Sha256::digest(bytes))));
        crate::state::write_atomically(&path, bytes)?;
        // The temp file was created with the process umask; an entry must
        // not stay writable by the group even for a moment longer.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        for old in self.entries(key) {
            if old != path {
                let _ = std::fs::remove_file(old);
            }
        }
        evict(&self.dir, ENTRIES)?;
        Ok(path)
    }

    /// Files whose name says they hold `key`.
    fn entries(&self, key: &str) -> Vec<PathBuf> {
        let prefix = format!("{key}-");
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".cwasm"))
            })
            .collect();
        found.sort();
        found
    }
}

/// Reads an entry through every check in the module documentation.
fn read_verified(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let recorded = name
        .strip_suffix(".cwasm")
        .and_then(|n| n.rsplit_once('-'))
        .map(|(_, digest)| digest)
        .filter(|d| d.len() == 64)
        .ok_or("its name records no digest")?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                "is a symbolic link".to_owned()
            } else {
                format!("cannot open it: {e}")
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if let Some(why) = untrusted(&meta) {
        return Err(why);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != recorded {
        return Err(format!(
            "its content (sha256 {}) is not what was written (sha256 {})",
            &actual[..12],
            &recorded[..12]
        ));
    }
    Ok(bytes)
}

/// Why a file or directory with this metadata may have been written by
/// someone else, if it may.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("is a symbolic link".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by the host's user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "is writable by its group or by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Removes the oldest `.cwasm` files beyond `keep`.
fn evict(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::symlink_metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if entries.len() <= keep {
        return Ok(());
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() - keep] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Creates the cache directory readable by the host's user only: anyone who
/// can write a `.cwasm` there can run native code in the host.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("{i}.cwasm")), b"x").expect("write");
            // Distinct modification times even on coarse file systems.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(dir.path().join("other.txt"), b"x").expect("write");
        evict(dir.path(), 2).expect("evict");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["3.cwasm", "4.cwasm", "other.txt"]);
    }

    #[test]
    fn entries_are_verified_and_refused_ones_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = CompileCache::open(&dir.path().join("cache")).expect("open");
        let path = cache.put("k", b"artifact").expect("put");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").mode() & 0o777,
            0o600
        );
        assert_eq!(cache.get("k").expect("entry").1, b"artifact");
        assert!(cache.get("other").is_none());

        // Each way an entry can be untrustworthy, one at a time.
        type Spoil = fn(&Path);
        let spoilers: [(&str, Spoil); 4] = [
            ("content", |p| std::fs::write(p, b"planted").expect("write")),
            ("mode", |p| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o620)).expect("chmod")
            }),
            ("owner", |p| {
                std::os::unix::fs::chown(p, Some(65534), None).expect("chown (tests run as root)")
            }),
            ("symlink", |p| {
                let target = p.with_extension("elsewhere");
                std::fs::rename(p, &target).expect("move");
                std::os::unix::fs::symlink(&target, p).expect("symlink");
            }),
        ];
        for (what, spoil) in spoilers {
            let path = cache.put("k", b"artifact").expect("put");
            spoil(&path);
            assert!(cache.get("k").is_none(), "{what}: entry used");
            assert!(
                std::fs::symlink_metadata(&path).is_err(),
                "{what}: entry not removed"
            );
        }
    }
}
