//! `village runner` as a child process running structured agents against a real server, once per
//! protocol: the fake Claude Code CLI (`claude`), the fake `codex app-server` (`codex`) and
//! `village demo-agent` (`acp`). Sessions end COMPLETED or FAILED with readable output, agents'
//! permission requests become classified approvals whose answers (allow, deny, expiry, an allow
//! for the session) reach the agent, and usage arrives. Last, a server restart in the middle of a
//! session neither loses nor repeats its output.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent_runner::{RunnerProcess, create, git_repo, output, pending_approval, wait_state};
use common::{BinaryServer, Client, TestServer, eventually, tmp_dir};
use serde_json::{Value, json};

/// The three structured protocols, as the runner is told about them.
#[derive(Clone, Copy, Debug)]
enum Agent {
    Claude,
    Codex,
    Acp,
}

impl Agent {
    fn provider(self) -> &'static str {
        match self {
            Agent::Claude => "claude_code",
            Agent::Codex => "codex",
            Agent::Acp => "gemini_cli",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
            Agent::Acp => "acp",
        }
    }
}

fn agent_flags() -> Vec<String> {
    let fake = |name: &str| format!("{}/tests/fakes/{name}", env!("CARGO_MANIFEST_DIR"));
    vec![
        format!("claude_code=claude:python3 {}", fake("fake_claude.py")),
        // The runner appends `app-server`; the fake ignores its arguments.
        format!("codex=codex:python3 {}", fake("fake_codex.py")),
        format!(
            "gemini_cli=acp:{} demo-agent",
            env!("CARGO_BIN_EXE_village")
        ),
    ]
}

struct Setup {
    server: TestServer,
    admin: Client,
    repo: String,
    _runner: RunnerProcess,
    _dir: tempfile::TempDir,
}

/// A server (manual clock, `toml` over the defaults) and a runner offering the three agents.
async fn setup(toml: &str) -> Setup {
    let server = TestServer::start(toml).await;
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let (dir, path) = tmp_dir();
    let repo = git_repo(&path);
    let mut args = vec!["--max-sessions".to_string(), "4".to_string()];
    for flag in agent_flags() {
        args.extend(["--agent".to_string(), flag]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runner = RunnerProcess::spawn_with_env(
        &format!("http://{}", server.addr),
        &join,
        &path.join("runner"),
        &args,
        &[("VILLAGE_DEMO_AGENT_FAST", "1")],
    );
    runner.wait_online(&admin).await;
    Setup {
        server,
        admin,
        repo,
        _runner: runner,
        _dir: dir,
    }
}

impl Setup {
    async fn create(&self, agent: Agent, task: &str) -> String {
        create(&self.admin, agent.provider(), &self.repo, task, json!({})).await
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The session's stored output without colours, after checking that no protocol message leaked
/// into it.
async fn rendered(admin: &Client, id: &str, agent: Agent) -> String {
    let text = strip_ansi(&output(admin, id).await);
    for needle in ["\"type\":", "\"jsonrpc\"", "\"method\"", "\"params\""] {
        assert!(
            !text.contains(needle),
            "{agent:?}: raw protocol ({needle}) in the output:\n{text}"
        );
    }
    text
}

fn assert_says(text: &str, agent: Agent, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{agent:?}: {needle:?} missing from the output:\n{text}"
        );
    }
}

/// Each needle appears after the one before it.
fn assert_in_order(text: &str, agent: Agent, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{agent:?}: {needle:?} missing or out of order in the output:\n{text}"),
        }
    }
}

async fn approvals(admin: &Client, id: &str) -> Value {
    let r = admin.get(&format!("/api/v1/sessions/{id}/approvals")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.data().clone()
}

async fn resolve(admin: &Client, session: &str, approval: &Value, body: Value) {
    let id = approval["approvalId"].as_str().unwrap();
    let r = admin
        .post(
            &format!("/api/v1/sessions/{session}/approvals/{id}/resolve"),
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Checks an agent's approval: its class, the tool and the protocol in its context; returns the
/// tool's input.
fn check_approval(a: &Value, agent: Agent, action: &str, tool: &str) -> Value {
    assert_eq!(a["action"], action, "{agent:?}: {a}");
    assert_eq!(a["context"]["tool"], tool, "{agent:?}: {a}");
    assert_eq!(
        a["context"]["agent"]["protocol"],
        agent.protocol(),
        "{agent:?}: {a}"
    );
    assert!(a["context"]["input"].is_object(), "{agent:?}: {a}");
    a["context"]["input"].clone()
}

/// The session's usage once `done` holds of it, or after 10 s, whichever comes first.
async fn usage_once(admin: &Client, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let usage = admin.session(id).await["usage"].clone();
        if done(&usage) || tokio::time::Instant::now() > deadline {
            return usage;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The demo agent's estimate: about four characters a token.
fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_completes_with_rendered_output_and_reports_its_usage() {
    let s = setup("").await;
    let acp_task = "say Hello from the demo agent\nthink considering";
    let tasks = [
        (
            Agent::Claude,
            "tokens 1200 340 0 0\ncost 0.25\nsay Hello from the fake claude",
        ),
        (
            Agent::Codex,
            "say Hello from the fake codex\ntokens 1200 340",
        ),
        (Agent::Acp, acp_task),
    ];
    let mut ids = Vec::new();
    for (agent, task) in tasks {
        ids.push((agent, s.create(agent, task).await));
    }
    for (agent, id) in &ids {
        let (agent, id) = (*agent, id.as_str());
        wait_state(&s.admin, id, "COMPLETED", 60).await;
        let text = rendered(&s.admin, id, agent).await;
        // (tokensIn, tokensOut, costUsd if the agent reports one) and what the agent said.
        let (want, said): ((u64, u64, Option<f64>), &[&str]) = match agent {
            Agent::Claude => (
                (1200, 340, Some(0.25)),
                &[
                    "Claude Code 2.1.333",
                    "Hello from the fake claude",
                    "✔ done",
                ],
            ),
            Agent::Codex => ((1200, 340, None), &["Hello from the fake codex", "✔ done"]),
            Agent::Acp => (
                (
                    estimate(acp_task),
                    estimate("Hello from the demo agent\n") + estimate("considering"),
                    None,
                ),
                &["Hello from the demo agent", "considering", "✔ done"],
            ),
        };
        assert_says(&text, agent, said);
        let usage = usage_once(&s.admin, id, |u| {
            u["tokensIn"].as_u64() == Some(want.0)
                && u["tokensOut"].as_u64() == Some(want.1)
                && want
                    .2
                    .is_none_or(|cost| u["costUsd"].as_f64() == Some(cost))
        })
        .await;
        assert_eq!(usage["tokensIn"], want.0, "{agent:?}: {usage}");
        assert_eq!(usage["tokensOut"], want.1, "{agent:?}: {usage}");
        if let Some(cost) = want.2 {
            assert_eq!(usage["costUsd"].as_f64(), Some(cost), "{agent:?}: {usage}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_fails_its_session_with_the_reason() {
    let s = setup("").await;
    let cases = [
        (
            Agent::Claude,
            "say trying\nfail the model broke",
            "the model broke",
        ),
        (
            Agent::Codex,
            "say trying\nfail the model is overloaded",
            "the model is overloaded",
        ),
        (
            Agent::Acp,
            "say trying\nfail the model is down",
            "the model is down",
        ),
        (Agent::Claude, "say trying\nexit 3", "exit status 3"),
        (Agent::Codex, "say trying\nexit 3", "exit status 3"),
        (Agent::Acp, "say trying\nexit 3", "exit status 3"),
    ];
    let mut ids = Vec::new();
    for (agent, task, why) in cases {
        ids.push((agent, s.create(agent, task).await, why));
    }
    for (agent, id, why) in &ids {
        let detail = wait_state(&s.admin, id, "FAILED", 60).await;
        assert!(
            detail["error"].as_str().is_some_and(|e| e.contains(why)),
            "{agent:?}: {detail}"
        );
        assert!(
            detail["endReason"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed: ") && r.contains(why)),
            "{agent:?}: {detail}"
        );
        let text = rendered(&s.admin, id, *agent).await;
        assert_says(&text, *agent, &["trying", why]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_classified_with_their_context_and_an_allow_lets_the_agent_go_on() {
    let s = setup("").await;
    let tasks = [
        (
            Agent::Claude,
            "ask Bash git push origin main\nask Bash ls -la\nedit src/lib.rs\nsay all three done",
        ),
        (
            Agent::Codex,
            "run git push --dry-run origin HEAD\nrun echo plain-command\nedit notes.txt\nsay all three done",
        ),
        (
            Agent::Acp,
            "ask execute git push origin main\nask execute ls -la\nedit README.md\nsay all three done",
        ),
    ];
    let mut ids = Vec::new();
    for (agent, task) in tasks {
        ids.push((agent, s.create(agent, task).await));
    }
    for (agent, id) in &ids {
        let (agent, id) = (*agent, id.as_str());
        // (action, tool) of the three requests, in order.
        let expected: [(&str, &str); 3] = match agent {
            Agent::Claude => [
                ("merge", "Bash"),
                ("command", "Bash"),
                ("file_change", "Edit"),
            ],
            Agent::Codex => [
                ("merge", "commandExecution"),
                ("command", "commandExecution"),
                ("file_change", "fileChange"),
            ],
            Agent::Acp => [
                ("merge", "execute"),
                ("command", "execute"),
                ("file_change", "edit"),
            ],
        };
        for (n, (action, tool)) in expected.into_iter().enumerate() {
            let a = pending_approval(&s.admin, id, 60).await;
            let input = check_approval(&a, agent, action, tool);
            match (agent, n) {
                (Agent::Claude, 0) | (Agent::Acp, 0) => {
                    assert_eq!(input["command"], "git push origin main", "{a}")
                }
                (Agent::Codex, 0) => {
                    assert_eq!(input["command"], "git push --dry-run origin HEAD", "{a}")
                }
                (Agent::Claude, 1) | (Agent::Acp, 1) => {
                    assert_eq!(input["command"], "ls -la", "{a}")
                }
                (Agent::Codex, 1) => assert_eq!(input["command"], "echo plain-command", "{a}"),
                (Agent::Claude, _) => assert_eq!(input["file_path"], "src/lib.rs", "{a}"),
                (Agent::Codex, _) => {
                    assert!(input["itemId"].is_string(), "{a}");
                    assert!(
                        a["description"].as_str().unwrap().contains("notes.txt"),
                        "{a}"
                    );
                }
                (Agent::Acp, _) => assert!(
                    input["path"].as_str().unwrap().ends_with("/README.md"),
                    "{a}"
                ),
            }
            assert_eq!(
                s.admin.session(id).await["state"],
                "WAITING_FOR_APPROVAL",
                "{agent:?}"
            );
            resolve(&s.admin, id, &a, json!({"decision": "allow"})).await;
        }
        wait_state(&s.admin, id, "COMPLETED", 60).await;
        let text = rendered(&s.admin, id, agent).await;
        let said: &[&str] = match agent {
            Agent::Claude => &[
                "allowed: Bash {\"command\": \"git push origin main\"",
                "allowed: Bash {\"command\": \"ls -la\"",
                "allowed: Edit",
            ],
            // Codex ran the command and applied the change.
            Agent::Codex => &["⎿ plain-command", "exit 0", "✔ applied"],
            Agent::Acp => &[
                "Allowed (allow-once): git push origin main",
                "Allowed (allow-once): ls -la",
                "Allowed (allow-once): README.md is written",
            ],
        };
        assert_says(&text, agent, said);
        assert_says(&text, agent, &["all three done"]);
        // The runner's own lines come where they happen: after what the agent said before
        // asking, before what it said after the answer.
        let order: &[&str] = match agent {
            Agent::Claude => &[
                "▸ Bash git push origin main",
                "⏸ waiting for approval (merge)",
                "allowed: Bash {\"command\": \"git push origin main\"",
                "▸ Bash ls -la",
                "⏸ waiting for approval (command)",
                "allowed: Bash {\"command\": \"ls -la\"",
                "✎ src/lib.rs",
                "⏸ waiting for approval (file_change)",
                "allowed: Edit",
            ],
            Agent::Codex => &[
                "$ git push --dry-run origin HEAD",
                "⏸ waiting for approval (merge)",
                "$ echo plain-command",
                "⏸ waiting for approval (command)",
                "✎ notes.txt (added)",
                "⏸ waiting for approval (file_change)",
                "✔ applied",
            ],
            Agent::Acp => &[
                "▸ execute git push origin main",
                "⏸ waiting for approval (merge)",
                "Allowed (allow-once): git push origin main",
                "▸ execute ls -la",
                "⏸ waiting for approval (command)",
                "Allowed (allow-once): ls -la",
                "▸ edit Write README.md",
                "⏸ waiting for approval (file_change)",
                "Allowed (allow-once): README.md is written",
            ],
        };
        assert_in_order(&text, agent, order);
        let list = approvals(&s.admin, id).await;
        let resolved = list["resolved"].as_array().unwrap();
        assert_eq!(resolved.len(), 3, "{agent:?}: {list}");
        assert!(
            resolved.iter().all(|r| r["decision"] == "allow"),
            "{agent:?}: {list}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_reaches_the_agent() {
    let s = setup("").await;
    let tasks = [
        (
            Agent::Claude,
            "ask Bash git push origin main\nsay carrying on",
        ),
        (Agent::Codex, "run git push origin HEAD\nsay carrying on"),
        (
            Agent::Acp,
            "ask execute git push origin main\nsay carrying on",
        ),
    ];
    let mut ids = Vec::new();
    for (agent, task) in tasks {
        ids.push((agent, s.create(agent, task).await));
    }
    for (agent, id) in &ids {
        let a = pending_approval(&s.admin, id, 60).await;
        assert_eq!(a["action"], "merge", "{agent:?}: {a}");
        resolve(
            &s.admin,
            id,
            &a,
            json!({"decision": "deny", "reason": "not today"}),
        )
        .await;
    }
    for (agent, id) in &ids {
        let (agent, id) = (*agent, id.as_str());
        wait_state(&s.admin, id, "COMPLETED", 60).await;
        let text = rendered(&s.admin, id, agent).await;
        let said: &[&str] = match agent {
            // The fake says the deny message it was given.
            Agent::Claude => &["denied: not today"],
            // Codex reports the command as declined, and never ran it.
            Agent::Codex => &["✘ denied: not today", "✘ declined"],
            Agent::Acp => &["Rejected (reject-once): not doing git push origin main"],
        };
        assert_says(&text, agent, said);
        assert_says(&text, agent, &["carrying on"]);
        let list = approvals(&s.admin, id).await;
        assert_eq!(list["resolved"][0]["decision"], "deny", "{list}");
        assert_eq!(list["resolved"][0]["reason"], "not today", "{list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_approval_is_a_deny_the_agent_hears() {
    let s = setup("[sessions]\napprovalTimeoutMinutes = 1\n").await;
    let tasks = [
        (
            Agent::Claude,
            "ask Bash git push origin main\nsay after the expiry",
        ),
        (
            Agent::Codex,
            "run git push origin HEAD\nsay after the expiry",
        ),
        (
            Agent::Acp,
            "ask execute git push origin main\nsay after the expiry",
        ),
    ];
    let mut ids = Vec::new();
    for (agent, task) in tasks {
        ids.push((agent, s.create(agent, task).await));
    }
    // Every request is waiting before the clock moves.
    for (agent, id) in &ids {
        let a = pending_approval(&s.admin, id, 60).await;
        check_approval(
            &a,
            *agent,
            "merge",
            match agent {
                Agent::Claude => "Bash",
                Agent::Codex => "commandExecution",
                Agent::Acp => "execute",
            },
        );
    }
    s.server.advance(61_000);
    for (agent, id) in &ids {
        let (agent, id) = (*agent, id.as_str());
        wait_state(&s.admin, id, "COMPLETED", 60).await;
        let list = approvals(&s.admin, id).await;
        let r = &list["resolved"][0];
        assert_eq!(r["decision"], "deny", "{agent:?}: {list}");
        assert_eq!(r["reason"], "expired", "{agent:?}: {list}");
        assert_eq!(r["resolvedBy"], "system", "{agent:?}: {list}");
        let text = rendered(&s.admin, id, agent).await;
        let said: &[&str] = match agent {
            Agent::Claude => &["denied: expired"],
            Agent::Codex => &["✘ denied: expired", "✘ declined"],
            Agent::Acp => &["Rejected (reject-once): not doing git push origin main"],
        };
        assert_says(&text, agent, said);
        assert_says(&text, agent, &["after the expiry"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_for_the_session_covers_the_next_request_of_its_kind() {
    let s = setup("").await;
    let tasks = [
        (Agent::Claude, "ask Bash ls -la\nask Bash pwd\nsay both ran"),
        (
            Agent::Codex,
            "run echo first-run\nrun echo second-run\nsay both ran",
        ),
        (
            Agent::Acp,
            "ask execute ls -la\nask execute pwd\nsay both ran",
        ),
    ];
    let mut ids = Vec::new();
    for (agent, task) in tasks {
        ids.push((agent, s.create(agent, task).await));
    }
    for (agent, id) in &ids {
        let a = pending_approval(&s.admin, id, 60).await;
        assert_eq!(a["action"], "command", "{agent:?}: {a}");
        resolve(
            &s.admin,
            id,
            &a,
            json!({"decision": "allow", "scope": "session"}),
        )
        .await;
    }
    for (agent, id) in &ids {
        let (agent, id) = (*agent, id.as_str());
        wait_state(&s.admin, id, "COMPLETED", 60).await;
        let text = rendered(&s.admin, id, agent).await;
        let said: &[&str] = match agent {
            Agent::Claude => &["allowed: Bash {\"command\": \"pwd\""],
            Agent::Codex => &["⎿ first-run", "⎿ second-run"],
            Agent::Acp => &["Allowed (allow-always): pwd"],
        };
        assert_says(&text, agent, said);
        assert_says(&text, agent, &["✔ allowed for the session: ", "both ran"]);
        // The second request never reached a human.
        let list = approvals(&s.admin, id).await;
        assert_eq!(list["pending"], json!([]), "{agent:?}: {list}");
        let resolved = list["resolved"].as_array().unwrap();
        assert_eq!(resolved.len(), 1, "{agent:?}: {list}");
        assert_eq!(resolved[0]["scope"], "session", "{agent:?}: {list}");
    }
}

/// The real server binary restarts while a `pty` session prints: the runner reconnects and the
/// stored output has every line once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_neither_loses_nor_repeats_output() {
    let (_keep, dir) = tmp_dir();
    let data = dir.join("server");
    let mut server = BinaryServer::spawn(&data, &[]);
    let addr = server.addr;
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let repo = git_repo(&dir);
    let runner = RunnerProcess::spawn(
        &format!("http://{addr}"),
        &join,
        &dir.join("runner"),
        &[
            "--agent",
            "omnara=pty:bash -c 'eval \"$VILLAGE_TASK\"'",
            "--max-sessions",
            "4",
        ],
    );
    runner.wait_online(&admin).await;
    let id = create(
        &admin,
        "omnara",
        &repo,
        "for i in $(seq 1 160); do echo line-$i; sleep 0.05; done",
        json!({}),
    )
    .await;
    // Restart while the lines come, well before the last.
    eventually(30, || async {
        output(&admin, &id)
            .await
            .contains("line-20\r\n")
            .then_some(())
    })
    .await;
    server.terminate();
    let again = BinaryServer::spawn_at(&data, &addr.to_string(), &[]);
    let admin = again.admin();
    // The restart came in the middle: the session (and its lines) went on while the server was
    // away.
    assert_eq!(admin.session(&id).await["state"], "RUNNING");
    wait_state(&admin, &id, "COMPLETED", 60).await;
    let text = output(&admin, &id).await;
    let lines: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("line-"))
        .collect();
    let want: Vec<String> = (1..=160).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "output across the restart:\n{text}");
    assert!(
        runner.log().matches("runner channel connected").count() >= 2,
        "the runner reconnected: {}",
        runner.log()
    );
}
