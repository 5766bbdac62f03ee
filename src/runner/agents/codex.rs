//! The `codex` adapter: `codex app-server`, JSON-RPC 2.0 over stdio.
//!
//! One JSON object per line, without the `"jsonrpc"` member. The adapter sends `initialize`
//! and `initialized`, starts a thread in the workspace (`thread/start`) with an approval policy
//! that asks, and runs the task as the first turn (`turn/start`). The server streams items
//! (`item/started`, `item/completed`, deltas), token usage and `turn/completed`; it asks for
//! approvals with server requests, which go to the broker while the reader keeps reading.
//! Lines typed on the dashboard become further turns once the current one is over; when a turn
//! ends with nothing queued the adapter closes stdin and the server exits.
//!
//! Method, parameter and field names follow the schema that `codex app-server
//! generate-json-schema` prints (vendored with the tests, which check every message of a
//! session against it).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::render;
use super::{
    Adapter, AgentContext, AgentControl, ApprovalAsker, Decision, Outcome, OutputSink,
    PermissionRequest, ToolKind, UsageSink, UsageUpdate,
};
use crate::runner::process::{AgentIo, ExitInfo};

/// `untrusted`: codex asks before anything but known-safe reads, so the broker (and the human
/// behind it) sees every command and edit; `on-request` would let the model run most commands
/// in the sandbox unasked.
const APPROVAL_POLICY: &str = "untrusted";
/// Even an approved command can write only inside the workspace.
const SANDBOX: &str = "workspace-write";
/// The decisions the schema lists for both approval requests (command approvals also take
/// policy-amendment objects, which the adapter never sends).
const DECISIONS: [&str; 4] = ["accept", "acceptForSession", "decline", "cancel"];
/// JSON-RPC's "method not found", for server requests the adapter has no answer to.
const METHOD_NOT_FOUND: i64 = -32601;
/// How long stdout may stay open after the process ended (a grandchild holding it).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Stderr lines kept to explain an abnormal end.
const STDERR_LINES: usize = 20;

pub struct CodexAdapter;

impl Adapter for CodexAdapter {
    fn run(&self, cx: AgentContext) -> BoxFuture<'static, Outcome> {
        Box::pin(run(cx))
    }
}

async fn run(mut cx: AgentContext) -> Outcome {
    let Some(AgentIo::Pipes {
        stdin,
        stdout,
        stderr,
    }) = cx.process.io.take()
    else {
        return Outcome::Failed("the codex adapter needs the agent on pipes".into());
    };
    let (to_agent, from_session) = mpsc::unbounded_channel();
    tokio::spawn(write_lines(stdin, from_session));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let stderr_reader = tokio::spawn(read_stderr(stderr, events_tx.clone()));

    let mut s = Session {
        task: cx.task,
        workspace: cx.workspace.to_string_lossy().into_owned(),
        out: cx.output,
        usage: cx.usage,
        approvals: cx.approvals,
        events: events_tx,
        to_agent: Some(to_agent),
        next_id: 0,
        pending: HashMap::new(),
        thread_id: None,
        turn: TurnState::Idle,
        queued: VecDeque::new(),
        typed: render::LineInput::default(),
        interrupting: false,
        items: HashMap::new(),
        asking: HashMap::new(),
        streaming: None,
        mid_line: false,
        last_error: None,
        stderr: VecDeque::new(),
        tokens: None,
        outcome: None,
    };
    s.begin();

    let mut lines = BufReader::new(stdout).lines();
    let mut control_open = true;
    let mut exit = None;
    let drain = tokio::time::sleep(Duration::from_secs(u32::MAX.into()));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => s.on_line(&line).await,
                // EOF or unreadable output: the server is gone either way.
                Ok(None) | Err(_) => break,
            },
            control = cx.control.recv(), if control_open => match control {
                Some(control) => s.on_control(control).await,
                None => control_open = false,
            },
            Some(event) = events.recv() => s.on_event(event).await,
            status = cx.process.wait(), if exit.is_none() => {
                exit = Some(status);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = &mut drain, if exit.is_some() => break,
        }
    }
    // Anything still waiting for the broker has nobody left to answer.
    for (_, asking) in s.asking.drain() {
        asking.abort();
    }
    s.close();
    let exit = match exit {
        Some(exit) => exit,
        None => cx.process.wait().await,
    };
    // Codex's last words on stderr explain an abnormal end; a grandchild may hold the pipe open,
    // so they get a moment, not a promise.
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, stderr_reader).await;
    while let Ok(event) = events.try_recv() {
        if let Event::Stderr(line) = event {
            s.keep_stderr(line);
        }
    }
    s.finish(exit).await
}

/// Writes the session's lines to the agent's stdin; stdin closes when the session drops its
/// sender.
async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<String>) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() {
            // The agent closed its end: the session learns of it from stdout.
            return;
        }
    }
}

/// Codex logs to stderr; the session keeps the last lines for when it ends abnormally.
async fn read_stderr(stderr: ChildStderr, events: mpsc::UnboundedSender<Event>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if events.send(Event::Stderr(line)).is_err() {
            return;
        }
    }
}

/// What the session's helper tasks report to it.
enum Event {
    /// The broker's answer to the server request `id`.
    Decided {
        id: Value,
        decision: Decision,
    },
    Stderr(String),
}

/// Our requests awaiting the server's response.
enum Pending {
    Initialize,
    ThreadStart,
    TurnStart,
    TurnInterrupt,
}

#[derive(Debug, PartialEq)]
enum TurnState {
    Idle,
    /// `turn/start` sent, its id not known yet.
    Starting,
    Running(String),
}

/// What the adapter remembers of an item between `item/started` and `item/completed`.
#[derive(Default)]
struct ItemInfo {
    command: Option<String>,
    paths: Vec<String>,
    diff_shown: bool,
}

struct Session {
    task: String,
    workspace: String,
    out: OutputSink,
    usage: UsageSink,
    approvals: ApprovalAsker,
    events: mpsc::UnboundedSender<Event>,
    /// `None` once stdin is closed.
    to_agent: Option<mpsc::UnboundedSender<String>>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    thread_id: Option<String>,
    turn: TurnState,
    /// Follow-up prompts typed while a turn runs.
    queued: VecDeque<String>,
    /// The line being typed.
    typed: render::LineInput,
    interrupting: bool,
    items: HashMap<String, ItemInfo>,
    /// Approval requests with the broker, by the request id's JSON text.
    asking: HashMap<String, JoinHandle<()>>,
    /// The agent message being streamed.
    streaming: Option<String>,
    /// The terminal's cursor is not at the start of a line.
    mid_line: bool,
    last_error: Option<String>,
    /// Codex's log lines: tracing output that repeats what the protocol says (warnings, a
    /// rejected patch), useful only when codex ends without saying why.
    stderr: VecDeque<String>,
    /// The thread's token totals (in, out).
    tokens: Option<(u64, u64)>,
    /// How the protocol says the session went, once it says so.
    outcome: Option<Outcome>,
}

impl Session {
    // --- sending ------------------------------------------------------------------------------

    fn send<T: Serialize>(&mut self, message: &T) {
        let Some(to_agent) = &self.to_agent else {
            return;
        };
        if let Ok(mut line) = serde_json::to_string(message) {
            line.push('\n');
            // A closed writer means the agent is gone; stdout's EOF ends the session.
            let _ = to_agent.send(line);
        }
    }

    fn request<P: Serialize>(&mut self, method: &'static str, params: P, pending: Pending) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        self.send(&Request { id, method, params });
    }

    /// Closes stdin: the server exits when it sees EOF.
    fn close(&mut self) {
        self.to_agent = None;
    }

    fn closed(&self) -> bool {
        self.to_agent.is_none()
    }

    fn begin(&mut self) {
        self.request(
            "initialize",
            InitializeParams {
                client_info: ClientInfo {
                    name: "village",
                    title: "Village",
                    version: env!("CARGO_PKG_VERSION"),
                },
            },
            Pending::Initialize,
        );
    }

    fn start_turn(&mut self, text: String) {
        let Some(thread_id) = self.thread_id.clone() else {
            self.queued.push_back(text);
            return;
        };
        self.turn = TurnState::Starting;
        self.request(
            "turn/start",
            TurnStartParams {
                thread_id,
                input: vec![UserInput { kind: "text", text }],
            },
            Pending::TurnStart,
        );
    }

    fn send_interrupt(&mut self, turn_id: String) {
        if let Some(thread_id) = self.thread_id.clone() {
            self.request(
                "turn/interrupt",
                TurnInterruptParams { thread_id, turn_id },
                Pending::TurnInterrupt,
            );
        }
    }

    /// The session failed for a protocol reason: say so and let the server go.
    async fn fail(&mut self, message: String) {
        self.show(render::error(&message)).await;
        self.outcome = Some(Outcome::Failed(message));
        self.close();
    }

    // --- the terminal -------------------------------------------------------------------------

    async fn emit(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.mid_line = !text.ends_with('\n');
        self.out.write(text).await;
    }

    /// Lines from [`render`], starting on a fresh line.
    async fn show(&mut self, lines: String) {
        let mut rendered = String::new();
        if self.mid_line && !lines.is_empty() {
            rendered.push_str("\r\n");
        }
        rendered.push_str(&lines);
        self.emit(rendered).await;
    }

    fn relative(&self, path: &str) -> String {
        render::shown_path(Path::new(&self.workspace), Path::new(path))
    }

    /// What the session has learnt of the thread's token totals, for the summary of a turn.
    fn usage(&self) -> UsageUpdate {
        UsageUpdate {
            tokens_in: self.tokens.map(|(tokens_in, _)| tokens_in),
            tokens_out: self.tokens.map(|(_, tokens_out)| tokens_out),
            ..UsageUpdate::default()
        }
    }

    // --- from the agent -----------------------------------------------------------------------

    async fn on_line(&mut self, line: &str) {
        if self.closed() {
            // The session's outcome is settled; what the server still says changes nothing.
            return;
        }
        let message: Incoming = match serde_json::from_str(line) {
            Ok(message) => message,
            Err(_) => {
                // Not protocol: show it unless it is JSON we cannot read (never raw JSON).
                let text = line.trim();
                if !text.is_empty() && !text.starts_with(['{', '[']) {
                    self.show(render::note(text)).await;
                }
                return;
            }
        };
        match (message.method, message.id) {
            (Some(method), Some(id)) => self.on_server_request(id, &method, message.params).await,
            (Some(method), None) => self.on_notification(&method, message.params).await,
            (None, Some(id)) => self.on_response(id, message.result, message.error).await,
            (None, None) => {}
        }
    }

    async fn on_response(&mut self, id: Value, result: Option<Value>, error: Option<RpcError>) {
        let Some(pending) = id.as_u64().and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        let result = match (result, error) {
            (_, Some(error)) => Err(error.message),
            (Some(result), None) => Ok(result),
            (None, None) => Err("an empty response".to_string()),
        };
        match pending {
            Pending::Initialize => match result {
                Ok(_) => {
                    self.send(&Notification {
                        method: "initialized",
                    });
                    let params = ThreadStartParams {
                        cwd: self.workspace.clone(),
                        approval_policy: APPROVAL_POLICY,
                        sandbox: SANDBOX,
                    };
                    self.request("thread/start", params, Pending::ThreadStart);
                }
                Err(message) => self.fail(format!("codex did not start: {message}")).await,
            },
            Pending::ThreadStart => {
                let started = result.and_then(|result| {
                    serde_json::from_value::<ThreadStartResult>(result)
                        .map_err(|e| format!("an unreadable thread: {e}"))
                });
                match started {
                    Ok(started) => {
                        self.thread_id = Some(started.thread.id);
                        let model = started.model.unwrap_or_else(|| "default model".into());
                        let about = format!("codex · {model} · {}", self.workspace);
                        self.show(render::note(&about)).await;
                        let task = std::mem::take(&mut self.task);
                        self.show(render::prompt(&task)).await;
                        self.start_turn(task);
                    }
                    Err(message) => {
                        self.fail(format!("codex could not start a thread: {message}"))
                            .await
                    }
                }
            }
            Pending::TurnStart => match result {
                Ok(result) => {
                    if let Ok(started) = serde_json::from_value::<TurnHolder>(result) {
                        self.turn_started(started.turn.id);
                    }
                }
                Err(message) => {
                    self.fail(format!("codex refused the turn: {message}"))
                        .await
                }
            },
            Pending::TurnInterrupt => {
                if let Err(message) = result {
                    let note = format!("codex did not interrupt: {message}");
                    self.show(render::note(&note)).await;
                }
            }
        }
    }

    /// The turn's id is known (from the `turn/start` response or `turn/started`).
    fn turn_started(&mut self, turn_id: String) {
        if self.turn != TurnState::Starting {
            return;
        }
        self.turn = TurnState::Running(turn_id.clone());
        if self.interrupting {
            self.send_interrupt(turn_id);
        }
    }

    async fn on_notification(&mut self, method: &str, params: Value) {
        match method {
            "turn/started" => {
                if let Ok(started) = serde_json::from_value::<TurnHolder>(params) {
                    self.turn_started(started.turn.id);
                }
            }
            "turn/completed" => {
                if let Ok(completed) = serde_json::from_value::<TurnHolder>(params) {
                    self.turn_completed(completed.turn).await;
                }
            }
            "item/started" => {
                if let Ok(started) = serde_json::from_value::<ItemHolder>(params) {
                    self.item_started(started.item).await;
                }
            }
            "item/completed" => {
                if let Ok(completed) = serde_json::from_value::<ItemHolder>(params) {
                    self.item_completed(completed.item).await;
                }
            }
            "item/agentMessage/delta" => {
                if let Ok(delta) = serde_json::from_value::<AgentMessageDelta>(params) {
                    self.streaming = Some(delta.item_id);
                    self.emit(render::text_chunk(&delta.delta)).await;
                }
            }
            "thread/tokenUsage/updated" => {
                if let Ok(update) = serde_json::from_value::<TokenUsageUpdated>(params) {
                    let total = update.token_usage.total;
                    self.tokens = Some((total.input_tokens, total.output_tokens));
                    // inputTokens already counts the cached ones; codex reports no cost.
                    self.usage.report(UsageUpdate {
                        tokens_in: Some(total.input_tokens),
                        tokens_out: Some(total.output_tokens),
                        api_calls: None,
                        cost_usd: None,
                    });
                }
            }
            "error" => {
                if let Ok(error) = serde_json::from_value::<ErrorNotification>(params) {
                    let message = error.error.message;
                    if error.will_retry {
                        let warning = format!("{message} (retrying)");
                        self.show(render::warning(&warning)).await;
                    } else {
                        let mut lines = render::error(&message);
                        if let Some(details) = error.error.additional_details {
                            lines.push_str(&render::note(&format!("  {details}")));
                        }
                        self.show(lines).await;
                        self.last_error = Some(message);
                    }
                }
            }
            "warning" => {
                if let Ok(warning) = serde_json::from_value::<Warning>(params) {
                    self.show(render::warning(&warning.message)).await;
                }
            }
            "configWarning" | "deprecationNotice" => {
                if let Ok(notice) = serde_json::from_value::<Notice>(params) {
                    self.show(render::warning(&notice.summary)).await;
                }
            }
            "serverRequest/resolved" => {
                // The server settled a request itself (an interrupt, say): stop asking.
                if let Ok(resolved) = serde_json::from_value::<ServerRequestResolved>(params)
                    && let Some(asking) = self.asking.remove(&resolved.request_id.to_string())
                {
                    asking.abort();
                    self.show(render::note("approval withdrawn by the agent"))
                        .await;
                }
            }
            _ => {}
        }
    }

    async fn turn_completed(&mut self, turn: TurnObject) {
        self.turn = TurnState::Idle;
        match turn.status.as_str() {
            "completed" => {
                self.show(render::summary(true, &self.usage())).await;
                // Done before an interrupt landed: what was typed after stays unsent.
                if !self.interrupting
                    && let Some(next) = self.queued.pop_front()
                {
                    self.start_turn(next);
                    return;
                }
                self.outcome = Some(Outcome::Completed);
                self.close();
            }
            "failed" => {
                let message = turn
                    .error
                    .map(|error| error.message)
                    .or_else(|| self.last_error.take())
                    .unwrap_or_else(|| "the turn failed".into());
                let mut lines = render::error(&message);
                lines.push_str(&render::summary(false, &self.usage()));
                self.show(lines).await;
                self.outcome = Some(Outcome::Failed(message));
                self.close();
            }
            "interrupted" => {
                self.show(render::stop("interrupted")).await;
                self.outcome = Some(Outcome::Failed("interrupted".into()));
                self.close();
            }
            _ => {}
        }
    }

    async fn item_started(&mut self, item: Item) {
        match item {
            Item::CommandExecution { id, command, .. } => {
                self.show(render::tool_call("$", &command)).await;
                let info = ItemInfo {
                    command: Some(command),
                    ..ItemInfo::default()
                };
                self.items.insert(id, info);
            }
            Item::FileChange { id, changes, .. } => {
                let mut info = ItemInfo {
                    paths: changes.iter().map(|c| c.path.clone()).collect(),
                    ..ItemInfo::default()
                };
                if !changes.is_empty() {
                    self.show(self.diff(&changes)).await;
                    info.diff_shown = true;
                }
                self.items.insert(id, info);
            }
            _ => {}
        }
    }

    async fn item_completed(&mut self, item: Item) {
        match item {
            Item::AgentMessage { id, text } => {
                if self.streaming.as_deref() == Some(id.as_str()) {
                    self.streaming = None;
                    if self.mid_line {
                        self.emit("\r\n".into()).await;
                    }
                } else if !text.is_empty() {
                    self.show(render::assistant_text(&text)).await;
                }
            }
            Item::CommandExecution {
                id,
                command,
                status,
                aggregated_output,
                exit_code,
            } => {
                let mut lines = String::new();
                if self.items.remove(&id).is_none() {
                    lines.push_str(&render::tool_call("$", &command));
                }
                let output = aggregated_output.unwrap_or_default();
                let failed = status == "failed" || exit_code.is_some_and(|code| code != 0);
                if !output.trim().is_empty() {
                    lines.push_str(&render::tool_result(&output, failed));
                }
                lines.push_str(&match (status.as_str(), exit_code) {
                    ("declined", _) => render::tool_status(false, "declined"),
                    (_, Some(code)) => render::tool_status(code == 0, &format!("exit {code}")),
                    ("failed", None) => render::tool_status(false, "failed"),
                    (status, None) => render::note(&format!("  {status}")),
                });
                self.show(lines).await;
            }
            Item::FileChange {
                id,
                changes,
                status,
            } => {
                let shown = self.items.remove(&id).is_some_and(|info| info.diff_shown);
                let mut lines = if shown {
                    String::new()
                } else {
                    self.diff(&changes)
                };
                lines.push_str(&match status.as_str() {
                    "completed" => render::tool_status(true, "applied"),
                    "declined" => render::tool_status(false, "declined"),
                    "failed" => render::tool_status(false, "failed"),
                    other => render::note(&format!("  {other}")),
                });
                self.show(lines).await;
            }
            Item::WebSearch { query } => {
                self.show(render::tool_call("web search", &query)).await;
            }
            Item::McpToolCall {
                server,
                tool,
                status,
            } => {
                let mut lines = render::tool_call(&format!("{server}.{tool}"), "");
                lines.push_str(&render::tool_status(status == "completed", &status));
                self.show(lines).await;
            }
            Item::Other => {}
        }
    }

    /// A file change as diffs: the `diff` of an added file is its content, of a deleted one the
    /// old content, of an update a unified diff.
    fn diff(&self, changes: &[FileUpdateChange]) -> String {
        let mut lines = String::new();
        for change in changes {
            let path = self.relative(&change.path);
            lines.push_str(&match &change.kind {
                PatchKind::Add => render::diff(&format!("{path} (added)"), "", &change.diff),
                PatchKind::Delete => render::diff(&format!("{path} (deleted)"), &change.diff, ""),
                PatchKind::Update {
                    move_path: Some(to),
                } => {
                    let what = format!("{path} (moved to {})", self.relative(to));
                    render::unified_diff(&what, &change.diff)
                }
                PatchKind::Update { move_path: None } | PatchKind::Other => {
                    render::unified_diff(&format!("{path} (modified)"), &change.diff)
                }
            });
        }
        lines
    }

    async fn on_server_request(&mut self, id: Value, method: &str, params: Value) {
        let request = match method {
            "item/commandExecution/requestApproval" => {
                serde_json::from_value::<CommandApproval>(params.clone())
                    .ok()
                    .map(|asked| {
                        let command = asked
                            .command
                            .or_else(|| self.items.get(&asked.item_id)?.command.clone())
                            .unwrap_or_default();
                        let mut description = format!("Run `{command}`");
                        if let Some(reason) = asked.reason.filter(|r| !r.is_empty()) {
                            description.push_str(&format!(": {reason}"));
                        }
                        PermissionRequest {
                            tool: "commandExecution".into(),
                            kind: ToolKind::Shell(command),
                            input: params,
                            description,
                            options: Some(decisions()),
                        }
                    })
            }
            "item/fileChange/requestApproval" => {
                serde_json::from_value::<FileApproval>(params.clone())
                    .ok()
                    .map(|asked| {
                        let mut paths = self
                            .items
                            .get(&asked.item_id)
                            .map(|info| info.paths.clone())
                            .unwrap_or_default();
                        if paths.is_empty()
                            && let Some(root) = asked.grant_root.clone()
                        {
                            paths.push(root);
                        }
                        let shown: Vec<String> = paths.iter().map(|p| self.relative(p)).collect();
                        let mut description = if shown.is_empty() {
                            "Edit files".to_string()
                        } else {
                            format!("Edit {}", shown.join(", "))
                        };
                        if let Some(root) = asked.grant_root {
                            description.push_str(&format!(" (write access under {root})"));
                        }
                        if let Some(reason) = asked.reason.filter(|r| !r.is_empty()) {
                            description.push_str(&format!(": {reason}"));
                        }
                        PermissionRequest {
                            tool: "fileChange".into(),
                            kind: ToolKind::FileEdit(paths),
                            input: params,
                            description,
                            options: Some(decisions()),
                        }
                    })
            }
            _ => None,
        };
        let Some(request) = request else {
            // Unanswered, the server would wait for ever.
            self.send(&ErrorReply {
                id,
                error: RpcError {
                    code: METHOD_NOT_FOUND,
                    message: format!("village does not handle {method}"),
                },
            });
            return;
        };
        // The session manager shows the request, and later its answer, on lines of their own.
        if self.mid_line {
            self.emit("\r\n".into()).await;
        }
        let asker = self.approvals.clone();
        let events = self.events.clone();
        let key = id.to_string();
        let asking = tokio::spawn(async move {
            let decision = asker.ask(request).await;
            let _ = events.send(Event::Decided { id, decision });
        });
        self.asking.insert(key, asking);
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Decided { id, decision } => {
                if self.asking.remove(&id.to_string()).is_none() {
                    // Withdrawn by the server in the meantime.
                    return;
                }
                let answer = match (decision.allow, decision.for_session) {
                    (true, true) => "acceptForSession",
                    (true, false) => "accept",
                    (false, _) => "decline",
                };
                self.send(&Reply {
                    id,
                    result: ApprovalResult { decision: answer },
                });
            }
            Event::Stderr(line) => self.keep_stderr(line),
        }
    }

    fn keep_stderr(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        if self.stderr.len() == STDERR_LINES {
            self.stderr.pop_front();
        }
        self.stderr.push_back(line);
    }

    // --- from the server's side of Village ----------------------------------------------------

    async fn on_control(&mut self, control: AgentControl) {
        if self.closed() {
            return;
        }
        match control {
            AgentControl::Input(bytes) => self.on_input(&bytes).await,
            AgentControl::Interrupt => {
                if self.interrupting {
                    return;
                }
                self.interrupting = true;
                self.queued.clear();
                self.show(render::stop("interrupting…")).await;
                match &self.turn {
                    TurnState::Running(turn_id) => {
                        let turn_id = turn_id.clone();
                        self.send_interrupt(turn_id);
                    }
                    // The interrupt goes out as soon as the turn has an id.
                    TurnState::Starting => {}
                    // Still shaking hands: there is no turn to interrupt, only a server to let go.
                    TurnState::Idle => {
                        self.outcome = Some(Outcome::Failed("interrupted".into()));
                        self.close();
                    }
                }
            }
        }
    }

    /// Keystrokes: echoed, and each completed line a prompt for the next turn.
    async fn on_input(&mut self, bytes: &[u8]) {
        let typed = self.typed.feed(bytes);
        if !typed.echo.is_empty() {
            self.mid_line = !typed.echo.ends_with(b"\n");
            self.out.write(typed.echo).await;
        }
        for line in typed.lines {
            self.follow_up(line);
        }
    }

    fn follow_up(&mut self, prompt: String) {
        if self.thread_id.is_some() && self.turn == TurnState::Idle {
            self.start_turn(prompt);
        } else {
            self.queued.push_back(prompt);
        }
    }

    /// The session's outcome once the process has ended: a protocol failure says most; then a
    /// bad exit; then the protocol's completion.
    async fn finish(&mut self, exit: ExitInfo) -> Outcome {
        let protocol = self.outcome.take();
        if let Some(Outcome::Failed(message)) = protocol {
            return Outcome::Failed(message);
        }
        if exit == ExitInfo::Code(0) && protocol == Some(Outcome::Completed) {
            return Outcome::Completed;
        }
        let mut lines: String = self.stderr.drain(..).map(|l| render::note(&l)).collect();
        let outcome = match exit {
            ExitInfo::Code(0) => {
                let message = "codex exited before the turn was over".to_string();
                lines.push_str(&render::error(&message));
                Outcome::Failed(message)
            }
            exit => {
                let outcome = exit.outcome();
                if let Outcome::Failed(message) = &outcome {
                    lines.push_str(&render::error(&format!("codex exited: {message}")));
                }
                outcome
            }
        };
        self.show(lines).await;
        outcome
    }
}

fn decisions() -> Value {
    Value::Array(
        DECISIONS
            .iter()
            .map(|d| Value::String((*d).into()))
            .collect(),
    )
}

// --- the wire ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct Request<P> {
    id: u64,
    method: &'static str,
    params: P,
}

#[derive(Serialize)]
struct Notification {
    method: &'static str,
}

#[derive(Serialize)]
struct Reply<R> {
    id: Value,
    result: R,
}

#[derive(Serialize)]
struct ErrorReply {
    id: Value,
    error: RpcError,
}

#[derive(Serialize, Deserialize)]
struct RpcError {
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams {
    client_info: ClientInfo,
}

#[derive(Serialize)]
struct ClientInfo {
    name: &'static str,
    title: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThreadStartParams {
    cwd: String,
    approval_policy: &'static str,
    sandbox: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TurnStartParams {
    thread_id: String,
    input: Vec<UserInput>,
}

#[derive(Serialize)]
struct UserInput {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TurnInterruptParams {
    thread_id: String,
    turn_id: String,
}

#[derive(Serialize)]
struct ApprovalResult {
    decision: &'static str,
}

/// Any message from the server; which members it has says what it is.
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct ThreadStartResult {
    thread: ThreadRef,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct ThreadRef {
    id: String,
}

/// `turn/start`'s result and the `turn/started` and `turn/completed` notifications.
#[derive(Deserialize)]
struct TurnHolder {
    turn: TurnObject,
}

#[derive(Deserialize)]
struct TurnObject {
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: Option<TurnError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    additional_details: Option<String>,
}

#[derive(Deserialize)]
struct ItemHolder {
    item: Item,
}

/// The thread items the terminal shows; the rest are `Other`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Item {
    AgentMessage {
        id: String,
        #[serde(default)]
        text: String,
    },
    #[serde(rename_all = "camelCase")]
    CommandExecution {
        id: String,
        #[serde(default)]
        command: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        aggregated_output: Option<String>,
        #[serde(default)]
        exit_code: Option<i64>,
    },
    FileChange {
        id: String,
        #[serde(default)]
        changes: Vec<FileUpdateChange>,
        #[serde(default)]
        status: String,
    },
    WebSearch {
        #[serde(default)]
        query: String,
    },
    McpToolCall {
        #[serde(default)]
        server: String,
        #[serde(default)]
        tool: String,
        #[serde(default)]
        status: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct FileUpdateChange {
    path: String,
    kind: PatchKind,
    #[serde(default)]
    diff: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum PatchKind {
    Add,
    Delete,
    Update {
        #[serde(default)]
        move_path: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentMessageDelta {
    item_id: String,
    delta: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenUsageUpdated {
    token_usage: ThreadTokenUsage,
}

#[derive(Deserialize)]
struct ThreadTokenUsage {
    total: TokenBreakdown,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBreakdown {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorNotification {
    error: TurnError,
    #[serde(default)]
    will_retry: bool,
}

#[derive(Deserialize)]
struct Warning {
    message: String,
}

/// `configWarning` and `deprecationNotice`.
#[derive(Deserialize)]
struct Notice {
    summary: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerRequestResolved {
    request_id: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandApproval {
    item_id: String,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileApproval {
    item_id: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grant_root: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    use tokio::process::Command;
    use tokio::sync::{oneshot, watch};

    use super::*;
    use crate::runner::process::AgentProcess;

    const WAIT: Duration = Duration::from_secs(30);

    type Asked = mpsc::UnboundedReceiver<(PermissionRequest, oneshot::Sender<Decision>)>;

    /// A session of the adapter with the fake app-server.
    struct Run {
        dir: tempfile::TempDir,
        log: PathBuf,
        control: mpsc::Sender<AgentControl>,
        output: Arc<Mutex<Vec<u8>>>,
        usage: Arc<Mutex<Vec<UsageUpdate>>>,
        outcome: Option<JoinHandle<Outcome>>,
    }

    impl Run {
        /// The terminal's text, without its colours.
        fn output(&self) -> String {
            render::plain(&String::from_utf8_lossy(&self.output.lock().unwrap()))
        }

        async fn wait_for_output(&self, needle: &str) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !self.output().contains(needle) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no {needle:?} in the output:\n{}",
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// The adapter's outcome, once it has finished.
        async fn finish(&mut self) -> Outcome {
            let outcome = self.outcome.take().expect("finished twice");
            tokio::time::timeout(WAIT, outcome)
                .await
                .expect("the adapter did not finish")
                .unwrap()
        }

        /// The protocol as the fake saw it: (from, message).
        fn protocol(&self) -> Vec<(String, Value)> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .map(|line| {
                    let entry: Value = serde_json::from_str(line).unwrap();
                    (
                        entry["from"].as_str().unwrap().to_string(),
                        entry["message"].clone(),
                    )
                })
                .collect()
        }

        /// What the adapter sent with this method.
        fn sent(&self, method: &str) -> Vec<Value> {
            self.protocol()
                .into_iter()
                .filter(|(from, m)| from == "client" && m["method"] == method)
                .map(|(_, m)| m)
                .collect()
        }

        /// The adapter's replies to the fake's requests with this method.
        fn replies_to(&self, method: &str) -> Vec<Value> {
            let protocol = self.protocol();
            let ids: Vec<Value> = protocol
                .iter()
                .filter(|(from, m)| from == "server" && m["method"] == method)
                .map(|(_, m)| m["id"].clone())
                .collect();
            protocol
                .into_iter()
                .filter(|(from, m)| {
                    from == "client" && m.get("method").is_none() && ids.contains(&m["id"])
                })
                .map(|(_, m)| m)
                .collect()
        }
    }

    fn fake() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/fake_codex.py")
    }

    /// Starts the adapter on the fake with `task`; approvals come out of the returned receiver.
    fn start(task: &str) -> (Run, Asked) {
        start_with(task, &[])
    }

    /// The same with these files in the workspace.
    fn start_with(task: &str, files: &[(&str, &str)]) -> (Run, Asked) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("protocol.jsonl");
        let workspace = dir.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        for (name, content) in files {
            std::fs::write(workspace.join(name), content).unwrap();
        }
        let mut child = Command::new("python3")
            .arg(fake())
            .arg("app-server")
            .current_dir(&workspace)
            .env("FAKE_PROTOCOL_LOG", &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let io = AgentIo::Pipes {
            stdin: child.stdin.take().unwrap(),
            stdout: child.stdout.take().unwrap(),
            stderr: child.stderr.take().unwrap(),
        };
        let pid = child.id().unwrap() as i32;
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.unwrap();
            let exit = match status.code() {
                Some(code) => ExitInfo::Code(code),
                None => ExitInfo::Signal(status.signal().unwrap_or(9)),
            };
            let _ = exit_tx.send(Some(exit));
        });

        let (output_tx, mut output_rx) = mpsc::channel::<Vec<u8>>(64);
        let output = Arc::new(Mutex::new(Vec::new()));
        let collected = output.clone();
        tokio::spawn(async move {
            while let Some(bytes) = output_rx.recv().await {
                collected.lock().unwrap().extend_from_slice(&bytes);
            }
        });
        let (usage_tx, mut usage_rx) = mpsc::unbounded_channel();
        let usage = Arc::new(Mutex::new(Vec::new()));
        let reported = usage.clone();
        tokio::spawn(async move {
            while let Some(update) = usage_rx.recv().await {
                reported.lock().unwrap().push(update);
            }
        });
        let (approvals_tx, approvals_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::channel(16);
        let cx = AgentContext {
            session_id: "s-1".into(),
            task: task.into(),
            workspace,
            process: AgentProcess::new(io, pid, exit_rx),
            output: OutputSink(output_tx),
            usage: UsageSink(usage_tx),
            approvals: ApprovalAsker(approvals_tx),
            control: control_rx,
        };
        let outcome = tokio::spawn(CodexAdapter.run(cx));
        let run = Run {
            dir,
            log,
            control: control_tx,
            output,
            usage,
            outcome: Some(outcome),
        };
        (run, approvals_rx)
    }

    /// Answers every approval with `decide`, keeping the requests.
    fn answer_all(
        mut asked: Asked,
        decide: fn(&PermissionRequest) -> Decision,
    ) -> Arc<Mutex<Vec<PermissionRequest>>> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = asked.recv().await {
                let decision = decide(&request);
                kept.lock().unwrap().push(request);
                let _ = reply.send(decision);
            }
        });
        requests
    }

    fn allow(_: &PermissionRequest) -> Decision {
        Decision {
            allow: true,
            for_session: false,
            reason: None,
        }
    }

    fn allow_for_session(_: &PermissionRequest) -> Decision {
        Decision {
            allow: true,
            for_session: true,
            reason: None,
        }
    }

    fn deny(_: &PermissionRequest) -> Decision {
        Decision::deny("not today")
    }

    fn decision_of(reply: &Value) -> &str {
        reply["result"]["decision"].as_str().unwrap()
    }

    #[tokio::test]
    async fn a_session_completes_with_readable_output_and_no_protocol_json() {
        let (mut run, asked) = start("say Hello there\nrun echo from-the-shell\nedit notes.txt");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        let out = run.output();
        for expected in [
            "› say Hello there",
            "Hello there",
            "$ echo from-the-shell",
            "from-the-shell",
            "exit 0",
            "✎ notes.txt (added)",
            "+ edited by fake codex",
            "✔ applied",
            "✔ done",
        ] {
            assert!(out.contains(expected), "no {expected:?} in:\n{out}");
        }
        for raw in ["{\"", "\"method\"", "jsonrpc", "threadId"] {
            assert!(!out.contains(raw), "protocol text {raw:?} in:\n{out}");
        }
        assert!(
            !out.replace("\r\n", "").contains('\n'),
            "bare newline in:\n{out}"
        );
        // The handshake, then the thread in the workspace with a policy that asks.
        let methods: Vec<String> = run
            .protocol()
            .iter()
            .filter(|(from, m)| from == "client" && m.get("method").is_some())
            .map(|(_, m)| m["method"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            methods[..4],
            ["initialize", "initialized", "thread/start", "turn/start"]
        );
        let thread_start = &run.sent("thread/start")[0]["params"];
        assert_eq!(thread_start["approvalPolicy"], "untrusted");
        assert_eq!(thread_start["sandbox"], "workspace-write");
        assert_eq!(
            thread_start["cwd"],
            run.dir.path().join("ws").to_str().unwrap()
        );
        let input = &run.sent("turn/start")[0]["params"]["input"][0];
        assert_eq!(input["type"], "text");
        assert_eq!(
            input["text"],
            "say Hello there\nrun echo from-the-shell\nedit notes.txt"
        );
    }

    #[tokio::test]
    async fn an_allowed_command_runs_and_the_request_names_it() {
        let (mut run, asked) = start("run touch made-by-codex && exit 3");
        let requests = answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        assert!(run.dir.path().join("ws/made-by-codex").exists());
        assert!(run.output().contains("✘ exit 3"), "{}", run.output());
        // The session manager shows the request and its answer, not the adapter.
        assert!(
            !run.output().contains("approval") && !run.output().contains("allowed"),
            "{}",
            run.output()
        );
        let requests = requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.tool, "commandExecution");
        assert_eq!(
            request.kind,
            ToolKind::Shell("touch made-by-codex && exit 3".into())
        );
        assert_eq!(request.input["command"], "touch made-by-codex && exit 3");
        assert!(request.description.contains("touch made-by-codex"));
        let options = request.options.clone().unwrap();
        assert_eq!(
            options,
            Value::Array(
                DECISIONS
                    .iter()
                    .map(|d| Value::String((*d).into()))
                    .collect()
            )
        );
        let replies = run.replies_to("item/commandExecution/requestApproval");
        assert_eq!(replies.len(), 1);
        assert_eq!(decision_of(&replies[0]), "accept");
    }

    #[tokio::test]
    async fn a_denied_command_reaches_codex_as_decline() {
        let (mut run, asked) = start("run touch never-made\nsay carrying on");
        answer_all(asked, deny);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        assert!(!run.dir.path().join("ws/never-made").exists());
        let replies = run.replies_to("item/commandExecution/requestApproval");
        assert_eq!(decision_of(&replies[0]), "decline");
        let out = run.output();
        assert!(!out.contains("denied"), "{out}");
        assert!(out.contains("✘ declined"), "{out}");
        assert!(out.contains("carrying on"), "{out}");
    }

    #[tokio::test]
    async fn a_session_scoped_allow_is_accept_for_session() {
        let (mut run, asked) = start("run echo once\nrun echo once\nedit a.txt");
        let requests = answer_all(asked, allow_for_session);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        let replies = run.replies_to("item/commandExecution/requestApproval");
        assert_eq!(replies.len(), 1, "the second run needs no approval");
        assert_eq!(decision_of(&replies[0]), "acceptForSession");
        let replies = run.replies_to("item/fileChange/requestApproval");
        assert_eq!(decision_of(&replies[0]), "acceptForSession");
        // The file edit is known by the paths of its item.
        let requests = requests.lock().unwrap();
        let edit = requests.iter().find(|r| r.tool == "fileChange").unwrap();
        let path = run.dir.path().join("ws/a.txt");
        assert_eq!(
            edit.kind,
            ToolKind::FileEdit(vec![path.to_str().unwrap().to_string()])
        );
        assert_eq!(edit.description, "Edit a.txt");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn a_declined_file_change_is_not_written() {
        let (mut run, asked) = start_with("edit kept.txt", &[("kept.txt", "line one\n")]);
        answer_all(asked, deny);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            std::fs::read_to_string(run.dir.path().join("ws/kept.txt")).unwrap(),
            "line one\n"
        );
        let replies = run.replies_to("item/fileChange/requestApproval");
        assert_eq!(decision_of(&replies[0]), "decline");
        let out = run.output();
        assert!(
            out.contains("✎ kept.txt (modified)\r\n  line one\r\n+ edited by fake codex"),
            "{out}"
        );
        assert!(out.contains("✘ declined"), "{out}");
    }

    #[tokio::test]
    async fn token_usage_reaches_the_usage_sink() {
        let (mut run, asked) = start("tokens 120 30\nsay hi\ntokens 5 7");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        let usage = run.usage.lock().unwrap().clone();
        assert_eq!(usage.len(), 2);
        assert_eq!(
            usage[1],
            UsageUpdate {
                tokens_in: Some(125),
                tokens_out: Some(37),
                api_calls: None,
                cost_usd: None,
            }
        );
        assert!(
            run.output().contains("✔ done · 125 tokens in · 37 out"),
            "{}",
            run.output()
        );
    }

    #[tokio::test]
    async fn a_failed_turn_fails_the_session_with_its_message() {
        let (mut run, asked) = start("say trying\nfail the model is overloaded");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(
            outcome,
            Outcome::Failed("the model is overloaded".into()),
            "{}",
            run.output()
        );
        assert!(
            run.output()
                .contains("✘ the model is overloaded\r\n✘ failed"),
            "{}",
            run.output()
        );
    }

    #[tokio::test]
    async fn an_exit_mid_turn_is_the_exit_status_with_codex_last_words() {
        let (mut run, asked) = start("say bye\nstderr thread panicked\nexit 3");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Failed("exit status 3".into()));
        let out = run.output();
        assert!(out.contains("thread panicked"), "{out}");
        assert!(out.contains("✘ codex exited: exit status 3"), "{out}");
    }

    #[tokio::test]
    async fn codex_logs_stay_out_of_a_good_session() {
        let (mut run, asked) = start("stderr some tracing line\nsay fine");
        answer_all(asked, allow);
        assert_eq!(run.finish().await, Outcome::Completed);
        // Only the task's echo names it.
        let out = run.output();
        assert_eq!(out.matches("tracing line").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn interrupt_sends_turn_interrupt_for_the_running_turn() {
        let (mut run, asked) = start("say working\nwait");
        answer_all(asked, allow);
        run.wait_for_output("working").await;
        run.control.send(AgentControl::Interrupt).await.unwrap();
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Failed("interrupted".into()));
        let interrupts = run.sent("turn/interrupt");
        assert_eq!(interrupts.len(), 1);
        let turn_id = run
            .protocol()
            .into_iter()
            .find(|(from, m)| from == "server" && m["result"]["turn"]["id"].is_string())
            .map(|(_, m)| m["result"]["turn"]["id"].clone())
            .unwrap();
        assert_eq!(interrupts[0]["params"]["turnId"], turn_id);
        let thread_id = run.sent("turn/start")[0]["params"]["threadId"].clone();
        assert_eq!(interrupts[0]["params"]["threadId"], thread_id);
        assert!(run.output().contains("■ interrupted"));
    }

    #[tokio::test]
    async fn interrupt_while_an_approval_waits_withdraws_it() {
        let (mut run, mut asked) = start("run echo waiting");
        let (_request, reply) = tokio::time::timeout(WAIT, asked.recv())
            .await
            .unwrap()
            .unwrap();
        run.control.send(AgentControl::Interrupt).await.unwrap();
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Failed("interrupted".into()));
        // The adapter stopped asking: nobody waits for this answer any more.
        assert!(reply.is_closed());
        assert!(
            run.replies_to("item/commandExecution/requestApproval")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn typed_lines_become_turns_after_the_current_one() {
        let (mut run, mut asked) = start("run echo first");
        let (request, reply) = tokio::time::timeout(WAIT, asked.recv())
            .await
            .unwrap()
            .unwrap();
        // Typed while the first turn waits: a typo fixed with backspace, an arrow key ignored.
        run.control
            .send(AgentControl::Input(b"say agx\x7fain\x1b[A\r".to_vec()))
            .await
            .unwrap();
        run.control
            .send(AgentControl::Input(b"say and again\r".to_vec()))
            .await
            .unwrap();
        run.wait_for_output("say and again").await;
        reply.send(allow(&request)).unwrap();
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed, "{}", run.output());
        let turns: Vec<Value> = run
            .sent("turn/start")
            .iter()
            .map(|m| m["params"]["input"][0]["text"].clone())
            .collect();
        assert_eq!(turns, ["run echo first", "say again", "say and again"]);
        let out = run.output();
        assert!(out.contains("say agx\x08 \x08ain\r\n"), "{out:?}");
        assert_eq!(out.matches("✔ done").count(), 3, "{out}");
    }

    #[tokio::test]
    async fn unknown_server_requests_get_an_error_not_silence() {
        let (mut run, asked) = start("userinput Which colour?\nsay after");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        let replies = run.replies_to("item/tool/requestUserInput");
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["error"]["code"], METHOD_NOT_FOUND);
        assert!(run.output().contains("after"));
    }

    #[tokio::test]
    async fn warnings_and_retries_are_shown() {
        let (mut run, asked) = start("warn disk almost full\nretry reconnecting\nsay ok");
        answer_all(asked, allow);
        let outcome = run.finish().await;
        assert_eq!(outcome, Outcome::Completed);
        let out = run.output();
        assert!(out.contains("⚠ disk almost full"), "{out}");
        assert!(out.contains("⚠ reconnecting (retrying)"), "{out}");
    }
}
