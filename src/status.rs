//! The `STATUS` report: the typed JSON the master answers (one line after
//! `ACK `), which `zdrestartctl` and `zdrestart --check` deserialize.
//!
//! Owns the field names and the words of the states and outcomes
//! (zdrestartctl(8) documents them). Pure data: the state machine fills it
//! ([`crate::master::state::Master::status`]), nothing here reads the clock
//! or a socket. Readers are lenient: unknown fields are ignored and missing
//! ones take their default, so that an older client reads a newer master.

use serde::{Deserialize, Serialize};

/// What the master is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterState {
    Running,
    /// Running, but not every worker of the current generation is ready
    /// (starting, respawning, or a hung one being replaced): restarts are
    /// refused (`not ready`).
    #[serde(rename = "not ready")]
    NotReady,
    /// A restart is being probed or rolled out.
    Restarting,
    /// A canary restart stands: one new worker beside the old fleet, until
    /// `promote` or `rollback`.
    Canary,
    /// An aborted restart: restarts refused, no respawn.
    Lockout,
    Stopping,
    /// An upgrade of the master: the new binary checks the hand-over
    /// (`lockout` says whether it came from a lockout).
    Upgrading,
    /// Read side only: not reported, or a word this build does not know.
    #[default]
    #[serde(rename = "-", other)]
    Unknown,
}

/// How the last restart went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[serde(rename = "in progress")]
    InProgress,
    Complete,
    Refused,
    Aborted,
    /// A canary restart that was rolled back: the fleet is as it was.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// Read side only: not reported, or a word this build does not know.
    #[default]
    #[serde(rename = "-", other)]
    Unknown,
}

/// A worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Spawned, no `READY=1` yet.
    Starting,
    /// A new worker of a restart that said `READY=1` and serves, within its
    /// `minReady` window: an exit or an error now still aborts the restart.
    Soaking,
    Ready,
    /// Missed its watchdog deadline; replaced (SIGABRT once the replacement
    /// is ready).
    Hung,
    /// Asked to exit (SIGTERM sent).
    Stopping,
    /// Read side only: not reported, or a word this build does not know.
    #[default]
    #[serde(rename = "-", other)]
    Unknown,
}

macro_rules! words {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The word in the JSON and in `zdrestartctl status`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words!(MasterState {
    Running => "running", NotReady => "not ready", Restarting => "restarting", Canary => "canary", Lockout => "lockout",
    Stopping => "stopping", Upgrading => "upgrading", Unknown => "-"
});
words!(Outcome {
    InProgress => "in progress", Complete => "complete", Refused => "refused", Aborted => "aborted",
    RolledBack => "rolled back", Unknown => "-"
});
words!(WorkerState {
    Starting => "starting", Soaking => "soaking", Ready => "ready", Hung => "hung", Stopping => "stopping", Unknown => "-"
});

/// The JSON of `STATUS`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    pub state: MasterState,
    pub generation: u64,
    pub lockout: bool,
    pub magic: u64,
    /// The workers' version: what the probe of the code of the current
    /// generation reported (the version of the code the master started
    /// with until a restart completes).
    pub version: String,
    /// The version of the master itself (its executable: changed by an
    /// upgrade of the master, `zdrestartctl upgrade`).
    pub master_version: String,
    /// Pid of the master.
    pub pid: u32,
    /// When the master started (ISO 8601 UTC).
    pub started: String,
    /// The same, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The master's resident set size (VmRSS), when it could be read.
    pub rss_bytes: Option<u64>,
    /// `workers` of the config the current generation runs with.
    pub workers_configured: u32,
    /// `address:port` the master listens on (bound once, at start).
    pub listen: String,
    pub last_restart: Option<LastRestart>,
    /// Workers found hung (watchdog) since the master started.
    pub workers_hung: u64,
    /// Restarts, upgrades, worker exits and respawns counted since the
    /// master started (`zdrestartctl metrics`).
    pub counters: crate::metrics::Counters,
    pub workers: Vec<WorkerStatus>,
}

/// The last restart in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LastRestart {
    /// None for a refused restart (no generation was started).
    pub generation: Option<u64>,
    pub started: String,
    pub outcome: Outcome,
    /// `reason: detail` of a refused or aborted restart.
    pub reason: Option<String>,
    pub duration_ms: Option<u64>,
}

/// One worker in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    /// None only between the decision to spawn and the fork.
    pub pid: Option<u32>,
    pub generation: u64,
    pub index: u32,
    pub state: WorkerState,
    pub started: String,
    /// The same, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Its resident set size (VmRSS of its process, or of its main process
    /// when it named one), when it could be read.
    pub rss_bytes: Option<u64>,
    /// The worker's last `STATUS=` report (report pipe or sd_notify(3)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its main process when it named another with sd_notify `MAINPID=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    /// The new worker of a canary restart that stands.
    pub canary: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_shape() {
        let s = StatusReport {
            state: MasterState::Running,
            generation: 2,
            lockout: false,
            magic: 1,
            version: "0.1.0".into(),
            master_version: "0.1.1".into(),
            pid: 10,
            started: "2024-01-01T00:00:00.000Z".into(),
            started_unix_ms: 1_704_067_200_000,
            rss_bytes: Some(2_000_000),
            counters: Default::default(),
            workers_configured: 2,
            listen: "127.0.0.1:8080".into(),
            last_restart: Some(LastRestart {
                generation: Some(2),
                started: "2024-01-01T00:01:00.000Z".into(),
                outcome: Outcome::InProgress,
                reason: None,
                duration_ms: Some(1200),
            }),
            workers: vec![WorkerStatus {
                pid: Some(11),
                generation: 2,
                index: 0,
                state: WorkerState::Ready,
                started: "2024-01-01T00:01:00.000Z".into(),
                started_unix_ms: 1_704_067_260_000,
                rss_bytes: None,
                status: Some("serving".into()),
                main_pid: None,
                canary: true,
            }],
            workers_hung: 3,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"state\":\"running\",\"generation\":2,\"lockout\":false,\"magic\":1,"));
        assert!(j.contains(",\"version\":\"0.1.0\",\"master_version\":\"0.1.1\","), "{}", j);
        assert!(j.contains("\"outcome\":\"in progress\"") && j.contains("\"state\":\"ready\""), "{}", j);
        assert!(j.contains("\"workers_hung\":3") && j.contains("\"canary\":true"), "{}", j);
        let back: StatusReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
        for o in [Outcome::InProgress, Outcome::Complete, Outcome::Refused, Outcome::Aborted, Outcome::RolledBack] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o));
        }
        for m in [MasterState::Running, MasterState::NotReady, MasterState::Restarting, MasterState::Canary, MasterState::Lockout, MasterState::Stopping, MasterState::Upgrading] {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m));
        }
        for w in [WorkerState::Starting, WorkerState::Soaking, WorkerState::Ready, WorkerState::Hung, WorkerState::Stopping] {
            assert_eq!(serde_json::to_string(&w).unwrap(), format!("\"{}\"", w));
        }
        // A reader is lenient: missing fields and unknown words are "-".
        let old: StatusReport = serde_json::from_str(r#"{"state":"hibernating","workers":[{"state":"x"}],"new":1}"#).unwrap();
        assert_eq!((old.state, old.workers[0].state, old.last_restart), (MasterState::Unknown, WorkerState::Unknown, None));
        assert_eq!(serde_json::from_str::<StatusReport>("{}").unwrap().state.as_str(), "-");
    }
}
