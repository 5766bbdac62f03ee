//! A simulated runner on its channel, read all the time in the background, for the browser
//! tests: it acknowledges every command, starts every session it is assigned, and hands the
//! frames to the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::runner::register;
use super::{Client, eventually};

/// A simulated runner whose channel is read all the time: it acknowledges every command,
/// starts every session it is assigned, and hands the frames to the test.
pub struct LiveRunner {
    pub id: String,
    pub hostname: String,
    pub to_server: mpsc::UnboundedSender<Value>,
    pub from_server: mpsc::UnboundedReceiver<Value>,
    pub assignments: Arc<Mutex<HashMap<String, String>>>,
    pub written: HashMap<String, u64>,
}

impl LiveRunner {
    pub async fn start(admin: &Client, hostname: &str) -> LiveRunner {
        let (runner, _) = register(admin, hostname, &["claude_code", "codex"], Some(4), &[]).await;
        runner.heartbeat().await;
        let channel = runner.connect().await;
        let (mut sink, mut stream) = channel.ws.split();
        let (to_server, mut outgoing) = mpsc::unbounded_channel::<Value>();
        let (inbox, from_server) = mpsc::unbounded_channel::<Value>();
        let assignments: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let seen = assignments.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(Ok(msg)) = msg else { break };
                        let Message::Text(text) = msg else { continue };
                        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                        let kind = frame["type"].as_str().unwrap_or("").to_string();
                        if frame["messageId"].is_string() && kind != "ack" && kind != "error" {
                            let ack = json!({"type": "ack", "messageId": frame["messageId"]});
                            if sink.send(Message::text(ack.to_string())).await.is_err() { break }
                        }
                        if kind == "assign_session" {
                            let session = frame["session"]["sessionId"].as_str().unwrap().to_string();
                            let assignment = frame["assignmentId"].as_str().unwrap().to_string();
                            seen.lock().unwrap().insert(session.clone(), assignment.clone());
                            let running = json!({"type": "session_state", "sessionId": session,
                                "assignmentId": assignment, "state": "RUNNING",
                                "messageId": village::clock::random_uuid().to_string()});
                            if sink.send(Message::text(running.to_string())).await.is_err() { break }
                        }
                        if inbox.send(frame).is_err() { break }
                    }
                    out = outgoing.recv() => {
                        let Some(out) = out else { break };
                        if sink.send(Message::text(out.to_string())).await.is_err() { break }
                    }
                }
            }
        });
        LiveRunner {
            id: runner.id,
            hostname: hostname.to_string(),
            to_server,
            from_server,
            assignments,
            written: HashMap::new(),
        }
    }

    pub fn assignment(&self, session: &str) -> String {
        self.assignments.lock().unwrap()[session].clone()
    }

    pub fn send(&self, mut frame: Value) {
        frame["messageId"] = json!(village::clock::random_uuid().to_string());
        self.to_server.send(frame).unwrap();
    }

    /// Writes terminal output of `session` (offsets count the bytes sent before).
    pub fn write(&mut self, session: &str, data: &str) {
        let assignment = self.assignment(session);
        let offset = self.written.entry(session.to_string()).or_default();
        let frame = json!({"type": "terminal_output", "sessionId": session,
            "assignmentId": assignment, "stream": "stdout", "data": data, "offset": *offset});
        *offset += data.len() as u64;
        self.send(frame);
    }

    pub fn ask_approval(&self, session: &str, action: &str, description: &str) {
        self.send(json!({"type": "approval_request", "sessionId": session,
            "assignmentId": self.assignment(session), "action": action, "description": description,
            "context": {"pullRequest": 7}}));
    }

    /// Relays an agent's own permission request, with the context a runner attaches to one.
    pub fn ask_permission(&self, session: &str, action: &str, description: &str, context: Value) {
        self.send(json!({"type": "approval_request", "sessionId": session,
            "assignmentId": self.assignment(session), "action": action, "description": description,
            "context": context}));
    }

    /// The next frame of `kind` that `matches`, within `secs`.
    pub async fn expect(
        &mut self,
        kind: &str,
        secs: u64,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.from_server.recv())
                .await
                .unwrap_or_else(|_| panic!("runner {}: no `{kind}` in {secs} s", self.hostname))
                .expect("runner channel closed");
            if frame["type"] == kind && matches(&frame) {
                return frame;
            }
        }
    }
}

/// A session of `org` created over the API and running on a live runner.
pub async fn running_session(admin: &Client, org: &str, task: &str) -> String {
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": org, "providerId": "claude_code",
                   "repo": {"url": "https://github.com/acme/app.git", "branch": "main"}, "task": task}),
        )
        .await;
    let id = r.data()["sessionId"].as_str().unwrap().to_string();
    wait_state(admin, &id, "RUNNING").await;
    id
}

pub async fn wait_state(admin: &Client, id: &str, state: &str) {
    eventually(10, || async {
        (admin.session(id).await["state"] == state).then_some(())
    })
    .await;
}
