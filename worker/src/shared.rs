//! What the event loop and the pool threads of the worker share: the driver
//! and the identity `/healthz` reports.
//!
//! Sits between the serving side (`server.rs`, `pool.rs`) and the request
//! logic (`api.rs`), so that the worker's modules import in one direction:
//! main -> server -> pool -> shared -> api -> store. It must not do I/O.

use crate::api::Identity;
use crate::store::Store;
use std::sync::Arc;

pub struct Shared {
    pub store: Arc<dyn Store>,
    pub who: Identity,
    /// Size of the pool (config `threads`).
    pub threads: usize,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>, who: Identity, threads: usize) -> Shared {
        Shared { store, who, threads: threads.max(1) }
    }
}
