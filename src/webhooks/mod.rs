//! Webhooks: external systems get events as signed HTTP POSTs without holding a
//! socket. Each matching event becomes a delivery record in redb; a dispatcher posts it and
//! retries with exponential backoff up to `MAX_ATTEMPTS`, so pending deliveries survive a
//! restart. Targets are `http://` or `https://` (see `client`).

pub mod client;
pub mod dispatcher;
pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{Principal, TokenKind};
use crate::clock::{SharedClock, SharedIds};
use crate::detach::detached;
use crate::error::{DomainError, DomainResult, Entity, Issue};
use crate::events::BusEvent;
use crate::events::render;
use crate::metrics::Metrics;
use crate::store::Store;
pub use model::{
    Delivery, DeliveryStatus, FIRST_RETRY_MS, LOG_SIZE, MAX_ATTEMPTS, NotificationTarget,
    OrgNotifications, TargetKind, Webhook,
};

/// Notification targets one org may have.
pub const MAX_TARGETS_PER_ORG: usize = 20;

/// A notification target as a PUT names it.
pub struct NewTarget {
    pub id: String,
    pub kind: TargetKind,
    pub url: String,
    pub events: Vec<String>,
}

impl NotificationTarget {
    /// The target as the dispatcher sees a webhook: where to post, for which org, unsigned.
    fn as_webhook(&self, org_id: &str) -> Webhook {
        Webhook {
            id: self.delivery_id,
            url: self.url.clone(),
            events: self.events.clone(),
            org_id: Some(org_id.to_owned()),
            secret: None,
            created_at: 0,
        }
    }

    fn wants(&self, org_id: &str, event: &BusEvent) -> bool {
        self.events.iter().any(|e| e == "*" || e == event.name())
            && event.org_id.as_deref() == Some(org_id)
            && crate::events::is_public(event.name())
    }
}

impl Webhook {
    fn wants(&self, event: &BusEvent) -> bool {
        let named = self.events.iter().any(|e| e == "*" || e == event.name());
        let in_scope = match &self.org_id {
            None => true,
            Some(org) => event.org_id.as_deref() == Some(org.as_str()),
        };
        named && in_scope && crate::events::is_public(event.name())
    }
}

/// Backoff before attempt `attempts + 1`.
pub fn retry_delay_ms(attempts: u32) -> i64 {
    FIRST_RETRY_MS.saturating_mul(1i64 << attempts.saturating_sub(1).min(20))
}

/// `sha256=<hex HMAC-SHA256 of body>`, the `X-Village-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut key = [0u8; BLOCK];
    if secret.len() > BLOCK {
        key[..32].copy_from_slice(&Sha256::digest(secret.as_bytes()));
    } else {
        key[..secret.len()].copy_from_slice(secret.as_bytes());
    }
    let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(body)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    let hex: String = outer.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The rules of a webhook's fields, for the API to report with any other bad field.
pub fn check(url: &str, events: &[String], org_id: Option<&str>, issues: &mut Vec<Issue>) {
    if client::Target::parse(url).is_none() {
        issues.push(Issue::new(
            "url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    check_events(events, "events", issues);
    if org_id.is_some_and(|o| !crate::auth::is_org_slug(o)) {
        issues.push(Issue::new(
            "orgId",
            "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        ));
    }
}

/// Event names a webhook or notification target subscribes to, at `path`: at least one, each
/// a public event or `*`.
fn check_events(events: &[String], path: &str, issues: &mut Vec<Issue>) {
    if events.is_empty() {
        issues.push(Issue::new(path, "must name at least one event, or \"*\""));
    }
    for (i, e) in events.iter().enumerate() {
        if e != "*" && !crate::events::is_public(e) {
            issues.push(Issue::new(
                format!("{path}[{i}]"),
                format!("unknown event `{e}`"),
            ));
        }
    }
}

pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub org_id: Option<String>,
    pub secret: Option<String>,
}

#[derive(Clone)]
pub struct WebhookService {
    store: Store,
    clock: SharedClock,
    ids: SharedIds,
    /// Registered webhooks, mirrored for matching events without a read per event.
    hooks: Arc<RwLock<HashMap<Uuid, Webhook>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Signalled when a webhook is registered (the intake starts listening).
    registered: Arc<tokio::sync::Notify>,
    /// `webhooks.allowPrivateTargets`: targets may be private or reserved addresses.
    allow_private: bool,
    /// `webhooks.maxPerOrg`: webhooks an org (or the admin, for org-less ones) may register.
    max_per_org: usize,
    /// Creations one at a time, so the cap holds under concurrent calls.
    creating: Arc<tokio::sync::Mutex<()>>,
    /// Delivery attempts by outcome (`/metrics`).
    metrics: Arc<Metrics>,
    /// Every org's notification targets, mirrored like `hooks`.
    notifications: Arc<RwLock<HashMap<String, OrgNotifications>>>,
    /// `server.publicUrl`, or `http://` and the bound address once the server listens.
    public_url: Arc<RwLock<String>>,
    /// How `https://` targets are checked.
    tls: client::TlsConfig,
}

impl WebhookService {
    pub async fn load(
        store: Store,
        clock: SharedClock,
        ids: SharedIds,
        config: &crate::config::WebhooksConfig,
        public_url: Option<String>,
        tls: client::TlsConfig,
        metrics: Arc<Metrics>,
    ) -> DomainResult<Self> {
        let hooks = store.read(|r| r.all_webhooks()).await?;
        let notifications = store.read(|r| r.all_notifications()).await?;
        Ok(Self {
            notifications: Arc::new(RwLock::new(
                notifications
                    .into_iter()
                    .map(|n| (n.org_id.clone(), n))
                    .collect(),
            )),
            public_url: Arc::new(RwLock::new(public_url.unwrap_or_default())),
            tls,
            store,
            clock,
            ids,
            hooks: Arc::new(RwLock::new(hooks.into_iter().map(|h| (h.id, h)).collect())),
            wake: Arc::new(tokio::sync::Notify::new()),
            registered: Arc::new(tokio::sync::Notify::new()),
            allow_private: config.allow_private_targets,
            max_per_org: config.max_per_org,
            creating: Arc::default(),
            metrics,
        })
    }

    pub fn allows_private_targets(&self) -> bool {
        self.allow_private
    }

    pub fn tls(&self) -> &client::TlsConfig {
        &self.tls
    }

    fn scope(&self, p: &Principal) -> DomainResult<Option<String>> {
        match p.kind {
            TokenKind::Admin => Ok(None),
            TokenKind::Org => Ok(p.org_id.clone()),
            _ => Err(DomainError::forbidden(
                "webhooks need an admin or org token",
            )),
        }
    }

    fn visible(&self, p: &Principal, hook: &Webhook) -> bool {
        p.is_admin()
            || (p.kind == TokenKind::Org && hook.org_id == p.org_id && hook.org_id.is_some())
    }

    /// `POST /webhooks`.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn create(&self, p: &Principal, new: NewWebhook) -> DomainResult<Webhook> {
        let (this, p) = (self.clone(), p.clone());
        detached(async move { this.create_now(&p, new).await }).await
    }

    /// The body of [`Self::create`].
    async fn create_now(&self, p: &Principal, new: NewWebhook) -> DomainResult<Webhook> {
        let scope = self.scope(p)?;
        let org_id = match (scope, new.org_id) {
            (Some(own), Some(named)) if own != named => {
                return Err(DomainError::forbidden(
                    "an org token may add webhooks for its own org only",
                ));
            }
            (Some(own), _) => Some(own),
            (None, named) => named,
        };
        let mut issues = Vec::new();
        self.check_url(&new.url, "url", &mut issues).await;
        check_events(&new.events, "events", &mut issues);
        if !issues.is_empty() {
            return Err(DomainError::Validation(issues));
        }
        let _one_at_a_time = self.creating.lock().await;
        let registered = self.hooks().values().filter(|h| h.org_id == org_id).count();
        if registered >= self.max_per_org {
            return Err(DomainError::LimitExceeded {
                kind: crate::error::Limit::Webhooks,
                message: format!(
                    "{} already has {registered} webhooks, the most allowed (webhooks.maxPerOrg)",
                    org_id
                        .as_deref()
                        .map_or("the admin".to_string(), |o| format!("org {o}"))
                ),
            });
        }
        let now = self.clock.now_ms();
        let hook = Webhook {
            id: self.ids.uuid(),
            url: new.url,
            events: new.events,
            org_id,
            secret: new.secret,
            created_at: now,
        };
        let record = hook.clone();
        let who = p.clone();
        self.store
            .write(move |w| {
                w.put_webhook(&record)?;
                crate::audit::record(
                    w,
                    &who,
                    "webhook.create",
                    record.id,
                    record.org_id.as_deref(),
                    now,
                )
            })
            .await?;
        self.hooks_mut().insert(hook.id, hook.clone());
        self.registered.notify_one();
        Ok(hook)
    }

    fn hooks_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Webhook>> {
        self.hooks.write().unwrap_or_else(|p| p.into_inner())
    }

    fn hooks(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Webhook>> {
        self.hooks.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self, p: &Principal) -> DomainResult<Vec<Webhook>> {
        self.scope(p)?;
        let mut out: Vec<Webhook> = self
            .hooks()
            .values()
            .filter(|h| self.visible(p, h))
            .cloned()
            .collect();
        out.sort_by_key(|h| (h.created_at, h.id));
        Ok(out)
    }

    fn get_visible(&self, p: &Principal, id: Uuid) -> DomainResult<Webhook> {
        self.scope(p)?;
        self.hooks()
            .get(&id)
            .filter(|h| self.visible(p, h))
            .cloned()
            .ok_or(DomainError::NotFound(Entity::Webhook))
    }

    /// `DELETE /webhooks/{id}`: stops its pending deliveries too.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn delete(&self, p: &Principal, id: Uuid) -> DomainResult<Webhook> {
        let (this, p) = (self.clone(), p.clone());
        detached(async move { this.delete_now(&p, id).await }).await
    }

    /// The body of [`Self::delete`].
    async fn delete_now(&self, p: &Principal, id: Uuid) -> DomainResult<Webhook> {
        let hook = self.get_visible(p, id)?;
        let who = p.clone();
        let now = self.clock.now_ms();
        let org = hook.org_id.clone();
        self.store
            .write(move |w| {
                w.delete_webhook(id)?;
                crate::audit::record(w, &who, "webhook.delete", id, org.as_deref(), now)
            })
            .await?;
        self.hooks_mut().remove(&id);
        Ok(hook)
    }

    /// `GET /webhooks/{id}/deliveries`: the newest first.
    pub async fn deliveries(&self, p: &Principal, id: Uuid) -> DomainResult<Vec<Delivery>> {
        self.get_visible(p, id)?;
        Ok(self
            .store
            .read(move |r| r.webhook_deliveries(id, LOG_SIZE))
            .await?)
    }

    /// Turns bus events into pending deliveries for every webhook that wants them.
    pub async fn enqueue(&self, events: &[Arc<BusEvent>]) -> DomainResult<usize> {
        let now = self.clock.now_ms();
        let mut deliveries = Vec::new();
        {
            let hooks = self.hooks();
            for event in events {
                for hook in hooks.values().filter(|h| h.wants(event)) {
                    let id = self.ids.ordered_uuid(now);
                    let body = render::webhook_body(id, event);
                    deliveries.push(Delivery {
                        id,
                        webhook_id: hook.id,
                        event: event.name().to_owned(),
                        body,
                        status: DeliveryStatus::Pending,
                        attempts: 0,
                        last_status_code: None,
                        last_attempt_at: None,
                        next_attempt_at: now,
                        created_at: now,
                    });
                }
            }
        }
        let mut messages = Vec::new();
        {
            let notifications = self.notifications();
            for event in events {
                let Some(org) = event.org_id.as_deref() else {
                    continue;
                };
                let Some(n) = notifications.get(org) else {
                    continue;
                };
                for t in n.targets.iter().filter(|t| t.wants(org, event)) {
                    messages.push((t.clone(), event.clone(), self.ids.ordered_uuid(now)));
                }
            }
        }
        let n = deliveries.len() + messages.len();
        if n == 0 {
            return Ok(0);
        }
        let ids = self.ids.clone();
        let public_url = self.public_url();
        let written = self
            .store
            .write(move |w| {
                for (target, event, id) in &messages {
                    if let Some(d) = notification(w, target, event, *id, now, &*ids, &public_url)? {
                        deliveries.push(d);
                    }
                }
                for d in &deliveries {
                    w.put_delivery(d, None)?;
                    // Each webhook keeps twice its log size of finished deliveries.
                    w.trim_deliveries(d.webhook_id, LOG_SIZE * 2)?;
                }
                Ok::<_, DomainError>(deliveries.len())
            })
            .await?;
        self.wake.notify_one();
        Ok(written)
    }

    fn notifications(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, OrgNotifications>> {
        self.notifications.read().unwrap_or_else(|p| p.into_inner())
    }

    fn public_url(&self) -> String {
        self.public_url
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where links point when `server.publicUrl` is not set: the address the server listens on.
    pub fn listening_on(&self, addr: std::net::SocketAddr) {
        let mut url = self.public_url.write().unwrap_or_else(|p| p.into_inner());
        if url.is_empty() {
            *url = format!("http://{addr}");
        }
    }

    /// `GET /orgs/{orgId}/notifications` (org, admin).
    pub fn org_notifications(
        &self,
        p: &Principal,
        org_id: &str,
    ) -> DomainResult<Option<OrgNotifications>> {
        may_manage_org(p, org_id)?;
        Ok(self.notifications().get(org_id).cloned())
    }

    /// `PUT /orgs/{orgId}/notifications`: replaces the org's targets as a whole (audited
    /// `notifications.update`). A target that keeps its id keeps its pending deliveries.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn put_notifications(
        &self,
        p: &Principal,
        org_id: &str,
        targets: Vec<NewTarget>,
    ) -> DomainResult<OrgNotifications> {
        let (this, p, org) = (self.clone(), p.clone(), org_id.to_owned());
        detached(async move { this.put_notifications_now(&p, &org, targets).await }).await
    }

    async fn put_notifications_now(
        &self,
        p: &Principal,
        org_id: &str,
        targets: Vec<NewTarget>,
    ) -> DomainResult<OrgNotifications> {
        may_manage_org(p, org_id)?;
        let mut issues = Vec::new();
        if targets.len() > MAX_TARGETS_PER_ORG {
            issues.push(Issue::new(
                "targets",
                format!("must hold at most {MAX_TARGETS_PER_ORG} targets"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in targets.iter().enumerate() {
            if !crate::policy::is_rule_id(&t.id) {
                issues.push(Issue::new(
                    format!("targets[{i}].id"),
                    "must match ^[a-z0-9_-]{1,64}$",
                ));
            } else if !seen.insert(t.id.as_str()) {
                issues.push(Issue::new(
                    format!("targets[{i}].id"),
                    format!(
                        "`{}` is the id of an earlier target; ids must be unique",
                        t.id
                    ),
                ));
            }
            self.check_url(&t.url, &format!("targets[{i}].url"), &mut issues)
                .await;
            check_events(&t.events, &format!("targets[{i}].events"), &mut issues);
        }
        if !issues.is_empty() {
            return Err(DomainError::Validation(issues));
        }
        let _one_at_a_time = self.creating.lock().await;
        let before = self.notifications().get(org_id).cloned();
        let kept = |id: &str| {
            before
                .as_ref()
                .and_then(|b| b.targets.iter().find(|t| t.id == id))
                .map(|t| t.delivery_id)
        };
        let record = OrgNotifications {
            org_id: org_id.to_owned(),
            targets: targets
                .into_iter()
                .map(|t| NotificationTarget {
                    delivery_id: kept(&t.id).unwrap_or_else(|| self.ids.uuid()),
                    id: t.id,
                    kind: t.kind,
                    url: t.url,
                    events: t.events,
                })
                .collect(),
        };
        let (saved, who, now) = (record.clone(), p.clone(), self.clock.now_ms());
        self.store
            .write(move |w| {
                w.put_notifications(&saved)?;
                crate::audit::record(
                    w,
                    &who,
                    "notifications.update",
                    &saved.org_id,
                    Some(&saved.org_id),
                    now,
                )
            })
            .await?;
        self.notifications
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org_id.to_owned(), record.clone());
        self.registered.notify_one();
        Ok(record)
    }

    /// A target URL's checks, as for webhooks: `http://` with a host, and no private or
    /// reserved address unless `webhooks.allowPrivateTargets`.
    async fn check_url(&self, url: &str, path: &str, issues: &mut Vec<Issue>) {
        match client::Target::parse(url) {
            None => issues.push(Issue::new(
                path,
                "must be an http:// or https:// URL with a host",
            )),
            // A host that does not resolve now is accepted: deliveries check again, every time.
            Some(target) => {
                if let Err(why) = client::resolve(&target, self.allow_private).await
                    && why.contains("private or reserved")
                {
                    issues.push(Issue::new(
                        path,
                        format!(
                            "must not point at a loopback, private, link-local or other reserved \
                             address ({why}; an admin may allow them with webhooks.allowPrivateTargets)"
                        ),
                    ));
                }
            }
        }
    }

    /// Each registered webhook's org (`None` for the admin's org-less ones).
    pub fn orgs_of_webhooks(&self) -> HashMap<Uuid, Option<String>> {
        let mut orgs: HashMap<Uuid, Option<String>> = self
            .hooks()
            .values()
            .map(|h| (h.id, h.org_id.clone()))
            .collect();
        for n in self.notifications().values() {
            for t in &n.targets {
                orgs.insert(t.delivery_id, Some(n.org_id.clone()));
            }
        }
        orgs
    }

    /// The webhook, or the notification target, that deliveries stored under `id` go to.
    pub fn webhook(&self, id: Uuid) -> Option<Webhook> {
        if let Some(hook) = self.hooks().get(&id) {
            return Some(hook.clone());
        }
        self.notifications().values().find_map(|n| {
            n.targets
                .iter()
                .find(|t| t.delivery_id == id)
                .map(|t| t.as_webhook(&n.org_id))
        })
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn has_hooks(&self) -> bool {
        !self.hooks().is_empty() || self.notifications().values().any(|n| !n.targets.is_empty())
    }

    pub fn registered(&self) -> Arc<tokio::sync::Notify> {
        self.registered.clone()
    }

    pub fn wakeup(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }
}

/// Who may read and replace an org's notification targets: its org tokens and admins.
fn may_manage_org(p: &Principal, org_id: &str) -> DomainResult<()> {
    p.require_org_member_or_admin(org_id, "notifications")
}

/// The delivery of `event` to a notification target, inside the enqueue's write job. An
/// `approval_requested` message gets a fresh approval link, stored hashed; an approval that is
/// already decided (the org's policy decided it as it was asked, or a human was quicker)
/// sends no message at all.
fn notification(
    w: &mut dyn crate::store::WriteTxn,
    target: &NotificationTarget,
    event: &BusEvent,
    id: Uuid,
    now: crate::clock::Millis,
    ids: &dyn crate::clock::IdSource,
    public_url: &str,
) -> DomainResult<Option<Delivery>> {
    use crate::events::model::{DomainEvent, SessionEventData};
    let mut extras = render::NotificationExtras::default();
    if let Some(session_id) = event.session_id {
        extras.repo_url = w.get_session(session_id)?.map(|s| s.repo.url);
    }
    if let (
        DomainEvent::Session(SessionEventData::ApprovalRequested { approval_id, .. }),
        Some(session_id),
        Some(org_id),
    ) = (&event.event, event.session_id, event.org_id.as_deref())
    {
        let Some(approval) = w
            .get_approval(session_id, *approval_id)?
            .filter(|a| a.resolution.is_none() && a.expires_at > now)
        else {
            return Ok(None);
        };
        let secret = format!("vlk_{}", hex(&ids.secret_bytes()));
        w.put_approval_link(
            &crate::auth::hash_secret(&secret),
            &crate::sessions::model::ApprovalLink {
                session_id,
                approval_id: approval.id,
                org_id: org_id.to_owned(),
                target_id: target.id.clone(),
                expires_at: approval.expires_at,
            },
        )?;
        extras.approval_url = Some(format!("{public_url}/approve/{secret}"));
    }
    Ok(Some(Delivery {
        id,
        webhook_id: target.delivery_id,
        event: event.name().to_owned(),
        body: render::notification_body(target.kind, id, event, &extras),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_status_code: None,
        last_attempt_at: None,
        next_attempt_at: now,
        created_at: now,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles() {
        assert_eq!(
            (1..=7).map(retry_delay_ms).collect::<Vec<_>>(),
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000]
        );
    }
}
