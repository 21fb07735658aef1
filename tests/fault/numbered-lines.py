#!/usr/bin/env python3
"""Fault worker for what the master reads of a worker's output: reports
READY=1 on the report pipe, then writes numbered lines of 180 bytes
("line NNNNNNNNN xxx...x\\n") to its standard output without pause, in
writes of 1000 bytes, so that most writes end inside a line. On SIGTERM it
writes the rest of the line it is in, then "numbered-lines: done N" (N: the
lines written) and exits 0. Run with "probe": false (it answers no probe).
"""
import os
import signal

stop = False


def term(*_):
    global stop
    stop = True


def write_all(data):
    while data:
        data = data[os.write(1, data):]


signal.signal(signal.SIGTERM, term)
os.write(int(os.environ["ZDRESTART_NOTIFY_FD"]), b"READY=1\n")
n = 0
buf = b""
while not stop:
    while len(buf) < 4000:
        head = b"line %09d " % n
        buf += head + b"x" * (179 - len(head)) + b"\n"
        n += 1
    write_all(buf[:1000])
    buf = buf[1000:]
# buf ends at the end of a line: the last one is whole.
write_all(buf)
write_all(b"numbered-lines: done %d\n" % n)
