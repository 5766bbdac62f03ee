//! The `acp` adapter: the Agent Client Protocol (Gemini CLI `--acp`, `village demo-agent`, any
//! ACP agent), spoken through the official SDK's client side.
//!
//! One ACP session per agent process: `initialize`, `session/new` in the workspace, the task as
//! the first `session/prompt`, then every line typed in the dashboard as a follow-up prompt once
//! the current turn is over. When a turn ends with nothing queued the adapter drops the
//! connection, which closes the agent's stdin; ACP agents exit on EOF, and the exit status is the
//! outcome unless the protocol failed first.
//!
//! Stop reasons: `end_turn` finishes the turn. Every other reason ends the session as failed:
//! `cancelled` (after a stop) as `cancelled`, `refusal` as `refused`, `max_tokens` and
//! `max_turn_requests` as `max tokens reached` and `max turn requests reached`: in each case the
//! agent gave up before doing what was asked, so COMPLETED would be a lie.
//!
//! Usage: ACP v1 reports the session's cumulative cost in `usage_update` notifications; in USD it
//! becomes `cost_usd`. Token totals exist only as the draft end-of-turn `usage` of the prompt
//! response (`unstable_end_turn_token_usage`); the prompt is sent untyped so that they are read
//! when an agent sends them. Nothing is estimated: the runner adds compute seconds itself.
//!
//! The SDK's handlers, spawned tasks and connection future are `Send`, so the connection runs on
//! the runner's own runtime: no `LocalSet`, no dedicated thread. Handlers run inside the SDK's
//! dispatch loop, so the one that waits for a human (permissions) spawns its work with
//! `ConnectionTo::spawn` and leaves the loop free for the agent's other traffic.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    AGENT_METHOD_NAMES, CancelNotification, ClientCapabilities, ContentBlock,
    FileSystemCapabilities, Implementation, InitializeRequest, NewSessionRequest, PermissionOption,
    PermissionOptionKind, Plan, PlanEntryStatus, PromptRequest, PromptResponse,
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionId, SessionNotification,
    SessionUpdate, StopReason, ToolCall, ToolCallContent, ToolCallStatus, ToolCallUpdate,
    ToolKind as AcpToolKind, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{
    Agent, Client, Error, ErrorCode, Lines, UntypedMessage, is_connection_terminated,
    is_incoming_transport_closed,
};
use futures_util::future::BoxFuture;
use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::render::{self, Step};
use super::{
    Adapter, AgentContext, AgentControl, ApprovalAsker, Decision, Outcome, OutputSink,
    PermissionRequest, ToolKind, UsageSink, UsageUpdate,
};
use crate::runner::process::{AgentIo, ExitInfo};

pub struct AcpAdapter;

impl Adapter for AcpAdapter {
    fn run(&self, cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let AgentContext {
                task,
                workspace,
                mut process,
                output,
                usage,
                approvals,
                control,
                ..
            } = cx;
            let Some(AgentIo::Pipes {
                stdin,
                stdout,
                stderr,
            }) = process.io.take()
            else {
                return Outcome::Failed("the acp adapter needs the agent on pipes".into());
            };
            let pgid = process.pgid;
            let exit = Box::pin(async move { process.wait().await });
            let parts = Parts {
                task,
                workspace,
                output,
                usage,
                approvals,
                control,
            };
            drive(stdin, stdout, Some(stderr), exit, Some(pgid), parts).await
        })
    }
}

/// What [`drive`] needs of the [`AgentContext`] besides the process.
struct Parts {
    task: String,
    workspace: PathBuf,
    output: OutputSink,
    usage: UsageSink,
    approvals: ApprovalAsker,
    control: mpsc::Receiver<AgentControl>,
}

/// How long an agent may take to exit once its stdin is closed before its process group gets a
/// SIGTERM: a well-behaved agent exits at once, and a stuck one would hold the session forever.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Newline-delimited JSON-RPC over any byte streams (the agent's pipes, or in-process pipes in
/// tests): the SDK's `ByteStreams` wants `futures::io` traits, these are tokio's.
pub(crate) fn line_transport<W, R>(
    writer: W,
    reader: R,
) -> Lines<
    impl Sink<String, Error = io::Error> + Send + 'static,
    impl Stream<Item = io::Result<String>> + Send + 'static,
>
where
    W: AsyncWrite + Send + Unpin + 'static,
    R: AsyncRead + Send + Unpin + 'static,
{
    let outgoing = futures_util::sink::unfold(writer, |mut writer, line: String| async move {
        writer.write_all(line.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await?;
        Ok::<_, io::Error>(writer)
    });
    let incoming =
        futures_util::stream::unfold(Some(BufReader::new(reader).lines()), |lines| async move {
            let mut lines = lines?;
            match lines.next_line().await {
                Ok(Some(line)) => Some((Ok(line), Some(lines))),
                Ok(None) => None,
                // A read error ends the stream after reporting it once.
                Err(e) => Some((Err(e), None)),
            }
        });
    Lines::new(Box::pin(outgoing), Box::pin(incoming))
}

/// How the conversation ended, before the process's exit is known.
enum Ended {
    /// Every turn ended with `end_turn`: the process's exit decides.
    Done,
    /// The protocol failed: this wins over the exit status.
    Failed(String),
    /// The agent closed its side mid-conversation: the exit status says why.
    Gone,
}

/// Speaks ACP with the agent on these streams until the session is over.
async fn drive<W, R, E>(
    stdin: W,
    stdout: R,
    stderr: Option<E>,
    exit: BoxFuture<'static, ExitInfo>,
    pgid: Option<i32>,
    parts: Parts,
) -> Outcome
where
    W: AsyncWrite + Send + Unpin + 'static,
    R: AsyncRead + Send + Unpin + 'static,
    E: AsyncRead + Send + Unpin + 'static,
{
    let Parts {
        task,
        workspace,
        output,
        usage,
        approvals,
        control,
    } = parts;
    // fs requests are checked against the real path, so symlinks cannot lead outside.
    let root = tokio::fs::canonicalize(&workspace)
        .await
        .unwrap_or_else(|_| workspace.clone());
    let view = View {
        root: root.clone(),
        ..View::default()
    };
    let shared = Arc::new(Shared {
        output,
        usage,
        approvals,
        root,
        stopping: watch::Sender::new(false),
        view: Mutex::new(view),
    });
    let stderr_task = stderr.map(|stderr| tokio::spawn(forward_stderr(stderr, shared.clone())));

    let mut conversation = Conversation {
        shared: shared.clone(),
        control,
        control_open: true,
        typing: render::LineInput::default(),
        queue: VecDeque::from([task]),
        session: None,
        stopping: false,
    };
    let on_update = shared.clone();
    let on_permission = shared.clone();
    let on_read = shared.clone();
    let on_write = shared.clone();
    let result = Client
        .v1()
        .name("village")
        .on_receive_notification(
            async move |notification: SessionNotification, _cx| {
                on_update.on_update(notification.update).await;
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest,
                        responder: Responder<RequestPermissionResponse>,
                        cx: ConnectionTo<Agent>| {
                let shared = on_permission.clone();
                cx.spawn(async move { shared.on_permission(request, responder).await })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: ReadTextFileRequest,
                        responder: Responder<ReadTextFileResponse>,
                        _cx| {
                responder.respond_with_result(on_read.read_text_file(request).await)
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: WriteTextFileRequest,
                        responder: Responder<WriteTextFileResponse>,
                        _cx| {
                responder.respond_with_result(on_write.write_text_file(request).await)
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(
            line_transport(stdin, stdout),
            async move |connection: ConnectionTo<Agent>| Ok(conversation.run(&connection).await),
        )
        .await;
    // The connection is gone: the agent's stdin is closed and it should exit now.
    let ended = match result {
        Ok(ended) => ended,
        Err(e) if is_incoming_transport_closed(&e) || is_connection_terminated(&e) => Ended::Gone,
        Err(e) => Ended::Failed(error_message(&e)),
    };
    let exit = wait_exit(exit, pgid).await;
    if let Some(task) = stderr_task {
        // The agent's stderr is closed once it has exited (unless a child of it keeps it open).
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    let outcome = match ended {
        Ended::Done => exit.outcome(),
        Ended::Failed(message) => Outcome::Failed(message),
        Ended::Gone => match exit.outcome() {
            Outcome::Completed => {
                Outcome::Failed("the agent exited before its turn was over".into())
            }
            failed => failed,
        },
    };
    if let Outcome::Failed(message) = &outcome {
        shared.show(render::error(message)).await;
    }
    outcome
}

async fn wait_exit(mut exit: BoxFuture<'static, ExitInfo>, pgid: Option<i32>) -> ExitInfo {
    match tokio::time::timeout(EXIT_GRACE, &mut exit).await {
        Ok(info) => info,
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            exit.await
        }
    }
}

/// The agent's stderr, dimmed: its logs and, more to the point, why it failed to start.
async fn forward_stderr<E: AsyncRead + Unpin>(stderr: E, shared: Arc<Shared>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        shared.show(render::note(&line)).await;
    }
}

/// The client's side of the conversation: requests, typed follow-ups and stops.
struct Conversation {
    shared: Arc<Shared>,
    control: mpsc::Receiver<AgentControl>,
    control_open: bool,
    typing: render::LineInput,
    /// Prompts not sent yet: the task, then completed typed lines.
    queue: VecDeque<String>,
    session: Option<SessionId>,
    /// A stop arrived: no further prompts.
    stopping: bool,
}

/// Why a request did not produce a response.
enum Interrupted {
    /// The agent answered with an error, or the connection failed.
    Error(Error),
    /// A stop arrived before there was a session to cancel.
    Stopped,
}

impl Conversation {
    async fn run(&mut self, connection: &ConnectionTo<Agent>) -> Ended {
        let initialize = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(
                ClientCapabilities::new()
                    .fs(FileSystemCapabilities::new()
                        .read_text_file(true)
                        .write_text_file(true))
                    // Terminals are not implemented: agents run their commands themselves.
                    .terminal(false),
            )
            .client_info(Implementation::new("village", env!("CARGO_PKG_VERSION")));
        let sent = connection.send_request(initialize).block_task();
        if let Err(e) = self.wait(connection, sent).await {
            return self.ended(e, "initialize");
        }
        let new_session = NewSessionRequest::new(self.shared.root.clone());
        let sent = connection.send_request(new_session).block_task();
        let session = match self.wait(connection, sent).await {
            Ok(response) => response.session_id,
            Err(e) => return self.ended(e, "session/new"),
        };
        self.session = Some(session.clone());

        let mut first = true;
        while let Some(text) = self.queue.pop_front() {
            if self.stopping {
                break;
            }
            if !first {
                self.shared.show(render::prompt(&text)).await;
            }
            first = false;
            let prompt = PromptRequest::new(session.clone(), vec![ContentBlock::from(text)]);
            // Untyped, so that the draft end-of-turn `usage` survives (see the module comment).
            let request = match UntypedMessage::new(AGENT_METHOD_NAMES.session_prompt, prompt) {
                Ok(request) => request,
                Err(e) => return Ended::Failed(error_message(&e)),
            };
            let sent = connection.send_request(request).block_task();
            let response = match self.wait(connection, sent).await {
                Ok(response) => response,
                Err(e) => return self.ended(e, ""),
            };
            let stop = match serde_json::from_value::<PromptResponse>(response.clone()) {
                Ok(parsed) => parsed.stop_reason,
                Err(e) => return Ended::Failed(format!("unreadable session/prompt answer: {e}")),
            };
            let usage = turn_usage(&response);
            if let Some(update) = &usage {
                self.shared.usage.report(update.clone());
            }
            self.shared
                .stop_line(stop, &usage.unwrap_or_default())
                .await;
            match stop {
                StopReason::EndTurn => {}
                StopReason::Cancelled => return Ended::Failed("cancelled".into()),
                StopReason::Refusal => return Ended::Failed("refused".into()),
                StopReason::MaxTokens => return Ended::Failed("max tokens reached".into()),
                StopReason::MaxTurnRequests => {
                    return Ended::Failed("max turn requests reached".into());
                }
                other => return Ended::Failed(format!("stopped: {}", serde_name(&other))),
            }
        }
        if self.stopping {
            Ended::Failed("cancelled".into())
        } else {
            Ended::Done
        }
    }

    fn ended(&self, interrupted: Interrupted, method: &str) -> Ended {
        match interrupted {
            Interrupted::Stopped => Ended::Failed("cancelled".into()),
            Interrupted::Error(e) if is_incoming_transport_closed(&e) => Ended::Gone,
            Interrupted::Error(e) if is_connection_terminated(&e) => Ended::Gone,
            Interrupted::Error(e) if method.is_empty() => Ended::Failed(error_message(&e)),
            Interrupted::Error(e) => Ended::Failed(format!("{method}: {}", error_message(&e))),
        }
    }

    /// Awaits a response while serving the dashboard: typed characters are echoed and collected,
    /// a stop becomes `session/cancel`.
    async fn wait<T>(
        &mut self,
        connection: &ConnectionTo<Agent>,
        response: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Interrupted> {
        let mut response = pin!(response);
        loop {
            tokio::select! {
                biased;
                result = &mut response => return result.map_err(Interrupted::Error),
                control = self.control.recv(), if self.control_open => match control {
                    None => self.control_open = false,
                    Some(AgentControl::Input(bytes)) => {
                        let typed = self.typing.feed(&bytes);
                        self.shared.write(typed.echo).await;
                        if !self.stopping {
                            self.queue.extend(typed.lines);
                        }
                    }
                    Some(AgentControl::Interrupt) => {
                        if self.stopping {
                            continue;
                        }
                        self.stopping = true;
                        // Pending and later permission requests are answered `cancelled`.
                        self.shared.stopping.send_replace(true);
                        let stopping = render::stop("stopping: session/cancel sent");
                        self.shared.show(stopping).await;
                        let Some(session) = &self.session else {
                            return Err(Interrupted::Stopped);
                        };
                        let cancel = CancelNotification::new(session.clone());
                        if let Err(e) = connection.send_notification(cancel) {
                            return Err(Interrupted::Error(e));
                        }
                    }
                },
            }
        }
    }
}

/// The draft end-of-turn token totals, if the agent sent them.
fn turn_usage(response: &Value) -> Option<UsageUpdate> {
    let usage = response.get("usage")?;
    let tokens_in = usage.get("inputTokens").and_then(Value::as_u64);
    let tokens_out = usage.get("outputTokens").and_then(Value::as_u64);
    (tokens_in.is_some() || tokens_out.is_some()).then(|| UsageUpdate {
        tokens_in,
        tokens_out,
        ..UsageUpdate::default()
    })
}

fn error_message(e: &Error) -> String {
    match &e.data {
        // Agents often put the useful part of a generic error in its data.
        Some(Value::String(detail)) if !e.message.contains(detail.as_str()) => {
            format!("{}: {detail}", e.message)
        }
        _ => e.message.clone(),
    }
}

/// The state the SDK's handlers share with the conversation.
struct Shared {
    output: OutputSink,
    usage: UsageSink,
    approvals: ApprovalAsker,
    /// The workspace, canonical: the agent's fs requests must stay inside it.
    root: PathBuf,
    /// Set by a stop: permission requests are answered `cancelled` from then on, as ACP requires
    /// after `session/cancel`.
    stopping: watch::Sender<bool>,
    view: Mutex<View>,
}

/// What the terminal shows so far, for rendering what comes next.
#[derive(Default)]
struct View {
    /// Streamed text left mid-line.
    open: Open,
    /// Tool calls by id, with their updates merged in.
    tools: HashMap<String, ToolCall>,
    /// Diffs already shown (tool call, path, text): an agent sends the same diff with the
    /// permission request and again with the completed update.
    diffs: HashSet<(String, PathBuf, u64)>,
    /// The workspace: paths inside it are shown relative to it.
    root: PathBuf,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Open {
    #[default]
    Nothing,
    Message,
    Thought,
}

impl View {
    /// Ends a streamed line so that the next output starts on its own line.
    fn break_line(&mut self) -> String {
        let open = std::mem::take(&mut self.open);
        if open == Open::Nothing {
            String::new()
        } else {
            "\r\n".into()
        }
    }

    fn text(&mut self, kind: Open, text: &str) -> String {
        if text.is_empty() {
            return String::new();
        }
        let mut out = if self.open == kind {
            String::new()
        } else {
            self.break_line()
        };
        out.push_str(&if kind == Open::Thought {
            render::thought_chunk(text)
        } else {
            render::text_chunk(text)
        });
        self.open = if text.ends_with('\n') {
            Open::Nothing
        } else {
            kind
        };
        out
    }

    fn tool_call(&mut self, call: ToolCall) -> String {
        let mut out = self.break_line();
        out.push_str(&tool_call_line(&call, &self.root));
        out.push_str(&self.tool_content(&call));
        self.tools.insert(call.tool_call_id.0.to_string(), call);
        out
    }

    fn tool_update(&mut self, update: ToolCallUpdate) -> String {
        let id = update.tool_call_id.0.to_string();
        let has_content = update.fields.content.is_some();
        let call = self
            .tools
            .entry(id.clone())
            .or_insert_with(|| ToolCall::new(update.tool_call_id.clone(), ""));
        let before = call.status;
        call.update(update.fields);
        let call = call.clone();
        // What the tool produced, then how it ended.
        let mut out = String::new();
        if has_content {
            out.push_str(&self.tool_content(&call));
        }
        if call.status != before {
            match call.status {
                ToolCallStatus::Completed => {
                    out.push_str(&render::tool_status(true, &title_of(&call)));
                }
                ToolCallStatus::Failed => {
                    let failed = format!("{} failed", title_of(&call));
                    out.push_str(&render::tool_status(false, &failed));
                }
                _ => {}
            }
        }
        if out.is_empty() {
            return out;
        }
        let mut rendered = self.break_line();
        rendered.push_str(&out);
        rendered
    }

    /// A tool call's content: diffs (each once), text cut short.
    fn tool_content(&mut self, call: &ToolCall) -> String {
        let id = call.tool_call_id.0.to_string();
        let mut out = String::new();
        for content in &call.content {
            match content {
                ToolCallContent::Diff(diff) => {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    diff.new_text.hash(&mut hasher);
                    diff.old_text.hash(&mut hasher);
                    let key = (id.clone(), diff.path.clone(), hasher.finish());
                    if self.diffs.insert(key) {
                        let mut path = render::shown_path(&self.root, &diff.path);
                        if diff.old_text.is_none() {
                            path.push_str(" (new file)");
                        }
                        let old = diff.old_text.as_deref().unwrap_or_default();
                        out.push_str(&render::diff(&path, old, &diff.new_text));
                    }
                }
                ToolCallContent::Content(content) => {
                    let text = block_text(&content.content);
                    if !text.trim().is_empty() {
                        let failed = call.status == ToolCallStatus::Failed;
                        out.push_str(&render::tool_result(&text, failed));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The tool call as known so far, with a permission request's fields merged in.
    fn merged(&self, update: &ToolCallUpdate) -> ToolCall {
        let mut call = self
            .tools
            .get(update.tool_call_id.0.as_ref())
            .cloned()
            .unwrap_or_else(|| ToolCall::new(update.tool_call_id.clone(), ""));
        call.update(update.fields.clone());
        call
    }
}

impl Shared {
    fn view(&self) -> MutexGuard<'_, View> {
        // A panic elsewhere leaves the view usable: it only holds rendering state.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn write(&self, bytes: impl Into<Vec<u8>>) {
        self.output.write(bytes).await;
    }

    /// Lines from [`render`], after any streamed text.
    async fn show(&self, lines: String) {
        let mut out = self.view().break_line();
        out.push_str(&lines);
        self.write(out).await;
    }

    async fn on_update(&self, update: SessionUpdate) {
        let out = match update {
            SessionUpdate::AgentMessageChunk(chunk) => {
                self.view().text(Open::Message, &block_text(&chunk.content))
            }
            SessionUpdate::AgentThoughtChunk(chunk) => {
                self.view().text(Open::Thought, &block_text(&chunk.content))
            }
            SessionUpdate::ToolCall(call) => self.view().tool_call(call),
            SessionUpdate::ToolCallUpdate(update) => self.view().tool_update(update),
            SessionUpdate::Plan(plan) => {
                let mut out = self.view().break_line();
                out.push_str(&render_plan(&plan));
                out
            }
            SessionUpdate::UsageUpdate(update) => {
                if let Some(cost) = update.cost
                    && cost.currency.eq_ignore_ascii_case("USD")
                {
                    self.usage.report(UsageUpdate {
                        cost_usd: Some(cost.amount),
                        ..UsageUpdate::default()
                    });
                }
                String::new()
            }
            // The user's own prompt echoed back, modes, commands, session titles: nothing the
            // terminal needs.
            _ => String::new(),
        };
        self.write(out).await;
    }

    async fn on_permission(
        &self,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) -> Result<(), Error> {
        // The session manager shows the request, and its answer, on lines of their own; what
        // the call would do comes first.
        let (ask, header) = {
            let mut view = self.view();
            let call = view.merged(&request.tool_call);
            let ask = permission_request(&call, &request);
            let mut header = view.break_line();
            header.push_str(&view.tool_content(&call));
            (ask, header)
        };
        self.write(header).await;
        let mut stopping = self.stopping.subscribe();
        let decision = if *stopping.borrow_and_update() {
            None
        } else {
            tokio::select! {
                decision = self.approvals.ask(ask) => Some(decision),
                _ = stopping.wait_for(|stopping| *stopping) => None,
            }
        };
        // A stop that raced the decision still wins: after session/cancel the only answer
        // allowed is `cancelled`.
        let decision = decision.filter(|_| !*self.stopping.borrow());
        let (outcome, note) = answer(decision.as_ref(), &request.options);
        if let Some(note) = note {
            self.show(render::note(&note)).await;
        }
        responder.respond(RequestPermissionResponse::new(outcome))
    }

    async fn read_text_file(
        &self,
        request: ReadTextFileRequest,
    ) -> Result<ReadTextFileResponse, Error> {
        let path = inside(&self.root, &request.path).await?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| fs_error(&request.path, "read", &e))?;
        let start = request
            .line
            .map_or(0, |line| line.saturating_sub(1) as usize);
        let text = match (request.line, request.limit) {
            (None, None) => text,
            (_, limit) => {
                let lines = text.split_inclusive('\n').skip(start);
                match limit {
                    Some(limit) => lines.take(limit as usize).collect(),
                    None => lines.collect(),
                }
            }
        };
        Ok(ReadTextFileResponse::new(text))
    }

    async fn write_text_file(
        &self,
        request: WriteTextFileRequest,
    ) -> Result<WriteTextFileResponse, Error> {
        let path = inside(&self.root, &request.path).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| fs_error(&request.path, "write", &e))?;
        }
        tokio::fs::write(&path, request.content.as_bytes())
            .await
            .map_err(|e| fs_error(&request.path, "write", &e))?;
        Ok(WriteTextFileResponse::new())
    }

    /// How a turn ended, with the tokens it reports; why a failed one failed follows when the
    /// session ends.
    async fn stop_line(&self, stop: StopReason, usage: &UsageUpdate) {
        self.show(match stop {
            StopReason::EndTurn => render::summary(true, usage),
            StopReason::Cancelled => render::stop("turn cancelled"),
            _ => render::summary(false, usage),
        })
        .await;
    }
}

/// The broker's view of an ACP permission request.
///
/// `tool` is the tool call's kind (`execute`, `edit`, …) or, for `other`, its programmatic
/// name or title. Deletes and moves count as file edits: they change files like an edit does.
fn permission_request(call: &ToolCall, request: &RequestPermissionRequest) -> PermissionRequest {
    let raw = call.raw_input.as_ref();
    let kind = match call.kind {
        AcpToolKind::Execute => ToolKind::Shell(
            raw.and_then(command_of)
                .unwrap_or_else(|| call.title.clone()),
        ),
        AcpToolKind::Edit | AcpToolKind::Delete | AcpToolKind::Move => {
            ToolKind::FileEdit(paths_of(call))
        }
        AcpToolKind::Read => {
            ToolKind::FileRead(paths_of(call).into_iter().next().unwrap_or_default())
        }
        AcpToolKind::Fetch => ToolKind::Fetch(
            raw.and_then(|raw| string_field(raw, &["url", "uri"]))
                .unwrap_or_else(|| call.title.clone()),
        ),
        _ => ToolKind::Other,
    };
    let tool = match call.kind {
        AcpToolKind::Other => call
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .or_else(|| (!call.title.is_empty()).then(|| call.title.clone()))
            .unwrap_or_else(|| "other".into()),
        kind => serde_name(&kind),
    };
    let description = if call.title.is_empty() {
        match &kind {
            ToolKind::Shell(command) => format!("run {command}"),
            ToolKind::FileEdit(paths) => format!("edit {}", paths.join(", ")),
            ToolKind::FileRead(path) => format!("read {path}"),
            ToolKind::Fetch(url) => format!("fetch {url}"),
            ToolKind::Other => tool.clone(),
        }
    } else {
        call.title.clone()
    };
    let input = match raw {
        Some(raw) => raw.clone(),
        None => serde_json::to_value(&request.tool_call).unwrap_or(Value::Null),
    };
    PermissionRequest {
        tool,
        kind,
        input,
        description,
        options: serde_json::to_value(&request.options).ok(),
    }
}

/// The agent's option for a decision, and a note when the agent hears something else than the
/// decision (the session manager shows the decision itself). An allow never picks a wider option
/// than the human gave (no `allow_always` for a one-time allow): with no matching option the
/// request is cancelled.
fn answer(
    decision: Option<&Decision>,
    options: &[PermissionOption],
) -> (RequestPermissionOutcome, Option<String>) {
    let pick = |kinds: &[PermissionOptionKind]| {
        kinds
            .iter()
            .find_map(|kind| options.iter().find(|option| option.kind == *kind))
    };
    let selected = |option: &PermissionOption| {
        RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option.option_id.clone()))
    };
    let Some(decision) = decision else {
        return (
            RequestPermissionOutcome::Cancelled,
            Some("permission request cancelled: the session is stopping".into()),
        );
    };
    let kinds: &[PermissionOptionKind] = match (decision.allow, decision.for_session) {
        (true, true) => &[
            PermissionOptionKind::AllowAlways,
            PermissionOptionKind::AllowOnce,
        ],
        (true, false) => &[PermissionOptionKind::AllowOnce],
        (false, _) => &[
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ],
    };
    match pick(kinds) {
        Some(option) => (selected(option), None),
        None => {
            let missing = if decision.allow { "allow" } else { "reject" };
            let note = format!("the agent offers no {missing} option for this answer: cancelled");
            (RequestPermissionOutcome::Cancelled, Some(note))
        }
    }
}

/// The command line in a shell tool's input: `command` (a string or an argv array), `cmd`, or
/// the input itself when it is a string.
fn command_of(raw: &Value) -> Option<String> {
    if let Value::String(command) = raw {
        return Some(command.clone());
    }
    let value = ["command", "cmd", "commandLine"]
        .iter()
        .find_map(|key| raw.get(*key))?;
    match value {
        Value::String(command) => Some(command.clone()),
        Value::Array(argv) => {
            let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            Some(shlex::try_join(argv.iter().copied()).unwrap_or_else(|_| argv.join(" ")))
        }
        _ => None,
    }
}

fn string_field(raw: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| raw.get(*key).and_then(Value::as_str))
        .map(str::to_string)
}

/// The files a tool call touches: its locations, its diffs, a path in its input.
fn paths_of(call: &ToolCall) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    let mut add = |path: String| {
        if !path.is_empty() && !paths.contains(&path) {
            paths.push(path);
        }
    };
    for location in &call.locations {
        add(location.path.to_string_lossy().into_owned());
    }
    for content in &call.content {
        if let ToolCallContent::Diff(diff) = content {
            add(diff.path.to_string_lossy().into_owned());
        }
    }
    if let Some(raw) = &call.raw_input
        && let Some(path) = string_field(raw, &["path", "file_path", "filePath", "abs_path"])
    {
        add(path);
    }
    paths
}

/// `path` if it is absolute and, symlinks resolved, inside `root`.
async fn inside(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    if !path.is_absolute() {
        return Err(Error::new(
            ErrorCode::INVALID_PARAMS,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    // The deepest existing ancestor, resolved, with the rest (not created yet) appended.
    let mut existing = normal.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        match tokio::fs::canonicalize(existing).await {
            Ok(resolved) => break resolved,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => break existing.to_path_buf(),
            },
        }
    };
    let resolved = rest
        .iter()
        .rev()
        .fold(resolved, |path, name| path.join(name));
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(Error::new(
            ErrorCode::INVALID_PARAMS,
            format!("{} is outside the workspace", path.display()),
        ))
    }
}

fn fs_error(path: &Path, action: &str, e: &io::Error) -> Error {
    let code = if e.kind() == io::ErrorKind::NotFound {
        ErrorCode::RESOURCE_NOT_FOUND
    } else {
        ErrorCode::INTERNAL_ERROR
    };
    Error::new(code, format!("cannot {action} {}: {e}", path.display()))
}

/// The serde name of a protocol enum value (`execute`, `end_turn`, …).
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => "unknown".into(),
    }
}

fn block_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(text) => text.text.clone(),
        ContentBlock::ResourceLink(link) => format!("[{}]({})", link.name, link.uri),
        ContentBlock::Image(_) => "[image]".into(),
        ContentBlock::Audio(_) => "[audio]".into(),
        _ => String::new(),
    }
}

fn title_of(call: &ToolCall) -> String {
    if call.title.is_empty() {
        serde_name(&call.kind)
    } else {
        call.title.clone()
    }
}

/// `▸ kind title  what the input is about` (paths in the workspace relative to it).
fn tool_call_line(call: &ToolCall, root: &Path) -> String {
    let kind = serde_name(&call.kind);
    let name = if call.title.is_empty() {
        kind
    } else {
        format!("{kind} {}", call.title)
    };
    let summary = call
        .raw_input
        .as_ref()
        .map(render::input_summary)
        .unwrap_or_default()
        .replace(&format!("{}/", root.display()), "");
    render::tool_call(&name, &summary)
}

fn render_plan(plan: &Plan) -> String {
    render::plan(plan.entries.iter().map(|entry| {
        let step = match entry.status {
            PlanEntryStatus::Completed => Step::Done,
            PlanEntryStatus::InProgress => Step::Doing,
            _ => Step::Todo,
        };
        (step, entry.content.as_str())
    }))
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::demo_agent;

    type Asked = (PermissionRequest, oneshot::Sender<Decision>);

    /// An adapter run against the demo agent, in-process over pipes.
    struct Run {
        outcome: tokio::task::JoinHandle<Outcome>,
        output: tokio::task::JoinHandle<Vec<u8>>,
        approvals: mpsc::UnboundedReceiver<Asked>,
        usage: mpsc::UnboundedReceiver<UsageUpdate>,
        control: mpsc::Sender<AgentControl>,
    }

    fn start(task: &str, workspace: &Path) -> Run {
        let (client_writer, agent_reader) = tokio::io::duplex(1 << 16);
        let (agent_writer, client_reader) = tokio::io::duplex(1 << 16);
        let (exit_tx, mut exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let options = demo_agent::Options { fast: true };
            // As with a process: the pipes close (serve drops them) before the exit is known.
            let info = match demo_agent::serve(agent_reader, agent_writer, options).await {
                Ok(code) => ExitInfo::Code(code.into()),
                Err(_) => ExitInfo::Code(1),
            };
            let _ = exit_tx.send(Some(info));
        });
        let exit = Box::pin(async move {
            loop {
                if let Some(info) = *exit_rx.borrow_and_update() {
                    return info;
                }
                if exit_rx.changed().await.is_err() {
                    return ExitInfo::Signal(9);
                }
            }
        });
        let (output_tx, mut output_rx) = mpsc::channel::<Vec<u8>>(64);
        let output = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Some(bytes) = output_rx.recv().await {
                all.extend(bytes);
            }
            all
        });
        let (approvals_tx, approvals) = mpsc::unbounded_channel();
        let (usage_tx, usage) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::channel(16);
        let parts = Parts {
            task: task.into(),
            workspace: workspace.into(),
            output: OutputSink(output_tx),
            usage: UsageSink(usage_tx),
            approvals: ApprovalAsker(approvals_tx),
            control: control_rx,
        };
        let outcome = tokio::spawn(drive(
            client_writer,
            client_reader,
            None::<tokio::io::DuplexStream>,
            exit,
            None,
            parts,
        ));
        Run {
            outcome,
            output,
            approvals,
            usage,
            control,
        }
    }

    struct Finished {
        outcome: Outcome,
        output: String,
        asked: Vec<PermissionRequest>,
        usage: Vec<UsageUpdate>,
    }

    /// Runs to the end, answering every permission request with `decide`.
    async fn finish(mut run: Run, decide: impl Fn(&PermissionRequest) -> Decision) -> Finished {
        let mut asked = Vec::new();
        let outcome = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                tokio::select! {
                    outcome = &mut run.outcome => return outcome.unwrap(),
                    Some((request, reply)) = run.approvals.recv() => {
                        let _ = reply.send(decide(&request));
                        asked.push(request);
                    }
                }
            }
        })
        .await
        .expect("the session ends");
        let output = render::plain(&String::from_utf8_lossy(&run.output.await.unwrap()));
        let mut usage = Vec::new();
        while let Ok(update) = run.usage.try_recv() {
            usage.push(update);
        }
        Finished {
            outcome,
            output,
            asked,
            usage,
        }
    }

    fn allow(_: &PermissionRequest) -> Decision {
        Decision {
            allow: true,
            for_session: false,
            reason: None,
        }
    }

    fn assert_rendered(output: &str) {
        assert!(!output.contains("jsonrpc"), "raw protocol in {output:?}");
        assert!(!output.contains("{\""), "raw JSON in {output:?}");
        assert!(
            !output.contains("sessionUpdate"),
            "raw protocol in {output:?}"
        );
    }

    #[tokio::test]
    async fn the_demo_runs_to_the_end_with_rendered_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("README.md"),
            "# Hello project\n\nSome words.\n",
        )
        .unwrap();
        let run = start("Show me around", dir.path());
        let done = finish(run, allow).await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        let output = &done.output;
        assert_rendered(output);
        for expected in [
            "I'm the Village demo agent",
            "Plan",
            "▸ read Read README.md",
            "README.md has 3 lines. It starts with “Hello project”.",
            "✎ VILLAGE_DEMO.md (new file)",
            "+ # Village demo",
            "git push origin HEAD",
            "✔ done",
        ] {
            assert!(output.contains(expected), "{expected:?} not in {output:?}");
        }
        assert!(output.contains("\r\n"));
        // The session manager shows the requests and their answers, not the adapter.
        assert!(
            !output.contains("waiting for approval") && !output.contains("✔ allowed"),
            "{output}"
        );
        let written = std::fs::read_to_string(dir.path().join("VILLAGE_DEMO.md")).unwrap();
        assert!(written.starts_with("# Village demo\n"));

        assert_eq!(done.asked.len(), 1, "the tour asks about the push only");
        let push = &done.asked[0];
        assert_eq!(push.tool, "execute");
        assert_eq!(push.kind, ToolKind::Shell("git push origin HEAD".into()));
        assert_eq!(push.input["command"], "git push origin HEAD");
        let options = push.options.as_ref().unwrap().as_array().unwrap();
        assert_eq!(options.len(), 4);
        assert_eq!(options[0]["kind"], "allow_once");

        assert!(done.usage.iter().any(|u| u.cost_usd == Some(0.0)));
        assert!(
            done.usage
                .iter()
                .any(|u| u.tokens_in.is_some_and(|n| n > 0) && u.tokens_out.is_some_and(|n| n > 0))
        );
    }

    #[tokio::test]
    async fn a_rejected_push_is_reported_and_the_turn_ends() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("Show me around", dir.path());
        let done = finish(run, |request| match request.kind {
            ToolKind::Shell(_) => Decision::deny("not today"),
            _ => allow(request),
        })
        .await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        assert!(!done.output.contains("not today"), "{}", done.output);
        assert!(done.output.contains("I won't push"));
        assert!(done.output.contains("no files to read"));
        assert!(!done.output.contains("didn't really push"));
    }

    #[tokio::test]
    async fn an_allowed_edit_happens_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        let run = start("edit notes.txt\nsay done", dir.path());
        let done = finish(run, allow).await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "hello\nedited by the Village demo agent\n"
        );
        let output = &done.output;
        assert_rendered(output);
        assert!(output.contains("edit notes.txt") || output.contains("Write notes.txt"));
        assert!(
            output.contains("  hello\r\n+ edited by the Village demo agent"),
            "{output}"
        );
        assert!(output.contains("Allowed (allow-once): notes.txt is written."));
        assert!(output.contains("✔ Write notes.txt"));
        assert!(output.contains("done"));
        // The diff comes with the request and again with the result: shown once.
        assert_eq!(
            output.matches("+ edited by the Village demo agent").count(),
            1
        );
    }

    #[tokio::test]
    async fn a_denied_edit_is_reported_and_not_done() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        let run = start("edit notes.txt", dir.path());
        let done = finish(run, |_| Decision::deny("no edits")).await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "hello\n"
        );
        assert!(!done.output.contains("no edits"), "{}", done.output);
        assert!(
            done.output
                .contains("Rejected (reject-once): okay, I won't touch notes.txt.")
        );
        assert!(done.output.contains("✘ Write notes.txt failed"));
    }

    #[tokio::test]
    async fn an_allow_for_the_session_picks_allow_always() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("ask execute git push origin main", dir.path());
        let done = finish(run, |_| Decision {
            allow: true,
            for_session: true,
            reason: None,
        })
        .await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        assert!(
            done.output
                .contains("Allowed (allow-always): git push origin main.")
        );
        assert_eq!(done.asked.len(), 1);
        assert_eq!(
            done.asked[0].kind,
            ToolKind::Shell("git push origin main".into())
        );
    }

    #[tokio::test]
    async fn an_interrupt_cancels_the_turn_and_the_pending_permission() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = start(
            "say starting\nask execute git push origin main\nsay after",
            dir.path(),
        );
        let (request, reply) = tokio::time::timeout(Duration::from_secs(10), run.approvals.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request.kind, ToolKind::Shell("git push origin main".into()));
        run.control.send(AgentControl::Interrupt).await.unwrap();
        let done = finish(run, allow).await;
        // The human never answered: the request was answered `cancelled` without them.
        drop(reply);
        assert_eq!(done.outcome, Outcome::Failed("cancelled".into()));
        let output = &done.output;
        assert!(output.contains("■ stopping: session/cancel sent"));
        assert!(output.contains("permission request cancelled: the session is stopping"));
        assert!(output.contains("The permission request was cancelled."));
        // The stop reason `cancelled` is the agent's proof that session/cancel reached it.
        assert!(output.contains("■ turn cancelled"), "{output}");
        assert!(!output.contains("after"));
    }

    #[tokio::test]
    async fn a_prompt_error_fails_the_session_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("say hi\nfail the model is down", dir.path());
        let done = finish(run, allow).await;
        assert_eq!(done.outcome, Outcome::Failed("the model is down".into()));
        assert!(done.output.contains("hi"));
        assert!(done.output.contains("✘ the model is down"));
    }

    #[tokio::test]
    async fn an_exit_mid_turn_fails_with_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("say bye\nexit 3", dir.path());
        let done = finish(run, allow).await;
        assert_eq!(done.outcome, Outcome::Failed("exit status 3".into()));
        assert!(done.output.contains("bye"));
    }

    #[tokio::test]
    async fn a_clean_exit_mid_turn_is_still_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("exit 0", dir.path());
        let done = finish(run, allow).await;
        assert_eq!(
            done.outcome,
            Outcome::Failed("the agent exited before its turn was over".into())
        );
    }

    #[tokio::test]
    async fn typed_lines_become_follow_up_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let run = start("say working\nsleep 300", dir.path());
        run.control
            .send(AgentControl::Input(b"next stx\x7fep\r".to_vec()))
            .await
            .unwrap();
        let done = finish(run, allow).await;
        assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
        let output = &done.output;
        assert!(
            output.contains("next stx\x08 \x08ep\r\n"),
            "echo in {output:?}"
        );
        assert!(output.contains("› next step"));
        assert!(output.contains("You said: “next step”."), "{output}");
        assert_eq!(output.matches("✔ done").count(), 2);
    }

    #[tokio::test]
    async fn fs_requests_stay_in_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert!(inside(&root, Path::new("/etc/passwd")).await.is_err());
        assert!(inside(&root, Path::new("relative.txt")).await.is_err());
        assert!(inside(&root, &root.join("../escape.txt")).await.is_err());
        assert_eq!(
            inside(&root, &root.join("new/dir/../file.txt"))
                .await
                .unwrap(),
            root.join("new/file.txt")
        );
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        assert!(inside(&root, &root.join("link/passwd")).await.is_err());
    }

    #[test]
    fn answers_never_widen_an_allow() {
        let once_only = [PermissionOption::new(
            "always",
            "Always",
            PermissionOptionKind::AllowAlways,
        )];
        let allow_once = Decision {
            allow: true,
            for_session: false,
            reason: None,
        };
        let (outcome, note) = answer(Some(&allow_once), &once_only);
        assert_eq!(outcome, RequestPermissionOutcome::Cancelled);
        assert!(note.is_some_and(|note| note.contains("no allow option")));
        let (outcome, _) = answer(None, &once_only);
        assert_eq!(outcome, RequestPermissionOutcome::Cancelled);
        let reject_always = [PermissionOption::new(
            "never",
            "Never",
            PermissionOptionKind::RejectAlways,
        )];
        let (outcome, note) = answer(Some(&Decision::deny("no")), &reject_always);
        assert_eq!(
            outcome,
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new("never"))
        );
        assert_eq!(note, None);
    }

    #[test]
    fn permission_requests_map_tool_kinds() {
        let request = |call: ToolCall| {
            let update = ToolCallUpdate::from(call.clone());
            let acp = RequestPermissionRequest::new("s", update, vec![]);
            permission_request(&call, &acp)
        };
        let shell = request(
            ToolCall::new("1", "Run tests")
                .kind(AcpToolKind::Execute)
                .raw_input(serde_json::json!({ "command": ["cargo", "test", "a b"] })),
        );
        assert_eq!(shell.kind, ToolKind::Shell("cargo test 'a b'".into()));
        assert_eq!(shell.description, "Run tests");
        let untitled = request(ToolCall::new("2", "").kind(AcpToolKind::Execute));
        assert_eq!(untitled.kind, ToolKind::Shell(String::new()));
        let read = request(
            ToolCall::new("3", "Read")
                .kind(AcpToolKind::Read)
                .raw_input(serde_json::json!({ "path": "/w/a.rs" })),
        );
        assert_eq!(read.kind, ToolKind::FileRead("/w/a.rs".into()));
        let fetch = request(
            ToolCall::new("4", "Fetch docs")
                .kind(AcpToolKind::Fetch)
                .raw_input(serde_json::json!({ "url": "https://example.com" })),
        );
        assert_eq!(fetch.kind, ToolKind::Fetch("https://example.com".into()));
        let other = request(ToolCall::new("5", "Think hard").name("brainstorm".to_string()));
        assert_eq!(
            (other.tool.as_str(), &other.kind),
            ("brainstorm", &ToolKind::Other)
        );
        // No raw input: the tool call itself is the input the human sees.
        assert_eq!(other.input["toolCallId"], "5");
    }
}
