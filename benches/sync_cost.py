#!/usr/bin/env python3
"""What one fdatasync costs this machine's core, not just its time.

Times the sync loop alone on each core (a sync is slower from a core that does not take the
disk's interrupts: see /proc/interrupts). Runs a CPU spinner on core 0 alone, then beside a loop of 200-byte pwrite + fdatasync on the
same core, then beside the same loop on core 1. If a sync only waited, the spinner would lose
little beside it on core 0; on a VM that stalls the vCPU during a flush it loses about a
sync's duration per sync. Prints the spinner's rates, the syncs per second and the core time
each sync took from the spinner.
    benches/sync_cost.py [seconds] [directory for the test file]
"""
import os, subprocess, sys, tempfile, time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8
where = sys.argv[2] if len(sys.argv) > 2 else "."

if os.environ.get("SYNC_COST_ROLE") == "spin":
    end, n = time.time() + seconds, 0
    while time.time() < end:
        for _ in range(10000):
            n += 1
    print(n / seconds)
    sys.exit()
if os.environ.get("SYNC_COST_ROLE") == "sync":
    fd = os.open(os.environ["SYNC_COST_FILE"], os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    # Written ahead and synced, as herald's log segments are: each sync then flushes data only.
    os.write(fd, b"\0" * (16 << 20))
    os.fsync(fd)
    end, k, off = time.time() + seconds, 0, 0
    while time.time() < end:
        os.pwrite(fd, b"x" * 200, off)
        off += 200
        os.fdatasync(fd)
        k += 1
    print(k / seconds)
    sys.exit()


def run(role, core, path=None):
    env = dict(os.environ, SYNC_COST_ROLE=role, SYNC_COST_FILE=path or "")
    return subprocess.Popen(["taskset", "-c", str(core), sys.executable, __file__, str(seconds)],
                            env=env, stdout=subprocess.PIPE, text=True)


with tempfile.TemporaryDirectory(dir=where) as tmp:
    path = os.path.join(tmp, "sync.bin")
    alone = float(run("spin", 0).communicate()[0])
    results = {}
    for core in (0, 1):
        syncer, spinner = run("sync", core, path), run("spin", 0)
        results[core] = (float(spinner.communicate()[0]), float(syncer.communicate()[0]))
    syncs_alone = {core: float(run("sync", core, path).communicate()[0]) for core in (0, 1)}

print(f"spinner alone on core 0: {alone / 1e6:.2f} M/s")
for core, syncs in syncs_alone.items():
    print(f"syncs alone on core {core}: {syncs:.0f}/s ({1e6 / syncs:.0f} µs each)")
for core, (spin, syncs) in results.items():
    lost = max(0.0, 1 - spin / alone)
    print(f"beside syncs on core {core}: spinner {spin / 1e6:.2f} M/s ({lost:.0%} lost), "
          f"{syncs:.0f} syncs/s, {lost / syncs * 1e6:.0f} µs of core 0 per sync")
