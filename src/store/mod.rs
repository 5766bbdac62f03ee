//! Storage: the only code that touches redb.
//!
//! The domain reaches storage through per-area traits (`SessionReads`/`SessionWrites`,
//! `RunnerReads`/`RunnerWrites`, tokens, webhooks, audit, timers, pipeline, policies, spend), bundled as
//! `ReadTxn` (a consistent snapshot) and `WriteTxn` (a write job's transaction, plus `Effects`
//! for what becomes visible after commit). The traits speak only of records (`*/model.rs`), so a
//! second engine could implement them inside its own transaction without the domain changing.
//! `engine.rs` is the redb engine: one writer thread with group commit, read snapshots on the
//! blocking pool. Each area's file holds its trait and the redb implementation of it.
//! `store/` imports nothing of the crate but records and the clock's types.

pub mod backup;
pub mod codec;
mod engine;
pub mod migrations;
pub mod tables;

mod audit;
mod pipeline;
mod policies;
mod runners;
mod sessions;
mod spend;
mod timers;
mod tokens;
mod webhooks;

pub use audit::{AuditReads, AuditWrites};
pub use backup::BackupSummary;
pub use engine::{
    AfterCommit, DEFAULT_CACHE_BYTES, Effects, PlacementError, PlacementStep, Publisher, ReadCtx,
    Store, StoreError, StoreResult, WriteCtx, WriterStats,
};
pub use pipeline::{PipelineReads, PipelineWrites};
pub use policies::{PolicyReads, PolicyWrites};
pub use runners::{RunnerReads, RunnerWrites};
pub use sessions::{SessionCensus, SessionReads, SessionWrites};
pub use spend::{SpendReads, SpendWrites};
pub use timers::{TimerReads, TimerWrites};
pub use tokens::{TokenReads, TokenWrites};
pub use webhooks::{WebhookReads, WebhookWrites};

/// Everything the domain may read, from one consistent snapshot.
pub trait ReadTxn:
    SessionReads
    + RunnerReads
    + TokenReads
    + WebhookReads
    + AuditReads
    + TimerReads
    + PipelineReads
    + PolicyReads
    + SpendReads
{
}

/// Everything a write job may read and write inside its transaction.
pub trait WriteTxn:
    ReadTxn
    + SessionWrites
    + RunnerWrites
    + TokenWrites
    + WebhookWrites
    + AuditWrites
    + TimerWrites
    + PipelineWrites
    + PolicyWrites
    + SpendWrites
    + Effects
{
}

impl ReadTxn for ReadCtx {}
impl ReadTxn for WriteCtx<'_> {}
impl WriteTxn for WriteCtx<'_> {}
