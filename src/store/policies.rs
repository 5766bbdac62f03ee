//! Storage of approval policies, notification targets and approval links.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use redb::ReadableTable;
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::policy::model::ApprovalPolicy;
use crate::sessions::model::ApprovalLink;
use crate::webhooks::model::OrgNotifications;

pub trait PolicyReads {
    /// The org's saved approval policy, if it saved one. Shared: every approval request reads
    /// it, and decoding 200 rules costs more than evaluating them.
    fn approval_policy(&self, org_id: &str) -> StoreResult<Option<Arc<ApprovalPolicy>>>;
    /// Every org's notification targets.
    fn all_notifications(&self) -> StoreResult<Vec<OrgNotifications>>;
    fn notifications(&self, org_id: &str) -> StoreResult<Option<OrgNotifications>>;
    /// The link stored under the SHA-256 of its secret.
    fn approval_link(&self, hash: &[u8; 32]) -> StoreResult<Option<ApprovalLink>>;
}

pub trait PolicyWrites: PolicyReads {
    fn put_approval_policy(&mut self, org_id: &str, policy: &ApprovalPolicy) -> StoreResult<()>;
    fn put_notifications(&mut self, n: &OrgNotifications) -> StoreResult<()>;
    fn put_approval_link(&mut self, hash: &[u8; 32], link: &ApprovalLink) -> StoreResult<()>;
    /// Removes every link of one approval; returns how many there were.
    fn delete_approval_links(&mut self, session: Uuid, approval: Uuid) -> StoreResult<usize>;
}

impl<T: Tables> PolicyReads for T {
    fn approval_policy(&self, org_id: &str) -> StoreResult<Option<Arc<ApprovalPolicy>>> {
        match self.table(APPROVAL_POLICIES)?.get(org_id)? {
            Some(v) => decoded_policy(org_id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn all_notifications(&self) -> StoreResult<Vec<OrgNotifications>> {
        let mut out = Vec::new();
        for entry in self.table(ORG_NOTIFICATIONS)?.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn notifications(&self, org_id: &str) -> StoreResult<Option<OrgNotifications>> {
        match self.table(ORG_NOTIFICATIONS)?.get(org_id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn approval_link(&self, hash: &[u8; 32]) -> StoreResult<Option<ApprovalLink>> {
        match self.table(APPROVAL_LINKS)?.get(hash.as_slice())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }
}

/// Policies decoded before, by org, with the bytes they were decoded from. A stored value that
/// equals the remembered bytes is that policy, whichever transaction or database it was read
/// in, so nothing ever invalidates an entry: a changed policy simply misses and replaces it.
static DECODED_POLICIES: LazyLock<Mutex<HashMap<String, Decoded>>> = LazyLock::new(Mutex::default);
/// A policy and the stored bytes it was decoded from.
type Decoded = (Vec<u8>, Arc<ApprovalPolicy>);
/// Orgs remembered at most; past this the memory starts over.
const DECODED_POLICIES_KEPT: usize = 1_024;

fn decoded_policy(org_id: &str, bytes: &[u8]) -> StoreResult<Arc<ApprovalPolicy>> {
    let mut decoded = DECODED_POLICIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((seen, policy)) = decoded.get(org_id)
        && seen.as_slice() == bytes
    {
        return Ok(policy.clone());
    }
    let policy: Arc<ApprovalPolicy> = Arc::new(decode(bytes)?);
    if decoded.len() >= DECODED_POLICIES_KEPT {
        decoded.clear();
    }
    decoded.insert(org_id.to_owned(), (bytes.to_vec(), policy.clone()));
    Ok(policy)
}

impl PolicyWrites for WriteCtx<'_> {
    fn put_approval_policy(&mut self, org_id: &str, policy: &ApprovalPolicy) -> StoreResult<()> {
        let bytes = encode(policy)?;
        self.open_mut(APPROVAL_POLICIES)?
            .insert(org_id, bytes.as_slice())?;
        Ok(())
    }

    fn put_notifications(&mut self, n: &OrgNotifications) -> StoreResult<()> {
        let bytes = encode(n)?;
        self.open_mut(ORG_NOTIFICATIONS)?
            .insert(n.org_id.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn put_approval_link(&mut self, hash: &[u8; 32], link: &ApprovalLink) -> StoreResult<()> {
        let bytes = encode(link)?;
        self.open_mut(APPROVAL_LINKS)?
            .insert(hash.as_slice(), bytes.as_slice())?;
        self.open_mut(APPROVAL_LINKS_BY_APPROVAL)?.insert(
            (
                link.session_id.as_u128(),
                link.approval_id.as_u128(),
                hash.as_slice(),
            ),
            (),
        )?;
        Ok(())
    }

    fn delete_approval_links(&mut self, session: Uuid, approval: Uuid) -> StoreResult<usize> {
        let (s, a) = (session.as_u128(), approval.as_u128());
        let hashes: Vec<Vec<u8>> = {
            let index = self.table(APPROVAL_LINKS_BY_APPROVAL)?;
            let from: (u128, u128, &[u8]) = (s, a, &[]);
            let mut out = Vec::new();
            for entry in index.range(from..)? {
                let (key, _) = entry?;
                let (ks, ka, hash) = key.value();
                if (ks, ka) != (s, a) {
                    break;
                }
                out.push(hash.to_vec());
            }
            out
        };
        if hashes.is_empty() {
            return Ok(0);
        }
        let mut links = self.open_mut(APPROVAL_LINKS)?;
        for hash in &hashes {
            links.remove(hash.as_slice())?;
        }
        drop(links);
        let mut index = self.open_mut(APPROVAL_LINKS_BY_APPROVAL)?;
        for hash in &hashes {
            index.remove((s, a, hash.as_slice()))?;
        }
        Ok(hashes.len())
    }
}
