#!/usr/bin/env bash
# Starvation: herald's checkpoint thread settles at idle priority (src/broker/engine/local/
# priority.rs), and a settle holds sled's lock on the whole store. Here two CPU hogs at normal
# priority share core 0 with herald, as other programs on a busy machine would; bursts of 600
# single publishes make settles start at idle priority while a reader fetches old events (from
# sled) every 10 ms. Prints the reads' and the publishes' latency: with the watchdog that raises
# a starved settle they stay at what they are with the thread at normal priority (run as an
# unprivileged user to see that: the thread then never goes idle).
#   benches/proof/starve.sh [herald binary]
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/common.sh
bin=${1:-target/release/herald}
[ -n "${1:-}" ] || cargo build --release --quiet
data=$(mktemp -d)
hogs=()
trap 'kill "${hogs[@]}" 2>/dev/null || true; rm -rf "$data"' EXIT
start 7070 "$bin" --listen 127.0.0.1:7070 --data "$data/d" --max-len 0
herald=$pid

# 5,000 old events, settled into sled before the hogs start.
python3 - <<'PY'
import json, urllib.request
body = json.dumps([{"stream": "old", "data": "x" * 100} for _ in range(1000)]).encode()
for _ in range(5):
    request = urllib.request.Request("http://127.0.0.1:7070/publish", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()
PY
sleep 2
for _ in 1 2; do
  taskset -c 0 sh -c 'while :; do :; done' &
  hogs+=($!)
done
sleep 0.5

taskset -c 1 python3 - <<'PY'
import threading, time, urllib.request
reads, publishes = [], []
def read():
    end = time.time() + 6
    while time.time() < end:
        t = time.time()
        urllib.request.urlopen("http://127.0.0.1:7070/streams/old/events?after=0&limit=100").read()
        reads.append(time.time() - t)
        time.sleep(0.01)
reader = threading.Thread(target=read)
reader.start()
for burst in range(5):
    for _ in range(600):
        t = time.time()
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:7070/streams/new", b"y" * 100)).read()
        publishes.append(time.time() - t)
    time.sleep(0.8)
reader.join()
ms = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))] * 1000
print(f"starve: beside 2 CPU hogs, {len(reads)} reads from sled: p50 {ms(reads, .5):.1f} ms, "
      f"p99 {ms(reads, .99):.1f} ms, max {max(reads) * 1000:.1f} ms; {len(publishes)} publishes: "
      f"p99 {ms(publishes, .99):.1f} ms, max {max(publishes) * 1000:.1f} ms")
PY
stop $herald
