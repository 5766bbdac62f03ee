//! The `acp` adapter driving the real `village demo-agent` process.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use village::runner::agents::acp::AcpAdapter;
use village::runner::agents::{
    Adapter, AgentContext, ApprovalAsker, Decision, Outcome, OutputSink, PermissionRequest,
    ToolKind, UsageSink,
};
use village::runner::process::{AgentIo, AgentProcess, ExitInfo};

struct Finished {
    outcome: Outcome,
    output: String,
    asked: Vec<ToolKind>,
}

/// Runs `village demo-agent` in `workspace` with `task`, allowing everything.
async fn run(task: &str, workspace: &Path) -> Finished {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_village"))
        .arg("demo-agent")
        .env("VILLAGE_DEMO_AGENT_FAST", "1")
        .current_dir(workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let io = AgentIo::Pipes {
        stdin: child.stdin.take().unwrap(),
        stdout: child.stdout.take().unwrap(),
        stderr: child.stderr.take().unwrap(),
    };
    let pid = child.id().unwrap() as i32;
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = child.wait().await.unwrap();
        let info = match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Code(code),
            (None, Some(signal)) => ExitInfo::Signal(signal),
            (None, None) => ExitInfo::Signal(9),
        };
        let _ = exit_tx.send(Some(info));
    });

    let (output_tx, mut output_rx) = mpsc::channel::<Vec<u8>>(64);
    let output = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(bytes) = output_rx.recv().await {
            all.extend(bytes);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let (approvals_tx, mut approvals_rx) =
        mpsc::unbounded_channel::<(PermissionRequest, oneshot::Sender<Decision>)>();
    let asker = tokio::spawn(async move {
        let mut asked = Vec::new();
        while let Some((request, reply)) = approvals_rx.recv().await {
            asked.push(request.kind);
            let _ = reply.send(Decision {
                allow: true,
                for_session: false,
                reason: None,
            });
        }
        asked
    });
    let (usage_tx, _usage_rx) = mpsc::unbounded_channel();
    let (_control_tx, control_rx) = mpsc::channel(4);
    let cx = AgentContext {
        session_id: "s-1".into(),
        task: task.into(),
        workspace: workspace.to_path_buf(),
        process: AgentProcess::new(io, pid, exit_rx),
        output: OutputSink(output_tx),
        usage: UsageSink(usage_tx),
        approvals: ApprovalAsker(approvals_tx),
        control: control_rx,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), AcpAdapter.run(cx))
        .await
        .expect("the session ends");
    Finished {
        outcome,
        output: output.await.unwrap(),
        asked: asker.await.unwrap(),
    }
}

#[tokio::test]
async fn the_demo_agent_process_runs_the_tour() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "# Demo repo\n").unwrap();
    let done = run("Show me around", dir.path()).await;
    assert_eq!(done.outcome, Outcome::Completed, "{}", done.output);
    assert!(done.output.contains("✔ done"), "{}", done.output);
    assert!(!done.output.contains("jsonrpc"), "{}", done.output);
    assert!(dir.path().join("VILLAGE_DEMO.md").exists());
    assert_eq!(done.asked.len(), 1);
    assert_eq!(
        done.asked[0],
        ToolKind::Shell("git push origin HEAD".into())
    );
}

#[tokio::test]
async fn the_exit_status_of_the_agent_process_is_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let done = run("say leaving\nexit 3", dir.path()).await;
    assert_eq!(done.outcome, Outcome::Failed("exit status 3".into()));
    assert!(done.output.contains("leaving"), "{}", done.output);
}
