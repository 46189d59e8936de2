#!/usr/bin/env bash
# Two herald builds measured alternately in one run, for a change that must not be slower:
# durable and --memory POSTs/s (16 connections), fan-out CPU per 1,000 deliveries and
# publish→receive latency (200 subscribers, 250 events/s), idle memory per SSE connection.
# The server is pinned to core 0, the load tool to core 1, as in compare.sh.
# Usage: benches/ab.sh <herald binary A> <herald binary B> [rounds]   (LOAD=<load tool binary>)
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-2}
# The load tool, built once: calling it through cargo would rebuild it whenever the tree changes.
load_bin=${LOAD:-}
if [ -z "$load_bin" ]; then
  cargo bench --bench load --no-run --quiet 2>/dev/null
  load_bin=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
fi
load() { taskset -c 1 "$load_bin" --bench "$@"; }
work=$(mktemp -d)
start() {
  taskset -c 0 "$@" --listen 127.0.0.1:7070 >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/7070) 2>/dev/null && return; sleep 0.1; done
  echo "herald did not start" >&2; exit 1
}
stop() { kill -TERM "$1"; wait "$1" || true; }
for round in $(seq "$rounds"); do
  for side in A B; do
    bin=$a; [ "$side" = B ] && bin=$b
    echo "== round $round, $side ($bin)"
    rm -rf "$work/data"
    start "$bin" --data "$work/data" --max-len 0
    echo -n "$side durable "; load publish --connections 16 --seconds 8
    echo -n "$side durable "; load latency --subscribers 200 --rate 250 --seconds 8 --server-pid $pid | tr '\n' ' '; echo
    stop $pid
    start "$bin" --memory
    echo -n "$side memory "; load publish --connections 16 --seconds 8
    echo -n "$side memory "; load latency --subscribers 200 --rate 250 --seconds 8 --server-pid $pid | tr '\n' ' '; echo
    stop $pid
    rm -rf "$work/data"
    start "$bin" --data "$work/data"
    echo -n "$side "; load idle --connections 19000 --server-pid $pid
    stop $pid
  done
done
rm -rf "$work"
