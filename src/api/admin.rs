//! `GET /api/v1/admin/backup` (admin): a consistent copy of the whole database, streamed as a
//! redb file that `village restore` puts in place.

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, path};

use super::download::FileDownload;
use super::envelope::{ApiResult, Success};
use super::{AppState, principal, with_state};
use crate::auth::Caller;
use crate::backups;

pub fn routes(s: &AppState) -> BoxedFilter<(ApiResult,)> {
    path!("admin" / "backup")
        .and(warp::get())
        .and(principal(s))
        .and(with_state(s))
        .then(backup)
        .boxed()
}

async fn backup(p: Caller, st: AppState) -> ApiResult {
    let now = st.clock.now_ms();
    let id = st.ids.ordered_uuid(now);
    let server = &st.config.server;
    let prepared = backups::prepare(
        &st.store,
        &p,
        &server.data_dir,
        server.min_free_disk_bytes,
        now,
        id,
    )
    .await?;
    let summary = &prepared.summary;
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(
        header::CONTENT_TYPE.as_str(),
        "application/octet-stream".into(),
    );
    set(header::CONTENT_LENGTH.as_str(), summary.bytes.to_string());
    set(
        header::CONTENT_DISPOSITION.as_str(),
        format!(
            "attachment; filename=\"village-backup-{}.redb\"",
            crate::clock::format_ms(now).replace(':', "")
        ),
    );
    set("x-village-backup-id", id.to_string());
    set(
        "x-village-schema-version",
        summary.schema_version.to_string(),
    );
    set("x-village-backup-rows", summary.rows.to_string());
    response
        .extensions_mut()
        .insert(FileDownload::temporary(prepared.path, summary.bytes));
    Ok(Success::Raw(response))
}
