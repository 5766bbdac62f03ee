//! The only code that touches redb.
//!
//! Durability policy: every write goes through one writer thread. It takes all the write jobs
//! waiting at that moment, runs them one after another in a single write transaction and commits
//! it with `Durability::Immediate` (fsync) before any of their callers hears back. So everything
//! acknowledged is on disk, and concurrent writers share one fsync (group commit): throughput
//! grows with concurrency. Events recorded by a job are published on the bus after the commit,
//! in commit order. A job that fails leaves no writes behind (jobs check before they write), so
//! it does not disturb the others in its batch; a storage failure fails the whole batch.
//!
//! The writer is the one serial step every write waits for, so it does as little as it can: the
//! tables of the session paths stay open for the whole batch (`hot_tables!`), sequence numbers
//! already known in the batch are not looked up again, and a committed batch is handed to a
//! runtime task that wakes its callers and publishes its events (in commit order) while the
//! writer starts on the next batch.
//!
//! Reads run on the blocking pool, each in its own read transaction (a consistent snapshot).
//! No redb call ever runs on the async reactor.

pub mod codec;
pub mod migrations;
mod pipeline;
pub mod tables;

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, TableHandle, Value, WriteTransaction,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::auth::TokenRecord;
use crate::clock::Millis;
use crate::events::{BusEvent, EventBus};
use crate::runners::model::{Liveness, OutboxEntry, RunnerCommand, RunnerRecord};
use crate::sessions::model::{Approval, OutputChunk, Session, SessionEvent};
use crate::webhooks::{Delivery, DeliveryStatus, Webhook};
use codec::{decode, encode};
pub use pipeline::load_pipeline;
use tables::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    #[error("stored {0} could not be decoded")]
    Corrupt(String),
    #[error("value could not be encoded: {0}")]
    Encode(String),
    #[error("database schema version {found} is newer than this binary supports ({supported})")]
    NewerSchema { found: u64, supported: u64 },
    #[error("the store is shut down")]
    Closed,
    #[error("a write job panicked")]
    Panicked,
    #[error("the write batch was abandoned: a job failed after writing")]
    Abandoned,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// For replying to several waiters with the same failure.
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
            StoreError::Encode(s) => StoreError::Encode(s.clone()),
            StoreError::NewerSchema { found, supported } => StoreError::NewerSchema {
                found: *found,
                supported: *supported,
            },
            StoreError::Closed => StoreError::Closed,
            StoreError::Panicked => StoreError::Panicked,
            StoreError::Abandoned => StoreError::Abandoned,
            StoreError::Db(e) => StoreError::Corrupt(format!("write failed: {e}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Timers the sweeper acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TimerKind {
    SessionTimeout = 1,
    ApprovalExpiry = 2,
    SessionPurge = 3,
    /// An assignment the runner did not confirm in time goes back to the queue.
    AssignmentLapse = 4,
}

impl TimerKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::SessionTimeout),
            2 => Some(Self::ApprovalExpiry),
            3 => Some(Self::SessionPurge),
            4 => Some(Self::AssignmentLapse),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub due: Millis,
    pub kind: TimerKind,
    pub session_id: Uuid,
    pub other_id: Uuid,
}

type Finish = Box<dyn FnOnce(StoreResult<()>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Finish + Send>;

/// Counters of the writer, for benchmarks and metrics.
#[derive(Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub jobs: AtomicU64,
    /// Time spent running jobs, and in `commit()` (page writes + fsync), in microseconds.
    pub job_micros: AtomicU64,
    pub commit_micros: AtomicU64,
    /// Time batches spent waiting for more jobs (`LINGER`), in microseconds.
    pub linger_micros: AtomicU64,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
    pub stats: Arc<WriterStats>,
}

const MAX_BATCH: usize = 4096;
/// Batches at least this large, but smaller than the one before, wait up to `LINGER` for more
/// jobs before committing.
const LINGER_MIN_BATCH: usize = 4;
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);

impl Store {
    /// Opens (or creates) the database file, migrates it and starts the writer thread.
    pub fn open(path: &Path, bus: EventBus) -> StoreResult<Store> {
        let db = Database::create(path)?;
        migrations::migrate(&db)?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(WriterStats::default());
        let writer_db = db.clone();
        let writer_stats = stats.clone();
        // Inside a runtime, a task tells each batch's callers and the bus, so the writer goes
        // on to the next batch after one hand-over instead of waking every caller itself.
        let deliverer = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
            let bus = bus.clone();
            runtime.spawn(async move {
                while let Some(outcome) = rx.recv().await {
                    outcome.deliver(&bus);
                }
            });
            tx
        });
        std::thread::Builder::new()
            .name("village-store-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx, &bus, deliverer, &writer_stats))
            .map_err(|e| StoreError::Db(Box::new(e.into())))?;
        Ok(Store { db, jobs, stats })
    }

    /// Runs `f` in a write transaction, committed durably before this returns `Ok`.
    /// `f` must check everything before it writes anything: an `Err` from it is passed to the
    /// caller and the batch goes on without its writes.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R, E>>();
        let job: Job = Box::new(move |ctx: &mut WriteCtx<'_>| {
            let marks = (ctx.events.len(), ctx.commands.len(), ctx.writes);
            let outcome = f(ctx);
            ctx.followed = None;
            if outcome.is_err() {
                ctx.events.truncate(marks.0);
                ctx.commands.truncate(marks.1);
                // Jobs check before they write; one that failed after writing (a storage
                // error, a bug) may have left half a change: the batch is abandoned.
                if ctx.writes != marks.2 {
                    ctx.poisoned = true;
                }
            }
            Box::new(move |commit: StoreResult<()>| {
                let reply = match (outcome, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(E::from(e)),
                };
                let _ = tx.send(reply);
            }) as Finish
        });
        self.jobs
            .send(job)
            .map_err(|_| E::from(StoreError::Closed))?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }

    /// Runs `f` on a read snapshot, on the blocking pool.
    pub async fn read<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&ReadCtx) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(StoreError::from)?;
            f(&ReadCtx { txn })
        })
        .await
        .map_err(|_| E::from(StoreError::Panicked))?
    }

    /// `/readyz`: the database answers a read and takes a durable write.
    pub async fn check_ready(&self, now: Millis) -> StoreResult<()> {
        self.read(|r| r.table(META).map(|_| ())).await?;
        self.write(move |w| {
            let mut meta = w.open_mut(META)?;
            meta.insert("last_ready_check_ms", now.max(0) as u64)?;
            Ok::<_, StoreError>(())
        })
        .await
    }
}

fn writer_loop(
    db: &Database,
    rx: &mpsc::Receiver<Job>,
    bus: &EventBus,
    deliverer: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
    stats: &WriterStats,
) {
    let mut last_batch = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Under concurrency, linger a moment for more writers: one more job in this batch
        // costs far less than a commit of its own (commit_delay, as databases call it).
        // A lone writer never waits, and neither does a batch that is already as large as the
        // last one: when writers queue up behind the commits anyway, waiting only adds a pause
        // to every cycle.
        if batch.len() >= LINGER_MIN_BATCH && batch.len() < last_batch {
            let lingered = std::time::Instant::now();
            let deadline = lingered + LINGER;
            while batch.len() < last_batch.min(MAX_BATCH) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            stats
                .linger_micros
                .fetch_add(lingered.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        last_batch = batch.len();
        let count = batch.len() as u64;
        let (finishes, result, committed) = run_batch(db, batch, stats);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(count, Ordering::Relaxed);
        let outcome = Outcome {
            finishes,
            result,
            committed,
            jobs: count,
        };
        // Batches are handed over in commit order and delivered one after another, so events
        // still reach the bus in commit order.
        match &deliverer {
            Some(tx) => {
                if let Err(returned) = tx.send(outcome) {
                    // The runtime is gone: tell whoever is left from here.
                    returned.0.deliver(bus);
                }
            }
            None => outcome.deliver(bus),
        }
    }
}

/// A batch's result, to be told to its callers, the runners' channels and the bus.
struct Outcome {
    finishes: Vec<Finish>,
    result: StoreResult<()>,
    committed: Committed,
    jobs: u64,
}

impl Outcome {
    fn deliver(self, bus: &EventBus) {
        let Outcome {
            finishes,
            result,
            committed,
            jobs,
        } = self;
        // Callers first (they are waiting), then the runners' channels and the bus.
        for finish in finishes {
            finish(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            });
        }
        match &result {
            Ok(()) => {
                for command in committed.commands {
                    bus.publish_command(command);
                }
                for event in committed.events {
                    bus.publish(event);
                }
            }
            Err(e) => tracing::error!(error = %e, jobs, "write batch failed"),
        }
    }
}

fn run_batch(
    db: &Database,
    batch: Vec<Job>,
    stats: &WriterStats,
) -> (Vec<Finish>, StoreResult<()>, Committed) {
    let started = std::time::Instant::now();
    let mut finishes = Vec::with_capacity(batch.len());
    let txn = match db.begin_write() {
        Ok(t) => t,
        // No job ran; dropping them tells each caller the store failed.
        Err(e) => return (finishes, Err(e.into()), Committed::default()),
    };
    let mut ctx = WriteCtx {
        txn: &txn,
        hot: HotTables::default(),
        events: Vec::new(),
        commands: Vec::new(),
        event_seqs: HashMap::new(),
        audit_seq: None,
        followed: None,
        writes: 0,
        poisoned: false,
    };
    let mut panicked = false;
    for job in batch {
        if panicked {
            // The transaction may hold half a job: none of the batch is committed.
            drop(job);
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| job(&mut ctx))) {
            Ok(finish) => finishes.push(finish),
            Err(_) => {
                tracing::error!("a write job panicked; its batch is abandoned");
                panicked = true;
            }
        }
    }
    let committed = Committed {
        events: std::mem::take(&mut ctx.events),
        commands: std::mem::take(&mut ctx.commands),
    };
    let poisoned = ctx.poisoned;
    drop(ctx);
    if poisoned && !panicked {
        tracing::error!("a write job failed after writing; its batch is abandoned");
        let _ = txn.abort();
        return (finishes, Err(StoreError::Abandoned), Committed::default());
    }
    if panicked {
        let _ = txn.abort();
        return (finishes, Err(StoreError::Panicked), Committed::default());
    }
    let jobs_done = std::time::Instant::now();
    let outcome = txn.commit();
    stats
        .job_micros
        .fetch_add((jobs_done - started).as_micros() as u64, Ordering::Relaxed);
    stats
        .commit_micros
        .fetch_add(jobs_done.elapsed().as_micros() as u64, Ordering::Relaxed);
    match outcome {
        Ok(()) => (finishes, Ok(()), committed),
        Err(e) => (finishes, Err(e.into()), Committed::default()),
    }
}

/// What a batch makes known once it is durable.
#[derive(Default)]
struct Committed {
    events: Vec<BusEvent>,
    commands: Vec<OutboxEntry>,
}

/// Reading methods shared by read snapshots and write transactions.
pub trait Reads {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<impl ReadableTable<K, V> + '_>;

    fn get_session(&self, id: Uuid) -> StoreResult<Option<Session>> {
        let t = self.table(SESSIONS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// An org's sessions, newest first.
    fn org_sessions(&self, org_id: &str) -> StoreResult<Vec<Session>> {
        let index = self.table(SESSIONS_BY_ORG)?;
        let sessions = self.table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in index
            .range((org_id, 0u64, 0u128)..=(org_id, u64::MAX, u128::MAX))?
            .rev()
        {
            let (key, _) = entry?;
            let (_, _, id) = key.value();
            if let Some(v) = sessions.get(id)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    fn org_active_sessions(&self, org_id: &str) -> StoreResult<u64> {
        Ok(self
            .table(ORG_ACTIVE_SESSIONS)?
            .get(org_id)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn events_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<SessionEvent>> {
        seq_range(&self.table(SESSION_EVENTS)?, session, after, limit)
    }

    /// The last `n` events, oldest first.
    fn recent_events(&self, session: Uuid, n: usize) -> StoreResult<Vec<SessionEvent>> {
        let t = self.table(SESSION_EVENTS)?;
        let id = session.as_u128();
        let mut out = Vec::with_capacity(n);
        for entry in t.range((id, 0u64)..=(id, u64::MAX))?.rev().take(n) {
            out.push(decode(entry?.1.value())?);
        }
        out.reverse();
        Ok(out)
    }

    fn last_event_seq(&self, session: Uuid) -> StoreResult<u64> {
        last_seq(&self.table(SESSION_EVENTS)?, session)
    }

    fn output_after(
        &self,
        session: Uuid,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutputChunk>> {
        seq_range(&self.table(SESSION_OUTPUT)?, session, after, limit)
    }

    fn last_output_seq(&self, session: Uuid) -> StoreResult<u64> {
        last_seq(&self.table(SESSION_OUTPUT)?, session)
    }

    /// The newest chunks first, as far back as `stop` says.
    fn find_output_back(
        &self,
        session: Uuid,
        mut stop: impl FnMut(&OutputChunk) -> bool,
    ) -> StoreResult<Option<OutputChunk>> {
        let t = self.table(SESSION_OUTPUT)?;
        let id = session.as_u128();
        for entry in t.range((id, 0u64)..=(id, u64::MAX))?.rev() {
            let chunk: OutputChunk = decode(entry?.1.value())?;
            if stop(&chunk) {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }

    /// Every approval of a session, in the order they were requested.
    fn approvals(&self, session: Uuid) -> StoreResult<Vec<Approval>> {
        let t = self.table(APPROVALS)?;
        let id = session.as_u128();
        let mut out: Vec<Approval> = Vec::new();
        for entry in t.range((id, 0u128)..=(id, u128::MAX))? {
            out.push(decode(entry?.1.value())?);
        }
        out.sort_by_key(|a| a.seq);
        Ok(out)
    }

    fn get_approval(&self, session: Uuid, approval: Uuid) -> StoreResult<Option<Approval>> {
        let t = self.table(APPROVALS)?;
        let v = t.get((session.as_u128(), approval.as_u128()))?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>> {
        let t = self.table(TOKENS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn all_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let t = self.table(TOKENS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn any_token(&self) -> StoreResult<bool> {
        Ok(!self.table(TOKENS)?.is_empty()?)
    }

    fn get_runner(&self, id: Uuid) -> StoreResult<Option<RunnerRecord>> {
        let t = self.table(RUNNERS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn runner_by_hostname(&self, hostname: &str) -> StoreResult<Option<Uuid>> {
        Ok(self
            .table(RUNNERS_BY_HOSTNAME)?
            .get(hostname)?
            .map(|v| Uuid::from_u128(v.value())))
    }

    fn all_runners(&self) -> StoreResult<Vec<RunnerRecord>> {
        let t = self.table(RUNNERS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn all_liveness(&self) -> StoreResult<Vec<(Uuid, Liveness)>> {
        let t = self.table(RUNNER_LIVENESS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((Uuid::from_u128(k.value()), decode(v.value())?));
        }
        Ok(out)
    }

    /// The non-terminal sessions assigned to a runner.
    fn runner_sessions(&self, runner: Uuid) -> StoreResult<Vec<Uuid>> {
        let t = self.table(SESSIONS_BY_RUNNER)?;
        let r = runner.as_u128();
        let mut out = Vec::new();
        for entry in t.range((r, 0u128)..=(r, u128::MAX))? {
            out.push(Uuid::from_u128(entry?.0.value().1));
        }
        Ok(out)
    }

    /// How many non-terminal sessions each runner holds (runners with none are absent).
    fn runner_loads(&self) -> StoreResult<std::collections::HashMap<Uuid, u64>> {
        let t = self.table(RUNNER_ACTIVE_SESSIONS)?;
        let mut out = std::collections::HashMap::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.insert(Uuid::from_u128(k.value()), v.value());
        }
        Ok(out)
    }

    fn runner_load(&self, runner: Uuid) -> StoreResult<u64> {
        Ok(self
            .table(RUNNER_ACTIVE_SESSIONS)?
            .get(runner.as_u128())?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Sessions waiting for a runner, oldest first.
    fn queued_sessions(&self, limit: usize) -> StoreResult<Vec<Uuid>> {
        let t = self.table(SESSION_QUEUE)?;
        let mut out = Vec::new();
        for entry in t.iter()?.take(limit) {
            out.push(Uuid::from_u128(entry?.0.value().1));
        }
        Ok(out)
    }

    /// A runner's unacknowledged commands, in order.
    fn outbox(&self, runner: Uuid) -> StoreResult<Vec<OutboxEntry>> {
        let t = self.table(RUNNER_OUTBOX)?;
        let r = runner.as_u128();
        let mut out = Vec::new();
        for entry in t.range((r, 0u64)..=(r, u64::MAX))? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Every session (for whole-fleet summaries).
    fn all_sessions(&self) -> StoreResult<Vec<Session>> {
        let t = self.table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn all_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let t = self.table(WEBHOOKS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn get_delivery(&self, webhook: Uuid, id: Uuid) -> StoreResult<Option<Delivery>> {
        let t = self.table(WEBHOOK_DELIVERIES)?;
        let v = t.get((webhook.as_u128(), id.as_u128()))?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// A webhook's deliveries, newest first.
    fn webhook_deliveries(&self, webhook: Uuid, limit: usize) -> StoreResult<Vec<Delivery>> {
        let t = self.table(WEBHOOK_DELIVERIES)?;
        let w = webhook.as_u128();
        let mut out = Vec::new();
        for entry in t.range((w, 0u128)..=(w, u128::MAX))?.rev().take(limit) {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Pending deliveries due by `now`, earliest first.
    fn due_deliveries(&self, now: Millis, limit: usize) -> StoreResult<Vec<Delivery>> {
        let queue = self.table(DELIVERY_QUEUE)?;
        let end = now.max(0) as u64;
        let mut keys = Vec::new();
        for entry in queue
            .range((0u64, 0u128, 0u128)..=(end, u128::MAX, u128::MAX))?
            .take(limit)
        {
            let (_, w, d) = entry?.0.value();
            keys.push((w, d));
        }
        let mut out = Vec::new();
        for (w, d) in keys {
            if let Some(delivery) = self.get_delivery(Uuid::from_u128(w), Uuid::from_u128(d))? {
                out.push(delivery);
            }
        }
        Ok(out)
    }

    /// Audit entries after `after`, oldest first.
    fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let t = self.table(AUDIT)?;
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in t.range(after + 1..)?.take(limit) {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> StoreResult<Vec<Timer>> {
        let t = self.table(TIMERS)?;
        let end = now.max(0) as u64;
        let mut out = Vec::new();
        for entry in t
            .range((0u64, 0u8, 0u128, 0u128)..=(end, u8::MAX, u128::MAX, u128::MAX))?
            .take(limit)
        {
            let (due, kind, session, other) = entry?.0.value();
            if let Some(kind) = TimerKind::from_u8(kind) {
                out.push(Timer {
                    due: due as Millis,
                    kind,
                    session_id: Uuid::from_u128(session),
                    other_id: Uuid::from_u128(other),
                });
            }
        }
        Ok(out)
    }
}

fn seq_range<T: codec::Record>(
    t: &impl ReadableTable<(u128, u64), &'static [u8]>,
    session: Uuid,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let id = session.as_u128();
    let mut out = Vec::new();
    if after == u64::MAX {
        return Ok(out);
    }
    for entry in t.range((id, after + 1)..=(id, u64::MAX))?.take(limit) {
        out.push(decode(entry?.1.value())?);
    }
    Ok(out)
}

fn last_seq(t: &impl ReadableTable<(u128, u64), &'static [u8]>, session: Uuid) -> StoreResult<u64> {
    let id = session.as_u128();
    let last = t.range((id, 0u64)..=(id, u64::MAX))?.next_back();
    match last {
        Some(entry) => Ok(entry?.0.value().1),
        None => Ok(0),
    }
}

/// A read snapshot.
pub struct ReadCtx {
    txn: ReadTransaction,
}

impl Reads for ReadCtx {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<impl ReadableTable<K, V> + '_> {
        let t: ReadOnlyTable<K, V> = self.txn.open_table(def)?;
        Ok(t)
    }
}

/// The write transaction a job runs in.
pub struct WriteCtx<'a> {
    txn: &'a WriteTransaction,
    /// Tables of the hot write paths, opened once per batch (see `hot_tables!`).
    hot: HotTables<'a>,
    events: Vec<BusEvent>,
    commands: Vec<OutboxEntry>,
    /// The last event seq of each session that got an event in this batch, so that a second
    /// event needs no look-up.
    event_seqs: HashMap<u128, u64>,
    /// The last audit seq, once this batch has read or written it.
    audit_seq: Option<u64>,
    /// A session created by the current job: the events appended for it are kept (see
    /// `begin_session_events`).
    followed: Option<(Uuid, Vec<SessionEvent>)>,
    /// Writes made so far in this batch (table opens for writing, hot-table mutations).
    writes: u64,
    /// A job failed after writing: the batch must not commit.
    poisoned: bool,
}

/// The tables every session create (and most session updates) writes, kept open for the whole
/// batch: opening a redb table looks it up in the table tree and closing it stages its new
/// root, which cost as much as the inserts themselves when each job opened each table anew.
///
/// redb refuses to open a table twice, so the generic ways in (`Reads::table`, `open_mut`)
/// first close the cached handle of the same table. `Cell` makes that possible from `&self`
/// without any runtime borrow check: a cached handle is only ever reached through `&mut self`.
macro_rules! hot_tables {
    ($($field:ident: $def:ident, $k:ty, $v:ty;)*) => {
        #[derive(Default)]
        struct HotTables<'a> {
            $($field: Cell<Option<Table<'a, $k, $v>>>,)*
        }

        impl HotTables<'_> {
            /// Closes the cached handle of table `name`, if it is a hot one and open.
            fn evict(&self, name: &str) {
                $(if name == $def.name() {
                    drop(self.$field.take());
                    return;
                })*
            }
        }

        impl<'a> WriteCtx<'a> {
            $(
                /// The batch's open handle of this table, opened on first use.
                fn $field(&mut self) -> StoreResult<&mut Table<'a, $k, $v>> {
                    let slot = self.hot.$field.get_mut();
                    let table = match slot.take() {
                        Some(t) => t,
                        None => self.txn.open_table($def)?,
                    };
                    Ok(slot.insert(table))
                }
            )*
        }
    };
}

hot_tables! {
    hot_sessions: SESSIONS, u128, &'static [u8];
    hot_sessions_by_org: SESSIONS_BY_ORG, (&'static str, u64, u128), ();
    hot_org_active: ORG_ACTIVE_SESSIONS, &'static str, u64;
    hot_queue: SESSION_QUEUE, (u64, u128), ();
    hot_events: SESSION_EVENTS, (u128, u64), &'static [u8];
    hot_audit: AUDIT, u64, &'static [u8];
}

impl Reads for WriteCtx<'_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<impl ReadableTable<K, V> + '_> {
        self.hot.evict(def.name());
        let t: Table<'_, K, V> = self.txn.open_table(def)?;
        Ok(t)
    }
}

impl<'a> WriteCtx<'a> {
    /// Opens a table for writing, noting that this job has written.
    fn open_mut<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<Table<'a, K, V>> {
        self.writes += 1;
        self.hot.evict(def.name());
        Ok(self.txn.open_table(def)?)
    }

    /// How many non-terminal sessions `org_id` has (`Reads::org_active_sessions`, through the
    /// batch's open table).
    pub fn active_sessions_of(&mut self, org_id: &str) -> StoreResult<u64> {
        Ok(self
            .hot_org_active()?
            .get(org_id)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Tells the batch that the current job creates session `session`: it has no events yet,
    /// so its first one needs no look-up, and until the job ends a copy of every event appended
    /// for it is kept. The job builds the new session's view from them (`followed_events`)
    /// instead of reading them back.
    pub fn begin_session_events(&mut self, session: Uuid) {
        self.event_seqs.insert(session.as_u128(), 0);
        self.followed = Some((session, Vec::new()));
    }

    /// The events appended for the new session since `begin_session_events`, oldest first.
    pub fn followed_events(&mut self) -> Vec<SessionEvent> {
        self.followed.take().map(|(_, e)| e).unwrap_or_default()
    }

    /// Publishes `event` once this transaction is durable (and never if the job fails).
    pub fn emit(&mut self, event: BusEvent) {
        self.events.push(event);
    }

    pub fn put_token(&mut self, token: &TokenRecord) -> StoreResult<()> {
        let bytes = encode(token)?;
        self.open_mut(TOKENS)?
            .insert(token.id.as_u128(), bytes.as_slice())?;
        let mut hashes = self.open_mut(TOKEN_HASHES)?;
        if token.revoked_at.is_none() {
            hashes.insert(token.hash.as_slice(), token.id.as_u128())?;
        } else {
            hashes.remove(token.hash.as_slice())?;
        }
        Ok(())
    }

    /// Writes a session and keeps its indexes (org listing, active count) in step.
    pub fn put_session(&mut self, session: &Session) -> StoreResult<()> {
        let bytes = encode(session)?;
        self.writes += 1;
        // One lookup for read-old and write-new: this is the hottest write path.
        let old: Option<Session> = {
            let previous = self
                .hot_sessions()?
                .insert(session.id.as_u128(), bytes.as_slice())?;
            previous.map(|v| decode(v.value())).transpose()?
        };
        let was_active = old.as_ref().is_some_and(|s| !s.state.is_terminal());
        let is_active = !session.state.is_terminal();
        if old.is_none() {
            self.hot_sessions_by_org()?.insert(
                (
                    session.org_id.as_str(),
                    session.created_at.max(0) as u64,
                    session.id.as_u128(),
                ),
                (),
            )?;
        }
        if was_active != is_active {
            self.adjust_active(&session.org_id, is_active)?;
        }
        let created = session.created_at.max(0) as u64;
        let id = session.id.as_u128();
        let was_queued = old.as_ref().is_some_and(Session::is_unassigned_queued);
        if was_queued != session.is_unassigned_queued() {
            let queue = self.hot_queue()?;
            if was_queued {
                queue.remove((created, id))?;
            } else {
                queue.insert((created, id), ())?;
            }
        }
        let old_runner = old.as_ref().and_then(Session::occupies_runner);
        let new_runner = session.occupies_runner();
        if old_runner != new_runner {
            if let Some(r) = old_runner {
                self.open_mut(SESSIONS_BY_RUNNER)?
                    .remove((r.as_u128(), id))?;
                self.adjust_runner_load(r, false)?;
            }
            if let Some(r) = new_runner {
                self.open_mut(SESSIONS_BY_RUNNER)?
                    .insert((r.as_u128(), id), ())?;
                self.adjust_runner_load(r, true)?;
            }
        }
        Ok(())
    }

    fn adjust_runner_load(&mut self, runner: Uuid, up: bool) -> StoreResult<()> {
        let mut t = self.open_mut(RUNNER_ACTIVE_SESSIONS)?;
        let key = runner.as_u128();
        let n = t.get(key)?.map(|v| v.value()).unwrap_or(0);
        let n = if up { n + 1 } else { n.saturating_sub(1) };
        if n == 0 {
            t.remove(key)?;
        } else {
            t.insert(key, n)?;
        }
        Ok(())
    }

    fn adjust_active(&mut self, org_id: &str, up: bool) -> StoreResult<()> {
        self.writes += 1;
        let t = self.hot_org_active()?;
        let n = t.get(org_id)?.map(|v| v.value()).unwrap_or(0);
        let n = if up { n + 1 } else { n.saturating_sub(1) };
        if n == 0 {
            t.remove(org_id)?;
        } else {
            t.insert(org_id, n)?;
        }
        Ok(())
    }

    /// Removes a session with its events, output, approvals and timers.
    pub fn delete_session(&mut self, session: &Session) -> StoreResult<()> {
        let id = session.id.as_u128();
        self.writes += 1;
        self.hot_sessions()?.remove(id)?;
        self.hot_sessions_by_org()?.remove((
            session.org_id.as_str(),
            session.created_at.max(0) as u64,
            id,
        ))?;
        if !session.state.is_terminal() {
            self.adjust_active(&session.org_id, false)?;
        }
        if session.is_unassigned_queued() {
            self.hot_queue()?
                .remove((session.created_at.max(0) as u64, id))?;
        }
        if let Some(r) = session.occupies_runner() {
            self.open_mut(SESSIONS_BY_RUNNER)?
                .remove((r.as_u128(), id))?;
            self.adjust_runner_load(r, false)?;
        }
        self.hot_events()?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        self.event_seqs.remove(&id);
        self.open_mut(SESSION_OUTPUT)?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        self.open_mut(APPROVALS)?
            .retain_in((id, 0u128)..=(id, u128::MAX), |_, _| false)?;
        // A finished session's only timer left is its purge timer, which the sweep clears;
        // scanning the whole timer table here would stall every writer.
        Ok(())
    }

    /// Appends an event with the next sequence number.
    pub fn append_event(
        &mut self,
        session: Uuid,
        kind: &str,
        summary: String,
        at: Millis,
        data: Option<&serde_json::Value>,
    ) -> StoreResult<SessionEvent> {
        self.writes += 1;
        let id = session.as_u128();
        let last = match self.event_seqs.get(&id) {
            Some(&seq) => seq,
            None => last_seq(self.hot_events()?, session)?,
        };
        let event = SessionEvent {
            seq: last + 1,
            kind: kind.to_owned(),
            summary,
            at,
            data_json: data.and_then(|d| serde_json::to_string(d).ok()),
        };
        let bytes = encode(&event)?;
        self.hot_events()?
            .insert((id, event.seq), bytes.as_slice())?;
        self.event_seqs.insert(id, event.seq);
        if let Some((followed, events)) = &mut self.followed
            && *followed == session
        {
            events.push(event.clone());
        }
        Ok(event)
    }

    /// Appends an output chunk; its `seq` must be the next one (the caller read it).
    pub fn put_output(&mut self, session: Uuid, chunk: &OutputChunk) -> StoreResult<()> {
        let bytes = encode(chunk)?;
        self.open_mut(SESSION_OUTPUT)?
            .insert((session.as_u128(), chunk.seq), bytes.as_slice())?;
        Ok(())
    }

    pub fn put_webhook(&mut self, hook: &Webhook) -> StoreResult<()> {
        let bytes = encode(hook)?;
        self.open_mut(WEBHOOKS)?
            .insert(hook.id.as_u128(), bytes.as_slice())?;
        Ok(())
    }

    /// Removes a webhook, its delivery log and its pending deliveries.
    pub fn delete_webhook(&mut self, id: Uuid) -> StoreResult<()> {
        let w = id.as_u128();
        self.open_mut(WEBHOOKS)?.remove(w)?;
        self.open_mut(WEBHOOK_DELIVERIES)?
            .retain_in((w, 0u128)..=(w, u128::MAX), |_, _| false)?;
        self.open_mut(DELIVERY_QUEUE)?
            .retain(|(_, hook, _), _| hook != w)?;
        Ok(())
    }

    /// Writes a delivery and keeps the due-queue in step. `previous_due` is the due time its
    /// queue entry was stored under, if it had one. A new delivery trims the webhook's log.
    pub fn put_delivery(&mut self, d: &Delivery, previous_due: Option<Millis>) -> StoreResult<()> {
        let (w, id) = (d.webhook_id.as_u128(), d.id.as_u128());
        let bytes = encode(d)?;
        self.open_mut(WEBHOOK_DELIVERIES)?
            .insert((w, id), bytes.as_slice())?;
        let mut queue = self.open_mut(DELIVERY_QUEUE)?;
        if let Some(due) = previous_due {
            queue.remove((due.max(0) as u64, w, id))?;
        }
        if d.status == DeliveryStatus::Pending {
            queue.insert((d.next_attempt_at.max(0) as u64, w, id), ())?;
        }
        drop(queue);
        if previous_due.is_none() {
            self.trim_deliveries(d.webhook_id)?;
        }
        Ok(())
    }

    /// Removes one delivery and its queue entry, whatever its due time.
    pub fn forget_delivery(&mut self, webhook: Uuid, id: Uuid) -> StoreResult<()> {
        let (w, d) = (webhook.as_u128(), id.as_u128());
        self.open_mut(WEBHOOK_DELIVERIES)?.remove((w, d))?;
        self.open_mut(DELIVERY_QUEUE)?
            .retain(|(_, hook, delivery), _| hook != w || delivery != d)?;
        Ok(())
    }

    /// Keeps a webhook's finished deliveries to twice the log size (pending ones always stay).
    fn trim_deliveries(&mut self, webhook: Uuid) -> StoreResult<()> {
        let keep = crate::webhooks::LOG_SIZE * 2;
        let w = webhook.as_u128();
        let mut t = self.open_mut(WEBHOOK_DELIVERIES)?;
        let total = t.range((w, 0u128)..=(w, u128::MAX))?.count();
        if total <= keep {
            return Ok(());
        }
        let mut doomed = Vec::new();
        for entry in t.range((w, 0u128)..=(w, u128::MAX))?.take(total - keep) {
            let (k, v) = entry?;
            let d: Delivery = decode(v.value())?;
            if d.status != DeliveryStatus::Pending {
                doomed.push(k.value());
            }
        }
        for k in doomed {
            t.remove(k)?;
        }
        Ok(())
    }

    /// Appends an audit entry with the next sequence number.
    pub fn append_audit(&mut self, mut entry: AuditEntry) -> StoreResult<u64> {
        self.writes += 1;
        let last = match self.audit_seq {
            Some(seq) => seq,
            None => self
                .hot_audit()?
                .last()?
                .map(|(k, _)| k.value())
                .unwrap_or(0),
        };
        entry.seq = last + 1;
        let bytes = encode(&entry)?;
        self.hot_audit()?.insert(entry.seq, bytes.as_slice())?;
        self.audit_seq = Some(entry.seq);
        Ok(entry.seq)
    }

    pub fn put_approval(&mut self, approval: &Approval) -> StoreResult<()> {
        let bytes = encode(approval)?;
        self.open_mut(APPROVALS)?.insert(
            (approval.session_id.as_u128(), approval.id.as_u128()),
            bytes.as_slice(),
        )?;
        Ok(())
    }

    /// Writes a runner and its hostname index.
    pub fn put_runner(&mut self, runner: &mut RunnerRecord) -> StoreResult<()> {
        runner.revision = self.get_runner(runner.id)?.map_or(0, |r| r.revision) + 1;
        let bytes = encode(&*runner)?;
        self.open_mut(RUNNERS)?
            .insert(runner.id.as_u128(), bytes.as_slice())?;
        self.open_mut(RUNNERS_BY_HOSTNAME)?
            .insert(runner.hostname.as_str(), runner.id.as_u128())?;
        Ok(())
    }

    /// Removes a runner with its liveness and outbox.
    pub fn delete_runner(&mut self, runner: &RunnerRecord) -> StoreResult<()> {
        let id = runner.id.as_u128();
        self.open_mut(RUNNERS)?.remove(id)?;
        self.open_mut(RUNNERS_BY_HOSTNAME)?
            .remove(runner.hostname.as_str())?;
        self.open_mut(RUNNER_LIVENESS)?.remove(id)?;
        self.open_mut(RUNNER_OUTBOX)?
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        Ok(())
    }

    pub fn put_liveness(&mut self, runner: Uuid, live: &Liveness) -> StoreResult<()> {
        let bytes = encode(live)?;
        self.open_mut(RUNNER_LIVENESS)?
            .insert(runner.as_u128(), bytes.as_slice())?;
        Ok(())
    }

    /// Puts a command in a runner's outbox and tells the live channel, once committed.
    pub fn enqueue_command(
        &mut self,
        runner_id: Uuid,
        command: RunnerCommand,
        now: Millis,
    ) -> StoreResult<OutboxEntry> {
        // The id only has to be unique; nothing depends on its value.
        let message_id = crate::clock::random_uuid();
        let mut meta = self.open_mut(META)?;
        let seq = meta
            .get("next_command_seq")?
            .map(|v| v.value())
            .unwrap_or(1);
        meta.insert("next_command_seq", seq + 1)?;
        drop(meta);
        let entry = OutboxEntry {
            seq,
            message_id,
            runner_id,
            command,
            created_at: now,
        };
        let bytes = encode(&entry)?;
        self.open_mut(RUNNER_OUTBOX)?
            .insert((runner_id.as_u128(), seq), bytes.as_slice())?;
        self.commands.push(entry.clone());
        Ok(entry)
    }

    /// Drops outbox entries of a runner that `remove` picks. Returns how many.
    pub fn remove_commands(
        &mut self,
        runner_id: Uuid,
        mut remove: impl FnMut(&OutboxEntry) -> bool,
    ) -> StoreResult<usize> {
        let doomed: Vec<u64> = self
            .outbox(runner_id)?
            .into_iter()
            .filter(|e| remove(e))
            .map(|e| e.seq)
            .collect();
        let mut t = self.open_mut(RUNNER_OUTBOX)?;
        for seq in &doomed {
            t.remove((runner_id.as_u128(), *seq))?;
        }
        Ok(doomed.len())
    }

    pub fn set_timer(&mut self, timer: Timer) -> StoreResult<()> {
        self.open_mut(TIMERS)?.insert(timer_key(&timer), ())?;
        Ok(())
    }

    pub fn clear_timer(&mut self, timer: Timer) -> StoreResult<()> {
        self.open_mut(TIMERS)?.remove(timer_key(&timer))?;
        Ok(())
    }
}

fn timer_key(t: &Timer) -> (u64, u8, u128, u128) {
    (
        t.due.max(0) as u64,
        t.kind as u8,
        t.session_id.as_u128(),
        t.other_id.as_u128(),
    )
}
