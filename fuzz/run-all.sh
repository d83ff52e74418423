#!/usr/bin/env bash
# Runs every target for SECS seconds (default 180), JOBS at a time (default 2),
# with the committed seeds and the dictionary; logs go to logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${SECS:-180}
JOBS=${JOBS:-2}
TARGETS=${TARGETS:-"frame_decode handshake_server handshake_client session_server session_client pubsub_fanout"}
mkdir -p logs
cargo +nightly fuzz build
run() {
  local t=$1
  mkdir -p "corpus/$t"
  local seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -dict=dict/wharf.dict -print_final_stats=1 >"logs/$t.log" 2>&1 || true
  echo "$t: $(grep -E 'DONE' "logs/$t.log" | tail -1)"
  grep -E 'panicked|SUMMARY' "logs/$t.log" | head -3 || true
}
export -f run
export SECS
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run {}'
