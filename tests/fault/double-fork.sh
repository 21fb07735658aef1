#!/usr/bin/env bash
# Fault worker: daemonizes a helper (double fork and a new session, so that
# it leaves the worker's process group) that keeps the inherited listening
# socket open and never exits, then becomes the real worker. The helper's
# parent exits at once: the helper is an orphan. The probe is passed on.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
( setsid sleep 1000000 & )
pass_on "$@"
