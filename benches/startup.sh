#!/usr/bin/env bash
# Start-up time of herald with a large store, after kill -9 and after a clean stop.
#   benches/startup.sh [events] [runs]      (defaults: 1000000 events, 5 runs each)
# Builds the store once (one stream, 100 B per event, durable `POST /publish` batches of 250 on
# 4 connections, by the load tool, which then replays them all), then for each run: start, wait
# for the "listening" line, publish one event, stop (kill -9 or SIGTERM), and time the next start
# to its "listening" line. Prints every run and the medians. herald runs on core 0, the load tool
# on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
RUNS=${2:-5}
PORT=7093
BIN=target/release/herald
DATA=$(mktemp -d /tmp/herald-startup-XXXXXX)
trap 'pkill -f "herald --listen 127.0.0.1:$PORT" || true; rm -rf "$DATA"' EXIT
cargo build --release --quiet
cargo bench --bench load --no-run --quiet 2>/dev/null

# Starts herald in the background; sets STARTUP to the seconds until its first stdout line.
start() {
  local t0
  t0=$(date +%s.%N)
  coproc HERALD { exec taskset -c 0 "$BIN" --listen 127.0.0.1:$PORT --data "$DATA" --max-len 0 2>/dev/null; }
  read -r _ <&"${HERALD[0]}"
  STARTUP=$(echo "$(date +%s.%N) - $t0" | bc)
}

stop() { # $1: KILL or TERM
  kill -"$1" "$HERALD_PID"
  wait "$HERALD_PID" 2>/dev/null || true
}

start
taskset -c 1 cargo bench --quiet --bench load -- replay --url http://127.0.0.1:$PORT --events "$EVENTS" \
  --batch 250 --connections 4 --server-pid "$HERALD_PID"
echo "store $(du -sh "$DATA" | cut -f1); server rss $(grep VmRSS /proc/"$HERALD_PID"/status)"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for how in KILL TERM; do
  times=()
  for run in $(seq "$RUNS"); do
    curl -sf -o /dev/null -XPOST http://127.0.0.1:$PORT/streams/s0 -d "run $run"
    stop "$how"
    start
    times+=("$STARTUP")
    echo "start-up after $how, run $run: $STARTUP s"
  done
  echo "median start-up after $how: $(printf '%s\n' "${times[@]}" | median) s"
done
stop TERM
