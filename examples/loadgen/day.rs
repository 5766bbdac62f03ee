//! `day`: a day on a big fleet, compressed into minutes, against the real `village serve`
//! binary (a child process, so its CPU, memory and descriptors are read from `/proc` apart from
//! the load's) with its default configuration.
//!
//! - `DAY_RUNNERS` runners register, open their channels (from four loopback addresses, as
//!   separate hosts would be: 500 each, under the per-address connection cap) and send a
//!   heartbeat every 5 s over the channel; each starts a session it is assigned at once.
//! - `DAY_ORGS` orgs keep `SESSIONS_PER_ORG` sessions each running (their CI creates a new one
//!   whenever one ends): `DAY_ORGS × SESSIONS_PER_ORG` sessions printing a timestamped line every
//!   `CHUNK_EVERY`, with usage reports, now and then an approval request (an agent blocks until
//!   it is answered), and a completion after one to three minutes.
//! - `DASHBOARDS_PER_ORG` dashboard sockets per org, each subscribed to its org and to the
//!   sessions it picks (every session has two watchers); one per org is the human who answers
//!   approvals after thinking one to three seconds, over REST.
//! - Operators read over REST: each org lists its sessions, reads one and its output every 15 s;
//!   the admin lists runners, the fleet and the audit log every 5 s.
//! - A rollout of a new runner build on `stable` starts at 15 % of the run and is advanced
//!   through its stages; runners take the build they are told to run.
//!
//! Every `--sample-secs` a row shows the server's CPU, RSS and open descriptors and the load of
//! that interval. At the end: p50/p99/max per call kind, output delivery latency (a runner's
//! `terminal_output` frame to the dashboard's `terminal` frame), and checks: every delivered
//! frame in order without gaps or repeats, every watched session's last line delivered, no
//! error frame, the rollout completed with every runner on the new build, and memory and
//! descriptors flat from a third of the run to its end (`--minutes 30` is the soak).
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpSocket;
use tokio::sync::watch;

use super::*;

const DAY_RUNNERS: usize = 2_000;
const DAY_ORGS: usize = 50;
/// The default `sessions.maxSessionsPerOrg`.
const SESSIONS_PER_ORG: usize = 10;
const DASHBOARDS_PER_ORG: usize = 4;
/// Runners per client address (the per-address connection cap is 1 024).
const RUNNERS_PER_ADDRESS: usize = 500;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const CHUNK_EVERY: Duration = Duration::from_millis(500);
const USAGE_EVERY: Duration = Duration::from_secs(10);
/// A session asks for an approval about once in this many seconds of printing.
const APPROVAL_MEAN_SECS: f64 = 90.0;
const SESSION_LIFE_SECS: std::ops::Range<u64> = 60..180;
const THINK_MILLIS: std::ops::Range<u64> = 1_000..3_000;
const ORG_READ_EVERY: Duration = Duration::from_secs(15);
const ADMIN_READ_EVERY: Duration = Duration::from_secs(5);
/// An approval not answered by then counts as lost.
const DECISION_TIMEOUT: Duration = Duration::from_secs(30);
const TARGET_REPORT_P99: Duration = Duration::from_millis(100);
const TARGET_DELIVERY_P99: Duration = Duration::from_millis(250);
const TARGET_REST_P99: Duration = Duration::from_millis(250);
/// Growth allowed from a third of the run to its end.
const FLAT_RSS_SHARE: f64 = 0.10;
const FLAT_RSS_SLACK_MIB: f64 = 8.0;
const FLAT_FDS_SHARE: f64 = 0.05;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Kind {
    Heartbeat,
    Output,
    State,
    Usage,
    ApprovalRequest,
    /// From the human's resolve request to `approval_resolved` at the runner.
    Decision,
    /// From a runner's `terminal_output` to a dashboard's `terminal` frame.
    Delivery,
    Create,
    Resolve,
    ListSessions,
    GetSession,
    OutputPage,
    ListRunners,
    Fleet,
    Audit,
    Rollout,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Heartbeat => "channel heartbeat -> heartbeat_ack",
            Kind::Output => "channel terminal_output -> ack",
            Kind::State => "channel session_state -> ack",
            Kind::Usage => "channel usage -> ack",
            Kind::ApprovalRequest => "channel approval_request -> ack",
            Kind::Decision => "resolve sent -> approval_resolved at runner",
            Kind::Delivery => "output delivery, runner -> dashboard",
            Kind::Create => "POST /sessions",
            Kind::Resolve => "POST .../approvals/{id}/resolve",
            Kind::ListSessions => "GET /sessions?orgId",
            Kind::GetSession => "GET /sessions/{id}",
            Kind::OutputPage => "GET /sessions/{id}/output",
            Kind::ListRunners => "GET /runners?pageSize=100",
            Kind::Fleet => "GET /fleet",
            Kind::Audit => "GET /audit?limit=100",
            Kind::Rollout => "POST /builds, /rollouts, advance",
        }
    }

    fn is_rest(self) -> bool {
        self >= Kind::Create
    }
}

#[derive(Default)]
struct Counters {
    /// Runners whose channel opened.
    runners_connected: AtomicU64,
    /// Dashboards whose org subscription was confirmed.
    dashboards_subscribed: AtomicU64,
    /// Sessions a runner was assigned and started.
    sessions_started: AtomicU64,
    error_frames: AtomicU64,
    resyncs: AtomicU64,
    gaps: AtomicU64,
    repeats: AtomicU64,
    approvals_lost: AtomicU64,
    create_retries: AtomicU64,
    resolve_conflicts: AtomicU64,
    unexpected_status: AtomicU64,
}

/// What every task of the day shares.
struct Day {
    addr: SocketAddr,
    start: Instant,
    /// Per kind: (milliseconds since the start, latency in µs), in about the order measured.
    samples: Mutex<HashMap<Kind, Vec<(u32, u32)>>>,
    counters: Counters,
    /// Each org's CI hears here when one of its sessions ended.
    ended: Vec<mpsc::UnboundedSender<()>>,
    /// When each approval's resolve request was sent.
    resolve_sent: Mutex<HashMap<String, Instant>>,
    /// Chunks each finished session printed.
    printed: Mutex<HashMap<String, u64>>,
    /// For each watched session that finished while watched: the last seq its watcher got.
    watched_last: Mutex<Vec<(String, u64)>>,
    stop: watch::Receiver<bool>,
}

impl Day {
    fn record(&self, kind: Kind, latency: Duration) {
        let at = self.start.elapsed().as_millis() as u32;
        let micros = latency.as_micros().min(u32::MAX as u128) as u32;
        let mut samples = self.samples.lock().unwrap();
        samples.entry(kind).or_default().push((at, micros));
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A TCP connection to the server from `local` (a loopback address standing for a host).
async fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

type DaySocket = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open_socket(local: IpAddr, addr: SocketAddr, path: &str, token: &str) -> DaySocket {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = connect_from(local, addr).await;
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, None)
        .await
        .unwrap_or_else(|e| panic!("{path}: refused: {e}"));
    socket
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `village serve` as a child process on a free port, with its data in `data_dir` (the
/// `recording` scenario uses it too).
pub(super) struct ServerProcess {
    child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    pub(super) admin_token: String,
}

impl ServerProcess {
    pub(super) async fn start(village: &Path, data_dir: &Path, log: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = tokio::process::Command::new(village)
            .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            // The server refuses unknown `VILLAGE_*` variables: this one names its binary.
            .env_remove("VILLAGE_BIN")
            .env("VILLAGE_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let token_file = data_dir.join("admin-token");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(addr).await.is_ok() && token_file.is_file() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the server exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let admin_token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            addr,
            admin_token,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, and how long the server took to exit.
    pub(super) async fn stop(mut self) -> Duration {
        let began = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        began.elapsed()
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A REST client from one address (a host) that reconnects when the server has closed its
/// idle keep-alive connection, as an HTTP client library would.
struct RestClient {
    local: IpAddr,
    addr: SocketAddr,
    connection: Option<Client>,
}

impl RestClient {
    fn new(local: IpAddr, addr: SocketAddr) -> Self {
        Self {
            local,
            addr,
            connection: None,
        }
    }
}

/// One answer to a REST call: its status and JSON body.
async fn rest(
    client: &mut RestClient,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    for attempt in 0..2 {
        let connection = match &mut client.connection {
            Some(c) if !c.sender.is_closed() => c,
            slot => {
                let stream = connect_from(client.local, client.addr).await;
                slot.insert(Client::over(stream, client.addr, 0).await)
            }
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, connection.host.clone())
            .header(AUTHORIZATION, format!("Bearer {token}"));
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        match connection
            .try_send(request.body(Full::new(body.clone())).unwrap())
            .await
        {
            Ok((status, bytes)) => {
                return (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                );
            }
            // Closed by the server between the check and the request (an idle keep-alive
            // connection timing out, sometimes with a reset): once more, anew.
            Err(e) if attempt == 0 && !e.is_timeout() => client.connection = None,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    panic!("{method} {path}: the server closed two connections in a row")
}

/// `rest`, timed as `kind`; a status other than `expect` is counted.
async fn timed_rest(
    day: &Day,
    client: &mut RestClient,
    kind: Kind,
    (method, path): (&str, &str),
    token: &str,
    body: Option<&Value>,
    expect: StatusCode,
) -> (StatusCode, Value) {
    let began = Instant::now();
    let (status, reply) = rest(client, method, path, token, body).await;
    day.record(kind, began.elapsed());
    if status != expect {
        let earlier = day
            .counters
            .unexpected_status
            .fetch_add(1, Ordering::Relaxed);
        if earlier < 5 {
            eprintln!("{method} {path} answered {status}: {reply}");
        }
    }
    (status, reply)
}

// ---- runners --------------------------------------------------------------------------------

/// A frame waiting for its answer: what it was, when it was sent, and the org to tell once a
/// session's end is stored.
type Pending = (Kind, Instant, Option<usize>);

/// A runner's side of its channel: frames go out through one writer task; each frame that
/// expects an answer is remembered by its `messageId`.
struct RunnerLink {
    out: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Sessions running here, with the sender of their commands.
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
    build: Mutex<String>,
}

impl RunnerLink {
    fn send(&self, kind: Kind, mut frame: Value, then: Option<usize>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame["messageId"] = json!(format!("m{id}"));
        self.pending
            .lock()
            .unwrap()
            .insert(id, (kind, Instant::now(), then));
        let _ = self.out.send(frame.to_string());
    }

    fn answered(&self, frame: &Value) -> Option<Pending> {
        let id: u64 = frame["messageId"]
            .as_str()?
            .strip_prefix('m')?
            .parse()
            .ok()?;
        self.pending.lock().unwrap().remove(&id)
    }
}

fn heartbeat_frame(runner: &BenchRunner, link: &RunnerLink) -> Value {
    let active: Vec<String> = link.sessions.lock().unwrap().keys().cloned().collect();
    let build = link.build.lock().unwrap().clone();
    let codex = if build == "build-2" { "0.9.2" } else { "0.9.1" };
    json!({
        "type": "heartbeat",
        "runnerId": runner.id,
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "activeSessions": active,
        "load": {"cpuPercent": 20.0 + active.len() as f64 * 10.0, "memoryPercent": 40, "diskPercent": 55},
        "runtimeVersions": {"codex": codex},
        "buildId": build,
    })
}

async fn play_day_runner(day: Arc<Day>, runner: BenchRunner, local: IpAddr) {
    let path = format!("/api/v1/runners/{}/channel", runner.id);
    let socket = open_socket(local, day.addr, &path, &runner.token).await;
    day.counters
        .runners_connected
        .fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut frames) = socket.split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let link = Arc::new(RunnerLink {
        out,
        pending: Mutex::default(),
        next_id: AtomicU64::new(0),
        sessions: Mutex::default(),
        build: Mutex::new("build-1".to_owned()),
    });
    // Beats spread over the interval, as runners started at different times are.
    let phase = Duration::from_millis(rand::random_range(0..HEARTBEAT_EVERY.as_millis() as u64));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + phase, HEARTBEAT_EVERY);
    let mut stop = day.stop.clone();
    link.send(Kind::Heartbeat, heartbeat_frame(&runner, &link), None);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => link.send(Kind::Heartbeat, heartbeat_frame(&runner, &link), None),
            frame = frames.next() => {
                let Some(Ok(message)) = frame else { break };
                let Message::Text(text) = message else { continue };
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                handle_runner_frame(&day, &link, frame);
            }
        }
    }
}

fn handle_runner_frame(day: &Arc<Day>, link: &Arc<RunnerLink>, frame: Value) {
    let kind = frame["type"].as_str().unwrap_or("");
    match kind {
        "heartbeat_ack" | "ack" => {
            if let Some((kind, sent, then)) = link.answered(&frame) {
                day.record(kind, sent.elapsed());
                if let Some(org) = then {
                    let _ = day.ended[org].send(());
                }
            }
            if let Some(build) = frame["desiredBuild"]["buildId"].as_str() {
                // The runner updates itself and reports the build from its next beat on.
                *link.build.lock().unwrap() = build.to_owned();
            }
        }
        "resync" => {
            day.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        "error" => {
            link.answered(&frame);
            let earlier = day.counters.error_frames.fetch_add(1, Ordering::Relaxed);
            if earlier < 5 {
                eprintln!("error frame at a runner: {frame}");
            }
        }
        _ => {
            // A command: acknowledge it, then carry it out.
            let ack = json!({"type": "ack", "messageId": frame["messageId"]});
            let _ = link.out.send(ack.to_string());
            let session = frame["sessionId"].as_str().unwrap_or("").to_owned();
            match kind {
                "assign_session" => start_session(day, link, &frame),
                "approval_resolved" => {
                    let approval = frame["approvalId"].as_str().unwrap_or("");
                    if let Some(sent) = day.resolve_sent.lock().unwrap().remove(approval) {
                        day.record(Kind::Decision, sent.elapsed());
                    }
                    if let Some(commands) = link.sessions.lock().unwrap().get(&session) {
                        let _ = commands.send(frame);
                    }
                }
                _ => {}
            }
        }
    }
}

fn start_session(day: &Arc<Day>, link: &Arc<RunnerLink>, frame: &Value) {
    let detail = &frame["session"];
    let session = detail["sessionId"].as_str().unwrap().to_owned();
    let org: usize = detail["orgId"]
        .as_str()
        .and_then(|o| o.strip_prefix("org-"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let assignment = frame["assignmentId"].as_str().unwrap().to_owned();
    let (commands, received) = mpsc::unbounded_channel();
    link.sessions
        .lock()
        .unwrap()
        .insert(session.clone(), commands);
    let (day, link) = (day.clone(), link.clone());
    tokio::spawn(async move {
        play_session(&day, &link, &session, &assignment, org, received).await;
        link.sessions.lock().unwrap().remove(&session);
    });
}

/// A session's agent: prints a line every `CHUNK_EVERY`, reports usage, sometimes waits for an
/// approval, and ends COMPLETED after its life (or stops printing when the day ends).
async fn play_session(
    day: &Day,
    link: &RunnerLink,
    session: &str,
    assignment: &str,
    org: usize,
    mut commands: mpsc::UnboundedReceiver<Value>,
) {
    let report = |kind: Kind, fields: Value, then: Option<usize>| {
        let mut frame = json!({"sessionId": session, "assignmentId": assignment});
        for (k, v) in fields.as_object().unwrap() {
            frame[k] = v.clone();
        }
        link.send(kind, frame, then);
    };
    report(
        Kind::State,
        json!({"type": "session_state", "state": "RUNNING"}),
        None,
    );
    day.counters
        .sessions_started
        .fetch_add(1, Ordering::Relaxed);
    let life = Duration::from_secs(rand::random_range(SESSION_LIFE_SECS));
    let began = Instant::now();
    let mut tick = tokio::time::interval(CHUNK_EVERY);
    let mut next_usage = began + USAGE_EVERY;
    let (mut offset, mut chunks) = (0u64, 0u64);
    let approval_chance = CHUNK_EVERY.as_secs_f64() / APPROVAL_MEAN_SECS;
    while began.elapsed() < life {
        tick.tick().await;
        if day.stopping() {
            return;
        }
        chunks += 1;
        let data = format!(
            "T{:016}| step {chunks}: compiling village-{} ({} of 412) \x1b[32mok\x1b[0m in {} ms\r\n",
            epoch_micros(),
            chunks % 97,
            chunks % 412,
            rand::random_range(3..900)
        );
        let bytes = data.len() as u64;
        report(
            Kind::Output,
            json!({"type": "terminal_output", "stream": "stdout", "data": data, "offset": offset}),
            None,
        );
        offset += bytes;
        if Instant::now() >= next_usage {
            next_usage += USAGE_EVERY;
            let secs = began.elapsed().as_secs();
            report(
                Kind::Usage,
                json!({"type": "usage", "tokensIn": secs * 310, "tokensOut": secs * 45,
                       "apiCalls": secs / 4, "computeSeconds": secs as f64 * 0.3,
                       "costUsd": secs as f64 * 0.0021}),
                None,
            );
        }
        if rand::random_bool(approval_chance) {
            report(
                Kind::ApprovalRequest,
                json!({"type": "approval_request", "action": "command",
                       "description": format!("run `cargo test --workspace` (step {chunks})"),
                       "context": {"tool": "Bash", "input": {"command": "cargo test --workspace"}}}),
                None,
            );
            let decided = tokio::time::timeout(DECISION_TIMEOUT, commands.recv()).await;
            if !matches!(decided, Ok(Some(_))) && !day.stopping() {
                day.counters.approvals_lost.fetch_add(1, Ordering::Relaxed);
            }
            tick.reset();
        }
    }
    day.printed
        .lock()
        .unwrap()
        .insert(session.to_owned(), chunks);
    report(
        Kind::State,
        json!({"type": "session_state", "state": "COMPLETED"}),
        Some(org),
    );
}

// ---- orgs: CI, operators, dashboards ---------------------------------------------------------

fn org_id(org: usize) -> String {
    format!("org-{org:02}")
}

/// An org's CI and operator: keeps `SESSIONS_PER_ORG` sessions going and reads what an
/// operator reads.
async fn play_org(
    day: Arc<Day>,
    org: usize,
    token: String,
    mut ended: mpsc::UnboundedReceiver<()>,
) {
    let mut client = RestClient::new(loopback(21), day.addr);
    let create_body = json!({
        "orgId": org_id(org),
        "providerId": "codex",
        "repo": {"url": "https://github.com/acme/app.git", "branch": "main"},
        "task": "fix the flaky integration test and open a pull request",
    });
    let mut to_create = SESSIONS_PER_ORG;
    let phase = Duration::from_millis(rand::random_range(0..ORG_READ_EVERY.as_millis() as u64));
    let mut read = tokio::time::interval_at(tokio::time::Instant::now() + phase, ORG_READ_EVERY);
    let mut stop = day.stop.clone();
    loop {
        while to_create > 0 && !day.stopping() {
            let (status, _) = timed_rest(
                &day,
                &mut client,
                Kind::Create,
                ("POST", "/api/v1/sessions"),
                &token,
                Some(&create_body),
                StatusCode::CREATED,
            )
            .await;
            if status == StatusCode::CREATED {
                to_create -= 1;
            } else {
                day.counters.create_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            Some(()) = ended.recv() => to_create += 1,
            _ = read.tick() => org_reads(&day, &mut client, org, &token).await,
        }
    }
}

async fn org_reads(day: &Day, client: &mut RestClient, org: usize, token: &str) {
    let list = format!("/api/v1/sessions?orgId={}&pageSize=20", org_id(org));
    let (_, reply) = timed_rest(
        day,
        client,
        Kind::ListSessions,
        ("GET", &list),
        token,
        None,
        StatusCode::OK,
    )
    .await;
    let Some(session) = reply["data"]["items"][0]["sessionId"].as_str() else {
        return;
    };
    let one = format!("/api/v1/sessions/{session}");
    timed_rest(
        day,
        client,
        Kind::GetSession,
        ("GET", &one),
        token,
        None,
        StatusCode::OK,
    )
    .await;
    let output = format!("/api/v1/sessions/{session}/output?limit=100");
    timed_rest(
        day,
        client,
        Kind::OutputPage,
        ("GET", &output),
        token,
        None,
        StatusCode::OK,
    )
    .await;
}

/// One dashboard: subscribed to its org, watching the sessions it picks (`pick` of two).
/// With `approver`, it is the human who answers the org's approvals.
async fn play_dashboard(
    day: Arc<Day>,
    org: usize,
    pick: usize,
    token: String,
    approver: Option<mpsc::UnboundedSender<(String, String)>>,
) {
    let socket = open_socket(loopback(20), day.addr, "/api/v1/ws", &token).await;
    let (mut sink, mut frames) = socket.split();
    let subscribe = json!({"type": "subscribe_org", "orgId": org_id(org)});
    sink.send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    let mut watching: HashMap<String, u64> = HashMap::new();
    let mut asked: HashSet<String> = HashSet::new();
    let mut stop = day.stop.clone();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return,
            message = frames.next() => message,
        };
        let Some(Ok(Message::Text(text))) = message else {
            if message.is_none() {
                return;
            }
            continue;
        };
        let text = text.as_str();
        if text.contains("\"type\":\"terminal\"") {
            // The hot frame: read the three fields without parsing the whole frame.
            let now = epoch_micros();
            let session = field_str(text, "\"sessionId\":\"");
            let seq: u64 = field_after(text, "\"seq\":", 20)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if let Some(sent) =
                field_after(text, "\"data\":\"T", 16).and_then(|t| t.parse::<u128>().ok())
            {
                day.record(
                    Kind::Delivery,
                    Duration::from_micros(now.saturating_sub(sent) as u64),
                );
            }
            if let Some(last) = session.and_then(|s| watching.get_mut(s)) {
                if seq == *last + 1 {
                    *last = seq;
                } else if seq <= *last {
                    day.counters.repeats.fetch_add(1, Ordering::Relaxed);
                } else {
                    day.counters
                        .gaps
                        .fetch_add(seq - *last - 1, Ordering::Relaxed);
                    *last = seq;
                }
            }
            continue;
        }
        let frame: Value = serde_json::from_str(text).unwrap();
        match (
            frame["type"].as_str(),
            frame["event"].as_str(),
            frame["action"].as_str(),
        ) {
            (Some("event"), Some("subscribed"), _) if frame["data"]["orgId"].is_string() => {
                day.counters
                    .dashboards_subscribed
                    .fetch_add(1, Ordering::Relaxed);
            }
            (Some("event"), Some("session_created"), _) => {
                let session = frame["data"]["sessionId"].as_str().unwrap().to_owned();
                let parity = session.bytes().map(usize::from).sum::<usize>() % 2;
                if parity == pick % 2 {
                    let sub = json!({"type": "subscribe_session", "sessionId": session});
                    if sink.send(Message::text(sub.to_string())).await.is_err() {
                        return;
                    }
                    watching.insert(session, 0);
                }
            }
            (Some("session"), _, Some("completed")) => {
                let session = frame["sessionId"].as_str().unwrap_or("");
                if let Some(last) = watching.remove(session) {
                    day.watched_last
                        .lock()
                        .unwrap()
                        .push((session.to_owned(), last));
                    let unsub = json!({"type": "unsubscribe_session", "sessionId": session});
                    if sink.send(Message::text(unsub.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            (Some("approval_required"), _, _) => {
                let approval = frame["approval"]["approvalId"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if let Some(human) = &approver
                    && asked.insert(approval.clone())
                {
                    let session = frame["sessionId"].as_str().unwrap_or("").to_owned();
                    let _ = human.send((session, approval));
                }
            }
            (Some("error"), _, _) => {
                let earlier = day.counters.error_frames.fetch_add(1, Ordering::Relaxed);
                if earlier < 5 {
                    eprintln!("error frame at a dashboard: {frame}");
                }
            }
            _ => {}
        }
    }
}

/// The characters of a JSON string value after `marker` (no escapes in ids).
fn field_str<'t>(text: &'t str, marker: &str) -> Option<&'t str> {
    let start = text.find(marker)? + marker.len();
    let end = text[start..].find('"')?;
    Some(&text[start..start + end])
}

/// The human answering an org's approvals: thinks, then allows over REST.
async fn play_approver(
    day: Arc<Day>,
    token: String,
    mut asked: mpsc::UnboundedReceiver<(String, String)>,
) {
    let mut client = RestClient::new(loopback(21), day.addr);
    let (thought, mut decide) = mpsc::unbounded_channel::<(String, String)>();
    let mut stop = day.stop.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            Some(question) = asked.recv() => {
                let thought = thought.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(rand::random_range(THINK_MILLIS))).await;
                    let _ = thought.send(question);
                });
            }
            Some((session, approval)) = decide.recv() => {
                let path = format!("/api/v1/sessions/{session}/approvals/{approval}/resolve");
                let body = json!({"decision": "allow", "reason": "looks fine"});
                day.resolve_sent.lock().unwrap().insert(approval.clone(), Instant::now());
                let began = Instant::now();
                let (status, _) = rest(&mut client, "POST", &path, &token, Some(&body)).await;
                day.record(Kind::Resolve, began.elapsed());
                if status != StatusCode::OK {
                    day.counters.resolve_conflicts.fetch_add(1, Ordering::Relaxed);
                    day.resolve_sent.lock().unwrap().remove(&approval);
                }
            }
        }
    }
}

// ---- the admin: reads and the rollout --------------------------------------------------------

async fn play_admin(day: Arc<Day>, token: String, run: Duration) -> Option<String> {
    let mut client = RestClient::new(loopback(22), day.addr);
    let mut read = tokio::time::interval(ADMIN_READ_EVERY);
    let rollout_at = day.start + run.mul_f64(0.15);
    let advance_every = run.mul_f64(0.15);
    let mut rollout: Option<String> = None;
    let mut next_step = rollout_at;
    let mut stop = day.stop.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return rollout,
            _ = read.tick() => {
                for (kind, path) in [
                    (Kind::ListRunners, "/api/v1/runners?pageSize=100"),
                    (Kind::Fleet, "/api/v1/fleet"),
                    (Kind::Audit, "/api/v1/audit?limit=100"),
                ] {
                    timed_rest(&day, &mut client, kind, ("GET", path), &token, None, StatusCode::OK).await;
                }
            }
            _ = tokio::time::sleep_until(next_step.into()) => {
                next_step += advance_every;
                rollout = rollout_step(&day, &mut client, &token, rollout).await;
            }
        }
    }
}

/// Registers `build-2` and starts its rollout, or advances the rollout one stage.
async fn rollout_step(
    day: &Day,
    client: &mut RestClient,
    token: &str,
    rollout: Option<String>,
) -> Option<String> {
    let Some(id) = rollout else {
        let build = json!({"buildId": "build-2", "runnerVersion": "2.0.0",
                           "builtAt": "2026-12-01T09:00:00Z", "runtimeVersions": {"codex": "0.9.2"}});
        timed_rest(
            day,
            client,
            Kind::Rollout,
            ("POST", "/api/v1/builds"),
            token,
            Some(&build),
            StatusCode::CREATED,
        )
        .await;
        let start = json!({"buildId": "build-2", "channel": "stable", "stages": [1, 10, 50, 100]});
        let (_, reply) = timed_rest(
            day,
            client,
            Kind::Rollout,
            ("POST", "/api/v1/rollouts"),
            token,
            Some(&start),
            StatusCode::CREATED,
        )
        .await;
        println!(
            "    {:>5.0} s  rollout of build-2 on stable started",
            day.start.elapsed().as_secs_f64()
        );
        return reply["data"]["rolloutId"].as_str().map(str::to_owned);
    };
    let path = format!("/api/v1/rollouts/{id}/advance");
    let (status, reply) = rest(
        client,
        "GET",
        &format!("/api/v1/rollouts/{id}"),
        token,
        None,
    )
    .await;
    if status == StatusCode::OK && reply["data"]["state"] != "completed" {
        let (_, reply) = timed_rest(
            day,
            client,
            Kind::Rollout,
            ("POST", &path),
            token,
            None,
            StatusCode::OK,
        )
        .await;
        println!(
            "    {:>5.0} s  rollout advanced: {} at {} %",
            day.start.elapsed().as_secs_f64(),
            reply["data"]["state"],
            reply["data"]["currentPercentage"]
        );
    }
    Some(id)
}

/// `rest`, waiting and trying again while the answer is 429 (setup work, not measured).
async fn rest_retrying(
    client: &mut RestClient,
    (method, path): (&str, &str),
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    loop {
        let (status, reply) = rest(client, method, path, token, Some(body)).await;
        if status != StatusCode::TOO_MANY_REQUESTS {
            return (status, reply);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Registers `DAY_RUNNERS` runners with the admin token over 16 connections. A fleet enrolling
/// at once goes past the token's rate limit: a refused registration waits its `Retry-After`
/// and tries again, as `village runner` does.
async fn register_runners(addr: SocketAddr, admin: &str) -> Vec<BenchRunner> {
    let hands = deal((0..DAY_RUNNERS).collect(), 16);
    let tasks: Vec<JoinHandle<Vec<(usize, BenchRunner)>>> = hands
        .into_iter()
        .enumerate()
        .map(|(index, hand)| {
            let admin = admin.to_owned();
            tokio::spawn(async move {
                let mut client = RestClient::new(loopback(2 + (index % 4) as u8), addr);
                let mut runners = Vec::new();
                for i in hand {
                    let body = json!({"hostname": format!("day-runner-{i:04}"),
                                      "capabilities": {"providers": ["codex"], "maxConcurrentSessions": 4}});
                    let (status, reply) = rest_retrying(
                        &mut client,
                        ("POST", "/api/v1/runners/register"),
                        &admin,
                        &body,
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED, "register answered {reply}");
                    let data = &reply["data"];
                    runners.push((i, BenchRunner {
                        id: data["runner"]["runnerId"].as_str().unwrap().to_owned(),
                        token: data["runnerToken"].as_str().unwrap().to_owned(),
                    }));
                }
                runners
            })
        })
        .collect();
    let mut runners = Vec::with_capacity(DAY_RUNNERS);
    for task in tasks {
        runners.extend(task.await.unwrap());
    }
    runners.sort_by_key(|(i, _)| *i);
    runners.into_iter().map(|(_, runner)| runner).collect()
}

// ---- the scenario ----------------------------------------------------------------------------

struct DayArgs {
    run: Duration,
    sample_every: Duration,
}

impl DayArgs {
    fn parse(args: &[String]) -> Self {
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .map(|v| {
                    v.parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name}: not a number"))
                })
        };
        let minutes = value("--minutes").unwrap_or(3.0);
        let default_sample = if minutes >= 10.0 { 60.0 } else { 15.0 };
        Self {
            run: Duration::from_secs_f64(minutes * 60.0),
            sample_every: Duration::from_secs_f64(value("--sample-secs").unwrap_or(default_sample)),
        }
    }
}

/// One row of the server's resources.
#[derive(Clone, Copy)]
struct ResourceSample {
    at: Duration,
    rss_mib: f64,
    fds: usize,
}

pub(crate) async fn day_scenario(args: &[String]) -> ExitCode {
    let args = DayArgs::parse(args);
    let Some(village) = village_binary() else {
        eprintln!(
            "day: no `village` binary next to the load generator: build both with \
             `cargo build --release --example loadgen --bin village`, or set VILLAGE_BIN"
        );
        return ExitCode::from(2);
    };
    let needed = (DAY_RUNNERS + DAY_ORGS * (DASHBOARDS_PER_ORG + 2)) as u64 + 512;
    if let Some(limit) = open_file_limit().filter(|&limit| limit < needed) {
        eprintln!(
            "the open-file limit is {limit}; this scenario needs about {needed}: run it after `ulimit -n 65536`"
        );
        return ExitCode::from(2);
    }
    let scratch = scratch_dir(&std::env::temp_dir(), "day");
    let data_dir = scratch.path().join("data");
    let server =
        ServerProcess::start(&village, &data_dir, &scratch.path().join("server.log")).await;
    let pid = server.pid();
    let admin = server.admin_token.clone();
    println!(
        "a day on a big fleet, {:.0} minutes: `village serve` ({}) with its default configuration;\n\
         {DAY_RUNNERS} runners beating every {} s over their channels, {} sessions printing a line every {} ms \
         ({DAY_ORGS} orgs × {SESSIONS_PER_ORG}, replaced as they end after {}–{} s), {} dashboards, \
         approvals answered after 1–3 s, operators' reads, a rollout",
        args.run.as_secs_f64() / 60.0,
        village.display(),
        HEARTBEAT_EVERY.as_secs(),
        DAY_ORGS * SESSIONS_PER_ORG,
        CHUNK_EVERY.as_millis(),
        SESSION_LIFE_SECS.start,
        SESSION_LIFE_SECS.end,
        DAY_ORGS * DASHBOARDS_PER_ORG,
    );

    // Setup: runners registered (64 at a time), org tokens.
    let setup = Instant::now();
    let runners = register_runners(server.addr, &admin).await;
    let mut client = RestClient::new(loopback(22), server.addr);
    let mut org_tokens = Vec::with_capacity(DAY_ORGS);
    for org in 0..DAY_ORGS {
        let body =
            json!({"kind": "org", "name": format!("{} team", org_id(org)), "orgId": org_id(org)});
        let (status, reply) =
            rest_retrying(&mut client, ("POST", "/api/v1/tokens"), &admin, &body).await;
        assert_eq!(status, StatusCode::CREATED, "token create answered {reply}");
        org_tokens.push(reply["data"]["token"].as_str().unwrap().to_owned());
    }
    drop(client);

    let (stop_tx, stop) = watch::channel(false);
    let mut ended_rx = Vec::new();
    let mut ended = Vec::new();
    for _ in 0..DAY_ORGS {
        let (tx, rx) = mpsc::unbounded_channel();
        ended.push(tx);
        ended_rx.push(rx);
    }
    let day = Arc::new(Day {
        addr: server.addr,
        start: Instant::now(),
        samples: Mutex::default(),
        counters: Counters::default(),
        ended,
        resolve_sent: Mutex::default(),
        printed: Mutex::default(),
        watched_last: Mutex::default(),
        stop,
    });
    let mut tasks = Vec::new();
    for (i, runner) in runners.into_iter().enumerate() {
        let local = loopback(10 + (i / RUNNERS_PER_ADDRESS) as u8);
        tasks.push(tokio::spawn(play_day_runner(day.clone(), runner, local)));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (org, token) in org_tokens.iter().enumerate() {
        let (human, asked) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(play_approver(
            day.clone(),
            token.clone(),
            asked,
        )));
        for pick in 0..DASHBOARDS_PER_ORG {
            let approver = (pick == 0).then(|| human.clone());
            tasks.push(tokio::spawn(play_dashboard(
                day.clone(),
                org,
                pick,
                token.clone(),
                approver,
            )));
        }
    }
    // Dashboards connected before the CI creates anything, so they see every creation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "    setup: {DAY_RUNNERS} runners registered and connecting, {DAY_ORGS} org tokens, in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    for (org, ended) in ended_rx.into_iter().enumerate() {
        tasks.push(tokio::spawn(play_org(
            day.clone(),
            org,
            org_tokens[org].clone(),
            ended,
        )));
    }
    let admin_task = tokio::spawn(play_admin(day.clone(), admin.clone(), args.run));

    // Sampling.
    println!(
        "\n{:>7} {:>9} {:>8} {:>6} {:>9} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "t (s)",
        "srv cpu",
        "RSS MiB",
        "fds",
        "beats/s",
        "lines/s",
        "creates",
        "deliv p50",
        "deliv p99",
        "load cpu"
    );
    let mut resources = Vec::new();
    let mut cursors: HashMap<Kind, usize> = HashMap::new();
    let mut last_ticks = process_cpu_ticks(pid);
    let mut last_own = CpuSample::now().own;
    let mut last_at = day.start.elapsed();
    let begin_cpu = last_ticks;
    let deadline = day.start + args.run;
    while Instant::now() < deadline {
        let wake = (Instant::now() + args.sample_every).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        let at = day.start.elapsed();
        let secs = (at - last_at).as_secs_f64();
        let ticks = process_cpu_ticks(pid);
        let own = CpuSample::now().own;
        let window = |kind: Kind, cursors: &mut HashMap<Kind, usize>| -> Vec<Duration> {
            let samples = day.samples.lock().unwrap();
            let all = samples.get(&kind).map_or(&[][..], Vec::as_slice);
            let from = cursors.insert(kind, all.len()).unwrap_or(0).min(all.len());
            let mut window: Vec<Duration> = all[from..]
                .iter()
                .map(|&(_, us)| Duration::from_micros(us.into()))
                .collect();
            window.sort_unstable();
            window
        };
        let beats = window(Kind::Heartbeat, &mut cursors);
        let lines = window(Kind::Output, &mut cursors);
        let creates = window(Kind::Create, &mut cursors);
        let delivery = window(Kind::Delivery, &mut cursors);
        let sample = ResourceSample {
            at,
            rss_mib: process_mib(pid, "VmRSS"),
            fds: open_descriptors(pid),
        };
        println!(
            "{:>7.0} {:>8.0}% {:>8.1} {:>6} {:>9.0} {:>9.0} {:>8} {:>8.1}ms {:>8.1}ms {:>8.0}%",
            at.as_secs_f64(),
            100.0 * (ticks - last_ticks) as f64 / clock_ticks_per_sec() / secs,
            sample.rss_mib,
            sample.fds,
            beats.len() as f64 / secs,
            lines.len() as f64 / secs,
            creates.len(),
            millis(percentile(&delivery, 50.0)),
            millis(percentile(&delivery, 99.0)),
            100.0 * (own - last_own) as f64 / clock_ticks_per_sec() / secs,
        );
        resources.push(sample);
        (last_ticks, last_own, last_at) = (ticks, own, at);
    }
    let server_cpu_secs = (process_cpu_ticks(pid) - begin_cpu) as f64 / clock_ticks_per_sec();
    let peak_mib = process_mib(pid, "VmHWM");
    let _ = stop_tx.send(true);
    let rollout = admin_task.await.unwrap();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    // The rollout as the server sees it at the end.
    let mut client = RestClient::new(loopback(22), server.addr);
    let rollout_done = match &rollout {
        Some(id) => {
            let (_, reply) = rest(
                &mut client,
                "GET",
                &format!("/api/v1/rollouts/{id}"),
                &admin,
                None,
            )
            .await;
            let data = &reply["data"];
            println!(
                "\nrollout: {} at {} %, {} runners targeted, {} converged",
                data["state"],
                data["currentPercentage"],
                data["runnersTargeted"],
                data["runnersConverged"]
            );
            data["state"] == "completed" && data["runnersConverged"] == json!(DAY_RUNNERS)
        }
        None => {
            println!("\nrollout: never started");
            false
        }
    };
    drop(client);
    let shutdown = server.stop().await;
    summarize(
        &day,
        &args,
        &resources,
        server_cpu_secs,
        peak_mib,
        shutdown,
        rollout_done,
    )
}

fn summarize(
    day: &Day,
    args: &DayArgs,
    resources: &[ResourceSample],
    server_cpu_secs: f64,
    peak_mib: f64,
    shutdown: Duration,
    rollout_done: bool,
) -> ExitCode {
    let run_secs = args.run.as_secs_f64();
    println!(
        "server: {:.2} cores on average ({server_cpu_secs:.0} s of CPU in {run_secs:.0} s), peak RSS {peak_mib:.0} MiB; \
         stopped in {:.2} s after SIGTERM",
        server_cpu_secs / run_secs,
        shutdown.as_secs_f64()
    );
    println!(
        "\n{:<46} {:>9} {:>9} {:>9} {:>9}",
        "call", "count", "p50 ms", "p99 ms", "max ms"
    );
    let samples = day.samples.lock().unwrap();
    let mut kinds: Vec<&Kind> = samples.keys().collect();
    kinds.sort();
    let mut p99 = HashMap::new();
    for kind in kinds {
        let mut latencies: Vec<Duration> = samples[kind]
            .iter()
            .map(|&(_, us)| Duration::from_micros(us.into()))
            .collect();
        latencies.sort_unstable();
        let p = percentile(&latencies, 99.0);
        p99.insert(*kind, p);
        println!(
            "{:<46} {:>9} {:>9.2} {:>9.2} {:>9.2}",
            kind.label(),
            latencies.len(),
            millis(percentile(&latencies, 50.0)),
            millis(p),
            millis(latencies.last().copied().unwrap_or_default())
        );
    }
    let beats = samples.get(&Kind::Heartbeat).map_or(0, Vec::len) as f64;
    drop(samples);
    let expected_beats = DAY_RUNNERS as f64 * run_secs / HEARTBEAT_EVERY.as_secs_f64();
    let c = &day.counters;
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let printed = day.printed.lock().unwrap();
    let watched = day.watched_last.lock().unwrap();
    let undelivered: u64 = watched
        .iter()
        .filter_map(|(session, last)| Some(printed.get(session)?.saturating_sub(*last)))
        .sum();
    println!(
        "\nchecks: {} watched sessions ended while watched, {undelivered} of their lines not delivered; \
         {} gaps, {} repeats in the delivered order; {} error frames, {} resyncs; {} approvals unanswered \
         in {} s; {} resolve conflicts; {} creates refused and retried; {} other unexpected statuses",
        watched.len(),
        count(&c.gaps),
        count(&c.repeats),
        count(&c.error_frames),
        count(&c.resyncs),
        count(&c.approvals_lost),
        DECISION_TIMEOUT.as_secs(),
        count(&c.resolve_conflicts),
        count(&c.create_retries),
        count(&c.unexpected_status),
    );
    let (runners_in, dashboards_in, started) = (
        count(&c.runners_connected),
        count(&c.dashboards_subscribed),
        count(&c.sessions_started),
    );
    let sessions_needed = (DAY_ORGS * SESSIONS_PER_ORG) as u64;
    let load_ok = beats >= 0.95 * expected_beats
        && runners_in == DAY_RUNNERS as u64
        && dashboards_in == (DAY_ORGS * DASHBOARDS_PER_ORG) as u64
        && started >= sessions_needed;
    println!(
        "load: {beats:.0} of {expected_beats:.0} heartbeats answered ({:.1} %, at least 95 % needed), \
         {runners_in} of {DAY_RUNNERS} runners connected, {dashboards_in} of {} dashboards subscribed \
         (all needed), {started} sessions started (at least the {sessions_needed} running at once needed): {}",
        100.0 * beats / expected_beats,
        DAY_ORGS * DASHBOARDS_PER_ORG,
        if load_ok {
            "ok"
        } else {
            "NOT MEASURED (the verdicts below do not count)"
        }
    );
    let clean = undelivered == 0
        && !watched.is_empty()
        && [
            &c.gaps,
            &c.repeats,
            &c.error_frames,
            &c.resyncs,
            &c.approvals_lost,
            &c.unexpected_status,
        ]
        .iter()
        .all(|a| count(a) == 0);
    println!(
        "every line delivered once and in order, no error: {}",
        verdict(clean)
    );
    let p = |kind: Kind| p99.get(&kind).copied().unwrap_or(Duration::MAX);
    let reports_ok = [
        Kind::Heartbeat,
        Kind::Output,
        Kind::State,
        Kind::Usage,
        Kind::ApprovalRequest,
    ]
    .iter()
    .all(|&k| p(k) < TARGET_REPORT_P99);
    println!(
        "runner reports p99 < {} ms (heartbeat {:.1}, output {:.1}, state {:.1}): {}",
        TARGET_REPORT_P99.as_millis(),
        millis(p(Kind::Heartbeat)),
        millis(p(Kind::Output)),
        millis(p(Kind::State)),
        verdict(reports_ok)
    );
    let delivery_ok = p(Kind::Delivery) < TARGET_DELIVERY_P99;
    println!(
        "output delivery p99 {:.1} ms (target < {} ms): {}",
        millis(p(Kind::Delivery)),
        TARGET_DELIVERY_P99.as_millis(),
        verdict(delivery_ok)
    );
    let worst_rest = p99
        .iter()
        .filter(|(k, _)| k.is_rest())
        .max_by_key(|(_, d)| **d)
        .map(|(k, d)| (*k, *d));
    let rest_ok = worst_rest.is_some_and(|(_, d)| d < TARGET_REST_P99);
    if let Some((kind, d)) = worst_rest {
        println!(
            "every REST call kind p99 < {} ms (slowest: {} at {:.1} ms): {}",
            TARGET_REST_P99.as_millis(),
            kind.label(),
            millis(d),
            verdict(rest_ok)
        );
    }
    println!(
        "rollout completed, every runner on the new build: {}",
        verdict(rollout_done)
    );
    // Flat: from the sample at a third of the run to the end.
    let flat_ok = match (
        resources.iter().find(|r| r.at >= args.run / 3),
        resources.last(),
    ) {
        (Some(from), Some(to)) => {
            let rss_ok = to.rss_mib <= from.rss_mib * (1.0 + FLAT_RSS_SHARE) + FLAT_RSS_SLACK_MIB;
            let fds_ok = (to.fds as f64) <= from.fds as f64 * (1.0 + FLAT_FDS_SHARE);
            println!(
                "flat from {:.0} s to {:.0} s: RSS {:.1} -> {:.1} MiB (at most +{:.0} % + {FLAT_RSS_SLACK_MIB} MiB), \
                 descriptors {} -> {} (at most +{:.0} %): {}",
                from.at.as_secs_f64(),
                to.at.as_secs_f64(),
                from.rss_mib,
                to.rss_mib,
                FLAT_RSS_SHARE * 100.0,
                from.fds,
                to.fds,
                FLAT_FDS_SHARE * 100.0,
                verdict(rss_ok && fds_ok)
            );
            rss_ok && fds_ok
        }
        _ => false,
    };
    exit_code(load_ok && clean && reports_ok && delivery_ok && rest_ok && rollout_done && flat_ok)
}
