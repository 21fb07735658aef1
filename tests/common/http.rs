//! A small HTTP/1.1 client with timeouts: one-shot requests, keep-alive and
//! pipelining, raw bytes, and checks that the server closes a connection.

use serde_json::Value;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({}): {:?}", e, self.text()))
    }

    /// X-Worker-Pid as a number.
    pub fn worker_pid(&self) -> Option<i32> {
        self.header("x-worker-pid").and_then(|v| v.trim().parse().ok())
    }

    /// Whether the server announced it closes the connection.
    pub fn closes(&self) -> bool {
        self.header("connection").map(|v| v.eq_ignore_ascii_case("close")).unwrap_or(false)
    }

    /// Assert the headers every answer of the built-in worker carries: a
    /// numeric X-Worker-Pid, `Content-Type: application/json` and a
    /// Content-Length equal to the body's length.
    pub fn check_worker_headers(&self) {
        assert!(self.header("x-worker-pid").is_some_and(|p| p.parse::<u32>().is_ok()), "{:?}", self);
        assert_eq!(self.header("content-type"), Some("application/json"), "{:?}", self);
        assert_eq!(self.header("content-length").map(|l| l.parse::<usize>().unwrap()), Some(self.body.len()));
    }
}

/// Default I/O timeout of the client.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn build_request(method: &str, path: &str, body: Option<&[u8]>, close: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, path);
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in extra {
        req.push_str(&format!("{}: {}\r\n", k, v));
    }
    if let Some(b) = body {
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut v = req.into_bytes();
    if let Some(b) = body {
        v.extend_from_slice(b);
    }
    v
}

/// Read one response from `r`. `head` tells that the request was HEAD (no body).
pub fn read_response(r: &mut impl BufRead, head: bool) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {:?}", line)));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {:?}", line)))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header {:?}", h)))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        // no body
    } else if get("transfer-encoding").map(|v| v.to_ascii_lowercase().contains("chunked")).unwrap_or(false) {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz)?;
            let n = usize::from_str_radix(sz.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {:?}", sz)))?;
            if n == 0 {
                // trailers
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize =
            cl.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {:?}", cl)))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// One request on a new connection with `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Response> {
    http_with(port, method, path, body, &[], HTTP_TIMEOUT)
}

/// `http` with extra headers and a timeout.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    let req = build_request(method, path, body, true, headers);
    http_raw(port, &req, timeout, method == "HEAD")
}

/// Send raw request bytes on a new connection and read one response (for
/// malformed requests: no Content-Length, bad framing, ...).
pub fn http_raw(port: u16, request: &[u8], timeout: Duration, head: bool) -> io::Result<Response> {
    let mut s = connect(port, timeout)?;
    s.write_all(request)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, head)
}

/// GET that panics on I/O errors.
pub fn get(port: u16, path: &str) -> Response {
    http(port, "GET", path, None).unwrap_or_else(|e| panic!("GET {} on port {}: {}", path, port, e))
}

/// PUT of a JSON value that panics on I/O errors.
pub fn put_json(port: u16, path: &str, v: &Value) -> Response {
    let b = serde_json::to_vec(v).unwrap();
    http(port, "PUT", path, Some(&b)).unwrap_or_else(|e| panic!("PUT {} on port {}: {}", path, port, e))
}

/// DELETE that panics on I/O errors.
pub fn delete(port: u16, path: &str) -> Response {
    http(port, "DELETE", path, None).unwrap_or_else(|e| panic!("DELETE {} on port {}: {}", path, port, e))
}

/// A keep-alive HTTP/1.1 connection. After a response with `Connection: close`
/// (or an error) it is closed; `request` then reconnects only if `reconnect`.
pub struct KeepAlive {
    port: u16,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    /// Reconnect transparently before a request when the connection is closed.
    pub reconnect: bool,
    /// Number of TCP connections opened so far.
    pub connects: usize,
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive { port, timeout: HTTP_TIMEOUT, conn: None, reconnect: true, connects: 0 }
    }

    pub fn with_timeout(port: u16, timeout: Duration) -> KeepAlive {
        KeepAlive { timeout, ..KeepAlive::new(port) }
    }

    /// A client that never reconnects: once its one connection is closed,
    /// further requests fail (for tests that a connection stays open).
    pub fn one_connection(port: u16) -> KeepAlive {
        KeepAlive { reconnect: false, ..KeepAlive::new(port) }
    }

    /// Whether a connection is open now.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// The open connection's socket, if any (e.g. for [`crate::request_taken_by`]).
    pub fn stream(&self) -> Option<&TcpStream> {
        self.conn.as_ref().map(|c| c.get_ref())
    }

    fn ensure(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            if self.connects > 0 && !self.reconnect {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "keep-alive connection was closed"));
            }
            self.conn = Some(BufReader::new(connect(self.port, self.timeout)?));
            self.connects += 1;
        }
        Ok(())
    }

    /// One request on the connection (opened if needed).
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Response> {
        self.request_with(method, path, body, &[])
    }

    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        self.ensure()?;
        let req = build_request(method, path, body, false, headers);
        let res = (|| {
            let c = self.conn.as_mut().unwrap();
            c.get_mut().write_all(&req)?;
            read_response(c, method == "HEAD")
        })();
        match &res {
            Ok(r) if !r.closes() => {}
            _ => self.conn = None,
        }
        res
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, None)
    }

    /// Send one request without reading its answer (pipelining; read it with
    /// `read`). Opens the connection if needed.
    pub fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<()> {
        let req = build_request(method, path, body, false, &[]);
        self.send_raw(&req)
    }

    /// Send raw bytes (a request of the test's own making, maybe malformed).
    /// Opens the connection if needed; a write error does not close it (an
    /// answer the server sent before closing can still be `read`).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.ensure()?;
        self.conn.as_mut().unwrap().get_mut().write_all(bytes)
    }

    /// Read one answer (to a GET/PUT/... request sent by `send`/`send_raw`).
    /// Unlike `request`, it keeps the connection after `Connection: close`,
    /// so that `closed_within` can check the server really closes it.
    pub fn read(&mut self) -> io::Result<Response> {
        match self.conn.as_mut() {
            Some(c) => read_response(c, false),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no open connection")),
        }
    }

    /// Whether the server closes the open connection (EOF or reset, with no
    /// further byte) within `timeout`. False when data arrives or the timeout
    /// passes. Panics when no connection is open.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        use std::io::Read;
        let c = self.conn.as_mut().expect("closed_within: no open connection");
        if !c.buffer().is_empty() {
            return false;
        }
        let _ = c.get_ref().set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        let closed = match c.get_mut().read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        };
        if closed {
            self.conn = None;
        } else {
            let _ = c.get_ref().set_read_timeout(Some(self.timeout));
        }
        closed
    }

    pub fn close(&mut self) {
        self.conn = None;
    }
}
