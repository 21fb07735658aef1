#!/usr/bin/env bash
# Fault worker: its probe waits for the test's verdict on a FIFO
# (probe-gate.fifo beside the config file; tests/common/fault.rs ProbeGate):
# "pass" runs the real probe, any other line is reported as the probe's
# error. As a worker it is the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    fifo="$(dirname "${ZDRESTART_CONFIG:?}")/probe-gate.fifo"
    # Opening the FIFO blocks until the test opens it to write the verdict.
    verdict=""
    read -r verdict < "$fifo"
    if [ "$verdict" = "pass" ]; then
        pass_on "$@"
    fi
    report "ERROR=${verdict:-no verdict}"
    exit 1
fi
pass_on "$@"
