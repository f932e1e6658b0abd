#!/usr/bin/env bash
# Installs every test prerequisite that is missing (idempotently), then runs the
# whole test suite: unit tests, integration tests against real peers (mosquitto,
# moto server, real sockets and /proc, a strict Greengrass test nucleus checked
# against AWS's own Python client), plugin builds, the Raspberry Pi builds
# under qemu-user, and the Splunk app through Splunk AppInspect.
#
#   scripts/test.sh            install what is missing, then test everything
#   scripts/test.sh -- ARGS    extra arguments for `cargo test` (e.g. a filter)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

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

# 2. Rust targets: plugins (wasm32-wasip2) and the Raspberry Pi builds.
installed=$(rustup target list --installed)
for target in wasm32-wasip2 aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  grep -qx "$target" <<<"$installed" || { say "adding Rust target $target"; rustup target add "$target"; }
done

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

# 5. Everything.
say "running the test suite"
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
cargo test --workspace --locked "${extra[@]}"
# Benchmarks are run by hand (docs/BENCHMARKS.md), but must keep compiling.
cargo bench --workspace --locked --no-run -q
# The guest side (plugin SDK and examples) is its own workspace; its logic is
# unit-tested natively, without wasm.
if [ -f plugins/Cargo.toml ]; then
  say "testing the plugin SDK and examples natively"
  (cd plugins && cargo test --workspace --locked)
fi
