//! The dashboard's approval features in a real browser (headless Chromium over WebDriver, against
//! the real `village` binary, with simulated runners on real runner channels): the policy editor
//! (live example checks, reordering, the API's issues next to the example they name), "Allow
//! always like this…" on a pending approval, and the approval link page on a phone, with no
//! sign-in. Each test also fails on any browser console error it did not provoke on purpose.
//! Screenshots go to `target/screenshots/`.
//!
//! One browser runs at a time (the tests take turns): see `tests/common/dashboard_env.rs`.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/dashboard_env.rs"]
mod dashboard_env;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use common::live_runner::{LiveRunner, running_session, wait_state};
use common::receiver::Receiver;
use common::{Client, eventually};
use dashboard_env::{Env, ORG, PHONE, no_sideways_scrolling, resize, value_of};
use serde_json::{Value, json};

const POLICY: &str = "/api/v1/orgs/acme/approval-policy";

/// Notifications reach a receiver on loopback, which the server allows only when told to.
const SERVER_ENV: &[(&str, &str)] = &[("VILLAGE_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")];

impl Env {
    async fn policy(&self) -> Value {
        let r = self.admin.get(POLICY).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.data().clone()
    }
}

/// The resolved approvals of a session.
async fn resolved(admin: &Client, session: &str) -> Vec<Value> {
    let r = admin
        .get(&format!("/api/v1/sessions/{session}/approvals"))
        .await;
    r.data()["resolved"].as_array().cloned().unwrap_or_default()
}

// ---- a notification receiver ------------------------------------------------------------------

/// Stands in for the browser's notifications: records what is shown, grants permission when
/// asked (counting the asks), and lets the test say whether the tab is hidden.
const FAKE_NOTIFICATIONS: &str = "
    window.__notes = [];
    window.__asks = 0;
    window.__hidden = false;
    class FakeNotification {
      constructor(title, options) { this.title = title; this.body = options && options.body; window.__notes.push(this); }
      close() { this.closed = true; }
    }
    FakeNotification.permission = 'default';
    FakeNotification.requestPermission = () => {
      window.__asks += 1;
      FakeNotification.permission = 'granted';
      return Promise.resolve('granted');
    };
    window.Notification = FakeNotification;
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => window.__hidden === true });
";

// ---- the tests ---------------------------------------------------------------------------------

/// A rule written in the editor: its example shows ✓ as it is typed, the rule is saved, a second
/// rule moved above it with the move buttons is saved in that order; then an example that the
/// rule does not honour shows ✗, and saving shows the server's refusal at that very example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_editor_checks_examples_live_and_saves_rules_in_order() {
    let mut env = Env::start(SERVER_ENV).await;
    env.expect_error(POLICY, 400);
    env.sign_in_admin(ORG).await;
    env.open("/policy", "policy").await;
    let b = &env.browser;
    b.wait_for("a[data-nav=policy][aria-current=page]", 5).await;
    b.wait_for_text("#policy-empty", "No rules yet", 5).await;
    assert_eq!(value_of(b, "#policy-default").await, "ask");

    // A first rule, with an example it must match: ✓ as soon as the rule decides it.
    b.click("#add-rule").await;
    let first = "#policy-rules [data-rule-index='0']";
    b.fill(&format!("{first} input[name=rule-id]"), "allow-git-status")
        .await;
    b.click(&format!("{first} input[name=rule-action][value=command]"))
        .await;
    b.fill(&format!("{first} input[name='rule-match.tool']"), "Bash")
        .await;
    b.fill(
        &format!("{first} input[name='rule-match.command']"),
        "git status*",
    )
    .await;
    assert_eq!(
        value_of(b, &format!("{first} select[name=rule-decision]")).await,
        "allow"
    );
    b.click(&format!("{first} [data-action=add-match-example]"))
        .await;
    let example = format!("{first} [data-examples=match] [data-example]");
    assert_eq!(
        value_of(b, &format!("{example} select[name=example-action]")).await,
        "command",
        "a new example takes the rule's action"
    );
    b.fill(
        &format!("{example} textarea[name=example-context]"),
        r#"{"tool": "Bash", "input": {"command": "git status --short"}}"#,
    )
    .await;
    let status = format!("{example} [data-example-status]");
    b.wait_for(&format!("{status}[data-result=pass]"), 10).await;
    assert!(b.text(&status).await.starts_with('✓'));
    // The check follows the rule: a glob the example does not meet turns it into ✗, and back.
    b.fill(
        &format!("{first} input[name='rule-match.command']"),
        "git log*",
    )
    .await;
    b.wait_for(&format!("{status}[data-result=fail]"), 10).await;
    assert!(b.text(&status).await.starts_with('✗'));
    b.fill(
        &format!("{first} input[name='rule-match.command']"),
        "git status*",
    )
    .await;
    b.wait_for(&format!("{status}[data-result=pass]"), 10).await;
    b.screenshot("policy-editor").await;

    b.click("#policy-save").await;
    b.wait_for_text("#policy-status", "Saved", 10).await;
    let policy = env.policy().await;
    let rules = policy["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{policy}");
    let rule = &rules[0];
    assert_eq!(rule["id"], "allow-git-status");
    assert_eq!(rule["actions"], json!(["command"]));
    assert_eq!(rule["match"]["tool"], "Bash");
    assert_eq!(rule["match"]["command"], "git status*");
    assert!(rule["match"].get("path").is_none(), "{rule}");
    assert_eq!(rule["decision"], "allow");
    assert_eq!(
        rule["examples"]["match"][0],
        json!({"action": "command", "context": {"tool": "Bash", "input": {"command": "git status --short"}}})
    );
    assert_eq!(policy["defaultDecision"], "ask");

    // A second rule, moved above the first with its button: saved in that order.
    b.click("#add-rule").await;
    let second = "#policy-rules [data-rule-index='1']";
    b.fill(&format!("{second} input[name=rule-id]"), "deny-force-push")
        .await;
    b.click(&format!("{second} input[name=rule-action][value=command]"))
        .await;
    b.fill(
        &format!("{second} input[name='rule-match.command']"),
        "git push --force*",
    )
    .await;
    b.click(&format!(
        "{second} select[name=rule-decision] option[value=deny]"
    ))
    .await;
    b.click(&format!("{second} [data-action=up]")).await;
    b.wait_until(
        "the moved rule is first",
        "const el = document.querySelector(\"#policy-rules [data-rule-index='0'] input[name=rule-id]\"); \
         return !!el && el.value === 'deny-force-push';",
        json!([]),
        5,
    )
    .await;
    // The rule now first cannot go up further.
    assert_eq!(
        b.exec(
            "return document.querySelector(\"#policy-rules [data-rule-index='0'] [data-action=up]\").disabled",
            json!([])
        )
        .await,
        json!(true)
    );
    b.click("#policy-default option[value=deny]").await;
    b.click("#policy-save").await;
    b.wait_for_text("#policy-status", "Saved", 10).await;
    let policy = env.policy().await;
    let ids: Vec<&str> = policy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["deny-force-push", "allow-git-status"], "{policy}");
    assert_eq!(policy["rules"][0]["decision"], "deny");
    assert_eq!(policy["defaultDecision"], "deny");

    // An example the rule does not honour: ✗ live, and the server refuses it at that example.
    let rule = "#policy-rules [data-rule-index='1']";
    b.click(&format!("{rule} [data-action=add-not-match-example]"))
        .await;
    let bad = format!("{rule} [data-examples=notMatch] [data-example]");
    b.fill(
        &format!("{bad} textarea[name=example-context]"),
        r#"{"tool": "Bash", "input": {"command": "git status"}}"#,
    )
    .await;
    b.wait_for(
        &format!("{bad} [data-example-status][data-result=fail]"),
        10,
    )
    .await;
    assert!(
        b.text(&format!("{bad} [data-example-status]"))
            .await
            .starts_with('✗')
    );
    b.click("#policy-save").await;
    b.wait_for_text("#policy-status", "Not saved", 10).await;
    b.wait_for(&format!("{bad}[data-invalid]"), 5).await;
    let message = b.text(&format!("{bad} [data-example-error]")).await;
    assert!(
        !message.is_empty(),
        "the server's issue is shown at the example"
    );
    // Only that example is marked; the issue is not repeated above as a stray one.
    let stray = b.text("#policy-error").await;
    assert!(!stray.contains("notMatch[0]"), "{stray}");
    b.screenshot("policy-editor-refused-example").await;
    let after = env.policy().await;
    assert_eq!(
        after["rules"], policy["rules"],
        "a refused policy changes nothing"
    );
    assert!(
        after["rules"][1]["examples"].get("notMatch").is_none()
            || after["rules"][1]["examples"]["notMatch"] == json!([]),
        "{after}"
    );

    // The editor fits a phone.
    resize(b, PHONE).await;
    no_sideways_scrolling(b, "the policy editor").await;
    b.screenshot("policy-editor-390").await;
    env.finish().await;
}

/// "Allow always like this…" on a pending approval proposes a rule from the request, puts it
/// first in the org's policy and allows the request; a later request like it is then answered
/// by the rule, and the session page says so. On the way, the approval arrives as a browser
/// notification while the tab is in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_always_like_this_adds_a_rule_first_and_allows_the_request() {
    let env = Env::start(SERVER_ENV).await;
    let put = env
        .admin
        .put(
            POLICY,
            json!({"rules": [{"id": "deny-rm", "actions": ["command"], "match": {"command": "rm *"},
                              "decision": "deny"}],
                   "defaultDecision": "ask"}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let mut runner = LiveRunner::start(&env.admin, "build-01").await;
    let session = running_session(&env.admin, ORG, "tidy the repository").await;
    env.sign_in_admin(ORG).await;
    let b = &env.browser;

    // Browser notifications, with the browser's part played by a stand-in (headless Chromium
    // shows none): the first click on the overview asks for permission, once.
    b.exec(FAKE_NOTIFICATIONS, json!([])).await;
    b.wait_for("#enable-notifications", 5).await;
    b.click("#approvals-title").await;
    b.wait_until(
        "permission is asked on the first click",
        "return window.__asks === 1 && document.getElementById('enable-notifications').hidden",
        json!([]),
        5,
    )
    .await;
    assert_eq!(
        b.exec(
            "return localStorage.getItem('village.notificationsAsked')",
            json!([])
        )
        .await,
        "true"
    );
    // An approval asked while the tab is in the background (here on another page) becomes a
    // notification; clicking it opens the overview.
    env.open("/sessions", "sessions").await;
    b.exec("window.__hidden = true;", json!([])).await;
    let context = json!({"tool": "Bash", "input": {"command": ["git", "status"], "cwd": "/home/dev/app"},
                         "agent": {"protocol": "acp"}});
    runner.ask_permission(&session, "command", "Run git status", context.clone());
    let ack = runner
        .expect("ack", 5, |f| f["data"]["action"] == "command")
        .await;
    let approval = ack["data"]["approvalId"].as_str().unwrap().to_string();
    let shown = b
        .wait_until(
            "a notification is shown",
            "return window.__notes.length && window.__notes.map((n) => ({title: n.title, body: n.body}));",
            json!([]),
            5,
        )
        .await;
    assert_eq!(
        shown,
        json!([{"title": "Approval needed: Run a command", "body": "Run git status"}])
    );
    b.exec(
        "window.__hidden = false; window.__notes[0].onclick();",
        json!([]),
    )
    .await;
    b.wait_ready("overview").await;
    let card = format!("#pending-approvals [data-approval-id='{approval}']");
    b.wait_for(&card, 5).await;
    b.click("#approvals-title").await;
    assert_eq!(
        b.exec("return window.__asks", json!([])).await,
        json!(1),
        "asked once"
    );
    b.click(&format!("{card} [data-action=allow-always]")).await;

    // The proposal, from the request.
    let dialog = "#allow-always-dialog[open]";
    b.wait_for(&format!("{dialog} form"), 5).await;
    assert_eq!(
        value_of(b, &format!("{dialog} [name=id]")).await,
        "allow-command-git-status"
    );
    assert_eq!(
        value_of(b, &format!("{dialog} [name=actions]")).await,
        "command"
    );
    assert_eq!(
        value_of(b, &format!("{dialog} [name='match.tool']")).await,
        "Bash"
    );
    assert_eq!(
        value_of(b, &format!("{dialog} [name='match.command']")).await,
        "git status"
    );
    assert_eq!(
        value_of(b, &format!("{dialog} [name='match.path']")).await,
        ""
    );
    b.wait_for(&format!("{dialog} #aa-check[data-result=pass]"), 10)
        .await;
    b.screenshot("allow-always-dialog").await;
    b.click(&format!("{dialog} [data-confirm]")).await;

    let decision = runner
        .expect("approval_resolved", 10, |f| {
            f["approvalId"] == approval.as_str()
        })
        .await;
    assert_eq!(decision["decision"], "allow");
    b.wait_until(
        "the answered approval leaves the overview",
        "return !document.querySelector(arguments[0])",
        json!([card]),
        5,
    )
    .await;
    let policy = env.policy().await;
    let rules = policy["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{policy}");
    let rule = &rules[0];
    assert_eq!(rule["id"], "allow-command-git-status", "{policy}");
    assert_eq!(rule["actions"], json!(["command"]));
    assert_eq!(rule["match"]["tool"], "Bash");
    assert_eq!(rule["match"]["command"], "git status");
    assert_eq!(rule["decision"], "allow");
    assert_eq!(
        rule["examples"]["match"][0],
        json!({"action": "command", "context": context})
    );
    assert_eq!(rules[1]["id"], "deny-rm", "the rule goes first");
    assert_eq!(policy["defaultDecision"], "ask");
    wait_state(&env.admin, &session, "RUNNING").await;

    // The next request like it is answered by the rule, without a human, and raises no
    // notification even with the tab in the background.
    b.exec("window.__hidden = true;", json!([])).await;
    runner.ask_permission(
        &session,
        "command",
        "Run git status again",
        json!({"tool": "Bash", "input": {"command": "git status"}}),
    );
    let by_rule = eventually(10, || async {
        resolved(&env.admin, &session)
            .await
            .into_iter()
            .find(|a| a["approvalId"] != approval.as_str())
    })
    .await;
    assert_eq!(by_rule["decision"], "allow", "{by_rule}");
    assert_eq!(
        by_rule["resolvedBy"], "policy:allow-command-git-status",
        "{by_rule}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        b.exec("return window.__notes.length", json!([])).await,
        json!(1),
        "no notification for a request the policy answered"
    );
    b.exec("window.__hidden = false;", json!([])).await;

    // The session page says who decided, in words.
    env.open(&format!("/sessions/{session}"), "sessions").await;
    let b = &env.browser;
    b.wait_for_text(
        "section[aria-labelledby=session-approvals-title]",
        "by rule allow-command-git-status",
        5,
    )
    .await;
    b.wait_for_text("#timeline", "by rule allow-command-git-status", 5)
        .await;
    b.screenshot("session-decided-by-rule").await;
    wait_state(&env.admin, &session, "RUNNING").await;
    env.finish().await;
}

/// The link of an approval notification, opened on a phone by someone not signed in: the page
/// shows what is asked, where and by whom, without sideways scrolling; Allow lets the session go
/// on. The link then no longer works, and says so in one neutral sentence, as does a made-up one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_link_is_answered_on_a_phone_without_signing_in() {
    let mut env = Env::start(SERVER_ENV).await;
    let receiver = Receiver::start().await;
    let r = env
        .admin
        .put(
            "/api/v1/orgs/acme/notifications",
            json!({"targets": [{"id": "on-call", "kind": "generic", "url": receiver.url(),
                                "events": ["approval_requested"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut runner = LiveRunner::start(&env.admin, "build-07").await;
    let session = running_session(&env.admin, ORG, "publish the release notes").await;
    runner.ask_permission(
        &session,
        "command",
        "Publish the package",
        json!({"tool": "Bash", "input": {"command": "npm publish --access public"}}),
    );
    let ack = runner
        .expect("ack", 5, |f| f["data"]["action"] == "command")
        .await;
    let approval = ack["data"]["approvalId"].as_str().unwrap().to_string();
    let body = receiver
        .expect("approval_requested", |b| {
            b["data"]["approvalId"] == approval.as_str()
        })
        .await;
    assert_eq!(body["orgId"], ORG, "{body}");
    assert_eq!(body["data"]["sessionId"], session.as_str(), "{body}");
    let url = body["approvalUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("no approvalUrl: {body}"));
    // Without `server.publicUrl` the link starts with the address the server listens on.
    assert!(url.starts_with(&format!("{}/approve/", env.base)), "{url}");
    let at = url
        .find("/approve/")
        .unwrap_or_else(|| panic!("not an approval link: {url}"));
    let path = url[at..].to_string();
    let token = path.trim_start_matches("/approve/").to_string();
    assert!(!token.is_empty() && !token.contains('/'), "{url}");
    env.expect_error(format!("/api/v1/approval-links/{token}"), 404);
    env.expect_error("/api/v1/approval-links/not-a-real-link", 404);

    let b = &env.browser;
    resize(b, PHONE).await;
    b.goto(&env.url(&path)).await;
    b.wait_ready("approve").await;
    b.wait_for_text("#approve-description", "Publish the package", 5)
        .await;
    let page = b.text("#main").await;
    for needle in [
        "npm publish --access public",
        "Bash",
        "https://github.com/acme/app.git",
        "publish the release notes",
        "Claude Code",
        "build-07",
    ] {
        assert!(page.contains(needle), "the page shows {needle}:\n{page}");
    }
    assert!(
        b.find("#token").await.is_none(),
        "no sign-in on an approval link"
    );
    no_sideways_scrolling(b, "the approval link page").await;
    b.screenshot("approval-link-390").await;

    b.fill("#approve-reason", "release approved").await;
    b.click("#approve-allow").await;
    b.wait_for("#approve-result[data-result=allowed]", 10).await;
    b.wait_for_text("#approve-result", "Allowed", 2).await;
    no_sideways_scrolling(b, "the answered approval link page").await;
    b.screenshot("approval-link-allowed-390").await;
    let decision = runner
        .expect("approval_resolved", 10, |f| {
            f["approvalId"] == approval.as_str()
        })
        .await;
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["reason"], "release approved");
    wait_state(&env.admin, &session, "RUNNING").await;
    let answered = resolved(&env.admin, &session).await;
    assert_eq!(answered[0]["resolvedBy"], "link:on-call", "{answered:?}");

    // Nothing of the link or of a sign-in is kept in the browser.
    let kept = b
        .exec(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)",
            json!([]),
        )
        .await;
    let kept = kept.as_str().unwrap();
    assert!(!kept.contains(&token), "the link token was stored: {kept}");
    assert!(!kept.contains("village.token"), "{kept}");

    // Used up: the same link, and a made-up one, say one neutral sentence.
    for link in [path.as_str(), "/approve/not-a-real-link"] {
        b.goto(&env.url(link)).await;
        b.wait_ready("approve").await;
        b.wait_for("#approve-result[data-result=invalid]", 5).await;
        b.wait_for_text("#approve-result", "no longer valid", 2)
            .await;
        assert!(b.find("#approve-allow").await.is_none());
    }
    no_sideways_scrolling(b, "the invalid link page").await;
    b.screenshot("approval-link-invalid-390").await;
    env.finish().await;
}
