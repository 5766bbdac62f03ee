//! Tokens and who may do what. Secrets are random 256-bit values shown once;
//! only their SHA-256 is stored. Active tokens are mirrored in memory so that authenticating a
//! request never touches the disk.

pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::model::AuditEntry;
use crate::clock::{SharedClock, SharedIds};
use crate::detach::detached;
use crate::error::{Conflict, DomainError, DomainResult, Entity, Issue};
use crate::paging::{Page, PageRequest};
use crate::store::Store;
pub use model::{TokenKind, TokenRecord};

/// The longest name a token may have.
pub const MAX_TOKEN_NAME_CHARS: usize = 200;

/// The caller as handlers receive it: shared, so passing it around copies a pointer.
pub type Caller = Arc<Principal>;

/// The caller of a request, after authentication.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub kind: TokenKind,
    pub name: String,
    pub org_id: Option<String>,
    pub runner_id: Option<Uuid>,
    /// Set when the token is revoked, so sockets opened with it can hang up.
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

impl Principal {
    fn from_record(r: &TokenRecord) -> Self {
        Self {
            token_id: r.id,
            kind: r.kind,
            name: r.name.clone(),
            org_id: r.org_id.clone(),
            runner_id: r.runner_id,
            revoked: Arc::default(),
        }
    }

    /// Whether the token this caller authenticated with has been revoked since.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    fn mark_revoked(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Everyone is admin when `auth.disabled = true`.
    pub fn anonymous_admin() -> Self {
        Self {
            token_id: Uuid::nil(),
            kind: TokenKind::Admin,
            name: "anonymous".into(),
            org_id: None,
            runner_id: None,
            revoked: Arc::default(),
        }
    }

    /// An operator at the server's host acting on its data dir directly (`village token` without
    /// `--server`): admin, and recorded in the audit log under `name`.
    pub fn local_operator(name: &str) -> Self {
        Self {
            token_id: Uuid::nil(),
            kind: TokenKind::Admin,
            name: name.into(),
            org_id: None,
            runner_id: None,
            revoked: Arc::default(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.kind == TokenKind::Admin
    }

    pub fn require_admin(&self) -> DomainResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(DomainError::forbidden("this call needs an admin token"))
        }
    }

    /// Admin or an org token: the callers that manage sessions.
    pub fn require_org_or_admin(&self) -> DomainResult<()> {
        match self.kind {
            TokenKind::Admin | TokenKind::Org => Ok(()),
            _ => Err(DomainError::forbidden(
                "this call needs an org or admin token",
            )),
        }
    }

    /// Admin, or an org token of `org_id`: the callers of an org's own settings (`what`: its
    /// approval policy, notifications, budget). Another org's token is refused by name.
    pub fn require_org_member_or_admin(&self, org_id: &str, what: &str) -> DomainResult<()> {
        match self.kind {
            TokenKind::Admin => Ok(()),
            TokenKind::Org if self.sees_org(org_id) => Ok(()),
            TokenKind::Org => Err(DomainError::forbidden(format!(
                "an org token may reach its own org's {what} only"
            ))),
            _ => Err(DomainError::forbidden(format!(
                "an org's {what} needs an admin or org token"
            ))),
        }
    }

    /// Whether this caller may see objects of `org_id` (a miss is reported as not-found).
    pub fn sees_org(&self, org_id: &str) -> bool {
        self.is_admin() || (self.kind == TokenKind::Org && self.org_id.as_deref() == Some(org_id))
    }

    /// The org a request acts on: an org token acts on its own org (naming another is 403),
    /// an admin must name one.
    pub fn resolve_org(&self, named: Option<&str>, path: &str) -> DomainResult<String> {
        match (self.kind, named) {
            (TokenKind::Org, Some(org)) if Some(org) != self.org_id.as_deref() => Err(
                DomainError::forbidden("an org token may act only on its own org"),
            ),
            (TokenKind::Org, _) => self
                .org_id
                .clone()
                .ok_or_else(|| DomainError::forbidden("org token without an org")),
            (_, Some(org)) => Ok(org.to_owned()),
            (_, None) => Err(DomainError::Validation(vec![Issue::new(
                path,
                "is required",
            )])),
        }
    }

    /// Label recorded as who did something (audit, approval `resolvedBy`).
    pub fn actor(&self) -> String {
        if self.token_id.is_nil() {
            self.name.clone()
        } else {
            self.token_id.to_string()
        }
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn is_org_slug(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new token: the record to keep and the secret to show once.
pub struct IssuedToken {
    pub record: TokenRecord,
    pub secret: String,
}

pub struct NewToken {
    pub kind: TokenKind,
    pub name: String,
    pub org_id: Option<String>,
}

#[derive(Clone)]
pub struct AuthService {
    store: Store,
    clock: SharedClock,
    ids: SharedIds,
    active: Arc<ActiveTokens>,
}

/// The usable tokens by hash, in shards picked by the hash's first byte: every request looks
/// one up, so no one lock is taken by all of them.
struct ActiveTokens {
    shards: Vec<RwLock<HashMap<[u8; 32], Caller>>>,
}

impl ActiveTokens {
    const SHARDS: usize = 16;

    fn new(tokens: impl IntoIterator<Item = ([u8; 32], Caller)>) -> Self {
        let this = Self {
            shards: (0..Self::SHARDS).map(|_| RwLock::default()).collect(),
        };
        for (hash, caller) in tokens {
            this.insert(hash, caller);
        }
        this
    }

    fn shard(&self, hash: &[u8; 32]) -> &RwLock<HashMap<[u8; 32], Caller>> {
        &self.shards[usize::from(hash[0]) % Self::SHARDS]
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Caller> {
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        shard.get(hash).cloned()
    }

    fn insert(&self, hash: [u8; 32], caller: Caller) {
        let mut shard = self.shard(&hash).write().unwrap_or_else(|p| p.into_inner());
        shard.insert(hash, caller);
    }

    /// Removes a token and marks its principal revoked (a request holding it sees that).
    fn revoke(&self, hash: &[u8; 32]) {
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = shard.remove(hash) {
            p.mark_revoked();
        }
    }

    /// Revokes every token of `token_id` (there is one).
    fn revoke_id(&self, token_id: Uuid) {
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, p| {
                let keep = p.token_id != token_id;
                if !keep {
                    p.mark_revoked();
                }
                keep
            });
        }
    }
}

impl AuthService {
    /// Loads every active token into memory.
    pub async fn load(store: Store, clock: SharedClock, ids: SharedIds) -> DomainResult<Self> {
        let tokens = store.read(|r| r.all_tokens()).await?;
        let active = ActiveTokens::new(
            tokens
                .iter()
                .filter(|t| t.revoked_at.is_none())
                .map(|t| (t.hash, Arc::new(Principal::from_record(t)))),
        );
        Ok(Self {
            store,
            clock,
            ids,
            active: Arc::new(active),
        })
    }

    pub fn authenticate(&self, secret: &str) -> Option<Caller> {
        self.active.get(&hash_secret(secret))
    }

    /// A runner token for a registration (its runner id is filled in by the caller).
    pub fn mint_runner_token(&self, hostname: &str, org_id: Option<String>) -> IssuedToken {
        self.mint(
            NewToken {
                kind: TokenKind::Runner,
                name: format!("runner {hostname}"),
                org_id,
            },
            None,
        )
    }

    /// Makes a token committed elsewhere usable, and a replaced one unusable.
    pub fn remember_issued(&self, issued: &TokenRecord, replaced: Option<&TokenRecord>) {
        // The new one first: there is no moment without a usable token.
        self.active
            .insert(issued.hash, Arc::new(Principal::from_record(issued)));
        if let Some(old) = replaced {
            self.active.revoke(&old.hash);
        }
    }

    /// Drops a token (revoked in the store by the caller) from the in-memory set.
    pub async fn forget(&self, token_id: Uuid) {
        self.active.revoke_id(token_id);
    }

    fn mint(&self, new: NewToken, runner_id: Option<Uuid>) -> IssuedToken {
        let secret = format!("vlg_{}", hex(&self.ids.secret_bytes()));
        let record = TokenRecord {
            id: self.ids.uuid(),
            kind: new.kind,
            name: new.name,
            org_id: new.org_id,
            runner_id,
            hash: hash_secret(&secret),
            created_at: self.clock.now_ms(),
            revoked_at: None,
        };
        IssuedToken { record, secret }
    }

    fn remember(&self, record: &TokenRecord) {
        self.active
            .insert(record.hash, Arc::new(Principal::from_record(record)));
    }

    /// Creates the first admin token when the database has none. Returns its secret.
    pub async fn bootstrap_admin(&self) -> DomainResult<Option<String>> {
        let issued = self.mint(
            NewToken {
                kind: TokenKind::Admin,
                name: "bootstrap-admin".into(),
                org_id: None,
            },
            None,
        );
        let record = issued.record.clone();
        let created = self
            .store
            .write(move |w| {
                if w.any_token()? {
                    return Ok::<_, DomainError>(false);
                }
                w.put_token(&record)?;
                Ok(true)
            })
            .await?;
        if created {
            self.remember(&issued.record);
            Ok(Some(issued.secret))
        } else {
            Ok(None)
        }
    }

    /// `POST /tokens` (admin).
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn create(&self, caller: &Principal, new: NewToken) -> DomainResult<IssuedToken> {
        let (this, caller) = (self.clone(), caller.clone());
        detached(async move { this.create_now(&caller, new).await }).await
    }

    /// The body of [`Self::create`].
    async fn create_now(&self, caller: &Principal, new: NewToken) -> DomainResult<IssuedToken> {
        caller.require_admin()?;
        let mut issues = Vec::new();
        if new.name.trim().is_empty() || new.name.len() > MAX_TOKEN_NAME_CHARS {
            issues.push(Issue::new(
                "name",
                format!("must be 1 to {MAX_TOKEN_NAME_CHARS} characters"),
            ));
        }
        match (new.kind, &new.org_id) {
            (TokenKind::Org, None) => {
                issues.push(Issue::new("orgId", "is required for org tokens"))
            }
            (TokenKind::Admin, Some(_)) => {
                issues.push(Issue::new("orgId", "an admin token is not bound to an org"))
            }
            (TokenKind::Runner, _) => issues.push(Issue::new(
                "kind",
                "runner tokens are issued by runner registration",
            )),
            _ => {}
        }
        if let Some(org) = &new.org_id
            && !is_org_slug(org)
        {
            issues.push(Issue::new(
                "orgId",
                "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            ));
        }
        if !issues.is_empty() {
            return Err(DomainError::Validation(issues));
        }
        let issued = self.mint(new, None);
        let record = issued.record.clone();
        let who = caller.clone();
        self.store
            .write(move |w| {
                w.put_token(&record)?;
                // Built here rather than by the audit service, which sits above tokens.
                w.append_audit(AuditEntry::new(
                    who.token_id,
                    who.kind.as_str(),
                    &who.name,
                    "token.create",
                    record.id,
                    record.org_id.as_deref(),
                    record.created_at,
                ))
            })
            .await?;
        self.remember(&issued.record);
        Ok(issued)
    }

    /// `GET /tokens` (admin): every token, revoked ones too, without secrets.
    pub async fn list(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> DomainResult<Page<TokenRecord>> {
        caller.require_admin()?;
        let mut all = self.store.read(|r| r.all_tokens()).await?;
        all.sort_by_key(|t| (t.created_at, t.id));
        Ok(page.slice(all))
    }

    /// `DELETE /tokens/{id}` (admin). The last active admin token cannot be revoked: that would
    /// lock every operator out.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn revoke(&self, caller: &Principal, id: Uuid) -> DomainResult<TokenRecord> {
        let (this, caller) = (self.clone(), caller.clone());
        detached(async move { this.revoke_now(&caller, id).await }).await
    }

    /// The body of [`Self::revoke`].
    async fn revoke_now(&self, caller: &Principal, id: Uuid) -> DomainResult<TokenRecord> {
        caller.require_admin()?;
        let now = self.clock.now_ms();
        let who = caller.clone();
        let revoked = self
            .store
            .write(move |w| {
                let mut token = w
                    .get_token(id)?
                    .ok_or(DomainError::NotFound(Entity::Token))?;
                if token.revoked_at.is_some() {
                    return Ok(token);
                }
                if token.kind == TokenKind::Admin {
                    let admins = w
                        .all_tokens()?
                        .into_iter()
                        .filter(|t| t.kind == TokenKind::Admin && t.revoked_at.is_none())
                        .count();
                    if admins <= 1 {
                        return Err(DomainError::conflict(
                            Conflict::InvalidState,
                            "the last active admin token cannot be revoked",
                        ));
                    }
                }
                token.revoked_at = Some(now);
                w.put_token(&token)?;
                // Built here rather than by the audit service, which sits above tokens.
                w.append_audit(AuditEntry::new(
                    who.token_id,
                    who.kind.as_str(),
                    &who.name,
                    "token.revoke",
                    token.id,
                    token.org_id.as_deref(),
                    now,
                ))?;
                Ok(token)
            })
            .await?;
        self.active.revoke(&revoked.hash);
        Ok(revoked)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_slugs() {
        assert!(is_org_slug("acme"));
        assert!(is_org_slug("a.b_c-d9"));
        assert!(is_org_slug(&"a".repeat(64)));
        assert!(!is_org_slug(&"a".repeat(65)));
        assert!(!is_org_slug("-acme"));
        assert!(!is_org_slug(""));
        assert!(!is_org_slug("ac me"));
    }

    #[test]
    fn org_tokens_act_only_on_their_org() {
        let mut p = Principal::anonymous_admin();
        p.kind = TokenKind::Org;
        p.org_id = Some("acme".into());
        assert_eq!(p.resolve_org(None, "orgId").ok(), Some("acme".to_string()));
        assert!(matches!(
            p.resolve_org(Some("other"), "orgId"),
            Err(DomainError::Forbidden(_))
        ));
        assert!(p.sees_org("acme"));
        assert!(!p.sees_org("other"));
    }
}
