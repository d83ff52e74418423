#!/usr/bin/env bash
# Runs every fault scenario of tests/faults.rs, the heavy ones included
# (1000 client kills, 10,000 connections, 200,000 published messages and a
# minute of publishing at 1,000 msg/s to 100 subscribers per adapter: tokio,
# smol, async-std; the same on a wharf-mio loop),
# one at a time, printing what each measured (the full log goes to
# target/faults.log). Linux only. About 7 minutes on a 2-core machine.
# Extra arguments go to the test binary, e.g. `tests/faults.sh tokio::` for
# one adapter (`wharf_mio::` for the mio loop). WHARF_FAULT_KILLS=10000 sets
# the length of the heavy kill loops (default 1000); WHARF_S5_RATE,
# WHARF_S5_SECS and WHARF_S5_SUBSCRIBERS the heavy S5 run (1000, 60, 100).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --test faults -- --include-ignored --nocapture --test-threads=1 "$@" 2>&1 |
  tee "${FAULTS_LOG:-target/faults.log}" | grep --line-buffered -E '^(S[0-9]+ |test |test result|thread .* panicked)'
