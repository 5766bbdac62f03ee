//! `/api/v1/orgs/{orgId}/budget` and `/orgs/{orgId}/usage`.

use std::collections::HashMap;

use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Obj, Reader, org_path};
use super::wire::spend::{BudgetView, Usage};
use super::{AppState, json_body, principal, with_state};
use crate::auth::Caller;
use crate::spend::MAX_LIMIT;
use crate::spend::model::{Budget, parse_month};

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let get_budget = path!("orgs" / String / "budget")
        .and(warp::get())
        .and(p())
        .then(get_budget);
    let put_budget = path!("orgs" / String / "budget")
        .and(warp::put())
        .and(p())
        .and(json_body())
        .then(put_budget);
    let usage = path!("orgs" / String / "usage")
        .and(warp::get())
        .and(p())
        .and(warp::query::<HashMap<String, String>>())
        .then(usage);
    get_budget.or(put_budget).unify().or(usage).unify().boxed()
}

async fn get_budget(org: String, p: Caller, st: AppState) -> ApiResult {
    let org = org_path(&org)?;
    let budget = st.spend.budget(&p, &org).await?;
    Success::json(&BudgetView::new(&org, &budget))
}

async fn put_budget(org: String, p: Caller, st: AppState, body: Body) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let root = r.root(&body);
    let budget = Budget {
        monthly_usd: limit(&mut r, &root, "monthlyUsd"),
        session_usd: limit(&mut r, &root, "sessionUsd"),
        session_tokens: limit(&mut r, &root, "sessionTokens").map(|t| t as u64),
    };
    if let Some(t) = r.number(&root, "sessionTokens")
        && t.fract() != 0.0
    {
        r.issue("sessionTokens", "must be a whole number of tokens");
    }
    r.finish()?;
    let saved = st.spend.put_budget(&p, &org, budget).await?;
    Success::json(&BudgetView::new(&org, &saved))
}

/// A limit: a positive number, or absent / null for none.
fn limit(r: &mut Reader, o: &Obj<'_>, key: &str) -> Option<f64> {
    let n = r.number(o, key)?;
    if !(n > 0.0 && n <= MAX_LIMIT) {
        r.issue(
            key,
            format!("must be a positive number up to {MAX_LIMIT}, or null for no limit"),
        );
        return None;
    }
    Some(n)
}

async fn usage(org: String, p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let org = org_path(&org)?;
    let mut r = Reader::new();
    let month = q.get("month").and_then(|m| {
        parse_month(m).or_else(|| {
            r.issue("month", "must be a month as YYYY-MM");
            None
        })
    });
    r.finish()?;
    let report = st.spend.usage(&p, &org, month).await?;
    Success::json(&Usage::from(&report))
}
