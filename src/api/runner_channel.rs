//! `GET /api/v1/runners/{id}/channel`: the runner's WebSocket.
//!
//! Down: every command in the runner's outbox, oldest first, then new ones as they commit;
//! each stays in the outbox until the runner acks its `messageId`, so a reconnect replays what
//! was not acknowledged. Up: state, output, usage, approval requests and heartbeats, each
//! handled by the same domain calls as the REST endpoints.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use uuid::Uuid;
use warp::http::HeaderMap;

use super::upgrade::{Handshake, Socket};

use super::AppState;
use super::envelope::{ApiResult, Success};
use super::error::ApiError;
use super::input::Body;
use super::runners::{beat, parse_heartbeat, runner_id};
use super::sessions::{
    approval_request, parse_approval_request, parse_output, parse_state_report, parse_usage,
    session_detail_for_runner,
};
use super::wire;
use super::wire::frames::{CommandFrame, SocketError, error_frame};
use crate::auth::{Caller, Principal};
use crate::clock::format_ms;
use crate::error::{Conflict, ConflictDetails, DomainError};
use crate::events::RunnerLink;
use crate::metrics;
use crate::runners::model::{OutboxEntry, RunnerCommand};
use crate::sessions::SessionView;

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

pub async fn open(
    id: String,
    p: Caller,
    st: AppState,
    headers: HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<ApiResult, warp::Rejection> {
    let handshake = Handshake::check(&headers, upgrade)?;
    let checked = runner_id(&id).and_then(|id| {
        st.runners.check_channel(&p, id)?;
        Ok(id)
    });
    Ok(checked.map(|id| {
        Success::Raw(
            handshake.accept(st.config.websocket.max_frame_bytes, move |socket| {
                serve(st, p, id, socket)
            }),
        )
    }))
}

/// Frames being stored at once on one channel, at most; past this the channel stops reading
/// until the oldest is answered.
const STORING_AT_ONCE: usize = 64;

/// Frames that are one store write each, handed to the writer as they arrive (see `serve`).
/// Acks and approval requests are among them: a runner acks a command and then reports what
/// it did (an `assign_session` is acked, `session_state` RUNNING follows, and an agent's first
/// `approval_request` soon after). Stored one after another, each waiting for the commit of
/// the one before it was read, such a run of frames cost a commit each, back to back.
const STORED_IN_ORDER: &[&str] = &[
    "ack",
    "terminal_output",
    "usage",
    "session_state",
    "approval_request",
];

/// A runner whose socket takes no frame for this long is treated as gone.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends one frame; a socket that stays full past `SEND_TIMEOUT` counts as a failed send, so a
/// runner that stopped reading cannot stall its channel (and its ping check) forever.
async fn send(outlet: &Outlet, msg: Message) -> Result<(), ()> {
    let mut sink = outlet.sink.lock().await;
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Flushes what the delivery left in the socket's buffer (`Delivery::Flush`).
async fn flush(outlet: &Outlet) -> Result<(), ()> {
    let mut sink = outlet.sink.lock().await;
    match tokio::time::timeout(SEND_TIMEOUT, sink.flush()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// A runner's socket as its channel task and the store's delivery task share it.
///
/// A command committed while the channel has nothing else in hand is written by the delivery
/// itself, right after its commit and before the callers of that commit are answered. Handed
/// to the channel task, it would wait for that task's turn on a worker thread, and on a
/// saturated machine a worker thread that the system keeps off its CPU holds up every task
/// queued on it, for 10–30 ms (BENCHMARKS.md, "Hot paths, sixth pass"). Everything else goes
/// through the channel task as before: its queue keeps commands in commit order, and while a
/// frame of the runner awaits its answer a command waits for that answer (a runner learns an
/// approval's id before its decision).
struct Outlet {
    st: AppState,
    /// Who opened the channel: commands stop when its token is revoked.
    caller: Caller,
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    state: std::sync::Mutex<OutletState>,
    queue: mpsc::UnboundedSender<Delivery>,
}

#[derive(Default)]
struct OutletState {
    /// Commands up to this `seq` are sent, dropped, or in the channel task's hands.
    sent_upto: u64,
    /// The delivery may write commands itself: the backlog is out and no frame of the runner
    /// awaits its answer (the channel task says).
    direct: bool,
    /// Commands handed to the channel task and not sent yet: later ones go after them.
    queued: usize,
}

/// What the delivery hands the channel task.
enum Delivery {
    Command(OutboxEntry),
    /// A command the delivery wrote is not all on the socket yet.
    Flush,
    /// Close the connection with this code and reason (`Outlet::close`).
    Close(u16, &'static str),
}

/// Which way a command the delivery hands over goes.
#[derive(Debug, PartialEq)]
enum Route {
    /// Sent already (the backlog had it).
    Skip,
    /// The delivery writes it, if it can without waiting.
    Write,
    /// Through the channel task's queue.
    Queue,
}

impl OutletState {
    fn route(&self, seq: u64) -> Route {
        if seq <= self.sent_upto {
            Route::Skip
        } else if self.direct && self.queued == 0 {
            Route::Write
        } else {
            Route::Queue
        }
    }

    /// The channel task takes the command `seq` from its queue: false when it went out
    /// already (the backlog had it).
    fn take(&mut self, seq: u64) -> bool {
        let fresh = seq > self.sent_upto;
        self.sent_upto = self.sent_upto.max(seq);
        fresh
    }

    /// A command goes into the channel task's queue.
    fn queue_one(&mut self) {
        self.queued += 1;
    }

    /// A command the channel task took from its queue went out (or was dropped).
    fn sent(&mut self) {
        debug_assert!(self.queued > 0, "a queued command sent twice");
        self.queued = self.queued.saturating_sub(1);
    }
}

impl RunnerLink for Outlet {
    fn command(&self, entry: OutboxEntry) {
        if self.caller.is_revoked() {
            // Its commands (an assignment carries the session's environment) must not go to
            // a connection whose token was revoked or replaced by a re-registration.
            self.close(1008, "token revoked");
            return;
        }
        let mut state = self.state();
        match state.route(entry.seq) {
            Route::Skip => return,
            Route::Write => {
                if let Some(flushed) = self.write_now(&entry) {
                    state.sent_upto = entry.seq;
                    if !flushed {
                        let _ = self.queue.send(Delivery::Flush);
                    }
                    return;
                }
            }
            Route::Queue => {}
        }
        state.queue_one();
        let _ = self.queue.send(Delivery::Command(entry));
    }

    fn replaced(&self) {
        self.close(1008, "replaced by a newer connection");
    }
}

impl Outlet {
    fn state(&self) -> std::sync::MutexGuard<'_, OutletState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Has the channel task close the connection with `code`: the delivery writes nothing
    /// more to it meanwhile.
    fn close(&self, code: u16, reason: &'static str) {
        self.set_direct(false);
        let _ = self.queue.send(Delivery::Close(code, reason));
    }

    /// Whether the delivery may write commands itself (see `OutletState::direct`).
    fn set_direct(&self, direct: bool) {
        self.state().direct = direct;
    }

    fn take_queued(&self, seq: u64) -> bool {
        self.state().take(seq)
    }

    fn sent_queued(&self) {
        self.state().sent();
    }

    /// Writes `entry`'s frame if that can be done without waiting for anything. Returns
    /// whether the frame is all on the socket, or `None` when the channel task must send it
    /// (the socket's buffer is full, the task is sending, the assignment moved on; also once
    /// the delivery task has used up tokio's I/O budget for one poll, in a large batch). A
    /// failed socket counts as written: the channel task finds out on its own, and the
    /// command stays in the outbox for the runner's next connection. (The `state` lock is
    /// held meanwhile: a read of a few records and one `write`.)
    fn write_now(&self, entry: &OutboxEntry) -> Option<bool> {
        let mut sink = self.sink.try_lock().ok()?;
        let mut sink = Pin::new(&mut *sink);
        // Nothing is woken through this context: what `poll_flush` leaves in the buffer is
        // flushed by the channel task (`Delivery::Flush`), with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match sink.as_mut().poll_ready(&mut cx) {
            Poll::Pending => return None,
            Poll::Ready(Err(_)) => return Some(true),
            Poll::Ready(Ok(())) => {}
        }
        let frame = frame_now(&self.st, entry)?;
        if sink
            .as_mut()
            .start_send(Message::text(wire::text(frame)))
            .is_err()
        {
            return Some(true);
        }
        self.st
            .metrics
            .runner_command_sent(metrics::CommandPath::Commit);
        Some(!matches!(sink.poll_flush(&mut cx), Poll::Pending))
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

async fn serve(st: AppState, p: Caller, runner: Uuid, socket: Socket) {
    let _counted = st.metrics.websocket_client(metrics::Socket::RunnerChannel);
    let (sink, mut stream) = socket.split();
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let (tx, mut commands) = mpsc::unbounded_channel();
    let outlet = Arc::new(Outlet {
        st: st.clone(),
        caller: p.clone(),
        sink: tokio::sync::Mutex::new(sink),
        state: Default::default(),
        queue: tx,
    });
    // Attach before reading the outbox: a command committed in between arrives both ways and
    // is sent once (by seq).
    st.bus.attach_runner(runner, connection, outlet.clone());
    let attachment = Attachment {
        st: st.clone(),
        outlet: outlet.clone(),
        runner,
        connection,
    };
    let mut shutdown = st.shutdown.clone();
    let interval = st.config.websocket.heartbeat_interval;
    let max_frame = st.config.websocket.max_frame_bytes;
    let mut ping = tokio::time::interval(interval);
    ping.tick().await;
    let mut last_pong = tokio::time::Instant::now();

    let backlog = match st.runners.outbox(runner).await {
        Ok(backlog) => backlog,
        Err(e) => {
            // Served without its backlog, the channel would leave the runner's pending
            // commands (a stop, a decision) unsent until it happened to reconnect: it is
            // closed instead, and the runner reconnects.
            tracing::warn!(%runner, error = %e, "a runner's outbox could not be read; closing its channel");
            let _ = send(&outlet, close(1011, "try again later")).await;
            drop(attachment);
            return;
        }
    };
    let mut alive = true;
    for entry in backlog {
        outlet.take_queued(entry.seq);
        if let Some(frame) = render(&st, &entry).await {
            if send(&outlet, Message::text(wire::text(frame)))
                .await
                .is_err()
            {
                alive = false;
                break;
            }
            st.metrics
                .runner_command_sent(metrics::CommandPath::Backlog);
        }
    }
    tracing::info!(%runner, connection, "runner channel connected");
    st.bus.kick_scheduler();

    // Acks, output, usage, state reports and approval requests do not wait for the one before
    // to be stored: each hands its write to the store writer as it arrives (so in order), and
    // what a runner's sessions reported meanwhile goes into one durable commit instead of one
    // commit per frame. Their answers still go in order, any other frame waits until those
    // before it are answered, and a command that comes meanwhile goes after them.
    // (Usage reports of every session come at the same moment; handled one at a time, each
    // would hold up the output behind it for a commit.)
    let mut storing: FuturesOrdered<BoxFuture<'static, Vec<Value>>> = FuturesOrdered::new();
    // What the outlet was last told, so that a run of output frames takes its lock only when
    // the answer changes rather than once per frame.
    let mut direct = false;
    while alive {
        // Only here does the delivery get to write again: after the answers to every stored
        // frame went out (`send_all` flushes), so a command that such a frame's commit made
        // (routed while `direct` was false, hence queued) can never go before that answer.
        // Frames outside `STORED_IN_ORDER` (heartbeats) change nothing a command could follow
        // from; one that commits must join that list or clear `direct` before it is handled.
        if direct != storing.is_empty() {
            direct = storing.is_empty();
            outlet.set_direct(direct);
        }
        tokio::select! {
            Some(replies) = storing.next(), if !storing.is_empty() => {
                alive = send_all(&outlet, replies).await;
            }
            incoming = stream.next(), if storing.len() < STORING_AT_ONCE => {
                let Some(Ok(msg)) = incoming else { break };
                if msg.is_close() {
                    break;
                }
                if p.is_revoked() {
                    let _ = send(&outlet, close(1008, "token revoked")).await;
                    break;
                }
                if msg.is_pong() {
                    last_pong = tokio::time::Instant::now();
                    continue;
                }
                let replies = if msg.len() > max_frame {
                    vec![error_frame(SocketError::MessageTooLarge.code(), &format!("frames are limited to {max_frame} bytes"), None)]
                } else if msg.is_text() {
                    match parse(msg.to_text().unwrap_or("")) {
                        Err(replies) => replies,
                        Ok(frame) if frame.get("type").and_then(Value::as_str).is_some_and(|t| STORED_IN_ORDER.contains(&t)) => {
                            // Before the write reaches the store: a command its commit makes
                            // goes after its answer.
                            if direct {
                                direct = false;
                                outlet.set_direct(false);
                            }
                            storing.push_back(start_storing(&st, &p, runner, frame).await);
                            continue;
                        }
                        Ok(frame) => {
                            // Whatever came before it is answered first.
                            while let Some(replies) = storing.next().await {
                                alive = alive && send_all(&outlet, replies).await;
                            }
                            if !alive {
                                break;
                            }
                            handle(&st, &p, runner, frame).await
                        }
                    }
                } else if msg.is_ping() {
                    Vec::new()
                } else {
                    vec![error_frame(SocketError::InvalidMessage.code(), "frames must be JSON text", None)]
                };
                if storing.is_empty() {
                    alive = send_all(&outlet, replies).await;
                } else {
                    // After the answers to the output before it.
                    storing.push_back(Box::pin(std::future::ready(replies)));
                }
            }
            Some(delivery) = commands.recv() => {
                let entry = match delivery {
                    Delivery::Command(entry) => entry,
                    Delivery::Flush => {
                        if flush(&outlet).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Delivery::Close(code, reason) => {
                        tracing::info!(%runner, connection, reason, "closing a runner channel");
                        let _ = send(&outlet, close(code, reason)).await;
                        break;
                    }
                };
                if !outlet.take_queued(entry.seq) {
                    outlet.sent_queued();
                    continue;
                }
                if p.is_revoked() {
                    let _ = send(&outlet, close(1008, "token revoked")).await;
                    break;
                }
                if !storing.is_empty() {
                    // The command may come from the commit of a frame still waiting here for
                    // its answer (an approval request that a policy decided at once): it goes
                    // after that answer, so a runner learns the approval's id before its
                    // decision, as when frames were stored one at a time. (The delivery writes
                    // nothing itself until `storing` is empty and answered.)
                    let (st, outlet) = (st.clone(), outlet.clone());
                    storing.push_back(Box::pin(async move {
                        let frame = render(&st, &entry).await;
                        outlet.sent_queued();
                        if frame.is_some() {
                            st.metrics.runner_command_sent(metrics::CommandPath::Channel);
                        }
                        frame.into_iter().collect()
                    }));
                    continue;
                }
                if let Some(frame) = render(&st, &entry).await {
                    if send(&outlet, Message::text(wire::text(frame))).await.is_err() {
                        break;
                    }
                    st.metrics.runner_command_sent(metrics::CommandPath::Channel);
                }
                outlet.sent_queued();
            }
            _ = ping.tick() => {
                if p.is_revoked() {
                    let _ = send(&outlet, close(1008, "token revoked")).await;
                    break;
                }
                if last_pong.elapsed() > interval * 2 {
                    tracing::warn!(%runner, "runner channel missed its pongs; closing");
                    let _ = send(&outlet, close(1001, "ping timeout")).await;
                    break;
                }
                if send(&outlet, Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => {
                let _ = send(&outlet, close(1001, "server shutting down")).await;
                break;
            }
        }
    }
    drop(attachment);
    tracing::info!(%runner, connection, "runner channel closed");
}

/// Detaches a channel from the bus however `serve` ends, a panic included: the delivery stops
/// writing to it, and the socket closes with the last handle to its sending half (otherwise a
/// runner whose channel task died would stay attached, sent commands and never read).
struct Attachment {
    st: AppState,
    outlet: Arc<Outlet>,
    runner: Uuid,
    connection: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.outlet.set_direct(false);
        self.st.bus.detach_runner(self.runner, self.connection);
    }
}

/// The frame for an outbox entry. An assignment whose session moved on is dropped.
async fn render(st: &AppState, entry: &OutboxEntry) -> Option<Value> {
    let assigned = match &entry.command {
        RunnerCommand::AssignSession {
            session_id,
            assignment_id,
        } => Some(
            st.sessions
                .assignment_to_send(
                    entry.runner_id,
                    entry.message_id,
                    *session_id,
                    *assignment_id,
                )
                .await
                .ok()
                .flatten()?,
        ),
        _ => None,
    };
    command_frame(st, entry, assigned.as_ref())
}

/// `render` without waiting for anything; `None` when it would have to (an assignment that
/// moved on is withdrawn by `render`).
fn frame_now(st: &AppState, entry: &OutboxEntry) -> Option<Value> {
    let assigned = match &entry.command {
        RunnerCommand::AssignSession {
            session_id,
            assignment_id,
        } => Some(st.sessions.assignment_now(*session_id, *assignment_id)?),
        _ => None,
    };
    command_frame(st, entry, assigned.as_ref())
}

/// An outbox entry's frame; `assigned` is the session an `assign_session` hands over.
fn command_frame(
    st: &AppState,
    entry: &OutboxEntry,
    assigned: Option<&SessionView>,
) -> Option<Value> {
    let mut frame = match (&entry.command, assigned) {
        (RunnerCommand::AssignSession { assignment_id, .. }, Some(view)) => json!({
            "type": "assign_session",
            "assignmentId": assignment_id,
            "session": session_detail_for_runner(view, st.clock.now_ms()),
        }),
        (command, _) => CommandFrame::of(command)?.to_value(),
    };
    frame["messageId"] = json!(entry.message_id);
    frame["timestamp"] = json!(format_ms(st.clock.now_ms()));
    Some(frame)
}

fn ack(message_id: Option<&Value>, data: Option<Value>) -> Vec<Value> {
    let Some(id) = message_id else {
        return Vec::new();
    };
    let mut f = json!({"type": "ack", "messageId": id});
    if let Some(d) = data {
        f["data"] = d;
    }
    vec![f]
}

/// Sends `replies` in order; false once the socket failed.
async fn send_all(outlet: &Outlet, replies: Vec<Value>) -> bool {
    for reply in replies {
        if send(outlet, Message::text(wire::text(reply)))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Starts storing a frame of `STORED_IN_ORDER`; the future answers it. Its first poll, done
/// here, hands the write to the store writer, so writes reach the writer in the order their
/// frames arrived (a chunk's offset is checked against the one before it, a final state comes
/// after the output before it).
async fn start_storing(
    st: &AppState,
    p: &Caller,
    runner: Uuid,
    frame: Value,
) -> BoxFuture<'static, Vec<Value>> {
    let (st, p) = (st.clone(), p.clone());
    let mut storing: BoxFuture<'static, Vec<Value>> =
        Box::pin(async move { handle(&st, &p, runner, frame).await });
    match std::future::poll_fn(|cx| Poll::Ready(storing.as_mut().poll(cx))).await {
        Poll::Ready(replies) => Box::pin(std::future::ready(replies)),
        Poll::Pending => storing,
    }
}

/// A frame from the runner as JSON, or the error frame that answers it.
fn parse(text: &str) -> Result<Value, Vec<Value>> {
    serde_json::from_str::<Value>(text).map_err(|_| {
        vec![error_frame(
            SocketError::InvalidMessage.code(),
            "frame is not valid JSON",
            None,
        )]
    })
}

/// One frame from the runner; returns the frames to answer with.
async fn handle(st: &AppState, p: &Principal, runner: Uuid, frame: Value) -> Vec<Value> {
    let message_id = frame.get("messageId").filter(|v| !v.is_null()).cloned();
    let mid = message_id.as_ref();
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let session = frame
        .get("sessionId")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    const KNOWN: &[&str] = &[
        "ack",
        "heartbeat",
        "session_state",
        "terminal_output",
        "usage",
        "approval_request",
    ];
    if !KNOWN.contains(&kind.as_str()) {
        return vec![error_frame(
            SocketError::UnknownMessageType.code(),
            &format!("unknown message type `{kind}`"),
            mid,
        )];
    }
    let body = Body(Some(frame));
    let outcome: Result<Vec<Value>, DomainError> = async {
        let session =
            || session.ok_or_else(|| DomainError::invalid("sessionId", "must be a session id"));
        match kind.as_str() {
            "ack" => {
                let id = mid
                    .and_then(Value::as_str)
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| {
                        DomainError::invalid("messageId", "must be the id of a command")
                    })?;
                st.runners.acknowledge(runner, id).await?;
                Ok(Vec::new())
            }
            "heartbeat" => {
                let hb = parse_heartbeat(&body)?;
                let mut f = beat(st, p, runner, hb)?;
                f["type"] = json!("heartbeat_ack");
                if let Some(id) = mid {
                    f["messageId"] = id.clone();
                }
                Ok(vec![f])
            }
            "session_state" => {
                let (assignment, state, error) = parse_state_report(&body)?;
                st.sessions
                    .report_state(p, session()?, assignment, state, error)
                    .await?;
                Ok(ack(mid, None))
            }
            "terminal_output" => {
                let o = parse_output(&body)?;
                let Some(offset) = o.offset else {
                    return Err(DomainError::invalid("offset", "is required on the channel"));
                };
                let sid = session()?;
                match st
                    .sessions
                    .append_output(p, sid, o.assignment, o.stream, o.data, Some(offset))
                    .await
                {
                    Ok(seq) => Ok(ack(mid, Some(json!({"seq": seq})))),
                    Err(DomainError::Conflict {
                        kind: Conflict::OutputOffsetMismatch,
                        details,
                        ..
                    }) => {
                        let held = match details {
                            Some(ConflictDetails::OutputOffset { held }) => held,
                            _ => 0,
                        };
                        Ok(vec![
                            json!({"type": "resync", "sessionId": sid, "offset": held}),
                        ])
                    }
                    Err(e) => Err(e),
                }
            }
            "usage" => {
                let (assignment, update) = parse_usage(&body)?;
                st.sessions
                    .update_usage(p, session()?, assignment, update)
                    .await?;
                Ok(ack(mid, None))
            }
            "approval_request" => {
                let (assignment, ask) = parse_approval_request(&body)?;
                let approval = st
                    .sessions
                    .request_approval(p, session()?, assignment, ask)
                    .await?;
                Ok(ack(mid, Some(approval_request(&approval))))
            }
            _ => Ok(Vec::new()),
        }
    }
    .await;
    match outcome {
        Ok(frames) => frames,
        Err(e) => {
            let e = ApiError::from(e);
            let mut f = error_frame(e.code, &e.message, mid);
            if let Some(d) = e.details {
                f["details"] = d;
            }
            vec![f]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delivery writes a command itself only while the channel task has nothing in hand:
    /// not before the backlog is out, not while a frame of the runner awaits its answer, and
    /// not while a command handed to the task before is unsent (it would overtake it).
    #[test]
    fn the_delivery_writes_a_command_only_when_nothing_would_go_before_it() {
        let mut s = OutletState::default();
        // Committed while the backlog is read: queued, and its copy dropped after the backlog
        // sent it.
        assert_eq!(s.route(1), Route::Queue, "the backlog is not out yet");
        s.queue_one();
        assert!(s.take(1), "the backlog sends 1");
        assert_eq!(s.route(1), Route::Skip);
        assert!(!s.take(1), "the queued copy of 1 is dropped");
        s.sent();
        s.direct = true;
        assert_eq!(s.route(2), Route::Write);
        s.sent_upto = 2;
        assert_eq!(s.route(2), Route::Skip, "written already");

        // Command 3 came while a frame awaited its answer: queued.
        s.direct = false;
        assert_eq!(s.route(3), Route::Queue);
        s.queue_one();
        // The answer went out; 3 is still in the queue, so 4 goes after it.
        s.direct = true;
        assert_eq!(s.route(4), Route::Queue);
        s.queue_one();
        assert!(s.take(3));
        s.sent();
        assert_eq!(s.route(5), Route::Queue, "4 is still queued");
        s.queue_one();
        assert!(s.take(4));
        s.sent();
        assert!(s.take(5));
        s.sent();
        assert_eq!(s.route(6), Route::Write, "nothing left in the queue");
    }
}
