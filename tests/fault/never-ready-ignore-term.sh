#!/usr/bin/env bash
# Fault worker: ignores SIGTERM and never reports READY=1; idles (accepting no
# connection) until SIGKILL or until its master is gone. The probe is passed
# on to the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
trap '' TERM
echo "never-ready-ignore-term: ignoring SIGTERM, will never be ready" >&2
# Not `exec sleep`: with SIGTERM ignored, PDEATHSIG would not end us, so poll
# for the master instead (a killed master must leave no worker behind).
wait_for_parent
exit 0
