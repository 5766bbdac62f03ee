//! The runner's local approval socket, and its clients `village approval request` and
//! `village approval claude-hook`.
//!
//! The socket lives in the runner's data dir (mode 0700, the socket 0600), so no other user
//! reaches it. Every session has its own token (in `VILLAGE_SESSION_TOKEN`); a request names
//! its session only through that token, so one session cannot ask for another. One JSON line
//! each way: `{token, action, description, context?}` (or `{token, tool, input}` from the hook)
//! → `{decision: "allow"|"deny", reason?}` or `{error}`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::Runner;
use super::agents::{Decision, claude};
use super::broker::Ask;
use super::session::SessionCommand;

/// Requests larger than this are refused.
const MAX_REQUEST: usize = 1024 * 1024;

/// Serves the socket until the runner ends.
pub async fn serve(runner: Arc<Runner>, listener: tokio::net::UnixListener) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let runner = runner.clone();
                tokio::spawn(async move {
                    let _ = answer(runner, stream).await;
                });
            }
            _ = runner.finished() => return,
        }
    }
}

/// Binds the socket, private to this user.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn answer(runner: Arc<Runner>, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let reply = match request(&runner, &line) {
        Err(e) => json!({"error": e}),
        Ok(rx) => match rx.await {
            Ok(d) => {
                let mut v = json!({"decision": if d.allow { "allow" } else { "deny" }});
                if let Some(r) = d.reason {
                    v["reason"] = json!(r);
                }
                v
            }
            Err(_) => json!({"decision": "deny", "reason": "the session ended"}),
        },
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    write.shutdown().await
}

use tokio::io::AsyncReadExt as _;

fn request(runner: &Runner, line: &str) -> Result<oneshot::Receiver<Decision>, String> {
    let v: Value = serde_json::from_str(line).map_err(|_| "the request is not JSON".to_string())?;
    let token = v["token"].as_str().ok_or("no session token")?;
    let session = runner
        .session_of_token(token)
        .ok_or("unknown session token (is the session still running?)")?;
    let ask = if let Some(tool) = v["tool"].as_str() {
        // A Claude Code PreToolUse hook: classified and described as the claude adapter does.
        let input = v["input"].clone();
        let kind = claude::tool_kind(tool, &input);
        let description = claude::describe(tool, &input);
        Ask::from_agent("claude-hook", tool, &kind, input, &description, None)
    } else {
        let action = v["action"].as_str().ok_or("no action")?;
        if !ACTIONS.contains(&action) {
            return Err(format!(
                "unknown action `{action}`; one of {}",
                ACTIONS.join(", ")
            ));
        }
        let description = v["description"].as_str().unwrap_or("").trim();
        if description.is_empty() {
            return Err("no description".into());
        }
        let context = match &v["context"] {
            Value::Null => json!({}),
            c => c.clone(),
        };
        Ask {
            action: action.to_string(),
            tool: "village approval request".into(),
            description: description.chars().take(500).collect(),
            context,
        }
    };
    let (tx, rx) = oneshot::channel();
    if !runner.tell(&session, SessionCommand::LocalAsk(ask, tx)) {
        return Err("the session is not running".into());
    }
    Ok(rx)
}

/// The action classes an approval may have.
pub const ACTIONS: &[&str] = &[
    "merge",
    "deps_add",
    "secrets",
    "deploy",
    "command",
    "file_change",
    "network",
    "other",
];

/// Sends one request to the runner and waits for its answer (blocking: the caller is a small
/// command that has nothing else to do).
fn exchange(request: &Value) -> Result<Value, String> {
    let socket = std::env::var("VILLAGE_RUNNER_SOCKET")
        .map_err(|_| "VILLAGE_RUNNER_SOCKET is not set (run this inside a Village session)")?;
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| format!("cannot reach the runner at {socket}: {e}"))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| format!("cannot ask the runner: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from the runner: {e}"))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|_| "the runner's answer is not JSON".to_string())?;
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    Ok(v)
}

fn session_token() -> Result<String, String> {
    std::env::var("VILLAGE_SESSION_TOKEN")
        .map_err(|_| "VILLAGE_SESSION_TOKEN is not set (run this inside a Village session)".into())
}

/// `village approval request --action A --description TEXT [--context JSON]`: 0 allowed,
/// 1 denied (the reason on stderr), 3 error.
pub fn request_main(action: &str, description: &str, context: Option<&str>) -> i32 {
    let run = || -> Result<Value, String> {
        let context = match context {
            Some(c) => serde_json::from_str::<Value>(c)
                .map_err(|e| format!("--context is not JSON: {e}"))?,
            None => Value::Null,
        };
        exchange(&json!({
            "token": session_token()?,
            "action": action,
            "description": description,
            "context": context,
        }))
    };
    match run() {
        Ok(v) if v["decision"] == "allow" => 0,
        Ok(v) => {
            eprintln!(
                "denied: {}",
                v["reason"].as_str().unwrap_or("no reason given")
            );
            1
        }
        Err(e) => {
            eprintln!("village approval request: {e}");
            3
        }
    }
}

/// `village approval claude-hook`: a Claude Code `PreToolUse` hook. Reads the hook's JSON on
/// stdin and prints the decision JSON. Outside a Village session it answers `ask` (Claude Code
/// asks its user as usual); when the runner cannot be asked it denies.
pub fn claude_hook_main(stdin: &mut dyn std::io::Read) -> i32 {
    let mut text = String::new();
    let decision = match stdin.read_to_string(&mut text) {
        Err(e) => ("deny", format!("cannot read the hook input: {e}")),
        Ok(_) => match serde_json::from_str::<Value>(&text) {
            Err(_) => ("deny", "the hook input is not JSON".to_string()),
            Ok(hook) => {
                if std::env::var_os("VILLAGE_RUNNER_SOCKET").is_none() {
                    ("ask", "not inside a Village session".to_string())
                } else {
                    let asked = session_token().and_then(|token| {
                        exchange(&json!({
                            "token": token,
                            "tool": hook["tool_name"].as_str().unwrap_or("unknown"),
                            "input": hook["tool_input"],
                        }))
                    });
                    match asked {
                        Ok(v) if v["decision"] == "allow" => {
                            ("allow", "allowed in Village".to_string())
                        }
                        Ok(v) => (
                            "deny",
                            v["reason"]
                                .as_str()
                                .unwrap_or("denied in Village")
                                .to_string(),
                        ),
                        Err(e) => ("deny", e),
                    }
                }
            }
        },
    };
    println!(
        "{}",
        json!({"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": decision.0,
            "permissionDecisionReason": decision.1,
        }})
    );
    0
}
