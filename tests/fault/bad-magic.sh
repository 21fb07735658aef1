#!/usr/bin/env bash
# Fault worker: its probe reports another magic number (incompatible code);
# as a worker it is the real worker.
set -u
. "$(dirname "$0")/common.sh"
if is_probe; then
    report "MAGIC=999999"
    report "VERSION=bad-magic"
    exit 0
fi
pass_on "$@"
