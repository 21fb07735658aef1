#!/usr/bin/env bash
# Fault worker: its probe reports a version but no MAGIC= and exits 0 (a
# program that does not speak the probe protocol); as a worker it is the
# real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    report "VERSION=no-magic"
    exit 0
fi
pass_on "$@"
