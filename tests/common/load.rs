//! A load generator for restart tests and the benchmark: keep-alive clients,
//! new-connection clients and slow requests (`GET /delay/{ms}`), counting
//! every failed request and remembering every acknowledged write.
//!
//! A request succeeds only with the answer the API promises: a PUT 200 with
//! the object as its body, a GET 200 with the object the client wrote
//! before, a `/delay/{ms}` 200 that slept `ms`. Anything else is a failure:
//! a refused or reset connection, a response that is cut off, a timeout,
//! another status or body. One case is not a failure but a retry, as every
//! HTTP client does (RFC 9112 section 9.3.1): the server closed a *reused*
//! keep-alive connection before sending a single byte of the answer (the
//! idle-close race); such a request is sent again once on a new connection
//! and counted in `retries`. A retry is legitimate only when a worker goes
//! (or an idle timeout passes): tests bound them with
//! [`Stats::assert_retries_at_most`], so that a failure a client would see
//! cannot be retried away.
//!
//! While it runs, [`Load::ok_count`] and [`Load::answered_by`] tell a test how
//! far the clients got, to wait for progress instead of sleeping.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub keepalive: usize,
    pub fresh: usize,
    pub slow: usize,
    pub slow_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub latency: Duration,
    pub ok: bool,
    /// A deliberately slow request (`/delay/{ms}`).
    pub slow: bool,
}

#[derive(Default)]
pub struct Stats {
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
    pub retries: u64,
    /// Acknowledged writes: (type/id, value).
    pub acked: Vec<(String, u64)>,
    pub pids: std::collections::BTreeSet<String>,
}

impl Stats {
    /// Fail unless at most `bound` requests were retried (the keep-alive
    /// retry rule of the module doc); `why` says where the bound comes from.
    pub fn assert_retries_at_most(&self, bound: u64, why: &str) {
        assert!(
            self.retries <= bound,
            "{} keep-alive retries, at most {} expected ({}): more would hide failed requests as retries",
            self.retries,
            bound,
            why
        );
    }
}

/// What the clients have achieved so far, shared while they run.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    pids: Mutex<BTreeSet<String>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<Mutex<Stats>>,
    live: Arc<Live>,
    pub started: Instant,
}

pub struct Response {
    pub status: u16,
    pub close: bool,
    pub pid: Option<String>,
    pub body: Vec<u8>,
}

enum Outcome {
    Ok(Response),
    /// Nothing at all came back on a reused connection: safe to retry.
    NothingOnReused(String),
    Failed(String),
}

const TIMEOUT: Duration = Duration::from_secs(20);

fn connect(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

fn request(conn: &mut BufReader<TcpStream>, reused: bool, method: &str, path: &str, body: &[u8], close: bool) -> Outcome {
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        method,
        path,
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    if let Err(e) = conn.get_mut().write_all(&msg) {
        return if reused { Outcome::NothingOnReused(format!("write: {}", e)) } else { Outcome::Failed(format!("write: {}", e)) };
    }
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => {
            return if reused {
                Outcome::NothingOnReused("EOF before the status line".into())
            } else {
                Outcome::Failed("EOF before the status line".into())
            }
        }
        Ok(_) => {}
        Err(e) => {
            let nothing = matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe);
            return if reused && nothing {
                Outcome::NothingOnReused(format!("read: {}", e))
            } else {
                Outcome::Failed(format!("read status line: {}", e))
            };
        }
    }
    let status: u16 = match line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
        Some(s) => s,
        None => return Outcome::Failed(format!("bad status line {:?}", line)),
    };
    let mut len = 0usize;
    let mut conn_close = false;
    let mut pid = None;
    loop {
        let mut h = String::new();
        match conn.read_line(&mut h) {
            Ok(0) => return Outcome::Failed("EOF in headers".into()),
            Ok(_) => {}
            Err(e) => return Outcome::Failed(format!("read headers: {}", e)),
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "connection" => conn_close = v.eq_ignore_ascii_case("close"),
                "x-worker-pid" => pid = Some(v.to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    if let Err(e) = conn.read_exact(&mut body) {
        return Outcome::Failed(format!("read body ({} bytes): {}", len, e));
    }
    Outcome::Ok(Response { status, close: conn_close, pid, body })
}

/// One request on `conn` (opened if None), with the keep-alive retry rule.
fn call(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
    method: &str,
    path: &str,
    body: &[u8],
    keepalive: bool,
    retries: &mut u64,
) -> Result<Response, String> {
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            *conn = Some(connect(addr).map_err(|e| format!("connect: {}", e))?);
        }
        let out = request(conn.as_mut().unwrap(), reused, method, path, body, !keepalive);
        match out {
            Outcome::Ok(r) => {
                if r.close || !keepalive {
                    *conn = None;
                }
                return Ok(r);
            }
            Outcome::NothingOnReused(e) if attempt == 0 => {
                *conn = None;
                *retries += 1;
                let _ = e;
                continue;
            }
            Outcome::NothingOnReused(e) | Outcome::Failed(e) => {
                *conn = None;
                return Err(e);
            }
        }
    }
    unreachable!()
}

/// Numbers the loads of a test process: each writes keys of its own, so that
/// a write lost in one run cannot hide behind the same key and value of an
/// earlier one.
static RUN: AtomicU32 = AtomicU32::new(0);

impl Load {
    pub fn start(port: u16, spec: Spec) -> Load {
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let live = Arc::new(Live::default());
        let mut threads = Vec::new();
        let kinds = std::iter::repeat_n(0, spec.keepalive)
            .chain(std::iter::repeat_n(1, spec.fresh))
            .chain(std::iter::repeat_n(2, spec.slow));
        for (t, kind) in kinds.enumerate() {
            let stop = stop.clone();
            let stats = stats.clone();
            let live = live.clone();
            threads.push(std::thread::spawn(move || {
                let mut conn = None;
                let mut n: u64 = 0;
                let mut local = Stats::default();
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let t0 = Instant::now();
                    let key = format!("load/r{}t{}-{}", run, t, n);
                    let (method, path, body) = match kind {
                        2 => ("GET", format!("/delay/{}", spec.slow_ms), Vec::new()),
                        _ if n % 2 == 1 => ("PUT", format!("/objects/{}", key), format!("{{\"n\":{}}}", n).into_bytes()),
                        _ => ("GET", format!("/objects/load/r{}t{}-{}", run, t, n - 1), Vec::new()),
                    };
                    let r = call(addr, &mut conn, method, &path, &body, kind == 0, &mut local.retries);
                    let latency = t0.elapsed();
                    let ok = match r {
                        Ok(resp) if promised(kind, n, spec.slow_ms, &body, &resp) => {
                            if method == "PUT" {
                                local.acked.push((key, n));
                            }
                            if let Some(p) = resp.pid {
                                if !local.pids.contains(&p) {
                                    live.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(p.clone());
                                }
                                local.pids.insert(p);
                            }
                            live.ok.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                        Ok(resp) => {
                            local.failures.push(format!(
                                "{} {}: status {} {}",
                                method,
                                path,
                                resp.status,
                                String::from_utf8_lossy(&resp.body)
                            ));
                            false
                        }
                        Err(e) => {
                            local.failures.push(format!("{} {}: {}", method, path, e));
                            false
                        }
                    };
                    local.samples.push(Sample { at: t0, latency, ok, slow: kind == 2 });
                }
                let mut s = stats.lock().unwrap();
                s.samples.append(&mut local.samples);
                s.failures.append(&mut local.failures);
                s.retries += local.retries;
                s.acked.append(&mut local.acked);
                s.pids.append(&mut local.pids);
            }));
        }
        Load { stop, threads, stats, live, started: Instant::now() }
    }

    /// Requests answered as promised so far.
    pub fn ok_count(&self) -> u64 {
        self.live.ok.load(Ordering::Relaxed)
    }

    /// The worker pids (`X-Worker-Pid`) that answered a request as promised so far.
    pub fn answered_by(&self) -> BTreeSet<String> {
        self.live.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until `n` more requests than `since` were answered as promised
    /// (`timeout` at most; panics naming `what` otherwise).
    pub fn wait_ok_after(&self, since: u64, n: u64, timeout: Duration, what: &str) {
        let end = Instant::now() + timeout;
        while self.ok_count() < since + n {
            assert!(Instant::now() < end, "load: {} requests answered after {:?} ({}), {} wanted", self.ok_count() - since, timeout, what, n);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until each of `pids` answered a request as promised (`timeout`
    /// at most; panics otherwise).
    pub fn wait_answered_by(&self, pids: &[i32], timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.answered_by();
            let missing: Vec<i32> = pids.iter().copied().filter(|p| !seen.contains(&p.to_string())).collect();
            if missing.is_empty() {
                return;
            }
            assert!(Instant::now() < end, "load: no answer from workers {:?} within {:?}", missing, timeout);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop all clients and return what they saw.
    pub fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = Vec::new();
        for (i, t) in self.threads.into_iter().enumerate() {
            // A client that panicked lost its own counts: that is a failure
            // of the run, never a silent gap in the figures.
            if let Err(e) = t.join() {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panicked.push(format!("load client {} panicked: {}", i, why));
            }
        }
        let mut s = std::mem::take(&mut *self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        s.failures.extend(panicked);
        s.samples.sort_by_key(|x| x.at);
        s
    }
}

/// Whether `resp` is what the API promises for the request the client of
/// `kind` sent as its `n`th: PUT (odd n) 200 echoing the object, GET 200 with
/// the object of the PUT before, `/delay/{ms}` 200 having slept `ms`.
fn promised(kind: usize, n: u64, slow_ms: u64, body: &[u8], resp: &Response) -> bool {
    if resp.status != 200 {
        return false;
    }
    let got: serde_json::Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(_) => return false,
    };
    match kind {
        2 => got.get("slept_ms").and_then(|v| v.as_u64()) == Some(slow_ms),
        _ if n % 2 == 1 => serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|sent| sent == got),
        _ => got.get("n").and_then(|v| v.as_u64()) == Some(n - 1),
    }
}

/// GET every acknowledged write back; returns the keys that are missing or wrong.
pub fn verify_acked(port: u16, acked: &[(String, u64)]) -> Vec<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conn = None;
    let mut retries = 0;
    let mut bad = Vec::new();
    for (key, n) in acked {
        match call(addr, &mut conn, "GET", &format!("/objects/{}", key), b"", true, &mut retries) {
            Ok(r) if r.status == 200 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                if v.get("n").and_then(|x| x.as_u64()) != Some(*n) {
                    bad.push(format!("{}: wrong body {}", key, v));
                }
            }
            Ok(r) => bad.push(format!("{}: status {}", key, r.status)),
            Err(e) => bad.push(format!("{}: {}", key, e)),
        }
    }
    bad
}

/// Percentile of latencies in a slice of samples (ms).
pub fn percentile_ms(samples: &[&Sample], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}
