#!/usr/bin/env python3
"""Whether this machine's disk rewards syncs in flight at the same time.

THREADS threads on core 0 each loop a 2 KiB pwrite + fdatasync into one file written ahead with
zeros (as herald's log segments are), each at its own offset, for SECONDS. Prints the syncs per
second of all of them together, the percentiles of one sync's duration and the process's CPU
per sync. herald's writer has one sync in flight at a time; run with 1, 2 and 4 threads to see
what more would give.
    benches/sync_overlap.py [threads=1] [seconds=4] [directory for the test file=.]
"""
import os, sys, tempfile, threading, time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4
where = sys.argv[3] if len(sys.argv) > 3 else "."
SIZE = 64 << 20
RECORD = b"x" * 2048

os.sched_setaffinity(0, {0})
with tempfile.NamedTemporaryFile(dir=where, prefix="sync-overlap-") as f:
    fd = f.fileno()
    os.write(fd, b"\0" * SIZE)
    os.fsync(fd)
    lock, offset, took, stop = threading.Lock(), [0], [], threading.Event()

    def syncing():
        mine = []
        while not stop.is_set():
            with lock:
                at = offset[0] % (SIZE - len(RECORD))
                offset[0] += len(RECORD)
            start = time.perf_counter()
            os.pwrite(fd, RECORD, at)
            os.fdatasync(fd)
            mine.append((time.perf_counter() - start) * 1e6)
        with lock:
            took.extend(mine)

    workers = [threading.Thread(target=syncing) for _ in range(threads)]
    cpu0, wall0 = os.times(), time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    cpu1, wall1 = os.times(), time.perf_counter()

took.sort()
at = lambda p: took[min(len(took) - 1, int(len(took) * p / 100))]
cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
print(
    f"sync overlap: {threads} thread(s), {len(took) / (wall1 - wall0):,.0f} syncs/s, "
    f"p50 {at(50):.0f} µs, p99 {at(99):.0f} µs, CPU {cpu / len(took) * 1e6:.0f} µs per sync"
)
