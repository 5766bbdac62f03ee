//! `/metrics`: read back with a Prometheus text-format parser (`prometheus-parse`), every series
//! docs/api.md lists is there, and the figures follow real traffic through the real server:
//! HTTP requests, sessions and the queue, a runner's channel and heartbeats, an approval's time
//! to decision, terminal bytes both ways, webhook attempts, the store's commits, a rollout.
#![allow(clippy::unwrap_used)]

mod common;

use common::runner::{Channel, register};
use common::{Client, TestServer, eventually};
use serde_json::json;

/// One scrape, parsed.
struct Scrape(prometheus_parse::Scrape);

async fn scrape(c: &Client) -> Scrape {
    let r = c.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let lines = r.text.lines().map(|l| Ok(l.to_owned()));
    Scrape(prometheus_parse::Scrape::parse(lines).unwrap())
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels` (a histogram's `_count` and
    /// `_sum`, and its buckets by `le`, included); `None` when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        let (base, part) = match name.rsplit_once('_') {
            Some((b, p @ ("count" | "sum" | "bucket"))) => (b, Some(p)),
            _ => (name, None),
        };
        self.0.samples.iter().find_map(|s| {
            let matches = labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .all(|(k, v)| s.labels.get(k) == Some(*v));
            match (&s.value, part) {
                (Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v), None)
                    if s.metric == name && matches =>
                {
                    Some(*v)
                }
                (Value::Histogram(buckets), Some(part)) if s.metric == base && matches => {
                    let le: Option<f64> = labels
                        .iter()
                        .find(|(k, _)| *k == "le")
                        .map(|(_, v)| v.parse().unwrap());
                    match (part, le) {
                        ("bucket", Some(le)) => buckets
                            .iter()
                            .find(|b| (b.less_than - le).abs() < 1e-9)
                            .map(|b| b.count),
                        ("count", _) => buckets.last().map(|b| b.count),
                        _ => None,
                    }
                }
                _ => None,
            }
        })
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn families(&self) -> Vec<&str> {
        self.0.docs.keys().map(String::as_str).collect()
    }
}

async fn create_session(c: &Client, org: &str) -> String {
    c.create_session(org).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn metrics_parse_and_follow_the_traffic() {
    let s = TestServer::start("[webhooks]\nallowPrivateTargets = true\n").await;
    let admin = s.admin();

    let m = scrape(&admin).await;
    assert_eq!(
        m.get(
            "village_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(m.get("village_sessions_queued", &[]), 0.0);
    assert_eq!(m.get("village_store_failing", &[]), 0.0);

    // Two sessions and no runner: both wait, the oldest for as long as the clock moved.
    let first = create_session(&admin, "acme").await;
    s.advance(10_000);
    let second = create_session(&admin, "acme").await;
    s.advance(20_000);
    let m = scrape(&admin).await;
    assert_eq!(m.get("village_sessions_created_total", &[]), 2.0);
    assert_eq!(m.get("village_sessions_queued", &[]), 2.0);
    assert_eq!(m.get("village_sessions", &[("state", "QUEUED")]), 2.0);
    assert_eq!(
        m.get("village_sessions_queued_oldest_age_seconds", &[]),
        30.0
    );
    let created = [
        ("method", "POST"),
        ("route", "/api/v1/sessions"),
        ("status", "201"),
    ];
    assert_eq!(m.get("village_http_requests_total", &created), 2.0);
    assert_eq!(
        m.get(
            "village_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/api/v1/sessions")]
        ),
        2.0
    );
    assert!(m.get("village_store_commits_total", &[]) >= 2.0);
    assert!(m.get("village_store_commit_duration_seconds_count", &[]) >= 2.0);
    assert!(m.get("village_store_commit_batch_jobs_count", &[]) >= 2.0);

    // An unknown API path is counted under `unmatched`, never under its own path.
    admin.get("/api/v1/nowhere/at/all").await;
    let m = scrape(&admin).await;
    assert_eq!(
        m.get(
            "village_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );

    // A runner with room for one session connects: the oldest session runs, one still waits.
    let (runner, _) = register(&admin, "worker-1", &["claude_code"], Some(1), &[]).await;
    runner.heartbeat().await;
    let mut ch = runner.connect().await;
    let f = ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], first.as_str());
    ch.ack(&f).await;
    let assignment = f["assignmentId"].as_str().unwrap().to_owned();
    let frame = |v: serde_json::Value| {
        let mut v = v;
        v["sessionId"] = json!(first);
        v["assignmentId"] = json!(assignment);
        v
    };
    let r = ch
        .request(frame(json!({"type": "session_state", "state": "RUNNING"})))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let mut body = runner.heartbeat_body(&[first.as_str()]);
    body["type"] = json!("heartbeat");
    let beat = ch.request(body).await;
    assert_eq!(beat["type"], "heartbeat_ack", "{beat}");
    let m = scrape(&admin).await;
    assert_eq!(m.get("village_sessions", &[("state", "RUNNING")]), 1.0);
    assert_eq!(m.get("village_sessions", &[("state", "QUEUED")]), 1.0);
    assert_eq!(m.get("village_sessions_queued", &[]), 1.0);
    assert_eq!(
        m.get("village_sessions_queued_oldest_age_seconds", &[]),
        20.0,
        "the second session is the oldest waiting now ({second})"
    );
    assert_eq!(m.get("village_runners", &[("status", "online")]), 1.0);
    assert_eq!(
        m.get("village_websocket_clients", &[("socket", "runner_channel")]),
        1.0
    );
    assert_eq!(
        m.get("village_runner_heartbeats_total", &[("via", "rest")]),
        1.0
    );
    assert_eq!(
        m.get("village_runner_heartbeats_total", &[("via", "channel")]),
        1.0
    );

    // An approval pending for 90 s, then allowed by a person.
    let ask = ch
        .request(frame(
            json!({"type": "approval_request", "action": "merge", "description": "Merge PR #7"}),
        ))
        .await;
    assert_eq!(ask["type"], "ack", "{ask}");
    let approval = ask["data"]["approvalId"].as_str().unwrap().to_owned();
    s.advance(90_000);
    let m = scrape(&admin).await;
    assert_eq!(m.get("village_approvals_pending", &[]), 1.0);
    assert_eq!(m.get("village_approvals_requested_total", &[]), 1.0);
    assert_eq!(
        m.get("village_sessions", &[("state", "WAITING_FOR_APPROVAL")]),
        1.0
    );
    let r = admin
        .post(
            &format!("/api/v1/sessions/{first}/approvals/{approval}/resolve"),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = scrape(&admin).await;
    assert_eq!(m.get("village_approvals_pending", &[]), 0.0);
    let decided = |le: &str| {
        m.get(
            "village_approval_decision_seconds_bucket",
            &[("decision", "allow"), ("by", "human"), ("le", le)],
        )
    };
    assert_eq!((decided("60"), decided("300")), (0.0, 1.0));

    // Output: stored from the runner (in), sent to a dashboard client subscribed to it (out).
    let mut dashboard = Channel::open(&admin, "/api/v1/ws").await;
    assert_eq!(dashboard.expect("event").await["event"], "connected");
    let r = dashboard
        .request(json!({"type": "subscribe_session", "sessionId": first}))
        .await;
    assert_eq!(r["event"], "subscribed", "{r}");
    let mut offset = 0;
    for text in ["compiling\n", "tests ok\n"] {
        let r = ch
            .request(frame(json!({"type": "terminal_output", "stream": "stdout", "data": text, "offset": offset})))
            .await;
        assert!(r["data"]["seq"].is_u64(), "{r}");
        offset += text.len();
        dashboard.expect("terminal").await;
    }
    let m = scrape(&admin).await;
    assert_eq!(
        m.get("village_terminal_bytes_total", &[("direction", "in")]),
        offset as f64
    );
    assert_eq!(
        m.get("village_terminal_bytes_total", &[("direction", "out")]),
        offset as f64
    );
    assert_eq!(
        m.get("village_websocket_clients", &[("socket", "dashboard")]),
        1.0
    );
    dashboard.close().await;

    // The session ends: counted as ended, gone from the gauges.
    let r = ch
        .request(frame(
            json!({"type": "session_state", "state": "COMPLETED"}),
        ))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let m = eventually(5, || async {
        let m = scrape(&admin).await;
        (m.value("village_websocket_clients", &[("socket", "dashboard")]) == Some(0.0)).then_some(m)
    })
    .await;
    assert_eq!(
        m.get("village_sessions_ended_total", &[("state", "COMPLETED")]),
        1.0
    );
    assert_eq!(m.value("village_sessions", &[("state", "RUNNING")]), None);

    // A webhook whose receiver refuses connections: its first attempt fails and is retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let r = admin
        .post(
            "/api/v1/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["session_created"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    create_session(&admin, "acme").await;
    eventually(10, || async {
        let m = scrape(&admin).await;
        m.value(
            "village_webhook_deliveries_total",
            &[("outcome", "retrying")],
        )
        .filter(|n| *n >= 1.0)
    })
    .await;

    // A rollout on the beta channel: its stage's percentage per channel.
    let r = admin
        .post(
            "/api/v1/builds",
            json!({"buildId": "b1", "runnerVersion": "1.4.0", "builtAt": "2026-11-20T10:00:00.000Z",
                   "runtimeVersions": {"claude_code": "2.1.0"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b1", "channel": "beta", "stages": [5, 50, 100]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let rollout = r.data()["rolloutId"].as_str().unwrap().to_owned();
    let r = admin
        .post(&format!("/api/v1/rollouts/{rollout}/advance"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = scrape(&admin).await;
    let reached = admin
        .get(&format!("/api/v1/rollouts/{rollout}"))
        .await
        .data()["currentPercentage"]
        .as_f64()
        .unwrap();
    assert!(reached >= 5.0);
    assert_eq!(
        m.get("village_rollout_stage_percentage", &[("channel", "beta")]),
        reached
    );
    assert_eq!(
        m.get("village_rollout_stage_percentage", &[("channel", "stable")]),
        0.0
    );
    // Every series docs/api.md lists (a labelled one appears once it has a value).
    for family in [
        "village_build_info",
        "village_http_requests_total",
        "village_http_request_duration_seconds",
        "village_http_connections_open",
        "village_websocket_clients",
        "village_terminal_bytes_total",
        "village_runner_heartbeats_total",
        "village_runner_commands_sent_total",
        "village_webhook_deliveries_total",
        "village_sessions",
        "village_sessions_created_total",
        "village_sessions_ended_total",
        "village_sessions_queued",
        "village_sessions_queued_oldest_age_seconds",
        "village_approvals_requested_total",
        "village_approvals_pending",
        "village_approval_decision_seconds",
        "village_runners",
        "village_rollout_stage_percentage",
        "village_store_commits_total",
        "village_store_write_jobs_total",
        "village_store_commit_failures_total",
        "village_store_commit_duration_seconds",
        "village_store_commit_batch_jobs",
        "village_store_failing",
        "village_store_writer_restarts_total",
    ] {
        assert!(m.families().contains(&family), "{family} missing");
    }
    // The Grafana dashboard and the alert rules chart and watch only series the server has.
    let packaging = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(packaging.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules = std::fs::read_to_string(packaging.join("prometheus-alerts.yml")).unwrap();
    for alert in [
        "VillageRunnerOffline",
        "VillageQueueTooOld",
        "VillageWebhookDeliveriesFailing",
        "VillageStoreErrors",
        "VillageStoreFailing",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}")), "{alert}");
    }
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::to_owned)
        .collect();
    let mut charted = std::collections::BTreeSet::new();
    for expr in exprs.iter().chain(&rule_exprs) {
        for name in series_names(expr) {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|f| m.families().contains(f))
                .unwrap_or(&name)
                .to_owned();
            assert!(
                m.families().contains(&family.as_str()),
                "{family} (in `{expr}`) is not a series of /metrics"
            );
            charted.insert(family);
        }
    }
    // The dashboard shows every series.
    for family in m.families() {
        assert!(charted.contains(family), "{family} is on no chart");
    }
    s.stop().await;
}

/// The `village_…` names in a PromQL expression.
fn series_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("village_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Who wrote each command to a runner: the store, right after the commit, when the channel had
/// nothing else in hand; the channel's task, when the runner's own frame was ahead of it; and
/// the backlog, when the runner reconnected with a command not yet acknowledged.
#[tokio::test]
async fn commands_to_runners_are_counted_by_who_wrote_them() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let r = org
        .put(
            "/api/v1/orgs/acme/approval-policy",
            json!({"rules": [], "defaultDecision": "allow"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = |m: Scrape| {
        ["commit", "channel", "backlog"]
            .map(|path| m.get("village_runner_commands_sent_total", &[("path", path)]))
    };
    assert_eq!(sent(scrape(&admin).await), [0.0; 3]);

    let (runner, _) = register(&admin, "worker-1", &["claude_code"], None, &[]).await;
    let mut ch = runner.connect().await;
    // Answered, so the channel is past its backlog and idle.
    let mut beat = runner.heartbeat_body(&[]);
    beat["type"] = json!("heartbeat");
    assert_eq!(ch.request(beat).await["type"], "heartbeat_ack");
    let id = create_session(&org, "acme").await;
    let first = ch.expect("assign_session").await;
    assert_eq!(sent(scrape(&admin).await), [1.0, 0.0, 0.0]);

    // Not acknowledged: the next connection gets it again, from the backlog.
    ch.close().await;
    let mut ch = runner.connect().await;
    let again = ch.expect("assign_session").await;
    assert_eq!(again["messageId"], first["messageId"]);
    assert_eq!(sent(scrape(&admin).await), [1.0, 0.0, 1.0]);
    let assignment = again["assignmentId"].as_str().unwrap().to_owned();
    ch.ack(&again).await;
    let r = ch
        .request(json!({"type": "session_state", "sessionId": id,
                        "assignmentId": assignment, "state": "RUNNING"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");

    // The policy decides the approval in the commit that stores the request: its decision
    // goes after the request's answer, through the channel's task.
    let ask = ch
        .request_keeping_others(json!({"type": "approval_request", "sessionId": id,
                                       "assignmentId": assignment, "action": "deploy",
                                       "description": "deploy it"}))
        .await;
    assert_eq!(ask["data"]["decision"], "allow", "{ask}");
    let resolved = ch.expect("approval_resolved").await;
    assert_eq!(resolved["decision"], "allow");
    assert_eq!(sent(scrape(&admin).await), [1.0, 1.0, 1.0]);
    s.stop().await;
}
