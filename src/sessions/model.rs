//! Session records and the session state machine (docs/api.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionState {
    Created,
    Queued,
    Running,
    WaitingForApproval,
    PausedByHuman,
    Completed,
    Failed,
    TimedOut,
}

impl SessionState {
    pub const ALL: [SessionState; 8] = [
        Self::Created,
        Self::Queued,
        Self::Running,
        Self::WaitingForApproval,
        Self::PausedByHuman,
        Self::Completed,
        Self::Failed,
        Self::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::WaitingForApproval => "WAITING_FOR_APPROVAL",
            Self::PausedByHuman => "PAUSED_BY_HUMAN",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::TimedOut)
    }

    /// Started and not yet ended: the states a runner is actively working in.
    pub fn is_started(self) -> bool {
        matches!(
            self,
            Self::Running | Self::WaitingForApproval | Self::PausedByHuman
        )
    }
}

/// Why a state change is asked for; the same target state is legal for some causes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The session's runner reports a state (`POST /sessions/{id}/state`).
    RunnerReport,
    /// `pause` / `resume` / `stop` from a person or script.
    Human,
    /// An approval was requested or the last pending one resolved.
    Approval,
    /// The server's timers (timeout) or runner loss.
    Server,
    /// A budget limit was reached (the session is paused, never ended).
    Budget,
}

/// Exactly these transitions (docs/api.md, the session lifecycle).
pub fn transition_allowed(from: SessionState, to: SessionState, cause: Cause) -> bool {
    use SessionState::*;
    match (cause, from, to) {
        (Cause::Server, Created, Queued) => true,
        (Cause::RunnerReport, Queued, Running) => true,
        // A runner that cannot start an assigned session says so instead of confirming it
        // (an assignment is acknowledged by RUNNING or FAILED).
        (Cause::RunnerReport, Queued, Failed) => true,
        (Cause::RunnerReport, Running, Completed) => true,
        (
            Cause::RunnerReport | Cause::Server,
            Running | WaitingForApproval | PausedByHuman,
            Failed,
        ) => true,
        (Cause::Server, Running | WaitingForApproval | PausedByHuman, TimedOut) => true,
        (Cause::Approval, Running, WaitingForApproval) => true,
        (Cause::Approval, WaitingForApproval, Running) => true,
        (Cause::Human | Cause::Budget, Running, PausedByHuman) => true,
        (Cause::Human, PausedByHuman, Running) => true,
        (Cause::Human, from, Completed) => !from.is_terminal(),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Provider {
    Codex,
    ClaudeCode,
    GeminiCli,
    Omnara,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Self::Codex, Self::ClaudeCode, Self::GeminiCli, Self::Omnara];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Codex => "codex",
            Self::ClaudeCode => "claude_code",
            Self::GeminiCli => "gemini_cli",
            Self::Omnara => "omnara",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repo {
    pub url: String,
    pub branch: String,
    pub commit: String,
}

/// A repository URL without the user and password some carry (`https://token@host/…`), for
/// what leaves the server or is shown without sign-in. `git@host:path` has no scheme and its
/// user is no secret: it stays.
pub fn url_without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionOptions {
    /// As asked for; `None` means the configured default applied.
    pub timeout_minutes: Option<f64>,
    /// Handed to the runner only; never returned by the API and never logged.
    pub env: BTreeMap<String, String>,
    pub dangerously_skip_permissions: bool,
    pub required_features: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub api_calls: u64,
    pub compute_seconds: f64,
    /// What the session's agent spent, in US dollars, as its runner last reported it.
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub org_id: String,
    pub provider: Provider,
    pub repo: Repo,
    pub task: Option<String>,
    pub options: SessionOptions,
    pub state: SessionState,
    pub created_at: Millis,
    /// First time RUNNING: the timeout counts from here.
    pub started_running_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub end_reason: Option<String>,
    pub error: Option<String>,
    /// The runner it is assigned to (set while QUEUED-and-assigned and once started).
    pub runner_id: Option<Uuid>,
    /// Fencing token of the current assignment.
    pub assignment_id: Option<Uuid>,
    pub assigned_at: Option<Millis>,
    /// Every runner that ever held it: their late reports are stale, not unknown.
    pub runner_history: Vec<Uuid>,
    pub usage: Usage,
    /// Effective timeout in milliseconds (option or configured default).
    pub timeout_ms: i64,
    /// Bytes of terminal output stored so far (the runner's `offset` is checked against it).
    pub output_bytes: u64,
    pub workspace_size_bytes: Option<u64>,
    pub updated_at: Millis,
}

impl Session {
    /// Waiting in the queue for a runner.
    pub fn is_unassigned_queued(&self) -> bool {
        self.state == SessionState::Queued && self.runner_id.is_none()
    }

    /// Holding a slot on its runner.
    pub fn occupies_runner(&self) -> Option<Uuid> {
        if self.state.is_terminal() {
            None
        } else {
            self.runner_id
        }
    }

    /// Whether assignment `assignment_id` still holds: it is the session's current one and the
    /// session has not ended. An ended session keeps the id of its last assignment, and its
    /// runner must not be handed it (with its environment) any more.
    pub fn holds_assignment(&self, assignment_id: Uuid) -> bool {
        self.assignment_id == Some(assignment_id) && !self.state.is_terminal()
    }

    pub fn workspace_path(&self) -> String {
        format!("workspaces/{}", self.id)
    }

    pub fn task_summary(&self) -> Option<String> {
        self.task
            .as_ref()
            .map(|t| t.chars().take(100).collect::<String>())
    }

    pub fn duration_seconds(&self, now: Millis) -> i64 {
        let end = self.completed_at.unwrap_or(now);
        ((end - self.created_at).max(0)) / 1000
    }
}

/// What an approval is asked for: one of the risky classes (`merge` … `deploy`), or one of the
/// classes of an agent's own permission request (`command` … `other`). New variants go at the
/// end: the disk codec stores a variant by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalAction {
    Merge,
    DepsAdd,
    Secrets,
    Deploy,
    /// Running a shell command.
    Command,
    /// Creating, editing or deleting files.
    FileChange,
    /// Reaching the network (fetching a URL, a web search).
    Network,
    /// Any other tool the agent asks to use.
    Other,
}

impl ApprovalAction {
    pub const ALL: [ApprovalAction; 8] = [
        Self::Merge,
        Self::DepsAdd,
        Self::Secrets,
        Self::Deploy,
        Self::Command,
        Self::FileChange,
        Self::Network,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merge => "merge",
            Self::DepsAdd => "deps_add",
            Self::Secrets => "secrets",
            Self::Deploy => "deploy",
            Self::Command => "command",
            Self::FileChange => "file_change",
            Self::Network => "network",
            Self::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// How far an `allow` reaches: this request only, or every request of the same kind (same
/// action and tool) for the rest of the session. The runner applies it; the server records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalScope {
    Once,
    Session,
}

impl ApprovalScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Session => "session",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "once" => Some(Self::Once),
            "session" => Some(Self::Session),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub decision: Decision,
    pub reason: Option<String>,
    pub resolved_at: Millis,
    /// Token id or name of who decided, or `system` for expiry and session end.
    pub resolved_by: String,
    /// As the decider gave it; `None` when none was given (expiry and session end included).
    pub scope: Option<ApprovalScope>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: Uuid,
    /// Order of request within the session (1, 2, …), for a stable listing.
    pub seq: u64,
    pub session_id: Uuid,
    pub action: ApprovalAction,
    pub description: String,
    /// Free-form JSON kept as text (the disk codec is not self-describing).
    pub context_json: Option<String>,
    pub requested_at: Millis,
    pub expires_at: Millis,
    pub resolution: Option<Resolution>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub seq: u64,
    pub kind: String,
    pub summary: String,
    pub at: Millis,
    pub data_json: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub seq: u64,
    pub stream: OutputStream,
    pub data: String,
    pub at: Millis,
    /// Bytes of this session's output stored before this chunk.
    pub offset: u64,
}

/// Timers the sweeper acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TimerKind {
    SessionTimeout = 1,
    ApprovalExpiry = 2,
    SessionPurge = 3,
    /// An assignment the runner did not confirm in time goes back to the queue.
    AssignmentLapse = 4,
}

impl TimerKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::SessionTimeout),
            2 => Some(Self::ApprovalExpiry),
            3 => Some(Self::SessionPurge),
            4 => Some(Self::AssignmentLapse),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub due: Millis,
    pub kind: TimerKind,
    pub session_id: Uuid,
    pub other_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState::*;

    #[test]
    fn an_assignment_holds_until_its_session_moves_on_or_ends() {
        let (runner, assignment) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut s = Session {
            id: Uuid::from_u128(3),
            org_id: "acme".into(),
            provider: Provider::Codex,
            repo: Repo {
                url: "https://example.com/r.git".into(),
                branch: "main".into(),
                commit: String::new(),
            },
            task: None,
            options: SessionOptions {
                timeout_minutes: None,
                env: BTreeMap::new(),
                dangerously_skip_permissions: false,
                required_features: Vec::new(),
            },
            state: Queued,
            created_at: 0,
            started_running_at: None,
            completed_at: None,
            end_reason: None,
            error: None,
            runner_id: Some(runner),
            assignment_id: Some(assignment),
            assigned_at: Some(0),
            runner_history: vec![runner],
            usage: Usage::default(),
            timeout_ms: 60_000,
            output_bytes: 0,
            workspace_size_bytes: None,
            updated_at: 0,
        };
        assert!(s.holds_assignment(assignment));
        assert!(
            !s.holds_assignment(Uuid::from_u128(4)),
            "another assignment"
        );
        s.state = Running;
        assert!(s.holds_assignment(assignment), "started on its runner");
        for ended in [Completed, Failed, TimedOut] {
            s.state = ended;
            assert!(!s.holds_assignment(assignment), "{ended:?} keeps the id");
        }
    }

    #[test]
    fn only_documented_transitions_are_allowed() {
        assert!(transition_allowed(Queued, Running, Cause::RunnerReport));
        assert!(!transition_allowed(Queued, Completed, Cause::RunnerReport));
        assert!(transition_allowed(Queued, Failed, Cause::RunnerReport));
        assert!(!transition_allowed(Running, Running, Cause::RunnerReport));
        assert!(!transition_allowed(Running, TimedOut, Cause::RunnerReport));
        assert!(!transition_allowed(Queued, PausedByHuman, Cause::Human));
        assert!(transition_allowed(Queued, Completed, Cause::Human));
        assert!(!transition_allowed(Failed, Completed, Cause::Human));
        assert!(transition_allowed(
            PausedByHuman,
            Failed,
            Cause::RunnerReport
        ));
        assert!(transition_allowed(
            WaitingForApproval,
            TimedOut,
            Cause::Server
        ));
        for s in SessionState::ALL {
            if s.is_terminal() {
                for t in SessionState::ALL {
                    for c in [
                        Cause::RunnerReport,
                        Cause::Human,
                        Cause::Approval,
                        Cause::Server,
                    ] {
                        assert!(!transition_allowed(s, t, c), "{s:?} -> {t:?} by {c:?}");
                    }
                }
            }
        }
    }
}

/// A single-use capability to decide one approval without signing in, sent in a notification.
/// Stored under the SHA-256 of its secret; removed when the approval is resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalLink {
    pub session_id: Uuid,
    pub approval_id: Uuid,
    pub org_id: String,
    /// The notification target it was sent to.
    pub target_id: String,
    pub expires_at: Millis,
}
