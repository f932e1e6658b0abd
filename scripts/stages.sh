# Stage timing for .ci/run and scripts/test.sh (sourced, not run).
#
#   stage "NAME"   starts a stage (and ends the previous one)
#   stage_end      ends the current stage
#   stage_table    prints every stage's times; the shell that sourced this
#                  first does it on exit, failed or not
#
# For each stage: wall time; CPU, the user + system time of every process the
# shell waited for during the stage (cargo, rustc, the test binaries and the
# peers they started), read from the shell's `times`; and "others", the CPU
# the rest of the machine used meanwhile (all busy time in /proc/stat minus
# ours). On a shared machine wall time depends on what else runs, CPU time
# hardly does: "alone" estimates the wall time on an idle machine as wall
# minus others / cores (what the other processes took from us), never below
# CPU / cores. CONTRIBUTING.md has the budget these are checked against.
#
# The rows go to $DEFENDER_EDGE_STAGE_TIMES (a file; .ci/run sets it so that
# the stages of scripts/test.sh land in its one table), or to a file of this
# shell's own.

# stage_owner: this shell made the file, so it prints the table.
if [ -z "${DEFENDER_EDGE_STAGE_TIMES:-}" ]; then
  DEFENDER_EDGE_STAGE_TIMES=$(mktemp -t defender-edge-stages.XXXXXX)
  trap stage_table EXIT
else
  trap 'stage_end; rm -f "$stage_times_file"' EXIT
fi
export DEFENDER_EDGE_STAGE_TIMES
stage_name=
stage_cores=$(nproc)
stage_hz=$(getconf CLK_TCK)

# Sets stage_cpu_now to the children's user + system seconds so far, and
# stage_busy_now to the whole machine's busy seconds. `times` must run in this
# shell: in a command substitution it would be a child's, with counters of its
# own.
stage_times_file=$(mktemp -t defender-edge-times.XXXXXX)
stage_read_cpu() {
  times > "$stage_times_file"
  stage_cpu_now=$(awk 'NR == 2 {
      total = 0
      for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); total += t[1] * 60 + t[2] }
      printf "%.1f\n", total
    }' "$stage_times_file")
  # user nice system idle iowait irq softirq steal: all but idle and iowait.
  stage_busy_now=$(awk -v hz="$stage_hz" '$1 == "cpu" {
      printf "%.1f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit
    }' /proc/stat)
}

stage_end() {
  [ -n "$stage_name" ] || return 0
  stage_read_cpu
  awk -v name="$stage_name" -v w0="$stage_wall0" -v w1="$EPOCHREALTIME" \
      -v c0="$stage_cpu0" -v c1="$stage_cpu_now" -v b0="$stage_busy0" -v b1="$stage_busy_now" \
      'BEGIN {
        cpu = c1 - c0; others = (b1 - b0) - cpu; if (others < 0) others = 0
        printf "%s\t%.1f\t%.1f\t%.1f\n", name, w1 - w0, cpu, others
      }' >> "$DEFENDER_EDGE_STAGE_TIMES"
  stage_name=
}

stage() {
  stage_end
  stage_name=$1
  stage_wall0=$EPOCHREALTIME
  stage_read_cpu
  stage_cpu0=$stage_cpu_now
  stage_busy0=$stage_busy_now
  printf '\033[1m==> %s\033[0m\n' "$1" >&2
}

stage_table() {
  stage_end
  rm -f "$stage_times_file"
  [ -s "$DEFENDER_EDGE_STAGE_TIMES" ] || return 0
  awk -F '\t' -v cores="$stage_cores" '
    function clock(s) { return sprintf("%d:%02d", int(s / 60), int(s % 60 + 0.5)) }
    function row(name, wall, cpu, others,  alone) {
      alone = wall - others / cores
      if (alone < cpu / cores) alone = cpu / cores
      if (alone > wall) alone = wall
      printf "%-58s %7s %7s %7s %7s\n", name, clock(wall), clock(cpu), clock(others), clock(alone)
      return alone
    }
    BEGIN { printf "\n%-58s %7s %7s %7s %7s\n", "stage (m:ss)", "wall", "cpu", "others", "alone" }
    { tw += $2; tc += $3; to += $4; ta += row($1, $2, $3, $4) }
    END {
      printf "%-58s %7s %7s %7s %7s\n", "total", clock(tw), clock(tc), clock(to), clock(ta)
      printf "(cpu: ours, user + system; others: the rest of this %d-core machine meanwhile;\n", cores
      printf " alone: wall - others / %d, an estimate of the wall time on an idle machine)\n", cores
    }' "$DEFENDER_EDGE_STAGE_TIMES" >&2
  rm -f "$DEFENDER_EDGE_STAGE_TIMES"
}
