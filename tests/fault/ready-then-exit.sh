#!/usr/bin/env bash
# Fault worker: says READY=1 at once, then exits 1 a second later without
# ever touching its listeners, as gunicorn's arbiter does without --preload
# when its own workers cannot import the application: READY is a promise,
# not proof. The probe is passed on to the real worker, so it passes.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
report "READY=1"
echo "ready-then-exit: said READY=1; exiting in 1 s" >&2
sleep 1
echo "ready-then-exit: exiting 1 (simulated failure after READY=1)" >&2
exit 1
