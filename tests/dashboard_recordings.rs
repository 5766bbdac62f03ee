//! The session page's recording player in a real browser (headless Chromium over WebDriver),
//! against the server in this process with its manual clock, so the recording's times are
//! known: a finished session whose output and approvals happened at set moments is opened,
//! played, sought and stepped from approval to approval. Fails on any browser console error.
//! Screenshots go to `target/screenshots/`.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/dashboard_env.rs"]
mod dashboard_env;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::TestServer;
use dashboard_env::{Env, ORG, PHONE};
use serde_json::json;
use webdriver::Browser;

/// The text the player's terminal shows (xterm.js's DOM renderer keeps rows as text).
const PLAYER_TEXT: &str = "const rows = document.querySelector('#player-terminal .xterm-rows'); \
                           return rows ? rows.textContent : '';";

/// Sets the seek bar to `ms` as a user dragging it would.
const SEEK_TO: &str = "const s = document.querySelector('#player-seek'); \
                       s.value = String(arguments[0] === 'end' ? s.max : arguments[0]); \
                       s.dispatchEvent(new Event('input', { bubbles: true }));";

/// A finished session of `ORG`, 40 s long from its start: output at 1 s, 10 s and 38 s, an
/// approval asked at 20 s and allowed at 25 s.
async fn finished_session(s: &TestServer) -> String {
    let admin = s.admin();
    let id = admin.create_session(ORG).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    s.advance(5_000);
    admin.start_session(&id).await;
    s.advance(1_000);
    admin
        .output(&id, "stdout", "\u{1b}[32mline one\u{1b}[0m\r\n")
        .await;
    s.advance(9_000);
    admin
        .output(&id, "stdout", "compiling the project\r\n")
        .await;
    s.advance(10_000);
    let approval = admin.ask_approval(&id, "merge", "Merge PR #12").await;
    s.advance(5_000);
    admin
        .resolve_approval(&id, &approval, json!({"decision": "allow"}))
        .await;
    s.advance(13_000);
    admin
        .output(&id, "stdout", "RECORDED-END all tests passed\r\n")
        .await;
    s.advance(2_000);
    admin.set_state(&id, "COMPLETED").await;
    id
}

async fn position(b: &Browser) -> f64 {
    b.exec(
        "return document.querySelector('#player').dataset.position",
        json!([]),
    )
    .await
    .as_str()
    .unwrap()
    .parse()
    .unwrap()
}

#[tokio::test]
async fn the_player_seeks_plays_and_steps_through_approvals() {
    let s = TestServer::start("").await;
    let id = finished_session(&s).await;
    let env = Env::on(s).await;
    let b = &env.browser;

    // Sign in and open the session.
    env.sign_in_admin(ORG).await;
    env.open(&format!("/sessions/{id}"), "sessions").await;

    // Open the player: 40 s long, at 0, nothing printed yet; a tick per marker, two approvals.
    b.click("#recording-open").await;
    b.wait_for("#player[data-ready=\"true\"]", 10).await;
    b.wait_for_text("#player-time", "0:00.0 / 0:40.0", 5).await;
    // xterm.js draws only while on screen: scroll to the player, as a user does.
    b.exec(
        "document.querySelector('#player-terminal').scrollIntoView({ block: 'end' })",
        json!([]),
    )
    .await;
    let ticks = b
        .exec(
            "return [document.querySelectorAll('#player-ticks .tick').length, \
                     document.querySelectorAll('#player-ticks .tick.tick-approval').length]",
            json!([]),
        )
        .await;
    let events = env
        .admin
        .get(&format!("/api/v1/sessions/{id}/events?limit=1000"))
        .await
        .data()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ticks, json!([events, 2]));
    assert!(
        !b.exec(PLAYER_TEXT, json!([]))
            .await
            .as_str()
            .unwrap()
            .contains("line one")
    );

    // Seek to the end: everything printed is on the screen at once.
    b.exec(SEEK_TO, json!(["end"])).await;
    b.wait_until(
        "the player shows the last line",
        "const rows = document.querySelector('#player-terminal .xterm-rows'); \
         return !!rows && rows.textContent.includes('RECORDED-END all tests passed');",
        json!([]),
        5,
    )
    .await;
    let text = b.exec(PLAYER_TEXT, json!([])).await;
    let text = text.as_str().unwrap();
    for line in ["line one", "compiling the project", "RECORDED-END"] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    b.wait_for_text("#player-time", "0:40.0 / 0:40.0", 5).await;
    b.wait_for_text("#player-marker", "session_completed", 5)
        .await;
    b.screenshot("recording-end").await;

    // Next approval: from the start to the request (20 s), then to the answer (25 s), then no
    // further.
    b.exec(SEEK_TO, json!([0])).await;
    b.click("#player-next-approval").await;
    b.wait_for_text(
        "#player-marker",
        "approval_requested: Merge PR #12 (merge)",
        5,
    )
    .await;
    assert_eq!(position(b).await, 20.0);
    b.wait_for_text("#player-time", "0:20.0 / 0:40.0", 5).await;
    // The terminal is redrawn from the start up to the new position; xterm.js writes
    // asynchronously, so its rows may lag the clock by a frame.
    b.wait_until(
        "the player shows the output up to the approval, and none after it",
        "const rows = document.querySelector('#player-terminal .xterm-rows'); \
         return !!rows && rows.textContent.includes('compiling the project') \
           && !rows.textContent.includes('RECORDED-END');",
        json!([]),
        5,
    )
    .await;
    b.click("#player-next-approval").await;
    b.wait_for_text("#player-marker", "approval_resolved: allow by", 5)
        .await;
    assert_eq!(position(b).await, 25.0);
    b.click("#player-next-approval").await;
    b.wait_for_text("body", "No approval after this point", 5)
        .await;
    assert_eq!(position(b).await, 25.0);

    // Play at 8× from the start: time moves on, about 8 s per second.
    b.exec(SEEK_TO, json!([0])).await;
    b.click("#player-speed-8").await;
    b.click("#player-play").await;
    b.wait_for("#player[data-playing=\"true\"]", 5).await;
    let began = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let at = position(b).await;
    let real = began.elapsed().as_secs_f64();
    assert!(
        at >= 4.0 && at <= 8.0 * (real + 0.5),
        "after {real:.2} s at 8× the player is at {at} s"
    );
    b.wait_until(
        "the player shows the first line",
        "const rows = document.querySelector('#player-terminal .xterm-rows'); \
         return !!rows && rows.textContent.includes('line one');",
        json!([]),
        5,
    )
    .await;
    // It plays to the end and stops there.
    b.wait_for("#player[data-playing=\"false\"]", 10).await;
    assert_eq!(position(b).await, 40.0);
    b.click("#player-play").await;
    b.wait_for("#player[data-playing=\"true\"]", 5).await;
    b.click("#player-play").await;
    b.wait_for("#player[data-playing=\"false\"]", 5).await;
    assert!(position(b).await < 40.0, "play from the end starts over");

    // On a phone the page does not scroll sideways.
    b.set_window(PHONE.0, PHONE.1).await;
    b.exec(SEEK_TO, json!(["end"])).await;
    let overflow = b
        .wait_until(
            "no sideways scrolling",
            "const d = document.documentElement.scrollWidth - window.innerWidth; \
             return d <= 0 ? 'ok' : '';",
            json!([]),
            5,
        )
        .await;
    assert_eq!(overflow, json!("ok"));
    b.exec(
        "document.querySelector('#recording-card').scrollIntoView()",
        json!([]),
    )
    .await;
    b.screenshot("recording-phone").await;
    env.finish().await;
}
