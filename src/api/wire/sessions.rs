//! Sessions: summary (lists), detail (create, get and every state change), approvals, output.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::stored_json;
use crate::clock::Millis;
use crate::sessions::model::{Approval, ApprovalScope, OutputChunk, Session, SessionState};
use crate::sessions::{SessionView, masked_env, timestamp};

/// A session in a list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    cost_usd: f64,
    duration_seconds: i64,
    org_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pause_reason: Option<&'static str>,
    provider_id: &'static str,
    repo_url: &'a str,
    session_id: Uuid,
    started_at: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_summary: Option<String>,
}

impl<'a> SessionSummary<'a> {
    pub fn new(s: &'a Session, paused_for_budget: bool, now: Millis) -> Self {
        Self {
            completed_at: s.completed_at.map(timestamp),
            cost_usd: s.usage.cost_usd,
            duration_seconds: s.duration_seconds(now),
            org_id: &s.org_id,
            pause_reason: pause_reason(s, paused_for_budget),
            provider_id: s.provider.as_str(),
            repo_url: &s.repo.url,
            session_id: s.id,
            started_at: timestamp(s.created_at),
            state: s.state.as_str(),
            task_summary: s.task_summary(),
        }
    }
}

/// A session's detail. Written straight to JSON: the create path is hot enough that building a
/// `Value` tree first showed in profiles.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    cost_usd: f64,
    duration_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    options: DetailOptions<'a>,
    org_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pause_reason: Option<&'static str>,
    pending_approvals: Vec<ApprovalRequest<'a>>,
    provider_id: &'static str,
    recent_events: Vec<RecentEvent<'a>>,
    repo: DetailRepo<'a>,
    repo_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<Uuid>,
    session_id: Uuid,
    started_at: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_summary: Option<String>,
    updated_at: String,
    usage: DetailUsage,
    workspace: Workspace,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailOptions<'a> {
    dangerously_skip_permissions: bool,
    /// Values masked (`***`), except in the detail a runner receives with its assignment.
    env: BTreeMap<String, &'a str>,
    required_features: &'a [String],
    timeout_minutes: f64,
}

#[derive(Debug, Serialize)]
struct RecentEvent<'a> {
    summary: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Debug, Serialize)]
struct DetailRepo<'a> {
    branch: &'a str,
    commit: &'a str,
    url: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailUsage {
    api_calls: u64,
    compute_seconds: f64,
    cost_usd: f64,
    tokens_in: u64,
    tokens_out: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Workspace {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
}

impl<'a> SessionDetail<'a> {
    /// The detail a client sees: env values masked.
    pub fn new(v: &'a SessionView, now: Millis) -> Self {
        Self::with_env(v, now, masked_env(&v.session.options.env))
    }

    /// The detail a runner receives with its assignment: env values as given.
    pub fn for_runner(v: &'a SessionView, now: Millis) -> Self {
        let env = v
            .session
            .options
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str()))
            .collect();
        Self::with_env(v, now, env)
    }

    fn with_env(v: &'a SessionView, now: Millis, env: BTreeMap<String, &'a str>) -> Self {
        let s = &v.session;
        Self {
            completed_at: s.completed_at.map(timestamp),
            cost_usd: s.usage.cost_usd,
            duration_seconds: s.duration_seconds(now),
            end_reason: s.end_reason.as_deref(),
            error: s.error.as_deref(),
            options: DetailOptions {
                dangerously_skip_permissions: s.options.dangerously_skip_permissions,
                env,
                required_features: &s.options.required_features,
                timeout_minutes: s.timeout_ms as f64 / 60_000.0,
            },
            org_id: &s.org_id,
            pause_reason: pause_reason(s, v.paused_for_budget),
            pending_approvals: v
                .pending_approvals
                .iter()
                .map(ApprovalRequest::from)
                .collect(),
            provider_id: s.provider.as_str(),
            recent_events: v
                .recent_events
                .iter()
                .map(|e| RecentEvent {
                    summary: &e.summary,
                    timestamp: timestamp(e.at),
                    kind: &e.kind,
                })
                .collect(),
            repo: DetailRepo {
                branch: &s.repo.branch,
                commit: &s.repo.commit,
                url: &s.repo.url,
            },
            repo_url: &s.repo.url,
            runner_id: s.runner_id,
            session_id: s.id,
            started_at: timestamp(s.created_at),
            state: s.state.as_str(),
            task: s.task.as_deref(),
            task_summary: s.task_summary(),
            updated_at: timestamp(s.updated_at),
            usage: DetailUsage {
                api_calls: s.usage.api_calls,
                compute_seconds: s.usage.compute_seconds,
                cost_usd: s.usage.cost_usd,
                tokens_in: s.usage.tokens_in,
                tokens_out: s.usage.tokens_out,
            },
            workspace: Workspace {
                path: s.workspace_path(),
                size_bytes: s.workspace_size_bytes,
            },
        }
    }
}

/// Why a PAUSED_BY_HUMAN session is paused: a budget limit, or a person (absent otherwise).
fn pause_reason(s: &Session, paused_for_budget: bool) -> Option<&'static str> {
    match (s.state, paused_for_budget) {
        (SessionState::PausedByHuman, true) => Some("budget"),
        (SessionState::PausedByHuman, false) => Some("human"),
        _ => None,
    }
}

/// An approval as it was asked for (pending ones; the answer to the request).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest<'a> {
    action: &'static str,
    approval_id: Uuid,
    /// What the runner attached, as it sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
    /// Only when it is already decided: the org's approval policy decided it as it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'static str>,
    description: &'a str,
    expires_at: String,
    requested_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_by: Option<&'a str>,
    session_id: Uuid,
}

impl<'a> From<&'a Approval> for ApprovalRequest<'a> {
    fn from(a: &'a Approval) -> Self {
        let r = a.resolution.as_ref();
        Self {
            action: a.action.as_str(),
            approval_id: a.id,
            context: stored_json(a.context_json.as_deref()),
            decision: r.map(|r| r.decision.as_str()),
            description: &a.description,
            expires_at: timestamp(a.expires_at),
            requested_at: timestamp(a.requested_at),
            resolved_by: r.map(|r| r.resolved_by.as_str()),
            session_id: a.session_id,
        }
    }
}

/// An approval with its decision, when it has one (resolved ones).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalResponse<'a> {
    action: &'static str,
    approval_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_by: Option<&'a str>,
    /// Only when the decider gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'static str>,
    session_id: Uuid,
}

impl<'a> From<&'a Approval> for ApprovalResponse<'a> {
    fn from(a: &'a Approval) -> Self {
        let r = a.resolution.as_ref();
        Self {
            action: a.action.as_str(),
            approval_id: a.id,
            decision: r.map(|r| r.decision.as_str()),
            reason: r.and_then(|r| r.reason.as_deref()),
            resolved_at: r.map(|r| timestamp(r.resolved_at)),
            resolved_by: r.map(|r| r.resolved_by.as_str()),
            scope: r.and_then(|r| r.scope).map(ApprovalScope::as_str),
            session_id: a.session_id,
        }
    }
}

/// A session's approvals, pending and resolved.
#[derive(Debug, Serialize)]
pub struct Approvals<'a> {
    pending: Vec<ApprovalRequest<'a>>,
    resolved: Vec<ApprovalResponse<'a>>,
}

impl<'a> Approvals<'a> {
    pub fn new(
        pending: impl IntoIterator<Item = &'a Approval>,
        resolved: impl IntoIterator<Item = &'a Approval>,
    ) -> Self {
        Self {
            pending: pending.into_iter().map(ApprovalRequest::from).collect(),
            resolved: resolved.into_iter().map(ApprovalResponse::from).collect(),
        }
    }
}

/// A chunk of terminal output.
#[derive(Debug, Serialize)]
pub struct Output<'a> {
    data: &'a str,
    seq: u64,
    stream: &'static str,
    timestamp: String,
}

impl<'a> From<&'a OutputChunk> for Output<'a> {
    fn from(c: &'a OutputChunk) -> Self {
        Self {
            data: &c.data,
            seq: c.seq,
            stream: c.stream.as_str(),
            timestamp: timestamp(c.at),
        }
    }
}

/// The sequence number a stored chunk of output got.
#[derive(Debug, Serialize)]
pub struct OutputAppended {
    seq: u64,
}

impl OutputAppended {
    pub fn new(seq: u64) -> Self {
        Self { seq }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::check::sorted_keys;
    use super::*;
    use crate::sessions::model::*;

    fn view(id: Uuid, runner: Uuid) -> SessionView {
        let session = Session {
            id,
            org_id: "acme".into(),
            provider: Provider::ClaudeCode,
            repo: Repo {
                url: "https://example.com/a.git".into(),
                branch: "main".into(),
                commit: "abc".into(),
            },
            task: Some("fix \"it\"".into()),
            options: SessionOptions {
                timeout_minutes: Some(1.5),
                env: [("TOKEN".to_string(), "secret".to_string())].into(),
                dangerously_skip_permissions: true,
                required_features: vec!["gpu".into()],
            },
            state: SessionState::Completed,
            created_at: 1_700_000_000_000,
            started_running_at: Some(1_700_000_001_000),
            completed_at: Some(1_700_000_061_500),
            end_reason: Some("done".into()),
            error: Some("none".into()),
            runner_id: Some(runner),
            assignment_id: None,
            assigned_at: None,
            runner_history: vec![runner],
            usage: Usage {
                tokens_in: 1,
                tokens_out: 2,
                api_calls: 3,
                compute_seconds: 4.25,
                cost_usd: 0.37,
            },
            timeout_ms: 90_000,
            output_bytes: 0,
            workspace_size_bytes: Some(4096),
            updated_at: 1_700_000_062_000,
        };
        SessionView {
            session,
            recent_events: vec![SessionEvent {
                seq: 1,
                kind: "session_created".into(),
                summary: "Session created".into(),
                at: 1_700_000_000_000,
                data_json: None,
            }],
            pending_approvals: Vec::new(),
            paused_for_budget: false,
        }
    }

    fn approval(resolution: Option<Resolution>, context: Option<&str>) -> Approval {
        Approval {
            id: Uuid::from_u128(3),
            seq: 1,
            session_id: Uuid::from_u128(7),
            action: ApprovalAction::Deploy,
            description: "ship".into(),
            context_json: context.map(str::to_owned),
            requested_at: 1_700_000_000_000,
            expires_at: 1_700_000_300_000,
            resolution,
        }
    }

    /// The typed detail writes exactly what the `Value` it replaced did: same keys, same
    /// values, keys in sorted order (a `json!` map sorts its keys).
    #[test]
    fn session_detail_bytes() {
        let id = Uuid::from_u128(7);
        let runner = Uuid::from_u128(9);
        let view = view(id, runner);
        let expected = json!({
            "sessionId": id,
            "orgId": "acme",
            "state": "COMPLETED",
            "providerId": "claude_code",
            "repoUrl": "https://example.com/a.git",
            "startedAt": "2023-11-14T22:13:20.000Z",
            "completedAt": "2023-11-14T22:14:21.500Z",
            "costUsd": 0.37,
            "durationSeconds": 61,
            "taskSummary": "fix \"it\"",
            "repo": {"url": "https://example.com/a.git", "branch": "main", "commit": "abc"},
            "task": "fix \"it\"",
            "workspace": {"path": format!("workspaces/{id}"), "sizeBytes": 4096},
            "usage": {"tokensIn": 1, "tokensOut": 2, "apiCalls": 3, "computeSeconds": 4.25, "costUsd": 0.37},
            "recentEvents": [{
                "type": "session_created",
                "timestamp": "2023-11-14T22:13:20.000Z",
                "summary": "Session created",
            }],
            "pendingApprovals": [],
            "runnerId": runner,
            "endReason": "done",
            "error": "none",
            "options": {
                "timeoutMinutes": 1.5,
                "env": {"TOKEN": "***"},
                "dangerouslySkipPermissions": true,
                "requiredFeatures": ["gpu"],
            },
            "updatedAt": "2023-11-14T22:14:22.000Z",
        });
        let typed = serde_json::to_string(&SessionDetail::new(&view, 0)).unwrap();
        assert_eq!(typed, super::super::text(expected.clone()));
        assert_eq!(
            super::super::to_value(&SessionDetail::new(&view, 0)),
            expected
        );

        let mut for_runner = expected;
        for_runner["options"]["env"] = json!({"TOKEN": "secret"});
        let typed = serde_json::to_string(&SessionDetail::for_runner(&view, 0)).unwrap();
        assert_eq!(typed, super::super::text(for_runner));
    }

    #[test]
    fn keys_in_wire_order() {
        let mut v = view(Uuid::from_u128(1), Uuid::from_u128(2));
        v.pending_approvals = vec![approval(None, Some(r#"{"b":1,"a":[true]}"#))];
        sorted_keys(&SessionDetail::new(&v, 0));
        sorted_keys(&SessionSummary::new(&v.session, false, 0));
        v.session.completed_at = None;
        v.session.task = None;
        v.session.runner_id = None;
        v.session.workspace_size_bytes = None;
        v.session.state = SessionState::PausedByHuman;
        v.paused_for_budget = true;
        sorted_keys(&SessionDetail::new(&v, 0));
        sorted_keys(&SessionSummary::new(&v.session, true, 0));

        let resolved = approval(
            Some(Resolution {
                decision: Decision::Allow,
                reason: Some("fine".into()),
                resolved_at: 1_700_000_001_000,
                resolved_by: "admin".into(),
                scope: Some(ApprovalScope::Session),
            }),
            None,
        );
        assert_eq!(
            serde_json::to_string(&ApprovalResponse::from(&resolved)).unwrap(),
            concat!(
                r#"{"action":"deploy","approvalId":"00000000-0000-0000-0000-000000000003","#,
                r#""decision":"allow","reason":"fine","resolvedAt":"2023-11-14T22:13:21.000Z","#,
                r#""resolvedBy":"admin","scope":"session","#,
                r#""sessionId":"00000000-0000-0000-0000-000000000007"}"#
            )
        );
        let pending = approval(None, Some(r#"{"z":{"y":1,"x":2}}"#));
        sorted_keys(&Approvals::new([&pending], [&resolved, &pending]));
        assert_eq!(
            serde_json::to_string(&ApprovalResponse::from(&pending)).unwrap(),
            r#"{"action":"deploy","approvalId":"00000000-0000-0000-0000-000000000003","sessionId":"00000000-0000-0000-0000-000000000007"}"#
        );

        let chunk = OutputChunk {
            seq: 4,
            stream: OutputStream::Stderr,
            data: "x".into(),
            at: 0,
            offset: 0,
        };
        sorted_keys(&Output::from(&chunk));
        sorted_keys(&OutputAppended::new(4));
    }
}
