#!/usr/bin/env bash
# Fault worker: the real worker, but without the listeners the master passes
# (LISTEN_FDS and LISTEN_PID removed), so it binds address:port of the config
# itself: while the master holds that port, a real EADDRINUSE, which the real
# worker reports as ERROR= before exiting 1. The probe is passed on as is.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES
pass_on "$@"
