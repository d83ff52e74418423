#!/usr/bin/env bash
# Runs every target for SECS seconds (default 180), JOBS at a time (default 2),
# with the committed seeds and the dictionary; logs go to logs/<target>.log.
# Exits non-zero if any target failed (a crash, a leak, a timeout or an
# out-of-memory: libFuzzer's exit status), after every target has run; the
# failing input is in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECS:-180}
JOBS=${JOBS:-2}
TARGETS=${TARGETS:-"frame_decode handshake_server handshake_client session_server session_client pubsub_fanout"}
mkdir -p logs
cargo +nightly fuzz build
run() {
  local t=$1 rc=0
  mkdir -p "corpus/$t"
  local seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -dict=dict/wharf.dict -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
  local execs secs
  execs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | tail -1 | awk '{print $2}')
  secs=$(grep -E 'Done [0-9]+ runs in' "logs/$t.log" | tail -1 | sed -E 's/.*in ([0-9]+) second.*/\1/')
  echo "$t: ${execs:-?} executions in ${secs:-?} s (exit $rc)"
  if [ "$rc" -ne 0 ]; then
    echo "$t FAILED; the end of logs/$t.log:" >&2
    grep -E 'panicked|SUMMARY|ERROR|Test unit written' "logs/$t.log" | head -5 >&2 || true
    return 1
  fi
}
export -f run
export SECS
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run {}'
