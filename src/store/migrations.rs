//! Schema version and ordered migrations. Each migration runs in its own write transaction that
//! also records the new version, so a crash leaves the database at one version or the next. A
//! database written by a newer Village (a higher version) is refused rather than misread.

use redb::{Database, Key, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;

use super::codec::{self, Record};
use super::engine::StoreError;
use super::tables::*;
use crate::runners::model::OutboxEntry;
use crate::sessions::model::{Approval, Session};

type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// Index `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    m001_initial_tables,
    m002_runner_tables,
    m003_audit,
    m004_webhooks,
    m005_pipeline,
    m006_usage_cost_and_approval_scope,
    m007_outbox_by_message,
    m008_policies_notifications_links,
    m009_pending_approvals,
    m010_budgets_and_spend,
];

pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// The `META` key holding the schema version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

fn m001_initial_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TOKENS)?;
    txn.open_table(TOKEN_HASHES)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(SESSIONS_BY_ORG)?;
    txn.open_table(ORG_ACTIVE_SESSIONS)?;
    txn.open_table(SESSION_EVENTS)?;
    txn.open_table(SESSION_OUTPUT)?;
    txn.open_table(APPROVALS)?;
    txn.open_table(TIMERS)?;
    Ok(())
}

fn m002_runner_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(RUNNERS)?;
    txn.open_table(RUNNERS_BY_HOSTNAME)?;
    txn.open_table(RUNNER_LIVENESS)?;
    txn.open_table(SESSIONS_BY_RUNNER)?;
    txn.open_table(RUNNER_ACTIVE_SESSIONS)?;
    txn.open_table(SESSION_QUEUE)?;
    txn.open_table(RUNNER_OUTBOX)?;
    Ok(())
}

fn m003_audit(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(AUDIT)?;
    Ok(())
}

fn m004_webhooks(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(WEBHOOKS)?;
    txn.open_table(WEBHOOK_DELIVERIES)?;
    txn.open_table(DELIVERY_QUEUE)?;
    Ok(())
}

fn m005_pipeline(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(VERSIONS)?;
    txn.open_table(BUILDS)?;
    txn.open_table(ROLLOUTS)?;
    txn.open_table(CHANNELS)?;
    txn.open_table(ORG_RUNTIME_CONFIGS)?;
    Ok(())
}

/// Sessions gain `usage.cost_usd` (0 until a runner reports it), approval resolutions and the
/// runner command `ApprovalResolved` gain `scope` (none: nothing was said). Every stored value of
/// the three records is rewritten from version 1 to version 2.
fn m006_usage_cost_and_approval_scope(txn: &WriteTransaction) -> Result<(), StoreError> {
    rewrite(txn, SESSIONS, upgrade::<v1::Session, Session>)?;
    rewrite(txn, APPROVALS, upgrade::<v1::Approval, Approval>)?;
    rewrite(txn, RUNNER_OUTBOX, upgrade::<v1::OutboxEntry, OutboxEntry>)?;
    Ok(())
}

/// Acks find their command by message id: the index is built from every command waiting in
/// an outbox.
fn m007_outbox_by_message(txn: &WriteTransaction) -> Result<(), StoreError> {
    let outbox = txn.open_table(RUNNER_OUTBOX)?;
    let mut index = txn.open_table(RUNNER_OUTBOX_BY_MESSAGE)?;
    for entry in outbox.iter()? {
        let (key, value) = entry?;
        let (runner, seq) = key.value();
        let command: OutboxEntry = codec::decode(value.value())?;
        index.insert((runner, command.message_id.as_u128()), seq)?;
    }
    Ok(())
}

fn m008_policies_notifications_links(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(APPROVAL_POLICIES)?;
    txn.open_table(ORG_NOTIFICATIONS)?;
    txn.open_table(APPROVAL_LINKS)?;
    txn.open_table(APPROVAL_LINKS_BY_APPROVAL)?;
    Ok(())
}

/// A session's pending approvals and its count of approvals get tables of their own, built from
/// every stored approval.
fn m009_pending_approvals(txn: &WriteTransaction) -> Result<(), StoreError> {
    let approvals = txn.open_table(APPROVALS)?;
    let mut pending = txn.open_table(PENDING_APPROVALS)?;
    let mut counts = txn.open_table(APPROVAL_COUNTS)?;
    for entry in approvals.iter()? {
        let (key, value) = entry?;
        let (session, id) = key.value();
        let a: Approval = codec::decode(value.value())?;
        if a.resolution.is_none() {
            pending.insert((session, id), ())?;
        }
        let seen = counts.get(session)?.map_or(0, |c| c.value());
        if a.seq > seen {
            counts.insert(session, a.seq)?;
        }
    }
    Ok(())
}

/// Budgets, spend per day and month, build outcomes and budget holds. The spend of the sessions
/// already stored is counted in: each one's usage on the day it was last updated, and the session
/// itself on the day it first ran. (Which builds they ended on was never recorded.)
fn m010_budgets_and_spend(txn: &WriteTransaction) -> Result<(), StoreError> {
    use crate::spend::model::{UsageDelta, day_of};
    txn.open_table(ORG_BUDGETS)?;
    txn.open_table(BUILD_OUTCOMES)?;
    txn.open_table(BUDGET_HOLDS)?;
    let sessions = txn.open_table(SESSIONS)?;
    let mut days = txn.open_table(USAGE_BY_DAY)?;
    let mut months = txn.open_table(USAGE_BY_MONTH)?;
    for entry in sessions.iter()? {
        let s: Session = codec::decode(entry?.1.value())?;
        let provider = s.provider.as_str();
        let spent = UsageDelta::between(&Default::default(), &s.usage);
        if !spent.is_zero() {
            let day = day_of(s.updated_at);
            super::spend::add_to_day(&mut days, &s.org_id, day, provider, &spent)?;
            super::spend::add_to_month(&mut months, &s.org_id, day, &spent)?;
        }
        if let Some(started) = s.started_running_at {
            let (day, one) = (day_of(started), UsageDelta::one_session());
            super::spend::add_to_day(&mut days, &s.org_id, day, provider, &one)?;
            super::spend::add_to_month(&mut months, &s.org_id, day, &one)?;
        }
    }
    Ok(())
}

/// A value of `New` written as version 1 (`Old`), re-encoded at the current version; `None` when
/// it already is current.
fn upgrade<Old, New>(bytes: &[u8]) -> Result<Option<Vec<u8>>, StoreError>
where
    Old: DeserializeOwned + Into<New>,
    New: Record,
{
    if bytes.first() == Some(&New::VERSION) {
        return Ok(None);
    }
    let old: Old = codec::decode_as(New::NAME, 1, bytes)?;
    codec::encode(&old.into()).map(Some)
}

/// Rewrites every value of a table with `upgrade`. Keys are read first (they are small), then
/// each value is read, converted and written back, so the table is never changed while it is
/// being iterated.
fn rewrite<K>(
    txn: &WriteTransaction,
    def: TableDefinition<K, &'static [u8]>,
    upgrade: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<u64, StoreError>
where
    K: Key + 'static,
    for<'a> K: redb::Value<SelfType<'a> = K>,
{
    let mut table = txn.open_table(def)?;
    let keys = table
        .iter()?
        .map(|entry| entry.map(|(k, _)| k.value()))
        .collect::<Result<Vec<K>, _>>()?;
    let mut rewritten = 0;
    for key in keys {
        let new = match table.get(&key)? {
            Some(value) => upgrade(value.value())?,
            None => None,
        };
        if let Some(new) = new {
            table.insert(&key, new.as_slice())?;
            rewritten += 1;
        }
    }
    Ok(rewritten)
}

/// Shapes of version 1 of the records that schema version 6 changed, exactly as they were
/// encoded (bincode writes fields in order, without names), and how each becomes current.
mod v1 {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use crate::clock::Millis;
    use crate::runners::model as now_runners;
    use crate::sessions::model as now;
    use crate::sessions::model::{
        ApprovalAction, Decision, Provider, Repo, SessionOptions, SessionState,
    };

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Usage {
        pub tokens_in: u64,
        pub tokens_out: u64,
        pub api_calls: u64,
        pub compute_seconds: f64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Session {
        pub id: Uuid,
        pub org_id: String,
        pub provider: Provider,
        pub repo: Repo,
        pub task: Option<String>,
        pub options: SessionOptions,
        pub state: SessionState,
        pub created_at: Millis,
        pub started_running_at: Option<Millis>,
        pub completed_at: Option<Millis>,
        pub end_reason: Option<String>,
        pub error: Option<String>,
        pub runner_id: Option<Uuid>,
        pub assignment_id: Option<Uuid>,
        pub assigned_at: Option<Millis>,
        pub runner_history: Vec<Uuid>,
        pub usage: Usage,
        pub timeout_ms: i64,
        pub output_bytes: u64,
        pub workspace_size_bytes: Option<u64>,
        pub updated_at: Millis,
    }

    impl From<Session> for now::Session {
        fn from(s: Session) -> Self {
            Self {
                id: s.id,
                org_id: s.org_id,
                provider: s.provider,
                repo: s.repo,
                task: s.task,
                options: s.options,
                state: s.state,
                created_at: s.created_at,
                started_running_at: s.started_running_at,
                completed_at: s.completed_at,
                end_reason: s.end_reason,
                error: s.error,
                runner_id: s.runner_id,
                assignment_id: s.assignment_id,
                assigned_at: s.assigned_at,
                runner_history: s.runner_history,
                usage: now::Usage {
                    tokens_in: s.usage.tokens_in,
                    tokens_out: s.usage.tokens_out,
                    api_calls: s.usage.api_calls,
                    compute_seconds: s.usage.compute_seconds,
                    cost_usd: 0.0,
                },
                timeout_ms: s.timeout_ms,
                output_bytes: s.output_bytes,
                workspace_size_bytes: s.workspace_size_bytes,
                updated_at: s.updated_at,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Resolution {
        pub decision: Decision,
        pub reason: Option<String>,
        pub resolved_at: Millis,
        pub resolved_by: String,
    }

    /// `action` keeps its type: version 1 knew its first four variants, which kept their index.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Approval {
        pub id: Uuid,
        pub seq: u64,
        pub session_id: Uuid,
        pub action: ApprovalAction,
        pub description: String,
        pub context_json: Option<String>,
        pub requested_at: Millis,
        pub expires_at: Millis,
        pub resolution: Option<Resolution>,
    }

    impl From<Approval> for now::Approval {
        fn from(a: Approval) -> Self {
            Self {
                id: a.id,
                seq: a.seq,
                session_id: a.session_id,
                action: a.action,
                description: a.description,
                context_json: a.context_json,
                requested_at: a.requested_at,
                expires_at: a.expires_at,
                resolution: a.resolution.map(|r| now::Resolution {
                    decision: r.decision,
                    reason: r.reason,
                    resolved_at: r.resolved_at,
                    resolved_by: r.resolved_by,
                    scope: None,
                }),
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum RunnerCommand {
        AssignSession {
            session_id: Uuid,
            assignment_id: Uuid,
        },
        StopSession {
            session_id: Uuid,
            reason: String,
        },
        PauseSession {
            session_id: Uuid,
        },
        ResumeSession {
            session_id: Uuid,
        },
        TerminalInput {
            session_id: Uuid,
            data: String,
        },
        ApprovalResolved {
            session_id: Uuid,
            approval_id: Uuid,
            decision: Decision,
            reason: Option<String>,
        },
        Drain,
    }

    impl From<RunnerCommand> for now_runners::RunnerCommand {
        fn from(c: RunnerCommand) -> Self {
            match c {
                RunnerCommand::AssignSession {
                    session_id,
                    assignment_id,
                } => Self::AssignSession {
                    session_id,
                    assignment_id,
                },
                RunnerCommand::StopSession { session_id, reason } => {
                    Self::StopSession { session_id, reason }
                }
                RunnerCommand::PauseSession { session_id } => Self::PauseSession { session_id },
                RunnerCommand::ResumeSession { session_id } => Self::ResumeSession { session_id },
                RunnerCommand::TerminalInput { session_id, data } => {
                    Self::TerminalInput { session_id, data }
                }
                RunnerCommand::ApprovalResolved {
                    session_id,
                    approval_id,
                    decision,
                    reason,
                } => Self::ApprovalResolved {
                    session_id,
                    approval_id,
                    decision,
                    reason,
                    scope: None,
                },
                RunnerCommand::Drain => Self::Drain,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct OutboxEntry {
        pub seq: u64,
        pub message_id: Uuid,
        pub runner_id: Uuid,
        pub command: RunnerCommand,
        pub created_at: Millis,
    }

    impl From<OutboxEntry> for now_runners::OutboxEntry {
        fn from(e: OutboxEntry) -> Self {
            Self {
                seq: e.seq,
                message_id: e.message_id,
                runner_id: e.runner_id,
                command: e.command.into(),
                created_at: e.created_at,
            }
        }
    }
}

pub fn current_version(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(meta
        .get(SCHEMA_VERSION_KEY)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Brings the database to `SCHEMA_VERSION`.
pub fn migrate(db: &Database) -> Result<(), StoreError> {
    migrate_to(db, SCHEMA_VERSION)
}

/// Brings the database to `target` (tests stop at an older version to write its records).
fn migrate_to(db: &Database, target: u64) -> Result<(), StoreError> {
    let mut version = current_version(db)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    while version < target {
        let txn = db.begin_write()?;
        MIGRATIONS[version as usize](&txn)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(SCHEMA_VERSION_KEY, version + 1)?;
        }
        txn.commit()?;
        version += 1;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::runners::model::RunnerCommand;
    use crate::sessions::model::{
        ApprovalAction, Decision, Provider, Repo, Resolution, SessionOptions, SessionState,
    };

    fn temp_db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = Database::create(dir.path().join("t.redb")).unwrap_or_else(|e| panic!("{e}"));
        (dir, db)
    }

    #[test]
    fn migrates_to_the_latest_version_once() {
        let (_d, db) = temp_db();
        assert_eq!(current_version(&db).ok(), Some(0));
        migrate(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(current_version(&db).ok(), Some(SCHEMA_VERSION));
        migrate(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(current_version(&db).ok(), Some(SCHEMA_VERSION));
    }

    fn session_v1(n: u128) -> v1::Session {
        v1::Session {
            id: Uuid::from_u128(n),
            org_id: "acme".into(),
            provider: Provider::ClaudeCode,
            repo: Repo {
                url: "https://example.com/a.git".into(),
                branch: "main".into(),
                commit: "HEAD".into(),
            },
            task: Some("fix it".into()),
            options: SessionOptions {
                timeout_minutes: Some(30.0),
                env: [("TOKEN".to_string(), "secret".to_string())].into(),
                dangerously_skip_permissions: false,
                required_features: vec!["gpu".into()],
            },
            state: SessionState::WaitingForApproval,
            created_at: 1_700_000_000_000,
            started_running_at: Some(1_700_000_001_000),
            completed_at: None,
            end_reason: None,
            error: None,
            runner_id: Some(Uuid::from_u128(9)),
            assignment_id: Some(Uuid::from_u128(10)),
            assigned_at: Some(1_700_000_000_500),
            runner_history: vec![Uuid::from_u128(9)],
            usage: v1::Usage {
                tokens_in: 100,
                tokens_out: 20,
                api_calls: 3,
                compute_seconds: 1.5,
            },
            timeout_ms: 1_800_000,
            output_bytes: 42,
            workspace_size_bytes: Some(4096),
            updated_at: 1_700_000_002_000,
        }
    }

    fn approval_v1(n: u128, resolution: Option<v1::Resolution>) -> v1::Approval {
        v1::Approval {
            id: Uuid::from_u128(n),
            seq: n as u64,
            session_id: Uuid::from_u128(1),
            action: ApprovalAction::Deploy,
            description: "ship it".into(),
            context_json: Some(r#"{"env":"prod"}"#.into()),
            requested_at: 1_700_000_001_500,
            expires_at: 1_700_000_301_500,
            resolution,
        }
    }

    fn outbox_v1(seq: u64, command: v1::RunnerCommand) -> v1::OutboxEntry {
        v1::OutboxEntry {
            seq,
            message_id: Uuid::from_u128(100 + seq as u128),
            runner_id: Uuid::from_u128(9),
            command,
            created_at: 1_700_000_003_000,
        }
    }

    /// Writes values as raw bytes into a table of the schema at version 5.
    fn put_raw<K>(db: &Database, def: TableDefinition<K, &'static [u8]>, rows: &[(K, Vec<u8>)])
    where
        K: Key + 'static,
        for<'a> K: redb::Value<SelfType<'a> = K>,
    {
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        {
            let mut t = txn.open_table(def).unwrap_or_else(|e| panic!("{e}"));
            for (k, v) in rows {
                t.insert(k, v.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
    }

    fn get_raw<K>(db: &Database, def: TableDefinition<K, &'static [u8]>, key: K) -> Vec<u8>
    where
        K: Key + 'static,
        for<'a> K: redb::Value<SelfType<'a> = K>,
    {
        let txn = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let t = txn.open_table(def).unwrap_or_else(|e| panic!("{e}"));
        let v = t.get(&key).unwrap_or_else(|e| panic!("{e}"));
        v.map(|v| v.value().to_vec()).unwrap_or_default()
    }

    fn v1_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        codec::encode_as(1, value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A database of schema version 5, with sessions, approvals and runner commands as version 5
    /// wrote them, opens at the current version and reads back every value, with no cost and no
    /// scope where the old records had none.
    #[test]
    fn schema_5_records_gain_cost_and_scope() {
        let (_d, db) = temp_db();
        migrate_to(&db, 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(current_version(&db).ok(), Some(5));

        let session = session_v1(1);
        let pending = approval_v1(2, None);
        let resolved = approval_v1(
            3,
            Some(v1::Resolution {
                decision: Decision::Allow,
                reason: Some("fine".into()),
                resolved_at: 1_700_000_002_000,
                resolved_by: "admin".into(),
            }),
        );
        let answered = outbox_v1(
            1,
            v1::RunnerCommand::ApprovalResolved {
                session_id: Uuid::from_u128(1),
                approval_id: Uuid::from_u128(3),
                decision: Decision::Allow,
                reason: Some("fine".into()),
            },
        );
        let stop = outbox_v1(
            2,
            v1::RunnerCommand::StopSession {
                session_id: Uuid::from_u128(1),
                reason: "stopped: requested".into(),
            },
        );
        let drain = outbox_v1(3, v1::RunnerCommand::Drain);
        put_raw(&db, SESSIONS, &[(1u128, v1_bytes(&session))]);
        put_raw(
            &db,
            APPROVALS,
            &[
                ((1u128, 2u128), v1_bytes(&pending)),
                ((1u128, 3u128), v1_bytes(&resolved)),
            ],
        );
        put_raw(
            &db,
            RUNNER_OUTBOX,
            &[
                ((9u128, 1u64), v1_bytes(&answered)),
                ((9u128, 2u64), v1_bytes(&stop)),
                ((9u128, 3u64), v1_bytes(&drain)),
            ],
        );
        // The current code cannot read them before the migration.
        assert!(codec::decode::<Session>(&get_raw(&db, SESSIONS, 1u128)).is_err());

        migrate(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(current_version(&db).ok(), Some(SCHEMA_VERSION));

        // Version 7 indexed the waiting commands by message id.
        let txn = db.begin_read().unwrap_or_else(|e| panic!("{e}"));
        let index = txn
            .open_table(RUNNER_OUTBOX_BY_MESSAGE)
            .unwrap_or_else(|e| panic!("{e}"));
        let indexed: Vec<((u128, u128), u64)> = index
            .iter()
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| {
                let (k, v) = e.unwrap_or_else(|e| panic!("{e}"));
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(indexed, vec![((9, 101), 1), ((9, 102), 2), ((9, 103), 3)]);
        // Version 9 indexed the pending approvals and counted each session's approvals.
        let pending: Vec<(u128, u128)> = txn
            .open_table(PENDING_APPROVALS)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.unwrap_or_else(|e| panic!("{e}")).0.value())
            .collect();
        assert_eq!(pending, vec![(1, 2)], "the resolved one is not pending");
        let count = txn
            .open_table(APPROVAL_COUNTS)
            .unwrap_or_else(|e| panic!("{e}"))
            .get(1u128)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|c| c.value());
        assert_eq!(count, Some(3), "the highest seq of the session's approvals");
        // Version 10 counted the stored sessions' spend in.
        let month = crate::spend::model::month_of(1_700_000_002_000);
        let spent: crate::spend::model::UsageTotals = txn
            .open_table(USAGE_BY_MONTH)
            .unwrap_or_else(|e| panic!("{e}"))
            .get(("acme", month))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|v| codec::decode(v.value()))
            .transpose()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert_eq!((spent.tokens_in, spent.cost_usd), (100, 0.0));
        drop((index, txn));

        let s: Session =
            codec::decode(&get_raw(&db, SESSIONS, 1u128)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.usage.cost_usd, 0.0);
        assert_eq!(s.usage.tokens_in, 100);
        assert_eq!(s.usage.compute_seconds, 1.5);
        assert_eq!(
            s.options.env.get("TOKEN").map(String::as_str),
            Some("secret")
        );
        assert_eq!(s, session.clone().into());

        let a: Approval = codec::decode(&get_raw(&db, APPROVALS, (1u128, 2u128)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.resolution, None);
        assert_eq!(a.context_json.as_deref(), Some(r#"{"env":"prod"}"#));
        let a: Approval = codec::decode(&get_raw(&db, APPROVALS, (1u128, 3u128)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.action, ApprovalAction::Deploy);
        assert_eq!(
            a.resolution,
            Some(Resolution {
                decision: Decision::Allow,
                reason: Some("fine".into()),
                resolved_at: 1_700_000_002_000,
                resolved_by: "admin".into(),
                scope: None,
            })
        );

        let e: OutboxEntry = codec::decode(&get_raw(&db, RUNNER_OUTBOX, (9u128, 1u64)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.seq, 1);
        assert_eq!(e.message_id, Uuid::from_u128(101));
        assert_eq!(
            e.command,
            RunnerCommand::ApprovalResolved {
                session_id: Uuid::from_u128(1),
                approval_id: Uuid::from_u128(3),
                decision: Decision::Allow,
                reason: Some("fine".into()),
                scope: None,
            }
        );
        let e: OutboxEntry = codec::decode(&get_raw(&db, RUNNER_OUTBOX, (9u128, 2u64)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.command,
            RunnerCommand::StopSession {
                session_id: Uuid::from_u128(1),
                reason: "stopped: requested".into(),
            }
        );
        let e: OutboxEntry = codec::decode(&get_raw(&db, RUNNER_OUTBOX, (9u128, 3u64)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.command, RunnerCommand::Drain);

        // Opening again changes nothing.
        let before = get_raw(&db, SESSIONS, 1u128);
        migrate(&db).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get_raw(&db, SESSIONS, 1u128), before);
    }

    /// A value the migration cannot read stops it: the database stays at version 5, as it was.
    #[test]
    fn an_unreadable_record_stops_the_migration_and_changes_nothing() {
        let (_d, db) = temp_db();
        migrate_to(&db, 5).unwrap_or_else(|e| panic!("{e}"));
        let good = v1_bytes(&session_v1(1));
        put_raw(
            &db,
            SESSIONS,
            &[(1u128, good.clone()), (2u128, vec![1, 255, 255])],
        );
        assert!(matches!(migrate(&db), Err(StoreError::Corrupt(_))));
        assert_eq!(current_version(&db).ok(), Some(5));
        assert_eq!(get_raw(&db, SESSIONS, 1u128), good);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (_d, db) = temp_db();
        let txn = db.begin_write().unwrap_or_else(|e| panic!("{e}"));
        {
            let mut meta = txn.open_table(META).unwrap_or_else(|e| panic!("{e}"));
            meta.insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        txn.commit().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(migrate(&db), Err(StoreError::NewerSchema { .. })));
    }
}
