//! `GET /api/v1/ws`: the dashboard stream.
//!
//! Each connection subscribes to the bus once authenticated, before it replays anything from the
//! store, so output written during a `subscribe_session` is either in the replay or still in
//! the bus buffer; the per-session "sent up to seq" mark drops whatever both contain. A client
//! that falls so far behind that the bus buffer overtakes it, or whose socket stops taking
//! frames, is disconnected (1013) instead of slowing anyone else.

use std::collections::HashMap;
use std::time::Duration;

use std::collections::VecDeque;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;
use warp::Filter;
use warp::http::{HeaderMap, header};

use super::upgrade::{Handshake, Socket};
use super::wire;
use super::wire::frames::{SocketError, error_frame};

use super::AppState;
use super::envelope::{ApiResult, Success};
use super::error::{ApiError, reject};
use crate::auth::{Caller, Principal};
use crate::clock::format_ms;
use crate::error::{DomainError, Entity};
use crate::events::model::{BusEvent, DomainEvent};
use crate::events::render;
use crate::metrics;
use crate::realtime::{Route, Slot, Subscriptions};

/// A client whose socket takes no frame for this long is too slow.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Output replayed per store read during `subscribe_session`.
const REPLAY_PAGE: u64 = 64;
/// Keystrokes of several `terminal_input` frames stored as one command: at most this much.
const MAX_COALESCED_INPUT: usize = 64 * 1024;
/// Frames read ahead, without waiting, to find more input for the same session.
const MAX_LOOKAHEAD: usize = 256;

/// What the socket gave, read ahead of handling (the end and errors included, in order).
type Incoming = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// The next thing from the socket: what was read ahead first.
async fn next_incoming(
    lookahead: &mut VecDeque<Incoming>,
    stream: &mut SplitStream<Socket>,
) -> Incoming {
    match lookahead.pop_front() {
        Some(incoming) => incoming,
        None => stream.next().await,
    }
}

/// Keystrokes for one session from one `terminal_input` frame.
struct TypedInput {
    session: Uuid,
    data: String,
    message_id: Option<Value>,
}

pub fn route(state: &AppState) -> warp::filters::BoxedFilter<(ApiResult,)> {
    let st = state.clone();
    warp::path!("ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
        .and_then(
            move |headers: HeaderMap, query: HashMap<String, String>, upgrade| {
                let st = st.clone();
                async move { upgrade_request(st, &headers, &query, upgrade) }
            },
        )
        .boxed()
}

/// Checks the WebSocket handshake and the token, answers 101 and serves the socket once the
/// connection is upgraded.
fn upgrade_request(
    st: AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<ApiResult, warp::Rejection> {
    let handshake = Handshake::check(headers, upgrade)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .or(query.get("token").map(String::as_str))
        .map(|t| t.trim().to_owned());
    let caller = if st.config.auth.disabled {
        Some(std::sync::Arc::new(Principal::anonymous_admin()))
    } else {
        match token {
            // A token that was given must be valid; none at all may authenticate later.
            Some(t) => Some(
                st.auth
                    .authenticate(&t)
                    .ok_or_else(|| reject(ApiError::unauthorized()))?,
            ),
            None => None,
        }
    };
    Ok(Ok(Success::Raw(handshake.accept(
        st.config.websocket.max_frame_bytes,
        move |socket| Connection::run(st, socket, caller),
    ))))
}

/// The next bus event, or never for a connection not yet subscribed.
async fn next_event(
    bus: &mut Option<tokio::sync::broadcast::Receiver<std::sync::Arc<BusEvent>>>,
) -> Result<std::sync::Arc<BusEvent>, RecvError> {
    match bus {
        Some(bus) => bus.recv().await,
        None => std::future::pending().await,
    }
}

fn now_stamp(st: &AppState) -> String {
    format_ms(st.clock.now_ms())
}

/// Why a connection ends.
enum Close {
    /// The peer went away or the socket failed.
    Gone,
    /// We close with this code and reason.
    With(u16, &'static str),
}

struct Connection {
    st: AppState,
    sink: SplitSink<Socket, Message>,
    caller: Option<(Caller, Slot)>,
    subs: Subscriptions,
}

impl Connection {
    async fn run(st: AppState, socket: Socket, caller: Option<Caller>) {
        let _counted = st.metrics.websocket_client(metrics::Socket::Dashboard);
        let (sink, mut stream) = socket.split();
        // Subscribe to the bus once authenticated (nothing is sent before: an anonymous socket
        // is not woken by every event), and before anything is read from the store for it:
        // nothing committed from then on can be missed.
        let mut bus = caller.as_ref().map(|_| st.bus.subscribe());
        let sign_in_by = tokio::time::Instant::now() + st.config.websocket.auth_timeout;
        let mut shutdown = st.shutdown.clone();
        let interval = st.config.websocket.heartbeat_interval;
        let mut conn = Connection {
            st,
            sink,
            caller: None,
            subs: Subscriptions::default(),
        };
        let client_id = crate::clock::random_uuid();
        let welcome =
            json!({"type": "event", "event": "connected", "data": {"clientId": client_id}});
        let mut outcome = conn.send(welcome).await;
        if outcome.is_ok()
            && let Some(caller) = caller
        {
            outcome = conn.sign_in(caller, None).await;
        }
        let mut ping = tokio::time::interval(interval);
        ping.tick().await;
        let mut last_pong = tokio::time::Instant::now();
        let mut lookahead = VecDeque::new();
        while outcome.is_ok() {
            outcome = tokio::select! {
                incoming = next_incoming(&mut lookahead, &mut stream) => match incoming {
                    Some(Ok(msg)) if msg.is_close() => Err(Close::Gone),
                    Some(Ok(msg)) if msg.is_pong() => {
                        last_pong = tokio::time::Instant::now();
                        Ok(())
                    }
                    Some(Ok(msg)) if msg.is_ping() => Ok(()),
                    Some(Ok(_)) if conn.revoked() => Err(Close::With(1008, "token revoked")),
                    Some(Ok(msg)) => {
                        let outcome = match conn.as_input(&msg) {
                            // Typing: what else was typed into the session meanwhile goes
                            // with it, as one command.
                            Some(first) => {
                                let inputs = conn.gather_input(first, &mut lookahead, &mut stream);
                                conn.type_input(inputs).await
                            }
                            None => conn.on_frame(&msg).await,
                        };
                        if bus.is_none() && conn.caller.is_some() {
                            bus = Some(conn.st.bus.subscribe());
                        }
                        outcome
                    }
                    _ => Err(Close::Gone),
                },
                _ = tokio::time::sleep_until(sign_in_by), if conn.caller.is_none() => {
                    Err(Close::With(1008, "authentication timeout"))
                }
                event = next_event(&mut bus) => match event {
                    Ok(event) => conn.on_event(&event).await,
                    Err(RecvError::Lagged(_)) => Err(Close::With(1013, "too slow: fell behind the stream")),
                    Err(RecvError::Closed) => Err(Close::With(1001, "server shutting down")),
                },
                _ = ping.tick() => {
                    if conn.revoked() {
                        Err(Close::With(1008, "token revoked"))
                    } else if last_pong.elapsed() > interval * 2 {
                        Err(Close::With(1001, "ping timeout"))
                    } else {
                        conn.deliver(Message::Ping(Default::default())).await
                    }
                }
                _ = shutdown.changed() => Err(Close::With(1001, "server shutting down")),
            };
        }
        if let Err(Close::With(code, reason)) = &outcome {
            tracing::info!(code, reason, "closing a dashboard connection");
        }
        // Send our Close and read until the peer's (so the socket is not reset under it). A
        // peer that stopped reading may never take it: try briefly, then drop the socket.
        let goodbye = async {
            if let Err(Close::With(code, reason)) = outcome {
                let close = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                let _ = conn.sink.send(Message::Close(Some(close))).await;
            }
            while let Some(Ok(msg)) = stream.next().await {
                if msg.is_close() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }

    async fn deliver(&mut self, msg: Message) -> Result<(), Close> {
        match tokio::time::timeout(SEND_TIMEOUT, self.sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            // The write buffer is full (or the socket failed): a Close frame would not fit
            // either, so the connection is dropped.
            Ok(Err(_)) => Err(Close::Gone),
            Err(_) => Err(Close::With(1008, "too slow: socket not draining")),
        }
    }

    async fn send(&mut self, mut frame: Value) -> Result<(), Close> {
        frame["timestamp"] = json!(now_stamp(&self.st));
        self.deliver(Message::text(wire::text(frame))).await
    }

    async fn error(
        &mut self,
        code: &str,
        message: &str,
        message_id: Option<&Value>,
    ) -> Result<(), Close> {
        self.send(error_frame(code, message, message_id)).await
    }

    async fn reply(&mut self, mut frame: Value, message_id: Option<&Value>) -> Result<(), Close> {
        if let Some(id) = message_id {
            frame["messageId"] = id.clone();
        }
        self.send(frame).await
    }

    fn revoked(&self) -> bool {
        self.caller.as_ref().is_some_and(|(c, _)| c.is_revoked())
    }

    /// Answers with `{type: event, event, data}`.
    async fn announce(
        &mut self,
        event: &str,
        data: Value,
        message_id: Option<&Value>,
    ) -> Result<(), Close> {
        self.reply(
            json!({"type": "event", "event": event, "data": data}),
            message_id,
        )
        .await
    }

    /// Takes a connection slot for the caller; over the limit, the connection closes.
    async fn sign_in(&mut self, caller: Caller, message_id: Option<&Value>) -> Result<(), Close> {
        // With authentication off every caller is the same anonymous admin: limit per
        // connection instead of sharing one token's ten slots among everyone.
        let key = if caller.token_id.is_nil() {
            crate::clock::random_uuid()
        } else {
            caller.token_id
        };
        let Some(slot) = self.st.realtime.acquire(key) else {
            self.error(
                SocketError::ConnectionLimit.code(),
                "Too many connections for this token",
                message_id,
            )
            .await?;
            return Err(Close::With(1008, "connection limit"));
        };
        let data = json!({"kind": caller.kind.as_str(), "orgId": caller.org_id});
        self.caller = Some((caller, slot));
        self.announce("authenticated", data, message_id).await
    }

    async fn on_frame(&mut self, msg: &Message) -> Result<(), Close> {
        let max_frame = self.st.config.websocket.max_frame_bytes;
        if msg.len() > max_frame {
            return self
                .error(
                    SocketError::MessageTooLarge.code(),
                    &format!("Frames are limited to {max_frame} bytes"),
                    None,
                )
                .await;
        }
        let Some(frame) = msg
            .to_text()
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
        else {
            return self
                .error(
                    SocketError::InvalidMessage.code(),
                    "Frames must be JSON objects",
                    None,
                )
                .await;
        };
        let mid = frame.get("messageId").filter(|v| !v.is_null()).cloned();
        let mid = mid.as_ref();
        let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "ping" => return self.reply(json!({"type": "pong"}), mid).await,
            "authenticate" => return self.authenticate(&frame, mid).await,
            _ if self.caller.is_none() => {
                return self
                    .error(
                        SocketError::Unauthorized.code(),
                        "Authentication required",
                        mid,
                    )
                    .await;
            }
            "subscribe_session" | "unsubscribe_session" | "subscribe_org" | "terminal_input" => {}
            _ => {
                return self
                    .error(
                        SocketError::UnknownMessageType.code(),
                        &format!("Unknown message type `{kind}`"),
                        mid,
                    )
                    .await;
            }
        }
        let Some((caller, _)) = &self.caller else {
            return self
                .error(
                    SocketError::Unauthorized.code(),
                    "Authentication required",
                    mid,
                )
                .await;
        };
        let caller = caller.clone();
        let result = match kind {
            "subscribe_session" => self.subscribe_session(&caller, &frame, mid).await,
            "unsubscribe_session" => self.unsubscribe_session(&frame, mid).await,
            "subscribe_org" => self.subscribe_org(&caller, &frame, mid).await,
            _ => self.terminal_input(&caller, &frame, mid).await,
        };
        match result {
            Ok(sent) => sent,
            Err(e) => {
                let e = ApiError::from(e);
                self.error(e.code, &e.message, mid).await
            }
        }
    }

    async fn authenticate(&mut self, frame: &Value, mid: Option<&Value>) -> Result<(), Close> {
        if self.caller.is_some() {
            return self
                .reply(json!({"type": "event", "event": "authenticated"}), mid)
                .await;
        }
        let caller = frame
            .get("token")
            .and_then(Value::as_str)
            .and_then(|t| self.st.auth.authenticate(t.trim()));
        match caller {
            Some(caller) => self.sign_in(caller, mid).await,
            None => {
                self.error(SocketError::Unauthorized.code(), "Invalid token", mid)
                    .await
            }
        }
    }

    /// Subscribes, replays stored output after `afterSeq`, then lets live output follow.
    async fn subscribe_session(
        &mut self,
        caller: &Caller,
        frame: &Value,
        mid: Option<&Value>,
    ) -> Result<Result<(), Close>, DomainError> {
        let id = session_id(frame)?;
        let after = match frame.get("afterSeq") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| DomainError::invalid("afterSeq", "must be a whole number ≥ 0"))?,
        };
        // Reading its output is the right the stream needs (org or admin; another org's
        // session is not found); check it before subscribing.
        self.st.sessions.output(caller, id, after, 1).await?;
        self.subs.sessions.insert(id, after);
        if let Err(c) = self
            .announce(
                "subscribed",
                json!({"sessionId": id, "afterSeq": after}),
                mid,
            )
            .await
        {
            return Ok(Err(c));
        }
        let mut sent = after;
        loop {
            let chunks = self
                .st
                .sessions
                .output(caller, id, sent, REPLAY_PAGE)
                .await?;
            let Some(last) = chunks.last().map(|c| c.seq) else {
                break;
            };
            for c in &chunks {
                let frame = render::terminal_frame(id, c);
                if let Err(close) = self.deliver(Message::text(frame)).await {
                    return Ok(Err(close));
                }
                self.st.metrics.terminal_bytes_sent(c.data.len());
            }
            sent = last;
            self.subs.sessions.insert(id, sent);
        }
        Ok(Ok(()))
    }

    async fn unsubscribe_session(
        &mut self,
        frame: &Value,
        mid: Option<&Value>,
    ) -> Result<Result<(), Close>, DomainError> {
        let id = session_id(frame)?;
        if self.subs.sessions.remove(&id).is_none() {
            return Ok(self
                .error(
                    SocketError::NotSubscribed.code(),
                    "This session is not subscribed",
                    mid,
                )
                .await);
        }
        Ok(self
            .announce("unsubscribed", json!({"sessionId": id}), mid)
            .await)
    }

    async fn subscribe_org(
        &mut self,
        caller: &Caller,
        frame: &Value,
        mid: Option<&Value>,
    ) -> Result<Result<(), Close>, DomainError> {
        let org = frame
            .get("orgId")
            .and_then(Value::as_str)
            .filter(|o| crate::auth::is_org_slug(o))
            .ok_or_else(|| DomainError::invalid("orgId", "must be an org id"))?;
        if !caller.sees_org(org) {
            return Err(DomainError::forbidden("this token may not watch that org"));
        }
        self.subs.orgs.insert(org.to_owned());
        Ok(self
            .announce("subscribed", json!({"orgId": org}), mid)
            .await)
    }

    async fn terminal_input(
        &mut self,
        caller: &Caller,
        frame: &Value,
        mid: Option<&Value>,
    ) -> Result<Result<(), Close>, DomainError> {
        let id = session_id(frame)?;
        let data = frame
            .get("data")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| DomainError::invalid("data", "must be a non-empty string"))?;
        if !self.subs.sessions.contains_key(&id) {
            return Ok(self
                .error(
                    SocketError::NotSubscribed.code(),
                    "Subscribe to the session before typing into it",
                    mid,
                )
                .await);
        }
        self.st
            .sessions
            .terminal_input(caller, id, data.to_owned())
            .await?;
        Ok(self
            .announce("input_sent", json!({"sessionId": id}), mid)
            .await)
    }

    /// `msg` as keystrokes this connection may send as they are: a `terminal_input` frame with
    /// valid fields for a session it is subscribed to. Anything else (errors included) is
    /// handled frame by frame.
    fn as_input(&self, msg: &Message) -> Option<TypedInput> {
        if self.caller.is_none() || msg.len() > self.st.config.websocket.max_frame_bytes {
            return None;
        }
        let text = msg.to_text().ok()?;
        // Most frames are not typing: skip parsing them twice.
        if !text.contains("terminal_input") {
            return None;
        }
        let frame: Value = serde_json::from_str(text).ok()?;
        if frame.get("type")?.as_str()? != "terminal_input" {
            return None;
        }
        let session = session_id(&frame).ok()?;
        if !self.subs.sessions.contains_key(&session) {
            return None;
        }
        let data = frame.get("data")?.as_str().filter(|d| !d.is_empty())?;
        Some(TypedInput {
            session,
            data: data.to_owned(),
            message_id: frame.get("messageId").filter(|v| !v.is_null()).cloned(),
        })
    }

    /// `first` and the input for the same session right behind it among the frames that have
    /// already arrived (read ahead without waiting): a fast typist, or a paste sent as many
    /// frames, costs one command, one audit entry and one commit instead of one per frame.
    fn gather_input(
        &self,
        first: TypedInput,
        lookahead: &mut VecDeque<Incoming>,
        stream: &mut SplitStream<Socket>,
    ) -> Vec<TypedInput> {
        while lookahead.len() < MAX_LOOKAHEAD {
            match stream.next().now_or_never() {
                Some(incoming) => {
                    let more = matches!(incoming, Some(Ok(_)));
                    lookahead.push_back(incoming);
                    if !more {
                        break;
                    }
                }
                None => break,
            }
        }
        let mut size = first.data.len();
        let mut inputs = vec![first];
        loop {
            let next = match lookahead.front() {
                Some(Some(Ok(msg))) => self.as_input(msg),
                _ => None,
            };
            match next {
                Some(input)
                    if input.session == inputs[0].session
                        && size + input.data.len() <= MAX_COALESCED_INPUT =>
                {
                    size += input.data.len();
                    inputs.push(input);
                    lookahead.pop_front();
                }
                _ => return inputs,
            }
        }
    }

    /// Sends `inputs` (one session's, in order) as one command; each frame gets its answer.
    async fn type_input(&mut self, inputs: Vec<TypedInput>) -> Result<(), Close> {
        let Some((caller, _)) = &self.caller else {
            return Ok(());
        };
        let caller = caller.clone();
        let session = inputs[0].session;
        let data: String = inputs.iter().map(|i| i.data.as_str()).collect();
        match self
            .st
            .sessions
            .terminal_input(&caller, session, data)
            .await
        {
            Ok(()) => {
                for input in &inputs {
                    self.announce(
                        "input_sent",
                        json!({"sessionId": session}),
                        input.message_id.as_ref(),
                    )
                    .await?;
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for input in &inputs {
                    self.error(e.code, &e.message, input.message_id.as_ref())
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, event: &BusEvent) -> Result<(), Close> {
        let Some((caller, _)) = &self.caller else {
            return Ok(());
        };
        match self.subs.route(event, caller) {
            Route::Drop => Ok(()),
            Route::Terminal => {
                let (Some(id), DomainEvent::TerminalOutput(chunk)) =
                    (event.session_id, &event.event)
                else {
                    return Ok(());
                };
                self.subs.sessions.insert(id, chunk.seq);
                // Rendered once for every watcher; each sends the same bytes (no copy here).
                let shared = event.rendered.get_or_init(|| {
                    std::sync::Arc::new(Utf8Bytes::from(render::terminal_frame(id, chunk)))
                });
                let text = match shared.downcast_ref::<Utf8Bytes>() {
                    Some(text) => text.clone(),
                    None => Utf8Bytes::from(render::terminal_frame(id, chunk)),
                };
                self.deliver(Message::Text(text)).await?;
                self.st.metrics.terminal_bytes_sent(chunk.data.len());
                Ok(())
            }
            Route::Session => self.send(render::session_frame(event)).await,
            Route::Fleet => self.send(render::fleet_frame(event)).await,
        }
    }
}

fn session_id(frame: &Value) -> Result<Uuid, DomainError> {
    let raw = frame
        .get("sessionId")
        .and_then(Value::as_str)
        .ok_or_else(|| DomainError::invalid("sessionId", "is required"))?;
    Uuid::parse_str(raw).map_err(|_| DomainError::NotFound(Entity::Session))
}
