//! The control server's part of the hand-over state of an upgrade of the
//! master (`master::handover`): the listener, the socket file's identity
//! and each client with the bytes in flight, as the old image writes them
//! ([`super::ControlServer::handover`]) and the new one adopts them
//! ([`super::ControlServer::adopt`]). Pure data.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What an upgrade of the master hands over of the control server
/// ([`super::ControlServer::handover`], [`super::ControlServer::adopt`]); part of the
/// hand-over state (`master::handover`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlState {
    pub path: PathBuf,
    pub fd: i32,
    /// (device, inode) of the socket file, so that only ours is removed.
    pub ident: (u64, u64),
    pub clients: Vec<ClientState>,
}

/// A connected control client: its fd and the bytes in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientState {
    pub fd: i32,
    /// Read, not yet parsed.
    pub inbuf: Vec<u8>,
    /// Answers not yet written.
    pub out: Vec<u8>,
    pub eof: bool,
}
