//! `village demo-agent`: an ACP agent that follows a script instead of calling a model.
//!
//! It is the agent of `village demo`, a newcomer's first run, so its default script shows what a
//! real agent's session looks like in Village: streamed text, a thought, a plan, a file read, an
//! edit of the workspace (a real one, shown as a diff), and a `git push` it asks about (the broker
//! classifies it as a merge). Rejecting the push makes it say so and stop. It also
//! reports usage, token counts estimated from the text it read and wrote (about four characters
//! a token) and a cost of zero, so that the usage view has something true to show.
//!
//! It is the ACP fake of the tests too: a prompt with lines like these runs them instead of the
//! demo, in order:
//!
//! ```text
//! say TEXT            a message
//! think TEXT          a thought
//! ask KIND TEXT       a permission request for a tool call of KIND (execute, edit, read,
//!                     fetch, …); for execute TEXT is the command. Nothing is run.
//! edit PATH           ask, then really append a line to PATH (relative to the session's cwd)
//! sleep MS            wait (a stop cuts it short)
//! fail MESSAGE        answer the prompt with a JSON-RPC error
//! exit N              end the process at once with status N
//! ```
//!
//! A prompt after the first without script lines gets a short reply. `VILLAGE_DEMO_AGENT_FAST=1`
//! removes the pauses that make the demo look like live work.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, Cost, Diff,
    FileSystemCapabilities, Implementation, InitializeRequest, InitializeResponse,
    NewSessionRequest, NewSessionResponse, PermissionOption, PermissionOptionKind, Plan, PlanEntry,
    PlanEntryPriority, PlanEntryStatus, PromptRequest, PromptResponse, ReadTextFileRequest,
    RequestPermissionOutcome, RequestPermissionRequest, SessionId, SessionNotification,
    SessionUpdate, StopReason, ToolCall, ToolCallContent, ToolCallLocation, ToolCallStatus,
    ToolCallUpdate, ToolCallUpdateFields, ToolKind, UsageUpdate, WriteTextFileRequest,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, Error, ErrorCode, JsonRpcRequest, JsonRpcResponse};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::runner::agents::acp::line_transport;

/// How the demo agent behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// No pauses between chunks and steps.
    pub fast: bool,
}

impl Options {
    pub fn from_env() -> Self {
        Self {
            fast: std::env::var("VILLAGE_DEMO_AGENT_FAST").is_ok_and(|v| v == "1"),
        }
    }
}

/// `village demo-agent`: ACP on stdin and stdout.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("village demo-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stdin = std_file(std::io::stdin().as_fd())?;
        let stdout = std_file(std::io::stdout().as_fd())?;
        serve(stdin, stdout, Options::from_env()).await
    });
    // A read of stdin may still be blocked in the pool: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("village demo-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A standard stream as an async file (tokio's own stdin and stdout need a feature this crate
/// does not enable).
fn std_file(fd: std::os::fd::BorrowedFd<'_>) -> Result<tokio::fs::File, String> {
    let fd = fd
        .try_clone_to_owned()
        .map_err(|e| format!("cannot use the standard streams: {e}"))?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Serves one client on these streams until it hangs up (status 0) or a script says `exit N`.
pub async fn serve<R, W>(incoming: R, outgoing: W, options: Options) -> Result<u8, String>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        options,
        client_fs: Mutex::new(FileSystemCapabilities::new()),
        sessions: Mutex::new(HashMap::new()),
        cancelled: watch::Sender::new(false),
        turns: AtomicU32::new(0),
        tokens: Mutex::new((0, 0)),
        exit: exit_tx,
    });
    let on_initialize = state.clone();
    let on_new_session = state.clone();
    let on_prompt = state.clone();
    let on_cancel = state.clone();
    let connection = Agent
        .v1()
        .name("village-demo-agent")
        .on_receive_request(
            async move |request: InitializeRequest,
                        responder: Responder<InitializeResponse>,
                        _cx| {
                *lock(&on_initialize.client_fs) = request.client_capabilities.fs.clone();
                responder.respond(
                    InitializeResponse::new(ProtocolVersion::V1)
                        .agent_capabilities(AgentCapabilities::new())
                        .agent_info(
                            Implementation::new("village-demo-agent", env!("CARGO_PKG_VERSION"))
                                .title("Village demo agent"),
                        ),
                )
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |request: NewSessionRequest,
                        responder: Responder<NewSessionResponse>,
                        _cx| {
                let mut sessions = lock(&on_new_session.sessions);
                let id = format!("demo-{}", sessions.len() + 1);
                sessions.insert(id.clone(), request.cwd);
                responder.respond(NewSessionResponse::new(id))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |Prompt(request): Prompt,
                        responder: Responder<PromptAnswer>,
                        cx: ConnectionTo<Client>| {
                let cwd = lock(&on_prompt.sessions)
                    .get(request.session_id.0.as_ref())
                    .cloned();
                let Some(cwd) = cwd else {
                    return responder.respond_with_error(
                        agent_client_protocol::v1::schema::Error::session_not_found(
                            request.session_id,
                        )
                        .into(),
                    );
                };
                // Reset here, in the dispatch loop, so that a session/cancel that follows this
                // prompt is never lost to the reset.
                on_prompt.cancelled.send_replace(false);
                let turn = Turn {
                    state: on_prompt.clone(),
                    cancel: on_prompt.cancelled.subscribe(),
                    cx: cx.clone(),
                    session: request.session_id.clone(),
                    cwd,
                    next_tool: 0,
                };
                cx.spawn(turn.run(request, responder))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            async move |_notification: CancelNotification, _cx| {
                on_cancel.cancelled.send_replace(true);
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_to(line_transport(outgoing, incoming));
    tokio::select! {
        result = connection => result.map(|()| 0).map_err(|e| e.message),
        Some(code) = exit_rx.recv() => Ok(code),
    }
}

/// `session/prompt`, answered as JSON: the typed answer drops the draft end-of-turn `usage`
/// unless the SDK is built with an unstable feature.
#[derive(Debug, Clone, Serialize, Deserialize, JsonRpcRequest)]
#[request(method = "session/prompt", response = PromptAnswer)]
#[serde(transparent)]
struct Prompt(PromptRequest);

#[derive(Debug, Clone, Serialize, Deserialize, JsonRpcResponse)]
#[serde(transparent)]
struct PromptAnswer(Value);

struct State {
    options: Options,
    /// What the client said it can do with files: the agent reads and writes through it when it
    /// can, as ACP agents do, and directly otherwise.
    client_fs: Mutex<FileSystemCapabilities>,
    /// Session id → cwd.
    sessions: Mutex<HashMap<String, PathBuf>>,
    /// A session/cancel arrived for the current turn.
    cancelled: watch::Sender<bool>,
    turns: AtomicU32,
    /// Estimated tokens in and out, for the session so far.
    tokens: Mutex<(u64, u64)>,
    exit: mpsc::UnboundedSender<u8>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// About four characters a token: the demo has no model to count them.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Why a turn stopped before its end.
enum Halt {
    /// session/cancel: answer `cancelled`.
    Cancelled,
    /// `fail MESSAGE`.
    Fail(String),
    /// `exit N`.
    Exit(u8),
    /// The client failed a request or went away.
    Protocol(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Self::Protocol(e)
    }
}

type Step<T = ()> = Result<T, Halt>;

/// A script line.
#[derive(Debug, PartialEq)]
enum Command {
    Say(String),
    Think(String),
    Ask(ToolKind, String),
    Edit(String),
    Sleep(u64),
    Fail(String),
    Exit(u8),
}

/// The script in a prompt: its command lines, in order (other lines are ignored).
fn parse_script(prompt: &str) -> Vec<Command> {
    prompt
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim().to_string();
            Some(match word {
                "say" => Command::Say(rest),
                "think" => Command::Think(rest),
                "ask" => {
                    let (kind, text) = rest.split_once(' ').unwrap_or((&rest, ""));
                    let kind = serde_json::from_value(Value::String(kind.into()))
                        .unwrap_or(ToolKind::Other);
                    Command::Ask(kind, text.trim().to_string())
                }
                "edit" if !rest.is_empty() => Command::Edit(rest),
                "sleep" => Command::Sleep(rest.parse().ok()?),
                "fail" => Command::Fail(rest),
                // An unreadable status is still an exit, and not a clean one.
                "exit" => Command::Exit(rest.parse().unwrap_or(1)),
                _ => return None,
            })
        })
        .collect()
}

/// What the client answered to a permission request.
#[derive(Debug, PartialEq)]
enum Answer {
    Allowed(String),
    Rejected(String),
    Cancelled,
}

struct Turn {
    state: Arc<State>,
    cancel: watch::Receiver<bool>,
    cx: ConnectionTo<Client>,
    session: SessionId,
    cwd: PathBuf,
    next_tool: u32,
}

impl Turn {
    async fn run(
        mut self,
        request: PromptRequest,
        responder: Responder<PromptAnswer>,
    ) -> Result<(), Error> {
        let text: String = request
            .prompt
            .iter()
            .filter_map(|block| match block {
                ContentBlock::Text(text) => Some(text.text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        lock(&self.state.tokens).0 += estimate_tokens(&text);
        let first = self.state.turns.fetch_add(1, Ordering::SeqCst) == 0;
        let script = parse_script(&text);
        let result = if !script.is_empty() {
            self.script(script).await
        } else if first {
            self.demo().await
        } else {
            self.follow_up(&text).await
        };
        let stop = match result {
            Ok(stop) => stop,
            Err(Halt::Cancelled) => StopReason::Cancelled,
            Err(Halt::Fail(message)) => {
                return responder
                    .respond_with_error(Error::new(ErrorCode::INTERNAL_ERROR, message));
            }
            Err(Halt::Exit(code)) => {
                // What was sent before reaches the client, as a process's writes before its exit
                // do: the SDK queues them, and the exit drops the queue.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = self.state.exit.send(code);
                // Keep the responder: dropping it would answer the prompt with an error before
                // the process is gone, and the client must see the exit, not an answer.
                std::future::pending::<()>().await;
                return Ok(());
            }
            Err(Halt::Protocol(e)) => return responder.respond_with_error(e),
        };
        let (tokens_in, tokens_out) = *lock(&self.state.tokens);
        let mut response =
            serde_json::to_value(PromptResponse::new(stop)).map_err(Error::into_internal_error)?;
        // The draft end-of-turn usage (`unstable_end_turn_token_usage`), session totals.
        response["usage"] = json!({
            "totalTokens": tokens_in + tokens_out,
            "inputTokens": tokens_in,
            "outputTokens": tokens_out,
        });
        responder.respond(PromptAnswer(response))
    }

    async fn script(&mut self, script: Vec<Command>) -> Step<StopReason> {
        for command in script {
            match command {
                Command::Say(text) => self.say(&format!("{text}\n")).await?,
                Command::Think(text) => self.think(&text).await?,
                Command::Ask(kind, text) => {
                    let raw_input = match kind {
                        ToolKind::Execute => json!({ "command": text }),
                        ToolKind::Fetch => json!({ "url": text }),
                        ToolKind::Read | ToolKind::Edit | ToolKind::Delete => {
                            json!({ "path": text })
                        }
                        _ => json!({ "input": text }),
                    };
                    let id = self
                        .tool_call(kind, &text, raw_input.clone(), vec![], vec![])
                        .await?;
                    let answer = self
                        .ask(&id, kind, &text, raw_input, vec![], vec![])
                        .await?;
                    match answer {
                        Answer::Allowed(option) => {
                            self.finish_tool(&id, ToolCallStatus::Completed, vec![])
                                .await?;
                            self.say(&format!("Allowed ({option}): {text}. (Nothing was run.)\n"))
                                .await?;
                        }
                        Answer::Rejected(option) => {
                            self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                                .await?;
                            self.say(&format!("Rejected ({option}): not doing {text}.\n"))
                                .await?;
                        }
                        Answer::Cancelled => self.permission_cancelled(&id).await?,
                    }
                }
                Command::Edit(path) => {
                    let path = self.cwd.join(path);
                    let old = self.read(&path).await.ok();
                    let new = format!(
                        "{}edited by the Village demo agent\n",
                        old.as_deref().unwrap_or("")
                    );
                    self.edit(&path, old, new, true).await?;
                }
                Command::Sleep(ms) => self.sleep(Duration::from_millis(ms)).await?,
                Command::Fail(message) => return Err(Halt::Fail(message)),
                Command::Exit(code) => return Err(Halt::Exit(code)),
            }
        }
        Ok(StopReason::EndTurn)
    }

    async fn follow_up(&mut self, text: &str) -> Step<StopReason> {
        let text = text.trim();
        self.say(&format!(
            "You said: “{text}”. I'm only the demo agent, so noting it is all I can do.\n"
        ))
        .await?;
        Ok(StopReason::EndTurn)
    }

    /// The default script: the tour.
    async fn demo(&mut self) -> Step<StopReason> {
        self.think(
            "Someone is trying Village. I'll look around the repository, make one small change, \
             and ask before anything that leaves this machine.",
        )
        .await?;
        self.say(
            "Hi! I'm the Village demo agent. I don't call a model: I follow a short script so \
             you can see how Village shows an agent's work, and how it asks you before anything \
             risky.\n",
        )
        .await?;
        let steps = [
            "Read the project's README",
            "Write VILLAGE_DEMO.md",
            "Push the branch",
        ];
        self.plan(&steps, 0).await?;

        // A read.
        match self.pick_readme() {
            Some(path) => {
                let name = self.relative(&path);
                let location = ToolCallLocation::new(path.clone());
                let id = self
                    .tool_call(
                        ToolKind::Read,
                        &format!("Read {name}"),
                        json!({ "path": path }),
                        vec![location],
                        vec![],
                    )
                    .await?;
                self.sleep(Duration::from_millis(300)).await?;
                match self.read(&path).await {
                    Ok(text) => {
                        let lines = text.lines().count();
                        let excerpt: Vec<&str> = text.lines().take(3).collect();
                        let content = ToolCallContent::from(ContentBlock::from(excerpt.join("\n")));
                        self.finish_tool(&id, ToolCallStatus::Completed, vec![content])
                            .await?;
                        let heading = text
                            .lines()
                            .map(|line| line.trim_start_matches('#').trim())
                            .find(|line| !line.is_empty())
                            .unwrap_or("(nothing)");
                        let lines = match lines {
                            1 => "1 line".to_string(),
                            n => format!("{n} lines"),
                        };
                        self.say(&format!(
                            "{name} has {lines}. It starts with “{heading}”.\n"
                        ))
                        .await?;
                    }
                    Err(e) => {
                        self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                            .await?;
                        self.say(&format!("I couldn't read {name} ({e}), never mind.\n"))
                            .await?;
                    }
                }
            }
            None => {
                self.say("This directory has no files to read, so I'll skip that step.\n")
                    .await?;
            }
        }
        self.plan(&steps, 1).await?;

        // An edit, made right away: like an agent in an auto-edit mode, the demo changes files
        // in its own workspace without asking, so the one question of the tour is the push.
        self.say("Next I'll write a short note to VILLAGE_DEMO.md in the workspace.\n")
            .await?;
        let path = self.cwd.join("VILLAGE_DEMO.md");
        let old = self.read(&path).await.ok();
        let new = match &old {
            Some(old) => format!("{old}\nThe demo agent ran here again.\n"),
            None => "# Village demo\n\n\
                     This file was written by the Village demo agent, to show how an agent's\n\
                     edits appear in Village: as a diff in the session's terminal.\n\n\
                     Delete it whenever you like.\n"
                .to_string(),
        };
        if !self.write_now(&path, old, new).await? {
            self.report_usage().await?;
            return Ok(StopReason::EndTurn);
        }
        self.plan(&steps, 2).await?;

        // A push: the broker classifies it as a merge.
        self.say(
            "Finally I'd publish the change with `git push`. Pushing shares your work with \
             others, so Village asks you about it specifically.\n",
        )
        .await?;
        let command = "git push origin HEAD";
        let raw_input = json!({ "command": command, "description": "Publish the branch" });
        let id = self
            .tool_call(
                ToolKind::Execute,
                command,
                raw_input.clone(),
                vec![],
                vec![],
            )
            .await?;
        match self
            .ask(&id, ToolKind::Execute, command, raw_input, vec![], vec![])
            .await?
        {
            Answer::Allowed(_) => {
                let note = ToolCallContent::from(ContentBlock::from(
                    "(demo: nothing was pushed)".to_string(),
                ));
                self.finish_tool(&id, ToolCallStatus::Completed, vec![note])
                    .await?;
                self.plan(&steps, 3).await?;
                self.say(
                    "Allowed. This is only a demo, so I didn't really push: nothing left your \
                     machine.\n",
                )
                .await?;
            }
            Answer::Rejected(_) => {
                self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                    .await?;
                self.say("Understood, I won't push. The change stays in your workspace.\n")
                    .await?;
                self.report_usage().await?;
                return Ok(StopReason::EndTurn);
            }
            Answer::Cancelled => {
                self.permission_cancelled(&id).await?;
                return Ok(StopReason::EndTurn);
            }
        }
        self.report_usage().await?;
        self.say(
            "That's the tour. The diff, your approvals and the usage are all on the session's \
             page.\n",
        )
        .await?;
        Ok(StopReason::EndTurn)
    }

    /// Asks to change `path` to `new`, writes it if allowed. Whether it was written.
    /// `scripted`: say which option the client chose, for tests; the demo speaks plainly.
    async fn edit(
        &mut self,
        path: &Path,
        old: Option<String>,
        new: String,
        scripted: bool,
    ) -> Step<bool> {
        let name = self.relative(path);
        let diff = ToolCallContent::from(Diff::new(path.to_path_buf(), new.clone()).old_text(old));
        let location = ToolCallLocation::new(path.to_path_buf());
        let raw_input = json!({ "path": path });
        let title = format!("Write {name}");
        let id = self
            .tool_call(
                ToolKind::Edit,
                &title,
                raw_input.clone(),
                vec![location.clone()],
                vec![diff.clone()],
            )
            .await?;
        let answer = self
            .ask(
                &id,
                ToolKind::Edit,
                &title,
                raw_input,
                vec![location],
                vec![diff.clone()],
            )
            .await?;
        match answer {
            Answer::Allowed(option) => {
                if let Err(e) = self.write(path, &new).await {
                    self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                        .await?;
                    self.say(&format!("I couldn't write {name}: {e}\n")).await?;
                    return Ok(false);
                }
                self.finish_tool(&id, ToolCallStatus::Completed, vec![diff])
                    .await?;
                let said = if scripted {
                    format!("Allowed ({option}): {name} is written.\n")
                } else {
                    format!("Thanks! {name} is written.\n")
                };
                self.say(&said).await?;
                Ok(true)
            }
            Answer::Rejected(option) => {
                self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                    .await?;
                let said = if scripted {
                    format!("Rejected ({option}): okay, I won't touch {name}.\n")
                } else {
                    format!("Okay, I won't touch {name}.\n")
                };
                self.say(&said).await?;
                Ok(false)
            }
            Answer::Cancelled => {
                self.permission_cancelled(&id).await?;
                Ok(false)
            }
        }
    }

    /// Writes a file without asking and shows the change as a diff.
    async fn write_now(&mut self, path: &Path, old: Option<String>, new: String) -> Step<bool> {
        let name = self.relative(path);
        let diff = ToolCallContent::from(Diff::new(path.to_path_buf(), new.clone()).old_text(old));
        let location = ToolCallLocation::new(path.to_path_buf());
        let id = self
            .tool_call(
                ToolKind::Edit,
                &format!("Write {name}"),
                json!({ "path": path }),
                vec![location],
                vec![diff.clone()],
            )
            .await?;
        if let Err(e) = self.write(path, &new).await {
            self.finish_tool(&id, ToolCallStatus::Failed, vec![])
                .await?;
            self.say(&format!("I couldn't write {name}: {e}\n")).await?;
            return Ok(false);
        }
        self.finish_tool(&id, ToolCallStatus::Completed, vec![diff])
            .await?;
        self.say(&format!("{name} is written.\n")).await?;
        Ok(true)
    }

    /// A permission request answered `cancelled`: after a session/cancel the turn ends
    /// `cancelled`; without one the client withdrew the question, and the turn goes on.
    async fn permission_cancelled(&mut self, id: &str) -> Step {
        self.finish_tool(id, ToolCallStatus::Failed, vec![]).await?;
        // At once, without the pauses that a session/cancel cuts short: the client should see
        // why the turn ends.
        let text = "The permission request was cancelled.\n";
        lock(&self.state.tokens).1 += estimate_tokens(text);
        let chunk = ContentChunk::new(ContentBlock::from(text.to_string()));
        self.notify(SessionUpdate::AgentMessageChunk(chunk))?;
        self.check()
    }

    fn check(&self) -> Step {
        if *self.cancel.borrow() {
            Err(Halt::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A pause that a session/cancel cuts short.
    async fn sleep(&mut self, duration: Duration) -> Step {
        self.check()?;
        if duration.is_zero() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            _ = self.cancel.wait_for(|cancelled| *cancelled) => Err(Halt::Cancelled),
        }
    }

    /// The demo's pace: a little irregular, like a model's.
    async fn pause(&mut self, min_ms: u64, max_ms: u64) -> Step {
        if self.state.options.fast {
            return self.check();
        }
        let ms = rand::random_range(min_ms..=max_ms);
        self.sleep(Duration::from_millis(ms)).await
    }

    fn notify(&self, update: SessionUpdate) -> Step {
        self.cx
            .send_notification(SessionNotification::new(self.session.clone(), update))?;
        Ok(())
    }

    /// A message, streamed a few words at a time.
    async fn say(&mut self, text: &str) -> Step {
        lock(&self.state.tokens).1 += estimate_tokens(text);
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        for chunk in words.chunks(5) {
            self.pause(100, 250).await?;
            let chunk = ContentChunk::new(ContentBlock::from(chunk.concat()));
            self.notify(SessionUpdate::AgentMessageChunk(chunk))?;
        }
        Ok(())
    }

    async fn think(&mut self, text: &str) -> Step {
        lock(&self.state.tokens).1 += estimate_tokens(text);
        self.pause(200, 400).await?;
        let chunk = ContentChunk::new(ContentBlock::from(text.to_string()));
        self.notify(SessionUpdate::AgentThoughtChunk(chunk))
    }

    async fn plan(&mut self, steps: &[&str], done: usize) -> Step {
        let entries = steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let status = match i.cmp(&done) {
                    std::cmp::Ordering::Less => PlanEntryStatus::Completed,
                    std::cmp::Ordering::Equal => PlanEntryStatus::InProgress,
                    std::cmp::Ordering::Greater => PlanEntryStatus::Pending,
                };
                PlanEntry::new(*step, PlanEntryPriority::Medium, status)
            })
            .collect();
        self.pause(100, 200).await?;
        self.notify(SessionUpdate::Plan(Plan::new(entries)))
    }

    async fn tool_call(
        &mut self,
        kind: ToolKind,
        title: &str,
        raw_input: Value,
        locations: Vec<ToolCallLocation>,
        content: Vec<ToolCallContent>,
    ) -> Step<String> {
        self.next_tool += 1;
        let id = format!("tool-{}", self.next_tool);
        self.pause(150, 300).await?;
        let call = ToolCall::new(id.clone(), title)
            .kind(kind)
            .status(ToolCallStatus::Pending)
            .raw_input(raw_input)
            .locations(locations)
            .content(content);
        self.notify(SessionUpdate::ToolCall(call))?;
        Ok(id)
    }

    async fn finish_tool(
        &mut self,
        id: &str,
        status: ToolCallStatus,
        content: Vec<ToolCallContent>,
    ) -> Step {
        let mut fields = ToolCallUpdateFields::new().status(status);
        if !content.is_empty() {
            fields = fields.content(content);
        }
        self.notify(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id.to_string(),
            fields,
        )))
    }

    /// session/request_permission with the four usual options.
    async fn ask(
        &mut self,
        id: &str,
        kind: ToolKind,
        title: &str,
        raw_input: Value,
        locations: Vec<ToolCallLocation>,
        content: Vec<ToolCallContent>,
    ) -> Step<Answer> {
        self.check()?;
        let mut fields = ToolCallUpdateFields::new()
            .kind(kind)
            .title(title.to_string())
            .raw_input(raw_input);
        if !locations.is_empty() {
            fields = fields.locations(locations);
        }
        if !content.is_empty() {
            fields = fields.content(content);
        }
        let options = vec![
            PermissionOption::new("allow-once", "Allow", PermissionOptionKind::AllowOnce),
            PermissionOption::new(
                "allow-always",
                "Always allow",
                PermissionOptionKind::AllowAlways,
            ),
            PermissionOption::new("reject-once", "Reject", PermissionOptionKind::RejectOnce),
            PermissionOption::new(
                "reject-always",
                "Always reject",
                PermissionOptionKind::RejectAlways,
            ),
        ];
        let request = RequestPermissionRequest::new(
            self.session.clone(),
            ToolCallUpdate::new(id.to_string(), fields),
            options.clone(),
        );
        let response = self.cx.send_request(request).block_task().await?;
        Ok(match response.outcome {
            RequestPermissionOutcome::Selected(selected) => {
                let option = options
                    .iter()
                    .find(|option| option.option_id == selected.option_id);
                match option.map(|option| option.kind) {
                    Some(PermissionOptionKind::AllowOnce | PermissionOptionKind::AllowAlways) => {
                        Answer::Allowed(selected.option_id.to_string())
                    }
                    Some(_) => Answer::Rejected(selected.option_id.to_string()),
                    // An option we never offered: the safe reading is a no.
                    None => Answer::Rejected(selected.option_id.to_string()),
                }
            }
            _ => Answer::Cancelled,
        })
    }

    async fn report_usage(&mut self) -> Step {
        let (tokens_in, tokens_out) = *lock(&self.state.tokens);
        let update = UsageUpdate::new(tokens_in + tokens_out, 200_000).cost(Cost::new(0.0, "USD"));
        self.notify(SessionUpdate::UsageUpdate(update))
    }

    /// The README, or else the first file of the cwd.
    fn pick_readme(&self) -> Option<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.cwd)
            .ok()?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .map(|entry| entry.path())
            .collect();
        files.sort();
        let readme = files.iter().find(|path| {
            path.file_stem()
                .is_some_and(|stem| stem.eq_ignore_ascii_case("readme"))
        });
        readme.or(files.first()).cloned()
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.cwd)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn client_fs(&self) -> FileSystemCapabilities {
        lock(&self.state.client_fs).clone()
    }

    async fn read(&self, path: &Path) -> Result<String, String> {
        let text = if self.client_fs().read_text_file {
            let request = ReadTextFileRequest::new(self.session.clone(), path.to_path_buf());
            self.cx
                .send_request(request)
                .block_task()
                .await
                .map(|response| response.content)
                .map_err(|e| e.message)?
        } else {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| e.to_string())?
        };
        lock(&self.state.tokens).0 += estimate_tokens(&text);
        Ok(text)
    }

    async fn write(&self, path: &Path, content: &str) -> Result<(), String> {
        if self.client_fs().write_text_file {
            let request =
                WriteTextFileRequest::new(self.session.clone(), path.to_path_buf(), content);
            self.cx
                .send_request(request)
                .block_task()
                .await
                .map(|_| ())
                .map_err(|e| e.message)
        } else {
            tokio::fs::write(path, content)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_parsed_line_by_line() {
        let script = parse_script(
            "Please do this:\nsay hello there\nask execute git push origin main\n  edit src/x.rs\n\
             sleep 20\nsleep soon\nfail it broke\nexit 3\nexit\nthink hmm",
        );
        assert_eq!(
            script,
            vec![
                Command::Say("hello there".into()),
                Command::Ask(ToolKind::Execute, "git push origin main".into()),
                Command::Edit("src/x.rs".into()),
                Command::Sleep(20),
                Command::Fail("it broke".into()),
                Command::Exit(3),
                Command::Exit(1),
                Command::Think("hmm".into()),
            ]
        );
        assert!(parse_script("Fix the login bug, then say so.").is_empty());
        assert_eq!(
            parse_script("ask dance now"),
            vec![Command::Ask(ToolKind::Other, "now".into())]
        );
    }
}
