//! The master process: a pure state machine ([`state`], with the restart
//! checks in [`admission`]) and the poll loop ([`event_loop`]) that feeds it
//! events and carries out its actions, with the pieces the loop drives:
//! children ([`child`]), the probe ([`probe`]), the spawn spec
//! ([`spawn_spec`]), the listeners ([`listeners`]), the pidfile
//! ([`pidfile`]) and what workers leave behind ([`orphans`]).

pub mod admission;
pub mod child;
pub mod event_loop;
pub mod handover;
pub mod listeners;
pub mod notify_socket;
pub mod orphans;
pub mod pidfile;
pub mod probe;
pub mod upgrade;
pub mod spawn_spec;
pub mod state;
