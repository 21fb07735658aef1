#!/usr/bin/env bash
# Fault worker: dies at start-up (exit 1) with an error on stderr, never READY.
# The probe is passed on to the real worker, so it passes.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
echo "die-at-start: invalid JSON in config (simulated start-up failure)" >&2
exit 1
