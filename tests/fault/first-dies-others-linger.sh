#!/usr/bin/env bash
# Fault worker: a generation whose first worker (ZDRESTART_WORKER 0) says
# READY=1 and exits 1 a second later (ready-then-exit.sh), while the others
# say READY=1 and ignore SIGTERM (ignore-term.sh): the restart aborts, and
# the new workers it stops are still draining for shutdownTimeout. The
# probe is passed on to the real worker.
set -u
here=$(dirname "$0")
if [ "${ZDRESTART_WORKER:-0}" = 0 ]; then
    exec "$here/ready-then-exit.sh" "$@"
fi
exec "$here/ignore-term.sh" "$@"
