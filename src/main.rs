//! `village [serve] [--listen ADDR] [--data-dir DIR] [--config FILE]`, `village runner …`,
//! `village demo`, `village approval request|claude-hook`, and the operator's commands:
//! `village token create|list|revoke`, `backup`, `restore`, `check-config`, `status`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use village::admin;
use village::app::App;
use village::clock::{RandomIds, SystemClock};
use village::config::Config;

#[derive(Parser)]
#[command(
    name = "village",
    version,
    about = "Control plane for a fleet of AI coding agents"
)]
#[command(args_conflicts_with_subcommands = true, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve(ServeArgs),
    /// A server, a runner and a demo agent on a demo repository: Village in one command.
    Demo(DemoArgs),
    /// Run agent sessions for a Village server.
    Runner(RunnerArgs),
    /// Ask the runner for an approval from inside a session.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write a consistent copy of the database to a file, from a running server or a data dir.
    Backup(BackupArgs),
    /// Put a backup in place as a stopped server's database.
    Restore(RestoreArgs),
    /// Give a stopped server's free database pages back to the filesystem.
    Compact(CompactArgs),
    /// Check a configuration file as `village serve` would load it; names the bad key.
    CheckConfig(CheckConfigArgs),
    /// A running server's health, readiness, fleet and sessions.
    Status(StatusArgs),
    /// Internal: the per-session process guard the runner starts agents under.
    #[command(name = "__guard", hide = true)]
    Guard(GuardArgs),
    /// A scripted ACP agent on stdin and stdout (`village demo`, tests).
    #[command(hide = true)]
    DemoAgent,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the demo keeps its server, runner and repository.
    #[arg(long, default_value = "./village-demo")]
    data_dir: PathBuf,
    /// Address to serve the dashboard on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

#[derive(Args)]
struct RunnerArgs {
    /// The server, e.g. http://village.internal:8080.
    #[arg(long, env = "VILLAGE_SERVER")]
    server: String,
    /// A runner_join token (needed to register; a saved identity is reused without it).
    #[arg(long, env = "VILLAGE_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// Where the runner keeps its identity (0600) and its approval socket.
    #[arg(long, env = "VILLAGE_RUNNER_DATA_DIR", default_value = "./runner-data")]
    data_dir: PathBuf,
    /// Where session workspaces are cloned (default: <data-dir>/work).
    #[arg(long, env = "VILLAGE_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// The name this runner registers with (default: the system's hostname).
    #[arg(long, env = "VILLAGE_RUNNER_HOSTNAME")]
    hostname: Option<String>,
    /// Sessions run at once.
    #[arg(long, env = "VILLAGE_MAX_SESSIONS", default_value_t = 4)]
    max_sessions: u32,
    /// A feature this runner offers (repeatable).
    #[arg(long = "feature")]
    features: Vec<String>,
    /// PROVIDER=PROTOCOL:COMMAND, e.g. `claude_code=claude:claude` (repeatable; replaces the
    /// default of the same provider). PROTOCOL: claude, codex, acp or pty.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Keep each session's workspace after it ends.
    #[arg(long)]
    keep_workspaces: bool,
    /// Seconds from a stop to SIGKILL of the session's processes.
    #[arg(long, default_value_t = 10)]
    stop_grace: u64,
}

/// Where an admin command acts: a running server, or the data dir of a stopped one.
#[derive(Args)]
struct AdminTarget {
    /// A running server, e.g. http://127.0.0.1:8080. Without it the command opens the data dir's
    /// database itself, which only works while no server has it open.
    #[arg(long, env = "VILLAGE_SERVER")]
    server: Option<String>,
    /// An admin token for --server (default: the data dir's admin-token file).
    #[arg(long, env = "VILLAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data dir (server.dataDir).
    #[arg(long, env = "VILLAGE_SERVER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

impl AdminTarget {
    fn resolve(self) -> Result<admin::Target, admin::Failure> {
        admin::target(self.server.as_deref(), self.token, &self.data_dir)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        /// admin, org or runner_join.
        #[arg(long)]
        kind: String,
        /// What the token is for (shown in lists and the audit log).
        #[arg(long)]
        name: String,
        /// The org of an org or runner_join token.
        #[arg(long)]
        org_id: Option<String>,
        /// Print the API's JSON answer instead of the secret alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List every token, oldest first (never a secret).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Revoke a token by its id.
    Revoke {
        token_id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Args)]
struct BackupArgs {
    /// The file to write (must not exist; written private to this user).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    target: AdminTarget,
}

#[derive(Args)]
struct RestoreArgs {
    /// A file `village backup` wrote.
    #[arg(long)]
    from: PathBuf,
    /// The stopped server's data dir (server.dataDir).
    #[arg(long, env = "VILLAGE_SERVER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Replace an existing database (kept beside it as village.redb.replaced-<unix time>).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CompactArgs {
    /// The stopped server's data dir (server.dataDir).
    #[arg(long, env = "VILLAGE_SERVER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// The TOML file.
    file: PathBuf,
}

#[derive(Args)]
struct StatusArgs {
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The server.
    #[arg(long, env = "VILLAGE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An admin or org token (default: the data dir's admin-token file).
    #[arg(long, env = "VILLAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's data dir, to read its admin-token file.
    #[arg(long, env = "VILLAGE_SERVER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// Ask for an approval and wait: exit 0 allowed, 1 denied (reason on stderr), 3 error.
    Request {
        /// merge, deps_add, secrets, deploy, command, file_change, network or other.
        #[arg(long)]
        action: String,
        /// What is asked, for the person deciding.
        #[arg(long)]
        description: String,
        /// Extra JSON shown with the approval.
        #[arg(long)]
        context: Option<String>,
    },
    /// A Claude Code PreToolUse hook: reads the hook JSON on stdin, prints the decision JSON.
    ClaudeHook,
}

#[derive(Args)]
struct GuardArgs {
    #[arg(long)]
    status: PathBuf,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Address to serve on (server.listen), e.g. 127.0.0.1:8080 or 127.0.0.1:0.
    #[arg(long)]
    listen: Option<String>,
    /// Where the database and admin token live (server.dataDir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `text` (the default) or `json`, one object per line (also VILLAGE_LOG_FORMAT).
    #[arg(long)]
    log_format: Option<String>,
}

/// Threads for the server's blocking work: every store read runs there. tokio's default (512)
/// let bursts of reads start a thread each (a day on a big fleet had 90 alive), each with its
/// stack and allocator state kept after the burst; more threads than a few per core run no read
/// sooner.
const BLOCKING_THREADS: usize = 16;

fn token_main(command: TokenCommand) -> Result<(), admin::Failure> {
    match command {
        TokenCommand::Create {
            kind,
            name,
            org_id,
            json,
            target,
        } => admin::token_create(target.resolve()?, &kind, &name, org_id.as_deref(), json),
        TokenCommand::List { json, target } => admin::token_list(target.resolve()?, json),
        TokenCommand::Revoke { token_id, target } => {
            admin::token_revoke(target.resolve()?, &token_id)
        }
    }
}

fn status_main(a: StatusArgs) -> Result<(), admin::Failure> {
    match admin::target(Some(&a.server), a.token, &a.data_dir)? {
        admin::Target::Server { url, token } => admin::status(url, token, a.json),
        admin::Target::DataDir(_) => Err(admin::Failure::usage("status needs a running server")),
    }
}

/// An admin command's exit: 0, or its message on stderr and its code.
fn admin_main(outcome: Result<(), admin::Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("village: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// jemalloc (see Cargo.toml for why): the server, the runner and the admin commands.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        None | Some(Command::Serve(_) | Command::Demo(_))
    ) {
        village::memory::return_freed_memory_in_background();
    }
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::DemoAgent) => return village::demo_agent::main(),
        None => cli.serve,
        Some(Command::Runner(args)) => return runner_main(args),
        Some(Command::Demo(args)) => return demo_main(args),
        Some(Command::Approval(ApprovalCommand::Request {
            action,
            description,
            context,
        })) => {
            let code =
                village::runner::local::request_main(&action, &description, context.as_deref());
            return ExitCode::from(code as u8);
        }
        Some(Command::Approval(ApprovalCommand::ClaudeHook)) => {
            let code = village::runner::local::claude_hook_main(&mut std::io::stdin());
            return ExitCode::from(code as u8);
        }
        Some(Command::Token(command)) => return admin_main(token_main(command)),
        Some(Command::Backup(a)) => {
            return admin_main(a.target.resolve().and_then(|t| admin::backup(t, &a.out)));
        }
        Some(Command::Restore(a)) => {
            return admin_main(admin::restore(&a.data_dir, &a.from, a.force));
        }
        Some(Command::Compact(a)) => return admin_main(admin::compact(&a.data_dir)),
        Some(Command::CheckConfig(a)) => return admin_main(admin::check_config(&a.file)),
        Some(Command::Status(a)) => return admin_main(status_main(a)),
        Some(Command::Guard(g)) => {
            let (program, args) = g
                .command
                .split_first()
                .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
            let code = village::runner::process::guard_main(&g.status, program, args);
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    if let Err(code) = init_logs(args.log_format.as_deref()) {
        return code;
    }

    let mut config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("village: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = &args.listen {
        match listen.parse() {
            Ok(addr) => config.server.listen = addr,
            Err(_) => {
                eprintln!(
                    "village: configuration error: bad value for `--listen`: {listen:?} is not an address like 127.0.0.1:8080"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if let Err(e) = config.check_exposure() {
        eprintln!("village: configuration error: {e}");
        return ExitCode::from(2);
    }
    let data_dir = config.server.data_dir.clone();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("village: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("village: cannot listen on {}: {e}", config.server.listen);
                return ExitCode::FAILURE;
            }
        };
        let app = match App::start(config, Arc::new(SystemClock), Arc::new(RandomIds)).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("village: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(token) = &app.bootstrap_token {
            // Shown once, to a person at a terminal; never logged. Under a service manager
            // stdout lands in a journal, so there only the file holds it.
            if std::io::stdout().is_terminal() {
                println!(
                    "Admin token (shown once; also in the data dir's admin-token file): {token}"
                );
            } else {
                tracing::info!(
                    path = %data_dir.join("admin-token").display(),
                    "the first admin token was written to this file (readable by this user only)"
                );
            }
        }
        app.serve(listener, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Logs on stderr at `VILLAGE_LOG`'s level (default info), as text for people or, with
/// `--log-format json` or `VILLAGE_LOG_FORMAT=json`, one JSON object per line for a collector.
fn init_logs(format: Option<&str>) -> Result<(), ExitCode> {
    let level = std::env::var("VILLAGE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let format = match format {
        Some(f) => f.to_owned(),
        None => std::env::var("VILLAGE_LOG_FORMAT").unwrap_or_else(|_| "text".into()),
    };
    let logs = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match format.as_str() {
        "text" => logs.init(),
        "json" => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        other => {
            eprintln!("village: --log-format must be text or json, not {other:?}");
            return Err(ExitCode::from(2));
        }
    }
    Ok(())
}

fn demo_main(args: DemoArgs) -> ExitCode {
    if let Err(code) = init_logs(None) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("village demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = village::demo::DemoOptions {
        data_dir: args.data_dir,
        listen: args.listen,
    };
    match runtime.block_on(village::demo::run(options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("village demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runner_main(args: RunnerArgs) -> ExitCode {
    if let Err(code) = init_logs(None) {
        return code;
    }
    let mut agents = Vec::new();
    for a in &args.agents {
        match village::runner::AgentSpec::parse(a) {
            Ok(spec) => agents.push(spec),
            Err(e) => {
                eprintln!("village runner: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.max_sessions == 0 {
        eprintln!("village runner: --max-sessions must be at least 1");
        return ExitCode::from(2);
    }
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("work"));
    let cfg = village::runner::RunnerConfig {
        server: args.server,
        join_token: args.join_token,
        data_dir: args.data_dir,
        work_dir,
        hostname: args
            .hostname
            .unwrap_or_else(village::runner::system_hostname),
        max_sessions: args.max_sessions,
        features: args.features,
        agents,
        default_agents: true,
        keep_workspaces: args.keep_workspaces,
        stop_grace: std::time::Duration::from_secs(args.stop_grace),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("village runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(village::runner::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("village runner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
