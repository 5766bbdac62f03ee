//! `village runner` as a child process running `pty` sessions against a real server: exit
//! codes, keystrokes, pause and resume, stop, timeout, `village approval request`, and no
//! process left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::agent_runner::{
    RunnerProcess, create, git_repo, output, pending_approval, session_pids, state_of, wait_state,
};
use common::runner::Channel;
use common::{TestServer, eventually, tmp_dir};
use serde_json::json;

/// A `pty` provider whose program runs the session's task as a shell script.
const SCRIPT_AGENT: &str = "omnara=pty:bash -c 'eval \"$VILLAGE_TASK\"'";

async fn setup() -> (TestServer, RunnerProcess, String, tempfile::TempDir) {
    let server = TestServer::start("").await;
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let (dir, path) = tmp_dir();
    let repo = git_repo(&path);
    let runner = RunnerProcess::spawn(
        &format!("http://{}", server.addr),
        &join,
        &path.join("runner"),
        &[
            "--agent",
            SCRIPT_AGENT,
            "--agent",
            &format!(
                "gemini_cli=acp:{} demo-agent",
                env!("CARGO_BIN_EXE_village")
            ),
            "--max-sessions",
            "4",
        ],
    );
    runner.wait_online(&admin).await;
    (server, runner, repo, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_decide_the_outcome_and_output_is_stored() {
    let (server, runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let ok = create(
        &admin,
        "omnara",
        &repo,
        "echo hello from $VILLAGE_BRANCH; git branch --show-current; exit 0",
        json!({}),
    )
    .await;
    let three = create(&admin, "omnara", &repo, "echo failing; exit 3", json!({})).await;
    let killed = create(&admin, "omnara", &repo, "kill -9 $$", json!({})).await;
    let s = wait_state(&admin, &ok, "COMPLETED", 30).await;
    let text = output(&admin, &ok).await;
    assert!(text.contains("hello from main"), "{text}");
    assert!(
        text.contains(&format!("village/{}", &ok[..8])),
        "the workspace is on its own branch: {text}"
    );
    assert!(s["usage"]["computeSeconds"].as_f64().is_some());
    let s = wait_state(&admin, &three, "FAILED", 30).await;
    assert_eq!(
        s["endReason"].as_str().map(|r| r.contains("exit status 3")),
        Some(true),
        "{s}"
    );
    let s = wait_state(&admin, &killed, "FAILED", 30).await;
    assert_eq!(
        s["endReason"].as_str().map(|r| r.contains("signal 9")),
        Some(true),
        "{s}"
    );
    // Workspaces are removed when sessions end.
    eventually(10, || async {
        let left = std::fs::read_dir(runner.data_dir.join("work"))
            .ok()?
            .count();
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_cannot_be_cloned_fails_the_session() {
    let (server, _runner, _repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(
        &admin,
        "omnara",
        "file:///nonexistent/repo.git",
        "echo never",
        json!({}),
    )
    .await;
    let s = wait_state(&admin, &id, "FAILED", 30).await;
    assert!(
        s["endReason"]
            .as_str()
            .unwrap_or("")
            .contains("workspace: "),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystrokes_reach_read_and_pause_really_stops_the_processes() {
    let (server, _runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(
        &admin,
        "omnara",
        &repo,
        "read -r line; echo \"got:$line\"; while true; do sleep 0.1; done",
        json!({}),
    )
    .await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    // The agent is up when its processes carry the session id.
    eventually(20, || async {
        (session_pids(&id).len() >= 2).then_some(())
    })
    .await;
    let mut ws = Channel::open(&admin, "/api/v1/ws").await;
    ws.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    ws.request(json!({"type": "terminal_input", "sessionId": id, "data": "typed words\r"}))
        .await;
    eventually(20, || async {
        output(&admin, &id)
            .await
            .contains("got:typed words")
            .then_some(())
    })
    .await;

    let r = admin
        .post_empty(&format!("/api/v1/sessions/{id}/pause"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(20, || async {
        let pids = session_pids(&id);
        (!pids.is_empty() && pids.iter().all(|p| state_of(*p) == Some('T'))).then_some(())
    })
    .await;
    let r = admin
        .post_empty(&format!("/api/v1/sessions/{id}/resume"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(20, || async {
        let pids = session_pids(&id);
        (!pids.is_empty() && pids.iter().all(|p| state_of(*p) != Some('T'))).then_some(())
    })
    .await;

    // Stop: nothing of the session is left, also what it started in the background.
    let r = admin
        .post(
            &format!("/api/v1/sessions/{id}/stop"),
            json!({"reason": "enough"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(20, || async { session_pids(&id).is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_group_even_when_it_ignores_sigterm() {
    let (server, _runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(
        &admin,
        "omnara",
        &repo,
        "trap '' TERM; (trap '' TERM; sleep 1000) & sleep 1000 & while true; do sleep 0.2; done",
        json!({}),
    )
    .await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    eventually(20, || async {
        (session_pids(&id).len() >= 4).then_some(())
    })
    .await;
    admin
        .post(&format!("/api/v1/sessions/{id}/stop"), json!({}))
        .await;
    // SIGTERM after 2 s is ignored; SIGKILL after the 3 s grace is not.
    eventually(20, || async { session_pids(&id).is_empty().then_some(()) }).await;
    let s = admin.session(&id).await;
    assert_eq!(s["state"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_stops_the_session_and_its_processes() {
    let (server, _runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(
        &admin,
        "omnara",
        &repo,
        "sleep 1000",
        json!({"timeoutMinutes": 1}),
    )
    .await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    eventually(20, || async {
        (!session_pids(&id).is_empty()).then_some(())
    })
    .await;
    server.advance(61_000);
    wait_state(&admin, &id, "TIMED_OUT", 30).await;
    eventually(20, || async { session_pids(&id).is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn village_approval_request_blocks_until_allowed_or_denied() {
    let (server, _runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let task = "village approval request --action merge --description \"push to main\" --context '{\"branch\":\"main\"}'; echo \"answer:$?\"";
    let allowed = create(&admin, "omnara", &repo, task, json!({})).await;
    let a = pending_approval(&admin, &allowed, 30).await;
    assert_eq!(a["action"], "merge");
    assert_eq!(a["description"], "push to main");
    assert_eq!(a["context"]["branch"], "main");
    assert_eq!(
        admin.session(&allowed).await["state"],
        "WAITING_FOR_APPROVAL"
    );
    let id = a["approvalId"].as_str().unwrap();
    let r = admin
        .post(
            &format!("/api/v1/sessions/{allowed}/approvals/{id}/resolve"),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_state(&admin, &allowed, "COMPLETED", 30).await;
    let text = output(&admin, &allowed).await;
    assert!(text.contains("answer:0"), "{text}");
    // The session shows one line when the approval is asked for and one when it is answered.
    assert_eq!(
        text.matches("⏸ waiting for approval (merge): push to main")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(text.matches("✔ allowed").count(), 1, "{text}");

    let denied = create(
        &admin,
        "omnara",
        &repo,
        &task.replace("answer", "denied"),
        json!({}),
    )
    .await;
    let a = pending_approval(&admin, &denied, 30).await;
    let id = a["approvalId"].as_str().unwrap();
    admin
        .post(
            &format!("/api/v1/sessions/{denied}/approvals/{id}/resolve"),
            json!({"decision": "deny", "reason": "not today"}),
        )
        .await;
    wait_state(&admin, &denied, "COMPLETED", 30).await;
    let text = output(&admin, &denied).await;
    assert_eq!(text.matches("✘ denied: not today").count(), 1, "{text}");
    assert!(text.contains("denied:1"), "{text}");

    // A token of no session, and a bad action, are errors (exit 3).
    let bogus = create(
        &admin,
        "omnara",
        &repo,
        "VILLAGE_SESSION_TOKEN=nope village approval request --action merge --description x; echo \"bogus:$?\"; village approval request --action launch --description x; echo \"bad:$?\"",
        json!({}),
    )
    .await;
    wait_state(&admin, &bogus, "COMPLETED", 30).await;
    let text = output(&admin, &bogus).await;
    assert!(text.contains("bogus:3") && text.contains("bad:3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_takes_its_agents_with_it_and_a_restart_keeps_its_identity() {
    let (server, mut runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let first_id = runner.runner_id().unwrap();
    // Heartbeats carry the host's real load and the offered agents' versions.
    let info = eventually(20, || async {
        let info = admin
            .get(&format!("/api/v1/runners/{first_id}"))
            .await
            .data()
            .clone();
        (info["load"]["memoryPercent"].as_f64().unwrap_or(0.0) > 0.0).then_some(info)
    })
    .await;
    let version = info["runtimeVersions"]["gemini_cli"]
        .as_str()
        .unwrap_or_default();
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{info}");
    assert_eq!(
        info["buildId"],
        concat!("village-runner-", env!("CARGO_PKG_VERSION"))
    );
    let id = create(
        &admin,
        "omnara",
        &repo,
        "(sleep 1000) & sleep 1000; wait",
        json!({}),
    )
    .await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    eventually(20, || async {
        (session_pids(&id).len() >= 3).then_some(())
    })
    .await;
    runner.kill9();
    eventually(20, || async { session_pids(&id).is_empty().then_some(()) }).await;
    // The server gives the session up once the runner is lost.
    server.advance(10 * 60 * 1000);
    let s = wait_state(&admin, &id, "FAILED", 30).await;
    assert_eq!(s["endReason"], "runner_lost");

    let data_dir = runner.data_dir.clone();
    let join = admin.create_token("runner_join", None).await;
    let again = RunnerProcess::spawn(
        &format!("http://{}", server.addr),
        &join,
        &data_dir,
        &["--agent", SCRIPT_AGENT],
    );
    let second_id = again.wait_online(&admin).await;
    assert_eq!(first_id, second_id);
    assert!(again.log().contains("using the saved identity"));
    let list = admin.get("/api/v1/runners").await;
    assert_eq!(
        list.data()["items"].as_array().unwrap().len(),
        1,
        "{}",
        list.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_shutdown_leaves_no_process() {
    let (server, mut runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(
        &admin,
        "omnara",
        &repo,
        "sleep 1000 & sleep 1000; wait",
        json!({}),
    )
    .await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    eventually(20, || async {
        (session_pids(&id).len() >= 3).then_some(())
    })
    .await;
    assert_eq!(runner.terminate(), Some(0));
    assert!(session_pids(&id).is_empty());
    let s = wait_state(&admin, &id, "FAILED", 10).await;
    assert_eq!(
        s["endReason"]
            .as_str()
            .map(|r| r.contains("runner shut down")),
        Some(true),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_the_last_session_finish_then_exits() {
    let (server, mut runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let id = create(&admin, "omnara", &repo, "sleep 2; echo done", json!({})).await;
    wait_state(&admin, &id, "RUNNING", 30).await;
    let rid = runner.runner_id().unwrap();
    let r = admin
        .post_empty(&format!("/api/v1/runners/{rid}/drain"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_state(&admin, &id, "COMPLETED", 30).await;
    let mut status = None;
    for _ in 0..400 {
        status = runner.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the runner exits 0 once drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claude_hook_routes_a_tool_call_through_an_approval() {
    let (server, _runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let hook = r#"{"session_id":"s","cwd":"/tmp","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"git push origin main"},"tool_use_id":"t1"}"#;
    let task = format!(
        "echo '{hook}' | village approval claude-hook; echo; echo '{hook}' | env -u VILLAGE_RUNNER_SOCKET village approval claude-hook"
    );
    let id = create(&admin, "omnara", &repo, &task, json!({})).await;
    let a = pending_approval(&admin, &id, 30).await;
    assert_eq!(a["action"], "merge");
    assert_eq!(a["context"]["tool"], "Bash");
    assert_eq!(a["context"]["input"]["command"], "git push origin main");
    let approval = a["approvalId"].as_str().unwrap();
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals/{approval}/resolve"),
            json!({"decision": "allow"}),
        )
        .await;
    wait_state(&admin, &id, "COMPLETED", 30).await;
    let text = output(&admin, &id).await;
    let decisions: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    assert_eq!(decisions.len(), 2, "{text}");
    let decision = |i: usize| decisions[i]["hookSpecificOutput"]["permissionDecision"].clone();
    assert_eq!(
        decisions[0]["hookSpecificOutput"]["hookEventName"],
        "PreToolUse"
    );
    assert_eq!(
        decision(0),
        "allow",
        "inside the session: the human allowed it"
    );
    assert_eq!(
        decision(1),
        "ask",
        "outside a session Claude Code asks as usual"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_runner_token_makes_the_runner_register_again_as_itself() {
    let (server, runner, repo, _dir) = setup().await;
    let admin = server.admin();
    let rid = runner.runner_id().unwrap();
    let tokens = admin.get("/api/v1/tokens?pageSize=100").await;
    let token_id = tokens.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["runnerId"] == rid.as_str() && t["revokedAt"].is_null())
        .and_then(|t| t["tokenId"].as_str())
        .unwrap()
        .to_string();
    let r = admin.delete(&format!("/api/v1/tokens/{token_id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(30, || async {
        runner
            .log()
            .contains("registered")
            .then_some(())
            .filter(|_| runner.log().matches("runner channel connected").count() >= 2)
    })
    .await;
    assert_eq!(
        runner.runner_id().unwrap(),
        rid,
        "the same hostname keeps its id"
    );
    // And it still runs sessions.
    let id = create(&admin, "omnara", &repo, "echo after-revoke", json!({})).await;
    wait_state(&admin, &id, "COMPLETED", 30).await;
    assert!(output(&admin, &id).await.contains("after-revoke"));
}

/// A fleet enrolling at once meets the join token's rate limit: a runner whose first
/// registration is answered 429 waits the `Retry-After` and registers; a join token the server
/// refuses ends the runner at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_refused_429_at_registration_retries_and_a_bad_join_token_ends_it() {
    let server = TestServer::start("[limits]\nperTokenPerMinute = 60\n").await;
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let url = format!("http://{}", server.addr);
    // Spend the join token's burst (every call counts, refused ones too).
    let joiner = admin.with_token(&join);
    eventually(10, || async {
        (joiner.get("/api/v1/runners").await.status == 429).then_some(())
    })
    .await;
    let (_dir, path) = tmp_dir();
    let runner = RunnerProcess::spawn(
        &url,
        &join,
        &path.join("runner"),
        &["--agent", SCRIPT_AGENT],
    );
    runner.wait_online(&admin).await;
    assert!(
        runner.log().contains("cannot register yet"),
        "the first registration was not refused:\n{}",
        runner.log()
    );

    let (_bad_dir, bad_path) = tmp_dir();
    let mut refused = RunnerProcess::spawn(
        &url,
        "not-a-token",
        &bad_path.join("runner"),
        &["--agent", SCRIPT_AGENT],
    );
    let code = eventually(10, || {
        let status = refused.child.try_wait().unwrap();
        async move { status.map(|s| s.code()) }
    })
    .await;
    assert_ne!(code, Some(0), "{}", refused.log());
    assert!(
        !refused.log().contains("cannot register yet"),
        "{}",
        refused.log()
    );
}
