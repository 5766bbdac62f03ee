//! What happened, as the store publishes it after commit.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::clock::Millis;

/// Events about sessions and approvals (dashboard session/org streams, webhooks).
pub const SESSION_EVENTS: &[&str] = &[
    "state_changed",
    "approval_requested",
    "approval_resolved",
    "session_created",
    "session_started",
    "session_completed",
    "session_failed",
];

/// Events about runners and the update pipeline (dashboard org streams, webhooks).
pub const FLEET_EVENTS: &[&str] = &[
    "runner_online",
    "runner_offline",
    "runner_draining",
    "runner_drained",
    "runner_undrained",
    "runner_registered",
    "runner_deregistered",
    "rollout_started",
    "rollout_advanced",
    "rollout_completed",
    "rollout_cancelled",
    "rollout_paused",
    "rollout_resumed",
    "version_discovered",
    "build_registered",
];

/// Whether an event is one of the named events subscribers can receive (contract §6, §7);
/// internal ones such as `terminal_output` are not.
pub fn is_public(name: &str) -> bool {
    SESSION_EVENTS.contains(&name) || FLEET_EVENTS.contains(&name)
}

/// One thing that happened. `name` is the contract's event name (`session_created`, …).
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub name: &'static str,
    pub at: Millis,
    pub org_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub data: Value,
    /// The event as a dashboard frame, rendered by the first connection that sends it and
    /// shared by all the others (terminal output goes to many watchers).
    pub rendered: std::sync::OnceLock<Arc<str>>,
}

