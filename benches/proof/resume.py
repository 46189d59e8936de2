#!/usr/bin/env python3
"""Abrupt disconnect/resume cycles of a multi-stream subscriber under publishing: no gap, no
duplicate, in order.

One subscriber reads three streams on one connection (GET /sse?stream=a&stream=b&stream=c) and
drops its socket at random moments (half with RST, half with FIN), 1,000 times, each time coming
back with the last id it saw (Last-Event-ID) — while a publisher publishes to the three streams
(and to a fourth the subscriber does not read) as fast as it is answered. At the end the ids it
received, in order, must be exactly the ids published to its three streams: none missing, none
twice, rising.

Usage: benches/proof/resume.py [--cycles 1000] [--herald target/release/herald]
"""
import argparse, http.client, json, os, random, socket, struct, subprocess, sys, tempfile, threading, time

parser = argparse.ArgumentParser()
parser.add_argument("--cycles", type=int, default=1000)
parser.add_argument("--herald", default="target/release/herald")
args = parser.parse_args()

data_dir = tempfile.mkdtemp(prefix="herald-resume-")
port = 17800 + os.getpid() % 500
herald = subprocess.Popen([args.herald, "--listen", f"127.0.0.1:{port}", "--data", data_dir],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(400):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/healthz")
        if c.getresponse().status == 200:
            break
    except OSError:
        time.sleep(0.02)

READ = ["a", "b", "c"]
published = []  # (id, stream), for every acknowledged publish
stop = threading.Event()


def publisher():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    n = 0
    while not stop.is_set():
        n += 1
        stream = random.choice(READ + ["other"])
        conn.request("POST", f"/streams/{stream}", f"event {n}\nwith a second line")
        response = conn.getresponse()
        body = response.read()
        if response.status == 201:
            published.append((int(json.loads(body)["id"]), stream))


def ids_in(response):
    """The ids of the whole SSE frames in a (chunked) HTTP/1.1 response read so far."""
    if b"\r\n\r\n" not in response:
        return []
    rest, body = response.split(b"\r\n\r\n", 1)[1], b""
    while b"\r\n" in rest:
        size, after = rest.split(b"\r\n", 1)
        size = int(size, 16)
        if size == 0 or len(after) < size + 2:
            break
        body, rest = body + after[:size], after[size + 2:]
    ids = []
    for frame in body.split(b"\n\n")[:-1]:
        for line in frame.split(b"\n"):
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
    return ids


received = []
last_id = None
thread = threading.Thread(target=publisher, daemon=True)
thread.start()
for cycle in range(args.cycles):
    s = socket.create_connection(("127.0.0.1", port))
    head = f"GET /sse?{'&'.join('stream=' + x for x in READ)} HTTP/1.1\r\nHost: x\r\n"
    if last_id is not None:
        head += f"Last-Event-ID: {last_id}\r\n"
    s.sendall((head + "\r\n").encode())
    s.settimeout(0.2)
    buffer = b""
    until = time.monotonic() + random.uniform(0.002, 0.05)
    while time.monotonic() < until:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buffer += chunk
    # Only whole frames count: what was cut off mid-frame comes again after the resume.
    for id_ in ids_in(buffer):
        received.append(id_)
        last_id = id_
    if random.random() < 0.5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    s.close()
stop.set()
thread.join()
# One last resume reads everything left.
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", port))
s.sendall((f"GET /sse?{'&'.join('stream=' + x for x in READ)} HTTP/1.1\r\nHost: x\r\n"
           f"Last-Event-ID: {last_id or 0}\r\n\r\n").encode())
s.settimeout(1.0)
buffer = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buffer += chunk
except socket.timeout:
    pass
received += ids_in(buffer)
herald.terminate()
herald.wait()
subprocess.run(["rm", "-rf", data_dir])

expected = sorted(i for i, s in published if s in READ)
problems = []
if len(set(received)) != len(received):
    problems.append(f"{len(received) - len(set(received))} duplicates")
if received != sorted(received):
    problems.append("out of order")
missing = sorted(set(expected) - set(received))
if missing:
    problems.append(f"{len(missing)} missing, first {missing[:5]}")
extra = sorted(set(received) - set(expected))
if extra:
    problems.append(f"{len(extra)} never published to these streams, first {extra[:5]}")
print(f"resume: {args.cycles} abrupt disconnects (RST or FIN) and resumes of a 3-stream subscriber: "
      f"{len(published)} published, {len(expected)} to its streams, {len(received)} received; "
      f"{'; '.join(problems) or 'no gap, no duplicate, in order'}")
sys.exit(1 if problems else 0)
