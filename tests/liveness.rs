//! Runner liveness on disk: a flush writes what a restart needs, not every beat. Counted, not
//! timed: a heartbeat that only moves the clock and the load figures writes nothing until the
//! stored last-seen time is `LIVENESS_REFRESH_MS` old; a changed build, version list or session
//! list is written at the next flush; a clean shutdown writes everything still unsaved.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::Client;
use common::runner::{SimRunner, register};
use serde_json::json;
use village::app::App;
use village::clock::{ManualClock, RandomIds, SharedClock};
use village::config::Config;
use village::runners::LIVENESS_REFRESH_MS;

async fn beat(r: &SimRunner, build: &str) {
    let mut body = r.heartbeat_body(&[]);
    body["buildId"] = json!(build);
    let resp = r
        .client
        .post(&format!("/api/v1/runners/{}/heartbeat", r.id), body)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}

#[tokio::test]
async fn a_flush_writes_only_what_changed_or_is_due() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = data.path().to_path_buf();
    let clock = ManualClock::new(1_764_000_000_000);
    let shared: SharedClock = clock.clone();
    let app = App::start(config, shared, Arc::new(RandomIds))
        .await
        .unwrap();
    let runners = app.state.runners.clone();
    let admin_token = app.bootstrap_token.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = Client::new(listener.local_addr().unwrap(), Some(&admin_token));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));

    // The server's own flush runs every 2 s as well: count every record any flush wrote since
    // the last look, after flushing what is due now.
    let mut seen = runners.liveness_records_written();
    let mut written = async |all: bool| {
        runners.flush_liveness(all).await.unwrap();
        let now = runners.liveness_records_written();
        let n = now - seen;
        seen = now;
        n as usize
    };

    const N: usize = 20;
    let mut fleet = Vec::new();
    for i in 0..N {
        fleet.push(
            register(&admin, &format!("host-{i}"), &["codex"], None, &[])
                .await
                .0,
        );
    }
    assert_eq!(written(false).await, N, "registration");
    assert_eq!(written(false).await, 0);

    // Every runner beats with what it reported before (the first beat sets the build)...
    for r in &fleet {
        beat(r, "build-1").await;
    }
    assert_eq!(written(false).await, N, "first report");
    // ...and then again, ten times, moving only the clock: nothing is written.
    for _ in 0..10 {
        clock.advance_ms(1_000);
        for r in &fleet {
            beat(r, "build-1").await;
        }
        assert_eq!(written(false).await, 0, "no change");
    }
    // One runner reports a new build: one record.
    beat(&fleet[3], "build-2").await;
    assert_eq!(written(false).await, 1, "one build changed");
    // The stored last-seen times are refreshed once they are old enough.
    clock.advance_ms(LIVENESS_REFRESH_MS);
    for r in &fleet {
        beat(
            r,
            if r.id == fleet[3].id {
                "build-2"
            } else {
                "build-1"
            },
        )
        .await;
    }
    assert_eq!(written(false).await, N, "refresh due");
    // Beats since then are unsaved but not due; a shutdown writes them all.
    for r in &fleet[..5] {
        beat(r, "build-1").await;
    }
    assert_eq!(written(false).await, 1, "fleet[3] went back to build-1");
    assert_eq!(written(true).await, 4, "the rest at shutdown");
    assert_eq!(written(true).await, 0);

    let _ = stop.send(());
    server.await.unwrap();
}
