//! How the harness starts a process, so that nothing a test starts outlives
//! the test binary, even when the binary is killed with SIGKILL:
//!
//! - every process gets `PR_SET_PDEATHSIG` = SIGKILL ([`crate::sys::die_with_this_thread`]):
//!   the kernel kills it when the test's thread (and so the binary) is gone;
//! - every process carries the binary's run marker in its environment
//!   ([`RUN_MARKER`]`=<pid>-<start time>`), which its own children inherit (a
//!   master passes its environment on to its workers and probes, and they to
//!   theirs); a reaper process, started with the first process of the run,
//!   waits for the binary's end (EOF on a pipe only the binary holds) and
//!   then SIGKILLs every process that carries the marker: the server a
//!   wrapper worker runs as its child, the helpers a worker daemonized, what
//!   is left of a PID namespace.
//!
//! The marker is unique to one run of one test binary, so the reaper never
//! touches a process that run did not start. Must not hold test logic.

use crate::sys;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The environment variable that marks every process of one test binary's
/// run (not `ZDRESTART_*`: the master strips those from its workers'
/// environment, and the harness from what it passes on).
pub const RUN_MARKER: &str = "ZDTEST_RUN";

/// This run's marker value: `<pid>-<nanoseconds since the epoch at first use>`.
pub fn run_marker() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("{}-{}", std::process::id(), t)
    })
}

/// The reaper (sh): blocks until its stdin (a pipe whose write end only the
/// test binary holds) reaches EOF, then SIGKILLs every process whose
/// environment holds `$1` (`NAME=VALUE`), again until none is left (a
/// process may fork while it is being killed). Zombies have an empty
/// environ and are skipped; so is the reaper itself (no marker).
const REAPER: &str = r#"cat >/dev/null
i=0
while [ "$i" -lt 100 ]; do
    pids=$(grep -lzxF -e "$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
    [ -n "$pids" ] || exit 0
    kill -KILL $pids 2>/dev/null
    i=$((i + 1))
    sleep 0.1
done
exit 1"#;

/// Start the reaper once per run; the write end of its pipe is kept here
/// for the life of the process (the kernel closes it when the binary ends).
fn ensure_reaper() {
    static REAPER_STDIN: OnceLock<Mutex<Option<(Child, ChildStdin)>>> = OnceLock::new();
    REAPER_STDIN.get_or_init(|| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(REAPER)
            .arg("zdrestart-testkit-reaper")
            .arg(format!("{}={}", RUN_MARKER, run_marker()))
            .env_remove(RUN_MARKER)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C (SIGINT to the terminal's
            // foreground group) must not take it with the tests.
            .process_group(0);
        match cmd.spawn() {
            Ok(mut child) => {
                let stdin = child.stdin.take().expect("reaper stdin");
                Mutex::new(Some((child, stdin)))
            }
            Err(e) => panic!("cannot start the test harness's reaper (sh): {}", e),
        }
    });
}

/// Mark `cmd` as a process of this run and tie it to the test binary's life
/// (module doc). Every process the harness starts goes through this.
pub fn tag(cmd: &mut Command) {
    ensure_reaper();
    cmd.env(RUN_MARKER, run_marker());
    sys::die_with_this_thread(cmd);
}

/// `Command::new(program)`, tagged ([`tag`]).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    tag(&mut cmd);
    cmd
}

/// Tag and spawn `cmd`; panics naming the program when it cannot start.
pub fn spawn(cmd: &mut Command) -> Child {
    tag(cmd);
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {:?}: {}", cmd.get_program(), e))
}

/// `unshare --pid --fork --kill-child --mount-proc <program>` (root only):
/// `program` runs as pid 1 of a new PID namespace whose /proc shows only it
/// and its descendants, so that host-wide commands (`killall`) reach
/// nothing outside. `--kill-child`: when unshare dies (killed by
/// [`crate::run_cmd`]'s timeout, or by its parent-death signal when the test
/// binary dies), pid 1 is killed, and with it, by the kernel, every process
/// of the namespace. Add the program's arguments to the result.
pub fn in_pid_namespace(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = command("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"]).arg(program);
    cmd
}

/// Every live process of this run (its marker in the environment), from
/// /proc: what the reaper would kill now.
pub fn marked_processes(marker_value: &str) -> Vec<i32> {
    let want = format!("{}={}", RUN_MARKER, marker_value);
    crate::procfs::all_pids()
        .into_iter()
        .filter(|&p| crate::procfs::proc_stat(p).is_some_and(|s| s.state != 'Z' && s.state != 'X'))
        .filter(|&p| crate::procfs::proc_environ(p).iter().any(|(k, v)| format!("{}={}", k, v) == want))
        .collect()
}
