//! Budgets and spend over real HTTP and the runner channel (docs/api.md, "Budgets and spend"):
//! session limits by cost and by tokens, the org's monthly limit, resume rules, UTC months on a
//! manual clock, and spend that survives restarts and purges.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::{Datelike, TimeZone, Utc};
use common::runner::{Channel, register, running_on_channel};
use common::{BinaryServer, Client, TestServer, eventually, tmp_dir};
use serde_json::{Value, json};

async fn report(ch: &mut Channel, id: &str, assignment: &str, usage: Value) {
    let mut frame = json!({"type": "usage", "sessionId": id, "assignmentId": assignment});
    for (k, v) in usage.as_object().unwrap() {
        frame[k] = v.clone();
    }
    let r = ch.request_keeping_others(frame).await;
    assert_eq!(r["type"], "ack", "{r}");
}

async fn budget_events(c: &Client, id: &str) -> Vec<Value> {
    let r = c
        .get(&format!("/api/v1/sessions/{id}/events?limit=1000"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "budget_reached")
        .cloned()
        .collect()
}

async fn put_budget(admin: &Client, org: &str, budget: Value) {
    let r = admin
        .put(&format!("/api/v1/orgs/{org}/budget"), budget)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_session_reaching_its_cost_limit_is_paused_once_and_resumes_when_raised() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    put_budget(&admin, "acme", json!({"sessionUsd": 1.0})).await;
    let (mut ch, id, a) = running_on_channel(&admin, &org, "worker").await;

    report(&mut ch, &id, &a, json!({"costUsd": 0.4, "tokensIn": 10})).await;
    report(&mut ch, &id, &a, json!({"costUsd": 0.99})).await;
    assert_eq!(org.session(&id).await["state"], "RUNNING");
    ch.expect_none("pause_session", 100).await;

    // The crossing report: paused (not ended), the runner told to pause, the event recorded.
    report(&mut ch, &id, &a, json!({"costUsd": 1.0})).await;
    let d = org.session(&id).await;
    assert_eq!(d["state"], "PAUSED_BY_HUMAN", "{d}");
    assert_eq!(d["pauseReason"], "budget");
    let pause = ch.expect("pause_session").await;
    assert_eq!(pause["sessionId"], id.as_str());
    ch.ack(&pause).await;
    // Reports while paused are kept, and pause nothing again.
    report(&mut ch, &id, &a, json!({"costUsd": 1.3})).await;
    report(&mut ch, &id, &a, json!({"costUsd": 1.5})).await;
    ch.expect_none("pause_session", 200).await;
    let events = budget_events(&org, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["data"],
        json!({"scope": "session", "metric": "costUsd", "limit": 1.0, "spent": 1.0})
    );
    let list = org
        .get("/api/v1/sessions?orgId=acme&state=PAUSED_BY_HUMAN")
        .await;
    assert_eq!(list.data()["items"][0]["pauseReason"], "budget");
    assert_eq!(list.data()["items"][0]["costUsd"], 1.5);

    // Resume is refused until the limit is above the spend; raising it resumes nothing.
    let path = format!("/api/v1/sessions/{id}/resume");
    org.post_empty(&path)
        .await
        .expect_error(409, "BUDGET_EXCEEDED");
    put_budget(&admin, "acme", json!({"sessionUsd": 1.5})).await;
    org.post_empty(&path)
        .await
        .expect_error(409, "BUDGET_EXCEEDED");
    org.post(&path, json!({"force": true}))
        .await
        .expect_error(403, "FORBIDDEN");
    put_budget(&admin, "acme", json!({"sessionUsd": 5})).await;
    assert_eq!(org.session(&id).await["state"], "PAUSED_BY_HUMAN");
    let r = org.post_empty(&path).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["state"], "RUNNING");
    assert!(r.data().get("pauseReason").is_none(), "{}", r.text);
    let resume = ch.expect("resume_session").await;
    assert_eq!(resume["sessionId"], id.as_str());

    // A person's pause is `human`, and the next crossing pauses again.
    report(&mut ch, &id, &a, json!({"costUsd": 5.2})).await;
    assert_eq!(budget_events(&org, &id).await.len(), 2);
    put_budget(&admin, "acme", json!({})).await;
    assert_eq!(org.post_empty(&path).await.status, 200);
    let r = org
        .post_empty(&format!("/api/v1/sessions/{id}/pause"))
        .await;
    assert_eq!(r.data()["pauseReason"], "human", "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn a_session_reaching_its_token_limit_is_paused_and_an_admin_may_force_it_on() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    put_budget(&admin, "acme", json!({"sessionTokens": 1000})).await;
    let (mut ch, id, a) = running_on_channel(&admin, &org, "worker").await;

    report(&mut ch, &id, &a, json!({"tokensIn": 600, "tokensOut": 399})).await;
    assert_eq!(org.session(&id).await["state"], "RUNNING");
    report(&mut ch, &id, &a, json!({"tokensOut": 400})).await;
    assert_eq!(org.session(&id).await["pauseReason"], "budget");
    ch.expect("pause_session").await;
    let events = budget_events(&org, &id).await;
    assert_eq!(
        events[0]["data"],
        json!({"scope": "session", "metric": "tokens", "limit": 1000.0, "spent": 1000.0})
    );

    // An admin resumes over the limit; the session is not paused for budget again.
    let path = format!("/api/v1/sessions/{id}/resume");
    admin
        .post_empty(&path)
        .await
        .expect_error(409, "BUDGET_EXCEEDED");
    let r = admin.post(&path, json!({"force": true})).await;
    assert_eq!(r.data()["state"], "RUNNING", "{}", r.text);
    report(&mut ch, &id, &a, json!({"tokensOut": 5000})).await;
    assert_eq!(org.session(&id).await["state"], "RUNNING");
    assert_eq!(budget_events(&org, &id).await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn the_monthly_limit_refuses_new_sessions_and_pauses_every_running_one() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let other = admin.with_token(&admin.create_token("org", Some("globex")).await);
    put_budget(&admin, "acme", json!({"monthlyUsd": 10})).await;
    let (mut ch1, id1, a1) = running_on_channel(&admin, &org, "w1").await;
    let (mut ch2, id2, a2) = running_on_channel(&admin, &org, "w2").await;

    report(&mut ch1, &id1, &a1, json!({"costUsd": 6})).await;
    report(&mut ch2, &id2, &a2, json!({"costUsd": 3.5})).await;
    assert_eq!(org.session(&id1).await["state"], "RUNNING");
    assert_eq!(org.session(&id2).await["state"], "RUNNING");
    // 6 + 4 = 10: the org's limit is reached by session 2's report, and both pause.
    report(&mut ch2, &id2, &a2, json!({"costUsd": 4})).await;
    for (ch, id) in [(&mut ch1, &id1), (&mut ch2, &id2)] {
        let d = org.session(id).await;
        assert_eq!(
            (d["state"].as_str(), d["pauseReason"].as_str()),
            (Some("PAUSED_BY_HUMAN"), Some("budget")),
            "{d}"
        );
        ch.expect("pause_session").await;
        let e = budget_events(&org, id).await;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0]["data"]["scope"], "org");
        assert_eq!(e[0]["data"]["limit"], 10.0);
    }

    let new = json!({"orgId": "acme", "providerId": "claude_code", "repo": {"url": "https://github.com/acme/app.git"}});
    org.post("/api/v1/sessions", new.clone())
        .await
        .expect_error(429, "BUDGET_EXCEEDED");
    // Another org is not limited by it.
    other.create_session("globex").await;
    let usage = org.get("/api/v1/orgs/acme/usage").await;
    assert_eq!(usage.data()["costUsd"], 10.0, "{}", usage.text);
    assert_eq!(usage.data()["sessions"], 2);

    let resume1 = format!("/api/v1/sessions/{id1}/resume");
    org.post_empty(&resume1)
        .await
        .expect_error(409, "BUDGET_EXCEEDED");
    put_budget(&admin, "acme", json!({"monthlyUsd": 10.0})).await;
    org.post_empty(&resume1)
        .await
        .expect_error(409, "BUDGET_EXCEEDED");
    put_budget(&admin, "acme", json!({"monthlyUsd": 20})).await;
    assert_eq!(org.session(&id2).await["state"], "PAUSED_BY_HUMAN");
    assert_eq!(org.post_empty(&resume1).await.data()["state"], "RUNNING");
    ch1.expect("resume_session").await;
    assert_eq!(org.post("/api/v1/sessions", new).await.status, 201);
    s.stop().await;
}

#[tokio::test]
async fn budgets_are_validated_and_only_admins_change_them() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let other = admin.with_token(&admin.create_token("org", Some("globex")).await);
    let path = "/api/v1/orgs/acme/budget";
    let none =
        json!({"orgId": "acme", "monthlyUsd": null, "sessionUsd": null, "sessionTokens": null});
    assert_eq!(org.get(path).await.data(), &none);

    let r = admin
        .put(
            path,
            json!({"monthlyUsd": -1, "sessionUsd": "2", "sessionTokens": 10.5}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    let mut paths = r.issue_paths();
    paths.sort();
    assert_eq!(paths, ["monthlyUsd", "sessionTokens", "sessionUsd"]);
    assert_eq!(
        org.get(path).await.data(),
        &none,
        "a refused PUT changes nothing"
    );
    org.put(path, json!({"monthlyUsd": 5}))
        .await
        .expect_error(403, "FORBIDDEN");
    other.get(path).await.expect_error(403, "FORBIDDEN");

    put_budget(
        &admin,
        "acme",
        json!({"monthlyUsd": 100, "sessionUsd": 2.5}),
    )
    .await;
    // A PUT replaces the whole budget: an absent field is no limit.
    put_budget(&admin, "acme", json!({"sessionTokens": 5000})).await;
    assert_eq!(
        org.get(path).await.data(),
        &json!({"orgId": "acme", "monthlyUsd": null, "sessionUsd": null, "sessionTokens": 5000})
    );
    let audit = admin.get("/api/v1/audit?limit=1000").await;
    let updates = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "budget.update" && e["target"] == "acme")
        .count();
    assert_eq!(updates, 2, "{}", audit.text);
    org.get("/api/v1/orgs/acme/usage?month=2026-13")
        .await
        .expect_error(400, "VALIDATION_ERROR");
    s.stop().await;
}

/// Milliseconds of the first instant of the UTC month after `ms`.
fn next_month_start(ms: i64) -> i64 {
    let t = Utc.timestamp_millis_opt(ms).unwrap();
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

fn month_name(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .unwrap()
        .format("%Y-%m")
        .to_string()
}

#[tokio::test]
async fn months_turn_at_midnight_utc() {
    let s = TestServer::start("[sessions]\ndefaultTimeoutMinutes = 120\n").await;
    let admin = s.admin();
    put_budget(&admin, "acme", json!({"monthlyUsd": 10})).await;
    let boundary = next_month_start(s.now_ms());
    // An hour before the month ends.
    s.advance(boundary - 3_600_000 - s.now_ms());
    let (before, after) = (month_name(s.now_ms()), month_name(boundary));
    let id = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    admin.start_session(&id).await;
    let usage = format!("/api/v1/sessions/{id}/usage");
    assert_eq!(
        admin
            .post(&usage, json!({"costUsd": 12, "tokensIn": 100}))
            .await
            .status,
        200
    );
    assert_eq!(admin.session(&id).await["pauseReason"], "budget");
    let new = json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://github.com/acme/app.git"}});
    // The last millisecond of the month still counts it.
    s.advance(boundary - 1 - s.now_ms());
    admin
        .post("/api/v1/sessions", new.clone())
        .await
        .expect_error(429, "BUDGET_EXCEEDED");
    s.advance(1);
    assert_eq!(admin.post("/api/v1/sessions", new).await.status, 201);
    // A new month: the paused session may resume, and what it spends now counts there.
    let r = admin
        .post_empty(&format!("/api/v1/sessions/{id}/resume"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        admin
            .post(&usage, json!({"costUsd": 15, "tokensIn": 150}))
            .await
            .status,
        200
    );
    let old = admin
        .get(&format!("/api/v1/orgs/acme/usage?month={before}"))
        .await;
    let new = admin.get("/api/v1/orgs/acme/usage").await;
    assert_eq!(new.data()["month"], after.as_str());
    assert_eq!(
        (
            &old.data()["costUsd"],
            &old.data()["tokensIn"],
            &old.data()["sessions"]
        ),
        (&json!(12.0), &json!(100), &json!(1)),
        "{}",
        old.text
    );
    assert_eq!(
        (
            &new.data()["costUsd"],
            &new.data()["tokensIn"],
            &new.data()["sessions"]
        ),
        (&json!(3.0), &json!(50), &json!(0)),
        "{}",
        new.text
    );
    assert_eq!(old.data()["byDay"].as_array().unwrap().len(), 1);
    let last_day = Utc
        .timestamp_millis_opt(boundary - 1)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(old.data()["byDay"][0]["date"], last_day.as_str());
    assert_eq!(
        new.data()["byDay"][0]["byProvider"]["claude_code"]["costUsd"],
        3.0
    );
    s.stop().await;
}

/// Final usage of the sessions below: (provider, cost, tokens in, tokens out).
const SPENT: [(&str, f64, u64, u64); 3] = [
    ("claude_code", 1.25, 1000, 200),
    ("claude_code", 0.5, 300, 40),
    ("codex", 2.0, 5000, 700),
];

fn assert_totals(usage: &Value) {
    let cost: f64 = SPENT.iter().map(|s| s.1).sum();
    let tokens_in: u64 = SPENT.iter().map(|s| s.2).sum();
    let tokens_out: u64 = SPENT.iter().map(|s| s.3).sum();
    assert_eq!(usage["costUsd"], cost, "{usage}");
    assert_eq!(usage["tokensIn"], tokens_in, "{usage}");
    assert_eq!(usage["tokensOut"], tokens_out, "{usage}");
    assert_eq!(usage["sessions"], 3, "{usage}");
    assert_eq!(
        usage["byProvider"]["claude_code"]["costUsd"], 1.75,
        "{usage}"
    );
    assert_eq!(usage["byProvider"]["claude_code"]["sessions"], 2, "{usage}");
    assert_eq!(usage["byProvider"]["codex"]["tokensIn"], 5000, "{usage}");
}

#[tokio::test]
async fn spend_survives_kill_9_restarts_and_purges_of_its_sessions() {
    let (_dir, data) = tmp_dir();
    // Finished sessions are purged 1.8 s after they end.
    let env = [("VILLAGE_SESSIONS_SESSION_DATA_TTL_HOURS", "0.0005")];
    let mut server = BinaryServer::spawn(&data, &env);
    let admin = server.admin();
    let mut ids = Vec::new();
    for (provider, cost, tokens_in, tokens_out) in SPENT {
        let r = admin
            .post(
                "/api/v1/sessions",
                json!({"orgId": "acme", "providerId": provider, "repo": {"url": "https://github.com/acme/app.git"}}),
            )
            .await;
        let id = r.data()["sessionId"].as_str().unwrap().to_string();
        admin.start_session(&id).await;
        let usage = format!("/api/v1/sessions/{id}/usage");
        // Reports replace the figures: a higher one, then a lower correction, then the final.
        for k in [2.0, 0.5, 1.0] {
            let r = admin
                .post(
                    &usage,
                    json!({"costUsd": cost * k, "tokensIn": (tokens_in as f64 * k) as u64,
                           "tokensOut": (tokens_out as f64 * k) as u64}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        ids.push(id);
    }
    let first = admin.get("/api/v1/orgs/acme/usage").await;
    assert_totals(first.data());
    let month = first.data()["month"].as_str().unwrap().to_string();
    let path = format!("/api/v1/orgs/acme/usage?month={month}");

    server.kill9();
    let mut server = BinaryServer::spawn(&data, &env);
    let admin = server.admin();
    assert_totals(admin.get(&path).await.data());

    for id in &ids {
        let r = admin
            .post(&format!("/api/v1/sessions/{id}/stop"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    for id in &ids {
        let gone = format!("/api/v1/sessions/{id}");
        eventually(30, || {
            let admin = admin.clone();
            let gone = gone.clone();
            async move { (admin.get(&gone).await.status == 404).then_some(()) }
        })
        .await;
    }
    assert_totals(admin.get(&path).await.data());
    server.terminate();
    let server = BinaryServer::spawn(&data, &env);
    assert_totals(server.admin().get(&path).await.data());
}

#[tokio::test]
async fn budget_reached_reaches_the_stream_webhooks_and_notifications_and_builds_are_compared() {
    let s = TestServer::start("[webhooks]\nallowPrivateTargets = true\n").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let hook = common::receiver::Receiver::start().await;
    let slack = common::receiver::Receiver::start().await;
    let r = org
        .post(
            "/api/v1/webhooks",
            json!({"url": hook.url(), "events": ["budget_reached"], "orgId": "acme"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = org
        .put(
            "/api/v1/orgs/acme/notifications",
            json!({"targets": [{"id": "team", "kind": "slack", "url": slack.url(), "events": ["budget_reached"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut stream = Channel::open(&org, "/api/v1/ws").await;
    let r = stream
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(r["event"], "subscribed", "{r}");

    // Two sessions on a runner of build-1: one completes, one fails.
    let (runner, _) = register(&admin, "worker", &["claude_code"], Some(2), &[]).await;
    runner.heartbeat().await;
    let mut ch = runner.connect().await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let id = org.create_session("acme").await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let a = ch.start_next_assignment(&id).await;
        sessions.push((id, a));
    }
    put_budget(&admin, "acme", json!({"sessionUsd": 2})).await;
    let (id, a) = &sessions[0];
    report(&mut ch, id, a, json!({"costUsd": 2.5})).await;

    let frame = loop {
        let f = stream.expect("event").await;
        if f["event"] == "budget_reached" {
            break f;
        }
    };
    assert_eq!(frame["data"]["sessionId"], id.as_str(), "{frame}");
    assert_eq!(frame["data"]["scope"], "session", "{frame}");
    let delivery = hook.expect("budget_reached", |_| true).await;
    assert_eq!(delivery["data"]["spent"], 2.5, "{delivery}");
    let message = eventually(10, || async { slack.messages().into_iter().next() }).await;
    let text = message["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("Budget reached") && text.contains("$2.50"),
        "{message}"
    );

    // Outcomes per build: the runner reported build-1 in its heartbeat.
    put_budget(&admin, "acme", json!({})).await;
    let r = admin
        .post_empty(&format!("/api/v1/sessions/{id}/resume"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = ch
        .request_keeping_others(json!({"type": "session_state", "sessionId": id, "assignmentId": a, "state": "COMPLETED"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let (id2, a2) = &sessions[1];
    report(&mut ch, id2, a2, json!({"costUsd": 0.75})).await;
    let r = ch
        .request_keeping_others(json!({"type": "session_state", "sessionId": id2, "assignmentId": a2, "state": "FAILED", "error": "agent crashed"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let builds = eventually(10, || async {
        let u = org.get("/api/v1/orgs/acme/usage").await;
        let b = u.data()["byBuild"].clone();
        (b[0]["sessions"] == 2).then_some(b)
    })
    .await;
    assert_eq!(
        builds,
        json!([{"buildId": "build-1", "sessions": 2, "completed": 1, "failed": 1, "costUsd": 3.25,
                "costPerCompletedUsd": 2.5, "failureRate": 0.5}])
    );
    s.stop().await;
}
