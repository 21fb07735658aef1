#!/usr/bin/env bash
# Fault worker: its probe waits until a line can be read from the FIFO named
# by $PROBE_FIFO (the test opens it for writing when it wants the probe to
# go on), then is the real worker's probe. As a worker it is the real worker.
# This holds the master in its start-up window as long as the test needs.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    read -r _ < "$PROBE_FIFO"
fi
pass_on "$@"
