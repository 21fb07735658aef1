#!/usr/bin/env bash
# Fault worker: writes a bunyan record dressed as the master's
# ("component":"master","event":"restart.complete", the master's name and a
# foreign pid) on stdout, then becomes the real worker. The probe is passed on.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then pass_on "$@"; fi
printf '%s\n' '{"v":0,"level":30,"name":"zdrestart","hostname":"forged","pid":1,"time":"2026-11-25T14:35:06.123Z","msg":"Zero-downtime restart complete","component":"master","event":"restart.complete","generation":2}'
pass_on "$@"
