//! A minimal WebDriver client (the W3C protocol: HTTP + JSON) for the dashboard's browser
//! tests. It starts `/usr/bin/chromedriver` as a child process (killed on drop) and drives
//! Debian's headless Chromium with a fresh profile. Missing browsers fail the test loudly:
//! `scripts/test.sh` installs them.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser log entry (`goog:loggingPrefs`).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

/// chromedriver and every browser process it started, running until dropped. chromedriver is
/// started as the leader of a process group of its own, which Chromium and its helpers join;
/// dropping the guard (also while a failing test unwinds) kills the whole group, so a failed
/// test leaves no browser behind.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WebDriver errors that mean "the page changed under the command": finding the element again
/// and repeating the action is the right answer.
fn is_transient(error: &Value) -> bool {
    matches!(
        error["error"].as_str(),
        Some(
            "stale element reference"
                | "no such element"
                | "element click intercepted"
                | "element not interactable"
        )
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP exchange with chromedriver; `Err` when it cannot be reached.
async fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(payload)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

/// A headless Chromium session.
pub struct Browser {
    driver: Driver,
    session: String,
    _profile: tempfile::TempDir,
    /// Log entries read so far (chromedriver hands each out once).
    log: Vec<LogEntry>,
}

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a browser whose window is `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the dashboard tests need Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; scripts/test.sh installs them)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = call(port, "GET", "/status", None).await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--force-device-scale-factor=1".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = call(port, "POST", "/session", Some(&caps)).await.unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        Browser {
            driver,
            session,
            _profile: profile,
            log: Vec::new(),
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let v = call(self.driver.port, method, &path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if v["value"]["error"].is_string() {
            panic!(
                "{method} {path}: {} — {}",
                v["value"]["error"], v["value"]["message"]
            );
        }
        v["value"].clone()
    }

    /// Like `cmd`, but a WebDriver error is returned, not raised.
    async fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let path = format!("/session/{}{path}", self.session);
        let v = call(self.driver.port, method, &path, body.as_ref())
            .await
            .map_err(|e| json!(e))?;
        if v["value"]["error"].is_string() {
            Err(v["value"].clone())
        } else {
            Ok(v["value"].clone())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    pub async fn find(&self, css: &str) -> Option<Element> {
        self.try_cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .ok()
        .and_then(|v| v[ELEMENT_KEY].as_str().map(|id| Element(id.to_string())))
    }

    /// Waits up to `secs` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, secs: u64) -> Element {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if Instant::now() > deadline {
                let text = self.page_text().await;
                panic!("no `{css}` after {secs} s; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `script` (which returns something truthy when done) for up to `secs`; returns its
    /// value. `what` names the condition in the failure message.
    pub async fn wait_until(&self, what: &str, script: &str, args: Value, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.exec(script, args.clone()).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.page_text().await;
                panic!("{what}: not true after {secs} s; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for the page's text under `css` to contain `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str, secs: u64) {
        self.wait_until(
            &format!("`{css}` shows “{needle}”"),
            "const el = document.querySelector(arguments[0]); \
             return !!el && el.textContent.includes(arguments[1]);",
            json!([css, needle]),
            secs,
        )
        .await;
    }

    /// Waits until the app has rendered the page `view` with its data.
    pub async fn wait_ready(&self, view: &str) {
        self.wait_for(&format!("main[data-ready=\"{view}\"]"), 10)
            .await;
    }

    pub async fn page_text(&self) -> String {
        self.try_cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// Finds the element matching `css` and runs one element command on it (`method`
    /// `/element/{id}{action}`). The page re-renders under live updates, so an element found a
    /// moment ago may be gone or covered when the command reaches it: the element is found
    /// again and the command repeated for up to 5 s.
    async fn act(&self, css: &str, method: &str, action: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = self.wait_for(css, 5).await;
            let path = format!("/element/{}{action}", e.0);
            match self.try_cmd(method, &path, body.clone()).await {
                Ok(v) => return v,
                Err(err) if is_transient(&err) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(err) => panic!("{method} {action} on `{css}`: {err}"),
            }
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.act(css, "GET", "/text", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn click(&self, css: &str) {
        self.act(css, "POST", "/click", Some(json!({}))).await;
    }

    /// Types into the element (WebDriver key codes allowed, e.g. `\u{E007}` for Enter).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.act(css, "POST", "/value", Some(json!({"text": text})))
            .await;
    }

    /// Presses keys on whatever has the focus (WebDriver actions), e.g. in a terminal whose
    /// input element is not "interactable" for element commands.
    pub async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let key = c.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.cmd(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    pub async fn clear(&self, css: &str) {
        self.act(css, "POST", "/clear", Some(json!({}))).await;
    }

    /// Replaces the value of an input.
    pub async fn fill(&self, css: &str, text: &str) {
        self.clear(css).await;
        self.type_into(css, text).await;
    }

    /// Saves a PNG of the viewport as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Every browser log entry so far.
    pub async fn logs(&mut self) -> Vec<LogEntry> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        for e in v.as_array().cloned().unwrap_or_default() {
            self.log.push(LogEntry {
                level: e["level"].as_str().unwrap_or("").to_string(),
                source: e["source"].as_str().unwrap_or("").to_string(),
                message: e["message"].as_str().unwrap_or("").to_string(),
            });
        }
        self.log.clone()
    }

    /// Fails on any error in the browser console: script errors, `console.error`, CSP
    /// violations, failed asset loads. The only exceptions are API answers the test asked for
    /// on purpose (Chromium logs every non-2xx `fetch` as an error): `expected` lists them as
    /// (path, status), e.g. `("/api/v1/me", 401)`.
    pub async fn assert_no_console_errors(&mut self, expected: &[(&str, u16)]) {
        let errors: Vec<LogEntry> = self
            .logs()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .filter(|e| {
                !(e.source == "network"
                    && expected.iter().any(|(path, status)| {
                        e.message.contains(&format!("{path} - "))
                            && e.message.contains(&format!("status of {status}"))
                    }))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "console errors:\n{}",
            errors
                .iter()
                .map(|e| format!("[{}] {}", e.source, e.message))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    pub async fn quit(self) {
        let _ = self.try_cmd("DELETE", "", None).await;
    }
}

/// Standard base64 (screenshots come as base64 PNG).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
