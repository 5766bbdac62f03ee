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

/// Starts `launch` under the guard (this binary's `__guard` subcommand). `status_file` is where
/// the guard writes how the agent ended (a guard cannot die "of" the agent's signal).
pub fn spawn(launch: Launch, status_file: PathBuf) -> std::io::Result<AgentProcess> {
    let exe = std::env::current_exe()?;
    let _ = std::fs::remove_file(&status_file);
    let mut guard_args: Vec<String> = vec![
        GUARD_SUBCOMMAND.into(),
        "--status".into(),
        status_file.to_string_lossy().into_owned(),
        "--".into(),
        launch.program.clone(),
    ];
    guard_args.extend(launch.args.iter().cloned());
    let (tx, rx) = watch::channel(None);
    if launch.pty {
        spawn_pty(&exe, guard_args, &launch, status_file, tx, rx)
    } else {
        spawn_piped(&exe, guard_args, &launch, status_file, tx, rx)
    }
}

/// The hidden subcommand that runs the guard.
pub const GUARD_SUBCOMMAND: &str = "__guard";

fn spawn_piped(
    exe: &std::path::Path,
    guard_args: Vec<String>,
    launch: &Launch,
    status_file: PathBuf,
    tx: watch::Sender<Option<ExitInfo>>,
    rx: watch::Receiver<Option<ExitInfo>>,
) -> std::io::Result<AgentProcess> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(&guard_args)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // The guard leads a new process group: signals for the session go to it.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the agent's pipes were not opened"));
    };
    tokio::spawn(async move {
        let status = child.wait().await;
        let exit = exit_info(status.ok(), &status_file);
        let _ = tx.send(Some(exit));
    });
    Ok(AgentProcess::new(
        AgentIo::Pipes {
            stdin,
            stdout,
            stderr,
        },
        pid,
        rx,
    ))
}

fn spawn_pty(
    exe: &std::path::Path,
    guard_args: Vec<String>,
    launch: &Launch,
    status_file: PathBuf,
    tx: watch::Sender<Option<ExitInfo>>,
    rx: watch::Receiver<Option<ExitInfo>>,
) -> std::io::Result<AgentProcess> {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(std::io::Error::other)?;
    let mut cmd = CommandBuilder::new(exe);
    cmd.args(&guard_args);
    cmd.cwd(&launch.cwd);
    cmd.env("TERM", "xterm-256color");
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }
    // The child leads a new session (and so a new process group) with the PTY as its terminal.
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(std::io::Error::other)?;
    // Only the child keeps the slave side open, so the reader sees the end when it ends.
    drop(pair.slave);
    let pid = child.process_id().map(|p| p as i32).unwrap_or(0);
    let reader = pair
        .master
        .try_clone_reader()
        .map_err(std::io::Error::other)?;
    let writer = pair.master.take_writer().map_err(std::io::Error::other)?;
    std::thread::spawn(move || {
        let status = child.wait();
        // Keep the master open until the child is gone: closing it would hang up on the agent.
        drop(pair.master);
        let exit = match std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| parse_status(&s))
        {
            Some(e) => e,
            None => match status {
                Ok(s) if s.signal().is_some() => ExitInfo::Signal(9),
                Ok(s) => ExitInfo::Code(s.exit_code() as i32),
                Err(_) => ExitInfo::Signal(9),
            },
        };
        let _ = tx.send(Some(exit));
    });
    Ok(AgentProcess::new(AgentIo::Pty { reader, writer }, pid, rx))
}

fn exit_info(status: Option<std::process::ExitStatus>, status_file: &std::path::Path) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    if let Some(e) = std::fs::read_to_string(status_file)
        .ok()
        .and_then(|s| parse_status(&s))
    {
        return e;
    }
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitInfo::Code(c),
            (None, Some(sig)) => ExitInfo::Signal(sig),
            (None, None) => ExitInfo::Signal(9),
        },
        None => ExitInfo::Signal(9),
    }
}

fn parse_status(s: &str) -> Option<ExitInfo> {
    let (kind, n) = s.trim().split_once(' ')?;
    let n: i32 = n.parse().ok()?;
    match kind {
        "exit" => Some(ExitInfo::Code(n)),
        "signal" => Some(ExitInfo::Signal(n)),
        _ => None,
    }
}

/// Sends `signal` to every process of the group. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
    }
}

/// Whether any process of the group is still alive.
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
}

/// CPU seconds (user + system) used by the processes of a group that are alive now, plus what
/// their reaped children used. Read from /proc; 0 where it cannot be read.
pub fn group_cpu_seconds(pgid: i32) -> f64 {
    let ticks = clock_ticks();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total: u64 = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: fields follow the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state(0) ppid(1) pgrp(2) … utime(11) stime(12) cutime(13) cstime(14).
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        for i in 11..=14 {
            total += fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total as f64 / ticks
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture we run on.
    100.0
}

/// `village __guard --status FILE -- PROGRAM ARGS…`: leads the session's process group, starts
/// the agent in it and waits. If the runner dies (even by `kill -9`) the kernel signals the guard
/// (`PR_SET_PDEATHSIG`) and the guard kills the whole group. Signals for the group (pause, stop)
/// reach the agent directly; the guard itself only waits for them to end it. Returns the guard's
/// exit code.
pub fn guard_main(status_file: &std::path::Path, program: &str, args: &[String]) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::unistd::{Pid, getpgrp, getpid, getppid, setpgid};

    let parent = getppid();
    if getpgrp() != getpid() {
        let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    // Blocked, then taken with sigwait: no handler runs in the guard. The agent starts with an
    // empty mask (the standard library resets it in the child).
    if mask.thread_block().is_err() {
        return 3;
    }
    if nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1).is_err() {
        return 3;
    }
    // The runner may have died before the request took effect.
    if getppid() != parent {
        return 3;
    }
    let mut child = match std::process::Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("village: cannot start {program}: {e}");
            let _ = std::fs::write(status_file, "exit 127");
            return 127;
        }
    };
    loop {
        let signal = mask.wait();
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let (text, code) = match (status.code(), status.signal()) {
                    (Some(c), _) => (format!("exit {c}"), c),
                    (None, Some(s)) => (format!("signal {s}"), 128 + s),
                    (None, None) => ("signal 9".to_string(), 137),
                };
                let _ = std::fs::write(status_file, text);
                return code;
            }
            Ok(None) => {}
            Err(_) => return 3,
        }
        let runner_gone = getppid() != parent;
        if matches!(signal, Ok(Signal::SIGUSR1)) || runner_gone {
            let _ = nix::sys::signal::killpg(getpgrp(), Signal::SIGKILL);
            return 137;
        }
    }
}
