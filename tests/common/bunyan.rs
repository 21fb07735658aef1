//! Bunyan records: the format check every log line must pass, log parsing,
//! record fields, and the real `bunyan` CLI.

use crate::paths::repo_root;
use serde_json::Value;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Check one parsed log record against the bunyan format (the core fields of
/// node-bunyan's record, plus zdrestart's `component`: zdrestart(8), Logging);
/// Err names what is wrong.
pub fn check_bunyan(rec: &Value) -> Result<(), String> {
    let o = rec.as_object().ok_or("not a JSON object")?;
    match o.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
        other => return Err(format!("\"v\" must be 0, found {:?}", other)),
    }
    match o.get("level").and_then(Value::as_u64) {
        Some(10 | 20 | 30 | 40 | 50 | 60) => {}
        _ => return Err(format!("\"level\" must be one of 10..60, found {:?}", o.get("level"))),
    }
    if o.get("name").and_then(Value::as_str) != Some("zdrestart") {
        return Err(format!("\"name\" must be \"zdrestart\", found {:?}", o.get("name")));
    }
    match o.get("hostname").and_then(Value::as_str) {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("\"hostname\" must be a non-empty string, found {:?}", o.get("hostname"))),
    }
    match o.get("pid").and_then(Value::as_u64) {
        Some(p) if p > 0 => {}
        _ => return Err(format!("\"pid\" must be a positive integer, found {:?}", o.get("pid"))),
    }
    match o.get("time").and_then(Value::as_str) {
        Some(t) if is_iso8601_ms(t) => {}
        _ => return Err(format!("\"time\" must be ISO 8601 UTC with ms, found {:?}", o.get("time"))),
    }
    if !o.get("msg").map(Value::is_string).unwrap_or(false) {
        return Err(format!("\"msg\" must be a string, found {:?}", o.get("msg")));
    }
    match o.get("component").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => {}
        _ => return Err(format!("\"component\" must be a non-empty string, found {:?}", o.get("component"))),
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
fn is_iso8601_ms(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

/// Parse a bunyan log file: one record per complete line (a trailing line not
/// yet terminated by '\n' is ignored). Panics on a line that is not a valid
/// record, naming the file, the line number and the problem.
pub fn parse_log(path: &Path) -> Vec<Value> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read log {}: {}", path.display(), e),
    };
    let mut out = Vec::new();
    let complete = match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => return out,
    };
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            if i + 1 < complete.split(|b| *b == b'\n').count() {
                panic!("{}:{}: empty line in bunyan log", path.display(), i + 1);
            }
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let rec: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("{}:{}: not JSON ({}): {}", path.display(), i + 1, e, text));
        if let Err(e) = check_bunyan(&rec) {
            panic!("{}:{}: not a valid bunyan record: {}: {}", path.display(), i + 1, e, text);
        }
        out.push(rec);
    }
    out
}

/// The `event` field of a record, or "".
pub fn event_of(rec: &Value) -> &str {
    rec.get("event").and_then(Value::as_str).unwrap_or("")
}

/// `worker_pid` of a record, if any.
pub fn worker_pid_of(rec: &Value) -> Option<i32> {
    rec.get("worker_pid").and_then(Value::as_i64).map(|p| p as i32)
}

/// The `bunyan` CLI to check logs with: $ZDRESTART_BUNYAN, else
/// <repo>/.npm/node_modules/.bin/bunyan. Panics when neither exists: the check
/// against the real CLI must fail, not skip (scripts/test installs it).
pub fn bunyan_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("ZDRESTART_BUNYAN") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "ZDRESTART_BUNYAN={} does not exist", p.display());
        return p;
    }
    let p = repo_root().join(".npm/node_modules/.bin/bunyan");
    assert!(
        p.exists(),
        "no bunyan CLI: neither $ZDRESTART_BUNYAN nor {} exists; run scripts/test (it installs bunyan from npm)",
        p.display()
    );
    p
}

/// The `time` of a record in milliseconds since the Unix epoch (the
/// writer's clock: for delays between records of one process).
pub fn time_ms_of(rec: &Value) -> i64 {
    let t = rec["time"].as_str().unwrap_or_else(|| panic!("record without time: {}", rec));
    assert!(is_iso8601_ms(t), "time {:?}", t);
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from 1970-01-01 to y-mo-d (proleptic Gregorian; Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// Reads a bunyan log file incrementally: each call parses only the records
/// completed since the last one (a test that polls the log for a record of
/// its own does not re-read and re-parse the whole file each time).
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    line: usize,
}

impl LogTail {
    /// From the start of the file at `path` (which may not exist yet).
    pub fn new(path: &Path) -> LogTail {
        LogTail { path: path.to_path_buf(), offset: 0, line: 0 }
    }

    /// The records completed since the last call (a trailing line not yet
    /// terminated by '\n' waits for the next call). Panics as [`parse_log`].
    pub fn new_records(&mut self) -> Vec<Value> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("open log {}: {}", self.path.display(), e),
        };
        let mut data = Vec::new();
        f.seek(SeekFrom::Start(self.offset))
            .and_then(|_| f.read_to_end(&mut data))
            .unwrap_or_else(|e| panic!("read log {}: {}", self.path.display(), e));
        let Some(end) = data.iter().rposition(|b| *b == b'\n') else { return Vec::new() };
        self.offset += end as u64 + 1;
        let mut out = Vec::new();
        for line in data[..end].split(|b| *b == b'\n') {
            self.line += 1;
            let text = String::from_utf8_lossy(line);
            let rec: Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON ({}): {}", self.path.display(), self.line, e, text));
            if let Err(e) = check_bunyan(&rec) {
                panic!("{}:{}: not a valid bunyan record: {}: {}", self.path.display(), self.line, e, text);
            }
            out.push(rec);
        }
        out
    }
}
