//! Running a short command to completion with a deadline (zdrestartctl,
//! `zdrestart --check`, bunyan, ...).

use crate::dirs::TestDir;
use crate::paths::test_name;
use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Remove from `cmd` the caller's variables that the zdrestart programs read:
/// `ZDRESTART_*` (e.g. `ZDRESTART_NO_PIDFD`, `ZDRESTART_CONFIG`, a worker's
/// `ZDRESTART_NOTIFY_FD`), `LISTEN_*` of socket activation and
/// `NOTIFY_SOCKET` of sd_notify(3). A test then sees only what it sets itself,
/// whatever shell, service manager or master ran it.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("ZDRESTART_") || name.starts_with("LISTEN_") || name == "NOTIFY_SOCKET" {
            cmd.env_remove(&k);
        }
    }
}

/// Run a command to completion with a timeout (killed after it): status,
/// stdout, stderr. For zdrestartctl, zdrestart --check, bunyan, ... The
/// command is tagged ([`crate::spawn::tag`]): it dies with the test binary.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let dir = TestDir::new(&format!("{}-cmd", test_name()));
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    crate::spawn::tag(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    let end = Instant::now() + timeout;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {:?}; stdout:\n{}\nstderr:\n{}",
                cmd,
                timeout,
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (st, fs::read_to_string(&out).unwrap_or_default(), fs::read_to_string(&err).unwrap_or_default())
}
