//! Every command of README.md, run: the ```sh blocks, in order, as one bash
//! script with `set -e`, in a copy of the source directory's layout (the
//! example configuration unchanged but for its port, `target/release`
//! holding the binaries cargo built for this test run), so that the quick
//! start and the first zero-downtime restart cannot rot.
//!
//! What the script cannot do as written is replaced, visibly: `apt-get
//! install -y PKGS` checks that the packages are installed (scripts/test
//! installs the same ones), `cargo build --release` checks that the binaries
//! are there (the ones built for this run), the master run in the foreground
//! in "a first terminal" runs in the background until its port answers and
//! `zdrestartctl status` says `running` (every worker ready: what a second
//! terminal opened a moment later sees; a worker may still be starting
//! when the first one answers), and
//! the example's port 8080 is a free port. The master is stopped (SIGTERM,
//! then its process group SIGKILLed) at the end, also when the script fails.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The ```sh blocks of a Markdown text, each a list of command lines
/// (comments and blank lines dropped, trailing comments cut).
fn sh_blocks(md: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```sh") => cur = Some(Vec::new()),
            (Some(_), "```") => blocks.push(cur.take().unwrap()),
            (Some(b), l) => {
                let cmd = strip_comment(l).trim().to_string();
                if !cmd.is_empty() {
                    b.push(cmd);
                }
            }
            (None, _) => {}
        }
    }
    assert!(cur.is_none(), "an unterminated ```sh block");
    blocks
}

/// A line without its `# comment` (a `#` outside quotes, after a space).
fn strip_comment(l: &str) -> &str {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in l.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &l[..i],
            _ => {}
        }
        prev = c;
    }
    l
}

/// The script for bash: each README line, or what stands in for it.
fn script(blocks: &[Vec<String>], port: u16) -> String {
    let mut s = String::from("set -euo pipefail\n");
    s += "wait_port() { for i in $(seq 600); do curl -sf -o /dev/null localhost:PORT/healthz && \
          target/release/zdrestartctl status --json 2>/dev/null | grep -q '\"state\":\"running\"' && return 0; sleep 0.1; done; \
          echo 'master not serving' >&2; return 1; }\n";
    let mut masters = 0;
    for line in blocks.iter().flatten() {
        if let Some(pkgs) = line.strip_prefix("apt-get install -y ") {
            s += &format!(
                "for p in {}; do dpkg-query -W -f='${{Status}}\\n' $p | grep -qx 'install ok installed' || {{ echo \"$p not installed\" >&2; exit 1; }}; done\n",
                pkgs
            );
        } else if line == "cargo build --release" {
            s += "test -x target/release/zdrestart && test -x target/release/zdrestartctl && test -x target/release/zdrestart-worker\n";
        } else if line == "target/release/zdrestart" {
            masters += 1;
            s += "target/release/zdrestart >master.log 2>&1 &\nMASTER=$!\necho $MASTER >master.pid\nwait_port\n";
        } else {
            s += line;
            s += "\n";
        }
    }
    assert_eq!(masters, 1, "the README runs the master once, in the foreground");
    s += "kill -TERM $MASTER\nwait $MASTER\necho README-DONE\n";
    s.replace("8080", &port.to_string()).replace("PORT", &port.to_string())
}

#[test]
fn the_readme_commands_run_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 4, "{:?}", blocks);
    let dir = TestDir::for_test();
    let port = free_port();
    // The source directory's layout: the example config (only the port
    // changed), target/release with this run's binaries.
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/zdrestart.json")).unwrap();
    assert!(example.contains("\"port\": 8080"), "{}", example);
    std::fs::write(dir.join("examples/zdrestart.json"), example.replace("8080", &port.to_string())).unwrap();
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::os::unix::fs::symlink(master_bin().parent().unwrap(), dir.join("target/release")).unwrap();
    let text = script(&blocks, port);
    std::fs::write(dir.join("readme.sh"), &text).unwrap();

    let mut cmd = Command::new("bash");
    cmd.arg("readme.sh").current_dir(dir.path()).stdin(Stdio::null()).process_group(0);
    scrub_env(&mut cmd);
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    cmd.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap();
    let group = child.id() as i32;
    let _end = KillGroup(group);
    let st = wait_child(&mut child, Duration::from_secs(180));
    let (stdout, stderr) = (std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&err).unwrap());
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap_or_default();
    let all = format!("script:\n{}\nstdout:\n{}\nstderr:\n{}\nmaster log:\n{}", text, stdout, stderr, log);
    assert!(st.is_some_and(|s| s.success()), "{}", all);
    assert!(stdout.ends_with("README-DONE\n"), "{}", all);
    // What the README promises.
    assert!(stdout.contains("running: generation 1,"), "{}", all);
    assert!(stdout.contains("zero-downtime restart complete"), "{}", all);
    assert!(!stdout.contains("FAILED"), "{}", all);
    // The requests' dots: one run of them while the restart ran.
    let dots = stdout.split(|c| c != '.').map(str::len).max().unwrap_or(0);
    assert!(dots >= 10, "requests in a row during the restart: {} ({})", dots, all);
    assert!(stdout.contains(r#"{"a":1}"#) && stdout.contains(r#""driver":"sqlite""#), "{}", all);
    assert!(stdout.contains("running: generation 2,"), "{}", all);
    assert!(stdout.contains("verdict: a zero-downtime restart would be accepted"), "{}", all);
    assert!(stdout.contains("master upgraded; zero-downtime restart complete"), "{}", all);
    assert!(stdout.contains("is valid") && stdout.contains("canary rolled back"), "{}", all);
    let recs: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // The first restart, the upgrade's roll-over, the reference block's
    // restart and its promoted canary; the canary rolled back completes none.
    assert_eq!(recs.iter().filter(|r| event_of(r) == "restart.complete").count(), 4, "{}", all);
    assert_eq!(recs.iter().filter(|r| event_of(r) == "canary.rollback").count(), 1, "{}", all);
    assert!(Path::new(&dir.join("target/zdrestart.db")).exists());
}

/// SIGKILL to a process group when dropped (the script's, with the master
/// and its workers), also when the test fails.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
    }
}

fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn comments_and_blocks_are_read_as_a_shell_would() {
    assert_eq!(strip_comment("curl x   # {\"a\":1}"), "curl x   ");
    assert_eq!(strip_comment("curl -d '{\"a\":1}' x # y"), "curl -d '{\"a\":1}' x ");
    assert_eq!(strip_comment("echo a#b"), "echo a#b");
    let md = "text\n```sh\n# only a comment\nfoo  # bar\n\n```\n```json\n{}\n```\n```sh\nbaz\n```\n";
    assert_eq!(sh_blocks(md), vec![vec!["foo".to_string()], vec!["baz".to_string()]]);
}
