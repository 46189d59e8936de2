#!/usr/bin/env bash
# The power-cut test (tests/power_cut.rs: herald's data directory on a FUSE file system that
# keeps only what was fsync'd, then killed and remounted from that) run N times in a row
# (default 20). Needs /dev/fuse and root, as the test does. Prints one line; non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
cargo test --release --test power_cut --no-run --quiet 2>/dev/null
passed=0
for i in $(seq "$runs"); do
  if cargo test --release --quiet --test power_cut >/tmp/herald-power-cut.log 2>&1; then
    passed=$((passed + 1))
  else
    echo "run $i failed:"; tail -20 /tmp/herald-power-cut.log; exit 1
  fi
done
echo "power cut: $passed of $runs runs lost no acknowledged event (3 cases each: small events, 20 KB events in sled's blob files, and events in a log segment prepared ahead)"
