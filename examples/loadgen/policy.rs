//! `policy`: approval policies at the size an org may save them.
//!
//! 1. **Evaluation** (in this process, no server): a policy of `RULES` rules shaped like real
//!    ones (command, path and tool globs with leading and inner `*`, action lists) is evaluated
//!    for `EVALUATIONS` requests, each timed alone. Most requests fit no rule, so every rule is
//!    tried (the worst case: the default decides); the rest fit a rule near the end. The p99
//!    must stay under `TARGET_EVALUATION_P99`. The same is timed with the stored policy decoded
//!    first, which is what the server does on every approval request.
//! 2. **End to end**: the real server in-process with that policy saved for org `bench`, one
//!    runner on its channel running `SESSIONS` sessions. Each session's agent asks
//!    `ASKS_PER_SESSION` times in turn (`approval_request` on the channel, a command that rule
//!    `NEAR_END` allows); each is timed from the frame sent to the `approval_resolved`
//!    frame that answers it, which the runner acks. Reported with p50/p99 and the trend from
//!    the first to the last asks of a session (a session's approvals pile up).
use super::*;
use village::auth::Principal;
use village::policy::PolicyRequest;
use village::policy::model::{ApprovalPolicy, PolicyDecision, PolicyRule};
use village::sessions::model::ApprovalAction;

const RULES: usize = 200;
/// The rule near the end that the deciding requests fit (a `curl` command rule: `i % 4 == 3`).
const NEAR_END: usize = RULES - 5;
const EVALUATIONS: usize = 200_000;
const TARGET_EVALUATION_P99: Duration = Duration::from_micros(50);
const SESSIONS: usize = 2;
const ASKS_PER_SESSION: usize = 1_000;
/// Asks of a session compared at each end for a trend.
const ASK_WINDOW: usize = 50;

/// Rule `i` of the benchmark's policy: a mix of what orgs write.
fn rule(i: usize) -> PolicyRule {
    let (actions, tool, command, path) = match i % 4 {
        0 => (
            Some(vec![ApprovalAction::Command]),
            None,
            Some(format!("*tool{i} --flag*")),
            None,
        ),
        1 => (
            Some(vec![ApprovalAction::FileChange]),
            Some("Edit".to_owned()),
            None,
            Some(format!("src/module{i}/*.rs")),
        ),
        2 => (None, Some(format!("mcp__server{i}__*")), None, None),
        _ => (
            Some(vec![ApprovalAction::Command, ApprovalAction::Network]),
            None,
            Some(format!("curl * https://host{i}.example.com/*")),
            None,
        ),
    };
    PolicyRule {
        id: format!("rule-{i}"),
        actions,
        tool,
        command,
        path,
        decision: if i.is_multiple_of(3) {
            PolicyDecision::Deny
        } else {
            PolicyDecision::Allow
        },
        examples: None,
    }
}

fn bench_policy() -> ApprovalPolicy {
    ApprovalPolicy {
        rules: (0..RULES).map(rule).collect(),
        default_decision: PolicyDecision::Ask,
    }
}

/// The requests evaluated: 9 in 10 fit nothing (long commands, so the globs scan them), the
/// rest fit rule `NEAR_END`.
fn requests() -> Vec<(ApprovalAction, Value)> {
    (0..1_000)
        .map(|i| {
            if i % 10 == 9 {
                (
                    ApprovalAction::Command,
                    json!({"tool": "Bash", "input": {"command": format!("curl -s https://host{NEAR_END}.example.com/api/v{i}")}}),
                )
            } else {
                (
                    ApprovalAction::Command,
                    json!({"tool": "Bash", "input": {"command": format!(
                        "cargo test --workspace --all-features -- --nocapture --test-threads=4 case{i} {}",
                        "x".repeat(i % 120)
                    )}}),
                )
            }
        })
        .collect()
}

pub async fn policy_scenario() -> ExitCode {
    println!(
        "== policy: evaluation of {RULES} rules, then request → decision by rule → runner answered =="
    );
    let policy = bench_policy();
    let requests = requests();
    let stored = village::store::codec::encode(&policy).unwrap();
    let mut alone = Vec::with_capacity(EVALUATIONS);
    let mut decoded = Vec::with_capacity(EVALUATIONS);
    let mut decided = 0usize;
    for n in 0..EVALUATIONS {
        let (action, context) = &requests[n % requests.len()];
        let began = Instant::now();
        let verdict = policy.evaluate(&PolicyRequest::new(*action, Some(context)));
        alone.push(began.elapsed());
        decided += usize::from(verdict.rule_id.is_some());
        let began = Instant::now();
        let p: ApprovalPolicy = village::store::codec::decode(&stored).unwrap();
        let verdict = p.evaluate(&PolicyRequest::new(*action, Some(context)));
        decoded.push(began.elapsed());
        std::hint::black_box(verdict);
    }
    alone.sort();
    decoded.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = percentile(&alone, 99.0);
    let load_ok = load_check(
        alone.len() == EVALUATIONS && decided > 0 && decided < EVALUATIONS / 5,
        format!(
            "{EVALUATIONS} evaluations of {RULES} rules, {decided} decided by a rule (1 in 10 expected)"
        ),
    );
    let evaluation_pass = p99 < TARGET_EVALUATION_P99;
    println!(
        "  evaluation: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (target p99 < {} µs): {}",
        micros(percentile(&alone, 50.0)),
        micros(p99),
        micros(*alone.last().unwrap()),
        TARGET_EVALUATION_P99.as_micros(),
        judged(load_ok, evaluation_pass)
    );
    println!(
        "  decoding the stored policy ({} bytes) and evaluating, as after a change (the server \
         keeps the decoded policy until its bytes change): p50 {:.1} µs, p99 {:.1} µs",
        stored.len(),
        micros(percentile(&decoded, 50.0)),
        micros(percentile(&decoded, 99.0)),
    );

    let end_to_end = end_to_end(&policy).await;
    let e2e_ok = end_to_end.is_some();
    exit_code(load_ok && evaluation_pass && e2e_ok)
}

/// Phase 2; `None` when the load was not generated.
async fn end_to_end(policy: &ApprovalPolicy) -> Option<()> {
    let parent = std::env::temp_dir();
    let server = BenchServer::start(&parent).await;
    server
        .state
        .policies
        .put(&Principal::anonymous_admin(), "bench", policy.clone())
        .await
        .unwrap();
    let runner = server.register_runners(1).await.remove(0);
    let mut socket = runner.open_channel(server.addr).await;
    let creates = (0..SESSIONS).map(|_| session_create(&server)).collect();
    send_each(server.addr, creates, 1, StatusCode::CREATED).await;
    // Start every session the runner is given.
    let mut sessions: Vec<(String, String)> = Vec::new();
    while sessions.len() < SESSIONS {
        let frame = next_frame(&mut socket).await?;
        if frame["type"] == "assign_session" {
            let (session, assignment) = (
                frame["session"]["sessionId"].clone(),
                frame["assignmentId"].clone(),
            );
            send(
                &mut socket,
                json!({"type": "ack", "messageId": frame["messageId"]}),
            )
            .await;
            send(
                &mut socket,
                json!({"type": "session_state", "sessionId": session, "assignmentId": assignment, "state": "RUNNING", "messageId": random_id()}),
            )
            .await;
            sessions.push((
                session.as_str()?.to_owned(),
                assignment.as_str()?.to_owned(),
            ));
        }
    }
    let command = format!("curl -s https://host{NEAR_END}.example.com/api/v1");
    let mut latencies = Vec::with_capacity(SESSIONS * ASKS_PER_SESSION);
    let mut first = Vec::new();
    let mut last = Vec::new();
    let began = Instant::now();
    let cpu = CpuSample::now();
    for (s, (session, assignment)) in sessions.iter().enumerate() {
        for ask in 0..ASKS_PER_SESSION {
            let sent = Instant::now();
            send(
                &mut socket,
                json!({"type": "approval_request", "sessionId": session, "assignmentId": assignment,
                       "action": "command", "description": format!("ask {s}/{ask}"),
                       "context": {"tool": "Bash", "input": {"command": command}}, "messageId": random_id()}),
            )
            .await;
            // The ack names the approval; the decision follows as a command.
            let mut approval = None;
            let took = loop {
                let frame = next_frame(&mut socket).await?;
                match frame["type"].as_str() {
                    Some("ack") if frame["data"]["approvalId"].is_string() => {
                        if frame["data"]["resolvedBy"] != json!(format!("policy:rule-{NEAR_END}")) {
                            eprintln!("not decided by the expected rule: {frame}");
                            return None;
                        }
                        approval = Some(frame["data"]["approvalId"].clone());
                    }
                    Some("approval_resolved") => {
                        let took = sent.elapsed();
                        send(
                            &mut socket,
                            json!({"type": "ack", "messageId": frame["messageId"]}),
                        )
                        .await;
                        if approval.as_ref() == Some(&frame["approvalId"]) || approval.is_none() {
                            break took;
                        }
                    }
                    Some("error") => {
                        eprintln!("error frame: {frame}");
                        return None;
                    }
                    _ => {}
                }
            };
            latencies.push(took);
            if ask < ASK_WINDOW {
                first.push(took);
            } else if ask >= ASKS_PER_SESSION - ASK_WINDOW {
                last.push(took);
            }
        }
    }
    let elapsed = began.elapsed();
    let others = CpuSample::now().report_since(&cpu);
    let asked = latencies.len();
    latencies.sort();
    first.sort();
    last.sort();
    let load_ok = load_check(
        asked == SESSIONS * ASKS_PER_SESSION,
        format!("{asked} approval requests answered by a rule over the channel"),
    );
    println!(
        "  end to end ({asked} asks, {:.0} per s, one at a time): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        asked as f64 / elapsed.as_secs_f64(),
        millis(percentile(&latencies, 50.0)),
        millis(percentile(&latencies, 99.0)),
        millis(*latencies.last()?),
    );
    println!(
        "    a session's first {ASK_WINDOW} asks p50 {:.2} ms, its last {ASK_WINDOW} (after {} approvals) p50 {:.2} ms",
        millis(percentile(&first, 50.0)),
        ASKS_PER_SESSION - ASK_WINDOW,
        millis(percentile(&last, 50.0)),
    );
    if others > DISTURBANCE_LIMIT {
        println!("    other processes took {others:.0} % of the machine: this run does not count");
    }
    server.stop().await;
    load_ok.then_some(())
}

fn random_id() -> String {
    village::clock::random_uuid().to_string()
}

async fn send(socket: &mut RunnerSocket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame, or None after 5 s or when the channel closes.
async fn next_frame(socket: &mut RunnerSocket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).ok();
        }
    }
}
