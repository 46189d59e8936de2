#!/usr/bin/env python3
"""kill -9 cycles under concurrent publishing: every acknowledged event is present after all
of them, under the id it was acknowledged with; no id is ever used twice; every stream reads in
id order.

herald (release, on a data directory of its own) is killed with SIGKILL at a random moment every
0.2-1.0 s while PUBLISHERS threads publish single events and batches to a handful of streams, and
started again on the same directory and port. A publish that got no answer may or may not be
stored (that is allowed: it was never acknowledged); a 201's ids must all be there.

With --flush-interval MS, herald acknowledges before fsync: an acknowledged event may then be
lost, but only one acknowledged within MS (plus one fsync) before a kill — the documented window.
The script checks exactly that: every lost event was acknowledged in the window before a kill.

Usage: benches/proof/kill9.py [--cycles 100] [--flush-interval MS] [--herald target/release/herald]
Prints one summary line; exits non-zero on any violation.
"""
import argparse, http.client, json, os, random, signal, subprocess, sys, tempfile, threading, time

parser = argparse.ArgumentParser()
parser.add_argument("--cycles", type=int, default=100)
parser.add_argument("--flush-interval", type=int, default=None)
parser.add_argument("--herald", default="target/release/herald")
parser.add_argument("--publishers", type=int, default=4)
args = parser.parse_args()

STREAMS = [f"k{i}" for i in range(5)]
data_dir = tempfile.mkdtemp(prefix="herald-kill9-")
port = 17300 + os.getpid() % 500
acked = []          # (id, stream, data, ack_time)
acked_lock = threading.Lock()
kills = []          # monotonic times of each SIGKILL
stop = threading.Event()


def start():
    flags = ["--listen", f"127.0.0.1:{port}", "--data", data_dir]
    if args.flush_interval:
        flags += ["--flush-interval", str(args.flush_interval)]
    proc = subprocess.Popen([args.herald, *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.02)
    sys.exit("herald did not come up")


def publisher(n):
    seq = 0
    conn = None
    while not stop.is_set():
        seq += 1
        stream = random.choice(STREAMS)
        batch = random.random() < 0.2
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            if batch:
                events = [{"stream": random.choice(STREAMS), "data": f"p{n}-{seq}-{k}"} for k in range(5)]
                conn.request("POST", "/publish", json.dumps(events), {"Content-Type": "application/json"})
            else:
                events = [{"stream": stream, "data": f"p{n}-{seq}"}]
                conn.request("POST", f"/streams/{stream}", events[0]["data"])
            response = conn.getresponse()
            body = response.read()
            if response.status != 201:
                continue
            now = time.monotonic()
            answer = json.loads(body)
            ids = answer["ids"] if batch else [answer["id"]]
            with acked_lock:
                for event, id_ in zip(events, ids):
                    acked.append((int(id_), event["stream"], event["data"], now))
        except (OSError, http.client.HTTPException, ValueError):
            conn = None
            time.sleep(0.01)


def read_all(stream):
    events, after = [], "0"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while True:
        conn.request("GET", f"/streams/{stream}/events?after={after}&limit=1000")
        page = json.loads(conn.getresponse().read())
        events += page["events"]
        if len(page["events"]) < 1000:
            return events
        after = page["next"]


herald = start()
threads = [threading.Thread(target=publisher, args=(n,), daemon=True) for n in range(args.publishers)]
for t in threads:
    t.start()
for cycle in range(args.cycles):
    time.sleep(random.uniform(0.2, 1.0))
    herald.send_signal(signal.SIGKILL)
    herald.wait()
    kills.append(time.monotonic())
    herald = start()
stop.set()
for t in threads:
    t.join()

stored = {s: read_all(s) for s in STREAMS}
herald.send_signal(signal.SIGTERM)
herald.wait()

problems = []
by_id = {}
for stream, events in stored.items():
    ids = [int(e["id"]) for e in events]
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        problems.append(f"{stream}: not in strictly rising id order")
    for e in events:
        if int(e["id"]) in by_id:
            problems.append(f"id {e['id']} used twice")
        by_id[int(e["id"])] = (stream, e["data"])
window = (args.flush_interval or 0) / 1000 + 0.25  # the interval plus one fsync's time
lost = []
for id_, stream, data, at in acked:
    if by_id.get(id_) == (stream, data):
        continue
    if id_ in by_id:
        problems.append(f"id {id_} was acknowledged for {data!r} but holds {by_id[id_]!r}: reused")
        continue
    lost.append((id_, at))
worst = 0.0
for id_, at in lost:
    killed_after = [k for k in kills if k >= at]
    before_kill = killed_after[0] - at if killed_after else float("inf")
    worst = max(worst, before_kill)
    if not args.flush_interval or before_kill > window:
        problems.append(f"acknowledged id {id_} is missing (acknowledged {before_kill * 1000:.0f} ms "
                        f"before the next kill)")
mode = f"--flush-interval {args.flush_interval}" if args.flush_interval else "fsync (default)"
print(f"kill9: {args.cycles} kill -9 cycles, {mode}: {len(acked)} events acknowledged, "
      f"{sum(len(v) for v in stored.values())} stored, {len(lost)} lost"
      f"{f' (at most {worst * 1000:.0f} ms before a kill)' if lost else ''}, "
      f"{len(problems)} problems")
for p in problems[:20]:
    print("  ", p)
subprocess.run(["rm", "-rf", data_dir])
sys.exit(1 if problems else 0)
