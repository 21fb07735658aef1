#!/usr/bin/env bash
# Fault worker: starts and waits, reporting nothing, until it takes a ticket:
# a file the test puts in the directory ready-tickets beside the config file
# (tests/common/fault.rs ReadyTickets). Taking one is a rename, which only one
# worker wins, so one ticket lets exactly one worker go on as the real worker
# (same pid), which reports ready. The probe is passed on to the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
dir="$(dirname "${ZDRESTART_CONFIG:?}")/ready-tickets"
while :; do
    for t in "$dir"/ticket.*; do
        [ -e "$t" ] || continue
        if mv "$t" "$dir/taken.$$" 2>/dev/null; then
            pass_on "$@"
        fi
    done
    sleep 0.05
done
