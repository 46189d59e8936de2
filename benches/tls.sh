#!/usr/bin/env bash
# SSE over TLS: herald against nginx+nchan over TLS in one run, each server pinned to core 0, the
# load tool to core 1. Per round and per server: publish→receive latency and server CPU per
# 1,000 deliveries (200 subscribers × 250 events/s for 10 s) over HTTP/1.1 + TLS, over HTTP/2
# (10 subscribers per connection, as a browser's EventSources share one), and in plain HTTP for
# scale; then idle memory per TLS connection (10,000 HTTP/1.1 subscribers). herald keeps events in
# memory here (`--memory`), as nchan does, so only the connections differ.
# Usage: benches/tls.sh [rounds]
# HERALD=<binary> measures that build instead of this tree's; BEFORE=<binary> measures a second
# build beside it in every round (a before/after in one run); LOAD=<binary> uses that load tool.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source benches/common.sh
need /usr/lib/nginx/modules/ngx_nchan_module.so openssl -- nginx libnginx-mod-nchan openssl
herald_and_load

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
self_signed "$work"
nchan_conf "$work"

fanout="--subscribers 200 --rate 250 --seconds 10"
for round in $(seq "$rounds"); do
  echo "== round $round"
  for bin in "${builds[@]}"; do
    name="herald($(basename "$bin"))"
    start 7443 "$bin" --listen 127.0.0.1:7443 --memory --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
    herald=$pid
    echo -n "$name tls h1 "; load latency --url https://127.0.0.1:7443 $fanout --server-pid $herald --ca "$work/tls.crt" --http1 | one_line
    echo -n "$name tls h2 "; load latency --url https://127.0.0.1:7443 $fanout --server-pid $herald --ca "$work/tls.crt" --per-connection 10 | one_line
    stop $herald
    start 7443 "$bin" --listen 127.0.0.1:7443 --memory --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
    herald=$pid
    echo -n "$name tls "; load idle --url https://127.0.0.1:7443 --connections 10000 --server-pid $herald --ca "$work/tls.crt"
    stop $herald
    start 7070 "$bin" --listen 127.0.0.1:7070 --memory
    herald=$pid
    echo -n "$name plain "; load latency $fanout --server-pid $herald | one_line
    stop $herald
  done
  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan tls h1 "; load latency --target nchan --url https://127.0.0.1:8443 $fanout --server-pid "$worker" --ca "$work/tls.crt" --http1 | one_line
  echo -n "nchan tls h2 "; load latency --target nchan --url https://127.0.0.1:8443 $fanout --server-pid "$worker" --ca "$work/tls.crt" --per-connection 10 | one_line
  echo -n "nchan plain "; load latency --target nchan --url http://127.0.0.1:8090 $fanout --server-pid "$worker" | one_line
  stop $nginx -QUIT
  start 8090 nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
  nginx=$pid
  worker=$(pgrep -P $nginx | head -1)
  echo -n "nchan tls "; load idle --target nchan --url https://127.0.0.1:8443 --connections 10000 --server-pid "$worker" --ca "$work/tls.crt"
  stop $nginx -QUIT
done
