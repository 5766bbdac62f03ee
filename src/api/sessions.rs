//! `/api/v1/sessions/...` (contract §3).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value, json};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, path_id};
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::Caller;
use crate::clock::Millis;
use crate::error::{DomainError, Entity};
use crate::paging::Page;
use crate::sessions::model::*;
use crate::sessions::{
    MAX_ENV_ENTRIES, MAX_OUTPUT_BYTES, MAX_PAGE_LIMIT, MAX_TASK_BYTES, NewApproval, NewSession,
    SessionFilter, SessionView, UsageUpdate, masked_env, timestamp,
};

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let sessions = path!("sessions").and(
        warp::post()
            .and(p())
            .and(json_body())
            .then(create)
            .or(warp::get().and(p()).and(query()).then(list))
            .unify(),
    );
    let one = path!("sessions" / String)
        .and(warp::get())
        .and(p())
        .then(get);
    let stop = path!("sessions" / String / "stop")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(stop);
    let pause = path!("sessions" / String / "pause")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(pause);
    let resume = path!("sessions" / String / "resume")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(resume);
    let approvals = path!("sessions" / String / "approvals")
        .and(warp::get())
        .and(p())
        .then(list_approvals)
        .or(path!("sessions" / String / "approvals")
            .and(warp::post())
            .and(p())
            .and(json_body())
            .then(request_approval))
        .unify();
    let resolve = path!("sessions" / String / "approvals" / String / "resolve")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(resolve_approval);
    let events = path!("sessions" / String / "events")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(events);
    let output = path!("sessions" / String / "output")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(output)
        .or(path!("sessions" / String / "output")
            .and(warp::post())
            .and(p())
            .and(json_body())
            .then(append_output))
        .unify();
    let state = path!("sessions" / String / "state")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(report_state);
    let usage = path!("sessions" / String / "usage")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(usage);
    sessions
        .or(one)
        .unify()
        .or(stop)
        .unify()
        .or(pause)
        .unify()
        .or(resume)
        .unify()
        .or(approvals)
        .unify()
        .or(resolve)
        .unify()
        .or(events)
        .unify()
        .or(output)
        .unify()
        .or(state)
        .unify()
        .or(usage)
        .unify()
        .boxed()
}

fn session_id(raw: &str) -> Result<uuid::Uuid, super::error::ApiError> {
    path_id(raw, DomainError::NotFound(Entity::Session))
}

async fn create(p: Caller, st: AppState, body: Body) -> ApiResult {
    // An admin must name the org; an org token acts on its own.
    let new = parse_new_session(&body, p.kind == crate::auth::TokenKind::Admin)?;
    let view = st.sessions.create(&p, new).await?;
    detail_reply(StatusCode::CREATED, &view, st.sessions.now())
}

fn parse_new_session(body: &Body, org_required: bool) -> Result<NewSession, DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let org_id = r.string(&root, "orgId", org_required).map(str::to_owned);
    if let Some(org) = &org_id
        && !crate::auth::is_org_slug(org)
    {
        r.issue("orgId", "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
    }
    let provider = match r.string(&root, "providerId", true) {
        Some(s) => Provider::parse(s).or_else(|| {
            r.invalid_provider("providerId", s);
            None
        }),
        None => None,
    };
    let repo = r.object(&root, "repo", true);
    let (mut url, mut branch, mut commit) = (None, None, None);
    if let Some(repo) = &repo {
        url = r.string(repo, "url", true).map(str::to_owned);
        if let Some(u) = &url
            && !is_repository_url(u)
        {
            r.issue(
                "repo.url",
                "must be an http(s)://, ssh://, git@host:path or file:// repository URL",
            );
        }
        branch = r.string(repo, "branch", false).map(str::to_owned);
        commit = r.string(repo, "commit", false).map(str::to_owned);
        for (key, v) in [("branch", &branch), ("commit", &commit)] {
            if v.as_deref()
                .is_some_and(|s| s.trim().is_empty() || s.len() > 255)
            {
                r.issue(format!("repo.{key}"), "must be 1 to 255 characters");
            }
        }
    }
    let task = r.string(&root, "task", false).map(str::to_owned);
    if task.as_ref().is_some_and(|t| t.len() > MAX_TASK_BYTES) {
        r.issue("task", "must be at most 65536 bytes");
    }
    let mut options = SessionOptions {
        timeout_minutes: None,
        env: Default::default(),
        dangerously_skip_permissions: false,
        required_features: Vec::new(),
    };
    if let Some(o) = r.object(&root, "options", false) {
        options.timeout_minutes = r.number_in(&o, "timeoutMinutes", 1.0, 120.0);
        if let Some(env) = r.string_map(&o, "env") {
            if env.len() > MAX_ENV_ENTRIES {
                r.issue("options.env", "must have at most 64 entries");
            }
            if env
                .keys()
                .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                r.issue("options.env", "keys must be non-empty and contain no `=`");
            }
            options.env = env;
        }
        options.dangerously_skip_permissions =
            r.boolean(&o, "dangerouslySkipPermissions").unwrap_or(false);
        options.required_features = r.string_list(&o, "requiredFeatures").unwrap_or_default();
    }
    r.finish()?;
    match (provider, url) {
        (Some(provider), Some(url)) => Ok(NewSession {
            org_id,
            provider,
            repo: Repo {
                url,
                branch: branch.unwrap_or_else(|| "main".into()),
                commit: commit.unwrap_or_else(|| "HEAD".into()),
            },
            task,
            options,
        }),
        _ => Err(DomainError::invalid("", "request is incomplete")),
    }
}

/// Contract §1: `http(s)://…`, `ssh://…`, scp-style `git@host:path`, or `file://…`.
pub fn is_repository_url(u: &str) -> bool {
    if u.len() > 2048 || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let after = |prefix: &str| u.strip_prefix(prefix).filter(|rest| !rest.is_empty());
    if let Some(rest) = after("https://")
        .or_else(|| after("http://"))
        .or_else(|| after("ssh://"))
    {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit('@').next().unwrap_or("");
        return !host.is_empty() && !host.starts_with(':');
    }
    if let Some(rest) = after("file://") {
        return rest.starts_with('/') && rest.len() > 1;
    }
    // scp-style `user@host:path`
    match u.split_once(':') {
        Some((user_host, path)) => match user_host.split_once('@') {
            Some((user, host)) => {
                !user.is_empty() && !host.is_empty() && !host.contains('/') && !path.is_empty()
            }
            None => false,
        },
        None => false,
    }
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let page = q.page(&mut r);
    let state = q.get("state").and_then(|s| {
        SessionState::parse(s).or_else(|| {
            r.issue("state", format!("unknown state `{s}`"));
            None
        })
    });
    let provider = q.provider(&mut r, "providerId");
    let org_id = q.get("orgId").map(str::to_owned);
    r.finish()?;
    let filter = SessionFilter {
        org_id,
        state,
        provider,
    };
    let now = st.sessions.now();
    let page = st.sessions.list(&p, filter, page).await?;
    Ok(Success::ok(page_json(
        page.map(|s| session_summary(&s, now)),
    )))
}

async fn get(id: String, p: Caller, st: AppState) -> ApiResult {
    let view = st.sessions.get(&p, session_id(&id)?).await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

async fn stop(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let reason = r.string(&root, "reason", false).map(str::to_owned);
    if reason.as_ref().is_some_and(|s| s.len() > 1000) {
        r.issue("reason", "must be at most 1000 bytes");
    }
    r.finish()?;
    let view = st.sessions.stop(&p, session_id(&id)?, reason).await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

async fn pause(id: String, p: Caller, st: AppState, _body: Body) -> ApiResult {
    let view = st.sessions.pause(&p, session_id(&id)?).await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

async fn resume(id: String, p: Caller, st: AppState, _body: Body) -> ApiResult {
    let view = st.sessions.resume(&p, session_id(&id)?).await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

async fn list_approvals(id: String, p: Caller, st: AppState) -> ApiResult {
    let all = st.sessions.approvals(&p, session_id(&id)?).await?;
    let (mut resolved, pending): (Vec<_>, Vec<_>) =
        all.iter().partition(|a| a.resolution.is_some());
    resolved.sort_by_key(|a| (a.resolution.as_ref().map(|r| r.resolved_at), a.seq));
    Ok(Success::ok(json!({
        "pending": pending.iter().map(|a| approval_request(a)).collect::<Vec<_>>(),
        "resolved": resolved.iter().map(|a| approval_response(a)).collect::<Vec<_>>(),
    })))
}

/// `{assignmentId?, action, description, context?}` — REST body or channel frame.
pub fn parse_approval_request(
    body: &Body,
) -> Result<(Option<uuid::Uuid>, NewApproval), DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let assignment = r.uuid(&root, "assignmentId", false);
    let action = r.string(&root, "action", true).and_then(|a| {
        ApprovalAction::parse(a).or_else(|| {
            r.issue("action", "must be one of merge, deps_add, secrets, deploy");
            None
        })
    });
    let description = r.string(&root, "description", true).map(str::to_owned);
    if description
        .as_ref()
        .is_some_and(|d| d.trim().is_empty() || d.len() > 10_000)
    {
        r.issue("description", "must be 1 to 10000 bytes");
    }
    let context = r.any(&root, "context").cloned();
    r.finish()?;
    match (action, description) {
        (Some(action), Some(description)) => Ok((
            assignment,
            NewApproval {
                action,
                description,
                context,
            },
        )),
        _ => Err(DomainError::invalid("", "request is incomplete")),
    }
}

async fn request_approval(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let (assignment, ask) = parse_approval_request(&body)?;
    let approval = st
        .sessions
        .request_approval(&p, session_id(&id)?, assignment, ask)
        .await?;
    Ok(Success::created(approval_request(&approval)))
}

async fn resolve_approval(
    id: String,
    approval: String,
    p: Caller,
    st: AppState,
    body: Body,
) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let decision = r.string(&root, "decision", true).and_then(|d| {
        Decision::parse(d).or_else(|| {
            r.issue("decision", "must be allow or deny");
            None
        })
    });
    let reason = r.string(&root, "reason", false).map(str::to_owned);
    r.finish()?;
    let Some(decision) = decision else {
        return Err(DomainError::invalid("decision", "is required").into());
    };
    let session = session_id(&id)?;
    let approval = path_id(&approval, DomainError::NotFound(Entity::Approval))?;
    let view = st
        .sessions
        .resolve_approval(&p, session, approval, decision, reason)
        .await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

/// `afterSeq` and `limit` of the sequence-numbered reads.
fn seq_window(q: &HashMap<String, String>) -> Result<(u64, u64), DomainError> {
    let q = Query { params: q };
    let mut r = Reader::new();
    let after = q.whole(&mut r, "afterSeq", 0, u64::MAX - 1, 0);
    let limit = q.whole(&mut r, "limit", 1, MAX_PAGE_LIMIT, 100);
    r.finish()?;
    Ok((after, limit))
}

async fn events(id: String, p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let (after, limit) = seq_window(&q)?;
    let items = st
        .sessions
        .events(&p, session_id(&id)?, after, limit)
        .await?;
    let next = items.last().map_or(after, |e| e.seq);
    Ok(Success::ok(json!({
        "items": items.iter().map(event_json).collect::<Vec<_>>(),
        "nextSeq": next,
    })))
}

async fn output(id: String, p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let (after, limit) = seq_window(&q)?;
    let items = st
        .sessions
        .output(&p, session_id(&id)?, after, limit)
        .await?;
    let next = items.last().map_or(after, |c| c.seq);
    Ok(Success::ok(json!({
        "items": items.iter().map(output_json).collect::<Vec<_>>(),
        "nextSeq": next,
    })))
}

/// A chunk of terminal output as a runner reports it.
pub struct OutputReport {
    pub assignment: Option<uuid::Uuid>,
    pub stream: OutputStream,
    pub data: String,
    pub offset: Option<u64>,
}

pub fn parse_output(body: &Body) -> Result<OutputReport, DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let assignment = r.uuid(&root, "assignmentId", false);
    let stream = r.string(&root, "stream", true).and_then(|s| {
        OutputStream::parse(s).or_else(|| {
            r.issue("stream", "must be stdout or stderr");
            None
        })
    });
    let data = r.string(&root, "data", true).map(str::to_owned);
    match &data {
        Some(d) if d.is_empty() => r.issue("data", "must not be empty"),
        Some(d) if d.len() > MAX_OUTPUT_BYTES => r.issue("data", "must be at most 262144 bytes"),
        _ => {}
    }
    let offset = r.count(&root, "offset");
    r.finish()?;
    match (stream, data) {
        (Some(stream), Some(data)) => Ok(OutputReport {
            assignment,
            stream,
            data,
            offset,
        }),
        _ => Err(DomainError::invalid("", "request is incomplete")),
    }
}

async fn append_output(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let o = parse_output(&body)?;
    let seq = st
        .sessions
        .append_output(
            &p,
            session_id(&id)?,
            o.assignment,
            o.stream,
            o.data,
            o.offset,
        )
        .await?;
    Ok(Success::ok(json!({ "seq": seq })))
}

/// `{assignmentId?, state, error?}`.
pub fn parse_state_report(
    body: &Body,
) -> Result<(Option<uuid::Uuid>, SessionState, Option<String>), DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let assignment = r.uuid(&root, "assignmentId", false);
    let state = r.string(&root, "state", true).and_then(|s| {
        SessionState::parse(s).or_else(|| {
            r.issue("state", format!("unknown state `{s}`"));
            None
        })
    });
    let error = r
        .string(&root, "error", false)
        .map(|e| e.chars().take(4000).collect::<String>());
    r.finish()?;
    let state = state.ok_or_else(|| DomainError::invalid("state", "is required"))?;
    Ok((assignment, state, error))
}

async fn report_state(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let (assignment, state, error) = parse_state_report(&body)?;
    let view = st
        .sessions
        .report_state(&p, session_id(&id)?, assignment, state, error)
        .await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

/// `{assignmentId?, tokensIn?, tokensOut?, apiCalls?, computeSeconds?}`.
pub fn parse_usage(body: &Body) -> Result<(Option<uuid::Uuid>, UsageUpdate), DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let assignment = r.uuid(&root, "assignmentId", false);
    let update = UsageUpdate {
        tokens_in: r.count(&root, "tokensIn"),
        tokens_out: r.count(&root, "tokensOut"),
        api_calls: r.count(&root, "apiCalls"),
        compute_seconds: r.number_in(&root, "computeSeconds", 0.0, 1.0e12),
    };
    r.finish()?;
    Ok((assignment, update))
}

async fn usage(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let (assignment, update) = parse_usage(&body)?;
    let view = st
        .sessions
        .update_usage(&p, session_id(&id)?, assignment, update)
        .await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

// ---- wire shapes -------------------------------------------------------------------------

fn put_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.into(), v);
    }
}

pub fn page_json(page: Page<Value>) -> Value {
    json!({
        "items": page.items,
        "total": page.total,
        "page": page.page,
        "pageSize": page.page_size,
        "hasMore": page.has_more,
    })
}

fn summary_map(s: &Session, now: Millis) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("sessionId".into(), json!(s.id));
    m.insert("orgId".into(), json!(s.org_id));
    m.insert("state".into(), json!(s.state.as_str()));
    m.insert("providerId".into(), json!(s.provider.as_str()));
    m.insert("repoUrl".into(), json!(s.repo.url));
    m.insert("startedAt".into(), json!(timestamp(s.created_at)));
    put_opt(
        &mut m,
        "completedAt",
        s.completed_at.map(|t| json!(timestamp(t))),
    );
    m.insert("durationSeconds".into(), json!(s.duration_seconds(now)));
    put_opt(&mut m, "taskSummary", s.task_summary().map(Value::from));
    m
}

pub fn session_summary(s: &Session, now: Millis) -> Value {
    Value::Object(summary_map(s, now))
}

/// A session's detail (contract §3), written straight to JSON: the create path is hot enough
/// that building a `Value` tree first showed in profiles. Fields are in key order, so the bytes
/// are those a `serde_json::Map` (sorted keys) would give.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetail<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    duration_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    options: DetailOptions<'a>,
    org_id: &'a str,
    pending_approvals: Vec<Value>,
    provider_id: &'static str,
    recent_events: Vec<RecentEvent<'a>>,
    repo: DetailRepo<'a>,
    repo_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<uuid::Uuid>,
    session_id: uuid::Uuid,
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailOptions<'a> {
    dangerously_skip_permissions: bool,
    env: BTreeMap<String, &'static str>,
    required_features: &'a [String],
    timeout_minutes: f64,
}

#[derive(Serialize)]
struct RecentEvent<'a> {
    summary: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Serialize)]
struct DetailRepo<'a> {
    branch: &'a str,
    commit: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailUsage {
    api_calls: u64,
    compute_seconds: f64,
    tokens_in: u64,
    tokens_out: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Workspace {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
}

impl<'a> SessionDetail<'a> {
    pub fn new(v: &'a SessionView, now: Millis) -> Self {
        let s = &v.session;
        Self {
            completed_at: s.completed_at.map(timestamp),
            duration_seconds: s.duration_seconds(now),
            end_reason: s.end_reason.as_deref(),
            error: s.error.as_deref(),
            options: DetailOptions {
                dangerously_skip_permissions: s.options.dangerously_skip_permissions,
                env: masked_env(&s.options.env),
                required_features: &s.options.required_features,
                timeout_minutes: s.timeout_ms as f64 / 60_000.0,
            },
            org_id: &s.org_id,
            pending_approvals: v.pending_approvals.iter().map(approval_request).collect(),
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

/// A session's detail as a response.
fn detail_reply(status: StatusCode, view: &SessionView, now: Millis) -> ApiResult {
    Success::typed(status, &SessionDetail::new(view, now))
}

pub fn session_detail(v: &SessionView, now: Millis) -> Value {
    serde_json::to_value(SessionDetail::new(v, now)).unwrap_or_default()
}

/// The detail a runner receives with its assignment: like `session_detail`, with env values.
pub fn session_detail_for_runner(v: &SessionView, now: Millis) -> Value {
    let mut detail = session_detail(v, now);
    detail["options"]["env"] = json!(v.session.options.env);
    detail
}

fn context_value(a: &Approval) -> Option<Value> {
    a.context_json
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
}

pub fn approval_request(a: &Approval) -> Value {
    let mut m = Map::new();
    m.insert("approvalId".into(), json!(a.id));
    m.insert("sessionId".into(), json!(a.session_id));
    m.insert("action".into(), json!(a.action.as_str()));
    m.insert("description".into(), json!(a.description));
    m.insert("requestedAt".into(), json!(timestamp(a.requested_at)));
    m.insert("expiresAt".into(), json!(timestamp(a.expires_at)));
    put_opt(&mut m, "context", context_value(a));
    Value::Object(m)
}

pub fn approval_response(a: &Approval) -> Value {
    let mut m = Map::new();
    m.insert("approvalId".into(), json!(a.id));
    m.insert("sessionId".into(), json!(a.session_id));
    m.insert("action".into(), json!(a.action.as_str()));
    if let Some(r) = &a.resolution {
        m.insert("decision".into(), json!(r.decision.as_str()));
        put_opt(&mut m, "reason", r.reason.clone().map(Value::from));
        m.insert("resolvedAt".into(), json!(timestamp(r.resolved_at)));
        m.insert("resolvedBy".into(), json!(r.resolved_by));
    }
    Value::Object(m)
}

fn event_json(e: &SessionEvent) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), json!(e.seq));
    m.insert("type".into(), json!(e.kind));
    m.insert("summary".into(), json!(e.summary));
    m.insert("timestamp".into(), json!(timestamp(e.at)));
    put_opt(
        &mut m,
        "data",
        e.data_json
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok()),
    );
    Value::Object(m)
}

fn output_json(c: &OutputChunk) -> Value {
    json!({
        "seq": c.seq,
        "stream": c.stream.as_str(),
        "data": c.data,
        "timestamp": timestamp(c.at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed detail writes exactly what the `Value` it replaced did: same keys, same
    /// values, keys in sorted order (a `json!` map sorts its keys).
    #[test]
    fn session_detail_bytes() {
        let id = uuid::Uuid::from_u128(7);
        let runner = uuid::Uuid::from_u128(9);
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
            },
            timeout_ms: 90_000,
            output_bytes: 0,
            workspace_size_bytes: Some(4096),
            updated_at: 1_700_000_062_000,
        };
        let view = SessionView {
            session,
            recent_events: vec![SessionEvent {
                seq: 1,
                kind: "session_created".into(),
                summary: "Session created".into(),
                at: 1_700_000_000_000,
                data_json: None,
            }],
            pending_approvals: Vec::new(),
        };
        let expected = json!({
            "sessionId": id,
            "orgId": "acme",
            "state": "COMPLETED",
            "providerId": "claude_code",
            "repoUrl": "https://example.com/a.git",
            "startedAt": "2023-11-14T22:13:20.000Z",
            "completedAt": "2023-11-14T22:14:21.500Z",
            "durationSeconds": 61,
            "taskSummary": "fix \"it\"",
            "repo": {"url": "https://example.com/a.git", "branch": "main", "commit": "abc"},
            "task": "fix \"it\"",
            "workspace": {"path": format!("workspaces/{id}"), "sizeBytes": 4096},
            "usage": {"tokensIn": 1, "tokensOut": 2, "apiCalls": 3, "computeSeconds": 4.25},
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
        assert_eq!(typed, expected.to_string());
        assert_eq!(session_detail(&view, 0), expected);
    }

    #[test]
    fn repository_urls() {
        for ok in [
            "https://github.com/acme/app.git",
            "http://git.local/x",
            "ssh://git@host/acme/app.git",
            "git@github.com:acme/app.git",
            "file:///srv/repos/app",
        ] {
            assert!(is_repository_url(ok), "{ok}");
        }
        for bad in [
            "",
            "github.com/acme/app",
            "ftp://host/x",
            "https://",
            "git@:path",
            "git@host:",
            "file://relative",
            "https://exa mple.com/x",
            "not a url",
        ] {
            assert!(!is_repository_url(bad), "{bad}");
        }
    }
}
