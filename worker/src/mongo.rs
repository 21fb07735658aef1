//! The `mongodb` Databank driver.
//!
//! Owns the MongoDB client of a worker (or probe), the document layout and the
//! bound on every database call. It must not block start-up on the database
//! (the client connects lazily and reconnects by itself), must never let a
//! request wait longer than the configured timeout, and must never interpret
//! client data as query syntax.
//!
//! Document layout (collection `objects` in `params.dbname`; changing it means
//! bumping `zdrestart::MAGIC`):
//!
//! ```text
//! { _id: "<type>/<id>", type: "<type>", id: "<id>", json: "<the object's JSON text>" }
//! ```
//!
//! `_id` is a string *value* in every filter, so a dotted or `$`-prefixed id is
//! just a string; the object travels as text, so keys such as `$set` or `a.b`
//! inside it are never seen by the server as field names or operators, and come
//! back byte for byte.
//!
//! Why the async client on our own runtime rather than `mongodb::sync`: the
//! driver has no socket timeout (`socketTimeoutMS` is unsupported), so an
//! operation on a connection to a server that stopped answering (SIGSTOP,
//! network partition without RST) could hang a pool thread forever. Each
//! call here is `block_on(tokio::time::timeout(..))`, a hard bound in every
//! case; server selection and connect timeouts are set to the same value so the
//! usual "database is down" case fails with the driver's own message.

use crate::store::{object_key, Health, HealthNews, Store, StoreError};
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zdrestart::config::Config;

/// Collection of the API's objects (zdrestart-worker(7), "The built-in worker").
pub const COLLECTION: &str = "objects";

/// Extra time the outer bound leaves to the driver, so that its own error
/// (server selection, connection refused) usually wins over our generic timeout.
const MARGIN: Duration = Duration::from_millis(250);

/// A client that cannot even be built: a bad `params.uri` is a config error,
/// anything else (e.g. a DNS failure for `mongodb+srv://`) may pass.
#[derive(Debug)]
pub enum InitError {
    Config(String),
    Other(String),
}

pub struct MongoStore {
    rt: tokio::runtime::Runtime,
    uri: String,
    dbname: String,
    timeout: Duration,
    pool: u32,
    /// The collection handle (it holds the client). `None` until a client
    /// could be built: building only fails on a transient error (DNS of a
    /// `mongodb+srv://` URI), and is retried by the next request, so no broken
    /// client is kept. A built client reconnects by itself (its monitor
    /// re-checks the server), so it is kept for the life of the process.
    coll: Mutex<Option<Collection<Document>>>,
    /// What the last call or ping learnt of the database, for `/healthz`,
    /// which must never wait for the database itself.
    news: Arc<HealthNews>,
}

impl MongoStore {
    /// Prepare the driver without contacting the server (a `mongodb+srv://`
    /// URI does need DNS). `timeout` bounds every later call; `pool` is the
    /// most connections the driver may open. Only an unusable `params.uri` is
    /// an error: the database being down is not.
    pub fn new(cfg: &Config, timeout: Duration, pool: u32) -> Result<MongoStore, InitError> {
        // Two threads are plenty: they only run the driver's I/O and monitors;
        // the pool threads block in `block_on` themselves.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mongodb")
            .enable_all()
            .build()
            .map_err(|e| InitError::Other(format!("cannot start the database runtime: {}", e)))?;
        let store = MongoStore {
            rt,
            uri: cfg.mongo_uri.clone(),
            dbname: cfg.mongo_dbname.clone(),
            timeout,
            pool,
            coll: Mutex::new(None),
            news: Arc::new(HealthNews::new()),
        };
        match store.build() {
            Ok(c) => *store.coll.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
            Err(InitError::Config(m)) => return Err(InitError::Config(m)),
            Err(InitError::Other(m)) => {
                log::warn!(error = m.as_str(); "cannot prepare the database client yet (will retry): {}", m)
            }
        }
        Ok(store)
    }

    fn build(&self) -> Result<Collection<Document>, InitError> {
        let uri = self.uri.clone();
        let bound = self.timeout + MARGIN;
        let parsed = self.rt.block_on(async { tokio::time::timeout(bound, ClientOptions::parse(uri.as_str())).await });
        let mut opts = match parsed {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(match *e.kind {
                    ErrorKind::InvalidArgument { .. } => {
                        InitError::Config(format!("params.uri: {}", one_line(&e.to_string())))
                    }
                    _ => InitError::Other(one_line(&e.to_string())),
                })
            }
            Err(_) => return Err(InitError::Other("timed out resolving params.uri".into())),
        };
        opts.server_selection_timeout = Some(self.timeout);
        opts.connect_timeout = Some(self.timeout);
        opts.app_name = Some("zdrestart-worker".into());
        // One connection per request permit, at least the driver's default.
        opts.max_pool_size = Some(self.pool.max(10));
        // Client::with_options spawns the monitoring tasks: it must run inside
        // our runtime, which then keeps them for the life of the process.
        let _guard = self.rt.enter();
        let client = Client::with_options(opts)
            .map_err(|e| InitError::Config(format!("params.uri: {}", one_line(&e.to_string()))))?;
        Ok(client.database(&self.dbname).collection::<Document>(COLLECTION))
    }

    /// The collection, building the client if an earlier attempt failed.
    fn coll(&self) -> Result<Collection<Document>, StoreError> {
        let mut slot = self.coll.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        match self.build() {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(InitError::Config(m)) | Err(InitError::Other(m)) => Err(StoreError::Unavailable(m)),
        }
    }

    fn set_health(&self, h: Health) {
        self.news.set(h);
    }

    /// Start the health thread: it pings the database once at start (and
    /// says in the log whether it answers), then only when `/healthz` asks
    /// and the last news of the database is older than [`HEALTH_EVERY`]; so
    /// an idle worker does not wake up, and `/healthz` never waits for it.
    pub fn watch_health(self: &Arc<Self>) {
        let (a, b) = (self.clone(), self.clone());
        let first = move || match a.ping() {
            Ok(()) => log::info!("Database reachable"),
            Err(e) => log::warn!(error = e.to_string().as_str();
                "Database unreachable at start; requests answer 503 until it is back"),
        };
        self.news.watch(first, move || {
            let _ = b.ping();
        });
    }

    /// Run one driver future with the hard bound.
    fn bounded<T, F>(&self, what: &str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = mongodb::error::Result<T>>,
    {
        let r = self.bounded_inner(what, fut);
        match &r {
            Ok(_) | Err(StoreError::Failed(_)) | Err(StoreError::Full(_)) => self.set_health(Health::Ok),
            Err(StoreError::Unavailable(_) | StoreError::Unusable { .. }) => self.set_health(Health::Unreachable),
        }
        r
    }

    fn bounded_inner<T, F>(&self, what: &str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = mongodb::error::Result<T>>,
    {
        // The timer must be created inside the runtime, hence the async block.
        let bound = self.timeout + MARGIN;
        match self.rt.block_on(async move { tokio::time::timeout(bound, fut).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{} did not finish within {} ms",
                what,
                (self.timeout + MARGIN).as_millis()
            ))),
        }
    }

    /// `ping` the database (probe, start-up check).
    pub fn ping(&self) -> Result<(), StoreError> {
        let db = self.coll()?.client().database(&self.dbname);
        self.bounded("ping", async move { db.run_command(doc! { "ping": 1 }).await }).map(|_| ())
    }
}

impl Store for MongoStore {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn health(&self) -> Health {
        self.news.get()
    }

    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError> {
        let key = object_key(ty, id);
        let replacement = doc! { "_id": key.as_str(), "type": ty, "id": id, "json": json };
        // Upsert by _id: PUT replaces the whole object, atomically per document.
        let coll = self.coll()?;
        let fut = coll.replace_one(doc! { "_id": key.as_str() }, replacement).upsert(true);
        self.bounded("replace", async move { fut.await }).map(|_| ())
    }

    fn get(&self, ty: &str, id: &str) -> Result<Option<String>, StoreError> {
        let coll = self.coll()?;
        let fut = coll.find_one(doc! { "_id": object_key(ty, id) });
        match self.bounded("find", async move { fut.await })? {
            None => Ok(None),
            Some(d) => match d.get_str("json") {
                Ok(s) => Ok(Some(s.to_string())),
                // Not written by this layout: refuse rather than guess.
                Err(_) => Err(StoreError::Failed(format!(
                    "document {} has no string field \"json\"",
                    object_key(ty, id)
                ))),
            },
        }
    }

    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError> {
        let coll = self.coll()?;
        let fut = coll.delete_one(doc! { "_id": object_key(ty, id) });
        self.bounded("delete", async move { fut.await }).map(|r| r.deleted_count > 0)
    }
}

/// Server error codes that mean "not available right now" (shutting down,
/// stepping down, interrupted), which deserve 503 like a network error.
const UNAVAILABLE_CODES: &[i32] = &[6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436];

/// 503 for everything that is about reaching the database; 500 for a server
/// that answered with a real error.
fn classify(e: &mongodb::error::Error) -> StoreError {
    let text = one_line(&e.to_string());
    match &*e.kind {
        ErrorKind::Command(c) if !UNAVAILABLE_CODES.contains(&c.code) => StoreError::Failed(text),
        ErrorKind::Write(_)
        | ErrorKind::InsertMany(_)
        | ErrorKind::BulkWrite(_)
        | ErrorKind::BsonDeserialization(_)
        | ErrorKind::BsonSerialization(_)
        | ErrorKind::InvalidArgument { .. } => StoreError::Failed(text),
        _ => StoreError::Unavailable(text),
    }
}

/// Driver messages may span lines; reports and logs want one.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
