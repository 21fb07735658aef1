//! The steps of `restart --wait`, `promote --wait` and `upgrade --wait` as
//! they happen: the master streams one `PROGRESS <json>` line per step
//! before its answer (zdrestartctl(8), "PROGRESS"). On a terminal they are
//! one progress line updated in place (worker k of N, elapsed, the last
//! step); otherwise one plain line per step; with `--json` each step's JSON
//! object as the master sent it, then one object for the answer. Pure
//! formatting plus the writes to stdout.

use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};
use zdrestart::control::{self, Answer};

/// How the steps are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line updated in place (stdout is a terminal).
    Terminal,
    /// One line per step.
    Plain,
    /// One JSON object per step (`--json`).
    Json,
}

pub struct Display {
    mode: Mode,
    what: &'static str,
    t0: Instant,
    /// The last step's JSON (Terminal: redrawn with the elapsed time).
    last: Option<Value>,
    /// A progress line is on the screen (Terminal).
    drawn: bool,
}

/// `worker k of N ready, m old left` from a step's `rollout`.
fn where_it_stands(v: &Value) -> Option<String> {
    let r = v.get("rollout")?;
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(format!("generation {}: {} of {} ready, {} old left", n("generation"), n("ready"), n("of"), n("old")))
}

impl Display {
    pub fn new(mode: Mode, what: &'static str) -> Display {
        Display { mode, what, t0: Instant::now(), last: None, drawn: false }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How often the terminal line is redrawn while no step comes.
    pub fn tick_every(&self) -> Option<Duration> {
        (self.mode == Mode::Terminal).then_some(Duration::from_secs(1))
    }

    /// The text of one line for a step at `elapsed`.
    pub fn line(&self, v: &Value, elapsed: Duration) -> String {
        let text = v.get("text").and_then(Value::as_str).unwrap_or("?");
        let secs = elapsed.as_secs_f64();
        match (self.mode, where_it_stands(v)) {
            (Mode::Terminal, Some(w)) => format!("{}: {}, {:.1} s: {}", self.what, w, secs, text),
            (Mode::Terminal, None) => format!("{}: {:.1} s: {}", self.what, secs, text),
            (_, Some(w)) => format!("[{:7.3} s] {} ({})", secs, text, w),
            (_, None) => format!("[{:7.3} s] {}", secs, text),
        }
    }

    /// One `PROGRESS` line's data (the JSON after the word).
    pub fn step(&mut self, data: &str) {
        let mut out = std::io::stdout().lock();
        if self.mode == Mode::Json {
            let _ = writeln!(out, "{}", data.trim());
            let _ = out.flush();
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            // Still shown: a newer master may say what this client cannot parse.
            let _ = writeln!(out, "{}", data.trim());
            return;
        };
        self.last = Some(v);
        self.draw(&mut out);
    }

    /// No step for a while: the terminal line's elapsed time moves on.
    pub fn tick(&mut self) {
        if self.mode == Mode::Terminal {
            self.draw(&mut std::io::stdout().lock());
        }
    }

    fn draw(&mut self, out: &mut impl Write) {
        let line = match &self.last {
            Some(v) => self.line(v, self.t0.elapsed()),
            None => format!("{}: {:.1} s: waiting for the master", self.what, self.t0.elapsed().as_secs_f64()),
        };
        if self.mode == Mode::Terminal {
            let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<usize>().ok()).unwrap_or(80).max(20);
            let cut: String = line.chars().take(width - 1).collect();
            let _ = write!(out, "\r\x1b[K{}", cut);
            self.drawn = true;
        } else {
            let _ = writeln!(out, "{}", line);
        }
        let _ = out.flush();
    }

    /// The answer came: the terminal line is cleared; with `--json` the
    /// answer is one more object (`step` `answer`, `ok`, `answer`, and for
    /// a NACK `reason` and `advice`).
    pub fn finish(&mut self, answer: &Answer) {
        let mut out = std::io::stdout().lock();
        if self.drawn {
            let _ = write!(out, "\r\x1b[K");
            self.drawn = false;
        }
        if self.mode == Mode::Json {
            let ms = self.t0.elapsed().as_millis() as u64;
            let v = match answer {
                Answer::Ack(data) => serde_json::json!({"step": "answer", "ok": true, "answer": data, "elapsed_ms": ms}),
                Answer::Nack(reason) => serde_json::json!({"step": "answer", "ok": false, "reason": reason,
                    "advice": control::advice(control::reason_key(reason)), "elapsed_ms": ms}),
            };
            let _ = writeln!(out, "{}", v);
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_where_the_rollout_stands() {
        let v: Value = serde_json::from_str(
            r#"{"step":"worker.ready","text":"worker 12 ready in 250 ms","rollout":{"generation":2,"ready":1,"of":4,"old":3}}"#,
        )
        .unwrap();
        let t = Duration::from_millis(1500);
        assert_eq!(Display::new(Mode::Plain, "restart").line(&v, t), "[  1.500 s] worker 12 ready in 250 ms (generation 2: 1 of 4 ready, 3 old left)");
        assert_eq!(Display::new(Mode::Terminal, "restart").line(&v, t), "restart: generation 2: 1 of 4 ready, 3 old left, 1.5 s: worker 12 ready in 250 ms");
        let v: Value = serde_json::from_str(r#"{"step":"restart.refused","text":"refused: bad config"}"#).unwrap();
        assert_eq!(Display::new(Mode::Plain, "restart").line(&v, t), "[  1.500 s] refused: bad config");
    }
}
