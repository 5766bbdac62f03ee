//! Who may do what with a session: the access a call needs, checked against the caller's
//! token, and the loading of a session under that check.

use super::*;

/// What a caller wants to do with a session; decides which token kinds may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Read it: its org, admin, or its assigned runner.
    Read,
    /// Manage it (stop, pause, resolve…): its org or admin.
    Manage,
    /// Report as its runner, naming the assignment it holds: the assigned runner or admin.
    Runner(Option<Uuid>),
}

/// Checks the caller's kind, then whether the session is visible to it. A session of another
/// org, or one a runner never held, is "not found": nothing about it leaks.
pub(super) fn authorize(p: &Principal, session: &Session, access: Access) -> DomainResult<()> {
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
pub(super) fn authorize_runner(
    p: &Principal,
    s: &Session,
    assignment: Option<Uuid>,
) -> DomainResult<()> {
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

pub(super) fn load(
    w: &dyn ReadTxn,
    p: &Principal,
    id: Uuid,
    access: Access,
) -> DomainResult<Session> {
    let session = w
        .get_session(id)?
        .ok_or(DomainError::NotFound(Entity::Session))?;
    authorize(p, &session, access)?;
    Ok(session)
}

pub(super) fn view(r: &dyn ReadTxn, session: Session) -> DomainResult<SessionView> {
    let recent_events = r.recent_events(session.id, RECENT_EVENTS)?;
    let pending_approvals = r.pending_approvals(session.id)?;
    let paused_for_budget = budget::paused_for_budget(r, &session)?;
    Ok(SessionView {
        session,
        recent_events,
        pending_approvals,
        paused_for_budget,
    })
}
