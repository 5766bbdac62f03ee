//! `/api/v1/sessions/...`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, path_id};
use super::wire::sessions::{
    ApprovalRequest, Approvals, Output, OutputAppended, SessionDetail, SessionSummary,
};
use super::wire::{self, Page, SeqPage};
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::Caller;
use crate::clock::Millis;
use crate::error::{DomainError, Entity};
use crate::sessions::model::*;
use crate::sessions::{
    MAX_PAGE_LIMIT, NewApproval, NewSession, SessionFilter, SessionView, UsageUpdate, rules,
    timestamp,
};

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    // The edge answers `POST /sessions` and `POST /sessions/{id}/output` before these routes
    // (`super::EdgeRoutes`); they answer the forms of those paths it leaves to the tree (a
    // trailing slash, an escaped id) the same way, through the same handlers.
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
    let recording = path!("sessions" / String / "recording")
        .and(warp::get())
        .and(p())
        .then(recording);
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
        .or(recording)
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

/// A session's detail as the response.
fn detail_reply(status: StatusCode, view: &SessionView, now: Millis) -> ApiResult {
    Success::typed(status, &SessionDetail::new(view, now))
}

pub(super) async fn create(p: Caller, st: AppState, body: Body) -> ApiResult {
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
        r.check(|issues| rules::check_repo_url(url.as_deref(), issues));
        branch = r.string(repo, "branch", false).map(str::to_owned);
        commit = r.string(repo, "commit", false).map(str::to_owned);
        r.check(|issues| rules::check_repo_refs(branch.as_deref(), commit.as_deref(), issues));
    }
    let task = r.string(&root, "task", false).map(str::to_owned);
    r.check(|issues| rules::check_task(task.as_deref(), issues));
    let mut options = SessionOptions {
        timeout_minutes: None,
        env: Default::default(),
        dangerously_skip_permissions: false,
        required_features: Vec::new(),
    };
    if let Some(o) = r.object(&root, "options", false) {
        options.timeout_minutes = r.number_in(
            &o,
            "timeoutMinutes",
            rules::MIN_TIMEOUT_MINUTES,
            rules::MAX_TIMEOUT_MINUTES,
        );
        if let Some(env) = r.string_map(&o, "env") {
            r.check(|issues| rules::check_env(&env, issues));
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
            repo: rules::repo(url, branch, commit),
            task,
            options,
        }),
        _ => Err(DomainError::invalid("", "request is incomplete")),
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
    Success::json(&Page::of(&page, |s| {
        SessionSummary::new(&s.session, s.paused_for_budget, now)
    }))
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

async fn resume(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let force = r.boolean(&root, "force").unwrap_or(false);
    r.finish()?;
    let view = st.sessions.resume(&p, session_id(&id)?, force).await?;
    detail_reply(StatusCode::OK, &view, st.sessions.now())
}

async fn list_approvals(id: String, p: Caller, st: AppState) -> ApiResult {
    let all = st.sessions.approvals(&p, session_id(&id)?).await?;
    let (mut resolved, pending): (Vec<_>, Vec<_>) =
        all.iter().partition(|a| a.resolution.is_some());
    resolved.sort_by_key(|a| (a.resolution.as_ref().map(|r| r.resolved_at), a.seq));
    Success::json(&Approvals::new(pending, resolved))
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
            r.issue(
                "action",
                "must be one of merge, deps_add, secrets, deploy, command, file_change, network, other",
            );
            None
        })
    });
    let description = r.string(&root, "description", true).map(str::to_owned);
    r.check(|issues| rules::check_approval_description(description.as_deref(), issues));
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
    // An identical pending request gets that approval back, with the same 201 a new one gets:
    // to the runner it is the answer to its request either way.
    let approval = st
        .sessions
        .request_approval(&p, session_id(&id)?, assignment, ask)
        .await?;
    Success::json_created(&ApprovalRequest::from(&approval))
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
    let scope = r.string(&root, "scope", false).and_then(|s| {
        ApprovalScope::parse(s).or_else(|| {
            r.issue("scope", "must be once or session");
            None
        })
    });
    if let Some(decision) = decision {
        r.check(|issues| rules::check_resolution(decision, scope, issues));
    }
    r.finish()?;
    let Some(decision) = decision else {
        return Err(DomainError::invalid("decision", "is required").into());
    };
    let session = session_id(&id)?;
    let approval = path_id(&approval, DomainError::NotFound(Entity::Approval))?;
    let view = st
        .sessions
        .resolve_approval(&p, session, approval, decision, reason, scope)
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
    Success::json(&SeqPage::new(items.iter().map(event_json).collect(), next))
}

async fn output(id: String, p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let (after, limit) = seq_window(&q)?;
    let items = st
        .sessions
        .output(&p, session_id(&id)?, after, limit)
        .await?;
    let next = items.last().map_or(after, |c| c.seq);
    Success::json(&SeqPage::new(
        items.iter().map(Output::from).collect(),
        next,
    ))
}

/// The session's output and timeline as an asciicast file, streamed (`api/recording.rs`).
async fn recording(id: String, p: Caller, st: AppState) -> ApiResult {
    let (start, reader) = st.sessions.recording(&p, session_id(&id)?).await?;
    Ok(Success::Raw(super::recording::response(&start, reader)))
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
        Some(d) => r.check(|issues| rules::check_output(d, issues)),
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

pub(super) async fn append_output(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
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
    Success::json(&OutputAppended::new(seq))
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

/// `{assignmentId?, tokensIn?, tokensOut?, apiCalls?, computeSeconds?, costUsd?}`.
pub fn parse_usage(body: &Body) -> Result<(Option<uuid::Uuid>, UsageUpdate), DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let assignment = r.uuid(&root, "assignmentId", false);
    let update = UsageUpdate {
        tokens_in: r.count(&root, "tokensIn"),
        tokens_out: r.count(&root, "tokensOut"),
        api_calls: r.count(&root, "apiCalls"),
        compute_seconds: r.number_in(&root, "computeSeconds", 0.0, rules::MAX_COMPUTE_SECONDS),
        cost_usd: r.number_in(&root, "costUsd", 0.0, rules::MAX_COST_USD),
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

// ---- shapes the runner channel sends ------------------------------------------------------

/// An approval as the runner channel acknowledges it.
pub fn approval_request(a: &Approval) -> Value {
    wire::to_value(&ApprovalRequest::from(a))
}

/// The detail a runner receives with its assignment: like the client's, with env values.
pub fn session_detail_for_runner(v: &SessionView, now: Millis) -> Value {
    wire::to_value(&SessionDetail::for_runner(v, now))
}

/// A stored session event. It stays a `Value` built here: its `data` is free-form JSON, and
/// the event's shape goes with the domain event type rather than with the REST wire types.
fn event_json(e: &SessionEvent) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), json!(e.seq));
    m.insert("type".into(), json!(e.kind));
    m.insert("summary".into(), json!(e.summary));
    m.insert("timestamp".into(), json!(timestamp(e.at)));
    if let Some(data) = wire::stored_json(e.data_json.as_deref()) {
        m.insert("data".into(), data);
    }
    let mut event = Value::Object(m);
    event.sort_all_objects();
    event
}
