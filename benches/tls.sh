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
if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v openssl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan openssl
fi
herald_bin=${HERALD:-target/release/herald}
[ -n "${HERALD:-}" ] || cargo build --release --quiet
if [ -z "${LOAD:-}" ]; then
  cargo bench --bench load --no-run --quiet 2>/dev/null
  LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
fi
load() { taskset -c 1 "$LOAD" --bench "$@"; }
one_line() { tr '\n' ' '; echo; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/nginx/logs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/tls.key" -out "$work/tls.crt" -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
cat > "$work/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
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
  server {
    listen 127.0.0.1:8443 ssl http2;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
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
builds=("$herald_bin")
[ -z "${BEFORE:-}" ] || builds=("$BEFORE" "$herald_bin")
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
