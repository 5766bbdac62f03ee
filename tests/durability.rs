//! The real binary: start-up, configuration errors, restart, and `kill -9` under load.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BinaryServer, Client, tmp_dir};
use serde_json::{Value, json};

#[tokio::test]
async fn first_start_writes_the_admin_token_to_a_private_file_and_names_it() {
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[("VILLAGE_LOG", "debug")]);
    let token = server.admin_token.clone();
    assert!(token.starts_with("vlg_"));
    // Not a terminal (as under a service manager, whose journal keeps stdout): the token is
    // not printed; the log says which file holds it.
    common::eventually(5, || async {
        server
            .log()
            .contains("the first admin token was written to this file")
            .then_some(())
    })
    .await;
    assert!(server.log().contains("admin-token"), "{}", server.log());
    assert!(!server.stdout().contains(&token), "{}", server.stdout());
    let meta = std::fs::metadata(dir.join("admin-token")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(server.admin().get("/api/v1/tokens").await.status, 200);
    // Secrets never reach the log, even at debug level.
    let r = server
        .admin()
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"},
                   "options": {"env": {"DB_PASSWORD": "hunter2-very-secret"}}}),
        )
        .await;
    assert_eq!(r.status, 201);
    server.terminate();
    let log = server.log();
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains(&token), "admin token logged");
    assert!(!log.contains("hunter2-very-secret"), "env value logged");
    // A second start on the same data dir prints no new token and keeps the old one valid.
    let mut again = BinaryServer::spawn(&dir, &[]);
    assert_eq!(again.admin().get("/api/v1/tokens").await.data()["total"], 1);
    again.terminate();
    assert!(
        !again.log().contains("first admin token"),
        "{}",
        again.log()
    );
}

#[tokio::test]
async fn the_data_dir_and_its_files_are_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    assert_eq!(server.admin().get("/api/v1/tokens").await.status, 200);
    server.terminate();
    assert_eq!(mode(&dir), 0o700, "data dir");
    assert_eq!(mode(&dir.join("village.redb")), 0o600, "database");
    assert_eq!(mode(&dir.join("admin-token")), 0o600, "admin token");
    // A data dir an older version left readable to everyone is closed at the next start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("village.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut again = BinaryServer::spawn(&dir, &[]);
    assert_eq!(again.admin().get("/api/v1/tokens").await.status, 200);
    again.terminate();
    assert_eq!(mode(&dir), 0o700, "data dir after restart");
    assert_eq!(mode(&db), 0o600, "database after restart");
}

#[test]
fn authentication_off_is_refused_on_a_network_address() {
    let (_keep, dir) = tmp_dir();
    let run = |listen: &str, env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_village"));
        cmd.args(["serve", "--listen", listen])
            .arg("--data-dir")
            .arg(dir.join("data"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for env in [
        [("VILLAGE_AUTH_DISABLED", "true")],
        // The old name of the switch is held to the same rule.
        [("VILLAGE_WEBSOCKET_AUTH_REQUIRED", "false")],
    ] {
        let (code, err) = run("0.0.0.0:0", &env);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("auth.disabled"), "{err}");
        assert!(err.contains("loopback"), "{err}");
    }
    assert!(
        !dir.join("data").join("village.redb").exists(),
        "nothing was started"
    );
}

#[test]
fn bad_configuration_stops_the_start_naming_the_key() {
    let (_keep, dir) = tmp_dir();
    let cfg = dir.join("village.toml");
    std::fs::write(&cfg, "[sessions]\nmaxSessionsPerOrgg = 3\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_village"));
        cmd.args(args).arg("--data-dir").arg(dir.join("data"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("sessions.maxSessionsPerOrgg"), "{err}");
    let err = run(
        &["--listen", "127.0.0.1:0"],
        &[("VILLAGE_RUNNERS_DEFAULT_CAPACITY", "lots")],
    );
    assert!(err.contains("VILLAGE_RUNNERS_DEFAULT_CAPACITY"), "{err}");
    let err = run(&["--listen", "nowhere"], &[]);
    assert!(err.contains("--listen"), "{err}");
    assert!(
        !dir.join("data").join("village.redb").exists(),
        "nothing was started"
    );
}

/// Everything the API shows about a session, minus fields that change with the clock.
async fn snapshot(c: &Client, id: &str) -> Value {
    let mut detail = c.session(id).await;
    detail.as_object_mut().unwrap().remove("durationSeconds");
    let events = c
        .get(&format!("/api/v1/sessions/{id}/events"))
        .await
        .data()
        .clone();
    let output = c
        .get(&format!("/api/v1/sessions/{id}/output"))
        .await
        .data()
        .clone();
    let approvals = c
        .get(&format!("/api/v1/sessions/{id}/approvals"))
        .await
        .data()
        .clone();
    json!({"detail": detail, "events": events, "output": output, "approvals": approvals})
}

#[tokio::test]
async fn restart_keeps_everything_identical() {
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    let admin = server.admin();
    let org_token = admin.create_token("org", Some("acme")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = admin.create_session("acme").await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        if i > 0 {
            admin.start_session(&id).await;
            for n in 0..5 {
                admin
                    .post(
                        &format!("/api/v1/sessions/{id}/output"),
                        json!({"stream": "stdout", "data": format!("line {n}\n")}),
                    )
                    .await;
            }
            let a = admin
                .post(
                    &format!("/api/v1/sessions/{id}/approvals"),
                    json!({"action": "merge", "description": "merge it"}),
                )
                .await;
            if i == 2 {
                let aid = a.data()["approvalId"].as_str().unwrap();
                admin
                    .post(
                        &format!("/api/v1/sessions/{id}/approvals/{aid}/resolve"),
                        json!({"decision": "allow"}),
                    )
                    .await;
                admin
                    .post(
                        &format!("/api/v1/sessions/{id}/usage"),
                        json!({"tokensIn": 9}),
                    )
                    .await;
            }
        }
        ids.push(id);
    }
    let mut before = Vec::new();
    for id in &ids {
        before.push(snapshot(&admin, id).await);
    }
    let list_before = admin
        .get("/api/v1/sessions?orgId=acme")
        .await
        .data()
        .clone();
    server.terminate();

    let again = BinaryServer::spawn(&dir, &[]);
    let admin = again.admin();
    for (id, want) in ids.iter().zip(&before) {
        assert_eq!(
            &snapshot(&admin, id).await,
            want,
            "session {id} changed across restart"
        );
    }
    let mut list_after = admin
        .get("/api/v1/sessions?orgId=acme")
        .await
        .data()
        .clone();
    let strip = |v: &mut Value| {
        for item in v["items"].as_array_mut().unwrap() {
            item.as_object_mut().unwrap().remove("durationSeconds");
        }
    };
    let mut list_before = list_before;
    strip(&mut list_before);
    strip(&mut list_after);
    assert_eq!(list_after, list_before);
    // Tokens survive too.
    assert_eq!(
        admin
            .with_token(&org_token)
            .get("/api/v1/sessions")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let (_keep, dir) = tmp_dir();
    let mut server =
        BinaryServer::spawn(&dir, &[("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "100000")]);
    let admin = server.admin();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..16 {
        let admin = admin.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let org = format!("crash-{w}");
            for _ in 0..10_000 {
                let body = json!({"orgId": org, "providerId": "codex", "repo": {"url": "https://x.org/a"}});
                // The server dies mid-way: connection errors end this writer.
                let Ok(r) = tokio::time::timeout(Duration::from_secs(5), try_post(&admin, body)).await else { break };
                match r {
                    Some((201, id)) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Some(_) | None => break,
                }
            }
        }));
    }
    // Let the writers get going, then pull the plug.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few writes before the kill: {}",
        acked.len()
    );

    let again = BinaryServer::spawn(&dir, &[("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "100000")]);
    let admin = again.admin();
    for id in &acked {
        let r = admin.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(
            r.status, 200,
            "acknowledged session {id} lost after kill -9"
        );
    }
    // The indexes agree with the records.
    let mut listed = 0;
    for w in 0..16 {
        listed += admin
            .get(&format!("/api/v1/sessions?orgId=crash-{w}&pageSize=1"))
            .await
            .data()["total"]
            .as_u64()
            .unwrap();
    }
    assert!(listed >= acked.len() as u64);
    eprintln!(
        "kill -9: {} acknowledged creates, {listed} present after restart",
        acked.len()
    );
}

/// POST that reports a dead server as `None` instead of panicking.
async fn try_post(c: &Client, body: Value) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(c.addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/api/v1/sessions")
        .header("host", c.addr.to_string())
        .header(
            "authorization",
            format!("Bearer {}", c.token.as_deref().unwrap_or("")),
        )
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        status,
        v["data"]["sessionId"].as_str().unwrap_or("").to_string(),
    ))
}

#[tokio::test]
async fn a_restart_never_marks_a_healthy_fleet_offline() {
    let (_keep, dir) = tmp_dir();
    let env = [
        ("VILLAGE_RUNNERS_HEARTBEAT_TIMEOUT_MS", "1000"),
        ("VILLAGE_RUNNERS_RESTART_GRACE_MS", "3000"),
        ("VILLAGE_RUNNERS_LOST_AFTER_MS", "600000"),
    ];
    let mut server = BinaryServer::spawn(&dir, &env);
    let admin = server.admin();
    let (runner, _) = common::runner::register(&admin, "host-1", &["codex"], None, &[]).await;
    runner.heartbeat().await;
    // The server dies hard; the runner registration was acknowledged, so it must survive.
    server.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = BinaryServer::spawn(&dir, &env);
    let admin = again.admin();
    let started = std::time::Instant::now();
    let info = admin.get(&format!("/api/v1/runners/{}", runner.id)).await;
    assert_eq!(info.data()["hostname"], "host-1");
    assert_eq!(
        info.data()["status"],
        "online",
        "marked offline inside the restart grace"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    // Still silent after the grace: now it is offline.
    common::eventually(10, || async {
        let r = admin.get(&format!("/api/v1/runners/{}", runner.id)).await;
        (r.data()["status"] == "offline").then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(2900));
    // Its token still works after the restart.
    let runner = common::runner::SimRunner {
        client: Client::new(again.addr, Some(&runner.token)),
        ..runner
    };
    assert_eq!(runner.heartbeat().await.data()["status"], "online");
}
