# What the benchmark scripts share; sourced from the repository's root, never run by itself.
# Servers are pinned to core 0, the load tool to core 1.

# Sets herald_bin (HERALD, or this tree's release build), builds (BEFORE, when given, then
# herald_bin: the builds a before/after measures in every round) and LOAD (or this tree's load
# tool).
herald_and_load() {
  herald_bin=${HERALD:-target/release/herald}
  builds=("$herald_bin")
  [ -z "${BEFORE:-}" ] || builds=("$BEFORE" "$herald_bin")
  [ -n "${HERALD:-}" ] || cargo build --release --quiet
  if [ -z "${LOAD:-}" ]; then
    cargo bench --bench load --no-run --quiet 2>/dev/null
    LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
  fi
}

# Sets floor_bin: benches/floor.rs, built if needed.
floor_build() {
  cargo bench --bench floor --no-run --quiet 2>/dev/null || true
  floor_bin=$(ls -t target/release/deps/floor-* | grep -v '\.d$' | head -1)
}

load() { taskset -c 1 "$LOAD" --bench "$@"; }

# Joins a command's output lines into one.
one_line() { tr '\n' ' '; echo; }

# Installs Debian's packages named, unless each command or file named before them is there:
#   need <command-or-path>... -- <package>...
need() {
  local missing=""
  while [ "$1" != "--" ]; do
    if [ "${1#/}" != "$1" ]; then [ -e "$1" ] || missing=1; else command -v "$1" >/dev/null || missing=1; fi
    shift
  done
  shift
  [ -z "$missing" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; }
}

# A self-signed certificate for 127.0.0.1: $1/tls.crt and $1/tls.key.
self_signed() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$1/tls.key" -out "$1/tls.crt" -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
}

# nginx + nchan, one worker, in-memory channels: plain HTTP on 8090 and, with the certificate
# in $1 (see self_signed), TLS with HTTP/2 on 8443. Writes $1/nginx/nginx.conf.
nchan_conf() {
  mkdir -p "$1/nginx/logs"
  cat > "$1/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
error_log $1/nginx/logs/error.log warn;
pid $1/nginx/nginx.pid;
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
    ssl_certificate $1/tls.crt;
    ssl_certificate_key $1/tls.key;
    location ~ /pub/([\w:.-]+)$ { nchan_publisher; nchan_channel_id \$1; }
    location ~ /sub/([\w:.-]+)$ { nchan_subscriber; nchan_channel_id \$1; nchan_subscriber_first_message newest; }
  }
}
CONF
}

# Starts a server pinned to core 0 and waits until its port answers; sets $pid.
start() {
  local port=$1; shift
  taskset -c 0 "$@" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.1; done
  echo "server on port $port did not start" >&2; exit 1
}

# Stops a server started by `start`: $1 its pid, $2 the signal (default TERM).
stop() { kill "${2:--TERM}" "$1"; wait "$1" || true; }
