# packaging/testlib.sh: what packaging/test and packaging/test-systemd share
# (sourced, bash): counting checks, the summary, a free port.

PASSED=0
FAILED=0
FAILURES=
# The summary's name ("packaging", "systemd").
TESTLIB_NAME=${TESTLIB_NAME:-packaging}

pass() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES="$FAILURES
  - $*"; echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...: pass when the command succeeds
    local what=$1; shift
    if "$@" >/dev/null; then pass "$what"; else fail "$what"; fi
}
# Print the summary; exit 0 when nothing failed.
finish() {
    echo
    if [ "$FAILED" -gt 0 ]; then
        echo "$TESTLIB_NAME: failed checks:$FAILURES"
    fi
    echo "$TESTLIB_NAME: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit
}
die() { fail "$*"; finish; }

# A port nothing listens on now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
