//! Tokens and authentication against the real server (docs/api.md, section 2).
#![allow(clippy::unwrap_used)]

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn token_api_creates_lists_and_revokes() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let r = admin
        .post(
            "/api/v1/tokens",
            json!({"kind": "org", "name": "acme ci", "orgId": "acme"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let d = r.data().clone();
    let secret = d["token"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32 + 4, "at least 128 bits of secret");
    assert_eq!(d["kind"], "org");
    assert_eq!(d["orgId"], "acme");
    assert_eq!(d["name"], "acme ci");
    assert!(d["createdAt"].is_string());
    let token_id = d["tokenId"].as_str().unwrap().to_string();

    // The secret works, is never listed again, and only its hash is on disk.
    let org = admin.with_token(&secret);
    assert_eq!(org.get("/api/v1/sessions").await.status, 200);
    let list = admin.get("/api/v1/tokens").await;
    assert!(!list.text.contains(&secret));
    assert_eq!(list.data()["total"], 2, "bootstrap admin + the new one");
    let db = std::fs::read(s.data_dir.path().join("village.redb")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret stored in clear"
    );

    let r = admin.delete(&format!("/api/v1/tokens/{token_id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.data()["revokedAt"].is_string());
    org.get("/api/v1/sessions")
        .await
        .expect_error(401, "UNAUTHORIZED");
    // Revoking again is harmless; unknown ids are 404.
    assert_eq!(
        admin
            .delete(&format!("/api/v1/tokens/{token_id}"))
            .await
            .status,
        200
    );
    admin
        .delete("/api/v1/tokens/6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11")
        .await
        .expect_error(404, "TOKEN_NOT_FOUND");
    admin
        .delete("/api/v1/tokens/nope")
        .await
        .expect_error(404, "TOKEN_NOT_FOUND");
    s.stop().await;
}

#[tokio::test]
async fn token_requests_are_validated() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let r = admin
        .post("/api/v1/tokens", json!({"kind": "org", "name": ""}))
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), ["name", "orgId"]);
    let r = admin.post("/api/v1/tokens", json!({"kind": "root"})).await;
    assert_eq!(r.issue_paths(), ["kind", "name"]);
    let r = admin
        .post("/api/v1/tokens", json!({"kind": "runner", "name": "r"}))
        .await;
    assert_eq!(r.issue_paths(), ["kind"]);
    let r = admin
        .post(
            "/api/v1/tokens",
            json!({"kind": "org", "name": "x", "orgId": "bad org"}),
        )
        .await;
    assert_eq!(r.issue_paths(), ["orgId"]);
    admin
        .get("/api/v1/tokens?pageSize=0")
        .await
        .expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        admin.get("/api/v1/tokens").await.data()["total"],
        1,
        "nothing was created"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let first = admin.get("/api/v1/tokens").await.data()["items"][0]["tokenId"]
        .as_str()
        .unwrap()
        .to_string();
    admin
        .delete(&format!("/api/v1/tokens/{first}"))
        .await
        .expect_error(409, "INVALID_STATE");
    let second = admin.create_token("admin", None).await;
    assert_eq!(
        admin
            .delete(&format!("/api/v1/tokens/{first}"))
            .await
            .status,
        200
    );
    admin
        .get("/api/v1/tokens")
        .await
        .expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        admin.with_token(&second).get("/api/v1/tokens").await.status,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_credentials_are_401_and_wrong_kinds_403() {
    let s = TestServer::start("").await;
    let anon = s.anonymous();
    anon.get("/api/v1/sessions")
        .await
        .expect_error(401, "UNAUTHORIZED");
    anon.with_token("vlg_not-a-real-token")
        .get("/api/v1/sessions")
        .await
        .expect_error(401, "UNAUTHORIZED");
    anon.raw(
        "GET",
        "/api/v1/tokens",
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
        vec![],
    )
    .await
    .expect_error(401, "UNAUTHORIZED");
    let admin = s.admin();
    let join = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    join.post(
        "/api/v1/tokens",
        json!({"kind": "admin", "name": "escalate"}),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    // Public routes need no token.
    assert_eq!(anon.get("/healthz").await.status, 200);
    assert_eq!(anon.get("/readyz").await.status, 200);
    assert_eq!(anon.get("/api/v1/openapi.json").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn request_ids_are_reused_only_when_safe() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let r = admin
        .raw(
            "GET",
            "/api/v1/tokens",
            &[("x-request-id", "ci-run.42_a")],
            vec![],
        )
        .await;
    assert_eq!(r.json["meta"]["requestId"], "ci-run.42_a");
    assert_eq!(r.headers["x-request-id"], "ci-run.42_a");
    let long = "a".repeat(65);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let r = admin
            .raw("GET", "/api/v1/tokens", &[("x-request-id", bad)], vec![])
            .await;
        let id = r.json["meta"]["requestId"].as_str().unwrap();
        assert_ne!(id, bad);
        assert!(!id.is_empty());
    }
    // Errors carry it too.
    let r = s
        .anonymous()
        .raw("GET", "/api/v1/tokens", &[("x-request-id", "abc")], vec![])
        .await;
    assert_eq!(r.json["meta"]["requestId"], "abc");
    s.stop().await;
}

#[tokio::test]
async fn auth_can_be_switched_off_for_local_trials() {
    let s = TestServer::start("[auth]\ndisabled = true\n").await;
    let r = s
        .anonymous()
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "omnara", "repo": {"url": "file:///srv/app"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(s.anonymous().get("/api/v1/tokens").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn metrics_are_open_on_loopback() {
    let s = TestServer::start("").await;
    s.admin().create_session("acme").await;
    let r = s.anonymous().get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("village_store_commits_total"), "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn state_changing_calls_are_audited() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org_secret = admin.create_token("org", Some("acme")).await;
    let org = admin.with_token(&org_secret);
    let id = org.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    admin.start_session(&id).await;
    org.post_empty(&format!("/api/v1/sessions/{id}/pause"))
        .await;
    org.post(
        &format!("/api/v1/sessions/{id}/stop"),
        json!({"reason": "done"}),
    )
    .await;
    // Refused calls change nothing, so they are not in the log.
    org.post_empty(&format!("/api/v1/sessions/{id}/pause"))
        .await
        .expect_error(409, "INVALID_STATE");

    let r = admin.get("/api/v1/audit").await;
    let items = r.data()["items"].as_array().unwrap().clone();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.create",
            "session.create",
            "session.state",
            "session.pause",
            "session.stop"
        ]
    );
    let seqs: Vec<u64> = items.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let create = &items[1];
    assert_eq!(create["target"], id.as_str());
    assert_eq!(create["orgId"], "acme");
    assert_eq!(create["actor"]["kind"], "org");
    assert!(create["actor"]["tokenId"].is_string());
    assert_eq!(items[2]["actor"]["kind"], "admin");
    assert!(!r.text.contains(&org_secret));
    let page = admin.get("/api/v1/audit?afterSeq=3&limit=1").await;
    assert_eq!(page.data()["items"][0]["action"], "session.pause");
    assert_eq!(page.data()["nextSeq"], 4);
    admin
        .get("/api/v1/audit?limit=0")
        .await
        .expect_error(400, "VALIDATION_ERROR");
    org.get("/api/v1/audit")
        .await
        .expect_error(403, "FORBIDDEN");
    s.stop().await;
}

#[tokio::test]
async fn me_tells_a_token_who_it_is() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let me = admin.get("/api/v1/me").await;
    assert_eq!(me.data()["kind"], "admin");
    assert_eq!(me.data()["orgId"], json!(null));
    assert!(me.data()["tokenId"].is_string());

    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let me = org.get("/api/v1/me").await;
    assert_eq!(
        (me.data()["kind"].as_str(), me.data()["orgId"].as_str()),
        (Some("org"), Some("acme"))
    );
    assert_eq!(me.data()["name"], "org token");
    let join = admin.with_token(&admin.create_token("runner_join", None).await);
    assert_eq!(join.get("/api/v1/me").await.data()["kind"], "runner_join");

    s.anonymous()
        .get("/api/v1/me")
        .await
        .expect_error(401, "UNAUTHORIZED");
    admin
        .with_token("not-a-token")
        .get("/api/v1/me")
        .await
        .expect_error(401, "UNAUTHORIZED");
    s.stop().await;
}

/// A client that sends a revoke and hangs up at once: the server has the whole request, so the
/// revoke is carried out in full — stored, and the token refused from then on. (The server drops
/// a request's future when its client goes; the in-memory set of active tokens must still follow
/// the commit.)
#[tokio::test]
async fn a_revoke_whose_client_hangs_up_at_once_still_revokes() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start("").await;
    let admin = s.admin();
    for i in 0..12 {
        let r = admin
            .post(
                "/api/v1/tokens",
                json!({"kind": "org", "name": format!("ci {i}"), "orgId": "acme"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let secret = r.data()["token"].as_str().unwrap().to_string();
        let id = r.data()["tokenId"].as_str().unwrap().to_string();
        let org = admin.with_token(&secret);
        assert_eq!(org.get("/api/v1/me").await.status, 200);
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let request = format!(
            "DELETE /api/v1/tokens/{id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 0\r\n\r\n",
            s.addr, s.admin_token
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        drop(tcp);
        common::eventually(5, || async {
            (org.get("/api/v1/me").await.status == 401).then_some(())
        })
        .await;
        let listed = admin.get("/api/v1/tokens?pageSize=100").await;
        let item = listed.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tokenId"] == id.as_str())
            .cloned()
            .unwrap();
        assert!(item["revokedAt"].is_string(), "try {i}: {item}");
    }
    s.stop().await;
}

/// Entries older than `audit.retentionDays` are removed; the newest always stays, so numbering
/// goes on without reuse.
#[tokio::test]
async fn the_audit_log_keeps_only_its_retention() {
    let s = TestServer::start("[audit]\nretentionDays = 1\n").await;
    let admin = s.admin();
    for org in ["acme", "globex", "initech"] {
        admin.create_token("org", Some(org)).await;
    }
    let seqs = |r: &common::Resp| -> Vec<u64> {
        r.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&admin.get("/api/v1/audit").await), [1, 2, 3]);
    // A day and a bit later: all three are past the retention, but the newest stays.
    s.advance(25 * 3600 * 1000);
    common::eventually(5, || async {
        (seqs(&admin.get("/api/v1/audit").await) == [3]).then_some(())
    })
    .await;
    admin.create_token("org", Some("umbrella")).await;
    assert_eq!(seqs(&admin.get("/api/v1/audit").await), [3, 4]);
    s.advance(25 * 3600 * 1000);
    common::eventually(5, || async {
        (seqs(&admin.get("/api/v1/audit").await) == [4]).then_some(())
    })
    .await;
    s.stop().await;
}
