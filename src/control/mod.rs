//! The control socket of the master (ARCHITECTURE.md, "The control
//! protocol"; zdrestartctl(8)), split by job:
//!
//! - [`wire`]: the line protocol (commands, `ACK`/`NACK`, rendering of the
//!   state machine's typed restart answers); pure.
//! - [`advice`]: what a NACK means and what an operator should do, shared by
//!   `zdrestartctl` and `zdrestart --check`; pure.
//! - [`server`]: the non-blocking server inside the master's poll loop, with
//!   its bounds and eviction.
//! - [`bind`]: the race-safe creation and removal of the socket file.
//!
//! It decides nothing about restarts; the master does.

pub mod advice;
pub mod bind;
pub mod server;
pub mod wire;

pub use advice::{advice, describe, operator_message, reason_key};
pub use server::{ClientId, ControlServer, Limits, IDLE_TIMEOUT, MAX_ACCEPT_PER_CALL, MAX_CLIENTS, MAX_LINE, MAX_OUTPUT, READ_CHUNK};
pub use wire::{
    ack, cmds_answer, nack, parse_answer, parse_command, render, Answer, Command, ACK_COMPLETE, COMMANDS, LINE_END,
    NACK_INVALID_LOGLEVEL, NACK_LINE_TOO_LONG, NACK_MISSING_LOGLEVEL, NACK_TOO_MANY_CLIENTS, NACK_UNKNOWN,
    NACK_UNKNOWN_ARGUMENT,
};
