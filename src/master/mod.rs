//! The master process: a pure state machine ([`state`], dispatched through
//! its table, with the restart checks in [`admission`]) and the poll loop
//! ([`event_loop`]) that feeds it events and carries out its actions, with
//! the pieces the loop drives: children ([`child`]), the probe ([`probe`]),
//! the spawn spec ([`spawn_spec`]), the listeners ([`listeners`]), the
//! pidfile ([`pidfile`]), what a config cannot do ([`preflight`]), the workers' sd_notify socket ([`notify_socket`]),
//! what workers leave behind ([`orphans`]), and the in-place upgrade of the
//! master: its hand-over state ([`handover`]) and its steps ([`upgrade`]).

pub mod admission;
pub mod child;
pub mod event_loop;
pub mod handover;
pub mod listeners;
pub mod metrics_file;
pub mod notify_socket;
pub mod orphans;
pub mod pidfile;
pub mod preflight;
pub mod probe;
pub mod spawn_spec;
pub mod state;
pub mod upgrade;
