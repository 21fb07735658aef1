//! The cells of a canary restart (`RESTART CANARY`, `zdrestartctl restart
//! --canary`): its probe passed, one new worker (the canary) starts beside
//! the whole old fleet, soaks, and stands; then `PROMOTE` carries the
//! rollout on (-> Rolling) and `ROLLBACK` stops the canary and leaves the
//! fleet as it was (-> Running, no lockout: nothing failed). `canaryTimeout`
//! does either (`canaryAction`). A canary that dies, errs or hangs fails
//! the restart as any new worker does (abort, lockout). While a canary
//! stands the old fleet is looked after as in Running (an old worker that
//! dies is respawned), and the serving generation is still the old one.

use super::event::{Action, Announce, Event};
use super::progress::{CanaryBy, Progress};
use super::{Master, Phase, RestartRecord};
use crate::config::CanaryAction;
use crate::control::ClientId;
use crate::restart::{Reason, Refused, RestartAnswer};
use crate::status::Outcome;
use std::time::Instant;

impl Master {
    /// The canary passed its soak: both generations serve. `RESTART CANARY
    /// WAIT` is answered; `canaryTimeout` starts.
    pub(super) fn canary_stands(&mut self, now: Instant, out: &mut Vec<Action>) {
        let serving = self.generation;
        let Some(r) = &mut self.rollout else { return };
        r.stood = true;
        r.canary_due = r.config.canary_timeout.map(|t| now + t);
        let waiter = r.waiter.take();
        let (generation, id) = (r.generation, r.new_workers().first().copied().unwrap_or_default());
        let pid = self.workers.get(id).map_or(0, |w| w.pid_or_0());
        self.note(Progress::CanaryStands { id, pid, generation }, out);
        if let Some(client) = waiter {
            out.push(Action::Reply { client, answer: RestartAnswer::CanaryStands });
        }
        let text = self.announce_status(&format!(
            "canary of generation {} stands beside generation {}: promote or rollback",
            generation, serving
        ));
        out.push(Action::Announce(Announce::Ready(text)));
    }

    /// (Canary, Promote): a canary that stands is promoted; one that does
    /// not yet is refused (`no canary`).
    pub(super) fn promote(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Promote { client, wait } = ev else { return };
        let Some(r) = &self.rollout else { return };
        if !r.stood {
            let detail = "the canary has not passed its soak yet (see zdrestartctl status)";
            return self.refuse_canary_command("promote", client, Refused::new(Reason::NoCanary, detail), out);
        }
        self.carry_on(CanaryBy::Operator, Some((client, wait)), now, out);
    }

    /// The rollout carries on to every worker: the canary's generation
    /// serves from now on, -> Rolling.
    fn carry_on(&mut self, by: CanaryBy, client: Option<(ClientId, bool)>, now: Instant, out: &mut Vec<Action>) {
        let Some(r) = &mut self.rollout else { return };
        match client {
            Some((client, true)) => r.waiter = Some(client),
            Some((client, false)) => out.push(Action::Reply { client, answer: RestartAnswer::Accepted }),
            None => {}
        }
        let generation = r.generation;
        self.generation = generation;
        // Respawns of the old generation: the new one replaces them.
        self.pending.clear();
        self.phase = Phase::Rolling;
        self.note(Progress::CanaryPromoted { generation, by }, out);
        let text = self.announce_status(&format!("canary of generation {} promoted: rolling every worker over", generation));
        out.push(Action::Announce(Announce::Reloading(text)));
        let Some(r) = &mut self.rollout else { return };
        let steps = r.promote(&self.workers);
        self.apply(steps, now, out);
    }

    /// (Canary, Rollback): the canary goes, the fleet is as it was.
    pub(super) fn rollback(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Rollback { client } = ev else { return };
        self.roll_back(CanaryBy::Operator, now, out);
        out.push(Action::Reply { client, answer: RestartAnswer::Accepted });
    }

    /// Stop the canary (SIGTERM, SIGKILL after its `shutdownTimeout`), ->
    /// Running: the old generation serves on, no lockout.
    fn roll_back(&mut self, by: CanaryBy, now: Instant, out: &mut Vec<Action>) {
        let Some(r) = self.rollout.take() else { return };
        self.phase = Phase::Running;
        for &id in r.new_workers() {
            self.stop_worker(id, now, out);
        }
        self.note(Progress::CanaryRolledBack { generation: r.generation, by }, out);
        let ms = now.duration_since(r.started).as_millis() as u64;
        self.last_restart = Some(RestartRecord {
            generation: Some(r.generation),
            started_wall: self.last_restart.as_ref().map_or(self.wall, |l| l.started_wall),
            outcome: Outcome::RolledBack,
            reason: Some(format!("canary rolled back ({})", by.as_str())),
            duration_ms: Some(ms),
        });
        if let Some(client) = r.waiter {
            let refused = Refused::new(Reason::RolledBack, format!("before the canary stood ({})", by.as_str()));
            out.push(Action::Reply { client, answer: RestartAnswer::Refused(refused) });
        }
        let text = self.announce_status(&format!("canary of generation {} rolled back", r.generation));
        out.push(Action::Announce(Announce::Ready(text)));
    }

    /// (Canary, Tick): as in Running (the canary's own deadlines fail the
    /// restart, `on_due`), then `canaryTimeout`.
    pub(super) fn tick_in_canary(&mut self, _: Event, now: Instant, out: &mut Vec<Action>) {
        self.expire_all(now, out);
        if self.phase != Phase::Canary {
            return self.pending.retain(|p| p.due > now);
        }
        self.due_respawns(now, out);
        let Some(r) = &self.rollout else { return };
        if r.canary_due.is_some_and(|d| d <= now) {
            match r.config.canary_action {
                CanaryAction::Promote => self.carry_on(CanaryBy::Timeout, None, now, out),
                CanaryAction::Rollback => self.roll_back(CanaryBy::Timeout, now, out),
            }
        }
    }

    /// A `PROMOTE` or `ROLLBACK` refused: logged and answered.
    fn refuse_canary_command(&mut self, what: &str, client: ClientId, refused: Refused, out: &mut Vec<Action>) {
        log::warn!(component = "control", reason = refused.reason.wire(); "{} refused: {}", what, refused);
        out.push(Action::Reply { client, answer: RestartAnswer::Refused(refused) });
    }

    /// (not Canary, Promote or Rollback): nothing to act on (`no canary`,
    /// or `stopping`).
    pub(super) fn no_canary(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let (what, client) = match ev {
            Event::Promote { client, .. } => ("promote", client),
            Event::Rollback { client } => ("rollback", client),
            _ => return,
        };
        let refused = match self.phase {
            Phase::Stopping => Refused::new(Reason::Stopping, ""),
            _ => Refused::new(Reason::NoCanary, "no canary restart in progress"),
        };
        self.refuse_canary_command(what, client, refused, out);
    }
}
