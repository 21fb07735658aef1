"""A worker that reports with the PyPI package sd-notify (module sd_notify),
which takes $NOTIFY_SOCKET only as a path (it passes it to sendto(2) as it
is). Says STATUS= and READY=1, then waits for SIGTERM."""
import os
import signal
import sd_notify

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
notify = sd_notify.Notifier()
notify.status("python sd_notify %d" % os.getpid())
notify.ready()
while True:
    signal.pause()
