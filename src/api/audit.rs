//! `GET /api/v1/audit`.

use std::collections::HashMap;

use warp::filters::BoxedFilter;
use warp::{Filter, path};

use super::envelope::{ApiResult, Success};
use super::input::{Query, Reader};
use super::wire::SeqPage;
use super::wire::audit::Entry;
use super::{AppState, principal, query, with_state};
use crate::audit;
use crate::auth::Caller;
use crate::sessions::MAX_PAGE_LIMIT;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    path!("audit")
        .and(warp::get())
        .and(principal(s))
        .and(with_state(s))
        .and(query())
        .then(list)
        .boxed()
}

async fn list(p: Caller, st: AppState, q: HashMap<String, String>) -> ApiResult {
    let q = Query { params: &q };
    let mut r = Reader::new();
    let after = q.whole(&mut r, "afterSeq", 0, u64::MAX - 1, 0);
    let limit = q.whole(&mut r, "limit", 1, MAX_PAGE_LIMIT, 100);
    r.finish()?;
    let items = audit::list(&st.store, &p, after, limit).await?;
    let next = items.last().map_or(after, |e| e.seq);
    Success::json(&SeqPage::new(items.iter().map(Entry::from).collect(), next))
}
