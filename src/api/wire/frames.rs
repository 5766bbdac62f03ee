//! Frames of the two WebSockets (the dashboard stream and the runner channel) that the server
//! writes: the error codes both sockets use for frames they cannot take, the one error-frame
//! builder, and the runner commands as typed frames. Frames are written as JSON objects whose
//! keys are sorted (as `serde_json` maps write them), so a frame's bytes do not depend on which
//! code built it.

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::runners::model::RunnerCommand;

/// Why a socket refused a frame (besides the REST API's own codes, which domain errors keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketError {
    MessageTooLarge,
    InvalidMessage,
    UnknownMessageType,
    Unauthorized,
    ConnectionLimit,
    NotSubscribed,
}

impl SocketError {
    pub fn code(self) -> &'static str {
        match self {
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::ConnectionLimit => "CONNECTION_LIMIT",
            Self::NotSubscribed => "NOT_SUBSCRIBED",
        }
    }
}

/// An `error` frame, answering the client frame `message_id` when it had one.
pub fn error_frame(code: &str, message: &str, message_id: Option<&Value>) -> Value {
    let mut f = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = message_id {
        f["messageId"] = id.clone();
    }
    f
}

/// A command from a runner's outbox, as the channel sends it (the channel adds `messageId`,
/// `timestamp` and, for an assignment, the session).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandFrame<'a> {
    #[serde(rename_all = "camelCase")]
    StopSession {
        reason: &'a str,
        session_id: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    PauseSession {
        session_id: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    ResumeSession {
        session_id: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    TerminalInput {
        data: &'a str,
        session_id: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    ApprovalResolved {
        approval_id: Uuid,
        decision: &'static str,
        reason: Option<&'a str>,
        /// Only when the decider gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<&'static str>,
        session_id: Uuid,
    },
    Drain,
}

impl<'a> CommandFrame<'a> {
    /// The frame of every command but an assignment (which needs the session's detail).
    pub fn of(command: &'a RunnerCommand) -> Option<Self> {
        Some(match command {
            RunnerCommand::AssignSession { .. } => return None,
            RunnerCommand::StopSession { session_id, reason } => Self::StopSession {
                reason,
                session_id: *session_id,
            },
            RunnerCommand::PauseSession { session_id } => Self::PauseSession {
                session_id: *session_id,
            },
            RunnerCommand::ResumeSession { session_id } => Self::ResumeSession {
                session_id: *session_id,
            },
            RunnerCommand::TerminalInput { session_id, data } => Self::TerminalInput {
                data,
                session_id: *session_id,
            },
            RunnerCommand::ApprovalResolved {
                session_id,
                approval_id,
                decision,
                reason,
                scope,
            } => Self::ApprovalResolved {
                approval_id: *approval_id,
                decision: decision.as_str(),
                reason: reason.as_deref(),
                scope: scope.map(|s| s.as_str()),
                session_id: *session_id,
            },
            RunnerCommand::Drain => Self::Drain,
        })
    }

    pub fn to_value(&self) -> Value {
        super::to_value(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::model::{ApprovalScope, Decision};

    /// Each typed frame is the object the hand-built `json!` frames were.
    #[test]
    fn command_frames_are_the_frames_sent_before() {
        let s = Uuid::from_u128(1);
        let a = Uuid::from_u128(2);
        let cases = [
            (
                RunnerCommand::StopSession {
                    session_id: s,
                    reason: "done".into(),
                },
                json!({"type": "stop_session", "sessionId": s, "reason": "done"}),
            ),
            (
                RunnerCommand::PauseSession { session_id: s },
                json!({"type": "pause_session", "sessionId": s}),
            ),
            (
                RunnerCommand::ResumeSession { session_id: s },
                json!({"type": "resume_session", "sessionId": s}),
            ),
            (
                RunnerCommand::TerminalInput {
                    session_id: s,
                    data: "ls\r".into(),
                },
                json!({"type": "terminal_input", "sessionId": s, "data": "ls\r"}),
            ),
            (
                RunnerCommand::ApprovalResolved {
                    session_id: s,
                    approval_id: a,
                    decision: Decision::Deny,
                    reason: None,
                    scope: None,
                },
                json!({"type": "approval_resolved", "sessionId": s, "approvalId": a,
                       "decision": "deny", "reason": null}),
            ),
            (
                RunnerCommand::ApprovalResolved {
                    session_id: s,
                    approval_id: a,
                    decision: Decision::Allow,
                    reason: Some("fine".into()),
                    scope: Some(ApprovalScope::Session),
                },
                json!({"type": "approval_resolved", "sessionId": s, "approvalId": a,
                       "decision": "allow", "reason": "fine", "scope": "session"}),
            ),
            (RunnerCommand::Drain, json!({"type": "drain"})),
        ];
        for (command, before) in cases {
            let frame = CommandFrame::of(&command).expect("a frame");
            // As the channel writes it (`wire::text`): keys sorted.
            assert_eq!(
                super::super::text(frame.to_value()),
                super::super::text(before)
            );
        }
    }
}
