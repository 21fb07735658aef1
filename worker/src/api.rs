//! The JSON API of the built-in worker (zdrestart-worker(7), "API"): routes,
//! input validation and answers.
//!
//! Owns what each request means: path and name rules, body checks, status
//! codes and JSON bodies. It must not touch sockets or framing (that is
//! `http.rs`), and it never stores anything a driver could interpret: names
//! are checked against `[A-Za-z0-9_.-]{1,128}` and bodies are passed to the
//! driver as the client's exact JSON text once they are known to be objects.

use crate::store::{Health, Store, StoreError};
use serde_json::{json, Value};

/// Longest `/delay/{ms}`.
pub const MAX_DELAY_MS: u64 = 10_000;
/// Longest type or id.
pub const MAX_NAME: usize = 128;

/// An answer, before framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// JSON text (empty for 204).
    pub body: Vec<u8>,
    /// `Allow` header value, for 405.
    pub allow: Option<&'static str>,
}

impl Response {
    pub fn json(status: u16, v: &Value) -> Response {
        Response { status, body: serde_json::to_vec(v).unwrap_or_default(), allow: None }
    }

    pub fn text(status: u16, json_text: &str) -> Response {
        Response { status, body: json_text.as_bytes().to_vec(), allow: None }
    }

    pub fn error(status: u16, msg: &str) -> Response {
        Response::json(status, &json!({ "error": msg }))
    }

    pub fn no_content() -> Response {
        Response { status: 204, body: Vec::new(), allow: None }
    }
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Object { ty: &'a str, id: &'a str },
    Delay(&'a str),
    NotFound,
}

impl Route<'_> {
    /// Methods each route answers (`HEAD` goes with `GET`).
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Healthz | Route::Delay(_) => "GET, HEAD",
            Route::Object { .. } => "GET, HEAD, PUT, DELETE",
            Route::NotFound => "",
        }
    }
}

/// Split a request target into a route. The query string is ignored; names are
/// not decoded (a `%` simply fails validation later), so what a client sends is
/// what gets checked.
pub fn route(target: &str) -> Route<'_> {
    let mut path = target.split(['?', '#']).next().unwrap_or("");
    // absolute-form (`http://host/path`), allowed by RFC 9112 for any server.
    if let Some(rest) = path.strip_prefix("http://").or_else(|| path.strip_prefix("https://")) {
        path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    }
    if path == "/healthz" {
        return Route::Healthz;
    }
    if let Some(rest) = path.strip_prefix("/objects/") {
        return match rest.split_once('/') {
            Some((ty, id)) if !id.contains('/') => Route::Object { ty, id },
            _ => Route::NotFound,
        };
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        if !ms.contains('/') {
            return Route::Delay(ms);
        }
    }
    Route::NotFound
}

/// `[A-Za-z0-9_.-]{1,128}`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `0..=10000`, decimal digits only.
pub fn parse_delay(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&ms| ms <= MAX_DELAY_MS)
}

/// Check a PUT body: a JSON object. Returns the exact text to store (without
/// surrounding whitespace), or the 400 answer.
pub fn object_body(body: &[u8]) -> Result<&str, Response> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err(Response::error(400, &format!("invalid JSON: {}", e))),
    };
    if !v.is_object() {
        return Err(Response::error(400, "body must be a JSON object"));
    }
    // from_slice succeeded, so the body is valid UTF-8.
    Ok(std::str::from_utf8(body).map(str::trim).unwrap_or("{}"))
}

/// Facts `/healthz` reports.
pub struct Identity {
    pub pid: u32,
    pub generation: u64,
    pub driver: &'static str,
    /// The database file (`sqlite`), named by `/healthz`.
    pub file: Option<String>,
}

/// Whether answering needs the driver (and so runs on a pool thread): an
/// object request with a valid method and names. Everything else is answered
/// on the event loop at once. `method` is `GET` for `HEAD`.
pub fn needs_driver(method: &str, route: &Route<'_>) -> bool {
    matches!(route, Route::Object { ty, id } if matches!(method, "GET" | "PUT" | "DELETE") && valid_name(ty) && valid_name(id))
}

/// `/delay/{ms}` that is to be served: the event loop answers it with
/// [`delay_done`] after `ms` without holding any thread.
pub fn delay_of(method: &str, route: &Route<'_>) -> Option<u64> {
    match route {
        Route::Delay(ms) if method == "GET" => parse_delay(ms),
        _ => None,
    }
}

/// The answer of a delay of `ms`.
pub fn delay_done(who: &Identity, ms: u64) -> Response {
    Response::json(200, &json!({ "slept_ms": ms, "pid": who.pid }))
}

/// The `/healthz` answer: never waits for the database; `database` is what
/// the driver last learnt of it.
pub fn healthz(who: &Identity, db: Health) -> Response {
    let mut v = json!({
        "status": "ok",
        "pid": who.pid,
        "generation": who.generation,
        "version": zdrestart::VERSION,
        "magic": zdrestart::MAGIC,
        "driver": who.driver,
        "database": db.as_str(),
    });
    if let Some(f) = &who.file {
        v["file"] = json!(f);
    }
    Response::json(200, &v)
}

/// Answer a request that is not a delay to be served (see [`delay_of`]).
/// `method` is `GET` for `HEAD`.
pub fn handle(store: &dyn Store, who: &Identity, method: &str, route: &Route<'_>, body: &[u8]) -> Response {
    match route {
        Route::NotFound => Response::error(404, "not found"),
        Route::Healthz => match method {
            "GET" => healthz(who, store.health()),
            _ => method_not_allowed(route),
        },
        Route::Delay(ms) => match method {
            "GET" => match parse_delay(ms) {
                Some(ms) => delay_done(who, ms),
                None => Response::error(400, "invalid delay: expected milliseconds from 0 to 10000"),
            },
            _ => method_not_allowed(route),
        },
        Route::Object { ty, id } => {
            if !matches!(method, "GET" | "PUT" | "DELETE") {
                return method_not_allowed(route);
            }
            if !valid_name(ty) {
                return Response::error(400, "invalid type: expected [A-Za-z0-9_.-]{1,128}");
            }
            if !valid_name(id) {
                return Response::error(400, "invalid id: expected [A-Za-z0-9_.-]{1,128}");
            }
            let result = match method {
                "GET" => store.get(ty, id).map(|o| match o {
                    Some(text) => Response::text(200, &text),
                    None => Response::error(404, "object not found"),
                }),
                "PUT" => match object_body(body) {
                    Ok(text) => store.put(ty, id, text).map(|()| Response::text(200, text)),
                    Err(r) => Ok(r),
                },
                _ => store.delete(ty, id).map(|found| {
                    if found {
                        Response::no_content()
                    } else {
                        Response::error(404, "object not found")
                    }
                }),
            };
            result.unwrap_or_else(|e| store_failure(&e))
        }
    }
}

fn method_not_allowed(route: &Route<'_>) -> Response {
    let mut r = Response::error(405, "method not allowed");
    r.allow = Some(route.allow());
    r
}

fn store_failure(e: &StoreError) -> Response {
    crate::store::warn_store_error(e);
    match e {
        StoreError::Unavailable(_) => Response::error(503, "database unavailable"),
        StoreError::Failed(_) => Response::error(500, "database error"),
        StoreError::Full(why) => Response::error(507, &format!("store full: {}; nothing was changed", why)),
        StoreError::Unusable { file, fault, detail } => Response::json(
            503,
            &json!({ "error": "database unavailable", "file": file, "cause": fault.as_str(), "detail": detail }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/healthz?x=1"), Route::Healthz);
        assert_eq!(route("/objects/a/b"), Route::Object { ty: "a", id: "b" });
        assert_eq!(route("/objects/a.b/$x"), Route::Object { ty: "a.b", id: "$x" });
        assert_eq!(route("/objects/a/"), Route::Object { ty: "a", id: "" });
        assert_eq!(route("/objects/a"), Route::NotFound);
        assert_eq!(route("/objects/a/b/c"), Route::NotFound);
        assert_eq!(route("/objects"), Route::NotFound);
        assert_eq!(route("/delay/10"), Route::Delay("10"));
        assert_eq!(route("/delay/1/2"), Route::NotFound);
        assert_eq!(route("http://h:8080/healthz"), Route::Healthz);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("*"), Route::NotFound);
    }

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("A-z_0.9"));
        assert!(valid_name(&"x".repeat(128)));
        assert!(!valid_name(&"x".repeat(129)));
        assert!(!valid_name(""));
        assert!(!valid_name("$where"));
        assert!(!valid_name("a%2Fb"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("é"));
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("0"), Some(0));
        assert_eq!(parse_delay("10000"), Some(10000));
        assert_eq!(parse_delay("10001"), None);
        assert_eq!(parse_delay("-1"), None);
        assert_eq!(parse_delay("+1"), None);
        assert_eq!(parse_delay(""), None);
        assert_eq!(parse_delay("99999999999999999999"), None);
    }

    #[test]
    fn bodies() {
        assert_eq!(object_body(b" {\"$set\": {\"a.b\": 1}}\n").unwrap(), "{\"$set\": {\"a.b\": 1}}");
        assert_eq!(object_body(b"[1]").unwrap_err().status, 400);
        assert_eq!(object_body(b"{").unwrap_err().status, 400);
        assert_eq!(object_body(b"").unwrap_err().status, 400);
        assert_eq!(object_body(b"\xff").unwrap_err().status, 400);
    }

    #[test]
    fn handlers() {
        let s = MemoryStore::default();
        let who = Identity { pid: 1, generation: 2, driver: "memory", file: None };
        let obj = Route::Object { ty: "t", id: "a.b" };
        assert_eq!(handle(&s, &who, "GET", &obj, b"").status, 404);
        let r = handle(&s, &who, "PUT", &obj, br#"{"$x":1}"#);
        assert_eq!((r.status, r.body.as_slice()), (200, &br#"{"$x":1}"#[..]));
        assert_eq!(handle(&s, &who, "GET", &obj, b"").body, br#"{"$x":1}"#);
        assert_eq!(handle(&s, &who, "DELETE", &obj, b"").status, 204);
        assert_eq!(handle(&s, &who, "DELETE", &obj, b"").status, 404);
        let r = handle(&s, &who, "POST", &obj, b"");
        assert_eq!((r.status, r.allow), (405, Some("GET, HEAD, PUT, DELETE")));
        assert_eq!(handle(&s, &who, "GET", &Route::Object { ty: "$t", id: "x" }, b"").status, 400);
        assert_eq!(handle(&s, &who, "GET", &Route::Object { ty: "t", id: "" }, b"").status, 400);
        assert_eq!(handle(&s, &who, "PUT", &obj, b"[]").status, 400);
        assert_eq!(handle(&s, &who, "GET", &Route::Delay("x"), b"").status, 400);
        assert_eq!(handle(&s, &who, "PUT", &Route::Healthz, b"").status, 405);
        let h: Value = serde_json::from_slice(&handle(&s, &who, "GET", &Route::Healthz, b"").body).unwrap();
        assert_eq!(h["generation"], 2);
        assert_eq!(h["driver"], "memory");
        assert_eq!(h["magic"], zdrestart::MAGIC);
        assert_eq!(h["database"], "ok");
        assert!(needs_driver("GET", &obj) && needs_driver("PUT", &obj) && needs_driver("DELETE", &obj));
        assert!(!needs_driver("POST", &obj) && !needs_driver("GET", &Route::Object { ty: "$t", id: "x" }));
        assert!(!needs_driver("GET", &Route::Healthz));
        assert_eq!(delay_of("GET", &Route::Delay("5")), Some(5));
        assert_eq!(delay_of("PUT", &Route::Delay("5")), None);
        let full = MemoryStore::new(0, 0);
        let r = handle(&full, &who, "PUT", &obj, b"{}");
        assert_eq!(r.status, 507);
        assert!(serde_json::from_slice::<Value>(&r.body).unwrap()["error"].is_string());
    }
}
