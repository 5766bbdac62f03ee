//! One session on the runner: workspace, agent process, adapter, approvals, output, usage and
//! the end — from `assign_session` until its last byte is stored and its processes are gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::agents::{
    AgentContext, AgentControl, ApprovalAsker, Decision, Outcome, OutputSink, PermissionRequest,
    UsageSink, UsageUpdate, render,
};
use super::broker::{Ask, SessionBroker};
use super::channel::Up;
use super::process::{self, Launch};
use super::{OfferedAgent, Runner};

/// A session as `assign_session` describes it.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub id: String,
    pub assignment: String,
    pub provider: String,
    pub repo_url: String,
    pub branch: String,
    pub commit: String,
    pub task: String,
    pub env: Vec<(String, String)>,
}

impl SessionSpec {
    pub fn from_assign(frame: &Value) -> Result<Self, String> {
        let s = &frame["session"];
        let text = |v: &Value, what: &str| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("assign_session without {what}"))
        };
        let env = s["options"]["env"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            id: text(&s["sessionId"], "sessionId")?,
            assignment: text(&frame["assignmentId"], "assignmentId")?,
            provider: text(&s["providerId"], "providerId")?,
            repo_url: text(&s["repo"]["url"], "repo.url")?,
            branch: s["repo"]["branch"].as_str().unwrap_or("main").to_string(),
            commit: s["repo"]["commit"].as_str().unwrap_or("HEAD").to_string(),
            task: s["task"].as_str().unwrap_or_default().to_string(),
            env,
        })
    }
}

/// What the server (or the runner itself) asks of a running session.
pub enum SessionCommand {
    Stop,
    /// The runner is shutting down: stop, and report the session FAILED.
    Shutdown,
    Pause,
    Resume,
    Input(Vec<u8>),
    Resolved {
        approval_id: String,
        decision: Decision,
    },
    /// `village approval request` (or the Claude hook) from inside the session.
    LocalAsk(Ask, oneshot::Sender<Decision>),
}

/// How long after an interrupt the group gets SIGTERM.
const TERM_AFTER: Duration = Duration::from_secs(2);
/// Usage is reported at least this often while it changes.
const USAGE_EVERY: Duration = Duration::from_secs(5);

/// Runs the session to its end.
pub async fn run(
    runner: Arc<Runner>,
    spec: SessionSpec,
    agent: OfferedAgent,
    token: String,
    mut commands: mpsc::UnboundedReceiver<SessionCommand>,
) {
    let report = |frame: Value| {
        let (tx, rx) = oneshot::channel();
        runner.send(Up::Report {
            frame,
            reply: Some(tx),
        });
        rx
    };
    let state = |state: &str, error: Option<&str>| {
        let mut f = json!({
            "type": "session_state",
            "sessionId": spec.id,
            "assignmentId": spec.assignment,
            "state": state,
        });
        if let Some(e) = error {
            f["error"] = json!(e);
        }
        f
    };
    match report(state("RUNNING", None)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(session = %spec.id, error = %e, "the server did not let the session start");
            return;
        }
        Err(_) => return,
    }
    tracing::info!(session = %spec.id, provider = %spec.provider, "session started");
    let mut out = Output::new(&runner, &spec);
    let workspace = runner.cfg.work_dir.join(&spec.id);
    let ended = match prepare_workspace(&spec, &workspace, &mut out).await {
        Err(e) => Ended {
            outcome: Outcome::Failed(format!("workspace: {e}")),
            stopped: false,
            shutdown: false,
        },
        Ok(()) => {
            drive(
                &runner,
                &spec,
                &agent,
                &token,
                &workspace,
                &mut out,
                &mut commands,
            )
            .await
        }
    };
    // Everything the agent printed is stored before the session's end is reported: the server
    // takes no output after it.
    out.finish();
    let (tx, rx) = oneshot::channel();
    runner.send(Up::Flush {
        session: spec.id.clone(),
        done: tx,
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
    if !ended.stopped {
        let (final_state, error) = match (&ended.outcome, ended.shutdown) {
            (_, true) => ("FAILED", Some("runner shut down".to_string())),
            (Outcome::Completed, _) => ("COMPLETED", None),
            (Outcome::Failed(e), _) => ("FAILED", Some(e.clone())),
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            report(state(final_state, error.as_deref())),
        )
        .await;
        if let Ok(Ok(Err(e))) = answer {
            tracing::debug!(session = %spec.id, error = %e, "final state not taken");
        }
    }
    runner.send(Up::Forget {
        session: spec.id.clone(),
    });
    if !runner.cfg.keep_workspaces {
        let _ = tokio::fs::remove_dir_all(&workspace).await;
    }
    tracing::info!(session = %spec.id, outcome = ?ended.outcome, "session ended");
}

struct Ended {
    outcome: Outcome,
    /// The server stopped the session (it already has its end).
    stopped: bool,
    shutdown: bool,
}

/// Output to the channel: bytes become UTF-8 text (a character split between two reads is kept
/// for the next; invalid bytes become U+FFFD).
struct Output {
    runner: Arc<Runner>,
    session: String,
    assignment: String,
    carry: Vec<u8>,
    pub bytes_in: u64,
    /// The agent's output so far ends mid-line.
    mid_line: bool,
}

impl Output {
    fn new(runner: &Arc<Runner>, spec: &SessionSpec) -> Self {
        Self {
            runner: runner.clone(),
            session: spec.id.clone(),
            assignment: spec.assignment.clone(),
            carry: Vec::new(),
            bytes_in: 0,
            mid_line: false,
        }
    }

    /// The session's own lines (from [`render`]), on a line of their own.
    fn show(&mut self, lines: &str) {
        if self.mid_line {
            self.push(b"\r\n");
        }
        self.push(lines.as_bytes());
    }

    /// `push` for bytes the caller gives up: valid UTF-8 with nothing carried over (the usual
    /// read) becomes the text as it is, without copying it.
    fn push_owned(&mut self, bytes: Vec<u8>) {
        if !self.carry.is_empty() {
            return self.push(&bytes);
        }
        match String::from_utf8(bytes) {
            Ok(text) => {
                if let Some(last) = text.as_bytes().last() {
                    self.mid_line = *last != b'\n';
                }
                self.bytes_in += text.len() as u64;
                if !text.is_empty() {
                    self.runner.send(Up::Output {
                        session: self.session.clone(),
                        assignment: self.assignment.clone(),
                        data: text,
                    });
                }
            }
            Err(e) => self.push(e.as_bytes()),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(last) = bytes.last() {
            self.mid_line = *last != b'\n';
        }
        self.bytes_in += bytes.len() as u64;
        self.carry.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.carry) {
                Ok(s) => {
                    text.push_str(s);
                    self.carry.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.carry[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            self.carry.drain(..valid + bad);
                        }
                        None => {
                            // An incomplete character at the end: wait for the rest.
                            self.carry.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        if !text.is_empty() {
            self.runner.send(Up::Output {
                session: self.session.clone(),
                assignment: self.assignment.clone(),
                data: text,
            });
        }
    }

    fn finish(&mut self) {
        if !self.carry.is_empty() {
            let rest = String::from_utf8_lossy(&self.carry).into_owned();
            self.carry.clear();
            self.runner.send(Up::Output {
                session: self.session.clone(),
                assignment: self.assignment.clone(),
                data: rest,
            });
        }
    }
}

async fn git(args: &[&str], cwd: Option<&Path>) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let run = tokio::time::timeout(Duration::from_secs(600), cmd.output());
    let out = run
        .await
        .map_err(|_| format!("git {} timed out", args[0]))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("failed");
    Err(format!("git {}: {reason}", args[0]))
}

/// `<work-dir>/<sessionId>`: a clone of the repository at the session's branch and commit, on a
/// new branch `village/<first 8 chars of the session id>`.
async fn prepare_workspace(spec: &SessionSpec, dir: &Path, out: &mut Output) -> Result<(), String> {
    out.show(&render::note(&format!(
        "$ git clone {} (branch {})",
        spec.repo_url, spec.branch
    )));
    let _ = tokio::fs::remove_dir_all(dir).await;
    let target = dir.to_string_lossy().into_owned();
    let cloned = git(
        &[
            "clone",
            "--quiet",
            "--branch",
            &spec.branch,
            "--",
            &spec.repo_url,
            &target,
        ],
        None,
    )
    .await;
    if let Err(e) = cloned {
        out.show(&render::error(&format!("workspace: {e}")));
        return Err(e);
    }
    if !spec.commit.is_empty() && spec.commit != "HEAD" {
        git(&["checkout", "--quiet", &spec.commit], Some(dir))
            .await
            .inspect_err(|e| out.show(&render::error(&format!("workspace: {e}"))))?;
    }
    let short: String = spec.id.chars().take(8).collect();
    git(
        &["checkout", "--quiet", "-b", &format!("village/{short}")],
        Some(dir),
    )
    .await
    .inspect_err(|e| out.show(&render::error(&format!("workspace: {e}"))))?;
    Ok(())
}

/// Starts the agent and serves the session until the adapter returns.
async fn drive(
    runner: &Arc<Runner>,
    spec: &SessionSpec,
    agent: &OfferedAgent,
    token: &str,
    workspace: &Path,
    out: &mut Output,
    commands: &mut mpsc::UnboundedReceiver<SessionCommand>,
) -> Ended {
    let workspace = std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
    let mut env = spec.env.clone();
    // `village approval request` and the Claude hook are this binary: put it on the agent's PATH.
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        env.retain(|(k, _)| k != "PATH");
        env.push(("PATH".into(), format!("{}:{path}", dir.display())));
    }
    env.extend([
        ("VILLAGE_SESSION_ID".to_string(), spec.id.clone()),
        ("VILLAGE_TASK".to_string(), spec.task.clone()),
        ("VILLAGE_REPO_URL".to_string(), spec.repo_url.clone()),
        ("VILLAGE_BRANCH".to_string(), spec.branch.clone()),
        (
            "VILLAGE_RUNNER_SOCKET".to_string(),
            runner.socket_path().to_string_lossy().into_owned(),
        ),
        ("VILLAGE_SESSION_TOKEN".to_string(), token.to_string()),
    ]);
    let mut args = agent.args.clone();
    args.extend(agent.protocol.extra_args().iter().map(|a| a.to_string()));
    let launch = Launch {
        program: agent.program.clone(),
        args,
        cwd: workspace.clone(),
        env,
        pty: agent.protocol.uses_pty(),
    };
    let status_file = runner.status_path(&spec.id);
    let process = match process::spawn(launch, status_file.clone()) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("cannot start {}: {e}", agent.program);
            out.show(&render::error(&msg));
            return Ended {
                outcome: Outcome::Failed(msg),
                stopped: false,
                shutdown: false,
            };
        }
    };
    let pgid = process.pgid;
    let (output_tx, mut output_rx) = mpsc::channel::<Vec<u8>>(256);
    let (usage_tx, mut usage_rx) = mpsc::unbounded_channel::<UsageUpdate>();
    let (ask_tx, mut ask_rx) =
        mpsc::unbounded_channel::<(PermissionRequest, oneshot::Sender<Decision>)>();
    let (control_tx, control_rx) = mpsc::channel::<AgentControl>(64);
    let cx = AgentContext {
        session_id: spec.id.clone(),
        task: spec.task.clone(),
        workspace,
        process,
        output: OutputSink(output_tx),
        usage: UsageSink(usage_tx),
        approvals: ApprovalAsker(ask_tx),
        control: control_rx,
    };
    let protocol = agent.protocol;
    let mut adapter = tokio::spawn(protocol.adapter().run(cx));

    let mut broker = SessionBroker::default();
    let (registered_tx, mut registered_rx) =
        mpsc::unbounded_channel::<(Option<String>, Ask, oneshot::Sender<Decision>)>();
    let mut usage = Usage::default();
    let mut usage_tick = tokio::time::interval(USAGE_EVERY);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping: Option<(tokio::time::Instant, bool)> = None;
    let mut termed = false;
    let mut shutdown = false;
    let mut stopped = false;
    let grace = runner.cfg.stop_grace;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);

    let outcome = loop {
        let (term_at, kill_at) = match stopping {
            Some((at, _)) => (at + TERM_AFTER, at + grace),
            None => (far, far),
        };
        tokio::select! {
            result = &mut adapter => {
                break result.unwrap_or_else(|e| Outcome::Failed(format!("adapter failed: {e}")));
            }
            Some(bytes) = output_rx.recv() => out.push_owned(bytes),
            Some(update) = usage_rx.recv() => usage.merge(update),
            Some((request, reply)) = ask_rx.recv() => {
                // What the agent wrote before asking comes before the request's line.
                drain(&mut output_rx, out);
                let ask = Ask::from_agent(
                    protocol.name(),
                    &request.tool,
                    &request.kind,
                    request.input,
                    &request.description,
                    request.options,
                );
                ask_server(runner, spec, &broker, ask, reply, &registered_tx, out);
            }
            Some((id, ask, reply)) = registered_rx.recv() => {
                let delivered = match id {
                    Some(id) => broker.waiting(id, ask, reply),
                    None => {
                        let decision = Decision::deny("the server refused the approval request");
                        reply.send(decision.clone()).ok().map(|()| decision)
                    }
                };
                if let Some(decision) = delivered {
                    drain(&mut output_rx, out);
                    out.show(&render::approval_answered(&decision));
                }
            }
            command = commands.recv() => match command {
                None => {}
                Some(SessionCommand::Stop) | Some(SessionCommand::Shutdown) if stopping.is_some() => {}
                Some(c @ (SessionCommand::Stop | SessionCommand::Shutdown)) => {
                    let is_shutdown = matches!(c, SessionCommand::Shutdown);
                    shutdown |= is_shutdown;
                    stopped |= !is_shutdown;
                    stopping = Some((tokio::time::Instant::now(), is_shutdown));
                    drain(&mut output_rx, out);
                    out.show(&render::stop("stopping"));
                    // A stopped process cannot hear the interrupt.
                    process::signal_group(pgid, Signal::SIGCONT);
                    let _ = control_tx.try_send(AgentControl::Interrupt);
                }
                Some(SessionCommand::Pause) => process::signal_group(pgid, Signal::SIGSTOP),
                Some(SessionCommand::Resume) => process::signal_group(pgid, Signal::SIGCONT),
                Some(SessionCommand::Input(bytes)) => { let _ = control_tx.send(AgentControl::Input(bytes)).await; }
                Some(SessionCommand::Resolved { approval_id, decision }) => {
                    if let Some(decision) = broker.resolved(&approval_id, decision) {
                        drain(&mut output_rx, out);
                        out.show(&render::approval_answered(&decision));
                    }
                }
                Some(SessionCommand::LocalAsk(ask, reply)) => {
                    drain(&mut output_rx, out);
                    ask_server(runner, spec, &broker, ask, reply, &registered_tx, out);
                }
            },
            _ = usage_tick.tick() => {
                // A walk through /proc: on the blocking pool, not on a worker the channel needs
                // (sessions started together tick together).
                let compute = tokio::task::spawn_blocking(move || process::group_cpu_seconds(pgid))
                    .await
                    .unwrap_or(0.0);
                usage.compute = usage.compute.max(compute);
                if let Some(frame) = usage.frame_if_changed(spec) {
                    runner.send(Up::Report { frame, reply: None });
                }
            }
            _ = tokio::time::sleep_until(term_at), if !termed => {
                termed = true;
                process::signal_group(pgid, Signal::SIGTERM);
            }
            _ = tokio::time::sleep_until(kill_at) => {
                process::signal_group(pgid, Signal::SIGKILL);
                stopping = Some((far, shutdown));
            }
        }
    };
    // Whatever the agent left behind in its group goes with it.
    usage.compute = usage.compute.max(process::group_cpu_seconds(pgid));
    process::signal_group(pgid, Signal::SIGCONT);
    process::signal_group(pgid, Signal::SIGKILL);
    drain(&mut output_rx, out);
    while let Ok(update) = usage_rx.try_recv() {
        usage.merge(update);
    }
    broker.close();
    if let Some(frame) = usage.frame_if_changed(spec) {
        runner.send(Up::Report { frame, reply: None });
    }
    let _ = std::fs::remove_file(status_file);
    Ended {
        outcome,
        stopped,
        shutdown,
    }
}

/// Everything the agent has written so far, so that a line of the session's own comes after it.
fn drain(output: &mut mpsc::Receiver<Vec<u8>>, out: &mut Output) {
    while let Ok(bytes) = output.try_recv() {
        out.push_owned(bytes);
    }
}

/// Sends an approval request unless a session allow covers it; the reply arrives through
/// `registered` once the server has created the approval.
///
/// The terminal shows one line when an approval is asked for and one when it is answered, for
/// agents' requests and `village approval request` alike; the adapters leave both to this.
fn ask_server(
    runner: &Arc<Runner>,
    spec: &SessionSpec,
    broker: &SessionBroker,
    ask: Ask,
    reply: oneshot::Sender<Decision>,
    registered: &mpsc::UnboundedSender<(Option<String>, Ask, oneshot::Sender<Decision>)>,
    out: &mut Output,
) {
    if broker.allowed_for_session(&ask) {
        let decision = Decision {
            allow: true,
            for_session: true,
            reason: None,
        };
        if reply.send(decision).is_ok() {
            out.show(&render::approval_covered(&ask.description));
        }
        return;
    }
    out.show(&render::approval_asked(&ask.action, &ask.description));
    let (tx, rx) = oneshot::channel();
    runner.send(Up::Report {
        frame: json!({
            "type": "approval_request",
            "sessionId": spec.id,
            "assignmentId": spec.assignment,
            "action": ask.action,
            "description": ask.description,
            "context": ask.context,
        }),
        reply: Some(tx),
    });
    let registered = registered.clone();
    tokio::spawn(async move {
        let id = match rx.await {
            Ok(Ok(data)) => data["approvalId"].as_str().map(str::to_owned),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "approval request refused");
                None
            }
            Err(_) => None,
        };
        let _ = registered.send((id, ask, reply));
    });
}

#[derive(Default)]
struct Usage {
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
    api_calls: Option<u64>,
    cost_usd: Option<f64>,
    compute: f64,
    last_sent: Option<Value>,
}

impl Usage {
    fn merge(&mut self, u: UsageUpdate) {
        self.tokens_in = u.tokens_in.or(self.tokens_in);
        self.tokens_out = u.tokens_out.or(self.tokens_out);
        self.api_calls = u.api_calls.or(self.api_calls);
        self.cost_usd = u.cost_usd.or(self.cost_usd);
    }

    fn frame_if_changed(&mut self, spec: &SessionSpec) -> Option<Value> {
        let mut f = json!({
            "type": "usage",
            "sessionId": spec.id,
            "assignmentId": spec.assignment,
            "computeSeconds": (self.compute * 100.0).round() / 100.0,
        });
        if let Some(v) = self.tokens_in {
            f["tokensIn"] = json!(v);
        }
        if let Some(v) = self.tokens_out {
            f["tokensOut"] = json!(v);
        }
        if let Some(v) = self.api_calls {
            f["apiCalls"] = json!(v);
        }
        if let Some(v) = self.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
            f["costUsd"] = json!(v);
        }
        if self.last_sent.as_ref() == Some(&f) {
            return None;
        }
        self.last_sent = Some(f.clone());
        Some(f)
    }
}

/// Where a session's guard writes the agent's exit.
pub fn status_path(data_dir: &Path, session: &str) -> PathBuf {
    data_dir.join("sessions").join(format!("{session}.status"))
}
