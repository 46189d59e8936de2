#!/usr/bin/env python3
"""How long one fdatasync takes on this machine's disk, at the pace of the fan-out benchmark.

The durable fan-out (benches/durable.sh: 250 events/s, each published alone) syncs the
write-ahead log once per event before delivering it, so the disk's own sync latency, its tail
included, sits inside every publish->receive latency. This times exactly that and nothing else:
a 200-byte pwrite + fdatasync into a file written ahead with zeros (as herald's log segments
are), RATE times a second, from core 0 (where the benchmarks pin servers). Prints the
percentiles of the sync's duration.
    benches/sync_latency.py [seconds=10] [rate=250] [directory for the test file=.]
"""
import os, sys, tempfile, time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 250
where = sys.argv[3] if len(sys.argv) > 3 else "."

os.sched_setaffinity(0, {0})
with tempfile.NamedTemporaryFile(dir=where, prefix="sync-latency-") as f:
    fd = f.fileno()
    os.write(fd, b"\0" * (16 << 20))
    os.fsync(fd)
    took, off = [], 0
    period = 1 / rate
    next_at = time.perf_counter()
    end = next_at + seconds
    while next_at < end:
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        start = time.perf_counter()
        os.pwrite(fd, b"x" * 200, off)
        os.fdatasync(fd)
        took.append((time.perf_counter() - start) * 1e6)
        off += 200
        next_at += period

took.sort()
at = lambda p: took[min(len(took) - 1, int(len(took) * p / 100))]
print(
    f"sync latency: {len(took)} pwrite+fdatasync at {rate:g}/s from core 0: "
    f"p50 {at(50):.0f} µs, p90 {at(90):.0f} µs, p99 {at(99):.0f} µs, "
    f"p99.9 {at(99.9):.0f} µs, max {took[-1]:.0f} µs"
)
