//! The runner channel: one WebSocket to the server that carries commands down and reports up.
//!
//! Reports that the server acknowledges (state, usage, approval requests) wait in [`Outbox`]
//! until their ack arrives and are sent again, in order, after a reconnect. Terminal output is
//! kept per session from the last offset the server acknowledged: chunks name their offset, a
//! reconnect resends from the acknowledged offset and a `resync` from the server's, so output is
//! stored exactly once. The connection is retried with jittered exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::Runner;

/// What the rest of the runner hands to the channel.
pub enum Up {
    /// A report the server acknowledges. `reply` gets the ack's `data` or the error.
    Report {
        frame: Value,
        reply: Option<oneshot::Sender<Result<Value, String>>>,
    },
    /// Terminal output of a session, in order.
    Output {
        session: String,
        assignment: String,
        data: String,
    },
    /// Resolves when everything given for the session so far is stored (or cannot be).
    Flush {
        session: String,
        done: oneshot::Sender<()>,
    },
    /// The session is over: forget its output.
    Forget { session: String },
}

/// Output chunks stay below this (the server takes up to 256 KiB).
const CHUNK_BYTES: usize = 64 * 1024;
// A chunk shorter than `CHUNK_BYTES` is sent only while none of the session's is in flight: what
// the agent prints while the server stores one chunk gathers into the next. An idle session's
// output goes at once; a busy one's goes in fewer, larger frames. On the server every frame is
// a store write and a dashboard frame of its own, so their number, more than their size, costs
// (`loadgen runner` in BENCHMARKS.md).
/// Output sent but not yet acknowledged, per session.
const WINDOW_BYTES: u64 = 1024 * 1024;

struct PendingReport {
    message_id: String,
    frame: Value,
    reply: Option<oneshot::Sender<Result<Value, String>>>,
}

#[derive(Default)]
struct SessionOutput {
    assignment: String,
    /// Offset of `buf[front..]`'s first byte; everything before it the server holds.
    base: u64,
    buf: String,
    /// Bytes at the start of `buf` the server already holds, removed in bulk (`held`): removing
    /// each acknowledged chunk from the front would move the whole backlog every time.
    front: usize,
    /// Next offset to send.
    sent: u64,
    /// Chunks in flight: message id → offset after the chunk.
    inflight: HashMap<String, u64>,
    /// The offset of the last resync acted on, while its resend is in flight.
    resyncing: Option<u64>,
    flush: Vec<oneshot::Sender<()>>,
}

impl SessionOutput {
    fn end(&self) -> u64 {
        self.base + (self.buf.len() - self.front) as u64
    }

    /// Output the server does not hold yet.
    fn unheld(&self) -> bool {
        self.buf.len() > self.front
    }

    /// Index in `buf` of offset `at` (at least `base`).
    fn index(&self, at: u64) -> usize {
        self.front + (at - self.base) as usize
    }

    /// The server holds everything before `offset`.
    fn held(&mut self, offset: u64) {
        if offset > self.base {
            let cut = ((offset - self.base) as usize).min(self.buf.len() - self.front);
            let cut = floor_char_boundary(&self.buf, self.front + cut) - self.front;
            self.front += cut;
            self.base += cut as u64;
            if self.front == self.buf.len() {
                self.buf.clear();
                self.front = 0;
            } else if self.front >= CHUNK_BYTES && self.front * 2 >= self.buf.len() {
                self.buf.drain(..self.front);
                self.front = 0;
            }
        }
        if self.sent < self.base {
            self.sent = self.base;
        }
        if !self.unheld() {
            for f in self.flush.drain(..) {
                let _ = f.send(());
            }
        }
    }

    /// Drops everything, to go on from `offset`.
    fn restart_at(&mut self, offset: u64) {
        self.buf.clear();
        self.front = 0;
        self.base = offset;
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Reports and output waiting for the server.
#[derive(Default)]
pub struct Outbox {
    next: u64,
    reports: BTreeMap<u64, PendingReport>,
    outputs: HashMap<String, SessionOutput>,
}

impl Outbox {
    fn message_id(&mut self) -> String {
        self.next += 1;
        format!("r{}", self.next)
    }

    /// Takes an item; returns the frames to send now if connected.
    fn take(&mut self, up: Up, connected: bool) -> Vec<Value> {
        match up {
            Up::Report { mut frame, reply } => {
                let message_id = self.message_id();
                frame["messageId"] = json!(message_id);
                let n = self.next;
                let out = if connected {
                    vec![frame.clone()]
                } else {
                    Vec::new()
                };
                self.reports.insert(
                    n,
                    PendingReport {
                        message_id,
                        frame,
                        reply,
                    },
                );
                out
            }
            Up::Output {
                session,
                assignment,
                data,
            } => {
                let o = self.outputs.entry(session.clone()).or_default();
                o.assignment = assignment;
                o.buf.push_str(&data);
                if connected {
                    self.pump(&session)
                } else {
                    Vec::new()
                }
            }
            Up::Flush { session, done } => {
                match self.outputs.get_mut(&session) {
                    Some(o) if o.unheld() => o.flush.push(done),
                    _ => {
                        let _ = done.send(());
                    }
                }
                Vec::new()
            }
            Up::Forget { session } => {
                if let Some(mut o) = self.outputs.remove(&session) {
                    for f in o.flush.drain(..) {
                        let _ = f.send(());
                    }
                }
                Vec::new()
            }
        }
    }

    /// Output frames of one session that fit the window.
    fn pump(&mut self, session: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        let mut ids = Vec::new();
        let Some(o) = self.outputs.get_mut(session) else {
            return frames;
        };
        let idle = o.inflight.is_empty();
        while o.sent < o.end() && o.sent - o.base < WINDOW_BYTES {
            let start = o.index(o.sent);
            if !idle && o.buf.len() - start < CHUNK_BYTES {
                // Waits for the chunk in flight (its ack pumps again).
                break;
            }
            let mut stop = (start + CHUNK_BYTES).min(o.buf.len());
            stop = floor_char_boundary(&o.buf, stop);
            if stop <= start {
                // A single char longer than a chunk cannot happen; send the rest.
                stop = o.buf.len();
            }
            let data = &o.buf[start..stop];
            let offset = o.sent;
            o.sent += data.len() as u64;
            frames.push(json!({
                "type": "terminal_output",
                "sessionId": session,
                "assignmentId": o.assignment,
                "stream": "stdout",
                "data": data,
                "offset": offset,
            }));
            ids.push(o.sent);
        }
        for (frame, end) in frames.iter_mut().zip(ids) {
            self.next += 1;
            let id = format!("o{}", self.next);
            frame["messageId"] = json!(id);
            if let Some(o) = self.outputs.get_mut(session) {
                o.inflight.insert(id, end);
            }
        }
        frames
    }

    /// Everything to send after (re)connecting: the reports in order, then output from what
    /// the server acknowledged.
    fn on_connect(&mut self) -> Vec<Value> {
        let mut frames: Vec<Value> = self.reports.values().map(|r| r.frame.clone()).collect();
        let sessions: Vec<String> = self.outputs.keys().cloned().collect();
        for s in &sessions {
            if let Some(o) = self.outputs.get_mut(s) {
                o.inflight.clear();
                o.sent = o.base;
                o.resyncing = None;
            }
            frames.extend(self.pump(s));
        }
        frames
    }

    /// An `ack` or an `error` naming one of ours. Returns frames to send next.
    fn answered(&mut self, message_id: &str, result: Result<Value, String>) -> Vec<Value> {
        if let Some(key) = self
            .reports
            .iter()
            .find(|(_, r)| r.message_id == message_id)
            .map(|(k, _)| *k)
        {
            if let Some(r) = self.reports.remove(&key)
                && let Some(reply) = r.reply
            {
                let _ = reply.send(result);
            }
            return Vec::new();
        }
        let Some(session) = self
            .outputs
            .iter()
            .find(|(_, o)| o.inflight.contains_key(message_id))
            .map(|(s, _)| s.clone())
        else {
            return Vec::new();
        };
        let Some(o) = self.outputs.get_mut(&session) else {
            return Vec::new();
        };
        let end = o.inflight.remove(message_id).unwrap_or(0);
        match result {
            Ok(_) => {
                o.resyncing = None;
                o.held(end);
                self.pump(&session)
            }
            Err(e) => {
                // The session no longer takes output (it ended, or the assignment moved on):
                // what is left has nowhere to go.
                tracing::debug!(session, error = %e, "output refused; dropping the rest");
                if let Some(mut o) = self.outputs.remove(&session) {
                    for f in o.flush.drain(..) {
                        let _ = f.send(());
                    }
                }
                Vec::new()
            }
        }
    }

    /// `resync {sessionId, offset}`: the server holds `offset` bytes; send from there.
    fn resync(&mut self, session: &str, offset: u64) -> Vec<Value> {
        let Some(o) = self.outputs.get_mut(session) else {
            return Vec::new();
        };
        if o.resyncing == Some(offset) && o.sent > offset {
            // Another answer to a chunk sent before the first resync: the resend is on its way.
            return Vec::new();
        }
        if offset < o.base {
            tracing::warn!(
                session,
                offset,
                "the server holds less output than it acknowledged; dropping the rest"
            );
            self.outputs.remove(session);
            return Vec::new();
        }
        if offset > o.end() {
            o.restart_at(offset);
        }
        o.held(offset);
        o.sent = offset.max(o.base);
        o.inflight.clear();
        o.resyncing = Some(offset);
        self.pump(session)
    }
}

/// Holds the channel open for as long as the runner runs.
pub async fn run(runner: Arc<Runner>, mut up: mpsc::UnboundedReceiver<Up>) {
    let mut outbox = Outbox::default();
    let mut failures: u32 = 0;
    loop {
        if runner.is_finished() {
            return;
        }
        let started = Instant::now();
        match connect(&runner).await {
            Ok(ws) => {
                tracing::info!("runner channel connected");
                serve(&runner, ws, &mut outbox, &mut up).await;
                tracing::warn!("runner channel closed");
                if started.elapsed() > Duration::from_secs(10) {
                    failures = 0;
                }
            }
            Err(ConnectError::Refused(status)) => {
                tracing::warn!(
                    status,
                    "the server refused the runner's token; registering again"
                );
                if let Err(e) = runner.register_again().await {
                    tracing::error!(error = %e, "cannot register again");
                }
            }
            Err(ConnectError::Other(e)) => {
                tracing::warn!(error = %e, "cannot reach the server");
            }
        }
        if runner.is_finished() {
            return;
        }
        failures = failures.saturating_add(1);
        let wait = backoff(failures);
        // Keep taking reports while away, so nothing waits on a full queue.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                item = up.recv() => match item {
                    Some(item) => { outbox.take(item, false); }
                    None => return,
                },
                _ = runner.finished() => return,
            }
        }
    }
}

/// Jittered exponential backoff: 0.5 s doubling to 30 s, each wait a random 50–100 % of that.
pub fn backoff(failures: u32) -> Duration {
    let cap_ms = (500u64 << failures.min(7).saturating_sub(1)).min(30_000);
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    Duration::from_millis((cap_ms as f64 * jitter) as u64)
}

enum ConnectError {
    /// 401 or 403: the token is no longer good.
    Refused(u16),
    Other(String),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(runner: &Runner) -> Result<Socket, ConnectError> {
    let identity = runner.identity();
    let url = runner
        .server
        .ws(&format!("/api/v1/runners/{}/channel", identity.runner_id));
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let auth = format!("Bearer {}", identity.runner_token)
        .parse()
        .map_err(|_| ConnectError::Other("the runner token is not a header value".into()))?;
    request.headers_mut().insert("authorization", auth);
    let attempt = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Err(_) => Err(ConnectError::Other("timed out".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            if status == 401 || status == 403 || status == 404 {
                Err(ConnectError::Refused(status))
            } else {
                Err(ConnectError::Other(format!("HTTP {status}")))
            }
        }
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}

async fn serve(
    runner: &Arc<Runner>,
    ws: Socket,
    outbox: &mut Outbox,
    up: &mut mpsc::UnboundedReceiver<Up>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut pending: Vec<Value> = vec![runner.heartbeat_frame()];
    pending.extend(outbox.on_connect());
    let mut beat = tokio::time::interval(runner.heartbeat_interval());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.reset();
    loop {
        for frame in pending.drain(..) {
            let send = sink.send(Message::text(frame.to_string()));
            match tokio::time::timeout(Duration::from_secs(10), send).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        tokio::select! {
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else { return };
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Close(_) => return,
                    _ => continue,
                };
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                if server_failed(&frame) {
                    // The server could not store a report (its database failed, or it is
                    // shutting down): nothing it refused this way is given up. A new connection
                    // (with backoff) sends every unacknowledged report and the output from the
                    // acknowledged offset again.
                    tracing::warn!(code = %frame["code"], message = %frame["message"], "the server failed a report; reconnecting to send it again");
                    return;
                }
                pending.extend(on_frame(runner, outbox, frame, &mut beat));
            }
            item = up.recv() => match item {
                Some(item) => pending.extend(outbox.take(item, true)),
                None => return,
            },
            _ = beat.tick() => pending.push(runner.heartbeat_frame()),
            _ = runner.finished() => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// An `error` frame that says the server failed, not that the report was wrong or is no longer
/// wanted (a stale assignment, a session that ended): such a report is worth sending again.
fn server_failed(frame: &Value) -> bool {
    frame["type"] == "error"
        && matches!(
            frame["code"].as_str(),
            Some("INTERNAL_ERROR" | "UNAVAILABLE")
        )
}

const COMMANDS: &[&str] = &[
    "assign_session",
    "stop_session",
    "pause_session",
    "resume_session",
    "terminal_input",
    "approval_resolved",
    "drain",
];

fn on_frame(
    runner: &Arc<Runner>,
    outbox: &mut Outbox,
    frame: Value,
    beat: &mut tokio::time::Interval,
) -> Vec<Value> {
    let kind = frame["type"].as_str().unwrap_or_default();
    let message_id = frame["messageId"].as_str().map(str::to_owned);
    match kind {
        "ack" => match message_id {
            Some(id) => outbox.answered(&id, Ok(frame["data"].clone())),
            None => Vec::new(),
        },
        "error" => {
            let text = format!(
                "{}: {}",
                frame["code"].as_str().unwrap_or("ERROR"),
                frame["message"].as_str().unwrap_or("")
            );
            match message_id {
                Some(id) => outbox.answered(&id, Err(text)),
                None => {
                    tracing::warn!(error = %text, "the server reported an error");
                    Vec::new()
                }
            }
        }
        "resync" => match (frame["sessionId"].as_str(), frame["offset"].as_u64()) {
            (Some(s), Some(offset)) => outbox.resync(s, offset),
            _ => Vec::new(),
        },
        "heartbeat_ack" => {
            if let Some(ms) = runner.heartbeat_answer(&frame) {
                *beat = tokio::time::interval(Duration::from_millis(ms));
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                beat.reset();
            }
            Vec::new()
        }
        k if COMMANDS.contains(&k) => {
            runner.command(&frame);
            match message_id {
                Some(id) => vec![json!({"type": "ack", "messageId": id})],
                None => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(s: &str, data: &str) -> Up {
        Up::Output {
            session: s.into(),
            assignment: "a".into(),
            data: data.into(),
        }
    }

    fn ids(frames: &[Value]) -> Vec<(String, u64, String)> {
        frames
            .iter()
            .map(|f| {
                (
                    f["messageId"].as_str().unwrap().to_string(),
                    f["offset"].as_u64().unwrap(),
                    f["data"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn output_is_resent_from_the_acknowledged_offset_after_a_reconnect() {
        let mut o = Outbox::default();
        assert!(o.take(output("s", "hello "), false).is_empty());
        let sent = ids(&o.on_connect());
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].1, sent[0].2.as_str()), (0, "hello "));
        assert!(
            o.take(output("s", "world"), true).is_empty(),
            "a short chunk waits while one is in flight"
        );
        // The first is acknowledged, which sends the second; that is lost with the connection.
        let more = ids(&o.answered(&sent[0].0, Ok(Value::Null)));
        assert_eq!((more[0].1, more[0].2.as_str()), (6, "world"));
        let again = ids(&o.on_connect());
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].1, again[0].2.as_str()), (6, "world"));
    }

    #[test]
    fn resync_resends_from_the_servers_offset_once() {
        let mut o = Outbox::default();
        o.on_connect();
        let text = format!("{}def", "x".repeat(CHUNK_BYTES));
        let sent = ids(&o.take(output("s", &text), true));
        let offsets: Vec<u64> = sent.iter().map(|f| f.1).collect();
        assert_eq!(offsets, [0, CHUNK_BYTES as u64]);
        // The server stored nothing: both chunks answer with resync 0.
        let first = ids(&o.resync("s", 0));
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].1, first[0].2.len()), (0, CHUNK_BYTES));
        assert_eq!(
            (first[1].1, first[1].2.as_str()),
            (CHUNK_BYTES as u64, "def")
        );
        assert!(
            o.resync("s", 0).is_empty(),
            "a second resync for the same offset waits"
        );
        for f in &first {
            o.answered(&f.0, Ok(Value::Null));
        }
        assert!(flushed(&mut o, "s"), "everything is stored");
    }

    /// Whether a flush of `session` given now resolves at once (everything is stored).
    fn flushed(o: &mut Outbox, session: &str) -> bool {
        let (tx, mut rx) = oneshot::channel();
        o.take(
            Up::Flush {
                session: session.into(),
                done: tx,
            },
            true,
        );
        rx.try_recv().is_ok()
    }

    #[test]
    fn only_a_failure_of_the_server_is_worth_a_resend() {
        let error = |code: &str| json!({"type": "error", "code": code, "messageId": "r1"});
        assert!(server_failed(&error("INTERNAL_ERROR")));
        assert!(server_failed(&error("UNAVAILABLE")));
        for refused in [
            "STALE_ASSIGNMENT",
            "INVALID_STATE",
            "SESSION_NOT_FOUND",
            "VALIDATION_ERROR",
        ] {
            assert!(!server_failed(&error(refused)), "{refused}");
        }
        assert!(!server_failed(
            &json!({"type": "ack", "code": "INTERNAL_ERROR"})
        ));
    }

    #[test]
    fn output_gathers_while_a_chunk_is_in_flight() {
        let mut o = Outbox::default();
        o.on_connect();
        let first = ids(&o.take(output("s", "a"), true));
        assert_eq!(first.len(), 1, "an idle session's output goes at once");
        assert!(o.take(output("s", "b"), true).is_empty());
        assert!(o.take(output("s", "c"), true).is_empty());
        let next = ids(&o.answered(&first[0].0, Ok(Value::Null)));
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].1, next[0].2.as_str()),
            (1, "bc"),
            "what gathered goes in one frame"
        );
        // A full chunk does not wait.
        let full = ids(&o.take(output("s", &"d".repeat(CHUNK_BYTES)), true));
        assert_eq!(full.len(), 1);
        assert_eq!((full[0].1, full[0].2.len()), (3, CHUNK_BYTES));
    }

    #[test]
    fn chunks_split_at_char_boundaries_within_the_window() {
        let mut o = Outbox::default();
        o.on_connect();
        let text = "é".repeat(CHUNK_BYTES); // two bytes each
        let frames = ids(&o.take(output("s", &text), true));
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].2.len(), CHUNK_BYTES);
        assert_eq!(frames[1].1, CHUNK_BYTES as u64);
        let big = "x".repeat(3 * WINDOW_BYTES as usize);
        let frames = o.take(output("t", &big), true);
        let bytes: usize = ids(&frames).iter().map(|f| f.2.len()).sum();
        assert_eq!(
            bytes as u64, WINDOW_BYTES,
            "no more than the window is in flight"
        );
    }

    #[test]
    fn a_backlog_goes_out_in_order_as_chunks_are_acknowledged() {
        let mut o = Outbox::default();
        o.on_connect();
        let text: String = (0..3 * WINDOW_BYTES as usize / 10)
            .map(|i| format!("{:09}\n", i))
            .collect();
        let mut frames = ids(&o.take(output("s", &text), true));
        let mut got = String::new();
        while !frames.is_empty() {
            let (id, offset, data) = frames.remove(0);
            assert_eq!(offset, got.len() as u64);
            got.push_str(&data);
            frames.extend(ids(&o.answered(&id, Ok(Value::Null))));
        }
        assert_eq!(got, text);
        assert!(flushed(&mut o, "s"), "everything is stored");
    }

    #[test]
    fn reports_are_resent_in_order_until_acknowledged() {
        let mut o = Outbox::default();
        let (tx, mut rx) = oneshot::channel();
        o.take(
            Up::Report {
                frame: json!({"type": "session_state", "state": "RUNNING"}),
                reply: Some(tx),
            },
            false,
        );
        o.take(
            Up::Report {
                frame: json!({"type": "usage"}),
                reply: None,
            },
            false,
        );
        let frames = o.on_connect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0]["type"], "session_state");
        let id = frames[0]["messageId"].as_str().unwrap().to_string();
        o.answered(&id, Ok(json!({"ok": 1})));
        assert_eq!(rx.try_recv().unwrap().unwrap(), json!({"ok": 1}));
        let frames = o.on_connect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["type"], "usage");
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for _ in 0..50 {
            let first = backoff(1).as_millis();
            assert!((250..=500).contains(&first), "{first}");
            let late = backoff(20).as_millis();
            assert!((15_000..=30_000).contains(&late), "{late}");
        }
    }
}
