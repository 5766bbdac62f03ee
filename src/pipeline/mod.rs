//! The update pipeline: provider versions, runner builds, staged rollouts per channel, org
//! runtime configs, and the build each runner should run (docs/api.md).
//!
//! The whole pipeline state is small and lives in memory as an immutable snapshot, so a
//! heartbeat computes its `desiredBuild` without touching disk. Changes are serialized: each
//! one clones the snapshot, applies the rules (`rules.rs`, `desired.rs`, `verdicts.rs`: methods
//! of [`model::PipelineState`], pure and property-tested in `properties.rs`), commits the records
//! it touched (with audit entries and events) durably, and only then swaps the snapshot in.
//!
//! A background task counts how sessions end on runners of each rollout's new and previous
//! build, and judges every active stage (see [`judge`]): an unhealthy stage is stopped
//! and its build marked `known_bad` whether or not automation is on; with
//! `pipeline.enableAutoRollout` a healthy stage held long enough advances by itself.

mod desired;
pub mod model;
#[cfg(test)]
mod properties;
mod rules;
mod verdicts;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::audit;
use crate::auth::{Caller, Principal};
use crate::clock::{Millis, SharedClock, SharedIds, ms};
use crate::config::PipelineConfig;
use crate::detach::detached;
use crate::error::{DomainError, DomainResult, Entity};
use crate::events::{BusEvent, EventBus};
use crate::paging::{Page, PageRequest};
use crate::runners::{Heartbeat, HeartbeatReply, RunnerBuild, RunnerService};
use crate::sessions::model::Provider;
use crate::store::{Store, WriteTxn};
pub use desired::*;
use model::*;
pub use rules::*;
pub use verdicts::*;

#[derive(Debug, Clone, PartialEq)]
pub struct VersionView {
    pub record: VersionRecord,
    pub runner_count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub rollout: Rollout,
    pub affected_orgs: u64,
    pub runners_targeted: u64,
    pub runners_converged: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub status: Option<BuildStatus>,
    pub provider: Option<Provider>,
}

#[derive(Debug, Clone, Default)]
pub struct RolloutFilter {
    pub state: Option<RolloutState>,
    pub channel: Option<Channel>,
}

/// A runner's desired build (borrowed from the snapshot) and the one it reports.
struct FleetBuild<'s> {
    desired: Option<&'s str>,
    reported: Option<String>,
}

/// An API caller's audit entry: who, action, target.
type AuditNote = (Caller, &'static str, String);

#[derive(Clone)]
pub struct PipelineService {
    store: Store,
    bus: EventBus,
    runners: RunnerService,
    clock: SharedClock,
    ids: SharedIds,
    default_channel: Channel,
    rules: HealthRules,
    snapshot: Arc<ArcSwap<PipelineState>>,
    /// One change at a time: each starts from the snapshot the previous one left.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Session outcomes per (rollout, stage) not yet folded into the rollouts.
    pending_counts: Arc<Mutex<BTreeMap<(Uuid, usize), StageCounts>>>,
    /// Versions being recorded right now (a fleet reports a new one many times at once).
    discovering: Arc<Mutex<HashSet<(Provider, String)>>>,
    /// Versions each runner has had recorded since this start, and the most it may
    /// (`pipeline.maxDiscoveredVersionsPerRunner`): a runner cannot fill the version list by
    /// reporting a new label on every heartbeat.
    discovered_by: Arc<Mutex<HashMap<Uuid, usize>>>,
    max_discovered_per_runner: usize,
}

impl PipelineService {
    pub async fn load(
        store: Store,
        bus: EventBus,
        runners: RunnerService,
        clock: SharedClock,
        ids: SharedIds,
        cfg: &PipelineConfig,
    ) -> DomainResult<Self> {
        let state = store
            .read(|r| r.load_pipeline().map_err(DomainError::from))
            .await?;
        Ok(Self {
            store,
            bus,
            runners,
            clock,
            ids,
            default_channel: Channel::parse(&cfg.default_channel).unwrap_or(Channel::Stable),
            rules: HealthRules {
                max_failure_rate: cfg.max_failure_rate,
                min_sessions: cfg.min_sessions_for_verdict,
                max_offline_rate: cfg.max_offline_rate,
                hold_ms: ms(cfg.canary_duration),
                auto_advance: cfg.enable_auto_rollout,
            },
            snapshot: Arc::new(ArcSwap::from_pointee(state)),
            writer: Arc::default(),
            pending_counts: Arc::default(),
            discovering: Arc::default(),
            discovered_by: Arc::default(),
            max_discovered_per_runner: cfg.max_discovered_versions_per_runner,
        })
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn snapshot(&self) -> Arc<PipelineState> {
        self.snapshot.load_full()
    }

    /// The snapshot for a moment (a heartbeat's answer): no lock, no reference count.
    pub fn current(&self) -> arc_swap::Guard<Arc<PipelineState>> {
        self.snapshot.load()
    }

    /// Per channel, the percentage of the fleet its active rollout's current stage targets (0
    /// without an active rollout; `/metrics`).
    pub fn rollout_percentages(&self) -> Vec<(Channel, u8)> {
        let state = self.snapshot();
        [Channel::Stable, Channel::Beta, Channel::Pinned]
            .into_iter()
            .map(|channel| {
                let pct = state
                    .channels
                    .get(&channel)
                    .and_then(|c| c.active_rollout)
                    .and_then(|id| state.rollouts.get(&id))
                    .map_or(0, |r| r.current_percentage);
                (channel, pct)
            })
            .collect()
    }

    /// Applies one change: rules on a copy, durable commit of what it touched, then the swap.
    async fn change<R: Send + 'static>(
        &self,
        audit: Vec<AuditNote>,
        f: impl FnOnce(&mut PipelineState, &mut Changes, Millis) -> DomainResult<R>,
    ) -> DomainResult<R> {
        let one_at_a_time = self.writer.clone().lock_owned().await;
        let now = self.now();
        let mut next = (*self.snapshot()).clone();
        let mut changes = Changes::default();
        let out = f(&mut next, &mut changes, now)?;
        if changes.is_empty() && changes.events.is_empty() {
            return Ok(out);
        }
        let records = Records::of(&next, &changes);
        let system_audit = std::mem::take(&mut changes.audit);
        let events: Vec<BusEvent> = changes
            .events
            .into_iter()
            .map(|event| BusEvent::new(now, None, None, event))
            .collect();
        // From here on the change runs to its end even if the caller stops waiting: the
        // snapshot must follow what was committed (see `detach`).
        let this = self.clone();
        detached(async move {
            let _one_at_a_time = one_at_a_time;
            this.store
                .write(move |w| {
                    records.write(w)?;
                    for (action, target) in &system_audit {
                        audit::record_system(w, action, target, now)?;
                    }
                    for (who, action, target) in &audit {
                        audit::record(w, who, action, target, None, now)?;
                    }
                    for e in events {
                        w.emit(e);
                    }
                    Ok::<_, DomainError>(())
                })
                .await?;
            this.snapshot.store(Arc::new(next));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    // ---- heartbeats -------------------------------------------------------------------------

    /// A runner's heartbeat (REST or channel frame): its liveness noted in memory, and the
    /// reply with the build it should run, taken from `state` (the caller's
    /// [`Self::snapshot`]; nothing is copied out of it). Never waits for a disk write.
    pub fn heartbeat<'s>(
        &self,
        p: &Principal,
        runner_id: Uuid,
        hb: Heartbeat,
        state: &'s PipelineState,
    ) -> DomainResult<(HeartbeatReply, Option<&'s BuildRecord>)> {
        self.runners.heartbeat(p, runner_id, hb, |org_id, live| {
            self.note_versions(state, runner_id, &live.runtime_versions);
            state.desired_build(
                org_id,
                runner_id,
                live.build_id.as_deref(),
                self.default_channel,
            )
        })
    }

    /// Records provider versions the server has not seen (in the background: a heartbeat
    /// never waits for a disk write).
    fn note_versions(
        &self,
        state: &PipelineState,
        runner_id: Uuid,
        runtime_versions: &BTreeMap<String, String>,
    ) {
        for (provider, version) in runtime_versions {
            let Some(p) = Provider::parse(provider) else {
                continue;
            };
            // A provider has a few dozen versions: a scan, so a beat builds no key to look up.
            let known = state
                .versions
                .range((p, String::new())..)
                .take_while(|((q, _), _)| *q == p)
                .any(|((_, v), _)| v == version);
            if is_label(version) && !known {
                self.discover(p, version.clone(), runner_id);
            }
        }
    }

    /// Counts one more version discovered by `runner`; false once it has had its share (said
    /// once in the log).
    fn may_discover(&self, runner: Uuid) -> bool {
        let mut counts = self.discovered_by.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(runner).or_default();
        *count += 1;
        if *count == self.max_discovered_per_runner + 1 {
            tracing::warn!(
                %runner,
                limit = self.max_discovered_per_runner,
                "a runner keeps reporting new versions; no more are recorded from it \
                 (pipeline.maxDiscoveredVersionsPerRunner)"
            );
        }
        *count <= self.max_discovered_per_runner
    }

    fn discover(&self, provider: Provider, version: String, runner_id: Uuid) {
        let key = (provider, version);
        {
            let mut busy = self.discovering.lock().unwrap_or_else(|p| p.into_inner());
            if busy.contains(&key) || !self.may_discover(runner_id) {
                return;
            }
            busy.insert(key.clone());
        }
        let service = self.clone();
        tokio::spawn(async move {
            let (provider, version) = key.clone();
            let result = service
                .change(Vec::new(), move |s, c, now| {
                    s.discover_version(provider, &version, runner_id, now, c);
                    Ok(())
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "recording a discovered version failed");
            }
            service
                .discovering
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    // ---- versions ---------------------------------------------------------------------------

    pub fn versions(
        &self,
        p: &Principal,
        provider: Provider,
        channel: Option<Channel>,
        limit: usize,
    ) -> DomainResult<Vec<VersionView>> {
        p.require_org_or_admin()?;
        let state = self.snapshot();
        // A channel's versions: those bundled by the build it runs or is rolling out.
        let shipped: Option<HashSet<&str>> = channel.map(|ch| {
            let mut builds: Vec<&str> = state.channel_build(ch).into_iter().collect();
            if let Some(r) = state.active_rollout(ch) {
                builds.push(&r.target_build_id);
            }
            builds
                .iter()
                .filter_map(|b| state.builds.get(*b))
                .filter_map(|b| b.runtime_versions.get(provider.as_str()))
                .map(String::as_str)
                .collect()
        });
        let counts = self.runners.version_counts();
        let mut out: Vec<VersionView> = state
            .versions
            .values()
            .filter(|v| v.provider == provider)
            .filter(|v| {
                shipped
                    .as_ref()
                    .is_none_or(|s| s.contains(v.version.as_str()))
            })
            .map(|v| VersionView {
                runner_count: counts
                    .get(&(provider.as_str().to_owned(), v.version.clone()))
                    .copied()
                    .unwrap_or(0),
                record: v.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (b.record.released_at, &b.record.version)
                .cmp(&(a.record.released_at, &a.record.version))
        });
        out.truncate(limit);
        Ok(out)
    }

    fn version_view(&self, provider: Provider, version: &str) -> DomainResult<VersionView> {
        let state = self.snapshot();
        let record = state
            .versions
            .get(&(provider, version.to_owned()))
            .cloned()
            .ok_or(DomainError::NotFound(Entity::Version))?;
        let runner_count = self
            .runners
            .version_counts()
            .get(&(provider.as_str().to_owned(), version.to_owned()))
            .copied()
            .unwrap_or(0);
        Ok(VersionView {
            record,
            runner_count,
        })
    }

    /// Returns the version and whether it was new.
    pub async fn register_version(
        &self,
        p: &Caller,
        provider: Provider,
        version: String,
        released_at: Option<Millis>,
        source_url: Option<String>,
    ) -> DomainResult<(VersionView, bool)> {
        p.require_admin()?;
        let target = format!("{}@{version}", provider.as_str());
        let v = version.clone();
        let created = self
            .change(
                vec![(p.clone(), "version.register", target)],
                move |s, c, now| {
                    Ok(s.register_version(provider, &v, released_at, source_url, now, c))
                },
            )
            .await?;
        Ok((self.version_view(provider, &version)?, created))
    }

    pub async fn set_canary(
        &self,
        p: &Caller,
        provider: Provider,
        version: String,
        passed: bool,
    ) -> DomainResult<VersionView> {
        p.require_admin()?;
        let target = format!("{}@{version}", provider.as_str());
        let v = version.clone();
        self.change(
            vec![(p.clone(), "version.canary", target)],
            move |s, c, now| s.set_canary(provider, &v, passed, now, c),
        )
        .await?;
        self.version_view(provider, &version)
    }

    // ---- builds -----------------------------------------------------------------------------

    pub async fn register_build(&self, p: &Caller, b: NewBuild) -> DomainResult<BuildRecord> {
        p.require_admin()?;
        let id = b.build_id.clone();
        self.change(
            vec![(p.clone(), "build.register", id.clone())],
            move |s, c, now| s.register_build(b, now, c),
        )
        .await?;
        self.build(p, &id)
    }

    pub fn build(&self, p: &Principal, id: &str) -> DomainResult<BuildRecord> {
        p.require_org_or_admin()?;
        self.snapshot()
            .builds
            .get(id)
            .cloned()
            .ok_or(DomainError::NotFound(Entity::Build))
    }

    pub fn builds(
        &self,
        p: &Principal,
        filter: &BuildFilter,
        page: PageRequest,
    ) -> DomainResult<Page<BuildRecord>> {
        p.require_org_or_admin()?;
        let state = self.snapshot();
        let mut all: Vec<BuildRecord> = state
            .builds
            .values()
            .filter(|b| filter.status.is_none_or(|s| b.status == s))
            .filter(|b| filter.provider.is_none_or(|p| b.bundles(p)))
            .cloned()
            .collect();
        all.sort_by(|a, b| (b.built_at, &b.build_id).cmp(&(a.built_at, &a.build_id)));
        Ok(page.slice(all))
    }

    /// `POST /builds/{id}/status`. With automation on, a build that becomes `known_good` starts
    /// a rollout on the default channel (unless one is active there or it already runs it).
    pub async fn set_build_status(
        &self,
        p: &Caller,
        id: String,
        status: BuildStatus,
        recommendation: Option<Recommendation>,
    ) -> DomainResult<BuildRecord> {
        p.require_admin()?;
        let auto = self.rules.auto_advance;
        let channel = self.default_channel;
        let rollout_id = self.ids.ordered_uuid(self.now());
        let notes = vec![(
            p.clone(),
            "build.status",
            format!("{id}:{}", status.as_str()),
        )];
        let build = id.clone();
        self.change(notes, move |s, c, now| {
            let became_good = s.set_build_status(&build, status, recommendation, now, c)?;
            if auto && became_good && s.channel_build(channel) != Some(build.as_str()) {
                match s.create_rollout(rollout_id, &build, channel, None, true, "system", now, c) {
                    Ok(_) => c.audit.push(("rollout.auto_start", rollout_id.to_string())),
                    Err(e) => tracing::info!(build = %build, reason = %e, "no automatic rollout"),
                }
            }
            Ok(())
        })
        .await?;
        self.build(p, &id)
    }

    // ---- rollouts ---------------------------------------------------------------------------

    pub async fn create_rollout(
        &self,
        p: &Caller,
        build_id: String,
        channel: Channel,
        stages: Option<Vec<u8>>,
        start: bool,
    ) -> DomainResult<RolloutView> {
        p.require_admin()?;
        let id = self.ids.ordered_uuid(self.now());
        let actor = p.actor();
        self.change(
            vec![(p.clone(), "rollout.create", id.to_string())],
            move |s, c, now| {
                s.create_rollout(id, &build_id, channel, stages, start, &actor, now, c)
            },
        )
        .await?;
        self.rollout(p, id)
    }

    pub async fn rollout_verb(
        &self,
        p: &Caller,
        id: Uuid,
        verb: RolloutVerb,
        reason: Option<String>,
    ) -> DomainResult<RolloutView> {
        p.require_admin()?;
        let action = match verb {
            RolloutVerb::Advance => "rollout.advance",
            RolloutVerb::Pause => "rollout.pause",
            RolloutVerb::Resume => "rollout.resume",
            RolloutVerb::Cancel => "rollout.cancel",
        };
        self.change(
            vec![(p.clone(), action, id.to_string())],
            move |s, c, now| s.apply_verb(id, verb, reason.as_deref(), now, c),
        )
        .await?;
        self.rollout(p, id)
    }

    pub fn rollout(&self, p: &Principal, id: Uuid) -> DomainResult<RolloutView> {
        p.require_org_or_admin()?;
        let state = self.snapshot();
        let rollout = state
            .rollouts
            .get(&id)
            .ok_or(DomainError::NotFound(Entity::Rollout))?;
        let fleet = self.runners.build_report();
        let builds = self.fleet_builds(&state, &fleet);
        Ok(self.view(&state, rollout, &fleet, &builds))
    }

    /// Rollouts, newest first.
    pub fn rollouts(
        &self,
        p: &Principal,
        filter: &RolloutFilter,
    ) -> DomainResult<Vec<RolloutView>> {
        p.require_org_or_admin()?;
        let state = self.snapshot();
        let fleet = self.runners.build_report();
        let builds = self.fleet_builds(&state, &fleet);
        let mut matching: Vec<&Rollout> = state
            .rollouts
            .values()
            .filter(|r| filter.state.is_none_or(|s| r.state == s))
            .filter(|r| filter.channel.is_none_or(|c| r.channel == c))
            .collect();
        matching.sort_by_key(|r| std::cmp::Reverse(r.number));
        Ok(matching
            .into_iter()
            .map(|r| self.view(&state, r, &fleet, &builds))
            .collect())
    }

    /// Each runner's desired and reported build, worked out once for all the rollouts shown.
    fn fleet_builds<'s>(
        &self,
        state: &'s PipelineState,
        fleet: &[RunnerBuild],
    ) -> Vec<FleetBuild<'s>> {
        fleet
            .iter()
            .map(|runner| FleetBuild {
                desired: state
                    .desired_build(
                        runner.org_id.as_deref(),
                        runner.runner_id,
                        runner.build_id.as_deref(),
                        self.default_channel,
                    )
                    .map(|b| b.build_id.as_str()),
                reported: runner.build_id.clone(),
            })
            .collect()
    }

    fn view(
        &self,
        state: &PipelineState,
        r: &Rollout,
        fleet: &[RunnerBuild],
        builds: &[FleetBuild<'_>],
    ) -> RolloutView {
        let target = r.target_build_id.as_str();
        let targeted = builds.iter().filter(|b| b.desired == Some(target));
        let runners_targeted = targeted.clone().count() as u64;
        let runners_converged = targeted
            .filter(|b| b.reported.as_deref() == Some(target))
            .count() as u64;
        let mut orgs: HashSet<&str> = state.org_configs.keys().map(String::as_str).collect();
        orgs.extend(fleet.iter().filter_map(|f| f.org_id.as_deref()));
        let affected_orgs = orgs
            .into_iter()
            .filter(|o| state.effective_channel(Some(o), self.default_channel) == r.channel)
            .filter(|o| state.org_configs.get(*o).is_none_or(|c| c.auto_upgrade))
            .count() as u64;
        RolloutView {
            rollout: r.clone(),
            affected_orgs,
            runners_targeted,
            runners_converged,
        }
    }

    // ---- org runtime config -----------------------------------------------------------------

    fn check_org(p: &Principal, org_id: &str) -> DomainResult<()> {
        if p.sees_org(org_id) {
            Ok(())
        } else {
            Err(DomainError::forbidden(
                "an org token may read and change only its own org's runtime config",
            ))
        }
    }

    pub fn org_config(&self, p: &Principal, org_id: &str) -> DomainResult<OrgRuntimeConfig> {
        Self::check_org(p, org_id)?;
        Ok(self.snapshot().org_config(org_id, self.default_channel))
    }

    pub async fn put_org_config(
        &self,
        p: &Caller,
        config: OrgRuntimeConfig,
    ) -> DomainResult<OrgRuntimeConfig> {
        Self::check_org(p, &config.org_id)?;
        let org = config.org_id.clone();
        self.change(
            vec![(p.clone(), "org.runtime_config", org.clone())],
            move |s, c, now| s.put_org_config(config, now, c),
        )
        .await?;
        Ok(self.snapshot().org_config(&org, self.default_channel))
    }

    // ---- health -----------------------------------------------------------------------------

    /// Counts a session that ended on `runner` against the rollouts whose new or previous build
    /// that runner runs.
    fn count_session_end(&self, runner: Uuid, failed: bool) {
        let Some((org, Some(build))) = self.runners.org_and_build(runner) else {
            return;
        };
        let state = self.snapshot();
        let channel = state.effective_channel(org.as_deref(), self.default_channel);
        let mut pending = self
            .pending_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only runners that follow the rollout's channel say something about it.
        for r in state
            .rollouts
            .values()
            .filter(|r| r.is_active() && r.channel == channel)
        {
            let Some(stage) = r.stage_index else {
                continue;
            };
            let c = pending.entry((r.id, stage)).or_default();
            if build == r.target_build_id {
                c.new_ended += 1;
                c.new_failed += u64::from(failed);
            } else if r.previous_build_id.as_deref() == Some(build.as_str()) {
                c.previous_ended += 1;
                c.previous_failed += u64::from(failed);
            }
        }
    }

    /// Folds the counted session outcomes into the rollouts and judges every active stage.
    pub async fn evaluate(&self) -> DomainResult<()> {
        let counts = std::mem::take(
            &mut *self
                .pending_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let state = self.snapshot();
        let judging = state
            .rollouts
            .values()
            .any(|r| r.is_active() && r.stage_index.is_some());
        if !judging {
            return Ok(());
        }
        let liveness = self.runners.build_liveness();
        // Runners of a build heard from since the stage began, and those of them now offline.
        let fleet = move |build: &str, since: Millis| {
            let mut f = BuildFleet::default();
            for (b, last, offline) in &liveness {
                if b == build && *last >= since {
                    f.runners += 1;
                    f.offline += u64::from(*offline);
                }
            }
            f
        };
        let rules = self.rules;
        self.change(Vec::new(), move |s, c, now| {
            let before: HashMap<Uuid, RolloutState> =
                s.rollouts.values().map(|r| (r.id, r.state)).collect();
            s.add_counts(&counts, c);
            s.evaluate(&rules, &fleet, now, c);
            // Audit what the verdicts decided (state changes, not refreshed figures).
            for r in s.rollouts.values() {
                if before.get(&r.id).is_some_and(|was| *was != r.state) {
                    c.audit
                        .push(("rollout.verdict", format!("{}:{}", r.id, r.state.as_str())));
                }
            }
            Ok(())
        })
        .await
    }
}

/// The records a change touched, copied out of the new state for the write job.
struct Records {
    versions: Vec<VersionRecord>,
    builds: Vec<BuildRecord>,
    rollouts: Vec<Rollout>,
    channels: Vec<(Channel, ChannelRecord)>,
    org_configs: Vec<OrgRuntimeConfig>,
}

impl Records {
    fn of(s: &PipelineState, c: &Changes) -> Self {
        Self {
            versions: c
                .versions
                .iter()
                .filter_map(|k| s.versions.get(k).cloned())
                .collect(),
            builds: c
                .builds
                .iter()
                .filter_map(|k| s.builds.get(k).cloned())
                .collect(),
            rollouts: c
                .rollouts
                .iter()
                .filter_map(|k| s.rollouts.get(k).cloned())
                .collect(),
            channels: c
                .channels
                .iter()
                .filter_map(|k| s.channels.get(k).map(|v| (*k, v.clone())))
                .collect(),
            org_configs: c
                .org_configs
                .iter()
                .filter_map(|k| s.org_configs.get(k).cloned())
                .collect(),
        }
    }

    fn write(&self, w: &mut dyn WriteTxn) -> DomainResult<()> {
        for v in &self.versions {
            w.put_version(v)?;
        }
        for b in &self.builds {
            w.put_build(b)?;
        }
        for r in &self.rollouts {
            w.put_rollout(r)?;
        }
        for (k, c) in &self.channels {
            w.put_channel(*k, c)?;
        }
        for c in &self.org_configs {
            w.put_org_config(c)?;
        }
        Ok(())
    }
}

/// Counts session endings for the health verdicts and judges active stages every tick.
pub async fn run(service: PipelineService, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut events = service.bus.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = service.evaluate().await {
                    tracing::error!(error = %e, "judging rollouts failed");
                }
            }
            event = events.recv() => match event {
                Ok(e) => {
                    if let Some((runner, failed)) = e.event.ended_on_runner() {
                        service.count_session_end(runner, failed);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the pipeline fell behind the event bus; some session outcomes were not counted");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}
