#!/usr/bin/env bash
# Fault worker: starts and waits, reporting nothing, until the test opens the
# gate (the file ready-gate beside the config file, or ready-gate.<index> for
# the worker of that index alone; tests/common/fault.rs ReadyGate); then it is
# the real worker (same pid), which reports ready. The probe is passed on to
# the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
gate="$(dirname "${ZDRESTART_CONFIG:?}")/ready-gate"
while [ ! -e "$gate" ] && [ ! -e "$gate.${ZDRESTART_WORKER:-}" ]; do
    sleep 0.05
done
pass_on "$@"
