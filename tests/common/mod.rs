//! Test harness: the real server, in-process on 127.0.0.1:0 (with a controllable clock) or as
//! the real binary, and a small HTTP client speaking to it over TCP.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use village::app::App;
use village::clock::{Clock, ManualClock, RandomIds, SharedClock, SystemClock};
use village::config::Config;

pub mod agent_runner;
pub mod live_runner;
pub mod receiver;
pub mod runner;

pub const START_MS: i64 = 1_795_000_000_000;

/// An HTTP answer, its body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// `data` of a success envelope; panics with the body otherwise.
    pub fn data(&self) -> &Value {
        assert_eq!(
            self.json["success"],
            json!(true),
            "not a success: {}",
            self.text
        );
        &self.json["data"]
    }

    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts an error envelope with this status and code.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "status of {}", self.text);
        assert_eq!(self.json["success"], json!(false), "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        assert!(self.json["meta"]["requestId"].is_string(), "{}", self.text);
        self
    }

    pub fn issue_paths(&self) -> Vec<String> {
        self.json["error"]["details"]["issues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["path"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Self {
        Self {
            addr,
            token: token.map(str::to_owned),
        }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self::new(self.addr, Some(token))
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, &[], Vec::new()).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, &[], Vec::new()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.raw(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// A POST with no body and no Content-Type.
    pub async fn post_empty(&self, path: &str) -> Resp {
        self.raw("POST", path, &[], Vec::new()).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.raw(
            "PUT",
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }

    // ---- domain shortcuts ------------------------------------------------------------

    pub async fn create_session(&self, org: &str) -> Value {
        let r = self
            .post(
                "/api/v1/sessions",
                json!({"orgId": org, "providerId": "claude_code",
                       "repo": {"url": "https://github.com/acme/app.git"}, "task": "fix the flaky test"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.data().clone()
    }

    pub async fn create_token(&self, kind: &str, org: Option<&str>) -> String {
        let mut body = json!({"kind": kind, "name": format!("{kind} token")});
        if let Some(org) = org {
            body["orgId"] = json!(org);
        }
        let r = self.post("/api/v1/tokens", body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.data()["token"].as_str().unwrap().to_string()
    }

    /// Moves a QUEUED session to RUNNING acting as its runner (admin).
    pub async fn start_session(&self, id: &str) -> Value {
        self.set_state(id, "RUNNING").await
    }

    pub async fn session(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.data().clone()
    }

    /// Moves a session to `state` acting as its runner (admin).
    pub async fn set_state(&self, id: &str, state: &str) -> Value {
        let path = format!("/api/v1/sessions/{id}/state");
        let r = self.post_expect(&path, json!({"state": state}), 200).await;
        r.data().clone()
    }

    /// Adds `data` to a session's `stream` (`stdout` or `stderr`) acting as its runner (admin).
    pub async fn output(&self, id: &str, stream: &str, data: &str) {
        let path = format!("/api/v1/sessions/{id}/output");
        let body = json!({"stream": stream, "data": data});
        self.post_expect(&path, body, 200).await;
    }

    /// Asks for an approval in a session acting as its runner (admin); the approval's id.
    pub async fn ask_approval(&self, id: &str, action: &str, description: &str) -> String {
        let path = format!("/api/v1/sessions/{id}/approvals");
        let body = json!({"action": action, "description": description});
        let r = self.post_expect(&path, body, 201).await;
        r.data()["approvalId"].as_str().unwrap().to_string()
    }

    /// Answers an approval of a session: `answer` holds `decision` and maybe `reason`.
    pub async fn resolve_approval(&self, id: &str, approval: &str, answer: Value) {
        let path = format!("/api/v1/sessions/{id}/approvals/{approval}/resolve");
        self.post_expect(&path, answer, 200).await;
    }

    /// A POST that must answer `status`; panics with the body otherwise.
    pub async fn post_expect(&self, path: &str, body: Value, status: u16) -> Resp {
        let r = self.post(path, body).await;
        assert_eq!(r.status, status, "{}", r.text);
        r
    }
}

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub clock: Option<Arc<ManualClock>>,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts with a manual clock and the given TOML (on top of the defaults).
    pub async fn start(toml: &str) -> Self {
        Self::start_with(toml, true).await
    }

    pub async fn start_with(toml: &str, manual_clock: bool) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        // Tests drive whole fleets from one address and one admin token: rate limits are off
        // unless a test sets them (the tests of the limits do).
        config.limits.per_ip_per_minute = 0;
        config.limits.per_token_per_minute = 0;
        config.limits.runner_reports_per_minute = 0;
        config.apply_toml(toml).unwrap();
        config.server.data_dir = data_dir.path().to_path_buf();
        let manual = manual_clock.then(|| ManualClock::new(START_MS));
        let clock: SharedClock = match &manual {
            Some(m) => m.clone(),
            None => Arc::new(SystemClock),
        };
        let app = App::start(config, clock, Arc::new(RandomIds))
            .await
            .unwrap();
        let admin_token = app.bootstrap_token.clone().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.serve(listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_token,
            clock: manual,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn admin(&self) -> Client {
        Client::new(self.addr, Some(&self.admin_token))
    }

    pub fn anonymous(&self) -> Client {
        Client::new(self.addr, None)
    }

    pub fn advance(&self, ms: i64) {
        self.clock.as_ref().expect("manual clock").advance_ms(ms);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.as_ref().map(|c| c.now_ms()).unwrap_or(0)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `village` binary, started on 127.0.0.1:0.
pub struct BinaryServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_token: String,
    stdout: Arc<std::sync::Mutex<String>>,
    log: Arc<std::sync::Mutex<String>>,
}

impl BinaryServer {
    pub fn spawn(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_at(data_dir, "127.0.0.1:0", env)
    }

    /// Like `spawn`, on a chosen address (a restart on the same port keeps clients' URLs).
    pub fn spawn_at(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_village"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("VILLAGE_LOG", "info")
            .env("NO_COLOR", "1")
            // As for `TestServer`: no rate limits unless the test sets them.
            .env("VILLAGE_LIMITS_PER_IP_PER_MINUTE", "0")
            .env("VILLAGE_LIMITS_PER_TOKEN_PER_MINUTE", "0")
            .env("VILLAGE_LIMITS_RUNNER_REPORTS_PER_MINUTE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let log: Arc<std::sync::Mutex<String>> = Arc::default();
        let log_sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log_sink.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    // Text or JSON logs: the address ends at a space or a quote.
                    let rest = strip_ansi(rest);
                    let addr = rest
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let _ = tx.send(addr);
                }
            }
        });
        let captured: Arc<std::sync::Mutex<String>> = Arc::default();
        let sink = captured.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not start");
        let admin_token = std::fs::read_to_string(data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child,
            addr,
            admin_token,
            stdout: captured,
            log,
        }
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// What the process logged on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn admin(&self) -> Client {
        Client::new(self.addr, Some(&self.admin_token))
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `content-length` of an HTTP/1.1 message head, if it names one.
pub fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

pub fn tmp_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}
