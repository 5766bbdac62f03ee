//! Store conformance: what every storage engine must do, written against the storage traits
//! (`village::store::{ReadTxn, WriteTxn}` and the per-area traits) and the records only.
//!
//! The checks live in `mod checks`; each takes an [`OpenFn`], the engine under test, and knows
//! nothing of how the engine stores things. The engine is chosen in one place: the
//! `conformance!` invocation below, which turns every check into a `#[tokio::test]`
//! run on [`open_redb`] (the redb engine, on a temporary data dir). To run the suite on a
//! second engine, write its `OpenFn` and add a second `conformance!` invocation (in a module of
//! its own) naming it.
//!
//! Time is plain `Millis` numbers chosen by the checks; nothing sleeps. "A batch" is the set of
//! write jobs the writer takes together into one transaction: the batch checks hold the writer
//! with a job of their own until all of their jobs are queued, so those jobs share one batch.
//!
//! The failed-commit check mounts a tiny tmpfs (it needs root and `mount`); where that is not
//! possible it prints why and passes without checking anything. After the failure it reopens
//! the engine on the same data dir and checks that everything committed before is there.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use uuid::Uuid;
use village::audit::model::AuditEntry;
use village::auth::model::{TokenKind, TokenRecord};
use village::clock::Millis;
use village::events::model::{BusEvent, DomainEvent, RunnerEventKind};
use village::pipeline::model::{
    BuildRecord, BuildStatus, Channel, ChannelRecord, OrgRuntimeConfig, Outcome, PipelineState,
    Recommendation, Rollout, RolloutState, StageCounts, Verdict, VersionRecord,
};
use village::runners::model::{
    Capabilities, Liveness, Load, OutboxEntry, RunnerCommand, RunnerRecord,
};
use village::sessions::model::{
    Approval, ApprovalAction, ApprovalScope, Decision, OutputChunk, OutputStream, Provider, Repo,
    Resolution, Session, SessionEvent, SessionOptions, SessionState, Timer, TimerKind, Usage,
};
use village::store::*;
use village::webhooks::model::{Delivery, DeliveryStatus, Webhook};

// ------------------------------------------------------------------------------------------
// The engine under test
// ------------------------------------------------------------------------------------------

/// Opens (or reopens) an engine whose data lives in `dir` (created if missing), publishing to
/// `publisher`.
pub type OpenFn = fn(&Path, Recorder) -> StoreResult<Store>;

/// The redb engine.
fn open_redb(dir: &Path, publisher: Recorder) -> StoreResult<Store> {
    std::fs::create_dir_all(dir).expect("create the data dir");
    Store::open(&dir.join("village.redb"), publisher)
}

/// Instantiates every check as a `#[tokio::test]` on the engine `$open`.
macro_rules! conformance {
    (engine: $open:path; checks: $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                crate::checks::$check($open).await;
            }
        )*
    };
}

conformance! {
    engine: open_redb;
    checks:
        sessions_round_trip_and_keep_their_indexes,
        delete_session_removes_everything_of_it,
        purge_steps_are_bounded_and_end_with_the_session,
        the_census_counts_the_sessions_not_yet_ended,
        events_and_output_are_numbered_per_session,
        approvals_list_in_request_order,
        approval_seqs_are_counted_per_session,
        spend_is_added_per_day_and_month_and_org,
        tokens_round_trip,
        runners_hostnames_liveness_and_outbox,
        webhooks_and_deliveries,
        audit_is_numbered_contiguously,
        timers_come_due_in_order,
        pipeline_records_round_trip,
        sequence_numbers_never_repeat,
        reads_in_a_job_see_earlier_writes,
        a_job_refused_before_writing_leaves_its_batch_alone,
        a_job_failing_after_writing_abandons_its_batch,
        a_panicking_job_abandons_its_batch_and_the_store_goes_on,
        only_committed_batches_are_published_in_commit_order,
        after_commit_updates_run_before_callers_hear_and_only_for_committed_jobs,
        a_failed_commit_is_reported_and_committed_data_stays,
        a_command_withdrawn_in_its_own_batch_is_not_handed_to_its_runner,
}

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

/// What the publisher saw, in the order it saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    Command {
        runner: Uuid,
        seq: u64,
    },
    /// An event, by its label (see [`label`]).
    Event(String),
}

/// A publisher that forwards everything to the test.
pub struct Recorder(UnboundedSender<Published>);

impl Publisher for Recorder {
    fn publish_command(&self, command: OutboxEntry) {
        let _ = self.0.send(Published::Command {
            runner: command.runner_id,
            seq: command.seq,
        });
    }

    fn publish(&self, event: BusEvent) {
        let text = match event.event {
            DomainEvent::Runner { hostname, .. } => hostname,
            other => other.name().to_owned(),
        };
        let _ = self.0.send(Published::Event(text));
    }
}

/// An event the checks emit, told apart by `text`.
fn label(text: &str) -> BusEvent {
    BusEvent::new(
        0,
        None,
        None,
        DomainEvent::Runner {
            kind: RunnerEventKind::Registered,
            runner_id: Uuid::nil(),
            hostname: text.to_owned(),
        },
    )
}

/// A write job's error: the store's, or the job's own refusal.
#[derive(Debug)]
pub enum JobError {
    Store(StoreError),
    Refused(&'static str),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Store(e)
    }
}

type JobResult<R> = Result<R, JobError>;
type QueuedJob<'a, R> = Pin<Box<dyn Future<Output = JobResult<R>> + 'a>>;

/// An engine on a fresh data dir, and what it published.
pub struct Harness {
    pub store: Store,
    published: UnboundedReceiver<Published>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    fn new(open: OpenFn) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary dir");
        let mut h = Harness::at(open, &dir.path().join("data"));
        h._dir = Some(dir);
        h
    }

    fn at(open: OpenFn, dir: &Path) -> Harness {
        let (tx, rx) = unbounded_channel();
        Harness {
            store: open(dir, Recorder(tx)).expect("open the store"),
            published: rx,
            _dir: None,
        }
    }

    /// Reopens the engine on `dir` once the instance that had it open has let go of it (its
    /// writer finishes on its own after the last handle is dropped).
    async fn reopen(open: OpenFn, dir: &Path) -> Harness {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (tx, rx) = unbounded_channel();
            match open(dir, Recorder(tx)) {
                Ok(store) => {
                    return Harness {
                        store,
                        published: rx,
                        _dir: None,
                    };
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("the store does not reopen: {e}"),
            }
        }
    }

    /// Drops the engine and returns everything it published that was not received yet.
    async fn close(self) -> Vec<Published> {
        let Harness {
            store,
            mut published,
            _dir,
        } = self;
        drop(store);
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), published.recv()).await {
                Ok(Some(p)) => out.push(p),
                Ok(None) => return out,
                Err(_) => panic!("the closed store still holds its publisher"),
            }
        }
    }

    /// Runs a write job that must commit.
    async fn write<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&mut dyn WriteTxn) -> StoreResult<R> + Send + 'static,
        R: Send + 'static,
    {
        self.store.write(f).await.expect("the write job commits")
    }

    /// Reads from a snapshot; the read must succeed.
    async fn read<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&dyn ReadTxn) -> StoreResult<R> + Send + 'static,
        R: Send + 'static,
    {
        self.store.read(f).await.expect("the read succeeds")
    }

    /// Queues `jobs` so that they share one batch, and returns their results in order.
    ///
    /// A holding job keeps the writer busy until every job of `jobs` has been handed to the
    /// store (each is polled once), so the writer then takes them all together.
    async fn in_one_batch<'a, R>(&'a self, mut jobs: Vec<QueuedJob<'a, R>>) -> Vec<JobResult<R>> {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = self.store.clone();
        let hold = tokio::spawn(async move {
            holder
                .write(move |_w| {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                    Ok::<_, StoreError>(())
                })
                .await
        });
        started_rx.await.expect("the writer runs the holding job");
        std::future::poll_fn(|cx| {
            for job in &mut jobs {
                assert!(
                    job.as_mut().poll(cx).is_pending(),
                    "a job finished while the writer was held"
                );
            }
            Poll::Ready(())
        })
        .await;
        release_tx.send(()).expect("release the writer");
        hold.await
            .expect("the holding task")
            .expect("the holding job commits");
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(job.await);
        }
        out
    }

    /// Commits a job emitting `last` and returns everything published up to and including it.
    /// Batches are published in commit order, so nothing of an earlier batch can come later.
    async fn published_through(&mut self, last: &str) -> Vec<Published> {
        let text = last.to_owned();
        self.write(move |w| {
            w.emit(label(&text));
            Ok(())
        })
        .await;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), self.published.recv())
                .await
                .expect("the publisher hears of the last commit")
                .expect("the publisher is alive");
            let done = next == Published::Event(last.to_owned());
            out.push(next);
            if done {
                return out;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn session(
    n: u128,
    org: &str,
    created_at: Millis,
    state: SessionState,
    runner: Option<Uuid>,
) -> Session {
    Session {
        id: id(n),
        org_id: org.to_owned(),
        provider: Provider::ClaudeCode,
        repo: Repo {
            url: format!("https://git.example/repo-{n}"),
            branch: "main".to_owned(),
            commit: "0123abcd".to_owned(),
        },
        task: Some(format!("task {n}")),
        options: SessionOptions {
            timeout_minutes: Some(30.0),
            env: BTreeMap::from([("KEY".to_owned(), "value".to_owned())]),
            dangerously_skip_permissions: false,
            required_features: vec!["gpu".to_owned()],
        },
        state,
        created_at,
        started_running_at: state.is_started().then_some(created_at + 10),
        completed_at: state.is_terminal().then_some(created_at + 20),
        end_reason: None,
        error: None,
        runner_id: runner,
        assignment_id: runner.map(|_| id(0xa55_0000 + n)),
        assigned_at: runner.map(|_| created_at + 5),
        runner_history: runner.into_iter().collect(),
        usage: Usage {
            tokens_in: 11,
            tokens_out: 22,
            api_calls: 3,
            compute_seconds: 1.5,
            cost_usd: 0.25,
        },
        timeout_ms: 1_800_000,
        output_bytes: 0,
        workspace_size_bytes: Some(4096),
        updated_at: created_at,
    }
}

/// `s` moved to `state` on `runner`.
fn moved(s: &Session, state: SessionState, runner: Option<Uuid>) -> Session {
    let mut s = s.clone();
    s.state = state;
    s.runner_id = runner;
    s.updated_at += 1;
    if state.is_terminal() {
        s.completed_at = Some(s.updated_at);
    }
    s
}

fn chunk(seq: u64, offset: u64, data: &str) -> OutputChunk {
    OutputChunk {
        seq,
        stream: if seq.is_multiple_of(2) {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        },
        data: data.to_owned(),
        at: 10_000 + seq as Millis,
        offset,
    }
}

fn approval(n: u128, session: Uuid, seq: u64) -> Approval {
    Approval {
        id: id(n),
        seq,
        session_id: session,
        action: ApprovalAction::DepsAdd,
        description: format!("approval {seq}"),
        context_json: Some(format!("{{\"n\":{seq}}}")),
        requested_at: 2_000 + seq as Millis,
        expires_at: 9_000,
        resolution: None,
    }
}

fn token(n: u128, revoked_at: Option<Millis>) -> TokenRecord {
    TokenRecord {
        id: id(n),
        kind: TokenKind::Org,
        name: format!("token-{n}"),
        org_id: Some("acme".to_owned()),
        runner_id: None,
        hash: [n as u8; 32],
        created_at: 1_000,
        revoked_at,
    }
}

fn runner(n: u128, hostname: &str) -> RunnerRecord {
    RunnerRecord {
        id: id(n),
        hostname: hostname.to_owned(),
        org_id: Some("acme".to_owned()),
        capabilities: Capabilities {
            providers: vec![Provider::Codex, Provider::GeminiCli],
            max_concurrent_sessions: 4,
            features: vec!["gpu".to_owned()],
        },
        metadata_json: Some("{\"rack\":7}".to_owned()),
        registered_at: 1_000,
        token_id: id(0x7000 + n),
        draining: false,
        drained_at: None,
        revision: 0,
    }
}

fn liveness(at: Millis, sessions: Vec<Uuid>) -> Liveness {
    Liveness {
        last_heartbeat: at,
        load: Load {
            cpu_percent: 12.5,
            memory_percent: 40.0,
            disk_percent: 3.0,
        },
        runtime_versions: BTreeMap::from([("codex".to_owned(), "1.2.3".to_owned())]),
        build_id: Some("b-1".to_owned()),
        active_sessions: sessions,
    }
}

fn webhook(n: u128, url: &str) -> Webhook {
    Webhook {
        id: id(n),
        url: url.to_owned(),
        events: vec!["*".to_owned()],
        org_id: Some("acme".to_owned()),
        secret: Some("s3cret".to_owned()),
        created_at: 1_000,
    }
}

/// Delivery ids grow with creation time (the domain's ids are time-ordered), so a higher `n`
/// is a newer delivery.
fn delivery(n: u128, hook: Uuid, status: DeliveryStatus, next_attempt_at: Millis) -> Delivery {
    Delivery {
        id: id(n),
        webhook_id: hook,
        event: "session_created".to_owned(),
        body: format!("{{\"delivery\":{n}}}"),
        status,
        attempts: 0,
        last_status_code: None,
        last_attempt_at: None,
        next_attempt_at,
        created_at: n as Millis,
    }
}

fn audit(action: &str, at: Millis) -> AuditEntry {
    AuditEntry::new(id(0xad), "org", "ops", action, "target-1", Some("acme"), at)
}

fn timer(due: Millis, kind: TimerKind, session: u128, other: u128) -> Timer {
    Timer {
        due,
        kind,
        session_id: id(session),
        other_id: id(other),
    }
}

fn ids(sessions: &[Session]) -> Vec<Uuid> {
    sessions.iter().map(|s| s.id).collect()
}

fn seqs(events: &[SessionEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

// ------------------------------------------------------------------------------------------
// The checks
// ------------------------------------------------------------------------------------------

mod checks {
    use super::*;

    pub async fn sessions_round_trip_and_keep_their_indexes(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let (r1, r2) = (id(0x100), id(0x200));
        let created = session(1, "acme", 1_000, Created, None);
        let queued = session(2, "acme", 2_000, Queued, None);
        let assigned = session(3, "acme", 3_000, Queued, Some(r1));
        let running = session(4, "acme", 4_000, Running, Some(r1));
        let done = session(5, "acme", 5_000, Completed, Some(r1));
        let other = session(6, "beta", 500, Queued, None);
        let all = vec![
            created.clone(),
            queued.clone(),
            assigned.clone(),
            running.clone(),
            done.clone(),
            other.clone(),
        ];

        assert!(h.read(|r| r.all_sessions()).await.is_empty());
        assert!(h.read(|r| r.queued_sessions(10)).await.is_empty());
        // Written out of order, in one job.
        let written = all.clone();
        let active_in_job = h
            .write(move |w| {
                for i in [3, 0, 5, 2, 4, 1] {
                    w.put_session(&written[i])?;
                }
                w.active_sessions_of("acme")
            })
            .await;
        assert_eq!(active_in_job, 4, "active_sessions_of inside the job");

        for s in &all {
            let got = h.read({
                let sid = s.id;
                move |r| r.get_session(sid)
            });
            assert_eq!(got.await.as_ref(), Some(s), "get_session round trip");
        }
        assert_eq!(h.read(|r| r.get_session(id(99))).await, None);
        assert_eq!(
            sorted(ids(&h.read(|r| r.all_sessions()).await)),
            sorted(ids(&all))
        );
        assert_eq!(
            ids(&h.read(|r| r.org_sessions("acme")).await),
            vec![id(5), id(4), id(3), id(2), id(1)],
            "org_sessions: newest first"
        );
        assert_eq!(ids(&h.read(|r| r.org_sessions("beta")).await), vec![id(6)]);
        assert!(h.read(|r| r.org_sessions("nobody")).await.is_empty());
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 4);
        assert_eq!(h.read(|r| r.org_active_sessions("beta")).await, 1);
        assert_eq!(h.read(|r| r.org_active_sessions("nobody")).await, 0);
        assert_eq!(
            h.read(|r| r.queued_sessions(10)).await,
            vec![id(6), id(2)],
            "queue: unassigned QUEUED only, oldest first"
        );
        assert_eq!(h.read(|r| r.queued_sessions(1)).await, vec![id(6)]);
        assert_eq!(
            sorted(h.read(move |r| r.runner_sessions(r1)).await),
            vec![id(3), id(4)],
            "a terminal session does not occupy its runner"
        );
        assert_eq!(h.read(move |r| r.runner_load(r1)).await, 2);
        assert_eq!(h.read(move |r| r.runner_load(r2)).await, 0);
        assert_eq!(h.read(|r| r.runner_loads()).await, HashMap::from([(r1, 2)]));

        // Assigned from the queue to r2; running ends; the assigned one goes back to the queue.
        let (a, b, c) = (
            moved(&queued, Queued, Some(r2)),
            moved(&running, Completed, Some(r1)),
            moved(&assigned, Queued, None),
        );
        let (a2, b2, c2) = (a.clone(), b.clone(), c.clone());
        h.write(move |w| {
            w.put_session(&a2)?;
            w.put_session(&b2)?;
            w.put_session(&c2)
        })
        .await;
        assert_eq!(h.read(|r| r.get_session(id(2))).await, Some(a));
        assert_eq!(h.read(|r| r.get_session(id(4))).await, Some(b));
        assert_eq!(h.read(|r| r.get_session(id(3))).await, Some(c.clone()));
        assert_eq!(h.read(|r| r.queued_sessions(10)).await, vec![id(6), id(3)]);
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 3);
        assert!(h.read(move |r| r.runner_sessions(r1)).await.is_empty());
        assert_eq!(h.read(move |r| r.runner_sessions(r2)).await, vec![id(2)]);
        assert_eq!(h.read(move |r| r.runner_load(r1)).await, 0);
        assert_eq!(
            h.read(|r| r.runner_loads()).await,
            HashMap::from([(r2, 1)]),
            "runners with no sessions are absent"
        );

        // Further updates of the same sessions add no listing entries and change no count.
        let (mut d, mut c3) = (done.clone(), c.clone());
        d.end_reason = Some("finished".to_owned());
        c3.task = Some("renamed".to_owned());
        let (d2, c4) = (d.clone(), c3.clone());
        h.write(move |w| {
            w.put_session(&d2)?;
            w.put_session(&c4)?;
            w.put_session(&c4)
        })
        .await;
        assert_eq!(h.read(|r| r.get_session(id(5))).await, Some(d));
        assert_eq!(h.read(|r| r.get_session(id(3))).await, Some(c3));
        assert_eq!(
            ids(&h.read(|r| r.org_sessions("acme")).await),
            vec![id(5), id(4), id(3), id(2), id(1)]
        );
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 3);
        assert_eq!(h.read(|r| r.queued_sessions(10)).await, vec![id(6), id(3)]);
        assert_eq!(h.read(|r| r.all_sessions()).await.len(), 6);

        // CREATED → QUEUED joins the queue; a session that ends leaves the active count.
        let (e, f) = (moved(&created, Queued, None), moved(&other, Failed, None));
        h.write(move |w| {
            w.put_session(&e)?;
            w.put_session(&f)
        })
        .await;
        assert_eq!(h.read(|r| r.queued_sessions(10)).await, vec![id(1), id(3)]);
        assert_eq!(h.read(|r| r.org_active_sessions("beta")).await, 0);
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 3);
    }

    pub async fn purge_steps_are_bounded_and_end_with_the_session(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let ended = session(1, "acme", 1_000, Completed, None);
        let other = session(2, "acme", 2_000, Completed, None);
        let (e, o) = (ended.clone(), other.clone());
        h.write(move |w| {
            w.put_session(&e)?;
            w.put_session(&o)?;
            for seq in 1..=250 {
                w.put_output(e.id, &chunk(seq, (seq - 1) * 2, "ab"))?;
            }
            w.put_output(o.id, &chunk(1, 0, "kept"))?;
            for i in 0..5 {
                w.append_event(e.id, "state_changed", format!("e{i}"), 100 + i, None)?;
            }
            Ok(())
        })
        .await;
        let sid = ended.id;
        // 255 rows in steps of at most 100: output first, oldest first, then the events.
        let mut steps = Vec::new();
        loop {
            let e = ended.clone();
            let step = h.write(move |w| w.purge_session_step(&e, 100)).await;
            steps.push(step);
            if step.1 {
                break;
            }
            let left = h.read(move |r| r.output_after(sid, 0, 1000)).await;
            assert!(left.iter().all(|c| c.seq > 100 * steps.len() as u64));
            assert!(h.read(move |r| r.get_session(sid)).await.is_some());
        }
        assert_eq!(steps, vec![(100, false), (100, false), (55, true)]);
        assert_eq!(h.read(move |r| r.get_session(sid)).await, None);
        assert_eq!(h.read(move |r| r.last_event_seq(sid)).await, 0);
        assert_eq!(ids(&h.read(|r| r.org_sessions("acme")).await), vec![id(2)]);
        let oid = other.id;
        assert_eq!(h.read(move |r| r.output_after(oid, 0, 10)).await.len(), 1);
    }

    pub async fn the_census_counts_the_sessions_not_yet_ended(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let r1 = id(0x100);
        let waiting = [
            session(1, "acme", 3_000, Queued, None),
            session(2, "beta", 1_500, Queued, None),
        ];
        let held = [
            session(3, "acme", 1_000, Queued, Some(r1)),
            session(4, "acme", 1_100, Running, Some(r1)),
            session(5, "acme", 1_200, WaitingForApproval, Some(r1)),
        ];
        let done = session(6, "acme", 900, Failed, None);
        let (w1, h1, d) = (waiting.clone(), held.clone(), done.clone());
        h.write(move |w| {
            for s in w1.iter().chain(&h1).chain([&d]) {
                w.put_session(s)?;
            }
            w.put_approval(&approval(0x300, h1[2].id, 1))?;
            Ok(())
        })
        .await;
        let census = h.read(|r| r.session_census()).await;
        assert_eq!(
            census.by_state,
            vec![(Queued, 3), (Running, 1), (WaitingForApproval, 1)]
        );
        assert_eq!(census.waiting, 2);
        assert_eq!(census.oldest_waiting_since, Some(1_500));
        assert_eq!(census.pending_approvals, 1);
    }

    pub async fn delete_session_removes_everything_of_it(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let r1 = id(0x100);
        let running = session(1, "acme", 1_000, Running, Some(r1));
        let queued = session(2, "acme", 2_000, Queued, None);
        let kept = session(3, "acme", 3_000, Running, Some(r1));
        let ended = session(4, "acme", 4_000, Failed, None);
        let all = [running.clone(), queued.clone(), kept.clone(), ended.clone()];
        h.write(move |w| {
            for s in &all {
                w.put_session(s)?;
                for i in 0..3 {
                    w.append_event(s.id, "state_changed", format!("e{i}"), 100 + i, None)?;
                }
                w.put_output(s.id, &chunk(1, 0, "hello"))?;
                w.put_output(s.id, &chunk(2, 5, "world"))?;
                w.put_approval(&approval(0x300 + s.id.as_u128(), s.id, 1))?;
                w.put_approval(&approval(0x400 + s.id.as_u128(), s.id, 2))?;
            }
            Ok(())
        })
        .await;
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 3);
        assert_eq!(h.read(move |r| r.runner_load(r1)).await, 2);

        let doomed = running.clone();
        h.write(move |w| w.delete_session(&doomed)).await;
        let sid = running.id;
        assert_eq!(h.read(move |r| r.get_session(sid)).await, None);
        assert_eq!(
            ids(&h.read(|r| r.org_sessions("acme")).await),
            vec![id(4), id(3), id(2)]
        );
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 2);
        assert_eq!(h.read(move |r| r.runner_sessions(r1)).await, vec![id(3)]);
        assert_eq!(h.read(move |r| r.runner_load(r1)).await, 1);
        assert!(
            h.read(move |r| r.events_after(sid, 0, 100))
                .await
                .is_empty()
        );
        assert!(h.read(move |r| r.recent_events(sid, 10)).await.is_empty());
        assert_eq!(h.read(move |r| r.last_event_seq(sid)).await, 0);
        assert!(
            h.read(move |r| r.output_after(sid, 0, 100))
                .await
                .is_empty()
        );
        assert_eq!(h.read(move |r| r.last_output_seq(sid)).await, 0);
        assert_eq!(h.read(move |r| r.last_output(sid)).await, None);
        assert!(h.read(move |r| r.approvals(sid)).await.is_empty());
        assert_eq!(h.read(move |r| r.get_approval(sid, id(0x301))).await, None);

        // The queued and the ended one: queue and counts follow; the kept one is untouched.
        let (q, e) = (queued.clone(), ended.clone());
        h.write(move |w| {
            w.delete_session(&q)?;
            w.delete_session(&e)
        })
        .await;
        assert!(h.read(|r| r.queued_sessions(10)).await.is_empty());
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 1);
        assert_eq!(ids(&h.read(|r| r.org_sessions("acme")).await), vec![id(3)]);
        assert_eq!(ids(&h.read(|r| r.all_sessions()).await), vec![id(3)]);
        let k = kept.id;
        assert_eq!(h.read(move |r| r.get_session(k)).await, Some(kept.clone()));
        assert_eq!(
            seqs(&h.read(move |r| r.events_after(k, 0, 100)).await),
            vec![1, 2, 3]
        );
        assert_eq!(h.read(move |r| r.last_output_seq(k)).await, 2);
        assert_eq!(h.read(move |r| r.approvals(k)).await.len(), 2);

        // The last one: nothing of sessions is left.
        h.write(move |w| w.delete_session(&kept)).await;
        assert!(h.read(|r| r.all_sessions()).await.is_empty());
        assert!(h.read(|r| r.org_sessions("acme")).await.is_empty());
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 0);
        assert!(h.read(|r| r.runner_loads()).await.is_empty());
    }

    pub async fn events_and_output_are_numbered_per_session(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let (a, b) = (
            session(1, "acme", 1_000, Running, None),
            session(2, "acme", 2_000, Running, None),
        );
        let (sa, sb) = (a.id, b.id);
        let first = h
            .write(move |w| {
                w.put_session(&a)?;
                w.put_session(&b)?;
                let data = Some("{\"x\":1}".to_owned());
                let order = [
                    (sa, "a1", None),
                    (sb, "b1", None),
                    (sa, "a2", data),
                    (sa, "a3", None),
                    (sb, "b2", None),
                ];
                let mut out = Vec::new();
                for (i, (session, text, data)) in order.into_iter().enumerate() {
                    out.push(w.append_event(
                        session,
                        "state_changed",
                        text.into(),
                        101 + i as Millis,
                        data,
                    )?);
                }
                Ok(out)
            })
            .await;
        assert_eq!(
            seqs(&first),
            vec![1, 1, 2, 3, 2],
            "seqs count from 1 per session"
        );
        let a4 = h
            .write(move |w| w.append_event(sa, "session_completed", "a4".into(), 106, None))
            .await;
        assert_eq!(a4.seq, 4, "the next job continues the session's numbering");

        let all_a = h.read(move |r| r.events_after(sa, 0, 100)).await;
        assert_eq!(seqs(&all_a), vec![1, 2, 3, 4]);
        assert_eq!(all_a[0], first[0], "an event reads back as appended");
        assert_eq!(all_a[1], first[2]);
        assert_eq!(all_a[1].data_json.as_deref(), Some("{\"x\":1}"));
        assert_eq!(all_a[3], a4);
        assert_eq!(
            h.read(move |r| r.events_after(sb, 0, 100)).await,
            vec![first[1].clone(), first[4].clone()]
        );
        assert_eq!(
            seqs(&h.read(move |r| r.events_after(sa, 2, 100)).await),
            vec![3, 4]
        );
        assert_eq!(
            seqs(&h.read(move |r| r.events_after(sa, 1, 2)).await),
            vec![2, 3]
        );
        assert!(h.read(move |r| r.events_after(sa, 4, 100)).await.is_empty());
        assert!(
            h.read(move |r| r.events_after(sa, u64::MAX, 100))
                .await
                .is_empty()
        );
        assert!(h.read(move |r| r.events_after(sa, 0, 0)).await.is_empty());
        assert_eq!(
            seqs(&h.read(move |r| r.recent_events(sa, 2)).await),
            vec![3, 4]
        );
        assert_eq!(
            seqs(&h.read(move |r| r.recent_events(sa, 10)).await),
            vec![1, 2, 3, 4]
        );
        assert!(h.read(move |r| r.recent_events(sa, 0)).await.is_empty());
        assert_eq!(h.read(move |r| r.last_event_seq(sa)).await, 4);
        assert_eq!(h.read(move |r| r.last_event_seq(sb)).await, 2);
        assert_eq!(h.read(|r| r.last_event_seq(id(99))).await, 0);
        assert!(h.read(|r| r.events_after(id(99), 0, 10)).await.is_empty());

        // A new session's events are followed within the job that creates it, and only there.
        let c = session(3, "acme", 3_000, Queued, None);
        let sc = c.id;
        let (followed, appended) = h
            .write(move |w| {
                w.begin_session_events(sc);
                w.put_session(&c)?;
                let mut appended =
                    vec![w.append_event(sc, "session_created", "c1".into(), 200, None)?];
                w.append_event(sa, "state_changed", "a5".into(), 201, None)?;
                appended.push(w.append_event(sc, "state_changed", "c2".into(), 202, None)?);
                Ok((w.followed_events(), appended))
            })
            .await;
        assert_eq!(
            followed, appended,
            "followed_events: the new session's events, in order"
        );
        assert_eq!(seqs(&followed), vec![1, 2]);
        let later = h.write(|w| Ok(w.followed_events())).await;
        assert!(later.is_empty(), "a later job follows nothing");
        assert_eq!(h.read(move |r| r.last_event_seq(sa)).await, 5);

        // Output: stored with the seq the caller gives, read forwards, from the end, and by offset.
        let chunks = vec![
            chunk(1, 0, "aaaa"),
            chunk(2, 4, "bbb"),
            chunk(3, 7, "cc"),
            chunk(4, 9, "d"),
        ];
        assert_eq!(h.read(move |r| r.last_output_seq(sa)).await, 0);
        let written = chunks.clone();
        h.write(move |w| {
            for c in &written[..2] {
                w.put_output(sa, c)?;
            }
            Ok(())
        })
        .await;
        assert_eq!(h.read(move |r| r.last_output_seq(sa)).await, 2);
        let written = chunks.clone();
        h.write(move |w| {
            let next = w.last_output_seq(sa)? + 1;
            for c in &written[next as usize - 1..] {
                w.put_output(sa, c)?;
            }
            w.put_output(sb, &chunk(1, 0, "other"))
        })
        .await;
        assert_eq!(h.read(move |r| r.output_after(sa, 0, 100)).await, chunks);
        assert_eq!(
            h.read(move |r| r.output_after(sa, 1, 2)).await,
            chunks[1..3].to_vec()
        );
        assert!(h.read(move |r| r.output_after(sa, 4, 100)).await.is_empty());
        assert!(
            h.read(move |r| r.output_after(sa, u64::MAX, 100))
                .await
                .is_empty()
        );
        assert_eq!(h.read(move |r| r.last_output_seq(sa)).await, 4);
        assert_eq!(h.read(move |r| r.last_output_seq(sb)).await, 1);
        assert_eq!(
            h.read(move |r| r.last_output(sa)).await,
            Some(chunks[3].clone())
        );
        assert_eq!(h.read(|r| r.last_output(id(99))).await, None);
        // output_at: the newest chunk starting at or before the offset.
        for (offset, expected) in [(0, 0), (3, 0), (4, 1), (6, 1), (7, 2), (9, 3), (500, 3)] {
            assert_eq!(
                h.read(move |r| r.output_at(sa, offset)).await,
                Some(chunks[expected].clone()),
                "output_at({offset})"
            );
        }
        assert_eq!(h.read(|r| r.output_at(id(99), 0)).await, None);
        // A long output with gaps in its seqs (seq 10 + 3k holds offsets 10k..10k+9): every
        // offset finds its chunk.
        let sc = id(0xC0FFEE);
        h.write(move |w| {
            for k in 0..200u64 {
                w.put_output(sc, &chunk(10 + 3 * k, 10 * k, "0123456789"))?;
            }
            Ok(())
        })
        .await;
        assert_eq!(
            h.read(move |r| r.output_at(sc, 0)).await.map(|c| c.seq),
            Some(10)
        );
        for offset in [0u64, 9, 10, 11, 555, 1009, 1990, 1999, 5000] {
            let k = (offset / 10).min(199);
            assert_eq!(
                h.read(move |r| r.output_at(sc, offset))
                    .await
                    .map(|c| c.seq),
                Some(10 + 3 * k),
                "output_at({offset}) in the long output"
            );
        }
    }

    pub async fn approvals_list_in_request_order(open: OpenFn) {
        let h = Harness::new(open);
        let s = session(1, "acme", 1_000, SessionState::Running, None);
        let sid = s.id;
        // Ids that sort against the request order.
        let requested = vec![
            approval(0x9003, sid, 1),
            approval(0x9002, sid, 2),
            approval(0x9001, sid, 3),
        ];
        let other = approval(0x9000, id(2), 1);
        let (w1, w2) = (requested.clone(), other.clone());
        h.write(move |w| {
            w.put_session(&s)?;
            w.put_approval(&w1[0])?;
            w.put_approval(&w2)
        })
        .await;
        let w1 = requested.clone();
        h.write(move |w| {
            w.put_approval(&w1[2])?;
            w.put_approval(&w1[1])
        })
        .await;
        assert_eq!(h.read(move |r| r.approvals(sid)).await, requested);
        assert_eq!(h.read(|r| r.approvals(id(2))).await, vec![other]);
        assert!(h.read(|r| r.approvals(id(3))).await.is_empty());
        assert_eq!(
            h.read(move |r| r.get_approval(sid, id(0x9002))).await,
            Some(requested[1].clone())
        );
        assert_eq!(h.read(move |r| r.get_approval(sid, id(0x9000))).await, None);

        let mut resolved = requested[1].clone();
        resolved.resolution = Some(Resolution {
            decision: Decision::Deny,
            reason: Some("not now".to_owned()),
            resolved_at: 5_000,
            resolved_by: "system".to_owned(),
            scope: Some(ApprovalScope::Once),
        });
        let r2 = resolved.clone();
        h.write(move |w| w.put_approval(&r2)).await;
        assert_eq!(
            h.read(move |r| r.get_approval(sid, id(0x9002))).await,
            Some(resolved.clone())
        );
        let listed = h.read(move |r| r.approvals(sid)).await;
        assert_eq!(listed.len(), 3, "an update adds no approval");
        assert_eq!(listed[1], resolved);
        // The pending ones, in request order, without the resolved one.
        assert_eq!(
            h.read(move |r| r.pending_approvals(sid)).await,
            vec![requested[0].clone(), requested[2].clone()]
        );
        assert!(h.read(|r| r.pending_approvals(id(3))).await.is_empty());
    }

    pub async fn approval_seqs_are_counted_per_session(open: OpenFn) {
        let h = Harness::new(open);
        let s = session(1, "acme", 1_000, SessionState::Running, None);
        let sid = s.id;
        let seqs = h
            .write(move |w| {
                w.put_session(&s)?;
                let first = w.next_approval_seq(sid)?;
                let second = w.next_approval_seq(sid)?;
                let elsewhere = w.next_approval_seq(id(2))?;
                Ok((first, second, elsewhere))
            })
            .await;
        assert_eq!(seqs, (1, 2, 1));
        let third = h.write(move |w| w.next_approval_seq(sid)).await;
        assert_eq!(third, 3, "the count is stored");
        // Deleting the session forgets its count and its pending approvals.
        let pending = approval(0x500, sid, 3);
        let gone = h.read(move |r| r.get_session(sid)).await;
        let gone = gone.unwrap();
        h.write(move |w| {
            w.put_approval(&pending)?;
            w.delete_session(&gone)
        })
        .await;
        assert!(h.read(move |r| r.pending_approvals(sid)).await.is_empty());
        assert_eq!(h.write(move |w| w.next_approval_seq(sid)).await, 1);
    }

    pub async fn spend_is_added_per_day_and_month_and_org(open: OpenFn) {
        use village::spend::model::{
            Budget, BudgetHold, BuildOutcomes, UsageDelta, UsageTotals, days_of_month, month_of_day,
        };
        let h = Harness::new(open);
        // 2026-11-30, the last day of a month, and 2026-12-01.
        let (nov30, dec1) = (20_787u32, 20_788u32);
        let (nov, dec) = (month_of_day(nov30), month_of_day(dec1));
        assert_ne!(nov, dec);
        let spend = |cost: f64, tokens: i64, sessions: u64| UsageDelta {
            cost_usd: cost,
            tokens_in: tokens,
            tokens_out: 0,
            sessions,
        };
        let after = h
            .write(move |w| {
                w.add_usage("acme", nov30, "codex", &spend(1.5, 100, 1))?;
                w.add_usage("acme", nov30, "claude_code", &spend(2.0, 10, 1))?;
                w.add_usage("acme", nov30, "codex", &spend(-0.5, -40, 0))?;
                w.add_usage("globex", nov30, "codex", &spend(9.0, 9, 1))?;
                w.add_usage("acme", dec1, "codex", &spend(4.0, 1, 0))
            })
            .await;
        assert_eq!(
            after,
            UsageTotals {
                cost_usd: 4.0,
                tokens_in: 1,
                tokens_out: 0,
                sessions: 0
            },
            "add_usage answers the month's total"
        );
        let month = h.read(move |r| r.month_usage("acme", nov)).await;
        assert_eq!(
            (month.cost_usd, month.tokens_in, month.sessions),
            (3.0, 70, 2)
        );
        let (first, end) = days_of_month(nov);
        let days = h.read(move |r| r.daily_usage("acme", first, end)).await;
        let rows: Vec<(u32, String, f64, u64)> = days
            .into_iter()
            .map(|(d, p, t)| (d, p, t.cost_usd, t.tokens_in))
            .collect();
        assert_eq!(
            rows,
            vec![
                (nov30, "claude_code".into(), 2.0, 10),
                (nov30, "codex".into(), 1.0, 60)
            ]
        );
        assert_eq!(
            h.read(move |r| r.month_usage("acme", dec + 1)).await,
            UsageTotals::default()
        );

        // Budgets, holds and build outcomes round-trip; a hold is cleared by `None`.
        let budget = Budget {
            monthly_usd: Some(10.0),
            session_usd: None,
            session_tokens: Some(5),
        };
        let (b, sid) = (budget.clone(), id(0x600));
        let mut counted = BuildOutcomes::default();
        counted.count(true, 2.0);
        counted.count(false, 1.0);
        let c = counted.clone();
        h.write(move |w| {
            w.put_budget("acme", &b)?;
            w.set_budget_hold(sid, Some(BudgetHold::Paused))?;
            w.merge_build_outcomes("acme", dec, "b-1", &c)?;
            w.merge_build_outcomes("acme", dec, "b-1", &c)?;
            w.merge_build_outcomes("acme", nov, "b-0", &c)
        })
        .await;
        assert_eq!(h.read(|r| r.budget("acme")).await, Some(budget));
        assert_eq!(h.read(|r| r.budget("globex")).await, None);
        assert_eq!(
            h.read(move |r| r.budget_hold(sid)).await,
            Some(BudgetHold::Paused)
        );
        let builds = h.read(move |r| r.build_outcomes("acme", dec)).await;
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].0, "b-1");
        assert_eq!(
            (
                builds[0].1.sessions,
                builds[0].1.completed,
                builds[0].1.cost_usd
            ),
            (4, 2, 6.0)
        );
        h.write(move |w| w.set_budget_hold(sid, None)).await;
        assert_eq!(h.read(move |r| r.budget_hold(sid)).await, None);
    }

    pub async fn tokens_round_trip(open: OpenFn) {
        let h = Harness::new(open);
        assert!(!h.read(|r| r.any_token()).await);
        assert!(h.read(|r| r.all_tokens()).await.is_empty());
        let (t1, t2) = (token(0x501, None), token(0x502, None));
        let (a, b) = (t1.clone(), t2.clone());
        h.write(move |w| {
            w.put_token(&a)?;
            w.put_token(&b)
        })
        .await;
        assert!(h.read(|r| r.any_token()).await);
        assert_eq!(h.read(|r| r.get_token(id(0x501))).await, Some(t1.clone()));
        assert_eq!(h.read(|r| r.get_token(id(0x503))).await, None);

        // Revoked: kept, and no longer active.
        let mut revoked = t1.clone();
        revoked.revoked_at = Some(7_000);
        let mut runner_token = token(0x503, None);
        runner_token.kind = TokenKind::Runner;
        runner_token.runner_id = Some(id(0x100));
        let (a, b) = (revoked.clone(), runner_token.clone());
        h.write(move |w| {
            w.put_token(&a)?;
            w.put_token(&b)
        })
        .await;
        assert_eq!(
            h.read(|r| r.get_token(id(0x501))).await,
            Some(revoked.clone())
        );
        let all = h.read(|r| r.all_tokens()).await;
        let mut by_id: Vec<_> = all.iter().map(|t| (t.id, t.clone())).collect();
        by_id.sort_by_key(|(i, _)| *i);
        assert_eq!(
            by_id.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
            vec![revoked.clone(), t2.clone(), runner_token.clone()]
        );
        // The active tokens by hash, as the domain derives them.
        let active: HashMap<[u8; 32], Uuid> = all
            .iter()
            .filter(|t| t.revoked_at.is_none())
            .map(|t| (t.hash, t.id))
            .collect();
        assert_eq!(
            active,
            HashMap::from([(t2.hash, t2.id), (runner_token.hash, runner_token.id)])
        );
    }

    pub async fn runners_hostnames_liveness_and_outbox(open: OpenFn) {
        let mut h = Harness::new(open);
        let (r1, r2) = (id(0x101), id(0x102));
        let revisions = h
            .write(|w| {
                let mut a = runner(0x101, "host-a");
                let mut b = runner(0x102, "host-b");
                w.put_runner(&mut a)?;
                w.put_runner(&mut b)?;
                let first = a.revision;
                a.draining = true;
                w.put_runner(&mut a)?;
                Ok((first, a.revision, b.revision))
            })
            .await;
        assert_eq!(revisions, (1, 2, 1), "put_runner bumps the revision");
        let mut expect_a = runner(0x101, "host-a");
        expect_a.draining = true;
        expect_a.revision = 2;
        assert_eq!(
            h.read(move |r| r.get_runner(r1)).await,
            Some(expect_a.clone())
        );
        assert_eq!(h.read(|r| r.get_runner(id(0x103))).await, None);
        assert_eq!(h.read(|r| r.runner_by_hostname("host-a")).await, Some(r1));
        assert_eq!(h.read(|r| r.runner_by_hostname("host-b")).await, Some(r2));
        assert_eq!(h.read(|r| r.runner_by_hostname("host-c")).await, None);
        let mut all: Vec<Uuid> = h
            .read(|r| r.all_runners())
            .await
            .iter()
            .map(|r| r.id)
            .collect();
        all.sort();
        assert_eq!(all, vec![r1, r2]);
        // Registering again under the same hostname keeps one runner for it.
        let again = h
            .write(move |w| {
                let existing = w
                    .runner_by_hostname("host-b")?
                    .expect("host-b is registered");
                let mut b = w.get_runner(existing)?.expect("its runner");
                w.put_runner(&mut b)?;
                Ok(b.revision)
            })
            .await;
        assert_eq!(again, 2);
        assert_eq!(h.read(|r| r.all_runners()).await.len(), 2);
        assert_eq!(h.read(|r| r.runner_by_hostname("host-b")).await, Some(r2));

        // Liveness: the last one written per runner.
        assert!(h.read(|r| r.all_liveness()).await.is_empty());
        h.write(move |w| {
            w.put_liveness(r1, &liveness(1_000, vec![]))?;
            w.put_liveness(r2, &liveness(1_100, vec![]))?;
            w.put_liveness(r1, &liveness(2_000, vec![id(1)]))
        })
        .await;
        let mut live = h.read(|r| r.all_liveness()).await;
        live.sort_by_key(|(r, _)| *r);
        assert_eq!(
            live,
            vec![
                (r1, liveness(2_000, vec![id(1)])),
                (r2, liveness(1_100, vec![]))
            ]
        );

        // Outbox: commands in order, numbered across runners.
        let cmd = |n: u128| RunnerCommand::StopSession {
            session_id: id(n),
            reason: format!("stop {n}"),
        };
        let first = h
            .write(move |w| {
                Ok(vec![
                    w.enqueue_command(r1, cmd(1), 3_000)?,
                    w.enqueue_command(r2, cmd(2), 3_001)?,
                    w.enqueue_command(r1, RunnerCommand::Drain, 3_002)?,
                ])
            })
            .await;
        let second = h
            .write(move |w| {
                Ok(vec![
                    w.enqueue_command(r2, cmd(3), 3_003)?,
                    w.enqueue_command(r1, cmd(4), 3_004)?,
                ])
            })
            .await;
        let entries: Vec<OutboxEntry> = first.iter().chain(&second).cloned().collect();
        let numbers: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "command seqs grow across runners: {numbers:?}"
        );
        let mut message_ids: Vec<Uuid> = entries.iter().map(|e| e.message_id).collect();
        message_ids.sort();
        message_ids.dedup();
        assert_eq!(message_ids.len(), entries.len(), "message ids are unique");
        assert_eq!(entries[0].runner_id, r1);
        assert_eq!(entries[0].command, cmd(1));
        assert_eq!(entries[0].created_at, 3_000);
        let outbox_1 = h.read(move |r| r.outbox(r1)).await;
        assert_eq!(
            outbox_1,
            vec![entries[0].clone(), entries[2].clone(), entries[4].clone()]
        );
        assert_eq!(
            h.read(move |r| r.outbox(r2)).await,
            vec![entries[1].clone(), entries[3].clone()]
        );
        assert!(h.read(|r| r.outbox(id(0x103))).await.is_empty());

        let drain_seq = entries[2].seq;
        let removed = h
            .write(move |w| {
                let none = w.remove_commands(r1, &mut |_| false)?;
                let one = w.remove_commands(r1, &mut |e| e.seq == drain_seq)?;
                let visible = w.outbox(r1)?;
                Ok((none, one, visible))
            })
            .await;
        assert_eq!(removed.0, 0);
        assert_eq!(removed.1, 1);
        assert_eq!(removed.2, vec![entries[0].clone(), entries[4].clone()]);
        assert_eq!(
            h.read(move |r| r.outbox(r1)).await,
            vec![entries[0].clone(), entries[4].clone()]
        );
        // Every command of a runner acknowledged, then a new one: numbers go on.
        let after = h
            .write(move |w| {
                let n = w.remove_commands(r1, &mut |_| true)?;
                Ok((n, w.enqueue_command(r1, cmd(5), 3_005)?))
            })
            .await;
        assert_eq!(after.0, 2);
        assert!(after.1.seq > entries[4].seq, "a seq is never reused");
        assert_eq!(h.read(move |r| r.outbox(r1)).await, vec![after.1.clone()]);
        assert_eq!(h.read(move |r| r.outbox(r2)).await.len(), 2);

        // An ack removes one command by its message id, and only its own runner's.
        let acked_id = after.1.message_id;
        let acked = h
            .write(move |w| {
                let foreign = w.remove_command(r2, acked_id)?;
                let own = w.remove_command(r1, acked_id)?;
                let again = w.remove_command(r1, acked_id)?;
                Ok((foreign, own, again))
            })
            .await;
        assert_eq!(acked, (false, true, false));
        assert!(h.read(move |r| r.outbox(r1)).await.is_empty());
        assert_eq!(h.read(move |r| r.outbox(r2)).await.len(), 2);
        let pending = h
            .write(move |w| w.enqueue_command(r1, RunnerCommand::Drain, 3_005))
            .await;

        // Deregistered: record, hostname, liveness and outbox go; the other runner stays.
        let a = h.read(move |r| r.get_runner(r1)).await.expect("runner a");
        h.write(move |w| w.delete_runner(&a)).await;
        assert_eq!(h.read(move |r| r.get_runner(r1)).await, None);
        assert_eq!(h.read(|r| r.runner_by_hostname("host-a")).await, None);
        assert_eq!(h.read(|r| r.runner_by_hostname("host-b")).await, Some(r2));
        assert!(h.read(move |r| r.outbox(r1)).await.is_empty());
        assert_eq!(h.read(move |r| r.outbox(r2)).await.len(), 2);
        let pending_id = pending.message_id;
        assert!(
            !h.write(move |w| w.remove_command(r1, pending_id)).await,
            "a deleted runner's commands cannot be acked"
        );
        let live = h.read(|r| r.all_liveness()).await;
        assert_eq!(live.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![r2]);
        assert_eq!(h.read(|r| r.all_runners()).await.len(), 1);
        let last = h
            .write(move |w| w.enqueue_command(r2, RunnerCommand::Drain, 3_006))
            .await;
        assert!(
            last.seq > pending.seq,
            "numbers go on after a runner is deleted"
        );

        // Committed commands reached the publisher, in seq order.
        let published: Vec<(Uuid, u64)> = h
            .published_through("end")
            .await
            .into_iter()
            .filter_map(|p| match p {
                Published::Command { runner, seq } => Some((runner, seq)),
                Published::Event(_) => None,
            })
            .collect();
        let mut expected: Vec<(Uuid, u64)> = entries.iter().map(|e| (e.runner_id, e.seq)).collect();
        expected.push((r1, after.1.seq));
        expected.push((r1, pending.seq));
        expected.push((r2, last.seq));
        assert_eq!(published, expected);
    }

    pub async fn webhooks_and_deliveries(open: OpenFn) {
        use DeliveryStatus::*;
        let h = Harness::new(open);
        let (h1, h2, h3) = (
            webhook(0x301, "https://a.example"),
            webhook(0x302, "https://b.example"),
            webhook(0x303, "https://c.example"),
        );
        let (w1, w2, w3) = (h1.id, h2.id, h3.id);
        assert!(h.read(|r| r.all_webhooks()).await.is_empty());
        let hooks = [h1.clone(), h2.clone(), h3.clone()];
        h.write(move |w| {
            for hook in &hooks {
                w.put_webhook(hook)?;
            }
            Ok(())
        })
        .await;
        let mut changed = h1.clone();
        changed.events = vec!["session_created".to_owned()];
        let c2 = changed.clone();
        h.write(move |w| w.put_webhook(&c2)).await;
        let mut all = h.read(|r| r.all_webhooks()).await;
        all.sort_by_key(|w| w.id);
        assert_eq!(all, vec![changed, h2.clone(), h3.clone()]);

        let d1 = delivery(0x401, w1, Delivered, 100);
        let d2 = delivery(0x402, w1, Pending, 500);
        let d3 = delivery(0x403, w1, Failed, 100);
        let d4 = delivery(0x404, w1, Pending, 200);
        let d5 = delivery(0x405, w1, Delivered, 100);
        let d6 = delivery(0x406, w2, Pending, 300);
        let written = [&d3, &d1, &d5, &d2, &d6, &d4].map(|d| d.clone());
        h.write(move |w| {
            for d in &written {
                w.put_delivery(d, None)?;
            }
            Ok(())
        })
        .await;
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w1, 10)).await,
            vec![d5.clone(), d4.clone(), d3.clone(), d2.clone(), d1.clone()],
            "newest first"
        );
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w1, 2)).await,
            vec![d5.clone(), d4.clone()]
        );
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w2, 10)).await,
            vec![d6.clone()]
        );
        assert_eq!(
            h.read(move |r| r.get_delivery(w1, id(0x402))).await,
            Some(d2.clone())
        );
        assert_eq!(h.read(move |r| r.get_delivery(w2, id(0x402))).await, None);
        assert_eq!(
            h.read(|r| r.due_deliveries(1_000, 10)).await,
            vec![d4.clone(), d6.clone(), d2.clone()],
            "pending only, earliest first"
        );
        assert_eq!(
            h.read(|r| r.due_deliveries(250, 10)).await,
            vec![d4.clone()]
        );
        assert_eq!(
            h.read(|r| r.due_deliveries(200, 10)).await,
            vec![d4.clone()]
        );
        assert_eq!(
            h.read(|r| r.due_deliveries(1_000, 1)).await,
            vec![d4.clone()]
        );
        assert!(h.read(|r| r.due_deliveries(199, 10)).await.is_empty());
        // A filter sees each due delivery's webhook in due order; the limit counts kept ones.
        let (seen, kept) = h
            .read(move |r| {
                let mut seen = Vec::new();
                let kept = r.due_deliveries_where(1_000, 1, &mut |webhook| {
                    seen.push(webhook);
                    webhook == w1 && seen.len() > 1
                })?;
                Ok((seen, kept))
            })
            .await;
        assert_eq!(seen, vec![w1, w2, w1], "d4 (w1), d6 (w2), d2 (w1)");
        assert_eq!(kept, vec![d2.clone()]);

        // A retry moves the queue entry; a delivered one leaves the queue.
        let mut retry = d4.clone();
        retry.attempts = 1;
        retry.last_status_code = Some(503);
        retry.last_attempt_at = Some(200);
        retry.next_attempt_at = 900;
        let mut delivered = d2.clone();
        delivered.status = Delivered;
        delivered.attempts = 1;
        delivered.last_status_code = Some(200);
        delivered.last_attempt_at = Some(500);
        let (a, b) = (retry.clone(), delivered.clone());
        h.write(move |w| {
            w.put_delivery(&a, Some(200))?;
            w.put_delivery(&b, Some(500))
        })
        .await;
        assert_eq!(
            h.read(|r| r.due_deliveries(1_000, 10)).await,
            vec![d6.clone(), retry.clone()]
        );
        assert!(h.read(|r| r.due_deliveries(250, 10)).await.is_empty());
        assert_eq!(
            h.read(move |r| r.get_delivery(w1, id(0x402))).await,
            Some(delivered.clone())
        );
        assert_eq!(h.read(move |r| r.webhook_deliveries(w1, 10)).await.len(), 5);

        // Forgotten: gone from the log and the queue.
        h.write(move |w| w.forget_delivery(w1, id(0x404))).await;
        assert_eq!(h.read(move |r| r.get_delivery(w1, id(0x404))).await, None);
        assert_eq!(
            h.read(|r| r.due_deliveries(1_000, 10)).await,
            vec![d6.clone()]
        );
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w1, 10)).await,
            vec![d5.clone(), d3.clone(), delivered.clone(), d1.clone()]
        );

        // Trimming keeps the newest `keep` and every pending one.
        let e1 = delivery(0x501, w3, Pending, 50);
        let e2 = delivery(0x502, w3, Delivered, 0);
        let e3 = delivery(0x503, w3, Failed, 0);
        let e4 = delivery(0x504, w3, Delivered, 0);
        let e5 = delivery(0x505, w3, Delivered, 0);
        let written = [&e1, &e2, &e3, &e4, &e5].map(|d| d.clone());
        h.write(move |w| {
            for d in &written {
                w.put_delivery(d, None)?;
            }
            w.trim_deliveries(w3, 10)
        })
        .await;
        assert_eq!(h.read(move |r| r.webhook_deliveries(w3, 10)).await.len(), 5);
        h.write(move |w| w.trim_deliveries(w3, 2)).await;
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w3, 10)).await,
            vec![e5.clone(), e4.clone(), e1.clone()]
        );
        h.write(move |w| w.trim_deliveries(w3, 0)).await;
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w3, 10)).await,
            vec![e1.clone()]
        );
        assert_eq!(
            h.read(|r| r.due_deliveries(1_000, 10)).await,
            vec![e1.clone(), d6.clone()]
        );
        assert_eq!(
            h.read(move |r| r.webhook_deliveries(w1, 10)).await.len(),
            4,
            "trimming one webhook leaves the others"
        );

        // Deleted: the webhook, its log and its queue entries.
        h.write(move |w| w.delete_webhook(w2)).await;
        let left: Vec<Uuid> = h
            .read(|r| r.all_webhooks())
            .await
            .iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(sorted(left), vec![w1, w3]);
        assert!(
            h.read(move |r| r.webhook_deliveries(w2, 10))
                .await
                .is_empty()
        );
        assert_eq!(h.read(move |r| r.get_delivery(w2, id(0x406))).await, None);
        assert_eq!(h.read(|r| r.due_deliveries(1_000, 10)).await, vec![e1]);
    }

    pub async fn audit_is_numbered_contiguously(open: OpenFn) {
        let h = Harness::new(open);
        assert!(h.read(|r| r.audit_after(0, 10)).await.is_empty());
        let first = h
            .write(|w| {
                Ok(vec![
                    w.append_audit(audit("session.create", 100))?,
                    w.append_audit(audit("session.stop", 101))?,
                    w.append_audit(audit("token.create", 102))?,
                ])
            })
            .await;
        assert_eq!(first, vec![1, 2, 3]);
        let fourth = h
            .write(|w| w.append_audit(audit("token.revoke", 103)))
            .await;
        assert_eq!(fourth, 4);
        let all = h.read(|r| r.audit_after(0, 10)).await;
        let mut expected = audit("session.create", 100);
        expected.seq = 1;
        assert_eq!(all[0], expected, "an entry reads back with its seq");
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            vec![
                "session.create",
                "session.stop",
                "token.create",
                "token.revoke"
            ]
        );
        let page = |after, limit| {
            let h = &h;
            async move {
                h.read(move |r| r.audit_after(after, limit))
                    .await
                    .iter()
                    .map(|e| e.seq)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(page(2, 10).await, vec![3, 4]);
        assert_eq!(page(0, 2).await, vec![1, 2]);
        assert_eq!(page(1, 2).await, vec![2, 3]);
        assert!(page(4, 10).await.is_empty());
        assert!(page(u64::MAX, 10).await.is_empty());
    }

    pub async fn timers_come_due_in_order(open: OpenFn) {
        use TimerKind::*;
        let h = Harness::new(open);
        let late = timer(1_000, SessionTimeout, 1, 0);
        let t300 = timer(300, SessionTimeout, 2, 0);
        let t100a = timer(100, ApprovalExpiry, 1, 0x9001);
        let t100b = timer(100, AssignmentLapse, 3, 0x101);
        let t200 = timer(200, SessionPurge, 2, 0);
        let set = [late, t300, t100a, t100b, t200];
        h.write(move |w| {
            for t in set {
                w.set_timer(t)?;
            }
            w.set_timer(t200)
        })
        .await;
        let due = h.read(|r| r.due_timers(300, 10)).await;
        assert!(
            due.windows(2).all(|w| w[0].due <= w[1].due),
            "earliest first: {due:?}"
        );
        assert_eq!(due.len(), 4, "a timer set twice is one timer: {due:?}");
        assert_eq!(due[2..], [t200, t300]);
        assert!(due[..2].contains(&t100a) && due[..2].contains(&t100b));
        assert!(h.read(|r| r.due_timers(99, 10)).await.is_empty());
        assert_eq!(h.read(|r| r.due_timers(100, 10)).await.len(), 2);
        assert_eq!(h.read(|r| r.due_timers(5_000, 3)).await.len(), 3);
        assert_eq!(h.read(|r| r.due_timers(5_000, 10)).await.len(), 5);

        h.write(move |w| {
            w.clear_timer(t200)?;
            w.clear_timer(t100a)?;
            // Clearing a timer that is not set changes nothing.
            w.clear_timer(timer(100, SessionPurge, 1, 0))
        })
        .await;
        assert_eq!(
            h.read(|r| r.due_timers(5_000, 10)).await,
            vec![t100b, t300, late]
        );
    }

    pub async fn pipeline_records_round_trip(open: OpenFn) {
        let h = Harness::new(open);
        assert_eq!(
            h.read(|r| r.load_pipeline()).await,
            PipelineState::default()
        );
        let version = VersionRecord {
            provider: Provider::Codex,
            version: "1.2.3".to_owned(),
            released_at: 100,
            canary_passed: true,
            canary_passed_at: Some(200),
            source_url: Some("https://release.example/1.2.3".to_owned()),
            first_seen_at: 50,
        };
        let build = BuildRecord {
            build_id: "b-1".to_owned(),
            runner_version: "0.9.0".to_owned(),
            built_at: 300,
            status: BuildStatus::Testing,
            recommendation: Recommendation::Acceptable,
            runtime_versions: BTreeMap::from([("codex".to_owned(), "1.2.3".to_owned())]),
            metadata_json: Some("{\"ci\":42}".to_owned()),
            registered_at: 310,
        };
        let counts = StageCounts {
            new_ended: 5,
            new_failed: 1,
            previous_ended: 7,
            previous_failed: 0,
        };
        let verdict = Verdict {
            at: 900,
            outcome: Outcome::Insufficient,
            reason: "too few sessions".to_owned(),
            stage_percentage: 10,
            counts,
            new_runners: 3,
            new_runners_offline: 1,
        };
        let rollout = Rollout {
            id: id(0x600),
            number: 1,
            target_build_id: "b-1".to_owned(),
            previous_build_id: Some("b-0".to_owned()),
            channel: Channel::Stable,
            state: RolloutState::Paused,
            paused_from: Some(RolloutState::RollingOut),
            stages: vec![1, 10, 50, 100],
            stage_index: Some(1),
            current_percentage: 10,
            started_at: 400,
            last_updated_at: 900,
            stage_started_at: 800,
            error: None,
            counts,
            verdict: Some(verdict.clone()),
            past_verdicts: vec![verdict],
            created_by: "ops".to_owned(),
        };
        let stable = ChannelRecord {
            history: vec!["b-0".to_owned()],
            active_rollout: Some(id(0x600)),
        };
        let beta = ChannelRecord::default();
        let config = OrgRuntimeConfig {
            org_id: "acme".to_owned(),
            channel: Channel::Beta,
            beta_opt_in: true,
            auto_upgrade: false,
            pinned_build_id: Some("b-0".to_owned()),
            updated_at: Some(1_000),
        };
        let mut expected = PipelineState::default();
        expected
            .versions
            .insert((Provider::Codex, "1.2.3".to_owned()), version.clone());
        expected.builds.insert("b-1".to_owned(), build.clone());
        expected.rollouts.insert(rollout.id, rollout.clone());
        expected.channels.insert(Channel::Stable, stable.clone());
        expected.channels.insert(Channel::Beta, beta.clone());
        expected
            .org_configs
            .insert("acme".to_owned(), config.clone());
        h.write(move |w| {
            w.put_version(&version)?;
            w.put_build(&build)?;
            w.put_rollout(&rollout)?;
            w.put_channel(Channel::Stable, &stable)?;
            w.put_channel(Channel::Beta, &beta)?;
            w.put_org_config(&config)
        })
        .await;
        assert_eq!(h.read(|r| r.load_pipeline()).await, expected);

        // Records are replaced by key.
        let mut build = expected.builds["b-1"].clone();
        build.status = BuildStatus::KnownBad;
        build.recommendation = Recommendation::Blocked;
        let mut version = expected.versions[&(Provider::Codex, "1.2.3".to_owned())].clone();
        version.canary_passed = false;
        let mut other = version.clone();
        other.provider = Provider::Omnara;
        let mut rollout = expected.rollouts[&id(0x600)].clone();
        rollout.state = RolloutState::RolledBack;
        let mut stable = expected.channels[&Channel::Stable].clone();
        stable.active_rollout = None;
        expected.builds.insert("b-1".to_owned(), build.clone());
        expected
            .versions
            .insert((Provider::Codex, "1.2.3".to_owned()), version.clone());
        expected
            .versions
            .insert((Provider::Omnara, "1.2.3".to_owned()), other.clone());
        expected.rollouts.insert(rollout.id, rollout.clone());
        expected.channels.insert(Channel::Stable, stable.clone());
        h.write(move |w| {
            w.put_build(&build)?;
            w.put_version(&version)?;
            w.put_version(&other)?;
            w.put_rollout(&rollout)?;
            w.put_channel(Channel::Stable, &stable)
        })
        .await;
        assert_eq!(h.read(|r| r.load_pipeline()).await, expected);
    }

    pub async fn sequence_numbers_never_repeat(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        let a = session(1, "acme", 1_000, Running, None);
        let b = session(2, "acme", 2_000, Running, None);
        let (a2, b2) = (a.clone(), b.clone());
        h.write(move |w| {
            w.put_session(&a2)?;
            w.put_session(&b2)?;
            for i in 0..3 {
                w.append_event(a2.id, "k", format!("a{i}"), i, None)?;
                w.append_event(b2.id, "k", format!("b{i}"), i, None)?;
            }
            w.append_audit(audit("one", 1))?;
            w.enqueue_command(id(0x101), RunnerCommand::Drain, 1)?;
            Ok(())
        })
        .await;
        // Within one job: another session's deletion does not disturb b's numbering.
        let (a3, bid) = (a.clone(), b.id);
        let got = h
            .write(move |w| {
                let before = w.append_event(bid, "k", "b3".into(), 10, None)?.seq;
                w.delete_session(&a3)?;
                let after = w.append_event(bid, "k", "b4".into(), 11, None)?.seq;
                Ok((before, after, w.append_audit(audit("two", 2))?))
            })
            .await;
        assert_eq!(got, (4, 5, 2));
        // In a later job too.
        let got = h
            .write(move |w| {
                let seq = w.append_event(bid, "k", "b5".into(), 12, None)?.seq;
                let cmd = w.enqueue_command(id(0x102), RunnerCommand::Drain, 2)?.seq;
                Ok((seq, cmd, w.append_audit(audit("three", 3))?))
            })
            .await;
        assert_eq!((got.0, got.2), (6, 3));
        assert_eq!(
            seqs(&h.read(move |r| r.events_after(bid, 0, 100)).await),
            vec![1, 2, 3, 4, 5, 6]
        );
        // Many jobs in one batch: event and audit numbers stay contiguous and unique.
        let mut jobs: Vec<QueuedJob<'_, (u64, u64)>> = Vec::new();
        for i in 0..20 {
            jobs.push(Box::pin(h.store.write(move |w| {
                let e = w
                    .append_event(bid, "k", format!("batch {i}"), 100 + i, None)?
                    .seq;
                let a = w.append_audit(audit("batch", 100 + i))?;
                Ok::<_, JobError>((e, a))
            })));
        }
        let results = h.in_one_batch(jobs).await;
        let got: Vec<(u64, u64)> = results
            .into_iter()
            .map(|r| r.expect("every job of the batch commits"))
            .collect();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (7..27).collect::<Vec<_>>(),
            "event seqs follow job order within a batch"
        );
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            (4..24).collect::<Vec<_>>()
        );
        let audits = h.read(|r| r.audit_after(0, 100)).await;
        assert_eq!(
            audits.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..24).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&h.read(move |r| r.events_after(bid, 0, 100)).await),
            (1..27).collect::<Vec<_>>()
        );
    }

    pub async fn reads_in_a_job_see_earlier_writes(open: OpenFn) {
        use SessionState::*;
        let h = Harness::new(open);
        // Within one job.
        let s = session(1, "acme", 1_000, Queued, None);
        let sid = s.id;
        let r1 = id(0x101);
        let hook = id(0x301);
        let seen = h
            .write(move |w| {
                w.put_session(&s)?;
                let got = w.get_session(sid)?;
                let listed = ids(&w.org_sessions("acme")?);
                let counts = (
                    w.org_active_sessions("acme")?,
                    w.active_sessions_of("acme")?,
                );
                let queue = w.queued_sessions(10)?;
                let event = w.append_event(sid, "k", "e".into(), 1, None)?;
                let events = w.events_after(sid, 0, 10)?;
                w.put_output(sid, &chunk(1, 0, "x"))?;
                let output = w.last_output_seq(sid)?;
                w.put_approval(&approval(0x9001, sid, 1))?;
                let approvals = w.approvals(sid)?.len();
                let mut r = runner(0x101, "host-a");
                w.put_runner(&mut r)?;
                let host = w.runner_by_hostname("host-a")?;
                let mut assigned = moved(&s, Queued, Some(r1));
                assigned.updated_at += 1;
                w.put_session(&assigned)?;
                let load = (w.runner_load(r1)?, w.queued_sessions(10)?);
                let cmd = w.enqueue_command(r1, RunnerCommand::Drain, 1)?;
                let outbox = w.outbox(r1)?;
                w.put_token(&token(0x501, None))?;
                let token = w.get_token(id(0x501))?.is_some();
                w.put_webhook(&webhook(0x301, "https://a.example"))?;
                w.put_delivery(&delivery(0x401, hook, DeliveryStatus::Pending, 5), None)?;
                let due = w.due_deliveries(10, 10)?.len();
                let audit_seq = w.append_audit(audit("a", 1))?;
                let audits = w.audit_after(0, 10)?.len();
                w.set_timer(timer(5, TimerKind::SessionTimeout, 1, 0))?;
                let timers = w.due_timers(10, 10)?.len();
                w.put_org_config(&OrgRuntimeConfig::default_for("acme", Channel::Stable))?;
                let pipeline = w.load_pipeline()?.org_configs.len();
                assert_eq!(got.as_ref().map(|s| s.id), Some(sid));
                assert_eq!(listed, vec![sid]);
                assert_eq!(counts, (1, 1));
                assert_eq!(queue, vec![sid]);
                assert_eq!(events, vec![event]);
                assert_eq!(output, 1);
                assert_eq!(approvals, 1);
                assert_eq!(host, Some(r1));
                assert_eq!(load, (1, vec![]));
                assert_eq!(outbox, vec![cmd]);
                assert!(token);
                assert_eq!((due, audit_seq, audits, timers, pipeline), (1, 1, 1, 1, 1));
                Ok(true)
            })
            .await;
        assert!(seen);

        // Across the jobs of one batch: each sees what the jobs before it wrote.
        let t = session(2, "acme", 2_000, Queued, None);
        let tid = t.id;
        let jobs: Vec<QueuedJob<'_, (bool, u64, u64, u64)>> = vec![
            Box::pin(h.store.write(move |w| {
                w.put_session(&t)?;
                let e = w.append_event(tid, "k", "first".into(), 1, None)?.seq;
                let a = w.append_audit(audit("first", 1))?;
                Ok::<_, JobError>((true, e, a, 0))
            })),
            Box::pin(h.store.write(move |w| {
                let found = w.get_session(tid)?.is_some();
                let last = w.last_event_seq(tid)?;
                let audits = w.audit_after(0, 10)?.len() as u64;
                let active = w.org_active_sessions("acme")?;
                let e = w.append_event(tid, "k", "second".into(), 2, None)?.seq;
                Ok::<_, JobError>((found, last, audits, active * 100 + e))
            })),
        ];
        let results: Vec<_> = h
            .in_one_batch(jobs)
            .await
            .into_iter()
            .map(|r| r.expect("both jobs commit"))
            .collect();
        assert_eq!(results[0], (true, 1, 2, 0));
        assert_eq!(
            results[1],
            (true, 1, 2, 2 * 100 + 2),
            "the second job saw the session, its event, the audit entry and the active count"
        );
    }

    pub async fn a_job_refused_before_writing_leaves_its_batch_alone(open: OpenFn) {
        use SessionState::*;
        let mut h = Harness::new(open);
        let (a, b, c) = (
            session(1, "acme", 1_000, Queued, None),
            session(2, "acme", 2_000, Queued, None),
            session(3, "acme", 3_000, Queued, None),
        );
        let jobs: Vec<QueuedJob<'_, u64>> = vec![
            Box::pin(h.store.write(move |w| {
                w.put_session(&a)?;
                w.append_event(a.id, "k", "a".into(), 1, None)?;
                w.emit(label("a"));
                Ok::<_, JobError>(w.append_audit(audit("a", 1))?)
            })),
            Box::pin(h.store.write(move |w| {
                // Reads and emits, then refuses before writing anything.
                let _ = w.org_sessions("acme")?;
                let _ = w.active_sessions_of("acme")?;
                let _ = w.last_event_seq(b.id)?;
                w.emit(label("b"));
                Err::<u64, _>(JobError::Refused("b checks and refuses"))
            })),
            Box::pin(h.store.write(move |w| {
                w.put_session(&c)?;
                w.append_event(c.id, "k", "c".into(), 3, None)?;
                w.emit(label("c"));
                Ok::<_, JobError>(w.append_audit(audit("c", 3))?)
            })),
        ];
        let results = h.in_one_batch(jobs).await;
        assert!(matches!(results[0], Ok(1)), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(JobError::Refused(_))),
            "the refusing job gets its own error: {:?}",
            results[1]
        );
        assert!(matches!(results[2], Ok(2)), "{:?}", results[2]);
        assert_eq!(ids(&h.read(|r| r.all_sessions()).await), vec![id(1), id(3)]);
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 2);
        assert_eq!(h.read(|r| r.queued_sessions(10)).await, vec![id(1), id(3)]);
        assert_eq!(h.read(|r| r.last_event_seq(id(3))).await, 1);
        assert_eq!(h.read(|r| r.audit_after(0, 10)).await.len(), 2);
        assert_eq!(
            h.published_through("end").await,
            vec![
                Published::Event("a".into()),
                Published::Event("c".into()),
                Published::Event("end".into())
            ],
            "a refused job's events are not published"
        );
    }

    pub async fn a_job_failing_after_writing_abandons_its_batch(open: OpenFn) {
        use SessionState::*;
        let mut h = Harness::new(open);
        let base = session(1, "acme", 1_000, Running, Some(id(0x101)));
        let bid = base.id;
        h.write(move |w| {
            w.put_session(&base)?;
            w.append_event(bid, "k", "base".into(), 1, None)?;
            w.append_audit(audit("base", 1))?;
            w.emit(label("base"));
            Ok(())
        })
        .await;
        let (a, b, c) = (
            session(2, "acme", 2_000, Queued, None),
            session(3, "acme", 3_000, Queued, None),
            session(4, "acme", 4_000, Queued, None),
        );
        let jobs: Vec<QueuedJob<'_, ()>> = vec![
            Box::pin(h.store.write(move |w| {
                w.put_session(&a)?;
                w.append_event(bid, "k", "from a".into(), 2, None)?;
                w.append_audit(audit("a", 2))?;
                w.enqueue_command(id(0x101), RunnerCommand::Drain, 2)?;
                w.emit(label("a"));
                Ok::<_, JobError>(())
            })),
            Box::pin(h.store.write(move |w| {
                w.put_session(&b)?;
                w.put_token(&token(0x501, None))?;
                w.emit(label("b"));
                Err(JobError::Refused("b fails after writing"))
            })),
            Box::pin(h.store.write(move |w| {
                w.put_session(&c)?;
                w.set_timer(timer(5, TimerKind::SessionTimeout, 4, 0))?;
                w.emit(label("c"));
                Ok::<_, JobError>(())
            })),
        ];
        let results = h.in_one_batch(jobs).await;
        assert!(
            matches!(results[0], Err(JobError::Store(StoreError::Abandoned))),
            "{:?}",
            results[0]
        );
        assert!(
            matches!(results[1], Err(JobError::Refused(_))),
            "the failing job gets its own error: {:?}",
            results[1]
        );
        assert!(
            matches!(results[2], Err(JobError::Store(StoreError::Abandoned))),
            "{:?}",
            results[2]
        );
        assert_nothing_of_the_batch(&h, bid).await;
        // The store goes on, numbering where the last commit left off.
        let d = session(5, "acme", 5_000, Queued, None);
        let next = h
            .write(move |w| {
                w.put_session(&d)?;
                let e = w.append_event(bid, "k", "after".into(), 3, None)?.seq;
                Ok((e, w.append_audit(audit("after", 3))?))
            })
            .await;
        assert_eq!(next, (2, 2));
        assert_eq!(
            h.published_through("end").await,
            vec![
                Published::Event("base".into()),
                Published::Event("end".into())
            ],
            "an abandoned batch publishes nothing"
        );
    }

    pub async fn a_panicking_job_abandons_its_batch_and_the_store_goes_on(open: OpenFn) {
        use SessionState::*;
        let mut h = Harness::new(open);
        let base = session(1, "acme", 1_000, Running, Some(id(0x101)));
        let bid = base.id;
        h.write(move |w| {
            w.put_session(&base)?;
            w.append_event(bid, "k", "base".into(), 1, None)?;
            w.append_audit(audit("base", 1))?;
            w.emit(label("base"));
            Ok(())
        })
        .await;
        let (a, b, c) = (
            session(2, "acme", 2_000, Queued, None),
            session(3, "acme", 3_000, Queued, None),
            session(4, "acme", 4_000, Queued, None),
        );
        let jobs: Vec<QueuedJob<'_, ()>> = vec![
            Box::pin(h.store.write(move |w| {
                w.put_session(&a)?;
                w.append_event(bid, "k", "from a".into(), 2, None)?;
                w.append_audit(audit("a", 2))?;
                w.enqueue_command(id(0x101), RunnerCommand::Drain, 2)?;
                w.emit(label("a"));
                Ok::<_, JobError>(())
            })),
            Box::pin(h.store.write(move |w| -> Result<(), JobError> {
                w.put_session(&b)?;
                w.emit(label("b"));
                panic!("a write job panics on purpose (store conformance)");
            })),
            Box::pin(h.store.write(move |w| {
                w.put_session(&c)?;
                w.put_token(&token(0x501, None))?;
                w.set_timer(timer(5, TimerKind::SessionTimeout, 4, 0))?;
                w.emit(label("c"));
                Ok::<_, JobError>(())
            })),
        ];
        let results = h.in_one_batch(jobs).await;
        assert!(
            matches!(results[0], Err(JobError::Store(StoreError::Panicked))),
            "a job before the panic hears that its batch panicked: {:?}",
            results[0]
        );
        // The panicking job and the jobs after it never finish; they must still fail (today
        // they hear `Closed`, as if the store had shut down).
        assert!(results[1].is_err(), "{:?}", results[1]);
        assert!(results[2].is_err(), "{:?}", results[2]);
        assert_nothing_of_the_batch(&h, bid).await;
        let d = session(5, "acme", 5_000, Queued, None);
        let next = h
            .write(move |w| {
                w.put_session(&d)?;
                let e = w.append_event(bid, "k", "after".into(), 3, None)?.seq;
                Ok((e, w.append_audit(audit("after", 3))?))
            })
            .await;
        assert_eq!(next, (2, 2), "the store keeps working after a panic");
        assert_eq!(ids(&h.read(|r| r.all_sessions()).await), vec![id(1), id(5)]);
        assert_eq!(
            h.published_through("end").await,
            vec![
                Published::Event("base".into()),
                Published::Event("end".into())
            ],
            "a panicked batch publishes nothing"
        );
    }

    /// After the abandoned batch of the two checks above: only the base commit is visible.
    async fn assert_nothing_of_the_batch(h: &Harness, base: Uuid) {
        assert_eq!(ids(&h.read(|r| r.all_sessions()).await), vec![base]);
        assert_eq!(ids(&h.read(|r| r.org_sessions("acme")).await), vec![base]);
        assert_eq!(h.read(|r| r.org_active_sessions("acme")).await, 1);
        assert!(h.read(|r| r.queued_sessions(10)).await.is_empty());
        assert_eq!(h.read(move |r| r.last_event_seq(base)).await, 1);
        assert_eq!(h.read(|r| r.audit_after(0, 10)).await.len(), 1);
        assert!(h.read(|r| r.outbox(id(0x101))).await.is_empty());
        assert!(!h.read(|r| r.any_token()).await);
        assert!(h.read(|r| r.due_timers(1_000, 10)).await.is_empty());
    }

    pub async fn after_commit_updates_run_before_callers_hear_and_only_for_committed_jobs(
        open: OpenFn,
    ) {
        use std::sync::{Arc, Mutex};
        let h = Harness::new(open);
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let note = |seen: &Arc<Mutex<Vec<String>>>, what: &str| -> AfterCommit {
            let (seen, what) = (seen.clone(), what.to_owned());
            Box::new(move || seen.lock().expect("lock").push(what))
        };
        // A committed job: its update has run by the time its caller hears back.
        let hook = note(&seen, "committed");
        h.write(move |w| {
            w.after_commit(hook);
            w.emit(label("committed"));
            Ok(())
        })
        .await;
        assert_eq!(*seen.lock().expect("lock"), ["committed"]);
        // A refused job's update never runs; the rest of its batch's do.
        let jobs: Vec<QueuedJob<'_, ()>> = (0..3)
            .map(|i| -> QueuedJob<'_, ()> {
                let hook = note(&seen, &format!("batch {i}"));
                Box::pin(h.store.write(move |w| {
                    w.after_commit(hook);
                    if i == 1 {
                        return Err(JobError::Refused("refused before writing"));
                    }
                    Ok(())
                }))
            })
            .collect();
        let results = h.in_one_batch(jobs).await;
        assert!(results[1].is_err() && results[0].is_ok() && results[2].is_ok());
        assert_eq!(
            *seen.lock().expect("lock"),
            ["committed", "batch 0", "batch 2"]
        );
        // An abandoned batch runs none.
        let jobs: Vec<QueuedJob<'_, ()>> = (0..2)
            .map(|i| -> QueuedJob<'_, ()> {
                let hook = note(&seen, &format!("abandoned {i}"));
                Box::pin(h.store.write(move |w| {
                    w.after_commit(hook);
                    w.enqueue_command(id(0x77), RunnerCommand::Drain, i)?;
                    if i == 1 {
                        return Err(JobError::Refused("fails after writing"));
                    }
                    Ok(())
                }))
            })
            .collect();
        assert!(h.in_one_batch(jobs).await.iter().all(Result::is_err));
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    pub async fn only_committed_batches_are_published_in_commit_order(open: OpenFn) {
        let mut h = Harness::new(open);
        let r1 = id(0x101);
        // Sequential commits.
        let mut commands = Vec::new();
        for i in 0..3 {
            let seq = h
                .write(move |w| {
                    w.emit(label(&format!("seq {i}")));
                    w.emit(label(&format!("seq {i} bis")));
                    Ok(w.enqueue_command(r1, RunnerCommand::Drain, i)?.seq)
                })
                .await;
            commands.push(seq);
        }
        // A committed batch with a refused job.
        let jobs: Vec<QueuedJob<'_, u64>> = (0..4)
            .map(|i| -> QueuedJob<'_, u64> {
                Box::pin(h.store.write(move |w| {
                    w.emit(label(&format!("batch {i}")));
                    if i == 2 {
                        return Err(JobError::Refused("refused before writing"));
                    }
                    Ok(w.enqueue_command(r1, RunnerCommand::Drain, 10 + i)?.seq)
                }))
            })
            .collect();
        let results = h.in_one_batch(jobs).await;
        assert!(matches!(results[2], Err(JobError::Refused(_))));
        let batch: Vec<u64> = [0, 1, 3]
            .iter()
            .map(|&i| *results[i].as_ref().expect("committed"))
            .collect();
        // An abandoned batch.
        let jobs: Vec<QueuedJob<'_, ()>> = (0..3)
            .map(|i| -> QueuedJob<'_, ()> {
                Box::pin(h.store.write(move |w| {
                    w.emit(label(&format!("abandoned {i}")));
                    w.enqueue_command(r1, RunnerCommand::Drain, 20 + i)?;
                    if i == 1 {
                        return Err(JobError::Refused("fails after writing"));
                    }
                    Ok(())
                }))
            })
            .collect();
        assert!(h.in_one_batch(jobs).await.iter().all(Result::is_err));
        let last = h
            .write(move |w| {
                w.emit(label("after"));
                Ok(w.enqueue_command(r1, RunnerCommand::Drain, 30)?.seq)
            })
            .await;

        let cmd = |seq| Published::Command { runner: r1, seq };
        let ev = |s: &str| Published::Event(s.to_owned());
        let mut expected = Vec::new();
        for (i, seq) in commands.iter().enumerate() {
            expected.push(cmd(*seq));
            expected.push(ev(&format!("seq {i}")));
            expected.push(ev(&format!("seq {i} bis")));
        }
        // A batch's commands, then its events, each in job order.
        expected.extend(batch.iter().map(|&s| cmd(s)));
        expected.extend(["batch 0", "batch 1", "batch 3"].map(ev));
        expected.push(cmd(last));
        expected.push(ev("after"));
        expected.push(ev("end"));
        assert_eq!(h.published_through("end").await, expected);
    }

    /// A command enqueued and withdrawn in the same batch (a scheduler pass assigns a session,
    /// then a stop of the still-queued session withdraws the assignment) was never committed, so
    /// it must not reach its runner's channel either; the batch's other commands still do.
    pub async fn a_command_withdrawn_in_its_own_batch_is_not_handed_to_its_runner(open: OpenFn) {
        let mut h = Harness::new(open);
        let (r1, r2) = (id(0x101), id(0x102));
        let (s1, s2, s3) = (id(0x201), id(0x202), id(0x203));
        let assign = |session_id, assignment_id| RunnerCommand::AssignSession {
            session_id,
            assignment_id,
        };
        let jobs: Vec<QueuedJob<'_, u64>> = vec![
            Box::pin(h.store.write(move |w| {
                w.enqueue_command(r1, assign(s1, id(0x301)), 1)?;
                // Another runner's command for the same session is not withdrawn with it.
                w.enqueue_command(r2, assign(s1, id(0x302)), 1)?;
                Ok::<_, JobError>(w.enqueue_command(r1, assign(s2, id(0x303)), 1)?.seq)
            })),
            Box::pin(h.store.write(move |w| {
                let n = w.remove_commands(r1, &mut |e| {
                    matches!(e.command, RunnerCommand::AssignSession { session_id, .. } if session_id == s1)
                })?;
                Ok::<_, JobError>(n as u64)
            })),
            Box::pin(h.store.write(move |w| {
                let e = w.enqueue_command(r1, assign(s3, id(0x304)), 1)?;
                Ok::<_, JobError>(u64::from(w.remove_command(r1, e.message_id)?))
            })),
        ];
        let results = h.in_one_batch(jobs).await;
        let Ok(kept) = results[0] else {
            panic!("{:?}", results[0]);
        };
        assert!(matches!(results[1], Ok(1)), "{:?}", results[1]);
        assert!(matches!(results[2], Ok(1)), "{:?}", results[2]);
        let outbox = h.read(move |r| r.outbox(r1)).await;
        assert_eq!(outbox.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![kept]);
        let r2_seq = h.read(move |r| r.outbox(r2)).await[0].seq;
        let mut published = h.published_through("end").await;
        published.sort_by_key(|p| format!("{p:?}"));
        let mut expected = vec![
            Published::Command {
                runner: r1,
                seq: kept,
            },
            Published::Command {
                runner: r2,
                seq: r2_seq,
            },
            Published::Event("end".into()),
        ];
        expected.sort_by_key(|p| format!("{p:?}"));
        assert_eq!(
            published, expected,
            "only committed commands are handed over"
        );
    }

    pub async fn a_failed_commit_is_reported_and_committed_data_stays(open: OpenFn) {
        let Some(fs) = TinyFs::mount(16 << 20) else {
            return;
        };
        let data = fs.path().join("data");
        let h = Harness::at(open, &data);
        let base = session(1, "acme", 1_000, SessionState::Running, None);
        let bid = base.id;
        let base2 = base.clone();
        h.write(move |w| {
            w.put_session(&base2)?;
            w.append_event(bid, "k", "committed".into(), 1, None)?;
            w.append_audit(audit("committed", 1))?;
            w.emit(label("committed"));
            Ok(())
        })
        .await;
        fs.fill();

        // Large output until a write fails (the first ones may still fit in free pages).
        let block = "x".repeat(256 << 10);
        let mut failure = None;
        for seq in 1..=64u64 {
            let c = chunk(seq, (seq - 1) * block.len() as u64, &block);
            let written = h
                .store
                .write(move |w| {
                    w.put_output(bid, &c)?;
                    w.emit(label(&format!("output {seq}")));
                    Ok::<_, StoreError>(())
                })
                .await;
            if let Err(e) = written {
                failure = Some((seq, e));
                break;
            }
        }
        let (failed, e) = failure.expect("a write on a full filesystem fails");
        println!("write {failed} on a full filesystem failed: {e:?}");
        assert!(
            !matches!(e, StoreError::Panicked | StoreError::Closed),
            "the writer reports the failure, it does not panic or stop: {e:?}"
        );

        // What was committed before is still readable, and the failed write left nothing.
        let read = h
            .store
            .read(move |r| {
                Ok::<_, StoreError>((
                    r.get_session(bid)?,
                    r.last_event_seq(bid)?,
                    r.last_output_seq(bid)?,
                ))
            })
            .await;
        let (got, events, output) = read.expect("committed data is readable after a failed commit");
        assert_eq!(got, Some(base.clone()));
        assert_eq!((events, output), (1, failed - 1));

        // With room again: whether this instance takes writes again is the engine's business
        // (redb refuses every write after an I/O error until it is reopened); it must answer.
        fs.unfill();
        let again = h
            .store
            .write(move |w| {
                w.append_audit(audit("after the failure", 2))?;
                w.emit(label("after the failure"));
                Ok::<_, StoreError>(())
            })
            .await;
        println!("a write once space is back: {again:?}");
        let read = h
            .store
            .read(move |r| r.get_session(bid).map(|s| s.is_some()))
            .await;
        println!("a read once space is back: {read:?}");

        // Only committed writes were published.
        let mut expected = vec![Published::Event("committed".into())];
        expected.extend((1..failed).map(|seq| Published::Event(format!("output {seq}"))));
        if again.is_ok() {
            expected.push(Published::Event("after the failure".into()));
        }
        assert_eq!(h.close().await, expected);

        // Reopened: everything committed is there, and the store takes writes.
        let h = Harness::reopen(open, &data).await;
        assert_eq!(h.read(move |r| r.get_session(bid)).await, Some(base));
        assert_eq!(h.read(move |r| r.last_event_seq(bid)).await, 1);
        assert_eq!(h.read(move |r| r.last_output_seq(bid)).await, failed - 1);
        let audits = h.read(|r| r.audit_after(0, 10)).await.len() as u64;
        assert_eq!(audits, if again.is_ok() { 2 } else { 1 });
        let next = h.write(|w| w.append_audit(audit("reopened", 3))).await;
        assert_eq!(next, audits + 1);
        drop(h);
    }
}

// ------------------------------------------------------------------------------------------
// A tiny filesystem to fill up
// ------------------------------------------------------------------------------------------

/// A tmpfs of a few megabytes mounted on a temporary dir, unmounted when dropped.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    /// Mounts it, or says why it cannot and returns `None`.
    fn mount(bytes: u64) -> Option<TinyFs> {
        let dir = tempfile::tempdir().expect("create a mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::piped())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(TinyFs { dir }),
            Ok(out) => {
                println!(
                    "skipped: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Takes all the space that is left.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).expect("create the filler");
        let block = vec![0u8; 64 << 10];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        // Whatever is left below a block.
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
    }

    /// Gives the space back.
    fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        // Lazily: the engine's writer thread may still hold its file open for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
