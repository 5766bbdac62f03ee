//! The server's edge against the real binary: header and idle timeouts, HTTP/1.1 only,
//! connection caps, anonymous dashboard sockets and frame limits, and thousands of idle
//! connections that must not slow a runner's heartbeat.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::runner::register;
use common::{BinaryServer, tmp_dir};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `addr` from the loopback address `source` (all of 127.0.0.0/8 is
/// loopback on Linux, so one machine can play several clients).
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the peer closes (or resets); what it sent, and whether it closed within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `village_http_connections_open` from `/metrics` (the asking connection included).
async fn open_connections(server: &BinaryServer) -> usize {
    let metrics = server.admin().get("/metrics").await.text;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("village_http_connections_open "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no connection gauge in {metrics}"))
}

async fn healthz_from(source: [u8; 4], addr: SocketAddr) -> Option<String> {
    let mut s = connect_from(source, addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got).to_string();
    (!text.is_empty()).then_some(text)
}

#[tokio::test]
async fn a_client_sending_its_head_slowly_is_cut_off() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[("VILLAGE_SERVER_HEADER_READ_TIMEOUT_MS", "800")]);
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // One header byte every 200 ms: the head never completes within the timeout.
    let mut cut_after = None;
    for byte in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
        .take(100)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(&[*byte]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // hyper may answer 408 before closing.
                let text = String::from_utf8_lossy(&probe[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(_) => {}
        }
    }
    let cut_after = cut_after.expect("a client trickling its head in was never cut off");
    assert!(
        cut_after < Duration::from_secs(5),
        "cut after {cut_after:?} with an 800 ms header timeout"
    );
    // A client that sends its request at once is answered.
    assert!(server.admin().get("/healthz").await.status == 200);
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_off_by_the_idle_timeout() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(
        &dir,
        &[
            ("VILLAGE_SERVER_IDLE_TIMEOUT_MS", "1500"),
            ("VILLAGE_WEBSOCKET_HEARTBEAT_INTERVAL_MS", "500"),
        ],
    );
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/sessions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"orgId\"",
        server.admin_token
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(20)).await;
    assert!(closed, "a body that stopped arriving kept its connection");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn http2_cleartext_is_not_served() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // The HTTP/2 connection preface, then an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the connection stayed open after an HTTP/2 preface");
    // An HTTP/2 server answers with its own SETTINGS frame (type 0x4 in the fourth byte);
    // an HTTP/1.1 server refuses the version.
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 505"),
        "answered an HTTP/2 preface with {got:?}"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_and_others_served() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(
        &dir,
        &[
            ("VILLAGE_SERVER_MAX_CONNECTIONS_PER_IP", "5"),
            ("VILLAGE_SERVER_HEADER_READ_TIMEOUT_MS", "60000"),
        ],
    );
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from([127, 0, 0, 2], server.addr).await);
    }
    // Let the server accept and count all five before the sixth comes.
    // (Five held, and the one asking.)
    common::eventually(5, || async {
        (open_connections(&server).await == 6).then_some(())
    })
    .await;
    assert_eq!(
        healthz_from([127, 0, 0, 2], server.addr).await,
        None,
        "a sixth connection from 127.0.0.2 was served"
    );
    let other = healthz_from([127, 0, 0, 3], server.addr).await.unwrap();
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // A slot given back is free again.
    drop(held.pop());
    let again = common::eventually(5, || async {
        healthz_from([127, 0, 0, 2], server.addr).await
    })
    .await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert!(
        server.log().contains("connections refused"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn an_anonymous_dashboard_socket_is_closed_when_it_does_not_authenticate() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[("VILLAGE_WEBSOCKET_AUTH_TIMEOUT_MS", "700")]);
    let url = format!("ws://{}/api/v1/ws", server.addr);
    let (mut anonymous, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (mut signed_in, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    signed_in
        .send(Message::text(
            json!({"type": "authenticate", "token": server.admin_token}).to_string(),
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), anonymous.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let close = close.unwrap();
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "authentication timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The authenticated socket is still served after the anonymous one's deadline.
    signed_in
        .send(Message::text(
            json!({"type": "ping", "messageId": 1}).to_string(),
        ))
        .await
        .unwrap();
    let pong = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), signed_in.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(text) = msg.to_text()
            && text.contains("\"pong\"")
        {
            break text.to_string();
        }
    };
    assert!(pong.contains("\"messageId\":1"), "{pong}");
}

#[tokio::test]
async fn a_frame_over_twice_the_limit_ends_the_socket_and_one_over_the_limit_does_not() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[("VILLAGE_WEBSOCKET_MAX_FRAME_BYTES", "4096")]);
    let url = format!(
        "ws://{}/api/v1/ws?token={}",
        server.addr, server.admin_token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let over = json!({"type": "ping", "pad": "x".repeat(5000)}).to_string();
    ws.send(Message::text(over)).await.unwrap();
    let refused = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(text) = msg.to_text()
            && text.contains("\"error\"")
        {
            break text.to_string();
        }
    };
    assert!(refused.contains("MESSAGE_TOO_LARGE"), "{refused}");
    let far_over = json!({"type": "ping", "pad": "x".repeat(9000)}).to_string();
    let _ = ws.send(Message::text(far_over)).await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => break None,
            Err(_) => panic!("the socket stayed open after a frame over twice the limit"),
        }
    };
    assert!(matches!(ended, None | Some(1009)), "{ended:?}");
}

/// 2,000 idle TCP connections and 500 WebSockets that never authenticate, from three loopback
/// addresses (each under the default per-address cap), and a runner's heartbeat is still
/// answered within 100 ms.
#[tokio::test]
async fn thousands_of_idle_connections_do_not_slow_a_heartbeat() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 8192 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard).unwrap();
    }
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(
        &dir,
        &[
            // Long enough that none of them is closed while the test runs.
            ("VILLAGE_SERVER_HEADER_READ_TIMEOUT_MS", "120000"),
            ("VILLAGE_WEBSOCKET_AUTH_TIMEOUT_MS", "120000"),
        ],
    );
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let (runner, _) = register(&admin.with_token(&join), "edge-1", &["codex"], None, &[]).await;

    let sources = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];
    let mut idle = Vec::new();
    for i in 0..2000 {
        idle.push(connect_from(sources[i % 3], server.addr).await);
    }
    let url = format!("ws://{}/api/v1/ws", server.addr);
    let mut silent = Vec::new();
    for i in 0..500 {
        let stream = connect_from(sources[i % 3], server.addr).await;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .unwrap();
        silent.push(ws);
    }
    let open = common::eventually(30, || async {
        let open = open_connections(&server).await;
        (open > 2500).then_some(open)
    })
    .await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        runner.heartbeat().await;
        took.push(started.elapsed());
    }
    took.sort();
    assert!(
        took[2] < Duration::from_millis(100),
        "heartbeats took {took:?} with {open} connections open"
    );
    // Every idle connection is still open (none was dropped to make room).
    assert!(open_connections(&server).await > 2500);
    drop(idle);
    drop(silent);
}

/// A raw `GET path` from the loopback address `source`; the status line's code.
async fn status_from(source: [u8; 4], addr: SocketAddr, path: &str) -> u16 {
    let mut s = connect_from(source, addr).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_its_reports_go_on() {
    let (_keep, dir) = tmp_dir();
    // 60 a minute: bursts of 10, then one a second.
    let server = BinaryServer::spawn(&dir, &[("VILLAGE_LIMITS_PER_TOKEN_PER_MINUTE", "60")]);
    let admin = server.admin();
    let join = admin.create_token("runner_join", None).await;
    let (runner, _) = register(&admin.with_token(&join), "limited-1", &["codex"], None, &[]).await;
    let own = format!("/api/v1/runners/{}", runner.id);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(runner.client.get(&own).await);
    }
    assert!(statuses[..10].iter().all(|r| r.status == 200));
    let refused = statuses.last().unwrap();
    refused.expect_error(429, "RATE_LIMITED");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    // Heartbeats are budgeted apart: the runner is not cut off from reporting.
    for _ in 0..20 {
        runner.heartbeat().await;
    }
    // Other tokens have their own budget.
    assert_eq!(admin.get(&own).await.status, 200);
    // And the budget comes back with time.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(runner.client.get(&own).await.status, 200);
}

#[tokio::test]
async fn an_address_over_its_rate_gets_429_even_without_a_token() {
    let (_keep, dir) = tmp_dir();
    let server = BinaryServer::spawn(&dir, &[("VILLAGE_LIMITS_PER_IP_PER_MINUTE", "60")]);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(status_from([127, 0, 0, 2], server.addr, "/api/v1/sessions").await);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[11], 429, "{statuses:?}");
    // Another address is not held back, and health checks are not limited.
    assert_eq!(
        status_from([127, 0, 0, 3], server.addr, "/api/v1/sessions").await,
        401
    );
    assert_eq!(
        status_from([127, 0, 0, 2], server.addr, "/healthz").await,
        200
    );
}
