#!/usr/bin/env bash
# Fault worker: its probe reports a version but no MAGIC= and exits 0 (a
# program that does not speak the probe protocol), leaving a helper behind
# in its process group (its pid in no-magic-helper.pid beside the config
# file); as a worker it is the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    sleep 1000 </dev/null >/dev/null 2>&1 &
    echo $! > "$(dirname "${ZDRESTART_CONFIG:?}")/no-magic-helper.pid"
    report "VERSION=no-magic"
    exit 0
fi
pass_on "$@"
