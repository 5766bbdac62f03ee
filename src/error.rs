//! The domain layer's error. `api::error` maps every variant to an HTTP status and an error
//! code (docs/api.md) in one place; nothing else decides either.

use crate::store::StoreError;

/// One bad field of a request, by its JSON path (`repo.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Things a request can name that may not exist (or not for this caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Session,
    Approval,
    Token,
    Runner,
    Webhook,
    Version,
    Build,
    Rollout,
    /// An approval link that was used, expired or never existed (never told apart).
    ApprovalLink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    InvalidState,
    SessionAlreadyStopped,
    ApprovalAlreadyResolved,
    OutputOffsetMismatch,
    RunnerHasActiveSessions,
    StaleAssignment,
    InvalidRolloutState,
    RolloutAlreadyActive,
    BuildAlreadyExists,
    BuildNotEligible,
    /// Resuming a session while it is over a budget limit.
    BudgetExceeded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Sessions,
    Runners,
    Webhooks,
    /// The org's monthly budget is spent.
    Budget,
}

/// What a conflict tells the caller besides its code, for the caller to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ConflictDetails {
    /// The bytes of output the server holds: the runner resends from there.
    OutputOffset { held: u64 },
    /// The sessions that keep a runner from being deregistered.
    ActiveSessions(Vec<uuid::Uuid>),
    /// The rollout already active on the channel.
    ActiveRollout(uuid::Uuid),
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("request is not valid")]
    Validation(Vec<Issue>),
    #[error("unknown provider `{0}`")]
    InvalidProvider(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0:?} not found")]
    NotFound(Entity),
    #[error("{message}")]
    Conflict {
        kind: Conflict,
        message: String,
        details: Option<ConflictDetails>,
    },
    #[error("{message}")]
    LimitExceeded { kind: Limit, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DomainError {
    pub fn conflict(kind: Conflict, message: impl Into<String>) -> Self {
        Self::Conflict {
            kind,
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::conflict(Conflict::InvalidState, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    /// A single-field validation error.
    pub fn invalid(path: &str, message: &str) -> Self {
        Self::Validation(vec![Issue::new(path, message)])
    }
}

pub type DomainResult<T> = Result<T, DomainError>;
