//! Sessions over real HTTP against the real server (docs/api.md, sections 1 and 5).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, TestServer, eventually};
use serde_json::{Value, json};

fn sid(v: &Value) -> String {
    v["sessionId"].as_str().unwrap().to_string()
}

async fn count_sessions(c: &Client, org: &str) -> u64 {
    let r = c.get(&format!("/api/v1/sessions?orgId={org}")).await;
    r.data()["total"].as_u64().unwrap()
}

#[tokio::test]
async fn create_returns_detail_and_hides_env_values() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({
                "orgId": "acme", "providerId": "codex",
                "repo": {"url": "git@github.com:acme/app.git", "branch": "dev"},
                "task": "x".repeat(150),
                "options": {"timeoutMinutes": 5, "env": {"API_KEY": "sk-very-secret"},
                            "requiredFeatures": ["gpu"], "dangerouslySkipPermissions": true},
                "unknownField": 1
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        !r.text.contains("sk-very-secret"),
        "env value leaked: {}",
        r.text
    );
    let d = r.data();
    assert_eq!(d["state"], "QUEUED");
    assert_eq!(d["orgId"], "acme");
    assert_eq!(d["providerId"], "codex");
    assert_eq!(
        d["repo"],
        json!({"url": "git@github.com:acme/app.git", "branch": "dev", "commit": "HEAD"})
    );
    assert_eq!(d["repoUrl"], "git@github.com:acme/app.git");
    assert_eq!(d["taskSummary"].as_str().unwrap().len(), 100);
    assert_eq!(d["options"]["env"], json!({"API_KEY": "***"}));
    assert_eq!(d["options"]["timeoutMinutes"], json!(5.0));
    assert_eq!(d["options"]["requiredFeatures"], json!(["gpu"]));
    assert_eq!(d["usage"]["tokensIn"], 0);
    assert_eq!(d["startedAt"], "2026-11-18T11:06:40.000Z");
    assert!(d.get("completedAt").is_none());
    let types: Vec<&str> = d["recentEvents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["session_created", "state_changed"]);
    // The request id comes back in the header and the envelope.
    assert_eq!(
        r.headers["x-request-id"].to_str().unwrap(),
        r.json["meta"]["requestId"].as_str().unwrap()
    );
    assert!(r.json["meta"]["duration"].is_number());
    assert_eq!(r.json["meta"]["timestamp"], "2026-11-18T11:06:40.000Z");

    let got = admin.session(&sid(d)).await;
    assert_eq!(&got, d);
    assert!(
        !admin
            .get(&format!("/api/v1/sessions/{}", sid(d)))
            .await
            .text
            .contains("sk-very-secret")
    );
    s.stop().await;
}

#[tokio::test]
async fn validation_lists_every_bad_field_and_changes_nothing() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "vim", "repo": {"url": "not a url", "branch": 7},
                   "options": {"timeoutMinutes": 121, "env": {"A": 1}, "requiredFeatures": "gpu"}}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    let mut paths = r.issue_paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            "options.env.A",
            "options.requiredFeatures",
            "options.timeoutMinutes",
            "providerId",
            "repo.branch",
            "repo.url"
        ]
    );
    // Missing fields.
    let r = admin
        .post("/api/v1/sessions", json!({"orgId": "acme"}))
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), ["providerId", "repo"]);
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {}}),
        )
        .await;
    assert_eq!(r.issue_paths(), ["repo.url"]);
    // A bad provider alone is INVALID_PROVIDER.
    admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "vim", "repo": {"url": "https://x.org/a"}}),
        )
        .await
        .expect_error(400, "INVALID_PROVIDER");
    // Admin must name the org; org ids are slugs.
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"providerId": "codex", "repo": {"url": "nope"}}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        r.issue_paths(),
        ["orgId", "repo.url"],
        "every bad field at once"
    );
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "-bad org", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
        )
        .await;
    assert_eq!(r.issue_paths(), ["orgId"]);
    // Too-long task, too many env entries.
    let env: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("K{i}"), json!("v"))).collect();
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"},
                   "task": "t".repeat(64 * 1024 + 1), "options": {"env": env}}),
        )
        .await;
    let mut paths = r.issue_paths();
    paths.sort();
    assert_eq!(paths, ["options.env", "task"]);
    // Not JSON, not an object, wrong media type, too large.
    admin
        .raw(
            "POST",
            "/api/v1/sessions",
            &[("content-type", "application/json")],
            b"{nope".to_vec(),
        )
        .await
        .expect_error(400, "INVALID_JSON");
    admin
        .raw(
            "POST",
            "/api/v1/sessions",
            &[("content-type", "application/json")],
            b"[1]".to_vec(),
        )
        .await
        .expect_error(400, "VALIDATION_ERROR");
    admin
        .raw(
            "POST",
            "/api/v1/sessions",
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
        )
        .await
        .expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let big = format!("{{\"task\": \"{}\"}}", "a".repeat(1024 * 1024 + 10));
    admin
        .raw(
            "POST",
            "/api/v1/sessions",
            &[("content-type", "application/json")],
            big.into_bytes(),
        )
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(
        count_sessions(&admin, "acme").await,
        0,
        "a rejected request created something"
    );
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_answer_in_the_envelope() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    admin
        .get("/api/v1/nothing-here")
        .await
        .expect_error(404, "NOT_FOUND");
    admin
        .get("/api/v2/sessions")
        .await
        .expect_error(404, "NOT_FOUND");
    admin
        .delete("/api/v1/sessions")
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    admin
        .raw("PUT", "/api/v1/sessions/abc/stop", &[], vec![])
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    // The heartbeat's route is matched apart from the others (a fleet's beats are most of
    // the traffic); its other methods still answer like every route's.
    admin
        .get("/api/v1/runners/abc/heartbeat")
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    admin
        .get("/api/v1/sessions/not-a-uuid")
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    admin
        .get("/api/v1/sessions/6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11")
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    // 401 comes before routing, even for unknown routes.
    s.anonymous()
        .get("/api/v1/nothing-here")
        .await
        .expect_error(401, "UNAUTHORIZED");
    s.stop().await;
}

#[tokio::test]
async fn list_filters_and_paginates_newest_first() {
    let s = TestServer::start("[sessions]\nmaxSessionsPerOrg = 100\n").await;
    let admin = s.admin();
    let mut ids = Vec::new();
    for i in 0..5 {
        let provider = if i % 2 == 0 { "codex" } else { "omnara" };
        let r = admin
            .post("/api/v1/sessions", json!({"orgId": "acme", "providerId": provider, "repo": {"url": "https://x.org/a"}}))
            .await;
        ids.push(sid(r.data()));
        s.advance(1000);
    }
    admin.create_session("other").await;
    admin.start_session(&ids[0]).await;

    let page = admin.get("/api/v1/sessions?orgId=acme&pageSize=2").await;
    let d = page.data();
    assert_eq!(d["total"], 5);
    assert_eq!(d["hasMore"], true);
    assert_eq!(d["page"], 1);
    assert_eq!(d["pageSize"], 2);
    let got: Vec<String> = d["items"].as_array().unwrap().iter().map(sid).collect();
    assert_eq!(got, [ids[4].clone(), ids[3].clone()]);
    let last = admin
        .get("/api/v1/sessions?orgId=acme&pageSize=2&page=3")
        .await;
    assert_eq!(last.data()["items"].as_array().unwrap().len(), 1);
    assert_eq!(last.data()["hasMore"], false);
    let past = admin.get("/api/v1/sessions?orgId=acme&page=50").await;
    assert_eq!(past.status, 200);
    assert_eq!(past.data()["items"], json!([]));

    let omnara = admin
        .get("/api/v1/sessions?orgId=acme&providerId=omnara")
        .await;
    assert_eq!(omnara.data()["total"], 2);
    let running = admin.get("/api/v1/sessions?orgId=acme&state=RUNNING").await;
    assert_eq!(running.data()["total"], 1);
    assert_eq!(sid(&running.data()["items"][0]), ids[0]);

    for bad in [
        "page=0",
        "pageSize=0",
        "pageSize=101",
        "page=x",
        "state=DONE",
    ] {
        admin
            .get(&format!("/api/v1/sessions?orgId=acme&{bad}"))
            .await
            .expect_error(400, "VALIDATION_ERROR");
    }
    admin
        .get("/api/v1/sessions?orgId=acme&providerId=vim")
        .await
        .expect_error(400, "INVALID_PROVIDER");
    let r = admin.get("/api/v1/sessions").await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), ["orgId"]);
    s.stop().await;
}

#[tokio::test]
async fn org_tokens_see_only_their_org() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let globex = admin.with_token(&admin.create_token("org", Some("globex")).await);
    let join = admin.with_token(&admin.create_token("runner_join", None).await);

    // An org token creates in its own org without naming it.
    let r = acme
        .post(
            "/api/v1/sessions",
            json!({"providerId": "codex", "repo": {"url": "https://x.org/a"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = sid(r.data());
    assert_eq!(r.data()["orgId"], "acme");
    // Naming another org is 403; the other org's session is 404.
    acme.post(
        "/api/v1/sessions",
        json!({"orgId": "globex", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    globex
        .get(&format!("/api/v1/sessions/{id}"))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    globex
        .post_empty(&format!("/api/v1/sessions/{id}/stop"))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    globex
        .get(&format!("/api/v1/sessions/{id}/output"))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    globex
        .get("/api/v1/sessions?orgId=acme")
        .await
        .expect_error(403, "FORBIDDEN");
    assert_eq!(globex.get("/api/v1/sessions").await.data()["total"], 0);
    assert_eq!(acme.get("/api/v1/sessions").await.data()["total"], 1);
    // Org tokens cannot act as runners; join tokens cannot touch sessions.
    acme.post(
        &format!("/api/v1/sessions/{id}/state"),
        json!({"state": "RUNNING"}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    join.get("/api/v1/sessions?orgId=acme")
        .await
        .expect_error(403, "FORBIDDEN");
    join.get(&format!("/api/v1/sessions/{id}"))
        .await
        .expect_error(403, "FORBIDDEN");
    // Org tokens cannot manage tokens.
    acme.get("/api/v1/tokens")
        .await
        .expect_error(403, "FORBIDDEN");
    assert_eq!(admin.session(&id).await["state"], "QUEUED");
    s.stop().await;
}

#[tokio::test]
async fn org_session_limit_counts_only_active_sessions() {
    let s = TestServer::start("[sessions]\nmaxSessionsPerOrg = 2\n").await;
    let admin = s.admin();
    let a = sid(&admin.create_session("acme").await);
    admin.create_session("acme").await;
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
        )
        .await;
    r.expect_error(429, "SESSION_LIMIT_EXCEEDED");
    assert_eq!(count_sessions(&admin, "acme").await, 2);
    // Another org is not affected; ending one frees a slot.
    admin.create_session("globex").await;
    admin
        .post_empty(&format!("/api/v1/sessions/{a}/stop"))
        .await;
    admin.create_session("acme").await;
    assert_eq!(count_sessions(&admin, "acme").await, 3);
    s.stop().await;
}

#[tokio::test]
async fn lifecycle_follows_the_contract_transitions() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    let path = |p: &str| format!("/api/v1/sessions/{id}/{p}");

    // QUEUED: cannot pause, resume or complete.
    admin
        .post_empty(&path("pause"))
        .await
        .expect_error(409, "INVALID_STATE");
    admin
        .post_empty(&path("resume"))
        .await
        .expect_error(409, "INVALID_STATE");
    admin
        .post(&path("state"), json!({"state": "COMPLETED"}))
        .await
        .expect_error(409, "INVALID_STATE");
    admin
        .post(&path("state"), json!({"state": "DONE"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    admin
        .post(&path("state"), json!({}))
        .await
        .expect_error(400, "VALIDATION_ERROR");

    let d = admin.start_session(&id).await;
    assert_eq!(d["state"], "RUNNING");
    admin
        .post(&path("state"), json!({"state": "RUNNING"}))
        .await
        .expect_error(409, "INVALID_STATE");
    admin
        .post(&path("state"), json!({"state": "TIMED_OUT"}))
        .await
        .expect_error(409, "INVALID_STATE");

    let d = admin.post_empty(&path("pause")).await;
    assert_eq!(d.data()["state"], "PAUSED_BY_HUMAN");
    admin
        .post_empty(&path("pause"))
        .await
        .expect_error(409, "INVALID_STATE");
    let d = admin.post_empty(&path("resume")).await;
    assert_eq!(d.data()["state"], "RUNNING");

    let d = admin
        .post(&path("state"), json!({"state": "COMPLETED"}))
        .await;
    assert_eq!(d.data()["state"], "COMPLETED");
    assert!(d.data()["completedAt"].is_string());
    admin
        .post_empty(&path("stop"))
        .await
        .expect_error(409, "SESSION_ALREADY_STOPPED");
    admin
        .post_empty(&path("resume"))
        .await
        .expect_error(409, "INVALID_STATE");

    // The timeline has every change, seq 1.. without gaps.
    let ev = admin.get(&path("events")).await;
    let items = ev.data()["items"].as_array().unwrap().clone();
    let seqs: Vec<u64> = items.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let changes: Vec<(String, String)> = items
        .iter()
        .filter(|e| e["type"] == "state_changed")
        .map(|e| {
            (
                e["data"]["from"].as_str().unwrap().into(),
                e["data"]["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("CREATED", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "PAUSED_BY_HUMAN"),
        ("PAUSED_BY_HUMAN", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ];
    assert_eq!(changes, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert!(items.iter().any(|e| e["type"] == "session_started"));
    assert!(items.iter().any(|e| e["type"] == "session_completed"));
    let page = admin
        .get(&format!("{}?afterSeq=2&limit=2", path("events")))
        .await;
    let d = page.data();
    assert_eq!(d["items"].as_array().unwrap().len(), 2);
    assert_eq!(d["items"][0]["seq"], 3);
    assert_eq!(d["nextSeq"], 4);
    admin
        .get(&format!("{}?limit=1001", path("events")))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    admin
        .get(&format!("{}?afterSeq=-1", path("events")))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    s.stop().await;
}

#[tokio::test]
async fn stop_failure_and_their_reasons() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let queued = sid(&admin.create_session("acme").await);
    let r = admin
        .post(
            &format!("/api/v1/sessions/{queued}/stop"),
            json!({"reason": "not needed"}),
        )
        .await;
    assert_eq!(r.data()["state"], "COMPLETED");
    assert_eq!(r.data()["endReason"], "stopped: not needed");

    let running = sid(&admin.create_session("acme").await);
    admin.start_session(&running).await;
    let r = admin
        .post(
            &format!("/api/v1/sessions/{running}/state"),
            json!({"state": "FAILED", "error": "agent crashed"}),
        )
        .await;
    assert_eq!(r.data()["state"], "FAILED");
    assert_eq!(r.data()["error"], "agent crashed");
    assert_eq!(r.data()["endReason"], "failed: agent crashed");
    s.stop().await;
}

#[tokio::test]
async fn approvals_round_trip() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let id = sid(&admin.create_session("acme").await);
    let path = |p: &str| format!("/api/v1/sessions/{id}/{p}");
    let ask = json!({"action": "merge", "description": "Merge PR #12", "context": {"pr": 12}});
    // Not while QUEUED.
    admin
        .post(&path("approvals"), ask.clone())
        .await
        .expect_error(409, "INVALID_STATE");
    admin.start_session(&id).await;
    let bad = admin
        .post(
            &path("approvals"),
            json!({"action": "launch", "description": ""}),
        )
        .await;
    bad.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(bad.issue_paths(), ["action", "description"]);
    // Org tokens cannot request approvals (that is the runner's job).
    org.post(&path("approvals"), ask.clone())
        .await
        .expect_error(403, "FORBIDDEN");

    let a1 = admin.post(&path("approvals"), ask.clone()).await;
    assert_eq!(a1.status, 201, "{}", a1.text);
    let a1 = a1.data().clone();
    assert_eq!(a1["action"], "merge");
    assert_eq!(a1["context"], json!({"pr": 12}));
    assert_eq!(a1["expiresAt"], "2026-11-19T11:06:40.000Z");
    let a2 = admin
        .post(
            &path("approvals"),
            json!({"action": "deps_add", "description": "add serde"}),
        )
        .await;
    let a2 = a2.data().clone();
    let detail = org.session(&id).await;
    assert_eq!(detail["state"], "WAITING_FOR_APPROVAL");
    assert_eq!(detail["pendingApprovals"].as_array().unwrap().len(), 2);

    let resolve = |a: &Value| {
        format!(
            "/api/v1/sessions/{id}/approvals/{}/resolve",
            a["approvalId"].as_str().unwrap()
        )
    };
    org.post(&resolve(&a1), json!({"decision": "maybe"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    let r = org
        .post(
            &resolve(&a1),
            json!({"decision": "allow", "reason": "looks good"}),
        )
        .await;
    assert_eq!(
        r.data()["state"],
        "WAITING_FOR_APPROVAL",
        "one approval still pending"
    );
    org.post(&resolve(&a1), json!({"decision": "deny"}))
        .await
        .expect_error(409, "APPROVAL_ALREADY_RESOLVED");
    org.post(
        &format!("/api/v1/sessions/{id}/approvals/6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11/resolve"),
        json!({"decision": "allow"}),
    )
    .await
    .expect_error(404, "APPROVAL_NOT_FOUND");
    let r = org.post(&resolve(&a2), json!({"decision": "deny"})).await;
    assert_eq!(
        r.data()["state"],
        "RUNNING",
        "a denied last approval returns the session to RUNNING"
    );

    let list = org.get(&path("approvals")).await;
    let d = list.data();
    assert_eq!(d["pending"], json!([]));
    let resolved = d["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 2);
    assert_eq!(resolved[0]["decision"], "allow");
    assert_eq!(resolved[0]["reason"], "looks good");
    assert_eq!(resolved[0]["resolvedAt"], "2026-11-18T11:06:40.000Z");
    let org_token_id = admin.get("/api/v1/tokens").await.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "org")
        .unwrap()["tokenId"]
        .clone();
    assert_eq!(resolved[0]["resolvedBy"], org_token_id);
    assert_eq!(resolved[1]["decision"], "deny");
    s.stop().await;
}

/// A runner that resends a request whose answer it lost (or an agent asking the same thing
/// twice at once) gets the pending approval back, not a second question for the humans.
#[tokio::test]
async fn an_identical_pending_request_gets_the_same_approval_back() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    admin.start_session(&id).await;
    let path = format!("/api/v1/sessions/{id}/approvals");
    let ask = json!({"action": "command", "description": "git push", "context": {"tool": "Bash"}});
    let first = admin.post(&path, ask.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = admin.post(&path, ask.clone()).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.data()["approvalId"], first.data()["approvalId"]);
    assert_eq!(again.data()["requestedAt"], first.data()["requestedAt"]);
    // Another context, description or action is another question.
    for other in [
        json!({"action": "command", "description": "git push", "context": {"tool": "Shell"}}),
        json!({"action": "command", "description": "git push --force", "context": {"tool": "Bash"}}),
        json!({"action": "network", "description": "git push", "context": {"tool": "Bash"}}),
    ] {
        let r = admin.post(&path, other).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_ne!(r.data()["approvalId"], first.data()["approvalId"]);
    }
    let list = admin.get(&path).await;
    assert_eq!(list.data()["pending"].as_array().unwrap().len(), 4);
    let timeline = admin.get(&format!("/api/v1/sessions/{id}/events")).await;
    let requested = timeline.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "approval_requested")
        .count();
    assert_eq!(requested, 4, "the repeat recorded nothing");
    // Once answered, the same request is a new question.
    let resolved = admin
        .post(
            &format!(
                "{path}/{}/resolve",
                first.data()["approvalId"].as_str().unwrap()
            ),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(resolved.status, 200, "{}", resolved.text);
    let later = admin.post(&path, ask).await;
    assert_eq!(later.status, 201, "{}", later.text);
    assert_ne!(later.data()["approvalId"], first.data()["approvalId"]);
    s.stop().await;
}

/// The risky classes and the classes of an agent's own permission request are all accepted,
/// with the context a runner attaches as it sent it; anything else is refused by name.
#[tokio::test]
async fn every_approval_action_is_accepted_and_others_refused() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    admin.start_session(&id).await;
    let path = format!("/api/v1/sessions/{id}/approvals");
    let context = json!({"tool": "shell", "input": {"command": ["npm", "test"], "cwd": "/w"},
                         "agent": {"protocol": "acp", "options": [{"optionId": "a", "kind": "allow_once"}]}});
    let actions = [
        "merge",
        "deps_add",
        "secrets",
        "deploy",
        "command",
        "file_change",
        "network",
        "other",
    ];
    for action in actions {
        let r = admin
            .post(
                &path,
                json!({"action": action, "description": format!("asks to {action}"), "context": context}),
            )
            .await;
        assert_eq!(r.status, 201, "{action}: {}", r.text);
        assert_eq!(r.data()["action"], action);
        assert_eq!(r.data()["context"], context);
    }
    let pending = admin.get(&path).await.data()["pending"].clone();
    let listed: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(listed, actions);
    for bad in ["shell", "Command", "file-change", ""] {
        let r = admin
            .post(&path, json!({"action": bad, "description": "x"}))
            .await;
        r.expect_error(400, "VALIDATION_ERROR");
        assert_eq!(r.issue_paths(), ["action"], "{bad}");
    }
    let r = admin
        .post(&path, json!({"action": "launch", "description": "x"}))
        .await;
    assert!(
        r.text
            .contains("merge, deps_add, secrets, deploy, command, file_change, network, other"),
        "{}",
        r.text
    );
    assert_eq!(
        admin.get(&path).await.data()["pending"]
            .as_array()
            .unwrap()
            .len(),
        actions.len(),
        "nothing added by the refused requests"
    );
    s.stop().await;
}

/// `scope` is stored with the decision and shown where the decision is; a bad scope, or
/// `session` with `deny`, is refused and changes nothing.
#[tokio::test]
async fn resolve_scope_is_validated_stored_and_shown() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let id = sid(&admin.create_session("acme").await);
    admin.start_session(&id).await;
    let ask = |action: &str| {
        let path = format!("/api/v1/sessions/{id}/approvals");
        let admin = admin.clone();
        let body = json!({"action": action, "description": "Run npm test",
                          "context": {"tool": "shell", "input": {"command": "npm test"}}});
        async move {
            let r = admin.post(&path, body).await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.data()["approvalId"].as_str().unwrap().to_string()
        }
    };
    let resolve = |a: &str| format!("/api/v1/sessions/{id}/approvals/{a}/resolve");
    let session_wide = ask("command").await;
    let once = ask("file_change").await;
    let plain = ask("network").await;
    let denied = ask("other").await;

    // Refused, and nothing changes: all four still pending, the session still waiting.
    for (body, paths) in [
        (
            json!({"decision": "allow", "scope": "forever"}),
            vec!["scope"],
        ),
        (json!({"decision": "allow", "scope": 1}), vec!["scope"]),
        (
            json!({"decision": "deny", "scope": "session"}),
            vec!["scope"],
        ),
        (
            json!({"decision": "maybe", "scope": "always"}),
            vec!["decision", "scope"],
        ),
    ] {
        let r = org.post(&resolve(&session_wide), body.clone()).await;
        r.expect_error(400, "VALIDATION_ERROR");
        assert_eq!(r.issue_paths(), paths, "{body}");
    }
    let d = org.session(&id).await;
    assert_eq!(d["state"], "WAITING_FOR_APPROVAL");
    assert_eq!(d["pendingApprovals"].as_array().unwrap().len(), 4);
    let events = admin.get(&format!("/api/v1/sessions/{id}/events")).await;
    assert!(
        !events.text.contains("approval_resolved"),
        "a refused resolve leaves no event"
    );

    let r = org
        .post(
            &resolve(&session_wide),
            json!({"decision": "allow", "scope": "session", "reason": "tests are fine"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    org.post(
        &resolve(&once),
        json!({"decision": "allow", "scope": "once"}),
    )
    .await;
    org.post(&resolve(&plain), json!({"decision": "allow"}))
        .await;
    // `once` is a plain decision and may go with a deny.
    let r = org
        .post(
            &resolve(&denied),
            json!({"decision": "deny", "scope": "once"}),
        )
        .await;
    assert_eq!(r.data()["state"], "RUNNING", "{}", r.text);

    let list = org.get(&format!("/api/v1/sessions/{id}/approvals")).await;
    let resolved = list.data()["resolved"].as_array().unwrap().clone();
    let by_id = |a: &str| {
        resolved
            .iter()
            .find(|r| r["approvalId"] == a)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&session_wide)["scope"], "session");
    assert_eq!(by_id(&session_wide)["decision"], "allow");
    assert_eq!(by_id(&session_wide)["reason"], "tests are fine");
    assert_eq!(by_id(&once)["scope"], "once");
    assert!(
        by_id(&plain).get("scope").is_none(),
        "no scope given, none shown"
    );
    assert_eq!(by_id(&denied)["scope"], "once");
    assert_eq!(by_id(&denied)["decision"], "deny");

    // The timeline: the scope next to the decision, when one was given.
    let events = admin.get(&format!("/api/v1/sessions/{id}/events")).await;
    let resolved_events: Vec<Value> = events.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "approval_resolved")
        .cloned()
        .collect();
    assert_eq!(resolved_events.len(), 4);
    assert_eq!(
        resolved_events[0]["data"]["approvalId"],
        session_wide.as_str()
    );
    assert_eq!(resolved_events[0]["data"]["scope"], "session");
    assert_eq!(
        resolved_events[0]["summary"],
        "Approval command: allow for the rest of the session"
    );
    assert_eq!(resolved_events[1]["data"]["scope"], "once");
    assert!(resolved_events[2]["data"].get("scope").is_none());
    assert_eq!(resolved_events[2]["data"]["decision"], "allow");
    s.stop().await;
}

#[tokio::test]
async fn approvals_expire_as_deny_by_system() {
    let s = TestServer::start("[sessions]\napprovalTimeoutMinutes = 10\n").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    admin.start_session(&id).await;
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals"),
            json!({"action": "deploy", "description": "ship it"}),
        )
        .await;
    s.advance(9 * 60_000);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(admin.session(&id).await["state"], "WAITING_FOR_APPROVAL");
    s.advance(60_000);
    let d = eventually(5, || async {
        let d = admin.session(&id).await;
        (d["state"] == "RUNNING").then_some(d)
    })
    .await;
    assert_eq!(d["pendingApprovals"], json!([]));
    let list = admin.get(&format!("/api/v1/sessions/{id}/approvals")).await;
    let r = &list.data()["resolved"][0];
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["resolvedBy"], "system");
    assert_eq!(r["reason"], "expired");
    s.stop().await;
}

#[tokio::test]
async fn ending_a_session_closes_its_pending_approvals() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    admin.start_session(&id).await;
    let a = admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals"),
            json!({"action": "secrets", "description": "read vault"}),
        )
        .await;
    let approval = a.data()["approvalId"].as_str().unwrap().to_string();
    admin
        .post_empty(&format!("/api/v1/sessions/{id}/stop"))
        .await;
    let list = admin.get(&format!("/api/v1/sessions/{id}/approvals")).await;
    assert_eq!(list.data()["pending"], json!([]));
    assert_eq!(list.data()["resolved"][0]["resolvedBy"], "system");
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals/{approval}/resolve"),
            json!({"decision": "allow"}),
        )
        .await
        .expect_error(409, "APPROVAL_ALREADY_RESOLVED");
    s.stop().await;
}

#[tokio::test]
async fn output_is_sequenced_and_stored_once() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    let out = format!("/api/v1/sessions/{id}/output");
    admin
        .post(&out, json!({"stream": "stdout", "data": "early"}))
        .await
        .expect_error(409, "INVALID_STATE");
    admin.start_session(&id).await;
    let seq = |r: common::Resp| r.data()["seq"].as_u64().unwrap();
    assert_eq!(
        seq(admin
            .post(
                &out,
                json!({"stream": "stdout", "data": "hello ", "offset": 0})
            )
            .await),
        1
    );
    assert_eq!(
        seq(admin
            .post(
                &out,
                json!({"stream": "stderr", "data": "wörld\n", "offset": 6})
            )
            .await),
        2
    );
    // An exact retry is answered with the stored seq and not stored again.
    assert_eq!(
        seq(admin
            .post(
                &out,
                json!({"stream": "stderr", "data": "wörld\n", "offset": 6})
            )
            .await),
        2
    );
    // A gap or overlap is refused with the server's offset.
    let r = admin
        .post(&out, json!({"stream": "stdout", "data": "x", "offset": 99}))
        .await;
    r.expect_error(409, "OUTPUT_OFFSET_MISMATCH");
    assert_eq!(r.json["error"]["details"]["offset"], 13);
    admin
        .post(&out, json!({"stream": "stdout", "data": "llo"}))
        .await; // no offset: appended
    let bad = admin
        .post(&out, json!({"stream": "video", "data": ""}))
        .await;
    bad.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(bad.issue_paths(), ["stream", "data"]);
    let big = "a".repeat(256 * 1024 + 1);
    admin
        .post(&out, json!({"stream": "stdout", "data": big}))
        .await
        .expect_error(400, "VALIDATION_ERROR");

    let r = admin.get(&out).await;
    let items = r.data()["items"].as_array().unwrap().clone();
    let got: Vec<(u64, &str, &str)> = items
        .iter()
        .map(|c| {
            (
                c["seq"].as_u64().unwrap(),
                c["stream"].as_str().unwrap(),
                c["data"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "stdout", "hello "),
            (2, "stderr", "wörld\n"),
            (3, "stdout", "llo")
        ]
    );
    assert_eq!(r.data()["nextSeq"], 3);
    let after = admin.get(&format!("{out}?afterSeq=3")).await;
    assert_eq!(after.data()["items"], json!([]));
    assert_eq!(after.data()["nextSeq"], 3);
    s.stop().await;
}

#[tokio::test]
async fn usage_replaces_given_fields() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    let u = format!("/api/v1/sessions/{id}/usage");
    let r = admin
        .post(
            &u,
            json!({"tokensIn": 100, "tokensOut": 20, "apiCalls": 3, "computeSeconds": 1.5}),
        )
        .await;
    assert_eq!(
        r.data()["usage"],
        json!({"tokensIn": 100, "tokensOut": 20, "apiCalls": 3, "computeSeconds": 1.5, "costUsd": 0.0})
    );
    let r = admin.post(&u, json!({"tokensIn": 250})).await;
    assert_eq!(
        r.data()["usage"],
        json!({"tokensIn": 250, "tokensOut": 20, "apiCalls": 3, "computeSeconds": 1.5, "costUsd": 0.0})
    );
    let bad = admin
        .post(
            &u,
            json!({"tokensIn": -1, "apiCalls": "3", "computeSeconds": -2}),
        )
        .await;
    bad.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        bad.issue_paths(),
        ["tokensIn", "apiCalls", "computeSeconds"]
    );
    assert_eq!(admin.session(&id).await["usage"]["tokensIn"], 250);
    s.stop().await;
}

#[tokio::test]
async fn cost_is_stored_replaced_and_checked() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = sid(&admin.create_session("acme").await);
    let u = format!("/api/v1/sessions/{id}/usage");
    assert_eq!(
        admin.session(&id).await["usage"]["costUsd"],
        0.0,
        "0 when never reported"
    );
    let r = admin.post(&u, json!({"costUsd": 0.0425})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.data()["usage"],
        json!({"tokensIn": 0, "tokensOut": 0, "apiCalls": 0, "computeSeconds": 0.0, "costUsd": 0.0425})
    );
    // Replace semantics: a total, not an increment; other fields keep theirs.
    admin.post(&u, json!({"costUsd": 1.5})).await;
    let r = admin.post(&u, json!({"tokensIn": 7})).await;
    assert_eq!(r.data()["usage"]["costUsd"], 1.5);
    assert_eq!(r.data()["usage"]["tokensIn"], 7);
    let r = admin.post(&u, json!({"costUsd": 2})).await;
    assert_eq!(r.data()["usage"]["costUsd"], 2.0);

    for bad in [
        json!({"costUsd": -0.01}),
        json!({"costUsd": "NaN"}),
        json!({"costUsd": "Infinity"}),
        json!({"costUsd": "1.5"}),
        json!({"costUsd": true}),
        json!({"costUsd": 1.0e13}),
    ] {
        let r = admin.post(&u, bad.clone()).await;
        r.expect_error(400, "VALIDATION_ERROR");
        assert_eq!(r.issue_paths(), ["costUsd"], "{bad}");
    }
    // Numbers JSON cannot hold are not JSON.
    for text in [
        r#"{"costUsd": NaN}"#,
        r#"{"costUsd": Infinity}"#,
        r#"{"costUsd": 1e999}"#,
    ] {
        admin
            .raw(
                "POST",
                &u,
                &[("content-type", "application/json")],
                text.as_bytes().to_vec(),
            )
            .await
            .expect_error(400, "INVALID_JSON");
    }
    // Nothing changed by the refused reports.
    assert_eq!(admin.session(&id).await["usage"]["costUsd"], 2.0);
    s.stop().await;
}

#[tokio::test]
async fn timeout_counts_from_first_running() {
    let s = TestServer::start("[sessions]\ndefaultTimeoutMinutes = 30\n").await;
    let admin = s.admin();
    let short = sid(&admin
        .post("/api/v1/sessions", json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"}, "options": {"timeoutMinutes": 2}}))
        .await
        .data()
        .clone());
    let default = sid(&admin.create_session("acme").await);
    // Queue time does not count.
    s.advance(60 * 60_000);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(admin.session(&short).await["state"], "QUEUED");
    admin.start_session(&short).await;
    admin.start_session(&default).await;
    admin
        .post_empty(&format!("/api/v1/sessions/{default}/pause"))
        .await;
    s.advance(2 * 60_000);
    let d = eventually(5, || async {
        let d = admin.session(&short).await;
        (d["state"] == "TIMED_OUT").then_some(d)
    })
    .await;
    assert!(d["endReason"].as_str().unwrap().starts_with("timeout"));
    assert_eq!(admin.session(&default).await["state"], "PAUSED_BY_HUMAN");
    s.advance(28 * 60_000);
    eventually(5, || async {
        (admin.session(&default).await["state"] == "TIMED_OUT").then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn finished_sessions_are_purged_after_the_ttl() {
    let s = TestServer::start("[sessions]\nsessionDataTtlHours = 1\n").await;
    let admin = s.admin();
    let done = sid(&admin.create_session("acme").await);
    let live = sid(&admin.create_session("acme").await);
    admin.start_session(&done).await;
    admin
        .post(
            &format!("/api/v1/sessions/{done}/output"),
            json!({"stream": "stdout", "data": "bye"}),
        )
        .await;
    admin
        .post_empty(&format!("/api/v1/sessions/{done}/stop"))
        .await;
    s.advance(59 * 60_000);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(admin.session(&done).await["state"], "COMPLETED");
    s.advance(60_000);
    eventually(5, || async {
        (admin.get(&format!("/api/v1/sessions/{done}")).await.status == 404).then_some(())
    })
    .await;
    admin
        .get(&format!("/api/v1/sessions/{done}/output"))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    assert_eq!(
        admin.session(&live).await["state"],
        "QUEUED",
        "an active session is never purged"
    );
    assert_eq!(count_sessions(&admin, "acme").await, 1);
    s.stop().await;
}

/// A create and a runner's output are answered by the edge before the route tree; the forms of
/// their paths it leaves to the tree (a trailing slash) must get the same answer, refusals
/// included, with the same envelope and request id.
#[tokio::test]
async fn creates_and_output_are_answered_alike_by_the_edge_and_the_route_tree() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let anonymous = s.anonymous();
    let json = ("content-type", "application/json");
    let huge = vec![b' '; 2 * 1024 * 1024];
    let new_session = serde_json::to_vec(&json!({
        "orgId": "acme",
        "providerId": "codex",
        "repo": {"url": "https://github.com/acme/app"},
    }))
    .unwrap();
    let running = sid(&admin.create_session("acme").await);
    admin.start_session(&running).await;
    let output = format!("/api/v1/sessions/{running}/output");
    // (path at the edge, body that succeeds, status of success, body the route refuses)
    let routes = [
        (
            "/api/v1/sessions".to_owned(),
            new_session,
            201,
            b"[]".to_vec(),
        ),
        (
            output,
            b"{\"stream\": \"stdout\", \"data\": \"x\"}".to_vec(),
            200,
            b"{\"stream\": \"video\"}".to_vec(),
        ),
    ];
    for (edge, good, created, refused) in &routes {
        let tree = format!("{edge}/");
        type Case<'c> = (&'c Client, Vec<(&'c str, &'c str)>, &'c [u8], u16, &'c str);
        let cases: Vec<Case> = vec![
            (
                &admin,
                vec![json, ("x-request-id", "edge-1")],
                good,
                *created,
                "",
            ),
            (&anonymous, vec![json], good, 401, "UNAUTHORIZED"),
            (
                &admin,
                vec![("content-type", "text/plain")],
                good,
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            (&admin, vec![json], b"{not json", 400, "INVALID_JSON"),
            (&admin, vec![json], refused, 400, "VALIDATION_ERROR"),
            (&admin, vec![json], &huge, 413, "PAYLOAD_TOO_LARGE"),
        ];
        for (client, headers, body, status, code) in &cases {
            let mut answers = Vec::new();
            for path in [edge, &tree] {
                let r = client.raw("POST", path, headers, body.to_vec()).await;
                assert_eq!(r.status, *status, "{path}: {}", r.text);
                if r.status == *created {
                    assert_eq!(r.headers["x-request-id"], "edge-1");
                    assert_eq!(r.json["meta"]["requestId"], "edge-1");
                } else {
                    r.expect_error(*status, code);
                }
                // The same answer but for what differs from one call to the next.
                let mut data = r.json["data"].clone();
                for key in [
                    "sessionId",
                    "createdAt",
                    "updatedAt",
                    "workspace",
                    "seq",
                    "recentEvents",
                ] {
                    data.as_object_mut().map(|d| d.remove(key));
                }
                answers.push((data, r.json["error"]["details"].clone()));
            }
            assert_eq!(answers[0], answers[1], "{edge} answered {status}");
        }
    }
    // Both forms of a create made a session; both appends were stored, in order.
    assert_eq!(count_sessions(&admin, "acme").await, 3);
    let r = admin
        .get(&format!("/api/v1/sessions/{running}/output"))
        .await;
    let seqs: Vec<u64> = r.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
}
