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

/// Appends an entry for a decider that is not a token: a policy rule (`kind` `policy`, name
/// `policy:<ruleId>`) or an approval link (`link`, `link:<targetId>`).
pub fn record_as(
    w: &mut dyn WriteTxn,
    kind: &str,
    name: &str,
    action: &str,
    target: impl ToString,
    org_id: Option<&str>,
    at: Millis,
) -> DomainResult<()> {
    w.append_audit(AuditEntry::new(
        uuid::Uuid::nil(),
        kind,
        name,
        action,
        target,
        org_id,
        at,
    ))?;
    Ok(())
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

/// Entries removed per write while trimming, so other writes are not held up.
const TRIM_BATCH: usize = 1_000;

/// Deletes audit entries older than `keep` (`audit.retentionDays`), at start, then every hour
/// and whenever the clock is moved (tests), until `stop`.
pub async fn retention(
    store: Store,
    clock: crate::clock::SharedClock,
    keep: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let before = clock.now_ms() - keep.as_millis() as i64;
        // Batches of bounded cost; a stop is heard between two of them.
        while !*stop.borrow() {
            let trimmed: Result<usize, crate::store::StoreError> =
                store.write(move |w| w.trim_audit(before, TRIM_BATCH)).await;
            match trimmed {
                Ok(n) if n == TRIM_BATCH => continue,
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(removed = n, "audit entries past their retention removed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "trimming the audit log failed; trying again later");
                    break;
                }
            }
        }
        let jumped = async {
            match clock.jumped() {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = jumped => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
