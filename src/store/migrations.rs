//! Schema version and ordered migrations. Each migration runs in its own write transaction that
//! also records the new version, so a crash leaves the database at one version or the next. A
//! database written by a newer Village (a higher version) is refused rather than misread.

use redb::{Database, ReadableDatabase, WriteTransaction};

use super::engine::StoreError;
use super::tables::*;

type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// Index `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    m001_initial_tables,
    m002_runner_tables,
    m003_audit,
    m004_webhooks,
    m005_pipeline,
];

pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

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

pub fn current_version(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
}

/// Brings the database to `SCHEMA_VERSION`.
pub fn migrate(db: &Database) -> Result<(), StoreError> {
    let mut version = current_version(db)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    while version < SCHEMA_VERSION {
        let txn = db.begin_write()?;
        MIGRATIONS[version as usize](&txn)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("schema_version", version + 1)?;
        }
        txn.commit()?;
        version += 1;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
