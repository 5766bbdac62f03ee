//! The one place where errors become an HTTP status and an error code (docs/api.md).

use serde_json::{Value, json};
use warp::http::StatusCode;
use warp::reject::{MethodNotAllowed, PayloadTooLarge, Reject, Rejection, UnsupportedMediaType};

use crate::error::{Conflict, ConflictDetails, DomainError, Entity, Limit};
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `Retry-After` (seconds) of a 429 `RATE_LIMITED`.
    pub retry_after_secs: Option<std::num::NonZeroU16>,
}

impl ApiError {
    /// A path that names no route.
    pub fn no_route() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "No such route")
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "A valid bearer token is required",
        )
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_JSON", message)
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body is larger than 1 MiB",
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Request bodies must be application/json",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal server error",
        )
    }
}

/// An `ApiError` travelling as a warp rejection (auth gate, body parsing).
#[derive(Debug)]
pub struct ApiRejection(pub ApiError);
impl Reject for ApiRejection {}

pub fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(ApiRejection(e))
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        use StatusCode as S;
        match e {
            DomainError::Validation(issues) => {
                let list: Vec<Value> = issues
                    .iter()
                    .map(|i| json!({"path": i.path, "message": i.message}))
                    .collect();
                let summary = issues
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: {}",
                            if i.path.is_empty() { "body" } else { &i.path },
                            i.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                ApiError {
                    status: S::BAD_REQUEST,
                    code: "VALIDATION_ERROR",
                    message: format!("Request validation failed: {summary}"),
                    details: Some(json!({ "issues": list })),
                    retry_after_secs: None,
                }
            }
            DomainError::InvalidProvider(p) => ApiError::new(
                S::BAD_REQUEST,
                "INVALID_PROVIDER",
                format!(
                    "Unknown provider `{p}`; expected codex, claude_code, gemini_cli or omnara"
                ),
            ),
            DomainError::Unauthorized => ApiError::unauthorized(),
            DomainError::Forbidden(m) => ApiError::new(S::FORBIDDEN, "FORBIDDEN", m),
            DomainError::NotFound(entity) => {
                let (code, what) = match entity {
                    Entity::Session => ("SESSION_NOT_FOUND", "Session"),
                    Entity::Approval => ("APPROVAL_NOT_FOUND", "Approval"),
                    Entity::Token => ("TOKEN_NOT_FOUND", "Token"),
                    Entity::Runner => ("RUNNER_NOT_FOUND", "Runner"),
                    Entity::Webhook => ("WEBHOOK_NOT_FOUND", "Webhook"),
                    Entity::Version => ("VERSION_NOT_FOUND", "Version"),
                    Entity::Build => ("BUILD_NOT_FOUND", "Build"),
                    Entity::Rollout => ("ROLLOUT_NOT_FOUND", "Rollout"),
                    // Used, expired and unknown links answer alike.
                    Entity::ApprovalLink => ("NOT_FOUND", "Approval link"),
                };
                ApiError::new(S::NOT_FOUND, code, format!("{what} not found"))
            }
            DomainError::Conflict {
                kind,
                message,
                details,
            } => {
                let code = match kind {
                    Conflict::InvalidState => "INVALID_STATE",
                    Conflict::SessionAlreadyStopped => "SESSION_ALREADY_STOPPED",
                    Conflict::ApprovalAlreadyResolved => "APPROVAL_ALREADY_RESOLVED",
                    Conflict::OutputOffsetMismatch => "OUTPUT_OFFSET_MISMATCH",
                    Conflict::RunnerHasActiveSessions => "RUNNER_HAS_ACTIVE_SESSIONS",
                    Conflict::StaleAssignment => "STALE_ASSIGNMENT",
                    Conflict::InvalidRolloutState => "INVALID_ROLLOUT_STATE",
                    Conflict::RolloutAlreadyActive => "ROLLOUT_ALREADY_ACTIVE",
                    Conflict::BuildAlreadyExists => "BUILD_ALREADY_EXISTS",
                    Conflict::BuildNotEligible => "BUILD_NOT_ELIGIBLE",
                    Conflict::BudgetExceeded => "BUDGET_EXCEEDED",
                };
                ApiError {
                    status: S::CONFLICT,
                    code,
                    message,
                    details: details.map(|d| conflict_details(&d)),
                    retry_after_secs: None,
                }
            }
            DomainError::LimitExceeded { kind, message } => {
                let code = match kind {
                    Limit::Sessions => "SESSION_LIMIT_EXCEEDED",
                    Limit::Runners => "RUNNER_LIMIT_EXCEEDED",
                    Limit::Webhooks => "WEBHOOK_LIMIT_EXCEEDED",
                    Limit::Budget => "BUDGET_EXCEEDED",
                };
                ApiError::new(S::TOO_MANY_REQUESTS, code, message)
            }
            DomainError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The full error goes to the log; the client gets no detail, path or panic text.
        tracing::error!(error = %e, "storage error");
        match e {
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The server is shutting down",
            ),
            e if e.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "Storage is unavailable (a full disk or an I/O error); nothing was changed. Retry later",
            ),
            _ => ApiError::internal(),
        }
    }
}

/// Turns any rejection that reaches the edge into the API's error envelope.
pub fn from_rejection(r: &Rejection) -> ApiError {
    if let Some(ApiRejection(e)) = r.find::<ApiRejection>() {
        return e.clone();
    }
    if r.find::<PayloadTooLarge>().is_some() {
        return ApiError::payload_too_large();
    }
    if r.find::<UnsupportedMediaType>().is_some() {
        return ApiError::unsupported_media_type();
    }
    if r.find::<warp::reject::InvalidQuery>().is_some() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "The query string could not be parsed",
        );
    }
    if r.find::<MethodNotAllowed>().is_some() {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "This method is not allowed on this path",
        );
    }
    if r.is_not_found() {
        return ApiError::no_route();
    }
    tracing::warn!(rejection = ?r, "unhandled rejection");
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "The request could not be handled",
    )
}
/// A conflict's details as the wire carries them.
fn conflict_details(d: &ConflictDetails) -> Value {
    match d {
        ConflictDetails::OutputOffset { held } => json!({ "offset": held }),
        ConflictDetails::ActiveSessions(ids) => json!({ "activeSessions": ids }),
        ConflictDetails::ActiveRollout(id) => json!({ "rolloutId": id }),
    }
}
