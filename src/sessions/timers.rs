//! Timers: session timeouts, approval expiry, purge after the retention time and assignment
//! lapses, applied by the sweeper when due.

use super::*;

/// Timers one sweep handles (one write job).
const TIMERS_PER_SWEEP: usize = 512;
/// Rows (output chunks and events) the purges of one sweep may delete: a purge costs the writer
/// a bounded job however long the session's output, and every other write gets its turn between
/// two steps.
pub const PURGE_ROWS_PER_SWEEP: usize = 4096;

impl SessionService {
    /// Applies the timers due by now, up to a bounded amount of work. Returns whether more is
    /// due at once (the sweeper goes on without waiting).
    pub async fn sweep(&self) -> DomainResult<bool> {
        let now = self.now();
        let due = self
            .store
            .read(move |r| r.due_timers(now, TIMERS_PER_SWEEP))
            .await?;
        if due.is_empty() {
            return Ok(false);
        }
        let rules = self.rules;
        self.store
            .write(move |w| {
                let mut purge_budget = PURGE_ROWS_PER_SWEEP;
                let mut unfinished = false;
                for timer in &due {
                    // One timer that cannot fire (a state that moved on, a record that no
                    // longer decodes) must not keep every other timer from firing.
                    match fire(w, *timer, now, rules, &mut purge_budget) {
                        Ok(Fired::Done) => w.clear_timer(*timer)?,
                        // Still due: the next sweep goes on with it.
                        Ok(Fired::Unfinished) => unfinished = true,
                        Err(e) => {
                            tracing::warn!(error = %e, ?timer, "timer dropped");
                            w.clear_timer(*timer)?;
                        }
                    }
                }
                Ok::<_, DomainError>(unfinished || due.len() >= TIMERS_PER_SWEEP)
            })
            .await
    }
}

/// Whether a fired timer is done with.
pub(super) enum Fired {
    Done,
    /// A purge that ran out of this sweep's budget: its timer stays.
    Unfinished,
}

/// What a due timer does. A timer whose condition no longer holds does nothing.
pub(super) fn fire(
    w: &mut dyn WriteTxn,
    timer: Timer,
    now: Millis,
    rules: Rules,
    purge_budget: &mut usize,
) -> DomainResult<Fired> {
    let Some(mut s) = w.get_session(timer.session_id)? else {
        return Ok(Fired::Done);
    };
    match timer.kind {
        TimerKind::SessionTimeout => {
            if s.state.is_started() {
                s.end_reason = Some(format!(
                    "timeout after {} minutes",
                    s.timeout_ms as f64 / 60_000.0
                ));
                change_state(w, &mut s, SessionState::TimedOut, Cause::Server, now, rules)?;
                s.updated_at = now;
                w.put_session(&s)?;
            }
        }
        TimerKind::ApprovalExpiry => {
            if let Some(approval) = w.get_approval(s.id, timer.other_id)?
                && approval.resolution.is_none()
            {
                resolve(
                    w,
                    &mut s,
                    approval,
                    Answer::system_deny("expired"),
                    now,
                    rules,
                )?;
                s.updated_at = now;
                w.put_session(&s)?;
            }
        }
        TimerKind::AssignmentLapse => {
            if s.state == SessionState::Queued && s.assignment_id == Some(timer.other_id) {
                unassign(w, &mut s, "assignment not confirmed in time", now)?;
                w.put_session(&s)?;
            }
        }
        TimerKind::SessionPurge => {
            if s.state.is_terminal() {
                if *purge_budget == 0 {
                    return Ok(Fired::Unfinished);
                }
                let (deleted, gone) = w.purge_session_step(&s, *purge_budget)?;
                *purge_budget -= deleted;
                if !gone {
                    return Ok(Fired::Unfinished);
                }
            }
        }
    }
    Ok(Fired::Done)
}
