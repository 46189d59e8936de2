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
if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan redis-server redis-tools
fi
herald_bin=${HERALD:-target/release/herald}
[ -n "${HERALD:-}" ] || cargo build --release --quiet
if [ -z "${LOAD:-}" ]; then
  cargo bench --bench load --no-run --quiet 2>/dev/null
  LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
fi
cargo bench --bench floor --no-run --quiet 2>/dev/null || true
floor_bin=$(ls -t target/release/deps/floor-* | grep -v '\.d$' | head -1)
load() { taskset -c 1 "$LOAD" --bench "$@"; }
one_line() { tr '\n' ' '; echo; }

work=$(mktemp -d)
trap 'redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
daemon off;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:8090;
    location ~ /pub/([\w:.-]+)$ { nchan_publisher; nchan_channel_id \$1; }
    location ~ /sub/([\w:.-]+)$ { nchan_subscriber; nchan_channel_id \$1; nchan_subscriber_first_message newest; }
  }
}
CONF

# Starts a server pinned to core 0 and waits until its port answers; sets $pid.
start() {
  local port=$1; shift
  taskset -c 0 "$@" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.1; done
  echo "server on port $port did not start" >&2; exit 1
}
stop() { kill "${2:--TERM}" "$1"; wait "$1" || true; }

fanout="--subscribers 200 --rate 250 --seconds 10"
data=$(printf 'x%.0s' $(seq 100))
builds=("$herald_bin")
[ -z "${BEFORE:-}" ] || builds=("$BEFORE" "$herald_bin")
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
