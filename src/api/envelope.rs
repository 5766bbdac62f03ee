//! The one envelope builder: `{success, data | error, meta: {requestId, timestamp, duration}}`.

use std::time::Instant;

use serde_json::{Map, Value, json};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::error::ApiError;
use crate::clock::{Millis, format_ms};

/// A handler's successful answer: data for the envelope, or a response of its own (a
/// WebSocket upgrade).
#[derive(Debug)]
pub enum Success {
    Data { status: StatusCode, data: Value },
    Raw(Response),
}

impl Success {
    pub fn ok(data: Value) -> Self {
        Self::Data {
            status: StatusCode::OK,
            data,
        }
    }

    pub fn created(data: Value) -> Self {
        Self::Data {
            status: StatusCode::CREATED,
            data,
        }
    }
}

pub type ApiResult = Result<Success, ApiError>;

/// Per-request facts the envelope needs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
}

/// A client's `X-Request-Id` is reused when it is 1–64 of `[A-Za-z0-9._-]`.
pub fn request_id_from(header: Option<&HeaderValue>, fresh: impl FnOnce() -> String) -> String {
    header
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(str::to_owned)
        .unwrap_or_else(fresh)
}

pub fn respond(ctx: &RequestCtx, now: Millis, result: ApiResult) -> Response {
    let duration = ctx.started.elapsed().as_secs_f64() * 1000.0;
    let meta = json!({
        "requestId": ctx.request_id,
        "timestamp": format_ms(now),
        "duration": (duration * 1000.0).round() / 1000.0,
    });
    let mut body = Map::new();
    let status = match result {
        Ok(Success::Raw(response)) => return response,
        Ok(Success::Data { status, data }) => {
            body.insert("success".into(), Value::Bool(true));
            body.insert("data".into(), data);
            status
        }
        Err(e) => {
            let mut error = Map::new();
            error.insert("code".into(), Value::from(e.code));
            error.insert("message".into(), Value::from(e.message));
            if let Some(details) = e.details {
                error.insert("details".into(), details);
            }
            body.insert("success".into(), Value::Bool(false));
            body.insert("error".into(), Value::Object(error));
            e.status
        }
    };
    body.insert("meta".into(), meta);
    let mut response = Response::new(Value::Object(body).to_string().into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert("x-request-id", v);
    }
    response
}
