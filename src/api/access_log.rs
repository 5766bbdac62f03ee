//! The metrics of every request and one log line per request (`target: "village::request"`): request id, method, route template,
//! status, duration, the caller's token id (never a secret) and the W3C trace context.
//!
//! The edge (`edge.rs`) wraps each request in [`Request::scope`]: it takes the request id from
//! `X-Request-Id` (or makes one and sets the header, so the envelope's `meta.requestId` is the
//! same), keeps a valid `traceparent`, and after the routes have answered echoes both headers and
//! writes the line. The routes report the authenticated caller with [`note_caller`] (a task-local:
//! the routes run inside the edge's future).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use uuid::Uuid;

use crate::metrics::Metrics;

tokio::task_local! {
    static CALLER: Cell<Option<Uuid>>;
}

/// Records who the current request authenticated as, for its log line.
pub fn note_caller(token_id: Uuid) {
    let _ = CALLER.try_with(|c| c.set(Some(token_id)));
}

/// What the metrics and the log line of one request need, taken before the routes see it.
pub struct Request {
    started: Instant,
    method: hyper::Method,
    route: &'static str,
    /// The log line's ids; `None` while the line is off (a server logging at `warn`), which
    /// then costs nothing more per request.
    line: Option<LineIds>,
}

struct LineIds {
    request_id: HeaderValue,
    traceparent: Option<HeaderValue>,
}

impl Request {
    /// Reads (and, for the log line, completes) the request's head.
    pub fn begin(head: &mut Parts) -> Self {
        Self {
            started: Instant::now(),
            method: head.method.clone(),
            route: route_template(head.uri.path()),
            line: LineIds::take(head),
        }
    }

    /// Runs the routes' future, with a place for the caller's token id when the log line is
    /// on (nothing reads it otherwise).
    pub async fn scope<F: Future>(&self, future: F) -> (F::Output, Option<Uuid>) {
        if self.line.is_none() {
            return (future.await, None);
        }
        CALLER
            .scope(Cell::new(None), async move {
                let output = future.await;
                (output, CALLER.with(Cell::get))
            })
            .await
    }

    /// Counts the request in `/metrics`; when the log line is on, echoes the ids on the
    /// response and writes the line.
    pub fn finish(
        self,
        response: &mut hyper::http::response::Parts,
        caller: Option<Uuid>,
        metrics: &Metrics,
    ) {
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics.http_request(&self.method, self.route, response.status, elapsed);
        let Some(ids) = self.line else {
            return;
        };
        response
            .headers
            .entry("x-request-id")
            .or_insert(ids.request_id.clone());
        if let Some(tp) = &ids.traceparent {
            response.headers.insert("traceparent", tp.clone());
        }
        let trace_id = ids
            .traceparent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(3..35));
        tracing::info!(
            target: "village::request",
            request_id = ids.request_id.to_str().unwrap_or(""),
            method = %self.method,
            route = self.route,
            status = response.status.as_u16(),
            duration_ms = (elapsed * 1000.0 * 1000.0).round() / 1000.0,
            token_id = caller.map(tracing::field::display),
            trace_id,
            "request"
        );
    }
}

impl LineIds {
    /// The request id from `X-Request-Id` (or a new one, set on the request so the envelope's
    /// `meta.requestId` is the same) and a valid `traceparent`; `None` when the line is off.
    fn take(head: &mut Parts) -> Option<Self> {
        if !tracing::enabled!(target: "village::request", tracing::Level::INFO) {
            return None;
        }
        let request_id = match head.headers.get("x-request-id") {
            Some(v) if super::envelope::is_request_id(v) => v.clone(),
            _ => {
                let fresh = HeaderValue::from_str(&crate::clock::random_uuid().to_string()).ok()?;
                head.headers.insert("x-request-id", fresh.clone());
                fresh
            }
        };
        let traceparent = head
            .headers
            .get("traceparent")
            .filter(|v| is_traceparent(v.as_bytes()))
            .cloned();
        Some(Self {
            request_id,
            traceparent,
        })
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero (W3C Trace Context).
fn is_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    v.len() == 55
        && &v[..3] == b"00-"
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && v[3..35].iter().any(|b| *b != b'0')
        && v[36..52].iter().any(|b| *b != b'0')
}

/// The documented route a path belongs to (`/api/v1/sessions/{sessionId}`), from the OpenAPI
/// document's paths; `dashboard` for the embedded UI and `unmatched` for unknown API paths. Ids
/// never reach the log line's route, so lines group by route.
pub fn route_template(path: &str) -> &'static str {
    /// A documented route: its template and its segments.
    type Route = (String, Vec<String>);
    /// The documented routes, grouped by how many segments they have.
    static ROUTES: OnceLock<Vec<Vec<Route>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let mut by_length: Vec<Vec<Route>> = Vec::new();
        for p in super::openapi::paths() {
            let pattern: Vec<String> = p
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if by_length.len() <= pattern.len() {
                by_length.resize_with(pattern.len() + 1, Vec::new);
            }
            by_length[pattern.len()].push((p, pattern));
        }
        by_length
    });
    // The path's segments, split once (every request comes here); no documented route has
    // more than a handful.
    const MAX_SEGMENTS: usize = 12;
    let mut segments = [""; MAX_SEGMENTS];
    let mut length = 0;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if length == MAX_SEGMENTS {
            length += 1;
            break;
        }
        segments[length] = segment;
        length += 1;
    }
    let found = routes.get(length).and_then(|candidates| {
        candidates.iter().find(|(_, pattern)| {
            segments
                .iter()
                .zip(pattern)
                .all(|(s, p)| p.starts_with('{') || p == s)
        })
    });
    match found {
        Some((template, _)) => template.as_str(),
        None if path.starts_with("/api/") || path == "/api" => "unmatched",
        None => "dashboard",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_documented_route() {
        assert_eq!(
            route_template("/api/v1/sessions/0196a0b2-0000-7000-8000-000000000000"),
            "/api/v1/sessions/{sessionId}"
        );
        assert_eq!(
            route_template("/api/v1/sessions/x/approvals/y/resolve"),
            "/api/v1/sessions/{sessionId}/approvals/{approvalId}/resolve"
        );
        assert_eq!(route_template("/api/v1/fleet"), "/api/v1/fleet");
        assert_eq!(route_template("/healthz"), "/healthz");
        assert_eq!(route_template("/api/v1/nope/1/2"), "unmatched");
        assert_eq!(route_template("/sessions/abc"), "dashboard");
        // An approval link's secret never reaches a log line: its API route and its page log
        // their template.
        let secret = "vlk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(
            route_template(&format!("/api/v1/approval-links/{secret}")),
            "/api/v1/approval-links/{linkToken}"
        );
        assert_eq!(route_template(&format!("/approve/{secret}")), "dashboard");
    }

    #[test]
    fn only_well_formed_trace_contexts_are_kept() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(good));
        assert!(!is_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"
        ));
        assert!(!is_traceparent(b"garbage"));
    }
}
