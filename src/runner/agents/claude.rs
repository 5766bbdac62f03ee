//! The `claude` adapter: Claude Code in print mode, stream-json on stdin and stdout.
//!
//! Shapes as declared by `@anthropic-ai/claude-agent-sdk` 0.3.333 (Claude Code 2.1.333), with the
//! message types of `@anthropic-ai/sdk` 1.15.0; excerpts of both are in
//! `tests/fakes/claude-agent-sdk/` and the tests below check this module's names against them.
//!
//! The conversation: the task goes in as the first `user` message. Claude Code answers with a
//! `system`/`init` line, then `assistant` messages (text and `tool_use` blocks) and `user`
//! messages (`tool_result` blocks), and ends each turn with one `result`. Before a tool runs it
//! asks with a `can_use_tool` control request and waits; the answer is a `control_response`, and
//! either side may withdraw its own pending request with `control_cancel_request`. Each line the
//! user types in the dashboard is a follow-up `user` message. When a turn ends and nothing more is
//! queued, stdin is closed and Claude Code exits.
//!
//! Usage, as the declarations describe the fields: `total_cost_usd` is the session's running
//! total; `modelUsage` holds per-model running totals (subagents and internal calls included),
//! while the result's `usage` covers one turn of the main loop only. So tokens in are
//! `inputTokens + cacheReadInputTokens + cacheCreationInputTokens` summed over `modelUsage` (cache
//! reads and writes are input the model processed, billed at their own rates), tokens out are
//! `outputTokens`; a result without `modelUsage` adds its `usage` to the totals instead
//! (`input_tokens + cache_creation_input_tokens + cache_read_input_tokens`, `output_tokens`).
//! API calls add up each turn's `num_turns` (model round trips within a turn). During a turn the
//! assistant messages' own usage gives a running estimate (tokens and calls, no cost), which the
//! next result replaces.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::render;
use super::{
    Adapter, AgentContext, AgentControl, ApprovalAsker, Decision, Outcome, OutputSink,
    PermissionRequest, ToolKind, UsageSink, UsageUpdate,
};
use crate::runner::process::{AgentIo, ExitInfo};

/// The deny message when the reviewer gave no reason (Claude Code requires one).
const DEFAULT_DENY: &str = "denied by a Village reviewer";
/// After the agent exits, how long its stdout may stay open (held by something it started)
/// before the adapter stops reading.
const DRAIN: Duration = Duration::from_secs(2);
/// How long the agent's last stderr lines may take to arrive once it has exited.
const STDERR_GRACE: Duration = Duration::from_secs(1);

pub struct ClaudeAdapter;

impl Adapter for ClaudeAdapter {
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
        return Outcome::Failed("the claude adapter needs the agent on pipes".into());
    };
    let stderr_task = tokio::spawn(copy_stderr(stderr, cx.output.clone()));
    let (to_agent, to_stdin) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_lines(stdin, to_stdin));
    let (decided_tx, mut decided) = mpsc::unbounded_channel();
    let mut session = Session {
        output: cx.output.clone(),
        usage: cx.usage.clone(),
        approvals: cx.approvals.clone(),
        stdin: Some(to_agent),
        decided: decided_tx,
        pending: HashMap::new(),
        prompts_sent: 0,
        results: 0,
        interrupts: 0,
        last_error: None,
        totals: Totals::default(),
        turn_calls: HashMap::new(),
        live: None,
        typed: render::LineInput::default(),
    };
    session.prompt(&cx.task);

    let mut stdout = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut stdout_open = true;
    let mut control_open = true;
    let mut exit: Option<ExitInfo> = None;
    let mut drain_until = Instant::now();
    loop {
        if !stdout_open && exit.is_some() {
            break;
        }
        tokio::select! {
            read = stdout.read_until(b'\n', &mut line), if stdout_open => {
                // `read_until` keeps a partial line in `line` if another branch wins, so the
                // buffer is only cleared once a line is complete.
                match read {
                    Ok(n) if n > 0 => {}
                    _ => stdout_open = false,
                }
                if !line.is_empty() {
                    session.on_line(&line).await;
                    line.clear();
                }
            }
            Some((id, decision)) = decided.recv() => session.on_decision(id, decision).await,
            control = cx.control.recv(), if control_open => match control {
                Some(AgentControl::Input(bytes)) => session.on_input(&bytes).await,
                Some(AgentControl::Interrupt) => session.interrupt().await,
                None => control_open = false,
            },
            status = cx.process.wait(), if exit.is_none() => {
                exit = Some(status);
                drain_until = Instant::now() + DRAIN;
            }
            _ = tokio::time::sleep_until(drain_until), if exit.is_some() && stdout_open => {
                stdout_open = false;
            }
        }
    }

    // Withdrawn with the session: dropping an ask tells the broker nobody waits for it.
    for (_, pending) in session.pending.drain() {
        pending.task.abort();
    }
    // The agent is gone: whatever it did not read has no reader.
    session.stdin = None;
    writer.abort();
    let _ = tokio::time::timeout(STDERR_GRACE, stderr_task).await;

    let exit = exit.unwrap_or(ExitInfo::Signal(9));
    match session.last_error.take() {
        // A turn that failed says why better than the status the CLI exits with.
        Some(error) => Outcome::Failed(error),
        None => {
            let outcome = exit.outcome();
            if let Outcome::Failed(why) = &outcome {
                session
                    .output
                    .write(render::error(&format!("claude ended: {why}")))
                    .await;
            }
            outcome
        }
    }
}

/// One session's protocol state.
struct Session {
    output: OutputSink,
    usage: UsageSink,
    approvals: ApprovalAsker,
    /// Lines for the CLI's stdin; `None` once it is closed.
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Where the approval tasks put their decisions.
    decided: mpsc::UnboundedSender<(String, Decision)>,
    /// `can_use_tool` requests waiting for a decision, by `request_id`.
    pending: HashMap<String, PendingApproval>,
    prompts_sent: u64,
    results: u64,
    interrupts: u64,
    /// The error of the last turn, if it failed.
    last_error: Option<String>,
    /// Usage as of the last result.
    totals: Totals,
    /// This turn's API calls so far (by message id) and their tokens, for the running estimate.
    turn_calls: HashMap<String, (u64, u64)>,
    /// The running estimate last reported, so that repeats are not reported again.
    live: Option<(u64, u64, u64)>,
    typed: render::LineInput,
}

struct PendingApproval {
    task: JoinHandle<()>,
    input: Value,
    tool_use_id: Option<String>,
}

#[derive(Default)]
struct Totals {
    tokens_in: u64,
    tokens_out: u64,
    api_calls: u64,
    cost_usd: Option<f64>,
}

impl Totals {
    fn update(&self) -> UsageUpdate {
        UsageUpdate {
            tokens_in: Some(self.tokens_in),
            tokens_out: Some(self.tokens_out),
            api_calls: Some(self.api_calls),
            cost_usd: self.cost_usd,
        }
    }
}

impl Session {
    /// One line of the CLI's stdout.
    async fn on_line(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let msg = match serde_json::from_str::<Value>(text) {
            Ok(msg) if msg.is_object() => msg,
            // Not protocol (a warning printed by something in the CLI's process): shown as it is
            // said, dimmed, rather than ending a session over it.
            _ => {
                self.output.write(render::note(text)).await;
                return;
            }
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("system") => self.on_system(&msg).await,
            Some("assistant") => self.on_assistant(&msg).await,
            Some("user") => self.on_user(&msg).await,
            Some("result") => self.on_result(&msg).await,
            Some("control_request") => self.on_control_request(&msg).await,
            Some("control_cancel_request") => {
                if let Some(id) = msg.get("request_id").and_then(Value::as_str) {
                    self.on_cancel(id).await;
                }
            }
            // Answers to our interrupts (nothing to act on), partial stream events, task and
            // hook progress, rate-limit notices, …: not shown.
            _ => {}
        }
    }

    async fn on_system(&mut self, msg: &Value) {
        match msg.get("subtype").and_then(Value::as_str) {
            Some("init") => {
                let version = text(msg.get("claude_code_version"));
                let model = text(msg.get("model"));
                self.output
                    .write(render::note(&format!("Claude Code {version} · {model}")))
                    .await;
            }
            Some("api_retry") => {
                let line = format!(
                    "API error ({}), retry {} of {}",
                    text(msg.get("error")),
                    count(msg.get("attempt")),
                    count(msg.get("max_retries"))
                );
                self.output.write(render::note(&line)).await;
            }
            _ => {}
        }
    }

    async fn on_assistant(&mut self, msg: &Value) {
        let Some(message) = msg.get("message") else {
            return;
        };
        for block in blocks(message.get("content")) {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let said = text(block.get("text"));
                    if !said.trim().is_empty() {
                        self.output.write(render::assistant_text(said)).await;
                    }
                }
                Some("tool_use") => {
                    let tool = text(block.get("name"));
                    let input = block.get("input").unwrap_or(&Value::Null);
                    self.output.write(render_tool_use(tool, input)).await;
                }
                // Thinking and server-side tool blocks stay out of the terminal.
                _ => {}
            }
        }
        if let Some(error) = msg.get("error").and_then(Value::as_str) {
            self.output
                .write(render::error(&format!("API error: {error}")))
                .await;
        }
        self.live_usage(message);
    }

    async fn on_user(&mut self, msg: &Value) {
        let Some(message) = msg.get("message") else {
            return;
        };
        // A string content is a prompt (ours or one the CLI wrote itself): not shown again.
        for block in blocks(message.get("content")) {
            if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                continue;
            }
            let result = match block.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(content) => blocks(Some(content))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                None => String::new(),
            };
            let is_error = block.get("is_error").and_then(Value::as_bool) == Some(true);
            self.output
                .write(render::tool_result(&result, is_error))
                .await;
        }
    }

    async fn on_result(&mut self, msg: &Value) {
        self.results += 1;
        let subtype = text(msg.get("subtype"));
        let is_error = msg.get("is_error").and_then(Value::as_bool) == Some(true);

        self.totals.api_calls += count(msg.get("num_turns"));
        if let Some((tokens_in, tokens_out)) = model_usage_tokens(msg.get("modelUsage")) {
            self.totals.tokens_in = tokens_in;
            self.totals.tokens_out = tokens_out;
        } else if let Some((tokens_in, tokens_out)) = usage_tokens(msg.get("usage")) {
            self.totals.tokens_in += tokens_in;
            self.totals.tokens_out += tokens_out;
        }
        if let Some(cost) = msg.get("total_cost_usd").and_then(Value::as_f64) {
            self.totals.cost_usd = Some(cost);
        }
        self.turn_calls.clear();
        self.live = None;
        let update = self.totals.update();
        self.usage.report(update.clone());

        let error = if subtype == "success" && !is_error {
            None
        } else {
            Some(result_error(msg, subtype))
        };
        if let Some(error) = &error {
            self.output.write(render::error(error)).await;
        }
        self.output
            .write(render::summary(error.is_none(), &update))
            .await;
        self.last_error = error;

        // More turns follow if the CLI has queued prompts (it may merge several into one turn,
        // so its own count is the one to trust) or, from a CLI that does not say, if fewer
        // results came than prompts went. After a stop, nothing more is wanted.
        let more = match msg.get("queued_turn_count").and_then(Value::as_u64) {
            Some(queued) => queued > 0,
            None => self.prompts_sent > self.results,
        };
        if self.interrupts > 0 || !more {
            self.stdin = None;
        }
    }

    async fn on_control_request(&mut self, msg: &Value) {
        // Without an id there is nothing to answer to.
        let Some(id) = msg.get("request_id").and_then(Value::as_str) else {
            return;
        };
        let request = msg.get("request").unwrap_or(&Value::Null);
        match request.get("subtype").and_then(Value::as_str) {
            Some("can_use_tool") => self.ask(id, request).await,
            // A dialog kind is only sent to a host that declared it, and one it did not declare
            // must stay unanswered; Village declares none.
            Some("request_user_dialog") => {}
            other => {
                let error = format!(
                    "Village does not handle {} requests",
                    other.unwrap_or("unnamed")
                );
                self.send(&ControlResponse {
                    kind: "control_response",
                    response: ControlResponseBody::Error {
                        request_id: id,
                        error: &error,
                    },
                });
            }
        }
    }

    /// A `can_use_tool` request goes to the broker in its own task, so that the CLI's other
    /// messages (a withdrawal of this very request among them) are read while a human decides.
    async fn ask(&mut self, id: &str, request: &Value) {
        if self.pending.contains_key(id) {
            // Delivered twice; the first ask stands.
            return;
        }
        let tool = text(request.get("tool_name")).to_string();
        let input = request.get("input").cloned().unwrap_or(Value::Null);
        // The session manager shows the request and its answer (one line each, for every agent).
        let asked = PermissionRequest {
            kind: tool_kind(&tool, &input),
            description: describe(&tool, &input),
            tool,
            input: input.clone(),
            options: request
                .get("permission_suggestions")
                .filter(|v| !v.is_null())
                .cloned(),
        };
        let approvals = self.approvals.clone();
        let decided = self.decided.clone();
        let request_id = id.to_string();
        let task = tokio::spawn(async move {
            let decision = approvals.ask(asked).await;
            let _ = decided.send((request_id, decision));
        });
        let tool_use_id = request
            .get("tool_use_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.pending.insert(
            id.to_string(),
            PendingApproval {
                task,
                input,
                tool_use_id,
            },
        );
    }

    async fn on_decision(&mut self, id: String, decision: Decision) {
        // Gone if the CLI withdrew the request meanwhile: it ignores late answers, so none goes.
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        let tool_use_id = pending.tool_use_id.as_deref();
        // An allow passes the input unchanged, and no permission rules: a `scope: session` allow
        // is remembered by the broker, so every later request still reaches Village.
        let result = if decision.allow {
            PermissionResult::Allow {
                updated_input: &pending.input,
                tool_use_id,
            }
        } else {
            let message = decision
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or(DEFAULT_DENY);
            PermissionResult::Deny {
                message,
                tool_use_id,
            }
        };
        self.send(&ControlResponse {
            kind: "control_response",
            response: ControlResponseBody::Success {
                request_id: &id,
                response: result,
            },
        });
    }

    async fn on_cancel(&mut self, id: &str) {
        if let Some(pending) = self.pending.remove(id) {
            pending.task.abort();
            self.output
                .write(render::note("approval withdrawn by the agent"))
                .await;
        }
    }

    async fn on_input(&mut self, bytes: &[u8]) {
        let typed = self.typed.feed(bytes);
        self.output.write(typed.echo).await;
        for line in typed.lines {
            if self.stdin.is_some() {
                self.prompt(&line);
            } else {
                self.output
                    .write(render::note("(the agent has finished; input is closed)"))
                    .await;
            }
        }
    }

    async fn interrupt(&mut self) {
        if self.stdin.is_none() {
            // Nothing can be sent; the session manager's signals follow.
            return;
        }
        self.interrupts += 1;
        let request_id = format!("village-interrupt-{}", self.interrupts);
        self.send(&ControlRequest {
            kind: "control_request",
            request_id: &request_id,
            request: InterruptRequest {
                subtype: "interrupt",
            },
        });
        self.output.write(render::stop("interrupting…")).await;
    }

    /// A user message: the task, or a follow-up typed in the dashboard.
    fn prompt(&mut self, text: &str) {
        self.prompts_sent += 1;
        self.send(&UserMessage {
            kind: "user",
            // As the SDK sends it: the CLI fills in its own session.
            session_id: "",
            message: UserMessageParam {
                role: "user",
                content: [TextBlockParam { kind: "text", text }],
            },
            parent_tool_use_id: None,
        });
    }

    fn send(&self, msg: &impl Serialize) {
        let Some(stdin) = &self.stdin else {
            return;
        };
        if let Ok(mut line) = serde_json::to_vec(msg) {
            line.push(b'\n');
            // The writer ends only when the CLI's stdin breaks; the exit then tells the rest.
            let _ = stdin.send(line);
        }
    }

    /// The running estimate from an assistant message's usage: one API call per message id
    /// (a response split into several messages repeats its id, with usage growing).
    fn live_usage(&mut self, message: &Value) {
        let (Some(id), Some(tokens)) = (
            message.get("id").and_then(Value::as_str),
            usage_tokens(message.get("usage")),
        ) else {
            return;
        };
        self.turn_calls.insert(id.to_string(), tokens);
        let (tokens_in, tokens_out) = self
            .turn_calls
            .values()
            .fold((0, 0), |(i, o), (ti, to)| (i + ti, o + to));
        let live = (
            self.totals.tokens_in + tokens_in,
            self.totals.tokens_out + tokens_out,
            self.totals.api_calls + self.turn_calls.len() as u64,
        );
        if self.live != Some(live) {
            self.live = Some(live);
            self.usage.report(UsageUpdate {
                tokens_in: Some(live.0),
                tokens_out: Some(live.1),
                api_calls: Some(live.2),
                cost_usd: None,
            });
        }
    }
}

/// A tool call as the terminal shows it: file edits as diffs, anything else as one line.
fn render_tool_use(tool: &str, input: &Value) -> String {
    let path = text(input.get("file_path"));
    match tool {
        "Edit" => render::diff(
            path,
            text(input.get("old_string")),
            text(input.get("new_string")),
        ),
        // Only what is written is known here, not what it replaces.
        "Write" => render::diff(path, "", text(input.get("content"))),
        // Older CLIs: several edits of one file.
        "MultiEdit" => {
            let mut out = String::new();
            for edit in blocks(input.get("edits")) {
                out.push_str(&render::diff(
                    path,
                    text(edit.get("old_string")),
                    text(edit.get("new_string")),
                ));
            }
            if out.is_empty() {
                out = render::tool_call(tool, &render::input_summary(input));
            }
            out
        }
        _ => render::tool_call(tool, &render::input_summary(input)),
    }
}

/// What a Claude Code tool call would do, for the broker to classify: the adapter's permission
/// requests and the `village approval claude-hook` requests alike.
pub fn tool_kind(tool: &str, input: &Value) -> ToolKind {
    // Names are read with literal `get` calls, where the declarations check finds them.
    let field = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_string);
    match tool {
        "Bash" => ToolKind::Shell(field(input.get("command")).unwrap_or_default()),
        "Edit" | "Write" | "MultiEdit" => {
            ToolKind::FileEdit(field(input.get("file_path")).into_iter().collect())
        }
        "NotebookEdit" => {
            ToolKind::FileEdit(field(input.get("notebook_path")).into_iter().collect())
        }
        "Read" => ToolKind::FileRead(field(input.get("file_path")).unwrap_or_default()),
        // Searches and listings read the tree under `path`, the agent's cwd when it has none.
        "Grep" | "LS" => ToolKind::FileRead(field(input.get("path")).unwrap_or_else(|| ".".into())),
        "Glob" => ToolKind::FileRead(
            field(input.get("path"))
                .or_else(|| field(input.get("pattern")))
                .unwrap_or_else(|| ".".into()),
        ),
        "WebFetch" => ToolKind::Fetch(field(input.get("url")).unwrap_or_default()),
        "WebSearch" => ToolKind::Fetch(field(input.get("query")).unwrap_or_default()),
        _ => ToolKind::Other,
    }
}

/// A Claude Code tool call in one line, for an approval's description: `Bash: git status`.
pub fn describe(tool: &str, input: &Value) -> String {
    format!("{tool}: {}", render::input_summary(input))
}

/// Why a turn failed: a success-subtype result with `is_error` carries the API error in
/// `result`; the error subtypes name the reason and may list messages in `errors`.
fn result_error(msg: &Value, subtype: &str) -> String {
    if subtype == "success" {
        let said = text(msg.get("result")).trim();
        return if said.is_empty() {
            "the turn ended on an API error".into()
        } else {
            said.to_string()
        };
    }
    let errors: Vec<&str> = blocks(msg.get("errors"))
        .filter_map(Value::as_str)
        .filter(|e| !e.trim().is_empty())
        .collect();
    let subtype = if subtype.is_empty() { "error" } else { subtype };
    if errors.is_empty() {
        subtype.to_string()
    } else {
        format!("{subtype}: {}", errors.join("; "))
    }
}

/// Tokens in and out of a `modelUsage` map, summed over its models.
fn model_usage_tokens(model_usage: Option<&Value>) -> Option<(u64, u64)> {
    let models = model_usage?.as_object()?;
    if models.is_empty() {
        return None;
    }
    Some(models.values().fold((0, 0), |(i, o), m| {
        (
            i + count(m.get("inputTokens"))
                + count(m.get("cacheReadInputTokens"))
                + count(m.get("cacheCreationInputTokens")),
            o + count(m.get("outputTokens")),
        )
    }))
}

/// Tokens in and out of a Messages API `usage`.
fn usage_tokens(usage: Option<&Value>) -> Option<(u64, u64)> {
    let usage = usage.filter(|u| u.is_object())?;
    Some((
        count(usage.get("input_tokens"))
            + count(usage.get("cache_creation_input_tokens"))
            + count(usage.get("cache_read_input_tokens")),
        count(usage.get("output_tokens")),
    ))
}

fn text(value: Option<&Value>) -> &str {
    value.and_then(Value::as_str).unwrap_or("")
}

fn count(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}

/// The items of an array (none for anything else).
fn blocks(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flat_map(|items| items.iter())
}

async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(line) = lines.recv().await {
        if stdin.write_all(&line).await.is_err() {
            break;
        }
    }
    // Dropping stdin closes it: the CLI's end of input.
}

/// The CLI's stderr, dimmed: its warnings and crashes are worth seeing, but are not the agent's
/// words.
async fn copy_stderr(stderr: ChildStderr, output: OutputSink) {
    let mut stderr = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match stderr.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    output.write(render::note(text)).await;
                }
            }
        }
    }
}

// What the adapter writes, named as the SDK's declarations name it.

#[derive(Serialize)]
struct UserMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: &'a str,
    message: UserMessageParam<'a>,
    /// Null: a prompt of the main conversation, not of a subagent.
    parent_tool_use_id: Option<&'a str>,
}

#[derive(Serialize)]
struct UserMessageParam<'a> {
    role: &'static str,
    content: [TextBlockParam<'a>; 1],
}

#[derive(Serialize)]
struct TextBlockParam<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct ControlRequest<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: &'a str,
    request: InterruptRequest,
}

#[derive(Serialize)]
struct InterruptRequest {
    subtype: &'static str,
}

#[derive(Serialize)]
struct ControlResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    response: ControlResponseBody<'a>,
}

#[derive(Serialize)]
#[serde(tag = "subtype", rename_all = "lowercase")]
enum ControlResponseBody<'a> {
    Success {
        request_id: &'a str,
        response: PermissionResult<'a>,
    },
    Error {
        request_id: &'a str,
        error: &'a str,
    },
}

#[derive(Serialize)]
#[serde(tag = "behavior", rename_all = "lowercase")]
enum PermissionResult<'a> {
    Allow {
        #[serde(rename = "updatedInput")]
        updated_input: &'a Value,
        #[serde(rename = "toolUseID", skip_serializing_if = "Option::is_none")]
        tool_use_id: Option<&'a str>,
    },
    Deny {
        message: &'a str,
        #[serde(rename = "toolUseID", skip_serializing_if = "Option::is_none")]
        tool_use_id: Option<&'a str>,
    },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    use tokio::sync::{oneshot, watch};

    use super::*;
    use crate::runner::process::AgentProcess;

    fn repo_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// What one session against the fake left behind.
    struct Run {
        outcome: Outcome,
        /// The terminal output with colours removed.
        output: String,
        raw_output: String,
        usage: Vec<UsageUpdate>,
        asked: Vec<PermissionRequest>,
        /// The fake's protocol log: `{"dir": "in"|"out", "msg"|"raw": …}` per line.
        log: Vec<Value>,
        /// Asks left unanswered, to see whether the adapter let go of them.
        held: Vec<oneshot::Sender<Decision>>,
    }

    impl Run {
        /// Messages the fake read (`in`) or wrote (`out`).
        fn messages(&self, dir: &str) -> Vec<&Value> {
            self.log
                .iter()
                .filter(|e| e["dir"] == dir)
                .filter_map(|e| e.get("msg"))
                .collect()
        }

        fn of_type(&self, dir: &str, kind: &str) -> Vec<&Value> {
            self.messages(dir)
                .into_iter()
                .filter(|m| m["type"] == kind)
                .collect()
        }
    }

    fn allow(_: &PermissionRequest) -> Option<Decision> {
        Some(Decision {
            allow: true,
            for_session: false,
            reason: None,
        })
    }

    /// Runs the adapter against the fake CLI with `task`; the broker answers with `decide`
    /// (`None`: never), and `controls` go to the adapter after their delays.
    async fn session(
        task: &str,
        decide: fn(&PermissionRequest) -> Option<Decision>,
        controls: Vec<(u64, AgentControl)>,
    ) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("protocol.log");
        let mut child = tokio::process::Command::new("python3")
            .arg(repo_path("tests/fakes/fake_claude.py"))
            .args(super::super::Protocol::Claude.extra_args())
            .env("FAKE_PROTOCOL_LOG", &log_path)
            .current_dir(dir.path())
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
            let info = match status.code() {
                Some(code) => ExitInfo::Code(code),
                None => ExitInfo::Signal(status.signal().unwrap_or(9)),
            };
            let _ = exit_tx.send(Some(info));
        });

        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let collector = tokio::spawn(async move {
            let mut bytes = Vec::new();
            while let Some(chunk) = out_rx.recv().await {
                bytes.extend(chunk);
            }
            bytes
        });
        let (usage_tx, mut usage_rx) = mpsc::unbounded_channel();
        let (ask_tx, mut ask_rx) =
            mpsc::unbounded_channel::<(PermissionRequest, oneshot::Sender<Decision>)>();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let broker = {
            let (asked, held) = (asked.clone(), held.clone());
            tokio::spawn(async move {
                while let Some((request, answer)) = ask_rx.recv().await {
                    asked.lock().unwrap().push(request.clone());
                    match decide(&request) {
                        Some(decision) => {
                            let _ = answer.send(decision);
                        }
                        None => held.lock().unwrap().push(answer),
                    }
                }
            })
        };
        let (control_tx, control_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for (delay_ms, control) in controls {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _ = control_tx.send(control).await;
            }
            // Kept open until the session ends, like the runner's.
            control_tx.closed().await;
        });

        let cx = AgentContext {
            session_id: "s-1".into(),
            task: task.into(),
            workspace: dir.path().to_path_buf(),
            process: AgentProcess::new(io, pid, exit_rx),
            output: OutputSink(out_tx),
            usage: UsageSink(usage_tx),
            approvals: ApprovalAsker(ask_tx),
            control: control_rx,
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), ClaudeAdapter.run(cx))
            .await
            .expect("the adapter finishes");
        let raw = tokio::time::timeout(Duration::from_secs(5), collector)
            .await
            .expect("the output closes")
            .unwrap();
        broker.abort();
        let mut usage = Vec::new();
        while let Ok(u) = usage_rx.try_recv() {
            usage.push(u);
        }
        let log = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let raw_output = String::from_utf8_lossy(&raw).into_owned();
        Run {
            outcome,
            output: render::plain(&raw_output),
            raw_output,
            usage,
            asked: asked.lock().unwrap().clone(),
            log,
            held: std::mem::take(&mut *held.lock().unwrap()),
        }
    }

    fn assert_no_protocol_json(run: &Run) {
        for needle in [
            "{\"type\"",
            "\"session_id\"",
            "control_request",
            "tool_use_id",
        ] {
            assert!(
                !run.output.contains(needle),
                "raw protocol in the terminal ({needle}):\n{}",
                run.output
            );
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn a_task_runs_to_completion_and_reads_well() {
        let run = session(
            "say Hello from the fake\ngarbage this line is not json\nstderr warming up",
            allow,
            vec![],
        )
        .await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        assert!(
            run.output.contains("Hello from the fake\r\n"),
            "{}",
            run.output
        );
        assert!(run.output.contains("this line is not json"));
        assert!(run.output.contains("warming up"));
        assert!(run.output.contains("Claude Code 2.1.333"));
        assert!(run.output.contains("✔ done"));
        assert!(
            !run.raw_output.contains("\n\n") && !run.raw_output.replace("\r\n", "").contains('\n')
        );
        assert_no_protocol_json(&run);
        // The task went in as the first user message, as the SDK sends it.
        let prompts = run.of_type("in", "user");
        assert_eq!(prompts.len(), 1);
        assert_eq!(
            prompts[0],
            &json(
                r#"{"type":"user","session_id":"","parent_tool_use_id":null,
                    "message":{"role":"user","content":[{"type":"text",
                    "text":"say Hello from the fake\ngarbage this line is not json\nstderr warming up"}]}}"#
            )
        );
    }

    #[tokio::test]
    async fn an_allowed_tool_call_goes_through_the_broker() {
        let run = session("ask Bash git status\nsay finished", allow, vec![]).await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        assert_eq!(run.asked.len(), 1);
        let asked = &run.asked[0];
        assert_eq!(asked.tool, "Bash");
        assert_eq!(asked.kind, ToolKind::Shell("git status".into()));
        assert_eq!(
            asked.input,
            json(r#"{"command":"git status","description":"runs git status"}"#)
        );
        assert_eq!(asked.description, "Bash: git status");
        assert_eq!(
            asked.options,
            Some(json(
                r#"[{"type":"addRules","rules":[{"toolName":"Bash"}],"behavior":"allow","destination":"session"}]"#
            ))
        );
        let asks = run.of_type("out", "control_request");
        let answers = run.of_type("in", "control_response");
        assert_eq!((asks.len(), answers.len()), (1, 1));
        let expected = format!(
            r#"{{"subtype":"success","request_id":{},"response":{{"behavior":"allow",
                "updatedInput":{{"command":"git status","description":"runs git status"}},
                "toolUseID":{}}}}}"#,
            asks[0]["request_id"], asks[0]["request"]["tool_use_id"]
        );
        assert_eq!(answers[0]["response"], json(&expected));
        assert!(run.output.contains("▸ Bash git status"), "{}", run.output);
        // The session manager shows the request and its answer, not the adapter.
        assert!(
            !run.output.contains("waiting for approval"),
            "{}",
            run.output
        );
        assert!(!run.output.contains("✔ allowed"), "{}", run.output);
        assert!(
            run.output
                .contains(r#"allowed: Bash {"command": "git status""#)
        );
        assert!(run.output.contains("⎿ ok: Bash"));
        assert!(run.output.contains("finished"));
        assert_no_protocol_json(&run);
    }

    #[tokio::test]
    async fn a_deny_reaches_the_agent_with_its_message() {
        fn decide(request: &PermissionRequest) -> Option<Decision> {
            Some(match request.tool.as_str() {
                "WebFetch" => Decision::deny("not today"),
                _ => Decision {
                    allow: false,
                    for_session: false,
                    reason: None,
                },
            })
        }
        let run = session(
            "ask WebFetch https://example.com/x\nask WebSearch rust tokio\nsay still here",
            decide,
            vec![],
        )
        .await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        let kinds: Vec<&ToolKind> = run.asked.iter().map(|r| &r.kind).collect();
        assert_eq!(
            kinds,
            [
                &ToolKind::Fetch("https://example.com/x".into()),
                &ToolKind::Fetch("rust tokio".into())
            ]
        );
        let results: Vec<(&Value, &Value)> = run
            .of_type("in", "control_response")
            .iter()
            .map(|m| (&m["response"]["request_id"], &m["response"]["response"]))
            .collect();
        let asks = run.of_type("out", "control_request");
        assert_eq!(results.len(), 2);
        for ((id, result), (ask, message)) in results
            .into_iter()
            .zip(asks.iter().zip(["not today", DEFAULT_DENY]))
        {
            assert_eq!(id, &ask["request_id"]);
            let expected = format!(
                r#"{{"behavior":"deny","message":"{message}","toolUseID":{}}}"#,
                ask["request"]["tool_use_id"]
            );
            assert_eq!(result, &json(&expected));
        }
        assert!(!run.output.contains("✘ denied"), "{}", run.output);
        assert!(run.output.contains("denied: not today"));
        assert!(run.output.contains("denied: denied by a Village reviewer"));
        assert!(run.output.contains("still here"));
    }

    #[tokio::test]
    async fn file_edits_are_shown_as_diffs_and_classified_by_path() {
        let run = session("edit src/lib.rs\nwrite notes.txt hello", allow, vec![]).await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        let kinds: Vec<&ToolKind> = run.asked.iter().map(|r| &r.kind).collect();
        assert_eq!(
            kinds,
            [
                &ToolKind::FileEdit(vec!["src/lib.rs".into()]),
                &ToolKind::FileEdit(vec!["notes.txt".into()])
            ]
        );
        assert!(
            run.output
                .contains("✎ src/lib.rs\r\n- old line\r\n+ new line\r\n"),
            "{}",
            run.output
        );
        assert!(run.output.contains("✎ notes.txt\r\n+ hello\r\n"));
    }

    #[tokio::test]
    async fn a_withdrawn_request_is_not_answered_and_its_ask_is_dropped() {
        let run = session(
            "cancel Bash sleep 100\nsleep 0.3\nsay after",
            allow_nothing,
            vec![],
        )
        .await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        assert_eq!(run.asked.len(), 1);
        assert!(run.of_type("in", "control_response").is_empty());
        assert!(run.output.contains("approval withdrawn by the agent"));
        assert!(run.output.contains("after"));
        assert_eq!(run.held.len(), 1);
        assert!(
            run.held[0].is_closed(),
            "the broker still thinks someone waits"
        );
    }

    fn allow_nothing(_: &PermissionRequest) -> Option<Decision> {
        None
    }

    #[tokio::test]
    async fn usage_arrives_with_tokens_and_cost() {
        let run = session(
            "tokens 1000 200 300 400\ncost 0.0123\nsay one\nsay two",
            allow,
            vec![],
        )
        .await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        // The result: modelUsage totals, the cost, the turn's round trips.
        assert_eq!(
            run.usage.last(),
            Some(&UsageUpdate {
                tokens_in: Some(1700),
                tokens_out: Some(200),
                api_calls: Some(2),
                cost_usd: Some(0.0123),
            })
        );
        // Before it, the running estimate from the assistant messages (two API calls).
        assert!(run.usage.contains(&UsageUpdate {
            tokens_in: Some(3400),
            tokens_out: Some(400),
            api_calls: Some(2),
            cost_usd: None,
        }));
        assert!(
            run.output
                .contains("1700 tokens in · 200 out · 2 API calls · $0.0123")
        );
    }

    #[test]
    fn usage_without_model_usage_adds_up_each_turns_usage() {
        let turn = json(
            r#"{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":2,"cache_read_input_tokens":3}"#,
        );
        assert_eq!(usage_tokens(Some(&turn)), Some((15, 5)));
        assert_eq!(usage_tokens(Some(&Value::Null)), None);
        assert_eq!(model_usage_tokens(Some(&json("{}"))), None);
        let models = json(
            r#"{"a":{"inputTokens":1,"outputTokens":2,"cacheReadInputTokens":3,"cacheCreationInputTokens":4},
                "b":{"inputTokens":10,"outputTokens":20,"cacheReadInputTokens":0,"cacheCreationInputTokens":0}}"#,
        );
        assert_eq!(model_usage_tokens(Some(&models)), Some((18, 22)));
    }

    #[tokio::test]
    async fn a_failed_turn_fails_the_session_with_its_message() {
        let run = session("say trying\nfail the model fell over", allow, vec![]).await;
        assert_eq!(
            run.outcome,
            Outcome::Failed("error_during_execution: the model fell over".into())
        );
        assert!(
            run.output
                .contains("✘ error_during_execution: the model fell over")
        );
        assert!(run.output.contains("✘ failed"));
        assert_no_protocol_json(&run);

        let run = session("apierror Overloaded, try later", allow, vec![]).await;
        assert_eq!(run.outcome, Outcome::Failed("Overloaded, try later".into()));
    }

    #[tokio::test]
    async fn a_crash_fails_with_the_exit_status() {
        let run = session("say bye\nexit 7", allow, vec![]).await;
        assert_eq!(run.outcome, Outcome::Failed("exit status 7".into()));
        assert!(run.output.contains("claude ended: exit status 7"));
    }

    #[tokio::test]
    async fn an_interrupt_is_sent_on_stop() {
        let started = Instant::now();
        let run = session(
            "say working\nsleep 20\nsay never",
            allow,
            vec![(500, AgentControl::Interrupt)],
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(15));
        let requests = run.of_type("in", "control_request");
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0],
            &json(
                r#"{"type":"control_request","request_id":"village-interrupt-1","request":{"subtype":"interrupt"}}"#
            )
        );
        assert_eq!(
            run.outcome,
            Outcome::Failed("error_during_execution: Request interrupted by user".into())
        );
        assert!(run.output.contains("working"));
        assert!(!run.output.contains("never"));
    }

    #[tokio::test]
    async fn a_typed_line_becomes_a_follow_up() {
        let run = session(
            "say first\nsleep 1",
            allow,
            vec![
                (200, AgentControl::Input(b"say sec".to_vec())),
                (50, AgentControl::Input(b"ond\x7fd\r".to_vec())),
            ],
        )
        .await;
        assert_eq!(run.outcome, Outcome::Completed, "{}", run.output);
        let prompts = run.of_type("in", "user");
        assert_eq!(prompts.len(), 2);
        assert_eq!(
            prompts[1]["message"]["content"],
            json(r#"[{"type":"text","text":"say second"}]"#)
        );
        assert_eq!(run.of_type("out", "result").len(), 2);
        // The typing is echoed (a DEL erases the character before it), possibly between the
        // lines of the first turn when the agent starts slowly.
        assert!(
            run.raw_output.contains("say sec") && run.raw_output.contains("ond\x08 \x08d\r\n"),
            "{:?}",
            run.raw_output
        );
        assert!(run.output.contains("second\r\n"));
    }

    #[test]
    fn tool_kinds_follow_the_tool() {
        let input = |s: &str| json(s);
        assert_eq!(
            tool_kind("Bash", &input(r#"{"command":"ls"}"#)),
            ToolKind::Shell("ls".into())
        );
        assert_eq!(
            tool_kind("MultiEdit", &input(r#"{"file_path":"a","edits":[]}"#)),
            ToolKind::FileEdit(vec!["a".into()])
        );
        assert_eq!(
            tool_kind("NotebookEdit", &input(r#"{"notebook_path":"n.ipynb"}"#)),
            ToolKind::FileEdit(vec!["n.ipynb".into()])
        );
        assert_eq!(
            tool_kind("Read", &input(r#"{"file_path":"/etc/hosts"}"#)),
            ToolKind::FileRead("/etc/hosts".into())
        );
        assert_eq!(
            tool_kind("Grep", &input(r#"{"pattern":"x"}"#)),
            ToolKind::FileRead(".".into())
        );
        assert_eq!(
            tool_kind("Glob", &input(r#"{"pattern":"src/**"}"#)),
            ToolKind::FileRead("src/**".into())
        );
        assert_eq!(
            tool_kind("LS", &input(r#"{"path":"/w/src"}"#)),
            ToolKind::FileRead("/w/src".into())
        );
        assert_eq!(tool_kind("TodoWrite", &input("{}")), ToolKind::Other);
        let multi = render_tool_use(
            "MultiEdit",
            &input(
                r#"{"file_path":"m.rs","edits":[{"old_string":"a","new_string":"b"},{"old_string":"c","new_string":"d"}]}"#,
            ),
        );
        assert_eq!(render::plain(&multi).matches("✎ m.rs").count(), 2);
    }

    // The declarations check.

    /// Declared types by name: their body lines (from the excerpts, comments already removed).
    struct Decls(HashMap<String, Vec<String>>);

    impl Decls {
        fn load() -> Self {
            let dir = repo_path("tests/fakes/claude-agent-sdk");
            let mut types = HashMap::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if !path.to_string_lossy().ends_with(".d.ts") {
                    continue;
                }
                let mut current: Option<String> = None;
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    if line.starts_with("//") {
                        continue;
                    }
                    let head = line
                        .trim_start_matches("export ")
                        .trim_start_matches("declare ");
                    let name = head
                        .strip_prefix("type ")
                        .or_else(|| head.strip_prefix("interface "));
                    if let Some(name) = name {
                        let name: String = name
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        types.insert(name.clone(), vec![line.to_string()]);
                        current = Some(name);
                    } else if let Some(name) = &current {
                        types.get_mut(name).unwrap().push(line.to_string());
                    }
                }
            }
            assert!(types.len() > 30, "the excerpts did not load: {types:?}");
            Self(types)
        }

        /// The declaration lines of `field` in type `ty` (a union's members all count).
        fn field_lines(&self, ty: &str, field: &str) -> Vec<&str> {
            let Some(lines) = self.0.get(ty) else {
                return vec![];
            };
            lines
                .iter()
                .map(|l| l.trim().trim_start_matches("} | {").trim())
                .filter(|l| {
                    let rest = l
                        .strip_prefix(field)
                        .or_else(|| l.strip_prefix(&format!("\"{field}\"")));
                    rest.is_some_and(|r| r.starts_with(':') || r.starts_with("?:"))
                })
                .collect()
        }

        fn declares(&self, ty: &str, field: &str) -> bool {
            !self.field_lines(ty, field).is_empty()
        }

        fn declares_anywhere(&self, field: &str) -> bool {
            self.0.keys().any(|ty| self.declares(ty, field))
        }
    }

    /// Every name the adapter reads and writes, with the type that declares it.
    const FIELDS: &[(&str, &[&str])] = &[
        (
            "SDKSystemMessage",
            &["type", "subtype", "claude_code_version", "model"],
        ),
        (
            "SDKAPIRetryMessage",
            &["subtype", "error", "attempt", "max_retries"],
        ),
        ("SDKAssistantMessage", &["type", "message", "error"]),
        ("BetaMessage", &["id", "content", "usage"]),
        ("BetaTextBlock", &["type", "text"]),
        ("BetaToolUseBlock", &["type", "name", "input"]),
        (
            "SDKUserMessage",
            &["type", "message", "session_id", "parent_tool_use_id"],
        ),
        ("UserMessageParam", &["role", "content"]),
        ("TextBlockParam", &["type", "text"]),
        ("ToolResultBlockParam", &["type", "content", "is_error"]),
        (
            "SDKResultSuccess",
            &[
                "type",
                "subtype",
                "is_error",
                "result",
                "num_turns",
                "total_cost_usd",
                "usage",
                "modelUsage",
                "queued_turn_count",
            ],
        ),
        (
            "SDKResultError",
            &[
                "type",
                "subtype",
                "is_error",
                "errors",
                "num_turns",
                "total_cost_usd",
                "usage",
                "modelUsage",
                "queued_turn_count",
            ],
        ),
        (
            "BetaUsage",
            &[
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ],
        ),
        (
            "ModelUsage",
            &[
                "inputTokens",
                "outputTokens",
                "cacheReadInputTokens",
                "cacheCreationInputTokens",
            ],
        ),
        ("SDKControlRequest", &["type", "request_id", "request"]),
        (
            "SDKControlPermissionRequest",
            &[
                "subtype",
                "tool_name",
                "input",
                "tool_use_id",
                "permission_suggestions",
            ],
        ),
        ("SDKControlInterruptRequest", &["subtype"]),
        ("SDKControlCancelRequest", &["type", "request_id"]),
        ("SDKControlResponse", &["type", "response"]),
        ("ControlResponse", &["subtype", "request_id", "response"]),
        ("ControlErrorResponse", &["subtype", "request_id", "error"]),
        (
            "PermissionResult",
            &["behavior", "updatedInput", "message", "toolUseID"],
        ),
        ("BashInput", &["command"]),
        ("FileEditInput", &["file_path", "old_string", "new_string"]),
        ("FileWriteInput", &["file_path", "content"]),
        ("FileReadInput", &["file_path"]),
        ("GrepInput", &["path", "pattern"]),
        ("GlobInput", &["path", "pattern"]),
        ("NotebookEditInput", &["notebook_path"]),
        ("WebFetchInput", &["url"]),
        ("WebSearchInput", &["query"]),
    ];

    /// Names read only for tools this version no longer declares (`MultiEdit`).
    const UNDECLARED_READS: &[&str] = &["edits"];

    /// Which declared type a protocol message is.
    fn message_type(msg: &Value) -> Option<&'static str> {
        let subtype = msg.get("subtype").and_then(Value::as_str);
        Some(match (msg.get("type")?.as_str()?, subtype) {
            ("system", Some("init")) => "SDKSystemMessage",
            ("system", Some("api_retry")) => "SDKAPIRetryMessage",
            ("assistant", _) => "SDKAssistantMessage",
            ("user", _) => "SDKUserMessage",
            ("result", Some("success")) => "SDKResultSuccess",
            ("result", Some(_)) => "SDKResultError",
            ("control_request", _) => "SDKControlRequest",
            ("control_response", _) => "SDKControlResponse",
            ("control_cancel_request", _) => "SDKControlCancelRequest",
            _ => return None,
        })
    }

    fn tool_input_type(tool: &str) -> Option<&'static str> {
        Some(match tool {
            "Bash" => "BashInput",
            "Edit" => "FileEditInput",
            "Write" => "FileWriteInput",
            "Read" => "FileReadInput",
            "Grep" => "GrepInput",
            "Glob" => "GlobInput",
            "NotebookEdit" => "NotebookEditInput",
            "WebFetch" => "WebFetchInput",
            "WebSearch" => "WebSearchInput",
            _ => return None,
        })
    }

    /// Checks that every key of `value` is a field of `ty`, that string values of fields
    /// declared as literals are among them, and goes down into the fields whose type is known.
    fn check(decls: &Decls, ty: &str, value: &Value, at: &str, problems: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{at}: not an object for {ty}"));
            return;
        };
        if !decls.0.contains_key(ty) {
            problems.push(format!("{at}: {ty} is not declared"));
            return;
        }
        for (key, item) in object {
            let at = format!("{at}.{key}");
            let lines = decls.field_lines(ty, key);
            if lines.is_empty() {
                problems.push(format!("{at}: {ty} declares no {key}"));
                continue;
            }
            if let Some(s) = item.as_str() {
                let literal = lines.iter().any(|l| l.contains('\''));
                if literal && !lines.iter().any(|l| l.contains(&format!("'{s}'"))) {
                    problems.push(format!("{at}: {ty}.{key} does not admit '{s}'"));
                }
            }
            let tool_of = |k: &str| {
                object
                    .get(k)
                    .and_then(Value::as_str)
                    .and_then(tool_input_type)
            };
            let each = |inner: &dyn Fn(&Value) -> Option<&'static str>,
                        problems: &mut Vec<String>| {
                for (i, element) in blocks(Some(item)).enumerate() {
                    match inner(element) {
                        Some(t) => check(decls, t, element, &format!("{at}[{i}]"), problems),
                        None => problems.push(format!("{at}[{i}]: unknown element {element}")),
                    }
                }
            };
            match (ty, key.as_str()) {
                ("SDKAssistantMessage", "message") => {
                    check(decls, "BetaMessage", item, &at, problems)
                }
                ("BetaMessage", "content") => each(
                    &|b| match b.get("type")?.as_str()? {
                        "text" => Some("BetaTextBlock"),
                        "tool_use" => Some("BetaToolUseBlock"),
                        "thinking" => Some("BetaThinkingBlock"),
                        _ => None,
                    },
                    problems,
                ),
                ("BetaMessage" | "SDKResultSuccess" | "SDKResultError", "usage") => {
                    check(decls, "BetaUsage", item, &at, problems)
                }
                ("SDKResultSuccess" | "SDKResultError", "modelUsage") => {
                    for (model, usage) in item.as_object().into_iter().flatten() {
                        check(
                            decls,
                            "ModelUsage",
                            usage,
                            &format!("{at}.{model}"),
                            problems,
                        );
                    }
                }
                ("SDKUserMessage", "message") => {
                    check(decls, "UserMessageParam", item, &at, problems)
                }
                ("UserMessageParam", "content") if item.is_array() => each(
                    &|b| match b.get("type")?.as_str()? {
                        "text" => Some("TextBlockParam"),
                        "tool_result" => Some("ToolResultBlockParam"),
                        _ => None,
                    },
                    problems,
                ),
                ("SDKControlRequest", "request") => {
                    let inner = match item.get("subtype").and_then(Value::as_str) {
                        Some("can_use_tool") => "SDKControlPermissionRequest",
                        Some("interrupt") => "SDKControlInterruptRequest",
                        other => {
                            problems.push(format!("{at}: unexpected request {other:?}"));
                            continue;
                        }
                    };
                    check(decls, inner, item, &at, problems);
                }
                ("SDKControlPermissionRequest", "permission_suggestions") => {
                    each(&|_| Some("PermissionUpdate"), problems)
                }
                ("PermissionUpdate", "rules") => each(&|_| Some("PermissionRuleValue"), problems),
                ("SDKControlPermissionRequest", "input") | ("BetaToolUseBlock", "input") => {
                    let tool = tool_of("tool_name").or_else(|| tool_of("name"));
                    if let Some(tool) = tool {
                        check(decls, tool, item, &at, problems);
                    }
                }
                ("SDKControlResponse", "response") => {
                    let inner = match item.get("subtype").and_then(Value::as_str) {
                        Some("error") => "ControlErrorResponse",
                        _ => "ControlResponse",
                    };
                    check(decls, inner, item, &at, problems);
                }
                ("ControlResponse", "response") => {
                    let inner = if item.get("behavior").is_some() {
                        "PermissionResult"
                    } else {
                        "SDKControlInterruptResponse"
                    };
                    check(decls, inner, item, &at, problems);
                }
                _ => {}
            }
        }
    }

    /// Every `.get("…")` literal in the adapter's own code (the tests excluded).
    fn names_read_by_the_adapter() -> BTreeSet<String> {
        let source = std::fs::read_to_string(repo_path("src/runner/agents/claude.rs")).unwrap();
        let code = source.split("#[cfg(test)]").next().unwrap();
        let mut names = BTreeSet::new();
        for piece in code.split(".get(\"").skip(1) {
            if let Some(end) = piece.find('"') {
                names.insert(piece[..end].to_string());
            }
        }
        names
    }

    #[tokio::test]
    async fn declared_shapes() {
        let decls = Decls::load();

        let mut problems = Vec::new();
        for (ty, fields) in FIELDS {
            for field in *fields {
                if !decls.declares(ty, field) {
                    problems.push(format!("{ty} declares no {field}"));
                }
            }
        }
        let read = names_read_by_the_adapter();
        assert!(
            read.contains("total_cost_usd") && read.len() > 30,
            "{read:?}"
        );
        for name in &read {
            if !UNDECLARED_READS.contains(&name.as_str()) && !decls.declares_anywhere(name) {
                problems.push(format!("the adapter reads {name}, which nothing declares"));
            }
        }
        for name in UNDECLARED_READS {
            assert!(
                read.contains(*name),
                "{name} is no longer read: drop the exception"
            );
        }

        // What the fake and the adapter actually exchanged, over sessions that use every
        // message the fake knows.
        fn decide(request: &PermissionRequest) -> Option<Decision> {
            match request.tool.as_str() {
                "Read" => None,
                "WebFetch" => Some(Decision::deny("no")),
                _ => allow(request),
            }
        }
        let mut log = Vec::new();
        for (task, controls) in [
            (
                "say hi\nask Bash ls\nask WebFetch https://example.com\nedit a.txt\nwrite b.txt hey\n\
                 ask Grep needle\nask WebSearch q\nask NotebookEdit n.ipynb\ncancel Read /etc/hosts\n\
                 sleep 0.2\nsay bye",
                vec![],
            ),
            ("fail boom", vec![]),
            ("apierror overloaded", vec![]),
            (
                "say first\nsleep 5",
                vec![
                    (100, AgentControl::Input(b"say more\r".to_vec())),
                    (200, AgentControl::Interrupt),
                ],
            ),
        ] {
            log.extend(session(task, decide, controls).await.log);
        }
        let mut seen = BTreeSet::new();
        for (i, entry) in log.iter().enumerate() {
            let dir = entry["dir"].as_str().unwrap_or("?");
            let Some(msg) = entry.get("msg") else {
                continue;
            };
            let subtype = msg
                .get("subtype")
                .or_else(|| msg.pointer("/request/subtype"))
                .or_else(|| msg.pointer("/response/subtype"))
                .and_then(Value::as_str)
                .unwrap_or("");
            seen.insert(format!(
                "{dir} {} {subtype}",
                msg["type"].as_str().unwrap_or("?")
            ));
            match message_type(msg) {
                Some(ty) => check(&decls, ty, msg, &format!("{dir}#{i}"), &mut problems),
                None => problems.push(format!("{dir}#{i}: undeclared message {msg}")),
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let expected = [
            "in control_request interrupt",
            "in control_response success",
            "in user ",
            "out assistant ",
            "out control_cancel_request ",
            "out control_request can_use_tool",
            "out control_response success",
            "out result error_during_execution",
            "out result success",
            "out system init",
            "out user ",
        ];
        let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn the_check_fails_on_a_renamed_field() {
        let mut decls = Decls::load();
        let lines = decls.0.get_mut("SDKResultSuccess").unwrap();
        for line in lines.iter_mut() {
            *line = line.replace("total_cost_usd", "total_cost");
        }
        assert!(!decls.declares("SDKResultSuccess", "total_cost_usd"));
        let mut problems = Vec::new();
        let result = json(r#"{"type":"result","subtype":"success","total_cost_usd":1.0}"#);
        check(&decls, "SDKResultSuccess", &result, "r", &mut problems);
        assert_eq!(
            problems,
            ["r.total_cost_usd: SDKResultSuccess declares no total_cost_usd"]
        );
        let mut problems = Vec::new();
        let wrong = json(r#"{"type":"result","subtype":"succeeded"}"#);
        check(
            &Decls::load(),
            "SDKResultSuccess",
            &wrong,
            "r",
            &mut problems,
        );
        assert_eq!(
            problems,
            ["r.subtype: SDKResultSuccess.subtype does not admit 'succeeded'"]
        );
    }
}
