//! Assignment: a queued session given to a runner under a fencing `assignmentId`, confirmed by
//! the runner or lapsing back to the queue, and the sessions of a runner that is gone.

use super::*;

/// How long a runner has to confirm an assignment (`session_state RUNNING` or `FAILED`).
pub const ASSIGNMENT_CONFIRM_MS: i64 = 30_000;

pub(super) fn lapse_timer(session: Uuid, assigned_at: Millis, assignment: Uuid) -> Timer {
    Timer {
        due: assigned_at + ASSIGNMENT_CONFIRM_MS,
        kind: TimerKind::AssignmentLapse,
        session_id: session,
        other_id: assignment,
    }
}

/// Gives a QUEUED session to a runner under a new assignment (the scheduler's decision).
pub fn assign(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    runner: Uuid,
    assignment: Uuid,
    now: Millis,
) -> DomainResult<()> {
    if !s.is_unassigned_queued() {
        return Err(DomainError::invalid_state(
            "only a queued, unassigned session can be assigned",
        ));
    }
    s.runner_id = Some(runner);
    s.assignment_id = Some(assignment);
    s.assigned_at = Some(now);
    if !s.runner_history.contains(&runner) {
        s.runner_history.push(runner);
    }
    s.updated_at = now;
    w.set_timer(lapse_timer(s.id, now, assignment))?;
    w.enqueue_command(
        runner,
        RunnerCommand::AssignSession {
            session_id: s.id,
            assignment_id: assignment,
        },
        now,
    )?;
    record(
        w,
        s,
        SessionEventData::Assigned {
            runner_id: runner,
            assignment_id: assignment,
        },
        format!("Assigned to runner {runner}"),
        now,
    )?;
    w.put_session(s)?;
    Ok(())
}

/// Takes a QUEUED session back from its runner; it waits for the next one.
pub(super) fn unassign(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    why: &str,
    now: Millis,
) -> DomainResult<()> {
    let Some(runner) = s.runner_id else {
        return Ok(());
    };
    if let (Some(at), Some(a)) = (s.assigned_at, s.assignment_id) {
        w.clear_timer(lapse_timer(s.id, at, a))?;
    }
    w.remove_commands(runner, &mut |e| {
        matches!(e.command, RunnerCommand::AssignSession { session_id, .. } if session_id == s.id)
    })?;
    s.runner_id = None;
    s.assignment_id = None;
    s.assigned_at = None;
    s.updated_at = now;
    record(
        w,
        s,
        SessionEventData::Requeued {
            runner_id: runner,
            reason: why.to_owned(),
        },
        format!("Back in the queue: {why}"),
        now,
    )
}

/// Why a runner's sessions are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Silent past `runners.lostAfterMs`.
    Lost,
    /// Deregistered with `?force=true`.
    Deregistered,
}

impl SessionService {
    /// Sessions of a runner that is gone: those not started go back to the queue, started ones
    /// fail. Runs inside the caller's write job.
    pub fn release_runner_sessions(
        &self,
        w: &mut dyn WriteTxn,
        runner: Uuid,
        why: Release,
        now: Millis,
    ) -> DomainResult<()> {
        release_runner_sessions(w, runner, why, now, self.rules)
    }
}

pub(super) fn release_runner_sessions(
    w: &mut dyn WriteTxn,
    runner: Uuid,
    why: Release,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let (reason, label) = match why {
        Release::Lost => ("runner_lost", "runner lost"),
        Release::Deregistered => ("runner_deregistered", "runner deregistered"),
    };
    for id in w.runner_sessions(runner)? {
        let Some(mut s) = w.get_session(id)? else {
            continue;
        };
        if s.state == SessionState::Queued {
            unassign(w, &mut s, label, now)?;
        } else if s.state.is_started() {
            s.end_reason = Some(reason.into());
            s.updated_at = now;
            change_state(w, &mut s, SessionState::Failed, Cause::Server, now, rules)?;
        } else {
            continue;
        }
        w.put_session(&s)?;
    }
    Ok(())
}

/// Reads a session as its runner is handed it.
fn runner_view(
    session_id: Uuid,
) -> impl Fn(&dyn ReadTxn) -> DomainResult<Option<SessionView>> + Copy + Send + 'static {
    move |r| match r.get_session(session_id)? {
        Some(s) => view(r, s).map(Some),
        None => Ok(None),
    }
}

impl SessionService {
    /// `assignment_to_send` when it can answer without waiting for anything: the session while
    /// the assignment holds. `None` when it moved on or the database is being reopened; the
    /// caller then goes through `assignment_to_send`, which withdraws the command or waits.
    pub fn assignment_now(&self, session_id: Uuid, assignment_id: Uuid) -> Option<SessionView> {
        let current = self
            .store
            .read_here(runner_view(session_id))?
            .ok()
            .flatten()?;
        current
            .session
            .holds_assignment(assignment_id)
            .then_some(current)
    }

    /// The session an `assign_session` command hands over, while that assignment still holds.
    /// An assignment whose session moved on (stopped, re-queued, given to another runner) is
    /// withdrawn from the runner's outbox instead, and nothing is sent: `None`.
    pub async fn assignment_to_send(
        &self,
        runner: Uuid,
        message_id: Uuid,
        session_id: Uuid,
        assignment_id: Uuid,
    ) -> DomainResult<Option<SessionView>> {
        // Read here rather than on the blocking pool: the session was committed a moment ago,
        // and the assignment is the latency that counts (`Store::read_here`).
        let find = runner_view(session_id);
        let current = match self.store.read_here(find) {
            Some(read) => read?,
            None => self.store.read(find).await?,
        };
        if let Some(v) = current
            && v.session.holds_assignment(assignment_id)
        {
            return Ok(Some(v));
        }
        self.store
            .write(move |w| {
                w.remove_command(runner, message_id)?;
                Ok::<_, DomainError>(())
            })
            .await?;
        Ok(None)
    }
}
