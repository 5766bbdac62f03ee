//! Logs as an operator's collector reads them: `--log-format json` (here `VILLAGE_LOG_FORMAT`)
//! writes one JSON object per line, with one line per request that carries its request id, route
//! template, status, duration, the caller's token id (never the secret) and the trace id of a
//! `traceparent`, which is echoed like `X-Request-Id`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{BinaryServer, tmp_dir};
use serde_json::Value;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn json_logs_carry_one_line_per_request_with_its_ids() {
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[("VILLAGE_LOG_FORMAT", "json")]);
    let admin = server.admin();
    let me = admin.get("/api/v1/me").await;
    let token_id = me.data()["tokenId"].as_str().unwrap().to_owned();

    let missing = "/api/v1/sessions/0196a0b2-0000-7000-8000-000000000000";
    let r = admin
        .raw(
            "GET",
            missing,
            &[("x-request-id", "req-logs-1"), ("traceparent", TRACEPARENT)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 404);
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(header("x-request-id"), "req-logs-1");
    assert_eq!(header("traceparent"), TRACEPARENT);
    // Without one, the id made for the request is the envelope's and the header's.
    let plain = admin.get("/api/v1/fleet").await;
    let made = plain
        .headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_str(&plain.text).unwrap();
    assert_eq!(body["meta"]["requestId"], made.as_str());
    assert!(plain.headers.get("traceparent").is_none());
    // A malformed trace context is neither echoed nor logged.
    let bad = admin
        .raw(
            "GET",
            "/healthz",
            &[("traceparent", "00-zz-yy-01")],
            Vec::new(),
        )
        .await;
    assert!(bad.headers.get("traceparent").is_none());
    let page = common::Client::new(server.addr, None)
        .get("/sessions/page")
        .await;
    assert_eq!(page.status, 200);

    let lines = common::eventually(5, || {
        let log = server.log();
        async move {
            let n = log
                .lines()
                .filter(|l| l.contains("village::request"))
                .count();
            (n >= 5).then_some(log)
        }
    })
    .await;
    server.terminate();
    let log = server.log();
    assert!(
        !log.contains(&server.admin_token),
        "the admin token was logged"
    );
    let parsed: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        parsed
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let requests: Vec<&Value> = parsed
        .iter()
        .filter(|l| l["target"] == "village::request")
        .collect();
    let line = requests
        .iter()
        .find(|l| l["request_id"] == "req-logs-1")
        .unwrap_or_else(|| panic!("no line for the request: {lines}"));
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/api/v1/sessions/{sessionId}");
    assert_eq!(line["status"], 404);
    assert_eq!(line["token_id"], token_id.as_str());
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    let fleet = requests
        .iter()
        .find(|l| l["request_id"] == made.as_str())
        .unwrap();
    assert_eq!(
        (fleet["route"].clone(), fleet["status"].clone()),
        ("/api/v1/fleet".into(), 200.into())
    );
    let health = requests.iter().find(|l| l["route"] == "/healthz").unwrap();
    assert!(
        health.get("token_id").is_none() && health.get("trace_id").is_none(),
        "{health}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l["route"] == "dashboard" && l["status"] == 200)
    );
}

#[test]
fn an_unknown_log_format_stops_the_start() {
    let (_keep, dir) = tmp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_village"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "yaml",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"));
}
