//! `GET /api/v1/sessions/{id}/recording`: a session's output and timeline as an asciicast v2
//! file. With the server's manual clock every time is known, so each line's `t` is checked
//! against when its chunk or event was stored.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Resp, START_MS, TestServer};
use serde_json::{Value, json};

/// A parsed recording: the header and every following line.
struct Cast {
    header: Value,
    lines: Vec<(f64, String, String)>,
}

impl Cast {
    fn parse(resp: &Resp) -> Cast {
        assert_eq!(resp.status, 200, "{}", resp.text);
        let ct = resp.headers["content-type"].to_str().unwrap();
        assert_eq!(ct, "application/x-asciicast");
        assert!(resp.headers.get("x-request-id").is_some());
        assert!(
            resp.text.ends_with('\n'),
            "the last line ends with a newline"
        );
        let mut rows = resp.text.lines();
        let header: Value = serde_json::from_str(rows.next().unwrap()).unwrap();
        let mut lines = Vec::new();
        let mut last = 0.0;
        for row in rows {
            let v: Value =
                serde_json::from_str(row).unwrap_or_else(|e| panic!("not JSON ({e}): {row}"));
            let a = v
                .as_array()
                .unwrap_or_else(|| panic!("not an array: {row}"));
            assert_eq!(a.len(), 3, "{row}");
            let t = a[0]
                .as_f64()
                .unwrap_or_else(|| panic!("t is no number: {row}"));
            assert!(t >= last, "t went back from {last} to {t}: {row}");
            last = t;
            let code = a[1].as_str().unwrap().to_string();
            assert!(code == "o" || code == "m", "{row}");
            lines.push((t, code, a[2].as_str().unwrap().to_string()));
        }
        Cast { header, lines }
    }

    fn output(&self) -> String {
        self.lines
            .iter()
            .filter(|(_, c, _)| c == "o")
            .map(|(_, _, d)| d.as_str())
            .collect()
    }

    fn markers(&self) -> Vec<(f64, &str)> {
        self.lines
            .iter()
            .filter(|(_, c, _)| c == "m")
            .map(|(t, _, l)| (*t, l.as_str()))
            .collect()
    }

    fn marker(&self, prefix: &str) -> (f64, &str) {
        self.markers()
            .into_iter()
            .find(|(_, l)| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no marker `{prefix}…` in {:?}", self.markers()))
    }
}

fn recording(id: &str) -> String {
    format!("/api/v1/sessions/{id}/recording")
}

/// Every item of a sequence-numbered read (`events` or `output`), all pages.
async fn all(c: &Client, id: &str, what: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let r = c
            .get(&format!(
                "/api/v1/sessions/{id}/{what}?afterSeq={after}&limit=1000"
            ))
            .await;
        let page = r.data()["items"].as_array().unwrap().clone();
        if page.is_empty() {
            return items;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        items.extend(page);
    }
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

async fn create(admin: &Client, url: &str) -> String {
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": "acme", "providerId": "claude_code", "repo": {"url": url},
                   "task": "record me"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data()["sessionId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_finished_session_replays_every_chunk_and_event_in_time() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org_token = admin.create_token("org", Some("acme")).await;
    let org = admin.with_token(&org_token);
    let id = create(&admin, "https://bot:s3cret@github.com/acme/app.git").await;
    // Two seconds in the queue: the recording starts when the session runs.
    s.advance(2_000);
    admin.start_session(&id).await;
    let origin = START_MS + 2_000;

    s.advance(1_500);
    admin.output(&id, "stdout", "hello\r\n").await;
    s.advance(500);
    admin
        .output(
            &id,
            "stderr",
            "warn: \u{1b}[31mred\u{1b}[0m \"quoted\" \\ back\ttab\n",
        )
        .await;
    s.advance(1_000);
    let approval = admin.ask_approval(&id, "merge", "Merge PR #12").await;
    s.advance(1_250);
    org.resolve_approval(
        &id,
        &approval,
        json!({"decision": "allow", "reason": "looks good"}),
    )
    .await;
    s.advance(250);
    admin
        .output(&id, "stdout", "after the approval ✓ — ünïcode\n")
        .await;
    // More chunks and events than one page of either, interleaved in time.
    for i in 0..150 {
        s.advance(10);
        admin
            .output(&id, "stdout", &format!("line {i} running\n"))
            .await;
        org.post_empty(&format!("/api/v1/sessions/{id}/pause"))
            .await;
        s.advance(10);
        admin
            .output(&id, "stdout", &format!("line {i} paused\n"))
            .await;
        let r = org
            .post_empty(&format!("/api/v1/sessions/{id}/resume"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    s.advance(1_000);
    admin.set_state(&id, "COMPLETED").await;

    let cast = Cast::parse(&org.get(&recording(&id)).await);
    assert_eq!(
        cast.header,
        json!({"version": 2, "width": 120, "height": 40, "timestamp": origin / 1000,
               "title": "claude_code · https://github.com/acme/app.git"})
    );

    // Every chunk exactly once, in order, each at its time.
    let chunks = all(&admin, &id, "output").await;
    assert_eq!(chunks.len(), 2 + 1 + 300);
    let stored: String = chunks.iter().map(|c| c["data"].as_str().unwrap()).collect();
    assert_eq!(cast.output(), stored);
    let outs: Vec<_> = cast.lines.iter().filter(|(_, c, _)| c == "o").collect();
    assert_eq!(outs.len(), chunks.len());
    for (line, chunk) in outs.iter().zip(&chunks) {
        assert_eq!(line.2, chunk["data"].as_str().unwrap());
        let at = (ms(chunk["timestamp"].as_str().unwrap()) - origin).max(0);
        assert_eq!(line.0, at as f64 / 1000.0, "{chunk}");
    }
    assert_eq!(outs[0].0, 1.5);
    assert_eq!(outs[1].0, 2.0);

    // Every event exactly once, in order, as a marker at its time.
    let events = all(&admin, &id, "events").await;
    assert!(events.len() > 300, "{} events", events.len());
    let markers = cast.markers();
    assert_eq!(markers.len(), events.len());
    for ((t, label), event) in markers.iter().zip(&events) {
        let kind = event["type"].as_str().unwrap();
        assert!(
            label.starts_with(&format!("{kind}: ")),
            "{label} for {event}"
        );
        let at = (ms(event["timestamp"].as_str().unwrap()) - origin).max(0);
        assert_eq!(*t, at as f64 / 1000.0, "{label}");
    }
    // Before the session ran: at 0.
    // The repository's credentials stay out of it.
    assert_eq!(
        cast.marker("session_created"),
        (
            0.0,
            "session_created: claude_code · https://github.com/acme/app.git"
        )
    );
    assert!(!cast.lines.iter().any(|l| l.2.contains("s3cret")));
    assert_eq!(cast.lines[0].1, "m");
    assert_eq!(cast.lines[0].0, 0.0);
    // The approval: asked 3 s after the start, answered 1.25 s later.
    assert_eq!(
        cast.marker("approval_requested"),
        (3.0, "approval_requested: Merge PR #12 (merge)")
    );
    let resolved = admin
        .get(&format!("/api/v1/sessions/{id}/approvals"))
        .await
        .data()["resolved"][0]["resolvedBy"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = format!("approval_resolved: allow by {resolved} — looks good");
    assert_eq!(cast.marker("approval_resolved"), (4.25, answer.as_str()));
    assert_eq!(
        cast.marker("state_changed: RUNNING → WAITING"),
        (3.0, "state_changed: RUNNING → WAITING_FOR_APPROVAL")
    );
    assert_eq!(
        cast.marker("state_changed: RUNNING → PAUSED"),
        (4.51, "state_changed: RUNNING → PAUSED_BY_HUMAN")
    );
    // The approval sits between the output printed before and after it.
    let position =
        |pred: &dyn Fn(&(f64, String, String)) -> bool| cast.lines.iter().position(pred).unwrap();
    let asked_at = position(&|l| l.2.starts_with("approval_requested"));
    assert!(position(&|l| l.2.starts_with("warn:")) < asked_at);
    assert!(asked_at < position(&|l| l.2.starts_with("after the approval")));
    assert!(
        cast.markers()
            .last()
            .unwrap()
            .1
            .starts_with("session_completed")
    );

    // The admin reads the same file.
    let again = Cast::parse(&admin.get(&recording(&id)).await);
    assert_eq!(again.lines, cast.lines);
    s.stop().await;
}

#[tokio::test]
async fn a_live_session_records_what_is_stored_so_far() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let id = create(&admin, "git@github.com:acme/app.git").await;

    // Queued, never run: the header dates from its creation, the events are at 0.
    let queued = Cast::parse(&org.get(&recording(&id)).await);
    assert_eq!(queued.header["timestamp"], json!(START_MS / 1000));
    assert_eq!(
        queued.header["title"],
        "claude_code · git@github.com:acme/app.git"
    );
    assert_eq!(queued.output(), "");
    assert!(!queued.markers().is_empty());
    assert!(queued.markers().iter().all(|(t, _)| *t == 0.0));

    s.advance(61_000);
    admin.start_session(&id).await;
    s.advance(2_000);
    admin.output(&id, "stdout", "first\n").await;
    s.advance(1_000);
    admin
        .post(
            &format!("/api/v1/sessions/{id}/approvals"),
            json!({"action": "deploy", "description": "Deploy to staging"}),
        )
        .await;
    let live = Cast::parse(&org.get(&recording(&id)).await);
    assert_eq!(live.header["timestamp"], json!((START_MS + 61_000) / 1000));
    assert_eq!(live.output(), "first\n");
    assert_eq!(
        live.marker("approval_requested"),
        (3.0, "approval_requested: Deploy to staging (deploy)")
    );
    assert!(
        !live
            .lines
            .iter()
            .any(|l| l.2.starts_with("approval_resolved")),
        "still pending"
    );

    // Asked again later, it holds what was stored since.
    s.advance(500);
    admin.output(&id, "stderr", "second\n").await;
    let later = Cast::parse(&org.get(&recording(&id)).await);
    assert_eq!(later.output(), "first\nsecond\n");
    assert_eq!(
        later.lines.last().unwrap(),
        &(3.5, "o".into(), "second\n".into())
    );
    s.stop().await;
}

#[tokio::test]
async fn large_chunks_arrive_whole() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = create(&admin, "https://github.com/acme/app.git").await;
    admin.start_session(&id).await;
    let mut expected = String::new();
    for i in 0..24u32 {
        s.advance(100);
        // 250 KiB with escapes in it: about 260 KiB of JSON per line.
        let line = format!("\u{1b}[1mchunk {i:02}\u{1b}[0m \"{}\"\n", "x".repeat(60));
        let data: String = line.repeat(250 * 1024 / line.len());
        admin.output(&id, "stdout", &data).await;
        expected.push_str(&data);
    }
    let cast = Cast::parse(&admin.get(&recording(&id)).await);
    assert_eq!(cast.output().len(), expected.len());
    assert!(cast.output() == expected, "the output differs");
    let times: Vec<f64> = cast
        .lines
        .iter()
        .filter(|l| l.1 == "o")
        .map(|l| l.0)
        .collect();
    let want: Vec<f64> = (1..=24).map(|i| f64::from(i) / 10.0).collect();
    assert_eq!(times, want);
    s.stop().await;
}

#[tokio::test]
async fn refusals_answer_in_the_envelope() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let id = create(&admin, "https://github.com/acme/app.git").await;
    let other_org = admin.with_token(&admin.create_token("org", Some("globex")).await);
    other_org
        .get(&recording(&id))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    admin
        .get(&recording("not-a-uuid"))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    admin
        .get(&recording(&village::clock::random_uuid().to_string()))
        .await
        .expect_error(404, "SESSION_NOT_FOUND");
    s.anonymous()
        .get(&recording(&id))
        .await
        .expect_error(401, "UNAUTHORIZED");
    admin
        .post(&recording(&id), json!({}))
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    s.stop().await;
}
