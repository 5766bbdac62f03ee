//! `/healthz`, `/readyz` (plain, no auth) and `/metrics`.

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::AppState;
use super::edge::ClientAddr;
use super::error::ApiError;
use crate::metrics::Census;

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

/// The scrape-time values of `/metrics`, read from the state that holds them. A failing store
/// leaves the session figures out (the scrape still answers, with `village_store_failing 1`).
async fn census(st: &AppState) -> Census {
    let now = st.clock.now_ms();
    let sessions = match st.sessions.census().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reading the sessions for /metrics");
            Default::default()
        }
    };
    Census {
        sessions_by_state: sessions
            .by_state
            .iter()
            .map(|(state, n)| (state.as_str(), *n))
            .collect(),
        queued: sessions.waiting,
        oldest_queued_seconds: sessions.oldest_waiting_since.map_or(0.0, |since| {
            now.saturating_sub(since).max(0) as f64 / 1000.0
        }),
        approvals_pending: sessions.pending_approvals,
        runners_by_status: st
            .runners
            .status_counts()
            .into_iter()
            .map(|(status, n)| (status.as_str(), n))
            .collect(),
        rollout_percentage_by_channel: st
            .pipeline
            .rollout_percentages()
            .into_iter()
            .map(|(channel, pct)| (channel.as_str(), u64::from(pct)))
            .collect(),
        connections_open: st.connections.open() as u64,
        store_failing: st.store.is_failing(),
    }
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
        .and(super::edge::client_addr())
        .then(move |auth: Option<String>, remote: Option<ClientAddr>| {
            let st = st.clone();
            async move {
                let loopback_bind = st.config.server.listen.ip().is_loopback();
                let admin = auth
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .and_then(|t| st.auth.authenticate(t.trim()))
                    .is_some_and(|p| p.is_admin());
                let local =
                    loopback_bind && remote.is_some_and(|ClientAddr(r)| r.ip().is_loopback());
                if !(admin || local) {
                    let e = ApiError::unauthorized();
                    return warp::reply::with_status(format!("{}\n", e.message), e.status)
                        .into_response();
                }
                let body = st.metrics.render(&census(&st).await);
                warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4")
                    .into_response()
            }
        });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}
