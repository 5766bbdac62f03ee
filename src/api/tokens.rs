//! `/api/v1/tokens` (contract §2) and `/api/v1/me`, which tells any valid token who it is (the
//! dashboard asks it at sign-in to learn the token's kind and org).

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, path_id};
use super::sessions::page_json;
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::{Caller, NewToken, TokenKind, TokenRecord};
use crate::error::{DomainError, Entity};
use crate::sessions::timestamp;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let collection = path!("tokens").and(
        warp::post()
            .and(p())
            .and(json_body())
            .then(create)
            .or(warp::get().and(p()).and(query()).then(list))
            .unify(),
    );
    let one = path!("tokens" / String)
        .and(warp::delete())
        .and(p())
        .then(revoke);
    let me = path!("me").and(warp::get()).and(principal(s)).then(me);
    collection.or(one).unify().or(me).unify().boxed()
}

fn token_json(t: &TokenRecord) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("tokenId".into(), json!(t.id));
    m.insert("kind".into(), json!(t.kind.as_str()));
    m.insert("name".into(), json!(t.name));
    m.insert("orgId".into(), json!(t.org_id));
    m.insert("createdAt".into(), json!(timestamp(t.created_at)));
    if let Some(runner) = t.runner_id {
        m.insert("runnerId".into(), json!(runner));
    }
    if let Some(at) = t.revoked_at {
        m.insert("revokedAt".into(), json!(timestamp(at)));
    }
    m
}

async fn me(p: Caller) -> ApiResult {
    let mut m = Map::new();
    m.insert("tokenId".into(), json!(p.token_id));
    m.insert("kind".into(), json!(p.kind.as_str()));
    m.insert("name".into(), json!(p.name));
    m.insert("orgId".into(), json!(p.org_id));
    if let Some(runner) = p.runner_id {
        m.insert("runnerId".into(), json!(runner));
    }
    Ok(Success::ok(Value::Object(m)))
}

async fn create(p: Caller, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let kind = r.string(&root, "kind", true).and_then(|k| {
        TokenKind::parse(k).or_else(|| {
            r.issue("kind", "must be admin, org or runner_join");
            None
        })
    });
    let name = r.string(&root, "name", true).map(str::to_owned);
    let org_id = r.string(&root, "orgId", false).map(str::to_owned);
    r.finish()?;
    let (Some(kind), Some(name)) = (kind, name) else {
        return Err(DomainError::invalid("", "request is incomplete").into());
    };
    let issued = st.auth.create(&p, NewToken { kind, name, org_id }).await?;
    let mut m = token_json(&issued.record);
    m.insert("token".into(), json!(issued.secret));
    Ok(Success::created(Value::Object(m)))
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let mut r = Reader::new();
    let page = Query { params: &q }.page(&mut r);
    r.finish()?;
    let page = st.auth.list(&p, page).await?;
    Ok(Success::ok(page_json(
        page.map(|t| Value::Object(token_json(&t))),
    )))
}

async fn revoke(id: String, p: Caller, st: AppState) -> ApiResult {
    let id = path_id(&id, DomainError::NotFound(Entity::Token))?;
    let token = st.auth.revoke(&p, id).await?;
    Ok(Success::ok(Value::Object(token_json(&token))))
}
