//! The agent adapters: one module per protocol, all behind [`Adapter`].
//!
//! The session manager (`runner/session.rs`) prepares the workspace, spawns the agent process
//! with the protocol's arguments (`process.rs` puts it in its own process group and ties it to
//! the runner's life), and hands the adapter an [`AgentContext`]. The adapter speaks the agent's
//! protocol until the session is over and returns its [`Outcome`]. Pausing, resuming and killing
//! act on the process group and are not the adapter's business; on `stop` the adapter gets
//! [`AgentControl::Interrupt`] and sends the protocol's own interrupt or cancel.
//!
//! Structured adapters never pass the agent's raw protocol lines to the terminal: they render
//! what happens with [`render`] as readable, coloured lines.

pub mod acp;
pub mod claude;
pub mod codex;
pub mod pty;
pub mod render;

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::process::AgentProcess;

/// How the runner talks to an agent CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Claude Code: `-p` with stream-json on stdin and stdout.
    Claude,
    /// Codex: `app-server`, JSON-RPC over stdio.
    Codex,
    /// The Agent Client Protocol (Gemini CLI `--acp` and any ACP agent).
    Acp,
    /// Any command in a pseudo-terminal.
    Pty,
}

impl Protocol {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "claude" => Some(Self::Claude),
            "codex" => Some(Self::Codex),
            "acp" => Some(Self::Acp),
            "pty" => Some(Self::Pty),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
            Self::Acp => "acp",
            Self::Pty => "pty",
        }
    }

    /// The arguments the runner appends to the configured command.
    pub fn extra_args(self) -> &'static [&'static str] {
        match self {
            Self::Claude => &[
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-prompt-tool",
                "stdio",
            ],
            Self::Codex => &["app-server"],
            Self::Acp | Self::Pty => &[],
        }
    }

    /// A `pty` agent runs in a pseudo-terminal; the others on pipes.
    pub fn uses_pty(self) -> bool {
        self == Self::Pty
    }

    pub fn adapter(self) -> &'static dyn Adapter {
        match self {
            Self::Claude => &claude::ClaudeAdapter,
            Self::Codex => &codex::CodexAdapter,
            Self::Acp => &acp::AcpAdapter,
            Self::Pty => &pty::PtyAdapter,
        }
    }
}

/// Drives one agent process through its protocol until the session ends.
pub trait Adapter: Send + Sync {
    fn run(&self, cx: AgentContext) -> BoxFuture<'static, Outcome>;
}

/// Everything an adapter needs for one session.
pub struct AgentContext {
    pub session_id: String,
    /// The session's task: structured agents get it as their first prompt (a `pty` agent has it
    /// in `VILLAGE_TASK` only).
    pub task: String,
    /// The session's workspace (the agent's cwd), absolute.
    pub workspace: PathBuf,
    /// The spawned agent: its pipes or its pseudo-terminal, and its exit.
    pub process: AgentProcess,
    /// What the dashboard terminal shows.
    pub output: OutputSink,
    /// The agent's own token and cost figures.
    pub usage: UsageSink,
    /// Permission requests, answered by a human (or by a `scope: session` allow given before).
    pub approvals: ApprovalAsker,
    /// Keystrokes and interrupts from the server.
    pub control: mpsc::Receiver<AgentControl>,
}

/// What the server asks of a running agent, besides signals to its process group.
#[derive(Debug)]
pub enum AgentControl {
    /// Keystrokes from the dashboard: PTY bytes as they are; for a structured agent the runner
    /// collects them and each completed line becomes a follow-up prompt.
    Input(Vec<u8>),
    /// `stop_session`: send the protocol's interrupt/cancel. The session manager sends SIGTERM
    /// to the process group 2 s later and SIGKILL after the stop grace.
    Interrupt,
}

/// How a session ended, as the runner reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// `error` for the session: `exit status N`, `signal N`, the protocol's error message, …
    Failed(String),
}

/// Bytes for the session's terminal. Sending never blocks the agent for long: the runner
/// buffers and uploads them in order.
#[derive(Clone)]
pub struct OutputSink(pub mpsc::Sender<Vec<u8>>);

impl OutputSink {
    pub async fn write(&self, bytes: impl Into<Vec<u8>>) {
        let bytes = bytes.into();
        if !bytes.is_empty() {
            // The receiver goes away only when the session is over; late output has no home.
            let _ = self.0.send(bytes).await;
        }
    }
}

/// Usage figures from the agent's own reports. Each field replaces the last value reported
/// (totals for the session so far); `None` leaves a field as it was.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageUpdate {
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub api_calls: Option<u64>,
    pub cost_usd: Option<f64>,
}

#[derive(Clone)]
pub struct UsageSink(pub mpsc::UnboundedSender<UsageUpdate>);

impl UsageSink {
    pub fn report(&self, update: UsageUpdate) {
        let _ = self.0.send(update);
    }
}

/// What kind of thing an agent asks to do; the broker turns it into an action class.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolKind {
    /// A shell command line.
    Shell(String),
    /// An edit of the file at this path (or paths).
    FileEdit(Vec<String>),
    /// A read of the file at this path.
    FileRead(String),
    /// A network fetch of this URL.
    Fetch(String),
    /// Anything else.
    Other,
}

/// One permission request of an agent, in the agent-neutral form the broker needs.
#[derive(Clone, Debug)]
pub struct PermissionRequest {
    /// The agent's name for the tool (`Bash`, `Edit`, `commandExecution`, an ACP tool kind …).
    pub tool: String,
    /// What the tool would do, for classification.
    pub kind: ToolKind,
    /// The tool's input as the agent sent it (shown to the human in `context.input`).
    pub input: Value,
    /// One line for the approval's `description`.
    pub description: String,
    /// The agent's own options, if its protocol has them (shown in `context.agent.options`).
    pub options: Option<Value>,
}

/// A human's (or the expiry's) answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// `scope: session`: allow requests of the same action and tool for the rest of the session.
    pub for_session: bool,
    pub reason: Option<String>,
}

impl Decision {
    pub fn deny(reason: &str) -> Self {
        Self {
            allow: false,
            for_session: false,
            reason: Some(reason.to_string()),
        }
    }
}

/// Asks the broker; resolves when the decision arrives. If the runner loses the session first
/// the answer is a deny.
#[derive(Clone)]
pub struct ApprovalAsker(pub mpsc::UnboundedSender<(PermissionRequest, oneshot::Sender<Decision>)>);

impl ApprovalAsker {
    pub async fn ask(&self, request: PermissionRequest) -> Decision {
        let (tx, rx) = oneshot::channel();
        if self.0.send((request, tx)).is_err() {
            return Decision::deny("the runner is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| Decision::deny("the session ended"))
    }
}
