//! Helpers shared by the integration tests: where the binary and the fixtures
//! are, and the Python virtual environment the test script creates.

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
