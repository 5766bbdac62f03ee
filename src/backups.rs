//! Backups of a running server: `GET /api/v1/admin/backup` (what `village backup --server` calls).
//!
//! The copy is made from one read snapshot (`store::backup`) into `<data-dir>/backups/`, then
//! streamed to the caller and removed. Taking one is audited: a backup holds every org's sessions
//! and output.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::audit;
use crate::auth::Principal;
use crate::clock::Millis;
use crate::error::DomainResult;
use crate::store::{BackupSummary, Store, StoreError};

/// A backup written to disk, ready to be sent.
pub struct Prepared {
    pub path: PathBuf,
    pub summary: BackupSummary,
}

/// Where a running server writes the backups it sends.
pub fn staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("backups")
}

/// Removes what a server stopped in the middle of a backup left behind.
pub fn clear_staging(data_dir: &Path) {
    let dir = staging_dir(data_dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes a backup of everything committed so far into the staging dir (admin only). Refuses
/// (503, nothing written) when the copy might not fit: it needs about the database's size, and
/// `min_free` must stay free for the database itself.
pub async fn prepare(
    store: &Store,
    who: &Principal,
    data_dir: &Path,
    min_free: u64,
    now: Millis,
    id: Uuid,
) -> DomainResult<Prepared> {
    who.require_admin()?;
    let dir = staging_dir(data_dir);
    let db_path = data_dir.join("village.redb");
    {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || room_for_backup(&dir, &db_path, min_free))
            .await
            .map_err(|_| StoreError::Panicked)??;
    }
    let entry = audit::entry(who, "backup.created", id, None, now);
    store
        .write(move |w| {
            w.append_audit(entry)?;
            Ok::<_, StoreError>(())
        })
        .await?;
    let path = dir.join(format!("backup-{id}.redb"));
    let summary = store.backup_to(path.clone()).await?;
    tracing::info!(
        backup = %id,
        by = %who.actor(),
        rows = summary.rows,
        bytes = summary.bytes,
        "backup taken"
    );
    Ok(Prepared { path, summary })
}

fn room_for_backup(dir: &Path, db_path: &Path, min_free: u64) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Unavailable(format!("{what} {}: {e}", dir.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unavailable("creating", &e))?;
    let needed = std::fs::metadata(db_path)
        .map(|m| m.len())
        .unwrap_or(0)
        .saturating_add(min_free);
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .map_err(|e| unavailable("reading the free space of", &e))?;
    if free < needed {
        return Err(StoreError::Unavailable(format!(
            "{free} bytes free for a backup of up to {needed} bytes (the database and server.minFreeDiskMb)"
        )));
    }
    Ok(())
}
