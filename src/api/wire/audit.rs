//! The audit log.

use serde::Serialize;
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::sessions::timestamp;

/// One audit entry: who did what to which target, when.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<'a> {
    action: &'a str,
    actor: Actor<'a>,
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    seq: u64,
    target: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Actor<'a> {
    kind: &'a str,
    name: &'a str,
    /// `null` for the server itself.
    token_id: Option<Uuid>,
}

impl<'a> From<&'a AuditEntry> for Entry<'a> {
    fn from(e: &'a AuditEntry) -> Self {
        Self {
            action: &e.action,
            actor: Actor {
                kind: &e.kind,
                name: &e.name,
                token_id: e.token_id,
            },
            at: timestamp(e.at),
            org_id: e.org_id.as_deref(),
            seq: e.seq,
            target: &e.target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;

    #[test]
    fn keys_in_wire_order() {
        for full in [true, false] {
            let e = AuditEntry {
                seq: 1,
                at: 0,
                token_id: full.then(|| Uuid::from_u128(1)),
                kind: "admin".into(),
                name: "n".into(),
                action: "session.create".into(),
                target: "t".into(),
                org_id: full.then(|| "acme".into()),
            };
            sorted_keys(&Entry::from(&e));
            sorted_keys(&super::super::SeqPage::new(vec![Entry::from(&e)], 1));
        }
    }
}
