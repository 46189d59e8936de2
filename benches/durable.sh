#!/usr/bin/env bash
# Durable publishing against its peers, in one run: issue 24's goal table. Each server is pinned
# to core 0, the load tool and redis-benchmark to core 1.
#   - herald durable (a 201 after fdatasync) and herald --memory: single-event POSTs/s on 16 and
#     64 keep-alive connections; fan-out (200 subscribers × 250 events/s for 10 s): server CPU
#     per 1,000 deliveries and publish→receive p99.
#   - Redis XADD with appendonly yes, appendfsync always (redis-benchmark -c 16 and -c 64, 100-byte
#     field): the peer for durable publishing.
#   - nginx + nchan (in memory): the peer for p99. The floor (benches/floor.rs: encode once, one
#     write per subscriber, nothing else): the peer for CPU per delivery.
# Usage: benches/durable.sh [rounds]
# HERALD=<binary> measures that build instead of this tree's; BEFORE=<binary> measures a second
# build beside it in every round; LOAD=<binary> uses that load tool build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source benches/common.sh
need /usr/lib/nginx/modules/ngx_nchan_module.so openssl redis-benchmark -- nginx libnginx-mod-nchan openssl redis-server redis-tools
herald_and_load
floor_build

work=$(mktemp -d)
trap 'redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
self_signed "$work"
nchan_conf "$work"

fanout="--subscribers 200 --rate 250 --seconds 10"
data=$(printf 'x%.0s' $(seq 100))
for round in $(seq "$rounds"); do
  echo "== round $round"
  for bin in "${builds[@]}"; do
    name="herald($(basename "$bin"))"
    for mode in durable memory; do
      rm -rf "$work/data"
      if [ $mode = durable ]; then
        start 7070 "$bin" --listen 127.0.0.1:7070 --data "$work/data" --max-len 0
      else
        start 7070 "$bin" --listen 127.0.0.1:7070 --memory --max-len 0
      fi
      herald=$pid
      for c in 16 64; do
        echo -n "$name $mode c=$c "; load publish --connections $c --seconds 10
      done
      echo -n "$name $mode fan-out "; load latency $fanout --server-pid $herald | one_line
      stop $herald
    done
  done

  rm -rf "$work/redis" && mkdir -p "$work/redis"
  taskset -c 0 redis-server --port 6391 --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save "" --daemonize yes --logfile "$work/redis/log"
  until redis-cli -p 6391 ping >/dev/null 2>&1; do sleep 0.05; done
  for c in 16 64; do
    echo -n "redis XADD appendfsync always c=$c: "
    taskset -c 1 redis-benchmark -p 6391 -c $c -n 100000 -q XADD bench '*' data "$data" | tr '\r' '\n' | grep -v '^$' | tail -1
  done
  redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true

  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan fan-out "; load latency --target nchan --url http://127.0.0.1:8090 $fanout --server-pid "$worker" | one_line
  stop $nginx -QUIT

  start 7080 "$floor_bin" 127.0.0.1:7080
  floor=$pid
  echo -n "floor fan-out "; load latency --url http://127.0.0.1:7080 $fanout --server-pid $floor | one_line
  stop $floor
done
