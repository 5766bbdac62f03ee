//! The session lifecycle: the one way a session changes state (`change_state`), the calls that
//! move it (stop, pause, resume, the runner's state reports, usage), and the timeline records
//! every change leaves.

use super::*;

impl SessionService {
    /// Runs `f` on a session the caller may act on, then stores the session and returns its view.
    pub(super) async fn update<F>(
        &self,
        p: &Principal,
        id: Uuid,
        access: Access,
        action: Option<&'static str>,
        f: F,
    ) -> DomainResult<SessionView>
    where
        F: FnOnce(&mut dyn WriteTxn, &mut Session, Millis, Rules) -> DomainResult<()>
            + Send
            + 'static,
    {
        let p = p.clone();
        let now = self.now();
        let rules = self.rules;
        self.store
            .write(move |w| {
                let mut session = load(w, &p, id, access)?;
                f(w, &mut session, now, rules)?;
                session.updated_at = now;
                w.put_session(&session)?;
                if let Some(action) = action {
                    audit::record(w, &p, action, session.id, Some(&session.org_id), now)?;
                }
                view(w, session)
            })
            .await
    }

    pub async fn stop(
        &self,
        p: &Principal,
        id: Uuid,
        reason: Option<String>,
    ) -> DomainResult<SessionView> {
        self.update(
            p,
            id,
            Access::Manage,
            Some("session.stop"),
            move |w, s, now, rules| {
                if s.state.is_terminal() {
                    return Err(DomainError::conflict(
                        Conflict::SessionAlreadyStopped,
                        format!("session is already {}", s.state.as_str()),
                    ));
                }
                s.end_reason = Some(format!(
                    "stopped: {}",
                    reason.as_deref().unwrap_or("requested")
                ));
                change_state(w, s, SessionState::Completed, Cause::Human, now, rules)
            },
        )
        .await
    }

    pub async fn pause(&self, p: &Principal, id: Uuid) -> DomainResult<SessionView> {
        self.update(
            p,
            id,
            Access::Manage,
            Some("session.pause"),
            |w, s, now, rules| {
                change_state(w, s, SessionState::PausedByHuman, Cause::Human, now, rules)
            },
        )
        .await
    }

    /// Resumes a paused session. Over a budget limit it is refused unless an admin `force`s it.
    pub async fn resume(&self, p: &Principal, id: Uuid, force: bool) -> DomainResult<SessionView> {
        let who = p.clone();
        self.update(
            p,
            id,
            Access::Manage,
            Some("session.resume"),
            move |w, s, now, rules| {
                if s.state != SessionState::PausedByHuman {
                    return Err(DomainError::invalid_state(format!(
                        "only a PAUSED_BY_HUMAN session can be resumed; this one is {}",
                        s.state.as_str()
                    )));
                }
                budget::before_resume(w, &who, s, force, now)?;
                change_state(w, s, SessionState::Running, Cause::Human, now, rules)
            },
        )
        .await
    }

    /// A runner's state report.
    pub async fn report_state(
        &self,
        p: &Principal,
        id: Uuid,
        assignment: Option<Uuid>,
        state: SessionState,
        error: Option<String>,
    ) -> DomainResult<SessionView> {
        self.update(
            p,
            id,
            Access::Runner(assignment),
            Some("session.state"),
            move |w, s, now, rules| {
                if state == SessionState::Failed
                    && s.state == SessionState::Queued
                    && s.runner_id.is_none()
                {
                    return Err(DomainError::invalid_state(
                        "a queued session can be failed only by the runner it was assigned to",
                    ));
                }
                if state == SessionState::Failed {
                    s.error = error.clone();
                    s.end_reason = Some(match &error {
                        Some(e) => format!("failed: {e}"),
                        None => "failed".into(),
                    });
                }
                change_state(w, s, state, Cause::RunnerReport, now, rules)
            },
        )
        .await
    }

    pub async fn update_usage(
        &self,
        p: &Principal,
        id: Uuid,
        assignment: Option<Uuid>,
        u: UsageUpdate,
    ) -> DomainResult<SessionView> {
        self.update(
            p,
            id,
            Access::Runner(assignment),
            None,
            move |w, s, now, rules| {
                let before = s.usage.clone();
                if let Some(v) = u.tokens_in {
                    s.usage.tokens_in = v;
                }
                if let Some(v) = u.tokens_out {
                    s.usage.tokens_out = v;
                }
                if let Some(v) = u.api_calls {
                    s.usage.api_calls = v;
                }
                if let Some(v) = u.compute_seconds {
                    s.usage.compute_seconds = v;
                }
                if let Some(v) = u.cost_usd {
                    s.usage.cost_usd = v;
                }
                budget::usage_reported(w, s, &before, now, rules)
            },
        )
        .await
    }
}

/// Records a session event in its timeline and publishes it on the bus.
pub(super) fn record(
    w: &mut dyn WriteTxn,
    s: &Session,
    event: SessionEventData,
    summary: String,
    now: Millis,
) -> DomainResult<()> {
    let data_json = render::timeline_data_json(&event);
    record_rendered(w, s, event, data_json, summary, now)
}

/// `record` with the event's timeline data already rendered (off the writer thread).
pub(super) fn record_rendered(
    w: &mut dyn WriteTxn,
    s: &Session,
    event: SessionEventData,
    data_json: String,
    summary: String,
    now: Millis,
) -> DomainResult<()> {
    w.append_event(s.id, event.name(), summary, now, Some(data_json))?;
    // The session and org travel in the event's own fields, not in its data.
    w.emit(BusEvent::new(
        now,
        Some(s.org_id.clone()),
        Some(s.id),
        DomainEvent::Session(event),
    ));
    Ok(())
}

/// The one way a session changes state: checks the transition, records it, and applies what
/// follows from it (timeout timer, approvals closed, purge timer).
pub(super) fn change_state(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    to: SessionState,
    cause: Cause,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let from = s.state;
    if !transition_allowed(from, to, cause) {
        return Err(DomainError::invalid_state(format!(
            "a session cannot go from {} to {}",
            from.as_str(),
            to.as_str()
        )));
    }
    s.state = to;
    record(
        w,
        s,
        SessionEventData::StateChanged { from, to },
        format!("{} → {}", from.as_str(), to.as_str()),
        now,
    )?;
    if from == SessionState::Queued
        && let (Some(at), Some(a)) = (s.assigned_at, s.assignment_id)
    {
        w.clear_timer(lapse_timer(s.id, at, a))?;
    }
    if to == SessionState::Running && s.started_running_at.is_none() {
        s.started_running_at = Some(now);
        w.set_timer(timeout_timer(s))?;
        record(
            w,
            s,
            SessionEventData::Started,
            "Session started".into(),
            now,
        )?;
        budget::count_start(w, s, now)?;
    }
    if let Some(runner) = s.runner_id {
        let command = match (cause, to) {
            (Cause::Human | Cause::Budget, SessionState::PausedByHuman) => {
                Some(RunnerCommand::PauseSession { session_id: s.id })
            }
            (Cause::Human, SessionState::Running) => {
                Some(RunnerCommand::ResumeSession { session_id: s.id })
            }
            (Cause::Human, SessionState::Completed) | (Cause::Server, SessionState::TimedOut) => {
                Some(RunnerCommand::StopSession {
                    session_id: s.id,
                    reason: s
                        .end_reason
                        .clone()
                        .unwrap_or_else(|| to.as_str().to_lowercase()),
                })
            }
            _ => None,
        };
        if let Some(command) = command {
            if from == SessionState::Queued {
                // Never started there: withdraw the assignment instead of stopping it.
                w.remove_commands(runner, &mut |e| {
                    matches!(e.command, RunnerCommand::AssignSession { session_id, .. } if session_id == s.id)
                })?;
            }
            w.enqueue_command(runner, command, now)?;
        }
    }
    if to == SessionState::Running {
        budget::on_running(w, s, now, rules)?;
    }
    if to.is_terminal() {
        budget::on_end(w, s)?;
        s.completed_at = Some(now);
        if s.started_running_at.is_some() {
            w.clear_timer(timeout_timer(s))?;
        }
        for approval in w.pending_approvals(s.id)? {
            close_approval(w, s, approval, Answer::system_deny("session ended"), now)?;
        }
        w.set_timer(Timer {
            due: now.saturating_add(rules.ttl_ms),
            kind: TimerKind::SessionPurge,
            session_id: s.id,
            other_id: Uuid::nil(),
        })?;
        let summary = match to {
            SessionState::Completed => "Session completed".to_string(),
            SessionState::TimedOut => "Session timed out".to_string(),
            _ => "Session failed".to_string(),
        };
        record(
            w,
            s,
            SessionEventData::Ended {
                state: to,
                end_reason: s.end_reason.clone(),
                error: s.error.clone(),
                runner_id: s.runner_id,
                cost_usd: s.usage.cost_usd,
            },
            summary,
            now,
        )?;
    }
    Ok(())
}

pub(super) fn timeout_timer(s: &Session) -> Timer {
    Timer {
        due: s
            .started_running_at
            .unwrap_or(s.created_at)
            .saturating_add(s.timeout_ms),
        kind: TimerKind::SessionTimeout,
        session_id: s.id,
        other_id: Uuid::nil(),
    }
}
