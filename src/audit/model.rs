//! Audit log entries as stored.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Millis,
    /// `None` when authentication is off (every caller is an anonymous admin) or for the system.
    pub token_id: Option<Uuid>,
    pub kind: String,
    pub name: String,
    pub action: String,
    pub target: String,
    pub org_id: Option<String>,
}

impl AuditEntry {
    /// An entry for `action` on `target` by the token `token_id` (nil when authentication is
    /// off) of `kind` named `name`. Its seq is set when it is appended.
    pub fn new(
        token_id: Uuid,
        kind: &str,
        name: &str,
        action: &str,
        target: impl ToString,
        org_id: Option<&str>,
        at: Millis,
    ) -> Self {
        Self {
            seq: 0,
            at,
            token_id: (!token_id.is_nil()).then_some(token_id),
            kind: kind.to_owned(),
            name: name.to_owned(),
            action: action.to_owned(),
            target: target.to_string(),
            org_id: org_id.map(str::to_owned),
        }
    }
}
