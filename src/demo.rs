//! `village demo`: a server, one in-process runner and the built-in demo agent (speaking ACP, so
//! the demo goes through the real adapter) on a demo repository it creates. It signs up an org
//! `demo` with a token, starts a few sessions, prints the dashboard's address and the token, and
//! runs until Ctrl-C. A second run on the same data dir reuses everything.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::App;
use crate::client::{ServerUrl, error_message, post_json};
use crate::clock::{RandomIds, SystemClock};
use crate::config::Config;
use crate::runner::{AgentSpec, RunnerConfig};

/// The demo's org.
pub const ORG: &str = "demo";

/// Tasks of the sessions the demo starts.
const TASKS: &[&str] = &[
    "Show me around this repository and publish a small note about it.",
    "Read the README and tell me what the project does.",
];

pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub listen: std::net::SocketAddr,
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(
    options: DemoOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let data_dir = options.data_dir;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut config = Config::default();
    config.server.data_dir = data_dir.join("server");
    config.server.listen = options.listen;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address: {e}"))?;
    let app = App::start(config, Arc::new(SystemClock), Arc::new(RandomIds))
        .await
        .map_err(|e| e.to_string())?;
    let admin = match &app.bootstrap_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(data_dir.join("server").join("admin-token"))
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read the admin token: {e}"))?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(app.serve(listener, server_stop));
    let url = ServerUrl::parse(&format!("http://{addr}"))?;

    let setup = setup(&url, &admin, &data_dir).await;
    let (org_token, join_token, repo) = match setup {
        Ok(s) => s,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Err(e);
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let agent = AgentSpec::parse(&format!(
        "gemini_cli=acp:{} demo-agent",
        shell_quote(&exe.to_string_lossy())
    ))?;
    let runner_cfg = RunnerConfig {
        server: format!("http://{addr}"),
        join_token: Some(join_token),
        data_dir: data_dir.join("runner"),
        work_dir: data_dir.join("runner").join("work"),
        hostname: "demo-runner".into(),
        max_sessions: 4,
        features: Vec::new(),
        agents: vec![agent],
        default_agents: false,
        keep_workspaces: false,
        stop_grace: Duration::from_secs(5),
    };
    let runner_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let runner = tokio::spawn(crate::runner::run(runner_cfg, runner_stop));
    for task in TASKS {
        create_session(&url, &org_token, &repo, task).await?;
    }
    println!();
    println!("  Village demo is running.");
    println!();
    println!("  Dashboard:  http://{addr}/");
    println!("  Sign in with this org token (org `{ORG}`):");
    println!("      {org_token}");
    println!();
    println!(
        "  A demo agent is working on {} sessions in a demo repository.",
        TASKS.len()
    );
    println!("  One of them asks before it pushes: allow it on the overview and watch it finish.");
    println!("  Press Ctrl-C to stop. Data: {}", data_dir.display());
    println!();

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = runner.await;
    let _ = server.await;
    Ok(())
}

/// The org token, a join token and the demo repository's URL (made on the first run, read on
/// later ones).
async fn setup(
    url: &ServerUrl,
    admin: &str,
    data_dir: &Path,
) -> Result<(String, String, String), String> {
    let saved = data_dir.join("demo-token");
    let org_token = match std::fs::read_to_string(&saved) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let token = create_token(
                url,
                admin,
                json!({"kind": "org", "name": "demo", "orgId": ORG}),
            )
            .await?;
            write_private(&saved, &token)?;
            token
        }
    };
    let join = create_token(
        url,
        admin,
        json!({"kind": "runner_join", "name": "demo runner"}),
    )
    .await?;
    let repo = demo_repository(&data_dir.join("demo-repo")).await?;
    Ok((org_token, join, repo))
}

async fn create_token(url: &ServerUrl, admin: &str, body: Value) -> Result<String, String> {
    let reply = post_json(url, "/api/v1/tokens", admin, &body).await?;
    if reply.status != 201 {
        return Err(format!("cannot create a token: {}", error_message(&reply)));
    }
    reply.body["data"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the token answer has no token".to_string())
}

async fn create_session(
    url: &ServerUrl,
    token: &str,
    repo: &str,
    task: &str,
) -> Result<(), String> {
    let body = json!({
        "orgId": ORG,
        "providerId": "gemini_cli",
        "repo": {"url": repo, "branch": "main"},
        "task": task,
    });
    let reply = post_json(url, "/api/v1/sessions", token, &body).await?;
    if reply.status != 201 {
        return Err(format!(
            "cannot create a session: {}",
            error_message(&reply)
        ));
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A small git repository for the demo sessions, as a file:// URL.
async fn demo_repository(dir: &Path) -> Result<String, String> {
    let url = format!("file://{}", dir.display());
    if dir.join(".git").exists() {
        return Ok(url);
    }
    std::fs::create_dir_all(dir.join("src")).map_err(|e| format!("demo repository: {e}"))?;
    let files = [
        (
            "README.md",
            "# Greeter\n\nA tiny program the Village demo agent works on.\n\nRun it with `python3 src/greet.py NAME`.\n",
        ),
        (
            "src/greet.py",
            "import sys\n\n\ndef greet(name: str) -> str:\n    return f\"Hello, {name}!\"\n\n\nif __name__ == \"__main__\":\n    print(greet(sys.argv[1] if len(sys.argv) > 1 else \"world\"))\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).map_err(|e| format!("demo repository: {e}"))?;
    }
    for args in [
        &["init", "--quiet", "-b", "main"][..],
        &["add", "."][..],
        &[
            "-c",
            "user.name=Village demo",
            "-c",
            "user.email=demo@village.invalid",
            "commit",
            "--quiet",
            "-m",
            "A tiny greeter",
        ][..],
    ] {
        let out = tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .await
            .map_err(|e| format!("demo repository: cannot run git: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "demo repository: git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(url)
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
