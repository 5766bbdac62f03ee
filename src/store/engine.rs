//! The redb engine: the writer thread with group commit, read snapshots, and the transaction
//! contexts that the per-area storage traits are implemented on.
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
//! runtime task that hands its runner commands to their channels, wakes its callers and
//! publishes its events (in commit order) while the writer starts on the next batch.
//!
//! Reads run on the blocking pool, each in its own read transaction (a consistent snapshot).
//! No redb call ever runs on the async reactor.
//!
//! Failures: after a failed commit (a full disk, an I/O error) redb refuses every later call
//! until the database is opened again. The writer then reopens it (waiting for reads in flight
//! to let go of the old handle) and retries the reopen every second until it works; callers
//! meanwhile get `Unavailable` (503) and the store reports itself failing (`/readyz`) until a
//! commit succeeds again. Nothing acknowledged is lost: a caller hears `Ok` only after its
//! batch's commit returned. A writer thread that panics outside a job is restarted in place.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter};
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableHandle, Value, WriteTransaction,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::codec::{self, decode};
use super::migrations;
use super::tables::*;
use super::{ReadTxn, WriteTxn};
use crate::clock::Millis;
use crate::events::model::BusEvent;
use crate::runners::model::OutboxEntry;
use crate::sessions::model::SessionEvent;

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
    #[error("storage unavailable: {0}")]
    Unavailable(String),
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
            StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
            StoreError::Db(e) => StoreError::Unavailable(format!("write failed: {e}")),
        }
    }

    /// A failure of the storage itself (I/O, a full disk, the database being reopened), as
    /// opposed to a bug or bad data: the client may retry later (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Db(_) | StoreError::Unavailable(_) | StoreError::Closed
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where a committed batch's effects go: runner commands to the runners' live channels, events
/// to their subscribers. Called in commit order, only for durable batches.
pub trait Publisher: Send + Sync + 'static {
    fn publish_command(&self, command: OutboxEntry);
    fn publish(&self, event: BusEvent);
}

/// Work to run once a transaction is durable.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// What a write job does besides writing: events published once its transaction is durable.
pub trait Effects {
    /// Publishes `event` once this transaction is durable (and never if the job fails).
    fn emit(&mut self, event: BusEvent);

    /// Runs `update` once this transaction is durable, before anyone hears of it (the callers,
    /// the runners' channels, subscribers of its events), and never if the job fails: the place
    /// for in-memory state that mirrors what was written, so that it changes with the commit
    /// whether or not the caller is still waiting.
    fn after_commit(&mut self, update: AfterCommit);
}

type Finish = Box<dyn FnOnce(StoreResult<()>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Finish + Send>;

/// What a placement step reports when it fails (it is logged; the batch's other writes stand
/// unless the step failed after writing).
pub type PlacementError = Box<dyn std::error::Error + Send + Sync>;

/// The placement step (`Store::set_placement`): runs at the end of a batch in which a session
/// entered the queue, in the batch's transaction, so a session that a runner can take at once
/// is assigned in the same commit that queued it.
pub type PlacementStep = Box<dyn FnMut(&mut dyn WriteTxn) -> Result<(), PlacementError> + Send>;

/// What the writer thread receives: a job, the placement step, or the request to close the
/// database (after the jobs sent before it), answered once the file is closed.
enum Msg {
    Job(Job),
    Placement(PlacementStep),
    Close(mpsc::Sender<()>),
}

/// Counters of the writer, for benchmarks and `/metrics` (the `prometheus` types are the series
/// it reports; the plain atomics are the benchmarks' finer split of the writer's time).
pub struct WriterStats {
    /// Batches ended (committed, or failed: `commit_failures` counts those).
    pub commits: IntCounter,
    pub jobs: IntCounter,
    pub commit_failures: IntCounter,
    /// Seconds in `commit()` (page writes + fsync), per batch.
    pub commit_seconds: Histogram,
    /// Jobs per batch (group commit: several writes share one fsync).
    pub batch_jobs: Histogram,
    /// Time spent running jobs, and in `commit()`, in microseconds.
    pub job_micros: AtomicU64,
    pub commit_micros: AtomicU64,
    /// Time batches spent waiting for more jobs (`LINGER`), in microseconds.
    pub linger_micros: AtomicU64,
    /// The longest time a batch spent running its jobs, and in `commit()`, since these were
    /// last reset to 0, in microseconds.
    pub slowest_jobs_micros: AtomicU64,
    pub slowest_commit_micros: AtomicU64,
    /// Times the writer thread panicked outside a job and was restarted.
    pub writer_restarts: IntCounter,
}

impl Default for WriterStats {
    fn default() -> Self {
        // The definitions are constants: they cannot fail.
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| unreachable!("{name}: {e}"))
        };
        Self {
            commits: counter(
                "village_store_commits_total",
                "Write batches ended (each one durable commit, or a failure).",
            ),
            jobs: counter(
                "village_store_write_jobs_total",
                "Write jobs applied (several share a commit).",
            ),
            commit_failures: counter(
                "village_store_commit_failures_total",
                "Write batches that failed (storage errors, panicking or abandoned jobs).",
            ),
            commit_seconds: histogram(
                "village_store_commit_duration_seconds",
                "Time in one batch's durable commit (page writes and fsync).",
                vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                ],
            ),
            batch_jobs: histogram(
                "village_store_commit_batch_jobs",
                "Write jobs per committed batch.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            job_micros: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            linger_micros: AtomicU64::new(0),
            slowest_jobs_micros: AtomicU64::new(0),
            slowest_commit_micros: AtomicU64::new(0),
            writer_restarts: counter(
                "village_store_writer_restarts_total",
                "Store writer panics outside a job, each restarted.",
            ),
        }
    }
}

impl WriterStats {
    /// The series `/metrics` registers.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.commits.clone()),
            Box::new(self.jobs.clone()),
            Box::new(self.commit_failures.clone()),
            Box::new(self.commit_seconds.clone()),
            Box::new(self.batch_jobs.clone()),
            Box::new(self.writer_restarts.clone()),
        ]
    }

    /// Adds one batch's time running its jobs and in `commit()`.
    fn batch_timed(&self, jobs: std::time::Duration, commit: std::time::Duration) {
        self.commit_seconds.observe(commit.as_secs_f64());
        let (jobs, commit) = (jobs.as_micros() as u64, commit.as_micros() as u64);
        self.job_micros.fetch_add(jobs, Ordering::Relaxed);
        self.commit_micros.fetch_add(commit, Ordering::Relaxed);
        self.slowest_jobs_micros.fetch_max(jobs, Ordering::Relaxed);
        self.slowest_commit_micros
            .fetch_max(commit, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DbSlot>,
    jobs: mpsc::Sender<Msg>,
    pub stats: Arc<WriterStats>,
}

/// The open database, shared by readers and the writer; empty while the writer reopens it.
struct DbSlot {
    current: std::sync::Mutex<Option<Arc<Database>>>,
    /// Signalled when a reopened database is put in.
    reopened: std::sync::Condvar,
    /// A commit failed and none has succeeded since.
    failing: std::sync::atomic::AtomicBool,
}

/// How long a read waits for a reopen in progress (a few milliseconds, unless it fails).
const READ_WAITS_FOR_REOPEN: std::time::Duration = std::time::Duration::from_secs(2);

impl DbSlot {
    fn new(db: Arc<Database>) -> Self {
        Self {
            current: std::sync::Mutex::new(Some(db)),
            reopened: std::sync::Condvar::new(),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The open database; while it is being reopened, waits a moment for it (blocking: only
    /// called on the blocking pool and the writer thread).
    fn get(&self) -> StoreResult<Arc<Database>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let (current, _) = self
            .reopened
            .wait_timeout_while(current, READ_WAITS_FOR_REOPEN, |db| db.is_none())
            .unwrap_or_else(|p| p.into_inner());
        current
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is being reopened".into()))
    }

    /// The open database, or None while it is being reopened (without waiting).
    fn now(&self) -> Option<Arc<Database>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_open(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn set(&self, db: Option<Arc<Database>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = db;
        self.reopened.notify_all();
    }
}

/// Opens (or creates) the database file with a page cache of `cache_bytes` and brings its
/// schema up to date.
fn open_database(path: &Path, cache_bytes: usize) -> StoreResult<Database> {
    let db = redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)?;
    migrations::migrate(&db)?;
    Ok(db)
}

/// What the writer thread owns, kept across a restart of its loop.
struct Writer {
    path: std::path::PathBuf,
    cache_bytes: usize,
    slot: Arc<DbSlot>,
    /// The writer's own handle; `None` after a reopen failed (retried every second).
    db: Option<Arc<Database>>,
    rx: mpsc::Receiver<Msg>,
    bus: Arc<dyn Publisher>,
    deliverer: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
    stats: Arc<WriterStats>,
    /// Run after the jobs of a batch that queued a session (`Store::set_placement`).
    placement: Option<PlacementStep>,
    /// Every runner's active-session count as last committed (`WriteCtx::loads`); `None`
    /// until a batch reads it, and again after a batch that did not commit.
    loads: Option<RunnerLoads>,
}

/// Active sessions per runner (runners with none are absent), as `RUNNER_ACTIVE_SESSIONS`.
pub(super) type RunnerLoads = HashMap<Uuid, u64>;

/// How long a reopen waits for reads in flight to drop the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a failed reopen is tried again.
const REOPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
static PANIC_OUTSIDE_JOB: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Writer {
    /// Runs the writer loop; restarts it when it panics outside a job (the batch in hand is
    /// lost unacknowledged: its callers hear `Closed`, 503). Returns once every sender is gone.
    fn run(mut self) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve())) {
                Ok(()) => return,
                Err(_) => {
                    self.stats.writer_restarts.inc();
                    tracing::error!("the store writer panicked outside a job; restarting it");
                }
            }
        }
    }

    /// Closes the database file cleanly (its next open needs no repair): no read gets the
    /// handle any more, and the writer's is dropped once reads in flight let go of it.
    fn close(&mut self) {
        // The step may hold services that hold this store's sender: let them go.
        self.placement = None;
        self.slot.set(None);
        if !self.release_handle() {
            tracing::warn!("reads still hold the database; it is left to the process's exit");
        }
    }

    /// Drops the writer's handle once nothing else holds it (waiting up to `REOPEN_WAIT`);
    /// false when a read still had it then (the handle is kept).
    fn release_handle(&mut self) -> bool {
        let Some(mut old) = self.db.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    return true;
                }
                Err(shared) if std::time::Instant::now() < deadline => {
                    old = shared;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(shared) => {
                    self.db = Some(shared);
                    return false;
                }
            }
        }
    }

    /// Drops the failed handle, waits for readers to let go of it, and opens the file again.
    fn reopen(&mut self) {
        self.loads = None;
        self.slot.set(None);
        if let Some(mut old) = self.db.take() {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if std::time::Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(shared) => {
                        // A read is stuck on it; try again at the next retry.
                        tracing::warn!("reads still hold the failed database; reopening later");
                        self.db = Some(shared);
                        return;
                    }
                }
            }
        }
        match open_database(&self.path, self.cache_bytes) {
            Ok(db) => {
                tracing::warn!("the database was reopened after a storage failure");
                let db = Arc::new(db);
                self.slot.set(Some(db.clone()));
                self.db = Some(db);
            }
            Err(e) => tracing::error!(error = %e, "reopening the database failed; retrying in 1 s"),
        }
    }

    fn serve(&mut self) {
        let mut last_batch = 0;
        loop {
            // Without a usable database, retry the reopen every second (reads need it too).
            let first = if self.db.is_none() || !self.slot.is_open() {
                self.reopen();
                match self.rx.recv_timeout(REOPEN_RETRY) {
                    Ok(msg) => msg,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match self.rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => return,
                }
            };
            let first = match first {
                Msg::Job(job) => job,
                Msg::Placement(step) => {
                    self.placement = Some(step);
                    continue;
                }
                Msg::Close(done) => {
                    self.close();
                    let _ = done.send(());
                    return;
                }
            };
            #[cfg(test)]
            if PANIC_OUTSIDE_JOB.swap(false, Ordering::SeqCst) {
                panic!("writer panic injected by a test");
            }
            let mut batch = vec![first];
            // A close asked for behind some of this batch's jobs: done after the batch.
            let mut close_after = None;
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(Msg::Job(job)) => batch.push(job),
                    Ok(Msg::Placement(step)) => self.placement = Some(step),
                    Ok(Msg::Close(done)) => {
                        close_after = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Under concurrency, linger a moment for more writers: one more job in this batch
            // costs far less than a commit of its own (commit_delay, as databases call it).
            // A lone writer never waits, and neither does a batch that is already as large as
            // the last one: when writers queue up behind the commits anyway, waiting only adds
            // a pause to every cycle.
            if close_after.is_none() && batch.len() >= LINGER_MIN_BATCH && batch.len() < last_batch
            {
                let lingered = std::time::Instant::now();
                let deadline = lingered + LINGER;
                while batch.len() < last_batch.min(MAX_BATCH) {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match self.rx.recv_timeout(left) {
                        Ok(Msg::Job(job)) => batch.push(job),
                        Ok(Msg::Placement(step)) => self.placement = Some(step),
                        Ok(Msg::Close(done)) => {
                            close_after = Some(done);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.stats
                    .linger_micros
                    .fetch_add(lingered.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            last_batch = batch.len();
            let count = batch.len() as u64;
            let (finishes, result, committed) = match &self.db {
                Some(db) => run_batch(
                    db,
                    batch,
                    self.placement.as_mut(),
                    &mut self.loads,
                    &self.stats,
                ),
                None => (
                    Vec::new(),
                    Err(StoreError::Unavailable(
                        "the database could not be reopened".into(),
                    )),
                    Committed::default(),
                ),
            };
            let storage_failed = matches!(&result, Err(StoreError::Db(_)));
            match &result {
                Ok(()) => self.slot.failing.store(false, Ordering::Relaxed),
                Err(e) if e.is_unavailable() => self.slot.failing.store(true, Ordering::Relaxed),
                Err(_) => {}
            }
            self.stats.commits.inc();
            self.stats.jobs.inc_by(count);
            if result.is_ok() {
                self.stats.batch_jobs.observe(count as f64);
            } else {
                self.stats.commit_failures.inc();
            }
            let outcome = Outcome {
                finishes,
                result,
                committed,
                jobs: count,
            };
            // A failed commit leaves the handle refusing every call: take it out of reads'
            // reach before the callers hear of the failure, so a read they make next waits for
            // the reopen instead of meeting the dead handle.
            if storage_failed {
                self.slot.set(None);
            }
            // Batches are handed over in commit order and delivered one after another, so
            // events still reach the bus in commit order.
            match &self.deliverer {
                Some(tx) => {
                    if let Err(returned) = tx.send(outcome) {
                        // The runtime is gone: tell whoever is left from here.
                        returned.0.deliver(&*self.bus);
                    }
                }
                None => outcome.deliver(&*self.bus),
            }
            if let Some(done) = close_after {
                self.close();
                let _ = done.send(());
                return;
            }
            if storage_failed {
                self.reopen();
            }
        }
    }
}

const MAX_BATCH: usize = 4096;
/// Batches at least this large, but smaller than the one before, wait up to `LINGER` for more
/// jobs before committing.
const LINGER_MIN_BATCH: usize = 4;
const LINGER: std::time::Duration = std::time::Duration::from_micros(150);

/// The database's page cache unless configured: redb's own default (1 GiB) would grow the
/// server's memory with the file for as long as it runs, on a host that runs other things.
/// The hot paths touch few pages (table roots, the newest sessions and output), and redb holds
/// somewhat more page memory than its cache budget, so the default stays small (BENCHMARKS.md,
/// "A day on a big fleet").
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the database file, migrates it and starts the writer thread, with
    /// the default page cache (`DEFAULT_CACHE_BYTES`).
    pub fn open(path: &Path, publisher: impl Publisher) -> StoreResult<Store> {
        Self::open_with_cache(path, publisher, DEFAULT_CACHE_BYTES)
    }

    /// `open`, with a page cache of at most `cache_bytes` (`server.storeCacheMb`).
    pub fn open_with_cache(
        path: &Path,
        publisher: impl Publisher,
        cache_bytes: usize,
    ) -> StoreResult<Store> {
        let bus: Arc<dyn Publisher> = Arc::new(publisher);
        let db = Arc::new(open_database(path, cache_bytes)?);
        let slot = Arc::new(DbSlot::new(db.clone()));
        let (jobs, rx) = mpsc::channel::<Msg>();
        let stats = Arc::new(WriterStats::default());
        // Inside a runtime, a task tells each batch's callers and the bus, so the writer goes
        // on to the next batch after one hand-over instead of waking every caller itself.
        let deliverer = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
            let bus = bus.clone();
            runtime.spawn(async move {
                while let Some(outcome) = rx.recv().await {
                    outcome.deliver(&*bus);
                }
            });
            tx
        });
        let writer = Writer {
            path: path.to_path_buf(),
            cache_bytes,
            slot: slot.clone(),
            db: Some(db),
            rx,
            bus,
            deliverer,
            stats: stats.clone(),
            placement: None,
            loads: None,
        };
        std::thread::Builder::new()
            .name("village-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Db(Box::new(e.into())))?;
        Ok(Store {
            db: slot,
            jobs,
            stats,
        })
    }

    /// Sets the step that runs at the end of every batch in which a session entered the queue,
    /// inside that batch's transaction (see `PlacementStep`). It is dropped when the store
    /// closes.
    pub fn set_placement(&self, step: PlacementStep) {
        let _ = self.jobs.send(Msg::Placement(step));
    }

    /// Closes the database file once the writes sent before this call are done, so that the
    /// next open finds a cleanly closed file (an unclean one is repaired at open, which takes
    /// time with the file's size). Later writes answer `Closed`, reads `Unavailable`.
    pub async fn close(&self) {
        let (done, closed) = mpsc::channel();
        if self.jobs.send(Msg::Close(done)).is_err() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            closed.recv_timeout(REOPEN_WAIT + std::time::Duration::from_secs(5))
        })
        .await;
    }

    /// A commit failed and none has succeeded since (`/readyz` fails meanwhile).
    pub fn is_failing(&self) -> bool {
        self.db.failing.load(Ordering::Relaxed)
    }

    /// Runs `f` in a write transaction, committed durably before this returns `Ok`.
    /// `f` must check everything before it writes anything: an `Err` from it is passed to the
    /// caller and the batch goes on without its writes.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut dyn WriteTxn) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_in(move |ctx: &mut WriteCtx<'_>| f(ctx)).await
    }

    /// `write` on the engine's own transaction type (for the engine's housekeeping).
    async fn write_in<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<R, E>>();
        let job: Job = Box::new(move |ctx: &mut WriteCtx<'_>| {
            let outcome = ctx.guarded(f);
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
            .send(Msg::Job(job))
            .map_err(|_| E::from(StoreError::Closed))?;
        // A job dropped unanswered was never committed: its batch could not start, or the
        // writer failed under it.
        rx.await.map_err(|_| {
            E::from(StoreError::Unavailable(
                "the write could not be carried out".into(),
            ))
        })?
    }

    /// Runs `f` on a read snapshot, on the blocking pool.
    pub async fn read<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&dyn ReadTxn) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.get()?.begin_read().map_err(StoreError::from)?;
            f(&ReadCtx { txn })
        })
        .await
        .map_err(|_| E::from(StoreError::Panicked))?
    }

    /// `read` on the calling thread, for a read of a few records that were just committed (so
    /// in redb's cache or the page cache, not waiting for the disk). On a saturated runtime the
    /// hop to the blocking pool and back queues the caller behind every other task twice (the
    /// pool's thread, then the runtime's queue for tasks woken from outside it), which costs far
    /// more than such a read: an `assign_session` waited 20–40 ms on it in bursts on a slow
    /// machine (BENCHMARKS.md, "Hot paths, sixth pass").
    /// `None` while the database is being reopened: this does not wait for it, the caller uses
    /// `read`, which does.
    pub fn read_here<R, E, F>(&self, f: F) -> Option<Result<R, E>>
    where
        F: FnOnce(&dyn ReadTxn) -> Result<R, E>,
        E: From<StoreError>,
    {
        let db = self.db.now()?;
        Some(match db.begin_read() {
            Ok(txn) => f(&ReadCtx { txn }),
            Err(e) => Err(E::from(StoreError::from(e))),
        })
    }

    /// Writes a backup of the database to the new file `out`: every table as of one read
    /// snapshot, taken when this is called, while writes go on (`backup`).
    pub async fn backup_to(&self, out: std::path::PathBuf) -> StoreResult<super::BackupSummary> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.get()?.begin_read()?;
            super::backup::copy_snapshot(&txn, &out)
        })
        .await
        .map_err(|_| StoreError::Panicked)?
    }

    /// `/readyz`: the database answers a read and takes a durable write.
    pub async fn check_ready(&self, now: Millis) -> StoreResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.get()?.begin_read()?;
            ReadCtx { txn }.table(META).map(|_| ())
        })
        .await
        .map_err(|_| StoreError::Panicked)??;
        self.write_in(move |w| {
            let mut meta = w.open_mut(META)?;
            meta.insert("last_ready_check_ms", now.max(0) as u64)?;
            Ok::<_, StoreError>(())
        })
        .await
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
    fn deliver(self, bus: &dyn Publisher) {
        let Outcome {
            finishes,
            result,
            committed,
            jobs,
        } = self;
        // Memory first (it mirrors what was committed), then the runners' commands, then the
        // callers, then the bus. A command goes out to an idle runner's socket right here (or
        // its channel task is woken) before the callers' request tasks are, so under a burst
        // of creates an assignment does not queue behind the answers of a whole batch
        // (BENCHMARKS.md, "bursts").
        if result.is_ok() {
            for update in committed.after_commit {
                // A panicking update must not take the callers' answers (or, in the delivery
                // task, every later batch's) down with it.
                if catch_unwind(AssertUnwindSafe(update)).is_err() {
                    tracing::error!("an after-commit update panicked");
                }
            }
            for command in committed.commands {
                bus.publish_command(command);
            }
        }
        for finish in finishes {
            finish(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            });
        }
        match &result {
            Ok(()) => {
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
    placement: Option<&mut PlacementStep>,
    loads: &mut Option<RunnerLoads>,
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
        after_commit: Vec::new(),
        event_seqs: HashMap::new(),
        audit_seq: None,
        followed: None,
        writes: 0,
        poisoned: false,
        queued: false,
        loads: loads.take(),
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
    if let Some(step) = placement
        && ctx.queued
        && !panicked
        && !ctx.poisoned
    {
        let placed = catch_unwind(AssertUnwindSafe(|| {
            ctx.guarded(|w: &mut WriteCtx<'_>| step(w))
        }));
        match placed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "placing queued sessions in the batch failed")
            }
            Err(_) => {
                tracing::error!("the placement step panicked; its batch is abandoned");
                panicked = true;
            }
        }
    }
    let committed = Committed {
        events: std::mem::take(&mut ctx.events),
        commands: std::mem::take(&mut ctx.commands),
        after_commit: std::mem::take(&mut ctx.after_commit),
    };
    let poisoned = ctx.poisoned;
    let batch_loads = ctx.loads.take();
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
    stats.batch_timed(jobs_done - started, jobs_done.elapsed());
    match outcome {
        Ok(()) => {
            // Only a committed batch's counts stand; after any other the next batch that needs
            // them reads the table again.
            *loads = batch_loads;
            (finishes, Ok(()), committed)
        }
        Err(e) => (finishes, Err(e.into()), Committed::default()),
    }
}

/// What a batch makes known once it is durable.
#[derive(Default)]
struct Committed {
    events: Vec<BusEvent>,
    commands: Vec<OutboxEntry>,
    after_commit: Vec<AfterCommit>,
}

/// The engine's generic way into a table, for the per-area storage code. Only `store/` sees it:
/// the domain reaches storage through the area traits.
pub(super) trait Tables {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<impl ReadableTable<K, V> + '_>;
}

pub(super) fn seq_range<T: codec::Record>(
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

pub(super) fn last_seq(
    t: &impl ReadableTable<(u128, u64), &'static [u8]>,
    session: Uuid,
) -> StoreResult<u64> {
    let id = session.as_u128();
    let last = t.range((id, 0u64)..=(id, u64::MAX))?.next_back();
    match last {
        Some(entry) => Ok(entry?.0.value().1),
        None => Ok(0),
    }
}

/// The session's record with the highest seq at or before `seq`.
pub(super) fn output_at_or_before<T: codec::Record>(
    t: &impl ReadableTable<(u128, u64), &'static [u8]>,
    session: Uuid,
    seq: u64,
) -> StoreResult<Option<T>> {
    let id = session.as_u128();
    match t.range((id, 0u64)..=(id, seq))?.next_back() {
        Some(entry) => Ok(Some(decode(entry?.1.value())?)),
        None => Ok(None),
    }
}

/// A read snapshot.
pub struct ReadCtx {
    txn: ReadTransaction,
}

impl Tables for ReadCtx {
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
    pub(super) txn: &'a WriteTransaction,
    /// Tables of the hot write paths, opened once per batch (see `hot_tables!`).
    pub(super) hot: HotTables<'a>,
    pub(super) events: Vec<BusEvent>,
    pub(super) commands: Vec<OutboxEntry>,
    pub(super) after_commit: Vec<AfterCommit>,
    /// The last event seq of each session that got an event in this batch, so that a second
    /// event needs no look-up.
    pub(super) event_seqs: HashMap<u128, u64>,
    /// The last audit seq, once this batch has read or written it.
    pub(super) audit_seq: Option<u64>,
    /// A session created by the current job: the events appended for it are kept (see
    /// `begin_session_events`).
    pub(super) followed: Option<(Uuid, Vec<SessionEvent>)>,
    /// Writes made so far in this batch (table opens for writing, hot-table mutations).
    pub(super) writes: u64,
    /// A job failed after writing: the batch must not commit.
    pub(super) poisoned: bool,
    /// A session entered the queue in this batch: the placement step runs after the jobs.
    pub(super) queued: bool,
    /// Every runner's active-session count as this batch stands, once read: kept with the
    /// table by `adjust_runner_load`, and carried from batch to batch by the writer, so that
    /// placing a session does not scan the table (a pass needs every runner's count).
    pub(super) loads: Option<RunnerLoads>,
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
        pub(super) struct HotTables<'a> {
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
                pub(super) fn $field(&mut self) -> StoreResult<&mut Table<'a, $k, $v>> {
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
    // Read by every create (the org's monthly limit), written rarely.
    hot_budgets: ORG_BUDGETS, &'static str, &'static [u8];
    // An assignment, its ack and the runner's first report: a burst of a thousand sessions
    // writes these a few thousand times in a few batches.
    hot_meta: META, &'static str, u64;
    hot_timers: TIMERS, (u64, u8, u128, u128), ();
    hot_outbox: RUNNER_OUTBOX, (u128, u64), &'static [u8];
    hot_outbox_by_message: RUNNER_OUTBOX_BY_MESSAGE, (u128, u128), u64;
    hot_sessions_by_runner: SESSIONS_BY_RUNNER, (u128, u128), ();
    hot_runner_active: RUNNER_ACTIVE_SESSIONS, u128, u64;
}

impl Tables for WriteCtx<'_> {
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
    /// Runs one job (or the placement step) so that a failure takes back what it would have
    /// made known: its events, commands and after-commit updates. Jobs check before they
    /// write; one that failed after writing (a storage error, a bug) may have left half a
    /// change, so the batch is abandoned.
    fn guarded<R, E>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, E>) -> Result<R, E> {
        let marks = (
            self.events.len(),
            self.commands.len(),
            self.writes,
            self.after_commit.len(),
        );
        let outcome = f(self);
        self.followed = None;
        if outcome.is_err() {
            self.events.truncate(marks.0);
            self.commands.truncate(marks.1);
            self.after_commit.truncate(marks.3);
            if self.writes != marks.2 {
                self.poisoned = true;
            }
        }
        outcome
    }

    /// Opens a table for writing, noting that this job has written.
    pub(super) fn open_mut<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> StoreResult<Table<'a, K, V>> {
        self.writes += 1;
        self.hot.evict(def.name());
        Ok(self.txn.open_table(def)?)
    }
}

impl Effects for WriteCtx<'_> {
    fn emit(&mut self, event: BusEvent) {
        self.events.push(event);
    }

    fn after_commit(&mut self, update: AfterCommit) {
        self.after_commit.push(update);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Nowhere;
    impl Publisher for Nowhere {
        fn publish_command(&self, _: OutboxEntry) {}
        fn publish(&self, _: BusEvent) {}
    }

    async fn put(store: &Store, key: &'static str, value: u64) -> StoreResult<()> {
        store
            .write_in(move |w| {
                w.open_mut(META)?.insert(key, value)?;
                Ok::<_, StoreError>(())
            })
            .await
    }

    async fn get(store: &Store, key: &'static str) -> Option<u64> {
        let db = store.db.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = ReadCtx {
                txn: db.get().unwrap().begin_read().unwrap(),
            };
            let t = ctx.table(META).unwrap();
            t.get(key).unwrap().map(|v| v.value())
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_writer_that_panics_outside_a_job_is_restarted_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Nowhere).unwrap();
        put(&store, "before", 1).await.unwrap();
        PANIC_OUTSIDE_JOB.store(true, Ordering::SeqCst);
        let lost = put(&store, "lost", 2).await;
        assert!(
            matches!(&lost, Err(e) if e.is_unavailable()),
            "the write in hand when the writer died: {lost:?}"
        );
        put(&store, "after", 3).await.unwrap();
        assert_eq!(store.stats.writer_restarts.get(), 1);
        assert_eq!(get(&store, "before").await, Some(1));
        assert_eq!(get(&store, "lost").await, None);
        assert_eq!(get(&store, "after").await, Some(3));
    }

    /// `read_here` reads the last commit on the calling thread, and while the database is being
    /// reopened answers `None` at once (its caller then waits in `read`) rather than holding a
    /// runtime thread for up to `READ_WAITS_FOR_REOPEN`.
    #[tokio::test]
    async fn a_read_here_sees_the_last_commit_and_does_not_wait_for_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Nowhere).unwrap();
        let due = |r: &dyn ReadTxn| r.due_timers(Millis::MAX, 10).map(|t| t.len());
        assert_eq!(store.read_here(due).map(Result::unwrap), Some(0));
        let timer = crate::sessions::model::Timer {
            due: 5,
            kind: crate::sessions::model::TimerKind::AssignmentLapse,
            session_id: Uuid::from_u128(1),
            other_id: Uuid::nil(),
        };
        store.write(move |w| w.set_timer(timer)).await.unwrap();
        assert_eq!(store.read_here(due).map(Result::unwrap), Some(1));

        let open = store.db.now();
        store.db.set(None);
        let asked = std::time::Instant::now();
        assert!(store.read_here(due).is_none());
        assert!(asked.elapsed() < READ_WAITS_FOR_REOPEN / 2);
        store.db.set(open);
        assert_eq!(store.read_here(due).map(Result::unwrap), Some(1));
    }

    /// A job that queues a session (here: sets the flag `put_session` sets) makes the placement
    /// step run once after the batch's jobs, in the same transaction; a failing step leaves
    /// the jobs' writes standing, a panicking one abandons the batch; jobs that queue nothing
    /// never run it.
    #[tokio::test]
    async fn the_placement_step_runs_in_the_batch_that_queued_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Nowhere).unwrap();
        let mode = Arc::new(AtomicU64::new(0));
        let step_mode = mode.clone();
        store.set_placement(Box::new(move |w: &mut dyn WriteTxn| {
            match step_mode.load(Ordering::SeqCst) {
                0 => {
                    let placed = w.due_timers(Millis::MAX, 100)?.len() as u128;
                    w.set_timer(crate::sessions::model::Timer {
                        due: 0,
                        kind: crate::sessions::model::TimerKind::AssignmentLapse,
                        session_id: Uuid::from_u128(placed + 1),
                        other_id: Uuid::nil(),
                    })?;
                    Ok(())
                }
                1 => Err("no runner answers".into()),
                _ => panic!("a bug in the placement step"),
            }
        }));
        let queue = |key: &'static str, value: u64, queued: bool| {
            store.write_in(move |w: &mut WriteCtx<'_>| {
                w.open_mut(META)?.insert(key, value)?;
                w.queued |= queued;
                Ok::<_, StoreError>(())
            })
        };
        let placed = || {
            store.read(|r| Ok::<_, StoreError>(Some(r.due_timers(Millis::MAX, 100)?.len() as u64)))
        };
        let commits = store.stats.commits.get();
        queue("a", 1, true).await.unwrap();
        // Answered after the commit that holds both the job's write and the step's.
        assert_eq!(placed().await.unwrap(), Some(1));
        assert_eq!(store.stats.commits.get(), commits + 1);
        queue("b", 2, false).await.unwrap();
        assert_eq!(placed().await.unwrap(), Some(1), "nothing queued");
        mode.store(1, Ordering::SeqCst);
        queue("c", 3, true).await.unwrap();
        assert_eq!(
            get(&store, "c").await,
            Some(3),
            "a failed step keeps the batch"
        );
        mode.store(2, Ordering::SeqCst);
        assert!(queue("d", 4, true).await.is_err());
        assert_eq!(
            get(&store, "d").await,
            None,
            "a panicking step abandons the batch"
        );
        mode.store(0, Ordering::SeqCst);
        queue("e", 5, true).await.unwrap();
        assert_eq!(placed().await.unwrap(), Some(2));
    }

    /// The writer's copy of every runner's active-session count (what a scheduling pass reads
    /// instead of the table) follows the table through committed batches, and a batch that
    /// does not commit leaves no trace in it.
    #[tokio::test]
    async fn the_writers_runner_loads_follow_the_table() {
        use crate::store::runners::RunnerWrites;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Nowhere).unwrap();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // Reads the copy first, so the job's changes must reach it.
        let adjust = |changes: Vec<(Uuid, bool)>, fail: bool| {
            store.write_in(move |w: &mut WriteCtx<'_>| {
                w.active_loads()?;
                for (runner, up) in changes {
                    w.adjust_runner_load(runner, up)?;
                }
                if fail {
                    return Err(StoreError::Unavailable(
                        "the job fails after writing".into(),
                    ));
                }
                Ok(())
            })
        };
        let both = || async {
            let copy = store
                .write_in(|w: &mut WriteCtx<'_>| w.active_loads())
                .await
                .unwrap();
            let table = store.read(|r| r.runner_loads()).await.unwrap();
            assert_eq!(copy, table, "the writer's copy against the table");
            table
        };
        adjust(vec![(a, true), (a, true), (b, true)], false)
            .await
            .unwrap();
        assert_eq!(both().await, HashMap::from([(a, 2), (b, 1)]));
        assert!(adjust(vec![(a, false)], true).await.is_err());
        assert_eq!(
            both().await,
            HashMap::from([(a, 2), (b, 1)]),
            "an abandoned batch"
        );
        adjust(vec![(b, false), (a, false)], false).await.unwrap();
        assert_eq!(both().await, HashMap::from([(a, 1)]));
    }

    /// A committed batch updates memory, then hands its runner commands to their channels,
    /// then answers its callers: under a burst of creates an assignment does not wait behind
    /// the answers of a whole batch.
    #[test]
    fn a_batch_hands_over_its_runner_commands_before_it_answers_its_callers() {
        type Log = Arc<std::sync::Mutex<Vec<&'static str>>>;
        struct Recorder(Log);
        impl Publisher for Recorder {
            fn publish_command(&self, _: OutboxEntry) {
                self.0.lock().unwrap().push("command");
            }
            fn publish(&self, _: BusEvent) {
                self.0.lock().unwrap().push("event");
            }
        }
        let log: Log = Arc::default();
        let entry = OutboxEntry {
            seq: 1,
            message_id: Uuid::from_u128(1),
            runner_id: Uuid::from_u128(2),
            command: crate::runners::model::RunnerCommand::Drain,
            created_at: 0,
        };
        let (memory, answer) = (log.clone(), log.clone());
        let outcome = |result: StoreResult<()>| Outcome {
            finishes: vec![Box::new({
                let answer = answer.clone();
                move |_: StoreResult<()>| answer.lock().unwrap().push("answer")
            })],
            result,
            committed: Committed {
                events: Vec::new(),
                commands: vec![entry.clone()],
                after_commit: vec![Box::new({
                    let memory = memory.clone();
                    move || memory.lock().unwrap().push("memory")
                })],
            },
            jobs: 1,
        };
        outcome(Ok(())).deliver(&Recorder(log.clone()));
        assert_eq!(*log.lock().unwrap(), ["memory", "command", "answer"]);
        log.lock().unwrap().clear();
        outcome(Err(StoreError::Unavailable("disk gone".into()))).deliver(&Recorder(log.clone()));
        assert_eq!(
            *log.lock().unwrap(),
            ["answer"],
            "a failed batch hands nothing over"
        );
    }

    #[tokio::test]
    async fn a_panicking_after_commit_update_does_not_stop_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Nowhere).unwrap();
        let answered = store
            .write_in(|w| {
                w.open_mut(META)?.insert("k", 1u64)?;
                w.after_commit(Box::new(|| panic!("a bug in an after-commit update")));
                Ok::<_, StoreError>(())
            })
            .await;
        assert!(answered.is_ok(), "{answered:?}");
        // The delivery task is alive: later writes are answered.
        put(&store, "k", 2).await.unwrap();
        assert_eq!(get(&store, "k").await, Some(2));
    }
}
