//! Sessions: creation, the session lifecycle, approvals, events, terminal output, usage,
//! and the timers (timeout, approval expiry, purge). Every rule runs inside one store write job,
//! so each change is atomic and durable before it is acknowledged.

pub mod model;
pub mod sweeper;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::audit;
use crate::auth::{Principal, TokenKind};
use crate::clock::{Millis, SharedClock, SharedIds, format_ms, ms};
use crate::config::SessionsConfig;
use crate::error::{Conflict, ConflictDetails, DomainError, DomainResult, Entity, Limit};
use crate::events::model::{BusEvent, DomainEvent, SessionEventData};
use crate::events::render;
use crate::paging::{Page, PageRequest};
use crate::runners::model::RunnerCommand;
use crate::store::{ReadTxn, Store, WriteTxn};
use model::*;
use model::{Timer, TimerKind};

/// Events kept in a session detail's `recentEvents`.
pub const RECENT_EVENTS: usize = 20;
pub const MAX_TASK_BYTES: usize = 64 * 1024;
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
pub const MAX_ENV_ENTRIES: usize = 64;
pub const MAX_PAGE_LIMIT: u64 = 1000;

/// A session with what its detail view shows besides the record.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub session: Session,
    pub recent_events: Vec<SessionEvent>,
    pub pending_approvals: Vec<Approval>,
}

/// A create request after its shape was checked.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub org_id: Option<String>,
    pub provider: Provider,
    pub repo: Repo,
    pub task: Option<String>,
    pub options: SessionOptions,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub org_id: Option<String>,
    pub state: Option<SessionState>,
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageUpdate {
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub api_calls: Option<u64>,
    pub compute_seconds: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct NewApproval {
    pub action: ApprovalAction,
    pub description: String,
    pub context: Option<Value>,
}

/// What a caller wants to do with a session; decides which token kinds may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read it: its org, admin, or its assigned runner.
    Read,
    /// Manage it (stop, pause, resolve…): its org or admin.
    Manage,
    /// Report as its runner, naming the assignment it holds: the assigned runner or admin.
    Runner(Option<Uuid>),
}

/// Checks the caller's kind, then whether the session is visible to it. A session of another
/// org, or one a runner never held, is "not found": nothing about it leaks.
fn authorize(p: &Principal, session: &Session, access: Access) -> DomainResult<()> {
    if let Access::Runner(assignment) = access {
        return authorize_runner(p, session, assignment);
    }
    let kind_allowed = match p.kind {
        TokenKind::Admin => return Ok(()),
        TokenKind::Org => true,
        TokenKind::Runner => access == Access::Read,
        TokenKind::RunnerJoin => false,
    };
    if !kind_allowed {
        return Err(DomainError::forbidden(
            "this token kind may not do that to a session",
        ));
    }
    let visible = match p.kind {
        TokenKind::Org => p.sees_org(&session.org_id),
        TokenKind::Runner => p.runner_id.is_some() && p.runner_id == session.runner_id,
        _ => false,
    };
    if visible {
        Ok(())
    } else {
        Err(DomainError::NotFound(Entity::Session))
    }
}

/// A runner report must come from the session's runner under its current assignment. A runner
/// that held the session before is told its assignment is stale; one that never held it gets
/// not-found. Admin may act as any runner, and is fenced too when it names an assignment.
fn authorize_runner(p: &Principal, s: &Session, assignment: Option<Uuid>) -> DomainResult<()> {
    let stale = || {
        DomainError::conflict(
            Conflict::StaleAssignment,
            "this assignment is no longer the session's current one",
        )
    };
    match p.kind {
        TokenKind::Admin => match assignment {
            Some(a) if s.assignment_id != Some(a) => Err(stale()),
            _ => Ok(()),
        },
        TokenKind::Runner => {
            let me = p.runner_id;
            if me.is_some() && s.runner_id == me {
                match assignment {
                    None => Err(DomainError::invalid("assignmentId", "is required")),
                    Some(a) if s.assignment_id == Some(a) => Ok(()),
                    Some(_) => Err(stale()),
                }
            } else if me.is_some_and(|r| s.runner_history.contains(&r)) {
                Err(stale())
            } else {
                Err(DomainError::NotFound(Entity::Session))
            }
        }
        _ => Err(DomainError::forbidden(
            "only the session's runner may report for it",
        )),
    }
}

fn load(w: &dyn ReadTxn, p: &Principal, id: Uuid, access: Access) -> DomainResult<Session> {
    let session = w
        .get_session(id)?
        .ok_or(DomainError::NotFound(Entity::Session))?;
    authorize(p, &session, access)?;
    Ok(session)
}

fn view(r: &dyn ReadTxn, session: Session) -> DomainResult<SessionView> {
    let recent_events = r.recent_events(session.id, RECENT_EVENTS)?;
    let pending_approvals = r
        .approvals(session.id)?
        .into_iter()
        .filter(|a| a.resolution.is_none())
        .collect();
    Ok(SessionView {
        session,
        recent_events,
        pending_approvals,
    })
}

/// The rules, with the clock and limits they need. Cheap to clone.
#[derive(Clone)]
pub struct SessionService {
    store: Store,
    clock: SharedClock,
    ids: SharedIds,
    rules: Rules,
}

/// The configuration values the rules read, copied into each write job.
#[derive(Debug, Clone, Copy)]
struct Rules {
    max_sessions_per_org: u64,
    default_timeout_ms: i64,
    ttl_ms: i64,
    approval_timeout_ms: i64,
}

impl SessionService {
    pub fn new(store: Store, clock: SharedClock, ids: SharedIds, cfg: &SessionsConfig) -> Self {
        Self {
            store,
            clock,
            ids,
            rules: Rules {
                max_sessions_per_org: cfg.max_sessions_per_org,
                default_timeout_ms: ms(cfg.default_timeout),
                ttl_ms: ms(cfg.session_data_ttl),
                approval_timeout_ms: ms(cfg.approval_timeout),
            },
        }
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub async fn create(&self, p: &Principal, new: NewSession) -> DomainResult<SessionView> {
        p.require_org_or_admin()?;
        let org_id = p.resolve_org(new.org_id.as_deref(), "orgId")?;
        let now = self.now();
        let id = self.ids.ordered_uuid(now);
        let rules = self.rules;
        let timeout_ms = new
            .options
            .timeout_minutes
            .map(|m| (m * 60_000.0).round() as i64)
            .unwrap_or(rules.default_timeout_ms);
        let mut session = Session {
            id,
            org_id,
            provider: new.provider,
            repo: new.repo,
            task: new.task,
            options: new.options,
            state: SessionState::Created,
            created_at: now,
            started_running_at: None,
            completed_at: None,
            end_reason: None,
            error: None,
            runner_id: None,
            assignment_id: None,
            assigned_at: None,
            runner_history: Vec::new(),
            usage: Usage::default(),
            timeout_ms,
            output_bytes: 0,
            workspace_size_bytes: None,
            updated_at: now,
        };
        // Everything that does not depend on the database is prepared here, not on the store's
        // single writer thread, which every write in the server waits for.
        let created_summary = format!("Session created for {}", session.repo.url);
        let created = SessionEventData::Created {
            provider: session.provider,
            repo_url: session.repo.url.clone(),
        };
        let created_json = render::timeline_data_json(&created);
        let audit_entry = audit::entry(p, "session.create", id, Some(&session.org_id), now);
        self.store
            .write(move |w| {
                let active = w.active_sessions_of(&session.org_id)?;
                if active >= rules.max_sessions_per_org {
                    return Err(DomainError::LimitExceeded {
                        kind: Limit::Sessions,
                        message: format!(
                            "org {} already has {active} active sessions (limit {})",
                            session.org_id, rules.max_sessions_per_org
                        ),
                    });
                }
                w.begin_session_events(session.id);
                record_rendered(w, &session, created, created_json, created_summary, now)?;
                change_state(
                    w,
                    &mut session,
                    SessionState::Queued,
                    Cause::Server,
                    now,
                    rules,
                )?;
                w.put_session(&session)?;
                w.append_audit(audit_entry)?;
                // A new session has no approvals yet, and no events but those just recorded.
                let mut recent_events = w.followed_events();
                recent_events.drain(..recent_events.len().saturating_sub(RECENT_EVENTS));
                Ok(SessionView {
                    recent_events,
                    session,
                    pending_approvals: Vec::new(),
                })
            })
            .await
    }

    pub async fn get(&self, p: &Principal, id: Uuid) -> DomainResult<SessionView> {
        let p = p.clone();
        self.store
            .read(move |r| {
                let session = load(r, &p, id, Access::Read)?;
                view(r, session)
            })
            .await
    }

    /// A session as its runner is handed it (no access check: the caller already decided).
    pub async fn view_for_runner(&self, id: Uuid) -> DomainResult<Option<SessionView>> {
        self.store
            .read(move |r| match r.get_session(id)? {
                Some(s) => view(r, s).map(Some),
                None => Ok(None),
            })
            .await
    }

    pub async fn list(
        &self,
        p: &Principal,
        filter: SessionFilter,
        page: PageRequest,
    ) -> DomainResult<Page<Session>> {
        p.require_org_or_admin()?;
        let org_id = p.resolve_org(filter.org_id.as_deref(), "orgId")?;
        self.store
            .read(move |r| {
                let all: Vec<Session> = r
                    .org_sessions(&org_id)?
                    .into_iter()
                    .filter(|s| filter.state.is_none_or(|st| s.state == st))
                    .filter(|s| filter.provider.is_none_or(|pr| s.provider == pr))
                    .collect();
                Ok(page.slice(all))
            })
            .await
    }

    /// Runs `f` on a session the caller may act on, then stores the session and returns its view.
    async fn update<F>(
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

    pub async fn resume(&self, p: &Principal, id: Uuid) -> DomainResult<SessionView> {
        self.update(
            p,
            id,
            Access::Manage,
            Some("session.resume"),
            |w, s, now, rules| {
                if s.state != SessionState::PausedByHuman {
                    return Err(DomainError::invalid_state(format!(
                        "only a PAUSED_BY_HUMAN session can be resumed; this one is {}",
                        s.state.as_str()
                    )));
                }
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
            move |_, s, _, _| {
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
                Ok(())
            },
        )
        .await
    }

    pub async fn request_approval(
        &self,
        p: &Principal,
        id: Uuid,
        assignment: Option<Uuid>,
        req: NewApproval,
    ) -> DomainResult<Approval> {
        let p = p.clone();
        let now = self.now();
        let rules = self.rules;
        let approval_id = self.ids.ordered_uuid(now);
        self.store
            .write(move |w| {
                let mut s = load(w, &p, id, Access::Runner(assignment))?;
                if !matches!(
                    s.state,
                    SessionState::Running | SessionState::WaitingForApproval
                ) {
                    return Err(DomainError::invalid_state(format!(
                        "approvals can be requested while RUNNING or WAITING_FOR_APPROVAL; the session is {}",
                        s.state.as_str()
                    )));
                }
                let approval = Approval {
                    id: approval_id,
                    seq: w.approvals(s.id)?.len() as u64 + 1,
                    session_id: s.id,
                    action: req.action,
                    description: req.description,
                    context_json: req.context.map(|c| c.to_string()),
                    requested_at: now,
                    expires_at: now.saturating_add(rules.approval_timeout_ms),
                    resolution: None,
                };
                w.put_approval(&approval)?;
                w.set_timer(Timer {
                    due: approval.expires_at,
                    kind: TimerKind::ApprovalExpiry,
                    session_id: s.id,
                    other_id: approval.id,
                })?;
                record(
                    w,
                    &s,
                    SessionEventData::ApprovalRequested {
                        approval_id: approval.id,
                        action: approval.action,
                        description: approval.description.clone(),
                        context_json: approval.context_json.clone(),
                        requested_at: approval.requested_at,
                        expires_at: approval.expires_at,
                    },
                    format!("Approval requested: {} — {}", approval.action.as_str(), approval.description),
                    now,
                )?;
                if s.state == SessionState::Running {
                    change_state(w, &mut s, SessionState::WaitingForApproval, Cause::Approval, now, rules)?;
                }
                s.updated_at = now;
                w.put_session(&s)?;
                audit::record(w, &p, "approval.request", approval.id, Some(&s.org_id), now)?;
                Ok(approval)
            })
            .await
    }

    pub async fn approvals(&self, p: &Principal, id: Uuid) -> DomainResult<Vec<Approval>> {
        let p = p.clone();
        self.store
            .read(move |r| {
                load(r, &p, id, Access::Read)?;
                Ok(r.approvals(id)?)
            })
            .await
    }

    pub async fn resolve_approval(
        &self,
        p: &Principal,
        id: Uuid,
        approval_id: Uuid,
        decision: Decision,
        reason: Option<String>,
    ) -> DomainResult<SessionView> {
        let by = p.actor();
        self.update(
            p,
            id,
            Access::Manage,
            Some("approval.resolve"),
            move |w, s, now, rules| {
                let approval = w
                    .get_approval(s.id, approval_id)?
                    .ok_or(DomainError::NotFound(Entity::Approval))?;
                if approval.resolution.is_some() {
                    return Err(DomainError::conflict(
                        Conflict::ApprovalAlreadyResolved,
                        "this approval was already resolved",
                    ));
                }
                resolve(w, s, approval, decision, reason, by, now, rules)
            },
        )
        .await
    }

    pub async fn events(
        &self,
        p: &Principal,
        id: Uuid,
        after: u64,
        limit: u64,
    ) -> DomainResult<Vec<SessionEvent>> {
        let p = p.clone();
        self.store
            .read(move |r| {
                load(r, &p, id, Access::Manage)?;
                Ok(r.events_after(id, after, limit as usize)?)
            })
            .await
    }

    pub async fn output(
        &self,
        p: &Principal,
        id: Uuid,
        after: u64,
        limit: u64,
    ) -> DomainResult<Vec<OutputChunk>> {
        let p = p.clone();
        self.store
            .read(move |r| {
                load(r, &p, id, Access::Manage)?;
                Ok(r.output_after(id, after, limit as usize)?)
            })
            .await
    }

    /// Keystrokes from a person watching the session, for its runner (dashboard stream).
    pub async fn terminal_input(&self, p: &Principal, id: Uuid, data: String) -> DomainResult<()> {
        let p = p.clone();
        let now = self.now();
        self.store
            .write(move |w| {
                let s = load(w, &p, id, Access::Manage)?;
                let Some(runner) = s.runner_id.filter(|_| s.state.is_started()) else {
                    return Err(DomainError::invalid_state(format!(
                        "input reaches a running session's runner; the session is {}",
                        s.state.as_str()
                    )));
                };
                w.enqueue_command(
                    runner,
                    RunnerCommand::TerminalInput {
                        session_id: id,
                        data,
                    },
                    now,
                )?;
                // Who typed, not what: keystrokes may hold secrets.
                audit::record(w, &p, "session.terminal_input", id, Some(&s.org_id), now)?;
                Ok(())
            })
            .await
    }

    /// Stores a chunk of terminal output exactly once. `offset` (bytes the runner sent before
    /// this chunk) makes retries safe: an exact repeat answers the stored chunk's seq; a gap or
    /// overlap is refused with the offset the server holds.
    pub async fn append_output(
        &self,
        p: &Principal,
        id: Uuid,
        assignment: Option<Uuid>,
        stream: OutputStream,
        data: String,
        offset: Option<u64>,
    ) -> DomainResult<u64> {
        let p = p.clone();
        let now = self.now();
        self.store
            .write(move |w| {
                let s = load(w, &p, id, Access::Runner(assignment))?;
                if !s.state.is_started() {
                    return Err(DomainError::invalid_state(format!(
                        "output is accepted while the session runs; it is {}",
                        s.state.as_str()
                    )));
                }
                // What is stored ends where the last chunk ends: no session rewrite per chunk.
                let last = w.find_output_back(id, &mut |_| true)?;
                let held = last.as_ref().map_or(0, |c| c.offset + c.data.len() as u64);
                let len = data.len() as u64;
                match offset {
                    Some(o) if o == held => {}
                    None => {}
                    Some(o) if o < held && o + len <= held => {
                        let repeat = w.find_output_back(id, &mut |c| c.offset <= o)?;
                        return match repeat {
                            Some(c) if c.offset == o && c.data == data && c.stream == stream => {
                                Ok(c.seq)
                            }
                            _ => Err(offset_mismatch(held)),
                        };
                    }
                    Some(_) => return Err(offset_mismatch(held)),
                }
                let chunk = OutputChunk {
                    seq: last.as_ref().map_or(0, |c| c.seq) + 1,
                    stream,
                    data,
                    at: now,
                    offset: held,
                };
                w.put_output(id, &chunk)?;
                let seq = chunk.seq;
                w.emit(BusEvent::new(
                    now,
                    Some(s.org_id.clone()),
                    Some(id),
                    DomainEvent::TerminalOutput(Arc::new(chunk)),
                ));
                Ok(seq)
            })
            .await
    }

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

fn offset_mismatch(held: u64) -> DomainError {
    DomainError::Conflict {
        kind: Conflict::OutputOffsetMismatch,
        message: format!("output offset does not match; the server holds {held} bytes"),
        details: Some(ConflictDetails::OutputOffset { held }),
    }
}

/// Records a session event in its timeline and publishes it on the bus.
fn record(
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
fn record_rendered(
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
fn change_state(
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
    }
    if let Some(runner) = s.runner_id {
        let command = match (cause, to) {
            (Cause::Human, SessionState::PausedByHuman) => {
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
    if to.is_terminal() {
        s.completed_at = Some(now);
        if s.started_running_at.is_some() {
            w.clear_timer(timeout_timer(s))?;
        }
        for approval in w.approvals(s.id)? {
            if approval.resolution.is_none() {
                close_approval(
                    w,
                    s,
                    approval,
                    Decision::Deny,
                    Some("session ended".into()),
                    "system".into(),
                    now,
                )?;
            }
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
            },
            summary,
            now,
        )?;
    }
    Ok(())
}

fn timeout_timer(s: &Session) -> Timer {
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

/// Marks one approval resolved (no session state change).
fn close_approval(
    w: &mut dyn WriteTxn,
    s: &Session,
    mut approval: Approval,
    decision: Decision,
    reason: Option<String>,
    by: String,
    now: Millis,
) -> DomainResult<()> {
    w.clear_timer(Timer {
        due: approval.expires_at,
        kind: TimerKind::ApprovalExpiry,
        session_id: s.id,
        other_id: approval.id,
    })?;
    approval.resolution = Some(Resolution {
        decision,
        reason: reason.clone(),
        resolved_at: now,
        resolved_by: by.clone(),
    });
    w.put_approval(&approval)?;
    if let (Some(runner), false) = (s.runner_id, s.state.is_terminal()) {
        w.enqueue_command(
            runner,
            RunnerCommand::ApprovalResolved {
                session_id: s.id,
                approval_id: approval.id,
                decision,
                reason: reason.clone(),
            },
            now,
        )?;
    }
    record(
        w,
        s,
        SessionEventData::ApprovalResolved {
            approval_id: approval.id,
            decision,
            reason,
            resolved_by: by,
        },
        format!(
            "Approval {}: {}",
            approval.action.as_str(),
            decision.as_str()
        ),
        now,
    )
}

/// Resolves an approval; when none is left pending the session returns to RUNNING.
#[allow(clippy::too_many_arguments)]
fn resolve(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    approval: Approval,
    decision: Decision,
    reason: Option<String>,
    by: String,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let approval_id = approval.id;
    close_approval(w, s, approval, decision, reason, by, now)?;
    let still_pending = w
        .approvals(s.id)?
        .iter()
        .any(|a| a.id != approval_id && a.resolution.is_none());
    if !still_pending && s.state == SessionState::WaitingForApproval {
        change_state(w, s, SessionState::Running, Cause::Approval, now, rules)?;
    }
    Ok(())
}

/// What a due timer does. A timer whose condition no longer holds does nothing.
fn fire(w: &mut dyn WriteTxn, timer: Timer, now: Millis, rules: Rules) -> DomainResult<()> {
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
                    Decision::Deny,
                    Some("expired".into()),
                    "system".into(),
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

/// How long a runner has to confirm an assignment (`session_state RUNNING` or `FAILED`).
pub const ASSIGNMENT_CONFIRM_MS: i64 = 30_000;

fn lapse_timer(session: Uuid, assigned_at: Millis, assignment: Uuid) -> Timer {
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
fn unassign(w: &mut dyn WriteTxn, s: &mut Session, why: &str, now: Millis) -> DomainResult<()> {
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

fn release_runner_sessions(
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

/// Environment keys with their values hidden, as every API answer shows them.
pub fn masked_env(env: &BTreeMap<String, String>) -> BTreeMap<String, &'static str> {
    env.keys().map(|k| (k.clone(), "***")).collect()
}

pub fn timestamp(ms: Millis) -> String {
    format_ms(ms)
}
