//! Property-based fuzzing of what clients send: arbitrary JSON (and bytes that are not JSON) as
//! request bodies of every write route, and as frames on both WebSockets. Whatever comes in, the
//! server answers in its envelope with a 4xx (never a 5xx), answers frames with error frames,
//! and keeps the socket open and serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use common::runner::{Channel, register};
use common::{Client, TestServer};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Field names the routes read, so generated objects reach past "is required".
const FIELDS: &[&str] = &[
    "orgId",
    "providerId",
    "repo",
    "url",
    "branch",
    "commit",
    "task",
    "options",
    "timeoutMinutes",
    "env",
    "requiredFeatures",
    "metadata",
    "kind",
    "name",
    "events",
    "secret",
    "hostname",
    "capabilities",
    "providers",
    "maxConcurrentSessions",
    "features",
    "runnerId",
    "timestamp",
    "activeSessions",
    "load",
    "runtimeVersions",
    "buildId",
    "stream",
    "data",
    "offset",
    "assignmentId",
    "state",
    "error",
    "action",
    "description",
    "context",
    "decision",
    "reason",
    "scope",
    "tokensIn",
    "tokensOut",
    "costUsd",
    "channel",
    "stages",
    "targetBuildId",
    "status",
    "runnerVersion",
    "type",
    "sessionId",
    "afterSeq",
    "token",
    "messageId",
    "version",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[a-z_]{1,12}".prop_map(Value::from),
        Just(Value::from("codex")),
        Just(Value::from("https://github.com/acme/app.git")),
        Just(Value::from("RUNNING")),
        (0usize..70_000).prop_map(|n| Value::from("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(FIELDS).prop_map(str::to_owned),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One server for the whole file, with a session, a runner and an org to aim at.
struct Target {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
    session: String,
    runner_id: String,
    runner_token: String,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, session, runner_id, runner_token) = runtime.block_on(async {
            let server = TestServer::start(
                "[sessions]\nmaxSessionsPerOrg = 100000\n[webhooks]\nmaxPerOrg = 100000\n\
                 [limits]\nperIpPerMinute = 0\nperTokenPerMinute = 0\nrunnerReportsPerMinute = 0\n",
            )
            .await;
            let admin = server.admin();
            let session = admin.create_session("acme").await["sessionId"]
                .as_str()
                .unwrap()
                .to_string();
            let (runner, _) = register(&admin, "fuzz-1", &["codex"], None, &[]).await;
            (server, session, runner.id, runner.token)
        });
        Target {
            runtime,
            server,
            session,
            runner_id,
            runner_token,
        }
    })
}

/// The answer is an envelope, and not a server failure.
fn assert_handled(route: &str, status: u16, text: &str) {
    assert!(
        (200..500).contains(&status),
        "{route} answered {status}: {text}"
    );
    let envelope: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{route}: not JSON ({e}): {text}"));
    let ok = envelope["success"].as_bool().unwrap();
    assert_eq!(ok, status < 400, "{route}: {text}");
    if !ok {
        assert!(envelope["error"]["code"].is_string(), "{route}: {text}");
    }
}

fn write_routes(t: &Target) -> Vec<(&'static str, String, bool)> {
    let s = &t.session;
    let r = &t.runner_id;
    vec![
        ("POST", "/api/v1/sessions".into(), false),
        ("POST", format!("/api/v1/sessions/{s}/stop"), false),
        ("POST", format!("/api/v1/sessions/{s}/output"), false),
        ("POST", format!("/api/v1/sessions/{s}/state"), false),
        ("POST", format!("/api/v1/sessions/{s}/usage"), false),
        ("POST", format!("/api/v1/sessions/{s}/approvals"), false),
        ("POST", "/api/v1/tokens".into(), false),
        ("POST", "/api/v1/webhooks".into(), false),
        ("POST", "/api/v1/runners/register".into(), false),
        ("POST", format!("/api/v1/runners/{r}/heartbeat"), true),
        ("POST", "/api/v1/builds".into(), false),
        ("POST", "/api/v1/rollouts".into(), false),
        ("POST", "/api/v1/providers/codex/versions".into(), false),
        ("PUT", "/api/v1/orgs/acme/runtime-config".into(), false),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_json_body_gets_an_enveloped_answer(body in json_value()) {
        let t = target();
        t.runtime.block_on(async {
            let admin = t.server.admin();
            let runner = Client::new(admin.addr, Some(&t.runner_token));
            for (method, path, as_runner) in write_routes(t) {
                let client = if as_runner { &runner } else { &admin };
                let r = client
                    .raw(method, &path, &[("content-type", "application/json")], body.to_string().into_bytes())
                    .await;
                assert_handled(&format!("{method} {path}"), r.status, &r.text);
            }
        });
    }

    #[test]
    fn bytes_that_are_not_json_are_refused_in_the_envelope(
        body in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let t = target();
        t.runtime.block_on(async {
            let admin = t.server.admin();
            for (method, path, _) in write_routes(t).into_iter().take(4) {
                let r = admin
                    .raw(method, &path, &[("content-type", "application/json")], body.clone())
                    .await;
                assert_handled(&format!("{method} {path}"), r.status, &r.text);
            }
        });
    }
}

/// Sends `frames`, then a frame that must be answered: the socket is still open and serving,
/// and no answer was a server failure.
async fn survives(ch: &mut Channel, frames: &[Value], probe: Value, answer: &str) {
    for f in frames {
        ch.send(f.clone()).await;
    }
    ch.send(probe.clone()).await;
    let mut seen = Vec::new();
    loop {
        let f = ch.recv_within(5_000).await.unwrap_or_else(|| {
            panic!("no answer to {probe} after {frames:?}; the socket sent {seen:?}")
        });
        seen.push(f.clone());
        assert_ne!(f["code"], "INTERNAL_ERROR", "{f} after {frames:?}");
        assert_ne!(f["code"], "UNAVAILABLE", "{f} after {frames:?}");
        if f["messageId"] == "probe" {
            assert_eq!(f["type"], answer, "{f}");
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_frames_leave_both_sockets_open_and_serving(
        frames in proptest::collection::vec(
            prop_oneof![
                json_value(),
                json_value().prop_map(|mut v| {
                    if let Value::Object(m) = &mut v {
                        m.insert("type".into(), json!("terminal_input"));
                    }
                    v
                }),
            ],
            1..8,
        ),
        kinds in proptest::collection::vec(
            proptest::sample::select(&[
                "authenticate", "subscribe_session", "unsubscribe_session", "subscribe_org",
                "terminal_input", "ping", "ack", "heartbeat", "session_state", "terminal_output",
                "usage", "approval_request",
            ][..]),
            8,
        ),
    ) {
        let t = target();
        // Half of the frames name a real frame type, so they reach the handlers' checks.
        let frames: Vec<Value> = frames
            .into_iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (mut f, kind))| {
                if i % 2 == 0 && let Value::Object(m) = &mut f {
                    m.insert("type".into(), json!(kind));
                    m.entry("sessionId").or_insert(json!(t.session));
                }
                f
            })
            .collect();
        t.runtime.block_on(async {
            let admin = t.server.admin();
            let mut dashboard = Channel::open(&admin, "/api/v1/ws").await;
            survives(&mut dashboard, &frames, json!({"type": "ping", "messageId": "probe"}), "pong").await;
            let runner = Client::new(admin.addr, Some(&t.runner_token));
            let path = format!("/api/v1/runners/{}/channel", t.runner_id);
            let mut channel = Channel::open(&runner, &path).await;
            let beat = json!({
                "type": "heartbeat", "messageId": "probe", "runnerId": t.runner_id,
                "timestamp": "2026-11-25T10:00:00.000Z", "activeSessions": [],
                "load": {"cpuPercent": 1.0, "memoryPercent": 2.0, "diskPercent": 3.0},
            });
            survives(&mut channel, &frames, beat, "heartbeat_ack").await;
            dashboard.close().await;
            channel.close().await;
        });
    }
}
