#!/usr/bin/env bash
# Fault worker: the commonest shape of a third-party worker, a shell wrapper
# that runs its server as a child instead of exec'ing it (think
# `python3 server.py` in a start script). The server (the real worker)
# inherits the listeners and the report fd and reports READY=1 itself; the
# wrapper waits for it. SIGTERM kills the wrapper (default action) and not
# the server. The probe is passed on.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
# The server's own LISTEN_PID (sd_listen_fds(3): the listeners are for
# the process named there), then it runs as the wrapper's child.
( export LISTEN_PID=$BASHPID; exec "$REAL_WORKER" "${@:2}" )
exit $?
