#!/usr/bin/env python3
"""HTTP load against zdrestart's built-in worker, for the packaging tests
(packaging/test, packaging/test-systemd) and the chaos soak (scripts/soak).

As a command: runs until the stop file appears, then reads back every
acknowledged write and prints one line of figures:

    python3 scripts/loadgen.py --port PORT --stop-file FILE [--retry-reused]
        [--keepalive N] [--newconn N] [--slow N] [--writers N] [--prefix P]

    requests=N failed=N retries=N writes=N lost=N changed=N; first failures

Exit status 0 (the caller judges the figures), 2 on bad arguments.

Clients (threads, Python's http.client, one connection each):
  keepalive  GET /healthz on one keep-alive connection
  newconn    GET /healthz on a new connection each time (Connection: close)
  slow       GET /delay/300 on one keep-alive connection: requests that are
             in flight when a worker is stopped, killed or replaced
  writers    PUT /objects/PREFIX/<client>-<n> of a unique JSON object, then
             GET of it (on the same keep-alive connection, so maybe another
             worker's answer after a restart): a 200 PUT is an acknowledged
             write; the GET must return it byte for byte ("changed" if not,
             "lost" on 404). Needs a store that all workers share (mongodb,
             sqlite), not the memory driver.

Every request is recorded (start and end on the monotonic clock, status or
the kind of transport error, whether the connection was reused, the worker
that answered (X-Worker-Pid) and the worker that answered the previous
request on the connection), so that a caller can attribute each failure to
a fault. With retry_reused, a request that fails on a reused keep-alive
connection before any answer (the idle-close race) is sent once more on a
new connection, as RFC 9112 (9.3.1) allows for idempotent requests; the
first attempt then counts as a retry, not a failure. Without it (the soak)
every failed attempt counts.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time

# Failure kinds of a request that got no HTTP answer.
RESET = "reset"  # ECONNRESET / EPIPE: the peer's socket went away
EOF = "eof"  # the connection closed before (a whole) answer
TIMEOUT = "timeout"  # no answer within the client's timeout
REFUSED = "refused"  # connect() refused: nothing listens
OTHER = "other"


class Record:
    """One request (one attempt)."""

    __slots__ = ("t0", "t1", "client", "method", "path", "status", "error", "detail", "reused",
                 "worker", "prev_worker", "retried")

    def __init__(self, t0, client, method, path, reused, prev_worker):
        self.t0 = t0
        self.t1 = t0
        self.client = client
        self.method = method
        self.path = path
        self.status = None
        self.error = None  # None: an HTTP answer arrived (see status)
        self.detail = ""
        self.reused = reused
        self.worker = None  # X-Worker-Pid of the answer
        self.prev_worker = prev_worker  # X-Worker-Pid of the connection's previous answer
        self.retried = False  # failed, and was sent again (retry_reused)

    @property
    def failed(self):
        """No answer, or a 5xx: what a user of the service would see fail."""
        if self.retried:
            return False
        return self.error is not None or (self.status is not None and self.status >= 500)

    def kind(self):
        if self.error is not None:
            return self.error
        return "http-%d" % self.status

    def describe(self):
        s = "%s %s: %s" % (self.method, self.path, self.kind())
        if self.detail:
            s += " (%s)" % self.detail
        return s


def classify(exc):
    """The failure kind of a transport exception, and a short detail."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TIMEOUT, "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED, str(exc)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return RESET, type(exc).__name__
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead,
                        http.client.BadStatusLine)):
        return EOF, type(exc).__name__
    return OTHER, "%s: %s" % (type(exc).__name__, exc)


class Conn:
    """A client connection that remembers which worker answered last."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.http = None
        self.last_worker = None
        self.used = False

    def close(self):
        if self.http is not None:
            self.http.close()
        self.http = None
        self.last_worker = None
        self.used = False

    def request(self, rec, method, path, body=None, close=False):
        """Send one request, fill in rec; returns the body (bytes) or None."""
        if self.http is None:
            self.http = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Connection": "close"} if close else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self.http.request(method, path, body=body, headers=headers)
            r = self.http.getresponse()
            data = r.read()
        except Exception as e:  # noqa: BLE001 - every transport failure is recorded
            rec.t1 = time.monotonic()
            rec.error, rec.detail = classify(e)
            self.close()
            return None
        rec.t1 = time.monotonic()
        rec.status = r.status
        w = r.getheader("X-Worker-Pid")
        rec.worker = int(w) if w and w.isdigit() else None
        self.used = True
        self.last_worker = rec.worker
        if close or r.getheader("Connection", "").lower() == "close" or r.status >= 500:
            self.close()
        return data


class Load:
    """A set of client threads and everything they recorded."""

    def __init__(self, host, port, *, timeout=15.0, retry_reused=False, prefix="w"):
        self.host, self.port, self.timeout = host, port, timeout
        self.retry_reused = retry_reused
        self.prefix = prefix
        self.records = []  # list.append is atomic in CPython
        self.acked = {}  # key -> body of an acknowledged PUT
        self.lost = []  # (key, record) a GET right after the PUT found nothing
        self.changed = []  # (key, expected, got)
        self.stopping = threading.Event()
        self.threads = []
        self._lock = threading.Lock()

    # --- one request ----------------------------------------------------------
    def _once(self, conn, client, method, path, body=None, close=False):
        reused = conn.used
        rec = Record(time.monotonic(), client, method, path, reused, conn.last_worker)
        data = conn.request(rec, method, path, body, close)
        self.records.append(rec)
        if rec.error in (RESET, EOF) and reused and self.retry_reused:
            rec.retried = True
            return self._once(conn, client, method, path, body, close)
        return rec, data

    # --- clients -------------------------------------------------------------------
    def _keepalive(self, name, path):
        conn = Conn(self.host, self.port, self.timeout)
        while not self.stopping.is_set():
            rec, _ = self._once(conn, name, "GET", path)
            if rec.failed and not self.stopping.is_set():
                time.sleep(0.01)
        conn.close()

    def _newconn(self, name):
        while not self.stopping.is_set():
            conn = Conn(self.host, self.port, self.timeout)
            rec, _ = self._once(conn, name, "GET", "/healthz", close=True)
            conn.close()
            if rec.failed and not self.stopping.is_set():
                time.sleep(0.01)

    def _writer(self, name):
        conn = Conn(self.host, self.port, self.timeout)
        n = 0
        while not self.stopping.is_set():
            n += 1
            key = "%s-%d" % (name, n)
            body = json.dumps({"client": name, "n": n, "token": os.urandom(6).hex()},
                              separators=(",", ":")).encode()
            path = "/objects/%s/%s" % (self.prefix, key)
            rec, data = self._once(conn, name, "PUT", path, body)
            if rec.status != 200:
                if rec.failed and not self.stopping.is_set():
                    time.sleep(0.01)
                continue
            with self._lock:
                self.acked[key] = body
            rec2, got = self._once(conn, name, "GET", path)
            if rec2.status == 200 and got != body:
                with self._lock:
                    self.changed.append((key, body, got))
            elif rec2.status == 404:
                with self._lock:
                    self.lost.append((key, rec2))
        conn.close()

    def start(self, keepalive=4, newconn=2, slow=3, writers=0):
        specs = ([(self._keepalive, "keepalive-%d" % i, "/healthz") for i in range(keepalive)]
                 + [(self._newconn, "newconn-%d" % i) for i in range(newconn)]
                 + [(self._keepalive, "slow-%d" % i, "/delay/300") for i in range(slow)]
                 + [(self._writer, "writer-%d" % i) for i in range(writers)])
        for spec in specs:
            t = threading.Thread(target=spec[0], args=spec[1:], daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        self.threads = []

    # --- after the run ---------------------------------------------------------------
    def verify(self, attempts=3, stall=30.0):
        """Read back every acknowledged write. Returns (missing, changed,
        unreadable): lists of keys. A read that fails is tried again
        (attempts in all) before the key counts as unreadable; once no read
        has been answered for stall seconds, every key not yet read counts
        as unreadable (a service that is down must not keep the verdict
        waiting for hours)."""
        missing, changed, unreadable = [], [], []
        keys = sorted(self.acked)
        chunks = [keys[i::4] for i in range(4)]
        answered = [time.monotonic()]  # when a read was last answered

        def check(part):
            conn = Conn(self.host, self.port, self.timeout)
            for key in part:
                if time.monotonic() - answered[0] > stall:
                    with self._lock:
                        unreadable.append(key)
                    continue
                for _ in range(attempts):
                    rec = Record(time.monotonic(), "verify", "GET", "", conn.used, conn.last_worker)
                    got = conn.request(rec, "GET", "/objects/%s/%s" % (self.prefix, key))
                    if rec.status in (200, 404):
                        answered[0] = time.monotonic()
                        break
                    time.sleep(0.2)
                with self._lock:
                    if rec.status == 200 and got != self.acked[key]:
                        changed.append(key)
                    elif rec.status == 404:
                        missing.append(key)
                    elif rec.status != 200:
                        unreadable.append(key)
            conn.close()

        ts = [threading.Thread(target=check, args=(c,)) for c in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return missing, changed, unreadable

    def failures(self):
        return [r for r in self.records if r.failed]


def main():
    ap = argparse.ArgumentParser(description="HTTP load against zdrestart's built-in worker")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stop-file", required=True, help="run until this file exists")
    ap.add_argument("--retry-reused", action="store_true",
                    help="send a request again once when a reused keep-alive connection closes before answering")
    ap.add_argument("--keepalive", type=int, default=4)
    ap.add_argument("--newconn", type=int, default=2)
    ap.add_argument("--slow", type=int, default=3)
    ap.add_argument("--writers", type=int, default=0)
    ap.add_argument("--prefix", default="load")
    a = ap.parse_args()
    load = Load(a.host, a.port, retry_reused=a.retry_reused, prefix=a.prefix)
    load.start(a.keepalive, a.newconn, a.slow, a.writers)
    while not os.path.exists(a.stop_file):
        time.sleep(0.05)
    load.stop()
    missing, changed, unreadable = load.verify() if load.acked else ([], [], [])
    fails = load.failures()
    retries = sum(1 for r in load.records if r.retried)
    lost = len(set(k for k, _ in load.lost) | set(missing) | set(unreadable))
    print("requests=%d failed=%d retries=%d writes=%d lost=%d changed=%d %s" % (
        sum(1 for r in load.records if not r.retried), len(fails), retries, len(load.acked), lost,
        len(load.changed) + len(changed), "; ".join(r.describe() for r in fails[:5])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
