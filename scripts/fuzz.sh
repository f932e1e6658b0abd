#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and
# prints, per target, the executions, executions per second and what was
# found. Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz when
# it is missing. Not part of CI (nightly and minutes per target); the normal
# test suite runs the same entry points on stable over the seeds and every
# kept regression (host/src/fuzz.rs).
#
#   scripts/fuzz.sh [SECONDS]
#
# Inputs a target finds go to fuzz/corpus/<target>/ (not committed); a crash
# goes to fuzz/artifacts/<target>/. To keep a crash as a regression test, fix
# it and copy the file to fuzz/regressions/<target>/.
# FUZZ_SANITIZER=address switches AddressSanitizer on (default: none; the
# code under test is safe Rust, and without ASan a target runs ~2x faster).
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../fuzz"

rustup toolchain list | grep -q '^nightly' || {
  echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
sanitizer=${FUZZ_SANITIZER:-none}
# outbox_recovery writes a small outbox per input: in a tmpfs fsync is free
# and the target runs some hundred times faster than on a disk.
[ -d /dev/shm ] && export TMPDIR=/dev/shm
targets=$(ls fuzz_targets | sed 's/\.rs$//' | sort)

cargo +nightly fuzz build --sanitizer "$sanitizer" >&2

failed=0
printf '%-20s %12s %10s %s\n' target executions execs/s found
for target in $targets; do
  mkdir -p "corpus/$target"
  dirs=("corpus/$target" "seeds/$target")
  [ -d "regressions/$target" ] && dirs+=("regressions/$target")
  log=$(mktemp)
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "${dirs[@]}" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    found=nothing
  else
    found="CRASH: see fuzz/artifacts/$target/ and $log"
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  printf '%-20s %12s %10s %s\n' "$target" "${runs:-?}" "${rate:-?}" "$found"
  [ "$found" = nothing ] && rm -f "$log"
done
exit "$failed"
