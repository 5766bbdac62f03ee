//! The REST responses byte for byte: every GET/POST/PUT/DELETE route of sessions, runners,
//! pipeline, tokens, webhooks and audit is called once (or a few times, to cover optional keys)
//! with fixed inputs, and the raw body is compared with a recorded golden file under
//! `tests/golden/wire/`: same keys, same key order, same number formatting, same null-vs-absent.
//!
//! The server runs in-process with a manual clock and sequential ids, so timestamps and the
//! order of records are the same on every run. What still differs per run is replaced by
//! placeholders: ids (`<id-N>`, numbered by first appearance), token secrets (`<secret-N>`), the
//! envelope's `meta.duration`, and the address of the local webhook receiver.
//!
//! `WIRE_GOLDEN=record cargo test --test wire_bytes` writes the golden files afresh.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::runner::{Channel, SimRunner, register};
use common::{Client, Resp, START_MS, eventually};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use village::app::App;
use village::clock::{IdSource, ManualClock, SharedClock};
use village::config::Config;

const REQUEST_ID: &str = "wire-golden";

// ---- an order-preserving JSON tree ------------------------------------------------------------

/// JSON as written: object keys in their written order, strings and numbers as their raw
/// tokens, so that writing the tree back gives the input byte for byte.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
    /// The raw token, quotes and escapes included.
    Str(String),
    /// The raw token (`1`, `1.0`, `1e3`, `null`, `true`, `false`).
    Scalar(String),
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn parse(text: &str) -> Json {
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
        };
        let v = p.value();
        p.ws();
        assert_eq!(p.at, p.s.len(), "trailing bytes in {text}");
        v
    }

    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s[self.at] {
            b'{' => {
                self.at += 1;
                let mut fields = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        let key = self.string();
                        assert!(self.eat(b':'), "expected `:` at {}", self.at);
                        fields.push((key, self.value()));
                        if self.eat(b'}') {
                            break;
                        }
                        assert!(self.eat(b','), "expected `,` at {}", self.at);
                    }
                }
                Json::Object(fields)
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value());
                        if self.eat(b']') {
                            break;
                        }
                        assert!(self.eat(b','), "expected `,` at {}", self.at);
                    }
                }
                Json::Array(items)
            }
            b'"' => Json::Str(self.string()),
            _ => {
                let start = self.at;
                while self.at < self.s.len()
                    && !matches!(self.s[self.at], b',' | b'}' | b']')
                    && !self.s[self.at].is_ascii_whitespace()
                {
                    self.at += 1;
                }
                Json::Scalar(String::from_utf8(self.s[start..self.at].to_vec()).unwrap())
            }
        }
    }

    /// A string token, raw.
    fn string(&mut self) -> String {
        assert_eq!(self.s[self.at], b'"', "expected a string at {}", self.at);
        let start = self.at;
        self.at += 1;
        while self.s[self.at] != b'"' {
            if self.s[self.at] == b'\\' {
                self.at += 1;
            }
            self.at += 1;
        }
        self.at += 1;
        String::from_utf8(self.s[start..self.at].to_vec()).unwrap()
    }
}

impl Json {
    fn compact(&self, out: &mut String) {
        match self {
            Json::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.compact(out);
                }
                out.push('}');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.compact(out);
                }
                out.push(']');
            }
            Json::Str(raw) | Json::Scalar(raw) => out.push_str(raw),
        }
    }

    fn to_compact(&self) -> String {
        let mut out = String::new();
        self.compact(&mut out);
        out
    }

    /// Indented, for a golden file a person can read (and parse back to the same tree).
    fn pretty(&self, indent: usize, out: &mut String) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Json::Object(fields) if !fields.is_empty() => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    let _ = write!(out, "{}{k}: ", pad(indent + 1));
                    v.pretty(indent + 1, out);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}}}", pad(indent));
            }
            Json::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    v.pretty(indent + 1, out);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                let _ = write!(out, "{}]", pad(indent));
            }
            other => other.compact(out),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        let quoted = serde_json::to_string(key).unwrap();
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| *k == quoted).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str_token(s: &str) -> Json {
        Json::Str(serde_json::to_string(s).unwrap())
    }
}

// ---- what differs per run ---------------------------------------------------------------------

/// Placeholders for values that differ per run, numbered by first appearance.
#[derive(Default)]
struct Normaliser {
    ids: HashMap<String, String>,
    secrets: HashMap<String, String>,
    /// Literal substrings of string values, replaced (the receiver's address).
    literals: Vec<(String, String)>,
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

impl Normaliser {
    fn id(&mut self, raw: &str) -> String {
        let n = self.ids.len() + 1;
        self.ids
            .entry(raw.to_owned())
            .or_insert_with(|| format!("<id-{n}>"))
            .clone()
    }

    fn text(&mut self, s: &str) -> String {
        if is_uuid(s) {
            return self.id(s);
        }
        if s.starts_with("vlg_") {
            let n = self.secrets.len() + 1;
            return self
                .secrets
                .entry(s.to_owned())
                .or_insert_with(|| format!("<secret-{n}>"))
                .clone();
        }
        let mut out = s.to_owned();
        for (from, to) in &self.literals {
            out = out.replace(from.as_str(), to);
        }
        out
    }

    fn tree(&mut self, v: &Json) -> Json {
        match v {
            Json::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), self.tree(v)))
                    .collect(),
            ),
            Json::Array(items) => Json::Array(items.iter().map(|v| self.tree(v)).collect()),
            Json::Str(raw) => {
                let s: String = serde_json::from_str(raw).unwrap();
                let n = self.text(&s);
                if n == s {
                    v.clone()
                } else {
                    Json::str_token(&n)
                }
            }
            Json::Scalar(_) => v.clone(),
        }
    }

    /// A whole response body: the tree, with `meta.duration` (wall time) replaced.
    fn body(&mut self, v: &Json) -> Json {
        let mut t = self.tree(v);
        if let Json::Object(fields) = &mut t {
            for (k, v) in fields.iter_mut() {
                if k == "\"meta\""
                    && let Json::Object(meta) = v
                {
                    for (mk, mv) in meta.iter_mut() {
                        if mk == "\"duration\"" {
                            assert!(matches!(mv, Json::Scalar(_)), "duration is a number");
                            *mv = Json::str_token("<duration>");
                        }
                    }
                }
            }
        }
        t
    }

    /// A request path, its ids replaced.
    fn path(&mut self, p: &str) -> String {
        p.split('/')
            .map(|seg| {
                let (head, query) = seg.split_once('?').unwrap_or((seg, ""));
                let head = if is_uuid(head) {
                    self.id(head)
                } else {
                    head.to_owned()
                };
                if query.is_empty() {
                    head
                } else {
                    format!("{head}?{query}")
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

// ---- recording and comparing ------------------------------------------------------------------

struct Exchange {
    name: String,
    method: String,
    path: String,
    status: u16,
    body: Json,
}

/// One area's exchanges, compared with (or recorded into) `tests/golden/wire/<area>.json`.
struct Golden {
    area: &'static str,
    norm: Normaliser,
    seen: Vec<Exchange>,
}

impl Golden {
    fn new(area: &'static str) -> Self {
        Self {
            area,
            norm: Normaliser::default(),
            seen: Vec::new(),
        }
    }

    /// Keeps one response (normalised) and hands back its parsed JSON for the scenario.
    fn keep(&mut self, name: &str, method: &str, path: &str, r: &Resp) -> Value {
        let tree = Parser::parse(&r.text);
        assert_eq!(
            tree.to_compact(),
            r.text,
            "the order-preserving reader must give the body back byte for byte"
        );
        assert_eq!(
            r.json["meta"]["requestId"], REQUEST_ID,
            "{name}: {}",
            r.text
        );
        let path = self.norm.path(path);
        let body = self.norm.body(&tree);
        self.seen.push(Exchange {
            name: name.to_owned(),
            method: method.to_owned(),
            path,
            status: r.status,
            body,
        });
        r.json["data"].clone()
    }

    fn file(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/wire")
            .join(format!("{}.json", self.area))
    }

    fn render(&self) -> String {
        let mut out = String::from("[\n");
        for (i, e) in self.seen.iter().enumerate() {
            let head = Json::Object(vec![
                ("\"name\"".into(), Json::str_token(&e.name)),
                (
                    "\"request\"".into(),
                    Json::str_token(&format!("{} {}", e.method, e.path)),
                ),
                ("\"status\"".into(), Json::Scalar(e.status.to_string())),
                ("\"body\"".into(), e.body.clone()),
            ]);
            out.push_str("  ");
            head.pretty(1, &mut out);
            out.push_str(if i + 1 < self.seen.len() { ",\n" } else { "\n" });
        }
        out.push_str("]\n");
        out
    }

    /// Records the golden file (`WIRE_GOLDEN=record`) or compares every exchange with it.
    fn finish(self) {
        let file = self.file();
        if std::env::var("WIRE_GOLDEN").as_deref() == Ok("record") {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, self.render()).unwrap();
            return;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (record with WIRE_GOLDEN=record cargo test --test wire_bytes)",
                file.display()
            )
        });
        let Json::Array(golden) = Parser::parse(&text) else {
            panic!("{} is not an array", file.display());
        };
        let mut problems = Vec::new();
        for (i, e) in self.seen.iter().enumerate() {
            let Some(g) = golden.get(i) else {
                problems.push(format!("#{i} {}: not in the golden file", e.name));
                continue;
            };
            let field = |k: &str| g.get(k).cloned().unwrap_or(Json::Scalar("<absent>".into()));
            let request = Json::str_token(&format!("{} {}", e.method, e.path));
            if field("name") != Json::str_token(&e.name) || field("request") != request {
                problems.push(format!(
                    "#{i}: golden step is {} {}, this run made {} {}",
                    field("name").to_compact(),
                    field("request").to_compact(),
                    e.name,
                    request.to_compact()
                ));
                continue;
            }
            if field("status") != Json::Scalar(e.status.to_string()) {
                problems.push(format!(
                    "#{i} {}: status {} where the golden file has {}",
                    e.name,
                    e.status,
                    field("status").to_compact()
                ));
            }
            let want = field("body").to_compact();
            let got = e.body.to_compact();
            // Structurally (keys and values, any order) ...
            let want_value: Value = serde_json::from_str(&want).unwrap();
            let got_value: Value = serde_json::from_str(&got).unwrap();
            if want_value != got_value {
                problems.push(format!(
                    "#{i} {}: data differs\n  golden: {want}\n  now:    {got}",
                    e.name
                ));
            } else if want != got {
                // ... and as text: key order and number formatting.
                problems.push(format!(
                    "#{i} {}: same data, different bytes (key order or number format)\n  golden: {want}\n  now:    {got}",
                    e.name
                ));
            }
        }
        if golden.len() > self.seen.len() {
            problems.push(format!(
                "the golden file has {} steps, this run made {}",
                golden.len(),
                self.seen.len()
            ));
        }
        assert!(
            problems.is_empty(),
            "{}: {} difference(s)\n{}",
            file.display(),
            problems.len(),
            problems.join("\n")
        );
    }
}

// ---- a server with sequential ids -------------------------------------------------------------

/// Ids and secrets from a counter: records sort the same way on every run.
#[derive(Default)]
struct SequentialIds(AtomicU64);

impl IdSource for SequentialIds {
    fn uuid(&self) -> uuid::Uuid {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
    fn secret_bytes(&self) -> [u8; 32] {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let mut bytes = [7u8; 32];
        bytes[24..].copy_from_slice(&n.to_be_bytes());
        bytes
    }
}

struct Server {
    addr: SocketAddr,
    admin_token: String,
    clock: Arc<ManualClock>,
    _data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(toml: &str) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.apply_toml(toml).unwrap();
        // The webhook receivers of these tests listen on loopback.
        config.webhooks.allow_private_targets = true;
        config.server.data_dir = data_dir.path().to_path_buf();
        let clock = ManualClock::new(START_MS);
        let shared: SharedClock = clock.clone();
        let app = App::start(config, shared, Arc::new(SequentialIds::default()))
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
            clock,
            _data_dir: data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    fn admin(&self) -> Client {
        Client::new(self.addr, Some(&self.admin_token))
    }

    fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms);
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// Calls a route with the fixed request id and keeps the answer.
async fn call(
    g: &mut Golden,
    c: &Client,
    name: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut headers = vec![("x-request-id", REQUEST_ID)];
    let bytes = match &body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            b.to_string().into_bytes()
        }
        None => Vec::new(),
    };
    let r = c.raw(method, path, &headers, bytes).await;
    assert!(r.status < 300, "{name}: {} {}", r.status, r.text);
    g.keep(name, method, path, &r)
}

fn id_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

// ---- the scenarios ----------------------------------------------------------------------------

#[tokio::test]
async fn sessions_wire_bytes() {
    let s = Server::start("[runners]\nrestartGraceMs = 1\n").await;
    let admin = s.admin();
    let g = &mut Golden::new("sessions");
    let full = call(
        g,
        &admin,
        "create (all options)",
        "POST",
        "/api/v1/sessions",
        Some(json!({
            "orgId": "acme", "providerId": "claude_code",
            "repo": {"url": "https://github.com/acme/app.git", "branch": "dev", "commit": "abc123"},
            "task": "Fix the \"flaky\" test\nand the other one, which takes a rather long description to explain fully so that the summary is cut somewhere",
            "options": {"timeoutMinutes": 30, "env": {"B_TOKEN": "x", "A_KEY": "y"},
                        "dangerouslySkipPermissions": true, "requiredFeatures": ["gpu", "docker"]}
        })),
    )
    .await;
    let id = id_of(&full, "sessionId");
    s.advance(1_000);
    let other = call(
        g,
        &admin,
        "create (minimal)",
        "POST",
        "/api/v1/sessions",
        Some(json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "git@github.com:acme/x.git"},
                    "options": {"timeoutMinutes": 1.5}})),
    )
    .await;
    let other_id = id_of(&other, "sessionId");
    call(
        g,
        &admin,
        "list",
        "GET",
        "/api/v1/sessions?orgId=acme",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "list (page 2 of 1)",
        "GET",
        "/api/v1/sessions?orgId=acme&page=2&pageSize=1",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "list (filtered, empty)",
        "GET",
        "/api/v1/sessions?orgId=acme&state=FAILED",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "get",
        "GET",
        &format!("/api/v1/sessions/{id}"),
        None,
    )
    .await;
    s.advance(2_000);
    let base = format!("/api/v1/sessions/{id}");
    call(
        g,
        &admin,
        "state RUNNING",
        "POST",
        &format!("{base}/state"),
        Some(json!({"state": "RUNNING"})),
    )
    .await;
    call(
        g,
        &admin,
        "append output",
        "POST",
        &format!("{base}/output"),
        Some(json!({"stream": "stdout", "data": "hello\n"})),
    )
    .await;
    call(
        g,
        &admin,
        "append output (stderr)",
        "POST",
        &format!("{base}/output"),
        Some(json!({"stream": "stderr", "data": "warn: ü \u{1F600}\n", "offset": 6})),
    )
    .await;
    call(g, &admin, "output", "GET", &format!("{base}/output"), None).await;
    call(
        g,
        &admin,
        "output (window)",
        "GET",
        &format!("{base}/output?afterSeq=1&limit=5"),
        None,
    )
    .await;
    call(
        g,
        &admin,
        "output (past the end)",
        "GET",
        &format!("{base}/output?afterSeq=9"),
        None,
    )
    .await;
    call(
        g,
        &admin,
        "usage",
        "POST",
        &format!("{base}/usage"),
        Some(json!({"tokensIn": 10, "tokensOut": 20, "apiCalls": 3, "computeSeconds": 1.5})),
    )
    .await;
    call(
        g,
        &admin,
        "usage (whole seconds)",
        "POST",
        &format!("{base}/usage"),
        Some(json!({"computeSeconds": 4})),
    )
    .await;
    let a1 = call(
        g,
        &admin,
        "request approval (context)",
        "POST",
        &format!("{base}/approvals"),
        Some(json!({"action": "deploy", "description": "Ship it",
                    "context": {"zeta": 1, "alpha": [1.0, 2.5, "x"], "nested": {"b": null, "a": true}}})),
    )
    .await;
    s.advance(500);
    let a2 = call(
        g,
        &admin,
        "request approval (no context)",
        "POST",
        &format!("{base}/approvals"),
        Some(json!({"action": "merge", "description": "Merge the branch"})),
    )
    .await;
    call(
        g,
        &admin,
        "approvals (pending)",
        "GET",
        &format!("{base}/approvals"),
        None,
    )
    .await;
    call(g, &admin, "get (pending approvals)", "GET", &base, None).await;
    s.advance(700);
    call(
        g,
        &admin,
        "resolve (allow, reason)",
        "POST",
        &format!("{base}/approvals/{}/resolve", id_of(&a1, "approvalId")),
        Some(json!({"decision": "allow", "reason": "looks fine"})),
    )
    .await;
    call(
        g,
        &admin,
        "resolve (deny)",
        "POST",
        &format!("{base}/approvals/{}/resolve", id_of(&a2, "approvalId")),
        Some(json!({"decision": "deny"})),
    )
    .await;
    call(
        g,
        &admin,
        "approvals (resolved)",
        "GET",
        &format!("{base}/approvals"),
        None,
    )
    .await;
    call(g, &admin, "pause", "POST", &format!("{base}/pause"), None).await;
    s.advance(1_000);
    call(g, &admin, "resume", "POST", &format!("{base}/resume"), None).await;
    s.advance(61_250);
    call(
        g,
        &admin,
        "stop",
        "POST",
        &format!("{base}/stop"),
        Some(json!({"reason": "enough"})),
    )
    .await;
    call(g, &admin, "events", "GET", &format!("{base}/events"), None).await;
    call(
        g,
        &admin,
        "events (window)",
        "GET",
        &format!("{base}/events?afterSeq=2&limit=2"),
        None,
    )
    .await;
    let obase = format!("/api/v1/sessions/{other_id}");
    call(
        g,
        &admin,
        "state RUNNING (other)",
        "POST",
        &format!("{obase}/state"),
        Some(json!({"state": "RUNNING"})),
    )
    .await;
    s.advance(3_000);
    call(
        g,
        &admin,
        "state FAILED with error",
        "POST",
        &format!("{obase}/state"),
        Some(json!({"state": "FAILED", "error": "exit code 2"})),
    )
    .await;
    call(
        g,
        &admin,
        "list (ended)",
        "GET",
        "/api/v1/sessions?orgId=acme",
        None,
    )
    .await;
    // An agent's own permission request, allowed for the rest of the session; cost reported.
    let third = call(
        g,
        &admin,
        "create (third)",
        "POST",
        "/api/v1/sessions",
        Some(json!({"orgId": "acme", "providerId": "gemini_cli", "repo": {"url": "https://github.com/acme/y.git"}})),
    )
    .await;
    let tbase = format!("/api/v1/sessions/{}", id_of(&third, "sessionId"));
    call(
        g,
        &admin,
        "state RUNNING (third)",
        "POST",
        &format!("{tbase}/state"),
        Some(json!({"state": "RUNNING"})),
    )
    .await;
    call(
        g,
        &admin,
        "usage (cost)",
        "POST",
        &format!("{tbase}/usage"),
        Some(json!({"tokensIn": 1200, "costUsd": 0.0425})),
    )
    .await;
    let a3 = call(
        g,
        &admin,
        "request approval (command, agent context)",
        "POST",
        &format!("{tbase}/approvals"),
        Some(json!({"action": "command", "description": "Run npm test",
                    "context": {"tool": "shell", "input": {"command": "npm test", "cwd": "/w"},
                                "agent": {"protocol": "acp", "options": [
                                    {"optionId": "allow", "kind": "allow_once"},
                                    {"optionId": "always", "kind": "allow_always"}]}}})),
    )
    .await;
    s.advance(250);
    call(
        g,
        &admin,
        "resolve (allow for the session)",
        "POST",
        &format!("{tbase}/approvals/{}/resolve", id_of(&a3, "approvalId")),
        Some(json!({"decision": "allow", "scope": "session"})),
    )
    .await;
    call(
        g,
        &admin,
        "approvals (resolved, scope)",
        "GET",
        &format!("{tbase}/approvals"),
        None,
    )
    .await;
    call(
        g,
        &admin,
        "events (scope)",
        "GET",
        &format!("{tbase}/events?afterSeq=4"),
        None,
    )
    .await;
    g_finish(g);
    s.stop().await;
}

#[tokio::test]
async fn runners_wire_bytes() {
    let s = Server::start("[runners]\nrestartGraceMs = 1\n").await;
    let admin = s.admin();
    let acme_join = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    let shared_join = admin.with_token(&admin.create_token("runner_join", None).await);
    let g = &mut Golden::new("runners");
    let body = json!({"hostname": "host-a", "capabilities": {"providers": ["codex", "claude_code"],
                      "maxConcurrentSessions": 4, "features": ["gpu"]},
                      "metadata": {"zone": "eu", "os": "linux", "cores": 8, "ratio": 0.5}});
    let reg = call(
        g,
        &acme_join,
        "register (new, org)",
        "POST",
        "/api/v1/runners/register",
        Some(body.clone()),
    )
    .await;
    let a = id_of(&reg["runner"], "runnerId");
    s.advance(1_000);
    let again = call(
        g,
        &acme_join,
        "register (again)",
        "POST",
        "/api/v1/runners/register",
        Some(body),
    )
    .await;
    let a_client = admin.with_token(again["runnerToken"].as_str().unwrap());
    let reg_b = call(
        g,
        &shared_join,
        "register (shared, no metadata)",
        "POST",
        "/api/v1/runners/register",
        Some(json!({"hostname": "host-b", "capabilities": {"providers": ["omnara"]}})),
    )
    .await;
    let b = id_of(&reg_b["runner"], "runnerId");
    s.advance(2_000);
    call(
        g,
        &a_client,
        "heartbeat",
        "POST",
        &format!("/api/v1/runners/{a}/heartbeat"),
        Some(json!({"runnerId": a, "timestamp": "2026-11-25T10:00:00.000Z", "activeSessions": [],
                    "load": {"cpuPercent": 12.5, "memoryPercent": 40, "diskPercent": 70.25},
                    "runtimeVersions": {"codex": "0.9.1", "claude_code": "2.1.0"}, "buildId": "build-1"})),
    )
    .await;
    call(g, &admin, "list", "GET", "/api/v1/runners", None).await;
    call(
        g,
        &admin,
        "list (filtered)",
        "GET",
        "/api/v1/runners?status=online&providerId=omnara&pageSize=1",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "get",
        "GET",
        &format!("/api/v1/runners/{a}"),
        None,
    )
    .await;
    call(
        g,
        &admin,
        "drain",
        "POST",
        &format!("/api/v1/runners/{a}/drain"),
        None,
    )
    .await;
    call(g, &admin, "fleet (draining)", "GET", "/api/v1/fleet", None).await;
    s.advance(500);
    call(
        g,
        &admin,
        "undrain",
        "POST",
        &format!("/api/v1/runners/{a}/undrain"),
        Some(json!({})),
    )
    .await;
    admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
        )
        .await;
    call(g, &admin, "fleet", "GET", "/api/v1/fleet", None).await;
    call(
        g,
        &admin,
        "deregister",
        "DELETE",
        &format!("/api/v1/runners/{b}?force=true"),
        None,
    )
    .await;
    g_finish(g);
    s.stop().await;
}

#[tokio::test]
async fn pipeline_wire_bytes() {
    let s = Server::start(
        "[runners]\nrestartGraceMs = 1\n[pipeline]\nminSessionsForVerdict = 4\nmaxFailureRate = 0.2\n",
    )
    .await;
    let admin = s.admin();
    let g = &mut Golden::new("pipeline");
    call(
        g,
        &admin,
        "register version",
        "POST",
        "/api/v1/providers/codex/versions",
        Some(
            json!({"version": "1.0.0", "releasedAt": "2026-01-02T03:04:05Z",
                    "sourceUrl": "https://example.com/codex/1.0.0"}),
        ),
    )
    .await;
    call(
        g,
        &admin,
        "register version (again)",
        "POST",
        "/api/v1/providers/codex/versions",
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    s.advance(1_000);
    call(
        g,
        &admin,
        "register version (bare)",
        "POST",
        "/api/v1/providers/codex/versions",
        Some(json!({"version": "1.1.0-beta+2"})),
    )
    .await;
    call(
        g,
        &admin,
        "canary",
        "POST",
        "/api/v1/providers/codex/versions/1.0.0/canary",
        Some(json!({"passed": true})),
    )
    .await;
    call(
        g,
        &admin,
        "versions",
        "GET",
        "/api/v1/providers/codex/versions",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "versions (none)",
        "GET",
        "/api/v1/providers/omnara/versions?channel=stable",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "register build (metadata)",
        "POST",
        "/api/v1/builds",
        Some(
            json!({"buildId": "good", "runnerVersion": "1.4.0", "builtAt": "2026-11-20T10:00:00Z",
                    "runtimeVersions": {"codex": "1", "claude_code": "2.1.0"},
                    "metadata": {"commit": "abc", "by": {"name": "ci", "n": 3}}}),
        ),
    )
    .await;
    call(
        g,
        &admin,
        "register build (bare)",
        "POST",
        "/api/v1/builds",
        Some(json!({"buildId": "bad", "runnerVersion": "1.5.0", "builtAt": "2026-11-21T10:00:00.123Z",
                    "runtimeVersions": {"codex": "2"}})),
    )
    .await;
    call(g, &admin, "builds", "GET", "/api/v1/builds", None).await;
    call(
        g,
        &admin,
        "builds (filtered)",
        "GET",
        "/api/v1/builds?status=testing&page=1&pageSize=1",
        None,
    )
    .await;
    call(g, &admin, "build", "GET", "/api/v1/builds/good", None).await;
    call(
        g,
        &admin,
        "build status",
        "POST",
        "/api/v1/builds/good/status",
        Some(json!({"status": "known_good", "recommendation": "recommended"})),
    )
    .await;
    call(
        g,
        &admin,
        "org config (default)",
        "GET",
        "/api/v1/orgs/acme/runtime-config",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "org config (put)",
        "PUT",
        "/api/v1/orgs/pinnedco/runtime-config",
        Some(json!({"channel": "pinned", "pinnedBuildId": "good", "autoUpgrade": false})),
    )
    .await;
    call(
        g,
        &admin,
        "org config (get)",
        "GET",
        "/api/v1/orgs/pinnedco/runtime-config",
        None,
    )
    .await;
    let first = call(
        g,
        &admin,
        "rollout (one stage)",
        "POST",
        "/api/v1/rollouts",
        Some(json!({"buildId": "good", "channel": "stable", "stages": [100]})),
    )
    .await;
    let first = id_of(&first, "rolloutId");
    s.advance(1_000);
    let (old_runner, _) = register(&admin, "old-host", &["codex"], Some(5), &[]).await;
    let (new_runner, _) = register(&admin, "new-host", &["codex"], Some(5), &[]).await;
    let second = call(
        g,
        &admin,
        "rollout (two stages)",
        "POST",
        "/api/v1/rollouts",
        Some(json!({"buildId": "bad", "channel": "stable", "stages": [50, 100]})),
    )
    .await;
    let second = id_of(&second, "rolloutId");
    heartbeat(g, &old_runner, "heartbeat (desired build)", Some("good")).await;
    heartbeat(g, &new_runner, "heartbeat (new build)", Some("bad")).await;
    // The health judge runs on a timer: wait for its verdict on the canary (one runner on the
    // new build, no sessions yet) so that what follows does not depend on its timing.
    wait_rollout(&admin, &second, |d| d["health"]["newBuild"]["runners"] == 1).await;
    call(
        g,
        &admin,
        "rollouts",
        "GET",
        "/api/v1/rollouts?channel=stable",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "rollout",
        "GET",
        &format!("/api/v1/rollouts/{first}"),
        None,
    )
    .await;
    // The new build fails three sessions of four: the canary fails with a verdict.
    let mut ch = new_runner.connect().await;
    run_sessions(&admin, &mut ch, 1, "COMPLETED").await;
    run_sessions(&admin, &mut ch, 3, "FAILED").await;
    wait_rollout(&admin, &second, |d| d["state"] == "canary_failed").await;
    call(
        g,
        &admin,
        "rollout (failed canary)",
        "GET",
        &format!("/api/v1/rollouts/{second}"),
        None,
    )
    .await;
    ch.close().await;
    // Verbs on a fresh rollout.
    call(
        g,
        &admin,
        "register build (third)",
        "POST",
        "/api/v1/builds",
        Some(
            json!({"buildId": "third", "runnerVersion": "1.6.0", "builtAt": "2026-11-22T10:00:00Z",
                    "runtimeVersions": {"codex": "3"}}),
        ),
    )
    .await;
    let third = call(
        g,
        &admin,
        "rollout (not started)",
        "POST",
        "/api/v1/rollouts",
        Some(json!({"buildId": "third", "channel": "beta", "start": false})),
    )
    .await;
    let third = id_of(&third, "rolloutId");
    let v = |verb: &str| format!("/api/v1/rollouts/{third}/{verb}");
    s.advance(1_000);
    call(g, &admin, "advance", "POST", &v("advance"), Some(json!({}))).await;
    wait_rollout(&admin, &third, |d| d.get("health").is_some()).await;
    call(g, &admin, "pause", "POST", &v("pause"), Some(json!({}))).await;
    s.advance(1_000);
    call(g, &admin, "resume", "POST", &v("resume"), None).await;
    call(g, &admin, "advance (again)", "POST", &v("advance"), None).await;
    wait_rollout(&admin, &third, |d| d.get("health").is_some()).await;
    call(
        g,
        &admin,
        "cancel",
        "POST",
        &v("cancel"),
        Some(json!({"reason": "operator said so"})),
    )
    .await;
    g_finish(g);
    s.stop().await;
}

async fn wait_rollout(admin: &Client, id: &str, what: impl Fn(&Value) -> bool) {
    eventually(10, || async {
        let d = admin
            .get(&format!("/api/v1/rollouts/{id}"))
            .await
            .data()
            .clone();
        what(&d).then_some(())
    })
    .await;
}

async fn heartbeat(g: &mut Golden, r: &SimRunner, name: &str, build: Option<&str>) {
    let mut body = r.heartbeat_body(&[]);
    body["buildId"] = json!(build);
    call(
        g,
        &r.client,
        name,
        "POST",
        &format!("/api/v1/runners/{}/heartbeat", r.id),
        Some(body),
    )
    .await;
}

/// Runs `n` sessions on `ch` and ends each in `end`.
async fn run_sessions(admin: &Client, ch: &mut Channel, n: usize, end: &str) {
    for _ in 0..n {
        let r = admin
            .post(
                "/api/v1/sessions",
                json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let session = r.data()["sessionId"].clone();
        let f = ch.expect("assign_session").await;
        assert_eq!(f["session"]["sessionId"], session);
        ch.ack(&f).await;
        let assignment = f["assignmentId"].clone();
        for state in ["RUNNING", end] {
            let reply = ch
                .request(json!({"type": "session_state", "sessionId": session, "assignmentId": assignment, "state": state}))
                .await;
            assert_eq!(reply["type"], "ack", "{reply}");
        }
    }
}

#[tokio::test]
async fn tokens_and_audit_wire_bytes() {
    let s = Server::start("").await;
    let admin = s.admin();
    let g = &mut Golden::new("tokens");
    let org = call(
        g,
        &admin,
        "create (org)",
        "POST",
        "/api/v1/tokens",
        Some(json!({"kind": "org", "name": "acme token", "orgId": "acme"})),
    )
    .await;
    s.advance(1_000);
    call(
        g,
        &admin,
        "create (admin)",
        "POST",
        "/api/v1/tokens",
        Some(json!({"kind": "admin", "name": "second admin"})),
    )
    .await;
    let join = call(
        g,
        &admin,
        "create (runner join)",
        "POST",
        "/api/v1/tokens",
        Some(json!({"kind": "runner_join", "name": "joiner", "orgId": "acme"})),
    )
    .await;
    let join_client = admin.with_token(join["token"].as_str().unwrap());
    let reg = join_client
        .post(
            "/api/v1/runners/register",
            json!({"hostname": "h1", "capabilities": {"providers": ["codex"]}}),
        )
        .await;
    let runner_client = admin.with_token(reg.data()["runnerToken"].as_str().unwrap());
    call(g, &admin, "list", "GET", "/api/v1/tokens", None).await;
    call(
        g,
        &admin,
        "list (page 2)",
        "GET",
        "/api/v1/tokens?page=2&pageSize=2",
        None,
    )
    .await;
    s.advance(1_000);
    call(
        g,
        &admin,
        "revoke",
        "DELETE",
        &format!("/api/v1/tokens/{}", id_of(&org, "tokenId")),
        None,
    )
    .await;
    call(g, &admin, "me (admin)", "GET", "/api/v1/me", None).await;
    call(
        g,
        &join_client,
        "me (runner join)",
        "GET",
        "/api/v1/me",
        None,
    )
    .await;
    call(g, &runner_client, "me (runner)", "GET", "/api/v1/me", None).await;
    g_finish(g);

    let g = &mut Golden::new("audit");
    call(g, &admin, "audit", "GET", "/api/v1/audit", None).await;
    call(
        g,
        &admin,
        "audit (window)",
        "GET",
        "/api/v1/audit?afterSeq=2&limit=2",
        None,
    )
    .await;
    call(
        g,
        &admin,
        "audit (past the end)",
        "GET",
        "/api/v1/audit?afterSeq=1000",
        None,
    )
    .await;
    g_finish(g);
    s.stop().await;
}

/// Answers every POST with 200.
async fn receiver() -> SocketAddr {
    use warp::Filter;
    let route = warp::post().map(|| warp::reply::with_status("ok", warp::http::StatusCode::OK));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

#[tokio::test]
async fn webhooks_wire_bytes() {
    let s = Server::start("").await;
    let admin = s.admin();
    let addr = receiver().await;
    let g = &mut Golden::new("webhooks");
    g.norm
        .literals
        .push((addr.to_string(), "127.0.0.1:<port>".into()));
    let url = format!("http://{addr}/hooks/village");
    let hook = call(
        g,
        &admin,
        "create (org, secret)",
        "POST",
        "/api/v1/webhooks",
        Some(
            json!({"url": url, "events": ["session_created", "session_completed"],
                    "secret": "s3cr3t", "orgId": "acme"}),
        ),
    )
    .await;
    let hook = id_of(&hook, "webhookId");
    s.advance(1_000);
    let all = call(
        g,
        &admin,
        "create (all events)",
        "POST",
        "/api/v1/webhooks",
        Some(json!({"url": format!("http://{addr}/all"), "events": ["*"]})),
    )
    .await;
    call(g, &admin, "list", "GET", "/api/v1/webhooks", None).await;
    call(
        g,
        &admin,
        "deliveries (none)",
        "GET",
        &format!("/api/v1/webhooks/{hook}/deliveries"),
        None,
    )
    .await;
    admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
        )
        .await;
    let path = format!("/api/v1/webhooks/{hook}/deliveries");
    eventually(10, || async {
        let d = admin.get(&path).await.data().clone();
        (d["items"][0]["status"] == "delivered").then_some(())
    })
    .await;
    call(g, &admin, "deliveries", "GET", &path, None).await;
    call(
        g,
        &admin,
        "delete",
        "DELETE",
        &format!("/api/v1/webhooks/{}", id_of(&all, "webhookId")),
        None,
    )
    .await;
    g_finish(g);
    s.stop().await;
}

fn g_finish(g: &mut Golden) {
    let done = std::mem::replace(g, Golden::new(g.area));
    done.finish();
}
