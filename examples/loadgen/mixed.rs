//! `mixed`: the people's requests while a big fleet beats. The real server runs in-process
//! (`BenchServer`) with `MIXED_RUNNERS` registered runners, each beating over REST once every
//! `BEAT_EVERY`, spread evenly over `BEAT_CONNECTIONS` keep-alive connections (paced, 1 000 beats
//! per second in all). One runner in `FLAPPING_EVERY` reports a changed `activeSessions` list on
//! every beat (alternately none and one fixed session id): a restart needs that, so the periodic
//! liveness flush (every 2 s) has real records to write.
//!
//! Meanwhile `CREATES_PER_SEC` sessions are created over `CREATE_CONNECTIONS` connections, and
//! `WORKING_RUNNERS` more runners, with their channels open, run them: each acks its
//! `assign_session` and reports RUNNING; every `ASK_EVERY`-th session then asks for an approval
//! (the channel's `approval_request`) and ends COMPLETED once it is answered, the others end
//! COMPLETED after `SESSION_LIFE`. A human answers the approvals (`allow`, over REST) at a
//! steady `RESOLVES_PER_SEC` over `RESOLVE_CONNECTIONS` connections; slightly more approvals are
//! asked for than answered, so one is always waiting. The working runners beat on their channels,
//! listing the sessions they hold.
//!
//! After `WARMUP` the next `MEASURED` are measured: a row per second (beats, creates, resolves,
//! each with its p99; the liveness records the flushes wrote in that second; about the writer's
//! slowest commit in it), then p50, p99 and max per kind, the creates and resolves in flight
//! near a liveness flush against the others, the store writer's figures and the CPU. Session
//! creates and approval resolves must stay under `TARGET_P99` at p99; heartbeats are reported.
//! A run that did not generate the named load (`LOAD_SHARE_NEEDED` of each rate, every runner
//! beating, the resolves) is NOT MEASURED and fails. Latencies are each request's own, from the
//! moment it was sent; a request sent more than `LATE` after its slot counts as late (the load
//! generator fell behind, or the human had no approval to answer), and late requests are
//! counted.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use super::*;

/// Runners beating over REST.
const MIXED_RUNNERS: usize = 10_000;
const BEAT_EVERY: Duration = Duration::from_secs(10);
const BEAT_CONNECTIONS: usize = 32;
/// One runner in this many reports a changed `activeSessions` list on every beat.
const FLAPPING_EVERY: usize = 10;
const CREATES_PER_SEC: u32 = 50;
const CREATE_CONNECTIONS: u32 = 4;
const RESOLVES_PER_SEC: u32 = 20;
const RESOLVE_CONNECTIONS: u32 = 2;
/// Runners with their channels open that run the sessions (5 sessions each by default).
const WORKING_RUNNERS: usize = 200;
/// Every this many assigned sessions, one asks for an approval: 25 asked per second for 20
/// answered.
const ASK_EVERY: u64 = 2;
/// How long a session that asks for nothing runs.
const SESSION_LIFE: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_secs(3);
const MEASURED: Duration = Duration::from_secs(30);
const TARGET_P99: Duration = Duration::from_millis(20);
/// A request sent this long after its slot is late.
const LATE: Duration = Duration::from_millis(10);
/// How often the liveness counter is read, to place each flush in its second.
const FLUSH_WATCH: Duration = Duration::from_millis(20);
/// A request in flight during the `FLUSH_SPAN` before the counter was seen to move is "near a
/// flush" (the counter moves once the flush's last slice is written).
const FLUSH_SPAN: Duration = Duration::from_millis(150);

async fn wait_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// The timeline of a run: the load starts at `start`; `from..to` is measured.
#[derive(Clone, Copy)]
struct Timeline {
    start: Instant,
    from: Instant,
    to: Instant,
}

impl Timeline {
    fn measures(&self, at: Instant) -> bool {
        at >= self.from && at < self.to
    }

    /// The measured second `at` falls in.
    fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.from).as_secs() as usize
    }
}

/// One request: its slot, when it was sent, its latency, and for a beat the runner and whether
/// its list changed.
#[derive(Clone, Copy)]
struct Sample {
    due: Instant,
    sent: Instant,
    took: Duration,
    beat: Option<(usize, bool)>,
}

/// The next request of a paced connection, and what it is (for beats).
struct Next {
    call: Call,
    beat: Option<(usize, bool)>,
}

/// One connection sending a request every `period` from `first` until `end`, each the one
/// `next` gives (None stops it); every answer must be `expect`.
async fn paced<F, Fut>(
    mut client: Client,
    first: Instant,
    period: Duration,
    end: Instant,
    expect: StatusCode,
    mut next: F,
) -> Vec<Sample>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Option<Next>>,
{
    let mut samples = Vec::new();
    for k in 0u32.. {
        let due = first + period * k;
        if due >= end {
            break;
        }
        wait_until(due).await;
        let Some(Next { call, beat }) = next(k).await else {
            break;
        };
        let sent = Instant::now();
        client.post_expecting(&call, expect).await;
        samples.push(Sample {
            due,
            sent,
            took: sent.elapsed(),
            beat,
        });
    }
    samples
}

/// `call` with its body's `activeSessions` replaced.
fn listing(call: &Call, sessions: &[&str]) -> Call {
    let mut body: Value = serde_json::from_slice(&call.body).unwrap();
    body["activeSessions"] = json!(sessions);
    Call {
        body: Bytes::from(body.to_string()),
        ..call.clone()
    }
}

fn random_uuid() -> String {
    uuid::Uuid::from_u128(rand::random()).to_string()
}

/// What the working runners share: the run's timeline, the way to the human, and counts.
struct Crew {
    timeline: Timeline,
    /// (session, approval) for the human to answer.
    asks: mpsc::UnboundedSender<(String, String)>,
    assigned: AtomicU64,
    asked: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Channel beats in the measured window whose list differed from the runner's previous one.
    changed_beats: AtomicU64,
}

/// A working runner's sessions: the assignment of each it holds, and when the ones that ask for
/// nothing end.
#[derive(Default)]
struct Held {
    assignments: HashMap<String, Value>,
    ending: VecDeque<(Instant, String)>,
    listed: Vec<String>,
}

impl Crew {
    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The frames answering `frame` from the server.
    fn answer(&self, frame: &Value, held: &mut Held) -> Vec<Value> {
        let kind = frame["type"].as_str().unwrap_or("");
        let session = frame["sessionId"].as_str().unwrap_or("").to_owned();
        let mut out = Vec::new();
        match kind {
            "heartbeat_ack" => {}
            "ack" => {
                let approval = &frame["data"]["approvalId"];
                if let (Some(approval), Some(of)) =
                    (approval.as_str(), frame["data"]["sessionId"].as_str())
                {
                    self.asked.fetch_add(1, Ordering::Relaxed);
                    let _ = self.asks.send((of.to_owned(), approval.to_owned()));
                }
            }
            "error" => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| frame.to_string());
            }
            command if frame["messageId"].is_string() => {
                out.push(json!({"type": "ack", "messageId": frame["messageId"]}));
                if command == "assign_session" {
                    out.extend(self.start(frame, held));
                } else if command == "approval_resolved"
                    && let Some(assignment) = held.assignments.remove(&session)
                {
                    out.push(finished(&session, assignment));
                    self.completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        out
    }

    /// Starts an assigned session: RUNNING, then an approval request or a timer to its end.
    fn start(&self, frame: &Value, held: &mut Held) -> Vec<Value> {
        let session = frame["session"]["sessionId"].as_str().unwrap().to_owned();
        let assignment = frame["assignmentId"].clone();
        let mut out = vec![json!({
            "type": "session_state",
            "sessionId": session,
            "assignmentId": assignment,
            "state": "RUNNING",
        })];
        if self
            .assigned
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(ASK_EVERY)
        {
            out.push(json!({
                "type": "approval_request",
                "messageId": random_uuid(),
                "sessionId": session,
                "assignmentId": assignment,
                "action": "command",
                "description": "run `cargo test --workspace`",
                "context": {"tool": "Bash", "input": {"command": "cargo test --workspace"}},
            }));
        } else {
            held.ending
                .push_back((Instant::now() + SESSION_LIFE, session.clone()));
        }
        held.assignments.insert(session, assignment);
        out
    }

    /// Its heartbeat frame, listing the sessions it holds.
    fn beat(&self, beat: &Call, held: &mut Held) -> Value {
        let mut sessions: Vec<String> = held.assignments.keys().cloned().collect();
        sessions.sort_unstable();
        if sessions != held.listed && self.timeline.measures(Instant::now()) {
            self.changed_beats.fetch_add(1, Ordering::Relaxed);
        }
        let refs: Vec<&str> = sessions.iter().map(String::as_str).collect();
        let mut frame: Value = serde_json::from_slice(&listing(beat, &refs).body).unwrap();
        frame["type"] = json!("heartbeat");
        held.listed = sessions;
        frame
    }
}

/// The state report that ends `session` as COMPLETED.
fn finished(session: &str, assignment: Value) -> Value {
    json!({
        "type": "session_state",
        "sessionId": session,
        "assignmentId": assignment,
        "state": "COMPLETED",
    })
}

/// A working runner on its open channel, beating every `BEAT_EVERY` from `first_beat`, until the
/// channel closes.
async fn work(crew: Arc<Crew>, runner: BenchRunner, mut socket: RunnerSocket, first_beat: Instant) {
    let beat = runner.heartbeat();
    let mut held = Held::default();
    let mut next_beat = first_beat;
    loop {
        let next_end = held
            .ending
            .front()
            .map_or(next_beat + BEAT_EVERY, |(at, _)| *at);
        let out = tokio::select! {
            message = socket.next() => {
                let Some(Ok(message)) = message else { return };
                let Message::Text(text) = message else { continue };
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                crew.answer(&frame, &mut held)
            }
            () = wait_until(next_end) => {
                let Some((_, session)) = held.ending.pop_front() else { continue };
                let Some(assignment) = held.assignments.remove(&session) else { continue };
                crew.completed.fetch_add(1, Ordering::Relaxed);
                vec![finished(&session, assignment)]
            }
            () = wait_until(next_beat) => {
                next_beat += BEAT_EVERY;
                vec![crew.beat(&beat, &mut held)]
            }
        };
        for frame in out {
            if socket.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    }
}

/// The REST beaters: `BEAT_CONNECTIONS` connections, each beating for its share of `runners`
/// (dealt round-robin), one runner every `BEAT_EVERY` / share, the connections' slots staggered.
async fn spawn_beaters(
    addr: SocketAddr,
    runners: &[BenchRunner],
    timeline: Timeline,
) -> Vec<JoinHandle<Vec<Sample>>> {
    // The one session the flapping runners list every other beat.
    let phantom = random_uuid();
    let beats: Vec<(usize, Call, Option<Call>)> = runners
        .iter()
        .enumerate()
        .map(|(i, runner)| {
            let plain = runner.heartbeat();
            let flapped = i
                .is_multiple_of(FLAPPING_EVERY)
                .then(|| listing(&plain, &[phantom.as_str()]));
            (i, plain, flapped)
        })
        .collect();
    let mut tasks = Vec::with_capacity(BEAT_CONNECTIONS);
    for (c, hand) in deal(beats, BEAT_CONNECTIONS).into_iter().enumerate() {
        let client = Client::connect(addr, c).await;
        let period = BEAT_EVERY / hand.len() as u32;
        let first = timeline.start + period * c as u32 / BEAT_CONNECTIONS as u32;
        let next = move |k: u32| {
            let (runner, plain, flapped) = &hand[k as usize % hand.len()];
            // Runner's n-th beat in the run: the flapping ones list the phantom on even beats
            // (their setup beat listed nothing), so each of their beats is a change.
            let n = k as usize / hand.len();
            let next = match flapped {
                Some(listed) if n.is_multiple_of(2) => Next {
                    call: listed.clone(),
                    beat: Some((*runner, true)),
                },
                Some(_) => Next {
                    call: plain.clone(),
                    beat: Some((*runner, true)),
                },
                None => Next {
                    call: plain.clone(),
                    beat: Some((*runner, false)),
                },
            };
            std::future::ready(Some(next))
        };
        tasks.push(tokio::spawn(paced(
            client,
            first,
            period,
            timeline.to,
            StatusCode::OK,
            next,
        )));
    }
    tasks
}

/// What one kind of request did in the measured window.
struct Kind {
    name: &'static str,
    samples: Vec<Sample>,
}

impl Kind {
    fn new(name: &'static str, all: Vec<Sample>, timeline: &Timeline) -> Self {
        let samples = all
            .into_iter()
            .filter(|s| timeline.measures(s.due))
            .collect();
        Self { name, samples }
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut took: Vec<Duration> = self.samples.iter().map(|s| s.took).collect();
        took.sort_unstable();
        took
    }

    fn p99(&self) -> Duration {
        percentile(&self.sorted(), 99.0)
    }

    fn per_sec(&self) -> f64 {
        self.samples.len() as f64 / MEASURED.as_secs_f64()
    }

    /// (count, p99 ms) per measured second.
    fn seconds(&self, timeline: &Timeline) -> Vec<(usize, f64)> {
        let mut by_second: Vec<Vec<Duration>> = vec![Vec::new(); MEASURED.as_secs() as usize];
        for s in &self.samples {
            by_second[timeline.second(s.due)].push(s.took);
        }
        by_second
            .into_iter()
            .map(|mut took| {
                took.sort_unstable();
                (took.len(), millis(percentile(&took, 99.0)))
            })
            .collect()
    }

    /// The latencies of the requests in flight near one of `flushes` (when the liveness
    /// counter was seen to move), and of the others; each sorted.
    fn near(&self, flushes: &[Instant]) -> (Vec<Duration>, Vec<Duration>) {
        let (mut near, mut far) = (Vec::new(), Vec::new());
        for s in &self.samples {
            let overlaps = flushes
                .iter()
                .any(|&seen| s.sent < seen && s.sent + s.took + FLUSH_WATCH > seen - FLUSH_SPAN);
            if overlaps {
                near.push(s.took);
            } else {
                far.push(s.took);
            }
        }
        near.sort_unstable();
        far.sort_unstable();
        (near, far)
    }

    fn print(&self) {
        let took = self.sorted();
        let late = self
            .samples
            .iter()
            .filter(|s| s.sent.duration_since(s.due) > LATE)
            .count();
        println!(
            "{:<10} {:>7} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>6}",
            self.name,
            took.len(),
            self.per_sec(),
            millis(percentile(&took, 50.0)),
            millis(percentile(&took, 99.0)),
            millis(took.last().copied().unwrap_or_default()),
            late
        );
    }
}

async fn collect(tasks: Vec<JoinHandle<Vec<Sample>>>) -> Vec<Sample> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Above this much written to the disk by others while measured, slow commits may be theirs.
const DISK_DISTURBANCE_MIB: f64 = 32.0;

/// Bytes written to storage so far: by the whole machine (`/proc/vmstat` `pgpgout`, KiB) and by
/// this process (`/proc/self/io` `write_bytes`). Zeros where unknown.
#[derive(Clone, Copy)]
struct DiskWrites {
    machine_kib: u64,
    own_bytes: u64,
}

impl DiskWrites {
    fn now() -> Self {
        let field = |path: &str, name: &str| -> u64 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            machine_kib: field("/proc/vmstat", "pgpgout "),
            own_bytes: field("/proc/self/io", "write_bytes:"),
        }
    }

    /// Prints what this process and the others wrote since `before`; returns the others' MiB.
    fn report_since(&self, before: &DiskWrites) -> f64 {
        let machine = (self.machine_kib - before.machine_kib) as f64 / 1024.0;
        let own = (self.own_bytes - before.own_bytes) as f64 / 1048576.0;
        let others = (machine - own).max(0.0);
        println!("    disk: this process wrote {own:.1} MiB, other processes {others:.1} MiB");
        others
    }
}

/// The server's counters at one moment.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    liveness: u64,
    writer: WriterCounts,
}

impl Reading {
    fn of(server: &BenchServer) -> Self {
        Self {
            at: Instant::now(),
            liveness: server.state.runners.liveness_records_written(),
            writer: server.writer_counts(),
        }
    }
}

/// Reads the server's counters every `FLUSH_WATCH` until `to`.
async fn watch(server: &BenchServer, to: Instant) -> Vec<Reading> {
    let mut readings = vec![Reading::of(server)];
    while Instant::now() < to {
        tokio::time::sleep(FLUSH_WATCH).await;
        readings.push(Reading::of(server));
    }
    readings
}

pub async fn mixed_scenario() -> ExitCode {
    let parent = std::env::temp_dir();
    let connections =
        SETUP_CONNECTIONS + BEAT_CONNECTIONS + (CREATE_CONNECTIONS + RESOLVE_CONNECTIONS) as usize;
    let needed = 2 * (WORKING_RUNNERS + connections) + 256;
    if let Some(limit) = open_file_limit().filter(|&limit| limit < needed as u64) {
        eprintln!(
            "the open-file limit is {limit}; this scenario needs about {needed}: \
             run it after `ulimit -n 65536`"
        );
        return ExitCode::from(2);
    }
    println!("database under {}", parent.display());
    println!(
        "{MIXED_RUNNERS} runners beating every {} s over {BEAT_CONNECTIONS} connections (1 in \
         {FLAPPING_EVERY} with a changed session list); {CREATES_PER_SEC} creates/s over \
         {CREATE_CONNECTIONS} connections, run by {WORKING_RUNNERS} connected runners; \
         {RESOLVES_PER_SEC} approvals resolved/s over {RESOLVE_CONNECTIONS}; {} s warm-up, {} s \
         measured\n",
        BEAT_EVERY.as_secs(),
        WARMUP.as_secs(),
        MEASURED.as_secs()
    );
    let server = BenchServer::start(&parent).await;
    let began = Instant::now();
    let mut beaters = server
        .register_runners(WORKING_RUNNERS + MIXED_RUNNERS)
        .await;
    let workers: Vec<BenchRunner> = beaters.drain(..WORKING_RUNNERS).collect();
    let registered = began.elapsed();
    // One beat each: a first beat reports versions and a build, which a restart needs, so the
    // first flush writes every runner; it is done here, before the run.
    let first_beats = workers
        .iter()
        .chain(&beaters)
        .map(BenchRunner::heartbeat)
        .collect();
    send_each(server.addr, first_beats, SETUP_CONNECTIONS, StatusCode::OK).await;
    let flush = Instant::now();
    let flushed = server.state.runners.flush_liveness(false).await.unwrap();
    let flush = flush.elapsed();
    let mut sockets = Vec::with_capacity(WORKING_RUNNERS);
    for hand in deal(workers, SETUP_CONNECTIONS) {
        let addr = server.addr;
        sockets.push(tokio::spawn(async move {
            let mut opened = Vec::with_capacity(hand.len());
            for runner in hand {
                let socket = runner.open_channel(addr).await;
                opened.push((runner, socket));
            }
            opened
        }));
    }
    let mut channels = Vec::with_capacity(WORKING_RUNNERS);
    for opener in sockets {
        channels.extend(opener.await.unwrap());
    }
    server.wait_schedulable(WORKING_RUNNERS).await;
    println!(
        "setup: {} runners registered in {:.1} s; one beat each, then {flushed} liveness records \
         written in {:.0} ms; {WORKING_RUNNERS} channels open",
        WORKING_RUNNERS + MIXED_RUNNERS,
        registered.as_secs_f64(),
        millis(flush)
    );

    let start = Instant::now() + Duration::from_millis(200);
    let timeline = Timeline {
        start,
        from: start + WARMUP,
        to: start + WARMUP + MEASURED,
    };
    let (asks, asked) = mpsc::unbounded_channel();
    let crew = Arc::new(Crew {
        timeline,
        asks,
        assigned: AtomicU64::new(0),
        asked: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        changed_beats: AtomicU64::new(0),
    });
    let players: Vec<JoinHandle<()>> = channels
        .into_iter()
        .enumerate()
        .map(|(i, (runner, socket))| {
            let first_beat = start + BEAT_EVERY * i as u32 / WORKING_RUNNERS as u32;
            tokio::spawn(work(crew.clone(), runner, socket, first_beat))
        })
        .collect();
    let beats = spawn_beaters(server.addr, &beaters, timeline).await;

    let create = session_create(&server);
    let period = Duration::from_secs(1) * CREATE_CONNECTIONS / CREATES_PER_SEC;
    let mut creates = Vec::new();
    for c in 0..CREATE_CONNECTIONS {
        let client = Client::connect(server.addr, 1000 + c as usize).await;
        let create = create.clone();
        let next = move |_: u32| {
            std::future::ready(Some(Next {
                call: create.clone(),
                beat: None,
            }))
        };
        let first = start + period * c / CREATE_CONNECTIONS;
        let sending = paced(
            client,
            first,
            period,
            timeline.to,
            StatusCode::CREATED,
            next,
        );
        creates.push(tokio::spawn(sending));
    }

    let asked = Arc::new(tokio::sync::Mutex::new(asked));
    let period = Duration::from_secs(1) * RESOLVE_CONNECTIONS / RESOLVES_PER_SEC;
    let mut resolves = Vec::new();
    for c in 0..RESOLVE_CONNECTIONS {
        let client = Client::connect(server.addr, 2000 + c as usize).await;
        let (asked, admin, end) = (asked.clone(), server.admin_token.clone(), timeline.to);
        let next = move |_: u32| {
            let (asked, admin) = (asked.clone(), admin.clone());
            async move {
                let mut asked = asked.lock().await;
                let waiting = tokio::time::timeout_at(end.into(), asked.recv());
                let (session, approval) = waiting.await.ok()??;
                let path = format!("/api/v1/sessions/{session}/approvals/{approval}/resolve");
                Some(Next {
                    call: Call::new(path, &admin, &json!({"decision": "allow"})),
                    beat: None,
                })
            }
        };
        let first = start + period * c / RESOLVE_CONNECTIONS;
        resolves.push(tokio::spawn(paced(
            client,
            first,
            period,
            timeline.to,
            StatusCode::OK,
            next,
        )));
    }

    wait_until(timeline.from).await;
    let (cpu, disk) = (CpuSample::now(), DiskWrites::now());
    let assigned = Crew::count(&crew.assigned);
    let readings = watch(&server, timeline.to).await;
    let (cpu_after, disk_after) = (CpuSample::now(), DiskWrites::now());
    let assigned = Crew::count(&crew.assigned) - assigned;
    let (first, last) = (readings[0], readings[readings.len() - 1]);
    let written = last.liveness - first.liveness;

    let beats = Kind::new("heartbeat", collect(beats).await, &timeline);
    let creates = Kind::new("create", collect(creates).await, &timeline);
    let resolves = Kind::new("resolve", collect(resolves).await, &timeline);

    // Per second: the load and its p99; the liveness records flushed in that second; and the
    // most time the writer spent committing within one reading (about its slowest commit).
    let mut flushed_in = vec![0u64; MEASURED.as_secs() as usize];
    let mut commit_ms = vec![0f64; MEASURED.as_secs() as usize];
    let mut flush_times = Vec::new();
    for pair in readings.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if !timeline.measures(after.at) {
            continue;
        }
        let second = timeline.second(after.at);
        flushed_in[second] += after.liveness - before.liveness;
        if after.liveness > before.liveness {
            flush_times.push(after.at);
        }
        let committing = after.writer.commit_micros - before.writer.commit_micros;
        commit_ms[second] = commit_ms[second].max(committing as f64 / 1000.0);
    }
    println!(
        "{:>4} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>10}",
        "s", "beats", "p99 ms", "creates", "p99 ms", "resolves", "p99 ms", "liveness", "commit ms"
    );
    let rows = beats
        .seconds(&timeline)
        .into_iter()
        .zip(creates.seconds(&timeline))
        .zip(resolves.seconds(&timeline))
        .zip(flushed_in.iter().zip(&commit_ms));
    for (second, (((b, c), r), (f, w))) in rows.enumerate() {
        println!(
            "{second:>4} {:>7} {:>8.2} {:>8} {:>8.2} {:>9} {:>8.2} {f:>9} {w:>10.1}",
            b.0, b.1, c.0, c.1, r.0, r.1
        );
    }
    println!(
        "\n{:<10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "request", "count", "per s", "p50 ms", "p99 ms", "max ms", "late"
    );
    for kind in [&beats, &creates, &resolves] {
        kind.print();
    }
    for kind in [&creates, &resolves] {
        let (near, far) = kind.near(&flush_times);
        println!(
            "    {} near a liveness flush: {} requests, p99 {:.2} ms, max {:.2} ms; the others: \
             {}, p99 {:.2} ms",
            kind.name,
            near.len(),
            millis(percentile(&near, 99.0)),
            millis(near.last().copied().unwrap_or_default()),
            far.len(),
            millis(percentile(&far, 99.0))
        );
    }
    last.writer.report_since(&first.writer, MEASURED);
    let disturbance = cpu_after.report_since(&cpu);
    let disk_others = disk_after.report_since(&disk);
    let changed_rest = beats
        .samples
        .iter()
        .filter(|s| s.beat.is_some_and(|(_, changed)| changed))
        .count() as u64;
    let changed_channel = Crew::count(&crew.changed_beats);
    println!(
        "    liveness: {written} records written by the flushes while measured, for {} beats \
         with a changed session list ({changed_rest} over REST, {changed_channel} on channels)",
        changed_rest + changed_channel
    );
    println!(
        "    sessions: {assigned} assigned while measured; in the whole run {} assigned, {} \
         approvals asked, {} sessions completed; {} error frames at runners",
        Crew::count(&crew.assigned),
        Crew::count(&crew.asked),
        Crew::count(&crew.completed),
        Crew::count(&crew.errors)
    );
    if let Some(frame) = crew.first_error.lock().unwrap().take() {
        println!("    the first error frame: {frame}");
    }
    server.report_upkeep().await;

    let beaten: HashSet<usize> = beats
        .samples
        .iter()
        .filter_map(|s| s.beat.map(|(runner, _)| runner))
        .collect();
    let resolves_named = (u64::from(RESOLVES_PER_SEC) * MEASURED.as_secs()) as f64;
    let load = [
        (
            format!(
                "beats {:.0}/s of {}/s",
                beats.per_sec(),
                MIXED_RUNNERS as u64 / BEAT_EVERY.as_secs()
            ),
            beats.per_sec() / (MIXED_RUNNERS as f64 / BEAT_EVERY.as_secs_f64()),
        ),
        (
            format!("runners beating {} of {MIXED_RUNNERS}", beaten.len()),
            // Every runner, not a share.
            if beaten.len() == MIXED_RUNNERS {
                1.0
            } else {
                0.0
            },
        ),
        (
            format!("creates {:.1}/s of {CREATES_PER_SEC}/s", creates.per_sec()),
            creates.per_sec() / f64::from(CREATES_PER_SEC),
        ),
        (
            format!("resolves {} of {resolves_named:.0}", resolves.samples.len()),
            resolves.samples.len() as f64 / resolves_named,
        ),
    ];
    let load_ok = load.iter().all(|(_, share)| *share >= LOAD_SHARE_NEEDED);
    println!(
        "\nload: {} (at least {:.0} % of each needed): {}",
        load.iter()
            .map(|(what, _)| what.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        LOAD_SHARE_NEEDED * 100.0,
        if load_ok { "PASS" } else { "NOT MEASURED" }
    );
    println!("heartbeat p99: {:.2} ms (reported)", millis(beats.p99()));
    let mut pass = load_ok;
    for kind in [&creates, &resolves] {
        let ok = load_ok && kind.p99() < TARGET_P99;
        pass &= ok;
        println!(
            "{} p99: {:.2} ms (target < {} ms, at the named load): {}",
            kind.name,
            millis(kind.p99()),
            TARGET_P99.as_millis(),
            if load_ok { verdict(ok) } else { "NOT MEASURED" }
        );
    }
    if disturbance > DISTURBANCE_LIMIT {
        println!(
            "\nWARNING: other processes or the hypervisor took {disturbance:.0} % of the CPU: \
             these figures do not count; rerun on an idle machine"
        );
    }
    if disk_others > DISK_DISTURBANCE_MIB {
        println!(
            "\nWARNING: other processes wrote {disk_others:.0} MiB to the disk while measured: \
             slow commits (the commit ms column) may be their writeback; rerun on a quiet disk"
        );
    }
    drop(crew);
    server.stop().await;
    for player in players {
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, player).await;
    }
    exit_code(pass)
}
