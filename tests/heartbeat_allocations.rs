//! Regression guard for the heartbeat path: counted, not timed. A fleet of 10 000 runners sends
//! thousands of beats a second; each allocation and each shared lock on that path costs every one
//! of them. This test serves the real routes in-process and sends beats over one keep-alive
//! connection from a client that allocates nothing per request, and counts the allocations the
//! whole process makes per beat (hyper's request and response, routing, authentication, parsing,
//! the fleet update and the reply). It fails when a change adds allocations to that path.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::Client;
use common::runner::register;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use village::app::App;
use village::clock::{RandomIds, SharedClock, SystemClock};
use village::config::Config;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Beats counted (after as many to warm up: the connection, caches, metric series).
const BEATS: usize = 2_000;
/// The most allocations one beat may cost, the whole request included: 21 when this was
/// written (67 before the heartbeat path was trimmed, 28 before the edge answered beats
/// without warp's filter chain), most of them hyper's request and response and the beat's own
/// version map and build id. The limit leaves room for background tasks (the sweeper runs
/// every 100 ms), not for a new per-beat allocation of ours.
const MAX_ALLOCATIONS_PER_BEAT: f64 = 24.0;

/// One request, written as bytes once; the answer read into a reused buffer.
struct RawBeat {
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl RawBeat {
    fn new(runner: &str, token: &str) -> Self {
        let body = format!(
            concat!(
                r#"{{"runnerId":"{}","timestamp":"2026-11-25T10:00:00.000Z","activeSessions":[],"#,
                r#""load":{{"cpuPercent":12.5,"memoryPercent":40,"diskPercent":70}},"#,
                r#""runtimeVersions":{{"codex":"0.9.1"}},"buildId":"build-1"}}"#
            ),
            runner
        );
        let request = format!(
            "POST /api/v1/runners/{runner}/heartbeat HTTP/1.1\r\nhost: localhost\r\n\
             authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Self {
            request,
            buf: vec![0; 64 * 1024],
        }
    }

    /// Sends the beat and reads one whole response; returns its status code.
    fn send(&mut self, stream: &mut TcpStream) -> u16 {
        stream.write_all(&self.request).unwrap();
        let mut filled = 0;
        loop {
            let n = stream.read(&mut self.buf[filled..]).unwrap();
            assert!(n > 0, "the server closed the connection");
            filled += n;
            let got = &self.buf[..filled];
            let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&got[..head_end]).unwrap();
            let length = common::content_length(head).expect("a content-length");
            if filled >= head_end + 4 + length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_costs_a_fixed_number_of_allocations() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = data.path().to_path_buf();
    let clock: SharedClock = Arc::new(SystemClock);
    let app = App::start(config, clock, Arc::new(RandomIds))
        .await
        .unwrap();
    let admin_token = app.bootstrap_token.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    let admin = Client::new(addr, Some(&admin_token));
    let (runner, _) = register(&admin, "alloc-guard", &["codex"], None, &[]).await;

    let per_beat = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut beat = RawBeat::new(&runner.id, &runner.token);
        for _ in 0..BEATS {
            assert_eq!(beat.send(&mut stream), 200);
        }
        let region = Region::new(GLOBAL);
        for _ in 0..BEATS {
            assert_eq!(beat.send(&mut stream), 200);
        }
        region.change().allocations as f64 / BEATS as f64
    })
    .await
    .unwrap();

    let _ = stop.send(());
    server.await.unwrap();
    println!("allocations per heartbeat: {per_beat:.1} (limit {MAX_ALLOCATIONS_PER_BEAT})");
    assert!(
        per_beat <= MAX_ALLOCATIONS_PER_BEAT,
        "a heartbeat now costs {per_beat:.1} allocations (limit {MAX_ALLOCATIONS_PER_BEAT}): \
         something on the path allocates per beat"
    );
}
