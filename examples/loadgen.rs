//! Load generator for Village, run in `--release`:
//!
//! ```text
//! cargo run --release --example loadgen -- sessions
//! ```
//!
//! `sessions` measures durable session creation. First a plain redb loop (one insert per
//! durable commit) sets the baseline a server without group commit could reach on this disk.
//! Then the real server runs in-process on 127.0.0.1:0 and 1, 8 and 64 clients, each on its own
//! keep-alive HTTP/1.1 connection, create sessions as fast as they are answered. Group commit
//! should let 64 clients go at least `TARGET_RATIO` times as fast as the plain loop.
//!
//! Both databases live in fresh directories under `std::env::temp_dir()` (so on the same disk),
//! removed at the end.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use redb::TableDefinition;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use village::app::App;
use village::clock::{RandomIds, SystemClock};
use village::config::Config;
use village::store::Store;

/// How long the plain redb loop runs.
const BASELINE_DURATION: Duration = Duration::from_secs(3);
/// How long each concurrency level sends requests.
const LEVEL_DURATION: Duration = Duration::from_secs(4);
/// Client counts, one level each.
const LEVELS: [usize; 3] = [1, 8, 64];
/// A single request slower than this stops the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Required speed-up of 64 clients over the plain loop.
const TARGET_RATIO: f64 = 5.0;
/// About the size of an encoded session record.
const VALUE_BYTES: usize = 600;

const PLAIN_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("plain");

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    match std::env::args().nth(1).as_deref() {
        Some("sessions") => sessions_scenario().await,
        _ => {
            eprintln!("usage: loadgen sessions");
            ExitCode::from(2)
        }
    }
}

async fn sessions_scenario() -> ExitCode {
    let parent = std::env::temp_dir();
    println!(
        "databases under {} (same parent for both)",
        parent.display()
    );
    println!(
        "plain loop {} s, then {} s per level: {:?} clients\n",
        BASELINE_DURATION.as_secs(),
        LEVEL_DURATION.as_secs(),
        LEVELS
    );
    Measurement::print_header();

    let baseline = {
        let parent = parent.clone();
        tokio::task::spawn_blocking(move || plain_redb_loop(&parent, BASELINE_DURATION))
            .await
            .unwrap()
    };
    baseline.print_row();

    let server = BenchServer::start(&parent).await;
    let mut levels = Vec::with_capacity(LEVELS.len());
    for clients in LEVELS {
        levels.push(run_level(&server, clients).await);
    }
    server.stop().await;

    let top = levels.last().unwrap();
    let ratio = top.per_sec() / baseline.per_sec();
    let pass = ratio >= TARGET_RATIO;
    println!(
        "\nratio: {:.0} creates/s at {} clients / {:.0} plain commits/s = {ratio:.2}x \
         (target >= {TARGET_RATIO}x): {}",
        top.per_sec(),
        top.clients,
        baseline.per_sec(),
        if pass { "PASS" } else { "FAIL" }
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What one run (the plain loop or one concurrency level) achieved.
struct Measurement {
    label: String,
    /// Concurrent clients (1 for the plain loop).
    clients: usize,
    ops: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Write jobs per durable commit.
    jobs_per_commit: f64,
}

impl Measurement {
    fn new(
        label: String,
        clients: usize,
        mut latencies: Vec<Duration>,
        elapsed: Duration,
        jobs_per_commit: f64,
    ) -> Self {
        latencies.sort_unstable();
        Self {
            label,
            clients,
            ops: latencies.len(),
            elapsed,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
            jobs_per_commit,
        }
    }

    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn print_header() {
        println!(
            "{:<22} {:>7} {:>9} {:>8} {:>8} {:>8} {:>11}",
            "run", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "jobs/commit"
        );
    }

    fn print_row(&self) {
        println!(
            "{:<22} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>11.2}",
            self.label,
            self.ops,
            self.per_sec(),
            millis(self.p50),
            millis(self.p99),
            millis(self.max),
            self.jobs_per_commit
        );
    }
}

/// The nearest-rank percentile `p` (0–100) of `sorted`, which must be sorted ascending.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A fresh directory under `parent`, removed when dropped.
fn scratch_dir(parent: &Path, name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("village-loadgen-{name}-"))
        .tempdir_in(parent)
        .unwrap()
}

/// One insert of a `VALUE_BYTES` value per write transaction, each committed durably (the
/// default `Durability::Immediate`), for `duration`.
fn plain_redb_loop(parent: &Path, duration: Duration) -> Measurement {
    let dir = scratch_dir(parent, "plain");
    let db = redb::Database::create(dir.path().join("plain.redb")).unwrap();
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut latencies = Vec::new();
    let start = Instant::now();
    for key in 0u64.. {
        if start.elapsed() >= duration {
            break;
        }
        let began = Instant::now();
        let txn = db.begin_write().unwrap();
        txn.open_table(PLAIN_TABLE)
            .unwrap()
            .insert(key, value.as_slice())
            .unwrap();
        txn.commit().unwrap();
        latencies.push(began.elapsed());
    }
    let elapsed = start.elapsed();
    Measurement::new("plain redb loop".into(), 1, latencies, elapsed, 1.0)
}

/// The real server, in this process.
struct BenchServer {
    addr: SocketAddr,
    admin_token: String,
    store: Store,
    shutdown: oneshot::Sender<()>,
    serving: JoinHandle<()>,
    data_dir: TempDir,
}

impl BenchServer {
    async fn start(parent: &Path) -> Self {
        let data_dir = scratch_dir(parent, "village");
        let mut config = Config::default();
        config.server.data_dir = data_dir.path().to_path_buf();
        config.sessions.max_sessions_per_org = 1_000_000;
        let app = App::start(config, Arc::new(SystemClock), Arc::new(RandomIds))
            .await
            .unwrap();
        let admin_token = app.bootstrap_token.clone().unwrap();
        let store = app.state.store.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin_token,
            store,
            shutdown,
            serving,
            data_dir,
        }
    }

    /// The store writer's counters so far.
    fn writer_counts(&self) -> WriterCounts {
        let stats = &self.store.stats;
        WriterCounts {
            commits: stats.commits.load(Ordering::Relaxed),
            jobs: stats.jobs.load(Ordering::Relaxed),
            job_micros: stats.job_micros.load(Ordering::Relaxed),
            commit_micros: stats.commit_micros.load(Ordering::Relaxed),
        }
    }

    /// Stops serving, then removes the data directory.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(SHUTDOWN_TIMEOUT, self.serving)
            .await
            .expect("the server did not stop in time")
            .unwrap();
        drop(self.store);
        drop(self.data_dir);
    }
}

#[derive(Clone, Copy)]
struct WriterCounts {
    commits: u64,
    jobs: u64,
    job_micros: u64,
    commit_micros: u64,
}

impl WriterCounts {
    /// Prints where the writer thread's time went between `before` and `self`.
    fn report_since(&self, before: &WriterCounts, elapsed: Duration) {
        let commits = (self.commits - before.commits).max(1) as f64;
        let jobs_us = (self.job_micros - before.job_micros) as f64;
        let commit_us = (self.commit_micros - before.commit_micros) as f64;
        println!(
            "    writer: {:.0} µs running jobs + {:.0} µs in commit per batch; busy {:.0}% of the time",
            jobs_us / commits,
            commit_us / commits,
            100.0 * (jobs_us + commit_us) / elapsed.as_micros() as f64
        );
    }
}

/// `clients` connections creating sessions for `LEVEL_DURATION`.
async fn run_level(server: &BenchServer, clients: usize) -> Measurement {
    let mut connections = Vec::with_capacity(clients);
    for index in 0..clients {
        connections.push(SessionClient::connect(server, index).await);
    }
    let before = server.writer_counts();
    let start = Instant::now();
    let deadline = start + LEVEL_DURATION;
    let tasks: Vec<JoinHandle<Vec<Duration>>> = connections
        .into_iter()
        .map(|client| tokio::spawn(client.run_until(deadline)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    let after = server.writer_counts();
    let jobs_per_commit =
        (after.jobs - before.jobs) as f64 / (after.commits - before.commits).max(1) as f64;
    let label = format!(
        "village, {clients} client{}",
        if clients == 1 { "" } else { "s" }
    );
    let measurement = Measurement::new(label, clients, latencies, elapsed, jobs_per_commit);
    measurement.print_row();
    after.report_since(&before, elapsed);
    measurement
}

/// One keep-alive HTTP/1.1 connection creating sessions for org `bench` (one org's CI).
struct SessionClient {
    index: usize,
    sender: SendRequest<Full<Bytes>>,
    host: String,
    authorization: String,
    body: Bytes,
}

impl SessionClient {
    async fn connect(server: &BenchServer, index: usize) -> Self {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body = serde_json::json!({
            "orgId": "bench",
            "providerId": "codex",
            "repo": {"url": "https://github.com/acme/app.git"},
            "task": "benchmark",
        });
        Self {
            index,
            sender,
            host: server.addr.to_string(),
            authorization: format!("Bearer {}", server.admin_token),
            body: Bytes::from(body.to_string()),
        }
    }

    /// Sends creates back to back until `deadline`; returns each one's latency.
    async fn run_until(mut self, deadline: Instant) -> Vec<Duration> {
        let mut latencies = Vec::new();
        while Instant::now() < deadline {
            let began = Instant::now();
            let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.create_session())
                .await
                .unwrap_or_else(|_| {
                    panic!("client {}: no answer in {REQUEST_TIMEOUT:?}", self.index)
                });
            latencies.push(began.elapsed());
            assert_eq!(
                status,
                StatusCode::CREATED,
                "client {}: POST /api/v1/sessions answered {}",
                self.index,
                String::from_utf8_lossy(&body)
            );
        }
        latencies
    }

    /// One `POST /api/v1/sessions`, its body read to the end so the connection can be reused.
    async fn create_session(&mut self) -> (StatusCode, Bytes) {
        let request = Request::post("/api/v1/sessions")
            .header(HOST, &self.host)
            .header(AUTHORIZATION, &self.authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }
}
