//! `GET /api/v1/runners/{id}/channel`: the runner's WebSocket.
//!
//! Down: every command in the runner's outbox, oldest first, then new ones as they commit;
//! each stays in the outbox until the runner acks its `messageId`, so a reconnect replays what
//! was not acknowledged. Up: state, output, usage, approval requests and heartbeats, each
//! handled by the same domain calls as the REST endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
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
use crate::metrics;
use crate::runners::model::{OutboxEntry, RunnerCommand};

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
async fn send(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    msg: Message,
) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
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
    let (mut sink, mut stream) = socket.split();
    let connection = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let (tx, mut commands) = mpsc::unbounded_channel();
    // Attach before reading the outbox: a command committed in between arrives both ways and
    // is sent once (by seq).
    st.bus.attach_runner(runner, connection, tx);
    let mut sent_upto = 0u64;
    let mut shutdown = st.shutdown.clone();
    let interval = st.config.websocket.heartbeat_interval;
    let max_frame = st.config.websocket.max_frame_bytes;
    let mut ping = tokio::time::interval(interval);
    ping.tick().await;
    let mut last_pong = tokio::time::Instant::now();

    let backlog = st.runners.outbox(runner).await.unwrap_or_default();
    let mut alive = true;
    for entry in backlog {
        sent_upto = entry.seq;
        if let Some(frame) = render(&st, &entry).await
            && send(&mut sink, Message::text(wire::text(frame)))
                .await
                .is_err()
        {
            alive = false;
            break;
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
    while alive {
        tokio::select! {
            Some(replies) = storing.next(), if !storing.is_empty() => {
                alive = send_all(&mut sink, replies).await;
            }
            incoming = stream.next(), if storing.len() < STORING_AT_ONCE => {
                let Some(Ok(msg)) = incoming else { break };
                if msg.is_close() {
                    break;
                }
                if p.is_revoked() {
                    let _ = send(&mut sink, close(1008, "token revoked")).await;
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
                            storing.push_back(start_storing(&st, &p, runner, frame).await);
                            continue;
                        }
                        Ok(frame) => {
                            // Whatever came before it is answered first.
                            while let Some(replies) = storing.next().await {
                                alive = alive && send_all(&mut sink, replies).await;
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
                    alive = send_all(&mut sink, replies).await;
                } else {
                    // After the answers to the output before it.
                    storing.push_back(Box::pin(std::future::ready(replies)));
                }
            }
            Some(entry) = commands.recv() => {
                if entry.seq <= sent_upto {
                    continue;
                }
                sent_upto = entry.seq;
                if !storing.is_empty() {
                    // The command may come from the commit of a frame still waiting here for
                    // its answer (an approval request that a policy decided at once): it goes
                    // after that answer, so a runner learns the approval's id before its
                    // decision, as when frames were stored one at a time.
                    let st = st.clone();
                    storing.push_back(Box::pin(async move {
                        render(&st, &entry).await.into_iter().collect()
                    }));
                    continue;
                }
                if let Some(frame) = render(&st, &entry).await
                    && send(&mut sink, Message::text(wire::text(frame))).await.is_err()
                {
                    break;
                }
            }
            _ = ping.tick() => {
                if p.is_revoked() {
                    let _ = send(&mut sink, close(1008, "token revoked")).await;
                    break;
                }
                if last_pong.elapsed() > interval * 2 {
                    tracing::warn!(%runner, "runner channel missed its pongs; closing");
                    let _ = send(&mut sink, close(1001, "ping timeout")).await;
                    break;
                }
                if send(&mut sink, Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => {
                let _ = send(&mut sink, close(1001, "server shutting down")).await;
                break;
            }
        }
    }
    st.bus.detach_runner(runner, connection);
    tracing::info!(%runner, connection, "runner channel closed");
}

/// The frame for an outbox entry. An assignment whose session moved on is dropped.
async fn render(st: &AppState, entry: &OutboxEntry) -> Option<Value> {
    let mut frame = match &entry.command {
        RunnerCommand::AssignSession {
            session_id,
            assignment_id,
        } => {
            let view = st
                .sessions
                .assignment_to_send(
                    entry.runner_id,
                    entry.message_id,
                    *session_id,
                    *assignment_id,
                )
                .await
                .ok()
                .flatten()?;
            json!({
                "type": "assign_session",
                "assignmentId": assignment_id,
                "session": session_detail_for_runner(&view, st.clock.now_ms()),
            })
        }
        command => CommandFrame::of(command)?.to_value(),
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
async fn send_all(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    replies: Vec<Value>,
) -> bool {
    for reply in replies {
        if send(sink, Message::text(wire::text(reply))).await.is_err() {
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
