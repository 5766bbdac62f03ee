//! Budgets inside the session write jobs: every usage report adds its change to the org's
//! spend (per day and provider, and per month), and a session that reaches a limit is paused,
//! never stopped: `budget_reached`, PAUSED_BY_HUMAN with pause reason `budget`, and the runner
//! told to pause. The org's monthly limit refuses new sessions and pauses running ones.

use super::*;
use crate::spend::model::{BudgetHold, Overrun, UsageDelta, day_of, month_of};

/// The limit a session (or its org this month) has reached, if any, ignoring holds.
pub(super) fn overrun(w: &dyn ReadTxn, s: &Session, now: Millis) -> DomainResult<Option<Overrun>> {
    let Some(budget) = w.budget(&s.org_id)? else {
        return Ok(None);
    };
    if let Some(o) = budget.session_overrun(&s.usage) {
        return Ok(Some(o));
    }
    if budget.monthly_usd.is_none() {
        return Ok(None);
    }
    let spent = w.month_usage(&s.org_id, month_of(now))?.cost_usd;
    Ok(budget.org_overrun(spent))
}

/// A new session is refused while its org's monthly limit is reached.
pub(super) fn check_org_can_start(
    w: &mut dyn WriteTxn,
    org_id: &str,
    now: Millis,
) -> DomainResult<()> {
    let Some(limit) = w.budget_in_batch(org_id)?.and_then(|b| b.monthly_usd) else {
        return Ok(());
    };
    let spent = w.month_usage(org_id, month_of(now))?.cost_usd;
    if spent >= limit {
        return Err(DomainError::LimitExceeded {
            kind: Limit::Budget,
            message: format!(
                "org {org_id} has spent ${spent:.2} this month, reaching its monthly budget of ${limit:.2}"
            ),
        });
    }
    Ok(())
}

/// Adds the change of a session's usage (`before` → its usage now) to its org's spend, then
/// pauses what reached a limit: this session, and when this report brought the org to its
/// monthly limit, every other running session of the org.
pub(super) fn usage_reported(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    before: &Usage,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    let delta = UsageDelta::between(before, &s.usage);
    if delta.is_zero() {
        return Ok(());
    }
    let month = w.add_usage(&s.org_id, day_of(now), s.provider.as_str(), &delta)?;
    let Some(budget) = w.budget(&s.org_id)? else {
        return Ok(());
    };
    let org_over = budget.org_overrun(month.cost_usd);
    if let Some(o) = budget.session_overrun(&s.usage).or(org_over) {
        pause_if_running(w, s, o, now, rules)?;
    }
    let crossed = org_over.is_some()
        && budget
            .org_overrun(month.cost_usd - delta.cost_usd)
            .is_none();
    if let (Some(o), true) = (org_over, crossed) {
        for mut other in w.org_sessions(&s.org_id)? {
            if other.id != s.id && other.state == SessionState::Running {
                pause_if_running(w, &mut other, o, now, rules)?;
                other.updated_at = now;
                w.put_session(&other)?;
            }
        }
    }
    Ok(())
}

/// A session (re)entering RUNNING while over a limit is paused at once: one that was waiting
/// for an approval or in the queue when the limit was reached.
pub(super) fn on_running(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    if let Some(o) = overrun(w, s, now)? {
        pause_if_running(w, s, o, now, rules)?;
    }
    Ok(())
}

fn pause_if_running(
    w: &mut dyn WriteTxn,
    s: &mut Session,
    o: Overrun,
    now: Millis,
    rules: Rules,
) -> DomainResult<()> {
    if s.state != SessionState::Running || w.budget_hold(s.id)? == Some(BudgetHold::Exempt) {
        return Ok(());
    }
    w.set_budget_hold(s.id, Some(BudgetHold::Paused))?;
    let summary = format!(
        "Budget reached ({} {} limit {}, spent {}): paused",
        o.scope.as_str(),
        o.metric.as_str(),
        o.limit,
        o.spent
    );
    record(w, s, SessionEventData::BudgetReached(o), summary, now)?;
    change_state(w, s, SessionState::PausedByHuman, Cause::Budget, now, rules)
}

/// Before a resume: refused while over a limit, unless an admin forces it (the session is then
/// not paused for budget again). Clears the budget pause otherwise.
pub(super) fn before_resume(
    w: &mut dyn WriteTxn,
    p: &Principal,
    s: &Session,
    force: bool,
    now: Millis,
) -> DomainResult<()> {
    if force && p.kind != TokenKind::Admin {
        return Err(DomainError::forbidden(
            "only an admin may resume a session over its budget",
        ));
    }
    let hold = w.budget_hold(s.id)?;
    if hold == Some(BudgetHold::Exempt) {
        return Ok(());
    }
    match overrun(w, s, now)? {
        Some(_) if force => w.set_budget_hold(s.id, Some(BudgetHold::Exempt))?,
        Some(o) => {
            return Err(DomainError::conflict(
                Conflict::BudgetExceeded,
                format!(
                    "the {} budget is reached ({} limit {}, spent {}); raise the limit above the spend to resume",
                    o.scope.as_str(),
                    o.metric.as_str(),
                    o.limit,
                    o.spent
                ),
            ));
        }
        None if hold.is_some() => w.set_budget_hold(s.id, None)?,
        None => {}
    }
    Ok(())
}

/// A session that first became RUNNING counts as one session of its org's spend that day.
pub(super) fn count_start(w: &mut dyn WriteTxn, s: &Session, now: Millis) -> DomainResult<()> {
    w.add_usage(
        &s.org_id,
        day_of(now),
        s.provider.as_str(),
        &UsageDelta::one_session(),
    )?;
    Ok(())
}

/// An ended session holds nothing any more.
pub(super) fn on_end(w: &mut dyn WriteTxn, s: &Session) -> DomainResult<()> {
    if w.budget_hold(s.id)?.is_some() {
        w.set_budget_hold(s.id, None)?;
    }
    Ok(())
}

/// Whether the session is paused because of its budget (its `pauseReason`).
pub(super) fn paused_for_budget(r: &dyn ReadTxn, s: &Session) -> DomainResult<bool> {
    Ok(s.state == SessionState::PausedByHuman && r.budget_hold(s.id)? == Some(BudgetHold::Paused))
}
