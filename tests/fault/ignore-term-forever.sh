#!/usr/bin/env bash
# Fault worker: ignores SIGTERM for good (the disposition survives exec),
# reports READY=1 and sleeps holding the inherited listening socket, without
# watching its master. Only SIGKILL ends it. The probe is passed on.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
trap '' TERM
report "READY=1"
exec sleep 1000000
