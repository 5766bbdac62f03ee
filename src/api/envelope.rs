//! The one envelope builder: `{success, data | error, meta: {requestId, timestamp, duration}}`.

use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::error::ApiError;
use crate::clock::{Millis, Rfc3339Ms};

/// A handler's successful answer: data for the envelope, or a response of its own (a
/// WebSocket upgrade).
#[derive(Debug)]
pub enum Success {
    Data {
        status: StatusCode,
        data: Value,
    },
    /// Data already written as JSON from a typed wire shape, after the envelope's opening
    /// (`{"data":`), so the envelope is finished in the same buffer: hot paths skip building
    /// a `Value` tree only to serialise it, and a copy of it.
    Json {
        status: StatusCode,
        opened: Vec<u8>,
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
        let mut opened = Vec::with_capacity(ENVELOPE_CAPACITY);
        opened.extend_from_slice(DATA_OPENING);
        serde_json::to_writer(&mut opened, data).map_err(|e| {
            tracing::error!(error = %e, "a response could not be serialised");
            ApiError::internal()
        })?;
        Ok(Self::Json { status, opened })
    }
}

/// The envelope's `meta`. Keys in the order a `serde_json::Map` writes them.
#[derive(Serialize)]
struct Meta<'a> {
    duration: f64,
    #[serde(rename = "requestId")]
    request_id: &'a str,
    timestamp: Rfc3339Ms,
}

pub type ApiResult = Result<Success, ApiError>;

/// Per-request facts the envelope needs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// Always a valid request id (ASCII), as sent back in `X-Request-Id`.
    pub request_id: HeaderValue,
    pub started: Instant,
}

impl RequestCtx {
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

/// A client's `X-Request-Id` is reused when it is 1–64 of `[A-Za-z0-9._-]`; otherwise a new
/// UUID.
pub fn request_id_from(header: Option<&HeaderValue>) -> HeaderValue {
    match header {
        Some(v) if is_request_id(v) => v.clone(),
        _ => {
            let mut buf = uuid::Uuid::encode_buffer();
            let fresh = crate::clock::random_uuid()
                .hyphenated()
                .encode_lower(&mut buf);
            HeaderValue::from_str(fresh).unwrap_or(HeaderValue::from_static("unknown"))
        }
    }
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
        request_id: ctx.request_id(),
        timestamp: Rfc3339Ms(now),
        duration: (duration * 1000.0).round() / 1000.0,
    };
    let mut retry_after = None;
    let (status, body) = match result {
        // A response of its own (an upgrade, a file) still names its request.
        Ok(Success::Raw(mut response)) => {
            response
                .headers_mut()
                .entry("x-request-id")
                .or_insert(ctx.request_id.clone());
            return response;
        }
        Ok(Success::Data { status, data }) => {
            let mut opened = Vec::with_capacity(ENVELOPE_CAPACITY);
            opened.extend_from_slice(DATA_OPENING);
            // Cannot fail: every key of a `Value` is a string.
            let _ = serde_json::to_writer(&mut opened, &data);
            (status, close_envelope(opened, &meta))
        }
        Ok(Success::Json { status, opened }) => (status, close_envelope(opened, &meta)),
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
    headers.insert("x-request-id", ctx.request_id.clone());
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.get()));
    }
    response
}

/// The start of a successful envelope: `{"data":…,"meta":…,"success":true}`, the key order of
/// the `Map` it was once built as.
const DATA_OPENING: &[u8] = b"{\"data\":";
/// Room for most answers' data and the meta without growing the buffer.
const ENVELOPE_CAPACITY: usize = 512;

/// Finishes a successful envelope whose data follows [`DATA_OPENING`] in `opened`.
fn close_envelope(mut out: Vec<u8>, meta: &Meta<'_>) -> Vec<u8> {
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
            timestamp: Rfc3339Ms(1_700_000_000_000),
        };
        let Ok(Success::Json { opened, .. }) = Success::json(&Shape { a: 1, b: "x" }) else {
            panic!("a typed answer");
        };
        let expected = serde_json::json!({
            "success": true,
            "data": {"a": 1, "b": "x"},
            "meta": {"requestId": "req-1", "timestamp": "2023-11-14T22:13:20.000Z", "duration": 1.5},
        });
        assert_eq!(
            close_envelope(opened, &meta),
            crate::api::wire::text(expected).into_bytes()
        );
    }
}
