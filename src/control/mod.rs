//! The control socket of the master (ARCHITECTURE.md, "The control
//! protocol"; zdrestartctl(8)), split by job:
//!
//! - [`wire`]: the line protocol (commands, `ACK`/`NACK`, rendering of the
//!   state machine's typed restart answers); pure.
//! - [`advice`](mod@advice): what a NACK means and what an operator should do, shared by
//!   `zdrestartctl` and `zdrestart --check`; pure.
//! - [`server`]: the non-blocking server inside the master's poll loop, with
//!   its bounds and eviction.
//! - [`bind`]: the race-safe creation and removal of the socket file.
//! - [`handover`](mod@handover): what an upgrade of the master hands over of
//!   the server (its fds and the bytes in flight).
//!
//! It decides nothing about restarts; the master does.

pub mod advice;
pub mod bind;
pub mod handover;
pub mod locate;
pub mod server;
pub mod wire;

pub use advice::{advice, operator_message, reason_key};
pub use handover::{ClientState, ControlState};
pub use server::{ClientId, ControlServer, Limits, MAX_CLIENTS, MAX_LINE, MAX_OUTPUT};
pub use wire::{ack, cmds_answer, nack, parse_answer, render, Answer, Command, ACK_COMPLETE, NACK_UNKNOWN, PROGRESS};
