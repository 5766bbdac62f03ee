//! Storage of the audit log, numbered in commit order.

use redb::ReadableTable;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::audit::model::AuditEntry;
use crate::clock::Millis;

pub trait AuditReads {
    /// Audit entries after `after`, oldest first.
    fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>>;
}

pub trait AuditWrites: AuditReads {
    /// Appends an audit entry with the next sequence number.
    fn append_audit(&mut self, entry: AuditEntry) -> StoreResult<u64>;

    /// Removes entries recorded before `before`, oldest first, at most `limit` of them. The
    /// newest entry always stays: the next sequence number follows it. Returns how many went.
    fn trim_audit(&mut self, before: Millis, limit: usize) -> StoreResult<usize>;
}

impl<T: Tables> AuditReads for T {
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
}

impl AuditWrites for WriteCtx<'_> {
    fn append_audit(&mut self, mut entry: AuditEntry) -> StoreResult<u64> {
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

    fn trim_audit(&mut self, before: Millis, limit: usize) -> StoreResult<usize> {
        let table = self.hot_audit()?;
        let Some(newest) = table.last()?.map(|(k, _)| k.value()) else {
            return Ok(0);
        };
        let mut doomed = Vec::new();
        for entry in table.range(..newest)?.take(limit) {
            let (seq, bytes) = entry?;
            let recorded: AuditEntry = decode(bytes.value())?;
            if recorded.at >= before {
                break;
            }
            doomed.push(seq.value());
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        self.writes += 1;
        let table = self.hot_audit()?;
        for seq in &doomed {
            table.remove(seq)?;
        }
        Ok(doomed.len())
    }
}
