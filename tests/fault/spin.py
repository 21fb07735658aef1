#!/usr/bin/env python3
"""Fault worker (report pipe, `worker: [<this script>, <real worker>]`): a
select() event loop that serves HTTP on the inherited listeners, says
READY=1, and sends the watchdog's heartbeats (WATCHDOG=1, every half of
WATCHDOG_USEC, as sd_watchdog_enabled(3) says) from that loop, as the
built-in worker does. `GET /spin` is answered, then the loop spins forever
without a system call: the process runs, its heartbeats stop. SIGTERM: stop
accepting, exit 0. The probe is passed on to the real worker.
"""
import os
import select
import signal
import socket
import sys
import time

if os.environ.get("ZDRESTART_PROBE") == "1":
    os.execv(sys.argv[1], [sys.argv[1]])

notify = os.fdopen(int(os.environ["ZDRESTART_NOTIFY_FD"]), "w", buffering=1)
if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
    notify.write("ERROR=spin.py: the listeners are not for me\n")
    sys.exit(1)
listeners = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
for listener in listeners:
    listener.setblocking(False)
usec = int(os.environ.get("WATCHDOG_USEC", "0"))
if os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
    usec = 0
every = usec / 2e6 if usec > 0 else None
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
notify.write("READY=1\n")
sys.stderr.write("spin.py: pid %d ready, heartbeat every %s s\n" % (os.getpid(), every))
sys.stderr.flush()


def answer(conn):
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        data += chunk
    path = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/"
    body = b'{"pid": %d}\n' % os.getpid()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"X-Worker-Pid: %d\r\nConnection: close\r\n\r\n%s" % (len(body), os.getpid(), body))
    conn.close()
    return path == b"/spin"


next_beat = time.monotonic()
while not stopping:
    now = time.monotonic()
    if every is not None and now >= next_beat:
        notify.write("WATCHDOG=1\n")
        next_beat = now + every
    timeout = max(0.0, next_beat - now) if every is not None else None
    try:
        readable, _, _ = select.select(listeners, [], [], timeout)
    except InterruptedError:
        continue
    for listener in readable:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue    # another worker took it first
        if answer(conn):
            sys.stderr.write("spin.py: spinning\n")
            sys.stderr.flush()
            while True:
                pass
