//! `/api/v1/orgs/{orgId}/approval-policy`, `/orgs/{orgId}/notifications` and the approval
//! links (`/approval-links/{linkToken}`, which need no token: the link is the capability).

use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Obj, Reader, org_path};
use super::wire::policies::{Evaluation, LinkView, Notifications, Policy};
use super::wire::sessions::ApprovalResponse;
use super::{AppState, json_body, principal, with_state};
use crate::auth::Caller;
use crate::error::DomainError;
use crate::policy::model::{
    ApprovalPolicy, PolicyDecision, PolicyExample, PolicyExamples, PolicyRule,
};
use crate::sessions::model::{ApprovalAction, Decision};
use crate::webhooks::{NewTarget, TargetKind};

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let get_policy = path!("orgs" / String / "approval-policy")
        .and(warp::get())
        .and(p())
        .then(get_policy);
    let put_policy = path!("orgs" / String / "approval-policy")
        .and(warp::put())
        .and(p())
        .and(json_body())
        .then(put_policy);
    let evaluate = path!("orgs" / String / "approval-policy" / "evaluate")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(evaluate);
    let get_notifications = path!("orgs" / String / "notifications")
        .and(warp::get())
        .and(p())
        .then(get_notifications);
    let put_notifications = path!("orgs" / String / "notifications")
        .and(warp::put())
        .and(p())
        .and(json_body())
        .then(put_notifications);
    get_policy
        .or(put_policy)
        .unify()
        .or(evaluate)
        .unify()
        .or(get_notifications)
        .unify()
        .or(put_notifications)
        .unify()
        .boxed()
}

/// The approval links' routes: no bearer token (the link is the capability).
pub fn link_routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let view = path!("approval-links" / String)
        .and(warp::get())
        .and(with_state(s))
        .then(view_link);
    let decide = path!("approval-links" / String)
        .and(warp::post())
        .and(with_state(s))
        .and(json_body())
        .then(decide_by_link);
    view.or(decide).unify().boxed()
}

async fn get_policy(org: String, p: Caller, st: AppState) -> ApiResult {
    let org = org_path(&org)?;
    let policy = st.policies.get(&p, &org).await?;
    Success::json(&Policy::from(&policy))
}

async fn put_policy(org: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let policy = read_policy(&mut r, &root);
    r.finish()?;
    let policy = policy.ok_or_else(|| DomainError::invalid("", "request is incomplete"))?;
    let saved = st.policies.put(&p, &org, policy).await?;
    Success::json(&Policy::from(&saved))
}

async fn evaluate(org: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let action = read_action(&mut r, &root, "action");
    let context = r.any(&root, "context").cloned();
    let draft = r
        .object(&root, "policy", false)
        .map(|o| read_policy(&mut r, &o));
    r.finish()?;
    let action = action.ok_or_else(|| DomainError::invalid("action", "is required"))?;
    let draft = match draft {
        Some(Some(d)) => Some(d),
        Some(None) => return Err(DomainError::invalid("policy", "is incomplete").into()),
        None => None,
    };
    let (decision, rule_id) = st
        .policies
        .evaluate(&p, &org, action, context, draft)
        .await?;
    Success::json(&Evaluation {
        decision: decision.as_str(),
        rule_id,
    })
}

fn read_action(r: &mut Reader, o: &Obj<'_>, key: &str) -> Option<ApprovalAction> {
    let raw = r.string(o, key, true)?;
    let action = ApprovalAction::parse(raw);
    if action.is_none() {
        let path = r.path_of(o, key);
        r.issue(
            path,
            format!("unknown action `{raw}`; expected {}", action_names()),
        );
    }
    action
}

fn action_names() -> String {
    ApprovalAction::ALL
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_decision(r: &mut Reader, o: &Obj<'_>, key: &str, required: bool) -> Option<PolicyDecision> {
    let raw = r.string(o, key, required)?;
    let decision = PolicyDecision::parse(raw);
    if decision.is_none() {
        let path = r.path_of(o, key);
        r.issue(path, "must be allow, ask or deny");
    }
    decision
}

/// A policy's shape, every bad field recorded; the domain checks the rest (ids, examples).
/// An absent `rules` is none, an absent `defaultDecision` is `ask`.
fn read_policy(r: &mut Reader, root: &Obj<'_>) -> Option<ApprovalPolicy> {
    let default_decision =
        read_decision(r, root, "defaultDecision", false).unwrap_or(PolicyDecision::Ask);
    let mut complete = true;
    let mut rules = Vec::new();
    for o in r.objects(root, "rules").unwrap_or_default() {
        match read_rule(r, &o) {
            Some(rule) => rules.push(rule),
            None => complete = false,
        }
    }
    complete.then_some(ApprovalPolicy {
        rules,
        default_decision,
    })
}

fn read_rule(r: &mut Reader, o: &Obj<'_>) -> Option<PolicyRule> {
    let id = r.string(o, "id", true).map(str::to_owned);
    let decision = read_decision(r, o, "decision", true);
    let actions = match r.string_list(o, "actions") {
        None => {
            let path = r.path_of(o, "actions");
            if r.any(o, "actions").is_none() {
                r.issue(
                    path,
                    "is required: action names, or [\"*\"] for every action",
                );
            }
            None
        }
        Some(names) if names.iter().any(|n| n == "*") => {
            if names.len() > 1 {
                let path = r.path_of(o, "actions");
                r.issue(path, "\"*\" stands alone: it already means every action");
            }
            Some(None)
        }
        Some(names) if names.is_empty() => {
            let path = r.path_of(o, "actions");
            r.issue(path, "must name at least one action, or \"*\"");
            None
        }
        Some(names) => {
            let mut actions = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match ApprovalAction::parse(n) {
                    Some(a) if !actions.contains(&a) => actions.push(a),
                    Some(_) => {}
                    None => {
                        let path = format!("{}[{i}]", r.path_of(o, "actions"));
                        r.issue(
                            path,
                            format!("unknown action `{n}`; expected {}", action_names()),
                        );
                    }
                }
            }
            Some(Some(actions))
        }
    };
    let (mut tool, mut command, mut path) = (None, None, None);
    if let Some(m) = r.object(o, "match", false) {
        tool = r.string(&m, "tool", false).map(str::to_owned);
        command = r.string(&m, "command", false).map(str::to_owned);
        path = r.string(&m, "path", false).map(str::to_owned);
    }
    let mut examples = None;
    let mut examples_complete = true;
    if let Some(e) = r.object(o, "examples", false) {
        let mut read = |key: &str, r: &mut Reader| -> Vec<PolicyExample> {
            let mut out = Vec::new();
            for ex in r.objects(&e, key).unwrap_or_default() {
                let action = read_action(r, &ex, "action");
                let context = r.any(&ex, "context").map(Value::to_string);
                match action {
                    Some(action) => out.push(PolicyExample {
                        action,
                        context_json: context,
                    }),
                    None => examples_complete = false,
                }
            }
            out
        };
        let matches = read("match", r);
        let not_matches = read("notMatch", r);
        examples = Some(PolicyExamples {
            matches,
            not_matches,
        });
    }
    Some(PolicyRule {
        id: id?,
        actions: actions?,
        tool,
        command,
        path,
        decision: decision?,
        examples: examples.filter(|_| examples_complete),
    })
    .filter(|_| examples_complete)
}

async fn get_notifications(org: String, p: Caller, st: AppState) -> ApiResult {
    let org = org_path(&org)?;
    let n = st.webhooks.org_notifications(&p, &org)?;
    Success::json(&Notifications::new(n.as_ref()))
}

async fn put_notifications(org: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let mut targets = Vec::new();
    let mut complete = true;
    match r.objects(&root, "targets") {
        None if r.any(&root, "targets").is_none() => r.issue("targets", "is required"),
        None => {}
        Some(list) => {
            for o in list {
                let id = r.string(&o, "id", true).map(str::to_owned);
                let kind = r.string(&o, "kind", true).and_then(|k| {
                    let kind = TargetKind::parse(k);
                    if kind.is_none() {
                        let path = r.path_of(&o, "kind");
                        r.issue(path, "must be slack, discord or generic");
                    }
                    kind
                });
                let url = r.string(&o, "url", true).map(str::to_owned);
                let events = r.string_list(&o, "events");
                if r.any(&o, "events").is_none() {
                    let path = r.path_of(&o, "events");
                    r.issue(path, "is required");
                }
                match (id, kind, url, events) {
                    (Some(id), Some(kind), Some(url), Some(events)) => targets.push(NewTarget {
                        id,
                        kind,
                        url,
                        events,
                    }),
                    _ => complete = false,
                }
            }
        }
    }
    r.finish()?;
    if !complete {
        return Err(DomainError::invalid("targets", "are incomplete").into());
    }
    let saved = st.webhooks.put_notifications(&p, &org, targets).await?;
    Success::json(&Notifications::new(Some(&saved)))
}

async fn view_link(token: String, st: AppState) -> ApiResult {
    let linked = st.sessions.approval_by_link(token).await?;
    Success::json(&LinkView::from(&linked))
}

async fn decide_by_link(token: String, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let decision = r.string(&root, "decision", true).and_then(|d| {
        let decision = Decision::parse(d);
        if decision.is_none() {
            r.issue("decision", "must be allow or deny");
        }
        decision
    });
    let reason = r.string(&root, "reason", false).map(str::to_owned);
    if reason.as_ref().is_some_and(|s| s.len() > 10_000) {
        r.issue("reason", "must be at most 10000 bytes");
    }
    r.finish()?;
    let decision = decision.ok_or_else(|| DomainError::invalid("decision", "is required"))?;
    let approval = st.sessions.resolve_by_link(token, decision, reason).await?;
    Success::json(&ApprovalResponse::from(&approval))
}
