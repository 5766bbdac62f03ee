//! `village [serve] [--listen ADDR] [--data-dir DIR] [--config FILE]`

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use village::app::App;
use village::clock::{RandomIds, SystemClock};
use village::config::Config;

#[derive(Parser)]
#[command(
    name = "village",
    version,
    about = "Control plane for a fleet of AI coding agents"
)]
#[command(args_conflicts_with_subcommands = true)]
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
    /// A scripted ACP agent on stdin and stdout (`village demo`, tests).
    #[command(hide = true)]
    DemoAgent,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::DemoAgent) => return village::demo_agent::main(),
        None => cli.serve,
    };
    let level = std::env::var("VILLAGE_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();

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
