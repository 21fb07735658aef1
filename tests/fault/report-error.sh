#!/usr/bin/env bash
# Fault worker: reports that it could not bind (ERROR=...) and exits 1.
# The probe is passed on to the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
echo "report-error: cannot bind" >&2
report "ERROR=bind 127.0.0.1:$(config_port): Address already in use"
exit 1
