//! The dashboard's spend and budget features in a real browser (headless Chromium over
//! WebDriver, against the real `village` binary, with a simulated runner on a real runner
//! channel that reports usage): the spend page's chart, totals, builds table, month picker and
//! budget editor (admin and read-only org token, desktop and phone widths), and a session paused
//! by its budget raised and resumed from the overview. Each test also fails on any browser
//! console error it did not provoke on purpose. Screenshots go to `target/screenshots/`.
//!
//! One browser runs at a time (the tests take turns): see `tests/common/dashboard_env.rs`.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/dashboard_env.rs"]
mod dashboard_env;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::live_runner::{LiveRunner, running_session, wait_state};
use common::{Client, eventually};
use dashboard_env::{Env, ORG, PHONE, WIDE, no_sideways_scrolling, resize, value_of};
use serde_json::{Value, json};
use webdriver::Browser;

const BUDGET: &str = "/api/v1/orgs/acme/budget";
const USAGE: &str = "/api/v1/orgs/acme/usage";
const BUILD: &str = "build-1";

/// The simulated runner beats once: keep it online for the whole test.
const SERVER_ENV: &[(&str, &str)] = &[("VILLAGE_RUNNERS_HEARTBEAT_TIMEOUT_MS", "600000")];

impl Env {
    async fn budget(&self) -> Value {
        let r = self.admin.get(BUDGET).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.data().clone()
    }
}

// ---- helpers -----------------------------------------------------------------------------------

/// A session of `provider` created over the API and running on the live runner.
async fn running(admin: &Client, provider: &str, task: &str) -> String {
    let r = admin
        .post(
            "/api/v1/sessions",
            json!({"orgId": ORG, "providerId": provider,
                   "repo": {"url": "https://github.com/acme/app.git", "branch": "main"}, "task": task}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.data()["sessionId"].as_str().unwrap().to_string();
    wait_state(admin, &id, "RUNNING").await;
    id
}

/// The runner reports what `session` spent so far (totals), and the server has it.
async fn report_usage(
    admin: &Client,
    runner: &LiveRunner,
    session: &str,
    cost: f64,
    tokens: (u64, u64),
) {
    runner.send(json!({"type": "usage", "sessionId": session,
        "assignmentId": runner.assignment(session), "costUsd": cost,
        "tokensIn": tokens.0, "tokensOut": tokens.1}));
    eventually(10, || async {
        let s = admin.session(session).await;
        (s["usage"]["costUsd"].as_f64() == Some(cost)).then_some(())
    })
    .await;
}

/// The runner ends `session` as `state` (COMPLETED or FAILED).
async fn end(admin: &Client, runner: &LiveRunner, session: &str, state: &str) {
    runner.send(json!({"type": "session_state", "sessionId": session,
        "assignmentId": runner.assignment(session), "state": state, "error": null}));
    wait_state(admin, session, state).await;
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The month before `month` (`YYYY-MM`).
fn month_before(month: &str) -> String {
    let (y, m) = month.split_once('-').unwrap();
    let (y, m): (i32, u32) = (y.parse().unwrap(), m.parse().unwrap());
    if m == 1 {
        format!("{}-12", y - 1)
    } else {
        format!("{y}-{:02}", m - 1)
    }
}

/// The segments the chart must draw: one per (day, provider) with spend, sorted.
fn expected_segments(usage: &Value) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for day in usage["byDay"].as_array().unwrap() {
        for (provider, figures) in day["byProvider"].as_object().unwrap() {
            let cost = figures["costUsd"].as_f64().unwrap();
            if cost > 0.0 {
                out.push((
                    day["date"].as_str().unwrap().to_string(),
                    provider.clone(),
                    cost,
                ));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// The segments the page drew, sorted, with their heights.
async fn drawn_segments(b: &Browser) -> Vec<(String, String, f64, f64)> {
    let v = b
        .exec(
            "return [...document.querySelectorAll('#spend-svg rect[data-provider]')].map((r) => \
               [r.dataset.date, r.dataset.provider, Number(r.dataset.cost), Number(r.getAttribute('height'))]);",
            json!([]),
        )
        .await;
    let mut out: Vec<(String, String, f64, f64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].as_str().unwrap().to_string(),
                s[2].as_f64().unwrap(),
                s[3].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

// ---- the tests ---------------------------------------------------------------------------------

/// Three sessions on two providers spend $4.50 in all on one build (two completed, one failed):
/// the spend page shows the total against the monthly budget, one chart segment per day and
/// provider with spend (with a title and a table for screen readers), the providers' totals and
/// the build's cost per completed session and failure rate with the versions it bundles. The
/// budget editor saves, shows the API's refusal of a negative value at its field, and empties a
/// limit; an earlier month is empty; the page fits a phone; an org token reads the budget only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_page_charts_the_month_and_the_budget_editor_saves() {
    let mut env = Env::start(SERVER_ENV).await;
    env.expect_error(BUDGET, 400);
    let admin = env.admin.clone();
    let r = admin
        .post(
            "/api/v1/builds",
            json!({"buildId": BUILD, "runnerVersion": "2.4.0", "builtAt": "2026-11-24T09:12:35.123Z",
                   "runtimeVersions": {"claude_code": "2.1.0", "codex": "0.9.1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let runner = LiveRunner::start(&admin, "spend-01").await;
    let a = running(&admin, "claude_code", "Fix the login form").await;
    let b_ = running(&admin, "codex", "Write the changelog").await;
    let c = running(&admin, "claude_code", "Upgrade the payment SDK").await;
    report_usage(&admin, &runner, &a, 1.25, (12_000, 3_400)).await;
    report_usage(&admin, &runner, &b_, 2.75, (30_000, 5_200)).await;
    report_usage(&admin, &runner, &c, 0.5, (4_000, 800)).await;
    end(&admin, &runner, &a, "COMPLETED").await;
    end(&admin, &runner, &b_, "COMPLETED").await;
    end(&admin, &runner, &c, "FAILED").await;
    let put = admin
        .put(BUDGET, json!({"monthlyUsd": 10, "sessionUsd": 5}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    // Spend per build is counted as sessions end (after their commit): wait for all three.
    let usage = eventually(10, || async {
        let u = admin.get(USAGE).await.data().clone();
        let ended: u64 = u["byBuild"]
            .as_array()?
            .iter()
            .filter_map(|b| b["sessions"].as_u64())
            .sum();
        (close(u["costUsd"].as_f64()?, 4.5) && ended == 3).then_some(u)
    })
    .await;
    let month = usage["month"].as_str().unwrap().to_string();
    assert_eq!(usage["sessions"], 3, "{usage}");
    let build = usage["byBuild"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["buildId"] == BUILD)
        .unwrap_or_else(|| panic!("no {BUILD} in {usage}"))
        .clone();
    assert_eq!(
        (&build["sessions"], &build["completed"], &build["failed"]),
        (&json!(3), &json!(2), &json!(1)),
        "{build}"
    );
    assert!(
        close(build["costPerCompletedUsd"].as_f64().unwrap(), 2.0),
        "{build}"
    );
    assert!(
        close(build["failureRate"].as_f64().unwrap(), 1.0 / 3.0),
        "{build}"
    );

    env.sign_in_admin(ORG).await;
    env.open("/spend", "spend").await;
    let b = &env.browser;
    b.wait_for("a[data-nav=spend][aria-current=page]", 5).await;

    // The total is the API's, against the monthly budget.
    let total = b
        .exec(
            "return Number(document.getElementById('spend-total').dataset.costUsd)",
            json!([]),
        )
        .await;
    assert!(close(
        total.as_f64().unwrap(),
        usage["costUsd"].as_f64().unwrap()
    ));
    assert_eq!(b.text("#spend-total").await, "$4.50");
    assert_eq!(
        b.exec(
            "return document.querySelector('#spend-meter').getAttribute('aria-valuenow')",
            json!([])
        )
        .await,
        "45"
    );
    b.wait_for_text("#spend-meter", "of $10.00", 2).await;

    // One segment per (day, provider) with spend, each as tall as its cost says.
    let expected = expected_segments(&usage);
    assert!(expected.len() >= 2, "two providers spent: {usage}");
    let drawn = drawn_segments(b).await;
    assert_eq!(
        drawn
            .iter()
            .map(|(d, p, c, _)| (d.clone(), p.clone(), *c))
            .collect::<Vec<_>>(),
        expected,
        "the chart's segments"
    );
    for (d, p, c, height) in &drawn {
        assert!(*height >= 1.0, "{d} {p}: {height}");
        // Heights in proportion to cost (within a pixel for rounding), across every segment.
        let (_, _, c0, h0) = &drawn[0];
        assert!(
            (height / h0 - c / c0).abs() * h0 < 1.5,
            "{d} {p}: {c} drawn {height} px against {c0} drawn {h0} px"
        );
    }
    // Described for screen readers: a title, a summary and a table with a row per day.
    let title = b
        .exec(
            "const svg = document.getElementById('spend-svg'); \
             return svg.getAttribute('role') + '|' + svg.getAttribute('aria-labelledby').split(' ') \
               .map((id) => document.getElementById(id).textContent).join('|');",
            json!([]),
        )
        .await;
    let title = title.as_str().unwrap();
    assert!(title.starts_with("img|Spend by day"), "{title}");
    assert!(title.contains("$4.50"), "{title}");
    let rows = b
        .exec(
            "return document.querySelectorAll('#spend-chart-table tbody tr').length",
            json!([]),
        )
        .await;
    assert_eq!(
        rows.as_u64().unwrap() as usize,
        usage["byDay"].as_array().unwrap().len()
    );

    // Totals by provider, and the build's figures with what it bundles.
    b.wait_for_text("#spend-providers tr[data-provider-id=codex]", "$2.75", 2)
        .await;
    b.wait_for_text(
        "#spend-providers tr[data-provider-id=claude_code]",
        "$1.75",
        2,
    )
    .await;
    let row = format!("#spend-builds tr[data-build-id='{BUILD}']");
    let text = b.text(&row).await;
    for needle in [
        "claude_code 2.1.0",
        "codex 0.9.1",
        "33.3%",
        "$2.00",
        "runner 2.4.0",
    ] {
        assert!(
            text.contains(needle),
            "the build row shows {needle}: {text}"
        );
    }
    b.screenshot("spend-month-1280").await;
    b.exec(
        "document.getElementById('spend-chart').scrollIntoView({block: 'center'})",
        json!([]),
    )
    .await;
    b.screenshot("spend-chart-1280").await;

    // The budget editor: the saved values, a change saved, a negative value refused at its
    // field (nothing changes), and an emptied field meaning "no limit".
    assert_eq!(value_of(b, "#budget-monthlyUsd").await, "10");
    assert_eq!(value_of(b, "#budget-sessionUsd").await, "5");
    assert_eq!(value_of(b, "#budget-sessionTokens").await, "");
    b.fill("#budget-monthlyUsd", "20").await;
    b.fill("#budget-sessionTokens", "150000").await;
    b.click("#budget-save").await;
    b.wait_for_text("#budget-status", "Saved", 10).await;
    let budget = env.budget().await;
    assert_eq!(
        (
            budget["monthlyUsd"].as_f64(),
            budget["sessionUsd"].as_f64(),
            budget["sessionTokens"].as_u64()
        ),
        (Some(20.0), Some(5.0), Some(150_000)),
        "{budget}"
    );
    b.wait_for_text("#spend-meter", "of $20.00", 5).await;

    b.fill("#budget-monthlyUsd", "-5").await;
    b.click("#budget-save").await;
    b.wait_for_text("#budget-status", "Not saved", 10).await;
    b.wait_for("#budget-monthlyUsd[aria-invalid=true]", 5).await;
    let message = b.text("[data-error-for=monthlyUsd]").await;
    assert!(!message.is_empty(), "the API's issue is shown at the field");
    assert_eq!(
        b.text("[data-error-for=sessionUsd]").await,
        "",
        "only the bad field is marked"
    );
    b.screenshot("spend-budget-refused").await;
    assert_eq!(
        env.budget().await,
        budget,
        "a refused budget changes nothing"
    );

    b.fill("#budget-monthlyUsd", "20").await;
    b.clear("#budget-sessionTokens").await;
    b.click("#budget-save").await;
    b.wait_for_text("#budget-status", "Saved", 10).await;
    b.wait_until(
        "the error is gone",
        "return !document.querySelector('#budget-monthlyUsd[aria-invalid]')",
        json!([]),
        5,
    )
    .await;
    let budget = env.budget().await;
    assert_eq!(budget["sessionTokens"], Value::Null, "{budget}");
    assert_eq!(budget["monthlyUsd"].as_f64(), Some(20.0), "{budget}");

    // At phone width: no sideways scrolling, and the chart is drawn to the narrower width.
    resize(b, PHONE).await;
    b.wait_until(
        "the chart is redrawn to the phone's width",
        "const svg = document.getElementById('spend-svg'); \
         return !!svg && Number(svg.getAttribute('width')) <= window.innerWidth;",
        json!([]),
        5,
    )
    .await;
    assert_eq!(
        drawn_segments(b).await.len(),
        expected.len(),
        "the same segments"
    );
    no_sideways_scrolling(b, "the spend page").await;
    b.screenshot("spend-month-390").await;
    b.exec(
        "document.getElementById('spend-chart').scrollIntoView({block: 'center'})",
        json!([]),
    )
    .await;
    b.screenshot("spend-chart-390").await;
    resize(b, WIDE).await;

    // An earlier month: nothing spent, said in words, kept in the URL.
    let before = month_before(&month);
    b.click(&format!("#spend-month option[value='{before}']"))
        .await;
    b.wait_ready("spend").await;
    b.wait_for("#spend-empty", 5).await;
    assert!(b.url().await.ends_with(&format!("/spend?month={before}")));
    assert_eq!(b.text("#spend-total").await, "$0.00");
    assert!(b.find("#spend-svg").await.is_none());
    let earlier = admin.get(&format!("{USAGE}?month={before}")).await;
    assert_eq!(
        earlier.data()["costUsd"].as_f64(),
        Some(0.0),
        "{}",
        earlier.text
    );
    b.screenshot("spend-empty-month").await;

    // An org token reads the spend and the budget, and cannot change it.
    let org_token = admin.create_token("org", Some(ORG)).await;
    b.click("#sign-out").await;
    b.wait_for("#token", 5).await;
    // An org token has its own org.
    env.sign_in(&org_token, None).await;
    b.wait_for_text(".page-head", ORG, 5).await;
    env.open("/spend", "spend").await;
    let b = &env.browser;
    b.wait_for("#spend-svg", 5).await;
    assert_eq!(b.text("#spend-total").await, "$4.50");
    b.wait_for_text("#budget-readonly [data-limit=monthlyUsd]", "$20.00", 5)
        .await;
    b.wait_for_text("#budget-readonly [data-limit=sessionTokens]", "No limit", 5)
        .await;
    assert!(b.find("#budget-form").await.is_none(), "read only");
    assert!(b.find("#budget-save").await.is_none(), "read only");
    b.screenshot("spend-org-token").await;
    env.finish().await;
}

/// A usage report past the per-session cap pauses the session for its budget: it appears under
/// "Needs attention" on the open overview by itself, the session page and the sessions list say
/// "Paused: budget" with its cost, and a plain resume is refused. "Raise and resume" proposes a
/// higher cap, refuses one at or below what was spent, saves the one typed (keeping the other
/// limits) and resumes the session: the runner is told to resume and the overview clears. Paused
/// again past the new cap, "Resume without raising" resumes it and leaves the budget alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_by_its_budget_is_raised_and_resumed_from_the_overview() {
    let env = Env::start(SERVER_ENV).await;
    let admin = env.admin.clone();
    let put = admin
        .put(BUDGET, json!({"monthlyUsd": 50, "sessionUsd": 1}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let mut runner = LiveRunner::start(&admin, "spend-02").await;
    let session = running_session(&admin, ORG, "Refactor the billing module").await;
    env.sign_in_admin(ORG).await;
    let b = &env.browser;
    b.wait_for_text("#budget-paused", "No session is paused for budget", 5)
        .await;

    // Past the cap: paused for budget, the runner told so, and the overview shows it live.
    runner.send(json!({"type": "usage", "sessionId": session,
        "assignmentId": runner.assignment(&session), "costUsd": 1.5,
        "tokensIn": 20_000, "tokensOut": 4_000}));
    runner
        .expect("pause_session", 10, |f| f["sessionId"] == session.as_str())
        .await;
    wait_state(&admin, &session, "PAUSED_BY_HUMAN").await;
    let detail = admin.session(&session).await;
    assert_eq!(detail["pauseReason"], "budget", "{detail}");
    let item = format!("#budget-paused li[data-session-id='{session}']");
    b.wait_for(&item, 5).await;
    b.wait_for_text("#toasts", "spent $1.50 of its $1.00 per-session cap", 5)
        .await;
    let text = b.text(&item).await;
    assert!(text.contains("$1.50"), "what was spent: {text}");
    assert!(text.contains("session cap $1.00"), "which limit: {text}");
    let listed = admin
        .get(&format!(
            "/api/v1/sessions?orgId={ORG}&state=PAUSED_BY_HUMAN"
        ))
        .await;
    let listed = &listed.data()["items"][0];
    assert_eq!(listed["pauseReason"], "budget", "{listed}");
    assert_eq!(listed["costUsd"].as_f64(), Some(1.5), "{listed}");
    b.screenshot("overview-paused-for-budget").await;

    // A plain resume is refused while the session is over its cap.
    let refused = admin
        .post_empty(&format!("/api/v1/sessions/{session}/resume"))
        .await;
    refused.expect_error(409, "BUDGET_EXCEEDED");

    // The session page and the sessions list say why it is paused and what it cost.
    env.open(&format!("/sessions/{session}"), "sessions").await;
    let b = &env.browser;
    b.wait_for_text("#session-state", "Paused: budget", 5).await;
    b.wait_for_text("#pause-reason", "$1.50", 5).await;
    b.wait_for_text("#usage-cost", "$1.50", 5).await;
    b.wait_for("#session-raise-resume", 5).await;
    env.open("/sessions", "sessions").await;
    let row = format!("#sessions-table tr[data-session-id='{session}']");
    b.wait_for_text(&row, "Paused: budget", 5).await;
    b.wait_for_text(&row, "$1.50", 5).await;

    // Raise and resume, from the overview.
    env.open("/", "overview").await;
    b.click(&format!("{item} [data-action=raise-resume]")).await;
    let dialog = "#raise-dialog[open]";
    b.wait_for(dialog, 5).await;
    let proposed: f64 = value_of(b, "#raise-value").await.parse().unwrap();
    assert!(
        proposed > 1.5,
        "the proposal is above what was spent: {proposed}"
    );
    b.wait_for_text(dialog, "per-session cap", 2).await;
    // Not above what was spent: refused in the dialog, nothing sent.
    b.fill("#raise-value", "1.5").await;
    b.click(&format!("{dialog} [data-confirm]")).await;
    b.wait_for_text("#raise-error", "more than", 5).await;
    assert!(b.find(dialog).await.is_some(), "the dialog stays open");
    assert_eq!(env.budget().await["sessionUsd"].as_f64(), Some(1.0));
    b.screenshot("raise-and-resume-dialog").await;
    b.fill("#raise-value", "3").await;
    b.click(&format!("{dialog} [data-confirm]")).await;

    runner
        .expect("resume_session", 10, |f| f["sessionId"] == session.as_str())
        .await;
    wait_state(&admin, &session, "RUNNING").await;
    let budget = env.budget().await;
    assert_eq!(budget["sessionUsd"].as_f64(), Some(3.0), "{budget}");
    assert_eq!(budget["monthlyUsd"].as_f64(), Some(50.0), "kept: {budget}");
    assert_eq!(budget["sessionTokens"], Value::Null, "kept: {budget}");
    b.wait_until(
        "the resumed session leaves the list",
        "return !document.querySelector(arguments[0])",
        json!([item]),
        5,
    )
    .await;
    b.wait_for_text("#budget-paused", "No session is paused for budget", 5)
        .await;
    assert!(b.find("#raise-dialog").await.is_none());

    // Past the raised cap: paused again; "Resume without raising" resumes it over its budget
    // (an admin's `force`) and leaves the budget as it is.
    runner.send(json!({"type": "usage", "sessionId": session,
        "assignmentId": runner.assignment(&session), "costUsd": 3.5,
        "tokensIn": 40_000, "tokensOut": 8_000}));
    runner
        .expect("pause_session", 10, |f| f["sessionId"] == session.as_str())
        .await;
    b.wait_for_text(&item, "$3.50", 5).await;
    b.click(&format!("{item} [data-action=raise-resume]")).await;
    b.wait_for(dialog, 5).await;
    b.click(&format!("{dialog} [data-action=force-resume]"))
        .await;
    runner
        .expect("resume_session", 10, |f| f["sessionId"] == session.as_str())
        .await;
    wait_state(&admin, &session, "RUNNING").await;
    assert_eq!(env.budget().await, budget, "the budget is left as it is");
    b.wait_for_text("#budget-paused", "No session is paused for budget", 5)
        .await;
    env.finish().await;
}
