//! `/api/v1/webhooks`.

use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Body, Reader, path_id};
use super::wire::Items;
use super::wire::webhooks::{Deleted, Delivery, Webhook};
use super::{AppState, json_body, principal, with_state};
use crate::auth::Caller;
use crate::error::{DomainError, Entity};
use crate::webhooks::NewWebhook;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    let p = || principal(s).and(with_state(s));
    let create = path!("webhooks")
        .and(warp::post())
        .and(p())
        .and(json_body())
        .then(create);
    let list = path!("webhooks").and(warp::get()).and(p()).then(list);
    let delete = path!("webhooks" / String)
        .and(warp::delete())
        .and(p())
        .then(delete);
    let deliveries = path!("webhooks" / String / "deliveries")
        .and(warp::get())
        .and(p())
        .then(deliveries);
    create
        .or(list)
        .unify()
        .or(delete)
        .unify()
        .or(deliveries)
        .unify()
        .boxed()
}

async fn create(p: Caller, st: AppState, body: Body) -> ApiResult {
    let mut r = Reader::new();
    let root = r.root(&body);
    let url = r.string(&root, "url", true).map(str::to_owned);
    let events = r.string_list(&root, "events");
    if r.any(&root, "events").is_none() {
        r.issue("events", "is required");
    }
    let secret = r.string(&root, "secret", false).map(str::to_owned);
    if secret
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > 1024)
    {
        r.issue("secret", "must be 1 to 1024 characters");
    }
    let org_id = r.string(&root, "orgId", false).map(str::to_owned);
    let mut issues = Vec::new();
    crate::webhooks::check(
        url.as_deref().unwrap_or("http://placeholder"),
        events.as_deref().unwrap_or(&["*".to_owned()]),
        org_id.as_deref(),
        &mut issues,
    );
    for i in issues {
        r.issue(i.path, i.message);
    }
    r.finish()?;
    let (Some(url), Some(events)) = (url, events) else {
        return Err(DomainError::invalid("", "request is incomplete").into());
    };
    let hook = st
        .webhooks
        .create(
            &p,
            NewWebhook {
                url,
                events,
                org_id,
                secret,
            },
        )
        .await?;
    Success::json_created(&Webhook::from(&hook))
}

async fn list(p: Caller, st: AppState) -> ApiResult {
    let hooks = st.webhooks.list(&p)?;
    Success::json(&Items::new(hooks.iter().map(Webhook::from).collect()))
}

async fn delete(id: String, p: Caller, st: AppState) -> ApiResult {
    let id = path_id(&id, DomainError::NotFound(Entity::Webhook))?;
    let hook = st.webhooks.delete(&p, id).await?;
    Success::json(&Deleted::from(&hook))
}

async fn deliveries(id: String, p: Caller, st: AppState) -> ApiResult {
    let id = path_id(&id, DomainError::NotFound(Entity::Webhook))?;
    let items = st.webhooks.deliveries(&p, id).await?;
    Success::json(&Items::new(items.iter().map(Delivery::from).collect()))
}
