//! `/api/v1/tokens` and `/api/v1/me`, which tells any valid token who it is (the
//! dashboard asks it at sign-in to learn the token's kind and org).

use std::collections::HashMap;

use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Query, Reader, path_id};
use super::wire::Page;
use super::wire::tokens::{Me, Token};
use super::{AppState, json_body, principal, query, with_state};
use crate::auth::{Caller, NewToken, TokenKind};
use crate::error::{DomainError, Entity};

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

async fn me(p: Caller) -> ApiResult {
    Success::json(&Me::from(&*p))
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
    Success::json_created(&Token::from(&issued))
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let mut r = Reader::new();
    let page = Query { params: &q }.page(&mut r);
    r.finish()?;
    let page = st.auth.list(&p, page).await?;
    Success::json(&Page::of(&page, Token::from))
}

async fn revoke(id: String, p: Caller, st: AppState) -> ApiResult {
    let id = path_id(&id, DomainError::NotFound(Entity::Token))?;
    let token = st.auth.revoke(&p, id).await?;
    Success::json(&Token::from(&token))
}
