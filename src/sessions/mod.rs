//! Sessions: creation, the session lifecycle, approvals, events, terminal output, usage,
//! and the timers (timeout, approval expiry, purge). Every rule runs inside one store write job,
//! so each change is atomic and durable before it is acknowledged.
//!
//! `mod.rs` holds the service and creation; `access.rs` who may do what, `lifecycle.rs` state
//! changes and the timeline, `approvals.rs`, `output.rs` (events, terminal output and input),
//! `recording.rs` (output and timeline merged in time order, page by page), `timers.rs`,
//! `assignment.rs` (runners taking sessions and giving them up), and `rules.rs` what a new
//! session and reported data must meet.

mod access;
mod approvals;
mod assignment;
mod budget;
mod lifecycle;
pub mod model;
mod output;
mod recording;
pub mod rules;
pub mod sweeper;
mod timers;
pub use timers::PURGE_ROWS_PER_SWEEP;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::audit;
use crate::auth::{Principal, TokenKind};
use crate::clock::{Millis, SharedClock, SharedIds, format_ms, ms};
use crate::config::SessionsConfig;
use crate::error::{Conflict, ConflictDetails, DomainError, DomainResult, Entity, Limit};
use crate::events::model::{BusEvent, DomainEvent, SessionEventData};
use crate::events::render;
use crate::paging::{Page, PageRequest};
use crate::runners::model::RunnerCommand;
use crate::store::{ReadTxn, Store, WriteTxn};
use model::*;
use model::{Timer, TimerKind};

use access::*;
pub use approvals::LinkedApproval;
use approvals::*;
use assignment::*;
pub use assignment::{ASSIGNMENT_CONFIRM_MS, Release, assign};
use lifecycle::*;
pub use recording::{RecordingItem, RecordingReader, RecordingStart};
pub use rules::*;

/// A session with what its detail view shows besides the record.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub session: Session,
    pub recent_events: Vec<SessionEvent>,
    pub pending_approvals: Vec<Approval>,
    /// Paused because a budget limit was reached (`pauseReason: budget`).
    pub paused_for_budget: bool,
}

/// A session in a list, with its pause reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedSession {
    pub session: Session,
    pub paused_for_budget: bool,
}

/// A create request after its shape was checked.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub org_id: Option<String>,
    pub provider: Provider,
    pub repo: Repo,
    pub task: Option<String>,
    pub options: SessionOptions,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub org_id: Option<String>,
    pub state: Option<SessionState>,
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageUpdate {
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub api_calls: Option<u64>,
    pub compute_seconds: Option<f64>,
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct NewApproval {
    pub action: ApprovalAction,
    pub description: String,
    pub context: Option<Value>,
}

/// The rules, with the clock and limits they need. Cheap to clone.
#[derive(Clone)]
pub struct SessionService {
    store: Store,
    clock: SharedClock,
    ids: SharedIds,
    rules: Rules,
}

/// The configuration values the rules read, copied into each write job.
#[derive(Debug, Clone, Copy)]
struct Rules {
    max_sessions_per_org: u64,
    default_timeout_ms: i64,
    ttl_ms: i64,
    approval_timeout_ms: i64,
}

impl SessionService {
    pub fn new(store: Store, clock: SharedClock, ids: SharedIds, cfg: &SessionsConfig) -> Self {
        Self {
            store,
            clock,
            ids,
            rules: Rules {
                max_sessions_per_org: cfg.max_sessions_per_org,
                default_timeout_ms: ms(cfg.default_timeout),
                ttl_ms: ms(cfg.session_data_ttl),
                approval_timeout_ms: ms(cfg.approval_timeout),
            },
        }
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub async fn create(&self, p: &Principal, new: NewSession) -> DomainResult<SessionView> {
        p.require_org_or_admin()?;
        let org_id = p.resolve_org(new.org_id.as_deref(), "orgId")?;
        let now = self.now();
        let id = self.ids.ordered_uuid(now);
        let rules = self.rules;
        let timeout_ms = new
            .options
            .timeout_minutes
            .map(|m| (m * 60_000.0).round() as i64)
            .unwrap_or(rules.default_timeout_ms);
        let mut session = Session {
            id,
            org_id,
            provider: new.provider,
            repo: new.repo,
            task: new.task,
            options: new.options,
            state: SessionState::Created,
            created_at: now,
            started_running_at: None,
            completed_at: None,
            end_reason: None,
            error: None,
            runner_id: None,
            assignment_id: None,
            assigned_at: None,
            runner_history: Vec::new(),
            usage: Usage::default(),
            timeout_ms,
            output_bytes: 0,
            workspace_size_bytes: None,
            updated_at: now,
        };
        // Everything that does not depend on the database is prepared here, not on the store's
        // single writer thread, which every write in the server waits for.
        let created_summary = format!("Session created for {}", session.repo.url);
        let created = SessionEventData::Created {
            provider: session.provider,
            repo_url: session.repo.url.clone(),
        };
        let created_json = render::timeline_data_json(&created);
        let audit_entry = audit::entry(p, "session.create", id, Some(&session.org_id), now);
        self.store
            .write(move |w| {
                budget::check_org_can_start(w, &session.org_id, now)?;
                let active = w.active_sessions_of(&session.org_id)?;
                if active >= rules.max_sessions_per_org {
                    return Err(DomainError::LimitExceeded {
                        kind: Limit::Sessions,
                        message: format!(
                            "org {} already has {active} active sessions (limit {})",
                            session.org_id, rules.max_sessions_per_org
                        ),
                    });
                }
                w.begin_session_events(session.id);
                record_rendered(w, &session, created, created_json, created_summary, now)?;
                change_state(
                    w,
                    &mut session,
                    SessionState::Queued,
                    Cause::Server,
                    now,
                    rules,
                )?;
                w.put_session(&session)?;
                w.append_audit(audit_entry)?;
                // A new session has no approvals yet, and no events but those just recorded.
                let mut recent_events = w.followed_events();
                recent_events.drain(..recent_events.len().saturating_sub(RECENT_EVENTS));
                Ok(SessionView {
                    recent_events,
                    session,
                    pending_approvals: Vec::new(),
                    paused_for_budget: false,
                })
            })
            .await
    }

    pub async fn get(&self, p: &Principal, id: Uuid) -> DomainResult<SessionView> {
        let p = p.clone();
        self.store
            .read(move |r| {
                let session = load(r, &p, id, Access::Read)?;
                view(r, session)
            })
            .await
    }

    /// The sessions not yet ended, counted (`/metrics`).
    pub async fn census(&self) -> DomainResult<crate::store::SessionCensus> {
        self.store
            .read(|r| r.session_census().map_err(DomainError::from))
            .await
    }

    pub async fn list(
        &self,
        p: &Principal,
        filter: SessionFilter,
        page: PageRequest,
    ) -> DomainResult<Page<ListedSession>> {
        p.require_org_or_admin()?;
        let org_id = p.resolve_org(filter.org_id.as_deref(), "orgId")?;
        self.store
            .read(move |r| {
                let all: Vec<Session> = r
                    .org_sessions(&org_id)?
                    .into_iter()
                    .filter(|s| filter.state.is_none_or(|st| s.state == st))
                    .filter(|s| filter.provider.is_none_or(|pr| s.provider == pr))
                    .collect();
                // Only the page's paused sessions are looked up for their reason.
                page.slice(all).try_map(|session| {
                    let paused_for_budget = budget::paused_for_budget(r, &session)?;
                    Ok(ListedSession {
                        session,
                        paused_for_budget,
                    })
                })
            })
            .await
    }
}

/// Environment keys with their values hidden, as every API answer shows them.
pub fn masked_env(env: &BTreeMap<String, String>) -> BTreeMap<String, &'static str> {
    env.keys().map(|k| (k.clone(), "***")).collect()
}

pub fn timestamp(ms: Millis) -> String {
    format_ms(ms)
}
