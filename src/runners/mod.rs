//! The runner fleet: registration, heartbeats, liveness, drain, deregistration,
//! the fleet summary, and scheduling of queued sessions onto runners.
//!
//! Registrations are durable records. Liveness (last heartbeat, load, versions) lives in memory
//! and reaches disk in batches, so a heartbeat never waits for a disk write. Status is derived
//! from timestamps; one sweeper applies its side effects (events, giving up a lost runner's
//! sessions, drain completion).

pub mod model;
pub mod scheduler;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::auth::{AuthService, Principal, TokenKind};
use crate::clock::{Millis, SharedClock, SharedIds, ms};
use crate::config::RunnersConfig;
use crate::detach::detached;
use crate::error::{Conflict, ConflictDetails, DomainError, DomainResult, Entity, Issue, Limit};
use crate::events::EventBus;
use crate::events::model::{BusEvent, DomainEvent, RunnerEventKind};
use crate::paging::{Page, PageRequest};
use crate::sessions::model::{Provider, SessionState};
use crate::sessions::{Release, SessionService};
use crate::store::{AfterCommit, Store};
use model::*;

/// The longest hostname a runner may register with (a DNS name).
pub const MAX_HOSTNAME_CHARS: usize = 253;

/// A runner's stored last-seen time is refreshed at least this often while it beats.
pub const LIVENESS_REFRESH_MS: Millis = 300_000;
/// Liveness records per write job of the periodic flush. Runner ids are random, so each record
/// of a slice lands on a page of its own: 64 added about four times a create's pages to the
/// batch that carried them, and the writers in that batch waited for it; 16 keep a slice near
/// what an ordinary batch writes.
const LIVENESS_SLICE: usize = 16;
/// Liveness records per write job of the flush at shutdown, when nobody waits behind it.
const LIVENESS_SLICE_AT_SHUTDOWN: usize = 256;

/// A runner as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerView {
    pub record: RunnerRecord,
    pub live: Liveness,
    pub status: RunnerStatus,
    /// Sessions it holds (assigned or running).
    pub sessions: u64,
}

pub struct Registration {
    pub hostname: String,
    pub capabilities: Capabilities,
    /// `None`: use `runners.defaultCapacity`.
    pub max_concurrent_sessions: Option<u64>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub runner_id: Uuid,
    pub timestamp: Millis,
    pub active_sessions: Vec<Uuid>,
    pub load: Load,
    pub runtime_versions: BTreeMap<String, String>,
    pub build_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatReply {
    pub status: RunnerStatus,
    pub drain: bool,
    pub heartbeat_interval_ms: u64,
}

/// One runner as the update pipeline sees it.
#[derive(Debug, Clone)]
pub struct RunnerBuild {
    pub runner_id: Uuid,
    pub org_id: Option<String>,
    pub build_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RunnerFilter {
    pub status: Option<RunnerStatus>,
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetSummary {
    pub online: u64,
    pub offline: u64,
    pub draining: u64,
    pub capacity_total: u64,
    pub capacity_used: u64,
    pub capacity_available: u64,
    pub sessions_by_state: BTreeMap<&'static str, u64>,
}

struct Entry {
    /// Shared, so that a scheduling pass takes the fleet without copying it.
    record: Arc<RunnerRecord>,
    live: Liveness,
    /// Liveness changed since it was last written to disk (written at shutdown).
    unsaved: bool,
    /// Liveness must be written at the next periodic flush: what a restart needs changed (the
    /// build, versions or sessions it reports), or the stored last-seen time is older than
    /// `LIVENESS_REFRESH_MS`. A beat that only moves the clock and the load figures is not
    /// written: a restart grants every runner its grace period anyway.
    due: bool,
    /// The last-seen time last written to disk.
    saved_beat: Millis,
    /// The status the sweeper last announced (events fire on a change).
    announced: RunnerStatus,
}

impl Entry {
    /// Takes a record written to disk, unless memory already holds a newer one (two writes
    /// may finish in one order and reach memory in the other).
    fn adopt(&mut self, record: RunnerRecord) {
        if record.revision >= self.record.revision {
            self.record = Arc::new(record);
        }
    }
}

#[derive(Debug, Clone)]
struct Timing {
    heartbeat_timeout_ms: i64,
    lost_after_ms: i64,
    restart_grace_ms: i64,
    /// When this server process started, or when the wall clock last stepped forward (see
    /// `WallClockWatch`): no runner is offline before this + the grace.
    grace_from: Arc<AtomicI64>,
}

impl Timing {
    /// Silence counted from the last heartbeat, but never from before the restart grace.
    fn silence(&self, live: &Liveness, limit: i64, now: Millis) -> bool {
        let grace_floor = self.grace_from.load(Ordering::Relaxed) + self.restart_grace_ms - limit;
        now - live.last_heartbeat.max(grace_floor) > limit
    }

    /// The wall clock stepped forward to `now`: every runner gets the grace of a restart
    /// again, as none could have beaten during the step.
    fn grant_grace_from(&self, now: Millis) {
        self.grace_from.fetch_max(now, Ordering::Relaxed);
    }

    fn is_offline(&self, live: &Liveness, now: Millis) -> bool {
        self.silence(live, self.heartbeat_timeout_ms, now)
    }

    fn is_lost(&self, live: &Liveness, now: Millis) -> bool {
        self.silence(live, self.lost_after_ms, now)
    }

    fn status(&self, e: &Entry, now: Millis) -> RunnerStatus {
        if self.is_offline(&e.live, now) {
            RunnerStatus::Offline
        } else if e.record.draining {
            RunnerStatus::Draining
        } else {
            RunnerStatus::Online
        }
    }
}

#[derive(Clone)]
pub struct RunnerService {
    store: Store,
    bus: EventBus,
    auth: AuthService,
    sessions: SessionService,
    clock: SharedClock,
    ids: SharedIds,
    timing: Timing,
    default_capacity: u64,
    max_runners_per_org: u64,
    /// `runners.sharedRunnerOrgs`: the orgs whose sessions shared runners may run (all when
    /// `None`). A shared runner receives its sessions' env values.
    shared_runner_orgs: Option<Arc<std::collections::HashSet<String>>>,
    fleet: Arc<Fleet>,
    /// Liveness records written by flushes since start (benchmarks and tests count them).
    liveness_written: Arc<std::sync::atomic::AtomicU64>,
}

/// What scheduling reads of the fleet: the runners with a live channel and their status, the
/// clock, ids and the shared runners' orgs. It holds no store, so the store's writer thread
/// can keep one for the placement step without keeping itself alive.
#[derive(Clone)]
pub struct PlacementView {
    bus: EventBus,
    fleet: Arc<Fleet>,
    timing: Timing,
    clock: SharedClock,
    ids: SharedIds,
    shared_runner_orgs: Option<Arc<std::collections::HashSet<String>>>,
}

impl PlacementView {
    /// The runners that may be given work now, with their last reported CPU load.
    pub fn schedulable(&self) -> Vec<(Arc<RunnerRecord>, f64)> {
        let now = self.clock.now_ms();
        // Only runners with a live channel can be given work: start from those (a big fleet
        // may have few of them), not from the whole fleet.
        let mut out = Vec::new();
        for id in self.bus.attached_runners() {
            if let Some(e) = self.fleet.shard(&id).get(&id)
                && self.timing.status(e, now) == RunnerStatus::Online
            {
                out.push((e.record.clone(), e.live.load.cpu_percent));
            }
        }
        out
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Wakes the scheduler task for a pass over the whole queue.
    pub fn kick_scheduler(&self) {
        self.bus.kick_scheduler();
    }

    pub fn ids(&self) -> &SharedIds {
        &self.ids
    }

    pub fn shared_runner_orgs(&self) -> Option<Arc<std::collections::HashSet<String>>> {
        self.shared_runner_orgs.clone()
    }
}

impl RunnerService {
    /// Loads every registered runner and its last known liveness.
    pub async fn load(
        store: Store,
        bus: EventBus,
        auth: AuthService,
        sessions: SessionService,
        clock: SharedClock,
        ids: SharedIds,
        cfg: &RunnersConfig,
    ) -> DomainResult<Self> {
        let (records, lives) = store
            .read(|r| Ok::<_, DomainError>((r.all_runners()?, r.all_liveness()?)))
            .await?;
        let mut lives: HashMap<Uuid, Liveness> = lives.into_iter().collect();
        let booted_at = clock.now_ms();
        let timing = Timing {
            heartbeat_timeout_ms: ms(cfg.heartbeat_timeout),
            lost_after_ms: ms(cfg.lost_after),
            restart_grace_ms: ms(cfg.restart_grace),
            grace_from: Arc::new(AtomicI64::new(booted_at)),
        };
        let fleet: Vec<(Uuid, Entry)> = records
            .into_iter()
            .map(|record| {
                let live = lives
                    .remove(&record.id)
                    .unwrap_or_else(|| fresh_liveness(record.registered_at));
                let saved_beat = live.last_heartbeat;
                let mut entry = Entry {
                    record: Arc::new(record),
                    live,
                    unsaved: false,
                    due: false,
                    saved_beat,
                    announced: RunnerStatus::Online,
                };
                entry.announced = timing.status(&entry, booted_at);
                (entry.record.id, entry)
            })
            .collect();
        Ok(Self {
            store,
            bus,
            auth,
            sessions,
            clock,
            ids,
            timing,
            default_capacity: cfg.default_capacity,
            max_runners_per_org: cfg.max_runners_per_org,
            shared_runner_orgs: cfg
                .shared_runner_orgs
                .as_ref()
                .map(|orgs| Arc::new(orgs.iter().cloned().collect())),
            fleet: Arc::new(Fleet::new(fleet)),
            liveness_written: Arc::default(),
        })
    }

    /// The orgs shared runners may serve (`None`: every org).
    pub fn shared_runner_orgs(&self) -> Option<Arc<std::collections::HashSet<String>>> {
        self.shared_runner_orgs.clone()
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The shard of the in-memory fleet that holds runner `id`, locked.
    fn fleet(&self, id: &Uuid) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.fleet.shard(id)
    }

    /// How often runners should beat: a third of the offline timeout.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        (self.timing.heartbeat_timeout_ms / 3).max(100) as u64
    }

    /// Publishes events that follow from in-memory state (liveness) through a write job of
    /// their own, so that they reach subscribers in commit order like every other event.
    async fn announce(&self, events: Vec<BusEvent>) -> DomainResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |w| {
                for e in events {
                    w.emit(e);
                }
                Ok::<_, DomainError>(())
            })
            .await
    }

    /// `POST /runners/register`: idempotent by hostname; each call issues a fresh runner token
    /// and revokes the previous one.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn register(
        &self,
        p: &Principal,
        reg: Registration,
    ) -> DomainResult<(RunnerView, String, bool)> {
        let (this, p) = (self.clone(), p.clone());
        detached(async move { this.register_now(&p, reg).await }).await
    }

    /// The body of [`Self::register`].
    async fn register_now(
        &self,
        p: &Principal,
        reg: Registration,
    ) -> DomainResult<(RunnerView, String, bool)> {
        let org_id = match p.kind {
            TokenKind::Admin => None,
            TokenKind::RunnerJoin => p.org_id.clone(),
            _ => {
                return Err(DomainError::forbidden(
                    "registering a runner needs a runner_join or admin token",
                ));
            }
        };
        let now = self.now();
        let new_id = self.ids.uuid();
        let max_per_org = self.max_runners_per_org;
        let capacity = reg.max_concurrent_sessions.unwrap_or(self.default_capacity);
        let issued = self.auth.mint_runner_token(&reg.hostname, org_id.clone());
        let token = issued.record.clone();
        let fleet = self.fleet.clone();
        let hostname = reg.hostname.clone();
        let metadata_json = reg.metadata.map(|m| m.to_string());
        let mut capabilities = reg.capabilities;
        capabilities.max_concurrent_sessions = capacity;
        let who = p.clone();
        let (record, previous_token, created) = self
            .store
            .write(move |w| {
                let existing = match w.runner_by_hostname(&hostname)? {
                    Some(id) => w.get_runner(id)?,
                    None => None,
                };
                // A hostname belongs to one org (or the shared pool): a join token of another
                // scope may not take over its runner, its sessions or its commands. Admin
                // re-registration keeps the runner where it is.
                let org_id = match (&existing, who.kind) {
                    (Some(r), TokenKind::Admin) => r.org_id.clone(),
                    (Some(r), _) if r.org_id != org_id => {
                        return Err(DomainError::forbidden(
                            "this hostname is registered to another org's runner",
                        ));
                    }
                    _ => org_id,
                };
                let moves_org = existing.as_ref().is_none_or(|r| r.org_id != org_id);
                if let (Some(org), true) = (&org_id, moves_org) {
                    let in_org = w
                        .all_runners()?
                        .iter()
                        .filter(|r| r.org_id.as_ref() == Some(org))
                        .count() as u64;
                    if in_org >= max_per_org {
                        return Err(DomainError::LimitExceeded {
                            kind: Limit::Runners,
                            message: format!(
                                "org {org} already has {in_org} runners (limit {max_per_org})"
                            ),
                        });
                    }
                }
                let id = existing.as_ref().map_or(new_id, |r| r.id);
                let mut token = token;
                token.runner_id = Some(id);
                let mut record = RunnerRecord {
                    id,
                    hostname,
                    org_id,
                    capabilities,
                    metadata_json,
                    registered_at: existing.as_ref().map_or(now, |r| r.registered_at),
                    token_id: token.id,
                    draining: existing.as_ref().is_some_and(|r| r.draining),
                    drained_at: existing.as_ref().and_then(|r| r.drained_at),
                    revision: 0,
                };
                let previous = match &existing {
                    Some(r) => w.get_token(r.token_id)?,
                    None => None,
                };
                if let Some(mut old) = previous.clone() {
                    old.revoked_at = Some(now);
                    w.put_token(&old)?;
                }
                w.put_token(&token)?;
                w.put_runner(&mut record)?;
                let registered = record.clone();
                w.after_commit(fleet_hook(&fleet, registered.id, move |f| {
                    let entry = f.entry(registered.id).or_insert_with(|| Entry {
                        record: Arc::new(registered.clone()),
                        live: fresh_liveness(now),
                        unsaved: true,
                        due: true,
                        saved_beat: now,
                        announced: RunnerStatus::Online,
                    });
                    entry.adopt(registered);
                    // Registering is a sign of life.
                    entry.live.last_heartbeat = now;
                    entry.unsaved = true;
                    entry.due = true;
                }));
                if existing.is_none() {
                    w.emit(runner_event(RunnerEventKind::Registered, &record, now));
                }
                crate::audit::record(
                    w,
                    &who,
                    "runner.register",
                    record.id,
                    record.org_id.as_deref(),
                    now,
                )?;
                Ok((record, previous, existing.is_none()))
            })
            .await?;
        let mut issued = issued;
        issued.record.runner_id = Some(record.id);
        self.auth
            .remember_issued(&issued.record, previous_token.as_ref());
        let view = {
            let mut fleet = self.fleet(&record.id);
            let entry = fleet
                .get_mut(&record.id)
                .ok_or(DomainError::NotFound(Entity::Runner))?;
            self.view_of(entry, now, 0)
        };
        if !created {
            self.bus.kick_scheduler();
        }
        let sessions = self
            .store
            .read(move |r| r.runner_load(record.id))
            .await
            .map_err(DomainError::from)?;
        Ok((RunnerView { sessions, ..view }, issued.secret, created))
    }

    fn view_of(&self, e: &Entry, now: Millis, sessions: u64) -> RunnerView {
        RunnerView {
            record: RunnerRecord::clone(&e.record),
            live: e.live.clone(),
            status: self.timing.status(e, now),
            sessions,
        }
    }

    /// Only the runner itself (or admin) may act for a runner id; an unknown id is 404.
    fn check_self(&self, p: &Principal, id: Uuid) -> DomainResult<()> {
        if !self.fleet(&id).contains_key(&id) {
            return Err(DomainError::NotFound(Entity::Runner));
        }
        Self::may_act_for(p, id)
    }

    /// The runner itself, or an admin.
    fn may_act_for(p: &Principal, id: Uuid) -> DomainResult<()> {
        match p.kind {
            TokenKind::Admin => Ok(()),
            TokenKind::Runner if p.runner_id == Some(id) => Ok(()),
            _ => Err(DomainError::forbidden(
                "this token may not act for that runner",
            )),
        }
    }

    /// Who may open a runner's channel: the runner itself (admin too, for debugging).
    pub fn check_channel(&self, p: &Principal, id: Uuid) -> DomainResult<()> {
        self.check_self(p, id)
    }

    /// `POST /runners/{id}/heartbeat` (and the channel's `heartbeat` frame). Memory only: one
    /// lock of the fleet, nothing cloned unless the runner comes back from offline. `answer`
    /// runs under that lock with the runner's org and its liveness as just reported (the
    /// update pipeline decides the build it should run from them).
    pub fn heartbeat<T>(
        &self,
        p: &Principal,
        id: Uuid,
        hb: Heartbeat,
        answer: impl FnOnce(Option<&str>, &Liveness) -> T,
    ) -> DomainResult<(HeartbeatReply, T)> {
        let now = self.now();
        let mut fleet = self.fleet(&id);
        let entry = fleet
            .get_mut(&id)
            .ok_or(DomainError::NotFound(Entity::Runner))?;
        Self::may_act_for(p, id)?;
        if hb.runner_id != id {
            return Err(DomainError::invalid(
                "runnerId",
                "must be the runner id of the path",
            ));
        }
        let was = entry.announced;
        let restart_relevant = entry.live.build_id != hb.build_id
            || entry.live.runtime_versions != hb.runtime_versions
            || entry.live.active_sessions != hb.active_sessions;
        entry.live = Liveness {
            last_heartbeat: now,
            load: hb.load,
            runtime_versions: hb.runtime_versions,
            build_id: hb.build_id,
            active_sessions: hb.active_sessions,
        };
        entry.unsaved = true;
        entry.due |=
            restart_relevant || now.saturating_sub(entry.saved_beat) >= LIVENESS_REFRESH_MS;
        let status = self.timing.status(entry, now);
        entry.announced = status;
        let reply = HeartbeatReply {
            status,
            drain: entry.record.draining,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
        };
        let answered = answer(entry.record.org_id.as_deref(), &entry.live);
        if was == RunnerStatus::Offline {
            let record = RunnerRecord::clone(&entry.record);
            let reported = entry.live.active_sessions.clone();
            drop(fleet);
            self.came_back(record, reported, now);
        }
        Ok((reply, answered))
    }

    /// A runner beat again after it was announced offline: announce it online, and stop
    /// whatever it still runs that is no longer its own.
    fn came_back(&self, record: RunnerRecord, reported: Vec<Uuid>, now: Millis) {
        let id = record.id;
        let service = self.clone();
        let online = runner_event(RunnerEventKind::Online, &record, now);
        tokio::spawn(async move {
            if let Err(e) = service.announce(vec![online]).await {
                // Not announced: the sweep sees it come back again and retries.
                tracing::error!(error = %e, runner = %id, "announcing a returning runner failed");
                if let Some(entry) = service.fleet(&id).get_mut(&id) {
                    entry.announced = RunnerStatus::Offline;
                }
            }
        });
        // While it was away its sessions may have been failed or given to another runner.
        if !reported.is_empty() {
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(e) = service.stop_foreign_sessions(id, reported).await {
                    tracing::error!(error = %e, runner = %id, "reconciling a returning runner failed");
                }
            });
        }
    }

    /// Sends `stop_session` for each session the runner reports that is not assigned to it
    /// (or has ended), unless one is already waiting in its outbox.
    async fn stop_foreign_sessions(&self, runner: Uuid, reported: Vec<Uuid>) -> DomainResult<()> {
        let now = self.now();
        self.store
            .write(move |w| {
                let pending: Vec<Uuid> = w
                    .outbox(runner)?
                    .into_iter()
                    .filter(|e| matches!(e.command, RunnerCommand::StopSession { .. }))
                    .filter_map(|e| e.command.session_id())
                    .collect();
                for id in reported {
                    let owned = w
                        .get_session(id)?
                        .is_some_and(|s| s.runner_id == Some(runner) && !s.state.is_terminal());
                    if !owned && !pending.contains(&id) {
                        let reason = "this runner no longer holds the session".to_owned();
                        w.enqueue_command(
                            runner,
                            RunnerCommand::StopSession {
                                session_id: id,
                                reason,
                            },
                            now,
                        )?;
                    }
                }
                Ok::<_, DomainError>(())
            })
            .await
    }

    pub async fn get(&self, p: &Principal, id: Uuid) -> DomainResult<RunnerView> {
        let now = self.now();
        let view = {
            let fleet = self.fleet(&id);
            let e = fleet
                .get(&id)
                .ok_or(DomainError::NotFound(Entity::Runner))?;
            self.visible(p, &e.record)?;
            self.view_of(e, now, 0)
        };
        let sessions = self
            .store
            .read(move |r| r.runner_load(id))
            .await
            .map_err(DomainError::from)?;
        Ok(RunnerView { sessions, ..view })
    }

    /// Admin sees every runner; an org token its own org's (others are not found).
    fn visible(&self, p: &Principal, r: &RunnerRecord) -> DomainResult<()> {
        match p.kind {
            TokenKind::Admin => Ok(()),
            TokenKind::Org if r.org_id.is_some() && r.org_id == p.org_id => Ok(()),
            TokenKind::Org => Err(DomainError::NotFound(Entity::Runner)),
            TokenKind::Runner if p.runner_id == Some(r.id) => Ok(()),
            _ => Err(DomainError::forbidden("this token may not read the fleet")),
        }
    }

    fn views(&self, p: &Principal, loads: &HashMap<Uuid, u64>) -> DomainResult<Vec<RunnerView>> {
        match p.kind {
            TokenKind::Admin | TokenKind::Org => {}
            _ => return Err(DomainError::forbidden("this token may not read the fleet")),
        }
        let now = self.now();
        let mut views = Vec::new();
        self.fleet.each(|e| {
            if self.visible(p, &e.record).is_ok() {
                views.push(self.view_of(e, now, loads.get(&e.record.id).copied().unwrap_or(0)));
            }
        });
        Ok(views)
    }

    pub async fn list(
        &self,
        p: &Principal,
        filter: RunnerFilter,
        page: PageRequest,
    ) -> DomainResult<Page<RunnerView>> {
        let loads = self
            .store
            .read(|r| r.runner_loads())
            .await
            .map_err(DomainError::from)?;
        let mut views: Vec<RunnerView> = self
            .views(p, &loads)?
            .into_iter()
            .filter(|v| filter.status.is_none_or(|s| v.status == s))
            .filter(|v| {
                filter
                    .provider
                    .is_none_or(|pr| v.record.capabilities.providers.contains(&pr))
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.record.hostname, a.record.id).cmp(&(&b.record.hostname, b.record.id))
        });
        Ok(page.slice(views))
    }

    /// `GET /fleet`.
    pub async fn summary(&self, p: &Principal) -> DomainResult<FleetSummary> {
        let org = match p.kind {
            TokenKind::Admin => None,
            TokenKind::Org => p.org_id.clone(),
            _ => return Err(DomainError::forbidden("this token may not read the fleet")),
        };
        let (loads, sessions) = self
            .store
            .read(move |r| {
                let sessions = match &org {
                    Some(org) => r.org_sessions(org)?,
                    None => r.all_sessions()?,
                };
                Ok::<_, DomainError>((r.runner_loads()?, sessions))
            })
            .await?;
        let views = self.views(p, &loads)?;
        let mut s = FleetSummary {
            online: 0,
            offline: 0,
            draining: 0,
            capacity_total: 0,
            capacity_used: 0,
            capacity_available: 0,
            sessions_by_state: SessionState::ALL
                .iter()
                .map(|st| (st.as_str(), 0))
                .collect(),
        };
        for v in &views {
            let cap = v.record.capabilities.max_concurrent_sessions;
            match v.status {
                RunnerStatus::Online => {
                    s.online += 1;
                    s.capacity_available += cap.saturating_sub(v.sessions);
                }
                RunnerStatus::Offline => s.offline += 1,
                RunnerStatus::Draining => s.draining += 1,
            }
            if v.status != RunnerStatus::Offline {
                s.capacity_total += cap;
                s.capacity_used += v.sessions;
            }
        }
        for session in sessions {
            *s.sessions_by_state
                .entry(session.state.as_str())
                .or_default() += 1;
        }
        Ok(s)
    }

    /// `POST /runners/{id}/drain` and `/undrain` (admin).
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn set_draining(
        &self,
        p: &Principal,
        id: Uuid,
        draining: bool,
    ) -> DomainResult<RunnerView> {
        let (this, p) = (self.clone(), p.clone());
        detached(async move { this.set_draining_now(&p, id, draining).await }).await
    }

    /// The body of [`Self::set_draining`].
    async fn set_draining_now(
        &self,
        p: &Principal,
        id: Uuid,
        draining: bool,
    ) -> DomainResult<RunnerView> {
        p.require_admin()?;
        let who = p.clone();
        let now = self.now();
        let fleet = self.fleet.clone();
        self.store
            .write(move |w| {
                let mut r = w
                    .get_runner(id)?
                    .ok_or(DomainError::NotFound(Entity::Runner))?;
                if r.draining != draining {
                    r.draining = draining;
                    r.drained_at = None;
                    w.put_runner(&mut r)?;
                    if draining {
                        w.enqueue_command(id, RunnerCommand::Drain, now)?;
                    } else {
                        // A drain the runner has not taken yet (it was away) must not reach
                        // it after all: it would stop taking work while counted online.
                        w.remove_commands(id, &mut |e| matches!(e.command, RunnerCommand::Drain))?;
                    }
                    let (action, kind) = if draining {
                        ("runner.drain", RunnerEventKind::Draining)
                    } else {
                        ("runner.undrain", RunnerEventKind::Undrained)
                    };
                    // The scheduler reads the fleet when the event wakes it: memory first.
                    let changed = r.clone();
                    w.after_commit(fleet_hook(&fleet, changed.id, move |f| {
                        if let Some(e) = f.get_mut(&changed.id) {
                            e.adopt(changed);
                        }
                    }));
                    w.emit(runner_event(kind, &r, now));
                    crate::audit::record(w, &who, action, id, r.org_id.as_deref(), now)?;
                }
                Ok::<_, DomainError>(r)
            })
            .await?;
        self.get(p, id).await
    }

    /// `DELETE /runners/{id}` (admin). Active sessions need `force`, which re-queues those not
    /// started and fails the started ones with `runner_deregistered`.
    /// Runs to its end even if the caller stops waiting (see `detach`).
    pub async fn deregister(
        &self,
        p: &Principal,
        id: Uuid,
        force: bool,
    ) -> DomainResult<RunnerRecord> {
        let (this, p) = (self.clone(), p.clone());
        detached(async move { this.deregister_now(&p, id, force).await }).await
    }

    /// The body of [`Self::deregister`].
    async fn deregister_now(
        &self,
        p: &Principal,
        id: Uuid,
        force: bool,
    ) -> DomainResult<RunnerRecord> {
        p.require_admin()?;
        let now = self.now();
        let sessions = self.sessions.clone();
        let fleet = self.fleet.clone();
        let who = p.clone();
        let record = self
            .store
            .write(move |w| {
                let r = w
                    .get_runner(id)?
                    .ok_or(DomainError::NotFound(Entity::Runner))?;
                let active = w.runner_sessions(id)?;
                if !active.is_empty() && !force {
                    return Err(DomainError::Conflict {
                        kind: Conflict::RunnerHasActiveSessions,
                        message: format!(
                            "runner has {} active sessions; use ?force=true",
                            active.len()
                        ),
                        details: Some(ConflictDetails::ActiveSessions(active)),
                    });
                }
                sessions.release_runner_sessions(w, id, Release::Deregistered, now)?;
                if let Some(mut token) = w.get_token(r.token_id)? {
                    token.revoked_at = Some(now);
                    w.put_token(&token)?;
                }
                w.delete_runner(&r)?;
                w.after_commit(fleet_hook(&fleet, id, move |f| {
                    f.remove(&id);
                }));
                w.emit(runner_event(RunnerEventKind::Deregistered, &r, now));
                crate::audit::record(w, &who, "runner.deregister", id, r.org_id.as_deref(), now)?;
                Ok::<_, DomainError>(r)
            })
            .await?;
        self.auth.forget(record.token_id).await;
        Ok(record)
    }

    /// How many registered runners are online, draining and offline now (`/metrics`).
    pub fn status_counts(&self) -> Vec<(RunnerStatus, u64)> {
        let now = self.now();
        let mut counts = [
            (RunnerStatus::Online, 0),
            (RunnerStatus::Draining, 0),
            (RunnerStatus::Offline, 0),
        ];
        self.fleet.each(|e| {
            let status = self.timing.status(e, now);
            if let Some((_, n)) = counts.iter_mut().find(|(s, _)| *s == status) {
                *n += 1;
            }
        });
        counts.to_vec()
    }

    /// Every registered runner's org and reported build (the update pipeline's view of the
    /// fleet).
    pub fn build_report(&self) -> Vec<RunnerBuild> {
        let mut out = Vec::new();
        self.fleet.each(|e| {
            out.push(RunnerBuild {
                runner_id: e.record.id,
                org_id: e.record.org_id.clone(),
                build_id: e.live.build_id.clone(),
            })
        });
        out
    }

    /// Each runner that reports a build: that build, its last heartbeat and whether it is
    /// offline now (the health verdicts' view of the fleet).
    pub fn build_liveness(&self) -> Vec<(String, Millis, bool)> {
        let now = self.now();
        let mut out = Vec::new();
        self.fleet.each(|e| {
            if let Some(build) = &e.live.build_id {
                out.push((
                    build.clone(),
                    e.live.last_heartbeat,
                    self.timing.is_offline(&e.live, now),
                ));
            }
        });
        out
    }

    /// How many online runners report each (provider, version).
    pub fn version_counts(&self) -> HashMap<(String, String), u64> {
        let now = self.now();
        let mut out = HashMap::new();
        self.fleet.each(|e| {
            if !self.timing.is_offline(&e.live, now) {
                for (p, v) in &e.live.runtime_versions {
                    *out.entry((p.clone(), v.clone())).or_insert(0) += 1;
                }
            }
        });
        out
    }

    /// A runner's org and the build it last reported.
    pub fn org_and_build(&self, id: Uuid) -> Option<(Option<String>, Option<String>)> {
        self.fleet(&id)
            .get(&id)
            .map(|e| (e.record.org_id.clone(), e.live.build_id.clone()))
    }

    /// Whether a runner may be given work now (scheduling reads this).
    pub fn schedulable(&self) -> Vec<(Arc<RunnerRecord>, f64)> {
        self.placement_view().schedulable()
    }

    /// What scheduling reads of the fleet, without the store (see [`PlacementView`]).
    pub fn placement_view(&self) -> PlacementView {
        PlacementView {
            bus: self.bus.clone(),
            fleet: self.fleet.clone(),
            timing: self.timing.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
            shared_runner_orgs: self.shared_runner_orgs.clone(),
        }
    }

    /// Applies what the passage of time implies: offline/online events, giving up a lost
    /// runner's sessions, and completing drains.
    pub async fn sweep(&self) -> DomainResult<()> {
        let now = self.now();
        let mut announce = Vec::new();
        let mut was = Vec::new();
        let mut lost = Vec::new();
        let mut draining = Vec::new();
        {
            self.fleet.each_mut(|e| {
                let status = self.timing.status(e, now);
                if status != e.announced {
                    if status == RunnerStatus::Offline {
                        announce.push(runner_event(RunnerEventKind::Offline, &e.record, now));
                        was.push((e.record.id, e.announced));
                    } else if e.announced == RunnerStatus::Offline {
                        announce.push(runner_event(RunnerEventKind::Online, &e.record, now));
                        was.push((e.record.id, e.announced));
                    }
                    e.announced = status;
                }
                if self.timing.is_lost(&e.live, now) {
                    lost.push(e.record.id);
                }
                if e.record.draining && e.record.drained_at.is_none() {
                    draining.push(e.record.id);
                }
            });
        }
        if let Err(e) = self.announce(announce).await {
            // Not announced: the next sweep sees the change again and retries.
            tracing::error!(error = %e, "announcing runner status changes failed");
            for (id, status) in was {
                if let Some(entry) = self.fleet(&id).get_mut(&id) {
                    entry.announced = status;
                }
            }
        }
        if lost.is_empty() && draining.is_empty() {
            return Ok(());
        }
        let loads = self
            .store
            .read(|r| r.runner_loads())
            .await
            .map_err(DomainError::from)?;
        let lost: Vec<Uuid> = lost
            .into_iter()
            .filter(|id| loads.contains_key(id))
            .collect();
        let drained: Vec<Uuid> = draining
            .into_iter()
            .filter(|id| !loads.contains_key(id))
            .collect();
        if !lost.is_empty() {
            let sessions = self.sessions.clone();
            self.store
                .write(move |w| {
                    for runner in &lost {
                        sessions.release_runner_sessions(w, *runner, Release::Lost, now)?;
                    }
                    Ok::<_, DomainError>(())
                })
                .await?;
        }
        for id in drained {
            let fleet = self.fleet.clone();
            self.store
                .write(move |w| {
                    let Some(mut r) = w.get_runner(id)? else {
                        return Ok(None);
                    };
                    if !r.draining || r.drained_at.is_some() || w.runner_load(id)? > 0 {
                        return Ok::<_, DomainError>(None);
                    }
                    r.drained_at = Some(now);
                    w.put_runner(&mut r)?;
                    let drained = r.clone();
                    w.after_commit(fleet_hook(&fleet, drained.id, move |f| {
                        if let Some(e) = f.get_mut(&drained.id) {
                            e.adopt(drained);
                        }
                    }));
                    w.emit(runner_event(RunnerEventKind::Drained, &r, now));
                    Ok(Some(r))
                })
                .await?;
        }
        Ok(())
    }

    /// Writes the liveness the periodic flush must write (see `Entry::due`), or with `all` every
    /// runner's that changed since it was written (at shutdown, so a clean restart loses
    /// nothing). Returns how many records were written.
    pub async fn flush_liveness(&self, all: bool) -> DomainResult<usize> {
        let mut picked: Vec<(Uuid, Liveness)> = Vec::new();
        self.fleet.each_mut(|e| {
            if e.due || (all && e.unsaved) {
                e.due = false;
                e.unsaved = false;
                e.saved_beat = e.live.last_heartbeat;
                picked.push((e.record.id, e.live.clone()));
            }
        });
        let n = picked.len();
        // In small slices, so that a flush never holds up other writers for more than a few
        // milliseconds.
        let per_slice = if all {
            LIVENESS_SLICE_AT_SHUTDOWN
        } else {
            LIVENESS_SLICE
        };
        let mut rest = picked;
        while !rest.is_empty() {
            let slice: Vec<(Uuid, Liveness)> = rest.drain(..rest.len().min(per_slice)).collect();
            self.store
                .write(move |w| {
                    for (id, live) in &slice {
                        if w.get_runner(*id)?.is_some() {
                            w.put_liveness(*id, live)?;
                        }
                    }
                    Ok::<_, DomainError>(())
                })
                .await?;
        }
        self.liveness_written
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    /// Liveness records written by flushes since start.
    pub fn liveness_records_written(&self) -> u64 {
        self.liveness_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes an acknowledged command from the runner's outbox.
    pub async fn acknowledge(&self, runner: Uuid, message_id: Uuid) -> DomainResult<bool> {
        self.store
            .write(move |w| {
                w.remove_command(runner, message_id)
                    .map_err(DomainError::from)
            })
            .await
    }

    pub async fn outbox(&self, runner: Uuid) -> DomainResult<Vec<OutboxEntry>> {
        Ok(self.store.read(move |r| r.outbox(runner)).await?)
    }

    /// Validates a registration's fields that need no store (see the API for shape).
    pub fn check_registration(hostname: &str, issues: &mut Vec<Issue>) {
        if hostname.trim().is_empty() || hostname.len() > MAX_HOSTNAME_CHARS {
            issues.push(Issue::new(
                "hostname",
                format!("must be 1 to {MAX_HOSTNAME_CHARS} characters"),
            ));
        }
    }
}

fn fresh_liveness(at: Millis) -> Liveness {
    Liveness {
        last_heartbeat: at,
        load: Load::default(),
        runtime_versions: BTreeMap::new(),
        build_id: None,
        active_sessions: Vec::new(),
    }
}

/// Notices the wall clock stepping forward (an NTP correction, a VM resumed after a pause,
/// `date -s`): silence is measured in wall-clock time, so without this a step longer than
/// `runners.lostAfterMs` would have every runner lost, and its sessions failed, before any could
/// beat again.
struct WallClockWatch {
    last: (Millis, std::time::Instant),
}

impl WallClockWatch {
    /// More than this beyond the time that really passed is a step, not scheduling jitter.
    const TOLERANCE_MS: i64 = 2_000;

    fn new(wall: Millis, mono: std::time::Instant) -> Self {
        Self { last: (wall, mono) }
    }

    /// How far the wall clock jumped ahead since the last look, if it did.
    fn observe(&mut self, wall: Millis, mono: std::time::Instant) -> Option<i64> {
        let (last_wall, last_mono) = std::mem::replace(&mut self.last, (wall, mono));
        let passed = i64::try_from(mono.saturating_duration_since(last_mono).as_millis())
            .unwrap_or(i64::MAX);
        let step = (wall - last_wall).saturating_sub(passed);
        (step > Self::TOLERANCE_MS).then_some(step)
    }
}

/// The sweeper and the liveness flusher, until shutdown.
pub async fn background(service: RunnerService, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    // A test's manual clock jumps on purpose: only the real one is watched for steps.
    let mut watch = service
        .clock
        .jumped()
        .is_none()
        .then(|| WallClockWatch::new(service.clock.now_ms(), std::time::Instant::now()));
    loop {
        let jumped = async {
            match service.clock.jumped() {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = jumped => false,
            _ = shutdown.changed() => true,
        };
        if let Some(watch) = &mut watch {
            let now = service.clock.now_ms();
            if let Some(step) = watch.observe(now, std::time::Instant::now()) {
                tracing::warn!(
                    step_ms = step,
                    "the wall clock stepped forward; runners get the restart grace again"
                );
                service.timing.grant_grace_from(now);
            }
        }
        if let Err(e) = service.sweep().await {
            tracing::error!(error = %e, "runner sweep failed");
        }
        if stopping || last_flush.elapsed() >= Duration::from_secs(2) {
            last_flush = tokio::time::Instant::now();
            if let Err(e) = service.flush_liveness(stopping).await {
                tracing::error!(error = %e, "writing runner liveness failed");
            }
        }
        if stopping {
            return;
        }
    }
}

/// The event of `kind` about runner `r`.
fn runner_event(kind: RunnerEventKind, r: &RunnerRecord, at: Millis) -> BusEvent {
    BusEvent::new(
        at,
        r.org_id.clone(),
        None,
        DomainEvent::Runner {
            kind,
            runner_id: r.id,
            hostname: r.hostname.clone(),
        },
    )
}

/// An update of the in-memory fleet that runs when the write it mirrors is durable (see
/// `Effects::after_commit`): before the write's events reach anyone, and even if the caller
/// stopped waiting.
fn fleet_hook(
    fleet: &Arc<Fleet>,
    id: Uuid,
    update: impl FnOnce(&mut HashMap<Uuid, Entry>) + Send + 'static,
) -> AfterCommit {
    let fleet = fleet.clone();
    Box::new(move || update(&mut fleet.shard(&id)))
}

/// The registered runners in memory, in shards by id: a heartbeat locks its own runner's shard
/// only, so beats of different runners rarely wait on each other, and a sweep of the whole
/// fleet holds one shard at a time.
struct Fleet {
    shards: Vec<Mutex<HashMap<Uuid, Entry>>>,
}

impl Fleet {
    const SHARDS: usize = 32;

    fn new(entries: impl IntoIterator<Item = (Uuid, Entry)>) -> Self {
        let fleet = Self {
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
        };
        for (id, entry) in entries {
            fleet.shard(&id).insert(id, entry);
        }
        fleet
    }

    /// The shard that holds runner `id`, locked. (Runner ids are UUIDs with random low bits.)
    fn shard(&self, id: &Uuid) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        let index = (id.as_u128() % Self::SHARDS as u128) as usize;
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every runner, one shard at a time.
    fn each(&self, mut f: impl FnMut(&Entry)) {
        self.each_mut(|e| f(e));
    }

    fn each_mut(&self, mut f: impl FnMut(&mut Entry)) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.values_mut().for_each(&mut f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_watch_sees_a_forward_step_of_the_wall_clock_and_not_time_passing() {
        let t0 = Instant::now();
        let mut watch = WallClockWatch::new(1_000_000, t0);
        // 100 ms pass on both clocks, then a sweep that took 1.5 s more on the wall: no step.
        assert_eq!(
            watch.observe(1_000_100, t0 + Duration::from_millis(100)),
            None
        );
        assert_eq!(
            watch.observe(1_001_700, t0 + Duration::from_millis(200)),
            None
        );
        // 100 ms pass, but the wall clock moved 6 minutes.
        assert_eq!(
            watch.observe(1_361_800, t0 + Duration::from_millis(300)),
            Some(360_000)
        );
        // A step back is not a step forward.
        assert_eq!(
            watch.observe(1_300_000, t0 + Duration::from_millis(400)),
            None
        );
    }

    #[test]
    fn after_a_step_every_runner_gets_the_grace_again() {
        let timing = Timing {
            heartbeat_timeout_ms: 30_000,
            lost_after_ms: 300_000,
            restart_grace_ms: 60_000,
            grace_from: Arc::new(AtomicI64::new(0)),
        };
        let beat = 1_000_000;
        let live = fresh_liveness(beat);
        // The clock steps from just after the beat to 6 minutes later.
        let stepped = beat + 360_000;
        assert!(
            timing.is_lost(&live, stepped),
            "as measured without the watch"
        );
        timing.grant_grace_from(stepped);
        assert!(!timing.is_lost(&live, stepped));
        assert!(!timing.is_offline(&live, stepped + 59_000));
        assert!(!timing.is_lost(&live, stepped + 59_000));
        // Still silent once the grace is over: offline and lost, as after a restart.
        assert!(timing.is_offline(&live, stepped + 60_001));
        assert!(timing.is_lost(&live, stepped + 60_001));
        // A beat after the step counts as usual.
        let beaten = fresh_liveness(stepped + 10);
        assert!(!timing.is_offline(&beaten, stepped + 25_000));
    }
}
