//! Backups and restores of the whole database.
//!
//! A backup copies every table, row by row, from **one read snapshot** into a new database file:
//! writers go on while it runs (redb's snapshots see no later commit), so the copy holds exactly
//! the writes committed before the snapshot began. Copying rows rather than the file's bytes means
//! a backup never captures a half-written page, and the copy is compact (no free pages).
//!
//! The file is written next to its destination under a temporary name, synced and renamed, so a
//! backup that fails or is interrupted never leaves a file that looks complete.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value,
};

use super::engine::{StoreError, StoreResult};
use super::migrations::{self, SCHEMA_VERSION};
use super::tables::*;

/// What a backup or a restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub schema_version: u64,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Rows copied per write transaction of the copy (non-durable until the last commit), so a
/// large table never sits in memory as one transaction's dirty pages.
const ROWS_PER_COMMIT: u64 = 20_000;

/// The page cache of the copy's database: it is only written.
const COPY_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Calls `$copy!(TABLE)` for every table of the catalogue. A table added to `tables.rs` must be
/// added here; `every_stored_table_is_backed_up` fails until it is.
macro_rules! for_every_table {
    ($copy:ident) => {
        $copy!(META);
        $copy!(TOKENS);
        $copy!(TOKEN_HASHES);
        $copy!(SESSIONS);
        $copy!(SESSIONS_BY_ORG);
        $copy!(ORG_ACTIVE_SESSIONS);
        $copy!(SESSION_EVENTS);
        $copy!(SESSION_OUTPUT);
        $copy!(APPROVALS);
        $copy!(TIMERS);
        $copy!(RUNNERS);
        $copy!(RUNNERS_BY_HOSTNAME);
        $copy!(RUNNER_LIVENESS);
        $copy!(SESSIONS_BY_RUNNER);
        $copy!(RUNNER_ACTIVE_SESSIONS);
        $copy!(SESSION_QUEUE);
        $copy!(RUNNER_OUTBOX);
        $copy!(RUNNER_OUTBOX_BY_MESSAGE);
        $copy!(AUDIT);
        $copy!(WEBHOOKS);
        $copy!(WEBHOOK_DELIVERIES);
        $copy!(DELIVERY_QUEUE);
        $copy!(VERSIONS);
        $copy!(BUILDS);
        $copy!(ROLLOUTS);
        $copy!(CHANNELS);
        $copy!(ORG_RUNTIME_CONFIGS);
        $copy!(APPROVAL_POLICIES);
        $copy!(ORG_NOTIFICATIONS);
        $copy!(APPROVAL_LINKS);
        $copy!(APPROVAL_LINKS_BY_APPROVAL);
        $copy!(PENDING_APPROVALS);
        $copy!(APPROVAL_COUNTS);
        $copy!(ORG_BUDGETS);
        $copy!(USAGE_BY_DAY);
        $copy!(USAGE_BY_MONTH);
        $copy!(BUILD_OUTCOMES);
        $copy!(BUDGET_HOLDS);
    };
}

/// The names of the tables a backup copies.
pub fn backed_up_tables() -> Vec<&'static str> {
    let mut names = Vec::new();
    macro_rules! name {
        ($t:ident) => {
            names.push($t.name())
        };
    }
    for_every_table!(name);
    names
}

/// Copies the snapshot `from` into a new database file at `out` (which must not exist).
pub(super) fn copy_snapshot(from: &ReadTransaction, out: &Path) -> StoreResult<BackupSummary> {
    if out.exists() {
        return Err(StoreError::Unavailable(format!(
            "{} already exists; a backup never overwrites a file",
            out.display()
        )));
    }
    let partial = partial_path(out);
    let _ = std::fs::remove_file(&partial);
    let result = write_copy(from, &partial).and_then(|summary| {
        std::fs::rename(&partial, out).map_err(io_error)?;
        sync_parent(out);
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn write_copy(from: &ReadTransaction, path: &Path) -> StoreResult<BackupSummary> {
    let file = private_file(path)?;
    let to = redb::Builder::new()
        .set_cache_size(COPY_CACHE_BYTES)
        .create_with_backend(redb::backends::FileBackend::new(file)?)?;
    let mut copy = Copy {
        to: &to,
        txn: None,
        rows_in_txn: 0,
        rows: 0,
        tables: 0,
    };
    macro_rules! copy {
        ($t:ident) => {
            copy.table(from, $t)?
        };
    }
    for_every_table!(copy);
    copy.commit(Durability::Immediate)?;
    let (rows, tables) = (copy.rows, copy.tables);
    drop(to);
    let bytes = std::fs::metadata(path).map_err(io_error)?.len();
    let schema_version = stored_schema_version(from)?;
    Ok(BackupSummary {
        schema_version,
        tables,
        rows,
        bytes,
    })
}

/// The copy in progress: the open write transaction and what has been copied.
struct Copy<'a> {
    to: &'a Database,
    txn: Option<redb::WriteTransaction>,
    rows_in_txn: u64,
    rows: u64,
    tables: usize,
}

impl Copy<'_> {
    fn txn(&mut self) -> StoreResult<&redb::WriteTransaction> {
        if self.txn.is_none() {
            let mut txn = self.to.begin_write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            self.txn = Some(txn);
        }
        self.txn
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no write transaction".into()))
    }

    fn commit(&mut self, durability: Durability) -> StoreResult<()> {
        let txn = match self.txn.take() {
            Some(txn) => txn,
            None if matches!(durability, Durability::Immediate) => self.to.begin_write()?,
            None => return Ok(()),
        };
        let mut txn = txn;
        txn.set_durability(durability)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        txn.commit()?;
        self.rows_in_txn = 0;
        Ok(())
    }

    /// Copies one table, in key order, resuming after the last key copied when a transaction
    /// is committed in the middle of it. A table the snapshot does not have is skipped (an old
    /// database restored into a new binary is migrated when it is opened).
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        from: &ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> StoreResult<()> {
        let source = match from.open_table(def) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.tables += 1;
        // Created even when empty, so the copy has the same tables as the snapshot.
        self.txn()?.open_table(def)?;
        if source.len()? == 0 {
            return Ok(());
        }
        for entry in source.iter()? {
            let (key, value) = entry?;
            self.txn()?
                .open_table(def)?
                .insert(key.value(), value.value())?;
            self.rows += 1;
            self.rows_in_txn += 1;
            if self.rows_in_txn >= ROWS_PER_COMMIT {
                self.commit(Durability::None)?;
            }
        }
        Ok(())
    }
}

/// Checks that `path` holds a database this binary can use, and what it holds: it opens it read
/// only (so the file itself is not migrated) and counts its rows.
pub fn inspect(path: &Path) -> StoreResult<BackupSummary> {
    let db = redb::ReadOnlyDatabase::open(path)?;
    let txn = db.begin_read()?;
    let schema_version = stored_schema_version(&txn)?;
    if schema_version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let mut rows = 0;
    let mut tables = 0;
    macro_rules! count {
        ($t:ident) => {
            match txn.open_table($t) {
                Ok(table) => {
                    tables += 1;
                    rows += table.len()?;
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        };
    }
    for_every_table!(count);
    let bytes = std::fs::metadata(path).map_err(io_error)?.len();
    Ok(BackupSummary {
        schema_version,
        tables,
        rows,
        bytes,
    })
}

/// Puts the backup `from` in place as the database file `db_path`. Refuses while a process has
/// the database open (redb locks the file), and refuses to replace an existing database unless
/// `replace`, which keeps the old file beside it as `<name>.replaced-<unix seconds>`. The backup
/// is checked (`inspect`) and copied under a temporary name first, so `db_path` is either the old
/// database or the whole backup, never a mix.
pub fn restore(
    from: &Path,
    db_path: &Path,
    replace: bool,
    now_secs: i64,
) -> StoreResult<(BackupSummary, Option<PathBuf>)> {
    let summary = inspect(from)?;
    let mut kept = None;
    if db_path.exists() {
        // Opening it takes redb's lock: it fails while a server (or another command) has it.
        match redb::Builder::new()
            .set_cache_size(COPY_CACHE_BYTES)
            .open(db_path)
        {
            Ok(db) => drop(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Unavailable(format!(
                    "{} is open in a running process (a server?); stop it before restoring",
                    db_path.display()
                )));
            }
            // A damaged file is what a restore is for.
            Err(_) => {}
        }
        if !replace {
            return Err(StoreError::Unavailable(format!(
                "{} already exists; pass --force to replace it (the old file is kept beside it)",
                db_path.display()
            )));
        }
    }
    let partial = partial_path(db_path);
    let _ = std::fs::remove_file(&partial);
    let copied = (|| {
        let mut src = std::fs::File::open(from).map_err(io_error)?;
        let mut dst = private_file(&partial)?;
        std::io::copy(&mut src, &mut dst).map_err(io_error)?;
        dst.sync_all().map_err(io_error)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    if db_path.exists() {
        let mut aside = db_path.as_os_str().to_owned();
        aside.push(format!(".replaced-{now_secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(db_path, &aside).map_err(io_error)?;
        kept = Some(aside);
    }
    std::fs::rename(&partial, db_path).map_err(io_error)?;
    sync_parent(db_path);
    Ok((summary, kept))
}

fn stored_schema_version(txn: &ReadTransaction) -> StoreResult<u64> {
    match txn.open_table(META) {
        Ok(meta) => Ok(meta
            .get(migrations::SCHEMA_VERSION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// A new file only the service user can read: a backup holds token hashes and session output.
fn private_file(path: &Path) -> StoreResult<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)
}

/// Makes a rename durable (best effort: some filesystems cannot sync a directory).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// What `compact` did: the database file's size before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Gives the free pages of a stopped server's database back to the filesystem (redb's
/// `compact`: live pages move to the front of the file, which is then truncated). Refused while
/// a process holds the database.
pub fn compact(db_path: &Path) -> StoreResult<Compacted> {
    let bytes_before = std::fs::metadata(db_path).map_err(io_error)?.len();
    let mut db = match redb::Builder::new()
        .set_cache_size(COPY_CACHE_BYTES)
        .open(db_path)
    {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Unavailable(format!(
                "{} is open in a running process (a server?); stop it before compacting",
                db_path.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    db.compact()
        .map_err(|e| StoreError::Unavailable(format!("compacting: {e}")))?;
    drop(db);
    let bytes_after = std::fs::metadata(db_path).map_err(io_error)?.len();
    Ok(Compacted {
        bytes_before,
        bytes_after,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn migrated(dir: &Path) -> Database {
        let db = Database::create(dir.join("village.redb")).unwrap();
        migrations::migrate(&db).unwrap();
        db
    }

    #[test]
    fn every_stored_table_is_backed_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated(dir.path());
        let txn = db.begin_read().unwrap();
        let stored: BTreeSet<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        let backed_up: BTreeSet<String> =
            backed_up_tables().into_iter().map(str::to_owned).collect();
        assert_eq!(stored, backed_up);
        assert_eq!(txn.list_multimap_tables().unwrap().count(), 0);
    }

    #[test]
    fn a_copy_holds_every_row_of_its_snapshot_and_nothing_later() {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated(dir.path());
        // More rows than one commit of the copy takes, with values of several sizes.
        let write = db.begin_write().unwrap();
        {
            let mut output = write.open_table(SESSION_OUTPUT).unwrap();
            for seq in 0..(2 * ROWS_PER_COMMIT + 7) {
                let value = vec![(seq % 251) as u8; (seq % 700) as usize];
                output.insert((7u128, seq), value.as_slice()).unwrap();
            }
            write
                .open_table(AUDIT)
                .unwrap()
                .insert(1, &b"entry"[..])
                .unwrap();
        }
        write.commit().unwrap();
        let snapshot = db.begin_read().unwrap();
        // Committed after the snapshot: not in the copy.
        let write = db.begin_write().unwrap();
        write
            .open_table(AUDIT)
            .unwrap()
            .insert(2, &b"later"[..])
            .unwrap();
        write.commit().unwrap();

        let out = dir.path().join("copy.redb");
        let summary = copy_snapshot(&snapshot, &out).unwrap();
        assert_eq!(summary.schema_version, SCHEMA_VERSION);
        assert_eq!(summary.tables, backed_up_tables().len());
        assert!(!partial_path(&out).exists());
        let checked = inspect(&out).unwrap();
        assert_eq!(
            (checked.rows, checked.tables),
            (summary.rows, summary.tables)
        );

        let copy = redb::ReadOnlyDatabase::open(&out).unwrap();
        let read = copy.begin_read().unwrap();
        let copied = read.open_table(SESSION_OUTPUT).unwrap();
        let original = snapshot.open_table(SESSION_OUTPUT).unwrap();
        assert_eq!(copied.len().unwrap(), 2 * ROWS_PER_COMMIT + 7);
        for (a, b) in original.iter().unwrap().zip(copied.iter().unwrap()) {
            let ((ka, va), (kb, vb)) = (a.unwrap(), b.unwrap());
            assert_eq!((ka.value(), va.value()), (kb.value(), vb.value()));
        }
        let audit = read.open_table(AUDIT).unwrap();
        assert_eq!(audit.len().unwrap(), 1);
        assert!(audit.get(2).unwrap().is_none());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never over an existing file.
        assert!(copy_snapshot(&snapshot, &out).is_err());
    }

    #[test]
    fn a_restore_refuses_a_database_in_use_and_replaces_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated(dir.path());
        let out = dir.path().join("copy.redb");
        copy_snapshot(&db.begin_read().unwrap(), &out).unwrap();
        let target = dir.path().join("village.redb");
        let err = restore(&out, &target, true, 1).unwrap_err();
        assert!(
            err.to_string().contains("open in a running process"),
            "{err}"
        );
        drop(db);
        let err = restore(&out, &target, false, 1).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let (summary, kept) = restore(&out, &target, true, 1234).unwrap();
        assert_eq!(summary.schema_version, SCHEMA_VERSION);
        assert_eq!(kept, Some(dir.path().join("village.redb.replaced-1234")));
        assert!(target.exists() && !partial_path(&target).exists());
        // Not a database: refused before anything is touched.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a database").unwrap();
        assert!(restore(&junk, &target, true, 99).is_err());
        assert!(!dir.path().join("village.redb.replaced-99").exists());
    }
}
