#!/usr/bin/env bash
# herald vs nginx+nchan in one run: each server pinned to core 0, the load tool to core 1.
# Needs Debian's nginx and libnginx-mod-nchan (installed here if missing). The floor
# (benches/floor.rs: encode once, write each subscriber's queue in one syscall, nothing else) is
# measured in the same run. Prints one line per measurement; BENCHMARKS.md records the medians.
# "burst" is 1,000 subscribers at 2,000 events/s: far more deliveries than writes can keep up
# with one at a time, so coalescing shows. Usage: benches/compare.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan
fi
cargo build --release --quiet
cargo bench --bench load --no-run --quiet 2>/dev/null
cargo bench --bench floor --no-run --quiet 2>/dev/null
floor_bin=$(ls -t target/release/deps/floor-* | grep -v '\.d$' | head -1)
load() { taskset -c 1 cargo bench --quiet --bench load -- "$@"; }

work=$(mktemp -d)
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
daemon off;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  server {
    listen 127.0.0.1:8090;
    location ~ /pub/([\w:.-]+)$ { nchan_publisher; nchan_channel_id \$1; }
    location ~ /sub/([\w:.-]+)$ { nchan_subscriber; nchan_channel_id \$1; nchan_subscriber_first_message newest; }
  }
}
CONF

for round in $(seq "$rounds"); do
  echo "== round $round"
  rm -rf "$work/data"
  taskset -c 0 target/release/herald --listen 127.0.0.1:7070 --data "$work/data" >/dev/null 2>&1 &
  herald=$!
  sleep 1
  echo -n "herald durable "; load publish --connections 16 --seconds 10
  echo -n "herald "; load latency --subscribers 200 --rate 250 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  kill -TERM $herald; wait $herald || true
  # The burst measures fan-out, so herald keeps events in memory here, as nchan does.
  taskset -c 0 target/release/herald --listen 127.0.0.1:7070 --memory >/dev/null 2>&1 &
  herald=$!
  sleep 1
  echo -n "herald burst "; load latency --subscribers 1000 --rate 2000 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  kill -TERM $herald; wait $herald || true

  taskset -c 0 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
  nginx=$!
  sleep 1
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan memory "; load publish --target nchan --url http://127.0.0.1:8090 --connections 16 --seconds 10
  echo -n "nchan "; load latency --target nchan --url http://127.0.0.1:8090 --subscribers 200 --rate 250 --seconds 10 --server-pid "$worker" | tr '\n' ' '; echo
  echo -n "nchan burst "; load latency --target nchan --url http://127.0.0.1:8090 --subscribers 1000 --rate 2000 --seconds 10 --server-pid "$worker" | tr '\n' ' '; echo
  kill -QUIT $nginx; wait $nginx || true

  taskset -c 0 "$floor_bin" 127.0.0.1:7080 >/dev/null &
  floor=$!
  sleep 1
  echo -n "floor "; load latency --url http://127.0.0.1:7080 --subscribers 200 --rate 250 --seconds 10 --server-pid $floor | tr '\n' ' '; echo
  echo -n "floor burst "; load latency --url http://127.0.0.1:7080 --subscribers 1000 --rate 2000 --seconds 10 --server-pid $floor | tr '\n' ' '; echo
  kill $floor; wait $floor || true
done
rm -rf "$work"
