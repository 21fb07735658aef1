//! The master process: a pure state machine ([`state`]) and the poll loop
//! ([`event_loop`]) that feeds it events and carries out its actions.

pub mod event_loop;
pub mod state;
