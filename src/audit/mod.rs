//! The audit log: every state-changing call, with who did it, to what, and when.
//! Entries are written in the same transaction as the change they describe, so the log and the
//! state never disagree. High-volume data streams (terminal output, heartbeats, usage figures)
//! are data, not decisions, and are not audited.

pub mod model;

use crate::auth::Principal;
use crate::clock::Millis;
use crate::error::DomainResult;
use crate::store::{Store, WriteTxn};
pub use model::AuditEntry;

/// Appends an entry for `who` doing `action` to `target`, inside the caller's write job.
pub fn record(
    w: &mut dyn WriteTxn,
    who: &Principal,
    action: &str,
    target: impl ToString,
    org_id: Option<&str>,
    at: Millis,
) -> DomainResult<()> {
    w.append_audit(entry(who, action, target, org_id, at))?;
    Ok(())
}

/// The entry `record` appends, built ahead of the write job (its seq is set when appended).
pub fn entry(
    who: &Principal,
    action: &str,
    target: impl ToString,
    org_id: Option<&str>,
    at: Millis,
) -> AuditEntry {
    AuditEntry::new(
        who.token_id,
        who.kind.as_str(),
        &who.name,
        action,
        target,
        org_id,
        at,
    )
}

/// Appends an entry for something the server decided by itself (automation, health verdicts).
pub fn record_system(
    w: &mut dyn WriteTxn,
    action: &str,
    target: impl ToString,
    at: Millis,
) -> DomainResult<()> {
    w.append_audit(AuditEntry {
        seq: 0,
        at,
        token_id: None,
        kind: "system".to_owned(),
        name: "system".to_owned(),
        action: action.to_owned(),
        target: target.to_string(),
        org_id: None,
    })?;
    Ok(())
}

/// `GET /audit` (admin): entries after `after`, oldest first.
pub async fn list(
    store: &Store,
    who: &Principal,
    after: u64,
    limit: u64,
) -> DomainResult<Vec<AuditEntry>> {
    who.require_admin()?;
    Ok(store
        .read(move |r| r.audit_after(after, limit as usize))
        .await?)
}
