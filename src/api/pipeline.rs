//! `/api/v1/providers/…/versions`, `/builds`, `/rollouts`, `/orgs/{orgId}/runtime-config`.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, org_path, path_id, path_text};
use super::wire::Page;
use super::wire::pipeline::{Build, OrgConfig, Rollout, Version};
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::Caller;
use crate::clock::parse_rfc3339;
use crate::error::{DomainError, Entity};
use crate::pipeline::model::{
    BuildStatus, Channel, MAX_LABEL_CHARS, NewBuild, OrgRuntimeConfig, Recommendation,
    RolloutState, RolloutVerb, is_label,
};
use crate::pipeline::{BuildFilter, RolloutFilter};
use crate::sessions::model::Provider;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let versions = path!("providers" / String / "versions")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(list_versions);
    let add_version = path!("providers" / String / "versions")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(register_version);
    let canary = path!("providers" / String / "versions" / String / "canary")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(set_canary);
    let add_build = path!("builds")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(register_build);
    let builds = path!("builds")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(list_builds);
    let build = path!("builds" / String)
        .and(warp::get())
        .and(p())
        .then(get_build);
    let build_status = path!("builds" / String / "status")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(set_build_status);
    let add_rollout = path!("rollouts")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(create_rollout);
    let rollouts = path!("rollouts")
        .and(warp::get())
        .and(p())
        .and(query())
        .then(list_rollouts);
    let rollout = path!("rollouts" / String)
        .and(warp::get())
        .and(p())
        .then(get_rollout);
    let verb = path!("rollouts" / String / String)
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(rollout_verb);
    let get_config = path!("orgs" / String / "runtime-config")
        .and(warp::get())
        .and(p())
        .then(get_org_config);
    let put_config = path!("orgs" / String / "runtime-config")
        .and(warp::put())
        .and(p())
        .and(json_body())
        .then(put_org_config);
    versions
        .or(add_version)
        .unify()
        .or(canary)
        .unify()
        .or(add_build)
        .unify()
        .or(builds)
        .unify()
        .or(build)
        .unify()
        .or(build_status)
        .unify()
        .or(add_rollout)
        .unify()
        .or(rollouts)
        .unify()
        .or(rollout)
        .unify()
        .or(verb)
        .unify()
        .or(get_config)
        .unify()
        .or(put_config)
        .unify()
        .boxed()
}

fn provider(raw: &str) -> Result<Provider, DomainError> {
    Provider::parse(raw).ok_or_else(|| DomainError::InvalidProvider(raw.to_owned()))
}

fn label(r: &mut Reader, value: Option<&str>, path: &str) -> Option<String> {
    let v = value?;
    if is_label(v) {
        Some(v.to_owned())
    } else {
        r.issue(
            path,
            format!("must be 1 to {MAX_LABEL_CHARS} characters of letters, digits and . _ + - : ~"),
        );
        None
    }
}

fn time(r: &mut Reader, value: Option<&str>, path: &str) -> Option<i64> {
    let v = value?;
    parse_rfc3339(v).or_else(|| {
        r.issue(path, "must be an RFC 3339 timestamp");
        None
    })
}

// ---- versions -------------------------------------------------------------------------------

async fn list_versions(
    provider_id: String,
    p: Caller,
    st: AppState,
    q: HashMap<String, String>,
) -> ApiResult {
    let provider = provider(&provider_id)?;
    let q = Query { params: &q };
    let mut r = Reader::new();
    let channel = q.parsed(
        &mut r,
        "channel",
        Channel::parse,
        "must be stable, beta or pinned",
    );
    let limit = q.whole(&mut r, "limit", 1, 1000, 100);
    r.finish()?;
    let items = st
        .pipeline
        .versions(&p, provider, channel, limit as usize)?;
    Success::json(&items.iter().map(Version::from).collect::<Vec<_>>())
}

async fn register_version(provider_id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let provider = provider(&provider_id)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let raw = r.string(&root, "version", true);
    let version = label(&mut r, raw, "version");
    let raw = r.string(&root, "releasedAt", false);
    let released_at = time(&mut r, raw, "releasedAt");
    let source_url = r.string(&root, "sourceUrl", false).map(str::to_owned);
    if source_url
        .as_deref()
        .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2048)
    {
        r.issue(
            "sourceUrl",
            "must be an http(s) URL of at most 2048 characters",
        );
    }
    r.finish()?;
    let version = version.ok_or_else(|| DomainError::invalid("version", "is required"))?;
    let (view, created) = st
        .pipeline
        .register_version(&p, provider, version, released_at, source_url)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Success::typed(status, &Version::from(&view))
}

async fn set_canary(
    provider_id: String,
    version: String,
    p: Caller,
    st: AppState,
    body: Body,
) -> ApiResult {
    let provider = provider(&provider_id)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let passed = r.boolean(&root, "passed");
    if passed.is_none() && r.any(&root, "passed").is_none() {
        r.issue("passed", "is required");
    }
    r.finish()?;
    let passed = passed.ok_or_else(|| DomainError::invalid("passed", "is required"))?;
    let version = path_text(&version).ok_or(DomainError::NotFound(Entity::Version))?;
    let view = st
        .pipeline
        .set_canary(&p, provider, version, passed)
        .await?;
    Success::json(&Version::from(&view))
}

// ---- builds ---------------------------------------------------------------------------------

fn parse_build(body: &Body) -> Result<NewBuild, DomainError> {
    let mut r = Reader::new();
    let root = r.root(body);
    let raw = r.string(&root, "buildId", true);
    let build_id = label(&mut r, raw, "buildId");
    let raw = r.string(&root, "runnerVersion", true);
    let runner_version = label(&mut r, raw, "runnerVersion");
    let raw = r.string(&root, "builtAt", true);
    let built_at = time(&mut r, raw, "builtAt");
    let versions = r.string_map(&root, "runtimeVersions");
    if versions.is_none() && r.any(&root, "runtimeVersions").is_none() {
        r.issue("runtimeVersions", "is required");
    }
    let versions: BTreeMap<String, String> = versions.unwrap_or_default();
    for (name, version) in &versions {
        if Provider::parse(name).is_none() {
            r.invalid_provider(&format!("runtimeVersions.{name}"), name);
        } else if !is_label(version) {
            r.issue(
                format!("runtimeVersions.{name}"),
                format!("must be a version of 1 to {MAX_LABEL_CHARS} characters"),
            );
        }
    }
    let metadata = match r.any(&root, "metadata") {
        Some(Value::Object(m)) => Some(Value::Object(m.clone()).to_string()),
        Some(Value::Null) | None => None,
        Some(_) => {
            r.issue("metadata", "must be an object");
            None
        }
    };
    r.finish()?;
    match (build_id, runner_version, built_at) {
        (Some(build_id), Some(runner_version), Some(built_at)) => Ok(NewBuild {
            build_id,
            runner_version,
            built_at,
            runtime_versions: versions,
            metadata_json: metadata,
        }),
        _ => Err(DomainError::invalid("", "request is incomplete")),
    }
}

async fn register_build(p: Caller, st: AppState, body: Body) -> ApiResult {
    let build = parse_build(&body)?;
    let record = st.pipeline.register_build(&p, build).await?;
    Success::json_created(&Build::from(&record))
}

async fn list_builds(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let page = q.page(&mut r);
    let status = q.parsed(
        &mut r,
        "status",
        BuildStatus::parse,
        "must be testing, known_good, known_bad or deprecated",
    );
    let provider = q.provider(&mut r, "providerId");
    r.finish()?;
    let page = st
        .pipeline
        .builds(&p, &BuildFilter { status, provider }, page)?;
    Success::json(&Page::of(&page, Build::from))
}

fn build_path(raw: &str) -> Result<String, DomainError> {
    path_text(raw).ok_or(DomainError::NotFound(Entity::Build))
}

async fn get_build(id: String, p: Caller, st: AppState) -> ApiResult {
    let id = build_path(&id)?;
    Success::json(&Build::from(&st.pipeline.build(&p, &id)?))
}

async fn set_build_status(id: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let id = build_path(&id)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let status = r.string(&root, "status", true).and_then(|s| {
        BuildStatus::parse(s).or_else(|| {
            r.issue(
                "status",
                "must be testing, known_good, known_bad or deprecated",
            );
            None
        })
    });
    let recommendation = r.string(&root, "recommendation", false).and_then(|s| {
        Recommendation::parse(s).or_else(|| {
            r.issue(
                "recommendation",
                "must be recommended, acceptable, not_recommended or blocked",
            );
            None
        })
    });
    r.finish()?;
    let status = status.ok_or_else(|| DomainError::invalid("status", "is required"))?;
    let record = st
        .pipeline
        .set_build_status(&p, id, status, recommendation)
        .await?;
    Success::json(&Build::from(&record))
}

// ---- rollouts -------------------------------------------------------------------------------

fn rollout_id(raw: &str) -> Result<uuid::Uuid, super::error::ApiError> {
    path_id(raw, DomainError::NotFound(Entity::Rollout))
}

async fn create_rollout(p: Caller, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let build_id = r.string(&root, "buildId", true).map(str::to_owned);
    let channel = r.string(&root, "channel", true).and_then(|c| {
        Channel::parse(c).or_else(|| {
            r.issue("channel", "must be stable or beta");
            None
        })
    });
    if channel == Some(Channel::Pinned) {
        r.issue(
            "channel",
            "pinned orgs move only when their config changes: roll out on stable or beta",
        );
    }
    let stages = match r.any(&root, "stages") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_u64().filter(|n| (1..=100).contains(n)) {
                    Some(n) => out.push(n as u8),
                    None => r.issue(
                        format!("stages[{i}]"),
                        "must be a whole percentage 1 to 100",
                    ),
                }
            }
            if out.len() == items.len()
                && let Some(problem) = crate::pipeline::stage_problem(&out)
            {
                r.issue("stages", problem);
            }
            Some(out)
        }
        Some(_) => {
            r.issue("stages", "must be an array of percentages");
            None
        }
    };
    let start = r.boolean(&root, "start").unwrap_or(true);
    r.finish()?;
    let (Some(build_id), Some(channel)) = (build_id, channel) else {
        return Err(DomainError::invalid("", "request is incomplete").into());
    };
    let view = st
        .pipeline
        .create_rollout(&p, build_id, channel, stages, start)
        .await?;
    Success::json_created(&Rollout::from(&view))
}

async fn list_rollouts(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let state = q.parsed(
        &mut r,
        "state",
        RolloutState::parse,
        "is not a rollout state",
    );
    let channel = q.parsed(
        &mut r,
        "channel",
        Channel::parse,
        "must be stable, beta or pinned",
    );
    r.finish()?;
    let items = st
        .pipeline
        .rollouts(&p, &RolloutFilter { state, channel })?;
    Success::json(&items.iter().map(Rollout::from).collect::<Vec<_>>())
}

async fn get_rollout(id: String, p: Caller, st: AppState) -> ApiResult {
    let view = st.pipeline.rollout(&p, rollout_id(&id)?)?;
    Success::json(&Rollout::from(&view))
}

async fn rollout_verb(id: String, verb: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let verb = match verb.as_str() {
        "advance" => RolloutVerb::Advance,
        "pause" => RolloutVerb::Pause,
        "resume" => RolloutVerb::Resume,
        "cancel" => RolloutVerb::Cancel,
        _ => return Err(super::error::ApiError::no_route()),
    };
    let id = rollout_id(&id)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let reason = if verb == RolloutVerb::Cancel {
        let reason = r.string(&root, "reason", true).map(str::to_owned);
        if reason
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.len() > 1000)
        {
            r.issue("reason", "must be 1 to 1000 characters");
        }
        reason
    } else {
        None
    };
    r.finish()?;
    let view = st.pipeline.rollout_verb(&p, id, verb, reason).await?;
    Success::json(&Rollout::from(&view))
}

// ---- org runtime config ---------------------------------------------------------------------

async fn get_org_config(org: String, p: Caller, st: AppState) -> ApiResult {
    let org = org_path(&org)?;
    Success::json(&OrgConfig::from(&st.pipeline.org_config(&p, &org)?))
}

async fn put_org_config(org: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let channel = r.string(&root, "channel", true).and_then(|c| {
        Channel::parse(c).or_else(|| {
            r.issue("channel", "must be stable, beta or pinned");
            None
        })
    });
    let beta_opt_in = r.boolean(&root, "betaOptIn").unwrap_or(false);
    let auto_upgrade = r.boolean(&root, "autoUpgrade").unwrap_or(true);
    let pinned = r.string(&root, "pinnedBuildId", false).map(str::to_owned);
    if channel == Some(Channel::Pinned) && pinned.is_none() {
        r.issue("pinnedBuildId", "is required for channel pinned");
    }
    r.finish()?;
    let channel = channel.ok_or_else(|| DomainError::invalid("channel", "is required"))?;
    let config = OrgRuntimeConfig {
        org_id: org,
        channel,
        beta_opt_in,
        auto_upgrade,
        pinned_build_id: pinned,
        updated_at: None,
    };
    let saved = st.pipeline.put_org_config(&p, config).await?;
    Success::json(&OrgConfig::from(&saved))
}
