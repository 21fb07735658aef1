#!/usr/bin/env python3
"""Fault worker speaking sd_notify(3) on $NOTIFY_SOCKET (config "notify":
"systemd"), run as `worker: [<this script>, MODE]`. It never answers the
probe: its config says "probe": false. MODE:

  ready     READY=1 and STATUS= from the worker itself
  stranger  a child in a new session (another process group) sends READY=1
            for it; then the worker itself sends STATUS=marker:stranger
  group     the worker leads its own process group (setpgid, as a server
            may), and a child of it, in that group, sends READY=1
  junk      datagrams that must not count, each with READY=1 in it: 8 KiB
            long, bad UTF-8, one carrying a file descriptor; then unknown
            keys; then STATUS=marker:junk; READY=1 once the file
            $SD_NOTIFY_TEST_GO exists
  errno     ERRNO=98 before READY=1, then stays
  ready-errno  READY=1, then ERRNO=5 a second later (inside a soak), then
            stays
  ready-exit   READY=1, then exits 1 a second later (the arbiter of a
            gunicorn whose workers cannot import the application)
  stopping  STOPPING=1 before READY=1, then stays
  mainpid   leads its own process group, forks a child, sends
            MAINPID=<child> and READY=1, exits 0; the child is the main
            process (SIGTERM ends it)

Every mode then sleeps until SIGTERM, which ends it with status 0.
"""
import array
import os
import signal
import socket
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "ready"


def addr():
    a = os.environ.get("NOTIFY_SOCKET", "")
    if not a:
        sys.stderr.write("sd-notify.py: no NOTIFY_SOCKET\n")
        sys.exit(3)
    return "\0" + a[1:] if a.startswith("@") else a


def send(data, fds=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if fds:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())], 0, addr())
        else:
            s.sendto(data, addr())
    finally:
        s.close()


def sleep_until_term():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(60)


def child_sends(data, new_session):
    """A child sends `data` and lives on for 10 s: the master tells whose a
    datagram is from its sender's process group, which it can read only
    while the sender lives (as systemd with NotifyAccess=all)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombie to reap
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if new_session:
            os.setsid()
        send(data)
        sys.stderr.write("sd-notify.py: child %d (pgid %d) sent %r\n" % (os.getpid(), os.getpgid(0), data))
        sys.stderr.flush()
        os.close(w)
        time.sleep(10)
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # returns once the child has sent
    os.close(r)
    return pid


sys.stderr.write("sd-notify.py %s: pid %d, pgid %d\n" % (MODE, os.getpid(), os.getpgid(0)))
sys.stderr.flush()
if MODE == "ready":
    send(b"READY=1\nSTATUS=serving as pid %d" % os.getpid())
elif MODE == "stranger":
    child_sends(b"READY=1", True)
    send(b"STATUS=marker:stranger")
elif MODE == "group":
    os.setpgid(0, 0)
    child_sends(b"READY=1\nSTATUS=ready from the group", False)
elif MODE == "junk":
    send(b"READY=1\nSTATUS=" + b"x" * 8192)
    send(b"READY=1\nSTATUS=\xff\xfe")
    r, w = os.pipe()
    sys.stderr.write("sd-notify.py: passing pipe:[%d]\n" % os.fstat(r).st_ino)
    sys.stderr.flush()
    send(b"READY=1\nFDSTORE=1", [r, w])
    os.close(r)
    os.close(w)
    send(b"FOO=bar\nWATCHDOG=1\nX_NOT_KNOWN=\nSTATUS=marker:junk")
    go = os.environ.get("SD_NOTIFY_TEST_GO", "")
    while go and not os.path.exists(go):
        time.sleep(0.05)
    send(b"READY=1")
elif MODE == "errno":
    send(b"STATUS=failing\nERRNO=98")
elif MODE == "ready-errno":
    send(b"READY=1")
    time.sleep(1)
    send(b"STATUS=failing after READY=1\nERRNO=5")
elif MODE == "ready-exit":
    send(b"READY=1")
    time.sleep(1)
    sys.stderr.write("sd-notify.py: exiting 1 after READY=1\n")
    sys.exit(1)
elif MODE == "stopping":
    send(b"STOPPING=1")
elif MODE == "mainpid":
    # The main process must be one of the worker's: a process of the group
    # it leads.
    os.setpgid(0, 0)
    master = os.getppid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        os.close(w)
        # No parent-death signal reaches it: it ends with the master.
        while True:
            time.sleep(0.2)
            try:
                os.kill(master, 0)
            except ProcessLookupError:
                os._exit(1)
    os.close(w)
    os.read(r, 1)  # the child closed its end: its handler is in place
    send(b"MAINPID=%d\nREADY=1\nSTATUS=main process %d" % (pid, pid))
    sys.stderr.write("sd-notify.py: main process is %d; exiting\n" % pid)
    sys.exit(0)
sleep_until_term()
