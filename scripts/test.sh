#!/usr/bin/env bash
# Installs every test prerequisite that is missing (idempotently), then runs the
# whole test suite: unit tests, integration tests against real peers (mosquitto,
# moto server, real sockets and /proc, a strict Greengrass test nucleus checked
# against AWS's own Python client), plugin builds, the Raspberry Pi builds
# under qemu-user, and the Splunk app through Splunk AppInspect.
#
#   scripts/test.sh            install what is missing, then test everything
#   scripts/test.sh -- ARGS    only the host tests, with ARGS for `cargo nextest
#                              run` (a filter such as `plugins::`, --no-run,
#                              --no-capture); what they need is built on demand
#
# Every stage is timed (wall and CPU); CONTRIBUTING.md has the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
source scripts/stages.sh

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

stage "prerequisites (installs only what is missing)"

# 1. Debian packages, by the program each one provides.
missing=()
while read -r program package; do
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("$package")
done <<'LIST'
mosquitto mosquitto
openssl openssl
qemu-aarch64-static qemu-user-static
qemu-arm-static qemu-user-static
aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf
python3 python3
ss iproute2
setpriv util-linux
setcap libcap2-bin
LIST
[ -d /usr/aarch64-linux-gnu/lib ] || missing+=(libc6-dev-arm64-cross)
[ -d /usr/arm-linux-gnueabihf/lib ] || missing+=(libc6-dev-armhf-cross)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# Splunk AppInspect (python-magic) loads libmagic at import.
dpkg -s libmagic1 >/dev/null 2>&1 || missing+=(libmagic1)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u)
fi
# Debian starts a mosquitto service on port 1883 at install; the tests start
# their own brokers on free ports and need none.
export PATH="$PATH:/usr/sbin"

# 2. Rust targets: plugins (wasm32-wasip2) and the Raspberry Pi builds; the
#    test runner, cargo-nextest (one process per test, binaries in parallel,
#    each test's time).
installed=$(rustup target list --installed)
for target in wasm32-wasip2 aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  grep -qx "$target" <<<"$installed" || { say "adding Rust target $target"; rustup target add "$target"; }
done
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || { say "adding clippy"; rustup component add clippy; }

# 3. Python peers in a virtual environment, reinstalled only when the pinned
#    list changes.
venv="$repo/.venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating Python test environment in .venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
export DEFENDER_EDGE_PYTHON="$venv/bin/python"

# 4. The 4,000-connection fixtures and tests need more than 1,024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# 5. Clippy lints the host workspace while the tests' build compiles it:
#    clippy-driver as the workspace's rustc wrapper, which is how `cargo
#    clippy` works too, but on the test build instead of a `cargo check` of
#    every dependency of its own. Lints of every target (lib, bin, tests,
#    benches) with -D warnings, as `cargo clippy --workspace --all-targets --
#    -D warnings`. A setting on the cargo command line, not in the
#    environment, so the builds the tests start (plugins, Pi binaries) are
#    plain ones; the artifacts live beside those of a plain `cargo test`.
host=(--workspace --locked --config "build.rustc-workspace-wrapper=\"$clippy_driver\"")
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# 6. A focused run: only the host tests asked for.
if [ "${1:-}" = "--" ]; then
  shift
  stage "host tests: cargo nextest run $*"
  cargo nextest run "${host[@]}" "$@"
  exit 0
fi

# 7. Everything. What the tests need is built first, each in a stage of its
#    own, so that the test stage's time is the tests' and every build is done
#    once (the tests' own build calls then find nothing to do).
stage "build + clippy: host and its tests (dev profile)"
cargo nextest run "${host[@]}" --no-run
# Benchmarks are run by hand (docs/BENCHMARKS.md) but must keep building:
# built here in the dev profile, on the test build's dependencies, not in the
# bench profile (a second, optimised build of every dependency).
cargo test "${host[@]}" --benches --no-run -q

stage "build: Raspberry Pi binaries (qemu profile, aarch64 + armv7)"
# The build tests/integration/packaging.rs starts (same profile, features and
# target folder), both targets in one cargo call so that both cores stay busy.
cargo build --locked --bin defender-edge --profile qemu --no-default-features --features device \
  --target aarch64-unknown-linux-gnu --target armv7-unknown-linux-gnueabihf

stage "build: wasm plugins (plugins/, tests/fixtures/plugins/)"
# As tests/integration/plugins.rs builds them, into the same folder.
for workspace in plugins tests/fixtures/plugins; do
  cargo build --locked --target wasm32-wasip2 --release \
    --manifest-path "$workspace/Cargo.toml" \
    --target-dir "${DEFENDER_EDGE_WASM_TARGET_DIR:-target/wasm-guests}"
done

stage "host tests (cargo nextest run)"
cargo nextest run "${host[@]}"

stage "doc tests"
cargo test "${host[@]}" --doc -q

# The guest side (plugin SDK and examples) is its own workspace; its logic is
# unit-tested natively, without wasm.
stage "plugin SDK and examples, natively (cargo test)"
(cd plugins && cargo test --workspace --locked -q)
