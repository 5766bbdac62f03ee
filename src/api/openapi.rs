//! `GET /api/v1/openapi.json`: the API described as OpenAPI 3, public and not enveloped.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header;
use warp::reply::Response;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn route() -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| {
            let mut r = Response::new(DOCUMENT.into());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        })
        .boxed()
}

/// The documented paths (`/api/v1/sessions/{sessionId}`), for naming a request's route in logs
/// and metrics. Empty if the document could not be read (a test fails first).
pub fn paths() -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(DOCUMENT)
        .ok()
        .and_then(|doc| {
            doc.get("paths")
                .and_then(|p| p.as_object())
                .map(|p| p.keys().cloned().collect())
        })
        .unwrap_or_default()
}
