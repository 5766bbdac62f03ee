//! Timers: session timeouts, approval expiry, purge after the retention time and assignment
//! lapses, applied by the sweeper when due.

use super::*;

impl SessionService {
    /// Applies every timer due by now. Returns how many were handled.
    pub async fn sweep(&self) -> DomainResult<usize> {
        let now = self.now();
        let due = self.store.read(move |r| r.due_timers(now, 512)).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let rules = self.rules;
        self.store
            .write(move |w| {
                for timer in &due {
                    // One timer that cannot fire (a state that moved on, a record that no
                    // longer decodes) must not keep every other timer from firing.
                    if let Err(e) = fire(w, *timer, now, rules) {
                        tracing::warn!(error = %e, ?timer, "timer dropped");
                    }
                    w.clear_timer(*timer)?;
                }
                Ok::<_, DomainError>(due.len())
            })
            .await
    }
}

/// What a due timer does. A timer whose condition no longer holds does nothing.
pub(super) fn fire(
    w: &mut dyn WriteTxn,
    timer: Timer,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let Some(mut s) = w.get_session(timer.session_id)? else {
        return Ok(());
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
                w.delete_session(&s)?;
            }
        }
    }
    Ok(())
}
