# Sourced by the fault-injection workers of this directory.
#
# A fault worker is run by the master as `worker: [<this script>, <real worker>]`
# (tests/common/paths.rs: fault_worker()). It follows the worker protocol of
# zdrestart-worker(7) as far as its fault allows: reports go to the fd named by
# ZDRESTART_NOTIFY_FD, probe mode is ZDRESTART_PROBE=1. What a script does not
# break is passed on to the real worker ($1) with the same environment and fds.

REAL_WORKER=${1:-}

# report LINE: write one report line (KEY=VALUE) to the notify fd.
report() {
    if [ -n "${ZDRESTART_NOTIFY_FD:-}" ]; then
        printf '%s\n' "$1" >&"$ZDRESTART_NOTIFY_FD"
    else
        printf 'fault worker: no ZDRESTART_NOTIFY_FD, report %s lost\n' "$1" >&2
    fi
}

# pass_on: become the real worker (same pid, env and fds).
pass_on() {
    if [ -z "$REAL_WORKER" ]; then
        echo "fault worker $0: no real worker given as argv[1]" >&2
        report "ERROR=fault worker $0: no real worker given as argv[1]"
        exit 2
    fi
    exec "$REAL_WORKER" "${@:2}"
}

# is_probe: true in probe mode.
is_probe() {
    [ "${ZDRESTART_PROBE:-}" = "1" ]
}

# config_port: the "port" of the config file (for messages), or 8080.
config_port() {
    local p=""
    if [ -n "${ZDRESTART_CONFIG:-}" ] && [ -r "$ZDRESTART_CONFIG" ]; then
        p=$(grep -o '"port"[[:space:]]*:[[:space:]]*[0-9]*' "$ZDRESTART_CONFIG" | grep -o '[0-9]*$' | head -n1)
    fi
    printf '%s' "${p:-8080}"
}

# wait_for_parent: return when the parent (the master) is gone. Polls, so
# that a script ignoring SIGTERM (and so PDEATHSIG) still ends with its master.
wait_for_parent() {
    local parent=$PPID stat ppid
    while kill -0 "$parent" 2>/dev/null; do
        read -r stat < "/proc/$$/stat" || return 0
        ppid=${stat##*) }      # after "pid (comm) ": "S ppid pgrp ..."
        ppid=${ppid#* }
        ppid=${ppid%% *}
        [ "$ppid" = "$parent" ] || return 0
        sleep 0.2
    done
}
