//! `/healthz`, `/readyz` (plain, no auth) and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::AppState;
use super::error::ApiError;

pub fn routes(state: &AppState) -> warp::filters::BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let st = state.clone();
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let st = st.clone();
        async move {
            match st.store.check_ready(st.clock.now_ms()).await {
                Ok(()) => warp::reply::with_status("ready\n", StatusCode::OK).into_response(),
                Err(e) => {
                    tracing::error!(error = %e, "readiness check failed");
                    warp::reply::with_status("not ready\n", StatusCode::SERVICE_UNAVAILABLE)
                        .into_response()
                }
            }
        }
    });
    let st = state.clone();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .map(move |auth: Option<String>, remote: Option<SocketAddr>| {
            let loopback_bind = st.config.server.listen.ip().is_loopback();
            let admin = auth
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .and_then(|t| st.auth.authenticate(t.trim()))
                .is_some_and(|p| p.is_admin());
            if !(admin || (loopback_bind && remote.is_some_and(|r| r.ip().is_loopback()))) {
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
                 village_store_write_jobs_total {}\n",
                stats.commits.load(Ordering::Relaxed),
                stats.jobs.load(Ordering::Relaxed),
            );
            warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4").into_response()
        });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}
