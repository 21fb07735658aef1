#!/usr/bin/env bash
# Fault worker: a main process with two helpers in its process group (think
# a server's own helper processes): one ends gracefully on SIGTERM and
# writes down that it got it (term-received beside the config file), one
# ignores SIGTERM. Their pids go to graceful-helpers and stubborn-helpers
# beside the config file. The main process reports READY=1 and serves
# nothing; on SIGTERM it waits for the graceful helper, then exits 0 (so the
# helper has handled its SIGTERM before the master ends what is left of the
# group). The probe is passed on.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
dir="$(dirname "${ZDRESTART_CONFIG:?}")"
(
    trap 'echo "$BASHPID" >> "$dir/term-received"; exit 0' TERM
    echo "$BASHPID" >> "$dir/graceful-helpers"
    while :; do sleep 1000 & wait $!; done
) </dev/null >/dev/null 2>&1 &
graceful=$!
(
    trap '' TERM
    echo "$BASHPID" >> "$dir/stubborn-helpers"
    exec sleep 1000000
) </dev/null >/dev/null 2>&1 &
trap 'wait "$graceful"; exit 0' TERM
report "READY=1"
while :; do sleep 1000 & wait $!; done
