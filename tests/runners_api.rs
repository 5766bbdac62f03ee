//! The runner fleet over real HTTP and WebSocket, with simulated runners (docs/api.md, 6 and 11).
#![allow(clippy::unwrap_used)]

mod common;

use common::runner::{Channel, SimRunner, Upgrade, register};
use common::{Client, TestServer, eventually};
use serde_json::{Value, json};

const FAST: &str = "[runners]\nrestartGraceMs = 1\n";

async fn create(c: &Client, org: &str, provider: &str, features: &[&str]) -> String {
    let r = c
        .post(
            "/api/v1/sessions",
            json!({"orgId": org, "providerId": provider, "repo": {"url": "https://x.org/a"},
                   "options": {"requiredFeatures": features, "env": {"TOKEN": "s3cr3t"}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data()["sessionId"].as_str().unwrap().to_string()
}

/// A server with one codex runner connected and one session of `org` assigned to it (not yet
/// acked): where the tests of a single assignment start.
struct OneAssigned {
    s: TestServer,
    admin: Client,
    runner: SimRunner,
    ch: Channel,
    session: String,
    assign: Value,
}

async fn one_assigned(hostname: &str, org: &str) -> OneAssigned {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (runner, _) = register(&admin, hostname, &["codex"], None, &[]).await;
    let mut ch = runner.connect().await;
    let session = create(&admin, org, "codex", &[]).await;
    let assign = ch.expect("assign_session").await;
    assert_eq!(assign["session"]["sessionId"], session.as_str());
    OneAssigned {
        s,
        admin,
        runner,
        ch,
        session,
        assign,
    }
}

async fn state_of(c: &Client, id: &str) -> Value {
    c.session(id).await
}

/// Waits for the assignment of `session` on `ch` and confirms it as RUNNING.
async fn start(ch: &mut Channel, session: &str) -> String {
    let f = ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], session);
    ch.ack(&f).await;
    let assignment = f["assignmentId"].as_str().unwrap().to_string();
    let r = ch
        .request(json!({"type": "session_state", "sessionId": session, "assignmentId": assignment, "state": "RUNNING"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    assignment
}

#[tokio::test]
async fn registration_org_shared_idempotent_and_limited() {
    let s = TestServer::start("[runners]\nmaxRunnersPerOrg = 2\ndefaultCapacity = 3\n").await;
    let admin = s.admin();
    let acme_join = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    let shared_join = admin.with_token(&admin.create_token("runner_join", None).await);

    let (a1, r) = register(&acme_join, "a1", &["codex"], None, &[]).await;
    assert_eq!(r.status, 201);
    let info = &r.data()["runner"];
    assert_eq!(info["orgId"], "acme");
    assert_eq!(info["status"], "online");
    assert_eq!(
        info["capabilities"]["maxConcurrentSessions"], 3,
        "defaultCapacity applies"
    );
    assert_eq!(info["metadata"], json!({"os": "linux"}));
    assert!(r.data()["heartbeatIntervalMs"].as_u64().unwrap() > 0);

    let (shared, r) = register(&shared_join, "s1", &["omnara"], Some(7), &["gpu"]).await;
    assert!(r.data()["runner"].get("orgId").is_none());
    assert_eq!(
        r.data()["runner"]["capabilities"]["maxConcurrentSessions"],
        7
    );

    // Same hostname again: same id, 200, a fresh token; the old token stops working.
    let (again, r) = register(&acme_join, "a1", &["codex", "omnara"], None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(again.id, a1.id);
    assert_ne!(again.token, a1.token);
    a1.client
        .post(
            &format!("/api/v1/runners/{}/heartbeat", a1.id),
            a1.heartbeat_body(&[]),
        )
        .await
        .expect_error(401, "UNAUTHORIZED");
    again.heartbeat().await;

    register(&acme_join, "a2", &["codex"], None, &[]).await;
    let r = acme_join
        .post(
            "/api/v1/runners/register",
            json!({"hostname": "a3", "capabilities": {"providers": ["codex"]}}),
        )
        .await;
    r.expect_error(429, "RUNNER_LIMIT_EXCEEDED");
    // Shared runners do not count against an org.
    register(&shared_join, "s2", &["codex"], None, &[]).await;

    let bad = acme_join
        .post(
            "/api/v1/runners/register",
            json!({"hostname": " ", "capabilities": {"providers": ["vim"], "maxConcurrentSessions": 0}}),
        )
        .await;
    bad.expect_error(400, "VALIDATION_ERROR");
    let mut paths = bad.issue_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "capabilities.maxConcurrentSessions",
            "capabilities.providers[0]",
            "hostname"
        ]
    );
    // Org tokens cannot register runners.
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    org.post(
        "/api/v1/runners/register",
        json!({"hostname": "x", "capabilities": {"providers": ["codex"]}}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    let list = admin.get("/api/v1/runners").await;
    assert_eq!(list.data()["total"], 4);
    let names: Vec<&str> = list.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2", "s1", "s2"]);
    assert_eq!(
        org.get("/api/v1/runners").await.data()["total"],
        2,
        "an org sees its own runners"
    );
    org.get(&format!("/api/v1/runners/{}", shared.id))
        .await
        .expect_error(404, "RUNNER_NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn heartbeats_are_validated_authorised_and_kept_off_the_disk() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], None, &[]).await;
    let (b, _) = register(&admin, "b", &["codex"], None, &[]).await;
    let r = a.heartbeat().await;
    assert_eq!(r.data()["status"], "online");
    assert_eq!(r.data()["drain"], false);
    assert_eq!(r.data()["desiredBuild"], Value::Null);
    let info = a.info(&admin).await;
    assert_eq!(info["load"]["cpuPercent"], 12.5);
    assert_eq!(info["runtimeVersions"]["codex"], "0.9.1");
    assert_eq!(info["buildId"], "build-1");

    // Another runner's id is 403; an unknown one 404.
    b.client
        .post(
            &format!("/api/v1/runners/{}/heartbeat", a.id),
            a.heartbeat_body(&[]),
        )
        .await
        .expect_error(403, "FORBIDDEN");
    let ghost = "6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11";
    let mut body = a.heartbeat_body(&[]);
    body["runnerId"] = json!(ghost);
    a.client
        .post(&format!("/api/v1/runners/{ghost}/heartbeat"), body)
        .await
        .expect_error(404, "RUNNER_NOT_FOUND");

    let mut bad = a.heartbeat_body(&["not-an-id"]);
    bad["load"]["cpuPercent"] = json!(150);
    bad["timestamp"] = json!("yesterday");
    bad["runtimeVersions"] = json!({"vim": "9"});
    let r = a
        .client
        .post(&format!("/api/v1/runners/{}/heartbeat", a.id), bad)
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    let mut paths = r.issue_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "activeSessions[0]",
            "load.cpuPercent",
            "runtimeVersions.vim",
            "timestamp"
        ]
    );
    let mut other = a.heartbeat_body(&[]);
    other["runnerId"] = json!(b.id);
    a.client
        .post(&format!("/api/v1/runners/{}/heartbeat", a.id), other)
        .await
        .expect_error(400, "VALIDATION_ERROR");

    // Heartbeats do not each commit to disk.
    let commits = |t: String| {
        t.lines()
            .find(|l| l.starts_with("village_store_commits_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    let before = commits(s.anonymous().get("/metrics").await.text);
    for _ in 0..50 {
        a.heartbeat().await;
    }
    let after = commits(s.anonymous().get("/metrics").await.text);
    assert!(
        after - before < 10,
        "50 heartbeats caused {} commits",
        after - before
    );
    s.stop().await;
}

/// Behind a long queue of sessions no runner can take, a session a runner can take is still
/// placed: the commit that queues it looks only at the head of the queue, and wakes the
/// scheduler for the rest.
#[tokio::test]
async fn a_session_behind_a_long_queue_of_waiting_ones_is_placed() {
    let s = TestServer::start(&format!("{FAST}[sessions]\nmaxSessionsPerOrg = 1000\n")).await;
    let admin = s.admin();
    let (runner, _) = register(&admin, "only-codex", &["codex"], Some(2), &[]).await;
    let mut ch = runner.connect().await;
    let first = create(&admin, "acme-long", "codex", &[]).await;
    start(&mut ch, &first).await;
    // More sessions than one placement step looks at, for a provider nobody offers.
    // (Each a millisecond after the one before: the queue is in order of creation.)
    for _ in 0..300 {
        s.advance(1);
        create(&admin, "acme-long", "omnara", &[]).await;
    }
    s.advance(1);
    let id = create(&admin, "acme-long", "codex", &[]).await;
    let f = ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], id.as_str());
    s.stop().await;
}

/// A beat is answered by the edge before the route tree; the forms of the path it leaves to the
/// tree (a trailing slash) must get the same answer, refusals included, with the same
/// envelope and request id.
#[tokio::test]
async fn a_heartbeat_is_answered_alike_by_the_edge_and_the_route_tree() {
    // Bursts of 12 runner reports (72 a minute): the cases below use 10.
    let s = TestServer::start("[limits]\nrunnerReportsPerMinute = 72\n").await;
    let admin = s.admin();
    let (a, _) = register(&admin, "edge-beat", &["codex"], None, &[]).await;
    let edge = format!("/api/v1/runners/{}/heartbeat", a.id);
    let tree = format!("{edge}/");
    let body = serde_json::to_vec(&a.heartbeat_body(&[])).unwrap();
    let json = ("content-type", "application/json");
    let huge = vec![b' '; 2 * 1024 * 1024];
    let anonymous = s.anonymous();
    type Case<'c> = (&'c Client, Vec<(&'c str, &'c str)>, Vec<u8>, u16, &'c str);
    let cases: Vec<Case> = vec![
        (
            &a.client,
            vec![json, ("x-request-id", "beat-1")],
            body.clone(),
            200,
            "",
        ),
        (&anonymous, vec![json], body.clone(), 401, "UNAUTHORIZED"),
        (
            &a.client,
            vec![("content-type", "text/plain")],
            body.clone(),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            &a.client,
            vec![json],
            b"{not json".to_vec(),
            400,
            "INVALID_JSON",
        ),
        (
            &a.client,
            vec![json],
            b"[]".to_vec(),
            400,
            "VALIDATION_ERROR",
        ),
        (&a.client, vec![json], huge, 413, "PAYLOAD_TOO_LARGE"),
    ];
    for (client, headers, body, status, code) in &cases {
        for path in [&edge, &tree] {
            let r = client.raw("POST", path, headers, body.clone()).await;
            assert_eq!(r.status, *status, "{path}: {}", r.text);
            if *status == 200 {
                assert_eq!(r.data()["status"], "online", "{}", r.text);
                assert!(r.data()["heartbeatIntervalMs"].is_u64(), "{}", r.text);
                assert_eq!(r.headers["x-request-id"], "beat-1");
                assert_eq!(r.json["meta"]["requestId"], "beat-1");
            } else {
                r.expect_error(*status, code);
            }
        }
    }
    // Both forms are charged to the runner reports' budget (10 charged so far, 12 a burst).
    let mut limited = 0;
    for i in 0..6 {
        let path = if i % 2 == 0 { &edge } else { &tree };
        let r = a.client.raw("POST", path, &[json], body.clone()).await;
        if r.status == 429 {
            r.expect_error(429, "RATE_LIMITED");
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} beats limited");
    s.stop().await;
}

#[tokio::test]
async fn offline_after_the_timeout_and_back_online_on_a_heartbeat() {
    let s = TestServer::start("[runners]\nrestartGraceMs = 1\nheartbeatTimeoutMs = 30000\n").await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], None, &[]).await;
    s.advance(29_000);
    assert_eq!(a.info(&admin).await["status"], "online");
    s.advance(2_000);
    assert_eq!(a.info(&admin).await["status"], "offline");
    assert_eq!(
        admin.get("/api/v1/runners?status=offline").await.data()["total"],
        1
    );
    let r = a.heartbeat().await;
    assert_eq!(r.data()["status"], "online");
    let fleet = admin.get("/api/v1/fleet").await;
    assert_eq!(fleet.data()["online"], 1);
    assert_eq!(fleet.data()["offline"], 0);
    s.stop().await;
}

#[tokio::test]
async fn scheduling_follows_provider_features_capacity_utilisation_and_org() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let acme_join = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    let (gpu, _) = register(&admin, "gpu", &["codex"], Some(1), &["gpu"]).await;
    let (big, _) = register(&admin, "big", &["codex", "claude_code"], Some(4), &[]).await;
    let (acme, _) = register(&acme_join, "acme-only", &["omnara"], Some(2), &[]).await;
    let mut gpu_ch = gpu.connect().await;
    let mut big_ch = big.connect().await;
    let mut acme_ch = acme.connect().await;

    // Features: only the gpu runner qualifies.
    let g = create(&admin, "globex", "codex", &["gpu"]).await;
    let f = gpu_ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], g);
    assert_eq!(
        f["session"]["options"]["env"]["TOKEN"], "s3cr3t",
        "the runner gets env values"
    );
    gpu_ch.ack(&f).await;
    // Capacity: the gpu runner is full, so a second gpu session waits.
    let g2 = create(&admin, "globex", "codex", &["gpu"]).await;
    gpu_ch.expect_none("assign_session", 300).await;
    assert!(state_of(&admin, &g2).await.get("runnerId").is_none());
    // Org isolation: globex's omnara session never goes to acme's runner.
    let o = create(&admin, "globex", "omnara", &[]).await;
    acme_ch.expect_none("assign_session", 300).await;
    assert!(state_of(&admin, &o).await.get("runnerId").is_none());
    // Acme's omnara session goes to acme's runner.
    let a = create(&admin, "acme", "omnara", &[]).await;
    assert_eq!(
        acme_ch.expect("assign_session").await["session"]["sessionId"],
        a
    );
    // Provider + lowest utilisation: claude_code only on big.
    let c = create(&admin, "globex", "claude_code", &[]).await;
    let f = big_ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], c);
    let detail = state_of(&admin, &c).await;
    assert_eq!(detail["state"], "QUEUED", "assigned but not yet confirmed");
    assert_eq!(detail["runnerId"], json!(big.id));
    // The queue is oldest first: finishing the gpu session lets g2 in.
    let assignment = f["assignmentId"].clone();
    assert!(assignment.is_string());
    admin
        .post_empty(&format!("/api/v1/sessions/{g}/stop"))
        .await;
    let f = gpu_ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], g2);
    s.stop().await;
}

#[tokio::test]
async fn lowest_utilisation_wins_and_only_connected_runners_get_work() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (small, _) = register(&admin, "small", &["codex"], Some(2), &[]).await;
    let (large, _) = register(&admin, "large", &["codex"], Some(10), &[]).await;
    let (_idle, _) = register(&admin, "not-connected", &["codex"], Some(100), &[]).await;
    let mut small_ch = small.connect().await;
    let mut large_ch = large.connect().await;
    let mut on_small = 0;
    let mut on_large = 0;
    for _ in 0..6 {
        let id = create(&admin, "acme-util", "codex", &[]).await;
        let runner = eventually(5, || async {
            state_of(&admin, &id)
                .await
                .get("runnerId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .await;
        if runner == small.id {
            on_small += 1;
        } else {
            assert_eq!(runner, large.id, "a runner without a channel got work");
            on_large += 1;
        }
    }
    // Utilisation 1/2 = 0.5 > 5/10: small takes one, large the rest.
    assert_eq!((on_small, on_large), (1, 5));
    small_ch.expect("assign_session").await;
    large_ch.expect("assign_session").await;
    s.stop().await;
}

/// A session that a connected runner can take is assigned in the commit that queues it: by the
/// time its creator hears `201`, the session already names its runner (no scheduling pass in
/// between), and a session that no runner can take stays queued until one can.
#[tokio::test]
async fn a_session_is_assigned_in_the_commit_that_queues_it() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (runner, _) = register(&admin, "at-once", &["codex"], Some(3), &[]).await;
    let mut ch = runner.connect().await;
    // The first assignment proves the channel is attached.
    let first = create(&admin, "acme-now", "codex", &[]).await;
    let first_assignment = start(&mut ch, &first).await;
    for _ in 0..2 {
        let id = create(&admin, "acme-now", "codex", &[]).await;
        let detail = state_of(&admin, &id).await;
        assert_eq!(detail["runnerId"], runner.id.as_str(), "{detail}");
        let f = ch.expect("assign_session").await;
        assert_eq!(f["session"]["sessionId"], id.as_str());
    }
    // Full (3 of 3): the next one waits in the queue, and gets the slot the first one frees.
    let waiting = create(&admin, "acme-now", "codex", &[]).await;
    assert!(state_of(&admin, &waiting).await.get("runnerId").is_none());
    let r = ch
        .request(json!({"type": "session_state", "sessionId": first,
            "assignmentId": first_assignment, "state": "COMPLETED"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let f = ch.expect("assign_session").await;
    assert_eq!(f["session"]["sessionId"], waiting.as_str());
    s.stop().await;
}

/// The channel's next frame, checked to be a reply of `kind` to the frame `message_id`.
async fn next_reply(ch: &mut Channel, kind: &str, message_id: &str) -> Value {
    let reply = ch
        .recv_within(5_000)
        .await
        .unwrap_or_else(|| panic!("no reply to {message_id}"));
    assert_eq!(reply["type"], kind, "{reply}");
    assert_eq!(reply["messageId"], message_id, "{reply}");
    reply
}

/// A runner sends its ack, its RUNNING report and its agent's first approval request at once,
/// without waiting for answers (as the real runner does). The server hands each to the store
/// as it arrives instead of storing one before reading the next: the request still sees the
/// session RUNNING, and the answers come back in the order the frames were sent, a refused
/// ack's error included.
#[tokio::test]
async fn frames_sent_at_once_are_stored_and_answered_in_order() {
    let OneAssigned {
        s,
        admin,
        runner,
        mut ch,
        session: id,
        assign: f,
    } = one_assigned("at-once-frames", "acme-frames").await;
    let assignment = f["assignmentId"].as_str().unwrap().to_string();
    let frames = [
        json!({"type": "ack", "messageId": "not-a-command"}),
        json!({"type": "ack", "messageId": f["messageId"]}),
        json!({"type": "session_state", "messageId": "state-1", "sessionId": id,
               "assignmentId": assignment, "state": "RUNNING"}),
        json!({"type": "approval_request", "messageId": "ask-1", "sessionId": id,
               "assignmentId": assignment, "action": "merge", "description": "Merge PR #8"}),
    ];
    for frame in frames {
        ch.send(frame).await;
    }
    let refused = next_reply(&mut ch, "error", "not-a-command").await;
    assert_eq!(refused["code"], "VALIDATION_ERROR", "{refused}");
    next_reply(&mut ch, "ack", "state-1").await;
    let ask = next_reply(&mut ch, "ack", "ask-1").await;
    let approval = ask["data"]["approvalId"].as_str().unwrap().to_string();
    let detail = state_of(&admin, &id).await;
    assert_eq!(detail["state"], "WAITING_FOR_APPROVAL", "{detail}");
    assert_eq!(
        detail["pendingApprovals"][0]["approvalId"],
        approval.as_str(),
        "{detail}"
    );
    // The assignment was acked: a new connection is not sent it again. (What is still in the
    // outbox is sent on connecting, before any frame is read, so before the beat's answer.)
    ch.close().await;
    let mut again = runner.connect().await;
    let hb = again
        .request_keeping_others(
            json!({"type": "heartbeat", "runnerId": runner.id, "timestamp": "2026-11-25T10:00:00Z",
                   "load": {"cpuPercent": 1, "memoryPercent": 2, "diskPercent": 3}}),
        )
        .await;
    assert_eq!(hb["type"], "heartbeat_ack", "{hb}");
    let before_the_answer = again.recv_within(0).await;
    assert!(before_the_answer.is_none(), "{before_the_answer:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_full_session_driven_by_a_runner() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let (r, _) = register(&admin, "worker", &["claude_code"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&org, "acme", "claude_code", &[]).await;
    let assignment = start(&mut ch, &id).await;
    assert_eq!(org.session(&id).await["state"], "RUNNING");

    // The runner can read its session; a report without the assignment is refused.
    assert_eq!(
        r.client.get(&format!("/api/v1/sessions/{id}")).await.status,
        200
    );
    let bare = ch
        .request(json!({"type": "usage", "sessionId": id, "tokensIn": 1}))
        .await;
    assert_eq!(bare["type"], "error");
    assert_eq!(bare["code"], "VALIDATION_ERROR");

    // Approval round trip.
    let ask = ch
        .request(
            json!({"type": "approval_request", "sessionId": id, "assignmentId": assignment,
                        "action": "merge", "description": "Merge PR #7"}),
        )
        .await;
    assert_eq!(ask["type"], "ack", "{ask}");
    let approval = ask["data"]["approvalId"].as_str().unwrap().to_string();
    assert_eq!(org.session(&id).await["state"], "WAITING_FOR_APPROVAL");
    let resolved = org
        .post(
            &format!("/api/v1/sessions/{id}/approvals/{approval}/resolve"),
            json!({"decision": "allow", "reason": "ok"}),
        )
        .await;
    assert_eq!(resolved.data()["state"], "RUNNING");
    let decision = ch.expect("approval_resolved").await;
    assert_eq!(decision["approvalId"], approval.as_str());
    assert_eq!(decision["decision"], "allow");
    ch.ack(&decision).await;

    // Output and usage.
    for (i, (offset, text)) in [(0, "compiling\n"), (10, "tests ok\n")]
        .into_iter()
        .enumerate()
    {
        let r = ch
            .request(
                json!({"type": "terminal_output", "sessionId": id, "assignmentId": assignment,
                            "stream": "stdout", "data": text, "offset": offset}),
            )
            .await;
        assert_eq!(r["data"]["seq"], i + 1, "{r}");
    }
    let u = ch
        .request(json!({"type": "usage", "sessionId": id, "assignmentId": assignment, "tokensIn": 1200, "apiCalls": 4}))
        .await;
    assert_eq!(u["type"], "ack");
    // Pause and resume reach the runner.
    org.post_empty(&format!("/api/v1/sessions/{id}/pause"))
        .await;
    let p = ch.expect("pause_session").await;
    ch.ack(&p).await;
    org.post_empty(&format!("/api/v1/sessions/{id}/resume"))
        .await;
    let p = ch.expect("resume_session").await;
    ch.ack(&p).await;
    let done = ch
        .request(json!({"type": "session_state", "sessionId": id, "assignmentId": assignment, "state": "COMPLETED"}))
        .await;
    assert_eq!(done["type"], "ack");
    let d = org.session(&id).await;
    assert_eq!(d["state"], "COMPLETED");
    assert_eq!(d["usage"]["tokensIn"], 1200);
    let out = org.get(&format!("/api/v1/sessions/{id}/output")).await;
    assert_eq!(out.data()["items"].as_array().unwrap().len(), 2);
    assert_eq!(r.info(&admin).await["load"]["activeSessions"], 0);
    // Unknown frames and bad JSON are answered, and the channel stays open.
    ch.send(json!({"type": "dance", "messageId": "m1"})).await;
    let e = ch.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["messageId"].as_str()),
        (Some("UNKNOWN_MESSAGE_TYPE"), Some("m1"))
    );
    ch.ws
        .send(tokio_tungstenite::tungstenite::Message::text("{oops"))
        .await
        .unwrap();
    assert_eq!(ch.expect("error").await["code"], "INVALID_MESSAGE");
    ch.send(json!({"type": "usage", "pad": "x".repeat(1024 * 1024 + 1)}))
        .await;
    assert_eq!(ch.expect("error").await["code"], "MESSAGE_TOO_LARGE");
    let hb = ch
        .request(
            json!({"type": "heartbeat", "runnerId": r.id, "timestamp": "2026-11-25T10:00:00Z",
                               "load": {"cpuPercent": 1, "memoryPercent": 2, "diskPercent": 3}}),
        )
        .await;
    assert_eq!(hb["type"], "heartbeat_ack");
    assert_eq!(hb["status"], "online");
    s.stop().await;
}

/// The runner channel takes every approval action and the cost; a decision's scope reaches the
/// runner in `approval_resolved` exactly when one was given.
#[tokio::test]
async fn agent_permission_requests_and_scoped_decisions_over_the_channel() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let (r, _) = register(&admin, "worker", &["gemini_cli"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&org, "acme", "gemini_cli", &[]).await;
    let assignment = start(&mut ch, &id).await;

    let context = json!({"tool": "write_file", "input": {"path": "src/a.rs", "content": "fn main() {}\n"},
                         "agent": {"protocol": "acp", "options": [{"optionId": "once", "kind": "allow_once"}]}});
    let mut asked = Vec::new();
    for action in [
        "merge",
        "deps_add",
        "secrets",
        "deploy",
        "command",
        "file_change",
        "network",
        "other",
    ] {
        let ack = ch
            .request(json!({"type": "approval_request", "sessionId": id, "assignmentId": assignment,
                            "action": action, "description": format!("wants {action}"), "context": context}))
            .await;
        assert_eq!(ack["type"], "ack", "{action}: {ack}");
        assert_eq!(ack["data"]["action"], action);
        assert_eq!(ack["data"]["context"], context);
        asked.push(ack["data"]["approvalId"].as_str().unwrap().to_string());
    }
    let bad = ch
        .request(
            json!({"type": "approval_request", "sessionId": id, "assignmentId": assignment,
                        "action": "sudo", "description": "x"}),
        )
        .await;
    assert_eq!(bad["type"], "error", "{bad}");
    assert_eq!(bad["code"], "VALIDATION_ERROR");
    assert_eq!(bad["details"]["issues"][0]["path"], "action");
    let pending = org.session(&id).await["pendingApprovals"].clone();
    assert_eq!(
        pending.as_array().unwrap().len(),
        8,
        "the refused one was not added"
    );

    let resolve = |a: &str| format!("/api/v1/sessions/{id}/approvals/{a}/resolve");
    // `session` with an allow reaches the runner.
    org.post(
        &resolve(&asked[5]),
        json!({"decision": "allow", "scope": "session"}),
    )
    .await;
    let f = ch.expect("approval_resolved").await;
    assert_eq!(f["approvalId"], asked[5].as_str());
    assert_eq!(f["decision"], "allow");
    assert_eq!(f["scope"], "session");
    assert_eq!(f["reason"], Value::Null);
    ch.ack(&f).await;
    // `once` is passed on as given; without a scope the frame has none.
    org.post(
        &resolve(&asked[4]),
        json!({"decision": "allow", "scope": "once", "reason": "just this once"}),
    )
    .await;
    let f = ch.expect("approval_resolved").await;
    assert_eq!(f["approvalId"], asked[4].as_str());
    assert_eq!(f["scope"], "once");
    assert_eq!(f["reason"], "just this once");
    ch.ack(&f).await;
    org.post(&resolve(&asked[6]), json!({"decision": "deny"}))
        .await;
    let f = ch.expect("approval_resolved").await;
    assert_eq!(f["approvalId"], asked[6].as_str());
    assert_eq!(f["decision"], "deny");
    assert!(f.get("scope").is_none(), "{f}");
    ch.ack(&f).await;
    // A refused decision sends nothing and leaves the approval pending.
    org.post(
        &resolve(&asked[7]),
        json!({"decision": "deny", "scope": "session"}),
    )
    .await
    .expect_error(400, "VALIDATION_ERROR");
    org.post(
        &resolve(&asked[7]),
        json!({"decision": "allow", "scope": "all"}),
    )
    .await
    .expect_error(400, "VALIDATION_ERROR");
    ch.expect_none("approval_resolved", 300).await;
    let pending = org.session(&id).await["pendingApprovals"].clone();
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["approvalId"] == asked[7].as_str())
    );

    // Cost over the channel.
    let u = ch
        .request(
            json!({"type": "usage", "sessionId": id, "assignmentId": assignment,
                        "tokensIn": 900, "costUsd": 0.125}),
        )
        .await;
    assert_eq!(u["type"], "ack", "{u}");
    let bad = ch
        .request(
            json!({"type": "usage", "sessionId": id, "assignmentId": assignment, "costUsd": -1}),
        )
        .await;
    assert_eq!(bad["code"], "VALIDATION_ERROR", "{bad}");
    assert_eq!(bad["details"]["issues"][0]["path"], "costUsd");
    let bad = ch
        .request(
            json!({"type": "usage", "sessionId": id, "assignmentId": assignment, "costUsd": "NaN"}),
        )
        .await;
    assert_eq!(bad["code"], "VALIDATION_ERROR", "{bad}");
    let usage = org.session(&id).await["usage"].clone();
    assert_eq!(usage["costUsd"], 0.125);
    assert_eq!(usage["tokensIn"], 900);
    s.stop().await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn stop_reaches_the_runner() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (r, _) = register(&admin, "worker", &["codex"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    start(&mut ch, &id).await;
    admin
        .post(
            &format!("/api/v1/sessions/{id}/stop"),
            json!({"reason": "enough"}),
        )
        .await;
    let f = ch.expect("stop_session").await;
    assert_eq!(f["sessionId"], id.as_str());
    assert_eq!(f["reason"], "stopped: enough");
    s.stop().await;
}

#[tokio::test]
async fn unacknowledged_commands_are_sent_again_after_a_reconnect() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (r, _) = register(&admin, "flaky", &["codex"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    let first = ch.expect("assign_session").await;
    ch.close().await; // dropped before acking
    let mut ch = r.connect().await;
    let again = ch.expect("assign_session").await;
    assert_eq!(again["messageId"], first["messageId"]);
    assert_eq!(again["assignmentId"], first["assignmentId"]);
    ch.ack(&again).await;
    let assignment = again["assignmentId"].as_str().unwrap();
    ch.request(json!({"type": "session_state", "sessionId": id, "assignmentId": assignment, "state": "RUNNING"}))
        .await;
    // Acknowledged commands are not sent again.
    ch.close().await;
    let mut ch = r.connect().await;
    ch.expect_none("assign_session", 300).await;
    // An approval decision made while the runner is away arrives when it is back.
    let a = admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals"),
            json!({"action": "deploy", "description": "ship", "assignmentId": assignment}),
        )
        .await;
    ch.close().await;
    let approval = a.data()["approvalId"].as_str().unwrap();
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals/{approval}/resolve"),
            json!({"decision": "deny"}),
        )
        .await;
    let mut ch = r.connect().await;
    let d = ch.expect("approval_resolved").await;
    assert_eq!(d["decision"], "deny");
    s.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_assignment_lapses_and_stale_reports_are_refused() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (slow, _) = register(&admin, "slow", &["codex"], None, &[]).await;
    let mut slow_ch = slow.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    let f = slow_ch.expect("assign_session").await;
    let stale = f["assignmentId"].as_str().unwrap().to_string();
    slow_ch.close().await;
    s.advance(29_000);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(state_of(&admin, &id).await["runnerId"], json!(slow.id));
    s.advance(2_000);
    eventually(5, || async {
        state_of(&admin, &id)
            .await
            .get("runnerId")
            .is_none()
            .then_some(())
    })
    .await;
    let events = admin.get(&format!("/api/v1/sessions/{id}/events")).await;
    assert!(events.text.contains("session_requeued"));

    // Another runner takes it; the first one's late report is stale.
    let (fast, _) = register(&admin, "fast", &["codex"], None, &[]).await;
    let mut fast_ch = fast.connect().await;
    let fresh = start(&mut fast_ch, &id).await;
    assert_ne!(fresh, stale);
    let r = slow
        .client
        .post(
            &format!("/api/v1/sessions/{id}/state"),
            json!({"state": "FAILED", "assignmentId": stale}),
        )
        .await;
    r.expect_error(409, "STALE_ASSIGNMENT");
    let r = slow
        .client
        .post(
            &format!("/api/v1/sessions/{id}/output"),
            json!({"stream": "stdout", "data": "x", "assignmentId": stale}),
        )
        .await;
    r.expect_error(409, "STALE_ASSIGNMENT");
    // A runner that never held it gets not-found.
    let (other, _) = register(&admin, "other", &["codex"], None, &[]).await;
    other
        .client
        .post(
            &format!("/api/v1/sessions/{id}/state"),
            json!({"state": "FAILED", "assignmentId": stale}),
        )
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    assert_eq!(state_of(&admin, &id).await["state"], "RUNNING");
    s.stop().await;
}

#[tokio::test]
async fn output_resent_after_a_dropped_socket_is_stored_once() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (r, _) = register(&admin, "w", &["codex"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    let a = start(&mut ch, &id).await;
    let chunk = |offset: u64, data: &str| json!({"type": "terminal_output", "sessionId": id, "assignmentId": a, "stream": "stdout", "data": data, "offset": offset});
    ch.send(chunk(0, "aaaa")).await;
    ch.send(chunk(4, "bbbb")).await;
    ch.close().await;
    // The runner does not know what arrived: it resends both, then a chunk past a gap.
    let mut ch = r.connect().await;
    assert_eq!(ch.request(chunk(0, "aaaa")).await["data"]["seq"], 1);
    assert_eq!(ch.request(chunk(4, "bbbb")).await["data"]["seq"], 2);
    let resync = ch.request(chunk(12, "dddd")).await;
    assert_eq!(resync["type"], "resync");
    assert_eq!(resync["offset"], 8);
    assert_eq!(ch.request(chunk(8, "cccc")).await["data"]["seq"], 3);
    assert_eq!(ch.request(chunk(12, "dddd")).await["data"]["seq"], 4);
    let out = admin.get(&format!("/api/v1/sessions/{id}/output")).await;
    let text: String = out.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap())
        .collect();
    assert_eq!(text, "aaaabbbbccccdddd");
    s.stop().await;
}

#[tokio::test]
async fn offline_runners_keep_their_sessions_and_lost_ones_give_them_up() {
    // lostAfterMs below the 30 s assignment lapse, so the loss itself re-queues the waiting one.
    let s = TestServer::start(
        "[runners]\nrestartGraceMs = 1\nheartbeatTimeoutMs = 10000\nlostAfterMs = 15000\n",
    )
    .await;
    let admin = s.admin();
    let (r, _) = register(&admin, "w", &["codex"], Some(5), &[]).await;
    let mut ch = r.connect().await;
    let running = create(&admin, "acme", "codex", &[]).await;
    start(&mut ch, &running).await;
    let waiting = create(&admin, "acme", "codex", &[]).await;
    ch.expect("assign_session").await; // assigned, never confirmed
    r.heartbeat().await;
    // A blip: offline, nothing is given up, and a heartbeat brings it back.
    s.advance(11_000);
    assert_eq!(r.info(&admin).await["status"], "offline");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(state_of(&admin, &running).await["state"], "RUNNING");
    r.heartbeat().await;
    assert_eq!(r.info(&admin).await["status"], "online");
    // Silent past lostAfterMs: started sessions fail, unstarted ones go back to the queue.
    s.advance(16_000);
    let d = eventually(5, || async {
        let d = state_of(&admin, &running).await;
        (d["state"] == "FAILED").then_some(d)
    })
    .await;
    assert_eq!(d["endReason"], "runner_lost");
    let w = state_of(&admin, &waiting).await;
    assert_eq!(w["state"], "QUEUED");
    assert!(
        w.get("runnerId").is_none(),
        "a session stayed with a lost runner"
    );
    let events = admin
        .get(&format!("/api/v1/sessions/{waiting}/events"))
        .await;
    assert!(events.text.contains("runner lost"), "{}", events.text);
    assert_eq!(r.info(&admin).await["load"]["activeSessions"], 0);
    // The runner comes back still running the failed session: it is told to stop it.
    let body = r.heartbeat_body(&[&running]);
    let hb = r
        .client
        .post(&format!("/api/v1/runners/{}/heartbeat", r.id), body)
        .await;
    assert_eq!(hb.data()["status"], "online");
    let stop = ch.expect("stop_session").await;
    assert_eq!(stop["sessionId"], running.as_str());
    s.stop().await;
}

#[tokio::test]
async fn drain_stops_new_work_and_completes_when_the_last_session_ends() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], None, &[]).await;
    let mut ch = a.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    let assignment = start(&mut ch, &id).await;
    let r = admin
        .post_empty(&format!("/api/v1/runners/{}/drain", a.id))
        .await;
    assert_eq!(r.data()["status"], "draining");
    assert!(r.data().get("drainedAt").is_none());
    let f = ch.expect("drain").await;
    ch.ack(&f).await;
    assert_eq!(a.heartbeat().await.data()["drain"], true);
    a.client
        .post_empty(&format!("/api/v1/runners/{}/drain", a.id))
        .await
        .expect_error(403, "FORBIDDEN");
    // No new work while draining.
    let queued = create(&admin, "acme", "codex", &[]).await;
    ch.expect_none("assign_session", 300).await;
    assert!(state_of(&admin, &queued).await.get("runnerId").is_none());
    // The drain completes when its last session ends, not before.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(a.info(&admin).await.get("drainedAt").is_none());
    ch.request(json!({"type": "session_state", "sessionId": id, "assignmentId": assignment, "state": "COMPLETED"})).await;
    eventually(5, || async {
        a.info(&admin).await.get("drainedAt").map(|_| ())
    })
    .await;
    // Undrain: back to online, and the queued session is assigned.
    let r = admin
        .post_empty(&format!("/api/v1/runners/{}/undrain", a.id))
        .await;
    assert_eq!(r.data()["status"], "online");
    assert_eq!(
        ch.expect("assign_session").await["session"]["sessionId"],
        queued
    );
    s.stop().await;
}

#[tokio::test]
async fn deregistration_needs_force_while_sessions_are_active() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], None, &[]).await;
    let mut ch = a.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    start(&mut ch, &id).await;
    admin
        .delete(&format!("/api/v1/runners/{}", a.id))
        .await
        .expect_error(409, "RUNNER_HAS_ACTIVE_SESSIONS");
    admin
        .delete(&format!("/api/v1/runners/{}?force=maybe", a.id))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    let r = admin
        .delete(&format!("/api/v1/runners/{}?force=true", a.id))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = state_of(&admin, &id).await;
    assert_eq!(d["state"], "FAILED");
    assert_eq!(d["endReason"], "runner_deregistered");
    admin
        .get(&format!("/api/v1/runners/{}", a.id))
        .await
        .expect_error(404, "RUNNER_NOT_FOUND");
    a.heartbeat_fails().await;
    // An idle runner goes without force.
    let (b, _) = register(&admin, "b", &["codex"], None, &[]).await;
    assert_eq!(
        admin
            .delete(&format!("/api/v1/runners/{}", b.id))
            .await
            .status,
        200
    );
    s.stop().await;
}

trait Gone {
    async fn heartbeat_fails(&self);
}

impl Gone for SimRunner {
    async fn heartbeat_fails(&self) {
        self.client
            .post(
                &format!("/api/v1/runners/{}/heartbeat", self.id),
                self.heartbeat_body(&[]),
            )
            .await
            .expect_error(401, "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn channel_authorisation() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], None, &[]).await;
    let (b, _) = register(&admin, "b", &["codex"], None, &[]).await;
    let path = format!("/api/v1/runners/{}/channel", a.id);
    assert!(matches!(
        Channel::try_open(&b.client, &path).await,
        Upgrade::Refused(403)
    ));
    assert!(matches!(
        Channel::try_open(&s.anonymous(), &path).await,
        Upgrade::Refused(401)
    ));
    let ghost = "/api/v1/runners/6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11/channel";
    assert!(matches!(
        Channel::try_open(&a.client, ghost).await,
        Upgrade::Refused(404)
    ));
    assert!(matches!(
        Channel::try_open(&a.client, &path).await,
        Upgrade::Open(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn fleet_summary_counts_capacity_and_sessions() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (a, _) = register(&admin, "a", &["codex"], Some(3), &[]).await;
    let (b, _) = register(&admin, "b", &["codex"], Some(2), &[]).await;
    let mut ch = a.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    start(&mut ch, &id).await;
    create(&admin, "acme", "omnara", &[]).await;
    admin
        .post_empty(&format!("/api/v1/runners/{}/drain", b.id))
        .await;
    let f = admin.get("/api/v1/fleet").await;
    let d = f.data();
    assert_eq!(
        (
            d["online"].as_u64(),
            d["draining"].as_u64(),
            d["offline"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(
        d["capacity"],
        json!({"total": 5, "used": 1, "available": 2})
    );
    assert_eq!(d["sessionsByState"]["RUNNING"], 1);
    assert_eq!(d["sessionsByState"]["QUEUED"], 1);
    s.stop().await;
}

#[tokio::test]
async fn a_hostname_cannot_be_taken_over_from_another_org() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    let globex = admin.with_token(&admin.create_token("runner_join", Some("globex")).await);
    let shared = admin.with_token(&admin.create_token("runner_join", None).await);
    let (mine, _) = register(&acme, "build-1", &["codex"], None, &[]).await;
    for other in [&globex, &shared] {
        other
            .post(
                "/api/v1/runners/register",
                json!({"hostname": "build-1", "capabilities": {"providers": ["codex"]}}),
            )
            .await
            .expect_error(403, "FORBIDDEN");
    }
    // The rightful runner keeps working; an admin re-registration keeps its org.
    mine.heartbeat().await;
    let (again, r) = register(&admin, "build-1", &["codex"], None, &[]).await;
    assert_eq!(again.id, mine.id);
    assert_eq!(r.data()["runner"]["orgId"], "acme");
    s.stop().await;
}

#[tokio::test]
async fn a_runner_may_fail_an_assignment_it_cannot_start() {
    let OneAssigned {
        s,
        admin,
        mut ch,
        session: id,
        assign: f,
        ..
    } = one_assigned("w", "acme").await;
    ch.ack(&f).await;
    let reply = ch
        .request(
            json!({"type": "session_state", "sessionId": id, "assignmentId": f["assignmentId"],
                        "state": "FAILED", "error": "clone failed"}),
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let d = state_of(&admin, &id).await;
    assert_eq!(d["state"], "FAILED");
    assert_eq!(d["endReason"], "failed: clone failed");
    // Without an assignment nobody may fail a queued session by report.
    let queued = admin.create_session("other").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    admin
        .post(
            &format!("/api/v1/sessions/{queued}/state"),
            json!({"state": "FAILED"}),
        )
        .await
        .expect_error(409, "INVALID_STATE");
    s.stop().await;
}

#[tokio::test]
async fn sockets_of_a_revoked_token_are_closed() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (old, _) = register(&admin, "w", &["codex"], None, &[]).await;
    let mut ch = old.connect().await;
    // Registering the hostname again revokes the old runner token.
    register(&admin, "w", &["codex"], None, &[]).await;
    ch.send(
        json!({"type": "heartbeat", "runnerId": old.id, "timestamp": "2026-11-25T10:00:00Z",
                   "load": {"cpuPercent": 1, "memoryPercent": 1, "diskPercent": 1}}),
    )
    .await;
    assert_eq!(ch.close_code_within(3000).await, Some(1008));
    // The same for a dashboard stream of a revoked org token.
    let secret = admin.create_token("org", Some("acme")).await;
    let mut dash = Channel::open(&admin.with_token(&secret), "/api/v1/ws").await;
    dash.expect("event").await;
    let tokens = admin.get("/api/v1/tokens").await;
    let id = tokens.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "org")
        .unwrap()["tokenId"]
        .as_str()
        .unwrap()
        .to_string();
    admin.delete(&format!("/api/v1/tokens/{id}")).await;
    dash.send(json!({"type": "ping"})).await;
    assert_eq!(dash.close_code_within(3000).await, Some(1008));
    s.stop().await;
}

/// With `runners.sharedRunnerOrgs`, shared runners (which receive their sessions' env values)
/// run only those orgs' sessions; other orgs' sessions wait for runners of their own.
#[tokio::test]
async fn shared_runners_serve_only_the_orgs_the_admin_allows() {
    let s =
        TestServer::start("[runners]\nrestartGraceMs = 1\nsharedRunnerOrgs = [\"acme\"]\n").await;
    let admin = s.admin();
    let (shared, _) = register(&admin, "shared-1", &["claude_code"], Some(1), &[]).await;
    let mut ch = shared.connect().await;
    // The older session is globex's: a runner allowed to take it would get it first.
    let globex = admin.create_session("globex").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let acme = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let assign = ch.expect("assign_session").await;
    assert_eq!(assign["session"]["sessionId"], acme.as_str());
    assert_eq!(admin.session(&globex).await["state"], "QUEUED");
    assert!(admin.session(&globex).await.get("runnerId").is_none());
    s.stop().await;
}

/// A runner has one channel: a newer connection (the runner's own, or an admin's) replaces an
/// older one, which is closed (1008) rather than left open and cut off from commands. The
/// runner reconnects, takes the channel back, and a stop committed then reaches it.
#[tokio::test]
async fn a_newer_channel_replaces_an_older_one_which_is_closed() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (r, _) = register(&admin, "twice", &["codex"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = create(&admin, "acme", "codex", &[]).await;
    ch.start_next_assignment(&id).await;

    // An admin opens the runner's channel: the runner's connection is closed.
    let mut peek = Channel::open(&admin, &format!("/api/v1/runners/{}/channel", r.id)).await;
    assert_eq!(ch.close_code_within(3_000).await, Some(1008));
    // The runner reconnects: the admin's connection is closed in turn.
    let mut ch = r.connect().await;
    assert_eq!(peek.close_code_within(3_000).await, Some(1008));
    r.heartbeat().await;
    let stop = admin
        .post(
            &format!("/api/v1/sessions/{id}/stop"),
            json!({"reason": "enough"}),
        )
        .await;
    assert_eq!(stop.status, 200, "{}", stop.text);
    let f = ch.expect("stop_session").await;
    assert_eq!(f["sessionId"], id.as_str(), "{f}");
    s.stop().await;
}

/// Undraining a runner withdraws a `drain` it has not taken yet (it was away): sent on its
/// next connection, it would make a real runner stop taking work while counted online.
#[tokio::test]
async fn an_undrained_runner_is_not_sent_the_drain_it_missed() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (r, _) = register(&admin, "away", &["codex"], None, &[]).await;
    let d = admin
        .post_empty(&format!("/api/v1/runners/{}/drain", r.id))
        .await;
    assert_eq!(d.data()["status"], "draining");
    let u = admin
        .post_empty(&format!("/api/v1/runners/{}/undrain", r.id))
        .await;
    assert_eq!(u.data()["status"], "online");
    let mut ch = r.connect().await;
    ch.expect_none("drain", 1_000).await;
    // A drain that stays is still delivered.
    admin
        .post_empty(&format!("/api/v1/runners/{}/drain", r.id))
        .await;
    ch.expect("drain").await;
    s.stop().await;
}

/// Re-registering a hostname revokes the old token. A channel opened with it gets no command
/// after that (an assignment carries the session's environment): it is closed with 1008
/// `token revoked` instead, without waiting for its next frame or ping.
#[tokio::test]
async fn a_revoked_tokens_channel_is_closed_instead_of_sent_commands() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let (old, _) = register(&admin, "reimaged", &["codex"], None, &[]).await;
    let mut ch = old.connect().await;
    let (new, _) = register(&admin, "reimaged", &["codex"], None, &[]).await;
    assert_eq!(new.id, old.id);
    new.heartbeat().await;
    create(&admin, "acme", "codex", &[]).await;
    let mut frames = Vec::new();
    while let Some(f) = ch.recv_within(2_000).await {
        frames.push(f);
    }
    assert!(
        frames.iter().all(|f| f["type"] != "assign_session"),
        "sent on the revoked token's channel: {frames:?}"
    );
    // The new token's channel gets the session.
    let mut fresh = new.connect().await;
    fresh.expect("assign_session").await;
    s.stop().await;
}

/// Every audit entry after `after`: (seq, action, target).
async fn audit_after(admin: &Client, mut after: u64) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    loop {
        let page = admin
            .get(&format!("/api/v1/audit?afterSeq={after}&limit=1000"))
            .await;
        let items = page.data()["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return out;
        }
        for e in items {
            let seq = e["seq"].as_u64().unwrap();
            after = after.max(seq);
            out.push((
                seq,
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
            ));
        }
    }
}

/// A runner re-registers without a feature (or with a smaller capacity) while sessions that
/// require it are created. The fleet in memory learns of the re-registration only after its
/// commit, so placement checks each runner it picks against the store: a session whose create
/// ran after the re-registration in the writer (its audit seq is higher) must never be
/// assigned to the runner.
async fn shrink_while_creating(before: (u64, &[&str]), after: (u64, &[&str]), needs: &[&str]) {
    let s = TestServer::start("[runners]\nrestartGraceMs = 1\n").await;
    let admin = s.admin();
    let mut violations = Vec::new();
    for round in 0..40 {
        let (r, _) = register(&admin, "gpu-box", &["codex"], Some(before.0), before.1).await;
        let mut ch = r.connect().await;
        // A session without requirements proves the channel is attached.
        let probe = create(&admin, &format!("probe-{round}"), "codex", &[]).await;
        let f = ch.expect("assign_session").await;
        assert_eq!(f["session"]["sessionId"], probe.as_str());
        let mark = audit_after(&admin, 0).await.last().map_or(0, |e| e.0);

        let org = format!("org-{round}");
        let drop_gpu = register(&admin, "gpu-box", &["codex"], Some(after.0), after.1);
        // Creates spread over the time the re-registration takes, a few orgs (10 sessions
        // per org at most).
        let creates = futures_util::future::join_all((0..30).map(|i| {
            let (admin, org) = (admin.clone(), format!("{org}-{}", i % 4));
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(i / 2)).await;
                create(&admin, &org, "codex", needs).await
            }
        }));
        let (_, ids) = tokio::join!(drop_gpu, creates);

        let log = audit_after(&admin, mark).await;
        let registered_at = log
            .iter()
            .find(|e| e.1 == "runner.register" && e.2 == r.id)
            .map(|e| e.0)
            .unwrap();
        let n_after = log
            .iter()
            .filter(|e| e.1 == "session.create" && e.0 > registered_at)
            .count();
        eprintln!("round {round}: {n_after} creates after the re-registration");
        for (seq, action, target) in &log {
            if action == "session.create" && *seq > registered_at {
                let d: Value = admin.session(target).await;
                if d["runnerId"] == json!(r.id) {
                    violations.push(format!(
                        "round {round}: session {target} (audit seq {seq}) assigned to the \
                         runner re-registered without room or the feature at seq {registered_at}"
                    ));
                }
            }
        }
        for id in ids.iter().chain([&probe]) {
            let _ = admin
                .post_empty(&format!("/api/v1/sessions/{id}/stop"))
                .await;
        }
        ch.close().await;
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    s.stop().await;
}

#[tokio::test]
async fn a_runner_that_dropped_a_feature_is_not_given_sessions_that_require_it() {
    shrink_while_creating((1000, &["gpu"]), (1000, &[]), &["gpu"]).await;
}

/// The same with capacity: the runner holds the probe session, then re-registers with room
/// for one; nothing created after that may go to it.
#[tokio::test]
async fn a_runner_that_shrank_is_not_given_more_than_its_capacity() {
    shrink_while_creating((1000, &[]), (1, &[]), &[]).await;
}
