//! The `sqlite` Databank driver: one database file (`params.path`) shared by
//! every worker of every generation on this host, through the system's
//! libsqlite3.
//!
//! Owns the connections of a worker (or probe), the file's schema and its
//! version, what each SQLite error means to a client, and the bound on every
//! wait. It must never let a request wait longer than `params.timeout`, never
//! write into a file it did not check, and never interpret client data: types,
//! ids and JSON texts are bound parameters, stored and returned byte for byte.
//!
//! Durability (zdrestart.json(5), `params.synchronous`): every PUT and DELETE
//! is one SQLite transaction in WAL mode, so it is all there or not there,
//! never half-written. An answer is sent only once its transaction has
//! committed. With `"normal"` (the default) the commit is in the WAL file when
//! it is acknowledged, so the death of any process (worker, master, SIGKILL)
//! loses nothing; the WAL is flushed to the disk at each checkpoint, so a crash
//! of the operating system or a power cut may take back the last acknowledged
//! writes (never corrupting the file). `"full"` flushes the WAL at every commit
//! (one `fdatasync` per write): acknowledged writes also survive a power cut.
//!
//! Schema (`SCHEMA_VERSION`; changing it means bumping `zdrestart::MAGIC`):
//!
//! ```text
//! PRAGMA application_id = 0x7a647273 ("zdrs"); PRAGMA user_version = 1;
//! CREATE TABLE objects (type TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL,
//!                       PRIMARY KEY (type, id)) WITHOUT ROWID;
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
//! ```
//!
//! A file with another application id or version is refused, naming both;
//! an empty or new file gets the schema in one transaction.

use crate::store::{Fault, Health, HealthNews, Store, StoreError};
use rusqlite::{ffi::ErrorCode, params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `PRAGMA application_id` of a zdrestart database: "zdrs".
pub const APPLICATION_ID: i64 = 0x7a64_7273;
/// `PRAGMA user_version` of the schema this code reads and writes.
pub const SCHEMA_VERSION: i64 = 1;
/// A request gives up waiting for a lock this long before the event loop
/// would answer it 503 by itself, so that its own answer (naming the file and
/// the cause) gets there first.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

/// `params.synchronous`: when a commit is flushed to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// At checkpoints: a committed write survives any process crash.
    Normal,
    /// At every commit: a committed write also survives a power cut.
    Full,
}

impl Sync {
    pub fn as_str(self) -> &'static str {
        match self {
            Sync::Normal => "normal",
            Sync::Full => "full",
        }
    }
}

/// A connection, and the file it was opened on (device, inode): a file
/// removed or replaced under a running worker is noticed, never written.
struct Conn {
    db: Connection,
    file: (u64, u64),
}

pub struct SqliteStore {
    path: PathBuf,
    file: String,
    timeout: Duration,
    sync: Sync,
    /// Connections not in use; at most one per pool thread plus the check.
    idle: Mutex<Vec<Conn>>,
    /// What the last call or check learnt of the database, for `/healthz`.
    news: Arc<HealthNews>,
}

/// Why a database could not be used, before it becomes a [`StoreError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub fault: Fault,
    pub detail: String,
}

fn problem(fault: Fault, detail: impl Into<String>) -> Problem {
    Problem { fault, detail: detail.into() }
}

impl SqliteStore {
    /// Prepare the driver without touching the file: a database that cannot
    /// be used is not an error here (requests answer 503 until it can).
    pub fn new(path: &Path, timeout: Duration, sync: Sync) -> SqliteStore {
        SqliteStore {
            path: path.to_path_buf(),
            file: path.display().to_string(),
            timeout,
            sync,
            idle: Mutex::new(Vec::new()),
            news: Arc::new(HealthNews::new()),
        }
    }

    /// The database file, as `/healthz` and errors name it.
    pub fn file(&self) -> &str {
        &self.file
    }

    fn error(&self, p: Problem) -> StoreError {
        StoreError::Unusable { file: self.file.clone(), fault: p.fault, detail: p.detail }
    }

    /// Open a connection on the file and check (or create) its schema.
    fn open(&self) -> Result<Conn, Problem> {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(problem(Fault::Missing, format!("{} is not a directory", dir.display()))),
            Err(e) => return Err(problem(Fault::Missing, format!("directory {}: {}", dir.display(), e))),
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(&self.path, flags).map_err(|e| self.diagnose(&e))?;
        db.busy_timeout(self.timeout).map_err(|e| self.diagnose(&e))?;
        // Opening is lazy: this reads the header (not a database -> corrupt)
        // and, once per file, switches it to WAL (needs write access).
        let mode = self.switch_to_wal(&db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(problem(Fault::ReadOnly, format!("cannot switch the journal to WAL (it is {:?})", mode)));
        }
        let sync = match self.sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        };
        db.pragma_update(None, "synchronous", sync).map_err(|e| self.diagnose(&e))?;
        let mut conn = Conn { db, file: self.identity()? };
        self.check_schema(&mut conn.db)?;
        Ok(conn)
    }

    /// `PRAGMA journal_mode=WAL`, waiting for the lock as the busy handler
    /// would. SQLite does not call the busy handler there when connections
    /// that have all read the file each need it to themselves: one of them
    /// gets SQLITE_BUSY at once. That is what workers (or one worker's
    /// threads) meet when they first open, together, a file not in WAL yet
    /// (new, restored from a backup, made by another program); it is no
    /// reason to answer 503, so the switch is tried again until `timeout`.
    fn switch_to_wal(&self, db: &Connection) -> Result<String, Problem> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
                Ok(mode) => return Ok(mode),
                Err(e) => {
                    let p = self.diagnose(&e);
                    if p.fault != Fault::Locked || Instant::now() + pause >= deadline {
                        return Err(p);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// (device, inode) of the file at the path now.
    fn identity(&self) -> Result<(u64, u64), Problem> {
        match fs::metadata(&self.path) {
            Ok(m) => Ok((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(problem(Fault::Missing, "the file was removed while it was being opened"))
            }
            Err(e) => Err(problem(Fault::Io, format!("stat: {}", e))),
        }
    }

    /// Check the application id and version; give an empty file the schema.
    fn check_schema(&self, db: &mut Connection) -> Result<(), Problem> {
        let versions = |db: &Connection| -> rusqlite::Result<(i64, i64, i64)> {
            let app = db.pragma_query_value(None, "application_id", |r| r.get(0))?;
            let ver = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let tables = db.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            Ok((app, ver, tables))
        };
        // The three in one read transaction: one snapshot of the file. Read
        // one by one, they could straddle another worker's creation of the
        // schema (application_id still 0, tables already there), and a new
        // database would be taken for another program's file.
        let snapshot = |db: &mut Connection| -> rusqlite::Result<(i64, i64, i64)> {
            let tx = db.transaction()?;
            let v = versions(&tx)?;
            tx.commit()?;
            Ok(v)
        };
        let (app, ver, tables) = snapshot(db).map_err(|e| self.diagnose(&e))?;
        if app == 0 && ver == 0 && tables == 0 {
            // New or empty: create the schema, unless another worker did it
            // between our look and our write lock.
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.diagnose(&e))?;
            let (app, ver, tables) = versions(&tx).map_err(|e| self.diagnose(&e))?;
            if app == 0 && ver == 0 && tables == 0 {
                tx.execute_batch(&format!(
                    "CREATE TABLE objects (type TEXT NOT NULL, id TEXT NOT NULL, json TEXT NOT NULL, \
                     PRIMARY KEY (type, id)) WITHOUT ROWID;
                     CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
                     PRAGMA application_id = {};
                     PRAGMA user_version = {};",
                    APPLICATION_ID, SCHEMA_VERSION
                ))
                .map_err(|e| self.diagnose(&e))?;
                log::info!(file = self.file.as_str(); "database {} created (schema version {})", self.file, SCHEMA_VERSION);
            }
            tx.commit().map_err(|e| self.diagnose(&e))?;
            return self.check_schema_values(snapshot(db).map_err(|e| self.diagnose(&e))?);
        }
        self.check_schema_values((app, ver, tables))
    }

    fn check_schema_values(&self, (app, ver, _): (i64, i64, i64)) -> Result<(), Problem> {
        if app != APPLICATION_ID {
            return Err(problem(
                Fault::Schema,
                format!(
                    "not a zdrestart database (application_id {:#x}, expected {:#x}): another program's file?",
                    app, APPLICATION_ID
                ),
            ));
        }
        if ver != SCHEMA_VERSION {
            return Err(problem(
                Fault::Schema,
                format!("schema version {}, this worker reads and writes version {}", ver, SCHEMA_VERSION),
            ));
        }
        Ok(())
    }

    /// What a SQLite error means, in the words a client and an operator get.
    fn diagnose(&self, e: &rusqlite::Error) -> Problem {
        let text = e.to_string();
        let code = match e {
            rusqlite::Error::SqliteFailure(f, _) => f.code,
            _ => return problem(Fault::Io, text),
        };
        match code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                problem(Fault::Locked, format!("{} (another process holds the write lock)", text))
            }
            ErrorCode::ReadOnly => problem(Fault::ReadOnly, text),
            ErrorCode::DiskFull => problem(Fault::Full, text),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => problem(Fault::Corrupt, text),
            ErrorCode::CannotOpen | ErrorCode::PermissionDenied => self.why_not_open(text),
            _ => problem(Fault::Io, text),
        }
    }

    /// SQLite says only "unable to open": ask the file system why.
    fn why_not_open(&self, text: String) -> Problem {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return problem(Fault::Missing, format!("directory {} does not exist", dir.display()));
        }
        match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)) => {
                problem(Fault::ReadOnly, format!("{}: {}", text, e))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => problem(Fault::Full, format!("{}: {}", text, e)),
            Err(e) => problem(Fault::Io, format!("{}: {}", text, e)),
            // The file itself is writable: the directory is not (no -wal or -shm).
            Ok(_) => problem(Fault::ReadOnly, format!("{} (cannot create files in {})", text, dir.display())),
        }
    }

    /// Run `f` on a connection: an idle one whose file is still the one at
    /// the path, else a new one. The wait for a lock ends before the
    /// request's deadline. A connection that failed is closed (the next
    /// request opens and checks the file again), except on a lock.
    fn with_conn<T>(&self, writes: bool, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let r = self.with_conn_inner(f);
        match &r {
            Ok(_) => {
                // A read that works says nothing of a write that failed.
                let sticky = matches!(self.news.peek(), Health::Unusable(Fault::Locked | Fault::ReadOnly | Fault::Full));
                if writes || !sticky {
                    self.set_health(Health::Ok);
                }
            }
            Err(p) => self.set_health(Health::Unusable(p.fault)),
        }
        r.map_err(|p| self.error(p))
    }

    fn with_conn_inner<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Problem> {
        let now = self.identity_now();
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) if Some(c.file) == now => c,
            Some(_) => {
                log::warn!(file = self.file.as_str(); "database {} was removed or replaced while in use: opening it again", self.file);
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.open()?
            }
            None => self.open()?,
        };
        let wait = match crate::store::request_deadline() {
            Some(d) => d.saturating_duration_since(Instant::now()).saturating_sub(DEADLINE_MARGIN).min(self.timeout),
            None => self.timeout,
        };
        conn.db.busy_timeout(wait).map_err(|e| self.diagnose(&e))?;
        match f(&conn.db) {
            Ok(v) => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                Ok(v)
            }
            Err(e) => {
                let p = self.diagnose(&e);
                if p.fault == Fault::Locked {
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                }
                Err(p)
            }
        }
    }

    fn identity_now(&self) -> Option<(u64, u64)> {
        fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()))
    }

    fn set_health(&self, h: Health) {
        self.news.set(h);
    }

    /// Open, check the schema and commit one small write (`meta`): what the
    /// probe and the health thread ask of the database. Finds a locked,
    /// read-only, full (when the WAL must grow), missing or corrupt file.
    pub fn check(&self) -> Result<(), StoreError> {
        self.with_conn(true, |db| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            db.prepare_cached("INSERT INTO meta (key, value) VALUES ('checked', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
                .execute(params![now])
                .map(|_| ())
        })
    }

    /// Start the health thread: it checks the database once at start (and
    /// says in the log whether it can be used), then only when `/healthz`
    /// asks and the last news is older than `store::HEALTH_EVERY`.
    pub fn watch_health(self: &Arc<Self>) {
        let (a, b) = (self.clone(), self.clone());
        let first = move || match a.check() {
            Ok(()) => log::info!(file = a.file.as_str(), synchronous = a.sync.as_str();
                "Database {} ready (synchronous {})", a.file, a.sync.as_str()),
            Err(e) => log::warn!(error = e.to_string().as_str();
                "Database unusable at start; requests answer 503 until it can be used: {}", e),
        };
        self.news.watch(first, move || {
            let _ = b.check();
        });
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn health(&self) -> Health {
        self.news.get()
    }

    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError> {
        self.with_conn(true, |db| {
            db.prepare_cached(
                "INSERT INTO objects (type, id, json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (type, id) DO UPDATE SET json = excluded.json",
            )?
            .execute(params![ty, id, json])
            .map(|_| ())
        })
    }

    /// One `Arc` per read: the row's text is the answer's body, shared by
    /// the connection writing it (`Body::Shared`).
    fn get(&self, ty: &str, id: &str) -> Result<Option<Arc<str>>, StoreError> {
        self.with_conn(false, |db| {
            db.prepare_cached("SELECT json FROM objects WHERE type = ?1 AND id = ?2")?
                .query_row(params![ty, id], |r| r.get::<_, String>(0))
                .optional()
        })
        .map(|o| o.map(Arc::from))
    }

    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError> {
        self.with_conn(true, |db| {
            db.prepare_cached("DELETE FROM objects WHERE type = ?1 AND id = ?2")?.execute(params![ty, id]).map(|n| n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zdrestart-sqlite-unit-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_two_stores_share_the_file() {
        let d = dir("rt");
        let p = d.join("o.db");
        let a = SqliteStore::new(&p, Duration::from_secs(1), Sync::Normal);
        let b = SqliteStore::new(&p, Duration::from_secs(1), Sync::Full);
        assert_eq!(a.get("t", "x").unwrap(), None);
        a.put("t", "x", r#"{"$set":{"a.b":1}}"#).unwrap();
        assert_eq!(b.get("t", "x").unwrap().as_deref(), Some(r#"{"$set":{"a.b":1}}"#));
        b.put("t", "x", "{}").unwrap();
        assert_eq!(a.get("t", "x").unwrap().as_deref(), Some("{}"));
        assert!(a.get("t.x", "").unwrap().is_none() && a.get("t", "x.").unwrap().is_none());
        assert!(b.delete("t", "x").unwrap());
        assert!(!a.delete("t", "x").unwrap());
        assert_eq!(a.health(), Health::Ok);
        a.check().unwrap();
        let _ = fs::remove_dir_all(&d);
    }

    /// Workers that first open a new file together: SQLite gives one of
    /// them SQLITE_BUSY at once, without waiting, when they switch it to
    /// WAL, and one may look at the file while another creates the schema;
    /// none of them may answer `locked` or `wrong schema` for that.
    #[test]
    fn stores_that_open_a_new_file_at_once_all_succeed() {
        let d = dir("together");
        let mut failed = Vec::new();
        for round in 0..100 {
            let p = d.join(format!("o{}.db", round));
            let barrier = Arc::new(std::sync::Barrier::new(3));
            let threads: Vec<_> = (0..3)
                .map(|i| {
                    let (p, barrier) = (p.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let s = SqliteStore::new(&p, Duration::from_secs(5), Sync::Normal);
                        barrier.wait();
                        s.put("t", &i.to_string(), "{}")
                    })
                })
                .collect();
            for t in threads {
                if let Err(e) = t.join().unwrap() {
                    failed.push(format!("round {}: {}", round, e));
                }
            }
        }
        assert!(failed.is_empty(), "{} of 300 opens failed: {:?}", failed.len(), failed);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn faults_name_the_cause() {
        let d = dir("faults");
        let missing = SqliteStore::new(&d.join("no/such/dir/o.db"), Duration::from_secs(1), Sync::Normal);
        match missing.put("t", "x", "{}") {
            Err(StoreError::Unusable { fault: Fault::Missing, file, .. }) => assert!(file.ends_with("no/such/dir/o.db")),
            other => panic!("{:?}", other),
        }
        assert_eq!(missing.health(), Health::Unusable(Fault::Missing));
        let junk = d.join("junk.db");
        fs::write(&junk, vec![b'x'; 8192]).unwrap();
        let s = SqliteStore::new(&junk, Duration::from_secs(1), Sync::Normal);
        assert!(matches!(s.get("t", "x"), Err(StoreError::Unusable { fault: Fault::Corrupt, .. })), "{:?}", s.get("t", "x"));
        let other = d.join("other.db");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("PRAGMA user_version = 7; CREATE TABLE t (x)").unwrap();
        drop(c);
        let s = SqliteStore::new(&other, Duration::from_secs(1), Sync::Normal);
        match s.check() {
            Err(StoreError::Unusable { fault: Fault::Schema, detail, .. }) => assert!(detail.contains("not a zdrestart database"), "{}", detail),
            r => panic!("{:?}", r),
        }
        let newer = d.join("newer.db");
        SqliteStore::new(&newer, Duration::from_secs(1), Sync::Normal).check().unwrap();
        Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 2").unwrap();
        match SqliteStore::new(&newer, Duration::from_secs(1), Sync::Normal).put("t", "x", "{}") {
            Err(StoreError::Unusable { fault: Fault::Schema, detail, .. }) => {
                assert_eq!(detail, "schema version 2, this worker reads and writes version 1")
            }
            r => panic!("{:?}", r),
        }
        let _ = fs::remove_dir_all(&d);
    }
}
