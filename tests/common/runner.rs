//! A simulated runner: registers over REST, heartbeats, and speaks the runner channel over a
//! real WebSocket (tokio-tungstenite).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Client, Resp};

pub struct SimRunner {
    pub id: String,
    pub token: String,
    pub hostname: String,
    pub client: Client,
}

/// `providers`, `maxConcurrentSessions` (None: server default) and `features`.
pub async fn register(
    by: &Client,
    hostname: &str,
    providers: &[&str],
    capacity: Option<u64>,
    features: &[&str],
) -> (SimRunner, Resp) {
    let mut caps = json!({"providers": providers, "features": features});
    if let Some(c) = capacity {
        caps["maxConcurrentSessions"] = json!(c);
    }
    let r = by
        .post(
            "/api/v1/runners/register",
            json!({"hostname": hostname, "capabilities": caps, "metadata": {"os": "linux"}}),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let d = r.data();
    let runner = SimRunner {
        id: d["runner"]["runnerId"].as_str().unwrap().to_string(),
        token: d["runnerToken"].as_str().unwrap().to_string(),
        hostname: hostname.to_string(),
        client: by.with_token(d["runnerToken"].as_str().unwrap()),
    };
    (runner, r)
}

/// A session of org `acme` RUNNING on a new simulated runner `hostname` (offering
/// `claude_code`), with the runner's channel: (channel, session id, assignment id).
pub async fn running_on_channel(
    admin: &Client,
    org: &Client,
    hostname: &str,
) -> (Channel, String, String) {
    let (r, _) = register(admin, hostname, &["claude_code"], None, &[]).await;
    let mut ch = r.connect().await;
    let id = org.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let assignment = ch.start_next_assignment(&id).await;
    (ch, id, assignment)
}

impl SimRunner {
    pub fn heartbeat_body(&self, active: &[&str]) -> Value {
        json!({
            "runnerId": self.id,
            "timestamp": "2026-11-25T10:00:00.000Z",
            "activeSessions": active,
            "load": {"cpuPercent": 12.5, "memoryPercent": 40, "diskPercent": 70},
            "runtimeVersions": {"codex": "0.9.1", "claude_code": "2.1.0"},
            "buildId": "build-1"
        })
    }

    pub async fn heartbeat(&self) -> Resp {
        let r = self
            .client
            .post(
                &format!("/api/v1/runners/{}/heartbeat", self.id),
                self.heartbeat_body(&[]),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r
    }

    pub async fn connect(&self) -> Channel {
        Channel::open(
            &self.client,
            &format!("/api/v1/runners/{}/channel", self.id),
        )
        .await
    }

    pub async fn info(&self, admin: &Client) -> Value {
        admin
            .get(&format!("/api/v1/runners/{}", self.id))
            .await
            .data()
            .clone()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Channel {
    pub ws: Ws,
    /// Frames `request_keeping_others` passed over, read first by the next receive.
    kept: std::collections::VecDeque<Value>,
}

/// How a WebSocket upgrade attempt ended.
pub enum Upgrade {
    Open(Box<Channel>),
    Refused(u16),
}

/// The upgrade request for `path`, with the client's token.
fn upgrade_request(
    client: &Client,
    path: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}{}", client.addr, path)
        .into_client_request()
        .unwrap();
    if let Some(t) = &client.token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

impl Channel {
    pub async fn try_open(client: &Client, path: &str) -> Upgrade {
        let req = upgrade_request(client, path);
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Upgrade::Open(Box::new(Channel {
                ws,
                kept: Default::default(),
            })),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Upgrade::Refused(resp.status().as_u16())
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// A client with a tiny socket receive buffer, like one on a slow link: what it does not
    /// read backs up into the server quickly.
    pub async fn open_small_buffer(client: &Client, path: &str) -> Channel {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let stream = socket.connect(client.addr).await.unwrap();
        let req = upgrade_request(client, path);
        let (ws, _) =
            tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .unwrap();
        Channel {
            ws,
            kept: Default::default(),
        }
    }

    pub async fn open(client: &Client, path: &str) -> Channel {
        match Self::try_open(client, path).await {
            Upgrade::Open(c) => *c,
            Upgrade::Refused(s) => panic!("channel refused with {s}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next JSON frame within `ms`, or None. Pings are answered by tungstenite.
    pub async fn recv_within(&mut self, ms: u64) -> Option<Value> {
        if let Some(f) = self.kept.pop_front() {
            return Some(f);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next()).await.ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame of this type, skipping others; panics after 5 s.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .recv_within(left.as_millis() as u64)
                .await
                .unwrap_or_else(|| panic!("no `{kind}` frame"));
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Asserts nothing of this type arrives within `ms`.
    pub async fn expect_none(&mut self, kind: &str, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left.as_millis() as u64).await {
                None => return,
                Some(f) => assert_ne!(f["type"], kind, "unexpected frame {f}"),
            }
        }
    }

    pub async fn ack(&mut self, frame: &Value) {
        let id = frame["messageId"].clone();
        self.send(json!({"type": "ack", "messageId": id})).await;
    }

    /// Sends a frame with a messageId and waits for the reply naming it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = village::clock::random_uuid().to_string();
        frame["messageId"] = json!(id);
        self.send(frame).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .recv_within(left.as_millis() as u64)
                .await
                .expect("no reply");
            if f["messageId"] == json!(id) || f["type"] == "resync" {
                return f;
            }
        }
    }

    /// `request`, keeping the other frames that arrive before the reply for the next receive
    /// (a command the request caused may come first).
    pub async fn request_keeping_others(&mut self, mut frame: Value) -> Value {
        let id = village::clock::random_uuid().to_string();
        frame["messageId"] = json!(id);
        self.send(frame).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut others = std::collections::VecDeque::new();
        let reply = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .recv_within(left.as_millis() as u64)
                .await
                .expect("no reply");
            if f["messageId"] == json!(id) {
                break f;
            }
            others.push_back(f);
        };
        others.append(&mut self.kept);
        self.kept = others;
        reply
    }

    /// Takes the next `assign_session` (for `session`), acks it and reports RUNNING; returns
    /// the assignment id.
    pub async fn start_next_assignment(&mut self, session: &str) -> String {
        let f = self.expect("assign_session").await;
        assert_eq!(f["session"]["sessionId"], session, "{f}");
        self.ack(&f).await;
        let assignment = f["assignmentId"].as_str().unwrap().to_string();
        let r = self
            .request_keeping_others(json!({"type": "session_state", "sessionId": session,
                                           "assignmentId": assignment, "state": "RUNNING"}))
            .await;
        assert_eq!(r["type"], "ack", "{r}");
        assignment
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

impl Channel {
    /// Reads until the server closes; returns the close code (None for a bare EOF).
    pub async fn close_code_within(&mut self, ms: u64) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("the server did not close the connection in {ms} ms"),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
