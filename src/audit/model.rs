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
