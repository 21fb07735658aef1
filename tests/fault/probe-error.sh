#!/usr/bin/env bash
# Fault worker: its probe reports an error; as a worker it is the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    echo "probe-error: simulated probe failure" >&2
    report "ERROR=database unreachable: simulated by probe-error.sh"
    exit 1
fi
pass_on "$@"
