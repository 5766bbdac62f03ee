//! `GET /api/v1/audit` (contract §7).

use std::collections::HashMap;

use serde_json::{Value, json};
use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Query, Reader};
use super::{AppState, principal, query, with_state};
use crate::audit::{self, AuditEntry};
use crate::auth::Caller;
use crate::sessions::{MAX_PAGE_LIMIT, timestamp};

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    path!("audit")
        .and(warp::get())
        .and(principal(s))
        .and(with_state(s))
        .and(query())
        .then(list)
        .boxed()
}

fn entry_json(e: &AuditEntry) -> Value {
    let mut v = json!({
        "seq": e.seq,
        "at": timestamp(e.at),
        "actor": {"tokenId": e.token_id, "kind": e.kind, "name": e.name},
        "action": e.action,
        "target": e.target,
    });
    if let Some(org) = &e.org_id {
        v["orgId"] = json!(org);
    }
    v
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let after = q.whole(&mut r, "afterSeq", 0, u64::MAX - 1, 0);
    let limit = q.whole(&mut r, "limit", 1, MAX_PAGE_LIMIT, 100);
    r.finish()?;
    let items = audit::list(&st.store, &p, after, limit).await?;
    let next = items.last().map_or(after, |e| e.seq);
    Ok(Success::ok(json!({
        "items": items.iter().map(entry_json).collect::<Vec<_>>(),
        "nextSeq": next,
    })))
}
