#!/usr/bin/env bash
# Fault worker: its probe never answers (sleeps until killed); as a worker it
# is the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    exec sleep 1000000
fi
pass_on "$@"
