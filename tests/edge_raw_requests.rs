//! Requests at the edge of the transport (chunked bodies, `Expect: 100-continue`, a query
//! string, an odd content type, keep-alive after a refusal) get the same answer from the edge
//! (`api::EdgeRoutes`) as from the route tree (the same path with a trailing slash).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off `s`: status, the error code (if any), and the raw head.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            if status == 100 {
                buf.drain(..end + 4);
                return Some((100, String::new(), head));
            }
            let len = common::content_length(&head).unwrap_or(0);
            while buf.len() < end + 4 + len {
                read_more(s, buf).await?;
            }
            let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let code = json["error"]["code"].as_str().unwrap_or("").to_owned();
            return Some((status, code, head));
        }
        read_more(s, buf).await?;
    }
}

/// Appends what `s` reads next to `buf`; `None` when it closed or sent nothing for 5 s.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = [0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
        .await
        .ok()?
        .ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&tmp[..n]);
    Some(())
}

/// Sends `head` (then `body`, after a 100 Continue when `expect`), reads the answer, then
/// asks `GET /healthz` on the same connection: (status, code, a 100 was sent, keep-alive held).
async fn exchange(
    addr: std::net::SocketAddr,
    head: String,
    body: Vec<u8>,
    expect: bool,
) -> (u16, String, bool, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut continued = false;
    if expect {
        // Wait for a 100 or a final answer.
        match read_response(&mut s, &mut buf).await {
            Some((100, _, _)) => continued = true,
            Some((status, code, _)) => {
                let alive = healthz(&mut s, &mut buf).await;
                return (status, code, false, alive);
            }
            None => return (0, "closed".into(), false, false),
        }
    }
    let _ = s.write_all(&body).await;
    let Some((status, code, head)) = read_response(&mut s, &mut buf).await else {
        return (0, "closed".into(), continued, false);
    };
    let mut names: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case("date")
                || k.eq_ignore_ascii_case("x-request-id")
                || k.eq_ignore_ascii_case("content-length")
            {
                k.to_lowercase()
            } else {
                format!("{}={}", k.to_lowercase(), v.trim())
            }
        })
        .collect();
    names.sort();
    let alive = healthz(&mut s, &mut buf).await;
    (status, format!("{code} {names:?}"), continued, alive)
}

async fn healthz(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    matches!(read_response(s, buf).await, Some((200, _, _)))
}

#[tokio::test]
async fn odd_requests_are_answered_alike_by_the_edge_and_the_route_tree() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let running = admin.create_session("acme").await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.start_session(&running).await;
    let token = s.admin_token.clone();
    let create =
        br#"{"orgId":"acme","providerId":"codex","repo":{"url":"https://github.com/acme/app"}}"#
            .to_vec();
    let output = br#"{"stream":"stdout","data":"x"}"#.to_vec();
    let big = vec![b' '; 2 * 1024 * 1024];
    let chunked = |data: &[u8]| {
        let mut out = Vec::new();
        for piece in data.chunks(64 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let mut mismatches = Vec::new();
    for (edge, good, success) in [
        ("/api/v1/sessions".to_owned(), &create, 201),
        (format!("/api/v1/sessions/{running}/output"), &output, 200),
    ] {
        let tree = format!("{edge}/");
        let auth = format!("authorization: Bearer {token}\r\n");
        // (name, extra headers, body, expect-100, the status both must answer)
        let cases: Vec<(&str, String, Vec<u8>, bool, u16)> = vec![
            (
                "no token, keep-alive",
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                false,
                401,
            ),
            (
                "query string",
                format!(
                    "{auth}content-type: application/json\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                false,
                success,
            ),
            (
                "chunked over the limit",
                format!("{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n"),
                chunked(&big),
                false,
                413,
            ),
            (
                "chunked, small",
                format!("{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n"),
                chunked(good),
                false,
                success,
            ),
            (
                "expect 100, over the limit",
                format!(
                    "{auth}content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n",
                    big.len()
                ),
                big.clone(),
                true,
                413,
            ),
            (
                "expect 100, no token",
                format!(
                    "content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                true,
                401,
            ),
            (
                "expect 100, good",
                format!(
                    "{auth}content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                true,
                success,
            ),
            (
                "text/plain",
                format!(
                    "{auth}content-type: text/plain\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                false,
                415,
            ),
            (
                "mixed-case json type",
                format!(
                    "{auth}content-type: Application/JSON; charset=utf-8\r\ncontent-length: {}\r\n",
                    good.len()
                ),
                good.clone(),
                false,
                success,
            ),
        ];
        for (name, headers, body, expect, status) in cases {
            let mut answers = Vec::new();
            for path in [&edge, &tree] {
                let target = if name == "query string" {
                    format!("{path}?x=1&token=abc")
                } else {
                    path.clone()
                };
                let head = format!("POST {target} HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
                answers.push(exchange(s.addr, head, body.clone(), expect).await);
            }
            println!("{edge} {name}: edge {:?} tree {:?}", answers[0], answers[1]);
            assert_eq!(answers[0].0, status, "{edge} {name}: {:?}", answers[0]);
            if expect && status == success {
                assert!(answers[0].2, "{edge} {name}: no 100 Continue");
            }
            if answers[0] != answers[1] {
                mismatches.push(format!(
                    "{edge} {name}: edge {:?} tree {:?}",
                    answers[0], answers[1]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    s.stop().await;
}
