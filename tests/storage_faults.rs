//! The real binary on a data dir that runs out of space: writes fail with 503 `UNAVAILABLE`
//! (never 500), reads keep working, `/readyz` fails, and once space is freed the server recovers
//! by itself with every acknowledged write present, also after a `kill -9`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BinaryServer, Client};
use serde_json::json;

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk { _dir: dir, path }
    }

    /// Takes every free byte with a filler file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // Leftovers smaller than a block.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn create(admin: &Client, prompt_kib: usize) -> common::Resp {
    admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex",
                   "repo": {"url": "https://github.com/acme/app.git"},
                   "task": "t".repeat(prompt_kib * 1024)}),
        )
        .await
}

async fn readyz(admin: &Client) -> u16 {
    admin.get("/readyz").await.status
}

/// How many sessions acme has, as the listing counts them.
async fn sessions_of_acme(admin: &Client) -> usize {
    let r = admin.get("/api/v1/sessions?orgId=acme&pageSize=1").await;
    r.data()["total"].as_u64().unwrap() as usize
}

fn data_dir(disk: &Path) -> PathBuf {
    disk.join("data")
}

#[tokio::test]
async fn a_full_disk_answers_503_keeps_reads_and_recovers_by_itself() {
    let disk = SmallDisk::mount(24);
    let dir = data_dir(&disk.path);
    let env = [
        ("VILLAGE_SESSIONS_MAX_SESSIONS_PER_ORG", "100000"),
        // The disk is 24 MiB: ready while 2 MiB are free.
        ("VILLAGE_SERVER_MIN_FREE_DISK_MB", "2"),
    ];
    let mut server = BinaryServer::spawn(&dir, &env);
    let admin = server.admin();
    assert_eq!(readyz(&admin).await, 200);

    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let r = create(&admin, 8).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acknowledged.push(r.data()["sessionId"].as_str().unwrap().to_string());
    }
    let filler = disk.fill();

    // Writes until the disk refuses one: every answer is 201 or 503 UNAVAILABLE, never 500.
    let mut refused = 0;
    for _ in 0..200 {
        let r = create(&admin, 32).await;
        match r.status {
            201 => acknowledged.push(r.data()["sessionId"].as_str().unwrap().to_string()),
            _ => {
                r.expect_error(503, "UNAVAILABLE");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 3, "the full disk never refused a write");
    assert_eq!(readyz(&admin).await, 503, "/readyz passed on a full disk");
    let metrics = admin.get("/metrics").await.text;
    assert!(metrics.contains("village_store_failing 1"), "{metrics}");
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("village_store_commit_failures_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(failures.is_some_and(|n| n >= 3), "{metrics}");

    // Reads keep working meanwhile.
    for id in &acknowledged {
        let r = admin.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(r.status, 200, "{id}: {}\n{}", r.text, server.log());
    }
    let list = admin.get("/api/v1/sessions?orgId=acme&pageSize=1").await;
    assert_eq!(list.status, 200, "{}", list.text);

    // Space comes back: the server recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let recovered = common::eventually(30, || async {
        let r = create(&admin, 8).await;
        (r.status == 201).then_some(r)
    })
    .await;
    acknowledged.push(recovered.data()["sessionId"].as_str().unwrap().to_string());
    assert_eq!(readyz(&admin).await, 200);
    let metrics = admin.get("/metrics").await.text;
    assert!(metrics.contains("village_store_failing 0"), "{metrics}");
    assert!(
        server.log().contains("the database was reopened"),
        "{}",
        server.log()
    );

    // Every acknowledged write is there, also after a crash and a restart.
    assert_eq!(sessions_of_acme(&admin).await, acknowledged.len());
    server.kill9();
    let server = BinaryServer::spawn(&dir, &env);
    let admin = server.admin();
    for id in &acknowledged {
        let r = admin.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(r.status, 200, "{id} lost after the restart: {}", r.text);
    }
    assert_eq!(sessions_of_acme(&admin).await, acknowledged.len());
}
