//! The one envelope builder: `{success, data | error, meta: {requestId, timestamp, duration}}`.

use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::error::ApiError;
use crate::clock::{Millis, format_ms};

/// A handler's successful answer: data for the envelope, or a response of its own (a
/// WebSocket upgrade).
#[derive(Debug)]
pub enum Success {
    Data {
        status: StatusCode,
        data: Value,
    },
    /// Data already written as JSON from a typed wire shape: hot paths skip building a
    /// `Value` tree only to serialise it.
    Json {
        status: StatusCode,
        json: Vec<u8>,
    },
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

    /// `200 OK` with `data` written from its wire type (see `super::wire`).
    pub fn json(data: &impl Serialize) -> Result<Self, ApiError> {
        Self::typed(StatusCode::OK, data)
    }

    /// `201 Created` with `data` written from its wire type.
    pub fn json_created(data: &impl Serialize) -> Result<Self, ApiError> {
        Self::typed(StatusCode::CREATED, data)
    }

    /// `data` as JSON, written straight from its `Serialize` implementation.
    pub fn typed(status: StatusCode, data: &impl Serialize) -> Result<Self, ApiError> {
        let json = serde_json::to_vec(data).map_err(|e| {
            tracing::error!(error = %e, "a response could not be serialised");
            ApiError::internal()
        })?;
        Ok(Self::Json { status, json })
    }
}

/// The envelope's `meta`. Keys in the order a `serde_json::Map` writes them.
#[derive(Serialize)]
struct Meta<'a> {
    duration: f64,
    #[serde(rename = "requestId")]
    request_id: &'a str,
    timestamp: String,
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
        .filter(|v| is_request_id(v))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(fresh)
}

/// A client's `X-Request-Id` is used when it is 1–64 characters of `A-Za-z0-9._-`.
pub fn is_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=64).contains(&b.len())
        && b.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn respond(ctx: &RequestCtx, now: Millis, result: ApiResult) -> Response {
    let duration = ctx.started.elapsed().as_secs_f64() * 1000.0;
    let meta = Meta {
        request_id: &ctx.request_id,
        timestamp: format_ms(now),
        duration: (duration * 1000.0).round() / 1000.0,
    };
    let mut retry_after = None;
    let (status, body) = match result {
        // A response of its own (an upgrade, a file) still names its request.
        Ok(Success::Raw(mut response)) => {
            if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
                response.headers_mut().entry("x-request-id").or_insert(id);
            }
            return response;
        }
        // Cannot fail: every key of a `Value` is a string.
        Ok(Success::Data { status, data }) => (
            status,
            envelope(&serde_json::to_vec(&data).unwrap_or_default(), &meta),
        ),
        Ok(Success::Json { status, json }) => (status, envelope(&json, &meta)),
        Err(e) => {
            retry_after = e.retry_after_secs;
            let mut error = Map::new();
            error.insert("code".into(), Value::from(e.code));
            error.insert("message".into(), Value::from(e.message));
            if let Some(details) = e.details {
                error.insert("details".into(), details);
            }
            #[derive(Serialize)]
            struct Failure<'a> {
                error: Value,
                meta: &'a Meta<'a>,
                success: bool,
            }
            // Sorted keys, whatever order the map keeps (see `wire`).
            let mut error = Value::Object(error);
            error.sort_all_objects();
            let failure = Failure {
                error,
                meta: &meta,
                success: false,
            };
            (e.status, serde_json::to_vec(&failure).unwrap_or_default())
        }
    };
    let mut response = Response::new(body.into());
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
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.get()));
    }
    response
}

/// A successful envelope around `data` (JSON): `{"data":…,"meta":…,"success":true}`, the key
/// order of the `Map` it was once built as.
fn envelope(data: &[u8], meta: &Meta<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 128);
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"meta\":");
    // Cannot fail: a struct of strings and a number.
    let _ = serde_json::to_writer(&mut out, meta);
    out.extend_from_slice(b",\"success\":true}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope is byte for byte what the `Map` it replaced wrote (keys sorted).
    #[test]
    fn envelope_bytes() {
        #[derive(Serialize)]
        struct Shape {
            a: u32,
            b: &'static str,
        }
        let meta = Meta {
            duration: 1.5,
            request_id: "req-1",
            timestamp: format_ms(1_700_000_000_000),
        };
        let data = serde_json::to_vec(&Shape { a: 1, b: "x" }).unwrap();
        let expected = serde_json::json!({
            "success": true,
            "data": {"a": 1, "b": "x"},
            "meta": {"requestId": "req-1", "timestamp": "2023-11-14T22:13:20.000Z", "duration": 1.5},
        });
        assert_eq!(
            envelope(&data, &meta),
            crate::api::wire::text(expected).into_bytes()
        );
    }
}
