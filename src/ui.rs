//! The dashboard, embedded in the binary. `/` and every non-API GET serve it; unknown paths fall
//! back to `index.html` so the browser app can route.

use rust_embed::Embed;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

#[derive(Embed)]
#[folder = "ui/"]
#[exclude = "README.md"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

fn serve(path: &str) -> Option<Response> {
    let file = Assets::get(path)?;
    let mime = file.metadata.mimetype().to_owned();
    let mut r = Response::new(file.data.into_owned().into());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Assets under `assets/` carry a content hash in their name; index.html must never be stale.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

pub fn routes() -> BoxedFilter<(Response,)> {
    warp::get()
        .and(warp::path::tail())
        .map(|tail: warp::path::Tail| {
            let path = tail.as_str();
            serve(if path.is_empty() { "index.html" } else { path })
                .or_else(|| serve("index.html"))
                .unwrap_or_else(|| {
                    let mut r = Response::new("dashboard not built\n".into());
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                })
        })
        .boxed()
}
