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

/// A session create that reports a dead server as `None` instead of panicking.
async fn try_post(c: &Client, body: Value) -> Option<(u16, String)> {
    let (status, v) = call(c, "POST", "/api/v1/sessions", Some(body)).await?;
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

/// What the load was told was done (acknowledged), across every round of the crash loop.
#[derive(Default, Clone)]
struct Acknowledged {
    sessions: Vec<String>,
    /// Sessions waiting to be started by a driver.
    queued: Vec<String>,
    running: HashSet<String>,
    /// session → (seq, data) of each acknowledged output chunk.
    output: std::collections::HashMap<String, Vec<(u64, String)>>,
    approvals: HashSet<(String, String)>,
    resolved: HashSet<(String, String)>,
    rollouts: HashSet<String>,
}

/// A request that reports a dead server as `None`.
async fn call(c: &Client, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let stream = tokio::net::TcpStream::connect(c.addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", c.addr.to_string())
        .header(
            "authorization",
            format!("Bearer {}", c.token.as_deref().unwrap_or("")),
        );
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            b.to_string()
        }
        None => String::new(),
    };
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Runs the mixed load against `c` until the server dies: sessions created, started, printing
/// output by offset, asking and answering approvals, heartbeats, builds and rollouts.
async fn mixed_load(c: Client, round: usize, acked: Arc<Mutex<Acknowledged>>) {
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (c, acked) = (c.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let body =
                json!({"orgId": "loop", "providerId": "codex", "repo": {"url": "https://x.org/a"}});
            while let Some((status, v)) =
                call(&c, "POST", "/api/v1/sessions", Some(body.clone())).await
            {
                if status == 201 {
                    let id = v["data"]["sessionId"].as_str().unwrap().to_string();
                    let mut a = acked.lock().unwrap();
                    a.sessions.push(id.clone());
                    a.queued.push(id);
                }
            }
        }));
    }
    for _ in 0..2 {
        let (c, acked) = (c.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = acked.lock().unwrap().queued.pop();
                let Some(id) = next else {
                    if call(&c, "GET", "/healthz", None).await.is_none() {
                        return;
                    }
                    continue;
                };
                let base = format!("/api/v1/sessions/{id}");
                let Some((status, _)) = call(
                    &c,
                    "POST",
                    &format!("{base}/state"),
                    Some(json!({"state": "RUNNING"})),
                )
                .await
                else {
                    return;
                };
                if status != 200 {
                    continue;
                }
                acked.lock().unwrap().running.insert(id.clone());
                let mut offset = 0u64;
                for n in 0..5 {
                    let data = format!("round {round} line {n} of {id}\n");
                    let body = json!({"stream": "stdout", "data": data, "offset": offset});
                    let Some((status, v)) =
                        call(&c, "POST", &format!("{base}/output"), Some(body)).await
                    else {
                        return;
                    };
                    assert!(status == 200 || status == 201, "output: {status} {v}");
                    let seq = v["data"]["seq"].as_u64().unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .output
                        .entry(id.clone())
                        .or_default()
                        .push((seq, data.clone()));
                    offset += data.len() as u64;
                }
                let ask = json!({"action": "deploy", "description": format!("ship {id}")});
                let Some((status, v)) =
                    call(&c, "POST", &format!("{base}/approvals"), Some(ask)).await
                else {
                    return;
                };
                assert_eq!(status, 201, "{v}");
                let approval = v["data"]["approvalId"].as_str().unwrap().to_string();
                acked
                    .lock()
                    .unwrap()
                    .approvals
                    .insert((id.clone(), approval.clone()));
                let path = format!("{base}/approvals/{approval}/resolve");
                let Some((status, v)) =
                    call(&c, "POST", &path, Some(json!({"decision": "allow"}))).await
                else {
                    return;
                };
                assert_eq!(status, 200, "{v}");
                acked.lock().unwrap().resolved.insert((id, approval));
            }
        }));
    }
    {
        let c = c.clone();
        workers.push(tokio::spawn(async move {
            let register = json!({"hostname": "loop-host", "capabilities": {"providers": ["codex"]}});
            let Some((_, v)) = call(&c, "POST", "/api/v1/runners/register", Some(register)).await else {
                return;
            };
            let Some(id) = v["data"]["runner"]["runnerId"].as_str().map(str::to_owned) else {
                return;
            };
            let runner = Client::new(c.addr, v["data"]["runnerToken"].as_str());
            let beat = json!({"runnerId": id, "timestamp": "2026-11-25T10:00:00.000Z", "activeSessions": [],
                              "load": {"cpuPercent": 1, "memoryPercent": 2, "diskPercent": 3}});
            while call(&runner, "POST", &format!("/api/v1/runners/{id}/heartbeat"), Some(beat.clone())).await.is_some() {}
        }));
    }
    for worker in 0..2 {
        let (c, acked) = (c.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            for n in 0.. {
                let build = format!("b-{round}-{worker}-{n}");
                let body = json!({"buildId": build, "runnerVersion": "1.0.0",
                                  "builtAt": "2026-11-20T10:00:00.000Z", "runtimeVersions": {"codex": "1.0"}});
                if call(&c, "POST", "/api/v1/builds", Some(body)).await.is_none() {
                    return;
                }
                let body = json!({"buildId": build, "channel": "stable", "stages": [10, 100]});
                let Some((status, v)) = call(&c, "POST", "/api/v1/rollouts", Some(body)).await else {
                    return;
                };
                match status {
                    201 => {
                        let id = v["data"]["rolloutId"].as_str().unwrap().to_string();
                        acked.lock().unwrap().rollouts.insert(id.clone());
                        // Finish it now and then, so new rollouts keep being created.
                        if n % 2 == 0 {
                            let why = Some(json!({"reason": "crash loop"}));
                            let (status, v) = call(&c, "POST", &format!("/api/v1/rollouts/{id}/cancel"), why)
                                .await
                                .unwrap_or((200, Value::Null));
                            assert!(status == 200 || status == 409, "cancel: {status} {v}");
                        }
                    }
                    409 => {
                        assert_eq!(v["error"]["code"], "ROLLOUT_ALREADY_ACTIVE", "{v}");
                        if let Some(active) = v["error"]["details"]["rolloutId"].as_str() {
                            let why = Some(json!({"reason": "crash loop"}));
                            call(&c, "POST", &format!("/api/v1/rollouts/{active}/cancel"), why).await;
                        }
                    }
                    _ => panic!("rollout: {status} {v}"),
                }
            }
        }));
    }
    for w in workers {
        // A worker's assertion failing fails the test.
        if let Err(e) = w.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// After a restart: every acknowledged write is there and every invariant holds.
async fn check_invariants(admin: &Client, acked: &Acknowledged, round: usize) {
    let ok = |r: &common::Resp, what: &str| {
        assert_eq!(r.status, 200, "round {round}, {what}: {}", r.text)
    };
    // One state per session: the org listing and each record agree, no session listed twice.
    let mut listed = std::collections::HashMap::new();
    for page in 1.. {
        let r = admin
            .get(&format!(
                "/api/v1/sessions?orgId=loop&pageSize=100&page={page}"
            ))
            .await;
        ok(&r, "list");
        let items = r.data()["items"].as_array().unwrap().clone();
        for s in &items {
            let id = s["sessionId"].as_str().unwrap().to_string();
            assert!(
                listed.insert(id.clone(), s["state"].clone()).is_none(),
                "round {round}: {id} listed twice"
            );
        }
        if !r.data()["hasMore"].as_bool().unwrap() {
            break;
        }
    }
    for id in &acked.sessions {
        assert!(
            listed.contains_key(id),
            "round {round}: acknowledged session {id} lost"
        );
    }
    for id in &acked.running {
        let r = admin.get(&format!("/api/v1/sessions/{id}")).await;
        ok(&r, "session");
        assert_eq!(
            r.data()["state"],
            listed[id],
            "round {round}: {id}'s record and listing disagree"
        );
        assert_ne!(
            r.data()["state"],
            "QUEUED",
            "round {round}: {id} acknowledged as started"
        );
    }
    // Output: contiguous seqs from 1, every acknowledged chunk at its seq.
    for (id, chunks) in &acked.output {
        let r = admin
            .get(&format!("/api/v1/sessions/{id}/output?limit=1000"))
            .await;
        ok(&r, "output");
        let stored: Vec<(u64, String)> = r.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["seq"].as_u64().unwrap(),
                    c["data"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (i, (seq, _)) in stored.iter().enumerate() {
            assert_eq!(
                *seq,
                i as u64 + 1,
                "round {round}: {id}'s output seqs have a gap"
            );
        }
        for chunk in chunks {
            assert!(
                stored.contains(chunk),
                "round {round}: {id} lost acknowledged output {chunk:?}"
            );
        }
    }
    // Approvals: none both pending and resolved; acknowledged ones kept, resolutions too.
    let sessions: HashSet<&String> = acked.approvals.iter().map(|(s, _)| s).collect();
    for id in sessions {
        let r = admin.get(&format!("/api/v1/sessions/{id}/approvals")).await;
        ok(&r, "approvals");
        let ids = |key: &str| -> HashSet<String> {
            r.data()[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["approvalId"].as_str().unwrap().to_string())
                .collect()
        };
        let (pending, resolved) = (ids("pending"), ids("resolved"));
        assert!(
            pending.is_disjoint(&resolved),
            "round {round}: {id} has an approval both pending and resolved"
        );
        for (s, a) in &acked.approvals {
            if s == id {
                assert!(
                    pending.contains(a) || resolved.contains(a),
                    "round {round}: approval {a} lost"
                );
            }
        }
        for (s, a) in &acked.resolved {
            if s == id {
                assert!(
                    resolved.contains(a),
                    "round {round}: resolution of {a} lost"
                );
            }
        }
    }
    // At most one active rollout per channel; acknowledged rollouts kept.
    let r = admin.get("/api/v1/rollouts").await;
    ok(&r, "rollouts");
    let all = r.data().as_array().unwrap().clone();
    let active = all
        .iter()
        .filter(|r| {
            r["channel"] == "stable"
                && [
                    "pending",
                    "canary_testing",
                    "canary_passed",
                    "rolling_out",
                    "paused",
                ]
                .contains(&r["state"].as_str().unwrap())
        })
        .count();
    assert!(
        active <= 1,
        "round {round}: {active} active rollouts on one channel"
    );
    let stored: HashSet<String> = all
        .iter()
        .map(|r| r["rolloutId"].as_str().unwrap().to_string())
        .collect();
    assert!(
        acked.rollouts.is_subset(&stored),
        "round {round}: an acknowledged rollout was lost"
    );
}

/// Mixed load and `kill -9` at random moments, 20 times on one data dir: after every restart,
/// everything acknowledged is there and the invariants hold.
#[tokio::test]
async fn a_crash_loop_under_mixed_load_loses_nothing_and_breaks_no_invariant() {
    use rand::{Rng, SeedableRng};
    let (_keep, dir) = tmp_dir();
    let env = [
        ("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "1000000"),
        ("VILLAGE_LIMITS_PER_TOKEN_PER_MINUTE", "0"),
        ("VILLAGE_LIMITS_PER_IP_PER_MINUTE", "0"),
        ("VILLAGE_LIMITS_RUNNER_REPORTS_PER_MINUTE", "0"),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let acked: Arc<Mutex<Acknowledged>> = Arc::default();
    for round in 0..20 {
        let mut server = BinaryServer::spawn(&dir, &env);
        let admin = server.admin();
        // (Sessions left queued by the last round are started by this one's drivers.)
        let snapshot = acked.lock().unwrap().clone();
        check_invariants(&admin, &snapshot, round).await;
        let load = tokio::spawn(mixed_load(admin.clone(), round, acked.clone()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        server.kill9();
        if let Err(e) = load.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let server = BinaryServer::spawn(&dir, &env);
    let snapshot = acked.lock().unwrap().clone();
    eprintln!(
        "crash loop: {} sessions, {} started, {} with output, {} approvals ({} resolved), {} rollouts acknowledged",
        snapshot.sessions.len(),
        snapshot.running.len(),
        snapshot.output.len(),
        snapshot.approvals.len(),
        snapshot.resolved.len(),
        snapshot.rollouts.len()
    );
    assert!(
        snapshot.sessions.len() > 200
            && snapshot.resolved.len() > 20
            && snapshot.rollouts.len() > 10,
        "too little load to prove anything"
    );
    check_invariants(&server.admin(), &snapshot, 20).await;
}

/// The server allocates with jemalloc and runs its background threads, which give freed memory
/// back to the system while the server runs (so a steady load stays flat and an idle server
/// shrinks). jemalloc reads its configuration only at start, so the server re-executes itself
/// once with `_RJEM_MALLOC_CONF=background_thread:true` (same pid); jemalloc names the threads
/// `jemalloc_bg_thd`. An operator's own configuration is kept as given.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_server_gives_freed_memory_back_with_jemalloc_background_threads() {
    let thread_names = |pid: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|name| name.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let jemalloc_conf = |pid: u32| {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        raw.split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .filter(|v| v.starts_with("_RJEM_MALLOC_CONF="))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[]);
    // Still the child the test started (the same pid), serving.
    assert_eq!(server.admin().get("/api/v1/me").await.status, 200);
    let pid = server.child.id();
    assert_eq!(
        jemalloc_conf(pid),
        ["_RJEM_MALLOC_CONF=background_thread:true"]
    );
    common::eventually(10, || async {
        thread_names(pid)
            .iter()
            .any(|n| n == "jemalloc_bg_thd")
            .then_some(())
    })
    .await;
    drop(server);
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000")]);
    assert_eq!(server.admin().get("/api/v1/me").await.status, 200);
    assert_eq!(
        jemalloc_conf(server.child.id()),
        ["_RJEM_MALLOC_CONF=dirty_decay_ms:1000"]
    );
}

/// SIGTERM on the real binary: a request already being read is finished and answered, the
/// dashboard socket is closed with 1001, what was acknowledged is on disk at the next start,
/// and the process exits 0 well within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_closes_sockets_1001_and_exits_0() {
    use std::io::{Read, Write};
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    let admin = server.admin();
    let mut dashboard = common::runner::Channel::open(&admin, "/api/v1/ws").await;
    assert_eq!(dashboard.expect("event").await["event"], "connected");
    assert_eq!(dashboard.expect("event").await["event"], "authenticated");

    // A create whose body is half sent when the signal comes.
    let body = json!({"orgId": "acme", "providerId": "claude_code",
                      "repo": {"url": "https://github.com/acme/app.git"}, "task": "in flight"})
    .to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        tcp,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: village\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        server.admin_token,
        body.len()
    )
    .unwrap();
    tcp.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let signalled = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(dashboard.close_code_within(5_000).await, Some(1001));
    std::thread::sleep(Duration::from_millis(200));
    tcp.write_all(rest.as_bytes()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let id = answer
        .split("\"sessionId\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();

    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(std::net::TcpStream::connect(server.addr).is_err());

    let again = BinaryServer::spawn(&dir, &[]);
    assert_eq!(again.admin().session(&id).await["task"], "in flight");
}

/// Whether opening the database file needs redb's repair pass (an unclean close).
fn needs_repair(db: &std::path::Path) -> bool {
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repaired.clone();
    let mut builder = redb::Builder::new();
    builder.set_repair_callback(move |_| seen.store(true, std::sync::atomic::Ordering::SeqCst));
    drop(builder.open(db).unwrap());
    repaired.load(std::sync::atomic::Ordering::SeqCst)
}

/// A stopped server leaves its database closed: the next start opens it without a repair pass
/// (whose time grows with the file). A killed one leaves it to be repaired.
#[tokio::test]
async fn a_stopped_server_closes_its_database_cleanly() {
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    server.admin().create_session("acme").await;
    server.terminate();
    assert!(!needs_repair(&dir.join("village.redb")));

    let mut server = BinaryServer::spawn(&dir, &[]);
    server.admin().create_session("acme").await;
    server.kill9();
    assert!(needs_repair(&dir.join("village.redb")));
}
