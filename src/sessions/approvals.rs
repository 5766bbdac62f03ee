//! Approvals: a runner asks, a human (or the expiry) decides, and the decision goes back to the
//! runner as a command.

use super::*;
use crate::policy::{PolicyDecision, PolicyRequest};

impl SessionService {
    /// A runner asks. A request identical (action, description, context) to one of the
    /// session's approvals that is still pending gets that approval back, unchanged: a
    /// runner that resends a request whose answer it lost with its connection, or an agent
    /// that asks the same thing twice at once, waits for the one decision instead of putting
    /// a second question to the humans.
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
                let context_json = req.context.as_ref().map(|c| c.to_string());
                let pending = w.pending_approvals(s.id)?;
                if let Some(same) = pending.iter().find(|a| {
                    a.resolution.is_none()
                        && a.action == req.action
                        && a.description == req.description
                        && a.context_json == context_json
                }) {
                    return Ok(same.clone());
                }
                let policy = w.approval_policy(&s.org_id)?.unwrap_or_default();
                let verdict = policy.evaluate(&PolicyRequest::new(req.action, req.context.as_ref()));
                let approval = Approval {
                    id: approval_id,
                    seq: w.next_approval_seq(s.id)?,
                    session_id: s.id,
                    action: req.action,
                    description: req.description,
                    context_json,
                    requested_at: now,
                    expires_at: now.saturating_add(rules.approval_timeout_ms),
                    resolution: None,
                };
                let decision = match verdict.decision {
                    PolicyDecision::Allow => Some(Decision::Allow),
                    PolicyDecision::Deny => Some(Decision::Deny),
                    PolicyDecision::Ask => None,
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
                        decided_at_once: decision.is_some(),
                    },
                    format!("Approval requested: {} — {}", approval.action.as_str(), approval.description),
                    now,
                )?;
                audit::record(w, &p, "approval.request", approval.id, Some(&s.org_id), now)?;
                let approval = match decision {
                    // Decided by the org's policy: recorded, audited and sent to the runner like
                    // any decision, and the session never waits.
                    Some(decision) => {
                        let by = verdict.decided_by();
                        let reason = match verdict.rule_id {
                            Some(rule) => format!("rule {rule} of the org's approval policy"),
                            None => "the org's approval policy (its default decision)".to_owned(),
                        };
                        audit::record_as(w, "policy", &by, "approval.resolve", approval.id, Some(&s.org_id), now)?;
                        let answer = Answer {
                            decision,
                            reason: Some(reason),
                            scope: None,
                            by,
                        };
                        close_approval(w, &s, approval.clone(), answer, now)?;
                        w.get_approval(s.id, approval.id)?.unwrap_or(approval)
                    }
                    None => {
                        if s.state == SessionState::Running {
                            change_state(w, &mut s, SessionState::WaitingForApproval, Cause::Approval, now, rules)?;
                        }
                        approval
                    }
                };
                s.updated_at = now;
                w.put_session(&s)?;
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
        scope: Option<ApprovalScope>,
    ) -> DomainResult<SessionView> {
        let mut issues = Vec::new();
        check_resolution(decision, scope, &mut issues);
        if !issues.is_empty() {
            return Err(DomainError::Validation(issues));
        }
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
                let answer = Answer {
                    decision,
                    reason,
                    scope,
                    by,
                };
                resolve(w, s, approval, answer, now, rules)
            },
        )
        .await
    }
}

/// What an approval link opens: the approval and enough of its session to decide.
#[derive(Debug, Clone)]
pub struct LinkedApproval {
    pub approval: Approval,
    pub session: Session,
    /// The hostname of the runner asking, if the session has one.
    pub runner_hostname: Option<String>,
}

/// The link behind `secret` if it can still be used: stored (links go when their approval is
/// decided), its approval pending and not expired. Every other case is the same `NotFound`, so
/// a caller never learns whether a link existed.
fn usable_link(
    r: &dyn ReadTxn,
    secret: &str,
    now: Millis,
) -> DomainResult<(ApprovalLink, Approval)> {
    let gone = || DomainError::NotFound(Entity::ApprovalLink);
    let link = r
        .approval_link(&crate::auth::hash_secret(secret))?
        .ok_or_else(gone)?;
    let approval = r
        .get_approval(link.session_id, link.approval_id)?
        .filter(|a| a.resolution.is_none() && now < a.expires_at && now < link.expires_at)
        .ok_or_else(gone)?;
    Ok((link, approval))
}

impl SessionService {
    /// `GET /approval-links/{linkToken}`: viewing does not use the link up.
    pub async fn approval_by_link(&self, secret: String) -> DomainResult<LinkedApproval> {
        let now = self.now();
        self.store
            .read(move |r| {
                let (link, approval) = usable_link(r, &secret, now)?;
                let session = r
                    .get_session(link.session_id)?
                    .ok_or(DomainError::NotFound(Entity::ApprovalLink))?;
                let runner_hostname = match session.runner_id {
                    Some(id) => r.get_runner(id)?.map(|runner| runner.hostname),
                    None => None,
                };
                Ok(LinkedApproval {
                    approval,
                    session,
                    runner_hostname,
                })
            })
            .await
    }

    /// `POST /approval-links/{linkToken}`: decides the approval as `link:<targetId>`, audited
    /// like any decision; the link (and every other link of the approval) is used up.
    pub async fn resolve_by_link(
        &self,
        secret: String,
        decision: Decision,
        reason: Option<String>,
    ) -> DomainResult<Approval> {
        let now = self.now();
        let rules = self.rules;
        self.store
            .write(move |w| {
                let (link, approval) = usable_link(w, &secret, now)?;
                let mut s = w
                    .get_session(link.session_id)?
                    .ok_or(DomainError::NotFound(Entity::ApprovalLink))?;
                let by = format!("link:{}", link.target_id);
                let approval_id = approval.id;
                audit::record_as(
                    w,
                    "link",
                    &by,
                    "approval.resolve",
                    approval_id,
                    Some(&s.org_id),
                    now,
                )?;
                let answer = Answer {
                    decision,
                    reason,
                    scope: None,
                    by,
                };
                resolve(w, &mut s, approval, answer, now, rules)?;
                s.updated_at = now;
                w.put_session(&s)?;
                w.get_approval(s.id, approval_id)?
                    .ok_or(DomainError::NotFound(Entity::ApprovalLink))
            })
            .await
    }
}

/// A decision on an approval, and who made it.
pub(super) struct Answer {
    pub decision: Decision,
    pub reason: Option<String>,
    pub scope: Option<ApprovalScope>,
    /// Token id or name of who decided, or `system`.
    pub by: String,
}

impl Answer {
    /// A denial by the server itself (expiry, the session ending): no scope.
    pub fn system_deny(reason: &str) -> Self {
        Self {
            decision: Decision::Deny,
            reason: Some(reason.into()),
            scope: None,
            by: "system".into(),
        }
    }
}

/// Marks one approval resolved (no session state change).
pub(super) fn close_approval(
    w: &mut dyn WriteTxn,
    s: &Session,
    mut approval: Approval,
    answer: Answer,
    now: Millis,
) -> DomainResult<()> {
    let Answer {
        decision,
        reason,
        scope,
        by,
    } = answer;
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
        scope,
    });
    w.put_approval(&approval)?;
    // A decided approval's links are used up, whoever decided.
    w.delete_approval_links(s.id, approval.id)?;
    if let (Some(runner), false) = (s.runner_id, s.state.is_terminal()) {
        w.enqueue_command(
            runner,
            RunnerCommand::ApprovalResolved {
                session_id: s.id,
                approval_id: approval.id,
                decision,
                reason: reason.clone(),
                scope,
            },
            now,
        )?;
    }
    let reach = match scope {
        Some(ApprovalScope::Session) => " for the rest of the session",
        _ => "",
    };
    record(
        w,
        s,
        SessionEventData::ApprovalResolved {
            approval_id: approval.id,
            decision,
            reason,
            resolved_by: by,
            scope,
            requested_at: approval.requested_at,
        },
        format!(
            "Approval {}: {}{reach}",
            approval.action.as_str(),
            decision.as_str()
        ),
        now,
    )
}

/// Resolves an approval; when none is left pending the session returns to RUNNING.
pub(super) fn resolve(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    approval: Approval,
    answer: Answer,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let approval_id = approval.id;
    close_approval(w, s, approval, answer, now)?;
    let still_pending = w
        .pending_approvals(s.id)?
        .iter()
        .any(|a| a.id != approval_id);
    if !still_pending && s.state == SessionState::WaitingForApproval {
        change_state(w, s, SessionState::Running, Cause::Approval, now, rules)?;
    }
    Ok(())
}
