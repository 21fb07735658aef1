#!/usr/bin/env bash
# Fault worker speaking sd_notify(3) through systemd's own client,
# systemd-notify(1), config "notify": "systemd" and "probe": false. It says
# READY=1, then WATCHDOG=1 every half of $WATCHDOG_USEC, as
# sd_watchdog_enabled(3) asks of a service whose $WATCHDOG_PID is its own
# pid, or $1 times per $WATCHDOG_USEC (more often: a heartbeat runs
# systemd-notify, whose fork and exec alone took over a second at a load
# average of 34); each heartbeat is counted on stderr ("sd-watchdog:
# heartbeat N").
# SIGTERM ends it (bash and its sleep get it: the group is signalled).
set -u
usec=${WATCHDOG_USEC:?sd-watchdog: no WATCHDOG_USEC}
if [ "${WATCHDOG_PID:-$$}" != "$$" ]; then
    echo "sd-watchdog: WATCHDOG_PID=$WATCHDOG_PID is not mine ($$)" >&2
    exit 3
fi
per=${1:-2}
half=$(( usec / per ))
every=$(printf '%d.%06d' $(( half / 1000000 )) $(( half % 1000000 )))
# --no-block: no barrier (a BARRIER=1 datagram carrying a pipe), as a
# server calling sd_notify(3) sends none.
systemd-notify --no-block --ready "STATUS=sd-watchdog: heartbeat every ${every} s"
n=0
while true; do
    systemd-notify --no-block WATCHDOG=1
    n=$(( n + 1 ))
    echo "sd-watchdog: heartbeat $n" >&2
    sleep "$every"
done
