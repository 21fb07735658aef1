#!/usr/bin/env bash
# Fault worker: starts, never reports READY=1, sleeps until killed (SIGTERM
# works). The probe is passed on to the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
echo "never-ready: started, will never be ready" >&2
report "STATUS=never-ready: sleeping"
# exec keeps the pid, so SIGTERM and PDEATHSIG reach the sleeping process.
exec sleep 1000000
