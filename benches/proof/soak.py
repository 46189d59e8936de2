#!/usr/bin/env python3
"""Soak: 10,000 SSE connections and steady publishing for an hour. Every minute: herald's RSS,
the minute's publish->receive p50/p99, deliveries so far. At the end: every connection received
every event of its stream exactly once, in order (counts and id sums per connection against
what was published); RSS drift from the first steady minute; p99 over the minutes.

herald (release, durable, on a fresh data directory) runs on core 0; this script on core 1.
Connections are spread over 100 streams (100 each); the publisher sends RATE events/s
round-robin over the streams, each carrying its send time. herald keeps --max-len events per
stream (default 100), so the log reaches its steady size after --steady minutes (10) and the
RSS drift, measured from then to the end, is the server's, not the growing log's (with no limit,
RSS grows with what is stored: ~1 MB a minute at 20 events/s, sled's page cache filling).

Usage: benches/proof/soak.py [--minutes 60] [--connections 10000] [--rate 20] [--max-len 100]
"""
import argparse, asyncio, os, re, resource, statistics, subprocess, sys, tempfile, time

parser = argparse.ArgumentParser()
parser.add_argument("--minutes", type=float, default=60)
parser.add_argument("--connections", type=int, default=10000)
parser.add_argument("--streams", type=int, default=100)
parser.add_argument("--rate", type=float, default=20)
parser.add_argument("--max-len", type=int, default=100)
parser.add_argument("--steady", type=int, default=10)
parser.add_argument("--herald", default="target/release/herald")
args = parser.parse_args()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
os.sched_setaffinity(0, {1})
data_dir = tempfile.mkdtemp(prefix="herald-soak-")
port = 18200 + os.getpid() % 500
herald = subprocess.Popen(["taskset", "-c", "0", args.herald, "--listen", f"127.0.0.1:{port}",
                           "--data", data_dir, "--max-len", str(args.max_len)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
FRAME = re.compile(rb"id: (\d+)\ndata: (\d+)\n\n")


def rss_kib():
    with open(f"/proc/{herald.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Reader:
    def __init__(self):
        self.count, self.sum, self.last, self.disorder, self.ended = 0, 0, 0, 0, False


latencies = []


async def subscribe(stream, reader_state):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse?stream={stream} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    buffer = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            reader_state.ended = True
            return
        buffer += chunk
        end = 0
        now = time.time_ns() // 1000
        for match in FRAME.finditer(buffer):
            id_ = int(match.group(1))
            if id_ <= reader_state.last:
                reader_state.disorder += 1
            reader_state.last = id_
            reader_state.count += 1
            reader_state.sum += id_
            latencies.append(now - int(match.group(2)))
            end = match.end()
        buffer = buffer[end:] if end else buffer[-4096:]


published = {}  # stream -> [count, id sum]


async def publisher(stop_at):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n, started = 0, time.monotonic()
    while time.monotonic() < stop_at:
        stream = f"soak-{n % args.streams}"
        body = str(time.time_ns() // 1000).encode()
        writer.write(f"POST /streams/{stream} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        answer = await reader.readexactly(length)
        if head.startswith(b"HTTP/1.1 201"):
            id_ = int(re.search(rb'"id":"(\d+)"', answer).group(1))
            entry = published.setdefault(stream, [0, 0])
            entry[0] += 1
            entry[1] += id_
        n += 1
        await asyncio.sleep(max(0.0, started + n / args.rate - time.monotonic()))
    writer.close()


async def main():
    for _ in range(400):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    states = []
    tasks = []
    for i in range(args.connections):
        state = Reader()
        states.append((f"soak-{i % args.streams}", state))
        tasks.append(asyncio.create_task(subscribe(f"soak-{i % args.streams}", state)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    print(f"soak: {args.connections} connections open, herald RSS {rss_kib()} KiB", flush=True)
    stop_at = time.monotonic() + args.minutes * 60
    pub = asyncio.create_task(publisher(stop_at))
    minutes = []
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(60, max(0.1, stop_at - time.monotonic())))
        window = sorted(latencies)
        latencies.clear()
        if not window:
            continue
        p50 = window[len(window) // 2] / 1000
        p99 = window[min(len(window) - 1, int(len(window) * 0.99))] / 1000
        rss = rss_kib()
        minutes.append((rss, p50, p99))
        print(f"minute {len(minutes)}: RSS {rss} KiB, {len(window)} deliveries, p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms", flush=True)
    await pub
    await asyncio.sleep(3)
    lost = dup = ended = disorder = 0
    for stream, state in states:
        count, total = published.get(stream, [0, 0])
        if state.count < count:
            lost += 1
        elif state.count > count or state.sum != total:
            dup += 1
        ended += state.ended
        disorder += state.disorder
    events = sum(c for c, _ in published.values())
    steady = minutes[min(args.steady, len(minutes)) - 1][0]
    drift = (minutes[-1][0] - steady) / steady * 100
    p99s = [m[2] for m in minutes]
    print(f"soak: {args.minutes:g} min, {args.connections} connections, {events} events published, "
          f"{events * args.connections // args.streams} deliveries due; connections short of events: "
          f"{lost}, with extra or wrong ones: {dup}, out of order: {disorder}, dropped: {ended}; "
          f"RSS {steady} -> {minutes[-1][0]} KiB ({drift:+.1f} % from minute {min(args.steady, len(minutes))}); p99 per minute "
          f"median {statistics.median(p99s):.2f} ms, max {max(p99s):.2f} ms")
    for t in tasks:
        t.cancel()
    herald.terminate()
    herald.wait()
    subprocess.run(["rm", "-rf", data_dir])
    return 0 if lost == dup == disorder == ended == 0 and abs(drift) < 5 else 1


sys.exit(asyncio.run(main()))
