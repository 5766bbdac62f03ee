//! Approval policies, notifications and approval links over real HTTP and the runner channel
//! (docs/api.md, "Approval policies", "Approval links", "Notifications").
#![allow(clippy::unwrap_used)]

mod common;

use common::receiver::Receiver;
use common::runner::{Channel, running_on_channel};
use common::{Client, TestServer, eventually};
use serde_json::{Value, json};

const LOCAL_RECEIVERS: &str = "[webhooks]\nallowPrivateTargets = true\n";

/// A session of org `acme` RUNNING on a simulated runner on the channel.
async fn running(admin: &Client, org: &Client) -> (Channel, String, String) {
    running_on_channel(admin, org, "worker").await
}

async fn ask(ch: &mut Channel, id: &str, assignment: &str, action: &str, context: Value) -> Value {
    let ack = ch
        .request(json!({"type": "approval_request", "sessionId": id, "assignmentId": assignment,
                        "action": action, "description": format!("wants {action}"), "context": context}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["data"].clone()
}

fn policy() -> Value {
    json!({
        "defaultDecision": "ask",
        "rules": [
            {"id": "no-force-push", "actions": ["command"], "match": {"command": "git push*--force*"}, "decision": "deny",
             "examples": {"match": [{"action": "command", "context": {"input": {"command": ["git", "push", "origin", "--force"]}}}],
                          "notMatch": [{"action": "command", "context": {"input": {"command": "git push origin"}}}]}},
            {"id": "git", "actions": ["command"], "match": {"command": "git *"}, "decision": "allow"},
            {"id": "src-edits", "actions": ["file_change"], "match": {"tool": "Edit", "path": "src/*.rs"}, "decision": "allow"},
            {"id": "secrets", "actions": ["*"], "match": {"path": "?env"}, "decision": "deny"}
        ]
    })
}

#[tokio::test]
async fn rules_decide_in_order_and_the_session_never_waits_for_them() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let path = "/api/v1/orgs/acme/approval-policy";
    // No policy saved: ask about everything.
    let r = org.get(path).await;
    assert_eq!(r.data(), &json!({"rules": [], "defaultDecision": "ask"}));
    let r = org.put(path, policy()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data(), &policy(), "saved and answered as sent");
    assert_eq!(org.get(path).await.data(), &policy());
    // Another org's token may not see it.
    let other = admin.with_token(&admin.create_token("org", Some("globex")).await);
    other.get(path).await.expect_error(403, "FORBIDDEN");

    let (mut ch, id, assignment) = running(&admin, &org).await;
    // Rule order: the force push is denied by the first rule although `git *` fits it too.
    let force_push = json!({"tool": "Bash", "input": {"command": "git push origin --force"}});
    let git_status = json!({"input": {"command": ["git", "status"]}});
    let edit = json!({"tool": "Edit", "input": {"file_path": "src/lib.rs"}});
    let env_file = json!({"input": {"path": ".env"}});
    for (action, context, decision, rule, what) in [
        (
            "command",
            force_push,
            "deny",
            "no-force-push",
            "the first rule that fits",
        ),
        (
            "command",
            git_status,
            "allow",
            "git",
            "an array command, joined",
        ),
        (
            "file_change",
            edit,
            "allow",
            "src-edits",
            "tool and path; file_path for path",
        ),
        (
            "network",
            env_file,
            "deny",
            "secrets",
            "`?` is one character; `*` any action",
        ),
    ] {
        let a = ask(&mut ch, &id, &assignment, action, context).await;
        assert_eq!(
            (a["decision"].as_str(), a["resolvedBy"].as_str()),
            (Some(decision), Some(format!("policy:{rule}").as_str())),
            "{what}: {a}"
        );
        // The decision reaches the runner like a human's.
        let f = ch.expect("approval_resolved").await;
        assert_eq!(
            (&f["approvalId"], f["decision"].as_str()),
            (&a["approvalId"], Some(decision)),
            "{what}"
        );
        ch.ack(&f).await;
    }
    // Decided requests never took the session out of RUNNING.
    let detail = org.session(&id).await;
    assert_eq!(detail["state"], "RUNNING");
    assert_eq!(detail["pendingApprovals"], json!([]));
    let events = org
        .get(&format!("/api/v1/sessions/{id}/events?limit=100"))
        .await;
    let items = events.data()["items"].as_array().unwrap().clone();
    assert!(
        !items
            .iter()
            .any(|e| e["data"]["to"] == "WAITING_FOR_APPROVAL"),
        "{items:?}"
    );
    let resolved: Vec<&Value> = items
        .iter()
        .filter(|e| e["type"] == "approval_resolved")
        .collect();
    assert_eq!(resolved.len(), 4);
    assert_eq!(resolved[0]["data"]["resolvedBy"], "policy:no-force-push");
    assert!(
        resolved[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("no-force-push"),
        "the timeline says why: {}",
        resolved[0]
    );
    // Audited under the rule's name.
    let audit = admin.get("/api/v1/audit?limit=200").await;
    let by_rule: Vec<&Value> = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approval.resolve")
        .collect();
    assert_eq!(
        by_rule.len(),
        4,
        "{}",
        audit.text.chars().take(3000).collect::<String>()
    );
    assert_eq!(by_rule[0]["actor"]["name"], "policy:no-force-push");
    assert_eq!(by_rule[0]["actor"]["kind"], "policy");

    // Nothing fits (the tool glob does not): the default asks, and the session waits.
    let a = ask(
        &mut ch,
        &id,
        &assignment,
        "file_change",
        json!({"tool": "Write", "input": {"path": "src/lib.rs"}}),
    )
    .await;
    assert!(a.get("decision").is_none(), "{a}");
    assert_eq!(org.session(&id).await["state"], "WAITING_FOR_APPROVAL");
    s.stop().await;
}

#[tokio::test]
async fn the_default_decides_when_no_rule_fits() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    org.put(
        "/api/v1/orgs/acme/approval-policy",
        json!({"rules": [], "defaultDecision": "allow"}),
    )
    .await;
    let (mut ch, id, assignment) = running(&admin, &org).await;
    let a = ask(&mut ch, &id, &assignment, "deploy", json!({})).await;
    assert_eq!(
        (a["decision"].as_str(), a["resolvedBy"].as_str()),
        (Some("allow"), Some("policy:default"))
    );
    let f = ch.expect("approval_resolved").await;
    assert_eq!(f["decision"], "allow");
    assert_eq!(org.session(&id).await["state"], "RUNNING");
    s.stop().await;
}

#[tokio::test]
async fn examples_that_fail_refuse_the_policy_and_evaluate_changes_nothing() {
    let s = TestServer::start("").await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let path = "/api/v1/orgs/acme/approval-policy";
    org.put(path, policy()).await;
    let mut bad = policy();
    bad["rules"][1]["examples"] = json!({
        "match": [{"action": "command", "context": {"input": {"command": "git log"}}},
                  {"action": "command", "context": {"input": {"command": "ls"}}}],
        "notMatch": [{"action": "command", "context": {"input": {"command": "git diff"}}}]
    });
    bad["rules"][2]["id"] = json!("git");
    bad["rules"][3]["actions"] = json!(["launch"]);
    let r = org.put(path, bad).await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        r.issue_paths(),
        ["rules[3].actions[0]"],
        "shape errors come first: {}",
        r.text
    );
    let mut bad = policy();
    bad["rules"][1]["examples"] = json!({
        "match": [{"action": "command", "context": {"input": {"command": "git log"}}},
                  {"action": "command", "context": {"input": {"command": "ls"}}}],
        "notMatch": [{"action": "command", "context": {"input": {"command": "git diff"}}}]
    });
    bad["rules"][2]["id"] = json!("git");
    let r = org.put(path, bad).await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        r.issue_paths(),
        [
            "rules[1].examples.match[1]",
            "rules[1].examples.notMatch[0]",
            "rules[2].id"
        ],
        "{}",
        r.text
    );
    assert_eq!(
        org.get(path).await.data(),
        &policy(),
        "the saved policy stays"
    );

    let audit_before = admin.get("/api/v1/audit?limit=200").await.data()["items"]
        .as_array()
        .unwrap()
        .len();
    let eval = |body: Value| {
        let org = org.clone();
        async move {
            let r = org.post(&format!("{path}/evaluate"), body).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.data().clone()
        }
    };
    assert_eq!(
        eval(json!({"action": "command", "context": {"input": {"command": "git push -f --force-with-lease"}}})).await,
        json!({"decision": "deny", "ruleId": "no-force-push"})
    );
    assert_eq!(
        eval(json!({"action": "merge"})).await,
        json!({"decision": "ask"}),
        "no ruleId when the default decides"
    );
    // A draft is evaluated instead of the saved policy, and not saved.
    let draft = json!({"rules": [{"id": "all", "actions": ["*"], "decision": "allow"}], "defaultDecision": "deny"});
    assert_eq!(
        eval(json!({"action": "merge", "policy": draft})).await,
        json!({"decision": "allow", "ruleId": "all"})
    );
    assert_eq!(org.get(path).await.data(), &policy());
    let audit_after = admin.get("/api/v1/audit?limit=200").await.data()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_before, audit_after, "a dry run writes no audit entry");
    org.post(&format!("{path}/evaluate"), json!({"action": "launch"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    s.stop().await;
}

/// The link in a generic message.
fn link_of(message: &Value) -> String {
    message["approvalUrl"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_notification_carries_a_link_that_decides_once_and_grants_nothing_else() {
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let slack = Receiver::start().await;
    let generic = Receiver::start().await;
    let r = org
        .put(
            "/api/v1/orgs/acme/notifications",
            json!({"targets": [
                {"id": "team-slack", "kind": "slack", "url": slack.url(), "events": ["approval_requested"]},
                {"id": "pager", "kind": "generic", "url": generic.url(), "events": ["*"]}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        org.get("/api/v1/orgs/acme/notifications").await.data()["targets"][0]["id"],
        "team-slack"
    );
    // Bad targets are refused as a whole.
    let bad = org
        .put(
            "/api/v1/orgs/acme/notifications",
            json!({"targets": [{"id": "X", "kind": "teams", "url": "ftp://x", "events": ["nope"]}]}),
        )
        .await;
    bad.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(bad.issue_paths(), ["targets[0].kind"], "{}", bad.text);

    let (mut ch, id, assignment) = running(&admin, &org).await;
    let a = ask(
        &mut ch,
        &id,
        &assignment,
        "command",
        json!({"tool": "Bash", "input": {"command": "rm -rf build"}}),
    )
    .await;
    let approval = a["approvalId"].as_str().unwrap().to_string();
    // Slack: text and blocks with the command, session, repo and the link.
    let message = eventually(10, || {
        let slack = slack.clone();
        async move { slack.messages().into_iter().next() }
    })
    .await;
    let text = message.to_string();
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("Approval needed (command)"),
        "{text}"
    );
    assert!(
        text.contains("rm -rf build") && text.contains(&id) && text.contains("github.com/acme/app"),
        "{text}"
    );
    let blocks = message["blocks"].as_array().unwrap();
    let button = &blocks.last().unwrap()["elements"][0];
    let slack_link = button["url"].as_str().unwrap().to_string();
    let base = format!("http://{}/approve/vlk_", s.addr);
    assert!(slack_link.starts_with(&base), "{slack_link}");
    // Generic: the webhook body with its own link.
    let message = eventually(10, || {
        let generic = generic.clone();
        async move {
            generic
                .messages()
                .into_iter()
                .find(|m| m["event"] == "approval_requested")
        }
    })
    .await;
    assert_eq!(message["data"]["approvalId"], approval.as_str());
    let link = link_of(&message);
    assert_ne!(link, slack_link, "one link per message");
    let token = link.rsplit('/').next().unwrap().to_string();

    // The link grants nothing else: as a bearer token, every documented operation that needs
    // a token answers 401 (the link's own routes need none).
    let as_bearer = s.anonymous().with_token(&token);
    let doc = s.anonymous().get("/api/v1/openapi.json").await.json;
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let public = op["security"]
                .as_array()
                .is_some_and(|alts| alts.is_empty());
            if !["get", "post", "put", "delete"].contains(&method.as_str())
                || public
                || !path.starts_with("/api/v1/")
            {
                continue;
            }
            let url = path
                .replace("{sessionId}", &id)
                .replace("{approvalId}", &approval)
                .replace("{orgId}", "acme")
                .replace(['{', '}'], "");
            // A WebSocket is asked for as one, so the upgrade itself is refused.
            let headers: &[(&str, &str)] = if op["x-websocket"] == json!(true) {
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ]
            } else {
                &[("content-type", "application/json")]
            };
            let body = if method == "get" {
                Vec::new()
            } else {
                b"{}".to_vec()
            };
            let r = as_bearer
                .raw(&method.to_ascii_uppercase(), &url, headers, body)
                .await;
            assert_eq!(
                (r.status, r.code()),
                (401, "UNAUTHORIZED"),
                "{method} {url}: {}",
                r.text
            );
            tried += 1;
        }
    }
    assert!(tried > 50, "only {tried} operations tried");

    // Viewing needs no token and does not use the link up.
    let anon = s.anonymous();
    let api = |t: &str| format!("/api/v1/approval-links/{t}");
    for _ in 0..2 {
        let v = anon.get(&api(&token)).await;
        assert_eq!(v.status, 200, "{}", v.text);
        assert_eq!(v.data()["approval"]["approvalId"], approval.as_str());
        assert_eq!(
            v.data()["session"]["repo"]["url"],
            "https://github.com/acme/app.git"
        );
        assert_eq!(v.data()["runner"]["hostname"], "worker");
    }
    assert_eq!(org.session(&id).await["state"], "WAITING_FOR_APPROVAL");
    // Deciding through it resolves the approval once, recorded as the target's link.
    let r = anon
        .post(
            &api(&token),
            json!({"decision": "allow", "reason": "from my phone"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["resolvedBy"], "link:pager");
    let f = ch.expect("approval_resolved").await;
    assert_eq!(
        (f["approvalId"].as_str(), f["decision"].as_str()),
        (Some(approval.as_str()), Some("allow"))
    );
    assert_eq!(org.session(&id).await["state"], "RUNNING");
    let audit = admin.get("/api/v1/audit?limit=200").await;
    assert!(
        audit.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "approval.resolve"
                && e["actor"]["name"] == "link:pager"
                && e["actor"]["kind"] == "link"),
        "{}",
        audit.text
    );

    // A used link, the other link of the decided approval and an unknown one look alike.
    let used = anon.post(&api(&token), json!({"decision": "deny"})).await;
    let sibling = anon.get(&api(slack_link.rsplit('/').next().unwrap())).await;
    let unknown = anon.get(&api(&format!("vlk_{}", "0".repeat(64)))).await;
    for r in [&used, &sibling, &unknown] {
        r.expect_error(404, "NOT_FOUND");
        assert_eq!(r.json["error"]["message"], used.json["error"]["message"]);
    }

    // An expired approval's link looks the same.
    let b = ask(&mut ch, &id, &assignment, "deploy", json!({})).await;
    let link_b = eventually(10, || {
        let generic = generic.clone();
        let b = b["approvalId"].clone();
        async move {
            generic
                .messages()
                .into_iter()
                .find(|m| m["event"] == "approval_requested" && m["data"]["approvalId"] == b)
                .map(|m| link_of(&m))
        }
    })
    .await;
    let token_b = link_b.rsplit('/').next().unwrap().to_string();
    assert_eq!(anon.get(&api(&token_b)).await.status, 200);
    s.advance(25 * 3600 * 1000);
    let expired = anon
        .post(&api(&token_b), json!({"decision": "allow"}))
        .await;
    expired.expect_error(404, "NOT_FOUND");
    assert_eq!(
        expired.json["error"]["message"],
        used.json["error"]["message"]
    );
    s.stop().await;
}

#[tokio::test]
async fn an_approval_the_policy_decides_sends_no_notification() {
    let s = TestServer::start(LOCAL_RECEIVERS).await;
    let admin = s.admin();
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    let generic = Receiver::start().await;
    org.put(
        "/api/v1/orgs/acme/notifications",
        json!({"targets": [{"id": "pager", "kind": "discord", "url": generic.url(), "events": ["approval_requested", "session_failed"]}]}),
    )
    .await;
    org.put(
        "/api/v1/orgs/acme/approval-policy",
        json!({"rules": [{"id": "ls", "actions": ["command"], "match": {"command": "ls*"}, "decision": "allow"}]}),
    )
    .await;
    let (mut ch, id, assignment) = running(&admin, &org).await;
    ask(
        &mut ch,
        &id,
        &assignment,
        "command",
        json!({"input": {"command": "ls -la"}}),
    )
    .await;
    ask(
        &mut ch,
        &id,
        &assignment,
        "command",
        json!({"input": {"command": "make"}}),
    )
    .await;
    let message = eventually(10, || {
        let generic = generic.clone();
        async move { generic.messages().into_iter().next() }
    })
    .await;
    let content = message["content"].as_str().unwrap();
    assert!(
        content.contains("Command: make") && content.contains("/approve/vlk_"),
        "{content}"
    );
    // The failed session's message comes after; the request the policy decided (asked first)
    // never sent one.
    let r = ch
        .request(
            json!({"type": "session_state", "sessionId": id, "assignmentId": assignment,
                        "state": "FAILED", "error": "agent crashed"}),
        )
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let all = eventually(10, || {
        let generic = generic.clone();
        async move {
            let all = generic.messages();
            (all.len() >= 2).then_some(all)
        }
    })
    .await;
    assert_eq!(all.len(), 2, "{all:?}");
    let failed = all[1]["content"].as_str().unwrap();
    assert!(
        failed.contains(&id) && failed.contains("agent crashed"),
        "{all:?}"
    );
    assert!(
        !all.iter().any(|m| m.to_string().contains("ls -la")),
        "{all:?}"
    );
    s.stop().await;
}
