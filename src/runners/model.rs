//! Runner records, liveness, and the commands sent down a runner's channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;
use crate::sessions::model::{ApprovalScope, Decision, Provider};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub providers: Vec<Provider>,
    pub max_concurrent_sessions: u64,
    pub features: Vec<String>,
}

/// What a runner registered as. Changes rarely; always committed durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub id: Uuid,
    pub hostname: String,
    /// `None` for shared runners.
    pub org_id: Option<String>,
    pub capabilities: Capabilities,
    pub metadata_json: Option<String>,
    pub registered_at: Millis,
    /// The runner token currently valid for it.
    pub token_id: Uuid,
    /// An operator asked it to drain.
    pub draining: bool,
    /// Set once the drain completed (its last session ended).
    pub drained_at: Option<Millis>,
    /// Bumped by the store on every write: the in-memory fleet only takes newer copies.
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
}

/// What heartbeats say. Lives in memory and reaches disk in batches: a crash may lose the last
/// seconds of it, never a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    pub last_heartbeat: Millis,
    pub load: Load,
    pub runtime_versions: BTreeMap<String, String>,
    pub build_id: Option<String>,
    /// Session ids the runner said it is running.
    pub active_sessions: Vec<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerStatus {
    Online,
    Offline,
    Draining,
}

impl RunnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "draining" => Some(Self::Draining),
            _ => None,
        }
    }
}

/// A command for a runner, kept in its outbox until the runner acknowledges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunnerCommand {
    AssignSession {
        session_id: Uuid,
        assignment_id: Uuid,
    },
    StopSession {
        session_id: Uuid,
        reason: String,
    },
    PauseSession {
        session_id: Uuid,
    },
    ResumeSession {
        session_id: Uuid,
    },
    TerminalInput {
        session_id: Uuid,
        data: String,
    },
    ApprovalResolved {
        session_id: Uuid,
        approval_id: Uuid,
        decision: Decision,
        reason: Option<String>,
        scope: Option<ApprovalScope>,
    },
    Drain,
}

impl RunnerCommand {
    pub fn session_id(&self) -> Option<Uuid> {
        match self {
            Self::AssignSession { session_id, .. }
            | Self::StopSession { session_id, .. }
            | Self::PauseSession { session_id }
            | Self::ResumeSession { session_id }
            | Self::TerminalInput { session_id, .. }
            | Self::ApprovalResolved { session_id, .. } => Some(*session_id),
            Self::Drain => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Global order of commands; the outbox is sent in this order.
    pub seq: u64,
    pub message_id: Uuid,
    pub runner_id: Uuid,
    pub command: RunnerCommand,
    pub created_at: Millis,
}
