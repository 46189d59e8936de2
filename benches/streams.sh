#!/usr/bin/env bash
# A hundred thousand streams beside a hundred, in one run: herald (durable, sled) pinned to core
# 0, the clients to core 1. For each count N (100, then 100,000), on a fresh data directory:
# 1. N streams with 3 events each, published in batches;
# 2. RSS after settling, and server CPU over 30 s of idle (no client, no publish);
# 3. 300 single-event POSTs to random streams, one after another: p50/p99 publish latency;
# 4. 300 subscriptions to random streams from the start (last_id=0), one after another: time
#    until the third event arrives, p50/p99;
# 5. the first page of GET /streams (1,000 names) and GET /streams?prefix=s-9999 timed;
# 6. fan-out on one stream among the N: the load tool's latency mode (200 subscribers x 250
#    events/s, 10 s), p50/p99 and server CPU per 1,000 deliveries.
# Usage: benches/streams.sh [counts...]  (default: 100 100000). HERALD=<binary>, LOAD=<binary>.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 100000)
source benches/common.sh
herald_and_load

work=$(mktemp -d)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=17171
url=http://127.0.0.1:$port
ticks=$(getconf CLK_TCK)

cpu_ms() { # user+system CPU of $pid so far, in ms
  awk -v t="$ticks" '{print ($14 + $15) * 1000 / t}' "/proc/$pid/stat"
}

for n in "${counts[@]}"; do
  rm -rf "$work/data"
  taskset -c 0 "$herald_bin" --listen 127.0.0.1:$port --data "$work/data" >"$work/log" 2>&1 &
  pid=$!
  until curl -s -o /dev/null $url/healthz; do sleep 0.05; done

  started=$(date +%s.%N)
  taskset -c 1 python3 - "$url" "$n" <<'EOF'
import json, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
per_batch = 1000  # streams per request, 3 events each
for start in range(0, n, per_batch):
    events = [{"stream": f"s-{i}", "data": f"event {k} of stream {i}"}
              for i in range(start, min(n, start + per_batch)) for k in range(3)]
    request = urllib.request.Request(f"{url}/publish", data=json.dumps(events).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()
EOF
  filled=$(echo "$(date +%s.%N) - $started" | bc)
  sleep 5
  rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  before=$(cpu_ms)
  sleep 30
  idle=$(echo "($(cpu_ms) - $before) / 30" | bc -l)
  printf 'streams=%d filled_in=%.1fs rss=%d KiB idle_cpu=%.2f ms/s\n' "$n" "$filled" "$rss_kib" "$idle"

  taskset -c 1 python3 - "$url" "$n" <<'EOF'
import random, socket, statistics, sys, time, urllib.request, json
url, n = sys.argv[1], int(sys.argv[2])
host, port = url.removeprefix("http://").split(":")
random.seed(1)
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000
publish = []
for _ in range(300):
    stream = f"s-{random.randrange(n)}"
    t = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(f"{url}/streams/{stream}", data=b"x" * 100)).read()
    publish.append(time.perf_counter() - t)
subscribe = []
for _ in range(300):
    stream = f"s-{random.randrange(n)}"
    t = time.perf_counter()
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET /sse?stream={stream}&last_id=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    got = b""
    while got.count(b"\nid: ") < 3:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"{stream}: closed after {got!r}")
        got += chunk
    subscribe.append(time.perf_counter() - t)
    s.close()
print(f"streams={n} publish_p50={pct(publish, .5):.2f}ms publish_p99={pct(publish, .99):.2f}ms "
      f"subscribe_p50={pct(subscribe, .5):.2f}ms subscribe_p99={pct(subscribe, .99):.2f}ms")
for path in ["/streams", "/streams?prefix=s-9999"]:
    t = time.perf_counter()
    with urllib.request.urlopen(f"{url}{path}") as r:
        body = r.read()
        link = r.headers.get("Link")
    print(f"streams={n} GET {path}: {(time.perf_counter() - t) * 1000:.1f} ms, "
          f"{len(json.loads(body))} names, next page: {'yes' if link else 'no'}")
EOF
  taskset -c 1 "$LOAD" --bench latency --url $url --subscribers 200 --rate 250 --seconds 10 \
    --server-pid "$pid" | sed "s/^/streams=$n fan-out: /"

  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
done
