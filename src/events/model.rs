//! What happened, as typed values. The domain builds these inside its write jobs; the store
//! publishes them after commit, in commit order; `events/render.rs` is the one place they
//! become JSON (the session timeline, the dashboard stream, webhooks).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use uuid::Uuid;

use crate::clock::Millis;
use crate::sessions::model::{
    ApprovalAction, ApprovalScope, Decision, OutputChunk, Provider, SessionState,
};
use crate::spend::model::Overrun;

/// Events about sessions and approvals (dashboard session/org streams, webhooks).
pub const SESSION_EVENTS: &[&str] = &[
    "state_changed",
    "approval_requested",
    "approval_resolved",
    "session_created",
    "session_started",
    "session_completed",
    "session_failed",
    "budget_reached",
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

/// Whether an event is one of the named events subscribers can receive (see docs/api.md);
/// internal ones such as `terminal_output` are not.
pub fn is_public(name: &str) -> bool {
    SESSION_EVENTS.contains(&name) || FLEET_EVENTS.contains(&name)
}

/// One thing that happened, with where it belongs.
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub at: Millis,
    pub org_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub event: DomainEvent,
    /// The event as the dashboard stream sends it, made by the first connection that sends it
    /// and shared by all the others (terminal output goes to many watchers). Opaque here: the
    /// stream keeps its own message type in it, so a watcher sends the frame without a copy.
    pub rendered: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl BusEvent {
    pub fn new(
        at: Millis,
        org_id: Option<String>,
        session_id: Option<Uuid>,
        event: DomainEvent,
    ) -> Self {
        Self {
            at,
            org_id,
            session_id,
            event,
            rendered: OnceLock::new(),
        }
    }

    /// The event's name on the wire (`session_created`, …).
    pub fn name(&self) -> &'static str {
        self.event.name()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    /// Events of a session's timeline (stored with the session as well as published).
    Session(SessionEventData),
    /// A chunk of a session's terminal output, stored before it is published.
    TerminalOutput(Arc<OutputChunk>),
    Runner {
        kind: RunnerEventKind,
        runner_id: Uuid,
        hostname: String,
    },
    Rollout {
        kind: RolloutEventKind,
        rollout: RolloutSummary,
    },
    VersionDiscovered {
        provider: Provider,
        version: String,
        runner_id: Uuid,
    },
    BuildRegistered {
        build_id: String,
        runner_version: String,
        runtime_versions: BTreeMap<String, String>,
    },
}

impl DomainEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Session(e) => e.name(),
            Self::TerminalOutput(_) => "terminal_output",
            Self::Runner { kind, .. } => kind.name(),
            Self::Rollout { kind, .. } => kind.name(),
            Self::VersionDiscovered { .. } => "version_discovered",
            Self::BuildRegistered { .. } => "build_registered",
        }
    }

    /// The runner a session ended on, for `session_completed` / `session_failed`.
    pub fn ended_on_runner(&self) -> Option<(Uuid, bool)> {
        match self {
            Self::Session(SessionEventData::Ended {
                runner_id: Some(r),
                state,
                ..
            }) => Some((*r, *state != SessionState::Completed)),
            _ => None,
        }
    }

    /// For a session that ended on a runner: the runner, whether it completed, and its cost.
    pub fn ended_with_cost(&self) -> Option<(Uuid, bool, f64)> {
        match self {
            Self::Session(SessionEventData::Ended {
                runner_id: Some(r),
                state,
                cost_usd,
                ..
            }) => Some((*r, *state == SessionState::Completed, *cost_usd)),
            _ => None,
        }
    }
}

/// What a session's timeline records.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEventData {
    Created {
        provider: Provider,
        repo_url: String,
    },
    StateChanged {
        from: SessionState,
        to: SessionState,
    },
    Started,
    /// `session_completed` when `state` is COMPLETED, `session_failed` otherwise.
    Ended {
        state: SessionState,
        end_reason: Option<String>,
        error: Option<String>,
        /// The runner it ended on: the update pipeline judges builds by it.
        runner_id: Option<Uuid>,
        /// What it had spent by then (spend per build).
        cost_usd: f64,
    },
    /// A budget limit was reached and the session paused for it.
    BudgetReached(Overrun),
    ApprovalRequested {
        approval_id: Uuid,
        action: ApprovalAction,
        description: String,
        /// The runner's context, as the JSON text it sent.
        context_json: Option<String>,
        requested_at: Millis,
        expires_at: Millis,
        /// The org's approval policy decided it in the same transaction (`approval_resolved`
        /// follows): nobody is asked, so the dashboard gets no `approval_required` for it.
        decided_at_once: bool,
    },
    ApprovalResolved {
        approval_id: Uuid,
        decision: Decision,
        reason: Option<String>,
        resolved_by: String,
        /// As the decider gave it (none from expiry or the session ending).
        scope: Option<ApprovalScope>,
        /// When the approval was requested (its time to a decision, for `/metrics`).
        requested_at: Millis,
    },
    Assigned {
        runner_id: Uuid,
        assignment_id: Uuid,
    },
    Requeued {
        runner_id: Uuid,
        reason: String,
    },
}

impl SessionEventData {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created { .. } => "session_created",
            Self::StateChanged { .. } => "state_changed",
            Self::Started => "session_started",
            Self::Ended { state, .. } if *state == SessionState::Completed => "session_completed",
            Self::Ended { .. } => "session_failed",
            Self::ApprovalRequested { .. } => "approval_requested",
            Self::ApprovalResolved { .. } => "approval_resolved",
            Self::Assigned { .. } => "session_assigned",
            Self::Requeued { .. } => "session_requeued",
            Self::BudgetReached(_) => "budget_reached",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerEventKind {
    Registered,
    Online,
    Offline,
    Draining,
    Drained,
    Undrained,
    Deregistered,
}

impl RunnerEventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Registered => "runner_registered",
            Self::Online => "runner_online",
            Self::Offline => "runner_offline",
            Self::Draining => "runner_draining",
            Self::Drained => "runner_drained",
            Self::Undrained => "runner_undrained",
            Self::Deregistered => "runner_deregistered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutEventKind {
    Started,
    Advanced,
    Paused,
    Resumed,
    Completed,
    Cancelled,
}

impl RolloutEventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "rollout_started",
            Self::Advanced => "rollout_advanced",
            Self::Paused => "rollout_paused",
            Self::Resumed => "rollout_resumed",
            Self::Completed => "rollout_completed",
            Self::Cancelled => "rollout_cancelled",
        }
    }
}

/// A rollout as its events describe it. State and channel are kept as their wire names so that
/// this module needs nothing of the pipeline's model (which builds these).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSummary {
    pub rollout_id: Uuid,
    pub build_id: String,
    pub previous_build_id: Option<String>,
    pub channel: &'static str,
    pub state: &'static str,
    pub current_stage: usize,
    pub current_percentage: u8,
    /// Why it ended, when it was cancelled or failed.
    pub reason: Option<String>,
}
