//! `/healthz`, `/readyz` (plain, no auth) and `/metrics`.

use std::sync::atomic::Ordering;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::AppState;
use super::edge::ClientAddr;
use super::error::ApiError;

/// Ready: the store takes a durable write (which fails while the disk is full or the database
/// is being reopened, and succeeds again once storage works), and the data dir's filesystem has
/// at least `server.minFreeDiskMb` free: small writes may still fit into a database file's
/// free pages on a full disk.
async fn ready(st: &AppState) -> Result<(), String> {
    st.store
        .check_ready(st.clock.now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let dir = st.config.server.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || {
        nix::sys::statvfs::statvfs(&dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading the data dir's free space: {e}"))?;
    let wanted = st.config.server.min_free_disk_bytes;
    if free < wanted {
        return Err(format!(
            "{free} bytes free on the data dir's filesystem, under server.minFreeDiskMb ({wanted} bytes)"
        ));
    }
    Ok(())
}

pub fn routes(state: &AppState) -> warp::filters::BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let st = state.clone();
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let st = st.clone();
        async move {
            match ready(&st).await {
                Ok(()) => warp::reply::with_status("ready\n", StatusCode::OK).into_response(),
                Err(why) => {
                    tracing::error!(reason = %why, "readiness check failed");
                    warp::reply::with_status(
                        format!("not ready: {why}\n"),
                        StatusCode::SERVICE_UNAVAILABLE,
                    )
                    .into_response()
                }
            }
        }
    });
    let st = state.clone();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<ClientAddr>())
        .map(move |auth: Option<String>, remote: Option<ClientAddr>| {
            let loopback_bind = st.config.server.listen.ip().is_loopback();
            let admin = auth
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .and_then(|t| st.auth.authenticate(t.trim()))
                .is_some_and(|p| p.is_admin());
            if !(admin || (loopback_bind && remote.is_some_and(|ClientAddr(r)| r.ip().is_loopback()))) {
                let e = ApiError::unauthorized();
                return warp::reply::with_status(format!("{}\n", e.message), e.status).into_response();
            }
            let stats = &st.store.stats;
            let body = format!(
                "# HELP village_store_commits_total Durable write transactions committed.\n\
                 # TYPE village_store_commits_total counter\n\
                 village_store_commits_total {}\n\
                 # HELP village_store_write_jobs_total Write jobs applied (several share a commit).\n\
                 # TYPE village_store_write_jobs_total counter\n\
                 village_store_write_jobs_total {}\n\
                 # HELP village_http_connections_open TCP connections open now, WebSockets included.\n\
                 # TYPE village_http_connections_open gauge\n\
                 village_http_connections_open {}\n\
                 # HELP village_store_failing 1 while the last commit failed (storage unavailable).\n\
                 # TYPE village_store_failing gauge\n\
                 village_store_failing {}\n\
                 # HELP village_store_writer_restarts_total Store writer panics outside a job, each restarted.\n\
                 # TYPE village_store_writer_restarts_total counter\n\
                 village_store_writer_restarts_total {}\n",
                stats.commits.load(Ordering::Relaxed),
                stats.jobs.load(Ordering::Relaxed),
                st.connections.open(),
                u8::from(st.store.is_failing()),
                stats.writer_restarts.load(Ordering::Relaxed),
            );
            warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4").into_response()
        });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}
