#!/usr/bin/env bash
# herald vs nginx+nchan in one run: each server pinned to core 0, the load tool to core 1.
# Needs Debian's nginx and libnginx-mod-nchan (installed here if missing). The floor
# (benches/floor.rs: encode once, write each subscriber's queue in one syscall, nothing else) is
# measured in the same run. Prints one line per measurement; BENCHMARKS.md records the medians.
# "burst" is 1,000 subscribers that only count frames and 4 publishers posting as fast as they
# are answered: far more deliveries than one write each can carry, so coalescing shows. "idle"
# holds 19,000 SSE connections and reports server RSS per connection, in plain HTTP/1.1 and over
# TLS (a self-signed certificate made here with openssl); "idle-h2" holds 19,000 SSE streams over
# HTTP/2, 10 per connection (as a browser's tabs share one), and reports RSS per stream. "replay" batch-publishes
# 1,000,000 events durably, then reads them all back from the log on one connection (again with
# --cache-mb 1024, twice). "stalled" holds 100 subscribers that never read while batches are
# published as fast as they are answered, and samples server RSS each second.
# Usage: benches/compare.sh [rounds]
# HERALD=<binary> measures that herald build instead of this tree's (for a before/after in one
# session), LOAD=<binary> uses that load tool build (so a tree being edited is not rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source benches/common.sh
need /usr/lib/nginx/modules/ngx_nchan_module.so openssl -- nginx libnginx-mod-nchan openssl
herald_and_load
floor_build

work=$(mktemp -d)
self_signed "$work"
nchan_conf "$work"

for round in $(seq "$rounds"); do
  echo "== round $round"
  rm -rf "$work/data"
  start 7070 "$herald_bin" --listen 127.0.0.1:7070 --data "$work/data" --max-len 0
  herald=$pid
  echo -n "herald durable "; load publish --connections 16 --seconds 10
  echo -n "herald "; load latency --subscribers 200 --rate 250 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  load replay --events 1000000 --batch 1000 --connections 4 --server-pid $herald | sed 's/^/herald /'
  echo "herald rss after replay: $(grep VmRSS /proc/$herald/status)"
  echo -n "herald "; load stalled --stalled 100 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  stop $herald
  # Catch-up with the replayed range in sled's cache: the second pass reads no disk.
  rm -rf "$work/data"
  start 7070 "$herald_bin" --listen 127.0.0.1:7070 --data "$work/data" --max-len 0 --cache-mb 1024
  herald=$pid
  load replay --events 1000000 --batch 1000 --connections 4 --passes 2 --server-pid $herald | sed 's/^/herald cache-mb 1024 /'
  stop $herald
  rm -rf "$work/data"
  start 7070 "$herald_bin" --listen 127.0.0.1:7070 --data "$work/data"
  herald=$pid
  echo -n "herald "; load idle --connections 19000 --server-pid $herald
  stop $herald
  rm -rf "$work/data"
  start 7443 "$herald_bin" --listen 127.0.0.1:7443 --data "$work/data" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
  herald=$pid
  echo -n "herald tls "; load idle --url https://127.0.0.1:7443 --connections 19000 --server-pid $herald --ca "$work/tls.crt"
  stop $herald
  rm -rf "$work/data"
  start 7443 "$herald_bin" --listen 127.0.0.1:7443 --data "$work/data" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
  herald=$pid
  echo -n "herald "; load idle-h2 --streams 19000 --streams-per-connection 10 --server-pid $herald --ca "$work/tls.crt"
  stop $herald
  # Stored, but acknowledged before the fsync (a crash may lose the last 100 ms).
  rm -rf "$work/data"
  start 7070 "$herald_bin" --listen 127.0.0.1:7070 --data "$work/data" --flush-interval 100
  herald=$pid
  echo -n "herald flush-interval 100 "; load publish --connections 16 --seconds 10
  stop $herald
  # The burst measures fan-out, so herald keeps events in memory here, as nchan does.
  start 7070 "$herald_bin" --listen 127.0.0.1:7070 --memory
  herald=$pid
  echo -n "herald memory "; load publish --connections 16 --seconds 10
  echo -n "herald memory "; load latency --subscribers 200 --rate 250 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  echo -n "herald "; load burst --subscribers 1000 --publishers 4 --seconds 10 --server-pid $herald | tr '\n' ' '; echo
  stop $herald

  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan memory "; load publish --target nchan --url http://127.0.0.1:8090 --connections 16 --seconds 10
  echo -n "nchan "; load latency --target nchan --url http://127.0.0.1:8090 --subscribers 200 --rate 250 --seconds 10 --server-pid "$worker" | tr '\n' ' '; echo
  echo -n "nchan "; load burst --target nchan --url http://127.0.0.1:8090 --subscribers 1000 --publishers 4 --seconds 10 --server-pid "$worker" | tr '\n' ' '; echo
  echo -n "nchan "; load idle --target nchan --url http://127.0.0.1:8090 --connections 19000 --server-pid "$worker"
  stop $nginx -QUIT
  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan tls "; load idle --target nchan --url https://127.0.0.1:8443 --connections 19000 --server-pid "$worker" --ca "$work/tls.crt"
  stop $nginx -QUIT
  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan "; load idle-h2 --target nchan --url https://127.0.0.1:8443 --streams 19000 --streams-per-connection 10 --server-pid "$worker" --ca "$work/tls.crt"
  stop $nginx -QUIT

  start 7080 "$floor_bin" 127.0.0.1:7080
  floor=$pid
  echo -n "floor "; load latency --url http://127.0.0.1:7080 --subscribers 200 --rate 250 --seconds 10 --server-pid $floor | tr '\n' ' '; echo
  echo -n "floor "; load burst --url http://127.0.0.1:7080 --subscribers 1000 --publishers 4 --seconds 10 --server-pid $floor | tr '\n' ' '; echo
  stop $floor
done
rm -rf "$work"
