//! `village runner`: runs agent sessions for a Village server. A client of the public API (one
//! REST call to register, then the runner channel); it shares only wire shapes with the server.
//!
//! `mod.rs` holds the runner's state and the dispatch of the server's commands; `channel.rs`
//! the connection, `session.rs` one session's life, `process.rs` the process hygiene,
//! `agents/` the protocol adapters, `broker.rs` the approval rules and `local.rs` the local
//! approval socket.

pub mod agents;
pub mod broker;
pub mod channel;
pub mod host;
pub mod identity;
pub mod local;
pub mod process;
pub mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::client::ServerUrl;
use agents::{Decision, Protocol};
use channel::Up;
use host::{HostLoad, Versions};
use identity::{Identity, RegisterError, Registration};
use session::{SessionCommand, SessionSpec};

/// One `--agent PROVIDER=PROTOCOL:COMMAND`.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    pub provider: String,
    pub protocol: Protocol,
    /// The command, split like a shell would.
    pub command: Vec<String>,
}

impl AgentSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("--agent {text:?}: expected PROVIDER=PROTOCOL:COMMAND");
        let (provider, rest) = text.split_once('=').ok_or_else(bad)?;
        let (protocol, command) = rest.split_once(':').ok_or_else(bad)?;
        let protocol = Protocol::parse(protocol).ok_or_else(|| {
            format!("--agent {text:?}: PROTOCOL is one of claude, codex, acp, pty")
        })?;
        let command = shlex::split(command)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("--agent {text:?}: the command is empty or badly quoted"))?;
        if provider.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            provider: provider.to_string(),
            protocol,
            command,
        })
    }

    /// The agents a runner offers unless told otherwise.
    pub fn defaults() -> Vec<Self> {
        [
            "claude_code=claude:claude",
            "codex=codex:codex",
            "gemini_cli=acp:gemini --acp",
            "omnara=pty:omnara",
        ]
        .iter()
        .filter_map(|t| Self::parse(t).ok())
        .collect()
    }
}

/// An agent this runner offers: its program was found.
#[derive(Clone, Debug)]
pub struct OfferedAgent {
    pub provider: String,
    pub protocol: Protocol,
    pub program: String,
    pub args: Vec<String>,
}

/// `village runner` settings.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub server: String,
    pub join_token: Option<String>,
    pub data_dir: PathBuf,
    pub work_dir: PathBuf,
    pub hostname: String,
    pub max_sessions: u32,
    pub features: Vec<String>,
    /// `--agent` entries; they replace the default of the same provider.
    pub agents: Vec<AgentSpec>,
    /// Whether the default agents are offered besides `agents` (`village demo` offers only its
    /// own).
    pub default_agents: bool,
    pub keep_workspaces: bool,
    pub stop_grace: Duration,
}

struct SessionHandle {
    commands: mpsc::UnboundedSender<SessionCommand>,
    token: String,
}

/// The running runner, shared by its tasks.
pub struct Runner {
    pub server: ServerUrl,
    pub cfg: RunnerConfig,
    identity: Mutex<Identity>,
    agents: Vec<OfferedAgent>,
    versions: Versions,
    up: mpsc::UnboundedSender<Up>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    host: Mutex<HostLoad>,
    interval_ms: AtomicU64,
    draining: AtomicBool,
    finished: watch::Sender<bool>,
    desired_build: Mutex<Option<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const DEFAULT_INTERVAL_MS: u64 = 10_000;

impl Runner {
    pub fn identity(&self) -> Identity {
        lock(&self.identity).clone()
    }

    pub fn send(&self, up: Up) {
        let _ = self.up.send(up);
    }

    pub fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// Resolves when the runner is done.
    pub async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    fn finish(&self) {
        self.finished.send_replace(true);
    }

    pub fn socket_path(&self) -> PathBuf {
        self.cfg.data_dir.join("approvals.sock")
    }

    pub fn status_path(&self, session: &str) -> PathBuf {
        session::status_path(&self.cfg.data_dir, session)
    }

    fn registration(&self) -> Registration<'_> {
        Registration {
            hostname: &self.cfg.hostname,
            providers: self.agents.iter().map(|a| a.provider.clone()).collect(),
            max_sessions: self.cfg.max_sessions,
            features: &self.cfg.features,
        }
    }

    /// The server refused the token: register again with the join token (same hostname, same id).
    pub async fn register_again(&self) -> Result<(), RegisterError> {
        let join = self.cfg.join_token.as_deref().ok_or_else(|| {
            RegisterError::Refused(
                "the runner token was refused and no --join-token was given".into(),
            )
        })?;
        let (identity, interval) =
            identity::register(&self.server, join, &self.registration()).await?;
        identity::save(&self.cfg.data_dir, &identity)
            .map_err(|e| RegisterError::Refused(format!("cannot save the identity: {e}")))?;
        if let Some(ms) = interval {
            self.interval_ms.store(ms.max(100), Ordering::Relaxed);
        }
        tracing::info!(runner = %identity.runner_id, "registered");
        *lock(&self.identity) = identity;
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    pub fn heartbeat_frame(&self) -> Value {
        let active: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        let load = lock(&self.host).sample();
        json!({
            "type": "heartbeat",
            "runnerId": lock(&self.identity).runner_id,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "activeSessions": active,
            "load": load,
            "runtimeVersions": self.versions,
            "buildId": concat!("village-runner-", env!("CARGO_PKG_VERSION")),
        })
    }

    /// The server's answer to a heartbeat. Returns a new interval if it changed.
    pub fn heartbeat_answer(&self, frame: &Value) -> Option<u64> {
        if frame["drain"].as_bool() == Some(true) {
            self.start_drain();
        }
        let desired = frame.get("desiredBuild").filter(|d| !d.is_null()).cloned();
        {
            let mut last = lock(&self.desired_build);
            if *last != desired {
                if let Some(d) = &desired {
                    tracing::info!(desired_build = %d, "the server names a desired build");
                }
                *last = desired;
            }
        }
        let ms = frame["heartbeatIntervalMs"].as_u64()?.max(100);
        (self.interval_ms.swap(ms, Ordering::Relaxed) != ms).then_some(ms)
    }

    fn start_drain(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            tracing::info!("draining: no new sessions; exiting when the last one ends");
        }
        if lock(&self.sessions).is_empty() {
            self.finish();
        }
    }

    pub fn session_of_token(&self, token: &str) -> Option<String> {
        lock(&self.sessions)
            .iter()
            .find(|(_, h)| h.token == token)
            .map(|(id, _)| id.clone())
    }

    /// Hands a command to a running session; false if it is not running here.
    pub fn tell(&self, session: &str, command: SessionCommand) -> bool {
        lock(&self.sessions)
            .get(session)
            .is_some_and(|h| h.commands.send(command).is_ok())
    }

    /// A command from the server. Handled without waiting, so the channel keeps reading.
    pub fn command(self: &Arc<Self>, frame: &Value) {
        let session = frame["sessionId"].as_str().unwrap_or_default().to_string();
        match frame["type"].as_str().unwrap_or_default() {
            "assign_session" => self.assign(frame),
            "stop_session" => {
                self.tell(&session, SessionCommand::Stop);
            }
            "pause_session" => {
                self.tell(&session, SessionCommand::Pause);
            }
            "resume_session" => {
                self.tell(&session, SessionCommand::Resume);
            }
            "terminal_input" => {
                let data = frame["data"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                self.tell(&session, SessionCommand::Input(data));
            }
            "approval_resolved" => {
                let decision = Decision {
                    allow: frame["decision"] == "allow",
                    for_session: frame["scope"] == "session",
                    reason: frame["reason"].as_str().map(str::to_owned),
                };
                let approval_id = frame["approvalId"].as_str().unwrap_or_default().to_string();
                self.tell(
                    &session,
                    SessionCommand::Resolved {
                        approval_id,
                        decision,
                    },
                );
            }
            "drain" => self.start_drain(),
            _ => {}
        }
    }

    fn assign(self: &Arc<Self>, frame: &Value) {
        let spec = match SessionSpec::from_assign(frame) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "bad assignment");
                return;
            }
        };
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(&spec.id) {
            // Sent again after a reconnect: it already runs here.
            return;
        }
        let Some(agent) = self
            .agents
            .iter()
            .find(|a| a.provider == spec.provider)
            .cloned()
        else {
            tracing::warn!(provider = %spec.provider, "assigned a provider this runner does not offer");
            self.send(Up::Report {
                frame: json!({
                    "type": "session_state",
                    "sessionId": spec.id,
                    "assignmentId": spec.assignment,
                    "state": "FAILED",
                    "error": format!("provider {} is not offered by this runner", spec.provider),
                }),
                reply: None,
            });
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let token = random_token();
        sessions.insert(
            spec.id.clone(),
            SessionHandle {
                commands: tx,
                token: token.clone(),
            },
        );
        drop(sessions);
        let runner = self.clone();
        tokio::spawn(async move {
            let id = spec.id.clone();
            session::run(runner.clone(), spec, agent, token, rx).await;
            let empty = {
                let mut s = lock(&runner.sessions);
                s.remove(&id);
                s.is_empty()
            };
            if empty && runner.draining.load(Ordering::Relaxed) {
                tracing::info!("drained: the last session ended");
                runner.finish();
            }
        });
    }

    /// Stops every session (interrupt, SIGTERM, SIGKILL after the grace) and waits for them.
    async fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        for id in &ids {
            self.tell(id, SessionCommand::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + self.cfg.stop_grace + Duration::from_secs(10);
        while !lock(&self.sessions).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.finish();
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the agents this host can run: `--agent` entries over the defaults, kept only when the
/// program is found.
pub fn offered_agents(specs: &[AgentSpec], with_defaults: bool) -> Vec<OfferedAgent> {
    let mut all = if with_defaults {
        AgentSpec::defaults()
    } else {
        Vec::new()
    };
    for s in specs {
        all.retain(|d| d.provider != s.provider);
        all.push(s.clone());
    }
    all.into_iter()
        .filter_map(|s| {
            let program = host::find_program(&s.command[0])?;
            Some(OfferedAgent {
                provider: s.provider,
                protocol: s.protocol,
                program: program.to_string_lossy().into_owned(),
                args: s.command[1..].to_vec(),
            })
        })
        .collect()
}

/// Runs the runner until a drain completes (exit 0) or `shutdown` resolves.
pub async fn run(
    cfg: RunnerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let server = ServerUrl::parse(&cfg.server)?;
    let mut shutdown = std::pin::pin!(shutdown);
    identity::prepare_data_dir(&cfg.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.data_dir.display()))?;
    std::fs::create_dir_all(cfg.data_dir.join("sessions"))
        .map_err(|e| format!("cannot create {}: {e}", cfg.data_dir.display()))?;
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.work_dir.display()))?;
    let agents = offered_agents(&cfg.agents, cfg.default_agents);
    if agents.is_empty() {
        return Err("no agent program was found (see --agent)".into());
    }
    let mut versions = Versions::new();
    for a in &agents {
        if let Some(v) = host::version_of(&a.program, &a.args).await {
            versions.insert(a.provider.clone(), v);
        }
    }
    for a in &agents {
        tracing::info!(
            provider = %a.provider,
            protocol = a.protocol.name(),
            program = %a.program,
            version = versions.get(&a.provider).map(String::as_str).unwrap_or("?"),
            "offering"
        );
    }
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let existing = identity::load(&cfg.data_dir);
    let runner = Arc::new(Runner {
        server,
        identity: Mutex::new(existing.clone().unwrap_or(Identity {
            runner_id: String::new(),
            runner_token: String::new(),
            hostname: cfg.hostname.clone(),
        })),
        host: Mutex::new(HostLoad::new(&cfg.work_dir)),
        cfg,
        agents,
        versions,
        up: up_tx,
        sessions: Mutex::new(HashMap::new()),
        interval_ms: AtomicU64::new(DEFAULT_INTERVAL_MS),
        draining: AtomicBool::new(false),
        finished: watch::channel(false).0,
        desired_build: Mutex::new(None),
    });
    match existing {
        Some(i) if i.hostname == runner.cfg.hostname => {
            tracing::info!(runner = %i.runner_id, "using the saved identity");
        }
        _ => {
            tokio::select! {
                registered = first_registration(&runner) => registered?,
                () = &mut shutdown => return Ok(()),
            }
        }
    }
    let listener = local::bind(&runner.socket_path())
        .map_err(|e| format!("cannot open the approval socket: {e}"))?;
    tokio::spawn(local::serve(runner.clone(), listener));
    let channel = tokio::spawn(channel::run(runner.clone(), up_rx));
    tokio::select! {
        () = &mut shutdown => {
            tracing::info!("shutting down: stopping sessions");
            runner.shutdown().await;
        }
        _ = runner.finished() => {}
    }
    // Give the channel a moment to deliver the last reports.
    let _ = tokio::time::timeout(Duration::from_secs(5), channel).await;
    Ok(())
}

/// Registers a runner that has no identity yet. A server that cannot be reached, is overloaded
/// (429: a fleet enrolling at once) or failing (5xx) is asked again, after its `Retry-After`
/// or a growing backoff; a refusal (bad join token, a hostname of another org) ends the runner.
async fn first_registration(runner: &Runner) -> Result<(), String> {
    let mut failures = 0u32;
    loop {
        match runner.register_again().await {
            Ok(()) => return Ok(()),
            Err(RegisterError::Refused(why)) => return Err(why),
            Err(RegisterError::Transient { why, retry_after }) => {
                failures = failures.saturating_add(1);
                let wait = retry_after.unwrap_or_else(|| channel::backoff(failures));
                tracing::warn!(
                    error = %why,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot register yet; trying again"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The default hostname: the system's.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "runner".into())
}

/// For tests and `village demo`: the data dir's identity file.
pub fn identity_file(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}
