//! The dashboard WebSocket stream (docs/api.md, section 10) with real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod common;

use common::runner::{Channel, Upgrade, register};
use common::{Client, TestServer};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn open(c: &Client) -> Channel {
    let mut ch = Channel::open(c, "/api/v1/ws").await;
    let hello = ch.expect("event").await;
    assert_eq!(hello["event"], "connected");
    assert!(hello["data"]["clientId"].is_string());
    assert!(hello["timestamp"].is_string());
    ch
}

/// Opens a signed-in stream (header auth) and waits for its `authenticated` event.
async fn signed_in(c: &Client) -> Channel {
    let mut ch = open(c).await;
    assert_eq!(ch.expect("event").await["event"], "authenticated");
    ch
}

async fn running_session(admin: &Client, org: &str) -> String {
    let id = admin.create_session(org).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    admin.start_session(&id).await;
    id
}

#[tokio::test]
async fn authentication_by_header_query_or_first_frame() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let mut ch = signed_in(&admin).await;
    let pong = ch.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    // No token: only authenticate and ping.
    let mut anon = open(&s.anonymous()).await;
    let r = anon
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("UNAUTHORIZED"))
    );
    assert_eq!(anon.request(json!({"type": "ping"})).await["type"], "pong");
    let r = anon
        .request(json!({"type": "authenticate", "token": "nope"}))
        .await;
    assert_eq!(r["code"], "UNAUTHORIZED");
    let r = anon
        .request(json!({"type": "authenticate", "token": s.admin_token}))
        .await;
    assert_eq!(r["event"], "authenticated");
    let r = anon
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(r["event"], "subscribed");

    // ?token= works; a bad token at upgrade is refused.
    let mut q = Channel::open(
        &s.anonymous(),
        &format!("/api/v1/ws?token={}", s.admin_token),
    )
    .await;
    assert_eq!(q.expect("event").await["event"], "connected");
    assert_eq!(q.expect("event").await["event"], "authenticated");
    assert!(matches!(
        Channel::try_open(&s.anonymous(), "/api/v1/ws?token=bad").await,
        Upgrade::Refused(401)
    ));
    s.stop().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays() {
    let s = TestServer::start("").await;
    let mut ch = signed_in(&s.admin()).await;
    let r = ch.request(json!({"type": "dance"})).await;
    assert_eq!(r["code"], "UNKNOWN_MESSAGE_TYPE");
    ch.ws
        .send(tokio_tungstenite::tungstenite::Message::text("{nope"))
        .await
        .unwrap();
    assert_eq!(ch.expect("error").await["code"], "INVALID_MESSAGE");
    let big = json!({"type": "ping", "pad": "x".repeat(1024 * 1024 + 10)});
    ch.send(big).await;
    assert_eq!(ch.expect("error").await["code"], "MESSAGE_TOO_LARGE");
    let r = ch.request(json!({"type": "subscribe_session"})).await;
    assert_eq!(r["code"], "VALIDATION_ERROR");
    let r = ch.request(json!({"type": "subscribe_session", "sessionId": "6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11"})).await;
    assert_eq!(r["code"], "SESSION_NOT_FOUND");
    let r = ch.request(json!({"type": "unsubscribe_session", "sessionId": "6f1c1a7e-1d7e-4a5e-9a51-3f3b0c3c7c11"})).await;
    assert_eq!(r["code"], "NOT_SUBSCRIBED");
    assert_eq!(
        ch.request(json!({"type": "ping"})).await["type"],
        "pong",
        "still open"
    );
    s.stop().await;
}

#[tokio::test]
async fn replay_then_live_has_no_gap_and_no_duplicate() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = running_session(&admin, "acme").await;
    const N: u64 = 300;
    let writer = {
        let admin = admin.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let r = admin
                    .post(
                        &format!("/api/v1/sessions/{id}/output"),
                        json!({"stream": "stdout", "data": format!("line {i}\n")}),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.text);
            }
        })
    };
    // Subscribe while output is being written.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut ch = signed_in(&admin).await;
    let r = ch
        .request(json!({"type": "subscribe_session", "sessionId": id, "afterSeq": 0}))
        .await;
    assert_eq!(r["event"], "subscribed");
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < N {
        let f = ch.expect("terminal").await;
        assert_eq!(f["sessionId"], id.as_str());
        assert_eq!(f["action"], "output");
        let seq = f["seq"].as_u64().unwrap();
        assert_eq!(f["data"], format!("line {}\n", seq - 1));
        seen.push(seq);
    }
    writer.await.unwrap();
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    ch.expect_none("terminal", 300).await;

    // Resuming from a sequence number replays only what came after it.
    let mut again = signed_in(&admin).await;
    again
        .request(json!({"type": "subscribe_session", "sessionId": id, "afterSeq": N - 2}))
        .await;
    assert_eq!(again.expect("terminal").await["seq"], N - 1);
    assert_eq!(again.expect("terminal").await["seq"], N);
    // After unsubscribing, nothing more arrives.
    let r = again
        .request(json!({"type": "unsubscribe_session", "sessionId": id}))
        .await;
    assert_eq!(r["event"], "unsubscribed");
    admin
        .post(
            &format!("/api/v1/sessions/{id}/output"),
            json!({"stream": "stdout", "data": "more"}),
        )
        .await;
    again.expect_none("terminal", 300).await;
    s.stop().await;
}

#[tokio::test]
async fn org_streams_carry_state_changes_and_approvals_of_their_org_only() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let other = running_session(&admin, "globex").await;
    let mut ch = signed_in(&acme).await;
    let r = ch
        .request(json!({"type": "subscribe_org", "orgId": "globex"}))
        .await;
    assert_eq!(r["code"], "FORBIDDEN");
    let r = ch
        .request(json!({"type": "subscribe_session", "sessionId": other}))
        .await;
    assert_eq!(r["code"], "SESSION_NOT_FOUND");
    let r = ch
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(r["event"], "subscribed");

    let id = running_session(&admin, "acme").await;
    let f = ch.expect("session").await;
    assert_eq!(f["sessionId"], id.as_str());
    assert_eq!(f["action"], "state_change");
    assert_eq!(f["data"], json!({"from": "CREATED", "to": "QUEUED"}));
    let f = ch.expect("session").await;
    assert_eq!(f["data"], json!({"from": "QUEUED", "to": "RUNNING"}));
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals"),
            json!({"action": "merge", "description": "Merge PR #3"}),
        )
        .await;
    let f = ch.expect("approval_required").await;
    assert_eq!(f["sessionId"], id.as_str());
    assert_eq!(f["approval"]["action"], "merge");
    assert_eq!(f["approval"]["description"], "Merge PR #3");
    assert!(f["approval"]["approvalId"].is_string());
    let f = ch.expect("session").await;
    assert_eq!(
        f["data"],
        json!({"from": "RUNNING", "to": "WAITING_FOR_APPROVAL"})
    );
    // Nothing from globex reaches acme's stream.
    admin
        .post_empty(&format!("/api/v1/sessions/{other}/pause"))
        .await;
    ch.expect_none("session", 300).await;
    s.stop().await;
}

/// A server, a session of acme's started by a runner on its channel, and that channel.
async fn session_on_a_runner() -> (TestServer, String, Channel) {
    let (s, id, _, rch) = session_and_assignment_on_a_runner().await;
    (s, id, rch)
}

/// `session_on_a_runner`, with the session's assignment id.
async fn session_and_assignment_on_a_runner() -> (TestServer, String, String, Channel) {
    let s = TestServer::start("[runners]\nrestartGraceMs = 1\n").await;
    let admin = s.admin();
    let (runner, _) = register(&admin, "w", &["claude_code"], None, &[]).await;
    let mut rch = runner.connect().await;
    let id = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let assign = rch.expect("assign_session").await;
    rch.ack(&assign).await;
    rch.request(json!({"type": "session_state", "sessionId": id, "assignmentId": assign["assignmentId"], "state": "RUNNING"}))
        .await;
    let assignment = assign["assignmentId"].as_str().unwrap().to_string();
    (s, id, assignment, rch)
}

/// Commands reach the runner once each and in the order they were committed, whichever way
/// they go: written at once after their commit while the runner's channel has nothing in hand,
/// or through the channel's queue while frames of the runner await their answers. Keystrokes
/// typed one after another reach a runner that prints without waiting for its acks, so its
/// channel keeps switching between the two.
#[tokio::test]
async fn keystrokes_reach_a_busy_runner_once_each_in_the_order_typed() {
    const KEYS: usize = 150;
    let (s, id, assignment, mut rch) = session_and_assignment_on_a_runner().await;
    let admin = s.admin();
    let before = commands_sent(&admin).await;
    let mut ch = signed_in(&admin).await;
    ch.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    let typed = id.clone();
    let typist = tokio::spawn(async move {
        for key in 0..KEYS {
            let r = ch
                .request(json!({"type": "terminal_input", "sessionId": typed, "data": format!("{key} ")}))
                .await;
            assert_eq!(r["event"], "input_sent", "key {key}: {r}");
        }
    });
    let (mut received, mut offset, mut printed) = (Vec::new(), 0u64, 0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while received.len() < KEYS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {KEYS} keystrokes arrived: {received:?}",
            received.len()
        );
        // Not waiting for the answer: the next line goes while this one is being stored.
        let line = format!("line {printed}\n");
        rch.send(
            json!({"type": "terminal_output", "sessionId": id, "assignmentId": assignment,
                        "stream": "stdout", "data": line, "offset": offset}),
        )
        .await;
        offset += line.len() as u64;
        printed += 1;
        // Now and then a pause, in which the output is all answered and a keystroke can be
        // written right after its commit.
        let pause = match printed {
            p if p % 64 == 0 => 50,
            p if p % 8 == 0 => 5,
            _ => 0,
        };
        while let Some(f) = rch.recv_within(pause).await {
            assert_ne!(f["type"], "error", "{f}");
            if f["type"] == "terminal_input" {
                received.push(f["data"].as_str().unwrap().to_string());
                rch.send(json!({"type": "ack", "messageId": f["messageId"]}))
                    .await;
            }
        }
    }
    typist.await.unwrap();
    let expected: Vec<String> = (0..KEYS).map(|key| format!("{key} ")).collect();
    assert_eq!(received, expected);
    // Nothing came twice.
    rch.expect_none("terminal_input", 300).await;
    // Both ways were taken: written right after their commit while the runner's output was
    // answered, and queued behind output still being stored.
    let after = commands_sent(&admin).await;
    let [commit, channel] = [0, 1].map(|i| after[i] - before[i]);
    println!("keystrokes written after their commit: {commit}, by the channel: {channel}");
    assert_eq!(commit + channel, KEYS as u64);
    assert!(commit > 0 && channel > 0, "{commit} and {channel}");
    s.stop().await;
}

/// Commands written to runner channels so far (`/metrics`): right after their commit, and by
/// the channel's task.
async fn commands_sent(admin: &Client) -> [u64; 2] {
    let r = admin.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    ["commit", "channel"].map(|path| {
        let series = format!("village_runner_commands_sent_total{{path=\"{path}\"}} ");
        r.text
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in {}", r.text))
    })
}

#[tokio::test]
async fn typing_reaches_the_runner() {
    let (s, id, mut rch) = session_on_a_runner().await;
    let admin = s.admin();
    let mut ch = signed_in(&admin).await;
    let r = ch
        .request(json!({"type": "terminal_input", "sessionId": id, "data": "ls\n"}))
        .await;
    assert_eq!(r["code"], "NOT_SUBSCRIBED");
    ch.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    let r = ch
        .request(json!({"type": "terminal_input", "sessionId": id, "data": "ls\n"}))
        .await;
    assert_eq!(r["event"], "input_sent", "{r}");
    let f = rch.expect("terminal_input").await;
    assert_eq!(f["sessionId"], id.as_str());
    assert_eq!(f["data"], "ls\n");
    s.stop().await;
}

/// A burst of keystroke frames (a fast typist, a paste sent key by key) reaches the runner in
/// order and whole, as far fewer commands than frames; every frame is still answered.
#[tokio::test]
async fn a_burst_of_typing_is_sent_as_few_commands() {
    let (s, id, mut rch) = session_on_a_runner().await;
    let admin = s.admin();
    let mut ch = signed_in(&admin).await;
    ch.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    let keys: Vec<String> = (0..200).map(|i| format!("{}", i % 10)).collect();
    // All 200 frames in one write: they are waiting when the server reads the first.
    for (i, key) in keys.iter().enumerate() {
        let frame = json!({"type": "terminal_input", "sessionId": id, "data": key, "messageId": i});
        ch.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    ch.ws.flush().await.unwrap();
    let mut answered = Vec::new();
    while answered.len() < keys.len() {
        let f = ch
            .recv_within(5_000)
            .await
            .expect("an answer for every frame");
        if f["type"] == "event" && f["event"] == "input_sent" {
            answered.push(f["messageId"].as_u64().unwrap());
        }
    }
    assert_eq!(
        answered,
        (0..200).collect::<Vec<u64>>(),
        "answered in order"
    );
    let mut typed = String::new();
    let mut commands = 0;
    while typed.len() < keys.concat().len() {
        let f = rch.expect("terminal_input").await;
        rch.ack(&f).await;
        typed.push_str(f["data"].as_str().unwrap());
        commands += 1;
    }
    assert_eq!(typed, keys.concat(), "every key once, in order");
    assert!(commands <= 20, "{commands} commands for 200 frames");
    s.stop().await;
}

#[tokio::test]
async fn each_token_may_hold_ten_connections() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let mut open_ones = Vec::new();
    for _ in 0..10 {
        open_ones.push(signed_in(&admin).await);
    }
    let mut extra = open(&admin).await;
    let e = extra.expect("error").await;
    assert_eq!(e["code"], "CONNECTION_LIMIT");
    assert!(extra.close_code_within(2000).await.is_some());
    // Another token is not affected; closing one frees a slot.
    let other = admin.with_token(&admin.create_token("admin", None).await);
    signed_in(&other).await;
    open_ones.pop().unwrap().close().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    signed_in(&admin).await;
    s.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_missed_pings() {
    let s = TestServer::start("[websocket]\nheartbeatIntervalMs = 150\n").await;
    let mut ch = Channel::open(&s.admin(), "/api/v1/ws").await;
    // Not reading means not answering pings.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(ch.close_code_within(3000).await, Some(1001));
    // A peer that reads (and so answers pings) stays.
    let mut live = signed_in(&s.admin()).await;
    live.expect_none("error", 800).await;
    assert_eq!(live.request(json!({"type": "ping"})).await["type"], "pong");
    s.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_a_fast_one_gets_everything() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = running_session(&admin, "acme").await;
    let mut fast = signed_in(&admin).await;
    fast.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    let mut slow = Channel::open_small_buffer(&admin, "/api/v1/ws").await;
    slow.expect("event").await;
    slow.expect("event").await;
    slow.request(json!({"type": "subscribe_session", "sessionId": id}))
        .await;
    // The slow client stops reading; ~25 MB of output follows.
    const N: u64 = 120;
    let chunk = "y".repeat(200 * 1024);
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < N {
            let f = fast.expect("terminal").await;
            let seq = f["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "the fast client missed output");
            last = seq;
        }
        last
    });
    for _ in 0..N {
        let r = admin
            .post(
                &format!("/api/v1/sessions/{id}/output"),
                json!({"stream": "stdout", "data": chunk}),
            )
            .await;
        assert_eq!(
            r.status, 200,
            "the producer was slowed or refused: {}",
            r.text
        );
    }
    assert_eq!(reader.await.unwrap(), N);
    // Its socket has been full for longer than the server's send timeout (5 s).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let mut got = 0;
    while let Some(f) = slow.recv_within(3000).await {
        if f["type"] == "terminal" {
            got += 1;
        }
    }
    assert!(
        got < N,
        "the slow client was never cut off ({got} of {N} chunks buffered for it)"
    );
    // What was buffered for it drains, then the connection ends (its Close frame, 1008/1013,
    // when there was room for one).
    let code = slow.close_code_within(5_000).await;
    assert!(
        matches!(code, Some(1008) | Some(1013) | None),
        "slow consumer closed with {code:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn shutdown_sends_close_1001() {
    let s = TestServer::start("").await;
    let mut ch = signed_in(&s.admin()).await;
    let stopping = tokio::spawn(s.stop());
    assert_eq!(ch.close_code_within(5000).await, Some(1001));
    stopping.await.unwrap();
}

/// Skips frames until the event `name` arrives.
async fn expect_event(ch: &mut Channel, name: &str) -> serde_json::Value {
    loop {
        let f = ch.expect("event").await;
        if f["event"] == name {
            return f;
        }
    }
}

#[tokio::test]
async fn org_streams_carry_runner_events() {
    let s = TestServer::start("[runners]\nrestartGraceMs = 1\nheartbeatTimeoutMs = 10000\n").await;
    let admin = s.admin();
    let join = admin.with_token(&admin.create_token("runner_join", Some("acme")).await);
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let mut ch = signed_in(&acme).await;
    ch.request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    let (runner, _) = register(&join, "acme-1", &["codex"], None, &[]).await;
    let f = expect_event(&mut ch, "runner_registered").await;
    assert_eq!(f["data"]["runnerId"], runner.id.as_str());
    admin
        .post_empty(&format!("/api/v1/runners/{}/drain", runner.id))
        .await;
    expect_event(&mut ch, "runner_draining").await;
    expect_event(&mut ch, "runner_drained").await;
    s.advance(11_000);
    expect_event(&mut ch, "runner_offline").await;
    runner.heartbeat().await;
    expect_event(&mut ch, "runner_online").await;
    // A shared runner's events are not an org's business.
    register(&admin, "shared-1", &["codex"], None, &[]).await;
    ch.expect_none("event", 300).await;
    s.stop().await;
}

#[tokio::test]
async fn a_chunk_replayed_later_is_the_frame_that_was_sent_live() {
    let s = TestServer::start_with("", true).await;
    let admin = s.admin();
    let id = running_session(&admin, "acme").await;
    let mut live = signed_in(&admin).await;
    live.request(json!({"type": "subscribe_session", "sessionId": id, "afterSeq": 0}))
        .await;
    let r = admin
        .post(
            &format!("/api/v1/sessions/{id}/output"),
            json!({"stream": "stderr", "data": "warning: unused\n"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent_live = live.expect("terminal").await;
    // A minute later a second screen replays the session from the start.
    s.advance(60_000);
    let mut later = signed_in(&admin).await;
    later
        .request(json!({"type": "subscribe_session", "sessionId": id, "afterSeq": 0}))
        .await;
    let replayed = later.expect("terminal").await;
    assert_eq!(replayed, sent_live, "live and replayed frames differ");
    // The frame carries the chunk's own time, not the time it was sent.
    let stored = admin
        .get(&format!("/api/v1/sessions/{id}/output?afterSeq=0"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let chunk = &stored.json["data"]["items"][0];
    assert_eq!(replayed["timestamp"], chunk["timestamp"], "{chunk}");
    s.stop().await;
}
