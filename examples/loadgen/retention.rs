//! Two scenarios of a database that has lived a while:
//!
//! `startup [--sessions 100000] [--chunks 10]` fills a database with `--sessions` sessions (1 %
//! queued, the rest finished recently, their purge timers a day away) and `--chunks` output chunks
//! each, written through the store as the server writes them, then times the real `village
//! serve` from its start to its first `200` of `/readyz`: three starts after a clean stop
//! (SIGTERM) and three after `kill -9` (redb repairs an unclean file at open). Target:
//! `STARTUP_TARGET`.
//!
//! `week [--runners 200] [--output-kib 32]` runs a week of a fleet through the store on a
//! manual clock: each simulated hour every runner finishes `60 / SESSION_MINUTES` sessions
//! with `--output-kib` KiB of output in 1 KiB chunks, the clock moves an hour and the real
//! sweeper purges what is past `sessions.sessionDataTtlHours` (24 h). It prints the file's size
//! at the end of each day, the longest purge job (the writer is never held long: purges go
//! in steps of `PURGE_ROWS_PER_SWEEP` rows), then `village compact`'s result and a start of
//! the server on the week's file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;
use village::clock::{ManualClock, Millis, RandomIds, SharedClock};
use village::config::Config;
use village::events::EventBus;
use village::sessions::SessionService;
use village::sessions::model::{
    OutputChunk, OutputStream, Provider, Repo, Session, SessionOptions, SessionState, Timer,
    TimerKind, Usage,
};
use village::store::{Store, StoreError};

/// Ready within this long of its start, whatever the database holds.
const STARTUP_TARGET: Duration = Duration::from_secs(3);
/// How long a simulated session runs (each runner runs one at a time).
const SESSION_MINUTES: u64 = 40;
/// Simulated time starts here (2026-11-01).
const WEEK_START_MS: Millis = 1_793_491_200_000;

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
        })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A finished (or queued) session as the server stores one.
fn session(id: Uuid, org: &str, created_at: Millis, state: SessionState) -> Session {
    let finished = state.is_terminal();
    Session {
        id,
        org_id: org.to_owned(),
        provider: Provider::ClaudeCode,
        repo: Repo {
            url: "https://github.com/acme/app.git".to_owned(),
            branch: "main".to_owned(),
            commit: "4f2a9c1e".to_owned(),
        },
        task: Some("Fix the flaky integration test in the payments module".to_owned()),
        options: SessionOptions {
            timeout_minutes: None,
            env: Default::default(),
            dangerously_skip_permissions: false,
            required_features: Vec::new(),
        },
        state,
        created_at,
        started_running_at: finished.then_some(created_at + 2_000),
        completed_at: finished.then_some(created_at + (SESSION_MINUTES * 60_000) as Millis),
        end_reason: None,
        error: None,
        runner_id: None,
        assignment_id: None,
        assigned_at: None,
        runner_history: Vec::new(),
        usage: Usage {
            tokens_in: 182_000,
            tokens_out: 24_000,
            api_calls: 61,
            compute_seconds: 2_400.0,
            cost_usd: 1.92,
        },
        timeout_ms: 3_600_000,
        output_bytes: 0,
        workspace_size_bytes: None,
        updated_at: created_at,
    }
}

/// A line of agent output about `bytes` long.
fn output_line(seq: u64, bytes: usize) -> String {
    let mut line = format!("[{seq:>6}] running cargo test --workspace: ");
    while line.len() + 1 < bytes {
        line.push_str("ok ");
    }
    line.truncate(bytes.saturating_sub(1));
    line.push('\n');
    line
}

/// Writes `sessions` sessions, each with `chunks` chunks of `chunk_bytes` and its events, as
/// finished (with a purge timer `ttl_ms` after its end) or, when `queued`, waiting in the queue.
async fn write_sessions(
    store: &Store,
    sessions: Vec<(Uuid, Millis, bool)>,
    chunks: u64,
    chunk_bytes: usize,
    ttl_ms: Millis,
) {
    store
        .write(move |w| {
            for (id, at, queued) in sessions {
                let state = if queued {
                    SessionState::Queued
                } else {
                    SessionState::Completed
                };
                let mut s = session(id, "acme", at, state);
                let mut offset = 0;
                if !queued {
                    for seq in 1..=chunks {
                        let data = output_line(seq, chunk_bytes);
                        let len = data.len() as u64;
                        let chunk = OutputChunk {
                            seq,
                            stream: OutputStream::Stdout,
                            data,
                            at: at + seq as Millis,
                            offset,
                        };
                        w.put_output(id, &chunk)?;
                        offset += len;
                    }
                    s.output_bytes = offset;
                    let end = s.completed_at.unwrap_or(at);
                    w.set_timer(Timer {
                        due: end + ttl_ms,
                        kind: TimerKind::SessionPurge,
                        session_id: id,
                        other_id: Uuid::nil(),
                    })?;
                }
                w.put_session(&s)?;
                for (kind, summary) in [
                    ("session_created", "Session created"),
                    ("state_changed", "QUEUED"),
                    ("state_changed", "RUNNING"),
                    ("session_completed", "Session completed"),
                ]
                .into_iter()
                .take(if queued { 2 } else { 4 })
                {
                    w.append_event(id, kind, summary.to_owned(), at, None)?;
                }
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("writing sessions");
}

/// Opens the database once no process holds it (a dropped store's writer lets go a moment
/// after the last handle).
async fn wait_until_free(db: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while redb::Database::open(db).is_err() {
        assert!(Instant::now() < deadline, "{} stays held", db.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `village serve` child on `data_dir`.
struct Server {
    child: tokio::process::Child,
    port: u16,
}

impl Server {
    fn spawn(village: &Path, data_dir: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = tokio::process::Command::new(village)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("VILLAGE_BIN")
            .env("VILLAGE_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting village serve");
        Server { child, port }
    }

    /// `GET /readyz` answers 200.
    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let ask = b"GET /readyz HTTP/1.1\r\nHost: village\r\nConnection: close\r\n\r\n";
        if s.write_all(ask).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200"
    }

    /// Time from `started` to the first ready answer.
    async fn time_to_ready(&mut self, started: Instant) -> Duration {
        loop {
            if self.ready().await {
                return started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("village serve exited: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "not ready in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM, and how long it took to exit.
    async fn stop(mut self) -> Duration {
        let began = Instant::now();
        self.signal("-TERM");
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        began.elapsed()
    }

    async fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }
}

fn village_or_exit() -> Option<PathBuf> {
    let found = super::village_binary();
    if found.is_none() {
        eprintln!(
            "no village binary next to loadgen: `cargo build --release --example loadgen --bin village`, or set VILLAGE_BIN"
        );
    }
    found
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("village-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the scratch dir");
    dir
}

/// Starts the server on `dir` `runs` times after a clean stop and `runs` times after a
/// `kill -9`; returns the slowest time to ready.
async fn time_starts(village: &Path, dir: &Path, runs: usize) -> Duration {
    let mut clean = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut server = Server::spawn(village, dir);
        clean.push(server.time_to_ready(started).await);
        stops.push(server.stop().await);
    }
    let mut crashed = Vec::new();
    for _ in 0..runs {
        // A server that dies mid-flight: the next open repairs the file.
        let mut server = Server::spawn(village, dir);
        server.time_to_ready(Instant::now()).await;
        server.kill9().await;
        let started = Instant::now();
        let mut server = Server::spawn(village, dir);
        crashed.push(server.time_to_ready(started).await);
        server.stop().await;
    }
    let ms = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  start to ready after a clean stop (ms): {}", ms(&clean));
    println!("  start to ready after kill -9 (ms):      {}", ms(&crashed));
    println!("  SIGTERM to exit (ms):                   {}", ms(&stops));
    clean.into_iter().chain(crashed).max().unwrap_or_default()
}

/// Fills `db` with `sessions` sessions created one millisecond apart from `first_ms` on.
async fn fill(db: &Path, sessions: u64, chunks: u64, first_ms: Millis) {
    let store = Store::open(db, EventBus::new(16)).expect("opening the database");
    let ttl_ms = 24 * 3_600_000;
    let mut at = first_ms;
    let batch = 1_000;
    for start in (0..sessions).step_by(batch) {
        let ids: Vec<(Uuid, Millis, bool)> = (start..(start + batch as u64).min(sessions))
            .map(|n| {
                at += 1;
                (
                    village::clock::time_prefixed(village::clock::random_uuid(), at),
                    at,
                    n % 100 == 0,
                )
            })
            .collect();
        write_sessions(&store, ids, chunks, 120, ttl_ms).await;
    }
    drop(store);
    wait_until_free(db).await;
}

pub async fn startup_scenario(args: &[String]) -> ExitCode {
    let Some(village) = village_or_exit() else {
        return ExitCode::from(2);
    };
    let sessions = flag(args, "--sessions", 100_000);
    let chunks = flag(args, "--chunks", 10);
    let dir = scratch_dir("startup");
    let db = dir.join("village.redb");
    println!(
        "startup: {sessions} sessions, {chunks} output chunks each ({} in all), 1 % queued",
        sessions * chunks
    );
    let filled = Instant::now();
    // Sessions of the last hours: none is due for its purge while the server runs.
    let now_ms = chrono::Utc::now().timestamp_millis();
    fill(&db, sessions, chunks, now_ms - sessions as Millis).await;
    println!(
        "  filled in {:.1} s: {:.0} MiB",
        filled.elapsed().as_secs_f64(),
        mib(file_size(&db))
    );
    let mut load_ok = holds_its_output(&db, sessions, chunks);
    let slowest = time_starts(&village, &dir, 3).await;
    let _ = std::fs::remove_dir_all(&dir);

    // The same database two days later: every finished session is due for its purge.
    let dir = scratch_dir("startup-backlog");
    let db = dir.join("village.redb");
    fill(&db, sessions, chunks, now_ms - 2 * 24 * 3_600_000).await;
    load_ok &= holds_its_output(&db, sessions, chunks);
    println!("  with every finished session due for its purge:");
    let started = Instant::now();
    let mut server = Server::spawn(&village, &dir);
    let backlog_ready = server.time_to_ready(started).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready_while_purging = {
        let t = Instant::now();
        assert!(server.ready().await, "not ready while purging");
        t.elapsed()
    };
    let stop = server.stop().await;
    println!(
        "  start to ready {:.0} ms; /readyz 1 s into the purge answered in {:.1} ms; SIGTERM to exit {:.0} ms",
        backlog_ready.as_secs_f64() * 1000.0,
        ready_while_purging.as_secs_f64() * 1000.0,
        stop.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    let slowest = slowest.max(backlog_ready);
    let pass = slowest < STARTUP_TARGET && stop < Duration::from_secs(10);
    println!(
        "  slowest start {:.0} ms (target < {} ms), stop during the purge {:.0} ms (< 10 000): {}",
        slowest.as_secs_f64() * 1000.0,
        STARTUP_TARGET.as_millis(),
        stop.as_secs_f64() * 1000.0,
        super::judged(load_ok, pass)
    );
    super::exit_code(load_ok && pass)
}

/// Whether the filled file is at least as large as the output chunks it should hold (120 bytes
/// each): a fill that fell short would make the start-up look faster than it is.
fn holds_its_output(db: &Path, sessions: u64, chunks: u64) -> bool {
    let least = sessions * chunks * 120;
    super::load_check(
        file_size(db) >= least,
        format_args!(
            "the file holds {:.0} MiB, at least the {:.0} MiB of output of {sessions} sessions \
             with {chunks} chunks each",
            mib(file_size(db)),
            mib(least)
        ),
    )
}

pub async fn week_scenario(args: &[String]) -> ExitCode {
    let Some(village) = village_or_exit() else {
        return ExitCode::from(2);
    };
    let runners = flag(args, "--runners", 200);
    let output_kib = flag(args, "--output-kib", 32);
    let days = flag(args, "--days", 7);
    let per_hour = runners * 60 / SESSION_MINUTES;
    let dir = scratch_dir("week");
    let db = dir.join("village.redb");
    let config = Config::default();
    let ttl_ms = config.sessions.session_data_ttl.as_millis() as Millis;
    println!(
        "week: {runners} runners, {per_hour} sessions an hour with {output_kib} KiB of output each, kept {} h after they end, {days} days",
        ttl_ms / 3_600_000
    );
    let store = Store::open(&db, EventBus::new(16)).expect("opening the database");
    let clock = ManualClock::new(WEEK_START_MS);
    let shared: SharedClock = clock.clone();
    let sessions =
        SessionService::new(store.clone(), shared, Arc::new(RandomIds), &config.sessions);
    let began = Instant::now();
    let mut sweep_times: Vec<Duration> = Vec::new();
    // The longest a purge job ran in the writer (its commit aside), in microseconds.
    let mut purge_job_max = 0u64;
    let mut created = 0u64;
    for hour in 0..days * 24 {
        let now = WEEK_START_MS + (hour * 3_600_000) as Millis;
        let mut batch = Vec::new();
        for n in 0..per_hour {
            let at = now + (n * 3_600_000 / per_hour) as Millis;
            batch.push((
                village::clock::time_prefixed(village::clock::random_uuid(), at),
                at,
                false,
            ));
            if batch.len() == 50 {
                write_sessions(&store, std::mem::take(&mut batch), output_kib, 1024, ttl_ms).await;
            }
        }
        if !batch.is_empty() {
            write_sessions(&store, batch, output_kib, 1024, ttl_ms).await;
        }
        created += per_hour;
        clock.advance_ms(3_600_000);
        loop {
            let t = Instant::now();
            store
                .stats
                .slowest_jobs_micros
                .store(0, std::sync::atomic::Ordering::Relaxed);
            let more = sessions.sweep().await.expect("sweeping");
            sweep_times.push(t.elapsed());
            purge_job_max = purge_job_max.max(
                store
                    .stats
                    .slowest_jobs_micros
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            if !more {
                break;
            }
        }
        if (hour + 1) % 24 == 0 {
            println!(
                "  day {}: {created} sessions so far, file {:.0} MiB ({:.0} s)",
                (hour + 1) / 24,
                mib(file_size(&db)),
                began.elapsed().as_secs_f64()
            );
        }
    }
    sweep_times.sort();
    let p99 = sweep_times[sweep_times.len() * 99 / 100];
    println!(
        "  sweeps: {} (purge steps of at most {} rows), each with its commit: p99 {:.1} ms, longest {:.1} ms; longest purge job in the writer {:.1} ms",
        sweep_times.len(),
        village::sessions::PURGE_ROWS_PER_SWEEP,
        p99.as_secs_f64() * 1000.0,
        sweep_times
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0,
        purge_job_max as f64 / 1000.0
    );
    let load_ok = super::load_check(
        created == days * 24 * per_hour && sweep_times.len() as u64 >= days * 24,
        format_args!(
            "{created} of {} sessions written, {} sweeps for {} hours",
            days * 24 * per_hour,
            sweep_times.len(),
            days * 24
        ),
    );
    let live = (ttl_ms as u64 / 3_600_000 + 1) * per_hour * output_kib;
    println!(
        "  output kept at the end: about {:.0} MiB ({} h of sessions)",
        live as f64 / 1024.0,
        ttl_ms / 3_600_000 + 1
    );
    drop(sessions);
    drop(store);
    wait_until_free(&db).await;
    let t = Instant::now();
    let done = village::store::backup::compact(&db).expect("compacting");
    println!(
        "  village compact: {:.0} MiB -> {:.0} MiB in {:.1} s",
        mib(done.bytes_before),
        mib(done.bytes_after),
        t.elapsed().as_secs_f64()
    );
    println!("  the server on the week's file:");
    let slowest = time_starts(&village, &dir, 1).await;
    let pass = slowest < STARTUP_TARGET;
    println!(
        "  slowest start {:.0} ms (target < {} ms): {}",
        slowest.as_secs_f64() * 1000.0,
        STARTUP_TARGET.as_millis(),
        super::judged(load_ok, pass)
    );
    let _ = std::fs::remove_dir_all(&dir);
    super::exit_code(load_ok && pass)
}
