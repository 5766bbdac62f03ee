//! The update pipeline over real HTTP with simulated runners heartbeating (docs/api.md, section 7):
//! versions and discovery, builds, every rollout transition, desired builds across a fleet,
//! org channels, automation with a controlled clock, and restart in the middle of a rollout.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::runner::{Channel, SimRunner, register};
use common::{BinaryServer, Client, TestServer, eventually, tmp_dir};
use futures_util::future::join_all;
use serde_json::{Value, json};

const FAST: &str = "[runners]\nrestartGraceMs = 1\n";

async fn add_build(c: &Client, id: &str, codex: &str) -> Value {
    let r = c
        .post(
            "/api/v1/builds",
            json!({"buildId": id, "runnerVersion": "1.4.0", "builtAt": "2026-11-20T10:00:00.000Z",
                   "runtimeVersions": {"codex": codex, "claude_code": "2.1.0"}, "metadata": {"commit": "abc"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data().clone()
}

async fn rollout(c: &Client, build: &str, channel: &str, extra: Value) -> Value {
    let mut body = json!({"buildId": build, "channel": channel});
    if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
        b.extend(x);
    }
    let r = c.post("/api/v1/rollouts", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.data().clone()
}

async fn verb(c: &Client, id: &str, verb: &str) -> common::Resp {
    let body = if verb == "cancel" {
        json!({"reason": "operator said so"})
    } else {
        json!({})
    };
    c.post(&format!("/api/v1/rollouts/{id}/{verb}"), body).await
}

async fn verb_ok(c: &Client, id: &str, v: &str) -> Value {
    let r = verb(c, id, v).await;
    assert_eq!(r.status, 200, "{v}: {}", r.text);
    r.data().clone()
}

/// Heartbeats reporting `build` and returns the desired build id.
async fn desired(r: &SimRunner, build: Option<&str>) -> Option<String> {
    let mut body = r.heartbeat_body(&[]);
    body["buildId"] = json!(build);
    let resp = r
        .client
        .post(&format!("/api/v1/runners/{}/heartbeat", r.id), body)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.data()["desiredBuild"]["buildId"]
        .as_str()
        .map(str::to_owned)
}

async fn fleet_of(admin: &Client, n: usize, prefix: &str) -> Vec<SimRunner> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let regs = join_all(chunk.iter().map(|i| {
            let host = format!("{prefix}-{i}");
            async move { register(admin, &host, &["codex"], Some(2), &[]).await.0 }
        }))
        .await;
        out.extend(regs);
    }
    out
}

/// Every runner's desired build, each reporting what it was told last time (`runs`).
async fn poll_fleet(
    fleet: &[SimRunner],
    runs: &mut BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for chunk in fleet.chunks(100) {
        let answers = join_all(chunk.iter().map(|r| {
            let build = runs.get(&r.id).cloned().flatten();
            async move { (r.id.clone(), desired(r, build.as_deref()).await) }
        }))
        .await;
        out.extend(answers);
    }
    runs.clone_from(&out);
    out
}

fn holders(m: &BTreeMap<String, Option<String>>, build: &str) -> BTreeSet<String> {
    m.iter()
        .filter(|(_, b)| b.as_deref() == Some(build))
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test]
async fn versions_are_registered_discovered_and_canaried() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let r = admin
        .post(
            "/api/v1/providers/codex/versions",
            json!({"version": "0.9.0", "releasedAt": "2026-11-01T00:00:00.000Z", "sourceUrl": "https://example.org/codex/0.9.0"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.data()["canaryPassed"], false);
    assert_eq!(r.data()["runnerCount"], 0);
    assert_eq!(r.data()["releasedAt"], "2026-11-01T00:00:00.000Z");
    // Registering again updates, it does not duplicate.
    let r = admin
        .post(
            "/api/v1/providers/codex/versions",
            json!({"version": "0.9.0", "sourceUrl": "https://example.org/v2"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["sourceUrl"], "https://example.org/v2");
    // Bad input changes nothing.
    admin
        .post("/api/v1/providers/cursor/versions", json!({"version": "1"}))
        .await
        .expect_error(400, "INVALID_PROVIDER");
    let r = admin
        .post(
            "/api/v1/providers/codex/versions",
            json!({"version": "has space", "releasedAt": "yesterday"}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), vec!["version", "releasedAt"]);

    // A runner reports versions nobody registered: they are recorded with firstSeenAt.
    let mut org_stream = Channel::open(&admin, "/api/v1/ws").await;
    let sub = org_stream
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(sub["event"], "subscribed");
    let (runner, _) = register(&admin, "host-a", &["codex"], None, &[]).await;
    runner.heartbeat().await; // codex 0.9.1, claude_code 2.1.0
    let event = loop {
        let e = org_stream.expect("event").await;
        if e["event"] == "version_discovered" {
            break e;
        }
    };
    assert_eq!(event["data"]["runnerId"], json!(runner.id));
    let versions = eventually(5, || async {
        let r = admin.get("/api/v1/providers/codex/versions").await;
        let items = r.data().as_array().unwrap().clone();
        (items.len() == 2).then_some(items)
    })
    .await;
    let new = versions.iter().find(|v| v["version"] == "0.9.1").unwrap();
    assert_eq!(new["firstSeenAt"], "2026-11-18T11:06:40.000Z");
    assert_eq!(new["runnerCount"], 1);
    // Newest first: the discovered one was "released" when first seen, after 0.9.0.
    assert_eq!(versions[0]["version"], "0.9.1");
    let claude = admin.get("/api/v1/providers/claude_code/versions").await;
    assert_eq!(claude.data()[0]["version"], "2.1.0");

    // Canary verdicts.
    let r = admin
        .post(
            "/api/v1/providers/codex/versions/0.9.1/canary",
            json!({"passed": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["canaryPassed"], true);
    assert_eq!(r.data()["canaryPassedAt"], "2026-11-18T11:06:40.000Z");
    admin
        .post(
            "/api/v1/providers/codex/versions/7.7.7/canary",
            json!({"passed": true}),
        )
        .await
        .expect_error(404, "VERSION_NOT_FOUND");
    admin
        .post("/api/v1/providers/codex/versions/0.9.1/canary", json!({}))
        .await
        .expect_error(400, "VALIDATION_ERROR");

    // Who may: org tokens read, runner tokens do not, only admins write.
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    assert_eq!(
        org.get("/api/v1/providers/codex/versions").await.status,
        200
    );
    org.post("/api/v1/providers/codex/versions", json!({"version": "1"}))
        .await
        .expect_error(403, "FORBIDDEN");
    runner
        .client
        .get("/api/v1/providers/codex/versions")
        .await
        .expect_error(403, "FORBIDDEN");
    s.stop().await;
}

#[tokio::test]
async fn builds_register_list_and_change_status() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let b = add_build(&admin, "build-1", "0.9.0").await;
    assert_eq!(b["status"], "testing");
    assert_eq!(b["recommendation"], "acceptable");
    assert_eq!(b["metadata"]["commit"], "abc");
    let r = admin
        .post(
            "/api/v1/builds",
            json!({"buildId": "build-2", "runnerVersion": "1.5.0", "builtAt": "2026-11-21T10:00:00.000Z",
                   "runtimeVersions": {"gemini_cli": "3.0"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    admin
        .post(
            "/api/v1/builds",
            json!({"buildId": "build-1", "runnerVersion": "1", "builtAt": "2026-11-21T10:00:00.000Z", "runtimeVersions": {}}),
        )
        .await
        .expect_error(409, "BUILD_ALREADY_EXISTS");
    let r = admin
        .post(
            "/api/v1/builds",
            json!({"buildId": "bad id", "builtAt": "nope", "runtimeVersions": {"codex": 3}}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(
        r.issue_paths(),
        vec![
            "buildId",
            "runnerVersion",
            "builtAt",
            "runtimeVersions.codex"
        ]
    );

    // Newest builtAt first; filters; pages.
    let list = admin.get("/api/v1/builds").await;
    assert_eq!(list.data()["total"], 2);
    assert_eq!(list.data()["items"][0]["buildId"], "build-2");
    let codex = admin.get("/api/v1/builds?providerId=codex").await;
    assert_eq!(codex.data()["total"], 1);
    assert_eq!(codex.data()["items"][0]["buildId"], "build-1");
    let page2 = admin.get("/api/v1/builds?pageSize=1&page=2").await;
    assert_eq!(page2.data()["items"][0]["buildId"], "build-1");
    assert_eq!(page2.data()["hasMore"], false);
    admin
        .get("/api/v1/builds?status=great")
        .await
        .expect_error(400, "VALIDATION_ERROR");
    admin
        .get("/api/v1/builds/nope")
        .await
        .expect_error(404, "BUILD_NOT_FOUND");

    // Status changes: recommendation follows unless given; known_bad is final.
    let r = admin
        .post(
            "/api/v1/builds/build-1/status",
            json!({"status": "known_good"}),
        )
        .await;
    assert_eq!(r.data()["status"], "known_good");
    assert_eq!(r.data()["recommendation"], "recommended");
    let r = admin
        .post(
            "/api/v1/builds/build-2/status",
            json!({"status": "deprecated", "recommendation": "acceptable"}),
        )
        .await;
    assert_eq!(r.data()["recommendation"], "acceptable");
    admin
        .post(
            "/api/v1/builds/build-2/status",
            json!({"status": "known_good", "recommendation": "blocked"}),
        )
        .await
        .expect_error(400, "VALIDATION_ERROR");
    let r = admin
        .post(
            "/api/v1/builds/build-2/status",
            json!({"status": "known_bad"}),
        )
        .await;
    assert_eq!(r.data()["recommendation"], "blocked");
    admin
        .post(
            "/api/v1/builds/build-2/status",
            json!({"status": "known_good"}),
        )
        .await
        .expect_error(409, "INVALID_STATE");
    let bad = admin.get("/api/v1/builds?status=known_bad").await;
    assert_eq!(bad.data()["items"][0]["buildId"], "build-2");

    // Audit names who did it.
    let audit = admin.get("/api/v1/audit?limit=1000").await;
    let actions: Vec<&str> = audit
        .data()
        .as_array()
        .or_else(|| audit.data()["items"].as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"build.register"), "{actions:?}");
    assert!(actions.contains(&"build.status"), "{actions:?}");
    s.stop().await;
}

#[tokio::test]
async fn every_rollout_transition_and_every_refused_one() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    let mut stream = Channel::open(&admin, "/api/v1/ws").await;
    let sub = stream
        .request(json!({"type": "subscribe_org", "orgId": "acme"}))
        .await;
    assert_eq!(sub["event"], "subscribed");
    add_build(&admin, "b1", "1").await;
    add_build(&admin, "b2", "2").await;
    add_build(&admin, "b3", "3").await;

    // Refusals at creation.
    admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "nope", "channel": "stable"}),
        )
        .await
        .expect_error(404, "BUILD_NOT_FOUND");
    admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b1", "channel": "pinned"}),
        )
        .await
        .expect_error(400, "VALIDATION_ERROR");
    let r = admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b1", "channel": "stable", "stages": [10, 5, 100]}),
        )
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    assert_eq!(r.issue_paths(), vec!["stages"]);
    admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b1", "channel": "stable", "stages": [10, 50]}),
        )
        .await
        .expect_error(400, "VALIDATION_ERROR");

    // pending → (advance) canary_testing → paused → canary_testing → rolling_out … completed.
    let r = rollout(&admin, "b1", "stable", json!({"start": false})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(
        (
            r["state"].as_str(),
            r["currentPercentage"].as_u64(),
            r["currentStage"].as_u64()
        ),
        (Some("pending"), Some(0), Some(0))
    );
    assert_eq!(r["stages"], json!([1, 10, 50, 100]));
    assert!(r.get("previousBuildId").is_none());
    let other = admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b2", "channel": "stable"}),
        )
        .await;
    other.expect_error(409, "ROLLOUT_ALREADY_ACTIVE");
    assert_eq!(
        verb(&admin, &id, "resume").await.code(),
        "INVALID_ROLLOUT_STATE"
    );
    let r = verb_ok(&admin, &id, "advance").await;
    assert_eq!(
        (r["state"].as_str(), r["currentPercentage"].as_u64()),
        (Some("canary_testing"), Some(1))
    );
    let r = verb_ok(&admin, &id, "pause").await;
    assert_eq!(r["state"], "paused");
    assert_eq!(r["pausedFrom"], "canary_testing");
    verb(&admin, &id, "advance")
        .await
        .expect_error(409, "INVALID_ROLLOUT_STATE");
    verb(&admin, &id, "pause")
        .await
        .expect_error(409, "INVALID_ROLLOUT_STATE");
    assert_eq!(
        verb_ok(&admin, &id, "resume").await["state"],
        "canary_testing"
    );
    let r = verb_ok(&admin, &id, "advance").await;
    assert_eq!(
        (
            r["state"].as_str(),
            r["currentPercentage"].as_u64(),
            r["currentStage"].as_u64()
        ),
        (Some("rolling_out"), Some(10), Some(2))
    );
    verb_ok(&admin, &id, "pause").await;
    assert_eq!(verb_ok(&admin, &id, "resume").await["state"], "rolling_out");
    assert_eq!(
        verb_ok(&admin, &id, "advance").await["currentPercentage"],
        50
    );
    let r = verb_ok(&admin, &id, "advance").await;
    assert_eq!(
        (r["state"].as_str(), r["currentPercentage"].as_u64()),
        (Some("completed"), Some(100))
    );
    for v in ["advance", "pause", "resume", "cancel"] {
        verb(&admin, &id, v)
            .await
            .expect_error(409, "INVALID_ROLLOUT_STATE");
    }

    // Next one on the channel remembers the previous build; cancel → rolled_back (final).
    let r = rollout(&admin, "b2", "stable", json!({"stages": [20, 100]})).await;
    let id2 = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(
        (r["state"].as_str(), r["currentPercentage"].as_u64()),
        (Some("canary_testing"), Some(20))
    );
    assert_eq!(r["previousBuildId"], "b1");
    let r = admin
        .post(&format!("/api/v1/rollouts/{id2}/cancel"), json!({}))
        .await;
    r.expect_error(400, "VALIDATION_ERROR");
    let r = admin
        .post(
            &format!("/api/v1/rollouts/{id2}/cancel"),
            json!({"reason": "bad smell"}),
        )
        .await;
    assert_eq!(r.data()["state"], "rolled_back");
    assert_eq!(r.data()["error"], "bad smell");
    verb(&admin, &id2, "resume")
        .await
        .expect_error(409, "INVALID_ROLLOUT_STATE");

    // canary_passed can only come from a verdict; known_bad builds are not eligible; marking
    // the target of an active rollout known_bad rolls it back.
    let r = rollout(&admin, "b3", "beta", json!({})).await;
    let id3 = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(
        (r["state"].as_str(), r["currentPercentage"].as_u64()),
        (Some("canary_testing"), Some(10))
    );
    admin
        .post("/api/v1/builds/b3/status", json!({"status": "known_bad"}))
        .await;
    let r = admin.get(&format!("/api/v1/rollouts/{id3}")).await;
    assert_eq!(r.data()["state"], "rolled_back");
    assert_eq!(r.data()["error"], "build marked known_bad");
    admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "b3", "channel": "beta"}),
        )
        .await
        .expect_error(409, "BUILD_NOT_ELIGIBLE");

    // Lists and lookups.
    let all = admin.get("/api/v1/rollouts").await;
    let ids: Vec<&str> = all
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rolloutId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id3.as_str(), id2.as_str(), id.as_str()]);
    let stable = admin
        .get("/api/v1/rollouts?channel=stable&state=completed")
        .await;
    assert_eq!(stable.data().as_array().unwrap().len(), 1);
    admin
        .get("/api/v1/rollouts?state=sideways")
        .await
        .expect_error(400, "VALIDATION_ERROR");
    admin
        .get(&format!("/api/v1/rollouts/{}", uuid_like()))
        .await
        .expect_error(404, "ROLLOUT_NOT_FOUND");
    admin
        .post(&format!("/api/v1/rollouts/{id}/explode"), json!({}))
        .await
        .expect_error(404, "NOT_FOUND");
    let org = admin.with_token(&admin.create_token("org", Some("acme")).await);
    assert_eq!(org.get("/api/v1/rollouts").await.status, 200);
    verb(&org, &id2, "advance")
        .await
        .expect_error(403, "FORBIDDEN");

    // The audit log has each verb, by whom.
    let audit = admin.get("/api/v1/audit?limit=1000").await;
    let entries = audit
        .data()
        .as_array()
        .or_else(|| audit.data()["items"].as_array())
        .unwrap()
        .clone();
    for action in [
        "rollout.create",
        "rollout.advance",
        "rollout.pause",
        "rollout.resume",
        "rollout.cancel",
    ] {
        let e = entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action}"));
        assert_eq!(e["actor"]["kind"], "admin");
    }
    // A pending rollout can be paused and cancelled before it ever starts.
    let r = rollout(&admin, "b1", "stable", json!({"start": false})).await;
    let pending = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(
        verb_ok(&admin, &pending, "pause").await["pausedFrom"],
        "pending"
    );
    let r = verb_ok(&admin, &pending, "cancel").await;
    assert_eq!(
        (r["state"].as_str(), r["currentPercentage"].as_u64()),
        (Some("rolled_back"), Some(0))
    );

    // Every change was announced on the dashboard stream (admins see pipeline events).
    let mut seen = BTreeSet::new();
    while let Some(f) = stream.recv_within(300).await {
        if f["type"] == "event" {
            seen.insert(f["event"].as_str().unwrap_or("").to_string());
        }
    }
    for name in [
        "build_registered",
        "rollout_started",
        "rollout_advanced",
        "rollout_paused",
        "rollout_resumed",
        "rollout_completed",
        "rollout_cancelled",
    ] {
        assert!(seen.contains(name), "{name} not announced: {seen:?}");
    }
    s.stop().await;
}

/// A rollout without the figures derived from runners' last heartbeats (which reach the disk
/// every 2 s, so a `kill -9` may take the last ones with it, and the judge refreshes its
/// verdict from them).
fn without_fleet_figures(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("runnersTargeted");
        m.remove("runnersConverged");
        if let Some(Value::Object(h)) = m.get_mut("health") {
            h.remove("at");
            if let Some(Value::Object(n)) = h.get_mut("newBuild") {
                for k in ["runners", "runnersOffline", "offlineRate"] {
                    n.remove(k);
                }
            }
        }
    }
    v
}

fn uuid_like() -> String {
    village::clock::random_uuid().to_string()
}

#[tokio::test]
async fn stage_percentages_reach_a_population_of_runners_and_cancel_brings_them_back() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    add_build(&admin, "old", "1").await;
    add_build(&admin, "new", "2").await;
    add_build(&admin, "newer", "3").await;
    let fleet = fleet_of(&admin, 1000, "pop").await;
    let mut runs = BTreeMap::new();

    // Nothing rolled out yet: no instruction.
    let before = poll_fleet(&fleet, &mut runs).await;
    assert!(before.values().all(Option::is_none));

    // Get everyone on "old" first.
    let r = rollout(&admin, "old", "stable", json!({"stages": [100]})).await;
    assert_eq!(r["state"], "completed");
    let all_old = poll_fleet(&fleet, &mut runs).await;
    assert_eq!(holders(&all_old, "old").len(), 1000);

    // Stages 1, 10, 50, 100 %: about that share gets "new", and nobody goes back.
    let r = rollout(&admin, "new", "stable", json!({})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(r["previousBuildId"], "old");
    let mut previous = BTreeSet::new();
    for (stage, range) in [
        (1, 2..=25),
        (10, 70..=135),
        (50, 440..=560),
        (100, 1000..=1000),
    ] {
        let seen = poll_fleet(&fleet, &mut runs).await;
        let on_new = holders(&seen, "new");
        assert!(
            range.contains(&on_new.len()),
            "stage {stage}%: {} runners",
            on_new.len()
        );
        assert!(
            previous.is_subset(&on_new),
            "a runner left the rollout at {stage}%"
        );
        assert_eq!(holders(&seen, "old").len() + on_new.len(), 1000);
        // Everyone reported what they were told: targeted = converged = on_new.
        let status = admin.get(&format!("/api/v1/rollouts/{id}")).await;
        let d = status.data().clone();
        if stage < 100 {
            // The answers above were given before the runners reported them.
            let again = poll_fleet(&fleet, &mut runs).await;
            assert_eq!(holders(&again, "new"), on_new);
            let d = admin
                .get(&format!("/api/v1/rollouts/{id}"))
                .await
                .data()
                .clone();
            assert_eq!(d["runnersTargeted"], on_new.len());
            assert_eq!(d["runnersConverged"], on_new.len());
            assert_eq!(d["currentPercentage"], stage);
            verb_ok(&admin, &id, "advance").await;
        } else {
            assert_eq!(d["state"], "completed");
        }
        previous = on_new;
    }

    // A rollout of "newer" to 50 %, then cancelled: everyone back on "new".
    let r = rollout(&admin, "newer", "stable", json!({"stages": [50, 100]})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    let seen = poll_fleet(&fleet, &mut runs).await;
    let on_newer = holders(&seen, "newer").len();
    assert!((440..=560).contains(&on_newer), "{on_newer}");
    let d = admin
        .get(&format!("/api/v1/rollouts/{id}"))
        .await
        .data()
        .clone();
    assert_eq!(d["runnersTargeted"], on_newer);
    assert_eq!(d["affectedOrgsCount"], 0, "shared runners only");
    verb_ok(&admin, &id, "cancel").await;
    let seen = poll_fleet(&fleet, &mut runs).await;
    assert_eq!(holders(&seen, "new").len(), 1000);
    s.stop().await;
}

#[tokio::test]
async fn pinned_beta_and_held_orgs() {
    let s = TestServer::start(FAST).await;
    let admin = s.admin();
    add_build(&admin, "s1", "1").await;
    add_build(&admin, "s2", "2").await;
    add_build(&admin, "beta1", "3").await;
    add_build(&admin, "pin", "4").await;
    add_build(&admin, "rotten", "5").await;
    admin
        .post(
            "/api/v1/builds/rotten/status",
            json!({"status": "known_bad"}),
        )
        .await;

    // Org configs: validation first.
    let put = |org: &str, body: Value| {
        let admin = admin.clone();
        let path = format!("/api/v1/orgs/{org}/runtime-config");
        async move { admin.put(&path, body).await }
    };
    let r = admin.get("/api/v1/orgs/acme/runtime-config").await;
    assert_eq!(
        r.data().clone(),
        json!({"orgId": "acme", "channel": "stable", "betaOptIn": false, "autoUpgrade": true, "pinnedBuildId": null})
    );
    put("acme", json!({"channel": "pinned"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    put(
        "acme",
        json!({"channel": "pinned", "pinnedBuildId": "ghost"}),
    )
    .await
    .expect_error(404, "BUILD_NOT_FOUND");
    put(
        "acme",
        json!({"channel": "pinned", "pinnedBuildId": "rotten"}),
    )
    .await
    .expect_error(409, "BUILD_NOT_ELIGIBLE");
    put("acme", json!({"channel": "stable", "pinnedBuildId": "pin"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    put("acme", json!({"channel": "weekly"}))
        .await
        .expect_error(400, "VALIDATION_ERROR");
    let r = put("acme", json!({"channel": "pinned", "pinnedBuildId": "pin"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.data()["updatedAt"], "2026-11-18T11:06:40.000Z");
    assert_eq!(put("betaco", json!({"channel": "beta"})).await.status, 200);
    assert_eq!(
        put("slowco", json!({"channel": "stable", "autoUpgrade": false}))
            .await
            .status,
        200
    );

    // Org tokens: own org only.
    let acme = admin.with_token(&admin.create_token("org", Some("acme")).await);
    assert_eq!(
        acme.get("/api/v1/orgs/acme/runtime-config").await.data()["channel"],
        "pinned"
    );
    acme.get("/api/v1/orgs/betaco/runtime-config")
        .await
        .expect_error(403, "FORBIDDEN");
    acme.put(
        "/api/v1/orgs/betaco/runtime-config",
        json!({"channel": "stable"}),
    )
    .await
    .expect_error(403, "FORBIDDEN");

    // One runner per org (org-bound join tokens) and a shared one.
    let mut runners = BTreeMap::new();
    for org in ["acme", "betaco", "slowco"] {
        let join = admin.with_token(&admin.create_token("runner_join", Some(org)).await);
        runners.insert(
            org,
            register(&join, &format!("{org}-host"), &["codex"], None, &[])
                .await
                .0,
        );
    }
    runners.insert(
        "shared",
        register(&admin, "shared-host", &["codex"], None, &[])
            .await
            .0,
    );

    // Stable gets s1 everywhere it reaches; the pinned org stays pinned; the held org stays
    // on what it runs; beta has nothing of its own and follows stable.
    rollout(&admin, "s1", "stable", json!({"stages": [100]})).await;
    assert_eq!(
        desired(&runners["acme"], None).await.as_deref(),
        Some("pin")
    );
    assert_eq!(
        desired(&runners["betaco"], None).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        desired(&runners["shared"], None).await.as_deref(),
        Some("s1")
    );
    // Held on a build the server does not know: it gets the channel's current build.
    assert_eq!(
        desired(&runners["slowco"], Some("s0")).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        desired(&runners["slowco"], Some("s1")).await.as_deref(),
        Some("s1")
    );

    // A beta rollout reaches only the beta org.
    rollout(&admin, "beta1", "beta", json!({"stages": [100]})).await;
    assert_eq!(
        desired(&runners["betaco"], Some("s1")).await.as_deref(),
        Some("beta1")
    );
    assert_eq!(
        desired(&runners["shared"], Some("s1")).await.as_deref(),
        Some("s1")
    );

    // s2 on stable: the held org does not move, the pinned org does not move.
    rollout(&admin, "s2", "stable", json!({"stages": [100]})).await;
    assert_eq!(
        desired(&runners["shared"], Some("s1")).await.as_deref(),
        Some("s2")
    );
    assert_eq!(
        desired(&runners["slowco"], Some("s1")).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        desired(&runners["acme"], Some("pin")).await.as_deref(),
        Some("pin")
    );
    assert_eq!(
        desired(&runners["betaco"], Some("beta1")).await.as_deref(),
        Some("beta1")
    );
    // The held org moves when its config changes.
    put("slowco", json!({"channel": "stable"})).await;
    assert_eq!(
        desired(&runners["slowco"], Some("s1")).await.as_deref(),
        Some("s2")
    );
    // A known_bad build is never handed out: s2 bad → stable falls back to s1.
    admin
        .post("/api/v1/builds/s2/status", json!({"status": "known_bad"}))
        .await;
    assert_eq!(
        desired(&runners["shared"], Some("s2")).await.as_deref(),
        Some("s1")
    );
    assert_eq!(
        desired(&runners["slowco"], Some("s2")).await.as_deref(),
        Some("s1")
    );
    // A held runner on a build whose rollout was cancelled goes back all the same.
    add_build(&admin, "s3", "6").await;
    put("slowco", json!({"channel": "stable", "autoUpgrade": false})).await;
    let r = rollout(&admin, "s3", "stable", json!({"stages": [50, 100]})).await;
    assert_eq!(
        desired(&runners["slowco"], Some("s3")).await.as_deref(),
        Some("s3")
    );
    verb_ok(&admin, r["rolloutId"].as_str().unwrap(), "cancel").await;
    assert_eq!(
        desired(&runners["slowco"], Some("s3")).await.as_deref(),
        Some("s1")
    );
    s.stop().await;
}

/// Runs `n` sessions on `ch` (the runner of org `org`) and ends each in `end`.
async fn run_sessions(admin: &Client, ch: &mut Channel, org: &str, n: usize, end: &str) {
    for _ in 0..n {
        let r = admin
            .post(
                "/api/v1/sessions",
                json!({"orgId": org, "providerId": "codex", "repo": {"url": "https://x.org/a"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let session = r.data()["sessionId"].as_str().unwrap().to_string();
        let f = ch.expect("assign_session").await;
        assert_eq!(f["session"]["sessionId"], session);
        ch.ack(&f).await;
        let assignment = f["assignmentId"].clone();
        for state in ["RUNNING", end] {
            let reply = ch
                .request(json!({"type": "session_state", "sessionId": session, "assignmentId": assignment, "state": state}))
                .await;
            assert_eq!(reply["type"], "ack", "{reply}");
        }
    }
}

/// Moves the clock on by `ms` in steps shorter than the heartbeat timeout, with the runner
/// beating in between (it must not look offline: that would fail the stage).
async fn pass_time(s: &TestServer, runner: &SimRunner, build: &str, ms: i64) {
    let mut left = ms;
    while left > 0 {
        let step = left.min(10_000);
        s.advance(step);
        desired(runner, Some(build)).await;
        left -= step;
    }
}

async fn rollout_until(admin: &Client, id: &str, what: impl Fn(&Value) -> bool) -> Value {
    eventually(10, || async {
        let d = admin
            .get(&format!("/api/v1/rollouts/{id}"))
            .await
            .data()
            .clone();
        what(&d).then_some(d)
    })
    .await
}

#[tokio::test]
async fn automation_starts_advances_and_holds_without_enough_sessions() {
    let s = TestServer::start(
        "[runners]\nrestartGraceMs = 1\n[pipeline]\nenableAutoRollout = true\ncanaryDurationMinutes = 1\nminSessionsForVerdict = 3\n",
    )
    .await;
    let admin = s.admin();
    add_build(&admin, "v1", "1").await;
    add_build(&admin, "v2", "2").await;
    // known_good starts a rollout on the default channel by itself.
    admin
        .post("/api/v1/builds/v2/status", json!({"status": "known_good"}))
        .await;
    let list = admin.get("/api/v1/rollouts").await;
    let r = list.data()[0].clone();
    let id = r["rolloutId"].as_str().unwrap().to_string();
    assert_eq!(
        (
            r["state"].as_str(),
            r["currentPercentage"].as_u64(),
            r["targetBuildId"].as_str()
        ),
        (Some("canary_testing"), Some(1), Some("v2"))
    );
    assert_eq!(r["createdBy"], "system");

    // A runner on the new build runs three sessions that complete.
    let (runner, _) = register(&admin, "canary-host", &["codex"], Some(5), &[]).await;
    let mut ch = runner.connect().await;
    desired(&runner, Some("v2")).await;
    run_sessions(&admin, &mut ch, "acme", 3, "COMPLETED").await;
    let d = rollout_until(&admin, &id, |d| d["health"]["newBuild"]["sessions"] == 3).await;
    assert_eq!(d["health"]["outcome"], "healthy");
    assert_eq!(
        d["state"], "canary_testing",
        "held until the canary duration has passed"
    );

    // After the hold: canary_passed, then on to the next stage by itself.
    pass_time(&s, &runner, "v2", 61_000).await;
    let d = rollout_until(&admin, &id, |d| d["state"] == "rolling_out").await;
    assert_eq!(d["currentPercentage"], 10);
    assert_eq!(d["currentStage"], 2);

    // The new stage has no sessions yet: it holds, and says why.
    pass_time(&s, &runner, "v2", 61_000).await;
    let d = rollout_until(&admin, &id, |d| {
        d["health"]["outcome"] == "insufficient_data"
    })
    .await;
    assert_eq!(d["currentPercentage"], 10);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        admin.get(&format!("/api/v1/rollouts/{id}")).await.data()["currentPercentage"],
        10
    );

    // Enough healthy sessions and it moves on.
    run_sessions(&admin, &mut ch, "acme", 3, "COMPLETED").await;
    rollout_until(&admin, &id, |d| d["currentPercentage"] == 50).await;
    let audit = admin.get("/api/v1/audit?limit=1000").await;
    let text = audit.text.clone();
    assert!(
        text.contains("rollout.auto_start") && text.contains("rollout.verdict"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failing_canary_is_stopped_and_everyone_goes_back() {
    let s = TestServer::start(
        "[runners]\nrestartGraceMs = 1\n[pipeline]\nminSessionsForVerdict = 4\nmaxFailureRate = 0.2\n",
    )
    .await;
    let admin = s.admin();
    add_build(&admin, "good", "1").await;
    add_build(&admin, "bad", "2").await;
    rollout(&admin, "good", "stable", json!({"stages": [100]})).await;
    let r = rollout(&admin, "bad", "stable", json!({"stages": [50, 100]})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();

    let (old_runner, _) = register(&admin, "old-host", &["codex"], Some(5), &[]).await;
    let (new_runner, _) = register(&admin, "new-host", &["codex"], Some(5), &[]).await;
    desired(&old_runner, Some("good")).await;
    desired(&new_runner, Some("bad")).await;
    let mut new_ch = new_runner.connect().await;
    // Only the new-build runner takes work: the old one has no channel.
    run_sessions(&admin, &mut new_ch, "acme", 1, "COMPLETED").await;
    run_sessions(&admin, &mut new_ch, "acme", 3, "FAILED").await;

    let d = rollout_until(&admin, &id, |d| d["state"] == "canary_failed").await;
    assert_eq!(d["health"]["outcome"], "unhealthy");
    assert_eq!(d["health"]["newBuild"]["sessions"], 4);
    assert_eq!(d["health"]["newBuild"]["failed"], 3);
    assert_eq!(d["health"]["newBuild"]["failureRate"], 0.75);
    assert!(d["error"].as_str().unwrap().contains("75.0%"), "{d}");
    let b = admin.get("/api/v1/builds/bad").await;
    assert_eq!(b.data()["status"], "known_bad");
    // Every runner is told to run the previous build.
    assert_eq!(
        desired(&new_runner, Some("bad")).await.as_deref(),
        Some("good")
    );
    assert_eq!(
        desired(&old_runner, Some("good")).await.as_deref(),
        Some("good")
    );
    for v in ["advance", "pause", "resume", "cancel"] {
        verb(&admin, &id, v)
            .await
            .expect_error(409, "INVALID_ROLLOUT_STATE");
    }
    s.stop().await;
}

#[tokio::test]
async fn runners_of_the_new_build_going_offline_stop_a_later_stage() {
    let s = TestServer::start(
        "[runners]\nrestartGraceMs = 1\nheartbeatTimeoutMs = 1000\nlostAfterMs = 600000\n[pipeline]\nmaxOfflineRate = 0.4\n",
    )
    .await;
    let admin = s.admin();
    add_build(&admin, "a", "1").await;
    add_build(&admin, "b", "2").await;
    rollout(&admin, "a", "stable", json!({"stages": [100]})).await;
    let r = rollout(&admin, "b", "stable", json!({"stages": [10, 60, 100]})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    let d = verb_ok(&admin, &id, "advance").await;
    assert_eq!(d["state"], "rolling_out");
    let fleet = fleet_of(&admin, 4, "off").await;
    for r in &fleet {
        desired(r, Some("b")).await;
    }
    // Two of four stay silent past the timeout: 50 % > 40 %.
    s.advance(1_500);
    desired(&fleet[0], Some("b")).await;
    desired(&fleet[1], Some("b")).await;
    let d = rollout_until(&admin, &id, |d| d["state"] == "rolled_back").await;
    assert!(
        d["error"].as_str().unwrap().contains("2 of 4 runners"),
        "{d}"
    );
    assert_eq!(d["health"]["newBuild"]["runnersOffline"], 2);
    assert_eq!(
        admin.get("/api/v1/builds/b").await.data()["status"],
        "known_bad"
    );
    assert_eq!(desired(&fleet[0], Some("b")).await.as_deref(), Some("a"));
    s.stop().await;
}

#[tokio::test]
async fn a_rollout_survives_kill_9_and_restart_exactly() {
    let (_dir, data) = tmp_dir();
    let mut server = BinaryServer::spawn(&data, &[("VILLAGE_RUNNERS_RESTART_GRACE_MS", "1")]);
    let admin = server.admin();
    add_build(&admin, "r1", "1").await;
    add_build(&admin, "r2", "2").await;
    rollout(&admin, "r1", "stable", json!({"stages": [100]})).await;
    let r = rollout(&admin, "r2", "stable", json!({})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    verb_ok(&admin, &id, "advance").await;
    verb_ok(&admin, &id, "pause").await;
    admin
        .put(
            "/api/v1/orgs/acme/runtime-config",
            json!({"channel": "beta", "autoUpgrade": false}),
        )
        .await;
    let population = fleet_of(&admin, 40, "pop").await;
    let mut runs = BTreeMap::new();
    poll_fleet(&population, &mut runs).await;
    let answers = poll_fleet(&population, &mut runs).await;
    // The judge records its first verdict on the paused stage; wait for it so the copy is final.
    let before =
        without_fleet_figures(rollout_until(&admin, &id, |d| d.get("health").is_some()).await);
    let builds = admin.get("/api/v1/builds").await.data().clone();
    let config = admin
        .get("/api/v1/orgs/acme/runtime-config")
        .await
        .data()
        .clone();
    server.kill9();

    let server = BinaryServer::spawn(&data, &[("VILLAGE_RUNNERS_RESTART_GRACE_MS", "1")]);
    let admin = server.admin();
    let after = admin
        .get(&format!("/api/v1/rollouts/{id}"))
        .await
        .data()
        .clone();
    assert_eq!(without_fleet_figures(after), before);
    assert_eq!(admin.get("/api/v1/builds").await.data().clone(), builds);
    assert_eq!(
        admin
            .get("/api/v1/orgs/acme/runtime-config")
            .await
            .data()
            .clone(),
        config
    );
    // It carries on from where it was: resume into rolling_out, one active per channel.
    assert_eq!(verb_ok(&admin, &id, "resume").await["state"], "rolling_out");
    admin
        .post(
            "/api/v1/rollouts",
            json!({"buildId": "r1", "channel": "stable"}),
        )
        .await
        .expect_error(409, "ROLLOUT_ALREADY_ACTIVE");
    // Every runner gets the answer it got before the crash.
    let population: Vec<SimRunner> = join_all(population.iter().map(|r| {
        let admin = admin.clone();
        let host = r.hostname.clone();
        async move { register(&admin, &host, &["codex"], Some(2), &[]).await.0 }
    }))
    .await;
    let mut runs_after = runs.clone();
    assert_eq!(poll_fleet(&population, &mut runs_after).await, answers);
}

#[tokio::test]
async fn a_healthy_canary_passes_and_waits_for_a_human_without_automation() {
    let s = TestServer::start(
        "[runners]\nrestartGraceMs = 1\n[pipeline]\ncanaryDurationMinutes = 1\nminSessionsForVerdict = 2\n",
    )
    .await;
    let admin = s.admin();
    add_build(&admin, "c1", "1").await;
    add_build(&admin, "c2", "2").await;
    rollout(&admin, "c1", "stable", json!({"stages": [100]})).await;
    let r = rollout(&admin, "c2", "stable", json!({})).await;
    let id = r["rolloutId"].as_str().unwrap().to_string();
    let (runner, _) = register(&admin, "canary", &["codex"], Some(4), &[]).await;
    let (old, _) = register(&admin, "old", &["codex"], Some(4), &[]).await;
    desired(&runner, Some("c2")).await;
    desired(&old, Some("c1")).await;
    let mut ch = runner.connect().await;
    run_sessions(&admin, &mut ch, "acme", 2, "COMPLETED").await;
    // Healthy, but not held long enough yet.
    let d = rollout_until(&admin, &id, |d| d["health"]["outcome"] == "healthy").await;
    assert_eq!(d["state"], "canary_testing");
    pass_time(&s, &runner, "c2", 30_000).await;
    desired(&old, Some("c1")).await;
    pass_time(&s, &runner, "c2", 31_000).await;
    let d = rollout_until(&admin, &id, |d| d["state"] == "canary_passed").await;
    assert_eq!(
        d["currentPercentage"], 1,
        "a verdict does not move the percentage"
    );
    // Without automation it stays there until someone advances it.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        admin.get(&format!("/api/v1/rollouts/{id}")).await.data()["state"],
        "canary_passed"
    );
    let d = verb_ok(&admin, &id, "pause").await;
    assert_eq!(d["pausedFrom"], "canary_passed");
    assert_eq!(
        verb_ok(&admin, &id, "resume").await["state"],
        "canary_passed"
    );
    let d = verb_ok(&admin, &id, "advance").await;
    assert_eq!(
        (d["state"].as_str(), d["currentPercentage"].as_u64()),
        (Some("rolling_out"), Some(10))
    );
    s.stop().await;
}

/// A runner that reports a new version label on every heartbeat adds at most
/// `pipeline.maxDiscoveredVersionsPerRunner` of them to the version list; others still can.
#[tokio::test]
async fn a_runner_cannot_fill_the_version_list() {
    let s = TestServer::start("[pipeline]\nmaxDiscoveredVersionsPerRunner = 2\n").await;
    let admin = s.admin();
    let (noisy, _) = register(&admin, "noisy", &["codex"], None, &[]).await;
    let (quiet, _) = register(&admin, "quiet", &["codex"], None, &[]).await;
    let versions = || async {
        let r = admin.get("/api/v1/providers/codex/versions").await;
        r.data()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let beat = |r: &SimRunner, version: &str| {
        let mut body = r.heartbeat_body(&[]);
        body["runtimeVersions"] = json!({"codex": version});
        (format!("/api/v1/runners/{}/heartbeat", r.id), body)
    };
    for (n, version) in ["9.0.1", "9.0.2", "9.0.3", "9.0.4"].iter().enumerate() {
        let (path, body) = beat(&noisy, version);
        assert_eq!(noisy.client.post(&path, body).await.status, 200);
        if n < 2 {
            // Each recorded before the next is reported.
            common::eventually(5, || async {
                versions().await.contains(*version).then_some(())
            })
            .await;
        }
    }
    // Another runner's new version is recorded; by then the noisy runner's would have been.
    let (path, body) = beat(&quiet, "9.1.0");
    assert_eq!(quiet.client.post(&path, body).await.status, 200);
    common::eventually(5, || async {
        versions().await.contains("9.1.0").then_some(())
    })
    .await;
    let all = versions().await;
    assert!(all.contains("9.0.1") && all.contains("9.0.2"), "{all:?}");
    assert!(!all.contains("9.0.3") && !all.contains("9.0.4"), "{all:?}");
    s.stop().await;
}
