//! The OpenAPI document served at `GET /api/v1/openapi.json` stays in step with the router:
//! it is public and bare, every operation it documents is answered by a real route, and every
//! route the server implements is documented.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// Every route the server implements (each also has a heading in docs/api.md). Removing one from
/// the document, or documenting it under another path or method, fails the test.
const IMPLEMENTED: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{tokenId}"),
    ("GET", "/api/v1/me"),
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{sessionId}"),
    ("POST", "/api/v1/sessions/{sessionId}/stop"),
    ("POST", "/api/v1/sessions/{sessionId}/pause"),
    ("POST", "/api/v1/sessions/{sessionId}/resume"),
    ("GET", "/api/v1/sessions/{sessionId}/approvals"),
    ("POST", "/api/v1/sessions/{sessionId}/approvals"),
    (
        "POST",
        "/api/v1/sessions/{sessionId}/approvals/{approvalId}/resolve",
    ),
    ("GET", "/api/v1/sessions/{sessionId}/events"),
    ("GET", "/api/v1/sessions/{sessionId}/output"),
    ("POST", "/api/v1/sessions/{sessionId}/output"),
    ("GET", "/api/v1/sessions/{sessionId}/recording"),
    ("POST", "/api/v1/sessions/{sessionId}/state"),
    ("POST", "/api/v1/sessions/{sessionId}/usage"),
    ("POST", "/api/v1/runners/register"),
    ("GET", "/api/v1/runners"),
    ("GET", "/api/v1/runners/{runnerId}"),
    ("DELETE", "/api/v1/runners/{runnerId}"),
    ("POST", "/api/v1/runners/{runnerId}/heartbeat"),
    ("GET", "/api/v1/runners/{runnerId}/channel"),
    ("POST", "/api/v1/runners/{runnerId}/drain"),
    ("POST", "/api/v1/runners/{runnerId}/undrain"),
    ("GET", "/api/v1/fleet"),
    ("GET", "/api/v1/providers/{providerId}/versions"),
    ("POST", "/api/v1/providers/{providerId}/versions"),
    (
        "POST",
        "/api/v1/providers/{providerId}/versions/{version}/canary",
    ),
    ("POST", "/api/v1/builds"),
    ("GET", "/api/v1/builds"),
    ("GET", "/api/v1/builds/{buildId}"),
    ("POST", "/api/v1/builds/{buildId}/status"),
    ("POST", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts"),
    ("GET", "/api/v1/rollouts/{rolloutId}"),
    ("POST", "/api/v1/rollouts/{rolloutId}/advance"),
    ("POST", "/api/v1/rollouts/{rolloutId}/pause"),
    ("POST", "/api/v1/rollouts/{rolloutId}/resume"),
    ("POST", "/api/v1/rollouts/{rolloutId}/cancel"),
    ("GET", "/api/v1/orgs/{orgId}/runtime-config"),
    ("PUT", "/api/v1/orgs/{orgId}/runtime-config"),
    ("GET", "/api/v1/ws"),
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks"),
    ("DELETE", "/api/v1/webhooks/{webhookId}"),
    ("GET", "/api/v1/webhooks/{webhookId}/deliveries"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/admin/backup"),
    ("GET", "/api/v1/orgs/{orgId}/approval-policy"),
    ("PUT", "/api/v1/orgs/{orgId}/approval-policy"),
    ("POST", "/api/v1/orgs/{orgId}/approval-policy/evaluate"),
    ("GET", "/api/v1/orgs/{orgId}/notifications"),
    ("PUT", "/api/v1/orgs/{orgId}/notifications"),
    ("GET", "/api/v1/approval-links/{linkToken}"),
    ("POST", "/api/v1/approval-links/{linkToken}"),
];

/// Routes whose documented answer to an unknown id is 404 `NOT_FOUND`, like an unknown route's:
/// an approval link that was used, expired or never existed must not be told apart from
/// anything else. They are told from a missing route by their message.
const NOT_FOUND_BY_DESIGN: &[&str] = &["/api/v1/approval-links/{linkToken}"];

/// The WebSocket routes among them: documented with `x-websocket: true`, and probed with the
/// upgrade headers a client sends.
const WEBSOCKETS: &[&str] = &["/api/v1/runners/{runnerId}/channel", "/api/v1/ws"];

/// The headers of a WebSocket upgrade request (RFC 6455 §4.1).
const UPGRADE: &[(&str, &str)] = &[
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The path with every `{param}` segment replaced by a fresh random UUID.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                village::clock::random_uuid().to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn openapi_document_describes_the_implemented_routes() {
    let server = common::TestServer::start("").await;

    // (a) Public, bare (not enveloped), parsable.
    let resp = server.anonymous().get("/api/v1/openapi.json").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let content_type = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    let doc: Value = serde_json::from_str(&resp.text).expect("the document is JSON");
    assert_eq!(doc["openapi"], json!("3.0.3"));
    assert!(
        doc.get("success").is_none(),
        "the document must not be enveloped"
    );
    assert!(doc["info"]["title"].is_string());
    assert!(doc["components"]["securitySchemes"]["bearerAuth"].is_object());
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));

    // (b) Every documented operation is answered by a route.
    let admin = server.admin();
    let anonymous = server.anonymous();
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut documented = BTreeSet::new();
    let mut websockets = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, op) in item {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let method_uc = method.to_ascii_uppercase();
            documented.insert((method_uc.clone(), path.clone()));
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method_uc} {path}: no operationId"));
            assert!(
                operation_ids.insert(id.to_string()),
                "duplicate operationId {id}"
            );

            let url = concrete(path);
            let websocket = op.get("x-websocket") == Some(&json!(true));
            if websocket {
                websockets.insert(path.clone());
            }
            let resp = match method.as_str() {
                // A WebSocket route answers an upgrade request: it switches protocols (101), or,
                // with a random id, refuses it in the envelope (e.g. 404 RUNNER_NOT_FOUND).
                "get" if websocket => admin.raw("GET", &url, UPGRADE, Vec::new()).await,
                "get" => admin.get(&url).await,
                "post" => admin.post(&url, json!({})).await,
                "delete" => admin.delete(&url).await,
                "put" => admin.put(&url, json!({})).await,
                other => {
                    admin
                        .raw(&other.to_ascii_uppercase(), &url, &[], Vec::new())
                        .await
                }
            };
            let body: String = resp.text.chars().take(300).collect();
            let what = format!(
                "{method_uc} {url} (documented as {path}) -> {} {body}",
                resp.status
            );
            let link_gone = NOT_FOUND_BY_DESIGN.contains(&path.as_str())
                && resp.json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Approval link"));
            assert!(
                link_gone || !(resp.status == 404 && resp.code() == "NOT_FOUND"),
                "no route for a documented operation: {what}"
            );
            assert_ne!(resp.status, 405, "documented method not allowed: {what}");
            if websocket {
                assert_ne!(
                    resp.code(),
                    "INVALID_REQUEST",
                    "the upgrade request was not taken as one: {what}"
                );
                // Without the upgrade headers the route still answers, with a documented 400.
                let plain = admin.get(&url).await;
                assert_eq!(
                    (plain.status, plain.code()),
                    (400, "INVALID_REQUEST"),
                    "plain GET of a WebSocket route: {url} -> {}",
                    plain.text
                );
                assert!(
                    op["responses"].get("400").is_some(),
                    "400 not documented: {what}"
                );
            }
            if path == "/api/v1/openapi.json" {
                // Public and bare: checked in (a).
            } else if resp.status == 101 {
                // A switched connection has no envelope; it must really be a WebSocket.
                assert!(
                    websocket,
                    "101 from an operation not marked x-websocket: {what}"
                );
                let upgrade = resp
                    .headers
                    .get("upgrade")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                assert!(
                    upgrade.eq_ignore_ascii_case("websocket"),
                    "101 without `Upgrade: websocket`: {what}"
                );
            } else if path.starts_with("/api/v1/")
                && op["responses"][resp.status.to_string()]["content"]
                    .get("application/octet-stream")
                    .is_some()
            {
                // A file (a backup), as documented: not enveloped, but with the request id.
                let ct = resp
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                assert_eq!(ct, "application/octet-stream", "{what}");
                assert!(resp.headers.get("x-request-id").is_some(), "{what}");
            } else if path.starts_with("/api/v1/") {
                // Enveloped, with the request id.
                assert!(
                    resp.json["meta"]["requestId"].is_string(),
                    "not enveloped: {what}"
                );
                assert!(resp.headers.get("x-request-id").is_some(), "{what}");
            } else {
                // Non-API paths fall back to the dashboard; a real operation answers plain text.
                let ct = resp
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                assert!(
                    !ct.starts_with("text/html"),
                    "served by the dashboard fallback: {what}"
                );
            }
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: no responses"));
            assert!(
                responses.contains_key(&resp.status.to_string())
                    || responses.contains_key("default"),
                "status not documented: {what}"
            );

            // Operations documented as public (no security requirement, or an empty one among
            // the alternatives) answer without a token; a WebSocket is probed with the upgrade
            // headers (without them it falls through to the bearer-token gate).
            let public = op["security"]
                .as_array()
                .is_some_and(|alts| alts.is_empty() || alts.contains(&json!({})));
            if public {
                let headers = if websocket { UPGRADE } else { &[] };
                let r = anonymous.raw(&method_uc, &url, headers, Vec::new()).await;
                assert_ne!(
                    r.status, 401,
                    "documented as public but needs a token: {method_uc} {url}"
                );
            }
        }
    }

    // (c) Every implemented route is documented.
    let missing: Vec<String> = IMPLEMENTED
        .iter()
        .filter(|(m, p)| !documented.contains(&(m.to_string(), p.to_string())))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    for path in WEBSOCKETS {
        assert!(
            websockets.contains(*path),
            "{path} is not documented as a WebSocket (`x-websocket: true`)"
        );
    }

    server.stop().await;
}
