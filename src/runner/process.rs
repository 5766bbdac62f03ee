//! Spawning agent processes so that none outlives its session.
//!
//! Every agent runs under a small guard (`village __guard`, this binary): the guard leads the
//! session's process group, asks the kernel to signal it when the runner dies
//! (`PR_SET_PDEATHSIG`), starts the agent in its group and waits. When the runner goes away, even
//! by `kill -9`, the guard kills the whole group. Pause, resume, stop and timeout signal the
//! group, so they reach everything the agent started.

use std::path::PathBuf;

use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;

use super::agents::Outcome;

/// How an agent process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl ExitInfo {
    /// The outcome rule for a process's end: 0 → COMPLETED, else FAILED naming the status.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Code(0) => Outcome::Completed,
            Self::Code(n) => Outcome::Failed(format!("exit status {n}")),
            Self::Signal(n) => Outcome::Failed(format!("signal {n}")),
        }
    }
}

/// The agent's side of the conversation.
pub enum AgentIo {
    /// Structured agents: stdin, stdout and stderr on pipes.
    Pipes {
        stdin: ChildStdin,
        stdout: ChildStdout,
        stderr: ChildStderr,
    },
    /// A `pty` agent: the terminal's master side (blocking reader and writer).
    Pty {
        reader: Box<dyn std::io::Read + Send>,
        writer: Box<dyn std::io::Write + Send>,
    },
}

/// A spawned agent.
pub struct AgentProcess {
    /// Taken by the adapter.
    pub io: Option<AgentIo>,
    /// The process group (the guard's pid) that signals go to.
    pub pgid: i32,
    exit: watch::Receiver<Option<ExitInfo>>,
}

impl AgentProcess {
    pub fn new(io: AgentIo, pgid: i32, exit: watch::Receiver<Option<ExitInfo>>) -> Self {
        Self {
            io: Some(io),
            pgid,
            exit,
        }
    }

    /// Waits for the agent to end.
    pub async fn wait(&mut self) -> ExitInfo {
        loop {
            if let Some(exit) = *self.exit.borrow_and_update() {
                return exit;
            }
            if self.exit.changed().await.is_err() {
                // The waiter is gone without a status: treat it as killed.
                return ExitInfo::Signal(9);
            }
        }
    }
}

/// What to run.
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub pty: bool,
}
