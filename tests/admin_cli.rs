//! The operator's commands, as the real binary runs them: `village token`, `backup`, `restore`,
//! `check-config` and `status`, against a real server and its data dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{BinaryServer, Client, tmp_dir};
use serde_json::{Value, json};

/// Runs `village ARGS` to its end (on the blocking pool: it may call the test's server).
async fn village(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_village"))
            .args(&args)
            .env_remove("VILLAGE_SERVER")
            .env_remove("VILLAGE_TOKEN")
            .env_remove("VILLAGE_SERVER_DATA_DIR")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `village ARGS --server URL --data-dir DIR`: a command through the test's running server.
async fn village_via(url: &str, data_dir: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--server", url, "--data-dir", data_dir]);
    village(&all).await
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn url(server: &BinaryServer) -> String {
    format!("http://{}", server.addr)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn tokens_are_managed_through_a_running_server_and_on_a_stopped_data_dir() {
    let (_keep, dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    let (url, d) = (url(&server), path_str(&dir).to_owned());

    // Through the server, with the admin token read from the data dir's file.
    let created = village_via(
        &url,
        &d,
        &[
            "token", "create", "--kind", "org", "--name", "ci", "--org-id", "acme",
        ],
    )
    .await;
    assert!(created.status.success(), "{}", err(&created));
    let secret = out(&created).trim().to_owned();
    assert!(secret.starts_with("vlg_"), "{secret:?}");
    let ci = Client::new(server.addr, Some(&secret));
    let me = ci.get("/api/v1/me").await;
    assert_eq!(
        (me.data()["kind"].clone(), me.data()["orgId"].clone()),
        (json!("org"), json!("acme"))
    );

    let listed = village_via(&url, &d, &["token", "list", "--json"]).await;
    assert!(listed.status.success(), "{}", err(&listed));
    let items: Value = serde_json::from_str(&out(&listed)).unwrap();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        items.iter().all(|t| t.get("token").is_none()),
        "a secret was listed"
    );
    assert!(!out(&listed).contains(&secret));
    let ci_id = items.iter().find(|t| t["name"] == "ci").unwrap()["tokenId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The table has the same tokens.
    let table = village_via(&url, &d, &["token", "list"]).await;
    assert!(
        out(&table).contains(&ci_id) && out(&table).contains("bootstrap-admin"),
        "{}",
        out(&table)
    );

    // Bad input: the server's validation error, nothing created.
    let bad = village_via(
        &url,
        &d,
        &["token", "create", "--kind", "org", "--name", "x"],
    )
    .await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        err(&bad).contains("VALIDATION_ERROR") && err(&bad).contains("orgId"),
        "{}",
        err(&bad)
    );
    let unknown = village_via(
        &url,
        &d,
        &["token", "revoke", "0196a0b2-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        err(&unknown).contains("TOKEN_NOT_FOUND"),
        "{}",
        err(&unknown)
    );
    let wrong = village(&["token", "list", "--server", &url, "--token", "vlg_nope"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(err(&wrong).contains("401"), "{}", err(&wrong));

    let revoked = village_via(&url, &d, &["token", "revoke", &ci_id]).await;
    assert!(revoked.status.success(), "{}", err(&revoked));
    assert_eq!(ci.get("/api/v1/me").await.status, 401);

    // The data dir is refused while the server has it open, and nothing is changed.
    let busy = village(&["token", "list", "--data-dir", &d]).await;
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        err(&busy).contains("open in a running server"),
        "{}",
        err(&busy)
    );

    // With the server stopped, on the data dir: a lost admin token is replaced from the shell.
    server.terminate();
    let recovery = village(&[
        "token",
        "create",
        "--kind",
        "admin",
        "--name",
        "recovery",
        "--data-dir",
        &d,
    ])
    .await;
    assert!(recovery.status.success(), "{}", err(&recovery));
    let recovery = out(&recovery).trim().to_owned();
    assert!(recovery.starts_with("vlg_"));
    let offline = village(&["token", "list", "--json", "--data-dir", &d]).await;
    assert!(offline.status.success(), "{}", err(&offline));
    let offline: Value = serde_json::from_str(&out(&offline)).unwrap();
    let revoked_at = offline
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tokenId"] == ci_id.as_str())
        .unwrap()["revokedAt"]
        .clone();
    assert!(revoked_at.is_string(), "{offline}");
    let bad_kind = village(&[
        "token",
        "create",
        "--kind",
        "root",
        "--name",
        "x",
        "--data-dir",
        &d,
    ])
    .await;
    assert_eq!(bad_kind.status.code(), Some(2), "{}", err(&bad_kind));
    let empty = tmp_dir();
    let missing = village(&["token", "list", "--data-dir", path_str(&empty.1)]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(err(&missing).contains("no database"), "{}", err(&missing));
    assert!(
        !empty.1.join("village.redb").exists(),
        "an empty database was created"
    );

    let again = BinaryServer::spawn(&dir, &[]);
    let me = again.admin().with_token(&recovery).get("/api/v1/me").await;
    assert_eq!(me.data()["kind"], "admin");
    let audit = again.admin().get("/api/v1/audit?limit=1000").await;
    let by_shell = audit.data()["items"].as_array().unwrap().iter().any(|e| {
        e["action"] == "token.create"
            && e["actor"]["name"] == "village command on the data dir"
            && e["actor"]["kind"] == "admin"
    });
    assert!(by_shell, "{}", audit.data());
}

/// Creates sessions until `stop`, recording each acknowledged one.
async fn write_until(
    c: Client,
    org: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let r = c
            .post(
                "/api/v1/sessions",
                json!({"orgId": org, "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
            )
            .await;
        if r.status == 201 {
            acked
                .lock()
                .unwrap()
                .push(r.data()["sessionId"].as_str().unwrap().to_owned());
        }
    }
}

#[tokio::test]
async fn a_backup_taken_under_write_load_restores_every_write_acknowledged_before_it() {
    let (_keep, dir) = tmp_dir();
    let (_keep_out, out_dir) = tmp_dir();
    let mut server =
        BinaryServer::spawn(&dir, &[("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "100000")]);
    let (url, d) = (url(&server), path_str(&dir).to_owned());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(write_until(
                server.admin(),
                format!("load-{w}"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    common::eventually(10, || async {
        (acked.lock().unwrap().len() > 200).then_some(())
    })
    .await;

    let backup_file = out_dir.join("village.backup");
    let before: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let backup = village_via(&url, &d, &["backup", "--out", path_str(&backup_file)]).await;
    let during = acked.lock().unwrap().len();
    assert!(backup.status.success(), "{}", err(&backup));
    assert!(
        err(&backup).contains("backup written to"),
        "{}",
        err(&backup)
    );
    // The writers went on while the copy was made and sent.
    common::eventually(10, || async {
        (acked.lock().unwrap().len() > during + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let all: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a backup holds secrets' hashes and output"
        );
    }
    // The server cleaned up its copy after sending it.
    let staged: Vec<_> = std::fs::read_dir(dir.join("backups")).unwrap().collect();
    assert!(staged.is_empty(), "{staged:?}");

    // Refusals change nothing: a live database, an existing database without --force, an
    // existing backup file, a caller who is not admin.
    let restore_forced = [
        "restore",
        "--from",
        path_str(&backup_file),
        "--data-dir",
        &d,
        "--force",
    ];
    let live = village(&restore_forced).await;
    assert_eq!(live.status.code(), Some(1));
    assert!(err(&live).contains("running process"), "{}", err(&live));
    assert_eq!(
        server
            .admin()
            .get("/api/v1/sessions?orgId=load-0&pageSize=1")
            .await
            .status,
        200
    );
    let again = village_via(&url, &d, &["backup", "--out", path_str(&backup_file)]).await;
    assert_eq!(again.status.code(), Some(2), "{}", err(&again));
    let org = server.admin().create_token("org", Some("load-0")).await;
    let forbidden = village(&[
        "backup",
        "--out",
        path_str(&out_dir.join("org.backup")),
        "--server",
        &url,
        "--token",
        &org,
    ])
    .await;
    assert_eq!(forbidden.status.code(), Some(1));
    assert!(err(&forbidden).contains("FORBIDDEN"), "{}", err(&forbidden));
    assert!(!out_dir.join("org.backup").exists() && !out_dir.join("org.backup.partial").exists());
    server.terminate();

    let not_forced = village(&[
        "restore",
        "--from",
        path_str(&backup_file),
        "--data-dir",
        &d,
    ])
    .await;
    assert_eq!(not_forced.status.code(), Some(1));
    assert!(err(&not_forced).contains("--force"), "{}", err(&not_forced));

    // Restored over the stopped server's data dir (the old file is kept beside it).
    let restored = village(&restore_forced).await;
    assert!(restored.status.success(), "{}", err(&restored));
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("village.redb.replaced-")
        })
        .collect();
    assert_eq!(kept.len(), 1);

    let server = BinaryServer::spawn(&dir, &[("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "100000")]);
    let admin = server.admin();
    for id in &before {
        let r = admin.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(
            r.status, 200,
            "session {id}, acknowledged before the backup, is missing"
        );
    }
    // One snapshot: the backup holds a prefix of each writer's sessions, and its indexes agree
    // with its records.
    let mut present = 0;
    for w in 0..4 {
        present += admin
            .get(&format!("/api/v1/sessions?orgId=load-{w}&pageSize=1"))
            .await
            .data()["total"]
            .as_u64()
            .unwrap();
    }
    assert!(
        present >= before.len() as u64,
        "{present} < {}",
        before.len()
    );
    assert!(
        present < all.len() as u64,
        "the backup holds writes made after it"
    );
    eprintln!(
        "backup under load: {} acknowledged before it, {present} in it, {} in all",
        before.len(),
        all.len()
    );
}

#[tokio::test]
async fn a_stopped_data_dir_backs_up_and_restores_into_a_new_one() {
    let (_keep, dir) = tmp_dir();
    let (_keep_new, new_dir) = tmp_dir();
    let mut server = BinaryServer::spawn(&dir, &[]);
    let session = server.admin().create_session("acme").await;
    let id = session["sessionId"].as_str().unwrap().to_owned();
    server.terminate();
    let file = new_dir.join("copy.redb");
    let d = path_str(&dir).to_owned();
    let b = village(&["backup", "--out", path_str(&file), "--data-dir", &d]).await;
    assert!(b.status.success(), "{}", err(&b));
    let target = new_dir.join("data");
    let r = village(&[
        "restore",
        "--from",
        path_str(&file),
        "--data-dir",
        path_str(&target),
    ])
    .await;
    assert!(r.status.success(), "{}", err(&r));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(target.join("village.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The tokens are in the database; the admin-token file is the operator's to keep.
    std::fs::copy(dir.join("admin-token"), target.join("admin-token")).unwrap();
    let restored = BinaryServer::spawn(&target, &[]);
    assert_eq!(
        restored.admin().session(&id).await["sessionId"],
        id.as_str()
    );
    // Not a backup: refused, nothing replaced.
    let junk = new_dir.join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    let other = new_dir.join("other");
    let r = village(&[
        "restore",
        "--from",
        path_str(&junk),
        "--data-dir",
        path_str(&other),
    ])
    .await;
    assert_eq!(r.status.code(), Some(1), "{}", err(&r));
    assert!(!other.join("village.redb").exists());
}

#[tokio::test]
async fn check_config_accepts_the_example_and_names_a_bad_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/village.toml");
    let ok = village(&["check-config", example]).await;
    assert!(ok.status.success(), "{}", err(&ok));
    assert!(out(&ok).contains("OK"), "{}", out(&ok));

    let (_keep, dir) = tmp_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:0\"\nlistenn = \"x\"\n",
    )
    .unwrap();
    let r = village(&["check-config", path_str(&bad)]).await;
    assert_eq!(r.status.code(), Some(2));
    assert!(err(&r).contains("listenn"), "{}", err(&r));
    std::fs::write(&bad, "[sessions]\nmaxSessionsPerOrg = -1\n").unwrap();
    let r = village(&["check-config", path_str(&bad)]).await;
    assert_eq!(r.status.code(), Some(2));
    assert!(err(&r).contains("maxSessionsPerOrg"), "{}", err(&r));
    let r = village(&["check-config", path_str(&dir.join("missing.toml"))]).await;
    assert_eq!(r.status.code(), Some(2));
}

#[tokio::test]
async fn status_reports_a_running_server_and_fails_for_a_missing_one() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[]);
    server.admin().create_session("acme").await;
    let (url, d) = (url(&server), path_str(&dir).to_owned());
    let r = village_via(&url, &d, &["status", "--json"]).await;
    assert!(r.status.success(), "{}", err(&r));
    let status: Value = serde_json::from_str(&out(&r)).unwrap();
    assert_eq!(status["healthy"], true);
    assert_eq!(status["ready"], true);
    assert_eq!(status["fleet"]["online"], 0);
    assert_eq!(status["fleet"]["sessionsByState"]["QUEUED"], 1, "{status}");
    let text = village_via(&url, &d, &["status"]).await;
    assert!(out(&text).contains("ready      yes"), "{}", out(&text));
    assert!(out(&text).contains("QUEUED 1"), "{}", out(&text));

    drop(server);
    let gone = village(&["status", "--server", &url, "--token", "x"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(err(&gone).contains("unreachable"), "{}", err(&gone));
}

/// Opens the data dir's database once no process holds it any more (a stopped server's, or a
/// store this test dropped, whose writer lets go of the file on its own).
async fn store_when_free(dir: &Path) -> village::store::Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match village::store::Store::open(
            &dir.join("village.redb"),
            village::events::EventBus::new(16),
        ) {
            Ok(store) => return store,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "still held: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn compact_gives_free_pages_back_and_refuses_a_live_database() {
    use village::sessions::model::{OutputChunk, OutputStream, SessionState};
    use village::store::StoreError;
    let (_keep, dir) = tmp_dir();
    let d = path_str(&dir).to_owned();
    let mut server = BinaryServer::spawn(&dir, &[]);
    let kept = server.admin().create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    let r = village(&["compact", "--data-dir", &d]).await;
    assert_eq!(r.status.code(), Some(1), "{}", err(&r));
    assert!(err(&r).contains("stop it before compacting"), "{}", err(&r));
    server.terminate();

    // 400 finished sessions with 25 chunks of 4 KiB each (about 40 MiB), then purged.
    let store = store_when_free(&dir).await;
    let template = store
        .read(move |r| r.get_session(kept))
        .await
        .map_err(|e: StoreError| e)
        .unwrap()
        .unwrap();
    let mut doomed = Vec::new();
    for batch in 0..8u128 {
        let mut sessions = Vec::new();
        for n in 0..50u128 {
            let mut s = template.clone();
            s.id = uuid::Uuid::from_u128(0x5e55_0000 + batch * 1000 + n);
            s.state = SessionState::Completed;
            sessions.push(s);
        }
        doomed.extend(sessions.clone());
        store
            .write(move |w| {
                for s in &sessions {
                    w.put_session(s)?;
                    for seq in 1..=25u64 {
                        let chunk = OutputChunk {
                            seq,
                            stream: OutputStream::Stdout,
                            data: "x".repeat(4096),
                            at: 0,
                            offset: (seq - 1) * 4096,
                        };
                        w.put_output(s.id, &chunk)?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }
    store
        .write(move |w| {
            for s in &doomed {
                w.delete_session(s)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    drop(store);
    // Its writer lets go of the file on its own, a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Err(e) = redb::Database::open(dir.join("village.redb")) {
        assert!(std::time::Instant::now() < deadline, "still held: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let size = || std::fs::metadata(dir.join("village.redb")).unwrap().len();
    let before = size();
    assert!(before > 30 << 20, "{before}");
    let r = village(&["compact", "--data-dir", &d]).await;
    assert!(r.status.success(), "{}", err(&r));
    let after = size();
    assert!(after < before / 4, "{before} -> {after}");

    // The server starts on the compacted file with what it held.
    let server = BinaryServer::spawn(&dir, &[]);
    assert_eq!(
        server.admin().session(&kept.to_string()).await["sessionId"],
        kept.to_string().as_str()
    );
    // A missing database is named, not created.
    let (_none, empty) = tmp_dir();
    let r = village(&["compact", "--data-dir", path_str(&empty)]).await;
    assert_eq!(r.status.code(), Some(2), "{}", err(&r));
    assert!(!empty.join("village.redb").exists());
}

/// The example configuration shows every key docs/api.md documents, under its section (set,
/// or in a comment where it has no default value), and nothing the docs do not know; old names
/// still read are left out of both.
#[test]
fn the_example_configuration_shows_every_documented_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let documented: HashSet<(String, String)> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `["))
        // Old names still read, which the example mentions only in passing.
        .filter(|l| !l.contains("The old name of"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_owned()))
        .filter_map(|k| {
            let (section, key) = k.split_once("] ")?;
            Some((section.to_owned(), key.to_owned()))
        })
        .collect();
    assert!(documented.len() >= 30, "{documented:?}");
    let example = std::fs::read_to_string(root.join("packaging/village.toml")).unwrap();
    let mut shown = HashSet::new();
    let mut section = String::new();
    for line in example.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else {
            // `key = value`, also inside a comment's example ("Example: key = [...]").
            for part in line.split("Example: ") {
                if let Some((key, _)) = part.split_once(" =")
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    shown.insert((section.clone(), key.to_owned()));
                }
            }
        }
    }
    let missing: Vec<_> = documented.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "not in packaging/village.toml: {missing:?}"
    );
    let unknown: Vec<_> = shown.difference(&documented).collect();
    assert!(unknown.is_empty(), "not documented: {unknown:?}");
}
