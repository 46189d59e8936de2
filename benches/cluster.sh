#!/usr/bin/env bash
# herald on Redis, beside Redis itself, in one run:
# 1. publishes/s through herald --redis (16 and 64 connections, single-event POSTs; and batches
#    of 1,000) next to redis-benchmark's XADD on the same Redis — with appendfsync always, then
#    everysec;
# 2. fan-out: 200 subscribers x 250 events/s (100-byte events) on one node, then the same
#    subscribers split over two nodes: server CPU per 1,000 deliveries for each node and for
#    Redis, p50/p99 — and herald on its local sled log in the same run, for reference;
# 3. catch-up replay from Redis: one subscriber reads the batch-published events (last_id=0).
# Redis and the herald nodes are pinned to core 0, the load tool and redis-benchmark to core 1.
# Prints one line per measurement; BENCHMARKS.md records the medians.
# Usage: benches/cluster.sh [rounds]. HERALD=<binary>, LOAD=<binary> as in compare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source benches/common.sh
need redis-server redis-benchmark -- redis-server redis-tools
herald_and_load

work=$(mktemp -d)
port=16390
redis=""
nodes=()
cleanup() {
  for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # $1: appendfsync always|everysec
  redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
  sleep 0.3
  rm -rf "$work/redis" && mkdir -p "$work/redis"
  taskset -c 0 redis-server --port $port --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync "$1" --save "" --daemonize yes --logfile "$work/redis/log"
  until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
  redis=$(redis-cli -p $port info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
}

start_node() { # $1: port; extra flags after. Sets $node to its pid.
  local listen=$1; shift
  taskset -c 0 "$herald_bin" --listen 127.0.0.1:$listen "$@" >"$work/node$listen.log" 2>&1 &
  node=$!
  nodes+=("$node")
  until curl -s -o /dev/null http://127.0.0.1:$listen/healthz; do sleep 0.05; done
}

stop_nodes() {
  for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  nodes=()
}

data=$(printf 'x%.0s' $(seq 100))
for round in $(seq "$rounds"); do
  echo "== round $round"
  for fsync in always everysec; do
    start_redis $fsync
    for c in 16 64; do
      echo -n "redis-benchmark XADD $fsync c=$c: "
      taskset -c 1 redis-benchmark -p $port -c $c -n 100000 -q XADD bench '*' data "$data" | tr '\r' '\n' | grep -v '^$' | tail -1
    done
    redis-cli -p $port del bench >/dev/null
    start_node 7171 --redis redis://127.0.0.1:$port --max-len 0
    a=$node
    for c in 16 64; do
      echo -n "herald on redis $fsync c=$c: "; load publish --url http://127.0.0.1:7171 --connections $c --seconds 10 | tr '\n' ' '; echo
    done
    echo -n "herald on redis $fsync batches: "
    load replay --url http://127.0.0.1:7171 --events 200000 --batch 1000 --connections 4 --server-pid $a | tr '\n' ' '; echo
    echo "redis used_memory after: $(redis-cli -p $port info memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')"
    stop_nodes
  done

  start_redis always
  start_node 7171 --redis redis://127.0.0.1:$port
  a=$node
  start_node 7172 --redis redis://127.0.0.1:$port
  b=$node
  echo -n "fan-out one node (A; B idle, Redis): "
  load latency --url http://127.0.0.1:7171 --subscribers 200 --rate 250 --seconds 10 \
    --server-pid $a --server-pid $b --server-pid $redis | tr '\n' ' '; echo
  echo -n "fan-out two nodes (A, B, Redis): "
  load latency --url http://127.0.0.1:7171 --subscribe-at http://127.0.0.1:7171 \
    --subscribe-at http://127.0.0.1:7172 --subscribers 200 --rate 250 --seconds 10 \
    --server-pid $a --server-pid $b --server-pid $redis | tr '\n' ' '; echo
  stop_nodes
  rm -rf "$work/sled"
  start_node 7173 --data "$work/sled"
  echo -n "fan-out herald on sled (reference): "
  load latency --url http://127.0.0.1:7173 --subscribers 200 --rate 250 --seconds 10 \
    --server-pid $node | tr '\n' ' '; echo
  stop_nodes
done
