//! `village runner` as a real child process, a file:// git repository for its sessions, and
//! ways to look at the processes of a session.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::Client;

/// A small git repository with one commit on `main`, as a file:// URL.
pub fn git_repo(dir: &Path) -> String {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "--quiet", "-b", "main"]);
    std::fs::write(
        repo.join("README.md"),
        "# demo\n\nA repository for tests.\n",
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "first"]);
    format!("file://{}", repo.display())
}

pub struct RunnerProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl RunnerProcess {
    /// `village runner` against `server` with a join token and the given extra arguments.
    pub fn spawn(server: &str, join_token: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(server, join_token, data_dir, extra, &[])
    }

    /// Like `spawn`, with more environment for the runner (which its agents inherit).
    pub fn spawn_with_env(
        server: &str,
        join_token: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_village"));
        cmd.args([
            "runner",
            "--server",
            server,
            "--join-token",
            join_token,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--hostname", "test-runner", "--stop-grace", "3"])
        .args(extra)
        .env("VILLAGE_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<String>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self {
            child,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn runner_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join("identity.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["runnerId"].as_str().map(str::to_owned)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    /// Waits until the runner's channel is connected (the server lists it online).
    pub async fn wait_online(&self, admin: &Client) -> String {
        super::eventually(30, || async {
            let id = self.runner_id()?;
            let r = admin.get(&format!("/api/v1/runners/{id}")).await;
            (r.status == 200
                && r.data()["status"] == "online"
                && self.log().contains("runner channel connected"))
            .then_some(id)
        })
        .await
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Pids of the live processes that carry this session's id in their environment (the guard,
/// the agent and everything it started).
pub fn session_pids(session: &str) -> Vec<u32> {
    let needle = format!("VILLAGE_SESSION_ID={session}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| process_state(&s) != Some('Z'))
            .unwrap_or(false);
        if alive && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The state letter of a /proc/PID/stat line (R, S, T, Z …).
pub fn process_state(stat: &str) -> Option<char> {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .and_then(|s| s.chars().next())
}

pub fn state_of(pid: u32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| process_state(&s))
}

/// A session for `provider` on `repo` with `task`.
pub async fn create(
    client: &Client,
    provider: &str,
    repo: &str,
    task: &str,
    options: Value,
) -> String {
    let r = client
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": provider, "repo": {"url": repo}, "task": task, "options": options}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data()["sessionId"].as_str().unwrap().to_string()
}

/// Waits for the session to reach `state`; returns its detail.
pub async fn wait_state(client: &Client, id: &str, state: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = client.session(id).await;
        if s["state"] == state {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} did not reach {state} in {secs}s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// All stored output of a session, concatenated.
pub async fn output(client: &Client, id: &str) -> String {
    let mut text = String::new();
    let mut after = 0;
    loop {
        let r = client
            .get(&format!(
                "/api/v1/sessions/{id}/output?afterSeq={after}&limit=1000"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let items = r.data()["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return text;
        }
        for i in &items {
            text.push_str(i["data"].as_str().unwrap());
            after = i["seq"].as_u64().unwrap();
        }
    }
}

/// The first pending approval of a session, waiting for it.
pub async fn pending_approval(client: &Client, id: &str, secs: u64) -> Value {
    super::eventually(secs, || async {
        let r = client
            .get(&format!("/api/v1/sessions/{id}/approvals"))
            .await;
        r.data()["pending"]
            .as_array()
            .and_then(|p| p.first().cloned())
    })
    .await
}
